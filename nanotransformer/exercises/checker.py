"""The checker's machinery: the registry of exercises, and comparisons that raise `Wrong` with a
diagnosis naming the output tensor and the index that is off.

    register(name, chapter, signature, tol, runner)   # runner(student_fn, tol) -> "3 cases, ..."
    grad_exercise(forward, ("dx", "dw"), cases)        # a backward pass, against finite differences
    case_runner([(label, fn), ...], "layers.xxx")     # anything else, against the package's answer

Errors are relative to the scale of the whole tensor, `max|a - e| / max(|a| + |e|)`, the same
measure as `gradcheck.rel_error`. Infinities (masked logits) must sit exactly where expected.

Does not: run the student's function itself (`check` in `__init__.py` does, and turns `Wrong`
and crashes into a printed verdict), or hold any exercise (each chapter's module registers its own).
"""
from dataclasses import dataclass

import numpy as np

from ..gradcheck import numeric_grad

EXERCISES = {}  # name -> Exercise
RUNNERS = {}  # name -> runner(student_fn, tol) -> detail string for the "passed" line


@dataclass(frozen=True)
class Exercise:
    chapter: str
    signature: str
    tol: float


class Wrong(Exception):
    """The student's answer is wrong; the message is the diagnosis."""


MUST_BE_NONE = object()  # an expected output that must be None (e.g. db of a layer without bias)


def register(name, chapter, signature, tol, runner):
    """Add exercise `name` (chapter e.g. "04-attention") graded by `runner` at tolerance `tol`."""
    if name in EXERCISES:
        raise ValueError(f"name: exercise {name!r} is already registered (by chapter {EXERCISES[name].chapter})")
    EXERCISES[name] = Exercise(chapter, signature, tol)
    RUNNERS[name] = runner


# ----------------------------------------------------------------------------- comparisons


def fmt_index(name, idx):
    return f"{name}[{', '.join(str(int(i)) for i in idx)}]" if len(idx) else name


def compare(name, got, expected, tol):
    """Compare one output tensor; raise Wrong naming the worst index. Returns the relative error."""
    if got is None:
        raise Wrong(f"{name}: got None (did you forget to return it?)")
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise Wrong(f"{name}: expected a numeric array, got {type(got).__name__}") from None
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise Wrong(f"{name}: expected shape {expected.shape}, got {got.shape}")
    if got.size == 0:
        return 0.0
    # infinities (masked logits) must sit exactly where expected
    inf_mismatch = (np.isinf(expected) | np.isinf(got)) & (got != expected)
    nan_bad = np.isnan(got) & ~np.isnan(expected)
    for bad, what in ((nan_bad, "nan"), (inf_mismatch, None)):
        if bad.any():
            idx = np.unravel_index(int(np.argmax(bad)), bad.shape)
            raise Wrong(
                f"{fmt_index(name, idx)}: expected {expected[idx]:+.6e}, got {what or f'{got[idx]:+.6e}'}; "
                f"{int(bad.sum())} of {bad.size} entries are off"
            )
    fin = np.isfinite(expected)
    a, e = np.where(fin, got, 0.0), np.where(fin, expected, 0.0)
    diff = np.abs(a - e)
    scale = max(1e-8, float((np.abs(a) + np.abs(e)).max()))
    err = float(diff.max()) / scale
    if err >= tol:
        idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
        n_bad = int((diff / scale >= tol).sum())
        d = digits_to_show(expected[idx], got[idx])
        raise Wrong(
            f"{fmt_index(name, idx)}: expected {expected[idx]:+.{d}e}, got {got[idx]:+.{d}e}, "
            f"relative error {err:.1e} (tolerance {tol:.0e}); {n_bad} of {diff.size} entries are off"
        )
    return err


def digits_to_show(e, g):
    """Digits after the point (in %e) so that two different numbers also print differently:
    6 unless they agree further, at most 16."""
    e, g = float(e), float(g)
    if e == g or not (np.isfinite(e) and np.isfinite(g)):
        return 6
    rel = abs(e - g) / max(abs(e), abs(g))
    return int(min(16, max(6, np.ceil(-np.log10(rel)) + 1)))


def compare_all(names, got, expected, tol):
    """Compare a tuple of outputs. Reports every wrong tensor, not just the first."""
    if not isinstance(got, (tuple, list)):
        got = (got,)
    if len(got) != len(names):
        raise Wrong(f"expected {len(names)} outputs ({', '.join(names)}), got {len(got)}")
    errs, msgs = [0.0], []
    for n, g, e in zip(names, got, expected):
        try:
            if e is MUST_BE_NONE:
                if g is not None:
                    raise Wrong(f"{n}: expected None, got {type(g).__name__}{_shape_of(g)}")
                continue
            errs.append(compare(n, g, e, tol))
        except Wrong as w:
            msgs.append(str(w))
    if msgs:
        raise Wrong("\n  ".join(msgs))
    return max(errs)


def _shape_of(x):
    shape = getattr(x, "shape", None)
    return f" of shape {tuple(shape)}" if shape is not None else ""


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def compare_ints(name, got, expected):
    """Exact comparison of integer sequences (token ids): a list (or tuple, 1-D array) of ints."""
    if got is None:
        raise Wrong(f"{name}: got None (did you forget to return it?)")
    if not isinstance(got, (list, tuple, np.ndarray)) or (isinstance(got, np.ndarray) and got.ndim != 1):
        raise Wrong(f"{name}: expected a list of ints, got {type(got).__name__}{_shape_of(got)} {got!r:.60}")
    got = list(got)
    for i, g in enumerate(got):
        if not _is_int(g):
            raise Wrong(f"{name}[{i}]: expected an int, got {type(g).__name__} {g!r} (expected {list(expected)}, got {got})")
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            raise Wrong(f"{name}[{i}]: expected {e}, got {g} (expected {list(expected)}, got {got})")
    if len(got) != len(expected):
        raise Wrong(f"{name}: expected length {len(expected)}, got {len(got)} (expected {list(expected)}, got {got})")
    return 0.0


def compare_exact(name, got, expected, kind):
    """Exact comparison of an integer (ids) or bool (mask) array; kind is "int" or "bool".
    Reports the mismatching positions with their expected and actual values, not a relative error."""
    if got is None:
        raise Wrong(f"{name}: got None (did you forget to return it?)")
    if not isinstance(got, np.ndarray):
        try:
            got = np.asarray(got)
        except (TypeError, ValueError):
            raise Wrong(f"{name}: expected a numeric array, got {type(got).__name__}") from None
    expected = np.asarray(expected)
    if kind == "bool" and got.dtype != np.bool_:
        raise Wrong(f"{name}: expected a bool array (True/False), got dtype {got.dtype}; "
                    f"e.g. np.tril(np.ones((T, T), dtype=bool)), or astype(bool)")
    if kind == "int" and got.dtype.kind not in "iu":
        raise Wrong(f"{name}: expected an integer array (token ids), got dtype {got.dtype}")
    if got.shape != expected.shape:
        raise Wrong(f"{name}: expected shape {expected.shape}, got {got.shape}")
    bad = got != expected
    if bad.any():
        where = np.argwhere(bad)
        show = "; ".join(f"{fmt_index(name, ix)}: expected {expected[tuple(ix)]}, got {got[tuple(ix)]}" for ix in where[:5])
        more = f" (and {len(where) - 5} more)" if len(where) > 5 else ""
        raise Wrong(f"{show}{more}; {len(where)} of {bad.size} entries are off")
    return 0.0


def compare_exact_all(names, got, expected, kind):
    """compare_exact over a tuple of outputs; reports every wrong one."""
    if not isinstance(got, (tuple, list)):
        got = (got,)
    if len(got) != len(names):
        raise Wrong(f"expected {len(names)} outputs ({', '.join(names)}), got {len(got)}")
    msgs = []
    for n, g, e in zip(names, got, expected):
        try:
            compare_exact(n, g, e, kind)
        except Wrong as w:
            msgs.append(str(w))
    if msgs:
        raise Wrong("\n  ".join(msgs))
    return 0.0


# ----------------------------------------------------------------------------- runners


def _grad_case(student, forward, args, kwargs=None, dout_scale=1.0, seed=0):
    """Run forward on float64 `args`, feed the student's backward a random dout and the cache,
    compare with finite differences for every floating-point argument."""
    kwargs = kwargs or {}
    args = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]
    out, cache = forward(*args, **kwargs)
    out = np.asarray(out)
    rng = np.random.default_rng(seed + 99)
    dout = rng.standard_normal(out.shape) if out.ndim else np.float64(dout_scale)

    def f():
        return float(np.sum(np.asarray(forward(*args, **kwargs)[0]) * dout))

    # an argument passed as None (a layer without bias) has no gradient: the student returns None
    expected = [numeric_grad(f, a) if a is not None else MUST_BE_NONE
                for a in args if a is None or (isinstance(a, np.ndarray) and a.dtype.kind == "f")]
    got = student(np.array(dout), cache)
    return got, expected


def grad_exercise(forward, names, cases):
    """A backward pass judged against central finite differences of the package's `forward` (a
    live gradient check), so the verdict never depends on the package's own backward.
    names: the outputs, in the order of forward's float arguments; cases: [(label, args
    builder(rng), kwargs)]."""

    def run(student, tol):
        worst = 0.0
        for i, (label, build, kwargs) in enumerate(cases):
            rng = np.random.default_rng(1000 + i)
            got, expected = _grad_case(student, forward, build(rng), kwargs, dout_scale=0.7, seed=i)
            try:
                worst = max(worst, compare_all(names, got, expected, tol))
            except Wrong as w:
                raise Wrong(f"on case '{label}'\n  {w}") from None
        return f"{len(cases)} cases, max relative error {worst:.1e} vs finite differences"

    return run


def case_runner(cases, detail):
    """cases: [(label, fn(student, tol) -> worst error)]; stops at the first failing case.
    detail names what the answer was compared with, for the "passed" line."""

    def run(student, tol):
        worst = 0.0
        for label, fn in cases:
            try:
                worst = max(worst, fn(student, tol))
            except Wrong as w:
                raise Wrong(f"on case '{label}'\n  {w}") from None
        return f"{len(cases)} cases, max relative error {worst:.1e} vs {detail}"

    return run


# ----------------------------------------------------------------------------- inputs


def randn(rng, *shape):
    return rng.standard_normal(shape)


def ids_with_repeats(rng, shape, V):
    ids = rng.integers(0, V, size=shape)
    ids.reshape(-1)[-1] = ids.reshape(-1)[0]  # at least one repeated id: its gradients must add up
    return ids
