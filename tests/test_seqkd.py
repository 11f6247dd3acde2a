"""SeqKD (``dwakd generate`` + ``baselines/seqkd.py``) and the MinED vocabulary map step (``dwakd vocab-map``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dwakd.evaluate
from dwakd import cli
from dwakd.align.tokens import build_vocab_map
from dwakd.data import load_jsonl, write_jsonl
from dwakd.errors import ConfigError
from dwakd.generate import TeacherGenConfig, build_records, partial_path, read_partial
from dwakd.models import load_model, load_tokenizer
from dwakd.registry import get_method
from dwakd.settings import from_dict
from dwakd.train import Trainer

TINY = ["--set", "profile=tiny", "--set", "profiles.tiny.train.select_by=last",
        "--set", "profiles.tiny.generate={max_prompt_len: 48, max_len: 80, max_new_tokens: 10, batch_size: 4, "
                 "chunk_size: 3}"]


def _train_file(records, tmp_path) -> Path:
    data = tmp_path / "data"
    write_jsonl(records, data / "train.jsonl")
    write_jsonl(records[:2], data / "dev.jsonl")
    return data


def _generate(pair, data, out, *extra) -> int:
    return cli.main(["generate", *TINY, *extra, "--model", str(pair / "teacher"), "--data", str(data / "train.jsonl"),
                     "--out", str(out)])


class _Counting:
    """Wraps ``dwakd.evaluate.generate``: counts calls and raises KeyboardInterrupt at call ``die_at``."""

    def __init__(self, die_at: int = 0):
        self.calls, self.die_at, self.orig = 0, die_at, dwakd.evaluate.generate

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt
        return self.orig(*a, **kw)


# ------------------------------------------------------------------------------------------ generate

def test_generate_resumes_after_a_kill_with_identical_output(tiny_pair, dolly_small, tmp_path, monkeypatch):
    records = dolly_small[:10]  # 4 chunks of 3, 3, 3, 1 prompts
    data = _train_file(records, tmp_path)
    full = tmp_path / "full" / "teacher_train.jsonl"
    assert _generate(tiny_pair, data, full) == 0

    out = tmp_path / "killed" / "teacher_train.jsonl"
    dying = _Counting(die_at=3)  # killed while sampling the third chunk
    monkeypatch.setattr(dwakd.evaluate, "generate", dying)
    with pytest.raises(KeyboardInterrupt):
        _generate(tiny_pair, data, out)
    assert not out.exists()  # the final file appears only when every chunk is done
    part = partial_path(out)
    lines = part.read_text().splitlines()
    assert len(lines) == 3 and [json.loads(x)["chunk"] for x in lines[1:]] == [0, 1]
    with open(part, "a") as fh:  # a torn line, as if the kill came while it was written
        fh.write('{"chunk": 2, "texts": ["half')

    resumed = _Counting()
    monkeypatch.setattr(dwakd.evaluate, "generate", resumed)
    assert _generate(tiny_pair, data, out) == 0
    assert resumed.calls == 2  # only chunks 2 and 3 were sampled again
    assert out.read_bytes() == full.read_bytes()
    assert not part.exists()
    got = load_jsonl(out)
    assert [r["prompt"] for r in got] == [r["prompt"] for r in records]
    assert all(r["source"] in ("teacher", "gold") for r in got)
    assert any(r["source"] == "teacher" and r["output"] != src["output"] for r, src in zip(got, records))
    meta = (out.parent / "teacher_train.resolved_config.yaml").read_text()
    assert "seed: 10" in meta and "no_repeat_ngram_size: 0" in meta


def test_a_partial_file_of_other_settings_is_not_resumed(tmp_path):
    part = tmp_path / "x.jsonl.partial"
    header = {"fingerprint": "a", "n": 4, "chunk_size": 2}
    part.write_text(json.dumps(header) + "\n" + json.dumps({"chunk": 0, "texts": ["u", "v"]}) + "\n")
    assert read_partial(part, header) == [["u", "v"]]
    assert read_partial(part, {**header, "fingerprint": "b"}) == []
    assert read_partial(part, {**header, "chunk_size": 3}) == []


def test_one_chunk_is_exactly_evaluate_generate_with_the_seed(tiny_pair, dolly_small, tmp_path):
    records = dolly_small[:5]
    data = _train_file(records, tmp_path)
    out = tmp_path / "gen.jsonl"
    assert _generate(tiny_pair, data, out, "--set", "profiles.tiny.generate.chunk_size=100",
                     "--set", "profiles.tiny.generate.empty=drop") == 0
    cfg = from_dict(TeacherGenConfig, {"max_prompt_len": 48, "max_len": 80, "max_new_tokens": 10, "batch_size": 4,
                                          "chunk_size": 100}, "t")
    model, tok = load_model(tiny_pair / "teacher"), load_tokenizer(tiny_pair / "teacher")
    texts = dwakd.evaluate.generate(model, tok, [r["prompt"] for r in records], cfg.gen_config(), seed=10)
    assert [r["output"] for r in load_jsonl(out)] == [[t] for t in texts if t.strip()]


def test_max_len_bounds_prompt_plus_response(tiny_pair, dolly_small, monkeypatch):
    model, tok = load_model(tiny_pair / "teacher"), load_tokenizer(tiny_pair / "teacher")
    asked = []
    orig = model.generate

    def spy(*a, **kw):
        asked.append((kw["input_ids"].shape[1], kw["max_new_tokens"], kw["no_repeat_ngram_size"]))
        return orig(*a, **kw)

    monkeypatch.setattr(model, "generate", spy)
    cfg = from_dict(TeacherGenConfig, {"max_prompt_len": 40, "max_len": 50, "max_new_tokens": 30,
                                          "batch_size": 2}, "t")
    dwakd.evaluate.generate(model, tok, [r["prompt"] for r in dolly_small[:4]], cfg.gen_config(), seed=10)
    assert asked and all(n_prompt <= 40 and n_prompt + n_new == 50 and nr == 0 for n_prompt, n_new, nr in asked)


def test_empty_generations_keep_the_gold_or_are_dropped():
    records = [{"prompt": "p1", "output": ["gold 1"]}, {"prompt": "p2", "output": ["gold 2"]}]
    kept = build_records(records, ["an answer", "  "], "gold")
    assert kept == [{"prompt": "p1", "output": "an answer", "source": "teacher"},
                    {"prompt": "p2", "output": "gold 2", "source": "gold"}]
    assert build_records(records, ["an answer", ""], "drop") == [kept[0]]
    with pytest.raises(ConfigError, match=r"g\.empty: expected one of \['gold', 'drop'\], got 'keep'"):
        from_dict(TeacherGenConfig, {"empty": "keep"}, "g")
    with pytest.raises(ConfigError, match=r"g\.max_len: expected more than max_prompt_len"):
        from_dict(TeacherGenConfig, {"max_prompt_len": 256, "max_len": 256}, "g")


def test_generation_defaults_are_seqkd_settings():
    cfg = TeacherGenConfig()
    assert (cfg.seed, cfg.temperature, cfg.top_k, cfg.top_p, cfg.no_repeat_ngram_size) == (10, 1.0, 0, 1.0, 0)
    assert (cfg.max_prompt_len, cfg.max_len) == (256, 512)


# ------------------------------------------------------------------------------------------ seqkd

def test_seqkd_run_trains_on_the_generated_file(tiny_pair, dolly_small, tmp_path, monkeypatch):
    records = dolly_small[:6]
    data = _train_file(records, tmp_path)
    gen = tmp_path / "generated" / "teacher_train.jsonl"
    assert _generate(tiny_pair, data, gen) == 0

    seen = {}
    orig = Trainer.fit

    def fit(self, train_records, resume=False):
        seen["records"], seen["teacher"] = train_records, self.teacher
        return orig(self, train_records, resume)

    monkeypatch.setattr(Trainer, "fit", fit)
    out = tmp_path / "run"
    args = ["train", *TINY, "--run", "seqkd", "--models", str(tiny_pair), "--data", str(data), "--out", str(out),
            "--max-steps", "2"]
    assert cli.main([*args, "--train-file", str(gen)]) == 0
    assert seen["records"] == load_jsonl(gen)
    assert seen["teacher"] is None  # black-box: the teacher is not loaded for training
    assert (out / "model" / "config.json").exists()
    resolved = (out / "resolved_config.yaml").read_text()
    assert f"train_file: {gen}" in resolved and "method: seqkd" in resolved


def test_seqkd_refuses_gold_data(tiny_pair, dolly_small, tmp_path, capsys):
    data = _train_file(dolly_small[:4], tmp_path)
    rc = cli.main(["train", *TINY, "--run", "seqkd", "--models", str(tiny_pair), "--data", str(data),
                   "--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "run seqkd (method seqkd)" in err and "record 1 has no 'source' field" in err
    assert "run `dwakd generate`" in err


def test_seqkd_is_registered_as_plain_ce_on_teacher_data():
    cls = get_method("seqkd")
    assert cls.train_data == "teacher" and not cls.needs_teacher and "Kim & Rush" in cls.citation


# ------------------------------------------------------------------------------------------ vocab map

def test_vocab_map_cli_equals_build_vocab_map_and_mined_loads_it(tiny_pair, tmp_path, monkeypatch):
    out = tmp_path / "vocab_maps" / "teacher_to_student.json"
    assert cli.main(["vocab-map", "--models", str(tiny_pair), "--out", str(out), "--workers", "1"]) == 0
    data = json.loads(out.read_text())
    ttok, stok = load_tokenizer(tiny_pair / "teacher"), load_tokenizer(tiny_pair / "student_base")
    tv, sv = ttok.get_vocab(), stok.get_vocab()
    expected = build_vocab_map(tv, sv, overrides={ttok.eos_token_id: stok.eos_token_id})
    assert data["teacher_to_student"] == expected
    assert len(data["fingerprint"]) == 64
    assert (data["teacher_vocab_size"], data["student_vocab_size"]) == (len(tv), len(sv))

    import dwakd.vocab_map as vocab_map

    def no_rebuild(*a, **kw):
        raise AssertionError("MinED rebuilt a vocabulary map it was given")

    monkeypatch.setattr(vocab_map, "build_vocab_map", no_rebuild)
    torch.manual_seed(0)
    student, teacher = load_model(tiny_pair / "student_base"), load_model(tiny_pair / "teacher")
    cls = get_method("mined")
    m = cls(from_dict(cls.Config, {"vocab_map": str(out)}, "mined"), student, teacher, stok, ttok)
    assert m.t2s[:len(expected)].tolist() == expected

    # a map of other vocabularies is an error that names the file, never silently rebuilt or overwritten
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**data, "fingerprint": "0" * 64}))
    with pytest.raises(ConfigError, match=r"stale\.json: this vocabulary map was built for other tokenizers"):
        cls(from_dict(cls.Config, {"vocab_map": str(stale)}, "mined"), student, teacher, stok, ttok)
    assert json.loads(stale.read_text())["fingerprint"] == "0" * 64


def test_train_passes_the_vocab_map_to_mined_only(tiny_pair, dolly_small, tmp_path, monkeypatch, capsys):
    data = _train_file(dolly_small[:4], tmp_path)
    vmap = tmp_path / "map.json"
    assert cli.main(["vocab-map", "--models", str(tiny_pair), "--out", str(vmap), "--workers", "1"]) == 0
    import dwakd.vocab_map as vocab_map

    monkeypatch.setattr(vocab_map, "build_vocab_map", lambda *a, **kw: pytest.fail("rebuilt the given map"))
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--run", "mined", "--models", str(tiny_pair), "--data", str(data),
                     "--vocab-map", str(vmap), "--out", str(out), "--max-steps", "1"]) == 0
    assert f"vocab_map: {vmap}" in (out / "resolved_config.yaml").read_text()
    rc = cli.main(["train", *TINY, "--run", "sft", "--models", str(tiny_pair), "--data", str(data),
                   "--vocab-map", str(vmap), "--out", str(tmp_path / "sft")])
    assert rc == 2 and "--vocab-map: run sft (method sft) takes no vocabulary map" in capsys.readouterr().err
