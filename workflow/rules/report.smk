# Result tables: main / ablation (one job each), the significance table, the training-cost table and the
# loss curves. Settings: `report:` in config/config.yaml; published numbers: config/published.yaml.
# Each table is also an HTML page of its Markdown (`<table>.html`): the Snakemake report shows those in the
# page (an HTML result opens in the report's view; a CSV result is only a download).

_REPORT = config.get("report") or {}
# the published numbers file (relative paths are from the repository root); [] when there is none
_PUB = _REPORT.get("published")
PUBLISHED = [] if not _PUB else [_PUB if os.path.isabs(_PUB) else str(Path(workflow.basedir) / _PUB)]


rule report:
    input:
        evals=lambda w: expand(f"{pdir(w.pair)}/eval/{{model}}/{{s}}.json", model=table_models(w), s=EVAL_SETS),
        published=PUBLISHED,
    output:
        md=f"{P}/tables/{{table}}.md",
        html=report(f"{P}/tables/{{table}}.html", caption="../report/table.rst", category="Tables",
                    labels={"table": "{table}", "file": "HTML table"}),
        csv=report(f"{P}/tables/{{table}}.csv", caption="../report/table.rst", category="Tables",
                   labels={"table": "{table}", "file": "long format (CSV)"}),
        tex=f"{P}/tables/{{table}}.tex",
    wildcard_constraints:
        table="|".join(TABLES),
    params:
        cfg=CFG,
        key=digest(_REPORT),
        eval_dir=f"{P}/eval",
        out=lambda w, output: parent(output.md),
        published=lambda w, input: f"--published {input.published}" if input.published else "",
    log:
        f"{P}/logs/report/{{table}}.log",
    benchmark:
        f"{P}/benchmarks/report/{{table}}.tsv"
    conda:
        ENV
    shell:
        "dwakd report --config {params.cfg} --pair {wildcards.pair} --eval-dir {params.eval_dir} --out {params.out} --table {wildcards.table} "
        "{params.published} > {log} 2>&1"


if SAME_VOCAB:

    rule same_vocab_report:
        # DSKD's Table 1 layout on the same-vocabulary pair (`dwakd report --table same_vocab`): its runs grouped by
        # framework, the teacher last; markers against report.baselines, published numbers for that pair
        input:
            evals=expand(f"{P}/eval/{{model}}/{{s}}.json", model=[*SAME_VOCAB[1], "teacher"], s=EVAL_SETS,
                         allow_missing=True),
            published=PUBLISHED,
        output:
            md=f"{P}/tables/same_vocab.md",
            html=report(f"{P}/tables/same_vocab.html", caption="../report/table.rst", category="Tables",
                        labels={"table": "same_vocab", "file": "HTML table"}),
            csv=report(f"{P}/tables/same_vocab.csv", caption="../report/table.rst", category="Tables",
                       labels={"table": "same_vocab", "file": "long format (CSV)"}),
            tex=f"{P}/tables/same_vocab.tex",
        wildcard_constraints:
            pair=re.escape(SV_PAIR),
        params:
            cfg=CFG,
            key=digest(_REPORT, SAME_VOCAB),
            eval_dir=lambda w, input: parent(input.evals[0], 2),
            out=lambda w, output: parent(output.md),
            published=lambda w, input: f"--published {input.published}" if input.published else "",
        log:
            f"{P}/logs/report/same_vocab.log",
        benchmark:
            f"{P}/benchmarks/report/same_vocab.tsv"
        conda:
            ENV
        shell:
            "dwakd report --config {params.cfg} --pair {wildcards.pair} --eval-dir {params.eval_dir} --out {params.out} "
            "--table same_vocab {params.published} > {log} 2>&1"


rule significance:
    input:
        expand(f"{P}/eval/{{model}}/{{s}}.json", model=["teacher", *RUNS], s=EVAL_SETS, allow_missing=True),
    output:
        md=f"{P}/tables/significance.md",
        html=report(f"{P}/tables/significance.html", caption="../report/significance.rst", category="Tables",
                    labels={"table": "significance", "file": "HTML table"}),
        csv=report(f"{P}/tables/significance.csv", caption="../report/significance.rst", category="Tables",
                   labels={"table": "significance", "file": "long format (CSV)"}),
        tex=f"{P}/tables/significance.tex",
    params:
        cfg=CFG,
        key=digest(_REPORT.get("baselines"), _REPORT.get("bootstrap")),
        eval_dir=lambda w, input: parent(input[0], 2),
        out=lambda w, output: parent(output.md),
    log:
        f"{P}/logs/report/significance.log",
    benchmark:
        f"{P}/benchmarks/report/significance.tsv"
    conda:
        ENV
    shell:
        "dwakd significance --config {params.cfg} --eval-dir {params.eval_dir} --out {params.out} > {log} 2>&1"


# The training logs (runs/<run>/train_log.jsonl) are written beside each run's model but are not outputs of
# the train rule (Snakemake would delete them before a rerun); the runs' receipts stand for them.
rule efficiency:
    input:
        models=expand(f"{P}/runs/{{run}}/{RECEIPT}", run=RUNS, allow_missing=True),
        published=PUBLISHED,
    output:
        md=f"{P}/tables/efficiency.md",
        html=report(f"{P}/tables/efficiency.html", caption="../report/efficiency.rst", category="Tables",
                    labels={"table": "efficiency", "file": "HTML table"}),
        csv=report(f"{P}/tables/efficiency.csv", caption="../report/efficiency.rst", category="Tables",
                   labels={"table": "efficiency", "file": "long format (CSV)"}),
        tex=f"{P}/tables/efficiency.tex",
        curves=report(f"{P}/tables/train_curves.csv", caption="../report/curves.rst", category="Tables",
                      labels={"table": "training curves", "file": "long format (CSV)"}),
    params:
        cfg=CFG,
        key=digest(_REPORT.get("published")),
        runs_dir=lambda w, input: parent(input.models[0], 2),
        out=lambda w, output: parent(output.md),
        published=lambda w, input: f"--published {input.published}" if input.published else "",
    log:
        f"{P}/logs/report/efficiency.log",
    benchmark:
        f"{P}/benchmarks/report/efficiency.tsv"
    conda:
        ENV
    shell:
        "dwakd efficiency --config {params.cfg} --pair {wildcards.pair} --runs-dir {params.runs_dir} --out {params.out} "
        "{params.published} > {log} 2>&1"


# The training cost of one table's runs alone, `<table>_efficiency.*` (`dwakd efficiency --table`): the on-policy
# target's, whose runs the default target's efficiency table leaves out where the on-policy table is a target of
# its own (mini); it shows their sampling cost beside the off-policy runs' time.
rule table_efficiency:
    input:
        models=lambda w: expand(f"{pdir(w.pair)}/runs/{{run}}/{RECEIPT}", run=TABLES[w.table]),
        published=PUBLISHED,
    output:
        md=f"{P}/tables/{{table}}_efficiency.md",
        html=report(f"{P}/tables/{{table}}_efficiency.html", caption="../report/efficiency.rst", category="Tables",
                    labels={"table": "{table} efficiency", "file": "HTML table"}),
        csv=report(f"{P}/tables/{{table}}_efficiency.csv", caption="../report/efficiency.rst", category="Tables",
                   labels={"table": "{table} efficiency", "file": "long format (CSV)"}),
        tex=f"{P}/tables/{{table}}_efficiency.tex",
        curves=f"{P}/tables/{{table}}_train_curves.csv",
    wildcard_constraints:
        table="on_policy",
    params:
        cfg=CFG,
        key=digest(_REPORT.get("published")),
        runs_dir=lambda w, input: parent(input.models[0], 2),
        out=lambda w, output: parent(output.md),
        published=lambda w, input: f"--published {input.published}" if input.published else "",
    log:
        f"{P}/logs/report/{{table}}_efficiency.log",
    benchmark:
        f"{P}/benchmarks/report/{{table}}_efficiency.tsv"
    conda:
        ENV
    shell:
        "dwakd efficiency --config {params.cfg} --pair {wildcards.pair} --runs-dir {params.runs_dir} --out {params.out} "
        "--table {wildcards.table} {params.published} > {log} 2>&1"
