"""BERT-style masked LM: the 80/10/10 corruption, whole-model gradient checks for both heads
(float64), bidirectionality, padding, bad input, and a short MLM run that must learn."""
import numpy as np
import pytest

from nanotransformer.bert import (
    BERT,
    BERTConfig,
    char_vocab,
    encode_batch,
    fill_mask,
    mask_tokens,
    train_mlm,
)
from nanotransformer.gradcheck import numeric_grad, rel_error


def _tiny(dropout=0.0, dtype=np.float64):
    m = BERT(BERTConfig(vocab_size=12, block_size=8, n_layer=2, n_head=2, d_model=8, dropout=dropout, n_classes=3), dtype=dtype, seed=1)
    # larger weights than the 0.02 init, so gradients are well above finite-difference noise
    m.params += np.random.default_rng(5).normal(0, 0.4, m.params.shape).astype(dtype)
    return m


def _ids(rng):
    ids = rng.integers(3, 12, (3, 6))
    ids[:, 0] = 1  # [CLS]
    ids[1, 4:] = 0  # padding
    ids[2, 2:] = 0
    return ids


# ----------------------------------------------------------------------------- corruption


def test_mask_tokens_statistics():
    rng = np.random.default_rng(0)
    V = 50
    ids = rng.integers(3, V, (200, 100))
    ids[:, 0] = 1
    ids[:, -10:] = 0
    x, y = mask_tokens(ids, rng, mask_id=2, vocab_size=V)
    chosen = y != -100
    assert not chosen[:, 0].any() and not chosen[:, -10:].any()  # specials are never chosen
    assert np.array_equal(x[~chosen], ids[~chosen])  # only chosen positions change
    assert np.array_equal(y[chosen], ids[chosen])  # targets are the originals
    n_real = (ids >= 3).sum()
    assert chosen.sum() / n_real == pytest.approx(0.15, abs=0.005)
    masked = (x == 2) & chosen
    kept = (x == ids) & chosen
    assert masked.sum() / chosen.sum() == pytest.approx(0.8, abs=0.015)
    # kept: 10%, plus the random draws that happen to hit the original token (0.1 / 47)
    assert kept.sum() / chosen.sum() == pytest.approx(0.1 + 0.1 / 47, abs=0.01)
    assert x[chosen & ~masked].min() >= 3  # random replacements are never special tokens


def test_mask_tokens_bad_input(rng):
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(np.ones((2, 3), dtype=np.int64) * 4, rng, 2, 10, p_mask=0.95, p_random=0.1)
    with pytest.raises(ValueError, match="ids: expected ids in"):
        mask_tokens(np.full((2, 3), 10), rng, 2, 10)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("head", ["mlm", "cls"])
def test_whole_model_gradcheck(head):
    """Sampled coordinates of every parameter tensor, float64, with padding and dropout (masks
    fixed by re-seeding)."""
    m = _tiny(dropout=0.1)
    rng = np.random.default_rng(0)
    ids = _ids(rng)
    x, y = mask_tokens(ids, rng, mask_id=2, vocab_size=12, mask_prob=0.5)
    y[0, 1] = ids[0, 1]  # at least one target
    labels = np.array([0, 2, 1])

    def loss():
        if head == "mlm":
            return m.forward(x, y, train=True, rng=np.random.default_rng(3))[1]
        return m.forward_cls(ids, labels, train=True, rng=np.random.default_rng(3))[1]

    loss()
    grads = m.views(m.backward().copy())
    pick = np.random.default_rng(1)
    for name, view in m.p.items():
        coords = pick.choice(view.size, min(view.size, 5), replace=False)
        num = numeric_grad(loss, view, coords=coords).reshape(-1)[coords]
        err, _ = rel_error(grads[name].reshape(-1)[coords], num)
        assert err < 1e-6, f"{head} {name}: relative error {err:.2e}"
    unused = ("cls.w", "cls.b") if head == "mlm" else ("mlm.bias",)
    assert all(np.all(grads[n] == 0) for n in unused)


def test_attention_is_bidirectional_and_padding_is_masked():
    m = _tiny()
    ids = _ids(np.random.default_rng(0))
    logits, _ = m.forward(ids)
    later = ids.copy()
    later[0, 5] = 3 if ids[0, 5] != 3 else 4
    logits2, _ = m.forward(later)
    assert not np.allclose(logits2[0, 0], logits[0, 0])  # position 0 sees a *later* change
    # whatever sits under the padding is invisible: replace padding by more padding columns
    wider = np.concatenate([ids, np.zeros((3, 2), dtype=ids.dtype)], axis=1)
    logits3, _ = m.forward(wider)
    assert np.allclose(logits3[2, :2], logits[2, :2], atol=1e-12)


# ----------------------------------------------------------------------------- bad input


def test_bad_input():
    m = _tiny()
    ids = _ids(np.random.default_rng(0))
    with pytest.raises(ValueError, match="start with \\[CLS\\]"):
        m.forward_cls(ids[:, 1:], np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="block_size=8"):
        m.forward(np.ones((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="labels: expected shape"):
        m.forward_cls(ids, np.array([0, 1]))
    with pytest.raises(ValueError, match="labels: expected ids in"):
        m.forward_cls(ids, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="backward: expected a preceding forward"):
        m.backward()
    with pytest.raises(ValueError, match="n_head"):
        BERTConfig(vocab_size=5, d_model=10, n_head=3)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        char_vocab("abc").encode(list("abz"))


# ----------------------------------------------------------------------------- it learns


def test_mlm_learns_to_fill_blanks():
    """A periodic text: after 150 steps (~3 s) the masked-token loss is far below chance
    (log V), and a blank at the very start, which only right-hand context can explain, is filled."""
    text = "abcdefgh" * 40
    vocab = char_vocab(text)
    rows = [text[i : i + 15] for i in range(0, len(text) - 15, 3)]
    ids = encode_batch(vocab, rows, 16)
    m = BERT(BERTConfig(vocab_size=len(vocab), block_size=16, n_layer=1, n_head=2, d_model=32), seed=0)
    losses = train_mlm(m, ids, steps=150, batch_size=32, lr=1e-2, warmup=20, mask_prob=0.3)
    assert np.mean(losses[-10:]) < 0.1 * np.log(len(vocab))
    ((pos, preds),) = fill_mask(m, vocab, "abcd_fgh")
    assert pos == 4 and preds[0][0] == "e"
    ((pos, preds),) = fill_mask(m, vocab, "_bcdef")
    assert pos == 0 and preds[0][0] == "a"
