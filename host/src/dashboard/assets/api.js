// The REST client: bearer token, JSON, RFC 9457 problems as ApiError.

export const API_BASE = '/api/v1';

/** A refused or failed request; `problem` is the server's problem document. */
export class ApiError extends Error {
  constructor(problem, status) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.problem = {
      type: problem?.type ?? 'about:blank',
      title: problem?.title ?? (status ? `HTTP ${status}` : 'Request failed'),
      status: problem?.status ?? status,
      detail: problem?.detail ?? '',
      errors: Array.isArray(problem?.errors) ? problem.errors : [],
    };
  }
}

let token = null;
let unauthorizedHandler = null;

export function setToken(value) {
  token = value;
}

export function getToken() {
  return token;
}

/** Called with the ApiError when any request answers 401. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

function buildUrl(path, query) {
  const url = new URL(API_BASE + path, window.location.origin);
  if (query) {
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
    }
  }
  return url.pathname + url.search;
}

async function problemFrom(response) {
  const status = response.status;
  let text = '';
  try {
    text = await response.text();
  } catch {
    // body unreadable: fall through with the status alone
  }
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === 'object') return new ApiError(parsed, status);
  } catch {
    // not JSON
  }
  return new ApiError({ title: `HTTP ${status} ${response.statusText || ''}`.trim(), detail: text.slice(0, 500) }, status);
}

function networkError(err) {
  return new ApiError({
    type: 'urn:rollway:dashboard:network',
    title: 'Cannot reach the server',
    detail: err?.message ? `The request did not complete (${err.message}).` : 'The request did not complete.',
  }, 0);
}

/**
 * Calls the API. Options: query (object), body (JSON-serialised unless
 * `raw`), headers, signal, auth (a token overriding the session's),
 * quiet401 (do not trigger the global sign-out on 401).
 */
export async function api(method, path, options = {}) {
  const headers = new Headers(options.headers ?? {});
  const bearer = options.auth ?? token;
  if (bearer) headers.set('Authorization', `Bearer ${bearer}`);
  headers.set('Accept', 'application/json, application/problem+json');
  let body;
  if (options.body !== undefined) {
    if (options.raw) {
      body = options.body;
    } else {
      headers.set('Content-Type', 'application/json');
      body = JSON.stringify(options.body);
    }
  }
  let response;
  try {
    response = await fetch(buildUrl(path, options.query), {
      method, headers, body, signal: options.signal, cache: 'no-store', credentials: 'omit',
    });
  } catch (err) {
    if (err?.name === 'AbortError') throw err;
    throw networkError(err);
  }
  if (!response.ok) {
    const error = await problemFrom(response);
    if (response.status === 401 && !options.quiet401 && unauthorizedHandler) unauthorizedHandler(error);
    throw error;
  }
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, query, options = {}) => api('GET', path, { ...options, query });
export const post = (path, body, options = {}) => api('POST', path, { ...options, body });
export const put = (path, body, options = {}) => api('PUT', path, { ...options, body });

/**
 * Uploads a file with XMLHttpRequest so progress can be shown.
 * Resolves with the parsed JSON answer; rejects with an ApiError.
 * `onProgress(loaded, total)` is called as bytes leave.
 */
export function upload(path, file, { query, contentType = 'application/octet-stream', onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', buildUrl(path, query));
    if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    xhr.setRequestHeader('Content-Type', contentType);
    xhr.setRequestHeader('Accept', 'application/json, application/problem+json');
    xhr.responseType = 'text';
    if (onProgress) {
      xhr.upload.addEventListener('progress', (event) => {
        onProgress(event.loaded, event.lengthComputable ? event.total : file.size);
      });
    }
    xhr.addEventListener('load', () => {
      let parsed = null;
      try {
        parsed = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        parsed = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(parsed);
        return;
      }
      const error = new ApiError(parsed ?? { title: `HTTP ${xhr.status}`, detail: (xhr.responseText || '').slice(0, 500) }, xhr.status);
      if (xhr.status === 401 && unauthorizedHandler) unauthorizedHandler(error);
      reject(error);
    });
    xhr.addEventListener('error', () => reject(new ApiError({
      type: 'urn:rollway:dashboard:network',
      title: 'Upload interrupted',
      detail: 'The connection closed before the server answered. The server may have refused the upload early '
        + '(for example an image above the size limit), or it is unreachable.',
    }, 0)));
    xhr.addEventListener('abort', () => reject(networkError(new Error('aborted'))));
    xhr.send(file);
  });
}

/** Fetches every page of a paged list, up to `max` items. */
export async function getAll(path, query = {}, max = 5000) {
  const items = [];
  let cursor;
  do {
    const page = await get(path, { ...query, limit: 1000, cursor });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}
