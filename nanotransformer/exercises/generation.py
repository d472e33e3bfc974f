"""Chapter 09's exercises: the sampling filters, against generation.top_k_filter and
generation.top_p_filter (the filters the sampler itself applies).

top-p's rule: a token is kept when the tokens ranked above it sum to < p. Every case keeps p at
least 0.01 away from such a running sum and never puts the cut between two equally likely tokens,
so any correct ranking (`argsort(-probs)`, `argsort(probs)[::-1]`, `sorted`) and any way of adding
up (`cumsum`, `math.fsum`) gives the same answer.
"""
import numpy as np

from .checker import case_runner, compare, register


def _filter_case(name, logits, param):
    def fn(student, tol):
        from .. import generation  # imported lazily: it pulls in the model

        expected = getattr(generation, name)(logits.copy(), param)
        return compare("logits", student(logits.copy(), param), expected, tol)

    return fn


_lg = np.random.default_rng(9)
register(
    "top_k_filter", "09-generation", "top_k_filter(logits, k) -> logits with all but the k largest of each row set to -inf", 1e-12,
    case_runner(
        [("V=10, k=3", _filter_case("top_k_filter", _lg.standard_normal(10), 3)),
         ("(2, 8), k=1", _filter_case("top_k_filter", _lg.standard_normal((2, 8)), 1)),
         ("(2, 6), k=6", _filter_case("top_k_filter", _lg.standard_normal((2, 6)), 6))],
        "generation.top_k_filter",
    ),
)
register(
    "top_p_filter", "09-generation",
    "top_p_filter(logits, p) -> logits with -inf outside the smallest most-likely set whose probability reaches p "
    "(a token is kept when the tokens ranked above it sum to < p; the cases never tie)",
    1e-12,
    case_runner(
        [("V=6, p=0.5", _filter_case("top_p_filter", np.log(np.array([0.05, 0.3, 0.1, 0.35, 0.15, 0.05])), 0.5)),
         ("V=6, p=0.85", _filter_case("top_p_filter", np.log(np.array([0.05, 0.3, 0.1, 0.35, 0.15, 0.05])), 0.85)),
         ("(2, 10), p=0.75", _filter_case("top_p_filter", 2 * _lg.standard_normal((2, 10)), 0.75)),
         ("p=0.01 keeps only the argmax", _filter_case("top_p_filter", _lg.standard_normal((3, 7)), 0.01))],
        "generation.top_p_filter",
    ),
)
