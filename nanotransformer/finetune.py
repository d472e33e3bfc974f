"""Fine-tuning a pretrained GPT for classification (sentiment), and the baseline to beat: a
bag-of-words logistic regression.

    sentences, labels = load_sentiment("../shared/data/sentiment")     # sentence<TAB>0|1 lines
    clf = GPTClassifier(gpt, n_classes=2, pool="last", train_blocks=1)  # freeze all but 1 block
    ids, lengths = encode_sentences(tokenizer, sentences, block_size=gpt.config.block_size)
    history = finetune(clf, ids[tr], lengths[tr], labels[tr], steps=300)
    pred = clf.predict(ids[te], lengths[te])

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

Freezing: `train_blocks=k` trains only the last k transformer blocks, the final layer norm and
the head; everything below (embeddings, earlier blocks) is frozen: no gradient is computed for it
(the backward pass stops at the first trainable block) and the optimiser never touches it, so it
stays bit-identical. Because `model.py` lays parameters out in order (wte, wpe, h.0, ..., h.L-1,
ln_f), the trainable part is one contiguous tail of the flat buffer. `train_blocks=None` trains
everything.

Dimension legend: B batch, T time, C channels, K classes, N examples, F bag-of-words features.

Does not: fine-tune with LoRA/adapters, mix the LM loss into fine-tuning (GPT-1's auxiliary
objective), or use a tokenizer other than the pretrained model's own.
"""
import math
import re
from pathlib import Path

import numpy as np

from .layers import cross_entropy_backward, cross_entropy_forward, linear_backward, linear_forward
from .validation import check_array, check_ids

# ----------------------------------------------------------------------------- data


def _read_labelled(path):
    """One `sentence<TAB>label` file -> sentences, labels. Empty lines are skipped; anything else
    that is not a non-empty sentence, one tab and a label 0 or 1 is an error naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: expected UTF-8 text, got an undecodable byte at offset {e.start}") from None
    sentences, labels = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ValueError(f"{path}:{lineno}: expected 'sentence<TAB>label', got no tab in {line[:60]!r}")
        sentence, label = line.rsplit("\t", 1)
        label = label.strip()
        if label not in ("0", "1"):
            raise ValueError(f"{path}:{lineno}: expected label 0 or 1 after the tab, got {label[:20]!r}")
        if not sentence.strip():
            raise ValueError(f"{path}:{lineno}: expected a sentence before the tab, got an empty one")
        sentences.append(sentence.strip())
        labels.append(int(label))
    return sentences, labels


def load_sentiment(path):
    """Labelled sentences -> (sentences: list[str], labels: (N,) int64).

    path: a file of `sentence<TAB>0|1` lines, or a directory whose `*_labelled.txt` files are read
    in name order (the UCI "Sentiment Labelled Sentences" layout: amazon, imdb, yelp, 1000 each).
    Bad lines raise ValueError naming the file and the line number.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*_labelled.txt"))
        if not files:
            raise ValueError(f"{path}: expected *_labelled.txt files in the directory, found none")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"{path}: no such file or directory")
    sentences, labels = [], []
    for f in files:
        s, y = _read_labelled(f)
        sentences += s
        labels += y
    if not sentences:
        raise ValueError(f"{path}: expected at least one labelled sentence, found none")
    return sentences, np.array(labels, dtype=np.int64)


def toy_reviews(n=600, seed=0):
    """A synthetic stand-in for the sentiment data, for when it is not available: n short
    "reviews" built from neutral words plus one or two sentiment words (sometimes negated:
    "not good" is negative) -> (sentences, labels (N,) int64). Not a benchmark: a smoke test."""
    rng = np.random.default_rng(seed)
    neutral = "the food service place phone movie was is and it this really very quite".split()
    pos, neg = "good great excellent loved nice amazing".split(), "bad awful terrible hated poor boring".split()
    sentences, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        negate = rng.random() < 0.2
        word = rng.choice(pos if label != negate else neg)
        ws = list(rng.choice(neutral, size=rng.integers(3, 8)))
        ws.insert(int(rng.integers(0, len(ws) + 1)), ("not " if negate else "") + word)
        sentences.append(" ".join(ws).capitalize() + ".")
        labels.append(label)
    return sentences, np.array(labels, dtype=np.int64)


def split_indices(n, test_frac=0.2, val_frac=0.0, seed=0):
    """A random split of range(n) -> (train, val, test) index arrays (val empty if val_frac=0)."""
    if not (0.0 < test_frac < 1.0 and 0.0 <= val_frac < 1.0 and test_frac + val_frac < 1.0):
        raise ValueError(f"test_frac, val_frac: expected fractions with a sum below 1, got {test_frac}, {val_frac}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_frac)), int(round(n * val_frac))
    return perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]


def encode_sentences(tokenizer, sentences, block_size, pad_id=0):
    """sentences -> ids: (N, T) int64 right-padded with pad_id, lengths: (N,) int64.

    Each sentence is tokenised and cut to its first block_size tokens; T is the longest row.
    pad_id can be any id: see the module docstring for why padding needs no mask.
    """
    rows = [tokenizer.encode(s)[:block_size] for s in sentences]
    if not rows or min(len(r) for r in rows) == 0:
        raise ValueError("sentences: expected non-empty sentences (each must encode to at least one token)")
    ids = np.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, np.array([len(r) for r in rows], dtype=np.int64)


# ----------------------------------------------------------------------------- the classifier

POOLS = ("last", "mean")


class GPTClassifier:
    """A GPT body (a `model.GPT`, used in place) + pooling + a linear head.

    GPTClassifier(gpt, n_classes=2, pool="last", train_blocks=None, seed=0)
    The head's parameters live in their own flat buffer `head` with views `hp["w"]` (C, K) and
    `hp["b"]` (K,); gradients in `head_grads` / `hg`. `trainable()` lists (params, grads,
    weight-decay mask) for the optimiser: the trainable tail of the GPT's buffer, and the head.

    Reads the GPT through `GPT.hidden_forward` / `GPT.hidden_backward` (embeddings, blocks, final
    layer norm), so a change to the GPT is picked up here.
    """

    def __init__(self, gpt, n_classes=2, pool="last", train_blocks=None, seed=0):
        from .model import GPT

        if not isinstance(gpt, GPT):
            raise ValueError(f"gpt: expected a model.GPT, got {type(gpt).__name__}")
        if pool not in POOLS:
            raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
        L = gpt.config.n_layer
        if train_blocks is not None and (not isinstance(train_blocks, (int, np.integer)) or not 0 <= train_blocks <= L):
            raise ValueError(f"train_blocks: expected None (train everything) or an integer in [0, {L}], got {train_blocks!r}")
        if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
            raise ValueError(f"n_classes: expected an integer >= 2, got {n_classes!r}")
        self.gpt, self.pool, self.train_blocks, self.n_classes = gpt, pool, train_blocks, n_classes
        C = gpt.config.d_model
        self.head = np.zeros(C * n_classes + n_classes, dtype=gpt.dtype)
        self.head_grads = np.zeros_like(self.head)
        self.hp = {"w": self.head[: C * n_classes].reshape(C, n_classes), "b": self.head[C * n_classes :]}
        self.hg = {"w": self.head_grads[: C * n_classes].reshape(C, n_classes), "b": self.head_grads[C * n_classes :]}
        self.hp["w"][...] = np.random.default_rng(seed).normal(0.0, 0.02, size=(C, n_classes))
        # first trainable block; the flat buffer from that block's first parameter on is trainable
        self.first_block = 0 if train_blocks is None else L - train_blocks
        first_name = "wte" if train_blocks is None else (f"h.{self.first_block}.ln_1.w" if self.first_block < L else "ln_f.w")
        offset = 0
        for name, shape in gpt.specs:
            if name == first_name:
                break
            offset += math.prod(shape)
        self.offset = offset
        self._cache = None

    def trainable(self):
        """[(params, grads, decay_mask)] of everything fine-tuning updates (views, updated in place)."""
        g, o = self.gpt, self.offset
        head_decay = np.zeros_like(self.head)
        head_decay[: self.hp["w"].size] = 1.0
        return [(g.params[o:], g.grads[o:], g.decay_mask[o:]), (self.head, self.head_grads, head_decay)]

    # ------------------------------------------------------------------------- forward / backward

    def forward(self, ids, lengths, labels=None, *, train=False, rng=None):
        """ids: (B, T) int right-padded, lengths: (B,) real tokens per row, labels: (B,) int or None
        -> logits: (B, K), loss: float or None"""
        gpt = self.gpt
        check_array("ids", ids, ndim=2)  # the ids themselves and T <= block_size: hidden_forward
        B, T = ids.shape
        check_array("lengths", lengths, shape=(B,))
        if lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths: expected values in [1, {T}] (the padded length), got {lengths.min()}..{lengths.max()}")
        h, hidden_c = gpt.hidden_forward(ids, train=train, rng=rng)  # (B, T, C), after ln_f
        # pooling as a (B, T) weight matrix: z[b] = sum_t a[b, t] h[b, t]
        t = np.arange(T)[None, :]
        if self.pool == "last":
            a = (t == (lengths[:, None] - 1)).astype(h.dtype)  # one-hot at the last real token
        else:
            a = (t < lengths[:, None]).astype(h.dtype) / lengths[:, None].astype(h.dtype)
        z = np.einsum("bt,btc->bc", a, h)  # (B, C)
        logits, head_c = linear_forward(z, self.hp["w"], self.hp["b"])  # (B, K)
        loss, self._cache = None, None
        if labels is not None:
            check_array("labels", labels, shape=(B,))
            check_ids("labels", labels, self.n_classes)
            loss_arr, loss_c = cross_entropy_forward(logits, labels)
            loss = float(loss_arr)
            self._cache = (hidden_c, a, head_c, loss_c)
        return logits, loss

    def backward(self):
        """Gradients of the last forward's loss: the head's into `head_grads`, the GPT's trainable
        part into `gpt.grads` (the frozen part is zeroed and never computed)."""
        if self._cache is None:
            raise ValueError("backward: expected a preceding forward(ids, lengths, labels) with labels, got none")
        gpt = self.gpt
        hidden_c, a, head_c, loss_c = self._cache
        self._cache = None
        dlogits = cross_entropy_backward(np.ones((), dtype=gpt.dtype), loss_c)
        dz, dw, db = linear_backward(dlogits, head_c)
        self.hg["w"][...], self.hg["b"][...] = dw, db
        # forward was: z[b] = sum_t a[b, t] h[b, t]  ->  dh[b, t] = a[b, t] dz[b]
        dh = a[:, :, None] * dz[:, None, :]  # (B, T, C)
        gpt.grads[: self.offset] = 0.0  # the frozen part: zero, never computed
        gpt.hidden_backward(dh, hidden_c, first_block=self.first_block, embeddings=self.train_blocks is None)
        return gpt.grads, self.head_grads

    def predict_proba(self, ids, lengths, batch_size=256):
        """Class probabilities (N, K), in batches (each trimmed to its longest row)."""
        out = []
        for i in range(0, len(ids), batch_size):
            ln = lengths[i : i + batch_size]
            logits, _ = self.forward(ids[i : i + batch_size, : ln.max()], ln)
            z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
            out.append(np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True))
        return np.concatenate(out)

    def predict(self, ids, lengths, batch_size=256):
        """Predicted class per row: (N,) int64"""
        return self.predict_proba(ids, lengths, batch_size).argmax(axis=-1)


def finetune(clf, ids, lengths, labels, steps=300, batch_size=32, lr=3e-4, warmup=30, weight_decay=0.01,
             grad_clip=1.0, seed=0, eval_every=0, val=None, log=print):  # fmt: skip
    """Fine-tune `clf` with AdamW on the trainable parameters only. Returns a history dict:
    {"step", "loss"} per step and, with val=(ids, lengths, labels) and eval_every > 0,
    {"val_step", "val_acc"} every eval_every steps (printed with `log`, if given)."""
    from .metrics import accuracy
    from .optim import AdamW, clip_grad_norm, lr_schedule

    check_array("labels", labels, shape=(len(ids),))
    rng = np.random.default_rng(seed)
    params, grads, decay = zip(*clf.trainable())
    opt = AdamW(list(params), lr=lr, weight_decay=[weight_decay * d for d in decay])
    hist = {"step": [], "loss": [], "val_step": [], "val_acc": []}
    for step in range(steps):
        idx = rng.integers(0, len(ids), size=batch_size)
        ln = lengths[idx]
        _, loss = clf.forward(ids[idx, : ln.max()], ln, labels[idx], train=True, rng=rng)
        clf.backward()
        clip_grad_norm(list(grads), grad_clip)
        opt.step(list(grads), lr=lr_schedule(step, lr, warmup, steps, lr / 10))
        hist["step"].append(step + 1)
        hist["loss"].append(loss)
        if val is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            acc = accuracy(val[2], clf.predict(val[0], val[1]))
            hist["val_step"].append(step + 1)
            hist["val_acc"].append(acc)
            if log:
                log(f"step {step + 1}: train loss {loss:.4f}, val accuracy {acc:.3f}")
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
