// Drives a real headless Chromium against a running fngate for
// tests/streaming.rs: a page on the gateway's own origin reads a streaming
// function's items with `EventSource` and with a `fetch` body reader.
//
//   node tests/browser/stream.mjs <gatewayURL> <spki> <path> <gateDir>
//
// gatewayURL https://localhost:PORT (no trailing slash)
// spki       base64 SHA-256 of the gateway certificate's SubjectPublicKeyInfo,
//            the only certificate Chromium is told to accept
// path       the streaming function, e.g. /s/gated (tests/streaming/gated.py)
// gateDir    an absolute folder: the function waits after its first item
//            until a gate file there exists, and this script creates it only
//            when the page says the first item has arrived
//
// Prints exactly one JSON line with what the page saw, and exits non-zero
// only when the browser itself could not be driven.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [gateway, spki, path, gateDir] = process.argv.slice(2);
if (!gateway || !spki || !path || !gateDir) {
  console.error('usage: node stream.mjs <gatewayURL> <spki> <path> <gateDir>');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

// Everything below runs inside the page.

/** EventSource (a GET with the arguments in the query) until `end`. */
function readEvents({ path, gate }) {
  return new Promise((resolve) => {
    const out = { items: [], events: [] };
    const source = new EventSource(`${path}?count=3&gate=${encodeURIComponent(gate)}`);
    source.onmessage = (e) => {
      out.items.push(JSON.parse(e.data));
      out.events.push('message');
      if (out.items.length === 1) window.firstItem(gate);
    };
    source.addEventListener('end', () => {
      out.events.push('end');
      source.close();
      resolve(out);
    });
    source.onerror = () => {
      out.events.push('error');
      source.close();
      resolve(out);
    };
  });
}

/** fetch with Accept: text/event-stream, read chunk by chunk to the end. */
async function readBody({ path, gate }) {
  const out = { chunks: 0 };
  try {
    const r = await fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({ count: 3, gate }),
    });
    out.status = r.status;
    out.contentType = r.headers.get('Content-Type');
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    out.text = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      out.chunks += 1;
      out.text += value;
      if (!out.signalled && out.text.includes('data:')) {
        out.signalled = true;
        window.firstItem(gate);
      }
    }
    out.ok = true;
  } catch (e) {
    out.error = String(e);
  }
  return out;
}

async function run() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'fngate-chromium-'));
  const result = { browserVersion: null, opened: [] };
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
    const page = await context.newPage();
    // The page says when its first item came; only then may the function go on.
    await page.exposeFunction('firstItem', (gate) => {
      result.opened.push(gate);
      writeFileSync(gate, '');
    });
    await page.goto(gateway + '/_/health', { waitUntil: 'load', timeout: 15000 });
    result.events = await page.evaluate(readEvents, { path, gate: join(gateDir, 'gate-events') });
    result.fetch = await page.evaluate(readBody, { path, gate: join(gateDir, 'gate-fetch') });
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
  return result;
}

const watchdog = setTimeout(() => {
  console.error('stream.mjs: gave up after 60 s');
  process.exit(3);
}, 60000);
try {
  const result = await run();
  process.stdout.write(JSON.stringify(result) + '\n');
  clearTimeout(watchdog);
} catch (e) {
  clearTimeout(watchdog);
  console.error('stream.mjs: cannot drive Chromium:', e && e.stack ? e.stack : e);
  process.exit(1);
}
