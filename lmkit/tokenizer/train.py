"""Byte-level BPE training: count the pre-tokens of a corpus, then merge the most frequent pair, again and again.

The merge loop works on the distinct pre-tokens ("words"), each a list of integer symbols with its count:
- `pair_counts` holds, for every adjacent pair of symbols, how often it occurs (weighted by word counts);
- `where` maps each pair to the words that contain it (possibly stale: a word is checked before use);
- a heap of `(-count, tie_key, pair)` gives the most frequent pair, ties broken by the greatest bytes.
Merging a pair only touches the words that contain it, and only the counts of its neighbours change.

Pairs that contain the newest symbol are the only ones whose counts grow, and they are all made by the
merge that makes that symbol; every other count only shrinks. So a pair's list of words is complete when it
is made, and a heap entry can only overstate a count, never understate it.

Two merges never make the same bytes, so a symbol is its bytes, as in a plain implementation that keeps
words as tuples of bytes. Why: a stretch of a word whose ends have always been token boundaries is merged
exactly as if it stood alone. Once (X, Y) makes s, s alone is one token from then on; a later adjacent pair
(X2, Y2) spelling s would be such a stretch in two tokens.

Long words (a minified file, a DNA string, one word of a megabyte) would make that loop quadratic: each
merge scans and edits the whole word. Words of `LONG_WORD` symbols or more live instead in `_LongWords`,
linked lists indexed by pair position, so a merge costs only its own occurrences there. Both paths make
the same merges; the split is purely about speed.
"""

from __future__ import annotations

import heapq
import os
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lmkit.errors import InputError
from lmkit.progress import progress_bar
from lmkit.tokenizer.counting import count_pretokens
from lmkit.tokenizer.pretokenize import check_pattern, check_special_tokens
from lmkit.tokenizer.sources import Corpus

Vocab = dict[int, bytes]
Merges = list[tuple[bytes, bytes]]

# Words at least this long (in bytes) are merged through the position index of `_LongWords`; shorter ones
# by scanning the word, which is faster for the short words that make up ordinary text.
LONG_WORD = 256

# heapq pops the smallest entry, but ties must go to the lexicographically greatest (bytes_a, bytes_b).
# Spelling each byte x as (1, 255 - x) and ending a token with 2 reverses the order of byte strings, a
# prefix included ("ab" > "a" and spelled("ab") < spelled("a")), and keeps the concatenated spelling of a
# pair ordered like the tuple (bytes_a, bytes_b).
_REVERSED = [bytes((1, 255 - x)) for x in range(256)]


def _reversed_spelling(token: bytes) -> bytes:
    return b"".join(_REVERSED[x] for x in token) + b"\x02"


@dataclass
class TrainedBpe:
    """A trained tokenizer and the facts about its training that `lmkit tokenizer train` reports."""

    vocab: Vocab
    merges: Merges
    special_tokens: list[str]
    corpus_bytes: int
    documents: int
    distinct_pretokens: int
    pattern: str = "gpt2"


def _byte_pairs(words: list[bytes], freqs: list[int], shift: int) -> tuple[dict[int, int], dict[int, list[int]]]:
    """Count the adjacent byte pairs of all words (weighted by `freqs`) and list the words holding each pair.

    Returns `{pair: count}` and `{pair: word indices}` with pairs as a * shift + b. A word holding a pair
    twice is listed twice; the merge loop finds nothing left to merge the second time.
    """
    counts: dict[bytes, int] = defaultdict(int)
    where: dict[bytes, list[int]] = defaultdict(list)
    for j, word in enumerate(words):
        f = freqs[j]
        for i in range(len(word) - 1):
            pair = word[i : i + 2]  # two-byte slices hash faster than they can be turned into codes here
            counts[pair] += f
            where[pair].append(j)
    return {p[0] * shift + p[1]: c for p, c in counts.items()}, {p[0] * shift + p[1]: js for p, js in where.items()}


class _MergeState:
    """The words, pair counts, pair -> words index and heap of one training run."""

    def __init__(self, word_counts: Mapping[bytes, int], num_symbols: int) -> None:
        # A pair is coded as one int, a * shift + b: cheaper to hash and store than a tuple.
        self.shift = 1 << max(num_symbols, 256).bit_length()
        self.tokens: list[bytes] = [bytes([b]) for b in range(256)]
        self.spelling: list[bytes] = [_reversed_spelling(t) for t in self.tokens]
        multi = [(w, c) for w, c in word_counts.items() if 1 < len(w) < LONG_WORD]  # a single byte has no pair
        self.words: list[list[int]] = [list(w) for w, _ in multi]
        self.freqs: list[int] = [c for _, c in multi]
        self.pair_counts, self.where = _byte_pairs([w for w, _ in multi], self.freqs, self.shift)
        long_words = [(w, c) for w, c in word_counts.items() if len(w) >= LONG_WORD]
        self.long = _LongWords(long_words, self.shift) if long_words else None  # None: ordinary text
        if self.long is not None:
            for code, count in self.long.initial_counts().items():
                self.pair_counts[code] = self.pair_counts.get(code, 0) + count
        self.heap = [(-c, self._tie_key(code), code) for code, c in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def _tie_key(self, code: int) -> bytes:
        a, b = divmod(code, self.shift)
        return self.spelling[a] + self.spelling[b]

    def best_pair(self) -> int | None:
        """Pop the most frequent pair (greatest bytes among ties), or None when no pair is left.

        Heap entries may be stale: counts only go down between pushes, so an entry whose count is
        out of date is pushed back with its current count.
        """
        heap, counts = self.heap, self.pair_counts
        while heap:
            neg, key, code = heapq.heappop(heap)
            count = counts.get(code, 0)
            if count == -neg:
                return code
            if count:
                heapq.heappush(heap, (-count, key, code))
        return None

    def merge(self, code: int) -> tuple[bytes, bytes]:
        """Replace every occurrence of the pair `code` by a new symbol, updating counts, index and heap."""
        shift = self.shift
        a, b = divmod(code, shift)
        product = self.tokens[a] + self.tokens[b]
        z = len(self.tokens)
        self.tokens.append(product)
        # The product's spelling is its halves' (less the first one's end mark): copied, not re-spelt byte by
        # byte, which matters when tokens grow to many kilobytes (one long word with few repeats).
        self.spelling.append(self.spelling[a][:-1] + self.spelling[b])
        new_where = self._replace(code, a, b, z)
        long_counts = self.long.replace(code, a, b, z, self.pair_counts) if self.long is not None else {}
        del self.pair_counts[code]
        counts, where, heap, freq_of = self.pair_counts, self.where, self.heap, self.freqs.__getitem__
        for pc, js in new_where.items():
            if js:  # empty where an "a b a b" took its only entry back
                counts[pc] = count = sum(map(freq_of, js))
                where[pc] = js
                heapq.heappush(heap, (-count, self._tie_key(pc), pc))
        for pc, made in long_counts.items():
            if made:
                # A pair also made in short words was pushed above with part of its count; that entry
                # understates it, but this one is exact, pops first, and the other is dropped once merged.
                counts[pc] = count = counts.get(pc, 0) + made
                heapq.heappush(heap, (-count, self._tie_key(pc), pc))
        return self.tokens[a], self.tokens[b]

    def _replace(self, code: int, a: int, b: int, z: int) -> dict[int, list[int]]:
        """The hot loop: merge (a, b) into z in every word that holds it.

        Returns, for each pair that contains z, its words, listed once per occurrence: the pair's count is
        the sum of their word counts. Pairs with older neighbours lose the merged occurrences in place. In
        "a b a b" the second merge's left neighbour is the z just made, so the (z, a) listed a moment ago
        is taken back: that is what `p == z` handles.
        """
        shift, counts, words, freqs = self.shift, self.pair_counts, self.words, self.freqs
        new_where: dict[int, list[int]] = defaultdict(list)
        b_row, z_row, z_a = b * shift, z * shift, z * shift + a
        for j in self.where.pop(code, ()):
            word = words[j]
            left = word.count(a)  # occurrences of a still to look at; 0 if this index entry is stale
            if not left:
                continue
            f = freqs[j]
            i = 0
            while left:
                i = word.index(a, i)
                left -= 1
                if i + 1 < len(word) and word[i + 1] == b:
                    if i:
                        p = word[i - 1]
                        if p == z:
                            new_where[z_a].pop()
                        else:
                            counts[p * shift + a] -= f
                        new_where[p * shift + z].append(j)
                    if i + 2 < len(word):
                        nxt = word[i + 2]
                        counts[b_row + nxt] -= f
                        new_where[z_row + nxt].append(j)
                    word[i] = z
                    del word[i + 1]
                    if a == b:
                        left -= 1  # the b just merged was one of the a's counted
                i += 1
        return new_where


class _LongWords:
    """Long words as one doubly linked list of symbols, with the positions of every pair, so that merging
    a pair visits only its occurrences (near-linear in the word's length over a whole training run).

    The words are laid end to end in `sym`, each followed by a -1 that no pair crosses; `nxt` and `prv`
    link the live positions, and a position merged into its left neighbour gets symbol -1. `where` lists,
    for each pair, the positions of its left symbol in increasing order: a pair's list is complete when the
    pair is made (see the module docstring), and merging walks it left to right as the word scan does. An
    entry goes stale when a neighbouring merge changes either symbol; it is checked before use.
    """

    def __init__(self, words: list[tuple[bytes, int]], shift: int) -> None:
        self.shift = shift
        self.sym: list[int] = [-1]
        self.freq: list[int] = [0]
        for word, count in words:
            self.sym.extend(word)
            self.sym.append(-1)
            self.freq.extend([count] * (len(word) + 1))
        size = len(self.sym)
        self.nxt = list(range(1, size + 1))
        self.prv = list(range(-1, size - 1))
        self.where: dict[int, list[int]] = defaultdict(list)

    def initial_counts(self) -> dict[int, int]:
        """Index every adjacent byte pair and return `{pair code: count}`."""
        counts: dict[int, int] = defaultdict(int)
        sym, freq, shift, where = self.sym, self.freq, self.shift, self.where
        for i in range(len(sym) - 1):
            a, b = sym[i], sym[i + 1]
            if a >= 0 and b >= 0:
                code = a * shift + b
                counts[code] += freq[i]
                where[code].append(i)
        return counts

    def replace(self, code: int, a: int, b: int, z: int, counts: dict[int, int]) -> dict[int, int]:
        """Merge (a, b) into z at every live occurrence; lower the counts of the pairs it breaks in `counts`
        and return the counts of the pairs it makes (all containing z), whose positions it indexes."""
        sym, nxt, prv, freq, shift = self.sym, self.nxt, self.prv, self.freq, self.shift
        made: dict[int, int] = defaultdict(int)
        new_where: dict[int, list[int]] = defaultdict(list)
        z_a = z * shift + a
        for i in self.where.pop(code, ()):
            j = nxt[i]
            if sym[i] != a or sym[j] != b:
                continue  # stale: a neighbouring merge took one of the two symbols
            f = freq[i]
            p, k = prv[i], nxt[j]
            left, right = sym[p], sym[k]
            if left >= 0:
                if left == z:  # "a b a b": the (z, a) just indexed at p is now (z, z)
                    new_where[z_a].pop()
                    made[z_a] -= f
                else:
                    counts[left * shift + a] -= f
                new_where[left * shift + z].append(p)
                made[left * shift + z] += f
            if right >= 0:
                counts[b * shift + right] -= f
                new_where[z * shift + right].append(i)
                made[z * shift + right] += f
            sym[i], sym[j] = z, -1
            nxt[i], prv[k] = k, i
        for pc, positions in new_where.items():
            if positions:
                self.where[pc] = positions
        return made


def learn_merges(word_counts: Mapping[bytes, int], num_merges: int, *, progress: bool = False) -> Merges:
    """The first `num_merges` merges (fewer if no pair is left) of BPE over words with the given counts."""
    state = _MergeState(word_counts, 256 + num_merges)
    merges: Merges = []
    with progress_bar("Merging", num_merges, "merges", enabled=progress) as bar:
        while len(merges) < num_merges:
            code = state.best_pair()
            if code is None:
                break
            merges.append(state.merge(code))
            bar.advance(1)
    return merges


def build_vocab(special_tokens: list[str], merges: Merges) -> Vocab:
    """Ids in order: the special tokens as given, the 256 single bytes, then each merge's product."""
    tokens = [t.encode("utf-8") for t in special_tokens] + [bytes([b]) for b in range(256)]
    tokens += [a + b for a, b in merges]
    return dict(enumerate(tokens))


def train_bpe_with_stats(
    input_path: Corpus | str | os.PathLike | Sequence[str | os.PathLike],
    vocab_size: int,
    special_tokens: list[str] | None,
    *,
    num_workers: int | None = None,
    progress: bool = False,
    pattern: str = "gpt2",
) -> TrainedBpe:
    """Train a byte-level BPE tokenizer and return it with facts about the corpus (see `train_bpe`)."""
    pattern = check_pattern(pattern)
    specials = check_special_tokens(special_tokens)
    smallest = 256 + len(specials)
    if vocab_size < smallest:
        raise InputError(
            f"vocab size {vocab_size} is too small: it must be at least {smallest} "
            f"(256 bytes + {len(specials)} special tokens)"
        )
    if num_workers is not None and num_workers < 1:
        raise InputError(f"workers must be at least 1, got {num_workers}")
    counted = count_pretokens(input_path, specials, num_workers=num_workers, progress=progress, pattern=pattern)
    word_counts = {w.encode("utf-8"): c for w, c in counted.counts.items()}
    merges = learn_merges(word_counts, vocab_size - smallest, progress=progress)
    return TrainedBpe(
        vocab=build_vocab(specials, merges),
        merges=merges,
        special_tokens=specials,
        corpus_bytes=counted.corpus_bytes,
        documents=counted.documents,
        distinct_pretokens=len(word_counts),
        pattern=pattern,
    )


def display_token(token: bytes) -> str:
    """A token as readable text: UTF-8 where it decodes, escapes (\\n, \\xe2) for the rest."""
    text = token.decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _peak_memory_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child (the counting workers)."""
    import resource

    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB elsewhere
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 1e6
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit / 1e6
    return own, child


def training_summary(trained: TrainedBpe, seconds: float, longest: int = 5) -> dict[str, object]:
    """The facts `lmkit tokenizer train` reports, as a flat dict (rich table or JSON)."""
    own_mb, worker_mb = _peak_memory_mb()
    products = sorted((a + b for a, b in trained.merges), key=len, reverse=True)
    return {
        "corpus bytes": trained.corpus_bytes,
        "documents": trained.documents,
        "distinct pre-tokens": trained.distinct_pretokens,
        "special tokens": trained.special_tokens,
        "pattern": trained.pattern,
        "vocab size": len(trained.vocab),
        "merges": len(trained.merges),
        "wall time (s)": round(seconds, 3),
        "peak memory (MB)": round(own_mb, 1),
        "peak memory per worker (MB)": round(worker_mb, 1),
        "longest tokens": [display_token(t) for t in products[:longest]],
    }


def train_bpe(
    input_path: Corpus | str | os.PathLike | Sequence[str | os.PathLike],
    vocab_size: int,
    special_tokens: list[str] | None,
    *,
    num_workers: int | None = None,
    progress: bool = False,
    pattern: str = "gpt2",
) -> tuple[Vocab, Merges]:
    """Train a byte-level BPE tokenizer on a UTF-8 corpus: a text file, or files, folders and globs of text,
    JSON Lines or Parquet, plain or compressed (see `lmkit.tokenizer.sources.find_corpus`; their documents are
    joined by the first special token), or a `Corpus`.

    Returns `(vocab, merges)`: vocab maps ids to bytes (special tokens first, in the order given, then the
    256 bytes, then one token per merge); merges are the merged pairs in order of creation. Ties between
    equally frequent pairs go to the lexicographically greatest `(bytes_a, bytes_b)`. `pattern` splits the text
    into pre-tokens: a preset (gpt2, gpt4, o200k, llama3) or a regex. Raises InputError for a missing, empty
    or non-UTF-8 corpus, an empty special token, a bad pattern, or a vocab size below 256 + specials.
    """
    trained = train_bpe_with_stats(
        input_path, vocab_size, special_tokens, num_workers=num_workers, progress=progress, pattern=pattern
    )
    return trained.vocab, trained.merges
