"""A decoder-only GPT — GPT-2's block by default, Llama's with the switches — assembled from the
forward/backward pairs of `layers.py` and `attention.py`, with every parameter and gradient in one
flat buffer.

    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, d_model=128))
    model = GPT(GPTConfig.preset("llama", vocab_size=65, ...))   # RMSNorm, RoPE, SwiGLU, GQA
    logits, loss = model.forward(ids, targets)      # ids, targets: (B, T) int
    model.backward()                                # fills model.grads (every parameter)
    model.p["h.0.attn.c_attn.w"]                    # a named view into model.params
    model.g["h.0.attn.c_attn.w"]                    # ... and into model.grads

The network (pre-norm, as GPT-2 and Llama):

    x = wte[ids] (+ wpe[pos])                       # token (+ learned position) embeddings (B, T, C)
    for each of the L blocks:
        x = x + attn(norm_1(x))                     # causal multi-head self-attention
        x = x + mlp(norm_2(x))                      # C -> 4C -> GELU -> C, or SwiGLU
    logits = norm_f(x) @ wte^T                      # LM head tied to the token embedding (B, T, V)

The switches (`GPTConfig`): norm "layernorm" | "rmsnorm"; pos "learned" | "sinusoidal" | "rope"
(rotary: no position table, q and k are rotated inside attention); mlp "gelu" | "swiglu";
n_kv_head < n_head for grouped-query attention; tie_embeddings=False for an own head
"lm_head.w" (C, V); qk_norm; bias / qkv_bias. `GPTConfig.preset("llama")` sets Llama's
(`ARCHS`); the defaults are GPT-2's.

Flat buffer (llm.c, `params.ParamStore`): `model.params` is one 1-D array; each named
parameter is a reshaped slice of it (a view, so writing `model.p[name]` writes `model.params`). `model.grads` has the
same layout, so the optimiser and gradient clipping are single passes over one array, and
`model.decay_mask` (1 on 2-D weights, 0 on biases and layer-norm gains) says which entries
weight decay applies to. Names mirror GPT-2's (wte, wpe, h.{i}.ln_1.w, h.{i}.attn.c_attn.w,
...), and weights are stored (C_in, C_out) like GPT-2's Conv1D, so the forward reads x @ w + b.

The model is the three pieces of `block.py` that every model shares: the embedding front end,
a stack of L of the one transformer block (causal, pre-norm) and the (tied or own) head; the parameters
live in one `params.ParamStore`. The hot ops (linear, attention, layernorm, rmsnorm,
rope, gelu, cross-entropy, embedding) come from `backend.get_ops(config.backend)`, so the Numba kernels replace the
NumPy reference without touching this file.

Dimension legend: B batch, T time, C channels (d_model), NH heads, NKV key/value heads, hs head
size (C / NH), V vocab, L layers.

Does not: implement dropout on the attention weights (only on the embeddings and on the output
of each residual branch), mixed precision, or sliding-window attention past block_size (the
generator crops the context instead, see `generation.py`).
"""
from dataclasses import dataclass

import numpy as np

from .resources import check_model_memory
from .backend import get_ops
from .block import (
    MLP_KINDS,
    NORM_KINDS,
    BlockConfig,
    block_specs,
    embed_backward,
    embed_forward,
    norm_specs,
    residual_std,
    stack_backward,
    stack_forward,
    tied_head_backward,
    tied_head_forward,
)
from .layers import frozen_linear_backward, frozen_linear_forward, sinusoidal_table
from .params import ParamStore
from .validation import ConfigDict, check_array, check_ids, check_model_config, check_number, check_same_dtype

POS_KINDS = ("learned", "sinusoidal", "rope")

# Architecture presets (`nanotransformer train --arch ...`): switches of GPTConfig. Flags and
# keyword arguments override them. "llama": the block of Llama 2/3, Mistral and Qwen2 — RMSNorm,
# RoPE, SwiGLU, grouped-query attention (half as many key/value heads as query heads), no
# biases, an untied LM head.
ARCHS = {
    "gpt2": dict(norm="layernorm", pos="learned", mlp="gelu", bias=True, tie_embeddings=True),
    "llama": dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head="half"),
}


def default_d_ff(d_model, mlp):
    """The MLP's hidden width: 4C for GELU; for SwiGLU 8C/3 rounded up to a multiple of 8, so its
    three matrices hold as many parameters as GELU's two (3 x 8C/3 = 2 x 4C)."""
    return 4 * d_model if mlp == "gelu" else -(-8 * d_model // 3 // 8) * 8


@dataclass
class GPTConfig(ConfigDict):
    """Hyper-parameters of the network (not of training: see `train.TrainConfig`).

    The defaults are GPT-2's block; `GPTConfig.preset("llama", ...)` switches to Llama's."""

    vocab_size: int = 65
    block_size: int = 64  # the longest context the model can see (T <= block_size)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in the linear layers and layer norms (nanoGPT's switch)
    pos: str = "learned"  # "learned" (GPT-2), "sinusoidal" (the original transformer) or "rope" (Llama)
    backend: str = None  # None: $NANOTRANSFORMER_BACKEND, else the default (see backend.py)
    norm: str = "layernorm"  # or "rmsnorm"
    mlp: str = "gelu"  # or "swiglu"
    d_ff: int = None  # the MLP's hidden width (None: `default_d_ff`)
    n_kv_head: int = None  # key/value heads, a divisor of n_head (None: n_head; 1: multi-query)
    tie_embeddings: bool = True  # the LM head is wte^T (else its own lm_head.w)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys
    rope_theta: float = 10000.0  # RoPE's base (pos="rope")
    norm_eps: float = 1e-5  # eps of every norm
    qkv_bias: bool = None  # biases on the q, k, v projection only (None: same as bias; Qwen2: True)

    def __post_init__(self):
        for name, allowed in (("pos", POS_KINDS), ("norm", NORM_KINDS), ("mlp", MLP_KINDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        check_model_config(self, ("vocab_size", "block_size", "n_layer", "n_head", "d_model"))
        if self.d_ff is None:
            self.d_ff = default_d_ff(self.d_model, self.mlp)
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        check_model_config(self, ("d_ff", "n_kv_head"))
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head: expected a divisor of n_head={self.n_head}, got {self.n_kv_head}")
        if self.pos == "rope" and (self.d_model // self.n_head) % 2:
            raise ValueError(f"pos: 'rope' needs an even head size, got d_model / n_head = {self.d_model // self.n_head}")
        check_number("rope_theta", self.rope_theta, 1)
        check_number("norm_eps", self.norm_eps, 0)
        for name in ("bias", "tie_embeddings", "qk_norm", "qkv_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, arch, **overrides):
        """GPTConfig of architecture `arch` (a key of ARCHS); keyword arguments override it."""
        kw = arch_switches(arch, overrides.get("n_head", cls.n_head))
        kw.update(overrides)
        return cls(**kw)


def arch_switches(arch, n_head):
    """The switches preset `arch` sets (a key of ARCHS), for a model of n_head heads ("half":
    n_head / 2 key/value heads, or n_head when that is odd)."""
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {tuple(ARCHS)}, got {arch!r}")
    kw = dict(ARCHS[arch])
    if kw.get("n_kv_head") == "half":
        kw["n_kv_head"] = n_head // 2 if n_head % 2 == 0 else n_head
    return kw


class KVCache:
    """Keys and values of every position decoded so far, one (B, NKV, T_seen, hs) pair per layer
    (NKV = NH without grouped-query attention). RoPE has already rotated the cached keys.

    With the cache, decoding one more token costs one row of attention instead of re-running
    the whole prefix: the new token's query attends to the cached keys (`attention_forward`'s
    Tq < Tk causal offset) and its own key and value are appended.

    Storage: `k[i]`, `v[i]` are views of the first T_seen rows of buffers (B, NKV, N, hs) that
    double in length N when full, so appending a token copies that token, not the whole cache
    (np.concatenate would copy all T_seen rows per token: O(T^2) over a long generation), and
    the Numba attention reads the keys in place (`kernels.attention._leading_rows`).
    """

    def __init__(self, n_layer):
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self._buf = [None] * n_layer  # (k_buf, v_buf) per layer, or None

    def __len__(self):
        """Number of positions cached (the position of the next token)."""
        return self.length(0)

    def length(self, i):
        """Positions cached in layer i (layers before it may already hold this step's tokens)."""
        return 0 if self.k[i] is None else self.k[i].shape[2]

    def nbytes(self):
        """Bytes of the cached keys and values: 2 (k, v) x L x B x NKV x T_seen x hs x itemsize.
        Grouped-query attention stores NKV heads, not NH: NH / NKV times less. (The buffers hold
        up to twice this: room for the positions still to come.)"""
        return sum(t.nbytes for t in self.k + self.v if t is not None)

    def append(self, i, k, v):
        """Add layer i's new keys/values (B, NKV, T_new, hs); return all of them (B, NKV, T_seen, hs)."""
        n, t = self.length(i), k.shape[2]
        for name, new, old in (("k", k, self.k[i]), ("v", v, self.v[i])):  # checked before anything is written
            # the usual case in one expression (this runs per layer of a decoding step), then the
            # checks that name what is wrong
            if old is not None and not (isinstance(new, np.ndarray) and new.dtype == old.dtype
                                        and new.shape[:2] == old.shape[:2] and new.shape[3:] == old.shape[3:]):  # fmt: skip
                check_same_dtype(**{f"layer {i}'s cache": old, name: new})
                check_array(f"{name} (for layer {i}'s cache)", new, shape=old.shape[:2] + (None,) + old.shape[3:])
        buf = self._buf[i]
        if buf is None or n + t > buf[0].shape[2]:
            size = max(16, 2 * (n + t))
            buf = tuple(np.empty(a.shape[:2] + (size,) + a.shape[3:], a.dtype) for a in (k, v))
            if n:  # the cached rows move to the new buffers once
                buf[0][:, :, :n], buf[1][:, :, :n] = self.k[i], self.v[i]
            self._buf[i] = buf
        buf[0][:, :, n : n + t], buf[1][:, :, n : n + t] = k, v
        self.k[i], self.v[i] = buf[0][:, :, : n + t], buf[1][:, :, : n + t]
        return self.k[i], self.v[i]

    def reorder(self, rows):
        """Keep batch rows `rows` (B_new,) in that order (beam search follows each beam's parent)."""
        self.k = [None if k is None else k[rows] for k in self.k]
        self.v = [None if v is None else v[rows] for v in self.v]
        self._buf = [None] * len(self.k)  # the next append moves the reordered rows into new buffers


class GPT(ParamStore):
    """The model: parameters (one `ParamStore`: flat buffer + named views) and the forward and
    backward passes.

    GPT(config, dtype=np.float32, seed=0): float32 to train, float64 to gradient-check.
    Initialisation as GPT-2: weights ~ N(0, 0.02), the two residual projections of every block
    (attn.c_proj, mlp.c_proj) ~ N(0, 0.02 / sqrt(2L)) so the residual stream's variance does
    not grow with depth, biases 0, layer-norm gains 1.
    """

    kind = "gpt"
    config_class = GPTConfig

    def __init__(self, config, dtype=np.float32, seed=0):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
        check_model_memory(type(self), config, dtype)  # before anything is allocated (resources.py)
        self.config = config
        self.ops = get_ops(config.backend)
        self.block = self.block_config(config)
        self.prefixes = [f"h.{i}." for i in range(config.n_layer)]
        self._pe = sinusoidal_table(config.block_size, config.d_model, np.dtype(dtype)) if config.pos == "sinusoidal" else None
        self._cache = None
        self.build(self.param_specs(config), dtype, seed)

    @staticmethod
    def block_config(config):
        """GPT's block: causal, pre-norm, and the config's switches (norm, MLP, RoPE, GQA, ...)."""
        return BlockConfig(
            n_head=config.n_head, d_ff=config.d_ff, causal=True, bias=config.bias, norm=config.norm,
            mlp=config.mlp, n_kv_head=config.n_kv_head, rope_theta=config.rope_theta if config.pos == "rope" else None,
            qk_norm=config.qk_norm, norm_eps=config.norm_eps, qkv_bias=config.qkv_bias,
        )  # fmt: skip

    @staticmethod
    def param_specs(config):
        """[(name, shape)] of every parameter, in buffer order (GPT-2 names; "lm_head.w" (C, V)
        last when the head is untied)."""
        V, T, C = config.vocab_size, config.block_size, config.d_model
        bc = GPT.block_config(config)
        specs = [("wte", (V, C))] + ([("wpe", (T, C))] if config.pos == "learned" else [])
        for i in range(config.n_layer):
            specs += block_specs(f"h.{i}.", C, bc)
        specs += norm_specs("ln_f", C, config.bias, config.norm)
        return specs + ([] if config.tie_embeddings else [("lm_head.w", (C, V))])

    def init_std(self, name, shape):
        return residual_std(self.config.n_layer) if name.endswith("c_proj.w") else 0.02

    # ------------------------------------------------------------------------- forward

    def forward(self, ids, targets=None, *, train=False, rng=None, kv_cache=None, lora=None):
        """ids: (B, T) int in [0, V) -> logits: (B, T, V), loss: float or None

        targets: (B, T) int (or -100 to ignore a position) -> loss = mean cross-entropy.
        train=True applies dropout, drawn from `rng` (a np.random.Generator the trainer owns).
        kv_cache: a `KVCache` to decode incrementally (inference only): ids are the positions
        after the cached ones, and their keys/values are appended to the cache.
        lora: a `lora.LoRA` whose adapters run on this model's (frozen) linear layers.
        After a forward with targets, `backward()` computes the gradients; after one with
        targets or train=True, `backward_from_logits(dlogits)` those of any loss of the logits.
        """
        if kv_cache is not None and targets is not None:
            raise ValueError("kv_cache: only for inference (train=False, targets=None)")
        xf, hidden_c = self.hidden_forward(ids, train=train, rng=rng, kv_cache=kv_cache, lora=lora)
        w_head = self.p["wte"].T if self.config.tie_embeddings else self.p["lm_head.w"]  # (C, V), .T a view
        if lora is not None:  # the head is frozen too: its backward is dx only
            logits, head_c = frozen_linear_forward(xf, w_head, None, ops=self.ops)  # (B, T, V)
        elif self.config.tie_embeddings:
            logits, head_c = tied_head_forward(xf, self.p["wte"], None, self.ops)  # (B, T, V)
        else:
            logits, head_c = self.ops.linear_forward(xf, w_head, None)  # (B, T, V)
        loss, loss_c = None, None
        if targets is not None:
            loss_arr, loss_c = self.ops.cross_entropy_forward(logits, targets)
            loss = float(loss_arr)
        keep = targets is not None or train  # train without targets: another loss's backward follows
        self._cache = (hidden_c, head_c, loss_c, logits.shape, lora) if keep else None
        return logits, loss

    def hidden_forward(self, ids, *, train=False, rng=None, kv_cache=None, lora=None):
        """ids: (B, T) int in [0, V) -> h: (B, T, C), cache

        The network up to and including the final layer norm: the hidden states the LM head
        reads, for other heads to read too (`finetuning.GPTClassifier`). `hidden_backward(dh,
        cache)` is its backward. train, rng, kv_cache, lora as in `forward`.
        """
        cfg = self.config
        check_ids("ids", ids, cfg.vocab_size)
        check_array("ids", ids, ndim=2)
        T = ids.shape[1]
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
        table = self.p["wpe"] if cfg.pos == "learned" else self._pe  # None with RoPE
        x, emb_c = embed_forward(ids, self.p["wte"], table, self.ops, offset=offset, p_drop=p_drop, rng=rng, train=train)
        xf, stack_c = stack_forward(x, self.p, self.prefixes, self.block, self.ops, "ln_f", kv_cache=kv_cache,
                                    p_drop=p_drop, rng=rng, train=train, lora=lora)  # (B, T, C)
        return xf, (emb_c, stack_c, lora)

    # ------------------------------------------------------------------------- backward

    def backward(self, lora=None):
        """Gradient of the last forward's loss with respect to every parameter, written into
        `model.grads` (every entry is overwritten, so there is no zero_grad). Returns `model.grads`.
        After a forward with a LoRA: the adapters' gradients only, into the LoRA's grads (returned;
        see `backward_from_logits`)."""
        if self._cache is None or self._cache[2] is None:
            raise ValueError("backward: expected a preceding forward(ids, targets) with targets, got none")
        dlogits = self.ops.cross_entropy_backward(np.ones((), dtype=self.dtype), self._cache[2])  # (B, T, V)
        return self.backward_from_logits(dlogits, lora)

    def backward_from_logits(self, dlogits, lora=None):
        """dlogits: (B, T, V), the gradient of any loss at the last forward's logits (that forward
        had targets or train=True) -> the gradient buffer it wrote.

        Without a LoRA: every parameter's gradient, into `model.grads` (returned). With the LoRA
        the forward ran with (`lora` defaults to it; if given it must be that one): only the
        adapters' gradients, into `lora.grads` (returned): no dw of the frozen linears, no
        embedding gradient, and through the head only dx."""
        if self._cache is None:
            raise ValueError("backward_from_logits: expected a preceding forward with targets or train=True, got none")
        hidden_c, head_c, _, shape, used = self._cache
        if lora is not None and lora is not used:
            raise ValueError("lora: expected the LoRA the forward ran with (or None), got another")
        check_array("dlogits", dlogits, shape=shape)
        if used is None and self.grads is None:
            raise ValueError("backward: this model is frozen (freeze()), it has no gradient buffer")
        self._cache = None  # one backward per forward: the caches are consumed
        if used is not None:
            # forward was: logits = xf @ w_head (frozen)  ->  dxf = dlogits @ w_head^T, nothing else
            self.hidden_backward(frozen_linear_backward(dlogits, head_c), hidden_c)
            return used.grads
        if not self.config.tie_embeddings:
            dxf, self.g["lm_head.w"][...], _ = self.ops.linear_backward(dlogits, head_c)
            self.hidden_backward(dxf, hidden_c)
            return self.grads
        # forward was: logits = xf @ wte^T  ->  dxf = dlogits @ wte, dwte (head part) = dlogits^T @ xf
        dxf, dwte_head, _ = tied_head_backward(dlogits, head_c)
        self.hidden_backward(dxf, hidden_c)
        self.g["wte"] += dwte_head  # wte is used twice (lookup and head): the gradients add
        return self.grads

    def hidden_backward(self, dh, cache, first_block=0, embeddings=True):
        """dh: (B, T, C), the gradient at `hidden_forward`'s output; writes into `model.grads` the
        gradients of ln_f, of blocks first_block .. L-1 and, if `embeddings` (which needs
        first_block = 0), of wte and wpe. Nothing else is written: a caller that trains only the
        top of the network stops early and zeroes the rest itself (`finetuning.GPTClassifier`).
        After a forward with a LoRA (the cache knows): only the adapters' gradients, into the
        LoRA's grads; the base is frozen, so no embedding gradient whatever `embeddings` says."""
        if embeddings and first_block != 0:
            raise ValueError(f"first_block: expected 0 when embeddings=True, got {first_block}")
        emb_c, stack_c, lora = cache
        dx, _ = stack_backward(dh, stack_c, self.g if lora is None else lora.g, first_block)
        if embeddings and lora is None:
            dwte, dtable = embed_backward(dx, emb_c)
            if self.config.pos == "learned":  # a sinusoidal table is fixed: no gradient
                self.g["wpe"][...] = dtable
            self.g["wte"][...] = dwte

    # ------------------------------------------------------------------------- state
