"""Numba matmul: the kernel behind `layers.linear_forward` / `layers.linear_backward`, plus the
bare `matmul` the benchmarks and tests call.

Dimension legend: N rows (B * T flattened), C_in/C_out linear sizes; out = A @ B with A (M, K)
and B (K, Nc) for the product itself (Nc: columns of out).

How a product of more than ROWS rows is built (the BLIS / GotoBLAS scheme):
1. B packed into panels (`_pack_nb`, one parallel pass over B per call): NR columns by KC rows
   (64 KB of float32: 64 x 256 with AVX-512's tile, 16 x 1024 with AVX2's; jit.TILES),
   each panel contiguous, so the micro-kernel reads B as one unit-stride stream whatever B's own
   layout, and the last panel zero-padded (the columns past a multiple of NR run through the full
   tile). B may be a transposed view (w.T for dx = dout @ w.T, wte.T for the tied head): it is
   read as it is, never copied first.
2. A is read in place: a micro-panel of MR rows of A is only KC x MR numbers and stays in L1
   while it sweeps the task's panels. For A = a.T (dw = x.T @ dout) it is MR adjacent numbers of
   each of KC rows of a, KC cache lines: read in place with AVX-512's tiles, copied into a
   contiguous KC x MR block per row tile with AVX2's (jit.TILE.pack_a_t: KC lines and a panel
   overfill a 32 KB L1). The last < MR rows are copied into a zero-padded MR-row block.
3. Register tile: `_tile` / `_tile_t` keep MR x NR sums in registers (4 x 64 in 16 AVX-512
   registers of float32; 5 x 16 in 10 AVX2 ones, a row more than jit.gemm_nb's 4 x 16 in the
   attention products, since 8 chains of multiply-adds barely cover the latency: jit.TILES) for
   a whole KC stretch of k and store them straight into out with the epilogue fused: the bias on
   the first k block, or `add` accumulating into what out holds.
4. Threads: a 2-D grid of tasks over out (row x column blocks, `_split`), each writing only its
   own block; a task's panels (cols / NR of them, KC x NR each) stay in L2 for all its rows.
5. Fused db: the pass that packs dout for dw = x.T @ dout also sums its columns (db), so db costs
   no extra read of dout.
At most ROWS rows (decoding) the product is memory-bound and B is read in place, never packed:
`_rows_nb` (w as stored) and `_dots_nb` (w transposed, the tied head).

Against BLAS (benchmarks/README.md, "The packed matmul", "Threads that wait briefly" and
"Register tiles per CPU"): with AVX-512 the product is level with OpenBLAS's sgemm at the large
training shapes (90-108 %) and 13-15 % behind it at the smallest (1024 x 128 x 384 and x 512);
with AVX2 it runs at 88-96 % and 78 %. Over whole training steps it is ahead (one thread pool, no
BLAS threads spinning beside the Numba kernels), so `backend.AUTO` runs it for the linear layers. At up to 8 rows (decoding) the weights are streamed as fast as OpenBLAS's
matrix-vector product does it (alone: 24-40 GB/s against 23-32 on GPT-2's four block matrices)
now that the threads spin briefly between kernels instead of sleeping (`jit.SPIN_COUNT`).

Does not: pack A as a whole (it is read in place, or with AVX2 a transposed A's micro-panels are
copied one at a time, above), use a narrower tile for the last < NR columns (they
are zero-padded: a V = 65 head computes 128 columns with AVX-512's tile, 80 with AVX2's), or split the k axis of a packed product over
threads (every element of out is one task's sequential sum, so results do not depend on the
thread count; the few-row kernels cut k into a fixed number of chunks for the same reason).
"""
import math

import numba
import numpy as np
from numba import njit, prange

from ..layers import check_linear
from ..validation import check_array, check_same_dtype
from .jit import JIT, TILE, kernel, linear_tile_scratch, run, transpose_block
from .jit import LINEAR_MR as MR  # register tile: MR x NR (4 x 64 with AVX-512, 5 x 16 with AVX2)
from .jit import WIDE_NR as NR

KC = TILE.linear_kc  # k block: a packed panel of B is KC x NR (64 KB of float32, in L2)
PACK_A_T = TILE.pack_a_t  # copy A = a.T's micro-panels (docstring, 2)
ROWS = 8  # products of at most this many rows (decoding) read B in place: `_rows_nb`, `_dots_nb`
KS, QN = 8, 256  # _rows_nb: chunks of k, columns per task of its sum
QT = 16  # _dots_nb: rows of b per task


@kernel
def _pack_nb(bp, b, b_t, colsum):
    """Numba kernel packing B for `_gemm_nb`: bp[kb, p, k, c] = B[kb KC + k, p NR + c], zero past
    B's last row and column (B = b.T if b_t). colsum: (Nc,) zeroed, receives B's column sums
    (db, in the same pass), or (0,) for none (only when not b_t).

    bp: (ceil(K / KC), ceil(Nc / NR), KC, NR); b: (K, Nc), or (Nc, K) if b_t.
    """
    Nc, K = b.shape if b_t else b.shape[::-1]
    kblk = bp.shape[2]  # KC, or K itself when K < KC
    for p in prange(bp.shape[1]):  # panel p owns columns [p NR, p NR + NR) of bp and colsum: no overlap
        jp = p * NR
        w = min(NR, Nc - jp)
        for kb in range(bp.shape[0]):
            k0 = kb * kblk
            kc = min(kblk, K - k0)
            dst = bp[kb, p]
            if b_t:  # B[k, j] = b[j, k]: a w x kc block of b, transposed into the panel in 8 x 8 blocks
                transpose_block(dst, b[jp : jp + w, k0 : k0 + kc], w, kc)
            else:
                for k in range(kc):
                    src, d = b[k0 + k, jp : jp + w], dst[k]
                    for c in range(w):
                        d[c] = src[c]
                if colsum.shape[0] > 0:
                    sums = colsum[jp : jp + w]
                    for k in range(kc):
                        d = dst[k]
                        for c in range(w):
                            sums[c] += d[c]
            for k in range(kblk):  # the zero padding: columns past Nc, rows past K
                d = dst[k]
                for c in range(w if k < kc else 0, NR):
                    d[c] = 0


@njit(**JIT)
def _tile(out, oi, oj, a, ai, k0, kc, panel, first, add, bias, bj):
    """out[oi:oi+MR, oj:oj+NR] (+)= a[ai:ai+MR, k0:k0+kc] @ panel[:kc] (+ bias[bj:bj+NR] if first)

    The MR x NR sums stay in registers (jit.linear_tile_scratch); every index into them is a
    constant after unrolling, which is what lets LLVM keep them there. `first`: the first k block
    (the bias goes in, and out is overwritten unless `add`); later blocks always accumulate.
    MR is 4 or 5 (jit.TILES), a constant when this compiles: with 4, the fifth row's lines are
    dead code and vanish.
    """
    acc = linear_tile_scratch(out[oi, oj])
    for r in range(MR):
        for c in range(NR):
            acc[r, c] = 0
    a0, a1, a2, a3 = a[ai, k0:], a[ai + 1, k0:], a[ai + 2, k0:], a[ai + 3, k0:]
    a4 = a[ai + 4, k0:] if MR == 5 else a0
    for k in range(kc):
        x0, x1, x2, x3, x4 = a0[k], a1[k], a2[k], a3[k], a4[k]
        bk = panel[k]
        for c in range(NR):
            y = bk[c]
            acc[0, c] += x0 * y
            acc[1, c] += x1 * y
            acc[2, c] += x2 * y
            acc[3, c] += x3 * y
            if MR == 5:
                acc[4, c] += x4 * y
    _store(out, oi, oj, acc, first, add, bias, bj)


@njit(**JIT)
def _tile_t(out, oi, oj, a, ai, k0, kc, panel, first, add, bias, bj):
    """_tile with A = a.T: a[k0:k0+kc, ai:ai+MR].T @ panel[:kc]. A separate function rather than a
    flag: a branch inside the k loop costs 2x (measured on jit.gemm_nb's tiles)."""
    acc = linear_tile_scratch(out[oi, oj])
    for r in range(MR):
        for c in range(NR):
            acc[r, c] = 0
    for k in range(kc):
        ak = a[k0 + k, ai : ai + MR]
        x0, x1, x2, x3 = ak[0], ak[1], ak[2], ak[3]
        x4 = ak[4] if MR == 5 else x0
        bk = panel[k]
        for c in range(NR):
            y = bk[c]
            acc[0, c] += x0 * y
            acc[1, c] += x1 * y
            acc[2, c] += x2 * y
            acc[3, c] += x3 * y
            if MR == 5:
                acc[4, c] += x4 * y
    _store(out, oi, oj, acc, first, add, bias, bj)


@njit(**JIT)
def _store(out, oi, oj, acc, first, add, bias, bj):
    """The epilogue: out[oi:oi+MR, oj:oj+NR] = acc (+ out) (+ bias[bj:bj+NR])."""
    keep = add or not first
    for r in range(MR):
        o = out[oi + r, oj : oj + NR]
        for c in range(NR):
            o[c] = o[c] + acc[r, c] if keep else acc[r, c]
    if first and bias.shape[0] > 0:
        bb = bias[bj : bj + NR]
        for r in range(MR):
            o = out[oi + r, oj : oj + NR]
            for c in range(NR):
                o[c] += bb[c]


@kernel
def _gemm_nb(out, a, bp, bias, a_t, add, rows, cols):
    """Numba kernel for `layers.linear_forward`'s `x @ w + b` and both products of
    `layers.linear_backward`: out (+)= A @ B + bias, A = a.T if a_t else a, B packed in bp.

    out: (M, Nc); a: (M, K), or (K, M) if a_t; bp: B packed by `_pack_nb`; bias: (Nc,) or (0,);
    add: accumulate into out. rows x cols: the task block (multiples of MR and NR). All
    C-contiguous.
    """
    M, Nc = out.shape
    K = a.shape[0] if a_t else a.shape[1]
    n_j = (Nc + cols - 1) // cols
    for t in prange(((M + rows - 1) // rows) * n_j):  # task t owns out[i_lo:i_hi, j_lo:j_hi]: no overlap
        i_lo, j_lo = (t // n_j) * rows, (t % n_j) * cols
        i_hi, j_hi = min(i_lo + rows, M), min(j_lo + cols, Nc)
        i_full = i_lo + (i_hi - i_lo) // MR * MR  # rows [i_lo, i_full) fill whole tiles
        pad = np.empty((MR, NR), out.dtype)  # a partial tile of out
        kblk = bp.shape[2]  # KC, or K itself when K < KC
        edge = np.zeros((kblk, MR) if a_t else (MR, kblk), out.dtype)  # the last < MR rows of A, zero-padded
        a_blk = np.empty((kblk if PACK_A_T and a_t else 0, MR), out.dtype)  # a whole micro-panel of A = a.T
        for kb in range(bp.shape[0]):
            k0 = kb * kblk
            kc = min(kblk, K - k0)  # (K = 0: one block of kc = 0, so out = bias)
            first = kb == 0
            for r in range(i_hi - i_full):
                for k in range(kc):
                    if a_t:
                        edge[k, r] = a[k0 + k, i_full + r]
                    else:
                        edge[r, k] = a[i_full + r, k0 + k]
            for i in range(i_lo, i_hi, MR):
                h = min(MR, i_hi - i)
                src, si, sk = (a, i, k0) if h == MR else (edge, 0, 0)  # A's micro-panel
                if PACK_A_T and a_t and h == MR:  # copied once for all the task's panels
                    for k in range(kc):
                        src_k, dst_k = a[k0 + k, i : i + MR], a_blk[k]
                        for r in range(MR):
                            dst_k[r] = src_k[r]
                    src, si, sk = a_blk, 0, 0
                for j in range(j_lo, j_hi, NR):  # the task's panels, in L2, swept by each row tile
                    w, panel = min(NR, j_hi - j), bp[kb, j // NR]
                    if h == MR and w == NR:  # a whole tile: straight into out, epilogue fused
                        if a_t:
                            _tile_t(out, i, j, src, si, sk, kc, panel, first, add, bias, j)
                        else:
                            _tile(out, i, j, src, si, sk, kc, panel, first, add, bias, j)
                        continue
                    if a_t:  # a partial tile: into `pad`, then the part of it that exists
                        _tile_t(pad, 0, 0, src, si, sk, kc, panel, True, False, bias[:0], 0)
                    else:
                        _tile(pad, 0, 0, src, si, sk, kc, panel, True, False, bias[:0], 0)
                    for r in range(h):
                        o, q = out[i + r, j : j + w], pad[r, :w]
                        for c in range(w):
                            o[c] = o[c] + q[c] if add or not first else q[c]
                        if first and bias.shape[0] > 0:
                            bb = bias[j : j + w]
                            for c in range(w):
                                o[c] += bb[c]


@kernel
def _dots_nb(out, a, b, bias):
    """Numba kernel for `layers.linear_forward` on at most ROWS rows with w given transposed
    (decoding through the tied LM head, which reads wte (V, C) as w.T): out = a @ b.T + bias,
    each out[r, j] a dot product of a[r] with row j of b, in SIMD lanes (fastmath reassoc); every
    row of b is read once, contiguously, for all M rows of a.

    out: (M, Nc), a: (M, K), b: (Nc, K), bias: (Nc,) or (0,); M <= ROWS.
    """
    M, Nc = out.shape
    K = a.shape[1]
    zero = np.zeros(1, dtype=out.dtype)[0]
    for t in prange((Nc + QT - 1) // QT):  # task t owns columns [t QT, t QT + QT) of out: no overlap
        for j in range(t * QT, min(t * QT + QT, Nc)):
            bj = b[j]
            for r in range(M):
                ar = a[r]
                acc = zero
                for k in range(K):
                    acc += ar[k] * bj[k]
                out[r, j] = acc + bias[j] if bias.shape[0] > 0 else acc


@kernel
def _rows_nb(out, part, a, b, bias):
    """Numba kernel for `layers.linear_forward` on at most ROWS rows (decoding a token):
    out = a @ b + bias with b read in place. Such a call is memory-bound (each weight is used at
    most ROWS times), so it streams every weight once, in whole rows, and does not pack: the k
    axis is cut into KS chunks (a fixed number: the sums do not depend on the thread count),
    chunk t adds a[:, k] * b[k] over its rows of b into part[t], and a second loop sums the
    chunks. (Splitting the columns instead made every task read short stretches of every row of
    b: 3-4x slower on GPT-2's 768 x 2304.)

    out: (M, Nc), part: (KS, M, Nc) scratch, a: (M, K), b: (K, Nc), bias: (Nc,) or (0,); M <= ROWS.
    """
    M, Nc = out.shape
    K = a.shape[1]
    step = (K + KS - 1) // KS
    for t in prange(KS):  # chunk t owns part[t]: no overlap
        p = part[t]
        p[:] = 0
        k0, k1 = t * step, min(K, t * step + step)
        k = k0
        while k + 4 <= k1:  # four rows of b per pass over part[t]: a quarter of its loads and stores
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            for r in range(M):
                x0, x1, x2, x3, o = a[r, k], a[r, k + 1], a[r, k + 2], a[r, k + 3], p[r]
                for c in range(Nc):
                    o[c] += x0 * b0[c] + x1 * b1[c] + x2 * b2[c] + x3 * b3[c]
            k += 4
        for kk in range(k, k1):
            bk = b[kk]
            for r in range(M):
                x, o = a[r, kk], p[r]
                for c in range(Nc):
                    o[c] += x * bk[c]
    for t in prange((Nc + QN - 1) // QN):  # task t owns columns [j0, j1) of out: no overlap
        j0, j1 = t * QN, min(t * QN + QN, Nc)
        for r in range(M):
            o = out[r, j0:j1]
            o[:] = part[0, r, j0:j1]
            for q in range(1, KS):
                pq = part[q, r, j0:j1]
                for c in range(j1 - j0):
                    o[c] += pq[c]
            if bias.shape[0] > 0:
                bb = bias[j0:j1]
                for c in range(j1 - j0):
                    o[c] += bb[c]


def _split(M, Nc, threads):
    """The task block (rows, cols) of an (M, Nc) product: at most 256 x 256, halved (the longer
    side first, never below one tile) until there are at least 2 tasks per thread, then evened
    out so the blocks of a side are equal (384 rows: two blocks of 192, not 256 + 128, which left
    one thread a third idle under the static schedule). Whole tiles (multiples of MR and NR).
    The result of every element is the same whatever the split (module docstring, 4)."""
    def up(n, m):
        return max(m, -(-n // m) * m)

    rows, cols = min(256 // MR * MR, up(M, MR)), min(256, up(Nc, NR))
    while -(-M // rows) * -(-Nc // cols) < 2 * threads and (rows > MR or cols > NR):
        if cols > NR and (cols >= rows or rows == MR):
            cols = up(cols // 2, NR)
        else:
            rows = up(rows // 2, MR)
    return up(-(-M // -(-M // rows)), MR), up(-(-Nc // -(-Nc // cols)), NR)


def _operand(m):
    """(array, transposed) such that m == array.T if transposed else array, with array
    C-contiguous: a transposed view (wte.T for the tied head) is read as it is, not copied."""
    if m.flags.c_contiguous or not m.flags.f_contiguous:
        return np.ascontiguousarray(m), False
    return m.T, True


def _product(A, B, *, bias=None, out=None, add=False, colsum=None):
    """out (+)= A @ B (+ bias), A: (M, K), B: (K, Nc) in any layout (a C- or F-ordered array is
    read in place, anything else copied once). At most ROWS rows and no `add`/`colsum`: _rows_nb;
    otherwise _pack_nb + _gemm_nb. out is allocated unless given (C-contiguous, of A's dtype).
    colsum: a zeroed (Nc,) array that receives B's column sums, or None."""
    (M, K), Nc = A.shape, B.shape[1]
    if M <= ROWS and not add and colsum is None and M * Nc:  # decoding: the one-row kernels read A as stored
        A = np.ascontiguousarray(A)
        b, b_t = _operand(B)
        out = np.empty((M, Nc), dtype=A.dtype) if out is None else out
        bias = np.empty(0, A.dtype) if bias is None else np.ascontiguousarray(bias)
        if b_t:
            run(_dots_nb, M * Nc * max(K, 1), out, A, b, bias)
        else:
            run(_rows_nb, M * Nc * max(K, 1), out, np.empty((KS, M, Nc), A.dtype), A, b, bias)
        return out
    (a, a_t), (b, b_t) = _operand(A), _operand(B)
    if out is None:
        out = np.empty((M, Nc), dtype=a.dtype)
    empty = np.empty(0, a.dtype)
    bias = empty if bias is None else np.ascontiguousarray(bias)
    if out.size == 0:  # no rows or no columns: nothing to tile (B's column sums may still be wanted)
        if colsum is not None:
            colsum += B.sum(axis=0)
        return out
    if colsum is not None and b_t:  # the fused column sums need B's rows: copy it
        b, b_t = np.ascontiguousarray(B), False
    kblk = min(KC, max(K, 1))
    bp = np.empty((-(-max(K, 1) // kblk), -(-Nc // NR), kblk, NR), a.dtype)
    run(_pack_nb, K * Nc, bp, b, b_t, empty if colsum is None else colsum)
    rows, cols = _split(M, Nc, numba.get_num_threads())
    run(_gemm_nb, M * Nc * max(K, 1), out, a, bp, bias, a_t, bool(add), rows, cols)
    return out


def matmul(a, b):
    """a: (M, K) @ b: (K, N) -> (M, N) with the packed Numba kernel (for benchmarks and tests)."""
    check_same_dtype(a=a, b=b)
    check_array("a", a, ndim=2)
    check_array("b", b, shape=(a.shape[1], None))
    return _product(a, b)


def linear_forward(x, w, b=None):
    """x: (..., C_in), w: (C_in, C_out), b: (C_out,) or None -> out: (..., C_out), cache

    cache = (x2, w, has_bias, lead_shape) with x2 = x as a C-contiguous (N, C_in) array. w may be
    C- or F-ordered (the tied head passes wte.T): both are read in place.
    """
    check_linear(x, w, b)
    x2 = np.ascontiguousarray(x.reshape(math.prod(x.shape[:-1]), w.shape[0]))  # (N, C_in); -1 is ambiguous if C_in = 0
    out = _product(x2, w, bias=b)  # (N, C_out), the bias added in the product's epilogue
    return out.reshape(x.shape[:-1] + (w.shape[1],)), (x2, w, b is not None, x.shape[:-1])


def linear_backward(dout, cache):
    """dout: (..., C_out) -> dx: (..., C_in), dw: (C_in, C_out) in w's own order (C or F), db:
    (C_out,) or None"""
    x2, w, has_bias, lead = cache
    C_in, C_out = w.shape
    d2 = np.ascontiguousarray(dout.reshape(len(x2), C_out))  # (N, C_out)
    # forward was: out = x @ w + b  ->  dx = dout @ w.T (w read transposed while packed),
    # dw = x.T @ dout (x read transposed in place), db = sum of dout's rows (while dout is packed)
    dx = _product(d2, w.T)
    db = np.zeros(C_out, d2.dtype) if has_bias else None
    if w.flags.c_contiguous or not w.flags.f_contiguous:
        dw = _product(x2.T, d2, colsum=db)  # (C_in, C_out)
    else:  # an F-ordered w (wte.T): dw.T = dout.T @ x, C-ordered (V, C) like wte itself
        dw = _product(d2.T, x2).T
        if has_bias:
            db[:] = d2.sum(axis=0)
    return dx.reshape(lead + (C_in,)), dw, db
