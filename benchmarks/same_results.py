"""Same seed, same results: train tiny runs with this checkout and with another revision,
and check that the weights, optimizer states and logged losses are bit-identical.

    python benchmarks/same_results.py --against cf18971      # before a refactor
    python benchmarks/same_results.py --against HEAD~3 --steps 100

A refactor of the training code must not change what a run learns. This
script checks out REV into a temporary git worktree, then trains, with each
of the two sources and one CPU thread: a GPT (gpt-nano), an LSTM LM
(lstm-small, narrowed) and a BERT with next-sentence prediction (bert-nano),
on the same WordPiece shards of the Lee corpus (gensim's test data), and
compares the final checkpoints tensor by tensor and the metrics row by row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "gpt": ["--preset", "gpt-nano"],
    "lstm": ["--preset", "lstm-small", "--n-embd", "32", "--lr", "3e-3", "--batch-size", "4",
             "--block-size", "16"],
    "bert": ["--objective", "mlm", "--preset", "bert-nano", "--nsp"],
}


def lmlab(src: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-m", "lmlab", *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lmlab {' '.join(args)} (from {src}) failed:\n{proc.stderr[-2000:]}")


def shards(work: Path) -> Path:
    from gensim.test.utils import datapath

    lines = [s.strip() for s in Path(datapath("lee_background.cor")).read_text().splitlines()
             if s.strip()]
    corpus = work / "corpus"
    corpus.mkdir(parents=True)
    for split, part in (("train", lines[10:]), ("val", lines[:10])):
        with open(corpus / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in part)
    src = ROOT / "src"
    lmlab(src, "tokenizer", "train", str(corpus), "--kind", "wordpiece", "--vocab-size", "1000",
          "--out", str(work / "wp.json"))
    lmlab(src, "prepare", str(corpus), "--tokenizer", str(work / "wp.json"), "--out",
          str(work / "shards"))
    return work / "shards"


def compare(a: Path, b: Path) -> tuple[bool, bool, bool]:
    import torch
    from safetensors.torch import load_file

    from lmlab.models.weights import resolve_checkpoint

    def same_file(name: str) -> bool:  # of the last checkpoint of each run
        x, y = (load_file(str(resolve_checkpoint(p) / name)) for p in (a, b))
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

    def losses(run: Path) -> list[tuple]:
        rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["split"], r["loss"]) for r in rows]

    return (same_file("model.safetensors"), same_file("optimizer.safetensors"),
            losses(a) == losses(b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="the git revision to compare with")
    ap.add_argument("--steps", type=int, default=40, help="training steps per run")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmlab-same-") as tmp:
        work = Path(tmp)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f",
                        str(work / "rev"), args.against], check=True, capture_output=True)
        try:
            data = shards(work)
            ok = True
            print(f"| run | weights | optimizer | losses |  (this checkout vs {args.against}, "
                  f"{args.steps} steps, 1 thread)\n|---|---|---|---|")
            for name, extra in RUNS.items():
                for tag, src in (("now", ROOT / "src"), ("rev", work / "rev" / "src")):
                    lmlab(src, "pretrain", str(data), *extra, "--max-steps", str(args.steps),
                          "--eval-interval", str(max(1, args.steps // 2)), "--threads", "1",
                          "--out", str(work / tag / name))
                same = compare(work / "now" / name, work / "rev" / name)
                ok &= all(same)
                print(f"| {name} | " + " | ".join("identical" if s else "DIFFERENT"
                                                  for s in same) + " |")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(work / "rev")], capture_output=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
