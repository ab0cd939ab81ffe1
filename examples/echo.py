#!/usr/bin/env python3
"""echo: returns {"args": ..., "kwargs": ...} exactly as received.

Shows that arguments reach a function unchanged: numbers keep the exact
text they were written with (a 40-digit integer, 1e400, -0.10), because
this script never turns them into Python ints or floats. The JSON is parsed
with hooks that keep each number's literal text, and written back by a tiny
encoder that copies that text out unchanged.
"""

import json
import sys


class Literal:
    """A JSON number kept as the exact text it was written with."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


class Pairs(list):
    """A JSON object as its (key, value) pairs, in the order received."""


def encode(value, out):
    if isinstance(value, Literal):
        out.append(value.text)
    elif isinstance(value, str):
        out.append(encode_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, Pairs):  # before list: Pairs is a list
        out.append("{")
        for i, (key, item) in enumerate(value):
            if i:
                out.append(",")
            out.append(encode_string(key))
            out.append(":")
            encode(item, out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def encode_string(text):
    encoded = json.dumps(text, ensure_ascii=False)
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as an escape
        encoded = json.dumps(text, ensure_ascii=True)
    return encoded


def main():
    data = sys.stdin.buffer.read().decode("utf-8")
    request = json.loads(
        data,
        parse_int=Literal,
        parse_float=Literal,
        object_pairs_hook=Pairs,
    )
    fields = dict(request)
    out = ['{"args":']
    encode(fields.get("args", []), out)
    out.append(',"kwargs":')
    encode(fields.get("kwargs", Pairs()), out)
    out.append("}\n")
    sys.stdout.buffer.write("".join(out).encode("utf-8"))


if __name__ == "__main__":
    main()
