"""``dwakd report``: the main and the ablation tables from evaluation JSONs (mean ± std over seeds)."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from dwakd.cli import main


def _eval(path, per_seed: dict[str, float], bpb: float | None):
    path.parent.mkdir(parents=True, exist_ok=True)
    vals = list(per_seed.values())
    summary = {"rougeL": {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                          "n": len(vals)}, "bpb": bpb}
    path.write_text(json.dumps({"ids": [0, 1, 2], "summary": summary,
                                "seeds": {k: {"rougeL": v, "scores": [], "generations": []} for k, v in per_seed.items()}}))


@pytest.fixture
def evals(tmp_path):
    sets = ["dolly", "sni"]
    for run, base in {"copy": 20.0, "teacher": 10.0, "sft": 5.0, "abl_a": 6.0, "abl_b": 7.0}.items():
        for k, s in enumerate(sets):
            seeds = {"10": base + k} if run == "copy" else {"10": base + k, "20": base + k + 2.0}
            _eval(tmp_path / "eval" / run / f"{s}.json", seeds, None if run == "copy" else 2.0 + k)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"profiles": {"mini": {
        "eval": {"sets": sets}, "main_table": ["sft"], "ablation_table": ["abl_b", "abl_a"]}},
        "methods": {"abl_a": {"method": "sft", "title": "w/ A"}, "abl_b": {"method": "sft", "title": "w/ B"}}}))
    return tmp_path, cfg


def test_ablation_table_lists_its_runs_in_order_without_floor_or_teacher(evals):
    root, cfg = evals
    assert main(["report", "--config", "config/config.yaml", "--config", str(cfg), "--eval-dir", str(root / "eval"),
          "--out", str(root / "tables"), "--table", "ablation"]) == 0
    md = (root / "tables" / "ablation.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| w/")]
    assert [r.split("|")[1].strip() for r in rows[:2]] == ["w/ B", "w/ A"]
    assert "Teacher" not in md and "Copy" not in md
    # w/ B: Dolly seeds 7, 9 -> 8.00 ± 1.41; S-NI 8, 10 -> 9.00 ± 1.41; Avg per seed 7.5, 9.5 -> 8.50 ± 1.41
    assert "8.00 ± 1.41" in rows[0] and "9.00 ± 1.41" in rows[0] and "8.50 ± 1.41" in rows[0]
    for ext in ("csv", "tex"):
        assert (root / "tables" / f"ablation.{ext}").exists()


def test_main_table_keeps_floor_and_teacher_and_an_undefined_table_is_an_error(evals, tmp_path, capsys):
    root, cfg = evals
    assert main(["report", "--config", "config/config.yaml", "--config", str(cfg), "--eval-dir", str(root / "eval"),
          "--out", str(root / "tables")]) == 0
    md = (root / "tables" / "main.md").read_text()
    assert md.index("Copy instruction+input") < md.index("Teacher") < md.index("| SFT")
    no_abl = tmp_path / "no_abl.yaml"
    no_abl.write_text(yaml.safe_dump({"profiles": {"mini": {"ablation_table": []}}}))
    rc = main(["report", "--config", "config/config.yaml", "--config", str(no_abl), "--eval-dir",
               str(root / "eval"), "--out", str(root / "t2"), "--table", "ablation"])
    assert rc == 2
    assert "--table ablation: profile 'mini' defines the tables ['main']" in capsys.readouterr().err
    assert not (root / "t2").exists()
