#!/usr/bin/env python3
"""fail: always fails.

Shows how a function's error reaches the caller: the uncaught exception's
traceback goes to stderr, Python exits with status 1, and the gateway
answers 500 `function_error` with the tail of stderr, whose last line is
"ValueError: this function always fails".
"""

import sys


def main():
    sys.stdin.buffer.read()  # take the whole request before failing
    raise ValueError("this function always fails")


if __name__ == "__main__":
    main()
