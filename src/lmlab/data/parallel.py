"""Parallel text: readers, the cleaning of software catalogs, and leak-free splits.

Readers give ``Pair(src, tgt, origin)``:

* TSV: ``source<TAB>target`` per line (a line without exactly one tab is an
  error naming the line);
* JSONL: ``{"src": ..., "tgt": ...}`` per line (other field names by flag);
* gettext ``.po`` (msgctxt, msgid, msgstr, continued lines, escapes; fuzzy and
  plural entries are counted and left out) and compiled ``.mo`` catalogs (the
  binary format read directly: magic, counts, offset tables; a file that is
  not one is an error).

A software catalog pairs an English message (msgid) with its translation
(msgstr). ``clean_pair`` turns such pairs into sentences a model can learn
from, and says why it drops one: the header entry, an empty side, a message
left untranslated (the target equals the source), format specifiers (``%s``,
``%(name)s``, ``{0}``: the sentence is a template), or one longer than
``max_chars``. It removes what is not text: keyboard accelerators (``_File``,
``&File``, ``(_F)``), markup tags and entities, and runs of white space. A
multi-line message whose two sides have as many lines is cut into line pairs.

``split_by_source`` keeps every pair of one source string in the same split, so
no test sentence was seen in training under another translation.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import struct
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str
    origin: str = ""  # where it came from: a catalog's name, a file


# ---------------------------------------------------------------- readers
def read_tsv(path: Path, encoding: str = "utf-8") -> Iterator[Pair]:
    with open(path, encoding=encoding, newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise LmlabError(f"{path}:{n}: expected source<TAB>target, found "
                                 f"{len(parts) - 1} tabs")
            yield Pair(parts[0], parts[1], path.name)


def read_jsonl(path: Path, src_field: str = "src", tgt_field: str = "tgt",
               encoding: str = "utf-8") -> Iterator[Pair]:
    with open(path, encoding=encoding) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmlabError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(src_field), str) \
                    or not isinstance(row.get(tgt_field), str):
                raise LmlabError(f"{path}:{n}: needs string fields {src_field!r} and "
                                 f"{tgt_field!r} (--src-field, --tgt-field)")
            yield Pair(row[src_field], row[tgt_field], path.name)


def read_mo(path: Path) -> list[tuple[str, str]]:
    """The (msgid, msgstr) entries of a compiled gettext catalog, contexts and plurals
    still marked (``ctx\\x04msgid``, ``one\\x00many``)."""
    data = Path(path).read_bytes()
    if len(data) < 20:
        raise LmlabError(f"{path}: not a gettext .mo file (too short)")
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if order is None:
        raise LmlabError(f"{path}: not a gettext .mo file (bad magic number)")
    _, count, originals, translations = struct.unpack(order + "4I", data[4:20])

    def string(table: int, i: int) -> bytes:
        at = table + 8 * i
        if at + 8 > len(data):
            raise LmlabError(f"{path}: damaged .mo file (its tables run past the end)")
        length, offset = struct.unpack(order + "2I", data[at:at + 8])
        if offset + length > len(data):
            raise LmlabError(f"{path}: damaged .mo file (a string runs past the end)")
        return data[offset:offset + length]

    raw = [(string(originals, i), string(translations, i)) for i in range(count)]
    charset = "utf-8"
    for key, value in raw:
        if key == b"":  # the header says the encoding
            m = re.search(rb"charset=([\w-]+)", value)
            if m:
                charset = m.group(1).decode("ascii")
    try:
        return [(k.decode(charset), v.decode(charset)) for k, v in raw]
    except (UnicodeDecodeError, LookupError) as e:
        raise LmlabError(f"{path}: cannot decode the catalog as {charset} ({e})") from None


_PO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
               "f": "\f", "v": "\v"}


def _po_string(text: str, path: Path, n: int) -> str:
    text = text.strip()
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise LmlabError(f"{path}:{n}: expected a quoted string, found {text[:40]!r}")
    return re.sub(r'\\(.)', lambda m: _PO_ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


def read_po(path: Path) -> tuple[list[tuple[str, str]], Counter]:
    """The (msgid, msgstr) entries of a .po catalog (contexts joined as in a .mo), and the
    counts of what was left out (fuzzy, plural, obsolete)."""
    skipped: Counter = Counter()
    entries: list[tuple[str, str]] = []
    entry: dict[str, str] = {}
    fuzzy = False
    field: str | None = None

    def flush() -> None:
        nonlocal entry, fuzzy
        if "msgid" in entry:
            if "msgid_plural" in entry:
                skipped["plural forms"] += 1
            elif fuzzy:
                skipped["fuzzy (unreviewed)"] += 1
            else:
                key = entry["msgid"]
                if "msgctxt" in entry:
                    key = entry["msgctxt"] + "\x04" + key
                entries.append((key, entry.get("msgstr", "")))
        entry, fuzzy = {}, False

    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("#~"):
                skipped["obsolete"] += line.startswith("#~ msgid ")
                continue
            if line.startswith("#"):
                if line.startswith("#,") and "fuzzy" in line:
                    if "msgid" in entry:
                        flush()
                    fuzzy = True
                continue
            m = re.match(r"(msgctxt|msgid_plural|msgid|msgstr(?:\[\d+\])?)\s+(.*)", line)
            if m:
                keyword, rest = m.groups()
                if keyword in ("msgctxt", "msgid") and "msgstr" in entry or \
                        keyword == "msgctxt" and "msgid" in entry:
                    flush()  # a new entry begins (a fuzzy flag of its own came before)
                field = "msgstr" if keyword == "msgstr[0]" else keyword
                if keyword.startswith("msgstr["):
                    entry["msgid_plural"] = entry.get("msgid_plural", "")
                entry[field] = _po_string(rest, path, n)
            elif line.startswith('"') and field is not None:
                entry[field] += _po_string(line, path, n)
            else:
                raise LmlabError(f"{path}:{n}: not a .po line: {line[:60]!r}")
    flush()
    return entries, skipped


# ---------------------------------------------------------------- cleaning
# printf (%s, %d, %5.2f, %1$s, %(name)s, %-10s), Python/.NET ({0}, {name}, {0:.2f}),
# Qt (%1) and shell ($1, ${name}) placeholders: a sentence with one is a template.
FORMAT = re.compile(r"%(?:\(\w+\))?[-+ #0]*(?:\d+\$)?[\d*]*(?:\.[\d*]+)?(?:hh|h|ll|l|L|q|j|z|t)?"
                    r"[diouxXeEfFgGcrsaAp]|%\d\b|\{\w*(?::[^}]*)?\}|\$\{?\w+\}?")
ACCEL = re.compile(r"\s*\((?:_|&)\w\)|(?<![\w&])[_&](?=\w)")  # (_F) in CJK, _File, &File
TAG = re.compile(r"</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>")
SPACE = re.compile(r"\s+")


def _tidy(text: str) -> str:
    text = html.unescape(TAG.sub("", text))  # entities after tags: "&lt;b&gt;" stays text
    text = ACCEL.sub("", text)  # "&amp;" is "&" by now, and "& more" is no accelerator
    return SPACE.sub(" ", text).strip()


def clean_pair(msgid: str, msgstr: str, max_chars: int = 400) -> tuple[list[tuple[str, str]],
                                                                           str | None]:
    """(English, translation) sentences from one catalog entry, and why it was dropped
    (None when kept)."""
    if msgid == "":
        return [], "header entry"
    if "\x00" in msgid:
        return [], "plural forms"
    msgid = msgid.split("\x04", 1)[-1]  # drop a context prefix
    if not msgstr.strip() or not msgid.strip():
        return [], "empty side"
    if FORMAT.search(msgid) or FORMAT.search(msgstr):
        return [], "format specifiers"
    en_lines = [x for x in msgid.split("\n") if x.strip()]
    tr_lines = [x for x in msgstr.split("\n") if x.strip()]
    if len(en_lines) != len(tr_lines):
        return [], "multi-line, lines do not align"
    out = []
    for en, tr in zip(en_lines, tr_lines, strict=True):
        en, tr = _tidy(en), _tidy(tr)
        if en and tr and en != tr and len(en) <= max_chars and len(tr) <= max_chars \
                and re.search(r"[^\W\d_]", en):
            out.append((en, tr))
    if not out:
        same = all(_tidy(a) == _tidy(b) for a, b in zip(en_lines, tr_lines, strict=True))
        return [], "untranslated (target = source)" if same else "no text left, or too long"
    return out, None


def catalog_pairs(files: Iterable[Path], target_is_english: bool,
                  max_chars: int = 400) -> tuple[list[Pair], dict[str, Counter]]:
    """Clean pairs from gettext catalogs (.mo or .po), source and target in the
    direction asked, and the counts per catalog: entries read, kept, and each reason
    for dropping one."""
    pairs: list[Pair] = []
    counts: dict[str, Counter] = {}
    for path in files:
        name = path.stem
        c = counts.setdefault(name, Counter())
        if path.suffix == ".po":
            try:
                entries, skipped = read_po(path)
            except UnicodeDecodeError as e:
                raise LmlabError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                                 "convert it (msgconv --to-code=UTF-8)") from None
            c.update(skipped)
        else:
            entries = read_mo(path)
        for msgid, msgstr in entries:
            c["entries"] += 1
            kept, why = clean_pair(msgid, msgstr, max_chars)
            if why:
                c[why] += 1
            for en, tr in kept:
                c["pairs"] += 1
                pairs.append(Pair(tr, en, name) if target_is_english else Pair(en, tr, name))
    return pairs, counts


def catalogs(roots: Sequence[Path], lang: str) -> list[Path]:
    """Every ``<lang>/LC_MESSAGES/*.mo`` or ``*.po`` under the roots, sorted, one per name
    (the first root wins: the system's own locale folder, then the extra ones)."""
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted(Path(root).rglob(f"{lang}/LC_MESSAGES/*")):
            if path.suffix in (".mo", ".po") and path.is_file():
                found.setdefault(path.name, path)
    return [found[k] for k in sorted(found)]


# ---------------------------------------------------------------- dedup and split
def dedupe(pairs: Iterable[Pair]) -> list[Pair]:
    """Pairs without repeats of the same (source, target), first occurrence kept."""
    seen: set[tuple[str, str]] = set()
    out = []
    for p in pairs:
        if (p.src, p.tgt) not in seen:
            seen.add((p.src, p.tgt))
            out.append(p)
    return out


def split_by_source(pairs: Sequence[Pair], val: int, test: int,
                    seed: int = 0) -> dict[str, list[Pair]]:
    """train / val / test with about ``val`` and ``test`` pairs held out, every pair of one
    source string in one split (sources drawn at random, seeded)."""
    import random

    sources = sorted({p.src for p in pairs})
    random.Random(seed).shuffle(sources)
    by_source: dict[str, list[Pair]] = {}
    for p in pairs:
        by_source.setdefault(p.src, []).append(p)
    splits: dict[str, list[Pair]] = {"val": [], "test": [], "train": []}
    order = iter(sources)
    for name, size in (("val", val), ("test", test)):
        while len(splits[name]) < size:
            s = next(order, None)
            if s is None:
                break
            splits[name] += by_source[s]
    for s in order:
        splits["train"] += by_source[s]
    if not splits["train"]:
        raise LmlabError(f"{len(pairs)} pairs leave none for training after --val-size {val} "
                         f"and --test-size {test}")
    return splits


def write_pairs(pairs: Sequence[Pair], path: Path) -> None:
    from lmlab.atomic import write_text

    write_text(path, "".join(json.dumps({"src": p.src, "tgt": p.tgt, "origin": p.origin},
                                        ensure_ascii=False) + "\n" for p in pairs))


def read_pairs(path: Path, src_field: str = "src", tgt_field: str = "tgt") -> list[Pair]:
    """Pairs from a .tsv, .jsonl, .po or .mo file (a catalog's msgid is the source)."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path}: no such file")
    try:
        if path.suffix == ".tsv":
            return list(read_tsv(path))
        if path.suffix in (".jsonl", ".json"):
            return list(read_jsonl(path, src_field, tgt_field))
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it "
                         "(e.g. iconv -f latin1 -t utf-8)") from None
    if path.suffix in (".po", ".mo"):
        return catalog_pairs([path], target_is_english=False)[0]
    raise LmlabError(f"{path}: unknown parallel format (use .tsv, .jsonl, .po or .mo)")


# ---------------------------------------------------------------- dictionaries
_NOTES = re.compile(r"\{[^}]*\}|\[[^\]]*\]|\([^)]*\)|<[^>]*>")  # {pos} [field] (note) <ref>


def dictd_entries(path: Path) -> Iterator[tuple[str, str, int]]:
    """(headword, its first translation, line number) of each entry of a dictd dictionary
    (``.dict`` or gzipped ``.dict.dz``, e.g. Ding's german-english): the headword line
    (continued by lines indented one space: grammar, or more words), then lines indented
    three spaces holding translations (``;`` between synonyms, ``|`` between senses).
    Notes ({n}, [coll.], (on a menu), <ref>) are removed from both; dictd's own header
    entries are skipped."""
    import gzip

    opener = gzip.open if str(path).endswith((".dz", ".gz")) else open
    head, rest = None, ""
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            if not line[0].isspace():
                head, rest = line.strip(), ""
                continue
            if head is None:
                continue
            if not line.startswith("   "):  # the headword goes on
                rest += " " + line.strip()
                continue
            word = SPACE.sub(" ", _NOTES.sub("", f"{head} {rest}")).strip()
            first = SPACE.sub(" ", _NOTES.sub("", re.split(r"[;|]", line.strip())[0])).strip()
            if first and re.match(r"\w", word) and not word.startswith("00-database"):
                yield word, first, n
            head = None  # later lines of the entry: more senses, not the headword's first


def read_dictd(path: Path) -> dict[str, str]:
    """One translation per one-word headword of a dictd dictionary (``dictd_entries``): of
    a headword's entries, the first translation most of them give (then the shortest),
    without a verb's "to": the table of a word-by-word baseline."""
    seen: dict[str, Counter] = {}  # headword -> its entries' first translations, counted
    first_at: dict[tuple[str, str], int] = {}
    for word, first, n in dictd_entries(path):
        first = first.removeprefix("to ")
        if " " not in word and first:
            seen.setdefault(word, Counter())[first] += 1
            first_at.setdefault((word, first), n)
    if not seen:
        raise LmlabError(f"{path}: no dictionary entries (a dictd .dict or .dict.dz file is "
                         "expected, e.g. Ding's german-english.dict.dz)")
    # The translation most entries give first; then the shorter; then the earlier.
    return {w: min(c, key=lambda t: (-c[t], len(t.split()), first_at[w, t]))
            for w, c in seen.items()}


def dictd_phrases(path: Path, min_words: int = 5) -> list[Pair]:
    """(phrase, translation) pairs from a dictd dictionary's headwords of ``min_words``
    words or more: Ding's example sentences and idioms, parallel text of another kind
    than software messages."""
    return [Pair(word, first, "ding") for word, first, _ in dictd_entries(path)
            if len(word.split()) >= min_words and len(first.split()) >= 2]


_CEDICT = re.compile(r"^(\S+) (\S+) \[[^\]]*\] /(.*)/\s*$")
_NO_GLOSS = re.compile(r"^(?:variant of|old variant of|see |see also|surname |CL:|abbr\. for|"
                       r"used in |erhua variant|Japanese variant)")


def cedict_glosses(path: Path) -> Iterator[tuple[str, str, int, str]]:
    """(traditional, simplified, number of senses, gloss) for each CC-CEDICT entry
    (``繁 简 [pin1 yin1] /gloss/gloss/``) that has a translation: its first gloss that
    is one (not "variant of", "see", "surname", a measure word), notes in parentheses
    removed, without a verb's "to"."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _CEDICT.match(line)
            if m is None:
                continue
            trad, simp, glosses = m.groups()
            senses = glosses.split("/")
            for gloss in senses:
                gloss = SPACE.sub(" ", re.sub(r"\([^)]*\)|\[[^\]]*\]", "", gloss)).strip()
                if gloss and not _NO_GLOSS.match(gloss):
                    yield trad, simp, len(senses), gloss.removeprefix("to ")
                    break


def read_cedict(path: Path) -> dict[str, str]:
    """One English gloss per headword (simplified and traditional) of CC-CEDICT: of a
    headword's entries (its readings, and the rare characters that simplify to it), the
    one with the most glosses, the common sense (当 is "to be", not the 噹 "dong" that
    also simplifies to it); see ``cedict_glosses``."""
    best: dict[str, tuple[int, str]] = {}  # headword -> (glosses in its entry, gloss)
    for trad, simp, senses, gloss in cedict_glosses(path):
        for word in {simp, trad}:
            if senses > best.get(word, (0, ""))[0]:
                best[word] = (senses, gloss)
    table = {word: gloss for word, (_, gloss) in best.items()}
    if not table:
        raise LmlabError(f"{path}: no CC-CEDICT entries (lines like '中國 中国 [Zhong1 guo2] "
                         "/China/' are expected)")
    return table


def read_dictionary(path: Path) -> dict[str, str]:
    """The word table of a dictd dictionary (Ding) or of CC-CEDICT (``.u8``, or a text
    whose lines are CEDICT entries)."""
    path = Path(path)
    if path.suffix == ".u8":
        return read_cedict(path)
    if not str(path).endswith((".dz", ".gz")):
        with open(path, encoding="utf-8", errors="replace") as f:
            head = [line for line in itertools.islice(f, 200) if not line.startswith("#")]
        if head and sum(bool(_CEDICT.match(x)) for x in head) > len(head) / 2:
            return read_cedict(path)
    return read_dictd(path)


_STOPS = str.maketrans({"。": ".", "、": ",", "「": '"', "」": '"', "『": '"', "』": '"',
                        "《": '"', "》": '"'})
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def segment(text: str, table: dict[str, str], longest: int = 8) -> list[str]:
    """Chinese text cut into dictionary words by forward maximum matching: at each place
    the longest word of ``table`` (up to ``longest`` characters), else one character."""
    words, i = [], 0
    while i < len(text):
        for n in range(min(longest, len(text) - i), 0, -1):
            if n == 1 or text[i:i + n] in table:
                words.append(text[i:i + n])
                i += n
                break
    return words


def word_by_word(text: str, table: dict[str, str]) -> str:
    """Each word looked up (as written, then lowercased, then capitalised; Chinese cut into
    dictionary words first); unknown words and punctuation kept: the dictionary baseline
    of translation."""
    out = []
    for token in re.findall(r"\w+|[^\w\s]", text):
        pieces = segment(token, table) if _HAN.search(token) else [token]
        for piece in pieces:
            if piece[0].isalpha():
                piece = (table.get(piece) or table.get(piece.lower())
                         or table.get(piece.capitalize()) or piece)
            else:  # Chinese punctuation as English writes it: ， -> ,  。 -> .
                piece = unicodedata.normalize("NFKC", piece).translate(_STOPS)
            out.append(piece)
    return SPACE.sub(" ", " ".join(out)).replace(" .", ".").replace(" ,", ",").strip()
