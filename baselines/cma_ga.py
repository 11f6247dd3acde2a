"""DSKD-CMA-GA — DSKD-CMA plus key–query matching by adversarial learning (arXiv 2603.22056, ICASSP 2026).

On top of DSKD-CMA (``baselines.dskd_cma``), the CMA keys ``k = N([e_t(x); e_t(y)])`` are "real" and the
queries ``q = P_query([e_s(x); e_s(y)])`` are "fake" samples for a discriminator

    D(z) = Linear(768→1)(LeakyReLU_0.1(Linear(2d_t→768)(Dropout_0.1(z')))),
    z' = σ(u)·ReLU(u) + (1 − σ(u))·z,  u = Linear(2d_t→2d_t)(z)          (a highway layer)

trained with BCE-with-logits. A gradient-reversal layer R_β (identity forward, −β·grad backward, β = 1) sits
between q and D, so minimising one BCE trains D to tell keys from queries while pushing P_query to make the
queries look like keys::

    L_GA = Σ_i BCE(D(R_β(q_i)), 0) + (n_s / n_t)·Σ_j BCE(D(k_j), 1)
    L = (1 − α)·CE + α·(L_ce_t2s + L_kd_stu + L_kd_tea) + kq_rate·L_GA

over the student's (i) and the teacher's (j) response positions; the ``n_s / n_t`` factor (response-token
counts of the micro-batch) makes the two halves per-token means once the loop divides by n_s, i.e.
``mean BCE_fake + mean BCE_real`` as in the reference's ``d_loss_real + d_loss_fake``. The discriminator is
one of the method's parameters (AdamW group at ``projector_lr``).

Variants (``variant``):

* ``"paper"`` (default): as above — the discriminator is trained and the reversed gradient reaches P_query.
* ``"reference_code"``: what the public code (stellaevat/DSKD-KQ) computes. Its ``forward`` unpacks the CMA
  function's ``(…, queries, keys)`` as ``(…, keys, queries)``, so the *queries* enter the "real" branch —
  through the gradient reversal, not detached, BCE target 1 — and the *keys* the detached "fake" branch,
  target 0; D is never added to the optimiser (here: its parameters are frozen). So D stays at its random
  initialisation and the reversed gradient still reaches P_query, pushing D(q) towards the keys' label::

      L_GA(reference_code) = Σ_i BCE(D(R_β(q_i)), 1) + (n_s / n_t)·Σ_j BCE(D(k_j), 0)

  weighted by ``kq_rate / n_s`` instead of ``kq_rate``: the public code adds the GA *mean* to token sums
  before dividing by the token count.

  (Read as written, the code's ``q.detach()`` would detach the queries and leave P_query untouched; the parity
  fixture ``tests/fixtures/parity/dskd_kq`` shows the reference's query-projector gradient changes with the GA
  term. docs/methods.md "DSKD-CMA-GA" describes the code as it runs.)

Logged terms (token-summed): DSKD-CMA's ``ce``, ``ce_t2s``, ``kd_stu``, ``kd_tea``, ``t2s_acc``, plus ``ga``.
On-policy (DSKD-CMA's ``on_policy``): ``kd_loss`` is DSKD-CMA's KD part plus ``kq_rate·L_GA``, on the student's
samples.

Deviations from the reference code: BCE over the response positions only (the reference takes the mean over
every position of the padded batch, prompt and padding included); the variant ``paper`` trains D, gives the
queries the "fake" label and weights the per-token GA by ``kq_rate`` (the reference: ``kq_rate/N``), as the
paper describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.dskd_cma import DSKDCMA
from dwakd.methods.base import check_kd
from dwakd.methods.dual_space import CMATerms, model_dims
from dwakd.registry import register
from dwakd.settings import check_choice, check_range

VARIANTS = ("paper", "reference_code")


@dataclass
class CMAGAConfig:
    """DSKD-CMA-GA options (docs/methods.md "DSKD-CMA-GA")."""

    kd_rate: float = 0.5  # α (paper: α = 0.5, as DSKD)
    temperature: float = 2.0  # τ (DSKD-CMA's KD_TEMP=2.0; the paper builds on its scripts)
    divergence: str = "fkl"  # D of L_kd_stu (DSKD-CMA's KD_OBJ="forward_kl")
    kq_rate: float = 1.0  # weight of L_GA (paper / DSKD-KQ: kq_rate = 1.0)
    grl_beta: float = 1.0  # gradient-reversal factor β (paper: 1)
    disc_hidden: int = 768  # discriminator width (paper: 2d_t → 768 → 1)
    disc_dropout: float = 0.1  # dropout after the highway layer (paper: 0.1)
    leaky_slope: float = 0.1  # LeakyReLU negative slope (paper: 0.1)
    variant: str = "paper"  # "paper" | "reference_code" (the paper's intent is the default)

    def validate(self, where: str) -> None:
        check_kd(self, where)
        check_choice(where, "variant", self.variant, VARIANTS)
        check_range(where, "kq_rate", self.kq_rate, 0.0)
        check_range(where, "grl_beta", self.grl_beta, 0.0)
        check_range(where, "disc_dropout", self.disc_dropout, 0.0, 1.0)
        check_range(where, "disc_hidden", self.disc_hidden, 0, lo_open=True)
        check_range(where, "leaky_slope", self.leaky_slope, 0.0)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, beta):
        ctx.beta = beta
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.beta * grad, None


def grad_reverse(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by −β in the backward pass (Ganin & Lempitsky 2015)."""
    return _GradReverse.apply(x, beta)


class KQDiscriminator(nn.Module):
    """Highway layer, dropout, Linear(d→hidden), LeakyReLU, Linear(hidden→1): one logit per vector (real = key)."""

    def __init__(self, dim: int, hidden: int = 768, dropout: float = 0.1, slope: float = 0.1):
        super().__init__()
        self.highway = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.LeakyReLU(slope)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = self.highway(z)
        g = torch.sigmoid(u)
        z = g * torch.relu(u) + (1.0 - g) * z
        return self.fc2(self.act(self.fc1(self.dropout(z)))).squeeze(-1)


@register
class DSKDCMAGA(DSKDCMA):
    """DSKD-CMA with adversarial key–query matching (see the module docstring)."""

    name = "cma_ga"
    Config = CMAGAConfig
    citation = ("Tsiapali, Do and Knill, 'Dual-Space Knowledge Distillation with Key-Query Matching for Large "
                "Language Models with Vocabulary Mismatch' (DSKD-CMA-GA), ICASSP 2026, arXiv 2603.22056 "
                "(code: stellaevat/DSKD-KQ); builds on DSKD, arXiv 2406.17328.")

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        _, d_t = model_dims(student, teacher)
        self.discriminator = KQDiscriminator(2 * d_t, cfg.disc_hidden, cfg.disc_dropout, cfg.leaky_slope)
        if cfg.variant == "reference_code":
            self.discriminator.requires_grad_(False)  # the public code never adds it to the optimiser

    def ga_term(self, t: CMATerms) -> torch.Tensor:
        """``L_GA`` (token-summed) from the queries and keys of the CMA at the response positions."""
        q = t.cma.q[t.student_mask]
        k = t.cma.k[t.teacher_mask].detach()
        # paper: queries "fake" (0), keys "real" (1); reference_code: the public code's swapped labels
        q_label, k_label = (0.0, 1.0) if self.cfg.variant == "paper" else (1.0, 0.0)
        d_q = self.discriminator(grad_reverse(q, self.cfg.grl_beta)).float()
        d_k = self.discriminator(k.to(q.dtype)).float()
        bce_q = F.binary_cross_entropy_with_logits(d_q, torch.full_like(d_q, q_label), reduction="sum")
        bce_k = F.binary_cross_entropy_with_logits(d_k, torch.full_like(d_k, k_label), reduction="sum")
        return bce_q + bce_k * (q.size(0) / max(k.size(0), 1))

    def kq_weight(self, t: CMATerms):
        """The weight of L_GA: ``kq_rate``, or ``kq_rate / N`` for ``reference_code`` (module docstring)."""
        kq = self.cfg.kq_rate
        if self.cfg.variant == "reference_code":  # the public code adds the GA *mean* to token sums: kq/N
            kq = kq / t.student_mask.sum().clamp(min=1)
        return kq

    def kd_loss(self, batch, student_out, teacher_out):
        t = self.terms(batch, student_out, teacher_out, with_ce=False)
        ga = self.ga_term(t)
        logs = {**t.logs(), "ga": ga.detach()}
        del logs["ce"]
        return self.kd_part(t) + self.kq_weight(t) * ga, logs

    def loss(self, batch, student_out, teacher_out):
        t = self.terms(batch, student_out, teacher_out)
        ga = self.ga_term(t)
        loss = (1.0 - self.cfg.kd_rate) * t.ce + self.kd_part(t) + self.kq_weight(t) * ga
        return loss, {**t.logs(), "ga": ga.detach()}
