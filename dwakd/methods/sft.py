"""SFT: supervised fine-tuning on the gold responses, ``CE = −Σ_i log p_s(y_i)``.

The baseline every distillation method is read against; also used to fine-tune the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

from dwakd.losses.divergences import token_ce
from dwakd.methods.base import Method
from dwakd.registry import register


@dataclass
class SFTConfig:
    """SFT has no hyperparameters of its own (optimiser settings live in the ``train`` section)."""


@register
class SFT(Method):
    name = "sft"
    Config = SFTConfig
    citation = "Supervised fine-tuning (the student baseline of DSKD, Zhang et al., EMNLP 2024)."

    def loss(self, batch, student_out, teacher_out):
        ce = token_ce(student_out.logits, batch["student"]["labels"])
        return ce, {"ce": ce.detach()}
