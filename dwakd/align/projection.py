"""DSKD v2's "logit identity" projectors between two hidden spaces (Zhang et al. 2025, arXiv 2504.11426).

Pure functions: tokenizers / weight matrices in, index tensors / matrices out (docs/methods.md "DSKD-ETA").

With ``W_s^head [V_s, d_s]`` and ``W_t^head [V_t, d_t]`` (``dwakd.models.lm_head_weight``) restricted to the
shared vocabulary (``shared_vocab``: the n tokens whose strings exist in both vocabularies after ``Ġ→▁``),
``Ŵ_s = W_s^head[overlap_s]ᵀ [d_s, n]`` and ``Ŵ_t = W_t^head[overlap_t]ᵀ [d_t, n]``:

* t2s, a learned nn.Linear(d_t → d_s, bias=False) initialised with ``W_t2s = (Ŵ_t · pinv(Ŵ_s))ᵀ [d_s, d_t]``,
  so that ``h_t W_t2sᵀ Ŵ_s = h_t Ŵ_t pinv(Ŵ_s) Ŵ_s ≈ h_t Ŵ_t``: the student head applied to a projected
  teacher state reproduces the teacher's logits on the shared tokens (least squares);
* s2t, not learned: ``M_s2t = Ŵ_s · pinv(Ŵ_t) [d_s, d_t]``, ``h_s2t = h_s M_s2t``, recomputed every step from the
  current (detached) student head. ``pinv(Ŵ_t)`` depends on the frozen teacher only, so it is computed once.

DSKD v2's ETA criterion (``dual_space_kd_v2_with_exact_token_alignment.py``) restricts both heads to the
overlap, as here (parity: ``tests/test_parity_v2_kq_recipes.py``); its plain v2 criterion
(``dual_space_kd_v2.py``) multiplies the *whole* student head by the pinv of the overlap teacher head, which
has matching shapes only when the vocabularies coincide (or with its ``topk_vocab`` option). On a token string
shared twice after ``Ġ→▁`` (a vocabulary holding both ``Ġx`` and ``▁x``) we keep the lowest id; the reference
keeps the last one its ``get_vocab()`` lists.
"""

from __future__ import annotations

import torch

from dwakd.align.tokens import SPACE_MARKERS

__all__ = ["pinv_t2s_init", "s2t_matrix", "shared_vocab", "teacher_head_pinv"]


def _canonical_vocab(vocab: dict[str, int]) -> dict[str, int]:
    """token string with ``Ġ`` → ``▁`` → id; on a collision the lowest id is kept (deterministic)."""
    out: dict[str, int] = {}
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        out.setdefault(tok.replace(SPACE_MARKERS[0], SPACE_MARKERS[1]), i)
    return out


def shared_vocab(teacher_tokenizer, student_tokenizer, *, extra_pairs: list[tuple[int, int]] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(teacher_ids, student_ids)``, two aligned 1-D long tensors: the tokens whose strings exist in both
    vocabularies once ``Ġ`` is written ``▁`` (DSKD v2's overlap), in increasing student-id order.

    Either argument may be a tokenizer (anything with ``get_vocab()``) or a ``{token: id}`` dict.
    ``extra_pairs`` adds ``(teacher_id, student_id)`` pairs whose strings differ, e.g. the two EOS tokens; a pair
    whose student or teacher id is already paired is skipped.
    """
    tv = _canonical_vocab(teacher_tokenizer if isinstance(teacher_tokenizer, dict) else teacher_tokenizer.get_vocab())
    sv = _canonical_vocab(student_tokenizer if isinstance(student_tokenizer, dict) else student_tokenizer.get_vocab())
    pairs = sorted((sid, tv[tok]) for tok, sid in sv.items() if tok in tv)
    used_s = {s for s, _ in pairs}
    used_t = {t for _, t in pairs}
    for t, s in extra_pairs or []:
        if s not in used_s and t not in used_t:
            pairs.append((s, t))
            used_s.add(s)
            used_t.add(t)
    pairs.sort()
    if not pairs:
        raise ValueError("the two vocabularies share no token string (after Ġ→▁); DSKD v2's projector "
                         "initialisation needs an overlap")
    student_ids = torch.tensor([s for s, _ in pairs], dtype=torch.long)
    teacher_ids = torch.tensor([t for _, t in pairs], dtype=torch.long)
    return teacher_ids, student_ids


def _pinv(a: torch.Tensor) -> torch.Tensor:
    """Moore–Penrose pseudo-inverse, computed on the tall orientation (``pinv(A) = pinv(Aᵀ)ᵀ``): the same
    result, but LAPACK's SVD of a wide matrix is an order of magnitude slower on CPU."""
    return torch.linalg.pinv(a.T).T if a.size(0) < a.size(1) else torch.linalg.pinv(a)


def pinv_t2s_init(teacher_head: torch.Tensor, student_head: torch.Tensor, teacher_ids: torch.Tensor,
                  student_ids: torch.Tensor) -> torch.Tensor:
    """The t2s weight ``W_t2s = (Ŵ_t · pinv(Ŵ_s))ᵀ`` [d_s, d_t] (an ``nn.Linear(d_t, d_s).weight``).

    teacher_head [V_t, d_t], student_head [V_s, d_s]: LM-head weights; ``*_ids``: ``shared_vocab``'s overlap.
    Computed in fp64 (pinv is sensitive), returned in fp32, detached.
    """
    wt = teacher_head.detach().double()[teacher_ids.to(teacher_head.device)].T  # [d_t, n]
    ws = student_head.detach().double()[student_ids.to(student_head.device)].T  # [d_s, n]
    return (wt @ _pinv(ws)).T.float()


def teacher_head_pinv(teacher_head: torch.Tensor, teacher_ids: torch.Tensor) -> torch.Tensor:
    """``pinv(Ŵ_t)`` [n, d_t] with ``Ŵ_t = W_t^head[teacher_ids]ᵀ`` (fp64 pinv, fp32 result, detached)."""
    wt = teacher_head.detach().double()[teacher_ids.to(teacher_head.device)].T  # [d_t, n]
    return _pinv(wt).float()


def s2t_matrix(student_head: torch.Tensor, student_ids: torch.Tensor, teacher_pinv: torch.Tensor) -> torch.Tensor:
    """``M_s2t = Ŵ_s · pinv(Ŵ_t)`` [d_s, d_t] from the current student head (detached): ``h_s2t = h_s @ M_s2t``."""
    ws = student_head.detach()[student_ids.to(student_head.device)].T  # [d_s, n]
    return ws.float() @ teacher_pinv.to(ws.device)
