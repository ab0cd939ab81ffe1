#!/usr/bin/env python3
"""Calls the quick-start gateway with Python's standard library only.

    python3 client.py [BASE_URL [CA_FILE]]

or FNGATE_URL / FNGATE_CA_FILE (default https://localhost:8443 and
certs/dev-ca.pem). Only that CA is trusted. Each step prints a line; any
answer other than the expected one exits 1.
"""

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def fail(step, message):
    print(f"FAIL {step}: {message}")
    sys.exit(1)


def request(tls, method, url, body=None):
    """(status, headers, body bytes); an error status is an answer too."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=tls, timeout=60) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.headers, answer.read()


def main():
    base = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FNGATE_URL", "https://localhost:8443")).rstrip("/")
    ca = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("FNGATE_CA_FILE", "certs/dev-ca.pem")
    tls = ssl.create_default_context(cafile=ca)  # this CA only: no system roots are loaded

    # 1. A sync call.
    status, _, body = request(tls, "POST", f"{base}/demo/square", {"x": 7})
    if status != 200 or json.loads(body) != 49:
        fail("sync", f"{status} {body!r}")
    print("sync: POST /demo/square {\"x\": 7} -> 200 49")

    # 2. A spawn, then polling its Location until it is no longer 202.
    status, headers, body = request(tls, "POST", f"{base}/demo/square/spawn", {"x": 7})
    location = headers.get("Location")
    if status != 202 or not location:
        fail("spawn", f"{status} {body!r}")
    url = urllib.parse.urljoin(base + "/", location)
    polls = 0
    while True:
        polls += 1
        status, headers, body = request(tls, "GET", url)
        if status != 202:
            break
        time.sleep(float(headers.get("Retry-After", "1")))
    if status != 200 or json.loads(body) != 49:
        fail("spawn", f"{status} {body!r}")
    print(f"spawn: 202 Location {location}, {polls} poll(s) -> 200 49")

    # 3. A long poll: the answer comes the moment the call ends.
    status, headers, body = request(tls, "POST", f"{base}/demo/slow/spawn", {"seconds": 1})
    call_id = json.loads(body).get("call_id", "") if status == 202 else ""
    if not call_id.startswith("fc-"):
        fail("long-poll", f"spawn answered {status} {body!r}")
    status, _, body = request(tls, "GET", f"{base}/calls/{call_id}?wait=30")
    if status != 200 or json.loads(body) != {"slept": 1}:
        fail("long-poll", f"{status} {body!r}")
    print(f"long-poll: GET /calls/{call_id}?wait=30 -> 200 {{\"slept\": 1}}")

    # 4. An error's machine-readable code.
    status, headers, body = request(tls, "POST", f"{base}/demo/nope", {})
    content_type = headers.get("Content-Type", "")
    problem = json.loads(body) if content_type.startswith("application/problem+json") else {}
    if status != 404 or problem.get("code") != "function_not_found":
        fail("error", f"{status} {content_type} {body!r}")
    print("error: POST /demo/nope -> 404 function_not_found")


if __name__ == "__main__":
    try:
        main()
    except (urllib.error.URLError, OSError, ValueError) as error:
        fail("request", error)
