"""Fine-tuning a pretrained backbone for classification, tagging or extractive QA.

Setup, fit, test (``Finetuner``, an objective on the training engine): read the splits
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

Augmentation (classify, ``--augment``): the training texts get copies made by
``lmlab.data.augment`` (EDA's synonym replacement, deletion and swap, or
back-translation through two seq2seq models loaded by ``beam.load_pair_model``),
each with its text's label, trained on beside the originals and saved as
``OUT/augmented.jsonl``; ``OUT/splits`` keeps the originals, and validation and
test are never augmented. The counts go to the output and ``OUT/report.json``.

The best checkpoint is a folder ``OUT/best/`` written atomically:
``model.safetensors`` (backbone + head, keys ``backbone.*`` and ``head.*``),
``config.json`` (the backbone's config), ``task.json`` (task, labels,
pooling, input policy) and ``tokenizer.json``. ``load_task_model`` reads it back.

The splits the run used are written beside it, as ``OUT/splits/train.jsonl``,
``val.jsonl`` and ``test.jsonl`` (one example per line, the default field
names; an empty split is an empty file): the examples as read from
``--validation`` / ``--test``, or as carved from ``--train``. A baseline
scored on them (``lmlab baseline --train OUT``) sees exactly the same split.
OUT, with ``finetune_config.json`` and the splits, is made once every input is
checked; a run that fails or is stopped before its first checkpoint leaves no
OUT behind (if it made it).

The loop is the engine's (``train/engine.py``): with each validation the run
also saves a resume checkpoint in ``OUT/checkpoints`` (weights, AdamW moments,
random states, the epoch, the place in its batch order and the best score so
far), so ``--resume`` continues a stopped run exactly, as pretraining does.

Shapes: B batch, T tokens, C width, K labels.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmlab.atomic import write_text
from lmlab.data.tasks import SPLITS_DIR, LabelSet, write_jsonl, write_splits
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.models.bert import Pooling
from lmlab.models.registry import context_of, reader_of
from lmlab.tokenizer import Tokenizer
from lmlab.train.configs import FinetuneConfig
from lmlab.train.engine import Engine, EpochCursor
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
    collate,
    length_bucketed_batches,
    task_loss,
)
from lmlab.train.tasks.model import TaskModel, load_backbone, vector_embeddings

if TYPE_CHECKING:
    from lmlab.data.augment import AugmentResult

# The augmented training copies a run trained on (each with its original's label).
AUGMENTED_FILE = "augmented.jsonl"


# ---------------------------------------------------------------- the run
def linear_schedule(step: int, total: int, warmup: int, peak: float) -> float:
    """BERT's schedule: linear warm-up to ``peak`` over ``warmup`` steps, then linear
    decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class Finetuner(Engine):
    """Fine-tuning on the engine: data, backbone + head and the task objective; ``fit``
    trains, keeping the best model in OUT/best, and ``test`` scores it."""

    command = "finetune"
    config_file = "finetune_config.json"
    run_files = ("best", "tb", "metrics.jsonl", "loss.png", "report.json", "report.txt",
                 "confusion.png", SPLITS_DIR, AUGMENTED_FILE)
    # What fixes the examples, the model and the batches; epochs, max_steps, the
    # learning rate and patience may change on --resume.
    resume_keys = ("task", "train", "model", "validation", "test", "tokenizer", "vectors",
                   "vectors_max_words", "text_field", "label_field", "tokens_field",
                   "tags_field", "context_field", "question_field", "answer_field",
                   "answer_start_field", "encoding", "val_fraction", "test_fraction",
                   "max_length", "truncation", "pooling", "batch_size", "head_dropout",
                   "class_weights", "freeze_backbone", "lora_rank", "lora_alpha",
                   "lora_targets", "seed", "augment", "augment_copies", "augment_alpha",
                   "augment_seed", "augment_vectors", "augment_translators")
    keep_checkpoints = 1  # the resume point; the model worth keeping is OUT/best
    rate_name = "examples_per_s"
    plot_ylabel = "task loss (cross-entropy, nats)"

    def __init__(self, cfg: FinetuneConfig, overwrite: bool = False,
                 progress: bool = True, embedding_init: torch.Tensor | None = None,
                 resume: bool = False) -> None:
        """Check every input and build the model; ``embedding_init`` (vocab_size, dim)
        initialises a recurrent preset's token embeddings (see ``load_backbone``)."""
        from lmlab.data.tasks import compute_class_weights, load_splits

        self.cfg = cfg
        self.plot_title = f"finetune {cfg.task}"
        # Under torchrun: DDP, every process training on its share of each global batch.
        self._join(progress)
        if cfg.pooling is not None and cfg.task != "classify":
            raise LmlabError(f"--pooling applies to classify, not {cfg.task}")
        if cfg.class_weights and cfg.task == "qa":
            raise LmlabError("--class-weights applies to classify and tag, not qa")
        self._check_run_dir(Path(cfg.out), resume, overwrite)

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
        # More training texts (never validation or test ones); the splits keep the
        # originals, so OUT/splits and a baseline scored on them see the real data.
        self.augmented = self._augment() if cfg.augment else None

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
        self.kind = kind
        n_labels = len(self.labels) if self.labels else 1
        self.model = TaskModel(backbone, cfg.task, n_labels, pooling, cfg.head_dropout)
        self.model.to(self.device)
        if cfg.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        if cfg.lora_rank:
            from lmlab.models.lora import LoraConfig, add_lora

            targets = tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip())
            add_lora(self.model.backbone, LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                                     dropout=cfg.lora_dropout, targets=targets))
        self.pad_id = pad_id_of(self.tok, self.model)

        # -- features
        self.encoder = TaskEncoder(self.tok, cfg.task, kind, self.max_length, cfg.truncation,
                                   self.labels)
        self.feats = {name: self.encoder.encode(exs, labelled=True, where=f"{name} split")
                      for name, exs in self.splits.items()}
        if self.augmented is not None:
            self.feats["train"] += self.encoder.encode(
                self.augmented.examples, labelled=True, where="augmented training copies")
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

        # -- the schedule
        # A global batch is batch_size rows from each process.
        self.global_batch = cfg.batch_size * self.world.size
        # An epoch's last batch is trained when every process gets a row of it.
        n, size = len(self.feats["train"]), self.world.size
        per_epoch = n // self.global_batch + (n % self.global_batch >= size)
        self.total_steps = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup = round(cfg.warmup_ratio * self.total_steps)
        # Epochs of batches of similar lengths, in a random order.
        lengths = [len(f.ids) for f in self.feats["train"]]
        self.batches = EpochCursor(
            lambda g: length_bucketed_batches(lengths, self.global_batch, g), self.generator,
            min_rows=self.world.size)
        self.last_batch: list[int] = []
        # The best validation score so far, and evaluations since it improved.
        self.best, self.best_step, self.bad_evals = -math.inf, 0, 0
        self.stopped_at: int | None = None  # the step patience ran out at
        self.metric_name = ""
        # BERT's fine-tuning betas (0.9, 0.999); pretraining uses (0.9, 0.95).
        self._prepare(betas=(0.9, 0.999))

    def _augment(self) -> AugmentResult:
        """The augmented copies of the training texts (``lmlab.data.augment``): synonyms
        from --augment-vectors, back-translations by the two --augment-translators."""
        from lmlab.data.augment import augment_examples, split_words, synonym_table

        cfg = self.cfg
        assert cfg.augment
        train = self.splits["train"]
        synonyms = None
        if "synonym" in cfg.augment:
            from lmlab.models.embeddings import load_vectors

            assert cfg.augment_vectors
            vectors = load_vectors(cfg.augment_vectors)
            words = {w for ex in train for w in split_words(ex.text)}
            synonyms = synonym_table(vectors, words)
            if not synonyms:
                raise LmlabError(f"{cfg.augment_vectors}: none of the training texts' words "
                                 "has neighbours in these vectors (past their most frequent "
                                 "words); --augment synonym would change nothing")
        translate = None
        if "backtranslate" in cfg.augment:
            from lmlab.beam import load_pair_model

            assert cfg.augment_translators
            forward, back = (load_pair_model(p, device=str(self.device))
                             for p in cfg.augment_translators)
            batch = cfg.batch_size * 2
            translate = (lambda texts, n: forward.translate(texts, n, batch_size=batch),
                         lambda texts, n: back.translate(texts, n, batch_size=batch))
        seed = cfg.seed if cfg.augment_seed is None else cfg.augment_seed
        return augment_examples(train, cfg.augment, copies=cfg.augment_copies,
                                alpha=cfg.augment_alpha, seed=seed, synonyms=synonyms,
                                translate=translate)

    def plain_model(self) -> TaskModel:
        """The model to keep as best/: with LoRA, a copy with the adapters merged, so that
        best/ loads (and predicts) as any fine-tuned model."""
        if not self.cfg.lora_rank:
            return self.model
        import copy

        from lmlab.models.lora import merge_lora

        plain = copy.deepcopy(self.model)
        merge_lora(plain.backbone)
        return plain

    # -- the run folder --------------------------------------------------------
    def _holds_run(self) -> bool:
        # A run of lmlab before resumable fine-tuning has best/ and no checkpoints.
        return super()._holds_run() or any((self.run_dir / n).exists() for n in self.run_files)

    def write_run_files(self) -> None:
        # The examples of each split, as read or carved, so a baseline scores the same ones;
        # the augmented copies beside them, to be read.
        if not self.resume:
            write_splits(self.splits, self.run_dir)
            if self.augmented is not None:
                write_jsonl(self.augmented.examples, self.run_dir / AUGMENTED_FILE)

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
            "eos_token": tok.eos_token,
        }

    # -- the objective -------------------------------------------------------
    def lr_at(self, step: int) -> float:
        return linear_schedule(step, self.total_steps, self.warmup, self.cfg.lr)

    def micro_batch_loss(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The task loss of the next batch: under torchrun, this process's share of it."""
        cfg = self.cfg
        self.last_batch = idx = self.batches.next()
        batch = collate([self.feats["train"][i] for i in self.world.share(idx)], self.pad_id,
                        self.device, cfg.task)
        with autocast(cfg.dtype, self.device):
            out = self.net(batch.ids, batch.mask, batch.types)
        return task_loss(out, batch.target, cfg.task, self.weight), {}

    def step_units(self) -> int:
        return len(self.last_batch)

    def row_extras(self) -> dict[str, Any]:
        return {"epoch": self.batches.epoch}

    def train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_backbone:
            self.model.backbone.eval()  # a frozen backbone gives stable features: no dropout

    def should_validate(self, step: int) -> bool:
        every = self.cfg.eval_interval
        return bool(every and step % every == 0) or self.batches.epoch_done() \
            or step == self.total_steps

    def should_save(self, step: int, validated: bool) -> bool:
        # The resume point goes with each validation, so it agrees with OUT/best.
        return validated

    def validate(self, step: int) -> tuple[dict[str, Any], str, bool]:
        """Score the validation split, keep the model in OUT/best if it is the best so far;
        stop when --patience evaluations in a row did not improve."""
        name, value, _, loss = self.evaluate("val")
        self.metric_name = name
        row: dict[str, Any] = {name: value}
        if loss is not None:
            row["loss"] = loss
        improved = value > self.best
        if improved:
            self.best, self.best_step, self.bad_evals = value, step, 0
            save_task_checkpoint(self.run_dir / "best", self.plain_model(), self.tok,
                                 self.task_info(step, self.batches.epoch, value), self.source)
        else:
            self.bad_evals += 1
        best = f"best {self.best:.4f} at step {self.best_step}"
        msg = (f"step {step} (epoch {self.batches.epoch}): val {name} {value:.4f}"
               + (f", loss {loss:.4f}" if loss is not None else "")
               + (" (best, saved)" if improved else f" ({best})"))
        patience = self.cfg.patience
        if patience is not None and self.bad_evals >= patience:
            self.stopped_at = step
        return row, msg, self.stopped_at is not None

    def objective_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state, tensors = self.batches.state()
        best = self.best if math.isfinite(self.best) else None
        return {**state, "best": best, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "metric": self.metric_name, "stopped_at": self.stopped_at}, tensors

    def restore_objective(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.batches.restore(state, tensors)
        self.best = -math.inf if state["best"] is None else float(state["best"])
        self.best_step, self.bad_evals = int(state["best_step"]), int(state["bad_evals"])
        self.metric_name = str(state["metric"])
        self.stopped_at = state.get("stopped_at")
        if self.stopped_at is not None:  # it had stopped early: resuming trains no more
            self.total_steps = self.stopped_at

    def tokenizer_file(self) -> None:
        return None  # the checkpoint's tokenizer is OUT/best's

    def stop_message(self, step: int) -> str:
        if not math.isfinite(self.best):
            return ""
        return (f"The best model so far (val {self.metric_name} {self.best:.4f}, step "
                f"{self.best_step}) is in {self.run_dir / 'best'}, which `lmlab predict "
                f"{self.run_dir}` uses (the test split was not scored). ")

    def result(self) -> dict[str, Any]:
        augmented = self.augmented.to_dict() if self.augmented is not None else None
        return {**super().result(), "epochs": self.batches.epoch, "total_steps": self.total_steps,
                "best_step": self.best_step, "metric": self.metric_name, "best_val": self.best,
                "augmented": augmented}

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
            "train_examples": len(self.splits["train"]),
            "augmented": self.augmented.to_dict() if self.augmented is not None else None,
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


