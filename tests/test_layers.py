"""Gradient checks (float64, rel error < 1e-6) and edge cases for every layer in layers.py and attention.py."""
import math

import numpy as np
import pytest

from nanotransformer import attention as A
from nanotransformer import layers as L
from nanotransformer.gradcheck import gradcheck

TOL = 1e-6


def _randn(rng, *shape):
    return rng.standard_normal(shape)


def _padding_mask(rng, B, Tk, full_row=False):
    m = rng.random((B, Tk)) < 0.3
    m[:, 0] = False  # keep at least one key per row unless asked otherwise
    if full_row:
        m[0, :] = True
    return m


# Each case: name -> (forward, backward, args builder(rng, T), kwargs builder(rng, T)).
# T is swept over 1 (a single position) and a non-square odd length.
def _cases():
    B, C, NH = 2, 8, 2

    def linear(rng, T):
        return (_randn(rng, B, T, C), _randn(rng, C, 5), _randn(rng, 5)), {}

    def linear_nobias(rng, T):
        return (_randn(rng, T, 3), _randn(rng, 3, 7), None), {}

    def embedding(rng, T):
        ids = rng.integers(0, 4, size=(B, T))
        ids[0, 0] = ids[-1, -1]  # repeated ids must accumulate
        return (ids, _randn(rng, 6, C)), {}

    def positional_learned(rng, T):
        return (_randn(rng, B, T, C), _randn(rng, T + 3, C)), {"offset": 2}

    def softmax(rng, T):
        return (_randn(rng, B, T, 7),), {}

    def layernorm(rng, T):
        return (_randn(rng, B, T, C), _randn(rng, C), _randn(rng, C)), {}

    def gelu(rng, T):
        return (_randn(rng, B, T, C) * 2,), {}

    def mlp(rng, T):
        return (_randn(rng, B, T, C), _randn(rng, C, 4 * C), _randn(rng, 4 * C), _randn(rng, 4 * C, C), _randn(rng, C)), {}

    def residual(rng, T):
        return (_randn(rng, B, T, C), _randn(rng, B, T, C)), {}

    def dropout(rng, T):
        return (_randn(rng, B, T, C), 0.3), {}

    def cross_entropy(rng, T):
        t = rng.integers(0, 11, size=(B, T))
        t[0, 0] = -100  # an ignored target
        return (_randn(rng, B, T, 11) * 3, t), {}

    def attention_plain(rng, T):
        return (_randn(rng, B, NH, T, 4), _randn(rng, B, NH, T + 2, 4), _randn(rng, B, NH, T + 2, 3)), {}

    def attention_causal(rng, T):
        return (_randn(rng, B, NH, T, 4), _randn(rng, B, NH, T, 4), _randn(rng, B, NH, T, 4)), {"causal": True}

    def attention_causal_kvcache(rng, T):  # Tq < Tk: queries are the last positions
        return (_randn(rng, B, NH, T, 4), _randn(rng, B, NH, T + 3, 4), _randn(rng, B, NH, T + 3, 4)), {"causal": True}

    def attention_gqa_kvcache(rng, T):  # grouped-query: 4 query heads on 2 key/value heads, Tq < Tk
        return (_randn(rng, B, 4, T, 4), _randn(rng, B, 2, T + 3, 4), _randn(rng, B, 2, T + 3, 3)), {"causal": True}

    def attention_mqa_padding(rng, T):  # multi-query (one key/value head) with a padding mask
        Tk = T + 2
        return (_randn(rng, B, 3, T, 4), _randn(rng, B, 1, Tk, 4), _randn(rng, B, 1, Tk, 4)), {
            "key_padding_mask": _padding_mask(rng, B, Tk, full_row=True)
        }

    def attention_padding(rng, T):
        Tk = T + 3
        return (_randn(rng, B, NH, T, 4), _randn(rng, B, NH, Tk, 4), _randn(rng, B, NH, Tk, 4)), {
            "key_padding_mask": _padding_mask(rng, B, Tk, full_row=True)
        }

    def mha_causal(rng, T):
        return (_randn(rng, B, T, C), _randn(rng, C, 3 * C), _randn(rng, 3 * C), _randn(rng, C, C), _randn(rng, C), NH), {}

    def mha_padding(rng, T):
        args, _ = mha_causal(rng, T)
        return args, {"causal": False, "key_padding_mask": _padding_mask(rng, B, T)}

    def cross_attention(rng, T):
        Tk = T + 2
        return (
            _randn(rng, B, T, C), _randn(rng, B, Tk, C), _randn(rng, C, C), _randn(rng, C),
            _randn(rng, C, 2 * C), _randn(rng, 2 * C), _randn(rng, C, C), _randn(rng, C), NH,
        ), {"key_padding_mask": _padding_mask(rng, B, Tk)}  # fmt: skip

    def rmsnorm(rng, T):
        return (_randn(rng, B, T, C), _randn(rng, C)), {"eps": 1e-6}

    def swiglu(rng, T):
        return (_randn(rng, B, T, C), _randn(rng, C, 2 * 5), _randn(rng, 2 * 5), _randn(rng, 5, C), _randn(rng, C)), {}

    def swiglu_nobias(rng, T):
        return (_randn(rng, B, T, C), _randn(rng, C, 2 * 5), None, _randn(rng, 5, C), None), {}

    def rope(rng, T):
        return (_randn(rng, B, NH, T, 6),), {"theta": 100.0, "offset": 3}

    def repeat_kv(rng, T):
        return (_randn(rng, B, 2, T, 3), 3), {}

    def mha_gqa(rng, T):  # 4 query heads sharing 2 key/value heads, with RoPE
        kv = 2 * 2 * (C // 4)
        return (_randn(rng, B, T, C), _randn(rng, C, C + kv), _randn(rng, C + kv), _randn(rng, C, C), None, 4), {
            "n_kv_head": 2, "rope_theta": 50.0}  # fmt: skip

    def mha_mqa_qknorm(rng, T):  # multi-query (one key/value head), RoPE, QK-norm; gains as arguments
        hs = C // 4
        return (_randn(rng, B, T, C), _randn(rng, C, C + 2 * hs), None, _randn(rng, C, C), None,
                1 + 0.3 * _randn(rng, hs), 1 + 0.3 * _randn(rng, hs)), {}  # fmt: skip

    def mha_qknorm_fwd(x, w_qkv, b_qkv, w_proj, b_proj, q_norm, k_norm):
        return A.mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, 4, n_kv_head=1, rope_theta=30.0,
                             q_norm=q_norm, k_norm=k_norm)  # fmt: skip

    drop_fwd = lambda x, p: L.dropout_forward(x, p, np.random.default_rng(7))  # same mask every call  # noqa: E731

    return {
        "linear": (L.linear_forward, L.linear_backward, linear),
        "linear_nobias": (L.linear_forward, L.linear_backward, linear_nobias),
        "embedding": (L.embedding_forward, L.embedding_backward, embedding),
        "positional_learned": (L.positional_forward, L.positional_backward, positional_learned),
        "softmax": (L.softmax_forward, L.softmax_backward, softmax),
        "log_softmax": (L.log_softmax_forward, L.log_softmax_backward, softmax),
        "layernorm": (L.layernorm_forward, L.layernorm_backward, layernorm),
        "rmsnorm": (L.rmsnorm_forward, L.rmsnorm_backward, rmsnorm),
        "silu": (L.silu_forward, L.silu_backward, gelu),
        "swiglu": (L.swiglu_forward, L.swiglu_backward, swiglu),
        "swiglu_nobias": (L.swiglu_forward, L.swiglu_backward, swiglu_nobias),
        "rope": (A.rope_forward, A.rope_backward, rope),
        "repeat_kv": (A.repeat_kv_forward, A.repeat_kv_backward, repeat_kv),
        "mha_gqa": (A.mha_forward, A.mha_backward, mha_gqa),
        "mha_mqa_qknorm": (mha_qknorm_fwd, A.mha_backward, mha_mqa_qknorm),
        "gelu": (L.gelu_forward, L.gelu_backward, gelu),
        "mlp": (L.mlp_forward, L.mlp_backward, mlp),
        "residual": (L.residual_forward, L.residual_backward, residual),
        "dropout": (drop_fwd, L.dropout_backward, dropout),
        "cross_entropy": (L.cross_entropy_forward, L.cross_entropy_backward, cross_entropy),
        "attention": (A.attention_forward, A.attention_backward, attention_plain),
        "attention_causal": (A.attention_forward, A.attention_backward, attention_causal),
        "attention_causal_kvcache": (A.attention_forward, A.attention_backward, attention_causal_kvcache),
        "attention_padding": (A.attention_forward, A.attention_backward, attention_padding),
        "attention_gqa_kvcache": (A.attention_forward, A.attention_backward, attention_gqa_kvcache),
        "attention_mqa_padding": (A.attention_forward, A.attention_backward, attention_mqa_padding),
        "mha_causal": (A.mha_forward, A.mha_backward, mha_causal),
        "mha_padding": (A.mha_forward, A.mha_backward, mha_padding),
        "cross_attention": (A.cross_attention_forward, A.cross_attention_backward, cross_attention),
    }


CASES = _cases()


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck(name, T, rng):
    fwd, bwd, build = CASES[name]
    args, kwargs = build(rng, T)
    result = gradcheck(fwd, bwd, *args, **kwargs)
    assert result.reports, "no floating-point input was checked"
    assert result.ok, f"{name} T={T}\n{result}"


@pytest.mark.parametrize("name", ["linear", "layernorm", "attention_causal", "cross_entropy", "mha_causal", "embedding",
                                  "rmsnorm", "swiglu", "rope", "repeat_kv", "mha_gqa", "mha_mqa_qknorm",
                                  "attention_gqa_kvcache"])  # fmt: skip
def test_gradcheck_catches_a_broken_backward(name, rng):
    """The check must be able to fail: scale one gradient by 1.001 and it must notice."""
    fwd, bwd, build = CASES[name]
    args, kwargs = build(rng, 4)

    def broken(dout, cache):
        g = bwd(dout, cache)
        g = list(g) if isinstance(g, tuple) else [g]
        g[0] = g[0] * 1.001
        return tuple(g)

    assert not gradcheck(fwd, broken, *args, **kwargs).ok


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_dtype_preserved(name, dtype, rng):
    """Reference layers are dtype-generic: float32 in, float32 out (training runs in float32)."""
    fwd, bwd, build = CASES[name]
    args, kwargs = build(rng, 3)
    args = [a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]
    out, cache = fwd(*args, **kwargs)
    assert np.asarray(out).dtype == dtype
    dout = np.ones_like(np.asarray(out))
    grads = bwd(dout if np.ndim(out) else dtype(1.0), cache)
    for g in grads if isinstance(grads, tuple) else (grads,):
        assert g is None or g.dtype == dtype


# ----------------------------------------------------------------------------- forward values


def test_linear_any_leading_dims(rng):
    x, w, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)
    out, _ = L.linear_forward(x, w, b)
    np.testing.assert_allclose(out[1, 2, 3], x[1, 2, 3] @ w + b, rtol=1e-12)


def test_embedding_repeated_ids_accumulate(rng):
    table = rng.standard_normal((5, 3))
    ids = np.array([[2, 2, 2, 0]])
    out, cache = L.embedding_forward(ids, table)
    dout = np.ones_like(out)
    dtable = L.embedding_backward(dout, cache)
    np.testing.assert_array_equal(dtable[2], [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(dtable[0], [1.0, 1.0, 1.0])
    assert not dtable[[1, 3, 4]].any()


def test_sinusoidal_table_matches_paper_formula():
    pe = L.sinusoidal_table(50, 16, dtype=np.float64)
    pos, i = 37, 3
    assert pe[pos, 2 * i] == pytest.approx(np.sin(pos / 10000 ** (2 * i / 16)), abs=1e-12)
    assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(pos / 10000 ** (2 * i / 16)), abs=1e-12)
    assert L.sinusoidal_table(4, 7).shape == (4, 7)  # odd C works


def test_sinusoidal_relative_position_is_linear():
    """PE[pos + k] = R_k PE[pos] for a block-rotation R_k independent of pos (why attention can use it)."""
    pe = L.sinusoidal_table(64, 8, dtype=np.float64)
    k = 5
    # least-squares R from positions 0..40, then check it maps 41..58 too
    R, *_ = np.linalg.lstsq(pe[0:40], pe[k : 40 + k], rcond=None)
    np.testing.assert_allclose(pe[41:58] @ R, pe[41 + k : 58 + k], atol=1e-8)


def test_softmax_rows_sum_to_one_and_extremes_finite():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    for dtype in (np.float32, np.float64):
        p, _ = L.softmax_forward(x.astype(dtype))
        assert np.isfinite(p).all()
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)


def test_cross_entropy_extreme_logits_finite_and_correct():
    for dtype in (np.float32, np.float64):
        logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dtype)
        targets = np.array([1, 2])
        loss, cache = L.cross_entropy_forward(logits, targets)
        d = L.cross_entropy_backward(dtype(1.0), cache)
        assert np.isfinite(loss) and np.isfinite(d).all()
        # row 0: lse = 1e4, loss = 1e4 - (-1e4) = 2e4; row 1: lse = 1e4 + log 2, loss = log 2
        assert float(loss) == pytest.approx((2e4 + np.log(2)) / 2, rel=1e-6)


def test_cross_entropy_matches_naive_and_ignores(rng):
    logits = rng.standard_normal((3, 4, 6))
    t = rng.integers(0, 6, size=(3, 4))
    t[1, 2] = t[2, 0] = -1
    loss, _ = L.cross_entropy_forward(logits, t, ignore_index=-1)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    keep = t != -1
    naive = -np.log(p[keep, t[keep]]).mean()
    assert float(loss) == pytest.approx(naive, rel=1e-12)


def test_cross_entropy_all_ignored_is_zero_not_nan(rng):
    loss, cache = L.cross_entropy_forward(rng.standard_normal((2, 3)), np.array([-100, -100]))
    assert float(loss) == 0.0
    assert not L.cross_entropy_backward(1.0, cache).any()


def test_layernorm_constant_row_finite():
    for dtype in (np.float32, np.float64):
        x = np.full((2, 3, 8), 3.25, dtype=dtype)
        w, b = np.ones(8, dtype), np.zeros(8, dtype)
        out, cache = L.layernorm_forward(x, w, b)
        dx, dw, db = L.layernorm_backward(np.ones_like(out), cache)
        assert np.isfinite(out).all() and np.isfinite(dx).all() and np.isfinite(dw).all()
        np.testing.assert_allclose(out, 0.0, atol=1e-6)


def test_layernorm_statistics(rng):
    x = rng.standard_normal((4, 16)) * 5 + 2
    out, _ = L.layernorm_forward(x, np.ones(16), np.zeros(16), eps=0.0)
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(-1), 1, rtol=1e-12)


def test_gelu_matches_scalar_formula_and_exact_gelu():
    xs = [-3.0, -1.0, 0.0, 0.5, 1.0, 3.0]
    out, _ = L.gelu_forward(np.array(xs))
    k = math.sqrt(2 / math.pi)
    tanh_form = [0.5 * x * (1 + math.tanh(k * (x + 0.044715 * x**3))) for x in xs]
    np.testing.assert_allclose(out, tanh_form, rtol=1e-14)
    # the tanh form approximates the exact GELU x * Phi(x) to ~1e-3 (Hendrycks & Gimpel)
    exact = [0.5 * x * (1 + math.erf(x / math.sqrt(2))) for x in xs]
    np.testing.assert_allclose(out, exact, atol=1e-3)


def test_dropout_eval_is_identity_and_train_is_seeded(rng):
    x = rng.standard_normal((4, 100))
    out, _ = L.dropout_forward(x, 0.5, train=False)
    assert out is x
    a, _ = L.dropout_forward(x, 0.5, np.random.default_rng(3))
    b, _ = L.dropout_forward(x, 0.5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    kept = a != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(a[kept], 2 * x[kept])


# ----------------------------------------------------------------------------- attention


def test_attention_is_the_papers_formula(rng):
    q, k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    out, _ = A.attention_forward(q, k, v)
    s = q @ k.T / np.sqrt(4)
    p = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    np.testing.assert_allclose(out, p @ v, rtol=1e-12)


def test_attention_causal_mask_blocks_the_future(rng):
    q, k, v = (rng.standard_normal((1, 1, 6, 4)) for _ in range(3))
    out, cache = A.attention_forward(q, k, v, causal=True)
    att = cache[3][0, 0]
    assert not np.triu(att, 1).any()
    # changing a future value must not change earlier outputs
    v2 = v.copy()
    v2[..., 4:, :] += 10
    out2, _ = A.attention_forward(q, k, v2, causal=True)
    np.testing.assert_array_equal(out[..., :4, :], out2[..., :4, :])


def test_attention_fully_masked_row_is_finite_zero(rng):
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 4))
    mask = np.zeros((2, 5), bool)
    mask[1] = True  # every key of batch 1 is padding
    out, cache = A.attention_forward(q, k, v, key_padding_mask=mask)
    assert np.isfinite(out).all()
    assert not out[1].any()
    dq, dk, dv = A.attention_backward(np.ones_like(out), cache)
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()


def test_mha_equals_per_head_attention(rng):
    B, T, C, NH = 2, 4, 6, 3
    x = rng.standard_normal((B, T, C))
    w_qkv, b_qkv = rng.standard_normal((C, 3 * C)), rng.standard_normal(3 * C)
    w_proj, b_proj = rng.standard_normal((C, C)), rng.standard_normal(C)
    out, _ = A.mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, NH)
    qkv = x @ w_qkv + b_qkv
    hs = C // NH
    heads = []
    for h in range(NH):
        q = qkv[..., h * hs : (h + 1) * hs]
        k = qkv[..., C + h * hs : C + (h + 1) * hs]
        v = qkv[..., 2 * C + h * hs : 2 * C + (h + 1) * hs]
        heads.append(A.attention_forward(q, k, v, causal=True)[0])
    np.testing.assert_allclose(out, np.concatenate(heads, -1) @ w_proj + b_proj, rtol=1e-10)


# ----------------------------------------------------------------------------- the Llama pieces


def test_rmsnorm_is_the_formula_and_zero_row_finite(rng):
    x, w = rng.standard_normal((3, 7)), rng.standard_normal(7)
    x[1] = 0.0
    out, _ = L.rmsnorm_forward(x, w, eps=1e-6)
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(out, want, rtol=1e-12)
    assert np.isfinite(out).all() and not out[1].any()
    # invariant to the scale of a row (unlike layer norm, not to its shift)
    np.testing.assert_allclose(L.rmsnorm_forward(5 * x, w, eps=0.0 + 1e-300)[0][[0, 2]],
                               L.rmsnorm_forward(x, w, eps=1e-300)[0][[0, 2]], rtol=1e-10)  # fmt: skip
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            L.rmsnorm_forward(x, w, eps=bad)


def test_silu_and_swiglu_are_the_formulas(rng):
    x = rng.standard_normal((2, 3, 4)) * 3
    np.testing.assert_allclose(L.silu_forward(x)[0], x / (1 + np.exp(-x)), rtol=1e-12)
    w_gate, w_up, w_down = rng.standard_normal((4, 5)), rng.standard_normal((4, 5)), rng.standard_normal((5, 4))
    out, _ = L.swiglu_forward(x, np.concatenate([w_gate, w_up], 1), None, w_down, None)
    g = x @ w_gate
    np.testing.assert_allclose(out, (g / (1 + np.exp(-g)) * (x @ w_up)) @ w_down, rtol=1e-10)


def test_rope_rotates_each_pair_by_position_times_frequency(rng):
    T, hs, theta, offset = 5, 8, 100.0, 2
    x = rng.standard_normal((2, T, hs))
    out, _ = A.rope_forward(x, theta, offset)
    h = hs // 2
    for m in range(T):
        for i in range(h):  # pair (i, i + hs/2) of position offset + m turns by (offset + m) theta^(-2i/hs)
            a = (offset + m) * theta ** (-2 * i / hs)
            c, s = math.cos(a), math.sin(a)
            np.testing.assert_allclose(out[:, m, i], c * x[:, m, i] - s * x[:, m, i + h], rtol=1e-12)
            np.testing.assert_allclose(out[:, m, i + h], s * x[:, m, i] + c * x[:, m, i + h], rtol=1e-12)


def test_rope_scores_depend_on_relative_position_only(rng):
    hs = 6
    q, k = rng.standard_normal(hs), rng.standard_normal(hs)
    dots = []
    for shift in (0, 3, 11):  # the same relative distance 2 at three absolute positions
        qr, _ = A.rope_forward(np.tile(q, (4 + shift, 1)), 10000.0)
        kr, _ = A.rope_forward(np.tile(k, (4 + shift, 1)), 10000.0)
        dots.append(qr[shift + 3] @ kr[shift + 1])
    np.testing.assert_allclose(dots, dots[0], rtol=1e-10)


def test_rope_offset_equals_a_slice_and_backward_is_the_inverse(rng):
    x = rng.standard_normal((2, 3, 9, 4))
    full, _ = A.rope_forward(x, 500.0)
    part, cache = A.rope_forward(x[..., 4:, :], 500.0, offset=4)
    np.testing.assert_allclose(part, full[..., 4:, :], rtol=1e-12)
    # a rotation is orthogonal: its transpose (the backward) undoes it
    np.testing.assert_allclose(A.rope_backward(part, cache), x[..., 4:, :], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="even head size"):
        A.rope_forward(rng.standard_normal((3, 5)))


def test_rope_half_split_is_interleaved_after_a_permutation(rng):
    """The paper's layout rotates adjacent pairs (2i, 2i+1); Hugging Face's the pairs (i, i + hs/2).
    Permuting the channels [0, 2, 4, ..., 1, 3, 5, ...] maps one onto the other (how Meta's
    checkpoints are converted: the q and k projections' output columns are permuted)."""
    T, hs = 4, 8
    x = rng.standard_normal((T, hs))
    perm = np.r_[0:hs:2, 1:hs:2]  # interleaved channel j -> half-split position
    pos = np.arange(T)[:, None]
    ang = pos * 10000.0 ** (-np.arange(0, hs, 2) / hs)  # (T, hs/2)
    x1, x2 = x[:, 0::2], x[:, 1::2]
    inter = np.empty_like(x)
    inter[:, 0::2] = x1 * np.cos(ang) - x2 * np.sin(ang)
    inter[:, 1::2] = x1 * np.sin(ang) + x2 * np.cos(ang)
    half, _ = A.rope_forward(x[:, perm], 10000.0)
    np.testing.assert_allclose(half, inter[:, perm], rtol=1e-12)


def test_gqa_equals_multi_head_attention_with_repeated_key_value_weights(rng):
    B, T, C, NH, NKV = 2, 5, 8, 4, 2
    hs, G = C // NH, NH // NKV
    x = rng.standard_normal((B, T, C))
    w_q, w_k, w_v = rng.standard_normal((C, C)), rng.standard_normal((C, NKV * hs)), rng.standard_normal((C, NKV * hs))
    w_proj = rng.standard_normal((C, C))
    out, _ = A.mha_forward(x, np.concatenate([w_q, w_k, w_v], 1), None, w_proj, None, NH, n_kv_head=NKV, rope_theta=10.0)
    # the same thing as plain multi-head attention whose key/value heads are copies: head j of
    # the NKV serves query heads j*G .. j*G + G - 1
    rep = lambda w: np.repeat(w.reshape(C, NKV, hs), G, axis=1).reshape(C, C)  # noqa: E731
    ref, _ = A.mha_forward(x, np.concatenate([w_q, rep(w_k), rep(w_v)], 1), None, w_proj, None, NH, rope_theta=10.0)
    np.testing.assert_allclose(out, ref, rtol=1e-10)
    with pytest.raises(ValueError, match="n_kv_head"):
        A.mha_forward(x, np.concatenate([w_q, w_k, w_v], 1), None, w_proj, None, NH, n_kv_head=3)


def test_repeat_kv_backward_sums_each_groups_gradients(rng):
    dout = rng.standard_normal((2, 6, 3, 4))  # 6 query heads, n_rep 3 -> 2 key/value heads
    dx = A.repeat_kv_backward(dout, (3,))
    np.testing.assert_allclose(dx[:, 0], dout[:, 0] + dout[:, 1] + dout[:, 2])
    np.testing.assert_allclose(dx[:, 1], dout[:, 3] + dout[:, 4] + dout[:, 5])
