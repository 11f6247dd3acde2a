"""Pilot harness behind docs/experiments.md: distil one student base with several methods in one process and
score each on response bits per byte of whole test sets (teacher forcing; cheap and deterministic).

    python benchmarks/kd_pilot.py --teacher DIR --student DIR --methods sft mined dskd_cma \
        --train-limit 1600 --steps 100 --out pilot.json

Runs use the configured runs of config/config.yaml (``runs:``) with the default profile's train settings,
overridden by the options here. Not part of the workflow: it exists to choose the embedded default's design.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from dwakd import config as C
from dwakd.data import SHIPPED_DATA, load_jsonl
from dwakd.evaluate import response_bits_bytes
from dwakd.run import build_run, load_pair_model
from dwakd.train import Trainer


def bpb_sets(model, tok, sets: dict[str, list[dict]]) -> dict[str, float]:
    out = {}
    with torch.no_grad():
        for name, recs in sets.items():
            s = response_bits_bytes(model, tok, recs)
            out[name] = round(math.fsum(s["bits"]) / sum(s["bytes"]), 4)
    out["avg"] = round(sum(out.values()) / len(out), 4)
    return out


def last_terms(log: Path, n: int = 10) -> dict[str, float]:
    """Mean of each logged term over the last ``n`` steps."""
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "step" in r and "loss" in r][-n:]
    keys = {k for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    return {k: round(sum(r.get(k, 0) for r in rows) / len(rows), 4) for k in sorted(keys)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--train-limit", type=int, default=1600)
    ap.add_argument("--train-offset", type=int, default=0)
    ap.add_argument("--train-file", help="JSONL instead of shipped Dolly train (SeqKD: teacher samples)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], help="train.KEY=VALUE override")
    ap.add_argument("--eval-limit", type=int, default=0, help="first N of each test set (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--score-teacher", action="store_true")
    ap.add_argument("--save", help="keep each run's folder (model, train_log.jsonl) under SAVE/<run>")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = C.load()
    files = {"dolly": "dolly_test", "selfinst": "selfinst", "vicuna": "vicuna", "sni": "sni"}
    sets = {k: load_jsonl(SHIPPED_DATA / f"{v}.jsonl.gz") for k, v in files.items()}
    if a.eval_limit:
        sets = {k: v[:a.eval_limit] for k, v in sets.items()}
    train = load_jsonl(a.train_file or SHIPPED_DATA / "dolly_train.jsonl.gz")
    train = train[a.train_offset:a.train_offset + a.train_limit]
    spec = C.pair(cfg, "mini")
    results = {}
    out = Path(a.out)
    if out.exists():
        results = json.loads(out.read_text())
    dev = torch.device("cpu")
    if a.score_teacher and "teacher" not in results:
        t, ttok = load_pair_model(Path(a.teacher), spec["teacher"], "teacher", dev, "teacher")
        results["teacher"] = {"bpb": bpb_sets(t, ttok, sets)}
    s0, stok = load_pair_model(Path(a.student), spec["student"], "trained", dev, "student")
    if "student_base" not in results:
        results["student_base"] = {"bpb": bpb_sets(s0, stok, sets)}
    out.write_text(json.dumps(results, indent=1))
    for run in a.methods:
        r = build_run(cfg, run)
        cls, mcfg, tcfg = r.method, r.method_config, r.train_config
        over = {k: type(getattr(tcfg, k))(v) if not isinstance(getattr(tcfg, k), bool) else v == "true"
                for k, v in (s.split("=", 1) for s in a.set)}
        tcfg = dataclasses.replace(tcfg, max_steps=a.steps, select_by="last", progress=False,
                                   num_threads=a.threads, **over)
        if cls.needs_vocab_map:
            vm = Path(a.out).with_suffix(".vocab_map.json")
            if not vm.exists():
                from dwakd.vocab_map import mined_vocab_map, write_vocab_map
                from dwakd.models import load_tokenizer
                tt, st = load_tokenizer(Path(a.teacher)), load_tokenizer(Path(a.student))
                write_vocab_map(vm, mined_vocab_map(tt, st, workers=a.threads), tt, st)
            mcfg = dataclasses.replace(mcfg, vocab_map=str(vm))
        student, stok = load_pair_model(Path(a.student), spec["student"], "trained", dev, "student")
        teacher = ttok = None
        if cls.needs_teacher:
            teacher, ttok = load_pair_model(Path(a.teacher), spec["teacher"], "teacher", dev, "teacher")
        torch.manual_seed(tcfg.seed)
        method = cls(mcfg, student, teacher, stok, ttok)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(a.save) / run if a.save else Path(tmp)
            t0 = time.time()
            Trainer(method, student, teacher, stok, ttok, tcfg, Path(d), None).fit(train)
            secs = time.time() - t0
            terms = last_terms(Path(d) / "train_log.jsonl")
        results[run] = {"bpb": bpb_sets(student, stok, sets), "train_s": round(secs, 1), "terms": terms,
                        "steps": a.steps, "train": dataclasses.asdict(tcfg)}
        print(run, results[run]["bpb"], results[run]["train_s"], flush=True)
        out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
