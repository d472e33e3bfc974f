"""Numba rotary position embedding: the kernels behind `attention.rope_forward` /
`attention.rope_backward`.

Dimension legend: B batch (any further leading dims folded into it), NH heads, T positions,
hs head size, h = hs / 2 channel pairs.

Half-split layout (Hugging Face's `rotate_half`): channel pair (i, i + h) of position m turns
by the angle m * theta^(-2i/hs). Per row, with a = x[i], b = x[i + h], c = cos, s = sin:
    out[i] = a c - b s,   out[i + h] = b c + a s
one pass over x, where the NumPy reference makes five temporaries (x * cos, the two halves of
rotate_half, its product with sin, the sum). The backward is the inverse rotation (angle -m
theta_i). The angles come from `attention.rope_angles` (so they are the reference's numbers),
stored once per pair as (T, h) tables (the reference's (T, hs) tables hold each angle twice)
and memoised: q and k of every layer, at every step, share one pair of tables. The cache keeps
the tables, so the backward computes none.

Inputs may be strided views ((B, NH, T, hs) views of the fused q/k/v projection): when their
rows are contiguous the kernel reads them in place, through a flat buffer and the view's
strides (`_flat_source`), so the one pass also makes the C-contiguous output, which the
attention kernel then takes without copying q and k.

Does not: fuse the rotation into the attention kernel's load of q and k. Measured
(benchmarks/README.md, "RMSNorm and RoPE"): the separate kernels add 3-8 % to the attention
forward + backward they feed at the training configs' shapes, about 1 % of a training step, so
that is the most fusing could save; it would also need the attention op to take the rotation's
arguments and, when decoding, still to write rotated keys to the KV cache. Nor does it implement
the interleaved (GPT-J, Meta's original) pair layout.
"""
import functools

import numpy as np
from numba import prange

from .. import attention as reference
from ..validation import check_array
from .jit import kernel, run

# A rotation is 6 flops per pair of elements read and written: memory-bound, so the threads pay
# only for large calls. `run` is handed size // THREADED_FROM, i.e. the threaded build runs from
# THREADED_FROM x jit.SERIAL_BELOW = 786k elements. Measured on 2 cores (float32, load 1.5-1.8):
# serial 2.2x faster at 131k elements (tiny's q), 2x at 262k (bpe's), even at 786k (small's),
# threaded 1.5x faster at 1.5M.
THREADED_FROM = 12


@kernel
def _rope_forward_nb(out, x, sb, sn, st, cos, sin):
    """Numba kernel for `attention.rope_forward`.

    out: (B, NH, T, hs) C-contiguous; x: 1-D, element (b, n, t, i) of the input at
    x[b * sb + n * sn + t * st + i] (a strided view read in place, see `_flat_source`);
    cos, sin: (T, h)
    """
    B, NH, T, hs = out.shape
    h = hs // 2
    for bh in prange(B * NH):  # (batch, head) bh writes only out[b, n]
        b = bh // NH
        n = bh - b * NH
        ob = out[b, n]
        for t in range(T):
            # one view per row, indexed from 0: SIMD loads. (Six views per row, one per half,
            # measured 2x slower: each view, and each pair of views LLVM must check for overlap
            # before its SIMD loop, costs more than the 16-32 pairs of a row.)
            p = b * sb + n * sn + t * st
            xr, o, c, s = x[p : p + hs], ob[t], cos[t], sin[t]
            for i in range(h):
                a, bb = xr[i], xr[i + h]
                o[i] = a * c[i] - bb * s[i]
                o[i + h] = bb * c[i] + a * s[i]


@kernel
def _rope_backward_nb(dx, dout, sb, sn, st, cos, sin):
    """Numba kernel for `attention.rope_backward`.

    dx: (B, NH, T, hs) C-contiguous; dout: 1-D with strides sb, sn, st; cos, sin: (T, h), as in
    `_rope_forward_nb`
    """
    B, NH, T, hs = dx.shape
    h = hs // 2
    for bh in prange(B * NH):  # (batch, head) bh writes only dx[b, n]
        b = bh // NH
        n = bh - b * NH
        dxb = dx[b, n]
        for t in range(T):
            p = b * sb + n * sn + t * st
            d, o, c, s = dout[p : p + hs], dxb[t], cos[t], sin[t]
            # forward was: out[i] = a c - b s, out[i + h] = b c + a s (a = x[i], b = x[i + h]): a
            # rotation, whose transpose is the rotation back  ->  da = d[i] c + d[i + h] s,
            # db = d[i + h] c - d[i] s
            for i in range(h):
                da, db = d[i], d[i + h]
                o[i] = da * c[i] + db * s[i]
                o[i + h] = db * c[i] - da * s[i]


def rope_forward(x, theta=10000.0, offset=0):
    """x: (..., T, hs) -> out: (..., T, hs), cache = (cos, sin, shape) with cos, sin: (T, hs/2)

    Same contract as `attention.rope_forward` (theta, offset: see there)."""
    check_array("x", x, min_ndim=2, floating=True)
    T, hs = x.shape[-2:]
    cos, sin = _angles(T, hs, theta, offset, x.dtype)
    return _rotate(_rope_forward_nb, x, cos, sin), (cos, sin, x.shape)


def rope_backward(dout, cache):
    """dout: (..., T, hs) -> dx: (..., T, hs)"""
    cos, sin, shape = cache
    check_array("dout", dout, shape=shape, floating=True)
    if dout.dtype != cos.dtype:
        raise ValueError(f"dout: expected dtype {cos.dtype} (the dtype of the forward's x), got {dout.dtype}")
    return _rotate(_rope_backward_nb, dout, cos, sin)


def _rotate(kern, x, cos, sin):
    """kern(out, *_flat_source(x), cos, sin) -> out, C-contiguous in x's shape."""
    out = np.empty(x.shape, x.dtype)
    if x.size:
        buf, (sb, sn, st), shape4 = _flat_source(x)
        run(kern, x.size // THREADED_FROM, out.reshape(shape4), buf, sb, sn, st, cos, sin)
    return out


def _flat_source(x):
    """x: (..., T, hs), size > 0 -> (buf, (sb, sn, st), (B, NH, T, hs)): x as 4-D (leading dims
    folded into B, NH) with element (b, n, t, i) at buf[b * sb + n * sn + t * st + i].

    When x's rows are contiguous (unit stride along hs, as in split_heads' views, or any
    C-contiguous array), buf is a read-only 1-D view of the memory x spans, from its first
    element to its last: nothing is copied, and the kernel reads only x's own elements. So the
    rotation is also the copy to contiguous (B, NH, T, hs) arrays that the attention wrapper
    would otherwise make of q and k (measured: reading split_heads' views in place made the
    forward 23-30 % faster than copying them first). Other layouts are copied first."""
    x4 = x[(None,) * (4 - x.ndim)] if x.ndim < 4 else x.reshape((-1,) + x.shape[-3:])  # a view if it can be
    item = x4.itemsize
    if x4.strides[-1] != item or any(s < 0 or s % item for s in x4.strides):
        x4 = np.ascontiguousarray(x4)
    strides = [s // item for s in x4.strides]
    if x4.flags.c_contiguous:  # (as_strided below would do too, at 3 us a call)
        buf = x4.reshape(-1).view()
        buf.flags.writeable = False  # one Numba signature for both cases: read-only 1-D
    else:
        span = sum((n - 1) * s for n, s in zip(x4.shape, strides)) + 1  # elements from first to last
        buf = np.lib.stride_tricks.as_strided(x4, shape=(span,), strides=(item,), writeable=False)
    return buf, tuple(strides[:3]), x4.shape


def _angles(T, hs, theta, offset, dtype):
    """(cos, sin), each (T, hs/2), C-contiguous and read-only: the first half of
    `attention.rope_angles`' tables (the second half repeats it), which also validates hs, theta
    and offset. Memoised: every layer's q and k, at every training step, rotate by the same
    angles, so after the first call they cost nothing (measured: computing them took longer
    than the rotation itself at the training configs' shapes, 0.3 ms against 0.15 ms at small's)."""
    if not (isinstance(theta, (int, float, np.floating)) and isinstance(offset, (int, np.integer))):
        return reference.rope_angles(T, hs, theta, offset, dtype)  # raises the reference's ValueError
    return _angles_memo(T, hs, float(theta), int(offset), np.dtype(dtype))


@functools.lru_cache(maxsize=16)  # small tables (T x hs/2); decoding moves offset by one per step
def _angles_memo(T, hs, theta, offset, dtype):
    cos, sin = reference.rope_angles(T, hs, theta, offset, dtype)
    h = hs // 2
    cos, sin = np.ascontiguousarray(cos[:, :h]), np.ascontiguousarray(sin[:, :h])
    cos.flags.writeable = sin.flags.writeable = False  # shared by every call with these arguments
    return cos, sin
