"""The encoder-decoder transformer of "Attention Is All You Need" (Vaswani et al. 2017), with
explicit forward/backward passes, label smoothing, greedy and beam decoding, and a task to train
it on: spelling numbers out in English ("4021" -> "four thousand twenty one").

    cfg = Seq2SeqConfig(vocab_size=len(vocab), max_len=16, n_enc_layer=2, n_dec_layer=2, label_smoothing=0.1)
    model = Seq2Seq(cfg)
    logits, loss = model.forward(src, tgt_in, targets, train=True, rng=rng)  # teacher forcing
    model.backward()                                                         # fills model.grads
    model.greedy_decode(src)  /  model.beam_search(src, beam_size=4)

The network:

    enc = emb[src] * sqrt(C) + PE                        # shared embedding, sinusoidal positions
    for each encoder block:                              # bidirectional: padding mask only
        enc = enc + self_attn(ln_1(enc), mask=src_pad)
        enc = enc + mlp(ln_2(enc))
    enc = enc.ln_f(enc)
    dec = emb[tgt_in] * sqrt(C) + PE
    for each decoder block:
        dec = dec + self_attn(ln_1(dec), causal)         # masked self-attention
        dec = dec + cross_attn(ln_2(dec), enc, mask=src_pad)   # queries from dec, keys/values from enc
        dec = dec + mlp(ln_3(dec))
    logits = dec.ln_f(dec) @ emb^T                       # output projection tied to the embedding

That is `norm="pre"` (pre-LN, as GPT-2: stable without a warm-up). `norm="post"` is the paper's
arrangement, x = LN(x + sublayer(x)), with no final LN. One vocabulary and one embedding matrix
serve source, target and the output projection (paper, section 3.4).

The model is the pieces of `block.py` that every model shares: the embedding front end, a
stack of the one transformer block for the encoder (`BlockConfig(causal=False)`) and one for
the decoder (`BlockConfig(causal=True, cross=True)`), and the tied head; the parameters live in
one `params.ParamStore` and the hot ops come from `backend.get_ops(config.backend)`, as in GPT.

Teacher forcing: the decoder is fed the *true* previous tokens (tgt_in = [BOS] + y) and
predicts every next one (targets = y + [EOS]) in one parallel pass; the causal mask keeps
position t from seeing tokens after t. At inference there is no true prefix, so decoding feeds
back the model's own outputs one token at a time (`decode` takes a `model.KVCache` for that).

Dimension legend: B batch, S source length, T target length, C channels (d_model), NH heads,
V vocab, K beam size.

Does not: cache the cross-attention's keys and values of the memory while decoding (the
self-attention's are cached; the memory's are recomputed each step), use ReLU in the feed-forward layer
(GELU, as the rest of the book), or share anything but the embedding between encoder and decoder.
"""
import math
from dataclasses import dataclass

import numpy as np

from .resources import check_model_memory
from .backend import get_ops
from .block import (
    attention_weights,
    NORM_POSITIONS,
    BlockConfig,
    block_specs,
    embed_backward,
    embed_forward,
    norm_specs,
    stack_backward,
    stack_forward,
    tied_head_backward,
    tied_head_forward,
)
from .layers import (  # the label-smoothing pair is also imported from here by notebook 13
    label_smoothing_cross_entropy_backward,
    label_smoothing_cross_entropy_forward,
    sinusoidal_table,
)
from .generation import Seq2SeqDecoder, beam_search, sample
from .params import ParamStore
from .tasks import (  # noqa: F401 (Vocab, number_to_words, numbers_*: re-exported for chapter 13)
    TranslationTask, Vocab, make_batch, number_to_words, numbers_dataset, numbers_vocab,
)
from .train import fit_task
from .validation import ConfigDict, check_array, check_ids, check_model_config

# ----------------------------------------------------------------------------- the model


@dataclass
class Seq2SeqConfig(ConfigDict):
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
    label_smoothing: float = 0.0  # the training loss's (the paper: 0.1); evaluation reports plain cross-entropy
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    backend: str = None  # None: $NANOTRANSFORMER_BACKEND, else the default (see backend.py)

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_model_config(self, ("vocab_size", "max_len", "n_enc_layer", "n_dec_layer", "n_head", "d_model", "d_ff"))
        if self.norm not in NORM_POSITIONS:
            raise ValueError(f"norm: expected one of {NORM_POSITIONS}, got {self.norm!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {self.label_smoothing}")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}: expected an id in [0, {self.vocab_size}), got {getattr(self, name)}")




class Seq2Seq(ParamStore):
    """The encoder-decoder: parameters in one `ParamStore`, forward (teacher forcing) / backward,
    greedy and beam decoding. Seq2Seq(config, dtype=np.float32, seed=0).

    Parameter names: "emb" (V, C) shared; "enc.{i}.*" (ln_1, attn, ln_2, mlp) and "dec.{i}.*"
    (ln_1, attn, ln_2, cross.q, cross.kv, cross.c_proj, ln_3, mlp) per block (`block.block_specs`);
    "enc.ln_f", "dec.ln_f" with norm="pre".
    """

    kind = "seq2seq"
    config_class = Seq2SeqConfig

    def __init__(self, config, dtype=np.float32, seed=0):
        if not isinstance(config, Seq2SeqConfig):
            raise ValueError(f"config: expected a Seq2SeqConfig, got {type(config).__name__}")
        check_model_memory(type(self), config, dtype)  # before anything is allocated (resources.py)
        self.config = cfg = config
        self.ops = get_ops(cfg.backend)
        self.enc_block, self.dec_block = self.block_configs(cfg)
        self.enc_prefixes = [f"enc.{i}." for i in range(cfg.n_enc_layer)]
        self.dec_prefixes = [f"dec.{i}." for i in range(cfg.n_dec_layer)]
        self.enc_norm, self.dec_norm = ("enc.ln_f", "dec.ln_f") if cfg.norm == "pre" else (None, None)
        self._pe = sinusoidal_table(cfg.max_len, cfg.d_model, np.dtype(dtype))
        self._cache = None
        self.build(self.param_specs(cfg), dtype, seed)

    @staticmethod
    def block_configs(config):
        """(encoder's, decoder's) `BlockConfig`."""
        kw = dict(n_head=config.n_head, d_ff=config.d_ff, norm_position=config.norm)
        return BlockConfig(causal=False, **kw), BlockConfig(causal=True, cross=True, **kw)

    @staticmethod
    def param_specs(config):
        """[(name, shape)] of every parameter, in buffer order."""
        C = config.d_model
        enc, dec = Seq2Seq.block_configs(config)
        specs = [("emb", (config.vocab_size, C))]
        for i in range(config.n_enc_layer):
            specs += block_specs(f"enc.{i}.", C, enc)
        if config.norm == "pre":
            specs += norm_specs("enc.ln_f", C)
        for i in range(config.n_dec_layer):
            specs += block_specs(f"dec.{i}.", C, dec)
        if config.norm == "pre":
            specs += norm_specs("dec.ln_f", C)
        return specs

    def init_std(self, name, shape):
        if name == "emb":
            # tied with the output layer: logits = h @ emb^T with unit-variance h have std ~1
            return self.config.d_model**-0.5
        if name.endswith("c_proj.w"):  # residual projections: keep the stream's variance flat
            n_res = 2 * self.config.n_enc_layer + 3 * self.config.n_dec_layer
            return 0.02 / math.sqrt(n_res)
        return 0.02

    # ------------------------------------------------------------------------- forward

    def _embed(self, name, ids, offset=0, train=False, rng=None):
        """ids: (B, T) -> dropout(emb[ids] * sqrt(C) + PE[offset:offset+T]): (B, T, C), cache.
        The paper scales the embedding by sqrt(d_model) so it is not drowned by the
        unit-amplitude positions."""
        cfg = self.config
        check_array(name, ids, ndim=2)
        check_ids(name, ids, cfg.vocab_size)
        T = ids.shape[1]
        if T < 1:
            raise ValueError(f"{name}: expected at least one position, got shape {ids.shape}")
        if offset + T > cfg.max_len:
            raise ValueError(
                f"{name}: expected at most max_len={cfg.max_len} positions, got {offset + T}"
                + (f" ({offset} cached + {T} new)" if offset else "")
            )
        p_drop = cfg.dropout if train else 0.0
        return embed_forward(ids, self.p["emb"], self._pe, self.ops, offset=offset, scale=math.sqrt(cfg.d_model),
                             p_drop=p_drop, rng=rng, train=train)  # fmt: skip

    def encode(self, src, train=False, rng=None):
        """src: (B, S) int, padded with pad_id -> mem: (B, S, C), src_pad: (B, S) bool, cache"""
        x, emb_c = self._embed("src", src, train=train, rng=rng)
        src_pad = src == self.config.pad_id  # (B, S): True where the key is padding
        p_drop = self.config.dropout if train else 0.0
        mem, stack_c = stack_forward(x, self.p, self.enc_prefixes, self.enc_block, self.ops, self.enc_norm,
                                     key_padding_mask=src_pad, p_drop=p_drop, rng=rng, train=train)
        return mem, src_pad, (emb_c, stack_c)

    def decode(self, tgt_in, mem, src_pad, train=False, rng=None, kv_cache=None):
        """tgt_in: (B, T) int, mem: (B, S, C), src_pad: (B, S) bool or None -> logits: (B, T, V), cache

        kv_cache: a `model.KVCache(n_dec_layer)` to decode incrementally (inference only): tgt_in
        holds only the positions after the cached ones (their positional encodings start at
        len(kv_cache)), and the decoder's self-attention keys/values are appended to the cache.
        """
        if kv_cache is not None and train:
            raise ValueError("kv_cache: only for inference (train=False)")
        offset = 0 if kv_cache is None else len(kv_cache)
        x, emb_c = self._embed("tgt_in", tgt_in, offset, train, rng)
        p_drop = self.config.dropout if train else 0.0
        h, stack_c = stack_forward(x, self.p, self.dec_prefixes, self.dec_block, self.ops, self.dec_norm, mem=mem,
                                   mem_padding_mask=src_pad, kv_cache=kv_cache, p_drop=p_drop, rng=rng,
                                   train=train)  # fmt: skip
        logits, head_c = tied_head_forward(h, self.p["emb"], None, self.ops)  # (B, T, V)
        return logits, (emb_c, stack_c, head_c)

    def forward(self, src, tgt_in, targets=None, *, label_smoothing=None, train=False, rng=None):
        """Teacher-forced pass. src: (B, S), tgt_in: (B, T) = [BOS] + y (padded),
        targets: (B, T) = y + [EOS], -100 where padded -> logits: (B, T, V), loss: float or None

        label_smoothing: None means config.label_smoothing when training (what is optimised) and
        0 otherwise (evaluation reports the plain cross-entropy, for perplexity); a value wins.
        """
        check_array("tgt_in", tgt_in, ndim=2)
        check_array("src", src, ndim=2)
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"tgt_in: expected batch size {src.shape[0]} (the batch of src), got {tgt_in.shape[0]}")
        if label_smoothing is None:
            label_smoothing = self.config.label_smoothing if train else 0.0
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
        (emb_e, enc_c), (emb_d, dec_c, head_c), loss_c = self._cache
        self._cache = None  # one backward per forward: the caches are consumed
        dlogits = label_smoothing_cross_entropy_backward(np.ones((), dtype=self.dtype), loss_c)  # (B, T, V)
        # forward was: logits = h @ emb^T  ->  dh = dlogits @ emb, demb (head) = dlogits^T @ h
        dh, demb_head, _ = tied_head_backward(dlogits, head_c)
        # mem feeds every decoder block's cross-attention: dmem is the sum over blocks
        dx, dmem = stack_backward(dh, dec_c, self.g)
        demb_dec, _ = embed_backward(dx, emb_d)  # the sinusoidal table is fixed: no gradient
        dx, _ = stack_backward(dmem, enc_c, self.g)
        demb_enc, _ = embed_backward(dx, emb_e)
        # the shared embedding is used three times: source lookup, target lookup, output layer
        self.g["emb"][...] = demb_enc + demb_dec + demb_head
        return self.grads

    # ------------------------------------------------------------------------- state, inspection


    def cross_attention_maps(self, src, tgt_in):
        """Where each output position looked in the source: one (B, NH, T, S) array of
        cross-attention weights per decoder block (rows sum to 1 over the real source tokens)."""
        # the fused Numba attention never forms the (T, S) weights: run this pass on the reference
        ops, self.ops = self.ops, get_ops("numpy")
        try:
            mem, src_pad, _ = self.encode(src)
            _, (_, dec_c, _) = self.decode(tgt_in, mem, src_pad)
        finally:
            self.ops = ops
        return attention_weights(dec_c, "cross")

    # ------------------------------------------------------------------------- decoding

    def next_logits(self, tgt, mem, src_pad, kv_cache=None):
        """Logits of the token after each row's prefix: (N, V). tgt: (N, T) the prefixes (with a
        kv_cache: only the positions after the cached ones). The search is `generation.py`'s."""
        return self.decode(tgt, mem, src_pad, kv_cache=kv_cache)[0][:, -1]

    def _max_new(self, max_len):
        """New tokens (EOS included) that fit: [BOS] + max_len + [EOS] positions, at most max_len."""
        return (self.config.max_len if max_len is None else min(max_len + 1, self.config.max_len)) - 1

    def _ends(self, new_ids):
        return new_ids[-1] == self.config.eos_id

    def greedy_decode(self, src, max_len=None, use_cache=True):
        """Feed back the most likely token until EOS (`generation.sample` at temperature 0).
        src: (B, S) -> list of B id lists (no BOS/EOS). max_len: most output tokens (default: as
        many as the positions allow)."""
        cfg = self.config
        bos = np.full((src.shape[0], 1), cfg.bos_id, dtype=np.int64)
        ys = sample(Seq2SeqDecoder(self, src, use_cache), bos, self._max_new(max_len), temperature=0,
                    should_stop=self._ends)  # fmt: skip
        return [_strip(row[1:], cfg.eos_id, cfg.pad_id) for row in ys]

    def beam_search(self, src, beam_size=4, max_len=None, alpha=0.6, use_cache=True):
        """`generation.beam_search` from [BOS] for each source row. src: (B, S) -> list of B id
        lists (no BOS/EOS).

        A finished hypothesis (ends in EOS) is ranked by log p / lp(length) with GNMT's length
        penalty lp = ((5 + length) / 6) ** alpha (the paper: beam 4, alpha 0.6); alpha = 0 ranks
        by raw log-probability, which favours short outputs. A source stops when no live beam
        can still beat its best finished hypothesis.
        """
        cfg = self.config
        if not isinstance(beam_size, (int, np.integer)) or isinstance(beam_size, bool) or beam_size < 1:
            raise ValueError(f"beam_size: expected a positive integer, got {beam_size!r}")
        out = []
        for b in range(src.shape[0]):
            (best, _), = beam_search(Seq2SeqDecoder(self, src[b : b + 1], use_cache), np.array([cfg.bos_id]),
                                     self._max_new(max_len), beam_size, length_penalty=alpha, norm="gnmt",
                                     should_stop=self._ends)  # fmt: skip
            out.append(_strip(best[1:], cfg.eos_id, cfg.pad_id))
        return out


def _strip(row, eos_id, pad_id):
    """Ids up to (not including) the first EOS, without padding."""
    out = []
    for t in row.tolist():
        if t == eos_id:
            break
        if t != pad_id:
            out.append(t)
    return out


# ----------------------------------------------------------------------------- training, evaluation


def train_seq2seq(model, pairs, vocab, steps=1000, batch_size=64, lr=3e-3, warmup=100, label_smoothing=None,
                  weight_decay=0.01, grad_clip=1.0, seed=0, log_every=0):  # fmt: skip
    """Train on random mini-batches of `pairs` with the one `train.Trainer` (AdamW, warm-up +
    cosine learning rate, teacher forcing). Returns the list of training losses (one per step).

    label_smoothing: the training loss's (None: `config.label_smoothing`). log_every > 0
    evaluates and prints the loss every that many steps.
    """
    task = TranslationTask(vocab, pairs, label_smoothing=label_smoothing)
    return fit_task(model, task, steps, batch_size, lr, warmup, weight_decay, grad_clip, seed, log_every)


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
