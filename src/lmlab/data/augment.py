"""More training examples from few: text augmentation for classification.

Four transforms, each making a new text that should keep the label of the one it
came from. The first three are EDA's (Wei & Zou 2019, "EDA: Easy Data
Augmentation Techniques for Boosting Performance on Text Classification"), which
change about ``alpha`` of a text's words (the paper's alpha = 0.1):

* ``synonym``: ``n = max(1, alpha * words)`` words replaced, each by one of its
  nearest neighbours in a set of word vectors (EDA used WordNet synonyms;
  neighbours in word2vec/GloVe space are the usual substitute where there is no
  thesaurus, as for Chinese). The most frequent words of the vectors (their first
  rows) are left alone, as EDA's stop-word list leaves function words;
* ``delete``: every word deleted with probability ``alpha``, never all of them
  (one random word is kept);
* ``swap``: ``n`` times, two random positions exchange their words;
* ``backtranslate``: the text translated into a pivot language and back by two
  translation models (Sennrich et al. 2016; Yu et al. 2018 for classification).
  The translating is the caller's: :func:`backtranslate` takes the two models as
  functions over lists of texts, so this module needs no model.

Words: whitespace splits a text, except a mostly-Chinese one
(:func:`lmlab.data.chinese.is_chinese`), which jieba cuts into words (Chinese
has no spaces; a whitespace split would make a whole clause one "word").
:func:`join_words` puts the words back together with a space between two words
only where neither is Chinese.

Only training examples are augmented: :func:`augment_examples` is called on the
training split alone, and each copy keeps its example's label. A copy that came
out identical to its original (a one-word text swapped, no word with a
neighbour) adds nothing and is dropped, and counted.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from lmlab.data.chinese import CJK, is_chinese, segment
from lmlab.data.tasks import ClassifyExample
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.models.embeddings import WordVectors

__all__ = [
    "METHODS",
    "AugmentResult",
    "Method",
    "augment_examples",
    "backtranslate",
    "join_words",
    "random_deletion",
    "random_swap",
    "split_words",
    "synonym_replacement",
    "synonym_table",
]

Method = Literal["synonym", "delete", "swap", "backtranslate"]
METHODS: tuple[Method, ...] = ("synonym", "delete", "swap", "backtranslate")
# EDA's share of a text's words that one transform changes.
DEFAULT_ALPHA = 0.1
# Neighbours considered per word, and the vectors' most frequent words never replaced
# (the first rows of vectors trained by lmlab or gensim: "the", "of", "的", "了" ...).
SYNONYM_TOPN = 5
SYNONYM_SKIP_TOP = 50

_CJK_CHAR = re.compile(f"[{CJK}]")
# A word's core, for looking it up in the vectors: what is left once the punctuation
# around it is taken off ("(Free!" -> "Free").
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)

# A translation model as augmentation sees it: texts in, for each ``n`` outputs (its n
# best), out.
Translate = Callable[[list[str], int], list[list[str]]]


# --------------------------------------------------------------------------- words


def split_words(text: str) -> list[str]:
    """The words of ``text``: jieba's words for mostly-Chinese text, else whitespace-split
    (punctuation stays on its word, as "free!")."""
    if is_chinese(text):
        return segment(text)
    return text.split()


def join_words(words: Sequence[str]) -> str:
    """Words back into a text: a space between two words unless either side of it is a
    Chinese character ("我 爱 Python 编程" -> "我爱Python编程")."""
    out: list[str] = []
    for w in words:
        if out and not (_CJK_CHAR.match(w[:1]) or _CJK_CHAR.match(out[-1][-1:])):
            out.append(" ")
        out.append(w)
    return "".join(out)


def _count(n_words: int, alpha: float) -> int:
    """How many words a transform changes: alpha of them, at least one (EDA)."""
    return max(1, int(alpha * n_words))


# --------------------------------------------------------------------------- transforms


def random_deletion(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """Each word dropped with probability ``p``; when every word would go, one random
    word is kept, so a text never becomes empty."""
    if not words:
        return []
    kept = [w for w in words if rng.random() >= p]
    return kept or [words[rng.randrange(len(words))]]


def random_swap(words: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """``n`` swaps of two random positions; the words (as a multiset) are unchanged."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def _lookup_key(word: str) -> tuple[str, str, str]:
    """(punctuation before, the lowercased core, punctuation after) of a word."""
    m = _CORE.match(word)
    assert m is not None  # the pattern matches any string
    return m.group(1), m.group(2).lower(), m.group(3)


def synonym_replacement(words: Sequence[str], n: int, rng: random.Random,
                        synonyms: Mapping[str, Sequence[str]]) -> list[str]:
    """Up to ``n`` distinct words that have neighbours in ``synonyms`` (keyed by the
    lowercased word) replaced by a random one of them; the punctuation around a word
    and a capital first letter are kept ("Free!" -> "Gratis!")."""
    out = list(words)
    candidates = [i for i, w in enumerate(out) if synonyms.get(_lookup_key(w)[1])]
    for i in rng.sample(candidates, min(n, len(candidates))):
        before, core, after = _lookup_key(out[i])
        new = rng.choice(list(synonyms[core]))
        original = _CORE.match(out[i]).group(2)  # type: ignore[union-attr]
        if original[:1].isupper():
            new = new[:1].upper() + new[1:]
        out[i] = before + new + after
    return out


def synonym_table(vectors: WordVectors, words: Iterable[str], *, topn: int = SYNONYM_TOPN,
                  skip_top: int = SYNONYM_SKIP_TOP) -> dict[str, list[str]]:
    """For each of ``words`` (lowercased, punctuation around it taken off) that the
    vectors hold and that is not among their ``skip_top`` most frequent: its ``topn``
    nearest neighbours by cosine, leaving out the frequent words and neighbours that
    are not words (punctuation). Computed once for all the words a data set uses."""
    wanted = sorted({key for w in words if (key := _lookup_key(w)[1])
                     and vectors.index.get(key, -1) >= skip_top})
    if not wanted:
        return {}
    unit = vectors.unit()  # (N, D) rows of length 1
    rows = np.array([vectors.index[w] for w in wanted])
    table: dict[str, list[str]] = {}
    # Chunks of 256 query words keep the (chunk, N) similarity matrix small.
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        sims = unit[chunk] @ unit.T  # (chunk, N)
        sims[np.arange(len(chunk)), chunk] = -np.inf  # a word is not its own synonym
        sims[:, :skip_top] = -np.inf
        # More than topn candidates, as some are punctuation or case variants.
        k = min(topn * 3, sims.shape[1] - 1)
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        for row, word_row, cand in zip(sims, chunk, top, strict=True):
            word = vectors.words[word_row]
            ranked = cand[np.argsort(-row[cand], kind="stable")]
            found = [vectors.words[i] for i in ranked
                     if np.isfinite(row[i]) and any(c.isalnum() for c in vectors.words[i])
                     and vectors.words[i].lower() != word]
            if found:
                table[word] = list(dict.fromkeys(found))[:topn]
    return table


def backtranslate(texts: Sequence[str], forward: Translate, back: Translate,
                  n: int = 1) -> list[list[str]]:
    """``n`` back-translations of each text: its ``n`` best translations into the
    pivot language (``forward``), each translated back (``back``'s best)."""
    if not texts:
        return []
    pivots = forward(list(texts), n)  # n per text
    flat = [p for ps in pivots for p in ps]
    backs = [outs[0] for outs in back(flat, 1)]
    out, i = [], 0
    for ps in pivots:
        out.append(backs[i:i + len(ps)])
        i += len(ps)
    return out


# --------------------------------------------------------------------------- examples


@dataclass
class AugmentResult:
    """The copies made (each keeps its original's label) and how many of each kind."""

    examples: list[ClassifyExample]
    methods: list[Method]  # the transform that made each copy
    made: dict[str, int] = field(default_factory=dict)  # copies kept, per transform
    unchanged: dict[str, int] = field(default_factory=dict)  # copies dropped as identical

    def summary(self) -> str:
        kept = ", ".join(f"{m} {n:,}" for m, n in self.made.items())
        same = sum(self.unchanged.values())
        dropped = (f"; {same:,} dropped, identical to their original or an earlier copy"
                   if same else "")
        return f"{len(self.examples):,} augmented training copies ({kept}{dropped})"

    def to_dict(self) -> dict[str, object]:
        return {"copies": len(self.examples), "made": self.made, "unchanged": self.unchanged}


def augment_examples(examples: Sequence[ClassifyExample], methods: Sequence[Method], *,
                     copies: int, alpha: float = DEFAULT_ALPHA, seed: int = 0,
                     synonyms: Mapping[str, Sequence[str]] | None = None,
                     translate: tuple[Translate, Translate] | None = None) -> AugmentResult:
    """``copies`` new versions of each example, the transforms taken in turn (with
    ``copies`` 4 and all four methods, one of each, as EDA's n_aug spread over its
    operations). Copy j of an example is made by ``methods[j % len(methods)]``;
    back-translation's k copies of a text are its k best pivot translations, each
    translated back. Deterministic for a seed; copies equal to their original are
    dropped (counted in ``unchanged``).

    Raises:
        LmlabError: a method needs what was not given (``synonyms``, ``translate``),
            or ``copies`` is below 1.
    """
    if copies < 1:
        raise LmlabError(f"--augment-copies must be at least 1, got {copies}")
    if not methods:
        raise LmlabError(f"--augment needs one or more of {', '.join(METHODS)}")
    if "synonym" in methods and synonyms is None:
        raise LmlabError("--augment synonym needs word vectors: give --augment-vectors FILE "
                         "(e.g. from `lmlab embed train`)")
    if "backtranslate" in methods and translate is None:
        raise LmlabError("--augment backtranslate needs two translation models: give "
                         "--augment-translators FORWARD BACK")
    rng = random.Random(seed)
    plan = [methods[j % len(methods)] for j in range(copies)]
    n_back = plan.count("backtranslate")
    texts = [ex.text for ex in examples]
    backs: list[list[str]] = []
    if n_back:
        assert translate is not None
        backs = backtranslate(texts, translate[0], translate[1], n_back)
    out: list[ClassifyExample] = []
    made_by: list[Method] = []
    made: Counter[str] = Counter()
    unchanged: Counter[str] = Counter({m: 0 for m in dict.fromkeys(methods)})
    for i, ex in enumerate(examples):
        words = split_words(ex.text)
        n = _count(len(words), alpha)
        seen = {ex.text}  # a copy equal to the original, or to an earlier copy, adds nothing
        k_back = 0
        for method in plan:
            if method == "backtranslate":
                new = backs[i][k_back] if k_back < len(backs[i]) else ex.text
                k_back += 1
            elif method == "synonym":
                new = join_words(synonym_replacement(words, n, rng, synonyms or {}))
            elif method == "delete":
                new = join_words(random_deletion(words, alpha, rng))
            else:
                new = join_words(random_swap(words, n, rng))
            if not new.strip() or new in seen:
                unchanged[method] += 1
                continue
            seen.add(new)
            out.append(ClassifyExample(new, ex.label))
            made_by.append(method)
            made[method] += 1
    return AugmentResult(out, made_by, {m: made[m] for m in unchanged}, dict(unchanged))
