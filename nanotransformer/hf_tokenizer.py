"""Hugging Face tokenizer files -> our `BPETokenizer`, with the same ids as `tokenizers`.

Two kinds of file, both byte-level BPE (the kind GPT-2, Llama 3 and Qwen2 use):
    vocab.json + merges.txt  GPT-2's own files                                  `load_gpt2_tokenizer`
    tokenizer.json           `tokenizers`' one-file format, all the fast        `load_tokenizer_json`
                             tokenizers of transformers (GPT-2, Llama 3, Qwen2)
A directory with tokenizer.json is read from it, even when vocab.json + merges.txt are there too
(`load_tokenizer_dir`): it is the file transformers reads, and it alone lists the special tokens
and the split regex. An unsupported tokenizer.json is an error, never a silent fall back.

Byte-level BPE works on bytes, but the files must be text, so every byte is shown as a printable
Unicode character (`bytes_to_unicode`: printable bytes stand for themselves, the other 68, such
as space and newline, are shifted to U+0100 and up: space is "Ġ", newline "Ċ"). We undo that
mapping to get each token's bytes, and give each token its vocabulary id as its rank. Our encoder
(tiktoken's rule, see bpe.py) merges the pair whose result has the lowest rank; `tokenizers`
merges the pair that comes first in the merge list. The two agree when the i-th merge makes a
token whose id grows with i, which `ranks_from_vocab` checks (GPT-2's, Llama 3's and Qwen2's
files, and every file trained by `tokenizers`, are laid out so; tiktoken relies on the same fact).

What a tokenizer.json may hold (anything else is a ValueError naming the file and the field):
    model            {"type": "BPE"} with vocab, merges ("a b" strings or [a, b] pairs), no
                     byte_fallback, no dropout, no subword prefix/suffix. ignore_merges (Llama 3:
                     a chunk that is itself a token is taken whole, before any merging; tokens
                     no merge makes are then allowed, reached only whole: `BPETokenizer(...,
                     ignore_merges=True, unmerged=ids)`; tests compare live against `tokenizers`).
    normalizer       null, or NFC (Qwen2): `BPETokenizer(normalizer="NFC")`
    pre_tokenizer    ByteLevel (add_prefix_space false; use_regex true is GPT-2's split pattern),
                     or Sequence[Split(Regex, behavior Isolated, invert false), ByteLevel(use_regex
                     false)] (Llama 3, Qwen2): the Split's regex becomes our split pattern
    decoder          ByteLevel
    post_processor   null, ByteLevel (it only trims offsets), TemplateProcessing whose template for
                     one text is special tokens then the text (Llama 3's BOS), or a Sequence of those
    added_tokens     special: true ones become our special tokens (encoded only when allowed)
    truncation, padding   ignored, as transformers ignores them unless a call asks for them

The post-processor's tokens (Llama 3's <|begin_of_text|>) are not added by `encode`, which returns
the BPE ids of the text alone (as `tokenizers` does with add_special_tokens=False): `prefix_ids`
reads them, and `pipeline("text-generation")` puts them before the prompt, as transformers does.

Does not: read SentencePiece or WordPiece models (Llama 1/2, Mistral's, BERT's: tokenizer.model,
Unigram, WordPiece), byte fallback, normalizers other than NFC, added tokens that are not special
(Qwen2.5's <tool_call>: matched in any text, which our tokenizer has no notion of), or write files.
"""
import json
from pathlib import Path

import regex

from .tokenizer import BPETokenizer

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_FILE = "tokenizer.json"
EOT = "<|endoftext|>"


def read_json(path):
    """A JSON object from `path`, or a ValueError naming the file (also used by hf.py for config.json)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def bytes_to_unicode():
    """GPT-2's map {byte: printable character} used to write byte tokens as text in vocab.json.

    The 188 bytes that are printable and not whitespace ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
    themselves; the other 68 (control characters, space, DEL, NBSP, soft hyphen, ...) are given
    the characters U+0100, U+0101, ... in byte order, so space (32) becomes 'Ġ' (U+0120) and
    newline (10) becomes 'Ċ' (U+010A). A bijection: every token is a distinct printable string.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return dict(sorted(out.items()))


def _is_id(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def ranks_from_vocab(vocab, merges, special, *, vocab_where, vocab_name, merges_name, special_hint,
                     ignore_merges=False):  # fmt: skip
    """A byte-level vocabulary and its merges -> our ranks {token bytes: id}.

    vocab: {token in bytes_to_unicode characters: id}; merges: [(where, left, right)] in the order
    learned, `where` naming the line or index for errors; special: {token: id}, left out of the
    ranks. Checks that every merge makes a token whose id is larger than the previous merge's
    (see the module docstring) and that every other token is one byte or made by a merge — unless
    ignore_merges (a chunk that is a token is taken whole), when such tokens are allowed.
    Returns (ranks, unmerged: the ids of the tokens no merge makes).
    vocab_where ("vocab.json"'s path), vocab_name, merges_name and special_hint word the errors.
    """
    byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(token):
        try:
            return bytes(byte_of[c] for c in token)
        except KeyError as e:
            raise ValueError(f"{vocab_where}: token {token!r} has the character {e.args[0]!r}, which is not "
                             f"in GPT-2's byte-to-unicode alphabet") from None

    ranks = {to_bytes(token): idx for token, idx in vocab.items() if token not in special}
    last, made = -1, set()
    for where, left, right in merges:
        shown = f"{left} {right}"
        merged = left + right
        if merged not in vocab or left not in vocab or right not in vocab:
            raise ValueError(f"{where}: merge {shown!r} uses or makes a token that is not in {vocab_name}")
        idx = vocab[merged]
        if idx in made:
            continue  # the same token made by a second pair: it keeps its first (lower) rank
        if idx <= last:
            raise ValueError(f"{where}: merge {shown!r} makes id {idx}, lower than the previous merge's {last}; "
                             f"our tokenizer applies merges in id order, so it needs ids that grow with the "
                             f"merge order (as GPT-2's do)")
        last = idx
        made.add(idx)
    singles = {i for t, i in ranks.items() if len(t) == 1}
    unreachable = sorted(set(ranks.values()) - singles - made)
    if unreachable and not ignore_merges:
        inv = {i: t for t, i in vocab.items()}
        raise ValueError(f"{vocab_where}: token {inv[unreachable[0]]!r} (id {unreachable[0]}) is neither a "
                         f"single byte nor made by a merge in {merges_name}; {special_hint}")
    return ranks, unreachable


# ----------------------------------------------------------------------------- vocab.json + merges.txt


def load_gpt2_tokenizer(vocab_path, merges_path, special_tokens=(EOT,)):
    """vocab.json + merges.txt (GPT-2 format) -> a BPETokenizer with GPT-2's ids and split pattern.

    special_tokens: vocab entries that are special (encoded only when allowed, never by BPE);
    those not in vocab.json are ignored. Every other vocab entry must be one byte or made by a
    merge, and merge i must make a token whose id is larger than merge i-1's (see module
    docstring): otherwise a ValueError says which line breaks it.
    """
    vocab_path, merges_path = Path(vocab_path), Path(merges_path)
    vocab = read_json(vocab_path)
    if not all(_is_id(v) for v in vocab.values()):
        raise ValueError(f"{vocab_path}: expected an object of token -> non-negative integer id")
    if not merges_path.is_file():
        raise ValueError(f"{merges_path}: missing")
    try:
        lines = merges_path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{merges_path}: not UTF-8 text ({e})") from None
    # merges.txt: an optional "#version" line, then "left right" per line, in the order learned
    merges = []
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{merges_path}: line {lineno}: expected 'left right', got {line[:80]!r}")
        merges.append((f"{merges_path}: line {lineno}", parts[0], parts[1]))
    special = {t: vocab[t] for t in special_tokens if t in vocab}
    ranks, _ = ranks_from_vocab(vocab, merges, special, vocab_where=vocab_path, vocab_name=vocab_path.name,
                             merges_name=merges_path.name,
                             special_hint="if it is a special token, pass it in special_tokens")
    try:
        return BPETokenizer(ranks, pattern="gpt2", special_tokens=special)
    except ValueError as e:
        raise ValueError(f"{vocab_path}: {e}") from None


# ----------------------------------------------------------------------------- tokenizer.json


def _kind(obj):
    return obj.get("type") if isinstance(obj, dict) else obj


def _unsupported(path, field, got, expected):
    return ValueError(f"{path}: {field}: {got} is not supported (expected {expected})")


def _check_model(m, path):
    """tokenizer.json's "model" -> (vocab {token: id}, merges [(where, left, right)], ignore_merges)."""
    if not isinstance(m, dict):
        raise ValueError(f"{path}: model: expected an object, got {type(m).__name__}")
    if m.get("type") != "BPE":
        raise _unsupported(path, "model.type", repr(m.get("type")), "'BPE', a byte-level BPE as GPT-2, Llama 3 and "
                           "Qwen2 have; Unigram (SentencePiece), WordPiece and WordLevel models are other algorithms")
    if m.get("byte_fallback"):
        raise _unsupported(path, "model.byte_fallback", "true (SentencePiece-style BPE, as Llama 1/2 and Mistral's)",
                           "false: a byte-level BPE, whose 256 byte tokens make fallback unneeded")
    if m.get("dropout") not in (None, 0, 0.0):
        raise _unsupported(path, "model.dropout", repr(m["dropout"]), "null: BPE dropout makes encoding random")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if m.get(key) not in (None, ""):
            raise _unsupported(path, f"model.{key}", repr(m[key]), "null or '' (byte-level BPE marks no word pieces)")
    if not isinstance(m.get("ignore_merges", False), bool):
        raise ValueError(f"{path}: model.ignore_merges: expected true or false, got {m['ignore_merges']!r}")
    vocab = m.get("vocab")
    if not isinstance(vocab, dict) or not all(_is_id(v) for v in vocab.values()):
        raise ValueError(f"{path}: model.vocab: expected an object of token -> non-negative integer id")
    raw = m.get("merges")
    if not isinstance(raw, list):
        raise ValueError(f"{path}: model.merges: expected a list, got {type(raw).__name__}")
    merges = []
    for i, item in enumerate(raw):
        # "left right" (tokenizers < 0.20) or ["left", "right"] (newer, which allows spaces in tokens)
        parts = item.split(" ") if isinstance(item, str) else item
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) and p for p in parts)):
            raise ValueError(f"{path}: model.merges[{i}]: expected 'left right' or [left, right], got {item!r}"[:300])
        merges.append((f"{path}: model.merges[{i}]", parts[0], parts[1]))
    return vocab, merges, m.get("ignore_merges", False)


def _check_normalizer(n, path):
    """null | NFC | Sequence of those -> None or "NFC"."""
    if n is None:
        return None
    kind = _kind(n)
    if kind == "NFC":
        return "NFC"
    if kind == "Sequence" and isinstance(n.get("normalizers"), list):
        forms = {_check_normalizer(x, path) for x in n["normalizers"]} - {None}
        return forms.pop() if forms else None
    raise _unsupported(path, "normalizer", f"{kind!r}", "null or NFC (Qwen2's); NFKC, lower-casing, "
                       "SentencePiece's Replace/Prepend and the like change the text in ways we do not")


def _byte_level(p, path, field, use_regex):
    if p.get("add_prefix_space", False):
        raise _unsupported(path, f"{field}.add_prefix_space", "true (a space put before the text)", "false")
    if bool(p.get("use_regex", True)) != use_regex:
        raise _unsupported(path, f"{field}.use_regex", json.dumps(p.get("use_regex", True)),
                           f"{str(use_regex).lower()} here: " + ("a Split before ByteLevel does the splitting"
                                                                 if not use_regex else "GPT-2's split"))


def _check_pre_tokenizer(p, path):
    """-> our split pattern: "gpt2", a regex source, or None (no split)."""
    if _kind(p) == "ByteLevel":
        _byte_level(p, path, "pre_tokenizer", bool(p.get("use_regex", True)))
        return "gpt2" if p.get("use_regex", True) else None  # tokenizers' ByteLevel regex is GPT-2's
    expected = ("ByteLevel, or Sequence[Split(Regex, behavior Isolated, invert false), ByteLevel(use_regex "
                "false)] as Llama 3 and Qwen2 have")
    if _kind(p) != "Sequence" or not isinstance(p.get("pretokenizers"), list):
        raise _unsupported(path, "pre_tokenizer", repr(_kind(p)), expected)
    items = p["pretokenizers"]
    if len(items) == 1 and _kind(items[0]) == "ByteLevel":
        return _check_pre_tokenizer(items[0], path)
    if len(items) != 2 or _kind(items[0]) != "Split" or _kind(items[1]) != "ByteLevel":
        raise _unsupported(path, "pre_tokenizer.pretokenizers", repr([_kind(x) for x in items]), expected)
    split = items[0]
    field = "pre_tokenizer.pretokenizers[0]"
    if split.get("behavior") != "Isolated":
        raise _unsupported(path, f"{field}.behavior", repr(split.get("behavior")), "'Isolated'")
    if split.get("invert"):
        raise _unsupported(path, f"{field}.invert", "true", "false")
    pattern = split.get("pattern")
    if not (isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str)):
        raise _unsupported(path, f"{field}.pattern", repr(pattern)[:80], "{\"Regex\": ...}")
    _byte_level(items[1], path, "pre_tokenizer.pretokenizers[1]", False)
    return _isolated_pattern(pattern["Regex"], path, f"{field}.pattern.Regex")


def _isolated_pattern(source, path, field):
    """Split(Regex, Isolated) as a findall pattern.

    Isolated keeps every match as a piece, and also each run of text between two matches; findall
    would drop such a run. So we add an alternative that matches the run whole: characters at
    which the pattern does not match. (Llama 3's and Qwen2's patterns match at every position, so
    the alternative never fires for them.)
    """
    try:
        compiled = regex.compile(source)
    except regex.error as e:
        raise ValueError(f"{path}: {field}: not a regex we can compile ({e})") from None
    if compiled.groups:  # findall would return the groups instead of the matches
        raise _unsupported(path, field, "a regex with capturing groups", "only (?:...) groups")
    return f"(?:{source})|(?s:(?!(?:{source})).)+"


def _check_decoder(d, path):
    kinds = [_kind(x) for x in d["decoders"]] if _kind(d) == "Sequence" and isinstance(d.get("decoders"), list) \
        else [_kind(d)]
    if not kinds or any(k != "ByteLevel" for k in kinds):
        raise _unsupported(path, "decoder", repr(_kind(d) if len(kinds) == 1 else kinds),
                           "ByteLevel: tokens are bytes shown as characters, decoded back to bytes")


def _template_prefix(t, path, field):
    """A TemplateProcessing -> the ids it puts before a single text."""
    single = t.get("single")
    expected = "special tokens, then the text ($A): e.g. Llama 3's BOS"
    if not isinstance(single, list):
        raise _unsupported(path, f"{field}.single", repr(single)[:80], expected)
    names = [item.get("SpecialToken", {}).get("id") if isinstance(item, dict) else None for item in single]
    is_text = [isinstance(item, dict) and "Sequence" in item for item in single]
    if is_text.count(True) != 1 or not is_text[-1] or any(n is None for n in names[:-1]):
        raise _unsupported(path, f"{field}.single", repr(single)[:120],
                           expected + "; tokens after the text (BERT's [SEP], an EOS) are not added by us")
    table = t.get("special_tokens") or {}
    ids = []
    for name in names[:-1]:
        entry = table.get(name)
        if not (isinstance(entry, dict) and isinstance(entry.get("ids"), list) and all(_is_id(i) for i in entry["ids"])):
            raise ValueError(f"{path}: {field}.special_tokens: expected ids for {name!r}, got {entry!r}")
        ids += entry["ids"]
    return ids


def _check_post_processor(p, path, field="post_processor"):
    """-> the ids the post-processor puts before a single text ([] for none)."""
    kind = _kind(p)
    if p is None or kind == "ByteLevel":  # ByteLevel only trims offsets: the ids are untouched
        return []
    if kind == "TemplateProcessing":
        return _template_prefix(p, path, field)
    if kind == "Sequence" and isinstance(p.get("processors"), list):
        return [i for k, q in enumerate(p["processors"]) for i in _check_post_processor(q, path, f"{field}.processors[{k}]")]
    raise _unsupported(path, field, repr(kind), "null, ByteLevel, TemplateProcessing (tokens before the text), "
                       "or a Sequence of those")


def _check_added_tokens(added, vocab, path):
    """tokenizer.json's "added_tokens" -> {content: id} of the special ones."""
    if not isinstance(added, list):
        raise ValueError(f"{path}: added_tokens: expected a list, got {type(added).__name__}")
    special = {}
    ids = set(vocab.values())
    for i, t in enumerate(added):
        field = f"added_tokens[{i}]"
        if not (isinstance(t, dict) and isinstance(t.get("content"), str) and t["content"] and _is_id(t.get("id"))):
            raise ValueError(f"{path}: {field}: expected an object with a non-empty 'content' and an integer 'id'")
        content = t["content"]
        if not t.get("special", False):
            raise _unsupported(path, f"{field}.special", f"false (for {content!r}: an added token matched in any "
                               f"text, which our tokenizer has no notion of)", "true: special tokens only")
        for flag in ("lstrip", "rstrip", "single_word"):
            if t.get(flag, False):
                raise _unsupported(path, f"{field}.{flag}", f"true (for {content!r})", "false")
        if (content in vocab and vocab[content] != t["id"]) or (content not in vocab and t["id"] in ids):
            raise ValueError(f"{path}: {field}: special token {content!r} has id {t['id']}, which model.vocab "
                             f"gives to another token")
        special[content] = t["id"]
    return special


def _parse_tokenizer_json(path):
    """tokenizer.json -> (BPETokenizer, prefix ids of the post-processor)."""
    path = Path(path)
    j = read_json(path)
    vocab, merges, ignore_merges = _check_model(j.get("model"), path)
    normalizer = _check_normalizer(j.get("normalizer"), path)
    pattern = _check_pre_tokenizer(j.get("pre_tokenizer"), path)
    _check_decoder(j.get("decoder"), path)
    prefix = _check_post_processor(j.get("post_processor"), path)
    special = _check_added_tokens(j.get("added_tokens", []), vocab, path)
    ranks, unmerged = ranks_from_vocab(vocab, merges, special, vocab_where=f"{path}: model.vocab", vocab_name="model.vocab",
                             merges_name="model.merges",
                             special_hint="if it is a special token, list it in added_tokens with special: true",
                             ignore_merges=ignore_merges)
    try:
        tok = BPETokenizer(ranks, pattern=pattern, special_tokens=special, normalizer=normalizer,
                           ignore_merges=ignore_merges, unmerged=unmerged)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    unknown = [i for i in prefix if i not in tok.vocab and i not in tok.special_tokens.values()]
    if unknown:
        raise ValueError(f"{path}: post_processor: adds id {unknown[0]}, which is no token of this tokenizer")
    return tok, prefix


def load_tokenizer_json(path):
    """tokenizer.json (a byte-level BPE, see the module docstring) -> BPETokenizer, giving the ids
    `tokenizers` gives with add_special_tokens=False. A ValueError names the field it cannot read."""
    return _parse_tokenizer_json(path)[0]


def prefix_ids(path):
    """The ids tokenizer.json's post-processor puts before every text (Llama 3: [<|begin_of_text|>'s id]),
    [] for none. `path`: a tokenizer.json, or a directory (no tokenizer.json there: []). Reads only
    the post-processor (load_tokenizer_json checks the rest)."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
        if not path.is_file():
            return []
    return _check_post_processor(read_json(path).get("post_processor"), path)


def load_tokenizer_dir(d):
    """A checkpoint directory -> BPETokenizer: tokenizer.json if there is one, else vocab.json + merges.txt."""
    d = Path(d)
    if (d / TOKENIZER_FILE).is_file():
        return load_tokenizer_json(d / TOKENIZER_FILE)
    if not (d / VOCAB_FILE).is_file() and (d / "tokenizer.model").is_file():
        raise ValueError(f"{d}: found tokenizer.model (a SentencePiece tokenizer, as Llama 1/2 and Mistral have) "
                         f"but no {TOKENIZER_FILE} or {VOCAB_FILE} + {MERGES_FILE}: only byte-level BPE "
                         f"tokenizers are supported")
    return load_gpt2_tokenizer(d / VOCAB_FILE, d / MERGES_FILE)
