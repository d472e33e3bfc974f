"""Bad input gets one clear ValueError naming the argument, the expectation and what was got."""
import numpy as np
import pytest

from nanotransformer import attention as A
from nanotransformer import layers as L

f32, f64 = np.float32, np.float64


def _z(*shape, dtype=f64):
    return np.zeros(shape, dtype)


CASES = {
    "linear w rows": (lambda: L.linear_forward(_z(2, 3, 4), _z(5, 6)), r"x: expected shape \(2, 3, 5\), got \(2, 3, 4\)"),
    "linear bias": (lambda: L.linear_forward(_z(2, 4), _z(4, 6), _z(5)), r"b: expected shape \(6,\), got \(5,\)"),
    "linear dtype mix": (lambda: L.linear_forward(_z(2, 4, dtype=f32), _z(4, 6)), "w: expected dtype float32 .*got float64"),
    "linear w not 2-D": (lambda: L.linear_forward(_z(2, 4), _z(4)), r"w: expected 2 dimensions, got shape \(4,\)"),
    "linear list": (lambda: L.linear_forward([[1.0]], _z(1, 1)), "x: expected a numpy array, got list"),
    "embedding id too big": (lambda: L.embedding_forward(np.array([[1, 7]]), _z(7, 3)), r"ids: expected ids in \[0, 7\), got 7"),
    "embedding id negative": (lambda: L.embedding_forward(np.array([-1]), _z(7, 3)), r"ids: expected ids in \[0, 7\), got -1"),
    "embedding float ids": (lambda: L.embedding_forward(np.array([1.0]), _z(7, 3)), "ids: expected an integer array, got dtype float64"),
    "positional too long": (lambda: L.positional_forward(_z(1, 9, 4), _z(8, 4)), r"x: expected at most 8 positions \(the block size\), got positions 0..8"),
    "positional channels": (lambda: L.positional_forward(_z(1, 3, 4), _z(8, 5)), r"table: expected shape \(\*, 4\), got \(8, 5\)"),
    "layernorm w": (lambda: L.layernorm_forward(_z(2, 4), _z(3), _z(4)), r"w: expected shape \(4,\), got \(3,\)"),
    "softmax int": (lambda: L.softmax_forward(np.zeros(3, int)), "x: expected a floating-point array, got dtype int64"),
    "dropout p": (lambda: L.dropout_forward(_z(3), 1.0, np.random.default_rng(0)), r"p: expected a dropout probability in \[0, 1\), got 1.0"),
    "dropout rng": (lambda: L.dropout_forward(_z(3), 0.5), "rng: expected a numpy Generator"),
    "residual shape": (lambda: L.residual_forward(_z(2, 3), _z(3)), r"fx: expected shape \(2, 3\), got \(3,\)"),
    "ce target too big": (lambda: L.cross_entropy_forward(_z(2, 5), np.array([1, 5])), r"targets: expected ids in \[0, 5\) or -100, got 5"),
    "ce target shape": (lambda: L.cross_entropy_forward(_z(2, 5), np.array([1, 2, 3])), r"targets: expected shape \(2,\), got \(3,\)"),
    "attention k head size": (lambda: A.attention_forward(_z(1, 3, 4), _z(1, 3, 5), _z(1, 3, 4)), r"k: expected shape \(1, \*, 4\), got \(1, 3, 5\)"),
    "attention v length": (lambda: A.attention_forward(_z(1, 3, 4), _z(1, 3, 4), _z(1, 2, 4)), r"v: expected shape \(1, 3, \*\), got \(1, 2, 4\)"),
    "attention mask shape": (
        lambda: A.attention_forward(_z(2, 3, 4), _z(2, 3, 4), _z(2, 3, 4), key_padding_mask=np.zeros((2, 4), bool)),
        r"key_padding_mask: expected shape \(2, 3\), got \(2, 4\)",
    ),
    "attention mask dtype": (
        lambda: A.attention_forward(_z(2, 3, 4), _z(2, 3, 4), _z(2, 3, 4), key_padding_mask=np.zeros((2, 3))),
        "key_padding_mask: expected dtype bool, got float64",
    ),
    "attention causal Tq > Tk": (lambda: A.attention_forward(_z(4, 2), _z(3, 2), _z(3, 2), causal=True), "q: expected at most Tk=3 queries"),
    "mha heads": (lambda: A.mha_forward(_z(1, 2, 6), _z(6, 18), _z(18), _z(6, 6), _z(6), 4), "n_head: expected a positive divisor of C=6, got 4"),
    "mha w_qkv": (lambda: A.mha_forward(_z(1, 2, 6), _z(6, 12), _z(12), _z(6, 6), _z(6), 2), r"w_qkv: expected shape \(6, 18\), got \(6, 12\)"),
    "cross mem batch": (
        lambda: A.cross_attention_forward(_z(2, 2, 4), _z(3, 5, 4), _z(4, 4), _z(4), _z(4, 8), _z(8), _z(4, 4), _z(4), 2),
        r"mem: expected shape \(2, \*, 4\), got \(3, 5, 4\)",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_value_error(name):
    call, message = CASES[name]
    with pytest.raises(ValueError, match=message):
        call()


# The shape checks of the hot ops test the usual case in one expression first (they run for every
# op of a decoding step) and only then name what is wrong: these are the inputs that such a first
# test could let through by mistake (a 0-d x, a bias or gain of the right length but the wrong
# rank, a 1-D k beside a 2-D q, whose shapes before the last two axes are both ()), on both backends.
SHAPE_CASES = {
    "linear 0-d x": (lambda o: o.linear_forward(_z(), _z(4, 6)), r"x: expected at least 1 dimensions, got shape \(\)"),
    "linear x width": (lambda o: o.linear_forward(_z(1, 1, 5), _z(4, 6)), r"x: expected shape \(1, 1, 4\), got \(1, 1, 5\)"),
    "linear 3-D w": (lambda o: o.linear_forward(_z(2, 4), _z(4, 6, 1)), r"w: expected 2 dimensions, got shape \(4, 6, 1\)"),
    "linear 2-D bias": (lambda o: o.linear_forward(_z(2, 4), _z(4, 6), _z(1, 6)), r"b: expected shape \(6,\), got \(1, 6\)"),
    "linear bias length": (lambda o: o.linear_forward(_z(1, 4), _z(4, 6), _z(5)), r"b: expected shape \(6,\), got \(5,\)"),
    "linear dtype": (lambda o: o.linear_forward(_z(1, 4), _z(4, 6), _z(6, dtype=f32)), "b: expected dtype float64 .*got float32"),
    "layernorm 0-d x": (lambda o: o.layernorm_forward(_z(), _z(4), _z(4)), r"x: expected at least 1 dimensions, got shape \(\)"),
    "layernorm 2-D w": (lambda o: o.layernorm_forward(_z(1, 4), _z(4, 1), _z(4)), r"w: expected shape \(4,\), got \(4, 1\)"),
    "layernorm 2-D b": (lambda o: o.layernorm_forward(_z(1, 4), _z(4), _z(1, 4)), r"b: expected shape \(4,\), got \(1, 4\)"),
    "layernorm b": (lambda o: o.layernorm_forward(_z(1, 1, 4), _z(4), _z(3)), r"b: expected shape \(4,\), got \(3,\)"),
    "layernorm eps": (lambda o: o.layernorm_forward(_z(1, 4), _z(4), _z(4), float("nan")), "eps: expected a finite number >= 0"),
    "attention 1-D q": (lambda o: o.attention_forward(_z(4), _z(3, 4), _z(3, 4)), r"q: expected at least 2 dimensions, got shape \(4,\)"),
    "attention 1-D k": (lambda o: o.attention_forward(_z(3, 4), _z(4), _z(4)), r"k: expected shape \(\*, 4\), got \(4,\)"),
    "attention k heads": (lambda o: o.attention_forward(_z(1, 3, 3, 4), _z(1, 2, 3, 4), _z(1, 2, 3, 4)), r"k: expected 3 heads \(q's\) or a divisor of 3 \(grouped-query attention\) on axis -3, got shape \(1, 2, 3, 4\)"),
    "attention more k heads": (lambda o: o.attention_forward(_z(1, 2, 3, 4), _z(1, 4, 3, 4), _z(1, 4, 3, 4)), r"k: expected 2 heads \(q's\) or a divisor of 2"),
    "attention gqa v heads": (lambda o: o.attention_forward(_z(1, 4, 3, 4), _z(1, 2, 3, 4), _z(1, 4, 3, 4)), r"v: expected shape \(1, 2, 3, \*\), got \(1, 4, 3, 4\)"),
    "attention 3-D batch": (lambda o: o.attention_forward(_z(2, 3, 4), _z(1, 3, 4), _z(1, 3, 4)), r"k: expected shape \(2, \*, 4\), got \(1, 3, 4\)"),
    "attention 4-D k": (lambda o: o.attention_forward(_z(1, 3, 4), _z(1, 1, 3, 4), _z(1, 1, 3, 4)), r"k: expected shape \(1, \*, 4\), got \(1, 1, 3, 4\)"),
    "attention v rank": (lambda o: o.attention_forward(_z(1, 3, 4), _z(1, 3, 4), _z(1, 1, 3, 4)), r"v: expected shape \(1, 3, \*\), got \(1, 1, 3, 4\)"),
    # no keys for some queries: the softmax has no value (the backends used to give an error and zeros)
    "attention no keys": (lambda o: o.attention_forward(_z(1, 2, 4), _z(1, 0, 4), _z(1, 0, 4)), r"k: expected at least one key for the Tq=2 queries, got Tk=0 \(shape \(1, 0, 4\)\)"),
    "attention gqa no keys": (lambda o: o.attention_forward(_z(1, 4, 1, 4), _z(1, 2, 0, 4), _z(1, 2, 0, 4)), r"k: expected at least one key for the Tq=1 queries, got Tk=0"),
}  # fmt: skip


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", sorted(SHAPE_CASES))
def test_hot_op_shape_checks_on_both_backends(name, backend):
    from nanotransformer.backend import get_ops

    call, message = SHAPE_CASES[name]
    with pytest.raises(ValueError, match=message):
        call(get_ops(backend))
