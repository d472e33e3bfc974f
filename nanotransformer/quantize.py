"""Weight-only int8 quantisation for decoding: symmetric, one scale per output channel.

    q, s = quantize_int8(w)              # w (C_in, C_out) float -> q (C_in, C_out) int8, s (C_out,)
    w_hat = dequantize(q, s)             # q * s, within s / 2 of w everywhere
    qmodel = quantize_model(model)       # the same GPT, its linear weights int8 (inference only)
    generate(qmodel, tok, "ROMEO:", ...) # the one decoder, unchanged

Why: decoding one token at batch 1 multiplies a (1, C_in) row by every weight matrix once, so
the time per token is bounded below by (bytes of weights) / (memory bandwidth): two flops per
weight read, far too few to keep the cores busy. Storing the weights in 1 byte instead of 4
reads a quarter of the bytes; the arithmetic stays float32 (weight-only quantisation: the
activations x are never rounded).

The rounding, per output column j of a (C_in, C_out) weight (our layout: out = x @ w + b):

    s_j = max_k |w_kj| / 127,    q_kj = round(w_kj / s_j) in [-127, 127],    w_kj ~ q_kj s_j

Symmetric (no zero point) because trained weights are centred on zero, and because then
x @ (q * s) = (x @ q) * s: the scale comes out of the sum, so the kernel multiplies each output
once instead of each weight. -128 is never used, so the grid is symmetric and -w rounds to -q.
Per output channel because the columns' ranges differ (one outlier column would otherwise
coarsen every column's grid), yet all of column j's products share s_j, so it still factors out.
The error of each weight is at most s_j / 2 (round to nearest); a column of zeros gets s_j = 1
(q = 0: exact).

How it plugs in (the LoRA pattern, `backend.lora_ops`): the quantized model's `p` holds an
`Int8Weight(q, scale)` in place of each linear weight, and its `ops` is `backend.quantized_ops(ops)`,
whose linear_forward runs an `Int8Weight` through `ops.int8_linear_forward` (this module's NumPy
reference `int8_linear_forward`, or its Numba kernel `kernels.int8_linear`) and everything else
through ops' own linear. The one block, the one GPT forward and the one decoder run it unchanged.
The tied LM head (V x C, read whole every token: 31 % of GPT-2 124M's float32 bytes per token,
64 % once the blocks are int8) is quantized too by default (head=True): the quantized model gets
an int8 copy of wte^T as its head, scales per vocabulary entry, while the embedding lookup keeps
the float wte (it reads one row per token).

Dimension legend: N rows (B * T flattened), C_in, C_out a linear layer's sizes, V vocab, C channels.

Does not: quantize activations or the KV cache, train or backpropagate through int8 weights
(inference only: the quantized model is frozen), save a quantized model in a checkpoint (quantize
after loading: it takes a second or two), or use int8 arithmetic (the products are float32).
"""
import copy
import dataclasses
from typing import NamedTuple

import numpy as np

from .validation import check_array, check_same_dtype

QUANTIZE_KINDS = ("int8",)  # the values the --quantize flag and pipeline(quantize=) accept
QMAX = 127  # symmetric: [-127, 127], -128 unused


class Int8Weight(NamedTuple):
    """A linear layer's weight stored as int8: q (C_in, C_out) int8 and scale (C_out,) float, with
    w ~ q * scale. The quantized model's `p` holds it in place of w; `backend.quantized_ops` runs it."""

    q: np.ndarray
    scale: np.ndarray

    @property
    def shape(self):
        return self.q.shape


def check_quantize(value, name="quantize"):
    """None (no quantisation) or one of QUANTIZE_KINDS; otherwise one error naming `name` (the flag
    or argument)."""
    if value is not None and value not in QUANTIZE_KINDS:
        raise ValueError(f"{name}: expected one of {QUANTIZE_KINDS} (or none), got {value!r}")
    return value


def quantize_int8(w):
    """w: (C_in, C_out) float -> q: (C_in, C_out) int8 (column-major), scale: (C_out,) of w's dtype,
    with |w - q * scale| <= scale / 2 everywhere (module docstring)."""
    check_array("w", w, ndim=2, floating=True)
    if not np.isfinite(w).all():
        raise ValueError("w: expected finite weights, got inf or nan")
    amax = np.abs(w).max(axis=0)  # (C_out,) the column's range
    scale = (amax / QMAX).astype(w.dtype)
    # an all-zero column (or one so small that amax / 127 underflows to 0): w_hat = 0, any scale is exact
    scale = np.where(scale > 0, scale, w.dtype.type(1.0))
    # column-major (Fortran order): output channel j's C_in weights are contiguous, so the kernel
    # streams each output's weights as one run of bytes (`kernels.int8_linear`); q[k, j] means the same
    q = np.asfortranarray(np.clip(np.rint(w / scale), -QMAX, QMAX).astype(np.int8))
    return q, scale


def dequantize(q, scale):
    """q: (C_in, C_out) int8, scale: (C_out,) -> w_hat = q * scale: (C_in, C_out) of scale's dtype."""
    return q.astype(scale.dtype) * scale


def check_int8_linear(x, q, scale, b):
    """The argument checks of `int8_linear_forward`, shared with its Numba twin's wrapper."""
    check_array("q", q, ndim=2)
    if q.dtype != np.int8:
        raise ValueError(f"q: expected an int8 array, got dtype {q.dtype}")
    check_same_dtype(x=x, scale=scale, b=b)
    check_array("x", x, min_ndim=1, shape=x.shape[:-1] + (q.shape[0],))
    check_array("scale", scale, shape=(q.shape[1],))
    if b is not None:
        check_array("b", b, shape=(q.shape[1],))


def int8_linear_forward(x, q, scale, b=None):
    """The NumPy reference (twin of the Numba kernel `kernels.int8_linear`): a linear layer whose
    weight is int8 with per-output-channel scales.

    x: (..., C_in) float, q: (C_in, C_out) int8, scale: (C_out,), b: (C_out,) or None
    -> out = (x @ q) * scale + b: (..., C_out), cache = None (inference only: no backward).
    (x @ q) * scale equals x @ (q * scale) in exact arithmetic: the scale is constant down a column.
    """
    check_int8_linear(x, q, scale, b)
    x2 = x.reshape(-1, x.shape[-1])  # (N, C_in)
    out = (x2 @ q.astype(x.dtype)) * scale  # (N, C_out)
    if b is not None:
        out += b
    return out.reshape(x.shape[:-1] + (q.shape[1],)), None


def linear_names(model):
    """Names of the model's linear-layer weights (the 2-D parameters inside the blocks)."""
    return [name for name, shape in model.specs if len(shape) == 2 and name.startswith("h.")]


def quantize_model(model, kind="int8", head=True):
    """A frozen copy of GPT `model` whose linear weights are `Int8Weight`s (and, with head=True, whose
    LM head is an int8 copy of its head), running on `backend.quantized_ops(model.ops)`.

    Everything else (embeddings, norms, biases) is read from the copy's own flat buffer, a copy of
    `model`'s taken now: training `model` afterwards does not reach the quantized copy (which
    would otherwise mix new float parameters with old int8 weights). The copy is for inference
    (forward, generation): it has no gradients, is not saved (`save_checkpoint` refuses it:
    quantize after loading) and takes no LoRA. A LoRA is merged first (`lora.inference_model`).
    """
    from .backend import quantized_ops  # the backend imports this module
    from .lora import inference_model

    check_quantize(kind, "kind")
    model = inference_model(model)
    if getattr(model, "kind", None) != "gpt":
        raise ValueError(f"model: expected a GPT (or a LoRA on one), got {type(model).__name__}")
    if getattr(model, "quantized", None):
        raise ValueError(f"model: already quantized ({model.quantized})")
    qm = copy.copy(model)  # the buffer, the dict of views and the config are replaced below
    qm.params = model.params.copy()
    qm.p = qm.views(qm.params)
    for name in linear_names(model):
        qm.p[name] = Int8Weight(*quantize_int8(model.p[name]))
    if head:
        w_head = model.p["wte"].T if model.config.tie_embeddings else model.p["lm_head.w"]  # (C, V)
        qm.p["lm_head.w"] = Int8Weight(*quantize_int8(w_head))
        # the forward reads an untied head from p["lm_head.w"]; the embedding keeps the float wte
        qm.config = dataclasses.replace(model.config, tie_embeddings=False)
    qm.ops = quantized_ops(model.ops)
    qm.quantized = kind
    qm._cache = None
    return qm.freeze()


def weight_bytes(model):
    """Bytes of weights one decoded token reads: every parameter except the position table and
    the embedding table's lookup (one row each), plus the head (wte read whole when tied)."""
    total = 0
    for name, value in model.p.items():
        if name == "wpe" or (name == "wte" and not model.config.tie_embeddings):
            continue  # a lookup reads one row
        total += sum(a.nbytes for a in value) if isinstance(value, Int8Weight) else value.nbytes
    return total
