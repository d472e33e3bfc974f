"""Chapter 19's exercises: the two backward passes of DPO, each against finite differences of the
package's forward.

    dpo_loss_backward(dout, cache)            against finite differences of dpo.dpo_loss_forward
    sequence_logprob_backward(dout, cache)    against finite differences of dpo.sequence_logprob_forward

The cases are chosen so that the typical mistakes show: pairs on both sides of z = 0, one far
past learned and one badly wrong (sigmoid(z) in place of sigmoid(-z) is right at neither), a
batch larger than one (the mean's 1/B) and two betas; prompt positions and a whole row with no
counted target (their gradient is 0, not the cross-entropy's), and several vocabularies (the
sign: d log p / d logits = onehot - softmax, the opposite of the cross-entropy's).
"""
from .. import dpo
from ..tasks import IGNORE_INDEX
from .checker import grad_exercise, randn, register


def _logps(rng, B, spread):
    """Policy and reference summed log-probs: negative, the policy within `spread` nats of the reference."""
    ref_w, ref_l = -5 - 10 * rng.random(B), -5 - 10 * rng.random(B)
    return ref_w + spread * randn(rng, B), ref_l + spread * randn(rng, B), ref_w, ref_l


def _far_apart(rng):
    logp_w, logp_l, ref_w, ref_l = _logps(rng, 3, 1.0)
    logp_w[0] += 80.0  # z ~ +40 with beta 0.5: learned, sigmoid(-z) ~ 4e-18
    logp_l[1] += 80.0  # z ~ -40: badly wrong, sigmoid(-z) ~ 1
    return logp_w, logp_l, ref_w, ref_l


register(
    "dpo_loss_backward", "19-dpo",
    "dpo_loss_backward(dout, cache) -> dlogp_w, dlogp_l, dref_w, dref_l: each (B,);  dout: float, cache = (z, beta)",
    1e-6,
    grad_exercise(
        dpo.dpo_loss_forward,
        ("dlogp_w", "dlogp_l", "dref_w", "dref_l"),
        [
            ("B 5, beta 0.1", lambda g: _logps(g, 5, 3.0), {"beta": 0.1}),
            ("B 3, beta 0.5: one pair learned (z = +40), one badly wrong (z = -40)", _far_apart, {"beta": 0.5}),
        ],
    ),
)


def _targets(rng, B, T, V, prompt):
    """Random targets with the first `prompt` positions of every row ignored."""
    y = rng.integers(0, V, size=(B, T))
    y[:, :prompt] = IGNORE_INDEX
    return y


def _one_row_empty(rng):
    y = _targets(rng, 3, 5, 7, 1)
    y[2] = IGNORE_INDEX  # a row of padding: no counted target, log p = 0
    return 3 * randn(rng, 3, 5, 7), y


register(
    "sequence_logprob_backward", "19-dpo",
    "sequence_logprob_backward(dout, cache) -> dlogits: (B, T, V);  dout: (B,), cache = (logq, safe, keep): "
    "log-softmax (B, T, V), targets with 0 at ignored positions (B, T), counted positions (B, T) bool",
    1e-6,
    grad_exercise(
        dpo.sequence_logprob_forward,
        ("dlogits",),
        [
            ("logits (2, 4, 5), 2 prompt positions per row", lambda g: (randn(g, 2, 4, 5), _targets(g, 2, 4, 5, 2)), {}),
            ("logits (3, 5, 7), scaled by 3, row 2 all padding", _one_row_empty, {}),
        ],
    ),
)
