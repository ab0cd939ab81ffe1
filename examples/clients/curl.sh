#!/usr/bin/env bash
# Calls the quick-start gateway with curl (7.82 or later, for --json).
#
#     bash curl.sh [BASE_URL [CA_FILE]]
#
# or FNGATE_URL / FNGATE_CA_FILE (default https://localhost:8443 and
# certs/dev-ca.pem). Only that CA is trusted (--cacert). Each step prints a
# line; any answer other than the expected one exits 1.
set -euo pipefail

GW=${1:-${FNGATE_URL:-https://localhost:8443}}; GW=${GW%/}
CA=${2:-${FNGATE_CA_FILE:-certs/dev-ca.pem}}
fail() { echo "FAIL $1: $2"; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# 1. A sync call.
body=$(curl -sS --cacert "$CA" "$GW/demo/square" --json '{"x": 7}')
[ "$body" = 49 ] || fail sync "$body"
echo 'sync: POST /demo/square {"x": 7} -> 200 49'

# 2. A spawn, then polling its Location until it is no longer 202.
status=$(curl -sS --cacert "$CA" -D "$tmp/head" -o "$tmp/body" -w '%{http_code}' "$GW/demo/square/spawn" --json '{"x": 7}')
location=$(tr -d '\r' <"$tmp/head" | sed -n 's/^[Ll]ocation: //p')
[ "$status" = 202 ] && [ -n "$location" ] || fail spawn "$status $(cat "$tmp/body")"
polls=0
while :; do
    polls=$((polls + 1))
    status=$(curl -sS --cacert "$CA" -D "$tmp/head" -o "$tmp/body" -w '%{http_code}' "$GW$location")
    [ "$status" = 202 ] || break
    sleep "$(tr -d '\r' <"$tmp/head" | sed -n 's/^[Rr]etry-[Aa]fter: //p' | grep . || echo 1)"
done
[ "$status" = 200 ] && [ "$(cat "$tmp/body")" = 49 ] || fail spawn "$status $(cat "$tmp/body")"
echo "spawn: 202 Location $location, $polls poll(s) -> 200 49"

# 3. A long poll: the answer comes the moment the call ends.
id=$(curl -sS --cacert "$CA" "$GW/demo/slow/spawn" --json '{"seconds": 1}' | grep -o '"call_id":"fc-[^"]*"' | cut -d'"' -f4) \
    || fail long-poll "no call_id in the spawn's answer"
body=$(curl -sS --cacert "$CA" "$GW/calls/$id?wait=30")
[ "$body" = '{"slept": 1}' ] || fail long-poll "$body"
echo "long-poll: GET /calls/$id?wait=30 -> 200 {\"slept\": 1}"

# 4. An error's machine-readable code.
status=$(curl -sS --cacert "$CA" -o "$tmp/body" -w '%{http_code} %{content_type}' "$GW/demo/nope" --json '{}')
code=$(grep -o '"code":"[^"]*"' "$tmp/body" | cut -d'"' -f4)
[ "$status" = "404 application/problem+json" ] && [ "$code" = function_not_found ] || fail error "$status $(cat "$tmp/body")"
echo "error: POST /demo/nope -> 404 function_not_found"
