"""Gradient checking: compare a hand-written backward with central finite differences.

    result = gradcheck(layernorm_forward, layernorm_backward, x, w, b)
    print(result)            # one line per input: max relative error and the worst index
    assert result.ok         # every input below the tolerance (1e-6)

How it works. A forward returns `(out, cache)`. We pick a random upstream gradient `dout`
(seeded) and look at the scalar f(args) = sum(out * dout), whose gradient with respect to any
input is exactly what the backward returns for that `dout`. For each floating-point input we
nudge one element at a time and take the central difference

    df/dx_i ~ (f(x_i + h) - f(x_i - h)) / 2h          (error O(h^2), h = 1e-5)

then compare with the analytic gradient using the relative error of the whole tensor

    rel = max_i |a_i - n_i| / max(1e-8, max_i (|a_i| + |n_i|))

(normalising by the tensor's scale rather than element by element, because entries whose true
gradient is ~0 carry ~1e-10 of finite-difference noise and would otherwise dominate).

Inputs are copied to float64 first: in float32 the difference quotient is mostly rounding noise.
The backward must return one gradient per floating-point array argument, in argument order
(a single gradient may be returned bare); an optional array passed as None (a missing bias)
gets a None gradient; integer ids, bool masks and scalars get none.

Does not: check gradients of outputs with respect to integer inputs, or sample coordinates of
huge tensors unless asked (`max_coords`).
"""
import inspect
from dataclasses import dataclass, field

import numpy as np


@dataclass
class InputReport:
    name: str
    rel_error: float
    worst_index: tuple
    analytic: float
    numeric: float


@dataclass
class GradcheckResult:
    reports: list = field(default_factory=list)
    tol: float = 1e-6

    @property
    def max_rel_error(self):
        return max((r.rel_error for r in self.reports), default=0.0)

    @property
    def ok(self):
        return self.max_rel_error < self.tol

    @property
    def worst(self):
        return max(self.reports, key=lambda r: r.rel_error)

    def __str__(self):
        lines = []
        for r in self.reports:
            flag = "ok  " if r.rel_error < self.tol else "FAIL"
            lines.append(
                f"{flag} {r.name:>12}: rel error {r.rel_error:.2e} at index {r.worst_index} "
                f"(analytic {r.analytic:+.6e}, numeric {r.numeric:+.6e})"
            )
        return "\n".join(lines)


def _is_float_array(a):
    return isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating)


def _arg_names(fn, n):
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(n)]


def rel_error(a, n):
    """Relative error of tensor a against tensor n (see module docstring) and the worst index."""
    a, n = np.asarray(a, np.float64), np.asarray(n, np.float64)
    if a.shape != n.shape:
        raise ValueError(f"gradient: expected shape {n.shape}, got {a.shape}")
    if a.size == 0:
        return 0.0, ()
    diff = np.abs(a - n)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    scale = max(1e-8, float((np.abs(a) + np.abs(n)).max()))
    return float(diff[idx]) / scale, tuple(int(i) for i in idx)


def numeric_grad(f, x, h=1e-5, coords=None):
    """Central-difference gradient of scalar f() with respect to array x (perturbed in place).

    coords: optional list of flat indices to evaluate (others are left 0).
    """
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size) if coords is None else coords:
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def gradcheck(forward, backward, *args, h=1e-5, tol=1e-6, seed=0, max_coords=None, **kwargs):
    """Check backward(dout, cache) against finite differences of forward(*args, **kwargs).

    Every floating-point ndarray in `args` is checked (keyword arguments are held fixed).
    max_coords: if set, check only this many randomly chosen elements per input (for big models).
    Returns a GradcheckResult (`.ok`, `.max_rel_error`, `.worst`, printable).
    """
    args = [a.astype(np.float64) if _is_float_array(a) else a for a in args]
    out, cache = forward(*args, **kwargs)
    rng = np.random.default_rng(seed)
    out = np.asarray(out)
    dout = rng.standard_normal(out.shape) if out.ndim else np.float64(1.0)
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    # one gradient slot per floating-point array argument, and per optional argument passed as None
    slots = [i for i, a in enumerate(args) if _is_float_array(a) or a is None]
    if len(grads) != len(slots):
        raise ValueError(
            f"backward: expected {len(slots)} gradients (one per floating-point argument), got {len(grads)}"
        )
    names = _arg_names(forward, len(args))

    def f():
        o, _ = forward(*args, **kwargs)
        return float(np.sum(np.asarray(o) * dout))

    result = GradcheckResult(tol=tol)
    for i, g in zip(slots, grads):
        x = args[i]
        if x is None:
            continue
        ana = np.zeros(x.shape) if g is None else np.asarray(g, np.float64)
        if ana.shape != x.shape:
            raise ValueError(f"backward: gradient of {names[i]} expected shape {x.shape}, got {ana.shape}")
        coords = np.arange(x.size)
        if max_coords is not None and x.size > max_coords:
            coords = rng.choice(x.size, size=max_coords, replace=False)
        if coords.size == 0:
            result.reports.append(InputReport(names[i], 0.0, (), 0.0, 0.0))
            continue
        num = numeric_grad(f, x, h, coords).reshape(-1)[coords]
        ana = ana.reshape(-1)[coords]
        err, (j,) = rel_error(ana, num)
        idx = tuple(int(t) for t in np.unravel_index(int(coords[j]), x.shape))
        result.reports.append(InputReport(names[i], err, idx, float(ana[j]), float(num[j])))
    return result


def model_gradcheck(model, loss, coords_per_tensor=20, seed=0, h=1e-5):
    """Whole-model check: {parameter name: relative error} over sampled coordinates of *every*
    named parameter tensor of a `params.ParamStore` model (so no tensor kind goes unchecked).

    loss(): runs the model's forward on fixed inputs (the same dropout mask every call) and
    returns the scalar loss; the model's `backward()` must then give the analytic gradient.
    Build the model in float64.
    """
    loss()
    model.backward()
    analytic = model.views(model.grads.copy())
    rng = np.random.default_rng(seed)
    errors = {}
    for name, view in model.p.items():
        coords = rng.choice(view.size, size=min(coords_per_tensor, view.size), replace=False)
        num = numeric_grad(loss, view, h, coords).reshape(-1)[coords]
        errors[name], _ = rel_error(analytic[name].reshape(-1)[coords], num)
    return errors
