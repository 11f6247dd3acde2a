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
    if ("pair" in prof) == ("pairs" in prof):
        raise ConfigError(f"profiles.{name}: give exactly one of `pair` (one pair; results in results_dir) or "
                          f"`pairs` (a list; results in results_dir/<pair>/)")
    for p in profile_pairs(prof):
        if p not in cfg["pairs"]:
            key = "pair" if "pair" in prof else "pairs"
            raise ConfigError(f"profiles.{name}.{key}: {p!r} is not in pairs ({sorted(cfg['pairs'])})")
    for s in prof["eval"]["sets"]:
        if s not in cfg["datasets"]:
            raise ConfigError(f"profiles.{name}.eval.sets: {s!r} is not in datasets ({sorted(cfg['datasets'])})")
    for key, runs in tables(prof).items():
        for r in runs:
            if r not in cfg["methods"]:
                raise ConfigError(f"profiles.{name}.{key}_table: {r!r} is not in methods ({sorted(cfg['methods'])})")
    check_shared_teachers(cfg, profile_pairs(prof))


def check_shared_teachers(cfg: dict, pairs: list[str]) -> None:
    """Pairs whose teachers have the same name share its fine-tuned model and samples, so their teacher
    settings must be the same."""
    seen: dict[str, tuple[str, dict]] = {}
    for p in pairs:
        spec = cfg["pairs"][p]["teacher"]
        t = teacher_name(cfg["pairs"][p])
        if t in seen and seen[t][1] != spec:
            raise ConfigError(f"pairs.{p}.teacher: named {t!r} like pairs.{seen[t][0]}.teacher but its settings "
                              f"differ; give one of them another `name` (teacher outputs are shared by name)")
        seen.setdefault(t, (p, spec))


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


def profile_pairs(prof: dict) -> list[str]:
    """The pairs a profile runs: ``[pair]`` or its ``pairs`` list."""
    return list(prof["pairs"]) if "pairs" in prof else [prof["pair"]]


def pair_name(cfg: dict, name: str | None = None) -> str:
    """``name`` checked against the profile's pairs, or the profile's only pair when ``name`` is None."""
    pairs = profile_pairs(profile(cfg))
    if name is None:
        if len(pairs) != 1:
            raise ConfigError(f"profile {cfg['profile']!r} runs several pairs ({', '.join(pairs)}): "
                              f"choose one with --pair")
        return pairs[0]
    if name not in pairs:
        raise ConfigError(f"--pair {name}: profile {cfg['profile']!r} runs the pairs {pairs}")
    return name


def pair(cfg: dict, name: str | None = None) -> dict[str, Any]:
    """The settings of pair ``name`` (default: the profile's only pair)."""
    return cfg["pairs"][pair_name(cfg, name)]


def _slug(s: str) -> str:
    return s.replace("/", "--")


def teacher_name(pair_spec: dict) -> str:
    """The name a pair's teacher outputs are stored and shared under: ``teacher.name``, or its Hugging Face
    id with "/" → "--" (pairs with the same teacher share its fine-tuned model and its samples)."""
    t = pair_spec["teacher"]
    return t.get("name") or _slug(t.get("hf_id") or t.get("path") or t.get("arch", "teacher"))


def vocab_map_name(pair_spec: dict) -> str:
    """The name of a pair's teacher → student vocabulary map: teacher and student *tokenizer* names (pairs whose
    students share a tokenizer, e.g. GPT2-120M and GPT2-340M, share the map)."""
    s = pair_spec["student"]
    tok = s.get("tokenizer") or s.get("hf_id") or s.get("path") or s.get("arch", "student")
    return f"{teacher_name(pair_spec)}__{_slug(tok)}"


def train_overrides(cfg: dict, run: str, pair_name_: str | None = None) -> dict:
    """A run's TrainConfig overrides: the profile's ``train``, then the pair's, then the run's (later wins)."""
    return {**profile(cfg)["train"], **pair(cfg, pair_name_).get("train", {}), **run_spec(cfg, run).get("train", {})}


def run_spec(cfg: dict, run: str) -> dict:
    if run not in cfg["methods"]:
        raise ConfigError(f"run {run!r} is not in methods; defined: {', '.join(sorted(cfg['methods']))}")
    return cfg["methods"][run]


def dump(obj: Any, path: Path) -> None:
    """``obj`` as YAML in ``path``, written atomically."""
    from dwakd.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))
