"""Weight-only int8 quantisation (`quantize.py`) and its Numba kernel (`kernels/int8_linear.py`).

Tolerances:
- the rounding itself: |w - q s| <= s / 2 per weight (plus one float32 ulp of the product);
- kernel vs NumPy twin: float64 to 1e-12 relative to the output's scale, float32 with
  assert_allclose(rtol=1e-4, atol=1e-5) (STYLE.md), outputs kept O(1) by w ~ N(0, 1/C_in);
- the twin vs the float layer it replaces: x @ (q * s) + b in float64 to 1e-12 (the algebra);
- whole model, quantized vs float: max |logit difference| <= 5 % of the largest logit (the
  rounding error of every weight adds up across the layers; measured ~0.5 % on these tiny
  models), and greedy decoding equal at every step where the float model's top-2 margin exceeds
  twice the largest logit difference seen.

Shapes: rows 1 (decoding), odd, ROWS and ROWS + 1 (the wrapper's chunking), 17; C_in 1, odd, and
long enough for the SIMD loop's body and remainder (777); C_out 1, QN - 1, QN, QN + 1, 2 QN + 3
(the channel tasks' edges).
The parity tests also run with NUMBA_DISABLE_JIT=1 (`test_parity_without_jit`, a subprocess): the
same kernel body as plain Python.
"""
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from nanotransformer import quantize as Q
from nanotransformer.backend import get_ops, quantized_ops
from nanotransformer.generation import generate_ids
from nanotransformer.kernels import int8_linear as KI
from nanotransformer.kernels import jit as KJ
from nanotransformer.model import GPT, GPTConfig

JIT_OFF = bool(numba.config.DISABLE_JIT)
DTYPES = [np.float64, np.float32]
QN, ROWS = KI.QN, KI.ROWS


@pytest.fixture(params=["serial", "threaded"])
def build(request, monkeypatch):
    """Both builds of the kernel (kernels.jit.run picks by size)."""
    monkeypatch.setattr(KJ, "SERIAL_BELOW", 1 << 62 if request.param == "serial" else 0)
    return request.param


def _layer(rng, dt, lead, C_in, C_out, bias):
    w = (rng.standard_normal((C_in, C_out)) / np.sqrt(C_in)).astype(dt)
    q, s = Q.quantize_int8(w)
    x = rng.standard_normal(lead + (C_in,)).astype(dt)
    b = rng.standard_normal(C_out).astype(dt) if bias else None
    return x, q, s, b


# ----------------------------------------------------------------------------- the rounding


@pytest.mark.parametrize("dt", DTYPES)
def test_quantize_int8_error_is_at_most_half_a_step(rng, dt):
    w = (rng.standard_normal((37, 19)) * rng.uniform(0.01, 3.0, size=19)).astype(dt)  # columns of different ranges
    w[:, 3] = 0.0  # a zero column: exact
    q, s = Q.quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == dt and s.shape == (19,)
    assert q.min() >= -127 and q.max() <= 127
    np.testing.assert_allclose(s[s != 1], np.abs(w).max(axis=0)[s != 1] / 127, rtol=1e-6)
    err = np.abs(w - Q.dequantize(q, s))
    assert (err <= s / 2 * (1 + 1e-6) + np.finfo(dt).eps * np.abs(w)).all()
    assert (np.abs(q).max(axis=0)[np.abs(w).max(axis=0) > 0] == 127).all()  # each column uses its whole grid
    assert (Q.dequantize(q, s)[:, 3] == 0).all()
    q_neg, s_neg = Q.quantize_int8(-w)  # symmetric: -w rounds to -q with the same scales
    assert (q_neg == -q).all() and (s_neg == s).all()


@pytest.mark.parametrize("bad, msg", [
    (np.ones(4, np.float32), "w: expected 2 dimensions"),
    (np.ones((2, 2), np.int32), "w: expected a floating-point array"),
    (np.array([[1.0, np.inf]]), "w: expected finite weights"),
])  # fmt: skip
def test_quantize_int8_rejects(bad, msg):
    with pytest.raises(ValueError, match=msg):
        Q.quantize_int8(bad)


# ----------------------------------------------------------------------------- kernel vs twin

SHAPES = [  # (leading dims of x, C_in, C_out)
    ((1, 1), 7, 5), ((1,), 16, QN), ((3,), 9, QN - 1), ((2, 4), 13, QN + 1), ((ROWS,), 8, 2 * QN + 3),
    ((ROWS + 1,), 5, 33), ((1, 17), 11, 1), ((2, 3), 1, 40), ((1, 1), 64, 3 * QN), ((2,), 777, 2 * QN + 5),
]  # fmt: skip


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead, C_in, C_out", SHAPES)
def test_int8_linear_parity(rng, build, dt, bias, lead, C_in, C_out):
    x, q, s, b = _layer(rng, dt, lead, C_in, C_out, bias)
    got, _ = KI.int8_linear_forward(x, q, s, b)
    want, _ = Q.int8_linear_forward(x, q, s, b)
    assert got.shape == want.shape == lead + (C_out,) and got.dtype == want.dtype == dt
    if dt == np.float64:
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * scale)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_int8_reference_is_the_dequantized_layer(rng, bias):
    """The twin computes (x @ q) * s + b; in exact arithmetic that is x @ (q * s) + b."""
    x, q, s, b = _layer(rng, np.float64, (2, 3), 21, 10, bias)
    want = x @ Q.dequantize(q, s) + (0 if b is None else b)
    got, _ = Q.int8_linear_forward(x, q, s, b)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("forward", [Q.int8_linear_forward, KI.int8_linear_forward])
@pytest.mark.parametrize("change, msg", [
    (dict(q=np.ones((4, 3), np.int16)), "q: expected an int8 array"),
    (dict(scale=np.ones(4, np.float32)), r"scale: expected shape \(3,\)"),
    (dict(x=np.ones((2, 5), np.float32)), r"x: expected shape \(2, 4\)"),
    (dict(b=np.ones(3)), "same dtype|dtype"),
])  # fmt: skip
def test_int8_linear_rejects(forward, change, msg):
    args = dict(x=np.ones((2, 4), np.float32), q=np.ones((4, 3), np.int8), scale=np.ones(3, np.float32), b=None)
    args.update(change)
    with pytest.raises(ValueError, match=msg):
        forward(**args)


@pytest.mark.skipif(JIT_OFF, reason="already running without JIT")
def test_parity_without_jit():
    """The kernel body as plain Python (NUMBA_DISABLE_JIT=1), as CI runs tests/test_kernels.py."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                        "-k", "parity and not without_jit"], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


@pytest.mark.skipif(JIT_OFF, reason="nothing is compiled or cached with NUMBA_DISABLE_JIT=1")
def test_kernel_is_cached_with_the_one_fastmath_set():
    from nanotransformer.kernels import FASTMATH

    for kern in (KI._int8_linear_forward_nb, KI._int8_linear_forward_nb.serial):
        assert type(kern._cache).__name__ == "FunctionCache"
        assert kern.targetoptions["fastmath"] == FASTMATH
        assert kern._cache._cache_file._source_stamp[1] == KJ._THIS_FILE_SHA256  # keyed on jit.py too


# ----------------------------------------------------------------------------- the whole model


def _with_biases(m, seed=0):
    """Non-zero biases (GPT-2 starts them at 0, which would hide a kernel that drops them)."""
    rng = np.random.default_rng(seed)
    for name, value in m.p.items():
        if name.endswith(".b"):
            value[...] = rng.standard_normal(value.shape) * 0.05
    return m


def _tiny(seed=0, **kw):
    cfg = dict(vocab_size=67, block_size=24, n_layer=2, n_head=2, d_model=40)
    cfg.update(kw)
    return _with_biases(GPT(GPTConfig(**cfg), seed=seed))


def _greedy_agrees_where_margin_allows(m, qm, prompt, n):
    """Greedy decoding of the float and the quantized model; equal at every step whose float
    top-2 margin exceeds twice the largest logit difference (else a tie may flip: stop there)."""
    ids_f = generate_ids(m, prompt, n, temperature=0)[0]
    ids_q = generate_ids(qm, prompt, n, temperature=0)[0]
    lf, _ = m.forward(ids_f[None, :-1])
    lq, _ = qm.forward(ids_f[None, :-1])
    err = float(np.abs(lf - lq).max())
    top2 = np.sort(lf[0, len(prompt) - 1 :], axis=-1)[:, -2:]  # (n, 2) the logits that chose each new token
    low = np.flatnonzero(top2[:, 1] - top2[:, 0] <= 2 * err)
    k = n if low.size == 0 else int(low[0])
    assert k >= n // 2, f"margins too small to compare (first tie-prone step {k} of {n})"
    np.testing.assert_array_equal(ids_q[: len(prompt) + k], ids_f[: len(prompt) + k])


@pytest.mark.parametrize("arch, head", [("gpt2", True), ("gpt2", False), ("llama", True)])
def test_quantized_model_logits_and_greedy(rng, arch, head):
    m = _with_biases(GPT(GPTConfig.preset(arch, vocab_size=67, block_size=24, n_layer=2, n_head=4, d_model=48), seed=3))
    m.p["wte"][...] *= 10  # trained-like logit margins (random init's are ~0.01), so greedy is comparable
    qm = Q.quantize_model(m, head=head)
    ids = rng.integers(0, 67, size=(2, 11))
    lf, _ = m.forward(ids)
    lq, _ = qm.forward(ids)
    assert np.abs(lq - lf).max() <= 0.05 * np.abs(lf).max()
    assert np.abs(lq - lf).max() > 0  # the int8 path really ran
    _greedy_agrees_where_margin_allows(m, qm, rng.integers(0, 67, size=4), 16)


def test_quantized_model_backends_agree(rng):
    """Whole-model backend parity of the int8 path: numpy twin vs Numba kernel."""
    ids = rng.integers(0, 67, size=(2, 9))
    out = []
    for backend in ("numpy", "numba"):
        qm = Q.quantize_model(_tiny(backend=backend))
        assert qm.ops.int8_linear_forward is getattr(get_ops(backend), "int8_linear_forward")
        out.append(qm.forward(ids)[0])
    np.testing.assert_allclose(out[1], out[0], rtol=1e-4, atol=1e-5)


def test_quantized_model_shares_floats_and_is_inference_only(rng):
    m = _tiny()
    qm = Q.quantize_model(m)
    assert isinstance(qm, GPT) and qm.quantized == "int8" and not np.shares_memory(qm.params, m.params)
    assert all(isinstance(qm.p[n], Q.Int8Weight) for n in Q.linear_names(m)) and len(Q.linear_names(m)) == 8
    assert isinstance(qm.p["lm_head.w"], Q.Int8Weight) and qm.p["lm_head.w"].shape == (40, 67)
    assert m.config.tie_embeddings and isinstance(m.p["h.0.mlp.c_fc.w"], np.ndarray)  # the float model untouched
    assert Q.weight_bytes(qm) < 0.3 * Q.weight_bytes(m)
    ids = rng.integers(0, 67, size=(1, 6))
    with pytest.raises(ValueError, match="frozen"):
        qm.forward(ids, ids)
        qm.backward()
    with pytest.raises(ValueError, match="already quantized"):
        Q.quantize_model(qm)
    with pytest.raises(ValueError, match="kind: expected one of"):
        Q.quantize_model(m, "int4")
    with pytest.raises(ValueError, match="inference only"):
        quantized_ops(get_ops("numpy")).linear_backward(np.ones((1, 3)), None)


def test_quantized_lora_is_merged_first(rng):
    from nanotransformer.lora import LoRA

    m = _tiny()
    lora = LoRA(m, rank=2)
    lora.p["h.0.attn.c_attn.lora_b"][...] = rng.standard_normal(lora.p["h.0.attn.c_attn.lora_b"].shape) * 0.1
    qm = Q.quantize_model(lora)
    ids = rng.integers(0, 67, size=(1, 7))
    want, _ = lora.merged_model().forward(ids)
    got, _ = qm.forward(ids)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


# ----------------------------------------------------------------------------- CLI and pipeline


@pytest.fixture
def checkpoint(tmp_path):
    from nanotransformer.checkpoint import save_checkpoint
    from nanotransformer.tokenizer import CharTokenizer

    tok = CharTokenizer("abcdefgh ")
    m = _tiny(vocab_size=tok.vocab_size)
    m.p["wte"][...] *= 10
    save_checkpoint(tmp_path / "ck", m, tokenizer=tok, step=0)
    return tmp_path / "ck", m, tok


def test_cli_generate_quantize(checkpoint, capsys, monkeypatch):
    from nanotransformer.cli import main
    from nanotransformer.generation import generate

    path, m, tok = checkpoint
    made = []  # the quantized models the command built (greedy text alone may not tell int8 from float32)
    quantize_model = Q.quantize_model
    monkeypatch.setattr(Q, "quantize_model", lambda model, kind: made.append(quantize_model(model, kind)) or made[-1])
    argv = ["generate", "--checkpoint", str(path), "--prompt", "abc", "--max-new-tokens", "8", "--temperature", "0"]
    assert main(argv + ["--quantize", "int8"]) == 0
    assert len(made) == 1 and made[0].quantized == "int8"
    got = capsys.readouterr().out.strip()
    assert got == "abc" + generate(quantize_model(m), tok, "abc", 8, temperature=0)[0]
    assert main(argv + ["--quantize", "int4"]) != 0
    assert "--quantize: invalid choice: 'int4'" in capsys.readouterr().err


def test_chat_quantize(capsys, monkeypatch):
    """`chat --quantize int8` on the shipped chat model answers as a ChatSession on the quantized model."""
    import io

    from nanotransformer.chat import ChatSession
    from nanotransformer.cli import main
    from nanotransformer.pretrained import load_pretrained, pretrained_dir

    import nanotransformer.cli_chat as cli_chat

    made = []  # the quantized models cmd_chat built (a greedy answer alone may not tell int8 from float32)
    monkeypatch.setattr(cli_chat, "quantize_model", lambda m, kind: made.append(Q.quantize_model(m, kind)) or made[-1])
    question = "What is 2 + 3?"
    monkeypatch.setattr("sys.stdin", io.StringIO(question + "\n"))
    argv = ["chat", "--checkpoint", str(pretrained_dir("skills-chat")), "--max-new-tokens", "12"]
    assert main(argv + ["--quantize", "int8"]) == 0
    got = capsys.readouterr().out.strip()
    assert len(made) == 1 and made[0].quantized == "int8"
    model, tok = load_pretrained("skills-chat")
    want, _ = ChatSession(Q.quantize_model(model), tok, max_new_tokens=12, temperature=0.0, seed=0).reply(question)
    assert got == want.replace("\n", "\\n") and got
    assert main(argv + ["--quantize", "fp4"]) != 0
    assert "--quantize: invalid choice: 'fp4'" in capsys.readouterr().err


def test_pipeline_quantize(checkpoint):
    from nanotransformer.pipeline import pipeline

    _, m, tok = checkpoint
    pipe = pipeline("text-generation", model=m, tokenizer=tok, quantize="int8")
    assert pipe.model.quantized == "int8" and m.p["h.0.attn.c_proj.w"].dtype == np.float32
    out = pipe("abc", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert out.startswith("abc") and len(out) == 9
    with pytest.raises(ValueError, match="quantize: expected one of"):
        pipeline("text-generation", model=m, tokenizer=tok, quantize="int4")
    fixture = Path(__file__).parent / "fixtures" / "tiny-gpt2"  # a Hugging Face directory, loaded then quantized
    pipe = pipeline("text-generation", model=str(fixture), quantize="int8")
    assert pipe.model.quantized == "int8" and isinstance(pipe.model.p["h.0.mlp.c_fc.w"], Q.Int8Weight)
    assert pipe("Alice was", max_new_tokens=5, do_sample=False)[0]["generated_text"].startswith("Alice was")


def test_quantize_on_a_checkpoint_it_does_not_apply_to_is_refused(tmp_path, capsys, monkeypatch):
    from nanotransformer.cli import main

    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "numpy")
    corpus = tmp_path / "t.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "bert"
    assert main(["train", "--model", "bert", str(corpus), "--block-size", "16", "--n-layer", "1", "--n-head", "2",
                 "--d-model", "16", "--batch-size", "4", "--max-steps", "1", "--eval-iters", "1", "--no-progress",
                 "--sample-tokens", "0", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(out), "--prompt", "to _e", "--quantize", "int8"]) == 1
    assert "--quantize: does not apply to a bert checkpoint" in capsys.readouterr().err  # before: silently ignored


def test_training_the_float_model_afterwards_does_not_reach_the_quantized_copy():
    m = _tiny()
    qm = Q.quantize_model(m)
    ids = np.arange(12).reshape(2, 6) % m.config.vocab_size
    before = qm.forward(ids)[0].copy()
    m.forward(ids, ids)
    m.backward()
    m.params -= 0.05 * m.grads  # before: the embeddings and norms moved under the old int8 weights
    np.testing.assert_array_equal(qm.forward(ids)[0], before)


def test_a_quantized_model_is_refused_where_it_cannot_go(tmp_path):
    from nanotransformer.chat import resize_vocab
    from nanotransformer.checkpoint import save_checkpoint
    from nanotransformer.lora import LoRA

    qm = Q.quantize_model(_tiny())
    for call in (lambda: save_checkpoint(tmp_path / "q", qm), lambda: LoRA(qm, rank=2),
                 lambda: resize_vocab(qm, qm.config.vocab_size + 3)):
        with pytest.raises(ValueError, match="^model: a quantized model"):
            call()
    assert not (tmp_path / "q").exists()  # refused before anything is written


def test_a_column_too_small_for_its_scale_is_exact_zero():
    w = np.full((5, 3), 1e-44, dtype=np.float32)  # amax / 127 underflows to 0 in float32
    with np.errstate(divide="raise", invalid="raise"):  # before: w / 0, a RuntimeWarning, q = 127
        q, s = Q.quantize_int8(w)
    assert np.all(s > 0) and np.all(np.abs(w - Q.dequantize(q, s)) <= s / 2 + 1e-45)
