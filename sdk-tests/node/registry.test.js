// The device registry and twins through the official Node.js service SDK (azure-iothub Registry and
// Twin), against a real twinhub. Run by crates/twinhub/tests/sdk_registry.rs with
// TWINHUB_CONNECTION_STRING (iothubowner) and NODE_EXTRA_CA_CERTS (the hub's CA) set.
// Exits non-zero with a message on the first failed check.
'use strict';

const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const { ConnectionString } = require('azure-iot-common');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!connectionString) {
  console.error('TWINHUB_CONNECTION_STRING is not set');
  process.exit(2);
}

const run = Date.now().toString(36);
const generatedId = `node-gen-${run}`;
const suppliedId = `node-sup-${run}`;
const suppliedKeys = {
  primaryKey: Buffer.alloc(32, 1).toString('base64'),
  secondaryKey: Buffer.alloc(32, 2).toString('base64'),
};

let step = '';
function log(message) {
  step = message;
  console.log(`- ${message}`);
}

// Runs `operation`, which must fail; checks the SDK's error class (azure-iothub raises its own copies of
// the azure-iot-common classes, so the class is checked by name), the HTTP status, that the SDK parsed
// the hub's error body (a message of its own, not the raw 'Error: <body>' fallback) and the
// iothub-errorcode header.
async function expectError(operation, { name, status, code }) {
  let error;
  try {
    await operation();
  } catch (caught) {
    error = caught;
  }
  assert.ok(error, `expected ${name} (${status}), but the call succeeded`);
  assert.equal(error.constructor.name, name, `error class (message: ${error.message})`);
  assert.equal(error.name, name, 'error name');
  assert.ok(error.response, `${name} carries the HTTP response`);
  assert.equal(error.response.statusCode, status, 'HTTP status');
  assert.equal(error.response.headers['iothub-errorcode'], code, 'iothub-errorcode header');
  assert.ok(
    error.message && !error.message.startsWith('Error: '),
    `the SDK parsed the hub's error body into a message, got ${JSON.stringify(error.message)}`,
  );
  const body = JSON.parse(error.responseBody);
  assert.ok(body.Message.startsWith(`ErrorCode:${code};`), `error body Message: ${body.Message}`);
  assert.match(body.ExceptionMessage, /^Tracking ID:/, 'error body ExceptionMessage');
  return error;
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);

  log('create a device with empty keys: the hub generates both');
  const created = (
    await registry.create({
      deviceId: generatedId,
      status: 'enabled',
      authentication: { symmetricKey: { primaryKey: '', secondaryKey: '' } },
    })
  ).responseBody;
  assert.equal(created.deviceId, generatedId);
  assert.equal(created.status, 'enabled');
  assert.equal(created.authentication.type, 'sas');
  const generated = created.authentication.symmetricKey;
  for (const which of ['primaryKey', 'secondaryKey']) {
    assert.equal(typeof generated[which], 'string', `${which} generated`);
    assert.equal(Buffer.from(generated[which], 'base64').length, 32, `${which} is 32 bytes of base64`);
  }
  assert.notEqual(generated.primaryKey, generated.secondaryKey);
  assert.ok(created.etag, 'device etag');
  assert.ok(created.generationId, 'generationId');
  assert.equal(created.connectionState, 'Disconnected');

  log('create a device with supplied keys: the hub keeps them');
  const supplied = (
    await registry.create({
      deviceId: suppliedId,
      authentication: { type: 'sas', symmetricKey: { ...suppliedKeys } },
    })
  ).responseBody;
  assert.equal(supplied.deviceId, suppliedId);
  assert.deepEqual(
    {
      primaryKey: supplied.authentication.symmetricKey.primaryKey,
      secondaryKey: supplied.authentication.symmetricKey.secondaryKey,
    },
    suppliedKeys,
  );
  assert.equal(supplied.status, 'enabled', 'status defaults to enabled');

  log('get the device');
  const fetched = (await registry.get(generatedId)).responseBody;
  assert.equal(fetched.deviceId, generatedId);
  assert.equal(fetched.etag, created.etag);
  assert.equal(fetched.authentication.symmetricKey.primaryKey, generated.primaryKey);

  log('get its twin');
  const twinResult = await registry.getTwin(generatedId);
  const twin = twinResult.responseBody;
  assert.equal(twin.deviceId, generatedId);
  assert.ok(twin.etag, 'twin etag');
  assert.equal(twin.properties.desired.$version, 1);
  const firstEtag = twin.etag;

  log('registry.updateTwin with the current etag');
  const patched = (
    await registry.updateTwin(generatedId, { properties: { desired: { telemetryInterval: 30 } } }, firstEtag)
  ).responseBody;
  assert.equal(patched.properties.desired.telemetryInterval, 30);
  assert.equal(patched.properties.desired.$version, 2, 'desired $version moved');
  assert.notEqual(patched.etag, firstEtag, 'twin etag moved');

  log('registry.updateTwin with the stale etag → InvalidEtagError (412)');
  await expectError(
    () => registry.updateTwin(generatedId, { properties: { desired: { telemetryInterval: 60 } } }, firstEtag),
    { name: 'InvalidEtagError', status: 412, code: 'PreconditionFailed' },
  );
  const unchanged = (await registry.getTwin(generatedId)).responseBody;
  assert.equal(unchanged.properties.desired.telemetryInterval, 30, 'a refused patch changes nothing');
  assert.equal(unchanged.etag, patched.etag);

  log('twin.update (the Twin from registry.getTwin, refreshed with twin.get) with a tag patch');
  // `twin` still carries the first etag and Twin objects send their own etag: refresh it first.
  // (Twin.get/update resolve to { result, message }, Registry calls to { responseBody, httpResponse }.)
  await twin.get();
  assert.equal(twin.etag, patched.etag, 'twin.get copied the current etag');
  const location = { region: 'US', plant: 'Redmond43' };
  const tagged = (await twin.update({ tags: { location } })).result;
  assert.deepEqual(tagged.tags, { location });
  assert.equal(tagged.properties.desired.telemetryInterval, 30, 'desired kept');
  assert.notEqual(tagged.etag, patched.etag, 'twin etag moved');
  assert.equal(twin.etag, tagged.etag, 'twin.update copied the new etag');

  log('create a duplicate device → DeviceAlreadyExistsError (409)');
  await expectError(() => registry.create({ deviceId: generatedId }), {
    name: 'DeviceAlreadyExistsError',
    status: 409,
    code: 'DeviceAlreadyExists',
  });

  log('get a missing device → DeviceNotFoundError (404)');
  const missingId = `node-missing-${run}`;
  await expectError(() => registry.get(missingId), {
    name: 'DeviceNotFoundError',
    status: 404,
    code: 'DeviceNotFound',
  });
  await expectError(() => registry.getTwin(missingId), {
    name: 'DeviceNotFoundError',
    status: 404,
    code: 'DeviceNotFound',
  });

  log('a connection string with the wrong key → UnauthorizedError (401)');
  const parsed = ConnectionString.parse(connectionString);
  const wrongKey = Buffer.alloc(32, 9).toString('base64');
  const impostor = Registry.fromConnectionString(
    `HostName=${parsed.HostName};SharedAccessKeyName=${parsed.SharedAccessKeyName};SharedAccessKey=${wrongKey}`,
  );
  await expectError(() => impostor.get(generatedId), {
    name: 'UnauthorizedError',
    status: 401,
    code: 'IotHubUnauthorizedAccess',
  });

  log('registry.list lists both devices');
  const listed = (await registry.list()).responseBody;
  assert.ok(Array.isArray(listed), 'list returns an array');
  assert.deepEqual(listed.map((device) => device.deviceId).sort(), [generatedId, suppliedId].sort());

  log('registry.createQuery over a tag');
  const query = registry.createQuery("SELECT * FROM devices WHERE tags.location.region = 'US'");
  const page = await query.nextAsTwin();
  const twins = page.result;
  assert.deepEqual(
    twins.map((item) => item.deviceId),
    [generatedId],
    'query result deviceIds',
  );
  assert.deepEqual(twins[0].tags, { location });
  assert.equal(twins[0].etag, tagged.etag, 'queried twin etag');
  assert.equal(page.message.headers['x-ms-item-type'], 'twin', 'x-ms-item-type');
  assert.equal(query.hasMoreResults, false, 'one page only');

  log("the seed's two queries: createQuery(sql, 100) and nextAsTwin");
  const inRedmond = await registry
    .createQuery("SELECT * FROM devices WHERE tags.location.plant = 'Redmond43'", 100)
    .nextAsTwin();
  assert.deepEqual(inRedmond.result.map((twin) => twin.deviceId), [generatedId], 'devices in Redmond43');
  // No device has reported connectivity yet (devices report over MQTT/AMQP): the AND finds none.
  const cellular = await registry
    .createQuery(
      "SELECT * FROM devices WHERE tags.location.plant = 'Redmond43' AND properties.reported.connectivity.type = 'cellular'",
      100,
    )
    .nextAsTwin();
  assert.deepEqual(cellular.result, [], 'no cellular devices before any report');

  log('aggregates through query.next');
  const counted = await registry.createQuery('SELECT COUNT() AS numberOfDevices FROM devices').next();
  assert.deepEqual(counted.result, [{ numberOfDevices: 2 }], 'COUNT()');
  assert.equal(counted.message.headers['x-ms-item-type'], 'raw', 'x-ms-item-type of an aggregate');
  const grouped = await registry
    .createQuery('SELECT tags.location.region AS region, COUNT() AS n FROM devices GROUP BY tags.location.region')
    .next();
  assert.deepEqual(
    grouped.result.sort((a, b) => (a.region || '').localeCompare(b.region || '')),
    [{ n: 1 }, { region: 'US', n: 1 }],
    'GROUP BY (the untagged device forms a group without a region)',
  );

  log('registry.createQuery in pages of one (callback-style next: the promise form never sends the token)');
  const paged = registry.createQuery('SELECT * FROM devices', 1);
  const seen = [];
  for (let pages = 0; pages < 10; pages += 1) {
    const items = await new Promise((resolve, reject) =>
      paged.next((error, result) => (error ? reject(error) : resolve(result))),
    );
    assert.ok(items.length <= 1, `page size 1 gave ${items.length} items`);
    seen.push(...items.map((item) => item.deviceId));
    if (!paged.hasMoreResults) break;
  }
  assert.equal(paged.hasMoreResults, false, 'the pages end');
  assert.deepEqual(seen.sort(), [generatedId, suppliedId].sort(), 'all devices over the pages');

  log('registry.delete');
  await registry.delete(suppliedId);
  await expectError(() => registry.get(suppliedId), {
    name: 'DeviceNotFoundError',
    status: 404,
    code: 'DeviceNotFound',
  });
  await registry.delete(generatedId);
  await expectError(() => registry.delete(generatedId), {
    name: 'DeviceNotFoundError',
    status: 404,
    code: 'DeviceNotFound',
  });
  assert.deepEqual((await registry.list()).responseBody, [], 'no devices left');
}

main().then(
  () => {
    console.log('registry.test.js: all checks passed');
    process.exit(0);
  },
  (error) => {
    console.error(`registry.test.js FAILED at step "${step}":`);
    console.error(error && error.stack ? error.stack : error);
    if (error && error.responseBody) console.error(`response body: ${error.responseBody}`);
    process.exit(1);
  },
);
