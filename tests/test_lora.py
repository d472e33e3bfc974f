"""LoRA: the layer pair's gradients (float64), whole-model checks of every adapter tensor (GPT-2 and
Llama blocks, tied and untied, a classifier), fresh adapters = the base, merging, a frozen base
that stays bit-identical, backends agreeing, checkpoints (adapters only, base checksum, resume)."""
import numpy as np
import pytest
from conftest import backend_params, assert_step_parity

from nanotransformer import backend as backend_mod
from nanotransformer import block as block_mod
from nanotransformer.checkpoint import load_checkpoint, save_checkpoint
from nanotransformer.data import TokenData, build_tokenizer
from nanotransformer.finetuning import GPTClassifier
from nanotransformer.generation import generate_ids
from nanotransformer.gradcheck import gradcheck, model_gradcheck
from nanotransformer.layers import (
    frozen_linear_backward,
    frozen_linear_forward,
    lora_linear_backward,
    lora_linear_forward,
)
from nanotransformer.lora import LoRA
from nanotransformer.model import GPT, GPTConfig
from nanotransformer.tasks import LanguageModelTask
from nanotransformer.train import TrainConfig, Trainer

# V vocab, T block size, L layers, NH heads, C channels
TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8, backend="numpy")
ARCHS = {
    "gpt2-tied": ("gpt2", {}),
    "gpt2-untied": ("gpt2", {"tie_embeddings": False}),
    "llama-untied": ("llama", {}),  # RMSNorm, RoPE, SwiGLU, GQA (2 -> 1 key/value heads), no biases
    "llama-tied-qk-norm": ("llama", {"tie_embeddings": True, "qk_norm": True}),
}


def _gpt(arch="gpt2", dtype=np.float64, seed=0, perturb=0.1, **kw):
    m = GPT(GPTConfig.preset(arch, **{**TINY, **kw}), dtype=dtype, seed=seed)
    if perturb:  # off GPT-2's init, where some gradient terms vanish
        m.params += np.random.default_rng(seed + 7).normal(0.0, perturb, m.params.shape).astype(dtype)
    return m


def _perturb(lora, sd=0.3, seed=3):
    """Non-zero B (a fresh adapter has B = 0, where dA vanishes)."""
    lora.params += np.random.default_rng(seed).normal(0.0, sd, lora.params.shape).astype(lora.dtype)
    return lora


def _ids(rng, B=2, T=7, V=11):
    return rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))


# ----------------------------------------------------------------------------- the layer pair


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead, C_in, r, C_out", [((2, 5), 8, 3, 6), ((3, 1), 5, 2, 7), ((4,), 7, 1, 3)],
                         ids=["BT", "T=1", "2-d-odd"])  # fmt: skip
def test_lora_linear_gradcheck(bias, lead, C_in, r, C_out, rng):
    x = rng.standard_normal(lead + (C_in,))
    w, b = rng.standard_normal((C_in, C_out)), (rng.standard_normal(C_out) if bias else None)
    a, bm = rng.standard_normal((C_in, r)), rng.standard_normal((r, C_out))
    s = 0.7

    def fwd(x, a, bm):  # the backward returns dx, da, dbm only: w, b (frozen) are held fixed
        return lora_linear_forward(x, w, b, a, bm, s)

    res = gradcheck(fwd, lora_linear_backward, x, a, bm)
    assert res.ok, str(res)
    assert [r_.name for r_ in res.reports] == ["x", "a", "bm"]
    out, _ = fwd(x, a, bm)
    np.testing.assert_allclose(out, x @ w + (0 if b is None else b) + s * (x @ a) @ bm, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_frozen_linear_gradcheck(bias, rng):
    x, w = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 4))
    b = rng.standard_normal(4) if bias else None
    res = gradcheck(lambda x: frozen_linear_forward(x, w, b), frozen_linear_backward, x)
    assert res.ok and res.reports[0].name == "x", str(res)


def test_gradcheck_catches_a_wrong_lora_backward(rng):
    """A backward that forgets the scale s on dA (a classic slip) must fail the check."""
    x, w = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 4))
    a, bm = rng.standard_normal((5, 2)), rng.standard_normal((2, 4))

    def wrong(dout, cache):
        dx, da, dbm = lora_linear_backward(dout, cache)
        return dx, da / cache[3], dbm

    res = gradcheck(lambda x, a, bm: lora_linear_forward(x, w, None, a, bm, 0.5), wrong, x, a, bm)
    assert not res.ok and res.worst.name == "a"
    assert [r.name for r in res.reports if r.rel_error < 1e-6] == ["x", "bm"]


def test_lora_linear_bad_input(rng):
    x, w = rng.standard_normal((2, 5)), rng.standard_normal((5, 4))
    with pytest.raises(ValueError, match="a: expected shape"):
        lora_linear_forward(x, w, None, rng.standard_normal((4, 2)), rng.standard_normal((2, 4)), 1.0)
    with pytest.raises(ValueError, match="bm: expected shape"):
        lora_linear_forward(x, w, None, rng.standard_normal((5, 2)), rng.standard_normal((3, 4)), 1.0)
    with pytest.raises(ValueError, match="scale"):
        lora_linear_forward(x, w, None, rng.standard_normal((5, 2)), rng.standard_normal((2, 4)), float("nan"))
    with pytest.raises(ValueError, match="a: expected dtype float64"):
        lora_linear_forward(x, w, None, rng.standard_normal((5, 2)).astype(np.float32), rng.standard_normal((2, 4)), 1.0)


# ----------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("arch", ARCHS)
def test_whole_lora_gpt_gradcheck(arch, rng):
    """Every adapter tensor (lora_a, lora_b of c_attn, c_proj, c_fc, c_proj in every block)."""
    name, kw = ARCHS[arch]
    m = _gpt(name, **kw)
    before = m.params.copy()
    lora = _perturb(LoRA(m, rank=3, alpha=5.0, targets=("attn", "mlp")))
    ids, tg = _ids(rng)
    tg[0, 2] = -100
    errors = model_gradcheck(lora, lambda: lora.forward(ids, tg)[1], coords_per_tensor=10, seed=1)
    assert set(errors) == set(lora.p) and len(errors) == 2 * 4 * 2  # L=2 blocks x 4 linears x (A, B)
    bad = {k: v for k, v in errors.items() if not v < 1e-6}
    assert not bad, f"gradient check failed: {bad}"
    assert m.grads is None and m.g == {} and np.array_equal(m.params, before)


def test_whole_lora_gpt_gradcheck_with_dropout_and_exact_targets(rng):
    m = _gpt(dropout=0.2)
    lora = _perturb(LoRA(m, rank=2, targets=["attn.c_proj", "mlp.c_fc"]))
    assert set(lora.p) == {f"h.{i}.{lin}.{ab}" for i in range(2) for lin in ("attn.c_proj", "mlp.c_fc")
                           for ab in ("lora_a", "lora_b")}  # fmt: skip
    ids, tg = _ids(rng)
    errors = model_gradcheck(lora, lambda: lora.forward(ids, tg, train=True, rng=np.random.default_rng(5))[1], 10)
    assert set(errors) == set(lora.p) and max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_classifier_gradcheck(arch):
    gpt = _gpt(arch, perturb=0.3)
    clf = GPTClassifier(gpt, n_classes=3, train_blocks=1, seed=0)
    lora = _perturb(LoRA(clf, rank=2, targets=("attn", "mlp")))
    assert set(lora.p) >= {"head.w", "head.b"} and lora.p["head.w"].shape == (8, 3)
    ids, lengths, labels = np.random.default_rng(0).integers(0, 11, (3, 6)), np.array([6, 4, 1]), np.array([2, 0, 1])
    errors = model_gradcheck(lora, lambda: lora.forward(ids, lengths, labels)[1], coords_per_tensor=6, seed=2)
    assert set(errors) == set(lora.p)
    assert max(errors.values()) < 1e-6, errors
    assert clf.grads is None and gpt.grads is None


def test_fresh_adapters_give_exactly_the_base_and_merging(rng):
    m = _gpt("llama", tie_embeddings=True)
    ids, _ = _ids(rng)
    base_logits = m.forward(ids)[0]
    base_params = m.params.copy()
    lora = LoRA(m, rank=4, targets=("attn", "mlp"), seed=1)
    assert np.all(lora.p["h.0.attn.c_attn.lora_b"] == 0) and lora.p["h.0.attn.c_attn.lora_a"].std() > 0.2  # N(0, 1/8)
    np.testing.assert_array_equal(lora.forward(ids)[0], base_logits)  # B = 0: exactly the base
    _perturb(lora, 0.2)
    adapted = lora.forward(ids)[0]
    assert not np.allclose(adapted, base_logits)
    fast = lora.merged_model()  # a new plain GPT; the base is untouched
    assert type(fast) is GPT and np.array_equal(m.params, base_params)
    np.testing.assert_allclose(fast.forward(ids)[0], adapted, rtol=1e-12, atol=1e-12)
    lora.merge()
    assert lora.merged and not np.array_equal(m.params, base_params)
    np.testing.assert_allclose(m.forward(ids)[0], adapted, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lora.forward(ids)[0], adapted, rtol=1e-12, atol=1e-12)  # not added twice
    np.testing.assert_array_equal(lora.merged_model().params, m.params)
    with pytest.raises(ValueError, match="unmerge"):
        lora.forward(ids, ids)
        lora.backward()
    with pytest.raises(ValueError, match="already merged"):
        lora.merge()
    lora.unmerge()
    assert np.array_equal(m.params, base_params)  # bit for bit
    np.testing.assert_array_equal(lora.forward(ids)[0], adapted)
    with pytest.raises(ValueError, match="not merged"):
        lora.unmerge()


def test_classifier_lora_starts_at_the_classifier_and_merges(rng):
    clf = GPTClassifier(_gpt(), n_classes=2, seed=0)
    ids, lengths = rng.integers(0, 11, (3, 6)), np.array([6, 3, 2])
    ref = clf.forward(ids, lengths)[0]
    lora = LoRA(clf, rank=2)
    np.testing.assert_array_equal(lora.forward(ids, lengths)[0], ref)
    _perturb(lora)
    adapted = lora.forward(ids, lengths)[0]
    np.testing.assert_array_equal(clf.forward(ids, lengths)[0], ref)  # the classifier alone is unchanged
    np.testing.assert_allclose(lora.merged_model().forward(ids, lengths)[0], adapted, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lora.predict_proba(ids, lengths).sum(-1), 1.0)
    assert lora.predict(ids, lengths).shape == (3,)


def test_backward_computes_only_what_it_needs(rng, monkeypatch):
    """No dw of a frozen linear (every linear_backward is an adapter product, of width r), no
    embedding gradient, no tied-head dwte."""
    m = _gpt()
    lora = _perturb(LoRA(m, rank=3, targets=("attn",)))
    ids, tg = _ids(rng)
    ops = backend_mod.get_ops("numpy")
    seen = []
    real = ops.linear_backward

    def spy(dout, cache):
        seen.append(cache[1].shape)  # the reference cache is (x, w, has_bias)
        return real(dout, cache)

    monkeypatch.setattr(ops, "linear_backward", spy)
    monkeypatch.setattr(ops, "embedding_backward", lambda *a: pytest.fail("embedding gradient computed"))
    monkeypatch.setattr(block_mod, "tied_head_backward", lambda *a: pytest.fail("tied head dwte computed"))
    lora.forward(ids, tg)
    grads = lora.backward()
    assert grads is lora.grads and np.all(np.isfinite(grads)) and np.abs(grads).max() > 0
    assert seen and all(3 in shape for shape in seen), seen  # (C_in, r) or (r, C_out) only
    assert len(seen) == 2 * 2 * 2  # 2 blocks x 2 adapted linears x (A, B)


def test_backward_from_logits_is_backward_for_cross_entropy(rng):
    """The DPO hook: forward(train=True) without targets keeps the cache, and backward_from_logits
    with cross-entropy's dlogits gives backward()'s gradients (plain GPT and LoRA)."""
    ids, tg = _ids(rng)
    for use_lora in (False, True):
        m = _gpt()
        model = _perturb(LoRA(m, rank=2, targets=("attn", "mlp"))) if use_lora else m
        model.forward(ids, tg)
        ref = model.backward().copy()
        logits, _ = model.forward(ids, train=True, rng=np.random.default_rng(0))
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        dlogits = (p - np.eye(11)[tg]) / tg.size
        np.testing.assert_allclose(model.backward_from_logits(dlogits), ref, rtol=1e-10, atol=1e-13)
        with pytest.raises(ValueError, match="backward_from_logits: expected a preceding forward"):
            model.backward_from_logits(dlogits)  # consumed
        model.forward(ids, train=True, rng=np.random.default_rng(0))
        with pytest.raises(ValueError, match="dlogits: expected shape"):
            model.backward_from_logits(dlogits[:, :3])


def test_frozen_base_errors_and_bad_arguments(rng):
    m = _gpt()
    with pytest.raises(ValueError, match="rank"):
        LoRA(m, rank=0)
    with pytest.raises(ValueError, match="alpha"):
        LoRA(m, alpha=-1.0)
    with pytest.raises(ValueError, match="targets.*'cross.q'"):
        LoRA(m, targets=("cross.q",))
    with pytest.raises(ValueError, match="targets"):
        LoRA(m, targets=())
    with pytest.raises(ValueError, match="model: expected a model.GPT"):
        LoRA(object())
    assert m.grads is not None  # a refused LoRA does not freeze its model
    lora = LoRA(m, rank=2)
    ids, tg = _ids(rng)
    m.forward(ids, tg)
    with pytest.raises(ValueError, match="frozen"):
        m.backward()
    m.forward(ids, tg)
    with pytest.raises(ValueError, match="the LoRA the forward ran with"):
        m.backward(lora=lora)
    with pytest.raises(ValueError, match="base_checkpoint"):
        lora.config_dict()


def test_generation_runs_on_a_lora(rng):
    lora = _perturb(LoRA(_gpt(), rank=2, targets=("attn", "mlp")))
    prompt = np.array([1, 2, 3])
    a = generate_ids(lora, prompt, 4, temperature=0.0)
    b = generate_ids(lora.merged_model(), prompt, 4, temperature=0.0)
    assert a.shape == (1, 7) and np.array_equal(a, b)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("backend", [*backend_params()[1:], "auto"])
@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-9, 1e-12), (np.float32, 1e-4, 1e-5)])
def test_backends_agree(backend, dtype, rtol, atol, arch, rng):
    ref_base = _gpt(arch, dtype, perturb=0.1, block_size=12, vocab_size=17, d_model=16, dropout=0.1)
    other_base = GPT(GPTConfig.preset(arch, **{**TINY, "block_size": 12, "vocab_size": 17, "d_model": 16,
                                            "dropout": 0.1, "backend": backend}), dtype=dtype)  # fmt: skip
    other_base.params[...] = ref_base.params
    ref = _perturb(LoRA(ref_base, rank=4, targets=("attn", "mlp")), 0.1)
    other = LoRA(other_base, rank=4, targets=("attn", "mlp"))
    other.params[...] = ref.params
    assert other.ops.name == backend
    assert_step_parity(ref, other, rng, rtol, atol)


# ----------------------------------------------------------------------------- training, checkpoints

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40


def _setup(tmp_path, dropout=0.1, seed=0):
    """A base GPT saved as a checkpoint, a language-model task, and a train config."""
    tok = build_tokenizer(TEXT, "char")
    task = LanguageModelTask(TokenData(tok.encode(TEXT), 0.1, "fox"), 16)
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, d_model=16, dropout=dropout,
                         backend="numpy"), seed=seed)  # fmt: skip
    save_checkpoint(tmp_path / "base", base, tokenizer=tok, step=7)
    cfg = TrainConfig(batch_size=4, max_steps=8, lr=1e-2, warmup=2, eval_interval=4, eval_iters=2)
    return tok, task, cfg


def _lora(tmp_path, **kw):
    ckpt = load_checkpoint(tmp_path / "base")
    return LoRA(ckpt.model, **{"rank": 4, "targets": ("attn", "mlp"), **kw}, base_checkpoint=ckpt.path)


def test_training_leaves_the_base_bit_identical(tmp_path):
    tok, task, cfg = _setup(tmp_path)
    lora = _lora(tmp_path)
    base = lora.base
    before = base.params.copy()
    tr = Trainer(lora, task, cfg, progress=False)
    tr.fit(log=False)
    assert np.array_equal(base.params, before) and base.grads is None and base.g == {}
    assert tr.opt.m[0].shape == tr.opt.v[0].shape == lora.params.shape and lora.params.size == lora.num_trainable()
    assert not np.all(lora.views(lora.params)["h.1.mlp.c_proj.lora_b"] == 0)  # the adapters did train
    assert lora.num_trainable() < 0.3 * base.num_params()


def test_checkpoint_round_trip_checksum_and_resume(tmp_path):
    from safetensors import safe_open

    tok, task, cfg = _setup(tmp_path)
    lora = _perturb(_lora(tmp_path), 0.1)
    save_checkpoint(tmp_path / "lora", lora, tokenizer=tok, step=3)
    ckpt = load_checkpoint(tmp_path / "lora")
    weights = next((tmp_path / "lora").glob("model-*.safetensors"))
    with safe_open(str(weights), framework="numpy") as f:
        assert set(f.keys()) == set(lora.p)  # the adapters only, no base tensor
    assert weights.stat().st_size < 0.5 * next((tmp_path / "base").glob("model-*.safetensors")).stat().st_size
    loaded = ckpt.model
    assert type(loaded) is LoRA and loaded.kind == "lora" and loaded.base_kind == "gpt"
    assert np.array_equal(loaded.params, lora.params) and np.array_equal(loaded.base.params, lora.base.params)
    cfg_d = loaded.config_dict()
    assert cfg_d["base"]["dir"] == str((tmp_path / "base").resolve()) and cfg_d["base"]["step"] == 7
    assert (cfg_d["rank"], cfg_d["alpha"], cfg_d["targets"]) == (4, 4.0, ["attn", "mlp"])
    ids = np.arange(10).reshape(1, 10) % tok.vocab_size
    np.testing.assert_array_equal(loaded.forward(ids)[0], lora.forward(ids)[0])

    # resume: 8 steps straight == 4 + save/load + 4, exact
    straight = Trainer(_lora(tmp_path), task, cfg, progress=False)
    straight.fit(log=False)
    first = Trainer(_lora(tmp_path), task, cfg, out_dir=tmp_path / "run", progress=False)
    first.fit(max_steps=4, log=False)
    with safe_open(str(next((tmp_path / "run").glob("model-*.safetensors"))), framework="numpy") as f:
        names = set(f.keys())
    assert names == set(lora.p) | {f"optim.{mv}.{n}" for mv in "mv" for n in lora.p}  # moments of the adapters only
    second = Trainer.from_checkpoint(tmp_path / "run", task, progress=False)
    assert second.step == 4 and type(second.model) is LoRA
    second.fit(log=False)
    assert second.history["loss"] == straight.history["loss"]  # exact, not allclose
    assert np.array_equal(second.model.params, straight.model.params)

    # the base changes on disk: the adapters are refused, naming the directory and both checksums
    other = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, d_model=16, dropout=0.1),
                seed=1)  # fmt: skip
    save_checkpoint(tmp_path / "base", other, tokenizer=tok, step=7)
    old = cfg_d["base"]["sha256"]
    with pytest.raises(ValueError, match=rf"{tmp_path / 'base'}.*adapters were trained on.*{old}.*base now [0-9a-f]{{64}}"):
        load_checkpoint(tmp_path / "lora")


def test_saving_needs_the_base_checkpoint(tmp_path):
    lora = LoRA(_gpt(), rank=2)
    with pytest.raises(ValueError, match="base_checkpoint"):
        save_checkpoint(tmp_path / "x", lora)
    assert not list((tmp_path / "x").glob("*.safetensors"))
    save_checkpoint(tmp_path / "b", GPT(GPTConfig(**{**TINY, "n_layer": 1})))
    with pytest.raises(ValueError, match="another config"):
        lora.attach_base_checkpoint(tmp_path / "b")
