"""MinED — minimum-edit-distance token and vocabulary alignment (FuseLLM, Wan et al. 2024, arXiv 2401.10491),
as re-implemented by DSKD (Zhang et al., EMNLP 2024, arXiv 2406.17328) for cross-tokenizer KD.

1. Vocabulary map teacher → student (``build_vocab_map``, once per pair, see below), by ``map_rule``:
   ``"reference"`` (default, FuseLLM's rule, which reproduces the maps DSKD ships exactly): the teacher token
   written with the student's space marker, the identical student string, else the student string of minimum
   edit distance to it (raw strings, case kept; ties to the lowest id); ``"normalised"``: the identical string
   (markers converted ``Ġ↔▁``), else the minimum edit distance between the lower-cased strings without their
   leading marker. The teacher EOS is mapped to the student EOS. Inverted student → teacher keeping one
   teacher id per student id (``invert_vocab_map``: an identical string first, then the smallest distance).
2. Per sample, DTW (``dtw_align``, edit-distance cost, markers stripped) between the student's and the
   teacher's response *target* tokens: position k of a side is represented by the token it predicts,
   ``labels[k + 1]``.
3. A student position i whose DTW match j is unique (``one_to_one``, DSKD's rule: i occurs in one pair) and
   whose teacher target maps to the student's target (``t2s[y_t,j] == y_s,i``) takes the teacher
   distribution at j gathered into the student vocabulary, ``z̃_v = z_t,j[s2t[v]]`` (−1e5 where ``s2t[v]``
   is unmapped); every other response position gets the one-hot target at the gold token.
4. ``L = (1 − α)·CE + α·Σ_i KL(p̃_i ‖ p_s,i)`` with both logit sets divided by τ, where ``p̃_i`` is
   ``softmax(z̃/τ)`` or the one-hot (for which the term is ``−log softmax(z_s,i/τ)[y_i]``).

Logged terms (token-summed): ``ce``, ``kd`` (the KL sum), ``aligned_ratio`` (the number of positions that take
a teacher distribution, i.e. the aligned fraction of response tokens after the loop's division).

Deviation from DSKD's code: DSKD runs DTW over the tokens *read* at the response positions (``x_k``, the last
prompt token up to the token before EOS) and checks ``t2s[x_t] == x_s``; here the DTW runs over the tokens
*predicted* there (``y_k``, the first response token up to EOS), so a matched pair has the same context up
to the match and the same target, and the EOS prediction is aligned too. Inside a response the two differ by
one position at the boundaries only.

The map is built once per pair by ``dwakd vocab-map`` (workflow rule ``vocab_map``,
``<results>/vocab_maps/teacher_to_student.json``; rapidfuzz, all cores: seconds for the tiny pair, see
``benchmarks/vocab_map.py`` for 150k × 50k vocabularies) and handed to the run with ``dwakd train
--vocab-map``, which sets ``vocab_map``. A given map that exists is read, never rebuilt; one written for other
vocabularies (its fingerprint differs) is an error. A ``vocab_map`` path that does not exist yet is built and
written there (a cache for runs by hand); without ``vocab_map`` the map is built in memory.

The map file (its fingerprint, rule and reading): ``dwakd/vocab_map.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from dwakd.align.responses import aligned_positions, aligned_tensors, response_mask, sample_pairs, tokens_of
from dwakd.align.tokens import VOCAB_MAP_RULES, dtw_align, invert_vocab_map, one_to_one
from dwakd.losses.chunked import BLOCK_TENSORS, rows_for, rowwise
from dwakd.losses.divergences import at_least_fp32, kl_from_logprobs
from dwakd.methods.base import Method, check_kd, require_teacher, require_tokenizers
from dwakd.models import lm_head_weight
from dwakd.registry import register
from dwakd.settings import check_choice
from dwakd.vocab_map import mined_vocab_map, read_vocab_map, write_vocab_map

UNMAPPED = -1e5  # DSKD: teacher logit given to student ids no teacher id maps to


@dataclass
class MinEDConfig:
    """MinED options (docs/methods.md "MinED")."""

    kd_rate: float = 0.5  # α (DSKD scripts/gpt2/minedit_gpt2_base.sh: KD_RATE=0.5)
    temperature: float = 2.0  # τ (same script: KD_TEMP=2.0)
    vocab_map: str = ""  # the teacher→student map from `dwakd vocab-map` (`dwakd train --vocab-map`); "" = build
    map_rule: str = "reference"  # "reference" (FuseLLM's, reproduces DSKD's maps) | "normalised"

    def validate(self, where: str) -> None:
        check_kd(self, where)
        check_choice(where, "map_rule", self.map_rule, VOCAB_MAP_RULES)


@register
class MinED(Method):
    """MinED (see the module docstring)."""

    name = "mined"
    Config = MinEDConfig
    needs_vocab_map = True
    citation = ("Wan et al. 2024, 'Knowledge Fusion of Large Language Models' (FuseLLM), arXiv 2401.10491; as "
                "re-implemented for KD by Zhang et al., EMNLP 2024, arXiv 2406.17328.")
    needs_teacher = True
    needs_teacher_tokens = True
    teacher_logit_rows = "response"
    student_outputs: ClassVar[frozenset[str]] = frozenset()
    teacher_outputs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        require_teacher(self.name, teacher)
        require_tokenizers(self.name, student_tokenizer, teacher_tokenizer,
                           "the vocabulary map and the DTW alignment compare token strings")
        self.stok, self.ttok = student_tokenizer, teacher_tokenizer
        tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
        t2s = self._load_or_build_map()
        n_student = lm_head_weight(student).size(0)
        s2t = invert_vocab_map(t2s, n_student, teacher_vocab=tv, student_vocab=sv)
        n_teacher = max(lm_head_weight(teacher).size(0), len(t2s))
        t2s_full = torch.full((n_teacher,), -1, dtype=torch.long)
        t2s_full[:len(t2s)] = torch.tensor(t2s, dtype=torch.long)
        self.register_buffer("t2s", t2s_full, persistent=False)  # teacher id → student id (−1: hole)
        self.register_buffer("s2t", torch.tensor(s2t, dtype=torch.long), persistent=False)  # student → teacher
        self._t2s_list = t2s_full.tolist()  # the same map as a list, for the per-sample Python loop

    def _load_or_build_map(self) -> list[int]:
        path = Path(self.cfg.vocab_map) if self.cfg.vocab_map else None
        if path is not None and path.exists():  # given: read, never rebuilt
            return read_vocab_map(path, self.ttok, self.stok, rule=self.cfg.map_rule)
        t2s = mined_vocab_map(self.ttok, self.stok, rule=self.cfg.map_rule)
        if path is not None:
            write_vocab_map(path, t2s, self.ttok, self.stok, rule=self.cfg.map_rule)
        return t2s

    def _pairs(self, s_ids: list[int], t_ids: list[int]) -> list[tuple[int, int]]:
        """Aligned ``(i, j)`` response-token indices of one sample (steps 2–3 of the module docstring)."""
        t2s = self._t2s_list
        path = dtw_align(tokens_of(self.stok, s_ids), tokens_of(self.ttok, t_ids))
        return [(i, j) for i, j in sorted(one_to_one(path).items())
                if 0 <= t_ids[j] < len(t2s) and t2s[t_ids[j]] == s_ids[i]]

    def align(self, student_labels: torch.Tensor, teacher_labels: torch.Tensor
              ) -> tuple[list[int], list[int], list[int]]:
        """``(sample, student_position, teacher_position)`` lists of the positions that take the teacher
        distribution (steps 2–3 of the module docstring)."""
        return aligned_positions(student_labels, teacher_labels, self._pairs)

    def token_pairs(self, student_labels: list[int], teacher_labels: list[int]) -> list[tuple[int, int]]:
        """One sample's aligned ``(student, teacher)`` logit positions: the DTW depends on the tokens only, so
        the training loop computes it once with the data (``Method.token_pairs``), not at every step."""
        return sample_pairs(student_labels, teacher_labels, self._pairs)

    def loss(self, batch, student_out, teacher_out):
        cfg = self.cfg
        sl = batch["student"]["labels"]
        s_logits = student_out.logits
        dev = s_logits.device
        b, sp, tp = aligned_tensors(batch, self.align, dev)
        s2t = self.s2t.to(dev)
        if s2t.numel() != s_logits.size(-1):
            raise ValueError(f"{self.name}: the student logits have {s_logits.size(-1)} entries but the vocabulary "
                             f"map was built for {s2t.numel()}")
        t_flat, t_idx = teacher_out.row_index(b, tp)

        # one pass over the student's response rows, read block by block from the logits (no copy of them): per
        # row the CE and the KD term, against the gathered teacher distribution where the row is aligned (its
        # teacher row in ``teacher_row``) and against the one-hot gold token elsewhere
        resp = response_mask(sl)  # [B, L]
        teacher_row = torch.full(sl.shape, -1, dtype=torch.long, device=dev)
        teacher_row[b, sp] = t_idx
        index = resp.flatten().nonzero().squeeze(1)  # [n] row-major response positions
        gold = sl[:, 1:][resp[:, :-1]]  # [n]
        vals = rowwise(partial(_ce_kd_rows, temperature=cfg.temperature), [index, gold, teacher_row.flatten()[index]],
                       [t_flat, s2t], chunk_rows=rows_for(s_logits.size(-1), tensors=BLOCK_TENSORS),
                       gather_from=s_logits.reshape(-1, s_logits.size(-1)))  # [n, 2]
        ce, kd = vals[:, 0].sum(), vals[:, 1].sum()
        loss = (1.0 - cfg.kd_rate) * ce + cfg.kd_rate * kd
        return loss, {"ce": ce.detach(), "kd": kd.detach(),
                      "aligned_ratio": torch.tensor(float(b.numel()), device=dev)}


def _ce_kd_rows(s: torch.Tensor, gold: torch.Tensor, teacher_row: torch.Tensor, t_flat: torch.Tensor,
                s2t: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Per student response row (``[n, 2]``): ``CE(z_s, y)`` and the KD term (module docstring, step 4).

    s [n, V_s] student logits; gold [n] targets; teacher_row [n] the row of ``t_flat [M, V_t]`` aligned with
    each student row, −1 for none; s2t [V_s] student id → teacher id (−1: unmapped). An aligned row's KD term is
    ``KL(softmax(z̃ / τ) ‖ softmax(z_s / τ))`` with ``z̃ = z_t[s2t]`` (−1e5 where unmapped; the target detached),
    ``kl_from_logprobs``; any other row's is ``CE(z_s / τ, y)``. Row-separable: for ``rowwise``."""
    ce = F.cross_entropy(at_least_fp32(s), gold, reduction="none")
    aligned = teacher_row >= 0
    al, other = aligned.nonzero().squeeze(1), (~aligned).nonzero().squeeze(1)
    kd = F.cross_entropy(at_least_fp32(s[other]) / temperature, gold[other], reduction="none")
    if al.numel():
        with torch.no_grad():  # the target: the teacher rows gathered straight into the student vocabulary
            gathered = at_least_fp32(t_flat[teacher_row[al].unsqueeze(1), s2t.clamp_min(0).unsqueeze(0)])
            target_logp = torch.log_softmax(gathered.masked_fill(s2t < 0, UNMAPPED) / temperature, dim=-1)
            del gathered
        kl = kl_from_logprobs(target_logp, s[al], torch.ones_like(al, dtype=torch.bool), temperature,
                              reduction="none")
        kd = torch.zeros_like(ce).index_put((other,), kd).index_put((al,), kl)
    return torch.stack([ce, kd], dim=1)
