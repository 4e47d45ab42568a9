// Scheduled jobs through the Node service SDK's JobClient (azure-iothub), unmodified, against a real
// twinhub, with devices on the Node device SDK (azure-iot-device over MQTT). Run by
// crates/twinhub/tests/sdk_jobs.rs with TWINHUB_CONNECTION_STRING (iothubowner) and NODE_EXTRA_CA_CERTS.
//
// Checks: a twin-update job over 1,000 devices a tag query selects (the others untouched) runs to
// completed with its statistics, each device's step in devices.jobs, and a connected device's app sees the
// desired change arrive; a method job over devices that answer (200 and 500), one that never answers and
// two that are offline ends with each outcome and the statistics that follow; a job scheduled for later
// is queued, then cancelled; the job query lists jobs by type and status, paged.
'use strict';

const assert = require('node:assert/strict');
const { Registry, JobClient } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { ConnectionString } = require('azure-iot-common');
const { log, queryAll, run, sleep, waitFor } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!connectionString) {
  console.error('TWINHUB_CONNECTION_STRING must be set');
  process.exit(2);
}
const FLEET = 1000;

// Polls the job until it reaches one of `statuses`; returns it.
async function jobReaching(jobClient, jobId, statuses, ms = 60000) {
  let job;
  await waitFor(`job ${jobId} ${statuses.join(' or ')}`, async () => {
    ({ jobStatus: job } = await jobClient.getJob(jobId));
    return statuses.includes(job.status);
  }, ms);
  return job;
}

async function connect(hostName, registry, deviceId) {
  const { responseBody: device } = await registry.create({ deviceId });
  const client = Client.fromConnectionString(
    `HostName=${hostName};DeviceId=${deviceId};SharedAccessKey=${device.authentication.symmetricKey.primaryKey}`,
    Mqtt,
  );
  await client.open();
  return client;
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const jobClient = JobClient.fromConnectionString(connectionString);
  const hostName = ConnectionString.parse(connectionString).HostName;

  log(`register ${FLEET} devices tagged wave1 and 20 tagged wave2 (bulk, 100 at a time)`);
  const ids = Array.from({ length: FLEET }, (_, n) => `wave1-${String(n).padStart(4, '0')}`);
  const others = Array.from({ length: 20 }, (_, n) => `wave2-${n}`);
  const all = [...ids.map((deviceId) => [deviceId, 'wave1']), ...others.map((deviceId) => [deviceId, 'wave2'])];
  for (let start = 0; start < all.length; start += 100) {
    const chunk = all.slice(start, start + 100).map(([deviceId, wave]) => ({ deviceId, tags: { rollout: wave } }));
    const { responseBody } = await registry.addDevices(chunk);
    assert.equal(responseBody.isSuccessful, true, JSON.stringify(responseBody.errors));
  }
  const selected = await queryAll(registry, "SELECT COUNT() AS n FROM devices WHERE tags.rollout = 'wave1'");
  assert.equal(selected[0].n, FLEET, 'the bulk import set the tags');

  log("a device app of the fleet listens for desired properties");
  const watcher = await connect(hostName, registry, 'wave1-watcher');
  await registry.updateTwin('wave1-watcher', { tags: { rollout: 'wave1' } }, '*');
  const watcherTwin = await watcher.getTwin();
  const received = [];
  watcherTwin.on('properties.desired', (delta) => received.push(JSON.parse(JSON.stringify(delta))));

  log("schedule a twin update for tags.rollout = 'wave1': firmware 2.0");
  const twinJobId = `firmware-${Date.now()}`;
  const { jobStatus: queued } = await jobClient.scheduleTwinUpdate(
    twinJobId,
    "tags.rollout = 'wave1'",
    { etag: '*', tags: { firmware: '2.0' }, properties: { desired: { firmware: '2.0' }, reported: {} } },
    new Date(),
    120,
  );
  assert.equal(queued.jobId, twinJobId);
  assert.equal(queued.status, 'queued');
  assert.equal(queued.type, 'scheduleUpdateTwin');
  const done = await jobReaching(jobClient, twinJobId, ['completed', 'failed', 'cancelled']);
  assert.equal(done.status, 'completed', JSON.stringify(done));
  assert.deepEqual(done.deviceJobStatistics, {
    deviceCount: FLEET + 1,
    failedCount: 0,
    succeededCount: FLEET + 1,
    runningCount: 0,
    pendingCount: 0,
  });
  assert.ok(done.endTime, 'a completed job has its end time');

  log('every selected twin has the patch, the others none');
  const updated = await queryAll(
    registry,
    "SELECT COUNT() AS n FROM devices WHERE properties.desired.firmware = '2.0' AND tags.firmware = '2.0'",
  );
  assert.equal(updated[0].n, FLEET + 1);
  const { responseBody: other } = await registry.getTwin('wave2-0');
  assert.equal(other.properties.desired.firmware, undefined);
  const { responseBody: one } = await registry.getTwin('wave1-0007');
  assert.equal(one.properties.desired.$version, 2, 'the patch was applied once');
  await waitFor("the device app's desired change", () => received.some((delta) => delta.firmware === '2.0'));

  log('devices.jobs holds each device\'s step');
  const steps = await queryAll(registry, `SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '${twinJobId}'`);
  assert.equal(steps.length, FLEET + 1);
  assert.ok(steps.every((step) => step.status === 'completed' && step.jobType === 'scheduleUpdateTwin'));
  assert.ok(steps.some((step) => step.deviceId === 'wave1-0999'));

  log('a method job: two devices answer (200, 500), one never answers, two are offline');
  const answering = [];
  for (const [deviceId, status] of [['method-ok', 200], ['method-500', 500]]) {
    const client = await connect(hostName, registry, deviceId);
    client.onDeviceMethod('reboot', (request, response) =>
      response.send(status, { device: deviceId, delay: request.payload.delay }, () => {}));
    answering.push(client);
  }
  const silent = await connect(hostName, registry, 'method-silent');
  silent.onDeviceMethod('reboot', () => {});
  await registry.create({ deviceId: 'method-offline-1' });
  await registry.create({ deviceId: 'method-offline-2' });
  await sleep(500);
  const methodJobId = `reboot-${Date.now()}`;
  const { jobStatus: methodQueued } = await jobClient.scheduleDeviceMethod(
    methodJobId,
    "STARTSWITH(deviceId, 'method-')",
    { methodName: 'reboot', payload: { delay: 3 }, responseTimeoutInSeconds: 5 },
  );
  assert.equal(methodQueued.status, 'queued');
  const methodDone = await jobReaching(jobClient, methodJobId, ['completed', 'failed', 'cancelled']);
  assert.equal(methodDone.status, 'completed');
  assert.deepEqual(methodDone.deviceJobStatistics, {
    deviceCount: 5,
    failedCount: 3,
    succeededCount: 2,
    runningCount: 0,
    pendingCount: 0,
  });
  const outcomes = await queryAll(registry, `SELECT * FROM devices.jobs WHERE jobId = '${methodJobId}'`);
  const byDevice = Object.fromEntries(outcomes.map((step) => [step.deviceId, step]));
  assert.deepEqual(byDevice['method-ok'].outcome.deviceMethodResponse, {
    status: 200,
    payload: { device: 'method-ok', delay: 3 },
  });
  assert.equal(byDevice['method-500'].outcome.deviceMethodResponse.status, 500);
  assert.equal(byDevice['method-silent'].status, 'failed');
  assert.equal(byDevice['method-silent'].error.code, 'GatewayTimeout');
  assert.equal(byDevice['method-offline-1'].error.code, 'DeviceNotOnline');

  log('a job cancelled mid-run stops where it was');
  const canaryId = `canary-${Date.now()}`;
  await jobClient.scheduleTwinUpdate(canaryId, "tags.rollout = 'wave1'", { etag: '*', tags: { canary: 'yes' } });
  await waitFor('the canary job under way', async () => {
    const { jobStatus: job } = await jobClient.getJob(canaryId);
    return job.deviceJobStatistics.succeededCount > 0;
  });
  const { jobStatus: cancelledMidRun } = await jobClient.cancelJob(canaryId);
  assert.equal(cancelledMidRun.status, 'cancelled');
  const statistics = cancelledMidRun.deviceJobStatistics;
  assert.ok(statistics.succeededCount < FLEET + 1, JSON.stringify(statistics));
  assert.equal(statistics.succeededCount + statistics.failedCount, FLEET + 1);
  assert.equal(statistics.pendingCount, 0);
  await sleep(300);
  const canaries = await queryAll(registry, "SELECT COUNT() AS n FROM devices WHERE tags.canary = 'yes'");
  assert.equal(canaries[0].n, statistics.succeededCount, 'no twin is patched after the cancel');

  log('a job scheduled an hour ahead is queued, then cancelled');
  const laterId = `later-${Date.now()}`;
  const { jobStatus: later } = await jobClient.scheduleTwinUpdate(
    laterId,
    "tags.rollout = 'wave2'",
    { etag: '*', tags: { firmware: '3.0' } },
    new Date(Date.now() + 3600 * 1000),
    120,
  );
  assert.equal(later.status, 'queued');
  await jobReaching(jobClient, laterId, ['scheduled']);
  await jobClient.cancelJob(laterId);
  const cancelled = await jobReaching(jobClient, laterId, ['cancelled']);
  assert.ok(cancelled.endTime);
  const { responseBody: untouched } = await registry.getTwin('wave2-1');
  assert.equal(untouched.tags.firmware, undefined, 'a cancelled job changes nothing');

  log('the job query lists jobs by type and status, one per page');
  const query = jobClient.createQuery('scheduleUpdateTwin', undefined, 1);
  const listed = [];
  do {
    const { result } = await query.next(query.continuationToken);
    assert.ok(result.length <= 1);
    listed.push(...result.map((job) => `${job.jobId}:${job.status}`));
  } while (query.hasMoreResults);
  assert.deepEqual(
    listed.sort(),
    [`${twinJobId}:completed`, `${canaryId}:cancelled`, `${laterId}:cancelled`].sort(),
  );
  const { result: completedMethods } = await jobClient.createQuery('scheduleDeviceMethod', 'completed').next();
  assert.deepEqual(completedMethods.map((job) => job.jobId), [methodJobId]);

  log('unknown jobs and bad requests are refused in IoT Hub\'s terms');
  await assert.rejects(jobClient.getJob('no-such-job'), (error) => error.response.statusCode === 404);
  await assert.rejects(
    jobClient.scheduleTwinUpdate(twinJobId, '*', { tags: { x: 1 } }),
    (error) => error.response.statusCode === 409,
  );
  await assert.rejects(
    jobClient.scheduleTwinUpdate(`bad-${Date.now()}`, 'tags.rollout = ', { tags: { x: 1 } }),
    (error) => error.response.statusCode === 400,
  );

  for (const client of [watcher, silent, ...answering]) {
    await client.close();
  }
}

run(main);
