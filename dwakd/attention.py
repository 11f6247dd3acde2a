"""Cross-model attention of trained runs: the maps behind the heatmaps, DWA-KD's band, and the token-alignment
probe (``dwakd attention``; the figures are drawn by ``dwakd.figures`` from the tables written here).

For every run of the profile's tables whose method has a cross-model attention (``Method.cross_model_attention``:
DSKD-CMA, DSKD-CMA-GA, DWA-KD and its ablations), the trained student is loaded with the method's own trained
parameters (``method_state.pt``, ``dwakd.checkpoint.load_method_state``) and the teacher, and each evaluation sample
of ``figures.set`` (prompt + first gold response, tokenised as in training) goes through one forward pass of
both models and the method's ``terms(..., return_attention=True)``. ``A_t2s`` is restricted to the response
positions: row i is the student position predicting the i-th response token, column j the teacher position
predicting the j-th (both 0-based, EOS included); valid rows sum to 1. Tokens are named by the response token a
position predicts (``convert_ids_to_tokens``, markers kept), as DSKD-ETA aligns them.

Tables (``<results_dir>/tables/``):

* ``attention.csv``: ``run, method, sample, i, j, student_token, teacher_token, weight`` for the runs of
  ``figures.runs`` on ``figures.samples`` fixed samples (the first records whose responses have between
  ``min_tokens`` and ``max_tokens`` positions on both sides, in file order; then the other records in file
  order), at most ``max_tokens`` rows and columns each;
* ``attention_band.csv``: ``run, sample, i, centre, half_width`` — the band of the banded DWA-KD runs among
  them, from ``dwakd.methods.dwakd.band_geometry`` (the formula ``soft_band`` uses in training) on the same
  map with the run's band settings; teacher positions;
* ``alignment_probe.{csv,md,tex}``: the CMA-GA paper's probe (arXiv 2603.22056) for every such run over the
  first ``probe_samples`` samples: with the pairs of DSKD-ETA's exact token alignment
  (``dwakd.align.responses.eta_pairs``) as ground truth, ``mass_on_aligned`` is the mean attention weight
  ``A_t2s[i, j]`` over the aligned pairs (i, j) (pooled over samples), ``top1_on_aligned`` the share of them
  whose row maximum is j, and ``chance`` the mean of 1/T_b over the same pairs: both values of a uniform
  attention over the T_b teacher response positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dwakd import config as C
from dwakd.atomic import atomic_file, atomic_write_text
from dwakd.errors import ConfigError
from dwakd.files import RECEIPT

ATTENTION_COLUMNS = ["run", "method", "sample", "i", "j", "student_token", "teacher_token", "weight"]
BAND_COLUMNS = ["run", "sample", "i", "centre", "half_width"]
PROBE_COLUMNS = ["run", "method", "n_samples", "n_aligned_pairs", "mass_on_aligned", "top1_on_aligned", "chance"]


@dataclass
class FiguresConfig:
    """``profiles.<p>.figures`` (defaults: config/config.yaml)."""

    set: str = "dolly"  # evaluation set the samples come from (one of eval.sets)
    samples: int = 3  # heatmaps: one figure per sample
    min_tokens: int = 8  # preferred response length range of the heatmap samples (positions, EOS included)
    max_tokens: int = 40  # ... and the crop of every map (rows and columns)
    probe_samples: int = 50  # alignment probe: first N samples of the set (0 = all)
    runs: list[str] | None = field(default=None)  # heatmap runs; None: every run of the tables with CMA

    def validate(self, where: str) -> None:
        for k in ("samples", "min_tokens", "max_tokens"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{where}.{k}: expected a positive integer, got {getattr(self, k)}")
        if self.min_tokens > self.max_tokens:
            raise ConfigError(f"{where}.min_tokens: {self.min_tokens} is larger than max_tokens ({self.max_tokens})")
        if self.probe_samples < 0:
            raise ConfigError(f"{where}.probe_samples: expected an integer >= 0, got {self.probe_samples}")


def figures_config(cfg: dict) -> FiguresConfig:
    from dwakd.settings import from_dict

    name = cfg["profile"]
    fc = from_dict(FiguresConfig, C.profile(cfg).get("figures"), f"profiles.{name}.figures")
    if fc.set not in C.profile(cfg)["eval"]["sets"]:
        raise ConfigError(f"profiles.{name}.figures.set: {fc.set!r} is not one of eval.sets "
                          f"{C.profile(cfg)['eval']['sets']}")
    return fc


def attention_runs(cfg: dict, fc: FiguresConfig) -> tuple[list[str], list[str]]:
    """``(probe runs, heatmap runs)``: the runs of the profile's tables (then ``figures.runs``) whose method has
    a cross-model attention, each once, in table order; and ``figures.runs`` (default: all of the former)."""
    from dwakd.registry import get_method

    def cma(run: str) -> bool:
        return get_method(C.run_spec(cfg, run)["method"]).cross_model_attention

    listed = C.table_runs(C.profile(cfg))
    for r in fc.runs or []:
        if not cma(r):
            raise ConfigError(f"profiles.{cfg['profile']}.figures.runs: run {r!r} (method "
                              f"{C.run_spec(cfg, r)['method']!r}) has no cross-model attention")
    probe = [r for r in dict.fromkeys(listed + list(fc.runs or [])) if cma(r)]
    return probe, list(fc.runs) if fc.runs else probe


# ------------------------------------------------------------------------------------------------ maps


@dataclass
class SampleMap:
    """One sample's response × response attention of one run (numpy), with the tokens and the band."""

    sample: str
    a: np.ndarray  # [S, T], rows sum to 1
    student_ids: list[int]
    teacher_ids: list[int]
    centre: np.ndarray | None = None  # [S] DWA-KD band centre (teacher positions)
    half_width: np.ndarray | None = None  # [S]


def pick_samples(items: list[dict], n: int, min_tokens: int, max_tokens: int) -> list[int]:
    """Indices of the ``n`` heatmap samples: first the records whose response has ``min_tokens`` …
    ``max_tokens`` positions on both sides, in file order, then the others in file order."""
    from dwakd.data import response_length  # the positions an item's loss is summed over

    def fits(it) -> bool:
        return all(min_tokens <= response_length(x) <= max_tokens for x in (it, it["teacher"]))

    return sorted(range(len(items)), key=lambda k: (not fits(items[k]), k))[:n]


@torch.no_grad()
def run_maps(trainer, items: list[dict], ids: list[str], batch_size: int = 8, band: bool = False) -> list[SampleMap]:
    """``SampleMap`` of every item (``trainer.make_items``): one forward pass of each model per batch
    (``trainer.forward``, as in training) and the method's ``A_t2s``. ``band``: also the DWA-KD band
    (``band_geometry`` with the method's band settings)."""
    from dwakd.align.responses import response_tokens
    from dwakd.methods.dwakd import band_geometry, gather_left, response_attention

    method = trainer.method
    for m in (trainer.student, trainer.teacher, method):
        m.eval()
    out: list[SampleMap | None] = [None] * len(items)
    # batches of similar lengths (little padding); the result is in the items' order
    order = sorted(range(len(items)), key=lambda k: (len(items[k]["teacher"]["input_ids"]), k))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        chunk = [items[k] for k in idx]
        batch = trainer.batch(chunk)
        tb, sb = batch["teacher"], batch["student"]
        s_out, t_out = trainer.forward(batch)
        t = method.terms(batch, s_out, t_out, return_attention=True)
        order_s, len_s, _ = gather_left(t.student_mask)
        order_t, len_t, _ = gather_left(t.teacher_mask)
        a = response_attention(t.cma.a_t2s.float(), order_s, order_t)
        centre = hw = None
        if band:
            c = method.cfg
            centre, hw = band_geometry(a, len_s, len_t, c.band_width, c.band_entropy_coef, c.band_center_blend)
        for b in range(len(chunk)):
            S, T = int(len_s[b]), int(len_t[b])
            m = SampleMap(sample=ids[idx[b]], a=a[b, :S, :T].cpu().numpy(),
                          student_ids=response_tokens(sb["labels"][b].cpu())[1],
                          teacher_ids=response_tokens(tb["labels"][b].cpu())[1])
            if band:
                m.centre, m.half_width = centre[b, :S].cpu().numpy(), hw[b, :S].cpu().numpy()
            out[idx[b]] = m
    return out


# ------------------------------------------------------------------------------------------------ probe


def probe(maps: list[SampleMap], pairs: list[list[tuple[int, int]]]) -> dict:
    """The alignment probe over samples: ``maps[k].a`` and the ground-truth ``pairs[k]`` ((i, j) response
    positions). Returns ``n_samples, n_aligned_pairs, mass_on_aligned, top1_on_aligned, chance`` (NaN
    without a pair)."""
    mass, top1, chance = [], [], []
    for m, ps in zip(maps, pairs):
        for i, j in ps:
            if i < m.a.shape[0] and j < m.a.shape[1]:
                row = m.a[i]
                mass.append(float(row[j]))
                top1.append(float(int(np.argmax(row)) == j))
                chance.append(1.0 / m.a.shape[1])
    nan = float("nan")
    return {"n_samples": len(maps), "n_aligned_pairs": len(mass),
            "mass_on_aligned": float(np.mean(mass)) if mass else nan,
            "top1_on_aligned": float(np.mean(top1)) if top1 else nan,
            "chance": float(np.mean(chance)) if chance else nan}


def write_probe(df: pd.DataFrame, out: Path, set_title: str) -> None:
    """``alignment_probe.{csv,md,tex}``, each written atomically (a reader never sees a partial table)."""
    _atomic_csv(df, out / "alignment_probe.csv")
    shown = df.rename(columns={"method": "Method", "n_aligned_pairs": "Aligned pairs",
                               "mass_on_aligned": "Mass on aligned", "top1_on_aligned": "Top-1 on aligned",
                               "chance": "Chance (uniform)"}).set_index("Method")
    shown = shown[["Aligned pairs", "Mass on aligned", "Top-1 on aligned", "Chance (uniform)"]].astype(object)
    for c in shown.columns[1:]:
        shown[c] = [f"{v:.3f}" for v in shown[c]]
    n = int(df["n_samples"].max()) if len(df) else 0
    note = (f"Token-alignment probe on the first {n} {set_title} samples: attention weight of A_t2s on the "
            f"teacher token that DSKD-ETA's exact token alignment pairs with each student response token "
            f"(mean over the aligned pairs), the share of those rows whose maximum is that token, and the "
            f"value of a uniform attention (1/T).")
    md = ["## Token-alignment probe (cross-model attention A_t2s; higher is better)\n",
          shown.to_markdown(colalign=("left",) + ("right",) * 4, disable_numparse=True), "", note]
    atomic_write_text(out / "alignment_probe.md", "\n".join(md) + "\n")
    tex = ["% " + note, shown.to_latex(escape=True)]
    atomic_write_text(out / "alignment_probe.tex", "\n".join(tex))


# ------------------------------------------------------------------------------------------------ export


def export(cfg: dict, models: Path, runs_dir: Path, data_dir: Path, out: Path, log=print, pair: str | None = None
           ) -> dict:
    """Write ``attention.csv``, ``attention_band.csv`` and ``alignment_probe.{csv,md,tex}`` to ``out``
    (module docstring) for the runs of ``pair`` (default: the profile's only pair). Returns a summary (runs,
    samples, seconds)."""
    import time

    from dwakd.align.responses import eta_pairs, tokens_of
    from dwakd.checkpoint import METHOD_STATE, load_method_state
    from dwakd.data import load_jsonl
    from dwakd.methods.dwakd import DWAKD
    from dwakd.models import load_model, load_tokenizer
    from dwakd.run import build_run
    from dwakd.train import Trainer

    t0 = time.time()
    fc = figures_config(cfg)
    probe_runs, map_runs = attention_runs(cfg, fc)
    records = load_jsonl(data_dir / f"{fc.set}.jsonl")
    if fc.samples > len(records):
        raise ConfigError(f"profiles.{cfg['profile']}.figures.samples: {fc.samples} heatmap samples asked, but "
                          f"{data_dir / (fc.set + '.jsonl')} holds {len(records)}")
    ids = [str(r.get("id", k)) for k, r in enumerate(records)]
    stale = [r for r in probe_runs if not (runs_dir / r / "model" / METHOD_STATE).exists()]
    if stale:  # every cross-model attention has trained projectors: name all such runs at once
        raise FileNotFoundError(
            f"{', '.join(str(runs_dir / r / 'model') for r in stale)}: no {METHOD_STATE} (the method's trained "
            f"parameters, saved by `dwakd train` since the figures were added); retrain: snakemake --cores all -f "
            f"{' '.join(str(runs_dir / r / RECEIPT) for r in stale)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = stok = ttok = None
    if probe_runs:
        teacher = load_model(models / "teacher").to(device).requires_grad_(False)
        ttok = load_tokenizer(models / "teacher")
    att_rows, band_rows, probe_rows = [], [], []
    picked: list[int] = []
    n_probe = len(records) if fc.probe_samples == 0 else min(fc.probe_samples, len(records))
    for run in probe_runs:
        r = build_run(cfg, run, pair)
        model_dir = runs_dir / run / "model"
        student = load_model(model_dir).to(device).requires_grad_(False)
        stok = load_tokenizer(model_dir)
        method = r.method(r.method_config, student, teacher, stok, ttok).to(device)
        load_method_state(method, model_dir)
        # encoding, batches and forward passes as in training
        trainer = Trainer(method, student, teacher, stok, ttok, r.train_config, runs_dir / run)
        items = trainer.make_items(records)
        if not picked:
            picked = pick_samples(items, fc.samples, fc.min_tokens, fc.max_tokens)
        want = sorted(set(range(n_probe)) | (set(picked) if run in map_runs else set()))
        banded = isinstance(method, DWAKD) and method.flags.dtw == "banded"
        maps = dict(zip(want, run_maps(trainer, [items[k] for k in want], [ids[k] for k in want], band=banded)))
        gt = [eta_pairs(stok, ttok, maps[k].student_ids, maps[k].teacher_ids) for k in range(n_probe)]
        probe_rows.append({"run": run, "method": r.title, **probe([maps[k] for k in range(n_probe)], gt)})
        if run in map_runs:
            for k in picked:
                m = maps[k]
                S, T = min(m.a.shape[0], fc.max_tokens), min(m.a.shape[1], fc.max_tokens)
                s_tok, t_tok = tokens_of(stok, m.student_ids[:S]), tokens_of(ttok, m.teacher_ids[:T])
                for i in range(S):
                    for j in range(T):
                        att_rows.append((run, r.title, m.sample, i, j, s_tok[i], t_tok[j], float(m.a[i, j])))
                    if banded:
                        band_rows.append((run, m.sample, i, float(m.centre[i]), float(m.half_width[i])))
        log(f"{run}: {probe_rows[-1]['n_aligned_pairs']} aligned pairs, mass on aligned "
            f"{probe_rows[-1]['mass_on_aligned']:.3f} (chance {probe_rows[-1]['chance']:.3f})")
    out.mkdir(parents=True, exist_ok=True)
    _atomic_csv(pd.DataFrame(att_rows, columns=ATTENTION_COLUMNS), out / "attention.csv")
    _atomic_csv(pd.DataFrame(band_rows, columns=BAND_COLUMNS), out / "attention_band.csv")
    write_probe(pd.DataFrame(probe_rows, columns=PROBE_COLUMNS), out, cfg["datasets"][fc.set]["title"])
    summary = {"probe_runs": probe_runs, "map_runs": map_runs, "samples": [ids[k] for k in picked],
               "probe_samples": n_probe, "seconds": round(time.time() - t0, 2)}
    log(json.dumps(summary))
    return summary


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as tmp:
        df.to_csv(tmp, index=False)
