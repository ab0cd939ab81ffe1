#!/usr/bin/env python3
"""Instructions per request by the code that spent them, from callgrind dumps.

    python3 bench/profile.py --requests 20000 OUT/h1.callgrind OUT/h2.callgrind

Each dump's self cost per function (callgrind_annotate) is summed by the
crate or library the function belongs to and divided by the number of
requests; one Markdown table, a column per dump (named after its file), and
the top functions of each dump below it.
"""

import argparse
import re
import subprocess
from pathlib import Path

LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+([^:]*):(.*?)(?: \[(.*)\])?$")

# Symbol prefixes of C code linked into fngate, and the group they count to.
C_PREFIXES = (
    ("aws_lc", "aws-lc (crypto)"),
    ("sqlite3", "sqlite"),
    ("mi_", "mimalloc"),
    ("_mi_", "mimalloc"),
)
# Rust crates shown on their own; every other crate counts as "other crates".
CRATES = {
    "hyper": "hyper",
    "hyper_util": "hyper-util",
    "h2": "h2",
    "httparse": "httparse",
    "http": "http",
    "rustls": "rustls",
    "tokio_rustls": "rustls",
    "aws_lc_rs": "aws-lc (crypto)",
    "tokio": "tokio",
    "fngate": "fngate",
    "serde_json": "serde_json",
    "serde": "serde_json",
    "bytes": "bytes",
    "mimalloc": "mimalloc",
    "core": "std (core, alloc)",
    "alloc": "std (core, alloc)",
    "std": "std (core, alloc)",
    "axum": "axum",
    "tracing": "tracing",
    "tracing_core": "tracing",
    "rusqlite": "sqlite",
    "rand": "rand",
    "rand_core": "rand",
    "rand_chacha": "rand",
}


# The roots of each thread's stack: what they are charged with is what ran
# beneath them (see `functions`).
ROOTS = re.compile(
    r"^(clone|start_thread('\d+)?|<std::sys::thread::unix::Thread>::new::thread_start"
    r"|std::sys::backtrace::__rust_begin_short_backtrace|main|\(below main\)"
    r"|__libc_start_main.*|std::rt::lang_start.*|0x[0-9a-f]+)$"
)


def crate_of(function, obj):
    name = function.strip()
    if obj and ".so" in obj:
        if "libc" not in obj and "ld-linux" not in obj:
            return Path(obj).name
        if "malloc" in name or "free" in name or "consolidate" in name:
            return "libc malloc (sqlite's)"
        if name.startswith("pthread_") or name.startswith("__pthread_"):
            return "libc mutexes (sqlite's)"
        return "libc (memcpy, memset, ...)"
    for prefix, group in C_PREFIXES:
        if name.startswith(prefix):
            return group
    # `<hyper::proto::h1::io::Buffered<T, B> as tokio::io::AsyncRead>::poll` -> hyper
    name = re.sub(r"^[<&*(\s]+|^(dyn|mut|const) ", "", name)
    name = re.sub(r"^[<&*(\s]+", "", name)
    first = re.split(r"::|<|\s", name, maxsplit=1)[0]
    if first in CRATES:
        return CRATES[first]
    if "::" in name:
        return "other crates"
    # C code in the binary without a prefix of its own: SQLite's static functions
    return "sqlite"


def functions(dump):
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(dump)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total = None
    rows = []
    for line in text.splitlines():
        if total is None and line.strip().endswith("PROGRAM TOTALS"):
            total = int(line.split()[0].replace(",", ""))
            continue
        m = LINE.match(line)
        if m and total is not None:
            rows.append((int(m.group(1).replace(",", "")), m.group(3), m.group(4) or ""))
    total = total or sum(r[0] for r in rows)
    # A dump taken while the threads run charges each function still on a
    # thread's stack (main, the thread starts, the runtime's block_on) with
    # what ran beneath it, as if it were its own: those rows are the
    # largest, and their sum is what overshoots the program's total.
    rows.sort(reverse=True)
    # Every function on such a stack carries the same figure as the stack's
    # root (fngate::main, LocalKey::with, a thread's closure...): drop them
    # all by that figure.
    roots = {r[0] for r in rows if ROOTS.match(r[1])}
    rows = [r for r in rows if not any(abs(r[0] - root) <= root // 10000 for root in roots)]
    return total, rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("dumps", nargs="+", type=Path)
    args = p.parse_args()

    columns, tops = [], []
    for dump in args.dumps:
        total, rows = functions(dump)
        groups = {}
        for cost, function, obj in rows:
            g = crate_of(function, obj)
            groups[g] = groups.get(g, 0) + cost
        columns.append((dump.stem, total, groups))
        tops.append((dump.stem, total, sorted(rows, reverse=True)[: args.top]))

    n = args.requests
    names = sorted({g for _, _, gs in columns for g in gs}, key=lambda g: -sum(c[2].get(g, 0) for c in columns))
    head = "| instructions per request | " + " | ".join(c[0] for c in columns) + " |"
    print(head)
    print("|---|" + "--:|" * len(columns))
    print("| **all** | " + " | ".join(f"**{c[1] / n:,.0f}**" for c in columns) + " |")
    print(
        "| (charged to no function) | "
        + " | ".join(f"{(c[1] - sum(c[2].values())) / n:,.0f}" for c in columns)
        + " |"
    )
    for g in names:
        cells = []
        for _, total, groups in columns:
            cost = groups.get(g, 0)
            cells.append(f"{cost / n:,.0f} ({100 * cost / total:.0f}%)" if cost else "-")
        print(f"| {g} | " + " | ".join(cells) + " |")
    for name, total, rows in tops:
        print(f"\n{name}: top functions by own instructions per request")
        print()
        for cost, function, _ in rows:
            short = function if len(function) < 110 else function[:107] + "..."
            print(f"- {cost / n:,.0f} ({100 * cost / total:.1f}%) `{short}`")


if __name__ == "__main__":
    main()
