"""Tests for lmlab.data.neardup (MinHash + LSH) and `lmlab corpus --near-dup`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.data.corpus import build_corpus, read_split
from lmlab.data.neardup import NearDuplicates, shingles, units

EN = ("The river town of Alder Creek held its first book fair in the spring of 1998, when "
      "three teachers borrowed tables from the church hall and set them out along the main "
      "street. By noon the tables were empty and the teachers had raised enough money to buy "
      "a projector for the school. The fair has grown every year since: it now fills the old "
      "mill, draws visitors from the whole valley, and pays for a reading room that stays "
      "open every evening until nine.")
# Two words changed and the last full stop: what a copy on another site looks like.
EN_EDIT = EN.replace("three teachers", "four teachers").replace("until nine.", "until ten!")
# Same shape and subject, different facts: not a duplicate.
EN_OTHER = ("The harbour town of Port Elling held its first fish market in the autumn of 1987, "
            "when two fishermen rented a shed near the pier and sold their catch straight from "
            "the boats. Within a month the shed was too small, and the council built a covered "
            "hall that still opens before dawn. The market now supplies restaurants across the "
            "county and keeps a small museum about the fleet that once sailed from the bay.")
ZH = ("我们村的图书馆是一九九八年春天建起来的。当时三位老师从祠堂借来桌子，摆在大街两旁卖旧书，"
      "到中午桌子就空了，筹到的钱正好给学校买了一台投影仪。后来书市一年比一年大，如今占满了整座"
      "老磨坊，吸引了全县的人来逛，每年的收入还维持着一间阅览室，每天晚上一直开到九点。")
ZH_EDIT = ZH.replace("三位老师", "四位老师").replace("九点", "十点")
ZH_OTHER = ("港口小镇的鱼市始于一九八七年秋天。两位渔民在码头边租了一间棚屋，把刚打上来的鱼直接"
            "从船上卖出去。不到一个月棚屋就不够用了，镇上盖起了一座有顶的市场，至今天亮前就开门。"
            "现在这个鱼市给全县的饭馆供货，还办了一个小小的博物馆，讲述当年从海湾出航的船队。")


def _jaccard(a: str, b: str) -> float:
    """The exact Jaccard similarity of two documents' shingle sets."""
    sa, sb = set(shingles(a).tolist()), set(shingles(b).tolist())
    return len(sa & sb) / len(sa | sb)


def test_units_words_and_characters() -> None:
    assert units("Hello, World! 3.5") == ["hello", "world", "3", "5"]
    assert units("我们用 PyTorch 训练。") == ["我", "们", "用", "pytorch", "训", "练"]
    assert units("ภาษาไทย")[:3] == ["ภ", "า", "ษ"]  # Thai has no spaces either


def test_shingles() -> None:
    assert len(shingles("one two three")) == 1  # shorter than a shingle: one
    assert len(shingles("?! ... --")) == 0  # nothing to compare
    assert len(shingles("a b c d e f g")) == 3  # 5-word windows
    # Case and punctuation are not what makes a document different.
    assert shingles("The Cat, the hat.").tolist() == shingles("the cat the hat").tolist()
    assert shingles("a b c d e f").tolist() != shingles("f e d c b a").tolist()  # order counts


@pytest.mark.parametrize(("first", "edited", "other"), [(EN, EN_EDIT, EN_OTHER),
                                                        (ZH, ZH_EDIT, ZH_OTHER)],
                         ids=["english", "chinese"])
def test_edited_copy_dropped_different_kept(first: str, edited: str, other: str) -> None:
    assert _jaccard(first, edited) > 0.8 > 0.1 > _jaccard(first, other)
    near = NearDuplicates(0.8)
    assert [near.is_duplicate(t) for t in (first, edited, other, edited)] == [
        False, True, False, True]


def test_threshold_and_first_kept() -> None:
    # Half the text rewritten: exact Jaccard ~0.4, well away from both thresholds.
    half = EN[: len(EN) // 2] + EN_OTHER[len(EN_OTHER) // 2:]
    assert 0.3 < _jaccard(EN, half) < 0.6
    strict, loose = NearDuplicates(0.8), NearDuplicates(0.2)
    assert [strict.is_duplicate(t) for t in (half, EN)] == [False, False]
    assert [loose.is_duplicate(t) for t in (half, EN)] == [False, True]  # the first one stays


def test_deterministic() -> None:
    a, b = NearDuplicates().minhash(ZH), NearDuplicates().minhash(ZH)
    assert a is not None and b is not None
    assert a.hashvalues.tolist() == b.hashvalues.tolist()
    assert NearDuplicates().minhash("...") is None
    assert not NearDuplicates().is_duplicate("...")


# --------------------------------------------------------------------------- in a corpus build

DOCS = [EN, ZH, EN_EDIT, EN_OTHER, ZH_EDIT, ZH_OTHER, EN]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("neardup") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in DOCS),
                    encoding="utf-8")
    return path


def _docs(out: Path) -> list[str]:
    return sorted(list(read_split(out, "train")) + list(read_split(out, "val")))


def test_corpus_near_dup(source: Path, tmp_path: Path) -> None:
    stats = build_corpus([source], tmp_path / "c", progress=False, near_dup=True)
    assert (stats.duplicates_dropped, stats.near_duplicates_dropped) == (1, 2)
    assert _docs(tmp_path / "c") == sorted([EN, ZH, EN_OTHER, ZH_OTHER])
    meta = json.loads((tmp_path / "c" / "corpus.json").read_text(encoding="utf-8"))
    assert meta["settings"]["near_dup_threshold"] == 0.8
    assert meta["stats"]["near_duplicates_dropped"] == 2
    # Without the flag only the exact copy goes.
    plain = build_corpus([source], tmp_path / "p", progress=False)
    assert (plain.duplicates_dropped, plain.near_duplicates_dropped) == (1, 0)
    assert len(_docs(tmp_path / "p")) == 6


def test_cli_near_dup(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert main(["corpus", str(source), "--near-dup", "--out", str(out)]) == 0
    assert "dropped 2 near-duplicates (Jaccard >= 0.8)" in capsys.readouterr().out
    # At 0.95 the lightly edited copies (Jaccard ~0.86) are far enough apart to stay.
    assert main(["corpus", str(source), "--near-dup", "--near-dup-threshold", "0.95",
                 "--out", str(out), "--overwrite"]) == 0
    assert "dropped 0 near-duplicates (Jaccard >= 0.95)" in capsys.readouterr().out
    assert len(_docs(out)) == 6
    assert main(["corpus", str(source), "--near-dup-threshold", "1.5", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "--near-dup-threshold" in capsys.readouterr().err
