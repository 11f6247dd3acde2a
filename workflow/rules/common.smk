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
for _r in PROFILE["main_table"]:
    if _r not in config["methods"]:
        raise ValueError(f"config: profiles.{PROFILE_NAME}.main_table: {_r!r} is not in methods")

R = config.get("results_dir") or PROFILE["results_dir"]
EVAL_SETS = PROFILE["eval"]["sets"]
LOCAL_SETS = [s for s in EVAL_SETS if s != "unni"]
RUNS = PROFILE["main_table"]
REBUILD = bool(config.get("rebuild_models")) or not PAIR.get("shipped")
ENV = "../envs/dwakd.yaml"


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


def eval_data(w):
    return f"{R}/data/{w.set}.jsonl"
