// Drives a real headless Chromium against a running fngate for
// tests/browser_cors.rs: opens a page served from another loopback origin
// and runs `fetch` from inside it, the way a web app would.
//
//   node tests/browser/cors.mjs <pageURL> <deniedPageURL> <gatewayURL> <spki>
//
// pageURL       a page on an origin listed in the gateway's [cors] allow_origins
// deniedPageURL the same page on an origin that is not listed
// gatewayURL    https://localhost:PORT (no trailing slash)
// spki          base64 SHA-256 of the gateway certificate's SubjectPublicKeyInfo,
//               the only certificate Chromium is told to accept
//
// The browser is Debian's chromium (CHROMIUM overrides the path); nothing is
// downloaded. Prints exactly one JSON line with what each page saw, and exits
// non-zero only when the browser itself could not be driven.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [pageUrl, deniedUrl, gateway, spki] = process.argv.slice(2);
if (!pageUrl || !deniedUrl || !gateway || !spki) {
  console.error('usage: node cors.mjs <pageURL> <deniedPageURL> <gatewayURL> <spki>');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

// Everything below runs inside the page, on the page's origin.

/** (1) A sync call: a JSON POST (so a preflight first), read status, body, ids. */
async function syncCall(gw) {
  try {
    const r = await fetch(gw + '/demo/square', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{"x":7}',
    });
    return {
      ok: true,
      status: r.status,
      body: await r.text(),
      requestId: r.headers.get('X-Request-Id'),
      redirected: r.redirected,
    };
  } catch (e) {
    return { ok: false, error: String(e), errorName: e && e.name };
  }
}

/** (2) Spawn, then poll the Location until the result is there. */
async function spawnAndPoll(gw) {
  const out = { ok: false };
  try {
    const r = await fetch(gw + '/demo/slow/spawn', {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        'Idempotency-Key': 'browser-' + Math.random().toString(36).slice(2),
      },
      body: '{"seconds":1}',
    });
    out.spawnStatus = r.status;
    out.location = r.headers.get('Location');
    out.callId = r.headers.get('X-Call-Id');
    out.spawnBody = await r.text();
    if (!out.location) return out;
    const statusUrl = new URL(out.location, r.url).href;
    out.statusUrl = statusUrl;
    out.polls = [];
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      const p = await fetch(statusUrl);
      const poll = { status: p.status, retryAfter: p.headers.get('Retry-After') };
      out.polls.push(poll);
      if (p.status === 202) {
        if (out.retryAfter == null) out.retryAfter = poll.retryAfter;
        await new Promise((res) => setTimeout(res, 150));
        continue;
      }
      out.finalStatus = p.status;
      out.finalBody = await p.text();
      break;
    }
    out.ok = true;
  } catch (e) {
    out.error = String(e);
  }
  return out;
}

/** (3) A sync call past the sync wait: 303 to /calls/{id}, followed by fetch. */
async function overflow(gw) {
  try {
    const started = performance.now();
    const r = await fetch(gw + '/demo/slow', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{"seconds":2}',
    });
    return {
      ok: true,
      status: r.status,
      redirected: r.redirected,
      url: r.url,
      callId: r.headers.get('X-Call-Id'),
      body: await r.text(),
      ms: Math.round(performance.now() - started),
    };
  } catch (e) {
    return { ok: false, error: String(e) };
  }
}

async function run() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'fngate-chromium-'));
  const result = { browserVersion: null, ms: {} };
  const t0 = Date.now();
  const lap = (name) => { result.ms[name] = Date.now() - t0; };
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      timeout: 30000,
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
    lap('launched');

    const page = await context.newPage();
    result.pageOrigin = new URL(pageUrl).origin;
    await page.goto(pageUrl, { waitUntil: 'load', timeout: 15000 });
    result.pageTitle = await page.title();
    result.sync = await page.evaluate(syncCall, gateway);
    result.spawn = await page.evaluate(spawnAndPoll, gateway);
    result.overflow = await page.evaluate(overflow, gateway);
    lap('allowedDone');

    // (4) The same sync call from an origin that is not allowed.
    const denied = await context.newPage();
    const consoleErrors = [];
    denied.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    await denied.goto(deniedUrl, { waitUntil: 'load', timeout: 15000 });
    result.deniedOrigin = new URL(deniedUrl).origin;
    result.denied = await denied.evaluate(syncCall, gateway);
    // Give the console a moment to report the CORS block.
    await denied.waitForTimeout(200);
    result.denied.consoleErrors = consoleErrors;
    lap('deniedDone');
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
  return result;
}

const watchdog = setTimeout(() => {
  console.error('cors.mjs: gave up after 60 s');
  process.exit(3);
}, 60000);
try {
  const result = await run();
  process.stdout.write(JSON.stringify(result) + '\n');
  clearTimeout(watchdog);
} catch (e) {
  clearTimeout(watchdog);
  console.error('cors.mjs: cannot drive Chromium:', e && e.stack ? e.stack : e);
  process.exit(1);
}
