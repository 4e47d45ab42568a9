// Many devices at once through the official Node.js device SDK over MQTT, against a real twinhub: how
// many connected SDK devices one hub holds, and the round trip of a reported patch (from
// `twin.properties.reported.update` to its callback) with all of them connected.
//
//   node fleet.js [devices] [patches-per-device]      (defaults 200 and 5; or TWINHUB_FLEET_DEVICES and
//                                                      TWINHUB_FLEET_PATCHES)
//
// Needs TWINHUB_CONNECTION_STRING (iothubowner) and NODE_EXTRA_CA_CERTS. Prints the figures as JSON on
// the last line. Exits non-zero when a device fails to connect, a patch fails, the hub does not count
// every device as connected, or an acknowledged patch is missing from a twin.
'use strict';

const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { ConnectionString } = require('azure-iot-common');
const { Mqtt } = require('azure-iot-device-mqtt');
const { eachLimited, registerDevices } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!connectionString) {
  console.error('TWINHUB_CONNECTION_STRING is not set');
  process.exit(2);
}
const deviceCount = Number(process.argv[2] || process.env.TWINHUB_FLEET_DEVICES || 200);
const patchesPerDevice = Number(process.argv[3] || process.env.TWINHUB_FLEET_PATCHES || 5);
const OPEN_CONCURRENCY = 50;

const run = Date.now().toString(36);
const ids = Array.from({ length: deviceCount }, (_, n) => `fleet-${run}-${n}`);

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function report(twin, patch) {
  return new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, (error) => (error ? reject(error) : resolve()));
  });
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const hostName = ConnectionString.parse(connectionString).HostName;
  const keys = await registerDevices(registry, ids);
  console.log(`- registered ${ids.length} devices`);

  const opened = Date.now();
  const devices = new Array(ids.length);
  await eachLimited(ids, OPEN_CONCURRENCY, async (deviceId, index) => {
    const client = Client.fromConnectionString(
      `HostName=${hostName};DeviceId=${deviceId};SharedAccessKey=${keys.get(deviceId)}`,
      Mqtt,
    );
    await client.open();
    const twin = await client.getTwin();
    devices[index] = { deviceId, client, twin };
  });
  const openSeconds = (Date.now() - opened) / 1000;
  console.log(`- ${ids.length} devices open with their twins in ${openSeconds.toFixed(1)} s`);

  const counted = registry.createQuery(
    `SELECT COUNT() AS connected FROM devices WHERE connectionState = 'Connected' AND STARTSWITH(deviceId, 'fleet-${run}-')`,
  );
  const { result } = await counted.next();
  assert.equal(result[0].connected, ids.length, 'the hub counts every device of this fleet as connected');

  // Every device reports `patchesPerDevice` times, one after the other, all devices at once.
  const latencies = [];
  const started = Date.now();
  await Promise.all(
    devices.map(async (device) => {
      for (let n = 1; n <= patchesPerDevice; n++) {
        const sent = process.hrtime.bigint();
        await report(device.twin, { sequence: n });
        latencies.push(Number(process.hrtime.bigint() - sent) / 1e6);
      }
    }),
  );
  const patchSeconds = (Date.now() - started) / 1000;
  latencies.sort((a, b) => a - b);

  // Acknowledged means stored: check a sample through the back end.
  const sample = devices.filter((_, index) => index % Math.max(1, Math.floor(devices.length / 20)) === 0);
  for (const device of sample) {
    const { responseBody: twin } = await registry.getTwin(device.deviceId);
    assert.equal(twin.properties.reported.sequence, patchesPerDevice, `${device.deviceId}'s last patch`);
  }

  await eachLimited(devices, OPEN_CONCURRENCY, (device) => device.client.close());
  const figures = {
    devices: ids.length,
    open_seconds: openSeconds,
    patches: latencies.length,
    patches_per_second: latencies.length / patchSeconds,
    patch_round_trip_ms: {
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      max: latencies[latencies.length - 1],
    },
    rss_mb_of_this_client_process: process.memoryUsage().rss / 1048576,
  };
  console.log(JSON.stringify(figures));
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error && error.stack ? error.stack : error);
    process.exit(1);
  },
);
