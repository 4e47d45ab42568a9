#!/usr/bin/env bash
# twinhub and Mosquitto on this machine, in one run, driven by the same client code (`twinhub bench`):
# connection setup and QoS 1 publish-to-PUBACK round trips with the same devices and in-flight window,
# then the hub's own scenarios (reported patches, twin GET over MQTT, REST, desired notifications, direct
# methods, cloud-to-device messages).
# Prints one table with the ratios; every figure also lands in $OUT/*.json.
#
#   bench/compare.sh                       # defaults below
#   DEVICES=1000 IN_FLIGHT=8 BENCH_SECONDS=10 CONNECTIONS=10000 bench/compare.sh
#
# Mosquitto is Debian's package (installed here when missing), with TLS on a loopback port and the
# certificate the hub made, signed by the hub's CA. Needs root for the hub's standard ports.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-1000}
IN_FLIGHT=${IN_FLIGHT:-8}
SECONDS_RUN=${BENCH_SECONDS:-10}
CONNECTIONS=${CONNECTIONS:-10000}
DESIRED_RATE=${DESIRED_RATE:-1000}
REST_CLIENTS=${REST_CLIENTS:-64}
# Reported patches are also timed at a steady rate: half the 50,000/s target by default.
REPORTED_RATE=${REPORTED_RATE:-25000}
TELEMETRY_RATE=${TELEMETRY_RATE:-10000}
METHOD_RATE=${METHOD_RATE:-1000}
C2D_RATE=${C2D_RATE:-1000}
BACKLOG=${BACKLOG:-1000000}
HOST=${HOST:-127.77.0.1}
BROKER=${BROKER:-127.0.0.1:18883}
OUT=${OUT:-$(mktemp -d /tmp/twinhub-compare.XXXXXX)}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto (Debian package)"
  apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

cargo build --release -p twinhub
BIN=target/release/twinhub
# Both servers and the bench hold one descriptor per connection.
ulimit -n "$(ulimit -Hn)" || true

mkdir -p "$OUT/hub"
"$BIN" serve --data-dir "$OUT/hub" --hostname "$HOST" --bind "$HOST" >"$OUT/hub.log" 2>&1 &
HUB_PID=$!
cleanup() {
  kill "$HUB_PID" 2>/dev/null || true
  [ -n "${MOSQUITTO_PID:-}" ] && kill "$MOSQUITTO_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 200); do
  [ -f "$OUT/hub/server.pem" ] && (exec 3<>"/dev/tcp/$HOST/443") 2>/dev/null && break
  sleep 0.1
done

# As root, Mosquitto drops to the user `mosquitto`, who cannot read the hub's private key; the bench
# keeps it as the user running the script.
cat >"$OUT/mosquitto.conf" <<EOF
user $(id -un)
per_listener_settings false
allow_anonymous true
persistence false
max_inflight_messages 0
max_queued_messages 100000
log_dest file $OUT/mosquitto.log
log_type error
listener ${BROKER##*:} ${BROKER%:*}
cafile $OUT/hub/ca.pem
certfile $OUT/hub/server.pem
keyfile $OUT/hub/server.key.pem
EOF
"$MOSQUITTO" -c "$OUT/mosquitto.conf" &
MOSQUITTO_PID=$!
sleep 1

hub() { "$BIN" bench "$@" --data-dir "$OUT/hub"; }
broker() { "$BIN" bench "$@" --broker "$BROKER" --ca-cert "$OUT/hub/ca.pem"; }

echo "== connect: $CONNECTIONS TLS connections"
hub connect --devices "$CONNECTIONS" --server-pid "$HUB_PID" --json "$OUT/hub-connect.json"
broker connect --devices "$CONNECTIONS" --server-pid "$MOSQUITTO_PID" --json "$OUT/mosquitto-connect.json"
echo "== QoS 1 publish round trips: $DEVICES devices x $IN_FLIGHT in flight, $SECONDS_RUN s"
broker telemetry --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/mosquitto-publish.json"
hub telemetry --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/hub-telemetry.json"
for size in 256 4096; do
  echo "== QoS 1 publishes of $size-byte payloads (twinhub: durable before PUBACK)"
  broker telemetry --payload-bytes "$size" --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/mosquitto-publish-$size.json"
  hub telemetry --payload-bytes "$size" --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/hub-telemetry-$size.json"
done
echo "== telemetry end to end (device PUBLISH to Event Hubs consumer) at a steady $TELEMETRY_RATE/s"
hub telemetry-end-to-end --devices "$DEVICES" --rate "$TELEMETRY_RATE" --seconds "$SECONDS_RUN" --json "$OUT/hub-telemetry-e2e.json"
echo "== one Event Hubs consumer reading a backlog of $BACKLOG events"
hub consume --devices "$DEVICES" --in-flight "$IN_FLIGHT" --backlog "$BACKLOG" --payload-bytes 256 --json "$OUT/hub-consume.json"
echo "== reported patches (durable), saturated, then at a steady $REPORTED_RATE/s"
hub reported --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/hub-reported.json"
hub reported --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --rate "$REPORTED_RATE" --json "$OUT/hub-reported-half.json"
echo "== reported patches over AMQP (the twin links), saturated"
hub reported --transport amqp --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/hub-reported-amqp.json"
echo "== twin GET over MQTT"
hub twin-get --devices "$DEVICES" --in-flight "$IN_FLIGHT" --seconds "$SECONDS_RUN" --json "$OUT/hub-twin-get.json"
echo "== REST: twin GET, then PATCH, $REST_CLIENTS clients"
hub rest --devices "$DEVICES" --clients "$REST_CLIENTS" --seconds "$SECONDS_RUN" --json "$OUT/hub-rest.json"
echo "== direct methods over HTTPS, answered over MQTT: $REST_CLIENTS clients saturating, then $METHOD_RATE/s"
hub method --devices "$DEVICES" --clients "$REST_CLIENTS" --seconds "$SECONDS_RUN" --json "$OUT/hub-method.json"
hub method --devices "$DEVICES" --clients "$REST_CLIENTS" --rate "$METHOD_RATE" --seconds "$SECONDS_RUN" --json "$OUT/hub-method-rate.json"
echo "== cloud-to-device messages over AMQP, taken over MQTT: saturating, then $C2D_RATE/s"
hub c2d --devices "$DEVICES" --seconds "$SECONDS_RUN" --json "$OUT/hub-c2d.json"
hub c2d --devices "$DEVICES" --rate "$C2D_RATE" --seconds "$SECONDS_RUN" --json "$OUT/hub-c2d-rate.json"
echo "== desired notifications at $DESIRED_RATE PATCH/s"
hub desired --devices "$DEVICES" --rate "$DESIRED_RATE" --seconds "$SECONDS_RUN" --json "$OUT/hub-desired.json"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
load = lambda name: json.load(open(os.path.join(out, name + ".json")))
hc, mc = load("hub-connect"), load("mosquitto-connect")
mp, ht = load("mosquitto-publish"), load("hub-telemetry")
sized = [(size, load("mosquitto-publish-%d" % size), load("hub-telemetry-%d" % size)) for size in (256, 4096)]
he, hcons = load("hub-telemetry-e2e"), load("hub-consume")
hr, hh = load("hub-reported"), load("hub-reported-half")
ha = load("hub-reported-amqp")
hg, rest, hd = load("hub-twin-get"), load("hub-rest"), load("hub-desired")
hm, hmr = load("hub-method"), load("hub-method-rate")
hc2d, hc2dr = load("hub-c2d"), load("hub-c2d-rate")

def row(what, value, unit, p50=None, p99=None, ratio=None, target=""):
    lat = "" if p50 is None else "{:>8.2f} {:>8.2f}".format(p50, p99)
    print("{:<44} {:>12,.0f} {:<8} {:>17} {:>8} {}".format(
        what, value, unit, lat, "" if ratio is None else "{:.2f}".format(ratio), target))

print()
print("{:<44} {:>12} {:<8} {:>8} {:>8} {:>8} {}".format("", "figure", "", "p50 ms", "p99 ms", "ratio", "target"))
row("mosquitto: connections/s", mc["per_second"], "/s")
row("twinhub:   connections/s", hc["per_second"], "/s", ratio=hc["per_second"] / mc["per_second"])
if mc.get("bytes_per_connection") is not None and hc.get("bytes_per_connection") is not None:
    row("mosquitto: memory per connection", mc["bytes_per_connection"] / 1024, "KB")
    row("twinhub:   memory per connection", hc["bytes_per_connection"] / 1024, "KB",
        ratio=hc["bytes_per_connection"] / max(mc["bytes_per_connection"], 1), target="< 20 KB")
l = lambda r: (r["latency"]["p50_ms"], r["latency"]["p99_ms"])
row("mosquitto: QoS 1 publishes/s", mp["per_second"], "/s", *l(mp))
row("twinhub:   telemetry QoS 1 publishes/s", ht["per_second"], "/s", *l(ht),
    ratio=ht["per_second"] / mp["per_second"], target=">= 1.0x mosquitto")
for size, m, h in sized:
    row("mosquitto: %d B publishes/s (MB/s %.1f)" % (size, m["megabytes_per_second"]), m["per_second"], "/s", *l(m))
    row("twinhub:   %d B durable publishes/s (MB/s %.1f)" % (size, h["megabytes_per_second"]), h["per_second"], "/s", *l(h),
        ratio=h["per_second"] / m["per_second"], target=">= 1.0x mosquitto")
row("twinhub:   PUBLISH -> Event Hubs consumer", he["per_second"], "/s", *l(he), target="p99 < 20 ms at 10,000/s")
row("twinhub:   consumer reading a backlog", hcons["per_second"], "/s")
row("twinhub:   reported patches/s (durable)", hr["per_second"], "/s", *l(hr),
    ratio=hr["per_second"] / mp["per_second"], target=">= 50,000/s, >= 0.5x mosquitto")
row("twinhub:   reported at a steady rate", hh["per_second"], "/s", *l(hh), target="p99 < 10 ms at 25,000/s")
row("twinhub:   reported patches/s over AMQP", ha["per_second"], "/s", *l(ha),
    ratio=ha["per_second"] / mp["per_second"])
row("twinhub:   twin GET over MQTT/s", hg["per_second"], "/s", *l(hg), target=">= 100,000/s")
row("twinhub:   twin GET over REST/s", rest["per_second"], "/s", *l(rest), target=">= 50,000/s")
row("twinhub:   twin PATCH over REST/s", rest["patch_per_second"], "/s",
    rest["patch_latency"]["p50_ms"], rest["patch_latency"]["p99_ms"])
row("twinhub:   direct method round trips/s", hm["per_second"], "/s", *l(hm), target=">= 20,000/s")
row("twinhub:   direct methods at a steady rate", hmr["per_second"], "/s", *l(hmr), target="p99 < 5 ms at 1,000/s")
row("twinhub:   c2d sends accepted/s (-> device)", hc2d["per_second"], "/s", *l(hc2d))
row("twinhub:   c2d at a steady rate (-> device)", hc2dr["per_second"], "/s", *l(hc2dr))
row("twinhub:   desired PATCH -> notification", hd["per_second"], "/s", *l(hd), target="p99 < 5 ms at 1,000/s")
print()
print("ratio: twinhub / mosquitto (memory: lower is better). Figures: " + out)
PY
