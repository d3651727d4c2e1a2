"""BPE on many pre-tokens at once, vectorized with numpy: the same ids as merging each pre-token alone.

Merging one pre-token in Python costs about a microsecond per merge, and the first megabytes of a corpus
bring tens of thousands of pre-tokens never seen before, so encoding merges them together. The pre-tokens
lie end to end in one array of ids. Each round finds, in every pre-token, the pair of lowest merge rank and
merges all its occurrences, left to right and never overlapping; only the pairs beside a merge need a new
rank, looked up in a hash table of `(left id, right id) -> rank`.

Merging every occurrence of the lowest pair in one round equals merging them one at a time when each merge
comes after every merge that creates one of its halves ("creation order"): a pair that a merge creates then
ranks after it, so the lowest rank stays the lowest until its last occurrence is merged. Merge lists learned
by BPE (GPT-2's, lmkit's) are in creation order; `in_creation_order` checks a list.
"""

from __future__ import annotations

import numpy as np

NO_MERGE = np.iinfo(np.int32).max  # the rank of a pair that has no merge, or that crosses pieces
_EMPTY = -1  # the key of a free slot in the hash table; keys of pairs are never negative
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key * this spread well


def in_creation_order(pairs: np.ndarray, products: np.ndarray) -> bool:
    """Whether every merge (row `r` of `pairs`, creating `products[r]`) follows all merges creating its halves."""
    rank = np.arange(len(products))
    created_by = np.full(int(max(products.max(initial=0), pairs.max(initial=0))) + 1, -1)
    np.maximum.at(created_by, products, rank)
    return bool(np.all(created_by[pairs[:, 0]] < rank) and np.all(created_by[pairs[:, 1]] < rank))


class PairRanks:
    """`(left id, right id) -> merge rank` for whole arrays of pairs: an open-addressing hash table in numpy."""

    def __init__(self, pairs: np.ndarray, ranks: np.ndarray, vocab_size: int) -> None:
        bits = max(10, (4 * len(ranks)).bit_length())  # at most a quarter full: probes stay short
        self._width = vocab_size
        self._shift = np.uint64(64 - bits)
        self._mask = (1 << bits) - 1
        self._keys = np.full(1 << bits, _EMPTY, dtype=np.int64)
        self._ranks = np.full(1 << bits, NO_MERGE, dtype=np.int32)
        keys, ranks = self._key(pairs[:, 0], pairs[:, 1]), ranks.astype(np.int32)
        slots = self._slot(keys)
        while len(keys):
            # Each free slot takes the first pair aiming at it; the others probe the next slot.
            first = np.zeros(len(keys), dtype=bool)
            first[np.unique(slots, return_index=True)[1]] = True
            placed = first & (self._keys[slots] == _EMPTY)
            self._keys[slots[placed]], self._ranks[slots[placed]] = keys[placed], ranks[placed]
            keys, ranks, slots = keys[~placed], ranks[~placed], (slots[~placed] + 1) & self._mask

    def _key(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return left.astype(np.int64) * self._width + right

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        return ((keys.view(np.uint64) * _GOLDEN) >> self._shift).view(np.int64)  # wraps modulo 2**64, as wanted

    def lookup(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """The rank of each pair `(left[i], right[i])`, or `NO_MERGE` where there is no such merge."""
        keys = self._key(left, right)
        slots = self._slot(keys)
        stored = self._keys[slots]
        hit = stored == keys
        ranks = np.where(hit, self._ranks[slots], NO_MERGE)
        probing = np.flatnonzero(~hit & (stored != _EMPTY))  # a collision: look in the next slots
        slots, keys = slots[probing], keys[probing]
        while len(probing):
            slots = (slots + 1) & self._mask
            stored = self._keys[slots]
            hit = stored == keys
            ranks[probing[hit]] = self._ranks[slots[hit]]
            more = ~hit & (stored != _EMPTY)
            probing, slots, keys = probing[more], slots[more], keys[more]
        return ranks


class BatchMerger:
    """BPE for a list of pre-tokens at once; exact only for a merge list in creation order (check first)."""

    def __init__(self, pairs: np.ndarray, products: np.ndarray, byte_ids: np.ndarray, vocab_size: int) -> None:
        self._pair_ranks = PairRanks(pairs, np.arange(len(pairs)), vocab_size)
        self._products = products.astype(np.int32)
        self._byte_ids = byte_ids.astype(np.int32)
        # The first round looks up pairs of bytes: a table of all 65,536 is one gather.
        self._byte_pair_ranks = self._pair_ranks.lookup(np.repeat(self._byte_ids, 256), np.tile(self._byte_ids, 256))

    def merge(self, pieces: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of every piece (none empty), end to end in the order given, and how many ids each piece has."""
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        data = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        ids = self._byte_ids[data]
        last = np.zeros(len(ids), dtype=bool)  # whether a position ends its piece (its pair crosses pieces)
        last[np.cumsum(lengths) - 1] = True
        ranks = np.empty(len(ids), dtype=np.int32)  # ranks[i]: the rank of the pair (ids[i], ids[i + 1])
        ranks[:-1] = self._byte_pair_ranks[(data[:-1].astype(np.intp) << 8) | data[1:]]
        ranks[last] = NO_MERGE
        index = np.arange(len(pieces))
        finished: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        while len(index):
            starts = np.cumsum(lengths) - lengths
            lowest = np.minimum.reduceat(ranks, starts)
            done = lowest == NO_MERGE
            # Set finished pieces aside once they hold a quarter of the ids; until then they merge nothing.
            if 4 * int(lengths[done].sum()) >= len(ids):
                done_ids = np.repeat(done, lengths)
                finished.append((index[done], lengths[done], ids[done_ids]))
                ids, ranks, last = ids[~done_ids], ranks[~done_ids], last[~done_ids]
                index, lengths, lowest = index[~done], lengths[~done], lowest[~done]
                starts = np.cumsum(lengths) - lengths
            elif done.any():
                lowest[done] = -1  # no rank equals it
            if len(index):
                ids, ranks, last, lengths = self._merge_round(ids, ranks, last, lengths, starts, lowest)
        return _in_input_order(finished)

    def _merge_round(
        self,
        ids: np.ndarray,
        ranks: np.ndarray,
        last: np.ndarray,
        lengths: np.ndarray,
        starts: np.ndarray,
        lowest: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Merge every occurrence of each piece's lowest pair; return the shorter arrays."""
        at = _leftmost_nonoverlapping(np.flatnonzero(ranks == np.repeat(lowest, lengths)))
        ids[at] = self._products[ranks[at]]
        last[at] = last[at + 1]
        keep = np.ones(len(ids), dtype=bool)
        keep[at + 1] = False
        ids, ranks, last = ids[keep], ranks[keep], last[keep]
        piece_of_merge = np.searchsorted(starts, at, side="right") - 1
        lengths = lengths - np.bincount(piece_of_merge, minlength=len(lengths))
        at -= np.arange(len(at))  # where the new tokens are once the right halves are gone
        ranks[at] = NO_MERGE
        # New pairs: each new token with its right neighbour, and its left neighbour with it, within the piece.
        changed = np.concatenate((at, at[at > 0] - 1))
        changed = changed[~last[changed]]
        ranks[changed] = self._pair_ranks.lookup(ids[changed], ids[changed + 1])
        return ids, ranks, last, lengths


def _leftmost_nonoverlapping(at: np.ndarray) -> np.ndarray:
    """Thin out runs of adjacent positions (a pair like (x, x) in "xxx") to every other one, from the left."""
    adjacent = at[1:] - at[:-1] == 1
    if not adjacent.any():
        return at
    index = np.arange(len(at))
    run_start = np.maximum.accumulate(np.where(np.concatenate(([True], ~adjacent)), index, 0))
    return at[(index - run_start) % 2 == 0]


def _in_input_order(finished: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Reassemble the pieces finished round by round into the order they were given."""
    if not finished:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    index, lengths, ids = (np.concatenate(parts) for parts in zip(*finished, strict=True))
    order = np.argsort(index, kind="stable")
    starts = np.cumsum(lengths) - lengths
    sorted_lengths = lengths[order]
    # Position j of the output is element (j - its piece's output start) of that piece in `ids`.
    out_starts = np.cumsum(sorted_lengths) - sorted_lengths
    gather = np.repeat(starts[order] - out_starts, sorted_lengths) + np.arange(int(sorted_lengths.sum()))
    return ids[gather], sorted_lengths
