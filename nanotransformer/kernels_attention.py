"""Fused scaled dot-product attention in Numba: the kernels behind `attention.attention_forward`
and `attention.attention_backward` for the causal and unmasked cases a GPT uses.

Dimension legend: B batch, NH heads, BH = B * NH (any leading dims flattened), Tq queries,
Tk keys, hs head size (queries and keys), hv value size.

Forward, per (batch, head) and query row i, in one pass:
    s_j = scale * q_i . k_j  for the keys i may see       (causal: j <= i + Tk - Tq)
    m = max_j s_j,  l = sum_j exp(s_j - m),  lse_i = m + log l
    out_i = sum_j exp(s_j - m) / l * v_j
Only one row of scores (Tk numbers, a few KB) exists at a time; the Tq x Tk attention matrix is
never stored. The cache keeps q, k, v, out and the row log-sum-exp `lse` (Tq numbers per head).

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

from . import attention as reference
# Numba's on-disk cache is invalidated by edits to *this* file only: after changing a helper
# imported here (say _gemm_nt), delete nanotransformer/__pycache__/kernels_attention*.nb[ic].
from .kernels import JIT, _exp, _gemm_nt, _kernel, _row_max, _run, _transpose_block


# Query rows per block. Each block's products are small matmuls with R rows, or with an R-long
# reduction (dK = dS^T Q and dV = P^T dO sum over the block's queries); a causal block also
# computes up to R - 1 masked columns per row, about R / T extra work. Measured (bench_kernels,
# T = 64..256): R = 64 beats 16 and 32 everywhere, even at T = 64 where it doubles the work
# (short reductions cost more than the waste), and ties with 128.
R = 64


@njit(**JIT)
def _n_visible(i, offset, Tk, causal):
    """Number of keys query row i may attend to (keys 0 .. n-1)."""
    return min(i + offset + 1, Tk) if causal else Tk


@_kernel
def _attention_forward_nb(out, lse, q, k, v, causal, scale, R):
    """Numba kernel for `attention.attention_forward` (causal or unmasked).

    out: (BH, Tq, hv), lse: (BH, Tq), q: (BH, Tq, hs), k: (BH, Tk, hs), v: (BH, Tk, hv);
    causal: bool, scale: 1 / sqrt(hs) in q's dtype. All C-contiguous.
    """
    BH, Tq, hs = q.shape
    Tk, hv = v.shape[1], v.shape[2]
    offset = Tk - Tq  # query i sits at absolute position i + offset
    zero = q.dtype.type(0)
    for bh in prange(BH):  # (batch, head) bh writes only out[bh] and lse[bh]
        v_t = np.empty((hv, Tk), dtype=q.dtype)  # V^T, so that P @ V reduces along contiguous rows
        _transpose_block(v_t, v[bh], Tk, hv)
        s = np.empty((R, Tk), dtype=q.dtype)  # scores, then probabilities, of R query rows
        for i0 in range(0, Tq, R):
            m = min(R, Tq - i0)  # rows in this block
            n_hi = _n_visible(i0 + m - 1, offset, Tk, causal)  # keys the block's last row sees
            # S = Q_blk @ K^T (raw dot products; the scale is applied in the softmax)
            _gemm_nt(s, q[bh, i0:], k[bh], m, n_hi, hs, False)
            for r in range(m):
                n = _n_visible(i0 + r, offset, Tk, causal)
                row = s[r]
                mx = _row_max(row, n) * scale  # scale > 0, so max(scale * s) = scale * max(s)
                l = zero
                for j in range(n):  # subtracting the max: the largest term is exp(0) = 1
                    e = _exp(row[j] * scale - mx)
                    row[j] = e
                    l += e
                lse[bh, i0 + r] = mx + math.log(l)
                inv = 1 / l
                for j in range(n):
                    row[j] *= inv
                for j in range(n, n_hi):  # masked (j beyond what row r may see): weight 0
                    row[j] = zero
            # out_blk = P @ V
            _gemm_nt(out[bh, i0:], s, v_t, m, hv, n_hi, False)


@_kernel
def _attention_backward_nb(dq, dk, dv, dout, q, k, v, out, lse, causal, scale, R):
    """Numba kernel for `attention.attention_backward` (causal or unmasked).

    dq: (BH, Tq, hs), dk: (BH, Tk, hs), dv: (BH, Tk, hv), dout: (BH, Tq, hv); q, k, v, out,
    lse, causal, scale as in `_attention_forward_nb`. All C-contiguous.
    """
    BH, Tq, hs = q.shape
    Tk, hv = v.shape[1], v.shape[2]
    offset = Tk - Tq
    zero = q.dtype.type(0)
    for bh in prange(BH):  # (batch, head) bh writes only dq[bh], dk[bh], dv[bh]: no race on dk/dv
        k_t = np.empty((hs, Tk), dtype=q.dtype)  # K^T for dQ = dS @ K
        _transpose_block(k_t, k[bh], Tk, hs)
        p = np.empty((R, Tk), dtype=q.dtype)  # P of the block's rows, recomputed
        ds = np.empty((R, Tk), dtype=q.dtype)  # dP, then dS
        p_t = np.empty((Tk, R), dtype=q.dtype)  # transposed blocks for dV = P^T dO, dK = dS^T Q
        ds_t = np.empty((Tk, R), dtype=q.dtype)
        q_t = np.empty((hs, R), dtype=q.dtype)
        dout_t = np.empty((hv, R), dtype=q.dtype)
        for j in range(Tk):
            for d in range(hs):
                dk[bh, j, d] = zero
            for c in range(hv):
                dv[bh, j, c] = zero
        for i0 in range(0, Tq, R):
            m = min(R, Tq - i0)
            n_hi = _n_visible(i0 + m - 1, offset, Tk, causal)
            # recompute P = exp(scale * Q_blk K^T - lse): the forward's weights, already normalised
            _gemm_nt(p, q[bh, i0:], k[bh], m, n_hi, hs, False)
            for r in range(m):
                n = _n_visible(i0 + r, offset, Tk, causal)
                row, l = p[r], lse[bh, i0 + r]
                for j in range(n):
                    row[j] = _exp(row[j] * scale - l)
                for j in range(n, n_hi):
                    row[j] = zero
            # forward was: out = P @ V  ->  dP = dO @ V^T, dV += P^T @ dO
            _gemm_nt(ds, dout[bh, i0:], v[bh], m, n_hi, hv, False)
            _transpose_block(p_t, p, m, n_hi)
            _transpose_block(dout_t, dout[bh, i0:], m, hv)
            _gemm_nt(dv[bh], p_t, dout_t, n_hi, hv, m, True)
            # forward was: P = softmax(S)  ->  dS = P * (dP - rowsum(dP * P)), and
            # rowsum(dP * P) = rowsum(dO * O) (FA-2's D: one dot product per row, no pass over P)
            for r in range(m):
                D = zero
                for c in range(hv):
                    D += dout[bh, i0 + r, c] * out[bh, i0 + r, c]
                row, prow = ds[r], p[r]
                for j in range(n_hi):
                    row[j] = prow[j] * (row[j] - D) * scale  # scale folded in: S = scale * Q K^T
            # forward was: S = scale * Q K^T  ->  dQ_blk = dS @ K, dK += dS^T @ Q_blk
            _gemm_nt(dq[bh, i0:], ds, k_t, m, hs, n_hi, False)
            _transpose_block(ds_t, ds, m, n_hi)
            _transpose_block(q_t, q[bh, i0:], m, hs)
            _gemm_nt(dk[bh], ds_t, q_t, n_hi, hs, m, True)


def attention_forward(q, k, v, causal=False, key_padding_mask=None):
    """q: (B, ..., Tq, hs), k: (B, ..., Tk, hs), v: (B, ..., Tk, hv) -> out: (B, ..., Tq, hv), cache

    Same contract as `attention.attention_forward`. With a key_padding_mask the NumPy reference
    runs instead (the fused kernel handles the causal and unmasked cases only).
    cache = ("fused", q3, k3, v3, out3, lse, causal, scale) or ("reference", reference cache)
    """
    Tq, Tk = reference.check_qkv(q, k, v, causal)
    if key_padding_mask is not None:
        out, cache = reference.attention_forward(q, k, v, causal, key_padding_mask)
        return out, ("reference", cache)
    hs, hv = q.shape[-1], v.shape[-1]
    q3 = np.ascontiguousarray(q.reshape(-1, Tq, hs))  # (BH, Tq, hs)
    k3 = np.ascontiguousarray(k.reshape(-1, Tk, hs))
    v3 = np.ascontiguousarray(v.reshape(-1, Tk, hv))
    out3 = np.empty((q3.shape[0], Tq, hv), dtype=q.dtype)
    lse = np.empty((q3.shape[0], Tq), dtype=q.dtype)
    # why sqrt(hs): see attention.attention_forward
    scale = q.dtype.type(1.0 / math.sqrt(hs))
    if Tq and Tk:
        _run(_attention_forward_nb, q3.size * Tk, out3, lse, q3, k3, v3, bool(causal), scale, R)
    else:
        out3[...] = 0
    return out3.reshape(q.shape[:-1] + (hv,)), ("fused", q3, k3, v3, out3, lse, bool(causal), scale, q.shape, k.shape)


def attention_backward(dout, cache):
    """dout: (B, ..., Tq, hv) -> dq, dk, dv (shapes of q, k, v)"""
    if cache[0] == "reference":
        return reference.attention_backward(dout, cache[1])
    _, q3, k3, v3, out3, lse, causal, scale, q_shape, k_shape = cache
    dq = np.empty_like(q3)
    dk = np.empty_like(k3)
    dv = np.empty_like(v3)
    if q3.shape[1] and k3.shape[1]:
        d3 = np.ascontiguousarray(dout.reshape(out3.shape))
        _run(_attention_backward_nb, q3.size * k3.shape[1], dq, dk, dv, d3, q3, k3, v3, out3, lse, causal, scale, R)
    else:
        dq[...], dk[...], dv[...] = 0, 0, 0
    return dq.reshape(q_shape), dk.reshape(k_shape), dv.reshape(k_shape[:-1] + (v3.shape[2],))
