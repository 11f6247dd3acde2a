"""Figures and notebooks: the method state saved with a student, ``dwakd attention`` (maps, DWA-KD's band, the
token-alignment probe), ``dwakd figures`` (pure plotting functions on DataFrames, files), the jupytext notebooks,
and (marked slow) all of it on the tiny workflow's real outputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.container import BarContainer

from dwakd import config as C
from dwakd import figures as F
from dwakd.attention import ATTENTION_COLUMNS, BAND_COLUMNS, PROBE_COLUMNS, SampleMap, probe
from dwakd.methods.dwakd import band_geometry, soft_band

ROOT = Path(__file__).resolve().parent.parent
RUNS = [("dskd_cma", "DSKD-CMA"), ("cma_ga", "DSKD-CMA-GA"), ("dwakd", "DWA-KD")]


# ------------------------------------------------------------------------------------------ synthetic tables

def synthetic_tables(folder: Path, samples=("dolly-2", "dolly-7")) -> Path:
    """Small tables in the formats the workflow writes (attention, band, probe, curves, main)."""
    rng = np.random.default_rng(0)
    s_tok = ["▁The", "▁cost", "▁is", "▁$", "5", ".", "<0x0A>", "nan", "</s>"]
    t_tok = ["The", "Ġcost", "Ġis", "Ġ$", "5", ".", "Ċ", "NULL", "Ġcaf", "Ã©", "<|endoftext|>"]
    att, band = [], []
    for run, title in RUNS:
        for sample in samples:
            a = rng.random((len(s_tok), len(t_tok))) ** 4
            a /= a.sum(1, keepdims=True)
            for i in range(len(s_tok)):
                att += [(run, title, sample, i, j, s_tok[i], t_tok[j], a[i, j]) for j in range(len(t_tok))]
                if run == "dwakd":
                    band.append((run, sample, i, 1.2 * i, 2.0 + 0.1 * i))
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(att, columns=ATTENTION_COLUMNS).to_csv(folder / "attention.csv", index=False)
    pd.DataFrame(band, columns=BAND_COLUMNS).to_csv(folder / "attention_band.csv", index=False)
    pd.DataFrame([(r, t, 6, 40, 0.1 * (k + 1), 0.2, 0.05) for k, (r, t) in enumerate(RUNS)],
                 columns=PROBE_COLUMNS).to_csv(folder / "alignment_probe.csv", index=False)
    curves = [(run, title, step, term, 5 * np.exp(-step / 10))
              for run, title in [("sft", "SFT"), *RUNS] for step in range(1, 11)
              for term in ["loss", "ce"] + (["dtw_emb"] if run == "dwakd" else [])]
    pd.DataFrame(curves, columns=["run", "method", "step", "term", "value"]).to_csv(folder / "train_curves.csv",
                                                                                    index=False)
    main = [(r, t, s, st, "rougeL", 10 + k, 0.5, 2, 6) for k, (r, t) in enumerate([("sft", "SFT"), *RUNS])
            for s, st in [("dolly", "Dolly"), ("sni", "S-NI"), ("avg", "Avg")]]
    main += [(r, t, s, st, "bpb", 2.0, 0.0, 1, 6) for r, t, s, st, *_ in main]
    pd.DataFrame(main, columns=["run", "method", "set", "set_title", "metric", "mean", "std", "n_seeds",
                                "n_samples"]).to_csv(folder / "main.csv", index=False)
    return folder


@pytest.fixture
def tables(tmp_path) -> Path:
    return synthetic_tables(tmp_path / "tables")


# ------------------------------------------------------------------------------------------ token labels

@pytest.mark.parametrize("tok, label", [
    ("Ġworld", "␣world"), ("▁world", "␣world"), ("Ċ", "↵"), ("ĊĊ", "↵↵"), ("<0x0A>", "↵"), ("\n", "↵"),
    ("<0x41>", "A"), ("<0xE6>", "<0xE6>"), ("Ã©", "é"), ("é", "é"), ("Ġ$", r"␣\$"), ("$$", r"\$\$"),
    ("ĉ", "⇥"), ("", "∅"), ("</s>", "</s>"), ("supercalifragilistic", "supercalifr…"), ("nan", "nan"),
])
def test_clean_token_makes_readable_mathtext_safe_labels(tok, label):
    assert F.clean_token(tok) == label


def test_read_table_keeps_token_strings_that_look_like_missing_values(tables):
    att = F.read_table(tables / "attention.csv")
    assert {"nan", "NULL"} <= set(att["student_token"]) | set(att["teacher_token"])
    assert att["weight"].dtype == float and list(dict.fromkeys(att["sample"])) == ["dolly-2", "dolly-7"]


# ------------------------------------------------------------------------------------------ band and probe

def test_band_geometry_is_the_formula_soft_band_uses():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 5, 7) * 3, -1)
    len_s, len_t = torch.tensor([5, 3]), torch.tensor([7, 4])
    centre, w = band_geometry(a, len_s, len_t, width=1.0, entropy_coef=0.5, center_blend=0.7)
    band = soft_band(a, len_s, len_t, width=1.0, entropy_coef=0.5, center_blend=0.7, penalty=2.0)
    j = torch.arange(7).float()
    for b in range(2):
        S, T = int(len_s[b]), int(len_t[b])
        expect = 2.0 * ((j[None, :T] - centre[b, :S, None]).abs() > w[b, :S, None]).float()
        torch.testing.assert_close(band[b, :S, :T], expect)
        assert band[b, S:].abs().sum() == 0 and band[b, :, T:].abs().sum() == 0
    # a sharp row on column 2 of a 4×8 map: centre 0.7·2 + 0.3·i·8/4, width b (entropy 0)
    sharp = torch.zeros(1, 4, 8)
    sharp[0, :, 2] = 1.0
    c, w = band_geometry(sharp, torch.tensor([4]), torch.tensor([8]), 5.0, 2.0, 0.7)
    torch.testing.assert_close(c[0], torch.tensor([1.4 + 0.6 * i for i in range(4)]))
    torch.testing.assert_close(w[0], torch.full((4,), 5.0))


def test_probe_identity_attention_puts_all_mass_on_the_aligned_tokens_uniform_is_chance():
    pairs = [[(0, 0), (1, 1), (3, 3)], [(0, 0), (1, 2)]]
    ident = [SampleMap("a", np.eye(4), [], []), SampleMap("b", np.eye(2, 3), [], [])]
    ident[1].a[1] = [0, 0, 1]
    p = probe(ident, pairs)
    assert p == {"n_samples": 2, "n_aligned_pairs": 5, "mass_on_aligned": 1.0, "top1_on_aligned": 1.0,
                 "chance": pytest.approx((3 / 4 + 2 / 3) / 5)}
    uniform = [SampleMap("a", np.full((4, 4), 0.25), [], []), SampleMap("b", np.full((2, 3), 1 / 3), [], [])]
    u = probe(uniform, pairs)
    assert u["mass_on_aligned"] == pytest.approx(u["chance"])
    off = [SampleMap("a", np.roll(np.eye(4), 1, axis=1), [], []), SampleMap("b", np.roll(np.eye(2, 3), 2, 1), [], [])]
    assert probe(off, pairs)["mass_on_aligned"] == 0.0 and probe(off, pairs)["top1_on_aligned"] == 0.0
    assert np.isnan(probe(ident, [[], []])["mass_on_aligned"])


# ------------------------------------------------------------------------------------------ plots

def test_attention_heatmap_panels_labels_and_band(tables):
    att, band = F.read_table(tables / "attention.csv"), F.read_table(tables / "attention_band.csv")
    fig = F.plot_attention(att, band, "dolly-7")
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == ["DSKD-CMA", "DSKD-CMA-GA", "DWA-KD"]
    assert [len(ax.lines) for ax in panels] == [0, 0, 3]  # centre and both edges on DWA-KD only
    centre = panels[2].lines[0]
    b = band[band["sample"] == "dolly-7"]
    np.testing.assert_allclose(centre.get_xdata(), b["centre"])
    np.testing.assert_allclose(centre.get_ydata(), b["i"])
    ylabels = [t.get_text() for t in panels[0].get_yticklabels()]
    xlabels = [t.get_text() for t in panels[0].get_xticklabels()]
    assert ylabels[:4] == ["␣The", "␣cost", "␣is", r"␣\$"] and ylabels[6] == "↵"
    assert xlabels[6] == "↵" and xlabels[9] == "é" and all(t.get_rotation() == 90 for t in panels[0].get_xticklabels())
    img = panels[0].get_images()[0]
    assert img.get_array().shape == (9, 11)
    assert any("attention weight" in ax.get_ylabel() for ax in fig.axes)  # the colorbar's label
    assert fig.get_figwidth() > 3 * 11 * F.CELL  # sized by the number of tokens
    F.save(fig, tables.parent / "fig", "one")  # draws: mathtext parses every label


def test_probe_curves_and_rouge_plots(tables):
    fig = F.plot_probe(F.read_table(tables / "alignment_probe.csv"))
    ax = fig.axes[0]
    assert len(ax.patches) == 9 and "0–1" in ax.get_ylabel()
    fig = F.plot_train_curves(F.read_table(tables / "train_curves.csv"))
    panels = [ax for ax in fig.axes if ax.lines]
    assert [len(ax.lines) for ax in panels] == [4, 4, 1]  # loss, ce: every method; dtw_emb: DWA-KD only
    assert all(ax.get_xlabel() == "optimiser step" and ax.get_ylabel() for ax in panels)
    assert panels[0].get_ylabel() == "nats / token"
    main = F.read_table(tables / "main.csv")
    extra = main[main.set == "avg"].assign(set="avg_published", set_title="Avg (published sets)")
    fig = F.plot_rouge(pd.concat([main, extra]))  # the published-average line is not a set of ours
    ax = fig.axes[0]
    assert len(ax.patches) == 4 * 3 and "ROUGE-L" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Dolly", "S-NI", "Avg"]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 4 and all(c.errorbar is not None for c in bars)  # std over seeds as error bars


def test_a_method_names_its_loss_terms_in_the_curve_figure(tables, tmp_path, monkeypatch):
    """``Method.term_labels`` give the curve panels' titles over ``TERM_TITLES``; a term two methods label
    differently shows both labels; ``dwakd figures`` reads them from the registry's specs."""
    from dwakd import registry
    from dwakd.cli import main
    from dwakd.methods.sft import SFT

    class LabelledSFT(SFT):
        name = "labelled_sft"
        term_labels = {"ce": "CE, in the method's words", "dtw_emb": "banded Soft-DTW on the embeddings"}

    registry.available()
    monkeypatch.setitem(registry._REGISTRY, LabelledSFT.name, LabelledSFT)
    labels = registry.term_labels()
    assert labels["ce"] == "CE, in the method's words"
    assert registry.specs()["labelled_sft"]["term_labels"] == LabelledSFT.term_labels
    fig = F.plot_train_curves(F.read_table(tables / "train_curves.csv"), labels=labels)
    titles = [ax.get_title() for ax in fig.axes if ax.lines]
    assert titles == ["total loss (loss)", "CE, in the method's words (ce)", "banded Soft-DTW on the embeddings "
                                                                             "(dtw_emb)"]
    assert [ax.get_title() for ax in F.plot_train_curves(F.read_table(tables / "train_curves.csv")).axes
            if ax.lines][1] == "CE on the gold response (ce)"  # without labels: TERM_TITLES
    assert registry.merge_term_labels({"b": {"kd": "Y"}, "a": {"kd": "X"}, "c": {"kd": "X", "ga": "Z"}}) == {
        "kd": "X / Y", "ga": "Z"}
    # the CLI: the labels of the specs (here with the labelled method in them) reach the figure's titles
    drawn = {}

    def plot(df, labels=None, **kw):
        drawn["labels"] = labels
        return F.placeholder("curves", "-")

    monkeypatch.setattr(C, "method_specs", lambda *a, **k: registry.specs())
    monkeypatch.setattr(F, "plot_train_curves", plot)
    assert main(["figures", "--tables", str(tables), "--out", str(tmp_path / "fig")]) == 0
    assert drawn["labels"]["dtw_emb"] == "banded Soft-DTW on the embeddings"


def _main_rows(methods: list[tuple[str, str]], means: list[float], sets=(("dolly", "Dolly"), ("sni", "S-NI"))):
    return pd.DataFrame([(r, t, s, st, "rougeL", m, 0.0 if r == "copy" else 0.5, 1 if r == "copy" else 2, 6)
                         for (r, t), m in zip(methods, means) for s, st in [*sets, ("avg", "Avg")]],
                        columns=["run", "method", "set", "set_title", "metric", "mean", "std", "n_seeds",
                                 "n_samples"])


def test_rouge_copy_floor_is_a_labelled_reference_line_not_a_bar_and_does_not_set_the_scale(tmp_path):
    runs = [("copy", "Copy instruction+input"), ("teacher", "Teacher"), ("sft", "SFT"), ("dwakd", "DWA-KD")]
    fig = F.plot_rouge(_main_rows(runs, [40.0, 6.0, 4.0, 5.0]))
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ["Teacher", "SFT", "DWA-KD"]  # no bar for the floor
    assert len(ax.patches) == 3 * 3
    floor = [c for c in ax.collections if c.get_label() == "Copy instruction+input (floor, reference line)"]
    assert len(floor) == 1 and floor[0].get_linestyle()[0][1] is not None  # dashed
    assert ax.get_ylim()[1] < 10  # scaled to the methods' bars (6.5 with the error bar), not to the floor's 40
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["copy 40.0 ↑ off scale"] * 3
    assert "Copy instruction+input (floor, reference line)" in [t.get_text() for t in fig.legends[0].get_texts()]
    # a floor inside the methods' range is drawn at its value
    fig = F.plot_rouge(_main_rows(runs, [3.0, 6.0, 4.0, 5.0]))
    ax = fig.axes[0]
    segs = [c for c in ax.collections if "floor" in c.get_label()][0].get_segments()
    assert [s[0][1] for s in segs] == [3.0] and [t.get_text() for t in ax.texts] == ["copy 3.0"] * 3
    F.save(fig, tmp_path, "rouge")  # draws


def test_rouge_and_curves_give_twelve_methods_twelve_distinct_colours():
    runs = [(f"m{k}", f"Method {k}") for k in range(12)]
    fig = F.plot_rouge(_main_rows(runs, [10.0 + k for k in range(12)]))
    bars = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    colours = {tuple(np.round(c.patches[0].get_facecolor(), 4)) for c in bars}
    assert len(bars) == 12 and len(colours) == 12
    for n in (5, 10, 12, 20, 33, 60, 75):
        assert len({tuple(np.round(c[:3], 4)) for c in F.method_colors(n)}) == n, n
    assert F.method_colors(10) == F.method_colors(12)[:10]  # the first ten keep tab10's hues
    curves = pd.DataFrame([(r, t, s, "loss", 1.0 / s) for r, t in runs for s in (1, 2)],
                          columns=["run", "method", "step", "term", "value"])
    lines = F.plot_train_curves(curves).axes[0].lines
    assert len({tuple(np.round(matplotlib.colors.to_rgba(ln.get_color()), 4)) for ln in lines}) == 12


def test_write_figures_writes_png_and_pdf_and_placeholders(tables, tmp_path):
    out = tmp_path / "figures"
    written = F.write_figures(tables, out, attention_figures=3)
    names = sorted(p.name for p in written)
    expect = sorted(f"{n}.{e}" for n in ["attention_1", "attention_2", "attention_3", "alignment_probe",
                                          "train_curves", "rougeL"] for e in ("png", "pdf"))
    assert names == expect
    for p in written:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"%PDF")
    (tables / "train_curves.csv").unlink()
    assert len(F.write_figures(tables, tmp_path / "again")) == 2 * 2 + 6  # placeholder for the curves
    r = subprocess.run([sys.executable, "-m", "dwakd.cli", "figures", "--tables", str(tables), "--out",
                        str(tmp_path / "cli"), "--attention-figures", "1"], capture_output=True, text=True,
                       env=_env())
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "cli").glob("*.png"))) == 4


# ------------------------------------------------------------------------------------------ notebooks

def _env(**extra) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg", **extra}


def run_notebook(path: Path, tables: Path, save_to: Path, monkeypatch) -> list:
    """Convert a jupytext notebook and execute it (from notebooks/) on ``tables``; returns its code cells."""
    import jupytext
    import nbclient

    for k, v in _env(DWAKD_TABLES=str(tables), DWAKD_FIGURES=str(save_to)).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MPLBACKEND")  # the kernel draws inline
    nb = jupytext.read(path)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return [c for c in nb.cells if c.cell_type == "code"]


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def test_notebooks_are_jupytext_percent_with_a_parameter_cell():
    import jupytext

    assert NOTEBOOKS
    for path in NOTEBOOKS:
        nb = jupytext.read(path)
        assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and "../results/mini/tables" in params[0].source and "DWAKD_TABLES" in params[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_synthetic_tables(path, tables, tmp_path, monkeypatch):
    cells = run_notebook(path, tables, tmp_path / "nbfig", monkeypatch)
    images = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2 + 3  # two samples, probe, curves, ROUGE-L
    assert len(list((tmp_path / "nbfig").glob("*.pdf"))) == 5


# ------------------------------------------------------------------------------------------ config

def test_every_profile_figures_section_builds_and_picks_the_runs_with_cross_model_attention():
    from dwakd.attention import attention_runs, figures_config

    cfg = C.load()
    # DSKD-CMA, DSKD-CMA-GA, DWA-KD (+ its ablations and DSKD-CMA's on-policy run when the default target builds
    # the ablation and on-policy tables: tiny; mini leaves those to `snakemake ablation` / `snakemake on_policy`, so
    # its probe covers the main table's three)
    expect = {"mini": 3, "tiny": 5}
    for name in cfg["profiles"]:
        c = {**cfg, "profile": name}
        probe_runs, map_runs = attention_runs(c, figures_config(c))
        assert map_runs == ["dskd_cma", "cma_ga", "dwakd"]
        assert probe_runs[:3] == map_runs and not {"sft", "dskd_eta", "mined", "uld", "seqkd"} & set(probe_runs)
        if name in expect:
            assert len(probe_runs) == expect[name]


@pytest.mark.parametrize("over, message", [
    ({"samples": 0}, "profiles.mini.figures.samples: expected a value >= 1, got 0"),
    ({"colour": "red"}, "profiles.mini.figures.colour: unknown key; expected one of: max_tokens, "),
    ({"set": "unni"}, "profiles.mini.figures.set: 'unni' is not one of eval.sets"),
    ({"min_tokens": 50}, "profiles.mini.figures.min_tokens: 50 is larger than max_tokens (40)"),
])
def test_bad_figures_config_names_the_key(over, message):
    from dwakd.attention import figures_config
    from dwakd.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        figures_config(C.load(None, {"profiles": {"mini": {"figures": over}}}))


# ------------------------------------------------------------------------------------------ method state + export

def _tiny_cfg(**figures) -> dict:
    over = {"profile": "tiny", "profiles": {"tiny": {
        "main_table": ["sft", "dskd_cma", "dwakd"], "ablation_table": [], "on_policy_table": [],
        "train": {"max_prompt_len": 48, "max_len": 96},
        "figures": {"samples": 2, "min_tokens": 2, "max_tokens": 500, "probe_samples": 4, **figures}}}}
    return C.load(None, over)


def _train(pair, records, out: Path, name: str):
    from dwakd.models import load_model, load_tokenizer
    from dwakd.run import build_run
    from dwakd.train import TrainConfig, Trainer

    torch.manual_seed(0)
    student, stok = load_model(pair / "student_base"), load_tokenizer(pair / "student_base")
    teacher, ttok = load_model(pair / "teacher").requires_grad_(False), load_tokenizer(pair / "teacher")
    r = build_run(_tiny_cfg(), name)
    cls, mcfg = r.method, r.method_config
    method = cls(mcfg, student, teacher if cls.needs_teacher else None, stok, ttok if cls.needs_teacher else None)
    cfg = TrainConfig(batch_size=2, max_steps=2, max_len=96, max_prompt_len=48, select_by="last", progress=False,
                      projector_lr=5e-2)
    Trainer(method, student, teacher, stok, ttok, cfg, out).fit(records)
    return method


@pytest.fixture(scope="module")
def trained(tiny_pair, dolly_small, tmp_path_factory):
    """runs/{sft,dskd_cma,dwakd}/model trained for two steps, and data/dolly.jsonl (six test prompts)."""
    from dwakd.data import SHIPPED_DATA, load_jsonl, write_jsonl

    root = tmp_path_factory.mktemp("trained")
    methods = {run: _train(tiny_pair, dolly_small[:4], root / "runs" / run, run) for run in ("sft", "dskd_cma", "dwakd")}
    (root / "data").mkdir()
    write_jsonl(load_jsonl(SHIPPED_DATA / "dolly_test.jsonl.gz")[:6], root / "data" / "dolly.jsonl")
    return root, methods


def test_save_model_stores_the_method_state_and_load_method_state_restores_it(trained, tiny_pair):
    from dwakd.checkpoint import METHOD_STATE, load_method_state
    from dwakd.models import load_model, load_tokenizer
    from dwakd.run import build_run

    root, methods = trained
    assert not (root / "runs" / "sft" / "model" / METHOD_STATE).exists()  # SFT has no parameters of its own
    model_dir = root / "runs" / "dwakd" / "model"
    assert (model_dir / METHOD_STATE).exists() and (model_dir / "config.json").exists()
    assert not list(model_dir.parent.glob("model.tmp*"))
    student, stok = load_model(model_dir), load_tokenizer(model_dir)
    teacher, ttok = load_model(tiny_pair / "teacher"), load_tokenizer(tiny_pair / "teacher")
    r = build_run(_tiny_cfg(), "dwakd")
    torch.manual_seed(1)
    fresh = r.method(r.method_config, student, teacher, stok, ttok)
    trained_state = methods["dwakd"].state_dict()
    assert not torch.equal(fresh.cma.query.weight, trained_state["cma.query.weight"])
    assert load_method_state(fresh, model_dir) is True
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, trained_state[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="method 'dwakd', not 'dskd_cma'"):
        cma = build_run(_tiny_cfg(), "dskd_cma")
        load_method_state(cma.method(cma.method_config, student, teacher, stok, ttok), model_dir)
    with pytest.raises(FileNotFoundError, match="retrain"):
        load_method_state(fresh, root / "runs" / "sft" / "model")


def test_attention_export_maps_band_and_probe(trained, tiny_pair, tmp_path):
    from dwakd.attention import export
    from dwakd.errors import ConfigError
    from dwakd.methods.dwakd import DWAKDConfig

    root, _ = trained
    out = tmp_path / "tables"
    summary = export(_tiny_cfg(runs=["dskd_cma", "dwakd"]), tiny_pair, root / "runs", root / "data", out,
                     log=lambda m: None)
    assert summary["probe_runs"] == ["dskd_cma", "dwakd"] and len(summary["samples"]) == 2
    att = F.read_table(out / "attention.csv")
    assert list(att.columns) == ATTENTION_COLUMNS
    assert list(dict.fromkeys(att["run"])) == ["dskd_cma", "dwakd"] and set(att["method"]) == {"DSKD-CMA", "DWA-KD"}
    rows = att.groupby(["run", "sample", "i"])["weight"].sum()
    np.testing.assert_allclose(rows.to_numpy(), 1.0, atol=1e-5)  # uncropped: every response row sums to 1
    w_cma, w_dwakd = (att[att.run == r]["weight"].to_numpy() for r in ("dskd_cma", "dwakd"))
    assert w_cma.shape == w_dwakd.shape and not np.allclose(w_cma, w_dwakd)  # each run's own trained projector
    band = F.read_table(out / "attention_band.csv")
    assert list(band.columns) == BAND_COLUMNS and set(band["run"]) == {"dwakd"}
    c = DWAKDConfig()
    for sample, d in att[att.run == "dwakd"].groupby("sample"):
        S, T = d["i"].max() + 1, d["j"].max() + 1
        grid = np.zeros((S, T))
        grid[d["i"].to_numpy(), d["j"].to_numpy()] = d["weight"].to_numpy()
        a = torch.tensor(grid[None], dtype=torch.float32)
        centre, w = band_geometry(a, torch.tensor([S]), torch.tensor([T]), c.band_width, c.band_entropy_coef,
                                  c.band_center_blend)
        b = band[band["sample"] == sample].sort_values("i")
        np.testing.assert_allclose(b["centre"], centre[0].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(b["half_width"], w[0].numpy(), rtol=1e-4, atol=1e-4)
    pr = F.read_table(out / "alignment_probe.csv")
    assert list(pr.columns) == PROBE_COLUMNS and list(pr["run"]) == ["dskd_cma", "dwakd"]
    assert (pr["n_samples"] == 4).all() and (pr["n_aligned_pairs"] > 0).all()
    assert ((pr["mass_on_aligned"] >= 0) & (pr["mass_on_aligned"] <= 1) & (pr["chance"] < 1)).all()
    assert "Token-alignment probe" in (out / "alignment_probe.md").read_text()
    assert "tabular" in (out / "alignment_probe.tex").read_text()
    # figures.runs must name runs with cross-model attention
    with pytest.raises(ConfigError, match="'sft' .* has no cross-model attention"):
        export(_tiny_cfg(runs=["sft"]), tiny_pair, root / "runs", root / "data", out)
    # a model saved without the method's state (an older `dwakd train`) is named with the command that retrains it
    import shutil

    old = tmp_path / "old_runs"
    for run in ("dskd_cma", "dwakd"):
        shutil.copytree(root / "runs" / run / "model", old / run / "model",
                        ignore=shutil.ignore_patterns("method_state.pt") if run == "dskd_cma" else None)
    receipt = old / "dskd_cma" / "model.sha256"  # the train rule's output beside the model folder
    with pytest.raises(FileNotFoundError, match=f"retrain: snakemake --cores all -f {receipt}$"):
        export(_tiny_cfg(runs=["dskd_cma", "dwakd"]), tiny_pair, old, root / "data", out)


# ------------------------------------------------------------------------------------------ the tiny run

@pytest.mark.slow
def test_figures_and_notebooks_on_the_tiny_run(tiny_run, monkeypatch, tmp_path):
    """The tiny workflow's attention tables and figures, and the notebooks on its tables."""
    tiny = tiny_run / "results" / "tiny" / "tiny"
    tables, figures = tiny / "tables", tiny / "figures"
    probed = ["dskd_cma", "cma_ga", "dwakd", "dwakd_w_bdtw", "dskd_cma_on_policy"]  # main, ablation, on-policy tables
    for run in probed:
        assert (tiny / "runs" / run / "model" / "method_state.pt").exists(), run
    att = F.read_table(tables / "attention.csv")
    assert list(dict.fromkeys(att["run"])) == ["dskd_cma", "cma_ga", "dwakd"] and att["sample"].nunique() == 2
    assert set(F.read_table(tables / "attention_band.csv")["run"]) == {"dwakd"}
    pr = F.read_table(tables / "alignment_probe.csv")
    assert list(pr["run"]) == probed and (pr["n_aligned_pairs"] > 0).all()
    names = {p.name for p in figures.iterdir()}
    for n in ("attention_1", "attention_2", "alignment_probe", "train_curves", "rougeL"):
        assert {f"{n}.png", f"{n}.pdf"} <= names
    for path in NOTEBOOKS:
        cells = run_notebook(path, tables, tmp_path / path.stem, monkeypatch)
        assert sum("image/png" in o.get("data", {}) for c in cells for o in c.outputs) == 5
