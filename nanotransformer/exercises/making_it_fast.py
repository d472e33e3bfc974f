"""Chapter 10's exercises: the two kernels of the chapter, written in NumPy and judged for
correctness and for their structure (not speed).

    matmul(a, b, tile)                kernels.matmul's job, against a @ b (its NumPy twin); every
        product must stay within tile x tile blocks of a and b
    attention_forward(q, k, v, causal)
        the fused kernel's one-pass online softmax (kernels' attention_forward), single head,
        returning out only; against the reference attention.attention_forward. The keys must be
        visited one at a time, each value used right after its key's score

How the structure is seen: a and b (or k and v) are handed to the student as `_Watched` arrays, an
ndarray subclass that records every product (`@`, `*`, np.dot, np.einsum, ...) it takes part in and,
for k and v, which row each read took. A product on more than a tile of a or b (matmul), or on
several rows of k or v at once, or a value row read when its key was not the last key read (a
first pass over all the scores, then a second over the values), is reported.

Does not: see through np.asarray / np.array (they return a plain ndarray). A function that
converts its inputs is judged on its result only, and the "passed" line says so.
"""
import numpy as np

from .. import attention
from .checker import Wrong, case_runner, compare, register

_PRODUCT_UFUNCS = (np.matmul, np.multiply)
_PRODUCT_FUNCS = {np.dot, np.vdot, np.inner, np.outer, np.einsum, np.tensordot, np.matmul, np.kron, np.multiply}


class _Log:
    def __init__(self):
        self.products = []  # (array name, operand shape) for each product a watched array took part in
        self.reads = []  # (array name, row) for each read of one row (or one element) of k or v
        self.seen = False  # the student's code touched a watched array at all


def _unwatch(x):
    if isinstance(x, _Watched):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwatch(y) for y in x)
    return x


def _watched_in(x):
    if isinstance(x, _Watched):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _watched_in(y)


class _Watched(np.ndarray):
    """An array that reports to a `_Log` how it is used (see the module docstring)."""

    def __array_finalize__(self, obj):
        self._log = getattr(obj, "_log", None)
        self._name = getattr(obj, "_name", None)
        self._is_original = False  # only the array handed to the student has k's rows as its rows

    def __getitem__(self, idx):
        if self._log is not None:
            self._log.seen = True
            first = idx[0] if isinstance(idx, tuple) and idx else idx
            if self._is_original and isinstance(first, (int, np.integer)):
                self._log.reads.append((self._name, int(first) % self.shape[0]))
        return super().__getitem__(idx)

    def _record(self, args):
        for w in _watched_in(args):
            if w._log is not None:
                w._log.seen = True
                w._log.products.append((w._name, w.shape))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc in _PRODUCT_UFUNCS and method == "__call__":
            self._record(inputs)
        elif self._log is not None:
            self._log.seen = True
        if "out" in kwargs:
            kwargs["out"] = _unwatch(kwargs["out"])
        return getattr(ufunc, method)(*_unwatch(inputs), **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        if func in _PRODUCT_FUNCS:
            self._record(args)
        return func(*_unwatch(args), **{k: _unwatch(v) for k, v in kwargs.items()})

    def dot(self, other, out=None):
        self._record((self, other))
        return np.dot(_unwatch(self), _unwatch(other))


def _watch(x, name, log):
    w = np.array(x).view(_Watched)
    w._log, w._name, w._is_original = log, name, True
    return w


_ONLY_RESULT = "; your function converted its inputs (np.asarray / np.array), so only the result was checked"


def _matmul_case(shape_a, shape_b, tile):
    def fn(student, tol):
        rng = np.random.default_rng(11)
        a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
        log = _Log()
        got = student(_watch(a, "a", log), _watch(b, "b", log), tile=tile)
        got = None if got is None else np.asarray(got).view(np.ndarray)
        err = compare("out", got, a @ b, tol)
        for name, shape in log.products:
            if max(shape, default=1) > tile:
                raise Wrong(f"out: right values, but expected products of blocks of at most {tile} x {tile} (tile={tile}), "
                            f"got a product on a block of {name} of shape {shape}: tile the rows, the columns and "
                            f"the reduction axis")
        if not log.seen:
            fn.note = _ONLY_RESULT
        return err

    fn.note = ""
    return fn


def _runner_with_notes(cases, detail):
    run = case_runner(cases, detail)

    def run_noted(student, tol):
        for _, fn in cases:
            fn.note = ""
        out = run(student, tol)
        return out + next((fn.note for _, fn in cases if fn.note), "")

    return run_noted


_MATMUL_CASES = [
    ("(4, 4) @ (4, 4), tile=2", _matmul_case((4, 4), (4, 4), 2)),
    ("(37, 19) @ (19, 23), tile=8, ragged tiles", _matmul_case((37, 19), (19, 23), 8)),
    ("(1, 70) @ (70, 3), tile=16", _matmul_case((1, 70), (70, 3), 16)),
]
register(
    "matmul", "10-making-it-fast",
    "matmul(a, b, tile) -> a @ b for 2-D float64 a (M, K), b (K, N), computed from products of at most tile x tile blocks",
    1e-10,
    _runner_with_notes(_MATMUL_CASES, "a @ b, products within tile x tile blocks"),
)


def _attention_case(Tq, Tk, hs, causal):
    def fn(student, tol):
        rng = np.random.default_rng(12)
        q, k, v = rng.standard_normal((Tq, hs)), rng.standard_normal((Tk, hs)), rng.standard_normal((Tk, hs))
        expected, _ = attention.attention_forward(q, k, v, causal=causal)
        log = _Log()
        got = student(q.copy(), _watch(k, "k", log), _watch(v, "v", log), causal)
        got = None if got is None else np.asarray(got).view(np.ndarray)
        err = compare("out", got, expected, tol)
        for name, shape in log.products:
            if len(shape) >= 2 and min(shape) > 1:
                raise Wrong(f"out: right values, but expected one pass over the keys, one key (row of k and v) at "
                            f"a time, got an operation on a block of {name} of shape {shape}")
        last_k = None
        for name, row in log.reads:
            if name == "k":
                last_k = row
            elif last_k is not None and row != last_k:  # (rows of k read through a view are not seen)
                raise Wrong(f"out: right values, but expected each v[j] to be used right after k[j]'s score, got "
                            f"v[{row}] read when the last key read was k[{last_k}]: a second pass over the keys "
                            f"(use the online softmax)")
        if not log.seen:
            fn.note = _ONLY_RESULT
        return err

    fn.note = ""
    return fn


_ATTENTION_CASES = [
    ("T=6, no mask", _attention_case(6, 6, 4, False)),
    ("T=9, causal", _attention_case(9, 9, 3, True)),
    ("Tq=2, Tk=7, causal (decoding)", _attention_case(2, 7, 5, True)),
]
register(
    "attention_forward", "10-making-it-fast",
    "attention_forward(q, k, v, causal) -> out: (Tq, hs), one pass over the keys with an online softmax", 1e-10,
    _runner_with_notes(_ATTENTION_CASES, "attention.attention_forward, one key at a time"),
)
