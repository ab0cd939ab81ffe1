#!/usr/bin/env bash
# Spawned calls: durable spawns per second (202s/s), how many spawned calls
# per second get run while spawns keep coming (and how long the backlog
# takes to drain), GET /calls/{id} reads per second, long-poll wake-up
# latency, and fngate's RSS with a large backlog of pending calls.
# Loopback only; time-bounded; stops only what it started.
#
#   bench/calls.sh                    # 10 s runs, 64 connections, backlog check to 1,000,000
#   BACKLOG=100000 bench/calls.sh     # a smaller backlog
#   DRAIN=60 bench/calls.sh           # wait up to 60 s (default 30) for spawned calls to drain
#   FNGATE=/tmp/fngate bench/calls.sh # measure another build of fngate (no cargo build)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DUR=${DUR:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BACKLOG=${BACKLOG:-1000000}
DRAIN=${DRAIN:-30}
RUN=${RUN:-$(mktemp -d)}

# shellcheck source=lib.sh
. "$HERE/lib.sh"
if [[ -n ${FNGATE:-} ]]; then   # FNGATE=/path/to/fngate: measure that build, do not build
  FNGATE_BIN=$FNGATE
  FNGATE_BUILT=1
fi
need nginx wrk curl python3
# shellcheck disable=SC2119   # unpinned: no taskset prefix
start_backend

cat > "$RUN/hold.py" <<'PY'
import sys, time
sys.stdin.read()
time.sleep(3600)
PY
# Samples the store once a second while spawns of bench/sink come in and
# until they have all run (or DRAIN seconds after wrk ended): accepted,
# pending, running and succeeded calls, then the rates. Counts only rows
# after row SEQ0 (seq is the row id, SEQ0 the last before wrk started).
cat > "$RUN/runrate.py" <<'PY'
import sqlite3, sys, time
path, spawn_secs, drain_secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
seq0 = int(sys.argv[4])
db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
def sample():
    return db.execute(
        "select count(*), ifnull(sum(state = 2), 0), ifnull(sum(state = 0), 0), "
        "ifnull(sum(state = 1), 0) from calls "
        "where seq > ? and app = 'bench' and function = 'sink'", (seq0,)).fetchone()
start = time.monotonic()
samples = []  # (seconds, accepted, succeeded)
while True:
    time.sleep(1)
    now = time.monotonic() - start
    accepted, succeeded, pending, running = sample()
    print(f"  {now:5.1f} s: {accepted:8d} accepted {pending:8d} pending {running:6d} running "
          f"{succeeded:8d} succeeded", flush=True)
    stable = bool(samples) and samples[-1][1] == accepted  # wrk has stopped
    samples.append((now, accepted, succeeded))
    if now >= spawn_secs and stable and (pending + running == 0 or now - spawn_secs >= drain_secs):
        break
# wrk spawned for spawn_secs; the last sample within them shows what had run by then.
t, _, ran = [s for s in samples if s[0] <= spawn_secs + 0.5][-1]
print(f"  while spawning: {accepted / spawn_secs:,.0f} accepted/s, {ran / t:,.0f} run (succeeded)/s")
if pending + running == 0:
    print(f"  all run {now - spawn_secs:.1f} s after the spawns stopped: {succeeded:,} succeeded of {accepted:,}")
else:
    print(f"  {pending:,} still pending {now - spawn_secs:.1f} s after the spawns stopped "
          f"({(succeeded - ran) / (now - t):,.0f} run/s since)")
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

[apps.bench.functions.sink]            # spawned calls, answered at once (nginx)
backend = "http"
urls = ["http://127.0.0.1:9001/square"]
concurrency = 4096

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

echo "== spawned calls run (POST /bench/sink/spawn, nginx backend, concurrency 4096), $CONNS connections, ${DUR}s"
SEQ0=$(python3 -c 'import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(db.execute("select ifnull(max(seq), 0) from calls").fetchone()[0])' "$RUN/calls.db")
wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" -s "$HERE/spawn.lua" "$GWURL/bench/sink/spawn" > "$RUN/sink.wrk" &
python3 "$RUN/runrate.py" "$RUN/calls.db" "$DUR" "$DRAIN" "$SEQ0"
wait $!
grep -E "non-202" "$RUN/sink.wrk"

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
