"""Same-vocabulary DSKD (``baselines/dskd.py``): values on a hand-checkable example, where the gradients go,
the start-up refusal of a pair whose tokenizers differ, padding, and a few training steps on a same-tokenizer
pair. Parity with the reference code: ``tests/test_parity_dskd_same_vocab.py``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from dwakd.errors import ConfigError
from dwakd.models import LMOutput, build_model, forward, load_model, load_tokenizer
from dwakd.registry import get_method
from dwakd.settings import from_dict
from dwakd.train import TrainConfig, Trainer


def _cfg(**over):
    return from_dict(get_method("dskd").Config, over, "dskd")


class _LM(nn.Module):
    """What the method reads of a model: its LM head (never called)."""

    def __init__(self, head: torch.Tensor):
        super().__init__()
        self.head = nn.Linear(head.size(1), head.size(0), bias=False)
        self.head.weight.data.copy_(head)
        self.emb = nn.Embedding(head.size(0), head.size(1))

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return self.head


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmax(p/τ) ‖ softmax(q/τ)) per row, in float64: the test's own, independent formula."""
    lp = torch.log_softmax(p_logits.double() / tau, -1)
    lq = torch.log_softmax(q_logits.double() / tau, -1)
    return (lp.exp() * (lp - lq)).sum(-1)


# ------------------------------------------------------------------------------------------ a hand-made example

V, D_S, D_T = 4, 2, 3
# one sequence of 4 positions: a prompt token, then three response tokens (labels[k + 1] predicted at k)
LABELS = torch.tensor([[-100, 2, 2, 3]])
HEAD_S = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])  # [V, d_s]
HEAD_T = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, -1.0, 0.5]])  # [V, d_t]
H_S = torch.tensor([[[0.5, -0.2], [1.0, 0.3], [-0.4, 0.8], [0.0, 0.0]]])  # [1, 4, d_s]
H_T = torch.tensor([[[0.2, 0.1, -0.3], [0.7, -0.5, 0.4], [0.1, 0.9, -0.2], [0.3, 0.3, 0.3]]])  # [1, 4, d_t]
W_T2S = torch.tensor([[1.0, 0.5, 0.0], [0.0, -1.0, 2.0]])  # [d_s, d_t]
B_T2S = torch.tensor([0.1, -0.2])
W_S2T = torch.tensor([[2.0, 0.0], [0.5, 1.0], [-1.0, 1.0]])  # [d_t, d_s]
B_S2T = torch.tensor([0.0, 0.3, -0.1])


def _hand_method(**over):
    m = get_method("dskd")(_cfg(**over), _LM(HEAD_S), _LM(HEAD_T))
    with torch.no_grad():
        m.t2s.weight.copy_(W_T2S)
        m.t2s.bias.copy_(B_T2S)
        m.s2t.weight.copy_(W_S2T)
        m.s2t.bias.copy_(B_S2T)
    return m


def _hand_outputs():
    s = LMOutput(logits=(H_S @ HEAD_S.T).requires_grad_(True), hidden=H_S.clone().requires_grad_(True))
    t = LMOutput(logits=H_T @ HEAD_T.T, hidden=H_T.clone())
    return s, t


def test_terms_equal_the_formula_on_a_hand_made_example():
    """Every term against the module docstring's formula, computed here in float64 from the same numbers."""
    m = _hand_method()
    s, t = _hand_outputs()
    loss, logs = m.loss({"student": {"labels": LABELS}}, s, t)
    pos, y = [0, 1, 2], torch.tensor([2, 2, 3])  # the response positions and the tokens they predict
    z_s = (H_S[0, pos] @ HEAD_S.T).double()
    z_t = (H_T[0, pos] @ HEAD_T.T).double()
    z_t2s = (H_T[0, pos].double() @ W_T2S.double().T + B_T2S.double()) @ HEAD_S.double().T
    z_s2t = (H_S[0, pos].double() @ W_S2T.double().T + B_S2T.double()) @ HEAD_T.double().T
    ce = -torch.log_softmax(z_s, -1)[range(3), y].sum()
    ce_t2s = -torch.log_softmax(z_t2s, -1)[range(3), y].sum()  # no temperature
    kd_stu = _kl(z_t2s, z_s, 2.0).sum()  # D = forward KL: KL(p_t2s ‖ p_s) at τ = 2
    kd_tea = _kl(z_t, z_s2t, 2.0).sum()  # KL(p_t ‖ p_s2t) at τ = 2
    acc = (z_t2s.argmax(-1) == y).sum()
    for k, v in {"ce": ce, "ce_t2s": ce_t2s, "kd_stu": kd_stu, "kd_tea": kd_tea}.items():
        assert logs[k].item() == pytest.approx(v.item(), rel=1e-6), k
    assert logs["t2s_acc"].item() == acc.item() and 0 < acc.item() < 3
    assert loss.item() == pytest.approx((0.5 * ce + 0.5 * (ce_t2s + kd_stu + kd_tea)).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["rkl", "js", "skl", "srkl", "akl"])
def test_the_divergence_changes_the_student_space_term_only(name):
    """D applies to L_kd_stu; L_kd_tea stays the forward KL whatever D (DSKD's code)."""
    s, t = _hand_outputs()
    _, fkl = _hand_method().loss({"student": {"labels": LABELS}}, s, t)
    _, other = _hand_method(divergence=name).loss({"student": {"labels": LABELS}}, s, t)
    assert other["kd_tea"].item() == fkl["kd_tea"].item()
    assert other["ce_t2s"].item() == fkl["ce_t2s"].item()
    assert abs(other["kd_stu"].item() - fkl["kd_stu"].item()) > 1e-4


def test_identity_projectors_between_identical_models_leave_only_the_cross_entropy():
    """Teacher = student and both projectors the identity: z_t2s = z_s and z_s2t = z_t, so both KD terms vanish
    and L_ce_t2s equals CE; the loss is (1 − α)·CE + α·CE = CE."""
    head = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    m = get_method("dskd")(_cfg(), _LM(head), _LM(head))
    with torch.no_grad():
        for lin in (m.t2s, m.s2t):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    out = LMOutput(logits=H_S @ head.T, hidden=H_S)
    loss, logs = m.loss({"student": {"labels": LABELS}}, out, out)
    assert logs["kd_stu"].item() == pytest.approx(0.0, abs=1e-6)
    assert logs["kd_tea"].item() == pytest.approx(0.0, abs=1e-6)
    assert logs["ce_t2s"].item() == pytest.approx(logs["ce"].item(), rel=1e-6)
    assert loss.item() == pytest.approx(logs["ce"].item(), rel=1e-6)


def test_gradients_reach_the_projectors_and_the_student_only_where_the_terms_say():
    m = _hand_method()
    s, t = _hand_outputs()
    loss, _ = m.loss({"student": {"labels": LABELS}}, s, t)
    loss.backward()
    for lin in (m.t2s, m.s2t):  # both projectors learn
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0 and lin.bias.grad.abs().sum() > 0
    assert s.hidden.grad[0, :3].abs().sum() > 0  # L_kd_tea trains the student through h_s
    assert torch.all(s.hidden.grad[0, 3] == 0) and torch.all(s.logits.grad[0, 3] == 0)  # not a response position

    # P_t2s learns from L_ce_t2s alone: L_kd_stu's target is detached
    m2 = _hand_method()
    s2, t2 = _hand_outputs()
    a = m2.cfg.kd_rate
    _, logs = m2.loss({"student": {"labels": LABELS}}, s2, t2)
    m3 = _hand_method()
    s3, t3 = _hand_outputs()
    from dwakd.losses.divergences import head_ce

    h_t2s = m3.t2s(H_T[0, :3])
    (a * head_ce(h_t2s, HEAD_S, torch.tensor([2, 2, 3]))).backward()
    torch.testing.assert_close(m3.t2s.weight.grad, m.t2s.weight.grad)
    torch.testing.assert_close(m3.t2s.bias.grad, m.t2s.bias.grad)

    # kd_rate 0: plain SFT, no projector gradient
    m0 = _hand_method(kd_rate=0.0)
    s0, t0 = _hand_outputs()
    loss0, logs0 = m0.loss({"student": {"labels": LABELS}}, s0, t0)
    loss0.backward()
    assert loss0.item() == pytest.approx(logs0["ce"].item())
    assert all(p.grad is None or torch.all(p.grad == 0) for p in m0.parameters())


def test_refuses_a_pair_whose_tokenizers_differ(tiny_pair):
    student, stok = load_model(tiny_pair / "student_base"), load_tokenizer(tiny_pair / "student_base")
    teacher, ttok = load_model(tiny_pair / "teacher"), load_tokenizer(tiny_pair / "teacher")
    with pytest.raises(ConfigError, match=r"^dskd: needs a teacher and a student with the same vocabulary \(the "
                                          r"teacher reads the student's token ids\), but the two tokenizers differ "
                                          r"\(\d+ vs \d+ tokens\); use a cross-tokenizer method instead: .*dskd_cma"):
        get_method("dskd")(_cfg(), student, teacher, stok, ttok)
    with pytest.raises(ConfigError, match=r"^dskd: needs the same vocabulary, but the student head has \d+ rows and "
                                          r"the teacher head \d+"):
        get_method("dskd")(_cfg(), student, teacher)
    with pytest.raises(ConfigError, match=r"^dskd: needs a teacher model"):
        get_method("dskd")(_cfg(), student, None, stok, stok)
    with pytest.raises(ConfigError, match=r"dskd\.divergence: expected one of"):
        _cfg(divergence="kl")


# ------------------------------------------------------------------------------------------ real models


@pytest.fixture(scope="module")
def same_vocab_pair(tiny_pair, tmp_path_factory):
    """The tiny pair's student and a Qwen2 teacher of another width on the *student's* tokenizer."""
    root = tmp_path_factory.mktemp("samevocab")
    stok = load_tokenizer(tiny_pair / "student_base")
    torch.manual_seed(1)
    build_model("qwen2", len(stok), stok, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256).save_pretrained(root)
    stok.save_pretrained(root)
    return tiny_pair / "student_base", root


def _trainer(method, student, teacher, tok, out, **over):
    cfg = TrainConfig(**{"batch_size": 2, "lr": 1e-3, "max_len": 96, "max_prompt_len": 48, "select_by": "last",
                         "progress": False, **over})
    return Trainer(method, student, teacher, tok, tok, cfg, out)


def test_padded_positions_get_exactly_zero_gradient(same_vocab_pair, dolly_small, tmp_path):
    sdir, tdir = same_vocab_pair
    torch.manual_seed(0)
    student, teacher, tok = load_model(sdir), load_model(tdir).requires_grad_(False), load_tokenizer(sdir)
    m = get_method("dskd")(_cfg(divergence="akl"), student, teacher, tok, load_tokenizer(tdir))
    tr = _trainer(m, student, teacher, tok, tmp_path / "run")
    batch = tr.batch(tr.make_items([dolly_small[9], dolly_small[12]]))
    assert "teacher" not in batch  # the teacher reads the student's ids
    sb = batch["student"]
    pad = sb["attention_mask"] == 0
    assert pad.any()
    with torch.no_grad():
        t_out = forward(teacher, sb["input_ids"], sb["attention_mask"], hidden=True)
        s_out = forward(student, sb["input_ids"], sb["attention_mask"], hidden=True)
    s_out = LMOutput(logits=s_out.logits.clone().requires_grad_(True), hidden=s_out.hidden.clone().requires_grad_(True))
    loss, logs = m.loss(batch, s_out, t_out)
    loss.backward()
    assert torch.all(s_out.logits.grad[pad] == 0) and torch.all(s_out.hidden.grad[pad] == 0)
    assert s_out.hidden.grad[~pad].abs().sum() > 0
    with torch.no_grad():  # garbage at the padded positions leaves the loss unchanged
        s_out.logits[pad] = 1e3 * torch.randn_like(s_out.logits[pad])
        s_out.hidden[pad] = 1e3 * torch.randn_like(s_out.hidden[pad])
    assert m.loss(batch, s_out, t_out)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_trains_a_few_steps_on_a_same_tokenizer_pair(same_vocab_pair, dolly_small, tmp_path):
    """Through the training loop: the teacher's logits at the response positions only, the projectors in their
    own AdamW group; finite logged terms, the projectors move."""
    sdir, tdir = same_vocab_pair
    torch.manual_seed(0)
    student, teacher = load_model(sdir), load_model(tdir).eval().requires_grad_(False)
    stok, ttok = load_tokenizer(sdir), load_tokenizer(tdir)
    m = get_method("dskd")(_cfg(divergence="srkl"), student, teacher, stok, ttok)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    tr = Trainer(m, student, teacher, stok, ttok, TrainConfig(batch_size=2, lr=1e-3, max_len=96, max_prompt_len=48,
                                                               select_by="last", progress=False, max_steps=3),
                 tmp_path / "run")
    tr.fit(dolly_small[:6])
    steps = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert len(steps) == 3
    for s in steps:
        for k in ("loss", "ce", "ce_t2s", "kd_stu", "kd_tea", "t2s_acc"):
            assert k in s and math.isfinite(s[k]), k
    assert all(not torch.equal(before[k], v.detach()) for k, v in m.named_parameters())
