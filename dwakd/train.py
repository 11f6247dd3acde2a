"""The one training loop: each model's forward once per step, the method computes the loss.

AdamW (a separate learning rate for the method's own parts, e.g. projectors), cosine schedule with warm-up,
gradient clipping, gradient accumulation, per-token loss normalisation over the accumulated batch, bf16
autocast on GPU, a JSONL log per optimiser step, a checkpoint after every epoch (and every
``save_every_steps``), dev-set selection of the best epoch, and ``resume`` that continues a killed run with
the same result as an uninterrupted one.

One process, or N under ``accelerate launch`` (DDP; FSDP and DeepSpeed configurations are provided but
untested): the result does not depend on N (``Trainer``'s docstring says how; config/accelerate/README.md
how to launch). Every file is written atomically by process 0 (``dwakd.atomic``); a NaN/inf loss or gradient
norm stops every process at the same step and keeps the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import resource
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from dwakd.atomic import atomic_dir, atomic_write_json, atomic_write_text, replace_dir, tmp_path
from dwakd.data import encode_sample
from dwakd.errors import DataError
from dwakd.files import write_checksums
from dwakd.losses.divergences import response_positions
from dwakd.methods.base import ConfigError, Method
from dwakd.models import check_position_limits, forward, is_peft_model, save_trained


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


def epoch_order(n: int, seed: int, epoch: int, lengths: list[int] | None = None, batch: int = 1,
                window: int = 50) -> list[int]:
    """The sample order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same.

    With ``lengths`` (``group_by_length``), consecutive runs of ``batch`` samples (one optimiser step) have
    similar lengths, as in Hugging Face's ``LengthGroupedSampler``: a random permutation is cut into windows
    of ``window × batch`` samples, each window is sorted by length, cut into batches, and the order of the
    batches is shuffled. Every sample is still seen once per epoch; only which samples share a batch
    changes, and with it the padding (the mini profile's 720 samples, batches of 16: 2.41× the real tokens
    in random batches, 1.03× grouped; docs/experiments.md E6)."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return order
    size = max(1, window * batch)
    grouped = [sorted(order[i:i + size], key=lambda k: -lengths[k]) for i in range(0, n, size)]
    batches = [w[i:i + batch] for w in grouped for i in range(0, len(w), batch)]
    # a short last batch stays last: the trainer cuts the order at multiples of ``batch``
    full = len(batches) - (len(batches[-1]) < batch if batches else 0)
    return [k for j in torch.randperm(full, generator=g).tolist() for k in batches[j]] + \
        [k for b in batches[full:] for k in b]


# ------------------------------------------------------------------------------------ helpers


def response_tokens(item: dict) -> int:
    """The tokens of ``item`` its loss is summed over (the labels after the first position that are not -100):
    what ``collate``'s ``labels[:, 1:] != -100`` counts for it in any batch."""
    return sum(1 for t in item["labels"][1:] if t != -100)


def micro_seed(seed: int, epoch: int, micro: int) -> int:
    """The RNG seed of micro-batch ``micro`` of ``epoch`` (dropout, a method's sampling): a function of the run's
    seed and the micro-batch only, never of the process that computes it or of the number of processes."""
    return (seed * 1_000_003 + epoch) * 1_000_003 + micro


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


FAULT_ENV = "DWAKD_TEST_FAULT"


def _fault(point: str, step: int, partial: Path | None = None) -> None:
    """Fault injection for tests/test_robustness.py; does nothing unless ``DWAKD_TEST_FAULT`` is set.

    ``DWAKD_TEST_FAULT=<point>@<step>`` SIGKILLs this process when it reaches ``point`` ("checkpoint": inside
    the checkpoint writer, ``state.pt`` half written in the temporary folder; "model": inside ``save_model``,
    the student half written in the temporary folder; "step": right after the step's log line) at optimiser
    step ``step``; ``partial`` is the file that is cut to half its size first. ``sleep@<seconds>`` sleeps
    after every step's log line (so that a test can kill the run from outside at a moment of its choosing)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    what, _, arg = spec.partition("@")
    if what == "sleep":
        if point == "step":
            time.sleep(float(arg))
        return
    if what == point and int(arg) == step:
        if partial is not None and partial.exists():
            os.truncate(partial, partial.stat().st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)


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

    Files under ``out_dir`` (written by the main process only, each atomically: ``dwakd.atomic``):
    ``train_log.jsonl`` (one line per optimiser step and per evaluation; appended, and cut back to the
    checkpoint's line count on resume), ``checkpoints/<fingerprint>/step-N/`` (+ ``latest``, naming the last
    complete one), ``model/`` (the selected student with its tokenizer, and ``method_state.pt``, the method's own
    parameters at that point, when it has any: ``load_method_state``), ``selection.json``.

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
      the processes: every process gets the single-process number and takes the same decision.
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
        self._step = self._log_lines = 0  # the optimiser steps taken, the lines in the log (process 0)
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
            s_out, t_out = self.forward(batch)
            return self.method.loss(batch, s_out, t_out)

    # -- processes ----------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.acc is None or self.acc.is_main_process

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def _sharded(self) -> bool:
        """FSDP or DeepSpeed: the student and its optimiser state are split over the processes."""
        from accelerate.utils import DistributedType

        return self.acc is not None and self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

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

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        """``checkpoints/<fp>/step-N/state.pt`` written in a temporary folder and renamed into place, then
        ``latest`` (atomically) names it; only then the older checkpoints are removed. A run killed at any
        moment leaves ``latest`` naming a complete checkpoint (or no ``latest``)."""
        ck = self.ckpt_dir
        name = f"step-{state['step']}"
        saved = {**state, "log_lines": self._log_lines}
        if self._sharded():  # every process writes its shard (accelerate's format) into the temporary folder
            tmp = tmp_path(ck / name)
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self.barrier()
            self.acc.save_state(str(tmp / "accelerate"))
            self.barrier()
            if self.is_main:
                torch.save({"scheduler": self.sched.state_dict(), "state": saved}, tmp / "state.pt")
                replace_dir(tmp, ck / name)
        elif self.is_main:
            with atomic_dir(ck / name) as tmp:
                torch.save({"student": self.student.state_dict(), "method": self.method.state_dict(),
                            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                            "rng": _rng_state(), "state": saved}, tmp / "state.pt")
                _fault("checkpoint", state["step"], tmp / "state.pt")
        if self.is_main:
            atomic_write_text(ck / "latest", name)
            for old in ck.glob("step-*"):  # ``latest`` names a complete checkpoint, so the older ones can go
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        self.barrier()

    def load_checkpoint(self) -> dict | None:
        """The state of the checkpoint ``latest`` names (every process loads it), or None."""
        latest = self.ckpt_dir / "latest"
        if not latest.exists():
            return None
        folder = self.ckpt_dir / latest.read_text().strip()
        try:
            ck = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 (a damaged checkpoint: name it and what to do)
            raise DataError(f"{folder / 'state.pt'}: unreadable checkpoint ({type(e).__name__}); remove "
                            f"{self.ckpt_dir} to train the run from the start") from None
        if self._sharded():
            self.acc.load_state(str(folder / "accelerate"))
        else:
            self.student.load_state_dict(ck["student"])
            self.method.load_state_dict(ck["method"])
            self.opt.load_state_dict(ck["optimizer"])
            _set_rng_state(ck["rng"])
        self.sched.load_state_dict(ck["scheduler"])
        return ck["state"]

    def save_model(self, dest: Path) -> None:
        """The student with its tokenizer and, when the method has parameters of its own (projectors, a
        discriminator), ``METHOD_STATE`` (``load_method_state`` reads it), written together into ``dest``
        (a temporary folder swapped into place). Called on every process; process 0 writes."""
        student_sd, method_sd = self._full_state_dicts()
        if self.is_main:
            with atomic_dir(dest) as tmp:
                if is_peft_model(self.student):  # merged into a plain folder, the adapter in adapter/
                    save_trained(self.student, self.stok, tmp)
                else:  # full state dict (gathered under FSDP / ZeRO-3); KV cache on for generation
                    use_cache, self.student.config.use_cache = self.student.config.use_cache, True
                    self.student.save_pretrained(tmp, state_dict=student_sd)
                    self.student.config.use_cache = use_cache
                    self.stok.save_pretrained(tmp)
                save_method_state(self.method, tmp, method_sd)
                write_checksums(tmp)  # verified on load (dwakd.files): a damaged model is named, not loaded
                _fault("model", self._step, next(iter(tmp.glob("*.safetensors")), None))
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

    def fit(self, train_records: list[dict], resume: bool = False) -> dict:
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        check_position_limits(cfg.max_len, {"student": self.student, "teacher": self.teacher})
        items = self.make_items(train_records)
        n_resp = [response_tokens(x) for x in items]
        # padded width of a sample: its own tokens plus, for methods that read the teacher's, those too
        lengths = [len(x["input_ids"]) + len(x.get("teacher", {}).get("input_ids", ())) for x in items]
        n_micro = math.ceil(len(items) / cfg.batch_size)
        steps_per_epoch = math.ceil(n_micro / cfg.grad_accum)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        self._prepare(total)
        acc = self.acc

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
        self._step = state["step"]
        log = self._open_log(log_path, state)

        self.student.train()
        self.method.train()
        if self.teacher is not None:
            self.teacher.eval()
        bar = tqdm(total=total, initial=state["step"], disable=not (cfg.progress and self.is_main), file=sys.stderr,
                   mininterval=5, desc=f"train {self.method.name}")
        done = state["step"] >= total
        while not done and state["epoch"] < cfg.epochs:
            order = epoch_order(len(items), cfg.seed, state["epoch"], lengths if cfg.group_by_length else None,
                                cfg.batch_size * cfg.grad_accum)
            micro_batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            while state["micro"] < len(micro_batches):
                t0 = time.perf_counter()
                group = micro_batches[state["micro"]:state["micro"] + cfg.grad_accum]
                n_tok = sum(n_resp[i] for mb in group for i in mb)  # the whole global step's response tokens
                self.method.on_step(state["step"] / max(total, 1))
                loss_total, terms = self.accumulate(items, group, state, max(n_tok, 1))
                params = [p for g in self.opt.param_groups for p in g["params"]]
                gnorm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
                gnorm = float("nan") if gnorm is None else float(gnorm)
                if not math.isfinite(gnorm):
                    self._stop(f"non-finite gradient norm {gnorm} (loss {loss_total})", state, terms, items, group)
                lr = self.sched.get_last_lr()[0]
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                state["step"] += 1
                state["micro"] += len(group)
                self._step = state["step"]
                dt = time.perf_counter() - t0
                n_in = sum(len(items[i]["input_ids"]) for mb in group for i in mb)
                self._log(log, {"step": state["step"], "epoch": state["epoch"], "loss": loss_total, **terms, "lr": lr,
                                "grad_norm": gnorm, "tokens": n_tok, "step_time_s": dt, "tokens_per_s": n_in / dt,
                                "peak_mem_mb": peak_memory_mb(self.device)})
                _fault("step", state["step"])
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
        if log is not None:
            log.close()
        # a finished run is not resumed: its checkpoints have served their purpose
        self.barrier()
        if self.is_main:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        self.barrier()
        return state

    def accumulate(self, items: list[dict], group: list[list[int]], state: dict, denom: int
                   ) -> tuple[float, dict[str, float]]:
        """Forward and backward of this process's micro-batches of the step ``group`` (see the class docstring);
        returns the step's loss and terms per response token, summed over all processes."""
        acc, world, rank = self.acc, self.acc.num_processes, self.acc.process_index
        # (micro-batch number within the step, weight): a process without one runs the first with weight 0
        jobs = [(k, 1.0) for k in range(rank, len(group), world)] or [(0, 0.0)]
        loss_local, terms_local = 0.0, {}
        for j, (k, w) in enumerate(jobs):
            last = j == len(jobs) - 1
            batch = self.batch([items[i] for i in group[k]])
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

    def _stop(self, what: str, state: dict, terms: dict, items: list[dict], group: list[list[int]]) -> None:
        latest = self.ckpt_dir / "latest"
        kept = (f"the last good checkpoint, {self.ckpt_dir / latest.read_text().strip()}, is kept: rerun with "
                f"--resume to continue from it" if latest.exists() else "no checkpoint was written yet")
        raise FloatingPointError(f"{what} at step {state['step'] + 1} (terms {terms}, batch ids "
                                 f"{[int(items[i]['index']) for mb in group for i in mb]}); {kept}")

    # -- the log ------------------------------------------------------------------------------
    def _open_log(self, log_path: Path, state: dict):
        """Process 0: the log cut back to the lines the restored checkpoint had seen (all of a fresh run's
        are dropped), then opened for appending. Other processes: None."""
        if not self.is_main:
            self._log_lines = 0
            return None
        kept = []
        if log_path.exists() and state["step"] > 0:
            lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
            if "log_lines" in state:
                kept = lines[:state["log_lines"]]
            else:  # a checkpoint written before ``log_lines``: the lines up to its step
                kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= state["step"]]
        atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))
        self._log_lines = len(kept)
        return open(log_path, "a")

    def _log(self, log, rec: dict) -> None:
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()
            self._log_lines += 1

    def end_epoch(self, state: dict, log) -> None:
        """Score the epoch on dev, keep the best model, checkpoint, advance the epoch counter."""
        rng = _rng_state()  # dev sampling must not move the training RNG
        score = self.dev_scorer(self.student) if (self.dev_scorer and self.cfg.select_by != "last") else None
        _set_rng_state(rng)
        self.student.train()
        entry = {"step": state["step"], "epoch": state["epoch"], "dev_" + self.cfg.select_by: score}
        self._log(log, entry)
        state["history"].append(entry)
        if score is None or state["best"] is None or score > state["best"]:
            state["best"], state["best_epoch"] = score, state["epoch"]
            self.save_model(self.out / "model")
        state["epoch"] += 1
        state["micro"] = 0
        self.save_checkpoint(state)
        if self.is_main:
            atomic_write_json(self.out / "selection.json", {"select_by": self.cfg.select_by,
                                                            "best_epoch": state["best_epoch"], "best": state["best"],
                                                            "history": state["history"]})
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


def train_config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


# ------------------------------------------------------------------------------ method state


METHOD_STATE = "method_state.pt"  # in a saved model folder: the method's own trained parameters


def save_method_state(method: Method, model_dir: Path, state: dict | None = None) -> Path | None:
    """Write ``model_dir/METHOD_STATE`` (method name, config, ``state_dict`` — or ``state``, e.g. gathered from
    the processes) if the method has any state; the file holds tensors, strings and numbers only, so it loads
    with ``torch.load(weights_only=True)``."""
    state = method.state_dict() if state is None else state
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
