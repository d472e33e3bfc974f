"""The backend switch (numpy | numba | auto, argument > environment > default) and whole-model
parity: a GPT gives the same loss and gradients on every backend."""
import numpy as np
import pytest

from nanotransformer import backend
from nanotransformer.backend import AUTO, BACKENDS, ENV_VAR, OP_NAMES, OP_PAIRS, get_ops, resolve_backend
from nanotransformer.model import GPT, GPTConfig


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_resolve_default_is_auto(no_env):
    assert resolve_backend() == "auto"
    assert resolve_backend(None) == "auto"


def test_resolve_env_and_argument(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "numba")
    assert resolve_backend() == "numba"
    assert resolve_backend("numpy") == "numpy"  # an explicit argument beats the environment
    assert get_ops().name == "numba"


def test_resolve_rejects_unknown(monkeypatch):
    with pytest.raises(ValueError, match="^backend:"):
        resolve_backend("cuda")
    monkeypatch.setenv(ENV_VAR, "torch")  # the error names the environment variable, not an argument
    with pytest.raises(ValueError, match=r"^\$NANOTRANSFORMER_BACKEND \(the environment variable\): .*got 'torch'"):
        get_ops()
    with pytest.raises(ValueError, match="^backend:"):  # an explicit argument wins, and is named
        get_ops("cuda")


@pytest.mark.parametrize("name", BACKENDS + ("auto",))
def test_namespace_is_complete(name):
    ops = get_ops(name)
    for op in OP_NAMES:
        assert callable(getattr(ops, op)), op
    assert set(ops.choices) == set(OP_PAIRS)
    assert get_ops(name) is ops  # built once


def test_auto_follows_the_table_pairwise():
    auto, per_backend = get_ops("auto"), {b: get_ops(b) for b in BACKENDS}
    assert set(AUTO) == set(OP_PAIRS) and set(AUTO.values()) <= set(BACKENDS)
    for pair, ops in OP_PAIRS.items():
        for op in ops:  # forward and backward of a pair share a cache, so they share a backend
            assert getattr(auto, op) is getattr(per_backend[AUTO[pair]], op), op


def test_auto_linear_bad_input_names_the_argument(rng):
    """What is not an array gets auto's linear wrapper's one error naming x, not an AttributeError."""
    w = rng.standard_normal((1, 3))
    with pytest.raises((TypeError, ValueError), match="x"):
        get_ops("auto").linear_forward([[1.0]], w)
    with pytest.raises((TypeError, ValueError), match="x"):
        get_ops("auto").linear_forward(np.float64(1.0), w)


def test_numpy_namespace_is_the_reference():
    from nanotransformer import attention, layers, optim

    ops = get_ops("numpy")
    assert ops.linear_forward is layers.linear_forward
    assert ops.attention_backward is attention.attention_backward
    assert ops.adamw_update is optim.adamw_update


# ----------------------------------------------------------------------------- whole model


def _loss_and_grads(backend_name, dtype, cfg_kwargs, ids, targets):
    model = GPT(GPTConfig(backend=backend_name, **cfg_kwargs), dtype=dtype, seed=3)
    assert model.ops is get_ops(backend_name)
    _, loss = model.forward(ids, targets)
    model.backward()
    return loss, model.grads.copy(), model


CFG = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, d_model=12)


def _batch(T=11, B=3):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, CFG["vocab_size"], size=(B, T))
    targets = rng.integers(0, CFG["vocab_size"], size=(B, T))
    targets[0, :2] = -100  # ignored positions go through every backend too
    return ids, targets


@pytest.mark.parametrize("other", ["numba", "auto"])
def test_gpt_float64_same_loss_and_grads(other):
    """float64: the kernels sum in another order, so agreement is at rounding level (measured:
    max |diff| ~ 3e-16 of the largest gradient). An entry near 0 is a cancellation whose
    error scales with the large entries, hence atol relative to the largest gradient."""
    ids, targets = _batch()
    loss_ref, g_ref, _ = _loss_and_grads("numpy", np.float64, CFG, ids, targets)
    loss, g, _ = _loss_and_grads(other, np.float64, CFG, ids, targets)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-13 * np.abs(g_ref).max())


@pytest.mark.parametrize("other", ["numba", "auto"])
def test_gpt_float32_same_loss_and_grads(other):
    """float32: loss to 1e-5 relative; gradients with the kernels' rtol 1e-4, and atol 1e-5 of
    the largest gradient rather than an absolute 1e-5 (gradients here are ~1e-2, and an entry
    near 0 is a cancellation whose error scales with the large entries). Measured: max |diff|
    ~1.5e-7 of the largest gradient."""
    ids, targets = _batch()
    loss_ref, g_ref, _ = _loss_and_grads("numpy", np.float32, CFG, ids, targets)
    loss, g, _ = _loss_and_grads(other, np.float32, CFG, ids, targets)
    assert g.dtype == np.float32
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5 * np.abs(g_ref).max())


def test_gpt_t1_and_generation_cache_parity():
    """T = 1 training batch, and a KV-cache decode step (Tq = 1 < Tk), match across backends."""
    ids, targets = _batch(T=1)
    loss_ref, g_ref, m_ref = _loss_and_grads("numpy", np.float64, CFG, ids, targets)
    loss, g, m = _loss_and_grads("numba", np.float64, CFG, ids, targets)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-13 * np.abs(g_ref).max())
    # decode: the logits of position 5 given 5 cached positions, on both backends
    from nanotransformer.model import KVCache

    seq = _batch(T=6, B=1)[0]
    outs = []
    for model in (m_ref, m):
        cache = KVCache(CFG["n_layer"])
        model.forward(seq[:, :5], kv_cache=cache)
        logits, _ = model.forward(seq[:, 5:], kv_cache=cache)
        outs.append(logits)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-10, atol=1e-12)


def test_env_var_reaches_the_model(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "numba")
    model = GPT(GPTConfig(**CFG), seed=0)
    assert model.ops.name == "numba"
    monkeypatch.setenv(ENV_VAR, "numpy")
    assert GPT(GPTConfig(backend="numba", **CFG), seed=0).ops.name == "numba"  # argument wins


def test_backend_module_has_one_choice_point():
    """The NumPy namespace exists without importing Numba (it is imported on first use)."""
    assert backend._BUILT["numpy"].name == "numpy"


def test_keep_freed_memory(monkeypatch):
    """glibc keeps freed activations (no trim-and-refault each step); the switch turns it off."""
    import sys

    monkeypatch.setitem(backend._MEMORY, "kept", None)
    monkeypatch.setenv("NANOTRANSFORMER_KEEP_MEMORY", "0")
    assert backend.keep_freed_memory() is False
    monkeypatch.setitem(backend._MEMORY, "kept", None)
    monkeypatch.delenv("NANOTRANSFORMER_KEEP_MEMORY")
    assert backend.keep_freed_memory() is sys.platform.startswith("linux")
