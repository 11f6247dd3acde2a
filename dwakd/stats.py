"""Paired bootstrap over prompts: is a method's ROUGE-L (seeds pooled) or bits per byte different from a
baseline's?

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
  (``≤ 0`` when it is > 0, ``≥ 0`` when it is < 0), clipped to 1; an observed mean of exactly 0 gives 1;
- bits per byte (``RatioPair``, from the eval JSONs' ``bpb_samples``: each prompt's response bits b_i and
  bytes n_i under teacher forcing, deterministic, so no seeds; its prompts are the eval JSON's ``bpb_ids``,
  usually the whole set, more than ROUGE-L's ``ids``): a set's bpb is ``Σ_i b_i / Σ_i n_i``, and
  the statistic is ``bpb(method) − bpb(baseline)`` (lower bpb is better: a negative difference favours the
  method); resample b recomputes both ratios over the same drawn prompts,
  ``d*_b = Σ_j b^m_{I_bj} / Σ_j n^m_{I_bj} − Σ_j b^b_{I_bj} / Σ_j n^b_{I_bj}``, and everything else (Avg, CI,
  p-value) is as above;
- standard error and minimum detectable difference: ``se`` is the standard deviation of the B resample
  statistics (ddof 1) and ``mdd = (z_{1−α/2} + z_{power}) · se`` with α = 1 − c and power 0.8 (c = 0.95:
  ``(1.960 + 0.842) · se = 2.80 · se``), the true difference a two-sided test at level α detects with 80 %
  probability on this many prompts (normal approximation).

Each set's resample indices come from a numpy Generator seeded with ``(seed, crc32(set name))``, so a
set's result does not depend on which other sets or comparisons are computed, and every comparison on
that set, ROUGE-L or bpb, uses the same resamples (common random numbers; ROUGE-L and bpb draw the same
prompts when they cover the same number, else each its own). Torch-free; numpy and pandas only.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping

import numpy as np
import pandas as pd

from dwakd.errors import DataError

# how many resample indices are drawn at once (memory: 8 bytes each)
_CHUNK_ELEMENTS = 4_000_000
#: the power of the minimum detectable difference (``mdd``)
MDD_POWER = 0.8


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
    _check_ids(ids_m, ids_b, method_source, baseline_source)
    return x_m - x_b


@dataclass(frozen=True)
class RatioPair:
    """One set's per-prompt bits and bytes of a method (``bits_m``, ``bytes_m``) and of a baseline (``bits_b``,
    ``bytes_b``), each shape (n,), same prompts in the same order: the statistic is the difference of the two
    bits per byte, ``Σ bits_m / Σ bytes_m − Σ bits_b / Σ bytes_b``."""

    bits_m: np.ndarray
    bytes_m: np.ndarray
    bits_b: np.ndarray
    bytes_b: np.ndarray

    def __len__(self) -> int:
        return int(np.shape(self.bits_m)[0])

    def observed(self) -> float:
        return _ratio(self.bits_m, self.bytes_m) - _ratio(self.bits_b, self.bytes_b)


def _ratio(num, den) -> float:
    return float(np.sum(num) / max(float(np.sum(den)), 1.0))


def bpb_ids(result: Mapping) -> list:
    """The prompt ids of an eval JSON's bits per byte: ``bpb_ids`` (bpb may cover more prompts than ROUGE-L,
    ``eval.bpb_limit``), or ``ids`` in an eval JSON written before they were stored separately."""
    ids = result.get("bpb_ids")
    return list((result.get("ids") if ids is None else ids) or [])


def bpb_samples(result: Mapping, source: str) -> tuple[list, np.ndarray, np.ndarray]:
    """``(ids, bits, bytes)`` of an eval JSON's ``bpb_samples`` (each prompt's response bits and bytes, in the
    order of ``bpb_ids``, or of ``ids`` in older files); ``DataError`` when they are missing (an eval JSON
    written before they were stored, or the copy floor, which has no bpb) or do not match the ids."""
    ids = bpb_ids(result)
    smp = result.get("bpb_samples")
    if not smp:
        raise DataError(f"{source}: no per-prompt bits per byte (bpb_samples); re-run dwakd eval")
    bits, nbytes = smp.get("bits"), smp.get("bytes")
    if bits is None or nbytes is None or len(bits) != len(ids) or len(nbytes) != len(ids):
        raise DataError(f"{source}: bpb_samples: {len(bits or [])} bits and {len(nbytes or [])} byte counts for "
                        f"{len(ids)} prompt ids")
    if not ids:
        raise DataError(f"{source}: no prompts")
    return ids, np.asarray(bits, dtype=float), np.asarray(nbytes, dtype=float)


def has_bpb_samples(result: Mapping) -> bool:
    """Whether an eval JSON holds per-prompt bits and bytes (``bpb_samples``)."""
    return bool(result.get("bpb_samples"))


def _check_ids(ids_m: list, ids_b: list, method_source: str, baseline_source: str) -> None:
    if ids_m != ids_b:
        if len(ids_m) != len(ids_b):
            why = f"{len(ids_m)} prompts vs {len(ids_b)}"
        else:
            i = next(j for j, (a, b) in enumerate(zip(ids_m, ids_b)) if a != b)
            why = f"first difference at position {i}: {ids_m[i]!r} vs {ids_b[i]!r}"
        raise DataError(f"{method_source}: prompt ids do not match {baseline_source} ({why}); a paired "
                        f"comparison needs the same prompts in the same order")


def paired_bpb(method: Mapping, baseline: Mapping, method_source: str, baseline_source: str) -> RatioPair:
    """The ``RatioPair`` of two eval JSONs of the same set (``bpb_samples``; prompt ids checked as in
    ``paired_differences``)."""
    ids_m, bits_m, bytes_m = bpb_samples(method, method_source)
    ids_b, bits_b, bytes_b = bpb_samples(baseline, baseline_source)
    _check_ids(ids_m, ids_b, method_source, baseline_source)
    return RatioPair(bits_m, bytes_m, bits_b, bytes_b)


def _index_chunks(n: int, n_resamples: int, rng: np.random.Generator):
    """``(start, stop, idx)``: the resample indices, shape (stop − start, n), drawn in chunks of at most ~4M
    elements, so memory stays bounded for large sets; the chunks come from one stream of the generator, so the
    indices do not depend on the chunk size."""
    if n == 0:
        raise ValueError("resampling an empty set")
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // n))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        yield start, stop, rng.integers(0, n, size=(stop - start, n))


def resample_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples of ``d`` (shape (n,)) drawn with replacement, shape (B,)
    (``_index_chunks``: the result does not depend on the chunk size)."""
    d = np.asarray(d, dtype=float)
    if d.shape[0] == 0:
        raise ValueError("resample_means: empty array")
    out = np.empty(n_resamples)
    for start, stop, idx in _index_chunks(d.shape[0], n_resamples, rng):
        out[start:stop] = d[idx].mean(axis=1)
    return out


def resample_ratio_differences(pair: RatioPair, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The bpb difference of ``pair`` recomputed on ``n_resamples`` resamples of its prompts, shape (B,); with
    the same generator state the drawn prompts are ``resample_means``' (common random numbers)."""
    arrays = [np.asarray(a, dtype=float) for a in (pair.bits_m, pair.bytes_m, pair.bits_b, pair.bytes_b)]
    out = np.empty(n_resamples)
    for start, stop, idx in _index_chunks(len(pair), n_resamples, rng):
        bm, nm, bb, nb = (a[idx].sum(axis=1) for a in arrays)
        out[start:stop] = bm / np.maximum(nm, 1.0) - bb / np.maximum(nb, 1.0)
    return out


def mdd_factor(ci: float, power: float = MDD_POWER) -> float:
    """``z_{1−α/2} + z_{power}`` with α = 1 − ``ci``: the minimum detectable difference in standard errors
    (ci 0.95, power 0.8: 2.80)."""
    z = NormalDist().inv_cdf
    return z(1 - (1 - ci) / 2) + z(power)


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


def paired_bootstrap(diffs: Mapping[str, np.ndarray | RatioPair], resamples: int = 10_000, ci: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """The paired bootstrap of per-prompt differences, per set and for the average over sets.

    ``diffs``: set name → d, shape (n_s,) (``paired_differences``: the statistic is the mean of d), or a
    ``RatioPair`` (``paired_bpb``: the difference of two bits per byte). Returns one row per set, in
    ``diffs``' order, then ``avg`` (sets resampled independently, resample statistics averaged over sets),
    with the columns ``mean_diff`` (the observed statistic), ``ci_low``, ``ci_high``, ``p_value``,
    ``significant`` (the CI excludes 0), ``se`` (std of the resample statistics), ``mdd`` (``mdd_factor(ci)``
    × se) and ``n_prompts`` (``avg``: the total)."""
    if not diffs:
        raise ValueError("paired_bootstrap: no sets")
    if not 0 < ci < 1:
        raise ValueError(f"paired_bootstrap: ci={ci} is not in (0, 1)")
    k = mdd_factor(ci)

    def row(m: float, b: np.ndarray, n: int) -> tuple:
        se = float(np.std(b, ddof=1)) if b.shape[0] > 1 else 0.0
        return (m, *percentile_ci(b, ci), p_value_two_sided(m, b), se, k * se, n)

    rows, boots, means = {}, [], []
    for name, d in diffs.items():
        if isinstance(d, RatioPair):
            b = resample_ratio_differences(d, resamples, set_rng(seed, name))
            m, n = d.observed(), len(d)
        else:
            d = np.asarray(d, dtype=float)
            b = resample_means(d, resamples, set_rng(seed, name))
            m, n = float(d.mean()), d.shape[0]
        rows[name] = row(m, b, n)
        boots.append(b)
        means.append(m)
    avg_b = np.mean(np.stack(boots), axis=0)
    rows["avg"] = row(float(np.mean(means)), avg_b, sum(r[-1] for r in rows.values()))
    out = pd.DataFrame.from_dict(rows, orient="index",
                                 columns=["mean_diff", "ci_low", "ci_high", "p_value", "se", "mdd", "n_prompts"])
    out.index.name = "set"
    out.insert(4, "significant", (out.ci_low > 0) | (out.ci_high < 0))
    return out
