"""Benchmark: one training step of every method at the published pair's shapes, with random weights.

The pair is Qwen1.5-1.8B → GPT-2 120M (DWA-KD's Table 1 / Table 7 pair): both models are built from their
published configurations (written out below, nothing is downloaded; random weights) — teacher vocabulary
151,936, hidden 2,048, 24 layers; student vocabulary 50,257, hidden 768, 12 layers, 1,024 positions. The batch is
4 × 512 tokens on each side, made of shipped Dolly records (prompt, then responses of the following records as one
long response, cut at ``--seq``) tokenised by the shipped mini pair's tokenizers (6,000 and 8,192 tokens) — small token ids, which
exercises the same shapes (the losses read every vocabulary entry whatever the ids) and gives MinED and DSKD-ETA
real token strings to align. The step runs through the suite's own code: ``Trainer.make_items`` / ``batch`` /
``forward`` (the teacher under ``no_grad``, asking for its response rows when the method reads only those) and
``method.loss`` plus backward, under the loop's autocast (bf16 on CUDA).

Each method runs in its own child process (``--child``). Memory: on CPU the peak resident set size (``VmHWM``,
reset through ``/proc/self/clear_refs`` before each phase) above the resident size once the models, the method and
the batch are loaded, with glibc told to map every allocation of ``--mmap-threshold`` bytes or more on its own
(``MALLOC_MMAP_THRESHOLD_``), so that a freed tensor leaves the resident set at once and the peak follows the live
tensors, as CUDA's counter does (glibc's default keeps freed blocks of up to 32 MiB for reuse: on this benchmark
about 0.4–1 GiB more at the peak, more for the methods that work in many blocks); on CUDA
``torch.cuda.max_memory_allocated`` above the allocated memory at that point.
Reported: the step's peak above the loaded models (forward, loss, backward) and the loss side's peak (loss +
backward) above the memory held after the forward passes; time: loss + backward (min over ``--repeat``), forward
excluded. Ratios are to DSKD-CMA. ``--code DIR`` imports ``dwakd`` and ``baselines`` from another checkout (e.g.
the commit before a change) so that before and after run with the same script on the same machine.

    python benchmarks/paper_shapes.py                                   # all methods, full shapes (CPU: ~20 GB)
    python benchmarks/paper_shapes.py --methods dskd_cma dwakd --teacher-layers 2
    python benchmarks/paper_shapes.py --grad-ckpt                        # the paper profile's student setting
    python benchmarks/paper_shapes.py --small                            # tiny shapes: seconds (tests)

Prints a Markdown table and writes JSON with ``--out``. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sft", "mined", "uld", "multilevel_ot", "dskd_eta", "dskd_cma", "cma_ga", "dwakd")

#: the published configurations (Hugging Face config.json of Qwen/Qwen1.5-1.8B and openai-community/gpt2)
TEACHER = dict(model_type="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
               num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=32768, rms_norm_eps=1e-6,
               rope_theta=1000000.0, tie_word_embeddings=False, hidden_act="silu")
STUDENT = dict(model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024,
               n_inner=None, activation_function="gelu_new", tie_word_embeddings=True)
#: ``--small``: the same architectures at toy sizes (vocabularies still much larger than the mini tokenizers')
SMALL_TEACHER = dict(vocab_size=12000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4)
SMALL_STUDENT = dict(vocab_size=8000, n_embd=48, n_layer=2, n_head=4)


def _mem_cpu() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            vals[k] = int(v.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


def _reset_peak_cpu() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: VmHWM := VmRSS


def records(n: int, seq: int) -> list[dict]:
    """``n`` Dolly records whose response (the responses of the following records, joined) is longer than ``seq``
    tokens of either tokenizer, so that every sample fills the batch to ``seq``."""
    from dwakd.data import SHIPPED_DATA, load_jsonl

    data = load_jsonl(SHIPPED_DATA / "dolly_train.jsonl.gz")[: n * 60]
    out = []
    for i in range(n):
        parts, k = [], i * 50 + 1
        while sum(len(p) for p in parts) < 8 * seq:  # characters: > 2 per token of the mini tokenizers
            parts.append(data[k % len(data)]["output"][0])
            k += 1
        out.append({"prompt": data[i * 50]["prompt"], "output": ["\n".join(parts)]})
    return out


def build_models(small: bool, teacher_layers: int | None, student_layers: int | None, dtype):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    t_kw, s_kw = dict(TEACHER), dict(STUDENT)
    if small:
        t_kw.update(SMALL_TEACHER)
        s_kw.update(SMALL_STUDENT)
    if teacher_layers:
        t_kw["num_hidden_layers"] = teacher_layers
    if student_layers:
        s_kw["n_layer"] = student_layers
    models = []
    for kw, seed in ((t_kw, 1), (s_kw, 2)):
        kw = dict(kw)
        cfg = AutoConfig.for_model(kw.pop("model_type"), **kw)
        torch.manual_seed(seed)
        models.append(AutoModelForCausalLM.from_config(cfg).to(dtype))
    return models[0], models[1], t_kw, s_kw


def child(args) -> dict:
    """One method's step, measured in this process (``--child``)."""
    if args.code:
        sys.path.insert(0, str(Path(args.code).resolve()))
    else:
        sys.path.insert(0, str(ROOT))
    import torch

    from dwakd.data import ASSETS
    from dwakd.settings import from_dict
    from dwakd.models import load_tokenizer
    from dwakd.registry import get_method
    from dwakd.train import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    teacher, student, t_kw, s_kw = build_models(args.small, args.teacher_layers, args.student_layers, dtype)
    teacher = teacher.to(device).requires_grad_(False).eval()
    student = student.to(device).train()
    if args.grad_ckpt:  # the paper profile's student setting (config/config.yaml, pair qwen1.5-1.8b_gpt2-120m)
        try:
            from dwakd.models import enable_checkpointing
        except ImportError:  # a checkout from before it (``--code``)
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            enable_checkpointing(student)
    stok = load_tokenizer(ASSETS / "mini" / "student")
    ttok = load_tokenizer(ASSETS / "mini" / "teacher")
    cls = get_method(args.child)
    method = cls(from_dict(cls.Config, {}, args.child), student, teacher if cls.needs_teacher else None,
                 stok, ttok).to(device)
    method.train()
    tcfg = TrainConfig(batch_size=args.batch, max_len=args.seq, max_prompt_len=min(256, args.seq // 4),
                       select_by="last", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(method, student, teacher if cls.needs_teacher else None, stok, ttok, tcfg, Path(tmp))
    batch = tr.batch(tr.make_items(records(args.batch, args.seq)))
    sl = batch["student"]["labels"]
    info = {"student_tokens": list(batch["student"]["input_ids"].shape),
            "student_response": int((sl[:, 1:] != -100).sum())}
    if "teacher" in batch:
        tl = batch["teacher"]["labels"]
        info.update(teacher_tokens=list(batch["teacher"]["input_ids"].shape),
                    teacher_response=int((tl[:, 1:] != -100).sum()))
    amp = device.type == "cuda"
    cuda = device.type == "cuda"

    def now():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    times, fwd_peaks, loss_peaks, held = [], [], [], []
    base = None
    for _ in range(args.warmup + args.repeat):
        student.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            base = _mem_cpu()[0]
            _reset_peak_cpu()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            s_out, t_out = tr.forward(batch)
        if cuda:
            torch.cuda.synchronize()
            fwd_peak, after_fwd = torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            after_fwd, fwd_peak = _mem_cpu()
            _reset_peak_cpu()
        t0 = now()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = method.loss(batch, s_out, t_out)
        (loss / max(info["student_response"], 1)).backward()
        dt = now() - t0
        loss_peak = torch.cuda.max_memory_allocated(device) if cuda else _mem_cpu()[1]
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"{args.child}: non-finite loss {float(loss)}")
        times.append(dt)
        fwd_peaks.append(fwd_peak - base)
        loss_peaks.append(loss_peak - after_fwd)
        held.append(after_fwd - base)
        del s_out, t_out, loss
    k = slice(args.warmup, None)
    gib = 2 ** 30
    step_peak = max(max(f, h + lp) for f, h, lp in zip(fwd_peaks[k], held[k], loss_peaks[k]))
    import dwakd

    return {"method": args.child, "code": str(Path(dwakd.__file__).resolve().parent.parent), "device": str(device), "loss_backward_s": round(min(times[k]), 4),
            "all_s": [round(t, 4) for t in times[k]], "step_peak_gib": round(step_peak / gib, 3),
            "loss_peak_gib": round(max(loss_peaks[k]) / gib, 3), "after_forward_gib": round(max(held[k]) / gib, 3),
            "models_gib": round(base / gib, 3) if base else None,
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "teacher": {k2: v for k2, v in t_kw.items() if k2 in ("vocab_size", "hidden_size", "num_hidden_layers")},
            "student": {k2: v for k2, v in s_kw.items() if k2 in ("vocab_size", "n_embd", "n_layer")}, **info}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="*", default=list(METHODS), help=f"methods to run (default: {METHODS})")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512, help="tokens per sample on each side (max_len)")
    ap.add_argument("--small", action="store_true", help="toy model sizes and vocabularies (for tests)")
    ap.add_argument("--teacher-layers", type=int, default=None, help="override the teacher's depth (memory above "
                    "the models barely depends on it: the teacher's forward runs without gradient)")
    ap.add_argument("--student-layers", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model weights")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing of the student, as the paper "
                    "profile trains it (without it the student's own activations dominate the step's peak)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--code", default=None, help="import dwakd and baselines from this checkout instead")
    ap.add_argument("--mmap-threshold", type=int, default=128 * 1024, help="CPU: MALLOC_MMAP_THRESHOLD_ of the "
                    "children, in bytes (0: glibc's default, which keeps freed blocks resident)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        res = child(args)
        Path(args.child_out).write_text(json.dumps(res))
        return 0

    common = [f"--batch={args.batch}", f"--seq={args.seq}", f"--dtype={args.dtype}", f"--threads={args.threads}",
              f"--warmup={args.warmup}", f"--repeat={args.repeat}"]
    common += ["--small"] if args.small else []
    common += ["--grad-ckpt"] if args.grad_ckpt else []
    common += [f"--teacher-layers={args.teacher_layers}"] if args.teacher_layers else []
    common += [f"--student-layers={args.student_layers}"] if args.student_layers else []
    common += [f"--code={args.code}"] if args.code else []
    env = dict(os.environ)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.methods:  # one process per method: peaks do not mix
            out = Path(tmp) / f"{m}.json"
            subprocess.run([sys.executable, __file__, *common, f"--child={m}", f"--child-out={out}"], check=True,
                           env=env)
            rows.append(json.loads(out.read_text()))
            print(f"{m}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    ref = next((r for r in rows if r["method"] == "dskd_cma"), None)
    for r in rows:
        for key, col in (("step_peak_gib", "step_mem_vs_cma"), ("loss_peak_gib", "loss_mem_vs_cma"),
                         ("loss_backward_s", "time_vs_cma")):
            r[col] = round(r[key] / ref[key], 2) if ref and ref[key] else None
    print("| method | step peak above models (GiB) | × DSKD-CMA | loss-side peak (GiB) | loss + backward (s) "
          "| × DSKD-CMA |")
    print("|---|---:|---:|---:|---:|---:|")
    fmt = (lambda v: "" if v is None else f"{v:.2f}")
    for r in rows:
        print(f"| {r['method']} | {r['step_peak_gib']:.2f} | {fmt(r['step_mem_vs_cma'])} | {r['loss_peak_gib']:.2f} "
              f"| {r['loss_backward_s']:.2f} | {fmt(r['time_vs_cma'])} |")
    if args.out:
        meta = {"batch": args.batch, "seq": args.seq, "small": args.small, "teacher_layers": args.teacher_layers,
                "student_layers": args.student_layers, "grad_ckpt": args.grad_ckpt, "dtype": args.dtype,
                "threads": args.threads, "mmap_threshold": args.mmap_threshold, "code": args.code or str(ROOT),
                "date": time.strftime("%Y-%m-%d")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
