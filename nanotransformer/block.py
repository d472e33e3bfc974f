"""The one transformer block, and the pieces every model wraps around it: the embedding front end,
the stack of blocks and the tied output head. GPT, BERT and the encoder-decoder are each an
embedding + `stack_forward` + a head, nothing more (nanoGPT's one `Block`, llm.c's one layer loop).

    bc = BlockConfig(n_head=4, d_ff=512, causal=True)          # what kind of block
    specs = block_specs("h.0.", C, bc)                         # [(name, shape)] of its parameters
    x, cache = block_forward(x, p, "h.0.", bc, ops)            # p: {name: view} (a ParamStore's p)
    dx, dmem = block_backward(dout, cache, g, "h.0.")          # writes g["h.0.ln_1.w"], ...

A block is two or three residual sub-layers, each with its layer norm:

    norm_position="pre" (GPT-2, and most models since):   x = x + dropout(f(N(x)))
    norm_position="post" (the 2017 paper):                x = N(x + dropout(f(x)))
    f in order: self-attention (causal or bidirectional, optional key-padding mask, optional
    KV cache), cross-attention over a memory (`cross=True`, the encoder-decoder's decoder),
    the MLP (C -> d_ff -> GELU -> C, or SwiGLU's gated C -> 2 x d_ff -> d_ff -> C).

N is a layer norm (`norm="layernorm"`) or an RMSNorm (`norm="rmsnorm"`). The Llama block
(Llama 2/3, Mistral, Qwen2) is this one block with norm="rmsnorm", mlp="swiglu", rope_theta
set (RoPE inside attention instead of position embeddings at the input), n_kv_head < n_head
(grouped-query attention) and bias=False; Qwen2 adds qkv_bias=True, Qwen3 qk_norm=True.

Parameter names follow GPT-2's (prefix + "ln_1.w", "attn.c_attn.w", "attn.c_proj.w", "ln_2.w",
"mlp.c_fc.w", "mlp.c_proj.w"; with cross-attention "ln_2" is the cross sub-layer's norm,
"cross.q", "cross.kv", "cross.c_proj", and the MLP's norm is "ln_3"). With `bias=False` there
are no biases in the linear layers or the norms (nanoGPT's switch). With grouped-query
attention c_attn is (C, C + 2 NKV hs): q, then the NKV key heads, then the NKV value heads;
SwiGLU's c_fc is (C, 2 d_ff): [W_gate | W_up]; QK-norm adds "attn.q_norm.w", "attn.k_norm.w" (hs,).

LoRA is a switch of the block, not a copy of it: `block_forward(..., lora=...)` hands the
sub-layers `layers.LoRAWeight`s and `backend.lora_ops(ops)` runs them (see `lora.py`).

The hot ops (linear, attention, layer norm, RMSNorm, RoPE, GELU, the embedding) are whatever `ops` holds: the NumPy reference
or the Numba kernels (`backend.get_ops`), so every model runs on the kernels. Attention itself
is `attention.mha_forward` / `cross_attention_forward`, the MLP `layers.mlp_forward`.

Dimension legend: B batch, T time (S for a memory), C channels, V vocab, L layers.

Does not: implement dropout on the attention weights (only on embeddings and the output of
each residual branch), sliding-window attention, mixture-of-experts MLPs, or RoPE scaling
(positions past the trained context).
"""
import math
from dataclasses import dataclass

import numpy as np

from .backend import lora_ops
from .attention import cross_attention_backward, cross_attention_forward, mha_backward, mha_forward
from .layers import (
    LoRAGrad,
    LoRAWeight,
    dropout_backward,
    dropout_forward,
    mlp_backward,
    mlp_forward,
    swiglu_backward,
    swiglu_forward,
    positional_backward,
    positional_forward,
)

NORM_POSITIONS = ("pre", "post")
NORM_KINDS = ("layernorm", "rmsnorm")
MLP_KINDS = ("gelu", "swiglu")

# sub-layer kind -> its linear layers, in the order of the forward's weight arguments
SUBLAYERS = {
    "attn": ("attn.c_attn", "attn.c_proj"),
    "cross": ("cross.q", "cross.kv", "cross.c_proj"),
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
}


@dataclass(frozen=True)
class BlockConfig:
    """What kind of block: heads, MLP width, masking, norm kind and placement, cross-attention,
    biases, and the Llama switches (RMSNorm, SwiGLU, RoPE, grouped-query attention, QK-norm)."""

    n_head: int
    d_ff: int  # the MLP's hidden width (SwiGLU: the width of each of its gate and up halves)
    causal: bool = True  # self-attention sees only earlier positions (GPT, a decoder)
    norm_position: str = "pre"  # "pre" or "post" (see module docstring)
    cross: bool = False  # a cross-attention sub-layer over a memory (the encoder-decoder's decoder)
    bias: bool = True
    norm: str = "layernorm"  # or "rmsnorm" (no mean, no bias)
    mlp: str = "gelu"  # or "swiglu" (`layers.swiglu_forward`)
    n_kv_head: int = None  # grouped-query attention: key/value heads (None: n_head, plain multi-head)
    rope_theta: float = None  # rotary position embedding of q and k with this base (None: no RoPE)
    qk_norm: bool = False  # RMSNorm on each head's q and k (Qwen3, OLMo 2)
    norm_eps: float = 1e-5
    qkv_bias: bool = None  # biases on the q, k, v projection (None: same as `bias`; Qwen2: only these)

    def __post_init__(self):
        for name, allowed in (("norm_position", NORM_POSITIONS), ("norm", NORM_KINDS), ("mlp", MLP_KINDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.bias)

    def sublayers(self):
        """((norm name, sub-layer kind), ...) in forward order."""
        return _SUBLAYER_ORDER[self.cross]


# BlockConfig.sublayers by `cross` (a table: it is read for every block of every forward)
_SUBLAYER_ORDER = {False: (("ln_1", "attn"), ("ln_2", "mlp")), True: (("ln_1", "attn"), ("ln_2", "cross"), ("ln_3", "mlp"))}


def linear_specs(name, c_in, c_out, bias=True):
    return [(name + ".w", (c_in, c_out))] + ([(name + ".b", (c_out,))] if bias else [])


def norm_specs(name, C, bias=True, kind="layernorm"):
    """A norm's gain, and its bias for a layer norm with biases (an RMSNorm has none)."""
    return [(name + ".w", (C,))] + ([(name + ".b", (C,))] if bias and kind == "layernorm" else [])


def block_specs(prefix, C, bc):
    """[(name, shape)] of one block's parameters, in buffer order."""
    hs = C // bc.n_head
    ff = 2 * bc.d_ff if bc.mlp == "swiglu" else bc.d_ff  # SwiGLU's c_fc holds [W_gate | W_up]
    shapes = {
        "attn.c_attn": (C, C + 2 * bc.n_kv_head * hs), "attn.c_proj": (C, C),
        "cross.q": (C, C), "cross.kv": (C, 2 * C), "cross.c_proj": (C, C),
        "mlp.c_fc": (C, ff), "mlp.c_proj": (bc.d_ff, C),
    }  # fmt: skip
    specs = []
    for ln, kind in bc.sublayers():
        specs += norm_specs(prefix + ln, C, bc.bias, bc.norm)
        for lin in SUBLAYERS[kind]:
            specs += linear_specs(prefix + lin, *shapes[lin], bc.qkv_bias if lin == "attn.c_attn" else bc.bias)
            if lin == "attn.c_attn" and bc.qk_norm:
                specs += [(prefix + "attn.q_norm.w", (hs,)), (prefix + "attn.k_norm.w", (hs,))]
    return specs


def _weights(p, prefix, kind, lora=None):
    """(w, b, w, b, ...) of a sub-layer's linear layers; b is None when the model has no biases.
    With a LoRA (`lora.p` holding prefix + lin + ".lora_a"/".lora_b", `lora.scale`) every w is a
    `LoRAWeight`: adapted where the LoRA has an adapter, frozen (a = None) elsewhere."""
    out = []
    for lin in SUBLAYERS[kind]:
        w, b = p[f"{prefix}{lin}.w"], p.get(f"{prefix}{lin}.b")
        if lora is not None:
            name = prefix + lin
            w = LoRAWeight(w, lora.p.get(name + ".lora_a"), lora.p.get(name + ".lora_b"), lora.scale)
        out += [w, b]
    return out


def norm_forward(x, p, name, bc, ops):
    """The norm `name` of kind bc.norm on x (..., C) -> out, cache. A layer norm of a model
    without biases gets a zero bias; an RMSNorm has none."""
    if bc.norm == "rmsnorm":
        out, c = ops.rmsnorm_forward(x, p[name + ".w"], bc.norm_eps)
    else:
        b = p.get(name + ".b")
        b = np.zeros(x.shape[-1], dtype=x.dtype) if b is None else b
        out, c = ops.layernorm_forward(x, p[name + ".w"], b, bc.norm_eps)
    return out, (c, bc.norm, ops)


def norm_backward(dout, cache):
    """dout: (..., C) -> dx, dw, db (None for an RMSNorm)."""
    c, kind, ops = cache
    if kind == "rmsnorm":
        return (*ops.rmsnorm_backward(dout, c), None)
    return ops.layernorm_backward(dout, c)


def padding_or_none(mask):
    """A key-padding mask as attention should get it: None when nothing is padding, so the fused
    Numba attention kernel (which takes no mask) runs."""
    return mask if mask is not None and mask.any() else None


def _put(g, name, grad):
    if grad is not None and name in g:  # a bias the model does not have gets no gradient
        g[name][...] = grad


# ----------------------------------------------------------------------------- one block


def block_forward(x, p, prefix, bc, ops, *, key_padding_mask=None, mem=None, mem_padding_mask=None,
                  kv_cache=None, layer=0, p_drop=0.0, rng=None, train=False, lora=None):  # fmt: skip
    """x: (B, T, C), p: {name: parameter} -> out: (B, T, C), cache

    key_padding_mask: (B, T) bool, True on padding keys (self-attention); mem: (B, S, C) and
    mem_padding_mask: (B, S) for cross-attention; kv_cache + layer: decode incrementally
    (`model.KVCache`, inference only); p_drop, rng, train: dropout on each branch's output.
    lora: low-rank adapters on the linear layers (anything with `.p` {name: array} and `.scale`,
    e.g. a `lora.LoRA`): the linears become `LoRAWeight`s run by `backend.lora_ops(ops)`, and the
    base's linear weights get no gradient. None: the plain path, untouched.
    """
    caches = []
    if lora is not None:
        ops = lora_ops(ops)
    for ln, kind in bc.sublayers():
        w = _weights(p, prefix, kind, lora)
        if kind == "attn":
            def f(h, w=w):
                return mha_forward(h, *w, bc.n_head, bc.causal, key_padding_mask, ops=ops, kv_cache=kv_cache,
                                   layer=layer, n_kv_head=bc.n_kv_head, rope_theta=bc.rope_theta,
                                   q_norm=p.get(prefix + "attn.q_norm.w"), k_norm=p.get(prefix + "attn.k_norm.w"),
                                   norm_eps=bc.norm_eps)  # fmt: skip
        elif kind == "cross":
            def f(h, w=w):
                return cross_attention_forward(h, mem, *w, bc.n_head, mem_padding_mask, ops=ops)
        else:
            def f(h, w=w):
                return MLPS[bc.mlp][0](h, *w, ops=ops)
        if bc.norm_position == "pre":
            h, ln_c = norm_forward(x, p, prefix + ln, bc, ops)
            o, f_c = f(h)
            o, drop_c = dropout_forward(o, p_drop, rng, train)
            x = x + o
        else:
            o, f_c = f(x)
            o, drop_c = dropout_forward(o, p_drop, rng, train)
            x, ln_c = norm_forward(x + o, p, prefix + ln, bc, ops)
        caches.append((ln, kind, ln_c, f_c, drop_c))
    return x, (bc, caches)


# sub-layer forward and backward by kind; the MLP by bc.mlp
MLPS = {"gelu": (mlp_forward, mlp_backward), "swiglu": (swiglu_forward, swiglu_backward)}


def block_backward(dout, cache, g, prefix):
    """dout: (B, T, C) -> dx: (B, T, C), dmem: (B, S, C) or None (without cross-attention).
    Writes the block's parameter gradients into g (a ParamStore's gradient views); an adapted
    linear's into g[prefix + lin + ".lora_a"] and [".lora_b"], names missing from g are skipped."""
    bc, caches = cache
    backward = {"attn": mha_backward, "cross": cross_attention_backward, "mlp": MLPS[bc.mlp][1]}
    dx, dmem = dout, None
    for ln, kind, ln_c, f_c, drop_c in reversed(caches):
        if bc.norm_position == "pre":
            # forward was: x_out = x + drop(f(N(x)))  ->  the residual copies dout to both paths
            dh, *grads = backward[kind](dropout_backward(dx, drop_c), f_c)
            dx_ln, dw, db = norm_backward(dh, ln_c)
            dx = dx + dx_ln
        else:
            # forward was: x_out = N(s), s = x + drop(f(x))  ->  ds = N^T dout, dx = ds + f^T drop^T ds
            ds, dw, db = norm_backward(dx, ln_c)
            dh, *grads = backward[kind](dropout_backward(ds, drop_c), f_c)
            dx = ds + dh
        _put(g, prefix + ln + ".w", dw)
        _put(g, prefix + ln + ".b", db)
        if kind == "cross":
            dmem, grads = grads[0], grads[1:]
        if kind == "attn" and len(grads) > 4:  # QK-norm's gains come after the linear layers'
            _put(g, prefix + "attn.q_norm.w", grads[4])
            _put(g, prefix + "attn.k_norm.w", grads[5])
        for lin, dw_lin, db_lin in zip(SUBLAYERS[kind], grads[0::2], grads[1::2]):
            if isinstance(dw_lin, LoRAGrad):  # an adapted linear (`backend.lora_ops`): no dw, no db
                _put(g, f"{prefix}{lin}.lora_a", dw_lin.a)
                _put(g, f"{prefix}{lin}.lora_b", dw_lin.b)
                continue
            _put(g, f"{prefix}{lin}.w", dw_lin)
            _put(g, f"{prefix}{lin}.b", db_lin)
    return dx, dmem


# ----------------------------------------------------------------------------- a stack of blocks


def stack_forward(x, p, prefixes, bc, ops, final_norm=None, **kw):
    """Blocks `prefixes` (e.g. ["h.0.", "h.1."]) in order, then the layer norm `final_norm`
    (e.g. "ln_f") if given. kw: block_forward's keywords; a kv_cache's layer is the block's index,
    and a padding mask with no padding in it is dropped (`padding_or_none`).
    -> out: (B, T, C), cache"""
    for name in ("key_padding_mask", "mem_padding_mask"):
        if name in kw:
            kw[name] = padding_or_none(kw[name])
    caches = []
    for i, prefix in enumerate(prefixes):
        x, c = block_forward(x, p, prefix, bc, ops, layer=i, **kw)
        caches.append(c)
    norm_c = None
    if final_norm is not None:
        x, norm_c = norm_forward(x, p, final_norm, bc, ops)
    return x, (prefixes, final_norm, caches, norm_c)


def stack_backward(dout, cache, g, first_block=0):
    """dout: (B, T, C) -> dx: (B, T, C), dmem (sum over the blocks' cross-attention, or None).
    Writes gradients of the final norm and of blocks first_block .. L-1 only (a caller that
    trains only the top of the network stops early)."""
    prefixes, final_norm, caches, norm_c = cache
    dx = dout
    if final_norm is not None:
        dx, dw, db = norm_backward(dx, norm_c)
        _put(g, final_norm + ".w", dw)
        _put(g, final_norm + ".b", db)
    dmem = None
    for i in reversed(range(first_block, len(prefixes))):
        dx, dm = block_backward(dx, caches[i], g, prefixes[i])
        if dm is not None:  # the memory feeds every block's cross-attention: its gradient is the sum
            dmem = dm if dmem is None else dmem + dm
    return dx, dmem


def attention_weights(stack_cache, kind="attn"):
    """The attention weights (B, NH, Tq, Tk) of every block's sub-layer `kind` ("attn" or
    "cross"), from the cache of a `stack_forward` run on the NumPy reference ops (the fused
    Numba kernel never forms them). For attention maps."""
    _, _, caches, _ = stack_cache
    # block cache (bc, sub-layers); sub-layer (ln, kind, ln_c, f_c, drop_c); an attention f_c
    # holds the reference attention cache (q, k, v, att, scale) second from its start (self)
    # or third (cross, after the q and kv projections)
    slot = 1 if kind == "attn" else 2
    return [f_c[slot][3] for _, subs in caches for _, k, _, f_c, _ in subs if k == kind]


# ----------------------------------------------------------------------------- embeddings and head


def embed_forward(ids, wte, pos_table, ops, *, offset=0, scale=None, p_drop=0.0, rng=None, train=False):
    """x = wte[ids] (* scale) + pos_table[offset:offset+T], then dropout.

    ids: (B, T) int, wte: (V, C), pos_table: (n_pos, C), learned or `layers.sinusoidal_table`,
    or None (RoPE: positions enter inside attention) -> x: (B, T, C), cache. scale: the paper's sqrt(d_model) on the token embedding, or None.
    ops: the backend (`backend.get_ops`) whose embedding pair runs the lookup and its scatter-add.
    """
    x, emb_c = ops.embedding_forward(ids, wte)  # (B, T, C)
    if scale is not None:
        x = x * x.dtype.type(scale)
    pos_c = None
    if pos_table is not None:  # None: no position embedding here (RoPE acts inside attention)
        x, pos_c = positional_forward(x, pos_table, offset)
    x, drop_c = dropout_forward(x, p_drop, rng, train)
    return x, (emb_c, pos_c, drop_c, scale, ops)


def embed_backward(dx, cache):
    """dx: (B, T, C) -> dwte: (V, C), dpos_table: (n_pos, C) (ignore it for a fixed table; None
    without a table)"""
    emb_c, pos_c, drop_c, scale, ops = cache
    dx = dropout_backward(dx, drop_c)
    # forward was: x = emb + table[offset:offset+T]
    dx, dtable = positional_backward(dx, pos_c) if pos_c is not None else (dx, None)
    if scale is not None:
        dx = dx * dx.dtype.type(scale)
    return ops.embedding_backward(dx, emb_c), dtable


def tied_head_forward(x, wte, bias, ops):
    """logits = x @ wte^T (+ bias): the output layer tied to the token embedding.

    x: (B, T, C), wte: (V, C), bias: (V,) or None -> logits: (B, T, V), cache. The transpose
    is a view, not a copy: both backends read it as it is (copying a 50257 x 768 table cost ~1 s
    per decoded token at GPT-2 size; the Numba product packs or streams wte's rows in place).
    """
    logits, c = ops.linear_forward(x, wte.T, bias)
    return logits, (c, ops)


def tied_head_backward(dout, cache):
    """dout: (B, T, V) -> dx: (B, T, C), dwte (head part): (V, C), dbias: (V,) or None.
    The caller adds dwte to the embedding's own gradient: wte is used twice."""
    c, ops = cache
    dx, dw, db = ops.linear_backward(dout, c)
    return dx, dw.T, db


def residual_std(n_layer, per_layer=2):
    """GPT-2's init of the residual projections: 0.02 / sqrt(number of residual branches)."""
    return 0.02 / math.sqrt(per_layer * n_layer)
