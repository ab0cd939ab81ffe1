#!/usr/bin/env python3
"""slow: sleeps `seconds` (default 5, fractions allowed), then returns
{"slept": seconds}.

Shows long-running calls: a sync call that outlives the gateway's sync wait
turns into a spawned call (303 to /calls/{id}), one past the function's
timeout is stopped (504), and POST /demo/slow/spawn returns at once while
the call runs on.
"""

import json
import math
import sys
import time


def main():
    request = json.load(sys.stdin)
    kwargs = request.get("kwargs") or {}
    args = request.get("args") or []
    seconds = kwargs.get("seconds", args[0] if args else 5)
    if isinstance(seconds, str):  # from a query parameter: ?seconds=2.5
        try:
            seconds = int(seconds)
        except ValueError:
            try:
                seconds = float(seconds)
            except ValueError:
                seconds = None
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        print("ValueError: seconds must be a non-negative number",
              file=sys.stderr)
        sys.exit(1)
    time.sleep(seconds)
    print(json.dumps({"slept": seconds}))


if __name__ == "__main__":
    main()
