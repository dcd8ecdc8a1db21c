// Browser test of the Rollway dashboard, run by the Rust e2e test against a
// host serving a simulated ESP32 fleet:
//
//   ROLLWAY_URL=http://127.0.0.1:PORT/ ROLLWAY_ADMIN_TOKEN=… ROLLWAY_OPERATOR_TOKEN=…
//   ROLLWAY_VIEWER_TOKEN=… ROLLWAY_FIRMWARE=image.bin ROLLWAY_FIRMWARE_VERSION=2.0.0
//   ROLLWAY_SIM_DEVICES=20 ROLLWAY_ARTIFACTS=dir ROLLWAY_PLUGIN=rollout.wasm
//   [CHROMIUM=/usr/bin/chromium]
//   node tests/browser/dashboard.mjs
//
// Prints one line per passed step; on the first failure prints what went
// wrong with the page's visible text and console errors, saves
// failure.png in ROLLWAY_ARTIFACTS and exits 1.

import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

// ---- configuration ------------------------------------------------------------

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`dashboard test: environment variable ${name} is required`);
    process.exit(2);
  }
  return value;
}

const BASE = (() => {
  const url = required('ROLLWAY_URL');
  return url.endsWith('/') ? url : `${url}/`;
})();
const ADMIN_TOKEN = required('ROLLWAY_ADMIN_TOKEN');
const OPERATOR_TOKEN = required('ROLLWAY_OPERATOR_TOKEN');
const VIEWER_TOKEN = required('ROLLWAY_VIEWER_TOKEN');
const FIRMWARE = required('ROLLWAY_FIRMWARE');
const FIRMWARE_VERSION = required('ROLLWAY_FIRMWARE_VERSION');
const SIM_DEVICES = Number.parseInt(required('ROLLWAY_SIM_DEVICES'), 10);
const ARTIFACTS = required('ROLLWAY_ARTIFACTS');
const PLUGIN = required('ROLLWAY_PLUGIN');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

if (!Number.isInteger(SIM_DEVICES) || SIM_DEVICES < 1) {
  console.error('dashboard test: ROLLWAY_SIM_DEVICES must be a positive integer');
  process.exit(2);
}
mkdirSync(ARTIFACTS, { recursive: true });

/** The plugins page's enable and disable buttons (admins only). */
const STATE_BUTTONS = '#plugins-table button[aria-label^="Enable "], #plugins-table button[aria-label^="Disable "]';
const ROLLOUT_CONFIG = '{"batches":[20,60,100],"success_threshold":100,"failure_threshold":50}';
const BATCHES = 3;

// ---- helpers --------------------------------------------------------------------

let step = 0;
function pass(message) {
  step += 1;
  console.log(`ok ${step} - ${message}`);
}

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

/** Problems the steps provoke on purpose show up as failed resource loads. */
const DELIBERATE = /Failed to load resource: the server responded with a status of (401|403|409|422)\b/;

const consoleErrors = [];
let browser;
let page;
let confirmNext = false;

/** Clicks `selector`, accepting the confirmation dialog it opens. */
async function clickConfirmed(selector) {
  confirmNext = true;
  await page.locator(selector).click();
}

/**
 * Records every distinct text of `selector` with the time it appeared,
 * sampled every 50 ms in the page, until `stop()`.
 */
async function watchText(selector) {
  await page.evaluate((sel) => {
    const seen = [];
    let last = null;
    const timer = setInterval(() => {
      const now = document.querySelector(sel)?.textContent ?? null;
      if (now !== last) { seen.push([performance.now(), now]); last = now; }
    }, 50);
    window.__rollwayWatch = { seen, timer };
  }, selector);
  return {
    stop: () => page.evaluate(() => {
      clearInterval(window.__rollwayWatch.timer);
      return window.__rollwayWatch.seen;
    }),
  };
}

/** The most changes seen within any `windowMs` span. */
function changesWithin(seen, windowMs) {
  let best = 0;
  for (let i = 1; i < seen.length; i += 1) {
    let j = i;
    while (j + 1 < seen.length && seen[j + 1][0] - seen[i][0] <= windowMs) j += 1;
    best = Math.max(best, j - i + 1);
  }
  return best;
}

async function text(selector) {
  return (await page.locator(selector).first().textContent())?.trim() ?? '';
}

/** Waits until `selector`'s trimmed text equals `expected`; a clear error otherwise. */
async function waitText(selector, expected, timeout, what) {
  try {
    await page.waitForFunction(
      ([sel, want]) => document.querySelector(sel)?.textContent.trim() === want,
      [selector, expected],
      { timeout, polling: 200 },
    );
  } catch {
    const seen = await page.locator(selector).first().textContent({ timeout: 1000 }).catch(() => null);
    throw new CheckFailed(`${what}: expected ${selector} to read "${expected}" within ${timeout / 1000} s, it reads ${seen === null ? '(absent)' : `"${seen.trim()}"`}`);
  }
}

async function go(hash) {
  await page.locator(`a[href="${hash}"]`).first().click();
  await page.waitForFunction((h) => window.location.hash === h, hash, { timeout: 5000 });
}

async function signIn(token) {
  await page.locator('#signin-form').waitFor({ timeout: 15_000 });
  await page.fill('#token', token);
  await page.locator('#signin-form button[type="submit"]').click();
}

// ---- the steps --------------------------------------------------------------------

async function run() {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
      '--disable-quic', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    if (DELIBERATE.test(msg.text())) return;
    consoleErrors.push(`console.error: ${msg.text()}${msg.location()?.url ? ` (${msg.location().url}:${msg.location().lineNumber})` : ''}`);
  });
  page.on('pageerror', (err) => consoleErrors.push(`uncaught: ${err.stack || err.message}`));
  // Confirmations are declined unless a step expects one.
  page.on('dialog', (dialog) => {
    const answer = confirmNext ? dialog.accept() : dialog.dismiss();
    confirmNext = false;
    answer.catch(() => {});
  });

  // 1. sign-in
  await page.goto(BASE, { waitUntil: 'domcontentloaded' });
  await signIn('rw_this_token_does_not_exist');
  await page.locator('#signin-form .error[role="alert"]').waitFor({ timeout: 15_000 });
  pass('a bad token is refused with an error');
  await page.fill('#token', OPERATOR_TOKEN);
  await page.locator('#signin-form button[type="submit"]').click();
  await waitText('#whoami .role', 'operator', 15_000, 'operator sign-in');
  pass(`signed in with the operator token: ${await text('#whoami')}`);
  await page.locator('#live-status[data-state="live"]').waitFor({ timeout: 20_000 }).catch(() => {
    throw new CheckFailed('the live indicator never reached data-state="live": GET /api/v1/events/stream did not connect');
  });
  pass('the live event stream is connected');

  // 2. fleet
  await go('#/fleet');
  await waitText('#fleet-total', String(SIM_DEVICES), 30_000, 'fleet summary');
  const familyCount = await page.locator('[data-family-count="esp32"]').textContent().catch(() => null);
  check(familyCount?.trim() === String(SIM_DEVICES), `the esp32 summary card shows ${familyCount} devices, expected ${SIM_DEVICES}`);
  await page.locator('#devices-table tbody tr').first().waitFor();
  const deviceRows = await page.locator('#devices-table tbody tr').count();
  check(deviceRows === Math.min(SIM_DEVICES, 100), `the device table has ${deviceRows} rows, expected ${Math.min(SIM_DEVICES, 100)}`);
  pass(`fleet summary shows ${SIM_DEVICES} devices; the device table lists ${deviceRows}`);
  // The simulated devices announced themselves when they connected.
  await waitText('#fleet-online', String(SIM_DEVICES), 35_000, 'devices online');
  const rowsOnline = Math.min(SIM_DEVICES, 100);
  await page.waitForFunction(
    (want) => document.querySelectorAll('#devices-table tbody tr [data-online="true"]').length === want,
    rowsOnline, { timeout: 35_000, polling: 200 },
  ).catch(async () => {
    const online = await page.locator('#devices-table tbody tr [data-online="true"]').count();
    throw new CheckFailed(`${online} device rows show online, expected ${rowsOnline}`);
  });
  pass(`${SIM_DEVICES} devices online`);

  // 3. firmware upload, good and bad
  await go('#/firmware');
  await page.locator('#firmware-upload').waitFor();
  await page.locator('#fw-family option[value="esp32"]').waitFor({ state: 'attached' });
  await page.setInputFiles('#fw-file', FIRMWARE);
  await page.selectOption('#fw-family', 'esp32');
  await page.fill('#fw-version', FIRMWARE_VERSION);
  // A slow uplink, so that the upload takes a few seconds and its
  // progress shows in between.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 20, downloadThroughput: -1, uploadThroughput: 100 * 1024,
  });
  const progressWatch = await watchText('#fw-progress-text');
  await page.locator('#fw-submit').click();
  await page.locator('#fw-result .result-ok, #fw-result .error').first().waitFor({ timeout: 60_000 });
  const progressSeen = await progressWatch.stop();
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1,
  });
  if (await page.locator('#fw-result .error').count()) {
    throw new CheckFailed(`the firmware upload was refused: ${await text('#fw-result')}`);
  }
  const progress = await page.locator('#fw-progress').evaluate((el) => ({ value: el.value, max: el.max }));
  check(progress.max > 0 && progress.value === progress.max, `the upload progress bar stopped at ${progress.value} of ${progress.max}`);
  const partial = progressSeen.map(([, t]) => t).filter((t) => t && / of /.test(t) && !t.startsWith('0 of'));
  check(partial.length >= 2, `the upload showed no progress between start and end: ${JSON.stringify(progressSeen.map(([, t]) => t))}`);
  const result = await text('#fw-result');
  check(result.includes(FIRMWARE_VERSION), `#fw-result does not show the version ${FIRMWARE_VERSION}: "${result}"`);
  check(await page.locator('#fw-result dl dt').count() >= 2, '#fw-result shows no extracted metadata');
  await page.locator('#firmware-table tbody tr', { hasText: FIRMWARE_VERSION }).first().waitFor({ timeout: 10_000 });
  pass(`uploaded esp32 ${FIRMWARE_VERSION} on a slow link; progress went ${partial.join(' → ')}; metadata shown`);

  const junk = path.join(ARTIFACTS, 'junk-firmware.bin');
  const junkBytes = randomBytes(4096);
  junkBytes[0] = 0; // never an image magic byte
  writeFileSync(junk, junkBytes);
  await page.setInputFiles('#fw-file', junk);
  await page.selectOption('#fw-family', 'esp32');
  await page.fill('#fw-version', '');
  await page.locator('#fw-submit').click();
  await page.locator('#fw-result .error[role="alert"]').waitFor({ timeout: 30_000 });
  pass(`a junk image is refused: ${(await page.locator('#fw-result .error').innerText()).replace(/\s+/g, ' ').slice(0, 200)}`);

  // 4. new job
  await go('#/jobs');
  await page.locator('#new-job').click();
  await page.locator('#job-form').waitFor();
  await page.selectOption('#job-firmware', { label: `esp32 ${FIRMWARE_VERSION}` });
  await page.check('#target-filter');
  await page.selectOption('#filter-family', 'esp32');
  await page.fill('#filter-tags', 'fleet:simulated');
  await page.check('#start-now');
  await page.selectOption('#rollout-plugin', 'rollout-percent');
  // rollout-percent gives a JSON Schema: its configuration is a form.
  await page.locator('#rollout-config-batches').waitFor({ timeout: 5000 });
  check(await page.locator('#rollout-config-on_failure option').count() === 3,
    'the on_failure field is not a choice of default, abort and pause');
  pass('the rollout configuration is a form drawn from the plugin\u2019s schema');
  await page.locator('#rollout-config-mode').click();
  await page.fill('#rollout-config', '{"batches": [20, 60, 100],');
  await page.locator('#job-submit').click();
  await page.locator('#rollout-config-error').waitFor({ state: 'visible', timeout: 5000 });
  check(page.url().includes('#/jobs/new'), 'an invalid JSON configuration was sent anyway');
  pass('invalid rollout JSON is caught next to the field');
  await page.fill('#rollout-config', ROLLOUT_CONFIG);
  await page.locator('#rollout-config-mode').click();
  const batches = await page.locator('#rollout-config-batches').inputValue();
  check(batches === '20, 60, 100', `the form shows batches "${batches}" from the JSON, not "20, 60, 100"`);
  pass('JSON edited by hand carries over to the form');
  await page.fill('#job-windows', 'someday 22:00-05:00');
  await page.locator('#job-submit').click();
  await page.locator('#job-windows-error').waitFor({ state: 'visible', timeout: 5000 });
  check(page.url().includes('#/jobs/new'), 'a job with an unreadable window was sent anyway');
  pass(`an unreadable maintenance window is caught next to the field: ${await text('#job-windows-error')}`);
  await page.fill('#job-windows', '');
  // The dry run shows what the strategy would do, before anything is sent.
  const jobsBefore = await page.evaluate(() => document.querySelectorAll('#dry-run-steps').length);
  check(jobsBefore === 0, 'a dry run timeline shows before any dry run');
  await page.fill('#dry-flash', '0');
  await page.fill('#dry-power', '0');
  await page.locator('#dry-run').click();
  await page.locator('#dry-run-steps tbody tr').first().waitFor({ timeout: 30_000 }).catch(async () => {
    throw new CheckFailed(`the dry run showed no timeline: ${await text('#dry-run-result')}`);
  });
  const outcome = await text('#dry-run-outcome');
  check(outcome.includes('completed'), `a dry run without failures does not complete: "${outcome}"`);
  const starts = await page.locator('#dry-run-steps tbody tr[data-decision="start-next-batch"]').count();
  check(starts === 3, `the dry run of batches 20, 60, 100 started ${starts} groups, not 3`);
  check(page.url().includes('#/jobs/new'), 'the dry run left the new-job page');
  pass(`the dry run shows the timeline before the job exists: ${outcome.replace(/\s+/g, ' ').slice(0, 120)}; ${await text('#dry-run-plan')}`);
  await page.locator('#job-submit').click();
  await page.waitForFunction(() => /^#\/jobs\/[0-9a-f-]{36}$/.test(window.location.hash), null, { timeout: 30_000 })
    .catch(async () => {
      throw new CheckFailed(`the job was not created: ${await text('#job-form-errors') || 'no error shown'}`);
    });
  const jobHash = await page.evaluate(() => window.location.hash);
  await page.locator('#job-page').waitFor();
  pass(`job created: ${jobHash}`);

  // 5. the job runs, is paused and resumed, and completes, all live
  await page.evaluate(() => { window.__rollwayNoReload = true; });
  const navigations = await page.evaluate(() => performance.getEntriesByType('navigation').length);
  await waitText('#job-status', 'running', 60_000, 'job start');
  pass('the job is running');
  const pause = page.locator('#job-pause');
  if (await pause.isDisabled()) {
    throw new CheckFailed(`#job-pause is disabled while the job reads "${await text('#job-status')}" (did it finish before it could be paused? slow the simulator down)`);
  }
  await pause.click();
  await waitText('#job-status', 'paused', 15_000, 'pause');
  check(await page.locator('#job-resume').isEnabled(), '#job-resume is not enabled on a paused job');
  check(await page.locator('#job-pause').isDisabled(), '#job-pause is still enabled on a paused job');
  pass('paused');
  const countsWatch = await watchText('#job-counts');
  await page.locator('#job-resume').click();
  await waitText('#job-status', 'running', 15_000, 'resume');
  pass('resumed');
  await waitText('#job-status', 'completed', 120_000, 'completion');
  // The page re-reads the job every 15 s as a safety net; only the event
  // stream can move the counts several times within 10 s.
  const countsSeen = await countsWatch.stop();
  const burst = changesWithin(countsSeen, 10_000);
  check(burst >= 4, `the counts changed only ${burst} times within 10 s (${countsSeen.length} texts in all): updates do not arrive through the event stream`);
  pass(`the counts moved ${countsSeen.length - 1} times while the job ran, ${burst} of them within 10 s: driven by the event stream`);
  await waitText('#job-counts [data-status="done"]', String(SIM_DEVICES), 10_000, 'done count');
  const still = await page.evaluate(() => window.__rollwayNoReload === true);
  const navigationsAfter = await page.evaluate(() => performance.getEntriesByType('navigation').length);
  check(still && navigationsAfter === navigations, 'the page reloaded while the job ran');
  await page.screenshot({ path: path.join(ARTIFACTS, 'job-page.png'), fullPage: true });
  const batchRows = await page.locator('.batch-row').count();
  check(batchRows === BATCHES, `${batchRows} .batch-row elements, expected ${BATCHES}`);
  check(await page.locator('#job-pause').isDisabled() && await page.locator('#job-cancel').isDisabled(),
    'steering buttons are still enabled on a completed job');
  pass(`completed live (no reload): ${SIM_DEVICES} done in ${batchRows} batches; screenshot job-page.png`);

  // 6. a device's page
  await go('#/fleet');
  const doneRow = page.locator('#devices-table tbody tr', { has: page.locator('.badge.status-done') }).first();
  await doneRow.waitFor({ timeout: 30_000 });
  const deviceId = (await doneRow.getAttribute('data-device-id')) ?? '';
  await doneRow.locator('td').first().locator('a').click();
  await page.waitForFunction((id) => window.location.hash === `#/devices/${encodeURIComponent(id)}`, deviceId, { timeout: 5000 });
  const execution = page.locator('[data-testid="execution"][data-status="done"]').first();
  await execution.waitFor({ timeout: 15_000 });
  await execution.locator('.timeline .timeline-entry').first().waitFor({ timeout: 15_000 });
  const entries = await execution.locator('.timeline .timeline-entry').count();
  check(await execution.locator('.timeline .timeline-entry[data-status="done"]').count() >= 1,
    `the timeline of ${deviceId} has no done entry`);
  pass(`device ${deviceId} shows a done execution with a ${entries}-entry timeline`);

  // 7. search the fleet
  await go('#/fleet');
  await page.locator('#devices-table tbody tr').first().waitFor();
  const someId = await page.locator('#devices-table tbody tr').first().getAttribute('data-device-id');
  const stem = someId.slice(0, -1);
  const matching = await page.locator('#devices-table tbody tr').evaluateAll(
    (rows, prefix) => rows.filter((r) => r.dataset.deviceId.startsWith(prefix)).length, stem);
  await page.fill('#device-search', stem);
  await page.waitForFunction(([prefix, want]) => {
    const rows = [...document.querySelectorAll('#devices-table tbody tr')];
    return rows.length === want && rows.every((r) => r.dataset.deviceId.startsWith(prefix));
  }, [stem, matching], { timeout: 10_000 }).catch(async () => {
    throw new CheckFailed(`searching "${stem}" did not narrow the table to its ${matching} devices (it shows ${await page.locator('#devices-table tbody tr').count()})`);
  });
  await page.fill('#device-search', 'NO-SUCH-DEVICE');
  await page.locator('#devices-table tbody tr').first().waitFor({ state: 'detached', timeout: 10_000 });
  check((await page.locator('main').innerText()).includes('No devices'), 'an empty search shows no empty-state message');
  pass(`searching "${stem}" narrows the fleet to ${matching} devices; a search with no match says so`);

  // 8. a job by device ids, at a time: planned at once, then cancelled
  await go('#/jobs');
  await page.locator('#new-job').click();
  await page.locator('#job-form').waitFor();
  await page.selectOption('#job-firmware', { label: `esp32 ${FIRMWARE_VERSION}` });
  await page.check('#target-devices');
  const twoIds = [`${stem}0`, `${stem}1`];
  await page.fill('#target-ids', twoIds.join('\n'));
  await page.check('#start-at');
  const inAnHour = new Date(Date.now() + 3600_000);
  const local = new Date(inAnHour.getTime() - inAnHour.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
  await page.fill('#start-time', local);
  await page.locator('#job-submit').click();
  await page.waitForFunction((h) => /^#\/jobs\/[0-9a-f-]{36}$/.test(window.location.hash) && window.location.hash !== h, jobHash, { timeout: 30_000 })
    .catch(async () => {
      throw new CheckFailed(`the scheduled job was not created: ${await text('#job-form-errors') || 'no error shown'}`);
    });
  await waitText('#job-status', 'scheduled', 15_000, 'scheduled job');
  check(await page.locator('.batch-row').count() >= 1, 'a scheduled job shows no planned batches');
  check(await page.locator('#job-dist').getAttribute('aria-label') !== null, '#job-dist has no accessible label');
  await clickConfirmed('#job-cancel');
  await waitText('#job-status', 'cancelled', 15_000, 'cancel');
  await waitText('#job-counts [data-status="cancelled"]', '2', 10_000, 'cancelled count');
  const cancelledRow = page.locator('#executions-table tr.exec-row[data-status="cancelled"]').first();
  await cancelledRow.waitFor({ timeout: 10_000 });
  const reasonShown = (await cancelledRow.locator('td.error-cell').innerText()).trim();
  check(reasonShown.length > 1, 'a cancelled execution shows no reason');
  await cancelledRow.locator('button[aria-expanded]').click();
  await page.locator('.timeline-row .timeline-entry[data-status="cancelled"]').first().waitFor({ timeout: 10_000 });
  pass(`a job for ${twoIds.join(', ')} at ${local} is planned when created, cancelled (reason "${reasonShown}"), its timeline shows it`);

  // 9. an operator gets no plugin controls
  await go('#/plugins');
  await page.locator('#plugins-table tbody tr').first().waitFor();
  check(await page.locator(STATE_BUTTONS).count() === 0, 'an operator sees enable/disable buttons');
  check(await page.locator('#plugin-upload').count() === 0, 'an operator sees the plugin upload form');
  pass('an operator sees the plugins but no admin controls');

  // 10. the viewer sees and cannot steer
  await page.locator('#signout').click();
  await signIn(VIEWER_TOKEN);
  await waitText('#whoami .role', 'viewer', 15_000, 'viewer sign-in');
  pass(`signed out and in again as ${await text('#whoami')}`);
  await go('#/jobs');
  await page.locator(`#jobs-table a[href="${jobHash}"]`).waitFor();
  check(await page.locator('#new-job').count() === 0, 'a viewer sees #new-job');
  await page.locator(`#jobs-table a[href="${jobHash}"]`).click();
  await waitText('#job-status', 'completed', 15_000, 'viewer job page');
  for (const id of ['#job-pause', '#job-resume', '#job-cancel']) {
    check(await page.locator(id).count() === 0, `a viewer sees ${id}`);
  }
  pass('a viewer gets no New job, Pause, Resume or Cancel');
  await go('#/plugins');
  await page.locator('#plugins-table tbody tr').first().waitFor();
  for (const name of ['rollout-percent', 'device-esp32', 'device-stm32', 'device-jetson']) {
    const row = page.locator(`#plugins-table tbody tr[data-plugin="${name}"]`);
    check(await row.count() === 1, `plugin ${name} is not listed`);
    const wit = (await row.locator('td[data-wit]').textContent())?.trim();
    check(wit === '0.1.8', `plugin ${name} shows WIT version ${wit}, expected 0.1.8`);
  }
  check(await page.locator(STATE_BUTTONS).count() === 0, 'a viewer sees enable/disable buttons');
  check(await page.locator('#plugin-upload').count() === 0, 'a viewer sees the plugin upload form');
  await page.locator('#plugins-table button[aria-label="Settings of device-stm32"]').click();
  await page.locator('#plugin-config-chunk_size').waitFor({ timeout: 10_000 });
  check(await page.locator('#plugin-config-save').count() === 0, 'a viewer can save plugin settings');
  pass('plugins listed with WIT 0.1.8, settings readable, no admin controls for a viewer');

  // 11. an admin steers the plugins
  await page.locator('#signout').click();
  await signIn(ADMIN_TOKEN);
  await waitText('#whoami .role', 'admin', 15_000, 'admin sign-in');
  await go('#/plugins');
  const rollout = page.locator('#plugins-table tbody tr[data-plugin="rollout-percent"]');
  await rollout.waitFor();
  const calls = Number(await rollout.locator('td[data-calls]').getAttribute('data-calls'));
  check(calls > 0, `rollout-percent shows ${calls} calls after a whole rollout`);
  const stm32 = () => page.locator('#plugins-table tbody tr[data-plugin="device-stm32"]');
  await clickConfirmed('#plugins-table button[aria-label="Disable device-stm32"]');
  await stm32().locator('.badge', { hasText: 'disabled' }).waitFor({ timeout: 10_000 });
  await page.locator('#plugins-table button[aria-label="Enable device-stm32"]').click();
  await stm32().locator('.badge', { hasText: 'enabled' }).waitFor({ timeout: 10_000 });
  pass(`admin: rollout-percent made ${calls} calls; device-stm32 disabled and enabled again`);
  await page.locator('#plugins-table button[aria-label="Settings of device-stm32"]').click();
  await page.locator('#plugin-config-chunk_size').waitFor({ timeout: 10_000 });
  await page.fill('#plugin-config-chunk_size', '4');
  await page.locator('#plugin-config-save').click();
  await page.locator('#plugin-settings-result .error').waitFor({ timeout: 10_000 });
  const refusal = await text('#plugin-settings-result');
  check(/minimum of 8/.test(refusal), `a chunk size of 4 is refused without the schema's words: ${refusal}`);
  await page.fill('#plugin-config-chunk_size', '512');
  await page.selectOption('#plugin-config-bus', { label: 'can-fd' });
  await page.locator('#plugin-config-save').click();
  await page.locator('#plugin-config-version', { hasText: 'Version 1,' }).waitFor({ timeout: 10_000 });
  await page.locator('#plugins-table tbody tr[data-plugin="device-stm32"] td[data-config-version="1"]').waitFor({ timeout: 10_000 });
  pass('admin: device-stm32 settings refused at chunk size 4 with the schema\u2019s words, saved as version 1 from the form');
  await page.setInputFiles('#plugin-file', PLUGIN);
  await page.locator('#plugin-submit').click();
  await page.locator('#plugin-result .result-ok, #plugin-result .error').first().waitFor({ timeout: 30_000 });
  if (await page.locator('#plugin-result .error').count()) {
    throw new CheckFailed(`the plugin upload was refused: ${await text('#plugin-result')}`);
  }
  const loaded = (await text('#plugin-result .result-title')).replace(/^Loaded:\s*/, '');
  const uploadedName = loaded.split(' ')[0];
  await page.locator(`#plugins-table tbody tr[data-plugin="${uploadedName}"]`).waitFor({ timeout: 10_000 });
  pass(`admin uploaded ${path.basename(PLUGIN)}: ${loaded} is listed`);

  // 12. no script errors along the way
  check(consoleErrors.length === 0, `console errors during the run:\n  ${consoleErrors.join('\n  ')}`);
  pass('no console errors or uncaught exceptions');
}

async function report(err) {
  console.error(`\nnot ok ${step + 1} - ${err instanceof CheckFailed ? err.message : (err?.stack || err)}`);
  if (page) {
    try {
      console.error(`page: ${page.url()}`);
      const visible = await page.evaluate(() => document.body?.innerText ?? '');
      console.error(`visible text:\n${visible.trim().slice(0, 4000)}`);
    } catch (e) {
      console.error(`(could not read the page: ${e.message})`);
    }
    try {
      const file = path.join(ARTIFACTS, 'failure.png');
      await page.screenshot({ path: file, fullPage: true });
      console.error(`screenshot: ${file}`);
    } catch (e) {
      console.error(`(no screenshot: ${e.message})`);
    }
  }
  if (consoleErrors.length > 0) console.error(`console errors:\n  ${consoleErrors.join('\n  ')}`);
}

let code = 0;
try {
  await run();
  console.log(`dashboard: all ${step} checks passed`);
} catch (err) {
  await report(err);
  code = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(code);
