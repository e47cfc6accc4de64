"""Token shards: prepare a corpus, read it back by memory map, sample windows, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.data.shards import TokenShards, dtype_for_vocab, prepare
from lmlab.errors import LmlabError
from lmlab.tokenizer import Tokenizer

TRAIN_DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "语言模型为每个词序列分配一个概率。",
    "",  # an empty document still gets its EOS separator
    "Line one\nline two\ttabbed 😀",
    "<|endoftext|> written in the text is just text",
] * 6
VAL_DOCS = ["A held-out document.", "另一个文档。"]


def write_corpus(root: Path, train: list[str], val: list[str] | None = VAL_DOCS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    splits = {"train": train} if val is None else {"train": train, "val": val}
    for split, docs in splits.items():
        lines = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
        (root / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    (root / "corpus.json").write_text("{}")
    return root


@pytest.fixture(scope="module", params=["bpe", "char"])
def tok_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = Tokenizer.train(TRAIN_DOCS, kind=request.param, vocab_size=300, show_progress=False)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(path)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", TRAIN_DOCS)


def expected_stream(tok: Tokenizer, docs: list[str]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += [*tok.encode(d), tok.eos_id]
    return out


def test_prepare_manifest_and_tokens(corpus: Path, tok_path: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_file(tok_path)
    out = tmp_path / "shards"
    manifest = prepare(corpus, tok_path, out, progress=False)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "lmlab-shards/1"
    assert manifest["dtype"] == "uint16"
    assert manifest["tokenizer"] == {
        "path": "tokenizer.json",
        "source": str(tok_path.resolve()),
        "sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "kind": tok.kind,
    }
    assert Tokenizer.from_file(out).sha256 == tok.sha256  # self-contained copy
    for split, docs in (("train", TRAIN_DOCS), ("val", VAL_DOCS)):
        info = manifest["splits"][split]
        stream = expected_stream(tok, docs)
        assert info["tokens"] == sum(len(tok.encode(d)) + 1 for d in docs) == len(stream)
        assert info["documents"] == len(docs)
        assert info["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
        assert info["chars"] == sum(len(d) for d in docs)
        assert info["shards"] == [{"file": f"{split}_000.bin", "tokens": len(stream)}]
        shards = TokenShards(out, split)
        assert shards.dtype == np.dtype("<u2")
        assert shards.tokens().tolist() == stream
        assert (shards.num_tokens, shards.num_docs, shards.num_bytes) == (
            info["tokens"],
            info["documents"],
            info["bytes"],
        )
        assert shards.bytes_per_token == pytest.approx(info["bytes"] / info["tokens"])
        # Raw little-endian file on disk, nothing else.
        raw = np.fromfile(out / f"{split}_000.bin", dtype="<u2")
        assert raw.tolist() == stream
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "shards"]  # no temp dirs


def test_shard_splitting(corpus: Path, tok_path: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_file(tok_path)
    manifest = prepare(
        corpus, tok_path, tmp_path / "s", shard_tokens=7, batch_docs=4, progress=False
    )
    shards = manifest["splits"]["train"]["shards"]
    stream = expected_stream(tok, TRAIN_DOCS)
    assert len(shards) == -(-len(stream) // 7)
    assert [s["file"] for s in shards[:2]] == ["train_000.bin", "train_001.bin"]
    assert all(s["tokens"] == 7 for s in shards[:-1]) and 1 <= shards[-1]["tokens"] <= 7
    ts = TokenShards(tmp_path / "s")
    assert ts.tokens().tolist() == stream
    # Windows that cross shard boundaries read the same stream.
    x, y = ts.sample_batch(16, 20, torch.Generator().manual_seed(0))
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        starts = [i for i in range(len(stream) - 20) if stream[i : i + 20] == row_x]
        assert any(stream[s + 1 : s + 21] == row_y for s in starts)


def test_dtype_for_vocab() -> None:
    assert dtype_for_vocab(256) == np.uint16
    assert dtype_for_vocab(65536) == np.uint16  # ids 0..65535 fit
    assert dtype_for_vocab(65537) == np.uint32
    assert dtype_for_vocab(200_000).byteorder in ("<", "=")


def test_prepare_uint32_with_a_huge_vocabulary(tmp_path: Path) -> None:
    # Over 65536 distinct characters (CJK + Hangul + CJK extension B), each seen once.
    chars = [
        chr(c)
        for r in ((0x3400, 0x4DC0), (0x4E00, 0xA000), (0xAC00, 0xD7A4), (0x20000, 0x2A6E0))
        for c in range(*r)
    ]
    text = "".join(chars)
    tok = Tokenizer.train(
        [text], kind="char", vocab_size=70_000, min_frequency=1, show_progress=False
    )
    assert tok.vocab_size == 70_000
    tok.save(tmp_path / "tok.json")
    docs = [text[65_500:66_000], "hello"]  # ids above 65535 (ties break by code point)
    corpus = write_corpus(tmp_path / "c", docs, val=None)
    manifest = prepare(corpus, tmp_path / "tok.json", tmp_path / "s", progress=False)
    assert manifest["dtype"] == "uint32"
    assert list(manifest["splits"]) == ["train"]  # val.jsonl is optional
    ts = TokenShards(tmp_path / "s")
    assert ts.dtype == np.dtype("<u4")
    stream = expected_stream(tok, docs)
    assert max(stream) > 65535
    assert ts.tokens().tolist() == stream


def test_check_tokenizer(corpus: Path, tok_path: Path, tmp_path: Path) -> None:
    prepare(corpus, tok_path, tmp_path / "s", progress=False)
    ts = TokenShards(tmp_path / "s")
    ts.check_tokenizer(Tokenizer.from_file(tok_path))
    ts.check_tokenizer(Tokenizer.from_file(tmp_path / "s"))
    other = Tokenizer.train(TRAIN_DOCS, kind="char", vocab_size=280, show_progress=False)
    other.save(tmp_path / "other.json")
    with pytest.raises(LmlabError, match="does not match") as info:
        ts.check_tokenizer(Tokenizer.from_file(tmp_path / "other.json"))
    assert "other.json" in str(info.value) and "manifest.json" in str(info.value)


def test_sample_batch(corpus: Path, tok_path: Path, tmp_path: Path) -> None:
    prepare(corpus, tok_path, tmp_path / "s", progress=False)
    ts = TokenShards(tmp_path / "s")
    stream = ts.tokens().tolist()
    g = torch.Generator().manual_seed(1234)
    x, y = ts.sample_batch(4, 8, g)
    assert x.shape == y.shape == (4, 8)
    assert x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in x.tolist():
        assert any(stream[i : i + 8] == row for i in range(len(stream) - 8))
    # Same seed, same batches; a saved generator state replays the next batch.
    x2, y2 = ts.sample_batch(4, 8, torch.Generator().manual_seed(1234))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    state = g.get_state()
    a = ts.sample_batch(4, 8, g)
    g.set_state(state)
    b = ts.sample_batch(4, 8, g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # The largest window that fits: block_size = N - 1 has a single start.
    n = ts.num_tokens
    x, y = ts.sample_batch(2, n - 1, g)
    assert x[0].tolist() == stream[:-1] and y[0].tolist() == stream[1:]


# ---------------------------------------------------------------------- errors
def test_prepare_missing_inputs(tmp_path: Path, tok_path: Path) -> None:
    with pytest.raises(LmlabError, match="corpus directory not found"):
        prepare(tmp_path / "nope", tok_path, tmp_path / "s", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmlabError, match=r"train\.jsonl: not found"):
        prepare(tmp_path / "empty", tok_path, tmp_path / "s", progress=False)
    corpus = write_corpus(tmp_path / "c", TRAIN_DOCS)
    with pytest.raises(LmlabError, match="tokenizer file not found"):
        prepare(corpus, tmp_path / "missing.json", tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("train", [[], ["", ""]])
def test_prepare_empty_corpus(tmp_path: Path, tok_path: Path, train: list[str]) -> None:
    corpus = write_corpus(tmp_path / "c", train)
    with pytest.raises(LmlabError, match="empty"):
        prepare(corpus, tok_path, tmp_path / "s", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_failure_midway_leaves_nothing(tmp_path: Path, tok_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c", TRAIN_DOCS)
    # train is tokenized first, then val fails on its second line.
    (corpus / "val.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(LmlabError, match=r"val\.jsonl:2: not valid JSON"):
        prepare(corpus, tok_path, tmp_path / "s", shard_tokens=5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    (corpus / "val.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(LmlabError, match=r"val\.jsonl:1: expected an object"):
        prepare(corpus, tok_path, tmp_path / "s", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_existing_out_dir(corpus: Path, tok_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    prepare(corpus, tok_path, out, shard_tokens=5, progress=False)
    with pytest.raises(LmlabError, match="already exists"):
        prepare(corpus, tok_path, out, progress=False)
    prepare(corpus, tok_path, out, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "tokenizer.json",
        "train_000.bin",
        "val_000.bin",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "s"]


def test_block_size_too_large(corpus: Path, tok_path: Path, tmp_path: Path) -> None:
    prepare(corpus, tok_path, tmp_path / "s", progress=False)
    val = TokenShards(tmp_path / "s", "val")
    n = val.num_tokens
    with pytest.raises(LmlabError) as info:
        val.sample_batch(2, n, torch.Generator())
    msg = str(info.value)
    assert "'val'" in msg and f"{n} tokens" in msg and f"block_size {n}" in msg


def test_truncated_or_missing_shard(corpus: Path, tok_path: Path, tmp_path: Path) -> None:
    prepare(corpus, tok_path, tmp_path / "s", progress=False)
    shard = tmp_path / "s" / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(LmlabError, match="train_000.bin: shard is .* bytes but"):
        TokenShards(tmp_path / "s")
    shard.unlink()
    with pytest.raises(LmlabError, match="shard file missing"):
        TokenShards(tmp_path / "s")


def test_bad_manifest(corpus: Path, tok_path: Path, tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match="manifest.json: not found"):
        TokenShards(tmp_path)
    prepare(corpus, tok_path, tmp_path / "s", progress=False)
    with pytest.raises(LmlabError, match="no split 'test'"):
        TokenShards(tmp_path / "s", "test")
    path = tmp_path / "s" / "manifest.json"
    good = json.loads(path.read_text())
    path.write_text("{truncated")
    with pytest.raises(LmlabError, match="unreadable manifest"):
        TokenShards(tmp_path / "s")
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(LmlabError, match="not an lmlab-shards/1 manifest"):
        TokenShards(tmp_path / "s")
    del good["splits"]["train"]["documents"]
    path.write_text(json.dumps(good))
    with pytest.raises(LmlabError, match="malformed manifest"):
        TokenShards(tmp_path / "s")


def test_progress_bar_on_stderr(
    corpus: Path, tok_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare(corpus, tok_path, tmp_path / "s", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "train.jsonl" in captured.err and f"{len(TRAIN_DOCS)}/{len(TRAIN_DOCS)}" in captured.err


def test_import_does_not_load_torch() -> None:
    code = "import sys, lmlab.data.shards; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
