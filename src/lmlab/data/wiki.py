"""Plain-text articles from a MediaWiki XML dump (``.xml`` or ``.xml.bz2``).

The dump is streamed with :func:`xml.etree.ElementTree.iterparse` and every
``<page>`` is dropped from the tree once read, so memory stays flat even on a
full Wikipedia dump (tens of GB of XML). Only main-namespace articles (ns 0)
that are not redirects come out.

Markup is removed by walking the node tree of ``mwparserfromhell`` rather than
with regexes alone: templates nest, links carry pipes inside templates, and
tables span lines, which regexes get wrong. A few regexes then tidy what the
walk leaves behind (empty parentheses, stray quotes, spaces before commas).

Section headings are kept, each as the first line of its section's first
paragraph. They are real text of the article, they give a language model the
shape of an encyclopedia entry, and attaching them to their paragraph (rather
than making them a paragraph of their own) keeps a one-word "History" from
becoming a document-like fragment when text is split by blank lines. A heading
whose section ends up empty (it only held a table, say) is dropped.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import mwparserfromhell
from mwparserfromhell.nodes import (
    Argument,
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Template,
    Text,
    Wikilink,
)
from mwparserfromhell.wikicode import Wikicode

from lmlab.errors import LmlabError

__all__ = ["iter_wiki_articles", "strip_wiki_markup"]

# Appendix sections (WP:LAYOUT puts them last). A level-2 one ends the article;
# a deeper one is skipped up to the next heading of its level or above.
_APPENDIX_HEADINGS = frozenset(
    {
        "see also",
        "references",
        "reference",
        "external links",
        "external link",
        "further reading",
        "notes",
        "footnotes",
        "notes and references",
        "references and notes",
        "citations",
        "sources",
        "works cited",
        "bibliography",
        "selected bibliography",
    }
)

# Tags whose content is not prose: footnotes, tables, formulas, code, media.
# Formulas are dropped rather than kept as TeX source, which would be debris
# (except plain ones like "x + 1"; see _render_tag).
_DROPPED_TAGS = frozenset(
    {
        "ref",
        "references",
        "table",
        "math",
        "chem",
        "ce",
        "gallery",
        "imagemap",
        "timeline",
        "graph",
        "score",
        "hiero",
        "source",
        "syntaxhighlight",
        "mapframe",
        "maplink",
        "templatedata",
        "includeonly",
        "inputbox",
        "categorytree",
    }
)
_BLOCK_TAGS = frozenset({"blockquote", "poem", "p", "div", "center"})
# Namespaces of links that show no text in the article body.
_DROPPED_LINK_NAMESPACES = frozenset({"file", "image", "category", "media"})
# Interlanguage links: [[fr:Anarchisme]] (a lowercase language code, no leading colon).
_LANG_PREFIX = re.compile(r"^[a-z]{2,3}(?:-[a-z]{2,8})*$")

# Markup removed before parsing. Bold and italic quotes are often unbalanced in
# real articles (''Title |date=...); mwparserfromhell then gives up on the
# enclosing <ref> or [[File:...]] and hands it back as raw text. The formatting
# is dropped anyway, so the quotes are swapped up front for a private-use
# character, deleted after rendering (deleting them at once would turn
# "[''[[X]]'']" into "[[[X]]]", which parses differently). Comments and <ref>s
# are cut by regex for the same robustness, which also halves the parse time.
_QUOTE_RUN = re.compile(r"'{2,}")
_QUOTE_MARK = "\ue000"
_PRE_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_PRE_REF = re.compile(
    r"<ref\b[^>]*?/>|<ref\b[^>]*>(?:(?!<ref\b).)*?</ref\s*>", re.DOTALL | re.IGNORECASE
)

# Paragraph breaks are taken from blank lines in the source text, marked with
# this private-use character before templates are removed: a list item whose
# only content was a template renders as an empty line, and that must not
# split the list into one-line "paragraphs".
_PARAGRAPH_BREAK = "\ue001"
_BLANK_LINES = re.compile(r"\n[^\S\n]*\n\s*")

_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_SPACES = re.compile(r"[^\S\n]+")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?)\]])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[]) +")
# "(; born 1950)" or "( , )" once a pronunciation template inside is gone.
_EMPTY_PARENS = re.compile(r"\((?:\s*[,;:])*\s*\)|\[\s*\]")
_LEADING_PUNCT = re.compile(r"^[,;]\s*")
_PAREN_LEADING_PUNCT = re.compile(r"\(\s*[,;:]\s*")
_PAREN_TRAILING_PUNCT = re.compile(r"\s*[,;:]\s*\)")
_REPEATED_PUNCT = re.compile(r"([,;:])(?:\s*[,;:])+")
_PLAIN_MATH = re.compile(r"[\w +\-=<>().,'/*]{1,40}")
_HAS_WORD = re.compile(r"\w")
_LONE_ASIDE = re.compile(r"\([^()]{0,12}\)")
# Wiki table rows that survived (a table the parser could not match up).
_TABLE_DEBRIS = re.compile(r"^(?:\{\||\|\}|\|-|\|\+|!|\|)")
# A paragraph shorter than this with no sentence end is a leftover caption or label.
_MIN_PARAGRAPH_CHARS = 20
_SENTENCE_END = re.compile(r"[.!?。！？…\"”»)]$")


def _param(template: Template, key: str | int, render: Callable[[Wikicode], str]) -> str:
    """A template parameter rendered to text, or '' when absent."""
    if not template.has(str(key)):
        return ""
    return render(template.get(str(key)).value).strip()


def _positional(template: Template, render: Callable[[Wikicode], str]) -> list[str]:
    return [render(p.value).strip() for p in template.params if not p.showkey]


_CONVERT_RANGE_WORDS = frozenset({"to", "-", "–", "and", "or", "by", "x", "×", "+/-", "±"})
_CONVERT_UNITS = {
    "C": "°C",
    "F": "°F",
    "K": "K",
    "km2": "km²",
    "m2": "m²",
    "sqmi": "sq mi",
    "m3": "m³",
    "ft2": "sq ft",
    "sqft": "sq ft",
    "acre": "acres",
    "ha": "ha",
}


def _convert(template: Template, render: Callable[[Wikicode], str]) -> str:
    """{{convert|5|km|mi}} -> '5 km'; {{convert|5|to|10|km}} -> '5 to 10 km'."""
    args = _positional(template, render)
    if len(args) >= 4 and args[1] in _CONVERT_RANGE_WORDS:
        value, unit = f"{args[0]} {args[1]} {args[2]}", args[3]
    elif len(args) >= 2:
        value, unit = args[0], args[1]
    else:
        return args[0] if args else ""
    return f"{value} {_CONVERT_UNITS.get(unit, unit)}"


def _first(template: Template, render: Callable[[Wikicode], str]) -> str:
    args = _positional(template, render)
    return args[0] if args else ""


def _last(template: Template, render: Callable[[Wikicode], str]) -> str:
    args = _positional(template, render)
    return args[-1] if args else ""


def _quote(template: Template, render: Callable[[Wikicode], str]) -> str:
    text = _param(template, "text", render) or _param(template, "quote", render)
    return f"\n{_PARAGRAPH_BREAK}\n{text or _first(template, render)}\n{_PARAGRAPH_BREAK}\n"


# Inline templates whose output is part of the sentence. Dropping them would
# leave "the summit is  high", so they are rendered; every other template
# (infoboxes, citations, navboxes, hatnotes, maintenance tags) is dropped.
_INLINE_TEMPLATES: dict[str, Callable[[Template, Callable[[Wikicode], str]], str]] = {
    "convert": _convert,
    "cvt": _convert,
    "lang": _last,
    "transl": _last,
    "nihongo": _first,
    "nowrap": _first,
    "nobr": _first,
    "small": _first,
    "smaller": _first,
    "big": _first,
    "abbr": _first,
    "flag": _first,
    "vanchor": _first,
    "ill": _first,
    "math": _first,
    "mvar": _first,
    "nts": _first,
    "sortname": lambda t, r: " ".join(_positional(t, r)[:2]),
    "chem": lambda t, r: "".join(_positional(t, r)),
    "frac": lambda t, r: "/".join(_positional(t, r)[-2:]),
    "as of": lambda t, r: f"As of {' '.join(_positional(t, r)[:1])}",
    "circa": lambda t, r: f"c. {_first(t, r)}",
    "c.": lambda t, r: f"c. {_first(t, r)}",
    "floruit": lambda t, r: f"fl. {_first(t, r)}",
    "fl.": lambda t, r: f"fl. {_first(t, r)}",
    "ndash": lambda t, r: "–",
    "mdash": lambda t, r: "—",
    "mdashb": lambda t, r: "—",
    "snd": lambda t, r: " – ",
    "spnd": lambda t, r: " – ",
    "spaced ndash": lambda t, r: " – ",
    "quote": _quote,
    "blockquote": _quote,
}


def _template_name(template: Template) -> str:
    name = str(template.name).strip().replace("_", " ").lower()
    return name.removeprefix("template:").strip()


def _render_template(template: Template) -> str:
    name = _template_name(template)
    handler = _INLINE_TEMPLATES.get(name)
    if handler is None and name.startswith("lang-"):
        handler = _first  # {{lang-fr|texte}}
    return handler(template, _render) if handler else ""


def _render_link(link: Wikilink) -> str:
    title = html.unescape(str(link.title)).strip()
    leading_colon = title.startswith(":")
    title = title.lstrip(":").strip()
    prefix, sep, rest = title.partition(":")
    if sep and not leading_colon:
        if prefix.strip().lower() in _DROPPED_LINK_NAMESPACES:
            return ""
        if _LANG_PREFIX.match(prefix):
            return ""
    if link.text is not None:
        text = _render(link.text).strip()
        if text:
            return text
        # Pipe trick: [[Paris (band)|]] shows "Paris".
        return re.sub(r"\s*\(.*\)$", "", rest if sep else title)
    page, _, anchor = title.partition("#")
    return page or anchor


def _render_tag(tag: Tag) -> str:
    name = str(tag.tag).strip().lower()
    if name == "math" and tag.contents is not None:
        # <math>x + y</math> reads fine as text; TeX commands (\frac{a}{b}) would be debris.
        formula = str(tag.contents).strip()
        return formula if _PLAIN_MATH.fullmatch(formula) else ""
    if name in _DROPPED_TAGS:
        return ""
    if name == "br":
        return "\n"
    if name in ("li", "dt", "dd", "hr") or tag.contents is None:
        # List markers (*, #, ;, :) and void tags; the item's text follows as plain nodes.
        return ""
    inner = _render(tag.contents)
    if name in _BLOCK_TAGS:
        return f"\n{_PARAGRAPH_BREAK}\n{inner}\n{_PARAGRAPH_BREAK}\n"
    return inner


def _render_node(node: object) -> str:
    """Plain text of one parsed node: the visible prose, none of the markup."""
    if isinstance(node, Text):
        return _BLANK_LINES.sub(f"\n{_PARAGRAPH_BREAK}\n", node.value)
    if isinstance(node, Wikilink):
        return _render_link(node)
    if isinstance(node, Tag):
        return _render_tag(node)
    if isinstance(node, Template):
        return _render_template(node)
    if isinstance(node, HTMLEntity):
        return node.normalize()
    if isinstance(node, ExternalLink):
        # [http://x Title] shows "Title"; bare URLs and [http://x] (a "[1]") are noise.
        return _render(node.title) if node.brackets and node.title is not None else ""
    if isinstance(node, Heading):
        return f"\n{_render(node.title).strip()}\n"
    if isinstance(node, Comment | Argument):
        return ""
    return str(node)  # a node type added by a later parser: keep its text rather than lose it


def _render(code: Wikicode) -> str:
    return "".join(_render_node(node) for node in code.nodes)


def _clean_line(line: str) -> str:
    line = _MAGIC_WORD.sub("", line)
    line = _QUOTE_RUN.sub("", line.replace(_QUOTE_MARK, ""))
    line = _SPACES.sub(" ", line).strip()
    if _TABLE_DEBRIS.match(line):
        return ""
    line = _EMPTY_PARENS.sub("", line)
    line = _PAREN_LEADING_PUNCT.sub("(", line)
    line = _PAREN_TRAILING_PUNCT.sub(")", line)
    line = _REPEATED_PUNCT.sub(r"\1", line)
    line = _LEADING_PUNCT.sub("", line)
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    line = _SPACE_AFTER_OPEN.sub(r"\1", line)
    line = _SPACES.sub(" ", line).strip()
    # A line with no letter or digit ("(", "•", "–"), or only a short aside
    # ("(UK)" after a flag template), is what a removed template left.
    if not _HAS_WORD.search(line) or _LONE_ASIDE.fullmatch(line):
        return ""
    return line


def _paragraphs(text: str) -> list[str]:
    """Split rendered text at source paragraph breaks into cleaned paragraphs.

    Lines left empty by removed markup are dropped, as are leftover fragments.
    """
    paragraphs = []
    for block in text.split(_PARAGRAPH_BREAK):
        lines = [c for c in (_clean_line(line) for line in block.split("\n")) if c]
        paragraph = "\n".join(lines)
        if len(paragraph) < _MIN_PARAGRAPH_CHARS and not _SENTENCE_END.search(paragraph):
            continue
        paragraphs.append(paragraph)
    return paragraphs


def strip_wiki_markup(wikitext: str) -> str:
    """Turn one article's wikitext into clean plain text.

    Templates (infoboxes, citations, navboxes) are dropped except a few inline
    ones that are part of the sentence ({{convert}}, {{lang}}, ...); so are
    tables, ``<ref>`` footnotes, formulas, comments, File/Image/Category and
    interlanguage links, and the appendix sections (See also, References,
    External links, Further reading, Notes, ...). Link text, bold and italic
    text are kept without their quotes. Headings are kept as the first line of
    their section. Paragraphs are separated by one blank line.

    Args:
        wikitext: the content of a page's ``<text>`` element.

    Returns:
        The plain text; '' when nothing readable is left.
    """
    wikitext = _PRE_COMMENT.sub("", wikitext)
    wikitext = _PRE_REF.sub("", wikitext)
    wikitext = _QUOTE_RUN.sub(_QUOTE_MARK, wikitext)
    code = mwparserfromhell.parse(wikitext)
    paragraphs: list[str] = []
    pending: list[tuple[int, str]] = []  # headings waiting for their first paragraph
    skip_level = 0  # inside a skipped appendix subsection of this level (0: not skipping)
    section: list[str] = []

    def flush() -> None:
        for paragraph in _paragraphs("".join(section)):
            if pending:
                paragraph = "\n".join(h for _, h in pending) + "\n" + paragraph
                pending.clear()
            paragraphs.append(paragraph)
        section.clear()

    for node in code.nodes:
        if not isinstance(node, Heading):
            if not skip_level:
                section.append(_render_node(node))
            continue
        flush()
        title = _clean_line(_render(node.title))
        if skip_level and node.level > skip_level:
            continue
        skip_level = 0
        if title.lower().rstrip(":") in _APPENDIX_HEADINGS:
            if node.level <= 2:
                break
            skip_level = node.level
            continue
        # A heading with nothing under it before a heading of its level or above had no text.
        while pending and pending[-1][0] >= node.level:
            pending.pop()
        if title:
            pending.append((node.level, title))
    else:
        flush()
    return "\n\n".join(paragraphs)


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def iter_wiki_articles(path: Path) -> Iterator[tuple[str, str]]:
    """Stream ``(title, clean text)`` for every article of a MediaWiki XML dump.

    Only namespace 0 pages that are not redirects are yielded, and only when
    some text is left after :func:`strip_wiki_markup`. A page with several
    revisions (a history dump) contributes its last one.

    Args:
        path: a ``.xml`` dump, or a ``.xml.bz2`` one (decompressed on the fly).

    Raises:
        LmlabError: the file is missing, not a MediaWiki dump, or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path}: no such file")
    opener = bz2.open if path.name.lower().endswith(".bz2") else open
    try:
        with opener(path, "rb") as stream:
            yield from _iter_pages(path, stream)
    except ET.ParseError as err:
        raise LmlabError(f"{path}: malformed XML dump ({err})") from None
    except (OSError, EOFError) as err:
        # bz2 raises OSError on corrupt data and EOFError on a truncated file.
        raise LmlabError(f"{path}: cannot read the dump ({err})") from None


def _iter_pages(path: Path, stream: IO[bytes]) -> Iterator[tuple[str, str]]:
    root: ET.Element | None = None
    ns = ""
    for event, elem in ET.iterparse(stream, events=("start", "end")):
        if root is None:
            root = elem
            if _local_name(root.tag) != "mediawiki":
                raise LmlabError(
                    f"{path}: not a MediaWiki XML dump "
                    f"(root element <{_local_name(root.tag)}>, expected <mediawiki>)"
                )
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            continue
        if event != "end" or elem.tag != f"{ns}page":
            continue
        title = (elem.findtext(f"{ns}title") or "").strip()
        namespace = (elem.findtext(f"{ns}ns") or "0").strip()
        redirect = elem.find(f"{ns}redirect") is not None
        revisions = elem.findall(f"{ns}revision")
        text = (revisions[-1].findtext(f"{ns}text") or "") if revisions else ""
        # Pages hang off the root; clearing it frees the page just read.
        root.clear()
        if namespace != "0" or redirect or text.lstrip()[:9].upper() == "#REDIRECT":
            continue
        clean = strip_wiki_markup(text)
        if clean:
            yield title, clean
