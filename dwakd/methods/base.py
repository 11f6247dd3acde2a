"""The method contract: every distillation method is one small class built on ``Method``.

A method declares its ``Config`` (a dataclass whose defaults are the paper's, each with its source; built from
a run's ``config`` by ``dwakd.settings.from_dict``, its ``validate`` checking the ranges with ``check_kd`` and
``dwakd.settings.check_range`` / ``check_choice``), a citation, its capabilities, which model outputs it needs,
creates its trainable parts (projectors, discriminators) in ``__init__``, and computes
``loss(batch, student_out, teacher_out)``. The training loop runs each model's forward once per step and hands
the outputs over; the method never calls a model itself.

``loss`` returns the **token-summed** loss and a dict of token-summed terms; the loop divides both by the
number of response tokens in the whole (accumulated, all-process) batch, so every term is a per-token mean
over the global batch (DSKD's normalisation) and gradient accumulation / data parallelism leave it unchanged.
A method that supports on-policy distillation (``on_policy``) also splits its loss into the gold CE and a
KD-only ``kd_loss`` (``ce_weight``); the loop then divides the KD part of an on-policy step by the response
tokens of the batches the KD part read (docs/methods.md "On-policy distillation").
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from dwakd.errors import ConfigError
from dwakd.losses.divergences import DIVERGENCES
from dwakd.models import LMOutput
from dwakd.settings import check_choice, check_range

__all__ = ["Method", "check_kd", "require_offsets", "require_teacher", "require_tokenizers"]


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
    # Capabilities: what the workflow, ``dwakd train`` and ``dwakd attention`` ask of a method (through
    # ``dwakd.registry.specs`` where torch must not be imported), never which method it is.
    #: what the method trains on: "gold" (the data's responses) or "teacher" (``dwakd generate``'s teacher
    #: samples, passed to ``dwakd train --train-file``; the workflow does it for the runs of such methods)
    train_data: ClassVar[str] = "gold"
    #: does it read a teacher → student vocabulary map (``dwakd vocab-map``; its Config's ``vocab_map`` field,
    #: set by ``dwakd train --vocab-map``, which the workflow passes to the runs of such methods)?
    needs_vocab_map: ClassVar[bool] = False
    #: does it compute a cross-model attention, ``terms(batch, student_out, teacher_out, return_attention=True)
    #: .cma.a_t2s`` (``dwakd.methods.dual_space``)? ``dwakd attention`` draws and probes its maps
    cross_model_attention: ClassVar[bool] = False
    #: can it distil on the student's own samples (``TrainConfig.on_policy_ratio``; docs/methods.md "On-policy
    #: distillation")? Such a method implements ``kd_loss`` and ``ce_weight``: the loop then takes the CE on the
    #: gold batch and the KD part on the batch of samples
    on_policy: ClassVar[bool] = False
    CAPABILITIES: ClassVar[tuple[str, ...]] = ("train_data", "needs_vocab_map", "cross_model_attention", "on_policy")
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

    def kd_loss(self, batch: dict, student_out: LMOutput, teacher_out: LMOutput | None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The distillation part of ``loss`` alone (methods with ``on_policy``): the token-summed KD terms as they
        enter the loss, with their weights (α·KD), and their token-summed logs (no ``ce``), so that ``loss`` is
        ``ce_weight()·CE + kd_loss`` on the same batch. The loop calls it on a batch whose responses are the
        student's samples (``batch["on_policy"]`` is True: there is no gold response, and a method that reads one
        uses the teacher's instead) while the CE stays on the gold batch."""
        raise NotImplementedError(f"{self.name}: no kd_loss (the method does not support on-policy distillation)")

    def ce_weight(self) -> float:
        """The weight of the gold CE in ``loss`` (``1 − α`` for most methods; methods with ``on_policy``)."""
        raise NotImplementedError(f"{self.name}: no ce_weight (the method does not support on-policy distillation)")

    def on_step(self, progress: float) -> None:
        """Called before each optimiser step with the training progress in [0, 1] (for schedules)."""


# ------------------------------------------------------------------------------------ start-up checks

def require_teacher(name: str, teacher) -> None:
    if teacher is None:
        raise ConfigError(f"{name}: needs a teacher model (the method distils from one); got none")


def require_tokenizers(name: str, student_tokenizer, teacher_tokenizer, why: str) -> None:
    """Fail at start-up when a method that reads token strings was built without both tokenizers."""
    missing = [r for r, t in (("student", student_tokenizer), ("teacher", teacher_tokenizer)) if t is None]
    if missing:
        raise ConfigError(f"{name}: needs both tokenizers ({why}); the {' and '.join(missing)} tokenizer is "
                          f"missing")


def require_offsets(name: str, tokenizer, role: str, instead: str) -> None:
    """Fail at start-up unless ``tokenizer`` can return character offsets (a fast tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{name}: the {role} tokenizer ({type(tokenizer).__name__}) cannot return character offsets "
            f"(return_offsets_mapping needs a fast, Rust-backed tokenizer); {instead}")


# ------------------------------------------------------------------------------------ config checks

def check_kd(cfg, where: str) -> None:
    """The fields every KD config shares (``validate``): kd_rate ∈ [0, 1], temperature > 0, a known divergence."""
    if hasattr(cfg, "kd_rate"):
        check_range(where, "kd_rate", cfg.kd_rate, 0.0, 1.0)
    if hasattr(cfg, "temperature"):
        check_range(where, "temperature", cfg.temperature, 0.0, lo_open=True)
    if hasattr(cfg, "divergence"):
        check_choice(where, "divergence", cfg.divergence, DIVERGENCES)
