"""A function for the retry tests, run as an exec script (`python3
flaky.py`) or as a Lambda handler (`flaky.handler`).

Each run appends "ATTEMPT DEADLINE_MS TIME" to the file named by
kwargs.count (relative to the working directory), so a test counts the
runs and sees their attempts, deadlines and start times. Run N (the Nth
line of that file) first sleeps kwargs.sleeps[N-1] seconds when the list
has that many, then ends its process (exit status 3, a crash) while
N <= kwargs.crash_runs, then fails with ValueError while
N <= kwargs.fail_runs; otherwise its result is {"runs": N, "attempt":
ATTEMPT}.
"""

import json
import os
import sys
import time


def run(event):
    kwargs = event.get("kwargs") or {}
    with open(kwargs["count"], "a") as f:
        f.write("%d %d %f\n" % (event["attempt"], event["deadline_ms"], time.time()))
    with open(kwargs["count"]) as f:
        runs = len(f.read().splitlines())
    sleeps = kwargs.get("sleeps") or []
    if runs <= len(sleeps):
        time.sleep(sleeps[runs - 1])
    if runs <= kwargs.get("crash_runs", 0):
        os._exit(3)
    if runs <= kwargs.get("fail_runs", 0):
        raise ValueError("run %d fails" % runs)
    return {"runs": runs, "attempt": event["attempt"]}


def handler(event, context):
    return run(event)


if __name__ == "__main__":
    try:
        result = run(json.loads(sys.stdin.read()))
    except ValueError as e:
        sys.stderr.write("ValueError: %s\n" % e)
        sys.exit(1)
    sys.stdout.write(json.dumps(result))
