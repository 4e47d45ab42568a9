#!/usr/bin/env bash
# Desired notifications from node to node alone: a fresh PostgreSQL database, NODES nodes (2 or 3)
# started on it, then only `twinhub bench desired` with its back end on A and its devices on B.
#
#   bench/desired_between_nodes.sh              # NODES=3, with --bus
#   NODES=2 BUS=none bench/desired_between_nodes.sh
#
# PG_ADMIN_URL as in bench/cluster.sh; NATS_URL (default nats://127.0.0.1:4222) unless BUS=none.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
BUS=${BUS:-${NATS_URL:-nats://127.0.0.1:4222}}
RATE=${DESIRED_RATE:-1000}
SECONDS_RUN=${BENCH_SECONDS:-10}
PG_ADMIN_URL=${PG_ADMIN_URL:-host=127.0.0.1 user=postgres dbname=test}
ADDRESSES=(127.240.0.3 127.240.0.4 127.240.0.5)
cargo build --release -p twinhub
BIN=$PWD/target/release/twinhub
OUT=$(mktemp -d /tmp/twinhub-desired.XXXXXX)
DB="twinhub_bench_desired_$$"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $DB"
FLAGS=(--store "host=127.0.0.1 user=postgres dbname=$DB")
[ "$BUS" != none ] && FLAGS+=(--bus "$BUS")
for n in $(seq 0 $((NODES - 1))); do
  address=${ADDRESSES[$n]}
  mkdir -p "$OUT/node$n"
  "$BIN" serve --data-dir "$OUT/node$n" --hostname "${ADDRESSES[0]}" --bind "$address" "${FLAGS[@]}" >"$OUT/node$n.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do
    [ -f "$OUT/node$n/server.pem" ] && (exec 3<>"/dev/tcp/$address/443") 2>/dev/null && break
    sleep 0.1
  done
done
"$BIN" bench desired --data-dir "$OUT/node0" --devices-at "${ADDRESSES[1]}" --devices 1000 --rate "$RATE" \
  --seconds "$SECONDS_RUN" --json "$OUT/desired.json" | tail -2
echo "nodes: $NODES, bus: $BUS; figures: $OUT"
