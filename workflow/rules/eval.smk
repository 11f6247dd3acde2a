rule eval:
    input:
        model=eval_model_input,
        data=expand(f"{R}/data/{{s}}.jsonl", s=EVAL_SETS),
    output:
        expand(f"{P}/eval/{{{{model}}}}/{{s}}.json", s=EVAL_SETS, allow_missing=True),
    params:
        cfg=CFG,
        key=digest(PROFILE["eval"]),
        model=eval_model_arg,
        dtype=eval_dtype,
    threads: JOB_THREADS
    resources:
        gpu=1,
    log:
        f"{P}/logs/eval/{{model}}.log",
    benchmark:
        f"{P}/benchmarks/eval/{{model}}.tsv"
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} dwakd eval --config {params.cfg} --model {params.model} "
        "--dtype {params.dtype} --data {input.data} --out {output} > {log} 2>&1"


if MULTI:
    # Pairs with the same teacher share its evaluation: computed once under R/teachers/<teacher>/eval and copied
    # into each pair's eval folder, where the tables read it.
    ruleorder: teacher_eval_copy > eval

    rule teacher_eval:
        input:
            models=teacher_models,
            data=expand(f"{R}/data/{{s}}.jsonl", s=EVAL_SETS),
        output:
            expand(f"{R}/teachers/{{{{teacher}}}}/eval/{{s}}.json", s=EVAL_SETS),
        params:
            cfg=CFG,
            key=lambda w: digest(PROFILE["eval"], teacher_key(teacher_pair(w))),
            model=lambda w, input: f"{input.models}/teacher",
            dtype=lambda w: teacher_dtype(teacher_pair(w)),
        threads: JOB_THREADS
        resources:
            gpu=1,
        log:
            f"{R}/logs/eval/teacher_{{teacher}}.log",
        benchmark:
            f"{R}/benchmarks/eval/teacher_{{teacher}}.tsv"
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} dwakd eval --config {params.cfg} --model {params.model} "
            "--dtype {params.dtype} --data {input.data} --out {output} > {log} 2>&1"

    rule teacher_eval_copy:
        input:
            lambda w: f"{R}/teachers/{TEACHER_OF[w.pair]}/eval/{w.s}.json",
        output:
            f"{P}/eval/teacher/{{s}}.json",
        log:
            f"{P}/logs/eval/teacher_copy_{{s}}.log",
        conda:
            ENV
        shell:
            "cp {input} {output} 2> {log}"
