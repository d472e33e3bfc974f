"""Numba embedding backward: the scatter-add behind `layers.embedding_backward`, and the forward
that pairs with it.

Dimension legend: N tokens (the ids flattened), V rows of the table (vocabulary or positions),
C channels.

The forward is a gather, `table[ids]`, which NumPy's fancy indexing already does in one pass:
`embedding_forward` here is the reference itself (same checks, same cache). The backward is where
NumPy is slow: `np.add.at(dtable, ids, dout)` must accumulate rows whose id repeats, and NumPy
runs it element by element (1.6 ms for the tiny config's 1024 x 128, about 3 % of its training
step; measured in benchmarks/README.md, "Attention's wide tiles and the embedding scatter").

Parallelism: threads split the C columns into chunks of CW, and each chunk adds every token's
row in token order. Two tokens with the same id then never race (they are in the same chunk, one
after the other), and each element of dtable is summed in the order np.add.at uses, whatever
the thread count.

The wrapper checks the cache's ids against V again (the forward did, but the kernel indexes
dtable with them unchecked: an id out of range would write outside it).
"""
import numpy as np
from numba import prange

from .. import layers as reference
from ..validation import check_array, check_ids
from .jit import kernel, run

CW = 64  # columns per task: 64 floats, 4 cache lines of each row


@kernel
def _embedding_backward_nb(dtable, ids, dout):
    """Numba kernel for `layers.embedding_backward`: dtable[ids[n]] += dout[n] for n = 0 .. N-1.

    dtable: (V, C), zeroed; ids: (N,) intp in [0, V); dout: (N, C). All C-contiguous.
    """
    N, C = dout.shape
    for t in prange((C + CW - 1) // CW):  # task t owns columns [c0, c1) of dtable: no overlap
        c0, c1 = t * CW, min(C, t * CW + CW)
        for n in range(N):  # token order, as np.add.at
            src, dst = dout[n, c0:c1], dtable[ids[n], c0:c1]
            for c in range(c1 - c0):
                dst[c] += src[c]


embedding_forward = reference.embedding_forward  # a gather: NumPy's own is one pass already (above)


def embedding_backward(dout, cache):
    """dout: (..., C) -> dtable: (V, C); cache = (ids, V) from `embedding_forward`"""
    ids, V = cache
    check_ids("cache ids", ids, V)  # the kernel writes dtable[ids[n]] unchecked
    check_array("dout", dout, floating=True, shape=ids.shape + (None,))
    d2 = np.ascontiguousarray(dout.reshape(ids.size, dout.shape[-1]))  # (N, C)
    dtable = np.zeros((V, d2.shape[1]), dtype=d2.dtype)
    flat = np.ascontiguousarray(ids.reshape(-1), dtype=np.intp)  # one compiled signature for every int dtype
    run(_embedding_backward_nb, d2.size, dtable, flat, d2)
    return dtable
