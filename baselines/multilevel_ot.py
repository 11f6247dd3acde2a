"""MultiLevelOT — Multi-Level Optimal Transport (Cui et al., AAAI 2025, arXiv 2412.14528).

Vocabulary-agnostic, like ULD: each side's distributions are cut to their ``k`` = 50 leading vocabulary
columns, so that two vocabularies of any sizes compare column by column, and the two responses are compared at
the token level (position by position) and at the sequence level (an entropic optimal transport between the
two sequences of positions). We follow the public code as its training loop runs it (2018cx/Multi-Level-OT,
``models/distillation_model.py``, ``DistillationLoss`` with ``f=1``, commit 712cfb4); docs/methods.md
"MultiLevelOT" gives the formulas with their sources, docs/deviations.md "MultiLevelOT" where we differ.

Per micro-batch of B samples, with ``n_s,b`` / ``n_t,b`` the response positions of sample b on each side,
EOS included on both (the reference's training loop drops the student's last one, ``skip_student_eos``; we
keep it, as for ULD):

1. ``q = softmax(z / ((σ(z) + 1e-4) · τ))``: each position's logits divided by their (unbiased) standard
   deviation over the vocabulary, not centred (the reference's ``normalize``), τ = 1.
2. Top-k columns (``top_k_columns``), each side on its own: ``"batch_mass"`` (the reference at 712cfb4) keeps
   the k vocabulary entries of largest total probability ``Σ_{b,j} q[b,j,v]`` over the micro-batch's response
   positions, ordered by that mass, the same k for every position; ``"per_position"`` (the reference before
   712cfb4, checked at d8d298f) sorts each position's probabilities and keeps its k largest. A vocabulary
   smaller than k gives its V columns; the narrower side is zero-padded to the wider width w.
3. ``P_s, P_t [B, M, w]``: row j of sample b holds its j-th response position, zero rows after the response;
   ``M = max_b max(n_s,b, n_t,b)``.

Terms (``multilevel_ot_terms``):

* ``had_b = (1/m_b) Σ_{j<m_b} Σ_c |P_s[b,j,c] − P_t[b,j,c]|``, ``m_b = min(n_s,b, n_t,b)`` — token level,
  absolute difference (``holistic_absolute_difference``);
* ``sl = mean_{b, j<M} −Σ_c softmax(P_s[b,j])_c · log softmax(P_t[b,j])_c`` — token level, logarithmic
  (``sequential_log_loss``). A softmax of *probabilities*: the reference's ``KL_wo(teacher, student)`` applies
  (log-)softmax to the top-k probability rows again, and averages over every row, zero rows included. Its
  author calls the second normalisation intentional (issue #4 of the repository); it keeps the term within
  ``[log w − 1, log(w − 1 + e)]`` (3.912 on every parity fixture, ``log 50`` = 3.912), and its gradient is about
  4 orders of magnitude below the absolute-difference term's;
* ``ot_b = Σ_{a,c} Π_ac C_ac`` over all M rows of sample b (``sinkhorn_distance``):
  ``C_ac = ‖u_t,a − u_s,c‖₁`` with ``u = softmax(P/2)`` rows (a softmax of probabilities again, temperature
  2), ``Π`` = 10 Sinkhorn iterations (rows, then columns normalised to sum 1) from ``exp(−C/0.1)`` — sequence
  level; it ignores the order of the positions.

With the default weights, ``L = CE + 1.5·(mean_b had_b + 0.1·sl + 1e-4·Σ_b ot_b)``, CE the micro-batch's
mean (the Hugging Face ``loss`` of the student). The weights are those of the reference: ``distil_factor``
1.5, ``KL_wo(...)*0.1``, ``0.001`` inside ``Sinkhorn_seq`` times ``0.1`` outside it. Like ULD's "original"
variant the method returns
the micro-batch value times n, the micro-batch's student response tokens, so that the loop's division by the
step's token count gives exactly ``L`` without gradient accumulation and the token-weighted mean of the
micro-batch values with it. Every term depends on the whole micro-batch (the batch-mass columns, M, the mean
over rows, the sum over samples), as in the reference.

Logged terms (token-summed like the loss): ``ce``; ``had`` = ``mean_b had_b · n``; ``sl`` = ``sl · n``;
``sinkhorn`` = ``Σ_b ot_b · n``, so that ``loss = ce + 1.5·(had + 0.1·sl + 1e-4·sinkhorn)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from dwakd.align.responses import n_response_tokens, response_mask
from dwakd.losses.chunked import block_rows, rowwise
from dwakd.losses.divergences import at_least_fp32, token_ce
from dwakd.methods.base import Method, require_teacher
from dwakd.registry import register
from dwakd.settings import check_choice, check_range

#: the two column choices of ``top_k_columns`` (docs/methods.md "MultiLevelOT")
COLUMN_ORDERS = ("batch_mass", "per_position")


@dataclass
class MultiLevelOTConfig:
    """MultiLevelOT options (docs/methods.md "MultiLevelOT"); every default is the reference code's
    (2018cx/Multi-Level-OT ``models/distillation_model.py`` at 712cfb4, as ``train/train_utils.py`` builds it)."""

    column_order: str = "batch_mass"  # improved_sort: columns by total mass over the batch (712cfb4)
    top_k: int = 50  # ``teacher[:, :, :50]`` / ``student[:, :, :50]``
    temperature: float = 1.0  # student_temperature = teacher_temperature = 1 (configs/distillation.py)
    std_eps: float = 1e-4  # normalize: logits / (std + 0.0001)
    ce_weight: float = 1.0  # crossentropy_weight (cross_entropy_factor = 1)
    kd_weight: float = 1.5  # distillation_weight = distil_factor 1.5 (finetuning.py default, README command)
    sl_weight: float = 0.1  # KL_wo(teacher, student) * 0.1
    sinkhorn_weight: float = 1e-4  # 0.001 inside Sinkhorn_seq.forward × 0.1 outside
    sinkhorn_temperature: float = 2.0  # Sinkhorn_seq: self.T = 2 whatever T is passed
    sinkhorn_epsilon: float = 0.1  # sinkhorn_loss(epsilon=0.1)
    sinkhorn_iters: int = 10  # sinkhorn_loss(n_iters=10), passed over sinkhorn_normalized's 20

    def validate(self, where: str) -> None:
        check_choice(where, "column_order", self.column_order, COLUMN_ORDERS)
        check_range(where, "top_k", self.top_k, 1)
        check_range(where, "sinkhorn_iters", self.sinkhorn_iters, 1)
        for f in ("temperature", "std_eps", "sinkhorn_temperature", "sinkhorn_epsilon"):
            check_range(where, f, getattr(self, f), 0.0, lo_open=True)
        for f in ("ce_weight", "kd_weight", "sl_weight", "sinkhorn_weight"):
            check_range(where, f, getattr(self, f), 0.0)


# ---------------------------------------------------------------------------------------------- columns

def scaled_softmax(logits: torch.Tensor, temperature: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """``softmax(z / ((σ(z) + eps)·τ))`` over the last dimension, in fp32 (float64 kept): ``logits [..., V]``
    divided by their unbiased standard deviation over the vocabulary (not centred), the reference's ``normalize``
    then its temperature softmax. The result does not change when the logits are scaled (up to ``eps``) or shifted."""
    z = at_least_fp32(logits)
    return torch.softmax(z / (z.std(-1, keepdim=True) + eps) / temperature, dim=-1)


def column_mass(logits: torch.Tensor, temperature: float = 1.0, eps: float = 1e-4,
                chunk_rows: int | str | None = "auto") -> torch.Tensor:
    """``Σ_n scaled_softmax(logits)[n]`` [V] for ``logits [N, V]``, without gradient, in blocks of ``chunk_rows``
    rows (no ``[N, V]`` fp32 copy of the whole call; None: one block)."""
    with torch.no_grad():
        step = block_rows(chunk_rows, logits.size(-1)) or max(1, logits.size(0))
        mass = torch.zeros(logits.size(-1), dtype=torch.float32, device=logits.device)
        for a in range(0, logits.size(0), step):
            mass += scaled_softmax(logits[a:a + step], temperature, eps).sum(0)
        return mass


def top_k_columns(logits: torch.Tensor, k: int, order: str = "batch_mass", temperature: float = 1.0,
                  eps: float = 1e-4, chunk_rows: int | str | None = "auto") -> torch.Tensor:
    """The ``k`` leading columns ``[N, min(k, V)]`` of ``scaled_softmax(logits [N, V])``.

    ``"batch_mass"``: the same k vocabulary entries for every row, those of largest ``column_mass`` over the N
    rows, in decreasing order of that mass (the reference's ``improved_sort`` + ``[:, :, :50]``). Invariant to a
    permutation of the vocabulary (up to ties of the masses). ``"per_position"``: each row's k largest
    probabilities, in decreasing order. Gradients reach ``logits`` through the kept entries; the columns chosen
    are not differentiated. Rows are evaluated in blocks of ``chunk_rows`` rows recomputed in the backward pass
    (``dwakd.losses.chunked``; "auto": ``rows_for(V)``, None: one plain call); the values do not depend on it."""
    if order not in COLUMN_ORDERS:
        raise ValueError(f"top_k_columns: order must be one of {COLUMN_ORDERS}, got {order!r}")
    width = min(k, logits.size(-1))
    block = block_rows(chunk_rows, logits.size(-1))
    if order == "per_position":
        return rowwise(lambda z: scaled_softmax(z, temperature, eps).topk(width, dim=-1).values, [logits],
                       chunk_rows=block)
    keep = column_mass(logits, temperature, eps, chunk_rows).topk(width).indices
    return rowwise(lambda z, idx: scaled_softmax(z, temperature, eps)[:, idx], [logits], [keep], chunk_rows=block)


def by_position(rows: torch.Tensor, mask: torch.Tensor, length: int, width: int) -> torch.Tensor:
    """``[B, length, width]``: ``rows [N, w]`` (the masked positions of ``mask [B, L]``, row-major) put at
    ``[b, k]`` for the k-th masked position of sample b, zero-padded to ``width`` columns; zeros elsewhere."""
    b, p = mask.nonzero(as_tuple=True)
    k = mask.long().cumsum(1)[b, p] - 1
    rows = F.pad(rows, (0, width - rows.size(-1)))
    return rows.new_zeros(mask.size(0), length, width).index_put((b, k), rows)


# ---------------------------------------------------------------------------------------------- terms

def holistic_absolute_difference(student: torch.Tensor, teacher: torch.Tensor, n_student: torch.Tensor,
                                 n_teacher: torch.Tensor) -> torch.Tensor:
    """``had_b = (1/m_b) Σ_{j<m_b} Σ_c |s[b,j,c] − t[b,j,c]|`` [B], ``m_b = min(n_s,b, n_t,b)``, for
    ``student, teacher [B, M, w]`` and the per-sample response lengths ``[B]`` (0 where m_b = 0; the reference
    gives NaN there)."""
    m = torch.minimum(n_student, n_teacher)
    rows = torch.arange(student.size(1), device=student.device)[None, :] < m[:, None]
    per_row = (student - teacher).abs().sum(-1) * rows
    return per_row.sum(1) / m.clamp(min=1)


def sequential_log_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_{b,j} −Σ_c softmax(s[b,j])_c · log softmax(t[b,j])_c`` (a scalar) over every row of ``student,
    teacher [B, M, w]``, zero rows included: the reference's ``KL_wo(teacher, student)``, whose inputs are
    top-k *probabilities*, so that it applies a second softmax (docs/methods.md "MultiLevelOT"). For rows of
    non-negative entries summing to at most 1 (truncated distributions, zero rows) its value lies in
    ``[log w − 1, log(w − 1 + e)]``."""
    return -(torch.softmax(student, -1) * torch.log_softmax(teacher, -1)).sum(-1).mean()


def sinkhorn_plan(cost: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Sinkhorn's scaling of ``exp(−cost/ε)`` ``[..., M, N]``: ``iters`` times, the rows then the columns
    normalised to sum 1 (Cuturi 2013, the reference's ``sinkhorn_normalized``). The columns of the result sum to
    exactly 1; for a square cost the rows tend to 1 as ``iters`` grows (a doubly stochastic plan)."""
    plan = torch.exp(-cost / epsilon)
    for _ in range(iters):
        plan = plan / plan.sum(-1, keepdim=True)
        plan = plan / plan.sum(-2, keepdim=True)
    return plan


def sinkhorn_distance(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0,
                      epsilon: float = 0.1, iters: int = 10) -> torch.Tensor:
    """``ot_b = Σ_{a,c} Π_ac C_ac`` [B] between the M rows of ``teacher`` (a) and of ``student`` (c), ``[B, M, w]``:
    ``C_ac = ‖u_t,a − u_s,c‖₁`` with ``u = softmax(row / temperature)``, ``Π = sinkhorn_plan(C, ε, iters)``
    (the reference's ``Sinkhorn_seq`` on ``(teacher, student)``, per sample, without its factor 0.001).
    Invariant to a permutation of either side's rows: the sequence level ignores the order of the positions."""
    u_t = torch.softmax(teacher / temperature, -1)
    u_s = torch.softmax(student / temperature, -1)
    cost = torch.cdist(u_t, u_s, p=1)
    return (sinkhorn_plan(cost, epsilon, iters) * cost).sum((-2, -1))


class MultiLevelOTTerms(NamedTuple):
    """The per-micro-batch terms of ``multilevel_ot_terms``."""

    had: torch.Tensor  # [B] token level, absolute difference
    sl: torch.Tensor  # [] token level, logarithmic (double softmax)
    sinkhorn: torch.Tensor  # [B] sequence level
    student_top: torch.Tensor  # [B, M, w]
    teacher_top: torch.Tensor  # [B, M, w]


def multilevel_ot_terms(student_rows: torch.Tensor, student_mask: torch.Tensor, teacher_rows: torch.Tensor,
                        teacher_mask: torch.Tensor, cfg: MultiLevelOTConfig) -> MultiLevelOTTerms:
    """The three terms for one micro-batch (module docstring).

    ``student_rows [N_s, V_s]``, ``teacher_rows [N_t, V_t]``: the logits of the masked positions of
    ``student_mask [B, L_s]`` / ``teacher_mask [B, L_t]`` (each side's response positions), row-major. Each side
    keeps its own tokenisation: the k-th response position of the student meets the k-th of the teacher.
    Positions outside the masks are never read (zero gradient)."""
    n_s, n_t = student_mask.sum(1), teacher_mask.sum(1)
    length = int(torch.maximum(n_s, n_t).max()) if n_s.numel() else 0
    if length == 0:  # no response position on either side
        zero = student_rows.new_zeros(student_mask.size(0), dtype=torch.float32)
        empty = zero.new_zeros(student_mask.size(0), 0, 0)
        return MultiLevelOTTerms(zero, zero.sum(), zero, empty, empty)
    args = (cfg.top_k, cfg.column_order, cfg.temperature, cfg.std_eps)
    s_top = top_k_columns(student_rows, *args)
    with torch.no_grad():
        t_top = top_k_columns(teacher_rows, *args)
    width = max(s_top.size(-1), t_top.size(-1))
    s = by_position(s_top, student_mask, length, width)
    t = by_position(t_top, teacher_mask, length, width)
    return MultiLevelOTTerms(
        had=holistic_absolute_difference(s, t, n_s, n_t),
        sl=sequential_log_loss(s, t),
        sinkhorn=sinkhorn_distance(s, t, cfg.sinkhorn_temperature, cfg.sinkhorn_epsilon, cfg.sinkhorn_iters),
        student_top=s, teacher_top=t)


# ---------------------------------------------------------------------------------------------- method

@register
class MultiLevelOT(Method):
    """MultiLevelOT (see the module docstring for the formula)."""

    name = "multilevel_ot"
    Config = MultiLevelOTConfig
    citation = ("Cui et al. 2025, 'Multi-Level Optimal Transport for Universal Cross-Tokenizer Knowledge "
                "Distillation on Language Models', AAAI 2025, arXiv 2412.14528; code: github.com/2018cx/"
                "Multi-Level-OT")
    needs_teacher = True
    needs_teacher_tokens = True
    teacher_logit_rows = "response"
    term_labels: ClassVar[dict[str, str]] = {
        "had": "token-level OT: absolute difference", "sl": "token-level OT: logarithmic (double softmax)",
        "sinkhorn": "sequence-level OT: Sinkhorn"}

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        require_teacher(self.name, teacher)

    def loss(self, batch, student_out, teacher_out):
        cfg = self.cfg
        sl, tl = batch["student"]["labels"], batch["teacher"]["labels"]
        s_mask, t_mask = response_mask(sl), response_mask(tl)
        ce = token_ce(student_out.logits, sl)
        terms = multilevel_ot_terms(student_out.logits[s_mask], s_mask, teacher_out.logits_at(t_mask), t_mask, cfg)
        n = n_response_tokens(sl)
        had, log_term, ot = terms.had.mean() * n, terms.sl * n, terms.sinkhorn.sum() * n
        loss = cfg.ce_weight * ce + cfg.kd_weight * (had + cfg.sl_weight * log_term + cfg.sinkhorn_weight * ot)
        return loss, {"ce": ce.detach(), "had": had.detach(), "sl": log_term.detach(), "sinkhorn": ot.detach()}
