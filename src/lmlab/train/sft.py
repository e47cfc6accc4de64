"""Chat fine-tuning (supervised fine-tuning, SFT): an objective on the engine.

A causal model (an lmlab run, an HF GPT-2 / Llama folder, a GGUF file such as
SmolLM2-135M-Instruct) learns to answer as the conversations of ``--data`` answer:
each conversation is rendered with the model's chat template (or ChatML) and the
loss is the cross-entropy of the assistant's tokens only, every answer of a
multi-turn conversation, its end-of-turn token included (``data/chat.py``). The
output layer is applied to those positions only (``select``): with a 49k
vocabulary that is most of a step's work saved.

With ``--lora-rank R`` (8 by default) the model is frozen and LoRA adapters train
(``models/lora.py``); each checkpoint then holds the adapter alone, in PEFT's
layout (``adapter_config.json`` naming the base, ``adapter_model.safetensors``), and
``load_model`` on the run puts it back on its base. With ``--lora-rank 0`` every
weight trains and checkpoints hold the whole model. Either way a checkpoint carries
``tokenizer_config.json`` with the chat template and end token the run used, so
`lmlab chat RUN` speaks to the model as it was trained.

Batches: conversations of similar lengths under a token budget (``max_tokens``,
padding included), as the translation objective draws them; rows are right-padded,
which a causal model never reads. ``--packing`` joins training conversations into
rows of up to ``max_length`` tokens first (never splitting one): no padding, at the
price of a conversation attending to those before it in its row (TRL's packing
without position resets; the labels never cross a boundary). Validation: the loss
and perplexity of the answers of the held-out conversations (``--validation``, or
``--val-share`` of the data, split by a seeded shuffle).

Shapes: B conversations, L tokens, N learned tokens, V vocabulary.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmlab.data.chat import CHATML_TEMPLATE, Encoded, encode_conversation, read_conversations
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.models import lora
from lmlab.models.registry import kind_of
from lmlab.train.configs import SFTConfig
from lmlab.train.engine import Engine, EpochCursor
from lmlab.train.loop import lr_at
from lmlab.train.losses import linear_cross_entropy
from lmlab.train.seq2seq import cut_batches, token_budget_batches
from lmlab.train.tasks.features import IGNORE


def resolve_template(choice: str | None, own: str | None) -> tuple[str, str]:
    """The chat template to train with, and where it came from."""
    if choice is None:
        return (own, "the model's own") if own else (CHATML_TEMPLATE, "ChatML")
    if choice.lower() == "chatml":
        return CHATML_TEMPLATE, "ChatML"
    path = Path(choice)
    if not path.is_file():
        raise LmlabError(f"--chat-template {choice}: neither chatml nor a file")
    return path.read_text(encoding="utf-8"), str(path)


def pack(rows: Sequence[Encoded], max_length: int) -> list[Encoded]:
    """Conversations joined, in order, into rows of at most ``max_length`` tokens (a
    conversation is never split: one that does not fit starts the next row)."""
    packed: list[Encoded] = []
    ids: list[int] = []
    labels: list[bool] = []
    for r in rows:
        if ids and len(ids) + len(r.ids) > max_length:
            packed.append(Encoded(ids, labels, 0))
            ids, labels = [], []
        ids, labels = ids + r.ids, labels + r.labels
    if ids:
        packed.append(Encoded(ids, labels, 0))
    return packed


def collate_chat(rows: Sequence[Encoded], pad: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, L) and labels (B, L), right-padded: a label is the next token where that
    token belongs to an answer, else ignored."""
    B, L = len(rows), max(len(r.ids) for r in rows) - 1
    x = torch.full((B, L), pad, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    for b, r in enumerate(rows):
        ids = torch.tensor(r.ids)
        x[b, :len(ids) - 1] = ids[:-1]
        learned = torch.tensor(r.labels[1:])
        labels[b, :len(ids) - 1] = torch.where(learned, ids[1:], IGNORE)
    return x.to(device), labels.to(device)


class SFTTrainer(Engine):
    """Chat fine-tuning on the engine; ``fit`` runs the loop."""

    command = "sft"
    config_file = "sft_config.json"
    run_files = ("metrics.jsonl", "tb", "loss.png", "tokenizer.json")
    resume_keys = ("model", "data", "validation", "val_share", "chat_template", "max_length",
                   "max_tokens", "packing", "lora_rank", "lora_alpha", "lora_targets", "quantize",
                   "grad_accum", "seed")
    plot_ylabel = "answer cross-entropy (nats/token)"

    def __init__(self, cfg: SFTConfig, resume: bool = False, overwrite: bool = False,
                 progress: bool = True) -> None:
        from lmlab.loading import load_for_inference

        self.cfg = cfg
        self._join(progress)
        self.total_steps = cfg.max_steps
        loaded = load_for_inference(Path(cfg.model))
        if kind_of(loaded.model) != "causal":
            raise LmlabError(f"{cfg.model}: chat fine-tuning takes a Transformer decoder "
                             "(GPT-2, Llama, SmolLM2); this is a feed-forward or recurrent LM")
        self.tok = loaded.tokenizer
        self.template, self.template_origin = resolve_template(cfg.chat_template,
                                                               loaded.chat_template)
        self.context = loaded.model.config.block_size
        if cfg.max_length > self.context:
            raise LmlabError(f"--max-length {cfg.max_length} exceeds the model's context of "
                             f"{self.context} tokens")
        self.examples, self.report = self._read_data()
        self._check_run_dir(Path(cfg.out), resume, overwrite)

        torch.manual_seed(cfg.seed)
        model = loaded.model
        if lora.lora_layers(model):  # a LoRA run as the start: its adapter becomes the base
            lora.merge_lora(model)
        self.lora = None
        if cfg.quantize == "int8":
            from lmlab.models.quantize import quantize_int8

            quantize_int8(model, skip=("lm_head",))  # the output layer stays exact
        if cfg.lora_rank:
            self.lora = lora.LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                        dropout=cfg.lora_dropout, targets=cfg.targets)
            if "lm_head" in self.lora.targets:
                raise LmlabError("--lora-targets lm_head: the output layer is fused with the "
                                 "loss here and stays frozen; adapt the other modules")
            lora.add_lora(model, self.lora)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = model.to(self.device)
        self.trainable = lora.count_trainable(self.model)
        lengths = [len(e.ids) for e in self.examples["train"]]
        budget = cfg.max_tokens * self.world.size
        longest = max(lengths)
        if longest > cfg.max_tokens:
            raise LmlabError(f"--max-tokens {cfg.max_tokens} is below the longest conversation "
                             f"({longest} tokens); raise it or lower --max-length")
        self.batches = EpochCursor(lambda g: token_budget_batches(lengths, budget, g),
                                   self.generator, min_rows=self.world.size)
        self.step_tokens = 0
        self._prepare(betas=(cfg.beta1, cfg.beta2))

    # -- data --------------------------------------------------------------
    def _read_data(self) -> tuple[dict[str, list[Encoded]], dict[str, Any]]:
        cfg = self.cfg
        train = read_conversations(Path(cfg.data))
        if cfg.validation is not None:
            val = read_conversations(Path(cfg.validation))
        else:
            if len(train) < 2:
                raise LmlabError(f"{cfg.data}: one conversation cannot be split into training "
                                 "and held-out parts; pass --validation")
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
                cfg.seed)).tolist()
            n_val = max(1, round(cfg.val_share * len(train)))
            val = [train[i] for i in order[:n_val]]
            train = [train[i] for i in order[n_val:]]
        examples: dict[str, list[Encoded]] = {}
        report: dict[str, Any] = {"template": self.template_origin}
        for name, convs in (("train", train), ("val", val)):
            kept, skipped, dropped = [], 0, 0
            for messages in convs:
                e = encode_conversation(self.tok, self.template, messages, cfg.max_length)
                if e is None or len(e.ids) < 2:
                    skipped += 1
                    continue
                kept.append(e)
                dropped += e.turns_dropped
            if not kept:
                raise LmlabError(f"no {name} conversation has an answer that ends within "
                                 f"--max-length {cfg.max_length} tokens")
            report[name] = {"conversations": len(kept), "skipped_too_long": skipped,
                            "answers_cut_off": dropped,
                            "answer_tokens": sum(sum(e.labels) for e in kept),
                            "tokens": sum(len(e.ids) for e in kept)}
            if name == "train" and cfg.packing:
                kept = pack(kept, cfg.max_length)
                report[name]["packed_rows"] = len(kept)
            examples[name] = kept
            if (skipped or dropped) and self.world.main:
                print(f"warning: {name}: {skipped:,} conversation(s) skipped (first answer "
                      f"beyond --max-length {cfg.max_length}), {dropped:,} later answer(s) "
                      "cut off", file=sys.stderr)
        return examples, report

    def answer_loss(self, model: torch.nn.Module,
                    rows: Sequence[Encoded]) -> tuple[torch.Tensor, int]:
        """The summed cross-entropy of the answer tokens of a batch, and their count. The
        output layer runs on the answer positions only, fused with the loss
        (``losses.linear_cross_entropy``: no (N, V) logits kept)."""
        pad = self.tok.eos_id if self.tok.eos_id is not None else 0
        x, labels = collate_chat(rows, pad, self.device)
        target = labels != IGNORE  # (B, L)
        with autocast(self.cfg.dtype, self.device):
            hidden = model(x, hidden=True)  # (B, L, C)
        loss = linear_cross_entropy(hidden[target], self.model.lm_head.weight, labels[target],
                                    reduction="sum")
        return loss, int(target.sum())

    # -- the objective -----------------------------------------------------
    def lr_at(self, step: int) -> float:
        return lr_at(step, self.cfg)  # warm-up, then cosine decay

    def micro_batch_loss(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss per answer token of the next batch; under torchrun each process takes
        every world-size-th conversation and weighs its sum by the whole batch's count
        (as the translation objective does)."""
        rows = self.examples["train"]
        batch = self.batches.next()
        world = self.world
        mine = [rows[i] for i in batch[world.rank::world.size]]
        loss, _ = self.answer_loss(self.net, mine)
        learned = sum(sum(rows[i].labels[1:]) for i in batch)
        if index % self.grad_accum == 0:
            self.step_tokens = 0
        self.step_tokens += sum(len(rows[i].ids) for i in batch)
        return loss * world.size / max(learned, 1), {}

    def step_units(self) -> int:
        return self.step_tokens  # tokens read (prompts and answers) in the step

    def row_extras(self) -> dict[str, Any]:
        return {"epoch": self.batches.epoch}

    @torch.no_grad()
    def score(self) -> dict[str, float]:
        """The answers' loss and perplexity over the held-out conversations."""
        model = self.model
        model.eval()
        rows = self.examples["val"]
        lengths = [len(r.ids) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: lengths[i])
        nll, count = 0.0, 0
        for batch in cut_batches(order, lengths, self.cfg.max_tokens):
            loss, n = self.answer_loss(model, [rows[i] for i in batch])
            nll += float(loss)
            count += n
        loss = nll / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "answer_tokens": count}

    def validate(self, step: int) -> tuple[dict[str, Any], str, bool]:
        row = self.score()
        return row, (f"step {step}: held-out answer loss {row['loss']:.4f}, "
                     f"ppl {row['perplexity']:.2f}"), False

    def data_hash(self) -> str:
        import hashlib

        return hashlib.sha256(repr([(e.ids, e.labels) for e in self.examples["train"]])
                              .encode()).hexdigest()[:16]

    def objective_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state, tensors = self.batches.state()
        return {**state, "data": self.data_hash()}, tensors

    def restore_objective(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if state.get("data") not in (None, self.data_hash()):
            raise LmlabError(f"{self.cfg.data}: its conversations, template or tokenizer "
                             f"differ from those the run in {self.run_dir} was trained on; "
                             "resume with the same data, or start over with --overwrite")
        self.batches.restore(state, tensors)

    # -- files -------------------------------------------------------------
    def write_run_files(self) -> None:
        self.tok.save(self.run_dir / "tokenizer.json")
        (self.run_dir / "data_report.json").write_text(json.dumps(self.report, indent=2) + "\n")

    def tokenizer_file(self) -> Path:
        return self.run_dir / "tokenizer.json"

    def base_source(self) -> str:
        return str(Path(self.cfg.model).resolve())

    def model_writer(self) -> Any:
        def write(folder: Path) -> None:
            from lmlab.loading import write_chat_config
            from lmlab.train.checkpoint import write_model_files

            if self.lora is not None:
                lora.save_adapter(self.model, folder, self.lora, base=self.base_source())
            else:
                write_model_files(folder, self.model)
            write_chat_config(folder, self.template, self.tok)
        return write

    def _restore_weights(self, state: dict[str, Any]) -> None:
        if self.lora is None:
            return super()._restore_weights(state)
        lora.restore_adapter(self.model, Path(state["path"]))

    def result(self) -> dict[str, Any]:
        from lmlab.models.weights import resolve_checkpoint

        return {"checkpoint": str(resolve_checkpoint(self.run_dir)),
                "params": self.trainable.total, "trainable": self.trainable.trainable}
