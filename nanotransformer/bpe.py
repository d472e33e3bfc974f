"""Byte-pair encoding: learning merges from text, and applying a vocabulary of ranks to text.

Each algorithm comes twice (llm.c's "naive twin" idea): a short pure-Python reference here that
*is* the definition, and a Numba twin in `kernels/bpe.py` that `tokenizer.BPETokenizer` actually
runs (`train_fast`, `PairTable` and `encode_chunks`, re-exported below so `bpe.train_fast` works).
The tests assert the two agree exactly, so the reference is what to read and the twin is what to
time.

Legend: a *chunk* is the UTF-8 bytes of one regex match (BPE never merges across chunks); an *id*
is a token number; a *rank* is the id of a multi-byte token, and a lower rank means the merge was
learned earlier, so it is applied first. V is the number of ordinary (non-special) ids.

Training rule (both implementations):
    start with ids 0..255 = the 256 single bytes, every chunk a list of byte ids;
    repeat: count every adjacent pair (a, b) over all chunks; take the pair with the highest count,
    ties broken by the smallest pair (a, b) in lexicographic order (so the result never depends on
    the order chunks were seen in); replace its non-overlapping occurrences, left to right, by a new
    id whose bytes are bytes(a) + bytes(b).
    Could two different pairs ever spell the same bytes, say (" t", "he") after (" th", "e")? We
    have not found a text where it happens (greedy merging seems to segment a token's bytes the same
    way everywhere), but encoding needs the vocabulary to be a set of distinct byte strings, as a
    tiktoken rank file is, so both implementations guard it the way Hugging Face `tokenizers` does:
    such a merge reuses the existing id instead of spending a new one.

Encoding rule (tiktoken's, which is what makes us byte-exact with it):
    within a chunk, start from single bytes and repeatedly merge the adjacent pair whose
    *concatenated bytes* have the lowest rank (the leftmost such pair on ties), until no adjacent
    pair concatenates to a token. This looks only at the vocabulary, not at the merge list, so it
    works the same for a tiktoken rank file (which has no merge list) and for a tokenizer we trained.

Does not: split text into chunks (tokenizer.py does that with a regex), handle special tokens, or
touch `str` at all: everything in this module is bytes and ints.
"""
from __future__ import annotations

# the Numba twins, re-exported: bpe.train_fast, bpe.PairTable, bpe.encode_chunks
from .kernels.bpe import PairTable, encode_chunks, train_fast  # noqa: F401

# ----------------------------------------------------------------------------------------------
# Training: the pure-Python reference (minbpe's get_stats / merge, over regex chunks)


def get_stats(ids, counts=None):
    """Count adjacent pairs. ids: list[int] -> counts: dict[(int, int), int] (updated in place)."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, idx):
    """Replace non-overlapping occurrences of `pair`, left to right, by `idx`. list[int] -> list[int]"""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_reference(chunks, vocab_size, verbose=False, max_merges=None):
    """Learn merges the slow, obvious way: recount every pair of every chunk at every step.

    chunks: list[bytes], the text already split (a chunk may repeat, each occurrence counts)
    vocab_size: int > 256, how many ordinary ids to end with (256 bytes + learned tokens)
    max_merges: int or None, stop after this many merges (the benchmark uses it to time a few)
    Returns merges: list[(a, b, new_id)] in the order learned, vocab: dict[int, bytes].
    Stops early, with fewer ids, if no adjacent pair is left to merge.
    """
    ids = [list(chunk) for chunk in chunks]
    vocab = {i: bytes([i]) for i in range(256)}
    id_of = {b: i for i, b in vocab.items()}
    merges = []
    while len(vocab) < vocab_size and (max_merges is None or len(merges) < max_merges):
        stats = {}
        for chunk_ids in ids:
            get_stats(chunk_ids, stats)
        if not stats:
            break
        # highest count first; among equal counts the smallest (a, b)
        pair = min(stats, key=lambda p: (-stats[p], p))
        new_bytes = vocab[pair[0]] + vocab[pair[1]]
        idx = id_of.get(new_bytes, len(vocab))  # reuse the id if these bytes are already a token
        ids = [merge(chunk_ids, pair, idx) for chunk_ids in ids]
        merges.append((pair[0], pair[1], idx))
        vocab[idx] = id_of[new_bytes] = new_bytes
        if verbose:
            print(f"merge {len(merges)}: {pair} -> {idx} ({new_bytes!r}) had {stats[pair]} occurrences")
    return merges, vocab


# ----------------------------------------------------------------------------------------------
# Encoding: the pure-Python reference (tiktoken's rule, written the obvious way)


def encode_chunk_reference(chunk, ranks):
    """Apply BPE to one chunk. chunk: bytes, ranks: dict[bytes, int] -> ids: list[int].

    Quadratic in the chunk length (each step rescans all pairs), which is what tiktoken does too;
    fine for words, the Numba twin `encode_chunks` (kernels/bpe.py) is what runs.
    """
    parts = [chunk[i:i + 1] for i in range(len(chunk))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):  # `<`: leftmost wins ties
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]
