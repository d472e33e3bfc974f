"""A decoder-only GPT (GPT-2 architecture), assembled from the forward/backward pairs of
`layers.py` and `attention.py`, with every parameter and gradient in one flat buffer.

    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, d_model=128))
    logits, loss = model.forward(ids, targets)      # ids, targets: (B, T) int
    model.backward()                                # fills model.grads (every parameter)
    model.p["h.0.attn.c_attn.w"]                    # a named view into model.params
    model.g["h.0.attn.c_attn.w"]                    # ... and into model.grads

The network (pre-LN, as GPT-2):

    x = wte[ids] + wpe[pos]                         # token + position embeddings (B, T, C)
    for each of the L blocks:
        x = x + attn(ln_1(x))                       # causal multi-head self-attention
        x = x + mlp(ln_2(x))                        # C -> 4C -> GELU -> C
    logits = ln_f(x) @ wte^T                        # LM head tied to the token embedding (B, T, V)

Flat buffer (llm.c): `model.params` is one 1-D array; each named parameter is a reshaped
slice of it (a view, so writing `model.p[name]` writes `model.params`). `model.grads` has the
same layout, so the optimiser and gradient clipping are single passes over one array, and
`model.decay_mask` (1 on 2-D weights, 0 on biases and layer-norm gains) says which entries
weight decay applies to. Names mirror GPT-2's (wte, wpe, h.{i}.ln_1.w, h.{i}.attn.c_attn.w,
...), and weights are stored (C_in, C_out) like GPT-2's Conv1D, so the forward reads x @ w + b.

The hot ops (linear, attention, layernorm, gelu, cross-entropy) come from
`backend.get_ops(config.backend)`, so the Numba kernels replace the NumPy reference without
touching this file. Embedding, positional encoding, dropout and the residual add are cheap
and always use `layers.py`.

Dimension legend: B batch, T time, C channels (d_model), NH heads, hs head size (C / NH),
V vocab, L layers.

Does not: implement dropout on the attention weights (only on the embeddings and on the output
of each residual branch), mixed precision, or sliding-window attention past block_size (the
generator crops the context instead, see `generate.py`).
"""
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .attention import merge_heads, split_heads
from .backend import get_ops
from .layers import (
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    positional_backward,
    positional_forward,
    residual_backward,
    residual_forward,
    sinusoidal_table,
)
from .validation import check_array, check_ids, check_model_config

POS_KINDS = ("learned", "sinusoidal")


@dataclass
class GPTConfig:
    """Hyper-parameters of the network (not of training: see `train.TrainConfig`)."""

    vocab_size: int = 65
    block_size: int = 64  # the longest context the model can see (T <= block_size)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in the linear layers and layer norms (nanoGPT's switch)
    pos: str = "learned"  # "learned" (GPT-2) or "sinusoidal" (the original transformer)
    backend: str = None  # None: $NANOTRANSFORMER_BACKEND, else the default (see backend.py)

    def __post_init__(self):
        check_model_config(self, ("vocab_size", "block_size", "n_layer", "n_head", "d_model"))
        if self.pos not in POS_KINDS:
            raise ValueError(f"pos: expected one of {POS_KINDS}, got {self.pos!r}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """Build from a dict (e.g. a checkpoint's JSON), rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}, expected some of {sorted(known)}")
        return cls(**d)


class KVCache:
    """Keys and values of every position decoded so far, one (B, NH, T_seen, hs) pair per layer.

    With the cache, decoding one more token costs one row of attention instead of re-running
    the whole prefix: the new token's query attends to the cached keys (`attention_forward`'s
    Tq < Tk causal offset) and its own key and value are appended.
    """

    def __init__(self, n_layer):
        self.k = [None] * n_layer
        self.v = [None] * n_layer

    def __len__(self):
        """Number of positions cached (the position of the next token)."""
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def append(self, i, k, v):
        """Add layer i's new keys/values (B, NH, T_new, hs); return all of them (B, NH, T_seen, hs)."""
        if self.k[i] is not None:
            k = np.concatenate([self.k[i], k], axis=2)
            v = np.concatenate([self.v[i], v], axis=2)
        self.k[i], self.v[i] = k, v
        return k, v

    def reorder(self, rows):
        """Keep batch rows `rows` (B_new,) in that order (beam search follows each beam's parent)."""
        self.k = [None if k is None else k[rows] for k in self.k]
        self.v = [None if v is None else v[rows] for v in self.v]


class GPT:
    """The model: parameters (flat buffer + named views) and the forward/backward passes.

    GPT(config, dtype=np.float32, seed=0): float32 to train, float64 to gradient-check.
    Initialisation as GPT-2: weights ~ N(0, 0.02), the two residual projections of every block
    (attn.c_proj, mlp.c_proj) ~ N(0, 0.02 / sqrt(2L)) so the residual stream's variance does
    not grow with depth, biases 0, layer-norm gains 1.
    """

    def __init__(self, config, dtype=np.float32, seed=0):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise ValueError(f"dtype: expected a floating-point dtype, got {self.dtype}")
        self.ops = get_ops(config.backend)
        self.specs = self.param_specs(config)
        n = sum(math.prod(shape) for _, shape in self.specs)
        self.params = np.zeros(n, dtype=self.dtype)
        self.grads = np.zeros(n, dtype=self.dtype)
        self.p = self.views(self.params)
        self.g = self.views(self.grads)
        self.decay_mask = np.zeros(n, dtype=self.dtype)
        for name, view in self.views(self.decay_mask).items():
            view[...] = 1.0 if view.ndim == 2 else 0.0  # decay matrices, not biases or LN gains
        C = config.d_model
        self._zeros_C = np.zeros(C, dtype=self.dtype)  # layer-norm bias when bias=False
        self._pe = sinusoidal_table(config.block_size, C, self.dtype) if config.pos == "sinusoidal" else None
        self._cache = None
        self.init_weights(seed)

    # ------------------------------------------------------------------------- parameters

    @staticmethod
    def param_specs(config):
        """[(name, shape)] of every parameter, in buffer order (GPT-2 names)."""
        V, T, C, L = config.vocab_size, config.block_size, config.d_model, config.n_layer
        specs = [("wte", (V, C))]
        if config.pos == "learned":
            specs.append(("wpe", (T, C)))

        def lin(name, c_in, c_out):
            return [(name + ".w", (c_in, c_out))] + ([(name + ".b", (c_out,))] if config.bias else [])

        def ln(name):
            return [(name + ".w", (C,))] + ([(name + ".b", (C,))] if config.bias else [])

        for i in range(L):
            h = f"h.{i}."
            specs += ln(h + "ln_1") + lin(h + "attn.c_attn", C, 3 * C) + lin(h + "attn.c_proj", C, C)
            specs += ln(h + "ln_2") + lin(h + "mlp.c_fc", C, 4 * C) + lin(h + "mlp.c_proj", 4 * C, C)
        return specs + ln("ln_f")

    def views(self, flat):
        """{name: view} of a flat array laid out like `params` (also used for optimiser moments)."""
        check_array("flat", flat, shape=(self.params.shape[0],))
        out, offset = {}, 0
        for name, shape in self.specs:
            size = math.prod(shape)
            out[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return out

    def num_params(self):
        """Number of trainable parameters (the tied LM head is counted once, as wte)."""
        return int(self.params.size)

    def init_weights(self, seed=0):
        """GPT-2 initialisation (see class docstring). Drawn in float64 then cast, so float32 and
        float64 models built with the same seed hold the same values."""
        rng = np.random.default_rng(seed)
        std_resid = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, shape in self.specs:
            if name.endswith(".b"):
                val = np.zeros(shape)
            elif len(shape) == 1:  # layer-norm gain
                val = np.ones(shape)
            else:
                std = std_resid if name.endswith("c_proj.w") else 0.02
                val = rng.normal(0.0, std, size=shape)
            self.p[name][...] = val

    def _get(self, name):
        """Parameter `name`, or None for a bias the config switched off."""
        return self.p.get(name)

    def _ln_b(self, name):
        return self.p.get(name, self._zeros_C)

    # ------------------------------------------------------------------------- forward

    def forward(self, ids, targets=None, *, train=False, rng=None, kv_cache=None):
        """ids: (B, T) int in [0, V) -> logits: (B, T, V), loss: float or None

        targets: (B, T) int (or -100 to ignore a position) -> loss = mean cross-entropy.
        train=True applies dropout, drawn from `rng` (a np.random.Generator the trainer owns).
        kv_cache: a `KVCache` to decode incrementally (inference only): ids are the positions
        after the cached ones, and their keys/values are appended to the cache.
        After a forward with targets, `backward()` computes the gradients.
        """
        if kv_cache is not None and targets is not None:
            raise ValueError("kv_cache: only for inference (train=False, targets=None)")
        xf, hidden_c = self.hidden_forward(ids, train=train, rng=rng, kv_cache=kv_cache)
        # LM head tied to the embedding: logits = xf @ wte^T. The transpose is a view, not a copy:
        # BLAS reads it as is (copying 50257 x 768 floats cost ~1 s per decoded token at GPT-2
        # size, 50x the matmul), and the Numba wrapper makes its own contiguous copy if it needs one.
        w_head = self.p["wte"].T  # (C, V)
        logits, head_c = self.ops.linear_forward(xf, w_head, None)  # (B, T, V)

        loss, loss_c = None, None
        if targets is not None:
            loss_arr, loss_c = self.ops.cross_entropy_forward(logits, targets)
            loss = float(loss_arr)
        self._cache = (hidden_c, head_c, loss_c) if targets is not None else None
        return logits, loss

    def hidden_forward(self, ids, *, train=False, rng=None, kv_cache=None):
        """ids: (B, T) int in [0, V) -> h: (B, T, C), cache

        The network up to and including the final layer norm: the hidden states the LM head
        reads, for other heads to read too (`finetune.GPTClassifier`). `hidden_backward(dh,
        cache)` is its backward. train, rng, kv_cache as in `forward`.
        """
        cfg, ops = self.config, self.ops
        check_ids("ids", ids, cfg.vocab_size)
        check_array("ids", ids, ndim=2)
        B, T = ids.shape
        offset = 0 if kv_cache is None else len(kv_cache)
        if T < 1:
            raise ValueError("ids: expected at least one position, got shape (B, 0)")
        if offset + T > cfg.block_size:
            raise ValueError(
                f"ids: expected at most block_size={cfg.block_size} positions, got {offset + T}"
                + (f" ({offset} cached + {T} new)" if offset else "")
            )
        if kv_cache is not None and train:
            raise ValueError("kv_cache: only for inference (train=False, targets=None)")
        p_drop = cfg.dropout if train else 0.0

        # embeddings: x = wte[ids] + pos[offset:offset+T], then dropout
        x, emb_c = embedding_forward(ids, self.p["wte"])  # (B, T, C)
        table = self.p["wpe"] if cfg.pos == "learned" else self._pe
        x, pos_c = positional_forward(x, table, offset)
        x, drop_c = dropout_forward(x, p_drop, rng, train)

        block_caches = []
        for i in range(cfg.n_layer):
            x, c = self._block_forward(x, i, p_drop, rng, train, kv_cache)
            block_caches.append(c)

        xf, lnf_c = ops.layernorm_forward(x, self.p["ln_f.w"], self._ln_b("ln_f.b"))  # (B, T, C)
        return xf, (emb_c, pos_c, drop_c, block_caches, lnf_c)

    def _block_forward(self, x, i, p_drop, rng, train, kv_cache):
        """One pre-LN block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). x: (B, T, C)"""
        ops, p, h = self.ops, self.p, f"h.{i}."
        NH = self.config.n_head
        # attention sub-layer
        a, ln1_c = ops.layernorm_forward(x, p[h + "ln_1.w"], self._ln_b(h + "ln_1.b"))
        qkv, qkv_c = ops.linear_forward(a, p[h + "attn.c_attn.w"], self._get(h + "attn.c_attn.b"))  # (B, T, 3C)
        q, k, v = (np.ascontiguousarray(split_heads(t, NH)) for t in np.split(qkv, 3, axis=-1))  # (B, NH, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.append(i, k, v)  # (B, NH, T_seen, hs)
        y, att_c = ops.attention_forward(q, k, v, causal=True)  # (B, NH, T, hs)
        o, aproj_c = ops.linear_forward(merge_heads(y), p[h + "attn.c_proj.w"], self._get(h + "attn.c_proj.b"))
        o, drop1_c = dropout_forward(o, p_drop, rng, train)
        x, _ = residual_forward(x, o)
        # MLP sub-layer
        m, ln2_c = ops.layernorm_forward(x, p[h + "ln_2.w"], self._ln_b(h + "ln_2.b"))
        u, fc_c = ops.linear_forward(m, p[h + "mlp.c_fc.w"], self._get(h + "mlp.c_fc.b"))  # (B, T, 4C)
        u, gelu_c = ops.gelu_forward(u)
        o, mproj_c = ops.linear_forward(u, p[h + "mlp.c_proj.w"], self._get(h + "mlp.c_proj.b"))  # (B, T, C)
        o, drop2_c = dropout_forward(o, p_drop, rng, train)
        x, _ = residual_forward(x, o)
        return x, (ln1_c, qkv_c, att_c, aproj_c, drop1_c, ln2_c, fc_c, gelu_c, mproj_c, drop2_c)

    # ------------------------------------------------------------------------- backward

    def backward(self):
        """Gradient of the last forward's loss with respect to every parameter, written into
        `model.grads` (every entry is overwritten, so there is no zero_grad). Returns `model.grads`."""
        if self._cache is None:
            raise ValueError("backward: expected a preceding forward(ids, targets) with targets, got none")
        ops = self.ops
        hidden_c, head_c, loss_c = self._cache
        self._cache = None  # one backward per forward: the caches are consumed

        dlogits = ops.cross_entropy_backward(np.ones((), dtype=self.dtype), loss_c)  # (B, T, V)
        # forward was: logits = xf @ wte^T  ->  dxf = dlogits @ wte, dwte (head part) = (xf^T @ dlogits)^T
        dxf, dw_head, _ = ops.linear_backward(dlogits, head_c)
        self.hidden_backward(dxf, hidden_c)
        # wte is used twice (embedding lookup and LM head), so its gradient is the sum of both
        self.g["wte"] += dw_head.T
        return self.grads

    def hidden_backward(self, dh, cache, first_block=0, embeddings=True):
        """dh: (B, T, C), the gradient at `hidden_forward`'s output; writes into `model.grads` the
        gradients of ln_f, of blocks first_block .. L-1 and, if `embeddings` (which needs
        first_block = 0), of wte and wpe. Nothing else is written: a caller that trains only the
        top of the network stops early and zeroes the rest itself (`finetune.GPTClassifier`)."""
        if embeddings and first_block != 0:
            raise ValueError(f"first_block: expected 0 when embeddings=True, got {first_block}")
        ops, g = self.ops, self.g
        emb_c, pos_c, drop_c, block_caches, lnf_c = cache
        dx, dw, db = ops.layernorm_backward(dh, lnf_c)
        self._put("ln_f", dw, db)
        for i in reversed(range(first_block, self.config.n_layer)):
            dx = self._block_backward(dx, i, block_caches[i])
        if embeddings:
            dx = dropout_backward(dx, drop_c)
            # forward was: x = emb + table[offset:offset+T]; a sinusoidal table is fixed (no gradient)
            dx, dtable = positional_backward(dx, pos_c)
            if self.config.pos == "learned":
                g["wpe"][...] = dtable
            g["wte"][...] = embedding_backward(dx, emb_c)

    def _block_backward(self, dout, i, cache):
        """dout: (B, T, C) -> dx: (B, T, C); writes block i's parameter gradients."""
        ops, h, NH = self.ops, f"h.{i}.", self.config.n_head
        ln1_c, qkv_c, att_c, aproj_c, drop1_c, ln2_c, fc_c, gelu_c, mproj_c, drop2_c = cache
        # forward was: x = x + drop(mlp(ln_2(x)))  ->  the residual copies dout to both branches
        dx, do = residual_backward(dout, None)
        do = dropout_backward(do, drop2_c)
        du, dw, db = ops.linear_backward(do, mproj_c)
        self._put(h + "mlp.c_proj", dw, db)
        du = ops.gelu_backward(du, gelu_c)
        dm, dw, db = ops.linear_backward(du, fc_c)
        self._put(h + "mlp.c_fc", dw, db)
        dx2, dw, db = ops.layernorm_backward(dm, ln2_c)
        self._put(h + "ln_2", dw, db)
        dx = dx + dx2
        # forward was: x = x + drop(c_proj(merge(attention(split(c_attn(ln_1(x)))))))
        dx, do = residual_backward(dx, None)
        do = dropout_backward(do, drop1_c)
        dy, dw, db = ops.linear_backward(do, aproj_c)
        self._put(h + "attn.c_proj", dw, db)
        dq, dk, dv = ops.attention_backward(np.ascontiguousarray(split_heads(dy, NH)), att_c)
        # forward was: q, k, v = split(qkv, 3)  ->  dqkv = concat(dq, dk, dv)
        dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, 3C)
        da, dw, db = ops.linear_backward(dqkv, qkv_c)
        self._put(h + "attn.c_attn", dw, db)
        dx1, dw, db = ops.layernorm_backward(da, ln1_c)
        self._put(h + "ln_1", dw, db)
        return dx + dx1

    def _put(self, prefix, dw, db):
        """Write the gradients of `prefix.w` and (if the model has it) `prefix.b`."""
        self.g[prefix + ".w"][...] = dw
        if prefix + ".b" in self.g:
            self.g[prefix + ".b"][...] = db

    # ------------------------------------------------------------------------- state

    def state_dict(self):
        """{name: array view} of every parameter (GPT-2 names)."""
        return dict(self.p)

    def load_state_dict(self, tensors, source="tensors"):
        """Copy {name: array} into the buffer; every name must be present with the right shape.
        `source` names where the tensors came from, for the error message."""
        for name, shape in self.specs:
            if name not in tensors:
                raise ValueError(f"{source}: missing tensor {name!r} (shape {shape})")
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise ValueError(f"{source}: tensor {name!r} expected shape {shape}, got {tuple(t.shape)}")
        for name, _ in self.specs:
            self.p[name][...] = tensors[name]
