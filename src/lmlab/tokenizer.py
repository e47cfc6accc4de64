"""Tokenizers: byte-level BPE and character-level, one interface over HF `tokenizers`.

Both kinds are lossless: ``decode(encode(s)) == s`` for any Python string ``s``
(any sequence of Unicode code points that UTF-8 can encode).

* ``bpe``: GPT-2 style byte-level BPE. Text is turned into UTF-8 bytes, each
  byte shown as one of 256 printable characters (the ByteLevel pre-tokenizer,
  without GPT-2's prefix space, so nothing is added to the text), and merges
  are learned on top. The 256 byte symbols are always in the vocabulary, so no
  text is ever out of vocabulary.
* ``char``: one token per character (Unicode code point). The vocabulary is the
  most frequent characters of the training text plus 256 byte tokens
  ``<0x00>``..``<0xFF>``: a character outside the vocabulary is spelled as its
  UTF-8 bytes (SentencePiece's "byte fallback"), so it still round-trips. It is
  an HF BPE model with no merges: such a model already emits one token per
  character, so no pre-tokenizer is needed (and isolating characters with a
  regex pre-tokenizer made encoding 3-5x slower).

Special tokens (``<|endoftext|>`` by default) are single ids that only code can
insert: text that happens to contain the string ``<|endoftext|>`` is encoded
as ordinary characters (``encode_special_tokens`` in HF terms), so a document
cannot forge a document boundary.

`tokenizers` is imported inside the functions that need it, so importing this
module is cheap.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmlab.errors import LmlabError

if TYPE_CHECKING:
    import tokenizers

EOS_TOKEN = "<|endoftext|>"
NUM_BYTES = 256
FILE_NAME = "tokenizer.json"


def _byte_token(b: int) -> str:
    """The byte-fallback token for one byte, in the spelling HF's ByteFallback decodes."""
    return f"<0x{b:02X}>"


class Tokenizer:
    """A trained tokenizer: text to token ids and back.

    Build one with :meth:`train` or :meth:`from_file`. ``kind`` is ``"bpe"``,
    ``"char"``, or ``"json"`` for a tokenizer.json of some other design.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        kind: str,
        *,
        path: Path | None = None,
        json_text: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        # Not matching special tokens inside text is a runtime flag that HF does
        # not save in tokenizer.json, so it is set on every construction.
        backend.encode_special_tokens = True
        self._tok = backend
        self.kind = kind
        self.path = path  # the file it was loaded from or last saved to; None if unsaved
        self._json_text = json_text
        # A model's own end-of-sequence token when it is not <|endoftext|>
        # (e.g. SmolLM2's <|im_end|>, named in its GGUF metadata).
        self._eos_token = eos_token

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        kind: Literal["char", "bpe"],
        vocab_size: int,
        special_tokens: Sequence[str] = (EOS_TOKEN,),
        min_frequency: int = 2,
        show_progress: bool = True,
    ) -> Tokenizer:
        """Train a tokenizer on an iterable of documents (read once, streaming for BPE).

        Args:
            texts: documents; any iterable of str, e.g. a generator over a corpus.
            kind: "bpe" (byte-level BPE) or "char" (characters plus byte fallback).
            vocab_size: total vocabulary size, special and byte tokens included.
                The result may be smaller if the text has too few distinct
                pairs (BPE) or characters (char).
            special_tokens: tokens given the first ids (0, 1, ...), in order.
            min_frequency: a merge (BPE) or a character (char) seen fewer times
                than this is not added to the vocabulary.
            show_progress: show HF's progress bar while training BPE.
        """
        specials = list(special_tokens)
        if kind not in ("char", "bpe"):
            raise LmlabError(f"tokenizer kind must be 'char' or 'bpe', not {kind!r}")
        if len(set(specials)) != len(specials) or not all(specials):
            raise LmlabError(f"special tokens must be distinct non-empty strings: {specials}")
        minimum = NUM_BYTES + len(specials)
        if vocab_size < minimum:
            raise LmlabError(
                f"vocab_size {vocab_size} is too small for a {kind} tokenizer: it needs at "
                f"least {minimum} (256 byte tokens + {len(specials)} special tokens)"
            )
        texts = _require_text(texts)
        if kind == "bpe":
            return cls._train_bpe(texts, vocab_size, specials, min_frequency, show_progress)
        return cls._train_char(texts, vocab_size, specials, min_frequency)

    @classmethod
    def _train_bpe(
        cls,
        texts: Iterator[str],
        vocab_size: int,
        specials: list[str],
        min_frequency: int,
        show_progress: bool,
    ) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        # No prefix space: GPT-2 adds one so "Hello" and " Hello" share a token,
        # but then decode(encode(s)) would gain a leading space.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            # All 256 byte symbols, even those absent from the training text, so
            # that any UTF-8 input can be encoded.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, "bpe")

    @classmethod
    def _train_char(
        cls, texts: Iterator[str], vocab_size: int, specials: list[str], min_frequency: int
    ) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models

        byte_tokens = {_byte_token(b) for b in range(NUM_BYTES)}
        bad = [s for s in specials if len(s) == 1 or s in byte_tokens]
        if bad:
            # A one-character special token would be emitted for that character
            # in ordinary text; a byte-token name would decode as a raw byte.
            raise LmlabError(
                f"special tokens {bad} cannot be used with a char tokenizer: they would "
                "clash with a character or a byte-fallback token"
            )
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)  # C-accelerated count of code points
        # Most frequent first; ties broken by code point so training is deterministic.
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        budget = vocab_size - len(specials) - NUM_BYTES
        chars = [c for c, n in ranked if n >= min_frequency][:budget]

        vocab: dict[str, int] = {}
        for token in [*specials, *(_byte_token(b) for b in range(NUM_BYTES)), *chars]:
            vocab[token] = len(vocab)
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        # ByteFallback turns runs of <0xNN> tokens back into UTF-8 text; Fuse joins
        # the pieces without inserting anything between them.
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        tok.add_special_tokens(specials)
        return cls(tok, "char")

    # ------------------------------------------------------------------ files
    @classmethod
    def from_file(cls, path: str | Path, *, eos_token: str | None = None) -> Tokenizer:
        """Load a tokenizer.json (or a directory holding one)."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LmlabError(f"{path}: tokenizer file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise LmlabError(f"{path}: cannot read tokenizer file: {exc}") from None
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LmlabError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(spec, dict) or "model" not in spec:
            raise LmlabError(f"{path}: not a tokenizer file (no 'model' entry)")
        try:
            backend = HFTokenizer.from_str(text)
        except Exception as exc:  # the Rust side raises a bare Exception
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LmlabError(f"{path}: not a valid tokenizer file ({msg})") from None
        return cls(backend, _infer_kind(spec), path=path, json_text=text, eos_token=eos_token)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (to a directory: ``<dir>/tokenizer.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self._tok.to_str(pretty=True)
        # Write beside the target, then rename: a crash leaves the old file or
        # the new one, never half of one.
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.path = path

    # ------------------------------------------------------------------ use
    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of one text (no special tokens added).

        With ``allow_special``, special-token strings in the text become their
        ids: for text lmlab writes itself, such as a rendered chat template,
        never for user input.
        """
        if not allow_special:
            return self._tok.encode(text, add_special_tokens=False).ids
        self._tok.encode_special_tokens = False
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        finally:
            self._tok.encode_special_tokens = True

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel on all cores by the Rust side."""
        # The "fast" variant skips computing character offsets, which we never use.
        encs = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encs]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids; special tokens are kept unless skipped.

        Ids outside the vocabulary are silently dropped (HF behaviour), which
        matters if a model's output layer is padded beyond ``vocab_size``.
        """
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included; ids are 0..vocab_size-1."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @cached_property
    def special_tokens(self) -> list[str]:
        """The special tokens, by increasing id."""
        added = self._tok.get_added_tokens_decoder()
        return [t.content for _, t in sorted(added.items()) if t.special]

    @cached_property
    def eos_id(self) -> int | None:
        """Id of the model's end token: the one named at construction, else
        ``<|endoftext|>``, else the first special token, else None."""
        if self._eos_token is not None:
            return self._tok.token_to_id(self._eos_token)
        eos = self._tok.token_to_id(EOS_TOKEN)
        if eos is not None:
            return eos
        return self._tok.token_to_id(self.special_tokens[0]) if self.special_tokens else None

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (as stored in the vocabulary), or None."""
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """Token string of an id (byte-level BPE shows bytes as symbols like 'Ġ'), or None."""
        return self._tok.id_to_token(int(i))

    @cached_property
    def sha256(self) -> str:
        """Hash of the tokenizer's canonical JSON (sorted keys, no whitespace).

        Canonicalising the file's own JSON, rather than hashing HF's
        re-serialisation, keeps the hash stable across `tokenizers` versions
        (which add fields) and across pretty-printing.
        """
        text = self._json_text if self._json_text is not None else self._tok.to_str()
        canonical = json.dumps(
            json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}{where})"


def _require_text(texts: Iterable[str]) -> Iterator[str]:
    """Return an iterator over `texts`, or raise if it holds no non-empty text."""
    it = iter(texts)
    for first in it:
        if first:
            return itertools.chain([first], it)
    raise LmlabError("cannot train a tokenizer on no text: the training texts are empty")


def _infer_kind(spec: dict[str, Any]) -> str:
    """Recognise our own two designs from a tokenizer.json's structure.

    HF rejects unknown fields in tokenizer.json, so the kind cannot be stored
    as a side field; the structure identifies it unambiguously instead.
    """
    model = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    pre = spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        return "json"
    if (
        model.get("byte_fallback")
        and not model.get("merges")
        and pre == {}
        and decoder.get("type") == "Sequence"
        and [d.get("type") for d in decoder.get("decoders", [])] == ["ByteFallback", "Fuse"]
    ):
        return "char"
    if pre.get("type") == "ByteLevel" and decoder.get("type") == "ByteLevel":
        return "bpe"
    return "json"
