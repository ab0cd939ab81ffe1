# A map input's function for tests/map_spawn.rs: its input is one positional
# argument x (a number); `seconds` (a keyword argument, from the map's query)
# makes it sleep first. Each run appends "x attempt pid" to `runs` beside
# this file (one short line, so concurrent runs never interleave); a string
# x fails (x * x raises), as a function error.
import json, os, sys, time

req = json.loads(sys.stdin.read())
args = req.get("args") or []
kw = req.get("kwargs") or {}
x = args[0] if args else kw.get("x")
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "runs"), "a") as f:
    f.write("%s %s %d\n" % (json.dumps(x), req.get("attempt"), os.getpid()))
time.sleep(float(kw.get("seconds", 0)))
if isinstance(x, str):
    sys.stderr.write("TypeError: cannot square %r\n" % x)
    sys.exit(1)
sys.stdout.write(json.dumps({"x": x, "square": x * x, "call_id": req.get("call_id")}))
