"""Summarise a workflow run: the wall time of every rule (Snakemake's `benchmark:` files) and, per trained run,
the step time from its training log relative to SFT's.

    python benchmarks/workflow_times.py [results_dir]

Prints one line per job (seconds, max RSS), the totals per rule sorted by time, then per run of
``<results>/runs/*/train_log.jsonl``: steps, the median and total step time, the median relative to SFT's
median (the runs of one workflow share the machine and the batch order, so the ratio is the comparable
number) and the peak memory the log reports.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd

from dwakd.efficiency import read_train_log
from dwakd.errors import DataError


def main(results: str = "results") -> None:
    root = Path(results) / "benchmarks"
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise SystemExit(f"{root}: no benchmark files; run the workflow first")
    per_rule: dict[str, float] = defaultdict(float)
    rows = []
    for f in files:
        b = pd.read_csv(f, sep="\t")
        job = str(f.relative_to(root).with_suffix(""))
        rows.append((job, float(b["s"].iloc[0]), float(b["max_rss"].iloc[0])))
        per_rule[job.split("/")[0]] += float(b["s"].iloc[0])
    for job, s, rss in sorted(rows, key=lambda r: -r[1]):
        print(f"{job:40s} {s:8.1f} s  {rss:8.0f} MB")
    print("\nper rule:")
    for rule, s in sorted(per_rule.items(), key=lambda r: -r[1]):
        print(f"  {rule:20s} {s:8.1f} s")
    print(f"  {'total (sequential)':20s} {sum(per_rule.values()):8.1f} s")
    steps = step_times(Path(results))
    if steps:
        print("\n| run | steps | median step (s) | × SFT | total step time (s) | peak memory (MB) |")
        print("|---|---:|---:|---:|---:|---:|")
        sft = steps.get("sft", {}).get("median")
        for run, r in steps.items():
            ratio = f"{r['median'] / sft:.2f}" if sft else "–"
            print(f"| {run} | {r['steps']} | {r['median']:.3f} | {ratio} | {r['total']:.1f} | {r['peak_mb']:.0f} |")


def step_times(results: Path) -> dict[str, dict]:
    """Per run: number of optimiser steps, median and total ``step_time_s``, largest ``peak_mem_mb`` (the step
    lines as ``dwakd efficiency`` reads them: a step repeated by a resumed run counts once)."""
    out = {}
    for log in sorted((results / "runs").glob("*/train_log.jsonl")):
        try:
            d = read_train_log(log)
        except DataError:  # a run killed before its first step
            continue
        out[log.parent.name] = {"steps": len(d), "median": float(d.step_time_s.median()),
                                "total": float(d.step_time_s.sum()), "peak_mb": float(d.peak_mem_mb.max())}
    return out


if __name__ == "__main__":
    main(*sys.argv[1:])
