"""Numba RMSNorm: the kernels behind `layers.rmsnorm_forward` / `layers.rmsnorm_backward`.

Dimension legend: N rows (B * T, or B * NH * T for QK-norm, flattened), C channels.

out = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps), one row at a time. The cache keeps x
and rstd rather than the NumPy reference's xhat (a cache only ever goes back to the backward of
the backend that made it), so the forward writes one array of N x C, not two. The backward's dw
sums over rows as layer norm's does: each of N_CHUNKS chunks of rows has its own partial sum,
added up afterwards, so threads never write the same element and the result does not depend on
the thread count.

Inputs may be strided views (QK-norm normalises (B, NH, T, hs) views of the fused projection):
the wrapper copies them to C-contiguous rows once, and returns arrays in the input's shape.

Does not: fuse the norm with the residual add, the next linear layer or (QK-norm) RoPE.
"""
import math

import numpy as np
from numba import prange

from ..validation import check_array, check_number, check_same_dtype
from .jit import kernel, run
from .layernorm import N_CHUNKS  # the same fixed chunk count as layer norm's dw/db


@kernel
def _rmsnorm_forward_nb(out, rstd, x, w, eps):
    """Numba kernel for `layers.rmsnorm_forward`.

    out: (N, C), rstd: (N,), x: (N, C), w: (C,), eps: scalar of x's dtype
    """
    N, C = x.shape
    for i in prange(N):  # row i writes only out[i] and rstd[i]
        s = x.dtype.type(0)
        for c in range(C):
            s += x[i, c] * x[i, c]
        r = 1 / math.sqrt(s / C + eps)  # eps > 0: an all-zero row gives r = eps^(-1/2), out = 0
        for c in range(C):
            out[i, c] = x[i, c] * r * w[c]
        rstd[i] = r


@kernel
def _rmsnorm_backward_nb(dx, dw_part, dout, x, rstd, w):
    """Numba kernel for `layers.rmsnorm_backward`.

    dx: (N, C), dw_part: (N_CHUNKS, C) per-chunk partial sums (zeroed by the caller),
    dout, x: (N, C), rstd: (N,), w: (C,)
    """
    N, C = x.shape
    n_chunks = dw_part.shape[0]
    for ch in prange(n_chunks):  # chunk ch owns rows [lo, hi) of dx and row ch of the partials
        lo = ch * N // n_chunks
        hi = (ch + 1) * N // n_chunks
        for i in range(lo, hi):
            r = rstd[i]
            # forward was: out = xhat * w  ->  dw += dout * xhat, dxhat = dout * w
            s = x.dtype.type(0)  # sum(dxhat * xhat)
            for c in range(C):
                xhat = x[i, c] * r
                dw_part[ch, c] += dout[i, c] * xhat
                s += dout[i, c] * w[c] * xhat
            # forward was: xhat = x * rstd, rstd = (mean(x^2) + eps)^(-1/2)
            #   ->  dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
            s /= C
            for c in range(C):
                dx[i, c] = r * (dout[i, c] * w[c] - x[i, c] * r * s)


def rmsnorm_forward(x, w, eps=1e-6):
    """x: (..., C), w: (C,) -> out: (..., C), cache = (x2, w, rstd, shape)"""
    check_same_dtype(x=x, w=w)
    check_array("x", x, min_ndim=1)
    C = x.shape[-1]
    check_array("w", w, shape=(C,))
    check_number("eps", eps, 0)
    x2 = np.ascontiguousarray(x.reshape(-1, C))  # (N, C); copies a strided view (QK-norm's heads)
    w = np.ascontiguousarray(w)
    out = np.empty_like(x2)
    rstd = np.empty(x2.shape[0], x.dtype)
    run(_rmsnorm_forward_nb, x2.size, out, rstd, x2, w, x.dtype.type(eps))
    return out.reshape(x.shape), (x2, w, rstd, x.shape)


def rmsnorm_backward(dout, cache):
    """dout: (..., C) -> dx: (..., C), dw: (C,)"""
    x2, w, rstd, shape = cache
    check_array("dout", dout, shape=shape)
    check_same_dtype(x=x2, dout=dout)
    N, C = x2.shape
    dx = np.empty_like(x2)
    dw_part = np.zeros((max(1, min(N_CHUNKS, N)), C), x2.dtype)
    run(_rmsnorm_backward_nb, x2.size, dx, dw_part, np.ascontiguousarray(dout.reshape(N, C)), x2, rstd, w)
    return dx.reshape(shape), dw_part.sum(axis=0)
