"""Result tables: runs × evaluation sets, mean ± std over generation seeds, plus the average.

The average column is computed per seed (the mean over sets of that seed's ROUGE-L) and then summarised
over seeds, so its ± is the seed spread of the average, not a sum of the per-set spreads.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if not std else f"{mean:.{digits}f} ± {std:.{digits}f}"


def load_results(eval_dir: Path, rows: list[str], sets: list[str]) -> dict:
    res = {}
    for r in rows:
        for s in sets:
            f = eval_dir / r / f"{s}.json"
            if not f.exists():
                raise FileNotFoundError(f"{f}: no evaluation result for run {r!r} on set {s!r}")
            res[r, s] = json.loads(f.read_text())
    return res


def long_frame(res: dict, rows: list[str], sets: list[str], titles: dict, set_titles: dict) -> pd.DataFrame:
    """One line per (run, set, metric) including the 'avg' pseudo-set."""
    lines = []
    for r in rows:
        seeds = None
        for s in sets:
            d = res[r, s]
            sm = d["summary"]
            lines.append({"run": r, "method": titles.get(r, r), "set": s, "set_title": set_titles[s],
                          "metric": "rougeL", "mean": sm["rougeL"]["mean"], "std": sm["rougeL"]["std"],
                          "n_seeds": sm["rougeL"]["n"], "n_samples": len(d["ids"])})
            if sm.get("bpb") is not None:
                lines.append({"run": r, "method": titles.get(r, r), "set": s, "set_title": set_titles[s],
                              "metric": "bpb", "mean": sm["bpb"], "std": 0.0, "n_seeds": 1,
                              "n_samples": len(d["ids"])})
            per_seed = {k: v["rougeL"] for k, v in d["seeds"].items()}
            seeds = per_seed.keys() if seeds is None else seeds & per_seed.keys()
        avg_seed = [statistics.fmean(res[r, s]["seeds"][k]["rougeL"] for s in sets) for k in sorted(seeds)]
        lines.append({"run": r, "method": titles.get(r, r), "set": "avg", "set_title": "Avg", "metric": "rougeL",
                      "mean": statistics.fmean(avg_seed),
                      "std": statistics.stdev(avg_seed) if len(avg_seed) > 1 else 0.0,
                      "n_seeds": len(avg_seed), "n_samples": None})
        bpbs = [res[r, s]["summary"].get("bpb") for s in sets]
        if all(b is not None for b in bpbs):
            lines.append({"run": r, "method": titles.get(r, r), "set": "avg", "set_title": "Avg", "metric": "bpb",
                          "mean": statistics.fmean(bpbs), "std": 0.0, "n_seeds": 1, "n_samples": None})
    return pd.DataFrame(lines)


def wide(df: pd.DataFrame, metric: str, rows: list[str], titles: dict, columns: list[str], digits: int) -> pd.DataFrame:
    sub = df[df.metric == metric]
    table = {}
    for r in rows:
        cells = {}
        for _, x in sub[sub.run == r].iterrows():
            cells[x.set_title] = _fmt(x["mean"], x["std"], digits)
        table[titles.get(r, r)] = {c: cells.get(c, "–") for c in columns}
    out = pd.DataFrame.from_dict(table, orient="index", columns=columns)
    out.index.name = "Method"
    return out


def main_table(eval_dir: Path, rows: list[str], sets: list[str], titles: dict, set_titles: dict) -> dict:
    res = load_results(eval_dir, rows, sets)
    df = long_frame(res, rows, sets, titles, set_titles)
    cols = [set_titles[s] for s in sets] + ["Avg"]
    return {"long": df, "rougeL": wide(df, "rougeL", rows, titles, cols, 2),
            "bpb": wide(df, "bpb", rows, titles, cols, 3),
            "n_samples": {set_titles[s]: len(res[rows[0], s]["ids"]) for s in sets},
            "seeds": sorted(next(iter(res.values()))["seeds"].keys())}


def write_tables(t: dict, out: Path, name: str) -> None:
    """``name``.md (both metrics), ``name``.csv (long format), ``name``.tex (both metrics)."""
    out.mkdir(parents=True, exist_ok=True)
    ns = ", ".join(f"{k} {v}" for k, v in t["n_samples"].items())
    md = [f"## ROUGE-L F1 (×100, higher is better; mean ± std over generation seeds)\n",
          t["rougeL"].to_markdown(), "",
          "## Response bits per byte (teacher forcing, lower is better; deterministic)\n",
          t["bpb"].to_markdown(), "", f"Samples per set: {ns}."]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    t["long"].to_csv(out / f"{name}.csv", index=False)
    tex = ["% ROUGE-L F1 (x100), mean +- std over generation seeds",
           t["rougeL"].to_latex(escape=True).replace("±", r"$\pm$"),
           "% Response bits per byte (lower is better)", t["bpb"].to_latex(escape=True)]
    (out / f"{name}.tex").write_text("\n".join(tex))
