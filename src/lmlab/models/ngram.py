"""N-gram language models: counting, smoothing, scoring, sampling and ARPA files.

The model works on integer token ids, so one class serves word-level models
(whitespace or jieba words) and subword models (ids from any lmlab tokenizer).
Every sentence is padded like KenLM and SRILM do: ``<s> w1 ... wk </s>``, one
``<s>`` that is context only (never predicted) and one ``</s>`` that is.

Internal vocabulary: id 0 is ``<unk>``, 1 ``<s>``, 2 ``</s>``, then every
training id seen at least ``min_count`` times. The caller's ids ("user ids",
``0 <= id < vocab_size``) map to internal ids through ``id_map``; ids unseen in
training, rarer than ``min_count`` or out of range map to ``<unk>`` and are
counted in ``NgramScore.oov``.

Storage: the n-grams of order n sit in one sorted int64 array of keys,
``key = index of the (n-1)-gram prefix * V + last word`` (the layout of a
trie flattened into arrays), so any order fits in an int64 and a lookup is one
``np.searchsorted`` per order for all positions at once. Each entry carries a
log10 probability and a log10 backoff weight, float32 as in KenLM: exactly the
contents of an ARPA file.

Smoothing:

* ``kn``: interpolated modified Kneser-Ney (Chen & Goodman 1998), following
  KenLM's lmplz (not checked against lmplz itself: the kenlm package on PyPI
  only queries models; the tests check KenLM's queries instead): three
  discounts D1, D2, D3+ per order from the count-of-counts n1..n4 of that
  order; lower orders use continuation counts (the number of distinct words
  seen before the n-gram), except n-grams that
  start with ``<s>``, which keep their raw counts (nothing can precede
  ``<s>``); the unigrams are interpolated with the uniform distribution over
  the vocabulary that can be predicted (every word, ``<unk>`` and ``</s>``;
  not ``<s>``). ``<unk>`` has no count of its own unless ``min_count`` maps
  rare words to it, so it gets only the uniform share: p(<unk>) = gamma/|V|,
  as in KenLM. The interpolated model is stored in backoff form: the
  probability of each seen n-gram is its full interpolated probability and
  the backoff weight of a context is its interpolation weight gamma. For a
  context h and a word w unseen after it, interpolated KN gives
  gamma(h) * p(w | shorter h), which is exactly the backoff rule, so the ARPA
  export is exact.
* ``addk``: Lidstone's add-k on the highest order available at each position
  (the full n-1 words of context, fewer just after ``<s>``):
  p(w|h) = (c(h, w) + k) / (c(h) + k |V|); add-one is k=1. An unseen context
  gives 1/|V|. Not a backoff model, so it has no ARPA export.
* ``stupid``: stupid backoff (Brants et al. 2007): c(h, w) / c(h) for the
  longest seen n-gram, times alpha=0.4 for each order backed off. Scores, not
  probabilities: they do not sum to 1, so its "perplexity" is not a true
  perplexity (``NgramScore.normalized`` is False and the CLI says so). Its
  unigram scores are add-one smoothed so that ``<unk>`` gets a finite score
  (Brants et al. use relative frequencies). Sampling renormalizes the scores.

Files: ``save`` writes an ARPA file (``.arpa``: kn models and imported ARPA
models) with a ``# lmlab-ngram {json}`` comment line before ``\\data\\`` for
lmlab's own settings (KenLM skips ``#`` lines), or an ``.npz`` (any model: the
same arrays, loaded without pickle).
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.atomic import atomic_open
from lmlab.errors import LmlabError

UNK, BOS, EOS = 0, 1, 2
SPECIALS = ("<unk>", "<s>", "</s>")
SMOOTHINGS = ("kn", "addk", "stupid")
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback defaults
NEVER = -99.0  # log10 "probability" of <s>, which is never predicted (ARPA convention)
LN10 = math.log(10.0)
META_TAG = "# lmlab-ngram "


class DiscountFallbackWarning(UserWarning):
    """Too little data to estimate Kneser-Ney discounts; fixed fallback discounts were used."""


@dataclass
class NgramScore:
    """Summed natural-log loss over ``tokens`` predicted tokens (each ``</s>`` included)."""

    nll: float
    tokens: int
    oov: int  # predicted tokens that were mapped to <unk>
    n_bytes: int = 0  # UTF-8 bytes of the scored text, when the caller knows it
    normalized: bool = True  # False for stupid backoff: scores, not probabilities

    @property
    def perplexity(self) -> float:
        """exp(nll / tokens); for stupid backoff a pseudo-perplexity (see ``normalized``)."""
        return math.exp(min(self.nll / max(self.tokens, 1), 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(self.n_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"nll": self.nll, "tokens": self.tokens, "oov": self.oov,
                "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "bytes": self.n_bytes, "normalized": self.normalized}


# --------------------------------------------------------------------------- counting


def pad_stream(sequences: Sequence[np.ndarray]) -> np.ndarray:
    """One int64 stream ``<s> s1 </s> <s> s2 </s> ...`` of internal ids."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    flat = np.concatenate(sequences) if len(sequences) else np.zeros(0, dtype=np.int64)
    return _pad_flat(flat, lengths)


def _pad_flat(flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``pad_stream`` of sequences given as one array and their lengths."""
    starts = np.concatenate([[0], np.cumsum(lengths + 2)[:-1]]).astype(np.int64)
    stream = np.empty(int((lengths + 2).sum()), dtype=np.int64)
    words = np.ones(len(stream), dtype=bool)
    words[starts] = words[starts + lengths + 1] = False
    stream[starts] = BOS
    stream[starts + lengths + 1] = EOS
    if words.any():
        stream[words] = flat
    return stream


class KeyIndex:
    """Positions of int64 keys in a table of distinct keys, by open addressing.

    KenLM's "probing" structure in numpy: a power-of-two table at most a quarter
    full (half, past a million keys, to bound memory), each key stored at its
    multiplicative hash or the first free slot after it (linear probing). A
    lookup reads one slot, rarely two, where a binary search over a million keys
    (``np.searchsorted``) reads twenty, each a cache miss: about 5x faster per
    query here. Both building and querying run as a few vectorized rounds, one
    per probe step still needed by some key.

    Each slot holds the key and its position side by side, so that a lookup reads
    one entry (one cache miss) and compares without a second read from ``keys``:
    packed into one int64 (key in the high bits) when both fit in 63 bits, which
    they do unless the model is very large, else as a 16-byte pair. At a quarter
    full, a query that needs a second probe is rare enough that the extra rounds
    (each a few numpy passes) cost less than the larger table; measured on the
    n-gram benchmark's trigram, a whole query ran about 10% faster than with
    16-byte slots at half full, in the same memory.
    """

    _MUL = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: Knuth's multiplicative hash

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys
        spread = 4 if len(keys) <= 1 << 20 else 2
        bits = max(int(np.ceil(np.log2(spread * len(keys) + 1))), 1)
        self.mask = (1 << bits) - 1
        self.shift = np.uint64(64 - bits)
        slots = np.full(1 << bits, -1, dtype=np.int64)  # position in keys, or -1
        h = self._hash(keys)
        pending = np.arange(len(keys))
        while len(pending):
            at = h[pending]
            free = slots[at] < 0
            slots[at[free]] = pending[free]  # of several keys for one slot, one wins
            won = np.zeros(len(pending), dtype=bool)
            won[free] = slots[at[free]] == pending[free]
            pending = pending[~won]
            h[pending] = (h[pending] + 1) & self.mask
        used = slots >= 0
        pbits = max(len(keys).bit_length(), 1)
        # Key bits with room for two values above every key: the free slots' mark
        # and the one that out-of-range queries are clamped to.
        kbits = (int(keys.max()) if len(keys) else 0).bit_length() + 2
        if kbits + pbits <= 63:
            self.pbits = np.int64(pbits)
            self.free = np.int64(((1 << kbits) - 1) << pbits)
            self.top = np.int64((1 << kbits) - 2)  # no key is this large
            table = np.full(1 << bits, self.free, dtype=np.int64)
            table[used] = (keys[slots[used]] << self.pbits) | slots[used]
            self.entries = table
        else:
            self.pbits = None
            # A free slot holds key -1 (no n-gram key is negative). Viewed as one
            # 16-byte element per slot: numpy gathers those in one pass, where row
            # indexing of a 2-d array takes a slower generic path.
            wide = np.full((1 << bits, 2), -1, dtype=np.int64)
            wide[used, 0] = keys[slots[used]]
            wide[:, 1] = slots
            self.entries = wide.view(np.complex128).reshape(-1)

    def _hash(self, q: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            u = np.ascontiguousarray(q, dtype=np.int64).view(np.uint64)
            return ((u * self._MUL) >> self.shift).view(np.int64)

    def _probe(self, h: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read slots ``h`` for queries ``q``: (found, position where found, slot taken)."""
        entry = self.entries[h]
        if self.pbits is not None:
            hit = (entry >> self.pbits) == q
            return hit, entry & ((np.int64(1) << self.pbits) - 1), entry != self.free
        pair = entry.view(np.int64).reshape(-1, 2)  # (n, 2): key, position
        return pair[:, 0] == q, pair[:, 1], pair[:, 0] >= 0

    def find(self, q: np.ndarray) -> np.ndarray:
        """For each key of ``q`` (int64, any shape; negative ones are absent), its position
        in ``keys``, or -1."""
        flat = np.ascontiguousarray(q, dtype=np.int64).reshape(-1)
        if self.pbits is not None:
            flat = np.minimum(flat, self.top)  # too large to be a key; not the free mark
        h = self._hash(flat)
        # Round one covers every query; most end there (a hit, or a free slot).
        hit, pos, taken = self._probe(h, flat)
        out = np.where(hit, pos, -1)
        todo = np.flatnonzero(~hit & taken)
        while len(todo):
            h_t = (h[todo] + 1) & self.mask
            h[todo] = h_t
            hit, pos, taken = self._probe(h_t, flat[todo])
            out[todo[hit]] = pos[hit]
            todo = todo[~hit & taken]
        return out.reshape(q.shape)


def _sentence_position(tok: np.ndarray) -> np.ndarray:
    """Distance of each position from the last ``<s>`` at or before it (or the row start)."""
    t = np.broadcast_to(np.arange(tok.shape[-1]), tok.shape)
    start = np.maximum.accumulate(np.where(tok == BOS, t, 0), axis=-1)
    return t - start


def count_ngrams(stream: np.ndarray, order: int, V: int
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
    """Count every n-gram of orders 1..order inside the sentences of a padded stream.

    Returns per order (index n-1): sorted keys, counts, and for n >= 2 the index
    of each n-gram's suffix (its last n-1 words) in the table of order n-1.
    Unigrams are dense: key = word id, for all V ids.
    """
    pos = _sentence_position(stream)
    keys = [np.arange(V, dtype=np.int64)]
    counts = [np.bincount(stream, minlength=V).astype(np.int64)]
    suffixes: list[np.ndarray | None] = [None]
    idx = stream  # index of the (n-1)-gram ending at each position (-1: none)
    for n in range(2, order + 1):
        valid = pos >= n - 1  # the n-gram ending here starts inside the sentence
        prefix = np.concatenate([[-1], idx[:-1]])  # the (n-1)-gram ending one step earlier
        key = prefix[valid] * V + stream[valid]
        uniq, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
        suffix = np.empty(len(uniq), dtype=np.int64)
        suffix[inv] = idx[valid]  # the (n-1)-gram ending at the same position
        idx = np.full(len(stream), -1, dtype=np.int64)
        idx[valid] = inv
        keys.append(uniq.astype(np.int64))
        counts.append(cnt.astype(np.int64))
        suffixes.append(suffix)
    return keys, counts, suffixes


def _first_words(keys: list[np.ndarray], V: int) -> list[np.ndarray]:
    """The first word of every n-gram of every order, following the prefix chain."""
    first = [keys[0]]
    for k in keys[1:]:
        first.append(first[-1][k // V])
    return first


def kn_discounts(adjusted: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Chen & Goodman's D1, D2, D3+ from the count-of-counts n1..n4 of one order.

    Returns (count-of-counts, discounts), discounts None when they cannot be
    estimated: some n_k is zero, or a D_i falls outside (0, i] (KenLM's test).
    """
    nk = np.array([(adjusted == k).sum() for k in (1, 2, 3, 4)], dtype=np.int64)
    if (nk == 0).any():
        return nk, None
    y = nk[0] / (nk[0] + 2 * nk[1])
    d = tuple(float(i - (i + 1) * y * nk[i] / nk[i - 1]) for i in (1, 2, 3))
    if not all(0 < di <= i for i, di in zip((1, 2, 3), d, strict=True)):
        return nk, None
    return nk, d  # type: ignore[return-value]


def _log10(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log10(p)


class WordVocab:
    """Words <-> ids for word-level models; ids follow the order of first appearance."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]]) -> WordVocab:
        """Every distinct word of ``sentences``."""
        # dict.fromkeys interns in C, faster than numpy can sort the words as strings.
        return cls(list(dict.fromkeys(itertools.chain.from_iterable(sentences))))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: Iterable[str], count: int = -1) -> np.ndarray:
        """The id of each word (``count`` of them, if known); -1 for words outside the
        vocabulary."""
        return np.fromiter(map(self.index.get, words, itertools.repeat(-1)), np.int64, count)

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.words[i] if 0 <= i < len(self.words) else "<unk>" for i in ids]


# --------------------------------------------------------------------------- the model


class NgramLM:
    """An n-gram language model over integer token ids, in backoff form.

    Build one with :meth:`fit` (or :meth:`fit_words` for word lists), or read
    one with :meth:`load` / :meth:`from_arpa`.
    """

    def __init__(self, *, order: int, smoothing: str, vocab: list[str], id_map: np.ndarray,
                 keys: list[np.ndarray], logp: list[np.ndarray], logb: list[np.ndarray],
                 names: list[str] | None = None, alpha: float = 0.4, k: float = 1.0,
                 discounts: list[tuple[float, float, float]] | None = None,
                 discount_fallback_orders: tuple[int, ...] = (),
                 meta: dict[str, Any] | None = None) -> None:
        self.order = order
        self.smoothing = smoothing  # kn, addk, stupid, or backoff (an ARPA file from elsewhere)
        self.vocab = vocab  # internal id -> string; 0..2 are <unk> <s> </s>
        self.id_map = id_map  # user id -> internal id
        self.names = names  # user id -> string (word-level models), or None: ids are the names
        self.keys, self.logp, self.logb = keys, logp, logb
        self.alpha, self.k = alpha, k
        self.discounts = discounts  # per order, (D1, D2, D3+), kn only
        self.discount_fallback_orders = discount_fallback_orders
        self.meta = dict(meta or {})
        self._words: WordVocab | None = None
        self._word_internal: dict[str, int] | None = None  # built on first score_words
        self._logb_padded: list[np.ndarray] | None = None  # built on first query
        self._indexes: dict[int, KeyIndex] = {}  # per order, built on first query

    @property
    def V(self) -> int:
        """Size of the internal vocabulary (<unk>, <s>, </s> and the kept words)."""
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        """Size of the caller's id space: ids 0..vocab_size-1."""
        return len(self.id_map)

    @property
    def num_params(self) -> int:
        """Stored n-gram entries: one probability each, plus every non-zero backoff weight."""
        return int(sum(len(p) for p in self.logp) + sum(np.count_nonzero(b) for b in self.logb))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{len(k):,}" for k in self.keys)
        return f"NgramLM(order={self.order}, smoothing={self.smoothing!r}, n-grams=[{sizes}])"

    # ------------------------------------------------------------------ estimation

    @classmethod
    def fit(cls, sequences: Iterable[Sequence[int] | np.ndarray], *, order: int, vocab_size: int,
            smoothing: str = "kn", k: float = 1.0, alpha: float = 0.4, min_count: int = 1,
            discount_fallback: bool = True,
            fallback_discounts: tuple[float, float, float] = FALLBACK_DISCOUNTS,
            names: Sequence[str] | None = None, meta: dict[str, Any] | None = None) -> NgramLM:
        """Count and smooth n-grams of ``sequences`` (one 1-D array of ids per sentence).

        Args:
            sequences: token ids in [0, vocab_size), one sequence per sentence or
                document; <s> and </s> are added here
            order: n, the longest n-gram (1 = unigram model)
            vocab_size: size of the id space
            smoothing: ``kn`` (interpolated modified Kneser-Ney), ``addk`` or ``stupid``
            k: add-k's pseudo-count (1 = add-one / Laplace)
            alpha: stupid backoff's factor per backed-off order
            min_count: ids seen fewer times in training map to <unk>
            discount_fallback: when an order's count-of-counts cannot give
                Kneser-Ney discounts, use ``fallback_discounts`` (with a
                warning) instead of raising
            fallback_discounts: D1, D2, D3+ used then (KenLM's defaults)
            names: a string for each id (word-level models; the ARPA words)
            meta: free-form settings saved with the model (level, tokenizer...)
        """
        if not isinstance(order, int | np.integer) or order < 1:
            raise LmlabError(f"n-gram order must be a positive integer, got {order!r}")
        if smoothing not in SMOOTHINGS:
            raise LmlabError(f"unknown smoothing {smoothing!r}; use one of {', '.join(SMOOTHINGS)}")
        if vocab_size < 1:
            raise LmlabError("empty vocabulary: vocab_size must be at least 1")
        if names is not None and len(names) != vocab_size:
            raise LmlabError(f"{len(names)} names for a vocabulary of {vocab_size} ids")
        if smoothing == "addk" and not k > 0:
            raise LmlabError(f"add-k needs k > 0, got {k}")
        if smoothing == "stupid" and not 0 < alpha < 1:
            raise LmlabError(f"stupid backoff needs 0 < alpha < 1, got {alpha}")
        if min_count < 1:
            raise LmlabError(f"min_count must be at least 1, got {min_count}")
        seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
        if not seqs or not any(len(s) for s in seqs):
            raise LmlabError("empty training data: no tokens to count")
        ids = np.concatenate(seqs)
        if ids.min() < 0 or ids.max() >= vocab_size:
            bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
            raise LmlabError(f"training id {bad} is outside the vocabulary [0, {vocab_size})")
        longest = max(len(s) for s in seqs) + 2
        if order > longest:
            raise LmlabError(
                f"order {order} is longer than every padded training sentence (the longest "
                f"has {longest - 2} tokens, {longest} with <s> and </s>): no {order}-gram "
                f"exists; use order <= {longest} or more data")

        # The internal vocabulary: specials, then the kept ids in increasing order.
        freq = np.bincount(ids, minlength=vocab_size)
        keep = freq >= min_count
        if names is not None:  # a word spelled like a special token is just unknown
            keep &= ~np.isin(np.asarray(names, dtype=str), SPECIALS)
        kept = np.flatnonzero(keep)
        id_map = np.full(vocab_size, UNK, dtype=np.int64)
        id_map[kept] = 3 + np.arange(len(kept))
        vocab = list(SPECIALS) + ([str(names[i]) for i in kept] if names is not None
                                  else [str(i) for i in kept])
        V = len(vocab)
        stream = pad_stream([id_map[s] for s in seqs])
        keys, counts, suffixes = count_ngrams(stream, order, V)

        model = cls(order=order, smoothing=smoothing, vocab=vocab, id_map=id_map, keys=keys,
                    logp=[], logb=[], names=list(names) if names is not None else None,
                    alpha=alpha, k=k, meta=meta)
        if smoothing == "kn":
            model._estimate_kn(counts, suffixes, discount_fallback, fallback_discounts)
        else:
            model._estimate_relative(counts)
        return model

    def _estimate_kn(self, counts: list[np.ndarray], suffixes: list[np.ndarray | None],
                     allow_fallback: bool, fallback: tuple[float, float, float]) -> None:
        N, V, keys = self.order, self.V, self.keys
        first = _first_words(keys, V)
        # Adjusted counts: raw at the highest order and for n-grams starting with <s>;
        # elsewhere the number of distinct words seen just before the n-gram.
        adjusted = [counts[N - 1]]
        for n in range(N - 1, 0, -1):
            cont = np.bincount(suffixes[n], minlength=len(keys[n - 1]))  # type: ignore[arg-type]
            adjusted.insert(0, np.where(first[n - 1] == BOS, counts[n - 1], cont))
        adjusted[0] = adjusted[0].copy()
        adjusted[0][BOS] = 0  # <s> is never predicted

        self.discounts, fell_back = [], []
        for n in range(1, N + 1):
            nk, d = kn_discounts(adjusted[n - 1])
            if d is None:
                if not allow_fallback:
                    raise LmlabError(
                        f"cannot estimate Kneser-Ney discounts for order {n}: its "
                        f"count-of-counts n1..n4 are {nk.tolist()} (too little data); "
                        f"allow the discount fallback, lower the order or add data")
                d = tuple(fallback)
                fell_back.append(n)
            self.discounts.append(d)
        if fell_back:
            self.discount_fallback_orders = tuple(fell_back)
            warnings.warn(
                f"too little data to estimate Kneser-Ney discounts for order(s) "
                f"{', '.join(map(str, fell_back))}; using fallback discounts "
                f"{', '.join(f'{x:g}' for x in fallback)} as KenLM's --discount_fallback does",
                DiscountFallbackWarning, stacklevel=3)

        p_lower = None
        self.logp, self.logb = [], [np.zeros(len(k), np.float32) for k in keys]
        for n in range(1, N + 1):
            a = adjusted[n - 1].astype(np.float64)
            D1, D2, D3 = self.discounts[n - 1]
            d = np.select([a >= 3, a == 2, a == 1], [D3, D2, D1], 0.0)
            if n == 1:
                # Interpolate with the uniform distribution over the V-1 predictable words.
                total = a.sum()
                p = (a - d) / total + d.sum() / total / (V - 1)
            else:
                prefix = keys[n - 1] // V
                total = np.bincount(prefix, weights=a, minlength=len(keys[n - 2]))
                gamma = np.bincount(prefix, weights=d, minlength=len(keys[n - 2]))
                has = total > 0
                gamma[has] /= total[has]
                p = (a - d) / total[prefix] + gamma[prefix] * p_lower[suffixes[n - 1]]  # type: ignore[index]
                self.logb[n - 2] = np.where(has, _log10(gamma), 0.0).astype(np.float32)
            p_lower = p
            lp = _log10(p)
            if n == 1:
                lp[BOS] = NEVER
            self.logp.append(lp.astype(np.float32))

    def _estimate_relative(self, counts: list[np.ndarray]) -> None:
        """add-k, or stupid backoff: add-one unigrams, relative frequencies above (k = 0)."""
        V, keys, stupid = self.V, self.keys, self.smoothing == "stupid"
        self.logp, self.logb = [], [np.zeros(len(x), np.float32) for x in keys]
        for n in range(1, self.order + 1):
            c = counts[n - 1].astype(np.float64)
            if n == 1:
                k = 1.0 if stupid else self.k  # add-one for stupid backoff, so <unk> scores > 0
                c[BOS] = 0
                lp = _log10((c + k) / (c.sum() + k * (V - 1)))
                lp[BOS] = NEVER
            else:
                k = 0.0 if stupid else self.k
                prefix = keys[n - 1] // V
                total = np.bincount(prefix, weights=c, minlength=len(keys[n - 2]))
                lp = _log10((c + k) / (total[prefix] + k * (V - 1)))
                if not stupid:
                    # A word unseen after a context: k / (c(h) + k|V|), kept as its "backoff".
                    self.logb[n - 2] = _log10(k / (total + k * (V - 1))).astype(np.float32)
            self.logp.append(lp.astype(np.float32))

    # ------------------------------------------------------------------ querying

    def _lookup(self, tok: np.ndarray) -> list[np.ndarray]:
        """idx[n-1][r, t]: index of the n-gram ending at tok[r, t] in table n, or -1.

        An n-gram (n >= 2) ending at ``<s>`` reaches into the sentence before and
        gets -1, so that no longer n-gram and no context (``ctx`` below) crosses a
        sentence start: the context of a position stops at its last ``<s>``.
        """
        idx = [tok]
        at_bos = tok == BOS
        for n in range(2, self.order + 1):
            prev = np.full(tok.shape, -1, dtype=np.int64)
            prev[:, 1:] = idx[-1][:, :-1]
            # A missing (n-1)-gram has no n-gram either: its key is made negative, which
            # no table holds.
            found = self._find(n, np.where(prev >= 0, prev * self.V + tok, -1))
            np.putmask(found, at_bos, -1)
            idx.append(found)
        return idx

    def _find(self, n: int, key: np.ndarray) -> np.ndarray:
        """Index of each key in the table of order n, or -1."""
        keys = self.keys[n - 1]
        if len(keys) == 0:
            return np.full(key.shape, -1, dtype=np.int64)
        index = self._indexes.get(n)
        if (index is None or index.keys is not keys) and 8 * key.size < len(keys):
            # A few queries against a big table: a binary search each costs less than
            # building the hash table (which pays off from the next query on).
            pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
            return np.where(keys[pos] == key, pos, -1)
        if index is None or index.keys is not keys:
            index = self._indexes[n] = KeyIndex(keys)
        return index.find(key)

    def log10_probs(self, tok: np.ndarray) -> np.ndarray:
        """log10 P(tok[r, t] | tok[r, :t]) for a batch of rows of internal ids, shape (R, T).

        A row is a padded stream (``<s> ... </s> <s> ...``) or a bare context;
        the context of a position stops at the last ``<s>`` before it. Positions
        holding ``<s>`` are not predictions and get 0.
        """
        tok = np.asarray(tok, dtype=np.int64)
        N = self.order
        idx = self._lookup(tok)
        ctx = [np.full(tok.shape, -1, dtype=np.int64) for _ in range(N)]
        for n in range(1, N):
            ctx[n][:, 1:] = idx[n - 1][:, :-1]  # ctx[n]: the n-word context ending at t-1
        out = self.logp[0][tok].astype(np.float64)
        if self.smoothing in ("addk", "stupid"):
            L = np.minimum(_sentence_position(tok), N - 1)  # words of context available
        if self.smoothing == "addk":
            top = L + 1  # add-k uses the longest context available, nothing shorter
            for n in range(2, N + 1):
                here = top == n
                found = here & (idx[n - 1] >= 0)
                seen_ctx = here & ~found & (ctx[n - 1] >= 0)
                out[here] = -math.log10(self.V - 1)  # unseen context: uniform
                out[found] = self.logp[n - 1][idx[n - 1][found]]
                out[seen_ctx] = self.logb[n - 2][ctx[n - 1][seen_ctx]]
        elif self.smoothing == "stupid":
            # Whole-array gathers and np.where rather than boolean indexing: no
            # compaction pass per order (it was most of the query time). No n-gram
            # crosses a sentence start (see _lookup), so these need no check against
            # the sentence position.
            m = np.ones(tok.shape, dtype=np.int64)  # order of the longest match
            for n in range(2, N + 1):
                found = idx[n - 1] >= 0
                out = np.where(found, self.logp[n - 1][np.maximum(idx[n - 1], 0)], out)
                m = np.where(found, n, m)
            out += (L + 1 - m) * math.log10(self.alpha)
        else:
            # The backoff rule as a recurrence over orders: P_n = p_n where the n-gram
            # is stored, else b(its (n-1)-word context) + P_(n-1). Unrolled, the longest
            # match plus the weight of every longer context, as KenLM computes it. The
            # weights are read from copies padded with a 0 at the end, so a missing
            # context (index -1) reads 0 with no mask; a missing n-gram's gather reads
            # the table's last entry, which np.where discards. Contexts never cross a
            # sentence start (see _lookup).
            if self._logb_padded is None:
                self._logb_padded = [np.append(b, np.float32(0)) for b in self.logb]
            for n in range(2, N + 1):
                backed = out + self._logb_padded[n - 2][ctx[n - 1]]
                out = np.where(idx[n - 1] >= 0, self.logp[n - 1][idx[n - 1]], backed)
        out[tok == BOS] = 0.0
        return out

    def _internal(self, seq: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(seq, dtype=np.int64).reshape(-1)
        inside = (ids >= 0) & (ids < self.vocab_size)
        return np.where(inside, self.id_map[np.where(inside, ids, 0)], UNK)

    def score(self, sequences: Iterable[Sequence[int] | np.ndarray], *,
              n_bytes: int = 0, chunk_tokens: int = 1 << 20) -> NgramScore:
        """Total loss of ``sequences`` (user ids; each gets <s> ... </s>), all positions at once.

        Unknown ids (out of range, unseen in training, or below ``min_count``)
        are scored as ``<unk>`` and counted in ``oov``. ``n_bytes`` (the UTF-8
        size of the text) only feeds ``bits_per_byte``. Sequences are scored in
        chunks of about ``chunk_tokens`` tokens to bound memory.
        """
        total = NgramScore(0.0, 0, 0, n_bytes, normalized=self.smoothing != "stupid")
        batch: list[np.ndarray] = []
        size = 0
        for seq in sequences:
            batch.append(np.asarray(seq, dtype=np.int64).reshape(-1))
            size += len(batch[-1]) + 2
            if size >= chunk_tokens:
                self._score_flat(self._internal(np.concatenate(batch)),
                                 [len(b) for b in batch], total)
                batch, size = [], 0
        if batch:
            self._score_flat(self._internal(np.concatenate(batch)), [len(b) for b in batch], total)
        return total

    def _score_flat(self, ids: np.ndarray, lengths: Sequence[int], total: NgramScore) -> None:
        """Add to ``total`` the loss of sequences given as one array of internal ids and
        their lengths: one query for all of them (per sentence, the calls cost more than
        the scoring)."""
        stream = _pad_flat(ids, np.asarray(lengths, dtype=np.int64))
        lp = self.log10_probs(stream[None])[0]
        total.nll -= float(lp.sum()) * LN10  # <s> positions hold 0
        total.tokens += len(stream) - int(np.count_nonzero(stream == BOS))
        total.oov += int(np.count_nonzero(stream == UNK))

    def token_log10_probs(self, seq: Sequence[int] | np.ndarray) -> np.ndarray:
        """log10 probability of each token of one sequence and of its ``</s>`` (KenLM's
        ``full_scores`` with bos and eos)."""
        stream = pad_stream([self._internal(seq)])
        return self.log10_probs(stream[None])[0, 1:]

    def next_log10_probs(self, context: Sequence[int] | np.ndarray) -> np.ndarray:
        """log10 p(w | context) for every internal id w (``<s>`` gets -inf).

        ``context`` holds internal ids and starts with ``<s>`` for a sentence start.
        """
        ctx = np.asarray(context, dtype=np.int64)[-(self.order - 1):] if self.order > 1 else \
            np.zeros(0, np.int64)
        rows = np.empty((self.V, len(ctx) + 1), dtype=np.int64)  # (V, T): context + each word
        rows[:, :-1] = ctx
        rows[:, -1] = np.arange(self.V)
        lp = self.log10_probs(rows)[:, -1]
        lp[BOS] = -np.inf
        return lp

    def sample(self, *, max_len: int = 50, temperature: float = 1.0, seed: int | None = None,
               prefix: Sequence[int] = ()) -> list[int]:
        """Draw one sentence after ``prefix`` (user ids); stops at ``</s>`` or ``max_len`` tokens.

        Returns user ids, with -1 for ``<unk>``. temperature 0 is greedy.
        Stupid backoff's scores are renormalized before drawing.
        """
        if temperature < 0:
            raise LmlabError(f"temperature must be >= 0, got {temperature}")
        if max_len < 0:
            raise LmlabError(f"max_len must be >= 0, got {max_len}")
        rng = np.random.default_rng(seed)
        user = np.full(self.V, -1, dtype=np.int64)  # internal id -> user id
        user[self.id_map[self.id_map != UNK]] = np.flatnonzero(self.id_map != UNK)
        context = [BOS, *self._internal(prefix).tolist()]
        out: list[int] = []
        while len(out) < max_len:
            lp = self.next_log10_probs(context) * LN10
            if temperature == 0:
                w = int(np.argmax(lp))
            else:
                logits = lp / temperature
                p = np.exp(logits - logits.max())
                w = int(rng.choice(self.V, p=p / p.sum()))
            if w == EOS:
                break
            out.append(int(user[w]))
            context.append(w)
        return out

    # ------------------------------------------------------------------ words

    @classmethod
    def fit_words(cls, sentences: Sequence[Sequence[str]], *, order: int,
                  smoothing: str = "kn", **options: Any) -> NgramLM:
        """:meth:`fit` on lists of words, with the vocabulary of :meth:`WordVocab.build`."""
        vocab = WordVocab.build(sentences)
        if not len(vocab):
            raise LmlabError("empty training data: no words to count")
        model = cls.fit([vocab.encode(s) for s in sentences], order=order,
                        vocab_size=len(vocab), smoothing=smoothing, names=vocab.words, **options)
        model._words = vocab  # the names' lookup table, already built
        return model

    def word_ids(self, words: Iterable[str], count: int = -1) -> np.ndarray:
        """User ids of words (``count`` of them, if known); -1 for words outside the
        vocabulary (scored as <unk>)."""
        if self._words is None:
            self._words = WordVocab(self.names if self.names is not None
                                    else [str(i) for i in range(self.vocab_size)])
        return self._words.encode(words, count)

    def _internal_ids(self, words: Iterable[str], count: int) -> np.ndarray:
        """Internal ids of words, ``<unk>`` for words the model does not keep."""
        if self._word_internal is None and count < 4096:
            # A small query: not worth building the dict below (a few ms).
            return self._internal(self.word_ids(words, count))
        if self._word_internal is None:
            names = (self.names if self.names is not None
                     else [str(i) for i in range(self.vocab_size)])
            kept = np.flatnonzero(self.id_map != UNK)
            # Straight to internal ids, and only the kept words: a smaller dict than
            # word_ids' and no second mapping. The keys are fresh copies made one after
            # another, so they sit together in memory instead of scattered over the
            # training data's heap: a lookup compares the query with the stored string,
            # and these stay cached (about 10% off a whole score_words).
            self._word_internal = {
                names[i].encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass"): t
                for i, t in zip(kept.tolist(), self.id_map[kept].tolist(), strict=True)}
        return np.fromiter(map(self._word_internal.get, words, itertools.repeat(UNK)),
                           np.int64, count)

    def score_words(self, sentences: Iterable[Sequence[str]], n_bytes: int = 0,
                    chunk_words: int = 1 << 20) -> NgramScore:
        """:meth:`score` on lists of words, looked up ``chunk_words`` words at a time."""
        total = NgramScore(0.0, 0, 0, n_bytes, normalized=self.smoothing != "stupid")
        # A list is scored in place; any other iterable 100k sentences at a time.
        it = iter(sentences)
        batches = ([sentences] if isinstance(sentences, Sequence)
                   else iter(lambda: list(itertools.islice(it, 100_000)), []))
        for batch in batches:
            lengths = np.fromiter(map(len, batch), np.int64, len(batch))
            # Chunks of whole sentences, cut where the running word count crosses a
            # multiple of chunk_words.
            chunk = (np.cumsum(lengths) - lengths) // chunk_words
            cuts = [0, *(np.flatnonzero(np.diff(chunk)) + 1).tolist(), len(batch)]
            for a, b in itertools.pairwise(cuts):
                n = int(lengths[a:b].sum())
                ids = self._internal_ids(itertools.chain.from_iterable(batch[a:b]), n)
                self._score_flat(ids, lengths[a:b], total)
        return total

    def id_to_word(self, user_id: int) -> str:
        if user_id < 0 or user_id >= self.vocab_size or self.id_map[user_id] == UNK:
            return "<unk>"
        return self.vocab[self.id_map[user_id]]

    # ------------------------------------------------------------------ files

    def ngram_tokens(self, n: int) -> np.ndarray:
        """The words (internal ids) of every n-gram of order n, shape (count, n)."""
        toks = self.keys[0][:, None]
        for m in range(2, n + 1):
            k = self.keys[m - 1]
            toks = np.concatenate([toks[k // self.V], (k % self.V)[:, None]], axis=1)
        return toks

    def _settings(self) -> dict[str, Any]:
        return {"format": 1, "order": self.order, "smoothing": self.smoothing,
                "vocab_size": self.vocab_size, "id_names": self.names is None,
                "alpha": self.alpha, "k": self.k, "discounts": self.discounts,
                "discount_fallback_orders": list(self.discount_fallback_orders),
                "meta": self.meta}

    def to_arpa(self, path: str | Path) -> None:
        """Write the model as an ARPA file (log10 probabilities and backoff weights)."""
        if self.smoothing not in ("kn", "backoff"):
            raise LmlabError(
                f"{self.smoothing} is not a backoff model, so an ARPA file cannot hold it "
                f"exactly; save it as .npz instead")
        bad = [w for w in self.vocab if not w or any(c.isspace() for c in w)]
        if bad:
            raise LmlabError(f"ARPA words cannot be empty or hold whitespace: {bad[0]!r}")
        words = np.array(self.vocab, dtype=object)
        with atomic_open(Path(path)) as f:  # never a half-written model under the real name
            f.write(META_TAG + json.dumps(self._settings(), ensure_ascii=False) + "\n\n")
            f.write("\\data\\\n")
            f.writelines(f"ngram {n}={len(k)}\n" for n, k in enumerate(self.keys, 1))
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                grams = [" ".join(row) for row in words[self.ngram_tokens(n)]]
                # A zero backoff weight is left out (always so at the highest order).
                f.writelines(f"{p:.9g}\t{g}\t{b:.9g}\n" if b else f"{p:.9g}\t{g}\n"
                             for p, g, b in zip(self.logp[n - 1].tolist(), grams,
                                                self.logb[n - 1].tolist(), strict=True))
            f.write("\n\\end\\\n")

    @classmethod
    def from_arpa(cls, path: str | Path) -> NgramLM:
        """Read an ARPA file (from lmlab, KenLM, SRILM...): a backoff model."""
        return _read_arpa(Path(path))

    def save(self, path: str | Path) -> None:
        """Save as ARPA (a path ending in .arpa) or as .npz (any other path)."""
        path = Path(path)
        if path.suffix == ".arpa":
            self.to_arpa(path)
            return
        arrays: dict[str, np.ndarray] = {
            "settings": np.array(json.dumps(self._settings(), ensure_ascii=False)),
            "vocab": np.array(self.vocab, dtype=str), "id_map": self.id_map}
        if self.names is not None:
            arrays["names"] = np.array(self.names, dtype=str)
        for n in range(self.order):
            arrays[f"keys{n + 1}"] = self.keys[n]
            arrays[f"logp{n + 1}"] = self.logp[n]
            arrays[f"logb{n + 1}"] = self.logb[n]
        with atomic_open(path, "wb") as f:  # a file object: numpy adds no .npz to the name
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        """Load a model written by :meth:`save` (.npz) or any ARPA file."""
        path = Path(path)
        if not path.is_file():
            raise LmlabError(f"{path}: no such n-gram model file")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04":
            return _read_arpa(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                s = json.loads(str(z["settings"]))
                order = s["order"]
                return cls(order=order, smoothing=s["smoothing"], vocab=z["vocab"].tolist(),
                           id_map=z["id_map"], names=z["names"].tolist() if "names" in z else None,
                           keys=[z[f"keys{n}"] for n in range(1, order + 1)],
                           logp=[z[f"logp{n}"] for n in range(1, order + 1)],
                           logb=[z[f"logb{n}"] for n in range(1, order + 1)],
                           alpha=s["alpha"], k=s["k"],
                           discounts=[tuple(d) for d in s["discounts"]] if s["discounts"] else None,
                           discount_fallback_orders=tuple(s["discount_fallback_orders"]),
                           meta=s["meta"])
        except (KeyError, ValueError, OSError) as e:
            raise LmlabError(f"{path}: not an lmlab n-gram model ({e})") from None


# --------------------------------------------------------------------------- ARPA reading


def _read_arpa(path: Path) -> NgramLM:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.split("\n")
    i = 0

    def fail(lineno: int, msg: str) -> LmlabError:
        return LmlabError(f"{path}: line {lineno}: {msg}")

    def skip_blank() -> None:
        nonlocal i
        while i < len(lines) and not lines[i].strip():
            i += 1

    settings: dict[str, Any] = {}
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith("#")):
        if lines[i].startswith(META_TAG):
            try:
                settings = json.loads(lines[i][len(META_TAG):])
            except json.JSONDecodeError as e:
                raise fail(i + 1, f"bad lmlab settings ({e})") from None
        i += 1
    if i >= len(lines) or lines[i].strip() != "\\data\\":
        raise fail(min(i + 1, len(lines)), "expected \\data\\ (is this an ARPA file?)")
    i += 1
    counts: list[int] = []
    while i < len(lines) and lines[i].strip().startswith("ngram "):
        head, _, num = lines[i].strip()[6:].partition("=")
        try:
            n, c = int(head), int(num)
        except ValueError:
            raise fail(i + 1, f"bad count line {lines[i].strip()!r}") from None
        if n != len(counts) + 1 or c < 0:
            raise fail(i + 1, f"expected 'ngram {len(counts) + 1}=COUNT', got {lines[i]!r}")
        counts.append(c)
        i += 1
    if not counts or counts[0] == 0:
        raise fail(i + 1, "no unigram count ('ngram 1=COUNT') after \\data\\")
    order = len(counts)

    word_id = {w: j for j, w in enumerate(SPECIALS)}
    vocab = list(SPECIALS)
    seen: set[str] = set()
    V = 0  # the vocabulary size, set once the unigrams are read
    keys: list[np.ndarray] = []
    logp: list[np.ndarray] = []
    logb: list[np.ndarray] = []
    for n in range(1, order + 1):
        skip_blank()
        if i >= len(lines) or lines[i].strip() != f"\\{n}-grams:":
            raise fail(min(i + 1, len(lines)), f"expected \\{n}-grams:")
        i += 1
        probs = np.zeros(counts[n - 1], dtype=np.float32)
        backs = np.zeros(counts[n - 1], dtype=np.float32)
        toks = np.zeros((counts[n - 1], n), dtype=np.int64)
        linenos = np.zeros(counts[n - 1], dtype=np.int64)
        for j in range(counts[n - 1]):
            line = lines[i].strip() if i < len(lines) else ""
            if not line or line.startswith("\\"):
                raise fail(i + 1, f"the header says {counts[n - 1]} {n}-grams, found {j}")
            parts = line.split()
            if len(parts) not in (n + 1, n + 2) or (n == order and len(parts) == n + 2):
                raise fail(i + 1, f"expected a log10 probability, {n} word(s)"
                                  f"{' and an optional backoff' if n < order else ''}")
            try:
                probs[j] = p = float(parts[0])
                backs[j] = b = float(parts[-1]) if len(parts) == n + 2 else 0.0
            except ValueError:
                raise fail(i + 1, f"bad number in {line!r}") from None
            if not (p <= 0 and math.isfinite(p) and math.isfinite(b)):
                raise fail(i + 1, f"log10 probability must be finite and <= 0 in {line!r}")
            for c, w in enumerate(parts[1:n + 1]):
                if n == 1:
                    if w in seen:
                        raise fail(i + 1, f"the unigram {w!r} is listed twice")
                    seen.add(w)
                    if w not in word_id:
                        word_id[w] = len(vocab)
                        vocab.append(w)
                elif w not in word_id:
                    raise fail(i + 1, f"word {w!r} is not among the unigrams")
                toks[j, c] = word_id[w]
            linenos[j] = i + 1
            i += 1
        if n == 1:
            for w in ("<s>", "</s>"):
                if w not in seen:
                    raise LmlabError(f"{path}: the unigrams lack {w}")
            V = len(vocab)
            dense_p = np.full(V, -100.0, dtype=np.float32)  # <unk> if absent, as KenLM does
            dense_b = np.zeros(V, dtype=np.float32)
            dense_p[toks[:, 0]] = probs
            dense_b[toks[:, 0]] = backs
            keys.append(np.arange(V, dtype=np.int64))
            logp.append(dense_p)
            logb.append(dense_b)
            continue
        # The prefix of every n-gram must be an (n-1)-gram: follow the prefix chain.
        idx = toks[:, 0]
        for c in range(1, n - 1):
            key = idx * V + toks[:, c]
            if not len(keys[c]):
                raise fail(int(linenos[0]), f"{n}-grams but no {c + 1}-grams to be their context")
            pos = np.minimum(np.searchsorted(keys[c], key), len(keys[c]) - 1)
            missing = keys[c][pos] != key
            if missing.any():
                bad = int(np.flatnonzero(missing)[0])
                raise fail(int(linenos[bad]), f"the context of this {n}-gram is not listed "
                                              f"among the {c + 1}-grams")
            idx = pos
        key = idx * V + toks[:, n - 1]
        perm = np.argsort(key, kind="stable")
        key = key[perm]
        dup = np.flatnonzero(key[1:] == key[:-1])
        if len(dup):
            raise fail(int(linenos[perm[dup[0] + 1]]), f"this {n}-gram is listed twice")
        keys.append(key)
        logp.append(probs[perm])
        logb.append(backs[perm])
    skip_blank()
    if i >= len(lines) or lines[i].strip() != "\\end\\":
        raise fail(min(i + 1, len(lines)), "expected \\end\\ after the last n-gram section")

    # User ids: the ids saved by lmlab (subword models), else the words in file order.
    if settings.get("id_names"):
        try:
            user = np.array([int(w) for w in vocab[3:]], dtype=np.int64)
            id_map = np.full(int(settings["vocab_size"]), UNK, dtype=np.int64)
            id_map[user] = np.arange(3, V)
        except (ValueError, IndexError, KeyError):
            raise LmlabError(f"{path}: lmlab settings say the words are ids, but they are "
                             f"not ids below vocab_size") from None
        names = None
    else:
        id_map = np.arange(3, V, dtype=np.int64)
        names = vocab[3:]
    smoothing = settings.get("smoothing", "backoff")
    if smoothing not in ("kn", "backoff"):
        smoothing = "backoff"
    disc = settings.get("discounts")
    return NgramLM(order=order, smoothing=smoothing, vocab=vocab, id_map=id_map, names=names,
                   keys=keys, logp=logp, logb=logb,
                   discounts=[tuple(d) for d in disc] if disc else None,
                   discount_fallback_orders=tuple(settings.get("discount_fallback_orders", ())),
                   meta=settings.get("meta", {}))


# --------------------------------------------------------------------------- text


def split_words(text: str, *, use_jieba: bool = False) -> list[list[str]]:
    """Sentences of words: one per non-blank line, split on whitespace or by jieba."""
    if use_jieba:
        from lmlab.data.chinese import segment

        return [segment(line) for line in text.splitlines() if line.strip()]
    return [line.split() for line in text.splitlines() if line.strip()]


def whitespace_warning(texts: Sequence[str], source: str) -> str | None:
    """The warning for word n-grams over Chinese without spaces between words, else None.

    Whitespace splits such text into clauses, nearly all seen once: half the
    validation "words" are unknown and bits per byte mean nothing.
    """
    from lmlab.data.chinese import needs_segmentation

    if not needs_segmentation(texts):
        return None
    return (f"warning: {source} is Chinese without spaces between words, so whitespace "
            "splits it into clauses, not words; add --jieba (or --level subword)")


def read_texts(path: Path, split: str = "train", progress: bool = False) -> list[str]:
    """Documents of one split of a corpus folder made by `lmlab corpus`, or of any text file."""
    from lmlab.data.corpus import has_split, iter_documents, read_split
    from lmlab.progress import progress_bar

    path = Path(path)
    docs = read_split(path, split) if has_split(path, split) else iter_documents(path)
    return list(progress_bar(iterable=docs, desc=f"reading {split}", unit="doc", leave=False,
                             disable=not progress))


def text_sentences(texts: Sequence[str], *, tokenizer: Any = None, use_jieba: bool = False
                   ) -> list[list[str]] | list[list[int]]:
    """Sentences (the non-blank lines of each document) as words, or as token ids when a
    tokenizer is given."""
    if tokenizer is not None:
        lines = [line for t in texts for line in t.splitlines() if line.strip()]
        return tokenizer.encode_batch(lines)
    return [s for t in texts for s in split_words(t, use_jieba=use_jieba)]
