"""Token-level losses on logits, masked to response tokens and **summed** over them.

Shapes: ``logits [B, L, V]``, ``labels [B, L]`` with -100 on prompt and padding. Position i predicts
``labels[:, i + 1]`` (the causal shift is done here, once).
"""

from __future__ import annotations

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
