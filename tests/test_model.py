"""The assembled GPT: flat buffer and names, init, forward shapes, and the whole-model gradient check."""
import math

import numpy as np
import pytest
from conftest import assert_step_parity

from nanotransformer import model as model_mod
from nanotransformer.gradcheck import model_gradcheck
from nanotransformer.model import GPT, GPTConfig

# V vocab, T block size, L layers, NH heads, C channels: the tiny config of the whole-model check
TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    """Thousands of tiny forwards: run them on the NumPy reference; the other backends are compared
    with it in test_backends_agree."""
    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "numpy")


def tiny_model(dtype=np.float64, seed=0, **kw):
    return GPT(GPTConfig(**{**TINY, **kw}), dtype=dtype, seed=seed)


def whole_model_gradcheck(m, ids, targets, coords_per_tensor=20, seed=0, dropout_seed=None):
    """{name: relative error} over sampled coordinates of every named parameter tensor."""
    train = dropout_seed is not None

    def loss():
        rng = np.random.default_rng(dropout_seed) if train else None  # the same dropout mask every call
        return m.forward(ids, targets, train=train, rng=rng)[1]

    return model_gradcheck(m, loss, coords_per_tensor, seed)


def _perturbed(m, rng):
    """Move off the GPT-2 init (LN gains 1, biases 0), where some gradient terms vanish."""
    m.params += rng.normal(0.0, 0.1, size=m.params.shape)
    return m


# The Llama switches, one at a time and together (TINY has 2 heads: GQA 2 -> 1 is multi-query)
LLAMA = dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=1)
LLAMA_VARIANTS = {
    "rmsnorm": {"norm": "rmsnorm"},
    "rope": {"pos": "rope", "rope_theta": 100.0},
    "swiglu": {"mlp": "swiglu"},
    "gqa": {"n_kv_head": 1},
    "untied": {"tie_embeddings": False},
    "qk-norm": {"qk_norm": True},
    "llama": LLAMA,
    "qwen2": {**LLAMA, "qkv_bias": True},
    "llama-qk-norm-dropout": {**LLAMA, "qk_norm": True, "dropout": 0.2},
}


@pytest.mark.parametrize(
    "kw",
    [{}, {"bias": False}, {"pos": "sinusoidal"}, {"dropout": 0.2}, *LLAMA_VARIANTS.values()],
    ids=["default", "no-bias", "sinusoidal", "dropout", *LLAMA_VARIANTS],
)
def test_whole_model_gradcheck(kw, rng):
    m = _perturbed(tiny_model(**kw), rng)
    ids = rng.integers(0, TINY["vocab_size"], size=(2, 7))
    targets = rng.integers(0, TINY["vocab_size"], size=(2, 7))
    targets[0, 3] = -100  # an ignored position must contribute nothing
    errors = whole_model_gradcheck(m, ids, targets, dropout_seed=5 if "dropout" in kw else None)
    assert set(errors) == set(m.p)  # every parameter tensor was checked
    bad = {k: v for k, v in errors.items() if not v < 1e-6}
    assert not bad, f"gradient check failed: {bad}"


def test_whole_model_gradcheck_catches_a_dropped_term(rng, monkeypatch):
    """The check must fail if backward forgets a term: here the embedding-lookup half of the tied
    wte gradient (leaving only the LM-head half)."""
    m = _perturbed(tiny_model(), rng)
    ids = rng.integers(0, TINY["vocab_size"], size=(2, 7))
    targets = rng.integers(0, TINY["vocab_size"], size=(2, 7))
    monkeypatch.setattr(m.ops, "embedding_backward", lambda dout, cache: np.zeros((cache[1], dout.shape[-1])))
    errors = whole_model_gradcheck(m, ids, targets)
    assert errors["wte"] > 1e-3
    assert all(v < 1e-6 for k, v in errors.items() if k != "wte")


def test_param_names_shapes_and_flat_views():
    cfg = GPTConfig(vocab_size=13, block_size=6, n_layer=2, n_head=2, d_model=8)
    m = GPT(cfg, dtype=np.float32)
    C = 8
    expect = {"wte": (13, C), "wpe": (6, C), "ln_f.w": (C,), "ln_f.b": (C,),
              "h.1.ln_1.w": (C,), "h.1.attn.c_attn.w": (C, 3 * C), "h.1.attn.c_attn.b": (3 * C,),
              "h.1.attn.c_proj.w": (C, C), "h.1.mlp.c_fc.w": (C, 4 * C), "h.1.mlp.c_proj.w": (4 * C, C)}
    for name, shape in expect.items():
        assert m.p[name].shape == shape
        assert m.g[name].shape == shape
        assert np.shares_memory(m.p[name], m.params) and np.shares_memory(m.g[name], m.grads)
    assert "lm_head.w" not in m.p  # tied to wte
    assert m.params.dtype == np.float32 and m.params.ndim == 1
    assert m.num_params() == sum(v.size for v in m.p.values()) == m.params.size
    m.p["h.0.attn.c_proj.b"][...] = 7.0  # a view writes through to the buffer
    assert (m.params == 7.0).sum() == C
    # weight decay only on the 2-D weights
    for name, view in m.views(m.decay_mask).items():
        assert np.all(view == (1.0 if len(m.p[name].shape) == 2 else 0.0)), name


def test_bias_off_and_sinusoidal_change_the_parameter_set():
    m = GPT(GPTConfig(**TINY, bias=False, pos="sinusoidal"))
    assert not any(n.endswith(".b") for n in m.p)
    assert "wpe" not in m.p


def test_gpt2_init_statistics():
    m = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=4, n_head=4, d_model=64), dtype=np.float64)
    assert abs(m.p["h.0.attn.c_attn.w"].std() - 0.02) < 0.002
    resid = np.concatenate([m.p[f"h.{i}.mlp.c_proj.w"].ravel() for i in range(4)])
    assert abs(resid.std() - 0.02 / math.sqrt(2 * 4)) < 0.0007
    assert np.all(m.p["h.2.ln_1.w"] == 1) and np.all(m.p["h.2.mlp.c_fc.b"] == 0)
    same = GPT(m.config, dtype=np.float32)  # same seed, any dtype: the same numbers
    np.testing.assert_allclose(same.params, m.params, rtol=1e-6)


def test_forward_shapes_dtype_and_initial_loss(rng):
    m = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, d_model=32), dtype=np.float32)
    ids = rng.integers(0, 40, size=(3, 16))
    logits, loss = m.forward(ids, rng.integers(0, 40, size=(3, 16)))
    assert logits.shape == (3, 16, 40) and logits.dtype == np.float32
    assert abs(loss - math.log(40)) < 0.1  # small init: near-uniform predictions
    grads = m.backward()
    assert grads is m.grads and grads.dtype == np.float32 and np.all(np.isfinite(grads))
    logits2, loss2 = m.forward(ids[:, :5])
    assert loss2 is None and logits2.shape == (3, 5, 40)
    np.testing.assert_allclose(logits2, logits[:, :5], rtol=1e-4, atol=1e-5)  # causal: no peeking ahead


def test_hidden_pair_is_the_body_of_forward_and_backward(rng):
    """hidden_forward's output is what the tied head reads; hidden_backward from the head's
    gradient, plus the head's share of wte, gives exactly backward()'s gradients."""
    m = _perturbed(tiny_model(), rng)
    ids, targets = rng.integers(0, 11, size=(2, 6)), rng.integers(0, 11, size=(2, 6))
    logits, _ = m.forward(ids, targets)
    full = m.backward().copy()
    h, cache = m.hidden_forward(ids)
    np.testing.assert_allclose(h @ m.p["wte"].T, logits, rtol=1e-12, atol=1e-12)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dlogits = (p - np.eye(11)[targets]) / targets.size  # d mean cross-entropy / d logits
    m.grads[...] = np.nan  # every entry hidden_backward owns must be overwritten
    m.hidden_backward(dlogits @ m.p["wte"], cache)
    m.g["wte"] += (h.reshape(-1, 8).T @ dlogits.reshape(-1, 11)).T
    np.testing.assert_allclose(m.grads, full, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="first_block"):
        m.hidden_backward(dlogits @ m.p["wte"], cache, first_block=1)


def test_backward_without_targets_is_an_error(rng):
    m = tiny_model()
    m.forward(rng.integers(0, 11, size=(1, 4)))
    with pytest.raises(ValueError, match="backward"):
        m.backward()


@pytest.mark.parametrize(
    "kw, match",
    [({"vocab_size": 0}, "vocab_size"), ({"n_head": 3}, "n_head"), ({"dropout": 1.0}, "dropout"),
     ({"pos": "rotary"}, "pos"), ({"block_size": 2.5}, "block_size"), ({"norm": "batchnorm"}, "norm"),
     ({"mlp": "relu"}, "mlp"), ({"n_kv_head": 3, "n_head": 2}, "n_kv_head"), ({"n_kv_head": 0}, "n_kv_head"),
     ({"d_ff": 0}, "d_ff"), ({"pos": "rope", "n_head": 8, "d_model": 8}, "even head size"),
     ({"rope_theta": float("nan")}, "rope_theta"), ({"norm_eps": 0.0}, "norm_eps"), ({"qk_norm": 1}, "qk_norm"),
     ({"tie_embeddings": "no"}, "tie_embeddings")],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**TINY, **kw})


def test_config_round_trip_and_unknown_keys():
    cfg = GPTConfig(**TINY, dropout=0.1)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys.*n_embd"):
        GPTConfig.from_dict({**TINY, "n_embd": 8})


def test_bad_ids_are_clear_errors(rng):
    m = tiny_model()
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 11\), got 11"):
        m.forward(np.array([[1, 2, 11]]))
    with pytest.raises(ValueError, match="ids: expected an integer array"):
        m.forward(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="block_size=8"):
        m.forward(rng.integers(0, 11, size=(1, 9)))
    with pytest.raises(ValueError, match="targets"):
        m.forward(np.array([[1, 2]]), np.array([[1, 12]]))


def test_kv_cache_is_for_inference_only():
    m, ids = tiny_model(), np.array([[1, 2]])
    with pytest.raises(ValueError, match="kv_cache: only for inference"):
        m.forward(ids, ids, kv_cache=model_mod.KVCache(2))
    with pytest.raises(ValueError, match="kv_cache: only for inference"):
        m.forward(ids, train=True, rng=np.random.default_rng(0), kv_cache=model_mod.KVCache(2))
    with pytest.raises(ValueError, match="kv_cache: only for inference"):
        m.hidden_forward(ids, train=True, rng=np.random.default_rng(0), kv_cache=model_mod.KVCache(2))


def test_dropout_needs_an_rng_only_in_training(rng):
    m = tiny_model(dropout=0.5)
    ids = rng.integers(0, 11, size=(2, 6))
    a, _ = m.forward(ids)
    b, _ = m.forward(ids)
    assert np.array_equal(a, b)  # eval mode: deterministic
    with pytest.raises(ValueError, match="rng"):
        m.forward(ids, ids, train=True)
    c, _ = m.forward(ids, ids, train=True, rng=np.random.default_rng(0))
    assert not np.allclose(a, c)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("backend", ["numba", "auto"])
@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-9, 1e-12), (np.float32, 1e-4, 1e-5)])
def test_backends_agree(backend, dtype, rtol, atol, arch, rng):
    """The model composes whichever hot ops get_ops(config.backend) returns: same logits, loss and
    gradients as the NumPy reference (GPT-2's block and Llama's with QK-norm)."""
    cfg = dict(vocab_size=17, block_size=12, n_layer=2, n_head=2, d_model=16, dropout=0.1)
    if arch == "llama":
        cfg.update(LLAMA, qk_norm=True)
    ref = _perturbed(GPT(GPTConfig(**cfg, backend="numpy"), dtype=dtype), np.random.default_rng(3))
    other = GPT(GPTConfig(**cfg, backend=backend), dtype=dtype)
    other.params[...] = ref.params
    assert other.ops.name == backend
    assert_step_parity(ref, other, rng, rtol, atol)


# ----------------------------------------------------------------------------- the Llama switches


def test_llama_preset_and_overrides():
    cfg = GPTConfig.preset("llama", **TINY)
    assert (cfg.norm, cfg.pos, cfg.mlp, cfg.bias, cfg.tie_embeddings, cfg.n_kv_head) == ("rmsnorm", "rope", "swiglu", False, False, 1)
    assert GPTConfig.preset("llama", **{**TINY, "n_head": 4}).n_kv_head == 2  # half the query heads
    assert GPTConfig.preset("llama", **TINY, n_kv_head=2).n_kv_head == 2  # a flag overrides the preset
    assert GPTConfig.preset("gpt2", **TINY) == GPTConfig(**TINY)
    with pytest.raises(ValueError, match="arch"):
        GPTConfig.preset("mamba")


def test_llama_parameters_names_shapes_and_count():
    m = tiny_model(**LLAMA, qk_norm=True, qkv_bias=True)
    C, hs, V, F = 8, 4, 11, m.config.d_ff
    assert F == 24  # 8C/3 rounded up to a multiple of 8: as many MLP weights as GELU's 4C
    shapes = dict(m.specs)
    assert "wpe" not in shapes and "ln_f.b" not in shapes and "h.0.ln_1.b" not in shapes
    assert shapes["h.0.attn.c_attn.w"] == (C, C + 2 * 1 * hs)  # q, one key head, one value head
    assert shapes["h.0.attn.c_attn.b"] == (C + 2 * hs,) and "h.0.attn.c_proj.b" not in shapes
    assert shapes["h.0.attn.q_norm.w"] == (hs,) == shapes["h.0.attn.k_norm.w"]
    assert shapes["h.0.mlp.c_fc.w"] == (C, 2 * F) and shapes["h.0.mlp.c_proj.w"] == (F, C)
    assert m.specs[-1] == ("lm_head.w", (C, V))
    gpt2 = tiny_model(bias=False)
    mlp = lambda model: sum(math.prod(s) for n, s in model.specs if ".mlp." in n)  # noqa: E731
    assert abs(mlp(m) - mlp(gpt2)) / mlp(gpt2) < 0.15


def test_untied_head_is_its_own_parameter(rng):
    m = tiny_model(tie_embeddings=False)
    ids = rng.integers(0, 11, size=(2, 5))
    before, _ = m.forward(ids)
    head = m.p["lm_head.w"].copy()
    m.p["lm_head.w"][...] += rng.standard_normal(head.shape)
    after, _ = m.forward(ids)
    assert not np.allclose(before, after)  # the head reads lm_head.w ...
    m.p["lm_head.w"][...] = head
    unused = min(set(range(11)) - set(ids.ravel().tolist()))  # 10 ids drawn from 11: one is always left
    m.p["wte"][unused] += 1.0  # ... and wte only through the lookup: a row no input uses changes nothing
    np.testing.assert_array_equal(m.forward(ids)[0], before)


@pytest.mark.parametrize("kw", [LLAMA, {**LLAMA, "qk_norm": True, "n_kv_head": 2}], ids=["llama", "qk-norm"])
def test_llama_kv_cache_decoding_equals_the_full_forward(kw, rng):
    """RoPE rotates each cached key at its own position: decoding one token at a time must give
    the full forward's logits."""
    m = _perturbed(tiny_model(**kw), rng)
    ids = rng.integers(0, 11, size=(2, 8))
    full, _ = m.forward(ids)
    cache = model_mod.KVCache(2)
    steps = [m.forward(ids[:, :3], kv_cache=cache)[0]] + [m.forward(ids[:, t : t + 1], kv_cache=cache)[0] for t in range(3, 8)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-12)


def test_kv_cache_appends_into_buffers_that_double(rng):
    """Appending copies only the new positions into a buffer that doubles when full; what the
    cache hands out equals the concatenation of everything appended."""
    cache = model_mod.KVCache(1)
    parts = [(rng.standard_normal((2, 3, t, 4)), rng.standard_normal((2, 3, t, 4))) for t in (5, 1, 1, 20, 1)]
    bases = []
    for k, v in parts:
        got_k, got_v = cache.append(0, k, v)
        bases.append(got_k.base)
    for got, i in ((cache.k[0], 0), (cache.v[0], 1)):
        np.testing.assert_array_equal(got, np.concatenate([p[i] for p in parts], axis=2))
    assert len(cache) == 28 and cache.nbytes() == 2 * 2 * 3 * 28 * 4 * 8
    # 5 rows: a 16-row buffer that also takes the next two; 27 rows: a new one of 54, which takes the last
    assert bases[0] is bases[1] is bases[2] and bases[3] is not bases[0] and bases[4] is bases[3]
    assert bases[0].shape[2] == 16 and bases[3].shape[2] == 54
    held = cache.k[0]
    cache.reorder(np.array([1, 0]))
    k, v = rng.standard_normal((2, 2, 3, 1, 4))
    cache.append(0, k, v)  # after a reorder the rows move to new buffers: the new token follows them
    reordered = np.concatenate([p[0] for p in parts], axis=2)[::-1]
    np.testing.assert_array_equal(cache.k[0], np.concatenate([reordered, k], axis=2))
    np.testing.assert_array_equal(held, np.concatenate([p[0] for p in parts], axis=2))  # a held view is untouched
    for bad in (k[:1], k[:, :2], k[..., :3], k.astype(np.float32)):  # batch, heads, head size, dtype
        with pytest.raises(ValueError, match="layer 0's cache"):
            cache.append(0, bad, bad)
    assert len(cache) == 29  # nothing was written by the refused appends


def test_gqa_kv_cache_holds_only_the_key_value_heads(rng):
    ids = rng.integers(0, 11, size=(1, 6))
    sizes = {}
    for nkv in (4, 2, 1):
        m = tiny_model(**{**LLAMA, "n_head": 4, "n_kv_head": nkv})
        cache = model_mod.KVCache(2)
        m.forward(ids, kv_cache=cache)
        assert cache.k[0].shape == (1, nkv, 6, 2)
        sizes[nkv] = cache.nbytes()
    assert sizes[4] == 2 * sizes[2] == 4 * sizes[1] == 2 * 2 * 1 * 4 * 6 * 2 * 8  # k,v x L x B x NH x T x hs x 8 bytes


def test_rope_model_has_no_position_table_and_sees_order(rng):
    """Without wpe, positions enter only through RoPE: swapping two tokens must change the logits
    of the later positions."""
    m = _perturbed(tiny_model(pos="rope"), rng)
    ids = np.array([[1, 2, 3, 4]])
    a, _ = m.forward(ids)
    b, _ = m.forward(ids[:, [1, 0, 2, 3]])
    assert not np.allclose(a[0, 3], b[0, 3])
