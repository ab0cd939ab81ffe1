// Drives a real headless Chromium against a running fngate for
// tests/openapi.rs: opens /_/docs, waits for it to render the document,
// then uses the "try it" form of GET /demo/greet and of POST /demo/square
// and reads what the page shows; writes a screenshot.
//
//   node tests/openapi/docs.mjs <gatewayURL> <spki> <screenshot>
//
// gatewayURL https://localhost:PORT (no trailing slash)
// spki       base64 SHA-256 of the gateway certificate's SubjectPublicKeyInfo,
//            the only certificate Chromium is told to accept
// screenshot where the PNG goes
//
// playwright-core comes from tests/browser/node_modules; the browser is
// Debian's chromium (CHROMIUM overrides the path); nothing is downloaded.
// Prints exactly one JSON line with what the page showed, and exits
// non-zero only when the browser itself could not be driven.

import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const require = createRequire(new URL('../browser/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const [gateway, spki, screenshot] = process.argv.slice(2);
if (!gateway || !spki || !screenshot) {
  console.error('usage: node docs.mjs <gatewayURL> <spki> <screenshot>');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

/** Fills and sends the "try it" form of operation `id`; its status and answer. */
async function tryIt(page, id, fields, body) {
  const op = `details.op[data-op="${id}"]`;
  await page.click(`${op} > summary`);
  for (const [param, value] of Object.entries(fields)) {
    await page.fill(`${op} input[data-param="${param}"]`, value);
  }
  if (body !== undefined) await page.fill(`${op} textarea.body`, body);
  await page.click(`${op} button.send`);
  await page.waitForSelector(`${op} .status.ok, ${op} .status.bad`, { timeout: 15000 });
  return {
    status: await page.innerText(`${op} .status`),
    answer: await page.innerText(`${op} pre.answer`),
  };
}

async function run() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'fngate-chromium-'));
  const result = { consoleErrors: [], requests: [] };
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      timeout: 30000,
      viewport: { width: 1280, height: 1600 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        `--ignore-certificate-errors-spki-list=${spki}`,
      ],
    });
    const page = await context.newPage();
    // Script errors; not the browser's own note of each answer that is
    // not 2xx (the form's 400 on purpose, the favicon's 404).
    page.on('console', (message) => {
      const text = message.text();
      if (message.type() === 'error' && !text.startsWith('Failed to load resource')) {
        result.consoleErrors.push(text);
      }
    });
    page.on('pageerror', (error) => result.consoleErrors.push(String(error)));
    page.on('request', (request) => result.requests.push(request.url()));
    // What the page's policy blocks (this script is the browser's, so the
    // policy does not apply to it).
    await page.addInitScript(() => {
      window.__violations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.__violations.push(e.violatedDirective + ' ' + e.blockedURI);
      });
    });
    const opened = await page.goto(gateway + '/_/docs', { waitUntil: 'load', timeout: 15000 });
    result.pageStatus = opened.status();
    await page.waitForSelector('details.op', { timeout: 15000 });
    result.title = await page.innerText('#title');
    result.operations = await page.$$eval('details.op', (ops) => ops.map((op) => op.dataset.op));
    result.sections = await page.$$eval('main h2', (hs) => hs.map((h) => h.textContent));
    result.greet = await tryIt(page, 'demo.greet.invoke_get', { 'query:name': 'Ada' });
    result.square = await tryIt(page, 'demo.square.invoke', {}, '{"x": 12}');
    result.badGreet = await tryIt(page, 'demo.greet.invoke', {}, '{"name": ""}');
    result.violations = await page.evaluate(() => window.__violations);
    await page.screenshot({ path: screenshot, fullPage: false });
  } finally {
    if (context) await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify(result));
}

run().catch((error) => {
  console.error(error);
  process.exit(1);
});
