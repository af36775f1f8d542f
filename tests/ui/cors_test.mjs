// A route's `cors` as a real browser judges it (headless Debian Chromium, playwright-core). Driven
// by tests/it/ui.rs: it opens PAGE_URL, a page Switchyard serves on one origin, whose script
// calls another origin (the same Switchyard by another host name) and writes what each call got
// into #result. Prints that line; the driver checks it.
//
//   node tests/ui/cors_test.mjs PAGE_URL
//
// Exit code 0 when the page finished (whatever its calls got); 1 otherwise.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [pageUrl] = process.argv.slice(2);
const userDataDir = mkdtempSync(join(tmpdir(), 'switchyard-cors-'));
let browser;
try {
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = browser.pages()[0] || await browser.newPage();
  page.on('console', (m) => console.log(`console ${m.type()}: ${m.text()}`));
  await page.goto(pageUrl);
  const result = page.locator('#result[data-done="true"]');
  await result.waitFor({ timeout: 20000 });
  console.log(`RESULT ${await result.innerText()}`);
  await browser.close();
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  console.log(`FAILED ${e.message}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
