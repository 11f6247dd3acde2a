"""Token-level losses on logits, masked to response tokens and **summed** over them.

Shapes: ``logits [B, L, V]``, ``labels [B, L]`` with -100 on prompt and padding. Position i predicts
``labels[:, i + 1]`` (the causal shift is done here, once).

The teacher–student divergences (``forward_kl`` … ``adaptive_kl``, ``DIVERGENCES``, ``divergence``) take
already aligned logits and a position mask instead of labels; see the convention above them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions with targets: ``logits[:, :-1]`` predict ``labels[:, 1:]``."""
    return logits[:, :-1], labels[:, 1:]


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``−Σ log p(y_i)`` over response tokens (a scalar sum, computed in fp32)."""
    lg, lb = shift(logits, labels)
    return F.cross_entropy(lg.float().reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample summed NLL [B] over response tokens (nats)."""
    lg, lb = shift(logits, labels)
    nll = F.cross_entropy(lg.float().transpose(1, 2), lb, ignore_index=IGNORE, reduction="none")
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
    """Replace −inf by a large finite negative (no NaN in differences or in gradients)."""
    return torch.where(torch.isneginf(x), torch.full_like(x, _NEG), x)


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
    """fp32 ``log_softmax(logits / τ)`` with masked rows zeroed first (no garbage reaches the graph)."""
    x = torch.where(keep.unsqueeze(-1), _finite_logp(logits.float()), 0.0)
    return torch.log_softmax(x / temperature, dim=-1)


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
    lq = torch.where(keep.unsqueeze(-1), _finite_logp(target_logp.float()), 0.0)
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


def divergence(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0, **kw) -> torch.Tensor:
    """Dispatch to ``DIVERGENCES[name]`` (``kw``: ``lam`` for skl/srkl, ``mu`` for akl, ``reduction``)."""
    try:
        fn = DIVERGENCES[name]
    except KeyError:
        raise KeyError(f"unknown divergence {name!r}; available divergences: {', '.join(DIVERGENCES)}") from None
    return fn(student_logits, teacher_logits, mask, temperature, **kw)
