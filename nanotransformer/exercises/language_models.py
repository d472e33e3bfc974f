"""Chapter 00's exercises: the bigram model by counting, and perplexity.

    bigram_probs(ids, V)    against data.bigram_probs
    perplexity(p_target)    against metrics.perplexity (which takes -log p, the per-token loss),
                            including 400 tokens whose probability product underflows float64
"""
import numpy as np

from .. import data, metrics
from .checker import case_runner, compare, register


def _bigram_case(ids, V):
    def fn(student, tol):
        return compare("P", student(list(ids), V), data.bigram_probs(ids, V), tol)

    return fn


register(
    "bigram_probs", "00-language-models",
    "bigram_probs(ids, V) -> P: (V, V), P[a, b] = (count(a followed by b) + 1) / (count(a followed by anything) + V)",
    1e-9,
    case_runner(
        [("ids [0, 1, 1, 2, 0, 1], V=3", _bigram_case([0, 1, 1, 2, 0, 1], 3)),
         ("40 random ids, V=5", _bigram_case(list(np.random.default_rng(0).integers(0, 5, 40)), 5))],
        "data.bigram_probs (add-one bigram counts)",
    ),
)


def _ppl_case(p):
    def fn(student, tol):
        p_ = np.array(p, dtype=np.float64)
        return compare("perplexity", student(p_.copy()), metrics.perplexity(-np.log(p_)), tol)

    return fn


register(
    "perplexity", "00-language-models",
    "perplexity(p_target) -> exp(mean(-log p)), p_target: (N,) the probability the model gave each actual next token",
    1e-9,
    case_runner(
        [("uniform over 4", _ppl_case([0.25] * 6)), ("mixed", _ppl_case([0.9, 0.5, 0.01, 0.3, 0.7])),
         ("tiny probabilities", _ppl_case([1e-30, 1e-20, 0.5])),
         # the product 0.1**400 = 1e-400 underflows to 0.0 in float64: multiplying the
         # probabilities together (np.prod(p) ** (-1 / N)) gives inf, not 10
         ("400 tokens at p = 0.1 (their product underflows)", _ppl_case([0.1] * 400))],
        "metrics.perplexity of -log p",
    ),
)
