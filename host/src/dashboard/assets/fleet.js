// The fleet: summary, device table, and one device's page.

import { get } from './api.js';
import {
  h, setChildren, badge, errorBox, loading, emptyState, timeEl, fmtNumber, percent,
  table, debounce, coalescer, defList, shortId, statusLabel,
} from './dom.js';
import { progressCell, isInFlight, loadTimeline, tagChips, parseTags } from './parts.js';

const PAGE = 100;

export function deviceHref(id) {
  return `#/devices/${encodeURIComponent(id)}`;
}

function deviceLink(id) {
  return h('a', { href: deviceHref(id), class: 'mono' }, id);
}

// Connected now, or away since it was last seen.
function presence(d) {
  return h('span', { class: ['presence', d.online ? 'presence-online' : 'presence-away'], dataset: { online: String(Boolean(d.online)) } },
    d.online ? 'online' : 'away');
}

// ---- fleet page -------------------------------------------------------------

export async function renderFleet(ctx) {
  ctx.setTitle('Fleet');
  const summaryBox = h('div', { class: 'summary', 'aria-busy': 'true' }, loading('Loading the fleet summary…'));
  const search = h('input', { id: 'device-search', type: 'search', placeholder: 'e.g. VIN12', autocomplete: 'off', spellcheck: 'false' });
  const familySelect = h('select', { id: 'device-family' }, h('option', { value: '' }, 'All families'));
  const versionSelect = h('select', { id: 'device-version' }, h('option', { value: '' }, 'Any version'));
  const onlineSelect = h('select', { id: 'device-online' },
    h('option', { value: '' }, 'Any'), h('option', { value: 'true' }, 'Online'), h('option', { value: 'false' }, 'Away'));
  const driftSelect = h('select', { id: 'device-drift' },
    h('option', { value: '' }, 'Any'), h('option', { value: 'true' }, 'Flashed outside Rollway'), h('option', { value: 'false' }, 'As Rollway expects'));
  const tagsInput = h('input', { id: 'device-tags', type: 'text', placeholder: 'site:north, fleet:simulated', autocomplete: 'off', spellcheck: 'false' });
  const filterError = h('div', { class: 'filter-error' });
  const { el: tableEl, tbody } = table({
    id: 'devices-table',
    caption: 'Devices',
    columns: [
      { label: 'Device' }, { label: 'Family' }, { label: 'Model' }, { label: 'Gateway' },
      { label: 'Installed version' }, { label: 'Last update' }, { label: 'Last seen' },
    ],
  });
  const listStatus = h('div', { class: 'list-status' });
  const moreButton = h('button', { type: 'button', id: 'devices-more', class: 'button secondary', hidden: true }, 'Load more');
  const countText = h('p', { class: 'muted count', 'aria-live': 'polite' });

  ctx.root.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Fleet')),
    h('section', { 'aria-labelledby': 'summary-heading' },
      h('h2', { id: 'summary-heading', class: 'visually-hidden' }, 'Summary'),
      summaryBox),
    h('section', { 'aria-labelledby': 'devices-heading', class: 'panel' },
      h('div', { class: 'panel-head' },
        h('h2', { id: 'devices-heading' }, 'Devices'),
        countText),
      h('form', { class: 'toolbar', role: 'search', 'aria-label': 'Filter devices', onsubmit: (e) => e.preventDefault() },
        h('div', { class: 'field inline' }, h('label', { for: 'device-search' }, 'Device id starts with'), search),
        h('div', { class: 'field inline' }, h('label', { for: 'device-family' }, 'Family'), familySelect),
        h('div', { class: 'field inline' }, h('label', { for: 'device-version' }, 'Installed version'), versionSelect),
        h('div', { class: 'field inline' }, h('label', { for: 'device-online' }, 'Connection'), onlineSelect),
        h('div', { class: 'field inline' }, h('label', { for: 'device-drift' }, 'Drift'), driftSelect),
        h('div', { class: 'field inline' }, h('label', { for: 'device-tags' }, 'Tags'), tagsInput),
      ),
      filterError,
      h('div', { class: 'table-wrap' }, tableEl),
      listStatus,
      h('div', { class: 'actions' }, moreButton)),
  );

  let summary = null;
  let rows = [];
  let nextCursor = null;
  let listSeq = 0;

  function filters() {
    const query = {};
    const q = search.value.trim();
    if (q) query.q = q;
    if (familySelect.value) query.family = familySelect.value;
    if (versionSelect.value) query.installed_version = versionSelect.value;
    if (onlineSelect.value) query.online = onlineSelect.value;
    if (driftSelect.value) query.drift = driftSelect.value;
    const tagsText = tagsInput.value.trim();
    if (tagsText) {
      const tags = parseTags(tagsText); // throws on a malformed pair
      query.tags = Object.entries(tags).map(([k, v]) => `${k}:${v}`).join(',');
    }
    return query;
  }

  function hasFilters() {
    return Boolean(search.value.trim() || familySelect.value || versionSelect.value || onlineSelect.value || driftSelect.value || tagsInput.value.trim());
  }

  function fillSelects() {
    if (!summary) return;
    const family = familySelect.value;
    const version = versionSelect.value;
    setChildren(familySelect, h('option', { value: '' }, 'All families'),
      (summary.by_family ?? []).map((f) => h('option', { value: f.family }, `${f.family} (${fmtNumber(f.devices)})`)));
    familySelect.value = family;
    if (familySelect.value !== family) familySelect.value = '';
    const versions = (summary.by_version ?? [])
      .filter((v) => v.firmware_version !== null && (!familySelect.value || v.family === familySelect.value));
    setChildren(versionSelect, h('option', { value: '' }, 'Any version'),
      versions.map((v) => h('option', { value: v.firmware_version },
        `${familySelect.value ? '' : `${v.family} `}${v.firmware_version} (${fmtNumber(v.devices)})`)));
    // The same version may exist in several families: keep the first.
    versionSelect.value = version;
    if (versionSelect.value !== version) versionSelect.value = '';
  }

  function renderSummary() {
    if (!summary) return;
    summaryBox.setAttribute('aria-busy', 'false');
    const total = summary.total ?? 0;
    const cards = h('div', { class: 'cards' },
      h('div', { class: 'card card-total' },
        h('span', { class: 'card-label', id: 'fleet-total-label' }, 'Total devices'),
        h('span', { class: 'card-value', id: 'fleet-total', 'aria-labelledby': 'fleet-total-label' }, String(total))),
      h('div', { class: 'card' },
        h('span', { class: 'card-label', id: 'fleet-online-label' }, 'Online now'),
        h('span', { class: 'card-value', id: 'fleet-online', 'aria-labelledby': 'fleet-online-label' }, String(summary.online ?? 0)),
        h('span', { class: 'card-sub' }, `${percent(summary.online ?? 0, total)}% connected; the rest are away`)),
      (summary.by_family ?? []).map((f) => h('div', { class: 'card', dataset: { family: f.family } },
        h('span', { class: 'card-label' }, f.family),
        h('span', { class: 'card-value', dataset: { familyCount: f.family } }, String(f.devices)),
        h('span', { class: 'card-sub' }, `${percent(f.devices, total)}% of the fleet`))));
    const breakdown = (title, id, items, labelOf) => {
      const { el, tbody: body } = table({
        id, label: title, className: 'compact',
        columns: [{ label: title.replace(/^By /, '') }, { label: 'Devices', className: 'num' }, { label: 'Share' }],
      });
      if (items.length === 0) {
        body.append(h('tr', {}, h('td', { colspan: '3', class: 'muted' }, 'No devices')));
      }
      for (const item of items) {
        const share = percent(item.devices, total);
        body.append(h('tr', {},
          h('td', {}, labelOf(item)),
          h('td', { class: 'num' }, fmtNumber(item.devices)),
          h('td', { class: 'share' }, h('span', { class: 'sharebar', 'aria-hidden': 'true' },
            h('span', { class: 'sharebar-fill', style: { width: `${share}%` } })), h('span', { class: 'share-text' }, `${share}%`))));
      }
      return h('div', { class: 'breakdown' }, h('h3', {}, title), el);
    };
    const byStatus = [...(summary.by_last_status ?? [])].sort((a, b) => b.devices - a.devices);
    setChildren(summaryBox,
      cards,
      total === 0 ? null : h('div', { class: 'breakdowns' },
        breakdown('By model', 'fleet-by-model', summary.by_model ?? [],
          (m) => [h('span', { class: 'muted' }, `${m.family} `), m.model ?? h('em', {}, 'no model')]),
        breakdown('Installed firmware', 'fleet-by-version', summary.by_version ?? [],
          (v) => [h('span', { class: 'muted' }, `${v.family} `), v.firmware_version ?? h('em', {}, 'unknown')]),
        breakdown('Last update status', 'fleet-by-status', byStatus, (s) => badge(s.status))));
    fillSelects();
  }

  async function loadSummary() {
    try {
      summary = await get('/fleet/summary');
      if (!ctx.alive) return;
      renderSummary();
    } catch (err) {
      if (!ctx.alive) return;
      summaryBox.setAttribute('aria-busy', 'false');
      setChildren(summaryBox, errorBox(err, { context: 'Fleet summary' }));
    }
  }

  function deviceRow(d) {
    const status = d.last_status ?? null;
    return h('tr', { dataset: { deviceId: d.id } },
      h('td', {}, deviceLink(d.id)),
      h('td', {}, d.family),
      h('td', {}, d.model ?? h('span', { class: 'muted' }, '—')),
      h('td', {}, d.gateway_id ? deviceLink(d.gateway_id) : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'mono' }, d.installed_version ?? h('span', { class: 'muted' }, 'unknown'), driftBadge(d)),
      h('td', { class: 'last-status' },
        badge(status, { title: d.last_error ?? undefined }),
        isInFlight(status) && d.last_progress !== null && d.last_progress !== undefined
          ? h('span', { class: 'inline-progress' }, ` ${d.last_progress}%`) : null,
        d.last_job_id ? h('a', { href: `#/jobs/${d.last_job_id}`, class: 'small-link', 'aria-label': `Job ${d.last_job_id}` }, ' job') : null,
        d.last_error ? h('span', { class: 'row-error', title: d.last_error }, d.last_error) : null),
      h('td', {}, presence(d), ' ', timeEl(d.last_seen)));
  }

  function renderRows() {
    setChildren(tbody, rows.map(deviceRow));
    moreButton.hidden = !nextCursor;
    countText.textContent = rows.length === 0 ? '' : `Showing ${fmtNumber(rows.length)}${nextCursor ? '+' : ''} device${rows.length === 1 ? '' : 's'}`;
    if (rows.length === 0) {
      setChildren(listStatus, hasFilters()
        ? emptyState(h('p', {}, 'No devices match these filters.'))
        : emptyState(
          h('p', { class: 'empty-title' }, 'No devices yet'),
          h('p', {}, 'No devices yet — register devices with ', h('code', {}, 'POST /api/v1/devices'),
            ' or run ', h('code', {}, 'rollway up --simulate 50'), '.')));
    } else {
      setChildren(listStatus);
    }
  }

  /** Loads the first page (or as many rows as are shown, on a refresh). */
  async function loadDevices({ keep = false } = {}) {
    let query;
    try {
      query = filters();
      setChildren(filterError);
      tagsInput.removeAttribute('aria-invalid');
    } catch (err) {
      tagsInput.setAttribute('aria-invalid', 'true');
      setChildren(filterError, h('p', { class: 'field-error', role: 'alert' }, `Tags: ${err.message}`));
      return;
    }
    const seq = ++listSeq;
    const limit = keep ? Math.min(1000, Math.max(PAGE, rows.length)) : PAGE;
    if (!keep) {
      tableEl.setAttribute('aria-busy', 'true');
      if (rows.length === 0) setChildren(listStatus, loading('Loading devices…'));
    }
    try {
      const page = await get('/devices', { ...query, limit });
      if (!ctx.alive || seq !== listSeq) return;
      rows = page.items;
      nextCursor = page.next_cursor ?? null;
      renderRows();
    } catch (err) {
      if (!ctx.alive || seq !== listSeq) return;
      setChildren(listStatus, errorBox(err, { context: 'Devices' }));
    } finally {
      if (seq === listSeq) tableEl.setAttribute('aria-busy', 'false');
    }
  }

  async function loadMore() {
    if (!nextCursor) return;
    const seq = listSeq;
    moreButton.disabled = true;
    moreButton.textContent = 'Loading…';
    try {
      const page = await get('/devices', { ...filters(), limit: PAGE, cursor: nextCursor });
      if (!ctx.alive || seq !== listSeq) return;
      rows = rows.concat(page.items);
      nextCursor = page.next_cursor ?? null;
      renderRows();
    } catch (err) {
      if (ctx.alive) setChildren(listStatus, errorBox(err, { context: 'Devices' }));
    } finally {
      moreButton.disabled = false;
      moreButton.textContent = 'Load more';
    }
  }

  const reload = () => loadDevices();
  search.addEventListener('input', debounce(reload, 300));
  tagsInput.addEventListener('input', debounce(reload, 500));
  familySelect.addEventListener('change', () => { fillSelects(); reload(); });
  versionSelect.addEventListener('change', reload);
  onlineSelect.addEventListener('change', reload);
  moreButton.addEventListener('click', loadMore);

  const refresh = coalescer(async () => {
    await Promise.all([loadSummary(), loadDevices({ keep: true })]);
  }, 2000);
  ctx.cleanup(() => refresh.stop());
  ctx.onEvent((event) => {
    if (event.type === 'resync' || event.type.startsWith('execution.') || event.type.startsWith('job.')
      || event.type.startsWith('device.') || event.type.startsWith('firmware.')) {
      refresh();
    }
  });
  ctx.every(30_000, refresh);

  await Promise.all([loadSummary(), loadDevices()]);
}

// ---- device page ------------------------------------------------------------

export async function renderDevice(ctx, id) {
  ctx.setTitle(`Device ${id}`);
  const head = h('div', { class: 'page-head' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/fleet' }, 'Fleet'), ' / '),
    h('h1', { class: 'mono' }, id));
  const infoBox = h('section', { class: 'panel', 'aria-labelledby': 'device-info-heading' },
    h('h2', { id: 'device-info-heading' }, 'Device'), loading('Loading the device…'));
  const execList = h('div', { class: 'executions', id: 'device-executions' }, loading('Loading updates…'));
  const moreButton = h('button', { type: 'button', class: 'button secondary', hidden: true }, 'Load older updates');
  ctx.root.append(head, infoBox,
    h('section', { class: 'panel', 'aria-labelledby': 'device-exec-heading' },
      h('h2', { id: 'device-exec-heading' }, 'Updates'),
      h('p', { class: 'muted' }, 'Executions of this device, newest first.'),
      execList,
      h('div', { class: 'actions' }, moreButton)));

  let executions = [];
  let nextCursor = null;
  const open = new Map(); // execution id → timeline container
  const jobNames = new Map();
  let seq = 0;
  let autoOpen = true; // open the newest timeline until the user chooses

  async function loadDevice() {
    try {
      const d = await get(`/devices/${encodeURIComponent(id)}`);
      if (!ctx.alive) return;
      setChildren(infoBox,
        h('h2', { id: 'device-info-heading' }, 'Device'),
        defList([
          ['Family', d.family],
          ['Model', d.model],
          ['Gateway', d.gateway_id ? deviceLink(d.gateway_id) : null],
          ['Installed firmware', [d.installed_version ? h('span', { class: 'mono' }, d.installed_version) : h('span', { class: 'muted' }, 'unknown'), ' ', driftBadge(d)]],
          d.drift ? ['Expected firmware', h('span', { class: 'mono' }, d.expected_version)] : null,
          ['Security counter', String(d.security_counter)],
          ['Connection', presence(d)],
          ['Last presence', timeEl(d.presence_at)],
          ['Hardware', Object.keys(d.hardware ?? {}).length ? tagChips(d.hardware) : h('span', { class: 'muted' }, 'not said')],
          d.last_status !== undefined ? ['Last update', badge(d.last_status ?? null)] : null,
          ['Tags', tagChips(d.tags)],
          ['Last seen', timeEl(d.last_seen)],
          ['Registered', timeEl(d.created_at, { relative: false })],
          ['Updated', timeEl(d.updated_at, { relative: false })],
        ], { id: 'device-fields' }));
    } catch (err) {
      if (!ctx.alive) return;
      setChildren(infoBox, h('h2', { id: 'device-info-heading' }, 'Device'), errorBox(err));
    }
  }

  function toggleTimeline(execution, button, container) {
    const expanded = button.getAttribute('aria-expanded') === 'true';
    autoOpen = false;
    if (expanded) {
      button.setAttribute('aria-expanded', 'false');
      button.textContent = 'Show timeline';
      container.hidden = true;
      open.delete(execution.id);
    } else {
      button.setAttribute('aria-expanded', 'true');
      button.textContent = 'Hide timeline';
      container.hidden = false;
      open.set(execution.id, container);
      loadTimeline(container, execution.id);
    }
  }

  function executionCard(e, expand, previous = null) {
    const container = h('div', { class: 'timeline-box', id: `timeline-${e.id}`, hidden: !expand });
    if (previous) container.append(...previous.childNodes);
    const button = h('button', {
      type: 'button', class: 'button link', 'aria-expanded': expand ? 'true' : 'false', 'aria-controls': `timeline-${e.id}`,
    }, expand ? 'Hide timeline' : 'Show timeline');
    button.addEventListener('click', () => toggleTimeline(e, button, container));
    if (expand) {
      open.set(e.id, container);
      loadTimeline(container, e.id, { quiet: Boolean(previous) });
    }
    const jobName = jobNames.get(e.job_id);
    return h('article', { class: 'execution', dataset: { testid: 'execution', status: e.status, executionId: e.id } },
      h('header', { class: 'execution-head' },
        badge(e.status),
        h('a', { href: `#/jobs/${e.job_id}`, class: 'execution-job', dataset: { jobId: e.job_id } }, jobName ? jobName : `Job ${shortId(e.job_id)}`),
        h('span', { class: 'muted' }, `execution ${e.id}`),
        e.batch_group !== null && e.batch_group !== undefined ? h('span', { class: 'muted' }, `batch ${e.batch_group + 1}`) : null,
        h('span', { class: 'muted' }, `${e.attempts} attempt${e.attempts === 1 ? '' : 's'}`),
        isInFlight(e.status) ? progressCell(e.progress, e.status) : null,
        h('span', { class: 'muted' }, 'updated ', timeEl(e.updated_at)),
        button),
      e.last_error ? h('p', { class: 'exec-error' }, h('strong', {}, `${statusLabel(e.status)}: `), e.last_error) : null,
      container);
  }

  function renderExecutions() {
    const first = executions[0]?.id;
    const wasOpen = new Map(open);
    open.clear();
    if (executions.length === 0) {
      setChildren(execList, emptyState(h('p', {}, 'No updates yet: this device has not been part of a job.')));
    } else {
      setChildren(execList, executions.map((e) => executionCard(e,
        autoOpen && wasOpen.size === 0 ? e.id === first : wasOpen.has(e.id), wasOpen.get(e.id) ?? null)));
    }
    moreButton.hidden = !nextCursor;
  }

  async function fillJobNames() {
    const missing = [...new Set(executions.map((e) => e.job_id))].filter((j) => !jobNames.has(j)).slice(0, 20);
    if (missing.length === 0) return;
    const results = await Promise.allSettled(missing.map((j) => get(`/jobs/${j}`)));
    if (!ctx.alive) return;
    results.forEach((r, i) => {
      jobNames.set(missing[i], r.status === 'fulfilled' && r.value.name ? r.value.name : `Job ${shortId(missing[i])}`);
    });
    for (const link of execList.querySelectorAll('a.execution-job')) {
      const name = jobNames.get(link.dataset.jobId);
      if (name) link.textContent = name;
    }
  }

  async function loadExecutions({ keep = false } = {}) {
    const mySeq = ++seq;
    const limit = keep ? Math.min(1000, Math.max(20, executions.length)) : 20;
    try {
      const page = await get(`/devices/${encodeURIComponent(id)}/executions`, { limit });
      if (!ctx.alive || mySeq !== seq) return;
      executions = page.items;
      nextCursor = page.next_cursor ?? null;
      renderExecutions();
      fillJobNames().catch(() => {});
    } catch (err) {
      if (!ctx.alive || mySeq !== seq) return;
      setChildren(execList, errorBox(err, { context: 'Updates' }));
    }
  }

  moreButton.addEventListener('click', async () => {
    if (!nextCursor) return;
    const mySeq = seq;
    moreButton.disabled = true;
    try {
      const page = await get(`/devices/${encodeURIComponent(id)}/executions`, { limit: 20, cursor: nextCursor });
      if (!ctx.alive || mySeq !== seq) return;
      executions = executions.concat(page.items);
      nextCursor = page.next_cursor ?? null;
      for (const e of page.items) execList.append(executionCard(e, false));
      moreButton.hidden = !nextCursor;
      fillJobNames().catch(() => {});
    } catch (err) {
      if (ctx.alive) execList.append(errorBox(err, { context: 'Older updates' }));
    } finally {
      moreButton.disabled = false;
    }
  });

  const refresh = coalescer(async () => {
    await Promise.all([loadDevice(), loadExecutions({ keep: true })]);
  }, 1000);
  ctx.cleanup(() => refresh.stop());
  ctx.onEvent((event) => {
    if (event.type === 'resync') { refresh(); return; }
    const env = event.envelope ?? {};
    const about = (env.aggregate_type === 'device' && env.aggregate_id === id) || event.payload?.device_id === id;
    if (about) refresh();
  });
  ctx.every(30_000, refresh);

  await Promise.all([loadDevice(), loadExecutions()]);
}

/** Flags a device that runs another version than Rollway installed or was told. */
function driftBadge(d) {
  if (!d.drift) return null;
  return h('span', {
    class: 'badge small tone-warn drift',
    title: `Flashed outside Rollway: runs ${d.installed_version ?? 'an unknown version'}, Rollway expects ${d.expected_version}`,
  }, 'drift');
}
