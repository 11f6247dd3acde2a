# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # dwakd figures from the result tables
#
# Every figure of `<results_dir>/<pair>/figures/` redrawn from the tables folder's CSV files only, with the same
# plotting functions the workflow's `figures` rule calls (`dwakd.figures`). Run the suite first
# (`snakemake --cores all`), then open this file with Jupyter (jupytext) or run it as a script.
#
# | figure | table |
# |---|---|
# | cross-model attention heatmaps, one per fixed sample, one panel per run (DWA-KD's band drawn over its map) | `attention.csv`, `attention_band.csv` (`dwakd attention`) |
# | token-alignment probe: attention on the teacher token that DSKD-ETA's exact alignment pairs with each student token | `alignment_probe.csv` |
# | training curves: loss terms per optimiser step, one panel per term | `train_curves.csv` |
# | ROUGE-L per method and set, std over seeds | `main.csv` |

# %% tags=["parameters"]
import os
from pathlib import Path

# the tables folder: DWAKD_TABLES overrides the default (the mini profile's results, from notebooks/)
TABLES = Path(os.environ.get("DWAKD_TABLES", "../results/mini/tables"))
# where to save the figures as well (PNG + PDF); None: only show them
SAVE_TO = os.environ.get("DWAKD_FIGURES") or None

# %%
# %matplotlib inline
import pandas as pd
from IPython.display import display

from dwakd import figures as F

print("tables:", TABLES.resolve())
print(sorted(p.name for p in TABLES.glob("*.csv")))


def show(fig, name):
    """Display a figure and, with SAVE_TO, write it as the workflow does."""
    display(fig)
    if SAVE_TO:
        F.save(fig, Path(SAVE_TO), name)


# %% [markdown]
# ## Cross-model attention
#
# `A_t2s[i, j]`: how much the student's response position i (y axis, named by the token it predicts) attends to
# the teacher's response position j (x axis). `␣` is a leading space, `↵` a newline. On DWA-KD's panel, the red
# lines are the band its Soft-DTW keeps (centre `c_i`, edges `c_i ± w_i`).

# %%
att = F.read_table(TABLES / "attention.csv")
band = F.read_table(TABLES / "attention_band.csv")
samples = list(dict.fromkeys(att["sample"]))
print(f"{len(samples)} samples, runs: {list(dict.fromkeys(att['run']))}")
for k, sample in enumerate(samples, 1):
    show(F.plot_attention(att, band, sample), f"attention_{k}")

# %% [markdown]
# ## Token-alignment probe

# %%
probe = F.read_table(TABLES / "alignment_probe.csv")
display(probe)
show(F.plot_probe(probe), "alignment_probe")

# %% [markdown]
# ## Training curves

# %%
curves = F.read_table(TABLES / "train_curves.csv")
if curves is None:
    print("train_curves.csv: not found")
else:
    show(F.plot_train_curves(curves), "train_curves")

# %% [markdown]
# ## ROUGE-L

# %%
main = F.read_table(TABLES / "main.csv")
display(main[main.metric == "rougeL"].pivot(index="method", columns="set_title", values="mean").round(2))
show(F.plot_rouge(main), "rougeL")
