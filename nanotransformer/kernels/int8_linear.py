"""Numba int8 x float linear layer for decoding: the kernel behind `quantize.int8_linear_forward`.

Dimension legend: N rows (B * T flattened; 1 when decoding one token), C_in/C_out the layer's
sizes, QN output channels per parallel task, ROWS rows per kernel call.

Decoding is memory-bound: each weight is read once per token and used for N multiply-adds. So
the kernel reads q transposed, qt = q.T (C_out, C_in): `quantize.quantize_int8` stores q
column-major, so qt is a view, and output channel j's C_in weights are one contiguous run of
bytes. Each output is then a dot product, out[r, j] = (sum_k x[r, k] qt[j, k]) * s_j + b_j: the
int8 weights are widened to float in the registers (vpmovsxbd + vcvtdq2ps), never written back,
and the scale and bias are applied once per output, not per weight (`quantize` module
docstring). Threads split the output channels: task t owns channels [t QN, (t + 1) QN) of out, a
contiguous block of qt, so every thread streams its own stretch of memory and no two write the
same place. (Reading q row-major instead, an axpy per input row, made each task stride across
C_out-byte rows: with the 50257-wide int8 LM head, decoding ran 3x slower than with the float32 head.)

The wrapper feeds the kernel at most ROWS rows at a time (a longer prompt's prefill becomes
several passes over q, each re-reading x's ROWS rows from cache).

Does not: do int8 arithmetic (the products are float32 or float64, like x), implement a backward
(inference only), or tile for large N (a prompt's prefill reads q once per ROWS rows).
"""
import numpy as np
from numba import prange

from ..quantize import check_int8_linear
from .jit import kernel, run

QN = 16  # output channels per parallel task: 16 rows of qt, 16 C_in contiguous bytes
ROWS = 8  # rows of x per kernel call


@kernel
def _int8_linear_forward_nb(out, x, qt, scale, bias):
    """Numba kernel for `quantize.int8_linear_forward`: out = (x @ q) * scale + bias, with q given
    transposed: qt = q.T, (C_out, C_in), C-contiguous (output channel j's weights in one row).

    out: (N, C_out), x: (N, C_in) float, qt: (C_out, C_in) int8, scale: (C_out,), bias: (C_out,)
    or (0,) for none. N <= ROWS. All C-contiguous.
    """
    N, C_in = x.shape
    C_out = qt.shape[0]
    for t in prange((C_out + QN - 1) // QN):  # task t owns columns [j0, j1) of out: no overlap
        j0 = t * QN
        zero = np.zeros(1, dtype=out.dtype)[0]
        for j in range(j0, min(j0 + QN, C_out)):
            qj = qt[j]
            for r in range(N):
                xr = x[r]
                acc = zero
                for k in range(C_in):  # a dot product: fastmath's reassoc lets it run in SIMD lanes
                    acc += xr[k] * qj[k]  # int8 -> float in the register (vpmovsxbd + vcvtdq2ps)
                out[r, j] = acc * scale[j]
                if bias.shape[0] > 0:
                    out[r, j] += bias[j]


def int8_linear_forward(x, q, scale, b=None):
    """x: (..., C_in), q: (C_in, C_out) int8, scale: (C_out,), b: (C_out,) or None
    -> out: (..., C_out), cache = None (inference only). The Numba twin of `quantize.int8_linear_forward`."""
    check_int8_linear(x, q, scale, b)
    C_in, C_out = q.shape
    x2 = np.ascontiguousarray(x.reshape(-1, C_in))  # (N, C_in)
    qt = np.ascontiguousarray(q.T)  # (C_out, C_in): a view, no copy, for the F-ordered q quantize_int8 makes
    scale = np.ascontiguousarray(scale)
    bias = np.empty(0, x.dtype) if b is None else np.ascontiguousarray(b)
    out = np.empty((x2.shape[0], C_out), dtype=x.dtype)
    for i in range(0, x2.shape[0], ROWS):  # at most ROWS rows per pass over q (module docstring)
        run(_int8_linear_forward_nb, min(ROWS, x2.shape[0] - i) * q.size, out[i : i + ROWS], x2[i : i + ROWS], qt,
            scale, bias)  # fmt: skip
    return out.reshape(x.shape[:-1] + (C_out,)), None
