"""Tests for lmlab.data.wiki: markup stripping and streaming a MediaWiki dump."""

from __future__ import annotations

import bz2
import re
from pathlib import Path

import pytest

from lmlab.data.wiki import iter_wiki_articles, strip_wiki_markup
from lmlab.errors import LmlabError

ARTICLE = """{{Infobox person
| name = Ada
| birth_date = {{birth date|1815|12|10}}
}}
'''Ada Lovelace''' (born '''Augusta Ada Byron'''; 10 December 1815{{snd}}27 November 1852) \
was an English [[mathematician]] and [[Writer|writer]].<ref>{{cite web|url=http://x.org|\
title=T}}</ref> She worked on [[Charles Babbage]]'s ''[[Analytical Engine]]''.<ref name="a"/>\
<!-- a hidden comment -->

[[File:Ada.jpg|thumb|right|Portrait of [[Ada Lovelace|Ada]]]]
The engine is {{convert|5|m|ft}} long&nbsp;and heavy.{{citation needed|date=May 2020}}

== Early life ==
{| class="wikitable"
|-
! Year !! Event
|-
| 1815 || Born
|}
Her father was [[Lord Byron]], see [http://example.org his page] or http://example.org.

* First item with [[Foo|a link]]
* {{flagicon|UK}}
* Second item

== Legacy ==

=== Empty subsection ===
{{main|Something}}

== See also ==
* [[Babbage]]

== References ==
{{reflist}}

[[Category:1815 births]]
[[fr:Ada Lovelace]]
"""

EXPECTED = """Ada Lovelace (born Augusta Ada Byron; 10 December 1815 – 27 November 1852) \
was an English mathematician and writer. She worked on Charles Babbage's Analytical Engine.

The engine is 5 m long and heavy.

Early life
Her father was Lord Byron, see his page or.

First item with a link
Second item"""

DEBRIS = re.compile(r"\{\{|\}\}|\[\[|\]\]|'''|''|<ref|&nbsp;|&amp;|thumb\||\ue000|\ue001")


def test_strip_wiki_markup_handcrafted() -> None:
    assert strip_wiki_markup(ARTICLE) == EXPECTED


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        (
            "A [[Paris (band)|]] song and [[:Category:Bands|a category]] here.",
            "A Paris song and a category here.",
        ),
        (
            "Unbalanced ''italic <ref>{{cite|x=''y}}</ref> text goes on.",
            "Unbalanced italic text goes on.",
        ),
        (
            "Bracketed [''[[The Art of Being Right]]''] title is fine.",
            "Bracketed [The Art of Being Right] title is fine.",
        ),
        ("The sum <math>x + 1</math> or <math>\\frac{a}{b}</math> here.", "The sum x + 1 or here."),
        (
            "Andorra ({{IPAc-en|x}}; {{IPA-ca|y}}, {{IPA-ca|z}}), officially a principality.",
            "Andorra, officially a principality.",
        ),
        (
            "He said {{lang|fr|bonjour tout le monde}} twice, {{convert|3|to|4|km}} away.",
            "He said bonjour tout le monde twice, 3 to 4 km away.",
        ),
        ("北京是[[中华人民共和国|中国]]的首都。<ref>来源</ref>", "北京是中国的首都。"),
        ("#REDIRECT [[Somewhere]]\n\n{{R from move}}", ""),
        ("__NOTOC__\nShort.", "Short."),
    ],
)
def test_strip_wiki_markup_cases(wikitext: str, expected: str) -> None:
    assert strip_wiki_markup(wikitext) == expected


def test_appendix_subsection_is_skipped_but_later_sections_kept() -> None:
    text = (
        "Lead paragraph of the article.\n\n== Work ==\nWork text here, long enough.\n"
        "=== Notes ===\n* a note that should go\n== Life ==\nLife text, long enough too."
    )
    assert strip_wiki_markup(text) == (
        "Lead paragraph of the article.\n\nWork\nWork text here, long enough.\n\n"
        "Life\nLife text, long enough too."
    )


def _page(title: str, ns: int, text: str, redirect: str | None = None) -> str:
    redirect_tag = f'<redirect title="{redirect}" />' if redirect else ""
    return (
        f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{redirect_tag}"
        f'<revision><id>2</id><text xml:space="preserve">{text}</text></revision></page>'
    )


DUMP = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">'
    "<siteinfo><sitename>Test</sitename></siteinfo>"
    + _page("Alpha", 0, "'''Alpha''' is the first letter of the [[Greek alphabet]].")
    + _page("Old alpha", 0, "#REDIRECT [[Alpha]]", redirect="Alpha")
    + _page("Legacy redirect", 0, "#redirect [[Alpha]]")
    + _page("Talk:Alpha", 1, "This talk page is in namespace one, not an article.")
    + _page(
        "Beta",
        0,
        "Beta {{convert|2|km}} is second.&lt;ref&gt;x&lt;/ref&gt;\n\n[[Category:Letters]]",
    )
    + _page("Empty", 0, "{{Infobox only}}")
    + _page("中文", 0, "'''中文'''是一种语言，使用[[汉字]]书写。")
    + "</mediawiki>"
)
EXPECTED_ARTICLES = [
    ("Alpha", "Alpha is the first letter of the Greek alphabet."),
    ("Beta", "Beta 2 km is second."),
    ("中文", "中文是一种语言，使用汉字书写。"),
]


def test_iter_wiki_articles_xml(tmp_path: Path) -> None:
    path = tmp_path / "dump.xml"
    path.write_text(DUMP, encoding="utf-8")
    assert list(iter_wiki_articles(path)) == EXPECTED_ARTICLES


def test_iter_wiki_articles_bz2(tmp_path: Path) -> None:
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(DUMP.encode("utf-8")))
    assert list(iter_wiki_articles(path)) == EXPECTED_ARTICLES


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("truncated.xml", DUMP[: len(DUMP) // 2].encode(), "malformed XML"),
        ("other.xml", b"<html><body>hi</body></html>", "not a MediaWiki XML dump"),
        ("broken.xml.bz2", b"BZh91AY&SY this is not bzip2 data", "cannot read"),
        ("cut.xml.bz2", bz2.compress(DUMP.encode())[:-20], "cannot read"),
    ],
)
def test_iter_wiki_articles_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LmlabError, match=message) as info:
        list(iter_wiki_articles(path))
    assert name in str(info.value)
    assert "\n" not in str(info.value)


def test_iter_wiki_articles_missing(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match="nope.xml"):
        list(iter_wiki_articles(tmp_path / "nope.xml"))


@pytest.mark.slow
def test_gensim_dump_is_clean() -> None:
    from lmlab.data.corpus import default_corpus_source

    articles = list(iter_wiki_articles(default_corpus_source()))
    # 206 pages in the file: 99 redirects and 1 project page are skipped.
    assert len(articles) == 106
    assert articles[0][0] == "Anarchism"
    assert articles[0][1].startswith("Anarchism is a political philosophy")
    assert sum(len(text) for _, text in articles) > 2_000_000
    pipes = 0
    for title, text in articles:
        assert not DEBRIS.search(text), (title, DEBRIS.search(text))
        assert "\n\n\n" not in text and text == text.strip()
        lines = text.split("\n")
        assert not any(line.startswith(("|", "{", "!", "*", "#", "=")) for line in lines), title
        assert not {"See also", "References", "External links"} & set(lines), title
        pipes += text.count("|")
    assert pipes < 5  # the ASCII article quotes "|" as a character; nothing else should
