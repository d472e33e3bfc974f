"""Numba kernels for the hot loop: matmul (linear), layer norm, GELU, fused softmax-cross-entropy
and the fused AdamW update. Fused attention lives in `kernels_attention.py`.

Every kernel has exactly one NumPy twin in the reference code (`layers.py`, `optim.py`) and a
public wrapper here with the twin's signature, so `backend.get_ops("numba")` is a drop-in
replacement: `linear_forward(x, w, b) -> (out, cache)`, `linear_backward(dout, cache) -> (dx, dw,
db)`, ... The wrapper validates (dtype, shapes, index ranges), makes its arguments C-contiguous
and allocates the outputs; the kernel `_xxx_forward_nb(outputs..., inputs...)` never validates,
writes into its preallocated outputs (first in the argument list, as in llm.c) and is compiled
with `cache=True` so a second process loads machine code from disk instead of recompiling.
A cache is only ever handed back to the backward of the same backend, so ours may hold different
things from the NumPy one (the layer-norm cache keeps x, mean and rstd rather than xhat).

Dimension legend: N rows (B * T flattened), C channels, C_in/C_out linear sizes, V vocab,
M x K @ K x N for a bare matmul.

Parallelism: `prange` splits only an axis whose writes never overlap (rows of the output);
reductions across rows (dW, db of layer norm) give each chunk of rows its own partial sum and add
the partials afterwards. Chunks are a fixed number, not the thread count, so results do not
depend on how many threads ran them. Each kernel is compiled twice from one source (`_kernel`):
threaded, and serial for calls too small to repay waking the threads (`_run`, `SERIAL_BELOW`).

Numbers: float32 and float64 both work (the parity tests run both); every scalar is cast to the
arrays' dtype in the wrapper so float32 stays float32 inside the kernels. exp and tanh come from
`_exp` / `_tanh`: NumPy-accurate libm calls in float64, and vectorisable polynomial versions in
float32 (libm's are scalar calls that block SIMD; this Numba has no SVML).

Does not: run fast under NUMBA_DISABLE_JIT=1 (the same code then runs as plain Python, which the
CI uses for coverage), or use BLAS (that is the "numpy" backend: backend.AUTO records which one
the default picks per op, and why).
"""
import math
import os
import types as types_

import numba
import numpy as np
from numba import njit, prange, types
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .validation import check_array, check_ids, check_same_dtype

# One set of fastmath flags for every kernel. Allowed: reassociation (so reductions vectorise),
# FMA contraction, approximate reciprocals/functions, no signed zeros. Never `nnan`/`ninf`: the
# kernels must still see the -inf of a mask and propagate a NaN rather than assume it away.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# error_model="numpy": a division by zero gives inf/nan like NumPy instead of a Python exception;
# the exception check is a branch inside the loop that stops LLVM from vectorising it.
JIT = dict(fastmath=FASTMATH, error_model="numpy", cache=True)

# Numba's thread pool: Numba's default choice (TBB if installed, else OpenMP, else workqueue),
# with OpenMP's idle threads told to sleep (OMP_WAIT_POLICY=PASSIVE) unless the user set a policy.
# Measured on 2 cores: by default OpenMP threads spin after a kernel, and alternating BLAS calls
# (whose threads also spin) with Numba kernels then ran a training step 3.5x slower; with passive
# threads there is no interference. The workqueue pool sleeps too, but entering a parallel region
# cost 80 us there against 3 us for OpenMP, and a 1M-element loop ran slower on 2 workqueue
# threads than on one (1.8x faster on 2 OpenMP threads). The variable must be set before the
# OpenMP runtime starts, i.e. before the first parallel kernel runs; a runtime that another
# library started earlier keeps its own policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Rows per parallel chunk-reduction (layer-norm dw/db): a fixed count, so sums are reproducible.
N_CHUNKS = 16

# Below this much work (elements touched, or multiply-adds for products) a kernel runs its serial
# build: entering a parallel region costs 3 us (OpenMP, sleeping threads to wake) to 80 us
# (workqueue), more on a busy machine, against ~0.2 us for a plain call, and a decoding step
# or a tiny batch is made of such small calls.
SERIAL_BELOW = 1 << 16


def _kernel(fn):
    """@_kernel: compile `fn` twice from one source, threaded (`prange` splits the loop over
    threads) and, as `.serial`, for the calling thread alone (`prange` is then `range`)."""
    threaded = njit(parallel=True, **JIT)(fn)
    # a renamed copy of the function, so that Numba's on-disk cache keeps the two builds apart
    twin = types_.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    threaded.serial = njit(**JIT)(twin)
    return threaded


def _run(kernel, work, *args):
    """kernel(*args), or its serial build if `work` is below SERIAL_BELOW (see there)."""
    return kernel(*args) if work >= SERIAL_BELOW else kernel.serial(*args)


# ----------------------------------------------------------------------------- exp, tanh

def _exp(x):
    """exp(x) for a scalar. In Python (NUMBA_DISABLE_JIT=1) it is math.exp; compiled, see below."""
    return math.exp(x)


def _tanh(x):
    """tanh(x) for a scalar. In Python (NUMBA_DISABLE_JIT=1) it is math.tanh; compiled, see below."""
    return math.tanh(x)


@intrinsic
def _pow2_f32(typingctx, k):
    """2.0^k as a float32, for a float32 k holding a whole number in [-126, 127], built from its
    bits: the exponent field is k + 127 and the mantissa 0. A conversion, an add, a shift and a
    bitcast, all on 32-bit lanes, which LLVM vectorises; a table of powers of two would need a
    SIMD gather per lookup instead (and Numba would do integer arithmetic on int32 in int64)."""

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(types.float32), codegen


# The float32 exp below is compiled without `reassoc`: it relies on the order of its float
# operations (the Cody-Waite split of ln 2, and 2^n applied as two factors that overflow only in
# the right order). Its flags stay on its instructions when LLVM inlines it into a kernel.
_JIT_ORDERED = dict(JIT, fastmath=FASTMATH - {"reassoc"})


@njit(**_JIT_ORDERED)
def _exp_f32(x):
    # exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln2 / 2 (Cody-Waite: ln 2 split into a
    # short high part, exact in n * hi, and a low correction). exp(r) by its Taylor series to
    # r^6 (error < 3e-7 relative, about float32's own rounding), 2^n from its bits: plain
    # float32 arithmetic, which LLVM turns into SIMD. Every constant is a float32 and n comes
    # from np.floor (a float32), not math.floor (a Python int, which would turn the whole
    # polynomial into float64: 4x slower). The result is (2 p) * 2^(n-1), and 2^(n-1) is
    # 2^h * 2^(n-1-h) with h = (n-1) // 2, so each factor is a normal float32 from n = -150
    # (exp(-104): below the smallest denormal, 0) to n = 128 (x just below the overflow at 88.72).
    if x != x:  # NaN in, NaN out (the clamp below would otherwise turn it into a number)
        return x
    x = min(max(x, np.float32(-104.0)), np.float32(88.8))  # exp(-104) = 0 and exp(88.8) = inf in float32
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1 / 720)
    p = p * r + np.float32(1 / 120)
    p = p * r + np.float32(1 / 24)
    p = p * r + np.float32(1 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    e = n - np.float32(1.0)
    h = np.floor(e * np.float32(0.5))
    return (p + p) * _pow2_f32(h) * _pow2_f32(e - h)


@njit(**JIT)
def _tanh_f32(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact algebra, inf-safe (exp -> inf gives 1, -> 0 gives -1).
    # Absolute error ~1e-7, which is what float32 GELU needs (its output is x * (1 + tanh) / 2).
    return np.float32(1.0) - np.float32(2.0) / (_exp_f32(np.float32(2.0) * x) + np.float32(1.0))


@overload(_exp, jit_options=dict(fastmath=FASTMATH, error_model="numpy"))
def _exp_impl(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


@overload(_tanh, jit_options=dict(fastmath=FASTMATH, error_model="numpy"))
def _tanh_impl(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    return lambda x: math.tanh(x)


@njit(**JIT)
def _row_max(row, n):
    """max(row[:n]), n >= 1, with four independent running maxima. Without fastmath `nnan`,
    LLVM will not turn a max into SIMD, and a single chain waits on every comparison; four
    chains keep four comparisons in flight. (A NaN may be skipped here, but it still reaches
    the result through the exp(x - max) that follows.)"""
    m0 = m1 = m2 = m3 = row[0]
    j = 0
    while j + 4 <= n:
        m0 = max(m0, row[j])
        m1 = max(m1, row[j + 1])
        m2 = max(m2, row[j + 2])
        m3 = max(m3, row[j + 3])
        j += 4
    for jj in range(j, n):
        m0 = max(m0, row[jj])
    return max(max(m0, m1), max(m2, m3))


# ----------------------------------------------------------------------------- matmul (linear)
#
# out = A @ b, b stored (K, N) row-major, A either a (M, K) array or the transpose of a (K, M) one
# (`a_t`), so that x @ w, dout @ w.T (w transposed once) and x.T @ dout (dW) need no copy of the
# big operand. Three levels of blocking, from the inside out:
#
# 1. Register tile (MR x NR = 4 x 32): the 128 running sums of a 4-row, 32-column block of out
#    live in registers (8 AVX-512 or 16 AVX2 registers in float32) for a whole stretch of k. Each
#    step of k loads one 32-wide row of b (SIMD loads) and 4 numbers of A (broadcasts), and does
#    128 multiply-adds: the "outer-product" form of a GEMM micro-kernel (BLIS, OpenBLAS). There
#    are no horizontal sums, so a short k (64, the head size) costs nothing extra.
#    How the sums stay in registers: they are a (4, 32) array on the stack (`_acc_tile`), indexed
#    only by loop counters with constant bounds; LLVM unrolls those loops, replaces the array by
#    scalars and packs the scalars into SIMD registers. Two details matter, measured: the four
#    rows are written out (x0..x3, not a loop over rows), and b is read through a row view
#    `b[k, j:j+NR]` indexed from 0 (Numba wraps negative indices, and an index it cannot prove
#    non-negative, like j + c, turns SIMD loads into gathers: 10x slower).
# 2. Cache blocks: a k-block of KC rows of b's 32-column strip (KC x 32 x 4 B = 32 KB) stays in
#    L1 while the 4-row tiles of a task's rows sweep over it.
# 3. Threads: `prange` over tasks of (MC rows) x (NC columns) of out; each writes only its own
#    block. Column blocks give a one-row product (decoding a token) its parallelism too.

MR, NR = 4, 32  # register tile: rows x columns of out per micro-kernel call
KC = 256  # k block
MC, NC = 64, 128  # rows x columns of out per parallel task


@intrinsic
def _stack_alloc(typingctx, x):
    """A pointer to MR * NR uninitialised numbers of x's type on the stack (an LLVM alloca)."""

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(x), size=context.get_constant(types.intp, MR * NR))

    return types.CPointer(x)(x), codegen


def _acc_tile(x):
    """A (MR, NR) scratch array of x's dtype. In Python (NUMBA_DISABLE_JIT=1) a NumPy array;
    compiled, a view of stack memory (see _acc_tile_impl), which LLVM can keep in registers."""
    return np.empty((MR, NR), dtype=np.asarray(x).dtype)


@overload(_acc_tile, jit_options=dict(fastmath=FASTMATH, error_model="numpy"))
def _acc_tile_impl(x):
    return lambda x: numba.carray(_stack_alloc(x), (MR, NR))


@njit(**JIT)
def _tile_nb(out, a, b, i, j, k0, k1, add):
    """out[i:i+4, j:j+NR] (+)= a[i:i+4, k0:k1] @ b[k0:k1, j:j+NR] with the 4 x NR sums in
    registers (see the section comment). `add`: accumulate into out, else overwrite it."""
    acc = _acc_tile(out[i, j])
    for r in range(MR):
        for c in range(NR):
            acc[r, c] = 0
    for k in range(k0, k1):
        x0, x1, x2, x3 = a[i, k], a[i + 1, k], a[i + 2, k], a[i + 3, k]
        bk = b[k, j : j + NR]
        for c in range(NR):
            y = bk[c]
            acc[0, c] += x0 * y
            acc[1, c] += x1 * y
            acc[2, c] += x2 * y
            acc[3, c] += x3 * y
    _store_tile(out, acc, i, j, add)


@njit(**JIT)
def _tile_t_nb(out, a, b, i, j, k0, k1, add):
    """_tile_nb with A = a.T: out[i:i+4, j:j+NR] (+)= a[k0:k1, i:i+4].T @ b[k0:k1, j:j+NR]. A
    separate function, not a flag: a branch inside the k loop costs 2x (measured). Nor is the
    k loop shared through a helper taking `acc`: handed to a call, the sums stay in memory
    instead of registers (measured: 7x slower)."""
    acc = _acc_tile(out[i, j])
    for r in range(MR):
        for c in range(NR):
            acc[r, c] = 0
    for k in range(k0, k1):
        ak = a[k, i : i + MR]
        x0, x1, x2, x3 = ak[0], ak[1], ak[2], ak[3]
        bk = b[k, j : j + NR]
        for c in range(NR):
            y = bk[c]
            acc[0, c] += x0 * y
            acc[1, c] += x1 * y
            acc[2, c] += x2 * y
            acc[3, c] += x3 * y
    _store_tile(out, acc, i, j, add)


@njit(**JIT)
def _store_tile(out, acc, i, j, add):
    """out[i:i+MR, j:j+NR] (+)= acc"""
    for r in range(MR):
        o = out[i + r, j : j + NR]
        for c in range(NR):
            o[c] = o[c] + acc[r, c] if add else acc[r, c]


@njit(**JIT)
def _rows_nb(out, a, b, i0, i1, j0, j1, k0, k1, add, a_t):
    """out[i0:i1, j0:j1] (+)= A[i0:i1, k0:k1] @ b[k0:k1, j0:j1] one row at a time (SIMD along the
    row of b): the edges that do not fill a register tile, and one-row products."""
    for i in range(i0, i1):
        o = out[i, j0:j1]
        if not add:
            o[:] = 0
        for k in range(k0, k1):
            x = a[k, i] if a_t else a[i, k]
            bk = b[k, j0:j1]
            for c in range(j1 - j0):
                o[c] += x * bk[c]


@njit(**JIT)
def _gemm_nb(out, a, b, i0, i1, j0, j1, kk, add, a_t):
    """out[i0:i1, j0:j1] (+)= A[i0:i1, :kk] @ b[:kk, j0:j1], A = a.T if a_t else a, serially: the
    blocked product every matmul here (linear and attention) is built from. Indices are absolute
    so that b and out keep their C-contiguous rows (a sliced view would not).

    out: (>= i1, >= j1), a: (>= i1, >= kk) or, if a_t, (>= kk, >= i1), b: (>= kk, >= j1).
    """
    i_full = i0 + (i1 - i0) // MR * MR  # rows [i0, i_full) fill whole tiles
    j_full = j0 + (j1 - j0) // NR * NR
    for k0 in range(0, max(kk, 1), KC):  # (kk = 0 still runs once, to write the zeros)
        k1 = min(k0 + KC, kk)
        acc = add or k0 > 0  # later k blocks add to what the first one wrote
        for j in range(j0, j_full, NR):  # b's (KC x NR) strip is reused by every row tile
            for i in range(i0, i_full, MR):
                if a_t:
                    _tile_t_nb(out, a, b, i, j, k0, k1, acc)
                else:
                    _tile_nb(out, a, b, i, j, k0, k1, acc)
        if j_full < j1:  # the last < NR columns
            _rows_nb(out, a, b, i0, i_full, j_full, j1, k0, k1, acc, a_t)
        _rows_nb(out, a, b, i_full, i1, j0, j1, k0, k1, acc, a_t)  # the last < MR rows


@_kernel
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
        _gemm_nb(out, a, b, i0, i1, j0, j1, K, False, a_t)
        if bias.shape[0] > 0:
            for i in range(i0, i1):
                o = out[i, j0:j1]
                bb = bias[j0:j1]
                for j in range(j1 - j0):
                    o[j] += bb[j]


@njit(**JIT)
def _transpose_block(out, a, m, n):
    """out[:n, :m] = a[:m, :n].T, serially (small blocks inside a kernel)."""
    for i0 in range(0, m, TB):  # TB x TB tiles, as in _transpose_nb
        for j in range(n):
            row = out[j]
            for i in range(i0, min(i0 + TB, m)):
                row[i] = a[i, j]


TB = 32  # transpose tile: 32 x 32 floats = 4 KB read and written while in L1


@_kernel
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
    _run(_matmul_nb, out.size * K, out, a, b, bias, bool(a_t))
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
    _run(_transpose_nb, a.size, out, np.ascontiguousarray(a))
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


# ----------------------------------------------------------------------------- layer norm


@_kernel
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


@_kernel
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
    check_same_dtype(x=x, w=w, b=b)
    check_array("x", x, min_ndim=1)
    C = x.shape[-1]
    check_array("w", w, shape=(C,))
    check_array("b", b, shape=(C,))
    x2 = np.ascontiguousarray(x.reshape(-1, C))  # (N, C)
    N = x2.shape[0]
    out = np.empty_like(x2)
    mean = np.empty(N, x.dtype)
    rstd = np.empty(N, x.dtype)
    _run(_layernorm_forward_nb, x2.size, out, mean, rstd, x2, np.ascontiguousarray(w), np.ascontiguousarray(b), x.dtype.type(eps))
    return out.reshape(x.shape), (x2, np.ascontiguousarray(w), mean, rstd, x.shape)


def layernorm_backward(dout, cache):
    """dout: (..., C) -> dx: (..., C), dw: (C,), db: (C,)"""
    x2, w, mean, rstd, shape = cache
    N, C = x2.shape
    dx = np.empty_like(x2)
    n_chunks = max(1, min(N_CHUNKS, N))
    dw_part = np.zeros((n_chunks, C), x2.dtype)
    db_part = np.zeros((n_chunks, C), x2.dtype)
    _run(_layernorm_backward_nb, x2.size, dx, dw_part, db_part, np.ascontiguousarray(dout.reshape(N, C)), x2, mean, rstd, w)
    return dx.reshape(shape), dw_part.sum(axis=0), db_part.sum(axis=0)


# ----------------------------------------------------------------------------- GELU

_GELU_K = math.sqrt(2.0 / math.pi)


@_kernel
def _gelu_forward_nb(out, x):
    """Numba kernel for `layers.gelu_forward`. out, x: (n,) flat

    out = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2 / pi)
    """
    k = x.dtype.type(_GELU_K)
    a = x.dtype.type(0.044715)
    half, one = x.dtype.type(0.5), x.dtype.type(1.0)
    for i in prange(x.shape[0]):  # element i writes only out[i]
        xi = x[i]
        out[i] = half * xi * (one + _tanh(k * (xi + a * xi * xi * xi)))


@_kernel
def _gelu_backward_nb(dx, dout, x):
    """Numba kernel for `layers.gelu_backward`. dx, dout, x: (n,) flat"""
    k = x.dtype.type(_GELU_K)
    a = x.dtype.type(0.044715)
    a3 = x.dtype.type(3 * 0.044715)
    half, one = x.dtype.type(0.5), x.dtype.type(1.0)
    for i in prange(x.shape[0]):  # element i writes only dx[i]
        xi = x[i]
        t = _tanh(k * (xi + a * xi * xi * xi))
        # forward was: out = 0.5 x (1 + t), t = tanh(u(x)), u = k (x + a x^3)
        #   dout/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) u'(x),  u'(x) = k (1 + 3 a x^2)
        dx[i] = dout[i] * (half * (one + t) + half * xi * (one - t * t) * k * (one + a3 * xi * xi))


def gelu_forward(x):
    """x: (...) -> out: (...), cache = (x,)"""
    check_array("x", x, floating=True)
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _run(_gelu_forward_nb, x.size, out.reshape(-1), x.reshape(-1))
    return out, (x,)


def gelu_backward(dout, cache):
    """dout: (...) -> dx: (...)"""
    (x,) = cache
    dx = np.empty_like(x)
    _run(_gelu_backward_nb, x.size, dx.reshape(-1), np.ascontiguousarray(dout).reshape(-1), x.reshape(-1))
    return dx


# ----------------------------------------------------------------------------- cross-entropy


@_kernel
def _cross_entropy_forward_nb(losses, lse, logits, targets, ignore_index):
    """Numba kernel for `layers.cross_entropy_forward` (per-row part; the mean is the wrapper's).

    losses: (N,) loss of each row (0 where ignored), lse: (N,) log-sum-exp of each row,
    logits: (N, V), targets: (N,) int
    """
    N, V = logits.shape
    for i in prange(N):  # row i writes only losses[i], lse[i]
        m = _row_max(logits[i], V)
        s = logits.dtype.type(0)
        for j in range(V):  # subtract the max first: exp never overflows, the largest term is 1
            s += _exp(logits[i, j] - m)
        lse[i] = m + math.log(s)
        t = targets[i]
        losses[i] = 0 if t == ignore_index else lse[i] - logits[i, t]


@_kernel
def _cross_entropy_backward_nb(dlogits, logits, lse, targets, ignore_index, scale):
    """Numba kernel for `layers.cross_entropy_backward`.

    dlogits, logits: (N, V), lse: (N,), targets: (N,), scale = dout / n_valid (logits' dtype)
    """
    N, V = logits.shape
    for i in prange(N):  # row i writes only dlogits[i]
        t = targets[i]
        if t == ignore_index:
            for j in range(V):
                dlogits[i, j] = 0
            continue
        # d loss_i / d logits_i = softmax(logits_i) - onehot(t); softmax recomputed from the lse
        for j in range(V):
            dlogits[i, j] = _exp(logits[i, j] - lse[i]) * scale
        dlogits[i, t] -= scale


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """logits: (..., V) float, targets: (...) int in [0, V) or == ignore_index
    -> loss: scalar (0-d array of logits.dtype), cache = (logits2, lse, targets1, n_valid, ignore_index)
    """
    check_array("logits", logits, min_ndim=1, floating=True)
    check_array("targets", targets, shape=logits.shape[:-1])
    V = logits.shape[-1]
    check_ids("targets", targets, V, allow=ignore_index)
    logits2 = np.ascontiguousarray(logits.reshape(-1, V))  # (N, V)
    t1 = np.ascontiguousarray(targets.reshape(-1), dtype=np.int64)  # (N,)
    N = logits2.shape[0]
    losses = np.empty(N, logits.dtype)
    lse = np.empty(N, logits.dtype)
    _run(_cross_entropy_forward_nb, logits2.size, losses, lse, logits2, t1, ignore_index)
    n_valid = int(np.count_nonzero(t1 != ignore_index))
    loss = losses.sum() / max(n_valid, 1)  # every target ignored: loss 0, not NaN
    return np.asarray(loss, dtype=logits.dtype), (logits2, lse, t1, n_valid, ignore_index, logits.shape)


def cross_entropy_backward(dout, cache):
    """dout: scalar -> dlogits: (..., V)"""
    logits2, lse, t1, n_valid, ignore_index, shape = cache
    dlogits = np.empty_like(logits2)
    scale = logits2.dtype.type(float(dout) / max(n_valid, 1))
    _run(_cross_entropy_backward_nb, logits2.size, dlogits, logits2, lse, t1, ignore_index, scale)
    return dlogits.reshape(shape)


# ----------------------------------------------------------------------------- AdamW


@_kernel
def _adamw_update_nb(p, g, m, v, wd, lr, beta1, beta2, eps, bc1, bc2, decoupled):
    """Numba kernel for `optim.adamw_update`, in place, one pass over the flat buffers.

    p, g, m, v: (n,); wd: (n,) per-element weight decay or (1,) for one value for all;
    bc1 = 1 - beta1^t, bc2 = 1 - beta2^t (bias corrections); scalars in p's dtype.
    """
    one = p.dtype.type(1.0)
    per_element = wd.shape[0] > 1
    for i in prange(p.shape[0]):  # element i writes only p[i], m[i], v[i]
        pi, gi = p[i], g[i]
        wdi = wd[i] if per_element else wd[0]
        if decoupled:
            pi -= lr * wdi * pi  # AdamW: decay the weight itself, outside the moments
        else:
            gi += wdi * pi  # Adam + L2: decay enters the gradient
        mi = beta1 * m[i] + (one - beta1) * gi
        vi = beta2 * v[i] + (one - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps)


def adamw_update(p, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=True):
    """One in-place Adam/AdamW step, fused into one pass (see `optim.adamw_update`).

    p, g, m, v: same shape and dtype, C-contiguous (updated in place, so no copies are made).
    weight_decay: a scalar or an array broadcastable to p (e.g. a 0/1 decay mask).
    """
    if t < 1:
        raise ValueError(f"t: expected the 1-based step number, got {t}")
    check_same_dtype(p=p, g=g, m=m, v=v)
    for name, a in (("g", g), ("m", m), ("v", v)):
        check_array(name, a, shape=p.shape)
    for name, a in (("p", p), ("m", m), ("v", v)):
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous array (it is updated in place), got strides {a.strides}")
    dt = p.dtype.type
    if np.ndim(weight_decay) == 0:
        wd = np.full(1, weight_decay, dtype=p.dtype)
    else:
        wd = np.ascontiguousarray(np.broadcast_to(np.asarray(weight_decay, dtype=p.dtype), p.shape)).reshape(-1)
    _run(
        _adamw_update_nb, p.size, p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1), v.reshape(-1), wd,
        dt(lr), dt(beta1), dt(beta2), dt(eps), dt(1 - beta1**t), dt(1 - beta2**t), bool(decoupled),
    )  # fmt: skip


def num_threads():
    """Threads Numba's prange uses (numba.set_num_threads changes it)."""
    return numba.get_num_threads()
