"""Benchmark: MinED's teacher → student vocabulary map (``dwakd.align.tokens.build_vocab_map``) at LLM scale.

Builds two synthetic BPE-like vocabularies, a byte-level one with ``Ġ`` space markers for the teacher
(150k entries by default, Qwen-sized) and a SentencePiece-style one with ``▁`` markers for the student (50k,
GPT-2-sized), from the same letter distribution; a fraction of the student's tokens (``--shared``, 0.6) is
also in the teacher's vocabulary, so about 120k teacher tokens need the edit-distance search. Times the
implementation the suite uses (its ``"normalised"`` rule; the real vocabularies and the default ``"reference"``
rule are timed by ``benchmarks/vocab_map_real.py``) (rapidfuzz ``cdist`` over the distinct normalised strings, all cores) and, on
a sample of the unmatched teacher tokens, the brute-force loop of FuseLLM (one Levenshtein call per
teacher × student pair from Python), extrapolated to the whole vocabulary.
The sample is also a correctness check: both must choose the same student ids.

    python benchmarks/vocab_map.py                          # 150k × 50k
    python benchmarks/vocab_map.py --teacher 20000 --student 8000 --workers 2 --repeat 3

Prints one JSON line. Not a test: times depend on the machine; nothing is asserted but equality.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rapidfuzz.distance import Levenshtein  # noqa: E402

from dwakd.align.tokens import _exact_student_id, build_vocab_map, normalise_token  # noqa: E402

# English-like letter frequencies (per mille), so that short strings repeat and long ones rarely do
LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
WEIGHTS = [127, 91, 82, 75, 70, 67, 63, 61, 60, 43, 40, 28, 28, 24, 24, 22, 20, 20, 19, 15, 10, 8, 2, 2, 1, 1]
EXTRA = string.digits + string.punctuation


def synthetic_vocab(n: int, marker: str, rng: random.Random, specials: list[str],
                    shared: list[str] = ()) -> dict[str, int]:
    """``n`` distinct BPE-like token strings → ids: specials first, then the printable ASCII characters and
    the marked letters, then ``shared`` (tokens of the other vocabulary), then random pieces of 2–14
    characters (about 60% with the space marker, 10% capitalised, 3% with a digit or punctuation)."""
    vocab: dict[str, int] = {}
    for tok in specials + [chr(c) for c in range(33, 127)] + [marker + chr(c) for c in range(97, 123)] + list(shared):
        if len(vocab) >= n:
            break
        vocab.setdefault(tok, len(vocab))
    while len(vocab) < n:
        k = min(14, max(2, int(rng.expovariate(1 / 5.0)) + 2))
        s = "".join(rng.choices(LETTERS, WEIGHTS, k=k))
        if rng.random() < 0.10:
            s = s.capitalize()
        if rng.random() < 0.03:
            i = rng.randrange(len(s) + 1)
            s = s[:i] + rng.choice(EXTRA) + s[i:]
        if rng.random() < 0.60:
            s = marker + s
        vocab.setdefault(s, len(vocab))
    return vocab


def brute_force(teacher_tokens: list[str], student_vocab: dict[str, int]) -> list[int]:
    """FuseLLM-style: for each teacher token, the student id of minimum distance (ties: lowest id)."""
    students = sorted(student_vocab.items(), key=lambda kv: kv[1])
    norm = [(normalise_token(s), i) for s, i in students]
    out = []
    for t in teacher_tokens:
        q = normalise_token(t)
        best, best_id = None, -1
        for s, i in norm:
            d = Levenshtein.distance(q, s)
            if best is None or d < best:
                best, best_id = d, i
        out.append(best_id)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=int, default=150_000, help="teacher vocabulary size")
    ap.add_argument("--student", type=int, default=50_000, help="student vocabulary size")
    ap.add_argument("--workers", type=int, default=-1, help="processes for cdist (-1: all cores, as the suite)")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions (the minimum is reported)")
    ap.add_argument("--brute-sample", type=int, default=100, help="unmatched teacher tokens timed brute force")
    ap.add_argument("--shared", type=float, default=0.6,
                    help="fraction of the student's tokens the teacher also has (marker converted)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    sv = synthetic_vocab(args.student, "▁", rng, ["<unk>", "<s>", "</s>"])
    pieces = [t.replace("▁", "Ġ") for t in list(sv)[3:]]
    shared = rng.sample(pieces, int(args.shared * len(pieces)))
    tv = synthetic_vocab(args.teacher, "Ġ", rng, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], shared)
    t_make = time.perf_counter() - t0
    unmatched = [t for t in tv if _exact_student_id(t, sv) is None]
    distinct = len({normalise_token(t) for t in unmatched})
    choices = len({normalise_token(s) for s in sv})

    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        t2s = build_vocab_map(tv, sv, rule="normalised", workers=args.workers)
        times.append(time.perf_counter() - t0)

    sample = rng.sample(unmatched, min(args.brute_sample, len(unmatched)))
    t0 = time.perf_counter()
    ref = brute_force(sample, sv)
    t_brute = time.perf_counter() - t0
    agree = all(t2s[tv[t]] == r for t, r in zip(sample, ref))
    brute_full = t_brute / max(len(sample), 1) * len(unmatched)

    print(json.dumps({
        "teacher_vocab": len(tv), "student_vocab": len(sv), "shared": args.shared,
        "exact_matches": len(tv) - len(unmatched), "unmatched": len(unmatched), "distinct_queries": distinct,
        "distinct_choices": choices,
        "workers": args.workers, "cpu_count": os.cpu_count(), "make_vocabs_s": round(t_make, 2),
        "build_vocab_map_s": round(min(times), 2), "all_runs_s": [round(t, 2) for t in times],
        "brute_force_sample": len(sample), "brute_force_sample_s": round(t_brute, 2),
        "brute_force_extrapolated_s": round(brute_full, 1),
        "speedup_vs_brute_force": round(brute_full / min(times), 1), "sample_agrees": agree,
    }))
    if not agree:
        sys.exit("build_vocab_map and the brute-force loop disagree on the sample")


if __name__ == "__main__":
    main()
