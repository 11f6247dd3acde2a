from pathlib import Path

from dwakd.models import load_tokenizer
from dwakd.tokenization import corpus_texts, train_byte_level_bpe, train_sentencepiece_bpe

TEXT = "The quick brown fox, naïve café 日本 2024.\n\n### Response:\n"


def test_teacher_is_byte_level_bpe(dolly_small):
    tok = train_byte_level_bpe(corpus_texts(dolly_small), 700)
    toks = tok.tokenize(" the quick")
    assert toks[0].startswith("Ġ")
    assert len(tok) == 700
    assert tok.decode(tok(TEXT)["input_ids"]) == TEXT
    assert tok.unk_token_id is None  # byte-level: every string is representable


def test_student_is_sentencepiece_style_with_byte_fallback(dolly_small):
    tok = train_sentencepiece_bpe(corpus_texts(dolly_small), 600)
    toks = tok.tokenize("the quick 日")
    assert toks[0].startswith("▁")
    assert ["<0xE6>", "<0x97>", "<0xA5>"] == toks[-3:]  # 日 is unseen: UTF-8 bytes, not <unk>
    assert tok.unk_token_id not in tok(TEXT)["input_ids"]
    assert tok.decode(tok(TEXT)["input_ids"]) == TEXT
    assert tok.eos_token == "</s>" and tok.pad_token_id == tok.eos_token_id


def test_offsets_cover_the_text(dolly_small):
    for tok in (train_byte_level_bpe(corpus_texts(dolly_small), 700),
                train_sentencepiece_bpe(corpus_texts(dolly_small), 600)):
        enc = tok(TEXT, return_offsets_mapping=True, add_special_tokens=False)
        assert enc["offset_mapping"][-1][1] == len(TEXT)
        assert all(a <= b for a, b in enc["offset_mapping"])


def test_training_is_deterministic_and_saved_pair_loads(tiny_pair, dolly_small):
    again = train_byte_level_bpe(corpus_texts(dolly_small), 700)
    saved = load_tokenizer(tiny_pair / "teacher")
    assert again.get_vocab() == saved.get_vocab()
    student = load_tokenizer(tiny_pair / "student_base")
    assert student.get_vocab() != saved.get_vocab()


def test_shared_pair_gives_the_teacher_the_students_tokenizer(tmp_path, dolly_small):
    from dwakd.tokenization import train_pair

    train_pair(dolly_small, tmp_path, teacher_vocab=None, student_vocab=600, shared=True)
    teacher, student = load_tokenizer(tmp_path / "teacher"), load_tokenizer(tmp_path / "student")
    assert teacher.get_vocab() == student.get_vocab() and len(teacher) == 600
    assert teacher.tokenize(TEXT) == student.tokenize(TEXT)


def test_tokenizers_command_checks_shared_against_teacher_vocab(tmp_path, capsys):
    import yaml

    from dwakd.cli import main

    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump({"pairs": {"tiny-samevocab": {"tokenizers": {"teacher_vocab": 700}}},
                                    "profiles": {"tiny": {"pairs": ["tiny-samevocab"]}}}))
    out = tmp_path / "tok"
    cfg = str(Path(__file__).resolve().parent.parent / "config" / "config.yaml")
    assert main(["tokenizers", "--config", cfg, "--config", str(over), "--set", "profile=tiny",
                 "--pair", "tiny-samevocab", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pairs.tiny-samevocab.tokenizers" in err and "shared: true" in err and "teacher_vocab" in err
    assert not out.exists()
