"""Vanilla KD — token-level distillation between a teacher and a student that share one vocabulary
(Hinton et al. 2015; the divergences of DSKD's "various_divergence", docs/methods.md "Vanilla KD")::

    L = (1 − α)·CE + α·Σ_i D_τ(p_t,i ‖ p_s,i)

over the response positions, D one of ``dwakd.losses.divergences.DIVERGENCES`` (fkl, rkl, js, skl, srkl, akl),
both logit sets divided by τ. The teacher reads the student's token ids (``needs_teacher_tokens = False``), so
the vocabularies must be identical: ``__init__`` fails otherwise and names the cross-tokenizer methods to use.
When the heads are padded beyond the tokenizer (common for real checkpoints), the logits are compared on the
first ``len(tokenizer)`` entries. Logged terms (token-summed): ``ce``, ``kd``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dwakd.align.responses import response_mask
from dwakd.errors import ConfigError
from dwakd.losses.divergences import divergence, token_ce
from dwakd.methods.base import Method, check_kd, require_teacher
from dwakd.models import lm_head_weight
from dwakd.registry import cross_tokenizer_methods, register


@dataclass
class VanillaKDConfig:
    """Vanilla KD options (DSKD scripts/*/vanilla_kd_*.sh)."""

    kd_rate: float = 0.5  # α (KD_RATE=0.5)
    temperature: float = 2.0  # τ (KD_TEMP=2.0)
    divergence: str = "fkl"  # D (KD_OBJ="forward_kl")

    def validate(self, where: str) -> None:
        check_kd(self, where)


def _alternatives() -> str:
    """The registered cross-tokenizer methods (``dwakd.registry.cross_tokenizer_methods``), listed in a sentence."""
    names = cross_tokenizer_methods()
    return f"{', '.join(names[:-1])} or {names[-1]}"


def require_same_vocabulary(name: str, student, teacher, student_tokenizer=None, teacher_tokenizer=None) -> int:
    """Fail at start-up (``ConfigError`` naming the method, what it expected and the cross-tokenizer methods to
    use instead) unless the teacher and the student share one vocabulary: with both tokenizers, identical
    ``get_vocab()`` maps; without them, LM heads of the same number of rows. Returns the width of the logits the
    two share: ``len(tokenizer)`` (a head padded beyond its tokenizer has more rows), else the head rows."""
    require_teacher(name, teacher)
    if student_tokenizer is not None and teacher_tokenizer is not None:
        if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise ConfigError(
                f"{name}: needs a teacher and a student with the same vocabulary (the teacher reads the "
                f"student's token ids), but the two tokenizers differ ({len(student_tokenizer)} vs "
                f"{len(teacher_tokenizer)} tokens); use a cross-tokenizer method instead: {_alternatives()}")
        return len(student_tokenizer)
    vs, vt = lm_head_weight(student).size(0), lm_head_weight(teacher).size(0)
    if vs != vt:
        raise ConfigError(f"{name}: needs the same vocabulary, but the student head has {vs} rows and "
                          f"the teacher head {vt}; use a cross-tokenizer method instead: {_alternatives()}")
    return vs


@register
class VanillaKD(Method):
    """Same-vocabulary logit KD (see the module docstring)."""

    name = "vanilla_kd"
    Config = VanillaKDConfig
    citation = "Hinton et al. 2015, 'Distilling the Knowledge in a Neural Network', arXiv 1503.02531."
    needs_teacher = True
    needs_teacher_tokens = False
    #: teacher and student share one vocabulary (the teacher reads the student's token ids)
    same_vocabulary = True

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        self.width = require_same_vocabulary(self.name, student, teacher, student_tokenizer, teacher_tokenizer)

    on_policy = True  # the KD term reads any batch; the student's samples need no second tokenisation

    def ce_weight(self) -> float:
        return 1.0 - self.cfg.kd_rate

    def kd_loss(self, batch, student_out, teacher_out):
        """α·Σ_i D_τ(p_t,i ‖ p_s,i) and its log (``Method.kd_loss``)."""
        cfg = self.cfg
        w = self.width
        kd = divergence(cfg.divergence, student_out.logits[..., :w], teacher_out.logits[..., :w],
                        response_mask(batch["student"]["labels"]), cfg.temperature)
        return cfg.kd_rate * kd, {"kd": kd.detach()}

    def loss(self, batch, student_out, teacher_out):
        ce = token_ce(student_out.logits, batch["student"]["labels"])
        kd, logs = self.kd_loss(batch, student_out, teacher_out)
        return (1.0 - self.cfg.kd_rate) * ce + kd, {"ce": ce.detach(), **logs}
