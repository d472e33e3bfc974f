"""Numba head layout: the kernels behind `attention.split_heads` / `attention.merge_heads`.

Dimension legend: B batch, T time, W the fused width (C for one group; C + 2 NKV hs for q, k, v),
n heads of a group, hs head size.

The NumPy twins are free views one way (split_heads: a reshape and a transpose) and one
transposing copy the other (merge_heads, plus np.concatenate for several groups). The attention
kernel reads C-contiguous (B, NH, T, hs) heads, so on the fused path the views were copied anyway
(NumPy's strided copy, about 6 GB/s here), and the backward's dq, dk, dv were merged and then
concatenated: two copies. Here each (batch, position) row is copied once, hs elements at a time,
rows split over the threads:

    split_heads(qkv, (NH, NKV, NKV))  one pass over qkv -> q, k, v, each C-contiguous
    merge_heads(dq, dk, dv)           one pass into dqkv (no concatenation)

Same values as the twins, bit for bit (they are copies). Where the twin's result is already
C-contiguous (T = 1, i.e. decoding, or one head) it is returned as it is, with no kernel call.

Does not: validate beyond what the twins check (shapes must agree; dtypes are kept as given).
"""
import numpy as np
from numba import prange

from .. import attention as reference
from .jit import kernel, run


@kernel
def _split_heads_nb(outs, x, starts):
    """outs[g][b, h, t, :] = x[b, t, c + h hs : c + (h + 1) hs], c = starts[g], for each group g.
    outs: a tuple of (B, n_g, T, hs), x: (B, T, W), starts: (G,) int64"""
    B, T = x.shape[0], x.shape[1]
    for bt in prange(B * T):  # row (b, t) writes only outs[g][b, :, t]
        b, t = bt // T, bt % T
        for g in range(len(outs)):
            out = outs[g]
            n, hs = out.shape[1], out.shape[3]
            for h in range(n):
                c = starts[g] + h * hs
                for i in range(hs):  # (a slice assignment: 2.2x slower in the serial build)
                    out[b, h, t, i] = x[b, t, c + i]


@kernel
def _merge_heads_nb(out, xs, starts):
    """out[b, t, c + h hs : c + (h + 1) hs] = xs[g][b, h, t, :], c = starts[g], for each group g.
    out: (B, T, W), xs: a tuple of (B, n_g, T, hs), starts: (G,) int64"""
    B, T = out.shape[0], out.shape[1]
    for bt in prange(B * T):  # row (b, t) writes only out[b, t]
        b, t = bt // T, bt % T
        for g in range(len(xs)):
            x = xs[g]
            n, hs = x.shape[1], x.shape[3]
            for h in range(n):
                c = starts[g] + h * hs
                for i in range(hs):
                    out[b, t, c + i] = x[b, h, t, i]


def _starts(groups):
    """First column of each group of heads in the fused layout."""
    return np.cumsum([0] + [g.shape[1] * g.shape[3] for g in groups[:-1]])


def split_heads(x, n_head):
    """(B, T, C) -> (B, NH, T, hs); n_head a tuple -> a tuple, one per group (as the twin), each
    C-contiguous."""
    views = reference.split_heads(x, n_head)  # validates; free
    single = not isinstance(views, tuple)  # n_head an int: one array, not a tuple
    views = (views,) if single else views
    if all(v.flags.c_contiguous for v in views):
        return views[0] if single else views
    outs = tuple(np.empty(v.shape, x.dtype) for v in views)
    run(_split_heads_nb, x.size, outs, np.ascontiguousarray(x), _starts(outs))
    return outs[0] if single else outs


def merge_heads(*xs):
    """(B, NH, T, hs) -> (B, T, NH * hs); several -> side by side along the last axis (as the twin)."""
    B, NH, T, hs = xs[0].shape
    if len(xs) == 1:
        y = xs[0].transpose(0, 2, 1, 3)
        if y.flags.c_contiguous:  # T = 1 or one head: the merge is a reshape
            return y.reshape(B, T, NH * hs)
    for i, x in enumerate(xs):
        if x.ndim != 4 or x.shape[0] != B or x.shape[2:] != (T, hs) or x.dtype != xs[0].dtype:
            raise ValueError(f"merge_heads: expected (B={B}, n, T={T}, hs={hs}) arrays of one dtype, "
                             f"got {x.shape} {x.dtype} as argument {i}")  # fmt: skip
    xs = tuple(np.ascontiguousarray(x) for x in xs)
    out = np.empty((B, T, sum(x.shape[1] for x in xs) * hs), xs[0].dtype)
    run(_merge_heads_nb, out.size, out, xs, _starts(xs))
    return out
