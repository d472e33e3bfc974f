"""The head layout around attention: `attention.split_heads` / `merge_heads` (NumPy: views and a
transposing copy) against their Numba twins (`kernels.heads`: one-pass copies). Copies, so the
parity is exact, in float64 and float32, serial and threaded builds, with T = 1 (decoding: the
twin's views are returned as they are), head size 1, grouped-query widths and inputs that are
not C-contiguous."""
import numba
import numpy as np
import pytest

from nanotransformer import attention as A
from nanotransformer import kernels as K
from nanotransformer.kernels import jit as KJ

DTYPES = [np.float64, np.float32]

# (B, T, heads per group, hs): one group as an int, several as a tuple (q, k, v of GQA: NH, NKV, NKV)
SHAPES = [
    (2, 5, 2, 4),
    (2, 5, (2, 2, 2), 4),  # GPT-2's fused q, k, v
    (3, 7, (4, 2, 2), 3),  # grouped-query: k and v narrower than q
    (2, 9, (3, 1, 1), 1),  # multi-query, head size 1
    (1, 1, (4, 2, 2), 8),  # decoding: the views are already C-contiguous
    (1, 1, 3, 5),
    (2, 33, (2, 2), 17),  # cross-attention's k, v; odd sizes
    (1, 6, 1, 7),  # one head: merge is a reshape
]


@pytest.fixture(params=["serial", "threaded"])
def build(request, monkeypatch):
    monkeypatch.setattr(KJ, "SERIAL_BELOW", 1 << 62 if request.param == "serial" else 0)
    return request.param


def _fused(rng, dtype, B, T, heads, hs, strided=False):
    C = (sum(heads) if isinstance(heads, tuple) else heads) * hs
    if strided:  # every other column of a wider array: not C-contiguous
        return rng.standard_normal((B, T, 2 * C)).astype(dtype)[..., ::2]
    return rng.standard_normal((B, T, C)).astype(dtype)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("B, T, heads, hs", SHAPES)
def test_split_heads_parity(B, T, heads, hs, strided, dtype, rng, build):
    x = _fused(rng, dtype, B, T, heads, hs, strided)
    got, want = K.split_heads(x, heads), A.split_heads(x, heads)
    assert type(got) is type(want)
    for g, w in zip(_as_tuple(got), _as_tuple(want), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert g.flags.c_contiguous  # what the attention kernel reads without another copy
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("B, T, heads, hs", SHAPES)
def test_merge_heads_parity(B, T, heads, hs, transposed, dtype, rng, build):
    parts = [rng.standard_normal((B, n, T, hs)).astype(dtype) for n in _as_tuple(heads)]
    if transposed:  # (B, n, T, hs) views of (B, T, n, hs) arrays, as split_heads' own views
        parts = [np.ascontiguousarray(p.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3) for p in parts]
    got, want = K.merge_heads(*parts), A.merge_heads(*parts)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("B, T, heads, hs", SHAPES)
def test_merge_undoes_split(B, T, heads, hs, rng, build):
    x = _fused(rng, np.float64, B, T, heads, hs)
    np.testing.assert_array_equal(K.merge_heads(*_as_tuple(K.split_heads(x, heads))), x)


@pytest.mark.skipif(bool(numba.config.DISABLE_JIT), reason="which path runs only matters compiled")
def test_decoding_rows_are_not_copied(rng):
    """T = 1: split_heads hands out the twin's views of x (no kernel call, no copy)."""
    x = rng.standard_normal((1, 1, 16)).astype(np.float32)
    q, k, v = K.split_heads(x, (2, 1, 1))
    assert all(np.shares_memory(t, x) for t in (q, k, v))
    assert np.shares_memory(K.merge_heads(q), q)


@pytest.mark.parametrize("ops", [A, K], ids=["numpy", "numba"])
def test_bad_head_counts(ops, rng):
    x = rng.standard_normal((1, 2, 12))
    with pytest.raises(ValueError, match=r"n_head: expected a positive divisor of C=12, got 5"):
        ops.split_heads(x, 5)
    with pytest.raises(ValueError, match=r"n_head: expected positive head counts whose sum divides C=12, got \(4, 2, 1\)"):
        ops.split_heads(x, (4, 2, 1))
    with pytest.raises(ValueError, match=r"n_head: expected positive head counts"):
        ops.split_heads(x, (4, 0, 2))


def test_merge_heads_mismatch():
    a, b = np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 5, 4))
    with pytest.raises(ValueError, match=r"merge_heads: expected \(B=1, n, T=3, hs=4\) .* got \(1, 2, 5, 4\) float64 as argument 1"):
        K.merge_heads(a, b)
