"""DSKD — dual-space KD for a teacher and a student that share one tokenizer (Zhang et al., EMNLP 2024,
arXiv 2406.17328, Sec. 3; code: songmzhang/DSKD ``code/criterions/dual_space_kd.py``). docs/methods.md "DSKD".

The teacher reads the student's token ids, so position i of one sequence is position i of the other (one to
one, no alignment). Two projectors, ``nn.Linear`` with bias (DSKD's ``configs/projector_config.json``: "t-s"
and "s-t"), move each model's last hidden state into the other's space, where that model's own LM head reads
it. Over the response positions i (``dwakd.align.responses.response_mask``), with ``h`` the last hidden state
(what the head reads) and ``W^head`` the LM head::

    z_t2s,i = P_t2s(h_t,i) · W_s^headᵀ           (student head detached; teacher hidden frozen)
    z_s2t,i = P_s2t(h_s,i) · W_t^headᵀ           (teacher head frozen)
    L_ce_t2s = Σ_i CE(z_t2s,i, y_i)               trains P_t2s only (no τ)
    L_kd_stu = Σ_i D_τ(stopgrad p_t2s,i ‖ p_s,i)   the student in its own space, every response position
    L_kd_tea = Σ_i KL_τ(p_t,i ‖ p_s2t,i)          trains P_s2t and the student (through h_s)
    L = (1 − α)·CE + α·(L_ce_t2s + L_kd_stu + L_kd_tea)

D is the configured divergence (``dwakd.losses.divergences.DIVERGENCES``: DSKD's Table 1 runs all six); both
logit sets are divided by τ. L_kd_tea is the forward KL whatever D, as in DSKD's code. Unlike DSKD-CMA
(``baselines/dskd_cma.py``) there is no attention and no accuracy mask on L_kd_stu: the reference's
same-vocabulary criterion has neither. The projectors are the method's own parameters, so the training loop gives
them their AdamW group (``TrainConfig.projector_lr``; DSKD: 1e-3).

A pair whose tokenizers differ is refused at start-up (``require_same_vocabulary``, shared with Vanilla KD).
The heads may have different numbers of rows (each term compares logits of one head only).

Logged terms (token-summed): ``ce``, ``ce_t2s``, ``kd_stu``, ``kd_tea``, ``t2s_acc`` (positions where
argmax z_t2s is the gold token: the projector's accuracy after the loop's division) — DSKD-CMA's names.
Parity with the reference: ``tests/test_parity_dskd_same_vocab.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from baselines.vanilla_kd import require_same_vocabulary
from dwakd.align.responses import response_mask
from dwakd.losses.divergences import head_ce, head_divergence, token_ce
from dwakd.methods.base import Method, check_kd
from dwakd.methods.dual_space import model_dims, student_kd, student_logits_at, t2s_scan
from dwakd.models import lm_head_weight
from dwakd.registry import register


@dataclass
class DSKDConfig:
    """DSKD (same vocabulary) options (docs/methods.md "DSKD"; DSKD scripts/gpt2/dskd_gpt2_base.sh)."""

    kd_rate: float = 0.5  # α (script: KD_RATE=0.5)
    temperature: float = 2.0  # τ (script: KD_TEMP=2.0)
    divergence: str = "fkl"  # D of L_kd_stu (script: KD_OBJ="forward_kl"; Table 1 runs all six)

    def validate(self, where: str) -> None:
        check_kd(self, where)


@register
class DSKD(Method):
    """Dual-space KD for a same-tokenizer pair (see the module docstring)."""

    name = "dskd"
    Config = DSKDConfig
    citation = ("Zhang et al., 'Dual-Space Knowledge Distillation for Large Language Models', EMNLP 2024, "
                "arXiv 2406.17328.")
    needs_teacher = True
    needs_teacher_tokens = False
    #: teacher and student share one vocabulary (the teacher reads the student's token ids)
    same_vocabulary = True
    teacher_logit_rows = "response"
    student_outputs = frozenset({"hidden"})
    teacher_outputs = frozenset({"hidden"})

    def __init__(self, cfg, student, teacher=None, student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(cfg, student, teacher, student_tokenizer, teacher_tokenizer)
        require_same_vocabulary(self.name, student, teacher, student_tokenizer, teacher_tokenizer)
        self._models = (student, teacher)  # read (LM heads), never called; a tuple keeps them out of parameters()
        d_s, d_t = model_dims(student, teacher)
        self.t2s = nn.Linear(d_t, d_s, bias=True)  # DSKD v1 projector "t-s"
        self.s2t = nn.Linear(d_s, d_t, bias=True)  # DSKD v1 projector "s-t"

    def loss(self, batch, student_out, teacher_out):
        cfg = self.cfg
        student, teacher = self._models
        sl = batch["student"]["labels"]
        mask = response_mask(sl)  # [B, L]; the teacher's positions are the student's
        y = sl[:, 1:][mask[:, :-1]]  # [N] the gold token each response position predicts
        ce = token_ce(student_out.logits, sl)
        w_s = lm_head_weight(student).detach()  # [V_s, d_s]
        w_t = lm_head_weight(teacher).detach()  # [V_t, d_t]

        # student space: the teacher's hidden states through P_t2s and the student's head
        h_t = teacher_out.hidden[mask].detach()  # [N, d_t]
        h_t2s = self.t2s(h_t.to(self.t2s.weight.dtype))  # [N, d_s]
        ce_t2s = head_ce(h_t2s, w_s, y)  # the [N, V_s] logits formed block by block
        # z_t2s is read detached only (the target of L_kd_stu, the accuracy), formed block by block, and the
        # student's rows are read from its logits without a copy: DSKD-CMA's helpers (dwakd.methods.dual_space)
        t2s_hidden = h_t2s.detach()
        acc, _ = t2s_scan(t2s_hidden, w_s, y, False)
        s_flat, s_index = student_logits_at(student_out, mask)
        kd_stu = student_kd(cfg.divergence, cfg.temperature, s_flat, s_index, t2s_hidden, w_s).sum()

        # teacher space: the student's hidden states through P_s2t and the teacher's head
        h_s2t = self.s2t(student_out.hidden[mask].to(self.s2t.weight.dtype))  # [N, d_t]
        t_rows = teacher_out.logits_at(mask)  # [N, V_t]
        kd_tea = head_divergence("fkl", h_s2t, w_t, t_rows, cfg.temperature)

        acc = acc.sum().float()
        a = cfg.kd_rate
        loss = (1.0 - a) * ce + a * (ce_t2s + kd_stu + kd_tea)
        return loss, {"ce": ce.detach(), "ce_t2s": ce_t2s.detach(), "kd_stu": kd_stu.detach(),
                      "kd_tea": kd_tea.detach(), "t2s_acc": acc}
