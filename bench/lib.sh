# Shared by the bench scripts: installs what is missing, builds fngate,
# starts the nginx backend and fngate on loopback, and stops (by PID) only
# what it started. Source it after setting HERE, ROOT and RUN.

STARTED=()
cleanup() {
  for pid in "${STARTED[@]:-}"; do
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

# need TOOL... : installs the Debian packages of the tools not on PATH.
need() {
  local missing=() tool
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# start_backend [PIN...]: the trivial nginx backend on 127.0.0.1:9001.
start_backend() {
  mkdir -p "$RUN/backend/tmp"
  sed "s|\$RUN|$RUN|g" "$HERE/conf/backend.nginx.conf" > "$RUN/backend/nginx.conf"
  "$@" nginx -p "$RUN/backend/" -e "$RUN/backend/error.log" -c "$RUN/backend/nginx.conf" \
    -g 'daemon off; worker_processes 1;' &
  STARTED+=($!)
}

# start_fngate [PIN...]: builds and starts fngate on $RUN/gateway.toml; sets
# GW (its PID) and GWURL (https://localhost:PORT). The per-request access
# log is off: at these rates it would be the bottleneck.
start_fngate() {
  (cd "$ROOT" && cargo build --release --quiet)
  RUST_LOG=info,fngate::http::context=warn "$@" "$ROOT/target/release/fngate" serve \
    --config "$RUN/gateway.toml" 2> "$RUN/fngate.log" &
  GW=$!
  STARTED+=($GW)
  local addr=""
  for _ in $(seq 100); do
    addr=$(grep -o 'listening on https://[0-9.:]*' "$RUN/fngate.log" | head -1 | sed 's|listening on https://||') || true
    [[ -n $addr ]] && break
    sleep 0.1
  done
  [[ -n $addr ]] || { echo "fngate did not start" >&2; cat "$RUN/fngate.log" >&2; exit 1; }
  GWURL="https://localhost:${addr##*:}"
}
