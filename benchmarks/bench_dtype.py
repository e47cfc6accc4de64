"""float32 against bfloat16 autocast: training steps of the GPT-2 124M shape on this CPU.

What the ``--dtype`` help states is measured here: ``lmlab pretrain``'s own
Trainer (the one engine), preset ``gpt2-124m`` (12 layers, 768 wide, context
cut to ``block`` tokens) over the character tokenizer of ``bench_train`` (so
the embedding is small: about 85 M parameters rather than 124 M), batch
``batch``, the same batches and initial weights for both. Steps alternate
between the two runs in chunks; the table gives tokens/s (median over chunks)
and the speed-up of bfloat16. Whether it is faster depends on the CPU: bf16
matmuls run on AMX tiles (recent Xeons) or AVX-512 BF16 instructions (AMD
EPYC Zen 4 and later, some Xeons); without either, torch converts and computes
in float32 and autocast only adds casts. The flags line says which the CPU has.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import build_shards  # noqa: E402
from common import OthersCpu, median, run_standalone, table  # noqa: E402

THREADS = 2


@dataclass
class Settings:
    batch: int = 4
    block: int = 256
    warmup: int = 2
    chunks: int = 4
    chunk_steps: int = 3


QUICK = Settings(batch=2, block=64, warmup=1, chunks=2, chunk_steps=1)


def trainer(shards: Path, out: Path, s: Settings, dtype: str):
    from lmlab.train.loop import TrainConfig, Trainer

    total = s.warmup + s.chunks * s.chunk_steps
    cfg = TrainConfig(data=str(shards), out=str(out), preset="gpt2-124m", batch_size=s.batch,
                      block_size=s.block, dropout=0.0, max_steps=total, eval_interval=10**9,
                      seed=1337, dtype=dtype, threads=THREADS)
    tr = Trainer(cfg, progress=False)
    tr.model.train()
    return tr


def run_benchmark(settings: Settings, log=print) -> dict:
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards = build_shards(work)
        runs = {d: trainer(shards, work / d, settings, d) for d in ("float32", "bfloat16")}
        params = sum(p.numel() for p in runs["float32"].model.parameters())
        step = 0
        log(f"  warm-up ({settings.warmup} steps each)")
        for _ in range(settings.warmup):
            for tr in runs.values():
                tr.train_step(step)
            step += 1
        rates: dict[str, list[float]] = {d: [] for d in runs}
        losses: dict[str, float] = {}
        others = OthersCpu().start()
        for c in range(settings.chunks):
            log(f"  chunk {c + 1}/{settings.chunks}")
            for d, tr in runs.items():
                t0 = time.perf_counter()
                for i in range(settings.chunk_steps):
                    losses[d] = tr.train_step(step + i)[0]
                rates[d].append(settings.chunk_steps * settings.batch * settings.block
                                / (time.perf_counter() - t0))
            step += settings.chunk_steps
        return {"settings": dict(settings.__dict__), "params": params, "rates": rates,
                "loss": losses, "others_cpu": others.stop()}


def format_results(res: dict) -> str:
    s = res["settings"]
    fp32 = median(res["rates"]["float32"])
    rows = [[d, f"{median(r):,.0f}", f"{median(r) / fp32:.2f}x", f"{res['loss'][d]:.4f}"]
            for d, r in res["rates"].items()]
    return (f"### Training steps, float32 vs bfloat16 autocast: GPT-2 124M shape "
            f"({res['params'] / 1e6:.0f} M parameters with a character vocabulary), batch "
            f"{s['batch']} x {s['block']} tokens, {s['chunks']} alternating chunks of "
            f"{s['chunk_steps']} steps; others' CPU {res['others_cpu']:.0%}\n\n"
            + table(["dtype", "tokens/s (median)", "vs float32", "loss at the last step"], rows))


def main(argv: list[str] | None = None) -> None:
    run_standalone(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
