// The configuration view: the running configuration as TOML in an editor, validated as you type
// by the server's dry run (POST /api/v1/config/validate), with the server's list of changes and a
// text diff; apply with If-Match so an edit never silently overwrites someone else's; the version
// history with rollback.

import { api, ApiError } from './api.js';
import { diffLines, hunks } from './diff.js';
import { $, h, fill, setText, openDialog, toast } from './dom.js';
import * as fmt from './format.js';

const DEBOUNCE_MS = 350;

const st = {
  base: null,       // { text, version } as loaded from the server
  result: null,     // the last validation: { state: 'same'|'checking'|'valid'|'invalid'|'error', ... }
  timer: 0,
  inflight: null,   // AbortController of the running validation
  seq: 0,
  newer: null,      // a version applied elsewhere while the editor had edits
  loading: null,
};

let els = null;

function init() {
  els = {
    text: $('#config-text'),
    gutter: $('#config-gutter'),
    apply: $('#config-apply'),
    revert: $('#config-revert'),
    validation: $('#validation'),
    changes: $('#config-changes'),
    diff: $('#config-diff'),
    diffDetails: $('#diff-details'),
    versions: $('#versions'),
    banner: $('#config-banner'),
    baseLabel: $('#editor-base'),
  };
  els.text.addEventListener('input', onInput);
  els.text.addEventListener('scroll', () => { els.gutter.scrollTop = els.text.scrollTop; });
  els.text.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 's') { e.preventDefault(); if (!els.apply.disabled) apply(); }
  });
  els.apply.addEventListener('click', apply);
  els.revert.addEventListener('click', revert);
}

const dirty = () => st.base && els.text.value !== st.base.text;

/** Shows the view: loads the configuration unless the editor holds edits. */
export async function showConfig() {
  if (!els) init();
  if (!st.base || !dirty()) await load();
  await loadVersions();
}

/** A configuration change happened (event or newer version seen in the stats). */
export async function configChanged(version) {
  if (!els || !st.base) return;
  if (version != null && version === st.base.version) return;
  if (!dirty()) {
    await load();
  } else if (version !== st.newer) {
    st.newer = version;
    showBanner();
  }
  await loadVersions();
}

async function load() {
  if (st.loading) return st.loading;
  st.loading = (async () => {
    try {
      const res = await api.configToml();
      const version = etagVersion(res.headers) ?? (await api.health()).config_version;
      st.base = { text: String(res.data), version };
      st.newer = null;
      els.text.value = st.base.text;
      els.banner.hidden = true;
      setText(els.baseLabel, `version ${version}`);
      validateSoon(0);
    } catch (e) {
      showError(e);
    } finally {
      st.loading = null;
    }
  })();
  return st.loading;
}

function etagVersion(headers) {
  const tag = headers.get('ETag');
  const m = tag && /"?(\d+)"?/.exec(tag);
  return m ? Number(m[1]) : null;
}

function onInput() {
  renderGutter();
  renderDiff();
  updateButtons();
  validateSoon(DEBOUNCE_MS);
}

function validateSoon(delay) {
  clearTimeout(st.timer);
  if (st.inflight) st.inflight.abort();
  renderGutter();
  renderDiff();
  if (!dirty()) {
    setResult({ state: 'same' });
    return;
  }
  setResult({ state: 'checking', previous: st.result });
  st.timer = setTimeout(validate, delay);
}

async function validate() {
  const seq = ++st.seq;
  const ctl = new AbortController();
  st.inflight = ctl;
  const text = els.text.value;
  try {
    const res = await api.validate(text, ctl.signal);
    if (seq !== st.seq) return;
    const d = res.data || {};
    setResult(d.valid === false ? invalid(d) : { state: 'valid', changes: d.changes || [], text });
  } catch (e) {
    if (e.name === 'AbortError' || seq !== st.seq) return;
    if (e instanceof ApiError && (e.status === 422 || e.status === 400)) {
      setResult({ ...invalid(e.data && typeof e.data === 'object' ? e.data : { error: e.message }), text });
    } else {
      setResult({ state: 'error', message: e.message });
    }
  } finally {
    if (st.inflight === ctl) st.inflight = null;
  }
}

function invalid(d) {
  const problems = Array.isArray(d.problems) && d.problems.length
    ? d.problems
    : [{ path: d.path || '', message: d.error || 'invalid configuration' }];
  return { state: 'invalid', problems };
}

function setResult(r) {
  st.result = r;
  const v = els.validation;
  v.dataset.state = r.state;
  els.text.toggleAttribute('aria-invalid', r.state === 'invalid');
  if (r.state === 'same') {
    fill(v, h('p', { class: 'status-line' }, h('span', { class: 'status-icon ok', 'aria-hidden': 'true' }, '✓'),
      'No unsaved changes. This is the running configuration.'));
    fill(els.changes, h('li', { class: 'muted' }, 'None.'));
  } else if (r.state === 'checking') {
    fill(v, h('p', { class: 'status-line muted' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Checking…'));
  } else if (r.state === 'valid') {
    fill(v, h('p', { class: 'status-line' }, h('span', { class: 'status-icon ok', 'aria-hidden': 'true' }, '✓'),
      r.changes.length ? `Valid. ${r.changes.length} change${r.changes.length === 1 ? '' : 's'} ready to apply.` : 'Valid, but nothing would change (comments or formatting only).'));
    fill(els.changes, r.changes.length ? r.changes.map((c) => h('li', {}, c)) : h('li', { class: 'muted' }, 'None.'));
  } else if (r.state === 'invalid') {
    fill(v,
      h('p', { class: 'status-line bad' }, h('span', { class: 'status-icon bad', 'aria-hidden': 'true' }, '!'),
        `Not valid: ${r.problems.length} problem${r.problems.length === 1 ? '' : 's'}. Nothing will change until they are fixed.`),
      h('ul', { class: 'problems', role: 'alert' }, r.problems.map((p) => h('li', {},
        p.line ? h('span', { class: 'muted' }, `line ${p.line}: `) : null,
        p.path ? h('code', {}, p.path) : null, p.path ? ' ' : null, h('span', {}, p.message)))));
    fill(els.changes, h('li', { class: 'muted' }, 'Fix the problems to see what would change.'));
  } else {
    fill(v, h('p', { class: 'status-line bad', role: 'alert' }, 'Could not validate: ', r.message));
  }
  renderGutter();
  updateButtons();
}

function updateButtons() {
  const r = st.result;
  const ready = dirty() && r && r.state === 'valid' && r.text === els.text.value && r.changes.length > 0;
  els.apply.disabled = !ready;
  els.revert.disabled = !dirty();
}

/** The lines the problems point at: their `line`, or a "line N" in the message. */
function problemLines() {
  const r = st.result;
  if (!r || r.state !== 'invalid') return new Set();
  return new Set(r.problems.map((p) => {
    if (p.line) return p.line;
    const m = /line (\d+)/i.exec(p.message);
    return m ? Number(m[1]) : 0;
  }).filter(Boolean));
}

function renderGutter() {
  const n = els.text.value.split('\n').length;
  const bad = problemLines();
  const key = `${n}:${[...bad].join(',')}`;
  if (els.gutter.dataset.key !== key) {
    els.gutter.dataset.key = key;
    fill(els.gutter, Array.from({ length: n }, (_, i) => h('span', { class: bad.has(i + 1) ? 'bad' : null }, `${i + 1}\n`)));
  }
  els.gutter.scrollTop = els.text.scrollTop;
}

function renderDiff() {
  if (!st.base || !dirty()) {
    fill(els.diff, h('span', { class: 'muted' }, 'No differences.'));
    return;
  }
  const lines = hunks(diffLines(st.base.text, els.text.value));
  fill(els.diff, lines.map((l) => h('span', { class: `d d-${l.op === '@' ? 'gap' : l.op === '+' ? 'add' : l.op === '-' ? 'del' : 'same'}` },
    `${l.op === '@' ? ' ' : l.op} ${l.text}\n`)));
}

function showBanner() {
  fill(els.banner,
    h('span', {}, `Version ${st.newer ?? 'newer'} was applied elsewhere while you were editing. Applying your edits will be refused until you load it.`),
    h('button', { class: 'btn btn-small', type: 'button', onclick: async () => { await load(); await loadVersions(); } }, 'Load latest (discard edits)'));
  els.banner.hidden = false;
}

function showError(e) {
  fill(els.validation, h('p', { class: 'status-line bad', role: 'alert' }, e.message));
}

async function revert() {
  const ok = await openDialog({
    title: 'Discard edits',
    body: 'Discard your edits and go back to the running configuration?',
    confirm: 'Discard',
    danger: true,
  });
  if (ok) {
    els.text.value = st.base.text;
    validateSoon(0);
    els.text.focus();
  }
}

async function apply() {
  const r = st.result;
  if (!r || r.state !== 'valid') return;
  const text = els.text.value;
  const res = await openDialog({
    title: 'Apply configuration',
    body: [
      h('p', {}, `Apply these changes to the running configuration (version ${st.base.version})?`),
      h('ul', { class: 'changes' }, r.changes.map((c) => h('li', {}, c))),
      h('p', { class: 'muted small' }, 'The change is validated again, swapped in atomically and written to the configuration file.'),
    ],
    confirm: 'Apply',
    run: async () => {
      try {
        return await api.applyConfig(text, st.base.version);
      } catch (e) {
        if (e instanceof ApiError && e.status === 412) {
          throw new Error('The configuration changed meanwhile. Load the latest version, then make your edit again.');
        }
        throw e;
      }
    },
  });
  if (!res) return;
  toast(`Applied configuration version ${res.data.config_version}`, 'ok',
    (res.data.changes || []).slice(0, 4).join('; ') || undefined);
  await load();
  await loadVersions();
}

async function loadVersions() {
  let data;
  try {
    data = await api.versions();
  } catch (e) {
    fill(els.versions, h('p', { class: 'field-error' }, e.message));
    return;
  }
  const versions = (data.versions || []).slice().sort((a, b) => b.version - a.version);
  fill(els.versions, h('ol', { class: 'versions' }, versions.map((v) => h('li', { 'data-version': v.version },
    h('span', { class: 'v-num strong' }, `v${v.version}`),
    h('span', { class: 'v-meta' },
      h('span', { class: 'badge badge-neutral' }, v.source || 'unknown'),
      h('time', { datetime: fmt.iso(v.time), title: fmt.iso(v.time) }, `${fmt.clock(v.time)} · ${fmt.ago(v.time)}`)),
    v.version === data.current
      ? h('span', { class: 'badge badge-ok' }, 'Running')
      : h('button', { class: 'btn btn-small', type: 'button', 'aria-label': `Roll back to version ${v.version}`, onclick: () => rollback(v.version) }, 'Roll back')))));
}

async function rollback(version) {
  const res = await openDialog({
    title: `Roll back to version ${version}`,
    body: [h('p', {}, `Make version ${version} the running configuration again?`),
      h('p', { class: 'muted small' }, 'This is applied as a new version, so it can be undone the same way. Live backend state (health, counters) is kept.')],
    confirm: 'Roll back',
    run: () => api.rollback(version),
  });
  if (!res) return;
  toast(`Rolled back to version ${version}`, 'ok', `Now running version ${res.data.config_version}`);
  if (dirty()) {
    st.newer = res.data.config_version;
    showBanner();
  } else {
    await load();
  }
  await loadVersions();
}
