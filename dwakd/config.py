"""Load, validate and resolve config/config.yaml.

The JSON schema (workflow/schemas/config.schema.yaml) rejects unknown keys and wrong types with the key's
path, and a profile merged over ``defaults`` (``profile``) that lacks a required key; ``check`` then checks the
cross-references (profile → pairs, sets, runs) and ``check_methods`` each run's method name and options against
the registered methods' Config dataclasses. Every error is one line,
``<key>: <what was expected>``; ``locate`` puts the file (or the ``--config`` / ``--set`` override) it comes
from in front. The Snakefile runs the same checks (``check_all``) before it builds the DAG, so a dry run
reports every configuration mistake; this module never imports torch (the registry is read through
``method_specs``, in a subprocess, cached).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dwakd.errors import ConfigError
from dwakd.settings import check_options

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


_KINDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "a boolean (true or false)",
          "array": "a list", "object": "a mapping", "null": "null"}
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def _schema_error(e: jsonschema.ValidationError) -> tuple[str, str]:
    """``(key, what was expected)`` of a schema error, in words (jsonschema's own message as the fallback)."""
    path = [str(p) for p in e.absolute_path]
    v, val, got = e.validator, e.validator_value, e.instance
    if v == "additionalProperties" and val is False and isinstance(got, dict):
        known = sorted(e.schema.get("properties", {}))
        extra = [str(k) for k in got if k not in known]
        return ".".join(path + extra[:1]), f"unknown key; expected one of: {', '.join(known)}"
    if v == "required" and isinstance(got, dict):
        missing = [k for k in val if k not in got]
        return ".".join(path + missing[:1]), "missing (a required key)"
    if v == "type":
        kinds = " or ".join(_KINDS.get(t, t) for t in (val if isinstance(val, list) else [val]))
        msg = f"expected {kinds}, got {got!r}"
    elif v == "enum":
        msg = f"expected one of {val}, got {got!r}"
    elif v in _BOUNDS:
        msg = f"expected a value {_BOUNDS[v]} {val}, got {got!r}"
    elif v in ("minItems", "maxItems"):
        msg = f"expected {'at least' if v == 'minItems' else 'at most'} {val} item(s), got {got!r}"
    elif v == "uniqueItems":
        msg = f"expected no item twice, got {got!r}"
    else:
        msg = e.message
    msg = " ".join(msg.split())  # one line, whatever the instance
    if len(msg) > 300:
        msg = msg[:300] + " …"
    return ".".join(path) or "(top level)", msg


def validate(cfg: dict, source: str | None = None) -> None:
    """The schema's first error (by key) as ``[source: ]<key>: <what was expected>``: the config as written, then
    each profile merged over ``defaults`` (``$defs/resolved_profile``: the keys a profile or ``defaults`` gives)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.path))
    if not errors:
        merged = {"profiles": {name: _over_defaults(cfg, name) for name in cfg["profiles"]}}
        resolved = {"$defs": schema["$defs"], "properties": {"profiles": {
            "additionalProperties": {"$ref": "#/$defs/resolved_profile"}}}}
        errors = sorted(jsonschema.Draft202012Validator(resolved).iter_errors(merged), key=lambda e: list(e.path))
    if errors:
        key, msg = _schema_error(errors[0])
        raise ConfigError(f"{source}: {key}: {msg}" if source else f"{key}: {msg}")


def read_yaml(path: Path) -> dict:
    """A config file's mapping; unreadable YAML (a truncated or non-UTF-8 file) is a ``ConfigError`` naming the
    file and line (a workflow's ``config.resolved.yaml`` is rewritten by the next ``snakemake`` run)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start + 1}); fix or regenerate the file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ConfigError(f"{where}: not readable YAML ({what}); fix or regenerate the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def load(paths: list[str | Path] | None = None, overrides: dict | None = None) -> dict:
    """Merge the config files (later wins) and overrides, validate, and return the full config."""
    paths = [Path(p) for p in (paths or [DEFAULT_CONFIG])]
    cfg: dict = {}
    for p in paths:
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        cfg = deep_merge(cfg, read_yaml(p))
    cfg = deep_merge(cfg, overrides or {})
    try:
        validate(cfg)
        check(cfg)
    except ConfigError as e:
        raise ConfigError(locate(str(e), paths, {k: f"--set {k}={v}" for k, v in flatten(overrides or {}).items()})
                          ) from None
    return cfg


def check_all(cfg: dict, specs: dict | None) -> None:
    """Every check of a configuration, in order: the schema, the cross-references, and (``specs``: the
    registered methods' ``method_specs``; None: skipped) each run's method and options. Raises the first
    error as ``<key>: <what was expected>``."""
    validate(cfg)
    check(cfg)
    if specs is not None:
        check_methods(cfg, specs)


def check(cfg: dict) -> None:
    """Cross-references the schema cannot express."""
    name = cfg["profile"]
    if name not in cfg["profiles"]:
        raise ConfigError(f"profile: unknown profile {name!r} (defined: {', '.join(sorted(cfg['profiles']))})")
    prof = profile(cfg)
    for p in prof["pairs"]:
        if p not in cfg["pairs"]:
            raise ConfigError(f"profiles.{name}.pairs: {p!r} is not in pairs ({sorted(cfg['pairs'])})")
    for s in prof["eval"]["sets"]:
        if s not in cfg["datasets"]:
            raise ConfigError(f"profiles.{name}.eval.sets: {s!r} is not in datasets ({sorted(cfg['datasets'])})")
    for key, runs in tables(prof).items():
        for r in runs:
            if r not in cfg["runs"]:
                raise ConfigError(f"profiles.{name}.{key}_table: {r!r} is not in runs ({sorted(cfg['runs'])})")
    fig = prof.get("figures") or {}
    if fig.get("set", "dolly") not in prof["eval"]["sets"]:
        raise ConfigError(f"profiles.{name}.figures.set: {fig.get('set', 'dolly')!r} is not one of eval.sets "
                          f"{prof['eval']['sets']}")
    for r in fig.get("runs") or []:
        if r not in cfg["runs"]:
            raise ConfigError(f"profiles.{name}.figures.runs: {r!r} is not in runs ({sorted(cfg['runs'])})")
    for b in (cfg.get("report") or {}).get("baselines") or []:
        if b not in cfg["runs"]:
            raise ConfigError(f"report.baselines: {b!r} is not in runs ({sorted(cfg['runs'])})")
    check_same_vocab(cfg, name, prof)
    check_shared_teachers(cfg, profile_pairs(prof))


def _tokenizer_name(model: dict) -> str | None:
    """The name of a published model's tokenizer (``tokenizer``, else its ``hf_id`` / ``path``)."""
    return model.get("tokenizer") or model.get("hf_id") or model.get("path")


def check_same_vocab(cfg: dict, name: str, prof: dict) -> None:
    """The same-vocabulary table's keys (``same_vocab_pair``, ``same_vocab_table``): a pair of ``pairs`` whose
    teacher uses the student's tokenizer (a self-built pair: ``tokenizers.shared: true``; a published pair: the
    same ``tokenizer`` name on both sides) and runs of ``runs``. The methods refuse different tokenizers again at
    start-up (``baselines.vanilla_kd.require_same_vocabulary``)."""
    p = prof.get("same_vocab_pair")
    if p is None:
        return
    where = f"profiles.{name}"
    if p not in cfg["pairs"]:
        raise ConfigError(f"{where}.same_vocab_pair: {p!r} is not in pairs ({sorted(cfg['pairs'])})")
    if not prof.get("same_vocab_table"):
        raise ConfigError(f"{where}.same_vocab_table: the same-vocabulary table of pair {p!r} lists no run; expected "
                          f"runs of `runs` (e.g. sft, vanilla_kd_fkl, dskd_fkl), or drop same_vocab_pair")
    for r in prof["same_vocab_table"]:
        if r not in cfg["runs"]:
            raise ConfigError(f"{where}.same_vocab_table: {r!r} is not in runs ({sorted(cfg['runs'])})")
    spec = cfg["pairs"][p]
    if "arch" in spec["student"]:
        if not (spec.get("tokenizers") or {}).get("shared"):
            raise ConfigError(f"{where}.same_vocab_pair: pair {p!r} has two tokenizers (pairs.{p}.tokenizers.shared "
                              f"is not true); the same-vocabulary table needs a teacher that uses the student's "
                              f"tokenizer")
    elif _tokenizer_name(spec["teacher"]) != _tokenizer_name(spec["student"]):
        raise ConfigError(f"{where}.same_vocab_pair: the teacher of pair {p!r} uses the tokenizer "
                          f"{_tokenizer_name(spec['teacher'])!r} and its student {_tokenizer_name(spec['student'])!r};"
                          f" the same-vocabulary table needs one tokenizer (name it in both models' `tokenizer`)")


# ------------------------------------------------------------------------------------ method options

def unknown_method(run: str, name: str, registered: list[str]) -> str:
    close = difflib.get_close_matches(str(name), registered, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"runs.{run}.method: unknown method {name!r}{hint} (registered: {', '.join(sorted(registered))})"


def on_policy_unsupported(where: str, ratio: float, method: str, able: list[str]) -> str:
    """The error of a run that asks for on-policy distillation (``on_policy_ratio`` > 0) with a method that does not
    support it (``Method.on_policy``); ``able``: the methods that do."""
    return (f"{where}.on_policy_ratio: {ratio} asks for on-policy distillation, which method {method!r} does not "
            f"support (methods that do: {', '.join(sorted(able))}); set it to 0 or use one of those")


def check_methods(cfg: dict, specs: dict) -> None:
    """Every entry of ``runs``: a registered method (``specs``: ``method_specs()``) and options its Config
    dataclass accepts (names, types, fixed choices: ``dwakd.settings.check_options``, as ``dwakd train`` checks)."""
    train = profile(cfg)["train"]
    for run, spec in cfg["runs"].items():
        if spec["method"] not in specs:
            raise ConfigError(unknown_method(run, spec["method"], list(specs)))
        m = specs[spec["method"]]
        check_options(f"runs.{run}.config", spec.get("config"), m["options"], m["config"])
        ratio = {**train, **(spec.get("train") or {})}.get("on_policy_ratio") or 0
        if ratio > 0 and not m.get("on_policy", False):
            raise ConfigError(on_policy_unsupported(f"runs.{run}.train", ratio, spec["method"],
                                                    [n for n, x in specs.items() if x.get("on_policy")]))


def _source_files() -> list[Path]:
    """The modules the registry discovers (a new one changes the registry)."""
    return sorted(p for d in (ROOT / "dwakd" / "methods", ROOT / "baselines") for p in d.glob("*.py"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fresh(files: dict[str, str]) -> bool:
    try:
        return ({str(p.relative_to(ROOT)) for p in _source_files()} <= set(files)
                and all(_sha(ROOT / f) == h for f, h in files.items()))
    except OSError:
        return False


SPEC_CACHE = ROOT / ".snakemake" / "dwakd" / "methods.json"


def method_specs(cache: Path | None = SPEC_CACHE) -> dict | None:
    """``dwakd.registry.specs()`` (each registered method's Config options, training data and loss-term labels)
    without importing torch here: read from the registry in a subprocess and kept in ``cache`` until one of the
    project's source files that it imported (or the list of method modules) changes, so only the first dry
    run after a code change pays for the import. None, with a note on stderr, where the registry cannot be
    imported (an environment without torch: ``dwakd train`` still checks the options)."""
    if cache is not None and cache.exists():
        try:
            data = json.loads(cache.read_text())
            if _fresh(data["files"]):
                return data["methods"]
        except (ValueError, KeyError, OSError):
            pass
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-m", "dwakd.registry"], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"note: method options not checked (the method registry did not import: {why}); "
              f"`dwakd train` checks them", file=sys.stderr)
        return None
    data = json.loads(lines[-1])
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(cache)
        except OSError:
            pass
    return data["methods"]


# ------------------------------------------------------------------------------------ where an error comes from

def flatten(over: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (the keys of the leaves)."""
    out: dict[str, Any] = {}
    for k, v in over.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def _has(node: Any, key: str) -> bool:
    """Whether the dotted ``key`` names something in ``node`` (names with dots, like pair names, included)."""
    if not key:
        return True
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        k = str(k)
        if key == k or (key.startswith(k + ".") and _has(v, key[len(k) + 1:])):
            return True
    return False


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def locate(message: str, files: list, overrides: dict[str, str] | None = None, fallback: bool = True) -> str:
    """``message`` (``<key>: ...``) with the source of ``key`` in front: the override that set it (``overrides``:
    dotted key → how it was given, e.g. ``--config profile=nope``), else the last of ``files`` (merged in that
    order) that holds it or its nearest parent, else (``fallback``) the first file."""
    key = message.split(": ", 1)[0]
    for okey, shown in (overrides or {}).items():
        if key == okey or key.startswith(okey + ".") or okey.startswith(key + "."):
            return f"{shown}: {message}"
    data = []
    for f in files:
        try:
            data.append((f, yaml.safe_load(Path(f).read_text()) or {}))
        except (OSError, yaml.YAMLError):
            pass
    while key:
        for f, d in reversed(data):
            if _has(d, key):
                return f"{_shown(f)}: {message}"
        key = key.rsplit(".", 1)[0] if "." in key else ""
    return f"{_shown(files[0])}: {message}" if fallback and files else message


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
    # a self-built teacher is also its tokenizer, its build recipe and its shipped files: the same settings on
    # another tokenizer (a same-tokenizer twin of a pair) are another model
    built: dict[str, tuple[str, list]] = {}
    for p in pairs:
        ps = cfg["pairs"][p]
        if "arch" not in ps["teacher"]:
            continue
        t, b = teacher_name(ps), ps.get("build") or {}
        key = [ps.get("tokenizers"), b.get("teacher_pretrain"), b.get("teacher_sft"), ps.get("shipped")]
        if t in built and built[t][1] != key:
            raise ConfigError(f"pairs.{p}.teacher: named {t!r} like pairs.{built[t][0]}.teacher, but it is another "
                              f"model (its tokenizers, build or shipped folder differ); give one of them another "
                              f"`name` (teacher outputs are shared by name)")
        built.setdefault(t, (p, key))


def tables(prof: dict, default_only: bool = False) -> dict[str, list[str]]:
    """The result tables of a profile: ``main`` (below the copy floor and the teacher) and, when the profile
    has a non-empty ``ablation_table``, ``ablation`` (its runs only, in order: the paper's Table 3 layout), and
    likewise ``on_policy`` (``on_policy_table``: off-policy and on-policy runs side by side).
    ``default_only``: the tables of the default target (``snakemake``): ``ablation`` only when the profile's
    ``ablation_in_all`` is true (default); otherwise it is the separate target ``snakemake ablation``; the same
    for ``on_policy`` with ``on_policy_in_all`` (``snakemake on_policy``)."""
    out = {"main": list(prof["main_table"])}
    if prof.get("ablation_table") and (not default_only or prof.get("ablation_in_all", True)):
        out["ablation"] = list(prof["ablation_table"])
    if prof.get("on_policy_table") and (not default_only or prof.get("on_policy_in_all", True)):
        out["on_policy"] = list(prof["on_policy_table"])
    return out


def table_runs(prof: dict, default_only: bool = True) -> list[str]:
    """Every run of the profile's tables, once: the main table's, then the ablation table's not yet listed;
    with ``default_only`` (the Snakefile's ``RUNS``: what the significance, efficiency and attention tables
    cover) only those of the default target's tables."""
    return list(dict.fromkeys(r for runs in tables(prof, default_only).values() for r in runs))


def _over_defaults(cfg: dict, name: str) -> dict[str, Any]:
    return deep_merge(cfg.get("defaults") or {}, cfg["profiles"][name])


def profile(cfg: dict) -> dict[str, Any]:
    """The chosen profile over ``defaults``: the profile's keys win, mappings (``train``, ``eval``, ``figures``,
    ...) are merged key by key, a list (``main_table``, ``eval.sets``, ...) replaces the default's."""
    return _over_defaults(cfg, cfg["profile"])


def same_vocab(prof: dict) -> tuple[str, list[str]] | None:
    """``(pair, runs)`` of the profile's same-vocabulary table (DSKD's Table 1 layout), or None when it has none
    (no ``same_vocab_pair``). The pair runs these runs only (and its teacher's evaluation), no other table."""
    p = prof.get("same_vocab_pair")
    return (p, list(prof.get("same_vocab_table") or [])) if p else None


def same_vocab_in_default(prof: dict) -> bool:
    """Whether the default target (``snakemake``) builds the same-vocabulary table (``same_vocab_in_all``, default
    true); otherwise it is the separate target ``snakemake same_vocab``."""
    return same_vocab(prof) is not None and prof.get("same_vocab_in_all", True)


def profile_pairs(prof: dict) -> list[str]:
    """Every pair the profile trains on: its ``pairs`` (every table but the same-vocabulary one), then the
    same-vocabulary table's pair (``same_vocab``) when it is not one of them."""
    sv = same_vocab(prof)
    return list(dict.fromkeys([*prof["pairs"], *([sv[0]] if sv else [])]))


def pair_name(cfg: dict, name: str | None = None) -> str:
    """``name`` checked against the profile's pairs (``profile_pairs``: the same-vocabulary table's pair too), or
    the profile's only pair of ``pairs`` when ``name`` is None."""
    prof = profile(cfg)
    pairs = prof["pairs"]
    if name is None:
        if len(pairs) != 1:
            raise ConfigError(f"profile {cfg['profile']!r} runs several pairs ({', '.join(pairs)}): "
                              f"choose one with --pair")
        return pairs[0]
    if name not in profile_pairs(prof):
        raise ConfigError(f"--pair {name}: profile {cfg['profile']!r} runs the pairs {profile_pairs(prof)}")
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
    """A run's TrainConfig overrides: the profile's ``train``, then the pair's, then the run's (later wins). A run
    that trains on-policy (``on_policy_ratio`` > 0) also takes the profile's ``on_policy_train`` (its schedule
    scaled to the profile's epochs, the length of its samples), after the profile's ``train``: the other runs'
    settings, and so their jobs, do not depend on it."""
    prof, own = profile(cfg), run_spec(cfg, run).get("train", {})
    pair_train = pair(cfg, pair_name_).get("train", {})
    out = {**prof["train"], **pair_train, **own}
    if (out.get("on_policy_ratio") or 0) > 0 and prof.get("on_policy_train"):
        out = {**prof["train"], **prof["on_policy_train"], **pair_train, **own}
    return out


def run_spec(cfg: dict, run: str) -> dict:
    if run not in cfg["runs"]:
        raise ConfigError(f"run {run!r} is not in runs; defined: {', '.join(sorted(cfg['runs']))}")
    return cfg["runs"][run]


def dump(obj: Any, path: Path) -> None:
    """``obj`` as YAML in ``path``, written atomically."""
    from dwakd.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))
