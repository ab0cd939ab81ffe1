#!/usr/bin/env python3
"""Print run.sh's results as Markdown: medians over reps and fngate/nginx ratios.

    python3 bench/table.py OUT      # reads OUT/runs.tsv and OUT/idle.tsv

runs.tsv has one row per load run (scenario, gateway, rep, tool, req_s,
p50_ms, p99_ms, errors, wall_s, gw_pct, be_pct, lg_pct, box_pct); idle.tsv
one row per gateway (gateway, wanted, ok, failed, server_open, held,
rss_before_kib, rss_after_kib).
"""

import csv
import statistics
import sys
from pathlib import Path

SCENARIOS = {
    "h1": "h1 keep-alive",
    "h2": "h2 keep-alive",
    "close-full": "new conn/request, full handshake",
    "close-resume": "new conn/request, resumed",
    "spawn": "spawn (durable 202)",
    "get-call": "GET /calls/{id}",
}


def number(text):
    try:
        return float(text)
    except ValueError:
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    return fmt(a / b, 2) if a is not None and b else "n/a"


def runs_table(rows):
    groups = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["gateway"]), []).append(row)

    summary = {}
    for (scenario, gateway), reps in groups.items():
        rps = [number(r["req_s"]) for r in reps]
        gw = median([number(r["gw_pct"]) for r in reps])
        per_core = median(
            [
                100 * x / c
                for x, c in ((number(r["req_s"]), number(r["gw_pct"])) for r in reps)
                if x is not None and c
            ]
        )
        known = [v for v in rps if v is not None]
        mid = median(rps)
        summary[(scenario, gateway)] = {
            "n": len(reps),
            "rps": mid,
            "spread": 100 * (max(known) - min(known)) / mid if known and mid else None,
            "p50": median([number(r["p50_ms"]) for r in reps]),
            "p99": median([number(r["p99_ms"]) for r in reps]),
            "errors": sum(int(number(r["errors"]) or 0) for r in reps),
            "gw": gw,
            "per_core": per_core,
            "driver": median(
                [(number(r["be_pct"]) or 0) + (number(r["lg_pct"]) or 0) for r in reps]
            ),
        }

    out = [
        "| scenario | gateway | req/s | spread | p50 ms | p99 ms | errors | gw CPU % | req per gw core-s | drv CPU % |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    order = [s for s in SCENARIOS if any(k[0] == s for k in summary)]
    for scenario in order:
        label = SCENARIOS[scenario]
        for gateway in ("fngate", "nginx"):
            s = summary.get((scenario, gateway))
            if not s:
                continue
            out.append(
                f"| {label} | {gateway} | {fmt(s['rps'])} | {fmt(s['spread'], 1)}% "
                f"| {fmt(s['p50'], 2)} | {fmt(s['p99'], 2)} | {s['errors']} | {fmt(s['gw'])} "
                f"| {fmt(s['per_core'])} | {fmt(s['driver'])} |"
            )
            label = ""
        f, n = summary.get((scenario, "fngate")), summary.get((scenario, "nginx"))
        if f and n:
            out.append(
                f"| | **fngate/nginx** | **{ratio(f['rps'], n['rps'])}** | | "
                f"| **{ratio(f['p99'], n['p99'])}** | | | **{ratio(f['per_core'], n['per_core'])}** | |"
            )
    return out


def idle_table(rows):
    out = [
        "| idle TLS conns | gateway | open: client ok / server count / held | RSS before KiB | RSS after KiB | KiB per conn |",
        "|---|---|--:|--:|--:|--:|",
    ]
    per_conn = {}
    for row in rows:
        server_open = int(row["server_open"])
        before, after = int(row["rss_before_kib"]), int(row["rss_after_kib"])
        per_conn[row["gateway"]] = (after - before) / server_open if server_open else None
        complete = int(row["ok"]) == int(row["wanted"]) == server_open == int(row["held"] or 0)
        label = fmt(int(row["wanted"])) if not out[2:] else ""
        out.append(
            f"| {label} | {row['gateway']} | {row['ok']} / {server_open} / {row['held']}"
            f"{'' if complete else ' (INCOMPLETE)'} | {fmt(before)} | {fmt(after)} "
            f"| {fmt(per_conn[row['gateway']], 1)} |"
        )
    if "fngate" in per_conn and "nginx" in per_conn:
        out.append(
            f"| | **fngate/nginx** | | | | **{ratio(per_conn['fngate'], per_conn['nginx'])}** |"
        )
    return out


def main():
    folder = Path(sys.argv[1])
    lines = []
    runs = folder / "runs.tsv"
    if runs.exists():
        rows = list(csv.DictReader(runs.open(), delimiter="\t"))
        if rows:
            lines += runs_table(rows)
    idle = folder / "idle.tsv"
    if idle.exists():
        rows = list(csv.DictReader(idle.open(), delimiter="\t"))
        if rows:
            lines += [""] if lines else []
            lines += idle_table(rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
