"""Summarization pairs (document -> summary) from real text that is on every Debian
machine or one apt call away, and the lead baseline.

* Debian package descriptions: each package has a one-line synopsis and a
  longer description written for the same package by the same person, the
  synopsis a summary of the long text (about 61k pairs in bookworm's English
  index, ``Translation-en``; ``lmlab download descriptions`` fetches it). The
  index is deb822: paragraphs of ``Field: value`` lines, continued by lines
  that begin with a space, a line of `` .`` a paragraph break.
* Python's standard library: a function's or class's code (its docstring taken
  out) -> the first sentence of its docstring, read with ``ast`` from the
  interpreter's own files (about 7k pairs, no download).

The same index in German and Chinese (``Translation-de``, ``Translation-zh_CN``)
is parallel text too: a translated description shares its English one's
``Description-md5``, and ``description_pairs`` aligns them synopsis with
synopsis and paragraph with paragraph.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from lmlab.data.parallel import SPACE, Pair
from lmlab.errors import LmlabError


# ---------------------------------------------------------------- Debian descriptions
def read_deb822(path: Path) -> Iterator[dict[str, str]]:
    """The paragraphs of a deb822 file (a Packages or Translation index) as field -> value,
    continuation lines kept after a newline, each with its leading space."""
    fields: dict[str, str] = {}
    name = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                if fields:
                    yield fields
                fields, name = {}, None
            elif line[0] in " \t":
                if name is None:
                    raise LmlabError(f"{path}:{n}: a continuation line before any field; "
                                     "not a Debian index (deb822) file")
                fields[name] += "\n" + line
            else:
                name, sep, value = line.partition(":")
                if not sep:
                    raise LmlabError(f"{path}:{n}: expected 'Field: value', found "
                                     f"{line[:60]!r}; not a Debian index (deb822) file")
                fields[name] = value.strip()
    if fields:
        yield fields


_WIDE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")


def join_lines(lines: list[str]) -> str:
    """Wrapped lines as one: a space between them, except where either side is Chinese,
    Japanese or Korean (those scripts have no spaces between words to restore)."""
    out = ""
    for line in lines:
        if out and line and not (_WIDE.match(out[-1]) or _WIDE.match(line[0])):
            out += " "
        out += line
    return out


def split_description(value: str) -> tuple[str, list[str]]:
    """A ``Description`` value as its synopsis and the long description's paragraphs (lines
    joined; `` .`` separates paragraphs)."""
    lines = value.split("\n")
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines[1:]:
        text = line[1:] if line.startswith(" ") else line
        if text.strip() == ".":
            paragraphs.append(join_lines(current))
            current = []
        else:
            current.append(text.strip())
    paragraphs.append(join_lines(current))
    return lines[0].strip(), [SPACE.sub(" ", p).strip() for p in paragraphs if p.strip()]


def descriptions(path: Path) -> dict[str, tuple[str, str, list[str]]]:
    """Description-md5 -> (package, synopsis, paragraphs) of a Translation-LANG index (the
    first package of each description)."""
    out: dict[str, tuple[str, str, list[str]]] = {}
    for fields in read_deb822(path):
        key = next((k for k in fields if k.startswith("Description-")
                    and k != "Description-md5"), None)
        md5 = fields.get("Description-md5")
        if key is None or md5 is None:
            continue
        if md5 not in out:
            synopsis, paragraphs = split_description(fields[key])
            out[md5] = (fields.get("Package", ""), synopsis, paragraphs)
    if not out:
        raise LmlabError(f"{path}: no package descriptions (a Debian Translation-LANG index "
                         "is expected; fetch it with `lmlab download descriptions`)")
    return out


def debian_summaries(path: Path, min_words: int = 10) -> tuple[list[Pair], Counter]:
    """(long description, synopsis) pairs of an English Translation index, and the count
    of each reason a description was left out."""
    counts: Counter = Counter()
    pairs: list[Pair] = []
    for package, synopsis, paragraphs in descriptions(path).values():
        counts["entries"] += 1
        text = " ".join(paragraphs)
        if not synopsis or not paragraphs:
            counts["no long description"] += 1
        elif len(text.split()) < min_words:
            counts[f"long description under {min_words} words"] += 1
        else:
            counts["pairs"] += 1
            pairs.append(Pair(text, synopsis, f"debian:{package}"))
    return pairs, counts


def description_pairs(english: Path, other: Path,
                      target_is_english: bool) -> tuple[list[Pair], Counter]:
    """Parallel text from a translated description index: synopsis with synopsis, and the
    long descriptions' paragraphs one with one where both have as many."""
    en = descriptions(english)
    counts: Counter = Counter()
    pairs: list[Pair] = []
    for md5, (package, synopsis, paragraphs) in descriptions(other).items():
        counts["entries"] += 1
        if md5 not in en:
            counts["no English description with its md5"] += 1
            continue
        _, en_synopsis, en_paragraphs = en[md5]
        aligned = [(en_synopsis, synopsis)]
        if len(en_paragraphs) == len(paragraphs):
            aligned += list(zip(en_paragraphs, paragraphs, strict=True))
        else:
            counts["paragraphs do not align (synopsis kept)"] += 1
        for e, t in aligned:
            if e and t and e != t:
                counts["pairs"] += 1
                pairs.append(Pair(t, e, f"debian:{package}") if target_is_english
                             else Pair(e, t, f"debian:{package}"))
    return pairs, counts


# ---------------------------------------------------------------- the standard library
def first_sentence(text: str) -> str:
    """The first sentence of a text: up to the first full stop (., !, ?, 。, ！, ？)
    followed by a space or the end, or up to the first blank line or line break of code,
    whichever comes first."""
    text = text.strip()
    para = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    m = re.search(r"[.!?](?=\s|$)|[。！？]", para)
    cut = para[:m.end()] if m else para
    return SPACE.sub(" ", cut).strip()


def lead(text: str) -> str:
    """The lead baseline of summarization: the document's first sentence (of its first
    non-empty line: a code document's is its first statement)."""
    line = next((x for x in text.splitlines() if x.strip()), "")
    return first_sentence(line)


def _without_docstring(node: ast.AST) -> ast.AST | None:
    """The node with its docstring removed from its body (None when nothing else is left)."""
    body = node.body[1:]  # type: ignore[attr-defined]
    if not body or all(isinstance(b, ast.Pass) or (isinstance(b, ast.Expr)
                       and isinstance(b.value, ast.Constant)) for b in body):
        return None
    node.body = body  # type: ignore[attr-defined]
    return node


def stdlib_summaries(root: Path | None = None, min_words: int = 3
                     ) -> tuple[list[Pair], Counter]:
    """(code, first sentence of its docstring) for every documented function, method and
    class of the standard library (tests and vendored packages left out), and why others
    were left out. The code is ``ast.unparse`` of the definition without its docstring:
    comments go, and the layout is the same everywhere."""
    import sysconfig

    root = Path(root or sysconfig.get_paths()["stdlib"])
    counts: Counter = Counter()
    pairs: list[Pair] = []
    skip = re.compile(r"(^|/)(test|tests|idle_test|site-packages|dist-packages|lib2to3|"
                      r"ensurepip|_vendor)(/|$)")
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if skip.search(rel):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=rel)
        except (SyntaxError, ValueError):
            counts["files that do not parse"] += 1
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            counts["entries"] += 1
            summary = first_sentence(doc)
            if len(summary.split()) < min_words:
                counts[f"docstring sentence under {min_words} words"] += 1
                continue
            bare = _without_docstring(node)
            if bare is None:
                counts["no code besides the docstring"] += 1
                continue
            counts["pairs"] += 1
            pairs.append(Pair(ast.unparse(bare), summary, f"stdlib:{rel}"))
    if not pairs:
        raise LmlabError(f"{root}: no documented functions found; is it a Python library?")
    return pairs, counts
