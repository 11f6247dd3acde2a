"""The benchmark scripts run (on the tiny pair); their numbers are not asserted, only their shape."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_time_reports_every_run_relative_to_sft(tiny_pair, tmp_path):
    out = tmp_path / "steps.json"
    rc = _load("step_time").main(["--profile", "tiny", "--models", str(tiny_pair), "--runs", "dskd_cma", "mined",
                                  "--batch", "4", "--threads", "1", "--warmup", "0", "--repeat", "2",
                                  "--uncached-pairs", "--out", str(out)])
    assert rc == 0
    rows = {r["run"]: r for r in json.loads(out.read_text())["rows"]}
    # SFT is always measured (the baseline); MinED caches its alignments, so it also runs without the cache
    assert list(rows) == ["sft", "dskd_cma", "mined", "mined:per_step_pairs"]
    assert rows["mined:per_step_pairs"]["method"] == "mined" and rows["mined:per_step_pairs"]["peak_mem_mb"] is None
    assert rows["sft"]["vs_sft"] == 1.0
    for r in rows.values():
        assert len(r["all_s"]) == 2 and r["step_s"] == min(r["all_s"]) > 0
        assert (r["peak_mem_mb"] is None) == r["run"].endswith(":per_step_pairs")  # CPU: a child per configured run


def test_alignment_cache_times_both_ways_and_checks_the_pairs(tiny_pair, tmp_path):
    out = tmp_path / "align.json"
    rc = _load("alignment_cache").main(["--profile", "tiny", "--models", str(tiny_pair), "--batch", "4",
                                        "--threads", "1", "--repeat", "1", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["run"]) for r in rows] == [(b, m) for b in ("4 Dolly training records",
                                                                         "4 × 512 (paper_shapes)")
                                                      for m in ("mined", "dskd_eta")]
    for r in rows:
        assert r["pairs"] > 0 and r["per_step_ms"] > 0 and r["cached_ms"] > 0
    with pytest.raises(SystemExit, match="dskd_cma.*caches no token alignments"):
        _load("alignment_cache").main(["--profile", "tiny", "--models", str(tiny_pair), "--runs", "dskd_cma",
                                       "--repeat", "1"])


def test_workflow_times_step_summary_reads_the_training_logs(tmp_path):
    for run, times in {"sft": [1.0, 2.0, 3.0], "uld": [4.0, 5.0, 6.0, 100.0]}.items():
        d = tmp_path / "runs" / run
        d.mkdir(parents=True)
        lines = [{"step": i + 1, "loss": 1.0, "step_time_s": t, "tokens_per_s": 1.0, "peak_mem_mb": 10.0 * (i + 1)}
                 for i, t in enumerate(times)]
        lines.append({"step": len(times), "epoch": 0, "dev_last": None})  # an end-of-epoch line has no step time
        (d / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = _load("workflow_times").step_times(tmp_path)
    assert s["sft"] == {"steps": 3, "median": 2.0, "total": 6.0, "peak_mb": 30.0}
    assert s["uld"]["median"] == 5.5 and s["uld"]["steps"] == 4 and s["uld"]["peak_mb"] == 40.0


def test_paper_shapes_runs_each_method_in_its_own_process_relative_to_dskd_cma(tmp_path):
    """``--small``: the published pair's architectures at toy sizes; one child per method, ratios to DSKD-CMA."""
    out = tmp_path / "shapes.json"
    rc = _load("paper_shapes").main(["--small", "--batch", "2", "--seq", "48", "--threads", "1",
                                     "--grad-ckpt", "--methods", "sft", "dskd_cma", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == ["sft", "dskd_cma"]
    assert rows["dskd_cma"]["step_mem_vs_cma"] == 1.0 and rows["dskd_cma"]["time_vs_cma"] == 1.0
    assert rows["dskd_cma"]["teacher"]["vocab_size"] > rows["dskd_cma"]["student"]["vocab_size"]
    assert rows["dskd_cma"]["student_tokens"] == [2, 48] == rows["dskd_cma"]["teacher_tokens"]
    for r in rows.values():
        assert r["loss_backward_s"] > 0 and r["step_peak_gib"] >= 0 and r["loss_peak_gib"] >= 0
        assert r["code"] == str(ROOT)  # this checkout's code (``--code`` points elsewhere)
        assert r["malloc_mmap_threshold"] == str(128 * 1024)  # the children map their large blocks on their own


def _eval_json(scores: "np.ndarray") -> dict:
    """An eval JSON with per-prompt ROUGE-L of shape (K seeds, n prompts)."""
    return {"ids": [f"p{i}" for i in range(scores.shape[1])],
            "seeds": {str(10 * (k + 1)): {"scores": scores[k].tolist()} for k in range(scores.shape[0])}}


def test_rouge_power_recovers_variance_components_and_the_bootstrap_mdd():
    import numpy as np

    from dwakd.stats import paired_bootstrap, paired_differences

    rp = _load("rouge_power")
    rng = np.random.default_rng(0)
    k, n, between_sd, within_sd = 3, 4000, 2.0, 6.0
    prompt = rng.normal(10, 5, n)  # what both runs share per prompt
    effect = 0.5 + rng.normal(0, between_sd, n)  # the true per-prompt difference
    shared = rng.normal(0, 4, (k, n))  # common random numbers: one seed's noise, shared by both runs
    base = prompt + shared + rng.normal(0, within_sd / 2 ** 0.5, (k, n))
    method = prompt + effect + shared + rng.normal(0, within_sd / 2 ** 0.5, (k, n))
    c = rp.components(_eval_json(method), _eval_json(base))
    assert abs(c["diff"] - 0.5) < 0.15
    assert abs(c["between"] - between_sd ** 2) / between_sd ** 2 < 0.15  # the shared noise is not counted
    assert abs(c["within"] - within_sd ** 2) / within_sd ** 2 < 0.05
    mdd = rp.avg_mdd([c], lambda c: c["n"], k)
    boot = paired_bootstrap({"s": paired_differences(_eval_json(method), _eval_json(base), "m", "b")},
                            resamples=2000).loc["avg", "mdd"]
    assert abs(mdd - boot) / boot < 0.1
    assert rp.avg_mdd([c], lambda c: 4 * c["n"], k) == pytest.approx(mdd / 2)  # 4x the prompts: half the MDD


def test_rouge_power_refuses_runs_sampled_with_different_seeds():
    import numpy as np

    rp = _load("rouge_power")
    a = _eval_json(np.zeros((2, 5)))
    b = {"ids": a["ids"], "seeds": {"1": {"scores": [0.0] * 5}, "2": {"scores": [0.0] * 5}}}
    with pytest.raises(ValueError, match="different seeds"):
        rp.components(a, b)
