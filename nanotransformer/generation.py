"""Text generation, one decoder for every model: sampling (temperature, top-k, top-p), greedy
decoding and beam search, with a KV cache for incremental decoding.

    generate(model, tok, "ROMEO:", max_new_tokens=200, temperature=0.8, top_k=40, seed=0)
        -> ["\\nWhat say you, ..."]                       # one continuation per returned sequence
    generate_ids(model, ids, 200, temperature=0)        # greedy, on token ids: (N, T0 + new)
    beam_search_ids(model, ids, 50, num_beams=4)        # [(ids, score), ...] best first

The search itself (`sample`, `beam_search`) runs on a *decoder*, an object that hands it the
logits of the next token: `LMDecoder` for a GPT, `Seq2SeqDecoder` for the encoder-decoder (its
`greedy_decode` and `beam_search` are these same two functions). The beam search's length
penalty is a parameter: n ** penalty (GPT, Hugging Face's convention) or GNMT's
((5 + n) / 6) ** penalty (the 2017 paper's).

Sampling one token from the logits z of the last position:
    temperature 0      argmax (greedy); otherwise z / temperature (< 1 sharpens, > 1 flattens)
    top_k              keep the k largest logits (ties with the k-th are kept too)
    top_p (nucleus)    keep the smallest set of most likely tokens whose probability sums to >= p
    then draw from the renormalised distribution with a seeded np.random.Generator.

KV cache: the prompt is run once (prefill); each new token then runs only its own position,
attending to the cached keys and values (`model.KVCache`). The model has learned positions only
up to block_size, so once the context is full the window slides: the cache is rebuilt from the
last block_size tokens, exactly the context an uncached model would see. Cached and uncached
decoding therefore give the same logits at every step (tested).

A prompt longer than block_size is cropped from the left, with a warning.

Dimension legend: N sequences decoded together (num_return_sequences or beams), T time,
T0 prompt length, V vocab.

Streaming: `sample` and `generate_ids` call on_token(ids) after every new token (`chat.py`
prints the new text as it comes).

Does not: batch different prompts together (no padding), or apply repetition penalties.
"""
import math
import warnings

import numpy as np

from .layers import log_softmax_forward, softmax_forward
from .model import KVCache

# ----------------------------------------------------------------------------- sampling


def _check_sampling(max_new_tokens, temperature, top_k, top_p):
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected a non-negative integer, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k: expected a positive integer or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p: expected a probability in (0, 1] or None, got {top_p!r}")


def top_k_filter(logits, k):
    """logits: (..., V) -> the same with every logit below the k-th largest of its row set to -inf
    (ties with the k-th largest are kept, so a row may keep more than k)."""
    V = logits.shape[-1]
    if k >= V:
        return logits.copy()
    kth = np.partition(logits, V - k, axis=-1)[..., V - k : V - k + 1]  # (..., 1) k-th largest
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits, p):
    """logits: (..., V) -> the same with -inf outside the nucleus: the smallest set of most likely
    tokens whose probability reaches p. A token is kept when the tokens ranked above it (ties
    ranked by index, the stable order) sum to < p, so the most likely token is always kept."""
    if p >= 1.0:
        return logits.copy()
    probs = softmax_forward(logits)[0]
    order = np.argsort(-probs, axis=-1, kind="stable")  # most likely first
    sp = np.take_along_axis(probs, order, axis=-1)
    keep_sorted = (np.cumsum(sp, axis=-1) - sp) < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, -np.inf)


def filter_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """logits: (N, V) -> probs: (N, V) float64 after temperature, top-k then top-p (temperature > 0)."""
    z = logits.astype(np.float64) / temperature
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p is not None:
        z = top_p_filter(z, top_p)
    return softmax_forward(z)[0]


def sample_logits(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """logits: (N, V) -> next ids: (N,) int64. temperature 0 is greedy (argmax, rng unused)."""
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    probs = filter_probs(logits, temperature, top_k, top_p)
    cdf = np.cumsum(probs, axis=-1)  # (N, V)
    u = rng.random(probs.shape[0])[:, None] * cdf[:, -1:]  # inverse-CDF sampling, one draw per row
    return np.minimum((cdf <= u).sum(axis=-1), probs.shape[-1] - 1).astype(np.int64)


# ----------------------------------------------------------------------------- decoders
# A decoder hands the search the logits of the next token: start(ids) for the first, advance(ids)
# after a column was appended, reorder(rows) when beam search keeps some rows (each beam follows
# its parent). The sampler and the beam search below run on any decoder: a GPT's or the
# encoder-decoder's, so there is one of each.


class LMDecoder:
    """A GPT (or anything with `forward(ids, kv_cache=...)`), with or without a KV cache."""

    def __init__(self, model, use_cache=True):
        self.model, self.use_cache = model, use_cache
        self.bs = model.config.block_size
        self.cache = None

    def start(self, ids):
        """ids: (N, T) -> logits of the last position: (N, V)"""
        ctx = ids[:, -self.bs :]
        self.cache = KVCache(self.model.config.n_layer) if self.use_cache else None
        return self.model.forward(ctx, kv_cache=self.cache)[0][:, -1]

    def advance(self, ids):
        """ids: (N, T) whose last column was just appended -> logits: (N, V)"""
        if self.cache is None or len(self.cache) >= self.bs:
            return self.start(ids)  # no cache, or the window must slide: rebuild from the last block
        return self.model.forward(ids[:, -1:], kv_cache=self.cache)[0][:, -1]

    def reorder(self, rows):
        if self.cache is not None:
            self.cache.reorder(rows)


class Seq2SeqDecoder:
    """The encoder-decoder's decoder over a fixed source: src (N, S) is encoded once; each row's
    prefix (starting with [BOS]) attends to its own source row. [PAD] and [BOS] are never
    produced (their logits are -inf). The decoder's self-attention keys/values are cached."""

    def __init__(self, model, src, use_cache=True):
        self.model, self.use_cache = model, use_cache
        self.mem, self.src_pad, _ = model.encode(src)
        self.cache = None

    def _logits(self, tgt, cache):
        logits = self.model.next_logits(tgt, self.mem, self.src_pad, kv_cache=cache)  # (N, V)
        cfg = self.model.config
        logits[:, [cfg.pad_id, cfg.bos_id]] = -np.inf
        return logits

    def start(self, ids):
        self.cache = KVCache(self.model.config.n_dec_layer) if self.use_cache else None
        return self._logits(ids, self.cache)

    def advance(self, ids):
        return self._logits(ids if self.cache is None else ids[:, -1:], self.cache)

    def reorder(self, rows):
        self.mem, self.src_pad = self.mem[rows], None if self.src_pad is None else self.src_pad[rows]
        if self.cache is not None:
            self.cache.reorder(rows)


def prepare_prompt(model, prompt_ids):
    """1-D prompt ids, checked against the vocab and cropped from the left to block_size."""
    ids = np.asarray(prompt_ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(
            f"prompt_ids: expected a 1-D sequence of integer ids, got shape {ids.shape}, dtype {ids.dtype}"
        )
    if ids.size == 0:
        raise ValueError("prompt: expected at least one token, got an empty prompt")
    ids = ids.astype(np.int64)
    V = model.config.vocab_size
    if ids.min() < 0 or ids.max() >= V:
        bad = ids[(ids < 0) | (ids >= V)][0]
        raise ValueError(f"prompt_ids: expected ids in [0, {V}) (the model's vocab), got {int(bad)}")
    bs = model.config.block_size
    if ids.size > bs:
        warnings.warn(
            f"prompt has {ids.size} tokens, more than the block size {bs}: keeping only the last {bs}",
            stacklevel=3,
        )
        ids = ids[-bs:]
    return ids


# ----------------------------------------------------------------------------- sampling / greedy


def sample(decoder, ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, rng=None, should_stop=None,
           on_token=None):  # fmt: skip
    """The sampler, on any decoder. ids: (N, T0) the rows' prefixes -> (N, T0 + new) int64.

    Each step draws one token per row (temperature 0: argmax) from the decoder's logits.
    should_stop(new_ids) -> bool, checked per row after every token; decoding ends early once
    every row has stopped (rows that stopped keep going until then: the caller trims).
    on_token(ids): called after every step with the (N, T0 + new) ids so far, to stream them.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    if max_new_tokens == 0:
        return ids
    T0 = ids.shape[1]
    logits = decoder.start(ids)
    done = np.zeros(ids.shape[0], dtype=bool)
    for step in range(max_new_tokens):
        nxt = sample_logits(logits, rng, temperature, top_k, top_p)  # (N,)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        if on_token is not None:
            on_token(ids)
        if should_stop is not None:
            done |= [bool(should_stop(row[T0:])) for row in ids]
            if done.all():
                break
        if step + 1 < max_new_tokens:
            logits = decoder.advance(ids)
    return ids


def generate_ids(model, prompt_ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
                 num_return_sequences=1, seed=None, rng=None, use_cache=True, should_stop=None, on_token=None):
    """Sample (or, with temperature 0, greedily pick) max_new_tokens after the prompt.

    prompt_ids: (T0,) int. Returns (N, T0' + new) int64, N = num_return_sequences, T0' the
    (possibly cropped) prompt length. should_stop, on_token as in `sample`.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    if not isinstance(num_return_sequences, (int, np.integer)) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences: expected a positive integer, got {num_return_sequences!r}")
    prompt = prepare_prompt(model, prompt_ids)
    rng = rng if rng is not None else np.random.default_rng(seed)
    ids = np.tile(prompt, (num_return_sequences, 1))  # (N, T0)
    return sample(LMDecoder(model, use_cache), ids, max_new_tokens, temperature=temperature, top_k=top_k,
                  top_p=top_p, rng=rng, should_stop=should_stop, on_token=on_token)  # fmt: skip


# ----------------------------------------------------------------------------- beam search

LENGTH_NORMS = ("power", "gnmt")


def length_norm(n, penalty, kind="power"):
    """The divisor of a finished hypothesis's log-probability with n new tokens: n ** penalty
    ("power", Hugging Face's length_penalty: 0 = raw log-probability, 1 = per-token average) or
    ((5 + n) / 6) ** penalty ("gnmt", Wu et al. 2016, the alpha of the 2017 paper's beam search)."""
    return n**penalty if kind == "power" else ((5.0 + n) / 6.0) ** penalty


def beam_search(decoder, prompt, max_new_tokens, num_beams=4, *, length_penalty=1.0, norm="power",
                num_return_sequences=1, should_stop=None):
    """Beam search on any decoder: keep the num_beams most likely continuations of `prompt` (T0,)
    (sum of log-probabilities).

    A hypothesis is finished when should_stop(new_ids) is true or max_new_tokens is reached; it
    is ranked by score / length_norm(new tokens, length_penalty, norm). The search ends once
    num_return_sequences hypotheses have finished and no live beam can still beat them: log-
    probabilities only fall as a prefix grows, so a live beam's best possible final score is its
    score now divided by the largest norm it can reach (the norm at max_new_tokens when the
    penalty is positive, its current one otherwise). Exact, not a heuristic: stopping at
    num_beams finished ones instead keeps early, improbable endings. Live beams still running at
    the end compete with the finished ones.
    Returns [(ids (T0 + n,), score)] for the num_return_sequences best, best first.
    """
    if not isinstance(num_beams, (int, np.integer)) or num_beams < 1:
        raise ValueError(f"num_beams: expected a positive integer, got {num_beams!r}")
    if not isinstance(num_return_sequences, (int, np.integer)) or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(
            f"num_return_sequences: expected an integer in [1, num_beams={num_beams}], got {num_return_sequences!r}"
        )
    if norm not in LENGTH_NORMS:
        raise ValueError(f"norm: expected one of {LENGTH_NORMS}, got {norm!r}")
    T0 = len(prompt)
    if max_new_tokens == 0:
        return [(prompt, 0.0)]
    seqs, scores = prompt[None, :], np.zeros(1)  # live beams: (n, T), (n,)
    finished = []  # (normalised score, ids)
    logits = decoder.start(seqs)
    for step in range(max_new_tokens):
        n_new = step + 1
        cand = scores[:, None] + log_softmax_forward(logits.astype(np.float64))[0]  # (n, V) every extension
        V = cand.shape[1]
        flat = cand.reshape(-1)
        top = np.argsort(-flat, kind="stable")[: 2 * num_beams]  # enough to refill after finishes
        rows, row_scores, parents = [], [], []
        for j in top:
            if not np.isfinite(flat[j]):
                break
            parent, tok = divmod(int(j), V)
            seq = np.append(seqs[parent], tok)
            if should_stop is not None and should_stop(seq[T0:]):
                finished.append((flat[j] / length_norm(n_new, length_penalty, norm), seq))
            else:
                rows.append(seq)
                row_scores.append(flat[j])
                parents.append(parent)
            if len(rows) == num_beams:
                break
        if not rows:
            seqs = None
            break
        seqs, scores = np.stack(rows), np.array(row_scores)
        if len(finished) >= num_return_sequences:
            kept = sorted((f[0] for f in finished), reverse=True)[num_return_sequences - 1]
            reach = max_new_tokens if length_penalty > 0 else n_new  # the largest norm a live beam can reach
            if scores.max() / length_norm(reach, length_penalty, norm) <= kept:
                break
        if n_new < max_new_tokens:
            decoder.reorder(np.array(parents))
            logits = decoder.advance(seqs)
    if seqs is not None:
        n = seqs.shape[1] - T0
        finished += [(s / length_norm(n, length_penalty, norm), seq) for s, seq in zip(scores, seqs)]
    finished.sort(key=lambda t: -t[0])
    return [(seq, float(s)) for s, seq in finished[:num_return_sequences]]


def beam_search_ids(model, prompt_ids, max_new_tokens, num_beams=4, *, length_penalty=1.0,
                    num_return_sequences=1, use_cache=True, should_stop=None):
    """Beam search after a GPT prompt (T0,) -> [(ids (T0' + n,), score)], best first. See
    `beam_search`; the length norm is n ** length_penalty."""
    _check_sampling(max_new_tokens, 1.0, None, None)
    prompt = prepare_prompt(model, prompt_ids)
    return beam_search(LMDecoder(model, use_cache), prompt, max_new_tokens, num_beams, length_penalty=length_penalty,
                       num_return_sequences=num_return_sequences, should_stop=should_stop)  # fmt: skip


# ----------------------------------------------------------------------------- text in, text out


def _trim(text, stop):
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def generate(model, tokenizer, prompt, max_new_tokens=200, temperature=1.0, top_k=None, top_p=None,
             num_return_sequences=1, seed=None, stop=None, *, num_beams=1, length_penalty=1.0, use_cache=True):
    """prompt: str -> list of num_return_sequences continuations (str, without the prompt).

    stop: a string or list of strings; a continuation ends just before the first of them (the
    stop string is not included). num_beams > 1 switches to beam search (deterministic;
    temperature, top_k, top_p and seed are then unused).
    """
    if isinstance(stop, str):
        stop = [stop]
    stop = [s for s in (stop or []) if s]
    prompt_ids = np.asarray(tokenizer.encode(prompt), dtype=np.int64)
    if prompt_ids.size == 0:
        raise ValueError("prompt: expected at least one token, got an empty prompt")
    should_stop = None
    if stop:
        def should_stop(new_ids):
            return any(s in tokenizer.decode([int(t) for t in new_ids]) for s in stop)

    T0 = min(len(prompt_ids), model.config.block_size)  # the prompt as kept (cropped to the block)
    if num_beams > 1:
        results = beam_search_ids(model, prompt_ids, max_new_tokens, num_beams, length_penalty=length_penalty,
                                  num_return_sequences=num_return_sequences, use_cache=use_cache,
                                  should_stop=should_stop)
        rows = [seq for seq, _ in results]
    else:
        out = generate_ids(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           num_return_sequences=num_return_sequences, seed=seed, use_cache=use_cache,
                           should_stop=should_stop)
        rows = list(out)
    return [_trim(tokenizer.decode([int(t) for t in row[T0:]]), stop) for row in rows]
