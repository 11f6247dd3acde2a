"""A configured run, built from the config and trained: the library side of ``dwakd train``.

``build_run`` resolves a run of the config (``runs.<name>``) on one pair into a ``Run``: the registered method
class, its Config, the training settings (the profile's ``train``, then the pair's, then the run's) and the pair's
model entries, every setting checked (``dwakd.settings.from_dict``). ``load_pair_model`` sets a model folder up as
a pair's model entry says; ``train_run`` trains a run into its folder. ``dwakd train``, ``dwakd attention``, the
benchmarks and the tests build runs the same way.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwakd import config as C
from dwakd.errors import ConfigError, DataError
from dwakd.settings import from_dict

if TYPE_CHECKING:
    from dwakd.methods.base import Method
    from dwakd.train import TrainConfig

__all__ = ["Run", "build_run", "load_pair_model", "train_run"]


@dataclass(frozen=True)
class Run:
    """A configured run on one pair."""

    name: str  # the run's key in ``runs``
    title: str  # its row title in the tables (``runs.<name>.title``; default the name)
    method: type[Method]  # the registered method class
    method_config: Any  # an instance of ``method.Config``
    train_config: TrainConfig
    pair: str  # the pair's name
    pair_spec: dict  # its entry of ``pairs`` (``teacher``, ``student``, ...)
    profile: str  # the profile it was resolved under


def build_run(cfg: dict, name: str, pair: str | None = None, *, vocab_map: str | Path | None = None,
              max_steps: int = 0) -> Run:
    """The run ``name`` of ``cfg`` on ``pair`` (default: the profile's only pair). ``vocab_map``: a vocabulary-map
    file for a method that reads one (``Method.needs_vocab_map``; ``dwakd train --vocab-map``); ``max_steps``:
    stop after that many optimiser steps (0: the configured schedule; ``--max-steps``)."""
    from dwakd.registry import available, get_method
    from dwakd.train import TrainConfig, check_on_policy

    spec = C.run_spec(cfg, name)
    if spec["method"] not in available():
        raise ConfigError(C.unknown_method(name, spec["method"], available()))
    cls = get_method(spec["method"])
    mcfg = from_dict(cls.Config, spec.get("config"), f"runs.{name}.config")
    tcfg = from_dict(TrainConfig, C.train_overrides(cfg, name, pair), f"runs.{name}.train")
    check_on_policy(cls, tcfg, f"runs.{name}.train")
    if vocab_map is not None:
        if not cls.needs_vocab_map:
            raise ConfigError(f"--vocab-map: run {name} (method {cls.name}) takes no vocabulary map")
        mcfg = dataclasses.replace(mcfg, vocab_map=str(vocab_map))
    if max_steps:
        tcfg = dataclasses.replace(tcfg, max_steps=max_steps)
    pname = C.pair_name(cfg, pair)
    return Run(name=name, title=spec.get("title", name), method=cls, method_config=mcfg, train_config=tcfg,
               pair=pname, pair_spec=C.pair(cfg, pname), profile=cfg["profile"])


def load_pair_model(folder: Path, spec: dict, role: str, device, where: str):
    """``(model, tokenizer)`` of ``folder`` set up as the pair's model entry ``spec`` says: ``role`` "teacher"
    frozen in eval mode in ``spec.dtype`` (a fine-tuned teacher's LoRA is already merged into its folder);
    "trained" with gradient checkpointing and LoRA when asked. Trained weights stay float32 (bf16 compute comes
    from the Trainer's autocast on GPU, DSKD's bf16 mixed precision); ``spec.dtype`` applies to frozen weights:
    a teacher, the base of a LoRA model."""
    from dwakd.models import ModelSettings, load_for_training, load_model, load_tokenizer

    names = {f.name for f in dataclasses.fields(ModelSettings)}
    settings = from_dict(ModelSettings, {k: spec[k] for k in names if k in spec}, where)
    if role == "teacher":
        model = load_model(folder, dtype=settings.torch_dtype).requires_grad_(False).eval()
    else:
        if settings.lora is None:
            settings = dataclasses.replace(settings, dtype="float32")
        model = load_for_training(folder, settings, where=where)
    return model.to(device), load_tokenizer(folder)


def train_run(run: Run, models: Path, train_file: Path, dev_file: Path, out: Path, resume: bool = False,
              log=print) -> None:
    """Train ``run`` on the records of ``train_file`` into ``out``: the pair's ``models/student_base`` (and
    ``models/teacher`` when the method distils from one), dev-set checkpoint selection on ``dev_file`` (read only
    when ``select_by`` asks for it). The run trains in ``out.partial/`` and the finished attempt replaces ``out/``
    as a whole (model, train_log.jsonl, selection.json, resolved_config.yaml and the receipt out/model.sha256,
    the workflow's output): an attempt that fails (a NaN, a crash, a kill) leaves the last complete result in
    ``out/`` as it was. Under ``accelerate launch`` every process calls it; the main process writes."""
    import torch

    from dwakd.data import load_jsonl
    from dwakd.files import RECEIPT, prepare_staging, publish_run, staging_dir
    from dwakd.generate import check_generated
    from dwakd.train import Trainer, make_dev_scorer, process_state

    cls, tcfg = run.method, run.train_config
    records = load_jsonl(train_file)
    if cls.train_data == "teacher":
        check_generated(records, f"run {run.name} (method {cls.name}): {train_file}")
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    proc = process_state()  # one process, or one of `accelerate launch`'s: its device, whether it writes
    models = Path(models)
    student, stok = load_pair_model(models / "student_base", run.pair_spec["student"], "trained", proc.device,
                                    f"pairs.{run.pair}.student")
    teacher = ttok = None
    if cls.needs_teacher:
        teacher, ttok = load_pair_model(models / "teacher", run.pair_spec["teacher"], "teacher", proc.device,
                                        f"pairs.{run.pair}.teacher")
    torch.manual_seed(tcfg.seed)  # the method's own parameters (projectors) start the same in every run
    method = cls(run.method_config, student, teacher, stok, ttok).to(proc.device)
    dev_scorer = make_dev_scorer(load_jsonl(dev_file), stok, tcfg) if tcfg.select_by != "last" else None
    out = Path(out)
    staging = prepare_staging(out) if proc.is_main_process else staging_dir(out)
    proc.wait_for_everyone()
    if proc.is_main_process:
        C.dump({"run": run.name, "method": cls.name, "citation": cls.citation,
                "method_config": dataclasses.asdict(run.method_config), "train": dataclasses.asdict(tcfg),
                "train_file": str(train_file), "train_records": len(records),
                "pair": run.pair_spec, "profile": run.profile}, staging / "resolved_config.yaml")
    t0 = time.time()
    try:
        Trainer(method, student, teacher, stok, ttok, tcfg, staging, dev_scorer).fit(records, resume=resume)
    except (FloatingPointError, DataError, FileExistsError) as e:
        kept = (f"; {out} still holds the last complete result (model, train_log.jsonl, selection.json)"
                if (out / "model").is_dir() else "")
        raise type(e)(f"{e}{kept}") from None
    if proc.is_main_process:
        receipt = publish_run(staging, out, f"snakemake --cores all -f {out / RECEIPT} (with this run's --config)")
        log(f"trained {run.name} in {time.time() - t0:.1f}s -> {out / 'model'} ({receipt.name} written)")
