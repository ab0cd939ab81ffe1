#!/usr/bin/env python3
"""greet: returns {"greeting": "hello, NAME"}.

Shows input validation: the function declares a JSON Schema
(schemas/greet.json), so the gateway rejects a missing or empty `name`, or
a `times` that is not an integer from 1 to 10, with 400 `invalid_arguments`
before this script ever runs, and GET /demo/greet?name=Ada&times=2 gets
`times` as an integer. It also shows `env`: the greeting word comes from
GREET_WORD, set in gateway.toml.
"""

import json
import os
import sys


def main():
    request = json.load(sys.stdin)
    kwargs = request.get("kwargs") or {}
    name = kwargs.get("name")
    if not isinstance(name, str) or not name:
        print("TypeError: greet() missing required argument 'name'",
              file=sys.stderr)
        sys.exit(1)
    times = kwargs.get("times", 1)
    word = os.environ.get("GREET_WORD", "hello")
    greeting = " ".join([f"{word}, {name}"] * int(times))
    print(json.dumps({"greeting": greeting}, ensure_ascii=False))


if __name__ == "__main__":
    main()
