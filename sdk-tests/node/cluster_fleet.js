// A fleet of official Node.js SDK devices on a twinhub cluster behind a load balancer, with a node killed
// in the middle: every device ends with the last desired version, and every reported patch a device saw
// acknowledged is in its twin.
//
// Devices (half `Mqtt`, half `Amqp`) connect through the balancer (the connection string's host name),
// as to one hub. Back ends write desired properties through every node in turn, each pinned to its node
// (REST with the hub's SAS, to the node's own address). Each device reports every desired step it sees.
// After half of the rounds, the node `TWINHUB_KILL_PID` (at `TWINHUB_KILL_NODE`) is killed with SIGKILL:
// its devices reconnect through the balancer to the others and go on.
//
// Needs TWINHUB_CONNECTION_STRING (iothubowner, host name = the balancer), NODE_EXTRA_CA_CERTS,
// TWINHUB_NODES (the nodes' addresses, comma-separated), TWINHUB_KILL_PID and TWINHUB_KILL_NODE;
// TWINHUB_FLEET_DEVICES (default 300) and TWINHUB_FLEET_ROUNDS (default 4).
'use strict';

const assert = require('node:assert/strict');
const https = require('node:https');
const { Registry } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { ConnectionString, SharedAccessSignature } = require('azure-iot-common');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Amqp } = require('azure-iot-device-amqp');
const { log, sleep, waitFor, run, eachLimited, registerDevices } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
const nodes = (process.env.TWINHUB_NODES || '').split(',').filter(Boolean);
const killPid = Number(process.env.TWINHUB_KILL_PID);
const killNode = process.env.TWINHUB_KILL_NODE;
if (!connectionString || nodes.length < 2 || !killPid || !nodes.includes(killNode)) {
  console.error('TWINHUB_CONNECTION_STRING, TWINHUB_NODES (two or more), TWINHUB_KILL_PID and TWINHUB_KILL_NODE (one of the nodes) must be set');
  process.exit(2);
}
const deviceCount = Number(process.env.TWINHUB_FLEET_DEVICES || 300);
const rounds = Number(process.env.TWINHUB_FLEET_ROUNDS || 4);
const OPEN_CONCURRENCY = 25;
const PATCH_CONCURRENCY = 16;

const owner = ConnectionString.parse(connectionString);
const run_ = Date.now().toString(36);
const ids = Array.from({ length: deviceCount }, (_, n) => `cf-${run_}-${n}`);

// A back end pinned to one node: the hub's REST API at the node's own address, signed for the host name
// devices and back ends use (the balancer's).
function patchDesiredThrough(node, deviceId, desired) {
  const token = SharedAccessSignature.create(
    owner.HostName,
    owner.SharedAccessKeyName,
    owner.SharedAccessKey,
    Math.floor(Date.now() / 1000) + 600,
  ).toString();
  const body = JSON.stringify({ properties: { desired } });
  return new Promise((resolve, reject) => {
    const request = https.request(
      {
        host: node,
        port: 443,
        method: 'PATCH',
        path: `/twins/${encodeURIComponent(deviceId)}?api-version=2021-04-12`,
        headers: {
          Authorization: token,
          'Content-Type': 'application/json',
          'Content-Length': Buffer.byteLength(body),
          'If-Match': '*',
        },
        timeout: 20000,
      },
      (response) => {
        let text = '';
        response.on('data', (chunk) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode, text }));
      },
    );
    request.on('timeout', () => request.destroy(new Error(`PATCH through ${node} timed out`)));
    request.on('error', reject);
    request.end(body);
  });
}

function reportSeen(device, step) {
  return new Promise((resolve, reject) => {
    device.twin.properties.reported.update({ seen: step }, (error) => (error ? reject(error) : resolve()));
  });
}

// Opens a device through the balancer and follows its desired properties: each step it sees, it reports.
async function openDevice(deviceId, key, Transport) {
  const device = { deviceId, transport: Transport.name, acknowledged: 0, reconnects: 0, client: null, twin: null };
  device.client = Client.fromConnectionString(
    `HostName=${owner.HostName};DeviceId=${deviceId};SharedAccessKey=${key}`,
    Transport,
  );
  // As the SDK's samples do: when the transport drops for good, open again.
  device.client.on('disconnect', () => {
    device.reconnects += 1;
    const reopen = async () => {
      for (;;) {
        try {
          await device.client.open();
          return;
        } catch (error) {
          await sleep(500);
        }
      }
    };
    reopen();
  });
  await device.client.open();
  device.twin = await device.client.getTwin();
  device.twin.on('properties.desired', (delta) => {
    const step = delta.step;
    if (typeof step !== 'number') return;
    reportSeen(device, step).then(
      () => {
        device.acknowledged = Math.max(device.acknowledged, step);
      },
      () => {
        // Not acknowledged: nothing is promised for it. The next step is reported again.
      },
    );
  });
  return device;
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const keys = await registerDevices(registry, ids);
  log(`registered ${ids.length} devices through the balancer`);

  const devices = new Array(ids.length);
  await eachLimited(ids, OPEN_CONCURRENCY, async (deviceId, index) => {
    devices[index] = await openDevice(deviceId, keys.get(deviceId), index % 2 === 0 ? Mqtt : Amqp);
  });
  log(`${devices.length} devices open through the balancer (half Mqtt, half Amqp)`);

  let live = nodes.slice();
  const started = Date.now();
  for (let round = 1; round <= rounds; round++) {
    if (round === Math.floor(rounds / 2) + 1) {
      process.kill(killPid, 'SIGKILL');
      live = nodes.filter((node) => node !== killNode);
      log(`killed the node at ${killNode}; back ends go on through ${live.join(', ')}`);
    }
    // Back ends on every live node: device n's patch of this round goes through node (n + round).
    await eachLimited(devices, PATCH_CONCURRENCY, async (device, index) => {
      const node = live[(index + round) % live.length];
      for (let attempt = 1; ; attempt++) {
        try {
          const reply = await patchDesiredThrough(node, device.deviceId, { step: round });
          assert.equal(reply.status, 200, `PATCH ${device.deviceId} through ${node}: ${reply.status} ${reply.text}`);
          return;
        } catch (error) {
          // A request caught by the kill: sent again (a desired patch with If-Match * is idempotent).
          if (attempt >= 5) throw error;
          await sleep(200);
        }
      }
    });
    log(`round ${round}: ${devices.length} desired patches through ${live.length} nodes`);
  }

  // Every device converges on the last step, whichever node it ended on.
  const behind = () => devices.filter((device) => device.twin.properties.desired.step !== rounds);
  try {
    await waitFor('every device to hold the last desired step', () => behind().length === 0, 90000);
  } catch (error) {
    const late = behind();
    const byTransport = late.reduce((counts, d) => ({ ...counts, [d.transport]: (counts[d.transport] || 0) + 1 }), {});
    console.error(`${late.length} devices behind: ${JSON.stringify(byTransport)}; for example`);
    for (const device of late.slice(0, 5)) {
      console.error(`  ${device.deviceId} (${device.transport}): step ${device.twin.properties.desired.step}, desired $version ${device.twin.properties.desired.$version}, reopened ${device.reconnects} times`);
    }
    throw error;
  }
  await waitFor('every device to see its last report acknowledged', () => devices.every((d) => d.acknowledged === rounds), 60000);
  log(`every device holds step ${rounds} and reported it (${((Date.now() - started) / 1000).toFixed(1)} s)`);

  // Every acknowledged report is in the twin, read through the balancer.
  log('reading every twin of the fleet with a query');
  const query = registry.createQuery(
    `SELECT deviceId, properties.reported.seen AS seen, connectionState FROM devices WHERE STARTSWITH(deviceId, 'cf-${run_}-')`,
    100,
  );
  const seen = new Map();
  let connected = 0;
  for (let page = 1; ; page++) {
    assert.ok(page <= Math.ceil(devices.length / 100) + 1, 'the query pages end');
    // The promise form of `next` restarts from the first page unless given the token (an SDK quirk).
    const { result } = await query.next(query.continuationToken);
    for (const row of result) {
      seen.set(row.deviceId, row.seen);
      if (row.connectionState === 'Connected') connected += 1;
    }
    if (!query.hasMoreResults) break;
  }
  log(`read ${seen.size} twins`);
  for (const device of devices) {
    assert.equal(seen.get(device.deviceId), device.acknowledged, `${device.deviceId}'s last acknowledged report`);
  }
  assert.equal(connected, devices.length, 'every device is shown Connected');
  const reopened = devices.filter((device) => device.reconnects > 0).length;
  log(`${devices.length} twins hold every acknowledged report (${reopened} clients were opened again by the app)`);

  await eachLimited(devices, OPEN_CONCURRENCY, (device) => {
    device.client.removeAllListeners('disconnect');
    return device.client.close();
  });
}

run(main);
