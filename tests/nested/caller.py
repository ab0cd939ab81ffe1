"""An exec function that calls other functions through the gateway with
its FNGATE_CALL_TOKEN, as its kwargs say:

  {"call": PATH, "body": ...}   POSTs body to PATH: {"status", "body",
                                "call_id" (the child's X-Call-Id),
                                "traceparent" (this call's own)}
  {"recurse": N}                appends a line to `runs`, then calls
                                /demo/recurse with N + 1: the child's
                                answer, or {"n": N, "status", "code"} when
                                the child was refused
  {"leak": FILE}                writes its token to FILE (for the tests of
                                the token itself) and answers its deadline
"""

import json
import os
import sys

from gateway_client import call

request = json.loads(sys.stdin.read())
kwargs = request.get("kwargs") or {}
token = os.environ["FNGATE_CALL_TOKEN"]

if "leak" in kwargs:
    with open(kwargs["leak"] + ".tmp", "w") as f:
        f.write(token)
    os.rename(kwargs["leak"] + ".tmp", kwargs["leak"])
    out = {"deadline_ms": request["deadline_ms"]}
elif "recurse" in kwargs:
    n = kwargs["recurse"]
    with open("runs", "a") as f:
        f.write("%d\n" % n)
    status, body, _ = call("/demo/recurse", {"recurse": n + 1}, token)
    out = body if status == 200 else {"n": n, "status": status, "code": body.get("code")}
else:
    status, body, headers = call(kwargs["call"], kwargs.get("body"), token)
    out = {
        "status": status,
        "body": body,
        "call_id": headers.get("X-Call-Id") or headers.get("x-call-id"),
        "traceparent": os.environ.get("TRACEPARENT"),
        "deadline_ms": request["deadline_ms"],
    }
sys.stdout.write(json.dumps(out))
