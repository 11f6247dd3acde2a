"""Cross-tokenizer baselines (``baselines/``), the shared CMA module and the DSKD v2 projectors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from baselines.cma_ga import grad_reverse
from baselines.uld import uld_pairs
from dwakd.align.cma import CrossModelAttention, index_embeddings, masked_softmax, next_token_targets, scale_norm
from dwakd.align.projection import pinv_t2s_init, s2t_matrix, shared_vocab, teacher_head_pinv
from dwakd.errors import ConfigError
from dwakd.models import LMOutput, forward, load_model, load_tokenizer
from dwakd.registry import available, get_method
from dwakd.settings import from_dict
from dwakd.train import TrainConfig, Trainer

CROSS = [n for n in available() if get_method(n).needs_teacher_tokens]
#: dolly_small records whose responses end (with EOS) inside max_len = 96, of different lengths
SHORT = (9, 12, 33, 56)


# ------------------------------------------------------------------------------------------ helpers

def _cfg(name: str, **over):
    cls = get_method(name)
    return from_dict(cls.Config, over, name)


def _models(pair: Path, same_vocab: bool = False):
    torch.manual_seed(0)
    student = load_model(pair / "student_base")
    stok = load_tokenizer(pair / "student_base")
    tdir = pair / ("student_base" if same_vocab else "teacher")
    teacher = load_model(tdir).requires_grad_(False)
    ttok = load_tokenizer(tdir)
    return student, teacher, stok, ttok


def _trainer(method, student, teacher, stok, ttok, out, **over):
    cfg = TrainConfig(**{"batch_size": 2, "lr": 1e-3, "max_len": 96, "max_prompt_len": 48, "select_by": "last",
                         "progress": False, **over})
    return Trainer(method, student, teacher, stok, ttok, cfg, out)


def _setup(pair, records, name, tmp_path, same_vocab=False, **over):
    """method, a padded batch of ``records`` and both models' outputs (student outputs
    detached into leaves that require grad, so their gradients can be inspected)."""
    student, teacher, stok, ttok = _models(pair, same_vocab)
    method = get_method(name)(_cfg(name, **over), student, teacher, stok, ttok)
    tr = _trainer(method, student, teacher, stok, ttok, tmp_path / "run")
    batch = tr.batch(tr.make_items(records))
    tb = batch["teacher"] if method.needs_teacher_tokens else batch["student"]
    with torch.no_grad():
        t_out = forward(teacher, tb["input_ids"], tb["attention_mask"], hidden=True, embeds=True)
        s_out = forward(student, batch["student"]["input_ids"], batch["student"]["attention_mask"],
                        hidden=True, embeds=True)
    s_out = LMOutput(*(x.clone().requires_grad_(True) for x in (s_out.logits, s_out.hidden, s_out.embeds)))
    return method, batch, s_out, t_out


def _short(records, n):
    return [records[i] for i in SHORT[:n]]


def _padded(batch) -> torch.Tensor:
    return batch["student"]["attention_mask"] == 0


# ------------------------------------------------------------------------------------------ CMA module

def test_masked_softmax_rows_sum_to_one_and_masked_entries_are_exactly_zero():
    torch.manual_seed(0)
    scores = torch.randn(3, 5, 4, requires_grad=True)
    rows = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    cols = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)  # sample 2: no key
    a = masked_softmax(scores, rows, cols)
    valid = rows[:, :, None] & cols[:, None, :]
    assert torch.all(a[~valid] == 0)
    live = rows & cols.any(-1, keepdim=True)
    torch.testing.assert_close(a.sum(-1)[live], torch.ones(int(live.sum())))
    assert torch.all(a.sum(-1)[~live] == 0) and torch.isfinite(a).all()
    (a * torch.randn_like(a)).sum().backward()
    assert torch.all(scores.grad[~valid] == 0)


def test_cma_attention_masks_padding_in_both_directions():
    torch.manual_seed(0)
    B, S, T, ds, dt = 2, 6, 5, 4, 3
    cma = CrossModelAttention(ds, dt, bias=True)
    smask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    tmask = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    h_s = torch.randn(B, S, ds, requires_grad=True)
    out = cma(student_ex=torch.randn(B, S, ds), student_ey=torch.randn(B, S, ds), teacher_ex=torch.randn(B, T, dt),
              teacher_ey=torch.randn(B, T, dt), teacher_hidden=torch.randn(B, T, dt), student_hidden=h_s,
              student_mask=smask, teacher_mask=tmask, return_attention=True)
    assert out.a_t2s.shape == (B, S, T) and out.a_s2t.shape == (B, T, S) and out.q.shape == (B, S, 2 * dt)
    torch.testing.assert_close(out.a_t2s.sum(-1)[smask], torch.ones(int(smask.sum())))
    torch.testing.assert_close(out.a_s2t.sum(-1)[tmask], torch.ones(int(tmask.sum())))
    assert torch.all(out.a_t2s.transpose(1, 2)[~tmask] == 0) and torch.all(out.a_t2s[~smask] == 0)
    assert torch.all(out.a_s2t.transpose(1, 2)[~smask] == 0) and torch.all(out.a_s2t[~tmask] == 0)
    (out.h_s2t[tmask].sum() + out.h_t2s[smask].sum()).backward()
    assert torch.all(h_s.grad[~smask] == 0) and h_s.grad[smask].abs().sum() > 0


def test_scale_norm_and_index_embeddings():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3) * 4
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y = scale_norm(x, mask)
    assert y[0][mask[0]].std().item() == pytest.approx(1.0, rel=1e-5)
    x2 = x.clone()
    x2[0, 3:] = 1e6  # masked positions never influence the std
    torch.testing.assert_close(scale_norm(x2, mask)[0, :3], y[0, :3])
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    assert next_token_targets(labels, pad_id=0).tolist() == [[0, 7, 8, 0], [5, 0, 0, 0]]
    emb = torch.nn.Embedding(10, 2)
    ex, ey = index_embeddings(emb, torch.tensor([[1, 2, 7, 8], [3, 5, 0, 0]]), labels, pad_id=0)
    torch.testing.assert_close(ey[0, 1], emb.weight[7])
    torch.testing.assert_close(ey[0, 3], emb.weight[0])
    torch.testing.assert_close(ex[1, 1], emb.weight[5])


# ------------------------------------------------------------------------------------------ projection

def test_shared_vocab_converts_markers():
    teacher = {"<|endoftext|>": 0, "Ġthe": 1, "the": 2, "Ġcat": 3, "Ċ": 4}
    student = {"</s>": 0, "▁the": 5, "the": 6, "▁dog": 7}
    t, s = shared_vocab(teacher, student, extra_pairs=[(0, 0)])
    assert list(zip(t.tolist(), s.tolist())) == [(0, 0), (1, 5), (2, 6)]


def test_pinv_projectors_reproduce_logits_when_the_heads_are_related():
    torch.manual_seed(0)
    n, ds, dt = 50, 6, 4
    w_s = torch.randn(n, ds, dtype=torch.float64)
    w_t = w_s @ torch.randn(ds, dt, dtype=torch.float64)  # teacher head in the student head's column space
    ids = torch.arange(n)
    w_t2s = pinv_t2s_init(w_t, w_s, ids, ids)  # [ds, dt]
    h_t = torch.randn(3, dt, dtype=torch.float64)
    torch.testing.assert_close((h_t @ w_t2s.double().T) @ w_s.T, h_t @ w_t.T, atol=1e-4, rtol=1e-4)
    w_s2 = w_t @ torch.randn(dt, ds, dtype=torch.float64)  # the other direction
    m = s2t_matrix(w_s2, ids, teacher_head_pinv(w_t, ids))
    h_s = torch.randn(3, ds, dtype=torch.float64)
    torch.testing.assert_close((h_s @ m.double()) @ w_t.T, h_s @ w_s2.T, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ ULD

def _uld_case():
    ps = torch.tensor([0.5, 0.25, 0.125, 0.125]).log()  # V_s = 4
    pt = torch.tensor([0.25, 0.7, 0.05]).log()  # V_t = 3 -> sorted (.7, .25, .05, 0): ULD 0.2 + 0.075 + 0.125 = 0.4
    pu = torch.zeros(3)  # uniform teacher: |.5-1/3| + |.25-1/3| + |.125-1/3| + .125 = 7/12
    # sample 0: 3 student / 2 teacher response tokens; sample 1: 2 student / 1 teacher (+ right padding)
    s_labels = torch.tensor([[-100, 1, 2, 3], [-100, 1, 0, -100]])
    t_labels = torch.tensor([[-100, 1, 2, -100], [-100, 2, -100, -100]])
    s_logits = torch.randn(2, 4, 4) * 3
    t_logits = torch.randn(2, 4, 3) * 3
    s_logits[0, 0] = s_logits[0, 1] = s_logits[1, 0] = ps
    t_logits[0, 0] = t_logits[0, 1] = pt
    t_logits[1, 0] = pu
    batch = {"student": {"labels": s_labels}, "teacher": {"labels": t_labels}}
    return batch, s_logits.requires_grad_(True), t_logits


def test_uld_variants_follow_their_formulas_on_a_hand_example():
    batch, s_logits, t_logits = _uld_case()
    uld, sample = uld_pairs(s_logits, t_logits, batch["student"]["labels"].roll(-1, 1) != -100,
                            batch["teacher"]["labels"].roll(-1, 1) != -100)
    torch.testing.assert_close(uld, torch.tensor([0.4, 0.4, 7 / 12]))
    assert sample.tolist() == [0, 0, 1]
    from dwakd.losses.divergences import token_ce

    ce = token_ce(s_logits, batch["student"]["labels"])
    s_out, t_out = LMOutput(logits=s_logits), LMOutput(logits=t_logits)
    m = get_method("uld")(_cfg("uld"), None, object())
    loss, logs = m.loss(batch, s_out, t_out)
    torch.testing.assert_close(loss, 0.5 * ce + 0.5 * torch.tensor(0.8 + 7 / 12))
    torch.testing.assert_close(logs["uld"], torch.tensor(0.8 + 7 / 12))
    m = get_method("uld")(_cfg("uld", variant="original"), None, object())
    loss, logs = m.loss(batch, s_out, t_out)
    mean = (0.4 + 7 / 12) / 2  # per-sample means (0.4 and 7/12), then their mean
    torch.testing.assert_close(logs["uld"], torch.tensor(mean * 5))  # × the 5 student response tokens
    torch.testing.assert_close(loss, ce + 1.5 * torch.tensor(mean * 5))
    loss.backward()
    assert torch.all(s_logits.grad[0, 2, :] != 0)  # CE still reaches the unpaired third token
    with pytest.raises(ConfigError, match=r"uld\.variant: expected one of \['dskd', 'original'\], got 'orig'"):
        _cfg("uld", variant="orig")


# ------------------------------------------------------------------------------------------ MinED

class _Tok:
    """A minimal tokenizer: a vocabulary, ids → strings, EOS/pad."""

    def __init__(self, vocab: dict[str, int], eos: str):
        self.vocab, self.inv = vocab, {i: t for t, i in vocab.items()}
        self.eos_token, self.eos_token_id, self.pad_token_id = eos, vocab[eos], vocab[eos]
        self.is_fast = False

    def get_vocab(self):
        return dict(self.vocab)

    def convert_ids_to_tokens(self, ids):
        return [self.inv.get(int(i)) for i in ids]

    def __len__(self):
        return len(self.vocab)


class _Head(torch.nn.Module):
    def __init__(self, v, d):
        super().__init__()
        self.head = torch.nn.Linear(d, v, bias=False)

    def get_output_embeddings(self):
        return self.head


def test_mined_on_a_hand_made_example():
    stok = _Tok({"</s>": 0, "▁Hello": 1, "▁wor": 2, "ld": 3, "▁world": 4, "!": 5, "▁Q": 6}, "</s>")
    ttok = _Tok({"<|endoftext|>": 0, "Hello": 1, "Ġworld": 2, "!": 3, "Ġwor": 4, "Q": 5}, "<|endoftext|>")
    ref = get_method("mined")(_cfg("mined"), _Head(7, 2), _Head(6, 2), stok, ttok)
    # the default (reference) rule compares raw strings in the student's markers: "Q" is 1 edit from "▁Q" and
    # from "!", and the tie goes to the lower student id, "!"
    assert ref.t2s.tolist() == [0, 1, 4, 5, 2, 5]
    m = get_method("mined")(_cfg("mined", temperature=2.0, kd_rate=0.5, map_rule="normalised"), _Head(7, 2),
                            _Head(6, 2), stok, ttok)
    # normalised rule, teacher→student: </s>, ▁Hello (distance 0 after normalising), ▁world, !, ▁wor, ▁Q;
    # "ld" is unmapped
    assert m.t2s.tolist() == [0, 1, 4, 5, 2, 6] and m.s2t.tolist() == [0, 1, 4, -1, 2, 3, 5]
    # "Q" + response: student ▁Hello ▁wor ld ! </s>, teacher Hello Ġworld ! <|endoftext|>
    s_labels = torch.tensor([[-100, 1, 2, 3, 5, 0]])
    t_labels = torch.tensor([[-100, 1, 2, 3, 0]])
    assert m.align(s_labels, t_labels) == ([0, 0, 0], [0, 3, 4], [0, 2, 3])  # ▁wor / ld share Ġworld: one-hot
    torch.manual_seed(0)
    s_logits = torch.randn(1, 6, 7, requires_grad=True)
    t_logits = torch.randn(1, 5, 6)
    batch = {"student": {"labels": s_labels}, "teacher": {"labels": t_labels}}
    loss, logs = m.loss(batch, LMOutput(logits=s_logits), LMOutput(logits=t_logits))
    tau = 2.0
    ls = torch.log_softmax(s_logits[0] / tau, -1)
    kd = 0.0
    for sp, tp in [(0, 0), (3, 2), (4, 3)]:
        g = torch.tensor([t_logits[0, tp, j] if j >= 0 else -1e5 for j in [0, 1, 4, -1, 2, 3, 5]])
        lq = torch.log_softmax(g / tau, -1)
        kd = kd + (lq.exp() * (lq - ls[sp])).sum()
    kd = kd - ls[1, 2] - ls[2, 3]  # one-hot targets ▁wor and ld
    torch.testing.assert_close(logs["kd"], kd.detach())
    assert logs["aligned_ratio"].item() == 3
    ce = -torch.log_softmax(s_logits[0, :5], -1)[torch.arange(5), torch.tensor([1, 2, 3, 5, 0])].sum()
    torch.testing.assert_close(loss, 0.5 * ce + 0.5 * kd)


def test_mined_caches_its_vocabulary_map(tiny_pair, tmp_path):
    student, teacher, stok, ttok = _models(tiny_pair)
    path = tmp_path / "map.json"
    a = get_method("mined")(_cfg("mined", vocab_map=str(path)), student, teacher, stok, ttok)
    assert len(json.loads(path.read_text())["teacher_to_student"]) == len(ttok)
    b = get_method("mined")(_cfg("mined", vocab_map=str(path)), student, teacher, stok, ttok)
    assert torch.equal(a.t2s, b.t2s) and torch.equal(a.s2t, b.s2t)


# ------------------------------------------------------------------------------------------ properties

@pytest.mark.parametrize("name", CROSS + ["vanilla_kd"])
def test_padded_positions_get_exactly_zero_gradient_and_do_not_change_the_loss(name, tiny_pair, dolly_small,
                                                                                tmp_path):
    method, batch, s_out, t_out = _setup(tiny_pair, _short(dolly_small, 2), name, tmp_path,
                                         same_vocab=name == "vanilla_kd")
    pad = _padded(batch)
    assert pad.any(), "the two records must have different lengths"
    torch.manual_seed(1)
    loss, logs = method.loss(batch, s_out, t_out)
    loss.backward()
    for x in (s_out.logits, s_out.hidden, s_out.embeds):
        if x.grad is not None:
            assert torch.all(x.grad[pad] == 0)
    assert s_out.logits.grad[~pad].abs().sum() > 0
    with torch.no_grad():  # garbage at the padded positions leaves the loss unchanged
        for x in (s_out.logits, s_out.hidden, s_out.embeds):
            x[pad] = 1e3 * torch.randn_like(x[pad])
    torch.manual_seed(1)
    loss2, logs2 = method.loss(batch, s_out, t_out)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    assert set(logs2) == set(logs)


@pytest.mark.parametrize("name", ["vanilla_kd", "uld", "mined", "dskd_eta"])
def test_identical_teacher_and_student_give_zero_kd_terms(name, tiny_pair, dolly_small, tmp_path):
    """Teacher = student (same weights, same tokenizer). Not defined for dskd_cma / cma_ga: their targets
    come from an attention-weighted projection, not from the teacher's own distribution."""
    student, _, stok, _ = _models(tiny_pair)
    method = get_method(name)(_cfg(name), student, student, stok, stok)
    tr = _trainer(method, student, student, stok, stok, tmp_path / "run")
    batch = tr.batch(tr.make_items(_short(dolly_small, 2)))
    if not method.needs_teacher_tokens:
        batch["teacher"] = batch["student"]
    with torch.no_grad():
        out = forward(student, batch["student"]["input_ids"], batch["student"]["attention_mask"], hidden=True)
    _, logs = method.loss(batch, out, out)
    n = int((batch["student"]["labels"][:, 1:] != -100).sum())
    kd_terms = {"vanilla_kd": ["kd"], "uld": ["uld"], "mined": ["kd"], "dskd_eta": ["kd_stu", "kd_tea"]}[name]
    for k in kd_terms:
        assert abs(logs[k].item()) / n < 1e-5, (k, logs[k].item() / n)
    if "aligned_ratio" in logs:
        assert logs["aligned_ratio"].item() == n  # every position aligned
    if name == "dskd_eta":  # the pinv initialisation makes the t2s projector the identity here
        d = student.config.hidden_size
        torch.testing.assert_close(method.t2s.weight, torch.eye(d), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ DSKD-ETA

def test_eta_loss_uses_only_aligned_pairs(tiny_pair, dolly_small, tmp_path):
    method, batch, s_out, t_out = _setup(tiny_pair, _short(dolly_small, 2), "dskd_eta", tmp_path, kd_rate=1.0)
    bi, sp, tp = method.align(batch["student"]["labels"], batch["teacher"]["labels"])
    resp = (batch["student"]["labels"][:, 1:] != -100).sum().item()
    assert 0 < len(bi) < resp
    loss, logs = method.loss(batch, s_out, t_out)
    assert logs["aligned_ratio"].item() == len(bi)
    loss.backward()  # kd_rate = 1: no CE, so every student gradient comes from an aligned pair
    aligned_s = torch.zeros(s_out.hidden.shape[:2], dtype=torch.bool)
    aligned_s[bi, sp] = True
    assert torch.all(s_out.hidden.grad[~aligned_s] == 0) and torch.all(s_out.logits.grad[~aligned_s] == 0)
    assert s_out.hidden.grad[aligned_s].abs().sum() > 0
    aligned_t = torch.zeros(t_out.hidden.shape[:2], dtype=torch.bool)
    aligned_t[bi, tp] = True
    t2 = LMOutput(logits=t_out.logits.clone(), hidden=t_out.hidden.clone())
    t2.logits[~aligned_t] = torch.randn_like(t2.logits[~aligned_t]) * 5
    t2.hidden[~aligned_t] = torch.randn_like(t2.hidden[~aligned_t]) * 5
    assert method.loss(batch, s_out, t2)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    t2.logits[bi[0], tp[0]] += torch.randn_like(t2.logits[bi[0], tp[0]]) * 5
    assert method.loss(batch, s_out, t2)[0].item() != pytest.approx(loss.item(), rel=1e-6)


def test_eta_offsets_alignment_aligns_more_and_needs_fast_tokenizers(tiny_pair, dolly_small, tmp_path):
    m_eta, batch, _, _ = _setup(tiny_pair, _short(dolly_small, 4), "dskd_eta", tmp_path)
    student, teacher, stok, ttok = _models(tiny_pair)
    m_off = get_method("dskd_eta")(_cfg("dskd_eta", alignment="offsets"), student, teacher, stok, ttok)
    sl, tl = batch["student"]["labels"], batch["teacher"]["labels"]
    eta = set(zip(*m_eta.align(sl, tl)))
    off = set(zip(*m_off.align(sl, tl)))
    assert eta < off  # here every ETA pair is also an offsets pair, and the newline / later text add more
    slow = _Tok(stok.get_vocab(), stok.eos_token)
    with pytest.raises(ConfigError, match=r"dskd_eta: the student tokenizer .* cannot return character offsets.*"
                                          r"alignment='eta'"):
        get_method("dskd_eta")(_cfg("dskd_eta", alignment="offsets"), student, teacher, slow, ttok)
    with pytest.raises(ConfigError, match=r"dskd_eta\.alignment: expected one of"):
        _cfg("dskd_eta", alignment="dtw")


# ------------------------------------------------------------------------------------------ DSKD-CMA(-GA)

def test_cma_method_attention_rows_sum_to_one_on_response_positions(tiny_pair, dolly_small, tmp_path):
    method, batch, s_out, t_out = _setup(tiny_pair, _short(dolly_small, 2), "dskd_cma", tmp_path)
    t = method.terms(batch, s_out, t_out, return_attention=True)
    a = t.cma.a_t2s
    torch.testing.assert_close(a.sum(-1)[t.student_mask], torch.ones(int(t.student_mask.sum())))
    assert torch.all(a.transpose(1, 2)[~t.teacher_mask] == 0) and torch.all(a[~t.student_mask] == 0)
    assert {n for n, _ in method.named_parameters()} == {f"cma.{p}.{w}" for p in ("query", "t2s", "s2t")
                                                         for w in ("weight", "bias")}


def test_grad_reverse_flips_the_gradient():
    x = torch.randn(3, requires_grad=True)
    (grad_reverse(x, 2.0) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-2.0, -4.0, -6.0]


@pytest.mark.parametrize("variant", ["paper", "reference_code"])
def test_cma_ga_term_reaches_the_query_and_trains_the_discriminator_only_in_the_paper_variant(variant, tiny_pair, dolly_small,
                                                                             tmp_path):
    method, batch, s_out, t_out = _setup(tiny_pair, _short(dolly_small, 2), "cma_ga", tmp_path, variant=variant)
    method.discriminator.eval()  # no dropout: both passes see the same discriminator

    def query_grad(with_ga: bool):
        method.zero_grad(set_to_none=True)
        t = method.terms(batch, s_out, t_out)
        loss = t.ce_t2s + t.kd_stu + t.kd_tea + (method.ga_term(t) if with_ga else 0.0)
        loss.backward()
        return method.cma.query.weight.grad.clone()

    g_cma, g_all = query_grad(False), query_grad(True)
    disc = [p for p in method.discriminator.parameters()]
    before = [p.detach().clone() for p in disc]
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    opt.step()
    changed = any(not torch.equal(b, p) for b, p in zip(before, disc))
    if variant == "paper":
        assert not torch.allclose(g_all, g_cma)
        assert changed and all(p.grad is not None for p in disc)
    else:  # the public code: its swapped unpacking sends the queries through the reversal, D is frozen
        assert not torch.allclose(g_all, g_cma)
        assert not changed and all(not p.requires_grad for p in disc)
    with pytest.raises(ConfigError, match=r"cma_ga\.variant: expected one of"):
        _cfg("cma_ga", variant="code")


# ------------------------------------------------------------------------------------------ start-up checks

def test_same_vocabulary_method_fails_at_start_up_with_different_tokenizers(tiny_pair):
    student, teacher, stok, ttok = _models(tiny_pair)
    with pytest.raises(ConfigError, match=r"vanilla_kd: needs a teacher and a student with the same vocabulary.*"
                                          r"use a cross-tokenizer method instead: mined, uld, dskd_cma"):
        get_method("vanilla_kd")(_cfg("vanilla_kd"), student, teacher, stok, ttok)
    with pytest.raises(ConfigError, match=r"mined: needs both tokenizers .*teacher tokenizer is missing"):
        get_method("mined")(_cfg("mined"), student, teacher, stok, None)
    with pytest.raises(ConfigError, match=r"dskd_cma\.kd_rate: expected a value in \[0.0, 1.0\], got 1.5"):
        _cfg("dskd_cma", kd_rate=1.5)
    with pytest.raises(ConfigError, match=r"mined\.temperature: expected a value > 0"):
        _cfg("mined", temperature=0.0)


# ------------------------------------------------------------------------------------------ smoke

@pytest.mark.parametrize("name", CROSS)
def test_every_cross_tokenizer_method_trains_a_few_steps(name, tiny_pair, dolly_small, tmp_path):
    student, teacher, stok, ttok = _models(tiny_pair)
    method = get_method(name)(_cfg(name), student, teacher, stok, ttok)
    tr = _trainer(method, student, teacher, stok, ttok, tmp_path / "run", max_steps=3)
    tr.fit(dolly_small[:6])
    _, logs = tr.micro_step(tr.batch(tr.make_items(dolly_small[:2])))
    steps = [json.loads(ln) for ln in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert len(steps) == 3
    for s in steps:
        assert math.isfinite(s["loss"])
        for k in logs:
            assert k in s and math.isfinite(s[k]), k
