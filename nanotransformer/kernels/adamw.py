"""Numba AdamW: the fused in-place update behind `optim.adamw_update`.

Dimension legend: n parameters (the flat parameter buffer, or any array, flattened).

One pass over p, g, m, v per step, instead of the reference's several whole-array temporaries.

Does not: clip gradients or schedule the learning rate (`optim.clip_grad_norm`,
`optim.lr_schedule` do, in NumPy: they are not hot).
"""
import math

import numpy as np
from numba import prange

from ..validation import check_array, check_same_dtype
from .jit import kernel, run


@kernel
def _adamw_update_nb(p, g, m, v, wd, lr, beta1, beta2, eps, bc1, bc2, decoupled):
    """Numba kernel for `optim.adamw_update`, in place, one pass over the flat buffers.

    p, g, m, v: (n,); wd: (n,) per-element weight decay or (1,) for one value for all;
    bc1 = 1 - beta1^t, bc2 = 1 - beta2^t (bias corrections); scalars in p's dtype.
    """
    one = p.dtype.type(1.0)
    per_element = wd.shape[0] > 1
    for i in prange(p.shape[0]):  # element i writes only p[i], m[i], v[i]
        pi, gi = p[i], g[i]
        wdi = wd[i] if per_element else wd[0]
        if decoupled:
            pi -= lr * wdi * pi  # AdamW: decay the weight itself, outside the moments
        else:
            gi += wdi * pi  # Adam + L2: decay enters the gradient
        mi = beta1 * m[i] + (one - beta1) * gi
        vi = beta2 * v[i] + (one - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps)


def adamw_update(p, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=True):
    """One in-place Adam/AdamW step, fused into one pass (see `optim.adamw_update`).

    p, g, m, v: same shape and dtype, C-contiguous (updated in place, so no copies are made).
    weight_decay: a scalar or an array broadcastable to p (e.g. a 0/1 decay mask).
    """
    if t < 1:
        raise ValueError(f"t: expected the 1-based step number, got {t}")
    check_same_dtype(p=p, g=g, m=m, v=v)
    for name, a in (("g", g), ("m", m), ("v", v)):
        check_array(name, a, shape=p.shape)
    for name, a in (("p", p), ("m", m), ("v", v)):
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous array (it is updated in place), got strides {a.strides}")
    dt = p.dtype.type
    if np.ndim(weight_decay) == 0:
        wd = np.full(1, weight_decay, dtype=p.dtype)
    else:
        wd = np.ascontiguousarray(np.broadcast_to(np.asarray(weight_decay, dtype=p.dtype), p.shape)).reshape(-1)
    run(
        _adamw_update_nb, p.size, p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1), v.reshape(-1), wd,
        dt(lr), dt(beta1), dt(beta2), dt(eps), dt(1 - beta1**t), dt(1 - beta2**t), bool(decoupled),
    )  # fmt: skip
