"""Benchmark: MinED's vocabulary map of the real published pairs (``build_vocab_map``), time and memory.

Needs the real tokenizers (``python -m dwakd.realtok fetch``). Builds Qwen1.5 → GPT-2 (151,646 × 50,257) and
Mistral → TinyLlama (32,000 × 32,000) with each rule in a child process of its own, and reports the wall time,
the child's peak RSS beyond the tokenizers it loaded, and the agreement with the reference rule (the authors'
maps, which the reference rule reproduces exactly: ``tests/test_realtok.py``).

    python benchmarks/vocab_map_real.py                    # both pairs, both rules, all cores
    python benchmarks/vocab_map_real.py --pairs qwen1.5:gpt2 --rules reference --workers 2

Prints one JSON line. Not a test: times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _child(teacher: str, student: str, rule: str, workers: int, queue) -> None:
    from dwakd import realtok
    from dwakd.align.tokens import build_vocab_map

    tv, sv = realtok.load(teacher).get_vocab(), realtok.load(student).get_vocab()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    t2s = build_vocab_map(tv, sv, rule=rule, workers=workers)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 1024), "extra_rss_mb": round((peak - before)
                                                                                                         / 1024),
               "t2s": t2s})


def run(teacher: str, student: str, rule: str, workers: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(teacher, student, rule, workers, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=["qwen1.5:gpt2", "mistral:llama2"], help="teacher:student")
    ap.add_argument("--rules", nargs="+", default=["reference", "normalised"])
    ap.add_argument("--workers", type=int, default=-1, help="processes for cdist (-1: all cores, as the suite)")
    args = ap.parse_args(argv)
    from dwakd import realtok

    if not realtok.available():
        sys.exit(f"no real tokenizers in {realtok.cache_dir()}: run `python -m dwakd.realtok fetch`")
    rows = []
    for pair in args.pairs:
        teacher, student = pair.split(":")
        ref = None
        for rule in args.rules:
            r = run(teacher, student, rule, args.workers)
            t2s = r.pop("t2s")
            if rule == "reference":
                ref = t2s
            r.update(pair=f"{teacher}->{student}", rule=rule, entries=len(t2s))
            if ref is not None:
                r["agree_with_reference_pct"] = round(100 * sum(a == b for a, b in zip(t2s, ref)) / len(ref), 2)
            rows.append(r)
    print(json.dumps({"cpu_count": os.cpu_count(), "workers": args.workers, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
