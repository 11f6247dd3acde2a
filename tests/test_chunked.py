"""Row-blocked losses (``dwakd.losses.chunked``) equal the one-block computation in value and gradient; the
teacher's response rows only, the cached token alignments, the fp32 Soft-DTW costs under autocast and the
position-limit check at the start of a run (issue 18)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.uld import sorted_probs, uld_distance
from dwakd.align.projection import s2t_matrix
from dwakd.align.responses import aligned_tensors, response_mask
from dwakd.errors import ConfigError
from dwakd.losses import chunked
from dwakd.losses.chunked import rowwise
from dwakd.losses.divergences import (
    DIVERGENCES,
    divergence,
    head_ce,
    head_divergence,
    kl_from_logprobs,
    response_positions,
    token_ce,
)
from dwakd.losses.softdtw import cosine_cost
from dwakd.methods.dual_space import rows_argmax, t2s_scan
from dwakd.methods.dwakd import entropy
from dwakd.models import LMOutput, check_position_limits, forward, lm_head_weight, load_model, load_tokenizer
from dwakd.registry import get_method
from dwakd.settings import from_dict
from dwakd.train import TrainConfig, Trainer

D = torch.float64


def _logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=D) * scale)


# ------------------------------------------------------------------------------------------ rowwise


def test_rowwise_gradcheck_in_float64():
    """The custom backward (block recomputation) against finite differences, rows and a shared tensor."""
    def fn(x, y, w):
        return ((x @ w).softmax(-1) * y).sum(-1) + (x ** 2).sum(-1)

    x = _logits(7, 3, seed=1).requires_grad_(True)
    y = _logits(7, 4, seed=2).requires_grad_(True)
    w = _logits(3, 4, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y, w: rowwise(fn, [x, y], [w], chunk_rows=2), (x, y, w))
    plain = fn(x, y, w)
    blocked = rowwise(fn, [x, y], [w], chunk_rows=3)
    assert torch.equal(plain, blocked)
    g_plain = torch.autograd.grad(plain.sum(), (x, y, w))
    g_blocked = torch.autograd.grad(blocked.sum(), (x, y, w))
    for a, b in zip(g_plain, g_blocked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_rowwise_leaves_inputs_without_grad_alone_and_handles_no_rows():
    x = _logits(5, 3).requires_grad_(True)
    idx = torch.tensor([4, 0, 2, 2, 1])
    table = _logits(6, 3, seed=4)  # no gradient wanted
    out = rowwise(lambda x, i, t: (x * t[i]).sum(-1), [x, idx], [table], chunk_rows=2)
    (gx,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(gx, table[idx])
    empty = rowwise(lambda x: x.sum(-1), [x[:0]], chunk_rows=2)
    assert empty.shape == (0,)


def test_rowwise_gathers_rows_from_a_source_in_float64():
    """``gather_from``: the rows ``source[index]`` read block by block (a repeated index included) = the function
    on the gathered copy, in value and gradient (finite differences too); the source's gradient is summed over
    repeated rows, the index's blocks are the row blocks."""
    def fn(x, y, w):
        return ((x @ w).log_softmax(-1) * y).sum(-1) + (x ** 3).sum(-1)

    src = _logits(6, 3, seed=20).requires_grad_(True)
    idx = torch.tensor([4, 0, 5, 4, 2, 1, 4])
    y = _logits(7, 4, seed=21).requires_grad_(True)
    w = _logits(3, 4, seed=22, scale=1.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, y, w: rowwise(fn, [idx, y], [w], chunk_rows=2, gather_from=s),
                                    (src, y, w))
    plain = fn(src[idx], y, w)
    g_plain = torch.autograd.grad(plain.sum(), (src, y, w))
    for chunk in (1, 3, 7, None):  # 7: one block, still recomputed (only None is the plain call)
        got = rowwise(fn, [idx, y], [w], chunk_rows=chunk, gather_from=src)
        assert torch.equal(got, plain)
        for a, b in zip(g_plain, torch.autograd.grad(got.sum(), (src, y, w))):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    none = rowwise(fn, [idx[:0], y[:0]], [w], chunk_rows=2, gather_from=src)
    assert none.shape == (0,) and none.requires_grad
    assert torch.autograd.grad(none.sum() + src.sum(), src)[0].eq(1).all()  # no rows: nothing added
    with pytest.raises(ValueError, match=r"gather_from, rows\[0\] must be a 1-D long index"):
        rowwise(fn, [y, y], [w], chunk_rows=2, gather_from=src)


# ------------------------------------------------------------------------------------------ divergences


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_chunked_divergence_equals_the_plain_one(name, reduction):
    """Every divergence: blocks of 3 rows (masked rows skipped, a −inf entry) = one call, values and gradients
    (float64 inputs; the divergences compute in fp32, so a sum over rows may differ in its last bits); masked
    positions keep exactly zero value and gradient."""
    s = _logits(2, 5, 11, seed=5).requires_grad_(True)
    t = _logits(2, 5, 11, seed=6).requires_grad_(True)
    with torch.no_grad():
        t[0, 1, 3] = -math.inf
        s[1, 4] = float("nan")  # a masked row: never read
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = mask[0, 0] = False
    plain = divergence(name, s, t, mask, 2.0, reduction=reduction, chunk_rows=None)
    blocked = divergence(name, s, t, mask, 2.0, reduction=reduction, chunk_rows=3)
    torch.testing.assert_close(blocked, plain, rtol=1e-6, atol=1e-6)
    w = torch.rand(plain.shape, dtype=D, generator=torch.Generator().manual_seed(7)) if reduction == "none" else 1.0
    g_plain = torch.autograd.grad((plain * w).sum(), (s, t))
    g_blocked = torch.autograd.grad((blocked * w).sum(), (s, t))
    for a, b in zip(g_plain, g_blocked):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        assert torch.all(b[~mask] == 0)


@pytest.mark.parametrize("name", ["fkl", "js", "skl"])
def test_head_divergence_equals_the_divergence_of_the_product(name):
    h = _logits(9, 4, seed=10, scale=1.0).requires_grad_(True)
    w = _logits(13, 4, seed=11, scale=1.0).requires_grad_(True)
    t_all = _logits(20, 13, seed=12)
    idx = torch.tensor([3, 0, 19, 7, 7, 12, 5, 1, 2])
    every = torch.ones(9, dtype=torch.bool)
    ref = divergence(name, h @ w.T, t_all[idx], every, 2.0, reduction="none", chunk_rows=None)
    g_ref = torch.autograd.grad(ref.sum(), (h, w))
    for kw in ({"teacher_logits": t_all[idx]}, {"teacher_logits": t_all, "teacher_index": idx}):
        got = head_divergence(name, h, w, temperature=2.0, reduction="none", chunk_rows=2, **kw)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
        for a, b in zip(g_ref, torch.autograd.grad(got.sum(), (h, w))):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_chunked_token_ce_and_head_ce_equal_cross_entropy():
    logits = _logits(3, 6, 10, seed=13).requires_grad_(True)
    labels = torch.randint(0, 10, (3, 6), generator=torch.Generator().manual_seed(0))
    labels[0, :3] = labels[2, 4:] = -100
    ref = token_ce(logits, labels, chunk_rows=None)
    got = token_ce(logits, labels, chunk_rows=2)
    assert got.dtype == ref.dtype == D  # float64 in, float64 arithmetic (at_least_fp32)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ref, logits), torch.autograd.grad(got, logits)):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    h = _logits(7, 4, seed=14, scale=1.0).requires_grad_(True)
    w = _logits(10, 4, seed=15, scale=1.0)
    y = torch.tensor([1, 2, 3, -100, 9, 0, 4])
    ref = F.cross_entropy(h @ w.T, y, reduction="sum")
    got = head_ce(h, w, y, chunk_rows=3)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, h)[0], torch.autograd.grad(ref, h)[0], rtol=1e-12,
                               atol=1e-12)
    got32 = head_ce(h.float(), w.float(), y, chunk_rows=3)  # half or single precision: fp32 arithmetic
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=1e-5, atol=1e-5)


def test_chunked_entropy():
    z = _logits(9, 12, seed=16)
    torch.testing.assert_close(entropy(z, chunk_rows=2), entropy(z, chunk_rows=None), rtol=1e-12, atol=1e-12)


def test_blockwise_argmax_scans_equal_the_whole_rows(monkeypatch):
    """rows_argmax and t2s_scan in blocks of a few rows (CHUNK_ELEMENTS shrunk) equal the argmax / accuracy /
    max-probability of the whole tensor; no rows give empty results."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 3 * 11)  # 3 rows of 11 per block
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(17, 11, generator=g)
    index = torch.tensor([16, 0, 3, 3, 9, 12, 1, 5])
    assert torch.equal(rows_argmax(flat, index), flat[index].argmax(-1))
    assert rows_argmax(flat, index[:0]).shape == (0,)
    hidden, head = torch.randn(10, 4, generator=g), torch.randn(11, 4, generator=g)
    z = hidden @ head.T
    targets = z.argmax(-1).clone()
    targets[::3] = -100  # never an argmax
    acc, conf = t2s_scan(hidden, head, targets, True)
    assert torch.equal(acc, z.argmax(-1) == targets) and 0 < int(acc.sum()) < 10
    torch.testing.assert_close(conf, z.softmax(-1).max(-1).values)
    acc0, conf0 = t2s_scan(hidden[:0], head, targets[:0], False)
    assert acc0.shape == (0,) and conf0 is None


@pytest.mark.parametrize("vs,vt", [(7, 19), (19, 7), (11, 11)])
def test_uld_distance_without_padding_equals_the_padded_reference(vs, vt):
    """ULD's sorted distance with the tails summed instead of padded (and the teacher sorted without gradient,
    block by block) = the padded reference, value and student gradient, chunked or not (fp32 inside: the sums
    associate differently)."""
    s = _logits(6, vs, seed=17).requires_grad_(True)
    t = _logits(6, vt, seed=18)
    width = max(vs, vt)
    ref = (sorted_probs(s, 1.5, width) - sorted_probs(t, 1.5, width)).abs().sum(-1)
    g_ref = torch.autograd.grad(ref.sum(), s)[0]
    for chunk in (None, 4):
        got = uld_distance(s, t, 1.5, chunk_rows=chunk)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(got.sum(), s)[0], g_ref, rtol=1e-6, atol=1e-7)
    idx = torch.tensor([5, 4, 3, 2, 1, 0])
    torch.testing.assert_close(uld_distance(s, t.flip(0), 1.5, teacher_index=idx, chunk_rows=4), ref,
                               rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ autocast


def test_soft_dtw_costs_are_fp32_under_cpu_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 9, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    ref = cosine_cost(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cosine_cost(x, y)
        assert torch.bmm(x, y.transpose(1, 2)).dtype == torch.bfloat16  # autocast is on for everything else
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_rowwise_recomputes_under_the_forward_autocast_state():
    """Blocks recomputed in the backward pass run under the forward's autocast (a bf16 head product), so the
    gradients equal those of the plain computation under the same autocast."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(10, 8, generator=g).requires_grad_(True)
    w = torch.randn(30, 8, generator=g)
    t = torch.randn(10, 30, generator=g)
    out = {}
    for chunk in (None, 3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = head_divergence("fkl", h, w, t, 1.0, chunk_rows=chunk)
        out[chunk] = (v, torch.autograd.grad(v, h)[0])
    torch.testing.assert_close(out[3][0], out[None][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[3][1], out[None][1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ methods on the tiny pair


def _cfg(name):
    return from_dict(get_method(name).Config, {}, name)


def _counting(monkeypatch):
    calls = []
    orig = chunked._RowChunked.apply

    def apply(*a):
        calls.append(1)
        return orig(*a)

    monkeypatch.setattr(chunked._RowChunked, "apply", apply)
    return calls


@pytest.mark.parametrize("name", ["uld", "mined", "dskd_cma", "dskd_eta", "cma_ga", "dwakd"])
def test_methods_chunked_with_teacher_rows_and_cached_pairs_equal_the_plain_path(name, tiny_pair, dolly_small,
                                                                                tmp_path, monkeypatch):
    """A method's loss and every gradient (student and method parameters): blocks of 3 rows, the
    teacher's logits at its response positions only (``LMOutput.rows``) and the token alignments cached with the
    data = one block, the full teacher logits and the alignment computed in the loss."""
    torch.manual_seed(0)
    student = load_model(tiny_pair / "student_base")
    teacher = load_model(tiny_pair / "teacher").requires_grad_(False)
    stok, ttok = load_tokenizer(tiny_pair / "student_base"), load_tokenizer(tiny_pair / "teacher")
    method = get_method(name)(_cfg(name), student, teacher, stok, ttok)
    method.on_step(0.3)
    cfg = TrainConfig(batch_size=3, max_len=96, max_prompt_len=48, select_by="last", progress=False)
    tr = Trainer(method, student, teacher, stok, ttok, cfg, tmp_path / "run")
    items = tr.make_items([dolly_small[i] for i in (9, 12, 33)])
    batch = tr.batch(items)
    if hasattr(method, "token_pairs"):
        assert "pairs" in batch
        b, s, t = method.align(batch["student"]["labels"], batch["teacher"]["labels"])
        assert [(k, p, q) for k, ps in enumerate(batch["pairs"]) for p, q in ps] == list(zip(b, s, t))
    else:
        assert "pairs" not in batch
    assert method.teacher_logit_rows == "response"
    params = [p for p in [*student.parameters(), *method.parameters()] if p.requires_grad]

    def run(b, rows: bool, elements: int):
        monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", elements)
        tb = b["teacher"]
        with torch.no_grad():
            t_out = forward(teacher, tb["input_ids"], tb["attention_mask"], hidden=True, embeds=True,
                            rows=response_positions(tb["labels"]) if rows else None)
        sb = b["student"]
        s_out = forward(student, sb["input_ids"], sb["attention_mask"], hidden=True, embeds=True)
        torch.manual_seed(1)
        loss, logs = method.loss(b, s_out, t_out)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss, logs, grads, t_out

    plain = {k: v for k, v in batch.items() if k != "pairs"}
    loss0, logs0, g0, t_full = run(plain, False, 1 << 40)
    calls = _counting(monkeypatch)
    loss1, logs1, g1, t_rows = run(batch, True, 3 * len(ttok))
    assert calls, "nothing was chunked"
    assert t_rows.logits.dim() == 2 and t_rows.logits.size(0) == int(t_rows.rows.sum()) < t_full.logits[..., 0].numel()
    torch.testing.assert_close(t_rows.logits, t_full.logits[t_rows.rows], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-5)
    for k in logs0:
        torch.testing.assert_close(logs1[k], logs0[k], rtol=1e-5, atol=1e-5)
    for p, a, b in zip(params, g0, g1):
        if a is None:
            assert b is None or torch.all(b == 0)
            continue
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def _mined_term_by_term(m, batch, s_out, t_out):
    """MinED's loss as it was written before the one-pass rows: the CE, the aligned KL on the gathered teacher
    rows and the one-hot CE of the other response positions, each over all its rows at once."""
    sl, z, tau, a = batch["student"]["labels"], s_out.logits, m.cfg.temperature, m.cfg.kd_rate
    b, sp, tp = aligned_tensors(batch, m.align, z.device)
    ce = F.cross_entropy(z[:, :-1].reshape(-1, z.size(-1)), sl[:, 1:].reshape(-1), reduction="sum")
    rows = t_out.logits_index(b, tp)[:, m.s2t.clamp_min(0)].masked_fill(m.s2t < 0, -1e5)
    target = torch.log_softmax(rows / tau, dim=-1)
    kd_aligned = kl_from_logprobs(target, z[b, sp], torch.ones_like(b, dtype=torch.bool), tau)
    other = response_mask(sl)
    other[b, sp] = False
    kd_onehot = F.cross_entropy(z[other] / tau, sl[:, 1:][other[:, :-1]], reduction="sum")
    return (1 - a) * ce + a * (kd_aligned + kd_onehot), ce, kd_aligned + kd_onehot


def _eta_whole_student_space(m, batch, s_out, t_out):
    """DSKD-ETA's KD part as it was written before the blockwise student space: z_t2s [N, V_s] formed whole,
    ``divergence`` on the copied student rows under the agreement mask, plain (one-call) terms."""
    cfg, (student, teacher) = m.cfg, m._models
    b, sp, tp = aligned_tensors(batch, m.align, s_out.logits.device)
    w_s, w_t = lm_head_weight(student).detach(), lm_head_weight(teacher).detach()
    t_rows = t_out.logits_index(b, tp)
    h_t2s = m.t2s(t_out.hidden[b, tp].detach().to(m.t2s.weight.dtype))
    z_t2s = (h_t2s.to(w_s.dtype) @ w_s.T).detach()
    y_hat = m.label_map[t_rows.argmax(-1)]
    ce_t2s = F.cross_entropy((h_t2s @ w_s.T).float(), y_hat, ignore_index=-100, reduction="sum")
    agree = (z_t2s.argmax(-1) == y_hat) & (y_hat != -100)
    kd_stu = divergence(cfg.divergence, s_out.logits[b, sp], z_t2s, agree, cfg.temperature, chunk_rows=None)
    z_s2t = (s_out.hidden[b, sp].float() @ s2t_matrix(w_s, m.overlap_student, m.teacher_pinv)) @ w_t.T
    kd_tea = divergence(cfg.divergence, z_s2t, t_rows, torch.ones_like(b, dtype=torch.bool), cfg.temperature,
                        chunk_rows=None)
    return cfg.kd_rate * (ce_t2s + kd_stu + kd_tea), {"ce_t2s": ce_t2s, "kd_stu": kd_stu, "kd_tea": kd_tea,
                                                      "t2s_agree": agree.sum().float()}


def _leaf_outputs(model, b, dtype, grad=True):
    with torch.no_grad():
        out = forward(model, b["input_ids"], b["attention_mask"], hidden=True)
    return LMOutput(logits=out.logits.to(dtype).requires_grad_(grad), hidden=out.hidden.to(dtype).requires_grad_(grad))


@pytest.mark.parametrize("rows", [1, 4, None])
def test_mined_one_pass_equals_the_term_by_term_loss(rows, tiny_pair, dolly_small, tmp_path, monkeypatch):
    """MinED's one pass over the response rows (CE and KD per row, the student rows read from the logits block
    by block; blocks of 1 row, a few rows, one block) = the term-by-term loss: value, logs and the gradient of the
    float64 student logits."""
    student = load_model(tiny_pair / "student_base")
    teacher = load_model(tiny_pair / "teacher").requires_grad_(False)
    stok, ttok = load_tokenizer(tiny_pair / "student_base"), load_tokenizer(tiny_pair / "teacher")
    m = get_method("mined")(_cfg("mined"), student, teacher, stok, ttok)
    tr = Trainer(m, student, teacher, stok, ttok, TrainConfig(batch_size=3, max_len=96, max_prompt_len=48,
                                                               select_by="last", progress=False), tmp_path / "run")
    batch = tr.batch(tr.make_items([dolly_small[i] for i in (9, 12, 33)]))
    s_out = _leaf_outputs(student, batch["student"], torch.float64)
    t_out = _leaf_outputs(teacher, batch["teacher"], torch.float64, grad=False)
    ref, ce, kd = _mined_term_by_term(m, batch, s_out, t_out)
    (g_ref,) = torch.autograd.grad(ref, s_out.logits)
    width = chunked.BLOCK_TENSORS * s_out.logits.size(-1)
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", rows * width if rows else 1 << 40)
    loss, logs = m.loss(batch, s_out, t_out)
    assert 0 < logs["aligned_ratio"].item() < int((batch["student"]["labels"][:, 1:] != -100).sum())
    assert loss.dtype == torch.float64  # float64 logits: float64 arithmetic throughout
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logs["ce"], ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logs["kd"], kd, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(loss, s_out.logits)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("div", ["fkl", "js"])
def test_eta_blockwise_student_space_equals_the_whole_z_t2s(div, tiny_pair, dolly_small, tmp_path, monkeypatch):
    """DSKD-ETA's KD part with z_t2s formed block by block (its argmax, L_ce_t2s, the agreeing rows of L_kd_stu
    read from the student logits block by block) and L_kd_tea in blocks = the whole-z_t2s formulation: value,
    logs and gradients (float64 student logits and hidden states, the t2s projector). The teacher logits are
    edited so that about half of the pairs agree (random heads seldom do)."""
    student = load_model(tiny_pair / "student_base")
    teacher = load_model(tiny_pair / "teacher").requires_grad_(False)
    stok, ttok = load_tokenizer(tiny_pair / "student_base"), load_tokenizer(tiny_pair / "teacher")
    m = get_method("dskd_eta")(_cfg("dskd_eta") if div == "fkl" else from_dict(get_method("dskd_eta").Config,
                                                                             {"divergence": div}, "dskd_eta"),
                               student, teacher, stok, ttok)
    tr = Trainer(m, student, teacher, stok, ttok, TrainConfig(batch_size=3, max_len=96, max_prompt_len=48,
                                                               select_by="last", progress=False), tmp_path / "run")
    batch = tr.batch(tr.make_items([dolly_small[i] for i in (9, 12, 33)]))
    s_out = _leaf_outputs(student, batch["student"], torch.float64)
    t_out = _leaf_outputs(teacher, batch["teacher"], torch.float64, grad=False)
    b, _, tp = aligned_tensors(batch, m.align, "cpu")
    with torch.no_grad():  # make every other pair agree: the teacher's argmax → the argmax of z_t2s
        z_arg = (m.t2s(t_out.hidden[b, tp].float()) @ lm_head_weight(student).T).argmax(-1)
        to_teacher = {int(s): t for t, s in enumerate(m.label_map.tolist()) if s >= 0}
        for k in range(0, b.numel(), 2):
            if int(z_arg[k]) in to_teacher:
                t_out.logits[b[k], tp[k], to_teacher[int(z_arg[k])]] = t_out.logits[b[k], tp[k]].max() + 5.0
    ref, ref_logs = _eta_whole_student_space(m, batch, s_out, t_out)
    wrt = (s_out.logits, s_out.hidden, m.t2s.weight)
    g_ref = torch.autograd.grad(ref, wrt, retain_graph=True)
    assert 0 < ref_logs["t2s_agree"].item() < b.numel()
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 3 * len(ttok))
    kd, logs = m.kd_loss(batch, s_out, t_out)
    torch.testing.assert_close(kd, ref, rtol=1e-5, atol=1e-5)
    for k, v in ref_logs.items():
        torch.testing.assert_close(logs[k], v.to(logs[k].dtype), rtol=1e-5, atol=1e-5)
    for a, g in zip(g_ref, torch.autograd.grad(kd, wrt)):
        torch.testing.assert_close(g, a.to(g.dtype), rtol=1e-4, atol=1e-6)
    # the whole loss: the CE and L_kd_stu in one pass over the response rows = token_ce + the KD part above
    ce_ref = token_ce(s_out.logits, batch["student"]["labels"], chunk_rows=None)
    full_ref = (1.0 - m.cfg.kd_rate) * ce_ref + ref
    loss, logs = m.loss(batch, s_out, t_out)
    torch.testing.assert_close(logs["ce"], ce_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, full_ref, rtol=1e-5, atol=1e-5)
    for k, v in ref_logs.items():
        torch.testing.assert_close(logs[k], v.to(logs[k].dtype), rtol=1e-5, atol=1e-5)
    for a, g in zip(torch.autograd.grad(full_ref, wrt), torch.autograd.grad(loss, wrt)):
        torch.testing.assert_close(g, a.to(g.dtype), rtol=1e-4, atol=1e-6)


def test_lmoutput_rows_reads_like_the_full_layout():
    logits = _logits(2, 4, 5)
    rows = torch.tensor([[False, True, True, False], [True, True, False, False]])
    full, part = LMOutput(logits=logits), LMOutput(logits=logits[rows], rows=rows)
    assert part.logits_at(rows) is part.logits
    sub = rows.clone()
    sub[0, 1] = False
    assert torch.equal(part.logits_at(sub), full.logits_at(sub))
    b, p = torch.tensor([1, 0, 1]), torch.tensor([0, 2, 1])
    assert torch.equal(part.logits_index(b, p), full.logits_index(b, p))
    flat, idx = part.row_index(b, p)
    assert torch.equal(flat[idx], logits[b, p])
    with pytest.raises(IndexError, match="rows"):
        part.logits_index(torch.tensor([0]), torch.tensor([0]))


# ------------------------------------------------------------------------------------------ position limit


def test_max_len_beyond_a_model_position_limit_fails_at_the_start_of_the_run(tiny_pair, dolly_small, tmp_path):
    """The tiny pair has 256 positions: max_len 300 is refused before any step, naming the key and the model."""
    from dwakd.methods.sft import SFT, SFTConfig

    student = load_model(tiny_pair / "student_base")
    tok = load_tokenizer(tiny_pair / "student_base")
    cfg = TrainConfig(batch_size=2, max_len=300, max_prompt_len=48, select_by="last", progress=False, max_steps=1)
    tr = Trainer(SFT(SFTConfig(), student), student, None, tok, None, cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"train\.max_len: 300 .*student model's position limit of 256"):
        tr.fit(dolly_small[:4])
    assert not (tmp_path / "run" / "train_log.jsonl").exists()
    check_position_limits(256, {"student": student, "teacher": None})  # at the limit: fine
