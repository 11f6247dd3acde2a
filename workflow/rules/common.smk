# Shared helpers: config validation, the resolved config file every job reads, and path helpers.

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import yaml

# `--config rebuild_models=true` arrives as a string; accept the usual spellings of a boolean.
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
if isinstance(config.get("rebuild_models"), str) and config["rebuild_models"].lower() in _BOOLS:
    config["rebuild_models"] = _BOOLS[config["rebuild_models"].lower()]

sys.path.insert(0, workflow.basedir)  # dwakd.config: YAML and jsonschema only, no torch
from dwakd import config as C  # noqa: E402
from dwakd import lock as L  # noqa: E402  (standard library only)
from dwakd.files import RECEIPT, quick_check  # noqa: E402  (torch-free)

# Every configuration mistake stops the run (and the dry run) here, in one line: where it comes from (the config
# file, or the `--config KEY=VALUE` override), the key, what was expected. Checked: the schema, the
# cross-references (profile -> pairs, sets, runs), each run's method and options against the registered methods'
# Config dataclasses (read in a subprocess, cached until the code changes: this process never imports torch).
METHOD_SPECS = C.method_specs()  # each registered method's options and capabilities (Method.CAPABILITIES)
try:
    C.check_all(config, METHOD_SPECS)
except C.ConfigError as e:
    _files = [Path(workflow.basedir) / "config" / "config.yaml", *workflow.config_settings.configfiles]
    sys.exit(C.locate(str(e), _files, {k: f"--config {k}={v}" for k, v in workflow.config_settings.config.items()}))
if METHOD_SPECS is None:
    sys.exit("dwakd: the workflow asks each run's method what it trains on and whether it reads a vocabulary map "
             "(dwakd.registry.specs), and the method registry did not import (see the note above): run Snakemake "
             "where `python -m dwakd.registry` works (the dwakd environment)")
PROFILE_NAME = config["profile"]
PROFILE = C.profile(config)  # the profile over `defaults`
PAIRS = PROFILE["pairs"]
# The same-vocabulary table (DSKD's Table 1; `same_vocab_pair` / `same_vocab_table`): its pair, whose teacher uses the
# student's tokenizer, trains and evaluates that table's runs only (and its teacher), none of the other tables'.
SAME_VOCAB = C.same_vocab(PROFILE)  # (pair, runs), or None without one
SV_PAIR = SAME_VOCAB[0] if SAME_VOCAB else None
ALL_PAIRS = C.profile_pairs(PROFILE)  # PAIRS, then SV_PAIR: every pair with models, runs and evaluations
# the result tables: main (copy floor, teacher, main_table) and, if the profile lists runs, ablation; the default
# target builds DEFAULT_TABLES (ablation too unless the profile's `ablation_in_all` is false: `snakemake ablation`)
TABLES = C.tables(PROFILE)
DEFAULT_TABLES = C.tables(PROFILE, default_only=True)

R = config.get("results_dir") or PROFILE["results_dir"]
EVAL_SETS = PROFILE["eval"]["sets"]
LOCAL_SETS = [s for s in EVAL_SETS if s != "unni"]
RUNS = C.table_runs(PROFILE)  # every run of the default target's tables, once

# Layout (every profile, one pair or several): the data under R; each pair's models, runs, evaluations, tables and
# figures under P = R/<pair>; what depends on the teacher only (its fine-tuned model, its samples, its evaluation)
# under R/teachers/<teacher name>, shared by the pairs with that teacher; the MinED vocabulary maps under
# R/vocab_maps/<teacher>__<student tokenizer>.json, shared by the pairs with those tokenizers.
P = f"{R}/{{pair}}"
GENERATED = f"{R}/teachers/{{teacher}}/generated/teacher_train.jsonl"
VOCAB_MAP = f"{R}/vocab_maps/{{vmap}}.json"
TEACHER_OF = {p: C.teacher_name(config["pairs"][p]) for p in ALL_PAIRS}
VMAP_OF = {p: C.vocab_map_name(config["pairs"][p]) for p in ALL_PAIRS}


wildcard_constraints:
    pair="|".join(re.escape(p) for p in ALL_PAIRS),
    teacher="|".join(re.escape(t) for t in set(TEACHER_OF.values())),
    vmap="|".join(re.escape(v) for v in set(VMAP_OF.values())),


def pdir(pair):
    """The folder of ``pair``'s results."""
    return P.format(pair=pair)


def first_pair(of, name):
    """The first pair of the profile whose teacher (``of=TEACHER_OF``) or vocabulary map (``VMAP_OF``) is ``name``."""
    return next(p for p in ALL_PAIRS if of[p] == name)


def is_hub(pair):
    """A pair of published models (hf_id / path) rather than one the suite builds (arch)."""
    return "arch" not in config["pairs"][pair]["student"]


def rebuilds(pair):
    """A self-built pair that is built in the run (not unpacked from dwakd/assets)."""
    return not is_hub(pair) and (bool(config.get("rebuild_models")) or not config["pairs"][pair].get("shipped"))


HUB_SFT_TEACHERS = sorted({TEACHER_OF[p] for p in ALL_PAIRS if is_hub(p) and config["pairs"][p]["teacher"].get("sft")})
# training jobs: `dwakd train`, or the same module under the profile's launcher (accelerate launch ...)
TRAIN_CMD = f"{PROFILE['launcher']} -m dwakd.cli" if PROFILE.get("launcher") else "dwakd"
ENV = "../envs/dwakd.yaml"
# threads of each model job (train, eval, generate, ...): all of --cores unless the profile says fewer, so
# that small models' jobs (whose time is mostly start-up) run side by side
def _cores():
    try:
        return workflow.cores
    except Exception:  # commands without --cores (`snakemake --report`) never run a job
        return os.cpu_count() or 1


JOB_THREADS = PROFILE.get("threads") or _cores()


# Commands that only read the results (a dry run, lint, the report, listings): they take no lock and write nothing
# there while another workflow holds it. Snakemake does not tell a Snakefile which command runs it, hence argv.
_READ_ONLY_FLAGS = {"--dry-run", "--dryrun", "--lint", "--report", "--list-rules", "--list", "-l",
                    "--list-target-rules", "--lt", "--summary", "-S", "--detailed-summary", "-D", "--dag",
                    "--rulegraph", "--filegraph", "--d3dag", "--unlock", "--list-changes", "--lc",
                    "--list-input-changes", "--li", "--list-params-changes", "--lp", "--list-code-changes",
                    "--list-untracked", "--lu", "--archive", "--containerize", "--print-compilation",
                    "--cleanup-metadata", "--cm", "--cleanup-shadow", "--generate-unit-tests"}


def _read_only() -> bool:
    for a in sys.argv[1:]:
        if a.split("=", 1)[0] in _READ_ONLY_FLAGS:
            return True
        if a.startswith("-") and not a.startswith("--") and a[1:].isalpha() and "n" in a[1:]:
            return True  # -n, -np, -pn, ...
    return False


READ_ONLY = _read_only()
# One workflow at a time on a results folder, from any checkout or working directory (Snakemake's own lock is
# per working directory): the lock file <results_dir>/.dwakd.lock, held until this process ends (dwakd/lock.py).
# Jobs that Snakemake runs as their own Snakemake process (cluster, subprocess modes) are parts of the holder's run.
_LOCKED_BY_OTHER = False
if workflow.exec_mode.name == "DEFAULT":
    if READ_ONLY:
        _holder = L.in_use(R)
        if _holder:
            _LOCKED_BY_OTHER = True
            print(f"dwakd: note: {R} is in use by another workflow ({_holder}); this command only reads it",
                  file=sys.stderr)
    else:
        try:
            L.acquire(R, workflow.basedir)
        except L.ResultsLocked as e:
            sys.exit(f"dwakd: {e}")
else:
    _LOCKED_BY_OTHER = True  # a job's own Snakemake process: the main process wrote the resolved config


def _write_resolved_config() -> str:
    """The merged config (config files + --config) that every `dwakd` command of this run reads.
    Rewritten only when its content changes."""
    path = Path(R) / "config.resolved.yaml"
    text = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)
    if _LOCKED_BY_OTHER:  # the running workflow's jobs read this file
        return str(path)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


CFG = _write_resolved_config()


def _check_trained_models():
    """A trained run whose model folder no longer matches its checksums (a file deleted or truncated since it was
    saved) loses its receipt, so that this workflow trains it again (a dry run only says so); the unpacked models
    are named with the command that redoes them. Names and sizes only: no file is read."""
    runs = set(C.table_runs(PROFILE, default_only=False)) | set((PROFILE.get("figures") or {}).get("runs") or [])
    for pair in ALL_PAIRS:
        of_pair = (runs if pair in PAIRS else set()) | (set(SAME_VOCAB[1]) if pair == SV_PAIR else set())
        for run in sorted(of_pair):
            receipt = Path(pdir(pair)) / "runs" / run / RECEIPT
            problem = receipt.exists() and quick_check(receipt.parent / "model")
            if problem:
                if READ_ONLY or _LOCKED_BY_OTHER:
                    print(f"dwakd: {problem} (a run of the workflow removes {receipt} and retrains it)",
                          file=sys.stderr)
                else:
                    receipt.unlink()
                    print(f"dwakd: {problem} (removed {receipt}: this run retrains it)", file=sys.stderr)
        for role in ("teacher", "student_base"):
            problem = quick_check(Path(pdir(pair)) / "models" / role)
            if problem:
                print(f"dwakd: {problem}", file=sys.stderr)


if workflow.exec_mode.name == "DEFAULT":
    _check_trained_models()


def digest(*parts) -> str:
    """A short hash of config sections: a rule's params change (and it reruns) when they change."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parent(path, levels=1):
    """The folder ``levels`` up from ``path`` (params derived from a rule's own input or output)."""
    for _ in range(levels):
        path = os.path.dirname(str(path))
    return path


# Which runs need the per-pair inputs of workflow/rules/per_pair.smk: the workflow asks the run's method
# (its capabilities in METHOD_SPECS), never which method it is. `dwakd train` refuses a run on teacher samples
# whose training file does not come from `dwakd generate`.
def capability(run, name):
    """A capability of a run's method (``Method.CAPABILITIES``: train_data, needs_vocab_map, ...)."""
    return METHOD_SPECS[config["runs"][run]["method"]][name]


def train_file(w):
    """The training JSONL of a run: the teacher's generations for a method that trains on them (SeqKD), else the
    gold training data."""
    if capability(w.run, "train_data") == "teacher":
        return GENERATED.format(teacher=TEACHER_OF[w.pair])
    return rules.data.output.train


def run_vocab_map(w):
    """The pair's vocabulary map for a method that reads one (MinED), else nothing."""
    return VOCAB_MAP.format(vmap=VMAP_OF[w.pair]) if capability(w.run, "needs_vocab_map") else []


def vocab_map_arg(w, input):
    return f"--vocab-map {input.vocab_map}" if input.vocab_map else ""


def ancient_of(files):
    """``ancient`` copies of another rule's output paths (flagging those in place would flag the other rule's
    output objects as well)."""
    files = [files] if isinstance(files, str) else files
    return ancient([str(f) for f in files])


def shipped_sums(pair):
    """A shipped pair's checksums: their content changes when new models are shipped under the same name."""
    if is_hub(pair) or rebuilds(pair):
        return None
    sums = Path(workflow.basedir) / "dwakd" / "assets" / config["pairs"][pair]["shipped"] / "SHA256SUMS"
    return sums.read_text() if sums.exists() else None


def teacher_key(pair):
    """What a pair's teacher (and its tokenizer) depends on: the shipped files, the settings that build it, or
    the published model and its fine-tuning settings."""
    spec = config["pairs"][pair]
    if is_hub(pair):
        return spec["teacher"]
    if not rebuilds(pair):
        return shipped_sums(pair)
    b = spec.get("build", {})
    return [spec["teacher"], spec.get("tokenizers"), b.get("teacher_pretrain"), b.get("teacher_sft")]


def models_input(w):
    """The `models` rule's inputs: the built teacher and student (self-built pairs built in the run), the
    fine-tuned published teacher (hub pairs whose teacher has `sft`), else nothing."""
    pair = w.pair
    if is_hub(pair):
        t = TEACHER_OF[pair]
        return {"teacher": f"{R}/teachers/{t}/model"} if t in HUB_SFT_TEACHERS else {}
    if rebuilds(pair):
        build = f"{pdir(pair)}/build"
        return {"teacher": f"{build}/teacher_sft/model", "student": f"{build}/student_pretrain/model"}
    return {}


def models_args(w, input):
    return " ".join(f"--{k} {v}" for k, v in input.items())


def teacher_pair(w):
    """The first pair with this job's teacher: its settings and models stand for the teacher's (the same in all)."""
    return first_pair(TEACHER_OF, w.teacher)


def teacher_models(w):
    """The models folder holding this job's teacher."""
    return f"{pdir(teacher_pair(w))}/models"


def generate_models(w):
    return ancient_of(teacher_models(w))


def vocab_map_models(w):
    return f"{pdir(first_pair(VMAP_OF, w.vmap))}/models"


def eval_model_input(w):
    """The model folder a row of the table is read from ('copy' needs none; the teacher: rule teacher_eval)."""
    return [] if w.model == "copy" else f"{pdir(w.pair)}/runs/{w.model}/{RECEIPT}"  # the run's receipt (rule train)


def teacher_dtype(pair):
    """The dtype a pair's teacher is loaded in for sampling and evaluation (its `dtype`, default float32)."""
    return config["pairs"][pair]["teacher"].get("dtype", "float32")


def eval_model_arg(w, input):
    return "copy" if w.model == "copy" else f"{parent(input.model)}/model"


def table_models(w):
    """The models whose evaluations a table reads: main adds the copy floor and the teacher."""
    runs = TABLES[w.table]
    return ["copy", "teacher", *runs] if w.table == "main" else runs


def figure_caption(path):
    """The HTML report's caption of a figure (workflow/report/fig_*.rst)."""
    name = os.path.basename(path).rsplit(".", 1)[0]
    kind = {"alignment_probe": "probe", "train_curves": "curves", "rougeL": "rouge"}.get(name, "attention")
    return f"../report/fig_{kind}.rst"
