// What the SDK test scripts share: step logging, polling, and running a script to an exit code.
'use strict';

let step = '';

// Logs a step; a failure names the last one.
function log(message) {
  step = message;
  console.log(`- ${message}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Polls `condition` until it holds; fails with `what` after `ms`.
async function waitFor(what, condition, ms = 15000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await sleep(50);
  }
}

// Runs `main` and exits 0, or 1 with the failed step and the error.
function run(main) {
  main().then(
    () => process.exit(0),
    (error) => {
      console.error(`FAILED at step: ${step}`);
      console.error(error && error.stack ? error.stack : error);
      process.exit(1);
    },
  );
}

// The environment of a device script: the hub's owner connection string, the device SDK transport named
// by TWINHUB_TRANSPORT and the device id to use. Exits 2 when one is missing.
function deviceScriptEnv() {
  const transports = { ...require('azure-iot-device-mqtt'), ...require('azure-iot-device-amqp') };
  const env = {
    connectionString: process.env.TWINHUB_CONNECTION_STRING,
    transportName: process.env.TWINHUB_TRANSPORT,
    deviceId: process.env.TWINHUB_DEVICE_ID,
  };
  env.Transport = transports[env.transportName];
  if (!env.connectionString || !env.Transport || !env.deviceId) {
    console.error('TWINHUB_CONNECTION_STRING, TWINHUB_TRANSPORT (Mqtt, MqttWs, Amqp or AmqpWs) and TWINHUB_DEVICE_ID must be set');
    process.exit(2);
  }
  return env;
}

// Runs `work` over `items`, at most `limit` at a time.
async function eachLimited(items, limit, work) {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      await work(items[index], index);
    }
  });
  await Promise.all(workers);
}

// Registers `ids` with the bulk API (100 at a time), each with a random key; returns the keys by id.
async function registerDevices(registry, ids) {
  const { randomBytes } = require('node:crypto');
  const keys = new Map();
  for (let start = 0; start < ids.length; start += 100) {
    const batch = ids.slice(start, start + 100).map((deviceId) => {
      const key = randomBytes(32).toString('base64');
      keys.set(deviceId, key);
      return { deviceId, authentication: { symmetricKey: { primaryKey: key, secondaryKey: key } } };
    });
    await registry.addDevices(batch);
  }
  return keys;
}

// Every item of a registry query, through every page (`next` with the continuation token: the promise
// form without it re-reads the first page).
async function queryAll(registry, sql, pageSize = 1000) {
  const query = registry.createQuery(sql, pageSize);
  const items = [];
  do {
    const { result } = await query.next(query.continuationToken);
    items.push(...result);
  } while (query.hasMoreResults);
  return items;
}

module.exports = { log, sleep, waitFor, run, deviceScriptEnv, eachLimited, registerDevices, queryAll };
