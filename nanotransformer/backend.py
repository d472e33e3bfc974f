"""The one place that chooses how the hot ops run: plain NumPy (`layers.py`, `attention.py`,
`optim.py`) or Numba kernels (`kernels.py`).

    ops = get_ops()                 # default: per op, whichever is faster (benchmarks/README.md)
    ops = get_ops("numpy")          # force the readable reference everywhere
    NANOTRANSFORMER_BACKEND=numba   # the same, from the environment

`ops` is a namespace of forward/backward pairs with the exact signatures of the NumPy
reference (`ops.layernorm_forward(x, w, b) -> (out, cache)`, ...). A cache made by one backend is
only ever passed back to the same backend's backward.

Ops: linear, attention (scaled dot-product core on (B, NH, T, hs) tensors), layernorm, gelu,
cross_entropy, adamw_update.
"""
import os
from types import SimpleNamespace

from . import attention, layers, optim

BACKENDS = ("numpy", "numba")
ENV_VAR = "NANOTRANSFORMER_BACKEND"

OP_NAMES = (
    "linear_forward", "linear_backward",
    "attention_forward", "attention_backward",
    "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "adamw_update",
)  # fmt: skip

_NUMPY = SimpleNamespace(
    name="numpy",
    linear_forward=layers.linear_forward,
    linear_backward=layers.linear_backward,
    attention_forward=attention.attention_forward,
    attention_backward=attention.attention_backward,
    layernorm_forward=layers.layernorm_forward,
    layernorm_backward=layers.layernorm_backward,
    gelu_forward=layers.gelu_forward,
    gelu_backward=layers.gelu_backward,
    cross_entropy_forward=layers.cross_entropy_forward,
    cross_entropy_backward=layers.cross_entropy_backward,
    adamw_update=optim.adamw_update,
)


def resolve_backend(name=None):
    """`name`, else $NANOTRANSFORMER_BACKEND, else "auto" -> one of BACKENDS or "auto"."""
    name = name or os.environ.get(ENV_VAR) or "auto"
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"backend: expected one of {BACKENDS + ('auto',)}, got {name!r}")
    return name


def get_ops(name=None):
    """The namespace of ops for backend `name` (see module docstring)."""
    name = resolve_backend(name)
    if name in ("numpy", "auto"):
        # TODO(issue 5): "numba" and the measured per-op "auto" choice arrive with kernels.py.
        return _NUMPY
    raise ValueError(f"backend: {name!r} is not available yet")
