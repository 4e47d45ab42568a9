// The twinhub console: a back end in the browser. It signs SAS tokens itself from the connection string
// the user pastes (kept in session storage, sent nowhere but this hub), calls the public service API,
// and follows the hub's live change stream (/twinhub/stream) to keep what it shows current.

const API = 'api-version=2021-04-12';
const main = document.getElementById('main');
const message = document.getElementById('message');
const live = document.getElementById('live');

// --- Credentials and SAS tokens -------------------------------------------------------------------

function parseConnectionString(text) {
  const parts = Object.fromEntries(text.trim().split(';').filter(Boolean).map((part) => {
    const at = part.indexOf('=');
    return [part.slice(0, at), part.slice(at + 1)];
  }));
  if (!parts.HostName || !parts.SharedAccessKeyName || !parts.SharedAccessKey) {
    throw new Error('A connection string needs HostName, SharedAccessKeyName and SharedAccessKey.');
  }
  return { host: parts.HostName, keyName: parts.SharedAccessKeyName, key: parts.SharedAccessKey };
}

function credentials() {
  const stored = sessionStorage.getItem('twinhub.connection');
  return stored ? JSON.parse(stored) : null;
}

let cachedToken = null;
async function token() {
  const now = Math.floor(Date.now() / 1000);
  if (cachedToken && cachedToken.expiry - now > 300) return cachedToken.value;
  const { host, keyName, key } = credentials();
  const expiry = now + 3600;
  const resource = encodeURIComponent(host);
  const raw = Uint8Array.from(atob(key), (c) => c.charCodeAt(0));
  const hmac = await crypto.subtle.importKey('raw', raw, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const signed = await crypto.subtle.sign('HMAC', hmac, new TextEncoder().encode(`${resource}\n${expiry}`));
  const signature = btoa(String.fromCharCode(...new Uint8Array(signed)));
  const value = `SharedAccessSignature sr=${resource}&sig=${encodeURIComponent(signature)}&se=${expiry}&skn=${encodeURIComponent(keyName)}`;
  cachedToken = { value, expiry };
  return value;
}

// --- The service API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, text) {
    super(text);
    this.status = status;
    this.code = code;
  }
}

// IoT Hub's error bodies: {"Message":"ErrorCode:<code>;<text>", ...} or {"errorCode":..., "message":...}.
async function apiError(response) {
  const code = response.headers.get('iothub-errorcode') || String(response.status);
  let text = response.statusText;
  try {
    const body = await response.json();
    const raw = body.Message || body.message || text;
    text = raw.replace(/^ErrorCode:[^;]*;/, '');
  } catch (_) { /* no JSON body */ }
  return new ApiError(response.status, code, text);
}

async function call(method, path, { body, etag, headers = {} } = {}) {
  const separator = path.includes('?') ? '&' : '?';
  const init = { method, headers: { Authorization: await token(), ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json; charset=utf-8';
    init.body = JSON.stringify(body);
  }
  if (etag) init.headers['If-Match'] = `"${etag}"`;
  const response = await fetch(`/${path.replace(/^\//, '')}${separator}${API}`, init);
  if (!response.ok) throw await apiError(response);
  const text = await response.text();
  return { body: text ? JSON.parse(text) : null, headers: response.headers };
}

async function query(sql, pageSize, continuation) {
  const headers = { 'x-ms-max-item-count': String(pageSize) };
  if (continuation) headers['x-ms-continuation'] = continuation;
  const { body, headers: answer } = await call('POST', 'devices/query', { body: { query: sql }, headers });
  return { items: body, continuation: answer.get('x-ms-continuation') };
}

// What a refusal means to the person who asked.
function explain(error) {
  if (error.status === 401) return 'This connection string is not allowed to do that (401 Unauthorized).';
  if (error.status === 403) return `Refused: ${error.message}`;
  return `${error.code}: ${error.message}`;
}

function show(text) {
  message.textContent = text;
  clearTimeout(show.timer);
  show.timer = setTimeout(() => { message.textContent = ''; }, 8000);
}

// --- The live change stream -----------------------------------------------------------------------

const listeners = new Set();
let streamAbort = null;

async function follow() {
  let lastId = null;
  for (;;) {
    streamAbort = new AbortController();
    try {
      const headers = { Authorization: await token() };
      if (lastId !== null) headers['Last-Event-ID'] = String(lastId);
      const response = await fetch('/twinhub/stream', { headers, signal: streamAbort.signal });
      if (!response.ok) throw await apiError(response);
      live.textContent = 'Live';
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let pending = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        let end;
        while ((end = pending.indexOf('\n\n')) >= 0) {
          const block = pending.slice(0, end);
          pending = pending.slice(end + 2);
          const event = { kind: 'message', data: '' };
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event.kind = line.slice(6).trim();
            else if (line.startsWith('id:')) lastId = Number(line.slice(3).trim());
            else if (line.startsWith('data:')) event.data += line.slice(5).trim();
          }
          if (event.data) event.data = JSON.parse(event.data);
          for (const listener of listeners) listener(event);
        }
      }
    } catch (error) {
      if (error.name === 'AbortError') return;
      if (error.status === 401) {
        live.textContent = 'Live updates need a ServiceConnect policy';
        return;
      }
    }
    live.textContent = 'Reconnecting…';
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function onStream(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

// --- Pages ----------------------------------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? '' : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

let leavePage = () => {};

// What the stream brought per second, for the last five minutes (since the console was opened).
const RATE_SECONDS = 300;
const rates = { telemetry: new Map(), twin: new Map() };
onStream((event) => {
  const series = rates[event.kind];
  if (!series) return;
  const second = Math.floor(Date.now() / 1000);
  series.set(second, (series.get(second) || 0) + 1);
  for (const old of series.keys()) if (old < second - RATE_SECONDS) series.delete(old);
});

function lastSeconds(series, seconds) {
  const now = Math.floor(Date.now() / 1000);
  return Array.from({ length: seconds }, (_, n) => series.get(now - seconds + n) || 0);
}

// A line chart of per-second counts, as an SVG.
function chart(label, values) {
  const width = 600;
  const height = 120;
  const top = Math.max(1, ...values);
  const points = values.map((v, n) => `${(n / (values.length - 1)) * width},${height - (v / top) * (height - 10)}`).join(' ');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${label}: at most ${top} per second over the last ${values.length / 60} minutes`);
  svg.style.width = '100%';
  svg.style.maxWidth = '40rem';
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', points);
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', 'currentColor');
  line.setAttribute('stroke-width', '2');
  svg.append(line);
  return svg;
}

async function overviewPage() {
  const figures = element('dl', { id: 'overview-figures' });
  const charts = element('div');
  async function refresh() {
    try {
      const [{ body: registry }, { body: service }] = await Promise.all([
        call('GET', 'statistics/devices'),
        call('GET', 'statistics/service'),
      ]);
      const perSecond = (series) => lastSeconds(series, 10).reduce((a, b) => a + b, 0) / 10;
      figures.replaceChildren(
        element('dt', {}, 'Devices'), element('dd', { id: 'total-devices' }, String(registry.totalDeviceCount)),
        element('dt', {}, 'Connected'), element('dd', { id: 'connected-devices' }, String(service.connectedDeviceCount)),
        element('dt', {}, 'Messages per second'), element('dd', {}, perSecond(rates.telemetry).toFixed(1)),
        element('dt', {}, 'Twin writes per second'), element('dd', {}, perSecond(rates.twin).toFixed(1)));
      charts.replaceChildren(
        element('h3', {}, 'Messages per second, last 5 minutes'), chart('Messages per second', lastSeconds(rates.telemetry, RATE_SECONDS)),
        element('h3', {}, 'Twin writes per second, last 5 minutes'), chart('Twin writes per second', lastSeconds(rates.twin, RATE_SECONDS)));
    } catch (error) {
      show(explain(error));
    }
  }
  main.replaceChildren(element('h2', {}, 'Overview'), figures, charts,
    element('p', {}, 'Rates count what this console saw on the live stream since it was opened.'));
  await refresh();
  const timer = setInterval(refresh, 2000);
  leavePage = () => clearInterval(timer);
}

function signInPage() {
  const input = element('textarea', { id: 'connection-string', rows: 3, autocomplete: 'off', spellcheck: 'false' });
  const form = element('form', {
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        const parsed = parseConnectionString(input.value);
        sessionStorage.setItem('twinhub.connection', JSON.stringify(parsed));
        cachedToken = null;
        location.hash = '#/devices';
        start();
      } catch (error) {
        show(error.message);
      }
    },
  },
  element('h2', {}, 'Sign in'),
  element('p', {}, 'Paste a connection string of one of the hub\'s shared access policies (twinhub connection-string prints one). It stays in this tab and goes to this hub only.'),
  element('label', { for: 'connection-string' }, 'Connection string'),
  input,
  element('p', {}, element('button', { type: 'submit', class: 'primary' }, 'Sign in')));
  main.replaceChildren(form);
  input.focus();
}

async function devicesPage() {
  const search = element('input', { id: 'search', type: 'search', placeholder: 'device id prefix, or a query condition' });
  const newId = element('input', { id: 'new-device', placeholder: 'new device id' });
  const body = element('tbody');
  const more = element('button', { type: 'button', hidden: true }, 'More');
  const rows = new Map();
  let continuation = null;
  let sql = 'SELECT * FROM devices';

  function row(twin) {
    const state = element('td', { class: `state-${twin.connectionState}`, 'data-state': twin.deviceId }, twin.connectionState);
    const tr = element('tr', {},
      element('td', {}, element('a', { href: `#/device/${encodeURIComponent(twin.deviceId)}` }, twin.deviceId)),
      element('td', {}, twin.status), state,
      element('td', {}, twin.lastActivityTime && !twin.lastActivityTime.startsWith('0001') ? twin.lastActivityTime : ''));
    rows.set(twin.deviceId, tr);
    return tr;
  }

  async function load(reset) {
    if (reset) {
      body.replaceChildren();
      rows.clear();
      continuation = null;
    }
    try {
      const page = await query(sql, 50, continuation);
      body.append(...page.items.filter((twin) => !twin.moduleId).map(row));
      continuation = page.continuation;
      more.hidden = !continuation;
    } catch (error) {
      show(explain(error));
    }
  }

  const form = element('form', {
    class: 'row',
    onsubmit: (event) => {
      event.preventDefault();
      const text = search.value.trim();
      if (!text) sql = 'SELECT * FROM devices';
      else if (/^[\w\-.:+%#*?!(),=@$']+$/.test(text)) sql = `SELECT * FROM devices WHERE STARTSWITH(deviceId, '${text}')`;
      else sql = `SELECT * FROM devices WHERE ${text}`;
      load(true);
    },
  }, element('div', {}, element('label', { for: 'search' }, 'Search'), search), element('button', { type: 'submit' }, 'Search'));

  const create = element('form', {
    class: 'row',
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        const id = newId.value.trim();
        await call('PUT', `devices/${encodeURIComponent(id)}`, { body: { deviceId: id } });
        newId.value = '';
        show(`Device ${id} created.`);
        load(true);
      } catch (error) {
        show(explain(error));
      }
    },
  }, element('div', {}, element('label', { for: 'new-device' }, 'New device'), newId), element('button', { type: 'submit' }, 'Create'));

  main.replaceChildren(
    element('h2', {}, 'Devices'), form, create,
    element('table', {}, element('caption', { class: 'visually-hidden' }, 'Devices'),
      element('thead', {}, element('tr', {}, ...['Device', 'Status', 'Connection', 'Last activity'].map((h) => element('th', { scope: 'col' }, h)))),
      body),
    more);
  more.addEventListener('click', () => load(false));
  leavePage = onStream((event) => {
    if (event.kind === 'twin' && !event.data.moduleId && rows.has(event.data.deviceId)) {
      rows.get(event.data.deviceId).replaceWith(row(event.data.twin));
    } else if (event.kind === 'deleted' && rows.has(event.data.deviceId) && !event.data.moduleId) {
      rows.get(event.data.deviceId).remove();
      rows.delete(event.data.deviceId);
    } else if (event.kind === 'resync') {
      load(true);
    }
  });
  await load(true);
}

async function devicePage(deviceId) {
  const path = `twins/${encodeURIComponent(deviceId)}`;
  let twin;
  try {
    ({ body: twin } = await call('GET', path));
  } catch (error) {
    show(explain(error));
    return;
  }
  // What the twin was when the page opened (or was last saved or reloaded here): changes since are listed.
  let opened = twin;
  const changes = element('p', { id: 'changes', 'aria-live': 'polite' });
  function changedSinceOpened(current) {
    const members = (twinDoc) => {
      const flat = new Map();
      const sections = [['tags', twinDoc.tags || {}], ['properties.desired', twinDoc.properties.desired], ['properties.reported', twinDoc.properties.reported]];
      for (const [section, values] of sections) {
        for (const [name, value] of Object.entries(values || {})) {
          if (!name.startsWith('$')) flat.set(`${section}.${name}`, JSON.stringify(value));
        }
      }
      flat.set('connectionState', twinDoc.connectionState);
      return flat;
    };
    const before = members(opened);
    const after = members(current);
    const paths = [...new Set([...before.keys(), ...after.keys()])].filter((key) => before.get(key) !== after.get(key));
    changes.textContent = paths.length ? `Changed since opened: ${paths.join(', ')}` : '';
    editor.classList.toggle('changed', paths.some((key) => !key.startsWith('properties.reported') && key !== 'connectionState'));
  }
  const editor = element('textarea', { id: 'twin-editor', rows: 12, spellcheck: 'false' });
  const reported = element('pre', { id: 'reported' });
  const state = element('p', { id: 'connection-state' });
  const telemetry = element('ol', { id: 'telemetry', reversed: true });
  const conflict = element('div', { id: 'conflict', role: 'alert' });
  const identity = element('section', { id: 'identity', 'aria-label': 'Identity' });
  const modules = element('ul', { id: 'modules' });

  async function showIdentity() {
    let device;
    try {
      ({ body: device } = await call('GET', `devices/${encodeURIComponent(deviceId)}`));
    } catch (error) {
      identity.replaceChildren(element('p', {}, explain(error)));
      return;
    }
    const secret = element('div', { id: 'secret' });
    const keys = device.authentication && device.authentication.symmetricKey;
    const toggle = device.status === 'enabled' ? 'disabled' : 'enabled';
    identity.replaceChildren(
      element('p', { id: 'device-status' }, `Status: ${device.status}`),
      element('div', { class: 'row' },
        element('button', {
          type: 'button',
          id: 'toggle-status',
          onclick: async () => {
            try {
              await call('PUT', `devices/${encodeURIComponent(deviceId)}`, { body: { ...device, status: toggle }, etag: device.etag });
              showIdentity();
            } catch (error) {
              show(explain(error));
            }
          },
        }, toggle === 'disabled' ? 'Disable' : 'Enable'),
        keys ? element('button', {
          type: 'button',
          id: 'show-keys',
          onclick: () => {
            const text = `HostName=${credentials().host};DeviceId=${deviceId};SharedAccessKey=${keys.primaryKey}`;
            secret.replaceChildren(
              element('label', { for: 'device-connection-string' }, 'Device connection string'),
              element('input', { id: 'device-connection-string', readonly: true, value: text, size: 80 }),
              element('button', { type: 'button', onclick: () => navigator.clipboard.writeText(text).then(() => show('Copied.')) }, 'Copy'));
          },
        }, 'Show connection string') : null,
        element('button', {
          type: 'button',
          id: 'delete-device',
          onclick: async () => {
            if (!confirm(`Delete ${deviceId} and its twin?`)) return;
            try {
              await call('DELETE', `devices/${encodeURIComponent(deviceId)}`, { etag: '*' });
              location.hash = '#/devices';
            } catch (error) {
              show(explain(error));
            }
          },
        }, 'Delete')),
      secret);
    try {
      const { body: list } = await call('GET', `devices/${encodeURIComponent(deviceId)}/modules`);
      modules.replaceChildren(...list.map((module) => element('li', {}, `${module.moduleId} (${module.connectionState})`)));
      if (!list.length) modules.replaceChildren(element('li', {}, 'No modules'));
    } catch (error) {
      modules.replaceChildren(element('li', {}, explain(error)));
    }
  }

  const messageText = element('input', { id: 'message-text', size: 40 });
  const messageForm = element('form', {
    class: 'row',
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        await call('POST', `twinhub/devices/${encodeURIComponent(deviceId)}/messages`, { body: { body: messageText.value } });
        show('Message queued for the device.');
        messageText.value = '';
      } catch (error) {
        show(explain(error));
      }
    },
  }, element('div', {}, element('label', { for: 'message-text' }, 'Message'), messageText), element('button', { type: 'submit' }, 'Send'));

  const methodName = element('input', { id: 'method-name', value: 'reboot' });
  const methodPayload = element('input', { id: 'method-payload', value: '{}' , size: 30 });
  const methodResult = element('pre', { id: 'method-result', 'aria-live': 'polite' });
  const methodForm = element('form', {
    class: 'row',
    onsubmit: async (event) => {
      event.preventDefault();
      methodResult.textContent = 'Calling…';
      try {
        const payload = methodPayload.value.trim() ? JSON.parse(methodPayload.value) : null;
        const { body } = await call('POST', `twins/${encodeURIComponent(deviceId)}/methods`, {
          body: { methodName: methodName.value, payload, responseTimeoutInSeconds: 10 },
        });
        methodResult.textContent = JSON.stringify(body, null, 2);
      } catch (error) {
        methodResult.textContent = explain(error);
      }
    },
  },
  element('div', {}, element('label', { for: 'method-name' }, 'Method'), methodName),
  element('div', {}, element('label', { for: 'method-payload' }, 'Payload (JSON)'), methodPayload),
  element('button', { type: 'submit' }, 'Invoke'));

  function editable(current) {
    const desired = { ...current.properties.desired };
    delete desired.$metadata;
    delete desired.$version;
    return JSON.stringify({ tags: current.tags || {}, properties: { desired } }, null, 2);
  }
  function render(current) {
    reported.textContent = JSON.stringify(current.properties.reported, null, 2);
    state.textContent = `Connection: ${current.connectionState}`;
    state.className = `state-${current.connectionState}`;
  }
  editor.value = editable(twin);
  render(twin);

  async function save() {
    conflict.replaceChildren();
    let wanted;
    try {
      wanted = JSON.parse(editor.value);
    } catch (error) {
      show(`The twin is not valid JSON: ${error.message}`);
      return;
    }
    try {
      // A replacement of tags and desired properties, at the etag the editor was loaded with.
      const { body } = await call('PUT', path, { body: wanted, etag: twin.etag });
      twin = body;
      opened = twin;
      editor.value = editable(twin);
      render(twin);
      changedSinceOpened(twin);
      show('Saved.');
    } catch (error) {
      if (error.status !== 412) {
        show(explain(error));
        return;
      }
      const { body: latest } = await call('GET', path);
      conflict.replaceChildren(
        element('p', {}, 'The twin changed since it was opened (412 Precondition Failed): saving now would overwrite that change. Its current desired properties:'),
        element('pre', {}, JSON.stringify(latest.properties.desired, null, 2)),
        element('button', {
          type: 'button',
          id: 'take-latest',
          onclick: () => {
            twin = latest;
            opened = latest;
            editor.value = editable(latest);
            render(latest);
            changedSinceOpened(latest);
            conflict.replaceChildren();
          },
        }, 'Load the current twin'),
        element('button', {
          type: 'button',
          id: 'overwrite',
          onclick: () => {
            twin = { ...twin, etag: latest.etag };
            save();
          },
        }, 'Save mine over it'));
    }
  }

  main.replaceChildren(
    element('h2', {}, deviceId), state, changes, identity,
    element('label', { for: 'twin-editor' }, 'Tags and desired properties'), editor,
    element('p', {}, element('button', { type: 'button', class: 'primary', id: 'save', onclick: save }, 'Save')),
    conflict,
    element('h3', {}, 'Reported properties'), reported,
    element('h3', {}, 'Direct method'), methodForm, methodResult,
    element('h3', {}, 'Cloud-to-device message'), messageForm,
    element('h3', {}, 'Modules'), modules,
    element('h3', {}, 'Telemetry'), telemetry);
  await showIdentity();
  leavePage = onStream((event) => {
    if (event.data.deviceId !== deviceId || event.data.moduleId) return;
    if (event.kind === 'twin') {
      render(event.data.twin);
      changedSinceOpened(event.data.twin);
    } else if (event.kind === 'telemetry') {
      telemetry.prepend(element('li', {}, `${event.data.enqueuedTime} ${JSON.stringify(event.data.body)}`));
    }
  });
}

function queryPage() {
  const text = element('textarea', { id: 'query-text', rows: 4, spellcheck: 'false' });
  text.value = 'SELECT * FROM devices';
  const output = element('div', { id: 'query-result' });
  const position = element('div', { id: 'query-error', class: 'error-position', role: 'alert' });
  const asTable = element('input', { type: 'checkbox', id: 'as-table', checked: true });
  const more = element('button', { type: 'button', id: 'query-more', hidden: true }, 'More');
  let items = [];
  let continuation = null;

  // A table of the rows' top-level values (objects as JSON), or the JSON itself.
  function render() {
    if (!asTable.checked) {
      output.replaceChildren(element('pre', {}, JSON.stringify(items, null, 2)));
      return;
    }
    const columns = [...new Set(items.flatMap((item) => Object.keys(item)))];
    const cell = (value) => (value !== null && typeof value === 'object' ? JSON.stringify(value) : String(value ?? ''));
    output.replaceChildren(element('table', {},
      element('thead', {}, element('tr', {}, ...columns.map((column) => element('th', { scope: 'col' }, column)))),
      element('tbody', {}, ...items.map((item) => element('tr', {}, ...columns.map((column) => element('td', {}, cell(item[column]))))))));
  }

  async function run(next) {
    position.textContent = '';
    if (!next) {
      items = [];
      continuation = null;
      output.replaceChildren();
    }
    try {
      const page = await query(text.value, 100, continuation);
      items = items.concat(page.items);
      continuation = page.continuation;
      more.hidden = !continuation;
      render();
    } catch (error) {
      // The hub's errors name where: "line L, column C: ...".
      const at = /line (\d+), column (\d+)/.exec(error.message);
      if (at) {
        const line = text.value.split('\n')[Number(at[1]) - 1] || '';
        position.textContent = `${line}\n${' '.repeat(Math.max(0, Number(at[2]) - 1))}^ ${error.message}`;
      } else {
        position.textContent = error.message;
      }
    }
  }
  asTable.addEventListener('change', render);
  more.addEventListener('click', () => run(true));
  main.replaceChildren(element('h2', {}, 'Query'),
    element('label', { for: 'query-text' }, 'IoT Hub query'), text,
    element('p', { class: 'row' },
      element('button', { type: 'button', class: 'primary', id: 'run-query', onclick: () => run(false) }, 'Run'),
      element('label', { for: 'as-table' }, asTable, ' As a table')),
    position, output, more);
}

// --- Routing --------------------------------------------------------------------------------------

async function route() {
  leavePage();
  leavePage = () => {};
  if (!credentials()) {
    signInPage();
    return;
  }
  const hash = location.hash || '#/devices';
  const device = /^#\/device\/(.+)$/.exec(hash);
  if (device) await devicePage(decodeURIComponent(device[1]));
  else if (hash === '#/query') queryPage();
  else if (hash === '#/overview') await overviewPage();
  else await devicesPage();
  main.focus();
}

function start() {
  document.getElementById('nav').hidden = false;
  if (!streamAbort) follow();
  route();
}

document.getElementById('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem('twinhub.connection');
  cachedToken = null;
  if (streamAbort) streamAbort.abort();
  streamAbort = null;
  document.getElementById('nav').hidden = true;
  location.hash = '';
  signInPage();
});
window.addEventListener('hashchange', route);
if (credentials()) start();
else signInPage();
