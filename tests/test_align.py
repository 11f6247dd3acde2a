"""Token alignment (``dwakd.align.tokens``): ETA, offsets, MinED's DTW and vocabulary maps."""

from __future__ import annotations

import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from dwakd.align import (
    build_vocab_map,
    dtw_align,
    exact_token_alignment,
    invert_vocab_map,
    normalise_token,
    offsets_alignment,
    one_to_one,
    strip_markers,
)

# ------------------------------------------------------------------------------------------ token strings


def test_strip_and_normalise():
    assert strip_markers("Ġworld") == strip_markers("▁world") == "world"
    assert strip_markers("Ġ") == strip_markers("▁") == ""
    # only the leading marker goes: a whitespace run keeps its width (was: every marker removed, "ĠĠ" → "")
    assert strip_markers("ĠĠ") == "Ġ" and strip_markers("▁▁▁") == "▁▁" and strip_markers("aĠb") == "aĠb"
    assert normalise_token("▁The") == normalise_token("ĠTHE") == "the"
    assert normalise_token("<0xE6>") == "<0xe6>"


def test_normalise_never_changes_a_byte_level_character():
    # byte-level characters that stand for bytes keep their byte (was: "Ċ" 0x0A → "ċ" 0x0B, "Ã" 0xC3 → "ã" 0xE3)
    assert normalise_token("Ċ") == "Ċ" and normalise_token("ĠÃ©") == "Ã©" and normalise_token("ĉĉ") == "ĉĉ"
    assert normalise_token("ĠÃľber") == "Ãľber"  # "Über" in byte-level characters: only ASCII letters fold
    byte_chars = [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0xA1, 0x100) if c != 0xAD] + \
        [chr(0x100 + k) for k in range(68)]  # the 256 characters of the byte-level alphabet
    assert len(byte_chars) == 256
    for c in byte_chars:  # behind a character, so that the leading-marker rule does not remove "Ġ"
        n = normalise_token("x" + c)[1:]
        assert n == c or ("A" <= c <= "Z" and n == c.lower()), c
    # SentencePiece tokens are text: their case folds fully
    assert normalise_token("▁Über", byte_level=False) == "über"


# ------------------------------------------------------------------------------------------ ETA


@pytest.mark.parametrize("student, teacher, want", [
    pytest.param(["▁Hello", "▁wor", "ld", "</s>"], ["Hello", "Ġworld", "<|endoftext|>"], [(0, 0), (3, 2)],
                 id="brief-example"),
    pytest.param(["▁The", "▁cat", "▁sat", "</s>"], ["The", "Ġcat", "Ġsat", "<|endoftext|>"],
                 [(0, 0), (1, 1), (2, 2), (3, 3)], id="same-split-different-markers"),
    # "unbelievable": un|believ|able vs unbel|iev|able; the walk re-synchronises at "able"
    pytest.param(["▁un", "believ", "able", "▁news"], ["Ġunbel", "iev", "able", "Ġnews"], [(2, 2), (3, 3)],
                 id="same-word-split-differently"),
    # byte fallback against byte-level BPE: "<0xC3><0xA9>" vs "Ã©" never match and the accumulated texts
    # never agree again, so nothing after the "é" aligns (the documented limit of the rule)
    pytest.param(["▁caf", "<0xC3>", "<0xA9>", "▁au", "▁lait"], ["Ġcaf", "Ã©", "Ġau", "Ġlait"], [(0, 0)],
                 id="byte-fallback-vs-byte-level"),
    # identical byte-fallback tokens on both sides (two SentencePiece vocabularies) do match
    pytest.param(["▁caf", "<0xC3>", "<0xA9>", "▁au"], ["▁ca", "f", "<0xC3>", "<0xA9>", "▁au"],
                 [(1, 2), (2, 3), (3, 4)], id="byte-fallback-both-sides"),
    # a lone space token: "▁" + "Y" vs "ĠY" — different prefixes at "Y", re-synchronised at "ou"
    pytest.param(["▁", "Y", "ou"], ["ĠY", "ou"], [(2, 1)], id="space-token"),
    # byte-level newline "Ċ" vs a literal "\n": same length, different text, nothing aligns after it
    pytest.param(["▁a", "\n", "b"], ["a", "Ċ", "b"], [(0, 0)], id="newline-byte-level"),
    pytest.param(["▁Hi", "</s>"], ["Hi", "!"], [(0, 0)], id="eos-needs-both"),
    # whitespace tokens of different widths never pair, nor the tokens after them at other offsets
    # (the reference's rule stripped every marker: "Ġ" and "ĠĠ" were both "" and paired)
    pytest.param(["▁a", "▁▁", "▁b"], ["a", "Ġ", "ĠĠb"], [(0, 0)], id="whitespace-widths"),
    pytest.param(["▁x", "▁", "▁", "▁▁y"], ["x", "ĠĠ", "Ġ", "Ġy"], [(0, 0)], id="whitespace-run-offsets"),
    pytest.param(["▁a", "▁▁", "b"], ["a", "ĠĠ", "b"], [(0, 0), (1, 1), (2, 2)], id="whitespace-same-width"),
    pytest.param([], ["a"], [], id="empty"),
])
def test_eta_hand_written_cases(student, teacher, want):
    assert exact_token_alignment(student, teacher) == want


def test_eta_custom_eos_and_text_after_eos():
    assert exact_token_alignment(["▁a", "<eos_s>"], ["a", "<eos_t>"]) == [(0, 0)]
    assert exact_token_alignment(["▁a", "<eos_s>"], ["a", "<eos_t>"], eos={"<eos_s>", "<eos_t>"}) == [(0, 0), (1, 1)]
    # packed sequences: the EOS match keeps the accumulated texts equal, so the next sample aligns too
    assert exact_token_alignment(["▁a", "</s>", "▁b"], ["a", "<|endoftext|>", "b"]) == [(0, 0), (1, 1), (2, 2)]


_WORDS = st.lists(st.text(alphabet="abcde", min_size=1, max_size=6), min_size=1, max_size=8)


def _segment(words: list[str], marker: str, cuts: random.Random) -> list[str]:
    toks = []
    for k, w in enumerate(words):
        w = (marker if k else "") + w
        pieces, start = [], 0
        for pos in range(1, len(w)):
            if cuts.random() < 0.4 and w[pos - 1] != marker:
                pieces.append(w[start:pos])
                start = pos
        pieces.append(w[start:])
        toks.extend(pieces)
    return toks


@settings(max_examples=150, deadline=None)
@given(words=_WORDS, seed=st.integers(0, 1000))
def test_eta_properties(words, seed):
    rng = random.Random(seed)
    student = _segment(words, "▁", rng) + ["</s>"]
    teacher = _segment(words, "Ġ", rng) + ["<|endoftext|>"]
    pairs = exact_token_alignment(student, teacher)
    # strictly increasing on both sides
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(pairs, pairs[1:]))
    for i, j in pairs[:-1]:
        assert strip_markers(student[i]) == strip_markers(teacher[j])
        # same text consumed before the pair
        assert "".join(map(strip_markers, student[:i])) == "".join(map(strip_markers, teacher[:j]))
    # the EOS always aligns: both sides spell the same text
    assert pairs[-1] == (len(student) - 1, len(teacher) - 1)
    # identical segmentations (up to the marker) align everywhere
    same = [t.replace("Ġ", "▁") for t in teacher[:-1]] + ["</s>"]
    assert exact_token_alignment(same, teacher) == [(k, k) for k in range(len(teacher))]


# ------------------------------------------------------------------------------------------ offsets


def test_offsets_alignment_hand_written():
    # text "Hi café\nok": student "▁Hi|▁caf|é|\n|ok", teacher "Hi|Ġcaf|Ã|©|Ċ|ok" (two byte tokens share a span)
    student = [(0, 2), (2, 6), (6, 7), (7, 8), (8, 10)]
    teacher = [(0, 2), (2, 6), (6, 7), (6, 7), (7, 8), (8, 10)]
    assert offsets_alignment(student, teacher) == [(0, 0), (1, 1), (3, 4), (4, 5)]
    # the pieces of a character split into several tokens carry the character's span: never aligned, also not
    # with a whole token of the other side (GPT-2 "ĠâĢ"+"ľ" vs Qwen "ĠâĢľ" for " “")
    assert offsets_alignment([(0, 2), (1, 2), (2, 3)], [(0, 2), (2, 3)]) == [(2, 1)]
    assert offsets_alignment([(0, 1), (0, 1), (1, 2)], [(0, 1), (1, 2)]) == [(2, 1)]
    # empty spans (special tokens) never align; different spans never align
    assert offsets_alignment([(0, 2), (0, 0)], [(0, 2), (0, 0)]) == [(0, 0)]
    assert offsets_alignment([(0, 1), (1, 3)], [(0, 2), (2, 3)]) == []


# ------------------------------------------------------------------------------------------ DTW


def test_dtw_known_path():
    # costs: The/The 0, cat/cats 1, s/cats 3 → the student "s" joins the teacher "cats"
    assert dtw_align(["▁The", "▁cat", "s"], ["The", "Ġcats"]) == [(0, 0), (1, 1), (2, 1)]
    assert dtw_align(["a", "b", "c"], ["a", "b", "c"]) == [(0, 0), (1, 1), (2, 2)]
    assert dtw_align(["x"], ["x", "y", "z"]) == [(0, 0), (0, 1), (0, 2)]
    assert dtw_align(["ab", "cd", "ef"], ["abcd", "ef"]) == [(0, 0), (1, 0), (2, 1)]
    assert dtw_align([], ["a"]) == []


def test_dtw_lower_option():
    # case-sensitive costs ("THE" vs "the" = 3) and lower-cased costs have different unique optima
    a, b = ["▁the", "▁CATS", "▁THEM"], ["them", "ĠTHE", "Ġcat"]
    assert dtw_align(a, b) == [(0, 0), (1, 1), (2, 2)]  # total cost 9
    assert dtw_align(a, b, lower=True) == [(0, 0), (0, 1), (1, 2), (2, 2)]  # total cost 6


def _no_markers(x: str) -> str:  # the DTW cost removes every marker, as the reference's cost does
    return x.replace("Ġ", "").replace("▁", "")


def _brute_min_cost(a, b):
    c = [[Levenshtein.distance(_no_markers(x), _no_markers(y)) for y in b] for x in a]
    inf = float("inf")
    R = [[inf] * (len(b) + 1) for _ in range(len(a) + 1)]
    R[0][0] = 0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            R[i][j] = c[i - 1][j - 1] + min(R[i - 1][j - 1], R[i - 1][j], R[i][j - 1])
    return R[-1][-1], c


@settings(max_examples=100, deadline=None)
@given(a=st.lists(st.text(alphabet="ab▁", min_size=0, max_size=4), min_size=1, max_size=7),
       b=st.lists(st.text(alphabet="abĠ", min_size=0, max_size=4), min_size=1, max_size=7))
def test_dtw_path_is_valid_and_optimal(a, b):
    path = dtw_align(a, b)
    assert path[0] == (0, 0) and path[-1] == (len(a) - 1, len(b) - 1)
    for (i0, j0), (i1, j1) in zip(path, path[1:]):
        assert (i1 - i0, j1 - j0) in {(1, 0), (0, 1), (1, 1)}
    best, c = _brute_min_cost(a, b)
    assert sum(c[i][j] for i, j in path) == best


def test_one_to_one():
    path = [(0, 0), (1, 1), (1, 2), (2, 3), (3, 3)]
    assert one_to_one(path) == {0: 0, 2: 3, 3: 3}
    assert one_to_one(path, strict=True) == {0: 0}
    assert one_to_one([]) == {}


# ------------------------------------------------------------------------------------------ vocabulary maps


def test_vocab_map_exact_and_fallback():
    teacher = {"Ġworld": 0, "hello": 1, "Ġcats": 2, "<|endoftext|>": 3, "XYZ": 4, "▁raw": 5}
    student = {"<unk>": 0, "</s>": 1, "▁world": 2, "hello": 3, "▁cat": 4, "▁dog": 5, "xyz": 6, "▁raw": 7}
    t2s = build_vocab_map(teacher, student, rule="normalised", overrides={3: 1})
    assert t2s[0] == 2  # identical after Ġ → ▁
    assert t2s[1] == 3  # identical
    assert t2s[5] == 7  # identical as is
    assert t2s[2] == 4  # edit distance: "cats" → "cat" (1)
    assert t2s[4] == 6  # lower-cased: "xyz" at distance 0
    assert t2s[3] == 1  # override: teacher EOS → student EOS


def test_vocab_map_ties_go_to_lowest_student_id():
    # "ab" is at distance 1 from "ac", "ad", "ae": the lowest id (2) wins
    assert build_vocab_map({"ab": 0}, {"▁ac": 5, "▁ad": 2, "ae": 9}, rule="normalised") == [2]
    # two student tokens with the same normal form "ab" (distance 0): the lowest id wins
    assert build_vocab_map({"AB": 0}, {"▁Ab": 7, "ab": 3}, rule="normalised") == [3]
    # exact matches beat a lower id at distance 0 after normalisation
    assert build_vocab_map({"Ġab": 0}, {"ab": 1, "▁ab": 4}, rule="normalised") == [4]
    # the reference rule compares raw strings: "ab" is at distance 1 from "ae" only ("▁ac" is 2 away)
    assert build_vocab_map({"ab": 0}, {"▁ac": 5, "▁ad": 2, "ae": 9}) == [9]
    # ties (distance 2 to both) go to the lowest id
    assert build_vocab_map({"AB": 0}, {"▁Ab": 7, "ab": 3}) == [3]


def test_vocab_map_reference_rule():
    # FuseLLM's rule: the teacher token written with the student's marker, identical string, else the raw
    # Levenshtein distance (case and markers kept), ties to the lowest student id
    teacher = {"Ġworld": 0, "ĠThe": 1, "Ġcats": 2, "ĠĠ": 3, "Ċ": 4, "ĠHello": 5, "Ġx": 6}
    student = {"<unk>": 0, "▁world": 1, "▁the": 2, "▁The": 3, "▁cat": 4, "▁▁": 5, "\n": 6, "▁hello": 7, "Hello": 8}
    t2s = build_vocab_map(teacher, student)
    assert t2s[0] == 1  # "▁world" identical after Ġ → ▁
    assert t2s[1] == 3  # case kept: "▁The", not the lower id "▁the"
    assert t2s[2] == 4  # distance 1
    assert t2s[3] == 5  # every marker converted: "ĠĠ" → "▁▁"
    assert t2s[5] == 7  # "▁Hello": "▁hello" (1, id 7) and "Hello" (1, id 8) tie: the lowest id
    # the normalised rule folds the case and drops the leading marker: "ĠThe" → "the" → "▁the" (id 2)
    norm = build_vocab_map(teacher, student, rule="normalised")
    assert norm[1] == 3 and norm[5] == 7  # identical after the marker conversion wins first
    assert build_vocab_map({"ĠTHE": 0}, student, rule="normalised") == [2]
    with pytest.raises(ValueError, match="rule"):
        build_vocab_map(teacher, student, rule="lower")


def test_vocab_map_holes_and_errors():
    assert build_vocab_map({"a": 0, "b": 2}, {"a": 0, "b": 1}) == [0, -1, 1]
    with pytest.raises(ValueError):
        build_vocab_map({}, {"a": 0})


def _rand_vocab(rng: random.Random, n: int, prefix: str) -> dict[str, int]:
    vocab: dict[str, int] = {}
    while len(vocab) < n:
        w = "".join(rng.choice(string.ascii_letters[:8]) for _ in range(rng.randint(1, 8)))
        vocab.setdefault(rng.choice(["", prefix]) + w, len(vocab))
    return vocab


@pytest.mark.timeout(120)
@pytest.mark.parametrize("rule", ["reference", "normalised"])
def test_vocab_map_is_fast_and_matches_brute_force(rule):
    rng = random.Random(0)
    teacher, student = _rand_vocab(rng, 5000, "Ġ"), _rand_vocab(rng, 4000, "▁")
    t2s = build_vocab_map(teacher, student, rule=rule)  # 5k × 4k: well under a second with rapidfuzz
    assert len(t2s) == 5000 and all(0 <= s < 4000 for s in t2s)
    s_items = sorted(student.items(), key=lambda kv: kv[1])
    for tok, tid in rng.sample(sorted(teacher.items()), 150):
        if rule == "reference":  # brute force of FuseLLM's rule, first minimum in id order
            q = tok.replace("Ġ", "▁")
            want = student[q] if q in student else min(
                s_items, key=lambda kv: (Levenshtein.distance(q, kv[0]), kv[1]))[1]
        else:
            exact = student.get(tok.replace("Ġ", "▁"), student.get(tok))
            want = exact if exact is not None else min(
                s_items, key=lambda kv: (Levenshtein.distance(normalise_token(tok),
                                                              normalise_token(kv[0], byte_level=False)), kv[1]))[1]
        assert t2s[tid] == want, tok


def test_invert_vocab_map():
    t2s = [2, 3, 4, 4, 6, -1]
    assert invert_vocab_map(t2s, 7) == [-1, -1, 0, 1, 2, -1, 4]
    # the exact-string match is kept over a lower teacher id
    teacher, student = {"Ġcats": 0, "Ġcat": 1}, {"▁cat": 0, "▁dog": 1}
    t2s = build_vocab_map(teacher, student, rule="normalised")
    assert t2s == [0, 0]
    assert invert_vocab_map(t2s, 2) == [0, -1]
    assert invert_vocab_map(t2s, 2, teacher_vocab=teacher, student_vocab=student) == [1, -1]
    # without an exact match, the smaller edit distance, then the lower teacher id
    teacher, student = {"Ġcatsss": 0, "Ġcats": 1, "Ġcatz": 2}, {"▁cat": 0}
    assert invert_vocab_map(build_vocab_map(teacher, student, rule="normalised"), 1, teacher_vocab=teacher,
                            student_vocab=student) == [1]


# ------------------------------------------------------------------------------------------ real tokenizers


@pytest.fixture(scope="module")
def pair_tokenizers(tiny_pair):
    from dwakd.models import load_tokenizer

    return load_tokenizer(tiny_pair / "student_base"), load_tokenizer(tiny_pair / "teacher")


def _tokens(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], tok.convert_ids_to_tokens(enc["input_ids"]), enc["offset_mapping"]


def test_alignment_on_real_tokenisations(pair_tokenizers, dolly_small):
    stu, tea = pair_tokenizers
    outputs = [r["output"][0] for r in dolly_small[:40]]
    # ETA's string rule stops at the first newline / non-ASCII character between these two tokenizer styles
    # ("Ċ" vs "\n"), so its ratio is measured on plain single-line ASCII outputs
    plain = [o for o in outputs if "\n" not in o and o.isascii()][:10]
    assert len(plain) >= 5
    n_tok = n_eta = 0
    for o in outputs:
        s_ids, s_tok, s_off = _tokens(stu, o)
        t_ids, t_tok, t_off = _tokens(tea, o)
        s_tok, t_tok = s_tok + [stu.eos_token], t_tok + [tea.eos_token]
        eta = exact_token_alignment(s_tok, t_tok)
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(eta, eta[1:]))
        for i, j in eta:
            assert strip_markers(s_tok[i]) == strip_markers(t_tok[j]) or (i, j) == (len(s_tok) - 1, len(t_tok) - 1)
        off = offsets_alignment(s_off, t_off)
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(off, off[1:]))
        # every ETA pair (EOS aside) is also an offsets pair, and offsets align at least as many
        assert {p for p in eta if p != (len(s_tok) - 1, len(t_tok) - 1)} <= set(off)
        assert len(off) >= len(eta) - 1
        if o in plain:
            n_tok += len(s_tok)
            n_eta += len(eta)
            assert eta[-1] == (len(s_tok) - 1, len(t_tok) - 1)
    assert n_eta / n_tok > 0.5


def test_mined_on_real_tokenisations(pair_tokenizers, dolly_small):
    stu, tea = pair_tokenizers
    t2s = build_vocab_map(tea.get_vocab(), stu.get_vocab())
    assert len(t2s) == len(tea) and all(0 <= s < len(stu) for s in t2s)
    s2t = invert_vocab_map(t2s, len(stu), teacher_vocab=tea.get_vocab(), student_vocab=stu.get_vocab())
    assert all(t2s[t] == s for s, t in enumerate(s2t) if t >= 0)
    n = kept = 0
    for r in dolly_small[:10]:
        s_ids, s_tok, _ = _tokens(stu, r["output"][0])
        t_ids, t_tok, _ = _tokens(tea, r["output"][0])
        path = dtw_align(s_tok, t_tok)
        assert path[0] == (0, 0) and path[-1] == (len(s_tok) - 1, len(t_tok) - 1)
        matched = one_to_one(path)
        kept += sum(t2s[t_ids[j]] == s_ids[i] for i, j in matched.items())
        n += len(s_ids)
    # MinED step 3: most student positions take the teacher distribution
    assert kept / n > 0.5
