"""Attention, exactly as in "Attention Is All You Need": softmax(Q K^T / sqrt(d_k)) V.

- `attention_forward/backward`: scaled dot-product attention over any leading dims, with an
  optional causal mask and an optional key-padding mask.
- `mha_forward/backward`: multi-head *self*-attention (fused QKV projection, split heads,
  attention, merge heads, output projection), as in GPT-2.
- `cross_attention_forward/backward`: queries from one sequence, keys and values from another
  (the encoder-decoder's second attention sub-layer).

Dimension legend: B batch, T time (Tq queries, Tk keys), C channels, NH heads, hs head size
(C = NH * hs).

Masks: `causal=True` lets query i see keys j <= i + (Tk - Tq) — with Tq = Tk that is the usual
lower triangle; with Tq < Tk the queries are the *last* Tq positions (decoding with a KV
cache). `key_padding_mask` is (B, Tk) bool, True where the key is padding and must be ignored
(PyTorch's convention). A query row whose keys are all masked gets all-zero weights and a zero
output instead of the NaN that 0/0 would give.

`mha_*` and `cross_attention_*` take the hot ops as `ops=` (default: the NumPy reference), so
the one transformer block (`block.py`) runs them on the Numba kernels too.

Does not: implement dropout on the attention weights, or the fused Numba kernel (`kernels/attention.py`).
"""
import numpy as np

from .validation import check_array, check_same_dtype


def causal_mask(Tq, Tk=None):
    """(Tq, Tk) bool, True where query i may attend to key j, i.e. j <= i + (Tk - Tq).
    Tk defaults to Tq: the lower triangle. With Tq < Tk the queries are the last Tq positions."""
    Tk = Tq if Tk is None else Tk
    # query i sits at absolute position i + (Tk - Tq); it may see keys up to that position
    return np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)  # (Tq, Tk)


def attention_allowed(Tq, Tk, causal, key_padding_mask, lead_ndim):
    """Boolean (..., Tq, Tk) array, True where a query may attend to a key, or None (no mask).

    causal: apply `causal_mask(Tq, Tk)`. key_padding_mask: (B, Tk) bool, True at padding keys, or
    None. lead_ndim: the number of dims of q before (Tq, hs), so the padding part is (B, ..., 1, Tk).
    """
    allowed = causal_mask(Tq, Tk) if causal else None
    if key_padding_mask is not None:
        B = key_padding_mask.shape[0]
        keep = ~key_padding_mask.reshape((B,) + (1,) * (lead_ndim - 1) + (1, Tk))  # (B, ..., 1, Tk)
        allowed = keep if allowed is None else allowed & keep
    return allowed


def check_qkv(q, k, v, causal):
    """Validate attention inputs (shared by the NumPy reference and the Numba wrapper) -> (Tq, Tk)."""
    check_same_dtype(q=q, k=k, v=v)
    check_array("q", q, min_ndim=2)
    check_array("k", k, shape=q.shape[:-2] + (None, q.shape[-1]))
    check_array("v", v, shape=k.shape[:-1] + (None,))
    Tq, Tk = q.shape[-2], k.shape[-2]
    if causal and Tq > Tk:
        raise ValueError(f"q: expected at most Tk={Tk} queries with causal=True, got Tq={Tq}")
    return Tq, Tk


def attention_forward(q, k, v, causal=False, key_padding_mask=None):
    """q: (B, ..., Tq, hs), k: (B, ..., Tk, hs), v: (B, ..., Tk, hv) -> out: (B, ..., Tq, hv), cache

    key_padding_mask: (B, Tk) bool or None. cache = (q, k, v, att, scale); att: (B, ..., Tq, Tk)
    holds the attention weights (handy for plotting attention maps).
    """
    Tq, Tk = check_qkv(q, k, v, causal)
    if key_padding_mask is not None:
        check_array("key_padding_mask", key_padding_mask, shape=(q.shape[0], Tk))
        if key_padding_mask.dtype != np.bool_:
            raise ValueError(f"key_padding_mask: expected dtype bool, got {key_padding_mask.dtype}")
        if q.ndim < 3:
            raise ValueError(f"q: expected a batch axis to go with key_padding_mask, got shape {q.shape}")
    scale = 1.0 / np.sqrt(q.shape[-1])
    # why sqrt(d_k): for unit-variance q, k the dot product has variance d_k; dividing by
    # sqrt(d_k) keeps the logits O(1) so the softmax does not saturate (paper, footnote 4).
    s = (q @ k.swapaxes(-1, -2)) * q.dtype.type(scale)  # (B, ..., Tq, Tk)
    allowed = attention_allowed(Tq, Tk, causal, key_padding_mask, q.ndim - 2)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # a fully masked row: max is -inf; use 0 instead
    e = np.exp(s - m)  # exp(-inf) = 0 on masked entries
    den = e.sum(axis=-1, keepdims=True)
    att = e / np.where(den == 0, 1.0, den)  # fully masked row: 0 / 1 = 0, not 0 / 0
    out = att @ v  # (B, ..., Tq, hv)
    return out, (q, k, v, att, scale)


def attention_backward(dout, cache):
    """dout: (B, ..., Tq, hv) -> dq, dk, dv (shapes of q, k, v)"""
    q, k, v, att, scale = cache
    # forward was: out = att @ v  ->  datt = dout @ v^T, dv = att^T @ dout
    datt = dout @ v.swapaxes(-1, -2)  # (B, ..., Tq, Tk)
    dv = att.swapaxes(-1, -2) @ dout
    # forward was: att = softmax(s) (masked entries have att = 0, so they get ds = 0)
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    # forward was: s = q @ k^T * scale  ->  dq = ds @ k * scale, dk = ds^T @ q * scale
    sc = q.dtype.type(scale)
    dq = (ds @ k) * sc
    dk = (ds.swapaxes(-1, -2) @ q) * sc
    return dq, dk, dv


def split_heads(x, n_head):
    """(B, T, C) -> (B, NH, T, hs)"""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, NH, T, hs) -> (B, T, C)"""
    B, NH, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, NH * hs)


def _check_heads(C, n_head):
    if not isinstance(n_head, (int, np.integer)) or n_head < 1 or C % n_head:
        raise ValueError(f"n_head: expected a positive divisor of C={C}, got {n_head}")


def reference_ops():
    """The NumPy reference ops (`backend.get_ops("numpy")`): the default of the functions below."""
    from .backend import get_ops  # backend imports this module, so not at the top

    return get_ops("numpy")


def mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head, causal=True, key_padding_mask=None, *, ops=None,
                kv_cache=None, layer=0):  # fmt: skip
    """Multi-head self-attention.

    x: (B, T, C), w_qkv: (C, 3C), b_qkv: (3C,) or None, w_proj: (C, C), b_proj: (C,) or None
    -> out: (B, T, C), cache = (qkv_cache, att_cache, proj_cache, n_head, ops)

    ops: the hot ops to run on (`backend.get_ops(...)`; default the NumPy reference), so a model
    reaches the Numba kernels through this one function. kv_cache: a `model.KVCache` to decode
    incrementally (inference only): x holds the positions after the cached ones, their keys and
    values are appended to the cache's layer `layer`, and the queries attend to all of them.
    """
    ops = ops or reference_ops()
    check_array("x", x, ndim=3)
    C = x.shape[2]
    _check_heads(C, n_head)
    check_array("w_qkv", w_qkv, shape=(C, 3 * C))
    check_array("w_proj", w_proj, shape=(C, C))
    qkv, qkv_cache = ops.linear_forward(x, w_qkv, b_qkv)  # (B, T, 3C)
    q, k, v = (split_heads(t, n_head) for t in np.split(qkv, 3, axis=-1))  # each (B, NH, T, hs)
    if kv_cache is not None:
        k, v = kv_cache.append(layer, k, v)  # (B, NH, T_seen, hs)
    y, att_cache = ops.attention_forward(q, k, v, causal, key_padding_mask)  # (B, NH, T, hs)
    out, proj_cache = ops.linear_forward(merge_heads(y), w_proj, b_proj)  # (B, T, C)
    return out, (qkv_cache, att_cache, proj_cache, n_head, ops)


def mha_backward(dout, cache):
    """dout: (B, T, C) -> dx, dw_qkv, db_qkv, dw_proj, db_proj (db_* None without biases)"""
    qkv_cache, att_cache, proj_cache, n_head, ops = cache
    dy, dw_proj, db_proj = ops.linear_backward(dout, proj_cache)
    dq, dk, dv = ops.attention_backward(split_heads(dy, n_head), att_cache)
    # forward was: q, k, v = split(qkv, 3)  ->  dqkv = concat(dq, dk, dv)
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, 3C)
    dx, dw_qkv, db_qkv = ops.linear_backward(dqkv, qkv_cache)
    return dx, dw_qkv, db_qkv, dw_proj, db_proj


def cross_attention_forward(x, mem, w_q, b_q, w_kv, b_kv, w_proj, b_proj, n_head, key_padding_mask=None, *,
                            ops=None):  # fmt: skip
    """Multi-head cross-attention: queries from x, keys and values from mem (no causal mask).

    x: (B, Tq, C), mem: (B, Tk, C), w_q: (C, C), b_q: (C,), w_kv: (C, 2C), b_kv: (2C,),
    w_proj: (C, C), b_proj: (C,) (biases may be None), key_padding_mask: (B, Tk) bool
    -> out: (B, Tq, C), cache = (q_cache, kv_cache, att_cache, proj_cache, n_head, ops)
    """
    ops = ops or reference_ops()
    check_array("x", x, ndim=3)
    C = x.shape[2]
    _check_heads(C, n_head)
    check_array("mem", mem, shape=(x.shape[0], None, C))
    check_array("w_q", w_q, shape=(C, C))
    check_array("w_kv", w_kv, shape=(C, 2 * C))
    check_array("w_proj", w_proj, shape=(C, C))
    q, q_cache = ops.linear_forward(x, w_q, b_q)  # (B, Tq, C)
    kv, kv_cache = ops.linear_forward(mem, w_kv, b_kv)  # (B, Tk, 2C)
    k, v = np.split(kv, 2, axis=-1)
    y, att_cache = ops.attention_forward(
        split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head), False, key_padding_mask
    )
    out, proj_cache = ops.linear_forward(merge_heads(y), w_proj, b_proj)
    return out, (q_cache, kv_cache, att_cache, proj_cache, n_head, ops)


def cross_attention_backward(dout, cache):
    """dout: (B, Tq, C) -> dx, dmem, dw_q, db_q, dw_kv, db_kv, dw_proj, db_proj"""
    q_cache, kv_cache, att_cache, proj_cache, n_head, ops = cache
    dy, dw_proj, db_proj = ops.linear_backward(dout, proj_cache)
    dq, dk, dv = ops.attention_backward(split_heads(dy, n_head), att_cache)
    dx, dw_q, db_q = ops.linear_backward(merge_heads(dq), q_cache)
    dkv = np.concatenate([merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, Tk, 2C)
    dmem, dw_kv, db_kv = ops.linear_backward(dkv, kv_cache)
    return dx, dmem, dw_q, db_q, dw_kv, db_kv, dw_proj, db_proj
