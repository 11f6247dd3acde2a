"""Result tables: runs × evaluation sets, mean ± std over generation seeds, plus the average.

The average column is computed per seed (the mean over sets of that seed's ROUGE-L) and then summarised
over seeds, so its ± is the seed spread of the average, not a sum of the per-set spreads.

Besides the means, a table can carry

- significance markers: a ROUGE-L or bits-per-byte cell whose difference from a baseline run
  (``report.baselines``: SFT, DSKD-CMA) is not significant (the 95 % paired-bootstrap CI over prompts includes
  0, ``dwakd.stats``) gets that baseline's marker (°, †, ...), explained under the table (bpb: only when both
  eval JSONs hold per-prompt bits, ``bpb_samples``); ``significance_table`` writes the differences, CIs,
  p-values and minimum detectable differences themselves;
- published numbers (``config/published.yaml``, when the profile's pair is one of its pairs): a section
  "Published (paper) and difference" with ours, published and ours − published per run and set, and the
  ``published``, ``diff`` and ``published_source`` columns in the CSV.

Every table is written as Markdown, LaTeX, CSV (long format) and a standalone HTML page of the Markdown
(``markdown_html``), which the Snakemake report shows in the page.

Torch-free (pandas, numpy).
"""

from __future__ import annotations

import html
import re
import statistics
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import yaml

from dwakd.errors import ConfigError, DataError
from dwakd.files import read_json, regenerate_hint
from dwakd.stats import (MDD_POWER, BootstrapConfig, bpb_ids, has_bpb_samples, mdd_factor, paired_bootstrap, paired_bpb,
                         paired_differences)

COPY, TEACHER = "copy", "teacher"  # the rows of the main table that are not runs
METRICS = {"rougeL": "ROUGE-L", "bpb": "bits per byte"}  # the compared metrics, in the tables' order
DIGITS = {"rougeL": 2, "bpb": 4}  # decimals of the significance tables' differences
MARKERS = ("°", "†", "‡")  # one per entry of report.baselines, in order
PUBLISHED_SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "published.schema.yaml"
_LATEX = {"±": r"$\pm$", "°": r"$^{\circ}$", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$", "−": r"$-$",
          "→": r"$\to$", "×": r"$\times$"}


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "–"
    return f"{mean:.{digits}f}" if not std else f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(df: pd.DataFrame, index: bool = True) -> str:
    """``df.to_markdown`` printing the cells as formatted (tabulate would re-format "2.070" as "2.07")."""
    return df.to_markdown(index=index, disable_numparse=True)


def to_latex(df: pd.DataFrame, index: bool = True) -> str:
    """``df.to_latex`` with the cells escaped, then ±, markers, − → × as LaTeX math."""
    tex = df.to_latex(escape=True, index=index)
    for k, v in _LATEX.items():
        tex = tex.replace(k, v)
    return tex


def latex_text(text: str) -> str:
    """A line of prose for a .tex file: LaTeX's special characters escaped, symbols as math."""
    for k, v in {"\\": r"\textbackslash{}", "%": r"\%", "&": r"\&", "_": r"\_", "#": r"\#"}.items():
        text = text.replace(k, v)
    for k, v in _LATEX.items():
        text = text.replace(k, v)
    return text


# ------------------------------------------------------------------------------------ evaluations


_HTML_STYLE = """body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 1.2em 1.5em; color: #1f2328; background: #fff; }
h1 { font-size: 1.3em; } h2 { font-size: 1.08em; margin: 1.5em 0 0.4em; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.3em 0 0.6em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; white-space: nowrap; }
th { background: #f3f5f7; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #f9fafb; } td:first-child { font-weight: 600; }
p { font-size: 0.86em; max-width: 72em; margin: 0.3em 0; } p.source { color: #656d76; margin-top: 1.5em; }"""
_NUMERIC = re.compile(r"^([+\-−]?\d|–$)")  # numbers, and "–" (no value), are right-aligned


def _md_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_html(md: list[str], title: str, source: str = "") -> str:
    """A standalone HTML page of a table file's Markdown (the lines of ``write_table_files``: ``#``/``##``
    headings, pipe tables as ``to_markdown`` writes them, any other line a paragraph), cells escaped and
    numeric cells right-aligned: what the Snakemake report shows in the page."""
    lines = "\n".join(md).splitlines()
    body = [f"<h1>{html.escape(title)}</h1>"]
    k = 0
    while k < len(lines):
        ln = lines[k].strip()
        if ln.startswith("|"):
            block = []
            while k < len(lines) and lines[k].strip().startswith("|"):
                block.append(_md_cells(lines[k]))
                k += 1
            head = block[0]
            rows = [r for r in block[1:] if not all(set(c) <= set(":-") and c for c in r)]
            body.append("<table>\n<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                        + "</tr></thead>\n<tbody>")
            for r in rows:
                cells = "".join(("<td class='num'>" if _NUMERIC.match(c) else "<td>") + f"{html.escape(c)}</td>"
                                for c in r)
                body.append(f"<tr>{cells}</tr>")
            body.append("</tbody>\n</table>")
            continue
        if ln.startswith("#"):
            level = min(max(len(ln) - len(ln.lstrip("#")), 2), 6)  # h1: the page's title
            body.append(f"<h{level}>{html.escape(ln.lstrip('#').strip())}</h{level}>")
        elif ln:
            body.append(f"<p>{html.escape(ln)}</p>")
        k += 1
    if source:
        body.append(f'<p class="source">{html.escape(source)}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{_HTML_STYLE}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_table_files(out: Path, name: str, md: list[str], tex: list[str], frame, title: str | None = None) -> None:
    """``out/name.{md,tex,csv,html}``: the Markdown and LaTeX lines, the long-format data frame and the HTML page
    of the Markdown (``markdown_html``, headed ``title``), each written atomically (a partial table is never
    left in place of a result)."""
    from dwakd.atomic import atomic_file, atomic_write_text

    atomic_write_text(out / f"{name}.md", "\n".join(md) + "\n")
    atomic_write_text(out / f"{name}.html", markdown_html(
        md, title or name, f"tables/{name}.html: the tables of {name}.md; also {name}.tex (LaTeX) and "
                           f"{name}.csv (long format, every number unrounded)"))
    atomic_write_text(out / f"{name}.tex", "\n".join(tex) + "\n")
    with atomic_file(out / f"{name}.csv") as tmp:
        frame.to_csv(tmp, index=False)


def eval_file(eval_dir: Path, run: str, s: str) -> Path:
    return Path(eval_dir) / run / f"{s}.json"


def load_results(eval_dir: Path, rows: list[str], sets: list[str]) -> dict:
    res = {}
    for r in rows:
        for s in sets:
            f = eval_file(eval_dir, r, s)
            if not f.exists():
                raise FileNotFoundError(f"{f}: no evaluation result for run {r!r} on set {s!r}")
            res[r, s] = read_json(f, "evaluation result")
            missing = [k for k in ("summary", "seeds", "ids") if not isinstance(res[r, s], dict) or k not in res[r, s]]
            if missing:
                raise DataError(f"{f}: not an evaluation result of `dwakd eval` (no {', '.join(missing)}); "
                                f"{regenerate_hint(f)}")
    return res


def seed_averages(res: dict, run: str, sets: list[str]) -> list[float]:
    """The run's ROUGE-L averaged over ``sets``, one value per generation seed (seeds common to all sets)."""
    seeds = set.intersection(*(set(res[run, s]["seeds"]) for s in sets))
    return [statistics.fmean(res[run, s]["seeds"][k]["rougeL"] for s in sets) for k in sorted(seeds)]


def long_frame(res: dict, rows: list[str], sets: list[str], titles: dict, set_titles: dict) -> pd.DataFrame:
    """One line per (run, set, metric) including the 'avg' pseudo-set."""
    lines = []
    for r in rows:
        for s in sets:
            d = res[r, s]
            sm = d["summary"]
            lines.append({"run": r, "method": titles.get(r, r), "set": s, "set_title": set_titles[s],
                          "metric": "rougeL", "mean": sm["rougeL"]["mean"], "std": sm["rougeL"]["std"],
                          "n_seeds": sm["rougeL"]["n"], "n_samples": len(d["ids"])})
            if sm.get("bpb") is not None:
                lines.append({"run": r, "method": titles.get(r, r), "set": s, "set_title": set_titles[s],
                              "metric": "bpb", "mean": sm["bpb"], "std": 0.0, "n_seeds": 1,
                              "n_samples": len(bpb_ids(d))})  # bpb may cover more prompts (eval.bpb_limit)
        avg_seed = seed_averages(res, r, sets)
        lines.append({"run": r, "method": titles.get(r, r), "set": "avg", "set_title": "Avg", "metric": "rougeL",
                      "mean": statistics.fmean(avg_seed),
                      "std": statistics.stdev(avg_seed) if len(avg_seed) > 1 else 0.0,
                      "n_seeds": len(avg_seed), "n_samples": None})
        bpbs = [res[r, s]["summary"].get("bpb") for s in sets]
        if all(b is not None for b in bpbs):
            lines.append({"run": r, "method": titles.get(r, r), "set": "avg", "set_title": "Avg", "metric": "bpb",
                          "mean": statistics.fmean(bpbs), "std": 0.0, "n_seeds": 1, "n_samples": None})
    return pd.DataFrame(lines)


def wide(df: pd.DataFrame, metric: str, rows: list[str], titles: dict, columns: list[str], digits: int,
         markers: dict | None = None) -> pd.DataFrame:
    """Methods × ``columns`` (set titles and Avg) of formatted ``mean ± std`` cells; ``markers``:
    ``(run, set_title)`` → a suffix (significance markers)."""
    sub = df[df.metric == metric]
    markers = markers or {}
    table = {}
    for r in rows:
        cells = {}
        for _, x in sub[sub.run == r].iterrows():
            cells[x.set_title] = _fmt(x["mean"], x["std"], digits) + markers.get((r, x.set_title), "")
        table[titles.get(r, r)] = {c: cells.get(c, "–") for c in columns}
    out = pd.DataFrame.from_dict(table, orient="index", columns=columns)
    out.index.name = "Method"
    return out


# ------------------------------------------------------------------------------------ significance


def bpb_comparable(res: dict, run: str, sets: list[str]) -> bool:
    """Whether every eval JSON of ``run`` on ``sets`` holds per-prompt bits and bytes (``bpb_samples``)."""
    return all(has_bpb_samples(res[run, s]) for s in sets)


def significance_frame(res: dict, eval_dir: Path, rows: list[str], baselines: list[str], sets: list[str],
                       titles: dict, set_titles: dict, boot: BootstrapConfig) -> pd.DataFrame:
    """Paired bootstrap (``dwakd.stats.paired_bootstrap``) of every run of ``rows`` (but the copy floor and the
    baseline itself) against every baseline of ``baselines`` that is in ``rows``, on each metric: one line per
    (metric, baseline, run, set or avg) with ``metric`` (``rougeL``: ROUGE-L ×100, prompts' scores pooled over
    seeds; ``bpb``: bits per byte, lower is better, only where both runs' eval JSONs hold ``bpb_samples``),
    ``mean_diff`` (run − baseline), ``ci_low``, ``ci_high``, ``p_value``, ``significant``, ``se`` and ``mdd``
    (the bootstrap standard error and the minimum detectable difference, ``dwakd.stats``), ``n_prompts``, the
    seeds of each side (bpb: 1, it is deterministic) and the bootstrap settings."""
    lines = []
    present = [b for b in baselines if b in rows]
    for metric in METRICS:
        for b in present:
            if metric == "bpb" and not bpb_comparable(res, b, sets):
                continue
            for r in rows:
                if r in (b, COPY) or (metric == "bpb" and not bpb_comparable(res, r, sets)):
                    continue
                pair = paired_differences if metric == "rougeL" else paired_bpb
                diffs = {s: pair(res[r, s], res[b, s], str(eval_file(eval_dir, r, s)), str(eval_file(eval_dir, b, s)))
                         for s in sets}
                out = paired_bootstrap(diffs, boot.resamples, boot.ci, boot.seed)
                seeds = ((len(res[r, sets[0]]["seeds"]), len(res[b, sets[0]]["seeds"])) if metric == "rougeL"
                         else (1, 1))
                for s, x in out.iterrows():
                    lines.append({"run": r, "method": titles.get(r, r), "baseline": b,
                                  "baseline_method": titles.get(b, b), "metric": metric, "set": s,
                                  "set_title": "Avg" if s == "avg" else set_titles[s],
                                  "mean_diff": x.mean_diff, "ci_low": x.ci_low, "ci_high": x.ci_high,
                                  "p_value": x.p_value, "significant": bool(x.significant), "se": x.se,
                                  "mdd": x.mdd, "n_prompts": int(x.n_prompts), "n_seeds": seeds[0],
                                  "n_seeds_baseline": seeds[1], "resamples": boot.resamples, "ci": boot.ci})
    cols = ["run", "method", "baseline", "baseline_method", "metric", "set", "set_title", "mean_diff", "ci_low",
            "ci_high", "p_value", "significant", "se", "mdd", "n_prompts", "n_seeds", "n_seeds_baseline",
            "resamples", "ci"]
    return pd.DataFrame(lines, columns=cols)


def marker_legend(sig: pd.DataFrame, baselines: list[str], boot: BootstrapConfig) -> tuple[dict, dict]:
    """``(markers, legend)``, each by metric (``rougeL``, ``bpb``): ``(run, set_title)`` → the markers of the
    baselines it is not significantly different from, and one legend line per baseline compared."""
    markers: dict = {m: {} for m in METRICS}
    legend: dict = {m: [] for m in METRICS}
    for metric in METRICS:
        for b, mark in zip(baselines, MARKERS):
            sub = sig[(sig.baseline == b) & (sig.metric == metric)]
            if sub.empty:
                continue
            for _, x in sub[~sub.significant].iterrows():
                markers[metric][x.run, x.set_title] = markers[metric].get((x.run, x.set_title), "") + mark
            how = ("seeds pooled" if metric == "rougeL"
                   else "Σ bits / Σ bytes of each run recomputed on every resample")
            legend[metric].append(
                f"{mark} not significantly different from {sub.baseline_method.iloc[0]} (paired bootstrap over "
                f"prompts, {how}: the {boot.ci * 100:g}% CI of the difference includes 0; "
                f"{boot.resamples:,} resamples)")
    return markers, legend


def _p(p: float, resamples: int) -> str:
    """p = 0 means no resample crossed 0: below the smallest non-zero value 2/B."""
    return f"< {2 / resamples:g}" if p == 0 else f"{p:.4f}"


def significance_wide(sig: pd.DataFrame, baseline: str, rows: list[str], titles: dict, columns: list[str],
                      metric: str = "rougeL"):
    """Methods × sets/Avg of ``+d [lo, hi], p`` cells for one baseline and metric."""
    sub = sig[(sig.baseline == baseline) & (sig.metric == metric)]
    n = DIGITS[metric]
    table = {}
    for r in rows:
        x = sub[sub.run == r]
        if x.empty:
            continue
        cells = {y.set_title: f"{y.mean_diff:+.{n}f} [{y.ci_low:+.{n}f}, {y.ci_high:+.{n}f}], "
                              f"p {_p(y.p_value, y.resamples)}" for _, y in x.iterrows()}
        table[titles.get(r, r)] = {c: cells.get(c, "–") for c in columns}
    out = pd.DataFrame.from_dict(table, orient="index", columns=columns)
    out.index.name = "Method"
    return out


def mdd_line(sig: pd.DataFrame, baseline: str, metric: str, columns: list[str], boot: BootstrapConfig) -> str:
    """The minimum detectable difference of one baseline and metric per set/Avg: the median of ``mdd`` over
    the runs compared (min–max when they differ)."""
    sub = sig[(sig.baseline == baseline) & (sig.metric == metric)]
    n = DIGITS[metric]
    cells = []
    for c in columns:
        v = sub[sub.set_title == c].mdd
        if v.empty:
            continue
        rng = f" ({v.min():.{n}f}–{v.max():.{n}f})" if v.max() - v.min() >= 0.5 * 10 ** -n else ""
        cells.append(f"{c} {v.median():.{n}f}{rng}")
    runs = sub.run.nunique()
    return (f"Minimum detectable difference ({METRICS[metric]}, median over the {runs} run{'s' * (runs != 1)} "
            f"compared, min–max in brackets): " + ", ".join(cells)
            + f". mdd = (z_{{1−α/2}} + z_{{power}}) × SE = {mdd_factor(boot.ci):.2f} × SE, with α = "
            f"{1 - boot.ci:.2g}, power {MDD_POWER:g} and SE the std of the bootstrap resamples: a true difference "
            f"this large is detected with {MDD_POWER:.0%} probability.")


def significance_table(eval_dir: Path, rows: list[str], baselines: list[str], sets: list[str], titles: dict,
                       set_titles: dict, boot: BootstrapConfig) -> dict:
    """Every run of ``rows`` against each baseline of ``baselines`` present in ``rows``, on ROUGE-L and (runs
    with per-prompt bits, ``bpb_samples``) bits per byte."""
    res = load_results(eval_dir, rows, sets)
    sig = significance_frame(res, eval_dir, rows, baselines, sets, titles, set_titles, boot)
    cols = [set_titles[s] for s in sets] + ["Avg"]
    present = [b for b in baselines if b in rows]
    sections = {(m, b): (significance_wide(sig, b, rows, titles, cols, m), mdd_line(sig, b, m, cols, boot))
                for m in METRICS for b in present if not sig[(sig.metric == m) & (sig.baseline == b)].empty}
    no_bpb = [titles.get(r, r) for r in rows if r != COPY and not bpb_comparable(res, r, sets)]
    return {"long": sig, "boot": boot, "sections": sections, "titles": titles, "no_bpb": no_bpb,
            "baselines": present,
            "by_baseline": {b: sections[m, b][0] for (m, b) in sections if m == "rougeL"}}


def write_significance(t: dict, out: Path, name: str = "significance") -> None:
    """``name``.md, .tex and .html (one section per metric and baseline, each with its minimum detectable
    difference), ``name``.csv (long format)."""
    out.mkdir(parents=True, exist_ok=True)
    boot = t["boot"]
    how = (f"Method − baseline: the observed difference [{boot.ci * 100:g}% percentile CI] and two-sided p-value "
           f"of a paired bootstrap over prompts ({boot.resamples:,} resamples, seed {boot.seed}; every comparison "
           f"on a set uses the same resampled prompts). ROUGE-L F1 ×100 (higher is better): mean over prompts of "
           f"the per-prompt difference, each prompt's score averaged over its seeds. Bits per byte (lower is "
           f"better: a negative difference favours the method): Σ bits / Σ bytes of the method minus the "
           f"baseline's, both recomputed on each resample. Avg: sets resampled independently, per-set differences "
           f"averaged.")
    md, tex = [], []
    for (metric, b), (table, mdd) in t["sections"].items():
        name_m = METRICS[metric][0].upper() + METRICS[metric][1:]
        better = "higher is better" if metric == "rougeL" else "lower is better"
        title = f"{name_m} ({better}): difference from {t['titles'].get(b, b)}"
        md += [f"## {title}\n", to_markdown(table), "", mdd, ""]
        tex += [f"% {title}", to_latex(table), latex_text(mdd) + r"\\"]
    if not t["baselines"]:
        md += ["No baseline of report.baselines is among the runs: nothing to compare.", ""]
    if t["no_bpb"] and t["baselines"]:
        note = (f"Bits per byte not compared for {', '.join(t['no_bpb'])}: their eval JSONs hold no per-prompt "
                f"bits and bytes (bpb_samples, which dwakd eval now stores); re-run their evaluation to compare them.")
        md += [note, ""]
        tex.append(latex_text(note) + r"\\")
    md.append(how)
    tex.append(latex_text(how))
    write_table_files(out, name, md, tex, t["long"], title="Significance against the baselines")


# ------------------------------------------------------------------------------------ published numbers


def load_published(path: Path | str) -> dict:
    """``config/published.yaml``, validated against ``workflow/schemas/published.schema.yaml``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: published numbers file not found (report.published)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not readable YAML ({' '.join(str(e).split())})") from None
    schema = yaml.safe_load(PUBLISHED_SCHEMA.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, e.path)) or '(top level)'}: {e.message}")
    return data


def published_for_pair(published: dict | None, pair: str) -> dict | None:
    """The published numbers of ``pair`` (``None`` when the file has none for it)."""
    if not published:
        return None
    return published.get("pairs", {}).get(pair)


def _source(src: dict) -> str:
    return f"{src['paper']}, {src['table']}"


def published_frame(res: dict, rows: list[str], sets: list[str], titles: dict, set_titles: dict,
                    pub: dict) -> pd.DataFrame:
    """ROUGE-L ours / published / diff (ours − published) for every run of ``rows`` with published numbers.

    One line per (run, column) with columns ``run, method, set, set_title, ours, published, diff,
    published_source``. The published Avg is over ``pub['rougeL']['avg_over']``: when the profile's sets are
    the same, our Avg is the table's; otherwise it is recomputed per seed over those sets (set ``avg_published``)
    or left empty when the profile lacks one of them."""
    runs_pub = pub["rougeL"]["runs"]
    avg_over = pub["rougeL"]["avg_over"]
    same = sorted(avg_over) == sorted(sets)
    have_all = all(s in sets for s in avg_over)
    avg_key = "avg" if same else "avg_published"
    avg_title = "Avg" if same else f"Avg ({', '.join(set_titles.get(s, s) for s in avg_over)})"
    lines = []
    for r in rows:
        p = runs_pub.get(r)
        if p is None:
            continue
        src = _source(p["source"])
        for s in sets:
            ours = res[r, s]["summary"]["rougeL"]["mean"]
            lines.append({"run": r, "method": titles.get(r, r), "set": s, "set_title": set_titles[s],
                          "ours": ours, "published": p.get(s, np.nan), "published_source": src})
        ours = statistics.fmean(seed_averages(res, r, avg_over)) if have_all else np.nan
        lines.append({"run": r, "method": titles.get(r, r), "set": avg_key, "set_title": avg_title,
                      "ours": ours, "published": p.get("avg", np.nan), "published_source": src})
    cols = ["run", "method", "set", "set_title", "ours", "published", "diff", "published_source"]
    out = pd.DataFrame(lines, columns=[c for c in cols if c != "diff"])
    out.insert(6, "diff", out.ours - out.published)
    return out[cols]


def published_wide(pf: pd.DataFrame, rows: list[str], titles: dict) -> pd.DataFrame:
    """Three lines per run (ours, published, ours − published) × the columns of ``pf``."""
    cols = list(dict.fromkeys(pf.set_title))
    lines = []
    for r in rows:
        x = pf[pf.run == r].set_index("set_title")
        if x.empty:
            continue
        for label, key in (("ours", "ours"), ("published", "published"), ("ours − published", "diff")):
            cells = {c: ("–" if np.isnan(x.at[c, key]) else f"{x.at[c, key]:+.2f}" if key == "diff"
                         else f"{x.at[c, key]:.2f}") for c in cols}
            lines.append({"Method": titles.get(r, r) if key == "ours" else "", "": label, **cells})
    return pd.DataFrame(lines, columns=["Method", "", *cols])


# ------------------------------------------------------------------------------------ tables


def bpb_counts(res: dict, rows: list[str], s: str) -> str | None:
    """The prompts of set ``s`` the rows' bits per byte cover (``bpb_ids``; "n1–n2" when runs differ), or None
    when no row has a bpb."""
    ns = sorted({len(bpb_ids(res[r, s])) for r in rows if res[r, s]["summary"].get("bpb") is not None})
    return None if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def main_table(eval_dir: Path, rows: list[str], sets: list[str], titles: dict, set_titles: dict, *,
               baselines: list[str] = (), bootstrap: BootstrapConfig | None = None,
               published: dict | None = None) -> dict:
    """The table of ``rows`` (runs, or also ``copy`` and ``teacher``) × ``sets`` + Avg.

    ``baselines``: runs whose non-significant differences are marked in the ROUGE-L and bits-per-byte tables
    (those in ``rows``; bpb: runs with ``bpb_samples``); ``published``: the pair's entry of
    ``config/published.yaml`` (``published_for_pair``)."""
    res = load_results(eval_dir, rows, sets)
    df = long_frame(res, rows, sets, titles, set_titles)
    cols = [set_titles[s] for s in sets] + ["Avg"]
    boot = bootstrap or BootstrapConfig()
    sig = significance_frame(res, eval_dir, rows, list(baselines), sets, titles, set_titles, boot)
    markers, legend = marker_legend(sig, list(baselines), boot)
    out = {"long": df, "rougeL": wide(df, "rougeL", rows, titles, cols, 2, markers["rougeL"]),
           "bpb": wide(df, "bpb", rows, titles, cols, 3, markers["bpb"]), "legend": legend["rougeL"],
           "legend_bpb": legend["bpb"], "significance": sig,
           "n_samples": {set_titles[s]: len(res[rows[0], s]["ids"]) for s in sets},
           "n_samples_bpb": {set_titles[s]: bpb_counts(res, rows, s) for s in sets},
           "seeds": sorted(next(iter(res.values()))["seeds"].keys()), "published": None}
    if published is not None:
        pf = published_frame(res, rows, sets, titles, set_titles, published)
        out["published"] = {"frame": pf, "table": published_wide(pf, rows, titles), "title": published["title"],
                            "sources": list(dict.fromkeys(pf.published_source))}
        # the CSV: published and diff beside our ROUGE-L means; an extra Avg line when the published Avg
        # is over other sets than ours
        extra = pf[pf.set == "avg_published"]
        if not extra.empty:
            add = extra.assign(metric="rougeL", mean=extra.ours, std=np.nan, n_seeds=np.nan, n_samples=None)
            df = pd.concat([df, add[df.columns]], ignore_index=True)
        m = pf[["run", "set", "published", "diff", "published_source"]].assign(metric="rougeL")
        out["long"] = df.merge(m, on=["run", "set", "metric"], how="left")
    return out


def _published_section(t: dict, md: list[str], tex: list[str]) -> None:
    """Append the table of published numbers beside ours (``t["published"]``, when given) to ``md`` and ``tex``."""
    pub = t.get("published")
    if pub is None:
        return
    title = f"Published (paper) and difference: ROUGE-L, {pub['title']}"
    src = "Published: " + "; ".join(pub["sources"]) + " (config/published.yaml). Ours: mean over seeds."
    md += ["", f"## {title}\n", to_markdown(pub["table"], index=False), "", src]
    tex += [f"% {title}", to_latex(pub["table"], index=False), latex_text(src)]


def write_tables(t: dict, out: Path, name: str) -> None:
    """``name``.md (both metrics), ``name``.csv (long format), ``name``.tex (both metrics)."""
    out.mkdir(parents=True, exist_ok=True)
    nb = t.get("n_samples_bpb") or {}
    ns = ", ".join(f"{k} {v}" + (f" (bits per byte {nb[k]})" if nb.get(k) not in (None, str(v)) else "")
                   for k, v in t["n_samples"].items())
    legend = t.get("legend") or []
    legend_bpb = t.get("legend_bpb") or []
    md = ["## ROUGE-L F1 (×100, higher is better; mean ± std over generation seeds)\n",
          to_markdown(t["rougeL"]), "", *legend, *([""] if legend else []),
          "## Response bits per byte (teacher forcing, lower is better; deterministic)\n",
          to_markdown(t["bpb"]), "", *legend_bpb, *([""] if legend_bpb else []), f"Samples per set: {ns}."]
    tex = ["% ROUGE-L F1 (x100), mean +- std over generation seeds", to_latex(t["rougeL"]),
           *(latex_text(x) + r"\\" for x in legend),
           "% Response bits per byte (lower is better)", to_latex(t["bpb"]),
           *(latex_text(x) + r"\\" for x in legend_bpb)]
    _published_section(t, md, tex)
    write_table_files(out, name, md, tex, t["long"], title=f"{name.capitalize()} table")


# ------------------------------------------------------------------------------------ the same-vocabulary table

SAME_VOCAB = "same_vocab"  # the table's name: tables/same_vocab.{md,csv,tex,html}
_FRAMEWORK = re.compile(r"^(.*\S)\s*\(([^()]*)\)\s*$")  # "Vanilla KD (KL)" → framework, divergence


def framework_of(title: str) -> tuple[str, str]:
    """A row title ``"Framework (divergence)"`` split in two (``"DSKD (RKL)"`` → ``("DSKD", "RKL")``); a title
    without a parenthesised suffix is a framework of its own (``"SFT"`` → ``("SFT", "–")``)."""
    m = _FRAMEWORK.match(title)
    return (m.group(1), m.group(2)) if m else (title, "–")


def _grouped(table: pd.DataFrame) -> pd.DataFrame:
    """A ``wide`` table (index: row titles) as ``Framework``, ``Divergence`` + its columns, the framework written
    on the first row of its group only."""
    fw = [framework_of(t) for t in table.index]
    out = table.reset_index(drop=True)
    shown = [f if k == 0 or fw[k - 1][0] != f else "" for k, (f, _) in enumerate(fw)]
    out.insert(0, "Divergence", [d for _, d in fw])
    out.insert(0, "Framework", shown)
    return out


def same_vocab_rows(runs: list[str], titles: dict) -> list[str]:
    """The rows of the same-vocabulary table: the runs grouped by framework (``framework_of`` their titles; groups
    in the order of their first run, runs in their order within a group), then the teacher."""
    order = list(dict.fromkeys(framework_of(titles.get(r, r))[0] for r in runs))
    return sorted(runs, key=lambda r: order.index(framework_of(titles.get(r, r))[0])) + [TEACHER]


def same_vocab_table(eval_dir: Path, runs: list[str], sets: list[str], titles: dict, set_titles: dict, *,
                     pair: str, baselines: list[str] = (), bootstrap: BootstrapConfig | None = None,
                     published: dict | None = None) -> dict:
    """DSKD's Table 1 layout (Zhang et al., EMNLP 2024, arXiv 2406.17328): a teacher and a student that share one
    tokenizer, rows grouped by framework (``same_vocab_rows``: SFT; Vanilla KD × divergences; DSKD × divergences;
    the teacher last), columns ``sets`` + Avg, ROUGE-L and bits per byte, significance markers against
    ``baselines`` and published numbers as in ``main_table`` (whose result this extends with ``grouped``: the
    two metrics' tables with ``Framework`` and ``Divergence`` columns, and those two columns in the CSV)."""
    rows = same_vocab_rows(list(runs), titles)
    t = main_table(eval_dir, rows, sets, titles, set_titles, baselines=baselines, bootstrap=bootstrap,
                   published=published)
    t["grouped"] = {m: _grouped(t[m]) for m in METRICS}
    fw = pd.DataFrame([(r, *framework_of(titles.get(r, r))) for r in rows], columns=["run", "framework", "divergence"])
    t["long"] = t["long"].merge(fw, on="run", how="left")
    t["pair"] = pair
    return t


def write_same_vocab(t: dict, out: Path) -> None:
    """``same_vocab``.md / .tex / .html (both metrics, grouped by framework; published numbers when given) and
    ``same_vocab``.csv (long format with ``framework`` and ``divergence``)."""
    out.mkdir(parents=True, exist_ok=True)
    head = (f"Same-vocabulary distillation on the pair {t['pair']} (teacher and student share one tokenizer; the "
            f"teacher reads the student's token ids): the current white-box KD framework and DSKD under each "
            f"divergence (KL = forward KL), DSKD's Table 1 layout.")
    nb = t.get("n_samples_bpb") or {}
    ns = ", ".join(f"{k} {v}" + (f" (bits per byte {nb[k]})" if nb.get(k) not in (None, str(v)) else "")
                   for k, v in t["n_samples"].items())
    md, tex = [head, ""], [f"% {latex_text(head)}"]
    for metric, heading, legend in (
            ("rougeL", "ROUGE-L F1 (×100, higher is better; mean ± std over generation seeds)", t["legend"]),
            ("bpb", "Response bits per byte (teacher forcing, lower is better; deterministic)", t["legend_bpb"])):
        md += [f"## {heading}\n", to_markdown(t["grouped"][metric], index=False), "", *legend, *([""] if legend else [])]
        tex += [f"% {heading}", to_latex(t["grouped"][metric], index=False), *(latex_text(x) + r"\\" for x in legend)]
    md.append(f"Samples per set: {ns}.")
    _published_section(t, md, tex)
    write_table_files(out, SAME_VOCAB, md, tex, t["long"], title="Same-vocabulary table (DSKD Table 1 layout)")
