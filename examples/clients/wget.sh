#!/usr/bin/env bash
# Calls the quick-start gateway with GNU wget.
#
#     bash wget.sh [BASE_URL [CA_FILE]]
#
# or FNGATE_URL / FNGATE_CA_FILE (default https://localhost:8443 and
# certs/dev-ca.pem). Only that CA is trusted (--ca-certificate). Each step
# prints a line; any answer other than the expected one exits 1.
set -euo pipefail

GW=${1:-${FNGATE_URL:-https://localhost:8443}}; GW=${GW%/}
CA=${2:-${FNGATE_CA_FILE:-certs/dev-ca.pem}}
fail() { echo "FAIL $1: $2"; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# wget URL [JSON]: POSTs JSON when given (else GETs); the body goes to
# $tmp/body, the answer's head (-S) to $tmp/head, and its status is printed.
# wget exits non-zero on a 4xx or 5xx; the status says what happened.
call() {
    local post=()
    if [ $# -gt 1 ]; then post=(--header 'Content-Type: application/json' --post-data "$2"); fi
    wget -q -S --content-on-error --max-redirect=0 --ca-certificate="$CA" "${post[@]}" -O "$tmp/body" "$1" 2>"$tmp/head" || true
    sed -n 's/^  HTTP\/[0-9.]* \([0-9]*\).*/\1/p' "$tmp/head" | tail -1
}
header() { sed -n "s/^  $1: //Ip" "$tmp/head" | tail -1; }

# 1. A sync call.
status=$(call "$GW/demo/square" '{"x": 7}')
[ "$status" = 200 ] && [ "$(cat "$tmp/body")" = 49 ] || fail sync "$status $(cat "$tmp/body")"
echo 'sync: POST /demo/square {"x": 7} -> 200 49'

# 2. A spawn, then polling its Location until it is no longer 202.
status=$(call "$GW/demo/square/spawn" '{"x": 7}')
location=$(header Location)
[ "$status" = 202 ] && [ -n "$location" ] || fail spawn "$status $(cat "$tmp/body")"
polls=0
while :; do
    polls=$((polls + 1))
    status=$(call "$GW$location")
    [ "$status" = 202 ] || break
    sleep "$(header Retry-After | grep . || echo 1)"
done
[ "$status" = 200 ] && [ "$(cat "$tmp/body")" = 49 ] || fail spawn "$status $(cat "$tmp/body")"
echo "spawn: 202 Location $location, $polls poll(s) -> 200 49"

# 3. A long poll: the answer comes the moment the call ends.
status=$(call "$GW/demo/slow/spawn" '{"seconds": 1}')
id=$(grep -o '"call_id":"fc-[^"]*"' "$tmp/body" | cut -d'"' -f4) || fail long-poll "$status $(cat "$tmp/body")"
status=$(call "$GW/calls/$id?wait=30")
[ "$status" = 200 ] && [ "$(cat "$tmp/body")" = '{"slept": 1}' ] || fail long-poll "$status $(cat "$tmp/body")"
echo "long-poll: GET /calls/$id?wait=30 -> 200 {\"slept\": 1}"

# 4. An error's machine-readable code.
status=$(call "$GW/demo/nope" '{}')
code=$(grep -o '"code":"[^"]*"' "$tmp/body" | cut -d'"' -f4 || true)
[ "$status" = 404 ] && [ "$(header Content-Type)" = application/problem+json ] && [ "$code" = function_not_found ] \
    || fail error "$status $(cat "$tmp/body")"
echo "error: POST /demo/nope -> 404 function_not_found"
