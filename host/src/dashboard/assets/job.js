// One job: status, steering, counts, batches and executions, kept live
// from the event stream (GET /jobs/{id} again after events, coalesced).

import { ApiError, get, post } from './api.js';
import {
  h, setChildren, badge, setBadge, errorBox, loading, emptyState, timeEl, fmtNumber, fmtDateTime, percent,
  table, coalescer, notice, EXECUTION_STATUSES, IN_FLIGHT, FAILED, statusLabel,
} from './dom.js';
import { eventJobId } from './live.js';
import { firmwareIndex, firmwareLabel, progressCell, loadTimeline } from './parts.js';
import { jobTitle } from './jobs.js';
import { formatJson } from './schemaform.js';
import { deviceHref } from './fleet.js';

const EXEC_PAGE = 100;

const CAN = {
  pause: (s) => s === 'running',
  resume: (s) => s === 'paused',
  cancel: (s) => s === 'scheduled' || s === 'running' || s === 'paused',
};

export async function renderJob(ctx, jobId) {
  ctx.setTitle('Job');
  ctx.liveScope(jobId);
  const canSteer = ctx.can('operator');

  const page = h('div', { id: 'job-page', dataset: { jobId } });
  ctx.root.append(page);
  const first = loading('Loading the job…');
  page.append(first);

  // -- header
  const title = h('h1', { class: 'job-title' });
  const statusBadge = h('span', { id: 'job-status', class: 'badge', role: 'status', 'aria-live': 'polite' });
  const reason = h('p', { class: 'status-reason', id: 'job-status-reason', hidden: true });
  const subtitle = h('p', { class: 'muted job-sub' });
  const pauseButton = canSteer ? h('button', { type: 'button', id: 'job-pause', class: 'button secondary', disabled: true }, 'Pause') : null;
  const resumeButton = canSteer ? h('button', { type: 'button', id: 'job-resume', class: 'button secondary', disabled: true }, 'Resume') : null;
  const cancelButton = canSteer ? h('button', { type: 'button', id: 'job-cancel', class: 'button danger', disabled: true }, 'Cancel job') : null;
  const actionResult = h('div', { class: 'action-result', 'aria-live': 'polite' });

  // -- progress
  const summaryLine = h('p', { class: 'progress-summary', id: 'job-summary' });
  const distBar = h('div', { class: 'dist-bar', id: 'job-dist', role: 'img' });
  const countsBody = h('tbody');
  const countsTable = h('table', { id: 'job-counts', class: 'table compact counts' },
    h('caption', { class: 'visually-hidden' }, 'Executions by status'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Status'), h('th', { scope: 'col', class: 'num' }, 'Executions'), h('th', { scope: 'col', class: 'num' }, 'Share'))),
    countsBody);
  const countCells = new Map();
  const shareCells = new Map();
  for (const status of EXECUTION_STATUSES) {
    const count = h('td', { class: 'num', dataset: { status } }, '0');
    const share = h('td', { class: 'num muted' }, '0%');
    countCells.set(status, count);
    shareCells.set(status, share);
    countsBody.append(h('tr', { dataset: { row: status } },
      h('th', { scope: 'row' }, h('span', { class: ['swatch', `seg-${status}`], 'aria-hidden': 'true' }), badge(status)),
      count, share));
  }
  const totalCell = h('td', { class: 'num', id: 'job-total' }, '0');
  countsBody.append(h('tr', { class: 'total-row' }, h('th', { scope: 'row' }, 'Total'), totalCell, h('td', { class: 'num muted' }, '100%')));

  const batchesBox = h('div', { class: 'batches', id: 'job-batches' });
  const detailsBox = h('div', { class: 'job-details' });

  // -- executions
  const execFilter = h('select', { id: 'exec-status-filter' },
    h('option', { value: '' }, 'All statuses'),
    EXECUTION_STATUSES.map((s) => h('option', { value: s }, statusLabel(s))));
  const { el: execTable, tbody: execBody } = table({
    id: 'executions-table', caption: 'Executions of this job',
    columns: [
      { label: '', className: 'expand-col' }, { label: 'Device' }, { label: 'Batch', className: 'num' },
      { label: 'Status' }, { label: 'Attempts', className: 'num' }, { label: 'Progress' },
      { label: 'Last error' }, { label: 'Updated' },
    ],
  });
  const execStatus = h('div', { class: 'list-status' });
  const execMore = h('button', { type: 'button', class: 'button secondary', hidden: true }, 'Load more');
  const execCount = h('p', { class: 'muted count', 'aria-live': 'polite' });

  let job = null;
  let view = null;
  let appliedSeq = 0;
  let requestSeq = 0;
  let firmware = new Map();

  // ---- rendering ----------------------------------------------------------

  function renderHeader() {
    ctx.setTitle(jobTitle(job));
    title.textContent = jobTitle(job);
    setBadge(statusBadge, job.status);
    statusBadge.setAttribute('aria-label', `Job status: ${job.status}`);
    if (job.status_reason) {
      reason.textContent = job.status_reason;
      reason.hidden = false;
    } else {
      reason.hidden = true;
      reason.textContent = '';
    }
    setChildren(subtitle,
      h('span', { class: 'mono' }, job.id),
      ' · ', firmwareLabel(firmware.get(job.firmware_id), job.firmware_id),
      ' · ', job.kind,
      job.kind === 'emergency' ? h('span', { class: 'badge tone-bad small' }, 'emergency') : null);
    if (canSteer) {
      pauseButton.disabled = !CAN.pause(job.status);
      resumeButton.disabled = !CAN.resume(job.status);
      cancelButton.disabled = !CAN.cancel(job.status);
    }
  }

  // Devices that hold their image until it is safe to install, and why.
  function waitingLine(reasons) {
    const entries = Object.entries(reasons);
    if (entries.length === 0) return null;
    return h('span', { id: 'job-waiting' }, ` · waiting to install: ${entries
      .map(([reason, n]) => `${fmtNumber(n)} ${reason}`).join(', ')}`);
  }

  function renderCounts() {
    const total = view.total ?? 0;
    const counts = view.counts ?? {};
    totalCell.textContent = String(total);
    for (const status of EXECUTION_STATUSES) {
      const n = counts[status] ?? 0;
      countCells.get(status).textContent = String(n);
      shareCells.get(status).textContent = `${percent(n, total)}%`;
      countCells.get(status).parentElement.classList.toggle('is-zero', n === 0);
    }
    const segments = EXECUTION_STATUSES.filter((s) => (counts[s] ?? 0) > 0);
    setChildren(distBar, segments.map((s) => h('span', {
      class: ['seg', `seg-${s}`], title: `${statusLabel(s)}: ${counts[s]}`, style: { width: `${(counts[s] / total) * 100}%` },
    })));
    distBar.setAttribute('aria-label', total === 0
      ? 'No executions'
      : `Executions: ${segments.map((s) => `${counts[s]} ${statusLabel(s)}`).join(', ')}`);
    const done = counts.done ?? 0;
    const failed = FAILED.reduce((a, s) => a + (counts[s] ?? 0), 0);
    const inFlight = IN_FLIGHT.reduce((a, s) => a + (counts[s] ?? 0), 0);
    const queued = counts.queued ?? 0;
    const cancelled = counts.cancelled ?? 0;
    setChildren(summaryLine,
      h('strong', {}, `${fmtNumber(done)} of ${fmtNumber(total)} done`), ` (${percent(done, total)}%)`,
      ` · ${fmtNumber(failed)} failed · ${fmtNumber(inFlight)} in flight · ${fmtNumber(queued)} queued`,
      cancelled ? ` · ${fmtNumber(cancelled)} cancelled` : null,
      view.dispatch_rate ? h('span', { id: 'job-rate' }, ` · sent at most ${fmtNumber(view.dispatch_rate)} a minute`) : null,
      waitingLine(view.waiting_reasons ?? {}));
  }

  function renderBatches() {
    const batches = (view.batches ?? []).filter((b) => b.batch_group !== null && b.batch_group !== undefined);
    const unplanned = (view.batches ?? []).find((b) => b.batch_group === null || b.batch_group === undefined);
    const rows = batches.map((b) => {
      const c = b.counts ?? {};
      const done = c.done ?? 0;
      const failed = FAILED.reduce((a, s) => a + (c[s] ?? 0), 0);
      const inFlight = IN_FLIGHT.reduce((a, s) => a + (c[s] ?? 0), 0);
      const queued = c.queued ?? 0;
      const cancelled = c.cancelled ?? 0;
      const total = b.total || 0;
      // Strategies that plan by attributes name their batches (a ring, a site).
      const label = b.label ? `Batch ${b.batch_group + 1}: ${b.label}` : `Batch ${b.batch_group + 1}`;
      const pct = percent(done, total);
      const width = (n) => `${total ? (n / total) * 100 : 0}%`;
      return h('div', { class: 'batch-row', dataset: { batch: b.batch_group } },
        h('span', { class: 'batch-label' }, label),
        h('div', {
          class: 'batch-bar', role: 'progressbar', 'aria-label': `${label}: done`,
          'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(pct), 'aria-valuetext': `${pct}% done`,
        },
        h('span', { class: 'seg seg-done', style: { width: width(done) } }),
        h('span', { class: 'seg seg-error', style: { width: width(failed) } }),
        h('span', { class: 'seg seg-cancelled', style: { width: width(cancelled) } }),
        h('span', { class: 'seg seg-downloading', style: { width: width(inFlight) } })),
        h('span', { class: 'batch-text' },
          `${fmtNumber(done)} done · ${fmtNumber(failed)} failed · ${fmtNumber(inFlight)} in flight · ${fmtNumber(queued)} queued`,
          cancelled ? ` · ${fmtNumber(cancelled)} cancelled` : '',
          ` of ${fmtNumber(total)}`),
        h('span', { class: 'batch-pct' }, `${pct}%`));
    });
    setChildren(batchesBox,
      rows.length === 0 && !unplanned ? h('p', { class: 'muted' }, 'No executions.') : null,
      rows,
      unplanned ? h('p', { class: 'muted batch-unplanned' }, unplannedText(unplanned.total, job)) : null);
  }

  function renderDetails() {
    const fw = firmware.get(job.firmware_id);
    setChildren(detailsBox, h('dl', { class: 'deflist', id: 'job-details' },
      [
        ['Job id', h('span', { class: 'mono' }, job.id)],
        ['Firmware', fw ? h('span', {}, firmwareLabel(fw), h('span', { class: 'muted mono' }, ` ${fw.sha256.slice(0, 12)}…`)) : firmwareLabel(null, job.firmware_id)],
        ['Start', job.kind === 'scheduled' ? ['at ', timeEl(job.start_at, { relative: false })] : `${job.kind} (${fmtDateTime(job.start_at)})`],
        ['Targets', h('code', { class: 'json-inline' }, compactTargets(job.targets))],
        ['Rollout plugin', job.rollout_plugin],
        ['Rollout configuration', h('pre', { class: 'json' }, formatJson(job.rollout_config ?? {}))],
        ['Device timeout', `${fmtNumber(job.device_timeout_secs)} s`],
        ['Max retries', String(job.max_retries)],
        ['Delivery deadline', `${fmtNumber(job.delivery_deadline_secs)} s after the start`],
        ['End', job.end_at ? timeEl(job.end_at, { relative: false }) : 'none'],
        ['Install', job.install === 'when-safe' ? 'when safe (download now, flash when parked)' : 'immediately'],
        ['Windows', job.windows ? h('span', { id: 'job-windows' },
          `${job.windows.times.map((w) => `${w.days.join(',')} ${w.from.slice(0, 5)}\u2013${w.to.slice(0, 5)}`).join('; ')} (${job.windows.time_zone}): `,
          job.window_open ? h('strong', {}, 'open now') : ['closed; next opens ', timeEl(job.next_window_at, { relative: false })]) : 'always'],
        ['Created', [timeEl(job.created_at, { relative: false }), h('span', { class: 'muted' }, ` by ${job.created_by}`)]],
        ['Started', timeEl(job.started_at, { relative: false })],
        ['Finished', timeEl(job.finished_at, { relative: false })],
        ['Last change', timeEl(job.updated_at, { relative: false })],
      ].map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
  }

  function applyView(next, seq) {
    if (seq < appliedSeq) return; // an older answer arriving late
    appliedSeq = seq;
    view = next;
    job = next;
    renderHeader();
    renderCounts();
    renderBatches();
    renderDetails();
  }

  // ---- fetching -----------------------------------------------------------

  async function fetchJob() {
    const seq = ++requestSeq;
    try {
      const next = await get(`/jobs/${jobId}`);
      if (!ctx.alive) return;
      applyView(next, seq);
    } catch (err) {
      if (!ctx.alive || err.status === 401) return;
      setChildren(actionResult, errorBox(err, { context: 'Refreshing the job' }));
    }
  }

  // ---- executions ---------------------------------------------------------

  const rows = new Map(); // execution id → entry
  let execNext = null;
  let execSeq = 0;
  let loadedCount = 0;

  function execCells(e) {
    return {
      batch: e.batch_group === null || e.batch_group === undefined ? h('span', { class: 'muted' }, '—') : String(e.batch_group + 1),
      status: badge(e.status),
      attempts: String(e.attempts ?? 0),
      progress: progressCell(e.progress, e.status),
      error: e.last_error ? h('span', { class: 'row-error', title: e.last_error }, e.last_error) : h('span', { class: 'muted' }, '—'),
      updated: timeEl(e.updated_at),
    };
  }

  function fillRow(entry) {
    const c = execCells(entry.exec);
    setChildren(entry.td.batch, c.batch);
    setChildren(entry.td.status, c.status);
    setChildren(entry.td.attempts, c.attempts);
    setChildren(entry.td.progress, c.progress);
    setChildren(entry.td.error, c.error);
    setChildren(entry.td.updated, c.updated);
    entry.tr.dataset.status = entry.exec.status;
  }

  function toggle(entry) {
    if (entry.timelineTr) {
      entry.timelineTr.remove();
      entry.timelineTr = null;
      entry.button.setAttribute('aria-expanded', 'false');
      entry.button.textContent = '▸';
      entry.tr.classList.remove('expanded');
      return;
    }
    const box = h('div', { class: 'timeline-box', id: `exec-timeline-${entry.exec.id}` });
    entry.timelineTr = h('tr', { class: 'timeline-row', dataset: { timelineFor: entry.exec.id } },
      h('td', { colspan: '8' }, box));
    entry.timelineBox = box;
    entry.tr.after(entry.timelineTr);
    entry.button.setAttribute('aria-expanded', 'true');
    entry.button.setAttribute('aria-controls', box.id);
    entry.button.textContent = '▾';
    entry.tr.classList.add('expanded');
    loadTimeline(box, entry.exec.id);
  }

  function createRow(e) {
    const button = h('button', {
      type: 'button', class: 'button icon', 'aria-expanded': 'false',
      'aria-label': `Timeline of ${e.device_id}`,
    }, '▸');
    const td = {
      batch: h('td', { class: 'num' }), status: h('td', {}), attempts: h('td', { class: 'num' }),
      progress: h('td', {}), error: h('td', { class: 'error-cell' }), updated: h('td', {}),
    };
    const tr = h('tr', { class: 'exec-row', dataset: { executionId: e.id } },
      h('td', { class: 'expand-col' }, button),
      h('td', {}, h('a', { href: deviceHref(e.device_id), class: 'mono' }, e.device_id)),
      td.batch, td.status, td.attempts, td.progress, td.error, td.updated);
    const entry = { exec: e, tr, td, button, timelineTr: null, timelineBox: null };
    button.addEventListener('click', (event) => { event.stopPropagation(); toggle(entry); });
    tr.addEventListener('click', (event) => {
      if (event.target.closest('a, button')) return;
      toggle(entry);
    });
    fillRow(entry);
    return entry;
  }

  /** Puts `items` in the table in order, reusing rows (and open timelines). */
  function syncRows(items) {
    const keep = new Set(items.map((e) => e.id));
    for (const [id, entry] of rows) {
      if (!keep.has(id)) {
        entry.tr.remove();
        entry.timelineTr?.remove();
        rows.delete(id);
      }
    }
    let cursor = execBody.firstChild;
    const place = (node) => {
      if (node === cursor) cursor = cursor.nextSibling;
      else execBody.insertBefore(node, cursor);
    };
    for (const e of items) {
      let entry = rows.get(e.id);
      if (entry) {
        const changed = entry.exec.version !== e.version || entry.exec.status !== e.status;
        entry.exec = e;
        if (changed) {
          fillRow(entry);
          if (entry.timelineBox) loadTimeline(entry.timelineBox, e.id, { quiet: true });
        }
      } else {
        entry = createRow(e);
        rows.set(e.id, entry);
      }
      place(entry.tr);
      if (entry.timelineTr) place(entry.timelineTr);
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
    loadedCount = items.length;
    execMore.hidden = !execNext;
    execCount.textContent = items.length === 0 ? '' : `Showing ${fmtNumber(items.length)}${execNext ? '+' : ''}`;
    if (items.length === 0) {
      setChildren(execStatus, emptyState(h('p', {}, execFilter.value
        ? `No ${statusLabel(execFilter.value)} executions.` : 'This job has no executions.')));
    } else {
      setChildren(execStatus);
    }
  }

  async function loadExecutions({ keep = false } = {}) {
    const seq = ++execSeq;
    const limit = keep ? Math.min(1000, Math.max(EXEC_PAGE, loadedCount)) : EXEC_PAGE;
    if (!keep && rows.size === 0) setChildren(execStatus, loading('Loading executions…'));
    try {
      const page = await get(`/jobs/${jobId}/executions`, { status: execFilter.value || undefined, limit });
      if (!ctx.alive || seq !== execSeq) return;
      execNext = page.next_cursor ?? null;
      syncRows(page.items);
    } catch (err) {
      if (!ctx.alive || seq !== execSeq || err.status === 401) return;
      setChildren(execStatus, errorBox(err, { context: 'Executions' }));
    }
  }

  execMore.addEventListener('click', async () => {
    if (!execNext) return;
    const seq = execSeq;
    execMore.disabled = true;
    try {
      const page = await get(`/jobs/${jobId}/executions`, { status: execFilter.value || undefined, limit: EXEC_PAGE, cursor: execNext });
      if (!ctx.alive || seq !== execSeq) return;
      execNext = page.next_cursor ?? null;
      const all = [...rows.values()].map((r) => r.exec).concat(page.items.filter((e) => !rows.has(e.id)));
      syncRows(all);
    } catch (err) {
      if (ctx.alive) setChildren(execStatus, errorBox(err, { context: 'Executions' }));
    } finally {
      execMore.disabled = false;
    }
  });
  execFilter.addEventListener('change', () => {
    for (const entry of rows.values()) {
      entry.tr.remove();
      entry.timelineTr?.remove();
    }
    rows.clear();
    loadedCount = 0;
    loadExecutions();
  });

  /** Applies an execution event to its row at once (the refetch follows). */
  function patchRow(event) {
    const p = event.payload ?? {};
    const entry = rows.get(Number(p.execution_id));
    if (!entry || !p.to) return;
    const e = { ...entry.exec, status: p.to };
    if (p.progress !== undefined && p.progress !== null) e.progress = p.progress;
    const message = p.reason ?? p.message;
    if (FAILED.includes(p.to) && message) e.last_error = message;
    if (event.envelope?.occurred_at) e.updated_at = event.envelope.occurred_at;
    entry.exec = e;
    fillRow(entry);
  }

  // ---- steering -----------------------------------------------------------

  async function act(action) {
    if (action === 'cancel') {
      const ok = window.confirm(`Cancel ${jobTitle(job)}? Its unfinished executions are cancelled; devices already updating finish on their own.`);
      if (!ok) return;
    }
    const buttons = [pauseButton, resumeButton, cancelButton];
    for (const b of buttons) b.disabled = true;
    setChildren(actionResult);
    const seq = ++requestSeq;
    try {
      const next = await post(`/jobs/${jobId}/${action}`);
      if (!ctx.alive) return;
      applyView(next, seq);
      const done = { pause: 'Paused', resume: 'Resumed', cancel: 'Cancelled' }[action];
      setChildren(actionResult, notice(`${done}.`, { fade: 5000 }));
      requestExecs();
    } catch (err) {
      if (!ctx.alive) return;
      const what = { pause: 'Pause', resume: 'Resume', cancel: 'Cancel' }[action];
      setChildren(actionResult, errorBox(err, { context: `${what} refused` }));
      if (job) renderHeader();
      if (err instanceof ApiError && err.status === 409) requestJob();
    }
  }

  // ---- first load ---------------------------------------------------------

  const firstSeq = ++requestSeq;
  let initial;
  try {
    [initial, firmware] = await Promise.all([
      get(`/jobs/${jobId}`),
      firmwareIndex().catch(() => new Map()),
    ]);
  } catch (err) {
    if (!ctx.alive) return;
    first.replaceWith(errorBox(err, { context: err.status === 404 ? 'No such job' : 'Loading the job' }),
      h('p', {}, h('a', { href: '#/jobs' }, 'Back to the jobs')));
    return;
  }
  if (!ctx.alive) return;
  if (!firmware.has(initial.firmware_id)) {
    firmware = await firmwareIndex({ fresh: true }).catch(() => firmware);
    if (!ctx.alive) return;
  }

  first.replaceWith(
    h('div', { class: 'page-head job-head' },
      h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / '),
      h('div', { class: 'title-row' }, title, statusBadge),
      subtitle,
      reason,
      canSteer ? h('div', { class: 'actions steer', role: 'group', 'aria-label': 'Steer the job' }, pauseButton, resumeButton, cancelButton) : null,
      actionResult),
    h('section', { class: 'panel', 'aria-labelledby': 'job-progress-heading' },
      h('h2', { id: 'job-progress-heading' }, 'Progress'),
      summaryLine,
      distBar,
      h('div', { class: 'progress-grid' },
        h('div', {}, h('h3', {}, 'By status'), countsTable),
        h('div', {}, h('h3', {}, 'By batch'), batchesBox))),
    h('section', { class: 'panel', 'aria-labelledby': 'job-exec-heading' },
      h('div', { class: 'panel-head' }, h('h2', { id: 'job-exec-heading' }, 'Executions'), execCount),
      h('div', { class: 'toolbar' },
        h('div', { class: 'field inline' }, h('label', { for: 'exec-status-filter' }, 'Status'), execFilter)),
      h('div', { class: 'table-wrap' }, execTable),
      execStatus,
      h('div', { class: 'actions' }, execMore)),
    h('section', { class: 'panel', 'aria-labelledby': 'job-details-heading' },
      h('h2', { id: 'job-details-heading' }, 'Details'),
      detailsBox),
  );
  applyView(initial, firstSeq);

  if (canSteer) {
    pauseButton.addEventListener('click', () => act('pause'));
    resumeButton.addEventListener('click', () => act('resume'));
    cancelButton.addEventListener('click', () => act('cancel'));
  }

  // ---- live ---------------------------------------------------------------

  const requestJob = coalescer(fetchJob, 250);
  const requestExecs = coalescer(() => loadExecutions({ keep: true }), 1500);
  ctx.cleanup(() => { requestJob.stop(); requestExecs.stop(); });
  ctx.onEvent((event) => {
    if (event.type === 'resync') {
      requestJob();
      requestExecs();
      return;
    }
    if (eventJobId(event) !== jobId) return;
    requestJob();
    if (event.type === 'execution.status.changed') {
      patchRow(event);
      requestExecs();
    } else if (event.type === 'job.batch.started' || event.type === 'job.status.changed') {
      requestExecs();
    }
  });
  // A slow safety net; events drive the page.
  ctx.every(15_000, () => { requestJob(); requestExecs(); });

  await loadExecutions();
}

function unplannedText(n, job) {
  const count = `${fmtNumber(n)} execution${n === 1 ? '' : 's'}`;
  if (['completed', 'failed', 'cancelled'].includes(job.status)) return `${count} never assigned to a batch.`;
  if (job.status === 'scheduled') {
    return `${count} not assigned to a batch yet: the rollout plans its batches when the job starts (${fmtDateTime(job.start_at)}).`;
  }
  return `${count} not assigned to a batch yet.`;
}

function compactTargets(targets) {
  if (!targets || typeof targets !== 'object') return '—';
  if (Array.isArray(targets.devices)) {
    const ids = targets.devices;
    return `${ids.length} device${ids.length === 1 ? '' : 's'}: ${ids.slice(0, 10).join(', ')}${ids.length > 10 ? ', …' : ''}`;
  }
  if (targets.filter) {
    const f = targets.filter;
    const parts = [];
    if (f.family) parts.push(`family ${f.family}`);
    if (f.model) parts.push(`model ${f.model}`);
    if (f.gateway_id) parts.push(`gateway ${f.gateway_id}`);
    for (const [k, v] of Object.entries(f.tags ?? {})) parts.push(`${k}:${v}`);
    return parts.length ? `filter: ${parts.join(', ')}` : 'filter: every device of the firmware\u2019s family';
  }
  return JSON.stringify(targets);
}
