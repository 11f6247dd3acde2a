"""Row-blocked evaluation of per-row functions over large vocabularies, recomputed in the backward pass.

A loss term over ``N`` positions × ``V`` vocabulary entries (a KL between two distributions over 151,936 tokens, a
sorted-probability distance, an entropy) builds several ``[N, V]`` fp32 intermediates — the log-softmaxes, their
exponentials, differences, products — and autograd keeps most of them until the backward pass: at ``N ≈ 2,000``
and ``V ≈ 152k`` each is 1.2 GB. ``rowwise`` evaluates such a per-row function on blocks of rows instead:

* forward: block by block under ``no_grad``; only the per-row results are kept (and references to the inputs,
  which the caller holds anyway);
* backward: block by block again, recomputing the block with gradients enabled and back-propagating it at once,
  so at most one block's intermediates exist at any time; the input gradients are written into one buffer each.

Rows read through an index (``gather_from``: the response rows of a ``[B·L, V]`` logits tensor, say) are gathered
block by block too, and their gradient is added into one buffer of the source's shape: neither the ``[N, V]``
copy of the rows nor its gradient, nor the indexing's own ``[B·L, V]`` gradient, is formed.

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


#: the most ``[rows, V]``-sized tensors that one block of the per-row loss functions holds at once (allocator peak
#: of a block, forward and backward recomputation, over rows × V × 4 bytes; torch 2.13 CPU, V = 50,257 / 151,936):
#: ``token_ce`` 5.0, ``head_ce`` 3.1, ``head_divergence`` (fkl, teacher index) 7.3, DSKD-ETA's L_kd_stu rows 9.3,
#: MinED's CE + KD rows 8.1–11.3. ``rows_for(V, tensors=BLOCK_TENSORS)`` keeps such a block near ``CHUNK_ELEMENTS``
#: entries in all (MinED, DSKD-ETA)
BLOCK_TENSORS = 12

#: the same for the no-gradient scans over rows (argmax, max-probability, entropy): the block's rows or logits and
#: up to two temporaries of their size (``exp``, ``p·log p``)
SCAN_TENSORS = 3


def rows_for(width: int, elements: int | None = None, *, tensors: int = 1) -> int:
    """Rows per block so that ``tensors`` tensors of ``[rows, width]`` hold about ``elements`` (default
    ``CHUNK_ELEMENTS``) entries in all, at least 1 row."""
    return max(1, (CHUNK_ELEMENTS if elements is None else elements) // max(int(width) * int(tensors), 1))


def block_rows(chunk_rows: int | str | None, width: int, *, tensors: int = 1) -> int | None:
    """Rows per block for rows of ``width`` entries: ``rows_for(width, tensors=tensors)`` for "auto", a positive
    integer as given, None for one plain call (``rowwise`` also makes one plain call when a block holds every
    row)."""
    if chunk_rows is None:
        return None
    if chunk_rows == "auto":
        return rows_for(width, tensors=tensors)
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


def _block(rows, source, a: int, b: int) -> list[torch.Tensor]:
    """Rows ``a:b`` of every row tensor; with a ``source``, the first row tensor is an index into it and is
    replaced by the source rows it names (a block-sized copy)."""
    blk = [r[a:b] for r in rows]
    if source is not None:
        blk[0] = source[blk[0]]
    return blk


class _RowChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, chunk, n_rows, gather, *tensors):
        source = tensors[0] if gather else None
        tensors_ = tensors[1:] if gather else tensors
        rows, shared = tensors_[:n_rows], tensors_[n_rows:]
        n = rows[0].size(0)
        ctx.fn, ctx.chunk, ctx.n_rows, ctx.gather = fn, chunk, n_rows, gather
        ctx.device_type = rows[0].device.type
        ctx.autocast = _autocast_state(ctx.device_type)
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            outs = [fn(*_block(rows, source, a, a + chunk), *shared) for a in range(0, n, chunk)]
        if not outs:  # no rows: the function's output shape for an empty block
            with torch.no_grad():
                return fn(*_block(rows, source, 0, 0), *shared)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, grad_out):
        tensors = ctx.saved_tensors
        fn, chunk, n_rows, gather = ctx.fn, ctx.chunk, ctx.n_rows, ctx.gather
        need = list(ctx.needs_input_grad[4:])
        if tensors[int(gather)].size(0) == 0:  # no rows: no gradient, and no buffer for it
            return (None,) * (4 + len(tensors))
        grads = [torch.zeros_like(t) if nd else None for t, nd in zip(tensors, need)]
        if gather:  # the source's gradient comes in through the index (row tensor 0), which has none itself
            source, tensors, need_source, need = tensors[0], tensors[1:], need[0], need[1:]
            need[0] = need_source
        rows, shared = tensors[:n_rows], tensors[n_rows:]
        n = rows[0].size(0)
        on, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=dtype, enabled=on):
            shared_in = [s.detach().requires_grad_(nd) for s, nd in zip(shared, need[n_rows:])]
            for a in range(0, n, chunk):
                blk = [r.detach().requires_grad_(nd) for r, nd in
                       zip(_block(rows, source if gather else None, a, a + chunk), need[:n_rows])]
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
                    if gather and k == 0:  # into the source rows the block read
                        grads[0].index_add_(0, rows[0][a:a + chunk], g)
                    elif k < n_rows:
                        grads[k + gather][a:a + chunk] = g
                    else:
                        grads[k + gather] += g
        return (None, None, None, None, *grads)


def rowwise(fn: Callable[..., torch.Tensor], rows: Sequence[torch.Tensor], shared: Sequence[torch.Tensor] = (),
            chunk_rows: int | None = None, *, gather_from: torch.Tensor | None = None) -> torch.Tensor:
    """``fn(*rows, *shared)`` evaluated on blocks of ``chunk_rows`` rows and recomputed in the backward pass
    (module docstring). ``rows``: tensors with the same first dimension N, split into blocks; ``shared``: tensors
    passed whole to every block (e.g. an LM head; their gradients are summed over the blocks). ``fn`` returns a
    tensor whose first dimension is the block's rows (e.g. one value per row). ``chunk_rows`` None or ≥ N: one
    block, i.e. the plain call (no recomputation).

    ``gather_from [M, ...]``: ``rows[0]`` is then a long index ``[N]`` into its first dimension and ``fn`` receives
    ``gather_from[rows[0]]`` in its place, gathered block by block: the ``[N, ...]`` copy is never formed, and the
    gradient reaches ``gather_from`` through one buffer of its shape (``index_add_``, so a repeated index sums),
    instead of a copy of the rows, a gradient buffer of the rows and the indexing's own ``[M, ...]`` gradient (two
    of them). So that this holds for any N, only ``chunk_rows=None`` makes the plain call here; a block that holds
    every row (or none: then no gradient at all) still goes through the recomputing path."""
    rows, shared = list(rows), list(shared)
    if not rows:
        raise ValueError("rowwise: needs at least one row tensor")
    n = rows[0].size(0)
    if any(r.size(0) != n for r in rows):
        raise ValueError(f"rowwise: the row tensors differ in their first dimension: {[r.size(0) for r in rows]}")
    if gather_from is not None and (rows[0].dim() != 1 or rows[0].dtype != torch.long):
        raise ValueError(f"rowwise: with gather_from, rows[0] must be a 1-D long index, got {rows[0].dtype} "
                         f"{tuple(rows[0].shape)}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"rowwise: chunk_rows must be >= 1, got {chunk_rows}")
    if gather_from is not None and chunk_rows is not None:
        return _RowChunked.apply(fn, int(chunk_rows), len(rows), True, gather_from, *rows, *shared)
    if chunk_rows is None or chunk_rows >= n:
        if gather_from is not None:
            rows[0] = gather_from[rows[0]]
        return fn(*rows, *shared)
    return _RowChunked.apply(fn, int(chunk_rows), len(rows), False, *rows, *shared)
