#!/usr/bin/env bash
# Sizing of the Redis store (issue 14): COUNT pending calls (default one
# million) spawned into one redis-server through one fngate replica, with
# the replica's RSS sampled while they pile up; then a second replica
# started on the full backlog, and its RSS. Pending calls wait in Redis:
# a replica claims them in batches as its slots allow, so its memory must
# not grow with the backlog.
#
# Starts on 127.0.0.1 only, and stops by PID only, what it needs:
#   redis-server   :free port   its own folder, appendonly yes, appendfsync everysec
#   fngate x 2     :free ports  workers = 1, [store] kind = "redis"
# The function bench/hold sleeps for an hour with concurrency 1: one call
# runs, every other one stays pending.
#
#   bench/redis-sizing.sh                 # a million spawns: a few minutes (+ the build)
#   COUNT=100000 bench/redis-sizing.sh    # a quick look
#   FNGATE=/tmp/fngate bench/redis-sizing.sh
# Knobs (env): COUNT CONNS STREAMS OUT
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
COUNT=${COUNT:-1000000}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-16}
OUT=${OUT:-$HERE/results/$(date +%Y%m%d-%H%M%S)-redis-sizing}
RUN="$OUT/run"
PREFIX="sizing:"

((COUNT >= 1000 && COUNT <= 5000000)) || { echo "COUNT must be 1000..5000000" >&2; exit 2; }

# shellcheck source=lib.sh
. "$HERE/lib.sh"
if [[ -n ${FNGATE:-} ]]; then
  FNGATE_BIN=$FNGATE
  FNGATE_BUILT=1
fi
finish() {
  cleanup
  rm -rf "$RUN"/redis/appendonlydir   # a million calls: a few hundred MB
}
trap finish EXIT

need h2load:nghttp2-client curl python3 redis-server redis-cli:redis-tools
mkdir -p "$RUN/redis"
build_fngate

# rss_kib PID: resident set size in KiB.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$RUN/redis" --save "" \
  --appendonly yes --appendfsync everysec --protected-mode no \
  --logfile "$RUN/redis/redis.log" --daemonize no > /dev/null 2>&1 &
REDIS=$!
STARTED+=("$REDIS")
wait_port "$REDIS_PORT" "$REDIS"
RCLI=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
for _ in $(seq 100); do
  [[ $("${RCLI[@]}" PING 2>/dev/null) == PONG ]] && break
  sleep 0.1
done

# replica NAME: a config in $RUN/NAME serving bench/hold on the shared store.
replica() {
  mkdir -p "$RUN/$1"
  cat > "$RUN/$1/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:0"
workers = 1

[store]
kind = "redis"
url = "redis://127.0.0.1:$REDIS_PORT"
prefix = "$PREFIX"
max_pending = $((COUNT * 2))

[apps.bench.functions.hold]
backend = "exec"
command = ["python3", "-c", "import time; time.sleep(3600)"]
timeout = "1h"
concurrency = 1
public = true
EOF
  FNGATE_CONF="$RUN/$1/gateway.toml" FNGATE_LOG="$RUN/$1/fngate.log" start_fngate
}

replica a
A=$GW
AURL=$GWURL
CA="$RUN/a/certs/dev-ca.pem"
echo '{}' > "$RUN/body.json"
echo "spawning $COUNT calls through one replica ($CONNS connections x $STREAMS streams)"
: > "$RUN/rss-a.txt"
(
  while alive "$A"; do
    echo "$(date +%s) $(rss_kib "$A") $("${RCLI[@]}" GET "${PREFIX}pending")" >> "$RUN/rss-a.txt"
    sleep 5
  done
) &
SAMPLER=$!
STARTED+=("$SAMPLER")
start=$(date +%s.%N)
h2load -n "$COUNT" -c "$CONNS" -m "$STREAMS" -d "$RUN/body.json" \
  -H 'content-type: application/json' "$AURL/bench/hold/spawn" > "$RUN/h2load.txt" 2>&1 || true
took=$(python3 -c "import time; print(round(time.time() - $start, 1))")
stop_started "$SAMPLER"
grep -E "requests:|status codes:" "$RUN/h2load.txt"
pending=$("${RCLI[@]}" GET "${PREFIX}pending")
peak_a=$(awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}' "$RUN/rss-a.txt")
last_a=$(rss_kib "$A")
used=$("${RCLI[@]}" INFO memory | awk -F: '/^used_memory_human/ {print $2}' | tr -d '\r')

replica b
B=$GW
# The second replica reads the backlog's counts at start and dispatches:
# its RSS a while later is what a backlog costs a replica that joins.
curl -s --cacert "$RUN/b/certs/dev-ca.pem" -o /dev/null "$GWURL/_/ready"
sleep 10
rss_b=$(rss_kib "$B")

{
  echo "| what | value |"
  echo "|------|-------|"
  echo "| calls spawned through replica A | $COUNT in ${took} s |"
  echo "| pending in Redis after | $pending |"
  echo "| Redis used_memory | $used |"
  echo "| replica A RSS, peak while spawning (5 s samples) | $((peak_a / 1024)) MiB |"
  echo "| replica A RSS after | $((last_a / 1024)) MiB |"
  echo "| replica B RSS, 10 s after starting on the backlog | $((rss_b / 1024)) MiB |"
} | tee "$OUT/table.md"
echo "samples (unix time, RSS KiB, pending): $RUN/rss-a.txt"
