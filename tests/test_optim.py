"""Adam/AdamW against hand-computed updates, gradient clipping and the learning-rate schedule."""
import math

import numpy as np
import pytest

from nanotransformer.optim import Adam, AdamW, adamw_update, clip_grad_norm, lr_schedule


def _by_hand(p, grads, lr, b1, b2, eps, wd, decoupled):
    """Kingma & Ba, Algorithm 1, one scalar at a time, in plain Python floats."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * wd * p
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
        out.append(p)
    return out


GRADS = [0.5, -0.2, 0.1, 0.3]


def test_first_adam_step_by_hand():
    # t=1: m = 0.1*0.5 = 0.05, v = 0.001*0.25 = 0.00025; m_hat = 0.5, v_hat = 0.25
    # p = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
    p = np.array([1.0])
    opt = Adam([p], lr=0.1)
    opt.step([np.array([0.5])])
    assert p[0] == pytest.approx(1 - 0.1 * 0.5 / (0.5 + 1e-8), rel=1e-15)
    assert opt.m[0][0] == pytest.approx(0.05) and opt.v[0][0] == pytest.approx(0.00025)


@pytest.mark.parametrize("cls,decoupled,wd", [(Adam, False, 0.0), (Adam, False, 0.1), (AdamW, True, 0.1)])
def test_sequence_matches_hand_computation(cls, decoupled, wd):
    lr, b1, b2, eps = 0.05, 0.8, 0.99, 1e-6
    p = np.array([1.5, -0.7])
    opt = cls([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for step, g in enumerate(GRADS):
        opt.step([np.array([g, -2 * g])])
        assert p[0] == pytest.approx(_by_hand(1.5, GRADS, lr, b1, b2, eps, wd, decoupled)[step], rel=1e-13)
        hand = _by_hand(-0.7, [-2 * x for x in GRADS], lr, b1, b2, eps, wd, decoupled)[step]
        assert p[1] == pytest.approx(hand, rel=1e-13)


def test_adamw_differs_from_adam_l2():
    """Decoupled decay is not the same as L2 in the gradient: the point of AdamW."""
    a, b = np.array([2.0]), np.array([2.0])
    opt_a, opt_b = Adam([a], lr=0.1, weight_decay=0.5), AdamW([b], lr=0.1, weight_decay=0.5)
    for g in GRADS:
        opt_a.step([np.array([g])])
        opt_b.step([np.array([g])])
    assert abs(a[0] - b[0]) > 1e-3


def test_bias_correction_makes_first_step_size_lr():
    """Without bias correction a tiny gradient would give a tiny first step; with it, ~lr."""
    for g in (1e-4, 1.0, 1e3):
        p = np.zeros(1)
        adamw_update(p, np.array([g]), np.zeros(1), np.zeros(1), 1, lr=0.01, eps=1e-12)
        assert p[0] == pytest.approx(-0.01, rel=1e-6)


def test_decay_mask_exempts_parameters():
    p = np.array([1.0, 1.0])
    adamw_update(p, np.zeros(2), np.zeros(2), np.zeros(2), 1, lr=0.1, weight_decay=np.array([0.5, 0.0]))
    np.testing.assert_allclose(p, [0.95, 1.0])


def test_float32_state_stays_float32():
    p = np.ones(3, np.float32)
    opt = AdamW(p, lr=1e-2)
    opt.step(np.ones(3, np.float32))
    assert p.dtype == np.float32 and opt.m[0].dtype == np.float32


def test_clip_grad_norm(rng):
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    norm = math.sqrt(sum((g**2).sum() for g in grads))
    before = [g.copy() for g in grads]
    assert clip_grad_norm(grads, max_norm=norm * 2) == pytest.approx(norm)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, b)  # under the limit: untouched
    assert clip_grad_norm(grads, max_norm=1.0) == pytest.approx(norm)
    assert math.sqrt(sum((g**2).sum() for g in grads)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(grads[0] / before[0], grads[1][0] / before[1][0])  # direction kept


def test_lr_schedule_shape():
    max_lr, min_lr, warm, total = 1e-3, 1e-4, 10, 110
    lrs = [lr_schedule(s, max_lr, warm, total, min_lr) for s in range(130)]
    assert lrs[0] == pytest.approx(max_lr / warm)
    np.testing.assert_allclose(np.diff(lrs[:warm]), max_lr / warm)  # linear warm-up
    assert lrs[warm - 1] == pytest.approx(max_lr) and lrs[warm] == pytest.approx(max_lr)
    assert lrs[warm + 50] == pytest.approx((max_lr + min_lr) / 2)  # cosine half-way point
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))  # never increases after warm-up
    assert lrs[total] == min_lr and lrs[-1] == min_lr


def test_bad_step_number():
    with pytest.raises(ValueError, match="t: expected the 1-based step"):
        adamw_update(np.ones(1), np.ones(1), np.zeros(1), np.zeros(1), 0, lr=0.1)


def test_bad_grads():
    opt = AdamW([np.ones(3)])
    with pytest.raises(ValueError, match=r"grads\[0\]: expected shape \(3,\), got \(4,\)"):
        opt.step([np.ones(4)])
    with pytest.raises(ValueError, match="grads: expected 1 arrays, got 2"):
        opt.step([np.ones(3), np.ones(3)])
