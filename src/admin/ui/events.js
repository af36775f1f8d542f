// The event log: history plus live events from the stream, filtered by kind and text.

import { $, h, fill, setText } from './dom.js';
import * as fmt from './format.js';
import { live } from './live.js';

const KIND_TEXT = {
  health: 'Health',
  circuit: 'Circuit',
  ejection: 'Ejection',
  config: 'Config',
  reload_failed: 'Reload failed',
  discovery: 'Discovery',
  cluster: 'Cluster',
};

function tone(e) {
  if (e.kind === 'reload_failed' || e.kind === 'ejection') return 'bad';
  if (e.kind === 'discovery' || e.kind === 'cluster') return /fail|unreachable|rejected|not a |invalid/.test(e.detail) ? 'warn' : 'info';
  if (e.kind === 'health') return /-> ?unhealthy/.test(e.detail) ? 'bad' : /-> ?healthy/.test(e.detail) ? 'ok' : 'neutral';
  if (e.kind === 'circuit') return /open$/.test(e.detail) && !/half/.test(e.detail) ? 'bad' : /half/.test(e.detail) ? 'warn' : 'ok';
  return 'info';
}

export function eventItem(e) {
  return h('li', { class: `event tone-${tone(e)}`, 'data-kind': e.kind },
    h('time', { datetime: fmt.iso(e.time), title: fmt.iso(e.time) }, fmt.clock(e.time)),
    h('span', { class: `badge kind kind-${e.kind}` }, KIND_TEXT[e.kind] || e.kind),
    h('span', { class: 'where' },
      e.upstream ? h('span', { class: 'strong' }, e.upstream) : null,
      e.backend ? h('code', {}, e.backend) : null),
    h('span', { class: 'detail' }, String(e.detail).replaceAll('->', '→')));
}

let wired = false;

export function renderEventLog() {
  if (!wired) {
    wired = true;
    $('#event-kind').addEventListener('change', renderEventLog);
    $('#event-search').addEventListener('input', renderEventLog);
  }
  const kind = $('#event-kind').value;
  const q = $('#event-search').value.trim().toLowerCase();
  const shown = live.events.filter((e) => (!kind || e.kind === kind) && (!q
    || [e.kind, e.upstream, e.backend, e.detail].some((s) => s && String(s).toLowerCase().includes(q))));
  fill($('#event-log'), shown.length
    ? shown.slice().reverse().map(eventItem)
    : h('li', { class: 'muted empty' }, live.events.length ? 'No events match.' : 'No events yet.'));
  setText($('#event-count'), `${shown.length} of ${live.events.length}`);
}
