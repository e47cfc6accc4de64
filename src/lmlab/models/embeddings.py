"""Word vectors: word2vec and fastText (through gensim), GloVe (by hand, in torch).

The pieces, in the order data flows through them:

* **Words.** Text is NFC-normalized, lowercased and split into words and
  single punctuation marks (:func:`tokenize_words`). Chinese, which has no
  spaces between words, is handled three ways (:data:`Segmentation`): text
  already segmented by spaces keeps its words (a run of CJK characters is a
  word); raw Chinese is cut into words by jieba (``jieba``) or, without it,
  into single characters (``chars``, :data:`lmlab.tokenizer.WORD_PATTERN`'s
  split), which :func:`read_sentences` chooses and reports. Each line of a
  document is a sentence: context windows never cross a line.
* **word2vec and fastText** (Mikolov et al. 2013; Bojanowski et al. 2017) are
  trained by gensim, the reference implementation in Python: skip-gram or
  CBOW with negative sampling, and fastText's subword skip-gram.
* **GloVe** (Pennington et al. 2014) is written out here: windowed
  co-occurrence counts weighted by 1/distance, then the weighted least squares
  fit ``f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2`` with AdaGrad. The
  vectors are ``W + W~``, as in the paper.
* **Evaluation** on gensim's copies of the standard sets: the word2vec
  analogy questions (3CosAdd, accuracy per section), WordSim-353 and
  SimLex-999 (Spearman correlation). Written in numpy, batched; the tests
  check every number against gensim's ``evaluate_word_analogies`` and
  ``evaluate_word_pairs``.
* **Files**: word2vec text ("N D" header, then "word v1 ... vD") and binary,
  and GloVe's header-less text.
* **Into models**: :func:`init_embedding` copies vectors into the rows of an
  ``nn.Embedding`` (a GPT's ``wte``, a GRU classifier's input layer);
  :func:`word_tokenizer` makes a word-level :class:`~lmlab.tokenizer.Tokenizer`
  whose vocabulary is the vectors' words.

gensim and torch are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from lmlab.data.chinese import CJK
from lmlab.errors import LmlabError
from lmlab.tokenizer import WORD_PATTERN

if TYPE_CHECKING:
    import torch

    from lmlab.tokenizer import Tokenizer

Method = Literal["skipgram", "cbow", "fasttext", "glove"]
METHODS: tuple[str, ...] = ("skipgram", "cbow", "fasttext", "glove")
# GloVe fits a few million co-occurrence cells per epoch and needs more passes
# than word2vec's stream of words (the paper ran 50-100 iterations).
DEFAULT_EPOCHS = {"skipgram": 5, "cbow": 5, "fasttext": 5, "glove": 25}
# gensim's Cython routines silently cut sentences longer than this.
MAX_SENTENCE = 10_000

_WORD_RE = re.compile(WORD_PATTERN)
# As WORD_PATTERN, but a run of CJK ideographs is one word, so Chinese segmented
# by spaces (or by jieba) keeps its words: "中国 人民" gives 中国, 人民.
_VECTOR_WORD_RE = re.compile(rf"[{CJK}]+|[^\W{CJK}]+|[^\w\s]")
# How Chinese becomes words: "words" keeps what spaces separate, "jieba" cuts raw
# text into words first, "chars" makes every CJK character a word.
Segmentation = Literal["words", "jieba", "chars"]


# --------------------------------------------------------------------------- words


def tokenize_words(text: str, segmentation: Segmentation = "words") -> list[str]:
    """Lowercased words and punctuation marks of ``text``.

    ``"The King's 2 sons, 中国 人民"`` gives ``the king ' s 2 sons , 中国 人民``.
    A run of CJK characters is one word (``"words"``), cut by jieba into words
    (``"jieba"``), or cut into characters (``"chars"``: 中 国 人 民, the same
    split as :meth:`lmlab.tokenizer.Tokenizer.from_words`, tested).
    """
    text = unicodedata.normalize("NFC", text).lower()
    if segmentation == "chars":
        return _WORD_RE.findall(text)
    if segmentation == "jieba":
        from lmlab.data.chinese import segment

        return [w for piece in segment(text) for w in _VECTOR_WORD_RE.findall(piece)]
    return _VECTOR_WORD_RE.findall(text)


def sentences_of(documents: Iterable[str], segmentation: Segmentation = "words"
                 ) -> Iterator[list[str]]:
    """Each non-empty line of each document as a list of words (cut at 10,000 words)."""
    for doc in documents:
        for line in doc.split("\n"):
            words = tokenize_words(line, segmentation)
            for start in range(0, len(words), MAX_SENTENCE):
                yield words[start:start + MAX_SENTENCE]


def read_sentences(source: str | Path, *, jieba: bool = False,
                   warn: Callable[[str], None] | None = None) -> list[list[str]]:
    """Sentences (lists of words) of a corpus, held in memory for several passes.

    Chinese is cut into words by jieba with ``jieba``. Without it, Chinese
    segmented by spaces keeps its words, and Chinese without spaces between
    words (:func:`lmlab.data.chinese.needs_segmentation`) is cut into single
    characters, with a warning through ``warn`` (default: printed to stderr)
    that says to add --jieba.

    Args:
        source: ``"default"`` (the built-in Wikipedia extract), a folder made
            by ``lmlab corpus`` (both splits: word vectors are judged on the
            analogy and similarity sets, not on held-out text), or any file or
            folder :func:`lmlab.data.corpus.iter_documents` reads, plain text
            being one document per line.
        jieba: segment Chinese into words with jieba.
        warn: called with each warning line.
    """
    from lmlab.data.chinese import needs_segmentation
    from lmlab.data.corpus import default_corpus_source, has_split, iter_documents, read_split

    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = default_corpus_source() if str(source) == "default" else Path(source)
    if has_split(path, "train"):
        splits = [s for s in ("train", "val") if has_split(path, s)]
        docs: list[str] = [d for split in splits for d in read_split(path, split)]
    else:
        docs = list(iter_documents(path, txt_mode="line"))
    segmentation: Segmentation = "jieba" if jieba else "words"
    if not jieba and needs_segmentation(docs):
        segmentation = "chars"
        warn(f"warning: {source} is Chinese without spaces between words: training vectors "
             "of single characters; add --jieba for word vectors")
    sentences = list(sentences_of(docs, segmentation))
    if not sentences:
        raise LmlabError(f"{source}: no words to train word vectors on")
    return sentences


def build_vocab(sentences: Iterable[Sequence[str]], min_count: int = 5,
                max_words: int | None = None) -> tuple[list[str], np.ndarray]:
    """Words seen at least ``min_count`` times, most frequent first (ties alphabetical),
    and their counts."""
    counts: Counter[str] = Counter()
    for s in sentences:
        counts.update(s)
    ranked = sorted(((w, n) for w, n in counts.items() if n >= min_count),
                    key=lambda wn: (-wn[1], wn[0]))[:max_words]
    if not ranked:
        raise LmlabError(f"no word occurs at least min_count={min_count} times; "
                         "lower --min-count or use more text")
    return [w for w, _ in ranked], np.array([n for _, n in ranked], dtype=np.int64)


# --------------------------------------------------------------------------- vectors


@dataclass
class WordVectors:
    """Words and their vectors: row ``i`` of ``vectors`` (N, D) float32 is ``words[i]``.

    Rows are kept in file order; for trained vectors that is most frequent
    first, which ``restrict_vocab`` in the evaluations relies on.
    """

    words: list[str]
    vectors: np.ndarray
    path: Path | None = None  # the file it was read from or written to

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise LmlabError(f"{len(self.words)} words but vectors of shape "
                             f"{tuple(self.vectors.shape)}")

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.index[word]]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def name(self) -> str:
        """How messages name these vectors: the file, else "the vectors"."""
        return str(self.path) if self.path else "the vectors"

    @cached_property
    def index(self) -> dict[str, int]:
        """Word -> row; a word listed twice maps to its first row."""
        index: dict[str, int] = {}
        for i, w in enumerate(self.words):
            index.setdefault(w, i)
        return index

    def unit(self) -> np.ndarray:
        """Rows scaled to length 1 (zero rows stay zero), so dot products are cosines.

        Computed once and shared (like :attr:`index`): the evaluations and
        each :meth:`most_similar` call need it, and it is as large as ``vectors``.
        """
        return self._unit

    @cached_property
    def _unit(self) -> np.ndarray:
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return self.vectors / np.maximum(norms, 1e-12)

    def most_similar(self, word: str, topn: int = 10) -> list[tuple[str, float]]:
        """The ``topn`` words nearest to ``word`` by cosine similarity, itself excluded."""
        if word not in self.index:
            raise LmlabError(f"{word!r} is not in {self.name} ({len(self):,} words)")
        unit = self.unit()
        sims = unit @ unit[self.index[word]]
        sims[self.index[word]] = -np.inf
        top = np.argsort(-sims, kind="stable")[:topn]
        return [(self.words[i], float(sims[i])) for i in top]

    def save(self, path: str | Path, *, binary: bool = False) -> None:
        """Write word2vec text (or with ``binary``, word2vec binary) format, atomically."""
        save_vectors(self, path, binary=binary)


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """Trained vectors and how the training went."""

    vectors: WordVectors
    method: str
    corpus_words: int  # words in the sentences (before min_count)
    epochs: int
    seconds: float  # vocabulary, (co-occurrence counts) and training; not reading the corpus
    losses: list[float] = field(default_factory=list)  # GloVe: mean loss per nonzero, per epoch

    @property
    def words_per_s(self) -> float:
        """Corpus words times epochs per second of training."""
        return self.corpus_words * self.epochs / max(self.seconds, 1e-9)


def train_vectors(sentences: Sequence[Sequence[str]], method: Method | str = "skipgram", *,
                  dim: int = 100, window: int = 5, min_count: int = 5,
                  epochs: int | None = None, seed: int = 0, workers: int | None = None,
                  progress: bool = True, **kwargs) -> TrainResult:
    """Train word vectors by ``method``: skipgram / word2vec, cbow, fasttext or glove.

    ``epochs`` None takes :data:`DEFAULT_EPOCHS` of the method; ``kwargs``
    go to :func:`train_word2vec` or :func:`train_glove`.
    """
    method = "skipgram" if method == "word2vec" else method
    if method not in METHODS:
        raise LmlabError(f"unknown method {method!r}; use one of {', '.join(METHODS)} "
                         "(word2vec = skipgram)")
    for name, value in (("dim", dim), ("window", window), ("min_count", min_count)):
        if value < 1:
            raise LmlabError(f"{name} must be at least 1, got {value}")
    epochs = DEFAULT_EPOCHS[method] if epochs is None else epochs
    if epochs < 1:
        raise LmlabError(f"epochs must be at least 1, got {epochs}")
    common = dict(dim=dim, window=window, min_count=min_count, epochs=epochs, seed=seed,
                  progress=progress)
    if method == "glove":
        return train_glove(sentences, workers=workers, **common, **kwargs)
    return train_word2vec(sentences, method=method, workers=workers, **common, **kwargs)


def train_word2vec(sentences: Sequence[Sequence[str]], *,
                   method: Literal["skipgram", "cbow", "fasttext"] = "skipgram",
                   dim: int = 100, window: int = 5, min_count: int = 5, epochs: int = 5,
                   negative: int = 5, sample: float = 1e-3, buckets: int = 2_000_000,
                   seed: int = 0, workers: int | None = None,
                   progress: bool = True) -> TrainResult:
    """word2vec (skip-gram or CBOW) or fastText (subword skip-gram), with negative sampling.

    gensim's defaults otherwise (learning rate 0.025 falling linearly, for
    CBOW 0.05; subsampling of frequent words at ``sample``; fastText character
    n-grams of 3-6 hashed into ``buckets`` rows). ``workers`` None uses every
    core. Seeded, but gensim's threads make runs with ``workers > 1`` differ
    slightly, and its per-word seeds use Python's ``hash``: set
    ``PYTHONHASHSEED`` for repeatable vectors across processes. fastText's
    n-gram vectors are not exported: the result holds the vectors of
    in-vocabulary words.
    """
    from gensim.models import FastText, Word2Vec
    from gensim.models.callbacks import CallbackAny2Vec

    from lmlab.progress import progress_bar

    corpus_words = sum(len(s) for s in sentences)
    workers = workers or os.cpu_count() or 1
    bar = progress_bar(total=epochs, desc=method, unit=" epoch", disable=not progress)

    class EpochBar(CallbackAny2Vec):  # gensim calls it after each epoch
        def on_epoch_end(self, model) -> None:
            bar.update()

    args = dict(vector_size=dim, window=window, min_count=min_count, epochs=epochs,
                negative=negative, hs=0, sample=sample, seed=seed, workers=workers,
                sg=0 if method == "cbow" else 1)
    t0 = time.perf_counter()
    with bar:
        model = FastText(**args, bucket=buckets) if method == "fasttext" else Word2Vec(**args)
        model.build_vocab(sentences)
        if not model.wv.index_to_key:
            raise LmlabError(f"no word occurs at least min_count={min_count} times; "
                             "lower --min-count or use more text")
        model.train(sentences, total_examples=len(sentences), epochs=epochs,
                    callbacks=[EpochBar()])
    seconds = time.perf_counter() - t0
    # gensim sorts its vocabulary by frequency, so row order is ours too.
    vectors = WordVectors(list(model.wv.index_to_key), np.array(model.wv.vectors))
    return TrainResult(vectors, method, corpus_words, epochs, seconds)


def encode_sentences(sentences: Iterable[Sequence[str]],
                     index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Word ids of the in-vocabulary words, and the sentence each came from, both (n,) int64.

    Out-of-vocabulary words are dropped before windows are taken, as GloVe's
    cooccur.c (and word2vec) do.
    """
    ids: list[int] = []
    sentence_of: list[int] = []
    for k, s in enumerate(sentences):
        kept = [index[w] for w in s if w in index]
        ids.extend(kept)
        sentence_of.extend([k] * len(kept))
    return np.array(ids, dtype=np.int64), np.array(sentence_of, dtype=np.int64)


def cooccurrence(ids: np.ndarray, sentence_of: np.ndarray, vocab_size: int,
                 window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GloVe's co-occurrence matrix X as (rows, cols, values), rows then cols ascending.

    A pair of words ``d <= window`` positions apart in the same sentence adds
    ``1/d`` to ``X[i, j]`` and to ``X[j, i]`` (a symmetric window, weighted by
    distance as in GloVe). Counting is vectorised: for each distance ``d``,
    the (left, right) pairs are packed into one int64 key ``left * V + right``
    and counted with ``np.unique``; the per-distance counts, and their
    transpose, are then summed by key.
    """
    V = vocab_size
    keys, values = [], []
    for d in range(1, window + 1):
        same = sentence_of[d:] == sentence_of[:-d]  # both ends in one sentence
        pair_keys, counts = np.unique(ids[:-d][same] * V + ids[d:][same], return_counts=True)
        keys.append(pair_keys)
        values.append(counts / d)
    if not keys:
        return (np.zeros(0, np.int64),) * 2 + (np.zeros(0),)
    left_right = np.concatenate(keys)
    left, right = np.divmod(left_right, V)
    all_keys = np.concatenate([left_right, right * V + left])  # X + X^T: the symmetric window
    all_values = np.concatenate(values * 2)
    unique, inverse = np.unique(all_keys, return_inverse=True)
    totals = np.bincount(inverse, weights=all_values, minlength=len(unique))
    rows, cols = np.divmod(unique, V)
    return rows, cols, totals


class GloVe:
    """GloVe's parameters: word vectors W and bias b, context vectors W~ and bias b~,
    each with its AdaGrad accumulator, fitted by hand (no autograd, no torch.optim).

    The update is GloVe's glove.c, applied to a batch of cells at once: every
    cell takes its own AdaGrad step ``lr * g / sqrt(G)`` on its two rows, and
    adds its own ``g^2`` to the rows' accumulators ``G``. This matters. Summing
    the batch's gradients first (a sparse ``nn.Embedding`` and
    ``torch.optim.Adagrad`` with a summed loss) gives a frequent word, found in
    hundreds of a batch's cells, one step of at most ``lr`` per batch instead of
    hundreds, and an accumulator of the squared sum instead of the sum of
    squares: on 0.6 M words that version left WordSim-353 at 0.00 after 15
    epochs, this one reaches 0.11 (benchmarks/bench_embed.py).
    """

    def __init__(self, vocab_size: int, dim: int, generator: torch.Generator,
                 initial_accumulator: float = 1e-8) -> None:
        import torch

        V = vocab_size
        # glove.c's initialisation: uniform in [-0.5, 0.5] / dim.
        self.w = (torch.rand(V, dim, generator=generator) - 0.5) / dim  # (V, D)
        self.w_tilde = (torch.rand(V, dim, generator=generator) - 0.5) / dim  # (V, D)
        self.b = (torch.rand(V, generator=generator) - 0.5) / dim  # (V,)
        self.b_tilde = (torch.rand(V, generator=generator) - 0.5) / dim  # (V,)
        # Plain AdaGrad starts G near 0. glove.c starts it at 1 and accumulates
        # (lr g)^2, i.e. G0 = 1/lr^2 = 400: on 0.6 M words that stays plain SGD
        # for 15 epochs and gave WordSim 0.09 against 0.11.
        self.grad_sq = [torch.full_like(t, initial_accumulator)
                        for t in (self.w, self.w_tilde, self.b, self.b_tilde)]

    def step(self, i: torch.Tensor, j: torch.Tensor, log_x: torch.Tensor,
             f_x: torch.Tensor, lr: float) -> float:
        """One AdaGrad step per cell of a batch of (B,) cells; return the batch's loss
        ``0.5 * sum f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2`` before the step.

        Gradients are read from the parameters before the batch (as GloVe's
        Hogwild threads read slightly stale rows); a row found in k cells
        takes the k steps, each divided by the accumulator after all k squares.
        """
        w_i, w_j = self.w[i], self.w_tilde[j]  # (B, D)
        diff = (w_i * w_j).sum(-1) + self.b[i] + self.b_tilde[j] - log_x  # (B,)
        f_diff = f_x * diff  # dloss/db_i = dloss/db~_j, (B,)
        loss = 0.5 * float((f_diff * diff).sum())
        grads = (f_diff[:, None] * w_j, f_diff[:, None] * w_i, f_diff, f_diff)
        for param, grad_sq, rows, grad in zip((self.w, self.w_tilde, self.b, self.b_tilde),
                                              self.grad_sq, (i, j, i, j), grads, strict=True):
            grad_sq.index_add_(0, rows, grad * grad)
            param.index_add_(0, rows, grad * (-lr / grad_sq[rows].sqrt()))
        return loss

    def vectors(self) -> np.ndarray:
        """``W + W~`` (the paper's choice: the sum is a little better than either)."""
        return (self.w + self.w_tilde).numpy()


def train_glove(sentences: Sequence[Sequence[str]], *, dim: int = 100, window: int = 5,
                min_count: int = 5, epochs: int = 25, x_max: float = 100.0,
                alpha: float = 0.75, lr: float = 0.05, batch_size: int = 4096,
                max_words: int | None = None, seed: int = 0, workers: int | None = None,
                progress: bool = True,
                on_epoch: Callable[[int, float], None] | None = None) -> TrainResult:
    """GloVe: co-occurrence counts, then weighted least squares with AdaGrad.

    Minimizes ``sum f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2`` over the
    nonzero cells of X, with ``f(x) = min(1, (x / x_max)^alpha)``, visiting
    the cells in a fresh random order each epoch, ``batch_size`` at a time,
    each cell with its own AdaGrad step (see :class:`GloVe`).
    Deterministic for a given ``seed`` on one thread count. ``workers`` is
    the torch thread count, 1 when None: each step's tensors are small, so
    threads mostly wait for each other (on a busy 2-core machine, 2 threads
    ran 13x slower than 1). ``on_epoch(epoch, loss)`` is
    called after each epoch. ``losses`` in the result: mean of
    ``0.5 f(X_ij) diff^2`` per nonzero cell, per epoch.
    """
    import torch

    from lmlab.progress import progress_bar

    t0 = time.perf_counter()
    words, _ = build_vocab(sentences, min_count, max_words)
    ids, sentence_of = encode_sentences(sentences, {w: i for i, w in enumerate(words)})
    rows, cols, x = cooccurrence(ids, sentence_of, len(words), window)
    if len(x) == 0:
        raise LmlabError("no two vocabulary words share a window; use more text or a wider "
                         "--window")
    i, j = torch.from_numpy(rows), torch.from_numpy(cols)
    log_x = torch.from_numpy(np.log(x)).float()
    f_x = torch.from_numpy(np.minimum(1.0, (x / x_max) ** alpha)).float()

    threads = torch.get_num_threads()
    torch.set_num_threads(workers or 1)
    g = torch.Generator().manual_seed(seed)
    model = GloVe(len(words), dim, g)
    losses: list[float] = []
    n = len(x)
    try:
        bar = progress_bar(total=epochs, desc="glove", unit=" epoch", disable=not progress)
        with bar:
            for epoch in range(epochs):
                order = torch.randperm(n, generator=g)
                total = 0.0
                for start in range(0, n, batch_size):
                    b = order[start:start + batch_size]
                    total += model.step(i[b], j[b], log_x[b], f_x[b], lr)
                if not math.isfinite(total):
                    raise LmlabError(f"GloVe loss became {total} in epoch {epoch + 1}; "
                                     "lower --lr")
                losses.append(total / n)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update()
                if on_epoch:
                    on_epoch(epoch + 1, losses[-1])
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    vectors = WordVectors(words, model.vectors())
    return TrainResult(vectors, "glove", sum(len(s) for s in sentences), epochs, seconds, losses)


# --------------------------------------------------------------------------- evaluation


def _datapath(name: str) -> Path:
    """An evaluation set from gensim's test data, found without importing gensim."""
    from lmlab.data.corpus import gensim_test_data

    return gensim_test_data(name, f"the evaluation set {name}")


def analogy_path() -> Path:
    """The word2vec analogy questions (19,544 in 14 sections), from gensim's test data."""
    return _datapath("questions-words.txt")


def similarity_paths() -> dict[str, Path]:
    """WordSim-353 and SimLex-999, from gensim's test data."""
    return {"WordSim-353": _datapath("wordsim353.tsv"), "SimLex-999": _datapath("simlex999.txt")}


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its line break) of a UTF-8 text file."""
    from lmlab.data.corpus import _iter_lines  # names the file and line of bad bytes

    for lineno, line in _iter_lines(path):
        yield lineno, line.rstrip("\r\n")


def _lowercase_index(vectors: WordVectors, restrict_vocab: int | None) -> dict[str, int]:
    """Lowercased word -> row among the first ``restrict_vocab`` rows; the first row of
    a word's case variants wins (the most frequent one, in a frequency-sorted file)."""
    index: dict[str, int] = {}
    for i, w in enumerate(vectors.words[:restrict_vocab]):
        index.setdefault(w.lower(), i)
    return index


@dataclass
class AnalogyResult:
    """Analogy accuracy: per section (name, correct, answered), and the question counts."""

    sections: list[tuple[str, int, int]]
    questions: int  # in the file
    skipped: int  # with a word outside the (restricted) vocabulary

    @property
    def correct(self) -> int:
        return sum(c for _, c, _ in self.sections)

    @property
    def answered(self) -> int:
        return sum(n for _, _, n in self.sections)

    @property
    def accuracy(self) -> float:
        """Correct over answered (skipped questions are not counted, as in gensim)."""
        return self.correct / self.answered if self.answered else 0.0

    def section(self, name: str) -> tuple[int, int]:
        """(correct, answered) of one section, e.g. ``capital-common-countries``."""
        for s, c, n in self.sections:
            if s == name:
                return c, n
        raise KeyError(name)


def evaluate_analogies(vectors: WordVectors, path: str | Path | None = None, *,
                       restrict_vocab: int = 30_000, batch_size: int = 512) -> AnalogyResult:
    """Accuracy on "a is to b as c is to d" questions, by 3CosAdd (Mikolov et al. 2013).

    The answer is the word nearest by cosine to ``b - a + c`` (unit vectors)
    among the first ``restrict_vocab`` words, the question's three words (and
    their case variants) excluded. Case is ignored. Questions with a word
    outside those first words are skipped and counted. Same answers as
    gensim's ``KeyedVectors.evaluate_word_analogies(restrict_vocab=...)``,
    but all questions of a batch in one matrix product.

    Args:
        path: ``: section`` lines, then ``a b c d`` lines; default: the word2vec set.
    """
    path = Path(path) if path else analogy_path()
    index = _lowercase_index(vectors, restrict_vocab)
    sections: list[str] = []
    questions: list[tuple[int, int, int, int, int]] = []  # section, a, b, c, d
    total = skipped = 0
    for lineno, line in _read_lines(path):
        if line.startswith(":"):
            sections.append(line[1:].strip())
            continue
        words = line.lower().split()
        if not words:
            continue
        if len(words) != 4:
            raise LmlabError(f"{path}: line {lineno}: expected 4 words, found {len(words)}")
        if not sections:
            raise LmlabError(f"{path}: line {lineno}: a question before the first ': section' "
                             "line")
        total += 1
        if all(w in index for w in words):
            questions.append((len(sections) - 1, *(index[w] for w in words)))
        else:
            skipped += 1
    correct = np.zeros(len(sections), dtype=np.int64)
    answered = np.zeros(len(sections), dtype=np.int64)
    if questions:
        q = np.array(questions, dtype=np.int64)
        unit = vectors.unit()
        candidates = unit[:restrict_vocab]  # (N, D)
        # Row -> its lowercase form's first row: a candidate is excluded, or
        # right, by that form (as gensim's upper-cased comparison does).
        group = np.array([index[w.lower()] for w in vectors.words[:restrict_vocab]])
        for start in range(0, len(q), batch_size):
            sec, a, b, c, d = q[start:start + batch_size].T
            target = unit[b] - unit[a] + unit[c]  # (B, D)
            scores = target @ candidates.T  # (B, N); |target| is the same along a row
            g = group[None, :]
            scores[(g == a[:, None]) | (g == b[:, None]) | (g == c[:, None])] = -np.inf
            hit = group[scores.argmax(axis=1)] == d
            np.add.at(correct, sec, hit)
            np.add.at(answered, sec, 1)
    return AnalogyResult([(s, int(correct[k]), int(answered[k])) for k, s in enumerate(sections)],
                         total, skipped)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their mean rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Each run of equal values gets the mean of the positions it occupies.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (tie-averaged) ranks."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom else float("nan")


@dataclass
class SimilarityResult:
    """Spearman correlation of cosine similarity with human ratings of word pairs."""

    name: str
    spearman: float  # nan when fewer than 2 pairs are known
    pairs: int  # pairs with both words known
    oov: int  # pairs skipped for an unknown word


def evaluate_similarity(vectors: WordVectors, path: str | Path, *, name: str | None = None,
                        restrict_vocab: int = 300_000) -> SimilarityResult:
    """Spearman correlation between cosine similarities and the ratings in ``path``.

    ``path`` holds ``word1<TAB>word2<TAB>rating`` lines (``#`` lines are
    comments), as WordSim-353 and SimLex-999 in gensim's test data. Case is
    ignored; pairs with a word outside the first ``restrict_vocab`` words are
    skipped and counted. Same numbers as gensim's ``evaluate_word_pairs``.
    """
    path = Path(path)
    index = _lowercase_index(vectors, restrict_vocab)
    unit = vectors.unit()
    gold: list[float] = []
    model: list[float] = []
    oov = 0
    for lineno, line in _read_lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        try:
            a, b, rating = parts[0].lower(), parts[1].lower(), float(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise LmlabError(f"{path}: line {lineno}: expected 'word<TAB>word<TAB>rating', "
                             f"got {line[:80]!r}") from None
        if a not in index or b not in index:
            oov += 1
            continue
        gold.append(rating)
        model.append(float(unit[index[a]] @ unit[index[b]]))
    rho = spearman(gold, model) if len(gold) > 1 else float("nan")
    return SimilarityResult(name or path.name, rho, len(gold), oov)


@dataclass
class Evaluation:
    """The standard word-vector evaluation: analogies, WordSim-353, SimLex-999.

    The sets are English; on vectors of another language (Chinese) they are
    skipped: ``analogies`` is None, ``similarities`` empty, and ``note`` says why.
    """

    analogies: AnalogyResult | None
    similarities: list[SimilarityResult]
    restrict_vocab: int
    note: str = ""

    def format(self) -> str:
        """A plain-text report: one line per analogy section, then the similarity sets."""
        a = self.analogies
        if a is None:
            return f"note: {self.note}"
        lines = [f"analogies (3CosAdd over the {self.restrict_vocab:,} most frequent words): "
                 f"{a.correct:,}/{a.answered:,} "
                 f"correct = {a.accuracy:.1%}; {a.skipped:,} of {a.questions:,} questions "
                 "skipped (a word out of vocabulary)"]
        width = max((len(s) for s, _, _ in a.sections), default=0)
        for s, c, n in a.sections:
            acc = f"{c / n:6.1%}" if n else "     -"
            lines.append(f"  {s:<{width}}  {acc}  ({c:,}/{n:,})")
        for r in self.similarities:
            lines.append(f"{r.name}: Spearman {r.spearman:.3f} on {r.pairs} pairs "
                         f"({r.oov} skipped, a word out of vocabulary)")
        return "\n".join(lines)


# The language of a vocabulary is judged on its most frequent words.
LANGUAGE_WORDS = 10_000


def evaluate(vectors: WordVectors, *, restrict_vocab: int = 30_000) -> Evaluation:
    """Analogy accuracy (first ``restrict_vocab`` words) and WordSim/SimLex Spearman.

    The sets are English: when most of the 10,000 first words with letters
    are Chinese (:func:`lmlab.data.chinese.cjk_word_share` at least 0.5) they
    would score nothing ("0/0", Spearman nan), so they are skipped with a note.
    """
    from lmlab.data.chinese import CHINESE_SHARE, cjk_word_share

    share = cjk_word_share(vectors.words[:LANGUAGE_WORDS])
    if share >= CHINESE_SHARE:
        note = (f"{share:.0%} of the most frequent words are Chinese: the English analogy, "
                "WordSim-353 and SimLex-999 sets were skipped (no Chinese set ships with "
                "lmlab); look at neighbours with `lmlab embed neighbors VECTORS WORD`")
        return Evaluation(None, [], restrict_vocab, note)
    analogies = evaluate_analogies(vectors, restrict_vocab=restrict_vocab)
    sims = [evaluate_similarity(vectors, p, name=n) for n, p in similarity_paths().items()]
    return Evaluation(analogies, sims, restrict_vocab)


# --------------------------------------------------------------------------- files


def save_vectors(vectors: WordVectors, path: str | Path, *, binary: bool = False) -> None:
    """Write word2vec format: a ``"N D"`` line, then one ``word v1 ... vD`` line per word
    (``binary``: the word, a space, D little-endian float32, a newline).

    Written to a temporary file and renamed, so a crash leaves no partial file.
    """
    from lmlab.atomic import atomic_open

    path = Path(path)
    for w in vectors.words:
        if not w or any(c.isspace() for c in w):
            raise LmlabError(f"{path}: cannot write the word {w!r}: word2vec files need "
                             "words without whitespace")
    N, D = vectors.vectors.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(f"{N} {D}\n".encode())
        if binary:
            data = vectors.vectors.astype("<f4")
            for w, row in zip(vectors.words, data, strict=True):
                f.write(w.encode("utf-8") + b" " + row.tobytes() + b"\n")
        else:
            # repr-exact float32 round trip needs 9 significant digits.
            for w, row in zip(vectors.words, vectors.vectors.tolist(), strict=True):
                f.write((w + " " + " ".join(f"{v:.9g}" for v in row) + "\n").encode())
    vectors.path = path


def _parse_row(path: Path, lineno: int, parts: list[str], dim: int) -> np.ndarray:
    if len(parts) != dim + 1:
        raise LmlabError(f"{path}: line {lineno}: expected a word and {dim} numbers, found "
                         f"{len(parts) - 1} numbers")
    try:
        row = np.array(parts[1:], dtype=np.float32)
    except ValueError:
        bad = next(p for p in parts[1:] if not _is_number(p))
        raise LmlabError(f"{path}: line {lineno}: {bad[:40]!r} is not a number") from None
    if not np.isfinite(row).all():
        raise LmlabError(f"{path}: line {lineno}: the vector holds inf or nan")
    return row


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _header(line: bytes) -> tuple[int, int] | None:
    """(N, D) if ``line`` is a word2vec header, else None (a GloVe file's first vector)."""
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def _looks_binary(rest: bytes) -> bool:
    """Whether the bytes after a header are word2vec binary: float32 bytes are rarely UTF-8."""
    head = rest[:4096]
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start < len(head) - 3  # not just a character cut by the 4096-byte slice
    return False


def load_vectors(path: str | Path, *, binary: bool | None = None) -> WordVectors:
    """Read word vectors: word2vec text or binary (with an ``"N D"`` header), or GloVe
    text (no header; the first line sets the dimension).

    ``binary`` None detects it. Raises LmlabError naming the file and line (or,
    in binary files, the entry) for malformed input: wrong field counts,
    numbers that do not parse or are not finite, a header that disagrees with
    the rows, truncated binary data, text that is not UTF-8.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LmlabError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LmlabError(f"{path}: is a directory, not a word-vector file") from None
    if not data.strip():
        raise LmlabError(f"{path}: empty file, no word vectors")
    first, _, rest = data.partition(b"\n")
    header = _header(first)
    if binary is None:
        binary = header is not None and _looks_binary(rest)
    if binary:
        if header is None:
            raise LmlabError(f"{path}: line 1: a binary word2vec file starts with an 'N D' "
                             f"header, got {first[:60]!r}")
        words, rows = _read_binary(path, rest, *header)
    else:
        words, rows = _read_text_vectors(path, data, header)
    if not words:
        raise LmlabError(f"{path}: no word vectors after the header")
    return WordVectors(words, np.stack(rows), path=path)


def _read_text_vectors(path: Path, data: bytes,
                       header: tuple[int, int] | None) -> tuple[list[str], list[np.ndarray]]:
    lines = data.split(b"\n")
    start = 1 if header else 0
    dim = header[1] if header else None
    words: list[str] = []
    rows: list[np.ndarray] = []
    for lineno, raw in enumerate(lines[start:], start + 1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise LmlabError(f"{path}: line {lineno} is not UTF-8 text "
                             "(a binary word2vec file? pass binary=True)") from None
        # Words are separated by one space: GloVe's 840B file has words that
        # are themselves odd Unicode spaces, so split on " " only.
        parts = line.rstrip(" ").split(" ")
        if parts == [""]:
            continue
        if dim is None:
            dim = len(parts) - 1
            if dim < 1:
                raise LmlabError(f"{path}: line {lineno}: a word with no numbers after it")
        words.append(parts[0])
        rows.append(_parse_row(path, lineno, parts, dim))
    if header and len(words) != header[0]:
        raise LmlabError(f"{path}: the header says {header[0]:,} vectors but the file holds "
                         f"{len(words):,}")
    return words, rows


def _read_binary(path: Path, rest: bytes, n: int,
                 dim: int) -> tuple[list[str], list[np.ndarray]]:
    words: list[str] = []
    rows: list[np.ndarray] = []
    pos = 0
    width = 4 * dim
    for k in range(1, n + 1):
        space = rest.find(b" ", pos)
        if space < 0 or space + 1 + width > len(rest):
            raise LmlabError(f"{path}: vector {k} of {n:,} is cut short: the file ends "
                             "early, or the header's dimension is wrong")
        try:
            word = rest[pos:space].lstrip(b"\n").decode("utf-8")
        except UnicodeDecodeError:
            raise LmlabError(f"{path}: vector {k}: its word is not UTF-8") from None
        if not word:
            raise LmlabError(f"{path}: vector {k}: empty word (is the header's dimension right?)")
        row = np.frombuffer(rest, dtype="<f4", count=dim, offset=space + 1).astype(np.float32)
        if not np.isfinite(row).all():
            raise LmlabError(f"{path}: vector {k} ({word!r}) holds inf or nan")
        words.append(word)
        rows.append(row)
        pos = space + 1 + width
    if rest[pos:].strip():
        raise LmlabError(f"{path}: data after the {n:,} vectors the header announces")
    return words, rows


def to_keyed_vectors(vectors: WordVectors):  # -> gensim.models.KeyedVectors
    """The same vectors as a gensim ``KeyedVectors`` (for gensim's own tools)."""
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=vectors.dim)
    kv.add_vectors(vectors.words, vectors.vectors)
    return kv


# --------------------------------------------------------------------------- into models


def _candidates(token: str) -> list[str]:
    """Spellings of a vocabulary token to look up: itself, then without a word-start
    marker (a space, byte-level BPE's 'Ġ', SentencePiece's '▁')."""
    bare = token.lstrip(" Ġ▁")
    return [token, bare] if bare and bare != token else [token]


def _token_texts(vocab: Tokenizer | Mapping[str, int]) -> dict[int, str]:
    """Id -> the text a token stands for, where it is a whole word or a word start.

    WordPiece ``##`` continuations are left out: "##ing" is a piece of a
    word, and the vector of the word "ing" would be a wrong start for it.
    Special tokens are left out. Byte-level BPE tokens are turned from their
    byte symbols back into text ("Ġcafé" is stored as "ĠcafÃ©").
    """
    from lmlab.tokenizer import CONTINUING_PREFIX, Tokenizer, _bytes_to_unicode

    if isinstance(vocab, Tokenizer):
        specials = set(vocab.special_tokens)
        entries = vocab._tok.get_vocab(with_added_tokens=True)
        byte_of = ({c: b for b, c in enumerate(_bytes_to_unicode())} if vocab.kind == "bpe"
                   else None)
    else:
        specials, entries, byte_of = set(), dict(vocab), None
    texts: dict[int, str] = {}
    for token, i in entries.items():
        if token in specials or token.startswith(CONTINUING_PREFIX):
            continue
        if byte_of is not None:
            try:
                token = bytes(byte_of[c] for c in token).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                continue  # part of a character, or not made of byte symbols
        texts[int(i)] = token
    return texts


def init_embedding(embedding: torch.nn.Embedding | torch.Tensor,
                   vocab: Tokenizer | Mapping[str, int], vectors: WordVectors, *,
                   rescale: bool = False) -> tuple[int, int]:
    """Copy word vectors into the rows of an embedding; return (hits, vocabulary size).

    For each token of ``vocab`` (an lmlab Tokenizer, or a token -> id dict),
    the first of its spellings found in ``vectors`` is copied into row ``id``:
    the token itself, then without a word-start marker ('Ġ' of byte-level
    BPE, '▁' of SentencePiece), then either of these with case ignored
    (the vectors' most frequent case variant). Special tokens, WordPiece
    ``##`` continuations and tokens without a vector keep their current
    (random) rows. With ``rescale``, the copied vectors are scaled so their
    standard deviation equals the embedding's before the copy (a GPT's rows
    have std 0.02; raw word2vec rows are ~10x larger).

    Args:
        embedding: an ``nn.Embedding`` (e.g. ``model.transformer.wte``) or its
            (V, C) weight tensor; changed in place.
        vocab: the model's tokenizer or vocabulary.
        vectors: word vectors of dimension C.

    Raises:
        LmlabError: the dimensions differ, or the vocabulary has ids beyond
            the embedding's rows.
    """
    import torch

    weight = embedding.weight if isinstance(embedding, torch.nn.Embedding) else embedding
    V, C = weight.shape
    if vectors.dim != C:
        raise LmlabError(f"{vectors.name} has {vectors.dim}-dim vectors; the model's "
                         f"embeddings are {C}-dim")
    texts = _token_texts(vocab)
    total = len(vocab) if isinstance(vocab, Mapping) else vocab.vocab_size
    too_big = max(texts, default=-1)
    if too_big >= V:
        raise LmlabError(f"the vocabulary has id {too_big} but the embedding has only {V} rows")
    exact, caseless = vectors.index, _lowercase_index(vectors, None)
    rows, sources = [], []
    for i, token in sorted(texts.items()):
        forms = _candidates(token)
        found = next((exact[f] for f in forms if f in exact), None)
        if found is None:
            found = next((caseless[f.lower()] for f in forms if f.lower() in caseless), None)
        if found is not None:
            rows.append(i)
            sources.append(found)
    if rows:
        with torch.no_grad():
            new = torch.from_numpy(vectors.vectors[sources]).to(weight.dtype)
            if rescale:
                new = new * (weight.float().std() / new.float().std().clamp_min(1e-12))
            weight[torch.tensor(rows)] = new.to(weight.device)
    return len(rows), total


def word_tokenizer(vectors: WordVectors, max_words: int | None = None) -> Tokenizer:
    """A word-level Tokenizer over the (first ``max_words``) words of ``vectors``.

    ``[PAD]`` = 0, ``[UNK]`` = 1, then the words lowercased, in file order
    (case variants after the first left out, and words that are not a single
    :data:`~lmlab.tokenizer.WORD_PATTERN` piece, which the tokenizer could
    never produce, such as "new york" or "don't"). :func:`init_embedding`
    then fills every word's row.
    """
    from lmlab.tokenizer import Tokenizer

    words = dict.fromkeys(w.lower() for w in vectors.words[:max_words])
    return Tokenizer.from_words([w for w in words if _WORD_RE.fullmatch(w)])

