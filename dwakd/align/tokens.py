"""Token-level alignment between two tokenizations of the same text: pure functions on token strings.

* **ETA** — DSKD v2's exact token alignment (Zhang et al. 2025, arXiv 2504.11426): pairs of positions that
  saw the same text prefix and carry the same token string (``exact_token_alignment``), plus a
  character-offset variant (``offsets_alignment``) that also aligns text the marker rule cannot compare.
* **MinED** — FuseLLM's minimum-edit-distance alignment (Wan et al. 2024, arXiv 2401.10491) as
  re-implemented by DSKD (Zhang et al. 2024, arXiv 2406.17328): DTW over the two token sequences with an
  edit-distance cost (``dtw_align``, ``one_to_one``) and a teacher→student vocabulary map
  (``build_vocab_map``, ``invert_vocab_map``).

Token strings are what ``tokenizer.convert_ids_to_tokens`` returns: byte-level BPE marks a leading space
with ``Ġ`` (GPT-2, Qwen), SentencePiece with ``▁`` (Llama, Mistral) and falls back to ``<0xNN>`` byte tokens.
Index pairs are always ``(student_index, teacher_index)``.
"""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

SPACE_MARKERS = ("Ġ", "▁")
DEFAULT_EOS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<|eot_id|>", "<eos>")


# --------------------------------------------------------------------------------------- token strings

def strip_markers(tok: str) -> str:
    """Remove one *leading* space marker (``Ġ`` or ``▁``): ``"Ġworld"`` → ``"world"``, ``"ĠĠ"`` → ``"Ġ"``.

    Only the leading marker stands for the space before a word; a marker inside or after it is text (a second
    space of a whitespace run), so it is kept and whitespace tokens of different widths stay different."""
    return tok[1:] if tok[:1] in SPACE_MARKERS else tok


def canonical_markers(tok: str) -> str:
    """Every space marker written as ``▁``: the same text whatever the tokenizer's style (``ĠĠa`` → ``▁▁a``)."""
    return tok.replace("Ġ", "▁")


# Printable ASCII is the only part of the byte-level alphabet whose characters stand for themselves *and* can
# be lower-cased into another character of the alphabet that is the same byte's lower case: ``A`` (0x41) → ``a``
# (0x61). Every other character of a byte-level token stands for a byte: ``Ċ`` is 0x0A, ``Ã`` is 0xC3, and
# ``str.lower`` would turn them into ``ċ`` (0x0B) and ``ã`` (0xE3), other bytes.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normalise_token(tok: str, *, byte_level: bool = True) -> str:
    """The normalised rule's form of a token for edit distances: the leading marker removed, lower-cased.

    ``byte_level=True`` (the default, safe for every vocabulary) lower-cases ASCII letters only, so a byte-level
    character that stands for a byte never changes (``"ĠThe"`` → ``"the"``, ``"Ċ"`` stays ``"Ċ"``, ``"Ã"``
    stays ``"Ã"``). ``byte_level=False`` is for SentencePiece vocabularies, whose characters are text:
    ``str.lower`` (``"▁Über"`` → ``"über"``)."""
    tok = strip_markers(tok)
    return tok.translate(_ASCII_LOWER) if byte_level else tok.lower()


def vocab_marker(vocab: Mapping[str, int] | Collection[str]) -> str:
    """A vocabulary's space marker: ``"▁"`` (SentencePiece) when more tokens start with ``▁`` than with ``Ġ``,
    else ``"Ġ"`` (byte-level BPE)."""
    n_sp = sum(1 for t in vocab if t[:1] == "▁")
    n_bl = sum(1 for t in vocab if t[:1] == "Ġ")
    return "▁" if n_sp > n_bl else "Ġ"


# --------------------------------------------------------------------------------------- ETA (DSKD v2)

def exact_token_alignment(student_tokens: list[str], teacher_tokens: list[str], *,
                          eos: Collection[str] = DEFAULT_EOS) -> list[tuple[int, int]]:
    """DSKD v2's exact token alignment (ETA, arXiv 2504.11426, docs/methods.md "DSKD-ETA").

    Each token is read as a *piece* of text: its string with the space markers written alike
    (``canonical_markers``: ``Ġ`` → ``▁``), and for the first token of each side (and the first after an EOS)
    without its leading marker (SentencePiece's dummy prefix, which stands for no text). Walk both token lists accumulating the text
    each side has consumed (``hs``, ``ht``). At the next pair of tokens ``(s_i, t_j)``:

    * ``hs == ht`` and (the two pieces are equal or both tokens are in ``eos``) → aligned; both advance;
    * otherwise the side whose accumulated text is shorter advances; both advance when the lengths are
      equal.

    Returns the aligned ``(student_index, teacher_index)`` pairs, strictly increasing on both sides.
    Aligned positions saw the same text and predict the same text, so they cover the same bytes and their
    next-token distributions are comparable.

    Limits of the rule (kept for parity): the comparison is on token *strings*, so a byte-fallback token
    (``<0xE6>``) only matches the identical byte-fallback token, never a byte-level BPE token (``æ``), and a
    byte-level character (``Ċ`` for a newline, ``Ã©`` for ``é``) never matches a SentencePiece one
    (``<0x0A>``, ``é``). After such a mismatch the accumulated texts differ for good, so nothing later in the
    sequence aligns. ``offsets_alignment`` does not have this limit.

    Deviations from the reference code: the reference removes *every* space marker from the pieces and from
    the accumulated texts, so whitespace-only tokens of different widths (``Ġ`` and ``ĠĠ``: both empty) and
    tokens after them pair although they cover different text; here only the first token's leading marker
    is dropped and the others count as text (``tests/test_align.py``, ``tests/test_realtok.py``). An EOS
    match appends the same sentinel to both accumulated texts (the reference appends the two different EOS
    strings), so text after an EOS can still align; and a token counts as EOS on either side when it is in
    ``eos`` (the reference wants the student's EOS string on the student side and the teacher's on the
    teacher side; they differ only when one side writes the other tokenizer's EOS name as a token). Parity
    fixture: ``tests/fixtures/parity/dskdv2/eta_cases.json``.
    """
    eos = frozenset(eos)
    s_raw, t_raw = student_tokens, teacher_tokens

    def pieces(toks: list[str]) -> list[str]:  # a sequence starts at 0 and after each EOS (packed samples)
        return [canonical_markers(strip_markers(x) if k == 0 or toks[k - 1] in eos else x)
                for k, x in enumerate(toks)]

    s, t = pieces(s_raw), pieces(t_raw)
    i = j = 0
    hs = ht = ""
    pairs: list[tuple[int, int]] = []
    while i < len(s) and j < len(t):
        both_eos = s_raw[i] in eos and t_raw[j] in eos
        if hs == ht and (s[i] == t[j] or both_eos):
            pairs.append((i, j))
            piece = "\x00" if both_eos else s[i]
            hs += piece
            ht += piece
            i += 1
            j += 1
        elif len(hs) < len(ht):
            hs += s[i]
            i += 1
        elif len(hs) > len(ht):
            ht += t[j]
            j += 1
        else:
            hs += s[i]
            ht += t[j]
            i += 1
            j += 1
    return pairs


def whole_character_tokens(offsets: Sequence[tuple[int, int]]) -> list[bool]:
    """Which tokens cover whole characters: a non-empty span that overlaps no other token's span.

    A character split into several tokens (byte-level pieces such as ``ĠâĢ`` + ``ľ`` of ``“``, or
    SentencePiece byte-fallback tokens ``<0xF0>`` ``<0x9F>`` …) gives each piece the character's offsets, so
    the pieces' spans overlap; such a token covers only part of the bytes its span names."""
    spans = sorted((int(a), int(b), k) for k, (a, b) in enumerate(offsets) if int(a) < int(b))
    ok = [int(a) < int(b) for a, b in offsets]
    max_end = -1
    for n, (a, b, k) in enumerate(spans):
        if a < max_end:  # overlaps an earlier token
            ok[k] = False
        if n + 1 < len(spans) and spans[n + 1][0] < b:  # overlaps the next one
            ok[k] = False
        max_end = max(max_end, b)
    return ok


def offsets_alignment(student_offsets: Sequence[tuple[int, int]],
                      teacher_offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Align tokens whose character spans in the same text are identical (an improvement over ETA).

    ``*_offsets`` are the ``offset_mapping`` of each tokenizer on the **same** string (fast tokenizers,
    ``return_offsets_mapping=True``). Two tokens with the same span ``(start, end)`` saw the same text before
    them and cover the same text, whatever their marker or byte representation, so this also aligns
    newlines, non-ASCII words and everything after them, which the string rule of
    ``exact_token_alignment`` cannot.

    * Spans are compared as given (a leading space belongs to the token on both sides for ``Ġ``/``▁``
      tokenizers), so ``"▁" + "Y"`` never aligns with ``"ĠY"``: their prefixes differ by a space.
    * Only tokens that cover whole characters take part (``whole_character_tokens``): the pieces of a
      character split into several tokens all carry the character's offsets, so equal spans would not mean
      equal bytes (GPT-2's ``ĠâĢ``, the first two bytes of `` “``, has the span of Qwen's ``ĠâĢľ``).
    * Empty spans (special tokens such as EOS, which carry no text) are never aligned: pair the EOS positions
      yourself.

    Returns ``(student_index, teacher_index)`` pairs, strictly increasing on both sides.
    """

    def spans(offsets: Sequence[tuple[int, int]]) -> dict[tuple[int, int], int]:
        whole = whole_character_tokens(offsets)
        return {(int(a), int(b)): k for k, (a, b) in enumerate(offsets) if whole[k]}

    s_spans, t_spans = spans(student_offsets), spans(teacher_offsets)
    pairs = sorted((k, t_spans[sp]) for sp, k in s_spans.items() if sp in t_spans)
    # identical non-overlapping spans are ordered the same way on both sides; keep the guarantee explicit
    out: list[tuple[int, int]] = []
    for i, j in pairs:
        if not out or (i > out[-1][0] and j > out[-1][1]):
            out.append((i, j))
    return out


# --------------------------------------------------------------------------------------- MinED: DTW

def dtw_align(a: list[str], b: list[str], *, lower: bool = False) -> list[tuple[int, int]]:
    """Dynamic time warping of two token-string sequences (FuseLLM / DSKD MinED, step 2).

    Cost ``C[i, j] = Levenshtein(a_i, b_j)`` with every space marker removed from both strings, as the
    reference's cost does (``lower=True`` also lower-cases ASCII letters); ``R[i, j] = C[i, j] + min(R[i−1, j−1], R[i−1, j],
    R[i, j−1])``. Returns the optimal warping path as ``(i, j)`` pairs: monotone, steps of at most one on each
    side, from ``(0, 0)`` to ``(len(a)−1, len(b)−1)``; ``[]`` if either sequence is empty.

    Ties in the traceback prefer the diagonal, then ``(i, j−1)``, then ``(i−1, j)``: the reference's order
    when ``a`` is the student (DSKD calls ``dtw(teacher, student)`` and prefers diagonal, teacher−1,
    student−1). The DP runs over anti-diagonals with numpy, O(len(a)+len(b)) Python steps.
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return []
    def norm(x: str) -> str:
        x = x.replace("Ġ", "").replace("▁", "")
        return x.translate(_ASCII_LOWER) if lower else x

    cost = process.cdist([norm(x) for x in a], [norm(x) for x in b], scorer=Levenshtein.distance,
                         dtype=np.int32, workers=1).astype(np.float64)
    R = np.full((n + 1, m + 1), np.inf)
    R[0, 0] = 0.0
    for d in range(2, n + m + 1):  # padded coordinates: cell (i, j) holds R for (i−1, j−1)
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        R[i, j] = cost[i - 1, j - 1] + np.minimum(np.minimum(R[i - 1, j - 1], R[i, j - 1]), R[i - 1, j])
    i, j = n, m
    path = [(n - 1, m - 1)]
    while (i, j) != (1, 1):
        diag, left, up = R[i - 1, j - 1], R[i, j - 1], R[i - 1, j]
        if diag <= left and diag <= up:
            i, j = i - 1, j - 1
        elif left <= up:
            j -= 1
        else:
            i -= 1
        path.append((i - 1, j - 1))
    path.reverse()
    return path


def one_to_one(path: Sequence[tuple[int, int]], *, strict: bool = False) -> dict[int, int]:
    """Which first-side (student) positions a warping path matches to exactly one second-side position.

    Returns ``{i: j}`` for every ``i`` that occurs in exactly one pair of ``path`` (DSKD's rule: the student
    token maps to a single teacher token, though that teacher token may cover other student tokens too).
    ``strict=True`` also requires ``j`` to occur once (a true 1:1 match).
    """
    n_i: dict[int, int] = {}
    n_j: dict[int, int] = {}
    for i, j in path:
        n_i[i] = n_i.get(i, 0) + 1
        n_j[j] = n_j.get(j, 0) + 1
    return {i: j for i, j in path if n_i[i] == 1 and (not strict or n_j[j] == 1)}


# --------------------------------------------------------------------------------------- MinED: vocab map

def _exact_student_id(tok: str, student_vocab: Mapping[str, int]) -> int | None:
    """The student id of the identical string: as is, then with the space marker converted (Ġ↔▁)."""
    for cand in (tok, tok.replace("Ġ", "▁"), tok.replace("▁", "Ġ")):
        sid = student_vocab.get(cand)
        if sid is not None:
            return sid
    return None


VOCAB_MAP_RULES = ("reference", "normalised")


def _nearest(queries: list[str], choices: list[str], choice_ids: np.ndarray, workers: int, chunk: int) -> list[int]:
    """For each query, the id of the choice at the smallest Levenshtein distance; ties to the first choice (the
    choices come in id order, and ``argmin`` keeps the first minimum)."""
    out: list[int] = []
    for start in range(0, len(queries), chunk):
        # choices × queries: rapidfuzz vectorises over the first argument, about 1.3× faster this way round
        dist = process.cdist(choices, queries[start:start + chunk], scorer=Levenshtein.distance, dtype=np.int32,
                             workers=workers)
        out.extend(choice_ids[dist.argmin(axis=0)].tolist())
    return out


def build_vocab_map(teacher_vocab: Mapping[str, int], student_vocab: Mapping[str, int], *, rule: str = "reference",
                    workers: int = -1, chunk: int = 256, overrides: Mapping[int, int] | None = None) -> list[int]:
    """Teacher id → student id (FuseLLM / DSKD MinED, step 1; docs/methods.md "MinED").

    ``rule="reference"`` (default), FuseLLM's rule, which built the maps DSKD ships: write the teacher token
    with the student's space marker (every ``Ġ`` → ``▁`` or back, when the two vocabularies' markers differ,
    ``vocab_marker``); the student token with that identical string, else the student token at the smallest
    Levenshtein distance to it, comparing the raw strings (markers and case kept). Ties go to the lowest
    student id. Reproduces the authors' Qwen1.5 → GPT-2 and Mistral → TinyLlama maps entry for entry
    (``tests/test_realtok.py``).

    ``rule="normalised"``, the suite's earlier rule: the identical string as is or with the marker converted
    (``_exact_student_id``), else the smallest distance between ``normalise_token`` forms (leading marker
    removed, lower-cased without changing a byte-level character: ASCII letters only in a byte-level
    vocabulary), ties to the lowest student id.

    ``overrides`` (teacher id → student id) is applied last, e.g. to map the teacher EOS to the student EOS.
    Ids missing from ``teacher_vocab`` (holes) map to −1. Distances come from ``rapidfuzz.process.cdist``
    (``workers=-1``: all cores) over the distinct query strings, ``chunk`` at a time (memory ``chunk`` ×
    student vocabulary × 4 bytes); the result is that of FuseLLM's brute-force loop.
    """
    if rule not in VOCAB_MAP_RULES:
        raise ValueError(f"build_vocab_map: rule must be one of {VOCAB_MAP_RULES}, got {rule!r}")
    if not teacher_vocab or not student_vocab:
        raise ValueError("build_vocab_map needs two non-empty vocabularies")
    t2s = [-1] * (max(teacher_vocab.values()) + 1)
    students = sorted(student_vocab.items(), key=lambda kv: kv[1])
    pending: dict[str, list[int]] = {}  # query string → teacher ids still unmapped
    if rule == "reference":
        tm, sm = vocab_marker(teacher_vocab), vocab_marker(student_vocab)
        for tok, tid in teacher_vocab.items():
            q = tok.replace(tm, sm) if tm != sm else tok
            sid = student_vocab.get(q)
            if sid is None:
                pending.setdefault(q, []).append(tid)
            else:
                t2s[tid] = sid
        choices = [tok for tok, _ in students]
        choice_ids = np.fromiter((sid for _, sid in students), dtype=np.int64, count=len(students))
    else:
        t_bytes, s_bytes = vocab_marker(teacher_vocab) == "Ġ", vocab_marker(student_vocab) == "Ġ"
        for tok, tid in teacher_vocab.items():
            sid = _exact_student_id(tok, student_vocab)
            if sid is None:
                pending.setdefault(normalise_token(tok, byte_level=t_bytes), []).append(tid)
            else:
                t2s[tid] = sid
        # one choice per distinct normalised student string, represented by its lowest id, in id order
        rep: dict[str, int] = {}
        for tok, sid in students:
            rep.setdefault(normalise_token(tok, byte_level=s_bytes), sid)
        choices = list(rep)
        choice_ids = np.fromiter(rep.values(), dtype=np.int64, count=len(rep))
    if pending:
        queries = list(pending)
        for q, best in zip(queries, _nearest(queries, choices, choice_ids, workers, chunk)):
            for tid in pending[q]:
                t2s[tid] = best
    for tid, sid in (overrides or {}).items():
        t2s[tid] = sid
    return t2s


def invert_vocab_map(t2s: Sequence[int], n_student: int, *, teacher_vocab: Mapping[str, int] | None = None,
                     student_vocab: Mapping[str, int] | None = None) -> list[int]:
    """Student id → one teacher id (−1 where no teacher id maps to it).

    Several teacher tokens can map to one student token; one is kept. Without the vocabularies, the lowest
    teacher id. With both vocabularies, the best match: first a teacher token whose string is identical
    (as in ``build_vocab_map``: as is or with the marker converted), then the smallest edit distance of the
    normalised strings, then the lowest teacher id.
    """
    s2t = [-1] * n_student
    if teacher_vocab is None or student_vocab is None:
        for tid, sid in enumerate(t2s):
            if 0 <= sid < n_student and s2t[sid] == -1:
                s2t[sid] = tid
        return s2t
    t_str = {i: tok for tok, i in teacher_vocab.items()}
    s_str = {i: tok for tok, i in student_vocab.items()}
    best: list[tuple[int, int, int] | None] = [None] * n_student
    for tid, sid in enumerate(t2s):
        if not 0 <= sid < n_student:
            continue
        tt, ss = t_str.get(tid), s_str.get(sid)
        if tt is None or ss is None:
            key = (2, 0, tid)
        elif _exact_student_id(tt, {ss: sid}) == sid:
            key = (0, 0, tid)
        else:
            key = (1, Levenshtein.distance(normalise_token(tt), normalise_token(ss)), tid)
        if best[sid] is None or key < best[sid]:
            best[sid] = key
            s2t[sid] = tid
    return s2t
