# The models of each pair, as P/models/{teacher,student_base}:
#   self-built, shipped (default)  unpacked from dwakd/assets with their tokenizers (rule models)
#   self-built, in the run         `--config rebuild_models=true` or `shipped: null`: train the two tokenizers,
#                                  pre-train the student, pre-train and fine-tune the teacher
#   published (hf_id / path)       downloaded once into the Hugging Face cache and linked; a teacher with `sft`
#                                  is first fine-tuned on Dolly train under R/teachers/<name> (rule hub_teacher_sft),
#                                  once for all the pairs that share it

TRAIN_ALL = f"{R}/build/train_all.jsonl"
BUILT = [p for p in ALL_PAIRS if rebuilds(p)]  # the same-vocabulary pair too


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


if BUILT:

    rule tokenizers:
        output:
            directory(f"{P}/tokenizers"),
        params:
            cfg=CFG,
            key=lambda w: digest(config["pairs"][w.pair].get("tokenizers")),
        log:
            f"{P}/logs/tokenizers.log",
        benchmark:
            f"{P}/benchmarks/tokenizers.tsv"
        conda:
            ENV
        shell:
            "dwakd tokenizers --config {params.cfg} --pair {wildcards.pair} --out {output} > {log} 2>&1"

    rule pretrain:
        input:
            data=rules.build_data.output,
            tokenizers=rules.tokenizers.output,
        output:
            directory(f"{P}/build/{{role}}_pretrain/model"),
        wildcard_constraints:
            role="teacher|student",
        params:
            cfg=CFG,
            key=lambda w: digest(config["pairs"][w.pair][w.role],
                                 config["pairs"][w.pair].get("build", {}).get(f"{w.role}_pretrain"),
                                 config["pairs"][w.pair].get("build", {}).get(f"{w.role}_text")),
            out=lambda w, output: parent(output[0]),
        threads: JOB_THREADS
        resources:
            gpu=1,
        log:
            f"{P}/logs/pretrain_{{role}}.log",
        benchmark:
            f"{P}/benchmarks/pretrain_{{role}}.tsv"
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} dwakd pretrain --config {params.cfg} --pair {wildcards.pair} "
            "--role {wildcards.role} "
            "--data {input.data} --tokenizers {input.tokenizers} --out {params.out} --resume > {log} 2>&1"

    rule teacher_sft:
        input:
            data=rules.build_data.output,
            init=f"{P}/build/teacher_pretrain/model",
        output:
            directory(f"{P}/build/teacher_sft/model"),
        params:
            cfg=CFG,
            key=lambda w: digest(config["pairs"][w.pair].get("build", {}).get("teacher_sft")),
            out=lambda w, output: parent(output[0]),
        threads: JOB_THREADS
        resources:
            gpu=1,
        log:
            f"{P}/logs/teacher_sft.log",
        benchmark:
            f"{P}/benchmarks/teacher_sft.tsv"
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} dwakd pretrain --config {params.cfg} --pair {wildcards.pair} --role teacher_sft "
            "--data {input.data} --init {input.init} --out {params.out} --resume > {log} 2>&1"

    rule ship:
        # Maintainers: `snakemake --cores all --config rebuild_models=true -- ship`, then replace
        # dwakd/assets/<pair> with the folder it writes for each built pair (bf16 weights, tokenizers, card,
        # SHA256SUMS): <results_dir>/<pair>/build/shipped (rule ship_pair).
        input:
            expand(f"{P}/build/shipped", pair=BUILT),

    rule ship_pair:
        input:
            f"{P}/models",
        output:
            directory(f"{P}/build/shipped"),
        params:
            cfg=CFG,
        log:
            f"{P}/logs/ship.log",
        benchmark:
            f"{P}/benchmarks/ship.tsv"
        conda:
            ENV
        shell:
            "dwakd ship --config {params.cfg} --pair {wildcards.pair} --teacher {input}/teacher "
            "--student {input}/student_base --dest {output} > {log} 2>&1"


if HUB_SFT_TEACHERS:

    rule hub_teacher_sft:
        # A published teacher fine-tuned on Dolly train (SFT), once for every pair that names this teacher.
        input:
            data=rules.data.output.train,
            dev=rules.data.output.dev,
        output:
            directory(f"{R}/teachers/{{teacher}}/model"),
        params:
            cfg=CFG,
            pair=teacher_pair,
            key=lambda w: digest(config["pairs"][teacher_pair(w)]["teacher"]),
            out=lambda w, output: parent(output[0]),
            train_cmd=TRAIN_CMD,
        threads: JOB_THREADS
        resources:
            gpu=1,
        log:
            f"{R}/logs/teacher_sft/{{teacher}}.log",
        benchmark:
            f"{R}/benchmarks/teacher_sft/{{teacher}}.tsv"
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} {params.train_cmd} pretrain --config {params.cfg} --pair {params.pair} "
            "--role teacher_sft --data {input.data} --dev {input.dev} --out {params.out} --resume > {log} 2>&1"


rule models:
    input:
        unpack(models_input),
    output:
        directory(f"{P}/models"),
    params:
        cfg=CFG,
        key=lambda w: digest(config["pairs"][w.pair].get("shipped"), shipped_sums(w.pair),
                             config["pairs"][w.pair]["student"] if is_hub(w.pair) else None),
        args=models_args,
    log:
        f"{P}/logs/models.log",
    benchmark:
        f"{P}/benchmarks/models.tsv"
    conda:
        ENV
    shell:
        "dwakd models --config {params.cfg} --pair {wildcards.pair} {params.args} --out {output} > {log} 2>&1"
