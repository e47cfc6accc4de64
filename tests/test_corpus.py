"""Tests for lmlab.data.corpus: reading inputs, cleaning, splitting and errors."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import pytest

from lmlab.data.corpus import (
    CorpusStats,
    build_corpus,
    default_corpus_source,
    iter_documents,
    normalize_document,
    read_split,
)
from lmlab.errors import LmlabError

ZH = "语言模型是一种概率模型。\n它给每个句子一个概率。"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _build(inputs: list[Path], out: Path, **kwargs: object) -> CorpusStats:
    return build_corpus(inputs, out, progress=False, **kwargs)  # type: ignore[arg-type]


def _all_docs(out: Path) -> list[str]:
    return list(read_split(out, "train")) + list(read_split(out, "val"))


# --------------------------------------------------------------------------- reading


def test_txt_modes(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", "one\ntwo\n\n\n  \nthree\r\n\r\nfour\n")
    assert list(iter_documents(path)) == ["one\ntwo\n", "three\r\n", "four\n"]
    assert list(iter_documents(path, txt_mode="line")) == ["one", "two", "three", "four"]
    assert list(iter_documents(path, txt_mode="file")) == [path.read_bytes().decode()]


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello\n")
    assert list(iter_documents(path)) == ["hello\n"]
    assert list(iter_documents(path, txt_mode="file")) == ["hello\n"]


def test_jsonl_custom_field(tmp_path: Path) -> None:
    lines = [{"body": "first", "id": 1}, {"body": ZH}, {"body": ""}]
    path = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert list(iter_documents(path, text_field="body")) == ["first", ZH, ""]


def test_directory_recursion(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _write(root / "b.txt", "bee")
    _write(root / "a" / "z.md", "zed")
    _write(root / "a" / "y.jsonl", json.dumps({"text": "why"}))
    _write(root / "c" / "d" / "e.txt", "deep")
    _write(root / "skip.csv", "not,read")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # binary, but skipped
    _write(root / ".git" / "HEAD.txt", "hidden")
    assert list(iter_documents(root)) == ["why", "zed", "bee", "deep"]


def test_directory_reads_wiki_dumps(tmp_path: Path) -> None:
    dump = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>A</title>'
        "<ns>0</ns><revision><text>'''A''' is a [[letter]].</text></revision></page></mediawiki>"
    )
    _write(tmp_path / "w" / "one.xml", dump)
    (tmp_path / "w" / "two.xml-p1p2.bz2").write_bytes(bz2.compress(dump.encode()))
    assert list(iter_documents(tmp_path / "w")) == ["A is a letter."] * 2


# --------------------------------------------------------------------------- building


def test_normalize_document() -> None:
    assert normalize_document("\n\n  caf\u0065\u0301 \r\nx\t\r\n\n") == "  caf\u00e9\nx"
    assert normalize_document("a\rb") == "a\nb"


def test_build_nfc_dedup_and_stats(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "in.txt",
        "caf\u0065\u0301 au lait\n\ncaf\u00e9 au lait   \n\nsomething else\n\n"
        "something else\n\nx\n\nthird one\n",
    )
    out = tmp_path / "corpus"
    stats = _build([src], out, min_chars=2)
    assert stats.documents_read == 6
    assert stats.duplicates_dropped == 2  # the NFD "café" and the repeat
    assert stats.empty_dropped == 1  # "x" is shorter than min_chars
    assert stats.train_docs + stats.val_docs == 3
    docs = _all_docs(out)
    assert sorted(docs) == ["caf\u00e9 au lait", "something else", "third one"]
    train, val = list(read_split(out, "train")), list(read_split(out, "val"))
    assert stats.train_chars == sum(map(len, train))
    assert stats.val_bytes == sum(len(d.encode()) for d in val)
    meta = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
    assert meta["stats"] == stats.to_dict()
    assert meta["settings"]["min_chars"] == 2
    assert meta["inputs"] == [str(src.resolve())]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "in.txt"]


def test_split_by_document_deterministic(tmp_path: Path) -> None:
    docs = [f"Document number {i}.\nIts second line {i * 7}." for i in range(200)]
    src = _write(tmp_path / "in.txt", "\n\n".join(docs))
    a = _build([src], tmp_path / "a", seed=1, val_fraction=0.1)
    b = _build([src], tmp_path / "b", seed=1, val_fraction=0.1)
    c = _build([src], tmp_path / "c", seed=2, val_fraction=0.1)
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a == b
    assert list(read_split(tmp_path / "a", "val")) != list(read_split(tmp_path / "c", "val"))
    val = list(read_split(tmp_path / "a", "val"))
    assert (a.train_docs, a.val_docs) == (180, 20)
    # Whole documents, never halves of one, and no document in both splits.
    assert set(val) <= set(docs)
    assert not set(val) & set(read_split(tmp_path / "a", "train"))
    assert c.val_docs == 20
    # The same documents in another order give the same validation set.
    shuffled = _write(tmp_path / "rev.txt", "\n\n".join(reversed(docs)))
    _build([shuffled], tmp_path / "r", seed=1, val_fraction=0.1)
    assert sorted(read_split(tmp_path / "r", "val")) == sorted(val)


@pytest.mark.parametrize("n_docs", [1, 2, 3])
def test_tiny_corpus_split_never_empty(tmp_path: Path, n_docs: int) -> None:
    src = _write(tmp_path / "in.txt", "\n\n".join(f"doc {i}" for i in range(n_docs)))
    for seed in range(5):
        stats = _build([src], tmp_path / f"out{seed}", seed=seed, val_fraction=0.01)
        assert stats.train_docs >= 1
        assert stats.val_docs == (0 if n_docs == 1 else 1)
        train = list(read_split(tmp_path / f"out{seed}", "train"))
        val = list(read_split(tmp_path / f"out{seed}", "val"))
        assert (len(train), len(val)) == (stats.train_docs, stats.val_docs)
        assert stats.train_chars == sum(map(len, train))


def test_chinese_round_trip(tmp_path: Path) -> None:
    src = _write(tmp_path / "zh.txt", ZH + "\n\n第二段。")
    out = tmp_path / "out"
    stats = _build([src], out)
    assert sorted(_all_docs(out)) == sorted([ZH, "第二段。"])
    assert stats.train_bytes + stats.val_bytes == len(ZH.encode()) + len("第二段。".encode())
    raw = (out / "train.jsonl").read_text(encoding="utf-8") + (out / "val.jsonl").read_text(
        encoding="utf-8"
    )
    assert "语言模型" in raw  # ensure_ascii=False: readable, not \\u escapes


def test_rebuild_replaces_existing_corpus(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([_write(tmp_path / "a.txt", "alpha\n\nbeta")], out)
    _build([_write(tmp_path / "b.txt", "gamma\n\ndelta")], out)
    assert sorted(_all_docs(out)) == ["delta", "gamma"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "out"]


def test_failed_build_keeps_old_corpus(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build([_write(tmp_path / "a.txt", "alpha\n\nbeta")], out)
    bad = _write(tmp_path / "bad.jsonl", '{"text": "fine"}\n{broken\n')
    with pytest.raises(LmlabError):
        _build([bad], out)
    assert sorted(_all_docs(out)) == ["alpha", "beta"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "bad.jsonl", "out"]


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_corpus([_write(tmp_path / "a.txt", "one\n\ntwo")], tmp_path / "out", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "corpus" in captured.err


def test_default_corpus_source() -> None:
    path = default_corpus_source()
    assert path.is_file() and path.name.endswith(".bz2")


# --------------------------------------------------------------------------- errors


def _bad_inputs(tmp_path: Path) -> list[tuple[Path, str, dict[str, str]]]:
    """(input path, expected message fragment, build kwargs) for each error case."""
    cases: list[tuple[Path, str, dict[str, str]]] = []
    cases.append((tmp_path / "missing.txt", "no such file", {}))
    cases.append((_write(tmp_path / "blank.txt", "\n  \n\n"), "no documents", {}))
    _write(tmp_path / "emptydir" / "x.csv", "a,b")
    cases.append((tmp_path / "emptydir", "no .txt", {}))
    cases.append((_write(tmp_path / "short.txt", "a\n\nb"), "empty after cleaning", {}))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\x00\x01\x02" * 10)
    cases.append((binary, "looks binary", {}))
    gz = tmp_path / "packed.md"
    gz.write_bytes(b"\x1f\x8b\x08\x00rest")
    cases.append((gz, "looks binary", {}))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"first line\nsecond caf\xe9\n")
    cases.append((latin, "byte 0xe9 at byte offset 21, line 2", {}))
    cases.append(
        (
            _write(tmp_path / "badjson.jsonl", '{"text": "a"}\n\n{"text": \n'),
            "line 3 is not valid JSON",
            {},
        )
    )
    cases.append(
        (
            _write(tmp_path / "nofield.jsonl", '{"text": "a"}\n{"body": "b"}\n'),
            "line 2 has no 'text' field",
            {},
        )
    )
    cases.append(
        (
            _write(tmp_path / "notstr.jsonl", '{"text": ["a"]}\n'),
            "line 1: field 'text' is a list, not a string",
            {},
        )
    )
    cases.append((_write(tmp_path / "array.jsonl", '["text"]\n'), "line 1 has no 'text'", {}))
    cases.append(
        (_write(tmp_path / "bad.xml", "<mediawiki><page><title>x</page>"), "malformed XML", {})
    )
    dir_with_binary = tmp_path / "dirbin"
    _write(dir_with_binary / "good.txt", "good text")
    (dir_with_binary / "sub").mkdir()
    (dir_with_binary / "sub" / "evil.txt").write_bytes(b"\x00\x00\x00")
    cases.append((dir_with_binary, "evil.txt: looks binary", {}))
    return cases


def test_errors_name_the_file(tmp_path: Path) -> None:
    for path, fragment, kwargs in _bad_inputs(tmp_path):
        out = tmp_path / f"out-{path.name}"
        with pytest.raises(LmlabError) as info:
            _build([path], out, min_chars=2, **kwargs)
        message = str(info.value)
        assert path.name in message, message
        assert fragment in message, message
        assert "\n" not in message
        assert not out.exists()
    # No hidden temporary directories left behind either.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_iter_documents_errors_without_building(tmp_path: Path) -> None:
    latin = tmp_path / "l.txt"
    latin.write_bytes(b"ok\n\xff\n")
    for mode in ("paragraph", "file", "line"):
        with pytest.raises(LmlabError, match=r"l\.txt: not UTF-8 .*offset 3, line 2"):
            list(iter_documents(latin, txt_mode=mode))  # type: ignore[arg-type]


def test_bad_settings_and_outputs(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.txt", "one\n\ntwo")
    with pytest.raises(LmlabError, match="val_fraction"):
        _build([src], tmp_path / "o", val_fraction=1.0)
    with pytest.raises(LmlabError, match="txt_mode"):
        _build([src], tmp_path / "o", txt_mode="words")
    precious = _write(tmp_path / "precious" / "notes.txt", "keep me")
    with pytest.raises(LmlabError, match="precious: exists and is not an lmlab corpus"):
        _build([src], precious.parent)
    assert precious.read_text(encoding="utf-8") == "keep me"
    with pytest.raises(LmlabError, match="inside the input directory"):
        _build([tmp_path], tmp_path / "nested")
    with pytest.raises(LmlabError, match="nope: no such corpus directory"):
        list(read_split(tmp_path / "nope", "train"))
    with pytest.raises(LmlabError, match="unknown split"):
        list(read_split(tmp_path, "test"))
