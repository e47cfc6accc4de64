"""The one training loop: every objective (pretraining, fine-tuning, the coming ones) runs here.

``Engine`` holds what every run has: the model and its wrapper (DDP, FSDP2,
torch.compile), AdamW, the learning-rate schedule, gradient accumulation and
clipping, the NaN check, the progress bar, metrics.jsonl / TensorBoard /
loss.png, the run-folder guard, atomic checkpoints, Ctrl-C and exact resume.
An objective is a subclass that says what is particular to it, by
overriding the methods of the section "the objective" below:

    build the model        the subclass sets ``self.model`` before ``_prepare``
    lr_at(step)            its schedule
    micro_batch_loss(i)    the loss of micro-batch i on this process's rows
    should_validate(step)  when to validate; validate(step) -> a row, a line, stop?
    should_save(step)      when to checkpoint
    objective_state()      what it carries from step to step (JSON + tensors),
    restore_objective()    and how it takes it back on --resume

Exact resume: batches are drawn only from the engine's ``generator`` (or are a
pure function of the step), dropout only from torch's global generator, and
both states are saved with the weights, the AdamW moments and the objective's
own state. The learning rate is a pure function of the step. A run killed at
any point and resumed from its last checkpoint therefore ends bit-identical
to an uninterrupted run with the same seed (same machine, same thread count).

Ctrl-C asks the loop to stop (``StopOnInterrupt``): the step under way ends,
a checkpoint of that step is saved (atomically, like every checkpoint), the
``--resume`` command is printed and KeyboardInterrupt is raised; a second
Ctrl-C stops at once, leaving the last complete checkpoint. A run that fails
or is stopped before its first checkpoint removes the run folder it created
(never one that was there before), so no folder without a checkpoint looks
like a run.

Under torchrun every process runs the same loop on its own rows of each
global batch; rank 0 alone writes the run folder.
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lmlab.atomic import missing_root, write_text
from lmlab.errors import LmlabError
from lmlab.models import weights
from lmlab.options import flag_name
from lmlab.runs import MetricsLogger, plot_loss
from lmlab.train import checkpoint as ckpt
from lmlab.train import distributed


# ---------------------------------------------------------------- settings
def flag_words(name: str, value: Any) -> list[str]:
    """A setting as the user would type it: ``--batch-size 8``, ``--nsp``, ``--no-nsp``."""
    if isinstance(value, bool):
        return [flag_name(name, False) if value else "--no-" + flag_name(name, False)[2:]]
    return [flag_name(name, False), str(value)]


def _with(name: str, value: Any) -> str:
    """``with --batch-size 8``, or ``without --n-layer`` for a setting left to the preset."""
    if value is None:
        return f"without {flag_name(name, False)}"
    return f"with {' '.join(flag_words(name, value))}"


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with weight decay on matrices only (not on
    norms, biases or gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # The fused kernel does the whole update in one pass per tensor (CPU too, torch >= 2.4).
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def clip_and_step(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor],
                  max_norm: float) -> float:
    """Clip the gradients to a global L2 norm of ``max_norm`` (``clip_grad_norm_``'s
    rule), then the optimizer's step; returns the norm before clipping.

    With the fused AdamW (``make_optimizer``'s) on a CPU, the clipping is done inside
    the update's own pass: the fused kernel divides each gradient by the optimizer's
    ``grad_scale`` (the attribute ``GradScaler`` sets to unscale fp16 gradients), so the
    gradients are not read and written once more to be scaled. In the seq2seq
    benchmark's training step (7.6M parameters) clipping and the step took 6.6 against
    12.2 ms (AMD EPYC, 2 threads; a one-off loop of 8 steps), about 3% of the step.
    Elsewhere (a GPU, where the check of the norm would wait for the device; FSDP's
    sharded gradients; bf16 weights, which the fused kernel refuses a scale for;
    another optimizer) it is ``clip_grad_norm_`` and ``step`` as they are."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    # The fused kernel scales every gradient of the optimizer: they must be params'.
    held = {id(p) for group in optimizer.param_groups for p in group["params"]
            if p.grad is not None}
    if (not optimizer.defaults.get("fused") or hasattr(optimizer, "grad_scale")
            or hasattr(optimizer, "found_inf") or held != {id(p) for p in params}
            or not all(type(g) is torch.Tensor and g.is_cpu and g.dtype is torch.float32
                       for g in grads)):
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        return float(norm)
    norm = torch.nn.utils.get_total_norm(grads)
    # clip_grad_norm_'s coefficient, max_norm / (norm + 1e-6), as a divisor
    scale = (norm + 1e-6) / max_norm
    # Over the limit (clip_grad_norm_ multiplies by 1 otherwise), or NaN: then every
    # gradient becomes NaN, as clip_grad_norm_ makes them.
    if not scale <= 1:
        optimizer.grad_scale = scale
    try:
        optimizer.step()
    finally:
        optimizer.__dict__.pop("grad_scale", None)
    return float(norm)


class EpochCursor:
    """Batches epoch after epoch: each epoch's batches (lists of example indices) are drawn
    at its start from the engine's generator by ``make``; a batch with fewer than
    ``min_rows`` rows (too few to give every process one) is skipped. Its state (the
    epoch, the place in its order, the generator's state at the epoch's start) goes into
    checkpoints, so a resumed run reads the same batches."""

    def __init__(self, make: Any, generator: torch.Generator, min_rows: int = 1) -> None:
        self.make, self.generator, self.min_rows = make, generator, min_rows
        self.epoch, self.pos = 0, 0
        self.order: list[list[int]] = []
        self.epoch_rng: torch.Tensor | None = None

    def next(self) -> list[int]:
        while True:
            if self.pos >= len(self.order):
                self.epoch += 1
                self.epoch_rng = self.generator.get_state()
                self.order, self.pos = self.make(self.generator), 0
            batch = self.order[self.pos]
            self.pos += 1
            if len(batch) >= self.min_rows:
                return batch

    def epoch_done(self) -> bool:
        """Whether the last batch returned ended its epoch."""
        return all(len(b) < self.min_rows for b in self.order[self.pos:])

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {"epoch_rng": self.epoch_rng} if self.epoch_rng is not None else {}
        return {"epoch": self.epoch, "pos": self.pos}, tensors

    def restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        if "epoch_rng" in tensors:
            # The epoch's batches again, drawn from the generator as it was at its start.
            now = self.generator.get_state()
            self.epoch_rng = tensors["epoch_rng"]
            self.generator.set_state(self.epoch_rng)
            self.order = self.make(self.generator)
            self.generator.set_state(now)


class _NoLog:
    """The metrics log of a process other than rank 0, which writes nothing."""

    path = None

    def log(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Engine:
    """The training loop; a subclass brings the objective (see the module docstring).

    The subclass's ``__init__`` calls ``_join`` first, checks its inputs and
    data, calls ``_check_run_dir``, seeds and builds ``self.model``, then
    ``_prepare``, which wraps the model, builds the optimizer, restores a
    resumed run and makes the run folder.
    """

    # -- what a subclass declares -------------------------------------------
    command = "train"  # the lmlab verb that runs it (resume commands)
    config_file = "config.json"  # the run's settings, in the run folder
    # What the run writes beside its checkpoints (removed on --overwrite, or when a
    # run stops before its first checkpoint in a folder that was there before).
    run_files: tuple[str, ...] = ("metrics.jsonl", "tb", "loss.png")
    # Settings a resumed run must share with the run it continues.
    resume_keys: tuple[str, ...] = ("seed", "batch_size")
    keep_checkpoints = 2  # step checkpoints kept (the newest ones)
    rate_name = "tokens_per_s"  # the throughput column of train rows
    plot_title = ""
    plot_ylabel = "cross-entropy (nats/token)"
    cfg: Any  # the run's config dataclass (seed, device, dtype, grad_clip, threads, ...)
    model: torch.nn.Module
    total_steps: int  # the optimizer steps of the whole run

    # -- set-up -------------------------------------------------------------
    def _join(self, progress: bool) -> None:
        """Threads, and under torchrun this process's rank and its own device."""
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        fsdp = getattr(cfg, "fsdp", False)
        if fsdp and not distributed.launched():
            raise LmlabError("--fsdp shards the model across processes: launch the run with "
                             "torchrun --nproc_per_node N (N > 1)")
        self.world, self.device = distributed.join(cfg.device)
        if self.device.type == "cpu":
            from lmlab.device import keep_freed_memory

            keep_freed_memory()
        if fsdp and not self.world.distributed:
            raise LmlabError("--fsdp needs more than one process (torchrun --nproc_per_node "
                             "N, N > 1)")
        self.progress = progress and self.world.main
        self.grad_accum: int = getattr(cfg, "grad_accum", 1)
        # The one source of batches (dropout draws from torch's global generator).
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def _check_run_dir(self, run_dir: Path, resume: bool, overwrite: bool) -> None:
        self.run_dir = run_dir
        self.resume = resume
        self.has_run = self._holds_run()
        if resume and not (run_dir / "checkpoints" / "latest").exists():
            raise LmlabError(f"{run_dir}: nothing to resume (no checkpoints/latest); "
                             f"drop --resume to start a new run")
        if self.has_run and not resume and not overwrite:
            raise LmlabError(f"{run_dir}: already holds a run; pass --resume to "
                             "continue it, --overwrite to start over, or another --out")

    def _holds_run(self) -> bool:
        return (self.run_dir / "checkpoints" / "latest").exists()

    def _prepare(self, ddp_options: dict[str, Any] | None = None,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        """Wrap the model, build AdamW and the batch generator, restore a resumed run,
        and (rank 0) make the run folder, with every input already checked."""
        cfg = self.cfg
        self.start_step = 0
        self.step = 0  # the step being trained
        # Train losses since the last logged row (a checkpoint keeps them, so a resumed
        # run logs the same means as an uninterrupted one).
        self.pending: dict[str, Any] = {"losses": [], "parts": {}}
        self.step_parts: dict[str, float] = {}  # the last step's loss parts, by name
        state = self._load_resume_state() if self.resume else None
        if state is not None:
            self._restore_weights(state)  # whole, before any sharding
        elif self.world.distributed:
            torch.manual_seed(cfg.seed + self.world.rank)  # its own dropout masks
        self.ddp: torch.nn.Module | None = None
        net: torch.nn.Module = self.model
        self.fsdp = getattr(cfg, "fsdp", False)
        if self.fsdp:
            distributed.shard(self.model, self.world, self.device)
        elif self.world.distributed:
            self.ddp = net = distributed.data_parallel(self.model, self.device,
                                                       **(ddp_options or {}))
        # What training steps call: the model, its DDP wrapper, compiled if asked.
        self.net = torch.compile(net) if getattr(cfg, "compile", False) else net
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, betas)
        if state is not None:
            self._restore(state)
        # Only now, with every input checked, is the run folder made (or an old run in
        # it replaced); a folder made here goes again if no checkpoint follows. Only
        # rank 0 writes the run folder.
        self.made_dir: Path | None = None
        self.logger: MetricsLogger | _NoLog = _NoLog()
        if self.world.main:
            self.made_dir = self._start_run_dir(replace=self.has_run and not self.resume)
            try:
                write_text(self.run_dir / self.config_file,
                           json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
                self.write_run_files()
                self.logger = self._open_logger(self.start_step if self.resume else None)
            except BaseException:
                self._discard_run()
                raise

    # -- the objective: what a subclass overrides -------------------------------
    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (from 0): a pure function of the step."""
        raise NotImplementedError

    def micro_batch_loss(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean loss of micro-batch ``index`` (step x grad_accum + i) on this process's
        rows, and its named parts to log (may be empty)."""
        raise NotImplementedError

    def step_units(self) -> int:
        """What the last step read, in the unit of ``rate_name`` (tokens, examples)."""
        raise NotImplementedError

    def should_validate(self, step: int) -> bool:
        return step % self.cfg.eval_interval == 0 or step == self.total_steps

    def validate(self, step: int) -> tuple[dict[str, Any], str, bool]:
        """Score the model after step ``step``: the metrics row, a line for the user, and
        whether training should stop (early stopping). Runs on rank 0 only, or on every
        process for a sharded model."""
        raise NotImplementedError

    def should_save(self, step: int, validated: bool) -> bool:
        every = getattr(self.cfg, "checkpoint_interval", None) or self.cfg.eval_interval
        return step % every == 0 or step == self.total_steps

    def train_mode(self) -> None:
        self.model.train()

    def row_extras(self) -> dict[str, Any]:
        """Columns added to every metrics row (an epoch number, say)."""
        return {}

    def objective_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What the objective carries from step to step, for the checkpoint (every
        process calls it): JSON values, and tensors (saved as ``carry.*``)."""
        return {}, {}

    def restore_objective(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Take back ``objective_state``'s values on --resume (tensors without ``carry.``)."""

    def check_resume(self, path: Path) -> None:
        """Refuse a checkpoint this run cannot continue (another tokenizer, say)."""

    def model_writer(self) -> Any:
        """None to save the whole model in each checkpoint, or a function that writes the
        model's files into a checkpoint folder itself (a LoRA run: its adapter only)."""
        return None

    def tokenizer_file(self) -> Path | None:
        """The tokenizer.json to copy into each checkpoint."""
        return None

    def write_run_files(self) -> None:
        """Files the run writes once, beside its config (rank 0)."""

    def result(self) -> dict[str, Any]:
        """What ``fit`` adds to its summary: the latest checkpoint and the model's size."""
        return {"checkpoint": str(weights.resolve_checkpoint(self.run_dir)),
                "params": self.model.num_params()}

    def stop_message(self, step: int) -> str:
        """What Ctrl-C says after ``interrupted at step N``, before the resume command."""
        return ""

    # -- one step ----------------------------------------------------------
    def train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step (number ``step``, from 0): the learning rate of the schedule,
        forward and backward over the micro-batches, the NaN check, gradient clipping and
        the AdamW update. Returns the loss (the mean over processes) and the gradient
        norm before clipping. ``fit`` adds validation, logging and checkpoints."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self.step = step
        loss = self._train_step()
        if not math.isfinite(loss):
            extra = ", --dtype float32," if cfg.dtype != "float32" else ""
            raise LmlabError(
                f"step {step}: training loss is {loss}; try a lower --lr (now {cfg.lr:g})"
                f"{extra} or check the data for empty or corrupt examples")
        norm = clip_and_step(self.optimizer, self.model.parameters(), cfg.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, norm

    def _train_step(self) -> float:
        accum = self.grad_accum
        loss_sum = 0.0
        part_sums: dict[str, float] = {}
        for i in range(accum):
            # DDP averages the gradients across processes in the last micro-batch's
            # backward only; the others accumulate locally.
            last = i == accum - 1
            if self.fsdp:
                self.model.set_requires_gradient_sync(last)
            with (self.ddp.no_sync() if self.ddp is not None and not last
                  else contextlib.nullcontext()):
                loss, parts = self.micro_batch_loss(self.step * accum + i)
                (loss / accum).backward()
            loss_sum += loss.item()
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + v.item()
        # Logged (and NaN-checked) as the mean over processes: the loss of the global batch.
        mean = distributed.mean
        self.step_parts = {k: mean(v / accum, self.world, self.device)
                           for k, v in part_sums.items()}
        return mean(loss_sum / accum, self.world, self.device)

    # -- checkpoints -------------------------------------------------------
    def save(self, step: int) -> Path:
        """Checkpoint ``step`` (every process calls it; rank 0 writes)."""
        world, device = self.world, self.device
        rng = {"sampler": self.generator.get_state()}
        # Each process's own random state (dropout).
        for name, state in (("torch", torch.get_rng_state()),
                            ("cuda", torch.cuda.get_rng_state(device)
                             if device.type == "cuda" else None)):
            if state is not None:
                for r, s in enumerate(distributed.gather(state, world, device)):
                    rng[name if r == 0 else f"{name}.rank{r}"] = s
        objective, carry = self.objective_state()
        path = self.run_dir / "checkpoints" / f"step-{step:06d}"
        model_tensors, optimizer = None, self.optimizer
        if self.fsdp:  # gathered whole, so that the checkpoint loads in one process
            model_tensors = {k: distributed.full_tensor(v)
                             for k, v in weights.model_state(self.model).items()}
            optimizer = distributed.full_optimizer_state(self.optimizer)
        if world.main:
            state = {self.config_file.removesuffix(".json"): dataclasses.asdict(self.cfg),
                     "pending": self.pending, "objective": objective,
                     "world_size": world.size, "local_world_size": world.local_size,
                     "device": self.device.type}
            path = ckpt.save_checkpoint(self.run_dir, step, self.model, self.tokenizer_file(),
                                        optimizer, state, rng, carry_tensors=carry,
                                        model_tensors=model_tensors,
                                        keep=self.keep_checkpoints,
                                        write_model=self.model_writer())
        distributed.barrier(world)
        return path

    # -- the loop ----------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train from ``start_step`` to ``total_steps``, validating, logging and saving."""
        total = self.total_steps
        self.train_mode()
        bar = None
        if self.progress:
            from lmlab.progress import progress_bar

            bar = progress_bar(total=total, initial=self.start_step, desc=self.command,
                               unit="step")
        last: dict[str, Any] = {}
        # Train rows are logged every 10 steps with the mean loss since the last row.
        t_last, units = time.perf_counter(), 0
        losses: list[float] = self.pending["losses"]
        parts: dict[str, float] = self.pending["parts"]  # sums of the loss parts
        t_start = time.perf_counter()
        step = self.start_step
        saved = validated = -1  # the steps of the last checkpoint and validation
        stopped_early = False
        stop = StopOnInterrupt()

        def validate() -> bool:
            """Validate (rank 0, or all processes of a sharded model); True to stop."""
            nonlocal last, validated
            validated = step
            stop_now = False
            # A sharded model runs only with every process taking part.
            if self.world.main or self.fsdp:
                row, message, stop_now = self.validate(step)
                last = {"step": step, "split": "val", **self.row_extras(), **row}
                self.logger.log(last)
                if bar:
                    bar.write(message)
                elif self.world.main:
                    print(message, file=sys.stderr)
                if self.world.main:
                    plot_loss(self.logger.path, self.run_dir / "loss.png",
                              title=self.plot_title, ylabel=self.plot_ylabel)
                self.train_mode()
            return distributed.any_true(stop_now, self.world, self.device)

        try:
            with stop:
                while step < total:
                    lr = self.lr_at(step)
                    loss, norm = self.train_step(step)
                    step += 1
                    units += self.step_units()
                    losses.append(loss)
                    for k, v in self.step_parts.items():
                        parts[k] = parts.get(k, 0.0) + v
                    now = time.perf_counter()
                    if step % 10 == 0 or step == total:
                        rate = units / max(now - t_last, 1e-9)
                        mean_loss = sum(losses) / len(losses)
                        mean_parts = {k: v / len(losses) for k, v in parts.items()}
                        t_last, units = now, 0
                        losses.clear()
                        parts.clear()
                        self.logger.log({"step": step, "split": "train", **self.row_extras(),
                                         "loss": mean_loss, **mean_parts, "lr": lr,
                                         "grad_norm": float(norm), self.rate_name: rate,
                                         "elapsed_s": now - t_start})
                        if bar:
                            bar.set_postfix(loss=f"{mean_loss:.3f}",
                                            **{self.rate_name.removesuffix("_per_s"):
                                               f"{rate:,.0f}/s"}, lr=f"{lr:.2e}", refresh=False)
                    if bar:
                        bar.update(1)
                    if self.should_validate(step):
                        stopped_early = validate()
                    if self.should_save(step, validated == step) or stopped_early:
                        self.save(step)
                        saved = step
                    if stopped_early:
                        break
                    # All processes stop at the same step, whichever got the Ctrl-C.
                    if distributed.any_true(stop.requested, self.world, self.device) \
                            and step < total:
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
                "stopped_early": stopped_early, "plot": str(self.run_dir / "loss.png"),
                "train_seconds": time.perf_counter() - t_start, **self.result()}

    def _report_stop(self, e: BaseException, step: int, stopped: bool) -> None:
        """After training ended early: say where to resume from, or discard a run that
        has no checkpoint (``stopped``: the loop saved step ``step`` on Ctrl-C)."""
        latest = self.run_dir / "checkpoints" / "latest"
        if not latest.exists():
            self._discard_run()
            return
        if not isinstance(e, KeyboardInterrupt):
            return  # an error: the CLI reports it; the last checkpoint stays resumable
        extra = self.stop_message(step)
        if stopped:
            print(f"interrupted at step {step}; saved a checkpoint to {self.run_dir}. "
                  f"{extra}Resume with: {self.resume_command()}", file=sys.stderr)
        else:
            at = latest.read_text().strip().removeprefix("step-").lstrip("0") or "0"
            print(f"interrupted at step {step}; the last checkpoint in {self.run_dir} is of "
                  f"step {at}. {extra}Resume from it with: {self.resume_command()}",
                  file=sys.stderr)

    # -- the run folder ----------------------------------------------------
    def _start_run_dir(self, replace: bool) -> Path | None:
        """Make the run folder (clearing the old run when ``replace``); return the
        outermost folder this made, or None when the run folder was already there."""
        made = missing_root(self.run_dir)
        if replace:
            self._remove_outputs()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return made

    def _remove_outputs(self) -> None:
        for name in (*self.run_files, self.config_file, "checkpoints"):
            p = self.run_dir / name
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()

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
        self._remove_outputs()

    def _open_logger(self, resume_step: int | None) -> MetricsLogger:
        try:
            return MetricsLogger(self.run_dir, resume_step=resume_step)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LmlabError(f"{self.run_dir / 'metrics.jsonl'}: damaged ({e}); fix or delete "
                             "the file to resume") from None

    def resume_command(self) -> str:
        """The command line that continues this run: ``lmlab VERB ... --out RUN
        --resume``, with every setting that differs from the defaults."""
        cfg = self.cfg
        required = [f for f in dataclasses.fields(cfg)
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        default = type(cfg)(**{f.name: getattr(cfg, f.name) for f in required})
        words = ["lmlab", self.command]
        if self.world.distributed:
            words[:1] = [*self.world.launcher().split(), "-m", "lmlab"]
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f in required and f.name in getattr(cfg, "positional", ()):
                words.append(str(value))
            elif f in required or (value is not None and value != getattr(default, f.name)):
                words += flag_words(f.name, value)
        return shlex.join([*words, "--resume"])

    # -- resume ------------------------------------------------------------
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
        self.check_resume(path)
        saved = state.get(self.config_file.removesuffix(".json"), {})
        if not isinstance(saved, dict):
            raise self._damaged(file, "incomplete (its config is not an object)")
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
        for key in self.resume_keys:
            if key in saved and saved[key] != getattr(self.cfg, key):
                now, then = _with(key, getattr(self.cfg, key)), _with(key, saved[key])
                raise LmlabError(
                    f"{self.run_dir}: cannot resume {now}: the run was started {then} ({key} "
                    f"in {file}); resume {then}, or start over with --overwrite")
        state["path"] = str(path)
        return state

    def _read(self, file: Path, what: str) -> dict[str, torch.Tensor]:
        try:
            return weights.read_tensors(file, what=what)
        except LmlabError as e:
            raise self._damaged(file, str(e).removeprefix(f"{file}: ")) from None

    def _restore_weights(self, state: dict[str, Any]) -> None:
        file = Path(state["path"]) / weights.MODEL_FILE
        weights.load_weights(self.model, self._read(file, "model weights"), file)

    def _restore(self, state: dict[str, Any]) -> None:
        """The optimizer, the random states and the objective's state of the checkpoint."""
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
            carry = {k.removeprefix("carry."): v for k, v in tensors.items()
                     if k.startswith("carry.")}
            objective = state.get("objective")
            self.restore_objective(objective if isinstance(objective, dict) else {}, carry)
        except (KeyError, ValueError, TypeError) as e:
            raise self._damaged(optim_file, f"damaged carried state ({e})") from None
        pending = state.get("pending")
        if isinstance(pending, dict):
            self.pending = {"losses": list(pending.get("losses", [])),
                            "parts": dict(pending.get("parts", {}))}
        self.start_step = state["step"]
        if self.world.main:
            print(f"resuming from {path} at step {self.start_step}", file=sys.stderr)


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
