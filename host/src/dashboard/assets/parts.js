// Domain widgets shared by several views: execution timelines, progress
// cells, firmware labels and the known device families.

import { get, getAll } from './api.js';
import { h, badge, setChildren, errorBox, fmtDateTime, loading, IN_FLIGHT } from './dom.js';

/** A small progress bar with its percentage as text. */
export function progressCell(progress, status) {
  if (progress === null || progress === undefined) {
    return h('span', { class: 'muted' }, status === 'done' ? '100%' : '—');
  }
  const value = Math.max(0, Math.min(100, Number(progress)));
  return h('span', { class: 'progress-cell' },
    h('progress', { max: '100', value: String(value), 'aria-label': `Progress ${value}%` }),
    h('span', { class: 'progress-text' }, `${value}%`));
}

export function isInFlight(status) {
  return IN_FLIGHT.includes(status);
}

/** The status log of one execution as an ordered list. */
export function timelineList(view) {
  const log = Array.isArray(view?.log) ? view.log : [];
  if (log.length === 0) {
    return h('p', { class: 'muted timeline-empty' }, 'No status reported yet: the execution is ',
      view?.status ?? 'queued', '.');
  }
  return h('ol', { class: 'timeline', 'aria-label': `Timeline of execution ${view.id}` },
    log.map((entry) => h('li', { class: ['timeline-entry', `status-${entry.status}`], dataset: { status: entry.status } },
      h('time', { datetime: entry.at, class: 'timeline-time' }, fmtDateTime(entry.at)),
      badge(entry.status),
      entry.progress !== null && entry.progress !== undefined
        ? h('span', { class: 'timeline-progress' }, `${entry.progress}%`) : null,
      entry.message ? h('span', { class: ['timeline-message', ['error', 'timed_out', 'expired'].includes(entry.status) ? 'is-error' : null] }, entry.message) : null)));
}

/** Where a cancel owed to the device stands (`cancel_delivery`). */
const CANCEL_DELIVERY = {
  pending: 'to be sent to the device',
  sent: 'sent to the device, no answer yet (sent again when it says hello)',
  answered: 'the device answered',
};

/**
 * Loads `GET /executions/{id}` into `container` (with loading and error
 * states). Resolves with the execution view, or null when it failed.
 */
export async function loadTimeline(container, executionId, { quiet = false } = {}) {
  if (!quiet) setChildren(container, loading('Loading timeline…'));
  try {
    const view = await get(`/executions/${encodeURIComponent(executionId)}`);
    setChildren(container,
      view.last_error ? h('p', { class: 'exec-error' }, h('strong', {}, 'Last error: '), view.last_error) : null,
      view.waiting_reason ? h('p', { class: 'muted' }, h('strong', {}, 'Waiting: '), view.waiting_reason) : null,
      view.cancel_delivery
        ? h('p', { class: 'muted', dataset: { testid: 'cancel-delivery', cancel: view.cancel_delivery } },
          h('strong', {}, 'Cancel: '), CANCEL_DELIVERY[view.cancel_delivery] ?? view.cancel_delivery)
        : null,
      timelineList(view));
    return view;
  } catch (err) {
    setChildren(container, errorBox(err, { context: 'Timeline' }));
    return null;
  }
}

// ---- firmware labels ------------------------------------------------------

let firmwareCache = null;
let firmwareLoading = null;

/** Map of firmware id → record (cached; `fresh` reloads it). */
export async function firmwareIndex({ fresh = false } = {}) {
  if (firmwareCache && !fresh) return firmwareCache;
  if (!firmwareLoading || fresh) {
    firmwareLoading = getAll('/firmware').then((items) => {
      firmwareCache = new Map(items.map((f) => [f.id, f]));
      return firmwareCache;
    }).finally(() => { firmwareLoading = null; });
  }
  return firmwareLoading;
}

export function firmwareLabel(firmware, id) {
  if (firmware) return `${firmware.family} ${firmware.version}`;
  return id ? `firmware ${String(id).slice(0, 8)}` : '—';
}

export function forgetFirmware() {
  firmwareCache = null;
}

// ---- plugins --------------------------------------------------------------

/** GET /plugins: every plugin (one page). */
export async function listPlugins() {
  return (await get('/plugins')).items;
}

/** Families served by device plugins, sorted; `enabledOnly` drops disabled ones. */
export function familiesOf(plugins, { enabledOnly = false } = {}) {
  const families = new Set();
  for (const p of plugins) {
    if (p.kind !== 'device') continue;
    if (enabledOnly && p.state !== 'enabled') continue;
    for (const f of p.families ?? []) families.add(f);
  }
  return [...families].sort();
}

/** Parses `key:value, key2:value2` into an object; throws with a message. */
export function parseTags(text) {
  const tags = {};
  for (const raw of String(text ?? '').split(',')) {
    const pair = raw.trim();
    if (!pair) continue;
    const colon = pair.indexOf(':');
    if (colon <= 0 || colon === pair.length - 1) {
      throw new Error(`'${pair}' is not key:value`);
    }
    const key = pair.slice(0, colon).trim();
    const value = pair.slice(colon + 1).trim();
    if (!key || !value) throw new Error(`'${pair}' is not key:value`);
    tags[key] = value;
  }
  return tags;
}

/** Tags as small chips. */
export function tagChips(tags) {
  const entries = Object.entries(tags ?? {});
  if (entries.length === 0) return h('span', { class: 'muted' }, 'none');
  return h('ul', { class: 'chips', 'aria-label': 'Tags' },
    entries.map(([k, v]) => h('li', { class: 'chip' }, h('span', { class: 'chip-key' }, k), ':', h('span', { class: 'chip-value' }, v))));
}
