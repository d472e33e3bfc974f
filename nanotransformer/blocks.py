"""Transformer blocks as functions of named parameters, shared by the encoder-decoder
(`seq2seq.py`) and BERT (`bert.py`).

    specs = encoder_block_specs("enc.0.", C, H)            # [(name, shape)] of one block
    x, cache = encoder_block_forward(x, p, "enc.0.", n_head, key_padding_mask)
    dx = encoder_block_backward(dout, cache, g, "enc.0.")  # writes g["enc.0.ln_1.w"], ...

- `flat_views` / `FlatModel`: every parameter is a named view into one flat buffer, gradients
  likewise (llm.c's layout, as `model.py` uses for GPT), plus a weight-decay mask and GPT-2-style
  initialisation.
- `sublayer_forward/backward`: one residual sub-layer around attention or an MLP, with the layer
  norm before it (pre-LN, GPT-2) or after the residual addition (post-LN, the 2017 paper).
- `encoder_block_*`: bidirectional self-attention + MLP. `decoder_block_*`: causal
  self-attention + cross-attention over the encoder output + MLP.

A block's forward takes the dict `p` of parameter views and a name prefix; its backward writes
into the dict `g` of gradient views and returns the gradient of its input(s), so a model is a
loop over blocks. The attention and MLP themselves are `attention.py`'s and `layers.py`'s.

Dimension legend: B batch, T time (S for the encoder's memory), C channels, H feed-forward
hidden size, NH heads.

Does not: use the Numba kernels (`backend.get_ops`) or a KV cache; `model.GPT` keeps its own,
faster, block.
"""
import math

import numpy as np

from .attention import (
    cross_attention_backward,
    cross_attention_forward,
    mha_backward,
    mha_forward,
)
from .layers import (
    dropout_backward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
    mlp_backward,
    mlp_forward,
)
from .validation import check_array

NORMS = ("pre", "post")

# ----------------------------------------------------------------------------- flat parameters


def flat_views(specs, flat):
    """{name: view} of a 1-D array laid out as `specs` [(name, shape)], in order. Each view is a
    reshaped slice, so writing a view writes `flat` (llm.c's single parameter buffer)."""
    n = sum(math.prod(s) for _, s in specs)
    check_array("flat", flat, shape=(n,))
    out, offset = {}, 0
    for name, shape in specs:
        size = math.prod(shape)
        out[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return out


class FlatModel:
    """Parameters and gradients in two flat buffers with named views (`p`, `g`), a weight-decay
    mask (1 on matrices, 0 on biases and layer-norm gains) and GPT-2-style initialisation.
    Subclasses set `self.specs` and call `_build(dtype, seed)`."""

    def _build(self, dtype, seed):
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise ValueError(f"dtype: expected a floating-point dtype, got {self.dtype}")
        n = sum(math.prod(s) for _, s in self.specs)
        self.params = np.zeros(n, dtype=self.dtype)
        self.grads = np.zeros(n, dtype=self.dtype)
        self.p = flat_views(self.specs, self.params)
        self.g = flat_views(self.specs, self.grads)
        self.decay_mask = np.zeros(n, dtype=self.dtype)
        for view in flat_views(self.specs, self.decay_mask).values():
            view[...] = 1.0 if view.ndim == 2 else 0.0
        self._cache = None
        self.init_weights(seed)

    def views(self, flat):
        """{name: view} of any flat array laid out like `params` (e.g. optimiser moments)."""
        return flat_views(self.specs, flat)

    def num_params(self):
        return int(self.params.size)

    def _init_std(self, name, shape):
        """Standard deviation of a weight matrix at initialisation (GPT-2: 0.02, and the residual
        projections 0.02 / sqrt(2 * number of residual sub-layers))."""
        return 0.02

    def init_weights(self, seed=0):
        """Drawn in float64 then cast: float32 and float64 models with one seed hold the same values."""
        rng = np.random.default_rng(seed)
        for name, shape in self.specs:
            if name.endswith(".b"):
                val = np.zeros(shape)
            elif len(shape) == 1:  # layer-norm gain
                val = np.ones(shape)
            else:
                val = rng.normal(0.0, self._init_std(name, shape), size=shape)
            self.p[name][...] = val

    def state_dict(self):
        return dict(self.p)

    def load_state_dict(self, tensors, source="tensors"):
        """Copy {name: array} into the buffer; every name must be present with the right shape."""
        for name, shape in self.specs:
            if name not in tensors:
                raise ValueError(f"{source}: missing tensor {name!r} (shape {shape})")
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"{source}: tensor {name!r} expected shape {shape}, got {tuple(tensors[name].shape)}")
        for name, _ in self.specs:
            self.p[name][...] = tensors[name]


def _ln_specs(name, C):
    return [(name + ".w", (C,)), (name + ".b", (C,))]


def _lin_specs(name, c_in, c_out):
    return [(name + ".w", (c_in, c_out)), (name + ".b", (c_out,))]


def encoder_block_specs(prefix, C, H):
    """Parameters of one encoder block (H: hidden size of the feed-forward layer)."""
    return (
        _ln_specs(prefix + "ln_1", C) + _lin_specs(prefix + "attn.c_attn", C, 3 * C)
        + _lin_specs(prefix + "attn.c_proj", C, C)
        + _ln_specs(prefix + "ln_2", C) + _lin_specs(prefix + "mlp.c_fc", C, H) + _lin_specs(prefix + "mlp.c_proj", H, C)
    )  # fmt: skip


def decoder_block_specs(prefix, C, H):
    """Parameters of one decoder block: self-attention, cross-attention, feed-forward."""
    return (
        _ln_specs(prefix + "ln_1", C) + _lin_specs(prefix + "attn.c_attn", C, 3 * C)
        + _lin_specs(prefix + "attn.c_proj", C, C)
        + _ln_specs(prefix + "ln_2", C) + _lin_specs(prefix + "cross.q", C, C) + _lin_specs(prefix + "cross.kv", C, 2 * C)
        + _lin_specs(prefix + "cross.c_proj", C, C)
        + _ln_specs(prefix + "ln_3", C) + _lin_specs(prefix + "mlp.c_fc", C, H) + _lin_specs(prefix + "mlp.c_proj", H, C)
    )  # fmt: skip


# ----------------------------------------------------------------------------- residual sub-layer


def sublayer_forward(x, ln_w, ln_b, fn, norm="pre", p_drop=0.0, rng=None, train=False):
    """One residual sub-layer around fn (attention or MLP): h -> (out, cache).

    norm="pre":  out = x + dropout(fn(LN(x)))     (GPT-2, and most models since)
    norm="post": out = LN(x + dropout(fn(x)))     (the paper: every sub-layer's output normalised)
    x: (B, T, C) -> out: (B, T, C), cache = (norm, ln_cache, fn_cache, drop_cache)
    """
    if norm == "pre":
        h, ln_c = layernorm_forward(x, ln_w, ln_b)
        o, fn_c = fn(h)
        o, drop_c = dropout_forward(o, p_drop, rng, train)
        return x + o, (norm, ln_c, fn_c, drop_c)
    o, fn_c = fn(x)
    o, drop_c = dropout_forward(o, p_drop, rng, train)
    out, ln_c = layernorm_forward(x + o, ln_w, ln_b)
    return out, (norm, ln_c, fn_c, drop_c)


def sublayer_backward(dout, cache, fn_backward):
    """dout: (B, T, C) -> dx, dln_w, dln_b, fn_grads (the tuple fn_backward returns after dx)"""
    norm, ln_c, fn_c, drop_c = cache
    if norm == "pre":
        # forward was: out = x + drop(fn(LN(x)))  ->  dx = dout + dLN^T dfn^T ddrop^T dout
        do = dropout_backward(dout, drop_c)
        dh, *fn_grads = fn_backward(do, fn_c)
        dx_ln, dw, db = layernorm_backward(dh, ln_c)
        return dout + dx_ln, dw, db, fn_grads
    # forward was: out = LN(s), s = x + drop(fn(x))  ->  ds = dLN^T dout, dx = ds + dfn^T ddrop^T ds
    ds, dw, db = layernorm_backward(dout, ln_c)
    dx_fn, *fn_grads = fn_backward(dropout_backward(ds, drop_c), fn_c)
    return ds + dx_fn, dw, db, fn_grads


def _put(g, prefix, *grads, names=("w", "b")):
    for n, d in zip(names, grads):
        g[f"{prefix}.{n}"][...] = d


# ----------------------------------------------------------------------------- blocks


def encoder_block_forward(x, p, prefix, n_head, key_padding_mask=None, norm="pre", p_drop=0.0, rng=None, train=False):
    """Bidirectional self-attention + MLP. x: (B, S, C), p: {name: parameter}, prefix e.g. "enc.0."
    key_padding_mask: (B, S) bool, True on padding -> out: (B, S, C), cache"""

    def attn(h):
        return mha_forward(
            h, p[prefix + "attn.c_attn.w"], p[prefix + "attn.c_attn.b"], p[prefix + "attn.c_proj.w"],
            p[prefix + "attn.c_proj.b"], n_head, causal=False, key_padding_mask=key_padding_mask,
        )  # fmt: skip

    def mlp(h):
        return mlp_forward(h, p[prefix + "mlp.c_fc.w"], p[prefix + "mlp.c_fc.b"], p[prefix + "mlp.c_proj.w"], p[prefix + "mlp.c_proj.b"])

    x, c1 = sublayer_forward(x, p[prefix + "ln_1.w"], p[prefix + "ln_1.b"], attn, norm, p_drop, rng, train)
    x, c2 = sublayer_forward(x, p[prefix + "ln_2.w"], p[prefix + "ln_2.b"], mlp, norm, p_drop, rng, train)
    return x, (c1, c2)


def encoder_block_backward(dout, cache, g, prefix):
    """dout: (B, S, C) -> dx: (B, S, C); writes the block's gradients into g[prefix + ...]"""
    c1, c2 = cache
    dx, dw, db, (dfc_w, dfc_b, dproj_w, dproj_b) = sublayer_backward(dout, c2, mlp_backward)
    _put(g, prefix + "ln_2", dw, db)
    _put(g, prefix + "mlp.c_fc", dfc_w, dfc_b)
    _put(g, prefix + "mlp.c_proj", dproj_w, dproj_b)
    dx, dw, db, (dqkv_w, dqkv_b, dproj_w, dproj_b) = sublayer_backward(dx, c1, mha_backward)
    _put(g, prefix + "ln_1", dw, db)
    _put(g, prefix + "attn.c_attn", dqkv_w, dqkv_b)
    _put(g, prefix + "attn.c_proj", dproj_w, dproj_b)
    return dx


def decoder_block_forward(x, mem, p, prefix, n_head, mem_padding_mask=None, norm="pre", p_drop=0.0, rng=None, train=False):
    """Masked self-attention, cross-attention over the encoder output, MLP.

    x: (B, T, C) decoder stream, mem: (B, S, C) encoder output, mem_padding_mask: (B, S) bool
    -> out: (B, T, C), cache. Padding at the *end* of the target needs no mask: with the causal
    mask a real token never attends to a later (padding) position.
    """

    def self_attn(h):
        return mha_forward(
            h, p[prefix + "attn.c_attn.w"], p[prefix + "attn.c_attn.b"], p[prefix + "attn.c_proj.w"],
            p[prefix + "attn.c_proj.b"], n_head, causal=True,
        )  # fmt: skip

    def cross(h):
        return cross_attention_forward(
            h, mem, p[prefix + "cross.q.w"], p[prefix + "cross.q.b"], p[prefix + "cross.kv.w"], p[prefix + "cross.kv.b"],
            p[prefix + "cross.c_proj.w"], p[prefix + "cross.c_proj.b"], n_head, key_padding_mask=mem_padding_mask,
        )  # fmt: skip

    def mlp(h):
        return mlp_forward(h, p[prefix + "mlp.c_fc.w"], p[prefix + "mlp.c_fc.b"], p[prefix + "mlp.c_proj.w"], p[prefix + "mlp.c_proj.b"])

    x, c1 = sublayer_forward(x, p[prefix + "ln_1.w"], p[prefix + "ln_1.b"], self_attn, norm, p_drop, rng, train)
    x, c2 = sublayer_forward(x, p[prefix + "ln_2.w"], p[prefix + "ln_2.b"], cross, norm, p_drop, rng, train)
    x, c3 = sublayer_forward(x, p[prefix + "ln_3.w"], p[prefix + "ln_3.b"], mlp, norm, p_drop, rng, train)
    return x, (c1, c2, c3)


def decoder_block_backward(dout, cache, g, prefix):
    """dout: (B, T, C) -> dx: (B, T, C), dmem: (B, S, C); writes the block's gradients into g"""
    c1, c2, c3 = cache
    dx, dw, db, (dfc_w, dfc_b, dproj_w, dproj_b) = sublayer_backward(dout, c3, mlp_backward)
    _put(g, prefix + "ln_3", dw, db)
    _put(g, prefix + "mlp.c_fc", dfc_w, dfc_b)
    _put(g, prefix + "mlp.c_proj", dproj_w, dproj_b)
    dx, dw, db, (dmem, dq_w, dq_b, dkv_w, dkv_b, dproj_w, dproj_b) = sublayer_backward(dx, c2, cross_attention_backward)
    _put(g, prefix + "ln_2", dw, db)
    _put(g, prefix + "cross.q", dq_w, dq_b)
    _put(g, prefix + "cross.kv", dkv_w, dkv_b)
    _put(g, prefix + "cross.c_proj", dproj_w, dproj_b)
    dx, dw, db, (dqkv_w, dqkv_b, dproj_w, dproj_b) = sublayer_backward(dx, c1, mha_backward)
    _put(g, prefix + "ln_1", dw, db)
    _put(g, prefix + "attn.c_attn", dqkv_w, dqkv_b)
    _put(g, prefix + "attn.c_proj", dproj_w, dproj_b)
    return dx, dmem
