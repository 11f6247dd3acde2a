"""Soft-DTW (Cuturi & Blondel 2017) for padded batches, with a numerically stable custom backward.

Public API
----------
``soft_dtw(cost, len_x, len_y, gamma) -> [B]``
    ``R_ij = C_ij + min^γ(R_{i−1,j}, R_{i,j−1}, R_{i−1,j−1})``, ``min^γ(a) = −γ log Σ exp(−a/γ)``,
    ``R_00 = 0``, ``R_i0 = R_0j = +inf``; returns ``R[len_x[b], len_y[b]]``, which uses only
    ``cost[b, :len_x[b], :len_y[b]]``. Differentiable w.r.t. ``cost``; padded cells get exactly zero
    gradient (whatever they hold: inf, NaN and huge values are replaced before the recursion).
``cosine_cost(x, y) -> [B, N, M]``
    ``1 − cos(x_i, y_j)`` by one batched matmul of L2-normalised features (fp32 for half inputs).
``soft_dtw_divergence(x, y, len_x, len_y, gamma, band=None) -> [B]``
    ``D(x, y) = s(x, y) − ½[s(x, x) + s(y, y)]`` on cosine costs; ``band`` (already scaled) is added to
    the cross cost only, the self terms are unbanded, so ``D(x, x) = 0`` exactly.

Design (speed and accuracy against pysdtw and tslearn: ``benchmarks/softdtw.py``)
------
* Skewed, diagonal-major layout ``q[b, k, i] = cell (i, k − i)`` of shape ``[B, N+M+1, min(N,M)+1]``
  (the problem is transposed when ``N > M``): every anti-diagonal is a contiguous row and its three
  predecessor sets are the slices ``q[k−1, i−1]``, ``q[k−1, i]``, ``q[k−2, i−1]``. The cost is scattered in
  by one strided copy; all per-diagonal views are made up front per run of diagonals (``unbind``), so the
  loop does no indexing and no allocation.
* The recursion runs in base-2 units, ``Q = −R/(γ ln 2)``: ``Q_k = −C_k/(γ ln 2) + logaddexp2(logaddexp2(
  Q_up, Q_left), Q_diag)`` — three in-place ops per anti-diagonal (``exp2`` rather than ``exp`` in the
  backward: PyTorch parallelises ``exp`` from 2k elements on).
* Re-centring: every ``_RECENTRE`` diagonals the two rows the recursion reads next are shifted by their
  per-sample maximum (the shift kept in float64), so the stored values stay small and fp32 rounding does not
  grow with ``|R|/γ``: gradient error vs float64 ~1e-5 instead of ~3e-3 at 1024×1024, γ = 0.1.
* Per anti-diagonal only the cells that exist for some sample are touched (rounded to ``_BLOCK`` columns),
  and samples are sorted by ``len_x + len_y`` so that those still running form a batch prefix: a padded
  batch of very different lengths (cross and self problems stacked) costs about what its longest member
  costs. Padded cells are set to a far value (whatever they held: inf, NaN, huge) and get exactly 0 gradient.
* Backward (custom ``autograd.Function``, no graph through the recursion): ``E = ∂R_final/∂C`` pushed back
  over windows of anti-diagonals; each window's transition weights are computed at once as the local
  soft-argmin of each cell's three predecessors, ``exp2(Q_p − max) / Σ``, from Q — normalised, hence stable
  for any ``|R|/γ`` (unlike ``exp((R_next − R − C_next)/γ)``, which cancels in fp32) — then three
  ``addcmul_`` per diagonal. E overwrites Q inside the same buffer (peak memory: one skewed buffer); it is
  computed for a unit gradient per sample and scaled by ``grad_out``, so ``retain_graph`` works.
* CPU: runs single-threaded with denormals flushed (see ``_CpuMode``): the ops are one anti-diagonal each,
  too small to split, and OpenMP barriers cost milliseconds on a shared machine; results therefore do not
  depend on the thread count. CUDA: the same PyTorch code runs on GPU tensors (no Triton kernel here).
* fp32 internally for fp32/bf16/fp16 inputs (float64 stays float64); the gradient is returned in the input
  dtype, the value in ``promote(input, float32)``. The backward is not itself differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["soft_dtw", "soft_dtw_divergence", "cosine_cost"]


def cosine_cost(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 − cos(x_i, y_j)``: ``x [B, N, d]``, ``y [B, M, d]`` → ``[B, N, M]`` (one ``bmm``).

    Half-precision inputs are upcast to fp32 first and the product is taken with autocast off (the cost is what
    Soft-DTW accumulates: under bf16 autocast a cell would be off by up to ~5e-3), like the CMA's scores."""
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"cosine_cost: expected [B, N, d] and [B, M, d], got {tuple(x.shape)}, {tuple(y.shape)}")
    with torch.autocast(x.device.type, enabled=False):
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if y.dtype in (torch.float16, torch.bfloat16):
            y = y.float()
        xn = F.normalize(x, dim=-1, eps=eps)
        yn = F.normalize(y, dim=-1, eps=eps)
        return 1.0 - torch.bmm(xn, yn.transpose(1, 2))


_BLOCK = 64  # column granularity of the per-diagonal cell range (coarser: fewer view sets, more wasted cells)
_WINDOW = 64  # anti-diagonals whose backward transition weights are computed in one vectorised step
# Q = −R/(γ ln 2) of the boundary, of cells outside the matrix and of padded cells: finite (so max-shifts never
# meet inf − inf) but so far below any real Q that exp2(_FAR − Q) is exactly 0 and logaddexp2(_FAR, Q) == Q.
# Chains of such cells add up _FAR per diagonal, which stays finite in fp32 for 3e18 diagonals.
_FAR = -1e20
_LOG2E = 1.4426950408889634  # log2(e)
_RECENTRE = 8  # anti-diagonals between two re-centrings of the forward's working rows
_GRAIN = 32768  # PyTorch's intra-op parallel grain (at::internal::GRAIN_SIZE)


def _segments(len_x: list[int], len_y: list[int], n: int) -> list[tuple[int, int, int, int, int]]:
    """Runs of anti-diagonals sharing (samples still running, first column, last column).

    ``len_x``/``len_y`` are sorted by ``len_x + len_y`` descending (so running samples are a prefix);
    ``n`` is the padded inner size. Returns ``(k_first, k_last, nb, c0, c1)`` with columns (= i) inclusive,
    ``1 <= c0 <= c1 <= n``: every cell (i, k − i) with i ≤ len_x[b], k − i ≤ len_y[b] of a running sample
    lies inside, rounded out to multiples of ``_BLOCK`` columns."""
    ends = [a + b for a, b in zip(len_x, len_y)]
    pref_n, pref_m = [], []
    cn = cm = 0
    for a, b in zip(len_x, len_y):
        cn, cm = max(cn, a), max(cm, b)
        pref_n.append(cn)
        pref_m.append(cm)
    segs: list[list[int]] = []
    nb = len(ends)
    for k in range(2, ends[0] + 1):
        while ends[nb - 1] < k:
            nb -= 1
        lo = max(1, k - pref_m[nb - 1])
        hi = min(pref_n[nb - 1], k - 1)
        c0 = ((lo - 1) // _BLOCK) * _BLOCK + 1
        c1 = min(n, -(-hi // _BLOCK) * _BLOCK)
        if segs and segs[-1][2:] == [nb, c0, c1]:
            segs[-1][1] = k
        else:
            segs.append([k, k, nb, c0, c1])
    return [tuple(s) for s in segs]


class _CpuMode:
    """On CPU, for the duration: flush denormals to zero (FTZ/DAZ) on this thread and run ops on this thread
    only (``torch.set_num_threads(1)``); both restored on exit. No-op on other devices.

    * ``logaddexp`` and friends take a slow path on denormal intermediates (e.g. ``log1p(e^-50)``), which
      Soft-DTW meets all the time at small γ (2–3× slower); flushing changes results by < 1e-38. The previous
      mode is read with a one-element probe (a no-op where the platform cannot flush).
    * The recursion is a chain of small ops (one anti-diagonal each): too small to split, while every OpenMP
      region costs a barrier — ~10 ms when the cores are shared with other jobs (measured: a 4k-element
      ``exp`` took 11 ms with 2 threads on a busy 2-core machine). Single-threaded, the results also do not
      depend on the thread count."""

    def __init__(self, device: torch.device):
        self.cpu = device.type == "cpu"
        self.flush = False
        self.threads = 1

    def __enter__(self):
        if self.cpu:
            if torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item() != 0.0:
                self.flush = torch.set_flush_denormal(True)
            self.threads = torch.get_num_threads()
            if self.threads > 1:
                torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.cpu:
            if self.threads > 1:
                torch.set_num_threads(self.threads)
            if self.flush:
                torch.set_flush_denormal(False)
        return False


def _skew_view(buf: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """``[B, n, m]`` view of the cells (i=1..n, j=1..m) inside a skewed buffer ``[B, n+m+1, n+1]``."""
    b, kk, w = buf.shape
    return buf.as_strided((b, n, m), (kk * w, w + 1, w), buf.storage_offset() + 2 * w + 1)


def _preds(t: torch.Tensor, ka: int, kb: int, nb: int, c0: int, c1: int):
    """Views of the three predecessors of the cells on diagonals ka..kb, columns c0..c1:
    (i−1, j) and (i, j−1) on diagonal k−1, (i−1, j−1) on diagonal k−2."""
    return (t[:nb, ka - 1:kb, c0 - 1:c1], t[:nb, ka - 1:kb, c0:c1 + 1], t[:nb, ka - 2:kb - 1, c0 - 1:c1])


class _SoftDTW(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, len_x, len_y, gamma):  # noqa: D401 - autograd signature
        with _CpuMode(cost.device):
            return _SoftDTW._forward(ctx, cost, len_x, len_y, gamma)

    @staticmethod
    def _forward(ctx, cost, len_x, len_y, gamma):
        b, n, m = cost.shape
        in_dtype = cost.dtype
        work = torch.float64 if in_dtype == torch.float64 else torch.float32
        dev = cost.device
        lx = [int(v) for v in len_x.tolist()]
        ly = [int(v) for v in len_y.tolist()]
        if len(lx) != b or len(ly) != b:
            raise ValueError(f"soft_dtw: len_x/len_y must have {b} entries, got {len(lx)}, {len(ly)}")
        if b == 0:
            raise ValueError("soft_dtw: empty batch")
        if min(lx) < 1 or min(ly) < 1 or max(lx) > n or max(ly) > m:
            raise ValueError(f"soft_dtw: lengths must lie in [1, N={n}] and [1, M={m}]")
        transposed = n > m
        if transposed:  # keep the diagonal (inner) dimension the shorter one
            cost = cost.transpose(1, 2)
            n, m, lx, ly = m, n, ly, lx
        order = sorted(range(b), key=lambda s: -(lx[s] + ly[s]))
        identity = order == list(range(b))
        slx = [lx[s] for s in order]
        sly = [ly[s] for s in order]
        segs = _segments(slx, sly, n)

        # Skewed buffer q[b, k, i] = cell (i, k − i), holding Q − off[b, k]. Everything starts at _FAR: the
        # R = +inf boundaries, cells outside the matrix and padded cells (whatever the cost holds there), which
        # all stay ≈ _FAR; the real cells get −C·scale, which the recursion turns into Q in place.
        scale = _LOG2E / gamma  # base 2: Q = −R/(γ ln 2)
        q = torch.full((b, n + m + 1, n + 1), _FAR, dtype=work, device=dev)
        cells = _skew_view(q, n, m)
        src = cost if identity else cost.index_select(0, torch.tensor(order, device=dev))
        if all(a == n for a in slx) and all(c == m for c in sly):
            torch.mul(src.to(work), -scale, out=cells)
        else:
            tx = torch.tensor(slx, device=dev)
            ty = torch.tensor(sly, device=dev)
            valid = (torch.arange(n, device=dev)[None, :, None] < tx[:, None, None]) & (
                torch.arange(m, device=dev)[None, None, :] < ty[:, None, None])
            cells.copy_(torch.where(valid, src.to(work) * (-scale), _FAR))
        q[:, 0, 0] = 0.0
        # Re-centring: every _RECENTRE anti-diagonals (and at each run start) the two rows the recursion reads
        # next are shifted by their maximum (per sample), so stored values stay small and fp32 rounding does not
        # grow with |R|/γ (without it the gradient error reaches ~3e-3 at 1024×1024, γ = 0.1). off[b, k]
        # (float64) is the shift of row k: Q = q + off; rows k−2, k−1 always share it when shifted.
        off = torch.zeros((b, n + m + 1), dtype=torch.float64, device=dev)

        scratch = torch.empty((b, n), dtype=work, device=dev)
        lae = torch.logaddexp2
        for ka, kb, nb, c0, c1 in segs:
            tmp = scratch[:nb, : c1 - c0 + 1]
            dst = q[:nb, ka:kb + 1, c0:c1 + 1].unbind(1)
            pa, pb, pc = (v.unbind(1) for v in _preds(q, ka, kb, nb, c0, c1))
            for t in range(kb - ka + 1):
                if t % _RECENTRE == 0 and ka + t >= 4:
                    k = ka + t
                    two = q[:nb, k - 2:k]
                    shift = two.amax(dim=(1, 2))
                    two.sub_(shift[:, None, None])
                    o = off[:nb, k - 2:min(k + _RECENTRE, kb + 1)]
                    o.copy_((off[:nb, k - 1] + shift.to(torch.float64))[:, None].expand_as(o))
                lae(pa[t], pb[t], out=tmp)
                lae(tmp, pc[t], out=tmp)
                dst[t].add_(tmp)

        ki = torch.tensor([a + c for a, c in zip(slx, sly)], device=dev)
        ii = torch.tensor(slx, device=dev)
        bi = torch.arange(b, device=dev)
        val = (q[bi, ki, ii].to(torch.float64) + off[bi, ki]) * (-1.0 / scale)
        inv = None
        if not identity:
            inv = [0] * b
            for pos, s in enumerate(order):
                inv[s] = pos
            val = val.index_select(0, torch.tensor(inv, device=dev))
        ctx.q, ctx.off = q, off  # internal buffers (not inputs/outputs); q is turned into E by the backward
        ctx.meta = (n, m, in_dtype, transposed, order, inv, segs, slx, sly)
        ctx.spent = False
        return val.to(torch.promote_types(in_dtype, torch.float32))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        with _CpuMode(grad_out.device):
            return _SoftDTW._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, off = ctx.q, ctx.off
        n, m, in_dtype, transposed, order, inv, segs, slx, sly = ctx.meta
        work, dev = q.dtype, q.device
        g = grad_out.to(work)
        if inv is not None:
            g = g.index_select(0, torch.tensor(order, device=dev))
        if not ctx.spent:  # the first backward turns q into E (unit seeds); later ones (retain_graph) reuse it
            _SoftDTW._unit_gradient(q, off, segs, slx, sly)
            ctx.spent = True
        grad = torch.mul(_skew_view(q, n, m), g[:, None, None])  # samples are independent: E is linear in g
        if inv is not None:
            grad = grad.index_select(0, torch.tensor(inv, device=dev))
        if transposed:
            grad = grad.transpose(1, 2)
        return grad.to(in_dtype, memory_format=torch.contiguous_format), None, None, None

    @staticmethod
    def _unit_gradient(q: torch.Tensor, off: torch.Tensor, segs, slx: list[int], sly: list[int]) -> None:
        """Overwrite q (Q − off, skewed) with E = ∂R_final/∂C for a unit gradient of every sample.

        E is pushed back from the final cells over windows of anti-diagonals. Per window: the transition
        weights of all its diagonals at once, from Q: the local soft-argmin of each cell's three predecessors,
        exp(Q_p − max) / Σ — normalised, hence stable for any |R|/γ; then a push loop of three ``addcmul_`` per
        diagonal. E is accumulated in q itself: the weights of the next window are computed before the rows
        that window j pushes into (ka−2..kb) stop holding Q, so no second full-size buffer is needed.
        Windows are capped at PyTorch's intra-op grain (small buffers; single-threaded even outside _CpuMode)."""
        b, _, w1 = q.shape
        work = q.dtype
        floor = -1000.0 if work == torch.float64 else -120.0  # exp2() is slow below its underflow threshold
        ends = [a + c for a, c in zip(slx, sly)]  # descending
        windows = []
        for ka_seg, kb_seg, nb, c0, c1 in reversed(segs):
            span = max(1, min(_WINDOW, _GRAIN // max(nb * (c1 - c0 + 2), b * w1)))
            kb = kb_seg
            while kb >= ka_seg:
                ka = max(ka_seg, kb - span + 1)
                windows.append((ka, kb, nb, c0, c1))
                kb = ka - 1

        def weights(ka, kb, nb, c0, c1):
            qa, qb, qc = _preds(q, ka, kb, nb, c0, c1)
            dq = (off[:nb, ka - 2:kb - 1] - off[:nb, ka - 1:kb]).to(work)[:, :, None]
            wc = torch.add(qc, dq)  # (i−1, j−1) in the frame of row k−1
            mx = torch.maximum(qa, qb)
            torch.maximum(mx, wc, out=mx)
            wa = torch.sub(qa, mx).clamp_(min=floor).exp2_()
            wb = torch.sub(qb, mx).clamp_(min=floor).exp2_()
            torch.sub(wc, mx, out=wc).clamp_(min=floor).exp2_()
            torch.add(wa, wb, out=mx).add_(wc).reciprocal_()  # 1 / Σ (Σ ≥ 1)
            return wa.mul_(mx).unbind(1), wb.mul_(mx).unbind(1), wc.mul_(mx).unbind(1)

        kmax = windows[0][1]
        nxt = 0  # next sample (in `ends` order) whose final cell is still to be seeded
        w_next = weights(*windows[0])
        q[:, kmax - 1:].zero_()
        for j, (ka, kb, nb, c0, c1) in enumerate(windows):
            wa, wb, wc = w_next
            if j + 1 < len(windows):
                w_next = weights(*windows[j + 1])  # reads Q rows up to ka − 2: before they are zeroed
            q[:, max(ka - 2, 0):kb - 1].zero_()  # rows kb − 1, kb already hold E (from window j − 1)
            while nxt < b and ends[nxt] >= ka:  # seed the final cells in this window
                q[nxt, ends[nxt], slx[nxt]] += 1.0
                nxt += 1
            src = q[:nb, ka:kb + 1, c0:c1 + 1].unbind(1)
            da, db, dc = (v.unbind(1) for v in _preds(q, ka, kb, nb, c0, c1))
            for t in range(kb - ka, -1, -1):
                s = src[t]
                da[t].addcmul_(wa[t], s)
                db[t].addcmul_(wb[t], s)
                dc[t].addcmul_(wc[t], s)


def soft_dtw(cost: torch.Tensor, len_x: torch.Tensor, len_y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Soft-DTW value ``R[len_x[b], len_y[b]]`` of each padded cost matrix ``cost [B, N, M]`` → ``[B]``.

    ``gamma > 0`` (a Python float or a 0-d tensor). Costs must be finite inside each sample's
    ``len_x × len_y`` block; anything in the padding is ignored and gets exactly zero gradient."""
    if cost.dim() != 3:
        raise ValueError(f"soft_dtw: cost must be [B, N, M], got {tuple(cost.shape)}")
    gamma = float(gamma)
    if not gamma > 0:
        raise ValueError(f"soft_dtw: gamma must be > 0, got {gamma}")
    if not cost.is_floating_point():
        cost = cost.float()
    return _SoftDTW.apply(cost, torch.as_tensor(len_x), torch.as_tensor(len_y), gamma)


def soft_dtw_divergence(x: torch.Tensor, y: torch.Tensor, len_x: torch.Tensor, len_y: torch.Tensor,
                        gamma: float, band: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised Soft-DTW divergence ``s(x, y) − ½[s(x, x) + s(y, y)]`` on cosine costs → ``[B]``.

    ``x [B, N, d]``, ``y [B, M, d]``; ``band [B, N, M]`` (optional, already scaled) is added to the cross
    cost only. The three problems go through one padded ``soft_dtw`` call (cross, x-self, y-self), so the
    cross term of ``(x, x)`` runs the same code on the same inputs as the self terms: ``D(x, x) = 0``
    exactly (when ``y is x`` and no band the cross term *is* the self term)."""
    b, n, _ = x.shape
    m = y.shape[1]
    len_x = torch.as_tensor(len_x, device=x.device)
    len_y = torch.as_tensor(len_y, device=x.device)
    cxx = cosine_cost(x, x)
    if y is x and band is None:
        s = soft_dtw(cxx, len_x, len_x, gamma)
        return s - 0.5 * (s + s)
    cxy = cosine_cost(x, y)
    if band is not None:
        cxy = cxy + band.to(cxy.dtype)
    cyy = cosine_cost(y, y)
    p = max(n, m)
    stacked = torch.cat([F.pad(c, (0, p - c.shape[2], 0, p - c.shape[1])) for c in (cxy, cxx, cyy)], 0)
    s = soft_dtw(stacked, torch.cat([len_x, len_x, len_y]), torch.cat([len_y, len_x, len_y]), gamma)
    sxy, sxx, syy = s[:b], s[b:2 * b], s[2 * b:]
    return sxy - 0.5 * (sxx + syy)
