"""A streaming function for the black-box tests, driven by its kwargs.

Items are {"item": 1}, {"item": 2}, ... `count` of them (default 2). After
the first it waits until the file `gate` exists (when given), so a test
can see the first item reach its client while the function still runs.
`pidfile` first gets this process's pid, `forever` prints an item every
20 ms until killed, `flood` 64 KiB items as fast as it can until killed, `fail` exits 1 with `ValueError: <fail>` on stderr
after the items, and `garbage` prints a line that is not JSON.

As an exec command it prints the items on stdout; as a Lambda handler
(`gated.handler`) it yields them; `serve()` is the HTTP server of
stream_server.py.
"""

import json
import os
import sys
import time


def items(request):
    kw = request.get("kwargs") or {}
    if kw.get("pidfile"):
        with open(kw["pidfile"] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(kw["pidfile"] + ".tmp", kw["pidfile"])
    if kw.get("flood"):
        pad = "x" * 65536
        n = 0
        while True:
            n += 1
            yield {"item": n, "pad": pad}
    if kw.get("forever"):
        n = 0
        while True:
            n += 1
            yield {"item": n}
            time.sleep(0.02)
    for n in range(1, int(kw.get("count", 2)) + 1):
        yield {"item": n}
        if n == 1 and kw.get("gate"):
            waited = time.time() + 30
            while not os.path.exists(kw["gate"]):
                if time.time() > waited:
                    raise TimeoutError("the gate was never opened")
                time.sleep(0.005)
    if kw.get("garbage"):
        yield "garbage"
    if kw.get("fail"):
        raise ValueError(kw["fail"])


def handler(event, context):
    for item in items(event):
        if item == "garbage":
            raise TypeError("a lambda handler cannot print garbage")
        yield item


def main():
    request = json.load(sys.stdin)
    try:
        for item in items(request):
            print("not json" if item == "garbage" else json.dumps(item), flush=True)
    except (ValueError, TimeoutError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
