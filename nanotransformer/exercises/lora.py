"""Chapter 17's exercises.

    lora_linear_backward(dout, cache)          against finite differences of layers.lora_linear_forward
    num_lora_params(config, rank, targets)     against lora.LoRA(GPT(config), rank, targets=targets)
                                               .num_trainable(), the count of a store the package builds

`lora_linear_backward` is the package's function; the student gets a readable cache,
(x, w, a, bm, s), rather than the package's own (which keeps the two adapter products' linear
caches and the backend namespace). The cases have s != 1 (a forgotten or doubled scale shows), a
non-zero B (at B = 0, the adapter's initialisation, dA vanishes and a wrong dA passes), and a
bias (which gets no gradient: it is frozen).

`num_lora_params` has no package twin of that name: the package counts a built store
(`LoRA.num_trainable()`), the student counts from the config alone. The cases include the llama
preset, where grouped-query attention makes c_attn (C, C + 2 NKV hs) and SwiGLU makes c_fc
(C, 2 d_ff), so "every adapted linear is r (C_in + C_out)" has to be applied to the real shapes.
"""
import numpy as np

from .. import layers
from .checker import Wrong, case_runner, grad_exercise, randn, register


def _lora_forward(x, a, bm, *, w, b, scale):
    """layers.lora_linear_forward with the frozen w, b held fixed (no gradient is asked for them);
    the cache handed to the student is (x, w, a, bm, scale)."""
    out, _ = layers.lora_linear_forward(x, w, b, a, bm, scale)
    return out, (x, w, a, bm, scale)


def _lora_case(lead, C_in, r, C_out, bias, scale):
    def build(g):
        x, a, bm = randn(g, *lead, C_in), randn(g, C_in, r), randn(g, r, C_out)
        return x, a, bm

    def kwargs(seed):
        g = np.random.default_rng(seed)
        return {"w": g.standard_normal((C_in, C_out)), "b": g.standard_normal(C_out) if bias else None, "scale": scale}

    label = f"x {lead + (C_in,)}, r {r}, C_out {C_out}, s {scale}, {'bias' if bias else 'no bias'}"
    return label, build, kwargs(len(lead) * 100 + C_in)


register(
    "lora_linear_backward", "17-lora",
    "lora_linear_backward(dout, cache) -> dx: (..., C_in), da: (C_in, r), dbm: (r, C_out);  "
    "cache = (x, w, a, bm, s), forward out = x @ w + b + s (x @ a) @ bm with w, b frozen",
    1e-6,
    grad_exercise(
        _lora_forward,
        ("dx", "da", "dbm"),
        [
            _lora_case((2, 5), 8, 3, 6, True, 0.7),
            _lora_case((4,), 7, 1, 3, False, 2.0),
        ],
    ),
)


def _num_lora_case(preset, overrides, rank, targets):
    def fn(student, tol):
        from ..lora import LoRA  # lazy: a model module must not stop the other exercises loading
        from ..model import GPT, GPTConfig

        cfg = GPTConfig.preset(preset, **{"vocab_size": 65, "backend": "numpy", **overrides})
        expected = LoRA(GPT(cfg, seed=0), rank=rank, targets=targets).num_trainable()
        got = student(cfg, rank, tuple(targets))
        if got != expected:
            raise Wrong(f"n_lora: expected {expected:,}, got {got!r}")
        return 0.0

    label = f"{preset}{' ' + str(overrides) if overrides else ''}, rank {rank}, targets {tuple(targets)}"
    return label, fn


register(
    "num_lora_params", "17-lora",
    "num_lora_params(config, rank, targets) -> int: trainable numbers of a LoRA of GPT(config), targets a tuple of "
    "'attn' (attn.c_attn, attn.c_proj), 'mlp' (mlp.c_fc, mlp.c_proj) or linear names like 'attn.c_proj'",
    0.0,
    case_runner(
        [_num_lora_case("gpt2", {}, 8, ("attn", "mlp")),
         _num_lora_case("gpt2", {"n_layer": 2}, 1, ("attn",)),
         _num_lora_case("llama", {}, 4, ("attn", "mlp")),
         _num_lora_case("llama", {"n_kv_head": 1}, 2, ("attn.c_attn", "mlp.c_proj"))],
        "lora.LoRA(...).num_trainable()",
    ),
)
