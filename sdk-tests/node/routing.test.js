// Message routing and the hub's own events through the official Node.js SDKs, against a real twinhub
// started with sdk-tests/routes.toml (the fallback off; twin change, lifecycle and connection state events
// routed to the built-in endpoint; four telemetry routes with conditions on an application property, the
// body, system properties and the twin). Run by crates/twinhub/tests/sdk_routing.rs with
// TWINHUB_CONNECTION_STRING (iothubowner), TWINHUB_EVENTHUBS_CONNECTION_STRING and NODE_EXTRA_CA_CERTS.
//
// Two devices, one over Mqtt and one over Amqp, each: created (createDeviceIdentity), connected
// (deviceConnected), tags patched, desired patched, twin replaced by the back end, two reported patches
// by the device (updateTwin, updateTwin, replaceTwin, updateTwin, updateTwin: one message per twin
// version, in version order, with IoT Hub's properties and bodies), five telemetry messages of which
// only those a route's condition takes arrive, closed (deviceDisconnected) and deleted
// (deleteDeviceIdentity). @azure/event-hubs reads every event of the two devices, in order, and the
// event hub `alerts` inside twinhub (EntityPath=alerts), where a route copies the critical messages.
'use strict';

const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const { Client, Message } = require('azure-iot-device');
const { ConnectionString, SharedAccessSignature, anHourFromNow } = require('azure-iot-common');
const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');
const transports = { ...require('azure-iot-device-mqtt'), ...require('azure-iot-device-amqp') };
const { log, run, waitFor } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
const eventHubsConnectionString = process.env.TWINHUB_EVENTHUBS_CONNECTION_STRING;
if (!connectionString || !eventHubsConnectionString) {
  console.error('TWINHUB_CONNECTION_STRING and TWINHUB_EVENTHUBS_CONNECTION_STRING must be set');
  process.exit(2);
}

const ISO_8601 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

// Telemetry each device sends, and which of it the routes in sdk-tests/routes.toml take.
function telemetry(deviceId, plant) {
  const all = [
    { kind: 'app', level: 'critical', temperature: 10 }, // route "critical"
    { kind: 'app', level: 'normal', temperature: 10 }, // no route: dropped (the fallback is off)
    { kind: 'body', level: 'normal', temperature: 35 }, // route "hot" ($body)
    { kind: 'system', level: 'normal', temperature: 0 }, // route "from-amqp" ($connectionDeviceId)
    { kind: 'twin', level: 'normal', temperature: 0 }, // route "north" ($twin.tags)
  ];
  const routed = all.filter((sent) =>
    sent.level === 'critical' ||
    sent.temperature > 30 ||
    (sent.kind === 'system' && deviceId.endsWith('-amqp')) ||
    (sent.kind === 'twin' && plant === 'north'));
  return { all, routed };
}

function bodyOf(event) {
  return Buffer.isBuffer(event.body) ? JSON.parse(event.body.toString('utf8')) : event.body;
}

async function readAll(consumer, enough) {
  const events = [];
  const subscription = consumer.subscribe(
    {
      processEvents: async (batch, context) => {
        for (const event of batch) events.push({ ...event, partitionId: context.partitionId });
      },
      processError: async (error) => console.error(`consumer error: ${error.message}`),
    },
    { startPosition: earliestEventPosition, maxBatchSize: 100, maxWaitTimeInSeconds: 1 },
  );
  try {
    await waitFor('the routed events', () => enough(events), 30000);
    // A little longer: an event that should not be there (a duplicate, a message no route takes) shows.
    await new Promise((resolve) => setTimeout(resolve, 2000));
  } finally {
    await subscription.close();
  }
  return events;
}

// PUT /twins/{id}: the Node service SDK has no replaceTwin, so a back end replaces over the REST API
// (what the Python SDK's replace_twin sends).
async function replaceTwin(deviceId, twin, etag) {
  const parts = ConnectionString.parse(connectionString);
  const token = SharedAccessSignature.create(parts.HostName, parts.SharedAccessKeyName, parts.SharedAccessKey, anHourFromNow());
  const response = await fetch(`https://${parts.HostName}/twins/${encodeURIComponent(deviceId)}?api-version=2021-04-12`, {
    method: 'PUT',
    headers: { Authorization: token.toString(), 'Content-Type': 'application/json', 'If-Match': `"${etag}"` },
    body: JSON.stringify(twin),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return { responseBody: await response.json() };
}

async function exercise(registry, hostName, deviceId, transportName, plant) {
  log(`${deviceId}: create`);
  const { responseBody: device } = await registry.create({ deviceId });
  const client = Client.fromConnectionString(
    `HostName=${hostName};DeviceId=${deviceId};SharedAccessKey=${device.authentication.symmetricKey.primaryKey}`,
    transports[transportName],
  );
  log(`${deviceId}: connect over ${transportName}`);
  await client.open();
  const twin = await client.getTwin();

  log(`${deviceId}: the back end patches tags, then desired, then replaces the twin`);
  let { responseBody: serviceTwin } = await registry.getTwin(deviceId);
  ({ responseBody: serviceTwin } = await registry.updateTwin(deviceId, { tags: { plant: 'somewhere' } }, serviceTwin.etag));
  ({ responseBody: serviceTwin } = await registry.updateTwin(
    deviceId,
    { properties: { desired: { fan: { speed: 3 }, mode: 'eco' } } },
    serviceTwin.etag,
  ));
  ({ responseBody: serviceTwin } = await replaceTwin(
    deviceId,
    { tags: { plant, replaced: true }, properties: { desired: { mode: 'replaced' } } },
    serviceTwin.etag,
  ));

  log(`${deviceId}: the device reports twice`);
  await new Promise((resolve, reject) =>
    twin.properties.reported.update({ firmware: '1.0', battery: 90 }, (error) => (error ? reject(error) : resolve())));
  await new Promise((resolve, reject) =>
    twin.properties.reported.update({ battery: 80, firmware: null }, (error) => (error ? reject(error) : resolve())));

  log(`${deviceId}: five telemetry messages`);
  const { all, routed } = telemetry(deviceId, plant);
  for (const sent of all) {
    const message = new Message(JSON.stringify({ temperature: sent.temperature, kind: sent.kind }));
    message.contentType = 'application/json';
    message.contentEncoding = 'utf-8';
    message.properties.add('kind', sent.kind);
    message.properties.add('level', sent.level);
    await client.sendEvent(message);
  }

  log(`${deviceId}: disconnect, then delete`);
  await client.close();
  await waitFor(`${deviceId} disconnected`, async () => {
    const { responseBody } = await registry.get(deviceId);
    return responseBody.connectionState === 'Disconnected';
  });
  await registry.delete(deviceId);
  return routed;
}

function checkHubEvent(event, deviceId, source, schema, opType) {
  assert.equal(event.systemProperties['iothub-message-source'], source, `${deviceId}: ${opType} source`);
  assert.equal(event.systemProperties['iothub-connection-device-id'], deviceId);
  assert.equal(event.contentType, 'application/json');
  assert.equal(event.systemProperties.contentEncoding, 'utf-8');
  assert.ok(event.correlationId, 'a correlation id');
  assert.equal(event.properties.hubName, process.env.TWINHUB_HUB_NAME);
  assert.equal(event.properties.deviceId, deviceId);
  assert.equal(event.properties['iothub-message-schema'], schema);
  assert.equal(event.properties.opType, opType);
  assert.match(event.properties.operationTimestamp, ISO_8601);
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const hostName = ConnectionString.parse(connectionString).HostName;
  const devices = [
    ['node-routing-mqtt', 'Mqtt', 'north'],
    ['node-routing-amqp', 'Amqp', 'south'],
  ];
  const routedTelemetry = new Map();
  for (const [deviceId, transportName, plant] of devices) {
    routedTelemetry.set(deviceId, await exercise(registry, hostName, deviceId, transportName, plant));
  }

  // Per device: create, connect, 5 twin versions, its routed telemetry, disconnect, delete.
  const expectedCount = (deviceId) => 2 + 5 + routedTelemetry.get(deviceId).length + 2;
  const consumer = new EventHubConsumerClient('$Default', eventHubsConnectionString);
  const mine = (events, deviceId) =>
    events.filter((event) => event.systemProperties['iothub-connection-device-id'] === deviceId);
  log('read every event of the two devices');
  const events = await readAll(consumer, (seen) =>
    devices.every(([deviceId]) => mine(seen, deviceId).length >= expectedCount(deviceId)));
  await consumer.close();

  for (const [deviceId, , plant] of devices) {
    const ordered = mine(events, deviceId).sort((a, b) => a.sequenceNumber - b.sequenceNumber);
    log(`${deviceId}: ${ordered.length} events, in the order they happened`);
    assert.equal(new Set(ordered.map((event) => event.partitionId)).size, 1, 'one partition per device');
    const summary = ordered.map((event) => event.properties.opType || `telemetry:${event.properties.kind}`);
    const expectedTelemetry = routedTelemetry.get(deviceId).map((sent) => `telemetry:${sent.kind}`);
    assert.deepEqual(summary, [
      'createDeviceIdentity',
      'deviceConnected',
      'updateTwin',
      'updateTwin',
      'replaceTwin',
      'updateTwin',
      'updateTwin',
      ...expectedTelemetry,
      'deviceDisconnected',
      'deleteDeviceIdentity',
    ]);
    const [created, connected, tags, desired, replaced, reported1, reported2] = ordered;
    const disconnected = ordered[ordered.length - 2];
    const deleted = ordered[ordered.length - 1];

    log(`${deviceId}: lifecycle events carry the twin`);
    checkHubEvent(created, deviceId, 'deviceLifecycleEvents', 'deviceLifecycleNotification', 'createDeviceIdentity');
    checkHubEvent(deleted, deviceId, 'deviceLifecycleEvents', 'deviceLifecycleNotification', 'deleteDeviceIdentity');
    assert.equal(bodyOf(created).deviceId, deviceId);
    assert.equal(bodyOf(created).version, 1);
    assert.equal(bodyOf(created).properties.desired.$version, 1);
    assert.equal(bodyOf(deleted).tags.plant, plant, 'the twin as it was when deleted');

    log(`${deviceId}: connection state events, ordered by sequenceNumber`);
    checkHubEvent(connected, deviceId, 'deviceConnectionStateEvents', 'deviceConnectionStateNotification', 'deviceConnected');
    checkHubEvent(disconnected, deviceId, 'deviceConnectionStateEvents', 'deviceConnectionStateNotification', 'deviceDisconnected');
    const sequence = (event) => bodyOf(event).sequenceNumber;
    assert.match(sequence(connected), /^[0-9A-F]{64}$/);
    assert.ok(sequence(connected) < sequence(disconnected), 'sequence numbers grow');

    log(`${deviceId}: twin change notifications, one per version`);
    for (const event of [tags, desired, reported1, reported2]) {
      checkHubEvent(event, deviceId, 'twinChangeEvents', 'twinChangeNotification', 'updateTwin');
    }
    checkHubEvent(replaced, deviceId, 'twinChangeEvents', 'twinChangeNotification', 'replaceTwin');
    const versions = [tags, desired, replaced, reported1, reported2].map((event) => bodyOf(event).version);
    assert.deepEqual(versions, [2, 3, 4, 5, 6]);
    assert.deepEqual(bodyOf(tags), { version: 2, tags: { plant: 'somewhere' } });
    const desiredBody = bodyOf(desired).properties.desired;
    assert.deepEqual(desiredBody.fan, { speed: 3 });
    assert.equal(desiredBody.mode, 'eco');
    assert.equal(desiredBody.$version, 2);
    assert.equal(desiredBody.$metadata.fan.speed.$lastUpdatedVersion, 2);
    assert.match(desiredBody.$metadata.$lastUpdated, ISO_8601);
    const replacedBody = bodyOf(replaced);
    assert.equal(replacedBody.deviceId, deviceId);
    assert.deepEqual(replacedBody.tags, { plant, replaced: true });
    assert.equal(replacedBody.properties.desired.mode, 'replaced');
    assert.equal(replacedBody.properties.desired.fan, undefined, 'a replacement drops what it does not name');
    const reportedBody = bodyOf(reported1).properties.reported;
    assert.equal(reportedBody.firmware, '1.0');
    assert.equal(reportedBody.battery, 90);
    assert.equal(reportedBody.$version, 2);
    assert.match(reportedBody.$metadata.battery.$lastUpdated, ISO_8601);
    const secondReport = bodyOf(reported2).properties.reported;
    assert.equal(secondReport.battery, 80);
    assert.equal(secondReport.firmware, null, 'a removed property shows as null');
    assert.equal(secondReport.$version, 3);

    log(`${deviceId}: only the telemetry a route takes, as the device sent it`);
    const telemetryEvents = ordered.slice(7, 7 + expectedTelemetry.length);
    for (const [index, event] of telemetryEvents.entries()) {
      const sent = routedTelemetry.get(deviceId)[index];
      assert.equal(event.systemProperties['iothub-message-source'], 'Telemetry');
      assert.deepEqual(bodyOf(event), { temperature: sent.temperature, kind: sent.kind });
      assert.equal(event.properties.level, sent.level);
    }
  }

  log('the event hub "alerts": its own partitions, a copy of each critical message');
  const alertsConnectionString = eventHubsConnectionString.replace(/EntityPath=[^;]+/, 'EntityPath=alerts');
  const alerts = new EventHubConsumerClient('$Default', alertsConnectionString);
  const alertsProperties = await alerts.getEventHubProperties();
  assert.equal(alertsProperties.name, 'alerts');
  assert.deepEqual(alertsProperties.partitionIds, ['0', '1']);
  const copies = await readAll(alerts, (seen) => seen.length >= devices.length);
  await alerts.close();
  assert.deepEqual(
    copies.map((event) => event.systemProperties['iothub-connection-device-id']).sort(),
    devices.map(([deviceId]) => deviceId).sort(),
  );
  for (const event of copies) {
    assert.equal(event.properties.level, 'critical');
    assert.deepEqual(bodyOf(event), { temperature: 10, kind: 'app' });
  }
  await registry.close?.();
}

run(main);
