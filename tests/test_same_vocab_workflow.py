"""The same-vocabulary table's workflow wiring (`same_vocab_pair`, `same_vocab_table`, `same_vocab_in_all`):
which jobs the dry runs list, and the configuration errors of its keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dwakd import config as C
from dwakd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SIX = ["fkl", "rkl", "js", "skl", "srkl", "akl"]


def _dry(tmp_path, *args) -> tuple[str, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p", "--cores", "2",
                        "-d", str(tmp_path), *args], capture_output=True, text=True, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out, [ln.split("Shell command: ", 1)[1] for ln in out.splitlines() if ln.startswith("Shell command: ")]


def _trained(cmds: list[str]) -> set[tuple[str, str]]:
    """(pair, run) of every `dwakd train` command."""
    return {(re.search(r"--pair (\S+)", c).group(1), re.search(r"--run (\S+)", c).group(1))
            for c in cmds if " train " in c}


def test_mini_trains_the_same_vocabulary_runs_on_its_own_target_only(tmp_path):
    """mini sets `same_vocab_in_all: false`: `snakemake` leaves mini-samevocab alone; `snakemake same_vocab` trains
    SFT and the 12 Vanilla KD / DSKD runs on it (its teacher evaluated under its own name), nothing else."""
    out, cmds = _dry(tmp_path)
    assert "mini-samevocab" not in out
    out, cmds = _dry(tmp_path, "same_vocab")
    runs = ["sft"] + [f"vanilla_kd_{d}" for d in SIX] + [f"dskd_{d}" for d in SIX]
    assert _trained(cmds) == {("mini-samevocab", r) for r in runs}
    assert "results/mini-samevocab/tables/same_vocab.md" in out
    assert any("--out results/teachers/mini-samevocab/eval/dolly.json" in c for c in cmds)  # not mini's teacher
    assert not any(re.search(r"dwakd report .*--table (main|ablation)", c) for c in cmds)
    assert sum(" report " in c and "--table same_vocab" in c for c in cmds) == 1
    assert not any(" generate " in c or " vocab-map " in c for c in cmds)  # no SeqKD / MinED input


def test_tiny_builds_its_same_tokenizer_twin_and_the_table_in_the_default_target(tmp_path):
    out, cmds = _dry(tmp_path, "--config", "profile=tiny")
    sv = {r for p, r in _trained(cmds) if p == "tiny-samevocab"}
    assert sv == {"sft", "vanilla_kd_fkl", "vanilla_kd_rkl", "dskd_fkl", "dskd_rkl"}
    assert ("tiny", "dskd_fkl") not in _trained(cmds)  # the main pair trains its own tables' runs
    tok = [c for c in cmds if " tokenizers " in c]
    assert len(tok) == 2 and any("--pair tiny-samevocab" in c for c in tok)
    assert "results/tiny/tiny-samevocab/tables/same_vocab.html" in out
    assert "results/tiny/teachers/tiny-samevocab/eval/dolly.json" in out


# ------------------------------------------------------------------------------------------ configuration errors

CASES = [
    ("unknown_pair", {"profiles": {"tiny": {"same_vocab_pair": "nope"}}},
     r"^profiles\.tiny\.same_vocab_pair: 'nope' is not in pairs \("),
    ("two_tokenizers", {"profiles": {"tiny": {"same_vocab_pair": "gpu-small"}}},
     r"^profiles\.tiny\.same_vocab_pair: pair 'gpu-small' has two tokenizers \(pairs\.gpu-small\.tokenizers\.shared "
     r"is not true\); the same-vocabulary table needs a teacher that uses the student's tokenizer$"),
    ("unknown_run", {"profiles": {"tiny": {"same_vocab_table": ["sft", "dskd_kl"]}}},
     r"^profiles\.tiny\.same_vocab_table: 'dskd_kl' is not in runs \("),
    ("no_run", {"profiles": {"tiny": {"same_vocab_table": []}}},
     r"^profiles\.tiny\.same_vocab_table: the same-vocabulary table of pair 'tiny-samevocab' lists no run"),
    ("not_a_boolean", {"profiles": {"tiny": {"same_vocab_in_all": "sometimes"}}},
     r"^profiles\.tiny\.same_vocab_in_all: expected a boolean \(true or false\), got 'sometimes'$"),
    ("misspelled_key", {"profiles": {"tiny": {"same_vocab_pairs": "tiny-samevocab"}}},
     r"^profiles\.tiny\.same_vocab_pairs: unknown key; expected one of: "),
    ("published_tokenizers_differ", {"profile": "paper",
                                     "pairs": {"gpt2-1.5b_gpt2-120m": {"teacher": {"tokenizer": "Qwen/Qwen1.5-1.8B"}}}},
     r"^profiles\.paper\.same_vocab_pair: the teacher of pair 'gpt2-1.5b_gpt2-120m' uses the tokenizer "
     r"'Qwen/Qwen1\.5-1\.8B' and its student 'openai-community/gpt2'; the same-vocabulary table needs one tokenizer"),
    ("twin_teacher_under_the_same_name", {"pairs": {"tiny": {"teacher": {"name": "qwen2"}},
                                                    "tiny-samevocab": {"teacher": {"name": "qwen2"}}}},
     r"^pairs\.tiny-samevocab\.teacher: named 'qwen2' like pairs\.tiny\.teacher, but it is another model \(its "
     r"tokenizers, build or shipped folder differ\); give one of them another `name`"),
]


@pytest.mark.parametrize("over,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_same_vocabulary_keys_are_config_errors(over, expected):
    with pytest.raises(ConfigError) as e:
        C.load(None, {"profile": "tiny", **over})
    assert re.search(expected, str(e.value).split(": ", 1)[1]), str(e.value)


def test_the_same_vocabulary_pair_is_a_pair_of_the_profile_for_the_commands():
    cfg = C.load(None, {"profile": "tiny"})
    assert C.profile_pairs(C.profile(cfg)) == ["tiny", "tiny-samevocab"]
    assert C.pair_name(cfg) == "tiny"  # the default pair is still the main tables' one
    assert C.pair(cfg, "tiny-samevocab")["tokenizers"]["shared"] is True
    with pytest.raises(ConfigError, match=r"--pair mini-samevocab: profile 'tiny' runs the pairs \['tiny', "
                                          r"'tiny-samevocab'\]"):
        C.pair_name(cfg, "mini-samevocab")
    assert C.same_vocab(C.profile(C.load(None, {"profile": "gpu-small"}))) is None  # no pair: no table
