#!/usr/bin/env bash
# Warm instance pools against a process per call, and against their own
# instances called directly: calls/s and latency of the function square
# (POST {"x":42}) five ways, and the cold start of an empty pool against
# the instance's own start-up. One Markdown table at the end, ready to
# paste into bench/RESULTS.md, with the targets beside the numbers.
#
#   bench/instances.sh                          # 2 reps x 10 s, 10 cold starts each: about 4 minutes (+ the build)
#   DUR=3 REPS=1 COLD_REPS=3 bench/instances.sh # a quick look
#   TESTS=cold bench/instances.sh               # cold starts only (TESTS=load: the loads only)
# Knobs (env): DUR EXEC_DUR REPS WARMUP COLD_REPS COLD_TRACE CONNS THREADS TESTS PYTHON OUT
#
# Load (TESTS=load): wrk, CONNS (16) clients on THREADS (2) threads, TLS
# HTTP/1.1 keep-alive, bench/post.lua, DUR s per run after a WARMUP s
# warm-up; the five runs of a rep one after the other, REPS times, so the
# runs that are compared with each other are minutes apart at most:
#   (a) exec     python3 examples/square.py, one process per call, at the
#                function's default concurrency (16): as a user runs it.
#                EXEC_DUR s (default DUR): a few hundred calls.
#   (b) lambda   2 warm instances (min_instances = max_instances = 2) of
#                python3 examples/lambda_runtime.py examples/warm.handler
#   (c) ric      the same handler under python3 -m awslambdaric
#   (d) http     2 warm instances of python3 examples/api.py, 8 calls each
#                at once (instance_concurrency = 8), through fngate
#   (e) direct   the SAME two api.py processes, plain HTTP to
#                http://127.0.0.1:$PORT/invoke of each: their ports are read
#                from the instances' environment (PORT in /proc/PID/environ).
#                One wrk process whose Lua setup() gives each thread one of
#                the two addresses: thread 1's 8 connections go to instance
#                1, thread 2's to instance 2, as fngate spreads 16 calls over
#                two instances of 8. A per-request round robin in Lua cannot
#                work (wrk keeps a connection to the address it opened), two
#                wrk processes would give two latency histograms that cannot
#                be merged; this way calls/s and percentiles are one wrk's,
#                with the same clients, threads and Lua machinery as (d). The
#                body is the invocation request fngate sends (same bytes but
#                the ids), with the same Content-Type.
# A lambda instance whose caller goes away mid-call is stopped and replaced,
# so the end of every wrk run replaces the lambda instances it was calling:
# each run waits 1 s and reads the pools' PIDs again.
# Cold start (TESTS=cold): a second gateway whose pools are empty
# (min_instances = 0, max_instances = 1, idle_timeout = 1 s). COLD_REPS
# times, for each command in turn, after one unmeasured round:
#   alone     a stand-in started here spawns the command and times it:
#             lambda: to its first GET /2018-06-01/runtime/invocation/next
#             (served by a small Runtime API stand-in), then to its posted
#             result; api.py: to its first accepted connection (probed every
#             1 ms), then to the answer of POST /invoke on it
#   fngate    the gateway has no child process left; one curl call on a new
#             connection: its time from the request sent to the answer
#             (curl's time_total - time_pretransfer: the TLS handshake left
#             out); then a second curl the same way, the instance now warm
# fngate adds = the first call - the instance's start-up alone, paired by rep.
# Python's start-up alone moves by tens of ms from one start to the next on a
# busy machine, so when perf may record kernel tracepoints (COLD_TRACE=1, the
# default; 0: off), the measured rounds are also traced, and each fngate cold
# start is split into its steps within the SAME start: the gateway's read of
# the request, the instance's execve, its listen() (api.py) or first send of
# GET .../next (lambda clients), the gateway noticing it (its ready_path probe,
# its read of GET next), the answer. fngate adds = first call - the
# instance's own exec-to-up time; the target row uses that when it exists.
#
# The interpreter is the one `python3` names (sys.executable, or PYTHON), so
# a version manager's wrapper script does not add to every process start.
# Nothing is pinned: the gateway, the instances and wrk share the machine's
# cores, as they would on a small host. Everything listens on 127.0.0.1;
# what this script starts it stops by PID.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
KNOBS=(DUR EXEC_DUR REPS WARMUP COLD_REPS COLD_TRACE CONNS THREADS TESTS PYTHON)
COMMAND=""
for k in "${KNOBS[@]}"; do [[ -n ${!k+x} ]] && COMMAND+="$k=${!k} "; done
COMMAND+="bench/instances.sh"
DUR=${DUR:-10}
EXEC_DUR=${EXEC_DUR:-$DUR}
REPS=${REPS:-2}
WARMUP=${WARMUP:-2}
COLD_REPS=${COLD_REPS:-10}
COLD_TRACE=${COLD_TRACE:-1}
CONNS=${CONNS:-16}
THREADS=${THREADS:-2}
TESTS=${TESTS:-load,cold}
PYTHON=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
OUT=${OUT:-$HERE/results/$(date +%Y%m%d-%H%M%S)-instances}
RUN="$OUT/run"
NAME=127.0.0.1
if [[ $(getent ahosts localhost 2>/dev/null | awk 'NR == 1 {print $1}') == 127.0.0.1 ]]; then
  NAME=localhost   # wrk sends the URL's host as SNI; an IP address there is illegal
fi
BODY='{"x":42}'
EXPECT=1764

((DUR >= 1 && DUR <= 120)) || { echo "DUR must be 1..120 (seconds)" >&2; exit 2; }
((EXEC_DUR >= 1 && EXEC_DUR <= 120)) || { echo "EXEC_DUR must be 1..120 (seconds)" >&2; exit 2; }
((REPS >= 1 && REPS <= 10)) || { echo "REPS must be 1..10" >&2; exit 2; }
((COLD_REPS >= 1 && COLD_REPS <= 50)) || { echo "COLD_REPS must be 1..50" >&2; exit 2; }
((THREADS >= 2 && THREADS % 2 == 0 && CONNS % THREADS == 0)) ||
  { echo "THREADS must be even (half the threads per instance in (e)) and divide CONNS" >&2; exit 2; }
for t in ${TESTS//,/ }; do
  [[ $t == load || $t == cold ]] || { echo "unknown test '$t' (known: load, cold)" >&2; exit 2; }
done
selected() { [[ ,$TESTS, == *",$1,"* ]]; }

# shellcheck source=lib.sh
. "$HERE/lib.sh"
need wrk curl pgrep:procps
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' ||
  { echo "$PYTHON is not a Python 3.8 or later" >&2; exit 2; }
HAVE_RIC=1
"$PYTHON" -c 'import awslambdaric' 2>/dev/null || HAVE_RIC=0
mkdir -p "$OUT" "$RUN"
# The gateways' folder: the config, its certificates and store, and examples/
# linked in, so that commands and handler names read as in the quick start.
ln -sfn "$ROOT/examples" "$RUN/examples"

# ---- the machine ------------------------------------------------------------------
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
if [[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock examples 2>/dev/null) ]]; then
  commit+=" with uncommitted changes"
fi
ric_version=$("$PYTHON" -c 'from importlib.metadata import version; print(version("awslambdaric"))' 2>/dev/null ||
  echo "not installed")
{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
    "$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "- tools: wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}' | sed 's|.*/||; s|-.*||')," \
    "curl $(curl --version | awk 'NR==1 {print $2}'), $("$PYTHON" --version), awslambdaric $ric_version," \
    "$(rustc --version | awk '{print $1, $2}')"
  echo "- fngate: $commit; release build took ${build_secs} s"
  echo "- nothing pinned: gateway, instances and wrk share the cores"
  echo "- load: $CONNS clients, wrk $THREADS threads, TLS HTTP/1.1 keep-alive; ${DUR} s per run" \
    "(exec ${EXEC_DUR} s), $REPS reps, each after a ${WARMUP} s warm-up; cold starts: $COLD_REPS per command"
  echo "- box busy before the start (1 s sample): ${idle_busy}%"
} > "$OUT/env.txt"
cat "$OUT/env.txt"
echo "raw outputs: $OUT"

# ---- helpers ----------------------------------------------------------------------
CLK=$(getconf CLK_TCK)
CA="$RUN/certs/dev-ca.pem"

# children GW PATTERN: PIDs of GW's child processes whose command line holds PATTERN.
children() {
  local pid line
  for pid in $(pgrep -P "$1" || true); do
    line=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || continue
    [[ $line == *"$2"* ]] && echo "$pid"
  done
  return 0
}
# pid_ticks [-c] PID...: utime+stime (with -c: cutime+cstime, the reaped children's) in jiffies.
pid_ticks() {
  local sum=0 pid stat fields a=11 b=12
  [[ ${1:-} == -c ]] && { a=13; b=14; shift; }
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a fields <<< "${stat##*) }"
    sum=$((sum + fields[a] + fields[b]))
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
parse_wrk() {  # -> "calls/s p50 p99 errors requests"
  local f=$1 rps p50 p99 sock bad n
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
  sock=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$f")
  bad=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$f")
  n=$(awk '/ requests in / {print $1}' "$f")
  echo "${rps:-NA} $p50 $p99 $((${sock:-0} + ${bad:-0})) ${n:-0}"
}
post() {  # post URL [curl args...]: the answer's body and status
  local url=$1
  shift
  curl -sS --max-time 30 -H 'Content-Type: application/json' --data "$BODY" -w ' %{http_code}' "$@" "$url" ||
    echo "curl failed"
}

# The invocation request fngate POSTs to an http instance (ids fixed), for (e).
ENVELOPE='{"call_id":"fc-00000000000000000000000000000000","app":"bench","function":"api","args":[],"kwargs":{"x":42},"deadline_ms":1796174211314,"attempt":1}'
cat > "$RUN/direct.lua" <<LUA
-- (e): each wrk thread calls one instance (DIRECT_PORTS="A,B"), its
-- connections all to that instance; the body is an invocation request.
local ports = {}
for p in string.gmatch(os.getenv("DIRECT_PORTS") or "", "%d+") do ports[#ports + 1] = p end
local n = 0
function setup(thread)
  n = n + 1
  thread.addr = wrk.lookup("127.0.0.1", ports[(n - 1) % #ports + 1])[1]
end
wrk.method = "POST"
wrk.body = '$ENVELOPE'
wrk.headers["Content-Type"] = "application/json"
LUA

# gateway_config FILE load|cold: the template with this run's interpreter, and
# only the load gateway's functions (exec and the warm pools) or the cold one's.
gateway_config() {
  local drop='cold-[a-z]+'
  [[ $2 == cold ]] && drop='(exec|lambda|ric|api)'
  ((HAVE_RIC)) || drop="($drop|ric|cold-ric)"
  sed -e "s|@PYTHON@|$PYTHON|g" -e "s|@IDLE@|1s|g" "$HERE/conf/instances.toml" |
    awk -v drop="^\\[apps\\.bench\\.functions\\.$drop\\]\$" '/^\[/ {skip = ($0 ~ drop)} !skip' > "$1"
  "$FNGATE_BIN" check --config "$1" > "$1.check" 2>&1 ||
    { echo "fngate check refused $1:" >&2; cat "$1.check" >&2; exit 1; }
}
NOTES=()
((HAVE_RIC)) || NOTES+=("awslambdaric is not importable by $("$PYTHON" --version): (c) and its cold start left out")

# ---- load -------------------------------------------------------------------------
ROWS="$OUT/runs.tsv"
printf 'scenario\trep\tcalls_s\tp50_ms\tp99_ms\terrors\trequests\twall_s\tgw_pct\tfn_pct\tlg_pct\tbox_pct\n' > "$ROWS"
declare -A POOL=([lambda]=examples/lambda_runtime.py [ric]=awslambdaric [api]=examples/api.py [direct]=examples/api.py)
# load URL SCRIPT SECS OUTFILE
load() {
  timeout --foreground $(($3 + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${3}s" --timeout 10s --latency -s "$2" "$1" \
    > "$4" 2>&1
}
# pool_pids NAME: the PIDs of the load gateway's two instances of pool NAME, once both run.
# (A lambda instance whose caller went away mid-call is replaced, so wrk's end
# replaces the instances it was calling: the PIDs are read again before each run.)
pool_pids() {
  local pids=() _
  for _ in $(seq 100); do
    read -r -a pids <<< "$(children "$GW" "${POOL[$1]}" | tr '\n' ' ')"
    ((${#pids[@]} == 2)) && { echo "${pids[*]}"; return 0; }
    sleep 0.1
  done
  echo "pool $1: ${#pids[@]} instances, 2 wanted" >&2
  exit 1
}
# fn_ticks PID...: CPU of these instances while they live, plus what the gateway reaped
# (exec's processes, an instance replaced at the run's end): read 0.5 s after the run.
fn_ticks() { echo $(($(pid_ticks "$@") + $(pid_ticks -c "$GW"))); }
# instance_port PID: the PORT an http instance was started with.
instance_port() { tr '\0' '\n' < "/proc/$1/environ" | sed -n 's/^PORT=//p'; }
# measure SCENARIO REP URL SCRIPT SECS PID...: one run, one row.
measure() {
  local sc=$1 rep=$2 url=$3 script=$4 secs=$5
  shift 5
  local out="$OUT/$sc.$rep.txt" times="$OUT/$sc.$rep.time" TIMEFORMAT='%R %U %S'
  local box0 box1 g0 g1 f0 f1
  local w0=$EPOCHREALTIME w1
  box0=$(busy_ticks); g0=$(pid_ticks "$GW"); f0=$(fn_ticks "$@")
  { time load "$url" "$script" "$secs" "$out"; } 2> "$times" || echo "   (wrk exited non-zero; see $out)"
  sleep 0.5
  still_running || exit 1
  box1=$(busy_ticks); g1=$(pid_ticks "$GW"); f1=$(fn_ticks "$@"); w1=$EPOCHREALTIME
  local rps p50 p99 err n wall user sys gwc fnc lgc
  read -r rps p50 p99 err n <<< "$(parse_wrk "$out")"
  read -r _ user sys < <(tail -n 1 "$times")
  # CPU % over the whole measured interval (the run and the settle after it), as the box's
  wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", b - a}')
  read -r gwc fnc lgc < <(awk -v g="$((g1 - g0))" -v f="$((f1 - f0))" -v u="$user" -v s="$sys" -v w="$wall" \
    -v clk="$CLK" 'BEGIN {printf "%.1f %.1f %.1f\n", 100 * g / clk / w, 100 * f / clk / w, 100 * (u + s) / w}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$rep" "$rps" "$p50" "$p99" "$err" "$n" "$wall" \
    "$gwc" "$fnc" "$lgc" "$(box_busy_pct "$box0" "$box1")" >> "$ROWS"
  printf '   %-7s rep %s: %9s calls/s  p50 %8s ms  p99 %8s ms  errors %s  gw %s%%  fn %s%%  wrk %s%%\n' \
    "$sc" "$rep" "$rps" "$p50" "$p99" "$err" "$gwc" "$fnc" "$lgc"
}

if selected load; then
  echo ">> load: $CONNS clients over TLS HTTP/1.1 keep-alive (direct: plain HTTP)"
  mkdir -p "$RUN/load"
  ln -sfn "$ROOT/examples" "$RUN/load/examples"
  gateway_config "$RUN/load/gateway.toml" load
  FNGATE_CONF="$RUN/load/gateway.toml" FNGATE_LOG="$RUN/load/fngate.log" start_fngate
  GW_LOAD=$GW
  FN="https://$NAME:${GWADDR##*:}"
  LCA="$RUN/load/certs/dev-ca.pem"
  SCENARIOS=(exec lambda)
  ((HAVE_RIC)) && SCENARIOS+=(ric)
  SCENARIOS+=(api direct)
  for fn in "${SCENARIOS[@]}"; do   # every function answering, its pool up
    [[ $fn == direct ]] && continue
    got=$(post "$FN/bench/$fn" --cacert "$LCA")
    echo "check $fn: $got" | tee -a "$OUT/checks.txt"
    [[ $got == "$EXPECT 200" ]] || { echo "check $fn failed: expected $EXPECT with 200" >&2; exit 1; }
    if [[ $fn != exec ]]; then
      got=$(pool_pids "$fn") || exit 1
      echo "   $fn instances: $got" | tee -a "$OUT/checks.txt"
    fi
  done
  API_PIDS=""
  run_one() {  # run_one SCENARIO REP|warmup
    local sc=$1 rep=$2 url script="$HERE/post.lua" secs=$DUR pids=() ports=() pid port got
    sleep 1   # an instance replaced at the last run's end has started again
    if [[ $sc != exec ]]; then got=$(pool_pids "$sc") || exit 1; read -r -a pids <<< "$got"; fi
    case $sc in
      exec) url="$FN/bench/exec"; secs=$EXEC_DUR ;;
      direct)
        for pid in "${pids[@]}"; do
          port=$(instance_port "$pid")
          [[ -n $port ]] || { echo "no PORT in the environment of instance $pid" >&2; exit 1; }
          ports+=("$port")
        done
        export DIRECT_PORTS="${ports[0]},${ports[1]}"
        url="http://127.0.0.1:${ports[0]}/invoke"; script="$RUN/direct.lua" ;;
      *) url="$FN/bench/$sc" ;;
    esac
    if [[ $rep == warmup ]]; then
      load "$url" "$script" "$WARMUP" "$OUT/$sc.warmup.txt" || true
      return 0
    fi
    if [[ $sc == api ]]; then
      API_PIDS="${pids[*]}"
    elif [[ $sc == direct ]]; then
      for port in "${ports[@]}"; do
        got=$(curl -sS --max-time 5 -H 'Content-Type: application/json' --data "$ENVELOPE" -w ' %{http_code}' \
          "http://127.0.0.1:$port/invoke" || echo "curl failed")
        [[ $got == "$EXPECT 200" ]] || { echo "direct call to port $port: '$got', not $EXPECT with 200" >&2; exit 1; }
      done
      echo "   direct: instances ${pids[*]} on ports $DIRECT_PORTS" >> "$OUT/checks.txt"
      [[ ${pids[*]} == "$API_PIDS" ]] ||
        NOTES+=("rep $rep: (e) called instances ${pids[*]}, (d) had called $API_PIDS")
    fi
    measure "$sc" "$rep" "$url" "$script" "$secs" "${pids[@]}"
  }
  for rep in $(seq "$REPS"); do
    for sc in "${SCENARIOS[@]}"; do
      ((WARMUP > 0)) && run_one "$sc" warmup
      run_one "$sc" "$rep"
    done
  done
  LOAD_WARNS=$(grep -cE ' (WARN|ERROR) |panicked' "$RUN/load/fngate.log" || true)
  NOTES+=("fngate log lines at WARN or ERROR level during the loads: $LOAD_WARNS")
  stop_started "$GW_LOAD"
fi

# ---- cold starts ------------------------------------------------------------------
cat > "$RUN/alone.py" <<'PY'
"""Starts one instance command without fngate and times it (ms from the spawn).

    alone.py lambda|http COMMAND...   prints "START_MS FIRST_RESULT_MS RESULT"

lambda: the command gets AWS_LAMBDA_RUNTIME_API pointing at a stand-in served
here; start = its first GET .../invocation/next, first result = its POST of
the event's response. http: the command gets PORT; start = the first
connection accepted (a connect tried every 1 ms), first result = the answer
of POST /invoke on that connection. The environment is the one fngate gives
an instance (PATH, HOME... and the protocol's variables).
"""
import http.client, http.server, os, socket, subprocess, sys, threading, time

mode, command = sys.argv[1], sys.argv[2:]
EVENT = (b'{"call_id":"fc-00000000000000000000000000000000","app":"bench","function":"cold",'
         b'"args":[],"kwargs":{"x":42},"deadline_ms":%d,"attempt":1}')
env = {k: os.environ[k] for k in ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR") if k in os.environ}
marks, ended, stopping = {}, threading.Event(), threading.Event()


class RuntimeAPI(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def do_GET(self):
        if not self.path.endswith("/invocation/next"):
            return self.answer(404, b'{"errorType":"UnknownRoute"}')
        if "start" in marks:  # its second call: none will come
            stopping.wait(30)
            self.close_connection = True
            return
        marks["start"] = time.monotonic()
        deadline = int(time.time() * 1000) + 30000
        self.answer(200, EVENT % deadline, {
            "Lambda-Runtime-Aws-Request-Id": "fc-00000000000000000000000000000000",
            "Lambda-Runtime-Deadline-Ms": str(deadline),
            "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:local:000000000000:function:cold",
            "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000;Sampled=0"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/response"):
            marks["first"], marks["result"] = time.monotonic(), body.decode(errors="replace")
        else:
            marks["first"], marks["result"] = time.monotonic(), "error: " + body.decode(errors="replace")
        self.answer(202, b'{"status":"OK"}')
        ended.set()

    def answer(self, status, body, headers=()):
        self.send_response(status)
        for name, value in dict(headers).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if mode == "lambda":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeAPI)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler = command[-1]
    env.update(AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
               AWS_LAMBDA_FUNCTION_NAME="cold", AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
               AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024", AWS_LAMBDA_LOG_GROUP_NAME="/bench",
               AWS_LAMBDA_LOG_STREAM_NAME="cold", LAMBDA_TASK_ROOT=os.getcwd(), _HANDLER=handler)
else:
    port = free_port()
    env["PORT"] = str(port)

log = open("alone.log", "ab")
t0 = time.monotonic()
process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
try:
    if mode == "lambda":
        if not ended.wait(30):
            sys.exit(f"no result within 30 s (exit status {process.poll()})")
    else:
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if process.poll() is not None:
                    sys.exit(f"exited with {process.returncode} before it listened")
                if time.monotonic() - t0 > 30:
                    sys.exit("not listening within 30 s")
                time.sleep(0.001)
        marks["start"] = time.monotonic()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.sock = sock
        conn.request("POST", "/invoke", EVENT % 1796174211314, {"Content-Type": "application/json"})
        marks["result"] = conn.getresponse().read().decode(errors="replace")
        marks["first"] = time.monotonic()
        conn.close()
    print(f"{(marks['start'] - t0) * 1000:.2f} {(marks['first'] - t0) * 1000:.2f} {marks['result']}")
finally:
    stopping.set()
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
PY

cat > "$RUN/trace.py" <<'PY'
"""Where each cold start's time goes, from kernel tracepoints recorded during the
cold rounds (perf script output), for the gateway's PID and the instances it forks.

    trace.py PERF_SCRIPT_TXT GATEWAY_PID KINDS_FILE > breakdown.tsv

Per fork of the gateway (one per cold call, in the order of KINDS_FILE):
  request  the gateway's last read before the fork (the request's body)
  exec     the instance's execve
  up       api.py: its listen(); lambda clients: their first send (GET .../next)
  seen     the gateway acts on it: api: writes its ready_path probe; lambda: reads GET next
  answer   the gateway writes the answer on the client's connection
"""
import re
import sys

text, gw, kinds = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read().split()
LINE = re.compile(r"\s*(.*?)\s+(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)")
events = []
for line in open(text, errors="replace"):
    m = LINE.match(line)
    if m:
        _, pid, _, t, event, rest = m.groups()
        events.append((float(t), int(pid), event.split(":")[-1], rest))


def ok(rest):  # a syscall's exit value that is not an error
    value = rest.split()[-1] if rest else ""
    return value.startswith("0x") and not value.startswith("0xfff")


def fd_of(rest):
    m = re.search(r"fd: (0x[0-9a-f]+)", rest)
    return int(m.group(1), 16) if m else None


print("kind\trequest_to_exec_ms\tinstance_up_ms\tnoticed_ms\tcall_ms\ttotal_ms")
forks = [i for i, (t, pid, e, r) in enumerate(events)
         if pid == gw and e == "sys_exit_clone" and ok(r) and r.split()[-1] != "0x0"]
for n, c in enumerate(forks):
    kind = kinds[n] if n < len(kinds) else "?"
    child = int(events[c][3].split()[-1], 16)
    before = events[:c]
    client = next((int(r.split()[-1], 16) for t, pid, e, r in reversed(before)
                   if pid == gw and e == "sys_exit_accept4" and ok(r)), None)
    request = next((t for t, pid, e, r in reversed(before)
                    if pid == gw and e == "sys_exit_recvfrom" and ok(r) and r.split()[-1] != "0x0"), None)
    after = events[c:]
    exec_t = next((t for t, pid, e, r in after if pid == child and e == "sched_process_exec"), None)
    if kind == "api":
        up = next(((i, t) for i, (t, pid, e, r) in enumerate(after) if pid == child and e == "sys_enter_listen"), None)
    else:
        up = next(((i, t) for i, (t, pid, e, r) in enumerate(after)
                   if pid == child and e in ("sys_enter_sendto", "sys_enter_writev")), None)
    if None in (client, request, exec_t, up):
        print(f"{kind}\tNA\tNA\tNA\tNA\tNA")
        continue
    later = after[up[0]:]
    if kind == "api":
        seen = next((t for t, pid, e, r in later if pid == gw and e == "sys_enter_writev" and fd_of(r) != client), None)
    else:
        seen = next((t for t, pid, e, r in later
                     if pid == gw and e == "sys_exit_recvfrom" and ok(r) and r.split()[-1] != "0x0"), None)
    answer = next((t for t, pid, e, r in later if t >= (seen or 0) and pid == gw
                   and e == "sys_enter_writev" and fd_of(r) == client), None)
    if None in (seen, answer):
        print(f"{kind}\tNA\tNA\tNA\tNA\tNA")
        continue
    ms = lambda a, b: f"{(b - a) * 1000:.2f}"
    print(f"{kind}\t{ms(request, exec_t)}\t{ms(exec_t, up[1])}\t{ms(up[1], seen)}\t{ms(seen, answer)}\t{ms(request, answer)}")
PY

COLD="$OUT/cold.tsv"
printf 'kind\trep\talone_start_ms\talone_first_ms\tfirst_call_ms\twarm_call_ms\tfirst_total_ms\tlog_first_ms\n' > "$COLD"
# fngate_call URL -> "ms_after_handshake total_ms": one curl, a new TLS connection.
fngate_call() {
  local got code pre total
  got=$(curl -sS --max-time 30 --cacert "$CA" -H 'Content-Type: application/json' --data "$BODY" \
    -o "$RUN/cold.body" -w '%{http_code} %{time_pretransfer} %{time_total}' "$1") || got="curl-failed 0 0"
  read -r code pre total <<< "$got"
  if [[ $code != 200 || $(cat "$RUN/cold.body") != "$EXPECT" ]]; then
    echo "call $1 failed: $code $(cat "$RUN/cold.body" 2>/dev/null)" >&2
    exit 1
  fi
  awk -v p="$pre" -v t="$total" 'BEGIN {printf "%.2f %.2f\n", (t - p) * 1000, t * 1000}'
}
# until_empty: the cold gateway has no child process left (its instances idled out).
until_empty() {
  for _ in $(seq 200); do
    [[ -z $(pgrep -P "$GW" || true) ]] && { sleep 0.2; return 0; }
    sleep 0.05
  done
  echo "the gateway's instances did not stop within 10 s of idling" >&2
  exit 1
}
# log_latency N: latency_ms of the gateway's access-log line number N (1 = the first request).
log_latency() {
  grep 'fngate::http::context: request ' "$RUN/fngate.log" | sed -n "${1}p" |
    sed -n 's/.*latency_ms=\([0-9.]*\).*/\1/p'
}

if selected cold; then
  echo ">> cold starts: $COLD_REPS per command, the instance alone and the first call on an empty pool"
  gateway_config "$RUN/gateway.toml" cold
  # The access log on (a few dozen requests) and instance events: the server-side latency of each call.
  FNGATE_CONF="$RUN/gateway.toml" FNGATE_LOG="$RUN/fngate.log" \
    start_fngate env RUST_LOG=info,fngate::instances=debug
  GW_COLD=$GW
  CFN="https://$NAME:${GWADDR##*:}"
  declare -A CMD=(
    [lambda]="$PYTHON examples/lambda_runtime.py examples/warm.handler"
    [ric]="$PYTHON -m awslambdaric examples/warm.handler"
    [api]="$PYTHON examples/api.py")
  declare -A MODE=([lambda]=lambda [ric]=lambda [api]=http)
  KINDS=(lambda)
  ((HAVE_RIC)) && KINDS+=(ric)
  KINDS+=(api)
  requests=0
  # alone_once KIND -> "START FIRST": the command started here, no gateway.
  alone_once() {
    local alone start first result
    # shellcheck disable=SC2086   # the command, split into its words
    alone=$(cd "$RUN" && "$PYTHON" "$RUN/alone.py" "${MODE[$1]}" ${CMD[$1]}) ||
      { echo "$1 alone failed: $alone" >&2; exit 1; }
    read -r start first result <<< "$alone"
    [[ $result == "$EXPECT" ]] || { echo "$1 alone answered '$result', not $EXPECT" >&2; exit 1; }
    echo "$start $first"
  }
  cold_round() {  # cold_round REP|warmup; odd reps time the command alone first, even reps fngate first
    local kind what alone start first call total warm _t logged order got
    for kind in "${KINDS[@]}"; do
      order=(alone fngate)
      [[ $1 != warmup ]] && (($1 % 2 == 0)) && order=(fngate alone)
      for what in "${order[@]}"; do
        until_empty
        if [[ $what == alone ]]; then
          alone=$(alone_once "$kind") || exit 1
        else
          [[ $1 == warmup ]] || echo "$kind" >> "$RUN/cold-kinds.txt"
          got=$(fngate_call "$CFN/bench/cold-$kind") || exit 1
          read -r call total <<< "$got"
          got=$(fngate_call "$CFN/bench/cold-$kind") || exit 1
          read -r warm _t <<< "$got"
          requests=$((requests + 2))
        fi
      done
      [[ $1 == warmup ]] && continue
      sleep 0.1   # the access log is written off the request path
      logged=$(log_latency $((requests - 1)))
      read -r start first <<< "$alone"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$1" "$start" "$first" "$call" "$warm" "$total" \
        "${logged:-NA}" >> "$COLD"
      printf '   %-6s rep %s: alone start-up %7s ms, first result %7s ms; fngate first call %7s ms (log %s), warm %6s ms\n' \
        "$kind" "$1" "$start" "$first" "$call" "${logged:-NA}" "$warm"
    done
  }
  cold_round warmup
  # Kernel tracepoints, when perf may record them: the same starts, split into their steps.
  TRACE=""
  if [[ $COLD_TRACE != 0 ]] && command -v perf >/dev/null &&
    perf record -q -e syscalls:sys_enter_listen -a -o "$RUN/probe.perf" -- true >/dev/null 2>&1; then
    perf record -q -a -o "$RUN/cold.perf" -e sched:sched_process_exec -e syscalls:sys_exit_clone \
      -e syscalls:sys_enter_listen -e syscalls:sys_enter_sendto -e syscalls:sys_exit_accept4 \
      -e syscalls:sys_enter_writev -e syscalls:sys_exit_recvfrom > "$RUN/perf.log" 2>&1 &
    TRACE=$!
    STARTED+=("$TRACE")
    sleep 1
  fi
  : > "$RUN/cold-kinds.txt"
  for rep in $(seq "$COLD_REPS"); do cold_round "$rep"; done
  if [[ -n $TRACE ]]; then
    kill -INT "$TRACE" 2>/dev/null || true
    for _ in $(seq 100); do alive "$TRACE" || break; sleep 0.1; done
    stop_started "$TRACE"
    perf script -i "$RUN/cold.perf" -F comm,pid,tid,time,event,trace > "$RUN/cold.perf.txt" 2> /dev/null || true
    "$PYTHON" "$RUN/trace.py" "$RUN/cold.perf.txt" "$GW_COLD" "$RUN/cold-kinds.txt" > "$OUT/breakdown.tsv" ||
      rm -f "$OUT/breakdown.tsv"
    rm -f "$RUN/cold.perf" "$RUN/cold.perf.txt" "$RUN/probe.perf"
  else
    NOTES+=("cold starts: no kernel trace (COLD_TRACE=0, or perf cannot record syscall tracepoints here)")
  fi
  COLD_WARNS=$(grep -cE ' (WARN|ERROR) |panicked' "$RUN/fngate.log" || true)
  NOTES+=("fngate log lines at WARN or ERROR level during the cold starts: $COLD_WARNS")
  stop_started "$GW_COLD"
fi

# ---- table ------------------------------------------------------------------------
cat > "$RUN/table.py" <<'PY'
import csv, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
exec_conc = sys.argv[2]


def rows(name):
    path = out / name
    if not path.exists():
        return []
    return list(csv.DictReader(path.open(), delimiter="\t"))


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    return "n/a" if v is None else f"{v:,.{digits}f}"


def ms(v):
    return fmt(v, 2 if v is not None and abs(v) < 10 else 1)


runs = rows("runs.tsv")
LABELS = {
    "exec": ("(a) exec, `python3 examples/square.py`", f"a process per call, concurrency {exec_conc} (default)"),
    "lambda": ("(b) lambda, stdlib client", "2 warm instances, 1 call each"),
    "ric": ("(c) lambda, awslambdaric", "2 warm instances, 1 call each"),
    "api": ("(d) http, `examples/api.py` via fngate", "2 warm instances, 8 calls each"),
    "direct": ("(e) the same 2 api.py, direct", "plain HTTP, 8 connections each"),
}
summary = {}
for sc in LABELS:
    reps = [r for r in runs if r["scenario"] == sc]
    if not reps:
        continue
    per_call = lambda key: med([
        num(r[key]) / 100 * num(r["wall_s"]) / num(r["requests"]) * 1e6
        for r in reps if num(r[key]) is not None and num(r["requests"])])
    summary[sc] = {
        "rps": med([num(r["calls_s"]) for r in reps]),
        "p50": med([num(r["p50_ms"]) for r in reps]),
        "p99": med([num(r["p99_ms"]) for r in reps]),
        "errors": sum(int(num(r["errors"]) or 0) for r in reps),
        "calls": sum(int(num(r["requests"]) or 0) for r in reps),
        "gw": med([num(r["gw_pct"]) for r in reps]) if sc != "direct" else None,
        "fn": med([num(r["fn_pct"]) for r in reps]),
        "gw_us": per_call("gw_pct") if sc != "direct" else None,
        "fn_us": per_call("fn_pct"),
        "all_us": med([
            sum(num(r[k]) or 0 for k in ("gw_pct", "fn_pct", "lg_pct")) / 100 * num(r["wall_s"]) / num(r["requests"]) * 1e6
            for r in reps if num(r["requests"])]),
        "reps": {r["rep"]: r for r in reps},
    }

lines = []
if summary:
    lines += ["| scenario | instances | calls/s | p50 ms | p99 ms | errors | calls | gw CPU % | fn CPU % "
              "| gw CPU us/call | fn CPU us/call | all CPU us/call |",
              "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for sc, s in summary.items():
        name, how = LABELS[sc]
        lines.append(f"| {name} | {how} | {fmt(s['rps'])} | {ms(s['p50'])} | {ms(s['p99'])} | {s['errors']} "
                     f"| {s['calls']:,} | {fmt(s['gw']) if s['gw'] is not None else '-'} | {fmt(s['fn'])} "
                     f"| {fmt(s['gw_us']) if s['gw_us'] is not None else '-'} | {fmt(s['fn_us'])} | {fmt(s['all_us'])} |")
    lines.append("")

cold = rows("cold.tsv")
COLD_LABELS = {"lambda": "lambda, stdlib client", "ric": "lambda, awslambdaric", "api": "http, api.py"}
cold_summary = {}
if cold:
    lines += ["| cold start: median (min to max) | instance alone: start-up ms | alone: first result ms "
              "| fngate: first call ms | fngate adds ms | fngate: next call ms |",
              "|---|--:|--:|--:|--:|--:|"]
    for kind, label in COLD_LABELS.items():
        reps = [r for r in cold if r["kind"] == kind]
        if not reps:
            continue
        col = lambda key: [num(r[key]) for r in reps]
        added = [num(r["first_call_ms"]) - num(r["alone_start_ms"]) for r in reps]
        def cell(values):
            values = [v for v in values if v is not None]
            return f"{ms(med(values))} ({ms(min(values))} to {ms(max(values))})" if values else "n/a"
        cold_summary[kind] = {"start": med(col("alone_start_ms")), "call": med(col("first_call_ms")),
                              "added": med(added)}
        lines.append(f"| {label} | {cell(col('alone_start_ms'))} | {cell(col('alone_first_ms'))} "
                     f"| {cell(col('first_call_ms'))} | {cell(added)} | {cell(col('warm_call_ms'))} |")
    lines.append("")

breakdown = rows("breakdown.tsv")
traced = {}
if breakdown:
    lines += ["| cold start, same starts traced: median (min to max) ms | gateway: request to exec "
              "| instance: exec to up | gateway notices | the call | first call | fngate adds |",
              "|---|--:|--:|--:|--:|--:|--:|"]
    for kind, label in COLD_LABELS.items():
        reps = [r for r in breakdown if r["kind"] == kind and num(r["total_ms"]) is not None]
        if not reps:
            continue
        col = lambda key: [num(r[key]) for r in reps]
        added = [num(r["total_ms"]) - num(r["instance_up_ms"]) for r in reps]
        def cell(values):
            return f"{ms(med(values))} ({ms(min(values))} to {ms(max(values))})"
        traced[kind] = {"added": med(added), "worst": max(added), "up": med(col("instance_up_ms")),
                        "total": med(col("total_ms")), "n": len(reps)}
        lines.append(f"| {label} ({len(reps)}) | {cell(col('request_to_exec_ms'))} | {cell(col('instance_up_ms'))} "
                     f"| {cell(col('noticed_ms'))} | {cell(col('call_ms'))} | {cell(col('total_ms'))} | {cell(added)} |")
    lines.append("")

targets = []
ex = summary.get("exec", {}).get("rps")
for sc in ("lambda", "ric", "api"):
    if sc in summary and ex:
        r = summary[sc]["rps"] / ex
        targets.append((f"{LABELS[sc][0]}: calls/s >= 100x exec's", f"{r:,.0f}x", "yes" if r >= 100 else "no"))
if "api" in summary and "direct" in summary:
    ratios = []
    for rep, row in summary["api"]["reps"].items():
        d = summary["direct"]["reps"].get(rep)
        if d and num(d["calls_s"]):
            ratios.append(num(row["calls_s"]) / num(d["calls_s"]))
    r = med(ratios)
    spread = f", reps {', '.join(f'{x:.2f}' for x in ratios)}" if len(ratios) > 1 else ""
    lat = (f"; p50 {summary['api']['p50'] / summary['direct']['p50']:.2f}x, "
           f"p99 {summary['api']['p99'] / summary['direct']['p99']:.2f}x direct's")
    targets.append(("(d) calls/s >= 0.9 of (e), the same instances called directly",
                    f"{r:.2f}{spread}{lat}", "yes" if r is not None and r >= 0.9 else "no"))
for kind, c in cold_summary.items():
    t = traced.get(kind)
    if t:  # the same starts: no start-to-start noise
        ok = t["added"] <= 20
        how = (f"adds {ms(t['added'])} ms (worst {ms(t['worst'])}) to the instance's own {ms(t['up'])} ms, "
               f"same starts; paired with separate starts: {ms(c['added'])} ms")
    else:
        ok = c["added"] is not None and c["added"] <= 20
        how = f"{ms(c['call'])} ms vs {ms(c['start'])} + 20 ms (adds {ms(c['added'])} ms)"
    targets.append((f"cold start, {COLD_LABELS[kind]}: first call <= the instance's start-up + 20 ms", how,
                    "yes" if ok else "no"))
if targets:
    lines += ["| target (same run) | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {ok} |" for t, m, ok in targets]
print("\n".join(lines))
PY

foreign=$(awk -F'\t' -v n="$(nproc)" 'NR > 1 && $12 != "" {print $12 - ($9 + $10 + $11) / n}' "$ROWS" 2>/dev/null |
  sort -n | awk '{v[NR] = $1} END {if (NR) printf "%.0f", v[int((NR + 1) / 2)]; else print "n/a"}')
{
  echo "## Warm instance pools ($(date -u +%Y-%m-%d), bench/instances.sh)"
  echo
  echo "Command: \`$COMMAND\`"
  echo
  cat "$OUT/env.txt"
  echo
  "$PYTHON" "$RUN/table.py" "$OUT" 16
  echo
  echo "- The function: square, POST {\"x\":42} -> 1764. calls/s and latency: median of the reps; errors and calls: all reps."
  echo "- gw CPU: fngate's own process, % of one core over the run and the 0.5 s after it; fn CPU: the two"
  echo "  instances (exec: the processes fngate started and reaped); per call: CPU time / calls answered;"
  echo "  all: gateway, instances and wrk. A lambda instance whose caller leaves mid-call is replaced, so"
  echo "  wrk's end replaces the two it was calling: their CPU counts until they exit."
  echo "- Ratios are of runs in the same script run, a rep's runs minutes apart at most; absolute"
  echo "  figures move with whatever else the machine runs."
  echo "- Cold start: the first call's time from the request sent to the answer (TLS handshake left out),"
  echo "  on a pool with no instance; fngate adds = that - the command's start-up alone, paired by rep;"
  echo "  next call: the second call, the instance warm (the same curl, a new connection)."
  if [[ -s $OUT/breakdown.tsv ]]; then
    echo "- Same starts traced (kernel tracepoints of the cold rounds): request to exec = the gateway's last"
    echo "  read of the request to the instance's execve; exec to up = the instance's own start-up (api.py: to"
    echo "  its listen(); lambda clients: to their first send, GET .../next); gateway notices = to the"
    echo "  gateway's ready_path probe written, or its read of GET next; the call = from there to the answer"
    echo "  written. fngate adds = first call - the instance's exec to up: what the target counts."
  fi
  if [[ $foreign != n/a ]]; then
    echo "- box CPU not spent by the bench's own processes during the loads (median over runs): $foreign% of" \
      "all cores: other work on the machine. Well above 10%, the figures are noisy."
  fi
  for n in "${NOTES[@]}"; do echo "- $n"; done
  echo "- whole run: $((SECONDS / 60)) min $((SECONDS % 60)) s, the build included"
} | tee "$OUT/table.md"
