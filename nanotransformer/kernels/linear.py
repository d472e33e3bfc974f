"""Numba matmul: the kernel behind `layers.linear_forward` / `layers.linear_backward`, plus the
bare `matmul` and `transpose` the benchmarks and tests call.

Dimension legend: N rows (B * T flattened), C_in/C_out linear sizes, M x K @ K x N for a bare
matmul.

The product itself is `jit.gemm_nb` (register tile, cache blocks: see the comment there); this
module adds the third level of blocking, threads: `prange` over tasks of (MC rows) x (NC
columns) of out, each writing only its own block. Column blocks give a one-row product
(decoding a token) its parallelism too.

Does not: use BLAS (that is the "numpy" backend; `backend.AUTO` records that it wins for the
linear layers here, and by how much), or pack its operands into panels as BLAS does.
"""
import numpy as np
from numba import prange

from ..validation import check_array, check_same_dtype
from .jit import NR, TB, gemm_nb, kernel, run

MC, NC = 64, 128  # rows x columns of out per parallel task


@kernel
def _matmul_nb(out, a, b, bias, a_t):
    """Numba kernel for `layers.linear_forward`'s `x @ w + b` (and both products of
    `layers.linear_backward`): out = A @ b + bias, A = a.T if a_t else a.

    out: (M, N), a: (M, K) or, if a_t, (K, M), b: (K, N), bias: (N,) or (0,) for none.
    All C-contiguous.
    """
    M, N = out.shape
    K = b.shape[0]
    n_j = (N + NC - 1) // NC
    for t in prange(((M + MC - 1) // MC) * n_j):  # task t owns one (MC x NC) block of out
        i0 = (t // n_j) * MC
        j0 = (t % n_j) * NC
        i1 = min(i0 + MC, M)
        j1 = min(j0 + NC, N)
        gemm_nb(out, a, b, i0, i1, j0, j1, K, False, a_t)
        if bias.shape[0] > 0:
            for i in range(i0, i1):
                o = out[i, j0:j1]
                bb = bias[j0:j1]
                for j in range(j1 - j0):
                    o[j] += bb[j]


@kernel
def _transpose_nb(out, a):
    """out = a.T, copied in TB x TB tiles: reading a row of a tile and writing a column of it
    both touch only the tile's 32 cache lines, instead of one cache line per element.

    out: (N, M), a: (M, N)
    """
    M, N = a.shape
    for tj in prange((N + TB - 1) // TB):  # tile column tj owns out[32tj:32tj+32]: no overlap
        j0 = tj * TB
        j1 = min(j0 + TB, N)
        for i0 in range(0, M, TB):
            for i in range(i0, min(i0 + TB, M)):
                for j in range(j0, j1):
                    out[j, i] = a[i, j]


def _matmul(a, b, bias=None, a_t=False):
    """A @ b (+ bias) with the Numba kernel, A = a.T if a_t else a; C-contiguous copies as needed.

    When b's width N is not a multiple of NR (the LM head's V = 65, say), b and the bias are
    zero-padded to the next multiple and the padding cut from the result: the last columns then
    go through the register tile too (the V = 65 head ran 2.5x faster than through the row-by-row
    edge loop), and the kernel keeps one tile path per layout (each extra path inlines another
    register tile, and compile time grows with them).
    """
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    M, (K, N) = (a.shape[1] if a_t else a.shape[0]), b.shape
    N_pad = -(-N // NR) * NR if N > NR else N
    if N_pad != N:
        b = np.concatenate([b, np.zeros((K, N_pad - N), b.dtype)], axis=1)
        bias = None if bias is None else np.concatenate([bias, np.zeros(N_pad - N, b.dtype)])
    out = np.empty((M, N_pad), dtype=a.dtype)
    bias = np.empty(0, a.dtype) if bias is None else np.ascontiguousarray(bias)
    run(_matmul_nb, out.size * K, out, a, b, bias, bool(a_t))
    return out if N_pad == N else np.ascontiguousarray(out[:, :N])


def matmul(a, b):
    """a: (M, K) @ b: (K, N) -> (M, N) with the tiled Numba kernel (for benchmarks and tests)."""
    check_same_dtype(a=a, b=b)
    check_array("a", a, ndim=2)
    check_array("b", b, shape=(a.shape[1], None))
    return _matmul(a, b)


def transpose(a):
    """A C-contiguous copy of a 2-D array's transpose (tiled Numba copy)."""
    out = np.empty((a.shape[1], a.shape[0]), dtype=a.dtype)
    run(_transpose_nb, a.size, out, np.ascontiguousarray(a))
    return out


def linear_forward(x, w, b=None):
    """x: (..., C_in), w: (C_in, C_out), b: (C_out,) or None -> out: (..., C_out), cache

    cache = (x2, w, has_bias, lead_shape) with x2 = x as a C-contiguous (N, C_in) array.
    """
    check_same_dtype(x=x, w=w, b=b)
    check_array("w", w, ndim=2)
    check_array("x", x, min_ndim=1, shape=x.shape[:-1] + (w.shape[0],))
    if b is not None:
        check_array("b", b, shape=(w.shape[1],))
    x2 = np.ascontiguousarray(x.reshape(-1, w.shape[0]))  # (N, C_in)
    out = _matmul(x2, w, b)  # (N, C_out); w as stored: (C_in, C_out) is already (K, N)
    return out.reshape(x.shape[:-1] + (w.shape[1],)), (x2, w, b is not None, x.shape[:-1])


def linear_backward(dout, cache):
    """dout: (..., C_out) -> dx: (..., C_in), dw: (C_in, C_out), db: (C_out,) or None"""
    x2, w, has_bias, lead = cache
    C_in, C_out = w.shape
    d2 = np.ascontiguousarray(dout.reshape(-1, C_out))  # (N, C_out)
    # forward was: out = x @ w + b  ->  dx = dout @ w.T (w.T copied: C_out x C_in, small),
    # dw = x.T @ dout (x read transposed in place), db = sum of dout's rows
    dx = _matmul(d2, transpose(w))
    dw = _matmul(x2, d2, a_t=True)
    db = d2.sum(axis=0) if has_bias else None
    return dx.reshape(lead + (C_in,)), dw, db
