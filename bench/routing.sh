#!/usr/bin/env bash
# Message routing's cost, side by side in one run on this machine, driven by `twinhub bench`:
#   1. a hub with no routes (every device message straight to the built-in endpoint), and
#   2. a hub whose every device message goes through a route with a condition on the body
#      (`$body.temperature > 0`, the fallback off, so each message is parsed and evaluated), and whose
#      twin changes go to the built-in endpoint (one notification per reported patch, stored before the
#      patch is acknowledged),
# for durable telemetry publishes/s (QoS 1, JSON in UTF-8) and durable reported patches/s. Prints one
# table with the ratios; every figure also lands in $OUT/*.json.
#
#   bench/routing.sh
#   DEVICES=1000 IN_FLIGHT=8 BENCH_SECONDS=10 bench/routing.sh
# Needs root for the standard ports.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-1000}
IN_FLIGHT=${IN_FLIGHT:-8}
SECONDS_RUN=${BENCH_SECONDS:-10}
PLAIN=${PLAIN:-127.240.0.11}
ROUTED=${ROUTED:-127.240.0.12}
OUT=${OUT:-$(mktemp -d /tmp/twinhub-routing.XXXXXX)}
mkdir -p "$OUT"

source bench/common.sh
build_twinhub

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

cat >"$OUT/routes.toml" <<'TOML'
fallback = false

[[routes]]
name = "warm"
source = "DeviceMessages"
condition = "$body.temperature > 0"
endpoint = "events"

[[routes]]
name = "twins"
source = "TwinChangeEvents"
endpoint = "events"
TOML

# run NAME ADDRESS [serve flags...]: a fresh hub, its telemetry and its reported patches.
run() {
  local name=$1 address=$2
  shift 2
  mkdir -p "$OUT/$name"
  "$BIN" serve --data-dir "$OUT/$name" --hostname "$address" --bind "$address" "$@" >"$OUT/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_for_hub "$address" "$OUT/$name" "$OUT/$name.log"
  "$BIN" bench telemetry --json-message --data-dir "$OUT/$name" --devices "$DEVICES" --in-flight "$IN_FLIGHT" \
    --seconds "$SECONDS_RUN" --json "$OUT/$name-telemetry.json"
  "$BIN" bench reported --data-dir "$OUT/$name" --devices "$DEVICES" --in-flight "$IN_FLIGHT" \
    --seconds "$SECONDS_RUN" --json "$OUT/$name-reported.json"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

echo "== 1. no routes"
run plain "$PLAIN"
echo "== 2. a \$body route for every message, twin change notifications"
run routed "$ROUTED" --routes "$OUT/routes.toml"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
load = lambda name: json.load(open(os.path.join(out, name + ".json")))
rows = [
    ("telemetry publishes/s, no routes", load("plain-telemetry"), None),
    ("telemetry publishes/s, through a $body route", load("routed-telemetry"), load("plain-telemetry")),
    ("reported patches/s, no routes", load("plain-reported"), None),
    ("reported patches/s = twin change notifications/s", load("routed-reported"), load("plain-reported")),
]
print()
print("{:<52} {:>12} {:>8} {:>8} {:>7}".format("", "per second", "p50 ms", "p99 ms", "ratio"))
for what, report, base in rows:
    ratio = "" if base is None else "{:.2f}".format(report["per_second"] / base["per_second"])
    print("{:<52} {:>12,.0f} {:>8.2f} {:>8.2f} {:>7}".format(
        what, report["per_second"], report["latency"]["p50_ms"], report["latency"]["p99_ms"], ratio))
print()
print("Figures: " + out)
PY
