#!/usr/bin/env bash
# Where a request's instructions go: fngate under callgrind, a fixed number
# of requests per scenario, and the instructions per request grouped by the
# code that spent them (hyper, h2, rustls, aws-lc, tokio, fngate, ...).
# Instruction counts do not depend on what else the machine is doing, so
# two builds compare exactly where bench/run.sh's req/s moves by 5-10%.
#
#   bench/profile.sh                         # h1, h2 and spawn, 20,000 requests each
#   SCENARIOS=h2 REQUESTS=5000 bench/profile.sh
#   PROFILE_BIN=/tmp/fngate-old bench/profile.sh  # another build, as is
# Knobs (env): SCENARIOS (h1,h2,spawn) REQUESTS CONNS H2_STREAMS OUT BE_PORT PROFILE_BIN
#   HTTP1_ENGINE (server.http1_engine: hyper or fngate; unset: the build's default)
#
# The same gateway config as bench/run.sh (`workers = 1`, the http function
# bench/square on the nginx backend), no access log. Each scenario is
# warmed up with collection off, then h2load sends exactly REQUESTS
# requests (h1: `--h1`, one at a time per connection) and the counters are
# dumped: totals per request are Ir / REQUESTS, all threads of the process
# included (the store's writer thread for spawns, the backend client's
# connection tasks).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SCENARIOS=${SCENARIOS:-h1,h2,spawn}
REQUESTS=${REQUESTS:-20000}
CONNS=${CONNS:-8}
H2_STREAMS=${H2_STREAMS:-10}
OUT=${OUT:-$HERE/results/profile-$(date +%Y%m%d-%H%M%S)}
RUN="$OUT/run"
for s in ${SCENARIOS//,/ }; do
  [[ $s == h1 || $s == h2 || $s == spawn ]] || { echo "unknown scenario '$s' (known: h1,h2,spawn)" >&2; exit 2; }
done

# shellcheck source=lib.sh
. "$HERE/lib.sh"
need nginx h2load:nghttp2-client valgrind callgrind_control:valgrind curl python3
mkdir -p "$OUT" "$RUN/fngate"
printf '{"x":42}' > "$RUN/body.json"
if [[ -n ${PROFILE_BIN:-} ]]; then FNGATE_BIN=$PROFILE_BIN; FNGATE_BUILT=1; fi
build_fngate

start_backend
cat > "$RUN/fngate/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"
${HTTP1_ENGINE:+http1_engine = '$HTTP1_ENGINE'}
workers = 1
max_connections = 20000
idle_timeout = "120s"

[store]
path = "data/calls.db"
max_pending = 10000000

[apps.bench.functions.square]
backend = "http"
urls = ["http://127.0.0.1:$BE_PORT/square"]
concurrency = 4096
queue = 4096
public = true

# As nginx's access_log off and HAProxy without a log: no access log.
[log]
access = "off"
TOML

log="$RUN/fngate/fngate.log"
RUST_LOG=info,fngate::http::context=warn valgrind --tool=callgrind \
  --callgrind-out-file="$OUT/callgrind.%p" "$FNGATE_BIN" serve --config "$RUN/fngate/gateway.toml" 2> "$log" &
GW=$!
STARTED+=("$GW")
addr=""
for _ in $(seq 600); do   # under valgrind the start takes some seconds
  addr=$(grep -o 'listening on https://[0-9.:]*' "$log" | head -1 | sed 's|listening on https://||') || true
  [[ -n $addr ]] && break
  alive "$GW" || break
  sleep 0.1
done
[[ -n $addr ]] || { echo "fngate did not start under valgrind" >&2; cat "$log" >&2; exit 1; }
URL="https://127.0.0.1:${addr##*:}"
CA="$RUN/fngate/certs/dev-ca.pem"
curl -sS --cacert "$CA" -H 'Content-Type: application/json' --data '{"x":42}' "$URL/bench/square" > /dev/null

h2l() {  # h2l SCENARIO COUNT: h2load's exact number of requests
  local path=/bench/square flags=(-m"$H2_STREAMS")
  [[ $1 == h1 ]] && flags=(--h1 -m1)
  [[ $1 == spawn ]] && { path=/bench/square/spawn; flags=(--h1 -m1); }
  h2load -n"$2" -c"$CONNS" "${flags[@]}" -d "$RUN/body.json" -H 'Content-Type: application/json' \
    "$URL$path"
}
{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); fngate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- $REQUESTS requests per scenario, $CONNS connections (h2: $H2_STREAMS streams each), counted by callgrind"
} > "$OUT/env.txt"
for s in ${SCENARIOS//,/ }; do
  echo ">> $s: warm-up, then $REQUESTS requests under callgrind"
  h2l "$s" $((REQUESTS / 10)) > "$OUT/$s.warmup.txt"
  callgrind_control -z "$GW" > /dev/null
  h2l "$s" "$REQUESTS" > "$OUT/$s.load.txt"
  ok=$(awk '/^status codes:/ {gsub(",", ""); print $3 + $5}' "$OUT/$s.load.txt")
  [[ $ok == "$REQUESTS" ]] || { echo "$s: only $ok of $REQUESTS requests answered 2xx; see $OUT/$s.load.txt" >&2; exit 1; }
  callgrind_control -d "$s" "$GW" > /dev/null
  # the dump lands as callgrind.PID.N; keep it under the scenario's name
  dump=$(ls -t "$OUT"/callgrind."$GW".* 2>/dev/null | head -1)
  mv "$dump" "$OUT/$s.callgrind"
done
stop_started "$GW"
rm -rf "$OUT"/callgrind."$GW"* "$RUN"/fngate/data
python3 "$HERE/profile.py" --requests "$REQUESTS" "$OUT"/*.callgrind | tee "$OUT/profile.md"
