"""DWA-KD — dual-space entropy-weighted KD plus banded Soft-DTW sequence alignment (arXiv 2602.21669), built on
DSKD-CMA's cross-model attention and dual-space terms (``dwakd.methods.dual_space``: the same attention,
projectors, z_t2s / z_s2t and L_ce_t2s as the DSKD-CMA baseline, which uses the same component).

Token level (docs/methods.md "DWA-KD"), over the student's response positions i and the teacher's j::

    w_i = H_s(i) · max_v p_t2s(v | i)                 student side: entropy × projected-teacher confidence (gate)
    w_j = 1 − H_t(j) / log V_t                        teacher side: normalised certainty
    L_kd_stu = Σ_i w_i · D_τ(p_t2s,i ‖ p_s,i)          (p_t2s detached, as in DSKD-CMA)
    L_kd_tea = Σ_j w_j · KL_τ(p_t,j ‖ p_s2t,j)
    L_W-KD  = L_kd_stu + L_kd_tea + L_ce_t2s

The weights are detached and rescaled per sequence so that each sequence's weights sum to its number of response
positions (student weights to the student's count, teacher weights to the teacher's). The entropies and the gate
are those of the models' own distributions (temperature 1, as the unofficial code computes them); the
divergences use τ. A sequence whose raw weights are all zero (e.g. a teacher uniform everywhere) falls back to
uniform weights. **No accuracy mask** on L_kd_stu: the formula of docs/methods.md "DWA-KD" has none (nor has the
unofficial code) — the confidence gate is DWA-KD's soft replacement for DSKD-CMA's hard ``1[argmax z_t2s = y]`` —
except in the ``w_*`` ablations, which are DSKD-CMA *plus* one component and so keep DSKD-CMA's mask (table below).

Sequence level (Soft-DTW, ``dwakd.losses.softdtw``), over the response positions of each sample, gathered to the
left (sample b: S_b student, T_b teacher positions, i, j 0-based within the response)::

    E_s = e_s(y_i)                  the student's input embeddings of its response tokens (trainable: this term
                                    trains the student's embedding table)
    Ẽ_t = P_emb(e_t(y_j))           the teacher's input embeddings of its response tokens, through this method's
                                    own projector P_emb = Linear(d_t → d_s, bias) (a method parameter)
    H_s = h_s(i),  H̃_t = P_t2s(h_t(j))   last hidden states; P_t2s is the CMA module's t2s projector (shared)
    C(X, Y)_ij = 1 − cos(X_i, Y_j)
    D(X, Y) = s_γ(C(X,Y) + band) − ½ [s_γ(C(X,X)) + s_γ(C(Y,Y))]        so D(X, X) = 0 without band
    L_DTW = Σ_b [D(H_s, H̃_t) + D(E_s, Ẽ_t)]

"Response tokens" are the targets ``y`` (``dwakd.align.cma.next_token_targets``): the tokens that the response
positions predict, so E_s and H_s are indexed by the same positions (and by the CMA's rows). P_emb and P_t2s read
the raw teacher features (docs/methods.md "DWA-KD"; the unofficial code does the same), not
DSKD's ``N(·)``-scaled ones. All six cost matrices of a step (cross, student-self, teacher-self for embeddings and
hidden states) are padded into one batch and solved by **one** ``soft_dtw`` call.

Band (detached) from DSKD-CMA's ``A_t2s`` restricted to the response positions, rows renormalised::

    c_i = α Σ_j j·A_ij + (1 − α)·i·T_b/S_b,   H_i = −Σ_j A_ij log A_ij,   w_i = b + β H_i
    band_ij = λ_band · 1[|j − c_i| > w_i]       added to the cross costs only (b = 5, β = 2, α = 0.7, λ_band = 1)

**Normalisation of L_DTW.** A Soft-DTW value is a sum of cell costs (each in [0, 2], plus the band) along an
alignment path of max(S_b, T_b) … S_b + T_b − 1 cells, so D grows linearly with the response length, like a
token sum. L_DTW is therefore returned as the plain sum of D over the samples (the unofficial code does the same)
and the loop's division by the number of student response tokens makes it a per-student-token alignment cost,
on the same scale as the per-token KD terms (O(1)); no further length normalisation.

Total: ``L = λ_CE·CE + λ_W-KD·L_W-KD + λ_DTW·L_DTW`` with γ annealed linearly from ``gamma_start`` to
``gamma_end`` over training (``on_step``; the unofficial code anneals over a fixed 3570 steps).

Ablations (``variant``; paper Table 3 plus the extras of docs/methods.md "DWA-KD ablations"). The paper's ``w/``
rows are read as *one* component added to DSKD-CMA (whose unweighted, accuracy-masked L_kd_stu they keep), so each
row measures exactly that component against the DSKD-CMA row of the main table; ``wo_gate``, ``emb_only``,
``hid_only``, ``no_weights`` and ``srkl`` are the full method minus (or with a change of) exactly the named part.
Read cumulatively, ``w_bdtw`` would be ``wo_gate`` up to the mask; read without DSKD-CMA's mask, ``w_bdtw`` would be
``no_weights`` — this reading gives nine distinct runs, and ``w_bdtw`` vs ``no_weights`` isolates the mask.

============  =========  ==================  ===============  ========  ==============  ===============
variant       acc. mask  student weights     teacher weights  DTW       features        D of L_kd_stu
============  =========  ==================  ===============  ========  ==============  ===============
full          no         H_s · conf (gate)   1 − H_t/log V_t  banded    emb + hidden    ``divergence``
w_ew          yes        H_s (no gate)       1 − H_t/log V_t  none      —               ``divergence``
w_dtw         yes        1                   1                unbanded  emb + hidden    ``divergence``
w_bdtw        yes        1                   1                banded    emb + hidden    ``divergence``
wo_gate       no         H_s (no gate)       1 − H_t/log V_t  banded    emb + hidden    ``divergence``
emb_only      no         H_s · conf (gate)   1 − H_t/log V_t  banded    emb             ``divergence``
hid_only      no         H_s · conf (gate)   1 − H_t/log V_t  banded    hidden          ``divergence``
no_weights    no         1                   1                banded    emb + hidden    ``divergence``
srkl          no         H_s · conf (gate)   1 − H_t/log V_t  banded    emb + hidden    srkl (λ = 0.1)
============  =========  ==================  ===============  ========  ==============  ===============

``divergence`` defaults to fkl (the paper's KL); variant ``srkl`` uses the skewed reverse KL of the unofficial code.
L_kd_tea is the forward KL in every variant (docs/methods.md "DWA-KD"; DSKD-CMA and the unofficial code alike). Each
variant is a ``VariantFlags`` (``FLAGS[variant]``). Logged terms (token-summed, like every method): ``ce``,
``ce_t2s``, ``kd_stu``, ``kd_tea`` (weighted, as they enter the loss), ``dtw_emb``, ``dtw_hid`` (0 where the variant
has no such term), ``t2s_acc`` and ``conf_t2s`` (Σ_i max_v p_t2s(v|i): the mean gate after the loop's division). The
CMA attention for heatmaps: ``method.terms(batch, student_out, teacher_out, return_attention=True).cma.a_t2s``
(``CrossModelAttentionMixin``: the method has a cross-model attention). On-policy distillation (``on_policy``;
docs/methods.md "On-policy distillation"): ``kd_loss`` is λ_W-KD·L_W-KD + λ_DTW·L_DTW alone, and on the student's
samples L_ce_t2s and the ``w_*`` accuracy mask read DSKD-CMA's on-policy labels (the teacher's argmax,
``CrossModelAttentionMixin.t2s_targets``).

Not taken from the unofficial code: its 300-step linear warm-up of the gate, its optional DTW / band warm-ups
(off by default there) and its slicing of the first S_b / T_b positions of each padded row (as we read it, the
prompt, not the response) for the Soft-DTW sequences; it also rescales the entropy before multiplying by the
gate, where docs/methods.md "DWA-KD" rescales the product (followed here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from dwakd.align.cma import next_token_targets
from dwakd.errors import ConfigError
from dwakd.losses import chunked
from dwakd.losses.chunked import block_rows, rowwise
from dwakd.losses.divergences import at_least_fp32
from dwakd.losses.softdtw import cosine_cost, soft_dtw
from dwakd.methods.base import Method, check_kd
from dwakd.methods.dual_space import CMATerms, CrossModelAttentionMixin, cma_terms_per_position, model_dims
from dwakd.registry import register
from dwakd.settings import check_choice, check_range

__all__ = ["DWAKD", "DWAKDConfig", "FLAGS", "VARIANTS", "VariantFlags", "band_geometry", "entropy", "gamma_at",
           "gather_left", "rescale_per_sequence", "response_attention", "soft_band", "target_embeddings"]


@dataclass(frozen=True)
class VariantFlags:
    """What one ``variant`` computes (see the table in the module docstring)."""

    acc_mask: bool  # DSKD-CMA's accuracy mask on L_kd_stu
    student_weights: str  # "gated" (H_s · max p_t2s) | "entropy" (H_s) | "uniform"
    teacher_weights: bool  # 1 − H_t / log V_t (else uniform)
    dtw: str  # "none" | "unbanded" | "banded"
    emb: bool  # Soft-DTW on the input embeddings
    hid: bool  # Soft-DTW on the last hidden states
    divergence: str | None = None  # D of L_kd_stu; None: ``cfg.divergence``


_FULL = VariantFlags(acc_mask=False, student_weights="gated", teacher_weights=True, dtw="banded", emb=True, hid=True)
_ON_DSKD = VariantFlags(acc_mask=True, student_weights="uniform", teacher_weights=False, dtw="none", emb=False,
                        hid=False)  # DSKD-CMA itself; the w_* rows add one component to it
FLAGS: dict[str, VariantFlags] = {
    "full": _FULL,
    "w_ew": replace(_ON_DSKD, student_weights="entropy", teacher_weights=True),
    "w_dtw": replace(_ON_DSKD, dtw="unbanded", emb=True, hid=True),
    "w_bdtw": replace(_ON_DSKD, dtw="banded", emb=True, hid=True),
    "wo_gate": replace(_FULL, student_weights="entropy"),
    "emb_only": replace(_FULL, hid=False),
    "hid_only": replace(_FULL, emb=False),
    "no_weights": replace(_FULL, student_weights="uniform", teacher_weights=False),
    "srkl": replace(_FULL, divergence="srkl"),
}
VARIANTS = tuple(FLAGS)


@dataclass
class DWAKDConfig:
    """DWA-KD options (docs/methods.md "DWA-KD"; the paper gives no λ and no γ: those are the unofficial code's)."""

    ce_rate: float = 0.5  # λ_CE (the unofficial code's ce_rate)
    wkd_rate: float = 0.5  # λ_W-KD (the unofficial code's kd_rate)
    dtw_rate: float = 0.2  # λ_DTW (the unofficial code's dtw_rate)
    temperature: float = 2.0  # τ (DSKD script KD_TEMP=2.0)
    divergence: str = "fkl"  # D of L_kd_stu (paper: KL; DSKD script KD_OBJ="forward_kl"); variant srkl overrides
    gamma_start: float = 2.0  # Soft-DTW γ at the start of training (unofficial code dtw_gamma_start)
    gamma_end: float = 0.8  # γ at the end, linear annealing (unofficial code dtw_gamma_end)
    band_width: float = 5.0  # b, base half-width of the band in teacher positions (unofficial code)
    band_entropy_coef: float = 2.0  # β, width added per nat of A_t2s row entropy (unofficial code)
    band_center_blend: float = 0.7  # α, weight of the attention centre vs the diagonal (unofficial code)
    band_penalty: float = 1.0  # λ_band, cost added outside the band (unofficial code)
    variant: str = "full"  # ablation (module docstring; docs/methods.md "DWA-KD ablations")

    def validate(self, where: str) -> None:
        check_kd(self, where)
        check_choice(where, "variant", self.variant, VARIANTS)
        for f in ("ce_rate", "wkd_rate", "dtw_rate", "band_width", "band_entropy_coef", "band_penalty"):
            check_range(where, f, getattr(self, f), 0.0)
        check_range(where, "band_center_blend", self.band_center_blend, 0.0, 1.0)
        check_range(where, "gamma_start", self.gamma_start, 0.0, lo_open=True)
        check_range(where, "gamma_end", self.gamma_end, 0.0, lo_open=True)
        forced = FLAGS[self.variant].divergence
        if forced is not None and self.divergence not in ("fkl", forced):
            raise ConfigError(f"{where}.divergence: variant {self.variant!r} sets the divergence to {forced!r}; "
                              f"got divergence={self.divergence!r} as well (leave it at its default)")


# ---------------------------------------------------------------------------------------------------- pure helpers

def gamma_at(progress: float, start: float, end: float) -> float:
    """Linear schedule: ``start`` at progress 0, ``end`` at progress 1 (clamped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    return start + (end - start) * p


def rescale_per_sequence(w: torch.Tensor, seq: torch.Tensor, n_seq: int) -> torch.Tensor:
    """``w [N]`` (≥ 0) of positions belonging to sequences ``seq [N]`` (ids < ``n_seq``), rescaled so that each
    sequence's weights sum to its number of positions. A sequence whose weights sum to 0 gets weights 1."""
    w = w.float()
    sums = torch.zeros(n_seq, dtype=w.dtype, device=w.device).index_add_(0, seq, w)
    counts = torch.bincount(seq, minlength=n_seq).to(w.dtype)
    ok = sums > torch.finfo(w.dtype).tiny
    scale = torch.where(ok, counts / sums.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(sums))
    return torch.where(ok[seq], w * scale[seq], torch.ones_like(w))


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(at_least_fp32(logits), dim=-1)
    if torch.is_grad_enabled() and logp.requires_grad:
        return -(logp.exp() * logp).sum(-1)
    p = logp.exp()  # no gradient: p·log p in place (one [N, V] temporary fewer; the same arithmetic)
    return -p.mul_(logp).sum(-1)


def entropy(logits: torch.Tensor, chunk_rows: int | str | None = "auto", index: torch.Tensor | None = None
            ) -> torch.Tensor:
    """``H = −Σ_v p log p`` of ``softmax(logits)`` over the last dimension (fp32, nats). ``logits [N, V]`` with
    more rows than a block are taken in blocks of rows (``dwakd.losses.chunked``; "auto": ``rows_for(V,
    tensors=SCAN_TENSORS)``, None: one call).
    ``index [n]`` (long): the entropies of the rows ``logits[index]`` only, gathered block by block (no ``[n, V]``
    copy; ``rowwise(..., gather_from=logits)``)."""
    if index is not None:
        if logits.dim() != 2 or index.dim() != 1:
            raise ValueError(f"entropy: with an index, expected logits [M, V] and index [n], got "
                             f"{tuple(logits.shape)} and {tuple(index.shape)}")
        rows = block_rows(chunk_rows, logits.size(-1), tensors=chunked.SCAN_TENSORS)
        return rowwise(_entropy, [index], chunk_rows=rows, gather_from=logits)
    if logits.dim() != 2 or chunk_rows is None:
        return _entropy(logits)
    rows = block_rows(chunk_rows, logits.size(-1), tensors=chunked.SCAN_TENSORS)
    return rowwise(_entropy, [logits], chunk_rows=rows)  # rows ≥ N: one call


def gather_left(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``mask [B, L]``: ``(order [B, n], lengths [B], valid [B, n])``, n = the largest count; ``order[b, :k]``
    are the indices of sample b's masked positions in order (``x.gather(1, order)`` packs them to the left)."""
    lengths = mask.sum(1)
    n = int(lengths.max()) if mask.numel() else 0
    order = torch.argsort((~mask.bool()).to(torch.uint8), dim=1, stable=True)[:, :n]
    valid = torch.arange(n, device=mask.device)[None, :] < lengths[:, None]
    return order, lengths, valid


def _take(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rows ``order [B, n]`` of ``x [B, L, ...]``."""
    idx = order.reshape(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return x.gather(1, idx)


def target_embeddings(embedding: nn.Module, y: torch.Tensor, order: torch.Tensor, valid: torch.Tensor,
                      input_ids: torch.Tensor, embeds: torch.Tensor | None) -> torch.Tensor:
    """``e(y) [B, n, d]``: the input embeddings of the targets ``y [B, n]`` at the packed positions ``order
    [B, n]`` (``gather_left``; ``valid [B, n]`` marks the real ones), where position k's target is the token at
    k + 1. When every valid target *is* that input token (``input_ids.gather(1, order + 1)``, true of gold and
    sampled responses alike) and the forward's own lookup ``embeds = embedding(input_ids) [B, L, d]`` is given,
    its rows at k + 1 are returned: the same values, and the gradient reaches the embedding table through the
    forward's own embedding backward, instead of a second ``[V, d]`` gradient buffer made in the middle of the
    loss's backward pass (147 MiB for GPT-2, alive from there to the end of the step). Otherwise: ``embedding(y)``.
    Invalid slots hold rows that mean nothing (the caller masks them)."""
    if embeds is not None:
        nxt = (order + 1).clamp_max(input_ids.size(1) - 1)
        if torch.equal(torch.where(valid, input_ids.gather(1, nxt), 0), torch.where(valid, y, 0)):
            return _take(embeds, nxt)
    return embedding(y)


def response_attention(a: torch.Tensor, order_s: torch.Tensor, order_t: torch.Tensor) -> torch.Tensor:
    """``a [B, L_s, L_t]`` restricted to the response rows ``order_s [B, S]`` and columns ``order_t [B, T]``
    (``gather_left`` of the student's and the teacher's response masks): ``[B, S, T]``, packed to the left."""
    return _take(_take(a, order_s).transpose(1, 2), order_t).transpose(1, 2)


def _band_grid(a: torch.Tensor, len_s: torch.Tensor, len_t: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i [S], j [T], valid [B, S, T])`` for an attention matrix ``a [B, S, T]`` packed to the left."""
    _, S, T = a.shape
    i = torch.arange(S, device=a.device, dtype=torch.float32)
    j = torch.arange(T, device=a.device, dtype=torch.float32)
    valid = (i[None, :, None] < len_s[:, None, None]) & (j[None, None, :] < len_t[:, None, None])
    return i, j, valid


def band_geometry(a: torch.Tensor, len_s: torch.Tensor, len_t: torch.Tensor, width: float, entropy_coef: float,
                  center_blend: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centre [B, S], half_width [B, S])`` of the band, in teacher positions, from an attention matrix
    ``a [B, S, T]`` packed to the left (sample b's valid cells are ``a[b, :len_s[b], :len_t[b]]``): rows are
    renormalised over the valid columns, ``c_i = α Σ_j j·A_ij + (1 − α)·i·T_b/S_b`` and ``w_i = b + β·H_i``
    (H_i the row entropy, nats). Rows past ``len_s[b]`` hold values that mean nothing. No gradient. The one
    formula of the band: ``soft_band`` and the attention export (``dwakd.attention``) both use it."""
    with torch.no_grad():
        i, j, valid = _band_grid(a, len_s, len_t)
        a = torch.where(valid, a.detach().float().clamp_min(0.0), 0.0)
        a = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        ratio = len_t.float() / len_s.float().clamp_min(1.0)
        centre = center_blend * (a * j).sum(-1) + (1.0 - center_blend) * i[None, :] * ratio[:, None]
        half_width = width + entropy_coef * -torch.xlogy(a, a).sum(-1)
        return centre, half_width


def soft_band(a: torch.Tensor, len_s: torch.Tensor, len_t: torch.Tensor, width: float, entropy_coef: float,
              center_blend: float, penalty: float) -> torch.Tensor:
    """The band penalty ``[B, S, T]`` from an attention matrix ``a [B, S, T]`` (packed to the left: sample b's
    valid cells are ``a[b, :len_s[b], :len_t[b]]``): ``λ·1[|j − c_i| > w_i]`` with the centre ``c_i`` and the
    half-width ``w_i`` of ``band_geometry``; exactly 0 outside the valid cells. No gradient."""
    with torch.no_grad():
        _, j, valid = _band_grid(a, len_s, len_t)
        centre, w = band_geometry(a, len_s, len_t, width, entropy_coef, center_blend)
        out = penalty * ((j[None, None, :] - centre[..., None]).abs() > w[..., None]).float()
        return torch.where(valid, out, 0.0)


# ---------------------------------------------------------------------------------------------------- the method

@register
class DWAKD(CrossModelAttentionMixin, Method):
    """DWA-KD (see the module docstring): DSKD-CMA's terms, entropy-weighted, plus banded Soft-DTW."""

    name = "dwakd"
    Config = DWAKDConfig
    citation = ("DWA-KD: dual-space entropy weighting and banded Soft-DTW alignment for cross-tokenizer knowledge "
                "distillation, arXiv 2602.21669; builds on DSKD-CMA (Zhang et al., EMNLP 2024, arXiv 2406.17328).")

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)  # the CMA (initialised first)
        self.flags = FLAGS[cfg.variant]
        self.kd_divergence = self.flags.divergence or cfg.divergence
        self.gamma = cfg.gamma_start
        if self.flags.emb:
            d_s, d_t = model_dims(student, teacher)
            self.emb_t2s = nn.Linear(d_t, d_s, bias=True)  # P_emb: the embedding DTW's own projector

    def terms(self, batch, student_out, teacher_out, return_attention: bool = False,
              with_ce: bool = True) -> CMATerms:
        """DSKD-CMA's terms, with the per-position KD values (``kd_stu_pos`` with this variant's divergence); on a
        batch of the student's samples labelled as DSKD-CMA's (``CrossModelAttentionMixin.t2s_targets``)."""
        return cma_terms_per_position(self.cma, *self._models, *self.pads, batch, student_out, teacher_out,
                                      divergence_name=self.kd_divergence, temperature=self.cfg.temperature,
                                      return_attention=return_attention,
                                      targets=self.t2s_targets(batch, teacher_out), with_ce=with_ce,
                                      confidence=True)  # the gate (logged by every variant)

    def on_step(self, progress: float) -> None:
        self.gamma = gamma_at(progress, self.cfg.gamma_start, self.cfg.gamma_end)

    # -- token level ------------------------------------------------------------------------------------
    def token_weights(self, t: CMATerms, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      student_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(w_s [N_s], w_t [N_t], conf [N_s])`` at the response positions (detached; each sequence's weights
        sum to its response length). ``student_logits`` / ``teacher_logits``: the models' logits there; with
        ``student_index [N_s]``, ``student_logits`` holds more rows and the response rows are
        ``student_logits[student_index]`` (read block by block, never copied: ``CMATerms.student_logits``)."""
        f = self.flags
        with torch.no_grad():
            conf = t.confidence()  # max_v p_t2s(v | i), taken with the accuracy mask, block by block
            seq_s = t.student_mask.nonzero()[:, 0]
            seq_t = t.teacher_mask.nonzero()[:, 0]
            n = t.student_mask.size(0)
            if f.student_weights == "uniform":
                w_s = torch.ones_like(conf)
            else:
                w_s = entropy(student_logits, index=student_index)
                if f.student_weights == "gated":
                    w_s = w_s * conf
                w_s = rescale_per_sequence(w_s.clamp_min(0.0), seq_s, n)
            if f.teacher_weights:
                v_t = teacher_logits.size(-1)
                w_t = (1.0 - entropy(teacher_logits) / math.log(v_t)).clamp(0.0, 1.0)
                w_t = rescale_per_sequence(w_t, seq_t, n)
            else:
                w_t = torch.ones(seq_t.numel(), device=conf.device)
        return w_s, w_t, conf

    # -- sequence level ---------------------------------------------------------------------------------
    def dtw_terms(self, batch: dict, student_out, teacher_out, t: CMATerms
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_DTW on embeddings, L_DTW on hidden states)``, each summed over the samples (0 when off)."""
        f = self.flags
        zero = student_out.logits.new_zeros((), dtype=torch.float32)
        if f.dtw == "none":
            return zero, zero
        order_s, len_s, valid_s = gather_left(t.student_mask)
        order_t, len_t, valid_t = gather_left(t.teacher_mask)
        if order_s.size(1) == 0 or order_t.size(1) == 0:
            return zero, zero
        student, teacher = self._models
        pairs: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        if f.emb:
            y_s = next_token_targets(batch["student"]["labels"], self.pads[0]).gather(1, order_s)
            y_t = next_token_targets(batch["teacher"]["labels"], self.pads[1]).gather(1, order_t)
            # trainable: trains the student's embedding table (through the forward's lookup where it can)
            e_s = target_embeddings(student.get_input_embeddings(), y_s, order_s, valid_s,
                                    batch["student"]["input_ids"], student_out.embeds)
            with torch.no_grad():
                e_t = teacher.get_input_embeddings()(y_t)
            pairs.append(("emb", e_s, self.emb_t2s(e_t.to(self.emb_t2s.weight.dtype))))
        if f.hid:
            h_s = _take(student_out.hidden, order_s)
            h_t = _take(teacher_out.hidden.detach(), order_t)
            pairs.append(("hid", h_s, self.cma.t2s(h_t.to(self.cma.t2s.weight.dtype))))

        band = None
        if f.dtw == "banded":
            a = response_attention(t.cma.a_t2s, order_s, order_t)  # [B, S, T] response × response
            c = self.cfg
            band = soft_band(a, len_s, len_t, c.band_width, c.band_entropy_coef, c.band_center_blend,
                             c.band_penalty)

        S, T = order_s.size(1), order_t.size(1)
        n = max(S, T)
        ls, lt = len_s.clamp_min(1), len_t.clamp_min(1)
        costs, lx, ly = [], [], []
        for _, x, y in pairs:
            x = torch.where(valid_s[..., None], x.float(), 0.0)
            y = torch.where(valid_t[..., None], y.float(), 0.0)
            cross = cosine_cost(x, y)
            if band is not None:
                cross = cross + band
            for c, a_len, b_len in ((cross, ls, lt), (cosine_cost(x, x), ls, ls), (cosine_cost(y, y), lt, lt)):
                costs.append(F.pad(c, (0, n - c.size(2), 0, n - c.size(1))))
                lx.append(a_len)
                ly.append(b_len)
        s = soft_dtw(torch.cat(costs), torch.cat(lx), torch.cat(ly), self.gamma)  # ONE call per step
        B = order_s.size(0)
        both = ((len_s > 0) & (len_t > 0)).float()
        out = {"emb": zero, "hid": zero}
        for k, (name, _, _) in enumerate(pairs):
            cross, xx, yy = s[3 * k * B:(3 * k + 3) * B].view(3, B)
            out[name] = ((cross - 0.5 * (xx + yy)) * both).sum()
        return out["emb"], out["hid"]

    # -- the loss ---------------------------------------------------------------------------------------
    on_policy = True

    def ce_weight(self) -> float:
        return self.cfg.ce_rate

    def loss(self, batch, student_out, teacher_out):
        return self._loss(batch, student_out, teacher_out, with_ce=True)

    def kd_loss(self, batch, student_out, teacher_out):
        """λ_W-KD·L_W-KD + λ_DTW·L_DTW alone (``Method.kd_loss``): ``loss`` without λ_CE·CE."""
        return self._loss(batch, student_out, teacher_out, with_ce=False)

    def _loss(self, batch, student_out, teacher_out, with_ce: bool):
        f, c = self.flags, self.cfg
        t = self.terms(batch, student_out, teacher_out, return_attention=f.dtw == "banded", with_ce=with_ce)
        w_s, w_t, conf = self.token_weights(t, t.student_logits, t.teacher_rows,  # the rows DSKD-CMA's terms read
                                            student_index=t.student_index)
        if f.acc_mask:  # DSKD-CMA's accuracy mask (the w_* ablations only)
            w_s = w_s * t.acc
        kd_stu = (w_s * t.kd_stu_pos).sum()  # the per-position values computed once, by cma_terms_per_position
        kd_tea = (w_t * t.kd_tea_pos).sum()
        dtw_emb, dtw_hid = self.dtw_terms(batch, student_out, teacher_out, t)
        logs = {**t.logs(), "kd_stu": kd_stu.detach(), "kd_tea": kd_tea.detach(), "dtw_emb": dtw_emb.detach(),
                "dtw_hid": dtw_hid.detach(), "conf_t2s": conf.sum()}
        if not with_ce:
            del logs["ce"]
            return c.wkd_rate * (t.ce_t2s + kd_stu + kd_tea) + c.dtw_rate * (dtw_emb + dtw_hid), logs
        loss = (c.ce_rate * t.ce + c.wkd_rate * (t.ce_t2s + kd_stu + kd_tea)
                + c.dtw_rate * (dtw_emb + dtw_hid))
        return loss, logs
