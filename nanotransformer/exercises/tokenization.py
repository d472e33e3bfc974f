"""Chapter 01's exercises: the two steps of BPE training.

    get_stats(ids)          against bpe.get_stats
    merge(ids, pair, idx)   against bpe.merge
"""
from .checker import Wrong, case_runner, compare_ints, register


def _stats_case(ids):
    def fn(student, tol):
        from ..bpe import get_stats  # lazy: bpe pulls in the Numba twins

        got = student(list(ids))
        expected = get_stats(list(ids))
        if not isinstance(got, dict):
            raise Wrong(f"counts: expected a dict {{pair: count}}, got {type(got).__name__}")
        for pair, n in expected.items():
            if got.get(pair) != n:
                raise Wrong(f"counts[{pair}]: expected {n}, got {got.get(pair)}")
        extra = set(got) - set(expected)
        if extra:
            pair = sorted(extra)[0]
            raise Wrong(f"counts[{pair}]: expected no entry (the pair never occurs), got {got[pair]}")
        return 0.0

    return fn


register(
    "get_stats", "01-tokenization", "get_stats(ids) -> dict {(a, b): how often b directly follows a}", 0.0,
    case_runner(
        [("short", _stats_case([1, 2, 3, 1, 2])), ("run 'aaaa'", _stats_case([97, 97, 97, 97])), ("single id", _stats_case([7]))],
        "bpe.get_stats",
    ),
)


def _merge_case(ids, pair, idx):
    def fn(student, tol):
        from ..bpe import merge

        got = student(list(ids), tuple(pair), idx)
        return compare_ints("ids", got, merge(list(ids), tuple(pair), idx))

    return fn


register(
    "merge", "01-tokenization", "merge(ids, pair, idx) -> new list with every (non-overlapping) pair replaced by idx", 0.0,
    case_runner(
        [
            ("one occurrence", _merge_case([5, 6, 6, 7, 9, 1], (6, 7), 99)),
            ("pair at both ends", _merge_case([1, 2, 3, 1, 2], (1, 2), 256)),
            ("overlapping run 'aaaaa'", _merge_case([97, 97, 97, 97, 97], (97, 97), 256)),
            ("no occurrence", _merge_case([1, 2, 3], (3, 1), 300)),
            ("empty and single", _merge_case([4], (4, 4), 300)),
        ],
        "bpe.merge",
    ),
)
