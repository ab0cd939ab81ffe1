"""A batched Lambda handler for tests/batching.rs: the event's `batch` lists
the calls; the answer is one element per call, in order:

    {"x": kwargs.x, "double": 2 * x, "batch_call_id" (the event's call_id),
     "batch_size", "pid", "parameters" (the event's, for a class method)}

It sleeps kwargs.sleep seconds (the longest of the batch) first.
"""

import os
import time


def handler(event, context):
    batch = event["batch"]
    kwargs = [call.get("kwargs") or {} for call in batch]
    time.sleep(max(float(kw.get("sleep", 0)) for kw in kwargs))
    return [{"x": kw.get("x"), "double": 2 * (kw.get("x") or 0),
             "batch_call_id": event["call_id"], "batch_size": len(batch),
             "pid": os.getpid(), "parameters": event.get("parameters")}
            for kw in kwargs]
