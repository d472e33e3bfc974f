"""Numba BPE: the fast twins of the pure-Python reference in `bpe.py`, which
`tokenizer.BPETokenizer` runs.

- `train_fast`, twin of `bpe.train_reference`: kernels `_count_pairs_nb`, `_pop_best_pair_nb`,
  `_merge_pair_nb`, with the loop over merges in Python;
- `PairTable` and `encode_chunks`, twin of `bpe.encode_chunk_reference` applied to many chunks:
  kernel `_encode_chunks_nb`.

The rules both sides implement, and the legend (chunk, id, rank, V), are in `bpe.py`'s
docstring; the tests assert that twin and reference agree exactly. `bpe.py` re-exports the three
names above, so `bpe.train_fast`, `bpe.PairTable` and `bpe.encode_chunks` work as before.

Integer code only, so none of `jit.py`'s float machinery: plain `@njit(cache=True)`, serial.

Does not: split text into chunks (tokenizer.py does that with a regex), handle special tokens,
or touch `str`: everything here is bytes and ints.
"""
import heapq
from collections import Counter

import numpy as np
from numba import njit, types
from numba.typed import Dict, List

# ----------------------------------------------------------------------------------------------
# Training: the Numba twin
#
# Same rule, three changes that make it fast without changing the result:
#   1. identical chunks are stored once with a count ("the" appears ~7000 times in Shakespeare but
#      is merged once), which changes no pair count;
#   2. pair counts live in a dict that is *updated* after a merge, touching only the chunks that
#      contained the merged pair, instead of being recounted from scratch;
#   3. the best pair comes from a heap of (-count, a * V + b) entries. Sorting by a * V + b is
#      sorting by (a, b), so the heap's minimum is exactly the reference's choice. Entries are never
#      removed when a count changes; a fresh entry is pushed instead and stale ones (whose count no
#      longer matches the dict) are skipped when popped ("lazy deletion").
# Only the loop over merges stays in Python (a few microseconds per merge), because looking up
# whether the merged bytes already exist is a bytes-keyed dict lookup that Numba cannot do.

_PAIR_HEAP_ITEM = types.Tuple((types.int64, types.int64))  # (-count, a * V + b)


@njit(cache=True)
def _count_pairs_nb(pair_counts, heap, tokens, starts, lengths, word_counts, V):
    """Numba kernel for the first `get_stats` pass of `bpe.train_reference`, over deduplicated chunks.

    pair_counts: typed Dict[int64, int64] (filled), heap: typed List[(int64, int64)] (filled),
    tokens: (N,) int64 all chunks' ids back to back, starts: (W,) int64 offset of each chunk,
    lengths: (W,) int64, word_counts: (W,) int64 occurrences of each chunk, V: int, ids are < V.
    """
    for w in range(starts.shape[0]):
        s = starts[w]
        c = word_counts[w]
        for i in range(s, s + lengths[w] - 1):
            key = tokens[i] * V + tokens[i + 1]
            pair_counts[key] = pair_counts.get(key, 0) + c
    for key, count in pair_counts.items():
        heap.append((-count, key))
    heapq.heapify(heap)


@njit(cache=True)
def _pop_best_pair_nb(heap, pair_counts):
    """Numba kernel for `min(stats, key=lambda p: (-stats[p], p))` in `bpe.train_reference`.

    Returns (a * V + b, count) of the most frequent pair, or (-1, 0) when no pair is left.
    """
    while len(heap) > 0:
        neg_count, key = heapq.heappop(heap)
        if pair_counts.get(key, 0) == -neg_count:  # otherwise a stale entry: its count has changed
            return key, -neg_count
    return -1, 0


@njit(cache=True)
def _merge_pair_nb(pair_counts, heap, tokens, starts, lengths, word_counts, a, b, new_id, V):
    """Numba kernel for `bpe.merge` applied to every chunk in `bpe.train_reference`, updating pair counts.

    Arguments as in `_count_pairs_nb`; merges (a, b) -> new_id in place: a chunk that shrinks keeps
    its start, its length goes down and the tail of its slot becomes unused.
    """
    touched = Dict.empty(key_type=types.int64, value_type=types.int64)  # used as a set of keys
    for w in range(starts.shape[0]):
        s = starts[w]
        end = s + lengths[w]
        found = False
        for i in range(s, end - 1):
            if tokens[i] == a and tokens[i + 1] == b:
                found = True
                break
        if not found:
            continue
        c = word_counts[w]
        # Take the chunk's pairs out, merge, put the new pairs back. Cheaper to reason about than
        # patching the neighbours of each occurrence, and right for overlaps such as (a, a) in "aaa".
        for i in range(s, end - 1):
            key = tokens[i] * V + tokens[i + 1]
            pair_counts[key] -= c
            touched[key] = 0
        i = s
        j = s
        while i < end:
            if i + 1 < end and tokens[i] == a and tokens[i + 1] == b:
                tokens[j] = new_id
                i += 2
            else:
                tokens[j] = tokens[i]
                i += 1
            j += 1
        lengths[w] = j - s
        for i in range(s, j - 1):
            key = tokens[i] * V + tokens[i + 1]
            pair_counts[key] = pair_counts.get(key, 0) + c
            touched[key] = 0
    for key in touched:
        count = pair_counts[key]
        if count > 0:
            heapq.heappush(heap, (-count, key))
        else:
            del pair_counts[key]


def train_fast(chunks, vocab_size, verbose=False):
    """Numba-accelerated `bpe.train_reference`: same arguments (bar max_merges), identical result.

    chunks: list[bytes], vocab_size: int > 256.
    Returns merges: list[(a, b, new_id)], vocab: dict[int, bytes].
    """
    chunk_counts = Counter(chunks)
    words = list(chunk_counts)
    word_counts = np.array([chunk_counts[w] for w in words], dtype=np.int64)
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    starts = np.zeros(len(words), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    tokens = np.frombuffer(b"".join(words), dtype=np.uint8).astype(np.int64)  # (N,)

    V = vocab_size  # every id stays < vocab_size, so a * V + b is a unique key for (a, b)
    pair_counts = Dict.empty(key_type=types.int64, value_type=types.int64)
    heap = List.empty_list(_PAIR_HEAP_ITEM)
    _count_pairs_nb(pair_counts, heap, tokens, starts, lengths, word_counts, V)

    vocab = {i: bytes([i]) for i in range(256)}
    id_of = {b: i for i, b in vocab.items()}
    merges = []
    while len(vocab) < vocab_size:
        key, count = _pop_best_pair_nb(heap, pair_counts)
        if count == 0:
            break
        a, b = divmod(key, V)
        new_bytes = vocab[a] + vocab[b]
        idx = id_of.get(new_bytes, len(vocab))
        _merge_pair_nb(pair_counts, heap, tokens, starts, lengths, word_counts, a, b, idx, V)
        merges.append((a, b, idx))
        vocab[idx] = id_of[new_bytes] = new_bytes
        if verbose:
            print(f"merge {len(merges)}: {(a, b)} -> {idx} ({new_bytes!r}) had {count} occurrences")
    return merges, vocab


# ----------------------------------------------------------------------------------------------
# Encoding: the Numba twin
#
# Numba has no bytes-keyed dict, so the vocabulary becomes a table over pairs of ids: every part in
# the middle of encoding is itself a token, hence "does part a + part b make a token, and of what
# rank?" is a function of the two ids. We list it for every split point of every token, as sorted
# int64 keys a * V + b with binary search. Each chunk is then merged with a linked list of parts and
# a heap of (rank, position) keys, O(n log n), so even one 1 MB chunk (pattern=None) is quick.


class PairTable:
    """The vocabulary as seen by `_encode_chunks_nb`.

    byte_to_id: (256,) int64, the id of each single byte (not the byte value in tiktoken files)
    keys: (P,) int64 sorted, a * V + b for every pair of tokens whose concatenation is a token
    ranks: (P,) int64, the rank of that concatenation. V: int, larger than every id.
    """

    def __init__(self, ranks):
        """ranks: dict[bytes, int] containing all 256 single bytes."""
        self.V = max(ranks.values()) + 1
        self.byte_to_id = np.array([ranks[bytes([i])] for i in range(256)], dtype=np.int64)
        keys, values = [], []
        get = ranks.get
        for token, rank in ranks.items():
            for k in range(1, len(token)):
                left, right = get(token[:k]), get(token[k:])
                if left is not None and right is not None:
                    keys.append(left * self.V + right)
                    values.append(rank)
        keys = np.array(keys, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.ranks = np.array(values, dtype=np.int64)[order]


@njit(cache=True)
def _pair_rank_nb(keys, ranks, key):
    """Binary search: rank of the token spelled by pair `key`, or -1 if there is none."""
    lo, hi = 0, keys.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < keys.shape[0] and keys[lo] == key:
        return ranks[lo]
    return -1


@njit(cache=True)
def _heap_push_nb(heap, n, item):
    """Push onto the binary min-heap heap[:n]; returns the new size."""
    i = n
    heap[i] = item
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= heap[i]:
            break
        heap[parent], heap[i] = heap[i], heap[parent]
        i = parent
    return n + 1


@njit(cache=True)
def _heap_pop_nb(heap, n):
    """Pop the minimum of heap[:n]; returns (item, new size)."""
    top = heap[0]
    n -= 1
    heap[0] = heap[n]
    i = 0
    while True:
        smallest, left, right = i, 2 * i + 1, 2 * i + 2
        if left < n and heap[left] < heap[smallest]:
            smallest = left
        if right < n and heap[right] < heap[smallest]:
            smallest = right
        if smallest == i:
            break
        heap[smallest], heap[i] = heap[i], heap[smallest]
        i = smallest
    return top, n


@njit(cache=True)
def _encode_chunks_nb(out_ids, out_starts, data, starts, byte_to_id, keys, ranks, V):
    """Numba kernel for `bpe.encode_chunk_reference`, over many chunks at once.

    out_ids: (N,) int64 written, ids of all chunks back to back (never more ids than bytes)
    out_starts: (K + 1,) int64 written, chunk k's ids are out_ids[out_starts[k]:out_starts[k + 1]]
    data: (N,) uint8 all chunks' bytes back to back, starts: (K + 1,) int64 chunk offsets in data
    byte_to_id, keys, ranks, V: a PairTable's fields.
    """
    max_len = 0
    for k in range(starts.shape[0] - 1):
        max_len = max(max_len, starts[k + 1] - starts[k])
    tok = np.empty(max_len, dtype=np.int64)  # id of the part starting at byte i (if alive)
    nxt = np.empty(max_len, dtype=np.int64)  # start of the next part (linked list over bytes)
    prv = np.empty(max_len, dtype=np.int64)
    pair = np.empty(max_len, dtype=np.int64)  # rank of (part at i, next part), -1 if none or dead
    # a heap item packs (rank, position) as rank * 2**32 + position, so the minimum is the lowest
    # rank and, on ties, the leftmost pair. n - 1 initial pushes + at most 2 per merge: < 3 n.
    heap = np.empty(3 * max_len + 1, dtype=np.int64)
    n_out = 0
    for k in range(starts.shape[0] - 1):
        s = starts[k]
        n = starts[k + 1] - s
        out_starts[k] = n_out
        for i in range(n):
            tok[i] = byte_to_id[data[s + i]]
            nxt[i] = i + 1
            prv[i] = i - 1
        h = 0
        for i in range(n):
            pair[i] = _pair_rank_nb(keys, ranks, tok[i] * V + tok[i + 1]) if i + 1 < n else -1
            if pair[i] >= 0:
                h = _heap_push_nb(heap, h, (pair[i] << 32) + i)
        while h > 0:
            item, h = _heap_pop_nb(heap, h)
            rank, i = item >> 32, item & 0xFFFFFFFF
            if pair[i] != rank:  # stale: part i died or its right neighbour changed
                continue
            j = nxt[i]  # merge part j into part i
            tok[i] = rank
            pair[j] = -1
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
                pair[i] = _pair_rank_nb(keys, ranks, tok[i] * V + tok[nxt[i]])
                if pair[i] >= 0:
                    h = _heap_push_nb(heap, h, (pair[i] << 32) + i)
            else:
                pair[i] = -1
            p = prv[i]
            if p >= 0:
                pair[p] = _pair_rank_nb(keys, ranks, tok[p] * V + tok[i])
                if pair[p] >= 0:
                    h = _heap_push_nb(heap, h, (pair[p] << 32) + p)
        i = 0
        while i < n:
            out_ids[n_out] = tok[i]
            n_out += 1
            i = nxt[i]
    out_starts[starts.shape[0] - 1] = n_out
    return n_out


def encode_chunks(chunks, table):
    """Encode many chunks with the Numba kernel. chunks: list[bytes], table: PairTable.

    Returns list[list[int]], one id list per chunk.
    """
    lengths = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
    starts = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    out_ids = np.empty(data.shape[0], dtype=np.int64)
    out_starts = np.empty(len(chunks) + 1, dtype=np.int64)
    _encode_chunks_nb(out_ids, out_starts, data, starts, table.byte_to_id, table.keys, table.ranks, table.V)
    flat = out_ids[:out_starts[-1]].tolist()
    bounds = out_starts.tolist()
    return [flat[bounds[k]:bounds[k + 1]] for k in range(len(chunks))]
