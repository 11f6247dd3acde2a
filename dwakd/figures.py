"""Figures from the result tables only (``<results_dir>/tables/*.csv``), as PNG and PDF (``dwakd figures``).

Every ``plot_*`` function is pure: it takes pandas DataFrames in the tables' long formats and returns a
``matplotlib.figure.Figure`` (object-oriented API, no pyplot state, so it draws the same under the Agg backend
of the workflow and inline in a notebook — ``notebooks/figures.py`` calls the same functions):

* ``plot_attention``: cross-model attention heatmaps of one sample, one panel per run side by side (student
  response tokens on the y axis, teacher response tokens on the x axis, one shared colour scale), with
  DWA-KD's band (centre line and centre ± half-width) over the runs of ``attention_band.csv``;
* ``plot_probe``: the token-alignment probe (``alignment_probe.csv``) against a uniform attention;
* ``plot_train_curves``: loss terms over the optimiser steps, one panel per term, one line per method
  (``train_curves.csv``: run, method, step, term, value);
* ``plot_rouge``: ROUGE-L per method and set with the seed std as error bars (``main.csv``); the copy floor
  (run ``copy``) is a labelled dashed reference line over each set, not a bar, and the y axis is scaled to the
  methods' bars.

Methods are told apart by ``method_colors``: distinct colours for up to 60 methods (tab10, tab20, then tab20b
and tab20c), not colours that repeat after ten.

``write_figures`` reads the folder and writes them all; a table that is missing or empty gives a figure that
says so, so the set of files is always the same.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

DPI = 150
CELL = 0.17  # inches per heatmap cell
COPY_RUN = "copy"  # the main table's copy-instruction-and-input floor (dwakd.report.COPY)

#: units of the logged loss terms (the loop divides every token-summed term by the response-token count)
TERM_UNITS = {
    "loss": "nats / token", "ce": "nats / token", "ce_t2s": "nats / token", "kd_stu": "nats / token",
    "kd_tea": "nats / token", "kd": "nats / token", "ga": "nats / token", "uld": "L1 distance / token",
    "dtw_emb": "Soft-DTW cost / token",
    "dtw_hid": "Soft-DTW cost / token", "t2s_acc": "fraction of tokens", "t2s_agree": "fraction of tokens",
    "aligned_ratio": "fraction of tokens", "conf_t2s": "probability", "lr": "learning rate",
    "grad_norm": "L2 norm", "tokens_per_s": "tokens / s", "step_time_s": "s", "peak_mem_mb": "MiB",
}
#: readable names of the logged terms (panel titles; the raw name follows in brackets); a method's
#: ``term_labels`` (``dwakd.methods.base.Method``) name its own terms over these (``labels`` of plot_train_curves)
TERM_TITLES = {
    "loss": "total loss", "ce": "CE on the gold response", "ce_t2s": "CE of the projected teacher (t2s)",
    "kd_stu": "KD in the student's space", "kd_tea": "KD in the teacher's space", "ga": "key–query GA (BCE)",
    "kd": "KD on aligned tokens (KL)", "uld": "ULD (sorted probabilities)",
    "dtw_emb": "Soft-DTW, embeddings", "dtw_hid": "Soft-DTW, hidden states", "t2s_acc": "t2s accuracy",
    "t2s_agree": "t2s agreement", "aligned_ratio": "aligned tokens", "conf_t2s": "gate: max p_t2s",
    "lr": "learning rate", "grad_norm": "gradient norm",
}


# ---------------------------------------------------------------------------------------------- tokens


def _byte_table() -> dict[str, int]:
    """Character → byte of byte-level BPE's printable byte alphabet (GPT-2 style): printable Latin-1 bytes
    stand for themselves, the other 68 bytes for the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in keep}
    extra = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_OF = _byte_table()
_VISIBLE = {" ": "␣", "\n": "↵", "\r": "↵", "\t": "⇥", "Ġ": "␣", "▁": "␣"}


def clean_token(tok, max_chars: int = 12) -> str:
    """A token string as a readable axis label: byte-level BPE characters and ``<0xNN>`` byte-fallback tokens
    decoded where they form text, space markers (``Ġ``, ``▁``, a space) shown as ``␣``, newlines as ``↵``, tabs as
    ``⇥``, other control characters as ``·``, shortened to ``max_chars`` with ``…``, and ``$`` escaped so that
    matplotlib does not read mathtext."""
    t = "" if tok is None or (isinstance(tok, float) and math.isnan(tok)) else str(tok)
    m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", t)
    if m:
        b = int(m.group(1), 16)
        t = chr(b) if b < 0x80 else t
    elif t and all(c in _BYTE_OF for c in t) and any(ord(c) > 0x7E for c in t):
        try:
            t = bytes(_BYTE_OF[c] for c in t).decode("utf-8")
        except UnicodeDecodeError:
            pass  # a piece of a multi-byte character: keep the token as written
    t = "".join(_VISIBLE.get(c, "·" if ord(c) < 32 or ord(c) == 127 else c) for c in t)
    if not t:
        t = "∅"
    if len(t) > max_chars:
        t = t[:max_chars - 1] + "…"
    return t.replace("$", r"\$")


def _axis_tokens(df: pd.DataFrame, pos: str, tok: str) -> list[str]:
    first = df.drop_duplicates(pos).sort_values(pos)
    return [clean_token(x) for x in first[tok]]


# ---------------------------------------------------------------------------------------------- figures


def method_colors(n: int) -> list:
    """``n`` distinct colours, one per method: tab10 up to 10; tab20 up to 20 (its ten darker shades first,
    so the first ten are tab10's hues); tab20 + tab20b + tab20c up to 60; evenly spaced hues of ``hsv`` beyond."""
    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors[:n])
    t20 = matplotlib.colormaps["tab20"].colors
    pool = [*t20[0::2], *t20[1::2]]
    if n > 20:
        pool += [*matplotlib.colormaps["tab20b"].colors, *matplotlib.colormaps["tab20c"].colors]
    if n > len(pool):
        return [tuple(c) for c in matplotlib.colormaps["hsv"](np.arange(n) / n)]
    return list(pool[:n])


def placeholder(title: str, message: str) -> Figure:
    """A small figure that says why there is nothing to draw."""
    fig = Figure(figsize=(6, 2), layout="constrained")
    ax = fig.add_subplot()
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return fig


def plot_attention(att: pd.DataFrame, band: pd.DataFrame | None = None, sample: str | None = None) -> Figure:
    """Heatmaps of ``A_t2s`` for one sample (rows of ``attention.csv``; ``sample``: which one, default the
    first), one panel per run in the table's order; ``band`` (rows of ``attention_band.csv``) is drawn over
    the panels of its runs."""
    if sample is None:
        sample = att["sample"].iloc[0]
    att = att[att["sample"] == sample]
    runs = list(dict.fromkeys(att["run"]))
    if not runs:
        return placeholder("Cross-model attention", f"no attention rows for sample {sample}")
    first = att[att["run"] == runs[0]]
    y_labels = _axis_tokens(first, "i", "student_token")
    x_labels = _axis_tokens(first, "j", "teacher_token")
    S, T = len(y_labels), len(x_labels)
    vmax = float(att["weight"].max()) or 1.0
    label_w = 0.06 * max(len(s) for s in y_labels) + 0.45  # inches of the 7 pt tick labels and the axis label
    label_h = 0.06 * max(len(s) for s in x_labels) + 0.45
    width = len(runs) * (T * CELL + 0.25) + label_w + 1.3
    height = S * CELL + label_h + 0.9
    fig = Figure(figsize=(max(width, 6.0), max(height, 3.5)), layout="constrained")
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    im = None
    has_band = False
    for ax, run in zip(axes, runs):
        d = att[att["run"] == run]
        grid = np.full((S, T), np.nan)
        grid[d["i"].to_numpy(), d["j"].to_numpy()] = d["weight"].to_numpy()
        im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=vmax, aspect="equal", interpolation="nearest")
        ax.set_title(str(d["method"].iloc[0]), fontsize=10)
        ax.set_xticks(range(T), x_labels, rotation=90, fontsize=7)
        ax.set_yticks(range(S), y_labels, fontsize=7)
        ax.set_xlabel("teacher response token (position j)", fontsize=8)
        if band is not None and len(band):
            b = band[(band["run"] == run) & (band["sample"] == sample)].sort_values("i")
            b = b[b["i"] < S]
            if len(b):
                has_band = True
                y = b["i"].to_numpy()
                c, w = b["centre"].to_numpy(), b["half_width"].to_numpy()
                ax.plot(c, y, color="#ff3b30", lw=1.6, label="band centre $c_i$")
                ax.plot(c - w, y, color="#ff3b30", lw=1.0, ls="--", label=r"$c_i \pm w_i$ (band edges)")
                ax.plot(c + w, y, color="#ff3b30", lw=1.0, ls="--")
                ax.set_xlim(-0.5, T - 0.5)
                ax.set_ylim(S - 0.5, -0.5)
    axes[0].set_ylabel("student response token (position i)", fontsize=8)
    cbar = fig.colorbar(im, ax=list(axes), shrink=min(1.0, max(0.5, 3.0 / max(height, 1))), pad=0.01)
    cbar.set_label(r"attention weight $A_{t2s}[i, j]$ (rows sum to 1)", fontsize=8)
    title = f"Cross-model attention (teacher → student) on sample {sample}: response tokens"
    if has_band:  # explained in the title: a legend box would cover labels or the maps
        title += "\nred: DWA-KD's Soft-DTW band, centre $c_i$ (solid) and edges $c_i \\pm w_i$ (dashed)"
    fig.suptitle(title, fontsize=10)
    return fig


def plot_probe(probe: pd.DataFrame) -> Figure:
    """``alignment_probe.csv``: per run, the attention mass and the top-1 share on the ETA-aligned teacher
    token, against the value of a uniform attention."""
    if probe.empty:
        return placeholder("Token-alignment probe", "no run with cross-model attention")
    n = len(probe)
    fig = Figure(figsize=(max(6.0, 1.1 * n + 2.5), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n)
    w = 0.27
    series = [("mass_on_aligned", "attention mass on the aligned token", "#1f77b4", None),
              ("top1_on_aligned", "row maximum is the aligned token", "#ff7f0e", None),
              ("chance", "uniform attention (1/T)", "#bbbbbb", "//")]
    for k, (col, label, color, hatch) in enumerate(series):
        ax.bar(x + (k - 1) * w, probe[col].to_numpy(dtype=float), w, label=label, color=color, hatch=hatch,
               edgecolor="#555555" if hatch else None)
    names = [f"{m}\n({int(p)} pairs)" for m, p in zip(probe["method"], probe["n_aligned_pairs"])]
    ax.set_xticks(x, names, fontsize=8, rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center")
    top = float(np.nanmax(probe[["mass_on_aligned", "top1_on_aligned", "chance"]].to_numpy(dtype=float)))
    ax.set_ylim(0, min(1.0, max(0.05, top * 1.25)) if math.isfinite(top) else 1.0)
    ax.set_ylabel("share of the aligned student tokens (0–1)")
    ax.set_xlabel("run (aligned pairs: DSKD-ETA's exact token alignment)")
    ns = int(probe["n_samples"].max())
    ax.set_title(f"Token-alignment probe: does $A_{{t2s}}$ attend to the exactly aligned teacher token? "
                 f"({ns} samples)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_train_curves(curves: pd.DataFrame, terms: list[str] | None = None, ncols: int = 3,
                      labels: dict[str, str] | None = None) -> Figure:
    """``train_curves.csv`` (run, method, step, term, value): one panel per term, one line per method. Panel
    titles: ``labels`` (term → label: the methods' ``term_labels``, ``dwakd.registry.term_labels``), else
    ``TERM_TITLES``, with the raw term name in brackets."""
    if curves.empty:
        return placeholder("Training curves", "no training curves in the table")
    titles = {**TERM_TITLES, **(labels or {})}
    terms = terms or list(dict.fromkeys(curves["term"]))
    ncols = min(ncols, len(terms))
    nrows = math.ceil(len(terms) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    methods = list(dict.fromkeys(curves["method"]))
    colors = dict(zip(methods, method_colors(len(methods))))
    styles = {m: ("-", "--", ":", "-.")[(k // 10) % 4] for k, m in enumerate(methods)}
    for ax, term in zip(axes, terms):
        d = curves[curves["term"] == term]
        for m in methods:
            dm = d[d["method"] == m].sort_values("step")
            if len(dm):
                ax.plot(dm["step"], dm["value"], color=colors[m], ls=styles[m], lw=1.3, label=m)
        ax.set_title(f"{titles[term]} ({term})" if term in titles else term, fontsize=10)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(TERM_UNITS.get(term, "value / token"))
        ax.grid(alpha=0.3)
    for ax in axes[len(terms):]:
        ax.axis("off")
    seen: dict = {}  # one legend entry per method, whichever panel has its line
    for ax in axes[:len(terms)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if len(axes) > len(terms):  # an empty panel: the legend goes there
        axes[len(terms)].legend(list(seen.values()), list(seen), loc="center", fontsize=9, title="method")
    else:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=min(len(seen), 5),
                   fontsize=8, title="method")
    fig.suptitle("Training curves: loss terms per optimiser step (per response token)", fontsize=11)
    return fig


def plot_rouge(main: pd.DataFrame) -> Figure:
    """``main.csv`` (long format): ROUGE-L per method (bars) and set (groups), error bars = std over seeds.

    The copy floor (run ``copy``) is a dashed reference line across each set's group, labelled with its value,
    and does not set the scale: the y axis spans the methods' bars (with their error bars); a floor above that
    is drawn at the top edge and labelled "↑ off scale"."""
    d = main[(main["metric"] == "rougeL") & (main["set"] != "avg_published")]  # that one: published pairs only
    if d.empty:
        return placeholder("ROUGE-L", "no ROUGE-L rows in the table")
    sets = list(dict.fromkeys(d["set_title"]))
    floor = d[d["run"].astype(str) == COPY_RUN]
    d = d[d["run"].astype(str) != COPY_RUN]
    if d.empty:
        return placeholder("ROUGE-L", "no ROUGE-L rows of a method in the table (only the copy floor)")
    methods = list(dict.fromkeys(d["method"]))
    n_m = max(len(methods), 1)
    fig = Figure(figsize=(max(7.0, 0.16 * n_m * len(sets) + 4.5), 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(sets))
    w = 0.8 / n_m
    top = 0.0
    for k, (m, color) in enumerate(zip(methods, method_colors(len(methods)))):
        dm = d[d["method"] == m].set_index("set_title").reindex(sets)
        mean, std = dm["mean"].to_numpy(dtype=float), dm["std"].fillna(0).to_numpy(dtype=float)
        ax.bar(x + (k - (n_m - 1) / 2) * w, mean, w, yerr=[np.minimum(std, np.nan_to_num(mean)), std], capsize=2,
               label=m, color=color, error_kw={"lw": 0.8})
        top = max(top, float(np.nanmax(np.append(mean + std, 0.0))))
    top = top * 1.12 if top > 0 else 1.0
    ax.set_ylim(0, top)
    if len(floor):
        f = floor.set_index("set_title").reindex(sets)["mean"].to_numpy(dtype=float)
        label = f"{floor['method'].iloc[0]} (floor, reference line)"
        for i, v in enumerate(f):
            if not math.isfinite(v):
                continue
            off = v > top
            y = 0.985 * top if off else v  # off scale: just under the top edge, where the dashes show
            ax.hlines(y, x[i] - 0.45, x[i] + 0.45, colors="#333333", linestyles="--", lw=1.4, zorder=3,
                      label=label)
            label = None  # one legend entry
            ax.annotate(f"copy {v:.1f}" + (" ↑ off scale" if off else ""), (x[i] + 0.45, y),
                        xytext=(0, -9 if off else 2), textcoords="offset points", ha="right", fontsize=7,
                        color="#333333", bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none",
                                               "alpha": 0.7}, zorder=4)
    ax.set_xticks(x, sets)
    ax.set_xlabel("evaluation set (Avg: mean over the sets, per seed)")
    ax.set_ylabel("ROUGE-L F1 (×100)")
    seeds = d["n_seeds"].max()
    ax.set_title(f"ROUGE-L per method and set (mean ± std over {int(seeds)} generation seeds; error bars clipped at 0)",
                 fontsize=11)
    fig.legend(loc="outside right upper", fontsize=8, title="method")
    ax.grid(axis="y", alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------------- files


def read_table(path: Path) -> pd.DataFrame | None:
    """A tables CSV (token columns kept as written: no NaN for 'nan', 'NULL' or empty tokens), or None."""
    if not path.exists():
        return None
    try:
        return pd.read_csv(path, keep_default_na=False, na_values={"weight": [""], "mean": [""], "std": [""]},
                           dtype={"student_token": str, "teacher_token": str, "sample": str, "method": str,
                                  "run": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        from dwakd.errors import DataError
        from dwakd.files import regenerate_hint

        raise DataError(f"{path}: unreadable table ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                        f"{regenerate_hint(path)}") from None


def save(fig: Figure, out: Path, name: str) -> list[Path]:
    """``out/name.png`` (150 dpi) and ``out/name.pdf``, each written under a temporary name first."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{name}.{ext}"
        tmp = out / f".{name}.{ext}.tmp"
        fig.savefig(tmp, format=ext, dpi=DPI, bbox_inches="tight")
        tmp.replace(p)
        paths.append(p)
    return paths


def write_figures(tables: Path, out: Path, attention_figures: int | None = None,
                  term_labels: dict[str, str] | None = None) -> list[Path]:
    """Every figure from the CSV files of ``tables``: ``attention_<k>`` (k = 1 … one per sample of
    attention.csv, or exactly ``attention_figures``), ``alignment_probe``, ``train_curves`` (panel titles:
    ``term_labels`` over ``TERM_TITLES``), ``rougeL``."""
    tables, out = Path(tables), Path(out)
    written: list[Path] = []
    att = read_table(tables / "attention.csv")
    band = read_table(tables / "attention_band.csv")
    samples = list(dict.fromkeys(att["sample"])) if att is not None else []
    n = len(samples) if attention_figures is None else attention_figures
    for k in range(n):
        if k < len(samples):
            fig = plot_attention(att, band, samples[k])
        else:
            why = "attention.csv missing" if att is None else f"attention.csv has {len(samples)} sample(s)"
            fig = placeholder("Cross-model attention", f"no sample {k + 1}: {why}")
        written += save(fig, out, f"attention_{k + 1}")
    sources = [("alignment_probe", "alignment_probe.csv", plot_probe),
               ("train_curves", "train_curves.csv", lambda df: plot_train_curves(df, labels=term_labels)),
               ("rougeL", "main.csv", plot_rouge)]
    for name, csv, plot in sources:
        df = read_table(tables / csv)
        fig = placeholder(name, f"{tables / csv}: not found") if df is None else plot(df)
        written += save(fig, out, name)
    return written
