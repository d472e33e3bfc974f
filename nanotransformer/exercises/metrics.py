"""Chapter 14's exercises: the pieces of BLEU and ROUGE-L, against metrics.modified_precision,
metrics.brevity_penalty and metrics.lcs_length."""
from .. import metrics
from .checker import case_runner, compare, compare_all, register


def _mp_case(hyp, refs, n):
    def fn(student, tol):
        got = student(hyp.split(), [r.split() for r in refs], n)
        expected = metrics.modified_precision(hyp.split(), [r.split() for r in refs], n)
        return compare_all(("matches", "total"), got, expected, 1e-12)

    return fn


register(
    "modified_precision", "14-metrics",
    "modified_precision(hyp, refs, n) -> (clipped n-gram matches, number of hypothesis n-grams); hyp, refs: token lists", 1e-12,
    case_runner(
        [("unigrams, 'the the the'", _mp_case("the the the the", ["the cat", "a the"], 1)),
         ("bigrams, two references", _mp_case("the cat sat on the mat", ["the cat is on the mat", "there is a cat on the mat"], 2)),
         ("hypothesis shorter than n", _mp_case("a b", ["a b c"], 3))],
        "metrics.modified_precision",
    ),
)


def _bp_case(c, r):
    def fn(student, tol):
        return compare("bp", student(c, r), metrics.brevity_penalty(c, r), tol)

    return fn


register(
    "brevity_penalty", "14-metrics", "brevity_penalty(c, r) -> 1 if c >= r else exp(1 - r / c) (0 when c == 0)", 1e-12,
    case_runner([("c > r", _bp_case(12, 10)), ("c == r", _bp_case(5, 5)), ("c < r", _bp_case(7, 10)), ("c = 0", _bp_case(0, 4))],
                "metrics.brevity_penalty"),
)


def _lcs_case(a, b):
    def fn(student, tol):
        return compare("lcs", student(list(a), list(b)), metrics.lcs_length(list(a), list(b)), 1e-12)

    return fn


register(
    "lcs_length", "14-metrics", "lcs_length(a, b) -> length of the longest common subsequence (not necessarily contiguous)", 1e-12,
    case_runner(
        [("'abcbdab' vs 'bdcaba'", _lcs_case("abcbdab", "bdcaba")), ("gaps", _lcs_case("axbyc", "abc")),
         ("empty", _lcs_case("", "abc")), ("equal", _lcs_case("abab", "abab"))],
        "metrics.lcs_length",
    ),
)
