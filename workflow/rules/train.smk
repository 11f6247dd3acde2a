rule train:
    input:
        models=rules.models.output,
        train=rules.data.output.train,
        dev=rules.data.output.dev,
    output:
        directory(f"{R}/runs/{{run}}/model"),
    params:
        cfg=CFG,
        key=lambda w: digest(config["methods"][w.run], PROFILE["train"], PROFILE.get("train_limit")),
        out=lambda w, output: parent(output[0]),
        data=lambda w, input: parent(input.train),
    threads: workflow.cores
    resources:
        gpu=1,
    log:
        f"{R}/logs/train/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{run}}.tsv"
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} dwakd train --config {params.cfg} --run {wildcards.run} "
        "--models {input.models} --data {params.data} --out {params.out} --resume > {log} 2>&1"
