"""NumPy reference layers: each one a `xxx_forward(...) -> (out, cache)` and a
`xxx_backward(dout, cache) -> gradients in the order of the forward's arguments` pair.

This is the readable reference implementation of every non-attention layer of a GPT
(attention lives in `attention.py`). Every function is dtype-generic: run it in float32 to
train, in float64 to gradient-check it (`gradcheck.py`).

Dimension legend: B batch, T time, C channels, V vocab, ... any leading dims.

LoRA (`lora_linear_forward`, `frozen_linear_forward` and the `LoRAWeight` the block hands them in)
lives here too; the adapter store is `lora.py`.

Does not: use Numba (see the `kernels/` package), allocate parameters (see `params.py`), or choose a
backend. Only floating-point arguments get gradients; integer ids, masks and flags do not.
"""
import math
from typing import NamedTuple

import numpy as np

from .quantize import Int8Weight
from .validation import check_array, check_ids, check_number, check_same_dtype

# ----------------------------------------------------------------------------- linear


def check_linear(x, w, b):
    """Validate linear_forward's x: (..., C_in), w: (C_in, C_out), b: (C_out,) or None (shared by
    the NumPy reference and the Numba wrapper). The shapes are first tested in one expression
    (this runs for every product of a decoding step); only when that fails do the checks that
    name the argument run."""
    check_same_dtype(x=x, w=w, b=b)
    if w.ndim == 2 and x.ndim >= 1 and x.shape[-1] == w.shape[0] and (b is None or b.shape == w.shape[1:]):
        return
    check_array("w", w, ndim=2)
    check_array("x", x, min_ndim=1, shape=x.shape[:-1] + (w.shape[0],))
    if b is not None:
        check_array("b", b, shape=(w.shape[1],))


def linear_forward(x, w, b=None):
    """x: (..., C_in), w: (C_in, C_out), b: (C_out,) or None -> out: (..., C_out), cache

    cache = (x, w, has_bias)
    """
    check_linear(x, w, b)
    # One (N, C_in) @ (C_in, C_out) product over all N = B * T rows: a (B, T, C_in) @ w matmul
    # is B separate (T, C_in) products to NumPy, 1.2-2.2x slower here (bench_kernels, "linear").
    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (N, C_in); N spelled out: -1 is ambiguous if C_in = 0
    out = x2 @ w
    if b is not None:
        out += b
    return out.reshape(x.shape[:-1] + (w.shape[1],)), (x, w, b is not None)


def linear_backward(dout, cache):
    """dout: (..., C_out) -> dx: (..., C_in), dw: (C_in, C_out), db: (C_out,) or None"""
    x, w, has_bias = cache
    N = math.prod(x.shape[:-1])  # product of the leading dims
    x2 = x.reshape(N, x.shape[-1])  # (N, C_in)
    d2 = dout.reshape(N, dout.shape[-1])  # (N, C_out)
    # forward was: out = x @ w + b   ->  dx = dout @ w^T, dw = x^T @ dout, db = sum(dout)
    dx = (d2 @ w.T).reshape(x.shape)
    dw = x2.T @ d2
    db = d2.sum(axis=0) if has_bias else None
    return dx, dw, db


# ----------------------------------------------------------------------------- LoRA


class LoRAWeight(NamedTuple):
    """A linear layer's weight when a LoRA is on: the frozen base w (C_in, C_out) and its adapter
    a (C_in, r), b (r, C_out), scale s; a None: frozen, no adapter. The block hands it to the
    sub-layers in place of w; `backend.lora_ops` runs it (module `lora.py` has the whole story)."""

    w: np.ndarray
    a: np.ndarray = None
    b: np.ndarray = None
    scale: float = 1.0


class LoRAGrad(NamedTuple):
    """The weight-gradient slot of a `LoRAWeight`'s backward: its adapter's gradients (the base
    weight gets none)."""

    a: np.ndarray
    b: np.ndarray


def base_weight(w):
    """The base (C_in, C_out) array of w, a `LoRAWeight`, a `quantize.Int8Weight` (its int8 q) or a
    plain weight (for shape checks)."""
    return w.w if isinstance(w, LoRAWeight) else w.q if isinstance(w, Int8Weight) else w


def _default_ops(ops):
    if ops is None:
        from .attention import reference_ops  # the backend namespace imports this module

        ops = reference_ops()
    return ops


def lora_linear_forward(x, w, b, a, bm, scale, *, ops=None):
    """LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update.

    x: (..., C_in), w: (C_in, C_out) and b: (C_out,) or None frozen, a: (C_in, r), bm: (r, C_out),
    scale: s = alpha / r -> out = x @ w + b + s (x @ a) @ bm: (..., C_out),
    cache = (w, a_cache, bm_cache, s, ops). ops: the hot ops (default the NumPy reference).

    The update s a @ bm has rank <= r, so the model learns r (C_in + C_out) numbers per layer
    instead of C_in C_out. The base's linear cache is dropped: its dw is never needed.
    """
    ops = _default_ops(ops)
    check_same_dtype(x=x, w=w, a=a, bm=bm)
    check_array("w", w, ndim=2)
    check_array("a", a, shape=(w.shape[0], None))
    check_array("bm", bm, shape=(a.shape[1], w.shape[1]))
    if not (isinstance(scale, (int, float, np.floating)) and math.isfinite(scale)):
        raise ValueError(f"scale: expected a finite number, got {scale!r}")
    s = x.dtype.type(scale)
    out, _ = ops.linear_forward(x, w, b)  # (..., C_out)
    xa, a_c = ops.linear_forward(x, a, None)  # (..., r)
    lo, bm_c = ops.linear_forward(xa * s, bm, None)  # (..., C_out)
    out += lo
    return out, (w, a_c, bm_c, s, ops)


def lora_linear_backward(dout, cache):
    """dout: (..., C_out) -> dx: (..., C_in), da: (C_in, r), dbm: (r, C_out)

    No dw: the product x^T dout (C_in x C_out, the largest of a linear's backward) is not formed.
    """
    w, a_c, bm_c, s, ops = cache
    # forward was: lo = (s xa) @ bm  ->  dbm = (s xa)^T dout, d(s xa) = dout @ bm^T
    dxas, dbm, _ = ops.linear_backward(dout, bm_c)
    # forward was: xa = x @ a  ->  with dxa = s d(s xa): da = x^T dxa, dx_lora = dxa @ a^T
    dx_lora, da, _ = ops.linear_backward(dxas * s, a_c)
    # forward was: out = x @ w + b + lo  ->  dx = dout @ w^T + dx_lora (a forward product: no dw)
    dx, _ = ops.linear_forward(dout, w.T, None)
    dx += dx_lora
    return dx, da, dbm


def frozen_linear_forward(x, w, b=None, *, ops=None):
    """A linear layer whose weights are not trained. x: (..., C_in), w: (C_in, C_out),
    b: (C_out,) or None -> out = x @ w + b: (..., C_out), cache = (w, ops)"""
    ops = _default_ops(ops)
    out, _ = ops.linear_forward(x, w, b)
    return out, (w, ops)


def frozen_linear_backward(dout, cache):
    """dout: (..., C_out) -> dx: (..., C_in) only (no dw, no db: the weights are frozen)"""
    w, ops = cache
    # forward was: out = x @ w + b  ->  dx = dout @ w^T, as a forward product (linear_backward would form dw)
    dx, _ = ops.linear_forward(dout, w.T, None)
    return dx


# ----------------------------------------------------------------------------- embeddings


def embedding_forward(ids, table):
    """ids: (...) int in [0, V), table: (V, C) -> out: (..., C), cache = (ids, V)"""
    check_array("table", table, ndim=2, floating=True)
    check_ids("ids", ids, table.shape[0])
    return table[ids], (ids, table.shape[0])


def embedding_backward(dout, cache):
    """dout: (..., C) -> dtable: (V, C)

    A token id that appears several times receives the sum of its rows' gradients, so the
    scatter must *accumulate*: `np.add.at`, not `dtable[ids] += dout` (which keeps only one).
    """
    ids, V = cache
    dtable = np.zeros((V, dout.shape[-1]), dtype=dout.dtype)
    np.add.at(dtable, ids.reshape(-1), dout.reshape(-1, dout.shape[-1]))
    return dtable


def sinusoidal_table(n_pos, C, dtype=np.float32):
    """The fixed positional encoding of "Attention Is All You Need" (section 3.5): (n_pos, C)

    PE[pos, 2i]   = sin(pos / 10000^(2i / C))
    PE[pos, 2i+1] = cos(pos / 10000^(2i / C))
    Each pair of channels is a rotation at its own frequency, so PE[pos + k] is a linear
    function of PE[pos]: relative offsets are easy for attention to read.
    """
    if n_pos < 1 or C < 1:
        raise ValueError(f"n_pos, C: expected positive sizes, got n_pos={n_pos}, C={C}")
    pos = np.arange(n_pos, dtype=np.float64)[:, None]  # (n_pos, 1)
    two_i = np.arange(0, C, 2, dtype=np.float64)[None, :]  # (1, ceil(C/2))
    angle = pos / np.power(10000.0, two_i / C)  # (n_pos, ceil(C/2))
    pe = np.zeros((n_pos, C), dtype=np.float64)
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle[:, : C // 2])
    return pe.astype(dtype)


def positional_forward(x, table, offset=0):
    """x: (B, T, C), table: (n_pos, C) -> out = x + table[offset:offset+T]: (B, T, C), cache

    One function for both kinds of positional encoding: pass a learned table (a parameter,
    whose gradient you use) or `sinusoidal_table(...)` (fixed, whose gradient you ignore).
    `offset` is the position of x[:, 0] (non-zero when decoding with a KV cache).
    cache = (n_pos, offset, T)
    """
    check_same_dtype(x=x, table=table)
    check_array("x", x, ndim=3)
    check_array("table", table, shape=(None, x.shape[2]))
    T = x.shape[1]
    if offset < 0 or offset + T > table.shape[0]:
        raise ValueError(
            f"x: expected at most {table.shape[0]} positions (the block size), "
            f"got positions {offset}..{offset + T - 1}"
        )
    return x + table[offset : offset + T], (table.shape[0], offset, T)


def positional_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C), dtable: (n_pos, C)"""
    n_pos, offset, T = cache
    # forward was: out = x + table[offset:offset+T]  (broadcast over B)  ->  sum over B
    dtable = np.zeros((n_pos, dout.shape[2]), dtype=dout.dtype)
    dtable[offset : offset + T] = dout.sum(axis=0)
    return dout, dtable


# ----------------------------------------------------------------------------- softmax


def softmax_forward(x):
    """x: (..., N) -> out: (..., N) with rows summing to 1, cache = (out,)

    Stable: subtracting the row max changes nothing mathematically (it cancels between
    numerator and denominator) but keeps exp() from overflowing for large logits.
    """
    check_array("x", x, min_ndim=1, floating=True)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out = e / e.sum(axis=-1, keepdims=True)
    return out, (out,)


def softmax_backward(dout, cache):
    """dout: (..., N) -> dx: (..., N)

    The Jacobian is J = diag(p) - p p^T, so the Jacobian-vector product is
    dx = p * (dout - sum(dout * p)) — never build the N x N matrix.
    """
    (p,) = cache
    return p * (dout - (dout * p).sum(axis=-1, keepdims=True))


def log_softmax_forward(x):
    """x: (..., N) -> out = log softmax(x): (..., N), cache = (out,)

    Stable: out = z - log(sum(exp(z))) with z = x - max(x), so no exp overflows and no log of
    an underflowed 0 is taken. Entries of -inf (masked tokens) stay -inf.
    """
    check_array("x", x, min_ndim=1, floating=True)
    m = x.max(axis=-1, keepdims=True)
    z = x - np.where(np.isfinite(m), m, 0.0)
    out = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out, (out,)


def log_softmax_backward(dout, cache):
    """dout: (..., N) -> dx: (..., N)

    forward was: out_i = x_i - log sum_j exp(x_j)  ->  dx = dout - softmax(x) * sum(dout)
    """
    (out,) = cache
    return dout - np.exp(out) * dout.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- layer norm


def check_layernorm(x, w, b, eps):
    """Validate layernorm_forward's x: (..., C), w: (C,), b: (C,), eps >= 0 (shared by the NumPy
    reference and the Numba wrapper; the shapes tested in one expression first, as check_linear)."""
    check_same_dtype(x=x, w=w, b=b)
    if not (x.ndim >= 1 and w.shape == x.shape[-1:] and b.shape == w.shape):
        check_array("x", x, min_ndim=1)
        check_array("w", w, shape=(x.shape[-1],))
        check_array("b", b, shape=(x.shape[-1],))
    check_number("eps", eps, at_least=0)  # 0 is exact statistics; nan would make every output nan


def layernorm_forward(x, w, b, eps=1e-5):
    """x: (..., C), w: (C,), b: (C,) -> out: (..., C), cache = (xhat, w, rstd)

    out = (x - mean) / sqrt(var + eps) * w + b, statistics over the last axis, biased var.
    eps is inside the sqrt, so a constant row (var = 0) gives xhat = 0, not NaN.
    """
    check_layernorm(x, w, b, eps)
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = xc * rstd
    out = xhat * w + b
    return out, (xhat, w, rstd)


def layernorm_backward(dout, cache):
    """dout: (..., C) -> dx: (..., C), dw: (C,), db: (C,)"""
    xhat, w, rstd = cache
    lead = tuple(range(dout.ndim - 1))
    # forward was: out = xhat * w + b  ->  dw = sum(dout * xhat), db = sum(dout), dxhat = dout * w
    dw = (dout * xhat).sum(axis=lead)
    db = dout.sum(axis=lead)
    dxhat = dout * w
    # forward was: xhat = (x - mean) * rstd, with mean and rstd functions of x. Differentiating
    # through both gives the classic three-term form (llm.c doc/layernorm):
    #   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = rstd * (
        dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    )
    return dx, dw, db


def rmsnorm_forward(x, w, eps=1e-6):
    """x: (..., C), w: (C,) -> out: (..., C), cache = (xhat, w, rstd)

    RMSNorm (Zhang & Sennrich 2019; Llama, Qwen, Mistral): out = x / sqrt(mean(x^2) + eps) * w.
    Layer norm without the mean subtraction and without a bias: one statistic instead of two,
    and in practice as good. eps inside the sqrt keeps an all-zero row finite.
    """
    check_same_dtype(x=x, w=w)
    check_array("x", x, min_ndim=1)
    check_array("w", w, shape=(x.shape[-1],))
    check_number("eps", eps, 0)
    ms = (x * x).mean(axis=-1, keepdims=True)  # (..., 1) mean square
    rstd = 1.0 / np.sqrt(ms + x.dtype.type(eps))
    xhat = x * rstd
    return xhat * w, (xhat, w, rstd)


def rmsnorm_backward(dout, cache):
    """dout: (..., C) -> dx: (..., C), dw: (C,)"""
    xhat, w, rstd = cache
    lead = tuple(range(dout.ndim - 1))
    # forward was: out = xhat * w  ->  dw = sum(dout * xhat), dxhat = dout * w
    dw = (dout * xhat).sum(axis=lead)
    dxhat = dout * w
    # forward was: xhat = x * rstd, rstd = (mean(x^2) + eps)^(-1/2), so d rstd / dx_j = -rstd^3 x_j / C
    # and dx = rstd * dxhat - x * rstd^3 * mean(dxhat * x) = rstd * (dxhat - xhat * mean(dxhat * xhat)):
    # layer norm's three-term form without the mean term.
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dw


# ----------------------------------------------------------------------------- GELU and MLP

_GELU_K = math.sqrt(2.0 / math.pi)  # a Python float: NumPy 2 would promote float32 arrays to a np.float64


def gelu_forward(x):
    """x: (...) -> out: (...), cache = (x,)

    The tanh approximation GPT-2 uses: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    """
    check_array("x", x, floating=True)
    u = _GELU_K * (x + 0.044715 * (x * x * x))  # x*x*x: float32 x**3 calls powf, ~100x slower
    return 0.5 * x * (1.0 + np.tanh(u)), (x,)


def gelu_backward(dout, cache):
    """dout: (...) -> dx: (...)"""
    (x,) = cache
    u = _GELU_K * (x + 0.044715 * (x * x * x))  # x*x*x: float32 x**3 calls powf, ~100x slower
    t = np.tanh(u)
    # forward was: out = 0.5 x (1 + t), t = tanh(u(x))
    #   dout/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) u'(x),  u'(x) = k (1 + 3 * 0.044715 x^2)
    du = _GELU_K * (1.0 + 3 * 0.044715 * x * x)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


def mlp_forward(x, w_fc, b_fc, w_proj, b_proj, *, ops=None):
    """The position-wise feed-forward block, C -> 4C -> C with GELU in between.

    x: (..., C), w_fc: (C, H), b_fc: (H,) or None, w_proj: (H, C), b_proj: (C,) or None
    -> out: (..., C). (H = 4C in GPT-2; any H works.) ops: the hot ops to run on
    (`backend.get_ops(...)`), default this module's functions. cache = (fc, gelu, proj, ops)
    """
    ops = _default_ops(ops)
    h, fc_cache = ops.linear_forward(x, w_fc, b_fc)  # (..., H)
    a, gelu_cache = ops.gelu_forward(h)
    out, proj_cache = ops.linear_forward(a, w_proj, b_proj)  # (..., C)
    return out, (fc_cache, gelu_cache, proj_cache, ops)


def mlp_backward(dout, cache):
    """dout: (..., C) -> dx, dw_fc, db_fc, dw_proj, db_proj"""
    fc_cache, gelu_cache, proj_cache, ops = cache
    da, dw_proj, db_proj = ops.linear_backward(dout, proj_cache)
    dh = ops.gelu_backward(da, gelu_cache)
    dx, dw_fc, db_fc = ops.linear_backward(dh, fc_cache)
    return dx, dw_fc, db_fc, dw_proj, db_proj


# ----------------------------------------------------------------------------- SiLU and SwiGLU


def silu_forward(x):
    """x: (...) -> out: (...), cache = (x, sig)

    SiLU (a.k.a. swish): x * sigmoid(x). Smooth like GELU, and what the SwiGLU gate uses.
    """
    check_array("x", x, floating=True)
    # sigmoid written as 0.5 (1 + tanh(x / 2)): the same function, with no overflow of exp(-x)
    sig = 0.5 * (1.0 + np.tanh(0.5 * x))
    return x * sig, (x, sig)


def silu_backward(dout, cache):
    """dout: (...) -> dx: (...)"""
    x, sig = cache
    # forward was: out = x * s(x), s' = s (1 - s)  ->  dout/dx = s + x s (1 - s) = s (1 + x (1 - s))
    return dout * (sig * (1.0 + x * (1.0 - sig)))


def swiglu_forward(x, w_fc, b_fc, w_proj, b_proj, *, ops=None):
    """The gated MLP of Llama/Qwen/Mistral (Shazeer 2020): (silu(x W_gate) * (x W_up)) W_down.

    x: (..., C), w_fc: (C, 2H) = [W_gate | W_up] side by side (one matmul for both, as c_attn
    holds q, k and v), b_fc: (2H,) or None, w_proj: (H, C) = W_down, b_proj: (C,) or None
    -> out: (..., C), cache = (fc, gate, up, silu, proj, ops)

    The same signature as `mlp_forward`, so the block switches MLPs by name. Three matrices
    instead of two: H = 8C/3 (not 4C) keeps the parameter count of GPT-2's MLP.
    """
    ops = _default_ops(ops)
    h, fc_cache = ops.linear_forward(x, w_fc, b_fc)  # (..., 2H)
    H = h.shape[-1] // 2
    gate, up = h[..., :H], h[..., H:]  # (..., H) each
    s, silu_cache = silu_forward(gate)
    a = s * up  # (..., H) the gated hidden state
    out, proj_cache = ops.linear_forward(a, w_proj, b_proj)  # (..., C)
    return out, (fc_cache, s, up, silu_cache, proj_cache, ops)


def swiglu_backward(dout, cache):
    """dout: (..., C) -> dx, dw_fc, db_fc, dw_proj, db_proj"""
    fc_cache, s, up, silu_cache, proj_cache, ops = cache
    da, dw_proj, db_proj = ops.linear_backward(dout, proj_cache)
    # forward was: a = silu(gate) * up  ->  dgate = silu'(gate) * (da * up), dup = da * s
    dh = np.concatenate([silu_backward(da * up, silu_cache), da * s], axis=-1)  # (..., 2H)
    dx, dw_fc, db_fc = ops.linear_backward(dh, fc_cache)
    return dx, dw_fc, db_fc, dw_proj, db_proj


# ----------------------------------------------------------------------------- residual, dropout


def residual_forward(x, fx):
    """x: (...), fx: (...) same shape -> out = x + fx, cache = None

    The gradient highway: the backward copies dout to both branches unchanged, which is why
    deep residual stacks train at all.
    """
    check_same_dtype(x=x, fx=fx)
    check_array("fx", fx, shape=x.shape)
    return x + fx, None


def residual_backward(dout, cache):
    """dout -> dx, dfx (both equal to dout)"""
    return dout, dout


def dropout_forward(x, p, rng=None, train=True):
    """x: (...) -> out: (...), cache = (mask or None,)

    Inverted dropout: in training each element is kept with probability 1 - p and scaled by
    1 / (1 - p), so the expected value is unchanged and evaluation is the identity.
    The mask is drawn from `rng` (a np.random.Generator) so runs are reproducible.
    """
    check_array("x", x, floating=True)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1), got {p}")
    if not train or p == 0.0:
        return x, (None,)
    if rng is None:
        raise ValueError("rng: expected a numpy Generator when train=True and p > 0, got None")
    mask = (rng.random(x.shape) >= p).astype(x.dtype) / x.dtype.type(1.0 - p)
    return x * mask, (mask,)


def dropout_backward(dout, cache):
    """dout: (...) -> dx: (...)"""
    (mask,) = cache
    return dout if mask is None else dout * mask


# ----------------------------------------------------------------------------- loss


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """Fused softmax + negative log-likelihood, averaged over the targets that are not ignored.

    logits: (..., V) float, targets: (...) int in [0, V) or == ignore_index
    -> loss: scalar (0-d array of logits.dtype), cache = (probs, targets, valid, n_valid)

    loss_i = logsumexp(logits_i) - logits_i[target_i], computed after subtracting the row max,
    so logits of +-1e4 stay finite. If every target is ignored the loss is 0 (not NaN).
    """
    check_array("logits", logits, min_ndim=1, floating=True)
    check_array("targets", targets, shape=logits.shape[:-1])
    V = logits.shape[-1]
    check_ids("targets", targets, V, allow=ignore_index)
    z = logits - logits.max(axis=-1, keepdims=True)  # (..., V), max is 0
    lse = np.log(np.exp(z).sum(axis=-1))  # (...)
    valid = targets != ignore_index  # (...)
    safe_t = np.where(valid, targets, 0)
    z_t = np.take_along_axis(z, safe_t[..., None], axis=-1)[..., 0]  # (...)
    n_valid = int(valid.sum())
    loss = np.where(valid, lse - z_t, 0.0).sum() / max(n_valid, 1)
    probs = np.exp(z - lse[..., None])
    return np.asarray(loss, dtype=logits.dtype), (probs, safe_t, valid, n_valid)


def cross_entropy_backward(dout, cache):
    """dout: scalar -> dlogits: (..., V)

    d loss_i / d logits_i = softmax(logits_i) - onehot(target_i): the softmax Jacobian and
    the log's 1/p cancel, which is why the loss and softmax are fused.
    """
    probs, safe_t, valid, n_valid = cache
    dlogits = probs.copy()
    np.put_along_axis(dlogits, safe_t[..., None], np.take_along_axis(probs, safe_t[..., None], -1) - 1, -1)
    dlogits *= (valid[..., None] * (np.asarray(dout) / max(n_valid, 1))).astype(probs.dtype)
    return dlogits


def label_smoothing_cross_entropy_forward(logits, targets, smoothing=0.0, ignore_index=-100):
    """Cross-entropy against a smoothed target distribution, averaged over non-ignored targets.

    logits: (..., V), targets: (...) int in [0, V) or ignore_index, smoothing: eps in [0, 1)
    -> loss: scalar (0-d array of logits.dtype), cache

    The target distribution is q = (1 - eps) * onehot(target) + eps / V (uniform over the whole
    vocabulary, as PyTorch's `label_smoothing`), and loss_i = -sum_v q_v log p_v
        = (1 - eps) * (lse - z_target) + eps * (lse - mean_v z_v),   lse = logsumexp(z).
    eps = 0 is `cross_entropy_forward`. The paper used eps = 0.1: "This hurts perplexity, as
    the model learns to be more unsure, but improves accuracy and BLEU score."
    cache = (probs, safe_targets, valid, n_valid, eps)
    """
    check_array("logits", logits, min_ndim=1, floating=True)
    check_array("targets", targets, shape=logits.shape[:-1])
    check_ids("targets", targets, logits.shape[-1], allow=ignore_index)
    if not (isinstance(smoothing, (int, float)) and 0.0 <= smoothing < 1.0):
        raise ValueError(f"smoothing: expected a value in [0, 1), got {smoothing!r}")
    z = logits - logits.max(axis=-1, keepdims=True)  # (..., V), max 0: exp cannot overflow
    lse = np.log(np.exp(z).sum(axis=-1))  # (...)
    valid = targets != ignore_index
    safe_t = np.where(valid, targets, 0)
    z_t = np.take_along_axis(z, safe_t[..., None], axis=-1)[..., 0]
    per = (1.0 - smoothing) * (lse - z_t) + smoothing * (lse - z.mean(axis=-1))  # (...)
    n_valid = int(valid.sum())
    loss = np.where(valid, per, 0.0).sum() / max(n_valid, 1)
    probs = np.exp(z - lse[..., None])
    return np.asarray(loss, dtype=logits.dtype), (probs, safe_t, valid, n_valid, smoothing)


def label_smoothing_cross_entropy_backward(dout, cache):
    """dout: scalar -> dlogits: (..., V) = (softmax(logits) - q) * dout / n_valid on valid rows

    d/dz of -sum_v q_v log softmax(z)_v is p - q for any distribution q that sums to 1.
    """
    probs, safe_t, valid, n_valid, eps = cache
    V = probs.shape[-1]
    dlogits = probs - probs.dtype.type(eps / V)
    t_rows = np.take_along_axis(dlogits, safe_t[..., None], -1)
    np.put_along_axis(dlogits, safe_t[..., None], t_rows - probs.dtype.type(1.0 - eps), -1)
    dlogits *= (valid[..., None] * (np.asarray(dout) / max(n_valid, 1))).astype(probs.dtype)
    return dlogits
