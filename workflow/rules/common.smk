# Shared helpers: config validation, the resolved config file every job reads, and path helpers.

import hashlib
import os
import json
from pathlib import Path

import yaml
from snakemake.utils import validate

# `--config rebuild_models=true` arrives as a string; accept the usual spellings of a boolean.
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
if isinstance(config.get("rebuild_models"), str) and config["rebuild_models"].lower() in _BOOLS:
    config["rebuild_models"] = _BOOLS[config["rebuild_models"].lower()]

validate(config, "../schemas/config.schema.yaml")

PROFILE_NAME = config["profile"]
if PROFILE_NAME not in config["profiles"]:
    raise ValueError(f"config: profile {PROFILE_NAME!r} is not defined; profiles: {sorted(config['profiles'])}")
PROFILE = config["profiles"][PROFILE_NAME]
PAIR_NAME = PROFILE["pair"]
if PAIR_NAME not in config["pairs"]:
    raise ValueError(f"config: profiles.{PROFILE_NAME}.pair: {PAIR_NAME!r} is not in pairs")
PAIR = config["pairs"][PAIR_NAME]
for _s in PROFILE["eval"]["sets"]:
    if _s not in config["datasets"]:
        raise ValueError(f"config: profiles.{PROFILE_NAME}.eval.sets: {_s!r} is not in datasets")
# the result tables: main (copy floor, teacher, main_table) and, if the profile lists runs, ablation
TABLES = {"main": PROFILE["main_table"]}
if PROFILE.get("ablation_table"):
    TABLES["ablation"] = PROFILE["ablation_table"]
for _t, _runs in TABLES.items():
    for _r in _runs:
        if _r not in config["methods"]:
            raise ValueError(f"config: profiles.{PROFILE_NAME}.{_t}_table: {_r!r} is not in methods")

R = config.get("results_dir") or PROFILE["results_dir"]
EVAL_SETS = PROFILE["eval"]["sets"]
LOCAL_SETS = [s for s in EVAL_SETS if s != "unni"]
RUNS = list(dict.fromkeys(r for runs in TABLES.values() for r in runs))  # every run of every table, once
REBUILD = bool(config.get("rebuild_models")) or not PAIR.get("shipped")
ENV = "../envs/dwakd.yaml"
# threads of each model job (train, eval, generate, ...): all of --cores unless the profile says fewer, so
# that small models' jobs (whose time is mostly start-up) run side by side
def _cores():
    try:
        return workflow.cores
    except Exception:  # commands without --cores (`snakemake --report`) never run a job
        return os.cpu_count() or 1


JOB_THREADS = PROFILE.get("threads") or _cores()


def _write_resolved_config() -> str:
    """The merged config (config files + --config) that every `dwakd` command of this run reads.
    Rewritten only when its content changes."""
    path = Path(R) / "config.resolved.yaml"
    text = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


CFG = _write_resolved_config()


def digest(*parts) -> str:
    """A short hash of config sections: a rule's params change (and it reruns) when they change."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parent(path, levels=1):
    """The folder ``levels`` up from ``path`` (params derived from a rule's own input or output)."""
    for _ in range(levels):
        path = os.path.dirname(str(path))
    return path


# Which runs need the per-pair inputs of workflow/rules/per_pair.smk. The Snakefile cannot ask the registry
# (that imports torch), so the method names are listed here; `dwakd train` refuses a SeqKD run whose training
# file does not come from `dwakd generate`.
TEACHER_DATA_METHODS = {"seqkd"}  # methods whose `train_data` is "teacher"
VOCAB_MAP_METHODS = {"mined"}  # methods whose Config has a `vocab_map` field


def run_method(run):
    return config["methods"][run]["method"]


def train_file(w):
    """The training JSONL of a run: the teacher's generations for SeqKD, else the gold training data."""
    if run_method(w.run) in TEACHER_DATA_METHODS:
        return rules.generate.output
    return rules.data.output.train


def run_vocab_map(w):
    return rules.vocab_map.output if run_method(w.run) in VOCAB_MAP_METHODS else []


def vocab_map_arg(w, input):
    return f"--vocab-map {input.vocab_map}" if input.vocab_map else ""


def ancient_of(files):
    """``ancient`` copies of another rule's output paths (flagging those in place would flag the other rule's
    output objects as well)."""
    files = [files] if isinstance(files, str) else files
    return ancient([str(f) for f in files])


def _shipped_sums():
    """The shipped pair's checksums: their content changes when new models are shipped under the same name."""
    if REBUILD:
        return None
    sums = Path(workflow.basedir) / "dwakd" / "assets" / PAIR["shipped"] / "SHA256SUMS"
    return sums.read_text() if sums.exists() else None


SHIPPED_SUMS = _shipped_sums()
# what the teacher (and its tokenizer) depends on: the shipped files, or the settings that build it
TEACHER_KEY = (
    SHIPPED_SUMS
    if not REBUILD
    else [
        PAIR["teacher"],
        PAIR.get("tokenizers"),
        PAIR.get("build", {}).get("teacher_pretrain"),
        PAIR.get("build", {}).get("teacher_sft"),
    ]
)


def eval_model_input(w):
    """The model folder a row of the table is read from ('copy' needs none)."""
    if w.model == "copy":
        return []
    if w.model == "teacher":
        return rules.models.output
    return f"{R}/runs/{w.model}/model"


def eval_model_arg(w, input):
    if w.model == "copy":
        return "copy"
    if w.model == "teacher":
        return f"{input.model}/teacher"
    return input.model


def table_models(w):
    """The models whose evaluations a table reads: main adds the copy floor and the teacher."""
    runs = TABLES[w.table]
    return ["copy", "teacher", *runs] if w.table == "main" else runs


def figure_caption(path):
    """The HTML report's caption of a figure (workflow/report/fig_*.rst)."""
    name = os.path.basename(path).rsplit(".", 1)[0]
    kind = {"alignment_probe": "probe", "train_curves": "curves", "rougeL": "rouge"}.get(name, "attention")
    return f"../report/fig_{kind}.rst"
