"""The book's autograder: `check(name, student_fn)` tests one exercise and says what is wrong.

    from nanotransformer.exercises import check
    def layernorm_backward(dout, cache):
        ...                                  # your code
    check("layernorm_backward", layernorm_backward)

prints either

    layernorm_backward: passed (3 cases, max relative error 4.1e-11 vs finite differences)

or exactly which output tensor and index is wrong and by how much:

    layernorm_backward: FAILED on case 'x (2, 3, 6)'
      dx[0, 1, 4]: expected -1.093512e+00, got -9.873221e-01, relative error 3.5e-02 (tolerance 1e-06);
      36 of 36 entries are off

How each kind of exercise is judged:
- backward passes: against central finite differences of the package's forward (a live gradient
  check, `gradcheck.numeric_grad`), so the verdict never depends on the package's own backward;
- everything else (Adam step, schedules, BPE merge, top-p, kernels, ...): against a reference
  implementation (the package's own where it has one, else a small one in this file).

Errors are relative to the scale of the whole tensor, `max|a - e| / max(|a| + |e|)`, the same
measure as `gradcheck.rel_error`. `check` never raises on a wrong answer or on the student's
exception: it prints the diagnosis and returns False, so an exercise notebook runs top to bottom.
A stub that raises NotImplementedError prints "not implemented yet".

`EXERCISES` maps each name to its chapter and the signature the student implements;
`exercise_help(name)` prints it.

Does not: time the student's code (chapter 10's kernels are judged for correctness only) or
grade style.
"""
import math
import os
import traceback
from dataclasses import dataclass

import numpy as np

from . import attention as _A
from . import layers as _L
from . import optim as _O
from . import seq2seq as _S
from .gradcheck import numeric_grad

__all__ = ["check", "exercise_help", "EXERCISES"]


@dataclass(frozen=True)
class Exercise:
    chapter: str
    signature: str
    tol: float


class _Wrong(Exception):
    """The student's answer is wrong; the message is the diagnosis."""


# ----------------------------------------------------------------------------- comparisons


def _fmt_index(name, idx):
    return f"{name}[{', '.join(str(int(i)) for i in idx)}]" if len(idx) else name


def _compare(name, got, expected, tol):
    """Compare one output tensor; raise _Wrong naming the worst index. Returns the relative error."""
    if got is None:
        raise _Wrong(f"{name}: got None (did you forget to return it?)")
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise _Wrong(f"{name}: expected a numeric array, got {type(got).__name__}") from None
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise _Wrong(f"{name}: expected shape {expected.shape}, got {got.shape}")
    if got.size == 0:
        return 0.0
    # infinities (masked logits) must sit exactly where expected
    inf_mismatch = (np.isinf(expected) | np.isinf(got)) & (got != expected)
    nan_bad = np.isnan(got) & ~np.isnan(expected)
    for bad, what in ((nan_bad, "nan"), (inf_mismatch, None)):
        if bad.any():
            idx = np.unravel_index(int(np.argmax(bad)), bad.shape)
            raise _Wrong(
                f"{_fmt_index(name, idx)}: expected {expected[idx]:+.6e}, got {what or f'{got[idx]:+.6e}'}; "
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
        raise _Wrong(
            f"{_fmt_index(name, idx)}: expected {expected[idx]:+.6e}, got {got[idx]:+.6e}, "
            f"relative error {err:.1e} (tolerance {tol:.0e}); {n_bad} of {diff.size} entries are off"
        )
    return err


def _compare_all(names, got, expected, tol):
    """Compare a tuple of outputs. Reports every wrong tensor, not just the first."""
    if not isinstance(got, (tuple, list)):
        got = (got,)
    if len(got) != len(names):
        raise _Wrong(f"expected {len(names)} outputs ({', '.join(names)}), got {len(got)}")
    errs, msgs = [0.0], []
    for n, g, e in zip(names, got, expected):
        try:
            errs.append(_compare(n, g, e, tol))
        except _Wrong as w:
            msgs.append(str(w))
    if msgs:
        raise _Wrong("\n  ".join(msgs))
    return max(errs)


def _compare_ints(name, got, expected):
    """Exact comparison of integer sequences (token ids)."""
    got = list(got) if got is not None else None
    if got is None:
        raise _Wrong(f"{name}: got None (did you forget to return it?)")
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            raise _Wrong(f"{name}[{i}]: expected {e}, got {g} (expected {list(expected)}, got {got})")
    if len(got) != len(expected):
        raise _Wrong(f"{name}: expected length {len(expected)}, got {len(got)} (expected {list(expected)}, got {got})")
    return 0.0


# ----------------------------------------------------------------------------- backward exercises


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

    expected = [numeric_grad(f, a) for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    got = student(np.array(dout), cache)
    return got, expected


def _grad_exercise(forward, names, cases):
    """cases: list of (label, args builder(rng), kwargs)."""

    def run(student, tol):
        worst = 0.0
        for i, (label, build, kwargs) in enumerate(cases):
            rng = np.random.default_rng(1000 + i)
            got, expected = _grad_case(student, forward, build(rng), kwargs, dout_scale=0.7, seed=i)
            try:
                worst = max(worst, _compare_all(names, got, expected, tol))
            except _Wrong as w:
                raise _Wrong(f"on case '{label}'\n  {w}") from None
        return f"{len(cases)} cases, max relative error {worst:.1e} vs finite differences"

    return run


def _r(rng, *shape):
    return rng.standard_normal(shape)


def _ids_with_repeats(rng, shape, V):
    ids = rng.integers(0, V, size=shape)
    ids.reshape(-1)[-1] = ids.reshape(-1)[0]  # at least one repeated id: its gradients must add up
    return ids


_RUNNERS = {}
EXERCISES = {}


def _register(name, chapter, signature, tol, runner):
    EXERCISES[name] = Exercise(chapter, signature, tol)
    _RUNNERS[name] = runner


_register(
    "linear_backward", "03-backprop", "linear_backward(dout, cache) -> dx, dw, db;  cache = (x, w, has_bias)", 1e-6,
    _grad_exercise(
        _L.linear_forward,
        ("dx", "dw", "db"),
        [
            ("x (4, 3)", lambda g: (_r(g, 4, 3), _r(g, 3, 5), _r(g, 5)), {}),
            ("x (2, 3, 4)", lambda g: (_r(g, 2, 3, 4), _r(g, 4, 6), _r(g, 6)), {}),
        ],
    ),
)

_register(
    "embedding_backward", "02-embeddings", "embedding_backward(dout, cache) -> dtable;  cache = (ids, V)", 1e-6,
    _grad_exercise(
        _L.embedding_forward,
        ("dtable",),
        [
            ("ids (6,), no repeats", lambda g: (np.array([3, 0, 5, 1, 2, 4]), _r(g, 7, 4)), {}),
            ("ids (2, 5) with repeats", lambda g: (_ids_with_repeats(g, (2, 5), 4), _r(g, 6, 3)), {}),
        ],
    ),
)

_register(
    "softmax_backward", "04-attention", "softmax_backward(dout, cache) -> dx;  cache = (out,), out = softmax(x)", 1e-6,
    _grad_exercise(
        _L.softmax_forward,
        ("dx",),
        [("x (5,)", lambda g: (_r(g, 5),), {}), ("x (2, 3, 7)", lambda g: (3 * _r(g, 2, 3, 7),), {})],
    ),
)

_register(
    "attention_backward", "04-attention",
    "attention_backward(dout, cache) -> dq, dk, dv;  cache = (q, k, v, att, scale)", 1e-6,
    _grad_exercise(
        _A.attention_forward,
        ("dq", "dk", "dv"),
        [
            ("q, k, v (4, 3), no mask", lambda g: (_r(g, 4, 3), _r(g, 4, 3), _r(g, 4, 3)), {}),
            ("(2, 2, 5, 3), causal", lambda g: (_r(g, 2, 2, 5, 3), _r(g, 2, 2, 5, 3), _r(g, 2, 2, 5, 3)), {"causal": True}),
            ("Tq=3, Tk=6, hv=2", lambda g: (_r(g, 2, 3, 4), _r(g, 2, 6, 4), _r(g, 2, 6, 2)), {}),
        ],
    ),
)

_register(
    "layernorm_backward", "05-layernorm-mlp",
    "layernorm_backward(dout, cache) -> dx, dw, db;  cache = (xhat, w, rstd)", 1e-6,
    _grad_exercise(
        _L.layernorm_forward,
        ("dx", "dw", "db"),
        [
            ("x (4, 5)", lambda g: (_r(g, 4, 5), _r(g, 5), _r(g, 5)), {}),
            ("x (2, 3, 6), shifted and scaled", lambda g: (3 * _r(g, 2, 3, 6) + 2, _r(g, 6), _r(g, 6)), {}),
        ],
    ),
)

_register(
    "gelu_backward", "05-layernorm-mlp", "gelu_backward(dout, cache) -> dx;  cache = (x,)", 1e-6,
    _grad_exercise(
        _L.gelu_forward,
        ("dx",),
        [("x (3, 7)", lambda g: (2 * _r(g, 3, 7),), {}), ("x in [-6, 6]", lambda g: (np.linspace(-6, 6, 25),), {})],
    ),
)

_register(
    "mlp_backward", "05-layernorm-mlp",
    "mlp_backward(dout, cache) -> dx, dw_fc, db_fc, dw_proj, db_proj;  cache = (fc_cache, gelu_cache, proj_cache)",
    1e-6,
    _grad_exercise(
        _L.mlp_forward,
        ("dx", "dw_fc", "db_fc", "dw_proj", "db_proj"),
        [("x (2, 3, 4), H = 8", lambda g: (_r(g, 2, 3, 4), _r(g, 4, 8), _r(g, 8), _r(g, 8, 4), _r(g, 4)), {})],
    ),
)


def _ce_targets(rng, shape, V, ignore=True):
    t = rng.integers(0, V, size=shape)
    if ignore:
        t.reshape(-1)[1] = -100
    return t


_register(
    "cross_entropy_backward", "06-cross-entropy",
    "cross_entropy_backward(dout, cache) -> dlogits;  cache = (probs, targets, valid, n_valid)", 1e-6,
    _grad_exercise(
        _L.cross_entropy_forward,
        ("dlogits",),
        [
            ("logits (4, 6)", lambda g: (_r(g, 4, 6), _ce_targets(g, (4,), 6, ignore=False)), {}),
            ("logits (2, 3, 5), one target ignored", lambda g: (2 * _r(g, 2, 3, 5), _ce_targets(g, (2, 3), 5)), {}),
        ],
    ),
)


# ----------------------------------------------------------------------------- reference comparisons


def _case_runner(cases, detail):
    """cases: list of (label, fn(student) -> worst error). Stops at the first failing case."""

    def run(student, tol):
        worst = 0.0
        for label, fn in cases:
            try:
                worst = max(worst, fn(student, tol))
            except _Wrong as w:
                raise _Wrong(f"on case '{label}'\n  {w}") from None
        return f"{len(cases)} cases, max relative error {worst:.1e} vs {detail}"

    return run


def _cross_entropy_forward_case(logits, targets):
    def fn(student, tol):
        expected, _ = _L.cross_entropy_forward(logits, targets)
        return _compare("loss", student(logits.copy(), targets.copy()), expected, tol)

    return fn


_g = np.random.default_rng(6)
_register(
    "cross_entropy_forward", "06-cross-entropy",
    "cross_entropy_forward(logits, targets) -> loss (mean over positions, a float)", 1e-9,
    _case_runner(
        [
            ("logits (4, 6)", _cross_entropy_forward_case(_g.standard_normal((4, 6)), _g.integers(0, 6, 4))),
            ("logits (2, 3, 5)", _cross_entropy_forward_case(_g.standard_normal((2, 3, 5)), _g.integers(0, 5, (2, 3)))),
            ("huge logits, +-1000", _cross_entropy_forward_case(1000 * _g.standard_normal((3, 4)), np.array([0, 1, 2]))),
        ],
        "layers.cross_entropy_forward",
    ),
)


def _adam_case(weight_decay, steps=5):
    def fn(student, tol):
        rng = np.random.default_rng(7)
        shape = (3, 4)
        p_ref = rng.standard_normal(shape)
        m_ref, v_ref = np.zeros(shape), np.zeros(shape)
        p, m, v = p_ref.copy(), m_ref.copy(), v_ref.copy()
        hp = dict(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=weight_decay)
        worst = 0.0
        for t in range(1, steps + 1):
            g = rng.standard_normal(shape) * (1.0 + t)
            _O.adamw_update(p_ref, g.copy(), m_ref, v_ref, t, **hp)
            out = student(p.copy(), g.copy(), m.copy(), v.copy(), t, **hp)
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise _Wrong(f"expected a tuple (p, m, v), got {type(out).__name__}")
            try:
                worst = max(worst, _compare_all(("m", "v", "p"), (out[1], out[2], out[0]), (m_ref, v_ref, p_ref), tol))
            except _Wrong as w:
                raise _Wrong(f"after step t={t}: {w}") from None
            # continue from the reference state, so one wrong step is reported once
            p, m, v = p_ref.copy(), m_ref.copy(), v_ref.copy()
        return worst

    return fn


_register(
    "adam_step", "07-adam",
    "adam_step(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay) -> p, m, v  (one AdamW step, t = 1, 2, ...)",
    1e-9,
    _case_runner(
        [("Adam, weight_decay=0", _adam_case(0.0)), ("AdamW, weight_decay=0.5", _adam_case(0.5))],
        "optim.adamw_update",
    ),
)


def _lr_case(max_lr, warmup, max_steps, min_lr):
    def fn(student, tol):
        steps = np.arange(max_steps + 5)
        expected = np.array([_O.lr_schedule(int(s), max_lr, warmup, max_steps, min_lr) for s in steps])
        got = np.array([student(int(s), max_lr, warmup, max_steps, min_lr) for s in steps], dtype=np.float64)
        return _compare("lr", got, expected, tol)

    return fn


_register(
    "lr_schedule", "07-adam",
    "lr_schedule(step, max_lr, warmup_steps, max_steps, min_lr) -> learning rate (step is 0-based)", 1e-9,
    _case_runner(
        [("warm-up 10, 50 steps, min_lr 0", _lr_case(1.0, 10, 50, 0.0)), ("warm-up 3, 20 steps, min_lr 0.1", _lr_case(3e-4, 3, 20, 3e-5))],
        "optim.lr_schedule (index = step)",
    ),
)


def _sinusoidal_case(n_pos, C):
    def fn(student, tol):
        return _compare("pe", student(n_pos, C), _L.sinusoidal_table(n_pos, C, dtype=np.float64), tol)

    return fn


_register(
    "sinusoidal_table", "02-embeddings", "sinusoidal_table(n_pos, C) -> pe: (n_pos, C)", 1e-5,  # float32 answers pass
    _case_runner([("n_pos=16, C=8", _sinusoidal_case(16, 8)), ("n_pos=50, C=32", _sinusoidal_case(50, 32))], "layers.sinusoidal_table"),
)


def _causal_case(T):
    def fn(student, tol):
        got = student(T)
        expected = np.tril(np.ones((T, T), dtype=bool))
        return _compare("mask", None if got is None else np.asarray(got).astype(np.float64), expected, 0.5)

    return fn


_register(
    "causal_mask", "04-attention", "causal_mask(T) -> (T, T) bool, True where query i may attend to key j", 0.5,
    _case_runner([("T=1", _causal_case(1)), ("T=5", _causal_case(5))], "the lower triangle"),
)


def _numeric_grad_case(label, f, grad, x):
    def fn(student, tol):
        x0 = x.copy()
        xs = x.copy()
        got = student(lambda: f(xs), xs)
        if not np.array_equal(xs, x0):
            idx = np.unravel_index(int(np.argmax(xs != x0)), x0.shape)
            raise _Wrong(f"{_fmt_index('x', idx)} was changed from {float(x0[idx])!r} to {float(xs[idx])!r}: put each element back after nudging it")
        return _compare("grad", got, grad(x0), tol)

    return fn


_xg = np.random.default_rng(3).standard_normal((3, 4))
_register(
    "numeric_grad", "03-backprop", "numeric_grad(f, x, h=1e-5) -> grad of the scalar f() w.r.t. x (perturb x in place)", 1e-7,
    _case_runner(
        [
            ("f = sum(x**2)", _numeric_grad_case("", lambda x: float(np.sum(x**2)), lambda x: 2 * x, np.array([1.0, -2.0, 0.5]))),
            ("f = sum(sin(x) * x), x (3, 4)", _numeric_grad_case("", lambda x: float(np.sum(np.sin(x) * x)), lambda x: np.cos(x) * x + np.sin(x), _xg)),
        ],
        "the analytic gradient",
    ),
)


# --- chapter 00: bigram model and perplexity


def _ref_bigram_probs(ids, V, alpha=1.0):
    counts = np.zeros((V, V))
    np.add.at(counts, (np.asarray(ids[:-1]), np.asarray(ids[1:])), 1.0)
    counts += alpha
    return counts / counts.sum(axis=1, keepdims=True)


def _bigram_case(ids, V):
    def fn(student, tol):
        return _compare("P", student(list(ids), V), _ref_bigram_probs(ids, V), tol)

    return fn


_register(
    "bigram_probs", "00-language-models",
    "bigram_probs(ids, V) -> P: (V, V), P[a, b] = (count(a followed by b) + 1) / (count(a followed by anything) + V)",
    1e-9,
    _case_runner(
        [("ids [0, 1, 1, 2, 0, 1], V=3", _bigram_case([0, 1, 1, 2, 0, 1], 3)),
         ("40 random ids, V=5", _bigram_case(list(np.random.default_rng(0).integers(0, 5, 40)), 5))],
        "add-one bigram counts",
    ),
)


def _ppl_case(p):
    def fn(student, tol):
        got = student(np.array(p, dtype=np.float64))
        return _compare("perplexity", got, math.exp(-np.mean(np.log(p))), tol)

    return fn


_register(
    "perplexity", "00-language-models",
    "perplexity(p_target) -> exp(mean(-log p)), p_target: (N,) the probability the model gave each actual next token",
    1e-9,
    _case_runner(
        [("uniform over 4", _ppl_case([0.25] * 6)), ("mixed", _ppl_case([0.9, 0.5, 0.01, 0.3, 0.7])),
         ("tiny probabilities", _ppl_case([1e-30, 1e-20, 0.5]))],
        "exp(mean(-log p))",
    ),
)


# --- chapter 01: BPE


def _ref_get_stats(ids):
    from .bpe import get_stats  # the package's reference (minbpe's get_stats)

    return get_stats(list(ids))


def _ref_bpe_merge(ids, pair, idx):
    """Replace every non-overlapping occurrence of `pair`, scanning left to right, by `idx`."""
    from .bpe import merge

    return merge(list(ids), tuple(pair), idx)


def _merge_case(ids, pair, idx):
    def fn(student, tol):
        got = student(list(ids), tuple(pair), idx)
        return _compare_ints("ids", got, _ref_bpe_merge(ids, pair, idx))

    return fn


_register(
    "bpe_merge", "01-tokenization", "bpe_merge(ids, pair, idx) -> new list with every (non-overlapping) pair replaced by idx", 0.0,
    _case_runner(
        [
            ("one occurrence", _merge_case([5, 6, 6, 7, 9, 1], (6, 7), 99)),
            ("pair at both ends", _merge_case([1, 2, 3, 1, 2], (1, 2), 256)),
            ("overlapping run 'aaaaa'", _merge_case([97, 97, 97, 97, 97], (97, 97), 256)),
            ("no occurrence", _merge_case([1, 2, 3], (3, 1), 300)),
            ("empty and single", _merge_case([4], (4, 4), 300)),
        ],
        "the reference merge",
    ),
)


def _stats_case(ids):
    def fn(student, tol):
        got = student(list(ids))
        expected = _ref_get_stats(ids)
        if not isinstance(got, dict):
            raise _Wrong(f"counts: expected a dict {{pair: count}}, got {type(got).__name__}")
        for pair, n in expected.items():
            if got.get(pair) != n:
                raise _Wrong(f"counts[{pair}]: expected {n}, got {got.get(pair)}")
        extra = set(got) - set(expected)
        if extra:
            pair = sorted(extra)[0]
            raise _Wrong(f"counts[{pair}]: expected no entry (the pair never occurs), got {got[pair]}")
        return 0.0

    return fn


_register(
    "get_stats", "01-tokenization", "get_stats(ids) -> dict {(a, b): how often b directly follows a}", 0.0,
    _case_runner(
        [("short", _stats_case([1, 2, 3, 1, 2])), ("run 'aaaa'", _stats_case([97, 97, 97, 97])), ("single id", _stats_case([7]))],
        "the reference counts",
    ),
)


# --- chapter 08: assembling GPT


def _num_params_case(V, T, L, C):
    def fn(student, tol):
        from .model import GPT, GPTConfig  # imported lazily: only this exercise needs the model

        cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=1, d_model=C)
        expected = sum(math.prod(shape) for _, shape in GPT.param_specs(cfg))
        got = student(V, T, L, C)
        if got != expected:
            raise _Wrong(f"n_params: expected {expected:,}, got {got!r}")
        return 0.0

    return fn


_register(
    "gpt_num_params", "08-gpt",
    "gpt_num_params(vocab_size, block_size, n_layer, d_model) -> number of parameters of GPT-2's layout, LM head tied",
    0.0,
    _case_runner(
        [("V=65, T=64, L=4, C=128", _num_params_case(65, 64, 4, 128)), ("V=10, T=8, L=1, C=4", _num_params_case(10, 8, 1, 4)),
         ("GPT-2 small: V=50257, T=1024, L=12, C=768", _num_params_case(50257, 1024, 12, 768))],
        "model.GPT.param_specs",
    ),
)


def _tied_case(B, T, C, V):
    def fn(student, tol):
        rng = np.random.default_rng(13)
        ids = _ids_with_repeats(rng, (B, T), V)
        dx_emb, xf, dlogits = rng.standard_normal((B, T, C)), rng.standard_normal((B, T, C)), rng.standard_normal((B, T, V))
        _, emb_cache = _L.embedding_forward(ids, np.zeros((V, C)))
        _, head_cache = _L.linear_forward(xf, np.zeros((C, V)))
        expected = _L.embedding_backward(dx_emb, emb_cache) + _L.linear_backward(dlogits, head_cache)[1].T
        return _compare("dwte", student(ids.copy(), dx_emb.copy(), xf.copy(), dlogits.copy()), expected, tol)

    return fn


_register(
    "tied_wte_grad", "08-gpt",
    "tied_wte_grad(ids, dx_emb, xf, dlogits) -> dwte: (V, C), wte used by x = wte[ids] and by logits = xf @ wte.T",
    1e-9,
    _case_runner([("B=2, T=3, C=4, V=5", _tied_case(2, 3, 4, 5)), ("B=3, T=7, C=6, V=11", _tied_case(3, 7, 6, 11))],
                 "embedding_backward + linear_backward"),
)


# --- chapter 09: sampling filters


def _filtered_logits(logits, **kw):
    """generate.filter_probs (the sampler's own filter) as filtered logits: -inf where removed."""
    from .generate import filter_probs  # imported lazily: it pulls in the model

    z = np.asarray(logits, dtype=np.float64)
    probs = filter_probs(z.reshape(-1, z.shape[-1]), 1.0, **kw).reshape(z.shape)
    return np.where(probs > 0, z, -np.inf)


def _ref_top_k(logits, k):
    """Keep the k largest logits of each row (ties with the k-th are kept), the rest -> -inf."""
    return _filtered_logits(logits, top_k=k)


def _ref_top_p(logits, p):
    """Nucleus filter: keep a token when the probability of the tokens ranked above it is < p
    (the smallest most-likely set reaching p; the top token is always kept). Rest -> -inf."""
    return _filtered_logits(logits, top_p=p)


def _filter_case(ref, logits, param):
    def fn(student, tol):
        return _compare("logits", student(logits.copy(), param), ref(logits, param), tol)

    return fn


_lg = np.random.default_rng(9)
_register(
    "top_k_filter", "09-generation", "top_k_filter(logits, k) -> logits with all but the k largest of each row set to -inf", 1e-12,
    _case_runner(
        [("V=10, k=3", _filter_case(_ref_top_k, _lg.standard_normal(10), 3)),
         ("(2, 8), k=1", _filter_case(_ref_top_k, _lg.standard_normal((2, 8)), 1)),
         ("(2, 6), k=6", _filter_case(_ref_top_k, _lg.standard_normal((2, 6)), 6))],
        "the reference filter",
    ),
)
_register(
    "top_p_filter", "09-generation",
    "top_p_filter(logits, p) -> logits with -inf outside the smallest most-likely set whose probability reaches p",
    1e-12,
    _case_runner(
        [("V=6, p=0.5", _filter_case(_ref_top_p, np.log(np.array([0.05, 0.3, 0.1, 0.35, 0.15, 0.05])), 0.5)),
         ("V=6, p=0.9", _filter_case(_ref_top_p, np.log(np.array([0.05, 0.3, 0.1, 0.35, 0.15, 0.05])), 0.9)),
         ("(2, 10), p=0.75", _filter_case(_ref_top_p, 2 * _lg.standard_normal((2, 10)), 0.75)),
         ("p=0.01 keeps only the argmax", _filter_case(_ref_top_p, _lg.standard_normal((3, 7)), 0.01))],
        "the reference filter",
    ),
)


# --- chapter 10: kernels


def _matmul_case(shape_a, shape_b):
    def fn(student, tol):
        rng = np.random.default_rng(11)
        a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
        return _compare("out", student(a.copy(), b.copy()), a @ b, tol)

    return fn


_register(
    "matmul_tiled", "10-making-it-fast", "matmul_tiled(a, b) -> a @ b for 2-D float64 a (M, K), b (K, N), computed tile by tile",
    1e-10,
    _case_runner(
        [("(4, 4) @ (4, 4)", _matmul_case((4, 4), (4, 4))), ("(37, 19) @ (19, 23), ragged tiles", _matmul_case((37, 19), (19, 23))),
         ("(1, 70) @ (70, 3)", _matmul_case((1, 70), (70, 3)))],
        "a @ b",
    ),
)


def _fused_attention_case(Tq, Tk, hs, causal):
    def fn(student, tol):
        rng = np.random.default_rng(12)
        q, k, v = rng.standard_normal((Tq, hs)), rng.standard_normal((Tk, hs)), rng.standard_normal((Tk, hs))
        expected, _ = _A.attention_forward(q, k, v, causal=causal)
        return _compare("out", student(q.copy(), k.copy(), v.copy(), causal), expected, tol)

    return fn


_register(
    "fused_attention", "10-making-it-fast",
    "fused_attention(q, k, v, causal) -> out: (Tq, hs), one pass over the keys with an online softmax", 1e-10,
    _case_runner(
        [("T=6, no mask", _fused_attention_case(6, 6, 4, False)), ("T=9, causal", _fused_attention_case(9, 9, 3, True)),
         ("Tq=2, Tk=7, causal (decoding)", _fused_attention_case(2, 7, 5, True))],
        "attention.attention_forward",
    ),
)


# --- chapter 15: loading GPT-2


def _bytes_to_unicode_case(student, tol):
    from .hf import bytes_to_unicode  # lazy: hf imports the model and the tokenizer

    expected, got = bytes_to_unicode(), student()
    if not isinstance(got, dict):
        raise _Wrong(f"mapping: expected a dict {{byte: character}}, got {type(got).__name__}")

    def show(c):
        return f"{c!r} (U+{ord(c):04X})" if isinstance(c, str) and len(c) == 1 else repr(c)

    for b in range(256):
        if got.get(b) != expected[b]:
            g = "no entry" if b not in got else show(got[b])
            raise _Wrong(f"mapping[{b}] (byte {bytes([b])!r}): expected {show(expected[b])}, got {g}")
    extra = sorted(set(got) - set(expected), key=repr)
    if extra:
        raise _Wrong(f"mapping: expected exactly the keys 0..255, got extra keys {extra[:5]}")
    return 0.0


def _our_name_case(keys):
    def fn(student, tol):
        from .hf import our_name

        for key in keys:
            got, expected = student(key), our_name(key)
            if got != expected:
                why = " (not one of our parameters: skip it)" if expected is None else ""
                raise _Wrong(f"our_name({key!r}): expected {expected!r}{why}, got {got!r}")
        return 0.0

    return fn


_register(
    "bytes_to_unicode", "15-loading-gpt2",
    "bytes_to_unicode() -> dict {byte 0..255: printable character}, GPT-2's vocab.json alphabet", 0.0,
    _case_runner([("all 256 bytes", _bytes_to_unicode_case)], "hf.bytes_to_unicode"),
)
_register(
    "our_name", "15-loading-gpt2",
    "our_name(key) -> our parameter name for a GPT-2 tensor name, or None for a tensor to skip", 0.0,
    _case_runner(
        [("embeddings", _our_name_case(["transformer.wte.weight", "wpe.weight"])),
         ("block weights and biases", _our_name_case(
             ["transformer.h.0.ln_1.weight", "h.11.attn.c_attn.bias", "transformer.h.3.mlp.c_proj.weight",
              "transformer.h.7.ln_2.bias", "h.2.attn.c_proj.weight", "transformer.ln_f.bias"])),
         ("buffers and the tied head", _our_name_case(["h.0.attn.bias", "transformer.h.5.attn.masked_bias",
                                                       "lm_head.weight"]))],
        "hf.our_name",
    ),
)


# --- chapters 11-14 (beyond GPT): paste into nanotransformer/exercises.py above "the checker" section.
# Needs at the top of exercises.py:  from . import seq2seq as _S


# --- chapter 11: fine-tuning


def _pool_last_case(B, T, C, lengths):
    def fn(student, tol):
        h = np.random.default_rng(21).standard_normal((B, T, C))
        lengths_ = np.array(lengths)
        expected = h[np.arange(B), lengths_ - 1]
        return _compare("z", student(h.copy(), lengths_.copy()), expected, tol)

    return fn


_register(
    "pool_last", "11-finetuning",
    "pool_last(h, lengths) -> z: (B, C), z[b] = h[b, lengths[b] - 1] (the last real token of each right-padded row)", 1e-12,
    _case_runner(
        [("no padding", _pool_last_case(2, 4, 3, [4, 4])), ("padded rows", _pool_last_case(3, 5, 2, [5, 2, 1]))],
        "the last real position",
    ),
)


def _logreg_loss(X, y, w, b, l2):
    z = X @ w + b
    return float(np.mean(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)) + 0.5 * l2 * (w @ w))


def _logreg_case(N, F, l2):
    def fn(student, tol):
        rng = np.random.default_rng(22)
        X, y, w, b = rng.standard_normal((N, F)), (rng.random(N) < 0.5).astype(np.float64), rng.standard_normal(F), 0.3
        wc, bb = w.copy(), np.array([b])
        ew = numeric_grad(lambda: _logreg_loss(X, y, wc, b, l2), wc)
        eb = numeric_grad(lambda: _logreg_loss(X, y, w, bb[0], l2), bb)[0]
        got = student(X.copy(), y.copy(), w.copy(), b, l2)
        return _compare_all(("dw", "db"), got, (ew, eb), tol)

    return fn


_register(
    "logistic_regression_grad", "11-finetuning",
    "logistic_regression_grad(X, y, w, b, l2) -> dw: (F,), db: float, for mean binary cross-entropy of sigmoid(X w + b) + l2/2 |w|^2",
    1e-6,
    _case_runner([("N=8, F=3, l2=0", _logreg_case(8, 3, 0.0)), ("N=20, F=5, l2=0.1", _logreg_case(20, 5, 0.1))], "finite differences"),
)


# --- chapter 12: BERT


def _allowed_case(ids, pad_id, causal):
    def fn(student, tol):
        T = ids.shape[1]
        keep = (ids != pad_id)[:, None, :]  # (B, 1, T): keys that are not padding
        expected = np.broadcast_to(keep, (ids.shape[0], T, T))
        if causal:
            expected = expected & np.tril(np.ones((T, T), dtype=bool))
        got = student(ids.copy(), pad_id, causal)
        return _compare("allowed", None if got is None else np.asarray(got).astype(np.float64), expected, 0.5)

    return fn


_ids_pad = np.array([[1, 5, 6, 7], [1, 4, 0, 0]])
_register(
    "attention_allowed", "12-bert",
    "attention_allowed(ids, pad_id, causal) -> (B, T, T) bool, True where query i may attend to key j", 0.5,
    _case_runner(
        [("bidirectional, padding", _allowed_case(_ids_pad, 0, False)), ("causal, padding", _allowed_case(_ids_pad, 0, True)),
         ("bidirectional, no padding", _allowed_case(np.array([[3, 4, 5]]), 0, False))],
        "the reference mask",
    ),
)


def _ref_bert_corrupt(ids, u_choose, u_kind, random_ids, mask_id, n_special, mask_prob):
    chosen = (ids >= n_special) & (u_choose < mask_prob)
    out = np.where(chosen & (u_kind < 0.8), mask_id, np.where(chosen & (u_kind < 0.9), random_ids, ids))
    return out, np.where(chosen, ids, -100)


def _corrupt_case(B, T, V, mask_prob):
    def fn(student, tol):
        rng = np.random.default_rng(23)
        ids = rng.integers(3, V, (B, T))
        ids[:, 0] = 1
        ids[-1, -2:] = 0
        args = (ids, rng.random((B, T)), rng.random((B, T)), rng.integers(3, V, (B, T)), 2, 3, mask_prob)
        got = student(*(a.copy() if isinstance(a, np.ndarray) else a for a in args))
        expected = _ref_bert_corrupt(*args)
        return _compare_all(("corrupted", "targets"), got, tuple(e.astype(np.float64) for e in expected), 0.5)

    return fn


_register(
    "bert_corrupt", "12-bert",
    "bert_corrupt(ids, u_choose, u_kind, random_ids, mask_id, n_special, mask_prob) -> corrupted, targets (-100 where not chosen)",
    0.5,
    _case_runner([("(2, 10), mask_prob 0.5", _corrupt_case(2, 10, 20, 0.5)), ("(4, 16), mask_prob 0.15", _corrupt_case(4, 16, 30, 0.15))],
                 "BERT's 80/10/10 rule"),
)


# --- chapter 13: encoder-decoder


def _ls_targets(rng, shape, V):
    t = rng.integers(0, V, size=shape)
    t.reshape(-1)[1] = -100
    return t


_register(
    "label_smoothing_backward", "13-encoder-decoder",
    "label_smoothing_backward(dout, cache) -> dlogits;  cache = (probs, targets, valid, n_valid, eps)", 1e-6,
    _grad_exercise(
        _S.label_smoothing_cross_entropy_forward,
        ("dlogits",),
        [
            ("logits (4, 6), eps 0.1", lambda g: (_r(g, 4, 6), g.integers(0, 6, 4), 0.1), {}),
            ("logits (2, 3, 5), eps 0.3, one target ignored", lambda g: (2 * _r(g, 2, 3, 5), _ls_targets(g, (2, 3), 5), 0.3), {}),
        ],
    ),
)


def _ref_teacher_forcing(ys, bos_id, eos_id, pad_id):
    T = max(len(y) for y in ys) + 1
    tgt_in = np.full((len(ys), T), pad_id)
    targets = np.full((len(ys), T), -100)
    for b, y in enumerate(ys):
        tgt_in[b, : len(y) + 1] = [bos_id] + list(y)
        targets[b, : len(y) + 1] = list(y) + [eos_id]
    return tgt_in, targets


def _tf_case(ys):
    def fn(student, tol):
        got = student([list(y) for y in ys], 1, 2, 0)
        expected = _ref_teacher_forcing(ys, 1, 2, 0)
        return _compare_all(("tgt_in", "targets"), got, tuple(e.astype(np.float64) for e in expected), 0.5)

    return fn


_register(
    "teacher_forcing", "13-encoder-decoder",
    "teacher_forcing(ys, bos_id, eos_id, pad_id) -> tgt_in = [BOS] + y padded with pad_id, targets = y + [EOS] padded with -100",
    0.5,
    _case_runner([("one sequence", _tf_case([[5, 6, 7]])), ("ragged batch", _tf_case([[5], [6, 7, 8, 9], []]))], "the reference batch"),
)


# --- chapter 14: metrics


def _ref_modified_precision(hyp, refs, n):
    from collections import Counter

    grams = lambda s: Counter(tuple(s[i : i + n]) for i in range(len(s) - n + 1))  # noqa: E731
    h, clip = grams(hyp), Counter()
    for r in refs:
        clip |= grams(r)
    return sum(min(c, clip[g]) for g, c in h.items()), max(0, len(hyp) - n + 1)


def _mp_case(hyp, refs, n):
    def fn(student, tol):
        got = student(hyp.split(), [r.split() for r in refs], n)
        exp = _ref_modified_precision(hyp.split(), [r.split() for r in refs], n)
        return _compare_all(("matches", "total"), got, exp, 1e-12)

    return fn


_register(
    "modified_precision", "14-metrics",
    "modified_precision(hyp, refs, n) -> (clipped n-gram matches, number of hypothesis n-grams); hyp, refs: token lists", 1e-12,
    _case_runner(
        [("unigrams, 'the the the'", _mp_case("the the the the", ["the cat", "a the"], 1)),
         ("bigrams, two references", _mp_case("the cat sat on the mat", ["the cat is on the mat", "there is a cat on the mat"], 2)),
         ("hypothesis shorter than n", _mp_case("a b", ["a b c"], 3))],
        "clipped counts",
    ),
)


def _bp_case(c, r):
    def fn(student, tol):
        expected = 1.0 if c >= r else (math.exp(1 - r / c) if c > 0 else 0.0)
        return _compare("bp", student(c, r), expected, tol)

    return fn


_register(
    "brevity_penalty", "14-metrics", "brevity_penalty(c, r) -> 1 if c >= r else exp(1 - r / c) (0 when c == 0)", 1e-12,
    _case_runner([("c > r", _bp_case(12, 10)), ("c == r", _bp_case(5, 5)), ("c < r", _bp_case(7, 10)), ("c = 0", _bp_case(0, 4))],
                 "the brevity penalty"),
)


def _lcs_case(a, b):
    def fn(student, tol):
        prev = [0] * (len(b) + 1)
        for x in a:
            cur = [0]
            for j, y in enumerate(b):
                cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
            prev = cur
        return _compare("lcs", student(list(a), list(b)), prev[-1], 1e-12)

    return fn


_register(
    "lcs_length", "14-metrics", "lcs_length(a, b) -> length of the longest common subsequence (not necessarily contiguous)", 1e-12,
    _case_runner(
        [("'abcbdab' vs 'bdcaba'", _lcs_case("abcbdab", "bdcaba")), ("gaps", _lcs_case("axbyc", "abc")),
         ("empty", _lcs_case("", "abc")), ("equal", _lcs_case("abab", "abab"))],
        "dynamic programming",
    ),
)


# ----------------------------------------------------------------------------- the checker


def exercise_help(name):
    """Print the chapter and signature of exercise `name` (or list all when name is None)."""
    names = sorted(EXERCISES, key=lambda n: (EXERCISES[n].chapter, n)) if name is None else [name]
    for n in names:
        ex = EXERCISES[n]
        print(f"{n:>24}  [{ex.chapter}]  {ex.signature}")


def check(name, student_fn):
    """Grade `student_fn` for exercise `name`. Prints "passed" or a diagnosis; returns True/False.

    Never raises for a wrong or crashing answer; only an unknown `name` is an error.
    """
    if name not in EXERCISES:
        raise ValueError(f"name: expected one of {sorted(EXERCISES)}, got {name!r}")
    ex = EXERCISES[name]
    try:
        detail = _RUNNERS[name](student_fn, ex.tol)
    except NotImplementedError:
        print(f"{name}: not implemented yet -- fill in the stub: {ex.signature}")
        return False
    except _Wrong as w:
        print(f"{name}: FAILED {w}")
        return False
    except Exception as e:  # the student's code crashed: show where, in their code
        frames = traceback.extract_tb(e.__traceback__)
        here = os.path.dirname(os.path.abspath(__file__))
        where = next((f for f in reversed(frames) if not os.path.abspath(f.filename).startswith(here)), frames[-1])
        print(f"{name}: your function raised {type(e).__name__}: {e}\n  at {where.filename}:{where.lineno}: {where.line}")
        return False
    print(f"{name}: passed ({detail})")
    return True
