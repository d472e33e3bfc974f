"""The gradient checker itself: it must pass correct backwards, flag wrong ones, and say where."""
import numpy as np
import pytest

from nanotransformer.gradcheck import gradcheck, numeric_grad, rel_error
from nanotransformer.layers import layernorm_backward, layernorm_forward, linear_backward, linear_forward


def square_forward(x, w):
    """out = (x * w)^2, a toy layer with a known gradient"""
    return (x * w) ** 2, (x, w)


def square_backward(dout, cache):
    x, w = cache
    return dout * 2 * x * w * w, dout * 2 * x * x * w


def test_numeric_grad_of_known_function():
    x = np.array([1.0, -2.0, 3.0])
    g = numeric_grad(lambda: float((x**3).sum()), x)
    np.testing.assert_allclose(g, 3 * x**2, rtol=1e-9)


def test_passes_correct_and_reports_every_input(rng):
    res = gradcheck(square_forward, square_backward, rng.standard_normal(4), rng.standard_normal(4))
    assert res.ok and [r.name for r in res.reports] == ["x", "w"]
    assert res.max_rel_error < 1e-8


def test_flags_wrong_gradient_with_its_index(rng):
    def wrong_backward(dout, cache):
        dx, dw = square_backward(dout, cache)
        dw = dw.copy()
        dw[2] += 1.0  # one element wrong
        return dx, dw

    res = gradcheck(square_forward, wrong_backward, rng.standard_normal(5), rng.standard_normal(5))
    assert not res.ok
    assert res.worst.name == "w" and res.worst.worst_index == (2,)
    assert "FAIL" in str(res) and "index (2,)" in str(res)


def test_float32_inputs_are_checked_in_float64(rng):
    x, w, b = (a.astype(np.float32) for a in (rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(4)))
    assert gradcheck(layernorm_forward, layernorm_backward, x, w, b).ok


def test_sampled_coordinates(rng):
    x, w, b = rng.standard_normal((6, 7)), rng.standard_normal((7, 9)), rng.standard_normal(9)
    res = gradcheck(linear_forward, linear_backward, x, w, b, max_coords=5)
    assert res.ok

    def wrong(dout, cache):
        dx, dw, db = linear_backward(dout, cache)
        return dx, dw * 1.01, db

    assert not gradcheck(linear_forward, wrong, x, w, b, max_coords=5).ok


def test_wrong_number_of_gradients_is_a_clear_error(rng):
    with pytest.raises(ValueError, match="backward: expected 2 gradients"):
        gradcheck(square_forward, lambda d, c: square_backward(d, c)[0:1], rng.standard_normal(2), rng.standard_normal(2))


def test_rel_error_definition():
    err, idx = rel_error(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.3]))
    assert idx == (2,) and err == pytest.approx(0.3 / 6.3)
    assert rel_error(np.zeros(3), np.zeros(3))[0] == 0.0
