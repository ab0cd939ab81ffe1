"""A Lambda runtime client (standard library only) for the worker tests:
the unit tests of `src/worker/` and the black-box ones in tests/worker.rs.

Each call answers who served it and what it saw:

    {"pid", "served_by" (SERVED_BY), "x" (kwargs.x), "attempt",
     "token_visible" (whether FNGATE_WORKER_TOKEN reached it),
     "deadline", "arn" (the Lambda-Runtime-* headers),
     "name" (AWS_LAMBDA_FUNCTION_NAME), "handler" (_HANDLER)}

kwargs it honours, in this order: "started" (a file it writes its pid to,
atomically), "sleep" (seconds, on the call's first attempt only), "crash"
(the process exits with status 3 mid-call), "fail" (reported as a
ValueError with that message).
"""

import http.client
import json
import os
import time

host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)


def request(method, path, body=None):
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request(method, "/2018-06-01/runtime" + path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


while True:
    response, body = request("GET", "/invocation/next")
    rid = response.getheader("Lambda-Runtime-Aws-Request-Id")
    event = json.loads(body)
    kw = event.get("kwargs") or {}
    if kw.get("started"):
        with open(kw["started"] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(kw["started"] + ".tmp", kw["started"])
    if event.get("attempt") == 1:
        time.sleep(float(kw.get("sleep", 0)))
    if kw.get("crash"):
        os._exit(3)
    if kw.get("fail"):
        report = {"errorType": "ValueError", "errorMessage": kw["fail"]}
        request("POST", f"/invocation/{rid}/error", json.dumps(report))
        continue
    out = {"pid": os.getpid(), "served_by": os.environ.get("SERVED_BY"),
           "x": kw.get("x"), "attempt": event.get("attempt"),
           "token_visible": "FNGATE_WORKER_TOKEN" in os.environ,
           "deadline": response.getheader("Lambda-Runtime-Deadline-Ms"),
           "arn": response.getheader("Lambda-Runtime-Invoked-Function-Arn"),
           "name": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
           "handler": os.environ.get("_HANDLER")}
    request("POST", f"/invocation/{rid}/response", json.dumps(out))
