"""Numba BPE: the fast twins of the pure-Python reference in `bpe.py`, which
`tokenizer.BPETokenizer` runs.

- `train_fast`, twin of `bpe.train_reference`: kernels `_count_pairs_nb`, `_pop_best_pair_nb`,
  `_merge_pair_nb` (O(N log N) in the N bytes of text, even when one chunk is all of it), with the
  loop over merges in Python;
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
# Same rule, four changes that make it fast without changing the result:
#   1. identical chunks are stored once with a count ("the" appears ~7000 times in Shakespeare but
#      is merged once), which changes no pair count;
#   2. every chunk is a doubly linked list of tokens over the flat byte array: the token starting at
#      byte i has id tok[i], the next token starts at nxt[i] (-1 at the chunk's end), the previous
#      one at prv[i]; a merge at i swallows the token at j = nxt[i] (tok[j] = -1, dead);
#   3. every pair has an index of the positions where it occurs (a linked list of occurrences,
#      appended to whenever a merge creates the pair, never pruned). A merge visits only the
#      positions of its own pair, skipping stale ones (position dead, or now another pair: a pair
#      that leaves a position never comes back, since its bytes only grow there), and updates only
#      the counts of the two neighbouring pairs. Each applied merge removes one token and adds at most
#      two occurrences, so training costs O(N log N) for N bytes whatever the vocabulary size, even
#      for one huge chunk (pattern=None, or a megabyte of "aaaa"), where recounting the chunks that
#      contain the pair cost O(N) per merge;
#   4. the best pair comes from a heap of (-count, a * V + b) entries. Sorting by a * V + b is
#      sorting by (a, b), so the heap's minimum is exactly the reference's choice. Entries are never
#      removed when a count changes; a fresh entry is pushed instead and stale ones (whose count no
#      longer matches) are skipped when popped ("lazy deletion").
# Overlaps: only a pair (a, a) can overlap itself ("aaa" holds two), and `bpe.merge` takes such
# occurrences left to right, so those positions are sorted before merging: the merge at i kills
# the token at i + 1, and the occurrence starting there is then skipped as stale.
# Only the loop over merges stays in Python (a few microseconds per merge), because looking up
# whether the merged bytes already exist is a bytes-keyed dict lookup that Numba cannot do.

_PAIR_HEAP_ITEM = types.Tuple((types.int64, types.int64))  # (-count, a * V + b)


class _TrainState:
    """The arrays `_count_pairs_nb` and `_merge_pair_nb` share (N bytes of W distinct chunks).

    tok, nxt, prv: (N,) int64, the linked lists of tokens (see the section comment);
    weight: (N,) int64, occurrences of the chunk each byte belongs to;
    slot_of: typed Dict[int64, int64], pair key a * V + b -> its slot s;
    counts, heads: (E,) int64 per slot: the pair's count, its most recent occurrence entry (-1: none);
    occ_pos, occ_next: (E,) int64 per occurrence entry: position, previous entry of the same pair;
    sizes: (2,) int64, slots and entries used. E = 3 (N - W) + 1 bounds both: N - W initial pairs,
    at most N - W merges applied, each adding at most two occurrences.
    heap: typed List[(-count, key)].
    """

    def __init__(self, words, V):
        lengths = np.array([len(w) for w in words], dtype=np.int64)
        starts = np.zeros(len(words), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        self.tok = np.frombuffer(b"".join(words), dtype=np.uint8).astype(np.int64)  # (N,)
        N = self.tok.shape[0]
        self.starts, self.lengths = starts, lengths
        self.nxt = np.empty(N, dtype=np.int64)
        self.prv = np.empty(N, dtype=np.int64)
        self.weight = np.empty(N, dtype=np.int64)
        E = 3 * (N - len(words)) + 1
        self.counts, self.heads = np.zeros(E, dtype=np.int64), np.full(E, -1, dtype=np.int64)
        self.occ_pos, self.occ_next = np.empty(E, dtype=np.int64), np.empty(E, dtype=np.int64)
        self.sizes = np.zeros(2, dtype=np.int64)
        self.slot_of = Dict.empty(key_type=types.int64, value_type=types.int64)
        self.heap = List.empty_list(_PAIR_HEAP_ITEM)
        self.V = V

    def index(self):
        """The arguments every kernel below starts with."""
        return (self.slot_of, self.counts, self.heads, self.occ_pos, self.occ_next, self.sizes)


@njit(cache=True)
def _add_pair_nb(slot_of, counts, heads, occ_pos, occ_next, sizes, key, i, c):
    """One more occurrence, of weight c, of pair `key` at position i: count it and index it."""
    if key in slot_of:
        s = slot_of[key]
    else:
        s = sizes[0]
        sizes[0] += 1
        slot_of[key] = s
    counts[s] += c
    e = sizes[1]
    sizes[1] += 1
    occ_pos[e] = i
    occ_next[e] = heads[s]
    heads[s] = e


@njit(cache=True)
def _count_pairs_nb(slot_of, counts, heads, occ_pos, occ_next, sizes, heap, tok, nxt, prv, weight, starts,
                    lengths, word_counts, V):  # fmt: skip
    """Numba kernel for the first `get_stats` pass of `bpe.train_reference`, over deduplicated chunks.

    The index arguments, heap, tok, nxt, prv, weight: see `_TrainState` (filled here);
    starts, lengths, word_counts: (W,) int64, offset, length and occurrences of each chunk.
    """
    for w in range(starts.shape[0]):
        s, n, c = starts[w], lengths[w], word_counts[w]
        for i in range(s, s + n):
            nxt[i] = i + 1 if i + 1 < s + n else -1
            prv[i] = i - 1 if i > s else -1
            weight[i] = c
            if i + 1 < s + n:
                _add_pair_nb(slot_of, counts, heads, occ_pos, occ_next, sizes, tok[i] * V + tok[i + 1], i, c)
    for key, s in slot_of.items():
        heap.append((-counts[s], key))
    heapq.heapify(heap)


@njit(cache=True)
def _pop_best_pair_nb(slot_of, counts, heap):
    """Numba kernel for `min(stats, key=lambda p: (-stats[p], p))` in `bpe.train_reference`.

    Returns (a * V + b, count) of the most frequent pair, or (-1, 0) when no pair is left.
    """
    while len(heap) > 0:
        neg_count, key = heapq.heappop(heap)
        if neg_count < 0 and counts[slot_of[key]] == -neg_count:  # else stale: its count has changed
            return key, -neg_count
    return -1, 0


@njit(cache=True)
def _merge_pair_nb(slot_of, counts, heads, occ_pos, occ_next, sizes, heap, tok, nxt, prv, weight, a, b, new_id,
                   V):  # fmt: skip
    """Numba kernel for `bpe.merge` applied to every chunk in `bpe.train_reference`, updating pair counts.

    Arguments as in `_count_pairs_nb`; merges (a, b) -> new_id at the pair's indexed positions.
    """
    s = slot_of[a * V + b]
    n = 0
    e = heads[s]
    while e >= 0:
        n += 1
        e = occ_next[e]
    where = np.empty(n, dtype=np.int64)
    e = heads[s]
    for k in range(n):
        where[k] = occ_pos[e]
        e = occ_next[e]
    heads[s] = -1  # every occurrence is merged now: (a, b) never forms again
    if a == b:
        where.sort()  # overlapping occurrences: left to right, as bpe.merge (see the section comment)
    touched = Dict.empty(key_type=types.int64, value_type=types.int64)  # used as a set of keys
    for i in where:
        j = nxt[i]
        if tok[i] != a or j < 0 or tok[j] != b:
            continue  # stale: position i died, or holds another pair by now
        c = weight[i]
        counts[s] -= c
        p, k = prv[i], nxt[j]
        # forward was: ... tok[p], a, b, tok[k] ...  ->  ... tok[p], new_id, tok[k] ...
        if p >= 0:
            key = tok[p] * V + a
            counts[slot_of[key]] -= c
            touched[key] = 0
        if k >= 0:
            key = b * V + tok[k]
            counts[slot_of[key]] -= c
            touched[key] = 0
            prv[k] = i
        tok[i], tok[j], nxt[i] = new_id, -1, k
        if p >= 0:
            key = tok[p] * V + new_id
            _add_pair_nb(slot_of, counts, heads, occ_pos, occ_next, sizes, key, p, c)
            touched[key] = 0
        if k >= 0:
            key = new_id * V + tok[k]
            _add_pair_nb(slot_of, counts, heads, occ_pos, occ_next, sizes, key, i, c)
            touched[key] = 0
    for key in touched:
        count = counts[slot_of[key]]
        if count > 0:
            heapq.heappush(heap, (-count, key))


def train_fast(chunks, vocab_size, verbose=False):
    """Numba-accelerated `bpe.train_reference`: same arguments (bar max_merges), identical result.

    chunks: list[bytes], vocab_size: int > 256.
    Returns merges: list[(a, b, new_id)], vocab: dict[int, bytes].
    """
    chunk_counts = Counter(chunks)
    words = [w for w in chunk_counts if len(w) > 1]  # a chunk of one byte (or none) holds no pair
    word_counts = np.array([chunk_counts[w] for w in words], dtype=np.int64)
    V = vocab_size  # every id stays < vocab_size, so a * V + b is a unique key for (a, b)
    st = _TrainState(words, V)
    _count_pairs_nb(*st.index(), st.heap, st.tok, st.nxt, st.prv, st.weight, st.starts, st.lengths, word_counts, V)

    vocab = {i: bytes([i]) for i in range(256)}
    id_of = {b: i for i, b in vocab.items()}
    merges = []
    while len(vocab) < vocab_size:
        key, count = _pop_best_pair_nb(st.slot_of, st.counts, st.heap)
        if count == 0:
            break
        a, b = divmod(key, V)
        new_bytes = vocab[a] + vocab[b]
        idx = id_of.get(new_bytes, len(vocab))
        _merge_pair_nb(*st.index(), st.heap, st.tok, st.nxt, st.prv, st.weight, a, b, idx, V)
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
        # Only a split point k where both sides have the length of some token can qualify. Trying
        # every k cost O(L^2) for a token of L bytes (slicing at each k): 17 s for the one 200 KB
        # token that training on 200 KB of "aaaa" makes. A vocabulary has few distinct lengths, so
        # a long token tries only those; a short one (shorter than that list) tries every k.
        lengths = sorted({len(t) for t in ranks})
        is_length = set(lengths)
        for token, rank in ranks.items():
            n = len(token)
            splits = range(1, n) if n <= len(lengths) else [k for k in lengths if k < n and n - k in is_length]
            for k in splits:
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
