rule report:
    input:
        lambda w: expand(f"{R}/eval/{{model}}/{{s}}.json", model=table_models(w), s=EVAL_SETS),
    output:
        md=f"{R}/tables/{{table}}.md",
        csv=f"{R}/tables/{{table}}.csv",
        tex=f"{R}/tables/{{table}}.tex",
    wildcard_constraints:
        table="|".join(TABLES),
    params:
        cfg=CFG,
        eval_dir=f"{R}/eval",
        out=lambda w, output: parent(output.md),
    log:
        f"{R}/logs/report/{{table}}.log",
    benchmark:
        f"{R}/benchmarks/report/{{table}}.tsv"
    conda:
        ENV
    shell:
        "dwakd report --config {params.cfg} --eval-dir {params.eval_dir} --out {params.out} --table {wildcards.table} "
        "> {log} 2>&1"
