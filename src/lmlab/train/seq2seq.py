"""Training the encoder-decoder on (source, target) pairs: an objective on the engine.

Teacher forcing: the decoder reads the target shifted right behind the start
token and predicts each next target token, the end token last; the loss is
cross-entropy with label smoothing (0.1 by default, as Vaswani et al.), padding
ignored. Batches hold pairs of similar lengths under a budget of tokens
(``max_tokens``, fairseq's ``--max-tokens``): a bucket of shuffled pairs is
sorted by length and cut where one more pair would take the padded batch over
the budget, and the batches' order is shuffled again, epoch after epoch
(``EpochCursor``: exact resume). Validation reports the target loss and
perplexity over the whole validation split, and BLEU and chrF (sacrebleu) of
the first ``eval_sentences`` sources translated by beam search (or, for
summaries, their ROUGE).

The decoder-only way runs on the same objective: with a GPT preset each pair
becomes one sequence, the source, its end token (the separator), then the
target and its end token, and the loss counts the target tokens only
(``collate_joined``); decoding continues the source and its end token. Same data,
batches and budget, so the two kinds compare at equal parameter count.

Shapes: B pairs, S source tokens, T target tokens, V vocabulary.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.data.parallel import Pair, read_pairs
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.models.registry import build_model
from lmlab.tokenizer import Tokenizer
from lmlab.train.configs import Seq2SeqTrainConfig
from lmlab.train.engine import Engine, EpochCursor
from lmlab.train.loop import lr_at
from lmlab.train.losses import linear_cross_entropy
from lmlab.train.tasks.features import IGNORE


def pair_lengths(src: Sequence[list[int]], tgt: Sequence[list[int]]) -> list[int]:
    """The longer side of each pair: what a batch of them costs once padded."""
    return [max(len(s), len(t)) for s, t in zip(src, tgt, strict=True)]


def encode_pairs(tok: Tokenizer, pairs: Sequence[Pair], max_length: int,
                 eos: int) -> tuple[list[list[int]], list[list[int]], int]:
    """Source and target ids, each ending with the end token and cut to ``max_length``;
    and how many pairs had a side cut."""
    src = tok.encode_batch([p.src for p in pairs])
    tgt = tok.encode_batch([p.tgt for p in pairs])
    cut = 0
    for side in (src, tgt):
        for i, ids in enumerate(side):
            if len(ids) + 1 > max_length:
                cut += 1
                ids = ids[:max_length - 1]
            side[i] = [*ids, eos]
    return src, tgt, cut


def cut_batches(order: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Cut indices sorted by length into batches of at most ``max_tokens`` tokens once
    padded (rows x the batch's longest, which is its newest)."""
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[i] > max_tokens:
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


def collate_joined(src: Sequence[list[int]], tgt: Sequence[list[int]], pad: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder-only inputs (B, L) and labels (B, L), right-padded: each row is the source
    (its end token the separator) then the target without its last token; a label is
    the next token where that is a target token, else ignored."""
    rows = [s + t for s, t in zip(src, tgt, strict=True)]
    B, L = len(rows), max(map(len, rows)) - 1
    x = torch.full((B, L), pad, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    for b, (s, row) in enumerate(zip(src, rows, strict=True)):
        x[b, :len(row) - 1] = torch.tensor(row[:-1])
        labels[b, len(s) - 1:len(row) - 1] = torch.tensor(row[len(s):])
    return x.to(device), labels.to(device)


def token_budget_batches(lengths: Sequence[int], max_tokens: int, generator: torch.Generator,
                         bucket: int = 2000) -> list[list[int]]:
    """Batches of pairs of similar lengths under a token budget, in a random order: buckets
    of shuffled pairs, each sorted by length and cut. Only ``generator`` is drawn from."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    batches: list[list[int]] = []
    for start in range(0, len(perm), bucket):
        chunk = sorted(perm[start:start + bucket], key=lambda i: lengths[i])
        batches += cut_batches(chunk, lengths, max_tokens)
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def pair_loss(model: torch.nn.Module, src: torch.Tensor, src_mask: torch.Tensor,
              dec: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
              head: torch.nn.Module | None = None) -> tuple[torch.Tensor, int]:
    """The encoder-decoder's summed teacher-forced cross-entropy over a batch from
    ``collate_pairs``, and its N target tokens: the layers skip the padding (right-padded
    ``select``, see ``models.seq2seq.Packing``) and the output layer runs fused with the
    loss (``losses.linear_cross_entropy``, the final logits bias included). ``model`` may
    be a DDP or compiled wrapper; ``head`` is then the model itself, whose output layer
    the loss reads."""
    head = model if head is None else head
    target = labels != IGNORE  # (B, T)
    hidden = model(src, dec, src_mask, select=target, hidden=True)  # (N, C)
    return linear_cross_entropy(hidden, head.lm_head.weight, labels[target],
                                bias=getattr(head, "final_logits_bias", None),
                                label_smoothing=label_smoothing,
                                reduction="sum"), int(target.sum())


def collate_pairs(src: Sequence[list[int]], tgt: Sequence[list[int]], pad: int, start: int,
                  device: torch.device) -> tuple[torch.Tensor, ...]:
    """Source ids and mask (B, S), decoder inputs (B, T) and labels (B, T): right-padded,
    the decoder reading ``start`` then the target without its last token."""
    B, S, T = len(src), max(map(len, src)), max(map(len, tgt))
    x = torch.full((B, S), pad, dtype=torch.long)
    mask = torch.zeros(B, S, dtype=torch.bool)
    dec = torch.full((B, T), pad, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for b, (s, t) in enumerate(zip(src, tgt, strict=True)):
        x[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = True
        dec[b, :len(t)] = torch.tensor([start, *t[:-1]])
        labels[b, :len(t)] = torch.tensor(t)
    return x.to(device), mask.to(device), dec.to(device), labels.to(device)


def data_task_metric(data: Path) -> str:
    """The score a data folder's outputs are judged by: rouge for summaries (its report.json
    says ``"task": "summarize"``), else bleu."""
    import json

    try:
        task = json.loads((data / "report.json").read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        task = None
    return "rouge" if task == "summarize" else "bleu"


class Seq2SeqTrainer(Engine):
    """Encoder-decoder training on the engine; ``fit`` runs the loop."""

    command = "seq2seq"
    config_file = "seq2seq_config.json"
    run_files = ("metrics.jsonl", "tb", "loss.png")
    resume_keys = ("data", "preset", "n_layer", "n_encoder_layer", "n_decoder_layer", "n_head",
                   "n_embd", "norm_first", "max_length", "max_tokens", "grad_accum", "seed")
    rate_name = "tokens_per_s"

    @property
    def plot_ylabel(self) -> str:  # type: ignore[override]
        # Training rows carry the label-smoothed loss, validation rows the plain one: the
        # gap between the curves is partly the smoothing, and the label says so.
        if self.cfg.label_smoothing:
            return (f"target cross-entropy, nats/token (train: label smoothing "
                    f"{self.cfg.label_smoothing:g})")
        return "target cross-entropy (nats/token)"

    def __init__(self, cfg: Seq2SeqTrainConfig, resume: bool = False, overwrite: bool = False,
                 progress: bool = True) -> None:
        self.cfg = cfg
        self._join(progress)
        self.total_steps = cfg.max_steps
        data = Path(cfg.data)
        self.tokenizer_path = data / "tokenizer.json"
        for name in ("train.jsonl", "val.jsonl", "tokenizer.json"):
            if not (data / name).is_file():
                raise LmlabError(f"{data}: no {name}; make the folder with `lmlab parallel` "
                                 "(or put train.jsonl, val.jsonl and a tokenizer.json there)")
        self.tok = Tokenizer.from_file(self.tokenizer_path)
        pad, eos = self.tok.pad_id, self.tok.eos_id
        if pad is None or eos is None:
            raise LmlabError(f"{self.tokenizer_path}: needs [PAD] and an end token "
                             "(<|endoftext|>); make it with `lmlab parallel`")
        self.metric = cfg.metric or data_task_metric(data)
        self.pairs = {name: read_pairs(data / f"{name}.jsonl") for name in ("train", "val")}
        if not self.pairs["train"] or not self.pairs["val"]:
            raise LmlabError(f"{data}: the train and val splits must not be empty")
        self.ids = {}
        for name, pairs in self.pairs.items():
            src, tgt, cut = encode_pairs(self.tok, pairs, cfg.max_length, eos)
            self.ids[name] = (src, tgt)
            if cut and self.world.main:
                print(f"warning: {cut:,} of {len(pairs):,} {name} pairs have a side longer "
                      f"than --max-length {cfg.max_length} tokens; it was cut",
                      file=sys.stderr)
        self.model_config = cfg.model_config(self.tok.vocab_size, pad, eos)
        self._check_run_dir(Path(cfg.out), resume, overwrite)

        torch.manual_seed(cfg.seed)
        self.model = build_model(self.model_config).to(self.device)
        src, tgt = self.ids["train"]
        lengths = self.lengths(src, tgt)
        longest = max(lengths)
        if longest > cfg.max_tokens:
            raise LmlabError(f"--max-tokens {cfg.max_tokens} is below the longest pair "
                             f"({longest} tokens{' joined' if cfg.decoder_only else ''}); "
                             "raise it or lower --max-length")
        budget = cfg.max_tokens * self.world.size
        self.batches = EpochCursor(lambda g: token_budget_batches(lengths, budget, g),
                                   self.generator, min_rows=self.world.size)
        self.step_tokens = 0
        self._prepare(betas=(cfg.beta1, cfg.beta2))

    def lengths(self, src: Sequence[list[int]], tgt: Sequence[list[int]]) -> list[int]:
        """What each pair costs in a padded batch: its longer side, or both sides joined
        for a decoder-only model."""
        if self.cfg.decoder_only:
            return [len(s) + len(t) for s, t in zip(src, tgt, strict=True)]
        return pair_lengths(src, tgt)

    def target_loss(self, model: torch.nn.Module, src: Sequence[list[int]],
                    tgt: Sequence[list[int]], label_smoothing: float = 0.0
                    ) -> tuple[torch.Tensor, int]:
        """The summed teacher-forced cross-entropy of the N target tokens of a batch of
        pairs, and N. The output layer is not applied to padding, nor to a decoder-only
        model's source positions; the encoder-decoder's runs fused with the loss
        (``losses.linear_cross_entropy``, its final logits bias included)."""
        c = self.model_config
        if self.cfg.decoder_only:
            x, labels = collate_joined(src, tgt, self.tok.pad_id, self.device)
            target = labels != IGNORE  # (B, L)
            with autocast(self.cfg.dtype, self.device):
                logits = model(x, select=target)  # (N, V)
            return F.cross_entropy(logits.float(), labels[target], reduction="sum",
                                   label_smoothing=label_smoothing), int(target.sum())
        batch = collate_pairs(src, tgt, c.pad_token_id, c.decoder_start_token_id, self.device)
        with autocast(self.cfg.dtype, self.device):
            return pair_loss(model, *batch, label_smoothing, head=self.model)

    # -- the objective -----------------------------------------------------
    def lr_at(self, step: int) -> float:
        return lr_at(step, self.cfg)  # warm-up, then cosine decay (the fields it reads)

    def micro_batch_loss(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss per target token of the next batch. Under torchrun each process takes
        every world-size-th pair (a batch is sorted by length: interleaving gives every
        process pairs of all its lengths) and weighs its summed loss by the whole batch's
        token count, so that DDP's mean over processes is the loss one process would
        compute on the whole batch."""
        src, tgt = self.ids["train"]
        batch = self.batches.next()
        world = self.world
        mine = batch[world.rank::world.size]
        loss, _ = self.target_loss(self.net, [src[i] for i in mine], [tgt[i] for i in mine],
                                   self.cfg.label_smoothing)
        tokens = sum(len(tgt[i]) for i in batch)  # the whole batch's target tokens
        if index % self.grad_accum == 0:
            self.step_tokens = 0
        self.step_tokens += tokens
        return loss * world.size / tokens, {}

    def step_units(self) -> int:
        return self.step_tokens  # target tokens of the global batches of the step

    def row_extras(self) -> dict[str, Any]:
        return {"epoch": self.batches.epoch}

    @torch.no_grad()
    def score(self) -> dict[str, Any]:
        """Validation: target loss and perplexity (no smoothing), and BLEU / chrF (or ROUGE)
        of the first ``eval_sentences`` sources translated."""
        from lmlab.beam import BeamConfig, translate_ids
        from lmlab.metrics import rouge_scores, translation_scores

        model, cfg = self.model, self.cfg
        model.eval()
        src, tgt = self.ids["val"]
        lengths = self.lengths(src, tgt)
        order = sorted(range(len(src)), key=lambda i: lengths[i])
        nll, count = 0.0, 0
        for batch in cut_batches(order, lengths, cfg.max_tokens):
            loss, n = self.target_loss(model, [src[j] for j in batch], [tgt[j] for j in batch])
            nll += float(loss)
            count += n
        row: dict[str, Any] = {"loss": nll / count, "perplexity": math.exp(min(nll / count, 50))}
        n = min(cfg.eval_sentences, len(src))
        if n:
            beam = BeamConfig(num_beams=cfg.num_beams, max_new_tokens=cfg.max_length)
            with autocast(cfg.dtype, self.device):
                hyps = translate_ids(model, self.tok, src[:n], beam)
            refs = [p.tgt for p in self.pairs["val"][:n]]
            row.update(rouge_scores(hyps, refs) if self.metric == "rouge"
                       else translation_scores(hyps, refs))
            row["sentences"] = n
        return row

    def validate(self, step: int) -> tuple[dict[str, Any], str, bool]:
        row = self.score()
        message = f"step {step}: val loss {row['loss']:.4f}, ppl {row['perplexity']:.2f}"
        if "bleu" in row:
            message += (f", BLEU {row['bleu']:.2f}, chrF {row['chrf']:.2f} "
                        f"({row['sentences']} sentences)")
        elif "rougeL" in row:
            message += (f", ROUGE-1/2/L {row['rouge1']:.2f}/{row['rouge2']:.2f}/"
                        f"{row['rougeL']:.2f} ({row['sentences']} texts)")
        return row, message, False

    def data_hash(self) -> str:
        """What the batch indices of a checkpoint refer to: the training pairs' ids."""
        import hashlib

        src, tgt = self.ids["train"]
        return hashlib.sha256(repr((src, tgt)).encode()).hexdigest()[:16]

    def objective_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state, tensors = self.batches.state()
        return {**state, "data": self.data_hash()}, tensors

    def restore_objective(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if state.get("data") not in (None, self.data_hash()):
            raise LmlabError(f"{self.cfg.data}: its training pairs or tokenizer differ from "
                             f"those the run in {self.run_dir} was trained on; resume with "
                             "the same data, or start over with --overwrite")
        self.batches.restore(state, tensors)

    def tokenizer_file(self) -> Path:
        return self.tokenizer_path
