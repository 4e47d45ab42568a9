#!/usr/bin/env bash
# The cluster beside the single node, on this machine, in one run, driven by `twinhub bench`:
#   1. an embedded node (the default),
#   2. one node on PostgreSQL,
#   3. three nodes on one PostgreSQL database and one NATS (A takes the load, B and C follow A's
#      commits),
# for durable reported patches/s, twin GET/s, the CPU time each node spends per 1,000 patches, and
# desired notifications at a steady rate: on one node, and from a back end on A to devices on B, and
# selective queries over $QUERY_TWINS twins (tagged through A, asked on B in the cluster).
# Prints one table; every figure also lands in $OUT/*.json.
#
#   bench/cluster.sh
#   DEVICES=1000 IN_FLIGHT=8 BENCH_SECONDS=10 DESIRED_RATE=1000 bench/cluster.sh
#
# PostgreSQL: PG_ADMIN_URL (default host=127.0.0.1 user=postgres dbname=test) names a server where the
# script may create (and at the end drop) a database of its own. NATS_URL (default nats://127.0.0.1:4222):
# the cluster's bus, with JetStream. Needs root for the standard ports.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-1000}
IN_FLIGHT=${IN_FLIGHT:-8}
SECONDS_RUN=${BENCH_SECONDS:-10}
DESIRED_RATE=${DESIRED_RATE:-1000}
QUERY_TWINS=${QUERY_TWINS:-20000}
PG_ADMIN_URL=${PG_ADMIN_URL:-host=127.0.0.1 user=postgres dbname=test}
EMBEDDED=${EMBEDDED:-127.240.0.1}
ALONE=${ALONE:-127.240.0.2}
NODE_A=${NODE_A:-127.240.0.3}
NODE_B=${NODE_B:-127.240.0.4}
NODE_C=${NODE_C:-127.240.0.5}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
OUT=${OUT:-$(mktemp -d /tmp/twinhub-cluster.XXXXXX)}

cargo build --release -p twinhub
BIN=$PWD/target/release/twinhub
ulimit -n "$(ulimit -Hn)" || true

DB_ALONE="twinhub_bench_alone_$$"
DB_CLUSTER="twinhub_bench_cluster_$$"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for db in "$DB_ALONE" "$DB_CLUSTER"; do
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
for db in "$DB_ALONE" "$DB_CLUSTER"; do psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $db"; done
store_url() { echo "host=127.0.0.1 user=postgres dbname=$1"; }

# serve NAME ADDRESS HOSTNAME [serve flags...]: starts a node with data directory $OUT/NAME.
serve() {
  local name=$1 address=$2 hostname=$3
  shift 3
  mkdir -p "$OUT/$name"
  "$BIN" serve --data-dir "$OUT/$name" --hostname "$hostname" --bind "$address" "$@" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
  for _ in $(seq 1 300); do
    [ -f "$OUT/$name/server.pem" ] && (exec 3<>"/dev/tcp/$address/443") 2>/dev/null && return
    sleep 0.1
  done
  echo "$name did not start; its log:" && cat "$OUT/$name.log" && exit 1
}
# CPU seconds (user + system) a process has used.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
bench() { "$BIN" bench "$@"; }

# one_node NAME ADDRESS [serve flags...]: a node alone, its patches (and its CPU time for them), twin
# GETs and desired notifications.
one_node() {
  local name=$1 address=$2
  shift 2
  serve "$name" "$address" "$address" "$@"
  local pid=$LAST_PID before
  before=$(cpu "$pid")
  bench reported --data-dir "$OUT/$name" --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/$name-reported.json"
  echo "$before $(cpu "$pid")" >"$OUT/$name-cpu.txt"
  bench twin-get --data-dir "$OUT/$name" --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/$name-twin-get.json"
  bench desired --data-dir "$OUT/$name" --devices "$DEVICES" --rate "$DESIRED_RATE" --seconds "$SECONDS_RUN" --json "$OUT/$name-desired.json"
  bench query --data-dir "$OUT/$name" --devices "$QUERY_TWINS" --seconds "$SECONDS_RUN" --json "$OUT/$name-query.json"
  kill "$pid"
}

echo "== 1. embedded node"
one_node embedded "$EMBEDDED"
echo "== 2. one node on PostgreSQL"
one_node alone "$ALONE" --store "$(store_url "$DB_ALONE")"

echo "== 3. three nodes on one PostgreSQL database and NATS"
CLUSTER=(--store "$(store_url "$DB_CLUSTER")" --bus "$NATS_URL")
serve node-a "$NODE_A" "$NODE_A" "${CLUSTER[@]}"
A_PID=$LAST_PID
# B and C take A's host name, CA and policies from PostgreSQL (as the nodes of a cluster do).
serve node-b "$NODE_B" "$NODE_A" "${CLUSTER[@]}"
B_PID=$LAST_PID
serve node-c "$NODE_C" "$NODE_A" "${CLUSTER[@]}"
C_PID=$LAST_PID
a_before=$(cpu "$A_PID")
b_before=$(cpu "$B_PID")
c_before=$(cpu "$C_PID")
bench reported --data-dir "$OUT/node-a" --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/cluster-reported.json"
echo "$a_before $(cpu "$A_PID")" >"$OUT/cluster-a-cpu.txt"
echo "$b_before $(cpu "$B_PID")" >"$OUT/cluster-b-cpu.txt"
echo "$c_before $(cpu "$C_PID")" >"$OUT/cluster-c-cpu.txt"
bench twin-get --data-dir "$OUT/node-a" --devices-at "$NODE_B" --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/cluster-twin-get.json"
bench desired --data-dir "$OUT/node-a" --devices-at "$NODE_B" --devices "$DEVICES" --rate "$DESIRED_RATE" --seconds "$SECONDS_RUN" --json "$OUT/cluster-desired.json"
bench query --data-dir "$OUT/node-a" --devices-at "$NODE_B" --devices "$QUERY_TWINS" --seconds "$SECONDS_RUN" --json "$OUT/cluster-query.json"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
load = lambda name: json.load(open(os.path.join(out, name + ".json")))
def cpu(name):
    before, after = map(float, open(os.path.join(out, name + "-cpu.txt")).read().split())
    return after - before

def row(what, value, unit, p50=None, p99=None, ratio=None, target=""):
    lat = "" if p50 is None else "{:>8.2f} {:>8.2f}".format(p50, p99)
    print("{:<52} {:>12,.1f} {:<8} {:>17} {:>8} {}".format(
        what, value, unit, lat, "" if ratio is None else "{:.2f}".format(ratio), target))

l = lambda r: (r["latency"]["p50_ms"], r["latency"]["p99_ms"])
er, ar, cr = load("embedded-reported"), load("alone-reported"), load("cluster-reported")
print()
print("{:<52} {:>12} {:<8} {:>8} {:>8} {:>8} {}".format("", "figure", "", "p50 ms", "p99 ms", "ratio", "target"))
row("embedded:      reported patches/s (durable)", er["per_second"], "/s", *l(er))
row("1 PG node:     reported patches/s (durable)", ar["per_second"], "/s", *l(ar),
    ratio=ar["per_second"] / er["per_second"], target=">= 0.5x embedded")
row("3 PG nodes:    reported patches/s through A", cr["per_second"], "/s", *l(cr),
    ratio=cr["per_second"] / er["per_second"])
for name, report, label in (("embedded", er, "embedded"), ("alone", ar, "1 PG node"),
                            ("cluster-a", cr, "3 PG nodes, A"), ("cluster-b", cr, "B (follows A)"),
                            ("cluster-c", cr, "C (follows A)")):
    row("%-15sCPU per 1,000 patches" % (label + ":"), 1e6 * cpu(name) / max(report["operations"], 1), "ms")
for name, label in (("embedded", "embedded"), ("alone", "1 PG node"), ("cluster", "3 nodes, on B")):
    r = load(name + "-twin-get")
    row("%-15stwin GET over MQTT/s" % (label + ":"), r["per_second"], "/s", *l(r))
for name, label in (("embedded", "embedded"), ("alone", "1 PG node"), ("cluster", "3 nodes, on B")):
    r = load(name + "-query")
    row("%-15sselective query/s (1 of %s)" % (label + ":", format(r["devices"], ",")), r["per_second"], "/s", *l(r))
for name, label, target in (("embedded", "embedded", ""), ("alone", "1 PG node", ""),
                            ("cluster", "A -> B", "p99 < 10 ms at 1,000/s")):
    r = load(name + "-desired")
    row("%-15sdesired PATCH -> notification" % (label + ":"), r["per_second"], "/s", *l(r), target=target)
print()
print("ratio: to the embedded node. Figures: " + out)
PY
