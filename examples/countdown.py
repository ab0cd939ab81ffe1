#!/usr/bin/env python3
"""countdown: a streaming function (`stream = true`): counts down from `n`
(default 5) to 0, one item {"n": ...} every `pause` seconds (default 0.5),
the last one {"n": 0, "liftoff": true}.

As an exec function (gateway.toml's demo/countdown) each item is one line
on stdout, flushed as it is printed; the gateway sends it on at once:

    curl -N --cacert certs/dev-ca.pem 'https://localhost:8443/demo/countdown?n=3'

As a warm function, `handler` is a generator: examples/lambda_runtime.py
streams what it yields (the Runtime API's streaming response mode):

    command = ["python3", "examples/lambda_runtime.py", "examples/countdown.handler"]
"""

import json
import sys
import time


def number(kwargs, name, default, kind, low, high):
    value = kwargs.get(name, default)
    try:
        value = kind(value)  # from a query parameter: ?n=3
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number") from None
    if isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


def items(request):
    kwargs = request.get("kwargs") or {}
    n = number(kwargs, "n", 5, int, 0, 1000)
    pause = number(kwargs, "pause", 0.5, float, 0, 10)
    for i in range(n, 0, -1):
        yield {"n": i}
        time.sleep(pause)
    yield {"n": 0, "liftoff": True}


def handler(event, context):
    yield from items(event)


def main():
    request = json.load(sys.stdin)
    try:
        for item in items(request):
            print(json.dumps(item), flush=True)
    except ValueError as e:
        print(f"ValueError: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
