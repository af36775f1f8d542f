// Entry point: hash routing between the three views, the token login, the connection indicator
// and the offline banner, and wiring the live stream to the views.

import { api, getToken, setToken, onUnauthorized } from './api.js';
import { showConfig, configChanged } from './config.js';
import { $, h, fill, setText } from './dom.js';
import { renderEventLog } from './events.js';
import { renderCluster, renderConfig, renderRecentEvents, renderStats } from './overview.js';
import * as fmt from './format.js';
import { live, start, reconnect, retry } from './live.js';

const VIEWS = ['overview', 'config', 'events'];
const server = { version: '', uptime: 0, at: 0 };
let view = '';
let configVersion = null;

// ---- login ------------------------------------------------------------------------------------

onUnauthorized((rejected) => new Promise((resolve) => {
  const dialog = $('#login');
  const form = $('#login-form');
  const input = $('#login-token');
  const error = $('#login-error');
  error.hidden = !rejected;
  if (rejected) fill(error, 'That token was not accepted.');
  input.value = '';
  const onSubmit = async (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) {
      fill(error, 'Enter the admin token.');
      error.hidden = false;
      input.focus();
      return;
    }
    // Check it before closing, so a typo is reported here rather than by a second prompt.
    const res = await fetch('/api/v1/upstreams', { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' })
      .catch(() => null);
    if (res && res.status === 401) {
      fill(error, 'That token was not accepted.');
      error.hidden = false;
      input.select();
      return;
    }
    setToken(token);
    form.removeEventListener('submit', onSubmit);
    dialog.close();
    $('#signout').hidden = false;
    reconnect();
    resolve();
  };
  form.addEventListener('submit', onSubmit);
  // The login cannot be dismissed: nothing else works without it.
  dialog.addEventListener('cancel', (e) => e.preventDefault(), { once: true });
  if (!dialog.open) dialog.showModal();
  input.focus();
}));

$('#signout').hidden = !getToken();
$('#signout').addEventListener('click', () => {
  setToken('');
  location.reload();
});

// ---- routing ----------------------------------------------------------------------------------

function route() {
  const want = location.hash.replace(/^#\/?/, '');
  // In-page anchors (#upstream-web) belong to the overview.
  const next = VIEWS.includes(want) ? want : 'overview';
  if (next === view) return;
  view = next;
  for (const v of VIEWS) $(`#view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll('.tabs a')) {
    if (a.dataset.view === view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${{ overview: 'Overview', config: 'Configuration', events: 'Events' }[view]} · Switchyard`;
  if (view === 'config') showConfig();
  if (view === 'events') renderEventLog();
  if (VIEWS.includes(want)) $('#main').focus({ preventScroll: true });
}

window.addEventListener('hashchange', route);

// ---- live wiring ------------------------------------------------------------------------------

const CONN_TEXT = { connecting: 'Connecting…', live: 'Live', polling: 'Polling', offline: 'Offline' };

let wasStale = false;

live.on('conn', (state) => {
  const el = $('#conn');
  el.dataset.state = state;
  setText($('.conn-text', el), CONN_TEXT[state] || state);
  if (live.stale === wasStale) return;
  wasStale = live.stale;
  showStale();
  // Redrawn at once, not at the next sample (which is what is missing): health turns unknown
  // now, and back when Switchyard answers again.
  if (live.snapshot) renderLive(live.snapshot);
  // It may have been restarted meanwhile: a new uptime, version, configuration and cluster.
  if (!live.stale) { loadServer(); loadConfig(); loadCluster(); }
});

/**
 * While Switchyard does not answer, the page must not look live: a banner says since when the
 * numbers are old, and `is-stale` greys them out (style.css).
 */
function showStale() {
  const banner = $('#stale-banner');
  document.body.classList.toggle('is-stale', live.stale);
  if (!live.stale) {
    banner.hidden = true;
    return;
  }
  const since = live.lastAnswer
    ? `Last answer at ${fmt.clock(live.lastAnswer / 1000)}: the numbers below are from then, and health is unknown.`
    : 'Nothing could be loaded yet.';
  fill(banner,
    h('div', {},
      h('strong', {}, 'Switchyard is not answering.'), ' ', since,
      h('span', { class: 'muted' }, ' Retrying every second…')),
    h('button', { class: 'btn btn-small', type: 'button', onclick: () => retry() }, 'Retry now'));
  banner.hidden = false; // filled first, so the alert is read with its text
}

function renderLive(snapshot) {
  renderStats(snapshot, { version: server.version, uptime: server.uptime + (performance.now() - server.at) / 1000 });
}

live.on('stats', (snapshot) => {
  renderLive(snapshot);
  if (configVersion !== null && snapshot.config_version !== configVersion) onConfigVersion(snapshot.config_version);
});

live.on('event', (ev) => {
  renderRecentEvents();
  if (view === 'events') renderEventLog();
  if (ev && ev.kind === 'config') onConfigVersion(null);
});

let configTimer = 0;
function onConfigVersion(version) {
  // Events and stats both announce a change; coalesce them into one reload.
  clearTimeout(configTimer);
  configTimer = setTimeout(async () => {
    await loadConfig();
    configChanged(configVersion);
  }, 100);
}

async function loadConfig() {
  try {
    const res = await api.config();
    const tag = res.headers.get('ETag');
    const m = tag && /(\d+)/.exec(tag);
    configVersion = m ? Number(m[1]) : (live.snapshot ? live.snapshot.config_version : null);
    renderConfig(res.data);
  } catch (e) {
    fill($('#listeners'), h('p', { class: 'field-error' }, e.message));
  }
}

async function loadServer() {
  try {
    const health = await api.health();
    server.version = health.version;
    server.uptime = health.uptime_s;
    server.at = performance.now();
    setText($('#server-meta'), `v${health.version}`);
  } catch { /* shown as offline by the stream */ }
}

async function loadCluster() {
  try {
    renderCluster(await api.cluster());
  } catch { /* not fatal: the panel stays hidden */ }
}

async function main() {
  route();
  await loadServer();
  await loadConfig();
  await start();
  renderRecentEvents();
  // Uptime ticks locally; re-sync occasionally. Cluster membership changes slowly.
  setInterval(loadServer, 60_000);
  await loadCluster();
  setInterval(loadCluster, 5_000);
  document.body.dataset.ready = 'true';
}

main().catch((e) => {
  console.error(e);
  fill($('#summary'), h('p', { class: 'field-error', role: 'alert' }, `Could not start: ${e.message}`));
});

