// The web console in a real browser: Playwright (playwright-core, from the lock file) driving Debian's
// Chromium (/usr/bin/chromium, installed by the test setup; no browser download), against a real twinhub,
// with a device on the Node device SDK. Run by crates/twinhub/tests/console.rs with
// TWINHUB_CONNECTION_STRING (iothubowner), TWINHUB_READ_CONNECTION_STRING (registryRead) and
// TWINHUB_SCREENSHOTS (a folder for a screenshot of each page).
//
// Checks: sign in with a connection string, with the keyboard alone; create a device; the Node device connects and its row turns
// Connected without a reload; its reported properties appear on its page without a reload; desired
// properties edited in the page reach the device; a change underneath makes saving a 412 conflict that
// the page explains and resolves; a query with a syntax error shows where; a registryRead policy is
// refused writes with a clear message; the overview counts the devices; a direct method invoked from
// the device page is answered; disable and enable; the query's table view; dark mode and 200% zoom
// (no sideways scrolling).
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
    // The keyboard alone: the field has the focus, Tab reaches the button, Enter presses it.
    await page.keyboard.type(connectionString);
    await shot('sign-in');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Enter');
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
    await page.locator('#changes', { hasText: 'properties.reported.connectivity' }).waitFor();
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

    log('a direct method from the device page, answered by the device');
    device.onDeviceMethod('blink', (request, response) => response.send(200, { blinked: request.payload.times }, () => {}));
    await page.locator('#method-name').fill('blink');
    await page.locator('#method-payload').fill('{"times": 3}');
    await page.getByRole('button', { name: 'Invoke' }).click();
    await page.locator('#method-result', { hasText: '"blinked": 3' }).waitFor({ timeout: 10000 });

    log('a cloud-to-device message from the device page reaches the device; its telemetry shows live');
    const messages = [];
    device.on('message', (msg) => {
      messages.push(msg.getData().toString());
      device.complete(msg, () => {});
    });
    await page.locator('#message-text').fill('open the valve');
    await page.getByRole('button', { name: 'Send' }).click();
    const until = Date.now() + 10000;
    while (!messages.includes('open the valve')) {
      assert.ok(Date.now() < until, 'the device got the message');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const { Message } = require('azure-iot-device');
    await device.sendEvent(new Message(JSON.stringify({ temperature: 22.5 })));
    await page.locator('#telemetry', { hasText: '22.5' }).waitFor({ timeout: 10000 });

    log('disable and enable the device; its modules are listed');
    await page.getByRole('button', { name: 'Disable' }).click();
    await page.locator('#device-status', { hasText: 'disabled' }).waitFor();
    assert.equal((await registry.get('console-dev')).responseBody.status, 'disabled');
    await page.getByRole('button', { name: 'Enable' }).click();
    await page.locator('#device-status', { hasText: 'enabled' }).waitFor();
    await page.locator('#modules', { hasText: 'No modules' }).waitFor();

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
    await page.locator('#query-result th', { hasText: 'deviceId' }).waitFor();
    await page.getByLabel('As a table').uncheck();
    await page.locator('#query-result pre', { hasText: '"deviceId": "console-dev"' }).waitFor();

    log('the overview counts the devices');
    await page.getByRole('link', { name: 'Overview' }).click();
    await page.locator('#total-devices').waitFor();
    assert.ok(Number(await page.locator('#total-devices').textContent()) >= 1);
    assert.equal(await page.locator('#connected-devices').textContent(), '1');
    await shot('overview');

    log('dark mode, and 200% zoom without sideways scrolling');
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.getByRole('link', { name: 'Devices' }).click();
    await page.locator('[data-state="console-dev"]').waitFor();
    await shot('devices-dark');
    const zoomed = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 640, height: 480 }, deviceScaleFactor: 2 });
    const small = await zoomed.newPage();
    await small.goto(`https://${hostName}/console/`);
    await small.getByLabel('Connection string').fill(connectionString);
    await small.getByRole('button', { name: 'Sign in' }).click();
    await small.locator('[data-state="console-dev"]').waitFor();
    const sideways = await small.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    assert.equal(sideways, false, 'no sideways scrolling at 200%');
    await small.screenshot({ path: path.join(screenshots, 'devices-200-percent.png'), fullPage: true });
    await zoomed.close();
    await page.emulateMedia({ colorScheme: 'light' });

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
