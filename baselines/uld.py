"""ULD — Universal Logit Distillation (Boizard et al. 2024, arXiv 2402.12030).

Vocabulary-agnostic: compares *sorted* probability vectors, so it needs no token or vocabulary alignment.
Per sample, the student's and the teacher's response positions (each side's own tokenisation) are paired
by rank: the i-th response position of one side with the i-th of the other, for i < min(n_s, n_t)
(the longer response's tail gets no ULD term). With ``p̂ = sort_desc(softmax(z / τ))`` and the shorter
vocabulary zero-padded::

    uld_i = Σ_k |p̂_s,i(k) − p̂_t,i(k)|

Two named variants (``variant``), both at temperature τ = 1 (neither reference code scales the logits):

* ``"dskd"`` (default; DSKD's re-implementation, the numbers of its tables and of DWA-KD's):
  ``L = (1 − α)·CE + α·Σ_i uld_i`` — token-summed like every term here, so after the loop's division by the
  global response-token count ``N``: ``(1 − α)·CE/N + α·Σ uld / N``.
* ``"original"`` (Boizard et al.'s llm-recipes): ``L = CE + 1.5·mean uld`` with the mean taken per sample
  over its paired positions, then over the samples. To keep the token-summed contract the method returns
  ``CE_sum + 1.5 · ū · n`` (ū that mean over the micro-batch, n the micro-batch's response tokens); after the
  loop's division this is exactly ``CE_mean + 1.5·ū`` without gradient accumulation, and the token-weighted
  average of the micro-batch values with it.

Logged terms (token-summed, like the loss): ``ce``; ``uld`` — ``Σ_i uld_i`` for "dskd", ``ū · n`` for
"original" — so that ``loss = (1−α)·ce + α·uld`` resp. ``ce + 1.5·uld`` holds for the logged values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dwakd.align.responses import n_response_tokens, response_mask
from dwakd.losses.chunked import block_rows, rows_for, rowwise
from dwakd.losses.divergences import at_least_fp32, token_ce
from dwakd.methods.base import Method, check_kd, require_teacher
from dwakd.registry import register
from dwakd.settings import check_choice


@dataclass(frozen=True)
class ULDVariant:
    """One named ULD formula: ``L = ce_weight·CE + uld_weight·ULD``."""

    reduce: str  # "sum": Σ_i uld_i (token-summed); "mean": per-sample mean, then mean over samples (× n)
    ce_weight: float | None  # None: 1 − kd_rate
    uld_weight: float | None  # None: kd_rate


#: the named variants, as data
VARIANTS: dict[str, ULDVariant] = {
    "dskd": ULDVariant(reduce="sum", ce_weight=None, uld_weight=None),  # DSKD code: (1−α)·CE + α·Σ uld
    "original": ULDVariant(reduce="mean", ce_weight=1.0, uld_weight=1.5),  # llm-recipes: CE weight 1, ULD 1.5
}


@dataclass
class ULDConfig:
    """ULD options (docs/methods.md "ULD")."""

    variant: str = "dskd"  # DSKD's re-implementation is the default; "original" = Boizard et al.
    kd_rate: float = 0.5  # α of the "dskd" variant (DSKD scripts: KD_RATE=0.5); unused by "original"
    temperature: float = 1.0  # ULD paper and DSKD's code: softmax of the raw logits (no temperature)

    def validate(self, where: str) -> None:
        check_choice(where, "variant", self.variant, VARIANTS)
        check_kd(self, where)


def sorted_probs(logits: torch.Tensor, temperature: float, width: int) -> torch.Tensor:
    """``softmax(logits/τ)`` [N, V] sorted in descending order, zero-padded on the right to ``width`` (the
    reference form of the distance; ``uld_distance`` computes the same without the padding)."""
    p = torch.softmax(at_least_fp32(logits) / temperature, dim=-1).sort(dim=-1, descending=True).values
    return F.pad(p, (0, width - p.size(-1))) if width > p.size(-1) else p


def _sorted(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(at_least_fp32(logits) / temperature, dim=-1).sort(dim=-1, descending=True).values


def teacher_sorted_head(teacher_logits: torch.Tensor, index: torch.Tensor | None, k: int, temperature: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher side of ULD, without gradient: ``(p̂_t[:, :k] [N, k], Σ_{r ≥ k} p̂_t(r) [N])``, the sorted
    probabilities of rows ``index`` of ``teacher_logits [M, V_t]`` (all rows when None), block by block (the sort's
    64-bit indices exist for one block at a time)."""
    with torch.no_grad():
        n = teacher_logits.size(0) if index is None else index.numel()
        step = rows_for(teacher_logits.size(-1))
        heads, tails = [], []
        for a in range(0, n, step):
            rows = teacher_logits[a:a + step] if index is None else teacher_logits[index[a:a + step]]
            p = _sorted(rows, temperature)
            heads.append(p[:, :k])
            tails.append(p[:, k:].sum(-1))
        if not heads:
            return teacher_logits.new_zeros((0, min(k, teacher_logits.size(-1))), dtype=torch.float32), \
                teacher_logits.new_zeros((0,), dtype=torch.float32)
        return torch.cat(heads), torch.cat(tails)


def uld_distance(student_rows: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 teacher_index: torch.Tensor | None = None, chunk_rows: int | str | None = "auto") -> torch.Tensor:
    """``Σ_r |p̂_s(r) − p̂_t(r)|`` per row [N] for ``student_rows [N, V_s]`` and the teacher rows (``teacher_logits
    [N, V_t]``, or its rows ``teacher_index [N]``), the shorter sorted vector zero-padded — computed without the
    padding: with ``k = min(V_s, V_t)``, ``Σ_{r<k} |p̂_s(r) − p̂_t(r)|`` plus the sorted tail mass of the longer
    side, ``Σ_{r≥k} p̂(r)`` (where the other side is 0). The teacher side is sorted without gradient; the
    student side in blocks of rows recomputed in the backward pass (``dwakd.losses.chunked``; ``chunk_rows``
    None: one block)."""
    k = min(student_rows.size(-1), teacher_logits.size(-1))
    pt_head, pt_tail = teacher_sorted_head(teacher_logits, teacher_index, k, temperature)

    def rows_fn(s, pt, tail_t):
        ps = _sorted(s, temperature)
        return (ps[:, :k] - pt).abs().sum(-1) + ps[:, k:].sum(-1) + tail_t

    rows = block_rows(chunk_rows, max(student_rows.size(-1), teacher_logits.size(-1)))
    return rowwise(rows_fn, [student_rows, pt_head, pt_tail], chunk_rows=rows)  # rows ≥ N: one plain call


def _paired(student_mask: torch.Tensor, teacher_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first min(n_s, n_t) response positions of each side, per sample: ``(s_sel, t_sel)`` [B, L*]."""
    n = torch.minimum(student_mask.sum(1), teacher_mask.sum(1))[:, None]
    s_sel = student_mask & (student_mask.long().cumsum(1) <= n)
    t_sel = teacher_mask & (teacher_mask.long().cumsum(1) <= n)
    return s_sel, t_sel


def uld_pairs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_mask: torch.Tensor,
              teacher_mask: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair ULD distances and their sample index.

    student_logits [B, Ls, Vs], teacher_logits [B, Lt, Vt]; masks [B, L*] mark each side's response positions.
    The i-th masked position of each side are paired, for i < min(n_s, n_t) per sample. Returns
    ``(uld [N], sample [N])``; positions outside the pairs get exactly zero gradient.
    """
    s_sel, t_sel = _paired(student_mask, teacher_mask)
    return uld_distance(student_logits[s_sel], teacher_logits[t_sel], temperature), s_sel.nonzero()[:, 0]


@register
class ULD(Method):
    """ULD (see the module docstring for the formula and the variants)."""

    name = "uld"
    Config = ULDConfig
    citation = ("Boizard et al. 2024, 'Towards Cross-Tokenizer Distillation: the Universal Logit Distillation "
                "Loss for LLMs', arXiv 2402.12030; DSKD's variant: Zhang et al., EMNLP 2024, arXiv 2406.17328.")
    needs_teacher = True
    needs_teacher_tokens = True
    teacher_logit_rows = "response"
    student_outputs: ClassVar[frozenset[str]] = frozenset()
    teacher_outputs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        require_teacher(self.name, teacher)

    def loss(self, batch, student_out, teacher_out):
        cfg = self.cfg
        sl, tl = batch["student"]["labels"], batch["teacher"]["labels"]
        ce = token_ce(student_out.logits, sl)
        s_sel, t_sel = _paired(response_mask(sl), response_mask(tl))
        t_flat, t_idx = teacher_out.row_index(*t_sel.nonzero().unbind(1))  # the teacher's rows, not copied
        uld = uld_distance(student_out.logits[s_sel], t_flat, cfg.temperature, teacher_index=t_idx)
        sample = s_sel.nonzero()[:, 0]
        v = VARIANTS[cfg.variant]
        if v.reduce == "sum":
            term = uld.sum()
        else:
            B = sl.size(0)
            per_sum = torch.zeros(B, dtype=uld.dtype, device=uld.device).index_add(0, sample, uld)
            count = torch.zeros(B, dtype=uld.dtype, device=uld.device).index_add(0, sample, torch.ones_like(uld))
            has = count > 0
            mean = (per_sum[has] / count[has]).mean() if bool(has.any()) else uld.sum()
            term = mean * n_response_tokens(sl)
        w_ce = 1.0 - cfg.kd_rate if v.ce_weight is None else v.ce_weight
        w_uld = cfg.kd_rate if v.uld_weight is None else v.uld_weight
        loss = w_ce * ce + w_uld * term
        return loss, {"ce": ce.detach(), "uld": term.detach()}
