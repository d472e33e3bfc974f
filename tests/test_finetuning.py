"""Classification fine-tuning: the sentiment loader and its errors, the classifier's gradients
(float64), padding invariance, freezing (frozen parameters stay bit-identical), a run that
learns, and the bag-of-words baseline."""
from pathlib import Path

import numpy as np
import pytest

from nanotransformer.finetuning import (
    BowLogisticRegression,
    GPTClassifier,
    encode_sentences,
    finetune,
    load_sentiment,
    logistic_regression_loss,
    split_indices,
)
from nanotransformer.gradcheck import model_gradcheck, numeric_grad, rel_error
from nanotransformer.metrics import accuracy, f1_score
from nanotransformer.model import GPT, GPTConfig
from nanotransformer.tokenizer import CharTokenizer

SENTIMENT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sentiment"


@pytest.fixture
def sentiment_dir():
    if not SENTIMENT.is_dir():
        pytest.skip(f"{SENTIMENT} not present")
    return SENTIMENT


def _gpt(dtype=np.float64, n_layer=2, vocab_size=12, block_size=8, d_model=8, seed=1, perturb=0.4, arch="gpt2"):
    cfg = GPTConfig.preset(arch, vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2, d_model=d_model,
                           backend="numpy")
    gpt = GPT(cfg, dtype=dtype, seed=seed)
    if perturb:  # larger weights than GPT-2's 0.02, so gradients sit well above finite-difference noise
        gpt.params += np.random.default_rng(5).normal(0, perturb, gpt.params.shape).astype(dtype)
    return gpt


def _batch(rng, V=12, T=6):
    ids = rng.integers(0, V, (3, T))
    lengths = np.array([T, 4, 1])
    return ids, lengths, np.array([1, 0, 1])


# ----------------------------------------------------------------------------- data


def test_load_sentiment(sentiment_dir):
    sentences, labels = load_sentiment(sentiment_dir)
    assert len(sentences) == len(labels) == 3000
    assert set(labels.tolist()) == {0, 1} and labels.sum() == 1500
    assert all(s and "\t" not in s for s in sentences)
    one, _ = load_sentiment(sentiment_dir / "yelp_labelled.txt")
    assert one[:2] == ["Wow... Loved this place.", "Crust is not good."]


@pytest.mark.parametrize(
    "content, line, match",
    [
        ("good one\t1\nno tab here 0\nfine\t0\n", 2, "no tab"),
        ("good one\t1\nfine\t0\nhmm\t2\n", 3, "label 0 or 1"),
        ("good one\t1\nok\tpositive\n", 2, "label 0 or 1"),
        ("\t1\n", 1, "expected a sentence"),
        ("a\t1\n\nb\t0\nc\t\n", 4, "label 0 or 1"),  # the empty line 2 is skipped but still counted
    ],
)
def test_bad_label_lines_name_file_and_line(tmp_path, content, line, match):
    f = tmp_path / "bad_labelled.txt"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"bad_labelled\.txt:{line}: .*{match}"):
        load_sentiment(f)
    with pytest.raises(ValueError, match=rf"bad_labelled\.txt:{line}:"):
        load_sentiment(tmp_path)  # the same error through the directory loader


def test_loader_other_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_sentiment(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"\*_labelled\.txt"):
        load_sentiment(tmp_path)
    (tmp_path / "x_labelled.txt").write_bytes(b"caf\xe9\t1\n")
    with pytest.raises(ValueError, match="UTF-8"):
        load_sentiment(tmp_path)
    (tmp_path / "x_labelled.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="at least one labelled sentence"):
        load_sentiment(tmp_path)


def test_split_indices():
    tr, va, te = split_indices(100, 0.2, 0.1, seed=3)
    assert (len(tr), len(va), len(te)) == (70, 10, 20)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(100))
    with pytest.raises(ValueError, match="test_frac"):
        split_indices(10, 0.6, 0.5)


# ----------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize("pool, train_blocks", [("last", None), ("mean", None), ("last", 1), ("mean", 0)])
def test_classifier_gradcheck(pool, train_blocks):
    """Every parameter tensor of the classifier (the GPT's and the head's) is checked; frozen ones
    must get exactly zero gradient (never computed)."""
    gpt = _gpt()
    clf = GPTClassifier(gpt, n_classes=3, pool=pool, train_blocks=train_blocks, seed=0)
    clf.p["head.w"] += np.random.default_rng(6).normal(0, 0.5, clf.p["head.w"].shape)
    clf.p["head.b"] += np.random.default_rng(7).normal(0, 0.5, clf.p["head.b"].shape)
    ids, lengths, labels = _batch(np.random.default_rng(0))
    labels = np.array([2, 0, 1])

    def loss():
        return clf.forward(ids, lengths, labels)[1]

    errors = model_gradcheck(clf, loss, coords_per_tensor=4, seed=1)
    assert set(errors) == set(clf.p)  # every tensor kind, head included
    grads = clf.views(clf.grads)
    checked = 0
    for name in clf.p:
        trainable = train_blocks is None or name.startswith(("ln_f", "head")) or any(
            name.startswith(f"h.{i}.") for i in range(2 - train_blocks, 2))
        if not trainable:
            assert clf.offset(name) < clf.frozen and np.all(grads[name] == 0), name  # frozen: no gradient
            continue
        assert errors[name] < 1e-6, f"{name}: relative error {errors[name]:.2e}"
        checked += 1
    assert checked >= 3


def test_padding_does_not_matter():
    gpt = _gpt()
    for pool in ("last", "mean"):
        clf = GPTClassifier(gpt, pool=pool)
        ids, lengths, _ = _batch(np.random.default_rng(0))
        logits, _ = clf.forward(ids, lengths)
        ids2 = ids.copy()
        for b, n in enumerate(lengths):
            ids2[b, n:] = (ids2[b, n:] + 5) % 12  # different junk after each row's end
        logits2, _ = clf.forward(ids2, lengths)
        np.testing.assert_allclose(logits2, logits, rtol=0, atol=1e-12)
        # and a row alone gives the same answer as in the padded batch
        alone, _ = clf.forward(ids[2:3, :1], lengths[2:3])
        np.testing.assert_allclose(alone[0], logits[2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("train_blocks", [0, 1])
def test_freezing_leaves_frozen_parameters_bit_identical(train_blocks, arch):
    """Also for a Llama body, whose untied lm_head.w (after ln_f in the buffer) the classifier
    does not use: no gradient and no weight decay, so it too stays bit-identical."""
    gpt = _gpt(np.float32, n_layer=3, perturb=0.0, arch=arch)
    clf = GPTClassifier(gpt, train_blocks=train_blocks)
    before, head_before = gpt.params.copy(), clf.p["head.w"].copy()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 12, (40, 6))
    finetune(clf, ids, np.full(40, 6), rng.integers(0, 2, 40), steps=5, batch_size=8, lr=1e-2, weight_decay=0.1, log=None)
    o = clf.frozen
    frozen_names = [n for n in gpt.p if not (n.startswith(("ln_f", "lm_head")) or any(n.startswith(f"h.{i}.") for i in range(3 - train_blocks, 3)))]
    assert np.array_equal(gpt.params[:o], before[:o])  # bit-identical, weight decay included
    if arch == "llama":
        assert np.array_equal(gpt.p["lm_head.w"], gpt.views(before)["lm_head.w"])
        assert clf.num_trained() == clf.num_params() - o - gpt.p["lm_head.w"].size
    for n in frozen_names:  # the contiguous prefix is exactly the frozen parameters
        assert np.array_equal(gpt.p[n], gpt.views(before)[n]), n
    assert not np.array_equal(gpt.params[o:], before[o:])
    assert not np.array_equal(clf.p["head.w"], head_before)
    first_trainable = "ln_f.w" if train_blocks == 0 else "h.2.ln_1.w"
    assert o == sum(v.size for n, v in gpt.p.items() if list(gpt.p).index(n) < list(gpt.p).index(first_trainable))


def test_classifier_bad_input():
    gpt = _gpt()
    with pytest.raises(ValueError, match="pool"):
        GPTClassifier(gpt, pool="max")
    with pytest.raises(ValueError, match="train_blocks"):
        GPTClassifier(gpt, train_blocks=3)
    clf = GPTClassifier(gpt)
    ids, lengths, _ = _batch(np.random.default_rng(0))
    with pytest.raises(ValueError, match="lengths: expected values in"):
        clf.forward(ids, np.array([7, 1, 1]))
    with pytest.raises(ValueError, match="labels: expected ids in"):
        clf.forward(ids, lengths, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="block_size=8 positions, got 9"):  # from GPT.hidden_forward
        clf.forward(np.ones((3, 9), np.int64), np.array([9, 9, 9]))
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 12\), got 12"):
        clf.forward(np.full((3, 4), 12), np.array([4, 4, 4]))
    with pytest.raises(ValueError, match="backward: expected a preceding forward"):
        clf.backward()


def test_finetuning_learns_a_keyword_task():
    """Random-init char GPT, 150 steps (~5 s): label 1 iff the sentence contains "good". With
    last-token pooling the answer must travel through attention to the end of the sentence."""
    rng = np.random.default_rng(0)
    words = ["the", "food", "was", "good", "bad", "ok", "and", "service"]
    sentences, labels = [], []
    for _ in range(400):
        ws = list(rng.choice([w for w in words if w not in ("good", "bad")], size=rng.integers(2, 5)))
        key = "good" if rng.random() < 0.5 else "bad"
        ws.insert(int(rng.integers(0, len(ws) + 1)), key)
        sentences.append(" ".join(ws))
        labels.append(int(key == "good"))
    labels = np.array(labels)
    tok = CharTokenizer("".join(sentences))
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=32, backend="numpy"), seed=0)
    ids, lengths = encode_sentences(tok, sentences, 32)
    tr, _, te = split_indices(len(sentences), 0.25, seed=0)
    clf = GPTClassifier(gpt, pool="last")
    hist = finetune(clf, ids[tr], lengths[tr], labels[tr], steps=150, batch_size=32, lr=3e-3, log=None)
    pred = clf.predict(ids[te], lengths[te])
    assert accuracy(labels[te], pred) > 0.9, accuracy(labels[te], pred)
    assert np.mean(hist["loss"][-10:]) < 0.5 * np.mean(hist["loss"][:10])


# ----------------------------------------------------------------------------- the baseline


def test_logistic_regression_gradient(rng):
    X = rng.standard_normal((20, 5))
    y = (rng.random(20) < 0.5).astype(np.float64)
    w, b = rng.standard_normal(5), 0.3
    _, dw, db = logistic_regression_loss(X, y, w, b, l2=0.1)
    num_w = numeric_grad(lambda: logistic_regression_loss(X, y, w, b, 0.1)[0], w)
    bb = np.array([b])
    num_b = numeric_grad(lambda: logistic_regression_loss(X, y, w, bb[0], 0.1)[0], bb)
    assert rel_error(dw, num_w)[0] < 1e-6 and rel_error(np.array([db]), num_b)[0] < 1e-6
    # stable for huge scores
    assert np.isfinite(logistic_regression_loss(X * 1e4, y, w, b)[0])


def test_bow_baseline_on_sentiment(sentiment_dir):
    sentences, labels = load_sentiment(sentiment_dir)
    tr, _, te = split_indices(len(sentences), 0.2, seed=0)
    model = BowLogisticRegression(min_count=2, steps=150).fit([sentences[i] for i in tr], labels[tr])
    pred = model.predict([sentences[i] for i in te])
    assert accuracy(labels[te], pred) > 0.75 and f1_score(labels[te], pred) > 0.7
    pos, neg = model.top_words(15)
    assert "great" in pos and "bad" in neg
