// A module connects with the Node device SDK's ModuleClient (azure-iot-device), unmodified, over each of
// TWINHUB_TRANSPORTS (Mqtt, MqttWs, Amqp, AmqpWs), against a real twinhub. Run by
// crates/twinhub/tests/sdk_modules.rs with TWINHUB_CONNECTION_STRING (iothubowner) and NODE_EXTRA_CA_CERTS.
//
// The seed's device app runs as a module, per transport: the module's twin (getTwin), a reported
// `connectivity` patch the back end then reads in the module twin (not the device's), the seed's two
// queries over devices.modules once the back end tagged the module, a desired patch from the back end
// reaching the module (not the device),
// a direct method to the module (azure-iothub invokeDeviceMethod with a module id) answered by it, its
// telemetry read with @azure/event-hubs carrying iothub-connection-module-id, the module twin showing
// Connected while it is connected and Disconnected after; and that a module's key opens neither its device
// nor another module of it, nor the device's key its module.
'use strict';

const assert = require('node:assert/strict');
const { Registry, Client: ServiceClient } = require('azure-iothub');
const { Client, ModuleClient, Message } = require('azure-iot-device');
const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');
const { ConnectionString } = require('azure-iot-common');
const transports = { ...require('azure-iot-device-mqtt'), ...require('azure-iot-device-amqp') };
const { log, run, waitFor } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
const transportNames = (process.env.TWINHUB_TRANSPORTS || 'Mqtt,MqttWs').split(',');
if (!connectionString) {
  console.error('TWINHUB_CONNECTION_STRING must be set');
  process.exit(2);
}

async function refused(what, client) {
  try {
    await client.open();
  } catch (error) {
    return error;
  } finally {
    await client.close().catch(() => {});
  }
  throw new Error(`${what}: the connection was accepted`);
}

async function queryModules(registry, sql) {
  const query = registry.createQuery(sql, 100);
  const found = [];
  do {
    const { result } = await query.nextAsTwin();
    found.push(...result.map((twin) => `${twin.deviceId}/${twin.moduleId}`));
  } while (query.hasMoreResults);
  return found.sort();
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const hostName = ConnectionString.parse(connectionString).HostName;
  const inPlant = [];
  for (const transportName of transportNames) {
    const deviceId = `node-module-host-${transportName.toLowerCase()}`;
    const { responseBody: device } = await registry.create({ deviceId });
    await registry.addModule({ deviceId, moduleId: 'app' });
    await registry.addModule({ deviceId, moduleId: 'other' });
    const { responseBody: module } = await registry.getModule(deviceId, 'app');
    const moduleKey = module.authentication.symmetricKey.primaryKey;
    const deviceKey = device.authentication.symmetricKey.primaryKey;
    const Transport = transports[transportName];

    log(`${transportName}: the module connects and reads its twin`);
    const client = ModuleClient.fromConnectionString(
      `HostName=${hostName};DeviceId=${deviceId};ModuleId=app;SharedAccessKey=${moduleKey}`,
      Transport,
    );
    await client.open();
    const twin = await client.getTwin();
    assert.equal(twin.properties.desired.$version, 1);
    await waitFor('the module twin shows Connected', async () => {
      const { responseBody } = await registry.getModuleTwin(deviceId, 'app');
      return responseBody.connectionState === 'Connected';
    });
    const { responseBody: deviceTwin } = await registry.getTwin(deviceId);
    assert.equal(deviceTwin.connectionState, 'Disconnected', 'the device itself is not connected');

    log(`${transportName}: a reported patch lands in the module twin`);
    await new Promise((resolve, reject) =>
      twin.properties.reported.update({ connectivity: { type: 'cellular' } }, (error) => (error ? reject(error) : resolve())));
    const { responseBody: moduleTwin } = await registry.getModuleTwin(deviceId, 'app');
    assert.equal(moduleTwin.properties.reported.connectivity.type, 'cellular');
    const { responseBody: deviceTwinAfter } = await registry.getTwin(deviceId);
    assert.equal(deviceTwinAfter.properties.reported.connectivity, undefined, "the device's twin is untouched");

    log(`${transportName}: the back end tags the module; the seed's queries over devices.modules find it`);
    await registry.updateModuleTwin(
      deviceId,
      'app',
      { tags: { location: { region: 'US', plant: 'Redmond43' } } },
      moduleTwin.etag,
    );
    await registry.updateModuleTwin(deviceId, 'other', { tags: { location: { plant: 'Redmond43' } } }, '*');
    inPlant.push(`${deviceId}/app`, `${deviceId}/other`);
    assert.deepEqual(
      await queryModules(registry, "SELECT * FROM devices.modules WHERE tags.location.plant = 'Redmond43'"),
      [...inPlant].sort(),
    );
    const cellular = await queryModules(
      registry,
      "SELECT * FROM devices.modules WHERE tags.location.plant = 'Redmond43' AND properties.reported.connectivity.type = 'cellular'",
    );
    assert.deepEqual(cellular, inPlant.filter((id) => id.endsWith('/app')).sort());

    log(`${transportName}: a desired patch reaches the module`);
    const received = [];
    twin.on('properties.desired', (delta) => received.push(delta));
    await waitFor('the first desired callback', () => received.length >= 1);
    await registry.updateModuleTwin(deviceId, 'app', { properties: { desired: { interval: 30 } } }, '*');
    await waitFor('the desired patch', () => received.some((delta) => delta.interval === 30));
    assert.equal(twin.properties.desired.interval, 30);
    await registry.updateTwin(deviceId, { properties: { desired: { deviceOnly: true } } }, '*');
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(twin.properties.desired.deviceOnly, undefined, "the device's desired properties are not the module's");

    log(`${transportName}: a direct method to the module, answered by the module`);
    client.onMethod('reboot', (request, response) => {
      response.send(200, { rebooted: request.payload.delay, by: 'app' }, () => {});
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const service = ServiceClient.fromConnectionString(connectionString);
    const { result } = await service.invokeDeviceMethod(deviceId, 'app', {
      methodName: 'reboot',
      payload: { delay: 5 },
      responseTimeoutInSeconds: 10,
    });
    assert.deepEqual(result, { status: 200, payload: { rebooted: 5, by: 'app' } });
    await service.close();

    log(`${transportName}: telemetry from the module carries its module id`);
    await client.sendEvent(new Message(JSON.stringify({ from: 'app', transport: transportName })));
    const consumer = new EventHubConsumerClient('$Default', process.env.TWINHUB_EVENTHUBS_CONNECTION_STRING);
    const events = [];
    const subscription = consumer.subscribe(
      {
        processEvents: async (batch) => events.push(...batch),
        processError: async () => {},
      },
      { startPosition: earliestEventPosition, maxWaitTimeInSeconds: 1 },
    );
    await waitFor('the module\'s event', () =>
      events.some((event) => event.systemProperties['iothub-connection-device-id'] === deviceId), 30000);
    await subscription.close();
    await consumer.close();
    const event = events.find((candidate) => candidate.systemProperties['iothub-connection-device-id'] === deviceId);
    assert.equal(event.systemProperties['iothub-connection-module-id'], 'app');

    await client.close();
    await waitFor('the module twin shows Disconnected', async () => {
      const { responseBody } = await registry.getModuleTwin(deviceId, 'app');
      return responseBody.connectionState === 'Disconnected';
    });

    log(`${transportName}: a module's key opens neither its device nor another module, nor the device's key its module`);
    await refused(
      "the device with its module's key",
      Client.fromConnectionString(`HostName=${hostName};DeviceId=${deviceId};SharedAccessKey=${moduleKey}`, Transport),
    );
    await refused(
      "another module with this module's key",
      ModuleClient.fromConnectionString(
        `HostName=${hostName};DeviceId=${deviceId};ModuleId=other;SharedAccessKey=${moduleKey}`,
        Transport,
      ),
    );
    await refused(
      "the module with its device's key",
      ModuleClient.fromConnectionString(
        `HostName=${hostName};DeviceId=${deviceId};ModuleId=app;SharedAccessKey=${deviceKey}`,
        Transport,
      ),
    );
  }
}

run(main);
