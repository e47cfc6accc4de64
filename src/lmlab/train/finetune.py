"""Fine-tuning a pretrained backbone for classification, tagging or extractive QA.

Setup, fit, test, in plain code (``Finetuner``): read the splits
(``data/tasks.py``), load a backbone (a BERT encoder, a GPT decoder, or a
recurrent encoder such as the bidirectional GRU of the ``gru-classifier``
preset), put a task head on it (``TaskModel``), train with AdamW and BERT's
linear warm-up and decay, evaluate on the validation split every epoch (and every
``eval_interval`` steps), keep the best checkpoint, stop early when the
validation metric stops improving, then score the best checkpoint on the
test split.

Inputs (BERT / GPT):

    classify  [CLS] text [SEP]                  text tokens
    tag       [CLS] w1 w2 ... [SEP]             w1 w2 ... (words joined by spaces)
    qa        [CLS] question [SEP] context [SEP] question <eos> context
              segment 0 ....... | segment 1

GPT rows are right-padded: causal attention never looks right, so no real
token ever attends to padding, and ``last`` pooling reads the last real token,
the only one that has read the whole text. A recurrent encoder reads the same
inputs as a GPT; its rows are packed, so neither direction reads padding.

Truncation (``max_length`` tokens, special tokens included):

- classify: ``tail`` cuts the end of a long text (keeps its start), ``head``
  cuts its start (keeps its end). Each split's count of cut texts is reported.
- tag: words whose first token falls beyond ``max_length`` get no prediction
  (``None``); evaluation scores them as ``O`` (so their entities count as
  missed) and the count of such words is reported. Nothing is silently dropped.
- qa: the question is kept (cut to half of ``max_length`` if it alone is
  longer) and the context is cut at its end; there is no sliding window.
  Training examples whose answer was cut off are skipped (counted); validation
  and test examples are still scored, from the part of the context that fits.

The best checkpoint is a folder ``OUT/best/`` written atomically:
``model.safetensors`` (backbone + head, keys ``backbone.*`` and ``head.*``),
``config.json`` (the backbone's config), ``task.json`` (task, labels,
pooling, input policy) and ``tokenizer.json``. ``load_task_model`` reads it back.

The splits the run used are written beside it, as ``OUT/splits/train.jsonl``,
``val.jsonl`` and ``test.jsonl`` (one example per line, the default field
names; an empty split is an empty file): the examples as read from
``--validation`` / ``--test``, or as carved from ``--train``. A baseline
scored on them (``lmlab baseline --train OUT``) sees exactly the same split.
OUT, with ``finetune_config.json``, the splits and the metrics, is made only
when the first checkpoint is saved (the splits folder appears whole); a run
that fails or is stopped before then leaves no OUT behind.

Shapes: B batch, T tokens, C width, K labels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from lmlab.atomic import missing_root, write_text
from lmlab.data.tasks import SPLITS_DIR, LabelSet, Task, write_splits
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.models.bert import Pooling
from lmlab.models.registry import context_of, reader_of
from lmlab.tokenizer import Tokenizer
from lmlab.train import distributed
from lmlab.train.loop import StopOnInterrupt, check_range, make_optimizer
from lmlab.train.tasks.checkpoint import FORMAT, load_task_model, pad_id_of, save_task_checkpoint
from lmlab.train.tasks.decoding import (
    decode_outputs,
    format_tag_scores,
    run_model,
    score_predictions,
)
from lmlab.train.tasks.features import (
    DEFAULT_MAX_LENGTH,
    IGNORE,
    TaskEncoder,
    Truncation,
    collate,
    length_bucketed_batches,
    task_loss,
)
from lmlab.train.tasks.model import TaskModel, load_backbone, vector_embeddings


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run (saved as OUT/finetune_config.json)."""

    task: Task
    train: str  # labelled training file (see data/tasks.read_task_file)
    model: str  # HF folder, lmlab checkpoint/run folder, or a preset name (random init)
    out: str  # the run folder
    validation: str | None = None  # default: carved from train
    test: str | None = None  # default: carved from train
    tokenizer: str | None = None  # default: the model's own (required for a preset)
    # Word vectors (word2vec/GloVe file) that initialise a recurrent preset's embeddings;
    # without --tokenizer, a word-level tokenizer over the vectors' words is built.
    vectors: str | None = None
    vectors_max_words: int | None = None  # keep only the first (most frequent) words
    text_field: str = "text"
    label_field: str = "label"
    tokens_field: str = "tokens"
    tags_field: str = "tags"
    context_field: str = "context"
    question_field: str = "question"
    answer_field: str = "answer"
    answer_start_field: str = "answer_start"
    encoding: str = "utf-8"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_length: int | None = None  # default min(backbone context, 256)
    truncation: Truncation = "tail"
    pooling: Pooling | None = None  # classify only; default cls (BERT) / last (GPT)
    max_answer_tokens: int = 30  # qa: longest answer span decoded
    epochs: int = 3
    max_steps: int | None = None  # stop after this many steps (a cap on epochs)
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    head_dropout: float = 0.1
    class_weights: bool | None = None  # default: on for classify, off otherwise
    patience: int | None = None  # evaluations without improvement before stopping
    eval_interval: int | None = None  # also evaluate every this many steps
    freeze_backbone: bool = False
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto: cuda when available, else cpu
    # bfloat16 autocast: matmuls in bf16, weights, optimizer and loss in fp32.
    # On CPUs with AMX it measured 1.6x faster here; on CPUs without, slower.
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        # Checked before any file is read or folder made: a 0 would otherwise surface
        # later as a misleading error (--max-steps 0: "no such fine-tuned checkpoint").
        for name in ("epochs", "max_steps", "batch_size", "max_length", "max_answer_tokens",
                     "patience", "eval_interval", "threads", "vectors_max_words"):
            check_range(name, getattr(self, name), 1)
        check_range("lr", self.lr, 0)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("grad_clip", self.grad_clip, 0, lo_open=True)
        check_range("warmup_ratio", self.warmup_ratio, 0, 1)
        check_range("head_dropout", self.head_dropout, 0, 1, hi_open=True)
        check_range("val_fraction", self.val_fraction, 0, 1, hi_open=True)
        check_range("test_fraction", self.test_fraction, 0, 1, hi_open=True)
        # A split given as a file carves nothing from --train.
        carved = ((0.0 if self.validation else self.val_fraction)
                  + (0.0 if self.test else self.test_fraction))
        if carved >= 1:
            raise LmlabError(f"--val-fraction {self.val_fraction} and --test-fraction "
                             f"{self.test_fraction} leave no training examples; their sum "
                             "must be below 1")

    def field_names(self) -> dict[str, str]:
        """The ``read_task_file`` keyword arguments naming columns, and the encoding."""
        names = ("text_field", "label_field", "tokens_field", "tags_field", "context_field",
                 "question_field", "answer_field", "answer_start_field", "encoding")
        return {n: getattr(self, n) for n in names}


# ---------------------------------------------------------------- the run
def linear_schedule(step: int, total: int, warmup: int, peak: float) -> float:
    """BERT's schedule: linear warm-up to ``peak`` over ``warmup`` steps, then linear
    decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class Finetuner:
    """Holds data, model, optimizer and run folder; ``fit`` trains, ``test`` scores."""

    def __init__(self, cfg: FinetuneConfig, overwrite: bool = False,
                 progress: bool = True, embedding_init: torch.Tensor | None = None) -> None:
        """Check every input and build the model; ``embedding_init`` (vocab_size, dim)
        initialises a recurrent preset's token embeddings (see ``load_backbone``)."""
        from lmlab.data.tasks import compute_class_weights, load_splits

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # Under torchrun: DDP, every process training on its share of each global batch.
        self.world, self.device = distributed.join(cfg.device)
        self.progress = progress and self.world.main
        if cfg.pooling is not None and cfg.task != "classify":
            raise LmlabError(f"--pooling applies to classify, not {cfg.task}")
        if cfg.class_weights and cfg.task == "qa":
            raise LmlabError("--class-weights applies to classify and tag, not qa")
        self.run_dir = Path(cfg.out)
        self._check_run_dir(overwrite)

        # -- data
        self.splits = load_splits(Path(cfg.train), _opt_path(cfg.validation),
                                  _opt_path(cfg.test), cfg.task, seed=cfg.seed,
                                  val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                                  **cfg.field_names())
        if not self.splits["val"]:
            raise LmlabError(f"{cfg.train}: no validation examples (too few examples, or "
                             "--val-fraction 0); give --validation FILE or a --val-fraction > 0")
        self.labels = (LabelSet.from_examples(self.splits["train"]) if cfg.task != "qa"
                       else None)

        # -- model
        torch.manual_seed(cfg.seed)  # the head's initialisation and dropout
        tokenizer: str | Tokenizer | None = cfg.tokenizer
        if cfg.vectors:
            if embedding_init is not None:
                raise LmlabError("give word vectors either as --vectors or as embedding_init")
            tokenizer, embedding_init = vector_embeddings(
                Path(cfg.vectors), cfg.tokenizer, cfg.vectors_max_words, cfg.seed)
        backbone, self.tok, self.source, folder_pooling = load_backbone(
            cfg.model, tokenizer, embedding_init)
        kind = reader_of(backbone)
        if self.tok.vocab_size > backbone.config.vocab_size:
            raise LmlabError(f"{cfg.tokenizer or cfg.model}: the tokenizer has "
                             f"{self.tok.vocab_size:,} tokens but the model only "
                             f"{backbone.config.vocab_size:,}")
        # A recurrent encoder has no context limit (its block_size is a training length).
        context = context_of(backbone)
        self.max_length = cfg.max_length or min(context or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
        if context is not None and self.max_length > context:
            raise LmlabError(f"--max-length {self.max_length} is larger than the backbone's "
                             f"context of {context} tokens")
        # An RNN's mean state over the text is its usual summary; the last state of a
        # bidirectional one has read the text one way only.
        default: Pooling = {"bert": "cls", "gpt": "last", "rnn": "mean"}[kind]
        pooling: Pooling = cfg.pooling or folder_pooling or default
        if kind != "bert" and pooling == "cls":
            raise LmlabError(f"--pooling cls needs a BERT backbone: a {kind.upper()}'s first "
                             "token has seen only itself; use last or mean")
        self.pooling = pooling
        n_labels = len(self.labels) if self.labels else 1
        self.model = TaskModel(backbone, cfg.task, n_labels, pooling, cfg.head_dropout)
        self.model.to(self.device)
        if cfg.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.net: nn.Module = self.model  # what training steps call: DDP's wrapper if any
        if self.world.distributed:
            self.net = distributed.data_parallel(self.model, self.device)
            torch.manual_seed(cfg.seed + self.world.rank)  # its own dropout masks
        self.pad_id = pad_id_of(self.tok, self.model)

        # -- features
        self.encoder = TaskEncoder(self.tok, cfg.task, kind, self.max_length, cfg.truncation,
                                   self.labels)
        self.feats = {name: self.encoder.encode(exs, labelled=True, where=f"{name} split")
                      for name, exs in self.splits.items()}
        self.notes: list[str] = []
        self._report_truncation()
        if cfg.task == "qa":
            # A training example whose answer was cut off has no target to learn.
            kept = [f for f in self.feats["train"] if f.target is not None]
            skipped = len(self.feats["train"]) - len(kept)
            if skipped:
                self._note(f"{skipped:,} of {len(self.feats['train']):,} training questions "
                           f"skipped: their answer lies beyond --max-length {self.max_length}")
            if not kept:
                raise LmlabError("no training question has its answer within --max-length "
                                 f"{self.max_length}; raise --max-length")
            self.feats["train"] = kept
        self.weight = None
        use_weights = cfg.class_weights if cfg.class_weights is not None else cfg.task == "classify"
        if use_weights and self.labels is not None:
            y = self._train_label_ids()
            self.weight = torch.tensor(compute_class_weights(y, len(self.labels)),
                                       dtype=torch.float32, device=self.device)

        # -- optimization
        # BERT's fine-tuning betas (0.9, 0.999); pretraining uses (0.9, 0.95).
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, (0.9, 0.999))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # A global batch is batch_size rows from each process.
        self.global_batch = cfg.batch_size * self.world.size
        # An epoch's last batch is trained when every process gets a row of it.
        n, size = len(self.feats["train"]), self.world.size
        per_epoch = n // self.global_batch + (n % self.global_batch >= size)
        self.total_steps = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup = round(cfg.warmup_ratio * self.total_steps)
        self.metric_name = ""
        self.kind = kind
        # Nothing is written yet: OUT is made (and an old run in it replaced) by
        # ``fit``, together with the first checkpoint (``_start_run``).

    # -- setup helpers -------------------------------------------------------
    _RUN_OUTPUTS = ("best", "tb", "metrics.jsonl", "loss.png", "report.json", "report.txt",
                    "confusion.png", "finetune_config.json", SPLITS_DIR)

    def _check_run_dir(self, overwrite: bool) -> None:
        present = [n for n in self._RUN_OUTPUTS if (self.run_dir / n).exists()]
        if present and not overwrite:
            raise LmlabError(f"{self.run_dir}: already holds a fine-tuning run ({present[0]}); "
                             "pass --overwrite to replace it, or choose another --out")

    def _remove_outputs(self) -> None:
        for name in self._RUN_OUTPUTS:
            p = self.run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def _start_run(self) -> None:
        """Make OUT as the first checkpoint is about to be saved: replace an old run's
        outputs, write finetune_config.json and the splits."""
        self._remove_outputs()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "finetune_config.json",
                   json.dumps(dataclasses.asdict(self.cfg), indent=2) + "\n")
        # The examples of each split, as read or carved, so a baseline scores the same ones.
        write_splits(self.splits, self.run_dir)

    def _discard_run(self, made: Path | None) -> None:
        """After a failure before any checkpoint: remove the folder this run made, or
        (in one that was already there) what this run wrote."""
        if (self.run_dir / "best").exists():
            return
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
            _warn(f"removed {made}: fine-tuning stopped before its first checkpoint")
            return
        self._remove_outputs()

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        if self.world.main:
            _warn(msg)

    def _report_truncation(self) -> None:
        cfg = self.cfg
        for name, feats in self.feats.items():
            cut = sum(f.truncated for f in feats)
            if not cut:
                continue
            if cfg.task == "classify":
                kept = "start" if cfg.truncation == "tail" else "end"
                self._note(f"{cut:,} of {len(feats):,} {name} texts are longer than "
                           f"--max-length {self.max_length} tokens; only their {kept} is read "
                           f"(--truncation {cfg.truncation})")
            elif cfg.task == "tag":
                words = sum(sum(j < 0 for j in f.word_tokens or []) for f in feats)
                self._note(f"{name}: {words:,} words in {cut:,} sentences lie beyond "
                           f"--max-length {self.max_length} and are not tagged (scored as O)")
            else:
                self._note(f"{name}: {cut:,} of {len(feats):,} contexts were cut to fit "
                           f"--max-length {self.max_length}")

    def _train_label_ids(self) -> list[int]:
        feats = self.feats["train"]
        if self.cfg.task == "classify":
            return [int(f.target) for f in feats]  # type: ignore[arg-type]
        return [t for f in feats for t in f.target if t != IGNORE]  # type: ignore[union-attr]

    # -- evaluation ----------------------------------------------------------
    def evaluate(self, split: str) -> tuple[str, float, Any, float | None]:
        """(metric name, value, full scores, mean loss) of the current model on a split."""
        with autocast(self.cfg.dtype, self.device):
            outs, loss = run_model(self.model, self.feats[split], self.cfg.batch_size * 2,
                                   self.pad_id, self.weight)
        preds = decode_outputs(outs, self.feats[split], self.splits[split], self.cfg.task,
                               self.labels, self.cfg.max_answer_tokens)
        name, value, scores = score_predictions(preds, self.splits[split], self.cfg.task,
                                                self.labels)
        return name, value, scores, loss

    def task_info(self, step: int, epoch: int, value: float) -> dict[str, Any]:
        tok = self.tok
        return {
            "format": FORMAT, "task": self.cfg.task, "backbone": self.kind,
            "labels": self.labels.to_list() if self.labels else [],
            "pooling": self.pooling, "max_length": self.max_length,
            "truncation": self.cfg.truncation, "max_answer_tokens": self.cfg.max_answer_tokens,
            "head_dropout": self.cfg.head_dropout, "metric": self.metric_name,
            "val_metric": value, "step": step, "epoch": epoch, "source_model": self.cfg.model,
            "eos_token": tok.id_to_token(tok.eos_id) if tok.eos_id is not None else None,
        }

    # -- the loop ------------------------------------------------------------
    def train_step(self, idx: Sequence[int], step: int) -> tuple[float, float]:
        """One optimizer step on training features ``idx`` (the global batch: under
        torchrun, this process trains on its own share) at schedule position ``step``;
        returns the batch loss (the mean over processes) and the gradient norm before
        clipping."""
        cfg = self.cfg
        lr = linear_schedule(step, self.total_steps, self.warmup, cfg.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mine = self.world.share(idx)
        batch = collate([self.feats["train"][i] for i in mine], self.pad_id, self.device,
                        cfg.task)
        with autocast(cfg.dtype, self.device):
            out = self.net(batch.ids, batch.mask, batch.types)
        loss = task_loss(out, batch.target, cfg.task, self.weight)
        value = distributed.mean(loss.item(), self.world, self.device)
        if not math.isfinite(value):
            raise LmlabError(f"step {step}: training loss is {value}; try a lower --lr "
                             f"(now {cfg.lr:g})")
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value, float(norm)

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_backbone:
            self.model.backbone.eval()  # a frozen backbone gives stable features: no dropout

    def fit(self) -> dict[str, Any]:
        """Train, validating every epoch (and every ``eval_interval`` steps) and keeping
        the best model in OUT/best/. OUT itself appears with that first checkpoint.

        Ctrl-C lets the step under way end, validates the model as it is (saving it
        if it is the best so far), says where the best model is and raises
        KeyboardInterrupt; a second Ctrl-C stops at once. A run stopped or failed
        before its first checkpoint leaves no OUT behind (if it made it).
        """
        from lmlab.runs import MetricsLogger, plot_loss

        cfg = self.cfg
        logger: MetricsLogger | None = None  # made with OUT, at the first evaluation
        early_rows: list[dict[str, Any]] = []  # train rows logged before that
        started, made = False, None  # made: the outermost folder _start_run made
        bar = None
        if self.progress:
            from lmlab.progress import progress_bar

            bar = progress_bar(total=self.total_steps, desc=f"finetune {cfg.task}", unit="step")
        lengths = [len(f.ids) for f in self.feats["train"]]
        best, best_step, bad_evals = -math.inf, 0, 0
        step, epoch, stopped_early = 0, 0, False
        losses: list[float] = []
        t_start = t_last = time.perf_counter()
        seen = 0
        evaluated_at = -1

        def log(row: dict[str, Any]) -> None:
            if logger is None:
                early_rows.append(row)
            else:
                logger.log(row)

        def validate() -> bool:
            """Evaluate, keep the best checkpoint; True when patience has run out (in every
            process: rank 0 alone evaluates and writes, and tells the others)."""
            nonlocal evaluated_at
            evaluated_at = step
            out_of_patience = self.world.main and evaluate_and_keep()
            return distributed.any_true(out_of_patience, self.world, self.device)

        def evaluate_and_keep() -> bool:
            nonlocal best, best_step, bad_evals, logger, made, started
            name, value, _, loss = self.evaluate("val")
            self.metric_name = name
            row = {"step": step, "split": "val", "epoch": epoch, name: value}
            if loss is not None:
                row["loss"] = loss
            if logger is None:
                started, made = True, missing_root(self.run_dir)
                self._start_run()
                logger = MetricsLogger(self.run_dir)
                for r in early_rows:
                    logger.log(r)
            logger.log(row)
            improved = value > best
            if improved:
                best, best_step, bad_evals = value, step, 0
                save_task_checkpoint(self.run_dir / "best", self.model, self.tok,
                                     self.task_info(step, epoch, value), self.source)
            else:
                bad_evals += 1
            msg = (f"step {step} (epoch {epoch}): val {name} {value:.4f}"
                   + (f", loss {loss:.4f}" if loss is not None else "")
                   + (" (best, saved)" if improved else f" (best {best:.4f} at step {best_step})"))
            bar.write(msg) if bar else print(msg, file=sys.stderr)
            plot_loss(logger.path, self.run_dir / "loss.png", title=f"finetune {cfg.task}",
                      ylabel="task loss (cross-entropy, nats)")
            self._train_mode()
            return cfg.patience is not None and bad_evals >= cfg.patience

        stop = StopOnInterrupt()

        def check_stop() -> None:
            """On Ctrl-C (in any process), between steps: validate the model as it is,
            then stop."""
            if distributed.any_true(stop.requested, self.world, self.device) \
                    and step < self.total_steps:
                if evaluated_at != step:
                    validate()
                raise KeyboardInterrupt

        self._train_mode()
        try:
            with stop:
                while epoch < cfg.epochs and step < self.total_steps and not stopped_early:
                    epoch += 1
                    for idx in length_bucketed_batches(lengths, self.global_batch,
                                                       self.generator):
                        if step >= self.total_steps:
                            break
                        if len(idx) < self.world.size:
                            continue  # a last batch too small to give every process a row
                        loss, norm = self.train_step(idx, step)
                        step += 1
                        seen += len(idx)
                        losses.append(loss)
                        if step % 10 == 0 or step == self.total_steps:
                            now = time.perf_counter()
                            mean = sum(losses) / len(losses)
                            lr = self.optimizer.param_groups[0]["lr"]
                            log({"step": step, "split": "train", "epoch": epoch, "loss": mean,
                                 "lr": lr, "grad_norm": norm,
                                 "examples_per_s": seen / max(now - t_last, 1e-9),
                                 "elapsed_s": now - t_start})
                            if bar:
                                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", refresh=False)
                            losses, seen, t_last = [], 0, now
                        if bar:
                            bar.update(1)
                        if cfg.eval_interval and step % cfg.eval_interval == 0 and validate():
                            stopped_early = True
                            break
                        check_stop()
                    if not stopped_early and evaluated_at != step and validate():
                        stopped_early = True
                    if not stopped_early and epoch < cfg.epochs:
                        check_stop()
        except BaseException as e:
            if bar:
                bar.close()
                bar = None
            if logger is not None:
                logger.close()
                logger = None
            if not self.world.main:
                raise
            if not (self.run_dir / "best").exists():
                if started:
                    self._discard_run(made)
            elif isinstance(e, KeyboardInterrupt):
                print(f"interrupted at step {step} of {self.total_steps}; the best model so "
                      f"far (val {self.metric_name} {best:.4f}, step {best_step}) is in "
                      f"{self.run_dir / 'best'}, which `lmlab predict {self.run_dir}` uses "
                      "(the test split was not scored)", file=sys.stderr)
            raise
        finally:
            if bar:
                bar.close()
            if logger is not None:
                logger.close()
        return {"steps": step, "epochs": epoch, "total_steps": self.total_steps,
                "stopped_early": stopped_early, "best_step": best_step,
                "metric": self.metric_name, "best_val": best,
                "train_seconds": time.perf_counter() - t_start}

    # -- after training ------------------------------------------------------
    def test(self) -> dict[str, Any] | None:
        """Score the best checkpoint on the test split; write OUT/report.{json,txt}
        (and OUT/confusion.png for classify). None when there is no test split."""
        if not self.splits["test"]:
            self._note("no test split (--test-fraction 0 and no --test): nothing to report")
            return None
        best_dir = self.run_dir / "best"
        model, _, info = load_task_model(best_dir, device=str(self.device))
        self.model = model
        name, value, scores, loss = self.evaluate("test")
        n = len(self.splits["test"])
        report: dict[str, Any] = {
            "task": self.cfg.task, "checkpoint": str(best_dir), "metric": name, "value": value,
            "test_examples": n, "test_loss": loss, "best_step": info["step"],
            "val_metric": info["val_metric"],
            "truncated_test_inputs": sum(f.truncated for f in self.feats["test"]),
            "notes": self.notes,
        }
        if self.cfg.task == "classify":
            from lmlab.metrics import plot_confusion

            report["scores"] = scores.to_dict()
            text = scores.format()
            plot_confusion(scores, self.run_dir / "confusion.png",
                           title=f"test: accuracy {scores.accuracy:.3f}, "
                                 f"macro F1 {scores.macro_f1:.3f} (n={n})")
        elif self.cfg.task == "tag":
            report["scores"] = scores
            text = format_tag_scores(scores, n)
        else:
            report["scores"] = scores
            text = (f"exact match {scores['exact_match']:.4f}   F1 {scores['f1']:.4f}   "
                    f"({scores['n']} questions)")
        write_text(self.run_dir / "report.json", json.dumps(report, indent=2) + "\n")
        write_text(self.run_dir / "report.txt", text + "\n")
        report["text"] = text
        return report


def _opt_path(p: str | None) -> Path | None:
    return Path(p) if p else None


