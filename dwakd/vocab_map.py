"""Teacher → student vocabulary-map files: built once per pair by ``dwakd vocab-map`` (workflow rule
``vocab_map``) and read by the methods that need one (``Method.needs_vocab_map``: MinED), through
``dwakd train --vocab-map``.

The map is FuseLLM's (Wan et al. 2024, arXiv 2401.10491), as MinED uses it: ``dwakd.align.tokens.build_vocab_map``
with a ``rule`` (``VOCAB_MAP_RULES``) and the teacher EOS mapped to the student EOS (``mined_vocab_map``).

File (JSON, written atomically): ``teacher_to_student`` (the id list), ``fingerprint`` (sha256 of both
vocabularies, ``vocab_fingerprint``), ``teacher_vocab_size``, ``student_vocab_size``, ``overrides`` (the EOS
mapping), ``rule`` (the rule it was built with), and what the writer adds (``seconds``). A map read for other
vocabularies, or for another rule, is an error that says how to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dwakd.align.tokens import build_vocab_map
from dwakd.atomic import atomic_write_text
from dwakd.errors import ConfigError
from dwakd.files import read_json, regenerate_hint

__all__ = ["eos_override", "mined_vocab_map", "read_vocab_map", "vocab_fingerprint", "write_vocab_map"]


def vocab_fingerprint(teacher_vocab: dict, student_vocab: dict) -> str:
    """sha256 of both vocabularies (token strings in id order): what a stored map was built for."""
    h = hashlib.sha256()
    for v in (teacher_vocab, student_vocab):
        h.update(json.dumps(sorted(v.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode())
    return h.hexdigest()


def eos_override(teacher_tokenizer, student_tokenizer) -> dict[int, int]:
    """The teacher EOS maps to the student EOS (whatever their strings)."""
    return {teacher_tokenizer.eos_token_id: student_tokenizer.eos_token_id}


def mined_vocab_map(teacher_tokenizer, student_tokenizer, workers: int = -1, rule: str = "reference") -> list[int]:
    """MinED's teacher → student map of two tokenizers (step 1): ``build_vocab_map`` with ``rule`` plus the EOS
    override (a no-op for the published pairs, whose EOS strings are identical)."""
    return build_vocab_map(teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab(), rule=rule, workers=workers,
                           overrides=eos_override(teacher_tokenizer, student_tokenizer))


def write_vocab_map(path: str | os.PathLike, t2s: list[int], teacher_tokenizer, student_tokenizer,
                    **meta) -> None:
    """Store a map with the fingerprint of both vocabularies (atomically); ``meta`` is stored as well."""
    tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"fingerprint": vocab_fingerprint(tv, sv), "teacher_vocab_size": len(tv), "student_vocab_size": len(sv),
            "overrides": {str(k): v for k, v in eos_override(teacher_tokenizer, student_tokenizer).items()},
            **meta, "teacher_to_student": list(t2s)}
    atomic_write_text(path, json.dumps(data))


def read_vocab_map(path: str | os.PathLike, teacher_tokenizer, student_tokenizer, rule: str | None = None
                   ) -> list[int]:
    """A stored map, checked against the two tokenizers' vocabularies and, when both are known, the rule it was
    built with (a mismatch names the file; files written before the rule was stored carry none)."""
    path = Path(path)
    data = read_json(path, "vocabulary map")  # missing, truncated, not UTF-8: DataError naming the file
    try:
        fp, t2s = data["fingerprint"], data["teacher_to_student"]
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a vocabulary map written by `dwakd vocab-map` ({e}); "
                          f"{regenerate_hint(path)}") from None
    want = vocab_fingerprint(teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab())
    if fp != want:
        raise ConfigError(f"{path}: this vocabulary map was built for other tokenizers (fingerprint {fp[:12]}, these "
                          f"are {want[:12]}); rebuild it with `dwakd vocab-map`")
    stored = data.get("rule")
    if rule is not None and stored is not None and stored != rule:
        raise ConfigError(f"{path}: this vocabulary map was built with rule {stored!r}, the run asks for {rule!r} "
                          f"(map_rule); rebuild it with `dwakd vocab-map --rule {rule}`")
    return [int(x) for x in t2s]
