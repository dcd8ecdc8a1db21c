// Rollway dashboard: sign-in, the shell (header, navigation, live
// indicator) and hash routing to the views.

import { ApiError, get, onUnauthorized, setToken } from './api.js';
import { LiveStream } from './live.js';
import { h, setChildren, errorBox, refreshRelativeTimes } from './dom.js';
import { renderFleet, renderDevice } from './fleet.js';
import { renderFirmware } from './firmware.js';
import { renderJobs, renderNewJob } from './jobs.js';
import { renderJob } from './job.js';
import { renderPlugins } from './plugins.js';

const TOKEN_KEY = 'rollway.token';
const ROLE_RANK = { viewer: 0, operator: 1, admin: 2 };

const main = document.getElementById('main');
const topbar = document.getElementById('topbar');
const whoami = document.getElementById('whoami');
const liveStatus = document.getElementById('live-status');
const signoutButton = document.getElementById('signout');

let me = null;
let current = null; // the mounted view's context

const live = new LiveStream({
  onUnauthorized: () => signOut('Your token is no longer accepted (it may have expired or been revoked). Sign in again.'),
  onState: showLiveState,
});

function showLiveState(state) {
  const live = state === 'live';
  liveStatus.dataset.state = live ? 'live' : 'connecting';
  liveStatus.setAttribute('aria-label', live ? 'Live updates: connected' : 'Live updates: reconnecting');
  liveStatus.title = live ? 'Receiving live updates' : 'The live update stream is reconnecting';
  liveStatus.querySelector('.live-text').textContent = live ? 'Live' : 'Reconnecting…';
}

// ---- view lifecycle ------------------------------------------------------

/** What a view gets: its root, the caller, and cleanups tied to its life. */
function makeContext(root) {
  const cleanups = [];
  const ctx = {
    root,
    me,
    alive: true,
    can(role) {
      return (ROLE_RANK[me?.role] ?? -1) >= (ROLE_RANK[role] ?? 99);
    },
    /** Listens to live events while the view is mounted. */
    onEvent(listener) {
      cleanups.push(live.subscribe((event) => { if (ctx.alive) listener(event); }));
    },
    /** Narrows the live stream to a job while the view is mounted. */
    liveScope(jobId) {
      live.setScope(jobId);
    },
    every(ms, fn) {
      const timer = setInterval(() => { if (ctx.alive) fn(); }, ms);
      cleanups.push(() => clearInterval(timer));
    },
    cleanup(fn) {
      cleanups.push(fn);
    },
    setTitle(title) {
      document.title = title ? `${title} · Rollway` : 'Rollway';
    },
    navigate(hash) {
      if (window.location.hash === hash) route();
      else window.location.hash = hash;
    },
    dispose() {
      ctx.alive = false;
      for (const fn of cleanups.splice(0)) {
        try { fn(); } catch { /* a cleanup must not stop the others */ }
      }
    },
  };
  return ctx;
}

const ROUTES = [
  [/^\/fleet$/, 'fleet', () => renderFleet],
  [/^\/devices\/(.+)$/, 'fleet', (m) => (ctx) => renderDevice(ctx, decodeURIComponent(m[1]))],
  [/^\/firmware$/, 'firmware', () => renderFirmware],
  [/^\/jobs$/, 'jobs', () => renderJobs],
  [/^\/jobs\/new$/, 'jobs', () => renderNewJob],
  [/^\/jobs\/([0-9a-fA-F-]{36})$/, 'jobs', (m) => (ctx) => renderJob(ctx, m[1].toLowerCase())],
  [/^\/plugins$/, 'plugins', () => renderPlugins],
];

function route() {
  if (!me) return;
  const hash = window.location.hash.replace(/^#/, '') || '/fleet';
  const path = hash.split('?')[0];
  if (path === '/' || path === '') {
    window.location.replace('#/fleet');
    return;
  }
  if (current) current.dispose();
  const root = h('div', { class: 'view' });
  setChildren(main, root);
  const ctx = makeContext(root);
  current = ctx;
  let section = null;
  let render = null;
  for (const [pattern, name, make] of ROUTES) {
    const match = path.match(pattern);
    if (match) {
      section = name;
      render = make(match);
      break;
    }
  }
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  // Pages other than a job's listen to every event.
  if (!/^\/jobs\/[0-9a-fA-F-]{36}$/.test(path)) live.setScope(null);
  if (!render) {
    ctx.setTitle('Not found');
    root.append(
      h('h1', {}, 'Page not found'),
      h('p', {}, 'There is no page at ', h('code', {}, `#${path}`), '. ', h('a', { href: '#/fleet' }, 'Go to the fleet'), '.'),
    );
    return;
  }
  try {
    const result = render(ctx);
    if (result && typeof result.catch === 'function') {
      result.catch((err) => {
        if (ctx.alive && !(err instanceof ApiError && err.status === 401)) root.append(errorBox(err));
      });
    }
  } catch (err) {
    root.append(errorBox(err));
    throw err;
  }
}

// ---- sign-in ----------------------------------------------------------

function showSignIn(message, { error = false, title = 'Signed out' } = {}) {
  if (current) {
    current.dispose();
    current = null;
  }
  topbar.hidden = true;
  document.title = 'Sign in · Rollway';
  const tokenInput = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    required: true, 'aria-describedby': 'token-help',
  });
  const status = h('div', { class: 'signin-status' });
  if (message) {
    status.append(error
      ? h('div', { class: 'error', role: 'alert' }, h('strong', { class: 'error-title' }, title), h('p', { class: 'error-detail' }, message))
      : h('div', { class: 'notice', role: 'status' }, message));
  }
  const submit = h('button', { type: 'submit', class: 'button primary' }, 'Sign in');
  const form = h('form', { id: 'signin-form', class: 'signin-form', novalidate: true },
    h('h1', {}, 'Rollway'),
    h('p', { class: 'muted' }, 'Over-the-air firmware updates. Sign in with an API token.'),
    h('div', { class: 'field' },
      h('label', { for: 'token' }, 'API token'),
      tokenInput,
      h('p', { id: 'token-help', class: 'help' },
        'A token starts with ', h('code', {}, 'rw_'), '. ', h('code', {}, 'rollway up'),
        ' prints an admin token; ', h('code', {}, 'rollway token create --role operator --name NAME'), ' makes others.'),
    ),
    status,
    h('div', { class: 'actions' }, submit),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = tokenInput.value.trim();
    if (!value) {
      setChildren(status, h('div', { class: 'error', role: 'alert' }, h('strong', { class: 'error-title' }, 'Enter a token'), h('p', { class: 'error-detail' }, 'The API token is required.')));
      tokenInput.setAttribute('aria-invalid', 'true');
      tokenInput.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    setChildren(status);
    try {
      const who = await get('/me', undefined, { auth: value, quiet401: true });
      signIn(value, who);
    } catch (err) {
      submit.disabled = false;
      submit.textContent = 'Sign in';
      tokenInput.setAttribute('aria-invalid', 'true');
      const context = err instanceof ApiError && err.status === 401 ? 'Token not accepted' : 'Sign-in failed';
      setChildren(status, errorBox(err, { context }));
      tokenInput.select();
    }
  });
  setChildren(main, h('div', { class: 'signin' }, form));
  tokenInput.focus();
}

function signIn(token, who) {
  me = who;
  setToken(token);
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage unavailable: the session lasts for this page only
  }
  topbar.hidden = false;
  setChildren(whoami,
    h('span', { class: 'whoami-name' }, who.name || 'token'),
    ' ',
    h('span', { class: ['role', `role-${who.role}`], title: `Role: ${who.role}` }, who.role));
  whoami.setAttribute('aria-label', `Signed in as ${who.name || 'token'}, role ${who.role}`);
  showLiveState('connecting');
  live.start(token);
  if (!window.location.hash || window.location.hash === '#' || window.location.hash === '#/') {
    window.location.replace('#/fleet');
  }
  route();
}

function signOut(message, error = true) {
  const wasSignedIn = me !== null;
  me = null;
  setToken(null);
  live.stop();
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // nothing stored
  }
  setChildren(whoami);
  if (wasSignedIn || message) showSignIn(message, { error });
}

onUnauthorized((err) => {
  if (!me) return;
  const detail = err?.problem?.detail ? ` (${err.problem.detail})` : '';
  signOut(`The server no longer accepts your token${detail}. Sign in again.`);
});

signoutButton.addEventListener('click', () => signOut('You signed out.', false));

window.addEventListener('hashchange', () => {
  if (!me) return;
  route();
  main.focus({ preventScroll: true });
  window.scrollTo(0, 0);
});

async function boot() {
  let stored = null;
  try {
    stored = sessionStorage.getItem(TOKEN_KEY);
  } catch {
    stored = null;
  }
  if (!stored) {
    showSignIn();
    return;
  }
  setChildren(main, h('p', { class: 'loading', role: 'status' }, 'Signing in…'));
  try {
    const who = await get('/me', undefined, { auth: stored, quiet401: true });
    signIn(stored, who);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      try {
        sessionStorage.removeItem(TOKEN_KEY);
      } catch {
        // nothing stored
      }
      showSignIn('Your saved token is no longer accepted. Sign in again.', { error: true });
    } else {
      // The server may be restarting: keep the token, let the user retry.
      showSignIn(`Could not check your saved token (${err?.problem?.title ?? err}). Reload the page to try again, or sign in.`, { error: true, title: 'Cannot reach Rollway' });
    }
  }
}

setInterval(() => { if (me) refreshRelativeTimes(main); }, 20_000);

boot();
