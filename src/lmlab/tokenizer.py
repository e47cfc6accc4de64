"""Tokenizers: byte-level BPE, character-level and WordPiece, one interface over HF `tokenizers`.

``bpe`` and ``char`` are lossless: ``decode(encode(s)) == s`` for any Python
string ``s`` (any sequence of Unicode code points that UTF-8 can encode).
``wordpiece`` is not.

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
* ``wordpiece``: BERT's tokenizer, for encoder models. Text is cleaned
  (control characters dropped), optionally lowercased with accents stripped,
  and split on whitespace and punctuation, each CJK character being a word of
  its own; each word is then spelled greedily, longest match first, by a
  first piece and ``##``-prefixed continuation pieces. A word that cannot be
  spelled becomes the single token ``[UNK]``: there is no byte fallback. So
  WordPiece is lossy: ``decode`` gives lowercased (by default), re-spaced text
  ("Hello,world" -> "hello, world"), with ``[UNK]`` for unknown words. Its
  special tokens are ``[PAD] [UNK] [CLS] [SEP] [MASK]``; :meth:`Tokenizer.encode`
  never adds ``[CLS]``/``[SEP]`` (model code does), and ``[SEP]`` is the
  :attr:`Tokenizer.eos_id` that separates documents in token shards.

Special tokens (``<|endoftext|>`` by default) are single ids that only code can
insert: text that happens to contain the string ``<|endoftext|>`` is encoded
as ordinary characters (``encode_special_tokens`` in HF terms), so a document
cannot forge a document boundary.

Pretrained byte-level BPE also loads from the two other common formats, into
the same HF model: GPT-2's ``vocab.json`` + ``merges.txt``, and tiktoken rank
files (``*.tiktoken``, lines of ``base64(token bytes) rank``), whose merges are
recovered from the ranks (see :func:`_merges_from_ranks`). Pretrained WordPiece
loads from BERT's ``vocab.txt`` (one token per line, the line number is the id)
as well as from a tokenizer.json.

`tokenizers` is imported inside the functions that need it, so importing this
module is cheap.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import itertools
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmlab.data.chinese import CJK
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    import numpy as np
    import tokenizers

EOS_TOKEN = "<|endoftext|>"
NUM_BYTES = 256
FILE_NAME = "tokenizer.json"
VOCAB_NAME = "vocab.json"
MERGES_NAME = "merges.txt"
VOCAB_TXT_NAME = "vocab.txt"  # BERT's vocabulary: one token per line
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"  # transformers' options, beside vocab.txt
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
# BERT's special tokens, in the order that gives them ids 0..4 in a trained WordPiece.
BERT_SPECIALS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
CONTINUING_PREFIX = "##"  # marks a WordPiece token that continues a word
# GPT-2's pre-tokenization regex (encoder.py in openai/gpt-2); HF's ByteLevel
# pre-tokenizer with use_regex=True applies exactly this pattern.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Words for the word-level tokenizer: a run of word characters, or one CJK
# ideograph (Chinese has no spaces; as in BERT, each character is a word), or
# one punctuation mark. CJK (lmlab.data.chinese) is not a raw string, so the
# pattern holds the characters themselves rather than \u escapes, which Python's
# `re` and the Oniguruma engine of HF `tokenizers` would read differently: so
# Python code and Tokenizer.from_words split text identically.
WORD_PATTERN = rf"[{CJK}]|[^\W{CJK}]+|[^\w\s]"


def _byte_token(b: int) -> str:
    """The byte-fallback token for one byte, in the spelling HF's ByteFallback decodes."""
    return f"<0x{b:02X}>"


def _token_id_property(token: str) -> cached_property[int | None]:
    """A cached :class:`Tokenizer` property: the id of ``token``, or None."""

    def token_id(self: Tokenizer) -> int | None:
        return self._tok.token_to_id(token)

    token_id.__doc__ = f"Id of ``{token}``, or None."
    return cached_property(token_id)


class Tokenizer:
    """A trained tokenizer: text to token ids and back.

    Build one with :meth:`train`, :meth:`from_words` or :meth:`from_file`.
    ``kind`` is ``"bpe"``, ``"char"``, ``"wordpiece"``, ``"word"`` (whole
    words, :meth:`from_words`), or ``"json"`` for a tokenizer.json of some
    other design.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        kind: str,
        *,
        path: Path | None = None,
        json_text: str | None = None,
        eos_token: str | None = None,
        bos_token: str | None = None,
    ) -> None:
        # Not matching special tokens inside text is a runtime flag that HF does
        # not save in tokenizer.json, so it is set on every construction.
        backend.encode_special_tokens = True
        # BERT tokenizer.json files ship padding and truncation settings (MiniLM's
        # pads every encoding to 128 ids and cuts it there), which would silently
        # cut documents and add [PAD]s; lmlab pads and truncates in model code.
        backend.no_padding()
        backend.no_truncation()
        self._tok = backend
        self.kind = kind
        self.path = path  # the file it was loaded from or last saved to; None if unsaved
        self._json_text = json_text
        # A model's own end-of-sequence token when it is not <|endoftext|>
        # (e.g. SmolLM2's <|im_end|>, named in its GGUF metadata).
        self._eos_token = eos_token
        # A token every prompt must start with (Gemma's <bos>: without it the model
        # reads garbage), or None; see encode_prompt.
        self._bos_token = bos_token
        # [UNK]s among the tokens encode_batch has produced, for warn_unknown.
        self._unk_count = UnknownCount()

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        kind: Literal["char", "bpe", "wordpiece"],
        vocab_size: int,
        special_tokens: Sequence[str] | None = None,
        min_frequency: int = 2,
        show_progress: bool = True,
        lowercase: bool = True,
    ) -> Tokenizer:
        """Train a tokenizer on an iterable of documents (read once, streaming for BPE).

        Args:
            texts: documents; any iterable of str, e.g. a generator over a corpus.
            kind: "bpe" (byte-level BPE), "char" (characters plus byte fallback)
                or "wordpiece" (BERT's tokenizer; lossy, see the module docstring).
            vocab_size: total vocabulary size, special and byte tokens included.
                The result may be smaller if the text has too few distinct
                pairs (BPE, WordPiece) or characters (char). WordPiece keeps at
                most ``(vocab_size - len(special_tokens)) // 2`` distinct
                characters (each needs a ``##`` form too); rarer ones become [UNK].
            special_tokens: tokens given the first ids (0, 1, ...), in order. By
                default ``<|endoftext|>`` for bpe and char, and ``[PAD] [UNK]
                [CLS] [SEP] [MASK]`` (ids 0..4) for wordpiece, which needs [UNK].
            min_frequency: a merge (BPE, WordPiece) or a character (char) seen
                fewer times than this is not added to the vocabulary.
            show_progress: show HF's progress bar while training BPE or WordPiece.
            lowercase: WordPiece only: lowercase and strip accents before
                splitting (BERT "uncased"); False keeps case and accents.

        bpe and char training is deterministic. WordPiece training is not
        quite: HF's trainer numbers the ``##`` characters in hash-map order and
        breaks ties between equally frequent merges by those numbers, so two
        runs on the same text can give slightly different vocabularies. Save
        the result and reuse it.
        """
        if kind not in ("char", "bpe", "wordpiece"):
            raise LmlabError(f"tokenizer kind must be 'char', 'bpe' or 'wordpiece', not {kind!r}")
        if special_tokens is None:
            special_tokens = BERT_SPECIALS if kind == "wordpiece" else (EOS_TOKEN,)
        specials = list(special_tokens)
        if len(set(specials)) != len(specials) or not all(specials):
            raise LmlabError(f"special tokens must be distinct non-empty strings: {specials}")
        if kind == "wordpiece":
            if UNK_TOKEN not in specials:
                raise LmlabError(
                    f"a wordpiece tokenizer needs {UNK_TOKEN} among its special tokens (words "
                    f"it cannot spell become {UNK_TOKEN}), got {specials}"
                )
            # No byte tokens: at least one character and its ## continuation form.
            minimum, parts = len(specials) + 2, "one character in both forms"
        else:
            minimum, parts = NUM_BYTES + len(specials), "256 byte tokens"
        if vocab_size < minimum:
            raise LmlabError(
                f"vocab_size {vocab_size} is too small for a {kind} tokenizer: it needs at "
                f"least {minimum} ({parts} + {len(specials)} special tokens)"
            )
        texts = _require_text(texts)
        if kind == "bpe":
            return cls._train_bpe(texts, vocab_size, specials, min_frequency, show_progress)
        if kind == "wordpiece":
            return cls._train_wordpiece(
                texts, vocab_size, specials, min_frequency, show_progress, lowercase
            )
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

    @classmethod
    def _train_wordpiece(
        cls,
        texts: Iterator[str],
        vocab_size: int,
        specials: list[str],
        min_frequency: int,
        show_progress: bool,
        lowercase: bool,
    ) -> Tokenizer:
        from tokenizers import models, trainers

        tok = _bert_pipeline(models.WordPiece(unk_token=UNK_TOKEN), lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            # HF keeps the whole alphabet, plus a ## form of every character seen
            # inside a word, even past vocab_size; capping the alphabet at half
            # the budget keeps the vocabulary within vocab_size.
            limit_alphabet=(vocab_size - len(specials)) // 2,
            continuing_subword_prefix=CONTINUING_PREFIX,
            show_progress=show_progress,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        _add_bert_post_processor(tok)
        return cls(tok, "wordpiece")

    @classmethod
    def from_words(cls, words: Iterable[str]) -> Tokenizer:
        """A word-level tokenizer over ``words`` (e.g. the words of a word-vector file).

        Ids: ``[PAD]`` = 0, ``[UNK]`` = 1, then the words in the order given
        (duplicates and the two special tokens skipped). Text is NFC-normalized
        and lowercased, then split by :data:`WORD_PATTERN` (words, single CJK
        characters, single punctuation marks; whitespace dropped), exactly as
        :func:`lmlab.models.embeddings.tokenize_words` splits it; a word not in
        the list becomes ``[UNK]``. Lossy: ``decode`` joins words with spaces.
        Its kind is ``"word"``.
        """
        from tokenizers import Regex, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        vocab = {PAD_TOKEN: 0, UNK_TOKEN: 1}
        for word in words:
            if not isinstance(word, str) or not word or any(c.isspace() for c in word):
                raise LmlabError(f"a word-level vocabulary entry must be a word without "
                                 f"whitespace, got {word!r}")
            vocab.setdefault(word, len(vocab))
        tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
        # invert=True: the pattern matches the pieces to keep; the rest (whitespace) is removed.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), "removed", invert=True)
        tok.add_special_tokens([PAD_TOKEN, UNK_TOKEN])
        return cls(tok, "word")

    # ------------------------------------------------------------------ files
    @classmethod
    def from_file(cls, path: str | Path, *, eos_token: str | None = None) -> Tokenizer:
        """Load a tokenizer from a file or a directory.

        Accepts a tokenizer.json; a ``*.tiktoken`` rank file (see
        :meth:`from_tiktoken`, with its defaults); BERT's ``vocab.txt`` (any
        ``*.txt``, see :meth:`from_vocab_txt`; casing is read from a
        tokenizer_config.json beside it, else lowercase); or a directory
        holding tokenizer.json, else GPT-2's vocab.json + merges.txt, else
        BERT's vocab.txt.
        """
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if path.is_dir():
            vocab, merges = path / VOCAB_NAME, path / MERGES_NAME
            if not (path / FILE_NAME).exists():
                if vocab.exists() and merges.exists():
                    return cls.from_vocab_merges(vocab, merges, eos_token=eos_token)
                if (path / VOCAB_TXT_NAME).exists():
                    return cls._from_bert_vocab(path / VOCAB_TXT_NAME, eos_token)
            path = path / FILE_NAME
        elif path.suffix == ".tiktoken":
            return cls.from_tiktoken(path, eos_token=eos_token)
        elif path.suffix == ".txt":
            return cls._from_bert_vocab(path, eos_token)
        text = _read_text(path)
        spec = _parse_json(text, path)
        if not isinstance(spec, dict) or "model" not in spec:
            raise LmlabError(f"{path}: not a tokenizer file (no 'model' entry)")
        try:
            backend = HFTokenizer.from_str(text)
        except Exception as exc:  # the Rust side raises a bare Exception
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LmlabError(f"{path}: not a valid tokenizer file ({msg})") from None
        return cls(backend, _infer_kind(spec), path=path, json_text=text, eos_token=eos_token)

    @classmethod
    def from_vocab_merges(
        cls, vocab_path: str | Path, merges_path: str | Path, *, eos_token: str | None = None
    ) -> Tokenizer:
        """Load GPT-2-format byte-level BPE: ``vocab.json`` (token -> id) + ``merges.txt``.

        Encodes exactly as GPT-2 (its regex, ByteLevel decoder) except that no
        prefix space is added, as everywhere in lmlab. ``<|endoftext|>`` is made
        a special token if the vocabulary has it. ``path`` is the vocab.json;
        :attr:`sha256` hashes the HF serialisation of the built tokenizer.
        """
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        vocab = _parse_json(_read_text(vocab_path), vocab_path)
        if not isinstance(vocab, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in vocab.items()
        ):
            raise LmlabError(f"{vocab_path}: not a vocab.json (expected an object of token: id)")
        if len(set(vocab.values())) != len(vocab):
            raise LmlabError(f"{vocab_path}: vocab.json gives two tokens the same id")
        merges: list[tuple[str, str]] = []
        for lineno, line in enumerate(_read_text(merges_path).splitlines(), 1):
            if not line.strip() or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise LmlabError(
                    f"{merges_path}:{lineno}: a merge must be two tokens separated by a "
                    f"space, got {line!r}"
                )
            merges.append((parts[0], parts[1]))
        specials = [EOS_TOKEN] if EOS_TOKEN in vocab else []
        return cls(
            _byte_level_bpe(vocab, merges, specials, GPT2_PATTERN, vocab_path),
            "bpe",
            path=vocab_path,
            eos_token=eos_token,
        )

    @classmethod
    def from_tiktoken(
        cls,
        path: str | Path,
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        *,
        eos_token: str | None = None,
    ) -> Tokenizer:
        """Load a tiktoken rank file (lines of ``base64(token bytes) rank``) as byte-level BPE.

        Token ids are the ranks. The merges are recovered from the ranks, so
        encoding matches tiktoken's. ``special_tokens`` maps each special token
        to its id; by default ``<|endoftext|>`` gets the id after the last rank
        (50256 for GPT-2). ``pattern`` is the pre-tokenization regex (GPT-2's
        by default; a tiktoken file does not store it). ``path`` is the rank
        file; :attr:`sha256` hashes the HF serialisation of the built tokenizer.
        """
        path = Path(path)
        ranks = _read_tiktoken(path)
        if special_tokens is None:
            special_tokens = {EOS_TOKEN: len(ranks)}
        clash = [t for t, i in special_tokens.items() if i < len(ranks)]
        if clash:
            raise LmlabError(
                f"{path}: special tokens {clash} need ids of at least {len(ranks)} "
                "(the ids below are the file's ranks)"
            )
        if len(set(special_tokens.values())) != len(special_tokens):
            raise LmlabError(f"{path}: two special tokens share an id: {special_tokens}")
        byte_char = _bytes_to_unicode()
        vocab = {"".join(byte_char[b] for b in tok): r for tok, r in ranks.items()}
        merges = [
            ("".join(byte_char[b] for b in left), "".join(byte_char[b] for b in right))
            for left, right in _merges_from_ranks(ranks, path)
        ]
        vocab.update(special_tokens)
        backend = _byte_level_bpe(vocab, merges, list(special_tokens), pattern, path)
        return cls(backend, "bpe", path=path, eos_token=eos_token)

    @classmethod
    def from_vocab_txt(
        cls,
        path: str | Path,
        lowercase: bool = True,
        *,
        strip_accents: bool | None = None,
        eos_token: str | None = None,
    ) -> Tokenizer:
        """Load BERT's ``vocab.txt`` (one token per line; the line number, from 0, is the id).

        Builds the same pipeline as a trained ``wordpiece`` tokenizer (and as
        BERT's tokenizer.json): BertNormalizer, BertPreTokenizer, WordPiece with
        ``[UNK]`` and ``##``. Those of ``[PAD] [UNK] [CLS] [SEP] [MASK]`` that the
        vocabulary holds become special tokens. ``lowercase`` is transformers'
        ``do_lower_case`` (True for "uncased" checkpoints); ``strip_accents``
        None means "as lowercase", as in BERT. ``path`` is the vocab.txt;
        :attr:`sha256` hashes the HF serialisation of the built tokenizer.
        """
        from tokenizers import models

        path = Path(path)
        lines = _read_text(path).split("\n")
        if lines[-1] == "":
            lines.pop()  # the newline that ends the last line
        vocab: dict[str, int] = {}
        for i, token in enumerate(lines):
            # An empty token or a repeated one would leave an id with no token
            # (or two), and ids must stay the line numbers the checkpoint uses.
            if not token:
                raise LmlabError(f"{path}:{i + 1}: empty line in vocab.txt (one token per line)")
            if token in vocab:
                raise LmlabError(
                    f"{path}:{i + 1}: token {token!r} appears twice (first on line "
                    f"{vocab[token] + 1})"
                )
            vocab[token] = i
        if UNK_TOKEN not in vocab:
            raise LmlabError(
                f"{path}: not a tokenizer: read as a BERT vocab.txt (one token per line) it "
                f"has no {UNK_TOKEN} token; give a tokenizer.json (`lmlab tokenizer train`) or "
                "a BERT vocab.txt")
        model = models.WordPiece(
            vocab=vocab,
            unk_token=UNK_TOKEN,
            continuing_subword_prefix=CONTINUING_PREFIX,
            max_input_chars_per_word=100,  # BERT's: a longer word is [UNK]
        )
        tok = _bert_pipeline(model, lowercase, strip_accents)
        tok.add_special_tokens([t for t in BERT_SPECIALS if t in vocab])
        _add_bert_post_processor(tok)
        return cls(tok, "wordpiece", path=path, eos_token=eos_token)

    @classmethod
    def _from_bert_vocab(cls, path: Path, eos_token: str | None) -> Tokenizer:
        """:meth:`from_vocab_txt` with the casing that transformers' tokenizer_config.json
        beside it gives (``do_lower_case``, ``strip_accents``); lowercase if none."""
        lowercase, strip_accents = True, None
        config_path = path.parent / TOKENIZER_CONFIG_NAME
        if config_path.is_file():
            config = _parse_json(_read_text(config_path), config_path)
            if isinstance(config, dict):
                lowercase = bool(config.get("do_lower_case", True))
                if isinstance(config.get("strip_accents"), bool):
                    strip_accents = config["strip_accents"]
        return cls.from_vocab_txt(path, lowercase, strip_accents=strip_accents, eos_token=eos_token)

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

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a text a model reads from its start: a prompt, a document
        scored alone. As :meth:`encode`, after the model's start token if it has one."""
        return self.start_ids + self.encode(text)

    @property
    def start_ids(self) -> list[int]:
        """``[bos_id]`` for a model whose inputs start with it (Gemma), else ``[]``."""
        return [self.bos_id] if self.bos_id is not None else []

    @cached_property
    def bos_id(self) -> int | None:
        """Id of the token the model's inputs start with, if it was named at construction."""
        return self._tok.token_to_id(self._bos_token) if self._bos_token else None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel on all cores by the Rust side.

        Every caller that encodes a data set comes through here, so the share of
        ``[UNK]`` tokens is counted here too: past 5% a warning is printed, once
        (see :func:`warn_unknown`).
        """
        # The "fast" variant skips computing character offsets, which we never use.
        encs = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        ids = [e.ids for e in encs]
        warn_unknown(self, texts, ids)
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of one text and, for each, its ``(start, end)`` span in ``text``.

        Spans index Python characters of the original ``text`` (not bytes, not
        the lowercased text), so ``text[start:end]`` is what a token stands for,
        e.g. the answer span of extractive QA. Starts and ends never decrease.
        A wordpiece span excludes the ``##`` and surrounding spaces; a
        byte-level BPE token like "Ġworld" includes its leading space. A token
        holding only some of a character's UTF-8 bytes (byte-level BPE, byte
        fallback) spans that whole character, which its neighbours share.
        """
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_words(self, words: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of ``words`` joined by single spaces, and each token's word index.

        For token classification: label a word on its first token. A token
        belongs to the first word its span overlaps; a token of the joining
        space alone (char and some BPE tokenizers) belongs to the word before
        it, so each word's first token overlaps the word. Raises LmlabError if
        a word gets no token of its own (an empty word, a word of characters
        that WordPiece drops, or one merged into the previous word's token).
        """
        starts: list[int] = []
        ends: list[int] = []
        pos = 0
        for i, word in enumerate(words):
            if not word:
                raise LmlabError(f"word {i} is empty: every word needs at least one token")
            starts.append(pos)
            ends.append(pos + len(word))
            pos += len(word) + 1
        ids, offsets = self.encode_with_offsets(" ".join(words))
        word_ids: list[int] = []
        counts = [0] * len(starts)
        for start, end in offsets:
            w = bisect.bisect_right(ends, start)  # the first word ending after the token starts
            if w < len(starts) and starts[w] < end:
                counts[w] += 1
            else:
                w = max(w - 1, 0)  # overlaps no word: the joining space
            word_ids.append(w)
        for i, n in enumerate(counts):
            if n == 0:
                raise LmlabError(f"word {i} ({words[i]!r}) produces no tokens of its own")
        return ids, word_ids

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

    @property
    def eos_token(self) -> str | None:
        """The end token's text (e.g. <|im_end|>), or None without one."""
        return self.id_to_token(self.eos_id) if self.eos_id is not None else None

    @cached_property
    def eos_id(self) -> int | None:
        """Id of the model's end token: the one named at construction (if in the
        vocabulary), else ``<|endoftext|>``, else ``[SEP]`` (BERT's document
        separator), else the first special token, else None.

        Token shards put it between documents; for WordPiece that is ``[SEP]``,
        not the first special token ``[PAD]``.
        """
        for token in (self._eos_token, EOS_TOKEN, SEP_TOKEN):
            found = self._tok.token_to_id(token) if token else None
            if found is not None:
                return found
        return self._tok.token_to_id(self.special_tokens[0]) if self.special_tokens else None

    # BERT's named special tokens: None where the vocabulary lacks them.
    pad_id = _token_id_property(PAD_TOKEN)
    unk_id = _token_id_property(UNK_TOKEN)
    cls_id = _token_id_property(CLS_TOKEN)
    sep_id = _token_id_property(SEP_TOKEN)
    mask_id = _token_id_property(MASK_TOKEN)

    def word_start_mask(self) -> np.ndarray:
        """Bool array of shape (vocab_size,): True where a token begins a new word.

        For whole-word masking in masked-LM pretraining: a word is a start
        token plus the non-start tokens after it; the first token of a text
        starts a word whatever its entry (bpe and char mark a word's first
        token by the space before it). Special tokens always start a word.
        By kind:

        * wordpiece: every token but the ``##`` continuations (exact).
        * bpe: a token continues the word unless it begins with a space or
          other non-letter, non-digit character ("Ġworld", ".", "Ċ"); one that
          begins inside a character's UTF-8 bytes continues it.
        * char: a letter or digit continues the word; any other character
          (space, punctuation) starts one.

        For bpe and char this approximates words as a space or punctuation
        followed by a run of letters and digits: "dog.The" is "dog" + ".The",
        and a run of CJK characters is one word. A byte token that cannot show
        its character (byte fallback, a partial character) counts as a letter.
        """
        import numpy as np

        if self.kind == "wordpiece":
            prefix = self._tok.model.continuing_subword_prefix

            def continues(token: str) -> bool:
                return token.startswith(prefix)
        elif self.kind == "bpe":
            byte_of = {c: b for b, c in enumerate(_bytes_to_unicode())}

            def continues(token: str) -> bool:
                try:
                    data = bytes(byte_of[c] for c in token)
                except KeyError:  # an added token that is not made of byte symbols
                    data = token.encode("utf-8")
                return _continues_word(data)
        elif self.kind == "char":
            byte_tokens = {_byte_token(b): bytes([b]) for b in range(NUM_BYTES)}

            def continues(token: str) -> bool:
                return _continues_word(byte_tokens.get(token) or token.encode("utf-8"))
        else:
            raise LmlabError(
                f"word_start_mask needs a wordpiece, bpe or char tokenizer, not {self.kind!r}"
            )
        mask = np.ones(self.vocab_size, dtype=bool)
        specials = set(self.special_tokens)
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            if i < len(mask) and token not in specials and continues(token):
                mask[i] = False
        return mask

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (as stored in the vocabulary), or None."""
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """Token string of an id (byte-level BPE shows bytes as symbols like 'Ġ'), or None."""
        return self._tok.id_to_token(int(i))

    @cached_property
    def sha256(self) -> str:
        """Hash of the tokenizer's canonical JSON (sorted keys, no whitespace).

        For a tokenizer.json that is the file's JSON; for one built from
        vocab.json + merges.txt, a .tiktoken file or training, it is HF's
        serialisation of the built tokenizer (equal to the hash of the
        tokenizer.json that :meth:`save` writes). Canonicalising the file's own
        JSON, rather than hashing HF's re-serialisation, keeps the hash stable
        across `tokenizers` versions (which add fields) and across pretty-printing.
        """
        text = self._json_text if self._json_text is not None else self._tok.to_str()
        canonical = json.dumps(
            json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}{where})"


# --------------------------------------------------------------------------- [UNK]

# A vocabulary that misses the text's script turns much of it into [UNK] (the
# English WordPiece of all-MiniLM-L6-v2 maps 28% of Chinese review tokens to it),
# and a model then reads noise. Past this share lmlab warns.
UNK_WARN_SHARE = 0.05
# Below this many tokens the share says little (one unknown emoji in a query).
UNK_MIN_TOKENS = 20
# Past this many tokens the share is known well enough: counting stops.
UNK_COUNT_TOKENS = 1_000_000


@dataclass
class UnknownCount:
    """[UNK] tokens among all tokens encoded so far, and whether the warning was given."""

    unknown: int = 0
    tokens: int = 0
    warned: bool = False

    @property
    def share(self) -> float:
        return self.unknown / self.tokens if self.tokens else 0.0


def unk_rate(tok: Tokenizer, texts: Sequence[str]) -> float:
    """The share of the tokens of ``texts`` that are ``[UNK]`` (0.0 without an [UNK] token)."""
    if tok.unk_id is None:
        return 0.0
    encs = tok._tok.encode_batch_fast(list(texts), add_special_tokens=False)
    total = sum(len(e.ids) for e in encs)
    return sum(e.ids.count(tok.unk_id) for e in encs) / total if total else 0.0


def unknown_warning(tok: Tokenizer, share: float, texts: Sequence[str]) -> str:
    """The one-line warning for ``share`` of [UNK] tokens, with the fix."""
    from lmlab.data.chinese import is_chinese

    name = tok.path or "the tokenizer"
    script = " (the text is Chinese)" if is_chinese(texts) else ""
    return (f"warning: {share:.0%} of the tokens are [UNK]: {name} has no entry for much of "
            f"this text{script}; use a model whose vocabulary covers it, or train a tokenizer "
            "on it (`lmlab tokenizer train DATA --kind wordpiece`) and a model with it")


def warn_unknown(tok: Tokenizer, texts: Sequence[str], ids: Sequence[Sequence[int]] | None = None,
                 *, warn: Callable[[str], None] | None = None) -> float:
    """Count the [UNK]s of ``texts`` (or of their token ``ids``, already encoded) into the
    tokenizer's running total, and warn once when that total's share passes 5%.

    Called by :meth:`Tokenizer.encode_batch`, so fine-tuning, prediction,
    ``neighbors`` and ``prepare`` all warn without doing anything. The share is
    over every token encoded so far (counting stops after a million), so a
    data set encoded in batches gets one warning, not one per batch. Returns
    the running share; 0.0 for a tokenizer without [UNK] (byte-level BPE, char).
    """
    count: UnknownCount = tok._unk_count
    unk = tok.unk_id
    if unk is None or count.warned or count.tokens >= UNK_COUNT_TOKENS:
        return count.share
    if ids is None:
        ids = [e.ids for e in tok._tok.encode_batch_fast(list(texts), add_special_tokens=False)]
    count.tokens += sum(len(x) for x in ids)
    count.unknown += sum(x.count(unk) for x in ids)
    if count.tokens >= UNK_MIN_TOKENS and count.share > UNK_WARN_SHARE:
        count.warned = True
        msg = unknown_warning(tok, count.share, texts)
        if warn is not None:
            warn(msg)
        else:
            print(msg, file=sys.stderr, flush=True)
    return count.share


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmlabError(f"{path}: tokenizer file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LmlabError(f"{path}: cannot read tokenizer file: {exc}") from None


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LmlabError(f"{path}: not valid JSON ({exc})") from None


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (the ByteLevel alphabet).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls,
    space, soft hyphen, ...) are shifted to U+0100 and up, in byte order, so
    that space becomes 'Ġ' (U+0120).
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * NUM_BYTES
    shifted = 0
    for b in range(NUM_BYTES):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(NUM_BYTES + shifted)
            shifted += 1
    return table


def _read_tiktoken(path: Path) -> dict[bytes, int]:
    """Parse a .tiktoken file into token bytes -> rank; ranks must be exactly 0..n-1."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error):
            raise LmlabError(
                f"{path}:{lineno}: expected 'base64 rank', got {line[:80]!r}"
            ) from None
        if token in ranks:
            raise LmlabError(f"{path}:{lineno}: token {token!r} appears twice")
        ranks[token] = rank
    if not ranks:
        raise LmlabError(f"{path}: no ranks in tiktoken file")
    if sorted(ranks.values()) != list(range(len(ranks))):
        dups = [r for r, n in Counter(ranks.values()).items() if n > 1]
        problem = f"rank {min(dups)} is used twice" if dups else "some ranks are missing"
        raise LmlabError(f"{path}: ranks must be 0..{len(ranks) - 1} once each, but {problem}")
    return ranks


def _merges_from_ranks(ranks: dict[bytes, int], path: Path) -> list[tuple[bytes, bytes]]:
    """Recover BPE merges from tiktoken ranks, in rank order.

    tiktoken merges, at each step, the adjacent pair whose concatenation has
    the lowest rank. So the merge that created a token of rank r is the last
    step of that same procedure run on the token's bytes with only ranks below
    r allowed: it ends with exactly two parts. Ordering the merges by the rank
    of their result gives HF BPE the same priorities.
    """
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2 or any(ranks.get(p, rank) >= rank for p in parts):
            raise LmlabError(
                f"{path}: token {token!r} (rank {rank}) cannot be built by merging two "
                "tokens of lower rank"
            )
        merges.append((rank, parts[0], parts[1]))
    merges.sort()
    return [(a, b) for _, a, b in merges]


def _byte_level_bpe(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    specials: list[str],
    pattern: str,
    path: Path,
) -> tokenizers.Tokenizer:
    """An HF byte-level BPE tokenizer, split like GPT-2 (or by ``pattern``), no prefix space."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    try:
        model = models.BPE(vocab=vocab, merges=merges)
    except Exception as exc:  # the Rust side raises a bare Exception
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LmlabError(f"{path}: not a valid BPE vocabulary ({msg})") from None
    tok = HFTokenizer(model)
    if pattern == GPT2_PATTERN:
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        pre = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok


def _bert_pipeline(
    model: tokenizers.models.Model, lowercase: bool, strip_accents: bool | None = None
) -> tokenizers.Tokenizer:
    """An HF tokenizer around a WordPiece ``model`` that splits text as BERT does."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, normalizers, pre_tokenizers

    tok = HFTokenizer(model)
    # clean_text drops control characters and maps other whitespace to spaces;
    # handle_chinese_chars puts spaces around each CJK character so that each is
    # a word (BERT's vocabularies hold them one by one); strip_accents=None
    # follows lowercase, as in BERT.
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # whitespace and punctuation
    tok.decoder = decoders.WordPiece(prefix=CONTINUING_PREFIX, cleanup=True)
    return tok


def _add_bert_post_processor(tok: tokenizers.Tokenizer) -> None:
    """Add BERT's ``[CLS] A [SEP] (B [SEP])`` template, if the vocabulary has both tokens.

    lmlab's encode never applies it (model code adds [CLS]/[SEP]); it is there
    so that a saved tokenizer.json behaves as BERT's in transformers.
    """
    from tokenizers import processors

    cls_id, sep_id = tok.token_to_id(CLS_TOKEN), tok.token_to_id(SEP_TOKEN)
    if cls_id is None or sep_id is None:
        return
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN} $A {SEP_TOKEN}",
        pair=f"{CLS_TOKEN} $A {SEP_TOKEN} $B:1 {SEP_TOKEN}:1",
        special_tokens=[(CLS_TOKEN, cls_id), (SEP_TOKEN, sep_id)],
    )


def _continues_word(data: bytes) -> bool:
    """Whether a token with these UTF-8 bytes continues the word before it.

    It does if it starts inside a character (a UTF-8 continuation byte) or with
    a letter or digit; a token that ends before its first character is
    complete cannot show it, and counts as a letter.
    """
    if not data:
        return False
    first = data[0]
    if first < 0x80:
        return chr(first).isalnum()
    if first < 0xC0:
        return True  # 10xxxxxx: the middle of a character
    length = 2 if first < 0xE0 else 3 if first < 0xF0 else 4
    try:
        return data[:length].decode("utf-8").isalnum()
    except UnicodeDecodeError:
        return True


def _require_text(texts: Iterable[str]) -> Iterator[str]:
    """Return an iterator over `texts`, or raise if it holds no non-empty text."""
    it = iter(texts)
    for first in it:
        if first:
            return itertools.chain([first], it)
    raise LmlabError("cannot train a tokenizer on no text: the training texts are empty")


def _infer_kind(spec: dict[str, Any]) -> str:
    """Recognise our own designs from a tokenizer.json's structure.

    HF rejects unknown fields in tokenizer.json, so the kind cannot be stored
    as a side field; the structure identifies it unambiguously instead. Any
    WordPiece model is "wordpiece" (BERT's and its descendants' tokenizer.json).
    """
    model = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    pre = spec.get("pre_tokenizer") or {}
    if model.get("type") == "WordPiece":
        return "wordpiece"
    if (model.get("type") == "WordLevel" and pre.get("type") == "Split"
            and (pre.get("pattern") or {}).get("Regex") == WORD_PATTERN):
        return "word"  # from_words (a foreign WordLevel tokenizer is "json")
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
