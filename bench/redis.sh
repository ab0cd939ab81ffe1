#!/usr/bin/env bash
# Scale-out on the Redis store (issue 14): durable spawns per second and
# GET /calls/{id} reads per second through 1, 2 and 3 fngate replicas
# sharing one redis-server, beside one fngate on the embedded store, on
# the same box; with redis-server's CPU over each run.
#
# Starts on 127.0.0.1 only, and later stops by PID only, what it needs:
#   backend  nginx         :BE_PORT (free)  POST /square -> {"result":1764}   conf/backend.nginx.conf
#   redis-server           :free port       its own folder, appendonly yes, appendfsync everysec
#   fngate   x N           :free ports      workers = 1, [store] kind = "redis", one prefix
#   fngate                 :free port       workers = 1, the embedded store (SQLite)
# The function bench/square is an `http` backend (the nginx above), public.
#
# Per setup (embedded, then 1, 2, 3 replicas; reps interleaved): the
# gateways start on an empty store, one call is spawned on the first and
# read back through the last (so a replica serves what another stored);
# then reads of that finished call, then spawns (they run meanwhile, on
# whichever replica claims them). The load is one wrk per replica, with
# CONNS / N connections and one thread each, all for the same DUR s; the
# rates are their sums. Between setups the gateways stop and Redis is
# emptied (FLUSHALL).
# CPU: utime+stime over the run's wall time, in % of one core: redis-server,
# and the fngate processes summed; box: the whole machine's busy share.
#
#   bench/redis.sh                     # 2 reps x 10 s per setup: about 4 minutes (+ the build)
#   REPS=1 DUR=5 bench/redis.sh        # a quick look
#   REPLICAS="1 3" bench/redis.sh      # other replica counts
#   FNGATE=/tmp/fngate bench/redis.sh  # measure another build of fngate (no cargo build)
# Knobs (env): DUR REPS CONNS WARMUP REPLICAS OUT BE_PORT
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DUR=${DUR:-10}
REPS=${REPS:-2}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-2}
REPLICAS=${REPLICAS:-1 2 3}
OUT=${OUT:-$HERE/results/$(date +%Y%m%d-%H%M%S)-redis}
RUN="$OUT/run"             # the servers' files: configs, certificates, logs, AOF, SQLite
NAME=127.0.0.1
if [[ $(getent ahosts localhost 2>/dev/null | awk 'NR == 1 {print $1}') == 127.0.0.1 ]]; then
  NAME=localhost   # wrk sends the URL's host as SNI; an IP address there is illegal
fi
BODY='{"x":42}'
EXPECT='{"result":1764}'
PREFIX="bench:"

((DUR >= 1 && DUR <= 120)) || { echo "DUR must be 1..120 (seconds)" >&2; exit 2; }
((REPS >= 1 && REPS <= 10)) || { echo "REPS must be 1..10" >&2; exit 2; }
((CONNS >= 3 && CONNS <= 4096)) || { echo "CONNS must be 3..4096" >&2; exit 2; }
for n in $REPLICAS; do
  [[ $n =~ ^[1-8]$ ]] || { echo "REPLICAS: '$n' is not a replica count of 1..8" >&2; exit 2; }
done

# shellcheck source=lib.sh
. "$HERE/lib.sh"
if [[ -n ${FNGATE:-} ]]; then   # FNGATE=/path/to/fngate: measure that build, do not build
  FNGATE_BIN=$FNGATE
  FNGATE_BUILT=1
fi
finish() {
  cleanup
  rm -f "$RUN"/embedded/calls.db* "$RUN"/redis/appendonlydir/*   # spawned calls: up to a few hundred MB
}
trap finish EXIT

need nginx wrk curl jq python3 redis-server redis-cli:redis-tools
mkdir -p "$OUT" "$RUN"

# How busy the box is before anything starts (other work skews every number).
busy_ticks() {  # "busy total" jiffies of the whole box
  local _cpu user nice sys idle iowait irq softirq steal _rest
  read -r _cpu user nice sys idle iowait irq softirq steal _rest < /proc/stat
  echo "$((user + nice + sys + irq + softirq + steal)) $((user + nice + sys + irq + softirq + steal + idle + iowait))"
}
box_busy_pct() {  # box_busy_pct "BUSY0 TOTAL0" "BUSY1 TOTAL1"
  local b0 t0 b1 t1
  read -r b0 t0 <<< "$1"; read -r b1 t1 <<< "$2"
  echo $((t1 > t0 ? 100 * (b1 - b0) / (t1 - t0) : 0))
}
t0=$(busy_ticks); sleep 1; idle_busy=$(box_busy_pct "$t0" "$(busy_ticks)")

build_start=$SECONDS
build_fngate
build_secs=$((SECONDS - build_start))
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
  commit+=" with uncommitted changes"
fi
{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
    "$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r); nothing pinned:" \
    "the replicas, redis-server, the backend and the load generators share the cores"
  echo "- tools: $(redis-server --version | awk '{print $1, $3}' | sed 's|v=||'), nginx $(nginx -v 2>&1 | sed 's|.*/||')," \
    "wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}' | sed 's|.*/||; s|-.*||')"
  echo "- fngate: $commit; release build took ${build_secs} s"
  echo "- load: ${DUR} s per run after a ${WARMUP} s warm-up, $REPS reps interleaved" \
    "(embedded, $(echo "$REPLICAS" | sed 's/ /, /g') replicas, ...); $CONNS connections in all," \
    "split over the replicas, one wrk (one thread) per replica"
  echo "- fngate's per-request access log is off (RUST_LOG=info,fngate::http::context=warn)"
  echo "- box busy before the start (1 s sample): ${idle_busy}%"
} > "$OUT/env.txt"
cat "$OUT/env.txt"
echo "raw outputs: $OUT"

# ---- servers that stay up ------------------------------------------------------
BE_PORT=${BE_PORT:-$(free_port)}
start_backend

REDIS_PORT=$(free_port)
while [[ $REDIS_PORT == "$BE_PORT" ]]; do REDIS_PORT=$(free_port); done
mkdir -p "$RUN/redis"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$RUN/redis" --save "" \
  --appendonly yes --appendfsync everysec --protected-mode no \
  --logfile "$RUN/redis/redis.log" --daemonize no > /dev/null 2>&1 &
REDIS=$!
STARTED+=("$REDIS")
wait_port "$REDIS_PORT" "$REDIS" || { cat "$RUN/redis/redis.log" >&2; exit 1; }
RCLI=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
for _ in $(seq 100); do   # it answers once its (empty) AOF is loaded
  [[ $("${RCLI[@]}" PING 2>/dev/null) == PONG ]] && break
  sleep 0.1
done
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

# gateway_config DIR STORE: a config in DIR/gateway.toml serving bench/square
# on a port of 127.0.0.1 the gateway picks (start_fngate reads it from the
# log); STORE is "embedded" or "redis".
gateway_config() {
  local dir=$1 store
  mkdir -p "$dir"
  if [[ $2 == redis ]]; then
    store="kind = \"redis\"
url = \"$REDIS_URL\"
prefix = \"$PREFIX\""
  else
    store='path = "calls.db"'
  fi
  cat > "$dir/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"
workers = 1
max_connections = 20000

[store]
$store
max_pending = 10000000

[apps.bench.functions.square]
backend = "http"
urls = ["http://127.0.0.1:$BE_PORT/square"]
concurrency = 4096
queue = 4096
public = true
TOML
  "$FNGATE_BIN" check --config "$dir/gateway.toml" > "$dir/check.txt" 2>&1 ||
    { echo "fngate check refused $dir/gateway.toml:" >&2; cat "$dir/check.txt" >&2; exit 1; }
}

GWS=()    # the running setup's fngate PIDs
URLS=()   # and their https://NAME:PORT, in the same order
CAS=()    # and each one's dev CA

# start_setup SETUP: "embedded", or a replica count on the Redis store.
start_setup() {
  local setup=$1 n i dir
  GWS=() URLS=() CAS=()
  if [[ $setup == embedded ]]; then
    n=1
    rm -f "$RUN"/embedded/calls.db*
  else
    n=$setup
    "${RCLI[@]}" FLUSHALL > /dev/null
  fi
  for i in $(seq "$n"); do
    if [[ $setup == embedded ]]; then
      dir="$RUN/embedded"; gateway_config "$dir" embedded
    else
      dir="$RUN/replica-$i"; gateway_config "$dir" redis
    fi
    FNGATE_CONF="$dir/gateway.toml" FNGATE_LOG="$dir/fngate.log" start_fngate
    GWS+=("$GW")
    URLS+=("https://$NAME:${GWADDR##*:}")
    CAS+=("$dir/certs/dev-ca.pem")
  done
}

stop_setup() {
  local pid
  for pid in "${GWS[@]}"; do stop_started "$pid"; done
  GWS=() URLS=() CAS=()
}

# ---- load runs -----------------------------------------------------------------
CLK=$(getconf CLK_TCK)
ROWS="$OUT/runs.tsv"
printf 'scenario\tsetup\trep\treq_s\terrors\twall_s\tredis_pct\tfngate_pct\tbox_pct\n' > "$ROWS"

pid_ticks() {  # utime+stime of the given processes, all their threads included
  local sum=0 pid stat fields
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a fields <<< "${stat##*) }"
    sum=$((sum + fields[11] + fields[12]))
  done
  echo "$sum"
}
# load_all MODE PATH SECONDS PREFIX: one wrk per running gateway, all at
# once, CONNS split over them; their outputs in PREFIX.{i}.txt.
load_all() {
  local mode=$1 path=$2 secs=$3 prefix=$4 n=${#URLS[@]} i conns cmd pids=()
  conns=$(((CONNS + n - 1) / n))
  for i in $(seq 0 $((n - 1))); do
    cmd=(wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s)
    [[ $mode == spawn ]] && cmd+=(-s "$HERE/spawn.lua")
    timeout --foreground $((secs + 30)) "${cmd[@]}" "${URLS[$i]}$path" > "$prefix.$((i + 1)).txt" 2>&1 &
    pids+=($!)
  done
  local failed=0
  for i in "${pids[@]}"; do wait "$i" || failed=1; done
  return $failed
}

# sum_wrk PREFIX N: "req/s errors" summed over N wrk outputs; errors: socket
# errors plus answers other than 202 (spawn) or 2xx (reads).
sum_wrk() {
  local prefix=$1 n=$2 i f rps=0 err=0 r e
  for i in $(seq "$n"); do
    f="$prefix.$i.txt"
    r=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    e=$(awk '/Socket errors:/ {gsub(",", ""); s += $4 + $6 + $8 + $10}
      /^non-202 answers:/ {s += $3} /Non-2xx or 3xx responses:/ {s += $5} END {print s + 0}' "$f")
    [[ -n $r ]] || { echo "   no rate in $f" >&2; r=0; e=$((e + 1)); }
    rps=$(awk -v a="$rps" -v b="$r" 'BEGIN {printf "%.0f", a + b}')
    err=$((err + e))
  done
  echo "$rps $err"
}

# measure SCENARIO SETUP REP MODE PATH: one timed run over every gateway, one row.
measure() {
  local sc=$1 setup=$2 rep=$3 mode=$4 path=$5 prefix="$OUT/$1.$2.$3" redis_pids=()
  [[ $setup != embedded ]] && redis_pids=("$REDIS")
  sleep 1
  local box0 box1 r0 r1 g0 g1 t0 t1
  box0=$(busy_ticks); r0=$(pid_ticks "${redis_pids[@]}"); g0=$(pid_ticks "${GWS[@]}"); t0=$(date +%s.%N)
  load_all "$mode" "$path" "$DUR" "$prefix" || echo "   (a wrk exited non-zero; see $prefix.*.txt)"
  t1=$(date +%s.%N); box1=$(busy_ticks); r1=$(pid_ticks "${redis_pids[@]}"); g1=$(pid_ticks "${GWS[@]}")
  still_running || exit 1
  local rps err wall redis_pct fngate_pct box_pct
  read -r rps err <<< "$(sum_wrk "$prefix" "${#URLS[@]}")"
  read -r wall redis_pct fngate_pct < <(awk -v t0="$t0" -v t1="$t1" -v r="$((r1 - r0))" -v g="$((g1 - g0))" \
    -v clk="$CLK" 'BEGIN {w = t1 - t0; printf "%.2f %.0f %.0f\n", w, 100 * r / clk / w, 100 * g / clk / w}')
  [[ $setup == embedded ]] && redis_pct=NA
  box_pct=$(box_busy_pct "$box0" "$box1")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$setup" "$rep" "$rps" "$err" "$wall" "$redis_pct" \
    "$fngate_pct" "$box_pct" >> "$ROWS"
  printf '   %-8s %-9s rep %s: %8s req/s  errors %s  redis %s%%  fngate %s%%  box %s%%\n' \
    "$sc" "$setup" "$rep" "$rps" "$err" "$redis_pct" "$fngate_pct" "$box_pct"
}

# run_setup SETUP REP: start it, check it, reads, then spawns; stop it.
run_setup() {
  local setup=$1 rep=$2 id got last
  echo ">> $setup$([[ $setup != embedded ]] && echo " replica(s) on redis"), rep $rep"
  start_setup "$setup"
  last=$((${#URLS[@]} - 1))
  id=$(curl -sS --max-time 10 --cacert "${CAS[0]}" -H 'Content-Type: application/json' --data "$BODY" \
    "${URLS[0]}/bench/square/spawn" | jq -r .call_id)
  got=$(curl -sS --max-time 40 --cacert "${CAS[$last]}" "${URLS[$last]}/calls/$id?wait=30")
  echo "check $setup rep $rep: spawned on gateway 1, GET /calls/$id on gateway $((last + 1)) -> $got" |
    tee -a "$OUT/checks.txt"
  [[ $got == "$EXPECT" ]] || { echo "check failed: expected $EXPECT" >&2; exit 1; }
  if ((WARMUP > 0)); then
    load_all get "/calls/$id" "$WARMUP" "$OUT/get.$setup.$rep.warmup" || true
  fi
  measure get "$setup" "$rep" get "/calls/$id"
  if ((WARMUP > 0)); then
    load_all spawn /bench/square/spawn "$WARMUP" "$OUT/spawn.$setup.$rep.warmup" || true
  fi
  measure spawn "$setup" "$rep" spawn /bench/square/spawn
  if [[ $setup != embedded ]]; then
    echo "   redis after the spawns: $("${RCLI[@]}" GET "${PREFIX}pending") pending," \
      "$("${RCLI[@]}" INFO memory | awk -F: '/^used_memory_human/ {print $2}' | tr -d '\r') used"
  fi
  stop_setup
}

for rep in $(seq "$REPS"); do
  run_setup embedded "$rep"
  for n in $REPLICAS; do run_setup "$n" "$rep"; done
done

# ---- table ---------------------------------------------------------------------
warn_lines=$(cat "$RUN"/embedded/fngate.log "$RUN"/replica-*/fngate.log 2>/dev/null |
  grep -cE ' (WARN|ERROR) |panicked' || true)
TABLE="$OUT/table.md"
python3 - "$ROWS" "$REPS" "$REPLICAS" > "$TABLE" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
reps, replicas = int(sys.argv[2]), sys.argv[3].split()
def med(setup, scenario, field):
    values = [float(r[field]) for r in rows
              if r["setup"] == setup and r["scenario"] == scenario and r[field] not in ("", "NA")]
    return statistics.median(values) if values else None
def fmt(value):
    return "n/a" if value is None else f"{value:,.0f}"
def errors(setup):
    return sum(int(r["errors"]) for r in rows if r["setup"] == setup)
print(f"| store | fngate | spawns/s | redis CPU % | fngate CPU % | reads/s | redis CPU % | fngate CPU % | box busy % (spawn, read) | errors |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
base = med("embedded", "spawn", "req_s")
for setup in ["embedded"] + replicas:
    store = "embedded (SQLite)" if setup == "embedded" else "redis"
    n = 1 if setup == "embedded" else int(setup)
    cells = [store, str(n)]
    for scenario in ("spawn", "get"):
        cells += [fmt(med(setup, scenario, "req_s")), fmt(med(setup, scenario, "redis_pct")),
                  fmt(med(setup, scenario, "fngate_pct"))]
    cells.append(f"{fmt(med(setup, 'spawn', 'box_pct'))}, {fmt(med(setup, 'get', 'box_pct'))}")
    cells.append(str(errors(setup)))
    print("| " + " | ".join(cells) + " |")
print()
print(f"Medians of {reps} rep(s); CPU in % of one core over the run (utime+stime / wall).")
PY
{
  echo
  echo "- fngate log lines at WARN or above, all runs: $warn_lines"
} >> "$TABLE"
echo
cat "$OUT/env.txt"
echo
cat "$TABLE"
echo "raw outputs: $OUT"
