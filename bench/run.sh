#!/usr/bin/env bash
# fngate beside nginx and HAProxy, same box, same load, same pinning: one
# table of requests/s, latency, gateway CPU and memory per connection, with
# fngate/nginx and fngate/haproxy ratios, ready to paste into bench/RESULTS.md.
#
# Starts on 127.0.0.1 only, and later stops by PID only, what it needs:
#   backend  nginx   :BE_PORT (9001)  POST /square -> {"result":1764}     conf/backend.nginx.conf
#   fngate           :free port       sessions resumable                  RUN/fngate/gateway.toml
#   fngate           :free port       session_resumption = false          RUN/fngate/gateway-full.toml
#   fngate           :free port       for the spawn scenario only         RUN/fngate/gateway-spawn.toml
#   gateway  nginx   :free port       TLS h1 + h2, session tickets on     conf/gateway.nginx.conf
#                    :free port       TLS h1, tickets and cache off       (same file)
#   gateway  haproxy :free port       TLS h1 + h2, session tickets on     conf/gateway.haproxy.cfg
#                    :free port       TLS h1, tickets and cache off       (same file)
# fngate's function bench/square is an `http` backend; nginx and HAProxy
# proxy to the same backend through reused keep-alive connections. All
# three close idle client connections after 120 s.
#
# Scenarios (TESTS, comma-separated; default all of them); the two
# gateways' runs are interleaved (fngate rep 1, nginx rep 1, haproxy rep 1,
# fngate rep 2...):
#   h1            wrk: TLS HTTP/1.1 keep-alive, POST {"x":42}
#   h2            h2load: CONNS connections x H2_STREAMS streams
#   close-full    wrk, Connection: close: a new connection per request, every handshake full
#   close-resume  the same with resumption on (wrk resumes TLS sessions when it reconnects)
#   spawn         fngate only: POST /bench/square/spawn (durable 202s) and GET /calls/{id}
#   idle          IDLE_CONNS idle TLS connections (bench/idle.py): gateway RSS per connection
#
#   bench/run.sh                              # pinned, 2 reps x 10 s: about 5 minutes (+ the build)
#   PIN=0 bench/run.sh                        # unpinned: 2 gateway workers, 2 load threads
#   HAPROXY=0 bench/run.sh                    # nginx alone beside fngate
#   TESTS=h1,h2 DUR=3 REPS=1 bench/run.sh     # a quick look
# Knobs (env): DUR REPS CONNS PIN TESTS WARMUP H2_STREAMS IDLE_CONNS OUT BE_PORT THREADS HAPROXY
#   HTTP1_ENGINE (fngate's server.http1_engine: hyper or fngate; unset: the build's default) FNGATE_BIN (with FNGATE_BUILT=1: another build)
#
# PIN=1 (the default): the gateway under test alone on CPU 1 with one worker
# (fngate `workers = 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`);
# the backend (one nginx worker) and the load generator (one thread) share CPU 0.
# CPU: utime+stime of the gateway's processes (nginx: master and workers)
# over each run's wall time, in % of one core.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DUR=${DUR:-10}
REPS=${REPS:-2}
CONNS=${CONNS:-64}
PIN=${PIN:-1}
WARMUP=${WARMUP:-2}
H2_STREAMS=${H2_STREAMS:-10}
IDLE_CONNS=${IDLE_CONNS:-10000}
ALL_TESTS=h1,h2,close-full,close-resume,spawn,idle
TESTS=${TESTS:-$ALL_TESTS}
HAPROXY=${HAPROXY:-1}   # 0: nginx alone beside fngate
OUT=${OUT:-$HERE/results/$(date +%Y%m%d-%H%M%S)-pin$PIN}
RUN="$OUT/run"             # the servers' files: configs, certificates, logs, SQLite
# The clients connect to 127.0.0.1 only. wrk sends its URL's host as SNI, and an IP
# address there is illegal (RFC 6066): rustls logs a warning per handshake. So the
# URLs name localhost, as long as it resolves to 127.0.0.1 first.
NAME=127.0.0.1
if [[ $(getent ahosts localhost 2>/dev/null | awk 'NR == 1 {print $1}') == 127.0.0.1 ]]; then
  NAME=localhost
fi
BODY='{"x":42}'
EXPECT='{"result":1764}'

((DUR >= 1 && DUR <= 120)) || { echo "DUR must be 1..120 (seconds)" >&2; exit 2; }
((REPS >= 1 && REPS <= 10)) || { echo "REPS must be 1..10" >&2; exit 2; }
for t in ${TESTS//,/ }; do
  [[ ,$ALL_TESTS, == *",$t,"* ]] || { echo "unknown test '$t' (known: $ALL_TESTS)" >&2; exit 2; }
done
selected() { [[ ,$TESTS, == *",$1,"* ]]; }
[[ $HAPROXY == 0 || $HAPROXY == 1 ]] || { echo "HAPROXY must be 0 or 1" >&2; exit 2; }
peer() { [[ $1 == nginx || $HAPROXY == 1 ]]; }   # peer NAME: that reference gateway runs
GATEWAYS=(fngate nginx)
peer haproxy && GATEWAYS+=(haproxy)

if [[ $PIN == 1 ]] && (($(nproc) < 2)); then
  echo "PIN=1 needs 2 CPUs (gateway on CPU 1, the rest on CPU 0); use PIN=0" >&2
  exit 2
fi
if [[ $PIN == 1 ]]; then
  GW_PIN=(taskset -c 1); LOAD_PIN=(taskset -c 0); GW_WORKERS=1; BE_WORKERS=1; THREADS=${THREADS:-1}
else
  GW_PIN=(); LOAD_PIN=(); GW_WORKERS=2; BE_WORKERS=2; THREADS=${THREADS:-2}
fi

# shellcheck source=lib.sh
. "$HERE/lib.sh"
finish() {
  cleanup
  rm -rf "$RUN"/fngate/data   # up to a few hundred MB of spawned calls
}
trap finish EXIT

need nginx wrk h2load:nghttp2-client curl openssl jq python3 taskset:util-linux pgrep:procps
peer haproxy && need haproxy
mkdir -p "$OUT" "$RUN"
printf '%s' "$BODY" > "$RUN/body.json"

# 10,000 idle connections need more descriptors than the usual 1024.
ulimit -Hn 65536 2>/dev/null || true
hard=$(ulimit -Hn); [[ $hard == unlimited ]] && hard=65536
ulimit -n $((hard < 65536 ? hard : 65536))
NOFILE=$(ulimit -n)
if ((NOFILE < IDLE_CONNS + 1024)); then
  echo "warning: ulimit -n is $NOFILE, too low for $IDLE_CONNS idle connections" >&2
fi

# ---- what this run measures on ------------------------------------------------
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
    "$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "- tools: nginx $(nginx -v 2>&1 | sed 's|.*/||'), wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}' | sed 's|.*/||; s|-.*||')," \
    "h2load $(h2load --version | awk '{print $2}' | sed 's|.*/||'), $(openssl version | awk '{print $1, $2}')," \
    "curl $(curl --version | awk 'NR==1 {print $2}'), $(python3 --version), $(rustc --version | awk '{print $1, $2}')"
  peer haproxy && echo "- haproxy: $(haproxy -v 2>&1 | awk 'NR==1 {print $3}')"
  echo "- fngate: $commit; release build took ${build_secs} s"
  if [[ $PIN == 1 ]]; then
    echo "- PIN=1: gateway on CPU 1 (fngate workers = 1, nginx worker_processes 1, haproxy nbthread 1);" \
      "backend (nginx, 1 worker) and load generator ($THREADS thread) on CPU 0"
  else
    echo "- PIN=0: nothing pinned; fngate workers = 2, nginx worker_processes 2, haproxy nbthread 2," \
      "backend 2 workers, load generator $THREADS threads"
  fi
  echo "- load: ${DUR} s per run, $REPS reps interleaved (${GATEWAYS[*]}, fngate, ...) after a ${WARMUP} s warm-up;" \
    "$CONNS connections, h2 $H2_STREAMS streams each; idle: $IDLE_CONNS connections"
  echo "- no gateway writes an access log (fngate [log] access = \"off\", nginx access_log off, HAProxy no log)"
  echo "- box busy before the start (1 s sample): ${idle_busy}%"
} > "$OUT/env.txt"
cat "$OUT/env.txt"
echo "raw outputs: $OUT"

# ---- servers -------------------------------------------------------------------
# nginx_pids MASTER WORKERS: the master and, once they are all up, its workers.
nginx_pids() {
  for _ in $(seq 50); do (($(pgrep -c -P "$1") >= $2)) && break; sleep 0.1; done
  echo "$1" $(pgrep -P "$1")
}
start_backend "${LOAD_PIN[@]}"
read -r -a BE_PIDS <<< "$(nginx_pids "$BE" "$BE_WORKERS")"

declare -A PIDS   # gateway process(es) by name: fngate, fngate-full, nginx, haproxy
declare -A URL URL_FULL CA   # each gateway's base URLs and the CA its clients trust

# fngate_config FILE RESUMPTION STORE: a config serving bench/square from the backend.
fngate_config() {
  cat > "$1" <<TOML
[server]
listen = "127.0.0.1:0"
${HTTP1_ENGINE:+http1_engine = '$HTTP1_ENGINE'}
workers = $GW_WORKERS
session_resumption = $2
max_connections = 20000
idle_timeout = "120s"

[store]
path = "$3"
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
  "$FNGATE_BIN" check --config "$1" > "$1.check" 2>&1 ||
    { echo "fngate check refused $1:" >&2; cat "$1.check" >&2; exit 1; }
}
mkdir -p "$RUN/fngate"
fngate_config "$RUN/fngate/gateway.toml" true data/calls.db
FNGATE_CONF="$RUN/fngate/gateway.toml" FNGATE_LOG="$RUN/fngate/fngate.log" start_fngate "${GW_PIN[@]}"
PIDS[fngate]=$GW; FN="https://$NAME:${GWADDR##*:}"
if selected close-full; then
  fngate_config "$RUN/fngate/gateway-full.toml" false data/calls-full.db
  FNGATE_CONF="$RUN/fngate/gateway-full.toml" FNGATE_LOG="$RUN/fngate/fngate-full.log" start_fngate "${GW_PIN[@]}"
  PIDS[fngate-full]=$GW; FN_FULL="https://$NAME:${GWADDR##*:}"
fi
FN_CA="$RUN/fngate/certs/dev-ca.pem"

# nginx needs a certificate of its own: EC P-256 for 127.0.0.1 and localhost.
mkdir -p "$RUN/tls" "$RUN/nginx/tmp"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=127.0.0.1 -addext 'subjectAltName=IP:127.0.0.1,DNS:localhost' \
  -keyout "$RUN/tls/key.pem" -out "$RUN/tls/cert.pem" 2> "$RUN/tls/openssl.log"
NG_PORT=$(free_port)
NG_PORT_FULL=$(free_port)
while [[ $NG_PORT_FULL == "$NG_PORT" ]]; do NG_PORT_FULL=$(free_port); done
sed -e "s|@PORT@|$NG_PORT|" -e "s|@PORT_FULL@|$NG_PORT_FULL|" -e "s|@BACKEND_PORT@|$BE_PORT|" \
  -e "s|@CERT@|$RUN/tls/cert.pem|" -e "s|@KEY@|$RUN/tls/key.pem|" -e "s|@NOFILE@|$NOFILE|" \
  "$HERE/conf/gateway.nginx.conf" > "$RUN/nginx/nginx.conf"
"${GW_PIN[@]}" nginx -p "$RUN/nginx/" -e "$RUN/nginx/error.log" -c "$RUN/nginx/nginx.conf" \
  -g "daemon off; worker_processes $GW_WORKERS;" > "$RUN/nginx/stdout.log" 2>&1 &
NG=$!
STARTED+=("$NG")
if ! { wait_port "$NG_PORT" "$NG" && wait_port "$NG_PORT_FULL" "$NG"; }; then
  cat "$RUN/nginx/stdout.log" "$RUN/nginx/error.log" >&2
  exit 1
fi
PIDS[nginx]=$(nginx_pids "$NG" "$GW_WORKERS")
NX="https://$NAME:$NG_PORT"
NX_FULL="https://$NAME:$NG_PORT_FULL"
NX_CA="$RUN/tls/cert.pem"
URL[nginx]=$NX; URL_FULL[nginx]=$NX_FULL; CA[nginx]=$NX_CA
URL[fngate]=$FN; CA[fngate]=$FN_CA
[[ -n ${FN_FULL:-} ]] && URL_FULL[fngate]=$FN_FULL

# HAProxy, on the same certificate (chain and key in one file), pinned the same way.
if peer haproxy; then
  mkdir -p "$RUN/haproxy"
  cat "$RUN/tls/cert.pem" "$RUN/tls/key.pem" > "$RUN/haproxy/combined.pem"
  HA_PORT=$(free_port)
  HA_PORT_FULL=$(free_port)
  while [[ $HA_PORT_FULL == "$HA_PORT" ]]; do HA_PORT_FULL=$(free_port); done
  sed -e "s|@PORT@|$HA_PORT|" -e "s|@PORT_FULL@|$HA_PORT_FULL|" -e "s|@BACKEND_PORT@|$BE_PORT|" \
    -e "s|@PEM@|$RUN/haproxy/combined.pem|" -e "s|@THREADS@|$GW_WORKERS|" -e "s|@RUN@|$RUN/haproxy|" \
    -e "s|@MAXCONN@|$(((NOFILE - 1024) / 2))|" \
    "$HERE/conf/gateway.haproxy.cfg" > "$RUN/haproxy/haproxy.cfg"
  # -db: stays in the foreground, one process (its threads), so its PID is the gateway's.
  "${GW_PIN[@]}" haproxy -db -f "$RUN/haproxy/haproxy.cfg" > "$RUN/haproxy/haproxy.log" 2>&1 &
  HA=$!
  STARTED+=("$HA")
  if ! { wait_port "$HA_PORT" "$HA" && wait_port "$HA_PORT_FULL" "$HA"; }; then
    cat "$RUN/haproxy/haproxy.log" >&2
    exit 1
  fi
  PIDS[haproxy]=$HA
  URL[haproxy]="https://$NAME:$HA_PORT"; URL_FULL[haproxy]="https://$NAME:$HA_PORT_FULL"
  CA[haproxy]=$NX_CA
fi

# ---- correctness checks --------------------------------------------------------
check() {  # check NAME CA URL [curl args...]
  local name=$1 ca=$2 url=$3 got
  shift 3
  got=$(curl -sS --max-time 5 --cacert "$ca" -H 'Content-Type: application/json' --data "$BODY" \
    -w ' %{http_code} HTTP/%{http_version}' "$@" "$url") || got="curl failed"
  echo "check $name: $got" | tee -a "$OUT/checks.txt"
  [[ $got == "$EXPECT 200 "* ]] || { echo "check $name failed: expected $EXPECT with 200" >&2; exit 1; }
}
resumes() {  # resumes URL: "yes" when a second connection resumes the first one's TLS session
  local hostport=${1#https://} session="$RUN/tls/session" second=""
  local req=$'GET / HTTP/1.0\r\n\r\n'   # an answer brings the TLS 1.3 tickets along
  rm -f "$session"
  printf '%s' "$req" | timeout 5 openssl s_client -connect "$hostport" -sess_out "$session" -ign_eof \
    >/dev/null 2>&1 || true
  if [[ -s $session ]]; then
    second=$(printf '%s' "$req" | timeout 5 openssl s_client -connect "$hostport" -sess_in "$session" \
      -ign_eof 2>/dev/null) || true
  fi
  if grep -q '^Reused' <<< "$second"; then echo yes; else echo no; fi
}
check fngate-h1 "$FN_CA" "$FN/bench/square" --http1.1
check fngate-h2 "$FN_CA" "$FN/bench/square" --http2
check nginx-h1 "$NX_CA" "$NX/square" --http1.1
check nginx-h2 "$NX_CA" "$NX/square" --http2
if peer haproxy; then
  check haproxy-h1 "$NX_CA" "${URL[haproxy]}/square" --http1.1
  check haproxy-h2 "$NX_CA" "${URL[haproxy]}/square" --http2
fi
WARNINGS=()
NOTES=()
resumption() {  # resumption NAME URL WANTED: checks that the server resumes sessions, or not
  local got
  got=$(resumes "$2")
  echo "check $1 resumes TLS sessions: $got" | tee -a "$OUT/checks.txt"
  [[ $got == "$3" ]] || WARNINGS+=("$1 resumes TLS sessions: $got, where $3 was wanted")
}
resumption fngate "$FN" yes
resumption nginx "$NX" yes
peer haproxy && resumption haproxy "${URL[haproxy]}" yes
if selected close-full; then
  check fngate-full-h1 "$FN_CA" "$FN_FULL/bench/square" --http1.1
  check nginx-full-h1 "$NX_CA" "$NX_FULL/square" --http1.1
  resumption fngate-full "$FN_FULL" no
  resumption nginx-full "$NX_FULL" no
  if peer haproxy; then
    check haproxy-full-h1 "$NX_CA" "${URL_FULL[haproxy]}/square" --http1.1
    resumption haproxy-full "${URL_FULL[haproxy]}" no
  fi
fi

# ---- load runs -----------------------------------------------------------------
CLK=$(getconf CLK_TCK)
ROWS="$OUT/runs.tsv"
printf 'scenario\tgateway\trep\ttool\treq_s\tp50_ms\tp99_ms\terrors\twall_s\tgw_pct\tbe_pct\tlg_pct\tbox_pct\n' > "$ROWS"

pid_ticks() {  # utime+stime of the given processes, all their threads included
  local sum=0 pid stat fields
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a fields <<< "${stat##*) }"
    sum=$((sum + fields[11] + fields[12]))
  done
  echo "$sum"
}

to_ms() {  # a wrk latency (812.00us, 1.23ms, 1.01s) in ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) printf "%.3f", substr(v, 1, length(v) - 2) / 1000
    else if (v ~ /ms$/) printf "%.3f", substr(v, 1, length(v) - 2)
    else if (v ~ /s$/) printf "%.3f", substr(v, 1, length(v) - 1) * 1000
    else printf "NA" }'
}
parse_wrk() {  # -> "req/s p50 p99 errors"; errors: socket errors + bad statuses
  local f=$1 rps p50 p99 sock bad
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
  sock=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$f")
  if grep -q '^non-202 answers:' "$f"; then   # spawn.lua counts every status but 202
    bad=$(awk '/^non-202 answers:/ {print $3}' "$f")
  else
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$f")
  fi
  echo "${rps:-NA} $p50 $p99 $((${sock:-0} + ${bad:-0}))"
}
parse_h2load() {  # parse_h2load OUT LOG -> "req/s p50 p99 errors"; percentiles from --log-file
  local f=$1 log=$2 rps err pct="NA NA"
  rps=$(awk '/^finished in/ {gsub(",", ""); print $4}' "$f")
  err=$(awk '/^requests:/ {gsub(",", ""); s += $10 + $12 + $14}
    /^status codes:/ {gsub(",", ""); s += $5 + $7 + $9} END {print s + 0}' "$f")
  if [[ -s $log ]]; then   # lines: start time, status, duration in us
    pct=$(awk -F'\t' '$2 == 200 {print $3}' "$log" | sort -n | awk '{v[NR] = $1}
      END { if (NR == 0) {print "NA NA"; exit}
            i = int(0.50 * NR); j = int(0.99 * NR); if (i < 1) i = 1; if (j < 1) j = 1
            printf "%.3f %.3f\n", v[i] / 1000, v[j] / 1000 }')
  fi
  echo "${rps:-NA} $pct $err"
}

# load TOOL MODE URL SECONDS OUTFILE [H2LOG]; MODE: post | close | spawn | get
load() {
  local tool=$1 mode=$2 url=$3 secs=$4 out=$5 log=${6:-} cmd
  if [[ $tool == h2load ]]; then
    cmd=(h2load -t"$THREADS" -c"$CONNS" -m"$H2_STREAMS" -D "$secs" -d "$RUN/body.json"
      -H 'Content-Type: application/json')
    [[ -n $log ]] && cmd+=(--log-file="$log")
  else
    cmd=(wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 5s --latency)
    case $mode in
      post) cmd+=(-s "$HERE/post.lua") ;;
      close) cmd+=(-s "$HERE/post.lua" -H 'Connection: close') ;;
      spawn) cmd+=(-s "$HERE/spawn.lua") ;;
    esac
  fi
  "${LOAD_PIN[@]}" timeout --foreground $((secs + 30)) "${cmd[@]}" "$url" > "$out" 2>&1
}

# measure SCENARIO GATEWAY PROCESS REP TOOL MODE URL: one timed run, one row.
measure() {
  local sc=$1 gw=$2 proc=$3 rep=$4 tool=$5 mode=$6 url=$7
  local out="$OUT/$sc.$gw.$rep.txt" log="" times="$OUT/$sc.$gw.$rep.time" gw_pids=()
  read -r -a gw_pids <<< "${PIDS[$proc]}"
  [[ $tool == h2load ]] && log="$RUN/$sc.$gw.$rep.h2log"
  sleep 1
  local box0 box1 g0 g1 b0 b1 TIMEFORMAT='%R %U %S'
  box0=$(busy_ticks); g0=$(pid_ticks "${gw_pids[@]}"); b0=$(pid_ticks "${BE_PIDS[@]}")
  { time load "$tool" "$mode" "$url" "$DUR" "$out" "$log"; } 2> "$times" ||
    echo "   ($tool exited non-zero; see $out)"
  still_running || exit 1
  box1=$(busy_ticks); g1=$(pid_ticks "${gw_pids[@]}"); b1=$(pid_ticks "${BE_PIDS[@]}")
  local res rps p50 p99 err wall user sys
  if [[ $tool == h2load ]]; then res=$(parse_h2load "$out" "$log"); rm -f "$log"; else res=$(parse_wrk "$out"); fi
  read -r rps p50 p99 err <<< "$res"
  read -r wall user sys < <(tail -n 1 "$times")
  local cpu gwc bec lgc
  cpu=$(awk -v g="$((g1 - g0))" -v b="$((b1 - b0))" -v u="$user" -v s="$sys" -v w="$wall" -v clk="$CLK" \
    'BEGIN {printf "%.0f %.0f %.0f", 100 * g / clk / w, 100 * b / clk / w, 100 * (u + s) / w}')
  read -r gwc bec lgc <<< "$cpu"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$gw" "$rep" "$tool" "$rps" "$p50" \
    "$p99" "$err" "$wall" "$gwc" "$bec" "$lgc" "$(box_busy_pct "$box0" "$box1")" >> "$ROWS"
  printf '   %-12s %-6s rep %s: %9s req/s  p50 %7s ms  p99 %7s ms  errors %s  gw %s%%  backend %s%%  load %s%%\n' \
    "$sc" "$gw" "$rep" "$rps" "$p50" "$p99" "$err" "$gwc" "$bec" "$lgc"
}

# pair SCENARIO TOOL MODE FULL: fngate and each peer warmed up, then their runs
# interleaved. FULL=full: the listeners that never resume TLS sessions.
# fngate serves the function at /bench/square, the peers at /square.
pair() {
  local sc=$1 tool=$2 mode=$3 full=$4 rep gw proc url
  selected "$sc" || return 0
  echo ">> $sc: $tool, $mode"
  target() {  # target GATEWAY: sets proc and url
    proc=$1; url=${URL[$1]}
    [[ $full == full ]] && { url=${URL_FULL[$1]}; [[ $1 == fngate ]] && proc=fngate-full; }
    if [[ $1 == fngate ]]; then url+=/bench/square; else url+=/square; fi
  }
  if ((WARMUP > 0)); then
    for gw in "${GATEWAYS[@]}"; do
      target "$gw"
      load "$tool" "$mode" "$url" "$WARMUP" "$OUT/$sc.$gw.warmup.txt" || true
    done
  fi
  for rep in $(seq "$REPS"); do
    for gw in "${GATEWAYS[@]}"; do
      target "$gw"
      measure "$sc" "$gw" "$proc" "$rep" "$tool" "$mode" "$url"
    done
  done
}

pair h1 wrk post resume
pair h2 h2load post resume
pair close-full wrk close full
pair close-resume wrk close resume

# ---- spawned calls (fngate only) -----------------------------------------------
# On an fngate of their own, stopped afterwards: calls are accepted faster
# than they run, and the backlog left behind must not weigh on the idle
# scenario. Reads of a finished call first, then spawns; the gateway CPU of
# the spawn runs includes running the calls alongside.
store_count() {  # store_count STATE: calls in that state in the spawn fngate's SQLite file
  python3 - "$RUN/fngate/data/calls-spawn.db" "$1" <<'PY' 2>/dev/null || echo NA
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(db.execute("select count(*) from calls where state = ?", (int(sys.argv[2]),)).fetchone()[0])
PY
}
if selected spawn; then
  echo ">> spawn: wrk, GET /calls/{id} of a finished call, then POST /bench/square/spawn"
  fngate_config "$RUN/fngate/gateway-spawn.toml" true data/calls-spawn.db
  FNGATE_CONF="$RUN/fngate/gateway-spawn.toml" FNGATE_LOG="$RUN/fngate/fngate-spawn.log" start_fngate "${GW_PIN[@]}"
  PIDS[fngate-spawn]=$GW; FN_SPAWN="https://$NAME:${GWADDR##*:}"
  C=(curl -sS --max-time 40 --cacert "$FN_CA")
  done_id=$("${C[@]}" -H 'Content-Type: application/json' --data "$BODY" "$FN_SPAWN/bench/square/spawn" |
    jq -r .call_id)
  got=$("${C[@]}" "$FN_SPAWN/calls/$done_id?wait=30")
  echo "check fngate-spawn: GET /calls/$done_id -> $got" | tee -a "$OUT/checks.txt"
  [[ $got == "$EXPECT" ]] || { echo "check fngate-spawn failed: expected $EXPECT" >&2; exit 1; }
  if ((WARMUP > 0)); then
    load wrk get "$FN_SPAWN/calls/$done_id" "$WARMUP" "$OUT/get-call.fngate.warmup.txt" || true
  fi
  for rep in $(seq "$REPS"); do
    measure get-call fngate fngate-spawn "$rep" wrk get "$FN_SPAWN/calls/$done_id"
  done
  if ((WARMUP > 0)); then
    load wrk spawn "$FN_SPAWN/bench/square/spawn" "$WARMUP" "$OUT/spawn.fngate.warmup.txt" || true
  fi
  ran_rates=()
  for rep in $(seq "$REPS"); do
    ran=$(store_count 2)
    measure spawn fngate fngate-spawn "$rep" wrk spawn "$FN_SPAWN/bench/square/spawn"
    ran=$(awk -v a="$ran" -v b="$(store_count 2)" -v d="$DUR" 'BEGIN {printf "%.0f", (b - a) / d}')
    ran_rates+=("$ran")
    echo "   spawned calls run meanwhile: $ran/s; pending now: $(store_count 0)"
  done
  ran=$(printf '%s\n' "${ran_rates[@]}" | sort -n |
    awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')
  NOTES+=("spawn: spawned calls run while spawning: $ran/s (median of reps); pending when the scenario ended: $(store_count 0)")
  # The store's commits over the whole scenario (reads, warm-up and spawns).
  "${C[@]}" "$FN_SPAWN/_/metrics" > "$OUT/spawn.metrics.txt" || true
  commits=$(awk '/^fngate_store_commit_duration_seconds_count/ {n = $2}
    /^fngate_store_commit_duration_seconds_sum/ {s = $2}
    END {if (n > 0) printf "%d commits, %.2f ms each on average", n, 1000 * s / n}' "$OUT/spawn.metrics.txt")
  NOTES+=("spawn: the store's writer over the scenario: ${commits:-no commit metrics}")
  stop_started "${PIDS[fngate-spawn]}"
fi

# ---- idle connections ----------------------------------------------------------
rss_kib() {  # VmRSS summed over the given processes
  local sum=0 pid kib
  for pid in "$@"; do
    kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || kib=0
    sum=$((sum + ${kib:-0}))
  done
  echo "$sum"
}
established() {  # established TCP connections whose local end is 127.0.0.1:PORT
  awk -v port="$(printf ':%04X' "$1")" '$4 == "01" && substr($2, length($2) - 4) == port' /proc/net/tcp | wc -l
}
# hold_idle GATEWAY PROCESS PORT PATH CA: holds IDLE_CONNS connections, one row of idle.tsv.
hold_idle() {
  local gw=$1 proc=$2 port=$3 path=$4 ca=$5 gw_pids=() before after client ready="" ok failed open held
  read -r -a gw_pids <<< "${PIDS[$proc]}"
  sleep 1
  before=$(rss_kib "${gw_pids[@]}")
  "${LOAD_PIN[@]}" python3 "$HERE/idle.py" --port "$port" --path "$path" --count "$IDLE_CONNS" \
    --cafile "$ca" > "$OUT/idle.$gw.txt" 2> "$OUT/idle.$gw.err" &
  client=$!
  STARTED+=("$client")
  for _ in $(seq 1200); do
    ready=$(grep '^ready' "$OUT/idle.$gw.txt" || true)
    [[ -n $ready ]] && break
    alive "$client" || break
    sleep 0.25
  done
  [[ -n $ready ]] || { echo "   idle client for $gw did not get ready; see $OUT/idle.$gw.err" >&2; exit 1; }
  read -r _ ok failed <<< "$ready"
  still_running || exit 1
  sleep 2
  open=$(established "$port")
  after=$(rss_kib "${gw_pids[@]}")
  stop_started "$client"
  held=$(awk '/^held/ {print $2}' "$OUT/idle.$gw.txt")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$gw" "$IDLE_CONNS" "$ok" "$failed" "$open" "${held:-0}" \
    "$before" "$after" >> "$OUT/idle.tsv"
  echo "   $gw: $ok connections ok, $failed failed, $open open at the gateway, ${held:-0} still open" \
    "at the end; RSS $before -> $after KiB"
}
if selected idle; then
  echo ">> idle: $IDLE_CONNS idle TLS connections, one POST answered on each"
  printf 'gateway\twanted\tok\tfailed\tserver_open\theld\trss_before_kib\trss_after_kib\n' > "$OUT/idle.tsv"
  hold_idle fngate fngate "${FN##*:}" /bench/square "$FN_CA"
  hold_idle nginx nginx "$NG_PORT" /square "$NX_CA"
  peer haproxy && hold_idle haproxy haproxy "$HA_PORT" /square "$NX_CA"
fi

# ---- table ---------------------------------------------------------------------
warn_lines=$(cat "$RUN"/fngate/fngate*.log | grep -cE ' (WARN|ERROR) |panicked' || true)
foreign=$(awk -F'\t' -v n="$(nproc)" 'NR > 1 && $13 != "" {print $13 - ($10 + $11 + $12) / n}' "$ROWS" |
  sort -n | awk '{v[NR] = $1} END {if (NR) printf "%.0f", v[int((NR + 1) / 2)]; else print "n/a"}')
{
  echo "## fngate, ${GATEWAYS[*]:1} side by side, PIN=$PIN ($(date -u +%Y-%m-%d), bench/run.sh)"
  echo
  cat "$OUT/env.txt"
  echo
  python3 "$HERE/table.py" "$OUT"
  echo
  echo "- req/s and latency: median of the reps; spread = (max - min) / median of req/s; errors: all reps."
  echo "- gw CPU: the gateway's processes (nginx: master and workers), % of one core, over the run's wall"
  echo "  time; req per gw core-s = req/s / gw CPU; drv CPU: backend + load generator."
  echo "- RSS: VmRSS of fngate and of HAProxy; of nginx's master and workers summed."
  echo "- fngate log lines at WARN or ERROR level during the run: $warn_lines"
  echo "- box CPU not spent by the bench's own processes during the loads (median over runs): $foreign% of" \
    "all cores: other work on the machine, and kernel time outside those processes. Well above 10%," \
    "the figures are noisy."
  for n in "${NOTES[@]}"; do echo "- $n"; done
  echo "- whole run: $((SECONDS / 60)) min $((SECONDS % 60)) s"
  for w in "${WARNINGS[@]}"; do echo "- WARNING: $w"; done
} | tee "$OUT/table.md"
