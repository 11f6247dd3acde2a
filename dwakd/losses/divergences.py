"""Token-level losses on logits, masked to response tokens and **summed** over them.

Shapes: ``logits [B, L, V]``, ``labels [B, L]`` with -100 on prompt and padding. Position i predicts
``labels[:, i + 1]`` (the causal shift is done here, once).

The teacher–student divergences (``forward_kl`` … ``adaptive_kl``, ``DIVERGENCES``, ``divergence``) take
already aligned logits and a position mask instead of labels; see the convention above them.

Large vocabularies: ``divergence``, ``head_divergence``, ``token_ce`` and ``head_ce`` evaluate their per-row
values in blocks of rows recomputed in the backward pass (``dwakd.losses.chunked.rowwise``) once the rows × V
of a call exceed ``CHUNK_ELEMENTS``, so that no ``[N, V]`` fp32 intermediate of the whole call is kept for the
backward pass; values and gradients are those of the one-block computation (``chunk_rows=None`` forces it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dwakd.losses.chunked import block_rows, rowwise

IGNORE = -100

#: ``chunk_rows`` of the chunked entry points: "auto" chunks a call whose rows × V exceed ``CHUNK_ELEMENTS``
#: (in blocks of ``rows_for(V)`` rows), None never chunks, an int is the rows per block
ChunkRows = int | str | None


def _block_rows(chunk_rows: ChunkRows, n: int, width: int) -> int | None:
    """Rows per block for ``n`` rows of ``width`` entries, or None for one plain call."""
    rows = block_rows(chunk_rows, width)
    return rows if rows is not None and n > rows else None


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 for the losses' arithmetic: half precision is cast up, float64 is kept (never cast down)."""
    return x if x.dtype == torch.float64 else x.float()


def _ce_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(at_least_fp32(logits), targets, reduction="none")


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions with targets: ``logits[:, :-1]`` predict ``labels[:, 1:]``."""
    return logits[:, :-1], labels[:, 1:]


def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: position k predicts a response token (``labels[:, k + 1] != −100``); the last is False."""
    m = torch.zeros_like(labels, dtype=torch.bool)
    m[:, :-1] = labels[:, 1:] != IGNORE
    return m


def token_ce(logits: torch.Tensor, labels: torch.Tensor, *, chunk_rows: ChunkRows = "auto") -> torch.Tensor:
    """``−Σ log p(y_i)`` over response tokens (a scalar sum, computed in fp32).

    Large calls (``chunk_rows``, module docstring) read the response rows of ``logits`` block by block
    (``rowwise(..., gather_from=...)``: no copy of the rows; the gradient is one buffer of the logits' shape)."""
    lg, lb = shift(logits, labels)
    keep = lb != IGNORE
    n = int(keep.sum()) if chunk_rows is not None else 0
    rows = _block_rows(chunk_rows, n, lg.size(-1))
    if rows is None:
        return F.cross_entropy(at_least_fp32(lg).reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")
    index = response_positions(labels).flatten().nonzero().squeeze(1)  # row-major, as lg[keep]
    return rowwise(_ce_rows, [index, lb[keep]], chunk_rows=rows,
                   gather_from=logits.reshape(-1, logits.size(-1))).sum()


def head_ce(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
            chunk_rows: ChunkRows = "auto") -> torch.Tensor:
    """``Σ_n CE(hidden_n · weightᵀ, targets_n)`` (fp32 cross-entropy, −100 targets skipped) without keeping the
    ``[N, V]`` logits: ``hidden [N, d]``, ``weight [V, d]`` (an LM head; its product is taken in ``weight``'s
    dtype, as ``hidden.to(weight.dtype) @ weight.T``), ``targets [N]``. Gradients reach ``hidden`` and, if it
    requires them, ``weight``."""
    def fn(h, y, w):
        return F.cross_entropy(at_least_fp32(h.to(w.dtype) @ w.T), y, ignore_index=IGNORE, reduction="none")

    rows = _block_rows(chunk_rows, hidden.size(0), weight.size(0))
    return rowwise(fn, [hidden, targets], [weight], chunk_rows=rows).sum()


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample summed NLL [B] over response tokens (nats)."""
    lg, lb = shift(logits, labels)
    nll = F.cross_entropy(at_least_fp32(lg).transpose(1, 2), lb, ignore_index=IGNORE, reduction="none")
    return nll.sum(-1)


# ---------------------------------------------------------------------------------------------------------
# Per-position divergences between a teacher (target) and a student distribution given as logits.
#
# Convention shared by every function below (docs/methods.md "Notation" and "Vanilla KD"):
#   fn(student_logits [B, L, V], teacher_logits [B, L, V], mask [B, L], temperature=1.0) -> scalar
# * both logit sets are divided by the temperature τ; no τ² scaling;
# * computed in fp32 whatever the input dtype;
# * the per-position values are **summed** over the positions where ``mask`` is true (bool or 0/1); the
#   caller divides by its token count. ``reduction="none"`` returns the per-position values [B, L] instead
#   (exactly 0 where the mask is 0), e.g. for per-token weights;
# * masked positions contribute exactly 0 and receive exactly zero gradient, whatever their logits hold
#   (−inf, huge values, NaN): they are replaced by zeros with ``torch.where`` before any arithmetic;
# * unmasked logits must be finite or −inf. A −inf logit is a zero-probability entry; entries where the
#   distribution in front of the log ratio has probability 0 contribute 0 (0·log 0 = 0) with finite
#   gradients. (−inf is replaced by −1e30 first, so target mass on a student −inf entry gives a huge
#   finite value, ≈ 1e30·p, instead of inf.)
# * nothing is detached: gradients reach both arguments. Detach the target yourself when it is fixed.
# Leading dimensions are free: logits [..., V] with mask [...] work the same way.
# ---------------------------------------------------------------------------------------------------------

_NEG = -1e30  # stands in for −inf logits: exp() underflows to 0, differences stay finite


def _finite_logp(x: torch.Tensor) -> torch.Tensor:
    """Replace −inf by a large finite negative (no NaN in differences or in gradients); a new tensor."""
    return x.masked_fill(torch.isneginf(x), _NEG)


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
           temperature: float) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape [B, L, V]")
    if tuple(mask.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(f"mask {tuple(mask.shape)} must match the logits' leading dimensions "
                         f"{tuple(student_logits.shape[:-1])}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _masked_logp(logits: torch.Tensor, keep: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 ``log_softmax(logits / τ)`` with masked rows zeroed first (no garbage reaches the graph). One
    ``[..., V]`` copy before the log-softmax, modified in place (the values of the out-of-place formulation)."""
    x = _finite_logp(at_least_fp32(logits)).masked_fill_(~keep.unsqueeze(-1), 0.0)
    return torch.log_softmax(x.div_(temperature), dim=-1)


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(student_logits, teacher_logits, mask, temperature)
    keep = mask.bool()
    return _masked_logp(student_logits, keep, temperature), _masked_logp(teacher_logits, keep, temperature), keep


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``Σ_v p_v (log p_v − log q_v)`` over the last dimension (finite log-probabilities in)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _log_mix(logp: torch.Tensor, logq: torch.Tensor, w: float) -> torch.Tensor:
    """``log(w·p + (1 − w)·q)``, computed stably with ``logaddexp``."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"mixing weight must lie in [0, 1], got {w}")
    if w == 0.0:
        return logq
    if w == 1.0:
        return logp
    return torch.logaddexp(logp + math.log(w), logq + math.log1p(-w))


def _reduce(per_pos: torch.Tensor, keep: torch.Tensor, reduction: str) -> torch.Tensor:
    per_pos = torch.where(keep, per_pos, 0.0)
    if reduction == "sum":
        return per_pos.sum()
    if reduction == "none":
        return per_pos
    raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0, *, reduction: str = "sum") -> torch.Tensor:
    """Forward KL ``Σ_i KL(p_t,i ‖ p_s,i) = Σ_i Σ_v p_t (log p_t − log p_s)`` (Hinton et al. 2015).

    Shapes: logits [B, L, V], mask [B, L]; returns a scalar (or [B, L] with ``reduction="none"``).
    """
    ls, lt, keep = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(_kl(lt, ls), keep, reduction)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0, *, reduction: str = "sum") -> torch.Tensor:
    """Reverse KL ``Σ_i KL(p_s,i ‖ p_t,i)`` (mode seeking; MiniLLM, Gu et al. 2024, arXiv 2306.08543)."""
    ls, lt, keep = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(_kl(ls, lt), keep, reduction)


def js_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                  temperature: float = 1.0, *, reduction: str = "sum") -> torch.Tensor:
    """Jensen–Shannon ``½ KL(p_t ‖ m) + ½ KL(p_s ‖ m)``, ``m = (p_s + p_t)/2``; symmetric, ≤ log 2.

    (DSKD's code adds 1e-9 inside the logs; here ``log m`` is exact via ``logaddexp``.)
    """
    ls, lt, keep = _log_probs(student_logits, teacher_logits, mask, temperature)
    lm = _log_mix(lt, ls, 0.5)
    return _reduce(0.5 * _kl(lt, lm) + 0.5 * _kl(ls, lm), keep, reduction)


def skewed_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                      temperature: float = 1.0, *, lam: float = 0.1, reduction: str = "sum") -> torch.Tensor:
    """Skewed forward KL ``KL(p_t ‖ λ p_t + (1 − λ) p_s)``, λ = 0.1 (DistiLLM, Ko et al. 2024,
    arXiv 2402.03898). λ = 0 gives the forward KL."""
    ls, lt, keep = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(_kl(lt, _log_mix(lt, ls, lam)), keep, reduction)


def skewed_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                      temperature: float = 1.0, *, lam: float = 0.1, reduction: str = "sum") -> torch.Tensor:
    """Skewed reverse KL ``KL(p_s ‖ (1 − λ) p_t + λ p_s)``, λ = 0.1 (DistiLLM, arXiv 2402.03898).
    λ = 0 gives the reverse KL."""
    ls, lt, keep = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(_kl(ls, _log_mix(ls, lt, lam)), keep, reduction)


def adaptive_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                temperature: float = 1.0, *, mu: float = 0.5, reduction: str = "sum") -> torch.Tensor:
    """Adaptive KL (Wu et al. 2024, "Rethinking KL divergence in KD for LLMs", arXiv 2404.02657).

    Per position, sort the teacher probabilities in ascending order; the *tail* is the prefix whose
    cumulative teacher mass is ≤ μ (μ = 0.5; ``≤`` as DSKD's code, which matters only when a cumulative sum
    equals μ exactly), the *head* is the rest (the most probable tokens, holding ≥ 1 − μ of the mass).
    With ``g_part = Σ_{v ∈ part} |p_t(v) − p_s(v)|``:
    ``AKL = g_head/(g_head + g_tail) · FKL + g_tail/(g_head + g_tail) · RKL``.
    The weights g are detached (as in DSKD's code). When ``g_head + g_tail = 0`` (identical distributions,
    where DSKD's code gives 0/0 = NaN) the weights are ½/½, so AKL = 0 there.
    """
    ls, lt, keep = _log_probs(student_logits, teacher_logits, mask, temperature)
    with torch.no_grad():
        pt_sorted, order = lt.exp().sort(dim=-1)
        gap = (pt_sorted - ls.exp().gather(-1, order)).abs()
        tail = pt_sorted.cumsum(-1) <= mu
        g_tail = (gap * tail).sum(-1)
        g_head = (gap * ~tail).sum(-1)
        total = g_head + g_tail
        w_head = torch.where(total > 0, g_head / total.clamp_min(torch.finfo(total.dtype).tiny), 0.5)
    return _reduce(w_head * _kl(lt, ls) + (1.0 - w_head) * _kl(ls, lt), keep, reduction)


def kl_from_logprobs(target_logp: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor,
                     temperature: float = 1.0, *, reduction: str = "sum") -> torch.Tensor:
    """Forward KL ``Σ_i KL(q_i ‖ softmax(z_s,i / τ))`` against a target given as **log-probabilities**.

    ``target_logp [B, L, V]`` is used as is (no temperature: it is already a distribution; −inf marks a
    zero-probability entry); the student logits are divided by τ. For targets built elsewhere, e.g. a
    projected teacher distribution or a mixture with one-hot rows.
    """
    _check(student_logits, target_logp, mask, temperature)
    keep = mask.bool()
    lq = _finite_logp(at_least_fp32(target_logp)).masked_fill_(~keep.unsqueeze(-1), 0.0)
    ls = _masked_logp(student_logits, keep, temperature)
    return _reduce(_kl(lq, ls), keep, reduction)


DIVERGENCES = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "js": js_divergence,
    "skl": skewed_forward_kl,
    "srkl": skewed_reverse_kl,
    "akl": adaptive_kl,
}


def _lookup(name: str):
    try:
        return DIVERGENCES[name]
    except KeyError:
        raise KeyError(f"unknown divergence {name!r}; available divergences: {', '.join(DIVERGENCES)}") from None


def _per_row(fn, temperature: float, kw: dict):
    """``fn`` as a per-row function of ``[n, V]`` logits (every row kept): ``[n]`` values."""
    def rows(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return fn(s, t, torch.ones(s.shape[:-1], dtype=torch.bool, device=s.device), temperature,
                  reduction="none", **kw)
    return rows


def row_divergence(name: str, temperature: float = 1.0, **kw):
    """``DIVERGENCES[name]`` as a per-row function ``(student [n, V], teacher [n, V]) -> [n]`` (every row kept;
    the same values and gradients as the divergence with ``reduction="none"`` on those rows): the building block
    for a caller's own ``rowwise`` call, e.g. with rows gathered from the full logits."""
    return _per_row(_lookup(name), temperature, kw)


def divergence(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0, *, reduction: str = "sum", chunk_rows: ChunkRows = "auto",
               **kw) -> torch.Tensor:
    """Dispatch to ``DIVERGENCES[name]`` (``kw``: ``lam`` for skl/srkl, ``mu`` for akl; ``reduction``).

    Same convention, value and gradients as ``DIVERGENCES[name]``; a call whose masked rows × V exceed
    ``CHUNK_ELEMENTS`` (``chunk_rows="auto"``; an int forces blocks of that many rows, None one plain call) takes
    the masked rows and evaluates them in blocks recomputed in the backward pass (``dwakd.losses.chunked``)."""
    fn = _lookup(name)
    if chunk_rows is None:
        return fn(student_logits, teacher_logits, mask, temperature, reduction=reduction, **kw)
    _check(student_logits, teacher_logits, mask, temperature)
    if reduction not in ("sum", "none"):
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
    keep = mask.bool()
    width = student_logits.size(-1)
    every = bool(keep.all())
    n = keep.numel() if every else int(keep.sum())
    rows = _block_rows(chunk_rows, n, width)
    if rows is None:
        return fn(student_logits, teacher_logits, mask, temperature, reduction=reduction, **kw)
    if every:
        s, t = student_logits.reshape(-1, width), teacher_logits.reshape(-1, width)
    else:
        s, t = student_logits[keep], teacher_logits[keep]
    vals = rowwise(_per_row(fn, temperature, kw), [s, t], chunk_rows=rows)
    if reduction == "sum":
        return vals.sum()
    if every:
        return vals.view(keep.shape)
    return vals.new_zeros(keep.shape).index_put((keep,), vals)


def head_divergence(name: str, student_hidden: torch.Tensor, student_head: torch.Tensor,
                    teacher_logits: torch.Tensor, temperature: float = 1.0, *, reduction: str = "sum",
                    chunk_rows: ChunkRows = "auto", teacher_index: torch.Tensor | None = None,
                    **kw) -> torch.Tensor:
    """``D_τ(p_t,n ‖ softmax(z_n / τ))`` with the student logits ``z = student_hidden · student_headᵀ`` formed
    block by block and never kept whole: ``student_hidden [N, d]``, ``student_head [V, d]`` (the product in the
    head's dtype, ``hidden.to(head.dtype) @ head.T``), ``teacher_logits [N, V]`` — or, with ``teacher_index
    [N]``, ``teacher_logits [M, V]`` whose rows ``teacher_index`` are taken block by block (no ``[N, V]`` copy).
    Every row counts. The same value and gradients (to the hidden states and, if they require them, the head
    and the teacher logits) as ``divergence`` on the product; ``reduction`` "sum" or "none" (``[N]``)."""
    fn = _lookup(name)
    if student_hidden.dim() != 2 or student_head.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError(f"head_divergence: expected hidden [N, d], head [V, d], teacher logits [N, V]; got "
                         f"{tuple(student_hidden.shape)}, {tuple(student_head.shape)}, {tuple(teacher_logits.shape)}")
    n_t = student_hidden.size(0) if teacher_index is None else teacher_logits.size(0)
    if teacher_index is not None and tuple(teacher_index.shape) != (student_hidden.size(0),):
        raise ValueError(f"head_divergence: teacher_index {tuple(teacher_index.shape)} must have one entry per "
                         f"hidden row ({student_hidden.size(0)})")
    if (n_t, student_head.size(0)) != tuple(teacher_logits.shape) or student_hidden.size(1) != student_head.size(1):
        raise ValueError(f"head_divergence: hidden {tuple(student_hidden.shape)} · head {tuple(student_head.shape)}"
                         f"ᵀ does not match the teacher logits {tuple(teacher_logits.shape)}")
    if reduction not in ("sum", "none"):
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
    per_row = _per_row(fn, temperature, kw)
    rows = _block_rows(chunk_rows, student_hidden.size(0), student_head.size(0))
    if teacher_index is None:
        def rows_fn(h, t, w):
            return per_row(h.to(w.dtype) @ w.T, t)

        vals = rowwise(rows_fn, [student_hidden, teacher_logits], [student_head], chunk_rows=rows)
    else:
        def rows_fn(h, i, w, t):
            return per_row(h.to(w.dtype) @ w.T, t[i])

        vals = rowwise(rows_fn, [student_hidden, teacher_index], [student_head, teacher_logits], chunk_rows=rows)
    return vals.sum() if reduction == "sum" else vals
