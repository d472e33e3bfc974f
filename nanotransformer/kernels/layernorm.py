"""Numba layer norm: the kernels behind `layers.layernorm_forward` / `layers.layernorm_backward`.

Dimension legend: N rows (B * T flattened), C channels.

The cache keeps x, mean and rstd rather than the NumPy reference's xhat (a cache only ever goes
back to the backward of the backend that made it). The backward's dw and db sum over rows: each
of N_CHUNKS chunks of rows gets its own partial sum, added up afterwards, so threads never write
the same element and the result does not depend on the thread count.

Does not: fuse the layer norm with the residual add or the next linear layer.
"""
import math

import numpy as np
from numba import prange

from ..layers import check_layernorm
from .jit import kernel, run

# Rows per parallel chunk-reduction (layer-norm dw/db): a fixed count, so sums are reproducible.
N_CHUNKS = 16


@kernel
def _layernorm_forward_nb(out, mean, rstd, x, w, b, eps):
    """Numba kernel for `layers.layernorm_forward`.

    out: (N, C), mean: (N,), rstd: (N,), x: (N, C), w: (C,), b: (C,), eps: scalar of x's dtype
    """
    N, C = x.shape
    for i in prange(N):  # row i writes only out[i], mean[i], rstd[i]
        s = x.dtype.type(0)
        for c in range(C):
            s += x[i, c]
        m = s / C
        v = x.dtype.type(0)
        for c in range(C):  # two passes: var = mean((x - m)^2) has no cancellation, unlike E[x^2] - m^2
            d = x[i, c] - m
            v += d * d
        r = 1 / math.sqrt(v / C + eps)
        for c in range(C):
            out[i, c] = (x[i, c] - m) * r * w[c] + b[c]
        mean[i] = m
        rstd[i] = r


@kernel
def _layernorm_backward_nb(dx, dw_part, db_part, dout, x, mean, rstd, w):
    """Numba kernel for `layers.layernorm_backward`.

    dx: (N, C), dw_part, db_part: (N_CHUNKS, C) per-chunk partial sums (zeroed by the caller),
    dout, x: (N, C), mean, rstd: (N,), w: (C,)
    """
    N, C = x.shape
    n_chunks = dw_part.shape[0]
    for ch in prange(n_chunks):  # chunk ch owns rows [lo, hi) of dx and row ch of the partials
        lo = ch * N // n_chunks
        hi = (ch + 1) * N // n_chunks
        for i in range(lo, hi):
            m, r = mean[i], rstd[i]
            # forward was: out = xhat * w + b  ->  dw += dout * xhat, db += dout, dxhat = dout * w
            s1 = x.dtype.type(0)  # sum(dxhat)
            s2 = x.dtype.type(0)  # sum(dxhat * xhat)
            for c in range(C):
                xhat = (x[i, c] - m) * r
                dw_part[ch, c] += dout[i, c] * xhat
                db_part[ch, c] += dout[i, c]
                dxhat = dout[i, c] * w[c]
                s1 += dxhat
                s2 += dxhat * xhat
            # forward was: xhat = (x - mean) * rstd  ->  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
            s1 /= C
            s2 /= C
            for c in range(C):
                xhat = (x[i, c] - m) * r
                dx[i, c] = r * (dout[i, c] * w[c] - s1 - xhat * s2)


def layernorm_forward(x, w, b, eps=1e-5):
    """x: (..., C), w: (C,), b: (C,) -> out: (..., C), cache = (x2, w, mean, rstd, shape)"""
    check_layernorm(x, w, b, eps)
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x.reshape(-1, C))  # (N, C)
    w, b = np.ascontiguousarray(w), np.ascontiguousarray(b)
    N = x2.shape[0]
    out = np.empty_like(x2)
    stats = np.empty((2, N), x.dtype)  # mean, rstd
    run(_layernorm_forward_nb, x2.size, out, stats[0], stats[1], x2, w, b, x.dtype.type(eps))
    return out.reshape(x.shape), (x2, w, stats[0], stats[1], x.shape)


def layernorm_backward(dout, cache):
    """dout: (..., C) -> dx: (..., C), dw: (C,), db: (C,)"""
    x2, w, mean, rstd, shape = cache
    N, C = x2.shape
    dx = np.empty_like(x2)
    n_chunks = max(1, min(N_CHUNKS, N))
    dw_part = np.zeros((n_chunks, C), x2.dtype)
    db_part = np.zeros((n_chunks, C), x2.dtype)
    run(_layernorm_backward_nb, x2.size, dx, dw_part, db_part, np.ascontiguousarray(dout.reshape(N, C)), x2, mean, rstd, w)
    return dx.reshape(shape), dw_part.sum(axis=0), db_part.sum(axis=0)
