// The admin API client: adds the bearer token, turns error answers into ApiError with the
// server's message and field path, and asks for a token (then retries) when the API says 401.

const TOKEN_KEY = 'switchyard.admin-token';

export class ApiError extends Error {
  /** status 0 means the server could not be reached. */
  constructor(status, data, message) {
    super(message);
    this.status = status;
    this.data = data;
  }
  /** [{path, message}] from a 422 answer, or one entry made of the main error. */
  get problems() {
    const d = this.data;
    if (d && Array.isArray(d.problems) && d.problems.length) return d.problems;
    return [{ path: (d && d.path) || '', message: this.message }];
  }
}

export function getToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lives until the page closes */ }
}

let askToken = async () => { throw new ApiError(401, null, 'unauthorized'); };
let pendingLogin = null;

/** `fn(wasRejected)` shows the login form and resolves once a token has been stored. */
export function onUnauthorized(fn) { askToken = fn; }

/** Resolves when a (new) token is set; concurrent 401s share one login prompt. */
export function login(rejected) {
  if (!pendingLogin) {
    pendingLogin = Promise.resolve(askToken(rejected)).finally(() => { pendingLogin = null; });
  }
  return pendingLogin;
}

/**
 * request('PUT', '/api/v1/config', { text, contentType, headers, signal }) or { json }.
 * Resolves to { status, data, headers } for 2xx; rejects with ApiError otherwise.
 */
export async function request(method, path, opts = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = new Headers(opts.headers || {});
    const token = getToken();
    if (token) headers.set('Authorization', `Bearer ${token}`);
    let body;
    if (opts.json !== undefined) {
      headers.set('Content-Type', 'application/json');
      body = JSON.stringify(opts.json);
    } else if (opts.text !== undefined) {
      headers.set('Content-Type', opts.contentType || 'text/plain');
      body = opts.text;
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, cache: 'no-store', signal: opts.signal });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, null, 'Cannot reach Switchyard. Is it running?');
    }
    const data = await parse(res);
    if (res.status === 401 && attempt < 5) {
      await login(Boolean(token));
      continue;
    }
    if (res.ok) return { status: res.status, data, headers: res.headers };
    throw new ApiError(res.status, data, messageOf(res, data));
  }
}

async function parse(res) {
  const type = res.headers.get('content-type') || '';
  const text = await res.text();
  if (type.includes('json')) {
    try { return JSON.parse(text); } catch { return text; }
  }
  return text;
}

function messageOf(res, data) {
  if (data && typeof data === 'object' && data.error) return String(data.error);
  if (typeof data === 'string' && data.trim()) return data.trim();
  if (res.status === 412) return 'The configuration changed meanwhile.';
  return `${res.status} ${res.statusText || 'error'}`;
}

export const api = {
  health: () => request('GET', '/health').then((r) => r.data),
  upstreams: () => request('GET', '/api/v1/upstreams').then((r) => r.data),
  config: () => request('GET', '/api/v1/config'),
  configToml: () => request('GET', '/api/v1/config?format=toml'),
  validate: (text, signal) =>
    request('POST', '/api/v1/config/validate', { text, contentType: 'application/toml', signal }),
  applyConfig: (text, version) =>
    request('PUT', '/api/v1/config', {
      text,
      contentType: 'application/toml',
      headers: version == null ? {} : { 'If-Match': `"${version}"` },
    }),
  versions: () => request('GET', '/api/v1/config/versions').then((r) => r.data),
  rollback: (version) => request('POST', '/api/v1/config/rollback', { json: { version } }),
  addBackend: (upstream, address, weight) =>
    request('POST', `/api/v1/upstreams/${enc(upstream)}/backends`, { json: { address, weight } }),
  patchBackend: (upstream, address, patch) =>
    request('PATCH', `/api/v1/upstreams/${enc(upstream)}/backends/${enc(address)}`, { json: patch }),
  removeBackend: (upstream, address) =>
    request('DELETE', `/api/v1/upstreams/${enc(upstream)}/backends/${enc(address)}`),
  eventHistory: () => request('GET', '/api/v1/events/history').then((r) => r.data),
  cluster: () => request('GET', '/api/v1/cluster').then((r) => r.data),
};

function enc(s) { return encodeURIComponent(s); }
