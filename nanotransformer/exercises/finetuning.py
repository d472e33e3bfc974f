"""Chapter 11's exercises.

    pool_last(h, lengths)                        against finetuning.pool_last
    logistic_regression_loss(X, y, w, b, l2)     the loss against finetuning.logistic_regression_loss,
        the gradients against finite differences of that loss (not the package's own gradient)
"""
import numpy as np

from ..gradcheck import numeric_grad
from .checker import case_runner, compare, compare_all, register


def _pool_last_case(B, T, C, lengths):
    def fn(student, tol):
        from ..finetuning import pool_last  # lazy: a model module must not stop the other exercises loading

        h = np.random.default_rng(21).standard_normal((B, T, C))
        lengths_ = np.array(lengths)
        return compare("z", student(h.copy(), lengths_.copy()), pool_last(h.copy(), lengths_.copy()), tol)

    return fn


register(
    "pool_last", "11-finetuning",
    "pool_last(h, lengths) -> z: (B, C), z[b] = h[b, lengths[b] - 1] (the last real token of each right-padded row)", 1e-12,
    case_runner(
        [("no padding", _pool_last_case(2, 4, 3, [4, 4])), ("padded rows", _pool_last_case(3, 5, 2, [5, 2, 1]))],
        "finetuning.pool_last",
    ),
)


def _logreg_case(N, F, l2):
    def fn(student, tol):
        from ..finetuning import logistic_regression_loss

        def loss(w_, b_):
            return logistic_regression_loss(X, y, w_, b_, l2)[0]

        rng = np.random.default_rng(22)
        X, y, w, b = rng.standard_normal((N, F)), (rng.random(N) < 0.5).astype(np.float64), rng.standard_normal(F), 0.3
        wc, bb = w.copy(), np.array([b])
        ew = numeric_grad(lambda: loss(wc, b), wc)
        eb = numeric_grad(lambda: loss(w, bb[0]), bb)[0]
        got = student(X.copy(), y.copy(), w.copy(), b, l2)
        return compare_all(("loss", "dw", "db"), got, (loss(w, b), ew, eb), tol)

    return fn


register(
    "logistic_regression_loss", "11-finetuning",
    "logistic_regression_loss(X, y, w, b, l2) -> loss, dw: (F,), db: float, for mean binary cross-entropy of "
    "sigmoid(X w + b) + l2/2 |w|^2",
    1e-6,
    case_runner([("N=8, F=3, l2=0", _logreg_case(8, 3, 0.0)), ("N=20, F=5, l2=0.1", _logreg_case(20, 5, 0.1))],
                "finetuning.logistic_regression_loss and its finite differences"),
)
