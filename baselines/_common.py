"""Helpers shared by the cross-tokenizer baselines (not a method: the registry skips ``_``-modules).

Position convention (``dwakd.losses.divergences``): logits at position k predict ``labels[:, k + 1]``, so the
*response positions* of a sequence are the k with ``labels[:, k + 1] != −100`` (``response_mask``). The
student's response-token count ``(labels[:, 1:] != −100).sum()`` is what the training loop divides every
token-summed term by.
"""

from __future__ import annotations

import torch

from dwakd.errors import ChoiceError, ConfigError
from dwakd.losses.divergences import DIVERGENCES, IGNORE

ALTERNATIVES = "mined, uld, dskd_cma, dskd_eta or cma_ga"


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: position k predicts a response token (``labels[:, k + 1] != −100``); last is False."""
    m = torch.zeros_like(labels, dtype=torch.bool)
    m[:, :-1] = labels[:, 1:] != IGNORE
    return m


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


def n_response_tokens(labels: torch.Tensor) -> torch.Tensor:
    """The student's response-token count of a micro-batch (what the loop sums into its divisor)."""
    return (labels[:, 1:] != IGNORE).sum()


# ------------------------------------------------------------------------------------ start-up checks

def require_teacher(name: str, teacher) -> None:
    if teacher is None:
        raise ConfigError(f"{name}: needs a teacher model (the method distils from one); got none")


def require_tokenizers(name: str, student_tokenizer, teacher_tokenizer, why: str) -> None:
    """Fail at start-up when a method that reads token strings was built without both tokenizers."""
    missing = [r for r, t in (("student", student_tokenizer), ("teacher", teacher_tokenizer)) if t is None]
    if missing:
        raise ConfigError(f"{name}: needs both tokenizers ({why}); the {' and '.join(missing)} tokenizer is "
                          f"missing")


def require_offsets(name: str, tokenizer, role: str, instead: str) -> None:
    """Fail at start-up unless ``tokenizer`` can return character offsets (a fast tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{name}: the {role} tokenizer ({type(tokenizer).__name__}) cannot return character offsets "
            f"(return_offsets_mapping needs a fast, Rust-backed tokenizer); {instead}")


def pad_id(tokenizer, model) -> int:
    """The pad id used for ``e(y)`` lookups: the tokenizer's, else the model config's, else EOS, else 0."""
    for src in (tokenizer, getattr(model, "config", None)):
        for attr in ("pad_token_id", "eos_token_id"):
            v = getattr(src, attr, None) if src is not None else None
            if isinstance(v, int):
                return v
    return 0


# ------------------------------------------------------------------------------------ config checks

def check_range(where: str, field: str, value: float, lo: float, hi: float | None = None,
                lo_open: bool = False) -> None:
    bad = value <= lo if lo_open else value < lo
    if hi is not None:
        bad = bad or value > hi
    if bad:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]" if hi is not None else f"{'>' if lo_open else '>='} {lo}"
        raise ConfigError(f"{where}.{field}: expected a value {'in ' if hi is not None else ''}{rng}, got {value!r}")


def check_choice(where: str, field: str, value: str, choices) -> None:
    """``value`` one of ``choices``; the ChoiceError carries them, so that the dry run knows them too."""
    if value not in choices:
        raise ChoiceError(f"{where}.{field}: expected one of {sorted(choices)}, got {value!r}", field, choices)


def check_kd(cfg, where: str) -> None:
    """The fields every KD config shares: kd_rate ∈ [0, 1], temperature > 0, a known divergence."""
    if hasattr(cfg, "kd_rate"):
        check_range(where, "kd_rate", cfg.kd_rate, 0.0, 1.0)
    if hasattr(cfg, "temperature"):
        check_range(where, "temperature", cfg.temperature, 0.0, lo_open=True)
    if hasattr(cfg, "divergence"):
        check_choice(where, "divergence", cfg.divergence, DIVERGENCES)
