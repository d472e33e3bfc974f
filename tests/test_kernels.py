"""Parity of every Numba kernel with its NumPy twin, forward and backward, float64 and float32.

Tolerances (STYLE.md): float64 to 1e-12 relative to the tensor's scale; float32 with
assert_allclose(rtol=1e-4, atol=1e-5). The kernels sum in a different order from NumPy (tiles,
SIMD lanes, per-chunk partial sums), so bit-equality is not expected, only rounding-level
agreement.

Shapes cover T = 1, odd T, head size 1, sizes that fill the register tiles (jit.TILES: the
attention products' 4 x 64 and 4 x 32 strip with AVX-512, 4 x 16 and 4 x 8 with AVX2, the linear
layers' packed 4 x 64 or 4 x 16) and sizes that leave edges beside them, and (when compiled)
sizes past its KC / NC cache blocks and
the attention's R-row query blocks. Run with NUMBA_DISABLE_JIT=1 to execute the same kernels as plain Python
(for coverage); the large-shape cases are skipped there to keep the run short.
"""
import importlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from nanotransformer import attention as A
from nanotransformer import kernels as K
from nanotransformer import layers as L
from nanotransformer import optim as O
from nanotransformer.backend import get_ops
from nanotransformer.gradcheck import gradcheck
from nanotransformer.kernels import attention as KA
from nanotransformer.kernels import jit as KJ

# the modules of the float kernels
FLOAT_MODULES = [
    importlib.import_module(f"nanotransformer.kernels.{m}")
    for m in ("jit", "linear", "attention", "layernorm", "rmsnorm", "rope", "gelu", "cross_entropy", "adamw")
]

JIT_OFF = bool(numba.config.DISABLE_JIT)
big = pytest.mark.skipif(JIT_OFF, reason="large shape: too slow as plain Python (NUMBA_DISABLE_JIT=1)")

DTYPES = [np.float64, np.float32]


@pytest.fixture(params=["serial", "threaded"])
def build(request, monkeypatch):
    """Every kernel has a threaded build and a serial one for small calls (kernels.jit.run picks
    by size): run the small test shapes through each."""
    monkeypatch.setattr(KJ, "SERIAL_BELOW", 1 << 62 if request.param == "serial" else 0)
    return request.param


def assert_parity(got, want, dtype, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if dtype == np.float64:
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * scale, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=what)


def _randn(rng, dtype, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------- forward/backward pairs
# name -> (numba fwd, numba bwd, numpy fwd, numpy bwd, builder(rng, dtype) -> (args, kwargs))


def _linear(B, T, C_in, C_out, bias=True):
    def build(rng, dt):
        # w ~ N(0, 1/C_in) as in a real layer: outputs stay O(1) however long the sums are, so the
        # float32 atol of 1e-5 is meaningful (with N(0, 1) weights an output near 0 is a
        # cancellation of terms of size sqrt(C_in) and rounding alone exceeds it)
        w = _randn(rng, dt, C_in, C_out, scale=1 / math.sqrt(C_in))
        return (_randn(rng, dt, B, T, C_in), w, _randn(rng, dt, C_out) if bias else None), {}

    return (K.linear_forward, K.linear_backward, L.linear_forward, L.linear_backward, build)


def _layernorm(*shape):
    def build(rng, dt):
        C = shape[-1]
        return (_randn(rng, dt, *shape, scale=3.0) + 1.0, _randn(rng, dt, C), _randn(rng, dt, C)), {}

    return (K.layernorm_forward, K.layernorm_backward, L.layernorm_forward, L.layernorm_backward, build)


def _heads_view(rng, dt, B, NH, T, hs, scale=1.0):
    """A (B, NH, T, hs) strided view, as `attention.split_heads` hands q and k over."""
    return _randn(rng, dt, B, T, NH, hs, scale=scale).transpose(0, 2, 1, 3)


def _rmsnorm(*shape, zero_row=False, view=False):
    """view: shape is (B, NH, T, hs) and x a transposed view of (B, T, NH, hs) (QK-norm's input)."""

    def build(rng, dt):
        x = _heads_view(rng, dt, *shape, scale=3.0) if view else _randn(rng, dt, *shape, scale=3.0)
        if zero_row:
            x[(0,) * (x.ndim - 1)] = 0  # mean(x^2) = 0: only eps keeps rstd finite
        return (x, _randn(rng, dt, shape[-1])), {}

    return (K.rmsnorm_forward, K.rmsnorm_backward, L.rmsnorm_forward, L.rmsnorm_backward, build)


def _rope(B, NH, T, hs, offset=0, theta=10000.0, view=False):
    def build(rng, dt):
        x = _heads_view(rng, dt, B, NH, T, hs) if view else _randn(rng, dt, B, NH, T, hs)
        return (x, theta, offset), {}

    return (K.rope_forward, K.rope_backward, A.rope_forward, A.rope_backward, build)


def _gelu(*shape, scale=2.0):
    def build(rng, dt):
        return (_randn(rng, dt, *shape, scale=scale),), {}

    return (K.gelu_forward, K.gelu_backward, L.gelu_forward, L.gelu_backward, build)


def _embedding(shape, V, C, id_dtype=np.int64):
    """ids of `shape` drawn from V rows, so that ids repeat and the scatter-add must accumulate."""

    def build(rng, dt):
        return (rng.integers(0, V, size=shape).astype(id_dtype), _randn(rng, dt, V, C)), {}

    return (K.embedding_forward, K.embedding_backward, L.embedding_forward, L.embedding_backward, build)


def _cross_entropy(B, T, V, scale=3.0, ignore=1):
    def build(rng, dt):
        t = rng.integers(0, V, size=(B, T))
        t.reshape(-1)[:ignore] = -100  # ignored targets
        return (_randn(rng, dt, B, T, V, scale=scale), t), {}

    return (K.cross_entropy_forward, K.cross_entropy_backward, L.cross_entropy_forward, L.cross_entropy_backward, build)


def _attention(B, NH, Tq, Tk, hs, hv=None, causal=True, nkv=None):
    def build(rng, dt):  # nkv: key/value heads (grouped-query attention), NH by default
        q = _randn(rng, dt, B, NH, Tq, hs)
        k = _randn(rng, dt, B, nkv or NH, Tk, hs)
        v = _randn(rng, dt, B, nkv or NH, Tk, hv or hs)
        return (q, k, v), {"causal": causal}

    return (KA.attention_forward, KA.attention_backward, A.attention_forward, A.attention_backward, build)


CASES = {
    "linear_T1": _linear(2, 1, 8, 12),
    "linear_odd": _linear(2, 5, 7, 9),  # 10 x 9: narrower than one 4 x 16 tile, so partial tiles only
    "linear_tiles": _linear(2, 3, 5, 70),  # 6 x 70: whole 4 x 64 (or 4 x 16) tiles plus a row and a column edge
    "linear_nobias": _linear(1, 3, 5, 6, bias=False),
    "linear_1x1": _linear(1, 1, 1, 1),
    "linear_decode": _linear(1, 1, 16, 300),  # one row (the few-row kernel), more than one 256-column task
    "layernorm_T1": _layernorm(2, 1, 8),
    "layernorm_odd": _layernorm(3, 5, 7),
    "layernorm_C1": _layernorm(4, 1),  # one channel: var = 0, xhat = 0
    "layernorm_many_rows": _layernorm(37, 9),  # more rows than the 16 partial-sum chunks
    "rmsnorm_T1": _rmsnorm(2, 1, 8),
    "rmsnorm_odd": _rmsnorm(3, 5, 7),
    "rmsnorm_C1": _rmsnorm(4, 1),  # one channel: xhat = x / sqrt(x^2 + eps), almost +-1
    "rmsnorm_zero_row": _rmsnorm(2, 3, 6, zero_row=True),  # out = 0, dx = dout * w * eps^(-1/2)
    "rmsnorm_many_rows": _rmsnorm(37, 9),  # more rows than the 16 partial-sum chunks
    "rmsnorm_qk_view": _rmsnorm(2, 3, 5, 6, view=True),  # QK-norm: per head, on a transposed view
    "rope_T1": _rope(2, 2, 1, 4),
    "rope_odd": _rope(3, 3, 5, 6),  # odd T, h = 3 pairs
    "rope_hs2": _rope(1, 2, 7, 2),  # one pair per position
    "rope_offset": _rope(2, 2, 3, 10, offset=5, theta=500.0),  # positions 5..7 (a KV cache holds 5)
    "rope_decode": _rope(1, 3, 1, 8, offset=17),  # one new token
    "rope_view": _rope(2, 3, 5, 8, offset=2, view=True),  # split_heads' strided view
    "rope_3d": (K.rope_forward, K.rope_backward, A.rope_forward, A.rope_backward,
                lambda rng, dt: ((_randn(rng, dt, 4, 6, 12),), {})),  # (BH, T, hs), no head axis
    "gelu": _gelu(2, 5, 8),
    "gelu_wide_range": _gelu(3, 101, scale=12.0),  # tanh saturates, exp(2u) overflows to inf
    "gelu_T1": _gelu(1, 1, 3),
    "cross_entropy": _cross_entropy(2, 5, 11),
    "cross_entropy_T1": _cross_entropy(1, 1, 7, ignore=0),
    "cross_entropy_extreme": _cross_entropy(2, 3, 5, scale=1e4),  # stable log-sum-exp
    "cross_entropy_all_ignored": _cross_entropy(1, 3, 4, ignore=3),  # loss 0, gradient 0
    "embedding": _embedding((3, 7), 5, 9),
    "embedding_T1": _embedding((1, 1), 3, 4, np.int32),
    "embedding_chunks": _embedding((2, 40), 11, 150, np.int32),  # columns in CW = 64 chunks: 64 + 64 + 22
    "embedding_flat_ids": _embedding((33,), 2, 65),  # ids of any shape; two rows take every token
    "attention_T1": _attention(2, 2, 1, 1, 4),
    "attention_odd": _attention(2, 3, 5, 5, 4),
    "attention_hs1": _attention(1, 2, 7, 7, 1),
    "attention_kvcache": _attention(2, 2, 3, 8, 4),  # Tq < Tk: queries are the last positions
    "attention_decode": _attention(1, 2, 1, 9, 3),  # one new token against a cache
    "attention_unmasked": _attention(2, 2, 6, 4, 3, hv=5, causal=False),
    "attention_blocks": _attention(1, 2, 70, 70, 3),  # crosses the R = 64 query block
    "attention_tiles": _attention(1, 1, 37, 37, 32),  # head size one 32-wide tile; Tk past one tile
    # grouped-query attention: k, v with fewer heads; decoding and causal=False run a group's
    # queries as one block of rows, causal Tq > 1 reads head h // n_rep per query head
    "attention_gqa_decode": _attention(2, 6, 1, 9, 4, nkv=2),
    "attention_mqa_decode": _attention(1, 5, 1, 1, 3, nkv=1),  # T = 1 and one key/value head
    "attention_gqa_causal": _attention(2, 6, 5, 5, 4, nkv=3),
    "attention_mqa_kvcache": _attention(1, 4, 3, 8, 4, nkv=1),
    "attention_gqa_unmasked": _attention(2, 4, 6, 4, 3, hv=5, causal=False, nkv=2),
    "attention_no_queries": _attention(1, 2, 0, 3, 4, causal=False),  # Tq = 0: empty output, dk = dv = 0
    # when every query sees every key and a key/value head has at most FEW_ROWS = 7 query rows
    # (decoding, the cases above with Tq = 1 or unmasked), the kernel without tiles runs
    "attention_decode_chunks": _attention(1, 3, 1, 131, 8),  # keys in chunks of 64: 64 + 64 + 3
    "attention_gqa_few_rows": _attention(1, 7, 1, 70, 4, nkv=1),  # 7 rows per head: the last it takes
    "attention_gqa_past_few_rows": _attention(1, 8, 1, 9, 4, nkv=1),  # 8 rows: the tiled kernel
    "attention_unmasked_tiled": _attention(2, 2, 8, 4, 3, hv=5, causal=False),
    "attention_gqa_no_queries": _attention(1, 4, 0, 3, 4, causal=False, nkv=2),
}
BIG_CASES = {
    # past the packed matmul's KC k block (256 or 1024) in the forward (K = C_in = 1100; dw's K past
    # 1024 is test_product_every_layout's 9 x 1030 x 24, at a scale the tolerance holds for) and
    # its 256 x 256 tasks, and not a multiple of anything
    "linear_blocked": _linear(1, 37, 1100, 133),
    "attention_T256": _attention(1, 2, 256, 256, 16),
    "attention_kvcache_long": _attention(1, 1, 67, 200, 8),
    "attention_gqa_blocks": _attention(1, 4, 70, 70, 3, nkv=2),  # past the R = 64 query block, shared heads
    "attention_gqa_unmasked_blocks": _attention(1, 6, 23, 40, 8, causal=False, nkv=2),  # 3 x 23 rows: past R
    # jit.gemm_nb's wide tiles, then one narrow strip, then the last columns row by row (AVX-512's
    # 64 and 32 columns; AVX2's 16 and 8):
    "attention_wide_tiles": _attention(1, 1, 108, 108, 64),  # head size 64; keys 64 + 32 + 12, or 6 x 16 + 8 + 4
    "attention_wide_and_narrow": _attention(1, 2, 19, 150, 96, hv=125, causal=False),  # 19 rows: tiled; 96: 64 + 32 (6 x 16); hv 125: 64 + 32 + 29, or 7 x 16 + 8 + 5
    "cross_entropy_bpe": _cross_entropy(2, 9, 4096),
    "rope_small": _rope(8, 6, 256, 64, offset=3, view=True),
}


def _run_pair(fwd, bwd, args, kwargs, rng, dtype):
    out, cache = fwd(*args, **kwargs)
    out = np.asarray(out)
    dout = np.asarray(dtype(1.7)) if out.ndim == 0 else _randn(rng, dtype, *out.shape)
    grads = bwd(dout if out.ndim else dout[()], cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    return out, grads


def _check_case(name, cases, dtype):
    kfwd, kbwd, rfwd, rbwd, build = cases[name]
    args, kwargs = build(np.random.default_rng(0), dtype)
    out_k, grads_k = _run_pair(kfwd, kbwd, args, kwargs, np.random.default_rng(1), dtype)
    out_r, grads_r = _run_pair(rfwd, rbwd, args, kwargs, np.random.default_rng(1), dtype)
    assert_parity(out_k, out_r, dtype, f"{name} forward")
    assert len(grads_k) == len(grads_r)
    for i, (gk, gr) in enumerate(zip(grads_k, grads_r)):
        if gr is None:
            assert gk is None, f"{name} gradient {i}: expected None"
        else:
            assert_parity(gk, gr, dtype, f"{name} gradient {i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_parity(name, dtype, build):
    _check_case(name, CASES, dtype)


@big
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(BIG_CASES))
def test_parity_big(name, dtype):
    _check_case(name, BIG_CASES, dtype)


@big
def test_rmsnorm_small_config_float32():
    """RMSNorm at the "small" config's shape (B, T, C) = (8, 256, 384), float32, held against the
    float64 twin rather than the float32 one: dw sums 2048 rows of O(1) terms (|dw| up to ~140),
    and float32 rounding of such a sum is ~1e-4 for NumPy's own float32 result (its pairwise sum)
    too, past the usual atol of 1e-5. So the bound is relative to each tensor's scale, 1e-6
    (float32's eps is 1.2e-7; measured: the kernel's dw is off by 2e-7 of the scale, NumPy's float32
    by 9e-7)."""
    rng = np.random.default_rng(0)
    x, w, dout = rng.standard_normal((8, 256, 384)) * 3, rng.standard_normal(384), rng.standard_normal((8, 256, 384))
    out64, cache64 = L.rmsnorm_forward(x, w)
    want = (out64,) + L.rmsnorm_backward(dout, cache64)
    f32 = [a.astype(np.float32) for a in (x, w, dout)]
    out32, cache32 = K.rmsnorm_forward(f32[0], f32[1])
    got = (out32,) + K.rmsnorm_backward(f32[2], cache32)
    for what, g, t in zip(("out", "dx", "dw"), got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, t, rtol=0, atol=1e-6 * np.abs(t).max(), err_msg=what)


# ----------------------------------------------------------------------------- AdamW


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "wd, decoupled",
    [(0.0, True), (0.1, True), ("mask", True), (0.01, False)],
    ids=["no_decay", "adamw", "adamw_mask", "adam_l2"],
)
def test_adamw_parity(wd, decoupled, dtype, rng, build):
    n = 103
    p, g, m = (_randn(rng, dtype, n) for _ in range(3))
    v = np.abs(_randn(rng, dtype, n))
    if isinstance(wd, str):
        wd = (rng.random(n) < 0.5).astype(dtype) * dtype(0.1)  # a decay mask, as model.decay_mask
    states = {"numba": [a.copy() for a in (p, m, v)], "numpy": [a.copy() for a in (p, m, v)]}
    for t in (1, 2, 3):  # several steps: bias corrections change with t
        K.adamw_update(*states["numba"][:1], g, *states["numba"][1:], t, 1e-2, 0.9, 0.95, 1e-8, wd, decoupled)
        O.adamw_update(*states["numpy"][:1], g, *states["numpy"][1:], t, 1e-2, 0.9, 0.95, 1e-8, wd, decoupled)
    for what, a, b in zip("pmv", states["numba"], states["numpy"]):
        assert_parity(a, b, dtype, f"adamw {what}")


def test_adamw_2d_param(rng):
    """Any shape works (it is flattened); the update is in place."""
    p = rng.standard_normal((4, 5))
    g, m, v = rng.standard_normal((4, 5)), np.zeros((4, 5)), np.zeros((4, 5))
    ref = [a.copy() for a in (p, m, v)]
    K.adamw_update(p, g, m, v, 1, 1e-3, weight_decay=0.1)
    O.adamw_update(ref[0], g, ref[1], ref[2], 1, 1e-3, weight_decay=0.1)
    assert_parity(p, ref[0], np.float64, "p")


# ----------------------------------------------------------------------------- matmul, exp, tanh


@pytest.mark.parametrize("M, K_, N", [(1, 1, 1), (4, 4, 4), (5, 7, 3), (13, 9, 17)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul(M, K_, N, dtype, rng):
    a, b = _randn(rng, dtype, M, K_), _randn(rng, dtype, K_, N)
    assert_parity(K.matmul(a, b), a @ b, dtype, "matmul")


@big
def test_matmul_512(rng):
    a, b = rng.standard_normal((512, 512)), rng.standard_normal((512, 515))
    assert_parity(K.matmul(a, b), a @ b, np.float64, "matmul 512")


# M (rows of out) x K x Nc: one row (decoding), T = 1, the edges of the register tile (4 x 64 or 4 x
# 16) and of the packed blocks of B (KC = 256 or 1024 rows, 256-column tasks), and K = 0
PACKED_SHAPES = [(1, 1, 1), (1, 16, 300), (3, 5, 63), (4, 64, 64), (5, 7, 65), (9, 20, 129), (130, 0, 70),
                 pytest.param(67, 300, 130, marks=big), pytest.param(9, 257, 129, marks=big),
                 pytest.param(260, 256, 257, marks=big), pytest.param(2, 513, 520, marks=big),
                 pytest.param(9, 1030, 24, marks=big)]  # fmt: skip


@pytest.mark.parametrize("M, K_, N", PACKED_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_product_every_layout(M, K_, N, dtype, rng, build):
    """kernels.linear._product, the GEMM behind linear_forward/backward, against float64 NumPy:
    A and B each C-ordered or a transposed view (dx = dout @ w.T and dw = x.T @ dout read them
    so, and the tied head's wte.T), with and without a bias, overwriting or accumulating (`add`),
    and the column sums of B (db) taken while B is packed. Up to ROWS rows it is the unpacked
    few-row kernel (decoding), above it the packed one."""
    from nanotransformer.kernels import linear as KL

    for a_t in (False, True):
        for b_t in (False, True):
            # a scaled by 1/sqrt(K): out is O(1), the scale the float32 tolerance is stated for
            a = _randn(rng, dtype, *((K_, M) if a_t else (M, K_)), scale=1 / math.sqrt(max(K_, 1)))
            b = _randn(rng, dtype, *((N, K_) if b_t else (K_, N)))
            A, B = (a.T if a_t else a), (b.T if b_t else b)
            bias, before = _randn(rng, dtype, N), _randn(rng, dtype, M, N)
            A64, B64 = A.astype(np.float64), B.astype(np.float64)
            what = f"{M}x{K_}x{N} a_t={a_t} b_t={b_t}"
            assert_parity(KL._product(A, B, bias=bias), (A64 @ B64 + bias).astype(dtype), dtype, what + " bias")
            got = KL._product(A, B, out=before.copy(), add=True)
            assert_parity(got, (before + A64 @ B64).astype(dtype), dtype, what + " add")
            sums = np.zeros(N, dtype)
            KL._product(A, B, colsum=sums)
            assert_parity(sums, B64.sum(axis=0).astype(dtype), dtype, what + " colsum")
    a = _randn(rng, dtype, M, K_, scale=1 / math.sqrt(max(K_, 1)))
    strided = _randn(rng, dtype, K_, 2 * N)[:, ::2]  # neither C- nor F-ordered: copied once
    want = (a.astype(np.float64) @ strided).astype(dtype)
    assert_parity(KL._product(a, strided), want, dtype, f"{M}x{K_}x{N} strided B")


@pytest.mark.parametrize("rows, C_in, C_out", [(20, 4, 0), (0, 4, 5), (20, 0, 5), (3, 0, 5)])
def test_linear_empty_shapes(rows, C_in, C_out, rng):
    """A linear with no rows, no inputs or no outputs gives what the NumPy twin gives (empty
    arrays, out = bias, db = the sums of dout), through the packed and the few-row paths alike."""
    x, w, b = rng.standard_normal((rows, C_in)), rng.standard_normal((C_in, C_out)), rng.standard_normal(C_out)
    out, cache = K.linear_forward(x, w, b)
    ref, ref_cache = L.linear_forward(x, w, b)
    assert_parity(out, ref, np.float64, "out")
    dout = rng.standard_normal(out.shape)
    for got, want, name in zip(K.linear_backward(dout, cache), L.linear_backward(dout, ref_cache), ("dx", "dw", "db")):
        assert_parity(got, want, np.float64, name)


@pytest.mark.skipif(JIT_OFF, reason="thread counts only exist compiled")
def test_packed_product_same_bits_for_any_split(rng):
    """Every element of out is one task's sequential sum, so the task grid (set from the thread
    count) changes no bit of the result, nor of the fused column sums; nor does reading A
    transposed (the same numbers summed in the same order)."""
    from nanotransformer.kernels import linear as KL

    a, b = _randn(rng, np.float32, 300, 600), _randn(rng, np.float32, 600, 333)
    runs = []
    for split in ((256, 256), (4, 64), (64, 128), (300, 384)):
        for a_t in (False, True):  # A read as stored, or as a transposed array (dW's x.T; AVX2 copies its micro-panels)
            sums = np.zeros(333, np.float32)
            out = np.empty((300, 333), np.float32)
            kblk = min(KL.KC, 600)  # 600 = 2 x 256 + 88 rows (AVX-512's KC), or one block (AVX2's 1024)
            bp = np.empty((-(-600 // kblk), -(-333 // KL.NR), kblk, KL.NR), np.float32)  # 333: a partial last panel
            KL._pack_nb(bp, b, False, sums)
            KL._gemm_nb(out, np.ascontiguousarray(a.T) if a_t else a, bp, np.empty(0, np.float32), a_t, False, *split)
            runs.append((out, sums))
    for out, sums in runs[1:]:
        np.testing.assert_array_equal(out, runs[0][0])
        np.testing.assert_array_equal(sums, runs[0][1])
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # the same with one thread running the whole grid
    try:
        np.testing.assert_array_equal(KL._product(a, b), runs[0][0])  # (300 rows: the packed kernel)
    finally:
        numba.set_num_threads(threads)
    for M, Nc in ((2048, 1152), (128, 65), (1, 300), (384, 384), (4, 8)):
        rows, cols = KL._split(M, Nc, 2)
        assert rows % KL.MR == 0 and cols % KL.NR == 0 and rows <= 256 and cols <= 256, (M, Nc)
        n_i, n_j = -(-M // rows), -(-Nc // cols)
        assert n_i * n_j >= 4 or (rows, cols) == (KL.MR, KL.NR), (M, Nc)  # 2 tasks per thread, if it can
        assert (n_i - 1) * rows < M and (n_j - 1) * cols < Nc, (M, Nc)  # no empty task
    # evened: 384 rows as two blocks of 192 (195 with AVX2's 5-row tiles), not 256 + 128
    assert KL._split(384, 384, 2) == (-(-192 // KL.MR) * KL.MR, 192) and KL._split(1, 300, 2) == (KL.MR, 64)


@numba.njit
def _exp_tanh_f32(x):
    e = np.empty_like(x)
    t = np.empty_like(x)
    for i in range(x.shape[0]):
        e[i] = KJ.exp(x[i])
        t[i] = KJ.tanh(x[i])
    return e, t


def test_float32_exp_tanh_accuracy():
    """The vectorisable float32 exp/tanh (compiled) agree with float64 libm to float32 rounding."""
    x = np.concatenate([np.linspace(-110, 95, 20001), [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    with np.errstate(over="ignore"):
        e, t = _exp_tanh_f32(x)
        e_ref, t_ref = np.exp(x.astype(np.float64)), np.tanh(x.astype(np.float64))
    finite = e_ref < np.finfo(np.float32).max
    np.testing.assert_allclose(e[finite], e_ref[finite], rtol=3e-7, atol=1e-44)  # 1e-44: float32's denormal floor
    assert np.all(np.isinf(e[~finite]))
    np.testing.assert_allclose(t, t_ref, rtol=0, atol=2e-7)
    e_special, t_special = _exp_tanh_f32(np.array([-np.inf, np.inf, np.nan], np.float32))
    assert e_special[0] == 0 and e_special[1] == np.inf and np.isnan(e_special[2])
    assert t_special[0] == -1 and t_special[1] == 1 and np.isnan(t_special[2])


def test_nan_propagates(rng):
    """fastmath without nnan: a NaN in the input shows up in the output, not as a number."""
    x = _randn(rng, np.float32, 2, 5)
    x[1, 2] = np.nan
    assert np.isnan(K.gelu_forward(x)[0][1, 2])
    loss, _ = K.cross_entropy_forward(x, np.array([0, 1]))
    assert np.isnan(loss)


# ----------------------------------------------------------------------------- wrappers


def test_attention_padding_mask_falls_back_to_reference(rng):
    q, k, v = (rng.standard_normal((2, 2, 4, 3)) for _ in range(3))
    mask = np.zeros((2, 4), bool)
    mask[0, 1] = True
    out, cache = KA.attention_forward(q, k, v, key_padding_mask=mask)
    assert cache[0] == "reference"
    ref, ref_cache = A.attention_forward(q, k, v, key_padding_mask=mask)
    np.testing.assert_array_equal(out, ref)
    dout = rng.standard_normal(out.shape)
    for a, b in zip(KA.attention_backward(dout, cache), A.attention_backward(dout, ref_cache)):
        np.testing.assert_array_equal(a, b)


def test_attention_non_contiguous_inputs(rng):
    """The model hands split_heads views (transposed); the wrapper copies what it must."""
    qkv = rng.standard_normal((2, 5, 3 * 8))
    q, k, v = (A.split_heads(t, 2) for t in np.split(qkv, 3, axis=-1))
    out, _ = KA.attention_forward(q, k, v, causal=True)
    ref, _ = A.attention_forward(q, k, v, causal=True)
    assert_parity(out, ref, np.float64, "attention on views")


@pytest.mark.parametrize(
    "NH, NKV, Tq, causal, want",
    [(3, 3, 1, True, "rows"), (7, 1, 1, True, "rows"), (8, 1, 1, True, "tiled"), (2, 2, 7, False, "rows"),
     (2, 2, 8, False, "tiled"), (2, 2, 2, True, "tiled"), (6, 2, 2, False, "rows"), (4, 2, 4, False, "tiled")],
)
def test_attention_kernel_choice(NH, NKV, Tq, causal, want, monkeypatch, rng):
    """Which forward kernel runs: the one without tiles when every query row sees every key and a
    key/value head has at most FEW_ROWS rows (its n_rep query heads times Tq), the tiled one
    otherwise. Both give the reference's numbers (test_parity), so only this shows the boundary."""
    assert KA.FEW_ROWS == 7  # the cases above sit on either side of it
    ran = []
    monkeypatch.setattr(KA, "run", lambda kernel, work, *args: ran.append(kernel))
    q = rng.standard_normal((1, NH, Tq, 4))
    k, v = rng.standard_normal((2, 1, NKV, 9, 4))
    KA.attention_forward(q, k, v, causal)
    assert ran == [KA._attention_rows_nb if want == "rows" else KA._attention_forward_nb]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq, causal", [(1, True), (3, True), (4, False), (20, False)])
def test_attention_reads_kv_cache_buffers_in_place(Tq, causal, dtype, rng):
    """Keys and values that are the first Tk rows of longer buffers (a `model.KVCache`'s views)
    are read in place, not copied; the rows after Tk are NaN here, so reading one would show."""
    B, NH, Tk, N, hs = 2, 3, 7, 13, 5
    q = rng.standard_normal((B, NH, Tq, hs)).astype(dtype)
    kb, vb = (np.full((B, NH, N, hs), np.nan, dtype) for _ in range(2))
    kb[:, :, :Tk], vb[:, :, :Tk] = (rng.standard_normal((B, NH, Tk, hs)) for _ in range(2))
    k, v = kb[:, :, :Tk], vb[:, :, :Tk]
    assert KA._leading_rows(k, Tk).base is kb and KA._leading_rows(v, Tk).base is vb
    assert KA._leading_rows(kb[:, :, 1 : Tk + 1], Tk).base is not kb  # not the leading rows: copied
    assert KA._leading_rows(kb[:, :, : 2 * Tk : 2], Tk).base is not kb  # every other row: copied
    wide = np.zeros((B, NH, N, 2 * hs), np.float64 if dtype == np.float32 else np.complex128)
    alias = wide.view(dtype)[..., ::2][:, :, :Tk] if dtype == np.float32 else wide.real[:, :, :Tk]
    assert alias.strides == wide[:, :, :Tk].strides  # same strides and start as its base, but another dtype
    assert KA._leading_rows(alias, Tk).dtype == dtype  # so it is copied, not read as its base's dtype
    out, cache = KA.attention_forward(q, k, v, causal)
    want, want_cache = KA.attention_forward(q, k.copy(), v.copy(), causal)
    np.testing.assert_array_equal(out, want)  # the same kernel on the same numbers: the same bits
    assert_parity(out, A.attention_forward(q, k, v, causal)[0], dtype, "attention on cache views")
    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, ref in zip(KA.attention_backward(dout, cache), KA.attention_backward(dout, want_cache)):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(
    "fwd, bwd, make",
    [
        (K.rmsnorm_forward, K.rmsnorm_backward, lambda r: (r.standard_normal((2, 3, 5)), r.standard_normal(5))),
        (K.rope_forward, K.rope_backward, lambda r: (r.standard_normal((2, 2, 3, 6)), 50.0, 4)),
    ],
    ids=["rmsnorm", "rope"],
)
def test_kernel_backward_gradcheck(fwd, bwd, make, rng):
    """The kernels' own backward against central differences of the kernels' own forward (float64),
    not only against the NumPy twin's backward."""
    result = gradcheck(fwd, bwd, *make(rng))
    assert result.ok, str(result)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_rope_strided_dout(dtype, rng):
    """Strided upstream gradients (a transposed view) give the twin's gradients; inputs untouched."""
    x = _heads_view(rng, dtype, 2, 3, 5, 8)
    w = _randn(rng, dtype, 8)
    dout = _heads_view(rng, dtype, 2, 3, 5, 8)
    x0 = x.copy()
    for kf, kb, rf, rb, args in [
        (K.rmsnorm_forward, K.rmsnorm_backward, L.rmsnorm_forward, L.rmsnorm_backward, (x, w)),
        (K.rope_forward, K.rope_backward, A.rope_forward, A.rope_backward, (x, 100.0, 3)),
    ]:
        (out_k, ck), (out_r, cr) = kf(*args), rf(*args)
        assert_parity(out_k, out_r, dtype, f"{kf.__name__}")
        grads_k, grads_r = kb(dout, ck), rb(dout, cr)
        for gk, gr in zip(*(g if isinstance(g, tuple) else (g,) for g in (grads_k, grads_r))):
            assert_parity(gk, gr, dtype, f"{kb.__name__} on a strided dout")
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize(
    "layout",
    [
        lambda a: a[0, 1],  # (T, hs): 2-D
        lambda a: a.reshape(2, 3, 2, 5, 8).transpose(1, 0, 2, 3, 4),  # 5-D, strided
        lambda a: a[:, :, ::-1],  # negative stride along T: copied first
        lambda a: np.repeat(a, 2, axis=-1)[..., ::2],  # stride 2 along hs: copied first
        lambda a: np.asfortranarray(a),
        lambda a: a.transpose(0, 2, 1, 3)[:, :, 1:4],  # a window of a transposed view
    ],
    ids=["2d", "5d_view", "reversed_T", "hs_stride2", "fortran", "window"],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_any_layout(layout, dtype, rng):
    """The wrapper reads rows in place when they are contiguous and copies otherwise: every
    layout gives the twin's result and gradient, in the input's shape, without writing to x."""
    x = layout(_randn(rng, dtype, 4, 3, 5, 8))
    x0 = x.copy()
    (out, cache), (ref, ref_cache) = K.rope_forward(x, 300.0, 2), A.rope_forward(x, 300.0, 2)
    assert_parity(out, ref, dtype, "rope forward")
    dout = layout(_randn(rng, dtype, 4, 3, 5, 8))
    assert_parity(K.rope_backward(dout, cache), A.rope_backward(dout, ref_cache), dtype, "rope backward")
    np.testing.assert_array_equal(x, x0)


def test_rope_angle_tables_are_shared_and_read_only():
    """The wrapper memoises its (T, hs/2) cos/sin tables: q and k of every layer share one pair,
    which no caller may write into."""
    x = np.zeros((1, 2, 4, 6), np.float32)
    (_, c1), (_, c2) = K.rope_forward(x, 10000.0, 2), K.rope_forward(x + 1, 10000, 2)
    assert c1[0] is c2[0] and c1[1] is c2[1]
    assert c1[0].shape == (4, 3) and c1[0].dtype == np.float32 and not c1[0].flags.writeable
    cos, sin = A.rope_angles(4, 6, 10000.0, 2, np.float32)
    np.testing.assert_array_equal(c1[0], cos[:, :3])
    np.testing.assert_array_equal(c1[1], sin[:, :3])
    assert K.rope_forward(x.astype(np.float64), 10000.0, 2)[1][0].dtype == np.float64  # one table per dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_mha_llama_switches_numba_vs_numpy(dtype, rng):
    """The way the model calls the new kernels: attention with QK-norm on split_heads' views,
    RoPE and grouped-query heads, all ops from the "numba" backend against all from "numpy"."""
    B, T, C, NH, NKV = 2, 5, 16, 4, 2
    hs = C // NH
    x = _randn(rng, dtype, B, T, C)
    w_qkv = _randn(rng, dtype, C, C + 2 * NKV * hs, scale=C**-0.5)
    w_proj = _randn(rng, dtype, C, C, scale=C**-0.5)
    qn, kn = _randn(rng, dtype, hs), _randn(rng, dtype, hs)
    dout = _randn(rng, dtype, B, T, C)
    res = {}
    for name in ("numba", "numpy"):
        out, cache = A.mha_forward(x, w_qkv, None, w_proj, None, NH, ops=get_ops(name), n_kv_head=NKV,
                                   rope_theta=500.0, q_norm=qn, k_norm=kn)  # fmt: skip
        res[name] = (out,) + tuple(g for g in A.mha_backward(dout, cache) if g is not None)
    assert len(res["numba"]) == len(res["numpy"]) == 6  # out, dx, dw_qkv, dw_proj, dq_norm, dk_norm
    for i, (a, b) in enumerate(zip(res["numba"], res["numpy"])):
        assert_parity(a, b, dtype, f"mha output/gradient {i}")


def test_linear_any_leading_dims(rng):
    x, w, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)
    out, cache = K.linear_forward(x, w, b)
    assert_parity(out, x @ w + b, np.float64, "linear 4-d")
    dx, dw, db = K.linear_backward(np.ones_like(out), cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda r: K.linear_forward(r.standard_normal((2, 3)), r.standard_normal((4, 5)), None), "x"),
        (lambda r: K.linear_forward(r.standard_normal((2, 4)).astype(np.float32), r.standard_normal((4, 5)), None), "w"),
        (lambda r: K.layernorm_forward(r.standard_normal((2, 4)), r.standard_normal(3), r.standard_normal(4)), "w"),
        (lambda r: K.rmsnorm_forward(r.standard_normal((2, 4)), r.standard_normal(3)), "w"),
        (lambda r: K.rmsnorm_forward(r.standard_normal((2, 4)), r.standard_normal(4).astype(np.float32)), "w"),
        (lambda r: K.rmsnorm_forward(r.standard_normal((2, 4)), r.standard_normal(4), 0.0), "eps"),
        (lambda r: K.rope_forward(r.standard_normal((1, 3, 5))), "hs"),
        (lambda r: K.rope_forward(r.standard_normal((1, 3, 4)), 10000.0, -1), "offset"),
        (lambda r: K.rope_forward(r.standard_normal((1, 3, 4)), float("nan")), "theta"),
        (lambda r: K.rope_forward(r.standard_normal(4)), "x"),
        (lambda r: K.rope_backward(r.standard_normal((1, 3, 6)), K.rope_forward(r.standard_normal((1, 3, 4)))[1]), "dout"),
        (lambda r: K.gelu_forward(np.arange(4)), "x"),
        (lambda r: K.cross_entropy_forward(r.standard_normal((2, 4)), np.array([0, 4])), "targets"),
        (lambda r: K.cross_entropy_forward(r.standard_normal((2, 4)), np.array([0])), "targets"),
        (lambda r: KA.attention_forward(*(r.standard_normal((1, 1, 3, 2)) for _ in range(2)), r.standard_normal((1, 1, 4, 2))), "v"),
        (lambda r: KA.attention_forward(r.standard_normal((1, 1, 3, 2)), *(r.standard_normal((1, 1, 2, 2)) for _ in range(2)), causal=True), "q"),
        (lambda r: K.adamw_update(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), 0, 1e-3), "t"),
        (lambda r: K.adamw_update(np.zeros(3), np.zeros(4), np.zeros(3), np.zeros(3), 1, 1e-3), "g"),
        (lambda r: K.adamw_update(np.zeros((3, 2)).T, np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), 1, 1e-3), "p"),
        (lambda r: K.embedding_backward(r.standard_normal((2, 3)), (np.array([0, 5]), 5)), "cache ids"),  # would write past dtable
        (lambda r: K.embedding_backward(r.standard_normal((3, 3)), (np.array([0, 4]), 5)), "dout"),
    ],
    ids=["linear_shape", "linear_dtype", "layernorm_w", "rmsnorm_w", "rmsnorm_dtype", "rmsnorm_eps", "rope_odd_hs",
         "rope_offset", "rope_theta", "rope_1d", "rope_dout", "gelu_int", "ce_range", "ce_shape", "att_v", "att_causal", "adamw_t", "adamw_g", "adamw_strided",
         "embedding_ids", "embedding_dout"],
)
def test_wrappers_validate(call, arg, rng):
    """Wrappers validate (kernels never do): one ValueError naming the argument."""
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        call(rng)


@pytest.mark.parametrize("threads", [1, 2])
def test_embedding_scatter_same_bits_as_add_at(threads, rng):
    """The scatter-add sums each element in token order, as np.add.at does (chapters 02 and 10 say
    the bits agree), whatever the thread count: float32, ids repeating many times."""
    import numba

    ids = rng.integers(0, 7, size=(16, 64))
    dout = rng.standard_normal((16, 64, 200)).astype(np.float32)  # 200 columns: four CW-wide chunks
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = K.embedding_backward(dout, (ids, 9))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(got, L.embedding_backward(dout, (ids, 9)))


def _float_kernels():
    """Every `*_nb` function of the float kernel modules (kernels and jit.py's helpers), once each."""
    found = {id(f): f for mod in FLOAT_MODULES for n, f in vars(mod).items() if n.endswith("_nb") and callable(f)}
    return list(found.values())


def test_kernels_are_cached_and_use_one_fastmath_set():
    """STYLE: one FASTMATH constant, never nnan/ninf; every kernel is cache=True."""
    assert not {"nnan", "ninf", "fast"} & set(K.FASTMATH)
    kernels = _float_kernels()
    assert len(kernels) >= 10
    if not JIT_OFF:
        for kern in kernels + [k.serial for k in kernels if hasattr(k, "serial")]:
            assert type(kern._cache).__name__ == "FunctionCache", f"{kern.py_func.__name__}: not cache=True"
            assert kern.targetoptions["fastmath"] == K.FASTMATH, kern


@pytest.mark.skipif(JIT_OFF, reason="nothing is compiled or cached with NUMBA_DISABLE_JIT=1")
def test_kernel_caches_are_keyed_on_jit_py():
    """Each float kernel's on-disk cache stamp includes jit.py's hash (jit.cache_depends_on_this_file)."""
    for kern in _float_kernels():
        for build in (kern, getattr(kern, "serial", kern)):
            assert build._cache._cache_file._source_stamp[1] == KJ._THIS_FILE_SHA256, build.py_func.__name__


_GELU_SCRIPT = """
import numpy as np
import ntcopy.kernels as K
out, _ = K.gelu_forward(np.linspace(-3, 3, 7, dtype=np.float32))  # 7 elements: the serial build
print(out.tolist())
"""


@pytest.mark.slow
@pytest.mark.skipif(JIT_OFF, reason="nothing is compiled or cached with NUMBA_DISABLE_JIT=1")
def test_editing_jit_py_invalidates_other_modules_caches(tmp_path):
    """End to end, in a copy of the package: gelu.py's kernel inlines jit.tanh; after an edit of
    jit.py alone, a new process must recompile it rather than load the old machine code (Numba
    by itself would load it: its cache looks only at gelu.py)."""
    src = Path(K.__file__).parent.parent
    pkg = tmp_path / "ntcopy"  # another name: every import inside the package is relative
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__", "data", "*.nb[ic]"))
    (pkg / "__init__.py").write_text("")  # only the kernels and what they import

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}  # cache in the copy's __pycache__
    env.update(NUMBA_DEBUG_CACHE="1", PYTHONPATH=str(tmp_path))

    def run():
        cmd = [sys.executable, "-c", _GELU_SCRIPT]
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
        loaded = any("data loaded from" in ln and "_gelu_forward_nb" in ln for ln in out.stdout.splitlines())
        return out.stdout.strip().splitlines()[-1], loaded

    before, loaded = run()
    assert not loaded
    again, loaded = run()
    assert again == before and loaded  # untouched: machine code from the cache
    jit_py = pkg / "kernels" / "jit.py"
    old = "return np.float32(1.0) - np.float32(2.0) / (_exp_f32("
    assert old in jit_py.read_text()
    jit_py.write_text(jit_py.read_text().replace(old, "return np.float32(0.5) - np.float32(2.0) / (_exp_f32("))
    after, loaded = run()
    assert not loaded and after != before  # recompiled with the edited tanh


def test_lse_cache_is_small(rng):
    """The fused attention keeps the row log-sum-exp, not a Tq x Tk matrix."""
    q = rng.standard_normal((2, 3, 16, 4))
    _, cache = KA.attention_forward(q, q, q, causal=True)
    sizes = [a.size for a in cache if isinstance(a, np.ndarray)]
    assert max(sizes) <= q.size and math.prod((2, 3, 16)) in sizes


@pytest.mark.parametrize("env, expected", [
    ({}, f"{KJ.SPIN_COUNT} None"),  # nothing set: idle OpenMP threads spin briefly, then sleep
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "None PASSIVE"),  # a policy the user set is left alone
    ({"GOMP_SPINCOUNT": "5"}, "5 None"),
])
def test_thread_wait_policy(env, expected):
    """Importing jit.py (before any kernel runs) sets GOMP_SPINCOUNT, unless the user chose a policy."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, nanotransformer.kernels.jit\n"
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == expected
