"""DSKD-ETA — DSKD v2 with exact token alignment (Zhang et al. 2025, arXiv 2504.11426).

Alignment (``alignment``): per sample, the student's and the teacher's response *target* tokens (position k is
represented by the token it predicts, ``labels[k + 1]``) are aligned by

* ``"eta"`` (default; the paper): ``dwakd.align.exact_token_alignment`` on the token strings — a pair (i, j) is
  aligned when both sides have consumed the same text and the two tokens are the same string (or both EOS);
* ``"offsets"`` (our improvement, docs/methods.md "DSKD-ETA"): pairs of tokens with the same character span in the
  response text (``offsets_alignment``), plus the final EOS pair, which also aligns newlines, non-ASCII text
  and everything after them. The text is recovered by decoding the student's response ids and re-tokenised by
  both tokenizers with ``return_offsets_mapping``; a sample whose re-tokenisation does not reproduce the batch
  ids on either side (truncation, a non-round-tripping tokenizer) falls back to ``"eta"``. Needs fast
  tokenizers: checked at start-up.

An aligned pair has the same context and the same target on both sides, so their next-token distributions
are comparable. On the aligned pairs (i, j) only, with ``h_t2s = P_t2s(h_t)`` and ``h_s2t = h_s M_s2t``
(``dwakd.align.projection``: P_t2s is a bias-free Linear initialised by the pseudo-inverse "logit identity";
``M_s2t = Ŵ_s pinv(Ŵ_t)`` is recomputed every step from the detached student head)::

    z_t2s = h_t2s,j · W_s^headᵀ (detached head),   z_s2t = h_s2t,i · W_t^headᵀ
    ŷ_i = map(argmax z_t,j)       (teacher argmax → student id through the shared vocabulary; −100 if absent)
    L_ce_t2s = Σ CE(z_t2s, ŷ)                           (pairs with ŷ = −100 are skipped)
    L_kd_stu = Σ 1[argmax z_t2s = ŷ] · D_τ(stopgrad p_t2s ‖ p_s,i)
    L_kd_tea = Σ D_τ(p_t,j ‖ p_s2t,i)
    L = (1 − α)·CE + α·(L_ce_t2s + L_kd_stu + L_kd_tea)

D = the configured divergence in both spaces. The shared vocabulary is ``shared_vocab`` (token strings equal
after ``Ġ→▁``) plus the (teacher EOS, student EOS) pair.

Logged terms (token-summed): ``ce``, ``ce_t2s``, ``kd_stu``, ``kd_tea``; ``aligned_ratio`` = the number of
aligned pairs, so that after the loop's division by the response-token count it is the fraction of student
response tokens that are aligned (token-weighted over the batch; the reference averages per-sample ratios);
``t2s_agree`` = the number of pairs in L_kd_stu's mask.

Deviations from DSKD v2's code (its bugs, or choices we judge wrong; what we compute: docs/methods.md "DSKD-ETA"):
* student and teacher positions are gathered separately per pair (the code scatters teacher positions into
  student-sized buffers, correct only when both sides are padded to the same length);
* every term is token-summed and divided by the global response-token count (the code divides L_ce_t2s and
  L_kd_stu by their own aligned counts and L_kd_tea by its count);
* the teacher's argmax is mapped through the shared vocabulary (``Ġ→▁``; the code looks up the raw teacher
  string, so ``Ġword`` never maps into a ``▁`` vocabulary), and L_kd_tea uses every aligned pair, not only
  those whose argmax maps;
* L_kd_stu is always masked by the agreement (the code drops the mask once the agreement exceeds a threshold,
  1.0 by default, i.e. never);
* the pinv initialisation adds the EOS pair to the overlap (the s2t map restricts both heads to the overlap,
  as v2's ETA criterion does).

On-policy distillation (``on_policy``; docs/methods.md "On-policy distillation"): ``kd_loss`` is the KD part
alone; v2's on-policy ETA criterion computes the same terms on the student's samples as on gold responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from dwakd.align.projection import pinv_t2s_init, s2t_matrix, shared_vocab, teacher_head_pinv
from dwakd.align.responses import aligned_positions, aligned_tensors, eta_pairs, response_mask, sample_pairs
from dwakd.align.tokens import offsets_alignment
from dwakd.losses.chunked import BLOCK_TENSORS, rows_for
from dwakd.losses.divergences import IGNORE, head_ce, head_divergence
from dwakd.methods.base import Method, check_kd, require_offsets, require_teacher, require_tokenizers
from dwakd.methods.dual_space import rows_argmax, student_ce_kd, student_kd, t2s_scan
from dwakd.models import lm_head_weight
from dwakd.registry import register
from dwakd.settings import check_choice

ALIGNMENTS = ("eta", "offsets")


@dataclass
class DSKDETAConfig:
    """DSKD-ETA options (docs/methods.md "DSKD-ETA")."""

    kd_rate: float = 0.5  # α (DSKD v2 follows DSKD: 0.5)
    temperature: float = 2.0  # τ (DSKD: 2.0)
    divergence: str = "fkl"  # D in both spaces (DSKD v2 main results: KL)
    alignment: str = "eta"  # "eta" (the paper's rule) | "offsets" (character spans; needs fast tokenizers)

    def validate(self, where: str) -> None:
        check_kd(self, where)
        check_choice(where, "alignment", self.alignment, ALIGNMENTS)


@register
class DSKDETA(Method):
    """DSKD v2 with exact token alignment (see the module docstring)."""

    name = "dskd_eta"
    Config = DSKDETAConfig
    citation = ("Zhang et al. 2025, 'A Dual-Space Framework for General Knowledge Distillation of Large Language "
                "Models' (DSKD v2), arXiv 2504.11426; DSKD: EMNLP 2024, arXiv 2406.17328.")
    needs_teacher = True
    needs_teacher_tokens = True
    teacher_logit_rows = "response"
    student_outputs: ClassVar[frozenset[str]] = frozenset({"hidden"})
    teacher_outputs: ClassVar[frozenset[str]] = frozenset({"hidden"})

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        require_teacher(self.name, teacher)
        require_tokenizers(self.name, student_tokenizer, teacher_tokenizer,
                           "exact token alignment compares token strings")
        if cfg.alignment == "offsets":
            for role, tok in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
                require_offsets(self.name, tok, role, "use alignment='eta' (string-based, no offsets needed)")
        self.stok, self.ttok = student_tokenizer, teacher_tokenizer
        self._models = (student, teacher)  # not registered: the models stay out of parameters()
        w_s, w_t = lm_head_weight(student), lm_head_weight(teacher)
        eos_pair = (teacher_tokenizer.eos_token_id, student_tokenizer.eos_token_id)
        t_ids, s_ids = shared_vocab(teacher_tokenizer, student_tokenizer, extra_pairs=[eos_pair])
        keep = (t_ids < w_t.size(0)) & (s_ids < w_s.size(0))  # tokenizer ids beyond a head have no logit
        t_ids, s_ids = t_ids[keep], s_ids[keep]
        self.t2s = nn.Linear(w_t.size(1), w_s.size(1), bias=False)  # DSKD v2: bias-free projectors
        with torch.no_grad():
            self.t2s.weight.copy_(pinv_t2s_init(w_t, w_s, t_ids, s_ids))
        label_map = torch.full((w_t.size(0),), IGNORE, dtype=torch.long)
        label_map[t_ids] = s_ids
        # derived from the tokenizers and the frozen teacher: rebuilt at start-up, kept out of checkpoints
        self.register_buffer("label_map", label_map, persistent=False)  # teacher id → student id / −100
        self.register_buffer("overlap_student", s_ids, persistent=False)
        self.register_buffer("teacher_pinv", teacher_head_pinv(w_t, t_ids).to(w_t.device), persistent=False)

    # ---------------------------------------------------------------------------------------- alignment
    def _offsets_pairs(self, s_ids: list[int], t_ids: list[int]) -> list[tuple[int, int]] | None:
        s_eos = bool(s_ids) and s_ids[-1] == self.stok.eos_token_id
        t_eos = bool(t_ids) and t_ids[-1] == self.ttok.eos_token_id
        s_body, t_body = s_ids[:len(s_ids) - s_eos], t_ids[:len(t_ids) - t_eos]
        text = self.stok.decode(s_body)
        es = self.stok(text, add_special_tokens=False, return_offsets_mapping=True)
        et = self.ttok(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(es["input_ids"]) != s_body or list(et["input_ids"]) != t_body:
            return None
        pairs = offsets_alignment(es["offset_mapping"], et["offset_mapping"])
        if s_eos and t_eos:
            pairs.append((len(s_body), len(t_body)))
        return pairs

    def _pairs(self, s_ids: list[int], t_ids: list[int]) -> list[tuple[int, int]]:
        found = self._offsets_pairs(s_ids, t_ids) if self.cfg.alignment == "offsets" else None
        if found is None:
            found = eta_pairs(self.stok, self.ttok, s_ids, t_ids)
        return found

    def align(self, student_labels: torch.Tensor, teacher_labels: torch.Tensor
              ) -> tuple[list[int], list[int], list[int]]:
        """``(sample, student_position, teacher_position)`` of the aligned pairs, in logit positions."""
        return aligned_positions(student_labels, teacher_labels, self._pairs)

    def token_pairs(self, student_labels: list[int], teacher_labels: list[int]) -> list[tuple[int, int]]:
        """One sample's aligned ``(student, teacher)`` logit positions: it depends on the tokens only, so the
        training loop computes it once with the data (``Method.token_pairs``)."""
        return sample_pairs(student_labels, teacher_labels, self._pairs)

    # ---------------------------------------------------------------------------------------- loss
    on_policy = True

    def ce_weight(self) -> float:
        return 1.0 - self.cfg.kd_rate

    def loss(self, batch, student_out, teacher_out):
        ce, kd, logs = self._terms(batch, student_out, teacher_out, with_ce=True)
        return (1.0 - self.cfg.kd_rate) * ce + kd, {"ce": ce.detach(), **logs}

    def kd_loss(self, batch, student_out, teacher_out):
        """α·(L_ce_t2s + L_kd_stu + L_kd_tea) and its logs (``Method.kd_loss``); the same on the student's samples
        as on gold responses (the labels are the teacher's argmax either way, as in DSKD v2's on-policy ETA)."""
        _, kd, logs = self._terms(batch, student_out, teacher_out, with_ce=False)
        return kd, logs

    def _terms(self, batch, student_out, teacher_out, with_ce: bool):
        """``(CE or None, α·(L_ce_t2s + L_kd_stu + L_kd_tea), logs)``. With the CE, the CE and L_kd_stu read the
        student's response rows in one pass (``student_ce_kd``: one gradient buffer of the logits' shape for both)."""
        cfg = self.cfg
        student, teacher = self._models
        dev = student_out.logits.device
        b, sp, tp = aligned_tensors(batch, self.align, dev)
        w_s = lm_head_weight(student).detach()
        w_t = lm_head_weight(teacher).detach()

        v_s = w_s.size(0)
        s_flat = student_out.logits.reshape(-1, student_out.logits.size(-1))  # read block by block, never copied
        s_idx = b * student_out.logits.size(1) + sp  # the student rows of the pairs in s_flat
        t_flat, t_idx = teacher_out.row_index(b, tp)  # the teacher rows of the pairs, read block by block
        h_s = student_out.hidden[b, sp]  # [N, d_s]
        h_t = teacher_out.hidden[b, tp].detach()  # [N, d_t]
        rows_s = rows_for(v_s, tensors=BLOCK_TENSORS)  # L_ce_t2s's blocks

        # student space: z_t2s = h_t2s · W_sᵀ [N, V_s] is formed block by block only (its argmax; L_ce_t2s; the
        # agreeing rows of L_kd_stu), never whole
        h_t2s = self.t2s(h_t.to(self.t2s.weight.dtype))  # [N, d_s]
        y_hat = self.label_map.to(dev)[rows_argmax(t_flat, t_idx).to(dev)]
        ce_t2s = head_ce(h_t2s, w_s, y_hat, chunk_rows=rows_s)
        agree, _ = t2s_scan(h_t2s.detach(), w_s, y_hat, False)  # argmax z_t2s = ŷ: never where ŷ = −100
        ce = None
        if with_ce:  # over every response row, L_kd_stu at the agreeing pairs' rows (the alignments are one-to-one)
            labels = batch["student"]["labels"]
            resp = response_mask(labels)
            r_idx = resp.flatten().nonzero().squeeze(1)  # the response rows in s_flat, row-major
            row_of = torch.full((s_flat.size(0),), -1, dtype=torch.long, device=dev)
            row_of[r_idx] = torch.arange(r_idx.numel(), device=dev)
            at = row_of[s_idx[agree]]
            h_rows = h_t2s.new_zeros(r_idx.numel(), h_t2s.size(1))
            h_rows[at] = h_t2s.detach()[agree]
            kd_rows = torch.zeros(r_idx.numel(), dtype=torch.bool, device=dev)
            kd_rows[at] = True
            both = student_ce_kd(cfg.divergence, cfg.temperature, s_flat, r_idx, h_rows, w_s,
                                 labels[:, 1:][resp[:, :-1]], kd_rows=kd_rows)
            ce, kd_stu = both[:, 0].sum(), both[:, 1].sum()
        else:
            kd_stu = student_kd(cfg.divergence, cfg.temperature, s_flat, s_idx[agree], h_t2s.detach()[agree],
                                w_s).sum()

        # teacher space: z_s2t = (h_s M_s2t) · W_tᵀ formed block by block, in DSKD-CMA's L_kd_tea blocks ("auto": a
        # block reads W_t once; smaller blocks cost time, not peak memory: benchmarks/README.md, issue 18)
        m_s2t = s2t_matrix(w_s, self.overlap_student, self.teacher_pinv)  # [d_s, d_t]
        kd_tea = head_divergence(cfg.divergence, h_s.float() @ m_s2t, w_t, t_flat, cfg.temperature,
                                 teacher_index=t_idx)

        return ce, cfg.kd_rate * (ce_t2s + kd_stu + kd_tea), {
            "ce_t2s": ce_t2s.detach(), "kd_stu": kd_stu.detach(), "kd_tea": kd_tea.detach(),
            "aligned_ratio": torch.tensor(float(b.numel()), device=dev), "t2s_agree": agree.sum().float()}

