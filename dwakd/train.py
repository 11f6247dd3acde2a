"""The one training loop: each model's forward once per step, the method computes the loss.

AdamW (a separate learning rate for the method's own parts, e.g. projectors), cosine schedule with warm-up,
gradient clipping, gradient accumulation, per-token loss normalisation over the accumulated batch, bf16
autocast on GPU, a JSONL log per optimiser step, a checkpoint after every epoch (and every
``save_every_steps``), dev-set selection of the best epoch, and ``resume`` that continues a killed run with
the same result as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from dwakd.data import encode_sample
from dwakd.methods.base import ConfigError, Method
from dwakd.models import forward


@dataclass
class TrainConfig:
    """Optimisation settings; config/config.yaml sets them per profile (its values are the ones in use)."""

    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    projector_lr: float = 1e-3  # DSKD: projectors get their own AdamW group at 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 10
    max_prompt_len: int = 256
    max_len: int = 512
    max_steps: int = 0  # > 0: stop after this many optimiser steps (tests, smoke runs)
    train_on_prompt: bool = False  # pre-training: labels on every token
    pack: bool = False  # pre-training: concatenate samples into blocks of max_len
    select_by: str = "rougeL"  # "rougeL" (dev ROUGE-L, the protocol), "loss" (dev loss) or "last"
    dev_limit: int = 0  # dev samples for selection; 0 = all
    dev_max_new_tokens: int = 256
    save_every_steps: int = 0  # > 0: also checkpoint inside an epoch
    num_threads: int = 0  # CPU threads; 0 = torch's default
    progress: bool = True

    def validate(self, where: str) -> None:
        if self.select_by not in ("rougeL", "loss", "last"):
            raise ConfigError(f"{where}.select_by: expected 'rougeL', 'loss' or 'last', got {self.select_by!r}")
        for k in ("epochs", "batch_size", "grad_accum", "max_len", "max_prompt_len"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{where}.{k}: expected a positive integer, got {getattr(self, k)}")


# ----------------------------------------------------------------------------------------- data


def encode_records(records: list[dict], tokenizer, cfg: TrainConfig) -> list[dict]:
    """Tokenise every record (first reference as the target)."""
    out = []
    for i, r in enumerate(records):
        e = encode_sample(tokenizer, r["prompt"], r["output"][0], cfg.max_prompt_len, cfg.max_len)
        labels = e.input_ids if cfg.train_on_prompt else e.labels
        out.append({"index": i, "input_ids": e.input_ids, "labels": list(labels)})
    return out


def pack_blocks(encoded: list[dict], block: int) -> list[dict]:
    """Concatenate samples into full blocks of ``block`` tokens (pre-training); the tail is dropped."""
    ids = [t for e in encoded for t in e["input_ids"]]
    labels = [t for e in encoded for t in e["labels"]]
    return [{"index": k, "input_ids": ids[s:s + block], "labels": labels[s:s + block]}
            for k, s in enumerate(range(0, len(ids) - block + 1, block))]


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item: input_ids / labels (-100) / attention_mask, each [B, L]."""
    L = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    labels = torch.full((len(items), L), -100, dtype=torch.long)
    mask = torch.zeros((len(items), L), dtype=torch.long)
    for b, x in enumerate(items):
        n = len(x["input_ids"])
        ids[b, :n] = torch.tensor(x["input_ids"])
        labels[b, :n] = torch.tensor(x["labels"])
        mask[b, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=g).tolist()


# ------------------------------------------------------------------------------------ helpers


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _atomic_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ trainer


class Trainer:
    """Trains ``student`` with ``method`` (and a frozen ``teacher`` if the method needs one).

    Files under ``out_dir``: ``train_log.jsonl`` (one line per optimiser step and per evaluation),
    ``checkpoints/step-N/`` (+ ``checkpoints/latest``), ``model/`` (the selected student with its tokenizer,
    and ``method_state.pt``, the method's own parameters at that point, when it has any: ``load_method_state``),
    ``selection.json``.
    """

    def __init__(self, method: Method, student, teacher, student_tokenizer, teacher_tokenizer,
                 cfg: TrainConfig, out_dir: Path, dev_scorer=None):
        self.method, self.student, self.teacher = method, student, teacher
        self.stok, self.ttok = student_tokenizer, teacher_tokenizer
        self.cfg, self.out = cfg, Path(out_dir)
        self.dev_scorer = dev_scorer  # callable(student) -> float, higher is better
        self.device = next(student.parameters()).device
        self.amp = self.device.type == "cuda"
        # checkpoints of a run live under a fingerprint of its settings: a changed config never resumes
        # from a stale checkpoint, and the older checkpoints are left where they are
        fp = json.dumps({"method": method.name, "method_cfg": asdict(method.cfg) if is_dataclass(method.cfg) else {},
                         "train": asdict(cfg)}, sort_keys=True, default=str)
        self.ckpt_dir = self.out / "checkpoints" / hashlib.sha256(fp.encode()).hexdigest()[:12]

    # -- data ---------------------------------------------------------------------------------
    def make_items(self, records: list[dict]) -> list[dict]:
        items = encode_records(records, self.stok, self.cfg)
        if self.cfg.pack:
            return pack_blocks(items, self.cfg.max_len)
        if self.method.needs_teacher_tokens:
            t_items = encode_records(records, self.ttok, self.cfg)
            for s, t in zip(items, t_items):
                s["teacher"] = t
        return items

    def batch(self, items: list[dict]) -> dict:
        b = {"student": collate(items, self.stok.pad_token_id), "index": torch.tensor([x["index"] for x in items])}
        if self.method.needs_teacher_tokens:
            b["teacher"] = collate([x["teacher"] for x in items], self.ttok.pad_token_id)
        return {k: ({kk: vv.to(self.device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(self.device))
                for k, v in b.items()}

    # -- one micro-batch ----------------------------------------------------------------------
    def forward(self, batch: dict):
        """``(student_out, teacher_out)`` on ``batch`` with the features the method asks for; the teacher (None
        when the method needs none) without gradient."""
        m = self.method
        t_out = None
        if m.needs_teacher:
            tb = batch["teacher"] if m.needs_teacher_tokens else batch["student"]
            with torch.no_grad():
                t_out = forward(self.teacher, tb["input_ids"], tb["attention_mask"],
                                hidden="hidden" in m.teacher_outputs, embeds="embeds" in m.teacher_outputs)
        sb = batch["student"]
        s_out = forward(self.student, sb["input_ids"], sb["attention_mask"],
                        hidden="hidden" in m.student_outputs, embeds="embeds" in m.student_outputs)
        return s_out, t_out

    def micro_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            s_out, t_out = self.forward(batch)
            return self.method.loss(batch, s_out, t_out)

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        ck = self.ckpt_dir
        name = f"step-{state['step']}"
        tmp = ck / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"student": self.student.state_dict(), "method": self.method.state_dict(),
                    "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "rng": _rng_state(), "state": state}, tmp / "state.pt")
        shutil.rmtree(ck / name, ignore_errors=True)
        os.replace(tmp, ck / name)
        latest_tmp = ck / "latest.tmp"
        latest_tmp.write_text(name)
        os.replace(latest_tmp, ck / "latest")
        for old in ck.glob("step-*"):  # ``latest`` names a complete checkpoint, so the older ones can go
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> dict | None:
        latest = self.ckpt_dir / "latest"
        if not latest.exists():
            return None
        ck = torch.load(self.ckpt_dir / latest.read_text().strip() / "state.pt", weights_only=False)
        self.student.load_state_dict(ck["student"])
        self.method.load_state_dict(ck["method"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        return ck["state"]

    def save_model(self, dest: Path) -> None:
        """The student with its tokenizer and, when the method has parameters of its own (projectors, a
        discriminator), ``METHOD_STATE`` (``load_method_state`` reads it), written together into ``dest``."""
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.student.save_pretrained(tmp)
        self.stok.save_pretrained(tmp)
        save_method_state(self.method, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, train_records: list[dict], resume: bool = False) -> dict:
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        items = self.make_items(train_records)
        n_micro = math.ceil(len(items) / cfg.batch_size)
        steps_per_epoch = math.ceil(n_micro / cfg.grad_accum)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            total = min(total, cfg.max_steps)

        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "lr": cfg.lr}]
        mparams = [p for p in self.method.parameters() if p.requires_grad]
        if mparams:
            groups.append({"params": mparams, "lr": cfg.projector_lr})
        self.opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.sched = get_cosine_schedule_with_warmup(self.opt, int(cfg.warmup_ratio * total), total)

        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "train_log.jsonl"
        state = {"step": 0, "epoch": 0, "micro": 0, "best": None, "best_epoch": None, "history": []}
        if resume:
            loaded = self.load_checkpoint()
            if loaded is not None:
                state = loaded
        elif (self.ckpt_dir / "latest").exists():
            raise FileExistsError(f"{self.ckpt_dir}: holds checkpoints of an interrupted run; pass --resume to "
                                  f"continue it, or remove the folder to start again")
        # the log keeps exactly the lines up to the restored step
        kept = []
        if log_path.exists():
            kept = [ln for ln in log_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= state["step"]]
        log_path.write_text("".join(ln + "\n" for ln in kept))
        log = open(log_path, "a")

        self.student.train()
        if self.teacher is not None:
            self.teacher.eval()
        bar = tqdm(total=total, initial=state["step"], disable=not cfg.progress, file=sys.stderr,
                   mininterval=5, desc=f"train {self.method.name}")
        done = state["step"] >= total
        while not done and state["epoch"] < cfg.epochs:
            order = epoch_order(len(items), cfg.seed, state["epoch"])
            micro_batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            while state["micro"] < len(micro_batches):
                group = micro_batches[state["micro"]:state["micro"] + cfg.grad_accum]
                t0 = time.perf_counter()
                batches = [self.batch([items[i] for i in mb]) for mb in group]
                n_tok = sum(int((b["student"]["labels"][:, 1:] != -100).sum()) for b in batches)
                denom = max(n_tok, 1)
                self.method.on_step(state["step"] / max(total, 1))
                terms: dict[str, float] = {}
                loss_total = 0.0
                for b in batches:
                    loss_sum, logs = self.micro_step(b)
                    (loss_sum / denom).backward()
                    loss_total += float(loss_sum.detach()) / denom
                    for k, v in logs.items():
                        terms[k] = terms.get(k, 0.0) + float(v) / denom
                if not math.isfinite(loss_total):
                    raise FloatingPointError(
                        f"non-finite loss {loss_total} at step {state['step'] + 1} (terms {terms}, batch ids "
                        f"{[int(i) for b in batches for i in b['index']]}); the last good checkpoint is kept")
                params = [p for g in self.opt.param_groups for p in g["params"]]
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                lr = self.sched.get_last_lr()[0]
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                state["step"] += 1
                state["micro"] += len(group)
                dt = time.perf_counter() - t0
                n_in = sum(int(b["student"]["attention_mask"].sum()) for b in batches)
                rec = {"step": state["step"], "epoch": state["epoch"], "loss": loss_total, **terms, "lr": lr,
                       "grad_norm": gnorm, "tokens": n_tok, "step_time_s": dt, "tokens_per_s": n_in / dt,
                       "peak_mem_mb": peak_memory_mb(self.device)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_total:.3f}")
                if state["step"] >= total:
                    done = True
                    break
                if cfg.save_every_steps and state["step"] % cfg.save_every_steps == 0:
                    self.save_checkpoint(state)
            if state["micro"] >= len(micro_batches) or done:
                self.end_epoch(state, log)
        bar.close()
        log.close()
        # a finished run is not resumed: its checkpoints have served their purpose
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        return state

    def end_epoch(self, state: dict, log) -> None:
        """Score the epoch on dev, keep the best model, checkpoint, advance the epoch counter."""
        rng = _rng_state()  # dev sampling must not move the training RNG
        score = self.dev_scorer(self.student) if (self.dev_scorer and self.cfg.select_by != "last") else None
        _set_rng_state(rng)
        self.student.train()
        entry = {"step": state["step"], "epoch": state["epoch"], "dev_" + self.cfg.select_by: score}
        log.write(json.dumps(entry) + "\n")
        log.flush()
        state["history"].append(entry)
        if score is None or state["best"] is None or score > state["best"]:
            state["best"], state["best_epoch"] = score, state["epoch"]
            self.save_model(self.out / "model")
        state["epoch"] += 1
        state["micro"] = 0
        self.save_checkpoint(state)
        _atomic_json({"select_by": self.cfg.select_by, "best_epoch": state["best_epoch"], "best": state["best"],
                      "history": state["history"]}, self.out / "selection.json")


def train_config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


# ------------------------------------------------------------------------------ method state


METHOD_STATE = "method_state.pt"  # in a saved model folder: the method's own trained parameters


def save_method_state(method: Method, model_dir: Path) -> Path | None:
    """Write ``model_dir/METHOD_STATE`` (method name, config, ``state_dict``) if the method has any state;
    the file holds tensors, strings and numbers only, so it loads with ``torch.load(weights_only=True)``."""
    state = method.state_dict()
    if not state:
        return None
    cfg = asdict(method.cfg) if is_dataclass(method.cfg) else {}
    path = Path(model_dir) / METHOD_STATE
    torch.save({"method": method.name, "config": json.loads(json.dumps(cfg, default=str)),
                "state": {k: v.detach().cpu() for k, v in state.items()}}, path)
    return path


def load_method_state(method: Method, model_dir: Path) -> bool:
    """Load the trained parameters ``Trainer.save_model`` stored with a student into ``method`` (built with
    the run's config on that student and the teacher). Returns False for a method without state; raises
    ``FileNotFoundError`` if the method has state but the folder has none (a model saved before the method's
    state was saved, or by another method), ``ValueError`` if the file belongs to another method."""
    path = Path(model_dir) / METHOD_STATE
    if not method.state_dict():
        return False
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; method {method.name!r} has trained parameters that "
                                f"`dwakd train` saves with the student — this model was saved without them "
                                f"(by an older version): retrain the run")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("method") != method.name:
        raise ValueError(f"{path}: holds the state of method {saved.get('method')!r}, not {method.name!r}")
    method.load_state_dict(saved["state"])
    return True
