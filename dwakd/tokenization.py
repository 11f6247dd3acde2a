"""Train the embedded pair's two tokenizers with Hugging Face ``tokenizers``.

* teacher: byte-level BPE in the GPT-2 / Qwen style (``Ġ`` space marker, no unknown token possible);
* student: SentencePiece-style BPE in the Llama style (``▁`` space marker, ``<0xNN>`` byte fallback).

Different styles and vocabulary sizes make every cross-tokenizer difficulty of the real pairs appear at a
scale that trains on a laptop CPU. Both are saved as ``transformers`` fast tokenizers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TEACHER_EOS = "<|endoftext|>"
ALPHABET_SIZE = 200  # characters kept as tokens by the student; rarer ones fall back to bytes
STUDENT_SPECIALS = ("<unk>", "<s>", "</s>")


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE; EOS = pad = ``<|endoftext|>``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[TEACHER_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=TEACHER_EOS, pad_token=TEACHER_EOS,
                                   bos_token=TEACHER_EOS, unk_token=None, clean_up_tokenization_spaces=False)


def train_sentencepiece_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Llama-style BPE: spaces become ``▁`` with one prepended, unknown characters fall back to bytes.

    The 256 ``<0xNN>`` byte tokens follow the three specials, as in Llama's vocabulary.
    """
    unk, bos, eos = STUDENT_SPECIALS
    tok = Tokenizer(models.BPE(unk_token=unk, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # SentencePiece keeps words, punctuation runs and digits apart (split_by_unicode_script, split_digits).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("▁", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[[\p{P}\p{S}]&&[^▁]]+|\n"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    texts = list(texts)
    alphabet = frequent_characters(texts, ALPHABET_SIZE)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[*STUDENT_SPECIALS, *byte_tokens],
        initial_alphabet=alphabet, limit_alphabet=len(alphabet), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, bos_token=bos, eos_token=eos,
                                   pad_token=eos, clean_up_tokenization_spaces=False)


def frequent_characters(texts: list[str], k: int) -> list[str]:
    """The ``k`` most frequent characters after the SentencePiece normalisation (spaces as ``▁``), ties broken
    by code point. ``tokenizers``' own ``limit_alphabet`` breaks ties in hash order, which made two trainings
    on the same text differ; giving it this list as the initial alphabet makes training deterministic."""
    counts = Counter()
    for t in texts:
        counts.update(t.replace(" ", "▁"))
    counts["▁"] += len(texts)  # the prepended marker
    return [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def corpus_texts(records: list[dict]) -> list[str]:
    """Prompt and every reference of each record: the text the tokenizers are trained on."""
    return [t for r in records for t in (r["prompt"], *r["output"])]


def train_pair(records: list[dict], out_dir: Path, teacher_vocab: int | None, student_vocab: int,
               shared: bool = False) -> None:
    """Train and save ``out_dir/teacher`` and ``out_dir/student``. ``shared``: a same-tokenizer pair (the
    same-vocabulary table's): the student's tokenizer is saved for both and ``teacher_vocab`` is unused."""
    texts = corpus_texts(records)
    student = train_sentencepiece_bpe(texts, student_vocab)
    student.save_pretrained(out_dir / "student")
    if shared:
        student.save_pretrained(out_dir / "teacher")
    else:
        train_byte_level_bpe(texts, teacher_vocab).save_pretrained(out_dir / "teacher")
