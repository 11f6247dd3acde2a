"""Dual-space KD over a cross-model attention (DSKD v1, Zhang et al., EMNLP 2024, arXiv 2406.17328): the terms
and the component that DSKD-CMA, DSKD-CMA-GA and DWA-KD share. Not a method: a method *has* a cross-model
attention by mixing ``CrossModelAttentionMixin`` in before ``Method``.

With the cross-model attention of ``dwakd.align.cma`` (``h_t2s = A_t2s V_t``, ``h_s2t = A_s2t V_s``), over the
student's response positions i and the teacher's j (``dwakd.align.responses.response_mask``)::

    z_t2s = h_t2s · W_s^headᵀ            (student head detached)
    z_s2t = h_s2t · W_t^headᵀ            (teacher head, frozen)
    L_ce_t2s = Σ_i CE(z_t2s,i, y_i)       trains P_query and P_t2s
    L_kd_stu = Σ_i 1[argmax z_t2s,i = y_i] · D_τ(stopgrad p_t2s,i ‖ p_s,i)
    L_kd_tea = Σ_j KL_τ(p_t,j ‖ p_s2t,j)  trains P_s2t, P_query (through A_s2t) and the student (h_s)

D is the method's divergence, both logit sets divided by τ; L_kd_tea is the forward KL whatever D (DSKD's code).
``cma_terms`` returns these sums (DSKD-CMA, DSKD-CMA-GA); ``cma_terms_per_position`` also the unmasked
per-position values of both KD terms, for a method that weights them itself (DWA-KD). The student's index
embeddings are detached (DSKD's code): the terms train the student only through ``h_s`` and L_kd_stu.

Memory: no ``[N_s, V_s]`` tensor of the whole micro-batch is kept. ``z_t2s`` is formed block by block from
``h_t2s`` (``[N_s, d_s]``, detached) whenever it is read — once for the accuracy mask (and DWA-KD's gate), then
inside L_kd_stu's blocks, again in their backward recomputation (``dwakd.losses.chunked``) — and L_kd_stu reads
the student's response rows straight from its logits ``[B·L, V_s]`` (``rowwise(..., gather_from=...)``): no copy
of the rows, and their gradient is one buffer of the logits' shape instead of a gradient of the copy plus the
indexing's own ``[B, L, V_s]`` one. The accuracy-masked sum of ``cma_terms`` evaluates the accurate rows only
(the others contribute exactly 0); ``cma_terms_per_position`` takes the CE in the same pass as L_kd_stu (the same
rows), so that both gradients go into one such buffer.

On a batch of the student's own samples (on-policy distillation, ``batch["on_policy"]``) there is no gold y_i:
L_ce_t2s and the accuracy mask then read the teacher's argmax at the teacher position aligned to i (exact token
alignment), mapped into the student vocabulary (``teacher_argmax_targets``; −100, i.e. skipped, where i has no
aligned position or the token no student id), as DSKD v2's on-policy CMA criterion does. The index embeddings
``e(y)`` still read the sampled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dwakd.align.cma import CMAOutput, CrossModelAttention, index_embeddings, next_token_targets
from dwakd.align.projection import shared_vocab
from dwakd.align.responses import IGNORE, aligned_positions, eta_pairs, response_mask
from dwakd.losses import chunked
from dwakd.losses.chunked import rows_for, rowwise
from dwakd.losses.divergences import at_least_fp32, head_ce, head_divergence, row_divergence, token_ce
from dwakd.methods.base import require_teacher, require_tokenizers
from dwakd.models import lm_head_weight, pad_id

__all__ = ["CMATerms", "CrossModelAttentionMixin", "cma_terms", "cma_terms_per_position", "model_dims",
           "max_prob", "rows_argmax", "student_ce_kd", "student_kd", "student_logits_at", "t2s_scan",
           "teacher_argmax_targets", "teacher_label_map"]


@dataclass
class CMATerms:
    """The dual-space terms of one micro-batch (token-summed) and what the methods build on."""

    ce: torch.Tensor
    ce_t2s: torch.Tensor
    kd_stu: torch.Tensor
    kd_tea: torch.Tensor
    t2s_acc: torch.Tensor
    cma: CMAOutput
    student_mask: torch.Tensor  # [B, S] response positions
    teacher_mask: torch.Tensor  # [B, T]
    t2s_hidden: torch.Tensor  # [N_s, d_s] h_t2s at the student's response positions (detached)
    student_head: torch.Tensor  # [V_s, d_s] W_s^head (detached): z_t2s = t2s_hidden · W_s^headᵀ (``z_t2s``)
    acc: torch.Tensor | None = None  # [N_s] bool: argmax z_t2s is the gold token (L_kd_stu's mask)
    t2s_conf: torch.Tensor | None = None  # [N_s] fp32 max_v softmax(z_t2s)_v (``confidence=True``: DWA-KD's gate)
    kd_stu_pos: torch.Tensor | None = None  # [N_s] unmasked D_τ(p_t2s ‖ p_s) (``cma_terms_per_position``)
    kd_tea_pos: torch.Tensor | None = None  # [N_t] KL_τ(p_t ‖ p_s2t) (``cma_terms_per_position``)
    student_logits: torch.Tensor | None = None  # [M, V_s] the student's logits, flat (``student_logits_at``)
    student_index: torch.Tensor | None = None  # [N_s] long: its rows at the response positions (row-major)
    teacher_rows: torch.Tensor | None = None  # [N_t, V_t] the teacher's logits at its response positions
    # (z_s2t = (A_s2t V_s) · W_tᵀ [N_t, V_t] is not kept: L_kd_tea forms it block by block, head_divergence)

    def z_t2s(self, rows: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """The projected-teacher logits ``z_t2s [n, V_s]`` (detached) of the response rows ``rows`` (default all:
        a whole ``[N_s, V_s]`` tensor, which the terms never form)."""
        with torch.no_grad():
            return _project(self.t2s_hidden[rows], self.student_head)

    def confidence(self) -> torch.Tensor:
        """``max_v p_t2s(v | i)`` ``[N_s]`` (fp32, detached): ``t2s_conf`` when the terms took it with the
        accuracy, else formed now, block by block."""
        if self.t2s_conf is None:
            self.t2s_conf = t2s_scan(self.t2s_hidden, self.student_head, None, True)[1]
        return self.t2s_conf

    def student_rows(self) -> torch.Tensor:
        """The student's logits at its response positions ``[N_s, V_s]`` (a copy: the terms never form it)."""
        return self.student_logits[self.student_index]

    def logs(self) -> dict[str, torch.Tensor]:
        return {"ce": self.ce.detach(), "ce_t2s": self.ce_t2s.detach(), "kd_stu": self.kd_stu.detach(),
                "kd_tea": self.kd_tea.detach(), "t2s_acc": self.t2s_acc.detach()}


def _project(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """``hidden · headᵀ`` in the head's dtype: ``[n, d] × [V, d] → [n, V]``."""
    return hidden.to(head.dtype) @ head.T


def max_prob(logits: torch.Tensor) -> torch.Tensor:
    """``max_v softmax(logits)_v`` per row ``[n]`` of ``logits [n, V]``, as ``exp(max − logsumexp)`` in fp32."""
    z = at_least_fp32(logits)
    return torch.exp(z.max(-1).values - torch.logsumexp(z, -1))


def rows_argmax(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``flat[index].argmax(-1)`` ``[n]`` (``flat [M, V]``, ``index [n]`` long), the rows gathered in blocks of
    ``rows_for(V, tensors=SCAN_TENSORS)`` (no gradient; no ``[n, V]`` copy of the rows)."""
    rows = rows_for(flat.size(-1), tensors=chunked.SCAN_TENSORS)
    with torch.no_grad():
        return torch.cat([torch.zeros(0, dtype=torch.long, device=flat.device)]
                         + [flat[index[a:a + rows]].argmax(-1) for a in range(0, index.numel(), rows)])


def t2s_scan(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor | None, confidence: bool
             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(acc [n] bool, conf [n] fp32)``: ``argmax z = targets`` (None without targets) and ``max_prob(z)`` (None
    unless ``confidence``) of ``z = hidden · headᵀ``, formed in blocks of ``rows_for(V, tensors=SCAN_TENSORS)``
    rows (no gradient; no ``[n, V]`` tensor of all the rows)."""
    rows = rows_for(head.size(0), tensors=chunked.SCAN_TENSORS)
    acc = [torch.zeros(0, dtype=torch.bool, device=hidden.device)]
    conf = [torch.zeros(0, dtype=torch.float32, device=hidden.device)]
    with torch.no_grad():
        for a in range(0, hidden.size(0), rows):
            z = _project(hidden[a:a + rows], head)
            if targets is not None:
                acc.append(z.argmax(-1) == targets[a:a + rows])
            if confidence:
                conf.append(max_prob(z))
    return (torch.cat(acc) if targets is not None else None), (torch.cat(conf) if confidence else None)


def _attend(cma: CrossModelAttention, student, teacher, student_pad: int, teacher_pad: int, batch: dict,
            student_out, teacher_out, return_attention: bool, targets: torch.Tensor | None = None,
            with_ce: bool = True, confidence: bool = False) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Everything but the two KD terms: ``(CMATerms fields, h_s2t [N_t, d_t], W_t^head)``. ``targets [B, S]``:
    the labels of L_ce_t2s and of the accuracy mask at the student's logit positions (default: the batch's next
    tokens; ``teacher_argmax_targets`` on the student's samples); ``with_ce``: False leaves the CE at 0 (the
    KD-only entry point, ``kd_loss``); ``confidence``: also ``t2s_conf`` (DWA-KD's gate)."""
    sb, tb = batch["student"], batch["teacher"]
    sl, tl = sb["labels"], tb["labels"]
    smask, tmask = response_mask(sl), response_mask(tl)
    s_emb, t_emb = student.get_input_embeddings(), teacher.get_input_embeddings()
    with torch.no_grad():
        s_ex, s_ey = index_embeddings(s_emb, sb["input_ids"], sl, student_pad,
                                      None if student_out.embeds is None else student_out.embeds.detach())
        t_ex, t_ey = index_embeddings(t_emb, tb["input_ids"], tl, teacher_pad, teacher_out.embeds)
    out = cma(student_ex=s_ex, student_ey=s_ey, teacher_ex=t_ex, teacher_ey=t_ey,
              teacher_hidden=teacher_out.hidden, student_hidden=student_out.hidden,
              student_mask=smask, teacher_mask=tmask, return_attention=return_attention)

    ce = token_ce(student_out.logits, sl) if with_ce else student_out.logits.new_zeros((), dtype=torch.float32)
    w_s = lm_head_weight(student).detach()
    w_t = lm_head_weight(teacher).detach()
    y_s = (next_token_targets(sl, student_pad) if targets is None else targets)[smask]  # [N_s]
    h_t2s = out.h_t2s[smask]  # [N_s, d_s]
    ce_t2s = head_ce(h_t2s, w_s, y_s)  # the [N_s, V_s] logits formed block by block (dwakd.losses.chunked)
    # z_t2s is read detached only (the target of L_kd_stu, its mask, DWA-KD's gate): formed block by block
    t2s_hidden = h_t2s.detach()
    acc, conf = t2s_scan(t2s_hidden, w_s, y_s, confidence)
    s_flat, s_index = student_logits_at(student_out, smask)  # the rows are read block by block, never copied
    t_rows = teacher_out.logits_at(tmask)  # [N_t, V_t] (no copy when the teacher kept its response rows only)
    h_s2t = out.h_s2t[tmask]  # [N_t, d_t]; z_s2t = h_s2t · W_tᵀ is formed block by block, never whole
    fields = dict(ce=ce, ce_t2s=ce_t2s, t2s_acc=acc.sum().float(), cma=out, student_mask=smask, teacher_mask=tmask,
                  t2s_hidden=t2s_hidden, student_head=w_s, acc=acc, t2s_conf=conf, student_logits=s_flat,
                  student_index=s_index, teacher_rows=t_rows)
    return fields, h_s2t, w_t


def cma_terms(cma: CrossModelAttention, student, teacher, student_pad: int, teacher_pad: int, batch: dict,
              student_out, teacher_out, *, divergence_name: str, temperature: float,
              return_attention: bool = False, targets: torch.Tensor | None = None,
              with_ce: bool = True) -> CMATerms:
    """The terms of the module docstring for one micro-batch, L_kd_stu masked by the accuracy.

    ``student`` / ``teacher``: the models (their embedding tables and LM heads are read, never called);
    ``*_out``: their ``LMOutput`` (hidden states required; ``embeds`` reused when present); ``*_pad``: the pad
    ids ``e(y)`` looks up where there is no target; ``return_attention``: keep ``A_t2s`` and ``A_s2t``;
    ``targets`` / ``with_ce``: see ``_attend`` (on-policy batches, the KD-only entry point).
    """
    f, h_s2t, w_t = _attend(cma, student, teacher, student_pad, teacher_pad, batch, student_out, teacher_out,
                            return_attention, targets, with_ce)
    acc = f["acc"]
    kd_stu = student_kd(divergence_name, temperature, f["student_logits"], f["student_index"][acc],
                        f["t2s_hidden"][acc], f["student_head"]).sum()  # the accurate rows only: the others are 0
    kd_tea = head_divergence("fkl", h_s2t, w_t, f["teacher_rows"], temperature)
    return CMATerms(kd_stu=kd_stu, kd_tea=kd_tea, **f)


def cma_terms_per_position(cma: CrossModelAttention, student, teacher, student_pad: int, teacher_pad: int,
                           batch: dict, student_out, teacher_out, *, divergence_name: str, temperature: float,
                           return_attention: bool = False, targets: torch.Tensor | None = None,
                           with_ce: bool = True, confidence: bool = False) -> CMATerms:
    """``cma_terms`` (same arguments) with the per-position KD values kept: ``kd_stu_pos [N_s]`` unmasked
    ``D_τ(p_t2s ‖ p_s)`` and ``kd_tea_pos [N_t]`` ``KL_τ(p_t ‖ p_s2t)``, for a method that weights them;
    ``confidence``: also ``t2s_conf``, ``max_v p_t2s(v | i)`` (taken in the same blocks as the accuracy).

    The CE and L_kd_stu read the same rows (the student's response positions): one pass over them gives both
    (``student_ce_kd``), so that their gradients meet in one buffer of the logits' shape."""
    f, h_s2t, w_t = _attend(cma, student, teacher, student_pad, teacher_pad, batch, student_out, teacher_out,
                            return_attention, targets, False, confidence)  # the CE: below, with L_kd_stu
    acc = f["acc"]
    kd_args = (f["student_logits"], f["student_index"], f["t2s_hidden"], f["student_head"])
    if with_ce:
        y = next_token_targets(batch["student"]["labels"], student_pad)[f["student_mask"]]
        both = student_ce_kd(divergence_name, temperature, *kd_args, y)
        f["ce"], stu_pos = both[:, 0].sum(), both[:, 1]
    else:
        stu_pos = student_kd(divergence_name, temperature, *kd_args)
    tea_pos = head_divergence("fkl", h_s2t, w_t, f["teacher_rows"], temperature, reduction="none")
    return CMATerms(kd_stu=(stu_pos * acc).sum(), kd_tea=tea_pos.sum(), kd_stu_pos=stu_pos, kd_tea_pos=tea_pos, **f)


def student_logits_at(out, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat [M, V], index [n])`` with ``flat[index] == out.logits_at(mask)`` (an ``LMOutput`` and a bool mask
    ``[B, L]``), without copying the rows: ``flat`` is a view of the logits (of the full layout, or of the rows the
    forward kept)."""
    if out.rows is None:
        return out.logits.flatten(0, -2), mask.flatten().nonzero().squeeze(1)
    if not bool((mask.bool() & ~out.rows.bool()).any()):
        pos = torch.full(out.rows.shape, -1, dtype=torch.long, device=mask.device)
        pos[out.rows.bool()] = torch.arange(out.logits.size(0), device=mask.device)
        return out.logits, pos[mask.bool()]
    raise IndexError("student_logits_at: asked for logits at positions outside ``rows`` (the forward kept only "
                     "those)")


def student_kd(name: str, temperature: float, logits: torch.Tensor, index: torch.Tensor, hidden: torch.Tensor,
               head: torch.Tensor) -> torch.Tensor:
    """``D_τ(p_t2s,n ‖ softmax(logits[index[n]] / τ))`` per row ``[n]``, with the projected teacher's logits
    ``z_t2s = hidden · headᵀ`` (``hidden [n, d]``, ``head [V, d]``, both detached): in blocks of ``rows_for(V,
    tensors=BLOCK_TENSORS)`` rows (a block's recomputation with gradient holds about nine ``[rows, V]`` tensors:
    the gathered rows, z_t2s, both log-softmaxes and the divergence's intermediates), the student's rows of
    ``logits [M, V]`` gathered and z_t2s formed per block (``rowwise(..., gather_from=...)``), again in the
    backward pass; the values of ``divergence(name, logits[index], z_t2s, ones, temperature,
    reduction="none")``, the gradient into one buffer of ``logits``' shape."""
    per_row = row_divergence(name, temperature)

    def fn(s, h, w):
        return per_row(s, _project(h, w))

    rows = rows_for(logits.size(-1), tensors=chunked.BLOCK_TENSORS)
    return rowwise(fn, [index, hidden], [head], chunk_rows=rows, gather_from=logits)


def student_ce_kd(name: str, temperature: float, logits: torch.Tensor, index: torch.Tensor, hidden: torch.Tensor,
                  head: torch.Tensor, targets: torch.Tensor, kd_rows: torch.Tensor | None = None) -> torch.Tensor:
    """``[n, 2]``: per row, ``CE(logits[index[n]], targets[n])`` (fp32, no temperature: ``token_ce``'s per-row
    value) and ``student_kd``'s divergence, in one pass over the gathered rows (the blocks of ``student_kd``):
    the two terms' gradients are summed inside each block into one buffer of ``logits``' shape, instead of one
    buffer each (and ``token_ce``'s own ``[rows, V]`` blocks). ``kd_rows [n]`` bool: the divergence at these rows
    only, 0 elsewhere (not evaluated; ``hidden`` is not read there), e.g. DSKD-ETA's agreeing pairs."""
    per_row = row_divergence(name, temperature)

    def fn(s, h, y, w):
        return torch.stack([F.cross_entropy(at_least_fp32(s), y, reduction="none"), per_row(s, _project(h, w))], -1)

    def fn_masked(s, h, y, m, w):
        ce = F.cross_entropy(at_least_fp32(s), y, reduction="none")
        at = m.nonzero().squeeze(1)
        kd = ce.new_zeros(ce.shape).index_put((at,), per_row(s[at], _project(h[at], w)))
        return torch.stack([ce, kd], -1)

    rows = rows_for(logits.size(-1), tensors=chunked.BLOCK_TENSORS)
    if kd_rows is None:
        return rowwise(fn, [index, hidden, targets], [head], chunk_rows=rows, gather_from=logits)
    return rowwise(fn_masked, [index, hidden, targets, kd_rows.bool()], [head], chunk_rows=rows, gather_from=logits)


def model_dims(student, teacher) -> tuple[int, int]:
    """(d_s, d_t): the hidden sizes the LM heads read."""
    return lm_head_weight(student).size(1), lm_head_weight(teacher).size(1)


def teacher_label_map(student_tokenizer, teacher_tokenizer, n_student: int, n_teacher: int) -> torch.Tensor:
    """``[n_teacher]`` long: teacher id → the student id of the same token string (``shared_vocab``: ``Ġ→▁``,
    plus the two EOS tokens), −100 where the student has none; ``n_*``: the LM heads' rows (ids beyond are
    dropped)."""
    eos = (teacher_tokenizer.eos_token_id, student_tokenizer.eos_token_id)
    t_ids, s_ids = shared_vocab(teacher_tokenizer, student_tokenizer, extra_pairs=[eos])
    keep = (t_ids < n_teacher) & (s_ids < n_student)
    out = torch.full((n_teacher,), IGNORE, dtype=torch.long)
    out[t_ids[keep]] = s_ids[keep]
    return out


def teacher_argmax_targets(student_labels: torch.Tensor, teacher_labels: torch.Tensor, teacher_out,
                           pairs_of, label_map: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` long: at each student logit position i aligned to a teacher position j (``pairs_of(s_ids,
    t_ids)``: the aligned ``(i, j)`` indices of one sample's response tokens, e.g. ``eta_pairs``), the teacher's
    argmax at j mapped into the student vocabulary (``label_map [V_t]``: student id or −100); −100 everywhere
    else. The label of L_ce_t2s and of the accuracy mask on a batch of the student's own samples, which has no
    gold token (DSKD v2, code/criterions/dual_space_kd_with_cross_model_attention.py:303-353). No gradient."""
    dev = student_labels.device
    b, sp, tp = (torch.tensor(x, dtype=torch.long, device=dev)
                 for x in aligned_positions(student_labels, teacher_labels, pairs_of))
    out = torch.full_like(student_labels, IGNORE)
    if b.numel():
        with torch.no_grad():
            arg = rows_argmax(*teacher_out.row_index(b, tp))  # the teacher rows of the pairs
        out[b, sp] = label_map.to(dev)[arg]
    return out


class CrossModelAttentionMixin:
    """A method's cross-model attention, mixed in before ``Method`` (``class M(CrossModelAttentionMixin,
    Method)``): DSKD v1's ``CrossModelAttention`` between the student and the teacher as ``self.cma`` (its
    projectors are the method's own parameters: the loop gives them their AdamW group at
    ``TrainConfig.projector_lr``), the two models as ``self._models`` (read, never called; a tuple, so they stay
    out of ``parameters()``) and the pad ids ``e(y)`` looks up as ``self.pads``; pass them to ``cma_terms``.
    Declares the capability (``cross_model_attention``) and the model outputs the terms read."""

    cross_model_attention: ClassVar[bool] = True
    needs_teacher: ClassVar[bool] = True
    needs_teacher_tokens: ClassVar[bool] = True
    teacher_logit_rows: ClassVar[str] = "response"
    student_outputs: ClassVar[frozenset[str]] = frozenset({"hidden", "embeds"})
    teacher_outputs: ClassVar[frozenset[str]] = frozenset({"hidden", "embeds"})

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        require_teacher(self.name, teacher)
        self._models = (student, teacher)
        self.pads = (pad_id(student_tokenizer, student), pad_id(teacher_tokenizer, teacher))
        d_s, d_t = model_dims(student, teacher)
        self.cma = CrossModelAttention(d_s, d_t, bias=True)  # DSKD v1: nn.Linear with bias
        self._tokenizers = (student_tokenizer, teacher_tokenizer)
        self._label_map: torch.Tensor | None = None  # teacher id → student id, built on the first on-policy batch

    def t2s_targets(self, batch: dict, teacher_out) -> torch.Tensor | None:
        """The labels of L_ce_t2s and the accuracy mask: None (the gold next tokens) on a gold batch; on a batch of
        the student's samples (``batch["on_policy"]``) the teacher's argmax at the ETA-aligned positions
        (``teacher_argmax_targets``)."""
        if not batch.get("on_policy"):
            return None
        stok, ttok = self._tokenizers
        if self._label_map is None:
            require_tokenizers(self.name, stok, ttok, "on-policy batches are labelled with the teacher's argmax "
                               "through the shared vocabulary")
            student, teacher = self._models
            self._label_map = teacher_label_map(stok, ttok, lm_head_weight(student).size(0),
                                                lm_head_weight(teacher).size(0))
        return teacher_argmax_targets(batch["student"]["labels"], batch["teacher"]["labels"], teacher_out,
                                      lambda s, t: eta_pairs(stok, ttok, s, t), self._label_map)
