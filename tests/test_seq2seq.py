"""The encoder-decoder: label smoothing and whole-model gradient checks (float64), masks,
decoding, the numbers task, bad input, and a short training run that must beat a trivial baseline."""
import numpy as np
import pytest

from nanotransformer.gradcheck import gradcheck, numeric_grad, rel_error
from nanotransformer.layers import cross_entropy_forward
from nanotransformer.seq2seq import (
    Seq2Seq,
    Seq2SeqConfig,
    evaluate_seq2seq,
    label_smoothing_cross_entropy_backward,
    label_smoothing_cross_entropy_forward,
    make_batch,
    number_to_words,
    numbers_dataset,
    numbers_vocab,
    train_seq2seq,
)


def _tiny(norm="pre", dropout=0.0, dtype=np.float64, **kw):
    cfg = Seq2SeqConfig(vocab_size=11, max_len=8, n_enc_layer=2, n_dec_layer=2, n_head=2, d_model=8, dropout=dropout, norm=norm, **kw)
    m = Seq2Seq(cfg, dtype=dtype, seed=1)
    # GPT-2's init (0.02) gives gradients of ~1e-5, where finite-difference noise (~1e-11) is
    # already 1e-6 relative: use larger random weights so the check measures the backward.
    m.params += np.random.default_rng(5).normal(0, 0.4, m.params.shape).astype(dtype)
    return m


def _batch(rng):
    src = rng.integers(3, 11, (2, 5))
    src[1, 3:] = 0  # padding in the source: must be masked in encoder and cross-attention
    tgt_in = rng.integers(3, 11, (2, 4))
    tgt_in[:, 0] = 1
    targets = rng.integers(2, 11, (2, 4))
    targets[1, 2:] = -100
    tgt_in[1, 3:] = 0
    return src, tgt_in, targets


# ----------------------------------------------------------------------------- label smoothing


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_gradcheck(rng, eps):
    logits = 3 * rng.standard_normal((2, 3, 7))
    targets = rng.integers(0, 7, (2, 3))
    targets[0, 1] = -100
    result = gradcheck(label_smoothing_cross_entropy_forward, label_smoothing_cross_entropy_backward, logits, targets, eps)
    assert result.ok, str(result)


def test_label_smoothing_values(rng):
    logits = rng.standard_normal((4, 5))
    targets = np.array([0, 3, -100, 1])
    plain, _ = cross_entropy_forward(logits, targets)
    zero, _ = label_smoothing_cross_entropy_forward(logits, targets, 0.0)
    assert zero == pytest.approx(float(plain), rel=1e-12)
    # by hand: q = 0.9 onehot + 0.1 / 5, loss = -sum q log p over the 3 valid rows
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    q = np.full((4, 5), 0.1 / 5)
    q[np.arange(4), np.where(targets < 0, 0, targets)] += 0.9
    expected = -(q * logp).sum(-1)[[0, 1, 3]].mean()
    got, _ = label_smoothing_cross_entropy_forward(logits, targets, 0.1)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # ignored rows get no gradient; huge logits stay finite
    _, cache = label_smoothing_cross_entropy_forward(logits, targets, 0.1)
    assert np.all(label_smoothing_cross_entropy_backward(1.0, cache)[2] == 0)
    big, _ = label_smoothing_cross_entropy_forward(1e4 * logits, targets, 0.1)
    assert np.isfinite(big)


def test_label_smoothing_bad_input(rng):
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothing_cross_entropy_forward(rng.standard_normal((2, 3)), np.array([0, 1]), 1.0)
    with pytest.raises(ValueError, match="targets"):
        label_smoothing_cross_entropy_forward(rng.standard_normal((2, 3)), np.array([0, 3]), 0.1)


# ----------------------------------------------------------------------------- whole model


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_whole_model_gradcheck(norm):
    """Sampled coordinates of every parameter tensor, float64, with source and target padding,
    label smoothing and dropout (re-seeded for every evaluation so the masks are fixed)."""
    m = _tiny(norm, dropout=0.1)
    src, tgt_in, targets = _batch(np.random.default_rng(0))

    def loss():
        return m.forward(src, tgt_in, targets, label_smoothing=0.1, train=True, rng=np.random.default_rng(7))[1]

    loss()
    grads = m.views(m.backward().copy())
    pick = np.random.default_rng(0)
    for name, view in m.p.items():
        coords = pick.choice(view.size, min(view.size, 5), replace=False)
        num = numeric_grad(loss, view, coords=coords).reshape(-1)[coords]
        err, _ = rel_error(grads[name].reshape(-1)[coords], num)
        assert err < 1e-6, f"{name}: relative error {err:.2e}"
    assert m.num_params() == sum(v.size for v in m.p.values())


def test_padding_is_masked():
    """Extra source padding changes nothing; neither does what follows a target's end (its
    positions are ignored by the loss and, causally, invisible to earlier ones); rows are
    independent."""
    m = _tiny()
    src, tgt_in, targets = _batch(np.random.default_rng(0))
    logits, loss = m.forward(src, tgt_in, targets)
    wider = np.concatenate([src, np.zeros((2, 2), dtype=src.dtype)], axis=1)
    logits_w, loss_w = m.forward(wider, tgt_in, targets)
    np.testing.assert_allclose(logits_w, logits, rtol=0, atol=1e-12)
    tgt2 = tgt_in.copy()
    tgt2[1, 3] = 9  # row 1's target ends at position 2
    logits2, loss2 = m.forward(src, tgt2, targets)
    assert loss2 == pytest.approx(loss, abs=1e-12)
    np.testing.assert_allclose(logits2[1, :3], logits[1, :3], rtol=0, atol=1e-12)
    src3 = src.copy()
    src3[1, :3] = [4, 4, 4]
    logits3, _ = m.forward(src3, tgt_in, targets)
    np.testing.assert_allclose(logits3[0], logits[0], rtol=0, atol=1e-12)
    assert not np.allclose(logits3[1], logits[1])


def test_decoder_is_causal():
    m = _tiny()
    src, tgt_in, _ = _batch(np.random.default_rng(0))
    logits, _ = m.forward(src, tgt_in)
    tgt2 = tgt_in.copy()
    tgt2[:, 2] = 5
    logits2, _ = m.forward(src, tgt2)
    assert np.allclose(logits2[:, :2], logits[:, :2], atol=1e-12)
    assert not np.allclose(logits2[:, 2:], logits[:, 2:])


def test_float32_matches_float64():
    m64 = _tiny(dtype=np.float64)
    m32 = _tiny(dtype=np.float32)
    m32.params[...] = m64.params
    src, tgt_in, targets = _batch(np.random.default_rng(0))
    assert m32.forward(src, tgt_in)[0].dtype == np.float32
    _, l64 = m64.forward(src, tgt_in, targets, label_smoothing=0.1)
    _, l32 = m32.forward(src, tgt_in, targets, label_smoothing=0.1)
    assert l32 == pytest.approx(l64, rel=1e-5)
    g64 = m64.backward()
    # float32 through ~20 layers of rounding: compare at float32's precision, scaled to the gradient
    np.testing.assert_allclose(m32.backward(), g64, rtol=1e-3, atol=1e-5 * np.abs(g64).max())


# ----------------------------------------------------------------------------- decoding


def test_beam_size_1_is_greedy():
    m = _tiny()
    src, _, _ = _batch(np.random.default_rng(0))
    assert m.beam_search(src, beam_size=1, max_len=6, alpha=0.0) == m.greedy_decode(src, max_len=6)


def test_beam_search_beats_greedy_on_a_trap(monkeypatch):
    """Tokens: 2 = EOS, 3 = A, 4 = B. After BOS: A 0.6, B 0.4. After A: A or B at 0.5 each (no
    EOS until 2 more tokens). After B: EOS 0.9. Greedy takes A (and a long, unlikely path);
    beam search finds B EOS, probability 0.36 > 0.6 * 0.5 * ... ."""
    cfg = Seq2SeqConfig(vocab_size=5, max_len=6, n_enc_layer=1, n_dec_layer=1, n_head=1, d_model=4)
    m = Seq2Seq(cfg, dtype=np.float64)

    def fake(prefix, mem, src_pad):
        out = np.full((prefix.shape[0], 5), -1e9)
        for r, row in enumerate(prefix.tolist()):
            last = row[-1]
            if len(row) == 1:
                out[r, 3], out[r, 4] = np.log(0.6), np.log(0.4)
            elif last == 4:
                out[r, 2], out[r, 3] = np.log(0.9), np.log(0.1)
            else:
                out[r, 3], out[r, 4] = np.log(0.5), np.log(0.5)
        return out

    monkeypatch.setattr(m, "_next_logprobs", fake)
    src = np.array([[3, 3]])
    assert m.greedy_decode(src, max_len=4) == [[3, 3, 3, 3]]
    assert m.beam_search(src, beam_size=2, max_len=4, alpha=0.0) == [[4]]


# ----------------------------------------------------------------------------- the task


@pytest.mark.parametrize(
    "n, words",
    [(0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (105, "one hundred five"),
     (4021, "four thousand twenty one"), (110000, "one hundred ten thousand"),
     (999999, "nine hundred ninety nine thousand nine hundred ninety nine"), (2000001, "two million one")],
)  # fmt: skip
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_numbers_dataset_and_batch():
    vocab = numbers_vocab()
    train, nums = numbers_dataset(50, 1000, seed=0)
    _, nums_test = numbers_dataset(20, 1000, seed=1, exclude=nums)
    assert len(set(nums)) == 50 and not set(nums) & set(nums_test)
    src, tgt_in, targets = make_batch(train[:3], vocab)
    s, t = train[0]
    assert vocab.decode(src[0, : len(s)].tolist()) == s
    assert tgt_in[0, 0] == 1 and vocab.decode(tgt_in[0, 1 : len(t) + 1].tolist()) == t
    assert targets[0, len(t)] == 2  # EOS after the words
    assert np.all(targets[tgt_in == 0] == -100)  # padding is ignored by the loss


def test_bad_input():
    with pytest.raises(ValueError, match="n: expected an integer"):
        number_to_words(-1)
    with pytest.raises(ValueError, match="norm"):
        Seq2SeqConfig(vocab_size=5, norm="sandwich")
    with pytest.raises(ValueError, match="n_head"):
        Seq2SeqConfig(vocab_size=5, d_model=10, n_head=4)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        numbers_vocab().encode(["eleventy"])
    m = _tiny()
    with pytest.raises(ValueError, match="max_len=8"):
        m.forward(np.ones((1, 9), dtype=np.int64), np.ones((1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="tgt_in: expected batch size 2"):
        m.forward(np.ones((2, 3), dtype=np.int64), np.ones((1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="src: expected ids in"):
        m.forward(np.full((1, 3), 11), np.ones((1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="backward: expected a preceding forward"):
        m.backward()
    with pytest.raises(ValueError, match="beam_size"):
        m.beam_search(np.ones((1, 3), dtype=np.int64), beam_size=0)


# ----------------------------------------------------------------------------- it learns


def test_training_beats_trivial_baseline():
    """300 steps on numbers below 1000 (about 4 s): held-out exact match far above what the best
    constant answer gets (one in several hundred), and the loss at least halves."""
    vocab = numbers_vocab()
    train, nums = numbers_dataset(800, 1000, seed=0)
    test, _ = numbers_dataset(150, 1000, seed=1, exclude=nums)
    cfg = Seq2SeqConfig(vocab_size=len(vocab), max_len=16, n_enc_layer=1, n_dec_layer=1, n_head=4, d_model=32)
    m = Seq2Seq(cfg, seed=0)
    losses = train_seq2seq(m, train, vocab, steps=300, batch_size=64, lr=3e-3)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    r = evaluate_seq2seq(m, test, vocab)
    assert r["exact_match"] > 0.4, r["exact_match"]
    assert r["bleu"] > 60, r["bleu"]
