"""Fused scaled dot-product attention in Numba: the kernels behind `attention.attention_forward`
and `attention.attention_backward` for the causal and unmasked cases a GPT uses.

Dimension legend: B batch, NH heads, BH = B * NH (any leading dims flattened), Tq queries,
Tk keys, hs head size (queries and keys), hv value size.

Forward, per (batch, head) and query row i, in one pass:
    s_j = scale * q_i . k_j  for the keys i may see       (causal: j <= i + Tk - Tq)
    m = max_j s_j,  l = sum_j exp(s_j - m),  lse_i = m + log l
    out_i = sum_j exp(s_j - m) / l * v_j
computed for a block of R query rows at a time (an R x Tk scratch array per thread, not the
Tq x Tk attention matrix, which is never stored). The products S = Q K^T and P V run on the
matmul's register tiles (`jit.gemm_nb`: 4 x 64 and a 4 x 32 strip with AVX-512, 4 x 16 and 4 x 8
with AVX2), each 4-row tile only as wide as its last row may see (the causal triangle, rounded up
to whole strips: jit.NR keys), so the masked half is skipped rather
than computed and discarded. The cache keeps q, k, v, out and the row log-sum-exp `lse` (Tq
numbers per head).

Decoding (`_attention_rows_nb`): when every query sees every key (one new token, or
causal=False) and a key/value head has at most FEW_ROWS query rows, the tiles would hold mostly
empty rows. That kernel computes each score as a dot product read straight from a row of K (no
transposed copy), adds rows of V for out, and keeps the same lse; the backward is the same.

Backward, FlashAttention-2 style (Dao 2023, Algorithm 2), recomputing each row of
probabilities from q, k and the saved lse instead of reading a stored matrix:
    p_j = exp(s_j - lse_i),  D_i = dout_i . out_i  (= sum_j p_j dp_j)
    dv_j += p_j dout_i,  dp_j = dout_i . v_j,  ds_j = p_j (dp_j - D_i)
    dq_i = scale * sum_j ds_j k_j,  dk_j += scale * ds_j q_i
Threads split the (batch, head) axis: each owns its own dq, dk, dv slices, so the dk/dv sums
over query rows never race (FA-2's other option, threads over key blocks, is for when BH is
smaller than the core count).

Why not FlashAttention's online softmax over key blocks: on a GPU it keeps a row block in
on-chip memory; on a CPU a whole score row (Tk <= a few thousand floats) already sits in L1,
and the two-pass softmax over it is simpler to read. The memory saving (no Tq x Tk matrix) is
the same.

Does not: support a key-padding mask in the fused kernel (the wrapper falls back to the NumPy
reference for that case, with the reference's cache), dropout on the weights, or Tq > Tk with
causal=True (rejected, as in the reference).
"""
import math

import numpy as np
from numba import njit, prange

from .. import attention as reference
from .jit import JIT, MR, NR, exp, gemm_nb, kernel, row_max, run, transpose_block

# Query rows per block. dK = dS^T Q and dV = P^T dO sum over the block's rows, so a longer block
# means fewer passes over dK and dV; the scratch P and dS blocks are R x Tk each.
R = 64


@njit(**JIT)
def _n_visible(i, offset, Tk, causal):
    """Number of keys query row i may attend to (keys 0 .. n-1)."""
    return min(i + offset + 1, Tk) if causal else Tk


@njit(**JIT)
def _n_computed(i, offset, Tk, causal):
    """Columns of scores computed for the row tile whose last row is i: the keys row i sees,
    rounded up to whole NR-column register tiles (a partial tile costs more than the masked
    columns it would skip; they are set to 0 afterwards)."""
    return min((_n_visible(i, offset, Tk, causal) + NR - 1) // NR * NR, Tk)


@njit(**JIT)
def _scores(s, q, k_t, i0, m, offset, Tk, causal):
    """s[:m, :n] = Q_blk @ K^T for the block's rows i0 .. i0+m-1, tile row by tile row, each only
    as wide as its last row can see (the causal triangle, to NR columns). Returns n, the
    widest row's width."""
    hs = q.shape[1]
    n_hi = 0
    for g in range(0, m, MR):
        g1 = min(g + MR, m)
        n_g = _n_computed(i0 + g1 - 1, offset, Tk, causal)
        gemm_nb(s, q[i0:], k_t, g, g1, 0, n_g, hs, False, False)
        n_hi = n_g
    return n_hi


@njit(**JIT)
def _softmax_row(row, n, scale):
    """row[:n] <- softmax(scale * row[:n]) in place (n >= 1); returns its log-sum-exp, the lse the
    cache keeps. Shared by both forward kernels."""
    mx = row_max(row, n) * scale  # scale > 0, so max(scale * s) = scale * max(s)
    l = row.dtype.type(0)
    for j in range(n):  # subtracting the max: the largest term is exp(0) = 1
        e = exp(row[j] * scale - mx)
        row[j] = e
        l += e
    inv = 1 / l
    for j in range(n):
        row[j] *= inv
    return mx + math.log(l)


@kernel
def _attention_forward_nb(out, lse, q, k, v, Tk, causal, scale, R):
    """Numba kernel for `attention.attention_forward` (causal or unmasked).

    out: (BH, Tq, hv), lse: (BH, Tq), q: (BH, Tq, hs), k: (BKV, N, hs), v: (BKV, N, hv) of which
    the first Tk <= N rows are the keys and values (the rest, e.g. a KV cache's free rows, is
    never read); BKV = BH / n_rep (grouped-query attention: query head bh reads key/value head
    bh // n_rep; n_rep = 1 otherwise); causal: bool, scale: 1 / sqrt(hs) in q's dtype. All
    C-contiguous.
    """
    BH, Tq, hs = q.shape
    hv = v.shape[2]
    n_rep = BH // k.shape[0]
    offset = Tk - Tq  # query i sits at absolute position i + offset
    zero = q.dtype.type(0)
    for bh in prange(BH):  # (batch, head) bh writes only out[bh] and lse[bh]
        k_t = np.empty((hs, Tk), dtype=q.dtype)  # K^T, so that S = Q K^T reads rows of K^T
        transpose_block(k_t, k[bh // n_rep], Tk, hs)
        s = np.empty((R, Tk), dtype=q.dtype)  # scores, then probabilities, of R query rows
        for i0 in range(0, Tq, R):
            m = min(R, Tq - i0)  # rows in this block
            # S = Q_blk @ K^T (raw dot products; the scale is applied in the softmax)
            _scores(s, q[bh], k_t, i0, m, offset, Tk, causal)
            for r in range(m):
                n = _n_visible(i0 + r, offset, Tk, causal)
                g1 = min(r - r % MR + MR, m)  # end of row r's tile row: its scores are n_c wide
                n_c = _n_computed(i0 + g1 - 1, offset, Tk, causal)
                row = s[r]
                lse[bh, i0 + r] = _softmax_row(row, n, scale)
                for j in range(n, n_c):  # computed but masked (j beyond what row r may see): weight 0
                    row[j] = zero
            # out_blk = P @ V, tile row by tile row, each summing over the keys its rows see
            for g in range(0, m, MR):
                g1 = min(g + MR, m)
                n_g = _n_computed(i0 + g1 - 1, offset, Tk, causal)
                gemm_nb(out[bh, i0:], s, v[bh // n_rep], g, g1, 0, hv, n_g, False, False)


# Query rows per key/value head up to which a call whose queries all see every key runs on
# _attention_rows_nb (decoding: one token, times a group's n_rep query heads) instead of the tiled
# kernel above. Measured (one thread, hs = 64, Tk = 64, 256, 1024; time rows / tiled): 1 row
# 0.35-0.39, 2 rows 0.38-0.46, 4 rows 0.65-0.89, 7 rows 0.73-0.83, 8 rows 0.98-1.10, 16 rows
# 1.23-1.41: past 7 rows the tiled kernel's 4-row register tiles win.
FEW_ROWS = 7
# Keys per chunk in _attention_rows_nb: a chunk of K (or V) rows, 16 KB at hs = 64 in float32,
# stays in L1 while every query row of the group uses it.
KEY_CHUNK = 64


@njit(**JIT)
def _dots(s, qr, kk, j0, j1):
    """s[j] = qr . kk[j] for keys j0 .. j1-1, four keys per pass over qr (one load of qr[c] serves
    four products; each dot product is summed in SIMD lanes, fastmath reassoc)."""
    hs = qr.shape[0]
    zero = qr.dtype.type(0)
    j = j0
    while j + 4 <= j1:
        k0, k1, k2, k3 = kk[j], kk[j + 1], kk[j + 2], kk[j + 3]
        a0 = a1 = a2 = a3 = zero
        for c in range(hs):
            x = qr[c]
            a0 += x * k0[c]
            a1 += x * k1[c]
            a2 += x * k2[c]
            a3 += x * k3[c]
        s[j], s[j + 1], s[j + 2], s[j + 3] = a0, a1, a2, a3
        j += 4
    for jj in range(j, j1):
        kj = kk[jj]
        a = zero
        for c in range(hs):
            a += qr[c] * kj[c]
        s[jj] = a


@njit(**JIT)
def _weighted_rows(o, p, vv, j0, j1):
    """o += sum_j p[j] vv[j] over keys j0 .. j1-1, four rows of vv per pass over o."""
    hv = o.shape[0]
    j = j0
    while j + 4 <= j1:
        p0, p1, p2, p3 = p[j], p[j + 1], p[j + 2], p[j + 3]
        v0, v1, v2, v3 = vv[j], vv[j + 1], vv[j + 2], vv[j + 3]
        for c in range(hv):
            o[c] += p0 * v0[c] + p1 * v1[c] + p2 * v2[c] + p3 * v3[c]
        j += 4
    for jj in range(j, j1):
        pj, vj = p[jj], vv[jj]
        for c in range(hv):
            o[c] += pj * vj[c]


@kernel
def _attention_rows_nb(out, lse, q, k, v, Tk, scale):
    """Numba kernel for `attention.attention_forward` when every query row sees every key and a
    key/value head has at most FEW_ROWS of them: a decoded token (one row per head; with
    grouped-query attention the n_rep query heads of a group, stacked by the wrapper), or a short
    unmasked call. The same numbers as `_attention_forward_nb` without its tiles: the scores are
    dot products read straight from the rows of K (no transposed copy, no 4-row tile for one row),
    and out = P @ V adds rows of V. The keys go by in chunks of KEY_CHUNK rows, each used by every
    query row of the head while it is in L1.

    out: (G, m, hv), lse: (G, m), q: (G, m, hs), k: (G, N, hs), v: (G, N, hv) of which the first
    Tk <= N rows are read; scale: 1 / sqrt(hs) in q's dtype. G = B * NKV heads, m <= FEW_ROWS
    rows each. All C-contiguous.
    """
    G, m, hs = q.shape
    zero = q.dtype.type(0)
    for g in prange(G):  # head g writes only out[g] and lse[g]
        qg, kg, vg, og = q[g], k[g], v[g], out[g]
        s = np.empty((m, Tk), dtype=q.dtype)  # scores, then probabilities
        for j0 in range(0, Tk, KEY_CHUNK):
            for r in range(m):
                _dots(s[r], qg[r], kg, j0, min(j0 + KEY_CHUNK, Tk))
        for r in range(m):
            lse[g, r] = _softmax_row(s[r], Tk, scale)
        og[:] = zero
        for j0 in range(0, Tk, KEY_CHUNK):
            for r in range(m):
                _weighted_rows(og[r], s[r], vg, j0, min(j0 + KEY_CHUNK, Tk))


@kernel
def _attention_backward_nb(dq, dk, dv, dout, q, k, v, out, lse, causal, scale, R):
    """Numba kernel for `attention.attention_backward` (causal or unmasked).

    dq: (BH, Tq, hs), dk: (BH, Tk, hs), dv: (BH, Tk, hv), dout: (BH, Tq, hv); q, k, v, out,
    lse, causal, scale as in `_attention_forward_nb` (k, v: (BKV, Tk, ...), read by head bh //
    n_rep). dk[bh], dv[bh] are query head bh's part of the gradient: with grouped-query attention
    the caller sums each group's n_rep parts. All C-contiguous.
    """
    BH, Tq, hs = q.shape
    Tk, hv = v.shape[1], v.shape[2]
    n_rep = BH // k.shape[0]
    offset = Tk - Tq
    zero = q.dtype.type(0)
    for bh in prange(BH):  # (batch, head) bh writes only dq[bh], dk[bh], dv[bh]: no race on dk/dv
        kv = bh // n_rep  # the key/value head query head bh reads
        k_t = np.empty((hs, Tk), dtype=q.dtype)  # K^T for S = Q K^T
        transpose_block(k_t, k[kv], Tk, hs)
        v_t = np.empty((hv, Tk), dtype=q.dtype)  # V^T for dP = dO V^T
        transpose_block(v_t, v[kv], Tk, hv)
        p = np.empty((R, Tk), dtype=q.dtype)  # P of the block's rows, recomputed
        ds = np.empty((R, Tk), dtype=q.dtype)  # dP, then dS
        dk[bh] = zero
        dv[bh] = zero
        for i0 in range(0, Tq, R):
            m = min(R, Tq - i0)
            # recompute P = exp(scale * Q_blk K^T - lse): the forward's weights, already normalised
            n_hi = _scores(p, q[bh], k_t, i0, m, offset, Tk, causal)
            # forward was: out = P @ V  ->  dP = dO @ V^T (same triangle as S)
            _scores(ds, dout[bh], v_t, i0, m, offset, Tk, causal)
            # forward was: P = softmax(S)  ->  dS = P * (dP - rowsum(dP * P)), and
            # rowsum(dP * P) = rowsum(dO * O) (FA-2's D: one dot product per row, no pass over P)
            for r in range(m):
                n = _n_visible(i0 + r, offset, Tk, causal)
                prow, drow, l = p[r], ds[r], lse[bh, i0 + r]
                D = zero
                for c in range(hv):
                    D += dout[bh, i0 + r, c] * out[bh, i0 + r, c]
                for j in range(n):
                    pj = exp(prow[j] * scale - l)
                    prow[j] = pj
                    drow[j] = pj * (drow[j] - D) * scale  # scale folded in: S = scale * Q K^T
                for j in range(n, n_hi):  # masked, or never computed for this row: 0
                    prow[j] = zero
                    drow[j] = zero
            # forward was: S = scale * Q K^T  ->  dQ_blk = dS @ K, each tile row over the keys it sees
            for g in range(0, m, MR):
                g1 = min(g + MR, m)
                n_g = _n_visible(i0 + g1 - 1, offset, Tk, causal)
                gemm_nb(dq[bh, i0:], ds, k[kv], g, g1, 0, hs, n_g, False, False)
            # dV += P^T @ dO_blk and dK += dS^T @ Q_blk, four keys at a time, each summing over the
            # block's rows from the first one that sees any of the four (earlier rows have P = 0)
            for j in range(0, n_hi, MR):
                j1 = min(j + MR, n_hi)
                r0 = min(max(0, j - offset - i0), m) if causal else 0
                gemm_nb(dv[bh], p[r0:], dout[bh, i0 + r0 :], j, j1, 0, hv, m - r0, True, True)
                gemm_nb(dk[bh], ds[r0:], q[bh, i0 + r0 :], j, j1, 0, hs, m - r0, True, True)


def attention_forward(q, k, v, causal=False, key_padding_mask=None):
    """q: (B, ..., Tq, hs), k: (B, ..., Tk, hs), v: (B, ..., Tk, hv) -> out: (B, ..., Tq, hv), cache

    Same contract as `attention.attention_forward`. With a key_padding_mask the NumPy reference
    runs instead (the fused kernel handles the causal and unmasked cases only).
    cache = ("fused", q3, k3, v3, out3, lse, causal, scale, q.shape, k.shape) or ("reference",
    reference cache)

    Grouped-query attention (k, v with NH / n_rep heads) copies nothing: the kernel reads key/value
    head h // n_rep for query head h. When every query sees every key (Tq = 1, i.e. decoding, or
    causal=False) the n_rep query heads of a group are one block of n_rep Tq rows against their
    shared keys, so each key block is transposed and read once per group, not once per head.
    """
    Tq, Tk, n_rep = reference.check_qkv(q, k, v, causal)
    if key_padding_mask is not None:
        out, cache = reference.attention_forward(q, k, v, causal, key_padding_mask)
        return out, ("reference", cache)
    hs, hv = q.shape[-1], v.shape[-1]
    BH = math.prod(q.shape[:-2])  # spelled out: reshape's -1 is ambiguous when Tq = 0
    if n_rep > 1 and (Tq == 1 or not causal):  # a group's queries as one block of rows, unmasked
        q3, causal = np.ascontiguousarray(q.reshape(BH // n_rep, n_rep * Tq, hs)), False  # (BKV, n_rep Tq, hs)
    else:
        q3 = np.ascontiguousarray(q.reshape(BH, Tq, hs))  # (BH, Tq, hs)
    Tq = q3.shape[1]
    k3, v3 = _leading_rows(k, Tk), _leading_rows(v, Tk)  # (BKV, >= Tk, hs | hv), read in place
    out3 = np.empty((q3.shape[0], Tq, hv), dtype=q.dtype)
    lse = np.empty((q3.shape[0], Tq), dtype=q.dtype)
    # why sqrt(hs): see attention.attention_forward
    scale = q.dtype.type(1.0 / math.sqrt(hs))
    # every row sees every key, few rows: q3 has as many heads as k3 here (grouped, or n_rep = 1)
    if Tq and Tk and (not causal or Tq == 1) and Tq <= FEW_ROWS:
        run(_attention_rows_nb, q3.size * Tk, out3, lse, q3, k3, v3, Tk, scale)
    elif Tq and Tk:
        run(_attention_forward_nb, q3.size * Tk, out3, lse, q3, k3, v3, Tk, bool(causal), scale, R)
    else:
        out3[...] = 0
    cache = ("fused", q3, k3[:, :Tk], v3[:, :Tk], out3, lse, bool(causal), scale, q.shape, k.shape)
    return out3.reshape(q.shape[:-1] + (hv,)), cache


def _leading_rows(x, T):
    """x: (..., T, d) -> a C-contiguous (BH, N, d) array a with a[:, :T] = x.reshape(-1, T, d).

    x is read in place when it is C-contiguous (N = T) or when it is the first T rows of every
    head of the array it views, of the same dtype (N = that array's length): a `model.KVCache`
    keeps each layer's keys in a buffer with room to grow and hands out such views, so the cache
    is not copied once per decoded token. Anything else is copied once (N = T)."""
    d, BH = x.shape[-1], math.prod(x.shape[:-2])
    if x.flags.c_contiguous:
        return x.reshape(BH, T, d)
    b = x.base
    if (isinstance(b, np.ndarray) and b.dtype == x.dtype and b.flags.c_contiguous and b.shape[:-2] == x.shape[:-2]
            and b.shape[-1] == d and T <= b.shape[-2] and b.strides == x.strides
            and _address(b) == _address(x)):  # fmt: skip
        return b.reshape(BH, b.shape[-2], d)
    return np.ascontiguousarray(x.reshape(BH, T, d))


@njit(**JIT)
def _address(a):
    """The address of a's first element: `a.ctypes.data`, which costs 2.7 us from Python, 0.3 here."""
    return a.ctypes.data


def attention_backward(dout, cache):
    """dout: (B, ..., Tq, hv) -> dq, dk, dv (shapes of q, k, v)"""
    if cache[0] == "reference":
        return reference.attention_backward(dout, cache[1])
    _, q3, k3, v3, out3, lse, causal, scale, q_shape, k_shape = cache
    k3, v3 = np.ascontiguousarray(k3), np.ascontiguousarray(v3)  # copies only if read from a KV cache's buffer
    n_rep = q3.shape[0] // k3.shape[0]  # > 1: grouped-query attention, one query head per kernel head
    dq = np.empty_like(q3)
    dk = np.empty((q3.shape[0],) + k3.shape[1:], k3.dtype)  # (BH, Tk, hs): query head bh's part
    dv = np.empty((q3.shape[0],) + v3.shape[1:], v3.dtype)
    if q3.shape[1] and k3.shape[1]:
        d3 = np.ascontiguousarray(dout.reshape(out3.shape))
        run(_attention_backward_nb, q3.size * k3.shape[1], dq, dk, dv, d3, q3, k3, v3, out3, lse, causal, scale, R)
    else:
        dq[...], dk[...], dv[...] = 0, 0, 0
    if n_rep > 1:  # forward was: head bh read k[bh // n_rep]  ->  a shared head gets the sum of its group's parts
        dk = dk.reshape((-1, n_rep) + k3.shape[1:]).sum(axis=1)
        dv = dv.reshape((-1, n_rep) + v3.shape[1:]).sum(axis=1)
    return dq.reshape(q_shape), dk.reshape(k_shape), dv.reshape(k_shape[:-1] + (v3.shape[2],))
