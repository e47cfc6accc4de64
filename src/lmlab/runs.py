"""Run folders: metrics.jsonl, TensorBoard events and a loss-curve PNG.

A run folder looks like::

    runs/mini/
      train_config.json     the TrainConfig of the run
      metrics.jsonl         one JSON object per logged step (train and val rows)
      tb/                   TensorBoard events (tensorboard --logdir runs)
      loss.png              train and validation loss against step
      checkpoints/latest    name of the newest complete checkpoint
      checkpoints/step-000500/  model.safetensors, config.json, tokenizer.json, ...
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends rows to metrics.jsonl and TensorBoard; draws loss.png on demand."""

    def __init__(self, run_dir: Path, resume_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Rows logged after the checkpoint we resume from belong to the
            # killed run's future; drop them so the log reads as one run.
            rows = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but keep the run alive without it
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def log(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._writer is not None:
            split = row.get("split", "train")
            for k, v in row.items():
                if k not in ("step", "split") and isinstance(v, int | float) and math.isfinite(v):
                    self._writer.add_scalar(f"{split}/{k}", v, row["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss(metrics_path: Path, out_png: Path, title: str = "",
              ylabel: str = "cross-entropy (nats/token)") -> Path:
    """Train loss (10-step means) and validation loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"]
    val = [(r["step"], r["loss"]) for r in rows if r.get("split") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="tab:blue", lw=1.2, label="train (mean of each 10 steps)")
    if val:
        steps, losses = zip(*val, strict=True)
        ax.plot(steps, losses, "o-", color="tab:orange", lw=1.5, ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title or str(metrics_path.parent))
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out_png)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write under a temporary name, close, rename: a reader never sees half a PNG."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table, columns padded to their widest cell."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(vals: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in cells)])
