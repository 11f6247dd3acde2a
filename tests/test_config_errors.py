"""Every configuration mistake stops `snakemake -n` in seconds with one line, ``<file>: <key>: <what was
expected>`` (workflow/rules/common.smk: ``dwakd.config.check_all`` and ``locate``), never a schema dump or a
failure inside a job; `dwakd train` says the same line. The method options are checked against the registered
methods' Config dataclasses (names, types, fixed choices) without importing torch in Snakemake's process."""

import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dwakd import config as C
from dwakd.errors import ConfigError
from dwakd.registry import available, get_method, specs
from dwakd.settings import OPTION_TYPES, check_options, from_dict

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE_NOTE = "is extended by additional config specified via the command line"
METHODS = available()


def _with(changes: dict) -> dict:
    """config/config.yaml with ``changes`` (dotted key → value) made."""
    cfg = copy.deepcopy(yaml.safe_load(C.DEFAULT_CONFIG.read_text()))
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def _write(tmp_path: Path, changes: dict) -> Path:
    path = tmp_path / "my_config.yaml"
    path.write_text(yaml.safe_dump(_with(changes), sort_keys=False))
    return path


# (id, changes to a copy of config/config.yaml, `--config` overrides, the line expected after "<source>: ")
CASES = [
    ("misspelled_method", {"runs.dwakd.method": "dwkad"}, [],
     r"runs\.dwakd\.method: unknown method 'dwkad'; did you mean 'dwakd'\? \(registered: cma_ga, dskd, "
     r"dskd_cma, dskd_eta, dwakd, mined, multilevel_ot, seqkd, sft, uld, vanilla_kd\)"),
    ("option_of_the_wrong_type", {"runs.dskd_cma.config": {"kd_rate": "high"}}, [],
     r"runs\.dskd_cma\.config\.kd_rate: expected float, got 'high'"),
    ("option_the_method_does_not_have", {"runs.dwakd.config": {"kd_rate": "high"}}, [],
     r"runs\.dwakd\.config: unknown option\(s\) \['kd_rate'\] \(did you mean 'wkd_rate'\?\); DWAKDConfig "
     r"accepts \['band_center_blend', .*'wkd_rate'\]"),
    ("unknown_option", {"runs.dwakd.config": {"no_such_option": 1}}, [],
     r"runs\.dwakd\.config: unknown option\(s\) \['no_such_option'\]; DWAKDConfig accepts \[.*\]"),
    ("variant_not_among_the_choices", {"runs.dwakd_w_bdtw.config": {"variant": "bdtw"}}, [],
     r"runs\.dwakd_w_bdtw\.config\.variant: expected one of \['emb_only', 'full', .*'w_bdtw', .*\], "
     r"got 'bdtw'"),
    ("profile_train_epochs", {"profiles.mini.train.epochs": "two"}, [],
     r"profiles\.mini\.train\.epochs: expected an integer, got 'two'"),
    ("profile_eval_limit", {"profiles.mini.eval.limit": "50"}, [],
     r"profiles\.mini\.eval\.limit: expected an integer, got '50'"),
    ("type_in_the_profile_chosen_with_config", {"profiles.tiny.eval.limit": "50"}, ["profile=tiny"],
     r"profiles\.tiny\.eval\.limit: expected an integer, got '50'"),
    ("unknown_top_level_key", {"bogus_key": 1}, [],
     r"bogus_key: unknown key; expected one of: datasets, defaults, pairs, profile, profiles, rebuild_models, "
     r"report, results_dir, runs"),
]
# (id, `--config` overrides, the whole line)
OVERRIDES = [
    ("unknown_profile", ["profile=nope"],
     r"--config profile=nope: profile: unknown profile 'nope' \(defined: gpu-small, mini, paper, tiny\)"),
    ("not_a_boolean", ["rebuild_models=perhaps"],
     r"--config rebuild_models=perhaps: rebuild_models: expected a boolean \(true or false\), got 'perhaps'"),
]


def dry_run(tmp_path: Path, *args: str) -> tuple[int, list[str], float]:
    """``snakemake -n`` from the repository root: exit code, the lines it printed (less Snakemake's note that
    --config/--configfile extend the config file), seconds."""
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-d", str(tmp_path),
                        *args], cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip() and SNAKEMAKE_NOTE not in ln]
    return r.returncode, lines, time.monotonic() - start


@pytest.mark.parametrize("changes, overrides, line", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_in_a_config_file_stops_the_dry_run_with_one_line(changes, overrides, line, tmp_path):
    path = _write(tmp_path, changes)
    rc, lines, seconds = dry_run(tmp_path, "--configfile", str(path), *(["--config", *overrides] if overrides else []))
    assert rc != 0
    assert len(lines) == 1, "\n".join(lines[:20])  # one line: no schema dump, no traceback
    assert re.fullmatch(rf"(?:.*/)?my_config\.yaml: {line}", lines[0]), lines[0]
    assert seconds < 60  # seconds, not a training job's failure minutes into a run


@pytest.mark.parametrize("overrides, line", [c[1:] for c in OVERRIDES], ids=[c[0] for c in OVERRIDES])
def test_a_mistake_in_a_config_override_names_the_override(overrides, line, tmp_path):
    rc, lines, _ = dry_run(tmp_path, "--config", *overrides)
    assert rc != 0 and len(lines) == 1 and re.fullmatch(line, lines[0]), "\n".join(lines[:20])


@pytest.mark.parametrize("changes, overrides, line", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_checks_the_snakefile_runs_give_the_same_lines(changes, overrides, line, tmp_path):
    """The functions common.smk calls, in this process: the same line for every case, the file it comes from."""
    path = _write(tmp_path, changes)
    cfg = C.deep_merge(_with(changes), C.parse_set(overrides))
    with pytest.raises(ConfigError) as e:
        C.check_all(cfg, C.method_specs())
    assert re.fullmatch(rf"{re.escape(str(path))}: {line}", C.locate(str(e.value), [C.DEFAULT_CONFIG, path]))


@pytest.mark.parametrize("profile", sorted(_with({})["profiles"]))
def test_every_shipped_profile_passes_every_check(profile):
    C.check_all(_with({"profile": profile}), C.method_specs())


def test_a_key_is_located_in_the_last_file_or_override_that_sets_it(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"profiles": {"mini": {"eval": {"limit": "50"}}}}))
    msg = "profiles.mini.eval.limit: expected an integer, got '50'"
    assert C.locate(msg, [C.DEFAULT_CONFIG, extra]) == f"{extra}: {msg}"
    assert C.locate("profiles.mini.train.lr: x", [C.DEFAULT_CONFIG, extra]).endswith("config.yaml: profiles.mini.train."
                                                                                     "lr: x")
    assert C.locate(msg, [C.DEFAULT_CONFIG, extra], {"profiles.mini.eval": "--set profiles.mini.eval={}"}
                    ).startswith("--set profiles.mini.eval={}: ")
    # pair names hold dots; a key no file holds keeps its nearest parent's file, or stays as it is
    pairs = C.locate("pairs.qwen1.5-1.8b_gpt2-120m.teacher.dtype: x", [extra, C.DEFAULT_CONFIG])
    assert pairs.startswith(f"{C._shown(C.DEFAULT_CONFIG)}: ")
    assert C.locate("not a key: x", [C.DEFAULT_CONFIG], fallback=False) == "not a key: x"


# ------------------------------------------------------------------------------------------- dwakd train


@pytest.mark.parametrize("changes, sets, line", [
    ({"runs.dskd_cma.config": {"kd_rate": "high"}}, [], r"{f}: runs\.dskd_cma\.config\.kd_rate: expected "
                                                           r"float, got 'high'"),
    ({}, ["runs.dskd_cma.config.no_such_option=1"],
     r"--set runs\.dskd_cma\.config\.no_such_option=1: runs\.dskd_cma\.config: unknown option\(s\) "
     r"\['no_such_option'\]; DSKDCMAConfig accepts \['divergence', 'kd_rate', 'temperature'\]"),
    ({"runs.dskd_cma.method": "dskdcma"}, [],
     r"{f}: runs\.dskd_cma\.method: unknown method 'dskdcma'; did you mean 'dskd_cma'\? \(registered: .*\)"),
    ({"runs.dskd_cma.config": {"divergence": "kl"}}, [],
     r"{f}: runs\.dskd_cma\.config\.divergence: expected one of \['akl', 'fkl', .*\], got 'kl'"),
], ids=["wrong_type", "unknown_option_from_set", "misspelled_method", "not_a_divergence"])
def test_dwakd_train_gives_the_dry_runs_line(changes, sets, line, tmp_path, capsys):
    from dwakd.cli import main

    path = _write(tmp_path, changes)
    argv = ["train", "--config", str(path), *(a for s in sets for a in ("--set", s)), "--run", "dskd_cma",
            "--models", str(tmp_path / "models"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch("dwakd train: error: " + line.replace("{f}", re.escape(C._shown(path))),
                                          err[0]), err
    if not sets:  # the dry run's line, word for word
        cfg = _with(changes)
        with pytest.raises(ConfigError) as e:
            C.check_all(cfg, C.method_specs())
        assert err[0] == f"dwakd train: error: {C.locate(str(e.value), [C.DEFAULT_CONFIG, path])}"


# ------------------------------------------------------------------------------------------- the method options


def test_method_specs_are_the_registrys_and_stay_cached_until_the_code_changes(tmp_path):
    cache = tmp_path / "methods.json"
    got = C.method_specs(cache)
    assert got == json.loads(json.dumps(specs()))  # the registry's own answer, through JSON
    data = json.loads(cache.read_text())
    assert C._fresh(data["files"]) and "dwakd/methods/dwakd.py" in data["files"] and "baselines/uld.py" in data["files"]
    stale = {**data["files"], "baselines/uld.py": "0" * 64}
    assert not C._fresh(stale)  # a method's source changed
    assert not C._fresh({k: v for k, v in data["files"].items() if k != "baselines/mined.py"})  # a module unknown
    cache.write_text(json.dumps({**data, "methods": {"cached": {}}}))
    assert C.method_specs(cache) == {"cached": {}}  # a fresh cache is read, not recomputed


def test_without_the_registry_the_options_are_not_checked_and_the_note_says_so(monkeypatch, capsys):
    monkeypatch.setattr(C.sys, "executable", "/bin/false")
    assert C.method_specs(None) is None
    assert "method options not checked" in capsys.readouterr().err


@pytest.mark.parametrize("name", METHODS, ids=METHODS)
def test_the_dry_run_checks_every_option_as_from_dict_does(name):
    """Each option of each registered method: its type is one the dry run checks by name, and a value of another
    type (or outside the field's choices) gets the same message from the dry run's check and from
    ``dwakd.settings.from_dict`` (what `dwakd train` runs)."""
    cls = get_method(name).Config
    spec = C.method_specs()[name]
    assert spec["config"] == cls.__name__
    where = f"runs.{name}.config"
    check_options(where, {}, spec["options"], spec["config"])
    from_dict(cls, {}, where)
    for field, opt in spec["options"].items():
        assert opt["type"] in OPTION_TYPES, f"{name}.{field}: the dry run cannot check a {opt['type']}"
        bad = [1.5 if opt["type"] == "str" else "not-a-number"] + (["not-a-choice"] if opt["choices"] else [])
        for value in bad:
            with pytest.raises(ConfigError) as dry:
                check_options(where, {field: value}, spec["options"], spec["config"])
            with pytest.raises(ConfigError) as train:
                from_dict(cls, {field: value}, where)
            assert str(dry.value) == str(train.value), (str(dry.value), str(train.value))
        for value in opt["choices"] or []:
            from_dict(cls, {field: value}, where)  # every choice the dry run accepts builds
