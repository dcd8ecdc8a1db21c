// DOM helpers and formatting. Server text only ever reaches the page as
// text nodes or attribute values: nothing here parses HTML.

/**
 * Creates an element. `attrs` keys: `class`, `dataset` (object), `style`
 * (object, set through the CSSOM), `on<event>` (function listeners),
 * boolean attributes as true/false, everything else via setAttribute.
 * Children may be nodes, strings, numbers, arrays, or null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    } else if (key === 'dataset') {
      for (const [k, v] of Object.entries(value)) {
        if (v !== undefined && v !== null) el.dataset[k] = String(v);
      }
    } else if (key === 'style') {
      for (const [k, v] of Object.entries(value)) el.style.setProperty(k, v);
    } else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'value' && ('value' in el)) {
      el.value = value;
    } else if (key === 'checked' || key === 'selected' || key === 'disabled' || key === 'hidden' || key === 'required' || key === 'multiple') {
      el[key] = Boolean(value);
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false || child === true) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replaces all children of `el`. */
export function setChildren(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let idCounter = 0;
/** A unique id for label/aria wiring. */
export function uid(prefix = 'id') {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

// ---- formatting ---------------------------------------------------------

const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: '2-digit', day: '2-digit',
  hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
const numberFormat = new Intl.NumberFormat();

export function fmtNumber(n) {
  return n === null || n === undefined ? '—' : numberFormat.format(n);
}

export function fmtDateTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : dateTimeFormat.format(d);
}

export function fmtRelative(iso, now = Date.now()) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const seconds = Math.round((d.getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 45) return relativeFormat.format(seconds, 'second');
  if (abs < 2700) return relativeFormat.format(Math.round(seconds / 60), 'minute');
  if (abs < 64800) return relativeFormat.format(Math.round(seconds / 3600), 'hour');
  if (abs < 30 * 86400) return relativeFormat.format(Math.round(seconds / 86400), 'day');
  return dateTimeFormat.format(d);
}

/** Rewrites every relative <time> on the page (they age while shown). */
export function refreshRelativeTimes(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll('time[data-relative]')) {
    el.textContent = fmtRelative(el.getAttribute('datetime'), now);
  }
}

/** A <time> showing a relative time, with the absolute one as its title. */
export function timeEl(iso, { relative = true } = {}) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: iso, title: fmtDateTime(iso), dataset: { relative: relative ? '1' : null } },
    relative ? fmtRelative(iso) : fmtDateTime(iso));
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${numberFormat.format(value)} ${value === 1 ? 'byte' : 'bytes'}`;
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function shortId(id, n = 8) {
  const s = String(id ?? '');
  return s.length > n ? s.slice(0, n) : s;
}

export function percent(part, total) {
  if (!total) return 0;
  return Math.round((part / total) * 1000) / 10;
}

// ---- statuses -----------------------------------------------------------

export const JOB_STATUSES = ['scheduled', 'running', 'paused', 'completed', 'failed', 'cancelled'];
export const EXECUTION_STATUSES = [
  'queued', 'dispatched', 'init', 'downloading', 'waiting', 'flashing', 'rebooting',
  'done', 'error', 'timed_out', 'expired', 'cancelled',
];
export const IN_FLIGHT = ['dispatched', 'init', 'downloading', 'waiting', 'flashing', 'rebooting'];
export const FAILED = ['error', 'timed_out', 'expired'];

const STATUS_TONE = {
  scheduled: 'neutral', running: 'info', paused: 'warn', completed: 'ok', failed: 'bad', cancelled: 'muted',
  queued: 'neutral', dispatched: 'info', init: 'info', downloading: 'info', waiting: 'warn', flashing: 'info', rebooting: 'info',
  done: 'ok', error: 'bad', timed_out: 'bad', expired: 'warn',
  enabled: 'ok', disabled: 'bad',
};

export function statusLabel(status) {
  if (status === null || status === undefined) return 'never updated';
  return String(status).replace(/_/g, ' ');
}

/** A status badge: the word itself is the content, colour only reinforces it. */
export function badge(status, attrs = {}) {
  const tone = STATUS_TONE[status] ?? 'neutral';
  return h('span', { class: ['badge', `tone-${tone}`, status ? `status-${status}` : 'status-none'], ...attrs },
    statusLabel(status));
}

export function setBadge(el, status) {
  const tone = STATUS_TONE[status] ?? 'neutral';
  el.className = ['badge', `tone-${tone}`, `status-${status}`].join(' ');
  el.textContent = String(status);
}

// ---- common blocks ------------------------------------------------------

export function loading(text = 'Loading…') {
  return h('p', { class: 'loading', role: 'status' }, text);
}

export function emptyState(...children) {
  return h('div', { class: 'empty' }, ...children);
}

/** An error banner for an ApiError (or any Error). */
export function errorBox(err, { context } = {}) {
  const problem = err?.problem;
  const title = problem?.title ?? err?.name ?? 'Error';
  const detail = problem?.detail ?? err?.message ?? String(err);
  const fieldErrors = Array.isArray(problem?.errors) ? problem.errors : [];
  // A validation problem's detail repeats its field errors: show them once.
  const repeated = fieldErrors.length > 0 && detail === fieldErrors.map((e) => `${e.field}: ${e.message}`).join('; ');
  return h('div', { class: 'error', role: 'alert' },
    h('strong', { class: 'error-title' }, context ? `${context}: ${title}` : title),
    detail && detail !== title && !repeated ? h('p', { class: 'error-detail' }, detail) : null,
    fieldErrors.length > 0
      ? h('ul', { class: 'error-fields' }, fieldErrors.map((e) => h('li', {},
        e.field && e.field !== 'body' ? [h('code', {}, e.field), ': '] : null, e.message)))
      : null,
  );
}

/** A notice that goes away by itself (for successful actions). */
export function notice(text, { fade = 0 } = {}) {
  const el = h('div', { class: 'notice', role: 'status' }, text);
  if (fade > 0) setTimeout(() => el.remove(), fade);
  return el;
}

/** Definition list from [label, value] pairs; values may be nodes. */
export function defList(pairs, attrs = {}) {
  return h('dl', { class: 'deflist', ...attrs },
    pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? h('span', { class: 'muted' }, '—'))]));
}

/** A table with a caption (or aria-label) and a header row. */
export function table({ id, caption, label, columns, className }) {
  const tbody = h('tbody');
  const el = h('table', { id, class: ['table', className], 'aria-label': caption ? null : label },
    caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.className }, c.label)))),
    tbody);
  return { el, tbody };
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; fn(...args); }, ms);
  };
  wrapped.cancel = () => { clearTimeout(timer); timer = null; };
  return wrapped;
}

/**
 * Runs `task` (async) on request, with at most one run in flight and at
 * least `minInterval` ms between starts; requests during a run coalesce
 * into one more run after it.
 */
export function coalescer(task, minInterval = 250) {
  let running = false;
  let pending = false;
  let timer = null;
  let lastStart = 0;
  let stopped = false;
  const start = async () => {
    timer = null;
    if (stopped) return;
    running = true;
    pending = false;
    lastStart = Date.now();
    try {
      await task();
    } catch {
      // The task shows its own errors.
    } finally {
      running = false;
      if (pending && !stopped) request();
    }
  };
  const request = () => {
    if (stopped) return;
    if (running) { pending = true; return; }
    if (timer) return;
    const wait = Math.max(0, lastStart + minInterval - Date.now());
    timer = setTimeout(start, wait);
  };
  request.stop = () => { stopped = true; clearTimeout(timer); };
  return request;
}

/** Copies text to the clipboard when allowed; returns whether it worked. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}
