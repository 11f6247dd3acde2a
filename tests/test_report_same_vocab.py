"""``dwakd report --table same_vocab``: DSKD's Table 1 layout (rows grouped by framework, the teacher last,
significance markers against SFT, published numbers beside ours) from a small fake results folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from dwakd.cli import main
from dwakd.report import framework_of, same_vocab_rows

N = 6
PATTERN = [((7 * i) % 11) - 5.0 for i in range(N)]
ALTERNATING = [1.0 if i % 2 == 0 else -1.0 for i in range(N)]
SETS = ["dolly", "sni"]
#: the tiny profile's same-vocabulary runs and the teacher, each with its ROUGE-L level
BASE = {"sft": 5.0, "vanilla_kd_fkl": 6.0, "vanilla_kd_rkl": 6.5, "dskd_fkl": 7.0, "dskd_rkl": 5.0, "teacher": 10.0}


def _eval(path, per_seed: dict[str, float], bpb: float, noise):
    path.parent.mkdir(parents=True, exist_ok=True)
    vals = list(per_seed.values())
    summary = {"rougeL": {"mean": sum(vals) / len(vals), "std": float(pd.Series(vals).std()), "n": len(vals)},
               "bpb": bpb}
    seeds = {k: {"rougeL": v, "scores": [v + p + e for p, e in zip(PATTERN, noise)], "generations": [""] * N}
             for k, v in per_seed.items()}
    path.write_text(json.dumps({"ids": [f"{path.stem}-{i}" for i in range(N)], "summary": summary, "seeds": seeds}))


@pytest.fixture
def folder(tmp_path):
    for run, base in BASE.items():
        for k, s in enumerate(SETS):
            # DSKD (RKL) differs from SFT by ±1 per prompt (mean 0): not significant; every other run is
            noise = ALTERNATING if run == "dskd_rkl" else [0.0] * N
            _eval(tmp_path / "eval" / run / f"{s}.json", {"10": base + k, "20": base + k + 2.0}, 2.0 + k + base / 100,
                  noise)
    cfg = {"profile": "tiny", "profiles": {"tiny": {"eval": {"sets": SETS}}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def _report(root, *extra, cfg="cfg.yaml"):
    return main(["report", "--config", "config/config.yaml", "--config", str(root / cfg), "--eval-dir",
                 str(root / "eval"), "--out", str(root / "tables"), "--table", "same_vocab", *extra])


def _table(md: str, section: int) -> list[list[str]]:
    part = md.split("## ")[1 + section]
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in part.splitlines() if ln.startswith("| ")]


def test_rows_are_grouped_by_framework_with_the_teacher_last(folder):
    assert _report(folder) == 0
    md = (folder / "tables" / "same_vocab.md").read_text()
    assert md.startswith("Same-vocabulary distillation on the pair tiny-samevocab")
    head, *rows = _table(md, 0)
    assert head == ["Framework", "Divergence", "Dolly", "S-NI", "Avg"]
    assert [r[:2] for r in rows] == [["SFT", "–"], ["Vanilla KD", "KL"], ["", "RKL"], ["DSKD", "KL"], ["", "RKL"],
                                     ["Teacher", "–"]]
    assert rows[1][2] == "7.00 ± 1.41" and rows[1][4] == "7.50 ± 1.41"  # seeds 6, 8 (Dolly); 6.5, 8.5 (Avg)
    bpb_head, *bpb_rows = _table(md, 1)
    assert bpb_head == head and [r[1] for r in bpb_rows] == [r[1] for r in rows]
    for ext in ("csv", "tex", "html"):
        assert (folder / "tables" / f"same_vocab.{ext}").stat().st_size > 0
    assert "<th>Framework</th><th>Divergence</th>" in (folder / "tables" / "same_vocab.html").read_text()


def test_csv_is_long_format_with_framework_and_divergence(folder):
    assert _report(folder) == 0
    df = pd.read_csv(folder / "tables" / "same_vocab.csv", keep_default_na=False)
    assert sorted(set(df.run)) == sorted(BASE)
    x = df[(df.run == "dskd_rkl") & (df.set == "dolly") & (df.metric == "rougeL")].iloc[0]
    assert (x.framework, x.divergence, x.method, x["mean"]) == ("DSKD", "RKL", "DSKD (RKL)", 6.0)
    assert set(df[df.run == "teacher"].framework) == {"Teacher"} and set(df[df.run == "sft"].divergence) == {"–"}
    assert len(df) == len(BASE) * (len(SETS) + 1) * 2  # runs × (sets + avg) × (ROUGE-L, bpb)


def test_markers_flag_cells_not_significantly_different_from_sft(folder):
    assert _report(folder) == 0
    md = (folder / "tables" / "same_vocab.md").read_text()
    rows = {(r[0] or "DSKD" if r[1] == "RKL" else r[0], r[1]): r[2:] for r in _table(md, 0)[1:]}
    assert all(c.endswith("°") for c in rows["DSKD", "RKL"])  # the same level as SFT, ±1 per prompt
    assert not any(c.endswith("°") for c in rows["DSKD", "KL"]) and not any("°" in c for c in rows["SFT", "–"])
    assert "° not significantly different from SFT" in md
    assert "†" not in md  # the second baseline (DSKD-CMA) is not a row of this table


def test_published_numbers_are_printed_beside_ours_for_the_pair(folder):
    pub = {"sources": {}, "pairs": {"tiny-samevocab": {"title": "tiny → tiny", "rougeL": {
        "avg_over": SETS, "runs": {"dskd_fkl": {"paper_name": "DSKD (KL)", "source": {"paper": "P", "table": "T1"},
                                                "dolly": 7.5, "sni": 8.0, "avg": 7.75}}}}}}
    (folder / "pub.yaml").write_text(yaml.safe_dump(pub))
    assert _report(folder, "--published", str(folder / "pub.yaml")) == 0
    md = (folder / "tables" / "same_vocab.md").read_text()
    assert "## Published (paper) and difference: ROUGE-L, tiny → tiny" in md and "Published: P, T1" in md
    df = pd.read_csv(folder / "tables" / "same_vocab.csv")
    x = df[(df.run == "dskd_fkl") & (df.set == "dolly") & (df.metric == "rougeL")].iloc[0]
    assert (x["mean"], x.published, x["diff"]) == (8.0, 7.5, 0.5)


def test_a_profile_without_the_table_or_another_pair_is_an_error(folder, capsys):
    (folder / "other.yaml").write_text(yaml.safe_dump({"profile": "gpu-small"}))
    assert _report(folder, cfg="other.yaml") == 2
    assert "--table same_vocab: profile 'gpu-small' has no same-vocabulary table (it needs " \
           "profiles.gpu-small.same_vocab_pair and same_vocab_table)" in capsys.readouterr().err
    assert _report(folder, "--pair", "tiny") == 2
    assert ("--pair tiny: the same-vocabulary table of profile 'tiny' is pair 'tiny-samevocab''s "
            "(same_vocab_pair)") in capsys.readouterr().err


def test_titles_name_the_framework_and_the_divergence():
    assert framework_of("Vanilla KD (KL)") == ("Vanilla KD", "KL")
    assert framework_of("DSKD  (SRKL) ") == ("DSKD", "SRKL")
    assert framework_of("SFT") == ("SFT", "–")
    titles = {"a": "DSKD (KL)", "b": "Vanilla KD (KL)", "c": "DSKD (RKL)", "s": "SFT"}
    # groups in the order of their first run, the runs' order kept inside a group, the teacher last
    assert same_vocab_rows(["s", "a", "b", "c"], titles) == ["s", "a", "c", "b", "teacher"]
