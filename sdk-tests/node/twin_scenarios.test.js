// The twin scenarios the Node SDK's maintainers run against IoT Hub (their twin end-to-end suite), in our
// own words, through the official device SDK over the transport named by TWINHUB_TRANSPORT (Mqtt, MqttWs,
// Amqp or AmqpWs) and azure-iothub as the back end. Run by crates/twinhub/tests/sdk_device.rs with
// TWINHUB_CONNECTION_STRING (iothubowner), TWINHUB_DEVICE_ID and NODE_EXTRA_CA_CERTS set.
//
// - null for the whole desired section (with and without If-Match *) removes every desired property,
//   at the device too, whether the device subscribed before the change or after it;
// - null for the whole tags section removes every tag;
// - a device that adds its desired listener while the back end writes desired properties in a tight loop
//   ends at the last $version with every value (no change lost between its getTwin and its subscription);
// - a device cannot clear its reported properties with null: the SDK's update fails.
'use strict';

const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { ConnectionString } = require('azure-iot-common');
const { log, waitFor, run, deviceScriptEnv } = require('./support');

const { connectionString, deviceId, Transport } = deviceScriptEnv();

const TIGHT_LOOP_WRITES = 40;
const settings = { foo: 1, bar: { baz: 2, tweedle: { dee: 3 } } };

// The user-visible members of a twin section (no $version, $metadata or SDK functions).
function members(section) {
  return Object.keys(section).filter((key) => !key.startsWith('$') && typeof section[key] !== 'function');
}

async function openDevice(registry, id) {
  const hostName = ConnectionString.parse(connectionString).HostName;
  const { responseBody: device } = await registry.create({ deviceId: id });
  const client = Client.fromConnectionString(
    `HostName=${hostName};DeviceId=${id};SharedAccessKey=${device.authentication.symmetricKey.primaryKey}`,
    Transport,
  );
  await client.open();
  const twin = await client.getTwin();
  return { client, twin };
}

// The back end's twin update, with the twin's etag or '*'; returns the updated twin.
async function update(registry, id, patch, ifMatch) {
  const { responseBody: current } = await registry.getTwin(id);
  const { responseBody: updated } = await registry.updateTwin(id, patch, ifMatch === '*' ? '*' : current.etag);
  return updated;
}

async function nullOutAllDesired(registry) {
  const { client, twin } = await openDevice(registry, deviceId);
  assert.equal(twin.properties.desired.$version, 1);
  let listening = false;
  for (const ifMatch of ['etag', '*']) {
    log(`back end: set desired properties, then null for the whole section (If-Match ${ifMatch})`);
    await update(registry, deviceId, { properties: { desired: settings } }, ifMatch);
    const cleared = await update(registry, deviceId, { properties: { desired: null } }, ifMatch);
    assert.deepEqual(members(cleared.properties.desired), [], 'the answer shows no desired properties');
    const version = cleared.properties.desired.$version;
    const { responseBody: read } = await registry.getTwin(deviceId);
    assert.deepEqual(members(read.properties.desired), [], 'a later GET shows no desired properties');
    assert.equal(read.properties.desired.$version, version);

    if (!listening) {
      // As in the SDK's own scenario: the listener (the subscription) comes after both changes.
      log('device app: listen for desired properties after the changes');
      twin.on('properties.desired', () => {});
      listening = true;
    }
    await waitFor(`desired $version ${version} with no properties at the device`, () =>
      twin.properties.desired.$version === version && members(twin.properties.desired).length === 0,
    );
  }

  log('device app: null for the whole reported section is refused');
  await assert.rejects(
    new Promise((resolve, reject) =>
      twin.properties.reported.update(null, (error) => (error ? reject(error) : resolve())),
    ),
    'the SDK reports the refusal',
  );
  await client.close();
}

async function nullOutAllTags(registry) {
  for (const ifMatch of ['etag', '*']) {
    log(`back end: set tags, then null for the whole section (If-Match ${ifMatch})`);
    const tagged = await update(registry, deviceId, { tags: settings }, ifMatch);
    assert.deepEqual(tagged.tags, settings);
    const untagged = await update(registry, deviceId, { tags: null }, ifMatch);
    assert.deepEqual(untagged.tags, {});
    const { responseBody: read } = await registry.getTwin(deviceId);
    assert.deepEqual(read.tags, {});
  }
}

async function subscribeDuringATightLoop(registry) {
  const id = `${deviceId}-loop`;
  const { client, twin } = await openDevice(registry, id);
  log(`back end: ${TIGHT_LOOP_WRITES} desired writes in a tight loop; the device subscribes meanwhile`);
  let last = 0;
  let written = 0;
  const writes = (async () => {
    for (let index = 0; index < TIGHT_LOOP_WRITES; index += 1) {
      const updated = await update(registry, id, { properties: { desired: { counter: index, [`k${index}`]: index } } }, '*');
      last = updated.properties.desired.$version;
      written += 1;
    }
  })();
  await waitFor('the first writes', () => written >= 3);
  twin.on('properties.desired', () => {});
  await writes;
  assert.equal(last, TIGHT_LOOP_WRITES + 1);
  await waitFor(`desired $version ${last} with every value at the device`, () => {
    const desired = twin.properties.desired;
    return (
      desired.$version === last &&
      desired.counter === TIGHT_LOOP_WRITES - 1 &&
      Array.from({ length: TIGHT_LOOP_WRITES }, (_, index) => desired[`k${index}`] === index).every(Boolean)
    );
  });
  await client.close();
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  await nullOutAllDesired(registry);
  await nullOutAllTags(registry);
  await subscribeDuringATightLoop(registry);
  console.log('all checks passed');
}

run(main);
