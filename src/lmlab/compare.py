"""`lmlab compare`: every family of language model on one corpus and one tokenizer.

The theory runs n-gram -> feed-forward -> RNN -> Transformer; this module trains
each on the same shards and scores each on the same validation tokens, so the
difference is a number rather than a claim:

- n-gram models (interpolated modified Kneser-Ney) of orders 2 to 5 count the
  whole training split once;
- the neural models (Bengio's feed-forward LM, LSTM, GRU, GPT) are trained by
  the one training loop for the same number of steps, batch and block size:
  the same token budget;
- every model is scored on the whole validation split, document by document
  (each document's tokens and its end-of-text token), and the table reports
  perplexity and bits per byte.

Perplexity is per token, so it only compares models that share a tokenizer.
Bits per byte divides the total loss by the UTF-8 bytes of the validation text,
which any tokenization of that text has in common: it is the column to read
across tokenizers (the optional word-level n-gram row shows one).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.atomic import write_text
from lmlab.errors import LmlabError
from lmlab.options import refuse_foreign
from lmlab.runs import markdown_table

# Names a user can pass to --models; "ngram-N" takes any order N >= 1.
NEURAL = {"ffnn": "ffnn-small", "rnn": "rnn-small", "lstm": "lstm-small",
          "gru": "gru-small", "gpt": "gpt-mini"}
DEFAULT_MODELS = ["ngram-2", "ngram-3", "ngram-4", "ngram-5", "ffnn", "lstm", "gru", "gpt"]
# Peak learning rates (AdamW, warm-up + cosine): a fair race runs each family at its
# own pace. Probed on the built-in corpus at 600 steps of 16 x 128 tokens, validation
# perplexity at 3e-3 / 1e-2: FFNN 219 / 154, LSTM 334 / 256, GRU 233 / 155, GPT 220 / 408.
LEARNING_RATES = {"ffnn": 1e-2, "rnn": 1e-3, "lstm": 1e-2, "gru": 1e-2, "gpt": 3e-3}
BPB_NOTE = ("bits/byte = total loss in bits / UTF-8 bytes of the validation text; "
            "it does not depend on the tokenizer, so word-level and subword models "
            "compare on it (perplexity is per token and does not)")


@dataclass
class CompareConfig:
    """One comparison run (saved as compare_config.json)."""

    out: str
    data: str | None = None  # a folder made by `lmlab prepare`; None: the built-in corpus
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    steps: int = 600  # training steps of every neural model
    batch_size: int = 16
    block_size: int = 128  # tokens per row (the BPTT length of the recurrent models)
    word_ngram: int = 0  # also a word-level n-gram of this order (0: none)
    vocab_size: int = 4096  # BPE size when the built-in corpus is prepared here
    dtype: str = "float32"
    seed: int = 1337

    def __post_init__(self) -> None:
        if not self.models:
            raise LmlabError("--models: give at least one model")
        for name in self.models:
            _parse_model(name)
        if self.steps < 1 or self.batch_size < 1 or self.block_size < 2:
            raise LmlabError("--steps and --batch-size must be >= 1, --block-size >= 2")

    @property
    def tokens_per_model(self) -> int:
        return self.steps * self.batch_size * self.block_size


@dataclass
class Row:
    """One model's line in the table."""

    name: str
    family: str
    level: str  # "subword" or "word"
    params: int  # weights, or stored n-gram entries (probabilities + backoffs)
    train_tokens: int
    train_seconds: float
    nll: float  # nats, summed over the validation split
    tokens: int  # predicted validation tokens
    n_bytes: int
    oov: int = 0  # validation tokens the model could only predict as <unk> (n-grams)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / max(self.tokens, 1))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(self.n_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte}


def _parse_model(name: str) -> tuple[str, int | str]:
    """'ngram-3' -> ('ngram', 3); 'lstm' -> ('lstm', 'lstm-small'); a preset name ->
    (its family, the preset)."""
    from lmlab.config import PRESETS, RNN_PRESETS

    if name.startswith("ngram-"):
        order = name.removeprefix("ngram-")
        if not order.isdigit() or int(order) < 1:
            raise LmlabError(f"--models: {name!r}: an n-gram is ngram-N with an order N >= 1")
        return "ngram", int(order)
    if name in NEURAL:
        return name, NEURAL[name]
    if name in RNN_PRESETS:
        return RNN_PRESETS[name]["model_type"], name
    if name in PRESETS:
        return "gpt", name
    raise LmlabError(f"--models: unknown model {name!r}; choose ngram-N, a family "
                     f"({', '.join(NEURAL)}) or a preset ({', '.join([*RNN_PRESETS, *PRESETS])})")


def split_documents(stream: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """A shard stream ``doc eos doc eos ...`` -> the documents, end-of-text tokens removed."""
    stream = np.asarray(stream, dtype=np.int64)
    ends = np.flatnonzero(stream == eos_id)
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [len(stream)]])
    return [stream[a:b] for a, b in zip(starts, stops, strict=True) if b > a or b < len(stream)]


def format_table(rows: Sequence[Row]) -> str:
    headers = ["model", "level", "parameters", "train tokens", "train time",
               "val perplexity", "val <unk>", "bits/byte"]
    body = [[r.name, r.level, f"{r.params:,}", f"{r.train_tokens:,}",
             f"{r.train_seconds:.1f} s", f"{r.perplexity:,.1f}",
             f"{100 * r.oov / max(r.tokens, 1):.1f} %", f"{r.bits_per_byte:.3f}"]
            for r in rows]
    return markdown_table(headers, body)


def notes(rows: Sequence[Row]) -> list[str]:
    """What a reader must know to read the table honestly."""
    out = [BPB_NOTE]
    words = [r for r in rows if r.level == "word"]
    if words:
        share = 100 * words[0].oov / max(words[0].tokens, 1)
        out.append(f"word-level rows flatter themselves on bits/byte: they do not model the "
                   f"spaces and line breaks between words, and they predict an unseen word "
                   f"({share:.1f} % of validation words) as <unk> without spelling it out; a "
                   f"subword model pays for every byte")
    out.append("n-grams count the whole training split once; the neural models train for "
               "the same number of tokens each (steps x batch x block)")
    return out


# What `lmlab compare` makes in its folder, and so may replace when run again there.
COMPARE_NAMES = {"data", "runs", "compare_config.json", "compare.md", "compare.json",
                 "compare.png"}


class Comparison:
    """Trains and scores each model of a :class:`CompareConfig`; ``run`` does it all."""

    def __init__(self, cfg: CompareConfig, say: Callable[[str], None] = print) -> None:
        from lmlab.data.shards import TokenShards
        from lmlab.tokenizer import Tokenizer

        self.cfg = cfg
        self.say = say
        self.out = Path(cfg.out)
        refuse_foreign(self.out, COMPARE_NAMES, "compare")
        if cfg.data is None:
            data = self.out / "data" / "shards"
            if not (data / "manifest.json").is_file():
                from lmlab.demo import builtin_data

                say(f"preparing the built-in corpus in {self.out / 'data'}")
                builtin_data(self.out / "data", cfg.vocab_size)
            cfg.data = str(data)
        self.data = Path(cfg.data)
        self.train = TokenShards(self.data, "train")
        self.val = TokenShards(self.data, "val")
        self.tokenizer = Tokenizer.from_file(self.data / "tokenizer.json")
        eos = self.tokenizer.eos_id
        if eos is None:  # prepare refuses such tokenizers; a hand-made folder might not
            raise LmlabError(f"{self.data}: the tokenizer has no end-of-text token")
        self.eos = eos
        if self.val.num_tokens < 2:
            raise LmlabError(f"{self.data}: the validation split is empty; prepare a corpus "
                             "with a validation split")
        self.val_docs = split_documents(self.val.tokens(), eos)
        self.rows: list[Row] = []

    @functools.cached_property
    def train_docs(self) -> list[np.ndarray]:
        """The training split as documents, split once for every n-gram row."""
        return split_documents(self.train.tokens(), self.eos)

    # -- the families --------------------------------------------------------------
    def ngram(self, order: int) -> Row:
        from lmlab.models.ngram import NgramLM

        t0 = time.perf_counter()
        lm = NgramLM.fit(self.train_docs, order=order, vocab_size=self.tokenizer.vocab_size,
                         smoothing="kn")
        seconds = time.perf_counter() - t0
        score = lm.score(self.val_docs)
        return Row(f"{order}-gram KN", "n-gram", "subword", lm.num_params,
                   self.train.num_tokens, seconds, score.nll, score.tokens, self.val.num_bytes,
                   score.oov)

    def word_ngram(self, order: int) -> Row:
        """A word-level n-gram on the same text, decoded from the shards (lossless BPE)."""
        from lmlab.models.ngram import NgramLM, WordVocab

        def words(docs: list[np.ndarray]) -> list[list[str]]:
            return [self.tokenizer.decode(d.tolist()).split() for d in docs]

        train_words = words(self.train_docs)
        t0 = time.perf_counter()
        vocab = WordVocab.build(train_words)
        lm = NgramLM.fit([vocab.encode(w) for w in train_words], order=order,
                         vocab_size=len(vocab), smoothing="kn")
        seconds = time.perf_counter() - t0
        score = lm.score([vocab.encode(w) for w in words(self.val_docs)])
        return Row(f"{order}-gram KN (words)", "n-gram", "word", lm.num_params,
                   sum(len(w) for w in train_words), seconds, score.nll, score.tokens,
                   self.val.num_bytes, score.oov)

    def neural(self, kind: str, preset: str) -> Row:
        from lmlab.evaluate import score_tokens
        from lmlab.train.loop import TrainConfig, Trainer

        cfg = self.cfg
        tc = TrainConfig(data=str(self.data), out=str(self.out / "runs" / preset), preset=preset,
                         max_steps=cfg.steps, batch_size=cfg.batch_size,
                         block_size=cfg.block_size, lr=LEARNING_RATES[kind],
                         warmup_steps=min(50, max(cfg.steps // 10, 1)),
                         eval_interval=max(cfg.steps // 4, 1), dtype=cfg.dtype, seed=cfg.seed)
        trainer = Trainer(tc, overwrite=True)
        result = trainer.fit()
        model = trainer.model.eval()
        # A leading end-of-text token: the first document's first token is scored too,
        # so the neural models predict exactly the tokens the n-grams predict.
        stream = np.concatenate([[self.eos], self.val.tokens()]).astype(np.int64)
        # Recurrent and feed-forward models read the split as one stream, carrying their
        # state (batch 1 is exact: parallel streams would start cold); the GPT reads
        # windows of its context, as it was trained.
        batch = cfg.batch_size if kind == "gpt" else 1
        nll, count = score_tokens(model, stream, batch_size=batch)
        return Row(preset, kind if kind != "gpt" else "transformer", "subword",
                   model.num_params(), cfg.tokens_per_model, result["train_seconds"], nll,
                   count, self.val.num_bytes)

    # -- the run -------------------------------------------------------------------
    def run(self) -> list[Row]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "compare_config.json",
                   json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        jobs: list[tuple[str, Callable[[], Row]]] = []
        for name in cfg.models:
            kind, arg = _parse_model(name)
            if kind == "ngram":
                jobs.append((name, lambda order=arg: self.ngram(int(order))))
            else:
                jobs.append((name, lambda kind=kind, preset=arg: self.neural(kind, str(preset))))
        if cfg.word_ngram:
            jobs.append((f"word {cfg.word_ngram}-gram",
                         lambda: self.word_ngram(cfg.word_ngram)))
        self.say(f"{len(jobs)} models on {self.data}: {self.train.num_tokens:,} train tokens, "
                 f"{self.val.num_tokens:,} validation tokens ({self.val.num_bytes:,} bytes); "
                 f"each neural model sees {cfg.tokens_per_model:,} tokens")
        for i, (name, job) in enumerate(jobs, 1):
            self.say(f"[{i}/{len(jobs)}] {name}")
            row = job()
            self.say(f"  {row.params:,} parameters, {row.train_seconds:.1f} s, "
                     f"val perplexity {row.perplexity:,.1f}, {row.bits_per_byte:.3f} bits/byte")
            self.rows.append(row)
        self.save()
        return self.rows

    def save(self) -> None:

        table = format_table(self.rows)
        text = "\n".join(f"- {n}." for n in notes(self.rows))
        write_text(self.out / "compare.md", f"{table}\n\n{text}\n")
        write_text(self.out / "compare.json", json.dumps(
            {"config": dataclasses.asdict(self.cfg), "notes": notes(self.rows),
             "rows": [r.to_dict() for r in self.rows]}, indent=2) + "\n")
        plot_comparison(self.rows, self.out / "compare.png",
                        title=f"{self.train.num_tokens:,} training and {self.val.num_tokens:,} "
                              f"validation tokens; each neural model trained on "
                              f"{self.cfg.tokens_per_model:,} tokens")


FAMILY_COLORS = {"n-gram": "tab:gray", "ffnn": "tab:green", "rnn": "tab:olive",
                 "lstm": "tab:blue", "gru": "tab:purple", "transformer": "tab:red"}


def plot_comparison(rows: Sequence[Row], path: Path, title: str = "") -> Path:
    """Bits per byte (left) and training time (right, log scale), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in rows]
    colors = [FAMILY_COLORS.get(r.family, "tab:cyan") for r in rows]
    y = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.6), dpi=110,
                                   sharey=True)
    bpb = [r.bits_per_byte for r in rows]
    # Word-level bars are hatched: their bits/byte leaves out spaces and unseen words.
    hatches = ["//" if r.level == "word" else "" for r in rows]
    ax1.barh(y, bpb, color=colors, hatch=hatches)
    for yi, v in zip(y, bpb, strict=True):
        ax1.text(v, yi, f" {v:.3f}", va="center", fontsize=8)
    ax1.set_yticks(y, names)
    ax1.invert_yaxis()
    ax1.set_xlabel("validation bits per byte (lower is better; hatched: word level)")
    ax1.set_xlim(0, max(bpb) * 1.18)
    secs = [max(r.train_seconds, 1e-3) for r in rows]
    ax2.barh(y, secs, color=colors)
    for yi, v in zip(y, secs, strict=True):
        ax2.text(v, yi, f" {v:.1f} s", va="center", fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("training time (s, log scale)")
    ax2.set_xlim(min(secs) / 2, max(secs) * 6)
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "lmlab compare", fontsize=10)
    from lmlab.runs import save_figure

    return save_figure(fig, path)
