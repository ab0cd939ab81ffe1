#!/usr/bin/env python3
"""cube: returns x * square(x), calling demo/square through the gateway.

Shows a function that calls another function, with the standard library
only. Every call gets, in its environment:

  FNGATE_URL         the gateway's own base URL (https://127.0.0.1:8443)
  FNGATE_CALL_TOKEN  a credential that acts as whoever called cube, limited
                     to cube's may_call list and to this call's deadline
  FNGATE_CA_FILE     the dev CA that signed the gateway's certificate (only
                     while the gateway runs on its dev certificate)

The nested call keeps this call's deadline and trace, and the gateway
records it as this call's child.
"""

import json
import os
import ssl
import sys
import urllib.error
import urllib.request


def fail(kind, message):
    """Reports the error the way an uncaught Python exception would."""
    print(f"{kind}: {message}", file=sys.stderr)
    sys.exit(1)


def call(function, kwargs):
    """POSTs kwargs to /{app}/{function} on the gateway with this call's
    token; the result, or the gateway's problem as an error."""
    context = ssl.create_default_context(cafile=os.environ.get("FNGATE_CA_FILE"))
    request = urllib.request.Request(
        f"{os.environ['FNGATE_URL']}/{function}",
        data=json.dumps(kwargs).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {os.environ['FNGATE_CALL_TOKEN']}",
        },
    )
    try:
        with urllib.request.urlopen(request, context=context) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        problem = json.load(error)
        fail("CallError", f"{function} answered {error.code} {problem.get('code')}: "
             f"{problem.get('detail')}")


def main():
    request = json.load(sys.stdin)
    kwargs = request.get("kwargs") or {}
    args = request.get("args") or []
    x = kwargs["x"] if "x" in kwargs else (args[0] if args else None)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        fail("TypeError", "cube() needs a number x (send {\"x\": 3} or [3])")
    print(json.dumps(x * call("demo/square", {"x": x})))


if __name__ == "__main__":
    main()
