"""Benchmark: Soft-DTW forward + backward, ours (`dwakd.losses.softdtw.soft_dtw`) against pysdtw and tslearn.

Every implementation gets the same input: per size ``BxNxMxd``, seeded random features ``x [B, N, d]``,
``y [B, M, d]`` (fp32) and their cosine cost ``1 − cos`` ``[B, N, M]`` (fp32), built once; each timed step is
the Soft-DTW value of that cost and its gradient w.r.t. the cost (``value.sum().backward()`` on a fresh leaf).

* ours: ``soft_dtw(cost, len_x, len_y, γ)`` (fp32, batched, anti-diagonal PyTorch loop).
* pysdtw: its CPU ``SoftDTWcpu`` autograd function on the same cost (numba, float64 per-cell loops, batch in
  parallel; R handed back as fp32).
* tslearn: its batched ``SoftDTWLossPyTorch`` (numba, per-sample loops in parallel) with a ``dist_func`` that
  returns the same cost. No lengths argument: all samples are full length here.

Timing is round-robin over the implementations (one step of each per round, ``--repeat`` rounds after one
warm-up, which also compiles numba), threads pinned (``--threads``: torch and numba); the minimum is reported,
and ratios are to ours. tslearn's rounds can be capped (``--tslearn-repeat``) when it is slow.
Errors: value (max relative over the batch) and gradient (max over samples of ‖g − g_ref‖ / ‖g_ref‖) against a
float64 reference, which is OUR float64 path on the same cost (it matches a per-cell float64 autograd loop to
1e-10 in tests/test_softdtw.py). Peak memory (CPU): peak RSS of a child process that builds the inputs and
takes one step with one implementation, minus that of a child that builds the inputs and takes a tiny step
with it (imports, numba compilation and inputs excluded), read with ``os.wait4``; the children are started
before this process allocates anything large (Linux children start from the parent's peak RSS).

    python benchmarks/softdtw.py                          # 8x256x300x64 and 8x1024x1024x64, 2 threads
    python benchmarks/softdtw.py --threads 1 --repeat 3 --gamma 1.0 --out results/benchmarks/softdtw.json

Prints a Markdown table and writes JSON with ``--out``. A package that cannot be imported or fails is reported
in the table, not raised. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

IMPLS = ("ours", "pysdtw", "tslearn")
DEFAULT_SIZES = ("8x256x300x64", "8x1024x1024x64")


def parse_size(s: str) -> tuple[int, int, int, int]:
    b, n, m, d = (int(v) for v in s.lower().split("x"))
    return b, n, m, d


def make_cost(size: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """The shared input: fp32 cosine cost of seeded random features."""
    from dwakd.losses.softdtw import cosine_cost

    b, n, m, d = size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    y = torch.randn(b, m, d, generator=g)
    return cosine_cost(x, y).detach().contiguous()


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except Exception:  # noqa: BLE001 - numba is optional here
        pass


def make_step(impl: str, gamma: float):
    """``step(cost) -> (values [B], grad [B, N, M])`` for one implementation (imports happen here)."""
    if impl == "ours":
        from dwakd.losses.softdtw import soft_dtw

        def run(c):
            b, n, m = c.shape
            return soft_dtw(c, torch.full((b,), n), torch.full((b,), m), gamma)
    elif impl == "pysdtw":
        from pysdtw.sdtw_cpu import SoftDTWcpu

        def run(c):
            b, n, m = c.shape
            lengths = torch.tensor([[n, m]] * b)
            return SoftDTWcpu.apply(c, lengths, gamma, 0.0)
    elif impl == "tslearn":
        from tslearn.metrics import SoftDTWLossPyTorch

        def run(c):
            b, n, m = c.shape
            loss = SoftDTWLossPyTorch(gamma=gamma, dist_func=lambda _x, _y: c * 1.0)
            return loss(torch.zeros(b, n, 1), torch.zeros(b, m, 1))
    else:
        raise ValueError(impl)

    def step(cost: torch.Tensor):
        c = cost.detach().clone().requires_grad_(True)
        v = run(c)
        v.sum().backward()
        return v.detach(), c.grad

    return step


def child_peak_rss_mb(argv: list[str]) -> float:
    """Peak resident set size (MiB) of a child process running this script with ``argv``."""
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    if status != 0:
        raise RuntimeError(f"memory child {argv} failed: {err.splitlines()[-1] if err else status}")
    return usage.ru_maxrss / 1024


def child_main(impl: str, size: str, gamma: float, threads: int, full: bool) -> int:
    set_threads(threads)
    step = make_step(impl, gamma)
    b, n, m, d = parse_size(size)
    step(make_cost((1, 4, 5, d)))  # imports, numba compilation
    cost = make_cost((b, n, m, d))
    if full:
        step(cost)
    return 0


def rel_err(v, g, ref_v, ref_g) -> tuple[float, float]:
    v, g = v.double(), g.double()
    ve = float(((v - ref_v).abs() / ref_v.abs().clamp_min(1e-30)).max())
    ge = max(float((g[s] - ref_g[s]).norm() / ref_g[s].norm().clamp_min(1e-30)) for s in range(g.shape[0]))
    return ve, ge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="*", default=list(DEFAULT_SIZES), help="BxNxMxd (default: %(default)s)")
    ap.add_argument("--impls", nargs="*", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tslearn-repeat", type=int, default=None, help="cap tslearn's rounds (default: --repeat)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory children")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)  # impl size full|base
    args = ap.parse_args(argv)

    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    if args.child:
        impl, size, mode = args.child
        return child_main(impl, size, args.gamma, args.threads, mode == "full")

    set_threads(args.threads)
    sizes = [parse_size(s) for s in args.sizes]
    notes: dict[str, str] = {}

    # memory children first, before this process grows
    mem: dict[tuple[str, str], float | None] = {}
    if not args.no_memory:
        common = [f"--gamma={args.gamma}", f"--threads={args.threads}"]
        for s in args.sizes:
            for impl in args.impls:
                try:
                    base = child_peak_rss_mb([*common, "--child", impl, s, "base"])
                    full = child_peak_rss_mb([*common, "--child", impl, s, "full"])
                    mem[(impl, s)] = max(full - base, 0.0)
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    mem[(impl, s)] = None
                    notes.setdefault(impl, f"memory child failed: {exc}")

    steps = {}
    for impl in args.impls:
        try:
            steps[impl] = make_step(impl, args.gamma)
            steps[impl](make_cost((1, 4, 5, 8)))  # imports + numba compilation outside the timings
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            notes[impl] = f"unavailable: {type(exc).__name__}: {exc}"
    ref_step = make_step("ours", args.gamma)

    rows = []
    for size, s in zip(sizes, args.sizes):
        cost = make_cost(size)
        ref_v, ref_g = ref_step(cost.double())
        times: dict[str, list[float]] = {i: [] for i in steps}
        errs: dict[str, tuple[float, float]] = {}
        failed: dict[str, str] = {}
        cap = {i: args.repeat for i in steps}
        if "tslearn" in cap and args.tslearn_repeat is not None:
            cap["tslearn"] = max(1, min(args.repeat, args.tslearn_repeat))
        for rnd in range(args.repeat + 1):  # round 0: warm-up (and the error check)
            for impl, step in steps.items():
                if impl in failed or rnd > cap[impl]:
                    continue
                try:
                    t0 = time.perf_counter()
                    v, g = step(cost)
                    dt = time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    failed[impl] = f"failed: {type(exc).__name__}: {exc}"
                    continue
                if rnd == 0:
                    errs[impl] = rel_err(v, g, ref_v, ref_g)
                else:
                    times[impl].append(dt)
        best_ours = min(times["ours"]) if times.get("ours") else None
        for impl in args.impls:
            t = times.get(impl) or []
            m = mem.get((impl, s))
            mo = mem.get(("ours", s))
            note = failed.get(impl) or (notes.get(impl) if impl not in steps else "")
            if impl == "tslearn" and impl in steps and cap["tslearn"] < args.repeat:
                note = f"{cap['tslearn']} round(s) only (--tslearn-repeat)"
            rows.append({
                "size": s, "impl": impl,
                "time_s": round(min(t), 4) if t else None,
                "vs_ours": round(min(t) / best_ours, 2) if t and best_ours else None,
                "rounds": len(t), "all_s": [round(x, 4) for x in t],
                "peak_mem_mb": None if m is None else round(m, 1),
                "mem_vs_ours": round(m / mo, 2) if m is not None and mo else None,
                "value_rel_err": errs[impl][0] if impl in errs else None,
                "grad_rel_err": errs[impl][1] if impl in errs else None,
                "note": note or "",
            })
        del cost, ref_v, ref_g

    meta = {"gamma": args.gamma, "threads": args.threads, "repeat": args.repeat,
            "tslearn_repeat": args.tslearn_repeat, "reference": "ours, float64, same fp32 cost",
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "notes": notes}
    for pkg in ("pysdtw", "tslearn", "numba"):
        try:
            from importlib.metadata import version

            meta[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            meta[pkg] = None
    print(f"Soft-DTW forward+backward, γ={args.gamma}, {args.threads} thread(s), min of {args.repeat} "
          "(errors vs our float64 path)\n")
    print("| B×N×M (d) | impl | fwd+bwd (s) | × ours | peak mem (MiB) | × ours | value rel. err | grad rel. err "
          "| note |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    fmt = lambda x, f: "" if x is None else format(x, f)  # noqa: E731
    for r in rows:
        b, n, m, d = parse_size(r["size"])
        print(f"| {b}×{n}×{m} ({d}) | {r['impl']} | {fmt(r['time_s'], '.3f')} | {fmt(r['vs_ours'], '.2f')} | "
              f"{fmt(r['peak_mem_mb'], '.0f')} | {fmt(r['mem_vs_ours'], '.2f')} | {fmt(r['value_rel_err'], '.1e')} | "
              f"{fmt(r['grad_rel_err'], '.1e')} | {r['note']} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
