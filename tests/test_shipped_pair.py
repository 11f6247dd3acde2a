"""The shipped embedded pair: intact, within its size budget, loadable as declared; tokenizer training is
deterministic, so a rebuild starts from the same tokenizers as the one that made the pair."""

import json

import pytest

from dwakd.data import ASSETS, SHIPPED_DATA, load_jsonl, verify_checksums
from dwakd.models import load_model, load_tokenizer

PAIR = ASSETS / "mini"
SHIPPED = ["mini", "mini-samevocab"]  # the cross-tokenizer pair and its same-tokenizer twin


@pytest.mark.parametrize("name", SHIPPED)
def test_checksums_card_and_size(name):
    pair = ASSETS / name
    verify_checksums(pair)
    assert "Rebuild" in (pair / "MODEL_CARD.md").read_text()
    total = sum(f.stat().st_size for f in pair.rglob("*") if f.is_file())
    assert total <= 25 * 2**20, f"shipped pair is {total / 2**20:.1f} MiB, budget 25 MiB"


def test_tokenizer_training_on_dolly_is_deterministic():
    import yaml

    from dwakd.config import DEFAULT_CONFIG
    from dwakd.tokenization import corpus_texts, train_byte_level_bpe, train_sentencepiece_bpe

    tk = yaml.safe_load(DEFAULT_CONFIG.read_text())["pairs"]["mini"]["tokenizers"]
    texts = corpus_texts(load_jsonl(SHIPPED_DATA / "dolly_train.jsonl.gz"))
    a = train_sentencepiece_bpe(texts, tk["student_vocab"]).get_vocab()
    assert a == train_sentencepiece_bpe(texts, tk["student_vocab"]).get_vocab()
    # the byte-level teacher tokenizer has a fixed alphabet: retraining gives exactly the shipped one
    assert train_byte_level_bpe(texts, tk["teacher_vocab"]).get_vocab() == load_tokenizer(PAIR / "teacher").get_vocab()


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("role, arch", [("teacher", "qwen2"), ("student", "llama")])
def test_models_load_as_declared(name, role, arch):
    pair = ASSETS / name
    m = load_model(pair / role)
    sizes = json.loads((pair / "sizes.json").read_text())
    assert m.config.model_type == arch == sizes[f"{role}_arch"]
    assert sum(p.numel() for p in m.parameters()) == sizes[f"{role}_params"]
    tok = load_tokenizer(pair / role)
    assert len(tok) == sizes[f"{role}_vocab"] == m.config.vocab_size
    text = "Name three primary colours.\n\n### Response:\nRed, yellow and blue."
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_student_pretraining_text_prompts_only():
    """`build.student_text: prompts`: the student base reads each prompt as text and no response."""
    from dwakd.build import pretrain_records

    recs = [{"prompt": "P1", "output": ["R1"]}, {"prompt": "P2", "output": ["R2", "R2b"]}]
    assert pretrain_records(recs, "prompt_response") == recs
    assert pretrain_records(recs, "prompts") == [{"prompt": "", "output": ["P1"]}, {"prompt": "", "output": ["P2"]}]
    with pytest.raises(ValueError, match="build.student_text"):
        pretrain_records(recs, "responses")


def test_same_tokenizer_pair_shares_minis_student_and_tokenizer():
    """mini-samevocab: mini's student base (the same file) and a teacher with the student's tokenizer."""
    twin = ASSETS / "mini-samevocab"
    assert (twin / "student" / "model.safetensors").read_bytes() == (PAIR / "student" / "model.safetensors").read_bytes()
    student = load_tokenizer(PAIR / "student").get_vocab()
    assert load_tokenizer(twin / "teacher").get_vocab() == load_tokenizer(twin / "student").get_vocab() == student
