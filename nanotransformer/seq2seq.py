"""The encoder-decoder transformer of "Attention Is All You Need" (Vaswani et al. 2017), with
explicit forward/backward passes, label smoothing, greedy and beam decoding, and a task to train
it on: spelling numbers out in English ("4021" -> "four thousand twenty one").

    cfg = Seq2SeqConfig(vocab_size=len(vocab), max_len=16, n_enc_layer=2, n_dec_layer=2)
    model = Seq2Seq(cfg)
    logits, loss = model.forward(src, tgt_in, targets, label_smoothing=0.1)   # teacher forcing
    model.backward()                                                          # fills model.grads
    model.greedy_decode(src)  /  model.beam_search(src, beam_size=4)

The network:

    enc = emb[src] * sqrt(C) + PE                        # shared embedding, sinusoidal positions
    for each encoder block:                              # bidirectional: padding mask only
        enc = enc + self_attn(ln_1(enc), mask=src_pad)
        enc = enc + mlp(ln_2(enc))
    dec = emb[tgt_in] * sqrt(C) + PE
    for each decoder block:
        dec = dec + self_attn(ln_1(dec), causal)         # masked self-attention
        dec = dec + cross_attn(ln_2(dec), enc, mask=src_pad)   # queries from dec, keys/values from enc
        dec = dec + mlp(ln_3(dec))
    logits = ln_f(dec) @ emb^T                           # output projection tied to the embedding

That is `norm="pre"` (pre-LN, as GPT-2: stable without a warm-up). `norm="post"` is the paper's
arrangement, x = LN(x + sublayer(x)), with no final LN. One vocabulary and one embedding matrix
serve source, target and the output projection (paper, section 3.4).

Teacher forcing: the decoder is fed the *true* previous tokens (tgt_in = [BOS] + y) and
predicts every next one (targets = y + [EOS]) in one parallel pass; the causal mask keeps
position t from seeing tokens after t. At inference there is no true prefix, so decoding feeds
back the model's own outputs one token at a time.

The blocks (`blocks.encoder_block_forward/backward`, `blocks.decoder_block_forward/backward`)
take the model's dict of named parameter views and write gradients into the dict of gradient
views; `bert.py` builds its encoder from the same functions.

Dimension legend: B batch, S source length, T target length, C channels (d_model), NH heads,
V vocab, K beam size.

Does not: use the Numba kernels (every op is the NumPy reference of `layers.py`/`attention.py`),
cache keys/values while decoding (each step re-runs the decoder on the whole prefix: fine for
sequences of a dozen tokens), use ReLU in the feed-forward layer (GELU, as the rest of the book),
or share anything but the embedding between encoder and decoder.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from .blocks import (
    NORMS,
    FlatModel,
    _ln_specs,
    _put,
    decoder_block_backward,
    decoder_block_forward,
    decoder_block_specs,
    encoder_block_backward,
    encoder_block_forward,
    encoder_block_specs,
)
from .layers import (
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    layernorm_backward,
    layernorm_forward,
    positional_backward,
    positional_forward,
    sinusoidal_table,
)
from .validation import check_array, check_ids, check_model_config

# ----------------------------------------------------------------------------- label smoothing


def label_smoothing_cross_entropy_forward(logits, targets, smoothing=0.0, ignore_index=-100):
    """Cross-entropy against a smoothed target distribution, averaged over non-ignored targets.

    logits: (..., V), targets: (...) int in [0, V) or ignore_index, smoothing: eps in [0, 1)
    -> loss: scalar (0-d array of logits.dtype), cache

    The target distribution is q = (1 - eps) * onehot(target) + eps / V (uniform over the whole
    vocabulary, as PyTorch's `label_smoothing`), and loss_i = -sum_v q_v log p_v
        = (1 - eps) * (lse - z_target) + eps * (lse - mean_v z_v),   lse = logsumexp(z).
    eps = 0 is the ordinary cross-entropy. The paper used eps = 0.1: "This hurts perplexity, as
    the model learns to be more unsure, but improves accuracy and BLEU score."
    cache = (probs, safe_targets, valid, n_valid, eps)
    """
    check_array("logits", logits, min_ndim=1, floating=True)
    check_array("targets", targets, shape=logits.shape[:-1])
    check_ids("targets", targets, logits.shape[-1], allow=ignore_index)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing: expected a value in [0, 1), got {smoothing}")
    z = logits - logits.max(axis=-1, keepdims=True)  # (..., V), max 0: exp cannot overflow
    lse = np.log(np.exp(z).sum(axis=-1))  # (...)
    valid = targets != ignore_index
    safe_t = np.where(valid, targets, 0)
    z_t = np.take_along_axis(z, safe_t[..., None], axis=-1)[..., 0]
    per = (1.0 - smoothing) * (lse - z_t) + smoothing * (lse - z.mean(axis=-1))  # (...)
    n_valid = int(valid.sum())
    loss = np.where(valid, per, 0.0).sum() / max(n_valid, 1)
    probs = np.exp(z - lse[..., None])
    return np.asarray(loss, dtype=logits.dtype), (probs, safe_t, valid, n_valid, smoothing)


def label_smoothing_cross_entropy_backward(dout, cache):
    """dout: scalar -> dlogits: (..., V) = (softmax(logits) - q) * dout / n_valid on valid rows

    d/dz of -sum_v q_v log softmax(z)_v is p - q for any distribution q that sums to 1.
    """
    probs, safe_t, valid, n_valid, eps = cache
    V = probs.shape[-1]
    dlogits = probs - probs.dtype.type(eps / V)
    t_rows = np.take_along_axis(dlogits, safe_t[..., None], -1)
    np.put_along_axis(dlogits, safe_t[..., None], t_rows - probs.dtype.type(1.0 - eps), -1)
    dlogits *= (valid[..., None] * (np.asarray(dout) / max(n_valid, 1))).astype(probs.dtype)
    return dlogits


# ----------------------------------------------------------------------------- the model


@dataclass
class Seq2SeqConfig:
    """Hyper-parameters of the encoder-decoder (the paper's base model is d_model=512, n_head=8,
    6 + 6 layers, d_ff=2048; a few hundred thousand parameters are enough for our task)."""

    vocab_size: int
    max_len: int = 32  # longest source or target sequence (rows of the sinusoidal table)
    n_enc_layer: int = 2
    n_dec_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    d_ff: int = None  # feed-forward hidden size; None: 4 * d_model
    dropout: float = 0.0
    norm: str = "pre"  # "pre" (pre-LN) or "post" (the paper's post-LN)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_model_config(self, ("vocab_size", "max_len", "n_enc_layer", "n_dec_layer", "n_head", "d_model", "d_ff"))
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {self.norm!r}")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}: expected an id in [0, {self.vocab_size}), got {getattr(self, name)}")

    def to_dict(self):
        return asdict(self)


class Seq2Seq(FlatModel):
    """The encoder-decoder: parameters in one flat buffer, forward (teacher forcing) / backward,
    greedy and beam decoding. Seq2Seq(config, dtype=np.float32, seed=0).

    Parameter names: "emb" (V, C) shared; "enc.{i}.*" and "dec.{i}.*" per block (see
    `encoder_block_specs`, `decoder_block_specs`); "enc.ln_f", "dec.ln_f" with norm="pre".
    """

    def __init__(self, config, dtype=np.float32, seed=0):
        if not isinstance(config, Seq2SeqConfig):
            raise ValueError(f"config: expected a Seq2SeqConfig, got {type(config).__name__}")
        self.config = cfg = config
        C, H = cfg.d_model, cfg.d_ff
        specs = [("emb", (cfg.vocab_size, C))]
        for i in range(cfg.n_enc_layer):
            specs += encoder_block_specs(f"enc.{i}.", C, H)
        if cfg.norm == "pre":
            specs += _ln_specs("enc.ln_f", C)
        for i in range(cfg.n_dec_layer):
            specs += decoder_block_specs(f"dec.{i}.", C, H)
        if cfg.norm == "pre":
            specs += _ln_specs("dec.ln_f", C)
        self.specs = specs
        self._pe = sinusoidal_table(cfg.max_len, C, np.dtype(dtype))
        self._build(dtype, seed)

    def _init_std(self, name, shape):
        if name == "emb":
            # tied with the output layer: logits = h @ emb^T with unit-variance h have std ~1
            return self.config.d_model**-0.5
        if name.endswith("c_proj.w"):  # residual projections: keep the stream's variance flat
            n_res = 2 * self.config.n_enc_layer + 3 * self.config.n_dec_layer
            return 0.02 / math.sqrt(n_res)
        return 0.02

    # ------------------------------------------------------------------------- forward

    def _embed(self, ids):
        """ids: (B, T) -> emb[ids] * sqrt(C) + PE[:T]: (B, T, C), cache. The paper scales the
        embedding by sqrt(d_model) so it is not drowned by the unit-amplitude positions."""
        C = self.config.d_model
        if ids.shape[1] > self.config.max_len:
            raise ValueError(f"ids: expected at most max_len={self.config.max_len} positions, got {ids.shape[1]}")
        x, emb_c = embedding_forward(ids, self.p["emb"])
        x = x * self.dtype.type(math.sqrt(C))
        x, pos_c = positional_forward(x, self._pe)
        return x, (emb_c, pos_c)

    def _embed_backward(self, dx, cache):
        emb_c, pos_c = cache
        dx, _ = positional_backward(dx, pos_c)  # the sinusoidal table is fixed: no gradient
        return embedding_backward(dx * self.dtype.type(math.sqrt(self.config.d_model)), emb_c)

    def _check_ids(self, name, ids):
        check_array(name, ids, ndim=2)
        check_ids(name, ids, self.config.vocab_size)
        if ids.shape[1] < 1:
            raise ValueError(f"{name}: expected at least one position, got shape {ids.shape}")

    def encode(self, src, train=False, rng=None):
        """src: (B, S) int, padded with pad_id -> mem: (B, S, C), src_pad: (B, S) bool, cache"""
        cfg = self.config
        self._check_ids("src", src)
        src_pad = src == cfg.pad_id
        p_drop = cfg.dropout if train else 0.0
        x, emb_c = self._embed(src)
        x, drop_c = dropout_forward(x, p_drop, rng, train)
        caches = []
        for i in range(cfg.n_enc_layer):
            x, c = encoder_block_forward(x, self.p, f"enc.{i}.", cfg.n_head, src_pad, cfg.norm, p_drop, rng, train)
            caches.append(c)
        lnf_c = None
        if cfg.norm == "pre":
            x, lnf_c = layernorm_forward(x, self.p["enc.ln_f.w"], self.p["enc.ln_f.b"])
        return x, src_pad, (emb_c, drop_c, caches, lnf_c)

    def decode(self, tgt_in, mem, src_pad, train=False, rng=None):
        """tgt_in: (B, T) int, mem: (B, S, C), src_pad: (B, S) -> logits: (B, T, V), cache"""
        cfg = self.config
        self._check_ids("tgt_in", tgt_in)
        p_drop = cfg.dropout if train else 0.0
        x, emb_c = self._embed(tgt_in)
        x, drop_c = dropout_forward(x, p_drop, rng, train)
        caches = []
        for i in range(cfg.n_dec_layer):
            x, c = decoder_block_forward(x, mem, self.p, f"dec.{i}.", cfg.n_head, src_pad, cfg.norm, p_drop, rng, train)
            caches.append(c)
        lnf_c = None
        if cfg.norm == "pre":
            x, lnf_c = layernorm_forward(x, self.p["dec.ln_f.w"], self.p["dec.ln_f.b"])
        logits = x @ self.p["emb"].T  # (B, T, V), tied output projection
        return logits, (emb_c, drop_c, caches, lnf_c, x)

    def forward(self, src, tgt_in, targets=None, *, label_smoothing=0.0, train=False, rng=None):
        """Teacher-forced pass. src: (B, S), tgt_in: (B, T) = [BOS] + y (padded),
        targets: (B, T) = y + [EOS], -100 where padded -> logits: (B, T, V), loss: float or None

        With label_smoothing > 0 the loss is the smoothed cross-entropy (what is optimised);
        the plain cross-entropy, for perplexity, is `forward(...)` with label_smoothing=0.
        """
        check_array("tgt_in", tgt_in, ndim=2)
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"tgt_in: expected batch size {src.shape[0]} (the batch of src), got {tgt_in.shape[0]}")
        mem, src_pad, enc_c = self.encode(src, train, rng)
        logits, dec_c = self.decode(tgt_in, mem, src_pad, train, rng)
        loss = None
        self._cache = None
        if targets is not None:
            check_array("targets", targets, shape=tgt_in.shape)
            loss_arr, loss_c = label_smoothing_cross_entropy_forward(logits, targets, label_smoothing)
            loss = float(loss_arr)
            self._cache = (enc_c, dec_c, loss_c)
        return logits, loss

    # ------------------------------------------------------------------------- backward

    def backward(self):
        """Gradients of the last forward's loss, written into `model.grads` (every entry is
        overwritten). Returns `model.grads`."""
        if self._cache is None:
            raise ValueError("backward: expected a preceding forward(src, tgt_in, targets) with targets, got none")
        cfg, g = self.config, self.g
        (emb_e, drop_e, enc_caches, lnf_e), (emb_d, drop_d, dec_caches, lnf_d, xf), loss_c = self._cache
        self._cache = None
        dlogits = label_smoothing_cross_entropy_backward(np.ones((), dtype=self.dtype), loss_c)  # (B, T, V)
        # forward was: logits = xf @ emb^T  ->  dxf = dlogits @ emb, demb (head) = dlogits^T @ xf
        dx = dlogits @ self.p["emb"]
        demb_head = dlogits.reshape(-1, dlogits.shape[-1]).T @ xf.reshape(-1, xf.shape[-1])  # (V, C)
        if cfg.norm == "pre":
            dx, dw, db = layernorm_backward(dx, lnf_d)
            _put(g, "dec.ln_f", dw, db)
        dmem = 0.0
        for i in reversed(range(cfg.n_dec_layer)):
            # mem feeds every decoder block's cross-attention: its gradient is the sum over blocks
            dx, dm = decoder_block_backward(dx, dec_caches[i], g, f"dec.{i}.")
            dmem = dmem + dm
        demb_dec = self._embed_backward(dropout_backward(dx, drop_d), emb_d)
        dx = dmem
        if cfg.norm == "pre":
            dx, dw, db = layernorm_backward(dx, lnf_e)
            _put(g, "enc.ln_f", dw, db)
        for i in reversed(range(cfg.n_enc_layer)):
            dx = encoder_block_backward(dx, enc_caches[i], g, f"enc.{i}.")
        demb_enc = self._embed_backward(dropout_backward(dx, drop_e), emb_e)
        # the shared embedding is used three times: source lookup, target lookup, output layer
        g["emb"][...] = demb_enc + demb_dec + demb_head
        return self.grads

    def cross_attention_maps(self, src, tgt_in):
        """Where each output position looked in the source: one (B, NH, T, S) array of
        cross-attention weights per decoder block (rows sum to 1 over the real source tokens)."""
        mem, src_pad, _ = self.encode(src)
        _, (_, _, dec_caches, _, _) = self.decode(tgt_in, mem, src_pad)
        # block cache (self, cross, mlp); sub-layer cache (norm, ln, fn, drop); cross-attention
        # cache (q, kv, att, proj, n_head); attention cache (q, k, v, att, scale)
        return [c[1][2][2][3] for c in dec_caches]

    # ------------------------------------------------------------------------- decoding

    def _next_logprobs(self, prefix, mem, src_pad):
        """log p(next token | prefix, source) for every row: (N, V), float64. PAD and BOS are
        never targets, so they are excluded (probability 0) rather than left to chance."""
        logits, _ = self.decode(prefix, mem, src_pad)
        z = logits[:, -1].astype(np.float64)
        z[:, [self.config.pad_id, self.config.bos_id]] = -np.inf
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    def _max_steps(self, max_len):
        return self.config.max_len if max_len is None else min(max_len + 1, self.config.max_len)

    def greedy_decode(self, src, max_len=None):
        """Feed back the most likely token until EOS. src: (B, S) -> list of B id lists (no
        BOS/EOS). max_len: most output tokens (default: as many as the positions allow)."""
        cfg = self.config
        mem, src_pad, _ = self.encode(src)
        B = src.shape[0]
        ys = np.full((B, 1), cfg.bos_id, dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        for _ in range(self._max_steps(max_len) - 1):
            nxt = self._next_logprobs(ys, mem, src_pad).argmax(axis=-1)
            nxt = np.where(done, cfg.pad_id, nxt)  # finished rows keep padding
            ys = np.concatenate([ys, nxt[:, None]], axis=1)
            done |= nxt == cfg.eos_id
            if done.all():
                break
        return [_strip(row[1:], cfg.eos_id, cfg.pad_id) for row in ys]

    def beam_search(self, src, beam_size=4, max_len=None, alpha=0.6):
        """Keep the beam_size most likely prefixes at every step. src: (B, S) -> list of B id
        lists (no BOS/EOS).

        A finished hypothesis (ends in EOS) is ranked by log p / lp(length) with GNMT's length
        penalty lp = ((5 + length) / 6) ** alpha (the paper: beam 4, alpha 0.6); alpha = 0 ranks
        by raw log-probability, which favours short outputs. A source stops when no live beam
        can still beat its best finished hypothesis (stopping at beam_size finished ones instead
        would keep early, improbable EOS endings and lose to greedy decoding).
        """
        cfg = self.config
        if not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
            raise ValueError(f"beam_size: expected a positive integer, got {beam_size!r}")
        K = beam_size
        mem, src_pad, _ = self.encode(src)
        B = mem.shape[0]
        mem = np.repeat(mem, K, axis=0)  # (B*K, S, C): row b*K + k is beam k of source b
        src_pad = np.repeat(src_pad, K, axis=0)
        seqs = np.full((B, K, 1), cfg.bos_id, dtype=np.int64)
        scores = np.full((B, K), -np.inf)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        finished = [[] for _ in range(B)]  # (normalised score, ids)
        active = np.ones(B, dtype=bool)

        def lp(n):
            return ((5.0 + n) / 6.0) ** alpha

        steps = self._max_steps(max_len) - 1
        for t in range(steps):
            logp = self._next_logprobs(seqs.reshape(B * K, -1), mem, src_pad).reshape(B, K, -1)
            V = logp.shape[-1]
            cand = (scores[:, :, None] + logp).reshape(B, K * V)  # (B, K*V)
            order = np.argsort(-cand, axis=-1, kind="stable")[:, : 2 * K]  # enough to refill K beams
            new_seqs = np.zeros((B, K, t + 2), dtype=np.int64)
            new_scores = np.full((B, K), -np.inf)
            for b in range(B):
                if not active[b]:
                    new_seqs[b, :, :-1], new_seqs[b, :, -1] = seqs[b], cfg.pad_id
                    continue
                k = 0
                for j in order[b]:
                    s = cand[b, j]
                    if not np.isfinite(s):
                        break
                    parent, tok = divmod(int(j), V)
                    if tok == cfg.eos_id or t == steps - 1:
                        ids = seqs[b, parent, 1:].tolist() + ([] if tok == cfg.eos_id else [tok])
                        finished[b].append((s / lp(len(ids) + 1), ids))
                    elif k < K:
                        new_seqs[b, k, :-1], new_seqs[b, k, -1] = seqs[b, parent], tok
                        new_scores[b, k] = s
                        k += 1
                    if k == K:
                        break
                # log-probabilities only fall as a prefix grows, and lp grows: a live beam's best
                # possible final score is its current score / lp(longest allowed length)
                best_live = new_scores[b].max() / lp(steps + 1) if alpha > 0 else new_scores[b].max()
                if finished[b] and max(f[0] for f in finished[b]) >= best_live:
                    active[b] = False
            seqs, scores = new_seqs, np.where(active[:, None], new_scores, -np.inf)
            scores[~active, 0] = 0.0  # keep finished sources' rows finite (their output is ignored)
            if not active.any():
                break
        return [max(fb, key=lambda f: f[0])[1] if fb else [] for fb in finished]


def _strip(row, eos_id, pad_id):
    """Ids up to (not including) the first EOS, without padding."""
    out = []
    for t in row.tolist():
        if t == eos_id:
            break
        if t != pad_id:
            out.append(t)
    return out


# ----------------------------------------------------------------------------- the task


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n):
    """0 <= n < 10**9 -> English words, e.g. 4021 -> "four thousand twenty one".
    (No "and", no hyphens: one word per token.)"""
    if not isinstance(n, (int, np.integer)) or not 0 <= n < 10**9:
        raise ValueError(f"n: expected an integer in [0, 10**9), got {n!r}")
    if n == 0:
        return "zero"

    def below_1000(k):
        words = []
        if k >= 100:
            words += [_ONES[k // 100], "hundred"]
            k %= 100
        if k >= 20:
            words.append(_TENS[k // 10])
            k %= 10
            if k:
                words.append(_ONES[k])
        elif k:
            words.append(_ONES[k])
        return words

    words = []
    for scale, name in ((10**6, "million"), (10**3, "thousand"), (1, None)):
        chunk = (n // scale) % 1000
        if chunk:
            words += below_1000(chunk) + ([name] if name else [])
    return " ".join(words)


SPECIALS = ("[PAD]", "[BOS]", "[EOS]")


class Vocab:
    """One vocabulary shared by source and target: the special tokens first (by default ids
    0, 1, 2 are [PAD], [BOS], [EOS], matching Seq2SeqConfig's defaults), then `tokens` in order of
    first appearance. Tokens are strings; `encode` maps a token list to ids."""

    def __init__(self, tokens, specials=SPECIALS):
        self.specials = tuple(specials)
        tokens = list(self.specials) + [t for t in dict.fromkeys(tokens) if t not in self.specials]
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    def __len__(self):
        return len(self.itos)

    def encode(self, tokens):
        bad = [t for t in tokens if t not in self.stoi]
        if bad:
            raise ValueError(f"tokens: {bad[0]!r} is not in the vocabulary of {len(self)} tokens")
        return [self.stoi[t] for t in tokens]

    def decode(self, ids):
        return [self.itos[i] for i in ids]


def numbers_vocab():
    """Digits (source side, one token per digit) and the number words (target side)."""
    words = _ONES + _TENS[2:] + ["hundred", "thousand", "million"]
    return Vocab(list("0123456789") + words)


def numbers_dataset(n, max_number=10**6, seed=0, exclude=()):
    """n distinct (source tokens, target tokens) pairs for random numbers in [0, max_number):
    (["4", "0", "2", "1"], ["four", "thousand", "twenty", "one"]). Numbers in `exclude` are
    skipped, so a test set can be made disjoint from a training set. Also returns the numbers."""
    if n > max_number - len(exclude):
        raise ValueError(f"n: expected at most {max_number - len(exclude)} distinct numbers, got {n}")
    rng = np.random.default_rng(seed)
    exclude = set(int(x) for x in exclude)
    nums, seen = [], set()
    while len(nums) < n:
        for x in rng.integers(0, max_number, size=2 * (n - len(nums)) + 8).tolist():
            if x not in seen and x not in exclude:
                seen.add(x)
                nums.append(x)
                if len(nums) == n:
                    break
    pairs = [(list(str(x)), number_to_words(x).split()) for x in nums]
    return pairs, nums


def make_batch(pairs, vocab, pad_id=0, bos_id=1, eos_id=2, ignore_index=-100):
    """[(source tokens, target tokens)] -> src (B, S), tgt_in (B, T), targets (B, T), int64

    src is right-padded with pad_id; tgt_in = [BOS] + y padded with pad_id; targets = y + [EOS]
    padded with ignore_index, so padding never contributes to the loss (teacher forcing).
    """
    if not pairs:
        raise ValueError("pairs: expected at least one (source, target) pair, got none")
    srcs = [vocab.encode(s) for s, _ in pairs]
    tgts = [vocab.encode(t) for _, t in pairs]
    B, S, T = len(pairs), max(len(s) for s in srcs), max(len(t) for t in tgts) + 1
    src = np.full((B, S), pad_id, dtype=np.int64)
    tgt_in = np.full((B, T), pad_id, dtype=np.int64)
    targets = np.full((B, T), ignore_index, dtype=np.int64)
    for b, (s, t) in enumerate(zip(srcs, tgts)):
        src[b, : len(s)] = s
        tgt_in[b, : len(t) + 1] = [bos_id] + t
        targets[b, : len(t) + 1] = t + [eos_id]
    return src, tgt_in, targets


# ----------------------------------------------------------------------------- training, evaluation


def train_seq2seq(model, pairs, vocab, steps=1000, batch_size=64, lr=3e-3, warmup=100, label_smoothing=0.1,
                  weight_decay=0.01, grad_clip=1.0, seed=0, log_every=0):  # fmt: skip
    """Train on random mini-batches of `pairs` with AdamW, warm-up + cosine learning rate and
    teacher forcing. Returns the list of training losses (one per step).

    log_every > 0 prints the loss every that many steps.
    """
    from .optim import AdamW, clip_grad_norm, lr_schedule

    if not pairs:
        raise ValueError("pairs: expected at least one training pair, got none")
    cfg = model.config
    rng = np.random.default_rng(seed)
    opt = AdamW(model.params, lr=lr, weight_decay=weight_decay * model.decay_mask)
    losses = []
    for step in range(steps):
        idx = rng.integers(0, len(pairs), size=batch_size)
        src, tgt_in, targets = make_batch([pairs[i] for i in idx], vocab, cfg.pad_id, cfg.bos_id, cfg.eos_id)
        _, loss = model.forward(src, tgt_in, targets, label_smoothing=label_smoothing, train=True, rng=rng)
        model.backward()
        clip_grad_norm(model.grads, grad_clip)
        opt.step(model.grads, lr=lr_schedule(step, lr, warmup, steps, lr / 10))
        losses.append(loss)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss:.4f}")
    return losses


def evaluate_seq2seq(model, pairs, vocab, beam_size=None, batch_size=256, max_len=None):
    """Decode the sources of `pairs` (greedy, or beam search with beam_size) and score against
    the targets -> dict(exact_match (0..1), bleu (0..100, corpus BLEU), outputs (token lists)).
    max_len: most output tokens (default: as many as the model's positions allow)."""
    from .metrics import corpus_bleu

    cfg = model.config
    outs = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        src, _, _ = make_batch(chunk, vocab, cfg.pad_id, cfg.bos_id, cfg.eos_id)
        ids = model.greedy_decode(src, max_len) if beam_size is None else model.beam_search(src, beam_size, max_len)
        outs += [vocab.decode(x) for x in ids]
    refs = [t for _, t in pairs]
    exact = float(np.mean([o == r for o, r in zip(outs, refs)]))
    bleu = corpus_bleu(outs, refs).score
    return dict(exact_match=exact, bleu=bleu, outputs=outs)
