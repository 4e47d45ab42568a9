// Cloud-to-device messages through the official Node.js SDKs, against a real twinhub: azure-iothub's Client
// sends messages (AMQP link /messages/devicebound) and reads feedback (/messages/serviceBound/feedback);
// azure-iot-device's Client receives them with on('message') over each of Mqtt, MqttWs, Amqp, AmqpWs and
// Http, and settles them. Run by crates/twinhub/tests/sdk_c2d.rs with TWINHUB_CONNECTION_STRING
// (iothubowner) and NODE_EXTRA_CA_CERTS set.
//
// Checks, over every transport: a message with messageId, correlationId, ack 'full', an application
// property and a JSON body reaches the device with all of them; the device completes it; the back end gets
// one feedback record for it, statusCode 'Success', with the device's id and generation id.
// Checks, over Amqp, AmqpWs and Http (Mqtt cannot settle other than by PUBACK): a rejected message gives
// feedback 'Rejected'; an abandoned one comes again (over AMQP with a higher iothub-deliverycount; the
// Http transport does not expose the count), and completed then gives 'Success'.
// Checks, over Amqp: a message abandoned on each of its 10 deliveries is dead-lettered with feedback
// 'DeliveryCountExceeded' and not delivered again; a device holding an unsettled message still gets the
// next ones, in order.
// Checks, once: a back end over AmqpWs sends and reads feedback the same way; messages sent while a
// device is offline arrive in order when it connects over Mqtt; with the device offline 50 sends succeed
// and the 51st fails with DeviceMaximumQueueDepthExceededError (the registry counts 50 messages); a send
// to an unknown device fails with DeviceNotFoundError, one over 64 KB with MessageTooLargeError, and the
// send link still works after these; a message to an offline device that expires gives feedback
// 'Expired' when it asked for negative acks, and none when it asked for positive ones.
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { Registry, Client: ServiceClient, AmqpWs } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { ConnectionString, Message } = require('azure-iot-common');
const transports = {
  ...require('azure-iot-device-mqtt'),
  ...require('azure-iot-device-amqp'),
  ...require('azure-iot-device-http'),
};
const { log, run, sleep, waitFor } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!connectionString) {
  console.error('TWINHUB_CONNECTION_STRING must be set');
  process.exit(2);
}

// Http last: it polls, and its device side is the newest.
const TRANSPORTS = ['Mqtt', 'MqttWs', 'Amqp', 'AmqpWs', 'Http'];
const SETTLING = new Set(['Amqp', 'AmqpWs', 'Http']);
// The Http transport polls GET .../messages/devicebound every `interval` seconds (default 1, see
// azure-iot-device-http's defaultOptions); `drain` fetches every waiting message per poll.
const HTTP_RECEIVE_POLICY = { interval: 0.2, drain: true };
const QUEUE_DEPTH_MAX = 50;
const DELIVERY_COUNT_MAX = 10;
const FEEDBACK_CONTENT_TYPE = 'application/vnd.microsoft.iothub.feedback.json';

async function createDevice(registry, deviceId) {
  const { responseBody: device } = await registry.create({ deviceId });
  const hostName = ConnectionString.parse(connectionString).HostName;
  return {
    deviceId,
    generationId: device.generationId,
    connectionString: `HostName=${hostName};DeviceId=${deviceId};SharedAccessKey=${device.authentication.symmetricKey.primaryKey}`,
  };
}

// The messages a device client receives, in order, for the test to take one by one.
function inbox(client, deviceId) {
  const waiting = [];
  const takers = [];
  client.on('message', (message) => {
    const taker = takers.shift();
    if (taker) {
      taker(message);
    } else {
      waiting.push(message);
    }
  });
  return {
    next(ms = 15000) {
      if (waiting.length > 0) {
        return Promise.resolve(waiting.shift());
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          takers.splice(takers.indexOf(taker), 1);
          reject(new Error(`${deviceId}: no message within ${ms} ms`));
        }, ms);
        const taker = (message) => {
          clearTimeout(timer);
          resolve(message);
        };
        takers.push(taker);
      });
    },
    get pending() {
      return waiting.length;
    },
  };
}

// Opens a device client over `transportName` and starts receiving (on('message') enables C2D).
async function openDevice(device, transportName) {
  const client = Client.fromConnectionString(device.connectionString, transports[transportName]);
  client.on('error', (error) => console.error(`${device.deviceId}: device client error: ${error.message}`));
  if (transportName === 'Http') {
    await client.setOptions({ http: { receivePolicy: HTTP_RECEIVE_POLICY } });
  }
  await client.open();
  return { client, messages: inbox(client, device.deviceId) };
}

// Every feedback record the back end received, by originalMessageId.
function collectFeedback(receiver) {
  const records = new Map();
  const batches = [];
  receiver.on('message', (message) => {
    batches.push(message);
    for (const record of JSON.parse(message.data.toString())) {
      const list = records.get(record.originalMessageId) || [];
      list.push(record);
      records.set(record.originalMessageId, list);
    }
  });
  receiver.on('error', (error) => console.error(`feedback receiver error: ${error.message}`));
  return {
    batches,
    has: (messageId) => records.has(messageId),
    // The one record about `messageId`, once it came; checked against the device and `statusCode`.
    async expect(messageId, device, statusCode, ms = 15000) {
      await waitFor(`feedback ${statusCode} for ${messageId}`, () => records.has(messageId), ms);
      await sleep(100); // a second record for the same message would be a bug: give it a moment
      const list = records.get(messageId);
      assert.equal(list.length, 1, `one feedback record for ${messageId}: ${JSON.stringify(list)}`);
      const [record] = list;
      assert.deepEqual(
        {
          originalMessageId: record.originalMessageId,
          deviceId: record.deviceId,
          deviceGenerationId: record.deviceGenerationId,
          statusCode: record.statusCode,
        },
        { originalMessageId: messageId, deviceId: device.deviceId, deviceGenerationId: device.generationId, statusCode },
      );
      assert.equal(typeof record.description, 'string');
      const enqueued = Date.parse(record.enqueuedTimeUtc);
      assert.ok(Math.abs(Date.now() - enqueued) < 60000, `enqueuedTimeUtc ${record.enqueuedTimeUtc} is recent`);
      return record;
    },
  };
}

function outgoing(tag, ack, extra = {}) {
  const message = new Message(JSON.stringify({ tag, reading: 21.5, nested: { ok: true }, unicode: 'température ✓' }));
  message.messageId = extra.messageId || randomUUID();
  message.correlationId = `corr-${tag}`;
  message.ack = ack;
  message.contentType = 'application/json';
  message.contentEncoding = 'utf-8';
  message.properties.add('color', `blue-${tag}`);
  if (extra.expiryTimeUtc) {
    message.expiryTimeUtc = extra.expiryTimeUtc;
  }
  return message;
}

// The Http transport keeps the header's name as the property key: `iothub-app-<name>`.
function property(received, transportName, name) {
  return received.properties.getValue(transportName === 'Http' ? `iothub-app-${name}` : name);
}

function checkReceived(received, sent, transportName) {
  assert.equal(received.messageId, sent.messageId);
  assert.equal(received.correlationId, sent.correlationId);
  assert.equal(property(received, transportName, 'color'), sent.properties.getValue('color'));
  assert.deepEqual(JSON.parse(received.getData().toString()), JSON.parse(sent.getData()));
}

// AMQP devices see IoT Hub's annotations on the raw message; the other transports do not expose the count.
function deliveryCount(received) {
  const annotations = received.transportObj && received.transportObj.message_annotations;
  return annotations ? annotations['iothub-deliverycount'] : undefined;
}

async function sendFailing(service, deviceId, message) {
  return service.send(deviceId, message).then(
    () => assert.fail(`the send to ${deviceId} succeeded`),
    (error) => error,
  );
}

async function checkTransport(service, feedback, device, transportName) {
  const { client, messages } = await openDevice(device, transportName);

  log(`${transportName}: a message with ids, ack 'full', a property and a JSON body; completed -> Success`);
  const sent = outgoing(`${transportName}-complete`, 'full');
  await service.send(device.deviceId, sent);
  const received = await messages.next();
  checkReceived(received, sent, transportName);
  await client.complete(received);
  await feedback.expect(sent.messageId, device, 'Success');

  if (SETTLING.has(transportName)) {
    log(`${transportName}: rejected -> Rejected`);
    const rejected = outgoing(`${transportName}-reject`, 'full');
    await service.send(device.deviceId, rejected);
    const toReject = await messages.next();
    checkReceived(toReject, rejected, transportName);
    await client.reject(toReject);
    await feedback.expect(rejected.messageId, device, 'Rejected');

    log(`${transportName}: abandoned -> delivered again, no feedback; then completed -> Success`);
    const abandoned = outgoing(`${transportName}-abandon`, 'full');
    await service.send(device.deviceId, abandoned);
    const first = await messages.next();
    checkReceived(first, abandoned, transportName);
    await client.abandon(first);
    const again = await messages.next();
    checkReceived(again, abandoned, transportName);
    if (transportName.startsWith('Amqp')) {
      const [before, after] = [deliveryCount(first), deliveryCount(again)];
      assert.equal(typeof before, 'number', `iothub-deliverycount annotation: ${before}`);
      assert.ok(after > before, `delivery count ${before} then ${after}`);
    }
    assert.ok(!feedback.has(abandoned.messageId), 'an abandon gives no feedback');
    await client.complete(again);
    await feedback.expect(abandoned.messageId, device, 'Success');
  }

  if (transportName === 'Amqp') {
    log(`${transportName}: abandoned on each of its ${DELIVERY_COUNT_MAX} deliveries -> DeliveryCountExceeded, no more deliveries`);
    const exhausted = outgoing(`${transportName}-exhausted`, 'negative');
    await service.send(device.deviceId, exhausted);
    for (let delivery = 1; delivery <= DELIVERY_COUNT_MAX; delivery++) {
      const received = await messages.next();
      assert.equal(received.messageId, exhausted.messageId);
      assert.equal(deliveryCount(received), delivery);
      await client.abandon(received);
    }
    await feedback.expect(exhausted.messageId, device, 'DeliveryCountExceeded');
    await sleep(300);

    log(`${transportName}: 3 messages arrive while the first is still unsettled, then all complete in any order`);
    const held = [0, 1, 2].map((n) => outgoing(`${transportName}-held-${n}`, 'positive'));
    for (const message of held) await service.send(device.deviceId, message);
    const arrived = [];
    for (const message of held) {
      const received = await messages.next(5000);
      assert.equal(received.messageId, message.messageId, 'in queue order, without settling the earlier ones');
      arrived.push(received);
    }
    for (const received of arrived.reverse()) await client.complete(received);
    for (const message of held) await feedback.expect(message.messageId, device, 'Success');
  }
  assert.equal(messages.pending, 0, `${transportName}: no other message arrived`);
  return { client, messages };
}

async function main() {
  const started = Date.now();
  const registry = Registry.fromConnectionString(connectionString);
  const service = ServiceClient.fromConnectionString(connectionString);
  const clients = [];
  const devices = new Map();

  log('the back end opens and listens to feedback');
  await service.open();
  const { result: receiver } = await service.getFeedbackReceiver();
  const feedback = collectFeedback(receiver);

  for (const transportName of TRANSPORTS) {
    const device = await createDevice(registry, `node-c2d-${transportName.toLowerCase()}`);
    const opened = await checkTransport(service, feedback, device, transportName);
    clients.push(opened.client);
    devices.set(transportName, { device, ...opened });
  }
  assert.equal(feedback.batches[0].contentType, FEEDBACK_CONTENT_TYPE);

  log('a back end over AMQP over WebSockets (AmqpWs) sends and reads feedback the same way');
  const serviceWs = ServiceClient.fromConnectionString(connectionString, AmqpWs);
  await serviceWs.open();
  const { result: receiverWs } = await serviceWs.getFeedbackReceiver();
  const feedbackWs = collectFeedback(receiverWs);
  const overWs = outgoing('service-amqpws', 'positive');
  const amqpDevice = devices.get('Amqp');
  await serviceWs.send(amqpDevice.device.deviceId, overWs);
  const receivedOverWs = await amqpDevice.messages.next();
  checkReceived(receivedOverWs, overWs, 'Amqp');
  await amqpDevice.client.complete(receivedOverWs);
  // Feedback goes to one receiver, whichever takes it first.
  await waitFor('feedback for the message sent over AmqpWs', () => feedback.has(overWs.messageId) || feedbackWs.has(overWs.messageId));
  receiverWs.removeAllListeners('message');
  await serviceWs.close();

  log('5 messages to a device that is offline, then it connects over Mqtt: all 5, in order, then Success');
  const late = await createDevice(registry, 'node-c2d-offline');
  const queued = Array.from({ length: 5 }, (_, n) => outgoing(`offline-${n}`, 'full'));
  for (const message of queued) {
    await service.send(late.deviceId, message);
  }
  const lateDevice = await openDevice(late, 'Mqtt');
  clients.push(lateDevice.client);
  for (const message of queued) {
    const received = await lateDevice.messages.next();
    checkReceived(received, message, 'Mqtt');
    await lateDevice.client.complete(received);
  }
  for (const message of queued) {
    await feedback.expect(message.messageId, late, 'Success');
  }

  log(`the queue limit: ${QUEUE_DEPTH_MAX} sends to an offline device succeed, the next fails`);
  const full = await createDevice(registry, 'node-c2d-full');
  await Promise.all(
    Array.from({ length: QUEUE_DEPTH_MAX }, (_, n) => service.send(full.deviceId, outgoing(`full-${n}`, 'none'))),
  );
  const { responseBody: fullTwin } = await registry.get(full.deviceId);
  assert.equal(fullTwin.cloudToDeviceMessageCount, QUEUE_DEPTH_MAX);
  const overflow = await sendFailing(service, full.deviceId, outgoing('full-overflow', 'none'));
  assert.equal(overflow.name, 'DeviceMaximumQueueDepthExceededError', overflow.stack);
  assert.equal(overflow.amqpError && overflow.amqpError.condition, 'amqp:resource-limit-exceeded');

  log('a send to an unknown device fails with DeviceNotFoundError');
  const unknown = await sendFailing(service, 'node-c2d-nobody', outgoing('nobody', 'full'));
  assert.equal(unknown.name, 'DeviceNotFoundError', unknown.stack);
  assert.equal(unknown.amqpError && unknown.amqpError.condition, 'amqp:not-found');

  log('a message over 64 KB fails with MessageTooLargeError');
  const large = new Message(Buffer.alloc(64 * 1024 + 1, 'x'));
  large.messageId = randomUUID();
  const tooLarge = await sendFailing(service, devices.get('Mqtt').device.deviceId, large);
  assert.equal(tooLarge.name, 'MessageTooLargeError', tooLarge.stack);
  assert.equal(tooLarge.amqpError && tooLarge.amqpError.condition, 'amqp:link:message-size-exceeded');

  log('the send link still works after the refusals');
  const mqtt = devices.get('Mqtt');
  const afterRefusals = outgoing('after-refusals', 'positive');
  await service.send(mqtt.device.deviceId, afterRefusals);
  const receivedAfter = await mqtt.messages.next();
  checkReceived(receivedAfter, afterRefusals, 'Mqtt');
  await mqtt.client.complete(receivedAfter);
  await feedback.expect(afterRefusals.messageId, mqtt.device, 'Success');

  log("expiry: messages to an offline device that expire in 2 s: 'Expired' for ack negative, nothing for positive");
  const expiring = await createDevice(registry, 'node-c2d-expiry');
  // rhea writes absolute_expiry_time from a number of milliseconds (a Date fails to encode).
  const expiresAt = Date.now() + 2000;
  const negative = outgoing('expire-negative', 'negative', { expiryTimeUtc: expiresAt });
  const positive = outgoing('expire-positive', 'positive', { expiryTimeUtc: expiresAt });
  await service.send(expiring.deviceId, negative);
  await service.send(expiring.deviceId, positive);
  await feedback.expect(negative.messageId, expiring, 'Expired', 10000);
  assert.ok(Date.now() >= expiresAt, 'not expired before its expiry');
  await sleep(1500);
  assert.ok(!feedback.has(positive.messageId), 'no feedback for an expired message with ack positive');
  const { responseBody: expiredTwin } = await registry.get(expiring.deviceId);
  assert.equal(expiredTwin.cloudToDeviceMessageCount, 0, 'expired messages left the queue');

  log('close every client');
  for (const client of clients) {
    await client.close();
  }
  await service.close();
  console.log(`c2d.test.js: all checks passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

run(main);
