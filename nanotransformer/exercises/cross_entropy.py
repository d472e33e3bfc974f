"""Chapter 06's exercises.

    cross_entropy_backward(dout, cache)      against finite differences of layers.cross_entropy_forward
    cross_entropy_forward(logits, targets)   against layers.cross_entropy_forward (the loss only,
                                             no cache: the student returns a float)
"""
import numpy as np

from .. import layers
from .checker import case_runner, compare, grad_exercise, randn, register


def _ce_targets(rng, shape, V, ignore=True):
    t = rng.integers(0, V, size=shape)
    if ignore:
        t.reshape(-1)[1] = -100
    return t


register(
    "cross_entropy_backward", "06-cross-entropy",
    "cross_entropy_backward(dout, cache) -> dlogits;  cache = (probs, targets, valid, n_valid)", 1e-6,
    grad_exercise(
        layers.cross_entropy_forward,
        ("dlogits",),
        [
            ("logits (4, 6)", lambda g: (randn(g, 4, 6), _ce_targets(g, (4,), 6, ignore=False)), {}),
            ("logits (2, 3, 5), one target ignored", lambda g: (2 * randn(g, 2, 3, 5), _ce_targets(g, (2, 3), 5)), {}),
        ],
    ),
)


def _cross_entropy_forward_case(logits, targets):
    def fn(student, tol):
        expected, _ = layers.cross_entropy_forward(logits, targets)
        return compare("loss", student(logits.copy(), targets.copy()), expected, tol)

    return fn


_g = np.random.default_rng(6)
register(
    "cross_entropy_forward", "06-cross-entropy",
    "cross_entropy_forward(logits, targets) -> loss (mean over positions, a float)", 1e-9,
    case_runner(
        [
            ("logits (4, 6)", _cross_entropy_forward_case(_g.standard_normal((4, 6)), _g.integers(0, 6, 4))),
            ("logits (2, 3, 5)", _cross_entropy_forward_case(_g.standard_normal((2, 3, 5)), _g.integers(0, 5, (2, 3)))),
            ("huge logits, +-1000", _cross_entropy_forward_case(1000 * _g.standard_normal((3, 4)), np.array([0, 1, 2]))),
        ],
        "layers.cross_entropy_forward",
    ),
)
