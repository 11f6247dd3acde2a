"""How large must the evaluation be to resolve a ROUGE-L difference? A power projection from one workflow run.

    python benchmarks/rouge_power.py results/mini/eval [--baseline sft] [--data results/data]

For every run beside the baseline, per evaluation set s (prompts i, the run's seeds k = 1..K), the paired
difference of seed-pooled scores ``D_i = mean_k x^m_{k,i} - mean_k x^b_{k,i}`` (as ``dwakd.stats``) is split
into two variance components (one-way random effects, method of moments):

- within: ``w = mean_i var_k(x^m_{k,i} - x^b_{k,i})`` (ddof 1): the sampling noise of one pair of generations.
  The two runs sample with the same seeds, so their noise is correlated (common random numbers) and is taken
  from the seed-wise differences;
- between: ``B = var_i(D_i) - w / K``: how much the true per-prompt difference varies (clipped at 0).

With n prompts per set and K seeds for both runs, ``var(D_i) = B + w / K`` and the Avg over the S sets
(each set weighted 1/S, as the tables' Avg) has ``se^2 = (1/S^2) sum_s var_s(D_i) / n_s``; the minimum
detectable difference is ``2.80 se`` (two-sided 5 %, power 0.8, as ``dwakd.stats.mdd_factor``). The script
prints, per run: the observed Avg difference, the projected MDD now (a check against significance.csv's
bootstrap ``mdd``), with every prompt of every set (``--data``: the sets' sizes), with twice the seeds, and
the factor by which the number of generations must grow for the MDD to reach the observed difference.

Normal approximation; it assumes the observed difference is the true one, so it answers "would more prompts
have resolved what this run saw", not whether the difference is real.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dwakd.stats import mdd_factor


def seed_matrix(result: dict) -> np.ndarray:
    """Per-prompt scores of an eval JSON, shape (K seeds, n prompts)."""
    return np.stack([np.asarray(result["seeds"][k]["scores"], float) for k in sorted(result["seeds"])])


def components(method: dict, baseline: dict) -> dict:
    """Variance components of one set's paired difference (module docstring)."""
    if sorted(method["seeds"]) != sorted(baseline["seeds"]):
        raise ValueError(f"the runs were sampled with different seeds: {sorted(method['seeds'])} and "
                         f"{sorted(baseline['seeds'])}")
    dk = seed_matrix(method) - seed_matrix(baseline)  # (K, n)
    d = dk.mean(0)
    within = dk.var(0, ddof=1).mean()
    between = max(d.var(ddof=1) - within / len(dk), 0.0)
    return {"n": d.size, "diff": float(d.mean()), "between": between, "within": within}


def avg_mdd(sets: list[dict], n_of, k: int) -> float:
    """MDD of the Avg over sets with ``n_of(set)`` prompts and ``k`` seeds for both runs."""
    var = sum((c["between"] + c["within"] / k) / n_of(c) for c in sets) / len(sets) ** 2
    return mdd_factor(0.95) * var ** 0.5


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", type=Path, help="the workflow's eval folder (one folder per run)")
    ap.add_argument("--baseline", default="sft")
    ap.add_argument("--data", type=Path, default=Path("results/data"), help="the prepared sets (their sizes)")
    args = ap.parse_args(argv)
    base_dir = args.eval_dir / args.baseline
    set_names = sorted(p.stem for p in base_dir.glob("*.json"))
    size = {s: sum(1 for _ in open(args.data / f"{s}.jsonl")) for s in set_names}
    k_now = len(json.loads((base_dir / f"{set_names[0]}.json").read_text())["seeds"])
    print(f"sets {', '.join(f'{s} ({size[s]})' for s in set_names)}; {k_now} seeds; baseline {args.baseline}")
    print(f"{'run':14s} {'diff':>7s} {'mdd now':>8s} {'all n':>7s} {'all n 2K':>9s} {'x gens':>7s}")
    for run_dir in sorted(p for p in args.eval_dir.iterdir() if p.is_dir() and p.name != args.baseline):
        if not all((run_dir / f"{s}.json").is_file() for s in set_names):
            continue
        if len(json.loads((run_dir / f"{set_names[0]}.json").read_text())["seeds"]) != k_now:
            continue  # a deterministic reference (the gold-copy run) has one seed
        sets = [components(json.loads((run_dir / f"{s}.json").read_text()),
                           json.loads((base_dir / f"{s}.json").read_text())) | {"size": size[s]} for s in set_names]
        diff = float(np.mean([c["diff"] for c in sets]))
        now = avg_mdd(sets, lambda c: c["n"], k_now)
        full = avg_mdd(sets, lambda c: c["size"], k_now)
        full2 = avg_mdd(sets, lambda c: c["size"], 2 * k_now)
        grow = (now / abs(diff)) ** 2 if diff else float("inf")  # se ~ 1/sqrt(generations) at fixed K/n ratio
        print(f"{run_dir.name:14s} {diff:+7.3f} {now:8.3f} {full:7.3f} {full2:9.3f} {grow:7.1f}")


if __name__ == "__main__":
    main()
