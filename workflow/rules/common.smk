# Shared helpers: config validation, the resolved config file every job reads, and path helpers.

import hashlib
import json
from pathlib import Path

import yaml
from snakemake.utils import validate

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

R = PROFILE["results_dir"]
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
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


CFG = _write_resolved_config()


def digest(*parts) -> str:
    """A short hash of config sections: a rule's params change (and it reruns) when they change."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
