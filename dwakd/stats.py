"""Paired bootstrap over prompts: is a method's ROUGE-L different from a baseline's (seeds pooled)?

Notation, for one evaluation set s with prompts i = 1..n_s and a run evaluated with generation seeds
k = 1..K (K may differ between the two runs):

- seed pooling: the run's score of prompt i is its mean over the run's seeds, ``x_i = (1/K) Σ_k x_{k,i}``
  (``pooled_scores``; the eval JSON's ``seeds[k]["scores"]``, ROUGE-L F1 ×100 per prompt);
- paired difference: ``d_i = x_i(method) − x_i(baseline)``, same prompts in the same order
  (``paired_differences`` checks the eval JSONs' ``ids``);
- resample b = 1..B draws n_s prompt indices I_b1..I_bn_s uniformly with replacement and takes
  ``d*_b = (1/n_s) Σ_j d_{I_bj}`` (``resample_means``);
- Avg over the S sets: the sets are resampled independently and ``avg*_b = (1/S) Σ_s d*_{s,b}``; the
  observed Avg difference ``(1/S) Σ_s mean(d_s)`` equals the difference of the tables' Avg columns when
  both runs have every prompt for every seed;
- confidence interval: the percentile interval ``[q_{(1−c)/2}, q_{(1+c)/2}]`` of the B resample means
  (c = 0.95 by default);
- p-value (two-sided): twice the share of resample means on the other side of 0 from the observed mean
  (``≤ 0`` when it is > 0, ``≥ 0`` when it is < 0), clipped to 1; an observed mean of exactly 0 gives 1.

Each set's resample indices come from a numpy Generator seeded with ``(seed, crc32(set name))``, so a
set's result does not depend on which other sets or comparisons are computed, and every comparison on
that set uses the same resamples (common random numbers). Torch-free; numpy and pandas only.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from dwakd.errors import DataError

# how many resample indices are drawn at once (memory: 8 bytes each)
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class BootstrapConfig:
    """``report.bootstrap`` of config/config.yaml (the values there are the ones used)."""

    resamples: int = 10_000  # B
    ci: float = 0.95  # c, the confidence level of the percentile interval
    seed: int = 0  # seeds each set's numpy Generator together with the set's name


def pooled_scores(result: Mapping, source: str) -> tuple[list, np.ndarray]:
    """``(ids, x)``: the prompt ids and each prompt's score averaged over the run's seeds, shape (n,).

    ``result`` is an eval JSON (``ids``; ``seeds[<seed>]["scores"]``, one score per prompt); ``source``
    names it in errors (the file's path)."""
    ids = list(result.get("ids") or [])
    seeds = result.get("seeds") or {}
    if not seeds:
        raise DataError(f"{source}: no seeds with per-prompt scores")
    rows = []
    for k in sorted(seeds):  # one summation order whatever the file's key order: identical runs differ by exactly 0
        scores = seeds[k].get("scores")
        if scores is None or len(scores) != len(ids):
            n = "no" if scores is None else len(scores)
            raise DataError(f"{source}: seed {k}: {n} per-prompt scores for {len(ids)} prompt ids")
        rows.append(np.asarray(scores, dtype=float))
    if not ids:
        raise DataError(f"{source}: no prompts")
    return ids, np.mean(np.stack(rows), axis=0)


def paired_differences(method: Mapping, baseline: Mapping, method_source: str, baseline_source: str) -> np.ndarray:
    """``d = x(method) − x(baseline)``, shape (n,), from two eval JSONs of the same set (seeds pooled).

    Raises ``DataError`` naming both files when their prompt ids differ (count, or the first position)."""
    ids_m, x_m = pooled_scores(method, method_source)
    ids_b, x_b = pooled_scores(baseline, baseline_source)
    if ids_m != ids_b:
        if len(ids_m) != len(ids_b):
            why = f"{len(ids_m)} prompts vs {len(ids_b)}"
        else:
            i = next(j for j, (a, b) in enumerate(zip(ids_m, ids_b)) if a != b)
            why = f"first difference at position {i}: {ids_m[i]!r} vs {ids_b[i]!r}"
        raise DataError(f"{method_source}: prompt ids do not match {baseline_source} ({why}); a paired "
                        f"comparison needs the same prompts in the same order")
    return x_m - x_b


def resample_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples of ``d`` (shape (n,)) drawn with replacement, shape (B,).

    Indices are drawn in chunks of at most ~4M elements (rows of n), so memory stays bounded for large sets;
    the chunks come from one stream of the generator, so the result does not depend on the chunk size."""
    d = np.asarray(d, dtype=float)
    n = d.shape[0]
    if n == 0:
        raise ValueError("resample_means: empty array")
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // n))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = d[idx].mean(axis=1)
    return out


def percentile_ci(resampled: np.ndarray, ci: float) -> tuple[float, float]:
    """The percentile interval ``(q_{(1−ci)/2}, q_{(1+ci)/2})`` of the resample means."""
    lo, hi = np.quantile(resampled, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def p_value_two_sided(observed: float, resampled: np.ndarray) -> float:
    """2 × the share of resample means on the other side of 0 from ``observed`` (inclusive), clipped to 1."""
    if observed > 0:
        share = np.mean(resampled <= 0)
    elif observed < 0:
        share = np.mean(resampled >= 0)
    else:
        return 1.0
    return float(min(1.0, 2.0 * share))


def set_rng(seed: int, set_name: str) -> np.random.Generator:
    """The set's generator: seeded with ``(seed, crc32(set_name))``."""
    return np.random.default_rng([seed, zlib.crc32(set_name.encode())])


def paired_bootstrap(diffs: Mapping[str, np.ndarray], resamples: int = 10_000, ci: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """The paired bootstrap of per-prompt differences, per set and for the average over sets.

    ``diffs``: set name → d, shape (n_s,) (``paired_differences``). Returns one row per set, in ``diffs``'
    order, then ``avg`` (sets resampled independently, resample means averaged over sets), with the columns
    ``mean_diff``, ``ci_low``, ``ci_high``, ``p_value``, ``significant`` (the CI excludes 0) and
    ``n_prompts`` (``avg``: the total)."""
    if not diffs:
        raise ValueError("paired_bootstrap: no sets")
    if not 0 < ci < 1:
        raise ValueError(f"paired_bootstrap: ci={ci} is not in (0, 1)")
    rows, boots, means = {}, [], []
    for name, d in diffs.items():
        d = np.asarray(d, dtype=float)
        b = resample_means(d, resamples, set_rng(seed, name))
        m = float(d.mean())
        rows[name] = (m, *percentile_ci(b, ci), p_value_two_sided(m, b), d.shape[0])
        boots.append(b)
        means.append(m)
    avg_b = np.mean(np.stack(boots), axis=0)
    avg = float(np.mean(means))
    rows["avg"] = (avg, *percentile_ci(avg_b, ci), p_value_two_sided(avg, avg_b),
                   sum(r[4] for r in rows.values()))
    out = pd.DataFrame.from_dict(rows, orient="index",
                                 columns=["mean_diff", "ci_low", "ci_high", "p_value", "n_prompts"])
    out.index.name = "set"
    out.insert(4, "significant", (out.ci_low > 0) | (out.ci_high < 0))
    return out
