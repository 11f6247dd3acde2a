"""DWA-KD (``dwakd.methods.dwakd``): token weights, ablation flags, the band, the γ schedule, training smoke."""

from __future__ import annotations

import json
import math

import pytest
import torch

import dwakd.methods.dwakd as dw
from dwakd.align.cma import next_token_targets
from dwakd.errors import ConfigError
from dwakd.losses import chunked
from dwakd.losses.divergences import divergence, token_ce
from dwakd.losses.softdtw import soft_dtw_divergence
from dwakd.models import LMOutput, forward, load_model, load_tokenizer
from dwakd.registry import get_method
from dwakd.settings import from_dict
from dwakd.train import TrainConfig, Trainer

#: dolly_small records whose responses end inside max_len = 96, of different lengths (as tests/test_baselines.py)
SHORT = (9, 12, 33, 56)
TERMS = ("ce", "ce_t2s", "kd_stu", "kd_tea", "dtw_emb", "dtw_hid", "t2s_acc", "conf_t2s")
#: what each variant changes with respect to ``full`` (module docstring table); every other term is equal
CHANGES = {
    "full": set(),
    "wo_gate": {"kd_stu"},
    "srkl": {"kd_stu"},
    "no_weights": {"kd_stu", "kd_tea"},
    "emb_only": {"dtw_hid"},
    "hid_only": {"dtw_emb"},
    "w_ew": {"kd_stu", "dtw_emb", "dtw_hid"},
    "w_dtw": {"kd_stu", "kd_tea", "dtw_emb", "dtw_hid"},
    "w_bdtw": {"kd_stu", "kd_tea"},
}


def _cfg(name: str = "dwakd", **over):
    return from_dict(get_method(name).Config, over, name)


def _models(pair):
    torch.manual_seed(0)
    student, stok = load_model(pair / "student_base"), load_tokenizer(pair / "student_base")
    teacher, ttok = load_model(pair / "teacher").requires_grad_(False), load_tokenizer(pair / "teacher")
    return student, teacher, stok, ttok


def _trainer(method, student, teacher, stok, ttok, out, **over):
    cfg = TrainConfig(**{"batch_size": 2, "lr": 1e-3, "max_len": 96, "max_prompt_len": 48, "select_by": "last",
                         "progress": False, **over})
    return Trainer(method, student, teacher, stok, ttok, cfg, out)


def _fitted_case(tiny_pair, dolly_small, out, dtype=torch.float32):
    """``(make, batch, s_out, t_out)`` of ``case`` / ``case64``: models, method and outputs in ``dtype``."""
    student, teacher, stok, ttok = _models(tiny_pair)
    student, teacher = student.to(dtype), teacher.to(dtype)
    cma_state = {}

    def make(name="dwakd", **over):
        torch.manual_seed(0)
        m = get_method(name)(_cfg(name, **over), student, teacher, stok, ttok).to(dtype)
        if cma_state:
            m.cma.load_state_dict(cma_state)
        return m

    tr = _trainer(make(), student, teacher, stok, ttok, out)
    batch = tr.batch(tr.make_items([dolly_small[i] for i in SHORT[:3]]))
    with torch.no_grad():
        t_out = forward(teacher, batch["teacher"]["input_ids"], batch["teacher"]["attention_mask"], hidden=True,
                        embeds=True)
        s_out = forward(student, batch["student"]["input_ids"], batch["student"]["attention_mask"], hidden=True,
                        embeds=True)
    t_out = LMOutput(t_out.logits * 10, t_out.hidden, t_out.embeds)
    s_out = LMOutput(*(x.clone().requires_grad_(True) for x in (s_out.logits * 10, s_out.hidden, s_out.embeds)))
    m = make()
    opt = torch.optim.Adam(m.cma.parameters(), lr=1e-2)
    for _ in range(40):
        t = m.terms(batch, s_out, t_out)
        opt.zero_grad()
        (t.ce_t2s / t.student_mask.sum()).backward()
        opt.step()
    cma_state.update({k: v.detach().clone() for k, v in m.cma.state_dict().items()})
    return make, batch, s_out, t_out


@pytest.fixture(scope="module")
def case(tiny_pair, dolly_small, tmp_path_factory):
    """Models, a padded batch of three records of different lengths and both models' outputs (the student's as
    leaves that require grad); ``make(name, **cfg)`` builds a method with the same initial parameters each time.

    The tiny models are untrained (near-uniform distributions, so every weight would be ≈ 1): the outputs'
    logits are sharpened ×10 and the CMA projectors are first fitted on L_ce_t2s for a few steps (shared by
    every ``make``), so that the entropies, the gate and the accuracy mask all vary over the positions."""
    return _fitted_case(tiny_pair, dolly_small, tmp_path_factory.mktemp("run"))


# ------------------------------------------------------------------------------------------ token weights

@pytest.mark.parametrize("variant", ["full", "wo_gate", "w_ew", "no_weights"])
def test_weights_are_nonnegative_detached_and_sum_to_each_response_length(variant, case):
    make, batch, s_out, t_out = case
    m = make(variant=variant)
    t = m.terms(batch, s_out, t_out)
    s_logits, t_logits = s_out.logits[t.student_mask], t_out.logits[t.teacher_mask]
    w_s, w_t, conf = m.token_weights(t, s_logits, t_logits)
    assert w_s.shape == (int(t.student_mask.sum()),) and w_t.shape == (int(t.teacher_mask.sum()),)
    for w, mask in ((w_s, t.student_mask), (w_t, t.teacher_mask)):
        assert not w.requires_grad and w.grad_fn is None
        assert torch.all(w >= 0) and torch.isfinite(w).all()
        seq = mask.nonzero()[:, 0]
        sums = torch.zeros(mask.size(0)).index_add_(0, seq, w)
        torch.testing.assert_close(sums, mask.sum(1).float())
    assert len(set(mask.sum(1).tolist())) > 1, "the records must have different response lengths"
    # within a sequence the weights are proportional to the formula of the variant
    with torch.no_grad():
        h_s = dw.entropy(s_logits)
        gated = h_s * conf
        cert = 1 - dw.entropy(t_logits) / math.log(t_logits.size(-1))
    raw_s = {"full": gated, "wo_gate": h_s, "w_ew": h_s, "no_weights": torch.ones_like(h_s)}[variant]
    raw_t = torch.ones_like(cert) if variant == "no_weights" else cert
    for w, raw, mask in ((w_s, raw_s, t.student_mask), (w_t, raw_t, t.teacher_mask)):
        seq = mask.nonzero()[:, 0]
        for b in range(mask.size(0)):
            r = w[seq == b] / raw[seq == b]
            torch.testing.assert_close(r, r[:1].expand_as(r))
    if variant != "no_weights":
        assert w_s.std() > 0.02 and w_t.std() > 0.02


def test_rescale_per_sequence_with_a_zero_sequence():
    w = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0])
    seq = torch.tensor([0, 0, 1, 1, 2])
    out = dw.rescale_per_sequence(w, seq, 3)
    torch.testing.assert_close(out, torch.tensor([0.5, 1.5, 1.0, 1.0, 1.0]))  # sequence 1: uniform fallback


# ------------------------------------------------------------------------------------------ ablations

def test_each_variant_changes_exactly_the_terms_it_names(case):
    make, batch, s_out, t_out = case
    logs = {}
    for v in dw.VARIANTS:
        m = make(variant=v)
        loss, lg = m.loss(batch, s_out, t_out)
        assert set(lg) == set(TERMS) and all(torch.isfinite(x) for x in lg.values())
        c = m.cfg
        expect = (c.ce_rate * lg["ce"] + c.wkd_rate * (lg["ce_t2s"] + lg["kd_stu"] + lg["kd_tea"])
                  + c.dtw_rate * (lg["dtw_emb"] + lg["dtw_hid"]))
        torch.testing.assert_close(loss.detach(), expect)
        logs[v] = lg
    full = logs["full"]
    assert all(full[k] != 0 for k in ("kd_stu", "kd_tea", "dtw_emb", "dtw_hid"))
    for v, changed in CHANGES.items():
        for k in TERMS:
            if k in changed:
                assert not torch.allclose(logs[v][k], full[k], rtol=1e-4, atol=0), (v, k)
            else:
                torch.testing.assert_close(logs[v][k], full[k], rtol=1e-5, atol=1e-6, msg=f"{v}: {k}")
    assert logs["hid_only"]["dtw_emb"] == 0 and logs["emb_only"]["dtw_hid"] == 0
    assert logs["w_ew"]["dtw_emb"] == 0 and logs["w_ew"]["dtw_hid"] == 0
    for k in TERMS:  # the band is the only difference between w_dtw and w_bdtw
        if k in ("dtw_emb", "dtw_hid"):
            assert logs["w_dtw"][k] < logs["w_bdtw"][k], k  # the penalty only adds cost to the cross term
        else:
            torch.testing.assert_close(logs["w_dtw"][k], logs["w_bdtw"][k])
    # the w_* rows are DSKD-CMA plus one component: w_bdtw's KD terms are DSKD-CMA's (accuracy mask, no weights)
    _, cma = make("dskd_cma").loss(batch, s_out, t_out)
    assert 0 < cma["t2s_acc"] < int(batch["student"]["labels"][:, 1:].ne(-100).sum())
    for k in ("ce", "ce_t2s", "kd_stu", "kd_tea", "t2s_acc"):
        torch.testing.assert_close(logs["w_bdtw"][k], cma[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logs["no_weights"]["kd_tea"], cma["kd_tea"])


def test_one_soft_dtw_call_per_step_and_gradients_reach_the_projectors(case, monkeypatch):
    make, batch, s_out, t_out = case
    calls = []
    real = dw.soft_dtw

    def spy(cost, len_x, len_y, gamma):
        calls.append((tuple(cost.shape), gamma))
        return real(cost, len_x, len_y, gamma)

    monkeypatch.setattr(dw, "soft_dtw", spy)
    B = batch["student"]["labels"].size(0)
    for variant, n_mats in (("full", 6), ("hid_only", 3), ("w_ew", 0)):
        calls.clear()
        m = make(variant=variant)
        m.on_step(0.5)
        loss, _ = m.loss(batch, s_out, t_out)
        assert len(calls) == (1 if n_mats else 0), variant
        if n_mats:
            assert calls[0][0][0] == n_mats * B and calls[0][1] == pytest.approx(1.4)
        m.zero_grad(set_to_none=True)
        loss.backward()
        assert m.cma.t2s.weight.grad.abs().sum() > 0
        assert hasattr(m, "emb_t2s") == (variant == "full")
        if variant == "full":
            assert m.emb_t2s.weight.grad.abs().sum() > 0
    # the attention for heatmaps
    t = make().terms(batch, s_out, t_out, return_attention=True)
    assert t.cma.a_t2s is not None and t.cma.a_t2s.shape[:2] == batch["student"]["labels"].shape


@pytest.mark.parametrize("variant", ["full", "w_dtw"])
def test_batched_dtw_terms_match_a_per_sample_computation(variant, case):
    """The packed, stacked single-call computation equals D summed over the samples computed one at a time from
    boolean-indexed response positions (``soft_dtw_divergence``, band from that sample's own CMA rows)."""
    make, batch, s_out, t_out = case
    m = make(variant=variant)
    m.on_step(0.3)
    t = m.terms(batch, s_out, t_out, return_attention=True)
    dtw_emb, dtw_hid = m.dtw_terms(batch, s_out, t_out, t)
    student, teacher = m._models
    y_s = next_token_targets(batch["student"]["labels"], m.pads[0])
    y_t = next_token_targets(batch["teacher"]["labels"], m.pads[1])
    emb = hid = 0.0
    for b in range(y_s.size(0)):
        sm, tm = t.student_mask[b], t.teacher_mask[b]
        S, T = int(sm.sum()), int(tm.sum())
        band = None
        if variant == "full":
            a = t.cma.a_t2s[b][sm][:, tm][None]
            c = m.cfg
            band = dw.soft_band(a, torch.tensor([S]), torch.tensor([T]), c.band_width, c.band_entropy_coef,
                                c.band_center_blend, c.band_penalty)
        with torch.no_grad():
            e_s = student.get_input_embeddings()(y_s[b][sm])[None]
            e_t = m.emb_t2s(teacher.get_input_embeddings()(y_t[b][tm]))[None]
            h_s = s_out.hidden[b][sm][None]
            h_t = m.cma.t2s(t_out.hidden[b][tm])[None]
            n = (torch.tensor([S]), torch.tensor([T]))
            emb = emb + soft_dtw_divergence(e_s, e_t, *n, m.gamma, band)[0]
            hid = hid + soft_dtw_divergence(h_s, h_t, *n, m.gamma, band)[0]
    torch.testing.assert_close(dtw_emb.detach(), emb, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dtw_hid.detach(), hid, rtol=1e-4, atol=1e-4)


def test_embedding_dtw_reads_the_forwards_lookup_with_the_same_value_and_gradients(tiny_pair, dolly_small,
                                                                                     tmp_path):
    """``target_embeddings`` takes e_s(y) from the forward's own lookup (no second [V, d] gradient buffer of the
    embedding table): in float64 the loss, every term and every gradient (student, teacher-side projectors) equal
    those of a separate lookup (``embeds=None``), and targets that are not the next input token fall back to it."""
    student, teacher, stok, ttok = _models(tiny_pair)
    student, teacher = student.double().eval(), teacher.double()
    torch.manual_seed(0)
    m = get_method("dwakd")(_cfg(), student, teacher, stok, ttok).double()
    tr = _trainer(m, student, teacher, stok, ttok, tmp_path)
    batch = tr.batch(tr.make_items([dolly_small[i] for i in SHORT]))
    m.on_step(0.5)
    params = [*student.named_parameters(), *m.named_parameters()]
    runs = []
    for reuse in (True, False):
        s_out, t_out = tr.forward(batch)
        if not reuse:
            s_out = LMOutput(s_out.logits, s_out.hidden, None, s_out.rows)
        for _, p in params:
            p.grad = None
        loss, logs = m.loss(batch, s_out, t_out)
        loss.backward()
        runs.append((loss.detach(), logs, {k: p.grad.clone() for k, p in params if p.grad is not None}))
    (l1, logs1, g1), (l2, logs2, g2) = runs
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12)
    for k in TERMS:
        torch.testing.assert_close(logs1[k], logs2[k], rtol=1e-12, atol=1e-12)
    assert logs1["dtw_emb"] != 0
    assert g1.keys() == g2.keys() and "emb_t2s.weight" in g1
    emb_key = next(k for k, p in params if p is student.get_input_embeddings().weight)
    assert g1[emb_key].abs().sum() > 0
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-10, atol=1e-12, msg=k)
    # which path: the forward's rows where the targets are the next inputs, a lookup where they are not
    s_out, _ = tr.forward(batch)
    t = m.terms(batch, s_out, t_out)
    order, _, valid = dw.gather_left(t.student_mask)
    emb, ids = student.get_input_embeddings(), batch["student"]["input_ids"]
    y = next_token_targets(batch["student"]["labels"], m.pads[0]).gather(1, order)
    got = dw.target_embeddings(emb, y, order, valid, ids, s_out.embeds)
    assert type(got.grad_fn).__name__.startswith("Gather")
    torch.testing.assert_close(got[valid], emb(y)[valid], rtol=0, atol=0)
    y_other = torch.where(valid & (torch.arange(y.size(1)) == 0), (y + 1) % emb.num_embeddings, y)
    other = dw.target_embeddings(emb, y_other, order, valid, ids, s_out.embeds)
    assert type(other.grad_fn).__name__.startswith("Embedding")
    torch.testing.assert_close(other, emb(y_other), rtol=0, atol=0)


@pytest.fixture(scope="module")
def case64(tiny_pair, dolly_small, tmp_path_factory):
    """``case`` in float64: models, method and outputs in double precision (the outputs' logits sharpened ×10,
    the CMA projectors fitted on L_ce_t2s first so that the accuracy mask is neither empty nor full)."""
    return _fitted_case(tiny_pair, dolly_small, tmp_path_factory.mktemp("run64"), torch.float64)


@pytest.mark.parametrize("name", ["dskd_cma", "dwakd"])
def test_student_rows_read_in_place_equal_the_copied_rows_in_value_and_gradient(name, case64, monkeypatch):
    """The memory-saving paths of the CMA terms (issue 18) against the formulation they replace, in float64
    (the losses keep float64: ``at_least_fp32``), in small blocks: L_kd_stu read from the student's logits block
    by block (``cma_terms``: the accurate rows only; ``cma_terms_per_position``: every row, in one pass with the CE), with z_t2s formed per block = ``divergence``
    on the copied rows ``logits[mask]`` and the whole z_t2s, plus ``token_ce``; DWA-KD's entropies through the
    index and its gate block by block = the whole-tensor formulas."""
    make, batch, s_out, t_out = case64
    m = make(name)
    tau, div = m.cfg.temperature, m.cfg.divergence
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 3 * s_out.logits.size(-1))
    t = m.terms(batch, s_out, t_out)
    rows = s_out.logits[t.student_mask]  # the old copy
    assert t.student_logits.data_ptr() == s_out.logits.data_ptr()  # a view: no copy
    torch.testing.assert_close(t.student_rows(), rows, rtol=0, atol=0)
    assert 3 < int(t.acc.sum()) < t.acc.numel(), "the accuracy mask must select some rows, not all"
    z = t.z_t2s()  # the old whole [N_s, V_s] tensor
    torch.testing.assert_close(t.acc, z.argmax(-1) == next_token_targets(batch["student"]["labels"],
                                                                         m.pads[0])[t.student_mask], rtol=0, atol=0)
    if name == "dskd_cma":
        new, old = t.kd_stu, divergence(div, rows, z, t.acc, tau, chunk_rows=None)
    else:
        new = t.kd_stu_pos
        old = divergence(div, rows, z, torch.ones_like(t.acc), tau, reduction="none", chunk_rows=None)
    assert new.dtype == torch.float64  # the divergences never cast float64 down
    torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12)
    ce_old = token_ce(s_out.logits, batch["student"]["labels"], chunk_rows=None)  # DWA-KD: one pass with L_kd_stu
    torch.testing.assert_close(t.ce, ce_old, rtol=1e-12, atol=1e-12)
    g = torch.arange(1.0, new.numel() + 1, dtype=new.dtype).view_as(new)  # a non-uniform upstream gradient
    g_new, = torch.autograd.grad((g * new).sum() + 0.7 * t.ce, s_out.logits)
    g_old, = torch.autograd.grad((g * old).sum() + 0.7 * ce_old, s_out.logits)
    assert g_new.abs().sum() > 0
    torch.testing.assert_close(g_new, g_old, rtol=1e-12, atol=1e-14)
    if name == "dwakd":
        with torch.no_grad():
            torch.testing.assert_close(dw.entropy(t.student_logits, index=t.student_index),
                                       dw.entropy(rows, chunk_rows=None), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(t.confidence(), torch.exp(z.max(-1).values - torch.logsumexp(z, -1)),
                                       rtol=1e-12, atol=1e-12)
            w_new = m.token_weights(t, t.student_logits, t.teacher_rows, student_index=t.student_index)
            t.t2s_conf = torch.exp(z.max(-1).values - torch.logsumexp(z, -1))  # the gate from the whole z_t2s
            w_old = m.token_weights(t, rows, t.teacher_rows)
        for a, b in zip(w_new, w_old):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ band, γ

def test_band_on_a_hand_made_attention_matrix():
    S, T = 4, 8
    a = torch.zeros(1, S + 1, T + 2)  # one padded row and two padded columns
    for i in range(3):
        a[0, i, 2 * i] = 1.0  # sharp rows: centre 0.7·2i + 0.3·i·8/4 = 2i, entropy 0
    a[0, 1] *= 3.0  # rows are renormalised
    a[0, 3, :T] = 1.0 / T  # uniform row: centre 0.7·3.5 + 0.3·3·2 = 4.25, entropy log 8
    a[0, 4] = 5.0  # padding: ignored
    a[0, :, T:] = 7.0
    band = dw.soft_band(a, torch.tensor([S]), torch.tensor([T]), width=1.0, entropy_coef=0.5, center_blend=0.7,
                        penalty=1.5)
    j = torch.arange(T).float()
    expect = torch.zeros(1, S + 1, T + 2)
    for i in range(3):
        expect[0, i, :T] = 1.5 * ((j - 2 * i).abs() > 1.0).float()
    width = 1.0 + 0.5 * math.log(8)  # 2.04: outside are j ≤ 2 and j ≥ 7
    expect[0, 3, :T] = 1.5 * ((j - 4.25).abs() > width).float()
    assert expect[0, 3, :T].tolist() == [1.5, 1.5, 1.5, 0, 0, 0, 0, 1.5]
    torch.testing.assert_close(band, expect)
    assert not band.requires_grad


def test_gamma_schedule():
    assert dw.gamma_at(0.0, 2.0, 0.8) == 2.0 and dw.gamma_at(1.0, 2.0, 0.8) == pytest.approx(0.8)
    assert dw.gamma_at(0.5, 2.0, 0.8) == pytest.approx(1.4) and dw.gamma_at(2.0, 2.0, 0.8) == pytest.approx(0.8)


def test_config_defaults_and_errors():
    c = _cfg()
    assert (c.ce_rate, c.wkd_rate, c.dtw_rate, c.temperature, c.divergence) == (0.5, 0.5, 0.2, 2.0, "fkl")
    assert (c.gamma_start, c.gamma_end, c.band_width, c.band_entropy_coef, c.band_center_blend, c.band_penalty,
            c.variant) == (2.0, 0.8, 5.0, 2.0, 0.7, 1.0, "full")
    with pytest.raises(ConfigError, match=r"dwakd\.variant: expected one of \[.*'w_bdtw'.*\], got 'bdtw'"):
        _cfg(variant="bdtw")
    with pytest.raises(ConfigError, match=r"dwakd\.band_center_blend: expected a value in \[0.0, 1.0\]"):
        _cfg(band_center_blend=1.5)
    with pytest.raises(ConfigError, match=r"dwakd\.gamma_end: expected a value > 0"):
        _cfg(gamma_end=0.0)
    with pytest.raises(ConfigError, match=r"dwakd\.dtw_rate: expected a value >= 0"):
        _cfg(dtw_rate=-1.0)
    with pytest.raises(ConfigError, match=r"dwakd\.divergence: variant 'srkl' sets the divergence to 'srkl'"):
        _cfg(variant="srkl", divergence="js")
    with pytest.raises(ConfigError, match=r"dwakd\.divergence: expected one of"):
        _cfg(divergence="kl")


# ------------------------------------------------------------------------------------------ training

@pytest.mark.parametrize("variant", dw.VARIANTS)
def test_every_variant_trains_a_few_finite_steps(variant, tiny_pair, dolly_small, tmp_path):
    student, teacher, stok, ttok = _models(tiny_pair)
    method = get_method("dwakd")(_cfg(variant=variant), student, teacher, stok, ttok)
    tr = _trainer(method, student, teacher, stok, ttok, tmp_path / "run", max_steps=3)
    tr.fit(dolly_small[:6])
    steps = [json.loads(ln) for ln in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert len(steps) == 3
    for s in steps:
        assert math.isfinite(s["loss"]) and all(math.isfinite(s[k]) for k in TERMS), s
    assert method.gamma == pytest.approx(dw.gamma_at(2 / 3, 2.0, 0.8))  # on_step ran before each step
