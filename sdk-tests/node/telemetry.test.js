// Device-to-cloud telemetry through the official Node.js SDKs, against a real twinhub: the device SDK
// (azure-iot-device) sends over each of Mqtt, MqttWs, Amqp, AmqpWs and Http (sendEvent, and sendEventBatch
// over Http), and @azure/event-hubs' EventHubConsumerClient reads the hub's Event Hubs-compatible endpoint
// with the connection string `twinhub connection-string --event-hubs` prints. Run by
// crates/twinhub/tests/sdk_telemetry.rs with TWINHUB_CONNECTION_STRING (iothubowner),
// TWINHUB_EVENTHUBS_CONNECTION_STRING and NODE_EXTRA_CA_CERTS set.
//
// Checks: every message arrives once, in order per device, with its body, application properties,
// message id, correlation id, content type and encoding, device id and enqueued time; the event hub's and
// partitions' properties; resuming from a sequence number and from an offset gives exactly what follows;
// a second consumer group reads the same events independently; so do a consumer over WebSockets and one
// in the SDK's development-emulator mode (plain AMQP, when TWINHUB_EVENTHUBS_EMULATOR_CONNECTION_STRING is set).
'use strict';

const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const { Client, Message } = require('azure-iot-device');
const { ConnectionString } = require('azure-iot-common');
const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');
const transports = {
  ...require('azure-iot-device-mqtt'),
  ...require('azure-iot-device-amqp'),
  ...require('azure-iot-device-http'),
};
const { log, run, waitFor } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
const eventHubsConnectionString = process.env.TWINHUB_EVENTHUBS_CONNECTION_STRING;
if (!connectionString || !eventHubsConnectionString) {
  console.error('TWINHUB_CONNECTION_STRING and TWINHUB_EVENTHUBS_CONNECTION_STRING must be set');
  process.exit(2);
}

const TRANSPORTS = ['Mqtt', 'MqttWs', 'Amqp', 'AmqpWs', 'Http'];
const PER_DEVICE = 5;

function message(deviceId, index) {
  const sent = new Message(JSON.stringify({ deviceId, index, temperature: 20 + index }));
  sent.messageId = `${deviceId}-${index}`;
  sent.correlationId = `corr-${index}`;
  sent.contentType = 'application/json';
  sent.contentEncoding = 'utf-8';
  // Lower case: HTTP header names reach the hub in lower case, so only those survive every transport.
  sent.properties.add('alert', index % 2 === 0 ? 'true' : 'false');
  return sent;
}

// Reads events of every partition (or of `partitionId`) from `positions` until `enough(events)`.
async function readUntil(consumer, positions, enough, what, partitionId) {
  const events = [];
  const handlers = {
      processEvents: async (batch, context) => {
        for (const event of batch) events.push({ ...event, partitionId: context.partitionId });
      },
      processError: async (error) => {
        console.error(`consumer error (${what}): ${error.message}`);
      },
  };
  const options = { startPosition: positions, maxBatchSize: 50, maxWaitTimeInSeconds: 1 };
  const subscription = partitionId === undefined
    ? consumer.subscribe(handlers, options)
    : consumer.subscribe(partitionId, handlers, options);
  try {
    await waitFor(what, () => enough(events), 30000);
  } finally {
    await subscription.close();
  }
  return events;
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const hostName = ConnectionString.parse(connectionString).HostName;
  const started = Date.now();
  const expected = new Map();

  for (const transportName of TRANSPORTS) {
    const deviceId = `node-telemetry-${transportName.toLowerCase()}`;
    log(`device ${deviceId}: send ${PER_DEVICE} messages over ${transportName}`);
    const { responseBody: device } = await registry.create({ deviceId });
    const client = Client.fromConnectionString(
      `HostName=${hostName};DeviceId=${deviceId};SharedAccessKey=${device.authentication.symmetricKey.primaryKey}`,
      transports[transportName],
    );
    await client.open();
    if (transportName === 'Http') {
      await client.sendEvent(message(deviceId, 0));
      const batch = Array.from({ length: PER_DEVICE - 1 }, (_, index) => message(deviceId, index + 1));
      await client.sendEventBatch(batch);
    } else {
      for (let index = 0; index < PER_DEVICE; index += 1) {
        await client.sendEvent(message(deviceId, index));
      }
    }
    await client.close();
    expected.set(deviceId, PER_DEVICE);
  }
  const total = PER_DEVICE * TRANSPORTS.length;

  const consumer = new EventHubConsumerClient('$Default', eventHubsConnectionString);
  log('the event hub: 4 partitions, named after the hub');
  const properties = await consumer.getEventHubProperties();
  assert.deepEqual(properties.partitionIds, ['0', '1', '2', '3']);
  assert.equal(properties.name, consumer.eventHubName);

  log(`read every partition from the start: ${total} events`);
  const events = await readUntil(consumer, earliestEventPosition, (seen) => seen.length >= total, `${total} events`);
  assert.equal(events.length, total, 'each message exactly once');
  for (const [deviceId, count] of expected) {
    const mine = events.filter((event) => event.systemProperties['iothub-connection-device-id'] === deviceId);
    assert.deepEqual(
      mine.map((event) => event.body.index),
      Array.from({ length: count }, (_, index) => index),
      `${deviceId}: every message, in order`,
    );
    assert.equal(new Set(mine.map((event) => event.partitionId)).size, 1, `${deviceId}: one partition`);
    for (const event of mine) {
      const index = event.body.index;
      assert.deepEqual(event.body, { deviceId, index, temperature: 20 + index });
      assert.equal(event.properties.alert, index % 2 === 0 ? 'true' : 'false');
      // The SDK's HTTP batch format carries bodies and application properties only.
      const batched = deviceId.endsWith('-http') && index > 0;
      if (!batched) {
        assert.equal(event.messageId, `${deviceId}-${index}`);
        assert.equal(event.correlationId, `corr-${index}`);
        assert.equal(event.contentType, 'application/json');
        assert.equal(event.systemProperties.contentEncoding, 'utf-8');
      }
      assert.equal(event.systemProperties['iothub-message-source'], 'Telemetry');
      assert.ok(event.enqueuedTimeUtc.getTime() >= started - 5000, 'enqueued after the device sent it');
      assert.equal(typeof event.offset, 'string');
    }
  }

  const mqttDevice = 'node-telemetry-mqtt';
  const mine = events.filter((event) => event.systemProperties['iothub-connection-device-id'] === mqttDevice);
  const partitionId = mine[0].partitionId;
  const partitionEvents = events
    .filter((event) => event.partitionId === partitionId)
    .sort((a, b) => a.sequenceNumber - b.sequenceNumber);
  log(`partition ${partitionId}: properties, sequence numbers contiguous from 0`);
  assert.deepEqual(
    partitionEvents.map((event) => event.sequenceNumber),
    partitionEvents.map((_, index) => index),
  );
  const partition = await consumer.getPartitionProperties(partitionId);
  assert.equal(partition.beginningSequenceNumber, 0);
  assert.equal(partition.lastEnqueuedSequenceNumber, partitionEvents.length - 1);
  assert.equal(partition.lastEnqueuedOffset, partitionEvents[partitionEvents.length - 1].offset);
  assert.equal(partition.isEmpty, false);

  const checkpoint = partitionEvents[1];
  const following = partitionEvents.slice(2).map((event) => event.sequenceNumber);
  for (const [what, position] of [
    ['a sequence number', { sequenceNumber: checkpoint.sequenceNumber }],
    ['an offset', { offset: checkpoint.offset }],
  ]) {
    log(`resume partition ${partitionId} from ${what} (exclusive): exactly what follows`);
    const resumed = await readUntil(
      consumer,
      position,
      (seen) => seen.length >= following.length,
      `the events after ${what}`,
      partitionId,
    );
    assert.deepEqual(resumed.map((event) => event.sequenceNumber), following);
  }
  const checkpointTime = checkpoint.enqueuedTimeUtc.getTime();
  const later = partitionEvents.filter((event) => event.enqueuedTimeUtc.getTime() > checkpointTime);
  log(`resume partition ${partitionId} from an enqueued time: exactly the ${later.length} events enqueued after it`);
  if (later.length > 0) {
    const resumed = await readUntil(
      consumer,
      { enqueuedOn: checkpoint.enqueuedTimeUtc },
      (seen) => seen.length >= later.length,
      'the events after an enqueued time',
      partitionId,
    );
    assert.deepEqual(resumed.map((event) => event.sequenceNumber), later.map((event) => event.sequenceNumber));
  }
  await consumer.close();

  const sameEvents = (seen) =>
    assert.deepEqual(seen.map((event) => event.messageId).sort(), events.map((event) => event.messageId).sort());
  log('a second consumer group reads the same events independently');
  const other = new EventHubConsumerClient('cg2', eventHubsConnectionString);
  sameEvents(await readUntil(other, earliestEventPosition, (seen) => seen.length >= total, `${total} events in cg2`));
  await other.close();

  log('AMQP over WebSockets (wss://<host>/$servicebus/websocket): the same events');
  const overWebSockets = new EventHubConsumerClient('$Default', eventHubsConnectionString, {
    webSocketOptions: { webSocket: require('ws') },
  });
  sameEvents(await readUntil(overWebSockets, earliestEventPosition, (seen) => seen.length >= total, 'events over WebSockets'));
  await overWebSockets.close();

  const emulator = process.env.TWINHUB_EVENTHUBS_EMULATOR_CONNECTION_STRING;
  if (emulator) {
    log('development-emulator mode (UseDevelopmentEmulator=true: plain AMQP): the same events');
    const plain = new EventHubConsumerClient('$Default', emulator);
    sameEvents(await readUntil(plain, earliestEventPosition, (seen) => seen.length >= total, 'events in emulator mode'));
    await plain.close();
  }
  console.log('telemetry.test.js: all checks passed');
}

run(main);
