"""Chapter 07's exercises.

    adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay)   against optim.adamw_update
        (which updates p, m, v in place and returns nothing; the student returns p, m, v)
    lr_schedule(step, max_lr, warmup_steps, max_steps, min_lr)         against optim.lr_schedule
"""
import numpy as np

from .. import optim
from .checker import Wrong, case_runner, compare, compare_all, register


def _adam_case(weight_decay, steps=5):
    def fn(student, tol):
        rng = np.random.default_rng(7)
        shape = (3, 4)
        p_ref = rng.standard_normal(shape)
        m_ref, v_ref = np.zeros(shape), np.zeros(shape)
        p, m, v = p_ref.copy(), m_ref.copy(), v_ref.copy()
        hp = dict(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=weight_decay)
        worst = 0.0
        for t in range(1, steps + 1):
            g = rng.standard_normal(shape) * (1.0 + t)
            optim.adamw_update(p_ref, g.copy(), m_ref, v_ref, t, **hp)
            out = student(p.copy(), g.copy(), m.copy(), v.copy(), t, **hp)
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise Wrong(f"expected a tuple (p, m, v), got {type(out).__name__}")
            try:
                worst = max(worst, compare_all(("m", "v", "p"), (out[1], out[2], out[0]), (m_ref, v_ref, p_ref), tol))
            except Wrong as w:
                raise Wrong(f"after step t={t}: {w}") from None
            # continue from the reference state, so one wrong step is reported once
            p, m, v = p_ref.copy(), m_ref.copy(), v_ref.copy()
        return worst

    return fn


register(
    "adamw_update", "07-adam",
    "adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay) -> p, m, v  (one AdamW step, t = 1, 2, ...)",
    1e-9,
    case_runner(
        [("Adam, weight_decay=0", _adam_case(0.0)), ("AdamW, weight_decay=0.5", _adam_case(0.5))],
        "optim.adamw_update",
    ),
)


def _lr_case(max_lr, warmup, max_steps, min_lr):
    def fn(student, tol):
        steps = np.arange(max_steps + 5)
        expected = np.array([optim.lr_schedule(int(s), max_lr, warmup, max_steps, min_lr) for s in steps])
        got = np.array([student(int(s), max_lr, warmup, max_steps, min_lr) for s in steps], dtype=np.float64)
        return compare("lr", got, expected, tol)

    return fn


register(
    "lr_schedule", "07-adam",
    "lr_schedule(step, max_lr, warmup_steps, max_steps, min_lr) -> learning rate (step is 0-based)", 1e-9,
    case_runner(
        [("warm-up 10, 50 steps, min_lr 0", _lr_case(1.0, 10, 50, 0.0)), ("warm-up 3, 20 steps, min_lr 0.1", _lr_case(3e-4, 3, 20, 3e-5))],
        "optim.lr_schedule (index = step)",
    ),
)
