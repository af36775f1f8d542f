// The discovery line of an upstream card: where the upstream's backends come from (DNS, SRV,
// a file, etcd) and how that source is doing — its state, when it last answered, its last error
// and every entry it holds that is not a valid backend. Fed by the `discovery` object that
// /api/v1/upstreams carries for such an upstream, so it refreshes with every stats sample.

import { h, fill, setText } from './dom.js';
import * as fmt from './format.js';

const STATE_TEXT = { ok: 'In sync', degraded: 'Bad entries', failing: 'Failing', waiting: 'Waiting' };
const STATE_BADGE = { ok: 'badge-ok', degraded: 'badge-warn', failing: 'badge-bad', waiting: 'badge-neutral' };

export function createDiscovery() {
  const state = h('span', { class: 'badge' });
  const kind = h('span', { class: 'disc-kind' });
  const target = h('code', { class: 'disc-target' });
  const meta = h('span', { class: 'muted small' });
  const error = h('p', { class: 'disc-error', hidden: true });
  const problems = h('ul', { class: 'disc-problems', hidden: true, 'aria-label': 'Invalid entries' });
  const el = h('div', { class: 'up-discovery', 'data-field': 'discovery', hidden: true },
    h('div', { class: 'disc-line' },
      h('span', { class: 'disc-label' }, 'Discovery'), state, kind, target, meta),
    error,
    problems,
    // The API refuses (409) changes to a list the source owns; say so before anyone tries.
    h('p', { class: 'muted small disc-note' },
      'The source owns this list: add and remove backends there. Drain still applies here.'));
  return { el, state, kind, target, meta, error, problems, problemsKey: '' };
}

/** Shows `d` (a source status), or hides the line for an upstream without discovery. */
export function updateDiscovery(box, d) {
  box.el.hidden = !d;
  if (!d) return;
  box.el.dataset.state = d.state;
  setText(box.state, STATE_TEXT[d.state] || d.state);
  box.state.className = `badge ${STATE_BADGE[d.state] || 'badge-neutral'}`;
  // "file /etc/x.json", "dns web.internal:80", "etcd /prefix/": the kind, then what it reads.
  const [kind, ...rest] = String(d.source || '').split(' ');
  setText(box.kind, kind);
  setText(box.target, rest.join(' '));

  const parts = [];
  if (d.state === 'waiting') parts.push('no answer yet: the configured backends serve');
  else parts.push(`${d.backends} backend${d.backends === 1 ? '' : 's'}`);
  if (d.last_success) parts.push(`updated ${fmt.ago(d.last_success)}`);
  if (d.failing_since) parts.push(`failing since ${fmt.clock(d.failing_since)}`);
  setText(box.meta, parts.join(' · '));

  const problems = d.problems || [];
  box.error.hidden = !d.error;
  if (d.error) {
    // A file refused for its entries: those are listed below, each with its problem.
    const n = problems.length;
    setText(box.error, n
      ? `The last answer was refused for ${n} invalid entr${n === 1 ? 'y' : 'ies'}; the last known backends stay in service.`
      : `The last attempt failed: ${d.error}. The last known backends stay in service.`);
  }

  const key = JSON.stringify(problems);
  if (key !== box.problemsKey) {
    box.problemsKey = key;
    box.problems.hidden = !problems.length;
    fill(box.problems, problems.map((p) => h('li', {}, h('code', {}, p.key), ': ', p.error)));
  }
}
