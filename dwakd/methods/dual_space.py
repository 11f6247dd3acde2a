"""Dual-space KD over a cross-model attention (DSKD v1, Zhang et al., EMNLP 2024, arXiv 2406.17328): the terms
and the component that DSKD-CMA, DSKD-CMA-GA and DWA-KD share. Not a method: a method *has* a cross-model
attention by mixing ``CrossModelAttentionMixin`` in before ``Method``.

With the cross-model attention of ``dwakd.align.cma`` (``h_t2s = A_t2s V_t``, ``h_s2t = A_s2t V_s``), over the
student's response positions i and the teacher's j (``dwakd.align.responses.response_mask``)::

    z_t2s = h_t2s · W_s^headᵀ            (student head detached)
    z_s2t = h_s2t · W_t^headᵀ            (teacher head, frozen)
    L_ce_t2s = Σ_i CE(z_t2s,i, y_i)       trains P_query and P_t2s
    L_kd_stu = Σ_i 1[argmax z_t2s,i = y_i] · D_τ(stopgrad p_t2s,i ‖ p_s,i)
    L_kd_tea = Σ_j KL_τ(p_t,j ‖ p_s2t,j)  trains P_s2t, P_query (through A_s2t) and the student (h_s)

D is the method's divergence, both logit sets divided by τ; L_kd_tea is the forward KL whatever D (DSKD's code).
``cma_terms`` returns these sums (DSKD-CMA, DSKD-CMA-GA); ``cma_terms_per_position`` also the unmasked
per-position values of both KD terms, for a method that weights them itself (DWA-KD). The student's index
embeddings are detached (DSKD's code): the terms train the student only through ``h_s`` and L_kd_stu.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dwakd.align.cma import CMAOutput, CrossModelAttention, index_embeddings, next_token_targets
from dwakd.align.responses import response_mask
from dwakd.losses.divergences import divergence, head_ce, head_divergence, token_ce
from dwakd.methods.base import require_teacher
from dwakd.models import lm_head_weight, pad_id

__all__ = ["CMATerms", "CrossModelAttentionMixin", "cma_terms", "cma_terms_per_position", "model_dims"]


@dataclass
class CMATerms:
    """The dual-space terms of one micro-batch (token-summed) and what the methods build on."""

    ce: torch.Tensor
    ce_t2s: torch.Tensor
    kd_stu: torch.Tensor
    kd_tea: torch.Tensor
    t2s_acc: torch.Tensor
    cma: CMAOutput
    student_mask: torch.Tensor  # [B, S] response positions
    teacher_mask: torch.Tensor  # [B, T]
    z_t2s: torch.Tensor  # [N_s, V_s] projected-teacher logits at the student's response positions (detached)
    acc: torch.Tensor | None = None  # [N_s] bool: argmax z_t2s is the gold token (L_kd_stu's mask)
    kd_stu_pos: torch.Tensor | None = None  # [N_s] unmasked D_τ(p_t2s ‖ p_s) (``cma_terms_per_position``)
    kd_tea_pos: torch.Tensor | None = None  # [N_t] KL_τ(p_t ‖ p_s2t) (``cma_terms_per_position``)
    student_rows: torch.Tensor | None = None  # [N_s, V_s] the student's logits at its response positions
    teacher_rows: torch.Tensor | None = None  # [N_t, V_t] the teacher's logits at its response positions
    # (z_s2t = (A_s2t V_s) · W_tᵀ [N_t, V_t] is not kept: L_kd_tea forms it block by block, head_divergence)

    def logs(self) -> dict[str, torch.Tensor]:
        return {"ce": self.ce.detach(), "ce_t2s": self.ce_t2s.detach(), "kd_stu": self.kd_stu.detach(),
                "kd_tea": self.kd_tea.detach(), "t2s_acc": self.t2s_acc.detach()}


def _attend(cma: CrossModelAttention, student, teacher, student_pad: int, teacher_pad: int, batch: dict,
            student_out, teacher_out, return_attention: bool) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Everything but the two KD terms: ``(CMATerms fields, h_s2t [N_t, d_t], W_t^head)``."""
    sb, tb = batch["student"], batch["teacher"]
    sl, tl = sb["labels"], tb["labels"]
    smask, tmask = response_mask(sl), response_mask(tl)
    s_emb, t_emb = student.get_input_embeddings(), teacher.get_input_embeddings()
    with torch.no_grad():
        s_ex, s_ey = index_embeddings(s_emb, sb["input_ids"], sl, student_pad,
                                      None if student_out.embeds is None else student_out.embeds.detach())
        t_ex, t_ey = index_embeddings(t_emb, tb["input_ids"], tl, teacher_pad, teacher_out.embeds)
    out = cma(student_ex=s_ex, student_ey=s_ey, teacher_ex=t_ex, teacher_ey=t_ey,
              teacher_hidden=teacher_out.hidden, student_hidden=student_out.hidden,
              student_mask=smask, teacher_mask=tmask, return_attention=return_attention)

    ce = token_ce(student_out.logits, sl)
    w_s = lm_head_weight(student).detach()
    w_t = lm_head_weight(teacher).detach()
    y_s = next_token_targets(sl, student_pad)[smask]  # [N_s]
    h_t2s = out.h_t2s[smask]  # [N_s, d_s]
    ce_t2s = head_ce(h_t2s, w_s, y_s)  # the [N_s, V_s] logits formed block by block (dwakd.losses.chunked)
    with torch.no_grad():  # z_t2s is read detached only: the target of L_kd_stu, its mask, DWA-KD's gate
        z_t2s = h_t2s.to(w_s.dtype) @ w_s.T  # [N_s, V_s]
    acc = z_t2s.argmax(-1) == y_s
    s_rows = student_out.logits[smask]  # [N_s, V_s]
    t_rows = teacher_out.logits_at(tmask)  # [N_t, V_t] (no copy when the teacher kept its response rows only)
    h_s2t = out.h_s2t[tmask]  # [N_t, d_t]; z_s2t = h_s2t · W_tᵀ is formed block by block, never whole
    fields = dict(ce=ce, ce_t2s=ce_t2s, t2s_acc=acc.sum().float(), cma=out, student_mask=smask, teacher_mask=tmask,
                  z_t2s=z_t2s, acc=acc, student_rows=s_rows, teacher_rows=t_rows)
    return fields, h_s2t, w_t


def cma_terms(cma: CrossModelAttention, student, teacher, student_pad: int, teacher_pad: int, batch: dict,
              student_out, teacher_out, *, divergence_name: str, temperature: float,
              return_attention: bool = False) -> CMATerms:
    """The terms of the module docstring for one micro-batch, L_kd_stu masked by the accuracy.

    ``student`` / ``teacher``: the models (their embedding tables and LM heads are read, never called);
    ``*_out``: their ``LMOutput`` (hidden states required; ``embeds`` reused when present); ``*_pad``: the pad
    ids ``e(y)`` looks up where there is no target; ``return_attention``: keep ``A_t2s`` and ``A_s2t``.
    """
    f, h_s2t, w_t = _attend(cma, student, teacher, student_pad, teacher_pad, batch, student_out, teacher_out,
                            return_attention)
    kd_stu = divergence(divergence_name, f["student_rows"], f["z_t2s"], f["acc"], temperature)
    kd_tea = head_divergence("fkl", h_s2t, w_t, f["teacher_rows"], temperature)
    return CMATerms(kd_stu=kd_stu, kd_tea=kd_tea, **f)


def cma_terms_per_position(cma: CrossModelAttention, student, teacher, student_pad: int, teacher_pad: int,
                           batch: dict, student_out, teacher_out, *, divergence_name: str, temperature: float,
                           return_attention: bool = False) -> CMATerms:
    """``cma_terms`` (same arguments) with the per-position KD values kept: ``kd_stu_pos [N_s]`` unmasked
    ``D_τ(p_t2s ‖ p_s)`` and ``kd_tea_pos [N_t]`` ``KL_τ(p_t ‖ p_s2t)``, for a method that weights them."""
    f, h_s2t, w_t = _attend(cma, student, teacher, student_pad, teacher_pad, batch, student_out, teacher_out,
                            return_attention)
    acc = f["acc"]
    stu_pos = divergence(divergence_name, f["student_rows"], f["z_t2s"], torch.ones_like(acc), temperature,
                         reduction="none")
    tea_pos = head_divergence("fkl", h_s2t, w_t, f["teacher_rows"], temperature, reduction="none")
    return CMATerms(kd_stu=(stu_pos * acc).sum(), kd_tea=tea_pos.sum(), kd_stu_pos=stu_pos, kd_tea_pos=tea_pos, **f)


def model_dims(student, teacher) -> tuple[int, int]:
    """(d_s, d_t): the hidden sizes the LM heads read."""
    return lm_head_weight(student).size(1), lm_head_weight(teacher).size(1)


class CrossModelAttentionMixin:
    """A method's cross-model attention, mixed in before ``Method`` (``class M(CrossModelAttentionMixin,
    Method)``): DSKD v1's ``CrossModelAttention`` between the student and the teacher as ``self.cma`` (its
    projectors are the method's own parameters: the loop gives them their AdamW group at
    ``TrainConfig.projector_lr``), the two models as ``self._models`` (read, never called; a tuple, so they stay
    out of ``parameters()``) and the pad ids ``e(y)`` looks up as ``self.pads``; pass them to ``cma_terms``.
    Declares the capability (``cross_model_attention``) and the model outputs the terms read."""

    cross_model_attention: ClassVar[bool] = True
    needs_teacher: ClassVar[bool] = True
    needs_teacher_tokens: ClassVar[bool] = True
    teacher_logit_rows: ClassVar[str] = "response"
    student_outputs: ClassVar[frozenset[str]] = frozenset({"hidden", "embeds"})
    teacher_outputs: ClassVar[frozenset[str]] = frozenset({"hidden", "embeds"})

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        require_teacher(self.name, teacher)
        self._models = (student, teacher)
        self.pads = (pad_id(student_tokenizer, student), pad_id(teacher_tokenizer, teacher))
        d_s, d_t = model_dims(student, teacher)
        self.cma = CrossModelAttention(d_s, d_t, bias=True)  # DSKD v1: nn.Linear with bias
