"""Chapter 20's exercise: the ring all-reduce, simulated in one process.

    ring_allreduce(arrays)        against the definition, the sum of the arrays, on every rank

Graded on what must come out (every rank holds the elementwise sum, in arrays of the input's
shape, the inputs untouched); the package's `distributed.ring_allreduce` is the reference. The
cases have one rank (nothing to send), two, and lengths that N does not divide (the chunks
differ by one: a chunking that assumes equal chunks drops or repeats the tail), and a 2-D
array (chunks of the flattened buffer, as our flat gradient buffer is). A reduce-scatter without
the all-gather leaves each rank one finished chunk: the diagnosis names the first wrong entry.
"""
import numpy as np

from .checker import Wrong, case_runner, compare, register


def _case(N, shape, seed):
    def fn(student, tol):
        rng = np.random.default_rng(seed)
        arrays = [rng.standard_normal(shape) for _ in range(N)]
        before = [a.copy() for a in arrays]
        got = student([a for a in arrays])
        if not isinstance(got, (list, tuple)) or len(got) != N:
            raise Wrong(f"out: expected a list of {N} arrays (one per rank), got "
                        f"{type(got).__name__}{'' if not hasattr(got, '__len__') else f' of length {len(got)}'}")
        expected = np.sum(before, axis=0)
        worst = 0.0
        for r, out in enumerate(got):
            if np.shape(out) != shape:
                raise Wrong(f"out[{r}]: expected shape {shape}, got {np.shape(out)}")
            worst = max(worst, compare(f"out[{r}]", out, expected, tol))
        for r, (a, b) in enumerate(zip(arrays, before)):
            if not np.array_equal(a, b):
                raise Wrong(f"arrays[{r}]: expected the input to be left as it was (copy before adding), got it changed")
        return worst

    return f"{N} ranks, arrays of shape {shape}", fn


register(
    "ring_allreduce", "20-scaling-out",
    "ring_allreduce(arrays) -> list of N arrays, each the elementwise sum of the N input arrays (one per rank), "
    "by the ring's reduce-scatter then all-gather over N chunks of the flattened array",
    1e-12,
    case_runner([_case(1, (5,), 0), _case(2, (6,), 1), _case(3, (10,), 2), _case(4, (3, 7), 3), _case(5, (4,), 4)],
                "the sum of the arrays"),
)
