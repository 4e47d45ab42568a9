// Automatic device configurations through the Node service SDK's Registry (azure-iothub), unmodified,
// against a real twinhub, with a device app on the Node device SDK (azure-iot-device over MQTT). Run by
// crates/twinhub/tests/sdk_configurations.rs with TWINHUB_CONNECTION_STRING and NODE_EXTRA_CA_CERTS.
//
// Checks: a configuration rolls a desired firmware version out to the devices tagged for it, and the
// device app sees it arrive; a device tagged later gets it within a second; a higher-priority
// configuration wins where two overlap; metrics count the devices that reported the new version, and the
// system metrics the targeted and applied twins; update with the etag (a stale one is 412), list,
// remove (what was written stays); applyConfigurationContentOnDevice for an edge device's modules.
'use strict';

const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { ConnectionString } = require('azure-iot-common');
const { log, run, waitFor } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!connectionString) {
  console.error('TWINHUB_CONNECTION_STRING must be set');
  process.exit(2);
}

function report(twin, patch) {
  return new Promise((resolve, reject) => twin.properties.reported.update(patch, (e) => (e ? reject(e) : resolve())));
}

async function desiredFirmware(registry, deviceId) {
  const { responseBody: twin } = await registry.getTwin(deviceId);
  return twin.properties.desired.firmware && twin.properties.desired.firmware.version;
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const hostName = ConnectionString.parse(connectionString).HostName;

  log('devices: cfg-a and cfg-b in the canary ring (cfg-b in the lab), cfg-c not yet');
  const { responseBody: a } = await registry.create({ deviceId: 'cfg-a' });
  for (const deviceId of ['cfg-b', 'cfg-c']) {
    await registry.create({ deviceId });
  }
  await registry.updateTwin('cfg-a', { tags: { ring: 'canary' } }, '*');
  await registry.updateTwin('cfg-b', { tags: { ring: 'canary', site: 'lab' } }, '*');
  const device = Client.fromConnectionString(
    `HostName=${hostName};DeviceId=cfg-a;SharedAccessKey=${a.authentication.symmetricKey.primaryKey}`,
    Mqtt,
  );
  await device.open();
  const deviceTwin = await device.getTwin();
  const received = [];
  deviceTwin.on('properties.desired', (delta) => received.push(JSON.parse(JSON.stringify(delta))));

  log('addConfiguration firmware-2 for the canary ring, with a metric');
  const { responseBody: created } = await registry.addConfiguration({
    id: 'firmware-2',
    content: { deviceContent: { 'properties.desired.firmware': { version: '2.0', url: 'https://fw/2.0' } } },
    targetCondition: "tags.ring = 'canary'",
    priority: 10,
    labels: { team: 'ops' },
    metrics: { queries: { updated: "SELECT deviceId FROM devices WHERE properties.reported.firmware.version = '2.0'" } },
  });
  assert.equal(created.id, 'firmware-2');
  assert.ok(created.etag);
  assert.equal(created.schemaVersion, '1.0');
  await waitFor('firmware 2.0 in cfg-a and cfg-b', async () =>
    (await desiredFirmware(registry, 'cfg-a')) === '2.0' && (await desiredFirmware(registry, 'cfg-b')) === '2.0', 5000);
  assert.equal(await desiredFirmware(registry, 'cfg-c'), undefined, 'an untargeted twin is untouched');
  await waitFor("the device app's desired firmware", () =>
    received.some((delta) => delta.firmware && delta.firmware.version === '2.0'));

  log('cfg-c tagged into the ring gets it within a second');
  const tagged = Date.now();
  await registry.updateTwin('cfg-c', { tags: { ring: 'canary' } }, '*');
  await waitFor('firmware 2.0 in cfg-c', async () => (await desiredFirmware(registry, 'cfg-c')) === '2.0', 1000);
  log(`  (in ${Date.now() - tagged} ms)`);

  log('a higher-priority configuration wins the lab device');
  await registry.addConfiguration({
    id: 'firmware-3-lab',
    content: { deviceContent: { 'properties.desired.firmware': { version: '3.0' } } },
    targetCondition: "tags.ring = 'canary' AND tags.site = 'lab'",
    priority: 20,
  });
  await waitFor('firmware 3.0 in cfg-b', async () => (await desiredFirmware(registry, 'cfg-b')) === '3.0', 5000);
  assert.equal(await desiredFirmware(registry, 'cfg-a'), '2.0');

  log('the device reports the new version; the metrics count it');
  await report(deviceTwin, { firmware: { version: '2.0' } });
  const { responseBody: measured } = await registry.getConfiguration('firmware-2');
  assert.equal(measured.metrics.results.updated, 1);
  assert.equal(measured.systemMetrics.results.targetedCount, 3);
  assert.equal(measured.systemMetrics.results.appliedCount, 2, 'cfg-b is firmware-3-lab\'s');
  const { responseBody: all } = await registry.getConfigurations();
  assert.deepEqual(all.map((configuration) => configuration.id), ['firmware-2', 'firmware-3-lab']);

  log('updateConfiguration with the etag; a stale etag is refused');
  const { responseBody: updated } = await registry.updateConfiguration({ ...measured, priority: 30 });
  assert.equal(updated.priority, 30);
  assert.notEqual(updated.etag, measured.etag);
  await assert.rejects(registry.updateConfiguration({ ...measured, priority: 40 }), (error) =>
    error.response.statusCode === 412);
  await waitFor('firmware 2.0 back in cfg-b (now outranked)', async () =>
    (await desiredFirmware(registry, 'cfg-b')) === '2.0', 5000);

  log('a module configuration: every telemetry module twin gets its sampling rate');
  for (const deviceId of ['cfg-a', 'cfg-b']) {
    await registry.addModule({ deviceId, moduleId: 'telemetry' });
  }
  await registry.addModule({ deviceId: 'cfg-c', moduleId: 'other' });
  await registry.addConfiguration({
    id: 'sampling',
    content: { moduleContent: { 'properties.desired.sampling': { seconds: 5 } } },
    targetCondition: "FROM devices.modules WHERE moduleId = 'telemetry'",
    priority: 1,
  });
  const sampling = async (deviceId, moduleId) => {
    const { responseBody } = await registry.getModuleTwin(deviceId, moduleId);
    return responseBody.properties.desired.sampling && responseBody.properties.desired.sampling.seconds;
  };
  await waitFor('sampling 5 in both telemetry modules', async () =>
    (await sampling('cfg-a', 'telemetry')) === 5 && (await sampling('cfg-b', 'telemetry')) === 5, 5000);
  assert.equal(await sampling('cfg-c', 'other'), undefined, 'another module is untouched');
  const { responseBody: moduleMetrics } = await registry.getConfiguration('sampling');
  assert.deepEqual(moduleMetrics.systemMetrics.results, { targetedCount: 2, appliedCount: 2 });
  await registry.removeConfiguration('sampling');

  log('removeConfiguration: what was written stays');
  await registry.removeConfiguration('firmware-3-lab');
  await registry.removeConfiguration('firmware-2');
  await registry.updateTwin('cfg-a', { properties: { desired: { firmware: { version: '2.1' } } } }, '*');
  await new Promise((resolve) => setTimeout(resolve, 700));
  assert.equal(await desiredFirmware(registry, 'cfg-a'), '2.1', 'no configuration writes it back');
  assert.equal(await desiredFirmware(registry, 'cfg-c'), '2.0');
  await assert.rejects(registry.getConfiguration('firmware-2'), (error) => error.response.statusCode === 404);

  log("applyConfigurationContentOnDevice: an edge device's modules get their desired properties");
  await registry.create({ deviceId: 'cfg-edge', capabilities: { iotEdge: true } });
  await registry.applyConfigurationContentOnDevice('cfg-edge', {
    modulesContent: {
      $edgeAgent: { 'properties.desired': { schemaVersion: '1.1', runtime: { type: 'docker' } } },
      $edgeHub: { 'properties.desired': { schemaVersion: '1.1', routes: { all: 'FROM /messages/* INTO $upstream' } } },
    },
  });
  const { responseBody: agent } = await registry.getModuleTwin('cfg-edge', '$edgeAgent');
  assert.equal(agent.properties.desired.runtime.type, 'docker');
  const { responseBody: edgeHub } = await registry.getModuleTwin('cfg-edge', '$edgeHub');
  assert.equal(edgeHub.properties.desired.routes.all, 'FROM /messages/* INTO $upstream');

  await device.close();
}

run(main);
