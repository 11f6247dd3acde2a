import copy

import pytest
import yaml

from dwakd import config as C
from dwakd.errors import ConfigError
from dwakd.registry import available, get_method


def test_default_config_is_valid():
    cfg = C.load()
    assert cfg["profile"] == "mini"
    assert set(C.profile(cfg)["eval"]["sets"]) >= {"dolly", "selfinst", "vicuna", "sni"}


@pytest.mark.parametrize("over, message", [
    ({"profiles": {"mini": {"train": {"lrr": 1}}}},
     r"profiles\.mini\.train\.lrr: unknown key; expected one of: batch_size, "),
    ({"profiles": {"mini": {"train": {"lr": "fast"}}}}, r"profiles\.mini\.train\.lr: expected a number, got 'fast'"),
    ({"profiles": {"mini": {"eval": {"seeds": []}}}},
     r"profiles\.mini\.eval\.seeds: expected at least 1 item\(s\), got \[\]"),
    ({"typo_key": 1}, r"^--set typo_key=1: typo_key: unknown key; expected one of: datasets, defaults, "),
    ({"profile": "nope"}, r"^--set profile=nope: profile: unknown profile 'nope' \(defined: gpu-small, mini, "),
    ({"profiles": {"mini": {"main_table": ["sft", "ghost"]}}}, r"main_table: 'ghost' is not in runs"),
    ({"profiles": {"mini": {"ablation_table": ["ghost"]}}}, r"profiles\.mini\.ablation_table: 'ghost' is not in"),
    ({"profiles": {"mini": {"eval": {"sets": ["dolly", "mmlu"]}}}}, r"eval\.sets: 'mmlu' is not in datasets"),
    ({"profiles": {"tiny": {"generate": {"temprature": 1.0}}}}, r"profiles\.tiny\.generate\.temprature: unknown key"),
    ({"profiles": {"mini": {"generate": {"empty": "keep"}}}},
     r"profiles\.mini\.generate\.empty: expected one of \['gold', 'drop'\], got 'keep'"),
    ({"profiles": {"mini": {"generate": {"top_k": -1}}}},
     r"profiles\.mini\.generate\.top_k: expected a value >= 0, got -1"),
    ({"profiles": {"mini": {"figures": {"runs": ["ghost"]}}}}, r"profiles\.mini\.figures\.runs: 'ghost' is not in"),
    ({"report": {"baselines": ["ghost"]}}, r"report\.baselines: 'ghost' is not in runs"),
])
def test_bad_config_names_the_key(over, message):
    with pytest.raises(ConfigError, match=message):
        C.load(overrides=over)  # as `--set KEY=VALUE` overrides: the message names the override


def test_config_files_merge_and_set_overrides(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"profiles": {"mini": {"eval": {"limit": 7}}}}))
    cfg = C.load([C.DEFAULT_CONFIG, extra], C.parse_set(["profiles.mini.train.lr=0.5", "profile=tiny"]))
    assert cfg["profiles"]["mini"]["eval"]["limit"] == 7
    assert cfg["profiles"]["mini"]["train"]["lr"] == 0.5 and cfg["profile"] == "tiny"
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        C.parse_set(["novalue"])
    with pytest.raises(ConfigError, match="config file not found"):
        C.load([tmp_path / "missing.yaml"])


def test_a_profile_overrides_the_defaults_key_by_key():
    """`defaults` holds what every profile runs unless it says otherwise: the profile's keys win, a mapping is
    merged key by key, a list replaces the default's; a key that neither gives is missing."""
    cfg = C.load(overrides={"defaults": {"figures": {"max_tokens": 30}}})
    mini = C.profile(cfg)
    assert "main_table" not in cfg["profiles"]["mini"] and mini["main_table"] == cfg["defaults"]["main_table"]
    assert mini["figures"]["probe_samples"] == 50 and mini["figures"]["max_tokens"] == 30  # mini's, the default's
    assert mini["train"]["max_len"] == 512 and mini["train"]["select_by"] == "last"
    paper = C.profile({**cfg, "profile": "paper"})
    assert paper["eval"]["sets"] == ["dolly", "selfinst", "vicuna", "sni", "unni"] and "seeds" in paper["eval"]
    bare = copy.deepcopy(cfg)
    del bare["defaults"]["main_table"]
    with pytest.raises(ConfigError, match=r"^profiles\.gpu-small\.main_table: missing \(a required key\)$"):
        C.validate(bare)


def test_registry_lists_available_methods_in_its_error():
    assert "sft" in available()
    with pytest.raises(KeyError, match="unknown method 'nope'; available methods: .*sft"):
        get_method("nope")


def test_every_profile_generate_section_builds():
    from dwakd.generate import TeacherGenConfig
    from dwakd.settings import from_dict

    cfg = C.load()
    for name in cfg["profiles"]:
        from_dict(TeacherGenConfig, C.profile({**cfg, "profile": name}).get("generate"), f"profiles.{name}.generate")


RUNS = list(C.load()["runs"])  # the configured runs: the tests over them carry the run's name in their ids


@pytest.mark.parametrize("run", RUNS, ids=RUNS)
def test_every_configured_run_builds(run):
    from dwakd.run import build_run

    cfg = C.load()
    assert build_run(cfg, run).method.name == cfg["runs"][run]["method"]


def test_run_with_unknown_method_option_is_an_error():
    from dwakd.run import build_run

    cfg = C.load(overrides={"runs": {"sft": {"config": {"alpha": 0.3}}}})
    with pytest.raises(ConfigError, match=r"runs\.sft\.config: unknown option\(s\) \['alpha'\]"):
        build_run(cfg, "sft")


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = root / "README.md"
    text = readme.read_text()
    block = text.split("**Run the tests**", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    assert block in (root / ".ci" / "run").read_text().splitlines()
