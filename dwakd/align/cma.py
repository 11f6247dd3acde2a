"""Cross-model attention (CMA): the learned soft alignment of DSKD v1 (Zhang et al., EMNLP 2024,
arXiv 2406.17328), shared by DSKD-CMA, DSKD-CMA-GA (arXiv 2603.22056) and DWA-KD (arXiv 2602.21669).

One module, three projectors (docs/methods.md "DSKD-CMA"):

* ``P_query``: Linear(2·d_s → 2·d_t), queries ``Q = P_query([e_s(x); e_s(y)])``;
* ``P_t2s``: Linear(d_t → d_s), teacher values ``V_t = P_t2s(N(h_t) + N(e_t(y)))``;
* ``P_s2t``: Linear(d_s → d_t), student values ``V_s = P_s2t(h_s)``.

Keys have no parameters: ``K = N([e_t(x); e_t(y)])``. With ``d = 2·d_t``::

    A_t2s = softmax_row(Q Kᵀ / √d)   [B, S, T]     h_t2s = A_t2s V_t   [B, S, d_s]
    A_s2t = softmax_row(K Qᵀ / √d)   [B, T, S]     h_s2t = A_s2t V_s   [B, T, d_t]

**Index embeddings** ``[e(x); e(y)]`` (``index_embeddings``): at position k, ``x_k = input_ids[k]`` (the token
the model reads) and ``y_k = labels[k + 1]`` (the token position k predicts, i.e. the target after the causal
shift); ``y_k`` is the pad id where ``labels[k + 1] = −100`` (prompt, padding) and at the last position. The
two ``[B, L, d]`` lookups are concatenated on the feature dimension into ``[B, L, 2d]``. (DSKD's code uses id 0
instead of the pad id; the difference only touches masked positions and, in DSKD, its batch-wide std.)

**Normalisation** ``N(x) = x / std(x)`` (``scale_norm``): one scalar per sequence, the (unbiased) standard
deviation of all features of that sequence's *valid* positions (``mask`` true; for the keys and teacher values,
the teacher positions that can be attended to). Deviation from DSKD's code, which divides by one std over the
whole ``[B, L, d]`` batch tensor, padding and prompt included: there N depends on how much padding a batch
happens to have and on the other samples; here a sample's result is the same whatever batch it is in.

**Masking** (docs/methods.md "DSKD-CMA"): a student position i may attend to teacher position j only if both are
valid (``student_mask[i]`` and ``teacher_mask[j]``; the methods pass the response masks, i.e. positions whose
shifted label is not −100, as DSKD does). Invalid columns are filled with −inf before the softmax, so they get
**exactly zero** weight (DSKD adds −1e5, which underflows to the same 0 in fp32 unless a whole row is masked);
rows of invalid queries (prompt, padding, or a sample without any valid key) are **all zero** instead of a
softmax over masked scores, so they contribute nothing and receive exactly zero gradient. Valid rows sum to 1.
The same rule, transposed, gives ``A_s2t``. Scores and softmax run in fp32 with autocast disabled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

IGNORE = -100

__all__ = ["CMAOutput", "CrossModelAttention", "index_embeddings", "masked_softmax", "next_token_targets",
           "scale_norm"]


def next_token_targets(labels: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``y [B, L]``: ``y[:, k] = labels[:, k + 1]``, with the pad id where that is −100 and at the last position."""
    y = torch.full_like(labels, pad_id)
    y[:, :-1] = labels[:, 1:]
    return y.masked_fill(y == IGNORE, pad_id)


def index_embeddings(embedding: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, pad_id: int,
                     input_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e(x), e(y))``, each ``[B, L, d]``: the input-embedding lookup of the input ids and of the next-token
    targets (``next_token_targets``). ``input_embeds`` (already looked up by the forward pass) is reused for
    ``e(x)`` when given. Concatenate them with ``torch.cat([ex, ey], -1)`` for the CMA index embeddings."""
    ex = embedding(input_ids) if input_embeds is None else input_embeds
    ey = embedding(next_token_targets(labels, pad_id))
    return ex, ey


def scale_norm(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``N(x) = x / std(x)``: ``x [B, L, d]`` divided by one std per sequence, taken over all features of the
    positions where ``mask [B, L]`` is true (unbiased). A sequence with fewer than two valid values, or a zero
    std, is left unscaled. Positions outside the mask are scaled too but never influence the std."""
    m = mask.to(x.dtype).unsqueeze(-1)
    n = m.sum(dim=(1, 2)) * x.size(-1)
    mean = (x * m).sum(dim=(1, 2)) / n.clamp_min(1)
    var = (((x - mean[:, None, None]) ** 2) * m).sum(dim=(1, 2)) / (n - 1).clamp_min(1)
    std = var.sqrt()
    std = torch.where((n >= 2) & (std > 0), std, torch.ones_like(std))
    return x / std[:, None, None]


def masked_softmax(scores: torch.Tensor, row_mask: torch.Tensor, col_mask: torch.Tensor) -> torch.Tensor:
    """Row softmax of ``scores [B, R, C]`` over the columns where ``col_mask [B, C]`` holds.

    Masked columns get exactly 0; rows where ``row_mask [B, R]`` is false, or that have no valid column, are
    exactly 0 everywhere (no NaN). Valid rows sum to 1. Gradients reach only valid (row, column) scores.
    """
    cols = col_mask.bool()[:, None, :]
    rows = row_mask.bool()[:, :, None] & cols.any(-1, keepdim=True)
    s = scores.masked_fill(~cols, float("-inf"))
    s = torch.where(rows, s, torch.zeros_like(s))  # fully masked rows: a harmless uniform row, zeroed below
    return torch.where(rows & cols, torch.softmax(s, dim=-1), torch.zeros_like(s))


@dataclass
class CMAOutput:
    """What ``CrossModelAttention`` computes (S student positions, T teacher positions).

    q [B, S, 2d_t] queries; k [B, T, 2d_t] keys; h_t2s [B, S, d_s]; h_s2t [B, T, d_t] (None without student
    hidden states); a_t2s [B, S, T] and a_s2t [B, T, S] only with ``return_attention=True``; scores [B, S, T]
    the scaled logits ``Q Kᵀ/√(2d_t)`` before masking (fp32; also only with ``return_attention``)."""

    q: torch.Tensor
    k: torch.Tensor
    h_t2s: torch.Tensor
    h_s2t: torch.Tensor | None = None
    a_t2s: torch.Tensor | None = None
    a_s2t: torch.Tensor | None = None
    scores: torch.Tensor | None = None


class CrossModelAttention(nn.Module):
    """DSKD's cross-model attention between a student sequence and a teacher sequence (see the module doc).

    ``bias=True`` is DSKD v1 (nn.Linear with bias); ``bias=False`` matches DSKD v2's bias-free projectors.
    """

    def __init__(self, d_student: int, d_teacher: int, bias: bool = True):
        super().__init__()
        self.d_student, self.d_teacher = d_student, d_teacher
        self.query = nn.Linear(2 * d_student, 2 * d_teacher, bias=bias)
        self.t2s = nn.Linear(d_teacher, d_student, bias=bias)
        self.s2t = nn.Linear(d_student, d_teacher, bias=bias)

    def queries(self, student_ex: torch.Tensor, student_ey: torch.Tensor) -> torch.Tensor:
        """``Q = P_query([e_s(x); e_s(y)])`` [B, S, 2d_t]."""
        x = torch.cat([student_ex, student_ey], dim=-1)
        return self.query(x.to(self.query.weight.dtype))  # bf16 models without autocast: the projector's dtype

    def keys(self, teacher_ex: torch.Tensor, teacher_ey: torch.Tensor, teacher_mask: torch.Tensor) -> torch.Tensor:
        """``K = N([e_t(x); e_t(y)])`` [B, T, 2d_t] (no parameters; detached)."""
        return scale_norm(torch.cat([teacher_ex, teacher_ey], dim=-1).detach().float(), teacher_mask)

    def forward(self, *, student_ex: torch.Tensor, student_ey: torch.Tensor, teacher_ex: torch.Tensor,
                teacher_ey: torch.Tensor, teacher_hidden: torch.Tensor, student_mask: torch.Tensor,
                teacher_mask: torch.Tensor, student_hidden: torch.Tensor | None = None,
                return_attention: bool = False) -> CMAOutput:
        """Both directions of the attention.

        student_ex / student_ey [B, S, d_s] and teacher_ex / teacher_ey [B, T, d_t]: ``e(x)`` and ``e(y)``
        (``index_embeddings``); teacher_hidden [B, T, d_t] last hidden state ``h_t`` (detached here);
        student_hidden [B, S, d_s] ``h_s`` (gradients flow; omit it to skip the s2t direction);
        student_mask [B, S], teacher_mask [B, T]: valid positions (queries, keys, and the std of N).
        """
        q = self.queries(student_ex, student_ey)
        k = self.keys(teacher_ex, teacher_ey, teacher_mask)
        v_t = self.t2s((scale_norm(teacher_hidden.detach(), teacher_mask)
                        + scale_norm(teacher_ey.detach(), teacher_mask)).to(self.t2s.weight.dtype))
        v_s = self.s2t(student_hidden.to(self.s2t.weight.dtype)) if student_hidden is not None else None
        with torch.autocast(device_type=q.device.type, enabled=False):
            scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(2 * self.d_teacher)
            a_t2s = masked_softmax(scores, student_mask, teacher_mask)
            h_t2s = a_t2s @ v_t.float()
            h_s2t = a_s2t = None
            if v_s is not None:
                a_s2t = masked_softmax(scores.transpose(-1, -2), teacher_mask, student_mask)
                h_s2t = a_s2t @ v_s.float()
        if not return_attention:
            return CMAOutput(q=q, k=k, h_t2s=h_t2s, h_s2t=h_s2t)
        return CMAOutput(q=q, k=k, h_t2s=h_t2s, h_s2t=h_s2t, a_t2s=a_t2s, a_s2t=a_s2t, scores=scores)
