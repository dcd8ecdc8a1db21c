// Plugins: what is loaded, its health, its settings, and (admins) upload,
// enable, disable and configure.

import { ApiError, get, post, put, upload } from './api.js';
import {
  h, setChildren, badge, errorBox, loading, emptyState, fmtNumber, fmtBytes, fmtDateTime, table, coalescer, notice, shortId,
} from './dom.js';
import { listPlugins } from './parts.js';
import { configEditor } from './schemaform.js';

export async function renderPlugins(ctx) {
  ctx.setTitle('Plugins');
  const isAdmin = ctx.can('admin');
  const columns = [
    { label: 'Name' }, { label: 'Kind' }, { label: 'Version' }, { label: 'WIT version' }, { label: 'Families' },
    { label: 'Source' }, { label: 'State' }, { label: 'Calls', className: 'num' }, { label: 'Traps', className: 'num' },
    { label: 'Settings' },
  ];
  if (isAdmin) columns.push({ label: 'Actions' });
  const { el: tableEl, tbody } = table({ id: 'plugins-table', caption: 'Loaded plugins', columns });
  const listBox = h('div', { class: 'list-status' });
  const actionResult = h('div', { class: 'action-result', 'aria-live': 'polite' });
  const uploadForm = isAdmin ? buildUpload(ctx, () => refresh()) : null;
  const settingsPanel = h('section', { class: 'panel', id: 'plugin-settings', 'aria-labelledby': 'plugin-settings-heading', hidden: true });

  ctx.root.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Plugins')),
    h('p', { class: 'muted intro' },
      'Rollout strategies and device families run as sandboxed WebAssembly components. A plugin that fails five calls in a row is disabled until an admin enables it again.'),
    h('section', { class: 'panel', 'aria-label': 'Plugin list' },
      actionResult,
      h('div', { class: 'table-wrap' }, tableEl),
      listBox),
    settingsPanel,
    uploadForm,
  );
  let plugins = [];

  async function setState(plugin, enable) {
    if (!enable && !window.confirm(`Disable ${plugin.name}? Calls to it are refused until it is enabled again${plugin.kind === 'device' ? `; ${plugin.families.join(', ')} devices cannot be updated meanwhile` : '; jobs using it stop advancing'}.`)) {
      return;
    }
    setChildren(actionResult);
    try {
      const updated = await post(`/plugins/${encodeURIComponent(plugin.name)}/${enable ? 'enable' : 'disable'}`);
      if (!ctx.alive) return;
      setChildren(actionResult, notice(`${updated.name} is ${updated.state}.`, { fade: 6000 }));
      refresh();
    } catch (err) {
      if (ctx.alive) setChildren(actionResult, errorBox(err, { context: `${enable ? 'Enable' : 'Disable'} ${plugin.name}` }));
    }
  }

  function row(p) {
    return h('tr', { dataset: { plugin: p.name } },
      h('td', {}, h('strong', { class: 'mono' }, p.name),
        p.description ? h('span', { class: 'muted sub' }, p.description) : null,
        h('span', { class: 'muted sub mono', title: `SHA-256 ${p.sha256}` }, `sha256 ${shortId(p.sha256, 12)}…`)),
      h('td', {}, p.kind),
      h('td', { class: 'mono' }, p.version),
      h('td', { class: 'mono', dataset: { wit: p.wit_version } }, p.wit_version),
      h('td', {}, p.families?.length ? p.families.join(', ') : h('span', { class: 'muted' }, '—')),
      h('td', {}, p.source),
      h('td', {}, badge(p.state),
        p.disabled_reason ? h('span', { class: 'row-note' }, p.disabled_reason) : null),
      h('td', { class: 'num', dataset: { calls: p.calls } }, fmtNumber(p.calls)),
      h('td', { class: ['num', p.traps > 0 ? 'has-traps' : null], dataset: { traps: p.traps } }, fmtNumber(p.traps)),
      h('td', { dataset: { configVersion: p.config_version } },
        h('button', { type: 'button', class: 'button secondary small', 'aria-label': `Settings of ${p.name}`, onclick: () => openSettings(p.name) },
          p.config_version > 0 ? `v${p.config_version}` : 'defaults')),
      isAdmin ? h('td', {}, p.state === 'enabled'
        ? h('button', { type: 'button', class: 'button secondary small', 'aria-label': `Disable ${p.name}`, onclick: () => setState(p, false) }, 'Disable')
        : h('button', { type: 'button', class: 'button primary small', 'aria-label': `Enable ${p.name}`, onclick: () => setState(p, true) }, 'Enable')) : null);
  }

  async function load() {
    try {
      plugins = await listPlugins();
      if (!ctx.alive) return;
      plugins.sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind.localeCompare(b.kind)));
      setChildren(tbody, plugins.map(row));
      setChildren(listBox, plugins.length === 0 ? emptyState(h('p', {}, 'No plugins are loaded.')) : null);
    } catch (err) {
      if (ctx.alive) setChildren(listBox, errorBox(err, { context: 'Plugins' }));
    }
  }

  /** Shows a plugin's settings in force: a form from its schema, or JSON. */
  async function openSettings(name) {
    const plugin = plugins.find((p) => p.name === name);
    if (!plugin) return;
    settingsPanel.hidden = false;
    setChildren(settingsPanel, h('h2', { id: 'plugin-settings-heading' }, `Settings of ${name}`), loading('Loading settings…'));
    let current;
    try {
      current = await get(`/plugins/${encodeURIComponent(name)}/config`);
    } catch (err) {
      if (ctx.alive) setChildren(settingsPanel, h('h2', { id: 'plugin-settings-heading' }, `Settings of ${name}`), errorBox(err));
      return;
    }
    if (!ctx.alive) return;
    const result = h('div', { id: 'plugin-settings-result', 'aria-live': 'polite' });
    const editor = configEditor({
      ids: { input: 'plugin-config', toggle: 'plugin-config-mode' },
      onError: (errors) => setChildren(result, configProblem(errors)),
    });
    editor.setSchema(plugin.config_schema, current.config);
    const save = isAdmin ? h('button', { type: 'submit', id: 'plugin-config-save', class: 'button primary' }, 'Save settings') : null;
    const version = h('p', { class: 'muted', id: 'plugin-config-version' });
    const showVersion = (c) => setChildren(version, c.version > 0
      ? `Version ${c.version}, set by ${c.set_by} on ${fmtDateTime(c.set_at)}.`
      : 'Never set: the plugin\u2019s own defaults apply.');
    showVersion(current);
    const form = h('form', { id: 'plugin-config-form', class: 'stack', novalidate: true },
      h('p', { class: 'help' }, plugin.kind === 'device'
        ? `Passed to every call of ${name} (${plugin.families.join(', ')}), on every replica within seconds.`
        : `Defaults under each new job\u2019s rollout configuration (a job\u2019s own keys win); jobs that exist keep theirs.`),
      version,
      editor.el,
      isAdmin ? h('div', { class: 'actions' }, save) : null);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!isAdmin) return;
      const got = editor.read();
      if (got.errors.length) {
        setChildren(result, configProblem(got.errors));
        return;
      }
      save.disabled = true;
      try {
        const saved = await put(`/plugins/${encodeURIComponent(name)}/config`, { config: got.value, expected_version: current.version });
        if (!ctx.alive) return;
        current = saved;
        showVersion(saved);
        setChildren(result, notice(`Saved: ${name} settings version ${saved.version}.`, { fade: 8000 }));
        refresh();
      } catch (err) {
        if (ctx.alive) {
          setChildren(result, errorBox(err, {
            context: err instanceof ApiError && err.status === 409 ? 'Changed meanwhile: reload the settings' : 'Settings refused',
          }));
        }
      } finally {
        if (save) save.disabled = false;
      }
    });
    setChildren(settingsPanel, h('h2', { id: 'plugin-settings-heading' }, `Settings of ${name}`), form, result);
    settingsPanel.scrollIntoView({ block: 'nearest' });
  }

  const refresh = coalescer(load, 1000);
  ctx.cleanup(() => refresh.stop());
  ctx.onEvent((event) => {
    if (event.type === 'resync' || event.type.startsWith('plugin.')) refresh();
  });
  // Call and trap counters move without events.
  ctx.every(15_000, refresh);
  setChildren(listBox, loading('Loading plugins…'));
  await load();
}

function buildUpload(ctx, onUploaded) {
  const fileInput = h('input', { id: 'plugin-file', type: 'file', accept: '.wasm,application/wasm', required: true, 'aria-describedby': 'plugin-file-help' });
  const submit = h('button', { type: 'submit', id: 'plugin-submit', class: 'button primary' }, 'Upload plugin');
  const progress = h('progress', { id: 'plugin-progress', max: '100', value: '0', 'aria-label': 'Upload progress', hidden: true });
  const result = h('div', { id: 'plugin-result', 'aria-live': 'polite' });
  const form = h('form', { id: 'plugin-upload', class: 'stack', novalidate: true },
    h('div', { class: 'field' },
      h('label', { for: 'plugin-file' }, 'Plugin component (.wasm)'),
      fileInput,
      h('p', { class: 'help', id: 'plugin-file-help' },
        'A component built against rollway:plugin. A plugin with the same name is replaced. Check one first with ',
        h('code', {}, 'rollway plugin check FILE.wasm'), '.')),
    h('div', { class: 'actions' }, submit, progress));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const file = fileInput.files?.[0];
    if (!file) {
      setChildren(result, h('div', { class: 'error', role: 'alert' },
        h('strong', { class: 'error-title' }, 'Choose a file'), h('p', { class: 'error-detail' }, 'Select the .wasm component to upload.')));
      fileInput.focus();
      return;
    }
    submit.disabled = true;
    progress.hidden = false;
    progress.max = file.size || 1;
    progress.value = 0;
    setChildren(result, h('p', { class: 'loading', role: 'status' }, `Uploading ${file.name} (${fmtBytes(file.size)})…`));
    try {
      const plugin = await upload('/plugins', file, {
        contentType: 'application/wasm',
        onProgress: (loaded, total) => { progress.max = total || 1; progress.value = Math.min(loaded, total || 1); },
      });
      progress.value = progress.max;
      if (!ctx.alive) return;
      setChildren(result, h('div', { class: 'result-ok', role: 'status' },
        h('p', { class: 'result-title' }, h('strong', {}, 'Loaded: '), `${plugin.name} ${plugin.version}`),
        h('dl', { class: 'deflist' },
          [['Kind', plugin.kind], ['WIT version', plugin.wit_version], ['Families', (plugin.families ?? []).join(', ') || '—'],
            ['State', plugin.state], ['SHA-256', plugin.sha256]]
            .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))));
      form.reset();
      onUploaded();
    } catch (err) {
      if (ctx.alive) setChildren(result, errorBox(err, { context: err.status === 422 ? 'Plugin refused' : 'Upload failed' }));
    } finally {
      submit.disabled = false;
    }
  });
  return h('section', { class: 'panel', 'aria-labelledby': 'plugin-upload-heading' },
    h('h2', { id: 'plugin-upload-heading' }, 'Upload a plugin'), form, result);
}

function configProblem(errors) {
  return h('div', { class: 'error', role: 'alert' },
    h('strong', { class: 'error-title' }, 'Check the settings'),
    errors.map(([, message]) => h('p', { class: 'error-detail' }, message)));
}
