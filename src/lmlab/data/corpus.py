"""Turn text files into a clean, deduplicated train/validation corpus.

Inputs are plain text (``.txt``, ``.md``, anything else that is UTF-8),
JSON Lines (``.jsonl``), MediaWiki dumps (``.xml``, ``.xml.bz2``) or folders of
them. A built corpus is a directory holding::

    train.jsonl   one {"text": ...} object per line, a document each
    val.jsonl     the same, for the validation documents
    corpus.json   the statistics, the inputs and the settings used

Documents are streamed end to end: memory holds one document plus a 16-byte
digest per document kept (for deduplication), never the corpus; near-duplicate
removal adds a MinHash signature and its LSH entries (a few KB) per document kept.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import heapq
import importlib.util
import json
import unicodedata
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from lmlab.atomic import atomic_dir
from lmlab.errors import LmlabError

__all__ = [
    "CorpusStats",
    "TxtMode",
    "build_corpus",
    "default_corpus_source",
    "iter_documents",
    "iter_json_lines",
    "normalize_document",
    "read_split",
    "split_warning",
]

TxtMode = Literal["paragraph", "file", "line"]

# gensim ships a 206-page slice of English Wikipedia (106 articles once the
# redirects are skipped) as test data, which makes a built-in corpus without
# a download.
GENSIM_WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

# Suffixes read when walking a directory; anything else there is skipped.
DIRECTORY_SUFFIXES = (".txt", ".md", ".jsonl", ".xml", ".xml.bz2")
SPLITS = ("train", "val")

_SNIFF_BYTES = 8192
# Compressed or packed files whose first bytes may well contain no NUL.
_BINARY_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed"),
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"PK\x03\x04", "a zip archive"),
    (b"%PDF-", "a PDF"),
)


def gensim_test_data(name: str, what: str) -> Path:
    """A file of gensim's test data (``what`` names it in errors).

    The path is found without importing gensim (which takes ~2 s, pulling in
    scipy): its test data lives at ``gensim/test/test_data`` in the package.
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise LmlabError(f"{what} comes with gensim, which is not installed "
                         "(pip install gensim==4.4.0)")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    path = package_dir / "test" / "test_data" / name
    if not path.is_file():
        raise LmlabError(f"{path}: {what} is missing from gensim's test data; reinstall gensim")
    return path


def default_corpus_source() -> Path:
    """The built-in corpus: the Wikipedia dump in gensim's test data."""
    return gensim_test_data(GENSIM_WIKI_DUMP, "the built-in corpus (gensim's test Wikipedia "
                            "dump; or pass your own text files)")


# --------------------------------------------------------------------------- reading


def _check_not_binary(path: Path, head: bytes) -> None:
    """Refuse files that are not text, judged from their first bytes."""
    nul = head.find(b"\x00")
    if nul >= 0:
        raise LmlabError(
            f"{path}: looks binary (NUL byte at offset {nul}); lmlab reads UTF-8 text "
            "(convert UTF-16 files to UTF-8 first)"
        )
    for magic, kind in _BINARY_MAGIC:
        if head.startswith(magic):
            raise LmlabError(f"{path}: looks binary ({kind}); give lmlab the UTF-8 text inside")


def _decode_error(path: Path, err: UnicodeDecodeError, offset: int, line: int) -> LmlabError:
    bad = err.object[err.start]
    return LmlabError(
        f"{path}: not UTF-8 text (byte 0x{bad:02x} at byte offset {offset + err.start}, "
        f"line {line}); re-save the file as UTF-8"
    )


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its newline) of a UTF-8 text file.

    Decoding line by line keeps memory flat on large files and lets a decoding
    error name its line; splitting bytes at b"\\n" is safe because UTF-8 never
    uses that byte inside a multi-byte character.
    """
    try:
        with open(path, "rb") as f:
            _check_not_binary(path, f.read(_SNIFF_BYTES))
            f.seek(0)
            offset = 0
            for lineno, raw in enumerate(f, 1):
                start = 0
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    start = len(codecs.BOM_UTF8)  # Windows editors add it; it is not text
                try:
                    line = raw[start:].decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _decode_error(path, err, offset + start, lineno) from None
                yield lineno, line
                offset += len(raw)
    except OSError as err:
        raise LmlabError(f"{path}: cannot read ({err.strerror or err})") from None


def _read_whole(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LmlabError(f"{path}: cannot read ({err.strerror or err})") from None
    _check_not_binary(path, data[:_SNIFF_BYTES])
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, start + err.start) + 1
        raise _decode_error(path, err, start, line) from None


def _iter_text(path: Path, txt_mode: TxtMode) -> Iterator[str]:
    if txt_mode == "file":
        yield _read_whole(path)
    elif txt_mode == "line":
        for _, line in _iter_lines(path):
            if line.strip():
                yield line.rstrip("\r\n")
    else:
        paragraph: list[str] = []
        for _, line in _iter_lines(path):
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "".join(paragraph)
                paragraph = []
        if paragraph:
            yield "".join(paragraph)


def iter_json_lines(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSON Lines file.

    ``lines`` are (1-based line number, text) pairs, as :func:`_iter_lines`
    gives them; ``path`` only names the file in errors.

    Raises:
        LmlabError: a line is not valid JSON (naming the line and column).
    """
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise LmlabError(
                f"{path}: line {lineno} is not valid JSON ({err.msg} at column {err.colno})"
            ) from None
        yield lineno, obj


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    for lineno, obj in iter_json_lines(path, _iter_lines(path)):
        if not isinstance(obj, dict) or text_field not in obj:
            found = (
                f"keys: {', '.join(map(str, obj))}" if isinstance(obj, dict) else "not an object"
            )
            raise LmlabError(
                f"{path}: line {lineno} has no {text_field!r} field ({found}); "
                "choose the field with --text-field"
            )
        value = obj[text_field]
        if not isinstance(value, str):
            raise LmlabError(
                f"{path}: line {lineno}: field {text_field!r} is a {type(value).__name__}, "
                "not a string"
            )
        yield value


def _is_wiki_dump(path: Path) -> bool:
    """``.xml``, ``.xml.bz2``, or Wikipedia's split-dump names (``...xml-p10p30302.bz2``)."""
    name = path.name.lower()
    return name.endswith(".xml") or (name.endswith(".bz2") and ".xml" in name)


def _iter_file(path: Path, text_field: str, txt_mode: TxtMode) -> Iterator[str]:
    if _is_wiki_dump(path):
        from lmlab.data.wiki import iter_wiki_articles  # mwparserfromhell only when needed

        for _, text in iter_wiki_articles(path):
            yield text
    elif path.name.lower().endswith(".jsonl"):
        yield from _iter_jsonl(path, text_field)
    else:
        yield from _iter_text(path, txt_mode)


def _directory_files(path: Path) -> list[Path]:
    """Corpus files under a directory, recursively, in a fixed (sorted) order.

    Hidden files and folders (.git, .ipynb_checkpoints, a build's own
    temporary directory) are skipped.
    """
    files = []
    for file in path.rglob("*"):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        wanted = file.name.lower().endswith(DIRECTORY_SUFFIXES) or _is_wiki_dump(file)
        if wanted and file.is_file():
            files.append(file)
    return sorted(files)


def iter_documents(
    path: Path,
    *,
    text_field: str = "text",
    txt_mode: TxtMode = "paragraph",
) -> Iterator[str]:
    """Stream the raw documents of a file or directory.

    Args:
        path: a file or a directory. A directory is walked recursively in
            sorted order, reading files ending in .txt, .md, .jsonl, .xml or
            .xml.bz2 and skipping the rest. A .jsonl file gives one document
            per line (the ``text_field`` of each JSON object); .xml/.xml.bz2
            is a MediaWiki dump giving one document per article; any other
            file is UTF-8 text split according to ``txt_mode``.
        text_field: the JSON field holding the text in .jsonl files.
        txt_mode: how plain text splits into documents: ``paragraph`` (blocks
            separated by blank lines), ``file`` (the whole file) or ``line``
            (each non-blank line).

    Raises:
        LmlabError: the path is missing, unreadable, binary, not UTF-8,
            malformed, or holds no documents at all.
    """
    path = Path(path)
    if txt_mode not in get_args(TxtMode):
        raise LmlabError(f"unknown txt_mode {txt_mode!r}; use paragraph, file or line")
    if not path.exists():
        raise LmlabError(f"{path}: no such file or directory")
    if path.is_dir():
        files = _directory_files(path)
        if not files:
            raise LmlabError(f"{path}: no {', '.join(DIRECTORY_SUFFIXES)} files in this directory")
    else:
        files = [path]
    count = 0
    for file in files:
        for document in _iter_file(file, text_field, txt_mode):
            count += 1
            yield document
    if count == 0:
        raise LmlabError(f"{path}: contains no documents")


# --------------------------------------------------------------------------- building


def normalize_document(text: str) -> str:
    """Canonical form of a document, so that equal texts compare equal.

    Unicode NFC (a precomposed "é" and "e" + combining accent become the same
    code points, so the tokenizer sees one spelling), ``\\n`` line endings,
    no trailing whitespace on any line, no blank lines at either end.
    Indentation at the start of lines is kept.
    """
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


@dataclasses.dataclass
class CorpusStats:
    """Counts from one corpus build (chars are code points, bytes are UTF-8)."""

    documents_read: int = 0
    empty_dropped: int = 0  # empty, or shorter than min_chars, after normalization
    duplicates_dropped: int = 0
    near_duplicates_dropped: int = 0  # with near_dup: MinHash Jaccard >= the threshold
    train_docs: int = 0
    val_docs: int = 0
    train_chars: int = 0
    val_chars: int = 0
    train_bytes: int = 0
    val_bytes: int = 0
    # With scrub: matches masked in the documents kept, per kind of personal data.
    scrubbed: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The counts as a plain dict (for JSON)."""
        return dataclasses.asdict(self)

    def add(self, split: str, text: str, sign: int = 1) -> None:
        """Count (or with ``sign=-1`` uncount) a document in a split."""
        setattr(self, f"{split}_docs", getattr(self, f"{split}_docs") + sign)
        setattr(self, f"{split}_chars", getattr(self, f"{split}_chars") + sign * len(text))
        nbytes = len(text.encode("utf-8"))
        setattr(self, f"{split}_bytes", getattr(self, f"{split}_bytes") + sign * nbytes)


def _split_score(digest: bytes, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the document's text and the seed.

    Hashing the text (rather than drawing from an RNG in reading order) makes
    the split independent of file order: the same documents and seed give the
    same validation set however the inputs are listed or walked.
    """
    keyed = hashlib.blake2b(digest, digest_size=8, key=str(seed).encode("utf-8")).digest()
    return int.from_bytes(keyed, "big") / 2**64


def _check_output_dir(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output that would destroy user data or read itself back."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise LmlabError(f"{out_dir}: exists and is not a directory; choose another output")
        if any(out_dir.iterdir()) and not (out_dir / "corpus.json").is_file():
            raise LmlabError(
                f"{out_dir}: exists and is not an lmlab corpus (no corpus.json); "
                "refusing to replace it, choose another output directory"
            )
    resolved = out_dir.resolve()
    for path in inputs:
        if path.is_dir() and resolved.is_relative_to(path.resolve()):
            raise LmlabError(
                f"{out_dir}: output directory is inside the input directory {path}; "
                "its own files would be read back as input"
            )


def build_corpus(
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    text_field: str = "text",
    txt_mode: TxtMode = "paragraph",
    val_fraction: float = 0.05,
    seed: int = 0,
    min_chars: int = 1,
    progress: bool = True,
    scrub: bool = False,
    near_dup: bool = False,
    near_dup_threshold: float = 0.8,
) -> CorpusStats:
    """Clean, deduplicate and split documents into ``out_dir``.

    Every document is normalized (:func:`normalize_document`) and, with
    ``scrub``, has its personal data masked (:func:`lmlab.data.privacy.scrub`);
    documents shorter than ``min_chars`` and exact duplicates are dropped, and
    with ``near_dup`` so are near-duplicates of a document kept earlier
    (:class:`lmlab.data.neardup.NearDuplicates`). Validation
    gets ``round(val_fraction * kept)`` whole documents, those whose hash of
    text keyed by ``seed`` is lowest (deterministic, whatever the input
    order); with two or more documents it gets at least one and train is
    never empty.

    The corpus is written to a hidden sibling directory and renamed into
    place only when complete, so a failed build leaves no partial ``out_dir``
    and an existing corpus there is replaced only at the very end.

    Args:
        inputs: files or directories (see :func:`iter_documents`).
        out_dir: the corpus directory to create or replace.
        text_field: the JSON field holding the text in .jsonl inputs.
        txt_mode: how plain text splits into documents: paragraph, file or line.
        val_fraction: expected share of documents in validation, in (0, 1).
        seed: changes which documents go to validation.
        min_chars: documents shorter than this (after normalization) are dropped.
        progress: show a progress bar on stderr.
        scrub: mask e-mail addresses, phone numbers, IP addresses, card and
            identity numbers and URL secrets before de-duplication.
        near_dup: drop documents whose shingle sets have an estimated Jaccard
            similarity of at least ``near_dup_threshold`` with a kept one.
        near_dup_threshold: the similarity, in (0, 1), from which a document
            counts as a near-duplicate.

    Returns:
        The counts, also saved in ``out_dir/corpus.json``.

    Raises:
        LmlabError: bad settings, an unreadable or malformed input, or an
            empty corpus after cleaning.
    """
    paths = [Path(p) for p in inputs]
    out_dir = Path(out_dir)
    if not paths:
        raise LmlabError("build_corpus: no input files given")
    if not 0.0 < val_fraction < 1.0:
        raise LmlabError(f"build_corpus: val_fraction must be between 0 and 1, got {val_fraction}")
    if min_chars < 1:
        raise LmlabError(f"build_corpus: min_chars must be at least 1, got {min_chars}")
    if not 0.0 < near_dup_threshold < 1.0:
        raise LmlabError(
            f"build_corpus: near_dup_threshold must be between 0 and 1, got {near_dup_threshold}"
        )
    for path in paths:
        if not path.exists():
            raise LmlabError(f"{path}: no such file or directory")
    _check_output_dir(out_dir, paths)

    # Ctrl-C included, a failure never leaves a half-written corpus behind.
    with atomic_dir(out_dir) as tmp:
        stats = _write_corpus(
            paths, tmp, text_field, txt_mode, val_fraction, seed, min_chars, progress,
            scrub=scrub, near_dup_threshold=near_dup_threshold if near_dup else None,
        )
        meta: dict[str, Any] = {
            "format": "lmlab-corpus",
            "version": 1,
            "inputs": [str(p.resolve()) for p in paths],
            "settings": {
                "text_field": text_field,
                "txt_mode": txt_mode,
                "val_fraction": val_fraction,
                "seed": seed,
                "min_chars": min_chars,
                "scrub": scrub,
                "near_dup_threshold": near_dup_threshold if near_dup else None,
            },
            "stats": stats.to_dict(),
        }
        (tmp / "corpus.json").write_text(
            json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return stats


def _val_count(total: int, val_fraction: float) -> int:
    """Validation size: the requested share, at least 1 doc given 2+, never all of them."""
    if total < 2:
        return 0
    return min(max(1, round(total * val_fraction)), total - 1)


def _write_corpus(
    paths: list[Path],
    tmp: Path,
    text_field: str,
    txt_mode: TxtMode,
    val_fraction: float,
    seed: int,
    min_chars: int,
    progress: bool,
    *,
    scrub: bool = False,
    near_dup_threshold: float | None = None,
) -> CorpusStats:
    """Clean every document into ``tmp``, then route each to train.jsonl or val.jsonl.

    Two passes over a temporary file give validation exactly its share
    (``val_fraction`` of the documents kept): the documents with the lowest
    split scores. Memory holds 8 bytes of score and a 16-byte digest per
    document, never the texts.
    """
    from lmlab.progress import progress_bar

    stats = CorpusStats()
    scrubbed: Counter[str] = Counter()  # in the documents kept
    found: Counter[str] = Counter()  # in the current document
    if scrub:
        from lmlab.data.privacy import KINDS
        from lmlab.data.privacy import scrub as scrub_text

        stats.scrubbed = dict.fromkeys(KINDS, 0)
    near = None
    if near_dup_threshold is not None:
        from lmlab.data.neardup import NearDuplicates

        near = NearDuplicates(near_dup_threshold)
    seen: set[bytes] = set()
    scores = array("d")  # split score of the i-th kept document
    kept = tmp / "documents.jsonl"
    with (
        open(kept, "w", encoding="utf-8") as out,
        progress_bar(desc="corpus", unit=" docs", disable=not progress) as bar,
    ):
        for path in paths:
            for raw in iter_documents(path, text_field=text_field, txt_mode=txt_mode):
                stats.documents_read += 1
                bar.update()
                text = normalize_document(raw)
                if scrub:
                    text, found = scrub_text(text)
                if len(text) < min_chars:
                    stats.empty_dropped += 1
                    continue
                digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                if digest in seen:
                    stats.duplicates_dropped += 1
                    continue
                seen.add(digest)
                if near is not None and near.is_duplicate(text):
                    stats.near_duplicates_dropped += 1
                    continue
                if scrub:
                    scrubbed.update(found)
                scores.append(_split_score(digest, seed))
                out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")

    if not scores:
        names = ", ".join(str(p) for p in paths)
        raise LmlabError(
            f"{names}: the corpus is empty after cleaning ({stats.documents_read} documents read, "
            f"{stats.empty_dropped} shorter than min_chars={min_chars}, "
            f"{stats.duplicates_dropped} duplicates)"
        )
    in_val = bytearray(len(scores))
    for i in heapq.nsmallest(
        _val_count(len(scores), val_fraction), range(len(scores)), key=scores.__getitem__
    ):
        in_val[i] = 1
    with (
        open(kept, encoding="utf-8") as fin,
        open(tmp / "train.jsonl", "w", encoding="utf-8") as train_f,
        open(tmp / "val.jsonl", "w", encoding="utf-8") as val_f,
    ):
        for i, line in enumerate(fin):
            split, f = ("val", val_f) if in_val[i] else ("train", train_f)
            f.write(line)
            stats.add(split, json.loads(line)["text"])
    kept.unlink()
    if scrub:
        stats.scrubbed.update(scrubbed)
    return stats


def split_warning(stats: CorpusStats, out_dir: Path, txt_mode: TxtMode) -> str | None:
    """The warning for a corpus whose validation split came out empty, else None.

    That happens when the inputs gave a single document (after cleaning and
    deduplication): nothing can be held out, and every later step that scores
    validation text has none. The usual cause is one document per line read
    in paragraph or file mode, so when the one document has several lines
    the fix named is ``--txt-mode line``; otherwise it is more text.
    """
    if stats.val_docs > 0:
        return None
    what = "the corpus is a single document, so its validation split is empty"
    if txt_mode != "line":
        doc = next(read_split(out_dir, "train"), "")
        lines = sum(1 for line in doc.split("\n") if line.strip())
        if lines > 1:
            return (f"warning: {what}: its {lines:,} lines were read as one document "
                    f"(--txt-mode {txt_mode}); if each line is a document, add --txt-mode line")
    return f"warning: {what}; give more text (at least two different documents)"


def has_split(path: Path, split: str) -> bool:
    """Whether ``path`` is a corpus folder built by lmlab with this split (else: plain text)."""
    return Path(path).is_dir() and (Path(path) / f"{split}.jsonl").is_file()


def read_split(corpus_dir: Path, split: str) -> Iterator[str]:
    """Stream the documents of one split (``train`` or ``val``) of a built corpus."""
    if split not in SPLITS:
        raise LmlabError(f"{corpus_dir}: unknown split {split!r}; expected 'train' or 'val'")
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise LmlabError(f"{corpus_dir}: no such corpus directory; build the corpus first")
    path = corpus_dir / f"{split}.jsonl"
    if not path.is_file():
        raise LmlabError(f"{path}: no such file; is {corpus_dir} a corpus built by lmlab?")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                yield json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise LmlabError(
                    f"{path}: line {lineno} is corrupt ({err}); rebuild the corpus"
                ) from None
