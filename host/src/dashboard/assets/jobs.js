// Jobs: the list and the new-job form.

import { ApiError, get, post } from './api.js';
import {
  h, setChildren, badge, errorBox, loading, emptyState, timeEl, table, coalescer, shortId, JOB_STATUSES, uid,
} from './dom.js';
import { firmwareIndex, firmwareLabel, listPlugins, familiesOf, parseTags } from './parts.js';
import { configEditor } from './schemaform.js';

const PAGE = 50;

export function jobTitle(job) {
  return job.name ? job.name : `Job ${shortId(job.id)}`;
}

// ---- list -------------------------------------------------------------------

export async function renderJobs(ctx) {
  ctx.setTitle('Jobs');
  const canCreate = ctx.can('operator');
  const statusFilter = h('select', { id: 'jobs-status-filter' },
    h('option', { value: '' }, 'All statuses'),
    JOB_STATUSES.map((s) => h('option', { value: s }, s)));
  const { el: tableEl, tbody } = table({
    id: 'jobs-table', caption: 'Jobs, newest first',
    columns: [
      { label: 'Job' }, { label: 'Firmware' }, { label: 'Status' }, { label: 'Start' },
      { label: 'Rollout' }, { label: 'Created' }, { label: 'Started' }, { label: 'Finished' },
    ],
  });
  const listBox = h('div', { class: 'list-status' });
  const moreButton = h('button', { type: 'button', class: 'button secondary', hidden: true }, 'Load more');

  ctx.root.append(
    h('div', { class: 'page-head' },
      h('h1', {}, 'Jobs'),
      canCreate ? h('a', { id: 'new-job', class: 'button primary', href: '#/jobs/new' }, 'New job') : null),
    h('section', { class: 'panel', 'aria-label': 'Job list' },
      h('div', { class: 'toolbar' },
        h('div', { class: 'field inline' }, h('label', { for: 'jobs-status-filter' }, 'Status'), statusFilter)),
      h('div', { class: 'table-wrap' }, tableEl),
      listBox,
      h('div', { class: 'actions' }, moreButton)),
  );

  let rows = [];
  let nextCursor = null;
  let seq = 0;
  let firmware = new Map();

  function row(job) {
    const fw = firmware.get(job.firmware_id);
    return h('tr', { dataset: { jobId: job.id } },
      h('td', {},
        h('a', { href: `#/jobs/${job.id}` }, jobTitle(job)),
        job.name ? h('span', { class: 'muted mono sub' }, shortId(job.id)) : null),
      h('td', {}, firmwareLabel(fw, job.firmware_id)),
      h('td', {}, badge(job.status, { title: job.status_reason ?? undefined }),
        job.status_reason ? h('span', { class: 'row-note', title: job.status_reason }, job.status_reason) : null),
      h('td', {}, job.kind === 'scheduled' ? ['at ', timeEl(job.start_at, { relative: false })] : job.kind),
      h('td', {}, job.rollout_plugin),
      h('td', {}, timeEl(job.created_at), h('span', { class: 'muted by' }, ` by ${job.created_by}`)),
      h('td', {}, timeEl(job.started_at)),
      h('td', {}, timeEl(job.finished_at)));
  }

  function renderRows() {
    setChildren(tbody, rows.map(row));
    moreButton.hidden = !nextCursor;
    if (rows.length === 0) {
      setChildren(listBox, statusFilter.value
        ? emptyState(h('p', {}, `No ${statusFilter.value} jobs.`))
        : emptyState(h('p', { class: 'empty-title' }, 'No jobs yet'),
          h('p', {}, canCreate
            ? ['Create one with ', h('a', { href: '#/jobs/new' }, 'New job'), ' once firmware is uploaded.']
            : 'An operator creates jobs to roll firmware out to devices.')));
    } else {
      setChildren(listBox);
    }
  }

  async function load({ keep = false } = {}) {
    const mySeq = ++seq;
    const limit = keep ? Math.min(1000, Math.max(PAGE, rows.length)) : PAGE;
    if (rows.length === 0) setChildren(listBox, loading('Loading jobs…'));
    try {
      const [page, fw] = await Promise.all([
        get('/jobs', { status: statusFilter.value || undefined, limit }),
        firmwareIndex().catch(() => firmware),
      ]);
      if (!ctx.alive || mySeq !== seq) return;
      firmware = fw;
      rows = page.items;
      nextCursor = page.next_cursor ?? null;
      if (rows.some((j) => !firmware.has(j.firmware_id))) {
        firmwareIndex({ fresh: true }).then((fresh) => {
          if (!ctx.alive) return;
          firmware = fresh;
          renderRows();
        }).catch(() => {});
      }
      renderRows();
    } catch (err) {
      if (!ctx.alive || mySeq !== seq) return;
      setChildren(listBox, errorBox(err, { context: 'Jobs' }));
    }
  }

  moreButton.addEventListener('click', async () => {
    if (!nextCursor) return;
    const mySeq = seq;
    moreButton.disabled = true;
    try {
      const page = await get('/jobs', { status: statusFilter.value || undefined, limit: PAGE, cursor: nextCursor });
      if (!ctx.alive || mySeq !== seq) return;
      rows = rows.concat(page.items);
      nextCursor = page.next_cursor ?? null;
      renderRows();
    } catch (err) {
      if (ctx.alive) setChildren(listBox, errorBox(err, { context: 'Jobs' }));
    } finally {
      moreButton.disabled = false;
    }
  });
  statusFilter.addEventListener('change', () => { rows = []; load(); });

  const refresh = coalescer(() => load({ keep: true }), 1500);
  ctx.cleanup(() => refresh.stop());
  ctx.onEvent((event) => {
    if (event.type === 'resync' || event.type.startsWith('job.')) refresh();
  });
  ctx.every(30_000, refresh);
  await load();
}

// ---- new job ----------------------------------------------------------------

/** Example configurations offered when a rollout plugin is chosen. */
const CONFIG_EXAMPLES = {
  'rollout-percent': {
    batches: [10, 50, 100],
    success_threshold: 95,
    failure_threshold: 10,
    on_failure: 'abort',
    min_soak_secs: 0,
  },
};

const CONFIG_HELP = {
  'rollout-percent': () => [
    h('code', {}, 'batches'), ': cumulative percentages of the devices, the last one 100 (or ',
    h('code', {}, 'batch_size'), ': devices per batch); ',
    h('code', {}, 'success_threshold'), ': % of a batch that must succeed before the next starts (default 95); ',
    h('code', {}, 'failure_threshold'), ': % of a batch failed or timed out that stops the job (default 10); ',
    h('code', {}, 'on_failure'), ': ', h('code', {}, 'abort'), ' or ', h('code', {}, 'pause'), '; ',
    h('code', {}, 'min_soak_secs'), ': time a batch soaks before the next starts (default 0).',
  ],
};

function exampleConfig(plugin) {
  return CONFIG_EXAMPLES[plugin] ?? {};
}

/** Where a server field error is shown: [pattern, key of the error slot]. */
const FIELD_SLOTS = [
  [/^name$/, 'job-name'],
  [/^firmware_id/, 'job-firmware'],
  [/^targets\.devices/, 'target-ids'],
  [/^targets\.filter\.family/, 'filter-family'],
  [/^targets\.filter\.model/, 'filter-model'],
  [/^targets\.filter\.gateway_id/, 'filter-gateway'],
  [/^targets\.filter\.tags/, 'filter-tags'],
  [/^targets/, 'targets'],
  [/^start/, 'start'],
  [/^rollout\.plugin/, 'rollout-plugin'],
  [/^rollout\.config/, 'rollout-config'],
  [/^rollout/, 'rollout-plugin'],
  [/^device_timeout_secs/, 'device-timeout'],
  [/^max_retries/, 'max-retries'],
  [/^end$/, 'job-end'],
  [/^windows\.time_zone/, 'job-time-zone'],
  [/^windows/, 'job-windows'],
];

const DAY_NAMES = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];

/** Maintenance windows written one per line as `DAYS FROM-TO` (`mon-fri 22:00-05:00`). */
export function parseWindows(text) {
  const times = [];
  for (const line of text.split(/[\n;]+/).map((l) => l.trim()).filter(Boolean)) {
    const m = /^(\S+)\s+(\d{1,2}:\d{2}(?::\d{2})?)\s*-\s*(\d{1,2}:\d{2}(?::\d{2})?)$/.exec(line);
    if (!m) throw new Error(`"${line}" is not DAYS FROM-TO, e.g. mon-fri 22:00-05:00`);
    const days = [];
    for (const part of m[1].toLowerCase().split(',')) {
      if (part === 'daily') days.push(...DAY_NAMES);
      else if (part === 'weekdays') days.push(...DAY_NAMES.slice(0, 5));
      else if (part === 'weekends') days.push(...DAY_NAMES.slice(5));
      else {
        const [first, last = first] = part.split('-');
        let at = DAY_NAMES.indexOf(first);
        const end = DAY_NAMES.indexOf(last);
        if (at < 0 || end < 0) throw new Error(`"${part}" is not a day (mon … sun)`);
        for (;;) {
          days.push(DAY_NAMES[at]);
          if (at === end) break;
          at = (at + 1) % 7;
        }
      }
    }
    times.push({ days: [...new Set(days)], from: m[2], to: m[3] });
  }
  return times;
}

function queryOfHash() {
  const hash = window.location.hash;
  const q = hash.indexOf('?');
  return new URLSearchParams(q >= 0 ? hash.slice(q + 1) : '');
}

export async function renderNewJob(ctx) {
  ctx.setTitle('New job');
  ctx.root.append(h('div', { class: 'page-head' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / '),
    h('h1', {}, 'New job')));
  if (!ctx.can('operator')) {
    ctx.root.append(h('div', { class: 'error', role: 'alert' },
      h('strong', { class: 'error-title' }, 'Not allowed'),
      h('p', { class: 'error-detail' }, `Creating jobs needs the operator role; you are signed in as ${ctx.me.role}.`)));
    return;
  }
  const status = loading('Loading firmware and plugins…');
  ctx.root.append(status);
  let firmware;
  let plugins;
  try {
    [firmware, plugins] = await Promise.all([firmwareIndex({ fresh: true }), listPlugins()]);
  } catch (err) {
    if (ctx.alive) status.replaceWith(errorBox(err));
    return;
  }
  if (!ctx.alive) return;
  status.remove();

  const firmwareList = [...firmware.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  const rolloutPlugins = plugins.filter((p) => p.kind === 'rollout');
  const families = familiesOf(plugins);
  const preselect = queryOfHash().get('firmware');

  if (firmwareList.length === 0) {
    ctx.root.append(emptyState(h('p', { class: 'empty-title' }, 'No firmware yet'),
      h('p', {}, 'A job rolls out a firmware image: ', h('a', { href: '#/firmware' }, 'upload one first'), '.')));
    return;
  }

  const slots = new Map();
  const slot = (key) => {
    const el = h('p', { class: 'field-error', id: `${key}-error`, hidden: true });
    slots.set(key, el);
    return el;
  };
  const field = (id, labelText, input, help) => h('div', { class: 'field' },
    h('label', { for: id }, labelText), input,
    help ? h('p', { class: 'help', id: `${id}-help` }, help) : null,
    slot(id));

  const nameInput = h('input', { id: 'job-name', type: 'text', maxlength: '200', autocomplete: 'off', placeholder: 'e.g. esp32 2.0.0 to the north depot' });
  const firmwareSelect = h('select', { id: 'job-firmware', required: true },
    h('option', { value: '' }, 'Choose firmware…'),
    firmwareList.map((f) => h('option', { value: f.id }, `${f.family} ${f.version}`)));
  if (preselect && firmware.has(preselect)) firmwareSelect.value = preselect;

  const targetName = uid('targets');
  const targetFilter = h('input', { type: 'radio', id: 'target-filter', name: targetName, value: 'filter', checked: true });
  const targetDevices = h('input', { type: 'radio', id: 'target-devices', name: targetName, value: 'devices' });
  const filterFamily = h('select', { id: 'filter-family', 'aria-describedby': 'filter-family-help' },
    h('option', { value: '' }, 'The firmware\u2019s family'),
    families.map((f) => h('option', { value: f }, f)));
  const filterModel = h('input', { id: 'filter-model', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'any model' });
  const filterGateway = h('input', { id: 'filter-gateway', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'any gateway' });
  const filterTags = h('input', { id: 'filter-tags', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'site:north, fleet:simulated', 'aria-describedby': 'filter-tags-help' });
  const targetIds = h('textarea', { id: 'target-ids', rows: '5', spellcheck: 'false', placeholder: 'VIN123, VIN124\nESP32-000001', 'aria-describedby': 'target-ids-help' });
  const filterPanel = h('div', { class: 'subpanel', id: 'target-filter-panel' },
    h('div', { class: 'form-grid' },
      field('filter-family', 'Family', filterFamily, 'Devices of another family cannot take this firmware.'),
      field('filter-model', 'Model', filterModel),
      field('filter-gateway', 'Gateway', filterGateway),
      field('filter-tags', 'Tags', filterTags, 'key:value pairs separated by commas; a device must carry all of them.')));
  const devicesPanel = h('div', { class: 'subpanel', id: 'target-devices-panel', hidden: true },
    field('target-ids', 'Device ids', targetIds, 'Separated by commas, spaces or new lines.'));

  const startName = uid('start');
  const startNow = h('input', { type: 'radio', id: 'start-now', name: startName, value: 'now', checked: true });
  const startEmergency = h('input', { type: 'radio', id: 'start-emergency', name: startName, value: 'emergency' });
  const startAt = h('input', { type: 'radio', id: 'start-at', name: startName, value: 'at' });
  const startTime = h('input', { id: 'start-time', type: 'datetime-local', disabled: true, 'aria-describedby': 'start-time-help' });

  const pluginSelect = h('select', { id: 'rollout-plugin' },
    rolloutPlugins.map((p) => h('option', { value: p.name, disabled: p.state !== 'enabled' },
      `${p.name} ${p.version}${p.state !== 'enabled' ? ' (disabled)' : ''}`)));
  const firstEnabled = rolloutPlugins.find((p) => p.name === 'rollout-percent' && p.state === 'enabled')
    ?? rolloutPlugins.find((p) => p.state === 'enabled');
  if (firstEnabled) pluginSelect.value = firstEnabled.name;
  // A form drawn from the plugin's JSON Schema when it gives one; JSON else.
  const schemaOf = (name) => rolloutPlugins.find((p) => p.name === name)?.config_schema;
  const config = configEditor({
    ids: { input: 'rollout-config', toggle: 'rollout-config-mode' },
    onError: (errors) => {
      clearErrors();
      for (const [, message] of errors) showFieldError('rollout-config', message);
    },
  });
  // A form starts empty, so the plugin's defaults (an admin's settings)
  // apply; the JSON box starts with an example.
  const startingConfig = (name) => (schemaOf(name) ? {} : exampleConfig(name));
  config.setSchema(schemaOf(pluginSelect.value), startingConfig(pluginSelect.value));
  const configHelp = h('p', { class: 'help', id: 'rollout-config-help' });
  const timeoutInput = h('input', { id: 'device-timeout', type: 'number', min: '1', max: '604800', step: '1', value: '3600', inputmode: 'numeric' });
  const retriesInput = h('input', { id: 'max-retries', type: 'number', min: '0', max: '10', step: '1', value: '0', inputmode: 'numeric' });
  const windowsInput = h('textarea', { id: 'job-windows', rows: '2', spellcheck: 'false', class: 'mono', placeholder: 'mon-fri 22:00-05:00', 'aria-describedby': 'job-windows-help' });
  const endInput = h('input', { id: 'job-end', type: 'datetime-local', 'aria-describedby': 'job-end-help' });
  const zoneInput = h('input', { id: 'job-time-zone', type: 'text', autocomplete: 'off', spellcheck: 'false', value: Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC' });
  const submit = h('button', { type: 'submit', id: 'job-submit', class: 'button primary' }, 'Create job');
  // The dry run: the strategy over these targets' plan, in virtual time.
  const rateInput = (cls, value) => h('input', { id: `dry-${cls}`, type: 'number', min: '0', max: '100', step: '0.1', value, inputmode: 'decimal' });
  const dryRates = { flash: rateInput('flash', '2'), power: rateInput('power', '1'), download: rateInput('download', '0'), timeout: rateInput('timeout', '0') };
  const drySeed = h('input', { id: 'dry-seed', type: 'number', min: '0', step: '1', value: '1', inputmode: 'numeric' });
  const dryUpdate = h('input', { id: 'dry-update', type: 'number', min: '1', max: '86400', step: '1', value: '300', inputmode: 'numeric' });
  const dryButton = h('button', { type: 'button', id: 'dry-run', class: 'button secondary' }, 'Dry run');
  const dryResult = h('div', { id: 'dry-run-result', 'aria-live': 'polite' });
  const formErrors = h('div', { id: 'job-form-errors' });

  const form = h('form', { id: 'job-form', class: 'job-form', novalidate: true },
    h('section', { class: 'panel' },
      h('h2', {}, 'What'),
      h('div', { class: 'form-grid' },
        field('job-name', 'Name (optional)', nameInput),
        field('job-firmware', 'Firmware', firmwareSelect))),
    h('section', { class: 'panel' },
      h('fieldset', { id: 'targets' },
        h('legend', {}, 'Targets'),
        slot('targets'),
        h('div', { class: 'radios' },
          h('span', { class: 'radio' }, targetFilter, h('label', { for: 'target-filter' }, 'By filter')),
          h('span', { class: 'radio' }, targetDevices, h('label', { for: 'target-devices' }, 'By device ids'))),
        filterPanel,
        devicesPanel)),
    h('section', { class: 'panel' },
      h('fieldset', { id: 'start' },
        h('legend', {}, 'Start'),
        slot('start'),
        h('div', { class: 'radios' },
          h('span', { class: 'radio' }, startNow, h('label', { for: 'start-now' }, 'Now')),
          h('span', { class: 'radio' }, startEmergency, h('label', { for: 'start-emergency' }, 'Emergency (now, ahead of other jobs)')),
          h('span', { class: 'radio' }, startAt, h('label', { for: 'start-at' }, 'At a time'))),
        h('div', { class: 'field' },
          h('label', { for: 'start-time' }, 'Start time (your local time)'),
          startTime,
          h('p', { class: 'help', id: 'start-time-help' }, 'Sent to the server in UTC.')))),
    h('section', { class: 'panel' },
      h('h2', {}, 'Rollout'),
      h('div', { class: 'form-grid' },
        field('rollout-plugin', 'Rollout plugin', pluginSelect),
        field('device-timeout', 'Device timeout (seconds)', timeoutInput, 'How long a device may take once its command is sent.'),
        field('max-retries', 'Max retries', retriesInput, 'Re-sends after an error or a timeout (0 to 10).'),
        field('job-windows', 'Maintenance windows (optional)', windowsInput, 'One per line, DAYS FROM-TO: mon-fri 22:00-05:00, weekends 00:00-23:59, daily 01:00-04:00. Outside them nothing new is sent.'),
        field('job-time-zone', 'Time zone of the windows', zoneInput),
        field('job-end', 'End (optional, your local time)', endInput, 'Nothing is sent after it; what is unfinished then ends expired.')),
      h('fieldset', { class: 'field', id: 'rollout-config-fields' },
        h('legend', {}, 'Rollout configuration'),
        configHelp,
        config.el,
        slot('rollout-config'))),
    h('section', { class: 'panel', id: 'dry-run-panel' },
      h('h2', {}, 'Dry run'),
      h('p', { class: 'help' }, 'What the strategy would do with these targets, before anything is sent: its plan, then its decisions in simulated time over a fleet that fails at these rates (percent of attempts). The same seed gives the same run.'),
      h('div', { class: 'form-grid' },
        field('dry-flash', 'Flash failures (%)', dryRates.flash),
        field('dry-power', 'Power failures (%)', dryRates.power),
        field('dry-download', 'Download failures (%)', dryRates.download),
        field('dry-timeout', 'Devices going silent (%)', dryRates.timeout),
        field('dry-update', 'Seconds a device takes', dryUpdate),
        field('dry-seed', 'Seed', drySeed)),
      h('div', { class: 'actions' }, dryButton),
      dryResult),
    formErrors,
    h('div', { class: 'actions' }, submit, h('a', { href: '#/jobs', class: 'button secondary' }, 'Cancel')),
  );
  ctx.root.append(form);

  if (rolloutPlugins.length === 0 || !firstEnabled) {
    formErrors.append(h('div', { class: 'error', role: 'alert' },
      h('strong', { class: 'error-title' }, 'No rollout plugin is enabled'),
      h('p', { class: 'error-detail' }, 'An admin enables one on the Plugins page.')));
  }

  // -- behaviour
  const updateTargets = () => {
    filterPanel.hidden = !targetFilter.checked;
    devicesPanel.hidden = !targetDevices.checked;
  };
  targetFilter.addEventListener('change', updateTargets);
  targetDevices.addEventListener('change', updateTargets);
  const updateStart = () => {
    startTime.disabled = !startAt.checked;
    if (startAt.checked && !startTime.value) {
      const soon = new Date(Date.now() + 3600_000);
      soon.setSeconds(0, 0);
      const pad = (n) => String(n).padStart(2, '0');
      startTime.value = `${soon.getFullYear()}-${pad(soon.getMonth() + 1)}-${pad(soon.getDate())}T${pad(soon.getHours())}:${pad(soon.getMinutes())}`;
    }
  };
  for (const r of [startNow, startEmergency, startAt]) r.addEventListener('change', updateStart);

  const syncFamily = () => {
    const fw = firmware.get(firmwareSelect.value);
    if (fw && families.includes(fw.family)) filterFamily.value = fw.family;
  };
  firmwareSelect.addEventListener('change', syncFamily);
  syncFamily();

  let lastExample = startingConfig(pluginSelect.value);
  const showConfigHelp = () => {
    const help = CONFIG_HELP[pluginSelect.value];
    setChildren(configHelp, schemaOf(pluginSelect.value)
      ? `Fields left empty take the defaults of ${pluginSelect.value} (an admin sets them on the Plugins page).`
      : help
        ? help()
        : `The configuration ${pluginSelect.value || 'the plugin'} accepts, as a JSON object.`);
  };
  pluginSelect.addEventListener('change', () => {
    // An edited configuration stays; the previous plugin's example goes.
    const current = config.read();
    const edited = current.errors.length > 0
      || (Object.keys(current.value).length > 0 && JSON.stringify(current.value) !== JSON.stringify(lastExample));
    lastExample = startingConfig(pluginSelect.value);
    config.setSchema(schemaOf(pluginSelect.value), edited && !current.errors.length ? current.value : lastExample);
    showConfigHelp();
  });
  showConfigHelp();

  function clearErrors() {
    for (const [key, el] of slots) {
      el.hidden = true;
      el.textContent = '';
      const input = document.getElementById(key);
      if (input && input.tagName !== 'FIELDSET') {
        input.removeAttribute('aria-invalid');
        input.removeAttribute('aria-errormessage');
      }
    }
    setChildren(formErrors);
  }

  /** Shows a message in a slot; returns false when no slot fits. */
  function showFieldError(key, message) {
    const el = slots.get(key);
    if (!el) return false;
    el.textContent = el.textContent ? `${el.textContent} ${message}` : message;
    el.hidden = false;
    const input = document.getElementById(key);
    if (input && input.tagName !== 'FIELDSET') {
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-errormessage', el.id);
    }
    return true;
  }

  function firstInvalid() {
    return form.querySelector('[aria-invalid="true"]');
  }

  /** Builds the request body, or returns null after showing what is wrong. */
  function buildRequest() {
    const errors = [];
    const body = {};
    const name = nameInput.value.trim();
    if (name) body.name = name;
    if (!firmwareSelect.value) errors.push(['job-firmware', 'Choose the firmware to roll out.']);
    else body.firmware_id = firmwareSelect.value;

    if (targetFilter.checked) {
      const filter = {};
      if (filterFamily.value) filter.family = filterFamily.value;
      if (filterModel.value.trim()) filter.model = filterModel.value.trim();
      if (filterGateway.value.trim()) filter.gateway_id = filterGateway.value.trim();
      try {
        filter.tags = parseTags(filterTags.value);
      } catch (err) {
        errors.push(['filter-tags', `${err.message}: write tags as key:value, separated by commas.`]);
      }
      const fw = firmware.get(firmwareSelect.value);
      if (fw && filter.family && filter.family !== fw.family) {
        errors.push(['filter-family', `The firmware is for ${fw.family}, not ${filter.family}.`]);
      }
      body.targets = { filter };
    } else {
      const ids = [...new Set(targetIds.value.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean))];
      if (ids.length === 0) errors.push(['target-ids', 'List at least one device id.']);
      body.targets = { devices: ids };
    }

    if (startNow.checked) body.start = 'now';
    else if (startEmergency.checked) body.start = 'emergency';
    else {
      const at = startTime.value ? new Date(startTime.value) : null;
      if (!at || Number.isNaN(at.getTime())) errors.push(['start', 'Choose the start time.']);
      else body.start = at.toISOString();
    }

    if (endInput.value) {
      const end = new Date(endInput.value);
      if (Number.isNaN(end.getTime())) errors.push(['job-end', 'Choose the end time.']);
      else body.end = end.toISOString();
    }
    if (windowsInput.value.trim()) {
      try {
        body.windows = { time_zone: zoneInput.value.trim() || 'UTC', times: parseWindows(windowsInput.value) };
      } catch (err) {
        errors.push(['job-windows', err.message]);
      }
    }
    const rolloutConfig = config.read();
    for (const [, message] of rolloutConfig.errors) errors.push(['rollout-config', message]);
    if (!pluginSelect.value) errors.push(['rollout-plugin', 'Choose a rollout plugin.']);
    body.rollout = { plugin: pluginSelect.value, config: rolloutConfig.value ?? {} };

    const timeout = Number(timeoutInput.value);
    if (!Number.isInteger(timeout) || timeout < 1 || timeout > 604800) {
      errors.push(['device-timeout', 'A whole number of seconds from 1 to 604800.']);
    } else body.device_timeout_secs = timeout;
    const retries = Number(retriesInput.value);
    if (!Number.isInteger(retries) || retries < 0 || retries > 10) {
      errors.push(['max-retries', 'A whole number from 0 to 10.']);
    } else body.max_retries = retries;

    if (errors.length > 0) {
      for (const [key, message] of errors) showFieldError(key, message);
      formErrors.append(h('div', { class: 'error', role: 'alert' },
        h('strong', { class: 'error-title' }, 'Check the form'),
        h('p', { class: 'error-detail' }, errors.length === 1 ? errors[0][1] : `${errors.length} fields need attention.`)));
      return null;
    }
    return body;
  }

  dryButton.addEventListener('click', async () => {
    clearErrors();
    const body = buildRequest();
    if (!body) {
      firstInvalid()?.focus();
      return;
    }
    const failRates = {};
    for (const [cls, input] of Object.entries(dryRates)) {
      const pct = Number(input.value);
      if (!Number.isFinite(pct) || pct < 0 || pct > 100) {
        showFieldError(`dry-${cls}`, 'A percentage from 0 to 100.');
        return;
      }
      if (pct > 0) failRates[cls] = pct / 100;
    }
    const { rollout, ...job } = body;
    const request = {
      fleet: { job },
      config: rollout.config,
      fail_rates: failRates,
      seed: Math.max(0, Math.trunc(Number(drySeed.value) || 0)),
      update_secs: Math.min(86400, Math.max(1, Math.trunc(Number(dryUpdate.value) || 300))),
      device_timeout_secs: body.device_timeout_secs,
      max_retries: body.max_retries,
    };
    dryButton.disabled = true;
    setChildren(dryResult, loading('Running the strategy over a simulated fleet…'));
    try {
      const run = await post(`/plugins/${encodeURIComponent(rollout.plugin)}/simulate`, request);
      if (!ctx.alive) return;
      setChildren(dryResult, dryRunView(run));
    } catch (err) {
      if (!ctx.alive) return;
      for (const e of (err instanceof ApiError ? err.problem.errors : [])) {
        const fieldName = e.field.replace(/^fleet\.job\./, '').replace(/^config/, 'rollout.config');
        const match = FIELD_SLOTS.find(([pattern]) => pattern.test(fieldName));
        if (match) showFieldError(match[1], e.message);
      }
      setChildren(dryResult, errorBox(err, { context: 'The dry run did not run' }));
    } finally {
      dryButton.disabled = false;
    }
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const body = buildRequest();
    if (!body) {
      firstInvalid()?.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Creating…';
    try {
      const job = await post('/jobs', body);
      if (!ctx.alive) return;
      ctx.navigate(`#/jobs/${job.id}`);
    } catch (err) {
      if (!ctx.alive) return;
      submit.disabled = false;
      submit.textContent = 'Create job';
      // Field errors go next to their inputs; the banner lists them all.
      for (const e of (err instanceof ApiError ? err.problem.errors : [])) {
        const match = FIELD_SLOTS.find(([pattern]) => pattern.test(e.field));
        if (match) showFieldError(match[1], e.message);
      }
      formErrors.append(errorBox(err, { context: err.status === 422 ? 'The job was not created' : 'Request failed' }));
      firstInvalid()?.focus();
      formErrors.scrollIntoView({ block: 'nearest' });
    }
  });
}

/** Virtual time as 1h02m, 4m05s or 12s. */
function virtualTime(secs) {
  const s = Math.round(secs);
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (hours > 0) return `${hours}h${String(minutes).padStart(2, '0')}m`;
  if (minutes > 0) return `${minutes}m${String(rest).padStart(2, '0')}s`;
  return `${rest}s`;
}

/** A dry run's plan, outcome and timeline. */
function dryRunView(run) {
  const decision = (step) => {
    const d = step.decision;
    switch (d.decision) {
      case 'start-next-batch': return `Start group ${step.group}${run.plan[step.group]?.label ? ` (${run.plan[step.group].label})` : ''}`;
      case 'wait': return step.evaluations > 1 ? `Wait (${step.evaluations} evaluations)` : 'Wait';
      case 'set-rate': return `Set rate to ${d.per_minute ?? 'unlimited'}/min`;
      case 'pause': return `Pause: ${d.reason}`;
      case 'abort': return `Abort: ${d.reason}`;
      case 'complete': return 'Complete';
      default: return d.decision;
    }
  };
  const steps = table({
    id: 'dry-run-steps',
    caption: 'Dry run timeline',
    columns: [
      { label: 'Time' }, { label: 'Decision' }, { label: 'Pending', className: 'num' }, { label: 'In flight', className: 'num' },
      { label: 'Done', className: 'num' }, { label: 'Failed', className: 'num' }, { label: 'Timed out', className: 'num' },
    ],
  });
  for (const step of run.steps) {
    const c = step.counts;
    steps.tbody.append(h('tr', { 'data-decision': step.decision.decision },
      h('td', {}, `+${virtualTime(step.at_secs)}`), h('td', {}, decision(step)),
      h('td', { class: 'num' }, String(c.pending)), h('td', { class: 'num' }, String(c.in_flight)),
      h('td', { class: 'num' }, String(c.succeeded)), h('td', { class: 'num' }, String(c.failed)),
      h('td', { class: 'num' }, String(c.timed_out))));
  }
  const plan = run.plan.map((g) => `${g.label || `group ${g.group}`}: ${g.size}`).join(' · ');
  return h('div', { class: 'dry-run' },
    h('p', { id: 'dry-run-outcome' },
      badge(run.outcome),
      ` ${run.outcome} after ${virtualTime(run.duration_secs)} of simulated time, ${run.devices} devices, ${run.evaluations} evaluations`,
      run.reason ? ` — ${run.reason}` : ''),
    h('p', { id: 'dry-run-plan', class: 'muted' }, `Plan: ${plan}`),
    steps.el);
}
