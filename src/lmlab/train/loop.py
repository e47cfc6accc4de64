"""Pretraining on the engine (``train/engine.py``): the causal and masked LM objectives.

Two objectives: ``clm`` trains a GPT to predict the next token; ``mlm`` trains
the BERT encoder to recover masked tokens (plus next-sentence prediction with
``nsp``), with its data, masking and metrics in ``train/mlm.py``. Batches are
drawn from the engine's sampler generator (the masking too), so exact resume
holds for both.

``clm`` also trains the classic LMs of ``models/rnn.py``, picked by preset
(``RNN_PRESETS``). A feed-forward LM reads random windows like the GPT, each
row with its ``context - 1`` tokens of history. A recurrent LM is trained by
truncated back-propagation through time (Williams & Peng 1990; Zaremba et
al. 2014): the training stream is cut into ``batch_size`` contiguous parts
read side by side (``stream_batch``), each step reads the next block of
every part, and the hidden state is carried from step to step, detached, so
gradients flow back ``block_size`` tokens while the state remembers further.
Which block a step reads is a pure function of the step, and the carried
state is saved in each checkpoint, so resume stays exact.

The schedule, accumulation, clipping, logging, checkpoints, Ctrl-C and
resume are the engine's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.evaluate import LMScore, score_tokens
from lmlab.models import weights
from lmlab.models.registry import build_model, family_of
from lmlab.models.rnn import State, detach_state, state_from_tensors, state_to_tensors
from lmlab.train import distributed
from lmlab.train.configs import TrainConfig
from lmlab.train.engine import Engine
from lmlab.train.mlm import (
    MLMData,
    MLMScore,
    MLMVocab,
    evaluate_mlm,
    fixed_batches,
    pretraining_losses,
)


def stream_batch(tokens: np.ndarray, batch_size: int, block_size: int,
                 index: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Micro-batch ``index`` of truncated BPTT: inputs x and targets y (B, T), int64, and
    whether it begins a new pass over the data (the carried state must then be reset).

    The stream of N tokens is cut into B parts of L = N // B tokens; row b of
    the batch reads part b, block k = index mod (L - 1) // T of it, so row b of
    one batch continues exactly where row b of the previous one ended.
    """
    B, T = batch_size, block_size
    L = len(tokens) // B
    per_pass = (L - 1) // T  # blocks per part; the last needs one more token as target
    if per_pass < 1:
        raise LmlabError(f"{len(tokens)} tokens are too few for {B} parallel streams of "
                         f"block_size {T} (+1 target token); lower batch_size or block_size")
    k = index % per_pass
    parts = tokens[:B * L].reshape(B, L)  # a view: row b is part b
    buf = torch.from_numpy(parts[:, k * T:k * T + T + 1].astype(np.int64))  # (B, T+1)
    return buf[:, :-1].contiguous(), buf[:, 1:].contiguous(), k == 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


class Trainer(Engine):
    """Pretraining on the engine: data, model and the LM objectives; ``fit`` runs the loop."""

    command = "pretrain"
    config_file = "train_config.json"
    run_files = ("metrics.jsonl", "tb", "loss.png")
    resume_keys = ("preset", "n_layer", "n_head", "n_embd", "block_size", "batch_size",
                   "grad_accum", "seed", "objective", "nsp", "mask_prob", "whole_word_mask")

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
                 progress: bool = True) -> None:
        from lmlab.data.shards import TokenShards
        from lmlab.tokenizer import Tokenizer

        self.cfg = cfg
        self._join(progress)
        # Every process draws the same global batch of batch_size x world_size rows from
        # the same sampler and keeps its own rows: N processes step as one with N x B.
        self.global_batch = cfg.batch_size * self.world.size
        self.total_steps = cfg.max_steps
        data = Path(cfg.data)
        self.train_data = TokenShards(data, "train")
        self.val_data = TokenShards(data, "val")
        self.tokenizer_path = data / "tokenizer.json"
        tokenizer = Tokenizer.from_file(self.tokenizer_path)
        self.train_data.check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        if cfg.objective == "mlm":
            # Checked before the run folder is touched: a BPE/char tokenizer has no [MASK].
            self.mlm_vocab = MLMVocab.from_tokenizer(tokenizer, whole_word=cfg.whole_word_mask,
                                                     nsp=cfg.nsp)
            self.model_config = cfg.model_config(tokenizer.vocab_size, self.mlm_vocab.pad_id)
        else:
            self.model_config = cfg.model_config(tokenizer.vocab_size)
        self.block = self.model_config.block_size
        self.batches = family_of(self.model_config).batches
        if self.batches == "streams":
            self.train_tokens = self.train_data.tokens()  # read in order, not by random windows
            if len(self.train_tokens) // self.global_batch <= self.block:
                raise LmlabError(
                    f"{data}: the training split has {len(self.train_tokens):,} tokens, too "
                    f"few for {self.global_batch} parallel streams (--batch-size "
                    f"{cfg.batch_size} x {self.world.size} processes) of --block-size "
                    f"{self.block} (+1); lower one of them")
        self.val_tokens = self.val_data.tokens()
        if len(self.val_tokens) < 2:
            raise LmlabError(f"{data}: the validation split has {len(self.val_tokens)} tokens; "
                             "rebuild the corpus with more documents or a larger --val-fraction")
        self._check_run_dir(Path(cfg.out), resume, overwrite)

        # A recurrent model's hidden state, carried from micro-batch to micro-batch.
        self.carry: State | None = None
        torch.manual_seed(cfg.seed)
        self.model = build_model(self.model_config, nsp=cfg.nsp).to(self.device)
        if cfg.objective == "mlm":
            self._setup_mlm()
        # BERT's pooler serves only NSP: without NSP its weights get no gradient.
        self._prepare(ddp_options={"find_unused_parameters": cfg.objective == "mlm"
                                   and not cfg.nsp}, betas=(cfg.beta1, cfg.beta2))

    # -- masked LM -------------------------------------------------------
    def _setup_mlm(self) -> None:
        """Masked-LM data for both splits and the fixed validation batches."""
        cfg, vocab = self.cfg, self.mlm_vocab
        options = dict(nsp=cfg.nsp, mask_prob=cfg.mask_prob, whole_word=cfg.whole_word_mask)
        self.mlm_train = MLMData(self.train_data, vocab, self.block, **options)
        mlm_val = MLMData(self.val_data, vocab, self.block, **options)
        # A fixed set (own seed, masked once) so validation numbers compare across
        # steps; about eval_tokens tokens, but no more than the split holds.
        per_batch = cfg.batch_size * self.block
        n = max(1, min(cfg.eval_tokens, self.val_data.num_tokens) // per_batch)
        self.val_batches = [b.map(lambda t: t.to(self.device)) for b in
                            fixed_batches(mlm_val, n, cfg.batch_size, seed=cfg.seed + 1)]
        self.most_frequent_id = self.mlm_train.most_frequent_token()

    # -- the objective -----------------------------------------------------
    def lr_at(self, step: int) -> float:
        return lr_at(step, self.cfg)

    def step_units(self) -> int:
        return self.global_batch * self.grad_accum * self.block

    def micro_batch_loss(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of micro-batch ``index`` of the run, and its parts (mlm only).

        Batches come from the sampler generator, except a recurrent model's,
        which are the next blocks of its parallel streams (``stream_batch``).
        """
        cfg = self.cfg
        if self.batches == "streams":
            x, y, new_pass = stream_batch(self.train_tokens, self.global_batch, self.block,
                                          index)
            x, y = self._mine(x), self._mine(y)
            with autocast(cfg.dtype, self.device):
                logits, carry = self.net(x, None if new_pass else self.carry)  # (B, T, V)
            self.carry = detach_state(carry)
            return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()), {}
        if self.batches == "windows+past":
            # Each row comes with the context - 1 tokens before it, so its first
            # positions read a full window too.
            past = self.model_config.context - 1
            x, y = self._sample(self.block + past)  # (B, past + T)
            with autocast(cfg.dtype, self.device):
                logits, _ = self.net(x[:, past:], x[:, :past])  # (B, T, V)
            return F.cross_entropy(logits.float().flatten(0, 1), y[:, past:].flatten()), {}
        if self.batches == "masked":
            batch = self.mlm_train.sample(self.global_batch, self.generator).map(self._mine)
            with autocast(cfg.dtype, self.device):
                mlm, nsp, _, _ = pretraining_losses(self.net, batch)
            if nsp is None:
                return mlm, {"mlm_loss": mlm}
            # BERT's objective: the sum of the two mean losses.
            return mlm + nsp, {"mlm_loss": mlm, "nsp_loss": nsp}
        x, y = self._sample(self.block)
        with autocast(cfg.dtype, self.device):
            logits = self.net(x)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()), {}

    def _mine(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch tensor, on its device."""
        if self.world.distributed:
            t = t[self.world.rows(self.cfg.batch_size)]
        return t.to(self.device)

    def _sample(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows x, y (B, T): this process's rows of the global batch."""
        rows = self.world.rows(self.cfg.batch_size) if self.world.distributed else None
        x, y = self.train_data.sample_batch(self.global_batch, T, self.generator, rows=rows)
        return x.to(self.device), y.to(self.device)

    @torch.no_grad()
    def score(self) -> LMScore | MLMScore:
        """The model's validation score: loss, perplexity and bits per byte (masked-token
        accuracy too for mlm)."""
        if self.cfg.objective == "mlm":
            with autocast(self.cfg.dtype, self.device):
                return evaluate_mlm(self.model, self.val_batches, self.most_frequent_id)
        # A GPT is scored in windows of its context; a feed-forward or recurrent LM
        # reads batch_size parallel streams, carrying its state (``score_stream``).
        with autocast(self.cfg.dtype, self.device):
            nll, count = score_tokens(self.model, self.val_tokens, batch_size=self.cfg.batch_size,
                                      max_tokens=self.cfg.eval_tokens)
        # Bytes of the scored targets, from the split's average bytes per token.
        return LMScore(nll, count, round(count * self.val_data.bytes_per_token))

    def validate(self, step: int) -> tuple[dict[str, Any], str, bool]:
        score = self.score()
        if isinstance(score, MLMScore):
            message = f"step {step}: {score.summary()}"
        else:
            message = (f"step {step}: val loss {score.loss:.4f}, ppl {score.perplexity:.2f}, "
                       f"bpb {score.bits_per_byte:.4f}")
        return score.to_dict(), message, False

    def objective_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        # Every process's streams, side by side (dim 1 is the batch of a hidden state).
        world, device = self.world, self.device
        return {}, {k: torch.cat(distributed.gather(v, world, device), dim=1).cpu()
                    for k, v in state_to_tensors(self.carry).items()}

    def restore_objective(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        rows = self.world.rows(self.cfg.batch_size)
        self.carry = state_from_tensors({
            k: (v[:, rows] if self.world.distributed else v).to(self.device)
            for k, v in tensors.items()})

    def check_resume(self, path: Path) -> None:
        """Shards made with another tokenizer than the run's: say so, before any shapes clash."""
        from lmlab.tokenizer import Tokenizer

        file = path / weights.CONFIG_FILE
        try:
            vocab = json.loads(file.read_text(encoding="utf-8"))["vocab_size"]
        except FileNotFoundError:
            raise self._damaged(file, "missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise self._damaged(file, f"damaged ({type(e).__name__}: {e})") from None
        ours = self.model_config.vocab_size
        if vocab != ours:
            raise LmlabError(
                f"{self.cfg.data}: these shards were made with a different tokenizer (vocab "
                f"size {ours:,}) than the run in {self.run_dir} (vocab size {vocab:,}); resume "
                "with the shards the run was trained on, or start a new run (--overwrite or "
                "another --out)")
        tok_file = path / weights.TOKENIZER_FILE
        if tok_file.is_file():
            try:
                same = Tokenizer.from_file(tok_file).sha256 == self.tokenizer.sha256
            except LmlabError as e:
                raise self._damaged(tok_file, f"damaged ({e})") from None
            if not same:
                raise LmlabError(
                    f"{self.cfg.data}: these shards were made with a different tokenizer than "
                    f"the run in {self.run_dir} (both have vocab size {ours:,}, but "
                    f"{self.tokenizer_path} differs from {tok_file}); resume with the shards "
                    "the run was trained on, or start a new run (--overwrite or another --out)")

    def tokenizer_file(self) -> Path:
        return self.tokenizer_path

