"""The training loop: setup, then fit, with validation and checkpoints, in plain code.

Exact resume: the batch sampler draws only from its own ``torch.Generator``,
dropout only from torch's global generator, and both states are saved with
the weights and the AdamW moments. The learning rate is a pure function of the
step. A run killed at any point and resumed from its last checkpoint therefore
ends bit-identical to an uninterrupted run with the same seed (same machine,
same thread count).

Two objectives share the loop: ``clm`` trains a GPT to predict the next token;
``mlm`` trains the BERT encoder to recover masked tokens (plus next-sentence
prediction with ``nsp``), with its data, masking and metrics in ``train/mlm.py``.
The masking draws from the same sampler generator as the batches, so exact
resume holds for both.

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

Ctrl-C asks the loop to stop (``StopOnInterrupt``): the step under way ends,
a checkpoint of that step is saved (atomically, like every checkpoint), the
``--resume`` command is printed and KeyboardInterrupt is raised; a second
Ctrl-C stops at once, leaving the last complete checkpoint. A run that fails
or is stopped before its first checkpoint removes the run folder it created
(never one that was there before), so no folder without a checkpoint looks
like a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.atomic import missing_root, write_text
from lmlab.config import BERT_PRESETS, PRESETS, RNN_PRESETS, ModelConfig, RNNConfig
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.evaluate import LMScore, score_tokens
from lmlab.models import weights
from lmlab.models.registry import build_model, config_from_preset, family_of
from lmlab.models.rnn import State, detach_state, state_from_tensors, state_to_tensors
from lmlab.runs import MetricsLogger, plot_loss
from lmlab.train import checkpoint as ckpt
from lmlab.train import distributed
from lmlab.train.mlm import (
    MLMData,
    MLMScore,
    MLMVocab,
    evaluate_mlm,
    fixed_batches,
    pretraining_losses,
)


@dataclass
class TrainConfig:
    """Everything that defines a pretraining run (saved as train_config.json)."""

    data: str  # a folder made by `lmlab prepare`
    out: str  # the run folder
    preset: str | None = None  # default: gpt-mini for clm, bert-mini for mlm
    # Overrides of the preset. For the classic (RNN_PRESETS) models: n_layer is the
    # stacked recurrent layers (ffnn: tanh layers); n_embd the embedding width, with
    # the hidden width keeping the preset's ratio to it (equal for rnn/lstm/gru);
    # block_size the BPTT length (ffnn: positions per row); n_head does not apply.
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    dropout: float | None = None  # default: the preset's (0 for GPT, 0.1 for BERT)
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float | None = None  # default lr / 10
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_tokens: int = 131072  # validation tokens scored at each evaluation
    checkpoint_interval: int | None = None  # default: eval_interval
    seed: int = 1337
    dtype: Literal["float32", "bfloat16"] = "float32"
    compile: bool = False
    threads: int | None = None
    device: str = "auto"  # auto: cuda when available, else cpu
    fsdp: bool = False  # under torchrun: shard the model with FSDP2 instead of DDP
    objective: Literal["clm", "mlm"] = "clm"  # causal LM (GPT) or masked LM (BERT)
    nsp: bool = False  # mlm: add BERT's next-sentence prediction
    mask_prob: float = 0.15  # mlm: share of tokens selected for prediction
    whole_word_mask: bool = False  # mlm: select whole words, not single tokens

    def __post_init__(self) -> None:
        if self.objective not in ("clm", "mlm"):
            raise LmlabError(f"objective must be 'clm' or 'mlm', not {self.objective!r}")
        if self.preset is None:
            self.preset = "bert-mini" if self.objective == "mlm" else "gpt-mini"
        lm_presets = f"GPT: {', '.join(PRESETS)}; classic: {', '.join(_LM_RNN_PRESETS)}"
        if self.objective == "mlm" and self.preset in PRESETS:
            raise LmlabError(f"preset {self.preset!r} is a GPT (decoder) preset; masked-LM "
                             f"pretraining needs an encoder preset: {', '.join(BERT_PRESETS)}")
        if self.objective == "mlm" and self.preset in RNN_PRESETS:
            raise LmlabError(f"preset {self.preset!r} is a classic left-to-right LM preset; "
                             "masked-LM pretraining needs an encoder preset: "
                             f"{', '.join(BERT_PRESETS)}")
        if self.objective == "clm" and self.preset in BERT_PRESETS:
            raise LmlabError(f"preset {self.preset!r} is a BERT (encoder) preset, which cannot "
                             "be trained as a causal LM; use --objective mlm, or a causal LM "
                             f"preset ({lm_presets})")
        if self.objective == "clm" and self.preset not in PRESETS | RNN_PRESETS:
            raise LmlabError(f"unknown preset {self.preset!r}; choose one of ({lm_presets})")
        if self.preset in RNN_PRESETS:
            if RNN_PRESETS[self.preset].get("bidirectional"):
                raise LmlabError(f"preset {self.preset!r} is a bidirectional text encoder (for "
                                 "`lmlab finetune`), not a language model; choose one of "
                                 f"{', '.join(_LM_RNN_PRESETS)}")
            if self.n_head is not None:
                raise LmlabError(f"preset {self.preset!r} has no attention heads; drop --n-head")
        if self.objective == "clm" and (self.nsp or self.whole_word_mask):
            raise LmlabError("--nsp and --whole-word-mask apply to --objective mlm only")
        # Checked here, before any folder is made: a 0 would otherwise surface later
        # as a misleading error (--max-steps 0: "not a checkpoint"; --block-size 0: NaN).
        for name, lo in (("n_layer", 1), ("n_head", 1), ("n_embd", 1), ("block_size", 1),
                         ("batch_size", 1), ("grad_accum", 1), ("max_steps", 1),
                         ("warmup_steps", 0), ("eval_interval", 1), ("eval_tokens", 1),
                         ("checkpoint_interval", 1), ("threads", 1)):
            check_range(name, getattr(self, name), lo)
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("min_lr", self.min_lr, 0)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("grad_clip", self.grad_clip, 0, lo_open=True)
        check_range("dropout", self.dropout, 0, 1, hi_open=True)
        check_range("beta1", self.beta1, 0, 1, hi_open=True)
        check_range("beta2", self.beta2, 0, 1, hi_open=True)
        check_range("mask_prob", self.mask_prob, 0, 1, lo_open=True, hi_open=True)

    def model_config(self, vocab_size: int,
                     pad_token_id: int = 0) -> ModelConfig:
        assert self.preset is not None  # set by __post_init__
        if self.preset in RNN_PRESETS:
            base = RNNConfig.from_name(self.preset)
            n_hidden = None
            if self.n_embd is not None:
                n_hidden = max(1, round(self.n_embd * base.n_hidden / base.n_embd))
            return RNNConfig.from_name(
                self.preset, vocab_size=vocab_size, n_layer=self.n_layer, n_embd=self.n_embd,
                n_hidden=n_hidden, block_size=self.block_size, dropout=self.dropout)
        extra = ({"attn_dropout": self.dropout, "pad_token_id": pad_token_id}
                 if self.objective == "mlm" else {})
        return config_from_preset(
            self.preset, self.objective, vocab_size=vocab_size, n_layer=self.n_layer,
            n_head=self.n_head, n_embd=self.n_embd, block_size=self.block_size,
            dropout=self.dropout, **extra)


def check_range(name: str, value: float | None, lo: float, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Refuse a config value out of range, naming its flag (``--max-steps``); None passes."""
    if value is None:
        return
    ok = not (isinstance(value, float) and math.isnan(value))
    ok = ok and (value > lo if lo_open else value >= lo)
    if hi is not None:
        ok = ok and (value < hi if hi_open else value <= hi)
    if ok:
        return
    if hi is None:
        bound = f"{'greater than' if lo_open else 'at least'} {lo:g}"
    else:
        bound = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    raise LmlabError(f"{flag(name)} must be {bound}, got {value}")


def flag(name: str) -> str:
    """The command-line flag of a config field: ``max_steps`` -> ``--max-steps``."""
    return "--" + name.replace("_", "-")


def _flag_words(name: str, value: Any) -> str:
    """A setting as the user would type it: ``--batch-size 8``, ``--nsp``, ``--no-nsp``."""
    if isinstance(value, bool):
        return flag(name) if value else "--no-" + flag(name)[2:]
    return f"{flag(name)} {value}"


def _with(name: str, value: Any) -> str:
    """``with --batch-size 8``, or ``without --n-layer`` for a setting left to the preset."""
    return f"without {flag(name)}" if value is None else f"with {_flag_words(name, value)}"


# The classic presets that are language models (not bidirectional encoders).
_LM_RNN_PRESETS = [name for name, p in RNN_PRESETS.items() if not p.get("bidirectional")]


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


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with weight decay on matrices only (not on
    norms, biases or gains): pretraining and fine-tuning both build theirs here."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # The fused kernel does the whole update in one pass per tensor (CPU too, torch >= 2.4).
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


class _NoLog:
    """The metrics log of a process other than rank 0, which writes nothing."""

    path = None

    def log(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """Holds model, optimizer, data and run folder; ``fit`` runs the loop."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
                 progress: bool = True) -> None:
        from lmlab.data.shards import TokenShards
        from lmlab.tokenizer import Tokenizer

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # Under torchrun: this process's rank among the others, and its own device.
        if cfg.fsdp and not distributed.launched():
            raise LmlabError("--fsdp shards the model across processes: launch the run with "
                             "torchrun --nproc_per_node N (N > 1)")
        self.world, self.device = distributed.join(cfg.device)
        if cfg.fsdp and not self.world.distributed:
            raise LmlabError("--fsdp needs more than one process (torchrun --nproc_per_node "
                             "N, N > 1)")
        self.progress = progress and self.world.main
        # Every process draws the same global batch of batch_size x world_size rows from
        # the same sampler and keeps its own rows: N processes step as one with N x B.
        self.global_batch = cfg.batch_size * self.world.size
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
        self.run_dir = Path(cfg.out)
        has_run = (self.run_dir / "checkpoints" / "latest").exists()
        if resume and not has_run:
            raise LmlabError(f"{self.run_dir}: nothing to resume (no checkpoints/latest); "
                             "drop --resume to start a new run")
        if has_run and not resume and not overwrite:
            raise LmlabError(f"{self.run_dir}: already holds a run; pass --resume to "
                             "continue it, --overwrite to start over, or another --out")

        self.start_step = 0
        self.step = 0  # the step being trained: a recurrent model's blocks depend on it
        # A recurrent model's hidden state, carried from micro-batch to micro-batch.
        self.carry: State | None = None
        # Train losses since the last logged row (a checkpoint keeps them, so a resumed
        # run logs the same means as an uninterrupted one).
        self.pending: dict[str, Any] = {"losses": [], "parts": {}}
        state: dict[str, Any] | None = None
        if resume:
            state = self._load_resume_state()
        else:
            torch.manual_seed(cfg.seed)
        self.model = build_model(self.model_config, nsp=cfg.nsp).to(self.device)
        if state is not None:
            self._restore_weights(state)  # whole, before any sharding
        elif self.world.distributed:
            torch.manual_seed(cfg.seed + self.world.rank)  # its own dropout masks
        self.ddp: torch.nn.Module | None = None
        net: torch.nn.Module = self.model
        if cfg.fsdp:
            distributed.shard(self.model, self.world, self.device)
        elif self.world.distributed:
            # BERT's pooler serves only NSP: without NSP its weights get no gradient.
            self.ddp = net = distributed.data_parallel(
                self.model, self.device,
                find_unused_parameters=cfg.objective == "mlm" and not cfg.nsp)
        self.compiled = torch.compile(net) if cfg.compile else net
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay,
                                        (cfg.beta1, cfg.beta2))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        if state is not None:
            self._restore(state)
        self.val_tokens = self.val_data.tokens()
        if len(self.val_tokens) < 2:
            raise LmlabError(f"{data}: the validation split has {len(self.val_tokens)} tokens; "
                             "rebuild the corpus with more documents or a larger --val-fraction")
        # Masked-LM losses of the last step, by part (empty for clm), for the train rows.
        self.step_parts: dict[str, float] = {}
        if cfg.objective == "mlm":
            self._setup_mlm()
        # Only now, with every input checked, is the run folder made (or an old run in
        # it replaced); a folder made here goes again if no checkpoint follows. Only
        # rank 0 writes the run folder.
        self.made_dir = None
        self.logger: MetricsLogger | _NoLog = _NoLog()
        if self.world.main:
            self.made_dir = self._start_run_dir(replace=has_run and not resume)
            try:
                write_text(self.run_dir / "train_config.json",
                           json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
                self.logger = self._open_logger(self.start_step if resume else None)
            except BaseException:
                self._discard_run()
                raise

    # -- the run folder ----------------------------------------------------
    # What a run writes beside its checkpoints: removed with them when a run stops
    # before its first checkpoint in a folder that was there before.
    _RUN_FILES = ("train_config.json", "metrics.jsonl", "tb", "loss.png")

    def _start_run_dir(self, replace: bool) -> Path | None:
        """Make the run folder (clearing the old run when ``replace``); return the
        outermost folder this made, or None when the run folder was already there."""
        made = missing_root(self.run_dir)
        if replace:
            for name in ("checkpoints", "tb"):
                shutil.rmtree(self.run_dir / name, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return made

    def _discard_run(self) -> None:
        """After a failure: unless a checkpoint exists, leave nothing that looks like a run.

        A folder this run made is removed whole; in one that was already there,
        only what this run wrote goes.
        """
        if (self.run_dir / "checkpoints" / "latest").exists() or not self.world.main:
            return
        if self.made_dir is not None:
            shutil.rmtree(self.made_dir, ignore_errors=True)
            print(f"warning: removed {self.made_dir}: the run stopped before its first "
                  "checkpoint", file=sys.stderr)
            return
        for name in (*self._RUN_FILES, "checkpoints"):
            p = self.run_dir / name
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()

    def _open_logger(self, resume_step: int | None) -> MetricsLogger:
        try:
            return MetricsLogger(self.run_dir, resume_step=resume_step)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LmlabError(f"{self.run_dir / 'metrics.jsonl'}: damaged ({e}); fix or delete "
                             "the file to resume") from None

    def resume_command(self) -> str:
        """The command line that continues this run: `lmlab pretrain DATA --out RUN ...
        --resume`, with every setting that differs from the defaults."""
        cfg = self.cfg
        default = TrainConfig(data=cfg.data, out=cfg.out, objective=cfg.objective)
        words = ["lmlab", "pretrain", cfg.data, "--out", cfg.out]
        if self.world.distributed:
            words[:1] = [*self.world.launcher().split(), "-m", "lmlab"]
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f.name in ("data", "out") or value is None or value == getattr(default, f.name):
                continue
            words += _flag_words(f.name, value).split(" ")
        return shlex.join([*words, "--resume"])

    # -- resume ------------------------------------------------------------
    # Settings a resumed run must share with the run it continues.
    RESUME_KEYS = ("preset", "n_layer", "n_head", "n_embd", "block_size", "batch_size",
                   "grad_accum", "seed", "objective", "nsp", "mask_prob", "whole_word_mask")

    def _damaged(self, path: Path, what: str) -> LmlabError:
        """An error naming a damaged checkpoint file, with the ways to go on."""
        ckpt_dir = path.parent
        earlier = sorted(p.name for p in ckpt_dir.parent.glob("step-*")
                         if p.is_dir() and p.name < ckpt_dir.name)
        back = (f"write {earlier[-1]} into {ckpt_dir.parent / 'latest'} to resume from that "
                "earlier checkpoint, or " if earlier else "")
        return LmlabError(f"{path}: {what}; cannot resume from {ckpt_dir.name}; {back}start "
                          "over with --overwrite")

    def _load_resume_state(self) -> dict[str, Any]:
        path = weights.resolve_checkpoint(self.run_dir)
        file = path / ckpt.STATE_FILE
        if not file.is_file():
            raise self._damaged(file, "missing (this checkpoint holds weights only)")
        try:
            state = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._damaged(file, f"damaged, not valid JSON ({e})") from None
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) \
                or not isinstance(state.get("optimizer"), dict):
            raise self._damaged(file, "incomplete (no step or optimizer state)")
        self._check_tokenizer(path)
        saved = state.get("train_config", {})
        if not isinstance(saved, dict):
            raise self._damaged(file, "incomplete (train_config is not an object)")
        was = state.get("world_size", 1)
        if was != self.world.size:
            # Each process's rows and random state come from the world size.
            then = distributed.World(size=was, local_size=state.get("local_world_size", was))
            raise LmlabError(
                f"{self.run_dir}: cannot resume with {self.world.size} process(es): the run "
                f"was trained with {was} (world_size in {file}); resume it with "
                f"{then.launcher() if was > 1 else 'one process'}, "
                "or start over with --overwrite")
        # Pretraining could use only the CPU before --device: such a run was on the CPU.
        trained_on = state.get("device", "cpu")
        if trained_on != self.device.type and self.world.main:
            print(f"warning: the run was trained on {trained_on} and resumes on "
                  f"{self.device.type}: it goes on, but not bit-identically to an "
                  f"uninterrupted run (--device {trained_on} resumes exactly)",
                  file=sys.stderr)
        for key in self.RESUME_KEYS:
            if key in saved and saved[key] != getattr(self.cfg, key):
                now, then = _with(key, getattr(self.cfg, key)), _with(key, saved[key])
                raise LmlabError(
                    f"{self.run_dir}: cannot resume {now}: the run was started {then} ({key} "
                    f"in {file}); resume {then}, or start over with --overwrite")
        state["path"] = str(path)
        return state

    def _check_tokenizer(self, path: Path) -> None:
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

    def _read(self, file: Path, what: str) -> dict[str, torch.Tensor]:
        try:
            return weights.read_tensors(file, what=what)
        except LmlabError as e:
            raise self._damaged(file, str(e).removeprefix(f"{file}: ")) from None

    def _restore_weights(self, state: dict[str, Any]) -> None:
        file = Path(state["path"]) / weights.MODEL_FILE
        weights.load_weights(self.model, self._read(file, "model weights"), file)

    def _restore(self, state: dict[str, Any]) -> None:
        """The optimizer, the random states and the carried state of the checkpoint."""
        path = Path(state["path"])
        optim_file = path / ckpt.OPTIM_FILE
        tensors = self._read(optim_file, "optimizer state")
        try:
            ckpt.load_optimizer(self.optimizer, tensors, state["optimizer"])
            self.generator.set_state(tensors["rng.sampler"])
            rank = self.world.rank
            torch.set_rng_state(tensors["rng.torch" if rank == 0 else f"rng.torch.rank{rank}"])
            if self.device.type == "cuda" and "rng.cuda" in tensors:
                torch.cuda.set_rng_state(tensors["rng.cuda" if rank == 0 else
                                                 f"rng.cuda.rank{rank}"], self.device)
        except KeyError as e:
            raise self._damaged(optim_file, f"incomplete (no {e.args[0]})") from None
        except (ValueError, RuntimeError, TypeError) as e:
            raise self._damaged(optim_file, f"does not match the model ({e})") from None
        try:
            # A distributed run saved every process's streams side by side (dim 1).
            rows = self.world.rows(self.cfg.batch_size)
            self.carry = state_from_tensors({
                k.removeprefix("carry."): (v[:, rows] if self.world.distributed else v)
                .to(self.device) for k, v in tensors.items() if k.startswith("carry.")})
        except (KeyError, ValueError) as e:
            raise self._damaged(optim_file, f"damaged carried state ({e})") from None
        pending = state.get("pending")
        if isinstance(pending, dict):
            self.pending = {"losses": list(pending.get("losses", [])),
                            "parts": dict(pending.get("parts", {}))}
        self.start_step = state["step"]
        if self.world.main:
            print(f"resuming from {path} at step {self.start_step}", file=sys.stderr)

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

    # -- one step ----------------------------------------------------------
    def _micro_batch_loss(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
                logits, carry = self.compiled(x, None if new_pass else self.carry)  # (B, T, V)
            self.carry = detach_state(carry)
            return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()), {}
        if self.batches == "windows+past":
            # Each row comes with the context - 1 tokens before it, so its first
            # positions read a full window too.
            past = self.model_config.context - 1
            x, y = self._sample(self.block + past)  # (B, past + T)
            with autocast(cfg.dtype, self.device):
                logits, _ = self.compiled(x[:, past:], x[:, :past])  # (B, T, V)
            return F.cross_entropy(logits.float().flatten(0, 1), y[:, past:].flatten()), {}
        if self.batches == "masked":
            batch = self.mlm_train.sample(self.global_batch, self.generator).map(self._mine)
            with autocast(cfg.dtype, self.device):
                mlm, nsp, _, _ = pretraining_losses(self.compiled, batch)
            if nsp is None:
                return mlm, {"mlm_loss": mlm}
            # BERT's objective: the sum of the two mean losses.
            return mlm + nsp, {"mlm_loss": mlm, "nsp_loss": nsp}
        x, y = self._sample(self.block)
        with autocast(cfg.dtype, self.device):
            logits = self.compiled(x)  # (B, T, V)
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

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step (number ``step``, from 0): the learning rate of the schedule,
        forward and backward over the micro-batches, the NaN check, gradient clipping and
        the AdamW update. Returns the loss (the mean over processes) and the gradient
        norm before clipping. ``fit`` adds validation, logging and checkpoints."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        self.step = step
        loss = self._train_step()
        if not math.isfinite(loss):
            raise LmlabError(
                f"step {step}: training loss is {loss}; try a lower --lr (now {cfg.lr:g}), "
                "--dtype float32, or check the data for empty or corrupt shards")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, float(norm)

    def _train_step(self) -> float:
        cfg = self.cfg
        loss_sum = 0.0
        part_sums: dict[str, float] = {}
        for i in range(cfg.grad_accum):
            # DDP averages the gradients across processes in the last micro-batch's
            # backward only; the others accumulate locally.
            last = i == cfg.grad_accum - 1
            if cfg.fsdp:
                self.model.set_requires_gradient_sync(last)
            with (self.ddp.no_sync() if self.ddp is not None and not last
                  else contextlib.nullcontext()):
                loss, parts = self._micro_batch_loss(self.step * cfg.grad_accum + i)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.item()
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + v.item()
        # Logged (and NaN-checked) as the mean over processes: the loss of the global batch.
        mean = distributed.mean
        self.step_parts = {k: mean(v / cfg.grad_accum, self.world, self.device)
                           for k, v in part_sums.items()}
        return mean(loss_sum / cfg.grad_accum, self.world, self.device)

    @torch.no_grad()
    def validate(self) -> LMScore | MLMScore:
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

    def save(self, step: int) -> Path:
        """Checkpoint ``step`` (every process calls it; rank 0 writes)."""
        world, device = self.world, self.device
        rng = {"sampler": self.generator.get_state()}
        # Each process's own random state (dropout), and its streams' carried state.
        for name, state in (("torch", torch.get_rng_state()),
                            ("cuda", torch.cuda.get_rng_state(device)
                             if device.type == "cuda" else None)):
            if state is not None:
                for r, s in enumerate(distributed.gather(state, world, device)):
                    rng[name if r == 0 else f"{name}.rank{r}"] = s
        carry = {k: torch.cat(distributed.gather(v, world, device), dim=1).cpu()
                 for k, v in state_to_tensors(self.carry).items()}
        path = self.run_dir / "checkpoints" / f"step-{step:06d}"
        model_tensors, optimizer = None, self.optimizer
        if self.cfg.fsdp:  # gathered whole, so that the checkpoint loads in one process
            model_tensors = {k: distributed.full_tensor(v)
                             for k, v in weights.model_state(self.model).items()}
            optimizer = distributed.full_optimizer_state(self.optimizer)
        if world.main:
            state = {"train_config": dataclasses.asdict(self.cfg), "pending": self.pending,
                     "world_size": world.size, "local_world_size": world.local_size,
                     "device": self.device.type}
            path = ckpt.save_checkpoint(self.run_dir, step, self.model, self.tokenizer_path,
                                        optimizer, state, rng, carry_tensors=carry,
                                        model_tensors=model_tensors)
        distributed.barrier(world)
        return path

    # -- the loop ----------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        ckpt_every = cfg.checkpoint_interval or cfg.eval_interval
        tokens_per_step = self.global_batch * cfg.grad_accum * self.block
        self.model.train()
        bar = None
        if self.progress:
            from lmlab.progress import progress_bar

            bar = progress_bar(total=cfg.max_steps, initial=self.start_step, desc="pretrain",
                               unit="step")
        last: dict[str, Any] = {}
        # Train rows are logged every 10 steps with the mean loss since the last row.
        t_last, tok_since = time.perf_counter(), 0
        losses: list[float] = self.pending["losses"]
        parts: dict[str, float] = self.pending["parts"]  # sums of the loss parts (mlm)
        t_start = time.perf_counter()
        step = self.start_step
        saved = -1  # the step of the last checkpoint this run wrote
        stop = StopOnInterrupt()
        try:
            with stop:
                while step < cfg.max_steps:
                    lr = lr_at(step, cfg)
                    loss, norm = self.train_step(step)
                    step += 1
                    tok_since += tokens_per_step
                    losses.append(loss)
                    for k, v in self.step_parts.items():
                        parts[k] = parts.get(k, 0.0) + v
                    now = time.perf_counter()
                    if step % 10 == 0 or step == cfg.max_steps:
                        tps = tok_since / max(now - t_last, 1e-9)
                        mean_loss = sum(losses) / len(losses)
                        mean_parts = {k: v / len(losses) for k, v in parts.items()}
                        t_last, tok_since = now, 0
                        losses.clear()
                        parts.clear()
                        row = {"step": step, "split": "train", "loss": mean_loss, **mean_parts,
                               "lr": lr, "grad_norm": float(norm), "tokens_per_s": tps,
                               "elapsed_s": now - t_start}
                        self.logger.log(row)
                        if bar:
                            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tps:,.0f}",
                                            lr=f"{lr:.2e}", refresh=False)
                    if bar:
                        bar.update(1)
                    # A sharded model runs only with every process taking part.
                    if (self.world.main or cfg.fsdp) and (step % cfg.eval_interval == 0
                                                          or step == cfg.max_steps):
                        score = self.validate()
                        last = {"step": step, "split": "val", **score.to_dict()}
                        self.logger.log(last)
                        if bar and isinstance(score, MLMScore):
                            bar.write(f"step {step}: {score.summary()}")
                        elif bar:
                            bar.write(f"step {step}: val loss {score.loss:.4f}, "
                                      f"ppl {score.perplexity:.2f}, "
                                      f"bpb {score.bits_per_byte:.4f}")
                        if self.world.main:
                            plot_loss(self.logger.path, self.run_dir / "loss.png")
                    if step % ckpt_every == 0 or step == cfg.max_steps:
                        self.save(step)
                        saved = step
                    # All processes stop at the same step, whichever got the Ctrl-C.
                    if distributed.any_true(stop.requested, self.world, self.device) \
                            and step < cfg.max_steps:
                        # Ctrl-C: the step has ended, so its state is whole; keep it.
                        stop.requested = True
                        if saved != step:
                            self.save(step)
                            saved = step
                        raise KeyboardInterrupt
        except BaseException as e:
            if bar:
                bar.close()
                bar = None
            if self.world.main:
                self._report_stop(e, step, stopped=stop.requested and saved == step)
            raise
        finally:
            if bar:
                bar.close()
            self.logger.close()
        distributed.barrier(self.world)  # rank 0's last checkpoint is complete
        return {"step": step, "val": last, "run_dir": str(self.run_dir),
                "checkpoint": str(weights.resolve_checkpoint(self.run_dir)),
                "plot": str(self.run_dir / "loss.png"), "params": self.model.num_params(),
                "train_seconds": time.perf_counter() - t_start}

    def _report_stop(self, e: BaseException, step: int, stopped: bool) -> None:
        """After training ended early: say where to resume from, or discard a run that
        has no checkpoint (``stopped``: the loop saved step ``step`` on Ctrl-C)."""
        latest = self.run_dir / "checkpoints" / "latest"
        if not latest.exists():
            self._discard_run()
            return
        if not isinstance(e, KeyboardInterrupt):
            return  # an error: the CLI reports it; the last checkpoint stays resumable
        if stopped:
            print(f"interrupted at step {step}; saved a checkpoint to {self.run_dir}. "
                  f"Resume with: {self.resume_command()}", file=sys.stderr)
        else:
            at = latest.read_text().strip().removeprefix("step-").lstrip("0") or "0"
            print(f"interrupted at step {step}; the last checkpoint in {self.run_dir} is of "
                  f"step {at}. Resume from it with: {self.resume_command()}", file=sys.stderr)


class StopOnInterrupt:
    """Ctrl-C as a request to stop where the training state is whole, between steps.

    While active (in the main thread; elsewhere it does nothing), the first
    SIGINT sets ``requested`` and lets the step under way finish, so the loop
    can save that step and raise KeyboardInterrupt itself. A second SIGINT
    raises KeyboardInterrupt at once: a checkpoint being written then never
    appears, and the last complete one stays ``latest``.
    """

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous: Any = None

    def __enter__(self) -> StopOnInterrupt:
        # A process started with SIGINT ignored (nohup, `cmd &`) keeps ignoring it.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            # None: a handler not set from Python; Python's own is the closest.
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once, without saving it)",
              file=sys.stderr, flush=True)
