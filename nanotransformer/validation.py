"""Argument checks shared by every public function.

Every check raises one `ValueError` that names the argument, says what was expected and what was
got, e.g. ``ValueError("w: expected shape (8, 24), got (8, 12)")``. Kernels never validate; their
public wrappers and the NumPy layers call these helpers first.

Does not: coerce or copy anything. A check either passes silently or raises.
"""
import math
from dataclasses import asdict, fields

import numpy as np


def check_array(name, x, ndim=None, min_ndim=None, shape=None, floating=False):
    """Check that `x` is an ndarray with the given rank / shape (None in `shape` = any size)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if floating and x.dtype.kind != "f":  # = np.issubdtype(x.dtype, np.floating): 0.1 us, not 1.4
        raise ValueError(f"{name}: expected a floating-point array, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {x.shape}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got shape {x.shape}")
    if shape is not None and not _fits(x.shape, shape):
        dims = ["*" if e is None else str(e) for e in shape]
        want = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
        raise ValueError(f"{name}: expected shape {want}, got {x.shape}")


def _fits(got, want):
    """got (a shape) matches want (sizes, None = any size). A plain loop: the checks run on every
    call of a decoding step (~600 per token), where `any(<generator>)` costs three times as much
    (1.4 us, not 0.46)."""
    if len(got) != len(want):
        return False
    for e, s in zip(want, got):
        if e is not None and e != s:
            return False
    return True


def check_number(name, value, above=None, *, at_least=None):
    """A finite real number (int or float, not bool) greater than `above`, or at least `at_least`
    (exactly one of the two), e.g. RoPE's theta > 1, a layer norm's eps >= 0."""
    if (above is None) == (at_least is None):
        raise TypeError("check_number: expected exactly one of above, at_least")
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    # a float (np.float64 too) by math.isfinite, not np.isfinite (1 us on a scalar: this runs per
    # call of a decoding step); an integer is finite; np.float32, np.longdouble by np.isfinite
    finite = math.isfinite if isinstance(value, float) else np.isfinite
    ok = ok and (isinstance(value, (int, np.integer)) or finite(value))
    ok = ok and (value > above if above is not None else value >= at_least)
    if not ok:
        bound = f"> {above:g}" if above is not None else f">= {at_least:g}"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")


def check_same_dtype(**arrays):
    """All non-None arrays share one floating dtype (mixing float32 and float64 is a bug, not a cast).
    Every array is checked first, then the dtypes compared to the first one's. Two plain loops and
    no list: this runs for every op of a decoding step (about 300 calls a GPT-2 token)."""
    for k, v in arrays.items():
        if v is not None and not (isinstance(v, np.ndarray) and v.dtype.kind == "f"):
            check_array(k, v, floating=True)  # raises
    first_name = first = None
    for k, v in arrays.items():
        if v is None:
            continue
        if first is None:
            first_name, first = k, v.dtype
        elif v.dtype != first:
            raise ValueError(f"{k}: expected dtype {first} (the dtype of {first_name}), got {v.dtype}")


def check_ids(name, ids, upper, allow=None):
    """Integer array with every value in [0, upper) (values equal to `allow` are also accepted)."""
    if not isinstance(ids, np.ndarray):
        raise ValueError(f"{name}: expected a numpy integer array, got {type(ids).__name__}")
    if ids.dtype.kind not in "iu":  # = not np.issubdtype(ids.dtype, np.integer): 0.1 us, not 1.4
        raise ValueError(f"{name}: expected an integer array, got dtype {ids.dtype}")
    if ids.size == 0:
        return
    vals = ids if allow is None else ids[ids != allow]
    if vals.size and (vals.min() < 0 or vals.max() >= upper):
        bad = vals[(vals < 0) | (vals >= upper)][0]
        extra = f" or {allow}" if allow is not None else ""
        raise ValueError(f"{name}: expected ids in [0, {upper}){extra}, got {int(bad)}")


def id_list(name, ids):
    """Token ids (an array or an iterable) -> a list of ints, for a decoder; a float or bool entry
    is an error (65.0 must not quietly decode as 65, nor True as 1). Range is the caller's check."""
    if isinstance(ids, np.ndarray):
        if ids.size and ids.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integer token ids, got an array of dtype {ids.dtype}")
        return ids.tolist()
    ids = list(ids)
    for pos, i in enumerate(ids):
        if type(i) is not int and not isinstance(i, np.integer):
            raise ValueError(f"{name}: expected integer token ids, got {i!r} at position {pos}")
    return ids


def check_model_config(cfg, int_fields):
    """Shared checks of a model config dataclass (GPT, BERT, encoder-decoder): every field in
    `int_fields` a positive integer, n_head dividing d_model, dropout in [0, 1)."""
    for name in int_fields:
        val = getattr(cfg, name)
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val!r}")
    if cfg.d_model % cfg.n_head:
        raise ValueError(f"n_head: expected a divisor of d_model={cfg.d_model}, got {cfg.n_head}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout: expected a probability in [0, 1), got {cfg.dropout}")


class ConfigDict:
    """Mixin of the model config dataclasses (GPT, BERT, encoder-decoder): the dict a checkpoint
    stores, and back, rejecting unknown keys by name."""

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """Build from a dict (e.g. a checkpoint's JSON), rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}, expected some of {sorted(known)}")
        return cls(**d)
