// Firmware images: the list and the upload form (validated by the
// family's device plugin on the server).

import { ApiError, get, getAll, upload } from './api.js';
import {
  h, setChildren, errorBox, loading, emptyState, timeEl, fmtBytes, fmtNumber, table, coalescer, shortId,
} from './dom.js';
import { listPlugins, familiesOf, forgetFirmware } from './parts.js';

const PAGE = 100;

/** Flattens the plugin's metadata into [label, value] pairs. */
export function metadataPairs(metadata) {
  const pairs = [];
  if (!metadata || typeof metadata !== 'object') return pairs;
  const label = (key) => key.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
  for (const [key, value] of Object.entries(metadata)) {
    if (key === 'details' && value && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) pairs.push([label(k), typeof v === 'string' ? v : JSON.stringify(v)]);
    } else if (value === null || value === undefined) {
      continue;
    } else if (typeof value === 'object') {
      pairs.push([label(key), JSON.stringify(value)]);
    } else {
      pairs.push([label(key), String(value)]);
    }
  }
  return pairs;
}

function metadataSummary(metadata) {
  const pairs = metadataPairs(metadata);
  if (pairs.length === 0) return h('span', { class: 'muted' }, '—');
  const text = pairs.map(([k, v]) => `${k}: ${v}`).join(' · ');
  return h('span', { class: 'meta-summary', title: text }, text);
}

export async function renderFirmware(ctx) {
  ctx.setTitle('Firmware');
  const canUpload = ctx.can('operator');
  const listBox = h('div', { class: 'list-status' });
  const familyFilter = h('select', { id: 'firmware-family-filter' }, h('option', { value: '' }, 'All families'));
  const { el: tableEl, tbody } = table({
    id: 'firmware-table', caption: 'Firmware images',
    columns: [
      { label: 'Family' }, { label: 'Version' }, { label: 'Size', className: 'num' },
      { label: 'Security counter', className: 'num' }, { label: 'SHA-256' },
      { label: 'Metadata' }, { label: 'Uploaded' },
      ...(canUpload ? [{ label: 'Actions' }] : []),
    ],
  });
  const moreButton = h('button', { type: 'button', class: 'button secondary', hidden: true }, 'Load more');

  const uploadSection = canUpload ? buildUploadForm(ctx, () => { forgetFirmware(); refresh(); }) : null;

  ctx.root.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Firmware')),
    uploadSection ? uploadSection.el : null,
    h('section', { class: 'panel', 'aria-labelledby': 'firmware-list-heading' },
      h('div', { class: 'panel-head' }, h('h2', { id: 'firmware-list-heading' }, 'Images')),
      h('div', { class: 'toolbar' },
        h('div', { class: 'field inline' }, h('label', { for: 'firmware-family-filter' }, 'Family'), familyFilter)),
      h('div', { class: 'table-wrap' }, tableEl),
      listBox,
      h('div', { class: 'actions' }, moreButton)),
  );

  let rows = [];
  let nextCursor = null;
  let seq = 0;

  function row(f) {
    return h('tr', { dataset: { firmwareId: f.id } },
      h('td', {}, f.family),
      h('td', { class: 'mono' }, f.version),
      h('td', { class: 'num', title: `${fmtNumber(f.size)} bytes` }, fmtBytes(f.size)),
      h('td', { class: 'num' }, String(f.security_counter ?? 0),
        f.downgrade_allowed_by
          ? h('span', {
            class: 'badge small tone-warn',
            title: `Allowed as a downgrade by ${f.downgrade_allowed_by}: ${f.downgrade_reason ?? ''}`,
          }, 'downgrade allowed')
          : null),
      h('td', {}, h('code', { class: 'sha', title: f.sha256, tabindex: '0', 'aria-label': `SHA-256 ${f.sha256}` }, `${shortId(f.sha256, 12)}…`)),
      h('td', { class: 'meta-cell' }, metadataSummary(f.metadata)),
      h('td', {}, timeEl(f.created_at), h('span', { class: 'muted by' }, ` by ${f.created_by}`)),
      canUpload ? h('td', {}, h('a', {
        href: `#/jobs/new?firmware=${encodeURIComponent(f.id)}`, class: 'small-link',
        'aria-label': `Roll out ${f.family} ${f.version}`,
      }, 'Roll out…')) : null);
  }

  function renderRows() {
    setChildren(tbody, rows.map(row));
    moreButton.hidden = !nextCursor;
    if (rows.length === 0) {
      setChildren(listBox, emptyState(
        h('p', { class: 'empty-title' }, familyFilter.value ? `No ${familyFilter.value} firmware yet` : 'No firmware yet'),
        h('p', {}, canUpload ? 'Upload an image with the form above, or ' : 'An operator uploads images here or with ',
          h('code', {}, 'POST /api/v1/firmware?family=…&version=…'), '.')));
    } else {
      setChildren(listBox);
    }
  }

  async function load({ keep = false } = {}) {
    const mySeq = ++seq;
    const limit = keep ? Math.min(1000, Math.max(PAGE, rows.length)) : PAGE;
    if (rows.length === 0) setChildren(listBox, loading('Loading firmware…'));
    try {
      const page = await get('/firmware', { family: familyFilter.value || undefined, limit });
      if (!ctx.alive || mySeq !== seq) return;
      rows = page.items;
      nextCursor = page.next_cursor ?? null;
      renderRows();
    } catch (err) {
      if (!ctx.alive || mySeq !== seq) return;
      setChildren(listBox, errorBox(err, { context: 'Firmware' }));
    }
  }

  moreButton.addEventListener('click', async () => {
    if (!nextCursor) return;
    const mySeq = seq;
    moreButton.disabled = true;
    try {
      const page = await get('/firmware', { family: familyFilter.value || undefined, limit: PAGE, cursor: nextCursor });
      if (!ctx.alive || mySeq !== seq) return;
      rows = rows.concat(page.items);
      nextCursor = page.next_cursor ?? null;
      renderRows();
    } catch (err) {
      if (ctx.alive) setChildren(listBox, errorBox(err, { context: 'Firmware' }));
    } finally {
      moreButton.disabled = false;
    }
  });
  familyFilter.addEventListener('change', () => { rows = []; load(); });

  const refresh = coalescer(() => load({ keep: true }), 1000);
  ctx.cleanup(() => refresh.stop());
  ctx.onEvent((event) => {
    if (event.type === 'resync' || event.type.startsWith('firmware.')) {
      forgetFirmware();
      refresh();
    }
    if (event.type.startsWith('plugin.') && uploadSection) uploadSection.reloadFamilies();
  });

  const families = listPlugins().then((plugins) => familiesOf(plugins)).catch(() => []);
  families.then((list) => {
    if (!ctx.alive) return;
    fillFamilies(familyFilter, list);
  });
  await load();
}

function fillFamilies(select, families) {
  const current = select.value;
  setChildren(select, h('option', { value: '' }, 'All families'), families.map((f) => h('option', { value: f }, f)));
  select.value = current;
}

/** The upload form; `onUploaded` runs after a successful upload. */
function buildUploadForm(ctx, onUploaded) {
  const fileInput = h('input', { id: 'fw-file', name: 'file', type: 'file', required: true, 'aria-describedby': 'fw-file-help' });
  const familySelect = h('select', { id: 'fw-family', name: 'family', required: true },
    h('option', { value: '' }, 'Loading families…'));
  const versionInput = h('input', {
    id: 'fw-version', name: 'version', type: 'text', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'read from the image', 'aria-describedby': 'fw-version-help',
  });
  const counterInput = h('input', {
    id: 'fw-counter', name: 'security_counter', type: 'number', min: '0', step: '1', inputmode: 'numeric',
    placeholder: 'from the image, else 0', 'aria-describedby': 'fw-counter-help',
  });
  const submit = h('button', { type: 'submit', id: 'fw-submit', class: 'button primary' }, 'Upload and validate');
  const progress = h('progress', { id: 'fw-progress', max: '100', value: '0', 'aria-label': 'Upload progress' });
  const progressText = h('span', { class: 'progress-text', id: 'fw-progress-text' }, '');
  const progressWrap = h('div', { class: 'upload-progress', hidden: true }, progress, progressText);
  const result = h('div', { id: 'fw-result', 'aria-live': 'polite' });
  const fieldErrors = {
    file: h('p', { class: 'field-error', id: 'fw-file-error', hidden: true }),
    family: h('p', { class: 'field-error', id: 'fw-family-error', hidden: true }),
    version: h('p', { class: 'field-error', id: 'fw-version-error', hidden: true }),
    security_counter: h('p', { class: 'field-error', id: 'fw-counter-error', hidden: true }),
  };

  const form = h('form', { id: 'firmware-upload', class: 'form-grid', novalidate: true },
    h('div', { class: 'field' },
      h('label', { for: 'fw-file' }, 'Image file'),
      fileInput,
      h('p', { class: 'help', id: 'fw-file-help' }, 'The raw image as built for the device (e.g. an ESP-IDF .bin).'),
      fieldErrors.file),
    h('div', { class: 'field' },
      h('label', { for: 'fw-family' }, 'Family'),
      familySelect,
      fieldErrors.family),
    h('div', { class: 'field' },
      h('label', { for: 'fw-version' }, 'Version (optional)'),
      versionInput,
      h('p', { class: 'help', id: 'fw-version-help' }, 'Leave empty to record the version the image carries.'),
      fieldErrors.version),
    h('div', { class: 'field' },
      h('label', { for: 'fw-counter' }, 'Security counter (optional)'),
      counterInput,
      h('p', { class: 'help', id: 'fw-counter-help' },
        'Anti-rollback: devices refuse images below the counter they run. Raise it with a release that fixes a vulnerability.'),
      fieldErrors.security_counter),
    h('div', { class: 'actions span-all' }, submit, progressWrap),
  );

  const el = h('section', { class: 'panel', 'aria-labelledby': 'fw-upload-heading' },
    h('h2', { id: 'fw-upload-heading' }, 'Upload firmware'),
    h('p', { class: 'muted' }, 'The family\u2019s device plugin checks the image and extracts its metadata before it is stored.'),
    form,
    result);

  function setFieldError(name, message) {
    const box = fieldErrors[name];
    const input = { file: fileInput, family: familySelect, version: versionInput, security_counter: counterInput }[name];
    if (message) {
      box.textContent = message;
      box.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-errormessage', box.id);
    } else {
      box.textContent = '';
      box.hidden = true;
      input.removeAttribute('aria-invalid');
      input.removeAttribute('aria-errormessage');
    }
  }

  async function reloadFamilies() {
    try {
      const plugins = await listPlugins();
      if (!ctx.alive) return;
      const families = familiesOf(plugins, { enabledOnly: true });
      const current = familySelect.value;
      setChildren(familySelect, h('option', { value: '' }, families.length ? 'Choose a family…' : 'No device plugin is enabled'),
        families.map((f) => h('option', { value: f }, f)));
      familySelect.value = families.includes(current) ? current : (families.length === 1 ? families[0] : '');
    } catch (err) {
      if (!ctx.alive) return;
      setChildren(familySelect, h('option', { value: '' }, 'Families unavailable'));
      setChildren(result, errorBox(err, { context: 'Device families' }));
    }
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const file = fileInput.files?.[0];
    const family = familySelect.value;
    const version = versionInput.value.trim();
    const securityCounter = counterInput.value.trim();
    setFieldError('file', file ? null : 'Choose an image file.');
    setFieldError('family', family ? null : 'Choose the device family the image is for.');
    setFieldError('version', null);
    if (!file || !family) {
      (file ? familySelect : fileInput).focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Uploading…';
    if (version) {
      // The server refuses a known version before reading the body; say so
      // without sending the whole image first.
      const existing = await getAll('/firmware', { family }).catch(() => []);
      if (!ctx.alive) return;
      if (existing.some((f) => f.version === version)) {
        setFieldError('version', `${family} ${version} already exists.`);
        setChildren(result, errorBox(new ApiError({
          title: 'Conflict', detail: `${family} firmware ${version} already exists; give the image another version.`,
        }, 409), { context: 'Already uploaded' }));
        submit.disabled = false;
        submit.textContent = 'Upload and validate';
        return;
      }
    }
    progress.max = file.size || 1;
    progress.value = 0;
    progressText.textContent = `0 of ${fmtBytes(file.size)}`;
    progressWrap.hidden = false;
    setChildren(result, h('p', { class: 'loading', role: 'status' }, `Uploading ${file.name}…`));
    try {
      const firmware = await upload('/firmware', file, {
        query: { family, version: version || undefined, security_counter: securityCounter || undefined },
        onProgress: (loaded, total) => {
          progress.max = total || 1;
          progress.value = Math.min(loaded, total || 1);
          progressText.textContent = loaded >= total
            ? `${fmtBytes(total)} sent; validating…`
            : `${fmtBytes(loaded)} of ${fmtBytes(total)}`;
        },
      });
      progress.value = progress.max;
      progressText.textContent = `${fmtBytes(file.size)} uploaded`;
      if (!ctx.alive) return;
      setChildren(result, h('div', { class: 'result-ok', role: 'status' },
        h('p', { class: 'result-title' }, h('strong', {}, 'Accepted: '), `${firmware.family} ${firmware.version}`,
          h('span', { class: 'muted' }, ` (${fmtBytes(firmware.size)})`)),
        h('h3', {}, 'Extracted metadata'),
        h('dl', { class: 'deflist', id: 'fw-metadata' },
          [['Version', firmware.version], ['Security counter', String(firmware.security_counter)],
            ...metadataPairs(firmware.metadata), ['SHA-256', firmware.sha256]]
            .map(([k, v]) => [h('dt', {}, k), h('dd', { class: k === 'SHA-256' ? 'mono wrap' : null }, v)]))));
      form.reset();
      familySelect.value = family;
      onUploaded(firmware);
    } catch (err) {
      if (!ctx.alive) return;
      progressText.textContent = 'Not stored';
      const problem = err instanceof ApiError ? err.problem : null;
      for (const e of problem?.errors ?? []) {
        if (e.field === 'version') setFieldError('version', e.message);
        if (e.field === 'security_counter') setFieldError('security_counter', e.message);
        if (e.field === 'family') setFieldError('family', e.message);
      }
      let context = 'Upload failed';
      if (err.status === 422) context = 'Image refused';
      else if (err.status === 409) context = 'Already uploaded';
      else if (err.status === 413) context = 'Image too large';
      else if (err.status === 403) context = 'Not allowed';
      setChildren(result, errorBox(err, { context }));
    } finally {
      submit.disabled = false;
      submit.textContent = 'Upload and validate';
    }
  });

  reloadFamilies();
  return { el, reloadFamilies };
}
