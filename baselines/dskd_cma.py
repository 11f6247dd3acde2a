"""DSKD-CMA — dual-space KD with cross-model attention (Zhang et al., EMNLP 2024, arXiv 2406.17328), for a
teacher and a student with different vocabularies.

With the cross-model attention of ``dwakd.align.cma`` (queries from the student's index embeddings
``[e_s(x); e_s(y)]``, keys ``N([e_t(x); e_t(y)])``, values ``P_t2s(N(h_t) + N(e_t(y)))`` and ``P_s2t(h_s)``),
over the response positions i (student) and j (teacher), the dual-space terms (``dwakd.methods.dual_space``,
shared with DSKD-CMA-GA and DWA-KD) and the loss::

    z_t2s = (A_t2s V_t) · W_s^headᵀ            (student head detached)
    z_s2t = (A_s2t V_s) · W_t^headᵀ            (teacher head, frozen)
    L_ce_t2s = Σ_i CE(z_t2s,i, y_i)             trains P_query and P_t2s
    L_kd_stu = Σ_i 1[argmax z_t2s,i = y_i] · D_τ(stopgrad p_t2s,i ‖ p_s,i)
    L_kd_tea = Σ_j KL_τ(p_t,j ‖ p_s2t,j)        trains P_s2t, P_query (through A_s2t) and the student (h_s)
    L = (1 − α)·CE + α·(L_ce_t2s + L_kd_stu + L_kd_tea)

D is the configured divergence (DSKD's scripts: forward KL), both logit sets divided by τ; L_kd_tea is the
forward KL whatever D (as in DSKD's code). The projectors are the method's own parameters, so the training
loop gives them their own AdamW group (``TrainConfig.projector_lr``, DSKD: 1e-3). The student's index
embeddings are detached (DSKD's code): the CMA terms train the student only through ``h_s`` and L_kd_stu.

Logged terms (token-summed): ``ce``, ``ce_t2s``, ``kd_stu``, ``kd_tea``, ``t2s_acc`` (the number of positions
where argmax z_t2s is the gold token: the projector's accuracy after the loop's division).

On-policy distillation (``on_policy``; docs/methods.md "On-policy distillation"): ``kd_loss`` is
α·(L_ce_t2s + L_kd_stu + L_kd_tea) alone, and on a batch of the student's samples y is the teacher's argmax at
the ETA-aligned position (``dwakd.methods.dual_space.teacher_argmax_targets``), as in DSKD v2's on-policy CMA.

Deviations (see ``dwakd.align.cma``): N uses one std per sequence over its response positions (DSKD: one std
over the whole batch tensor, padding included); masked attention weights are exactly zero and rows of
non-response student positions are zero (DSKD: −1e5 added to the scores); ``e(y)`` looks up the pad id where
the target is −100 (DSKD: id 0). None of these changes a response position's value in an unpadded batch
except through N's std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dwakd.methods.base import Method, check_kd
from dwakd.methods.dual_space import CMATerms, CrossModelAttentionMixin, cma_terms
from dwakd.registry import register


@dataclass
class DSKDCMAConfig:
    """DSKD-CMA options (docs/methods.md "DSKD-CMA"; DSKD scripts/gpt2/dskd_cma_gpt2_base.sh)."""

    kd_rate: float = 0.5  # α (script: KD_RATE=0.5)
    temperature: float = 2.0  # τ (script: KD_TEMP=2.0)
    divergence: str = "fkl"  # D of L_kd_stu (script: KD_OBJ="forward_kl")

    def validate(self, where: str) -> None:
        check_kd(self, where)


@register
class DSKDCMA(CrossModelAttentionMixin, Method):
    """DSKD with cross-model attention (see the module docstring)."""

    name = "dskd_cma"
    Config = DSKDCMAConfig
    citation = ("Zhang et al., 'Dual-Space Knowledge Distillation for Large Language Models', EMNLP 2024, "
                "arXiv 2406.17328.")

    on_policy = True

    def terms(self, batch, student_out, teacher_out, return_attention: bool = False,
              with_ce: bool = True) -> CMATerms:
        return cma_terms(self.cma, *self._models, *self.pads, batch, student_out, teacher_out,
                         divergence_name=self.cfg.divergence, temperature=self.cfg.temperature,
                         return_attention=return_attention, targets=self.t2s_targets(batch, teacher_out),
                         with_ce=with_ce)

    def ce_weight(self) -> float:
        return 1.0 - self.cfg.kd_rate

    def kd_part(self, t: CMATerms) -> torch.Tensor:
        """α·(L_ce_t2s + L_kd_stu + L_kd_tea): the KD part of the loss."""
        return self.cfg.kd_rate * (t.ce_t2s + t.kd_stu + t.kd_tea)

    def kd_loss(self, batch, student_out, teacher_out):
        t = self.terms(batch, student_out, teacher_out, with_ce=False)
        logs = t.logs()
        del logs["ce"]
        return self.kd_part(t), logs

    def loss(self, batch, student_out, teacher_out):
        t = self.terms(batch, student_out, teacher_out)
        loss = (1.0 - self.cfg.kd_rate) * t.ce + self.kd_part(t)
        return loss, t.logs()
