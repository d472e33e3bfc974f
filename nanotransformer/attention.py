"""Attention, exactly as in "Attention Is All You Need": softmax(Q K^T / sqrt(d_k)) V.

- `attention_forward/backward`: scaled dot-product attention over any leading dims, with an
  optional causal mask and an optional key-padding mask; k and v may have fewer heads than q
  (grouped-query attention, repeated by `repeat_kv_forward`).
- `mha_forward/backward`: multi-head *self*-attention (fused QKV projection, split heads,
  attention, merge heads, output projection), as in GPT-2.
- `cross_attention_forward/backward`: queries from one sequence, keys and values from another
  (the encoder-decoder's second attention sub-layer).
- `rope_forward/backward`: rotary position embedding on q and k (Llama's positions), and
  `repeat_kv_forward/backward`: the key/value sharing of grouped-query attention; RoPE, the
  number of key/value heads and QK-norm are switches of `mha_forward`.

Dimension legend: B batch, T time (Tq queries, Tk keys), C channels, NH heads, NKV key/value
heads (grouped-query attention), hs head size (C = NH * hs).

Masks: `causal=True` lets query i see keys j <= i + (Tk - Tq) — with Tq = Tk that is the usual
lower triangle; with Tq < Tk the queries are the *last* Tq positions (decoding with a KV
cache). `key_padding_mask` is (B, Tk) bool, True where the key is padding and must be ignored
(PyTorch's convention). A query row whose keys are all masked gets all-zero weights and a zero
output instead of the NaN that 0/0 would give.

`mha_*` and `cross_attention_*` take the hot ops as `ops=` (default: the NumPy reference), so
the one transformer block (`block.py`) runs them on the Numba kernels too, and with LoRA: a weight
may be a `layers.LoRAWeight` run by `backend.lora_ops` (shape checks read its base weight).

Does not: implement dropout on the attention weights, or the fused Numba kernel (`kernels/attention.py`).
"""
import numpy as np

from .layers import base_weight
from .validation import check_array, check_number, check_same_dtype


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
    """Validate attention inputs (shared by the NumPy reference and the Numba wrapper) -> (Tq, Tk, n_rep).

    k and v have q's shape up to the last two axes, or (grouped-query attention, q of 4 or more
    dims) fewer heads on axis -3, a divisor of q's: n_rep = q's heads / k's (1 otherwise)."""
    check_same_dtype(q=q, k=k, v=v)
    lead, n_rep = q.shape[:-2], 1  # what k's shape must start with
    if q.ndim >= 4 and k.ndim == q.ndim and 0 < k.shape[-3] < q.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
        lead, n_rep = q.shape[:-3] + (k.shape[-3],), q.shape[-3] // k.shape[-3]
    # the shapes in one expression first (this runs per layer of a decoding step), then the
    # checks that name what is wrong
    if not (q.ndim >= 2 and k.ndim == q.ndim and k.shape[:-2] == lead and k.shape[-1] == q.shape[-1]
            and v.shape[:-1] == k.shape[:-1]):  # fmt: skip
        check_array("q", q, min_ndim=2)
        if n_rep == 1 and q.ndim >= 4 and k.ndim == q.ndim and k.shape[:-3] == q.shape[:-3] and k.shape[-3] != q.shape[-3]:
            raise ValueError(f"k: expected {q.shape[-3]} heads (q's) or a divisor of {q.shape[-3]} (grouped-query"
                             f" attention) on axis -3, got shape {k.shape}")  # fmt: skip
        check_array("k", k, shape=lead + (None, q.shape[-1]))
        check_array("v", v, shape=k.shape[:-1] + (None,))
    Tq, Tk = q.shape[-2], k.shape[-2]
    if causal and Tq > Tk:
        raise ValueError(f"q: expected at most Tk={Tk} queries with causal=True, got Tq={Tq}")
    if Tk == 0 and q.size:  # a softmax over no keys has no value (the backends used to differ: error / zeros)
        raise ValueError(f"k: expected at least one key for the Tq={Tq} queries, got Tk=0 (shape {k.shape})")
    return Tq, Tk, n_rep


def attention_forward(q, k, v, causal=False, key_padding_mask=None):
    """q: (B, ..., Tq, hs), k: (B, ..., Tk, hs), v: (B, ..., Tk, hv) -> out: (B, ..., Tq, hv), cache

    key_padding_mask: (B, Tk) bool or None. cache = (q, k, v, att, scale); att: (B, ..., Tq, Tk)
    holds the attention weights (handy for plotting attention maps).
    Grouped-query attention: k, v (B, NKV, Tk, hs | hv) beside q (B, NH, Tq, hs), NKV a divisor
    of NH. Key/value head j serves query heads j n_rep .. (j+1) n_rep - 1; here they are repeated
    to NH heads first (`repeat_kv_forward`), and the cache ends with (n_rep,) after the repeated
    k, v. (The Numba kernel reads the shared heads in place instead.)
    """
    Tq, Tk, n_rep = check_qkv(q, k, v, causal)
    if n_rep > 1:
        k, v = repeat_kv_forward(k, n_rep)[0], repeat_kv_forward(v, n_rep)[0]  # (B, NH, Tk, hs | hv)
        out, cache = attention_forward(q, k, v, causal, key_padding_mask)
        return out, cache + (n_rep,)
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
    q, k, v, att, scale, *group = cache  # group: [n_rep] with grouped-query attention
    # forward was: out = att @ v  ->  datt = dout @ v^T, dv = att^T @ dout
    datt = dout @ v.swapaxes(-1, -2)  # (B, ..., Tq, Tk)
    dv = att.swapaxes(-1, -2) @ dout
    # forward was: att = softmax(s) (masked entries have att = 0, so they get ds = 0)
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    # forward was: s = q @ k^T * scale  ->  dq = ds @ k * scale, dk = ds^T @ q * scale
    sc = q.dtype.type(scale)
    dq = (ds @ k) * sc
    dk = (ds.swapaxes(-1, -2) @ q) * sc
    if group:  # forward was: k_rep = repeat(k, n_rep)  ->  each shared head gets the sum of its query heads'
        dk, dv = repeat_kv_backward(dk, tuple(group)), repeat_kv_backward(dv, tuple(group))
    return dq, dk, dv


# ----------------------------------------------------------------------------- RoPE and GQA


def rope_angles(T, hs, theta=10000.0, offset=0, dtype=np.float64):
    """(cos, sin), each (T, hs): the rotation angles of positions offset .. offset+T-1.

    Channel pair (i, i + hs/2) of position m turns by m * theta^(-2i/hs), i < hs/2: fast for the
    first channels, slow for the last. Half-split layout (Hugging Face's `rotate_half`): the
    pairs are (0, hs/2), (1, hs/2 + 1), ..., so each angle appears twice along the last axis.
    Computed in float64, then cast.
    """
    if hs % 2:
        raise ValueError(f"hs: expected an even head size for RoPE, got {hs}")
    check_number("theta", theta, 1)
    if not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset: expected an integer >= 0, got {offset!r}")
    inv_freq = 1.0 / theta ** (np.arange(0, hs, 2) / hs)  # (hs/2,)
    ang = np.arange(offset, offset + T)[:, None] * inv_freq[None, :]  # (T, hs/2)
    ang = np.concatenate([ang, ang], axis=-1)  # (T, hs)
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


def rotate_half(x):
    """(..., hs) -> (..., hs): [x1, x2] -> [-x2, x1], i.e. each pair (a, b) -> (-b, a), a quarter turn."""
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_forward(x, theta=10000.0, offset=0):
    """Rotary position embedding (Su et al. 2021) on queries or keys.

    x: (..., T, hs), its position axis second to last -> out: (..., T, hs), cache = (cos, sin)
    out = x * cos + rotate_half(x) * sin: every channel pair (i, i + hs/2) of position m is
    rotated by the angle m * theta^(-2i/hs). Then q_m . k_n depends on m - n only, the relative
    position. offset: the position of x's first row (the number of positions a KV cache holds).
    """
    check_array("x", x, min_ndim=2, floating=True)
    cos, sin = rope_angles(x.shape[-2], x.shape[-1], theta, offset, x.dtype)
    return x * cos + rotate_half(x) * sin, (cos, sin)


def rope_backward(dout, cache):
    """dout: (..., T, hs) -> dx: (..., T, hs)

    The rotation is orthogonal, so its backward is the inverse rotation (angle -m theta_i).
    """
    cos, sin = cache
    # forward was: out = x * cos + R x * sin, with R = rotate_half a fixed matrix and R^T = -R:
    #   dx = dout * cos + R^T (dout * sin) = dout * cos - rotate_half(dout * sin)
    return dout * cos - rotate_half(dout * sin)


def repeat_kv_forward(x, n_rep):
    """Grouped-query attention's sharing: (B, NKV, T, hs) -> (B, NKV * n_rep, T, hs), cache = (n_rep,)

    Key/value head j serves query heads j*n_rep .. (j+1)*n_rep - 1 (Hugging Face's `repeat_kv`).
    The heads are axis -3 (any leading dims before them, as in `attention_forward`).
    """
    check_array("x", x, min_ndim=3)
    return np.repeat(x, n_rep, axis=-3), (n_rep,)


def repeat_kv_backward(dout, cache):
    """dout: (B, NH, T, hs) -> dx: (B, NKV, T, hs)

    A key/value head used by n_rep query heads gets the sum of their gradients.
    """
    (n_rep,) = cache
    NH, T, hs = dout.shape[-3:]
    return dout.reshape(dout.shape[:-3] + (NH // n_rep, n_rep, T, hs)).sum(axis=-3)


def split_heads(x, n_head):
    """(B, T, C) -> (B, NH, T, hs), a view.

    n_head a tuple (NH, NKV, NKV): x holds groups of heads side by side along C (the fused q, k, v
    projection's output, hs = C / sum(n_head)) -> a tuple of views, one (B, n, T, hs) per group.
    The Numba twin (`kernels.heads`) returns C-contiguous copies instead, made in one pass, which
    is what its attention kernel reads."""
    B, T, C = x.shape
    if not isinstance(n_head, tuple):
        _check_heads(C, n_head)
        return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
    if not all(isinstance(n, (int, np.integer)) and n >= 1 for n in n_head) or C % sum(n_head):
        raise ValueError(f"n_head: expected positive head counts whose sum divides C={C}, got {n_head}")
    hs = C // sum(n_head)
    starts = [sum(n_head[:i]) * hs for i in range(len(n_head))]  # each group's first column
    return tuple(split_heads(x[..., c : c + n * hs], n) for c, n in zip(starts, n_head))


def merge_heads(*xs):
    """(B, NH, T, hs) -> (B, T, NH * hs); several (B, n, T, hs) -> their merges side by side
    along the last axis, (B, T, sum(n) * hs): the inverse of split_heads, and its backward."""
    if len(xs) > 1:
        return np.concatenate([merge_heads(x) for x in xs], axis=-1)
    B, NH, T, hs = xs[0].shape
    return xs[0].transpose(0, 2, 1, 3).reshape(B, T, NH * hs)


def _check_heads(C, n_head):
    if not isinstance(n_head, (int, np.integer)) or n_head < 1 or C % n_head:
        raise ValueError(f"n_head: expected a positive divisor of C={C}, got {n_head}")


def reference_ops():
    """The NumPy reference ops (`backend.get_ops("numpy")`): the default of the functions below."""
    from .backend import get_ops  # backend imports this module, so not at the top

    return get_ops("numpy")


def _qkv_sizes(C, n_head, n_kv_head):
    """Widths (q, k, v) of the fused projection's output: C, and NKV * hs for each of k and v."""
    _check_heads(C, n_head)
    if not isinstance(n_kv_head, (int, np.integer)) or n_kv_head < 1 or n_head % n_kv_head:
        raise ValueError(f"n_kv_head: expected a positive divisor of n_head={n_head}, got {n_kv_head}")
    kv = n_kv_head * (C // n_head)
    return C, kv, kv


def mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head, causal=True, key_padding_mask=None, *, ops=None,
                kv_cache=None, layer=0, n_kv_head=None, rope_theta=None, q_norm=None, k_norm=None,
                norm_eps=1e-6):  # fmt: skip
    """Multi-head self-attention, GPT-2's or Llama's.

    x: (B, T, C), w_qkv: (C, C + 2 NKV hs), b_qkv: (C + 2 NKV hs,) or None, w_proj: (C, C),
    b_proj: (C,) or None -> out: (B, T, C), cache

    ops: the hot ops to run on (`backend.get_ops(...)`; default the NumPy reference), so a model
    reaches the Numba kernels through this one function. kv_cache: a `model.KVCache` to decode
    incrementally (inference only): x holds the positions after the cached ones, their keys and
    values are appended to the cache's layer `layer`, and the queries attend to all of them.

    The modern switches (all off by default, which is GPT-2):
    - n_kv_head: grouped-query attention. NKV key/value heads (a divisor of NH; 1 = multi-query),
      each shared by NH / NKV query heads. The KV cache holds NKV heads, not NH.
    - rope_theta: rotate q and k by their positions (`rope_forward`), instead of adding position
      embeddings to the input.
    - q_norm, k_norm: (hs,) gains of an RMSNorm on each head's q and k before RoPE (QK-norm, as
      Qwen3 and OLMo 2), with `norm_eps`.
    """
    ops = ops or reference_ops()
    check_array("x", x, ndim=3)
    B, T, C = x.shape
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    sizes = _qkv_sizes(C, n_head, n_kv_head)
    check_array("w_qkv", base_weight(w_qkv), shape=(C, sum(sizes)))
    check_array("w_proj", base_weight(w_proj), shape=(C, C))
    if (q_norm is None) != (k_norm is None):
        raise ValueError("q_norm, k_norm: expected both or neither")
    qkv, qkv_cache = ops.linear_forward(x, w_qkv, b_qkv)  # (B, T, C + 2 NKV hs)
    q, k, v = ops.split_heads(qkv, (n_head, n_kv_head, n_kv_head))  # (B, NH|NKV, T, hs)
    qn_c = kn_c = rq_c = rk_c = None
    if q_norm is not None:
        q, qn_c = ops.rmsnorm_forward(q, q_norm, norm_eps)
        k, kn_c = ops.rmsnorm_forward(k, k_norm, norm_eps)
    if rope_theta is not None:
        offset = 0 if kv_cache is None else kv_cache.length(layer)
        q, rq_c = ops.rope_forward(q, rope_theta, offset)
        k, rk_c = ops.rope_forward(k, rope_theta, offset)
    if kv_cache is not None:
        k, v = kv_cache.append(layer, k, v)  # (B, NKV, T_seen, hs): only NKV heads are stored
    # NH query heads against NKV key/value heads: the attention op shares them (grouped-query)
    y, att_cache = ops.attention_forward(q, k, v, causal, key_padding_mask)  # (B, NH, T, hs)
    out, proj_cache = ops.linear_forward(ops.merge_heads(y), w_proj, b_proj)  # (B, T, C)
    return out, (qkv_cache, att_cache, proj_cache, n_head, (qn_c, kn_c, rq_c, rk_c), ops)


def mha_backward(dout, cache):
    """dout: (B, T, C) -> dx, dw_qkv, db_qkv, dw_proj, db_proj (db_* None without biases),
    and dq_norm, dk_norm after them when the forward had QK-norm."""
    qkv_cache, att_cache, proj_cache, n_head, (qn_c, kn_c, rq_c, rk_c), ops = cache
    dy, dw_proj, db_proj = ops.linear_backward(dout, proj_cache)
    dq, dk, dv = ops.attention_backward(ops.split_heads(dy, n_head), att_cache)  # dk, dv: (B, NKV, T, hs)
    if rq_c is not None:
        dq = ops.rope_backward(dq, rq_c)
        dk = ops.rope_backward(dk, rk_c)
    norm_grads = ()
    if qn_c is not None:
        dq, dq_norm = ops.rmsnorm_backward(dq, qn_c)
        dk, dk_norm = ops.rmsnorm_backward(dk, kn_c)
        norm_grads = (dq_norm, dk_norm)
    # forward was: q, k, v = split_heads(qkv)  ->  dqkv = merge_heads(dq, dk, dv)
    dqkv = ops.merge_heads(dq, dk, dv)  # (B, T, C + 2 NKV hs)
    dx, dw_qkv, db_qkv = ops.linear_backward(dqkv, qkv_cache)
    return (dx, dw_qkv, db_qkv, dw_proj, db_proj) + norm_grads


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
    check_array("w_q", base_weight(w_q), shape=(C, C))
    check_array("w_kv", base_weight(w_kv), shape=(C, 2 * C))
    check_array("w_proj", base_weight(w_proj), shape=(C, C))
    q, q_cache = ops.linear_forward(x, w_q, b_q)  # (B, Tq, C)
    kv, kv_cache = ops.linear_forward(mem, w_kv, b_kv)  # (B, Tk, 2C)
    k, v = ops.split_heads(kv, (n_head, n_head))  # (B, NH, Tk, hs) each
    y, att_cache = ops.attention_forward(ops.split_heads(q, n_head), k, v, False, key_padding_mask)
    out, proj_cache = ops.linear_forward(ops.merge_heads(y), w_proj, b_proj)
    return out, (q_cache, kv_cache, att_cache, proj_cache, n_head, ops)


def cross_attention_backward(dout, cache):
    """dout: (B, Tq, C) -> dx, dmem, dw_q, db_q, dw_kv, db_kv, dw_proj, db_proj"""
    q_cache, kv_cache, att_cache, proj_cache, n_head, ops = cache
    dy, dw_proj, db_proj = ops.linear_backward(dout, proj_cache)
    dq, dk, dv = ops.attention_backward(ops.split_heads(dy, n_head), att_cache)
    dx, dw_q, db_q = ops.linear_backward(ops.merge_heads(dq), q_cache)
    dkv = ops.merge_heads(dk, dv)  # (B, Tk, 2C)
    dmem, dw_kv, db_kv = ops.linear_backward(dkv, kv_cache)
    return dx, dmem, dw_q, db_q, dw_kv, db_kv, dw_proj, db_proj
