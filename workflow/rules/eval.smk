rule eval:
    input:
        model=eval_model_input,
        data=eval_data,
    output:
        f"{R}/eval/{{model}}/{{set}}.json",
    params:
        cfg=CFG,
        key=digest(PROFILE["eval"]),
        model=eval_model_arg,
    threads: workflow.cores
    resources:
        gpu=1,
    log:
        f"{R}/logs/eval/{{model}}/{{set}}.log",
    benchmark:
        f"{R}/benchmarks/eval/{{model}}/{{set}}.tsv"
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} dwakd eval --config {params.cfg} --model {params.model} "
        "--data {input.data} --out {output} > {log} 2>&1"
