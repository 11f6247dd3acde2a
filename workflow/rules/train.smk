rule train:
    input:
        models=rules.models.output,
        train=train_file,  # SeqKD: rules.generate.output (the teacher's samples); else the gold data
        dev=rules.data.output.dev,
        vocab_map=run_vocab_map,  # MinED: rules.vocab_map.output; else nothing
    output:
        # the receipt beside runs/<run>/model/ (sha256 of its checksums), written when `dwakd train` puts a
        # finished run in place: Snakemake removes only it before a rerun, and a rerun that fails leaves the
        # run's last complete result (model, train_log.jsonl, selection.json) as it was
        f"{P}/runs/{{run}}/{RECEIPT}",
    params:
        cfg=CFG,
        key=lambda w: digest(config["runs"][w.run], C.train_overrides(config, w.run, w.pair),
                             PROFILE.get("train_limit")),
        out=lambda w, output: parent(output[0]),
        data=lambda w, input: parent(input.dev),
        vocab_map=vocab_map_arg,
        train_cmd=TRAIN_CMD,
    threads: JOB_THREADS
    resources:
        gpu=1,
    log:
        f"{P}/logs/train/{{run}}.log",
    benchmark:
        f"{P}/benchmarks/train/{{run}}.tsv"
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} {params.train_cmd} train --config {params.cfg} --pair {wildcards.pair} --run {wildcards.run} "
        "--models {input.models} --data {params.data} --train-file {input.train} {params.vocab_map} "
        "--out {params.out} --resume > {log} 2>&1"
