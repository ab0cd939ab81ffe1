// Calls the quick-start gateway with Node's built-in fetch (Node 18+).
//
//     node client.mjs [BASE_URL [CA_FILE]]
//
// or FNGATE_URL / FNGATE_CA_FILE (default https://localhost:8443 and
// certs/dev-ca.pem). Node's fetch takes an extra CA only from the
// NODE_EXTRA_CA_CERTS variable, read at start: without it set to the CA
// file, the script runs itself again with it. Each step prints a line; any
// answer other than the expected one exits 1.

import { spawnSync } from "node:child_process";

const base = (process.argv[2] ?? process.env.FNGATE_URL ?? "https://localhost:8443").replace(/\/+$/, "");
const ca = process.argv[3] ?? process.env.FNGATE_CA_FILE ?? "certs/dev-ca.pem";

if (process.env.NODE_EXTRA_CA_CERTS !== ca) {
  const run = spawnSync(process.execPath, [process.argv[1], base, ca], {
    stdio: "inherit",
    env: { ...process.env, NODE_EXTRA_CA_CERTS: ca },
  });
  process.exit(run.status ?? 1);
}

function fail(step, message) {
  console.log(`FAIL ${step}: ${message}`);
  process.exit(1);
}

const post = (path, body) =>
  fetch(`${base}${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });

// 1. A sync call.
let answer = await post("/demo/square", { x: 7 });
let text = await answer.text();
if (answer.status !== 200 || JSON.parse(text) !== 49) fail("sync", `${answer.status} ${text}`);
console.log('sync: POST /demo/square {"x": 7} -> 200 49');

// 2. A spawn, then polling its Location until it is no longer 202.
answer = await post("/demo/square/spawn", { x: 7 });
const location = answer.headers.get("location");
text = await answer.text();
if (answer.status !== 202 || !location) fail("spawn", `${answer.status} ${text}`);
let polls = 0;
do {
  if (polls > 0) {
    const seconds = Number(answer.headers.get("retry-after") ?? "1");
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  }
  polls += 1;
  answer = await fetch(new URL(location, `${base}/`));
  text = await answer.text();
} while (answer.status === 202);
if (answer.status !== 200 || JSON.parse(text) !== 49) fail("spawn", `${answer.status} ${text}`);
console.log(`spawn: 202 Location ${location}, ${polls} poll(s) -> 200 49`);

// 3. A long poll: the answer comes the moment the call ends.
answer = await post("/demo/slow/spawn", { seconds: 1 });
text = await answer.text();
const callId = answer.status === 202 ? JSON.parse(text).call_id ?? "" : "";
if (!callId.startsWith("fc-")) fail("long-poll", `spawn answered ${answer.status} ${text}`);
answer = await fetch(`${base}/calls/${callId}?wait=30`);
text = await answer.text();
if (answer.status !== 200 || JSON.parse(text).slept !== 1) fail("long-poll", `${answer.status} ${text}`);
console.log(`long-poll: GET /calls/${callId}?wait=30 -> 200 {"slept": 1}`);

// 4. An error's machine-readable code.
answer = await post("/demo/nope", {});
text = await answer.text();
const type = answer.headers.get("content-type") ?? "";
const code = type.startsWith("application/problem+json") ? JSON.parse(text).code : undefined;
if (answer.status !== 404 || code !== "function_not_found") fail("error", `${answer.status} ${type} ${text}`);
console.log("error: POST /demo/nope -> 404 function_not_found");
