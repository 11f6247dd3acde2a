rule eval:
    input:
        model=eval_model_input,
        data=expand(f"{R}/data/{{s}}.jsonl", s=EVAL_SETS),
    output:
        expand(f"{R}/eval/{{{{model}}}}/{{s}}.json", s=EVAL_SETS),
    params:
        cfg=CFG,
        key=digest(PROFILE["eval"]),
        model=eval_model_arg,
    threads: JOB_THREADS
    resources:
        gpu=1,
    log:
        f"{R}/logs/eval/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/eval/{{model}}.tsv"
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} dwakd eval --config {params.cfg} --model {params.model} "
        "--data {input.data} --out {output} > {log} 2>&1"
