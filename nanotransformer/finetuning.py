"""Fine-tuning a pretrained GPT for classification (sentiment), and the baseline to beat: a
bag-of-words logistic regression.

    sentences, labels = load_sentiment("../shared/data/sentiment")     # sentence<TAB>0|1 lines
    clf = GPTClassifier(gpt, n_classes=2, pool="last", train_blocks=1)  # freeze all but 1 block
    ids, lengths = encode_sentences(tokenizer, sentences, block_size=gpt.config.block_size)
    history = finetune(clf, ids[tr], lengths[tr], labels[tr], steps=300)   # the one Trainer
    pred = clf.predict(ids[te], lengths[te])

(The data functions, `load_sentiment`, `encode_sentences`, `split_indices`, `toy_reviews`, live in
`tasks.py`; they are re-exported here because this is where a reader of chapter 11 looks.)

The classifier reads GPT's final hidden states h = ln_f(blocks(embed(ids))): (B, T, C) and
pools one vector per sentence, then a linear head gives class logits:

    pool="last":  z = h[b, length_b - 1]            the last real token. In a causal model it is
                                                    the only position that has seen the whole
                                                    sentence (GPT-1's choice, and OpenAI's
                                                    "classification via the last token").
    pool="mean":  z = mean_t<length_b h[b, t]       every position, each having seen a prefix
    logits = z @ head.w + head.b                    (B, K)

Padding needs no attention mask: rows are right-padded, and with the causal mask a real token
never attends to a later position, so whatever id fills the padding cannot change the pooled
vector (the tests check this).

Parameters: the classifier is one `params.ParamStore` whose buffer is the GPT's parameters
(same names, in the same order) followed by "head.w" (C, K) and "head.b" (K,); the GPT passed in
is rebound to the front of that buffer (`ParamStore.bind`), so it is trained in place and the
one optimiser, checkpoint and trainer see a single flat array.

Freezing: `train_blocks=k` trains only the last k transformer blocks, the final layer norm and
the head; everything below (embeddings, earlier blocks) is frozen: no gradient is computed for it
(the backward pass stops at the first trainable block) and the optimiser never touches it, so it
stays bit-identical. Because parameters are laid out bottom-up (wte, wpe, h.0, ..., h.L-1,
ln_f, head), the frozen part is one prefix of the flat buffer, `clf.frozen` entries long.
`train_blocks=None` trains everything.

Dimension legend: B batch, T time, C channels, K classes, N examples, F bag-of-words features.

LoRA: `lora.LoRA(clf, ...)` trains low-rank adapters on the (frozen) GPT body plus a head of its
own; `forward`/`backward` take it as `lora=` and then read and write that head (`lora.p["head.w"]`,
...) instead of the classifier's.

Does not: mix the LM loss into fine-tuning (GPT-1's auxiliary
objective), or use a tokenizer other than the pretrained model's own.
"""
import re

import numpy as np

from .layers import softmax_forward
from .params import ParamStore
from .tasks import encode_sentences, load_sentiment, split_indices, toy_reviews  # noqa: F401
from .validation import check_array, check_ids

# ----------------------------------------------------------------------------- the classifier

POOLS = ("last", "mean")


def pool_weights(lengths, T, pool, dtype):
    """Pooling as a (B, T) weight matrix a, z[b] = sum_t a[b, t] h[b, t]: one-hot at the last
    real token ("last") or 1/length over the real tokens ("mean")."""
    t = np.arange(T)[None, :]
    if pool == "last":
        return (t == (lengths[:, None] - 1)).astype(dtype)
    return (t < lengths[:, None]).astype(dtype) / lengths[:, None].astype(dtype)


def pool_last(h, lengths):
    """h: (B, T, C) hidden states of right-padded rows, lengths: (B,) -> z: (B, C), the state of
    each row's last real token, z[b] = h[b, lengths[b] - 1]."""
    return np.einsum("bt,btc->bc", pool_weights(lengths, h.shape[1], "last", h.dtype), h)


class GPTClassifier(ParamStore):
    """A GPT body (a `model.GPT`, trained in place) + pooling + a linear head.

    GPTClassifier(gpt, n_classes=2, pool="last", train_blocks=None, seed=0). Parameters: the
    GPT's (same names) then "head.w" (C, K) and "head.b" (K,), one buffer (module docstring).
    Reads the GPT through `GPT.hidden_forward` / `GPT.hidden_backward` (embeddings, blocks, final
    layer norm), so a change to the GPT is picked up here.
    """

    kind = "classifier"

    def __init__(self, gpt, n_classes=2, pool="last", train_blocks=None, seed=0):
        from .model import GPT

        if not isinstance(gpt, GPT):
            raise ValueError(f"gpt: expected a model.GPT, got {type(gpt).__name__}")
        if pool not in POOLS:
            raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
        L = gpt.config.n_layer
        if train_blocks is not None and (not isinstance(train_blocks, (int, np.integer)) or isinstance(train_blocks, bool)
                                         or not 0 <= train_blocks <= L):  # fmt: skip
            raise ValueError(f"train_blocks: expected None (train everything) or an integer in [0, {L}], got {train_blocks!r}")
        if not isinstance(n_classes, (int, np.integer)) or isinstance(n_classes, bool) or n_classes < 2:
            raise ValueError(f"n_classes: expected an integer >= 2, got {n_classes!r}")
        self.gpt, self.pool, self.train_blocks, self.n_classes = gpt, pool, train_blocks, n_classes
        self.ops, self.config = gpt.ops, gpt.config
        C, n = gpt.config.d_model, gpt.params.size
        self.build(gpt.specs + [("head.w", (C, n_classes)), ("head.b", (n_classes,))], gpt.dtype, seed=None)
        self.params[:n] = gpt.params
        self.p["head.w"][...] = np.random.default_rng(seed).normal(0.0, 0.02, size=(C, n_classes))
        gpt.bind(self.params[:n], self.grads[:n])  # the GPT now lives at the front of this buffer
        # first trainable block; the buffer from that block's first parameter on is trainable
        self.first_block = 0 if train_blocks is None else L - train_blocks
        first = "wte" if train_blocks is None else (f"h.{self.first_block}.ln_1.w" if self.first_block < L else "ln_f.w")
        self.frozen = self.offset(first)
        # an untied LM head (the Llama body's lm_head.w) is not part of the classifier: it gets no
        # gradient, and no weight decay, so training leaves it bit-identical
        self.unused = ["lm_head.w"] if "lm_head.w" in self.p else []
        for name in self.unused:
            self.views(self.decay_mask)[name][...] = 0.0
        self._cache = None

    def freeze(self):
        """Freeze the classifier and its GPT body for good (`ParamStore.freeze`). Returns self."""
        super().freeze()
        self.gpt.freeze()
        return self

    def num_trained(self):
        """Parameters training changes: those after the frozen prefix, less the unused LM head."""
        return self.params.size - self.frozen - sum(self.p[name].size for name in self.unused)

    # ------------------------------------------------------------------------- forward / backward

    def forward(self, ids, lengths, labels=None, *, train=False, rng=None, lora=None):
        """ids: (B, T) int right-padded, lengths: (B,) real tokens per row, labels: (B,) int or None
        -> logits: (B, K), loss: float or None. lora: a `lora.LoRA` of this classifier: adapters on
        the GPT body, and the head is the LoRA's "head.w", "head.b"."""
        check_array("ids", ids, ndim=2)  # the ids themselves and T <= block_size: hidden_forward
        B, T = ids.shape
        check_array("lengths", lengths, shape=(B,))
        if not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"lengths: expected an integer array, got dtype {lengths.dtype}")
        if lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths: expected values in [1, {T}] (the padded length), got {lengths.min()}..{lengths.max()}")
        h, hidden_c = self.gpt.hidden_forward(ids, train=train, rng=rng, lora=lora)  # (B, T, C), after ln_f
        a = pool_weights(lengths, T, self.pool, h.dtype)  # (B, T)
        z = np.einsum("bt,btc->bc", a, h)  # (B, C)
        p = self.p if lora is None else lora.p
        logits, head_c = self.ops.linear_forward(z, p["head.w"], p["head.b"])  # (B, K)
        loss, self._cache = None, None
        if labels is not None:
            check_array("labels", labels, shape=(B,))
            check_ids("labels", labels, self.n_classes)
            loss_arr, loss_c = self.ops.cross_entropy_forward(logits, labels)
            loss = float(loss_arr)
            self._cache = (hidden_c, a, head_c, loss_c, lora)
        return logits, loss

    def backward(self, lora=None):
        """Gradients of the last forward's loss, written into `grads`: the head's and the GPT's
        trainable part (the frozen prefix is zeroed and never computed). Returns `grads`.
        After a forward with a LoRA (`lora` defaults to it): the LoRA's head and adapters only,
        into `lora.grads` (returned); train_blocks does not apply, the whole body is frozen."""
        if self._cache is None:
            raise ValueError("backward: expected a preceding forward(ids, lengths, labels) with labels, got none")
        hidden_c, a, head_c, loss_c, used = self._cache
        if lora is not None and lora is not used:
            raise ValueError("lora: expected the LoRA the forward ran with (or None), got another")
        if used is None and self.grads is None:
            raise ValueError("backward: this model is frozen (freeze()), it has no gradient buffer")
        self._cache = None
        dlogits = self.ops.cross_entropy_backward(np.ones((), dtype=self.dtype), loss_c)
        dz, dw, db = self.ops.linear_backward(dlogits, head_c)
        g = self.g if used is None else used.g
        g["head.w"][...], g["head.b"][...] = dw, db
        # forward was: z[b] = sum_t a[b, t] h[b, t]  ->  dh[b, t] = a[b, t] dz[b]
        dh = a[:, :, None] * dz[:, None, :]  # (B, T, C)
        if used is not None:
            self.gpt.hidden_backward(dh, hidden_c, embeddings=False)  # into used.g (the cache knows)
            return used.grads
        self.grads[: self.frozen] = 0.0  # the frozen part: zero, never computed
        self.gpt.hidden_backward(dh, hidden_c, first_block=self.first_block, embeddings=self.train_blocks is None)
        return self.grads

    def predict_proba(self, ids, lengths, batch_size=256, lora=None):
        """Class probabilities (N, K), in batches (each trimmed to its longest row); lora as in forward."""
        out = []
        for i in range(0, len(ids), batch_size):
            ln = lengths[i : i + batch_size]
            logits, _ = self.forward(ids[i : i + batch_size, : ln.max()], ln, lora=lora)
            out.append(softmax_forward(logits.astype(np.float64))[0])
        return np.concatenate(out)

    def predict(self, ids, lengths, batch_size=256, lora=None):
        """Predicted class per row: (N,) int64"""
        return self.predict_proba(ids, lengths, batch_size, lora).argmax(axis=-1)

    # ------------------------------------------------------------------------- state

    def config_dict(self):
        return {"gpt": self.gpt.config_dict(), "n_classes": int(self.n_classes), "pool": self.pool,
                "train_blocks": self.train_blocks}  # fmt: skip

    @classmethod
    def from_config(cls, d, dtype=np.float32, backend=None):
        from .model import GPT

        known = {"gpt", "n_classes", "pool", "train_blocks"}
        if set(d) != known:
            raise ValueError(f"config: expected the keys {sorted(known)}, got {sorted(d)}")
        return cls(GPT.from_config(d["gpt"], dtype, backend), d["n_classes"], d["pool"], d["train_blocks"])


def finetune(clf, ids, lengths, labels, steps=300, batch_size=32, lr=3e-4, warmup=30, weight_decay=0.01,
             grad_clip=1.0, seed=0, eval_every=0, val=None, log=print):  # fmt: skip
    """Fine-tune `clf` with the one `train.Trainer` (AdamW on the trainable part only). Returns a
    history dict: {"step", "loss"} per step and, with val=(ids, lengths, labels) and
    eval_every > 0, {"val_step", "val_acc"} every eval_every steps (printed with `log`, if given)."""
    from .metrics import accuracy
    from .tasks import ClassificationTask
    from .train import TrainConfig, Trainer

    check_array("labels", labels, shape=(len(ids),))
    idx = np.arange(len(ids))
    task = ClassificationTask(ids, lengths, labels, {"train": idx, "val": idx}, source="sentences")
    config = TrainConfig(batch_size=batch_size, max_steps=steps, lr=lr, warmup=warmup, weight_decay=weight_decay,
                         grad_clip=grad_clip, eval_interval=steps, eval_iters=1, seed=seed)  # fmt: skip
    trainer = Trainer(clf, task, config, progress=False)
    hist = {"step": [], "loss": [], "val_step": [], "val_acc": []}
    every = eval_every if (val is not None and eval_every) else steps
    while trainer.step < steps:
        trainer.fit(log=False, stop_after=every)
        if val is not None and eval_every:
            acc = accuracy(val[2], clf.predict(val[0], val[1]))
            hist["val_step"].append(trainer.step)
            hist["val_acc"].append(acc)
            if log:
                log(f"step {trainer.step}: train loss {trainer.history['loss'][-1]:.4f}, val accuracy {acc:.3f}")
    hist["step"], hist["loss"] = list(trainer.history["step"]), list(trainer.history["loss"])
    return hist


# ----------------------------------------------------------------------------- the baseline

_WORD = re.compile(r"[a-z0-9']+")


def words(sentence):
    """Lower-cased word tokens: runs of letters, digits and apostrophes ("don't" is one word)."""
    return _WORD.findall(sentence.lower())


class BagOfWords:
    """Word-count features. fit(sentences) keeps words seen at least min_count times in the
    training sentences; transform(sentences) -> (N, F) float32 counts (unknown words ignored).
    Word order is thrown away: "not good, bad" and "not bad, good" are the same vector."""

    def __init__(self, min_count=1, binary=True):
        self.min_count, self.binary = min_count, binary
        self.vocab = None

    def fit(self, sentences):
        counts = {}
        for s in sentences:
            for w in words(s):
                counts[w] = counts.get(w, 0) + 1
        kept = sorted(w for w, c in counts.items() if c >= self.min_count)
        self.vocab = {w: i for i, w in enumerate(kept)}
        return self

    def transform(self, sentences):
        if self.vocab is None:
            raise ValueError("BagOfWords: call fit(sentences) before transform")
        X = np.zeros((len(sentences), len(self.vocab)), dtype=np.float32)
        for i, s in enumerate(sentences):
            for w in words(s):
                j = self.vocab.get(w)
                if j is not None:
                    X[i, j] = 1.0 if self.binary else X[i, j] + 1.0
        return X


def logistic_regression_loss(X, y, w, b, l2=1e-3):
    """Binary logistic regression's objective and its gradient. X: (N, F), y: (N,) in {0, 1},
    w: (F,), b: float -> loss, dw: (F,), db

    p = sigmoid(X w + b); loss = mean(-y log p - (1 - y) log(1 - p)) + l2/2 |w|^2
    d loss / d(X w + b) = (p - y) / N  (the same "prediction minus target" as softmax
    cross-entropy), so dw = X^T (p - y) / N + l2 w and db = sum(p - y) / N.
    """
    z = X @ w + b  # (N,)
    # -log sigmoid(z) = log(1 + e^-z) = logaddexp(0, -z): stable for large |z|
    loss = np.mean(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)) + 0.5 * l2 * (w @ w)
    r = (_sigmoid(z) - y) / len(y)
    return float(loss), X.T @ r + l2 * w, float(r.sum())


def logistic_regression_fit(X, y, l2=1e-3, lr=0.1, steps=300):
    """Minimise `logistic_regression_loss` by full-batch Adam from zero. X: (N, F) float,
    y: (N,) in {0, 1} -> w: (F,) float64, b: float"""
    from .optim import Adam

    check_array("X", X, ndim=2, floating=True)
    y = np.asarray(y)
    check_array("y", y, shape=(X.shape[0],))
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y: expected binary labels 0 or 1")
    X, y = X.astype(np.float64), y.astype(np.float64)
    w, b = np.zeros(X.shape[1]), np.zeros(1)
    opt = Adam([w, b], lr=lr)
    for _ in range(steps):
        _, dw, db = logistic_regression_loss(X, y, w, b[0], l2)
        opt.step([dw, np.array([db])])
    return w, float(b[0])


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + e^-z) without overflow


class BowLogisticRegression:
    """The baseline: BagOfWords features + logistic regression.
    fit(sentences, labels) / predict(sentences) -> (N,) int64 / top_words(k) -> the k most
    positive and most negative words by weight."""

    def __init__(self, min_count=1, l2=1e-3, lr=0.1, steps=300):
        self.bow = BagOfWords(min_count)
        self.l2, self.lr, self.steps = l2, lr, steps

    def fit(self, sentences, labels):
        X = self.bow.fit(sentences).transform(sentences)
        self.w, self.b = logistic_regression_fit(X, labels, self.l2, self.lr, self.steps)
        return self

    def predict_proba(self, sentences):
        return _sigmoid(self.bow.transform(sentences).astype(np.float64) @ self.w + self.b)

    def predict(self, sentences):
        return (self.predict_proba(sentences) >= 0.5).astype(np.int64)

    def top_words(self, k=10):
        inv = {i: w for w, i in self.bow.vocab.items()}
        order = np.argsort(self.w)
        return [inv[i] for i in order[::-1][:k]], [inv[i] for i in order[:k]]
