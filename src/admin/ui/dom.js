// Small DOM helpers: element building without innerHTML (so backend addresses and event text
// can never become markup), the shared modal dialog, and toasts.

/** h('button', { class: 'btn', onclick: f }, 'Label', child) */
export function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v == null) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Sets text only when it changed, so screen readers and selections are not disturbed. */
export function setText(el, text) {
  const t = String(text);
  if (el.textContent !== t) el.textContent = t;
}

// ---- the modal dialog -------------------------------------------------------------------------

/**
 * Opens the shared modal dialog. `run` is called on confirm; if it throws, its message (and the
 * API's field problems) is shown inside the dialog and the dialog stays open. Resolves to run's
 * result, or undefined when cancelled.
 *
 * options: { title, body: Node|string|[Node], confirm: 'Remove', danger: bool, run: async () => x,
 *            focus: selector of the element to focus first }
 */
export function openDialog({ title, body, confirm = 'Confirm', danger = false, run, focus }) {
  const dialog = $('#dialog');
  const form = $('#dialog-form');
  const ok = $('#dialog-ok');
  const cancel = $('#dialog-cancel');
  const error = $('#dialog-error');
  fill($('#dialog-title'), title);
  fill($('#dialog-body'), ...(Array.isArray(body) ? body : [typeof body === 'string' ? h('p', {}, body) : body]));
  ok.textContent = confirm;
  ok.className = danger ? 'btn btn-danger' : 'btn btn-primary';
  ok.disabled = false;
  error.hidden = true;
  const opener = document.activeElement;

  return new Promise((resolve) => {
    let busy = false;
    const finish = (value) => {
      form.removeEventListener('submit', onSubmit);
      cancel.removeEventListener('click', onCancel);
      dialog.removeEventListener('cancel', onEscape);
      dialog.close();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      resolve(value);
    };
    const onCancel = () => { if (!busy) finish(undefined); };
    const onEscape = (e) => { e.preventDefault(); onCancel(); };
    const onSubmit = async (e) => {
      e.preventDefault();
      if (busy) return;
      busy = true;
      ok.disabled = true;
      error.hidden = true;
      try {
        const value = run ? await run() : true;
        busy = false;
        finish(value === undefined ? true : value);
      } catch (err) {
        busy = false;
        ok.disabled = false;
        showProblems(error, err);
      }
    };
    form.addEventListener('submit', onSubmit);
    cancel.addEventListener('click', onCancel);
    dialog.addEventListener('cancel', onEscape);
    dialog.showModal();
    const first = (focus && $(focus, dialog)) || (danger ? cancel : ok);
    first.focus();
  });
}

/** Shows an error (ApiError or Error) in `el`: the message, then each field problem. */
export function showProblems(el, err) {
  const problems = err && err.problems ? err.problems : [{ path: '', message: String(err && err.message || err) }];
  fill(el, ...problems.map((p, i) => [
    i ? h('br') : null,
    p.path ? h('code', {}, p.path) : null,
    p.path ? ': ' : null,
    p.message,
  ]));
  el.hidden = false;
}

// ---- toasts -----------------------------------------------------------------------------------

/** A short notice in the corner; kind is 'ok' | 'error' | 'info'. */
export function toast(message, kind = 'ok', detail) {
  const t = h('div', { class: `toast toast-${kind}` },
    h('strong', {}, message),
    detail ? h('div', { class: 'small' }, detail) : null);
  $('#toasts').append(t);
  setTimeout(() => t.classList.add('leaving'), kind === 'error' ? 8000 : 4500);
  setTimeout(() => t.remove(), kind === 'error' ? 8400 : 4900);
}
