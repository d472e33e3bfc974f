"""Chapter 03's exercises.

    linear_backward(dout, cache)   against finite differences of layers.linear_forward, with and
                                   without bias (then db must be None)
    numeric_grad(f, x, h=1e-5)     against the analytic gradient (gradcheck.numeric_grad's job)
"""
import numpy as np

from .. import layers
from .checker import Wrong, case_runner, compare, fmt_index, grad_exercise, randn, register

register(
    "linear_backward", "03-backprop", "linear_backward(dout, cache) -> dx, dw, db;  cache = (x, w, has_bias)", 1e-6,
    grad_exercise(
        layers.linear_forward,
        ("dx", "dw", "db"),
        [
            ("x (4, 3)", lambda g: (randn(g, 4, 3), randn(g, 3, 5), randn(g, 5)), {}),
            ("x (2, 3, 4)", lambda g: (randn(g, 2, 3, 4), randn(g, 4, 6), randn(g, 6)), {}),
            ("x (2, 3, 4), no bias (has_bias False: db must be None)", lambda g: (randn(g, 2, 3, 4), randn(g, 4, 6), None), {}),
        ],
    ),
)


def _numeric_grad_case(f, grad, x):
    def fn(student, tol):
        x0 = x.copy()
        xs = x.copy()
        got = student(lambda: f(xs), xs)
        if not np.array_equal(xs, x0):
            idx = np.unravel_index(int(np.argmax(xs != x0)), x0.shape)
            raise Wrong(f"{fmt_index('x', idx)} was changed from {float(x0[idx])!r} to {float(xs[idx])!r}: put each element back after nudging it")
        return compare("grad", got, grad(x0), tol)

    return fn


_xg = np.random.default_rng(3).standard_normal((3, 4))
register(
    "numeric_grad", "03-backprop", "numeric_grad(f, x, h=1e-5) -> grad of the scalar f() w.r.t. x (perturb x in place)", 1e-7,
    case_runner(
        [
            ("f = sum(x**2)", _numeric_grad_case(lambda x: float(np.sum(x**2)), lambda x: 2 * x, np.array([1.0, -2.0, 0.5]))),
            ("f = sum(sin(x) * x), x (3, 4)", _numeric_grad_case(lambda x: float(np.sum(np.sin(x) * x)), lambda x: np.cos(x) * x + np.sin(x), _xg)),
        ],
        "the analytic gradient",
    ),
)
