rule report:
    input:
        expand(f"{R}/eval/{{model}}/{{set}}.json", model=["copy", "teacher", *RUNS], set=EVAL_SETS),
    output:
        md=f"{R}/tables/main.md",
        csv=f"{R}/tables/main.csv",
        tex=f"{R}/tables/main.tex",
    params:
        cfg=CFG,
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    conda:
        ENV
    shell:
        "dwakd report --config {params.cfg} --eval-dir {R}/eval --out {R}/tables > {log} 2>&1"
