"""Row-blocked evaluation of per-row functions over large vocabularies, recomputed in the backward pass.

A loss term over ``N`` positions × ``V`` vocabulary entries (a KL between two distributions over 151,936 tokens, a
sorted-probability distance, an entropy) builds several ``[N, V]`` fp32 intermediates — the log-softmaxes, their
exponentials, differences, products — and autograd keeps most of them until the backward pass: at ``N ≈ 2,000``
and ``V ≈ 152k`` each is 1.2 GB. ``rowwise`` evaluates such a per-row function on blocks of rows instead:

* forward: block by block under ``no_grad``; only the per-row results are kept (and references to the inputs,
  which the caller holds anyway);
* backward: block by block again, recomputing the block with gradients enabled and back-propagating it at once,
  so at most one block's intermediates exist at any time; the input gradients are written into one buffer each.

Same values as calling the function on all rows at once (the per-row arithmetic is identical; only a sum over
rows taken afterwards may associate differently), same gradients; the price is one more evaluation of the
function per block in the backward pass. ``tests/test_divergences.py`` compares both, in float64 as well.

The function must be row-separable (row r of its output depends on row r of each row input only, plus the
shared inputs) and deterministic (no dropout, no sampling): it is evaluated twice. Autocast: the backward
recomputation runs under the autocast state of the forward call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: elements of one ``[rows, V]`` block (fp32: 64 MiB); ``rows_for`` turns it into rows for a vocabulary width
CHUNK_ELEMENTS = 1 << 24


def rows_for(width: int, elements: int | None = None) -> int:
    """Rows per block so that a ``[rows, width]`` block holds about ``elements`` (default ``CHUNK_ELEMENTS``)
    entries, at least 1 row."""
    return max(1, (CHUNK_ELEMENTS if elements is None else elements) // max(int(width), 1))


def block_rows(chunk_rows: int | str | None, width: int) -> int | None:
    """Rows per block for rows of ``width`` entries: ``rows_for(width)`` for "auto", a positive integer as
    given, None for one plain call (``rowwise`` also makes one plain call when a block holds every row)."""
    if chunk_rows is None:
        return None
    if chunk_rows == "auto":
        return rows_for(width)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be 'auto', None or a positive integer, got {chunk_rows!r}")
    return chunk_rows


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    try:
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        on = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not on:
        return False, None
    try:
        return True, torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return True, torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


class _RowChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, chunk, n_rows, *tensors):
        rows, shared = tensors[:n_rows], tensors[n_rows:]
        n = rows[0].size(0)
        ctx.fn, ctx.chunk, ctx.n_rows = fn, chunk, n_rows
        ctx.device_type = rows[0].device.type
        ctx.autocast = _autocast_state(ctx.device_type)
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            outs = [fn(*(r[a:a + chunk] for r in rows), *shared) for a in range(0, n, chunk)]
        if not outs:  # no rows: the function's output shape for an empty block
            with torch.no_grad():
                return fn(*(r[:0] for r in rows), *shared)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, grad_out):
        tensors = ctx.saved_tensors
        fn, chunk, n_rows = ctx.fn, ctx.chunk, ctx.n_rows
        need = ctx.needs_input_grad[3:]
        rows, shared = tensors[:n_rows], tensors[n_rows:]
        n = rows[0].size(0)
        grads = [torch.zeros_like(t) if nd else None for t, nd in zip(tensors, need)]
        on, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=dtype, enabled=on):
            shared_in = [s.detach().requires_grad_(nd) for s, nd in zip(shared, need[n_rows:])]
            for a in range(0, n, chunk):
                blk = [r[a:a + chunk].detach().requires_grad_(nd) for r, nd in zip(rows, need[:n_rows])]
                inputs = [x for x, nd in zip([*blk, *shared_in], need) if nd]
                if not inputs:
                    break
                out = fn(*blk, *shared_in)
                got = torch.autograd.grad(out, inputs, grad_out[a:a + chunk], allow_unused=True)
                it = iter(got)
                for k, nd in enumerate(need):
                    if not nd:
                        continue
                    g = next(it)
                    if g is None:
                        continue
                    if k < n_rows:
                        grads[k][a:a + chunk] = g
                    else:
                        grads[k] += g
        return (None, None, None, *grads)


def rowwise(fn: Callable[..., torch.Tensor], rows: Sequence[torch.Tensor], shared: Sequence[torch.Tensor] = (),
            chunk_rows: int | None = None) -> torch.Tensor:
    """``fn(*rows, *shared)`` evaluated on blocks of ``chunk_rows`` rows and recomputed in the backward pass
    (module docstring). ``rows``: tensors with the same first dimension N, split into blocks; ``shared``: tensors
    passed whole to every block (e.g. an LM head; their gradients are summed over the blocks). ``fn`` returns a
    tensor whose first dimension is the block's rows (e.g. one value per row). ``chunk_rows`` None or ≥ N: one
    block, i.e. the plain call (no recomputation)."""
    rows, shared = list(rows), list(shared)
    if not rows:
        raise ValueError("rowwise: needs at least one row tensor")
    n = rows[0].size(0)
    if any(r.size(0) != n for r in rows):
        raise ValueError(f"rowwise: the row tensors differ in their first dimension: {[r.size(0) for r in rows]}")
    if chunk_rows is None or chunk_rows >= n:
        return fn(*rows, *shared)
    if chunk_rows < 1:
        raise ValueError(f"rowwise: chunk_rows must be >= 1, got {chunk_rows}")
    return _RowChunked.apply(fn, int(chunk_rows), len(rows), *rows, *shared)
