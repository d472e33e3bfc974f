"""Training data: text in, batches of token ids out.

    text, name = load_text("tinyshakespeare")        # or a file, a directory, None (the built-in corpus)
    tok = build_tokenizer(text, "char")             # or "bpe" (+ vocab_size), or a saved tokenizer's path
    data = TokenData(tok.encode(text), val_fraction=0.1, source=name)
    x, y = data.get_batch("train", batch_size=16, block_size=64, rng=rng)   # (B, T) each
    P = bigram_probs(ids, V)                         # chapter 00's counting model: P[a, b] = P(b | a)

A batch is B random contiguous windows of T + 1 tokens: x is the first T, y the last T (the
next token at every position), so one window gives T training examples at once. Windows are
drawn from a seeded np.random.Generator, so a run is reproducible and resumable.

Sources of text:
- None or "alice": the corpus shipped in `nanotransformer/data/` (Alice's Adventures in
  Wonderland, public domain), so training works offline on a fresh install.
- "tinyshakespeare": Karpathy's 1 MB Shakespeare, found locally ($NANOTRANSFORMER_TINYSHAKESPEARE,
  ../shared/data/tinyshakespeare.txt, the cache ~/.cache/nanotransformer/) or downloaded once
  into the cache; always checked against its sha256.
- a path: a UTF-8 text file, or a directory whose text files (.txt .md .rst .text) are joined in
  sorted order.

Dimension legend: B batch, T time (block size), N tokens in a split.

Does not: stream corpora larger than memory, shuffle documents, or pad: every window is a
full T + 1 tokens of one concatenated token stream.
"""
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .validation import check_ids

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_CORPUS = "alice"
BUILTIN = {"alice": DATA_DIR / "alice.txt"}
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_ENV = "NANOTRANSFORMER_TINYSHAKESPEARE"
CACHE_ENV = "NANOTRANSFORMER_CACHE"


# ----------------------------------------------------------------------------- reading text


def read_text_file(path):
    """The contents of one UTF-8 text file; ValueError naming the file if missing, unreadable,
    not UTF-8 or empty."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if not path.is_file():
        raise ValueError(f"{path}: expected a text file, got a {'directory' if path.is_dir() else 'special file'}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "convert it to UTF-8 first"
        ) from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty" if not text else f"{path}: the file holds only whitespace")
    return text


def text_files(path):
    """The text files under directory `path` that a run reads: recursively, sorted by path, not
    hidden, with a suffix of TEXT_SUFFIXES."""
    path = Path(path)
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def read_text_dir(path):
    """The text files under directory `path` (`text_files`), joined by a blank line."""
    path = Path(path)
    files = text_files(path)
    if not files:
        raise ValueError(f"{path}: no text files ({' '.join(TEXT_SUFFIXES)}) in this directory")
    return "\n\n".join(read_text_file(f) for f in files)


def load_text(source=None):
    """source: None / "alice" (built-in), "tinyshakespeare", a file or a directory -> (text, name)."""
    if source is None:
        source = DEFAULT_CORPUS
    source = str(source)
    if source in BUILTIN and not Path(source).exists():
        return read_text_file(BUILTIN[source]), source
    if source == "tinyshakespeare" and not Path(source).exists():
        return read_text_file(tinyshakespeare_path()), source
    path = Path(source).expanduser()
    if path.is_dir():
        return read_text_dir(path), str(path)
    if not path.exists():
        names = ", ".join(sorted(BUILTIN) + ["tinyshakespeare"])
        raise ValueError(f"{path}: no such file or directory (built-in corpus names: {names})")
    return read_text_file(path), str(path)


# ----------------------------------------------------------------------------- tinyshakespeare


def cache_dir():
    """$NANOTRANSFORMER_CACHE, else $XDG_CACHE_HOME/nanotransformer, else ~/.cache/nanotransformer."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nanotransformer"


def _local_candidates():
    """Places a copy of tinyshakespeare may already be, in order of preference."""
    out = []
    if os.environ.get(TINYSHAKESPEARE_ENV):
        out.append(Path(os.environ[TINYSHAKESPEARE_ENV]).expanduser())
    repo_parent = Path(__file__).resolve().parents[2]  # the checkout's parent (holds shared/ in this project)
    out += [Path.cwd().parent / "shared" / "data" / "tinyshakespeare.txt",
            repo_parent / "shared" / "data" / "tinyshakespeare.txt"]
    return out


def file_sha256(path):
    """The sha256 hex digest of the file at `path` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_sha256(source):
    """A content hash of the data at `source`, so a resumed run can tell that its file changed:
    a file's sha256; for a directory, the sha256 of the text files a run reads from it
    (`text_files`: sorted relative paths and contents), so a checkpoint or any other file beside
    them changes nothing. None for a name that is not a path (built-in data, which the package
    generates or checks itself)."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for p in text_files(path):
        h.update(str(p.relative_to(path)).encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def data_hashed(meta):
    """A fresh run's data meta (a dict naming its "source") with the content hash of that source."""
    digest = data_sha256(meta["source"])
    return meta if digest is None else {**meta, "data_sha256": digest}


def check_data_unchanged(meta, out_dir):
    """--resume: the data at meta["source"] must hash to what the run recorded (a run continued
    on a changed file would silently train on other data and other splits)."""
    recorded = meta.get("data_sha256")
    if recorded is None:
        return  # built-in data, or a checkpoint from before the hash was recorded
    now = data_sha256(meta["source"])
    if now is None:
        raise ValueError(f"DATA: {meta['source']} (the data of the run in {out_dir}) no longer exists; give DATA "
                         "to resume on a copy of it")
    if now != recorded:
        raise ValueError(f"DATA: {meta['source']} has changed since the run in {out_dir} started (sha256 {now[:12]}..., "
                         f"recorded {recorded[:12]}...); resuming would train on other data and other splits. "
                         "Restore the file, or start a new run with another --out")


def _verified(path):
    digest = file_sha256(path)
    if digest != TINYSHAKESPEARE_SHA256:
        raise ValueError(
            f"{path}: sha256 is {digest}, expected {TINYSHAKESPEARE_SHA256} (not the tinyshakespeare "
            f"file from {TINYSHAKESPEARE_URL}); delete or replace it"
        )
    return path


def tinyshakespeare_path(download=True, timeout=30):
    """Path to a verified local copy of tinyshakespeare, downloading it into the cache if needed.

    Looks at $NANOTRANSFORMER_TINYSHAKESPEARE, ../shared/data/tinyshakespeare.txt, then the cache;
    downloads (sha256-checked, written atomically) only when none exists. Offline, the error
    says what to download and where to put it.
    """
    env_path = os.environ.get(TINYSHAKESPEARE_ENV)
    if env_path and not Path(env_path).expanduser().is_file():
        raise ValueError(f"{env_path}: ${TINYSHAKESPEARE_ENV} points to no such file")
    for p in _local_candidates():
        if p.is_file():
            return _verified(p)
    target = cache_dir() / "tinyshakespeare.txt"
    if target.is_file():
        return _verified(target)
    how = (
        f"download {TINYSHAKESPEARE_URL} and save it as {target} "
        f"(or set ${TINYSHAKESPEARE_ENV} to its path)"
    )
    if not download:
        raise ValueError(f"tinyshakespeare: not found locally; {how}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=timeout) as r:
            payload = r.read()
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise ValueError(f"tinyshakespeare: download failed ({reason}); {how}") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise ValueError(
            f"tinyshakespeare: downloaded file has sha256 {digest}, expected {TINYSHAKESPEARE_SHA256}; {how}"
        )
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tinyshakespeare-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# ----------------------------------------------------------------------------- tokenizers


DEFAULT_BPE_VOCAB = 512  # build_tokenizer(text, "bpe") without a vocab_size


def build_tokenizer(text, kind="char", vocab_size=None):
    """kind: "char" (one id per distinct character), "bpe" (trained to `vocab_size` ids, default
    512), or the path of a saved tokenizer (loaded as is)."""
    from . import tokenizer as tk

    if kind == "char":
        return tk.CharTokenizer.from_text(text)
    if kind == "bpe":
        # BPETokenizer.train validates vocab_size (> 256) with its own clear error
        return tk.BPETokenizer().train(text, DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size)
    path = Path(kind)
    if not path.is_file():
        raise ValueError(f"tokenizer: expected 'char', 'bpe' or a saved tokenizer file, got {kind!r} (no such file)")
    return tk.load_tokenizer(path)


# ----------------------------------------------------------------------------- batches


class TokenData:
    """A token stream split into train (first 1 - val_fraction) and val (the rest).

    The split is by position, not at random, so no val window overlaps a train window.
    """

    def __init__(self, ids, val_fraction=0.1, source="data"):
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids: expected a 1-D integer array, got shape {ids.shape}, dtype {ids.dtype}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {val_fraction}")
        self.source = source
        self.ids = ids.astype(np.int64)
        n_val = int(round(len(ids) * val_fraction))
        self.split = {"train": self.ids[: len(ids) - n_val], "val": self.ids[len(ids) - n_val :]}

    def __len__(self):
        return len(self.ids)

    def check_block_size(self, block_size):
        """Both splits must hold at least one window of block_size + 1 tokens."""
        for name, arr in self.split.items():
            if len(arr) < block_size + 1:
                raise ValueError(
                    f"{self.source}: block_size {block_size} needs at least {block_size + 1} tokens in "
                    f"the {name} split, got {len(arr)} (the corpus has {len(self.ids)} tokens); "
                    "use a smaller --block-size or more text"
                )

    def get_batch(self, split, batch_size, block_size, rng):
        """x, y: (B, T) int64, y[b, t] = the token after x[b, t]; window starts drawn from rng."""
        if split not in self.split:
            raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
        self.check_block_size(block_size)
        data = self.split[split]
        starts = rng.integers(0, len(data) - block_size, size=batch_size)  # (B,)
        idx = starts[:, None] + np.arange(block_size + 1)[None, :]  # (B, T + 1)
        win = data[idx]
        return win[:, :-1], win[:, 1:]


# ----------------------------------------------------------------------------- the bigram model


def bigram_probs(ids, V, alpha=1.0):
    """The simplest language model, by counting. ids: N ints in [0, V) -> P: (V, V) float64

    P[a, b] = (count(a followed by b) + alpha) / (count(a followed by anything) + alpha * V), the
    probability that b comes next after a. Add-alpha smoothing (alpha = 1: Laplace's add-one) gives
    a pair never seen in `ids` a little probability instead of 0, so no text has infinite loss.
    """
    ids = np.asarray(ids)
    check_ids("ids", ids, V)
    counts = np.full((V, V), float(alpha))
    np.add.at(counts, (ids[:-1], ids[1:]), 1.0)  # np.add.at: a repeated pair adds up
    return counts / counts.sum(axis=1, keepdims=True)
