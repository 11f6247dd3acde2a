"""The response tokens of a batch, and aligned token pairs mapped back to logit positions: pure functions of the
labels (and, for token strings, a tokenizer), shared by the cross-tokenizer methods and ``dwakd attention``.

Position convention (``dwakd.losses.divergences``): logits at position k predict ``labels[:, k + 1]``, so the
*response positions* of a sequence are the k with ``labels[:, k + 1] != −100`` (``response_mask``). The
student's response-token count ``(labels[:, 1:] != −100).sum()`` is what the training loop divides every
token-summed term by (``n_response_tokens``). Pairs are always ``(student, teacher)``.
"""

from __future__ import annotations

import torch

from dwakd.align.tokens import exact_token_alignment

IGNORE = -100

__all__ = ["aligned_positions", "aligned_tensors", "eta_pairs", "n_response_tokens", "response_mask",
           "response_tokens", "sample_pairs", "tokens_of"]


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: position k predicts a response token (``labels[:, k + 1] != −100``); last is False."""
    m = torch.zeros_like(labels, dtype=torch.bool)
    m[:, :-1] = labels[:, 1:] != IGNORE
    return m


def n_response_tokens(labels: torch.Tensor) -> torch.Tensor:
    """The student's response-token count of a micro-batch (what the loop sums into its divisor)."""
    return (labels[:, 1:] != IGNORE).sum()


def response_tokens(labels_row) -> tuple[list[int], list[int]]:
    """For one sequence (a label tensor row or a list): ``(logit_positions, target_ids)`` of its response
    tokens, in order.

    ``target_ids`` are the labels ≠ −100 at label indices p ≥ 1; ``logit_positions`` are p − 1, the positions
    whose logits predict them.
    """
    labels = labels_row.tolist() if isinstance(labels_row, torch.Tensor) else list(labels_row)
    pos = [p - 1 for p in range(1, len(labels)) if labels[p] != IGNORE]
    return pos, [labels[p + 1] for p in pos]


def sample_pairs(student_labels, teacher_labels, pairs_of) -> list[tuple[int, int]]:
    """One sample's aligned ``(student_position, teacher_position)`` logit positions: ``pairs_of(s_ids, t_ids)``
    gives the aligned ``(i, j)`` indices into the sample's response tokens (``response_tokens`` of each side's
    labels, a tensor row or a list)."""
    s_pos, s_ids = response_tokens(student_labels)
    t_pos, t_ids = response_tokens(teacher_labels)
    return [(s_pos[i], t_pos[j]) for i, j in pairs_of(s_ids, t_ids)]


def aligned_positions(student_labels: torch.Tensor, teacher_labels: torch.Tensor, pairs_of
                      ) -> tuple[list[int], list[int], list[int]]:
    """``(sample, student_position, teacher_position)`` lists over a batch: ``pairs_of(s_ids, t_ids)``
    gives the aligned ``(i, j)`` indices into sample b's response tokens (``response_tokens`` of each side),
    which are mapped back to logit positions."""
    out_b: list[int] = []
    out_s: list[int] = []
    out_t: list[int] = []
    for b in range(student_labels.size(0)):
        for sp, tp in sample_pairs(student_labels[b], teacher_labels[b], pairs_of):
            out_b.append(b)
            out_s.append(sp)
            out_t.append(tp)
    return out_b, out_s, out_t


def aligned_tensors(batch: dict, align, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sample, student_position, teacher_position)`` long tensors of a batch's aligned pairs: the per-sample
    lists the training loop cached with the data (``batch["pairs"]``, ``Method.token_pairs``), or else
    ``align(student_labels, teacher_labels)`` computed now."""
    if "pairs" in batch:
        b = [k for k, ps in enumerate(batch["pairs"]) for _ in ps]
        s = [p for ps in batch["pairs"] for p, _ in ps]
        t = [q for ps in batch["pairs"] for _, q in ps]
    else:
        b, s, t = align(batch["student"]["labels"], batch["teacher"]["labels"])
    return tuple(torch.tensor(x, dtype=torch.long, device=device) for x in (b, s, t))


def tokens_of(tokenizer, ids: list[int]) -> list[str]:
    """Token strings of ``ids`` (``convert_ids_to_tokens``; an unknown id becomes ``""``)."""
    return [t if t is not None else "" for t in tokenizer.convert_ids_to_tokens(ids)]


def eta_pairs(student_tokenizer, teacher_tokenizer, student_ids: list[int], teacher_ids: list[int]
              ) -> list[tuple[int, int]]:
    """ETA's aligned ``(i, j)`` pairs of two id sequences of the same text (DSKD-ETA's rule, arXiv 2504.11426):
    ``exact_token_alignment`` on their token strings, either tokenizer's EOS counting as EOS. DSKD-ETA's
    alignment and the ground truth of ``dwakd attention``'s token-alignment probe."""
    eos = frozenset({student_tokenizer.eos_token, teacher_tokenizer.eos_token})
    return exact_token_alignment(tokens_of(student_tokenizer, student_ids), tokens_of(teacher_tokenizer, teacher_ids),
                                 eos=eos)
