"""Data loading, the training loop, bit-exact resume, divergence handling."""
import hashlib
import json
import math
import re

import numpy as np
import pytest

from nanotransformer import data as data_mod
from nanotransformer.checkpoint import load_checkpoint
from nanotransformer.data import TokenData, build_tokenizer, load_text
from nanotransformer.model import GPT, GPTConfig
from nanotransformer.train import Trainer, TrainConfig, TrainingDiverged, eval_loss

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "numpy")


def make(dropout=0.0, block_size=16, backend=None, **train_kw):
    tok = build_tokenizer(TEXT, "char")
    data = TokenData(tok.encode(TEXT), 0.1, "fox")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, d_model=16,
                          dropout=dropout, backend=backend), seed=0)
    tcfg = TrainConfig(**{**dict(batch_size=4, max_steps=8, lr=3e-3, warmup=2, eval_interval=4, eval_iters=2),
                          **train_kw})
    return model, data, tok, tcfg


# ----------------------------------------------------------------------------- data


def test_builtin_corpus_is_shipped_and_loads():
    text, name = load_text(None)
    assert name == "alice" and 100_000 < len(text) < 400_000 and "Alice" in text
    assert load_text("alice")[0] == text


def test_text_file_and_directory(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("second, ünïcode\n", encoding="utf-8")
    (tmp_path / "c.png").write_bytes(b"\x89PNG\x00\xff")  # not a text suffix: skipped
    (tmp_path / ".hidden.txt").write_text("skipped\n")
    assert load_text(tmp_path / "a.txt") == ("first file\n", str(tmp_path / "a.txt"))
    text, _ = load_text(tmp_path)
    assert text == "first file\n\n\nsecond, ünïcode\n"


@pytest.mark.parametrize("content, match", [
    (None, "no such file"),
    (b"", "the file is empty"),
    (b"  \n\n ", "only whitespace"),
    (b"caf\xe9 latin-1", r"not UTF-8 text \(invalid byte 0xe9 at offset 3\)"),
])
def test_bad_data_files(tmp_path, content, match):
    p = tmp_path / "corpus.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        load_text(p)
    assert str(p) in str(e.value)


def test_directory_without_text_files(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x00")
    with pytest.raises(ValueError, match="no text files"):
        load_text(tmp_path)


def test_block_size_larger_than_the_corpus():
    tok = build_tokenizer("tiny corpus", "char")
    data = TokenData(tok.encode("tiny corpus" * 3), 0.1, "tiny.txt")
    with pytest.raises(ValueError, match=r"tiny.txt: block_size 64 needs at least 65 tokens in the train split, "
                                         r"got 30"):
        data.check_block_size(64)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=1, d_model=8))
    with pytest.raises(ValueError, match="block_size 64"):
        Trainer(model, data, TrainConfig())


def test_batches_are_shifted_windows_and_seeded():
    data = TokenData(np.arange(1000), 0.1)
    x, y = data.get_batch("train", 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == np.int64
    assert np.array_equal(y, x + 1)  # y is x shifted by one token
    assert x.max() < 900  # train windows stay in the first 90%
    xv, _ = data.get_batch("val", 8, 16, np.random.default_rng(0))
    assert xv.min() >= 900
    x2, _ = data.get_batch("train", 8, 16, np.random.default_rng(0))
    assert np.array_equal(x, x2)


def test_bpe_and_saved_tokenizers(tmp_path):
    tok = build_tokenizer(TEXT, "bpe", 270)
    assert tok.vocab_size == 270 and tok.decode(tok.encode("the lazy dog")) == "the lazy dog"
    path = tmp_path / "tok.txt"
    tok.save(path)
    assert build_tokenizer("", str(path)).encode("fox") == tok.encode("fox")
    with pytest.raises(ValueError, match="'char', 'bpe' or a saved tokenizer file"):
        build_tokenizer(TEXT, "wordpiece")


# ----------------------------------------------------------------------------- tinyshakespeare


def test_tinyshakespeare_from_the_shared_copy(shakespeare_path, monkeypatch, tmp_path):
    monkeypatch.setenv("NANOTRANSFORMER_TINYSHAKESPEARE", str(shakespeare_path))
    monkeypatch.setenv("NANOTRANSFORMER_CACHE", str(tmp_path))
    text, name = load_text("tinyshakespeare")
    assert name == "tinyshakespeare" and text.startswith("First Citizen:") and len(text) == 1115394


@pytest.fixture
def no_local_copy(monkeypatch, tmp_path):
    monkeypatch.delenv("NANOTRANSFORMER_TINYSHAKESPEARE", raising=False)
    monkeypatch.setenv("NANOTRANSFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_mod, "_local_candidates", lambda: [])
    return tmp_path / "cache" / "tinyshakespeare.txt"


def test_tinyshakespeare_offline_says_what_to_do(no_local_copy, monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(data_mod.urllib.request, "urlopen", offline)
    with pytest.raises(ValueError) as e:
        load_text("tinyshakespeare")
    msg = str(e.value)
    assert "download failed" in msg and data_mod.TINYSHAKESPEARE_URL in msg and str(no_local_copy) in msg


def test_tinyshakespeare_download_is_verified_and_cached(no_local_copy, monkeypatch):
    payload = b"First Citizen:\nnot really shakespeare\n"
    calls = []

    class Response:
        def __init__(self, body):
            self.body = body

        def read(self):
            return self.body

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def fake_urlopen(url, timeout):
        calls.append(url)
        return Response(payload)
    monkeypatch.setattr(data_mod.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(ValueError, match="sha256"):
        load_text("tinyshakespeare")  # wrong content: refused, nothing cached
    assert not no_local_copy.exists()
    monkeypatch.setattr(data_mod, "TINYSHAKESPEARE_SHA256", hashlib.sha256(payload).hexdigest())
    assert load_text("tinyshakespeare")[0] == payload.decode()
    assert no_local_copy.read_bytes() == payload
    load_text("tinyshakespeare")  # second time: from the cache
    assert len(calls) == 2


def test_tinyshakespeare_env_var_checks(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOTRANSFORMER_TINYSHAKESPEARE", str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="points to no such file"):
        load_text("tinyshakespeare")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("hello")
    monkeypatch.setenv("NANOTRANSFORMER_TINYSHAKESPEARE", str(wrong))
    with pytest.raises(ValueError, match="wrong.txt: sha256 is"):
        load_text("tinyshakespeare")


# ----------------------------------------------------------------------------- the loop


def test_training_lowers_the_loss_and_writes_outputs(tmp_path):
    model, data, tok, tcfg = make(max_steps=60, eval_interval=30, lr=1e-2, warmup=5)
    tr = Trainer(model, data, tcfg, tokenizer=tok, out_dir=tmp_path, progress=False)
    hist = tr.fit(log=False)
    ev = hist["eval"]
    assert [e["step"] for e in ev] == [0, 30, 60]
    assert ev[-1]["val"] < ev[0]["val"] - 1.0  # a repetitive text is learned fast
    assert len(hist["loss"]) == 60 and hist["lr"][0] == pytest.approx(1e-2 / 5)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    c = load_checkpoint(tmp_path)
    assert c.step == 60 and np.array_equal(c.model.params, model.params)
    assert c.meta["history"]["eval"][-1]["val"] == ev[-1]["val"]


def test_weight_decay_skips_biases_and_gains():
    model, data, tok, tcfg = make(weight_decay=0.5)
    tr = Trainer(model, data, tcfg, progress=False)
    before = {k: v.copy() for k, v in model.p.items()}
    model.grads[...] = 0.0  # with zero gradients only weight decay moves parameters
    tr.opt.step(lr=0.1)
    assert np.allclose(model.p["h.0.mlp.c_fc.w"], before["h.0.mlp.c_fc.w"] * (1 - 0.1 * 0.5))
    assert np.array_equal(model.p["h.0.ln_1.w"], before["h.0.ln_1.w"])


def test_evaluation_does_not_change_the_training_trajectory():
    losses = []
    for interval in (2, 5):
        model, data, tok, tcfg = make(dropout=0.1, eval_interval=interval)
        losses.append(Trainer(model, data, tcfg, progress=False).fit(log=False)["loss"])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_resume_is_bit_identical(tmp_path, backend):
    """8 steps straight == 4 steps, checkpoint, load into fresh objects, 4 more (dropout on)."""
    model, data, tok, tcfg = make(dropout=0.2, backend=backend)
    straight = Trainer(model, data, tcfg, tokenizer=tok, progress=False)
    straight.fit(log=False)

    model, data, tok, tcfg = make(dropout=0.2, backend=backend)
    first = Trainer(model, data, tcfg, tokenizer=tok, out_dir=tmp_path / "run", progress=False)
    first.fit(max_steps=4, log=False)
    del first, model
    _, data2, _, _ = make()  # fresh data object too: nothing survives but the files
    second = Trainer.from_checkpoint(tmp_path / "run", data2, progress=False)
    assert second.step == 4
    second.fit(log=False)
    assert second.history["loss"] == straight.history["loss"]  # exact, not allclose
    assert np.array_equal(second.model.params, straight.model.params)
    assert [e["val"] for e in second.history["eval"]] == [e["val"] for e in straight.history["eval"]]


def test_resume_can_extend_max_steps(tmp_path):
    model, data, tok, tcfg = make(max_steps=4)
    Trainer(model, data, tcfg, tokenizer=tok, out_dir=tmp_path, progress=False).fit(log=False)
    tr = Trainer.from_checkpoint(tmp_path, data, progress=False, overrides={"max_steps": 6})
    tr.fit(log=False)
    assert tr.step == 6 and len(tr.history["loss"]) == 6 and load_checkpoint(tmp_path).step == 6


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model, data, tok, tcfg = make(max_steps=20, eval_interval=4)
    tr = Trainer(model, data, tcfg, tokenizer=tok, out_dir=tmp_path, progress=False)
    tr.fit(max_steps=4, log=False)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "loss.png"}
    good = model.params.copy()
    real_forward = model.forward

    def forward(ids, targets=None, **kw):  # step 7 blows up
        logits, loss = real_forward(ids, targets, **kw)
        return logits, (float("nan") if kw.get("train") and tr.step == 6 else loss)
    model.forward = forward
    with pytest.raises(TrainingDiverged, match=r"step 7: loss is nan.*last good checkpoint \(step 4\)"):
        tr.fit(log=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "loss.png"} == files
    assert np.array_equal(load_checkpoint(tmp_path).model.params, good)
    assert tr.step == 6 and len(tr.history["loss"]) == 6  # the NaN step was not applied


def test_inf_gradient_norm_stops_training(monkeypatch):
    model, data, tok, tcfg = make()
    tr = Trainer(model, data, tcfg, progress=False)
    tr.fit(max_steps=2, log=False)
    before = model.params.copy()
    real_backward = model.backward

    def backward():
        g = real_backward()
        g[5] = np.inf
        return g
    monkeypatch.setattr(model, "backward", backward)
    with pytest.raises(TrainingDiverged, match=r"step 3: gradient norm is inf \(loss \d"):
        tr.train_step()
    assert np.array_equal(model.params, before)


def test_eval_loss_counts_every_prediction_once(rng):
    model, *_ = make(block_size=8)
    ids = rng.integers(0, model.config.vocab_size, size=30)
    loss, n = eval_loss(model, ids, batch_size=2)
    assert n == 29
    # reference: the windows [0..8], [8..16], [16..24] then the tail window, new targets only
    total = 0.0
    for s in (0, 8, 16):
        total += model.forward(ids[None, s : s + 8], ids[None, s + 1 : s + 9])[1] * 8
    logits, _ = model.forward(ids[None, 21:29])
    p = np.exp(logits[0] - logits[0].max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    total += -np.log(p[np.arange(3, 8), ids[25:30]]).sum()
    assert math.isclose(loss, total / 29, rel_tol=1e-5)


def test_train_config_validation():
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    assert TrainConfig(lr=1e-3).min_lr == pytest.approx(1e-4)
    assert json.dumps(TrainConfig().to_dict())


def test_token_stream_is_only_for_a_gpt():
    """A TokenData stream means next-token prediction: a BERT given one must get its MaskedLMTask
    instead of silently learning the wrong objective."""
    from nanotransformer.bert import BERT, BERTConfig

    bert = BERT(BERTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, d_model=8))
    with pytest.raises(ValueError, match="MaskedLMTask"):
        Trainer(bert, TokenData(np.arange(100) % 12), TrainConfig(max_steps=1))


@pytest.mark.parametrize("field, value, match", [
    ("grad_clip", -1.0, "grad_clip: expected a number >= 0"),
    ("grad_clip", float("nan"), "grad_clip: expected a number >= 0"),
    ("min_lr", 1.0, "min_lr: expected a number in [0, lr=0.001]"),
    ("min_lr", -1e-4, "min_lr: expected a number in [0"),
    ("weight_decay", float("nan"), "weight_decay: expected a number >= 0"),
    ("weight_decay", -0.1, "weight_decay: expected a number >= 0"),
    ("seed", -1, "seed: expected a non-negative integer"),
    ("seed", 1.5, "seed: expected a non-negative integer"),
    ("beta2", 1.0, "beta2: expected a value in [0, 1)"),
    ("beta1", float("inf"), "beta1: expected a value in [0, 1)"),
    ("eps", 0.0, "eps: expected a positive number"),
    ("lr", float("nan"), "lr: expected a positive learning rate"),
    ("warmup", True, "warmup: expected a non-negative integer"),
])  # fmt: skip
def test_train_config_rejects_every_bad_value_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        TrainConfig(**{field: value})


def test_a_loss_too_large_for_its_perplexity_is_divergence(monkeypatch):

    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8))
    data = TokenData(np.arange(200) % 11, val_fraction=0.1)
    trainer = Trainer(model, data, TrainConfig(batch_size=2, max_steps=2, eval_iters=1, eval_interval=1), progress=False)
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: (forward(*a, **k)[0], 800.0))  # finite, but exp(800) overflows
    with pytest.raises(TrainingDiverged, match="not finite|loss is 800"):
        trainer.fit(log=False)
