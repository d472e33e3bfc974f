"""Numba rotary position embedding: the kernels behind `attention.rope_forward` /
`attention.rope_backward`.

Dimension legend: B batch, NH heads, BH = B * NH (any leading dims flattened), T positions,
hs head size, h = hs / 2 channel pairs, N = BH * T rows.

Half-split layout (Hugging Face's `rotate_half`): channel pair (i, i + h) of position m turns
by the angle m * theta^(-2i/hs). Per row, with a = x[i], b = x[i + h], c = cos, s = sin:
    out[i] = a c - b s,   out[i + h] = b c + a s
one pass over x, where the NumPy reference makes five temporaries (x * cos, the two halves of
rotate_half, its product with sin, the sum). The backward is the inverse rotation (angle -m
theta_i). The angles are computed once per call into (T, h) tables (each angle appears twice
along hs in the reference's (T, hs) tables: here it is stored once), and the cache keeps the
tables, so the backward computes none.

Inputs may be strided views ((B, NH, T, hs) views of the fused q/k/v projection): the wrapper
copies them to C-contiguous rows; the output is C-contiguous, in the input's shape.

Does not: fuse the rotation into the attention kernel's load of q and k (measured: the separate
kernel costs a few percent of the attention it feeds, benchmarks/README.md, "RMSNorm and
RoPE"), or implement the interleaved (GPT-J, Meta's original) pair layout.
"""
import functools

import numpy as np
from numba import prange

from .. import attention as reference
from ..validation import check_array
from .jit import kernel, run


@kernel
def _rope_forward_nb(out, x, cos, sin):
    """Numba kernel for `attention.rope_forward`.

    out: (N, hs), x: (N, hs), cos, sin: (T, h) with N a multiple of T (row r is position r % T)
    """
    N, hs = x.shape
    T, h = cos.shape
    for r in prange(N):  # row r writes only out[r]
        t = r % T
        c, s = cos[t], sin[t]
        a, b = x[r, :h], x[r, h:]  # row slices indexed from 0: SIMD loads, not gathers
        o1, o2 = out[r, :h], out[r, h:]
        for i in range(h):
            o1[i] = a[i] * c[i] - b[i] * s[i]
            o2[i] = b[i] * c[i] + a[i] * s[i]


@kernel
def _rope_backward_nb(dx, dout, cos, sin):
    """Numba kernel for `attention.rope_backward`.

    dx: (N, hs), dout: (N, hs), cos, sin: (T, h) as in `_rope_forward_nb`
    """
    N, hs = dout.shape
    T, h = cos.shape
    for r in prange(N):  # row r writes only dx[r]
        t = r % T
        c, s = cos[t], sin[t]
        da, db = dout[r, :h], dout[r, h:]
        d1, d2 = dx[r, :h], dx[r, h:]
        # forward was: out1 = a c - b s, out2 = b c + a s  ->  da = d1 c + d2 s, db = d2 c - d1 s
        for i in range(h):
            d1[i] = da[i] * c[i] + db[i] * s[i]
            d2[i] = db[i] * c[i] - da[i] * s[i]


def rope_forward(x, theta=10000.0, offset=0):
    """x: (..., T, hs) -> out: (..., T, hs), cache = (cos, sin, shape) with cos, sin: (T, hs/2)

    Same contract as `attention.rope_forward` (theta, offset: see there)."""
    check_array("x", x, min_ndim=2, floating=True)
    T, hs = x.shape[-2:]
    cos, sin = _angles(T, hs, theta, offset, x.dtype)
    x2 = np.ascontiguousarray(x.reshape(-1, hs))  # (N, hs); copies a strided view
    out = np.empty_like(x2)
    if x2.size:
        run(_rope_forward_nb, x2.size, out, x2, cos, sin)
    return out.reshape(x.shape), (cos, sin, x.shape)


def rope_backward(dout, cache):
    """dout: (..., T, hs) -> dx: (..., T, hs)"""
    cos, sin, shape = cache
    check_array("dout", dout, shape=shape, floating=True)
    if dout.dtype != cos.dtype:
        raise ValueError(f"dout: expected dtype {cos.dtype} (the dtype of the forward's x), got {dout.dtype}")
    d2 = np.ascontiguousarray(dout.reshape(-1, shape[-1]))
    dx = np.empty_like(d2)
    if d2.size:
        run(_rope_backward_nb, d2.size, dx, d2, cos, sin)
    return dx.reshape(shape)


def _angles(T, hs, theta, offset, dtype):
    """(cos, sin), each (T, hs/2), C-contiguous and read-only: the first half of
    `attention.rope_angles`' tables (the second half repeats it), which also validates hs, theta
    and offset. Memoised: every layer's q and k, at every training step, rotate by the same
    angles, so after the first call they cost nothing (measured: computing them took as long
    as the rotation itself, see benchmarks/README.md)."""
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
