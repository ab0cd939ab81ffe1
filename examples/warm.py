"""warm: square.py as a warm function (backend = "lambda").

The module's top level is the instance's set-up: it runs once when the
instance starts, not once per call (here it only builds a small table and
says so on stderr; a real function would load a model or open a pool).
handler(event, context) then serves every call (batched(event, context)
serves a batched function's calls, one square per call of the batch): it returns x * x, with x
taken as square.py takes it (kwargs "x", else the first positional
argument; a digit string from a query parameter counts as a number), and
raises TypeError / ValueError / OverflowError with square.py's messages for
bad input.

Runs unchanged under either Lambda runtime client, from the repository root:

    python3 examples/lambda_runtime.py examples/warm.handler
    python3 -m awslambdaric examples/warm.handler
"""

import math
import re
import sys
import time

INTEGER = re.compile(r"[+-]?[0-9]+")

# --- set-up: once per instance ---
_started = time.monotonic()
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)  # big integers stay exact both ways
SQUARES = [n * n for n in range(1024)]  # the "expensive" state calls share
print(f"warm: set-up done in {(time.monotonic() - _started) * 1000:.1f} ms",
      file=sys.stderr, flush=True)


def number(x):
    if isinstance(x, bool):
        raise TypeError("x must be a number, not a boolean")
    if isinstance(x, (int, float)):
        return x
    if isinstance(x, str):
        text = x.strip()
        if INTEGER.fullmatch(text):
            return int(text)
        try:
            value = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(value):
                return value
        raise ValueError(f"x must be a number, got the string {x!r}")
    raise TypeError(f"x must be a number, got {type(x).__name__}")


def handler(event, context):
    return square(event)


def batched(event, context):
    """The same function with `batch = { max_size, wait }`: the event's
    `batch` lists the calls ({"args", "kwargs"} each) and the answer is one
    square per call, in order."""
    return [square(call) for call in event["batch"]]


def square(call):
    kwargs = call.get("kwargs") or {}
    args = call.get("args") or []
    if "x" in kwargs:
        x = kwargs["x"]
    elif args:
        x = args[0]
    else:
        raise TypeError("square() missing required argument 'x' "
                        "(send {\"x\": 42}, [42] or ?x=42)")
    x = number(x)
    if isinstance(x, int) and 0 <= x < len(SQUARES):
        return SQUARES[x]
    result = x * x
    if isinstance(result, float) and not math.isfinite(result):
        raise OverflowError("x * x is too large for a JSON number")
    return result
