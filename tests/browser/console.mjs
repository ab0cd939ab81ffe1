// Drives a real headless Chromium against a running fngate's admin
// listener for tests/console.rs: opens the console page, signs in with a
// wrong token and then the right one, waits for a function's row, reads
// what the page shows and writes a screenshot.
//
//   node tests/browser/console.mjs <adminURL> <spki> <token> <route> <warmRoute> <screenshot>
//
// adminURL   https://localhost:PORT of the admin listener (no trailing slash)
// spki       base64 SHA-256 of the gateway certificate's SubjectPublicKeyInfo,
//            the only certificate Chromium is told to accept
// token      the admin token
// route      the route of a function whose row must appear (e.g. /demo/square)
// warmRoute  the route of a warm function whose instances the page shows
// screenshot where the PNG goes
//
// The browser is Debian's chromium (CHROMIUM overrides the path); nothing is
// downloaded. Prints exactly one JSON line with what the page showed, and
// exits non-zero only when the browser itself could not be driven.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [admin, spki, token, route, warmRoute, screenshot] = process.argv.slice(2);
if (!admin || !spki || !token || !route || !warmRoute || !screenshot) {
  console.error('usage: node console.mjs <adminURL> <spki> <token> <route> <warmRoute> <screenshot>');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

/** The cells of the function row of `route`, by their class names. */
function readRow(route) {
  const row = document.querySelector(`#functions tr[data-route="${route}"]`);
  if (!row) return null;
  const cells = {};
  for (const td of row.cells) {
    const name = [...td.classList].find((c) => c !== 'n' && c !== 'none');
    if (name) cells[name] = td.textContent;
  }
  return cells;
}

async function run() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'fngate-chromium-'));
  const result = { browserVersion: null, consoleErrors: [], overviewReads: 0 };
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      timeout: 30000,
      viewport: { width: 1400, height: 900 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        // Trust exactly the gateway's dev certificate, nothing else.
        `--ignore-certificate-errors-spki-list=${spki}`,
      ],
    });
    result.browserVersion = context.browser()?.version() ?? null;
    const page = await context.newPage();
    page.on('console', (message) => {
      if (message.type() === 'error') result.consoleErrors.push(message.text());
    });
    page.on('pageerror', (error) => result.consoleErrors.push(String(error)));
    page.on('request', (request) => {
      if (new URL(request.url()).pathname === '/admin/overview') result.overviewReads += 1;
    });
    // Whatever the policy blocks is reported here (this script is the
    // browser's, not the page's, so the policy does not apply to it).
    await page.addInitScript(() => {
      window.__violations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.__violations.push(e.violatedDirective + ' ' + e.blockedURI);
      });
    });

    const opened = await page.goto(admin + '/admin/', { waitUntil: 'load', timeout: 15000 });
    result.pageStatus = opened.status();
    result.policy = (await opened.allHeaders())['content-security-policy'] ?? null;
    result.title = await page.title();
    result.signInVisibleFirst = await page.isVisible('#sign-in');
    result.dataVisibleFirst = await page.isVisible('#data');
    result.textBeforeToken = await page.innerText('body');

    // A wrong token: the gateway refuses it, the page says so and asks again.
    await page.fill('#token', 'not-the-token');
    await page.click('#sign-in button[type=submit]');
    await page.waitForSelector('#sign-in-error:not([hidden])', { timeout: 10000 });
    result.wrongTokenMessage = await page.innerText('#sign-in-error');
    result.storedAfterWrong = await page.evaluate(() => sessionStorage.getItem('fngate-admin-token'));

    // The right one: the function's row appears.
    await page.fill('#token', token);
    await page.click('#sign-in button[type=submit]');
    await page.waitForSelector(`#functions tr[data-route="${route}"]`, { timeout: 15000 });
    // The warm function's instance is up (set-up runs when the gateway starts it).
    await page.waitForFunction(
      (r) => {
        const row = document.querySelector(`#functions tr[data-route="${r}"] td.idle`);
        return row && Number(row.textContent) >= 1;
      },
      warmRoute,
      { timeout: 15000 },
    );
    result.signInVisibleAfter = await page.isVisible('#sign-in');
    result.dataVisibleAfter = await page.isVisible('#data');
    result.row = await page.evaluate(readRow, route);
    result.warmRow = await page.evaluate(readRow, warmRoute);
    result.calls = await page.evaluate(() => {
      const out = {};
      for (const box of document.querySelectorAll('#calls [data-state]')) {
        out[box.dataset.state] = box.querySelector('dd').textContent;
      }
      return out;
    });
    result.classes = await page.evaluate(() =>
      [...document.querySelectorAll('#classes tbody tr[data-name]')].map((tr) => tr.cells[0].textContent));
    result.storedToken = await page.evaluate(() => sessionStorage.getItem('fngate-admin-token'));

    // It refreshes itself: the status line changes with the next read.
    const status = await page.innerText('#status');
    result.statusFirst = status;
    await page.waitForFunction((s) => document.getElementById('status').textContent !== s, status, {
      timeout: 10000,
    });
    result.statusLater = await page.innerText('#status');
    result.violations = await page.evaluate(() => window.__violations);
    await page.screenshot({ path: screenshot, fullPage: true });
    result.screenshot = screenshot;
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
  return result;
}

const watchdog = setTimeout(() => {
  console.error('console.mjs: gave up after 60 s');
  process.exit(3);
}, 60000);
try {
  const result = await run();
  process.stdout.write(JSON.stringify(result) + '\n');
  clearTimeout(watchdog);
} catch (e) {
  clearTimeout(watchdog);
  console.error('console.mjs: cannot drive Chromium:', e && e.stack ? e.stack : e);
  process.exit(1);
}
