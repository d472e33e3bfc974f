"""Chapter 08's exercises.

    num_params(vocab_size, block_size, n_layer, d_model)   against model.GPT.param_specs, the
        layout GPT.num_params() counts (from the config alone: no GPT-2-sized model is allocated)
    tied_embedding_backward(ids, dx_emb, xf, dlogits)      the gradient of the token embedding wte,
        used twice (x = wte[ids] and logits = xf @ wte.T), against layers.embedding_backward plus
        the LM head's layers.linear_backward, transposed: the sum GPT.backward forms
"""
import math

import numpy as np

from .. import layers
from .checker import Wrong, case_runner, compare, ids_with_repeats, register


def _num_params_case(V, T, L, C):
    def fn(student, tol):
        from ..model import GPT, GPTConfig  # imported lazily: only this exercise needs the model

        cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=1, d_model=C)
        expected = sum(math.prod(shape) for _, shape in GPT.param_specs(cfg))
        got = student(V, T, L, C)
        if got != expected:
            raise Wrong(f"n_params: expected {expected:,}, got {got!r}")
        return 0.0

    return fn


register(
    "num_params", "08-gpt",
    "num_params(vocab_size, block_size, n_layer, d_model) -> number of parameters of GPT-2's layout, LM head tied",
    0.0,
    case_runner(
        [("V=65, T=64, L=4, C=128", _num_params_case(65, 64, 4, 128)), ("V=10, T=8, L=1, C=4", _num_params_case(10, 8, 1, 4)),
         ("GPT-2 small: V=50257, T=1024, L=12, C=768", _num_params_case(50257, 1024, 12, 768))],
        "model.GPT.param_specs",
    ),
)


def _tied_case(B, T, C, V):
    def fn(student, tol):
        rng = np.random.default_rng(13)
        ids = ids_with_repeats(rng, (B, T), V)
        dx_emb, xf, dlogits = rng.standard_normal((B, T, C)), rng.standard_normal((B, T, C)), rng.standard_normal((B, T, V))
        _, emb_cache = layers.embedding_forward(ids, np.zeros((V, C)))
        _, head_cache = layers.linear_forward(xf, np.zeros((C, V)))
        expected = layers.embedding_backward(dx_emb, emb_cache) + layers.linear_backward(dlogits, head_cache)[1].T
        return compare("dwte", student(ids.copy(), dx_emb.copy(), xf.copy(), dlogits.copy()), expected, tol)

    return fn


register(
    "tied_embedding_backward", "08-gpt",
    "tied_embedding_backward(ids, dx_emb, xf, dlogits) -> dwte: (V, C), wte used by x = wte[ids] and by logits = xf @ wte.T",
    1e-9,
    case_runner([("B=2, T=3, C=4, V=5", _tied_case(2, 3, 4, 5)), ("B=3, T=7, C=6, V=11", _tied_case(3, 7, 6, 11))],
                "embedding_backward + linear_backward"),
)
