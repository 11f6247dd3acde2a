"""Benchmark: the token alignments that MinED and DSKD-ETA cache with the data, computed per batch against read
from the cache (issue 18).

Their pairs depend on the tokens only (``Method.token_pairs``), so the training loop computes them once when it
encodes the data and each batch carries them (``batch["pairs"]``); before that, ``aligned_tensors`` aligned every
batch at every step (MinED: DTW over the token strings in Python). For each run and each batch shape this times
``aligned_tensors`` on the batch without its cached pairs and with them (min of ``--repeat``, threads pinned) and
checks that both give the same pairs. The batches: the profile's training batch (the first ``--batch`` Dolly
training records) and ``paper_shapes``' 4 × 512 batch (long responses: every sample fills ``max_len``).

    python benchmarks/alignment_cache.py                    # the shipped mini pair, mined and dskd_eta
    python benchmarks/alignment_cache.py --profile tiny --models results/tiny/tiny/models

The whole step with and without the cache: ``python benchmarks/step_time.py --runs mined dskd_eta --uncached-pairs``.
Prints a Markdown table and writes JSON with ``--out``. Not a test: nothing is asserted but the pairs' equality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from dwakd import config as C  # noqa: E402
from dwakd.align.responses import aligned_tensors  # noqa: E402
from dwakd.data import SHIPPED_DATA, load_jsonl  # noqa: E402

import paper_shapes  # noqa: E402
from step_time import Bench, models_dir  # noqa: E402


def best_time(fn, repeat: int) -> tuple[float, object]:
    """(minimum seconds over ``repeat`` calls, the last result)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=None, help="profile whose pair and training settings are used")
    ap.add_argument("--models", default=None, help="folder with teacher/ and student_base/ (or student/)")
    ap.add_argument("--runs", nargs="*", default=["mined", "dskd_eta"])
    ap.add_argument("--batch", type=int, default=16, help="training records in the profile's batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = C.load(None, {"profile": args.profile} if args.profile else {})
    root = models_dir(cfg, args.models)
    batches = {f"{args.batch} Dolly training records":
               load_jsonl(SHIPPED_DATA / cfg["datasets"]["dolly_train"]["file"])[: args.batch],
               "4 × 512 (paper_shapes)": paper_shapes.records(4, 512)}
    rows = []
    for shape, records in batches.items():
        for run in args.runs:
            b = Bench(cfg, run, root, records, torch.device("cpu"))
            if "pairs" not in b.batch:
                raise SystemExit(f"--runs: {run!r} caches no token alignments (its method has no token_pairs)")
            align = b.trainer.method.align
            uncached = {k: v for k, v in b.batch.items() if k != "pairs"}
            t_step, got = best_time(lambda: aligned_tensors(uncached, align, "cpu"), args.repeat)
            t_cache, want = best_time(lambda: aligned_tensors(b.batch, align, "cpu"), args.repeat)
            if not all(torch.equal(x, y) for x, y in zip(got, want)):
                raise SystemExit(f"{run}: the cached pairs differ from the pairs computed from the batch")
            rows.append({"batch": shape, "run": run, "student_tokens": int(b.batch["student"]["attention_mask"].sum()),
                         "pairs": int(want[0].numel()), "per_step_ms": round(1e3 * t_step, 3),
                         "cached_ms": round(1e3 * t_cache, 3)})
    print(f"| batch | run | student tokens | aligned pairs | aligned per step (ms, min of {args.repeat}) | "
          "read from the cache (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['run']} | {r['student_tokens']} | {r['pairs']} | {r['per_step_ms']:.1f} | "
              f"{r['cached_ms']:.2f} |")
    if args.out:
        meta = {"profile": cfg["profile"], "models": str(root), "threads": args.threads, "repeat": args.repeat,
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
