# The pair in use, as R/models/{teacher,student_base}: unpacked from the shipped assets with their tokenizers
# (default), or rebuilt from scratch with `--config rebuild_models=true` (train the two tokenizers, pre-train
# the student, pre-train the teacher, fine-tune the teacher).

TRAIN_ALL = f"{R}/build/train_all.jsonl"

if REBUILD:

    rule build_data:
        output:
            TRAIN_ALL,
        params:
            cfg=CFG,
        log:
            f"{R}/logs/build_data.log",
        benchmark:
            f"{R}/benchmarks/build_data.tsv"
        conda:
            ENV
        shell:
            "dwakd data --config {params.cfg} --only train_all --out {output} > {log} 2>&1"

    rule pretrain:
        input:
            data=rules.build_data.output,
            tokenizers=rules.tokenizers.output,
        output:
            directory(f"{R}/build/{{role}}_pretrain/model"),
        wildcard_constraints:
            role="teacher|student",
        params:
            cfg=CFG,
            key=lambda w: digest(PAIR[w.role], PAIR.get("build", {}).get(f"{w.role}_pretrain")),
            out=lambda w, output: parent(output[0]),
        threads: JOB_THREADS
        resources:
            gpu=1,
        log:
            f"{R}/logs/pretrain_{{role}}.log",
        benchmark:
            f"{R}/benchmarks/pretrain_{{role}}.tsv"
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} dwakd pretrain --config {params.cfg} --role {wildcards.role} "
            "--data {input.data} --tokenizers {input.tokenizers} --out {params.out} --resume > {log} 2>&1"

    rule teacher_sft:
        input:
            data=rules.build_data.output,
            init=f"{R}/build/teacher_pretrain/model",
        output:
            directory(f"{R}/build/teacher_sft/model"),
        params:
            cfg=CFG,
            key=digest(PAIR.get("build", {}).get("teacher_sft")),
            out=lambda w, output: parent(output[0]),
        threads: JOB_THREADS
        resources:
            gpu=1,
        log:
            f"{R}/logs/teacher_sft.log",
        benchmark:
            f"{R}/benchmarks/teacher_sft.tsv"
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} dwakd pretrain --config {params.cfg} --role teacher_sft "
            "--data {input.data} --init {input.init} --out {params.out} --resume > {log} 2>&1"

    rule models:
        input:
            teacher=rules.teacher_sft.output,
            student=f"{R}/build/student_pretrain/model",
        output:
            directory(f"{R}/models"),
        params:
            cfg=CFG,
        log:
            f"{R}/logs/models.log",
        benchmark:
            f"{R}/benchmarks/models.tsv"
        conda:
            ENV
        shell:
            "dwakd models --config {params.cfg} --teacher {input.teacher} "
            "--student {input.student} --out {output} > {log} 2>&1"

    rule ship:
        # Maintainers: `snakemake --cores all --config rebuild_models=true -- ship`, then replace
        # dwakd/assets/<pair> with the folder it writes (bf16 weights, tokenizers, card, SHA256SUMS).
        input:
            rules.models.output,
        output:
            directory(f"{R}/build/shipped_{PAIR_NAME}"),
        params:
            cfg=CFG,
        log:
            f"{R}/logs/ship.log",
        benchmark:
            f"{R}/benchmarks/ship.tsv"
        conda:
            ENV
        shell:
            "dwakd ship --config {params.cfg} --teacher {input}/teacher --student {input}/student_base "
            "--dest {output} > {log} 2>&1"

else:

    rule models:
        output:
            directory(f"{R}/models"),
        params:
            cfg=CFG,
            key=digest(PAIR.get("shipped"), SHIPPED_SUMS),
        log:
            f"{R}/logs/models.log",
        benchmark:
            f"{R}/benchmarks/models.tsv"
        conda:
            ENV
        shell:
            "dwakd models --config {params.cfg} --out {output} > {log} 2>&1"
