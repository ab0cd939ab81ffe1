#!/usr/bin/env bash
# Fan-out, streaming and batching: what issue 12's features buy, measured
# side by side in one run of one gateway (bench/conf/fanout.toml):
#   map      10,000 inputs to a warm lambda function with 4 instances as ONE
#            POST .../map (curl, the answer's NDJSON counted), against the
#            same 10,000 inputs as separate sync calls from 64 connections
#            (h2load --h1 -n 10000 -c 64): inputs/s of each
#   stream   time to the first streamed item of the quick start's countdown
#            (?n=2&pause=0.5: the function runs 1 s), exec and a warm lambda,
#            NDJSON and SSE (bench/first_item.py, a fresh TLS connection per
#            call, handshake excluded): median ms to the head, the first
#            item and the end
#   batch    wrk, 64 connections, POST {"x":42} for DUR s to a lambda
#            function with batch = { max_size = 32, wait = "2ms" } and to
#            the same function unbatched (2 instances each): calls/s
# Reps are interleaved (map, sync, map, sync...). Nothing is pinned. Loopback
# only; stops by PID only what it started.
#
#   bench/fanout.sh                      # 3 reps; about 3 minutes (+ the build)
#   REPS=1 DUR=3 bench/fanout.sh         # a quick look
#   TESTS=map bench/fanout.sh            # one part (map, stream, batch)
#   FNGATE=/tmp/fngate bench/fanout.sh   # measure another build of fngate (no cargo build)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DUR=${DUR:-10}
REPS=${REPS:-3}
INPUTS=${INPUTS:-10000}
STREAM_REPS=${STREAM_REPS:-10}
TESTS=${TESTS:-map,stream,batch}
PYTHON=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
OUT=${OUT:-$HERE/results/$(date +%Y%m%d-%H%M%S)-fanout}
RUN="$OUT/run"
NAME=127.0.0.1
if [[ $(getent ahosts localhost 2>/dev/null | awk 'NR == 1 {print $1}') == 127.0.0.1 ]]; then
  NAME=localhost   # wrk sends the URL's host as SNI; an IP address there is illegal
fi
((DUR >= 1 && DUR <= 120)) || { echo "DUR must be 1..120 (seconds)" >&2; exit 2; }
((REPS >= 1 && REPS <= 10)) || { echo "REPS must be 1..10" >&2; exit 2; }
for t in ${TESTS//,/ }; do
  [[ $t == map || $t == stream || $t == batch ]] || { echo "unknown test '$t' (known: map, stream, batch)" >&2; exit 2; }
done
selected() { [[ ,$TESTS, == *",$1,"* ]]; }

# shellcheck source=lib.sh
. "$HERE/lib.sh"
if [[ -n ${FNGATE:-} ]]; then   # FNGATE=/path/to/fngate: measure that build, do not build
  FNGATE_BIN=$FNGATE
  FNGATE_BUILT=1
fi
need wrk h2load:nghttp2-client curl
mkdir -p "$OUT" "$RUN"
ln -sfn "$ROOT/examples" "$RUN/examples"
sed -e "s|@PYTHON@|$PYTHON|g" "$HERE/conf/fanout.toml" > "$RUN/gateway.toml"
build_fngate
"$FNGATE_BIN" check --config "$RUN/gateway.toml" > "$RUN/check.txt" 2>&1 ||
  { echo "fngate check refused the config:" >&2; cat "$RUN/check.txt" >&2; exit 1; }
start_fngate
URL="https://$NAME:${GWADDR##*:}"
CA="$RUN/certs/dev-ca.pem"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); fngate $commit"
  echo "- machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo); nothing pinned"
  echo "- $("$PYTHON" --version), $(h2load --version 2>&1 | head -1), wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}')"
} > "$OUT/env.txt"
cat "$OUT/env.txt"
echo "raw outputs: $OUT"

post() { curl -sS --max-time 60 --cacert "$CA" -H 'Content-Type: application/json' "$@"; }
for fn in warm batched unbatched; do   # every pool answers before anything is timed
  got=$(post --data '{"x":42}' "$URL/bench/$fn")
  [[ $got == 1764 ]] || { echo "bench/$fn answered '$got', not 1764" >&2; exit 1; }
done
median() { sort -n | awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
TABLE="$OUT/table.md"
: > "$TABLE"

if selected map; then
  echo ">> map: $INPUTS inputs, one map call against $INPUTS sync calls from 64 connections"
  "$PYTHON" -c "import json, sys; json.dump([{'x': i % 1000} for i in range($INPUTS)], sys.stdout)" > "$RUN/inputs.json"
  printf '{"x":42}' > "$RUN/one.json"
  maps=() syncs=()
  for rep in $(seq "$REPS"); do
    secs=$(post -o "$OUT/map.$rep.ndjson" -w '%{time_total}' --data-binary @"$RUN/inputs.json" "$URL/bench/warm/map")
    lines=$(grep -c '"result"' "$OUT/map.$rep.ndjson" || true)
    ((lines == INPUTS)) || { echo "map rep $rep: $lines results of $INPUTS" >&2; exit 1; }
    maps+=("$(awk -v n="$INPUTS" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')")
    h2load --h1 -n "$INPUTS" -c 64 -d "$RUN/one.json" -H 'Content-Type: application/json' \
      "$URL/bench/warm" > "$OUT/sync.$rep.txt" 2>&1
    ok=$(awk '/^status codes:/ {print $3}' "$OUT/sync.$rep.txt")
    ((ok == INPUTS)) || { echo "sync rep $rep: $ok 2xx of $INPUTS (see $OUT/sync.$rep.txt)" >&2; exit 1; }
    syncs+=("$(awk '/^finished in/ {printf "%.0f", $4}' "$OUT/sync.$rep.txt")")
    still_running
    echo "   rep $rep: map ${maps[-1]} inputs/s, sync calls ${syncs[-1]} calls/s"
  done
  m=$(printf '%s\n' "${maps[@]}" | median); s=$(printf '%s\n' "${syncs[@]}" | median)
  {
    echo "| $INPUTS inputs to bench/warm (lambda, 4 instances) | inputs/s, median of $REPS | reps |"
    echo "|---|--:|---|"
    echo "| one POST /bench/warm/map | $m | ${maps[*]} |"
    echo "| $INPUTS sync calls, 64 connections (h2load --h1) | $s | ${syncs[*]} |"
    echo "| map / sync | $(awk -v a="$m" -v b="$s" 'BEGIN {printf "%.2f", a / b}') | |"
    echo
  } >> "$TABLE"
fi

if selected stream; then
  echo ">> stream: time to the first item of countdown?n=2&pause=0.5 (the function runs 1 s)"
  {
    echo "| countdown?n=2&pause=0.5, $STREAM_REPS calls each | head ms | first item ms | end ms |"
    echo "|---|--:|--:|--:|"
  } >> "$TABLE"
  for fn in countdown countdown-warm; do
    for kind in ndjson sse; do
      f="$OUT/stream.$fn.$kind.tsv"
      "$PYTHON" "$HERE/first_item.py" "$URL/bench/$fn?n=2&pause=0.5" "$CA" "$STREAM_REPS" "$kind" > "$f"
      row="| $fn ($kind) | $(cut -f1 "$f" | median) | $(cut -f2 "$f" | median) | $(cut -f3 "$f" | median) |"
      echo "$row" >> "$TABLE"
      echo "   $row"
    done
  done
  echo >> "$TABLE"
fi

if selected batch; then
  echo ">> batch: wrk 64 connections, ${DUR} s, batched (max_size 32) and not"
  cat > "$RUN/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"x":42}'
wrk.headers["Content-Type"] = "application/json"
LUA
  declare -A RATES=()
  for rep in $(seq "$REPS"); do
    for fn in batched unbatched; do
      wrk -t2 -c64 -d"${DUR}s" --timeout 10s -s "$RUN/post.lua" "$URL/bench/$fn" > "$OUT/batch.$fn.$rep.txt" 2>&1
      rate=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$OUT/batch.$fn.$rep.txt")
      bad=$(awk '/Non-2xx/ {print $5}' "$OUT/batch.$fn.$rep.txt")
      [[ -z $bad ]] || { echo "batch $fn rep $rep: $bad non-2xx answers" >&2; exit 1; }
      RATES[$fn]+="$rate "
      still_running
      echo "   rep $rep: $fn $rate calls/s"
    done
  done
  b=$(printf '%s\n' ${RATES[batched]} | median); u=$(printf '%s\n' ${RATES[unbatched]} | median)
  {
    echo "| wrk 64 connections, ${DUR} s, lambda with 2 instances | calls/s, median of $REPS | reps |"
    echo "|---|--:|---|"
    echo "| batch = { max_size = 32, wait = \"2ms\" } (warm.batched) | $b | ${RATES[batched]}|"
    echo "| unbatched (warm.handler) | $u | ${RATES[unbatched]}|"
    echo "| batched / unbatched | $(awk -v a="$b" -v c="$u" 'BEGIN {printf "%.2f", a / c}') | |"
  } >> "$TABLE"
fi

echo
cat "$OUT/env.txt"
echo
cat "$TABLE"
