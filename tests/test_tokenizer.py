"""Tokenizer: lossless round trips, special tokens, vocabulary limits, files, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.tokenizer import Tokenizer

ENGLISH = (
    "The quick brown fox jumps over the lazy dog. A language model assigns a "
    "probability to every sequence of tokens, and training lowers the loss on text.\n"
)
CHINESE = "语言模型为每个词序列分配一个概率。训练降低了文本上的损失。\n"
TEXTS = [ENGLISH * 3, CHINESE * 3, ENGLISH + CHINESE] * 20

EXPLICIT = [
    "",
    "hello",
    "你好，世界！这是一个测试。",
    "日本語のテキストと한국어 텍스트",
    "emoji 😀🎉 family 👨\u200d👩\u200d👧 flag 🇫🇷 skin 👍🏽",
    "   leading and trailing   ",
    "tabs\t\tand\nnewlines\n\n\r\nand \u00a0nbsp \u2028 sep \u3000 ideographic space",
    "combining e\u0301 a\u0308 and precomposed é ä; o\u0301\u0302\u0303 stacked",
    "nul \x00 and control \x07\x1b chars",
    "literal special <|endoftext|> and byte token <0x41> strings",
    "\U0010ffff last code point, \ufeff BOM, \U0001f9ec dna",
]


@pytest.fixture(scope="module", params=["bpe", "char"])
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    return Tokenizer.train(TEXTS, kind=request.param, vocab_size=320, show_progress=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=st.text())
def test_round_trip_arbitrary_text(tok: Tokenizer, s: str) -> None:
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=100, deadline=None)
@given(s=st.text(alphabet=st.sampled_from(sorted(set(ENGLISH + CHINESE)) + ["😀", "\t", "é"])))
def test_round_trip_mostly_seen_characters(tok: Tokenizer, s: str) -> None:
    assert tok.decode(tok.encode(s)) == s


@pytest.mark.parametrize("s", EXPLICIT)
def test_round_trip_explicit(tok: Tokenizer, s: str) -> None:
    ids = tok.encode(s)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    assert tok.encode_batch(EXPLICIT) == [tok.encode(s) for s in EXPLICIT]
    assert tok.encode_batch([]) == []


def test_special_token_is_one_id_and_never_produced_by_text(tok: Tokenizer) -> None:
    eos = tok.eos_id
    assert eos == tok.token_to_id("<|endoftext|>") == 0
    assert tok.id_to_token(eos) == "<|endoftext|>"
    assert tok.special_tokens == ["<|endoftext|>"]
    ids = tok.encode("a<|endoftext|>b")
    assert eos not in ids
    assert tok.decode([*tok.encode("a"), eos, *tok.encode("b")]) == "a<|endoftext|>b"
    assert tok.decode([eos, *tok.encode("hi")], skip_special_tokens=True) == "hi"


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_several_special_tokens_get_the_first_ids(kind: str) -> None:
    specials = ("<|pad|>", "<|endoftext|>", "<|user|>")
    t = Tokenizer.train(
        TEXTS, kind=kind, vocab_size=300, special_tokens=specials, show_progress=False
    )
    assert [t.token_to_id(s) for s in specials] == [0, 1, 2]
    assert t.eos_id == 1  # <|endoftext|> wins over the first special token
    for s in specials:
        assert not set(t.encode(f"x {s} y")) & {0, 1, 2}


def test_eos_falls_back_to_first_special_token() -> None:
    t = Tokenizer.train(
        TEXTS, kind="char", vocab_size=300, special_tokens=("<eos>", "<pad>"), show_progress=False
    )
    assert t.eos_id == t.token_to_id("<eos>") == 0


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_vocab_size_is_respected(kind: str) -> None:
    for size in (257, 270, 300):
        t = Tokenizer.train(TEXTS, kind=kind, vocab_size=size, show_progress=False)
        assert t.vocab_size <= size
        assert max(t.encode(ENGLISH + CHINESE + "😀")) < t.vocab_size


def test_bpe_merges_shorten_text() -> None:
    t = Tokenizer.train(TEXTS, kind="bpe", vocab_size=400, show_progress=False)
    assert t.vocab_size == 400
    assert len(t.encode(ENGLISH)) < len(ENGLISH.encode("utf-8")) / 2


def test_char_vocabulary_is_most_frequent_characters() -> None:
    # 1 special + 256 bytes + 3 characters: 'a' (5x), 'b' (4x), 'c' (3x) win over 'd' (2x).
    texts = ["aaaaa", "bbbb", "ccc", "dd", "e"]
    t = Tokenizer.train(texts, kind="char", vocab_size=260, show_progress=False)
    assert t.vocab_size == 260
    assert [t.token_to_id(c) for c in "abc"] == [257, 258, 259]
    assert len(t.encode("abc")) == 3
    assert t.token_to_id("d") is None
    assert t.encode("d") == [t.token_to_id("<0x64>")]  # byte fallback
    assert len(t.encode("语")) == 3  # three UTF-8 bytes
    # min_frequency: 'e' occurs once, so it is never added even with room to spare.
    roomy = Tokenizer.train(texts, kind="char", vocab_size=1000, show_progress=False)
    assert roomy.token_to_id("d") is not None and roomy.token_to_id("e") is None
    assert roomy.vocab_size == 257 + 4


def test_kind_and_repr(tok: Tokenizer) -> None:
    assert tok.kind in ("bpe", "char")
    assert tok.kind in repr(tok)


def test_save_and_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    tok.save(path)
    assert tok.path == path
    loaded = Tokenizer.from_file(path)
    assert loaded.kind == tok.kind
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.eos_id == tok.eos_id
    assert loaded.sha256 == tok.sha256
    assert loaded.encode_batch(EXPLICIT) == tok.encode_batch(EXPLICIT)
    # A directory is accepted on both sides, and no temporary file is left behind.
    tok.save(tmp_path)
    assert Tokenizer.from_file(tmp_path).sha256 == tok.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json", "tokenizer.json"]


def test_sha256_ignores_formatting_but_not_content(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "a.json")
    compact = tmp_path / "b.json"
    compact.write_text(json.dumps(json.loads((tmp_path / "a.json").read_text())))
    assert Tokenizer.from_file(compact).sha256 == tok.sha256
    other = Tokenizer.train(TEXTS, kind=tok.kind, vocab_size=300, show_progress=False)
    assert other.sha256 != tok.sha256


def test_foreign_tokenizer_json_loads_as_kind_json(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    hf = HFTokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["[EOS]"])
    hf.save(str(tmp_path / "tokenizer.json"))
    t = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert t.kind == "json"
    assert t.encode("hello world") == [1, 2]
    assert t.eos_id == 3  # no <|endoftext|>: the first special token


def test_import_is_cheap() -> None:
    code = "import sys, lmlab.tokenizer; assert 'tokenizers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- errors
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match="not found"):
        Tokenizer.from_file(tmp_path / "nope.json")
    with pytest.raises(LmlabError, match="not found"):
        Tokenizer.from_file(tmp_path)  # a directory without tokenizer.json


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a tokenizer file"),
        ('{"vocab": {}}', "not a tokenizer file"),
        ('{"model": {"type": "Nope"}}', "not a valid tokenizer file"),
    ],
)
def test_bad_tokenizer_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(LmlabError, match=message) as info:
        Tokenizer.from_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_vocab_size_too_small(kind: str) -> None:
    with pytest.raises(LmlabError, match="at least 257"):
        Tokenizer.train(TEXTS, kind=kind, vocab_size=256, show_progress=False)
    with pytest.raises(LmlabError, match="at least 258"):
        Tokenizer.train(
            TEXTS, kind=kind, vocab_size=257, special_tokens=("<a>", "<b>"), show_progress=False
        )


@pytest.mark.parametrize("kind", ["bpe", "char"])
@pytest.mark.parametrize("texts", [[], [""], iter(["", ""])])
def test_training_on_no_text(kind: str, texts: object) -> None:
    with pytest.raises(LmlabError, match="no text"):
        Tokenizer.train(texts, kind=kind, vocab_size=300, show_progress=False)  # type: ignore[arg-type]


def test_bad_kind_and_special_tokens() -> None:
    with pytest.raises(LmlabError, match="kind"):
        Tokenizer.train(TEXTS, kind="word", vocab_size=300)  # type: ignore[arg-type]
    with pytest.raises(LmlabError, match="distinct"):
        Tokenizer.train(TEXTS, kind="bpe", vocab_size=300, special_tokens=("<a>", "<a>"))
    with pytest.raises(LmlabError, match="clash"):
        Tokenizer.train(TEXTS, kind="char", vocab_size=300, special_tokens=("$",))
