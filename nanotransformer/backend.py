"""The one place that chooses how the hot ops run: plain NumPy (`layers.py`, `attention.py`,
`optim.py`) or the Numba kernels of the `kernels/` package (one module per op).

    ops = get_ops()                 # default "auto": per op, whichever is faster (table AUTO below)
    ops = get_ops("numpy")          # force the readable reference everywhere
    ops = get_ops("numba")          # force the Numba kernels everywhere
    NANOTRANSFORMER_BACKEND=numba   # the same, from the environment (an explicit argument wins)

`ops` is a namespace of forward/backward pairs with the exact signatures of the NumPy
reference (`ops.layernorm_forward(x, w, b) -> (out, cache)`, ...). A cache made by one backend is
only ever passed back to the same backend's backward, which is why "auto" chooses per *pair*
(linear_forward and linear_backward always come from the same backend).

Ops: linear, attention (scaled dot-product core on (B, NH, T, hs) tensors; k, v may have NKV heads), layernorm, rmsnorm,
rope, gelu, cross_entropy, embedding (the token lookup; its backward is the scatter-add),
adamw_update, int8_linear (forward only: `quantize.py`), split_heads and merge_heads (the head
layout around attention, each the other's backward; no cache). `ops.name` is
the backend's name and `ops.choices` says, per op pair, which backend runs it.

Memory: the first `get_ops` call also asks glibc's malloc (Linux) to keep freed memory instead of
handing it back to the OS between training steps (`keep_freed_memory`). Every step allocates and
frees the same large activations; with glibc's defaults the heap shrank and grew back each block
and every regrown page was faulted in again: 35,000-70,000 page faults per step of the "small"
config (T=256), 7-10 % of the step. Memory use stays at the step's peak, which it reaches anyway.
Set NANOTRANSFORMER_KEEP_MEMORY=0 to leave malloc alone.

LoRA: `lora_ops(ops)` is `ops` with a linear pair that also runs a `layers.LoRAWeight` (below);
int8: `quantized_ops(ops)` the same for a `quantize.Int8Weight`.

Does not: time anything at import or at run time. "auto" is a fixed table, decided from the
project's own benchmarks (`benchmarks/bench_kernels.py`, `bench_train.py`) and recorded below with
its figures.
"""
import os
import sys
from types import SimpleNamespace

from . import attention, layers, optim, quantize

BACKENDS = ("numpy", "numba")
ENV_VAR = "NANOTRANSFORMER_BACKEND"

OP_NAMES = (
    "linear_forward", "linear_backward",
    "attention_forward", "attention_backward",
    "layernorm_forward", "layernorm_backward",
    "rmsnorm_forward", "rmsnorm_backward",
    "rope_forward", "rope_backward",
    "gelu_forward", "gelu_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "embedding_forward", "embedding_backward",
    "adamw_update",
    "int8_linear_forward",
    "split_heads", "merge_heads",
)  # fmt: skip

# Op pairs: the ops that must come from one backend because they share a cache.
OP_PAIRS = {
    "linear": ("linear_forward", "linear_backward"),
    "attention": ("attention_forward", "attention_backward"),
    "layernorm": ("layernorm_forward", "layernorm_backward"),
    "rmsnorm": ("rmsnorm_forward", "rmsnorm_backward"),
    "rope": ("rope_forward", "rope_backward"),
    "gelu": ("gelu_forward", "gelu_backward"),
    "cross_entropy": ("cross_entropy_forward", "cross_entropy_backward"),
    "embedding": ("embedding_forward", "embedding_backward"),
    "adamw_update": ("adamw_update",),
    "int8_linear": ("int8_linear_forward",),
    "split_heads": ("split_heads",),  # no cache: each is the other's backward
    "merge_heads": ("merge_heads",),
}

# The "auto" default, per op pair: the faster backend in `python benchmarks/bench_kernels.py`
# (forward + backward at the shapes of the tiny/small/bpe training configs, float32, 2 threads,
# summed over the three configs); for the linear layers, where the op alone and whole steps
# disagree, whole training steps (`benchmarks/bench_train.py`) decide. Figures, the runs behind
# them and the caveats (timings on a shared box swing with load): benchmarks/README.md, "Kernels
# and training speed" and "The packed matmul".
#   op pair        auto    numpy time / numba time (tiny, small, bpe)
#   linear         numba   whole training steps, bench_train.py, 3 runs, all-Numba step time / auto
#                          (BLAS linear) step time summed over the three configs: 0.94, 0.94, 1.03
#                          (with the threads sleeping at once, as then). The op
#                          alone (bench_kernels) is 0.83, 0.94, 1.00: the packed GEMM is level with
#                          OpenBLAS's sgemm at the large shapes (92-108 %), behind at the small ones
#                          (74 % at 1024x128x384), and a whole step gains the hand-over (no BLAS
#                          threads spinning beside the Numba kernels). benchmarks/README.md, "The
#                          packed matmul".
#                          At up to 8 rows (decoding) too, since idle threads spin briefly
#                          (kernels/jit.py, SPIN_COUNT): KV-cache generation, tokens/s, all-Numba
#                          against BLAS's matrix-vector product for those rows, 2 runs: small 367,
#                          421 vs 310, 363; bpe 904, 1108 vs 866, 949; tiny 871, 1133 vs 856, 1592;
#                          GPT-2 124M 48-50 vs 44-45 (benchmarks/README.md, "Threads that wait
#                          briefly"). Until then (threads sleeping at once) BLAS won there, 2-3x.
#                          On the AVX2 machine (AMD EPYC Zen 1, jit.TILES' 4 x 16 tiles): the op
#                          alone 0.90 summed, whole steps with the linears on BLAS took 2.8x, 1.6x
#                          and 1.2x auto's time (tiny, bpe, small; one process, benchmarks/README.md,
#                          "Register tiles per CPU").
#   attention      numba   1.41, 2.20, 1.63  fused, causal-aware, no T x T matrix (a rerun with jit.gemm_nb's
#                          4 x 64 tiles, issue 17: 2.34, 3.23, 2.31; most of the rise is the hour of
#                          the machine, the tiles' own share is 1.0-1.15x: benchmarks/README.md,
#                          "Attention's wide tiles and the embedding scatter")
#   layernorm      numba   2.13, 8.04, 3.55
#   rmsnorm        numba   1.75, 5.30, 2.44  (median of 3 runs, load 0.4-1.5; README "RMSNorm and RoPE")
#   rope           numba   5.18, 7.16, 6.24  q and k on split_heads views (same 3 runs)
#   gelu           numba   27.3, 18.4, 6.31
#   cross_entropy  numba   1.16, 1.78, 3.10
#   embedding      numba   11.4, 52.7, 19.0  the scatter-add (np.add.at runs element by element; the
#                          lookup is NumPy's own gather on both; issue 17, load 1.4)
#   adamw_update   numba   44.3, 11.3, 11.5
#   int8_linear    numba   8.1 (1 thread), 27.9 (2 threads): one decoded token's 49 products of GPT-2
#                          124M, `benchmarks/bench_decode.py` (README "Decoding"); the twin casts q
#                          to a float copy per call
#   split_heads,   numba   1.69, 2.04, 1.86  bench_kernels "split/merge heads": one attention layer's
#   merge_heads            head layout (split q, k, v, merge y; split dy, merge dq, dk, dv), NumPy's
#                          views copied where the Numba attention needs C-contiguous heads (load 1.3)
AUTO = {
    "linear": "numba",
    "attention": "numba",
    "layernorm": "numba",
    "rmsnorm": "numba",
    "rope": "numba",
    "gelu": "numba",
    "cross_entropy": "numba",
    "embedding": "numba",
    "adamw_update": "numba",
    "int8_linear": "numba",
    "split_heads": "numba",
    "merge_heads": "numba",
}

# Where each op's NumPy reference lives; its Numba kernel has the same name in `kernels`.
REFERENCE_MODULES = {
    **{op: layers for op in OP_NAMES},
    "attention_forward": attention, "attention_backward": attention, "adamw_update": optim,
    "rope_forward": attention, "rope_backward": attention, "int8_linear_forward": quantize,
    "split_heads": attention, "merge_heads": attention,
}  # fmt: skip


def _namespace(name, module_of):
    """The ops namespace of backend `name`: every op in OP_NAMES, taken from module_of(op)."""
    ops = {op: getattr(module_of(op), op) for op in OP_NAMES}
    return SimpleNamespace(name=name, choices={pair: name for pair in OP_PAIRS}, **ops)


_BUILT = {"numpy": _namespace("numpy", REFERENCE_MODULES.get)}


def _numba_ops():
    """The Numba namespace, imported on first use."""
    from . import kernels

    return _namespace("numba", lambda op: kernels)


def _auto_ops():
    """Per op pair, the namespace of the backend named in AUTO."""
    ops = {"name": "auto", "choices": dict(AUTO)}
    for pair, names in OP_PAIRS.items():
        source = get_ops(AUTO[pair])
        for op in names:
            ops[op] = getattr(source, op)
    return SimpleNamespace(**ops)


def resolve_backend(name=None):
    """`name`, else $NANOTRANSFORMER_BACKEND, else "auto" -> one of BACKENDS or "auto"."""
    if name is None and os.environ.get(ENV_VAR):
        where, name = f"${ENV_VAR} (the environment variable)", os.environ[ENV_VAR]
    else:
        where, name = "backend", name or "auto"
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"{where}: expected one of {BACKENDS + ('auto',)}, got {name!r}")
    return name


_MEMORY = {"kept": None}


def keep_freed_memory():
    """glibc only: a fixed trim threshold (1 GiB) and mmap threshold (32 MiB, glibc's maximum), so
    freed activations are reused from the heap instead of being returned to the OS and faulted in
    again (module docstring). Returns True if applied; False elsewhere or when
    NANOTRANSFORMER_KEEP_MEMORY=0. Called once."""
    if _MEMORY["kept"] is None:
        _MEMORY["kept"] = False
        if os.environ.get("NANOTRANSFORMER_KEEP_MEMORY", "1") != "0" and sys.platform.startswith("linux"):
            import ctypes

            try:
                libc = ctypes.CDLL("libc.so.6")
                M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
                _MEMORY["kept"] = bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))
            except (OSError, AttributeError):  # not glibc (musl, ...): leave malloc as it is
                pass
    return _MEMORY["kept"]


def get_ops(name=None):
    """The namespace of ops for backend `name` (see module docstring)."""
    keep_freed_memory()
    name = resolve_backend(name)
    if name not in _BUILT:
        _BUILT[name] = _numba_ops() if name == "numba" else _auto_ops()
    return _BUILT[name]


# ----------------------------------------------------------------------------- LoRA's linear pair

_LORA = {}


def lora_ops(ops):
    """`ops` with a linear pair that also runs a `layers.LoRAWeight`: the one dispatch point of LoRA.

    linear_forward(x, w, b): w a LoRAWeight with an adapter -> `layers.lora_linear_forward`; with
    a = None (frozen) -> `layers.frozen_linear_forward`; a plain array -> ops' own linear_forward.
    linear_backward(dout, cache) returns (dx, dw, db) as ever, with dw = `layers.LoRAGrad(da, db)`
    for an adapted linear and dw = db = None for a frozen one (the base gets no gradient).

    Why here, in a namespace, and not at the call sites: mha_forward, cross_attention_forward,
    mlp_forward and swiglu_forward already take `ops` and call ops.linear_forward/backward; a
    LoRA-aware namespace reaches all of them (and the caches they keep carry it to their backward)
    without touching one line of theirs, and the block swaps it in only when a LoRA is on. The
    plain path keeps the very namespace `get_ops` returns: not one extra call or check on the
    training hot path. The adapter's own products go through `ops` too, so every backend runs them.
    """
    key = id(ops)
    if key not in _LORA:
        from .layers import LoRAWeight, LoRAGrad, frozen_linear_backward, frozen_linear_forward
        from .layers import lora_linear_backward, lora_linear_forward

        class _Adapted(tuple):
            """The cache of a LoRAWeight's forward: (adapter or None, inner cache)."""

        def linear_forward(x, w, b=None):
            if not isinstance(w, LoRAWeight):
                return ops.linear_forward(x, w, b)
            if w.a is None:
                out, c = frozen_linear_forward(x, w.w, b, ops=ops)
            else:
                out, c = lora_linear_forward(x, w.w, b, w.a, w.b, w.scale, ops=ops)
            return out, _Adapted((w.a is not None, c))

        def linear_backward(dout, cache):
            if not isinstance(cache, _Adapted):
                return ops.linear_backward(dout, cache)
            adapted, c = cache
            if not adapted:
                return frozen_linear_backward(dout, c), None, None
            dx, da, dbm = lora_linear_backward(dout, c)
            return dx, LoRAGrad(da, dbm), None

        ns = dict(vars(ops), linear_forward=linear_forward, linear_backward=linear_backward)
        _LORA[key] = (ops, SimpleNamespace(**ns))  # ops kept alive, so its id stays its own
    return _LORA[key][1]


# ----------------------------------------------------------------------------- int8 weights

_QUANT = {}


def quantized_ops(ops):
    """`ops` with a linear_forward that also runs a `quantize.Int8Weight` (through
    ops.int8_linear_forward): the one dispatch point of int8 weights, as `lora_ops` is LoRA's, so the
    block, attention and MLP run a quantized model untouched. Forward only: linear_backward of an
    int8 linear raises (a quantized model is for inference)."""
    key = id(ops)
    if key not in _QUANT:
        from .quantize import Int8Weight

        def linear_forward(x, w, b=None):
            if isinstance(w, Int8Weight):
                return ops.int8_linear_forward(x, w.q, w.scale, b)
            return ops.linear_forward(x, w, b)

        def linear_backward(dout, cache):
            if cache is None:  # int8_linear_forward's cache
                raise ValueError("linear_backward: an int8 linear layer is inference only (no backward)")
            return ops.linear_backward(dout, cache)

        ns = dict(vars(ops), linear_forward=linear_forward, linear_backward=linear_backward)
        _QUANT[key] = (ops, SimpleNamespace(**ns))  # ops kept alive, so its id stays its own
    return _QUANT[key][1]
