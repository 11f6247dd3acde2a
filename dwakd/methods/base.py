"""The method contract: every distillation method is one small class built on ``Method``.

A method declares its ``Config`` (a dataclass whose defaults are the paper's, each with its source), a
citation, which model outputs it needs, creates its trainable parts (projectors, discriminators) in
``__init__``, and computes ``loss(batch, student_out, teacher_out)``. The training loop runs each model's
forward once per step and hands the outputs over; the method never calls a model itself.

``loss`` returns the **token-summed** loss and a dict of token-summed terms; the loop divides both by the
number of response tokens in the whole (accumulated, all-process) batch, so every term is a per-token mean
over the global batch (DSKD's normalisation) and gradient accumulation / data parallelism leave it unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from dwakd.config import check_options, option_fields
from dwakd.errors import ConfigError
from dwakd.models import LMOutput

__all__ = ["ConfigError", "Method", "build_config"]


def build_config(cls: type, overrides: dict[str, Any] | None, where: str) -> Any:
    """Instantiate the dataclass ``cls`` from ``overrides``; unknown keys, wrong types and values outside a
    field's fixed choices name the key (``dwakd.config.check_options``: the same check as the dry run's)."""
    overrides = dict(overrides or {})
    check_options(where, overrides, option_fields(cls), cls.__name__)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in overrides.items():
        if isinstance(fields[k].default, float) and isinstance(v, int):
            overrides[k] = float(v)
    cfg = cls(**overrides)
    if hasattr(cfg, "validate"):
        cfg.validate(where)
    return cfg


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``loss``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    citation: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False
    #: which of ``LMOutput``'s optional fields ("hidden", "embeds") each side needs
    student_outputs: ClassVar[frozenset[str]] = frozenset()
    teacher_outputs: ClassVar[frozenset[str]] = frozenset()
    #: does the method read the teacher's tokenisation of each sample (cross-tokenizer batches)?
    needs_teacher_tokens: ClassVar[bool] = False
    #: what the method trains on: "gold" (the data's responses) or "teacher" (``dwakd generate``'s teacher
    #: samples, passed to ``dwakd train --train-file``; the workflow does it for the runs of such methods)
    train_data: ClassVar[str] = "gold"
    #: readable names of the loss terms that ``loss`` logs (term → label): the panel titles of the training-curve
    #: figure (``dwakd figures``), over ``dwakd.figures.TERM_TITLES``; a term without one keeps that title
    term_labels: ClassVar[dict[str, str]] = {}
    #: which teacher logits the loss reads: "all" positions, or only the "response" positions (then the loop
    #: asks the teacher's forward for those rows alone, ``LMOutput.rows``; read them with ``logits_at``)
    teacher_logit_rows: ClassVar[str] = "all"
    #: a method whose alignment depends on the tokens only may define
    #: ``token_pairs(student_labels: list[int], teacher_labels: list[int]) -> list[tuple[int, int]]`` (the
    #: aligned (student, teacher) logit positions of one sample): the loop then computes it once per sample with
    #: the data and hands the lists to ``loss`` as ``batch["pairs"]``

    def __init__(self, cfg, student: nn.Module, teacher: nn.Module | None = None,
                 student_tokenizer=None, teacher_tokenizer=None):
        super().__init__()
        self.cfg = cfg

    def loss(self, batch: dict, student_out: LMOutput, teacher_out: LMOutput | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def on_step(self, progress: float) -> None:
        """Called before each optimiser step with the training progress in [0, 1] (for schedules)."""
