"""``dwakd report`` / ``significance`` / ``efficiency``: the main and ablation tables (mean ± std over seeds,
significance markers, published numbers beside ours), the significance table, the training-cost table and the
loss curves, from synthetic evaluation JSONs and training logs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from dwakd.cli import main
from dwakd.efficiency import curves_frame, efficiency_frame, read_train_log
from dwakd.errors import DataError
from dwakd.report import markdown_html
from dwakd.stats import mdd_factor

N = 6  # prompts per set
PATTERN = [((7 * i) % 11) - 5.0 for i in range(N)]  # per-prompt difficulty shared by every run
ALTERNATING = [1.0 if i % 2 == 0 else -1.0 for i in range(N)]  # prompt noise with mean 0
BASE = {"copy": 20.0, "teacher": 10.0, "sft": 5.0, "dskd_cma": 5.0, "abl_a": 6.0, "abl_b": 7.0, "dwakd": 8.0}
PAPER_PAIR = "qwen1.5-1.8b_gpt2-120m"


def _eval(path, per_seed: dict[str, float], bpb: float | None, noise=None, ids=None):
    """An eval JSON: seed k's ROUGE-L is ``per_seed[k]``, its per-prompt scores that value + PATTERN + noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = noise or [0.0] * N
    vals = list(per_seed.values())
    summary = {"rougeL": {"mean": sum(vals) / len(vals), "std": pd.Series(vals).std() if len(vals) > 1 else 0.0,
                          "n": len(vals)}, "bpb": bpb}
    seeds = {k: {"rougeL": v, "scores": [v + p + e for p, e in zip(PATTERN, noise)], "generations": [""] * N}
             for k, v in per_seed.items()}
    path.write_text(json.dumps({"ids": ids or [f"{path.stem}-{i}" for i in range(N)], "summary": summary,
                                "seeds": seeds}))


def _evals(root, sets, runs=BASE):
    for run, base in runs.items():
        for k, s in enumerate(sets):
            seeds = {"copy": base + k} if run == "copy" else {"10": base + k, "20": base + k + 2.0}
            # DSKD-CMA and w/ A differ from SFT by ±1 per prompt (mean 0): not significant
            noise = ALTERNATING if run in ("dskd_cma", "abl_a") else None
            _eval(root / "eval" / run / f"{s}.json", seeds, None if run == "copy" else 2.0 + k, noise)


def _cfg(root, sets, main_table, ablation_table, pair=None, name="cfg.yaml"):
    prof = {"eval": {"sets": sets}, "main_table": main_table, "ablation_table": ablation_table,
            "ablation_in_all": True}
    cfg = {"profiles": {"mini": prof},
           "runs": {"abl_a": {"method": "sft", "title": "w/ A"}, "abl_b": {"method": "sft", "title": "w/ B"}}}
    if pair:
        prof["pairs"] = [pair]
        cfg["pairs"] = {pair: {"teacher": {"arch": "qwen2"}, "student": {"arch": "gpt2"}}}
    (root / name).write_text(yaml.safe_dump(cfg))
    return root / name


def _report(root, cfg, *extra):
    return main(["report", "--config", "config/config.yaml", "--config", str(cfg), "--eval-dir", str(root / "eval"),
                 "--out", str(root / "tables"), *extra])


@pytest.fixture
def evals(tmp_path):
    sets = ["dolly", "sni"]
    _evals(tmp_path, sets)
    return tmp_path, _cfg(tmp_path, sets, ["sft", "dskd_cma"], ["abl_b", "abl_a"])


def _rows(md: str, section: int = 0) -> dict[str, list[str]]:
    """Method → cells of the ``section``-th table of a Markdown file."""
    part = md.split("## ")[1 + section]
    return {c[1].strip(): [x.strip() for x in c[2:-1]] for c in (ln.split("|") for ln in part.splitlines()
                                                                   if ln.startswith("| "))
            if c[1].strip() not in ("", "Method")}


# ------------------------------------------------------------------------------------ main / ablation


def test_ablation_table_lists_its_runs_in_order_without_floor_or_teacher(evals):
    root, cfg = evals
    assert _report(root, cfg, "--table", "ablation") == 0
    md = (root / "tables" / "ablation.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| w/")]
    assert [r.split("|")[1].strip() for r in rows[:2]] == ["w/ B", "w/ A"]
    assert "Teacher" not in md and "Copy" not in md
    # w/ B: Dolly seeds 7, 9 -> 8.00 ± 1.41; S-NI 8, 10 -> 9.00 ± 1.41; Avg per seed 7.5, 9.5 -> 8.50 ± 1.41
    assert "8.00 ± 1.41" in rows[0] and "9.00 ± 1.41" in rows[0] and "8.50 ± 1.41" in rows[0]
    # neither SFT nor DSKD-CMA is in this table: no markers, no legend
    assert "°" not in md and "†" not in md and "not significantly" not in md
    for ext in ("csv", "tex"):
        assert (root / "tables" / f"ablation.{ext}").exists()


def test_main_table_keeps_floor_and_teacher_and_an_undefined_table_is_an_error(evals, tmp_path, capsys):
    root, cfg = evals
    assert _report(root, cfg) == 0
    md = (root / "tables" / "main.md").read_text()
    assert md.index("Copy instruction+input") < md.index("Teacher") < md.index("| SFT")
    no_abl = tmp_path / "no_abl.yaml"
    no_abl.write_text(yaml.safe_dump({"profiles": {"mini": {"ablation_table": []}}}))
    rc = main(["report", "--config", "config/config.yaml", "--config", str(no_abl), "--eval-dir",
               str(root / "eval"), "--out", str(root / "t2"), "--table", "ablation"])
    assert rc == 2
    assert "--table ablation: profile 'mini' defines the tables ['main', 'on_policy']" in capsys.readouterr().err
    assert not (root / "t2").exists()


def test_markers_flag_the_cells_not_significantly_different_from_sft_and_dskd_cma(evals):
    root, cfg = evals
    assert _report(root, cfg) == 0
    md = (root / "tables" / "main.md").read_text()
    rows = _rows(md)
    # teacher: +5 on every prompt vs SFT, +5 ± 1 vs DSKD-CMA: significant, no marker
    assert rows["Teacher"] == ["11.00 ± 1.41", "12.00 ± 1.41", "11.50 ± 1.41"]
    # DSKD-CMA differs from SFT by ±1 per prompt (mean 0): ° on every cell, and SFT gets † the other way round
    assert all(c.endswith("°") and "†" not in c for c in rows["DSKD-CMA"])
    assert all(c.endswith("†") and "°" not in c for c in rows["SFT"])
    assert rows["Copy instruction+input"] == ["20.00", "21.00", "20.50"]  # the floor is not compared
    assert "° not significantly different from SFT (paired bootstrap over prompts" in md
    assert "† not significantly different from DSKD-CMA" in md and "95% CI" in md and "10,000 resamples" in md
    # the markers are on the ROUGE-L table only
    assert "°" not in md.split("## ")[2]
    tex = (root / "tables" / "main.tex").read_text()
    assert r"$\pm$" in tex and r"$^{\circ}$" in tex and r"$^{\dagger}$" in tex and "±" not in tex
    # no published numbers for the mini pair: the CSV keeps its columns
    csv = pd.read_csv(root / "tables" / "main.csv")
    assert list(csv.columns) == ["run", "method", "set", "set_title", "metric", "mean", "std", "n_seeds", "n_samples"]
    assert "Published" not in md


def test_unni_is_a_column_titled_from_the_config(tmp_path):
    sets = ["dolly", "sni", "unni"]
    _evals(tmp_path, sets)
    cfg = _cfg(tmp_path, sets, ["sft"], [])
    assert _report(tmp_path, cfg) == 0
    md = (tmp_path / "tables" / "main.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| Method"))
    assert [c.strip() for c in header.split("|")[1:-1]] == ["Method", "Dolly", "S-NI", "UnNI", "Avg"]
    # SFT: seeds 5 + k and 7 + k on set k; Avg per seed (5+6+7)/3 = 6 and (7+8+9)/3 = 8 -> 7.00 ± 1.41
    assert _rows(md)["SFT"] == ["6.00 ± 1.41", "7.00 ± 1.41", "8.00 ± 1.41", "7.00 ± 1.41"]


def test_mismatched_prompt_ids_fail_the_report_naming_the_file(evals, capsys):
    root, cfg = evals
    f = root / "eval" / "dskd_cma" / "sni.json"
    d = json.loads(f.read_text())
    d["ids"] = list(reversed(d["ids"]))
    f.write_text(json.dumps(d))
    assert _report(root, cfg) == 2
    err = capsys.readouterr().err
    assert f"{f}: prompt ids do not match {root / 'eval' / 'sft' / 'sni.json'}" in err


# ------------------------------------------------------------------------------------ published numbers


def test_published_numbers_beside_ours_for_a_paper_pair(tmp_path):
    sets = ["dolly", "selfinst", "vicuna", "sni"]
    _evals(tmp_path, sets)
    cfg = _cfg(tmp_path, sets, ["sft", "dskd_cma", "dwakd"], ["dskd_cma", "dwakd_w_ew", "dwakd"], pair=PAPER_PAIR)
    _evals(tmp_path, sets, {"dwakd_w_ew": 9.0})
    assert _report(tmp_path, cfg) == 0
    md = (tmp_path / "tables" / "main.md").read_text()
    assert "## Published (paper) and difference: ROUGE-L, Qwen1.5-1.8B → GPT2-120M" in md
    pub = _rows(md, 2)
    # SFT ours: Dolly 6.00 (seeds 5, 7), published 23.78 (DWA-KD Table 1) -> -17.78; Avg 7.50 vs 13.85
    lines = [ln for ln in md.split("## ")[3].splitlines() if ln.startswith("|")]
    sft = lines.index(next(ln for ln in lines if ln.startswith("| SFT")))
    assert [c.strip() for c in lines[sft].split("|")[2:-1]] == ["ours", "6.00", "7.00", "8.00", "9.00", "7.50"]
    assert [c.strip() for c in lines[sft + 1].split("|")[2:-1]] == ["published", "23.78", "6.78", "17.04", "7.81",
                                                                  "13.85"]
    assert [c.strip() for c in lines[sft + 2].split("|")[2:-1]] == ["ours − published", "-17.78", "+0.22", "-9.04",
                                                                  "+1.19", "-6.35"]
    assert "Teacher" in pub and "Copy instruction+input" not in pub  # no published floor
    assert "Published: DWA-KD (arXiv 2602.21669), Table 1" in md
    csv = pd.read_csv(tmp_path / "tables" / "main.csv")
    x = csv[(csv.run == "sft") & (csv.metric == "rougeL")].set_index("set")
    assert x.at["dolly", "published"] == 23.78 and x.at["dolly", "diff"] == pytest.approx(6.0 - 23.78)
    assert x.at["avg", "published"] == 13.85 and x.at["avg", "diff"] == pytest.approx(7.5 - 13.85)
    assert x.at["dolly", "published_source"] == "DWA-KD (arXiv 2602.21669), Table 1"
    assert csv[csv.run == "copy"].published.isna().all() and csv[csv.metric == "bpb"].published.isna().all()
    # the ablation table: Table 3's averages only for the ablation rows
    assert _report(tmp_path, cfg, "--table", "ablation") == 0
    abl = pd.read_csv(tmp_path / "tables" / "ablation.csv")
    w = abl[(abl.run == "dwakd_w_ew") & (abl.metric == "rougeL")].set_index("set")
    assert w.published.dropna().to_dict() == {"avg": 17.23} and w.at["avg", "diff"] == pytest.approx(11.5 - 17.23)
    amd = (tmp_path / "tables" / "ablation.md").read_text()
    assert "Table 3 (ablation, Avg only)" in amd and "Table 1" in amd
    assert r"$-$" in (tmp_path / "tables" / "main.tex").read_text()


def test_published_avg_is_compared_over_its_own_sets_when_the_profile_adds_unni(tmp_path):
    sets = ["dolly", "selfinst", "vicuna", "sni", "unni"]
    _evals(tmp_path, sets)
    cfg = _cfg(tmp_path, sets, ["sft"], [], pair=PAPER_PAIR)
    assert _report(tmp_path, cfg) == 0
    csv = pd.read_csv(tmp_path / "tables" / "main.csv")
    x = csv[(csv.run == "sft") & (csv.metric == "rougeL")].set_index("set")
    assert pd.isna(x.at["avg", "published"]) and pd.isna(x.at["unni", "published"])  # UnNI has no published value
    # ours over Dolly, SelfInst, VicunaEval, S-NI: per seed 6.5 and 8.5 -> 7.5, against the published 13.85
    assert x.at["avg_published", "mean"] == pytest.approx(7.5) and x.at["avg_published", "published"] == 13.85
    assert x.at["avg", "mean"] == pytest.approx(8.0)
    md = (tmp_path / "tables" / "main.md").read_text()
    assert "Avg (Dolly, SelfInst, VicunaEval, S-NI)" in md.split("## ")[3]


# ------------------------------------------------------------------------------------ significance


def test_significance_table_against_sft_and_dskd_cma(evals):
    root, cfg = evals
    assert main(["significance", "--config", "config/config.yaml", "--config", str(cfg), "--eval-dir",
                 str(root / "eval"), "--out", str(root / "tables")]) == 0
    csv = pd.read_csv(root / "tables" / "significance.csv")
    assert list(csv.columns) == ["run", "method", "baseline", "baseline_method", "metric", "set", "set_title",
                                 "mean_diff", "ci_low", "ci_high", "p_value", "significant", "se", "mdd",
                                 "n_prompts", "n_seeds", "n_seeds_baseline", "resamples", "ci"]
    assert set(csv.metric) == {"rougeL"}  # these eval JSONs hold no per-prompt bits: no bpb comparison
    # the teacher and every run of both tables (main, then the ablation's), against each baseline but itself
    assert list(dict.fromkeys(csv[csv.baseline == "sft"].run)) == ["teacher", "dskd_cma", "abl_b", "abl_a"]
    assert list(dict.fromkeys(csv[csv.baseline == "dskd_cma"].run)) == ["teacher", "sft", "abl_b", "abl_a"]
    x = csv.set_index(["run", "baseline", "set"])
    t = x.loc["teacher", "sft", "avg"]  # +5 on every prompt of both sets
    assert (t.mean_diff, t.ci_low, t.ci_high, t.p_value, t.significant) == (5.0, 5.0, 5.0, 0.0, True)
    c = x.loc["dskd_cma", "sft", "dolly"]  # ±1 per prompt
    assert c.mean_diff == 0.0 and c.ci_low < 0 < c.ci_high and c.p_value == 1.0 and not c.significant
    assert x.loc["abl_b", "dskd_cma", "sni"].mean_diff == pytest.approx(2.0)
    b = x.loc["abl_b", "dskd_cma", "sni"]  # 2 ∓ 1 per prompt: the resample means lie in [1, 3]
    assert 1.0 <= b.ci_low < 2.0 < b.ci_high <= 3.0 and b.significant
    assert x.loc["teacher", "sft", "avg"].n_prompts == 2 * N and (csv.resamples == 10_000).all()
    assert t.se == 0.0 and t.mdd == 0.0  # no spread of the difference: any difference is detectable
    assert x.loc["dskd_cma", "sft", "dolly"].mdd == pytest.approx(mdd_factor(0.95) * x.loc["dskd_cma", "sft",
                                                                                             "dolly"].se)
    md = (root / "tables" / "significance.md").read_text()
    assert "## ROUGE-L (higher is better): difference from SFT" in md
    assert "## ROUGE-L (higher is better): difference from DSKD-CMA" in md
    assert "+5.00 [+5.00, +5.00], p < 0.0002" in md
    assert "Minimum detectable difference (ROUGE-L, median over the 4 runs compared" in md and "2.80 × SE" in md
    assert "Bits per byte not compared for Teacher, SFT, DSKD-CMA, w/ B, w/ A" in md
    assert (root / "tables" / "significance.tex").exists()
    page = (root / "tables" / "significance.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 2
    assert "<td class='num'>+5.00 [+5.00, +5.00], p &lt; 0.0002</td>" in page


def test_bootstrap_settings_come_from_the_config_and_are_validated(evals, tmp_path, capsys):
    root, cfg = evals
    assert main(["significance", "--config", "config/config.yaml", "--config", str(cfg), "--set",
                 "report.bootstrap.resamples=200", "--set", "report.bootstrap.ci=0.8", "--eval-dir",
                 str(root / "eval"), "--out", str(tmp_path / "t")]) == 0
    csv = pd.read_csv(tmp_path / "t" / "significance.csv")
    assert (csv.resamples == 200).all() and (csv.ci == 0.8).all()
    assert main(["significance", "--config", "config/config.yaml", "--set", "report.bootstrap.ci=95",
                 "--eval-dir", str(root / "eval"), "--out", str(tmp_path / "t")]) == 2
    assert "report.bootstrap.ci: expected a value < 1, got 95" in capsys.readouterr().err
    assert main(["significance", "--config", "config/config.yaml", "--set", "report.baselines=[sft, ghost]",
                 "--eval-dir", str(root / "eval"), "--out", str(tmp_path / "t")]) == 2
    assert "report.baselines: 'ghost' is not in runs" in capsys.readouterr().err


BYTES = [40 + 7 * i for i in range(N)]  # each prompt's gold response bytes


def _add_bpb(root, sets, shifts: dict[str, list[float]]):
    """Per-prompt bits (``bpb_samples``) for the runs of ``shifts``: 2 bits per byte + PATTERN + the run's shift."""
    for run, shift in shifts.items():
        for s in sets:
            f = root / "eval" / run / f"{s}.json"
            d = json.loads(f.read_text())
            bits = [2.0 * b + p + x for b, p, x in zip(BYTES, PATTERN, shift)]
            d["bpb_samples"] = {"bits": bits, "bytes": BYTES}
            d["summary"]["bpb"] = sum(bits) / sum(BYTES)
            f.write_text(json.dumps(d))


def test_bits_per_byte_is_compared_per_prompt_with_the_sign_of_method_minus_baseline(evals):
    root, cfg = evals
    sets = ["dolly", "sni"]
    # the teacher: 3 bits fewer on every prompt than SFT (better); DSKD-CMA: ±1 bit per prompt (mean 0);
    # w/ A and w/ B: eval JSONs without per-prompt bits (written before they were stored)
    _add_bpb(root, sets, {"teacher": [-3.0] * N, "sft": [0.0] * N, "dskd_cma": ALTERNATING})
    assert main(["significance", "--config", "config/config.yaml", "--config", str(cfg), "--eval-dir",
                 str(root / "eval"), "--out", str(root / "tables")]) == 0
    csv = pd.read_csv(root / "tables" / "significance.csv")
    bpb = csv[csv.metric == "bpb"].set_index(["run", "baseline", "set"])
    assert list(dict.fromkeys(csv.metric)) == ["rougeL", "bpb"]
    assert set(bpb.index.get_level_values("run")) == {"teacher", "sft", "dskd_cma"}  # not w/ A, w/ B
    t = bpb.loc["teacher", "sft", "dolly"]
    assert t.mean_diff == pytest.approx(-3.0 * N / sum(BYTES))  # method − baseline: negative = fewer bits
    assert t.ci_low <= t.mean_diff <= t.ci_high < 0 and t.significant and t.p_value == 0.0
    assert bpb.loc["teacher", "sft", "avg"].mean_diff == pytest.approx(-3.0 * N / sum(BYTES))
    assert bpb.loc["teacher", "dskd_cma", "avg"].mean_diff == pytest.approx(-3.0 * N / sum(BYTES))
    c = bpb.loc["dskd_cma", "sft", "sni"]
    assert c.mean_diff == pytest.approx(0.0, abs=1e-12) and c.ci_low < 0 < c.ci_high and not c.significant
    assert c.se > 0 and c.mdd == pytest.approx(mdd_factor(0.95) * c.se) and c.n_seeds == 1
    # the same prompts resampled for ROUGE-L and bpb: the ROUGE-L rows are unchanged by the bpb ones
    assert csv[csv.metric == "rougeL"].shape[0] == 2 * 4 * 3
    md = (root / "tables" / "significance.md").read_text()
    assert "## Bits per byte (lower is better): difference from SFT" in md
    teacher = next(ln for ln in md.split("## ")[3].splitlines() if ln.startswith("| Teacher"))
    assert teacher.split("|")[2].strip().startswith("-0.0522 [") and "p < 0.0002" in teacher  # 3 · 6 / 345 bytes
    assert "Minimum detectable difference (bits per byte, median over the 2 runs compared" in md
    assert "Bits per byte not compared for w/ B, w/ A" in md and "a negative difference favours the method" in md
    # the main table marks the bpb cells too: DSKD-CMA is not significantly different from SFT (and vice versa)
    assert _report(root, cfg) == 0
    main_md = (root / "tables" / "main.md").read_text()
    rows = _rows(main_md, 1)
    assert all(c.endswith("°") for c in rows["DSKD-CMA"]) and all(c.endswith("†") for c in rows["SFT"])
    assert not any(c.endswith(("°", "†")) for c in rows["Teacher"]) and rows["Copy instruction+input"][0] == "–"
    assert "Σ bits / Σ bytes of each run recomputed on every resample" in main_md.split("## ")[2]


def test_bits_per_byte_on_more_prompts_than_rouge_uses_bpb_ids_and_both_counts_are_reported(evals, capsys):
    """``eval.bpb_limit``: bpb on 2N prompts (``bpb_ids``, the order of ``bpb_samples``), ROUGE-L on N (``ids``):
    the significance pairs each metric on its own prompts, the CSVs count each, "Samples per set" gives both."""
    root, cfg = evals
    sets = ["dolly", "sni"]
    for run, shift in {"teacher": -3.0, "sft": 0.0, "dskd_cma": 0.0}.items():
        for s in sets:
            f = root / "eval" / run / f"{s}.json"
            d = json.loads(f.read_text())
            nbytes = BYTES * 2
            bits = [2.0 * b + p + shift for b, p in zip(nbytes, PATTERN * 2)]
            d["bpb_ids"] = [f"{s}-{i}" for i in range(2 * N)]
            d["bpb_samples"] = {"bits": bits, "bytes": nbytes}
            d["summary"]["bpb"] = sum(bits) / sum(nbytes)
            f.write_text(json.dumps(d))
    assert main(["significance", "--config", "config/config.yaml", "--config", str(cfg), "--eval-dir",
                 str(root / "eval"), "--out", str(root / "tables")]) == 0
    sig = pd.read_csv(root / "tables" / "significance.csv").set_index(["metric", "run", "baseline", "set"])
    assert sig.loc[("bpb", "teacher", "sft", "dolly"), "n_prompts"] == 2 * N
    assert sig.loc[("rougeL", "teacher", "sft", "dolly"), "n_prompts"] == N
    assert sig.loc[("bpb", "teacher", "sft", "dolly"), "mean_diff"] == pytest.approx(-3.0 * 2 * N / sum(BYTES * 2))
    assert _report(root, cfg) == 0
    md = (root / "tables" / "main.md").read_text()
    assert f"Samples per set: Dolly {N} (bits per byte {2 * N}), S-NI {N} (bits per byte {2 * N})." in md
    csv = pd.read_csv(root / "tables" / "main.csv")
    teacher = csv[(csv.run == "teacher") & (csv.set == "dolly")].set_index("metric")
    assert teacher.loc["rougeL", "n_samples"] == N and teacher.loc["bpb", "n_samples"] == 2 * N
    # bpb over other prompts than the baseline's: an error naming both files
    f = root / "eval" / "dskd_cma" / "sni.json"
    d = json.loads(f.read_text())
    d["bpb_ids"], d["bpb_samples"] = d["bpb_ids"][:N], {k: v[:N] for k, v in d["bpb_samples"].items()}
    f.write_text(json.dumps(d))
    assert _report(root, cfg) == 2
    assert f"{f}: prompt ids do not match" in capsys.readouterr().err


_REPORT_ITEMS = """
import json, sys, tempfile
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(config={"profile": "tiny"}),
                      storage_settings=StorageSettings(), snakefile=Path(sys.argv[1]),
                      workdir=Path(tempfile.mkdtemp()))
    items = {}
    for name in ("report", "significance", "efficiency", "same_vocab_report", "table_efficiency"):
        for o in wf._workflow.get_rule(name).output:
            r = o.flags.get("report")
            if r is not None:
                items[str(o)] = {"rule": name, "category": r.category, "labels": r.labels}
print("ITEMS " + json.dumps(items))
"""


def test_the_report_rules_put_every_table_in_the_snakemake_report_as_an_html_page(tmp_path):
    """``snakemake --report`` shows an HTML result in the page (a CSV result is only a download): each table's
    rule marks its ``.html`` output for the report, beside the long-format CSV."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", _REPORT_ITEMS, str(root / "Snakefile")], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    items = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("ITEMS "))[6:])
    # the pair wildcard, constrained to the profile's pairs (and the same-vocabulary pair: its own table only)
    tables, sv = r"results/tiny/{pair,tiny|tiny\-samevocab}/tables", r"results/tiny/{pair,tiny\-samevocab}/tables"
    html = {k: v for k, v in items.items() if k.endswith(".html")}
    assert sorted(html) == sorted([f"{tables}/{{table,main|ablation|on_policy}}.html", f"{tables}/significance.html",
                                   f"{tables}/efficiency.html", f"{sv}/same_vocab.html",
                                   f"{tables}/{{table,on_policy}}_efficiency.html"])
    assert all(v["category"] == "Tables" and v["labels"]["file"] == "HTML table" for v in html.values())
    assert items[f"{tables}/significance.csv"]["labels"] == {"table": "significance", "file": "long format (CSV)"}


def test_html_tables_are_pages_of_the_markdown(evals):
    root, cfg = evals
    assert _report(root, cfg) == 0
    page = (root / "tables" / "main.html").read_text()
    assert page.count("<table>") == 2 and "<h1>Main table</h1>" in page
    assert "<h2>ROUGE-L F1 (×100, higher is better; mean ± std over generation seeds)</h2>" in page
    assert "<td>Copy instruction+input</td><td class='num'>20.00</td>" in page
    assert "<p>° not significantly different from SFT" in page
    md = ["## A <b>\n", "| Method   | x   |\n|:---------|:----|\n| a&b      | -1  |\n| c        | –   |", "", "note"]
    html = markdown_html(md, "T")
    assert "<h2>A &lt;b&gt;</h2>" in html and "<td>a&amp;b</td><td class='num'>-1</td>" in html
    assert "<td>c</td><td class='num'>–</td>" in html and "<p>note</p>" in html and ":---" not in html
    assert "<th>Method</th><th>x</th>" in html


# ------------------------------------------------------------------------------------ efficiency


def _log(path, step_times, peaks, tps, terms: dict[str, list[float]], extra_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (t, m, v) in enumerate(zip(step_times, peaks, tps)):
        rec = {"step": i + 1, "epoch": 0, **{k: vals[i] for k, vals in terms.items()}, "lr": 1e-3, "grad_norm": 0.5,
               "tokens": 100, "step_time_s": t, "tokens_per_s": v, "peak_mem_mb": m}
        lines.append(json.dumps(rec))
    lines += [json.dumps(x) for x in extra_lines]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def logs(tmp_path):
    runs = tmp_path / "runs"
    _log(runs / "sft" / "train_log.jsonl", [1.0, 2.0, 3.0, 10.0], [100.0, 300.0, 200.0, 250.0], [10, 20, 30, 40],
         {"loss": [4.0, 3.5, 3.0, 2.5], "ce": [4.0, 3.5, 3.0, 2.5]},
         extra_lines=[{"step": 4, "epoch": 0, "dev_last": None}])
    # DSKD-CMA: step 2 logged twice (a resumed run): the last one counts; an end-of-epoch dev line
    _log(runs / "dskd_cma" / "train_log.jsonl", [2.0, 9.0, 6.0], [400.0, 450.0, 420.0], [5, 6, 7],
         {"loss": [6.0, 5.0, 4.0], "ce": [3.0, 2.5, 2.0], "kd_stu": [1.0, 0.9, 0.8], "kd_tea": [2.0, 1.6, 1.2]},
         extra_lines=[{"step": 2, "epoch": 0, "loss": 5.5, "ce": 2.4, "kd_stu": 0.7, "kd_tea": 1.5, "lr": 1e-3,
                       "grad_norm": 0.4, "tokens": 90, "step_time_s": 4.0, "tokens_per_s": 6.5, "peak_mem_mb": 430.0},
                      {"step": 3, "epoch": 0, "dev_rougeL": 12.5}])
    _log(runs / "dwakd" / "train_log.jsonl", [3.0, 3.0], [500.0, 600.0], [4, 4],
         {"loss": [7.0, 6.0], "ce": [3.0, 2.0], "dtw_hid": [0.5, 0.4]})
    return tmp_path


def test_efficiency_frame_medians_maxima_and_ratios_to_sft(logs):
    runs = logs / "runs"
    d = read_train_log(runs / "dskd_cma" / "train_log.jsonl")
    assert list(d.step) == [1, 2, 3] and d.set_index("step").at[2, "step_time_s"] == 4.0  # dev line dropped
    eff = efficiency_frame({r: read_train_log(runs / r / "train_log.jsonl") for r in ("sft", "dskd_cma")},
                           {"sft": "SFT", "dskd_cma": "DSKD-CMA"}).set_index("run")
    assert eff.at["sft", "s_per_step_median"] == 2.5 and eff.at["sft", "peak_mem_mib"] == 300.0
    assert eff.at["sft", "tokens_per_s_median"] == 25 and eff.at["sft", "steps"] == 4
    assert eff.at["dskd_cma", "s_per_step_median"] == 4.0 and eff.at["dskd_cma", "peak_mem_mib"] == 430.0
    assert eff.at["dskd_cma", "s_per_step_vs_sft"] == pytest.approx(1.6)
    assert eff.at["dskd_cma", "peak_mem_vs_sft"] == pytest.approx(430 / 300)
    assert eff.at["sft", "s_per_step_vs_sft"] == 1.0
    # without SFT the ratios are empty, not wrong
    alone = efficiency_frame({"dskd_cma": read_train_log(runs / "dskd_cma" / "train_log.jsonl")}, {})
    assert alone.s_per_step_vs_sft.isna().all()


def test_train_curves_are_every_loss_term_per_step_in_long_format(logs):
    runs = logs / "runs"
    cur = curves_frame({r: read_train_log(runs / r / "train_log.jsonl") for r in ("sft", "dskd_cma")},
                       {"sft": "SFT", "dskd_cma": "DSKD-CMA"})
    assert list(cur.columns) == ["run", "method", "step", "term", "value"]
    x = cur[cur.run == "dskd_cma"]
    assert list(x[x.step == 1].term) == ["loss", "ce", "kd_stu", "kd_tea"]
    assert len(x) == 3 * 4 and x.set_index(["step", "term"]).at[(2, "kd_tea"), "value"] == 1.5
    assert set(cur.term) == {"loss", "ce", "kd_stu", "kd_tea"}  # not lr, grad_norm, tokens, dev_*, ...
    assert set(cur[cur.run == "sft"].method) == {"SFT"} and len(cur[cur.run == "sft"]) == 4 * 2


def test_efficiency_cli_orders_runs_and_writes_every_format(logs):
    cfg = _cfg(logs, ["dolly"], ["sft", "dskd_cma"], ["dskd_cma", "dwakd"])
    assert main(["efficiency", "--config", "config/config.yaml", "--config", str(cfg), "--runs-dir",
                 str(logs / "runs"), "--out", str(logs / "tables")]) == 0
    md = (logs / "tables" / "efficiency.md").read_text()
    rows = _rows(md)
    assert list(rows) == ["SFT", "DSKD-CMA", "DWA-KD"]  # main table's runs, then the ablation's not yet listed
    assert rows["DSKD-CMA"] == ["4.000", "1.60×", "430", "1.43×", "6", "3"]
    assert rows["DWA-KD"][:4] == ["3.000", "1.20×", "600", "2.00×"]
    assert "Published" not in md  # the mini pair has no published numbers
    csv = pd.read_csv(logs / "tables" / "efficiency.csv")
    assert list(csv.columns) == ["run", "method", "steps", "s_per_step_median", "s_per_step_vs_sft", "peak_mem_mib",
                                 "peak_mem_vs_sft", "tokens_per_s_median"]
    cur = pd.read_csv(logs / "tables" / "train_curves.csv")
    assert list(cur.columns) == ["run", "method", "step", "term", "value"]
    assert set(cur[cur.run == "dwakd"].term) == {"loss", "ce", "dtw_hid"}
    assert r"$\times$" in (logs / "tables" / "efficiency.tex").read_text()


def test_efficiency_shows_the_published_table_7_for_a_paper_pair(logs, tmp_path):
    cfg = _cfg(logs, ["dolly"], ["sft", "dskd_cma", "dwakd"], [], pair=PAPER_PAIR)
    assert main(["efficiency", "--config", "config/config.yaml", "--config", str(cfg), "--runs-dir",
                 str(logs / "runs"), "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "efficiency.md").read_text()
    pub = _rows(md, 1)
    # ours: DWA-KD 3.0 s vs DSKD-CMA 4.0 s = 0.75×; published 0.45 / 0.35 = 1.29×; memory 600/430, 29.92/26.38
    assert pub["DWA-KD"] == ["3.000", "0.45", "0.75×", "1.29×", "600", "29.92", "1.40×", "1.13×"]
    assert pub["DSKD-CMA"][:4] == ["4.000", "0.35", "1.00×", "1.00×"]
    assert "DWA-KD (arXiv 2602.21669), Table 7 (efficiency, batch size 4)" in md
    csv = pd.read_csv(tmp_path / "t" / "efficiency.csv").set_index("run")
    assert csv.at["dwakd", "published_s_per_step"] == 0.45 and csv.at["dskd_cma", "published_peak_mem_gb"] == 26.38
    assert pd.isna(csv.at["sft", "published_s_per_step"])


def test_a_missing_training_log_names_the_file(logs, capsys):
    cfg = _cfg(logs, ["dolly"], ["sft", "uld"], [])
    assert main(["efficiency", "--config", "config/config.yaml", "--config", str(cfg), "--runs-dir",
                 str(logs / "runs"), "--out", str(logs / "tables")]) == 2
    assert f"{logs / 'runs' / 'uld' / 'train_log.jsonl'}: no training log" in capsys.readouterr().err
    bad = logs / "runs" / "uld" / "train_log.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \n')
    with pytest.raises(DataError, match=rf"{bad}:2: not a JSON line"):
        read_train_log(bad)


def test_the_shipped_published_file_is_valid_and_holds_methods_md_numbers():
    from dwakd.report import load_published

    pub = load_published("config/published.yaml")
    q = pub["pairs"][PAPER_PAIR]["rougeL"]["runs"]
    assert q["dwakd"]["avg"] == 17.68 and q["sft"]["sni"] == 7.81 and q["dwakd_wo_gate"] == {
        "paper_name": "w/o gate", "source": {"paper": "DWA-KD (arXiv 2602.21669)",
                                             "table": "Table 3 (ablation, Avg only)"}, "avg": 17.50}
    m = pub["pairs"]["mistral-7b_tinyllama-1.1b"]["rougeL"]["runs"]
    assert m["dwakd"]["sni"] == 36.59 and m["teacher"]["avg"] == 28.31
    # every published Avg with all four sets is their mean (to the paper's rounding)
    for runs in (q, m):
        for r, v in runs.items():
            if "dolly" in v:
                assert v["avg"] == pytest.approx((v["dolly"] + v["selfinst"] + v["vicuna"] + v["sni"]) / 4, abs=0.011), r
    assert pub["efficiency"]["runs"]["dwakd"] == {"paper_name": "DWA-KD", "s_per_step": 0.45, "peak_mem_gb": 29.92}
