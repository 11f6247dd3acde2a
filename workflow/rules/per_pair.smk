# Inputs of distillation runs that depend only on the teacher or the tokenizers (and the training prompts):
# computed once and shared by every run and every pair that needs them.
#   generate   the teacher's sampled responses to the training prompts (SeqKD's training data), per teacher
#   vocab_map  MinED's teacher -> student vocabulary map, per (teacher, student tokenizer)


rule generate:
    input:
        # `ancient`: the teacher's samples are expensive, so a rewritten but unchanged train file or model
        # folder (e.g. the data rule rerun for new eval settings) does not resample them; `key` holds what
        # their content depends on (generation settings, training prompts, the teacher).
        models=generate_models,
        train=ancient_of(rules.data.output.train),
    output:
        GENERATED,
    params:
        cfg=CFG,
        key=lambda w: digest(
            PROFILE.get("generate"),
            PROFILE.get("train_limit"),
            config["datasets"]["dolly_train"],
            teacher_key(teacher_pair(w)),
        ),
        teacher=lambda w, input: f"{input.models}/teacher",
        dtype=lambda w: teacher_dtype(teacher_pair(w)),
    threads: JOB_THREADS
    resources:
        gpu=1,
    log:
        f"{R}/logs/generate_{{teacher}}.log",
    benchmark:
        f"{R}/benchmarks/generate_{{teacher}}.tsv"
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} dwakd generate --config {params.cfg} --model {params.teacher} "
        "--dtype {params.dtype} "
        "--data {input.train} --out {output} > {log} 2>&1"


rule vocab_map:
    input:
        models=vocab_map_models,
    output:
        VOCAB_MAP,
    params:
        cfg=CFG,
    threads: JOB_THREADS
    log:
        f"{R}/logs/vocab_map_{{vmap}}.log",
    benchmark:
        f"{R}/benchmarks/vocab_map_{{vmap}}.tsv"
    conda:
        ENV
    shell:
        "dwakd vocab-map --config {params.cfg} --models {input.models} --out {output} "
        "--workers {threads} > {log} 2>&1"
