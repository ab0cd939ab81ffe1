#!/usr/bin/env bash
# TLS check: runs testssl.sh (Debian package) against a fngate started on
# loopback with its dev certificate: protocols, cipher suites, server
# defaults and the known vulnerabilities testssl.sh probes. Loopback only;
# stops only what it started.
#
#   bench/testssl.sh            # prints testssl.sh's report
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
RUN=${RUN:-$(mktemp -d)}

command -v testssl >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq testssl.sh >/dev/null
}

(cd "$ROOT" && cargo build --release --quiet)
cat > "$RUN/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"

[apps.demo.functions.square]
backend = "exec"
command = ["python3", "$ROOT/examples/square.py"]
public = true
TOML
RUST_LOG=info "$ROOT/target/release/fngate" serve --config "$RUN/gateway.toml" 2> "$RUN/fngate.log" &
GW=$!
trap 'kill $GW 2>/dev/null; wait $GW 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  ADDR=$(grep -o 'listening on https://[0-9.:]*' "$RUN/fngate.log" | head -1 | sed 's|listening on https://||') || true
  [[ -n ${ADDR:-} ]] && break
  sleep 0.1
done
[[ -n ${ADDR:-} ]] || { echo "fngate did not start" >&2; cat "$RUN/fngate.log" >&2; exit 1; }

# -p protocols, -s standard cipher lists, -f forward secrecy, -S server defaults,
# -U vulnerabilities; --ip one keeps it on 127.0.0.1; no DNS, no other host.
testssl --quiet --color 0 --warnings off --ip one --nodns min --sneaky \
  -p -s -f -S -U "localhost:${ADDR##*:}"
