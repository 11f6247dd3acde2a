# Inputs of distillation runs that depend only on the pair (and the training prompts): computed once and
# shared by every run that needs them.
#   generate   the teacher's sampled responses to the training prompts (SeqKD's training data)
#   vocab_map  MinED's teacher -> student vocabulary map


rule generate:
    input:
        # `ancient`: the teacher's samples are expensive, so a rewritten but unchanged train file or model
        # folder (e.g. the data rule rerun for new eval settings) does not resample them; `key` holds what
        # their content depends on (generation settings, training prompts, the teacher).
        models=ancient_of(rules.models.output),
        train=ancient_of(rules.data.output.train),
    output:
        f"{R}/generated/teacher_train.jsonl",
    params:
        cfg=CFG,
        key=digest(
            PROFILE.get("generate"),
            PROFILE.get("train_limit"),
            config["datasets"]["dolly_train"],
            TEACHER_KEY,
        ),
        teacher=lambda w, input: f"{input.models}/teacher",
    threads: JOB_THREADS
    resources:
        gpu=1,
    log:
        f"{R}/logs/generate.log",
    benchmark:
        f"{R}/benchmarks/generate.tsv"
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} dwakd generate --config {params.cfg} --model {params.teacher} "
        "--data {input.train} --out {output} > {log} 2>&1"


rule vocab_map:
    input:
        models=rules.models.output,
    output:
        f"{R}/vocab_maps/teacher_to_student.json",
    params:
        cfg=CFG,
    threads: JOB_THREADS
    log:
        f"{R}/logs/vocab_map.log",
    benchmark:
        f"{R}/benchmarks/vocab_map.tsv"
    conda:
        ENV
    shell:
        "dwakd vocab-map --config {params.cfg} --models {input.models} --out {output} "
        "--workers {threads} > {log} 2>&1"
