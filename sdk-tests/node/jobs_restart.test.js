// A twin-update job through the Node JobClient across a `kill -9` of the hub: run by
// crates/twinhub/tests/sdk_jobs.rs in two phases around the kill, against a hub that takes on a few
// hundred devices per second (so the job is caught mid-run).
//   TWINHUB_PHASE=start   registers 1,500 devices, schedules the job, returns once some twins are updated
//                         and the job is still running.
//   TWINHUB_PHASE=finish  (after the kill and a restart) waits for the job to complete and checks that
//                         every twin got the patch exactly once (desired $version 2) and the statistics.
'use strict';

const assert = require('node:assert/strict');
const { Registry, JobClient } = require('azure-iothub');
const { log, queryAll, run, waitFor } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
const phase = process.env.TWINHUB_PHASE;
const JOB_ID = 'restart-rollout';
const DEVICES = 1500;

async function start(registry, jobClient) {
  log(`register ${DEVICES} devices tagged wave 'restart'`);
  for (let first = 0; first < DEVICES; first += 100) {
    const chunk = Array.from({ length: 100 }, (_, n) => ({ deviceId: `restart-${first + n}`, tags: { wave: 'restart' } }));
    const { responseBody } = await registry.addDevices(chunk);
    assert.equal(responseBody.isSuccessful, true, JSON.stringify(responseBody.errors));
  }
  log('schedule the job and wait until it is under way');
  const { jobStatus } = await jobClient.scheduleTwinUpdate(JOB_ID, "tags.wave = 'restart'", {
    etag: '*',
    properties: { desired: { firmware: '4.0' } },
  });
  assert.equal(jobStatus.status, 'queued');
  let job;
  await waitFor('some twins updated', async () => {
    ({ jobStatus: job } = await jobClient.getJob(JOB_ID));
    return job.deviceJobStatistics.succeededCount >= 200;
  }, 30000);
  assert.equal(job.status, 'running');
  assert.ok(job.deviceJobStatistics.succeededCount < DEVICES, JSON.stringify(job));
  log(`  under way: ${job.deviceJobStatistics.succeededCount} of ${DEVICES} updated`);
}

async function finish(registry, jobClient) {
  log('after the restart: the job completes');
  let job;
  await waitFor('the job to complete', async () => {
    ({ jobStatus: job } = await jobClient.getJob(JOB_ID));
    return job.status !== 'running';
  }, 60000);
  assert.equal(job.status, 'completed', JSON.stringify(job));
  assert.equal(job.deviceJobStatistics.deviceCount, DEVICES);
  assert.equal(job.deviceJobStatistics.succeededCount, DEVICES);
  log('every twin has the patch exactly once');
  const twins = await queryAll(registry, "SELECT * FROM devices WHERE tags.wave = 'restart'");
  assert.equal(twins.length, DEVICES);
  for (const twin of twins) {
    assert.equal(twin.properties.desired.firmware, '4.0', twin.deviceId);
    assert.equal(twin.properties.desired.$version, 2, `${twin.deviceId}: one patch, one version`);
  }
}

async function main() {
  const registry = Registry.fromConnectionString(connectionString);
  const jobClient = JobClient.fromConnectionString(connectionString);
  if (phase === 'start') {
    await start(registry, jobClient);
  } else if (phase === 'finish') {
    await finish(registry, jobClient);
  } else {
    throw new Error('TWINHUB_PHASE must be start or finish');
  }
}

run(main);
