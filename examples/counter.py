"""counter: a class whose methods share one warm instance's state.

Served as class `counter` (backend = "lambda", parameter `name`) with
methods `incr` and `get`: POST /demo/counter/incr?name=a adds kwargs
"by" (an integer, default 1) to the count of the instances for name=a.
Each distinct name gets instances of its own, which see it as
FNGATE_PARAM_NAME; the invocation request's "function" names the method.

The count lives in this process: it starts at 0 when an instance starts
and is not shared between instances (a demonstration of warm state, not a
database).

    python3 examples/lambda_runtime.py examples/counter.handler
"""

import os
import re
import sys

# --- set-up: once per instance ---
NAME = os.environ.get("FNGATE_PARAM_NAME", "")
count = 0
print(f"counter: set-up done for name={NAME!r}", file=sys.stderr, flush=True)


def state():
    return {"name": NAME, "count": count}


def incr(kwargs):
    global count
    by = kwargs.get("by", 1)
    if isinstance(by, str) and re.fullmatch(r"[+-]?[0-9]+", by.strip()):
        by = int(by)  # from a query parameter: ?by=5
    if isinstance(by, bool) or not isinstance(by, int):
        raise TypeError(f"by must be an integer, got {by!r}")
    count += by
    return state()


def get(kwargs):
    return state()


METHODS = {"incr": incr, "get": get}


def handler(event, context):
    method = event.get("function")
    if method not in METHODS:
        raise ValueError(f"counter has no method {method!r} (it has: incr, get)")
    return METHODS[method](event.get("kwargs") or {})
