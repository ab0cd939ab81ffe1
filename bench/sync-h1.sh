#!/usr/bin/env bash
# First baseline: requests/s and latency of a sync invoke over TLS HTTP/1.1
# keep-alive, through fngate, to a function on an `http` backend (a trivial
# nginx answering {"result":1764}). Loopback only; every run is time-bounded;
# stops only the processes it started.
#
#   bench/sync-h1.sh                 # 64 connections, 2 threads, 10 s
#   DUR=20 CONNS=128 bench/sync-h1.sh
#   PIN=1 bench/sync-h1.sh           # fngate on CPU 1; backend and wrk on CPU 0
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DUR=${DUR:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
PIN=${PIN:-0}
RUN=${RUN:-$(mktemp -d)}

if [[ $PIN == 1 ]]; then GW_PIN=(taskset -c 1); LOAD_PIN=(taskset -c 0); else GW_PIN=(); LOAD_PIN=(); fi

# shellcheck source=lib.sh
. "$HERE/lib.sh"
need nginx wrk curl
start_backend "${LOAD_PIN[@]}"

cat > "$RUN/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"

[apps.bench.functions.square]
backend = "http"
urls = ["http://127.0.0.1:9001/square"]
concurrency = 1024
public = true
TOML
start_fngate "${GW_PIN[@]}"
URL="$GWURL/bench/square"

check=$(curl -sS --cacert "$RUN/certs/dev-ca.pem" -H 'content-type: application/json' -d '{"x":42}' "$URL")
[[ $check == '{"result":1764}' ]] || { echo "unexpected answer: $check" >&2; exit 1; }

echo "fngate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, pin=$PIN"
"${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s -s "$HERE/post.lua" "$URL" >/dev/null   # warm-up
"${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency -s "$HERE/post.lua" "$URL"
