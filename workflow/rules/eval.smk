# The rows of a pair's tables: the copy floor and each run (`eval`); the teacher's row is evaluated once per
# teacher under R/teachers/<teacher>/eval, shared by the pairs with that teacher, and copied into each pair's
# eval folder, where the tables read it (`teacher_eval`, `teacher_eval_copy`).


rule eval:
    input:
        model=eval_model_input,
        data=expand(f"{R}/data/{{s}}.jsonl", s=EVAL_SETS),
    output:
        expand(f"{P}/eval/{{{{model}}}}/{{s}}.json", s=EVAL_SETS, allow_missing=True),
    wildcard_constraints:
        model="|".join(re.escape(m) for m in ["copy", *config["runs"]]),
    params:
        cfg=CFG,
        key=digest(PROFILE["eval"]),
        model=eval_model_arg,
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
        "--data {input.data} --out {output} > {log} 2>&1"


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
