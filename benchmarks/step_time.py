"""Benchmark: time and peak memory of one training step of every configured run, as ratios to SFT.

Every run gets the same pair (the profile's: the shipped mini pair by default), the same batch (the first
``--batch`` Dolly training records, encoded as the training loop encodes them) and the same optimiser step
(forward of each model, the method's loss, backward, clipping, AdamW). Timing is round-robin over the runs
(one step of each run per round, ``--repeat`` rounds after ``--warmup``), so that a change in the machine's
load hits every run alike; the minimum over the rounds is reported. Peak memory: on CUDA the peak allocated
memory of a step (``torch.cuda.max_memory_allocated`` after a reset); on CPU the peak resident set size of a
child process that loads the pair and takes two steps of that run alone (``os.wait4``), minus that of a
child that only loads the student (so the figure is the teacher's weights, if any, plus the step's memory).
A run that trains on-policy (``train.on_policy_ratio`` > 0) takes the step of an on-policy micro-batch: the
student samples responses to the batch's prompts (seed 0; the run's sampling settings), the CE reads the batch,
the KD part the samples; the time includes the sampling. ``--uncached-pairs`` also times every run whose method
caches its token alignments with the data (``Method.token_pairs``: MinED, DSKD-ETA) as a second row
``<run>:per_step_pairs`` whose batch lacks them, so that the alignment is computed at every step as it was before
the cache (issue 18).

    python benchmarks/step_time.py                       # every run in config `runs:`, 2 threads
    python benchmarks/step_time.py --runs sft dskd_cma --threads 1 --repeat 5
    python benchmarks/step_time.py --runs mined dskd_eta --uncached-pairs --no-memory   # the alignment cache
    python benchmarks/step_time.py --profile tiny --models results/tiny/tiny/models   # any prepared pair

Prints a Markdown table and writes JSON with ``--out``. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dwakd import config as C  # noqa: E402
from dwakd.data import ASSETS, SHIPPED_DATA, load_jsonl  # noqa: E402
from dwakd.models import load_model, load_tokenizer  # noqa: E402
from dwakd.train import Trainer  # noqa: E402


def models_dir(cfg: dict, given: str | None) -> Path:
    """The pair's folder: ``--models`` or the shipped pair of the profile (``teacher/``, ``student/``)."""
    if given:
        return Path(given)
    shipped = C.pair(cfg).get("shipped")
    if not shipped:
        raise SystemExit(f"--models: profile {cfg['profile']!r} ships no pair; point --models at a built pair")
    return ASSETS / shipped


def _paths(root: Path) -> tuple[Path, Path]:
    student = root / "student_base" if (root / "student_base").exists() else root / "student"
    return root / "teacher", student


class Bench:
    """One run's method, models, optimiser and fixed batch, ready to take steps."""

    def __init__(self, cfg: dict, run: str, root: Path, records: list[dict], device: torch.device):
        from dwakd.run import build_run

        r = build_run(cfg, run)
        cls, mcfg, tcfg = r.method, r.method_config, r.train_config
        tpath, spath = _paths(root)
        self.student = load_model(spath).to(device)
        stok = load_tokenizer(spath)
        self.teacher = ttok = None
        if cls.needs_teacher:
            self.teacher = load_model(tpath).to(device).requires_grad_(False)
            ttok = load_tokenizer(tpath)
        method = cls(mcfg, self.student, self.teacher, stok, ttok).to(device)
        self.trainer = Trainer(method, self.student, self.teacher, stok, ttok, tcfg, Path("unused"))
        self.items = self.trainer.make_items(records)
        self.batch = self.trainer.batch(self.items)
        self.on_policy = tcfg.on_policy_ratio > 0
        self.denom = max(int((self.batch["student"]["labels"][:, 1:] != -100).sum()), 1)
        params = [p for p in self.student.parameters() if p.requires_grad]
        params += [p for p in method.parameters() if p.requires_grad]
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=tcfg.lr)
        self.max_grad_norm = tcfg.max_grad_norm
        self.device = device
        self.student.train()

    def step(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batch = self.batch
        if self.on_policy:  # every step an on-policy micro-batch (dwakd.train.Trainer.kd_batches, one micro-batch)
            kd, n_kd = self.trainer.sample_batch(self.items, seed=0)
            batch = {"gold": self.batch, "kd": kd, "kd_scale": self.denom / max(n_kd, 1)}
        loss, _ = self.trainer.micro_step(batch)
        (loss / self.denom).backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def child_peak_rss_mb(argv: list[str]) -> float:
    """Peak resident set size (MiB) of a child process running this script with ``argv``."""
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"memory child {argv} failed with status {status}")
    return usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", help="config file(s); default config/config.yaml")
    ap.add_argument("--set", action="append", default=[], help="KEY.PATH=VALUE override")
    ap.add_argument("--profile", default=None, help="profile whose pair and training settings are used")
    ap.add_argument("--models", default=None, help="folder with teacher/ and student_base/ (or student/)")
    ap.add_argument("--runs", nargs="*", default=None, help="runs of config `runs:` (default: all)")
    ap.add_argument("--batch", type=int, default=16, help="training records in the batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true", help="skip the CPU memory children")
    ap.add_argument("--uncached-pairs", action="store_true", help="also time each run that caches its token "
                    "alignments with them computed at every step (row <run>:per_step_pairs)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # child mode: "" = load only
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    over = C.parse_set(args.set)
    if args.profile:
        over = C.deep_merge(over, {"profile": args.profile})
    cfg = C.load(args.config or None, over)
    root = models_dir(cfg, args.models)
    records = load_jsonl(SHIPPED_DATA / cfg["datasets"]["dolly_train"]["file"])[: args.batch]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = args.runs or [r for r in cfg["runs"] if r != "seqkd"]  # SeqKD's step is SFT's

    if args.memory_of is not None:  # child: load (and step) one run, then exit
        if args.memory_of:
            b = Bench(cfg, args.memory_of, root, records, device)
            b.step()
            b.step()
        else:
            Bench(cfg, "sft", root, records, device)
        return 0

    if "sft" not in runs:
        runs = ["sft", *runs]
    # before this process grows: Linux children start from the parent's maximum resident set size
    mem: dict[str, float | None] = {}
    if device.type == "cpu" and not args.no_memory:
        common = [f"--threads={args.threads}", f"--batch={args.batch}"]
        common += [f"--config={c}" for c in (args.config or [])] + [f"--set={s}" for s in args.set]
        common += [f"--profile={args.profile}"] if args.profile else []
        common += [f"--models={args.models}"] if args.models else []
        load_only = child_peak_rss_mb([*common, "--memory-of="])
        for r in runs:
            mem[r] = child_peak_rss_mb([*common, f"--memory-of={r}"]) - load_only

    benches = {r: Bench(cfg, r, root, records, device) for r in runs}
    if args.uncached_pairs:
        for r in runs:
            if "pairs" in benches[r].batch:
                b = Bench(cfg, r, root, records, device)
                del b.batch["pairs"]  # aligned_tensors then aligns the tokens at every step
                benches[f"{r}:per_step_pairs"] = b
    n_tokens = int(benches["sft"].batch["student"]["attention_mask"].sum())
    times: dict[str, list[float]] = {r: [] for r in benches}
    for i in range(args.warmup + args.repeat):
        for r, b in benches.items():
            dt = b.step()
            if i >= args.warmup:
                times[r].append(dt)
    for r, b in benches.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            b.step()
            mem[r] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    del benches
    best = {r: min(v) for r, v in times.items()}
    rows = [{"run": r, "method": cfg["runs"][r.split(":")[0]]["method"], "step_s": round(best[r], 4),
             "vs_sft": round(best[r] / best["sft"], 2), "peak_mem_mb": None if mem.get(r) is None else round(mem[r], 1),
             "mem_vs_sft": None if not mem.get("sft") or mem.get(r) is None else round(mem[r] / mem["sft"], 2),
             "all_s": [round(t, 4) for t in v]} for r, v in times.items()]
    meta = {"profile": cfg["profile"], "models": str(root), "device": str(device), "threads": args.threads,
            "batch_records": args.batch, "student_tokens_per_batch": n_tokens, "repeat": args.repeat,
            "warmup": args.warmup, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(f"| run | step (s, min of {args.repeat}) | × SFT | step memory (MiB) | × SFT |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        m = "" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.0f}"
        mr = "" if row["mem_vs_sft"] is None else f"{row['mem_vs_sft']:.2f}"
        print(f"| {row['run']} | {row['step_s']:.3f} | {row['vs_sft']:.2f} | {m} | {mr} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
