"""Task data for the models beyond plain language modelling: one token vocabulary with the special
tokens, padded batches, BERT's corruption, the number-to-words translation task and the
sentiment sentences. Models never import each other's tasks: they all come from here.

    vocab = char_vocab(text)                                   # [PAD] [BOS] [EOS] [CLS] [MASK] + characters
    x, targets = mask_tokens(ids, rng, vocab_size=len(vocab))  # BERT's 80/10/10 corruption
    pairs, nums = numbers_dataset(1000, seed=0)                # (["4","0","2","1"], ["four","thousand",...])
    src, tgt_in, targets = make_batch(pairs, numbers_vocab())  # teacher-forcing batch, padded
    sentences, labels = load_sentiment("../shared/data/sentiment")   # sentence<TAB>0|1 lines
    ids, lengths = encode_sentences(tokenizer, sentences, block_size=64)

Special tokens: one set, `SPECIALS`, shared by every `Vocab` (so the ids below are the same in
BERT and in the encoder-decoder): [PAD] 0, [BOS] 1, [EOS] 2, [CLS] 3, [MASK] 4.

Dimension legend: B batch, T time (S for a source), N examples.

Does not: tokenise subwords (a `Vocab` is a list of whole tokens: characters or words; the
GPT tokenizers are in `tokenizer.py`), or shuffle (every random choice takes a seed or a
np.random.Generator).
"""
from pathlib import Path

import numpy as np

from .validation import check_array, check_ids, id_list

SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[CLS]", "[MASK]")
PAD_ID, BOS_ID, EOS_ID, CLS_ID, MASK_ID = range(len(SPECIALS))
IGNORE_INDEX = -100  # a target the losses skip (layers.cross_entropy_forward's default)


class Vocab:
    """A list of tokens (strings) with `SPECIALS` first, then `tokens` in order of first appearance.
    `encode` maps a token list to ids, `decode` ids to tokens. Saved in checkpoints as `to_dict()`."""

    def __init__(self, tokens, specials=SPECIALS):
        self.specials = tuple(specials)
        tokens = list(self.specials) + [t for t in dict.fromkeys(tokens) if t not in self.specials]
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    def __len__(self):
        return len(self.itos)

    @property
    def vocab_size(self):
        return len(self.itos)

    # the ids of the special tokens (the same in every Vocab with the default specials)
    pad_id = property(lambda self: self.stoi["[PAD]"])
    bos_id = property(lambda self: self.stoi["[BOS]"])
    eos_id = property(lambda self: self.stoi["[EOS]"])
    cls_id = property(lambda self: self.stoi["[CLS]"])
    mask_id = property(lambda self: self.stoi["[MASK]"])

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.itos == other.itos and self.specials == other.specials

    def encode(self, tokens):
        bad = [t for t in tokens if t not in self.stoi]
        if bad:
            raise ValueError(f"tokens: {bad[0]!r} is not in the vocabulary of {len(self)} tokens")
        return [self.stoi[t] for t in tokens]

    def decode(self, ids):
        ids = id_list("ids", ids)
        bad = next((i for i in ids if not 0 <= i < len(self.itos)), None)
        if bad is not None:  # a negative id would silently index from the end
            raise ValueError(f"ids: expected ids in [0, {len(self.itos)}), got {bad}")
        return [self.itos[i] for i in ids]

    def to_dict(self):
        return {"kind": "vocab", "specials": list(self.specials), "tokens": self.itos[len(self.specials):]}

    @classmethod
    def from_dict(cls, d):
        """The inverse of `to_dict`; ValueError naming the field that is wrong."""
        if not isinstance(d, dict) or d.get("kind") != "vocab":
            raise ValueError(f"vocab: expected a dict with \"kind\": \"vocab\", got {type(d).__name__}")
        for key in ("specials", "tokens"):
            if not isinstance(d.get(key), list) or not all(isinstance(t, str) for t in d[key]):
                raise ValueError(f"vocab: expected {key!r} to be a list of strings")
        return cls(d["tokens"], d["specials"])


def pad_rows(rows, pad, dtype=np.int64):
    """Lists of ids -> (N, longest) array right-padded with `pad`, and the lengths (N,)."""
    if not rows:
        raise ValueError("rows: expected at least one row, got none")
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.full((len(rows), int(lengths.max())), pad, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths


# ----------------------------------------------------------------------------- masked LM (BERT)


def char_vocab(text):
    """A character vocabulary: `SPECIALS`, then the distinct characters of `text` in sorted order.
    Encode a string with `vocab.encode(list(s))`."""
    if not text:
        raise ValueError("text: expected a non-empty text to build the vocabulary from, got ''")
    return Vocab(sorted(set(text)))


def encode_batch(vocab, texts, block_size):
    """texts -> ids: (B, T) int64, each row [CLS] + characters (truncated to block_size - 1),
    right-padded with [PAD]; T is the longest row."""
    if not texts:
        raise ValueError("texts: expected at least one text, got none")
    rows = [[CLS_ID] + vocab.encode(list(t))[: block_size - 1] for t in texts]
    return pad_rows(rows, PAD_ID)[0]


def mask_tokens(ids, rng, mask_id=MASK_ID, vocab_size=None, n_special=len(SPECIALS), mask_prob=0.15,
                p_mask=0.8, p_random=0.1, ignore_index=IGNORE_INDEX):  # fmt: skip
    """BERT's corruption. ids: (B, T) int -> corrupted: (B, T), targets: (B, T)

    Each token with id >= n_special (never a special token) is chosen with probability
    mask_prob; a chosen token becomes mask_id with probability p_mask, a random non-special
    token with probability p_random, and is kept otherwise. targets holds the original id at
    chosen positions and ignore_index everywhere else.
    """
    if vocab_size is None:
        raise ValueError("vocab_size: expected the vocabulary size (random replacements are drawn below it), got None")
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


# ----------------------------------------------------------------------------- number to words


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()  # fmt: skip
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n):
    """0 <= n < 10**9 -> English words, e.g. 4021 -> "four thousand twenty one".
    (No "and", no hyphens: one word per token.)"""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 0 <= n < 10**9:
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


def numbers_vocab():
    """Digits (source side, one token per digit) and the number words (target side)."""
    return Vocab(list("0123456789") + _ONES + _TENS[2:] + ["hundred", "thousand", "million"])


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


def read_pairs_tsv(path):
    """A UTF-8 file of `source<TAB>target` lines -> [(source chars, target chars)] (character
    tokens on both sides; empty lines skipped). A bad line raises ValueError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected a source<TAB>target file, or 'numbers')")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: expected UTF-8 text, got an undecodable byte at offset {e.start}") from None
    pairs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"{path}:{lineno}: expected 'source<TAB>target' (two non-empty fields), got {line[:60]!r}")
        pairs.append((list(parts[0].strip()), list(parts[1].strip())))
    if not pairs:
        raise ValueError(f"{path}: expected at least one source<TAB>target line, found none")
    return pairs


def teacher_forcing(ys, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, ignore_index=IGNORE_INDEX):
    """Target id lists -> the decoder's input and targets, tgt_in (B, T), targets (B, T), int64

    T = longest + 1. tgt_in = [BOS] + y padded with pad_id, targets = y + [EOS] padded with
    ignore_index: position t reads the true previous token (teacher forcing, not the model's own
    guess) and is trained to predict y[t], then EOS.
    """
    tgt_in, _ = pad_rows([[bos_id] + list(y) for y in ys], pad_id)
    targets, _ = pad_rows([list(y) + [eos_id] for y in ys], ignore_index)
    return tgt_in, targets


def make_batch(pairs, vocab, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, ignore_index=IGNORE_INDEX):
    """[(source tokens, target tokens)] -> src (B, S), tgt_in (B, T), targets (B, T), int64

    src is right-padded with pad_id; tgt_in = [BOS] + y padded with pad_id; targets = y + [EOS]
    padded with ignore_index, so padding never contributes to the loss (teacher forcing).
    """
    if not pairs:
        raise ValueError("pairs: expected at least one (source, target) pair, got none")
    tgts = [vocab.encode(t) for _, t in pairs]
    src, _ = pad_rows([vocab.encode(s) for s, _ in pairs], pad_id)
    tgt_in, targets = teacher_forcing(tgts, bos_id, eos_id, pad_id, ignore_index)
    return src, tgt_in, targets


# ----------------------------------------------------------------------------- sentiment


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
    pad_id can be any id: with a causal model a real token never attends to a later (padding)
    position, so padding needs no mask (`finetuning.GPTClassifier`).
    """
    rows = [tokenizer.encode(s)[:block_size] for s in sentences]
    if not rows or min(len(r) for r in rows) == 0:
        raise ValueError("sentences: expected non-empty sentences (each must encode to at least one token)")
    return pad_rows(rows, pad_id)


# ----------------------------------------------------------------------------- batches for the trainer
# Each task draws the batches of one objective: get_batch(split, batch_size, rng) -> the tuple of
# arrays the model's forward takes before its keywords, so the one Trainer runs
# `model.forward(*batch, train=True, rng=rng)` whatever the model is. Every draw comes from
# `rng`, so a run is reproducible and resumes bit for bit.


class LanguageModelTask:
    """GPT: next-token prediction on windows of a `data.TokenData` stream -> (x, y), each (B, T)."""

    perplexity = True  # the loss is a per-token cross-entropy: report exp(loss) too

    def __init__(self, data, block_size):
        data.check_block_size(block_size)
        self.data, self.block_size, self.source = data, block_size, data.source

    def get_batch(self, split, batch_size, rng):
        return self.data.get_batch(split, batch_size, self.block_size, rng)


class MaskedLMTask:
    """BERT: masked-LM batches -> (corrupted ids, targets), each (B, T), rows [CLS] + tokens.

    From a `data.TokenData` stream of `Vocab` ids (windows of block_size - 1 tokens, no padding),
    or from `rows`: (N, T) int, [CLS]-prefixed and padded (the same rows serve both splits).
    Every batch is corrupted afresh (`mask_tokens`), so each epoch masks different positions.
    """

    perplexity = True

    def __init__(self, vocab_size, block_size, data=None, rows=None, mask_prob=0.15, source=None):
        if (data is None) == (rows is None):
            raise ValueError("data, rows: expected exactly one of a TokenData stream or an (N, T) array of rows")
        if data is not None:
            data.check_block_size(block_size - 1)
        else:
            check_array("rows", rows, ndim=2)
        self.vocab_size, self.block_size, self.mask_prob = vocab_size, block_size, mask_prob
        self.data, self.rows = data, rows
        self.source = source or (data.source if data is not None else "rows")

    def get_batch(self, split, batch_size, rng):
        if self.data is not None:
            x, _ = self.data.get_batch(split, batch_size, self.block_size - 1, rng)
            ids = np.concatenate([np.full((batch_size, 1), CLS_ID, dtype=np.int64), x], axis=1)
        else:
            ids = self.rows[rng.integers(0, len(self.rows), size=batch_size)]
        return mask_tokens(ids, rng, MASK_ID, self.vocab_size, mask_prob=self.mask_prob)


class TranslationTask:
    """The encoder-decoder: teacher-forcing batches of (source, target) token pairs ->
    (src (B, S), tgt_in (B, T), targets (B, T)) from `make_batch`. label_smoothing: the training
    loss's (None: the model config's); evaluation always reports the plain cross-entropy."""

    perplexity = True

    def __init__(self, vocab, train_pairs, val_pairs=None, source="pairs", label_smoothing=None):
        if not train_pairs:
            raise ValueError("pairs: expected at least one training pair, got none")
        self.vocab, self.source = vocab, source
        self.train_kwargs = {} if label_smoothing is None else {"label_smoothing": label_smoothing}
        self.pairs = {"train": list(train_pairs), "val": list(val_pairs or train_pairs)}

    def get_batch(self, split, batch_size, rng):
        pairs = self.pairs[split]
        return make_batch([pairs[i] for i in rng.integers(0, len(pairs), size=batch_size)], self.vocab)


class ClassificationTask:
    """The classifier: (ids (B, T), lengths (B,), labels (B,)) from right-padded rows, each batch
    trimmed to its longest row. splits: {"train": indices, "val": indices} into the rows."""

    perplexity = False

    def __init__(self, ids, lengths, labels, splits, source="sentences"):
        check_array("lengths", lengths, shape=(len(ids),))
        check_array("labels", labels, shape=(len(ids),))
        for name, idx in splits.items():
            if len(idx) == 0:
                raise ValueError(f"{source}: the {name} split is empty; expected at least one example")
        self.ids, self.lengths, self.labels, self.splits, self.source = ids, lengths, labels, splits, source

    def get_batch(self, split, batch_size, rng):
        idx = self.splits[split][rng.integers(0, len(self.splits[split]), size=batch_size)]
        ln = self.lengths[idx]
        return self.ids[idx, : ln.max()], ln, self.labels[idx]


class CLSClassificationTask(ClassificationTask):
    """BERT's [CLS] classification: (ids (B, T), labels (B,)) for `BERT.forward_cls` (the padding
    mask replaces the lengths)."""

    method = "forward_cls"

    def get_batch(self, split, batch_size, rng):
        ids, _, labels = super().get_batch(split, batch_size, rng)
        return ids, labels


class SFTTask:
    """Instruction tuning: (x, y), each (B, T), of packed conversations (`chat.sft_pair`), y the
    next id on assistant tokens and IGNORE_INDEX elsewhere.

    pairs: {"train": [(x, y)], "val": [(x, y)]}, 1-D int64 arrays per conversation. Packing: each
    row is filled with whole conversations drawn at random until the next one does not fit; the
    rest of the row is padding (x = pad_id, y = IGNORE_INDEX: the chat commands pad with <|end|>,
    which the loss never sees there), and the batch is cut to its
    longest row. A conversation can attend to the ones before it in its row (no block-diagonal
    mask: the fused attention kernel takes none); each starts with its own <|user|> (or <|system|>), and the
    loss never sees a padding or a user token. Conversations longer than block_size are left
    out (`dropped` counts them per split)."""

    perplexity = False

    def __init__(self, pairs, block_size, pad_id, source="conversations"):
        self.block_size, self.pad_id, self.source = block_size, pad_id, source
        self.pairs, self.dropped = {}, {}
        for split, ps in pairs.items():
            kept = [(x, y) for x, y in ps if len(x) <= block_size]
            self.dropped[split] = len(ps) - len(kept)
            if not kept:
                raise ValueError(f"{source}: no {split} conversation fits in the block size {block_size} "
                                 f"({len(ps)} given); expected a larger --block-size or shorter conversations")
            self.pairs[split] = kept

    def get_batch(self, split, batch_size, rng):
        pairs, T = self.pairs[split], self.block_size
        x = np.full((batch_size, T), self.pad_id, dtype=np.int64)
        y = np.full((batch_size, T), IGNORE_INDEX, dtype=np.int64)
        longest = 1
        for b in range(batch_size):
            fill = 0
            while True:
                px, py = pairs[int(rng.integers(len(pairs)))]
                if fill + len(px) > T:
                    break
                x[b, fill : fill + len(px)], y[b, fill : fill + len(px)] = px, py
                fill += len(px)
            longest = max(longest, fill)
        return x[:, :longest], y[:, :longest]
