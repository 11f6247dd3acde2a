# Figures: the cross-model attention of the trained runs (maps, DWA-KD's band, token-alignment probe) as tables,
# then every figure from the tables folder's CSV files only (notebooks/figures.py redraws them the same way).
#   attention  dwakd attention: tables/attention.csv, attention_band.csv, alignment_probe.{csv,md,tex}
#   figures    dwakd figures:   figures/{attention_<k>,alignment_probe,train_curves,rougeL}.{png,pdf}

FIGURES = PROFILE.get("figures") or {}
FIG_SET = FIGURES.get("set", "dolly")
FIG_SAMPLES = FIGURES.get("samples", 3)  # figures.set and figures.runs: checked with the config (common.smk)
# Which runs have a cross-model attention is decided by `dwakd attention` from the method classes (the
# Snakefile does not import torch), so the job reads every run of the tables (and figures.runs).
FIG_RUNS = list(dict.fromkeys(RUNS + list(FIGURES.get("runs") or [])))
FIGURE_NAMES = [f"attention_{k}" for k in range(1, FIG_SAMPLES + 1)] + ["alignment_probe", "train_curves", "rougeL"]


rule attention:
    input:
        models=rules.models.output,
        data=f"{R}/data/{FIG_SET}.jsonl",
        runs=expand(f"{P}/runs/{{run}}/{RECEIPT}", run=FIG_RUNS, allow_missing=True),
    output:
        attention=f"{P}/tables/attention.csv",
        band=f"{P}/tables/attention_band.csv",
        probe=multiext(f"{P}/tables/alignment_probe", ".csv", ".md", ".tex"),
    params:
        cfg=CFG,
        key=digest(FIGURES, {r: config["runs"][r] for r in FIG_RUNS}, PROFILE["train"]),
        runs=lambda w, input: parent(input.runs[0], 2) if input.runs else "runs",
        data=lambda w, input: parent(input.data),
        out=lambda w, output: parent(output.attention),
    threads: JOB_THREADS
    resources:
        gpu=1,
    log:
        f"{P}/logs/attention.log",
    benchmark:
        f"{P}/benchmarks/attention.tsv"
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} dwakd attention --config {params.cfg} --pair {wildcards.pair} --models {input.models} "
        "--runs {params.runs} --data {params.data} --out {params.out} > {log} 2>&1"


rule figures:
    input:
        main=f"{P}/tables/main.csv",
        attention=rules.attention.output.attention,
        band=rules.attention.output.band,
        probe=f"{P}/tables/alignment_probe.csv",
        curves=f"{P}/tables/train_curves.csv",  # the efficiency rule (workflow/rules/report.smk)
    output:
        [report(f, caption=figure_caption(f), category="Figures") if f.endswith(".png") else f
         for f in expand(f"{P}/figures/{{name}}.{{ext}}", name=FIGURE_NAMES, ext=["png", "pdf"], allow_missing=True)],
    params:
        tables=lambda w, input: parent(input.main),
        out=lambda w, output: parent(output[0]),
        n=FIG_SAMPLES,
    log:
        f"{P}/logs/figures.log",
    benchmark:
        f"{P}/benchmarks/figures.tsv"
    conda:
        ENV
    shell:
        "dwakd figures --tables {params.tables} --out {params.out} --attention-figures {params.n} > {log} 2>&1"
