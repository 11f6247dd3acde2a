"""Soft-DTW (dwakd.losses.softdtw): values, gradients, padding, numerics, divergence, band."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from dwakd.losses.softdtw import cosine_cost, soft_dtw, soft_dtw_divergence

F64 = torch.float64


def ref_soft_dtw(cost: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-cell Python loop, float64, differentiated by autograd (the reference)."""
    n, m = cost.shape
    inf = torch.tensor(math.inf, dtype=cost.dtype)
    r = [[inf] * (m + 1) for _ in range(n + 1)]
    r[0][0] = torch.tensor(0.0, dtype=cost.dtype)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            z = torch.stack([r[i - 1][j], r[i][j - 1], r[i - 1][j - 1]])
            r[i][j] = cost[i - 1, j - 1] - gamma * torch.logsumexp(-z / gamma, 0)
    return r[n][m]


def naive_fp32_grad(cost: torch.Tensor, gamma: float) -> torch.Tensor:
    """The usual backward, E_ij = Σ E_next · exp((R_next − R_ij − C_next)/γ), in fp32 (anti-diagonal loop).

    Only here to show that it loses accuracy at large |R|/γ where ours does not."""
    c = cost.float()
    n, m = c.shape
    r = torch.full((n + 2, m + 2), math.inf)
    r[0, 0] = 0.0
    for k in range(2, n + m + 1):
        i = torch.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        z = -torch.stack([r[i - 1, j], r[i, j - 1], r[i - 1, j - 1]]) / gamma
        r[i, j] = c[i - 1, j - 1] - gamma * torch.logsumexp(z, 0)
    d = torch.zeros(n + 2, m + 2)
    d[1:n + 1, 1:m + 1] = c
    e = torch.zeros(n + 2, m + 2)
    e[n + 1, m + 1] = 1.0
    r[:, m + 1] = -math.inf
    r[n + 1, :] = -math.inf
    r[n + 1, m + 1] = r[n, m]
    for k in range(n + m, 1, -1):
        i = torch.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        a = torch.exp((r[i + 1, j] - r[i, j] - d[i + 1, j]) / gamma)
        b = torch.exp((r[i, j + 1] - r[i, j] - d[i, j + 1]) / gamma)
        cc = torch.exp((r[i + 1, j + 1] - r[i, j] - d[i + 1, j + 1]) / gamma)
        e[i, j] = e[i + 1, j] * a + e[i, j + 1] * b + e[i + 1, j + 1] * cc
    return e[1:n + 1, 1:m + 1]


def cos_costs(b: int, n: int, m: int, d: int = 16, dtype=F64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=F64)
    y = torch.randn(b, m, d, generator=g, dtype=F64)
    return cosine_cost(x, y).to(dtype)


def grad_of(cost: torch.Tensor, lx, ly, gamma: float, weights: torch.Tensor | None = None):
    c = cost.detach().clone().requires_grad_(True)
    v = soft_dtw(c, torch.as_tensor(lx), torch.as_tensor(ly), gamma)
    w = torch.ones_like(v) if weights is None else weights.to(v.dtype)
    (g,) = torch.autograd.grad((v * w).sum(), c)
    return v.detach(), g


def flush_is_on() -> bool:
    return torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item() == 0.0


# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 7), (3, 7, 4), (2, 1, 6), (2, 6, 1), (1, 9, 9), (4, 8, 3)])
@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_values_and_gradients_match_float64_reference(shape, gamma):
    b, n, m = shape
    g = torch.Generator().manual_seed(n * 100 + m)
    cost = torch.rand(b, n, m, generator=g, dtype=F64) * 2 - 0.2  # a few negative costs too
    lx = torch.randint(1, n + 1, (b,), generator=g)
    ly = torch.randint(1, m + 1, (b,), generator=g)
    lx[0], ly[0] = n, m  # one unpadded sample
    w = torch.randn(b, generator=g, dtype=F64)
    v, gr = grad_of(cost, lx, ly, gamma, w)
    assert v.dtype == F64 and gr.dtype == F64
    for s in range(b):
        cs = cost[s, : lx[s], : ly[s]].clone().requires_grad_(True)
        rv = ref_soft_dtw(cs, gamma)
        (rg,) = torch.autograd.grad(rv, cs)
        assert abs(float(v[s]) - float(rv.detach())) < 1e-10
        torch.testing.assert_close(gr[s, : lx[s], : ly[s]], w[s] * rg, atol=1e-10, rtol=0)
        pad = torch.ones(n, m, dtype=torch.bool)
        pad[: lx[s], : ly[s]] = False
        assert torch.count_nonzero(gr[s][pad]) == 0


@pytest.mark.parametrize("shape,lx,ly", [((2, 4, 3), [4, 2], [3, 3]), ((2, 3, 5), [3, 1], [5, 2]),
                                         ((1, 1, 4), [1], [4])])
def test_gradcheck_float64(shape, lx, ly):
    cost = torch.rand(*shape, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: soft_dtw(c, torch.tensor(lx), torch.tensor(ly), 0.5), (cost,))


@pytest.mark.parametrize("gamma,n", [(0.01, 200), (0.1, 120), (1.0, 120)])
def test_fp32_gradient_accurate_against_float64(gamma, n):
    cost = cos_costs(2, n, n + 7, seed=3)  # costs ~1: |R|/γ reaches ~2e4 at γ = 0.01
    v64, g64 = grad_of(cost, [n, n - 9], [n + 7, n], gamma)
    v32, g32 = grad_of(cost.float(), [n, n - 9], [n + 7, n], gamma)
    assert v32.dtype == torch.float32 and g32.dtype == torch.float32
    assert ((v32.double() - v64).abs() / v64.abs()).max() < 1e-5
    for s in range(2):
        rel = (g32[s].double() - g64[s]).norm() / g64[s].norm()
        assert rel < 1e-3, (gamma, s, float(rel))


def test_naive_backward_fails_where_ours_does_not():
    n, gamma = 200, 0.01
    cost = cos_costs(1, n, n, seed=0)
    v64, g64 = grad_of(cost, [n], [n], gamma)
    assert float(v64) / gamma > 1e4  # the regime where exp((R_next − R − C_next)/γ) cancels in fp32
    _, g32 = grad_of(cost.float(), [n], [n], gamma)
    ours = float((g32[0].double() - g64[0]).norm() / g64[0].norm())
    naive = float((naive_fp32_grad(cost[0], gamma).double() - g64[0]).norm() / g64[0].norm())
    assert ours < 1e-3 < naive, (ours, naive)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("fill", [1e30, math.inf, math.nan, -1e30])
def test_padded_batch_equals_per_sample_and_padding_gets_zero_gradient(dtype, fill):
    lens = [(9, 4), (1, 11), (13, 13), (5, 1), (2, 2), (13, 6)]
    b, n, m = len(lens), 13, 13
    cost = cos_costs(b, n, m, dtype=dtype, seed=5)
    lx = torch.tensor([a for a, _ in lens])
    ly = torch.tensor([c for _, c in lens])
    padded = cost.clone()
    for s, (a, c) in enumerate(lens):
        padded[s, a:, :] = fill
        padded[s, :, c:] = fill
    w = torch.linspace(0.5, 2.0, b, dtype=F64)
    v, g = grad_of(padded, lx, ly, 0.1, w)
    assert torch.isfinite(v).all() and torch.isfinite(g).all()
    tol = 1e-12 if dtype == F64 else 1e-5
    for s, (a, c) in enumerate(lens):
        vs, gs = grad_of(cost[s:s + 1, :a, :c].contiguous(), [a], [c], 0.1)
        assert abs(float(v[s]) - float(vs[0])) <= tol * max(1.0, abs(float(vs[0])))
        torch.testing.assert_close(g[s, :a, :c], float(w[s]) * gs[0], atol=tol, rtol=tol)
        pad = torch.ones(n, m, dtype=torch.bool)
        pad[:a, :c] = False
        assert torch.count_nonzero(g[s][pad]) == 0  # exactly zero


def test_very_different_lengths_and_transposed_shapes():
    # N > M takes the transposed path; one long sample among short ones (the stacked cross/self use case)
    cost = cos_costs(4, 40, 9, seed=7)
    lx, ly = [40, 3, 1, 17], [9, 2, 9, 1]
    v, g = grad_of(cost, lx, ly, 0.3)
    for s in range(4):
        vt, gt = grad_of(cost[s:s + 1, : lx[s], : ly[s]].transpose(1, 2).contiguous(), [ly[s]], [lx[s]], 0.3)
        assert abs(float(v[s]) - float(vt[0])) < 1e-10  # s(C) = s(Cᵀ)
        torch.testing.assert_close(g[s, : lx[s], : ly[s]], gt[0].T, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cost(dtype):
    cost = cos_costs(2, 6, 5, dtype=dtype, seed=2)
    v, g = grad_of(cost, [6, 4], [5, 5], 0.1)
    assert v.dtype == torch.float32 and g.dtype == dtype
    v32, g32 = grad_of(cost.float(), [6, 4], [5, 5], 0.1)
    assert torch.equal(v, v32)
    torch.testing.assert_close(g.float(), g32, atol=1e-2, rtol=1e-2)


def test_argument_checks():
    c = torch.rand(2, 3, 4)
    with pytest.raises(ValueError):
        soft_dtw(c, torch.tensor([3, 4]), torch.tensor([4, 4]), 0.1)  # len_x > N
    with pytest.raises(ValueError):
        soft_dtw(c, torch.tensor([3, 0]), torch.tensor([4, 4]), 0.1)  # empty sequence
    with pytest.raises(ValueError):
        soft_dtw(c, torch.tensor([3, 3]), torch.tensor([4, 4]), 0.0)
    with pytest.raises(ValueError):
        soft_dtw(c[0], torch.tensor([3]), torch.tensor([4]), 0.1)
    assert soft_dtw(c, torch.tensor([3, 3]), torch.tensor([4, 4]), torch.tensor(0.1)).shape == (2,)


def test_thread_count_and_denormal_mode_are_restored():
    c = torch.rand(1, 5, 5, requires_grad=True)
    threads, flush = torch.get_num_threads(), flush_is_on()
    try:
        torch.set_num_threads(2)
        soft_dtw(c, torch.tensor([5]), torch.tensor([5]), 0.01).sum().backward()
        assert torch.get_num_threads() == 2 and flush_is_on() == flush
        with pytest.raises(ValueError):
            soft_dtw(c, torch.tensor([6]), torch.tensor([5]), 0.01)
        assert torch.get_num_threads() == 2 and flush_is_on() == flush
    finally:
        torch.set_num_threads(threads)


def test_retain_graph_second_backward():
    cost = cos_costs(3, 6, 8, seed=11).requires_grad_(True)
    lx, ly = torch.tensor([6, 2, 5]), torch.tensor([8, 8, 3])
    v = soft_dtw(cost, lx, ly, 0.2)
    (g1,) = torch.autograd.grad((v * torch.tensor([1.0, -2.0, 0.5], dtype=F64)).sum(), cost, retain_graph=True)
    (g2,) = torch.autograd.grad(v.sum(), cost)
    _, ref = grad_of(cost, lx, ly, 0.2)
    torch.testing.assert_close(g2, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(g1, ref * torch.tensor([1.0, -2.0, 0.5], dtype=F64)[:, None, None], atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------------------
def test_hand_worked_3x2():
    # γ = 1, C = [[1, 2], [3, 4], [5, 6]]: first column/row are plain sums, then soft-mins by hand
    c = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], dtype=F64)
    sm = lambda *a: -math.log(sum(math.exp(-v) for v in a))  # noqa: E731
    r11 = 1.0
    r12 = 2.0 + r11
    r21 = 3.0 + r11
    r31 = 5.0 + r21
    r22 = 4.0 + sm(r12, r21, r11)
    r32 = 6.0 + sm(r22, r31, r21)
    assert abs(float(soft_dtw(c, torch.tensor([3]), torch.tensor([2]), 1.0)) - r32) < 1e-12
    assert abs(float(soft_dtw(c, torch.tensor([2]), torch.tensor([2]), 1.0)) - r22) < 1e-12


def test_band_penalty_hand_worked_2x2():
    # x = y = (e1, e2): cosine cost [[0, 1], [1, 0]]; band = λ·1[|j − c_i| > w_i] with c_i = i, w_i = 0.5, λ = 1
    x = torch.eye(2, dtype=F64)[None]
    band = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=F64)
    for gamma in (1.0, 0.3):
        # R11 = 0, R12 = R21 = c12 + R11, R22 = 0 + min^γ(R12, R21, R11)
        s_band = -gamma * math.log(2 * math.exp(-2.0 / gamma) + 1.0)
        s_self = -gamma * math.log(2 * math.exp(-1.0 / gamma) + 1.0)
        lens = torch.tensor([2])
        d = soft_dtw_divergence(x, x.clone(), lens, lens, gamma, band=band)
        assert abs(float(d) - (s_band - s_self)) < 1e-12
        assert float(d) > 0
        assert float(soft_dtw_divergence(x, x.clone(), lens, lens, gamma)) == 0.0


def test_divergence_self_is_exactly_zero():
    g = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, F64):
        x = torch.randn(3, 17, 8, generator=g).to(dtype).requires_grad_(True)
        lx = torch.tensor([17, 5, 1])
        d = soft_dtw_divergence(x, x, lx, lx, 0.1)
        assert torch.equal(d, torch.zeros_like(d))
        d.sum().backward()
        assert torch.isfinite(x.grad).all()
        d2 = soft_dtw_divergence(x, x.detach().clone(), lx, lx, 0.1)  # a distinct, equal tensor
        assert torch.equal(d2, torch.zeros_like(d2))


def test_divergence_matches_its_definition_and_gradients_are_finite():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 7, 5, generator=g, dtype=F64, requires_grad=True)
    y = torch.randn(2, 9, 5, generator=g, dtype=F64, requires_grad=True)
    lx, ly = torch.tensor([7, 4]), torch.tensor([9, 6])
    band = (torch.rand(2, 7, 9, generator=g, dtype=F64) > 0.6).to(F64)
    d = soft_dtw_divergence(x, y, lx, ly, 0.2, band=band)
    sxy = soft_dtw(cosine_cost(x, y) + band, lx, ly, 0.2)
    sxx = soft_dtw(cosine_cost(x, x), lx, lx, 0.2)
    syy = soft_dtw(cosine_cost(y, y), ly, ly, 0.2)
    torch.testing.assert_close(d, sxy - 0.5 * (sxx + syy), atol=1e-12, rtol=0)
    d.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    xs, ys = x.detach().requires_grad_(), y.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: soft_dtw_divergence(a, b, lx, ly, 0.2, band=band), (xs, ys))


def test_divergence_bf16():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, 4, generator=g).bfloat16().requires_grad_(True)
    y = torch.randn(2, 5, 4, generator=g).bfloat16().requires_grad_(True)
    d = soft_dtw_divergence(x, y, torch.tensor([6, 3]), torch.tensor([5, 5]), 0.1)
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    d.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_cosine_cost():
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(2, 4, 3, generator=g, dtype=F64), torch.randn(2, 5, 3, generator=g, dtype=F64)
    ref = 1 - F.cosine_similarity(x[:, :, None, :], y[:, None, :, :], dim=-1)  # B×N×M×d, test only
    torch.testing.assert_close(cosine_cost(x, y), ref, atol=1e-12, rtol=0)
    assert cosine_cost(x.bfloat16(), y.bfloat16()).dtype == torch.float32


def test_long_sequence_has_no_length_limit():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(1, 2000, 4, generator=g)
    y = torch.randn(1, 2000, 4, generator=g)
    c = cosine_cost(x, y).requires_grad_(True)
    t = time.perf_counter()
    v = soft_dtw(c, torch.tensor([2000]), torch.tensor([2000]), 0.1)
    v.sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(c.grad).all()
    assert 2000 <= float(c.grad.sum()) <= 3999  # E is the expected alignment: Σ = expected path length
    assert time.perf_counter() - t < 10.0


def test_benchmark_script_runs(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "softdtw.py"
    spec = importlib.util.spec_from_file_location("bench_softdtw", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "b.json"
        assert mod.main(["--sizes", "2x9x7x4", "--impls", "ours", "--repeat", "1", "--threads", "1", "--no-memory",
                         "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["impl"] == "ours" and rows[0]["vs_ours"] == 1.0 and rows[0]["grad_rel_err"] < 1e-4
