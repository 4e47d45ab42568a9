// The web console in a real browser: Playwright (playwright-core, from the lock file) driving Debian's
// Chromium (/usr/bin/chromium, installed by the test setup; no browser download), against a real twinhub,
// with a device on the Node device SDK. Run by crates/twinhub/tests/console.rs with
// TWINHUB_CONNECTION_STRING (iothubowner), TWINHUB_READ_CONNECTION_STRING (registryRead) and
// TWINHUB_SCREENSHOTS (a folder for a screenshot of each page).
//
// Checks: sign in with a connection string; create a device; the Node device connects and its row turns
// Connected without a reload; its reported properties appear on its page without a reload; desired
// properties edited in the page reach the device; a change underneath makes saving a 412 conflict that
// the page explains and resolves; a query with a syntax error shows where; a registryRead policy is
// refused writes with a clear message.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { Registry } = require('azure-iothub');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { ConnectionString } = require('azure-iot-common');
const { log, run } = require('./support');

const connectionString = process.env.TWINHUB_CONNECTION_STRING;
const readConnectionString = process.env.TWINHUB_READ_CONNECTION_STRING;
const screenshots = process.env.TWINHUB_SCREENSHOTS || path.join(__dirname, 'console-screenshots');
const CHROMIUM = process.env.TWINHUB_CHROMIUM || '/usr/bin/chromium';

function report(twin, patch) {
  return new Promise((resolve, reject) => twin.properties.reported.update(patch, (e) => (e ? reject(e) : resolve())));
}

async function main() {
  const hostName = ConnectionString.parse(connectionString).HostName;
  const registry = Registry.fromConnectionString(connectionString);
  fs.mkdirSync(screenshots, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const shot = (name) => page.screenshot({ path: path.join(screenshots, `${name}.png`), fullPage: true });
  let device;
  try {
    log('sign in with a connection string');
    await page.goto(`https://${hostName}/console/`);
    await page.getByLabel('Connection string').fill(connectionString);
    await shot('sign-in');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Devices' }).waitFor();

    log('create a device');
    await page.getByLabel('New device').fill('console-dev');
    await page.getByRole('button', { name: 'Create' }).click();
    const state = page.locator('[data-state="console-dev"]');
    await state.waitFor();
    assert.equal(await state.textContent(), 'Disconnected');

    log('a Node SDK device connects: its row turns Connected without a reload');
    const { responseBody: created } = await registry.get('console-dev');
    device = Client.fromConnectionString(
      `HostName=${hostName};DeviceId=console-dev;SharedAccessKey=${created.authentication.symmetricKey.primaryKey}`,
      Mqtt,
    );
    await device.open();
    await page.locator('[data-state="console-dev"]', { hasText: 'Connected' }).waitFor({ timeout: 10000 });
    await shot('devices');

    log('its page shows reported properties as the device reports them');
    await page.getByRole('link', { name: 'console-dev' }).click();
    await page.getByRole('heading', { name: 'console-dev' }).waitFor();
    const twin = await device.getTwin();
    const received = [];
    twin.on('properties.desired', (delta) => received.push(JSON.parse(JSON.stringify(delta))));
    await report(twin, { connectivity: { type: 'cellular' } });
    await page.locator('#reported', { hasText: 'cellular' }).waitFor({ timeout: 10000 });
    await page.locator('#connection-state', { hasText: 'Connected' }).waitFor();

    log('desired properties edited in the page reach the device');
    await page.locator('#twin-editor').fill(JSON.stringify({ tags: { site: 'lab' }, properties: { desired: { interval: 9 } } }));
    await page.getByRole('button', { name: 'Save' }).click();
    await page.locator('#message', { hasText: 'Saved.' }).waitFor();
    const deadline = Date.now() + 10000;
    while (!received.some((delta) => delta.interval === 9)) {
      assert.ok(Date.now() < deadline, 'the device got the desired change');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await shot('device');

    log('a change underneath: saving is a 412 conflict the page explains and resolves');
    await registry.updateTwin('console-dev', { properties: { desired: { interval: 42 } } }, '*');
    await page.locator('#twin-editor').fill(JSON.stringify({ tags: { site: 'lab' }, properties: { desired: { interval: 10 } } }));
    await page.getByRole('button', { name: 'Save' }).click();
    const conflict = page.locator('#conflict');
    await conflict.getByText('412 Precondition Failed').waitFor();
    assert.match(await conflict.textContent(), /"interval": 42/);
    await shot('conflict');
    await page.getByRole('button', { name: 'Load the current twin' }).click();
    assert.match(await page.locator('#twin-editor').inputValue(), /"interval": 42/);

    log('a query with a syntax error shows where');
    await page.getByRole('link', { name: 'Query' }).click();
    await page.locator('#query-text').fill('SELECT * FROM devices WHERE tags.site = ');
    await page.getByRole('button', { name: 'Run' }).click();
    const error = page.locator('#query-error');
    await error.getByText('^').waitFor();
    assert.match(await error.textContent(), /column \d+/);
    await shot('query');
    await page.locator('#query-text').fill("SELECT * FROM devices WHERE tags.site = 'lab'");
    await page.getByRole('button', { name: 'Run' }).click();
    await page.locator('#query-result', { hasText: 'console-dev' }).waitFor();

    log('signed in with registryRead, writes are refused with a clear message');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Connection string').fill(readConnectionString);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Devices' }).waitFor();
    await page.getByLabel('New device').fill('not-allowed');
    await page.getByRole('button', { name: 'Create' }).click();
    await page.locator('#message', { hasText: 'not allowed' }).waitFor();
    await shot('read-only');
    const { responseBody: devices } = await registry.list();
    assert.ok(!devices.some((d) => d.deviceId === 'not-allowed'), 'nothing was created');
  } finally {
    if (device) await device.close().catch(() => {});
    await browser.close();
  }
}

run(main);
