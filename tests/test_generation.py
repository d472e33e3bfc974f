"""Generation: KV cache == full forward, sampling filters, greedy, beam search, stop strings, cropping."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from nanotransformer.generation import (
    beam_search_ids,
    filter_probs,
    generate,
    generate_ids,
    sample_logits,
)
from nanotransformer.model import GPT, GPTConfig, KVCache
from nanotransformer.tokenizer import CharTokenizer


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    """Token-by-token decoding is many tiny forwards: use the NumPy reference (see test_model)."""
    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "numpy")


def small_model(dtype=np.float64, seed=0, **kw):
    cfg = dict(vocab_size=13, block_size=10, n_layer=2, n_head=2, d_model=16)
    m = GPT(GPTConfig(**{**cfg, **kw}), dtype=dtype, seed=seed)
    m.params += np.random.default_rng(seed).normal(0, 0.3, m.params.shape)  # opinionated, non-uniform logits
    return m


# ----------------------------------------------------------------------------- KV cache


LLAMA = dict(norm="rmsnorm", pos="rope", mlp="swiglu", n_kv_head=1, bias=False, tie_embeddings=False)


@pytest.mark.parametrize("kw", [dict(pos="learned"), dict(pos="sinusoidal"), LLAMA, {**LLAMA, "qk_norm": True}],
                         ids=["learned", "sinusoidal", "llama", "llama-qk-norm"])
def test_kv_cache_logits_equal_full_forward(kw, rng):
    m = small_model(**kw)
    ids = rng.integers(0, 13, size=(3, 10))
    full, _ = m.forward(ids)  # (B, T, V)
    cache = KVCache(m.config.n_layer)
    chunks = [m.forward(ids[:, :4], kv_cache=cache)[0]]  # prefill 4 positions, then one at a time
    for t in range(4, 10):
        chunks.append(m.forward(ids[:, t : t + 1], kv_cache=cache)[0])
    assert len(cache) == 10
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="block_size=10.*10 cached"):
        m.forward(ids[:, :1], kv_cache=cache)


@pytest.mark.parametrize("arch", [{}, LLAMA], ids=["gpt2", "llama"])
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, seed=3),
                                      dict(temperature=0.7, top_k=5, top_p=0.9, seed=4)])
def test_cached_and_uncached_generation_agree_past_the_block(sampling, arch):
    m = small_model(**arch)
    prompt = np.array([1, 2, 3])
    n = 25  # well past block_size=10: the window slides and the cache is rebuilt
    a = generate_ids(m, prompt, n, use_cache=True, num_return_sequences=2, **sampling)
    b = generate_ids(m, prompt, n, use_cache=False, num_return_sequences=2, **sampling)
    assert a.shape == (2, 3 + n)
    assert np.array_equal(a, b)
    assert np.array_equal(a[:, :3], np.tile(prompt, (2, 1)))


def test_greedy_is_the_argmax_of_the_uncached_model():
    m = small_model()
    ids = generate_ids(m, [4, 5], 6, temperature=0)[0]
    for t in range(2, len(ids)):
        ctx = ids[max(0, t - 10) : t][None, :]
        assert ids[t] == np.argmax(m.forward(ctx)[0][0, -1])


# ----------------------------------------------------------------------------- sampling


def test_top_k_and_top_p_filters():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.count_nonzero(filter_probs(logits, top_k=2)) == 2
    np.testing.assert_allclose(filter_probs(logits, top_k=2)[0, :2], [0.625, 0.375])
    # nucleus: the smallest set of most likely tokens whose probability reaches p
    assert np.count_nonzero(filter_probs(logits, top_p=0.5)) == 1
    assert np.count_nonzero(filter_probs(logits, top_p=0.6)) == 2
    assert np.count_nonzero(filter_probs(logits, top_p=0.79)) == 2
    assert np.count_nonzero(filter_probs(logits, top_p=0.81)) == 3
    assert np.count_nonzero(filter_probs(logits, top_p=1.0)) == 4
    # top-k first, then top-p on what is left
    np.testing.assert_allclose(filter_probs(logits, top_k=3, top_p=0.9)[0], [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0])
    # temperature sharpens / flattens
    assert filter_probs(logits, temperature=0.5)[0, 0] > 0.5 > filter_probs(logits, temperature=2.0)[0, 0]


def test_sampling_follows_the_distribution(rng):
    p = np.array([0.6, 0.25, 0.1, 0.05])
    draws = sample_logits(np.tile(np.log(p), (20000, 1)), rng)
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / len(draws)) + 1e-3)
    assert np.all(sample_logits(np.tile(np.log(p), (50, 1)), rng, temperature=0) == 0)


def test_seeds_reproduce_and_differ():
    m = small_model()
    a = generate_ids(m, [1], 15, seed=7, num_return_sequences=3)
    assert np.array_equal(a, generate_ids(m, [1], 15, seed=7, num_return_sequences=3))
    assert not np.array_equal(a, generate_ids(m, [1], 15, seed=8, num_return_sequences=3))
    assert len({tuple(r) for r in a}) > 1  # the samples of one batch are independent
    greedy = generate_ids(m, [1], 15, temperature=0)
    assert np.array_equal(generate_ids(m, [1], 15, top_k=1, seed=1), greedy)


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(num_return_sequences=0), "num_return_sequences"),
])
def test_bad_sampling_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        generate_ids(small_model(), [1], 3, **kw)


def test_bad_prompts():
    m = small_model()
    with pytest.raises(ValueError, match="empty prompt"):
        generate_ids(m, [], 3)
    with pytest.raises(ValueError, match=r"prompt_ids: expected ids in \[0, 13\)"):
        generate_ids(m, [1, 13], 3)


def test_long_prompt_is_cropped_with_a_warning():
    m = small_model()
    prompt = np.arange(25) % 13
    with pytest.warns(UserWarning, match="25 tokens, more than the block size 10"):
        out = generate_ids(m, prompt, 4, temperature=0)
    assert out.shape == (1, 14) and np.array_equal(out[0, :10], prompt[-10:])


# ----------------------------------------------------------------------------- beam search


class MarkovModel:
    """A stand-in 'model' whose next-token distribution depends only on the last token (a fixed
    transition matrix), so the best sequence can be worked out by hand."""

    def __init__(self, probs):
        self.logp = np.log(np.asarray(probs, dtype=np.float64))
        V = self.logp.shape[0]
        self.config = SimpleNamespace(vocab_size=V, block_size=64, n_layer=1)

    def forward(self, ids, targets=None, kv_cache=None):
        return self.logp[ids], None  # (B, T, V)


def test_beam_search_beats_greedy_when_greedy_is_myopic():
    # from 0: token 1 (p .5) looks best, but after it everything is flat; token 2 (p .4) is
    # followed by 3 with p .9. Greedy: 0 1 x = .5 * .25; beam: 0 2 3 = .4 * .9.
    P = [[0.05, 0.5, 0.4, 0.05], [0.25, 0.25, 0.25, 0.25], [0.05, 0.025, 0.025, 0.9], [0.25] * 4]
    m = MarkovModel(P)
    greedy = generate_ids(m, [0], 2, temperature=0)[0]
    assert greedy[1] == 1
    (best, score), = beam_search_ids(m, [0], 2, num_beams=2)
    assert list(best) == [0, 2, 3]
    assert math.isclose(score, math.log(0.4 * 0.9) / 2)  # length-normalised (penalty 1)
    (one, _), = beam_search_ids(m, [0], 2, num_beams=1)
    assert list(one) == list(greedy)  # one beam is greedy search
    two = beam_search_ids(m, [0], 2, num_beams=3, num_return_sequences=3)
    assert [s for _, s in two] == sorted([s for _, s in two], reverse=True)


def test_beam_search_length_penalty_with_stops():
    # 0 -> 3 ends at once (p .3, log -1.20); 0 -> 1 -> 1 -> 1 -> 1 chains at p .6 then .7 (log -1.58).
    # raw log-prob prefers the short ending; the per-token average (-0.39) prefers the long chain.
    P = [[0.05, 0.6, 0.05, 0.3], [0.01, 0.7, 0.01, 0.28], [0.25] * 4, [0.25] * 4]
    m = MarkovModel(P)
    stop = lambda new: new[-1] == 3  # noqa: E731
    (short, _), = beam_search_ids(m, [0], 4, num_beams=2, length_penalty=0.0, should_stop=stop)
    assert list(short) == [0, 3]
    (long, _), = beam_search_ids(m, [0], 4, num_beams=2, length_penalty=1.0, should_stop=stop)
    assert list(long) == [0, 1, 1, 1, 1]


def test_beam_search_cached_equals_uncached():
    m = small_model()
    a = beam_search_ids(m, [1, 2], 14, num_beams=3, num_return_sequences=3)
    b = beam_search_ids(m, [1, 2], 14, num_beams=3, num_return_sequences=3, use_cache=False)
    assert all(np.array_equal(x, y) and math.isclose(s, t) for (x, s), (y, t) in zip(a, b))


# ----------------------------------------------------------------------------- text in, text out


def test_generate_text_with_stop_strings():
    tok = CharTokenizer.from_text("abc.\n")
    # a "model" that always continues a -> b -> c -> . -> \n -> a ...
    P = np.full((5, 5), 1e-6)
    order = {"a": "b", "b": "c", "c": ".", ".": "\n", "\n": "a"}
    for x, y in order.items():
        P[tok.encode(x)[0], tok.encode(y)[0]] = 1.0
    m = MarkovModel(P / P.sum(1, keepdims=True))
    assert generate(m, tok, "a", 7, temperature=0) == ["bc.\nabc"]
    assert generate(m, tok, "a", 50, temperature=0, stop=".") == ["bc"]  # stop string not included
    assert generate(m, tok, "a", 50, temperature=0, stop=["\n", "c"]) == ["b"]  # the earliest stop wins
    outs = generate(m, tok, "a", 9, temperature=1.0, num_return_sequences=3, seed=0)
    assert outs == ["bc.\nabc.\n"] * 3
    assert generate(m, tok, "ab", 4, num_beams=2, stop="\n") == ["c."]
    with pytest.raises(ValueError, match="empty prompt"):
        generate(m, tok, "", 4)


def test_generate_text_with_a_real_model():
    tok = CharTokenizer.from_text("hello world")
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, d_model=8))
    outs = generate(m, tok, "hello", 20, seed=0, num_return_sequences=2, top_p=0.9)
    assert len(outs) == 2 and all(len(o) == 20 and set(o) <= set("helo wrd") for o in outs)
