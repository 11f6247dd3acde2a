rule data:
    output:
        train=f"{R}/data/train.jsonl",
        dev=f"{R}/data/dev.jsonl",
        sets=expand(f"{R}/data/{{s}}.jsonl", s=LOCAL_SETS),
    params:
        cfg=CFG,
        # whole eval sets: eval.limit / bpb_limit apply in the eval rule, so only the set list matters here
        key=digest(PROFILE.get("train_limit"), PROFILE.get("dev_limit"), PROFILE["eval"]["sets"],
                   {k: v for k, v in config["datasets"].items() if k != "unni"}),  # UnNI: rule data_unni
        out=lambda w, output: parent(output.train),
    log:
        f"{R}/logs/data.log",
    benchmark:
        f"{R}/benchmarks/data.tsv"
    conda:
        ENV
    shell:
        "dwakd data --config {params.cfg} --out {params.out} > {log} 2>&1"


rule data_unni:
    output:
        f"{R}/data/unni.jsonl",
    params:
        cfg=CFG,
        key=digest(config["datasets"]["unni"]),  # the whole selection (datasets.unni.limit)
        out=lambda w, output: parent(output[0]),
        cache=f"{R}/cache/unni",
    log:
        f"{R}/logs/data_unni.log",
    benchmark:
        f"{R}/benchmarks/data_unni.tsv"
    conda:
        ENV
    shell:
        "dwakd data --config {params.cfg} --only unni --out {params.out} --cache {params.cache} > {log} 2>&1"
