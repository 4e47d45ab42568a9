// Direct methods through the official Node.js SDKs, against a real twinhub: azure-iothub's Client calls
// methods (invokeDeviceMethod, POST /twins/{id}/methods) on devices that answer them with azure-iot-device's
// onDeviceMethod over each of Mqtt, MqttWs, Amqp and AmqpWs. Run by crates/twinhub/tests/sdk_methods.rs
// with TWINHUB_CONNECTION_STRING (iothubowner) and NODE_EXTRA_CA_CERTS set.
//
// Checks, over every transport: an object payload reaches the device and the device's status and object
// payload come back as exactly { status, payload }; a device's non-200 status (404 with an error payload)
// comes back as it gave it; 50 concurrent calls to one device each get their own answer.
// Checks, once (over Mqtt): a device that is registered but not connected, or connected but not
// listening to methods, is not online (HTTP 404, DeviceNotOnline), at once or after connectTimeoutInSeconds;
// a device that never answers times out after responseTimeoutInSeconds (HTTP 504, GatewayTimeoutError);
// a device that connects within connectTimeoutInSeconds gets the call; an out-of-range timeout is a bad
// request (HTTP 400); concurrent calls to one device per transport each reach the right device.
'use strict';

const assert = require('node:assert/strict');
const { Registry, Client: ServiceClient } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { ConnectionString } = require('azure-iot-common');
const transports = { ...require('azure-iot-device-mqtt'), ...require('azure-iot-device-amqp') };
const { log, run, sleep } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!connectionString) {
  console.error('TWINHUB_CONNECTION_STRING must be set');
  process.exit(2);
}

const TRANSPORTS = ['Mqtt', 'MqttWs', 'Amqp', 'AmqpWs'];
const CONCURRENT = 50;
const PER_DEVICE = 10;
const RESPONSE_TIMEOUT = 15;

// The device app: what it answers to each method (and 'never', which it does not answer).
const handlers = {
  ping: (deviceId) => (request, response) => response.send(200, { deviceId }),
  describe: (deviceId) => (request, response) => {
    const { text, numbers } = request.payload;
    response.send(201, {
      deviceId,
      method: request.methodName,
      reversed: [...text].reverse().join(''),
      sum: numbers.reduce((total, number) => total + number, 0),
      request: request.payload,
    });
  },
  lookup: (deviceId) => (request, response) =>
    response.send(404, { error: 'no such part', part: request.payload.part, deviceId }),
  // Answers after a short random delay, so that concurrent calls finish out of order.
  echo: (deviceId) => (request, response) =>
    setTimeout(() => response.send(200, { deviceId, call: request.payload.call }), Math.random() * 50),
  never: () => () => {},
};

async function createDevice(registry, deviceId) {
  const { responseBody: device } = await registry.create({ deviceId });
  const hostName = ConnectionString.parse(connectionString).HostName;
  return `HostName=${hostName};DeviceId=${deviceId};SharedAccessKey=${device.authentication.symmetricKey.primaryKey}`;
}

// Opens a device client over `transportName` that answers every method of `handlers`.
async function openDevice(deviceConnectionString, deviceId, transportName) {
  const client = Client.fromConnectionString(deviceConnectionString, transports[transportName]);
  client.on('error', (error) => console.error(`${deviceId}: device client error: ${error.message}`));
  await client.open();
  for (const [name, handler] of Object.entries(handlers)) {
    client.onDeviceMethod(name, handler(deviceId));
  }
  return client;
}

function invoke(service, deviceId, methodName, payload, options = {}) {
  return service.invokeDeviceMethod(deviceId, {
    methodName,
    payload,
    responseTimeoutInSeconds: RESPONSE_TIMEOUT,
    ...options,
  });
}

// onDeviceMethod gives no signal when its subscription is in place: the first call waits for it the way
// back ends wait for a device, with connectTimeoutInSeconds.
async function waitUntilListening(service, deviceId) {
  const { result } = await invoke(service, deviceId, 'ping', null, { connectTimeoutInSeconds: 15 });
  assert.deepEqual(result, { status: 200, payload: { deviceId } });
}

// Expects the call to fail with HTTP `statusCode`; returns the error and how long the call took.
async function invokeFailing(service, deviceId, methodName, options, statusCode) {
  const started = Date.now();
  const error = await invoke(service, deviceId, methodName, { n: 1 }, options).then(
    (answer) => assert.fail(`${methodName} on ${deviceId} answered ${JSON.stringify(answer.result)}`),
    (failure) => failure,
  );
  assert.ok(error.response, `an HTTP error, not ${error.stack}`);
  assert.equal(error.response.statusCode, statusCode, `HTTP ${statusCode}: ${error.responseBody}`);
  return { error, elapsed: Date.now() - started };
}

async function checkTransport(service, deviceId, transportName) {
  log(`${transportName}: an object payload in, the device's 201 and object payload out`);
  const request = { text: 'stressed', numbers: [1, 2, 3.5, -4], nested: { flag: true, nothing: null }, unicode: 'température ✓' };
  const { result, message } = await invoke(service, deviceId, 'describe', request);
  assert.equal(message.statusCode, 200);
  assert.deepEqual(result, {
    status: 201,
    payload: { deviceId, method: 'describe', reversed: 'desserts', sum: 2.5, request },
  });

  log(`${transportName}: the device's 404 and error payload come back as it gave them`);
  const { result: missing } = await invoke(service, deviceId, 'lookup', { part: 'flux-capacitor' });
  assert.deepEqual(missing, { status: 404, payload: { error: 'no such part', part: 'flux-capacitor', deviceId } });

  log(`${transportName}: ${CONCURRENT} concurrent calls, each with its own answer`);
  const answers = await Promise.all(
    Array.from({ length: CONCURRENT }, (_, call) => invoke(service, deviceId, 'echo', { call })),
  );
  answers.forEach(({ result: answer }, call) => assert.deepEqual(answer, { status: 200, payload: { deviceId, call } }));
}

async function main() {
  const started = Date.now();
  const registry = Registry.fromConnectionString(connectionString);
  const service = ServiceClient.fromConnectionString(connectionString);
  const clients = [];
  const devices = new Map();

  for (const transportName of TRANSPORTS) {
    const deviceId = `node-methods-${transportName.toLowerCase()}`;
    log(`device ${deviceId}: open over ${transportName} and answer methods`);
    const client = await openDevice(await createDevice(registry, deviceId), deviceId, transportName);
    clients.push(client);
    devices.set(transportName, deviceId);
    await waitUntilListening(service, deviceId);
    await checkTransport(service, deviceId, transportName);
  }
  const mqttDevice = devices.get('Mqtt');

  log(`${PER_DEVICE} concurrent calls to each of ${devices.size} devices: each answer from the right device`);
  const calls = [...devices.values()].flatMap((deviceId) =>
    Array.from({ length: PER_DEVICE }, (_, call) => ({ deviceId, call })),
  );
  const answers = await Promise.all(calls.map(({ deviceId, call }) => invoke(service, deviceId, 'echo', { call })));
  answers.forEach(({ result }, index) => assert.deepEqual(result, { status: 200, payload: calls[index] }));

  log('a device that is registered but not connected: 404 DeviceNotOnline at once');
  const offline = 'node-methods-offline';
  await createDevice(registry, offline);
  const notOnline = await invokeFailing(service, offline, 'ping', {}, 404);
  assert.equal(notOnline.error.message, 'Not found');
  assert.match(notOnline.error.responseBody, /DeviceNotOnline/);
  assert.ok(notOnline.elapsed < 3000, `answered in ${notOnline.elapsed} ms`);

  log('the same with connectTimeoutInSeconds 2: 404 DeviceNotOnline after waiting 2 s');
  const waited = await invokeFailing(service, offline, 'ping', { connectTimeoutInSeconds: 2 }, 404);
  assert.match(waited.error.responseBody, /DeviceNotOnline/);
  assert.ok(waited.elapsed >= 1900 && waited.elapsed < 6000, `answered in ${waited.elapsed} ms`);

  log('a device connected over Mqtt that does not listen to methods: 404 DeviceNotOnline');
  const idle = 'node-methods-idle';
  const idleClient = Client.fromConnectionString(await createDevice(registry, idle), transports.Mqtt);
  await idleClient.open();
  clients.push(idleClient);
  const notListening = await invokeFailing(service, idle, 'ping', {}, 404);
  assert.match(notListening.error.responseBody, /DeviceNotOnline/);

  log('responseTimeoutInSeconds out of range (3, 301): 400');
  for (const responseTimeoutInSeconds of [3, 301]) {
    const bad = await invokeFailing(service, mqttDevice, 'ping', { responseTimeoutInSeconds }, 400);
    assert.equal(bad.error.name, 'ArgumentError');
  }

  log('a method the device never answers, responseTimeoutInSeconds 5: 504 after 5 s');
  const timedOut = await invokeFailing(service, mqttDevice, 'never', { responseTimeoutInSeconds: 5 }, 504);
  assert.equal(timedOut.error.name, 'GatewayTimeoutError');
  assert.match(timedOut.error.responseBody, /GatewayTimeout/);
  assert.ok(timedOut.elapsed >= 4900 && timedOut.elapsed < 9000, `answered in ${timedOut.elapsed} ms`);

  log('the device still answers after the timed-out call');
  const { result: after } = await invoke(service, mqttDevice, 'echo', { call: 'after' });
  assert.deepEqual(after, { status: 200, payload: { deviceId: mqttDevice, call: 'after' } });

  log('connectTimeoutInSeconds 20 to a device that comes online over Mqtt 2 s after the call');
  const late = 'node-methods-late';
  const lateConnectionString = await createDevice(registry, late);
  const callStarted = Date.now();
  const lateCall = invoke(service, late, 'echo', { call: 'late' }, { connectTimeoutInSeconds: 20 });
  await sleep(2000);
  clients.push(await openDevice(lateConnectionString, late, 'Mqtt'));
  const { result: lateAnswer } = await lateCall;
  assert.deepEqual(lateAnswer, { status: 200, payload: { deviceId: late, call: 'late' } });
  const lateElapsed = Date.now() - callStarted;
  assert.ok(lateElapsed >= 2000 && lateElapsed < 15000, `answered in ${lateElapsed} ms`);

  log('close every client');
  for (const client of clients) {
    await client.close();
  }
  console.log(`methods.test.js: all checks passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

run(main);
