#!/usr/bin/env bash
# A module twin write beside a device twin write, in one run on one hub, driven by `twinhub bench`:
# durable reported patches/s from DEVICES device connections, then from the same number of module
# connections (DEVICES/4 devices with 4 modules each). Prints both and the ratio; every figure also lands
# in $OUT/*.json. Needs root for the standard ports.
#
#   bench/modules.sh
#   DEVICES=1000 IN_FLIGHT=8 BENCH_SECONDS=10 bench/modules.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-1000}
IN_FLIGHT=${IN_FLIGHT:-8}
SECONDS_RUN=${BENCH_SECONDS:-10}
ADDRESS=${ADDRESS:-127.240.0.21}
OUT=${OUT:-$(mktemp -d /tmp/twinhub-modules.XXXXXX)}
mkdir -p "$OUT/hub"

source bench/common.sh
build_twinhub

"$BIN" serve --data-dir "$OUT/hub" --hostname "$ADDRESS" --bind "$ADDRESS" >"$OUT/hub.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
wait_for_hub "$ADDRESS" "$OUT/hub" "$OUT/hub.log"

"$BIN" bench reported --data-dir "$OUT/hub" --devices "$DEVICES" --in-flight "$IN_FLIGHT" \
  --seconds "$SECONDS_RUN" --json "$OUT/devices.json"
"$BIN" bench reported --data-dir "$OUT/hub" --devices "$((DEVICES / 4))" --modules-per-device 4 \
  --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/modules.json"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
devices = json.load(open(os.path.join(out, "devices.json")))
modules = json.load(open(os.path.join(out, "modules.json")))
print()
print("{:<44} {:>12} {:>8} {:>8}".format("", "patches/s", "p50 ms", "p99 ms"))
for what, report in (("device twins (device connections)", devices), ("module twins (4 modules per device)", modules)):
    print("{:<44} {:>12,.0f} {:>8.2f} {:>8.2f}".format(
        what, report["per_second"], report["latency"]["p50_ms"], report["latency"]["p99_ms"]))
print("module / device: {:.2f} (goal: within 10%, >= 0.90)".format(modules["per_second"] / devices["per_second"]))
print("Figures: " + out)
PY
