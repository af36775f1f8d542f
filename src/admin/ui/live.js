// Live state: the /api/v1/events stream (with a polling fallback), the latest upstream snapshot,
// per-backend time series derived from counter deltas, and the event history.
//
// The server sends a `stats` event every second carrying the /api/v1/upstreams JSON; req/s and
// error rate are the deltas of requests_total / failures_total between samples, divided by the
// time between them as measured here (so a late sample is not counted as a burst).
//
// When Switchyard stops answering (the stream breaks and a poll fails), the connection state is
// 'offline' and stays so until an answer arrives again: `live.stale` then tells the views that
// what they show is the last known state, not the current one.

import { api, getToken, login, ApiError } from './api.js';

export const WINDOW = 300; // seconds of history kept for the charts
const MAX_EVENTS = 500;
const EVENT_KINDS = ['health', 'circuit', 'ejection', 'config', 'reload_failed', 'discovery', 'cluster'];

const listeners = { stats: new Set(), event: new Set(), conn: new Set() };

export const live = {
  /** The latest /api/v1/upstreams answer. */
  snapshot: null,
  /** 'connecting' | 'live' | 'polling' | 'offline' */
  conn: 'connecting',
  /** Whether the snapshot shown is old news: Switchyard is not answering. */
  get stale() { return this.conn === 'offline'; },
  /** When the last answer arrived (Date.now()), or 0. */
  lastAnswer: 0,
  events: [],
  on(kind, fn) { listeners[kind].add(fn); return () => listeners[kind].delete(fn); },
  /** Samples of one backend: [{ t, req, fail, rps, err, lat, active }] */
  series(upstream, address) { return backendSeries.get(key(upstream, address)) || []; },
  /** Samples summed over an upstream (or every upstream with name null). */
  totals(upstream) { return totalSeries.get(upstream ?? '') || []; },
  /** The charts' time span: grows with the data from one minute up to WINDOW. */
  chartWindow() { return Math.min(WINDOW, Math.max(60, now() - startedAt)); },
  /** req/s and error rate over the last `seconds`, for steadier numbers than one sample. */
  recent(samples, seconds = 5) { return windowed(samples, seconds); },
  /** Ask for fresh state now (after an action) instead of waiting for the next sample. */
  async refresh() {
    try { ingest(await api.upstreams()); } catch { /* the stream will catch up */ }
  },
};

const backendSeries = new Map();
const totalSeries = new Map();
const key = (u, a) => `${u}\u0000${a}`;
const now = () => performance.now() / 1000;
const startedAt = now();

function emit(kind, value) {
  for (const fn of listeners[kind]) {
    try { fn(value); } catch (e) { console.warn('listener failed', e); }
  }
}

function setConn(state) {
  if (live.conn !== state) {
    live.conn = state;
    emit('conn', state);
  }
}

let lastSample = 0;

function ingest(snapshot) {
  const t = now();
  live.lastAnswer = Date.now();
  // Two samples closer than 200ms (a refresh racing the stream) would make a noisy rate.
  if (t - lastSample < 0.2 && live.snapshot) {
    live.snapshot = snapshot;
    emit('stats', snapshot);
    return;
  }
  lastSample = t;
  live.snapshot = snapshot;
  const seen = new Set();
  const totals = new Map([['', { req: 0, fail: 0, active: 0, latSum: 0, latN: 0 }]]);
  for (const u of snapshot.upstreams || []) {
    const tot = { req: 0, fail: 0, active: 0, latSum: 0, latN: 0 };
    totals.set(u.name, tot);
    for (const b of u.backends || []) {
      const k = key(u.name, b.address);
      seen.add(k);
      const series = backendSeries.get(k) || [];
      push(series, t, b.requests_total, b.failures_total, b.latency_ewma_ms, b.active_requests);
      backendSeries.set(k, series);
      for (const agg of [tot, totals.get('')]) {
        agg.req += b.requests_total;
        agg.fail += b.failures_total;
        agg.active += b.active_requests;
        if (b.latency_ewma_ms > 0) { agg.latSum += b.latency_ewma_ms; agg.latN += 1; }
      }
    }
  }
  for (const k of backendSeries.keys()) if (!seen.has(k)) backendSeries.delete(k);
  for (const [name, agg] of totals) {
    const series = totalSeries.get(name) || [];
    push(series, t, agg.req, agg.fail, agg.latN ? agg.latSum / agg.latN : 0, agg.active);
    totalSeries.set(name, series);
  }
  for (const name of totalSeries.keys()) if (!totals.has(name)) totalSeries.delete(name);
  emit('stats', snapshot);
}

function push(series, t, req, fail, lat, active) {
  const prev = series[series.length - 1];
  // The first sample has nothing to compare with: no rate yet (NaN is left out of the charts).
  let rps = NaN;
  let err = NaN;
  if (prev) {
    const dt = Math.max(0.001, t - prev.t);
    // A counter that went down belongs to a backend that was removed and added again.
    const dreq = Math.max(0, req - prev.req);
    const dfail = Math.max(0, fail - prev.fail);
    rps = dreq / dt;
    err = dreq > 0 ? Math.min(1, dfail / dreq) : 0;
  }
  series.push({ t, req, fail, rps, err, lat, active });
  while (series.length && t - series[0].t > WINDOW + 5) series.shift();
}

function windowed(samples, seconds) {
  const last = samples[samples.length - 1];
  if (!last) return { rps: NaN, err: NaN };
  let first = last;
  for (let i = samples.length - 1; i >= 0 && last.t - samples[i].t <= seconds + 0.01; i--) first = samples[i];
  if (first === last) return { rps: last.rps, err: last.err };
  const dt = last.t - first.t;
  const dreq = Math.max(0, last.req - first.req);
  const dfail = Math.max(0, last.fail - first.fail);
  return { rps: dreq / dt, err: dreq > 0 ? Math.min(1, dfail / dreq) : 0 };
}

function addEvent(ev) {
  live.events.push(ev);
  if (live.events.length > MAX_EVENTS) live.events.splice(0, live.events.length - MAX_EVENTS);
  emit('event', ev);
}

// ---- the stream -------------------------------------------------------------------------------

let source = null;
let lastStats = 0;
let retryDelay = 1000;
let polling = false;

/** Loads the event history and the first snapshot, then keeps both current. */
export async function start() {
  try {
    const history = await api.eventHistory();
    if (Array.isArray(history)) {
      live.events = history.slice(-MAX_EVENTS);
      emit('event', null);
    }
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
  }
  await live.refresh();
  connect();
  // Watchdog: if the stream goes quiet (proxy buffering, server without SSE), poll instead.
  setInterval(() => {
    if (performance.now() - lastStats > 3500) poll();
  }, 1000);
}

function connect() {
  if (source) source.close();
  const token = getToken();
  const url = `/api/v1/events${token ? `?token=${queryToken(token)}` : ''}`;
  source = new EventSource(url);
  source.onopen = () => { retryDelay = 1000; };
  source.addEventListener('stats', (e) => {
    lastStats = performance.now();
    setConn('live');
    try { ingest(JSON.parse(e.data)); } catch (err) { console.warn('bad stats event', err); }
  });
  for (const kind of EVENT_KINDS) {
    source.addEventListener(kind, (e) => {
      try { addEvent(JSON.parse(e.data)); } catch (err) { console.warn('bad event', err); }
    });
  }
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) {
      // The browser reconnects by itself. Once offline, each failed attempt must not flip the
      // page back to 'connecting' (and the stale banner off and on): only an answer ends it.
      if (live.conn !== 'offline') setConn('connecting');
      return;
    }
    // Closed for good: an error status (401?) or the server went away. Ask, then reconnect.
    setConn('offline');
    setTimeout(async () => {
      try {
        await api.eventHistory(); // a 401 here brings up the login form and waits for it
      } catch { /* still down: try again later */ }
      retryDelay = Math.min(retryDelay * 2, 15000);
      connect();
    }, retryDelay);
  };
}

/**
 * The token as it goes into the query string. The server compares the raw query value, so a
 * token made of characters that are legal in a query as they are (letters, digits, base64's
 * + / =, and the like) is sent unencoded; anything else has to be percent-encoded.
 */
function queryToken(token) {
  return /^[A-Za-z0-9\-._~+/=!$'()*,;:@]*$/.test(token) ? token : encodeURIComponent(token);
}

/** Called after a new token was entered: the stream needs it in its URL. */
export function reconnect() { connect(); }

/** Asks Switchyard now rather than at the next watchdog tick (the offline banner's button). */
export function retry() { return poll(); }

async function poll() {
  if (polling) return;
  polling = true;
  try {
    ingest(await api.upstreams());
    if (performance.now() - lastStats > 3500) setConn('polling');
  } catch (e) {
    if (e instanceof ApiError && e.status === 0) setConn('offline');
  } finally {
    polling = false;
  }
}

export { login };
