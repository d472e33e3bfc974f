"""A BERT-style masked language model (Devlin et al. 2019): the transformer *encoder* alone,
trained to fill in blanks, plus a [CLS] classification head.

    model = BERT(BERTConfig(vocab_size=len(vocab), block_size=64, n_classes=2))
    x, targets = mask_tokens(ids, rng, vocab_size=len(vocab))
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

Corruption (`tasks.mask_tokens`): choose each non-special token with probability 0.15; of the
chosen, 80% become [MASK], 10% a random token, 10% stay as they are. Only the chosen positions
are targets (every other target is ignore_index = -100, which the loss skips). The random and
kept cases stop the model from learning "only [MASK] positions matter": at fine-tuning time
there is no [MASK], and every token's representation must be useful.

The network is the three pieces of `block.py` every model shares: the embedding front end
(learned token and position embeddings), a stack of L of the one transformer block
(pre-LN, *bidirectional*: `BlockConfig(causal=False)`, [PAD] keys masked) with a final layer
norm, and the head tied to the token embedding plus a per-token bias:
logits = ln_f(x) @ wte^T + mlm.bias. Sequences start with [CLS]; its final hidden state, the
position that attends to the whole sentence, feeds the classification head:
cls_logits = ln_f(x)[:, 0] @ cls.w + cls.b. The parameters live in one `params.ParamStore`; the
hot ops come from `backend.get_ops(config.backend)`, as in GPT.

Dimension legend: B batch, T time, C channels (d_model), V vocab, K classes, L layers.

Does not: have segment (sentence A/B) embeddings or next-sentence prediction, BERT's tanh
"pooler" or the dense+LN transform before the MLM head, or whole-word masking.
"""
from dataclasses import dataclass

import numpy as np

from .resources import check_model_memory
from .backend import get_ops
from .block import (
    BlockConfig,
    block_specs,
    embed_backward,
    embed_forward,
    norm_specs,
    residual_std,
    stack_backward,
    stack_forward,
    tied_head_backward,
    tied_head_forward,
)
from .layers import softmax_forward
from .params import ParamStore
from .tasks import (  # noqa: F401 (char_vocab, encode_batch, mask_tokens, SPECIALS: re-exported for chapter 12)
    CLS_ID, MASK_ID, PAD_ID, SPECIALS, CLSClassificationTask, MaskedLMTask, char_vocab, encode_batch, mask_tokens,
)
from .train import fit_task
from .validation import ConfigDict, check_array, check_ids, check_model_config


@dataclass
class BERTConfig(ConfigDict):
    """Hyper-parameters of the network (not of training: see `train_mlm`, `train_classifier`)."""

    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = None  # None: 4 * d_model
    dropout: float = 0.0
    n_classes: int = 2  # size of the [CLS] classification head
    pad_id: int = PAD_ID
    cls_id: int = CLS_ID
    backend: str = None  # None: $NANOTRANSFORMER_BACKEND, else the default (see backend.py)

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_model_config(self, ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_ff", "n_classes"))



class BERT(ParamStore):
    """Bidirectional encoder with an MLM head and a [CLS] classification head, parameters in
    one `ParamStore`. BERT(config, dtype=np.float32, seed=0).

    Parameter names: wte, wpe, enc.{i}.* (the one block's names: ln_1, attn.c_attn, attn.c_proj,
    ln_2, mlp.c_fc, mlp.c_proj), ln_f, mlm.bias, cls.w, cls.b. Initialisation as GPT-2.
    """

    kind = "bert"
    config_class = BERTConfig

    def __init__(self, config, dtype=np.float32, seed=0):
        if not isinstance(config, BERTConfig):
            raise ValueError(f"config: expected a BERTConfig, got {type(config).__name__}")
        check_model_memory(type(self), config, dtype)  # before anything is allocated (resources.py)
        self.config = config
        self.ops = get_ops(config.backend)
        self.block = self.block_config(config)
        self.prefixes = [f"enc.{i}." for i in range(config.n_layer)]
        self._cache = None
        self.build(self.param_specs(config), dtype, seed)

    @staticmethod
    def block_config(config):
        # no causal mask: this is the whole difference from GPT's blocks
        return BlockConfig(n_head=config.n_head, d_ff=config.d_ff, causal=False)

    @staticmethod
    def param_specs(config):
        """[(name, shape)] of every parameter, in buffer order."""
        V, C = config.vocab_size, config.d_model
        bc = BERT.block_config(config)
        specs = [("wte", (V, C)), ("wpe", (config.block_size, C))]
        for i in range(config.n_layer):
            specs += block_specs(f"enc.{i}.", C, bc)
        specs += norm_specs("ln_f", C)
        return specs + [("mlm.bias", (V,)), ("cls.w", (C, config.n_classes)), ("cls.b", (config.n_classes,))]

    def init_std(self, name, shape):
        return residual_std(self.config.n_layer) if name.endswith("c_proj.w") else 0.02

    # ------------------------------------------------------------------------- forward

    def encode(self, ids, train=False, rng=None):
        """ids: (B, T) int -> hidden states after ln_f: (B, T, C), cache. [PAD] keys are masked."""
        cfg = self.config
        check_array("ids", ids, ndim=2)
        check_ids("ids", ids, cfg.vocab_size)
        T = ids.shape[1]
        if not 1 <= T <= cfg.block_size:
            raise ValueError(f"ids: expected 1 to block_size={cfg.block_size} positions, got {T}")
        pad = ids == cfg.pad_id  # (B, T): True where the key is padding (stack_forward drops an empty mask)
        p_drop = cfg.dropout if train else 0.0
        x, emb_c = embed_forward(ids, self.p["wte"], self.p["wpe"], self.ops, p_drop=p_drop, rng=rng, train=train)
        h, stack_c = stack_forward(x, self.p, self.prefixes, self.block, self.ops, "ln_f", key_padding_mask=pad,
                                   p_drop=p_drop, rng=rng, train=train)  # (B, T, C)
        return h, (emb_c, stack_c)

    def _encode_backward(self, dh, cache):
        """dh: (B, T, C) -> dwte from the input side; writes the blocks', ln_f's and wpe's gradients."""
        emb_c, stack_c = cache
        dx, _ = stack_backward(dh, stack_c, self.g)
        dwte, dwpe = embed_backward(dx, emb_c)
        self.g["wpe"][...] = dwpe
        return dwte

    def forward(self, ids, targets=None, *, train=False, rng=None):
        """Masked LM. ids: (B, T) corrupted input, targets: (B, T) original ids at the chosen
        positions, -100 elsewhere -> logits: (B, T, V), loss (mean over chosen positions) or None"""
        h, enc_c = self.encode(ids, train, rng)
        logits, head_c = tied_head_forward(h, self.p["wte"], self.p["mlm.bias"], self.ops)  # (B, T, V)
        loss, self._cache = None, None
        if targets is not None:
            check_array("targets", targets, shape=ids.shape)
            loss_arr, loss_c = self.ops.cross_entropy_forward(logits, targets)
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
        logits, head_c = self.ops.linear_forward(h_cls, self.p["cls.w"], self.p["cls.b"])  # (B, K)
        loss, self._cache = None, None
        if labels is not None:
            check_array("labels", labels, shape=(ids.shape[0],))
            check_ids("labels", labels, self.config.n_classes)
            loss_arr, loss_c = self.ops.cross_entropy_forward(logits, labels)
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
        self._cache = None  # one backward per forward: the caches are consumed
        g = self.g
        dlogits = self.ops.cross_entropy_backward(np.ones((), dtype=self.dtype), loss_c)
        if kind == "mlm":
            # forward was: logits = h @ wte^T + mlm.bias
            dh, dwte_head, dbias = tied_head_backward(dlogits, head_c)
            g["mlm.bias"][...] = dbias
            g["cls.w"][...] = 0.0
            g["cls.b"][...] = 0.0
            dwte = self._encode_backward(dh, enc_c)
            g["wte"][...] = dwte + dwte_head  # tied: the lookup and the head both use wte
        else:
            (h_shape,) = rest
            dh_cls, dw, db = self.ops.linear_backward(dlogits, head_c)
            g["cls.w"][...] = dw
            g["cls.b"][...] = db
            g["mlm.bias"][...] = 0.0
            # forward was: h_cls = h[:, 0]  ->  only position 0 receives gradient
            dh = np.zeros(h_shape, dtype=self.dtype)
            dh[:, 0] = dh_cls
            g["wte"][...] = self._encode_backward(dh, enc_c)
        return self.grads

    # ------------------------------------------------------------------------- state



# ----------------------------------------------------------------------------- training


def train_mlm(model, ids, steps=500, batch_size=32, lr=1e-3, warmup=50, weight_decay=0.01, grad_clip=1.0,
              mask_prob=0.15, seed=0, log_every=0):  # fmt: skip
    """Masked-LM pre-training on rows of `ids` (N, T) ([CLS] + text, padded) with the one
    `train.Trainer`: each step draws a batch and corrupts it afresh with `mask_tokens` (so every
    epoch masks different positions). Returns the list of losses."""
    task = MaskedLMTask(model.config.vocab_size, model.config.block_size, rows=ids, mask_prob=mask_prob)
    return fit_task(model, task, steps, batch_size, lr, warmup, weight_decay, grad_clip, seed, log_every)


def train_classifier(model, ids, labels, steps=200, batch_size=32, lr=3e-4, warmup=20, weight_decay=0.01,
                     grad_clip=1.0, seed=0, log_every=0):  # fmt: skip
    """Fine-tune every parameter for [CLS] classification with the one `train.Trainer`.
    ids: (N, T) rows starting with [CLS], labels: (N,) -> list of losses. (Batches are trimmed
    to their longest row.)"""
    check_array("ids", ids, ndim=2)
    lengths = np.maximum((ids != model.config.pad_id).sum(axis=1), 1)
    idx = np.arange(len(ids))
    task = CLSClassificationTask(ids, lengths, labels, {"train": idx, "val": idx}, source="sentences")
    return fit_task(model, task, steps, batch_size, lr, warmup, weight_decay, grad_clip, seed, log_every)


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
        p, _ = softmax_forward(z)
        best = np.argsort(-p)[:top_k]
        out.append((int(t) - 1, [(vocab.itos[i], float(p[i])) for i in best]))
    return out
