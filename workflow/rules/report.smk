rule report:
    input:
        expand(f"{R}/eval/{{model}}/{{set}}.json", model=["copy", "teacher", *RUNS], set=EVAL_SETS),
    output:
        md=f"{R}/tables/main.md",
        csv=f"{R}/tables/main.csv",
        tex=f"{R}/tables/main.tex",
    params:
        cfg=CFG,
        eval_dir=lambda w, input: parent(input[0], 2),
        out=lambda w, output: parent(output.md),
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    conda:
        ENV
    shell:
        "dwakd report --config {params.cfg} --eval-dir {params.eval_dir} --out {params.out} > {log} 2>&1"
