"""Numba GELU (tanh approximation, as GPT-2): the kernels behind `layers.gelu_forward` /
`layers.gelu_backward`.

Dimension legend: n elements (any input shape, flattened).

tanh is `jit.tanh`: libm's in float64, a vectorisable polynomial in float32.

Does not: compute the exact erf form of GELU.
"""
import math

import numpy as np
from numba import prange

from ..validation import check_array
from .jit import kernel, run, tanh

_GELU_K = math.sqrt(2.0 / math.pi)


@kernel
def _gelu_forward_nb(out, x):
    """Numba kernel for `layers.gelu_forward`. out, x: (n,) flat

    out = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2 / pi)
    """
    k = x.dtype.type(_GELU_K)
    a = x.dtype.type(0.044715)
    half, one = x.dtype.type(0.5), x.dtype.type(1.0)
    for i in prange(x.shape[0]):  # element i writes only out[i]
        xi = x[i]
        out[i] = half * xi * (one + tanh(k * (xi + a * xi * xi * xi)))


@kernel
def _gelu_backward_nb(dx, dout, x):
    """Numba kernel for `layers.gelu_backward`. dx, dout, x: (n,) flat"""
    k = x.dtype.type(_GELU_K)
    a = x.dtype.type(0.044715)
    a3 = x.dtype.type(3 * 0.044715)
    half, one = x.dtype.type(0.5), x.dtype.type(1.0)
    for i in prange(x.shape[0]):  # element i writes only dx[i]
        xi = x[i]
        t = tanh(k * (xi + a * xi * xi * xi))
        # forward was: out = 0.5 x (1 + t), t = tanh(u(x)), u = k (x + a x^3)
        #   dout/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) u'(x),  u'(x) = k (1 + 3 a x^2)
        dx[i] = dout[i] * (half * (one + t) + half * xi * (one - t * t) * k * (one + a3 * xi * xi))


def gelu_forward(x):
    """x: (...) -> out: (...), cache = (x,)"""
    check_array("x", x, floating=True)
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    run(_gelu_forward_nb, x.size, out.reshape(-1), x.reshape(-1))
    return out, (x,)


def gelu_backward(dout, cache):
    """dout: (...) -> dx: (...)"""
    (x,) = cache
    dx = np.empty_like(x)
    run(_gelu_backward_nb, x.size, dx.reshape(-1), np.ascontiguousarray(dout).reshape(-1), x.reshape(-1))
    return dx
