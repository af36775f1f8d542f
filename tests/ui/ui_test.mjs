// Browser test of the Switchyard web UI in real headless Chromium (playwright-core, no bundled
// browser). Driven by tests/it/ui.rs, which starts the demo backends and Switchyard; runnable by
// hand against any Switchyard the same way:
//
//   node tests/ui/ui_test.mjs ADMIN_URL LB_URL SCREENSHOT_DIR --add HOST:PORT --kill HOST:PORT \
//     --discovery FILE --discovered HOST:PORT --control DIR
//
//   --add        a running demo backend that is not configured yet: added through the UI's form
//   --kill       a configured, health-checked demo backend: the script makes its /healthz fail
//   --discovery  the JSON file an upstream's file discovery reads: the script rewrites it
//   --discovered a running demo backend not in that file yet: the script adds it there
//   --control    a directory through which the script asks its driver to stop the balancer
//                (it creates `stop` and waits for `stopped`) and start it again (`start`,
//                `started`) on the same admin address
//
// Checks, in order: the page loads without console errors and shows the configured backends;
// adding a backend through the form makes it appear and take traffic; a valid edit in the
// configuration editor shows its changes and applies; an invalid edit shows its error and changes
// nothing; a backend whose health check starts failing turns unhealthy on screen without a
// reload; the upstream fed by discovery shows its source and state, and a bad entry in its file
// with the entry's problem; with the balancer stopped the page says so and shows nothing as live
// (banner, greyed numbers, health unknown), and it recovers by itself when the balancer is back.
// Takes ui-overview.png, ui-phone.png, ui-config.png, ui-discovery.png and ui-offline.png in
// SCREENSHOT_DIR.
// Exit code 0 when every check passed; 1 (with the reason) otherwise; 2 for bad usage or setup.

import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT = 20_000;
const TOTAL_TIMEOUT = 180_000;

// ---- arguments and setup ----------------------------------------------------------------------

function usage(msg) {
  console.error(`error: ${msg}\nusage: node ui_test.mjs ADMIN_URL LB_URL SCREENSHOT_DIR --add HOST:PORT --kill HOST:PORT --discovery FILE --discovered HOST:PORT --control DIR`);
  process.exit(2);
}

const positional = [];
const flags = {};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a.startsWith('--')) flags[a.slice(2)] = process.argv[++i];
  else positional.push(a);
}
const [adminUrl, lbUrl, shotDir] = positional;
if (!adminUrl || !lbUrl || !shotDir) usage('ADMIN_URL, LB_URL and SCREENSHOT_DIR are required');
for (const f of ['add', 'kill', 'discovery', 'discovered', 'control']) if (!flags[f]) usage(`--${f} is required`);
const admin = adminUrl.replace(/\/$/, '');
const lb = lbUrl.replace(/\/$/, '');
const spare = flags.add;
const victim = flags.kill;
const discoveryFile = flags.discovery;
const newlyDiscovered = flags.discovered;
const control = flags.control;

if (!existsSync(CHROMIUM)) {
  console.error(`error: ${CHROMIUM} not found. Install Debian's chromium (apt-get install -y chromium) or set CHROMIUM.`);
  process.exit(2);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error(`error: playwright-core is not installed (${e.code || e.message}). Run: cd tests/ui && npm ci`);
  process.exit(2);
}
mkdirSync(shotDir, { recursive: true });

const watchdog = setTimeout(() => fail(`the whole test took longer than ${TOTAL_TIMEOUT / 1000}s`), TOTAL_TIMEOUT);

// ---- helpers ----------------------------------------------------------------------------------

let phase = 'start';
const consoleErrors = [];
let browser = null;
let userDataDir = null;
let traffic = null;

function step(name) {
  phase = name;
  console.log(`# ${name}`);
}

function ok(what) { console.log(`ok - ${what}`); }

async function fail(reason) {
  console.error(`not ok - ${phase}: ${reason}`);
  if (consoleErrors.length) console.error(`console errors:\n  ${consoleErrors.map((e) => `[${e.phase}] ${e.text}`).join('\n  ')}`);
  await cleanup();
  process.exit(1);
}

async function cleanup() {
  clearTimeout(watchdog);
  if (traffic) traffic.stop();
  if (browser) await browser.close().catch(() => {});
  browser = null;
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
}

async function getJson(url, init) {
  const res = await fetch(url, init);
  if (!res.ok) throw new Error(`${init && init.method || 'GET'} ${url}: ${res.status}`);
  return res.json();
}

/** Replaces a file as the discovery documentation asks: a temporary file, then a rename. */
function writeAtomically(path, text) {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

/** Asks the driver to `stop` or `start` the balancer and waits until it says it did. */
async function driver(what) {
  writeFileSync(join(control, what), '');
  const done = join(control, what === 'stop' ? 'stopped' : 'started');
  const end = Date.now() + STEP_TIMEOUT;
  while (!existsSync(done)) {
    if (Date.now() > end) throw new Error(`the driver did not answer ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function configVersion() {
  return (await getJson(`${admin}/health`)).config_version;
}

/** The name a demo backend answers with (its x-demo-backend header). */
async function backendName(address) {
  const res = await fetch(`http://${address}/`);
  await res.arrayBuffer();
  return res.headers.get('x-demo-backend');
}

/** Steady background traffic through the balancer, with a few 500s, so the charts have data. */
function startTraffic() {
  let running = true;
  let sent = 0;
  const seen = new Map();
  const loop = async (worker) => {
    while (running) {
      const n = sent++;
      const path = n % 37 === 0 ? '/status/500' : n % 3 === 0 ? `/delay/${(n * 7) % 25}` : `/?w=${worker}`;
      try {
        const res = await fetch(`${lb}${path}`);
        await res.arrayBuffer();
        const name = res.headers.get('x-demo-backend');
        if (name) seen.set(name, (seen.get(name) || 0) + 1);
      } catch { /* a request racing a change may fail; the checks below look at outcomes */ }
      await new Promise((r) => setTimeout(r, 90 + ((n * 13) % 60)));
    }
  };
  const workers = [loop(0), loop(1)];
  return { seen, stop: () => { running = false; return Promise.all(workers); } };
}

// ---- the test ---------------------------------------------------------------------------------

try {
  step('the page loads without console errors and shows the configured backends');
  const expected = (await getJson(`${admin}/api/v1/upstreams`)).upstreams
    .find((u) => u.backends.some((b) => b.address === victim));
  if (!expected) throw new Error(`--kill ${victim} is not a configured backend`);
  const upstream = expected.name;
  const configured = expected.backends.map((b) => b.address);
  if (!configured.includes(victim)) throw new Error(`--kill ${victim} is not a backend of ${upstream}`);
  if (configured.includes(spare)) throw new Error(`--add ${spare} is already configured`);

  userDataDir = mkdtempSync(join(tmpdir(), 'switchyard-ui-'));
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
    colorScheme: 'light',
    reducedMotion: 'reduce',
  });
  const page = browser.pages()[0] || await browser.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push({ phase, text: m.text() }); });
  page.on('pageerror', (e) => consoleErrors.push({ phase, text: `uncaught: ${e.message}` }));

  traffic = startTraffic();
  await page.goto(`${admin}/`);
  await page.waitForSelector('body[data-ready="true"]');
  await page.waitForSelector('#conn[data-state="live"]');
  for (const address of configured) {
    await page.locator(`tr[data-address="${address}"]`).waitFor({ state: 'visible' });
  }
  await page.getByRole('heading', { name: new RegExp(upstream) }).first().waitFor();
  const errorsAtLoad = consoleErrors.filter((e) => e.phase === phase);
  if (errorsAtLoad.length) throw new Error(`console errors while loading: ${errorsAtLoad.map((e) => e.text).join(' | ')}`);
  ok(`page loaded, live, showing ${configured.length} backends of ${upstream}`);

  step('the routes panel shows a split route with each side\'s share, and its mirror');
  const routesText = (await page.locator('#routes').textContent()).replace(/\s+/g, ' ');
  for (const want of ['/beta/', '90%', '10%', 'split by cookie:beta', 'GET HEAD', 'x-beta: on', 'responds 308', 'https://new.example${request_uri}']) {
    if (!routesText.includes(want)) throw new Error(`the routes panel lacks "${want}": ${routesText}`);
  }
  // The mirror's words, link and badge are separate elements: compare without spaces.
  if (!routesText.replace(/\s/g, '').includes('mirroredtocatalog5%')) {
    throw new Error(`the routes panel lacks the mirror: ${routesText}`);
  }
  ok(`routes panel: ${routesText.trim()}`);

  step('an upstream with sticky sessions says so next to its algorithm');
  const catalogHead = page.locator('section[data-upstream="catalog"] h2');
  await catalogHead.filter({ hasText: 'sticky (sy)' }).waitFor({ timeout: 5000 });
  ok(`catalog heading: ${(await catalogHead.textContent()).replace(/\s+/g, ' ').trim()}`);

  step('adding a backend through the form makes it appear and take traffic');
  const spareName = await backendName(spare);
  const card = page.locator(`section[data-upstream="${upstream}"]`);
  await card.getByLabel('Address', { exact: true }).fill(spare);
  await card.getByLabel('Weight', { exact: true }).fill('1');
  await card.getByRole('button', { name: 'Add backend' }).click();
  const dialog = page.locator('#dialog');
  await dialog.waitFor({ state: 'visible' });
  if (!(await dialog.textContent()).includes(spare)) throw new Error('the confirmation does not name the backend');
  await dialog.locator('#dialog-ok').click();
  await dialog.waitFor({ state: 'hidden' });
  await page.locator(`tr[data-address="${spare}"]`).waitFor({ state: 'visible' });
  ok(`${spare} appears in the table after confirming`);
  const deadline = Date.now() + STEP_TIMEOUT;
  let served = false;
  while (!served && Date.now() < deadline) {
    const res = await fetch(`${lb}/`);
    await res.arrayBuffer();
    served = res.headers.get('x-demo-backend') === spareName;
  }
  if (!served) throw new Error(`no response from ${spareName} (${spare}) through ${lb}`);
  await page.locator(`tr[data-address="${spare}"][data-health="healthy"]`).waitFor();
  ok(`${spareName} answers requests through the balancer and is healthy on screen`);

  // Let the charts gather some history, then take the overview at desktop and phone widths.
  await page.waitForTimeout(Number(process.env.UI_CHART_SECONDS || 25) * 1000);
  await page.mouse.move(0, 0); // no hover highlight in the picture
  // From the top: focus going back to the form's button after the dialog may have scrolled.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(shotDir, 'ui-overview.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  // The backends as cards, just below the sticky header.
  await page.evaluate((name) => {
    const card = document.querySelector(`section[data-upstream="${name}"]`);
    const header = document.querySelector('.topbar').getBoundingClientRect().height;
    window.scrollTo(0, card.getBoundingClientRect().top + window.scrollY - header - 12);
  }, upstream);
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(shotDir, 'ui-phone.png') });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.evaluate(() => window.scrollTo(0, 0));
  ok('took ui-overview.png and ui-phone.png');

  step('a valid edit in the configuration editor shows its changes and applies');
  await page.getByRole('link', { name: 'Configuration', exact: true }).click();
  const editor = page.locator('#config-text');
  const validation = page.locator('#validation');
  await page.locator('#validation[data-state="same"]').waitFor();
  const before = await configVersion();
  const original = await editor.inputValue();
  if (!original.includes(spare)) throw new Error('the editor does not show the added backend');
  const validEdit = original.replace(/interval = "300ms"/, 'interval = "250ms"');
  if (validEdit === original) throw new Error('expected interval = "300ms" in the configuration');
  await editor.fill(validEdit);
  await page.locator('#validation[data-state="valid"]').waitFor();
  await page.locator('#config-changes li').first().waitFor();
  await page.locator('#diff-details summary').click();
  await page.locator('#config-diff .d-add').first().waitFor();
  await editor.evaluate((el) => { el.setSelectionRange(0, 0); el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); });
  await page.screenshot({ path: join(shotDir, 'ui-config.png') });
  ok('valid edit: changes and diff shown; took ui-config.png');
  await page.getByRole('button', { name: 'Apply changes' }).click();
  await dialog.waitFor({ state: 'visible' });
  await dialog.locator('#dialog-ok').click();
  await dialog.waitFor({ state: 'hidden' });
  await page.locator('#validation[data-state="same"]').waitFor();
  const applied = await configVersion();
  if (applied !== before + 1) throw new Error(`config_version ${before} -> ${applied}, expected ${before + 1}`);
  const cfg = await getJson(`${admin}/api/v1/config`);
  if (cfg.upstreams[upstream].health_check.interval !== '250ms') throw new Error(`interval is ${cfg.upstreams[upstream].health_check.interval}`);
  await page.locator(`#versions li[data-version="${applied}"]`).waitFor();
  ok(`applied as version ${applied}; listed under versions`);

  step('an invalid edit shows its error and changes nothing');
  const current = await editor.inputValue();
  const invalidEdit = current.replace(/(address = "[^"]+")/, '$1\nweight = 20000');
  await editor.fill(invalidEdit);
  await page.locator('#validation[data-state="invalid"]').waitFor();
  const shown = await validation.innerText();
  if (!/weight/.test(shown) || !/10000/.test(shown)) throw new Error(`validation shows: ${shown}`);
  if (!(await page.getByRole('button', { name: 'Apply changes' }).isDisabled())) throw new Error('Apply is enabled for an invalid configuration');
  await editor.press('Control+s'); // the editor's apply shortcut must not apply an invalid edit
  await page.waitForTimeout(500);
  if (await dialog.isVisible()) throw new Error('an apply confirmation opened for an invalid configuration');
  const after = await configVersion();
  if (after !== applied) throw new Error(`config_version changed from ${applied} to ${after}`);
  const unchanged = await getJson(`${admin}/api/v1/config`);
  if (unchanged.upstreams[upstream].backends.some((b) => b.weight === 20000)) throw new Error('the invalid weight was applied');
  ok(`error shown (${shown.replace(/\s+/g, ' ').trim().slice(0, 120)}), config_version still ${after}`);
  const unexpected = consoleErrors.filter((e) => e.phase === phase && !/status of (400|422)/.test(e.text));
  if (unexpected.length) throw new Error(`console errors: ${unexpected.map((e) => e.text).join(' | ')}`);

  step('a backend whose health check fails turns unhealthy on screen without a reload');
  await page.getByRole('button', { name: 'Revert' }).click();
  await dialog.locator('#dialog-ok').click();
  await dialog.waitFor({ state: 'hidden' });
  await page.getByRole('link', { name: 'Overview', exact: true }).click();
  const marker = `no-reload-${Date.now()}`;
  await page.evaluate((m) => { window.__switchyardTest = m; }, marker);
  const row = page.locator(`tr[data-address="${victim}"]`);
  await page.locator(`tr[data-address="${victim}"][data-health="healthy"]`).waitFor();
  const killed = await fetch(`http://${victim}/healthz/fail`, { method: 'POST' });
  if (!killed.ok) throw new Error(`POST http://${victim}/healthz/fail: ${killed.status}`);
  await page.locator(`tr[data-address="${victim}"][data-health="unhealthy"]`).waitFor();
  const badge = (await row.locator('[data-field="health"]').textContent()).trim();
  if (badge !== 'Unhealthy') throw new Error(`health badge says ${badge}`);
  if (await page.evaluate(() => window.__switchyardTest) !== marker) throw new Error('the page was reloaded');
  ok(`${victim} shows Unhealthy, same document (no reload)`);
  await fetch(`http://${victim}/healthz/ok`, { method: 'POST' });

  step('an upstream fed by discovery shows its source and state next to its backends');
  const sources = (await getJson(`${admin}/api/v1/discovery`)).upstreams;
  const discoveredUpstream = Object.keys(sources)[0];
  if (!discoveredUpstream) throw new Error('no upstream is fed by discovery');
  const dcard = page.locator(`section[data-upstream="${discoveredUpstream}"]`);
  const dinfo = dcard.locator('[data-field="discovery"]');
  await dcard.locator('[data-field="discovery"][data-state="ok"]').waitFor();
  const dtext = await dinfo.innerText();
  if (!dtext.includes(discoveryFile)) throw new Error(`the discovery line does not name ${discoveryFile}: ${dtext}`);
  if (!/updated/i.test(dtext)) throw new Error(`the discovery line shows no last update: ${dtext}`);
  if (await card.locator('[data-field="discovery"]').isVisible()) throw new Error(`${upstream} has no discovery source, yet shows one`);
  const listed = JSON.parse(readFileSync(discoveryFile, 'utf8'));
  writeAtomically(discoveryFile, JSON.stringify([...listed, { address: newlyDiscovered, weight: 'heavy' }]));
  await dcard.locator('[data-field="discovery"][data-state="failing"]').waitFor();
  const bad = await dinfo.innerText();
  if (!bad.includes(`[${listed.length}]`) || !/weight/.test(bad)) throw new Error(`the bad entry is not named: ${bad}`);
  if (await dcard.locator(`tr[data-address="${newlyDiscovered}"]`).count()) throw new Error('a refused file added a backend');
  await dcard.screenshot({ path: join(shotDir, 'ui-discovery.png') });
  ok(`${discoveredUpstream}: source and state shown; a bad entry is named (${bad.replace(/\s+/g, ' ').trim().slice(0, 100)}); took ui-discovery.png`);
  writeAtomically(discoveryFile, JSON.stringify([...listed, { address: newlyDiscovered }]));
  await dcard.locator('[data-field="discovery"][data-state="ok"]').waitFor();
  await dcard.locator(`tr[data-address="${newlyDiscovered}"]`).waitFor({ state: 'visible' });
  if (/\[\d+\]/.test(await dinfo.innerText())) throw new Error('a fixed file still shows a problem');
  ok('the fixed file is in sync again and its new backend is listed');

  step('with the balancer stopped the page says so and shows nothing as live');
  const staleMarker = `no-reload-${Date.now()}`;
  await page.evaluate((m) => { window.__switchyardTest = m; }, staleMarker);
  await driver('stop');
  const banner = page.locator('#stale-banner');
  await banner.waitFor({ state: 'visible' });
  const said = await banner.innerText();
  if (!/not answering/i.test(said)) throw new Error(`the banner says: ${said}`);
  await page.locator(`tr[data-address="${victim}"][data-health="unknown"]`).waitFor();
  const shownHealth = (await row.locator('[data-field="health"]').textContent()).trim();
  if (shownHealth !== 'Unknown') throw new Error(`health badge says ${shownHealth} while offline`);
  const greyed = await page.evaluate(() => {
    const value = getComputedStyle(document.querySelector('#summary .stat-value')).color;
    const muted = getComputedStyle(document.querySelector('#summary .stat-label')).color;
    const backends = getComputedStyle(document.querySelectorAll('#summary .stat-value')[2]).color;
    return value === muted && backends === muted;
  });
  if (!greyed) throw new Error('the numbers are not greyed out while offline');
  await page.mouse.move(0, 0);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(shotDir, 'ui-offline.png') });
  ok(`banner (${said.replace(/\s+/g, ' ').trim().slice(0, 100)}), health unknown, numbers greyed; took ui-offline.png`);

  step('the page recovers by itself when the balancer is back');
  await driver('start');
  await banner.waitFor({ state: 'hidden', timeout: 30_000 });
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
  await page.locator(`tr[data-address="${victim}"][data-health="healthy"]`).waitFor();
  if (await page.evaluate(() => document.body.classList.contains('is-stale'))) throw new Error('still marked stale');
  if (await page.evaluate(() => window.__switchyardTest) !== staleMarker) throw new Error('the page was reloaded');
  ok('live again, health shown again, same document');

  step('no unexpected console errors');
  // While the balancer is down the browser logs each refused request; that is the point there.
  const offline = (e) => /balancer (stopped|is back)|recovers/.test(e.phase) && /ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET|Failed to load resource|EventSource/.test(e.text);
  const rest = consoleErrors.filter((e) => !(e.phase.startsWith('an invalid edit') && /status of (400|422)/.test(e.text)) && !offline(e));
  if (rest.length) throw new Error(rest.map((e) => `[${e.phase}] ${e.text}`).join(' | '));
  const total = [...traffic.seen.values()].reduce((a, b) => a + b, 0);
  ok(`console clean; ${total} background requests served by ${[...traffic.seen.keys()].sort().join(', ')}`);
  await cleanup();
  console.log('all UI checks passed');
  process.exit(0);
} catch (e) {
  await fail(e && e.message ? e.message : String(e));
}
