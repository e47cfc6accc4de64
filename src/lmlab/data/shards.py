"""Token shards: a corpus tokenized once into flat binary arrays, read by memory map.

Layout of a shards directory (``prepare`` writes it, ``TokenShards`` reads it)::

    manifest.json        format, tokenizer identity, dtype, per-split shard list and stats
    tokenizer.json       copy of the tokenizer used, so the directory is self-contained
    train_000.bin ...    raw little-endian uint16 (vocab <= 65536) or uint32 token ids
    val_000.bin ...

Each split is one stream: every document's tokens followed by the EOS id,
cut into files of ``shard_tokens`` tokens (a document may straddle two files).
Training draws random windows from the stream (nanoGPT's approach): cheap,
needs no padding, and the EOS separators teach the model where documents end.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmlab.atomic import atomic_dir
from lmlab.errors import LmlabError
from lmlab.tokenizer import FILE_NAME as TOKENIZER_FILE
from lmlab.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch

FORMAT = "lmlab-shards/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
# Explicitly little-endian, so shards move between machines unchanged.
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Smallest stored dtype for ids 0..vocab_size-1: uint16 up to 65536 ids, else uint32."""
    return _DTYPES["uint16"] if vocab_size <= 2**16 else _DTYPES["uint32"]


def _count_lines(path: Path) -> int:
    """Number of lines, for the progress bar's total (a byte scan, far cheaper than tokenizing)."""
    n = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


def _read_docs(path: Path) -> Iterator[str]:
    """Yield the "text" of each JSON line of a corpus split; blank lines are skipped."""
    # Binary mode splits on b"\n" only; text mode would also split on a stray "\r".
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise LmlabError(f"{path}:{lineno}: not valid JSON ({exc})") from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise LmlabError(f'{path}:{lineno}: expected an object with a "text" string')
            yield text


class _ShardWriter:
    """Appends token arrays to ``<split>_NNN.bin`` files, starting a new one every N tokens."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out_dir, self.split = out_dir, split
        self.dtype, self.shard_tokens = dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file: Any = None

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            # A file is opened only when a token needs it, so no shard is empty.
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            head, tokens = tokens[:room], tokens[room:]
            self._file.write(head.astype(self.dtype, copy=False).tobytes())
            self.shards[-1]["tokens"] += len(head)

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self._file = (self.out_dir / name).open("wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _tokenize_split(
    path: Path,
    tok: Tokenizer,
    writer: _ShardWriter,
    *,
    batch_docs: int,
    progress: bool,
) -> dict[str, Any]:
    """Tokenize one split into shards; return its manifest entry."""
    from lmlab.progress import progress_bar

    eos = tok.eos_id
    assert eos is not None  # checked by prepare
    stats = {"tokens": 0, "documents": 0, "bytes": 0, "chars": 0}
    bar = progress_bar(
        total=_count_lines(path) if progress else None,
        desc=f"tokenizing {path.name}",
        unit="doc",
        disable=not progress,
    )

    def flush(batch: list[str]) -> None:
        flat: list[int] = []
        for ids in tok.encode_batch(batch):
            flat.extend(ids)
            flat.append(eos)  # document separator; counts as 0 bytes of text
        writer.write(np.asarray(flat, dtype=writer.dtype))
        stats["tokens"] += len(flat)
        stats["documents"] += len(batch)
        stats["bytes"] += sum(len(t.encode("utf-8")) for t in batch)
        stats["chars"] += sum(len(t) for t in batch)
        bar.update(len(batch))

    try:
        batch: list[str] = []
        for text in _read_docs(path):
            batch.append(text)
            if len(batch) == batch_docs:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    finally:
        bar.close()
        writer.close()
    return {"shards": writer.shards, **stats}


def prepare(
    corpus_dir: Path,
    tokenizer_path: Path,
    out_dir: Path,
    *,
    shard_tokens: int = 50_000_000,
    batch_docs: int = 1024,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Tokenize a corpus directory into token shards and return the manifest.

    Args:
        corpus_dir: directory with train.jsonl (required) and val.jsonl (optional),
            one {"text": ...} object per line.
        tokenizer_path: tokenizer.json, or a directory holding one.
        out_dir: shards directory to create; built in a temporary sibling and
            renamed into place at the end, so a failure leaves nothing behind.
        shard_tokens: tokens per shard file.
        batch_docs: documents handed to the tokenizer at once (encoded in parallel).
        progress: show a progress bar (documents) on stderr.
        overwrite: replace out_dir if it already exists.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if shard_tokens < 1 or batch_docs < 1:
        raise LmlabError(
            f"shard_tokens ({shard_tokens}) and batch_docs ({batch_docs}) must be >= 1"
        )
    if not corpus_dir.is_dir():
        raise LmlabError(f"{corpus_dir}: corpus directory not found")
    if not (corpus_dir / "train.jsonl").is_file():
        raise LmlabError(f"{corpus_dir / 'train.jsonl'}: not found; is {corpus_dir} a corpus?")
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LmlabError(f"{out_dir}: already exists; remove it or pass overwrite")
    tok = Tokenizer.from_file(tokenizer_path)
    assert tok.path is not None
    if tok.eos_id is None:
        raise LmlabError(f"{tok.path}: tokenizer has no special token to separate documents")
    dtype = dtype_for_vocab(tok.vocab_size)

    # TOKENIZERS_PARALLELISM is deliberately left alone: unset means HF encodes
    # batches on all cores, and "false" is what HF itself sets in a process forked
    # after the thread pool was used, where forcing "true" could deadlock.
    with atomic_dir(out_dir) as tmp:
        splits: dict[str, Any] = {}
        for split in SPLITS:
            path = corpus_dir / f"{split}.jsonl"
            if split == "train" or path.is_file():
                writer = _ShardWriter(tmp, split, dtype, shard_tokens)
                splits[split] = _tokenize_split(
                    path, tok, writer, batch_docs=batch_docs, progress=progress
                )
            if split == "train" and splits["train"]["bytes"] == 0:
                raise LmlabError(f"{path}: corpus is empty (no text)")
        manifest = {
            "format": FORMAT,
            "tokenizer": {
                "path": TOKENIZER_FILE,  # the copy beside the manifest
                "source": str(tok.path.resolve()),
                "sha256": tok.sha256,
                "vocab_size": tok.vocab_size,
                "eos_id": tok.eos_id,
                "kind": tok.kind,
            },
            "dtype": dtype.name,
            "splits": splits,
        }
        shutil.copyfile(tok.path, tmp / TOKENIZER_FILE)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


class TokenShards:
    """One split of a shards directory, memory-mapped read-only."""

    def __init__(self, data_dir: Path, split: str = "train") -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        self.manifest_path = self.data_dir / MANIFEST
        self.manifest = self._load_manifest()
        mpath = self.manifest_path
        try:
            self.dtype = _DTYPES[self.manifest["dtype"]]
            info = self.manifest["splits"].get(split)
            if info is None:
                have = ", ".join(self.manifest["splits"]) or "none"
                raise LmlabError(f"{mpath}: no split {split!r} (splits: {have})")
            shards = [(str(s["file"]), int(s["tokens"])) for s in info["shards"]]
            self.num_tokens = int(info["tokens"])
            self.num_docs = int(info["documents"])
            self.num_bytes = int(info["bytes"])
            self._tokenizer_sha256 = str(self.manifest["tokenizer"]["sha256"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise LmlabError(f"{mpath}: malformed manifest ({type(exc).__name__}: {exc})") from None
        if sum(n for _, n in shards) != self.num_tokens:
            raise LmlabError(f"{mpath}: split {split!r} shard token counts do not add up")

        self._arrays: list[np.ndarray] = []
        for name, n in shards:
            path = self.data_dir / name
            expected = n * self.dtype.itemsize
            size = path.stat().st_size if path.is_file() else None
            if size is None:
                raise LmlabError(f"{path}: shard file missing (listed in {mpath})")
            if size != expected:
                raise LmlabError(
                    f"{path}: shard is {size} bytes but {mpath} says {n} tokens "
                    f"({expected} bytes); the shard is truncated or stale, re-run prepare"
                )
            if n:
                self._arrays.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(n,)))
        # offsets[i] is the stream position of shard i's first token.
        self._offsets = np.cumsum([0] + [len(a) for a in self._arrays])

    def _load_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LmlabError(
                f"{self.manifest_path}: not found; is {self.data_dir} a shards directory "
                "made by prepare?"
            ) from None
        except (OSError, ValueError) as exc:
            raise LmlabError(f"{self.manifest_path}: unreadable manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise LmlabError(f"{self.manifest_path}: not an {FORMAT} manifest")
        return manifest

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes of text per token (EOS included): loss in bits/token / this = bits/byte."""
        return self.num_bytes / self.num_tokens if self.num_tokens else float("nan")

    def check_tokenizer(self, tok: Tokenizer) -> None:
        """Raise if `tok` is not the tokenizer these shards were made with."""
        want = self._tokenizer_sha256
        if tok.sha256 != want:
            where = tok.path if tok.path is not None else "the given (unsaved) tokenizer"
            raise LmlabError(
                f"{where}: tokenizer does not match the one used for {self.manifest_path} "
                f"(sha256 {tok.sha256[:12]} vs {want[:12]}); use {self.data_dir / TOKENIZER_FILE}"
            )

    def _window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the split's stream, across shard boundaries."""
        i = int(np.searchsorted(self._offsets, start, side="right")) - 1
        local = start - int(self._offsets[i])
        arr = self._arrays[i]
        if local + length <= len(arr):
            return arr[local : local + length]
        pieces = []
        while length > 0:
            piece = self._arrays[i][local : local + length]
            pieces.append(piece)
            length -= len(piece)
            i, local = i + 1, 0
        return np.concatenate(pieces)

    def sample_batch(
        self, batch_size: int, block_size: int, generator: torch.Generator,
        rows: slice | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: x (B, T) and targets y (B, T) = x shifted left by one, int64.

        Window starts come only from ``torch.randint(generator=generator)``, so
        restoring the generator's state reproduces the same batches. ``rows``
        keeps some rows of the batch drawn (one process's share of a global
        batch); the generator advances as for the whole batch.
        """
        import torch

        B, T = batch_size, block_size
        if self.num_tokens < T + 1:
            raise LmlabError(
                f"{self.manifest_path}: split {self.split!r} has {self.num_tokens} tokens, "
                f"too few for one window of block_size {T} (+1 target token)"
            )
        # Start s needs s + T + 1 <= N, so s is drawn from [0, N - T).
        starts = torch.randint(0, self.num_tokens - T, (B,), generator=generator)
        if rows is not None:
            starts = starts[rows]
        rows = np.stack([self._window(int(s), T + 1) for s in starts])  # (B, T+1)
        buf = torch.from_numpy(rows.astype(np.int64))
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()

    def tokens(self) -> np.ndarray:
        """All tokens of the split in order (one shard: its read-only memmap, else a copy)."""
        if len(self._arrays) == 1:
            return self._arrays[0]
        if not self._arrays:
            return np.zeros(0, dtype=self.dtype)
        return np.concatenate(self._arrays)

    def __repr__(self) -> str:
        where = str(self.data_dir)
        return f"TokenShards({where!r}, split={self.split!r}, tokens={self.num_tokens})"
