"""The hash-grid encoding as two fused Triton kernels (CUDA), used by `FastHashEncoding` when Triton is there.

The torch version (ednerf_ns.accel.hashgrid) runs about twenty kernels per encoding and writes every intermediate -
corner coordinates, hashes, indices, weights, gathered features, all of them [samples, levels, 8] - to memory and
reads it back; its backward scatters through a sorted index. Here one kernel does the whole forward for a block
of samples and one level (coordinates, hashes, trilinear weights, gathers, weighted sum) and writes only the
output, and one kernel does the backward by recomputing corners and weights and adding `weight * grad` into
the table gradient atomically. The function and its parameters are nerfstudio's (the same hash, corners, offsets
and weights), so checkpoints are interchangeable and results agree to float rounding.

Only the gradient with respect to the table is provided: nothing in ED-NeRF differentiates the encoding with
respect to sample positions, and `FastHashEncoding` uses the torch path whenever the positions require a gradient.

Tests run these kernels on the CPU with Triton's interpreter (TRITON_INTERPRET=1, which must be set before this
module is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Instant-NGP's primes as nerfstudio uses them, reduced to int32: a power-of-two table size keeps only the low bits
# of the product, and those are the same for the 32-bit wrapped product.
_P1 = 2654435761 - (1 << 32)
_P2 = 805459861
_BLOCK = 128
_RUN = 8  # consecutive rows (samples along a ray) per lane in the backward pass


@triton.jit
def _corner_hashes(scaled, mask, prime):
    """Hashed floor and ceil coordinates of one axis (int32), and the ceil corner's weight."""
    lo = tl.floor(scaled)
    hi = tl.ceil(scaled)
    h_lo = (lo.to(tl.int32) * prime) & mask
    h_hi = (hi.to(tl.int32) * prime) & mask
    return h_lo, h_hi, scaled - lo


@triton.jit
def _gather(table_ptr, index, feats, valid, FEATURES: tl.constexpr):
    """Rows `index` of the table, [BLOCK, FEATURES] float32."""
    values = tl.load(
        table_ptr + index.to(tl.int64)[:, None] * FEATURES + feats[None, :], mask=valid[:, None], other=0.0
    )
    return values.to(tl.float32)


@triton.jit
def _cell(x_ptr, rows, valid, scale, base, mask, p1, p2):
    """Table rows of the 8 corners of each row's cell (int32) and their trilinear weights: floor corners weigh
    1 - offset, ceil corners the offset (nerfstudio's convention)."""
    sx = tl.load(x_ptr + rows * 3 + 0, mask=valid, other=0.0) * scale
    sy = tl.load(x_ptr + rows * 3 + 1, mask=valid, other=0.0) * scale
    sz = tl.load(x_ptr + rows * 3 + 2, mask=valid, other=0.0) * scale
    hx0, hx1, ox = _corner_hashes(sx, mask, 1)
    hy0, hy1, oy = _corner_hashes(sy, mask, p1)
    hz0, hz1, oz = _corner_hashes(sz, mask, p2)
    ux, uy, uz = 1 - ox, 1 - oy, 1 - oz
    return (
        (hx0 ^ hy0 ^ hz0) + base,
        (hx0 ^ hy0 ^ hz1) + base,
        (hx0 ^ hy1 ^ hz0) + base,
        (hx0 ^ hy1 ^ hz1) + base,
        (hx1 ^ hy0 ^ hz0) + base,
        (hx1 ^ hy0 ^ hz1) + base,
        (hx1 ^ hy1 ^ hz0) + base,
        (hx1 ^ hy1 ^ hz1) + base,
        ux * uy * uz,
        ux * uy * oz,
        ux * oy * uz,
        ux * oy * oz,
        ox * uy * uz,
        ox * uy * oz,
        ox * oy * uz,
        ox * oy * oz,
    )


@triton.jit
def _hash_grid_fwd(
    x_ptr,
    table_ptr,
    scale_ptr,
    out_ptr,
    n,
    mask,
    p1,
    p2,
    LEVELS: tl.constexpr,
    FEATURES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    level = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = rows < n
    scale = tl.load(scale_ptr + level)
    base = level * (mask + 1)
    feats = tl.arange(0, FEATURES)
    i0, i1, i2, i3, i4, i5, i6, i7, w0, w1, w2, w3, w4, w5, w6, w7 = _cell(
        x_ptr, rows, valid, scale, base, mask, p1, p2
    )
    acc = _gather(table_ptr, i0, feats, valid, FEATURES) * w0[:, None]
    acc += _gather(table_ptr, i1, feats, valid, FEATURES) * w1[:, None]
    acc += _gather(table_ptr, i2, feats, valid, FEATURES) * w2[:, None]
    acc += _gather(table_ptr, i3, feats, valid, FEATURES) * w3[:, None]
    acc += _gather(table_ptr, i4, feats, valid, FEATURES) * w4[:, None]
    acc += _gather(table_ptr, i5, feats, valid, FEATURES) * w5[:, None]
    acc += _gather(table_ptr, i6, feats, valid, FEATURES) * w6[:, None]
    acc += _gather(table_ptr, i7, feats, valid, FEATURES) * w7[:, None]
    out = out_ptr + rows[:, None].to(tl.int64) * (LEVELS * FEATURES) + level * FEATURES + feats[None, :]
    tl.store(out, acc, mask=valid[:, None])


@triton.jit
def _flush(grad_ptr, index, values, feats, active, FEATURES: tl.constexpr):
    """Add `values` [BLOCK, FEATURES] into table-gradient rows `index` where `active` (atomically)."""
    target = grad_ptr + index.to(tl.int64)[:, None] * FEATURES + feats[None, :]
    tl.atomic_add(target, values, mask=active[:, None])


@triton.jit
def _merge(grad_ptr, prev, acc, index, contribution, feats, FEATURES: tl.constexpr):
    """Run-length merging along a lane's consecutive rows: while a corner stays on the same table row, add up
    locally; write the sum out (one atomic add) only when the row changes."""
    same = index == prev
    _flush(grad_ptr, prev, acc, feats, ~same, FEATURES)
    return index, tl.where(same[:, None], acc + contribution, contribution)


@triton.jit
def _hash_grid_bwd(
    x_ptr,
    grad_out_ptr,
    scale_ptr,
    grad_table_ptr,
    n,
    mask,
    p1,
    p2,
    LEVELS: tl.constexpr,
    FEATURES: tl.constexpr,
    BLOCK: tl.constexpr,
    RUN: tl.constexpr,
):
    # Each lane takes RUN consecutive rows. Rows are consecutive samples along a ray, which at the coarser levels
    # mostly share their cell: merging them locally turns most of the atomic adds (the cost of this kernel, since
    # atomics to one address serialise) into register adds.
    level = tl.program_id(1)
    first = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)) * RUN
    scale = tl.load(scale_ptr + level)
    base = level * (mask + 1)
    feats = tl.arange(0, FEATURES)
    row_stride = LEVELS * FEATURES
    offset = level * FEATURES + feats[None, :]

    rows = first
    valid = rows < n  # rows past the end load zeros: they add 0 to some row, which changes nothing
    g = tl.load(grad_out_ptr + rows[:, None].to(tl.int64) * row_stride + offset, mask=valid[:, None], other=0.0)
    g = g.to(tl.float32)
    i0, i1, i2, i3, i4, i5, i6, i7, w0, w1, w2, w3, w4, w5, w6, w7 = _cell(
        x_ptr, rows, valid, scale, base, mask, p1, p2
    )
    p0, a0 = i0, g * w0[:, None]
    p1_, a1 = i1, g * w1[:, None]
    p2_, a2 = i2, g * w2[:, None]
    p3, a3 = i3, g * w3[:, None]
    p4, a4 = i4, g * w4[:, None]
    p5, a5 = i5, g * w5[:, None]
    p6, a6 = i6, g * w6[:, None]
    p7, a7 = i7, g * w7[:, None]
    for r in tl.static_range(1, RUN):
        rows = first + r
        valid = rows < n
        g = tl.load(grad_out_ptr + rows[:, None].to(tl.int64) * row_stride + offset, mask=valid[:, None], other=0.0)
        g = g.to(tl.float32)
        i0, i1, i2, i3, i4, i5, i6, i7, w0, w1, w2, w3, w4, w5, w6, w7 = _cell(
            x_ptr, rows, valid, scale, base, mask, p1, p2
        )
        p0, a0 = _merge(grad_table_ptr, p0, a0, i0, g * w0[:, None], feats, FEATURES)
        p1_, a1 = _merge(grad_table_ptr, p1_, a1, i1, g * w1[:, None], feats, FEATURES)
        p2_, a2 = _merge(grad_table_ptr, p2_, a2, i2, g * w2[:, None], feats, FEATURES)
        p3, a3 = _merge(grad_table_ptr, p3, a3, i3, g * w3[:, None], feats, FEATURES)
        p4, a4 = _merge(grad_table_ptr, p4, a4, i4, g * w4[:, None], feats, FEATURES)
        p5, a5 = _merge(grad_table_ptr, p5, a5, i5, g * w5[:, None], feats, FEATURES)
        p6, a6 = _merge(grad_table_ptr, p6, a6, i6, g * w6[:, None], feats, FEATURES)
        p7, a7 = _merge(grad_table_ptr, p7, a7, i7, g * w7[:, None], feats, FEATURES)
    active = first < n
    _flush(grad_table_ptr, p0, a0, feats, active, FEATURES)
    _flush(grad_table_ptr, p1_, a1, feats, active, FEATURES)
    _flush(grad_table_ptr, p2_, a2, feats, active, FEATURES)
    _flush(grad_table_ptr, p3, a3, feats, active, FEATURES)
    _flush(grad_table_ptr, p4, a4, feats, active, FEATURES)
    _flush(grad_table_ptr, p5, a5, feats, active, FEATURES)
    _flush(grad_table_ptr, p6, a6, feats, active, FEATURES)
    _flush(grad_table_ptr, p7, a7, feats, active, FEATURES)


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, positions: Tensor, table: Tensor, scalings: Tensor, table_size: int) -> Tensor:
        x = positions.reshape(-1, 3).contiguous().float()
        levels = scalings.shape[0]
        features = table.shape[1]
        out = torch.empty((x.shape[0], levels * features), device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(x.shape[0], _BLOCK), levels)
        if x.shape[0] > 0:
            _hash_grid_fwd[grid](
                x, table.contiguous(), scalings, out, x.shape[0], table_size - 1, _P1, _P2, levels, features, _BLOCK
            )
        ctx.save_for_backward(x, scalings)
        ctx.table_shape = table.shape
        ctx.table_dtype = table.dtype
        ctx.table_size = table_size
        return out.reshape(*positions.shape[:-1], levels * features)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, scalings = ctx.saved_tensors
        levels = scalings.shape[0]
        features = ctx.table_shape[1]
        grad_table = torch.zeros(ctx.table_shape, device=x.device, dtype=torch.float32)
        grad = grad_out.reshape(-1, levels * features).contiguous()
        if x.shape[0] > 0:
            grid = (triton.cdiv(x.shape[0], _BLOCK * _RUN), levels)
            _hash_grid_bwd[grid](
                x, grad, scalings, grad_table, x.shape[0], ctx.table_size - 1, _P1, _P2, levels, features, _BLOCK, _RUN
            )
        return None, grad_table.to(ctx.table_dtype), None, None


def hash_grid_encode(positions: Tensor, table: Tensor, scalings: Tensor, table_size: int) -> Tensor:
    """Encode positions [..., 3] in [0, 1] with per-level hash tables `table` [levels * table_size, F] at
    resolutions `scalings` [levels] (float32, on the positions' device). Returns [..., levels * F]; differentiable
    with respect to `table` only."""
    if table_size & (table_size - 1):
        raise ValueError(f"hash table size {table_size} is not a power of two")
    return _HashGridFunction.apply(positions, table, scalings, table_size)
