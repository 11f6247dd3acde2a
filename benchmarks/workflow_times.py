"""Summarise the wall time of every rule of a workflow run from Snakemake's `benchmark:` files.

    python benchmarks/workflow_times.py [results_dir]

Prints one line per job (seconds, max RSS) and the totals per rule, sorted by time.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd


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


if __name__ == "__main__":
    main(*sys.argv[1:])
