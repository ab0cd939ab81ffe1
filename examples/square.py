#!/usr/bin/env python3
"""square: returns x * x.

Shows the plainest exec function: the invocation request arrives as JSON on
stdin, the result (a bare JSON number) goes to stdout, and a missing or bad
argument is an error reported on stderr with a non-zero exit.

x may come as a keyword (POST {"x": 42}, GET ?x=42), as the first positional
argument (POST [42] or a bare 42), and as a digit string when it comes from
a query parameter. Integers stay exact however large they are.
"""

import json
import math
import re
import sys

INTEGER = re.compile(r"[+-]?[0-9]+")


def fail(kind, message):
    """Reports the error the way an uncaught Python exception would."""
    print(f"{kind}: {message}", file=sys.stderr)
    sys.exit(1)


def number(x):
    if isinstance(x, bool):
        fail("TypeError", "x must be a number, not a boolean")
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
        fail("ValueError", f"x must be a number, got the string {x!r}")
    fail("TypeError", f"x must be a number, got {type(x).__name__}")


def main():
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # big integers stay exact both ways
    request = json.load(sys.stdin)
    kwargs = request.get("kwargs") or {}
    args = request.get("args") or []
    if "x" in kwargs:
        x = kwargs["x"]
    elif args:
        x = args[0]
    else:
        fail("TypeError", "square() missing required argument 'x' "
             "(send {\"x\": 42}, [42] or ?x=42)")
    x = number(x)
    result = x * x
    if isinstance(result, float) and not math.isfinite(result):
        fail("OverflowError", "x * x is too large for a JSON number")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
