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
    """Remove every space marker (``Ġ`` and ``▁``) from a token string: ``"Ġworld"`` → ``"world"``."""
    for m in SPACE_MARKERS:
        tok = tok.replace(m, "")
    return tok


def normalise_token(tok: str) -> str:
    """MinED's normal form for edit distances: markers removed, lower-cased (``"▁The"`` → ``"the"``)."""
    return strip_markers(tok).lower()


# --------------------------------------------------------------------------------------- ETA (DSKD v2)

def exact_token_alignment(student_tokens: list[str], teacher_tokens: list[str], *,
                          eos: Collection[str] = DEFAULT_EOS) -> list[tuple[int, int]]:
    """DSKD v2's exact token alignment (ETA, arXiv 2504.11426, docs/methods.md "DSKD-ETA").

    Strip the space markers, then walk both token lists accumulating the text each side has consumed
    (``hs``, ``ht``). At the next pair of tokens ``(s_i, t_j)``:

    * ``hs == ht`` and (``s_i == t_j`` or both tokens are in ``eos``) → aligned; both advance;
    * otherwise the side whose accumulated text is shorter advances; both advance when the lengths are
      equal.

    Returns the aligned ``(student_index, teacher_index)`` pairs, strictly increasing on both sides.
    Aligned positions saw the same text and predict the same token string, so their next-token
    distributions are comparable.

    Limits of the rule (kept for parity): the comparison is on token *strings*, so a byte-fallback token
    (``<0xE6>``) only matches the identical byte-fallback token, never a byte-level BPE token (``æ``), and a
    byte-level character (``Ċ`` for a newline, ``Ã©`` for ``é``) never matches a SentencePiece one
    (``\\n``, ``é``). After such a mismatch the accumulated texts differ for good, so nothing later in the
    sequence aligns. ``offsets_alignment`` does not have this limit.

    Deviations from the reference code: an EOS match appends the same sentinel to both accumulated texts
    (the reference appends the two different EOS strings), so text after an EOS can still align; and a token
    counts as EOS on either side when it is in ``eos`` (the reference wants the student's EOS string on the
    student side and the teacher's on the teacher side; they differ only when one side writes the other
    tokenizer's EOS name as a token). Parity fixture: ``tests/fixtures/parity/dskdv2/eta_cases.json``.
    """
    eos = frozenset(eos)
    s_raw, t_raw = student_tokens, teacher_tokens
    s = [strip_markers(x) for x in s_raw]
    t = [strip_markers(x) for x in t_raw]
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
    * A span shared by several tokens of one side (a character split into several byte tokens) and empty
      spans (special tokens such as EOS, which carry no text) are never aligned: pair the EOS positions
      yourself.

    Returns ``(student_index, teacher_index)`` pairs, strictly increasing on both sides.
    """

    def spans(offsets: Sequence[tuple[int, int]]) -> dict[tuple[int, int], int]:
        seen: dict[tuple[int, int], int] = {}
        dup: set[tuple[int, int]] = set()
        for k, (a, b) in enumerate(offsets):
            a, b = int(a), int(b)
            if a >= b:
                continue
            if (a, b) in seen:
                dup.add((a, b))
            seen[(a, b)] = k
        return {sp: k for sp, k in seen.items() if sp not in dup}

    s_spans, t_spans = spans(student_offsets), spans(teacher_offsets)
    pairs = sorted((k, t_spans[sp]) for sp, k in s_spans.items() if sp in t_spans)
    # identical non-empty spans are ordered the same way on both sides; keep the guarantee explicit
    out: list[tuple[int, int]] = []
    for i, j in pairs:
        if not out or (i > out[-1][0] and j > out[-1][1]):
            out.append((i, j))
    return out


# --------------------------------------------------------------------------------------- MinED: DTW

def dtw_align(a: list[str], b: list[str], *, lower: bool = False) -> list[tuple[int, int]]:
    """Dynamic time warping of two token-string sequences (FuseLLM / DSKD MinED, step 2).

    Cost ``C[i, j] = Levenshtein(strip(a_i), strip(b_j))`` with the space markers stripped (``lower=True``
    also lower-cases, i.e. uses ``normalise_token``); ``R[i, j] = C[i, j] + min(R[i−1, j−1], R[i−1, j],
    R[i, j−1])``. Returns the optimal warping path as ``(i, j)`` pairs: monotone, steps of at most one on each
    side, from ``(0, 0)`` to ``(len(a)−1, len(b)−1)``; ``[]`` if either sequence is empty.

    Ties in the traceback prefer the diagonal, then ``(i, j−1)``, then ``(i−1, j)``: the reference's order
    when ``a`` is the student (DSKD calls ``dtw(teacher, student)`` and prefers diagonal, teacher−1,
    student−1). The DP runs over anti-diagonals with numpy, O(len(a)+len(b)) Python steps.
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return []
    norm = normalise_token if lower else strip_markers
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


def build_vocab_map(teacher_vocab: Mapping[str, int], student_vocab: Mapping[str, int], *, workers: int = -1,
                    chunk: int = 1024, overrides: Mapping[int, int] | None = None) -> list[int]:
    """Teacher id → student id (FuseLLM / DSKD MinED, step 1; docs/methods.md "MinED").

    For each teacher token: the student token with the identical string if there is one — as is, else with
    the space marker converted (``Ġworld`` → ``▁world`` and vice versa) — else the student token of minimum
    Levenshtein distance between the ``normalise_token`` forms (markers removed, lower-cased). Ties go to
    the lowest student id. ``overrides`` (teacher id → student id) is applied last, e.g. to map the teacher
    EOS to the student EOS. Ids missing from ``teacher_vocab`` (holes) map to −1.

    Unlike FuseLLM's brute-force Python loop, distances come from ``rapidfuzz.process.cdist``
    (``workers=-1``: all cores) over the distinct normalised strings, ``chunk`` teacher strings at a time;
    the result is the same.
    """
    if not teacher_vocab or not student_vocab:
        raise ValueError("build_vocab_map needs two non-empty vocabularies")
    t2s = [-1] * (max(teacher_vocab.values()) + 1)
    pending: dict[str, list[int]] = {}  # normalised string → teacher ids still unmapped
    for tok, tid in teacher_vocab.items():
        sid = _exact_student_id(tok, student_vocab)
        if sid is None:
            pending.setdefault(normalise_token(tok), []).append(tid)
        else:
            t2s[tid] = sid
    if pending:
        # one choice per distinct normalised student string, represented by its lowest id, in id order:
        # argmin's first-minimum rule then breaks ties towards the lowest student id.
        rep: dict[str, int] = {}
        for tok, sid in sorted(student_vocab.items(), key=lambda kv: kv[1]):
            rep.setdefault(normalise_token(tok), sid)
        choices = list(rep)
        choice_ids = np.fromiter(rep.values(), dtype=np.int64, count=len(rep))
        queries = list(pending)
        for start in range(0, len(queries), chunk):
            block = queries[start:start + chunk]
            dist = process.cdist(block, choices, scorer=Levenshtein.distance, dtype=np.int32, workers=workers)
            for q, best in zip(block, choice_ids[dist.argmin(axis=1)].tolist()):
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
