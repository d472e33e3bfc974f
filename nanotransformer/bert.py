"""A BERT-style masked language model (Devlin et al. 2019): the transformer *encoder* alone,
trained to fill in blanks, plus a [CLS] classification head.

    model = BERT(BERTConfig(vocab_size=len(vocab), block_size=64, n_classes=2))
    x, targets = mask_tokens(ids, rng, mask_id=vocab.mask_id, vocab_size=len(vocab))
    logits, loss = model.forward(x, targets)          # MLM: loss only on the masked positions
    model.backward()
    logits, loss = model.forward_cls(ids, labels)     # classification from the [CLS] position
    model.backward()

Causal vs masked language modelling, side by side:

    GPT (causal LM)                         BERT (masked LM)
    attention: position t sees 0..t         attention: every position sees every position
    predicts: token t+1 at every t          predicts: only the ~15% of tokens that were corrupted
    input: the text itself                  input: text with [MASK]s (and some random/kept tokens)
    can generate left to right              cannot generate; reads the whole sentence at once
    every position is a training signal     fewer signals per sequence, but each sees both sides

Corruption (`mask_tokens`): choose each non-special token with probability 0.15; of the chosen,
80% become [MASK], 10% a random token, 10% stay as they are. Only the chosen positions are
targets (every other target is ignore_index = -100, which the loss skips). The random and kept
cases stop the model from learning "only [MASK] positions matter": at fine-tuning time there is
no [MASK], and every token's representation must be useful.

The network is `blocks.encoder_block_forward` L times (pre-LN, bidirectional, padding masked),
with learned token and position embeddings and a final layer norm; the MLM head is tied to the
token embedding plus a per-token bias: logits = ln_f(x) @ wte^T + mlm.bias. Sequences start with
[CLS]; its final hidden state, the position that attends to the whole sentence, feeds the
classification head: cls_logits = ln_f(x)[:, 0] @ cls.w + cls.b.

Dimension legend: B batch, T time, C channels (d_model), V vocab, K classes.

Does not: have segment (sentence A/B) embeddings or next-sentence prediction, BERT's tanh
"pooler" or the dense+LN transform before the MLM head, or whole-word masking.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from .blocks import (
    FlatModel,
    _ln_specs,
    _put,
    encoder_block_backward,
    encoder_block_forward,
    encoder_block_specs,
)
from .layers import (
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    positional_backward,
    positional_forward,
)
from .seq2seq import Vocab
from .validation import check_array, check_ids, check_model_config

SPECIALS = ("[PAD]", "[CLS]", "[MASK]")  # ids 0, 1, 2


def char_vocab(text):
    """A character vocabulary with BERT's special tokens first: [PAD] 0, [CLS] 1, [MASK] 2, then
    the distinct characters of `text` in sorted order. Encode with `vocab.encode(list(s))`."""
    if not text:
        raise ValueError("text: expected a non-empty text to build the vocabulary from, got ''")
    v = Vocab(sorted(set(text)), specials=SPECIALS)
    v.pad_id, v.cls_id, v.mask_id = 0, 1, 2
    return v


def encode_batch(vocab, texts, block_size):
    """texts -> ids: (B, T) int64, each row [CLS] + characters (truncated to block_size - 1),
    right-padded with [PAD]; T is the longest row."""
    if not texts:
        raise ValueError("texts: expected at least one text, got none")
    rows = [[vocab.stoi["[CLS]"]] + vocab.encode(list(t))[: block_size - 1] for t in texts]
    ids = np.full((len(rows), max(len(r) for r in rows)), vocab.stoi["[PAD]"], dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids


def mask_tokens(ids, rng, mask_id, vocab_size, n_special=len(SPECIALS), mask_prob=0.15,
                p_mask=0.8, p_random=0.1, ignore_index=-100):  # fmt: skip
    """BERT's corruption. ids: (B, T) int -> corrupted: (B, T), targets: (B, T)

    Each token with id >= n_special (never [PAD], [CLS], [MASK]) is chosen with probability
    mask_prob; a chosen token becomes mask_id with probability p_mask, a random non-special
    token with probability p_random, and is kept otherwise. targets holds the original id at
    chosen positions and ignore_index everywhere else.
    """
    check_array("ids", ids, ndim=2)
    check_ids("ids", ids, vocab_size)
    if not (0.0 < mask_prob <= 1.0 and 0.0 <= p_mask and 0.0 <= p_random and p_mask + p_random <= 1.0):
        raise ValueError(
            f"mask_prob, p_mask, p_random: expected 0 < mask_prob <= 1 and p_mask + p_random <= 1, "
            f"got {mask_prob}, {p_mask}, {p_random}"
        )
    chosen = (ids >= n_special) & (rng.random(ids.shape) < mask_prob)
    r = rng.random(ids.shape)
    corrupted = ids.copy()
    corrupted[chosen & (r < p_mask)] = mask_id
    rand = chosen & (r >= p_mask) & (r < p_mask + p_random)
    corrupted[rand] = rng.integers(n_special, vocab_size, size=int(rand.sum()))
    targets = np.where(chosen, ids, ignore_index)
    return corrupted, targets


@dataclass
class BERTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = None  # None: 4 * d_model
    dropout: float = 0.0
    n_classes: int = 2  # size of the [CLS] classification head
    pad_id: int = 0
    cls_id: int = 1

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_model_config(self, ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_ff", "n_classes"))

    def to_dict(self):
        return asdict(self)


class BERT(FlatModel):
    """Bidirectional encoder with an MLM head and a [CLS] classification head, parameters in
    one flat buffer. BERT(config, dtype=np.float32, seed=0).

    Parameter names: wte, wpe, enc.{i}.* (as the seq2seq encoder), ln_f, mlm.bias, cls.w, cls.b.
    """

    def __init__(self, config, dtype=np.float32, seed=0):
        if not isinstance(config, BERTConfig):
            raise ValueError(f"config: expected a BERTConfig, got {type(config).__name__}")
        self.config = cfg = config
        C = cfg.d_model
        specs = [("wte", (cfg.vocab_size, C)), ("wpe", (cfg.block_size, C))]
        for i in range(cfg.n_layer):
            specs += encoder_block_specs(f"enc.{i}.", C, cfg.d_ff)
        specs += _ln_specs("ln_f", C) + [("mlm.bias", (cfg.vocab_size,)), ("cls.w", (C, cfg.n_classes)), ("cls.b", (cfg.n_classes,))]
        self.specs = specs
        self._build(dtype, seed)

    def _init_std(self, name, shape):
        if name.endswith("c_proj.w"):
            return 0.02 / math.sqrt(2 * self.config.n_layer)
        return 0.02

    # ------------------------------------------------------------------------- forward

    def encode(self, ids, train=False, rng=None):
        """ids: (B, T) int -> hidden states after ln_f: (B, T, C), cache. [PAD] keys are masked."""
        cfg = self.config
        check_array("ids", ids, ndim=2)
        check_ids("ids", ids, cfg.vocab_size)
        T = ids.shape[1]
        if not 1 <= T <= cfg.block_size:
            raise ValueError(f"ids: expected 1 to block_size={cfg.block_size} positions, got {T}")
        pad = ids == cfg.pad_id  # (B, T): True where the key is padding
        p_drop = cfg.dropout if train else 0.0
        x, emb_c = embedding_forward(ids, self.p["wte"])
        x, pos_c = positional_forward(x, self.p["wpe"])
        x, drop_c = dropout_forward(x, p_drop, rng, train)
        caches = []
        for i in range(cfg.n_layer):
            # no causal mask: this is the whole difference from GPT's attention
            x, c = encoder_block_forward(x, self.p, f"enc.{i}.", cfg.n_head, pad, "pre", p_drop, rng, train)
            caches.append(c)
        h, lnf_c = layernorm_forward(x, self.p["ln_f.w"], self.p["ln_f.b"])
        return h, (emb_c, pos_c, drop_c, caches, lnf_c)

    def _encode_backward(self, dh, cache):
        emb_c, pos_c, drop_c, caches, lnf_c = cache
        dx, dw, db = layernorm_backward(dh, lnf_c)
        _put(self.g, "ln_f", dw, db)
        for i in reversed(range(self.config.n_layer)):
            dx = encoder_block_backward(dx, caches[i], self.g, f"enc.{i}.")
        dx = dropout_backward(dx, drop_c)
        dx, dwpe = positional_backward(dx, pos_c)
        self.g["wpe"][...] = dwpe
        return embedding_backward(dx, emb_c)  # dwte from the input side

    def forward(self, ids, targets=None, *, train=False, rng=None):
        """Masked LM. ids: (B, T) corrupted input, targets: (B, T) original ids at the chosen
        positions, -100 elsewhere -> logits: (B, T, V), loss (mean over chosen positions) or None"""
        h, enc_c = self.encode(ids, train, rng)
        w_head = np.ascontiguousarray(self.p["wte"].T)  # (C, V), tied to the input embedding
        logits, head_c = linear_forward(h, w_head, self.p["mlm.bias"])  # (B, T, V)
        loss, self._cache = None, None
        if targets is not None:
            check_array("targets", targets, shape=ids.shape)
            loss_arr, loss_c = cross_entropy_forward(logits, targets)
            loss = float(loss_arr)
            self._cache = ("mlm", enc_c, head_c, loss_c)
        return logits, loss

    def forward_cls(self, ids, labels=None, *, train=False, rng=None):
        """Classification from [CLS]. ids: (B, T) with ids[:, 0] == cls_id, labels: (B,) int in
        [0, K) -> logits: (B, K), loss (mean cross-entropy) or None"""
        check_array("ids", ids, ndim=2)
        if ids.shape[1] and not np.all(ids[:, 0] == self.config.cls_id):
            b = int(np.argmax(ids[:, 0] != self.config.cls_id))
            raise ValueError(f"ids: expected every row to start with [CLS] (id {self.config.cls_id}), got {ids[b, 0]} in row {b}")
        h, enc_c = self.encode(ids, train, rng)
        h_cls = h[:, 0]  # (B, C): the [CLS] position has attended to the whole sentence
        logits, head_c = linear_forward(h_cls, self.p["cls.w"], self.p["cls.b"])  # (B, K)
        loss, self._cache = None, None
        if labels is not None:
            check_array("labels", labels, shape=(ids.shape[0],))
            check_ids("labels", labels, self.config.n_classes)
            loss_arr, loss_c = cross_entropy_forward(logits, labels)
            loss = float(loss_arr)
            self._cache = ("cls", enc_c, head_c, loss_c, h.shape)
        return logits, loss

    # ------------------------------------------------------------------------- backward

    def backward(self):
        """Gradients of the last forward's (or forward_cls's) loss -> `model.grads` (the head that
        was not used gets zeros). Returns `model.grads`."""
        if self._cache is None:
            raise ValueError("backward: expected a preceding forward(ids, targets) or forward_cls(ids, labels), got none")
        kind, enc_c, head_c, loss_c, *rest = self._cache
        self._cache = None
        g = self.g
        dlogits = cross_entropy_backward(np.ones((), dtype=self.dtype), loss_c)
        if kind == "mlm":
            # forward was: logits = h @ wte^T + mlm.bias
            dh, dw_head, dbias = linear_backward(dlogits, head_c)
            g["mlm.bias"][...] = dbias
            g["cls.w"][...] = 0.0
            g["cls.b"][...] = 0.0
            dwte = self._encode_backward(dh, enc_c)
            g["wte"][...] = dwte + dw_head.T  # tied: the lookup and the head both use wte
        else:
            (h_shape,) = rest
            dh_cls, dw, db = linear_backward(dlogits, head_c)
            _put(g, "cls", dw, db)
            g["mlm.bias"][...] = 0.0
            # forward was: h_cls = h[:, 0]  ->  only position 0 receives gradient
            dh = np.zeros(h_shape, dtype=self.dtype)
            dh[:, 0] = dh_cls
            g["wte"][...] = self._encode_backward(dh, enc_c)
        return self.grads


# ----------------------------------------------------------------------------- training


def train_mlm(model, ids, steps=500, batch_size=32, lr=1e-3, warmup=50, weight_decay=0.01, grad_clip=1.0,
              mask_prob=0.15, seed=0, log_every=0):  # fmt: skip
    """Masked-LM pre-training on rows of `ids` (N, T) ([CLS] + text, padded): each step draws a
    batch, corrupts it afresh with `mask_tokens` (so every epoch masks different positions) and
    takes an AdamW step. Returns the list of losses."""
    check_array("ids", ids, ndim=2)
    V = model.config.vocab_size

    def batch_loss(rng):
        batch = ids[rng.integers(0, len(ids), size=batch_size)]
        x, y = mask_tokens(batch, rng, mask_id=SPECIALS.index("[MASK]"), vocab_size=V, mask_prob=mask_prob)
        return model.forward(x, y, train=True, rng=rng)[1]

    return _fit(model, batch_loss, steps, lr, warmup, weight_decay, grad_clip, seed, log_every, "mlm")


def train_classifier(model, ids, labels, steps=200, batch_size=32, lr=3e-4, warmup=20, weight_decay=0.01,
                     grad_clip=1.0, seed=0, log_every=0):  # fmt: skip
    """Fine-tune every parameter for [CLS] classification. ids: (N, T) rows starting with [CLS],
    labels: (N,) -> list of losses. (Batches are trimmed to their longest row.)"""
    check_array("labels", labels, shape=(len(ids),))
    pad = model.config.pad_id

    def batch_loss(rng):
        idx = rng.integers(0, len(ids), size=batch_size)
        batch = ids[idx]
        batch = batch[:, : max(1, int((batch != pad).sum(axis=1).max()))]
        return model.forward_cls(batch, labels[idx], train=True, rng=rng)[1]

    return _fit(model, batch_loss, steps, lr, warmup, weight_decay, grad_clip, seed, log_every, "classification")


def _fit(model, batch_loss, steps, lr, warmup, weight_decay, grad_clip, seed, log_every, what):
    """The loop both trainers share: `steps` AdamW steps on batch_loss(rng) (a forward on a batch
    it draws with rng), gradients clipped, warm-up + cosine learning rate. -> list of losses"""
    from .optim import AdamW, clip_grad_norm, lr_schedule

    rng = np.random.default_rng(seed)
    opt = AdamW(model.params, lr=lr, weight_decay=weight_decay * model.decay_mask)
    losses = []
    for step in range(steps):
        loss = batch_loss(rng)
        model.backward()
        clip_grad_norm(model.grads, grad_clip)
        opt.step(model.grads, lr=lr_schedule(step, lr, warmup, steps, lr / 10))
        losses.append(loss)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  {what} loss {loss:.4f}")
    return losses


def predict_classes(model, ids, batch_size=256):
    """Predicted class per row from the [CLS] head: (N,) int64"""
    pad = model.config.pad_id
    out = []
    for i in range(0, len(ids), batch_size):
        batch = ids[i : i + batch_size]
        batch = batch[:, : max(1, int((batch != pad).sum(axis=1).max()))]
        out.append(model.forward_cls(batch)[0].argmax(axis=-1))
    return np.concatenate(out)


def fill_mask(model, vocab, text, top_k=3):
    """Predict the characters under each "_" of `text` (each becomes [MASK]) ->
    list of (position, [(char, probability)] * top_k)."""
    if len(text) + 1 > model.config.block_size:
        raise ValueError(f"text: expected at most block_size - 1 = {model.config.block_size - 1} characters, got {len(text)}")
    row = [vocab.stoi["[CLS]"]] + [vocab.stoi["[MASK]"] if c == "_" else vocab.encode([c])[0] for c in text]
    ids = np.array([row], dtype=np.int64)
    logits, _ = model.forward(ids)
    out = []
    for t in np.flatnonzero(ids[0] == vocab.stoi["[MASK]"]):
        z = logits[0, t].astype(np.float64)
        z[: len(vocab.specials)] = -np.inf  # a blank is never filled with a special token
        p = np.exp(z - z.max())
        p /= p.sum()
        best = np.argsort(-p)[:top_k]
        out.append((int(t) - 1, [(vocab.itos[i], float(p[i])) for i in best]))
    return out
