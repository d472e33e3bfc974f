"""Chapter 07's exercises.

    adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay)   against optim.adamw_update
        (which updates p, m, v in place and returns nothing; the student returns p, m, v)
    lr_schedule(step, max_lr, warmup_steps, max_steps, min_lr)         against optim.lr_schedule

The Adam cases use beta2 = 0.999 and five steps: with beta2 = 0.99 the factor
(1 - beta1) / sqrt(1 - beta2) is exactly 1 at step 1, so forgetting the bias correction would be
invisible there. eps is tiny (1e-17) so that Kingma & Ba's "efficient" form (alpha_t =
lr sqrt(1 - beta2^t) / (1 - beta1^t), eps-hat added to sqrt(v)) passes with the same number, and
one case has gradients of size ~1e-6, where eps inside the square root is visibly wrong. A wrong
step is compared with the classic mistakes, and a match is named in a hint.
"""
import numpy as np

from .. import optim
from .checker import Wrong, case_runner, compare, compare_all, register

ADAM_EPS = 1e-17  # see the module docstring: small enough that eps-hat and eps agree to ~1e-11


def _adam_variant(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay, bc_m=True, bc_v=True, eps_inside=False,
                  coupled=False):
    """Adam with one classic mistake switched on (the reference has all switches at default)."""
    if coupled:
        g = g + weight_decay * p
    else:
        p = p - lr * weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t) if bc_m else m
    v_hat = v / (1 - beta2**t) if bc_v else v
    den = np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps
    return p - lr * m_hat / den, m, v


_ADAM_MISTAKES = [
    (dict(bc_m=False, bc_v=False), "this is Adam without bias correction: use m_hat = m / (1 - beta1**t) and "
                                   "v_hat = v / (1 - beta2**t) in the update (m and v start at 0)"),
    (dict(bc_m=False), "only v is bias-corrected: m_hat = m / (1 - beta1**t) too"),
    (dict(bc_v=False), "only m is bias-corrected: v_hat = v / (1 - beta2**t) too"),
    (dict(eps_inside=True), "eps is inside the square root: the update divides by sqrt(v_hat) + eps"),
    (dict(coupled=True), "the decay went into the gradient (Adam with L2, g + weight_decay * p); AdamW decays "
                         "the weights directly, p -= lr * weight_decay * p, outside m and v"),
]


def _adam_hint(out, state, t, hp):
    """The classic mistake whose result matches the student's (p, m, v), if any."""
    for switches, hint in _ADAM_MISTAKES:
        exp = _adam_variant(*(a.copy() for a in state), t, **hp, **switches)
        try:
            compare_all(("p", "m", "v"), out, exp, 1e-9)
        except Wrong:
            continue
        return f"\n  hint: {hint}"
    return ""


def _adam_case(weight_decay, g_of, steps=5):
    def fn(student, tol):
        rng = np.random.default_rng(7)
        shape = (3, 4)
        p_ref = rng.standard_normal(shape)
        m_ref, v_ref = np.zeros(shape), np.zeros(shape)
        p, m, v = p_ref.copy(), m_ref.copy(), v_ref.copy()
        hp = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=ADAM_EPS, weight_decay=weight_decay)
        worst = 0.0
        for t in range(1, steps + 1):
            g = g_of(rng, shape, t)
            optim.adamw_update(p_ref, g.copy(), m_ref, v_ref, t, **hp)
            out = student(p.copy(), g.copy(), m.copy(), v.copy(), t, **hp)
            if not isinstance(out, (tuple, list)):
                raise Wrong(f"expected a tuple (p, m, v), got {type(out).__name__}")
            if len(out) != 3:
                raise Wrong(f"expected a tuple (p, m, v) of 3 arrays, got a {type(out).__name__} of {len(out)}")
            try:
                worst = max(worst, compare_all(("m", "v", "p"), (out[1], out[2], out[0]), (m_ref, v_ref, p_ref), tol))
            except Wrong as w:
                raise Wrong(f"after step t={t}: {w}{_adam_hint(out, (p, g, m, v), t, hp)}") from None
            # continue from the reference state, so one wrong step is reported once
            p, m, v = p_ref.copy(), m_ref.copy(), v_ref.copy()
        return worst

    return fn


def _g_normal(rng, shape, t):
    return rng.standard_normal(shape) * (1.0 + t)


def _g_tiny(rng, shape, t):
    # |g| in [1e-6, 2e-6]: Adam's step is still ~lr, and sqrt(v_hat + eps) != sqrt(v_hat) + eps shows
    return 1e-6 * (1.0 + rng.random(shape)) * np.where(rng.random(shape) < 0.5, -1.0, 1.0)


register(
    "adamw_update", "07-adam",
    "adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay) -> p, m, v  (one AdamW step, t = 1, 2, ...)",
    1e-9,
    case_runner(
        [("Adam, beta2=0.999, weight_decay=0", _adam_case(0.0, _g_normal)),
         ("AdamW, beta2=0.999, weight_decay=0.5", _adam_case(0.5, _g_normal)),
         ("Adam, tiny gradients |g| ~ 1e-6 (where eps's place shows)", _adam_case(0.0, _g_tiny))],
        f"optim.adamw_update (beta2=0.999, eps={ADAM_EPS:.0e})",
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
