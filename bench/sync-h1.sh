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

for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || {
    echo "installing nginx wrk curl" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk curl >/dev/null
    break
  }
done

if [[ $PIN == 1 ]]; then GW_PIN=(taskset -c 1); LOAD_PIN=(taskset -c 0); else GW_PIN=(); LOAD_PIN=(); fi

STARTED=()
cleanup() {
  for pid in "${STARTED[@]:-}"; do
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --quiet)

mkdir -p "$RUN/backend/tmp"
sed "s|\$RUN|$RUN|g" "$HERE/conf/backend.nginx.conf" > "$RUN/backend/nginx.conf"
"${LOAD_PIN[@]}" nginx -p "$RUN/backend/" -e "$RUN/backend/error.log" -c "$RUN/backend/nginx.conf" \
  -g 'daemon off; worker_processes 1;' &
STARTED+=($!)

cat > "$RUN/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"

[apps.bench.functions.square]
backend = "http"
urls = ["http://127.0.0.1:9001/square"]
concurrency = 1024
public = true
TOML
# Start-up lines, not the per-request access log.
RUST_LOG=info,fngate::http::context=warn "${GW_PIN[@]}" "$ROOT/target/release/fngate" serve --config "$RUN/gateway.toml" 2> "$RUN/fngate.log" &
STARTED+=($!)
for _ in $(seq 100); do
  ADDR=$(grep -o 'listening on https://[0-9.:]*' "$RUN/fngate.log" | head -1 | sed 's|listening on https://||') || true
  [[ -n ${ADDR:-} ]] && break
  sleep 0.1
done
[[ -n ${ADDR:-} ]] || { echo "fngate did not start" >&2; cat "$RUN/fngate.log" >&2; exit 1; }
PORT=${ADDR##*:}
URL="https://localhost:$PORT/bench/square"

check=$(curl -sS --cacert "$RUN/certs/dev-ca.pem" -H 'content-type: application/json' -d '{"x":42}' "$URL")
[[ $check == '{"result":1764}' ]] || { echo "unexpected answer: $check" >&2; exit 1; }

echo "fngate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, pin=$PIN"
"${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s -s "$HERE/post.lua" "$URL" >/dev/null   # warm-up
"${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency -s "$HERE/post.lua" "$URL"
