// IoT Edge scopes through the official Node.js service SDK (azure-iothub), against a real twinhub: an edge
// device gets its scope, a leaf device and a nested edge device name it as their parent (create, update,
// bulk), the twins carry the scopes, and a scope that names no edge device is refused. Run by
// crates/twinhub/tests/sdk_registry.rs with TWINHUB_CONNECTION_STRING (iothubowner) and NODE_EXTRA_CA_CERTS.
'use strict';

const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const { log, run } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!connectionString) {
  console.error('TWINHUB_CONNECTION_STRING is not set');
  process.exit(2);
}

// Runs `operation`, which must be refused with 400 ArgumentInvalid (the SDK's ArgumentError).
async function expectRefused(what, operation) {
  await assert.rejects(operation, (error) => {
    assert.equal(error.response && error.response.statusCode, 400, `${what}: HTTP status`);
    assert.equal(error.response.headers['iothub-errorcode'], 'ArgumentInvalid', `${what}: error code`);
    return true;
  }, what);
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);

  log('create an edge device: it gets its own scope');
  const { responseBody: edge } = await registry.create({ deviceId: 'node-gateway', capabilities: { iotEdge: true } });
  const scope = `ms-azure-iot-edge://node-gateway-${edge.generationId}`;
  assert.equal(edge.deviceScope, scope);
  assert.deepEqual(edge.parentScopes, []);
  const { responseBody: edgeTwin } = await registry.getTwin('node-gateway');
  assert.equal(edgeTwin.deviceScope, scope);
  assert.equal(edgeTwin.capabilities.iotEdge, true);

  log('create a leaf device under it (deviceScope): the hub copies the scope into parentScopes');
  const { responseBody: leaf } = await registry.create({ deviceId: 'node-leaf', deviceScope: edge.deviceScope });
  assert.equal(leaf.deviceScope, scope);
  assert.deepEqual(leaf.parentScopes, [scope]);
  const { responseBody: leafTwin } = await registry.getTwin('node-leaf');
  assert.equal(leafTwin.deviceScope, scope);
  assert.deepEqual(leafTwin.parentScopes, [scope]);

  log('create a nested edge device (parentScopes): it keeps its own scope');
  const { responseBody: nested } = await registry.create({
    deviceId: 'node-gateway-2',
    capabilities: { iotEdge: true },
    parentScopes: [scope],
  });
  assert.equal(nested.deviceScope, `ms-azure-iot-edge://node-gateway-2-${nested.generationId}`);
  assert.deepEqual(nested.parentScopes, [scope]);

  log('a scope that names no edge device is refused, on create and on update');
  await expectRefused('create with a random scope', () =>
    registry.create({ deviceId: 'node-stray', deviceScope: '8d2a7c0e-5b1f-4f6e-9a51-3c1d2e4f5a6b' }),
  );
  await expectRefused('create under a leaf', () =>
    registry.create({ deviceId: 'node-stray', deviceScope: `ms-azure-iot-edge://node-leaf-${leaf.generationId}` }),
  );
  await expectRefused('update to a random scope', () =>
    registry.update({ ...leaf, deviceScope: '8d2a7c0e-5b1f-4f6e-9a51-3c1d2e4f5a6b' }),
  );
  const { responseBody: unchanged } = await registry.get('node-leaf');
  assert.equal(unchanged.deviceScope, scope, 'a refused update changes nothing');

  log('move the leaf under the nested edge device with update');
  const { responseBody: moved } = await registry.update({ ...unchanged, deviceScope: nested.deviceScope });
  assert.deepEqual(moved.parentScopes, [nested.deviceScope]);

  log('addDevices: a leaf under the edge device; a bulk create with a bad scope fails for that device only');
  await registry.addDevices([{ deviceId: 'node-bulk-leaf', deviceScope: scope }]);
  const { responseBody: bulkLeaf } = await registry.get('node-bulk-leaf');
  assert.deepEqual(bulkLeaf.parentScopes, [scope]);
  await assert.rejects(
    () => registry.addDevices([
      { deviceId: 'node-bulk-ok' },
      { deviceId: 'node-bulk-stray', deviceScope: 'nowhere' },
    ]),
    (error) => {
      const result = JSON.parse(error.responseBody);
      assert.equal(result.isSuccessful, false);
      assert.deepEqual(result.errors.map((e) => [e.deviceId, e.errorCode]), [['node-bulk-stray', 'ArgumentInvalid']]);
      return true;
    },
  );
  await registry.get('node-bulk-ok');

  log("query the edge device's leaf children by deviceScope");
  const query = registry.createQuery(`SELECT deviceId FROM devices WHERE deviceScope = '${scope}'`, 100);
  const { result } = await query.next();
  assert.deepEqual(result.map((row) => row.deviceId).sort(), ['node-bulk-leaf', 'node-gateway']);
  console.log('edge_scopes.test.js: all checks passed');
}

run(main);
