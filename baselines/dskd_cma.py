"""DSKD-CMA — dual-space KD with cross-model attention (Zhang et al., EMNLP 2024, arXiv 2406.17328), for a
teacher and a student with different vocabularies.

With the cross-model attention of ``dwakd.align.cma`` (queries from the student's index embeddings
``[e_s(x); e_s(y)]``, keys ``N([e_t(x); e_t(y)])``, values ``P_t2s(N(h_t) + N(e_t(y)))`` and ``P_s2t(h_s)``),
over the response positions i (student) and j (teacher)::

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

Deviations (see ``dwakd.align.cma``): N uses one std per sequence over its response positions (DSKD: one std
over the whole batch tensor, padding included); masked attention weights are exactly zero and rows of
non-response student positions are zero (DSKD: −1e5 added to the scores); ``e(y)`` looks up the pad id where
the target is −100 (DSKD: id 0). None of these changes a response position's value in an unpadded batch
except through N's std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from baselines._common import check_kd, pad_id, require_teacher, response_mask
from dwakd.align.cma import CMAOutput, CrossModelAttention, index_embeddings, next_token_targets
from dwakd.losses.divergences import divergence, head_ce, head_divergence, token_ce
from dwakd.methods.base import Method
from dwakd.models import lm_head_weight
from dwakd.registry import register


@dataclass
class DSKDCMAConfig:
    """DSKD-CMA options (docs/methods.md "DSKD-CMA"; DSKD scripts/gpt2/dskd_cma_gpt2_base.sh)."""

    kd_rate: float = 0.5  # α (script: KD_RATE=0.5)
    temperature: float = 2.0  # τ (script: KD_TEMP=2.0)
    divergence: str = "fkl"  # D of L_kd_stu (script: KD_OBJ="forward_kl")

    def validate(self, where: str) -> None:
        check_kd(self, where)


@dataclass
class CMATerms:
    """The DSKD-CMA terms of one micro-batch (token-summed) and what other methods build on."""

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
    kd_stu_pos: torch.Tensor | None = None  # [N_s] unmasked D_τ(p_t2s ‖ p_s) per position (``per_position``)
    kd_tea_pos: torch.Tensor | None = None  # [N_t] KL_τ(p_t ‖ p_s2t) per position (``per_position``)
    student_rows: torch.Tensor | None = None  # [N_s, V_s] the student's logits at its response positions
    teacher_rows: torch.Tensor | None = None  # [N_t, V_t] the teacher's logits at its response positions
    # (z_s2t = (A_s2t V_s) · W_tᵀ [N_t, V_t] is not kept: L_kd_tea forms it block by block, head_divergence)

    def logs(self) -> dict[str, torch.Tensor]:
        return {"ce": self.ce.detach(), "ce_t2s": self.ce_t2s.detach(), "kd_stu": self.kd_stu.detach(),
                "kd_tea": self.kd_tea.detach(), "t2s_acc": self.t2s_acc.detach()}


def dual_space_cma_terms(cma: CrossModelAttention, student, teacher, student_pad: int, teacher_pad: int,
                         batch: dict, student_out, teacher_out, *, divergence_name: str, temperature: float,
                         return_attention: bool = False, per_position: bool = False) -> CMATerms:
    """Compute DSKD-CMA's terms (module docstring) for one micro-batch; shared with DSKD-CMA-GA and DWA-KD.

    ``student`` / ``teacher``: the models (their embedding tables and LM heads are read, never called);
    ``*_out``: their ``LMOutput`` (hidden states required; ``embeds`` reused when present).
    """
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
    stu_pos = tea_pos = None
    if per_position:
        stu_pos = divergence(divergence_name, s_rows, z_t2s, torch.ones_like(acc), temperature, reduction="none")
        tea_pos = head_divergence("fkl", h_s2t, w_t, t_rows, temperature, reduction="none")
        kd_stu, kd_tea = (stu_pos * acc).sum(), tea_pos.sum()
    else:
        kd_stu = divergence(divergence_name, s_rows, z_t2s, acc, temperature)
        kd_tea = head_divergence("fkl", h_s2t, w_t, t_rows, temperature)
    return CMATerms(ce=ce, ce_t2s=ce_t2s, kd_stu=kd_stu, kd_tea=kd_tea, t2s_acc=acc.sum().float(), cma=out,
                    student_mask=smask, teacher_mask=tmask, z_t2s=z_t2s, acc=acc, kd_stu_pos=stu_pos,
                    kd_tea_pos=tea_pos, student_rows=s_rows, teacher_rows=t_rows)


def model_dims(student, teacher) -> tuple[int, int]:
    """(d_s, d_t): the hidden sizes the LM heads read."""
    return lm_head_weight(student).size(1), lm_head_weight(teacher).size(1)


@register
class DSKDCMA(Method):
    """DSKD with cross-model attention (see the module docstring)."""

    name = "dskd_cma"
    Config = DSKDCMAConfig
    citation = ("Zhang et al., 'Dual-Space Knowledge Distillation for Large Language Models', EMNLP 2024, "
                "arXiv 2406.17328.")
    needs_teacher = True
    needs_teacher_tokens = True
    teacher_logit_rows = "response"
    student_outputs: ClassVar[frozenset[str]] = frozenset({"hidden", "embeds"})
    teacher_outputs: ClassVar[frozenset[str]] = frozenset({"hidden", "embeds"})

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        require_teacher(self.name, teacher)
        self._models = (student, teacher)  # a tuple: not registered, so the models stay out of parameters()
        self.pads = (pad_id(student_tokenizer, student), pad_id(teacher_tokenizer, teacher))
        d_s, d_t = model_dims(student, teacher)
        self.cma = CrossModelAttention(d_s, d_t, bias=True)  # DSKD v1: nn.Linear with bias

    def terms(self, batch, student_out, teacher_out, return_attention: bool = False) -> CMATerms:
        return dual_space_cma_terms(self.cma, *self._models, *self.pads, batch, student_out, teacher_out,
                                    divergence_name=self.cfg.divergence, temperature=self.cfg.temperature,
                                    return_attention=return_attention)

    def loss(self, batch, student_out, teacher_out):
        t = self.terms(batch, student_out, teacher_out)
        a = self.cfg.kd_rate
        loss = (1.0 - a) * t.ce + a * (t.ce_t2s + t.kd_stu + t.kd_tea)
        return loss, t.logs()
