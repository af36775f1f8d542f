// The overview: totals with charts, listeners and routes from the running configuration, one
// card per upstream (backends.js) and the latest events.

import { renderUpstreams } from './backends.js';
import { createChart } from './chart.js';
import { $, h, fill, setText } from './dom.js';
import { eventItem } from './events.js';
import * as fmt from './format.js';
import { live } from './live.js';

let summary = null;

function createSummary() {
  const card = (label, chart) => {
    const value = h('div', { class: 'stat-value' });
    const note = h('div', { class: 'stat-note muted small' });
    const el = h('div', { class: 'stat panel' }, h('div', { class: 'stat-label' }, label), value, note, chart ? chart.el : null);
    return { el, value, note, chart };
  };
  const rps = card('Requests / s', createChart({ width: 240, height: 44, kind: 'rps', floor: 1, format: fmt.rate, label: 'Requests per second', grid: true }));
  const err = card('Error rate', createChart({ width: 240, height: 44, kind: 'err', floor: 0.05, format: fmt.percent, label: 'Error rate', grid: true }));
  const backends = card('Backends available');
  backends.bar = h('div', { class: 'health-bar', 'aria-hidden': 'true' });
  backends.legend = h('div', { class: 'legend' });
  backends.el.append(backends.bar, backends.legend);
  const config = card('Configuration');
  config.el.append(h('a', { class: 'stat-link', href: '#/config' }, 'Edit configuration →'));
  fill($('#summary'), rps.el, err.el, backends.el, config.el);
  return { rps, err, backends, config };
}

export function renderStats(snapshot, server) {
  summary = summary || createSummary();
  const t = performance.now() / 1000;
  const totals = live.totals(null);
  const r = live.recent(totals);
  setText(summary.rps.value, fmt.rate(r.rps));
  setText(summary.rps.note, `${fmt.count(totals.length ? totals[totals.length - 1].active : 0)} in flight`);
  summary.rps.chart.update(totals.map((s) => ({ t: s.t, v: s.rps })), t, live.chartWindow());
  setText(summary.err.value, fmt.percent(r.err));
  setText(summary.err.note, 'failures / requests, last 5 s');
  summary.err.value.classList.toggle('bad', r.err >= 0.05);
  summary.err.chart.update(totals.map((s) => ({ t: s.t, v: s.err })), t, live.chartWindow());

  const all = (snapshot.upstreams || []).flatMap((u) => u.backends || []);
  const up = all.filter((b) => b.health !== 'unhealthy' && !b.ejected && b.circuit !== 'open').length;
  setText(summary.backends.value, `${up} / ${all.length}`);
  summary.backends.value.className = `stat-value ${up === all.length ? 'ok' : up === 0 ? 'bad' : 'warn'}`;
  const n = (snapshot.upstreams || []).length;
  const open = all.filter((b) => b.circuit !== 'closed').length;
  setText(summary.backends.note,
    [`${n} upstream${n === 1 ? '' : 's'}`, open ? `${open} circuit${open === 1 ? '' : 's'} not closed` : '']
      .filter(Boolean).join(' · '));
  renderHealthBar(summary.backends, all);
  setText(summary.config.value, `v${snapshot.config_version}`);
  setText(summary.config.note, server ? `Switchyard ${server.version} · up ${fmt.duration(server.uptime)}` : '');

  renderUpstreams($('#upstreams'), snapshot);
}

/** One segment per state, proportional to how many backends are in it. */
function renderHealthBar(card, all) {
  const down = (b) => b.health === 'unhealthy' || b.ejected || b.circuit === 'open';
  const groups = [
    ['ok', 'healthy', all.filter((b) => !down(b) && !b.draining && b.health === 'healthy').length],
    ['unknown', 'unchecked', all.filter((b) => !down(b) && !b.draining && b.health !== 'healthy').length],
    ['warn', 'draining', all.filter((b) => !down(b) && b.draining).length],
    ['bad', 'down', all.filter(down).length],
  ].filter((g) => g[2] > 0);
  const key = groups.map((g) => g.join(':')).join(',');
  if (card.bar.dataset.key === key) return;
  card.bar.dataset.key = key;
  fill(card.bar, groups.map(([cls, , count]) => {
    const seg = h('span', { class: `seg-${cls}` });
    seg.style.flexGrow = String(count);
    return seg;
  }));
  fill(card.legend, groups.map(([cls, label, count]) => h('span', {}, h('i', { class: `seg-${cls}` }), `${count} ${label}`)));
}

/** Listeners and routes come from the configuration, not the live stats. */
export function renderConfig(cfg) {
  const listeners = cfg.listeners || [];
  fill($('#listeners'), listeners.length
    ? h('ul', { class: 'plain-list' }, listeners.map((l, i) => h('li', {},
      h('span', { class: 'strong' }, l.name || `listener ${i + 1}`),
      h('code', {}, l.address || l.bind),
      h('span', { class: 'badge badge-neutral' }, listenerKind(l)),
      l.tls && l.tls.client_ca ? h('span', { class: 'badge badge-neutral' }, 'mTLS') : null,
      ...(l.mode === 'tcp' ? tcpTargets(l) : []))))
    : h('p', { class: 'muted' }, 'No listeners.'));
  if (listeners.length && listeners.every((l) => l.mode === 'tcp')) {
    fill($('#routes'), h('p', { class: 'muted' }, 'Only TCP listeners: routes are not used.'));
    return;
  }

  const routes = cfg.routes || [];
  const upstreams = Object.keys(cfg.upstreams || {});
  let body;
  if (routes.length) {
    body = h('ul', { class: 'plain-list' }, routes.map((r) => h('li', {},
      h('span', {}, (r.hosts && r.hosts.length ? r.hosts.join(', ') : 'any host')),
      h('code', { title: r.path ? 'this path exactly' : 'paths starting with this' }, r.path ? `= ${r.path}` : (r.path_prefix || '/')),
      ...routeConditions(r),
      h('span', { class: 'arrow', 'aria-label': 'to' }, '→'),
      ...routeTargets(r))));
  } else if (upstreams.length === 1) {
    body = h('ul', { class: 'plain-list' }, h('li', {},
      h('span', {}, 'all traffic'), h('span', { class: 'arrow', 'aria-label': 'to' }, '→'),
      h('span', { class: 'strong' }, upstreams[0]),
      h('span', { class: 'muted small' }, '(no routes, one upstream)')));
  } else {
    body = h('p', { class: 'muted' }, 'No routes: requests get 404.');
  }
  fill($('#routes'), body);
}

function listenerKind(l) {
  if (l.mode === 'tcp') return l.tls ? 'TCP + TLS' : 'TCP';
  return l.tls ? 'HTTPS' : 'HTTP';
}

// Where a tcp listener's connections go: by TLS server name first, then its upstream.
function tcpTargets(l) {
  const out = [];
  for (const r of l.sni_routes || []) {
    out.push(h('code', { class: 'small', title: 'TLS server name' }, (r.hosts || []).join(', ')),
      h('span', { class: 'arrow', 'aria-label': 'to' }, '→'), upstreamLink(r.upstream));
  }
  if (l.upstream) {
    if (out.length) out.push(h('span', { class: 'muted small' }, 'other names'));
    out.push(h('span', { class: 'arrow', 'aria-label': 'to' }, '→'), upstreamLink(l.upstream));
  }
  return out;
}

// What a route asks of a request besides host and path: methods, headers.
function routeConditions(r) {
  const out = [];
  if ((r.methods || []).length) out.push(h('span', { class: 'badge badge-neutral' }, r.methods.join(' ')));
  for (const [name, value] of Object.entries(r.match_headers || {})) {
    out.push(h('code', { class: 'small' }, value === '*' ? name : `${name}: ${value}`));
  }
  return out;
}

// A route's upstream, or its split: each side with its share of the weights; then its mirror
// and whether it compresses. An auth upstream, asked first, comes before them all.
function routeTargets(r) {
  const out = [];
  if (r.auth) {
    out.push(h('span', { class: 'muted small', title: `each request is first asked about at ${r.auth.path}` }, 'authorized by'),
      upstreamLink(r.auth.upstream), h('span', { class: 'muted small' }, '→'));
  }
  out.push(...routeServes(r));
  const m = r.mirror;
  if (m) {
    out.push(h('span', { class: 'muted small' }, 'mirrored to'), upstreamLink(m.upstream),
      h('span', { class: 'badge badge-neutral' }, `${+(m.percent ?? 100).toFixed(1)}%`));
  }
  if (r.compress) out.push(h('span', { class: 'badge badge-neutral', title: 'responses gzip-compressed for clients that accept it' }, 'gzip'));
  if (r.cors) out.push(h('span', { class: 'badge badge-neutral', title: `browsers may call it from ${(r.cors.allow_origins || []).join(', ')}` }, 'CORS'));
  return out;
}

const upstreamLink = (name) => h('a', { href: `#upstream-${name.replace(/[^a-zA-Z0-9_-]/g, '-')}`, class: 'strong' }, name);

function routeServes(r) {
  if (r.respond) {
    const { status, location } = r.respond;
    return [h('span', { class: 'badge badge-neutral' }, `responds ${status}`),
      location ? h('code', { class: 'small' }, location) : null];
  }
  const link = upstreamLink;
  const split = r.split || [];
  if (!split.length) return [link(r.upstream)];
  const total = split.reduce((n, a) => n + a.weight, 0) || 1;
  const out = [];
  split.forEach((a, i) => {
    if (i) out.push(h('span', { class: 'muted' }, '·'));
    out.push(link(a.upstream), h('span', { class: 'badge badge-neutral' }, `${+(100 * a.weight / total).toFixed(1)}%`));
  });
  out.push(h('span', { class: 'muted small' }, `split by ${r.split_by || 'request'}`));
  return out;
}

export function renderRecentEvents() {
  const recent = live.events.slice(-6).reverse();
  fill($('#recent-events'), recent.length
    ? recent.map((e) => eventItem(e))
    : h('li', { class: 'muted empty' }, 'No events yet.'));
}

/**
 * Cluster mode: etcd reachability and every registered instance with the shared configuration
 * revision it runs (equal everywhere once converged). Hidden when cluster mode is off.
 */
export function renderCluster(c) {
  const panel = $('#cluster-panel');
  panel.hidden = !c || !c.enabled;
  if (panel.hidden) return;
  const ok = c.etcd === 'connected' || c.etcd === 'ok';
  const head = h('p', {},
    h('span', { class: `badge ${ok ? 'badge-ok' : 'badge-bad'}` }, `etcd ${c.etcd || 'unknown'}`), ' ',
    h('code', {}, (c.endpoints || []).join(', ')), ' ',
    h('span', { class: 'muted small' }, `prefix ${c.prefix || ''} · shared revision ${c.config_revision ?? '—'}`),
    c.rejected ? h('span', { class: 'badge badge-bad' }, `rejected: ${c.rejected}`) : null);
  const rows = (c.instances || []).map((i) => h('li', {},
    h('span', { class: 'strong' }, i.id === c.id ? `${i.id} (this)` : i.id),
    h('code', {}, i.admin || '—'),
    h('span', { class: `badge ${i.config_revision === c.config_revision ? 'badge-ok' : 'badge-warn'}` }, `rev ${i.config_revision}`),
    h('span', { class: 'muted small' }, `v${i.config_version} · seen ${fmt.duration(Math.max(0, Date.now() / 1000 - i.last_seen))} ago`)));
  fill($('#cluster'), head, rows.length ? h('ul', { class: 'plain-list' }, rows) : h('p', { class: 'muted' }, 'No instances registered.'));
}
