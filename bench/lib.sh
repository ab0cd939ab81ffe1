# shellcheck shell=bash
# Shared by the bench scripts: installs what is missing, builds fngate,
# starts the nginx backend and fngate on loopback, and stops (by PID) only
# what it started. Source it after setting HERE, ROOT and RUN.

STARTED=()

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

# stop_pid PID: SIGTERM, then SIGKILL after 5 s. Only ever given PIDs we started.
stop_pid() {
  local pid=$1
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
}

# stop_started PID: stops one process we started and forgets it.
stop_started() {
  local pid keep=()
  stop_pid "$1"
  for pid in "${STARTED[@]}"; do [[ $pid != "$1" ]] && keep+=("$pid"); done
  STARTED=("${keep[@]}")
}

# still_running: every process we started still runs; else says which stopped
# (a crash, or Ctrl-C, which reaches the servers too) and fails.
still_running() {
  local pid
  for pid in "${STARTED[@]}"; do
    alive "$pid" && continue
    echo "$(cat "/proc/$pid/comm" 2>/dev/null || echo process) $pid stopped during the run" \
      "(interrupted, or crashed: see the logs under $RUN)" >&2
    return 1
  done
}

cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
  STARTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# need TOOL[:PACKAGE]... : installs the Debian packages of the tools not on
# PATH (apt-get, through sudo when not root), e.g. `need wrk h2load:nghttp2-client`.
need() {
  local missing=() spec sudo=()
  for spec in "$@"; do command -v "${spec%%:*}" >/dev/null || missing+=("${spec#*:}"); done
  ((${#missing[@]})) || return 0
  ((EUID == 0)) || sudo=(sudo)
  echo "installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# port_busy PORT: something accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: a port of 127.0.0.1 that nothing listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT PID: waits until PORT accepts connections, or PID died.
wait_port() {
  for _ in $(seq 100); do
    alive "$2" || { echo "process $2 died before 127.0.0.1:$1 opened" >&2; return 1; }
    port_busy "$1" && return 0
    sleep 0.1
  done
  echo "127.0.0.1:$1 did not open" >&2
  return 1
}

# start_backend [PIN...]: the trivial nginx backend on 127.0.0.1:$BE_PORT
# (default 9001) with $BE_WORKERS workers (default 1); sets BE (its PID).
start_backend() {
  BE_PORT=${BE_PORT:-9001}
  if port_busy "$BE_PORT"; then
    echo "127.0.0.1:$BE_PORT is already in use; set BE_PORT to a free port" >&2
    exit 1
  fi
  mkdir -p "$RUN/backend/tmp"
  sed -e "s|\$RUN|$RUN|g" -e "s|127.0.0.1:9001|127.0.0.1:$BE_PORT|" \
    -e "s|worker_rlimit_nofile [0-9]*|worker_rlimit_nofile $(ulimit -n)|" \
    "$HERE/conf/backend.nginx.conf" > "$RUN/backend/nginx.conf"
  "$@" nginx -p "$RUN/backend/" -e "$RUN/backend/error.log" -c "$RUN/backend/nginx.conf" \
    -g "daemon off; worker_processes ${BE_WORKERS:-1};" &
  BE=$!
  STARTED+=("$BE")
  wait_port "$BE_PORT" "$BE"
}

# build_fngate: `cargo build --release`, once per script run, so that every
# fngate a script starts runs the same code. FNGATE_BIN runs another build
# (with FNGATE_BUILT=1, nothing is built).
FNGATE_BIN=${FNGATE_BIN:-$ROOT/target/release/fngate}
build_fngate() {
  [[ -n ${FNGATE_BUILT:-} ]] && return 0
  (cd "$ROOT" && cargo build --release --quiet)
  FNGATE_BUILT=1
}

# start_fngate [PIN...]: builds and starts fngate on $FNGATE_CONF (default
# $RUN/gateway.toml), logging to $FNGATE_LOG (default $RUN/fngate.log); sets
# GW (its PID), GWADDR (127.0.0.1:PORT) and GWURL (https://localhost:PORT).
# The per-request access log is off: at these rates it would be the bottleneck.
start_fngate() {
  local conf=${FNGATE_CONF:-$RUN/gateway.toml} log=${FNGATE_LOG:-$RUN/fngate.log} addr=""
  build_fngate
  RUST_LOG=info,fngate::http::context=warn "$@" "$FNGATE_BIN" serve --config "$conf" 2> "$log" &
  GW=$!
  STARTED+=("$GW")
  for _ in $(seq 100); do
    addr=$(grep -o 'listening on https://[0-9.:]*' "$log" | head -1 | sed 's|listening on https://||') || true
    [[ -n $addr ]] && break
    alive "$GW" || break
    sleep 0.1
  done
  [[ -n $addr ]] || { echo "fngate did not start" >&2; cat "$log" >&2; exit 1; }
  # shellcheck disable=SC2034   # read by the scripts that source this file
  GWADDR=$addr
  # shellcheck disable=SC2034
  GWURL="https://localhost:${addr##*:}"
}
