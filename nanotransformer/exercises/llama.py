"""Chapter 16's exercises: the backward passes of three Llama pieces, each against finite
differences of the package's forward.

    rmsnorm_backward(dout, cache)      against finite differences of layers.rmsnorm_forward
    rope_backward(dout, cache)         against finite differences of attention.rope_forward
    repeat_kv_backward(dout, cache)    against finite differences of attention.repeat_kv_forward

The cases are chosen so that the typical mistakes show: rows far from mean 0 (RMSNorm does not
subtract the mean, so layer norm's mean term is wrong here, not just unnecessary), positions
past 0 and an offset (at position 0 RoPE is the identity, and rotating the wrong way goes
unnoticed), and several key/value heads each shared by several query heads (with one of either,
the wrong grouping of the query heads cannot be seen).
"""
from .. import attention, layers
from .checker import grad_exercise, randn, register

register(
    "rmsnorm_backward", "16-llama", "rmsnorm_backward(dout, cache) -> dx, dw;  cache = (xhat, w, rstd)", 1e-6,
    grad_exercise(
        layers.rmsnorm_forward,
        ("dx", "dw"),
        [
            ("x (4, 5)", lambda g: (randn(g, 4, 5), randn(g, 5)), {}),
            ("x (2, 3, 6), mean far from 0", lambda g: (2 * randn(g, 2, 3, 6) + 3, randn(g, 6)), {}),
        ],
    ),
)

register(
    "rope_backward", "16-llama", "rope_backward(dout, cache) -> dx;  cache = (cos, sin), each (T, hs)", 1e-6,
    grad_exercise(
        attention.rope_forward,
        ("dx",),
        [
            ("x (6, 8), theta 10000", lambda g: (randn(g, 6, 8),), {}),
            ("x (2, 3, 5, 4) (B, NH, T, hs), theta 100, offset 3", lambda g: (randn(g, 2, 3, 5, 4),),
             {"theta": 100.0, "offset": 3}),
        ],
    ),
)

register(
    "repeat_kv_backward", "16-llama",
    "repeat_kv_backward(dout, cache) -> dx: (B, NKV, T, hs);  dout: (B, NH, T, hs), cache = (n_rep,), NH = NKV * n_rep",
    1e-6,
    grad_exercise(
        attention.repeat_kv_forward,
        ("dx",),
        [
            ("x (2, 2, 3, 4): NKV 2, n_rep 3 (NH 6)", lambda g: (randn(g, 2, 2, 3, 4),), {"n_rep": 3}),
            ("x (1, 1, 4, 2): multi-query, n_rep 4", lambda g: (randn(g, 1, 1, 4, 2),), {"n_rep": 4}),
            ("x (1, 3, 2, 2): n_rep 1 (plain multi-head)", lambda g: (randn(g, 1, 3, 2, 2),), {"n_rep": 1}),
        ],
    ),
)
