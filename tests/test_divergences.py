"""Mathematical properties of the teacher–student divergences in ``dwakd.losses.divergences``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dwakd.losses.divergences import (
    DIVERGENCES,
    adaptive_kl,
    divergence,
    forward_kl,
    js_divergence,
    kl_from_logprobs,
    reverse_kl,
    skewed_forward_kl,
    skewed_reverse_kl,
)

NAMES = sorted(DIVERGENCES)


def _inputs(seed: int, B: int = 2, L: int = 5, V: int = 11, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, V, generator=g) * scale
    t = torch.randn(B, L, V, generator=g) * scale
    mask = torch.rand(B, L, generator=g) > 0.3
    mask[0, 0] = True
    return s, t, mask


def _kl64(p_logits: torch.Tensor, q_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-position KL(p ‖ q) in float64 from the textbook formula."""
    p = torch.softmax(p_logits.double() / tau, -1)
    q = torch.softmax(q_logits.double() / tau, -1)
    return (p * (p.log() - q.log())).sum(-1)


def _ref64(name: str, s: torch.Tensor, t: torch.Tensor, tau: float, lam: float = 0.1, mu: float = 0.5):
    """Float64 per-position reference for every divergence, written from docs/methods.md "Vanilla KD"."""
    ps, pt = torch.softmax(s.double() / tau, -1), torch.softmax(t.double() / tau, -1)

    def kl(p, q):
        return (p * (p.log() - q.log())).sum(-1)

    if name == "fkl":
        return kl(pt, ps)
    if name == "rkl":
        return kl(ps, pt)
    if name == "js":
        m = (ps + pt) / 2
        return 0.5 * kl(pt, m) + 0.5 * kl(ps, m)
    if name == "skl":
        return kl(pt, lam * pt + (1 - lam) * ps)
    if name == "srkl":
        return kl(ps, (1 - lam) * pt + lam * ps)
    if name == "akl":
        out = torch.empty(pt.shape[:-1], dtype=torch.float64)
        for idx in itertools.product(*(range(n) for n in pt.shape[:-1])):
            order = pt[idx].argsort()  # ascending
            cum = pt[idx][order].cumsum(0)
            tail = order[cum < mu]
            head = order[cum >= mu]
            gap = (pt[idx] - ps[idx]).abs()
            gh, gt = gap[head].sum(), gap[tail].sum()
            out[idx] = gh / (gh + gt) * kl(pt[idx], ps[idx]) + gt / (gh + gt) * kl(ps[idx], pt[idx])
        return out
    raise AssertionError(name)


@pytest.mark.parametrize("name", NAMES)
def test_identical_distributions_give_zero(name):
    s, _, mask = _inputs(0)
    val = divergence(name, s, s.clone(), mask, temperature=2.0)
    assert val.dtype == torch.float32 and val.dim() == 0
    assert abs(val.item()) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_shift_invariance_and_zero_for_equal_softmax(name):
    """Adding a constant per position to the logits does not change the distribution."""
    s, _, mask = _inputs(1)
    assert abs(divergence(name, s, s + 7.5, mask).item()) < 1e-4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_matches_float64_reference(name, tau):
    s, t, mask = _inputs(2)
    per_pos = _ref64(name, s, t, tau)
    want = per_pos[mask].sum().item()
    got = divergence(name, s, t, mask, temperature=tau)
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    none = divergence(name, s, t, mask, temperature=tau, reduction="none")
    assert none.shape == mask.shape
    assert torch.all(none[~mask] == 0)
    torch.testing.assert_close(none[mask].double(), per_pos[mask], rtol=1e-4, atol=1e-5)


def test_forward_and_reverse_kl_against_hand_formula():
    s, t, mask = _inputs(3, V=7)
    for tau in (1.0, 2.0):
        assert forward_kl(s, t, mask, tau).item() == pytest.approx(_kl64(t, s, tau)[mask].sum().item(), rel=1e-5)
        assert reverse_kl(s, t, mask, tau).item() == pytest.approx(_kl64(s, t, tau)[mask].sum().item(), rel=1e-5)


def test_two_point_closed_form():
    """KL between Bernoulli(0.8) and Bernoulli(0.5), by hand."""
    t = torch.tensor([[[math.log(0.8), math.log(0.2)]]])
    s = torch.zeros(1, 1, 2)
    mask = torch.ones(1, 1, dtype=torch.bool)
    fkl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    rkl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert forward_kl(s, t, mask).item() == pytest.approx(fkl, rel=1e-6)
    assert reverse_kl(s, t, mask).item() == pytest.approx(rkl, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0), tau=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
       name=st.sampled_from(NAMES))
def test_non_negative(seed, scale, tau, name):
    s, t, mask = _inputs(seed, scale=scale)
    per_pos = divergence(name, s, t, mask, temperature=tau, reduction="none")
    assert torch.isfinite(per_pos).all()
    assert (per_pos >= -1e-5).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0))
def test_js_symmetric_and_bounded(seed, scale):
    s, t, mask = _inputs(seed, scale=scale)
    a = js_divergence(s, t, mask, reduction="none")
    b = js_divergence(t, s, mask, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (a <= math.log(2) + 1e-5).all()


def test_skewed_kls_reduce_to_plain_kls_at_lambda_zero():
    s, t, mask = _inputs(4)
    assert skewed_forward_kl(s, t, mask, lam=0.0).item() == pytest.approx(forward_kl(s, t, mask).item(), rel=1e-6)
    assert skewed_reverse_kl(s, t, mask, lam=0.0).item() == pytest.approx(reverse_kl(s, t, mask).item(), rel=1e-6)
    # skewing towards the target itself shrinks the divergence
    assert skewed_forward_kl(s, t, mask, lam=0.5).item() < forward_kl(s, t, mask).item()


def test_adaptive_kl_between_fkl_and_rkl():
    s, t, mask = _inputs(5)
    a = adaptive_kl(s, t, mask, reduction="none")
    f = forward_kl(s, t, mask, reduction="none")
    r = reverse_kl(s, t, mask, reduction="none")
    lo, hi = torch.minimum(f, r), torch.maximum(f, r)
    assert ((a >= lo - 1e-5) & (a <= hi + 1e-5)).all()


@pytest.mark.parametrize("name", NAMES)
def test_masked_positions_zero_value_and_zero_gradient(name):
    s, t, mask = _inputs(6)
    mask = torch.tensor([[True, True, False, False, True], [False, True, True, False, False]])
    garbage_s, garbage_t = s.clone(), t.clone()
    for x in (garbage_s, garbage_t):
        x[~mask] = 0.0
        x[0, 2] = float("-inf")
        x[0, 3] = 1e30
        x[1, 0, ::2] = float("nan")
        x[1, 3] = float("inf")
        x[1, 4, 0] = -1e38
    garbage_s.requires_grad_(True)
    garbage_t.requires_grad_(True)
    val = divergence(name, garbage_s, garbage_t, mask, temperature=2.0)
    clean = divergence(name, s, t, mask, temperature=2.0)
    assert val.item() == pytest.approx(clean.item(), rel=1e-6)
    val.backward()
    for x in (garbage_s, garbage_t):
        assert torch.isfinite(x.grad).all()
        assert torch.all(x.grad[~mask] == 0)
        assert x.grad[mask].abs().sum() > 0


def test_mask_accepts_int_and_all_false_gives_zero():
    s, t, mask = _inputs(7)
    assert forward_kl(s, t, mask.long()).item() == pytest.approx(forward_kl(s, t, mask).item())
    assert forward_kl(s, t, torch.zeros_like(mask)).item() == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_neg_inf_vocab_entries_in_unmasked_positions(name):
    """A −inf logit on both sides (a padded vocabulary entry) is a zero-probability entry: finite value and
    gradient, and the same value as without that entry."""
    s, t, mask = _inputs(8, V=9)
    s_pad = torch.cat([s, torch.full_like(s[..., :2], float("-inf"))], -1).requires_grad_(True)
    t_pad = torch.cat([t, torch.full_like(t[..., :2], float("-inf"))], -1)
    val = divergence(name, s_pad, t_pad, mask)
    assert val.item() == pytest.approx(divergence(name, s, t, mask).item(), rel=1e-5, abs=1e-6)
    val.backward()
    assert torch.isfinite(s_pad.grad).all()
    assert torch.all(s_pad.grad[..., -2:] == 0)


def test_temperature_scales_logits():
    s, t, mask = _inputs(9)
    # dividing both logit sets by τ is the same as pre-dividing them
    assert forward_kl(s, t, mask, 2.0).item() == pytest.approx(forward_kl(s / 2, t / 2, mask).item(), rel=1e-6)
    assert forward_kl(s, t, mask, 2.0).item() != pytest.approx(forward_kl(s, t, mask, 1.0).item(), rel=1e-3)
    # a very high temperature flattens both distributions to uniform: no τ² rescaling brings it back
    assert forward_kl(s, t, mask, 1000.0).item() < 1e-3


def test_kl_from_logprobs_matches_forward_kl():
    s, t, mask = _inputs(10)
    tau = 2.0
    target = torch.log_softmax(t / tau, -1)
    assert kl_from_logprobs(target, s, mask, tau).item() == pytest.approx(forward_kl(s, t, mask, tau).item(), rel=1e-6)
    # a one-hot target with −inf elsewhere: KL = −log p_s(gold)
    gold = torch.zeros_like(mask, dtype=torch.long)
    onehot = torch.full_like(s, float("-inf")).scatter(-1, gold.unsqueeze(-1), 0.0)
    s_req = s.clone().requires_grad_(True)
    val = kl_from_logprobs(onehot, s_req, mask)
    want = -torch.log_softmax(s, -1)[..., 0][mask].sum()
    assert val.item() == pytest.approx(want.item(), rel=1e-6)
    val.backward()
    assert torch.isfinite(s_req.grad).all()


def test_half_precision_inputs_computed_in_fp32():
    s, t, mask = _inputs(11)
    val = forward_kl(s.bfloat16(), t.bfloat16(), mask)
    assert val.dtype == torch.float32
    assert val.item() == pytest.approx(forward_kl(s.bfloat16().float(), t.bfloat16().float(), mask).item(), rel=1e-6)


GOLDEN = {"fkl": 3.161016, "rkl": 2.780002, "js": 0.641042, "skl": 2.19385, "srkl": 2.088089, "akl": 3.005756}


@pytest.mark.parametrize("name", NAMES)
def test_golden_values(name):
    """Fixed inputs, fixed numbers at τ = 2 (regression guard; they agree with the float64 reference)."""
    n = torch.arange(2 * 3 * 6, dtype=torch.float32)
    s = (3 * torch.sin(n)).reshape(2, 3, 6)
    t = (2 * torch.cos(1.7 * n) + n / 20).reshape(2, 3, 6)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert divergence(name, s, t, mask, temperature=2.0).item() == pytest.approx(GOLDEN[name], rel=1e-5)
    assert _ref64(name, s, t, 2.0)[mask].sum().item() == pytest.approx(GOLDEN[name], rel=1e-5)


def test_dispatcher_errors_and_shapes():
    s, t, mask = _inputs(13)
    with pytest.raises(KeyError, match="available divergences: fkl, rkl, js, skl, srkl, akl"):
        divergence("kl", s, t, mask)
    with pytest.raises(ValueError, match="same shape"):
        forward_kl(s, t[..., :-1], mask)
    with pytest.raises(ValueError, match="mask"):
        forward_kl(s, t, mask[:, :-1])
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(s, t, mask, 0.0)
    with pytest.raises(ValueError, match="reduction"):
        forward_kl(s, t, mask, reduction="mean")
    with pytest.raises(ValueError, match="mixing weight"):
        skewed_forward_kl(s, t, mask, lam=1.5)
    assert divergence("skl", s, t, mask, lam=0.2).item() == pytest.approx(
        skewed_forward_kl(s, t, mask, lam=0.2).item())
