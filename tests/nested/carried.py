"""An exec function answering with what its call carries: its deadline,
trace, principal, and whether it got the gateway's URL and a token."""

import json
import os
import sys

request = json.loads(sys.stdin.read())
sys.stdout.write(json.dumps({
    "call_id": request["call_id"],
    "deadline_ms": request["deadline_ms"],
    "traceparent": os.environ.get("TRACEPARENT"),
    "subject": os.environ.get("FNGATE_SUBJECT"),
    "url": os.environ.get("FNGATE_URL"),
    "ca_file": os.environ.get("FNGATE_CA_FILE"),
    "has_token": bool(os.environ.get("FNGATE_CALL_TOKEN")),
    "x": (request.get("kwargs") or {}).get("x"),
}))
