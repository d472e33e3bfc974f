"""Numba kernels for the hot loop, one module per op, each the fast twin of one NumPy reference:

    module            kernels                                NumPy twin
    linear.py         _pack_nb, _gemm_nb (packed GEMM),      layers.linear_{forward,backward}
                      _rows_nb, _dots_nb (few rows)
    attention.py      _attention_{forward,backward}_nb       attention.attention_{forward,backward}
    heads.py          _split_heads_nb, _merge_heads_nb       attention.split_heads, merge_heads
    layernorm.py      _layernorm_{forward,backward}_nb       layers.layernorm_{forward,backward}
    rmsnorm.py        _rmsnorm_{forward,backward}_nb         layers.rmsnorm_{forward,backward}
    rope.py           _rope_{forward,backward}_nb            attention.rope_{forward,backward}
    gelu.py           _gelu_{forward,backward}_nb            layers.gelu_{forward,backward}
    cross_entropy.py  _cross_entropy_{forward,backward}_nb   layers.cross_entropy_{forward,backward}
    embedding.py      _embedding_backward_nb (scatter-add;   layers.embedding_{forward,backward}
                      the forward is the reference's gather)
    adamw.py          _adamw_update_nb                       optim.adamw_update
    int8_linear.py    _int8_linear_forward_nb                quantize.int8_linear_forward
    bpe.py            _count_pairs_nb, _pop_best_pair_nb,    bpe.train_reference
                      _merge_pair_nb
                      _encode_chunks_nb                      bpe.encode_chunk_reference
    jit.py            no op: what the float kernels share (compile options, the threaded and
                      serial builds, exp/tanh, the register-tile product gemm_nb of attention, thread setup)

Each op module has a public wrapper with its twin's signature, so `backend.get_ops("numba")` is a
drop-in replacement: `linear_forward(x, w, b) -> (out, cache)`, `linear_backward(dout, cache) ->
(dx, dw, db)`, ... The wrapper validates (dtype, shapes, index ranges), makes its arguments
C-contiguous and allocates the outputs; the kernel `_xxx_forward_nb(outputs..., inputs...)` never
validates, writes into its preallocated outputs (first in the argument list, as in llm.c) and is
compiled with `cache=True` so a second process loads machine code from disk instead of
recompiling. A cache is only ever handed back to the backward of the same backend, so ours may
hold different things from the NumPy one (the layer-norm cache keeps x, mean and rstd rather than
xhat). This namespace re-exports the wrappers: `kernels.attention_forward`, `kernels.matmul(a, b)`
(the matmul lives in `linear.py`, so no name here is both a function and a submodule).

Dimension legend (each module repeats its own): N rows (B * T flattened), C channels, C_in/C_out
linear sizes, V vocab, M x K @ K x N for a bare matmul, BH = B * NH (batch, heads), Tq/Tk queries
and keys, hs head size.

Parallelism: `prange` splits only work whose writes never overlap (rows of the output, or the
packed matmul's 2-D grid of output blocks);
reductions across rows (dW, db of layer norm) give each chunk of rows its own partial sum and add
the partials afterwards. Chunks are a fixed number, not the thread count, so results do not
depend on how many threads ran them. Each float kernel is compiled twice from one source
(`jit.kernel`): threaded, and serial for calls too small to repay waking the threads (`jit.run`,
`jit.SERIAL_BELOW`; set `kernels.jit.SERIAL_BELOW` to move the threshold, it is read per call).

Numbers: float32 and float64 both work (the parity tests run both); every scalar is cast to the
arrays' dtype in the wrapper so float32 stays float32 inside the kernels.

Where the on-disk cache lives: Numba's cache files are pickles, so `jit.cache_dir` keeps them in
the package's __pycache__ only if the package directory is the user's own (and not writable by
others); otherwise, e.g. for a shared install, in $XDG_CACHE_HOME/nanotransformer/numba
(~/.cache/nanotransformer/numba). A NUMBA_CACHE_DIR you set always wins; NUMBA_DISABLE_JIT=1
compiles nothing and caches nothing.

On-disk cache: Numba's `cache=True` notices an edit only of the file a function is defined in,
not of the functions it calls, yet `jit.py`'s helpers are inlined into every float kernel. So
importing the package ties every float kernel's cache to `jit.py`'s contents as well
(`jit.cache_depends_on_this_file`, called below): edit any file of this package and the next run
recompiles what the edit affects (all float kernels for jit.py, one module's for the others);
nothing to delete by hand. If Numba's cache internals ever change, that tie warns at import
and the rule is back to Numba's own: after editing jit.py, delete the cache by hand,
`find nanotransformer -name '*.nbi' -delete` (the index files; stale .nbc data files are then
overwritten), or everything under $NUMBA_CACHE_DIR if you set it.

Does not: run fast under NUMBA_DISABLE_JIT=1 (the same code then runs as plain Python, which the
CI uses for coverage), or use BLAS (that is the "numpy" backend: backend.AUTO records which one
the default picks per op, and why).
"""
from . import jit  # first: it sets where Numba caches the kernels (jit.cache_dir), before any is defined
from . import adamw, attention, bpe, cross_entropy, embedding, gelu, heads, int8_linear, layernorm, linear, rmsnorm, rope  # noqa: F401 (bpe: the BPE kernels)

# The float kernels inline jit.py's helpers: key their on-disk cache on jit.py too (see above).
jit.cache_depends_on_this_file(jit, linear, attention, heads, layernorm, rmsnorm, rope, gelu, cross_entropy, adamw, int8_linear, embedding)

from .adamw import adamw_update  # noqa: E402
from .attention import attention_backward, attention_forward  # noqa: E402
from .bpe import PairTable, encode_chunks, train_fast  # noqa: E402
from .cross_entropy import cross_entropy_backward, cross_entropy_forward  # noqa: E402
from .embedding import embedding_backward, embedding_forward  # noqa: E402
from .gelu import gelu_backward, gelu_forward  # noqa: E402
from .heads import merge_heads, split_heads  # noqa: E402
from .int8_linear import int8_linear_forward  # noqa: E402
from .jit import FASTMATH, num_threads  # noqa: E402
from .layernorm import layernorm_backward, layernorm_forward  # noqa: E402
from .linear import linear_backward, linear_forward, matmul  # noqa: E402
from .rmsnorm import rmsnorm_backward, rmsnorm_forward  # noqa: E402
from .rope import rope_backward, rope_forward  # noqa: E402

__all__ = [
    "FASTMATH", "PairTable", "adamw_update", "attention_backward", "attention_forward", "cross_entropy_backward",
    "cross_entropy_forward", "embedding_backward", "embedding_forward", "encode_chunks", "gelu_backward", "gelu_forward", "int8_linear_forward", "layernorm_backward",
    "layernorm_forward", "linear_backward", "linear_forward", "matmul", "merge_heads", "num_threads", "rmsnorm_backward",
    "rmsnorm_forward", "rope_backward", "rope_forward", "split_heads", "train_fast",
]  # fmt: skip
