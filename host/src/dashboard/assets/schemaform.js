// Forms drawn from a plugin's JSON Schema of its configuration
// (`config_schema` in GET /plugins): one field per property, its
// description as help, its default as the placeholder. A field left empty
// leaves its key out, so the plugin's default applies. The server checks
// the result against the same schema; the form only catches what it can
// see (numbers that are not numbers, JSON that does not parse).

import { h, setChildren } from './dom.js';

/** Whether a schema describes an object the form can draw. */
export function hasForm(schema) {
  return Boolean(schema && typeof schema === 'object' && schema.properties
    && typeof schema.properties === 'object' && Object.keys(schema.properties).length > 0);
}

function typeOf(prop) {
  const t = Array.isArray(prop.type) ? prop.type.find((x) => x !== 'null') : prop.type;
  return t ?? (Array.isArray(prop.enum) ? typeof prop.enum[0] : undefined);
}

function simpleItems(prop) {
  const t = typeOf(prop.items ?? {});
  return t === 'number' || t === 'integer' || t === 'string';
}

function describe(value) {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/**
 * The form of `schema`, holding `value`. Ids are `${idPrefix}-${property}`.
 * Returns { el, read() -> { value, errors: [[id, message]] }, fill(value) }.
 */
export function schemaForm(schema, value, idPrefix) {
  const fields = Object.entries(schema.properties).map(([name, prop]) => field(name, prop ?? {}, `${idPrefix}-${name}`));
  const el = h('div', { class: 'form-grid schema-form', dataset: { schemaFor: idPrefix } },
    fields.map((f) => f.el));
  // Keys the schema does not name (set through JSON) are kept as they were.
  let extras = {};
  const fill = (config) => {
    for (const f of fields) f.set(config && Object.hasOwn(config, f.name) ? config[f.name] : undefined);
    extras = Object.fromEntries(Object.entries(config ?? {}).filter(([k]) => !Object.hasOwn(schema.properties, k)));
  };
  fill(value);
  const read = () => {
    const result = { ...extras };
    const errors = [];
    for (const f of fields) {
      const got = f.get();
      if (got.error) errors.push([f.id, `${f.name}: ${got.error}`]);
      else if (got.value !== undefined) result[f.name] = got.value;
    }
    return { value: result, errors };
  };
  return { el, read, fill };
}

function field(name, prop, id) {
  const type = typeOf(prop);
  const helpText = [prop.description, prop.default !== undefined ? `Default: ${describe(prop.default)}.` : null]
    .filter(Boolean).join(' ');
  const help = helpText ? h('p', { class: 'help', id: `${id}-help` }, helpText) : null;
  const described = help ? { 'aria-describedby': `${id}-help` } : {};
  let input;
  let get;
  let set;
  if (Array.isArray(prop.enum) || type === 'boolean') {
    const choices = Array.isArray(prop.enum) ? prop.enum : [true, false];
    input = h('select', { id, ...described },
      h('option', { value: '' }, prop.default !== undefined ? `default (${describe(prop.default)})` : '—'),
      choices.map((c, i) => h('option', { value: String(i) }, describe(c))));
    get = () => ({ value: input.value === '' ? undefined : choices[Number(input.value)] });
    set = (v) => {
      const at = choices.findIndex((c) => JSON.stringify(c) === JSON.stringify(v));
      input.value = at >= 0 ? String(at) : '';
    };
  } else if (type === 'integer' || type === 'number') {
    input = h('input', {
      id, type: 'number', inputmode: type === 'integer' ? 'numeric' : 'decimal',
      step: type === 'integer' ? '1' : 'any',
      min: prop.minimum ?? null, max: prop.maximum ?? null,
      placeholder: prop.default !== undefined ? String(prop.default) : '', ...described,
    });
    get = () => {
      const raw = input.value.trim();
      if (raw === '') return { value: undefined };
      const n = Number(raw);
      if (!Number.isFinite(n)) return { error: 'not a number' };
      if (type === 'integer' && !Number.isInteger(n)) return { error: 'must be a whole number' };
      return { value: n };
    };
    set = (v) => { input.value = v === undefined ? '' : String(v); };
  } else if (type === 'array' && simpleItems(prop)) {
    const itemType = typeOf(prop.items);
    input = h('input', {
      id, type: 'text', autocomplete: 'off', spellcheck: 'false',
      placeholder: Array.isArray(prop.default) ? prop.default.join(', ') : 'separated by commas', ...described,
    });
    get = () => {
      const raw = input.value.trim();
      if (raw === '') return { value: undefined };
      const parts = raw.split(/[\s,]+/).filter(Boolean);
      if (itemType === 'string') return { value: parts };
      const numbers = parts.map(Number);
      if (numbers.some((n) => !Number.isFinite(n))) return { error: 'list numbers separated by commas' };
      if (itemType === 'integer' && numbers.some((n) => !Number.isInteger(n))) return { error: 'list whole numbers' };
      return { value: numbers };
    };
    set = (v) => { input.value = Array.isArray(v) ? v.join(', ') : ''; };
  } else if (type === 'string') {
    input = h('input', {
      id, type: 'text', autocomplete: 'off', spellcheck: 'false',
      maxlength: prop.maxLength ?? null, placeholder: prop.default ?? '', ...described,
    });
    get = () => ({ value: input.value === '' ? undefined : input.value });
    set = (v) => { input.value = v ?? ''; };
  } else {
    input = h('input', { id, type: 'text', class: 'mono', autocomplete: 'off', spellcheck: 'false', placeholder: 'JSON', ...described });
    get = () => {
      const raw = input.value.trim();
      if (raw === '') return { value: undefined };
      try {
        return { value: JSON.parse(raw) };
      } catch (err) {
        return { error: `not valid JSON: ${err.message}` };
      }
    };
    set = (v) => { input.value = v === undefined ? '' : JSON.stringify(v); };
  }
  const label = h('label', { for: id }, h('code', {}, name), prop.title ? ` ${prop.title}` : null);
  const el = h('div', { class: 'field', dataset: { property: name } }, label, input, help);
  return { name, id, el, get, set };
}

/**
 * A configuration editor: the schema's form when the plugin gives one,
 * with a switch to raw JSON; the JSON box alone otherwise. `ids.input` is
 * the JSON box's id, `ids.toggle` the switch's.
 * Returns { el, read() -> { value, errors }, setSchema(schema, value) }.
 */
export function configEditor({ ids, rows = 7, onError }) {
  const textarea = h('textarea', { id: ids.input, rows: String(rows), spellcheck: 'false', class: 'mono', 'aria-label': 'Configuration (JSON)' });
  const toggle = h('button', { type: 'button', id: ids.toggle, class: 'button secondary small' });
  const holder = h('div', { class: 'config-editor' });
  let schema = null;
  let form = null;
  let asJson = true;

  const jsonValue = () => {
    const text = textarea.value.trim();
    if (!text) return { value: {}, errors: [] };
    try {
      const value = JSON.parse(text);
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        return { errors: [[ids.input, 'The configuration must be a JSON object, e.g. {"batches":[10,50,100]}.']] };
      }
      return { value, errors: [] };
    } catch (err) {
      return { errors: [[ids.input, `Not valid JSON: ${err.message}`]] };
    }
  };
  const show = () => {
    toggle.hidden = !form;
    toggle.textContent = asJson ? 'Edit as a form' : 'Edit as JSON';
    setChildren(holder, asJson || !form ? textarea : form.el);
  };
  toggle.addEventListener('click', () => {
    if (!form) return;
    if (asJson) {
      const got = jsonValue();
      if (got.errors.length) {
        onError?.(got.errors);
        return;
      }
      form.fill(got.value);
    } else {
      const got = form.read();
      if (got.errors.length) {
        onError?.(got.errors);
        return;
      }
      textarea.value = formatJson(got.value);
    }
    asJson = !asJson;
    show();
  });

  const editor = {
    el: h('div', {}, h('div', { class: 'actions config-mode' }, toggle), holder),
    read() {
      if (asJson || !form) return jsonValue();
      return form.read();
    },
    /** Shows `value` under `schema` (a form when it can draw one). */
    setSchema(next, value) {
      schema = hasForm(next) ? next : null;
      form = schema ? schemaForm(schema, value, ids.input) : null;
      asJson = !form;
      textarea.value = formatJson(value);
      show();
    },
    usesForm() {
      return !asJson && Boolean(form);
    },
  };
  return editor;
}

/** One key per line, values compact: easy to read and to edit. */
export function formatJson(config) {
  const entries = Object.entries(config ?? {});
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([k, v]) => `  ${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(',\n')}\n}`;
}
