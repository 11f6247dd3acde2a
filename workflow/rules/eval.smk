def eval_model_input(w):
    """The model folder a row of the table is read from ('copy' needs none)."""
    if w.model == "copy":
        return []
    if w.model == "teacher":
        return rules.models.output
    return f"{R}/runs/{w.model}/model"


def eval_model_arg(w, input):
    if w.model == "copy":
        return "copy"
    if w.model == "teacher":
        return f"{input.model}/teacher"
    return input.model


def eval_data(w):
    return f"{R}/data/{w.set}.jsonl"


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
