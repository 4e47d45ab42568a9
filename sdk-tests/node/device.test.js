// A device through the official Node.js device SDK (azure-iot-device with the transport named by
// TWINHUB_TRANSPORT: Mqtt, MqttWs, Amqp or AmqpWs) and its back end through azure-iothub, against a real twinhub.
// Run by crates/twinhub/tests/sdk_device.rs with TWINHUB_CONNECTION_STRING (iothubowner),
// TWINHUB_DEVICE_ID and NODE_EXTRA_CA_CERTS (the hub's CA) set.
//
// The seed's device app (open, getTwin, report connectivity) and back-end app (tag patch, the two
// queries), then: a desired property set by the back end arrives with its $version; the device keeps
// receiving them across SAS renewals (a 6 s token, renewed every 3 s: each renewal is a full MQTT
// reconnect that subscribes to nothing again); and a device that was closed while desired changed
// converges once it opens again. Exits non-zero with a message on the first failed check.
'use strict';

const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const { Client, SharedAccessKeyAuthenticationProvider } = require('azure-iot-device');
const { ConnectionString } = require('azure-iot-common');
const { log, sleep, waitFor, run, deviceScriptEnv } = require('./support');

const { connectionString, transportName, deviceId, Transport } = deviceScriptEnv();

const TOKEN_SECONDS = 6;
const RENEWAL_MARGIN_SECONDS = 3;


function report(twin, patch) {
  return new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, (error) => (error ? reject(error) : resolve()));
  });
}

async function queryIds(registry, sql) {
  const query = registry.createQuery(sql, 100);
  const ids = [];
  do {
    const { result } = await query.nextAsTwin();
    ids.push(...result.map((twin) => twin.deviceId));
  } while (query.hasMoreResults);
  return ids;
}

async function setDesired(registry, desired) {
  const { responseBody: twin } = await registry.getTwin(deviceId);
  const { responseBody: updated } = await registry.updateTwin(deviceId, { properties: { desired } }, twin.etag);
  return updated.properties.desired.$version;
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const hostName = ConnectionString.parse(connectionString).HostName;

  log(`register ${deviceId}`);
  const { responseBody: device } = await registry.create({ deviceId });
  const deviceConnectionString =
    `HostName=${hostName};DeviceId=${deviceId};SharedAccessKey=${device.authentication.symmetricKey.primaryKey}`;

  log(`device app: open over ${transportName} with a ${TOKEN_SECONDS} s token`);
  const auth = SharedAccessKeyAuthenticationProvider.fromConnectionString(
    deviceConnectionString,
    TOKEN_SECONDS,
    RENEWAL_MARGIN_SECONDS,
  );
  const client = Client.fromAuthenticationProvider(auth, Transport);
  await client.open();

  log('device app: getTwin');
  const twin = await client.getTwin();
  assert.equal(twin.properties.desired.$version, 1, 'a new twin has desired $version 1');
  assert.equal(twin.properties.reported.$version, 1, 'a new twin has reported $version 1');

  log("device app: report {connectivity: {type: 'cellular'}}");
  await report(twin, { connectivity: { type: 'cellular' } });

  log('back end: the device is connected and its reported properties are there');
  const { responseBody: connected } = await registry.get(deviceId);
  assert.equal(connected.connectionState, 'Connected');
  const { responseBody: serviceTwin } = await registry.getTwin(deviceId);
  assert.deepEqual(serviceTwin.properties.reported.connectivity, { type: 'cellular' });

  log("back end: tag the device {location: {region: 'US', plant: 'Redmond43'}}");
  await registry.updateTwin(deviceId, { tags: { location: { region: 'US', plant: 'Redmond43' } } }, serviceTwin.etag);

  log("back end: the seed's two queries find the device");
  const inPlant = await queryIds(registry, "SELECT * FROM devices WHERE tags.location.plant = 'Redmond43'");
  assert.deepEqual(inPlant, [deviceId]);
  const cellular = await queryIds(
    registry,
    "SELECT * FROM devices WHERE tags.location.plant = 'Redmond43' AND properties.reported.connectivity.type = 'cellular'",
  );
  assert.deepEqual(cellular, [deviceId]);

  log('device app: listen for desired properties');
  const received = [];
  twin.on('properties.desired', (delta) => received.push(JSON.parse(JSON.stringify(delta))));
  // The SDK hands the listener the desired properties it already has first.
  await waitFor('the current desired properties', () => received.length > 0);

  log('back end: set desired {telemetryInterval: 5}');
  const v2 = await setDesired(registry, { telemetryInterval: 5 });
  assert.equal(v2, 2);
  await waitFor('desired $version 2 at the device', () =>
    received.some((delta) => delta.$version === 2 && delta.telemetryInterval === 5),
  );

  log(`wait ${TOKEN_SECONDS + 3} s: the token is renewed at least twice (MQTT: a full reconnect; AMQP: a CBS put-token)`);
  await sleep((TOKEN_SECONDS + 3) * 1000);
  const v3 = await setDesired(registry, { telemetryInterval: 7 });
  await waitFor(`desired $version ${v3} after token renewals`, () =>
    received.some((delta) => delta.$version === v3 && delta.telemetryInterval === 7),
  );
  log('device app: reporting still works after renewals');
  await report(twin, { firmware: '1.0.1' });

  log('device app: listen for cloud-to-device messages and direct methods (the links or subscriptions attach)');
  client.on('message', (message) => client.complete(message, () => {}));
  client.onDeviceMethod('reboot', (request, response) => response.send(200, { ok: true }, () => {}));

  log('device app: send a telemetry message (accepted; routing comes later)');
  const { Message } = require('azure-iot-device');
  await client.sendEvent(new Message(JSON.stringify({ temperature: 21.5 })));

  if (transportName.startsWith('Mqtt')) {
    // Over MQTT the session outlives the connection, so a device that was closed converges on reopening.
    // Over AMQP subscriptions belong to links: Node subscribes again only after a dropped connection,
    // not after close() and open(), so there is nothing to converge on here.
    log('device app: close; back end changes desired twice meanwhile');
    await client.close();
    await setDesired(registry, { mode: 'eco' });
    const latest = await setDesired(registry, { telemetryInterval: 9 });
    const { responseBody: offline } = await registry.get(deviceId);
    assert.equal(offline.connectionState, 'Disconnected');

    log('device app: open again; it converges on the latest desired properties without asking');
    await client.open();
    await waitFor(`desired $version ${latest} after reopening`, () =>
      received.some((delta) => delta.$version === latest && delta.mode === 'eco' && delta.telemetryInterval === 9),
    );
    assert.equal(twin.properties.desired.$version, latest);
  }

  await client.close();
  const { responseBody: reported } = await registry.getTwin(deviceId);
  assert.equal(reported.properties.reported.firmware, '1.0.1');
  console.log('all checks passed');
}

run(main);
