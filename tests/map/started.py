"""A Lambda handler module for the map tests: writes this instance's pid
to the file kwargs["started"] (atomically, by rename) when a call starts,
then sleeps kwargs["sleep"] seconds and answers {"pid"}."""

import os
import time


def handler(event, context):
    kwargs = event.get("kwargs") or {}
    if kwargs.get("started"):
        with open(kwargs["started"] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(kwargs["started"] + ".tmp", kwargs["started"])
    time.sleep(float(kwargs.get("sleep", 0)))
    return {"pid": os.getpid()}
