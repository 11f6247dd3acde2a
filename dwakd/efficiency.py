"""Training cost per run and loss curves, from the runs' ``train_log.jsonl`` (``dwakd efficiency``).

A training log has one JSON line per optimiser step (``step``, ``epoch``, ``loss`` and the method's loss
terms, ``lr``, ``grad_norm``, ``tokens``, ``step_time_s``, ``tokens_per_s``, ``peak_mem_mb``) and one line
per end-of-epoch evaluation (``step``, ``epoch``, ``dev_<metric>``); only the step lines (those with a
``loss``) are read, the last line of a step when a resumed run logged it twice.

- ``efficiency_frame``: per run, the median seconds per step, the peak memory (maximum of ``peak_mem_mb``,
  MiB), the median tokens/s and the number of steps, with the time and memory as multiples of SFT's; when a
  run trained on-policy (its log has ``on_policy``, ``gen_s``, ``kd_tokens``: ``dwakd.train.Trainer.kd_batches``),
  also the cost of the student's sampling: its on-policy steps, the mean sampling seconds per step and their
  share of the training time (``GENERATION_COLUMNS``; 0 for the other runs);
- ``curves_frame``: every numeric loss term per step in long format ``run, method, step, term, value``
  (everything numeric but ``NOT_TERMS`` and the ``dev_*`` evaluations);
- ``published_efficiency``: ours beside the paper's Table 7 (``config/published.yaml``, ``efficiency``), as
  seconds, gigabytes and ratios to the same reference run.

Torch-free (pandas).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dwakd.errors import DataError
from dwakd.files import RECEIPT, iter_jsonl_lines
from dwakd.atomic import atomic_file
from dwakd.report import latex_text, to_latex, to_markdown, write_table_files

# the log's fields that are not loss terms
NOT_TERMS = ("step", "epoch", "lr", "grad_norm", "tokens", "step_time_s", "tokens_per_s", "peak_mem_mb", "on_policy",
             "gen_s", "kd_tokens")
EFFICIENCY_COLUMNS = ["run", "method", "steps", "s_per_step_median", "s_per_step_vs_sft", "peak_mem_mib",
                      "peak_mem_vs_sft", "tokens_per_s_median"]
#: the sampling cost of on-policy runs (only in tables that have one): steps with a sampled micro-batch, mean
#: sampling seconds per step (all steps), sampling seconds / training seconds
GENERATION_COLUMNS = ["on_policy_steps", "gen_s_per_step", "gen_share"]
CURVE_COLUMNS = ["run", "method", "step", "term", "value"]


def read_train_log(path: Path | str) -> pd.DataFrame:
    """The step lines of a ``train_log.jsonl``, one row per step in step order (``DataError`` naming the file
    when it is missing, malformed or has no step line)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no training log")
    records = []
    redo = (f"the log is written by the run's training: retrain it (snakemake --cores all -f "
            f"{path.parent / RECEIPT})")
    for n, line in iter_jsonl_lines(path, redo):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not a JSON line: {e}; {redo}") from None
    df = pd.DataFrame.from_records(records)
    if "loss" not in df or "step" not in df:
        raise DataError(f"{path}: no optimiser-step lines (lines with 'step' and 'loss')")
    df = df[df["loss"].notna()]
    missing = [c for c in ("step_time_s", "tokens_per_s", "peak_mem_mb") if c not in df]
    if missing:
        raise DataError(f"{path}: step lines without {', '.join(missing)}")
    df = df.drop_duplicates("step", keep="last").sort_values("step", kind="stable")
    return df.dropna(axis=1, how="all").reset_index(drop=True)


def read_logs(runs_dir: Path | str, runs: list[str]) -> dict[str, pd.DataFrame]:
    """``run`` → ``read_train_log(runs_dir/run/train_log.jsonl)``."""
    return {r: read_train_log(Path(runs_dir) / r / "train_log.jsonl") for r in runs}


def efficiency_frame(logs: dict[str, pd.DataFrame], titles: dict, reference: str = "sft") -> pd.DataFrame:
    """One row per run (``logs``' order) with the columns of ``EFFICIENCY_COLUMNS``: median ``step_time_s``,
    max ``peak_mem_mb``, median ``tokens_per_s``, the number of steps, and time and memory divided by
    ``reference``'s (NaN when ``reference`` is not among the runs)."""
    eff = pd.DataFrame([{"run": r, "method": titles.get(r, r), "steps": len(d),
                         "s_per_step_median": d.step_time_s.median(), "peak_mem_mib": d.peak_mem_mb.max(),
                         "tokens_per_s_median": d.tokens_per_s.median()} for r, d in logs.items()])
    ref = eff.set_index("run").loc[reference] if reference in logs else None
    eff["s_per_step_vs_sft"] = eff.s_per_step_median / ref.s_per_step_median if ref is not None else np.nan
    eff["peak_mem_vs_sft"] = eff.peak_mem_mib / ref.peak_mem_mib if ref is not None else np.nan
    if not any("gen_s" in d for d in logs.values()):
        return eff[EFFICIENCY_COLUMNS]
    gen = [d.gen_s if "gen_s" in d else pd.Series(0.0, index=d.index) for d in logs.values()]
    eff["on_policy_steps"] = [int((d.on_policy > 0).sum()) if "on_policy" in d else 0 for d in logs.values()]
    eff["gen_s_per_step"] = [g.mean() for g in gen]
    eff["gen_share"] = [g.sum() / d.step_time_s.sum() for g, d in zip(gen, logs.values())]
    return eff[EFFICIENCY_COLUMNS + GENERATION_COLUMNS]


def curves_frame(logs: dict[str, pd.DataFrame], titles: dict) -> pd.DataFrame:
    """Every numeric loss term of every step: ``run, method, step, term, value`` (runs in ``logs``' order,
    steps ascending, terms in the log's order)."""
    parts = []
    for r, d in logs.items():
        terms = [c for c in d.columns if c not in NOT_TERMS and not str(c).startswith("dev_")
                 and pd.api.types.is_numeric_dtype(d[c]) and not pd.api.types.is_bool_dtype(d[c])]
        long = d.melt(id_vars=["step"], value_vars=terms, var_name="term", value_name="value").dropna()
        long = long.sort_values("step", kind="stable")  # melt lists term by term; keep the terms' order per step
        parts.append(long.assign(run=r, method=titles.get(r, r)))
    if not parts:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    out = pd.concat(parts, ignore_index=True)[CURVE_COLUMNS]
    out["step"] = out.step.astype(int)
    return out


def _x(v: float) -> str:
    return "–" if np.isnan(v) else f"{v:.2f}×"


def efficiency_wide(eff: pd.DataFrame) -> pd.DataFrame:
    """The Markdown/LaTeX view of ``efficiency_frame``."""
    out = pd.DataFrame({"s/step (median)": eff.s_per_step_median.map(lambda v: f"{v:.3f}"),
                        "s/step × SFT": eff.s_per_step_vs_sft.map(_x),
                        "peak memory (MiB)": eff.peak_mem_mib.map(lambda v: f"{v:,.0f}"),
                        "memory × SFT": eff.peak_mem_vs_sft.map(_x),
                        "tokens/s (median)": eff.tokens_per_s_median.map(lambda v: f"{v:,.0f}"),
                        "steps": eff.steps})
    if "gen_share" in eff:
        out["on-policy steps"] = eff.on_policy_steps.to_numpy()
        out["generation s/step (mean)"] = eff.gen_s_per_step.map(lambda v: f"{v:.3f}").to_numpy()
        out["generation share of time"] = eff.gen_share.map(lambda v: f"{v:.0%}").to_numpy()
    out.index = pd.Index(eff.method, name="Method")
    return out


def published_efficiency(eff: pd.DataFrame, pub: dict, titles: dict) -> pd.DataFrame:
    """Ours and the paper's seconds per step and peak memory, and both as ratios to ``pub['reference']``
    (ours: our reference run's; NaN where a run or the reference is missing), for the runs of ``pub['runs']``
    that we ran. Columns: ``run, method, s_per_step_median, published_s_per_step, s_per_step_vs_ref,
    published_s_per_step_vs_ref, peak_mem_mib, published_peak_mem_gb, peak_mem_vs_ref,
    published_peak_mem_vs_ref``."""
    ref = pub["reference"]
    ours = eff.set_index("run")
    p_ref = pub["runs"].get(ref)
    lines = []
    for r, p in pub["runs"].items():
        if r not in ours.index:
            continue
        o = ours.loc[r]
        has_ref = ref in ours.index
        lines.append({"run": r, "method": titles.get(r, r),
                      "s_per_step_median": o.s_per_step_median, "published_s_per_step": p["s_per_step"],
                      "s_per_step_vs_ref": o.s_per_step_median / ours.at[ref, "s_per_step_median"] if has_ref
                      else np.nan,
                      "published_s_per_step_vs_ref": p["s_per_step"] / p_ref["s_per_step"] if p_ref else np.nan,
                      "peak_mem_mib": o.peak_mem_mib, "published_peak_mem_gb": p["peak_mem_gb"],
                      "peak_mem_vs_ref": o.peak_mem_mib / ours.at[ref, "peak_mem_mib"] if has_ref else np.nan,
                      "published_peak_mem_vs_ref": p["peak_mem_gb"] / p_ref["peak_mem_gb"] if p_ref else np.nan})
    return pd.DataFrame(lines, columns=["run", "method", "s_per_step_median", "published_s_per_step",
                                        "s_per_step_vs_ref", "published_s_per_step_vs_ref", "peak_mem_mib",
                                        "published_peak_mem_gb", "peak_mem_vs_ref", "published_peak_mem_vs_ref"])


def efficiency_table(runs_dir: Path | str, runs: list[str], titles: dict, published: dict | None = None) -> dict:
    """Read the runs' logs; ``published``: ``config/published.yaml``'s ``efficiency`` entry, or None."""
    logs = read_logs(runs_dir, runs)
    eff = efficiency_frame(logs, titles)
    out = {"frame": eff, "table": efficiency_wide(eff), "curves": curves_frame(logs, titles), "published": None}
    if published is not None:
        pe = published_efficiency(eff, published, titles)
        ref_title = titles.get(published["reference"], published["reference"])
        ref_paper = published["runs"].get(published["reference"], {}).get("paper_name", published["reference"])
        view = pd.DataFrame({"s/step (ours)": pe.s_per_step_median.map(lambda v: f"{v:.3f}"),
                             "s/step (published)": pe.published_s_per_step.map(lambda v: f"{v:.2f}"),
                             f"s/step × {ref_title} (ours)": pe.s_per_step_vs_ref.map(_x),
                             f"s/step × {ref_paper} (published)": pe.published_s_per_step_vs_ref.map(_x),
                             "peak MiB (ours)": pe.peak_mem_mib.map(lambda v: f"{v:,.0f}"),
                             "peak GB (published)": pe.published_peak_mem_gb.map(lambda v: f"{v:.2f}"),
                             f"memory × {ref_title} (ours)": pe.peak_mem_vs_ref.map(_x),
                             f"memory × {ref_paper} (published)": pe.published_peak_mem_vs_ref.map(_x)})
        view.index = pd.Index(pe.method, name="Method")
        src = published["source"]
        out["published"] = {"frame": pe, "table": view, "source": f"{src['paper']}, {src['table']}"}
        cols = pe[["run", "published_s_per_step", "published_peak_mem_gb"]].assign(
            published_source=out["published"]["source"])
        out["frame"] = eff.merge(cols, on="run", how="left")
    return out


def write_efficiency(t: dict, out: Path, name: str = "efficiency", curves: str = "train_curves.csv") -> None:
    """``name``.{md,csv,tex} and the loss curves ``curves`` (long CSV) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    title = "Training cost per run (median over optimiser steps; peak memory: maximum over steps)"
    note = ("Peak memory: torch.cuda.max_memory_allocated on a GPU, the training process's maximum resident set "
            "size on a CPU (model, teacher and Python included). tokens/s: input tokens (prompt + response) "
            "per second. Wall-clock times of this machine, beside whatever else it ran.")
    if "gen_share" in t["frame"]:
        note += (" On-policy runs: s/step includes the student's sampling; on-policy steps are those with a "
                 "micro-batch of the student's samples, generation s/step the sampling seconds averaged over all "
                 "steps, generation share those seconds over the training seconds.")
    md = [f"## {title}\n", to_markdown(t["table"]), "", note]
    tex = [f"% {title}", to_latex(t["table"]), latex_text(note)]
    pub = t.get("published")
    if pub is not None:
        ptitle = "Published (paper) beside ours: seconds per step and peak memory, and ratios to the reference"
        src = (f"Published: {pub['source']} (config/published.yaml; no pair or GPU is given for these numbers, "
               f"docs/methods.md, Published numbers): compare the ratios, not the seconds or gigabytes.")
        md += ["", f"## {ptitle}\n", to_markdown(pub["table"]), "", src]
        tex += [f"% {ptitle}", to_latex(pub["table"]), latex_text(src)]
    write_table_files(out, name, md, tex, t["frame"], title="Training cost")
    with atomic_file(out / curves) as tmp:
        t["curves"].to_csv(tmp, index=False)
