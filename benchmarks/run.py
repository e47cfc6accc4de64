"""Run lmlab's benchmarks and print markdown tables.

    python benchmarks/run.py                   # everything, default settings (~5 min)
    python benchmarks/run.py --only train      # or: --only generate, smollm2, finetune, ngram
    python benchmarks/run.py --only distributed  # 2 processes x 1 thread vs 1 x 2 (torchrun)
    python benchmarks/run.py --only seq2seq    # encoder-decoder vs MarianMTModel
    python benchmarks/run.py --only lora       # LoRA fine-tuning of SmolLM2 vs transformers + peft
    python benchmarks/run.py --only serve      # 200 concurrent requests to `lmlab serve`
    python benchmarks/run.py --quick           # short smoke version (~1 min)

Each benchmark runs its peer (Hugging Face transformers) in the same process
and reports ratios; see benchmarks/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_distributed  # noqa: E402
import bench_dtype  # noqa: E402
import bench_finetune  # noqa: E402
import bench_generate  # noqa: E402
import bench_gguf  # noqa: E402
import bench_lora  # noqa: E402
import bench_ngram  # noqa: E402
import bench_seq2seq  # noqa: E402
import bench_serve  # noqa: E402
import bench_smollm2  # noqa: E402
import bench_train  # noqa: E402
from common import machine_line, wait_for_idle  # noqa: E402

BENCHMARKS = {"train": bench_train, "generate": bench_generate, "smollm2": bench_smollm2,
              "finetune": bench_finetune, "ngram": bench_ngram,
              "distributed": bench_distributed, "seq2seq": bench_seq2seq,
              "lora": bench_lora, "serve": bench_serve, "gguf": bench_gguf,
              "dtype": bench_dtype}
# Run when no --only is given (distributed starts its own processes, gguf wants llama.cpp
# built and runs for ~15 minutes, dtype trains a 124M model: ask for them by name).
DEFAULT = ("train", "generate", "smollm2", "finetune", "ngram")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="lmlab benchmarks against HF transformers")
    ap.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                    help="run only this benchmark (repeatable)")
    ap.add_argument("--quick", action="store_true", help="short smoke version of each benchmark")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one lmlab decode step (generate, smollm2)")
    ap.add_argument("--wait-idle", type=float, default=120.0, metavar="SECONDS",
                    help="before each benchmark, wait up to this long for other processes "
                         "to leave the CPUs idle (default 120; 0 to skip)")
    ap.add_argument("--json", type=Path, metavar="DIR", help="also write raw results here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    names = args.only or list(DEFAULT)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    print(f"# lmlab benchmarks{' (quick)' if args.quick else ''}\n")
    print(machine_line() + "\n")
    walls = {}
    for name in names:
        mod = BENCHMARKS[name]
        busy = wait_for_idle(args.wait_idle, log=log) if args.wait_idle > 0 else float("nan")
        log(f"[{name}] running")
        t0 = time.perf_counter()
        res = mod.run_benchmark(mod.QUICK if args.quick else mod.Settings(), log=log)
        out = mod.format_results(res)
        if name in ("generate", "smollm2") and args.profile:
            out += "\n\n" + mod.profile_decode()
        walls[name] = res["wall_s"] = time.perf_counter() - t0
        print(out)
        note = f"CPU use by other processes just before the start: {busy:.0%}. " \
            if busy == busy else ""
        print(f"\n{note}Wall time of this benchmark: {walls[name]:.0f} s\n", flush=True)
        if args.json:
            args.json.mkdir(parents=True, exist_ok=True)
            (args.json / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    print("Wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
