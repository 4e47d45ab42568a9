#!/usr/bin/env bash
# A twin-update job over a large fleet, and what it does to the devices' own traffic, in one run on one
# hub driven by `twinhub bench`: durable reported patches from REPORTING device connections alone (p99),
# then the same while a job updates JOB_DEVICES twins at the hub's job rate (default 2,000 devices/s),
# then the job alone at an unbounded rate (what the writer can do). Prints the figures; every figure also
# lands in $OUT/*.json. Needs root for the standard ports.
#
#   bench/jobs.sh
#   JOB_DEVICES=100000 REPORTING=1000 RATE=5000 BENCH_SECONDS=20 bench/jobs.sh
set -euo pipefail
cd "$(dirname "$0")/.."

JOB_DEVICES=${JOB_DEVICES:-100000}
REPORTING=${REPORTING:-1000}
# Reported patches per second the devices hold (half of what this machine saturates at, as in
# bench/compare.sh), so their p99 is that of a hub with room, not of a queue.
RATE=${RATE:-20000}
SECONDS_RUN=${BENCH_SECONDS:-20}
JOB_RATE=${JOB_RATE:-2000}
ADDRESS=${ADDRESS:-127.240.0.22}
OUT=${OUT:-$(mktemp -d /tmp/twinhub-jobs.XXXXXX)}
mkdir -p "$OUT/hub" "$OUT/unbounded"

source bench/common.sh
build_twinhub

"$BIN" serve --data-dir "$OUT/hub" --hostname "$ADDRESS" --bind "$ADDRESS" \
  --job-devices-per-second "$JOB_RATE" >"$OUT/hub.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
wait_for_hub "$ADDRESS" "$OUT/hub" "$OUT/hub.log"

# The fleet first (registered by a job run over it), so both reported phases see the same registry.
"$BIN" bench job --data-dir "$OUT/hub" --devices "$JOB_DEVICES" --json "$OUT/warmup-job.json"
"$BIN" bench reported --data-dir "$OUT/hub" --devices "$REPORTING" --rate "$RATE" \
  --seconds "$SECONDS_RUN" --json "$OUT/reported-alone.json"
"$BIN" bench job --data-dir "$OUT/hub" --devices "$JOB_DEVICES" --json "$OUT/job.json" &
JOB=$!
sleep 2
"$BIN" bench reported --data-dir "$OUT/hub" --devices "$REPORTING" --rate "$RATE" \
  --seconds "$SECONDS_RUN" --json "$OUT/reported-with-job.json"
wait $JOB
kill $PID; wait $PID 2>/dev/null || true

ADDRESS2=${ADDRESS2:-127.240.0.23}
"$BIN" serve --data-dir "$OUT/unbounded" --hostname "$ADDRESS2" --bind "$ADDRESS2" \
  --job-devices-per-second 10000000 >"$OUT/unbounded.log" 2>&1 &
PID=$!
wait_for_hub "$ADDRESS2" "$OUT/unbounded" "$OUT/unbounded.log"
"$BIN" bench job --data-dir "$OUT/unbounded" --devices "$JOB_DEVICES" --json "$OUT/warmup-unbounded.json"
"$BIN" bench job --data-dir "$OUT/unbounded" --devices "$JOB_DEVICES" --json "$OUT/job-unbounded.json"

python3 - "$OUT" "$JOB_RATE" <<'PY'
import json, os, sys
out, rate = sys.argv[1], sys.argv[2]
load = lambda name: json.load(open(os.path.join(out, name)))
alone, with_job = load("reported-alone.json"), load("reported-with-job.json")
job, unbounded = load("job.json"), load("job-unbounded.json")
print()
print("{:<52} {:>12} {:>8} {:>8}".format("", "per second", "p50 ms", "p99 ms"))
for what, report in (("reported patches, alone", alone), ("reported patches, during the job", with_job)):
    print("{:<52} {:>12,.0f} {:>8.2f} {:>8.2f}".format(
        what, report["per_second"], report["latency"]["p50_ms"], report["latency"]["p99_ms"]))
print("{:<52} {:>12,.0f}".format("job: twins updated (at --job-devices-per-second " + rate + ")", job["per_second"]))
print("{:<52} {:>12,.0f}".format("job: twins updated (unbounded, no other traffic)", unbounded["per_second"]))
print("reported p99 with the job / alone: {:.2f}".format(with_job["latency"]["p99_ms"] / alone["latency"]["p99_ms"]))
print("Figures: " + out)
PY
