"""Chapter 02's exercises.

    embedding_backward(dout, cache)   against finite differences of layers.embedding_forward
    sinusoidal_table(n_pos, C)        against layers.sinusoidal_table
"""
import numpy as np

from .. import layers
from .checker import case_runner, compare, grad_exercise, ids_with_repeats, randn, register

register(
    "embedding_backward", "02-embeddings", "embedding_backward(dout, cache) -> dtable;  cache = (ids, V)", 1e-6,
    grad_exercise(
        layers.embedding_forward,
        ("dtable",),
        [
            ("ids (6,), no repeats", lambda g: (np.array([3, 0, 5, 1, 2, 4]), randn(g, 7, 4)), {}),
            ("ids (2, 5) with repeats", lambda g: (ids_with_repeats(g, (2, 5), 4), randn(g, 6, 3)), {}),
        ],
    ),
)


def _sinusoidal_case(n_pos, C):
    def fn(student, tol):
        return compare("pe", student(n_pos, C), layers.sinusoidal_table(n_pos, C, dtype=np.float64), tol)

    return fn


register(
    "sinusoidal_table", "02-embeddings", "sinusoidal_table(n_pos, C) -> pe: (n_pos, C)", 1e-5,  # float32 answers pass
    case_runner([("n_pos=16, C=8", _sinusoidal_case(16, 8)), ("n_pos=50, C=32", _sinusoidal_case(50, 32))], "layers.sinusoidal_table"),
)
