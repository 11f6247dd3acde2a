"""Load, validate and resolve config/config.yaml.

The JSON schema (workflow/schemas/config.schema.yaml) rejects unknown keys and wrong types with the key's
path; ``resolve`` then checks the cross-references (profile → pair, sets, runs) and returns the profile's
view of the config that every CLI command and every Snakemake rule uses.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dwakd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_set(items: list[str]) -> dict:
    """``["a.b=1", "c=[x, y]"]`` → nested dict, values parsed as YAML."""
    over: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        key, val = item.split("=", 1)
        node = over
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(val)
    return over


def validate(cfg: dict, source: str = "config") -> None:
    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.path) or "(top level)"
        raise ConfigError(f"{source}: {key}: {e.message}")


def load(paths: list[str | Path] | None = None, overrides: dict | None = None) -> dict:
    """Merge the config files (later wins) and overrides, validate, and return the full config."""
    paths = [Path(p) for p in (paths or [DEFAULT_CONFIG])]
    cfg: dict = {}
    for p in paths:
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        cfg = deep_merge(cfg, yaml.safe_load(p.read_text()) or {})
    cfg = deep_merge(cfg, overrides or {})
    validate(cfg, ", ".join(map(str, paths)))
    check(cfg)
    return cfg


def check(cfg: dict) -> None:
    """Cross-references the schema cannot express."""
    name = cfg["profile"]
    if name not in cfg["profiles"]:
        raise ConfigError(f"profile: {name!r} is not defined; profiles: {sorted(cfg['profiles'])}")
    prof = cfg["profiles"][name]
    if prof["pair"] not in cfg["pairs"]:
        raise ConfigError(f"profiles.{name}.pair: {prof['pair']!r} is not in pairs ({sorted(cfg['pairs'])})")
    for s in prof["eval"]["sets"]:
        if s not in cfg["datasets"]:
            raise ConfigError(f"profiles.{name}.eval.sets: {s!r} is not in datasets ({sorted(cfg['datasets'])})")
    for key, runs in tables(prof).items():
        for r in runs:
            if r not in cfg["methods"]:
                raise ConfigError(f"profiles.{name}.{key}_table: {r!r} is not in methods ({sorted(cfg['methods'])})")


def tables(prof: dict) -> dict[str, list[str]]:
    """The result tables of a profile: ``main`` (below the copy floor and the teacher) and, when the profile
    has a non-empty ``ablation_table``, ``ablation`` (its runs only, in order: the paper's Table 3 layout)."""
    out = {"main": list(prof["main_table"])}
    if prof.get("ablation_table"):
        out["ablation"] = list(prof["ablation_table"])
    return out


def table_runs(prof: dict) -> list[str]:
    """Every run of the profile's tables, once: the main table's, then the ablation table's not yet listed
    (the Snakefile's ``RUNS``)."""
    return list(dict.fromkeys(r for runs in tables(prof).values() for r in runs))


def profile(cfg: dict) -> dict[str, Any]:
    return cfg["profiles"][cfg["profile"]]


def pair(cfg: dict) -> dict[str, Any]:
    return cfg["pairs"][profile(cfg)["pair"]]


def run_spec(cfg: dict, run: str) -> dict:
    if run not in cfg["methods"]:
        raise ConfigError(f"run {run!r} is not in methods; defined: {', '.join(sorted(cfg['methods']))}")
    return cfg["methods"][run]


def dump(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
    tmp.replace(path)
