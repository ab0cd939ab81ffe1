"""A Lambda handler module for the warm-instance black-box tests.

Its top level is the instance's set-up: it appends one line (this process's
pid) to the file named by SETUP_COUNT_FILE, so a test counts how many
instances were set up (and which). The handler answers who served the call
and what it saw:

    {"pid", "function", "params" (the FNGATE_PARAM_* environment),
     "kwargs", "class", "parameters"}

kwargs it honours, in this order: "sleep" (seconds, holds the instance
busy), "crash" (the process exits with status 3 mid-call), "fail" (raises
ValueError("asked to fail")).
"""

import os
import time

_count_file = os.environ.get("SETUP_COUNT_FILE")
if _count_file:
    with open(_count_file, "a") as f:
        f.write(f"{os.getpid()}\n")


def handler(event, context):
    kwargs = event.get("kwargs") or {}
    if kwargs.get("sleep"):
        time.sleep(float(kwargs["sleep"]))
    if kwargs.get("crash"):
        os._exit(3)
    if kwargs.get("fail"):
        raise ValueError("asked to fail")
    params = {k: v for k, v in os.environ.items() if k.startswith("FNGATE_PARAM_")}
    return {
        "pid": os.getpid(),
        "function": event["function"],
        "params": params,
        "kwargs": event["kwargs"],
        "class": event.get("class"),
        "parameters": event.get("parameters"),
    }
