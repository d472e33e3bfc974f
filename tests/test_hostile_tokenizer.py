"""Hostile inputs for the tokenizer and the kernel cache (issue 15, categories 6 and 8).

6a: BPE training, and building the encoder's pair table, stay near-linear in the longest chunk
    (a 400 KB run of one letter, one long chunk with pattern=None), while learning exactly the
    merges of the readable reference.
6b: a split pattern that leaves text uncovered is refused (constructor, load, train) with one
    ValueError naming the pattern and the uncovered text; encode never drops text anyway.
8:  Numba's on-disk cache (pickles) lives beside the package only when the package is the user's
    own; otherwise in a private per-user directory; a user's NUMBA_CACHE_DIR always wins.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numba
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanotransformer import bpe, data
from nanotransformer.kernels import jit
from nanotransformer.tokenizer import BPETokenizer, load_tokenizer

PACKAGE = Path(bpe.__file__).resolve().parent
# timings mean nothing when the kernels run as plain Python
compiled = pytest.mark.skipif(bool(numba.config.DISABLE_JIT), reason="timing: NUMBA_DISABLE_JIT=1 runs Python")


def best_time(fn, repeats):
    """Smallest wall time of `repeats` calls: the least disturbed by other load on the machine."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ---------------------------------------------------------------------------------------------
# 6a: near-linear training


def train_and_encode(text):
    """What `--tokenizer bpe` does with a training file: train (vocab 512), then encode it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ran out of pairs to merge": one letter has few pairs
        tok = data.build_tokenizer(text, "bpe", 512)
    assert tok.decode(tok.encode(text)) == text


@compiled
def test_one_repeated_letter_trains_and_encodes_in_near_linear_time():
    """Issue 15: 200 KB of "a" took 17 s, 400 KB 63 s (building the encoder's pair table tried
    every split point of the one 200 KB token: quadratic). Both sizes in one test, best of two
    each: 4x the text must take well under the 16x of quadratic growth (linear is 4x, plus
    caches that stop fitting)."""
    train_and_encode("a" * 1000)  # compile outside the timing
    t100 = best_time(lambda: train_and_encode("a" * 100_000), 2)
    t400 = best_time(lambda: train_and_encode("a" * 400_000), 2)
    assert t400 < 8 * t100 + 0.05, f"100 KB took {t100:.3f} s, 400 KB {t400:.3f} s: expected about 4x"


@compiled
def test_training_one_long_chunk_costs_little_per_merge():
    """One 200 KB chunk (pattern=None): 1000 more merges must not multiply the time. Recounting
    the chunk that holds the merged pair cost O(chunk) per merge (40x here); indexing each pair's
    positions makes a merge touch only its own occurrences (O(N log N) in all)."""
    rnd = random.Random(0)
    chunk = "".join(rnd.choice("abcdefgh ") for _ in range(200_000)).encode()
    bpe.train_fast([b"abcabc"], 260)  # compile outside the timing
    few = best_time(lambda: bpe.train_fast([chunk], 300), 3)
    many = best_time(lambda: bpe.train_fast([chunk], 1300), 3)
    assert many < 6 * few + 0.05, f"44 merges took {few:.3f} s, 1044 merges {many:.3f} s"


# overlapping runs ("aaaa" holds three (a, a)), runs of two alternating ids, repeated chunks
_runs = st.lists(st.sampled_from(["a", "aa", "aaa", "b", "ab", "ba", "aab", "\xe9", " "]), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(_runs.map("".join), min_size=1, max_size=6), extra=st.integers(1, 40))
def test_train_fast_matches_reference_on_overlapping_runs(chunks, extra):
    chunks = [c.encode() for c in chunks]
    assert bpe.train_fast(chunks, 256 + extra) == bpe.train_reference(chunks, 256 + extra)


@pytest.mark.parametrize("pattern", [None, "gpt4"])
def test_train_fast_matches_reference_on_a_long_chunk_of_runs(pattern):
    rnd = random.Random(1)
    text = "".join(rnd.choice(["a", "aa", "aaa", "b", "ab", "ba ", "\n"]) for _ in range(4000))
    split = regex.compile(BPETokenizer(pattern=pattern).pattern) if pattern else None
    chunks = [c.encode() for c in (split.findall(text) if split else [text])]
    assert bpe.train_fast(chunks, 400) == bpe.train_reference(chunks, 400)


def test_pair_table_of_a_long_token_matches_every_split_point():
    """The pair table, built from token lengths only, lists what trying every split point lists."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranks = BPETokenizer().train("a" * 5000 + " ab" * 300, 600).ranks
    expected = sorted((ranks[t[:k]] * (max(ranks.values()) + 1) + ranks[t[k:]], r) for t, r in ranks.items()
                      for k in range(1, len(t)) if t[:k] in ranks and t[k:] in ranks)
    table = bpe.PairTable(ranks)
    assert sorted(zip(table.keys.tolist(), table.ranks.tolist())) == expected


# ---------------------------------------------------------------------------------------------
# 6b: split patterns that leave text uncovered

# each skips something: punctuation and digits, digits, newlines, whitespace, everything but
# letters; or matches the empty string (everywhere, or where it cannot match anything else)
UNCOVERING = [
    (r"\p{L}+|\s+", ","),
    (r"[^\d]+", "42"),
    (r"[^\n]+", "\n"),
    (r".+", "\n"),  # "." stops at newlines
    (r"\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+", " "),
    (r"\S+| +", "\t"),
    (r"[\x00-\x7f]+", "é"),
    ("", "H"),
    (r"\p{L}*", ","),
    (r"(?:\w+)?", ","),
]


@pytest.mark.parametrize("pattern, missing", UNCOVERING)
def test_uncovering_pattern_is_refused_by_the_constructor(pattern, missing):
    with pytest.raises(ValueError) as e:
        BPETokenizer(pattern=pattern)
    message = str(e.value)
    assert message.startswith("pattern: expected a split pattern whose matches cover every character")
    assert repr(pattern) in message and "leaves " + repr(missing)[:-1] in message


@pytest.mark.parametrize("pattern, missing", UNCOVERING)
def test_uncovering_pattern_is_refused_by_train(pattern, missing):
    with pytest.raises(ValueError, match=r"^pattern: expected a split pattern whose matches cover") as e:
        BPETokenizer().train("Hello, world! 42 ok.\n\té", 300, pattern=pattern)
    assert repr(pattern) in str(e.value)


def test_train_refuses_a_pattern_that_misses_part_of_the_training_text():
    """`[^☃]+` covers the probe text but not a snowman: training on one names it and where."""
    with pytest.raises(ValueError) as e:
        BPETokenizer().train("let it snow ☃ all day", 300, pattern="[^☃]+")
    assert "'[^☃]+'" in str(e.value) and "leaves '☃' uncovered in the training text" in str(e.value)
    assert "index 12" in str(e.value)


@pytest.mark.parametrize("pattern, missing", UNCOVERING[:4])
def test_tokenizer_file_with_an_uncovering_pattern_is_refused(tmp_path, pattern, missing):
    path = tmp_path / "tok.txt"
    BPETokenizer().train("Hello, world! 42 ok.\n", 265).save(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[1].startswith("pattern: ")
    lines[1] = "pattern: " + json.dumps(pattern)
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_tokenizer(path)
    assert str(e.value).startswith(f"{path}: pattern: expected a split pattern")
    assert repr(pattern) in str(e.value) and "leaves " + repr(missing)[:-1] in str(e.value)


# Patterns that pass the probe but may still miss text (a snowman, chess pieces), one with a
# capturing group (findall would return the group instead of the match), one with empty matches.
ENCODE_PATTERNS = ["gpt2", "gpt4", None, "[^☃]+", r"[^☃\u2654-\u265f]+", r"(\p{L}+)|\s+|\S", r"\p{L}+|\s+|\S|"]
# any character but a lone surrogate, mixed with pieces the patterns above miss or split oddly (a
# list of pieces, not st.text(alphabet=one_of(...)), which would draw the pieces almost never)
_text = st.lists(st.one_of(st.characters(blacklist_categories=("Cs",)),
                           st.sampled_from(["☃", "♞", "e\u0301", " ", "\n", ", ", "7"]))).map("".join)


@pytest.mark.parametrize("pattern", ENCODE_PATTERNS)
@settings(max_examples=100, deadline=None)
@given(s=_text)
def test_decode_encode_roundtrip_under_any_accepted_pattern(pattern, s):
    tok = BPETokenizer(pattern=pattern)
    assert tok.decode(tok.encode(s)) == s


@pytest.mark.parametrize("pattern", ENCODE_PATTERNS[3:5])
def test_text_a_pattern_misses_is_encoded_as_its_own_chunks(pattern):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = BPETokenizer().train("snow and more snow, 7 ete", 300, pattern=pattern)
    s = "☃snow ☃☃ e\u0301, 7☃ ♞♛"
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode("☃") == [tok.ranks[b] for b in [bytes([x]) for x in "☃".encode()]]


# ---------------------------------------------------------------------------------------------
# 8: where Numba's cache (pickles) lives


def _private_dir(path):
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)  # whatever the umask
    return path


def test_cache_dir_honours_a_user_numba_cache_dir(tmp_path):
    pkg = _private_dir(tmp_path / "pkg")
    for uid in (os.getuid(), os.getuid() + 1):  # owned or not, the user's choice wins
        assert jit.cache_dir(pkg, {"NUMBA_CACHE_DIR": "/my/cache", "HOME": "/h"}, uid) == Path("/my/cache")


def test_cache_dir_stays_in_a_package_the_user_owns(tmp_path):
    pkg = _private_dir(tmp_path / "pkg")
    assert jit.cache_dir(pkg, {"HOME": "/h"}, os.getuid()) is None
    assert jit.cache_dir(pkg, {"HOME": "/h", "NUMBA_CACHE_DIR": ""}, os.getuid()) is None  # empty: unset
    _private_dir(pkg / "__pycache__")
    assert jit.cache_dir(pkg, {"HOME": "/h"}, os.getuid()) is None


@pytest.mark.parametrize("env, expected", [
    ({"HOME": "/h"}, "/h/.cache/nanotransformer/numba"),
    ({"HOME": "/h", "XDG_CACHE_HOME": "/x/cache"}, "/x/cache/nanotransformer/numba"),
    ({"HOME": "/h", "XDG_CACHE_HOME": "relative/cache"}, "/h/.cache/nanotransformer/numba"),  # must be absolute
    ({"HOME": "/h", "XDG_CACHE_HOME": ""}, "/h/.cache/nanotransformer/numba"),
])
def test_cache_dir_moves_out_of_a_package_another_user_owns(tmp_path, env, expected):
    pkg = _private_dir(tmp_path / "pkg")
    assert jit.cache_dir(pkg, env, os.getuid() + 1) == Path(expected)


@pytest.mark.parametrize("where", ["package", "__pycache__"])
def test_cache_dir_moves_out_of_a_directory_others_can_write(tmp_path, where):
    pkg = _private_dir(tmp_path / "pkg")
    pycache = _private_dir(pkg / "__pycache__")
    os.chmod(pkg if where == "package" else pycache, 0o775)  # group-writable: a shared install
    assert jit.cache_dir(pkg, {"HOME": "/h"}, os.getuid()) == Path("/h/.cache/nanotransformer/numba")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_cache_dir_moves_out_of_a_pycache_another_user_owns(tmp_path):
    pkg = _private_dir(tmp_path / "pkg")
    os.chown(_private_dir(pkg / "__pycache__"), 4242, 4242)
    assert jit.cache_dir(pkg, {"HOME": "/h"}, os.getuid()) == Path("/h/.cache/nanotransformer/numba")


# A small kernel of the package, compiled (and so cached) in a fresh process.
_COMPILE_ONE = ("import numpy as np, numba; from nanotransformer.kernels import bpe; "
                "bpe._pair_rank_nb(np.zeros(1, np.int64), np.zeros(1, np.int64), 0); "
                "print(numba.config.CACHE_DIR)")


def _run(env_extra, cwd, pythonpath=None, drop=("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "NUMBA_DISABLE_JIT")):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    # cwd: `python -c` puts the working directory first on sys.path, which must not be the repo
    out = subprocess.run([sys.executable, "-c", _COMPILE_ONE], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _index_files(path):
    return sorted(p.name for p in Path(path).rglob("*.nbi"))


def test_a_user_numba_cache_dir_receives_the_cache(tmp_path):
    cache = tmp_path / "my-numba-cache"
    assert _run({"NUMBA_CACHE_DIR": str(cache)}, tmp_path) == str(cache)
    assert any(name.startswith("bpe._pair_rank_nb-") for name in _index_files(cache))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown a package copy")
def test_a_package_another_user_owns_caches_in_a_private_per_user_directory(tmp_path):
    """A copy of the package owned by uid 4242, imported by root (who could write into it)."""
    copy = tmp_path / "site"
    shutil.copytree(PACKAGE, copy / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [copy, *copy.rglob("*")]:
        os.chown(path, 4242, 4242)
    home = tmp_path / "home"
    expected = home / ".cache" / "nanotransformer" / "numba"
    assert _run({"HOME": str(home)}, tmp_path, pythonpath=copy) == str(expected)
    assert any(name.startswith("bpe._pair_rank_nb-") for name in _index_files(expected))
    assert _index_files(copy) == []  # nothing pickled into the other user's package
    assert expected.stat().st_mode & 0o777 == 0o700
