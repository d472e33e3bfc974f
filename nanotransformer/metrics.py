"""Evaluation metrics, written out by hand: perplexity, corpus BLEU, ROUGE-1/2/L, accuracy,
precision / recall / F1.

    perplexity(loss)                                  # exp(mean negative log-likelihood)
    corpus_bleu(hyps, refs).score                     # 0..100, as sacrebleu
    rouge(hyps, refs)["rougeL"].f1                    # mean over pairs, as rouge-score
    precision_recall_f1(y_true, y_pred)               # binary, for the positive class

Inputs of the text metrics are either strings or lists of tokens. Strings are tokenised the
way the reference implementation does it, so the numbers are comparable with published ones:
BLEU splits on whitespace (sacrebleu with `tokenize="none"`: tokenise before scoring), ROUGE
lower-cases and keeps runs of [a-z0-9] (rouge-score's default tokenizer). The tests compare both
with those libraries.

Dimension legend: N number of examples (sentences or labels).

Does not: implement sacrebleu's "13a" tokenizer, BLEU's `effective_order` (sentence-level
BLEU), ROUGE's Porter stemming or ROUGE-Lsum, or bootstrap confidence intervals.
"""
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- perplexity


def perplexity(nll):
    """exp(mean negative log-likelihood per token), nll in nats.

    nll: a float (the mean cross-entropy the model reports) or an array of per-token negative
    log-likelihoods -> float. A model that spreads its probability uniformly over k tokens has
    perplexity k, so it reads as "how many tokens the model is choosing between". A mean above
    709 nats (no model at all) gives inf rather than OverflowError.
    """
    arr = np.asarray(nll, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("nll: expected at least one value, got an empty array")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"nll: expected finite non-negative values (nats), got min {arr.min()}, max {arr.max()}")
    mean = float(arr.mean())
    return math.exp(mean) if mean < 709.0 else math.inf  # exp() of more overflows a float: "infinite"


# ----------------------------------------------------------------------------- shared helpers


def _tokens(name, x, tokenize):
    if isinstance(x, str):
        return tokenize(x)
    if isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x):
        return list(x)
    raise ValueError(f"{name}: expected a string or a list of string tokens, got {type(x).__name__}")


def _check_pairs(hypotheses, references):
    for name, seq in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(seq, str) or not hasattr(seq, "__len__"):
            raise ValueError(f"{name}: expected a list (one entry per example), got {type(seq).__name__}")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"references: expected one entry per hypothesis ({len(hypotheses)}), got {len(references)}"
        )
    if len(hypotheses) == 0:
        raise ValueError("hypotheses: expected at least one example, got an empty list")


def _ngrams(tokens, n):
    """Counter of the n-grams (tuples) of a token list."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


# ----------------------------------------------------------------------------- BLEU


@dataclass
class BLEUScore:
    """score: 0..100. precisions: the modified n-gram precisions p_1..p_N in percent.
    bp: brevity penalty. hyp_len, ref_len: total hypothesis / effective reference length.
    correct, total: the clipped n-gram matches and hypothesis n-gram counts, per order."""

    score: float
    precisions: list
    bp: float
    hyp_len: int
    ref_len: int
    correct: list
    total: list

    def __str__(self):
        ps = "/".join(f"{p:.1f}" for p in self.precisions)
        return f"BLEU = {self.score:.2f} {ps} (BP = {self.bp:.3f} hyp_len = {self.hyp_len} ref_len = {self.ref_len})"


SMOOTH_METHODS = ("none", "exp", "floor")


def modified_precision(hypothesis, references, n):
    """BLEU's clipped n-gram matches of one sentence. hypothesis: a token list, references: a
    list of token lists -> (matches, total), two ints.

    Each hypothesis n-gram counts as a match at most as often as it occurs in the reference that
    contains it most often ("the the the" earns as many "the"s as a reference has); total is the
    number of hypothesis n-grams. BLEU sums both over the corpus before dividing.
    """
    max_ref = Counter()
    for r in references:
        max_ref |= _ngrams(r, n)  # elementwise max: the clip for each n-gram
    matches = sum(min(c, max_ref[g]) for g, c in _ngrams(hypothesis, n).items())
    return matches, max(0, len(hypothesis) - n + 1)


def brevity_penalty(c, r):
    """BLEU's brevity penalty: 1 if c >= r else exp(1 - r / c), and 0 when c = 0.
    c: the total hypothesis length, r: the effective reference length (precision alone would
    reward hypotheses that say little)."""
    if c >= r:
        return 1.0
    return math.exp(1.0 - r / c) if c > 0 else 0.0


def corpus_bleu(hypotheses, references, max_n=4, smooth="exp", smooth_value=0.1):
    """Corpus-level BLEU (Papineni et al. 2002), computed the way sacrebleu does.

    hypotheses: N strings (split on whitespace) or N token lists. references: N entries, one
    per hypothesis: a string or a non-empty list of strings (several references) for string
    hypotheses, a token list or a list of token lists for tokenised ones.
    -> BLEUScore (`.score` in 0..100).

    BLEU = BP * exp(mean_n log p_n), n = 1..max_n, where
      p_n = sum over sentences of matches clipped by the reference counts / hypothesis n-grams
            (clipping: "the the the" earns at most as many "the"s as a reference contains;
            with several references, the max count over them),
      BP  = 1 if c > r else exp(1 - r / c): c the total hypothesis length, r the sum over
            sentences of the reference length closest to the hypothesis (ties: the shorter).
    Counts are summed over the corpus *before* dividing, so corpus BLEU is not a mean of
    sentence BLEUs.

    smooth (what to do with an order that has no match at all, which would make log p_n = -inf):
      "none"  -> p_n = 0, BLEU = 0;
      "exp"   -> p_n = 1 / (2^k * total_n) for the k-th such order (sacrebleu's default);
      "floor" -> p_n = smooth_value / total_n.
    Whatever the smoothing, a corpus with no matching unigram scores 0, and an order the
    hypotheses are too short to contain contributes p_n = 0 (sacrebleu's conventions).
    """
    _check_pairs(hypotheses, references)
    if smooth not in SMOOTH_METHODS:
        raise ValueError(f"smooth: expected one of {SMOOTH_METHODS}, got {smooth!r}")
    if not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"max_n: expected a positive integer, got {max_n!r}")
    correct, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
        h = _tokens(f"hypotheses[{i}]", hyp, str.split)
        refs = _as_reference_list(i, hyp, refs)
        rs = [_tokens(f"references[{i}]", r, str.split) for r in refs]
        if all(len(r) == 0 for r in rs):
            raise ValueError(f"references[{i}]: expected a non-empty reference, got only empty ones")
        hyp_len += len(h)
        # closest reference length, ties broken towards the shorter reference
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            matches, n_grams = modified_precision(h, rs, n)
            correct[n - 1] += matches
            total[n - 1] += n_grams

    bp = brevity_penalty(hyp_len, ref_len)
    precisions = [0.0] * max_n
    if not any(correct):
        return BLEUScore(0.0, precisions, bp, hyp_len, ref_len, correct, total)
    k = 1
    for n in range(max_n):
        if total[n] == 0:
            break  # no hypothesis is this long: p_n stays 0
        if correct[n] > 0:
            precisions[n] = 100.0 * correct[n] / total[n]
        elif smooth == "exp":
            k *= 2
            precisions[n] = 100.0 / (k * total[n])
        elif smooth == "floor":
            precisions[n] = 100.0 * smooth_value / total[n]
    if min(precisions) == 0.0:
        score = 0.0  # log 0 = -inf: the geometric mean is 0
    else:
        score = bp * math.exp(sum(math.log(p) for p in precisions) / max_n)
    return BLEUScore(score, precisions, bp, hyp_len, ref_len, correct, total)


def _as_reference_list(i, hyp, refs):
    """references[i] -> a list of references. A string hypothesis goes with a string or a list of
    strings; a token-list hypothesis with a token list or a list of token lists."""
    one = isinstance(refs, str) if isinstance(hyp, str) else (
        isinstance(refs, (list, tuple)) and all(isinstance(t, str) for t in refs) and len(refs) > 0
    )
    if one:
        return [refs]
    if not isinstance(refs, (list, tuple)) or len(refs) == 0:
        kind = "a string or a list of strings" if isinstance(hyp, str) else "a token list or a list of token lists"
        raise ValueError(f"references[{i}]: expected {kind} (at least one reference), got {refs!r}")
    return list(refs)


# ----------------------------------------------------------------------------- ROUGE

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text):
    """rouge-score's default tokenizer: lower-case, anything not [a-z0-9] separates tokens."""
    return [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]


@dataclass
class RougeScore:
    precision: float
    recall: float
    f1: float


def _prf(overlap, n_hyp, n_ref):
    p = overlap / max(n_hyp, 1)
    r = overlap / max(n_ref, 1)
    return RougeScore(p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0)


def rouge_n(hypothesis, reference, n):
    """ROUGE-N of one pair: n-gram overlap (clipped counts).
    precision = overlap / hypothesis n-grams, recall = overlap / reference n-grams, F1 their
    harmonic mean. Strings are tokenised with `rouge_tokenize`."""
    h = _ngrams(_tokens("hypothesis", hypothesis, rouge_tokenize), n)
    r = _ngrams(_tokens("reference", reference, rouge_tokenize), n)
    overlap = sum(min(c, h[g]) for g, c in r.items())
    return _prf(overlap, sum(h.values()), sum(r.values()))


def lcs_length(a, b):
    """Length of the longest common subsequence of two token lists, by dynamic programming:
    L[i][j] = L[i-1][j-1] + 1 if a[i-1] == b[j-1] else max(L[i-1][j], L[i][j-1]).
    One row at a time, so memory is O(len(b))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis, reference):
    """ROUGE-L of one pair: precision = LCS / len(hypothesis), recall = LCS / len(reference).
    Unlike ROUGE-N it rewards in-order matches that need not be contiguous."""
    h = _tokens("hypothesis", hypothesis, rouge_tokenize)
    r = _tokens("reference", reference, rouge_tokenize)
    if not h or not r:
        return RougeScore(0.0, 0.0, 0.0)
    return _prf(lcs_length(h, r), len(h), len(r))


ROUGE_KINDS = ("rouge1", "rouge2", "rougeL")


def rouge(hypotheses, references, kinds=ROUGE_KINDS):
    """Mean ROUGE over N (hypothesis, reference) pairs -> {kind: RougeScore}.

    Each pair is scored alone and precision, recall and F1 are averaged separately (what
    rouge-score's BootstrapAggregator reports as the mid value, without the bootstrap).
    An empty reference is an error: its recall would be undefined.
    """
    _check_pairs(hypotheses, references)
    bad = [k for k in kinds if k not in ROUGE_KINDS]
    if bad:
        raise ValueError(f"kinds: expected some of {ROUGE_KINDS}, got {bad}")
    sums = {k: np.zeros(3) for k in kinds}
    for i, (h, r) in enumerate(zip(hypotheses, references)):
        if not _tokens(f"references[{i}]", r, rouge_tokenize):
            raise ValueError(f"references[{i}]: expected a non-empty reference, got {r!r}")
        for k in kinds:
            s = rouge_l(h, r) if k == "rougeL" else rouge_n(h, r, int(k[-1]))
            sums[k] += (s.precision, s.recall, s.f1)
    return {k: RougeScore(*(float(v) for v in s / len(hypotheses))) for k, s in sums.items()}


# ----------------------------------------------------------------------------- classification


def _labels(y_true, y_pred):
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.ndim != 1 or yp.ndim != 1:
        raise ValueError(f"y_true, y_pred: expected 1-D label arrays, got shapes {yt.shape}, {yp.shape}")
    if yt.shape != yp.shape:
        raise ValueError(f"y_pred: expected {yt.shape[0]} labels (one per y_true), got {yp.shape[0]}")
    if yt.size == 0:
        raise ValueError("y_true: expected at least one label, got none")
    return yt, yp


def accuracy(y_true, y_pred):
    """Fraction of labels predicted exactly. y_true, y_pred: (N,)"""
    yt, yp = _labels(y_true, y_pred)
    return float(np.mean(yt == yp))


def precision_recall_f1(y_true, y_pred, positive=1, average="binary"):
    """Precision, recall and F1 -> (p, r, f1) floats.

    average="binary": for class `positive` only,
        precision = TP / (TP + FP)   of what we called positive, how much was
        recall    = TP / (TP + FN)   of what was positive, how much we found
        F1        = 2 p r / (p + r)
    (0 when the denominator is 0, as scikit-learn's zero_division=0).
    average="macro": the unweighted mean of the per-class p, r, F1 over every class in
    y_true or y_pred, so a rare class counts as much as a common one.
    """
    yt, yp = _labels(y_true, y_pred)
    if average == "macro":
        per = [precision_recall_f1(yt, yp, c) for c in np.union1d(yt, yp)]
        return tuple(float(np.mean(col)) for col in zip(*per))
    if average != "binary":
        raise ValueError(f"average: expected 'binary' or 'macro', got {average!r}")
    tp = int(np.sum((yp == positive) & (yt == positive)))
    fp = int(np.sum((yp == positive) & (yt != positive)))
    fn = int(np.sum((yp != positive) & (yt == positive)))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f1


def f1_score(y_true, y_pred, positive=1, average="binary"):
    """F1 alone (see `precision_recall_f1`)."""
    return precision_recall_f1(y_true, y_pred, positive, average)[2]
