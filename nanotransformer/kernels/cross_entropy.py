"""Numba fused softmax + cross-entropy: the kernels behind `layers.cross_entropy_forward` /
`layers.cross_entropy_backward`.

Dimension legend: N rows (B * T flattened), V vocab.

One pass per row computes the log-sum-exp (max-subtracted, so exp never overflows) and the row's
loss; the backward recomputes softmax from the saved lse instead of storing an N x V matrix.

Does not: do label smoothing (`layers.label_smoothing_cross_entropy_forward` has no kernel), or
reduce other than by the mean over the targets that are not ignored.
"""
import math

import numpy as np
from numba import prange

from ..validation import check_array, check_ids
from .jit import exp, kernel, row_max, run


@kernel
def _cross_entropy_forward_nb(losses, lse, logits, targets, ignore_index):
    """Numba kernel for `layers.cross_entropy_forward` (per-row part; the mean is the wrapper's).

    losses: (N,) loss of each row (0 where ignored), lse: (N,) log-sum-exp of each row,
    logits: (N, V), targets: (N,) int
    """
    N, V = logits.shape
    for i in prange(N):  # row i writes only losses[i], lse[i]
        m = row_max(logits[i], V)
        s = logits.dtype.type(0)
        for j in range(V):  # subtract the max first: exp never overflows, the largest term is 1
            s += exp(logits[i, j] - m)
        lse[i] = m + math.log(s)
        t = targets[i]
        losses[i] = 0 if t == ignore_index else lse[i] - logits[i, t]


@kernel
def _cross_entropy_backward_nb(dlogits, logits, lse, targets, ignore_index, scale):
    """Numba kernel for `layers.cross_entropy_backward`.

    dlogits, logits: (N, V), lse: (N,), targets: (N,), scale = dout / n_valid (logits' dtype)
    """
    N, V = logits.shape
    for i in prange(N):  # row i writes only dlogits[i]
        t = targets[i]
        if t == ignore_index:
            for j in range(V):
                dlogits[i, j] = 0
            continue
        # d loss_i / d logits_i = softmax(logits_i) - onehot(t); softmax recomputed from the lse
        for j in range(V):
            dlogits[i, j] = exp(logits[i, j] - lse[i]) * scale
        dlogits[i, t] -= scale


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """logits: (..., V) float, targets: (...) int in [0, V) or == ignore_index
    -> loss: scalar (0-d array of logits.dtype), cache = (logits2, lse, targets1, n_valid, ignore_index)
    """
    check_array("logits", logits, min_ndim=1, floating=True)
    check_array("targets", targets, shape=logits.shape[:-1])
    V = logits.shape[-1]
    check_ids("targets", targets, V, allow=ignore_index)
    logits2 = np.ascontiguousarray(logits.reshape(-1, V))  # (N, V)
    t1 = np.ascontiguousarray(targets.reshape(-1), dtype=np.int64)  # (N,)
    N = logits2.shape[0]
    losses = np.empty(N, logits.dtype)
    lse = np.empty(N, logits.dtype)
    run(_cross_entropy_forward_nb, logits2.size, losses, lse, logits2, t1, ignore_index)
    n_valid = int(np.count_nonzero(t1 != ignore_index))
    loss = losses.sum() / max(n_valid, 1)  # every target ignored: loss 0, not NaN
    return np.asarray(loss, dtype=logits.dtype), (logits2, lse, t1, n_valid, ignore_index, logits.shape)


def cross_entropy_backward(dout, cache):
    """dout: scalar -> dlogits: (..., V)"""
    logits2, lse, t1, n_valid, ignore_index, shape = cache
    dlogits = np.empty_like(logits2)
    scale = logits2.dtype.type(float(dout) / max(n_valid, 1))
    run(_cross_entropy_backward_nb, logits2.size, dlogits, logits2, lse, t1, ignore_index, scale)
    return dlogits.reshape(shape)
