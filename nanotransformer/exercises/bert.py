"""Chapter 12's exercises.

    attention_allowed(ids, pad_id, causal)   against attention.attention_allowed, given the key
        padding mask ids == pad_id and broadcast to (B, T, T)
    mask_tokens(ids, u_choose, u_kind, random_ids, mask_id, n_special, mask_prob)
        BERT's 80/10/10 corruption with its random numbers given, so the answer is deterministic;
        against tasks.mask_tokens fed those same numbers (`_ReplayRng`)
"""
import numpy as np

from .. import attention, tasks
from .checker import case_runner, compare_exact, compare_exact_all, register


def _allowed_case(ids, pad_id, causal):
    def fn(student, tol):
        B, T = ids.shape
        expected = np.broadcast_to(attention.attention_allowed(T, T, causal, ids == pad_id, 1), (B, T, T))
        return compare_exact("allowed", student(ids.copy(), pad_id, causal), expected, "bool")

    return fn


_ids_pad = np.array([[1, 5, 6, 7], [1, 4, 0, 0]])
register(
    "attention_allowed", "12-bert",
    "attention_allowed(ids, pad_id, causal) -> (B, T, T) bool, True where query i may attend to key j", 0.0,
    case_runner(
        [("bidirectional, padding", _allowed_case(_ids_pad, 0, False)), ("causal, padding", _allowed_case(_ids_pad, 0, True)),
         ("bidirectional, no padding", _allowed_case(np.array([[3, 4, 5]]), 0, False))],
        "attention.attention_allowed",
    ),
)

_DRAWN = -1  # stands for "a random id goes here": never a real id


class _ReplayRng:
    """Plays the np.random.Generator that tasks.mask_tokens draws from, with the exercise's numbers:
    its first random(shape) is u_choose (which tokens are chosen), its second u_kind (mask, random
    or keep). integers() hands out _DRAWN placeholders; the reference puts random_ids there."""

    def __init__(self, u_choose, u_kind):
        self._uniforms = [u_choose, u_kind]

    def random(self, shape):
        if not self._uniforms or self._uniforms[0].shape != tuple(np.atleast_1d(shape)):
            raise RuntimeError("tasks.mask_tokens no longer draws random(ids.shape) twice: update _ReplayRng")
        return self._uniforms.pop(0)

    def integers(self, low, high, size):
        return np.full(size, _DRAWN, dtype=np.int64)


def _ref_mask_tokens(ids, u_choose, u_kind, random_ids, mask_id, n_special, mask_prob, V):
    corrupted, targets = tasks.mask_tokens(ids, _ReplayRng(u_choose, u_kind), mask_id=mask_id, vocab_size=V,
                                           n_special=n_special, mask_prob=mask_prob)  # fmt: skip
    return np.where(corrupted == _DRAWN, random_ids, corrupted), targets


def _corrupt_case(B, T, V, mask_prob):
    def fn(student, tol):
        rng = np.random.default_rng(23)
        ids = rng.integers(3, V, (B, T))
        ids[:, 0] = 1
        ids[-1, -2:] = 0
        args = (ids, rng.random((B, T)), rng.random((B, T)), rng.integers(3, V, (B, T)), 2, 3, mask_prob)
        got = student(*(a.copy() if isinstance(a, np.ndarray) else a for a in args))
        expected = _ref_mask_tokens(*args, V)
        return compare_exact_all(("corrupted", "targets"), got, expected, "int")

    return fn


register(
    "mask_tokens", "12-bert",
    "mask_tokens(ids, u_choose, u_kind, random_ids, mask_id, n_special, mask_prob) -> corrupted, targets (-100 where not chosen)",
    0.0,
    case_runner([("(2, 10), mask_prob 0.5", _corrupt_case(2, 10, 20, 0.5)), ("(4, 16), mask_prob 0.15", _corrupt_case(4, 16, 30, 0.15))],
                "tasks.mask_tokens (BERT's 80/10/10 rule)"),
)
