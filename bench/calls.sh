#!/usr/bin/env bash
# Spawned calls: durable spawns per second (202s/s), GET /calls/{id} reads
# per second, long-poll wake-up latency, and fngate's RSS with a large
# backlog of pending calls. Loopback only; time-bounded; stops only what
# it started.
#
#   bench/calls.sh                    # 10 s runs, 64 connections, backlog check to 1,000,000
#   BACKLOG=100000 bench/calls.sh     # a smaller backlog
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DUR=${DUR:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BACKLOG=${BACKLOG:-1000000}
RUN=${RUN:-$(mktemp -d)}

# shellcheck source=lib.sh
. "$HERE/lib.sh"
need nginx wrk curl python3
# shellcheck disable=SC2119   # unpinned: no taskset prefix
start_backend

cat > "$RUN/hold.py" <<'PY'
import sys, time
sys.stdin.read()
time.sleep(3600)
PY
cat > "$RUN/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"

[store]
path = "calls.db"
max_pending = 10000000
max_wait = "60s"

[apps.bench.functions.square]          # answers at once (nginx)
backend = "http"
urls = ["http://127.0.0.1:9001/square"]
concurrency = 256

[apps.bench.functions.hold]            # one call runs for an hour; the rest stay pending
backend = "exec"
command = ["python3", "hold.py"]
concurrency = 1
timeout = "2h"

[apps.bench.functions.nap]             # ends 0.5 s after it starts
backend = "exec"
command = ["sh", "-c", "cat > /dev/null; sleep 0.5; date +%s.%N"]
TOML
# shellcheck disable=SC2119
start_fngate
C=(curl -sS --cacert "$RUN/certs/dev-ca.pem")

echo "== durable spawns (POST /bench/hold/spawn), $CONNS connections, ${DUR}s"
wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency -s "$HERE/spawn.lua" "$GWURL/bench/hold/spawn" | grep -E "Requests/sec|99%|non-202|requests in"

echo "== GET /calls/{id} of a finished call, $CONNS connections, ${DUR}s"
ID=$("${C[@]}" -H 'content-type: application/json' -d '{"x":42}' "$GWURL/bench/square/spawn" | python3 -c 'import json,sys; print(json.load(sys.stdin)["call_id"])')
"${C[@]}" -o /dev/null "$GWURL/calls/$ID?wait=10"
wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency "$GWURL/calls/$ID" | grep -E "Requests/sec|99%|requests in"

echo "== long-poll wake-up: GET ?wait=30 answered after the function's end (5 calls)"
for _ in 1 2 3 4 5; do
  ID=$("${C[@]}" -H 'content-type: application/json' -d '{}' "$GWURL/bench/nap/spawn" | python3 -c 'import json,sys; print(json.load(sys.stdin)["call_id"])')
  "${C[@]}" "$GWURL/calls/$ID?wait=30" -o "$RUN/nap.json"
  now=$(date +%s.%N)
  python3 -c "print(f'  answered {($now - $(cat "$RUN/nap.json")) * 1000:.1f} ms after the function printed its result')"
done

echo "== RSS with a backlog of $BACKLOG pending calls"
pending() { python3 - "$RUN/calls.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(db.execute("select count(*) from calls where state = 0").fetchone()[0])
PY
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$GW/status"; }
echo "  RSS before: $(rss) KiB with $(pending) pending"
while (( $(pending) < BACKLOG )); do
  wrk -t"$THREADS" -c"$CONNS" -d10s -s "$HERE/spawn.lua" "$GWURL/bench/hold/spawn" > /dev/null
  echo "  $(pending) pending, RSS $(rss) KiB"
done
echo "  RSS after: $(rss) KiB with $(pending) pending"
