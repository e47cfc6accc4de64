"""Data-parallel pretraining: 2 processes x 1 thread (torchrun, DDP on gloo) against
1 process x 2 threads, at the same global batch.

Both runs are `lmlab pretrain` itself, started as subprocesses on the same
character-level shards of the Lee corpus (gensim's test data): gpt-micro
(4 layers, 128 wide, context 64), a global batch of 16 rows, the same seed
and schedule. The single process reads all 16 rows with 2 intra-op threads;
under torchrun each of 2 processes reads 8 of the same 16 rows with 1 thread
and DDP averages the gradients. tokens/s is the median of the 10-step rates
logged in metrics.jsonl (global tokens, the first row left out as warm-up);
the final validation loss shows that the two runs learn the same thing
(they draw the same rows; only the order of floating-point sums differs).
On a GPU machine a third row trains on one CUDA device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import build_shards  # noqa: E402
from common import median, run_standalone, table  # noqa: E402

PRESET = "gpt-micro"
GLOBAL_BATCH = 16


@dataclass
class Settings:
    steps: int = 300
    eval_interval: int = 100


QUICK = Settings(steps=30, eval_interval=30)


def _pretrain(shards: Path, out: Path, settings: Settings, batch: int, launcher: list[str],
              env: dict[str, str], extra: list[str]) -> dict:
    cmd = [*launcher, "pretrain", str(shards), "--out", str(out), "--preset", PRESET,
           "--batch-size", str(batch), "--max-steps", str(settings.steps), "--lr", "3e-3",
           "--warmup-steps", "10", "--eval-interval", str(settings.eval_interval),
           "--eval-tokens", "16384", "--seed", "1337", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if r["split"] == "train"][1:]
    val = [r for r in rows if r["split"] == "val"][-1]
    return {"tokens_per_s": median(rates) if rates else float("nan"), "val_loss": val["loss"],
            "wall_s": wall}


def run_benchmark(settings: Settings, log: Callable[[str], None] = print) -> dict:
    import torch

    lmlab = [sys.executable, "-m", "lmlab"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "lmlab"]
    variants = [
        ("1 process x 2 threads", lmlab, GLOBAL_BATCH, {}, ["--threads", "2", "--device", "cpu"]),
        ("2 processes x 1 thread (DDP, gloo)", torchrun, GLOBAL_BATCH // 2,
         {"OMP_NUM_THREADS": "1"}, ["--threads", "1", "--device", "cpu"]),
    ]
    if torch.cuda.is_available():
        variants.append(("1 process, 1 CUDA GPU", lmlab, GLOBAL_BATCH, {}, ["--device", "cuda"]))
    results: dict = {"settings": settings.__dict__, "runs": []}
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-ddp-") as tmp:
        shards = build_shards(Path(tmp))
        for name, launcher, batch, env, extra in variants:
            log(f"  {name}: {settings.steps} steps")
            run = _pretrain(shards, Path(tmp) / f"run{len(results['runs'])}", settings, batch,
                            launcher, env, extra)
            results["runs"].append({"name": name, **run})
    return results


def format_results(res: dict) -> str:
    s = res["settings"]
    base = res["runs"][0]["tokens_per_s"]
    rows = [[r["name"], f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s'] / base:.2f}x",
             f"{r['val_loss']:.4f}", f"{r['wall_s']:.0f}"] for r in res["runs"]]
    return (f"## Data-parallel pretraining ({PRESET}, global batch {GLOBAL_BATCH} x 64 tokens, "
            f"{s['steps']} steps)\n\n"
            + table(["run", "tokens/s", "vs 1 process", "final val loss", "wall s"], rows)
            + "\n\nwall s includes start-up (torchrun's rendezvous, imports) and validation.")


if __name__ == "__main__":
    run_standalone(sys.modules[__name__])
