"""``dwakd.stats``: the paired bootstrap over prompts (seeds pooled) behind the significance table and markers."""

from __future__ import annotations

import numpy as np
import pytest

from dwakd import stats
from dwakd.errors import DataError
from dwakd.stats import (paired_bootstrap, paired_differences, p_value_two_sided, pooled_scores, resample_means,
                         set_rng)


def _result(scores_by_seed: dict[str, list[float]], ids=None) -> dict:
    n = len(next(iter(scores_by_seed.values())))
    return {"ids": ids or [f"p{i}" for i in range(n)],
            "seeds": {k: {"rougeL": float(np.mean(v)), "scores": v} for k, v in scores_by_seed.items()}}


def test_a_large_difference_is_significant_and_its_ci_covers_it():
    rng = np.random.default_rng(0)
    base = rng.normal(20, 5, 300)
    d = 5.0 + rng.normal(0, 1, 300)  # method = baseline + 5 ± 1 per prompt
    out = paired_bootstrap({"dolly": d}, resamples=2000, ci=0.95, seed=1)
    x = out.loc["dolly"]
    assert x.mean_diff == pytest.approx(d.mean())
    assert 4.7 < x.ci_low < x.mean_diff < x.ci_high < 5.3
    assert x.significant and x.p_value == 0.0
    # and through the eval JSONs: the baseline's own prompt noise cancels in the paired difference
    m, b = _result({"10": list(base + d)}), _result({"10": list(base)})
    assert paired_differences(m, b, "m.json", "b.json") == pytest.approx(d)


def test_identical_runs_give_a_ci_containing_zero_and_p_one():
    scores = {"10": [30.0, 10.0, 0.0, 55.0], "20": [20.0, 12.0, 3.0, 50.0]}
    d = paired_differences(_result(scores), _result(scores), "a.json", "b.json")
    out = paired_bootstrap({"dolly": d, "sni": d}, resamples=500)
    for s in ("dolly", "sni", "avg"):
        x = out.loc[s]
        assert x.mean_diff == 0.0 and x.ci_low <= 0.0 <= x.ci_high
        assert x.p_value == 1.0 and not x.significant


def test_avg_averages_the_per_set_resamples_drawn_independently_per_set():
    rng = np.random.default_rng(3)
    diffs = {"dolly": rng.normal(1.0, 2.0, 40), "sni": rng.normal(-0.5, 1.0, 25), "vicuna": rng.normal(0, 3, 10)}
    out = paired_bootstrap(diffs, resamples=3000, ci=0.9, seed=7)
    # observed: the mean of the per-set means (not the mean over all prompts pooled)
    assert out.loc["avg", "mean_diff"] == pytest.approx(np.mean([d.mean() for d in diffs.values()]))
    assert out.loc["avg", "mean_diff"] != pytest.approx(np.concatenate(list(diffs.values())).mean())
    # resamples: each set from its own generator, then averaged over sets
    boots = {s: resample_means(d, 3000, set_rng(7, s)) for s, d in diffs.items()}
    avg = np.mean(np.stack(list(boots.values())), axis=0)
    assert (out.loc["avg", "ci_low"], out.loc["avg", "ci_high"]) == pytest.approx(tuple(np.quantile(avg, [0.05, 0.95])))
    assert out.loc["dolly", "ci_low"] == pytest.approx(np.quantile(boots["dolly"], 0.05))
    assert out.loc["avg", "n_prompts"] == 75 and list(out.index) == ["dolly", "sni", "vicuna", "avg"]
    # a set's result does not depend on the other sets
    alone = paired_bootstrap({"sni": diffs["sni"]}, resamples=3000, ci=0.9, seed=7)
    assert alone.loc["sni"].to_dict() == out.loc["sni"].to_dict()


def test_seed_pooling_averages_each_prompt_over_the_runs_own_seeds():
    ids, x = pooled_scores(_result({"10": [1.0, 2.0, 3.0], "20": [3.0, 4.0, 11.0]}), "m.json")
    assert ids == ["p0", "p1", "p2"] and x == pytest.approx([2.0, 3.0, 7.0])
    # the two runs may have different seeds (the copy floor has one): each side is pooled over its own
    d = paired_differences(_result({"10": [1.0, 2.0, 3.0], "20": [3.0, 4.0, 11.0]}), _result({"copy": [0.0, 1.0, 2.0]}),
                           "m.json", "copy.json")
    assert d == pytest.approx([2.0, 2.0, 5.0])


def test_mismatched_prompt_ids_are_an_error_naming_both_files():
    a = _result({"10": [1.0, 2.0]}, ids=["dolly-0", "dolly-1"])
    b = _result({"10": [1.0, 2.0]}, ids=["dolly-0", "dolly-7"])
    with pytest.raises(DataError, match=r"eval/dwakd/dolly\.json: prompt ids do not match eval/sft/dolly\.json "
                                        r"\(first difference at position 1: 'dolly-1' vs 'dolly-7'\)"):
        paired_differences(a, b, "eval/dwakd/dolly.json", "eval/sft/dolly.json")
    c = _result({"10": [1.0, 2.0, 3.0]}, ids=["dolly-0", "dolly-1", "dolly-2"])
    with pytest.raises(DataError, match=r"a\.json: prompt ids do not match c\.json \(2 prompts vs 3\)"):
        paired_differences(a, c, "a.json", "c.json")
    bad = {"ids": ["x", "y"], "seeds": {"10": {"scores": [1.0]}}}
    with pytest.raises(DataError, match=r"bad\.json: seed 10: 1 per-prompt scores for 2 prompt ids"):
        pooled_scores(bad, "bad.json")


def test_p_value_counts_the_resamples_on_the_other_side_of_zero():
    r = np.array([-1.0, 1.0, 2.0, 3.0])
    assert p_value_two_sided(1.5, r) == 0.5  # 1 of 4 at or below 0, × 2
    assert p_value_two_sided(-1.5, -r) == 0.5
    assert p_value_two_sided(1.0, np.array([-1.0, 0.0, 1.0, 2.0])) == 1.0  # 2 × 2/4, and 0 counts
    assert p_value_two_sided(1.0, np.array([-1.0, -2.0, -3.0, 1.0])) == 1.0  # clipped
    assert p_value_two_sided(0.0, r) == 1.0


def test_results_are_reproducible_and_do_not_depend_on_the_chunk_size(monkeypatch):
    d = np.random.default_rng(5).normal(0.3, 1.0, 50)
    a = paired_bootstrap({"dolly": d}, resamples=1000, seed=11)
    assert a.equals(paired_bootstrap({"dolly": d}, resamples=1000, seed=11))
    assert not a.equals(paired_bootstrap({"dolly": d}, resamples=1000, seed=12))
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 7 * 50)  # 7 resamples per chunk
    assert a.equals(paired_bootstrap({"dolly": d}, resamples=1000, seed=11))


# ------------------------------------------------------------------------------------ bits per byte, mdd


def _bpb_result(bits: list[float], nbytes: list[int], ids=None) -> dict:
    return {"ids": ids or [f"p{i}" for i in range(len(bits))], "bpb_samples": {"bits": bits, "bytes": nbytes}}


def test_bpb_better_on_every_prompt_by_fixed_bits_is_significant_and_negative_identical_is_not():
    rng = np.random.default_rng(2)
    nbytes = list(rng.integers(20, 200, 80))
    base = list(2.0 * np.array(nbytes) + rng.normal(0, 30, 80))
    better = [b - 4.0 for b in base]  # 4 bits fewer on every prompt: lower bits per byte
    pair = stats.paired_bpb(_bpb_result(better, nbytes), _bpb_result(base, nbytes), "m.json", "b.json")
    assert pair.observed() == pytest.approx(-4.0 * 80 / sum(nbytes))
    out = paired_bootstrap({"dolly": pair, "sni": pair}, resamples=2000, seed=3)
    for s in ("dolly", "sni", "avg"):
        x = out.loc[s]
        assert x.mean_diff == pytest.approx(-4.0 * 80 / sum(nbytes))  # method − baseline: negative
        assert x.ci_low <= x.mean_diff <= x.ci_high < 0 and x.significant and x.p_value == 0.0
    same = stats.paired_bpb(_bpb_result(base, nbytes), _bpb_result(base, nbytes), "a.json", "b.json")
    x = paired_bootstrap({"dolly": same}, resamples=500).loc["dolly"]
    assert x.mean_diff == 0.0 and x.ci_low == x.ci_high == 0.0 and x.p_value == 1.0 and not x.significant
    # per-prompt noise with mean 0 (same bytes): the interval straddles 0
    noisy = stats.paired_bpb(_bpb_result([b + (3.0 if i % 2 else -3.0) for i, b in enumerate(base)], nbytes),
                             _bpb_result(base, nbytes), "n.json", "b.json")
    x = paired_bootstrap({"dolly": noisy}, resamples=2000).loc["dolly"]
    assert x.ci_low < 0 < x.ci_high and not x.significant


def test_bpb_resamples_the_same_prompts_as_rouge_and_reduces_to_it_with_one_byte_per_prompt():
    rng = np.random.default_rng(4)
    x_m, x_b = rng.normal(3, 2, 30), rng.normal(2, 2, 30)
    ones = np.ones(30)
    ratio = paired_bootstrap({"dolly": stats.RatioPair(x_m, ones, x_b, ones)}, resamples=1000, seed=9)
    mean = paired_bootstrap({"dolly": x_m - x_b}, resamples=1000, seed=9)
    for col in ("mean_diff", "ci_low", "ci_high", "p_value", "se", "mdd"):
        assert ratio.loc["dolly", col] == pytest.approx(mean.loc["dolly", col], abs=1e-9), col


def test_the_ratio_is_recomputed_per_resample_not_averaged_per_prompt():
    # prompt 0: 100 bits / 100 bytes (1 bpb), prompt 1: 1 bit / 1 byte ... for the method; the baseline 0 bits
    pair = stats.RatioPair(np.array([100.0, 3.0]), np.array([100.0, 1.0]), np.zeros(2), np.array([100.0, 1.0]))
    assert pair.observed() == pytest.approx(103 / 101)  # not the mean of the per-prompt ratios (2.0)
    b = stats.resample_ratio_differences(pair, 4000, set_rng(0, "x"))
    assert set(np.round(b, 6)) == {1.0, 3.0, round(103 / 101, 6)}  # {0,0}, {1,1}, {0,1} drawn


def test_minimum_detectable_difference_is_2_8_standard_errors():
    assert stats.mdd_factor(0.95) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert stats.mdd_factor(0.9) == pytest.approx(1.644854 + 0.841621, abs=1e-5)
    d = np.random.default_rng(6).normal(0.0, 4.0, 400)
    x = paired_bootstrap({"dolly": d}, resamples=4000, seed=1).loc["dolly"]
    assert x.se == pytest.approx(d.std(ddof=1) / np.sqrt(400), rel=0.1)  # the bootstrap SE of a mean
    assert x.mdd == pytest.approx(stats.mdd_factor(0.95) * x.se)
    # a true shift of about one mdd is detected; a shift of a fifth of it is not
    assert paired_bootstrap({"dolly": d - d.mean() + 1.2 * x.mdd}, resamples=2000).loc["dolly"].significant
    assert not paired_bootstrap({"dolly": d - d.mean() + 0.2 * x.mdd}, resamples=2000).loc["dolly"].significant


def test_missing_or_mismatched_bpb_samples_are_errors_naming_the_file():
    with pytest.raises(DataError, match=r"copy\.json: no per-prompt bits per byte \(bpb_samples\)"):
        stats.paired_bpb({"ids": ["a"]}, _bpb_result([1.0], [1]), "copy.json", "b.json")
    with pytest.raises(DataError, match=r"m\.json: bpb_samples: 1 bits and 2 byte counts for 2 prompt ids"):
        stats.paired_bpb({"ids": ["a", "b"], "bpb_samples": {"bits": [1.0], "bytes": [1, 2]}},
                         _bpb_result([1.0, 2.0], [1, 2], ids=["a", "b"]), "m.json", "b.json")
    with pytest.raises(DataError, match=r"m\.json: prompt ids do not match b\.json"):
        stats.paired_bpb(_bpb_result([1.0], [1], ids=["a"]), _bpb_result([1.0], [1], ids=["z"]), "m.json", "b.json")


def test_bpb_pairs_on_bpb_ids_when_present_and_on_ids_in_older_files():
    """``eval.bpb_limit``: bpb may cover other prompts (``bpb_ids``) than ROUGE-L (``ids``); an eval JSON written
    before ``bpb_ids`` existed has its bpb on ``ids``."""
    new = {"ids": ["a"], "bpb_ids": ["a", "b", "c"], "bpb_samples": {"bits": [1.0, 2.0, 3.0], "bytes": [1, 1, 1]}}
    old = _bpb_result([2.0, 2.0, 2.0], [1, 1, 1], ids=["a", "b", "c"])
    assert stats.bpb_ids(new) == ["a", "b", "c"] and stats.bpb_ids(old) == ["a", "b", "c"]
    pair = stats.paired_bpb(new, old, "new.json", "old.json")
    assert len(pair) == 3 and pair.observed() == pytest.approx(0.0)
    with pytest.raises(DataError, match=r"m\.json: bpb_samples: 3 bits and 3 byte counts for 1 prompt ids"):
        stats.paired_bpb({**new, "bpb_ids": ["a"]}, old, "m.json", "old.json")
    with pytest.raises(DataError, match=r"new\.json: prompt ids do not match short\.json \(3 prompts vs 1\)"):
        stats.paired_bpb(new, _bpb_result([1.0], [1], ids=["a"]), "new.json", "short.json")
