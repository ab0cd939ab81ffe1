#!/usr/bin/env python3
"""Print run.sh's results as Markdown: medians over reps, fngate/nginx and
fngate/haproxy ratios, and the performance targets each run is held to.

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


GATEWAYS = ("fngate", "nginx", "haproxy")


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
        for gateway in GATEWAYS:
            s = summary.get((scenario, gateway))
            if not s:
                continue
            out.append(
                f"| {label} | {gateway} | {fmt(s['rps'])} | {fmt(s['spread'], 1)}% "
                f"| {fmt(s['p50'], 2)} | {fmt(s['p99'], 2)} | {s['errors']} | {fmt(s['gw'])} "
                f"| {fmt(s['per_core'])} | {fmt(s['driver'])} |"
            )
            label = ""
        f = summary.get((scenario, "fngate"))
        for peer in GATEWAYS[1:]:
            n = summary.get((scenario, peer))
            if f and n:
                out.append(
                    f"| | **fngate/{peer}** | **{ratio(f['rps'], n['rps'])}** | | "
                    f"| **{ratio(f['p99'], n['p99'])}** | | | **{ratio(f['per_core'], n['per_core'])}** | |"
                )
    return out, summary


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
    for peer in GATEWAYS[1:]:
        if per_conn.get("fngate") is not None and per_conn.get(peer):
            out.append(
                f"| | **fngate/{peer}** | | | | **{ratio(per_conn['fngate'], per_conn[peer])}** |"
            )
    return out, per_conn


def better_peer(summary, scenario):
    """The peer that served more requests per gateway core-second."""
    peers = [summary.get((scenario, p)) for p in GATEWAYS[1:]]
    peers = [p for p in peers if p and p["per_core"]]
    return max(peers, key=lambda p: p["per_core"]) if peers else None


def targets(summary, per_conn):
    """The issue's targets, each judged from this run's medians."""
    out = ["| target | measured | met |", "|---|---|---|"]

    def row(name, value, ok):
        out.append(f"| {name} | {value} | {'yes' if ok else 'no' if ok is not None else 'n/a'} |")

    def get(scenario, gateway):
        return summary.get((scenario, gateway))

    f, best = get("h1", "fngate"), better_peer(summary, "h1")
    if f and best:
        r = f["per_core"] / best["per_core"]
        p99 = f["p99"] / best["p99"] if f["p99"] and best["p99"] else None
        row(
            "h1: req per gateway core-s >= 1.0 of the better peer, p99 <= its p99",
            f"{r:.2f}, p99 {fmt(p99, 2)}x",
            r >= 1.0 and p99 is not None and p99 <= 1.0,
        )
    f = get("h2", "fngate")
    for peer, want in (("haproxy", 1.0), ("nginx", 1.2)):
        n = get("h2", peer)
        if f and n and f["per_core"] and n["per_core"]:
            r = f["per_core"] / n["per_core"]
            row(f"h2: req per gateway core-s >= {want} of {peer}", f"{r:.2f}", r >= want)
    if per_conn.get("fngate") is not None and per_conn.get("nginx"):
        r = per_conn["fngate"] / per_conn["nginx"]
        row(
            "idle RSS per TLS connection <= nginx's",
            f"{per_conn['fngate']:.1f} vs {per_conn['nginx']:.1f} KiB ({r:.2f}x)",
            r <= 1.0,
        )
    for scenario, name in (("close-full", "full"), ("close-resume", "resumed")):
        f, best = get(scenario, "fngate"), better_peer(summary, scenario)
        if f and best and f["per_core"]:
            r = f["per_core"] / best["per_core"]
            row(f"{name} handshakes per gateway core >= 1.0 of the better peer", f"{r:.2f}", r >= 1.0)
    f = get("spawn", "fngate")
    if f and f["rps"]:
        row("durable spawns >= 20,000/s on the box (PIN=0)", f"{fmt(f['rps'])}/s", f["rps"] >= 20000)
    return out if len(out) > 2 else []


def main():
    folder = Path(sys.argv[1])
    lines, summary, per_conn = [], {}, {}
    runs = folder / "runs.tsv"
    if runs.exists():
        rows = list(csv.DictReader(runs.open(), delimiter="\t"))
        if rows:
            table, summary = runs_table(rows)
            lines += table
    idle = folder / "idle.tsv"
    if idle.exists():
        rows = list(csv.DictReader(idle.open(), delimiter="\t"))
        if rows:
            lines += [""] if lines else []
            table, per_conn = idle_table(rows)
            lines += table
    goals = targets(summary, per_conn)
    if goals:
        lines += ["", "Against the targets:", ""] + goals
    print("\n".join(lines))


if __name__ == "__main__":
    main()
