"""Tokenizers: text <-> lists of integer ids.

Two tokenizers, the two the book needs:
- `CharTokenizer`: one id per distinct character of a training text (char-level nanoGPT style).
- `BPETokenizer`: byte-level byte-pair encoding, GPT-2/GPT-4 style. Either trained here
  (`train`), or loaded from a tiktoken rank file such as `cl100k_base.tiktoken` (`from_tiktoken`),
  in which case `encode` returns exactly tiktoken's ids. (One caveat: the split regex runs on the
  `regex` package's Unicode tables, tiktoken on its Rust regex's. They disagree only on characters
  assigned in recent Unicode versions, where the ids can then differ. A check over every code
  point found no difference wherever `regex` and Python's `unicodedata` agree on the category.)

How `BPETokenizer.encode` turns text into ids:
    text -> split out the allowed special tokens (e.g. "<|endoftext|>"), each becomes one id
         -> Unicode-normalise the rest, if the tokenizer has a normalizer (only "NFC", Qwen2's)
         -> split it with a regex into chunks (words, numbers, punctuation, whitespace runs;
            pretokenize.py: a pattern must cover the text, nothing is ever dropped)
         -> UTF-8 bytes of each chunk -> merge bytes into tokens by rank (bpe.py) -> ids
`decode` maps ids back to bytes, joins them and decodes UTF-8, with U+FFFD for invalid sequences
(a single id can be half of a multi-byte character).

Files (`save`/`load`, and `load_tokenizer` for either kind) are small UTF-8 text, never pickle:
    nanotransformer-tokenizer 1 bpe          <- header: magic, format version, kind
    pattern: "'(?i:[sdmt]|ll|ve|re)|..."     <- "name: <JSON>" lines
    special_tokens: {"<|endoftext|>": 4095}
    normalizer: "NFC"                        <- optional: only written when there is one
    ignore_merges: {"unmerged": [...]}       <- optional too
    ranks: 4095
    IQ== 0                                   <- "<base64 token bytes> <rank>", one per token:
    ...                                         the same lines as a tiktoken rank file
A char file has the fields unk_token and chars (the vocabulary in id order) instead, and
special_tokens (a list, their ids following the characters) when it has any.

Legend: V vocabulary size = largest id + 1, special tokens included.

Does not: normalise Unicode other than NFC (no NFKC, no lower-casing), add BOS/EOS ids on its
own, use GPT-2's byte-to-unicode remapping of the vocabulary (tokens are stored as raw bytes), or
train on more text than fits in memory. The training and merging algorithms themselves live in bpe.py.
"""
from __future__ import annotations

import base64
import gzip
import json
import numbers
import unicodedata
import warnings
from pathlib import Path

import regex

from . import bpe, pretokenize
from .tokenizer_files import Reader, header_line
from .validation import id_list

# GPT-2's split pattern, as published (minbpe uses the same): the contractions 's 't 're 've 'm 'll
# 'd; a letter run, a digit run or a punctuation run, each with at most one leading space; then
# whitespace, where \s+(?!\S) stops one short of a following word so the word keeps its space.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# GPT-4's (tiktoken's cl100k_base, verbatim): contractions in any case; a letter run may take one
# leading non-letter non-digit that is not a newline (" the", "(the", "_the"); digits in groups of
# at most three; punctuation runs swallow the newlines after them; newlines are kept together with
# the whitespace before them. `?+` and `++` are possessive (never backtrack): same matches, faster.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

_NAMED_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}
# Unicode normal forms a BPETokenizer can apply before splitting (Qwen2's tokenizer.json has NFC:
# "e" + U+0301 COMBINING ACUTE becomes the one character "é", so both spellings get the same ids).
NORMALIZERS = ("NFC",)
# Real text repeats its chunks (" the", ",", "\n"), so encode caches chunk -> ids; bounded so that
# an endless stream of distinct chunks cannot grow it forever.
_CACHE_MAX_ENTRIES = 1 << 18


def _as_text(text, name="text"):
    """Accept str, or bytes that must be valid UTF-8. Returns a str that encodes to UTF-8."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}: expected str or UTF-8 bytes, got bytes that are not valid "
                             f"UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected str or UTF-8 bytes, got {type(text).__name__}")
    try:
        text.encode("utf-8")  # a lone surrogate ("\ud800") is a str but has no UTF-8 bytes
    except UnicodeEncodeError as e:
        raise ValueError(f"{name}: expected text that can be encoded as UTF-8, got a str with "
                         f"{text[e.start]!r} (a lone surrogate) at index {e.start}") from None
    return text


def _check_int(value, name, minimum):
    """Raise unless value is an integer >= minimum (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Character-level


class CharTokenizer:
    """One id per distinct character of a text; ids follow sorted character order.

    CharTokenizer(text) or CharTokenizer.from_text(text), e.g. from_text("hello") has
    vocabulary "ehlo" and encode("hell") == [1, 0, 2, 2].
    unk_token: None (default) makes unknown characters a ValueError; a string such as "<unk>"
    instead gets the last id, every unknown character encodes to it, and it decodes to that string
    (so decode(encode(s)) == s then only holds for s within the vocabulary).
    special_tokens: strings such as "<|end|>" that each become one id, after the characters (and
    the unk token), in the order given. As in `BPETokenizer.encode`, a special token's text in
    the input is an error unless `allowed_special` allows it; `encode_ordinary` reads it as
    characters (so text a user typed can never smuggle in a control token).
    """

    def __init__(self, text, unk_token=None, special_tokens=()):
        text = _as_text(text)
        if not text:
            raise ValueError("text: expected a non-empty text to build the character vocabulary "
                             "from, got ''")
        self._build("".join(sorted(set(text))), unk_token, special_tokens)

    @classmethod
    def from_text(cls, text, unk_token=None, special_tokens=()):
        """Same as CharTokenizer(text, unk_token, special_tokens)."""
        return cls(text, unk_token, special_tokens)

    def _build(self, chars, unk_token, special_tokens=()):
        if unk_token is not None and (not isinstance(unk_token, str) or not unk_token
                                      or unk_token in chars):
            raise ValueError(f"unk_token: expected None or a non-empty str that is not a character "
                             f"of the vocabulary, got {unk_token!r}")
        special_tokens = list(special_tokens)
        if (not all(isinstance(t, str) and len(t) > 1 for t in special_tokens)
                or len(set(special_tokens)) != len(special_tokens) or unk_token in special_tokens):
            raise ValueError(f"special_tokens: expected distinct strings of two or more characters "
                             f"(other than the unk token), got {special_tokens!r}")
        self.chars = chars  # str, the vocabulary in id order
        self.unk_token = unk_token
        self.stoi = {c: i for i, c in enumerate(chars)}
        # a dict rather than a list, so that a negative id is an error instead of indexing from the end
        self.itos = dict(enumerate(chars))
        self.unk_id = None
        if unk_token is not None:
            self.unk_id = len(chars)
            self.itos[self.unk_id] = unk_token
        first = len(self.itos)
        self.special_tokens = {t: first + k for k, t in enumerate(special_tokens)}
        self.itos.update({i: t for t, i in self.special_tokens.items()})

    def with_tokens(self, chars="", special_tokens=()):
        """A copy with characters and special tokens added after the existing ids, which keep
        their meaning (so a model trained on this tokenizer only needs new embedding rows).
        Characters already present, and special tokens already registered, are skipped."""
        new = "".join(dict.fromkeys(c for c in _as_text(chars, "chars") if c not in self.stoi))
        if new and (self.unk_id is not None or self.special_tokens):
            raise ValueError(f"chars: cannot add characters {new[:20]!r} to a vocabulary that already has an "
                             f"unk token or special tokens (their ids follow the characters)")
        specials = list(self.special_tokens) + [t for t in special_tokens if t not in self.special_tokens]
        tok = CharTokenizer.__new__(CharTokenizer)
        tok._build(self.chars + new, self.unk_token, specials)
        return tok

    @property
    def vocab_size(self):
        """V: number of ids (characters, plus the unk token and the special tokens)."""
        return len(self.itos)

    def encode(self, text, allowed_special="none_raise"):
        """text: str (or UTF-8 bytes) -> ids: list[int], one per character (and per allowed
        special token). allowed_special: as in `BPETokenizer.encode`."""
        return encode_with_specials(_as_text(text), self.special_tokens, allowed_special, self._encode_ordinary)

    def encode_ordinary(self, text):
        """Encode treating special-token text as plain characters."""
        return self._encode_ordinary(_as_text(text))

    def _encode_ordinary(self, text):
        if self.unk_id is not None:
            get, unk = self.stoi.get, self.unk_id
            return [get(c, unk) for c in text]
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            i = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(f"text: expected only characters of the vocabulary, got {e.args[0]!r} "
                             f"at index {i} (build the vocabulary from a text that contains it, "
                             f"or pass unk_token='<unk>')") from None

    def decode(self, ids):
        """ids: iterable of int in [0, V) -> str."""
        ids = id_list("ids", ids)
        try:
            return "".join([self.itos[i] for i in ids])
        except (KeyError, TypeError):
            pos, bad = next((p, i) for p, i in enumerate(ids) if not _is_key(self.itos, i))
            raise ValueError(f"ids: expected ids in 0..{self.vocab_size - 1}, got {bad!r} "
                             f"at position {pos}") from None

    def save(self, path):
        """Write the vocabulary to a small text file (see the module docstring)."""
        lines = [header_line("char"),
                 "unk_token: " + json.dumps(self.unk_token, ensure_ascii=False),
                 "chars: " + json.dumps(self.chars, ensure_ascii=False)]
        if self.special_tokens:  # optional, so files without special tokens read as before
            lines.append("special_tokens: " + json.dumps(list(self.special_tokens), ensure_ascii=False))
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path):
        """Read a file written by save(). A malformed file raises ValueError naming file and line."""
        r = Reader(path)
        r.header("char")
        unk = r.field("unk_token", lambda v: v is None or isinstance(v, str), "null or a string")
        chars = r.field("chars", lambda v: isinstance(v, str) and v and len(set(v)) == len(v),
                        "a non-empty string of distinct characters")
        specials = []
        if r.more() and r.lines[r.lineno].startswith("special_tokens: "):
            specials = r.field("special_tokens", lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
                               "a list of strings")
        r.end()
        tok = cls.__new__(cls)
        try:
            tok._build(_as_text(chars, "chars"), unk, specials)
        except ValueError as e:
            raise ValueError(f"{r.path}: {e}") from None
        return tok


def allowed_specials(special_tokens, allowed_special):
    """'none_raise' | 'all' | a collection of registered special tokens -> set[str]."""
    if isinstance(allowed_special, str):
        if allowed_special in ("none_raise", "all"):
            return set(special_tokens) if allowed_special == "all" else set()
        raise ValueError("allowed_special: expected 'none_raise', 'all' or a set of special "
                         f"tokens, got {allowed_special!r}")
    try:
        allowed = set(allowed_special)
    except TypeError:
        raise ValueError("allowed_special: expected 'none_raise', 'all' or a set of special "
                         f"tokens, got {allowed_special!r}") from None
    unknown = allowed - special_tokens.keys()
    if unknown:
        raise ValueError(f"allowed_special: expected registered special tokens "
                         f"{sorted(special_tokens)}, got unknown {sorted(unknown, key=str)}")
    return allowed


def encode_with_specials(text, special_tokens, allowed_special, encode_ordinary):
    """Both tokenizers' `encode`: the allowed special tokens of `text` become their ids, the
    pieces between them go through encode_ordinary(str) -> ids; a special token's text that is
    not allowed is a ValueError (tiktoken's policy)."""
    allowed = allowed_specials(special_tokens, allowed_special)
    disallowed = special_tokens.keys() - allowed
    if disallowed:
        found = regex.search(_special_regex(disallowed), text)
        if found:
            tok = found.group()
            raise ValueError(f"text: contains the special token {tok!r} at index "
                             f"{found.start()}, which allowed_special does not allow; expected "
                             f"allowed_special={{{tok!r}}} or 'all' to encode it as a special "
                             f"token, or encode_ordinary() to encode it as plain text")
    if not allowed:
        return encode_ordinary(text)
    ids = []
    # a split on a capturing group keeps the separators: special tokens sit at odd positions
    for k, part in enumerate(regex.split(_special_regex(allowed), text)):
        if k % 2:
            ids.append(special_tokens[part])
        elif part:
            ids.extend(encode_ordinary(part))
    return ids


def _check_dense(what, max_id, n_tokens):
    """Ids must lie near the number of tokens: every id up to the largest is an embedding row of
    a model built on the tokenizer, so a rank of 10^11 would ask for 10^11 rows."""
    limit = 2 * n_tokens + 4096
    if max_id >= limit:
        raise ValueError(f"{what}: expected ids below {limit:,} for {n_tokens:,} tokens, got {max_id:,} (every id up "
                         "to the largest is a row of the model's embedding)")


def _is_key(d, key):
    try:
        return key in d
    except TypeError:  # unhashable, e.g. a list inside the ids
        return False


# ----------------------------------------------------------------------------------------------
# Byte-level BPE


def _resolve_pattern(pattern):
    """'gpt2' | 'gpt4' | None | a regex string -> (regex source or None, compiled or None).
    A regex that leaves some of pretokenize.PROBE uncovered is refused (see pretokenize.py)."""
    if pattern is None:
        return None, None
    source = _NAMED_PATTERNS.get(pattern, pattern) if isinstance(pattern, str) else None
    try:
        compiled = regex.compile(source)
    except (regex.error, TypeError) as e:
        raise ValueError(f"pattern: expected 'gpt2', 'gpt4', None or a valid regex, got "
                         f"{pattern!r} ({e})") from None
    pretokenize.check_pattern(source, compiled)
    return source, compiled


def _special_regex(tokens):
    """Regex source matching any of `tokens`, longest first so that overlapping ones are unambiguous."""
    return "(" + "|".join(regex.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")"


class BPETokenizer:
    """Byte-level BPE over a vocabulary of byte strings with ranks, plus special tokens.

    BPETokenizer(ranks=None, pattern="gpt4", special_tokens=None)
    ranks: dict[bytes, int] mergeable ranks (as in tiktoken); must include all 256 single bytes.
        None gives the untrained tokenizer: 256 single-byte tokens with id = byte value.
    pattern: "gpt4" | "gpt2" | None (no splitting: BPE runs over the whole text) | a regex, which
        must cover every character: one that leaves part of a probe text uncovered is refused, and
        text it still misses when encoding becomes chunks of its own, never dropped (tiktoken
        drops it), so decode(encode(s)) == s always (pretokenize.py).
    special_tokens: dict[str, int], see register_special_tokens.
    normalizer: None (default: the text is used as given) or "NFC": Unicode-normalise the text
        before splitting it (not the special tokens, which are found in the text as given, as in
        Hugging Face `tokenizers`). Decoding does not undo it: decode(encode(s)) is NFC(s).
    ignore_merges: a chunk that is itself a token becomes that one token before any merging
        (Hugging Face's `ignore_merges`, Llama 3's tokenizer.json; tiktoken's rule too).
    unmerged: ids of tokens no merge makes (Llama 3 has a few hundred): only ignore_merges'
        whole-chunk lookup reaches them, so the merging leaves them out.

    Attributes: ranks (dict[bytes, int]), vocab (dict[int, bytes], its inverse), pattern (regex
    source or None), special_tokens (dict[str, int]), normalizer (None or "NFC"), merges (list of
    (a, b, new_id) learned by train(), in order; a record for inspection, empty after load, since
    ranks alone define the tokenizer).
    """

    def __init__(self, ranks=None, pattern="gpt4", special_tokens=None, normalizer=None, ignore_merges=False,
                 unmerged=()):  # fmt: skip
        if ranks is None:
            ranks = {bytes([i]): i for i in range(256)}
        self._setup(ranks, pattern, special_tokens or {}, normalizer, ignore_merges, unmerged)

    def _setup(self, ranks, pattern, special_tokens, normalizer=None, ignore_merges=False, unmerged=()):
        """(Re)build all state from ranks: dict[bytes, int], pattern, special_tokens: dict[str, int],
        normalizer: None or "NFC", ignore_merges and unmerged (see the class docstring)."""
        if normalizer is not None and normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer: expected None or one of {NORMALIZERS}, got {normalizer!r}")
        if not isinstance(ranks, dict):
            raise ValueError(f"ranks: expected a dict of bytes -> int, got {type(ranks).__name__}")
        for t, r in ranks.items():
            if not (isinstance(t, bytes) and t and isinstance(r, numbers.Integral)
                    and not isinstance(r, bool) and r >= 0):
                raise ValueError("ranks: expected non-empty bytes -> non-negative int, got the item "
                                 f"{t!r}: {r!r}")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError("ranks: expected all 256 single-byte tokens (byte-level BPE must be "
                             f"able to encode any byte), got none for bytes {missing[:8]}")
        self.vocab = {int(r): t for t, r in ranks.items()}
        if len(self.vocab) != len(ranks):
            raise ValueError("ranks: expected distinct ranks, got a rank shared by two tokens")
        self.ranks = {t: int(r) for t, r in ranks.items()}
        if not isinstance(ignore_merges, bool):
            raise ValueError(f"ignore_merges: expected True or False, got {ignore_merges!r}")
        self.ignore_merges, self.unmerged = ignore_merges, frozenset(int(i) for i in unmerged)
        if self.unmerged and not ignore_merges:
            raise ValueError("unmerged: tokens no merge makes are reachable only with ignore_merges=True")
        bad = sorted(i for i in self.unmerged if i not in self.vocab or len(self.vocab[i]) == 1)
        if bad:
            raise ValueError(f"unmerged: expected ids of multi-byte tokens of ranks, got {bad[0]}")
        self._max_rank = max(self.vocab)
        _check_dense("ranks", self._max_rank, len(self.vocab))
        self._decoder = dict(self.vocab)  # id -> bytes, special tokens included
        self._table = None  # bpe.PairTable, built on the first encode
        self._cache = {}
        self.pattern, self._split_re = _resolve_pattern(pattern)
        self.normalizer = normalizer
        self.special_tokens = {}
        self.register_special_tokens(special_tokens)
        self.merges = []

    @classmethod
    def from_tiktoken(cls, path, pattern="gpt4", special_tokens=None):
        """Load a tiktoken rank file ('<base64 token> <rank>' per line, optionally gzipped).

        pattern must be the split pattern the file was made with: "gpt4" for cl100k_base.
        special_tokens: dict[str, int], e.g. {"<|endoftext|>": 100257} for cl100k_base.
        """
        path = Path(path)
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzip magic number
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as e:
                raise ValueError(f"{path}: expected a gzip-compressed rank file, got a corrupted "
                                 f"one ({e})") from None
        r = Reader(path, data)
        ranks = r.ranks()
        try:
            return cls(ranks, pattern, special_tokens)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    # -- training ---------------------------------------------------------------------------

    def train(self, text, vocab_size, pattern="gpt4", special_tokens=None, verbose=False):
        """Learn a vocabulary from text; replaces this tokenizer's ranks, pattern and specials.

        text: str or UTF-8 bytes, non-empty. Special tokens occurring in it are cut out first, so
            no merge is learned from, say, "<|endoftext|>".
        vocab_size: int, the final V: 256 byte tokens + learned tokens + special tokens.
        pattern: as in the constructor. special_tokens: list[str], given the last ids in order.
        verbose: print every merge.
        Returns self. Uses the Numba trainer (bpe.train_fast), whose merges are identical to the
        readable reference bpe.train_reference (tested). Warns, and ends with a smaller V, if the
        text runs out of pairs to merge. The trained tokenizer has no normalizer.
        """
        text = _as_text(text)
        if not text:
            raise ValueError("text: expected a non-empty training text, got ''")
        special = list(special_tokens or [])
        if not all(isinstance(t, str) and t for t in special) or len(set(special)) != len(special):
            raise ValueError(f"special_tokens: expected distinct non-empty strings, got {special!r}")
        n_special = len(special)
        if (isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral)
                or vocab_size <= 256 + n_special):
            extra = f" + {n_special} special tokens" if n_special else ""
            raise ValueError(f"vocab_size: expected an integer > {256 + n_special} for byte-level "
                             f"BPE (256 byte tokens{extra} + at least one merge), got {vocab_size!r}")
        source, split_re = _resolve_pattern(pattern)
        segments = regex.split(_special_regex(special), text)[::2] if special else [text]
        # strict: refuse to learn from a split that leaves some of the text uncovered
        chunks = [c.encode("utf-8") for seg in segments for c in pretokenize.split(split_re, seg, strict=source)]
        merges, vocab = bpe.train_fast(chunks, int(vocab_size) - n_special, verbose=verbose)
        if len(vocab) + n_special < vocab_size:
            warnings.warn(f"training text ran out of pairs to merge: vocab_size is "
                          f"{len(vocab) + n_special}, not the requested {vocab_size}", stacklevel=2)
        self._setup({t: i for i, t in vocab.items()}, source,
                    {t: len(vocab) + k for k, t in enumerate(special)})
        self.merges = merges
        return self

    # -- special tokens ---------------------------------------------------------------------

    def register_special_tokens(self, special_tokens):
        """Add special tokens. special_tokens: dict[str, int] mapping each token's text to its id,
        which must not be an ordinary token's id. encode() only produces them when allowed to."""
        if not isinstance(special_tokens, dict):
            raise ValueError(f"special_tokens: expected a dict of str -> int, got "
                             f"{type(special_tokens).__name__}")
        for tok, idx in special_tokens.items():
            if not isinstance(tok, str) or not tok:
                raise ValueError(f"special_tokens: expected non-empty string keys, got {tok!r}")
            _as_text(tok, f"special_tokens[{tok!r}]")
            _check_int(idx, f"special_tokens[{tok!r}]", 0)
            if idx in self.vocab:
                raise ValueError(f"special_tokens[{tok!r}]: expected an id not used by an ordinary "
                                 f"token, got {idx}, which is {self.vocab[idx]!r}")
        merged = {**self.special_tokens, **{t: int(i) for t, i in special_tokens.items()}}
        for tok, idx in special_tokens.items():
            _check_dense(f"special_tokens[{tok!r}]", int(idx), len(self.vocab) + len(merged))
        if len(set(merged.values())) != len(merged):
            raise ValueError(f"special_tokens: expected distinct ids, got {merged}")
        for tok in self.special_tokens:
            del self._decoder[self.special_tokens[tok]]
        self.special_tokens = merged
        self._decoder.update({i: t.encode("utf-8") for t, i in merged.items()})

    # -- encoding and decoding --------------------------------------------------------------

    @property
    def vocab_size(self):
        """V = largest id + 1 (a tiktoken file can have unused ids, e.g. cl100k_base's V is 100277)."""
        return max(self._max_rank, max(self.special_tokens.values(), default=-1)) + 1

    def encode(self, text, allowed_special="none_raise"):
        """text: str or UTF-8 bytes -> ids: list[int].

        allowed_special: "none_raise" (default: any special token in the text is a ValueError,
        tiktoken's policy, so user text can never smuggle one in), "all", or a set of the special
        tokens that may appear (others still raise). Use encode_ordinary to encode special-token
        text as plain text instead.
        """
        return encode_with_specials(_as_text(text), self.special_tokens, allowed_special, self._encode_ordinary)

    def encode_ordinary(self, text):
        """Encode treating special-token text as plain text. text: str or UTF-8 bytes -> list[int]."""
        return self._encode_ordinary(_as_text(text))

    def _encode_ordinary(self, text):
        if self.normalizer is not None:
            text = unicodedata.normalize(self.normalizer, text)
        chunks = pretokenize.split(self._split_re, text)
        cache = self._cache
        missing = {c for c in chunks if c not in cache}
        if missing:
            if self._table is None:  # tokens only ever taken whole are no merge's result
                self._table = bpe.PairTable({t: r for t, r in self.ranks.items() if r not in self.unmerged})
            if len(cache) + len(missing) > _CACHE_MAX_ENTRIES:
                cache.clear()
                missing = set(chunks)
            if self.ignore_merges:  # a chunk that is itself a token is taken whole
                whole = {c: self.ranks.get(c.encode("utf-8")) for c in missing}
                cache.update((c, [r]) for c, r in whole.items() if r is not None)
                missing = {c for c, r in whole.items() if r is None}
            missing = list(missing)
            encoded = bpe.encode_chunks([c.encode("utf-8") for c in missing], self._table) if missing else []
            cache.update(zip(missing, encoded))
        ids = []
        extend = ids.extend
        for c in chunks:
            extend(cache[c])
        return ids

    def decode_bytes(self, ids):
        """ids: iterable of int -> the raw bytes they stand for."""
        ids = id_list("ids", ids)
        try:
            return b"".join([self._decoder[i] for i in ids])
        except (KeyError, TypeError):
            pos, bad = next((p, i) for p, i in enumerate(ids) if not _is_key(self._decoder, i))
            raise ValueError(f"ids: expected ids of this vocabulary (0..{self.vocab_size - 1}, "
                             f"see .vocab), got {bad!r} at position {pos}") from None

    def decode(self, ids):
        """ids: iterable of int -> str. Bytes that are not valid UTF-8 become U+FFFD, never an error."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- files ------------------------------------------------------------------------------

    def save(self, path):
        """Write to a small text file (see the module docstring); its rank lines are tiktoken's."""
        lines = [header_line("bpe"),
                 "pattern: " + json.dumps(self.pattern, ensure_ascii=False),
                 "special_tokens: " + json.dumps(self.special_tokens, ensure_ascii=False)]
        if self.normalizer is not None:  # optional, so files without one read as before
            lines.append("normalizer: " + json.dumps(self.normalizer))
        if self.ignore_merges:  # optional too
            lines.append("ignore_merges: " + json.dumps({"unmerged": sorted(self.unmerged)}))
        lines.append(f"ranks: {len(self.ranks)}")
        lines += [f"{base64.b64encode(t).decode('ascii')} {r}" for r, t in sorted(self.vocab.items())]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path):
        """Read a file written by save(). A malformed file raises ValueError naming file and line."""
        r = Reader(path)
        r.header("bpe")
        pattern = r.field("pattern", lambda v: v is None or isinstance(v, str), "null or a string")
        special = r.field("special_tokens", lambda v: isinstance(v, dict) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in v.values()),
            "an object of token -> integer id")
        normalizer = None
        if r.more() and r.lines[r.lineno].startswith("normalizer: "):
            normalizer = r.field("normalizer", lambda v: v in NORMALIZERS, f"one of {list(NORMALIZERS)}")
        ignore_merges, unmerged = False, ()
        if r.more() and r.lines[r.lineno].startswith("ignore_merges: "):
            unmerged = r.field("ignore_merges", lambda v: isinstance(v, dict) and set(v) == {"unmerged"} and all(
                isinstance(i, int) and not isinstance(i, bool) for i in v["unmerged"]),
                'an object {"unmerged": [ids]}')["unmerged"]
            ignore_merges = True
        count = r.field("ranks", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 256,
                        "the number of rank lines that follow (>= 256)")
        ranks = r.ranks(count)
        r.end()
        try:
            return cls(ranks, pattern, special, normalizer, ignore_merges, unmerged)
        except ValueError as e:
            raise ValueError(f"{r.path}: {e}") from None


def load_tokenizer(path):
    """Load a CharTokenizer or BPETokenizer file, whichever kind its header line names."""
    kind = Reader(path).header()
    return CharTokenizer.load(path) if kind == "char" else BPETokenizer.load(path)
