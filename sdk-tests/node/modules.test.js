// Module identities and module twins through the official Node.js service SDK (azure-iothub), against a
// real twinhub. Run by crates/twinhub/tests/sdk_modules.rs with TWINHUB_CONNECTION_STRING (iothubowner).
//
// Checks: addModule creates a module with generated keys and managedBy, a second add of the same module is
// refused (409), getModule and getModulesOnDevice list it, updateModule with the etag replaces it (a stale
// etag is refused with 412), getModuleTwin / updateModuleTwin patch tags and desired properties with
// versions and metadata as for devices, queries over devices.modules (paged, and an aggregate), removeModule
// deletes it (then 404), and deleting the device deletes its modules.
'use strict';

const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const { log, run } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!connectionString) {
  console.error('TWINHUB_CONNECTION_STRING must be set');
  process.exit(2);
}

async function expectError(what, promise, status) {
  try {
    await promise;
  } catch (error) {
    const code = error.response ? error.response.statusCode : error.statusCode;
    assert.equal(code, status, `${what}: ${error.message}`);
    return error;
  }
  throw new Error(`${what}: expected HTTP ${status}, but it succeeded`);
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const deviceId = 'node-modules-device';
  await registry.create({ deviceId });

  log('addModule: generated keys, managedBy');
  await registry.addModule({ deviceId, moduleId: 'sensor', managedBy: 'ops' });
  const { responseBody: sensor } = await registry.getModule(deviceId, 'sensor');
  assert.equal(sensor.deviceId, deviceId);
  assert.equal(sensor.moduleId, 'sensor');
  assert.equal(sensor.managedBy, 'ops');
  assert.equal(sensor.connectionState, 'Disconnected');
  assert.ok(sensor.authentication.symmetricKey.primaryKey, 'a generated primary key');
  assert.ok(sensor.etag, 'an etag');
  await expectError('adding it again', registry.addModule({ deviceId, moduleId: 'sensor' }), 409);
  await registry.addModule({ deviceId, moduleId: 'filter' });

  log('getModulesOnDevice lists both, in id order');
  const { responseBody: modules } = await registry.getModulesOnDevice(deviceId);
  assert.deepEqual(modules.map((module) => module.moduleId), ['filter', 'sensor']);

  log('updateModule with the etag; a stale etag is refused');
  const { responseBody: updated } = await registry.updateModule({ ...sensor, managedBy: 'edge' }, false);
  assert.equal(updated.managedBy, 'edge');
  assert.notEqual(updated.etag, sensor.etag);
  assert.equal(updated.authentication.symmetricKey.primaryKey, sensor.authentication.symmetricKey.primaryKey);
  await expectError('a stale etag', registry.updateModule({ ...sensor, managedBy: 'again' }, false), 412);

  log('module twin: get, patch tags and desired');
  const { responseBody: twin } = await registry.getModuleTwin(deviceId, 'sensor');
  assert.equal(twin.deviceId, deviceId);
  assert.equal(twin.moduleId, 'sensor');
  assert.equal(twin.properties.desired.$version, 1);
  const { responseBody: patched } = await registry.updateModuleTwin(
    deviceId,
    'sensor',
    { tags: { role: 'temperature' }, properties: { desired: { interval: 30 } } },
    twin.etag,
  );
  assert.equal(patched.tags.role, 'temperature');
  assert.equal(patched.properties.desired.interval, 30);
  assert.equal(patched.properties.desired.$version, 2);
  assert.equal(patched.properties.desired.$metadata.interval.$lastUpdatedVersion, 2);
  await expectError(
    'a twin patch with a stale etag',
    registry.updateModuleTwin(deviceId, 'sensor', { tags: { role: 'x' } }, twin.etag),
    412,
  );
  const { responseBody: deviceTwin } = await registry.getTwin(deviceId);
  assert.equal((deviceTwin.tags || {}).role, undefined, "the device's twin is its own");

  log('queries over devices.modules, one module per page');
  const other = 'node-modules-other';
  await registry.create({ deviceId: other });
  await registry.addModule({ deviceId: other, moduleId: 'sensor' });
  const { responseBody: otherTwin } = await registry.getModuleTwin(other, 'sensor');
  await registry.updateModuleTwin(other, 'sensor', { tags: { role: 'temperature' } }, otherTwin.etag);
  const query = registry.createQuery("SELECT * FROM devices.modules WHERE tags.role = 'temperature'", 1);
  const found = [];
  do {
    const { result } = await query.nextAsTwin();
    found.push(...result.map((moduleTwin) => `${moduleTwin.deviceId}/${moduleTwin.moduleId}`));
  } while (query.hasMoreResults);
  assert.deepEqual(found.sort(), [`${deviceId}/sensor`, `${other}/sensor`]);
  const counted = registry.createQuery(
    "SELECT COUNT() AS modules FROM devices.modules WHERE moduleId = 'sensor'",
  );
  const { result: counts } = await counted.next();
  assert.deepEqual(counts, [{ modules: 2 }]);
  await registry.delete(other);

  log('removeModule; then it is gone');
  await registry.removeModule(deviceId, 'filter');
  await expectError('reading a removed module', registry.getModule(deviceId, 'filter'), 404);

  log('deleting the device deletes its modules');
  await registry.delete(deviceId);
  await registry.create({ deviceId });
  const { responseBody: none } = await registry.getModulesOnDevice(deviceId);
  assert.deepEqual(none, []);
  await registry.delete(deviceId);
}

run(main);
