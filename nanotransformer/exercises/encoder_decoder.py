"""Chapter 13's exercises.

    label_smoothing_cross_entropy_backward(dout, cache)
        against finite differences of layers.label_smoothing_cross_entropy_forward
    teacher_forcing(ys, bos_id, eos_id, pad_id)   against tasks.teacher_forcing (the target half
        of tasks.make_batch)
"""

from .. import layers, tasks
from .checker import case_runner, compare_exact_all, grad_exercise, randn, register


def _ls_targets(rng, shape, V):
    t = rng.integers(0, V, size=shape)
    t.reshape(-1)[1] = -100
    return t


register(
    "label_smoothing_cross_entropy_backward", "13-encoder-decoder",
    "label_smoothing_cross_entropy_backward(dout, cache) -> dlogits;  cache = (probs, targets, valid, n_valid, eps)", 1e-6,
    grad_exercise(
        layers.label_smoothing_cross_entropy_forward,
        ("dlogits",),
        [
            ("logits (4, 6), eps 0.1", lambda g: (randn(g, 4, 6), g.integers(0, 6, 4), 0.1), {}),
            ("logits (2, 3, 5), eps 0.3, one target ignored", lambda g: (2 * randn(g, 2, 3, 5), _ls_targets(g, (2, 3), 5), 0.3), {}),
        ],
    ),
)


def _tf_case(ys):
    def fn(student, tol):
        got = student([list(y) for y in ys], 1, 2, 0)
        expected = tasks.teacher_forcing([list(y) for y in ys], 1, 2, 0)
        return compare_exact_all(("tgt_in", "targets"), got, expected, "int")

    return fn


register(
    "teacher_forcing", "13-encoder-decoder",
    "teacher_forcing(ys, bos_id, eos_id, pad_id) -> tgt_in = [BOS] + y padded with pad_id, targets = y + [EOS] padded with -100",
    0.0,
    case_runner([("one sequence", _tf_case([[5, 6, 7]])), ("ragged batch", _tf_case([[5], [6, 7, 8, 9], []]))],
                "tasks.teacher_forcing"),
)
