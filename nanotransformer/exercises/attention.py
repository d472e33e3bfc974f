"""Chapter 04's exercises.

    softmax_backward(dout, cache)     against finite differences of layers.softmax_forward
    attention_backward(dout, cache)   against finite differences of attention.attention_forward
    causal_mask(T)                    against attention.causal_mask, exactly, and it must be a bool array
"""

from .. import attention, layers
from .checker import case_runner, compare_exact, grad_exercise, randn, register

register(
    "softmax_backward", "04-attention", "softmax_backward(dout, cache) -> dx;  cache = (out,), out = softmax(x)", 1e-6,
    grad_exercise(
        layers.softmax_forward,
        ("dx",),
        [("x (5,)", lambda g: (randn(g, 5),), {}), ("x (2, 3, 7)", lambda g: (3 * randn(g, 2, 3, 7),), {})],
    ),
)

register(
    "attention_backward", "04-attention",
    "attention_backward(dout, cache) -> dq, dk, dv;  cache = (q, k, v, att, scale)", 1e-6,
    grad_exercise(
        attention.attention_forward,
        ("dq", "dk", "dv"),
        [
            ("q, k, v (4, 3), no mask", lambda g: (randn(g, 4, 3), randn(g, 4, 3), randn(g, 4, 3)), {}),
            ("(2, 2, 5, 3), causal", lambda g: (randn(g, 2, 2, 5, 3), randn(g, 2, 2, 5, 3), randn(g, 2, 2, 5, 3)), {"causal": True}),
            ("Tq=3, Tk=6, hv=2", lambda g: (randn(g, 2, 3, 4), randn(g, 2, 6, 4), randn(g, 2, 6, 2)), {}),
        ],
    ),
)


def _causal_case(T):
    def fn(student, tol):
        return compare_exact("mask", student(T), attention.causal_mask(T), "bool")

    return fn


register(
    "causal_mask", "04-attention", "causal_mask(T) -> (T, T) bool, True where query i may attend to key j", 0.0,
    case_runner([("T=1", _causal_case(1)), ("T=5", _causal_case(5))], "attention.causal_mask"),
)
