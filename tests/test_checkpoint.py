"""Checkpoints: round trip, atomic replacement, and one clear error per kind of damage."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from nanotransformer import checkpoint as ck
from nanotransformer.checkpoint import load_checkpoint, save_checkpoint
from nanotransformer.model import GPT, GPTConfig
from nanotransformer.tokenizer import BPETokenizer, CharTokenizer
from nanotransformer.optim import AdamW

CFG = dict(vocab_size=12, block_size=8, n_layer=2, n_head=2, d_model=8)


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "numpy")


@pytest.fixture
def saved(tmp_path, rng):
    """A checkpoint directory with model, optimiser moments, tokenizer and RNG state."""
    tok = CharTokenizer.from_text("abcdefghijk\n")
    m = GPT(GPTConfig(**CFG, dropout=0.1), seed=1)
    opt = AdamW(m, betas=(0.9, 0.99), weight_decay=0.1)
    opt.m[0][...] = rng.normal(size=opt.m[0].shape)
    opt.v[0][...] = rng.random(opt.v[0].shape)
    opt.t = 7
    gen = np.random.default_rng(99)
    gen.random(3)
    save_checkpoint(tmp_path / "ck", m, tokenizer=tok, step=7, optimizer=opt, rng=gen, meta={"note": "hi"})
    return SimpleRun(tmp_path / "ck", m, opt, tok, gen)


class SimpleRun:
    def __init__(self, path, model, opt, tok, rng):
        self.path, self.model, self.opt, self.tok, self.rng = path, model, opt, tok, rng

    @property
    def weights(self):
        return self.path / json.loads((self.path / "checkpoint.json").read_text())["weights"]


def test_round_trip(saved):
    c = load_checkpoint(saved.path)
    assert c.model.config == saved.model.config and c.step == 7 and c.meta == {"note": "hi"}
    assert np.array_equal(c.model.params, saved.model.params) and c.model.params.dtype == np.float32
    assert np.array_equal(c.optimizer["m"], saved.opt.m[0]) and np.array_equal(c.optimizer["v"], saved.opt.v[0])
    assert c.optimizer["t"] == 7 and c.optimizer["hparams"]["weight_decay"] == saved.opt.weight_decay
    assert c.tokenizer.encode("abc\n") == saved.tok.encode("abc\n")
    assert c.make_rng().random() == saved.rng.random()  # the RNG continues where it was
    files = sorted(p.name for p in saved.path.iterdir())
    assert files == [ck.LOCK, "checkpoint.json", saved.weights.name]  # the writer's lock; no temp files left behind


def _every_kind():
    """One small model of each checkpoint kind, with its tokenizer and a forward that uses it."""
    from nanotransformer.bert import BERT, BERTConfig
    from nanotransformer.encoder_decoder import Seq2Seq, Seq2SeqConfig
    from nanotransformer.finetuning import GPTClassifier
    from nanotransformer.tasks import char_vocab

    vocab = char_vocab("abcdef")
    ids = np.array([[3, 5, 6, 7], [3, 8, 9, 0]])
    gpt = GPT(GPTConfig(**CFG), seed=1)
    return {
        "gpt": (gpt, CharTokenizer.from_text("abcdefghijk\n"), lambda m: m.forward(ids % 12)[0]),
        "bert": (BERT(BERTConfig(vocab_size=len(vocab), block_size=8, n_layer=1, n_head=2, d_model=8), seed=2), vocab,
                 lambda m: m.forward(ids)[0]),
        "seq2seq": (Seq2Seq(Seq2SeqConfig(vocab_size=len(vocab), max_len=8, n_head=2, d_model=8), seed=3), vocab,
                    lambda m: m.forward(ids, ids[:, :3])[0]),
        "classifier": (GPTClassifier(GPT(GPTConfig(**CFG), seed=4), n_classes=3, train_blocks=1, seed=5), None,
                       lambda m: m.forward(ids % 12, np.array([4, 3]))[0]),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ck.MODEL_KINDS)
def test_round_trip_of_every_model_kind(kind, tmp_path, rng):
    """GPT, BERT, the encoder-decoder and the classifier: the same weights, moments, tokenizer,
    config and outputs after a save and load; the sidecar names the kind."""
    model, tok, run = _every_kind()[kind]
    model.params += rng.normal(0, 0.1, model.params.shape).astype(model.dtype)  # off the init
    opt = AdamW(model, weight_decay=0.1)
    opt.m[0][...] = rng.normal(size=opt.m[0].shape)
    save_checkpoint(tmp_path / kind, model, tokenizer=tok, step=3, optimizer=opt)
    assert json.loads((tmp_path / kind / "checkpoint.json").read_text())["kind"] == kind
    c = load_checkpoint(tmp_path / kind)
    assert type(c.model) is type(model) and c.model.config_dict() == model.config_dict()
    assert np.array_equal(c.model.params, model.params) and np.array_equal(c.optimizer["m"], opt.m[0])
    assert c.model.frozen == model.frozen
    assert np.array_equal(run(c.model), run(model))
    if tok is None:
        assert c.tokenizer is None
    elif kind == "gpt":
        assert c.tokenizer.encode("abc\n") == tok.encode("abc\n")
    else:
        assert c.tokenizer == tok  # a tasks.Vocab: the same tokens and specials


def test_safetensors_holds_gpt2_names_and_moments(saved):
    from safetensors.numpy import load_file

    t = load_file(str(saved.weights))
    assert "h.1.attn.c_attn.w" in t and "optim.m.h.1.attn.c_attn.w" in t and "optim.v.wte" in t
    assert t["h.1.attn.c_attn.w"].shape == (8, 24)


def test_bpe_tokenizer_round_trip(tmp_path):
    tok = BPETokenizer().train("the cat sat on the mat " * 20, 262)
    m = GPT(GPTConfig(**{**CFG, "vocab_size": tok.vocab_size}))
    save_checkpoint(tmp_path, m, tokenizer=tok)
    c = load_checkpoint(tmp_path, dtype=np.float64, backend="numpy")
    assert c.tokenizer.encode("the mat") == tok.encode("the mat")
    assert c.model.dtype == np.float64 and c.model.ops.name == "numpy" and c.optimizer is None


def test_resave_replaces_the_old_weights(saved):
    old = saved.weights
    saved.model.params += 1
    save_checkpoint(saved.path, saved.model, step=8)
    assert not old.exists() and saved.weights.exists()
    assert np.array_equal(load_checkpoint(saved.path).model.params, saved.model.params)


@pytest.mark.parametrize("fail_at", ["weights", "sidecar"])
def test_a_failed_save_keeps_the_old_checkpoint(saved, monkeypatch, fail_at):
    before = load_checkpoint(saved.path).model.params.copy()
    files_before = sorted(p.name for p in saved.path.iterdir())
    if fail_at == "weights":
        def boom(*a, **k):
            Path(a[1]).write_bytes(b"partial")  # a half-written temp file, then a crash
            raise OSError("disk full")
        monkeypatch.setattr("safetensors.numpy.save_file", boom)
    else:
        real_replace = ck.os.replace

        def replace(src, dst):
            if str(dst).endswith("checkpoint.json"):
                raise OSError("power cut")
            return real_replace(src, dst)
        monkeypatch.setattr(ck.os, "replace", replace)
    saved.model.params += 1
    with pytest.raises(OSError):
        save_checkpoint(saved.path, saved.model, step=9)
    monkeypatch.undo()
    assert sorted(p.name for p in saved.path.iterdir()) == files_before
    assert np.array_equal(load_checkpoint(saved.path).model.params, before)


# ----------------------------------------------------------------------------- damage


def _rehash(run):
    """Record the weights file's current sha256 in the sidecar (a file damaged *consistently*, so the
    checks behind the checksum are the ones tested)."""
    from nanotransformer.data import file_sha256

    sc = run.path / "checkpoint.json"
    meta = json.loads(sc.read_text())
    meta["weights_sha256"] = file_sha256(run.weights)
    sc.write_text(json.dumps(meta))


def _damage(run, how):
    sc = run.path / "checkpoint.json"
    meta = json.loads(sc.read_text())
    if how == "no dir":
        return run.path / "nope", "no such checkpoint directory"
    if how == "no sidecar":
        sc.unlink()
        return run.path, "no checkpoint.json"
    if how == "bad json":
        sc.write_text(sc.read_text()[:40])
        return run.path, r"checkpoint.json: corrupted or truncated JSON"
    if how == "not ours":
        sc.write_text(json.dumps({"hello": 1}))
        return run.path, "not a nanotransformer checkpoint"
    if how == "no weights":
        run.weights.unlink()
        return run.path, r"model-.*\.safetensors: missing"
    if how == "truncated":  # with the sidecar's checksum matching it, so the parse itself is tested
        data = run.weights.read_bytes()
        run.weights.write_bytes(data[: len(data) // 2])
        _rehash(run)
        return run.path, r"model-.*\.safetensors: not a readable safetensors file"
    if how == "garbage":
        run.weights.write_bytes(b"\x00\x01garbage" * 10)
        _rehash(run)
        return run.path, r"model-.*\.safetensors: not a readable safetensors file"
    if how == "flipped bit":  # a bit of the tensor data: the file still parses; only the checksum sees it
        data = bytearray(run.weights.read_bytes())
        data[-7] ^= 0x01
        run.weights.write_bytes(bytes(data))
        return run.path, r"model-.*\.safetensors: sha256 is [0-9a-f]{64}, but checkpoint.json recorded [0-9a-f]{64}"
    if how == "shape":
        meta["config"]["d_model"] = 12  # the sidecar says 12 channels, the tensors have 8
        sc.write_text(json.dumps(meta))
        return run.path, r"tensor 'wte' expected shape \(12, 12\), got \(12, 8\)"
    if how == "vocab":
        meta["config"]["vocab_size"] = 20
        sc.write_text(json.dumps(meta))
        return run.path, r"tensor 'wte' expected shape \(20, 8\), got \(12, 8\)"
    if how == "bad config":
        meta["config"]["n_head"] = 3
        sc.write_text(json.dumps(meta))
        return run.path, "checkpoint.json: invalid config.*n_head"
    if how == "mixed pair":
        meta["tag"] = "000000"
        sc.write_text(json.dumps(meta))
        return run.path, "mixed up"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["no dir", "no sidecar", "bad json", "not ours", "no weights", "truncated", "flipped bit",
                                 "garbage", "shape", "vocab", "bad config", "mixed pair"])
def test_damaged_checkpoint_is_one_clear_error(saved, how):
    path, match = _damage(saved, how)
    with pytest.raises(ValueError, match=match) as e:
        load_checkpoint(path)
    assert str(saved.path) in str(e.value)  # names the file / directory


def test_missing_tensor_and_nan_weights(saved):
    from safetensors.numpy import load_file, save_file

    meta = {"format": ck.FORMAT, "step": "7", "tag": json.loads((saved.path / "checkpoint.json").read_text())["tag"]}
    tensors = load_file(str(saved.weights))
    del tensors["h.1.mlp.c_fc.b"]
    save_file(tensors, str(saved.weights), metadata=meta)
    _rehash(saved)
    with pytest.raises(ValueError, match=r"missing tensor 'h.1.mlp.c_fc.b' \(shape \(32,\)\)"):
        load_checkpoint(saved.path)
    tensors = load_file(str(saved.weights))
    tensors["h.1.mlp.c_fc.b"] = np.full(32, np.nan, dtype=np.float32)
    save_file(tensors, str(saved.weights), metadata=meta)
    _rehash(saved)
    with pytest.raises(ValueError, match="'h.1.mlp.c_fc.b' contains NaN"):
        load_checkpoint(saved.path)
    tensors["h.1.mlp.c_fc.b"] = np.zeros(32, dtype=np.float32)
    del tensors["optim.v.wte"]
    save_file(tensors, str(saved.weights), metadata=meta)
    _rehash(saved)
    with pytest.raises(ValueError, match="missing tensor 'optim.v.wte'"):
        load_checkpoint(saved.path)


@pytest.mark.parametrize("field, value, match", [
    ("config", None, "'config' entry: expected a JSON object"),
    ("rng_state", "abc", "'rng_state' entry: expected null or a numpy bit-generator state"),
    ("optimizer", {"hparams": {}}, "'optimizer' entry: expected null or"),
    ("optimizer", {"t": "3"}, "'optimizer' entry"),
    ("meta", None, "'meta' entry: expected an object"),
    ("meta", {"history": {"loss": 5}}, "'meta.history' entry"),
    ("meta", {"history": {"eval": [3]}}, "'meta.history.eval' entry"),
    ("meta", {"data": "x"}, "'meta.data' entry"),
    ("step", -1, "'step' entry: expected a non-negative integer"),
    ("step", "7", "'step' entry"),
    ("weights_sha256", "abc", "'weights_sha256' entry"),
    ("dtype", 5, "'dtype' entry"),
])  # fmt: skip
def test_a_garbled_sidecar_field_is_one_error_naming_it(saved, field, value, match):
    sc = saved.path / "checkpoint.json"
    meta = json.loads(sc.read_text())
    meta[field] = value
    sc.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"checkpoint.json: .*{re.escape(match)}"):
        load_checkpoint(saved.path)


def test_wrong_dtype_extra_tensors_and_nan_moments_are_refused(saved):
    from safetensors.numpy import load_file, save_file

    meta = {"format": ck.FORMAT, "step": "7", "tag": json.loads((saved.path / "checkpoint.json").read_text())["tag"]}
    good = load_file(str(saved.weights))
    for change, match in (
        (lambda t: {**t, "wte": t["wte"].astype(np.int32)}, "tensor 'wte' has dtype int32, expected float"),
        (lambda t: {**t, "h.0.extra.w": t["wte"]}, "unexpected tensor 'h.0.extra.w'"),
        (lambda t: {**t, "optim.m.wte": np.full_like(t["optim.m.wte"], np.nan)}, "optimiser tensor 'optim.m.wte' contains NaN"),
    ):  # fmt: skip
        save_file(change(dict(good)), str(saved.weights), metadata=meta)
        _rehash(saved)
        with pytest.raises(ValueError, match=re.escape(match)):
            load_checkpoint(saved.path)


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(saved):
    sc = saved.path / "checkpoint.json"
    meta = json.loads(sc.read_text())
    bigger = CharTokenizer.from_text("abcdefghijk\nXYZ")  # 15 ids; the model has 12
    save_checkpoint(saved.path / "other", saved.model, tokenizer=bigger)
    meta["tokenizer"] = json.loads((saved.path / "other" / "checkpoint.json").read_text())["tokenizer"]
    sc.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"checkpoint.json: the tokenizer has 15 ids but the model's vocabulary only 12"):
        load_checkpoint(saved.path)
