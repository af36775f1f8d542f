// One card per upstream: its backends with live state, numbers and charts, and the actions an
// operator takes on them (add, change weight, drain/undrain, remove), each confirmed first.
// Rows are keyed by address and updated in place every second, so keyboard focus on a button
// survives the live updates. An upstream fed by discovery shows its source (discovery.js) above
// its backends instead of the add form. While Switchyard is not answering (live.stale) health
// is shown as unknown: the last known state may no longer be true.

import { api } from './api.js';
import { createChart } from './chart.js';
import { createDiscovery, updateDiscovery } from './discovery.js';
import { h, fill, setText, openDialog, showProblems, toast } from './dom.js';
import * as fmt from './format.js';
import { live, WINDOW } from './live.js';

const cards = new Map(); // upstream name -> card

/** Brings the upstream cards in `container` in line with the latest snapshot. */
export function renderUpstreams(container, snapshot) {
  const t = performance.now() / 1000;
  const names = new Set();
  for (const u of snapshot.upstreams || []) {
    names.add(u.name);
    let card = cards.get(u.name);
    if (!card) {
      card = createCard(u.name);
      cards.set(u.name, card);
    }
    updateCard(card, u, t);
  }
  for (const [name, card] of cards) {
    if (!names.has(name)) { card.el.remove(); cards.delete(name); }
  }
  const order = [...names].map((n) => cards.get(n).el);
  if (order.some((el, i) => container.children[i] !== el)) container.replaceChildren(...order);
}

function slug(s) { return s.replace(/[^a-zA-Z0-9_-]/g, '-'); }

function createCard(name) {
  const id = slug(name);
  const summary = h('div', { class: 'up-summary' });
  const badge = h('span', { class: 'badge badge-neutral' });
  const tbody = h('tbody');
  const chart = createChart({ width: 220, height: 36, kind: 'rps', floor: 1, format: fmt.rate, label: `${name} requests per second` });
  const addr = h('input', { id: `add-addr-${id}`, name: 'address', required: true, placeholder: '127.0.0.1:9004', autocomplete: 'off', spellcheck: 'false', inputmode: 'url' });
  const weight = h('input', { id: `add-weight-${id}`, name: 'weight', type: 'number', min: 0, max: 10000, step: 1, value: 1 });
  const error = h('p', { class: 'field-error', role: 'alert', id: `add-error-${id}`, hidden: true });
  const form = h('form', { class: 'add-backend', novalidate: true, 'aria-label': `Add a backend to ${name}` },
    h('div', { class: 'field grow' }, h('label', { for: addr.id }, 'Address'), addr),
    h('div', { class: 'field weight' }, h('label', { for: weight.id }, 'Weight'), weight),
    h('button', { class: 'btn btn-primary', type: 'submit' }, 'Add backend'),
    error);
  form.addEventListener('submit', (e) => { e.preventDefault(); addBackend(name, addr, weight, error); });
  form.addEventListener('input', () => {
    error.hidden = true;
    addr.removeAttribute('aria-invalid');
    weight.removeAttribute('aria-invalid');
  });

  const discovery = createDiscovery();
  const el = h('section', { class: 'panel upstream', id: `upstream-${id}`, 'aria-labelledby': `up-h-${id}`, 'data-upstream': name },
    h('div', { class: 'panel-head up-head' },
      h('div', {},
        h('h2', { id: `up-h-${id}` }, h('span', { class: 'muted small up-kind' }, 'Upstream'), ' ', name, ' ', badge),
        summary),
      h('div', { class: 'up-chart' }, chart.el, h('div', { class: 'chart-caption', 'aria-hidden': 'true' }, 'requests / s'))),
    discovery.el,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'backends' },
        h('caption', { class: 'visually-hidden' }, `Backends of ${name}`),
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col' }, 'Backend'),
          h('th', { scope: 'col' }, 'Status'),
          h('th', { scope: 'col', class: 'num' }, 'Weight'),
          h('th', { scope: 'col', class: 'num' }, 'Active'),
          h('th', { scope: 'col' }, 'Req/s'),
          h('th', { scope: 'col' }, 'Errors'),
          h('th', { scope: 'col' }, 'Latency'),
          h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
        tbody)),
    form);
  return { el, name, badge, summary, tbody, chart, form, discovery, rows: new Map() };
}

function updateCard(card, u, t) {
  // Sticky sessions change how traffic spreads: say so next to the algorithm.
  setText(card.badge, u.algorithm.replaceAll('_', ' ') + (u.sticky_cookie ? ` · sticky (${u.sticky_cookie})` : ''));
  updateDiscovery(card.discovery, u.discovery);
  card.form.hidden = Boolean(u.discovery);
  const backends = u.backends || [];
  const healthy = backends.filter((b) => b.health !== 'unhealthy' && !b.ejected && b.circuit !== 'open').length;
  const totals = live.totals(u.name);
  const r = live.recent(totals);
  fill(card.summary,
    h('span', { class: healthy === backends.length ? 'ok' : healthy === 0 ? 'bad' : 'warn' }, `${healthy}/${backends.length} available`),
    h('span', {}, `${fmt.rate(r.rps)} req/s`),
    h('span', {}, `${fmt.percent(r.err)} errors`),
    // Requests waiting for room under max_connections: the first sign of a saturated upstream.
    u.queued ? h('span', { class: 'warn' }, `${u.queued} queued`) : null);
  card.chart.update(totals.map((s) => ({ t: s.t, v: s.rps })), t, live.chartWindow());

  const addresses = new Set();
  for (const b of backends) {
    addresses.add(b.address);
    let row = card.rows.get(b.address);
    if (!row) {
      row = createRow(card.name, b.address);
      card.rows.set(b.address, row);
    }
    updateRow(row, b, live.series(card.name, b.address), t);
  }
  for (const [a, row] of card.rows) {
    if (!addresses.has(a)) { row.tr.remove(); card.rows.delete(a); }
  }
  const order = backends.map((b) => card.rows.get(b.address).tr);
  if (order.some((tr, i) => card.tbody.children[i] !== tr)) card.tbody.replaceChildren(...order);
  if (!backends.length) {
    const text = u.discovery ? 'No backends yet: the discovery source has listed none.' : 'No backends. Add one below.';
    card.tbody.replaceChildren(h('tr', {}, h('td', { colspan: 8, class: 'empty' }, text)));
  }
}

function metricCell(label, kind, floor, format) {
  const value = h('span', { class: 'metric-value' });
  const chart = createChart({ width: 84, height: 22, kind, floor, format, label });
  const td = h('td', { class: 'metric', 'data-label': label }, value, chart.el);
  return { td, value, chart };
}

function createRow(upstream, address) {
  const health = h('span', { class: 'badge', 'data-field': 'health' });
  const circuit = h('span', { class: 'circuit small', 'data-field': 'circuit' });
  const flags = h('span', { class: 'flags' });
  const weight = h('td', { class: 'num', 'data-label': 'Weight', 'data-field': 'weight' });
  const active = h('td', { class: 'num', 'data-label': 'Active', 'data-field': 'active' });
  const rps = metricCell('Req/s', 'rps', 1, fmt.rate);
  const err = metricCell('Errors', 'err', 0.05, fmt.percent);
  const lat = metricCell('Latency', 'lat', 2, fmt.ms);
  const drain = h('button', { class: 'btn btn-small', type: 'button' });
  const row = { upstream, address, b: null };
  const tr = h('tr', { 'data-address': address },
    h('th', { scope: 'row', class: 'addr', 'data-label': 'Backend' }, h('code', {}, address), flags),
    h('td', { class: 'status', 'data-label': 'Status' }, health, circuit),
    weight, active, rps.td, err.td, lat.td,
    h('td', { class: 'row-actions' },
      h('button', { class: 'btn btn-small', type: 'button', 'aria-label': `Change weight of ${address}`, onclick: () => changeWeight(row) }, 'Weight'),
      drain,
      h('button', { class: 'btn btn-small btn-danger-quiet', type: 'button', 'aria-label': `Remove ${address}`, onclick: () => removeBackend(row) }, 'Remove')));
  drain.addEventListener('click', () => toggleDrain(row));
  return Object.assign(row, { tr, health, circuit, flags, weight, active, rps, err, lat, drain });
}

const HEALTH_TEXT = { healthy: 'Healthy', unhealthy: 'Unhealthy', unknown: 'Unknown' };
const CIRCUIT_TEXT = { closed: 'circuit closed', open: 'circuit open', half_open: 'circuit half-open' };

function updateRow(row, b, series, t) {
  row.b = b;
  const health = live.stale ? 'unknown' : b.health;
  row.tr.dataset.health = health;
  row.tr.dataset.circuit = b.circuit;
  row.tr.classList.toggle('is-down', !live.stale && (b.health === 'unhealthy' || b.circuit === 'open' || b.ejected));
  row.tr.classList.toggle('is-draining', b.draining);
  setText(row.health, HEALTH_TEXT[health] || health);
  row.health.className = `badge health-${health}`;
  if (live.stale) row.health.title = `Last known: ${HEALTH_TEXT[b.health] || b.health}`;
  else row.health.removeAttribute('title');
  setText(row.circuit, CIRCUIT_TEXT[b.circuit] || b.circuit);
  row.circuit.className = `circuit small circuit-${b.circuit}`;
  const flags = [];
  // Removed from the configuration, still finishing its requests: listed until the last ends.
  if (b.removed) flags.push(['Removed, finishing requests', 'badge badge-warn']);
  else if (b.draining) flags.push(['Draining', 'badge badge-warn']);
  if (b.ejected) flags.push(['Ejected', 'badge badge-bad']);
  if (b.backup) flags.push(['Backup', 'badge']);
  const flagText = flags.map((f) => f[0]).join(',');
  if (row.flags.dataset.text !== flagText) {
    row.flags.dataset.text = flagText;
    fill(row.flags, flags.map(([text, cls]) => h('span', { class: cls }, text)));
  }
  setText(row.weight, b.weight);
  setText(row.active, fmt.count(b.active_requests));
  const r = live.recent(series);
  setText(row.rps.value, fmt.rate(r.rps));
  setText(row.err.value, fmt.percent(r.err));
  setText(row.lat.value, fmt.ms(b.latency_ewma_ms));
  row.err.value.classList.toggle('bad', r.err >= 0.05);
  row.rps.chart.update(series.map((s) => ({ t: s.t, v: s.rps })), t, live.chartWindow());
  row.err.chart.update(series.map((s) => ({ t: s.t, v: s.err })), t, live.chartWindow());
  row.lat.chart.update(series.filter((s) => s.lat > 0).map((s) => ({ t: s.t, v: s.lat })), t, live.chartWindow());
  const draining = Boolean(b.draining);
  for (const btn of row.tr.querySelectorAll('.row-actions button')) btn.disabled = Boolean(b.removed);
  setText(row.drain, draining ? 'Undrain' : 'Drain');
  row.drain.setAttribute('aria-label', `${draining ? 'Undrain' : 'Drain'} ${row.address}`);
}

// ---- actions ----------------------------------------------------------------------------------

async function addBackend(upstream, addrInput, weightInput, error) {
  const address = addrInput.value.trim();
  const weight = weightInput.value === '' ? 1 : Number(weightInput.value);
  error.hidden = true;
  addrInput.removeAttribute('aria-invalid');
  weightInput.removeAttribute('aria-invalid');
  if (!address) {
    markInvalid(error, addrInput, { problems: [{ path: '', message: 'Enter the backend address as host:port.' }] });
    return;
  }
  const ok = await openDialog({
    title: 'Add backend',
    body: [h('p', {}, 'Add ', h('code', {}, address), ` with weight ${weight} to `, h('strong', {}, upstream), '?'),
      h('p', { class: 'muted small' }, 'It starts receiving traffic as soon as the change is applied and written to the configuration file.')],
    confirm: 'Add backend',
  });
  if (!ok) return;
  try {
    const res = await api.addBackend(upstream, address, Number.isFinite(weight) ? weight : weightInput.value);
    toast(`Added ${address}`, 'ok', versionNote(res.data));
    addrInput.value = '';
    weightInput.value = 1;
    await live.refresh();
  } catch (err) {
    const path = (err.data && err.data.path) || '';
    markInvalid(error, /weight/.test(path) ? weightInput : addrInput, err);
    if (err.status === 0 || err.status >= 500) toast('Could not add the backend', 'error', err.message);
  }
}

function markInvalid(error, input, err) {
  showProblems(error, err);
  input.setAttribute('aria-invalid', 'true');
  input.setAttribute('aria-describedby', error.id);
  input.focus();
}

function versionNote(data) {
  return data && data.config_version != null ? `Configuration version ${data.config_version}` : undefined;
}

async function changeWeight(row) {
  const current = row.b ? row.b.weight : 1;
  const input = h('input', { id: 'weight-input', type: 'number', min: 0, max: 10000, step: 1, value: current, required: true });
  const res = await openDialog({
    title: 'Change weight',
    body: [
      h('p', {}, 'New weight for ', h('code', {}, row.address), ` (now ${current}).`),
      h('div', { class: 'field' }, h('label', { for: 'weight-input' }, 'Weight (0–10000; 0 drains)'), input),
      h('p', { class: 'muted small' }, 'Weights matter to weighted round robin, least connections and consistent hashing.'),
    ],
    confirm: 'Change weight',
    focus: '#weight-input',
    run: async () => {
      if (input.value.trim() === '' || !Number.isInteger(Number(input.value))) {
        throw new Error('Enter a whole number.');
      }
      return api.patchBackend(row.upstream, row.address, { weight: Number(input.value) });
    },
  });
  if (res) {
    toast(`Weight of ${row.address} set to ${input.value}`, 'ok', versionNote(res.data));
    await live.refresh();
  }
}

async function toggleDrain(row) {
  const draining = row.b && row.b.draining;
  const res = await openDialog({
    title: draining ? 'Return to service' : 'Drain backend',
    body: draining
      ? [h('p', {}, 'Send new requests to ', h('code', {}, row.address), ' again?'),
        row.b && row.b.weight === 0 ? h('p', { class: 'muted small' }, 'Its weight is 0, which also drains it: change the weight too.') : null]
      : [h('p', {}, 'Stop sending new requests to ', h('code', {}, row.address), '?'),
        h('p', { class: 'muted small' }, 'Requests in flight finish. Health checks continue, and the backend stays in the configuration.')],
    confirm: draining ? 'Undrain' : 'Drain',
    run: () => api.patchBackend(row.upstream, row.address, { drain: !draining }),
  });
  if (res) {
    toast(`${row.address} ${draining ? 'back in service' : 'draining'}`, 'ok', versionNote(res.data));
    await live.refresh();
  }
}

async function removeBackend(row) {
  const res = await openDialog({
    title: 'Remove backend',
    body: [h('p', {}, 'Remove ', h('code', {}, row.address), ' from ', h('strong', {}, row.upstream), '?'),
      h('p', { class: 'muted small' }, 'It gets no new requests; requests in flight finish. The configuration file is updated.')],
    confirm: 'Remove',
    danger: true,
    run: () => api.removeBackend(row.upstream, row.address),
  });
  if (res) {
    toast(`Removed ${row.address}`, 'ok', versionNote(res.data));
    await live.refresh();
  }
}

export { WINDOW };
