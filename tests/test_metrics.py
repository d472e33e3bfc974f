"""Metrics: hand-computed cases, bad input, and oracle comparisons with sacrebleu / rouge-score.

Oracle tolerances: BLEU |ours - sacrebleu| < 1e-9 BLEU points (same formula, same summation
order, so only rounding differs); ROUGE precision/recall/F1 < 1e-12 per pair and on the mean.
"""
import math

import numpy as np
import pytest

from nanotransformer.metrics import (
    accuracy,
    corpus_bleu,
    f1_score,
    lcs_length,
    perplexity,
    precision_recall_f1,
    rouge,
    rouge_l,
    rouge_n,
    rouge_tokenize,
)

# ----------------------------------------------------------------------------- sentence sets

WORDS = "the cat sat on a mat dog ran to park big red".split()


def _perturb(rng, ref):
    """A noisy copy of ref: drop, swap, substitute or insert words, so every n-gram order has
    some matches and some misses."""
    h = list(ref)
    for _ in range(rng.integers(0, 4)):
        op = rng.integers(0, 4)
        if op == 0 and len(h) > 1:
            del h[rng.integers(len(h))]
        elif op == 1 and len(h) > 1:
            i = rng.integers(len(h) - 1)
            h[i], h[i + 1] = h[i + 1], h[i]
        elif op == 2 and h:
            h[rng.integers(len(h))] = WORDS[rng.integers(len(WORDS))]
        else:
            h.insert(rng.integers(len(h) + 1), WORDS[rng.integers(len(WORDS))])
    return h


def _random_set(seed, n=30, n_refs=1, max_len=14):
    rng = np.random.default_rng(seed)
    hyps, refs = [], []
    for _ in range(n):
        rs = [[WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(1, max_len))] for _ in range(n_refs)]
        hyps.append(" ".join(_perturb(rng, rs[0])))
        refs.append([" ".join(r) for r in rs])
    return hyps, refs


HAND = (
    ["the cat is on the mat", "there is a cat on the mat", "a dog ran in the big park today",
     "hello", "the quick brown fox jumps over the lazy dog"],
    [["the cat is on the mat", "there is a cat on the mat"], ["the cat is on the mat", "a cat sits on the mat"],
     ["the dog ran in the park", "a dog is running in a park"], ["hello world", "hello there"],
     ["a quick brown fox jumped over a lazy dog", "the fast brown fox jumps over the lazy dog"]],
)

SETS = {
    "hand, 2 refs": HAND,
    "random, 1 ref": _random_set(0),
    "random, 3 refs": _random_set(1, n_refs=3),
    "random, short (< 4 words)": _random_set(2, n=12, max_len=4),
    "random, long": _random_set(3, n=8, max_len=40),
    "all shorter than 3 words": (["a b", "c", "d e"], [["a b"], ["c d"], ["d e f"]]),
    "numbers to words": (
        ["three hundred forty two", "seven thousand one", "nineteen", "two hundred"],
        [["three hundred forty two"], ["seven thousand eleven"], ["ninety"], ["two hundred five"]],
    ),
}

# ----------------------------------------------------------------------------- BLEU


def test_bleu_identical_is_100():
    hyps = ["a b c d e", "f g h i j k"]
    assert corpus_bleu(hyps, hyps).score == pytest.approx(100.0)


def test_bleu_by_hand():
    # hyp: 7 tokens, ref: 8 tokens -> BP = exp(1 - 8/7)
    hyp, ref = "the the cat sat on the mat", "the cat sat on the red mat ."
    s = corpus_bleu([hyp], [ref], smooth="none")
    # 1-grams: the x3 (clip 2) + cat sat on mat = 6/7; 2-grams: the-cat cat-sat sat-on on-the = 4/6
    # 3-grams: the-cat-sat cat-sat-on sat-on-the = 3/5; 4-grams: the-cat-sat-on cat-sat-on-the = 2/4
    assert s.correct == [6, 4, 3, 2] and s.total == [7, 6, 5, 4]
    expected = math.exp(1 - 8 / 7) * math.exp((math.log(6 / 7) + math.log(4 / 6) + math.log(3 / 5) + math.log(2 / 4)) / 4)
    assert s.score == pytest.approx(100 * expected, rel=1e-12)
    assert s.bp == pytest.approx(math.exp(1 - 8 / 7))


def test_bleu_clips_repeated_words():
    s = corpus_bleu(["the the the the"], ["the cat"], max_n=1, smooth="none")
    assert s.correct == [1] and s.total == [4]


def test_bleu_closest_reference_length_prefers_shorter_on_ties():
    s = corpus_bleu(["a b c d e f"], [["a b c d", "a b c d e f g h"]])  # |6-4| == |6-8|
    assert s.ref_len == 4


def test_bleu_smoothing_none_gives_zero_without_4gram_match():
    hyp, ref = "a b c x d e", "a b c y d e"
    assert corpus_bleu([hyp], [ref], smooth="none").score == 0.0
    assert corpus_bleu([hyp], [ref], smooth="exp").score > 0.0


def test_bleu_accepts_tokens():
    assert corpus_bleu([["a", "b", "c", "d"]], [["a", "b", "c", "d"]]).score == pytest.approx(100.0)
    assert corpus_bleu([["a", "b", "c", "d"]], [[["x"], ["a", "b", "c", "d"]]]).score == pytest.approx(100.0)


@pytest.mark.parametrize(
    "hyps, refs, match",
    [
        (["a b"], ["a b", "c d"], "one entry per hypothesis"),
        (["a b", "c d"], ["a b"], "one entry per hypothesis"),
        ([], [], "at least one example"),
        (["a b"], [""], r"references\[0\]: expected a non-empty reference"),
        (["a b"], [["", ""]], r"references\[0\]: expected a non-empty reference"),
        (["a b"], [[]], r"references\[0\]: expected a string or a list of strings"),
        (["a b"], [None], r"references\[0\]"),
        ("a b", ["a b"], "hypotheses: expected a list"),
    ],
)
def test_bleu_bad_input(hyps, refs, match):
    with pytest.raises(ValueError, match=match):
        corpus_bleu(hyps, refs)


def test_bleu_bad_options():
    with pytest.raises(ValueError, match="smooth"):
        corpus_bleu(["a"], ["a"], smooth="add-k")
    with pytest.raises(ValueError, match="max_n"):
        corpus_bleu(["a"], ["a"], max_n=0)


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(SETS))
@pytest.mark.parametrize("smooth", ["exp", "none", "floor"])
def test_bleu_matches_sacrebleu(name, smooth):
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs = SETS[name]
    n_refs = len(refs[0])
    streams = [[r[j] for r in refs] for j in range(n_refs)]  # sacrebleu wants one list per reference "stream"
    expected = sacrebleu.corpus_bleu(hyps, streams, tokenize="none", smooth_method=smooth, force=True)
    got = corpus_bleu(hyps, refs, smooth=smooth)
    assert abs(got.score - expected.score) < 1e-9, (got, expected)
    assert got.bp == pytest.approx(expected.bp, abs=1e-12)
    assert (got.hyp_len, got.ref_len) == (expected.sys_len, expected.ref_len)
    assert got.correct == list(expected.counts) and got.total == list(expected.totals)


# ----------------------------------------------------------------------------- ROUGE


def test_rouge_by_hand():
    s = rouge_n("the cat sat on the mat", "the cat lay on the mat", 1)
    assert (s.precision, s.recall) == (5 / 6, 5 / 6)
    s = rouge_n("the cat sat on the mat", "the cat lay on the mat", 2)
    assert s.precision == 3 / 5  # the-cat, on-the, the-mat
    assert lcs_length("abcbdab", "bdcaba") == 4
    s = rouge_l("a b c d", "a x c y d z")
    assert (s.precision, s.recall) == (3 / 4, 3 / 6)
    assert rouge_tokenize("Hello, World! It's 3pm") == ["hello", "world", "it", "s", "3pm"]


def test_rouge_bad_input():
    with pytest.raises(ValueError, match="one entry per hypothesis"):
        rouge(["a"], ["a", "b"])
    with pytest.raises(ValueError, match=r"references\[1\]: expected a non-empty reference"):
        rouge(["a", "b"], ["a", "!!"])
    with pytest.raises(ValueError, match="kinds"):
        rouge(["a"], ["a"], kinds=("rouge3",))


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(SETS))
def test_rouge_matches_rouge_score(name):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    hyps, refs = SETS[name]
    refs = [r[0] for r in refs]  # rouge-score scores one reference per pair
    hyps = [h.upper() if i % 2 else h + ", ok!" for i, h in enumerate(hyps)]  # exercise the tokenizer too
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    sums = {k: np.zeros(3) for k in ("rouge1", "rouge2", "rougeL")}
    for h, r in zip(hyps, refs):
        expected = scorer.score(r, h)  # rouge-score's argument order is (target, prediction)
        for k, fn in (("rouge1", lambda a, b: rouge_n(a, b, 1)), ("rouge2", lambda a, b: rouge_n(a, b, 2)), ("rougeL", rouge_l)):
            got, e = fn(h, r), expected[k]
            assert abs(got.precision - e.precision) < 1e-12 and abs(got.recall - e.recall) < 1e-12
            assert abs(got.f1 - e.fmeasure) < 1e-12
            sums[k] += (e.precision, e.recall, e.fmeasure)
    for k, s in rouge(hyps, refs).items():
        assert np.allclose([s.precision, s.recall, s.f1], sums[k] / len(hyps), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- perplexity, classification


def test_perplexity():
    assert perplexity(math.log(65)) == pytest.approx(65.0)
    assert perplexity(np.array([math.log(2), math.log(8)])) == pytest.approx(4.0)  # geometric mean of 2, 8
    for bad in ([], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="nll"):
            perplexity(np.array(bad))


def test_classification_by_hand():
    y = [1, 1, 1, 0, 0, 0, 1, 0]
    p = [1, 0, 1, 1, 0, 0, 1, 0]
    assert accuracy(y, p) == 6 / 8
    prec, rec, f1 = precision_recall_f1(y, p)  # TP 3, FP 1, FN 1
    assert (prec, rec) == (3 / 4, 3 / 4) and f1 == pytest.approx(0.75)
    f0 = precision_recall_f1(y, p, positive=0)[2]  # TP 3, FP 1, FN 1
    assert f1_score(y, p, average="macro") == pytest.approx((f1 + f0) / 2)
    assert precision_recall_f1([0, 0], [0, 0]) == (0.0, 0.0, 0.0)  # no positives: 0, not NaN


def test_classification_bad_input():
    with pytest.raises(ValueError, match="y_pred: expected 3 labels"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="at least one label"):
        accuracy([], [])
    with pytest.raises(ValueError, match="average"):
        precision_recall_f1([0], [0], average="micro")
