"""Chapter 10's exercises: the two kernels of the chapter, written in NumPy and judged for
correctness only (not speed).

    matmul(a, b)                      kernels.matmul's job, against a @ b (its NumPy twin)
    attention_forward(q, k, v, causal)
        the fused kernel's one-pass online softmax (kernels' attention_forward), single head,
        returning out only; against the reference attention.attention_forward
"""
import numpy as np

from .. import attention
from .checker import case_runner, compare, register


def _matmul_case(shape_a, shape_b):
    def fn(student, tol):
        rng = np.random.default_rng(11)
        a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
        return compare("out", student(a.copy(), b.copy()), a @ b, tol)

    return fn


register(
    "matmul", "10-making-it-fast", "matmul(a, b) -> a @ b for 2-D float64 a (M, K), b (K, N), computed tile by tile",
    1e-10,
    case_runner(
        [("(4, 4) @ (4, 4)", _matmul_case((4, 4), (4, 4))), ("(37, 19) @ (19, 23), ragged tiles", _matmul_case((37, 19), (19, 23))),
         ("(1, 70) @ (70, 3)", _matmul_case((1, 70), (70, 3)))],
        "a @ b",
    ),
)


def _attention_case(Tq, Tk, hs, causal):
    def fn(student, tol):
        rng = np.random.default_rng(12)
        q, k, v = rng.standard_normal((Tq, hs)), rng.standard_normal((Tk, hs)), rng.standard_normal((Tk, hs))
        expected, _ = attention.attention_forward(q, k, v, causal=causal)
        return compare("out", student(q.copy(), k.copy(), v.copy(), causal), expected, tol)

    return fn


register(
    "attention_forward", "10-making-it-fast",
    "attention_forward(q, k, v, causal) -> out: (Tq, hs), one pass over the keys with an online softmax", 1e-10,
    case_runner(
        [("T=6, no mask", _attention_case(6, 6, 4, False)), ("T=9, causal", _attention_case(9, 9, 3, True)),
         ("Tq=2, Tk=7, causal (decoding)", _attention_case(2, 7, 5, True))],
        "attention.attention_forward",
    ),
)
