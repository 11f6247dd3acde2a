"""The one training loop: each model's forward once per step, the method computes the loss.

AdamW (a separate learning rate for the method's own parts, e.g. projectors), cosine schedule with warm-up,
gradient clipping, gradient accumulation, per-token loss normalisation over the accumulated batch, bf16
autocast on GPU, a JSONL log per optimiser step, a checkpoint after every epoch (and every
``save_every_steps``), dev-set selection of the best epoch, and ``resume`` that continues a killed run with
the same result as an uninterrupted one. The batches come from ``dwakd.data`` (``encode_records``,
``epoch_order``, ``collate``), the run's files and their resume from ``dwakd.checkpoint``. On-policy distillation
(``on_policy_ratio`` > 0, methods with ``Method.on_policy``): the KD part of a micro-batch reads the student's
own samples (``dwakd.on_policy``), the CE the gold responses (``Trainer.kd_batches``, ``Trainer.on_policy_loss``).

One process, or N under ``accelerate launch`` (DDP; FSDP and DeepSpeed configurations are provided but
untested): the result does not depend on N (``Trainer``'s docstring says how; config/accelerate/README.md
how to launch). Every file is written atomically by process 0 (``dwakd.atomic``); a NaN/inf loss or gradient
norm stops every process at the same step and keeps the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from dwakd.atomic import atomic_dir
from dwakd.checkpoint import (Checkpoints, TrainLog, checkpoint_folder, is_sharded, rng_state, save_method_state,
                              select_epoch, set_rng_state, write_selection)
from dwakd.data import collate, encode_records, epoch_order, pack_blocks, response_length
from dwakd.errors import ConfigError
from dwakd.files import write_checksums
from dwakd.losses.divergences import response_positions, token_ce
from dwakd.methods.base import Method
from dwakd.models import check_position_limits, forward, pad_id, save_trained
from dwakd.on_policy import new_tokens, plan, prompt_length, sample, sample_item
from dwakd.settings import check_range


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
    group_by_length: bool = False  # batches of similar lengths (less padding); see ``epoch_order``
    select_by: str = "rougeL"  # "rougeL" (dev ROUGE-L, the protocol), "loss" (dev loss) or "last"
    dev_limit: int = 0  # dev samples for selection; 0 = all
    dev_max_new_tokens: int = 256
    save_every_steps: int = 0  # > 0: also checkpoint inside an epoch
    num_threads: int = 0  # CPU threads; 0 = torch's default
    progress: bool = True
    # On-policy distillation (docs/methods.md "On-policy distillation"; DSKD v2 code/arguments.py:71-73, its
    # scripts' sampling flags, code/distillation.py:145-281)
    on_policy_ratio: float = 0.0  # P(a micro-batch's KD part reads the student's samples); 0 = off (DSKD v2
    #                               --stu-gen-ratio, 0.5 once --on-policy is given)
    on_policy_after_epochs: int = 3  # off-policy epochs first (DSKD v2 --on-policy-after-n-epochs, default 3)
    on_policy_temperature: float = 1.0  # the student's sampling (DSKD v2 scripts: --do-sample --temperature 1.0)
    on_policy_top_p: float = 1.0  # (--top-p 1.0)
    on_policy_top_k: int = 0  # (--top-k 0: off)
    on_policy_max_new_tokens: int = 0  # cap on a sample's tokens; 0 = none: max_len − max_prompt_len (DSKD v2)

    def validate(self, where: str) -> None:
        if self.select_by not in ("rougeL", "loss", "last"):
            raise ConfigError(f"{where}.select_by: expected 'rougeL', 'loss' or 'last', got {self.select_by!r}")
        for k in ("epochs", "batch_size", "grad_accum", "max_len", "max_prompt_len"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{where}.{k}: expected a positive integer, got {getattr(self, k)}")
        check_range(where, "on_policy_ratio", self.on_policy_ratio, 0.0, 1.0)
        check_range(where, "on_policy_temperature", self.on_policy_temperature, 0.0, lo_open=True)
        check_range(where, "on_policy_top_p", self.on_policy_top_p, 0.0, 1.0, lo_open=True)
        for k in ("on_policy_after_epochs", "on_policy_top_k", "on_policy_max_new_tokens"):
            check_range(where, k, getattr(self, k), 0)
        if self.on_policy_ratio > 0:
            if self.on_policy_after_epochs >= self.epochs:
                raise ConfigError(f"{where}.on_policy_after_epochs: {self.on_policy_after_epochs} off-policy epochs "
                                  f"leave none of the {self.epochs} epochs on-policy (on_policy_ratio is "
                                  f"{self.on_policy_ratio}); expected fewer than epochs")
            if self.pack or self.train_on_prompt:
                raise ConfigError(f"{where}.on_policy_ratio: on-policy distillation samples responses to prompts; "
                                  f"pre-training data (pack / train_on_prompt) has none")
            if self.max_prompt_len >= self.max_len:
                raise ConfigError(f"{where}.max_len: on-policy sampling needs room for a response after the "
                                  f"prompt: expected more than max_prompt_len ({self.max_prompt_len}), got "
                                  f"{self.max_len}")


def check_on_policy(method: type[Method], cfg: TrainConfig, where: str) -> None:
    """A ``ConfigError`` naming ``where``'s ``on_policy_ratio`` and the methods that support it, when ``cfg`` asks
    for on-policy distillation and ``method`` does not support it (``Method.on_policy``)."""
    if cfg.on_policy_ratio > 0 and not method.on_policy:
        from dwakd.config import on_policy_unsupported
        from dwakd.registry import available, get_method

        able = [n for n in available() if get_method(n).on_policy]
        raise ConfigError(on_policy_unsupported(where, cfg.on_policy_ratio, method.name, able))


# ------------------------------------------------------------------------------------ helpers


def micro_seed(seed: int, epoch: int, micro: int) -> int:
    """The RNG seed of micro-batch ``micro`` of ``epoch`` (dropout, a method's sampling): a function of the run's
    seed and the micro-batch only, never of the process that computes it or of the number of processes."""
    return (seed * 1_000_003 + epoch) * 1_000_003 + micro


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class TrainStep(nn.Module):
    """The trained modules as one: the student and the method (its projectors, discriminator, ...), whose
    ``forward`` is one micro-step (``Trainer.micro_step``: the frozen teacher's forward, the student's, the
    method's loss). This module is what ``Accelerator.prepare`` wraps (DDP, FSDP, DeepSpeed): every trainable
    parameter is used inside one forward of the wrapper, so DDP synchronises the method's parameters with the
    student's, and FSDP keeps the student's top-level weights (embeddings, LM head, which the cross-tokenizer
    methods read) gathered for the whole micro-step. The teacher is not a submodule: it is not wrapped, not
    sharded, and every process holds all of it."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.student, self.method = trainer.student, trainer.method
        # FSDP's transformer auto-wrap policy reads the layer classes to wrap from here (the student's blocks)
        self._no_split_modules = list(getattr(trainer.student, "_no_split_modules", None) or [])
        self._trainer = [trainer]  # a list: not a submodule

    def forward(self, batch: dict):
        return self._trainer[0].micro_step(batch)


def process_state():
    """accelerate's ``PartialState`` of this process (made on first use): one process for a plain command, one of
    the processes started by ``accelerate launch`` / ``torchrun`` otherwise; ``ACCELERATE_USE_CPU=true`` keeps
    them on the CPU (gloo), as ``Accelerator`` does. ``.device`` is where this process's models go."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def make_accelerator():
    """The ``accelerate.Accelerator`` of this process: one process when started as a plain command, DDP (or
    FSDP / DeepSpeed, from the config file) under ``accelerate launch`` / ``torchrun``."""
    from accelerate import Accelerator

    process_state()
    return Accelerator()


# ------------------------------------------------------------------------------------ trainer


class Trainer:
    """Trains ``student`` with ``method`` (and a frozen ``teacher`` if the method needs one).

    Files under ``out_dir`` (written by the main process only, each atomically; ``dwakd.checkpoint``):
    ``train_log.jsonl`` (one line per optimiser step and per evaluation; cut back to the checkpoint's line count
    on resume), ``checkpoints/<fingerprint>/step-N/`` (+ ``latest``, naming the last complete one), ``model/``
    (the selected student with its tokenizer, and ``method_state.pt``, the method's own parameters at that point,
    when it has any: ``dwakd.checkpoint.load_method_state``), ``selection.json``.

    **Processes.** ``fit`` runs unchanged as one process and under ``accelerate launch --num_processes N``
    (``torchrun``), with the same result up to floating-point summation order:

    * a step's global batch is the same samples whatever N: the epoch order is a function of (seed, epoch), a
      step takes the next ``grad_accum`` micro-batches of ``batch_size`` samples (``grad_accum`` counts the
      micro-batches of a step over *all* processes), and process r computes micro-batches r, r + N, ... of
      them (a process left without one, when a step has fewer than N micro-batches, runs the step's first
      micro-batch with weight 0, so that it still joins the gradient all-reduce);
    * normalisation: the method returns token sums; each micro-batch's sum is divided by the response tokens of
      the whole global step. Every process holds the whole encoded set, so each counts that number itself for
      all the step's micro-batches: it is the all-reduced sum of the per-process counts, without a collective.
      DDP *averages* the gradients over the N processes, so each process back-propagates ``N · loss_sum /
      tokens``: the average of N such gradients is ``Σ_micro-batches ∇loss_sum / tokens``, exactly the
      one-process gradient with accumulation (×N and ÷N are exact in floating point for N a power of two).
      The micro-batches of a process but its last run under ``no_sync``: one all-reduce per step;
    * randomness: each micro-batch's forward runs after ``torch.manual_seed(micro_seed(seed, epoch, k))``, so
      dropout (GPT-2/OPT students, CMA-GA's discriminator) does not depend on which process runs it;
    * logged loss and terms are sums over the processes (all-reduced), the gradient norm is the norm of the
      synchronised gradient; the non-finite checks use these global values, so every process stops at the
      same step; only process 0 writes files, the others wait at barriers;
    * dev-set selection (``make_dev_scorer``) scores a slice of the dev records on each process and sums over
      the processes: every process gets the single-process number and takes the same decision;
    * on-policy steps (``kd_batches``): which micro-batches are the student's samples, and their sampling seeds,
      are functions of (seed, epoch, micro-batch), so every process knows them all; each samples for its own
      micro-batches, and the response tokens of the step's KD batches (the KD parts' divisor, unknown to the
      other processes) are all-reduced once per on-policy step.
    """

    def __init__(self, method: Method, student, teacher, student_tokenizer, teacher_tokenizer,
                 cfg: TrainConfig, out_dir: Path, dev_scorer=None):
        self.method, self.student, self.teacher = method, student, teacher
        self.stok, self.ttok = student_tokenizer, teacher_tokenizer
        self.cfg, self.out = cfg, Path(out_dir)
        self.dev_scorer = dev_scorer  # callable(student) -> float, higher is better; called on every process
        self.device = next(student.parameters()).device
        self.amp = self.device.type == "cuda"
        self.acc = None  # the Accelerator, made by ``fit``
        self.checkpoints: Checkpoints | None = None  # made by ``fit`` (``_prepare``)
        self.log: TrainLog | None = None  # opened by ``fit`` (``_start``)
        self.policy_log: dict = {}  # the step's on-policy columns of the log (``kd_batches``)
        check_on_policy(type(method), cfg, "train")

    # -- data ---------------------------------------------------------------------------------
    def make_items(self, records: list[dict]) -> list[dict]:
        """The encoded records (``dwakd.data.encode_records``; packed into blocks for pre-training), each with its
        teacher tokenisation and token alignment when the method reads them."""
        cfg = self.cfg
        items = encode_records(records, self.stok, cfg.max_prompt_len, cfg.max_len, cfg.train_on_prompt)
        if cfg.pack:
            return pack_blocks(items, cfg.max_len)
        if self.method.needs_teacher_tokens:
            t_items = encode_records(records, self.ttok, cfg.max_prompt_len, cfg.max_len, cfg.train_on_prompt)
            pairs = getattr(self.method, "token_pairs", None)  # token-only alignments: once, with the data
            for s, t in zip(items, t_items):
                s["teacher"] = t
                if pairs is not None:
                    s["pairs"] = pairs(s["labels"], t["labels"])
        return items

    def batch(self, items: list[dict]) -> dict:
        b = {"student": collate(items, self.stok.pad_token_id), "index": torch.tensor([x["index"] for x in items])}
        if self.method.needs_teacher_tokens:
            b["teacher"] = collate([x["teacher"] for x in items], self.ttok.pad_token_id)
        b = {k: ({kk: vv.to(self.device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(self.device))
             for k, v in b.items()}
        if all("pairs" in x for x in items):  # the cached token alignments (``Method.token_pairs``), per sample
            b["pairs"] = [x["pairs"] for x in items]
        return b

    # -- one micro-batch ----------------------------------------------------------------------
    def forward(self, batch: dict):
        """``(student_out, teacher_out)`` on ``batch`` with the features the method asks for; the teacher (None
        when the method needs none) without gradient."""
        m = self.method
        t_out = None
        if m.needs_teacher:
            tb = batch["teacher"] if m.needs_teacher_tokens else batch["student"]
            rows = response_positions(tb["labels"]) if m.teacher_logit_rows == "response" else None
            with torch.no_grad():
                t_out = forward(self.teacher, tb["input_ids"], tb["attention_mask"],
                                hidden="hidden" in m.teacher_outputs, embeds="embeds" in m.teacher_outputs,
                                rows=rows)
        sb = batch["student"]
        s_out = forward(self.student, sb["input_ids"], sb["attention_mask"],
                        hidden="hidden" in m.student_outputs, embeds="embeds" in m.student_outputs)
        return s_out, t_out

    def micro_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if "kd_scale" in batch:  # a micro-batch of an on-policy step (``kd_batches``)
                return self.on_policy_loss(batch["gold"], batch["kd"], batch["kd_scale"])
            s_out, t_out = self.forward(batch)
            return self.method.loss(batch, s_out, t_out)

    def on_policy_loss(self, gold: dict, kd: dict | None, scale: float
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``ce_weight·CE(gold) + scale·kd_loss(kd)`` and its terms (KD terms × ``scale``): the CE on the gold
        responses, the KD part on ``kd``, the student's samples (or, None, on the gold batch itself). The loop
        divides by the step's gold response tokens; ``scale`` = those / the response tokens of the batches the
        step's KD parts read, so each part is a mean over the tokens it was summed over."""
        m = self.method
        if kd is None:
            s_out, t_out = self.forward(gold)
            kd, ce_logits = gold, s_out.logits
        else:
            sb = gold["student"]
            ce_logits = forward(self.student, sb["input_ids"], sb["attention_mask"]).logits
            s_out, t_out = self.forward(kd)
        ce = token_ce(ce_logits, gold["student"]["labels"])
        kd_sum, logs = m.kd_loss(kd, s_out, t_out)
        return m.ce_weight() * ce + scale * kd_sum, {"ce": ce.detach(), **{k: scale * v for k, v in logs.items()}}

    # -- processes ----------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.acc is None or self.acc.is_main_process

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def _sharded(self) -> bool:
        """FSDP or DeepSpeed: the student and its optimiser state are split over the processes."""
        return self.acc is not None and is_sharded(self.acc)

    def _full_state_dicts(self) -> tuple[dict | None, dict]:
        """``(student, method)`` state dicts to save: the modules' own ones, or under FSDP/DeepSpeed the full
        ones gathered on process 0 (a collective: every process calls it)."""
        if not self._sharded():
            return None, self.method.state_dict()
        full = self.acc.get_state_dict(self.model)
        split = {"student.": {}, "method.": {}}
        for k, v in (full or {}).items():
            for prefix, d in split.items():
                if k.startswith(prefix):
                    d[k[len(prefix):]] = v
        return split["student."], split["method."]

    # -- the selected model ------------------------------------------------------------------
    def save_model(self, dest: Path) -> None:
        """The student with its tokenizer (``dwakd.models.save_trained``) and, when the method has parameters of its
        own (projectors, a discriminator), ``METHOD_STATE`` (``dwakd.checkpoint.load_method_state`` reads it),
        written together into ``dest`` (a temporary folder swapped into place). Called on every process; process 0
        writes."""
        student_sd, method_sd = self._full_state_dicts()
        if self.is_main:
            with atomic_dir(dest) as tmp:
                save_trained(self.student, self.stok, tmp, state_dict=student_sd)  # LoRA: merged, adapter/ beside
                save_method_state(self.method, tmp, method_sd)
                write_checksums(tmp)  # verified on load (dwakd.files): a damaged model is named, not loaded
        self.barrier()

    # -- the loop -----------------------------------------------------------------------------
    def _prepare(self, total: int) -> None:
        """The Accelerator, the optimiser (AdamW; the method's parameters in a group at ``projector_lr``), the
        schedule, and the wrapped ``TrainStep`` (``self.model``)."""
        from accelerate.utils import DistributedType

        cfg = self.cfg
        acc = self.acc = make_accelerator()
        if acc.distributed_type == DistributedType.DEEPSPEED:  # no dataloader to read these from; the loop
            ds = acc.state.deepspeed_plugin.deepspeed_config  # marks the accumulation boundaries itself
            ds.update(train_micro_batch_size_per_gpu=cfg.batch_size, gradient_accumulation_steps=1,
                      train_batch_size=cfg.batch_size * acc.num_processes, gradient_clipping=cfg.max_grad_norm)
        if self._sharded() and self.dev_scorer is not None and cfg.select_by != "last":
            raise ConfigError(f"select_by: {cfg.select_by!r} scores the student on dev inside training, which needs "
                              f"the whole student on every process; under {acc.distributed_type.value} use "
                              f"select_by: last, or DDP (config/accelerate/ddp.yaml)")
        if self._sharded() and cfg.on_policy_ratio > 0:
            raise ConfigError(f"on_policy_ratio: the student samples its own responses inside training, which needs "
                              f"the whole student on every process; under {acc.distributed_type.value} use "
                              f"on_policy_ratio: 0, or DDP (config/accelerate/ddp.yaml)")
        if acc.num_processes > 1 and cfg.grad_accum % acc.num_processes and acc.is_main_process:
            print(f"dwakd train: grad_accum={cfg.grad_accum} micro-batches per step are not a multiple of "
                  f"{acc.num_processes} processes: some processes idle in every step", file=sys.stderr)
        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "lr": cfg.lr}]
        mparams = [p for p in self.method.parameters() if p.requires_grad]
        if mparams:
            groups.append({"params": mparams, "lr": cfg.projector_lr})
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        # the schedule is not prepared: accelerate would step a prepared one once per process
        self.sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
        # the caller put the models on their devices (cmd_train: this process's device); DeepSpeed places them
        placement = None if acc.distributed_type == DistributedType.DEEPSPEED else [False, False]
        self.model, self.opt = acc.prepare(TrainStep(self), opt, device_placement=placement)
        self.checkpoints = Checkpoints(checkpoint_folder(self.out, self.method, cfg), acc, self.student, self.method,
                                       self.opt, self.sched)

    def fit(self, train_records: list[dict], resume: bool = False) -> dict:
        """Train on ``train_records`` from the start, or (``resume``) from the run's last checkpoint; returns the
        run's state (steps, epochs, the selection)."""
        cfg = self.cfg
        items = self._seeded_items(train_records)
        n_resp = [response_length(x) for x in items]
        total = self.total_steps(len(items))
        self._prepare(total)
        state = self._start(resume)
        bar = tqdm(total=total, initial=state["step"], disable=not (cfg.progress and self.is_main), file=sys.stderr,
                   mininterval=5, desc=f"train {self.method.name}")
        while state["step"] < total and state["epoch"] < cfg.epochs:
            micro_batches = self.micro_batches(items, state["epoch"])
            while state["micro"] < len(micro_batches) and state["step"] < total:
                t0 = time.perf_counter()
                group = micro_batches[state["micro"]:state["micro"] + cfg.grad_accum]  # one optimiser step
                n_tok = sum(n_resp[i] for mb in group for i in mb)  # the whole global step's response tokens
                self.method.on_step(state["step"] / max(total, 1))
                loss, terms = self.accumulate(items, group, state, max(n_tok, 1))
                gnorm = self._clip_gradients()
                if not math.isfinite(gnorm):
                    self._stop(f"non-finite gradient norm {gnorm} (loss {loss})", state, terms, items, group)
                lr = self.sched.get_last_lr()[0]
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                state["step"] += 1
                state["micro"] += len(group)
                self.log.write({"step": state["step"], "epoch": state["epoch"], "loss": loss, **terms, "lr": lr,
                                "grad_norm": gnorm, "tokens": n_tok, **self.policy_log,
                                **self._speed(t0, items, group)})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if cfg.save_every_steps and state["step"] % cfg.save_every_steps == 0 and state["step"] < total:
                    self.save_checkpoint(state)
            self.end_epoch(state)
        bar.close()
        self.log.close()
        self.checkpoints.remove()
        return state

    # -- the loop's parts ---------------------------------------------------------------------
    def _seeded_items(self, records: list[dict]) -> list[dict]:
        """Threads and seeds set, the position limits checked, the records encoded (``make_items``)."""
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        check_position_limits(cfg.max_len, {"student": self.student, "teacher": self.teacher})
        return self.make_items(records)

    def total_steps(self, n_items: int) -> int:
        """Optimiser steps of the run: ``grad_accum`` micro-batches of ``batch_size`` items per step (the last of an
        epoch may be short), ``epochs`` epochs, at most ``max_steps`` (> 0)."""
        cfg = self.cfg
        total = math.ceil(math.ceil(n_items / cfg.batch_size) / cfg.grad_accum) * cfg.epochs
        return min(total, cfg.max_steps) if cfg.max_steps else total

    def micro_batches(self, items: list[dict], epoch: int) -> list[list[int]]:
        """Epoch ``epoch``'s micro-batches (item numbers): ``epoch_order`` cut into runs of ``batch_size``; with
        ``group_by_length``, of similar padded widths (a sample's own tokens plus, for methods that read the
        teacher's, those too)."""
        cfg = self.cfg
        lengths = ([len(x["input_ids"]) + len(x.get("teacher", {}).get("input_ids", ())) for x in items]
                   if cfg.group_by_length else None)
        order = epoch_order(len(items), cfg.seed, epoch, lengths, cfg.batch_size * cfg.grad_accum)
        return [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    def _start(self, resume: bool) -> dict:
        """The run's state: a fresh one, or (``resume``) the last checkpoint's, whose modules, optimiser and RNG
        are restored; the log opened (cut back to the checkpoint's lines); the modules in their modes."""
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"step": 0, "epoch": 0, "micro": 0, "best": None, "best_epoch": None, "history": []}
        if resume:
            loaded = self.checkpoints.load()
            if loaded is not None:
                state = loaded
        elif self.checkpoints.latest() is not None:
            raise FileExistsError(f"{self.checkpoints.folder}: holds checkpoints of an interrupted run; pass --resume "
                                  f"to continue it, or remove the folder to start again")
        self.log = TrainLog(self.out / "train_log.jsonl", state, self.is_main)
        self.student.train()
        self.method.train()
        if self.teacher is not None:
            self.teacher.eval()
        return state

    def _clip_gradients(self) -> float:
        """Clip the synchronised gradient to ``max_grad_norm``; its norm before clipping (nan if none)."""
        params = [p for g in self.opt.param_groups for p in g["params"]]
        gnorm = self.acc.clip_grad_norm_(params, self.cfg.max_grad_norm)
        return float("nan") if gnorm is None else float(gnorm)

    def _speed(self, t0: float, items: list[dict], group: list[list[int]]) -> dict[str, float]:
        """The step's time since ``t0``, its input tokens per second and the peak memory so far (the log's
        timing columns)."""
        dt = time.perf_counter() - t0
        n_in = sum(len(items[i]["input_ids"]) for mb in group for i in mb)
        return {"step_time_s": dt, "tokens_per_s": n_in / dt, "peak_mem_mb": peak_memory_mb(self.device)}

    def save_checkpoint(self, state: dict) -> None:
        """A checkpoint of ``state`` with the log's line count (``Checkpoints.save``)."""
        self.checkpoints.save({**state, "log_lines": self.log.lines})

    def accumulate(self, items: list[dict], group: list[list[int]], state: dict, denom: int
                   ) -> tuple[float, dict[str, float]]:
        """Forward and backward of this process's micro-batches of the step ``group`` (see the class docstring);
        returns the step's loss and terms per response token, summed over all processes."""
        acc, world, rank = self.acc, self.acc.num_processes, self.acc.process_index
        # (micro-batch number within the step, weight): a process without one runs the first with weight 0
        jobs = [(k, 1.0) for k in range(rank, len(group), world)] or [(0, 0.0)]
        kd = self.kd_batches(items, group, state, jobs, denom)
        loss_local, terms_local = 0.0, {}
        for j, (k, w) in enumerate(jobs):
            last = j == len(jobs) - 1
            batch = self.batch([items[i] for i in group[k]])
            if kd:  # an on-policy step: the CE reads ``batch``, the KD part ``kd``'s batch (``on_policy_loss``)
                batch = {"gold": batch, "kd": kd["batches"].get(k), "kd_scale": kd["scale"]}
            torch.manual_seed(micro_seed(self.cfg.seed, state["epoch"], state["micro"] + k))
            acc.sync_gradients = last  # DeepSpeed: the accumulation boundary; DDP: no_sync below
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                loss_sum, logs = self.model(batch)
                loss_local += w * float(loss_sum.detach()) / denom
                for key, v in logs.items():
                    terms_local[key] = terms_local.get(key, 0.0) + w * float(v) / denom
                if last:  # before the gradient all-reduce: a non-finite loss stops every process here
                    keys = sorted(terms_local)
                    total = reduce_sum([loss_local, *(terms_local[key] for key in keys)], acc.device)
                    loss_total, terms = total[0], dict(zip(keys, total[1:]))
                    if not math.isfinite(loss_total):
                        self._stop(f"non-finite loss {loss_total}", state, terms, items, group)
                acc.backward(loss_sum * (w * world / denom))
        return loss_total, terms

    def kd_batches(self, items: list[dict], group: list[list[int]], state: dict, jobs: list[tuple[int, float]],
                   denom: int) -> dict:
        """The KD batches of an on-policy step: ``{}`` for a step with no micro-batch drawn (``dwakd.on_policy
        .plan``; every process knows the draws of all of them); else ``{"batches": {k: the batch of the student's
        samples for each of this process's drawn micro-batches k}, "scale": denom / n_kd}``, n_kd = the response
        tokens of the step's KD batches (the samples where drawn, the gold responses elsewhere; summed over the
        processes, DSKD v2's ``op_loss_denom``). Sets ``policy_log``: ``on_policy`` (the step's drawn fraction),
        ``gen_s`` (this process's sampling seconds) and ``kd_tokens`` (n_kd), for runs with ``on_policy_ratio``."""
        cfg = self.cfg
        if cfg.on_policy_ratio <= 0:
            return {}
        self.policy_log = {"on_policy": 0.0, "gen_s": 0.0, "kd_tokens": denom}
        if state["epoch"] < cfg.on_policy_after_epochs:
            return {}
        draws = [plan(cfg.seed, state["epoch"], state["micro"] + k, cfg.on_policy_ratio) for k in range(len(group))]
        if not any(d for d, _ in draws):
            return {}
        t0 = time.perf_counter()
        batches, n_local = {}, 0
        for k, w in jobs:
            gold = [items[i] for i in group[k]]
            if w == 0 or not draws[k][0]:  # the gold batch (weight 0: a process's stand-in, counted elsewhere)
                n_local += w * sum(response_length(x) for x in gold)
                continue
            batches[k], n = self.sample_batch(gold, draws[k][1])
            n_local += n
        gen_s = time.perf_counter() - t0
        (n_kd,) = reduce_sum([n_local], self.acc.device)
        self.policy_log = {"on_policy": sum(d for d, _ in draws) / len(group), "gen_s": gen_s, "kd_tokens": int(n_kd)}
        return {"batches": batches, "scale": denom / max(n_kd, 1)}

    def sample_batch(self, gold: list[dict], seed: int) -> tuple[dict, int]:
        """``(batch, response tokens)`` of the student's samples for the prompts of the items ``gold`` (one
        ``dwakd.on_policy.sample`` call seeded with ``seed``, the settings' sampling), flagged ``on_policy``."""
        cfg = self.cfg
        responses = sample(self.student, [x["input_ids"][:prompt_length(x["labels"])] for x in gold],
                           pad_id=pad_id(self.stok, self.student), eos_id=self.stok.eos_token_id,
                           temperature=cfg.on_policy_temperature, top_p=cfg.on_policy_top_p, top_k=cfg.on_policy_top_k,
                           max_new_tokens=new_tokens(cfg.max_len, cfg.max_prompt_len, cfg.on_policy_max_new_tokens),
                           seed=seed, amp=self.amp)
        items = [self.kd_item(x, r) for x, r in zip(gold, responses)]
        return {**self.batch(items), "on_policy": True}, sum(response_length(x) for x in items)

    def kd_item(self, gold: dict, response: list[int]) -> dict:
        """The item of one sampled ``response`` to ``gold``'s prompt (``dwakd.on_policy.sample_item``), with its
        token alignment when the method caches one (``Method.token_pairs``)."""
        x = sample_item(gold, response, self.stok, self.ttok, self.cfg.max_len)
        pairs = getattr(self.method, "token_pairs", None)
        if pairs is not None and "teacher" in x:
            x["pairs"] = pairs(x["labels"], x["teacher"]["labels"])
        return x

    def _stop(self, what: str, state: dict, terms: dict, items: list[dict], group: list[list[int]]) -> None:
        latest = self.checkpoints.latest()
        kept = (f"the last good checkpoint, {latest}, is kept: rerun with --resume to continue from it"
                if latest is not None else "no checkpoint was written yet")
        raise FloatingPointError(f"{what} at step {state['step'] + 1} (terms {terms}, batch ids "
                                 f"{[int(items[i]['index']) for mb in group for i in mb]}); {kept}")

    def end_epoch(self, state: dict) -> None:
        """Score the epoch on dev, keep the best model, checkpoint, advance the epoch counter."""
        rng = rng_state()  # dev sampling must not move the training RNG
        score = self.dev_scorer(self.student) if (self.dev_scorer and self.cfg.select_by != "last") else None
        set_rng_state(rng)
        self.student.train()
        entry, best = select_epoch(state, score, self.cfg.select_by)
        self.log.write(entry)
        if best:
            self.save_model(self.out / "model")
        state["epoch"] += 1
        state["micro"] = 0
        self.save_checkpoint(state)
        if self.is_main:
            write_selection(self.out, state, self.cfg.select_by)
        self.barrier()


def reduce_sum(values: list[float], device) -> list[float]:
    """``values`` summed over the processes (float64; every process gets the sums). One process: unchanged."""
    from accelerate.utils import reduce

    if process_state().num_processes == 1:
        return [float(v) for v in values]
    return reduce(torch.tensor(values, dtype=torch.float64, device=device), reduction="sum").tolist()


# ------------------------------------------------------------------------------ dev selection


def make_dev_scorer(dev: list[dict], tokenizer, tcfg: TrainConfig):
    """Dev-set score for checkpoint selection, ``score(model) -> float`` (higher is better): ROUGE-L of one
    sampled response per record (``select_by: rougeL``) or minus the response bits per byte (``loss``).

    Every process calls ``score`` (``Trainer.end_epoch`` does) and gets the same number: process r of N
    scores its share — the generation batches r, r + N, ... (``evaluate.generate_shard``: batch k sampled with
    its own seed, so each response does not depend on N), or the records r, r + N, ... for bits per byte — and
    the sums (ROUGE-L, or NLL and bytes) are all-reduced, so the score is the single-process one."""
    from dwakd.evaluate import GenConfig, generate_shard, response_nll_bytes, rouge_l

    dev = dev[: tcfg.dev_limit] if tcfg.dev_limit else dev

    def score(model) -> float:
        st = process_state()
        rank, world = st.process_index, st.num_processes
        if tcfg.select_by == "loss":
            was_training = model.training
            model.eval()
            nats, nbytes = 0.0, 0
            for r in dev[rank::world]:
                n, b = response_nll_bytes(model, tokenizer, r["prompt"], r["output"][0], tcfg.max_prompt_len)
                nats, nbytes = nats + n, nbytes + b
            model.train(was_training)
            nats, nbytes = reduce_sum([nats, nbytes], st.device)
            return -nats / (math.log(2) * max(nbytes, 1))
        g = GenConfig(max_new_tokens=tcfg.dev_max_new_tokens, max_prompt_len=tcfg.max_prompt_len, seeds=[10])
        preds = generate_shard(model, tokenizer, [r["prompt"] for r in dev], g, seed=10, rank=rank, world=world)
        (total,) = reduce_sum([sum(rouge_l(p, dev[i]["output"]) for i, p in preds.items())], st.device)
        return total / len(dev)

    return score
