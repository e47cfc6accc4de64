"""Translation and summarization quality: baselines, the encoder-decoder and the
decoder-only way at equal parameter count, on held-out real text.

    python benchmarks/translation_table.py                        # every task (hours on 2 cores)
    python benchmarks/translation_table.py --tasks de-en,zh-en    # some tasks
    python benchmarks/translation_table.py --routes baselines,seq2seq --max-steps 1500
    python benchmarks/translation_table.py --tasks debian --norm-first --max-steps 2500
    python benchmarks/translation_table.py --quick                # smoke run (minutes)

Tasks (each a folder made by lmlab's own commands, under OUT/data):

* de-en, zh-en: `lmlab parallel --pair ...` (the machine's gettext catalogs,
  cleaned; 1,000 held-out test pairs whose source strings no training pair has);
* docstrings: `lmlab summaries stdlib` (Python code -> first docstring sentence);
* debian: `lmlab summaries debian` (package long description -> synopsis; needs
  `lmlab download descriptions`, 18 MB from Debian, which this script runs when
  the index is missing).

Routes, each scored on the same test split:

* baselines: copy the source; word by word through a dictionary (Ding for
  German, CC-CEDICT for Chinese, from `make setup`); for summaries the lead
  sentence;
* seq2seq: `lmlab seq2seq --preset seq2seq-mini` (3+3 layers, 256 wide), then
  `lmlab translate` (beam 4);
* gpt: the same objective, data, steps and pairs per step with a decoder-only
  model of the same width whose depth gives the nearest parameter count ("source
  <end> target", loss on the target only), decoded the same way.

Translation is scored by BLEU and chrF (sacrebleu), summaries by ROUGE-1/2/L (a
tokenizer that keeps Chinese). Results are saved after each row
(OUT/results.json); a run folder that exists is resumed, or only decoded again
when it has reached --max-steps. Prints a markdown table and writes OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, table  # noqa: E402

TASKS = ("de-en", "zh-en", "docstrings", "debian")
ROUTES = ("baselines", "seq2seq", "gpt")
ASSETS = Path(sys.prefix) / "assets"  # where `make setup` puts them: .venv/assets
DICTIONARIES = {"de-en": ASSETS / "ding" / "german-english.dict.dz",
                "zh-en": ASSETS / "cedict" / "cedict_ts.u8"}
SUMMARIES = ("docstrings", "debian")


def run_lmlab(*args: str) -> None:
    from lmlab.cli import main

    if main([*args]) != 0:
        raise SystemExit(f"lmlab {' '.join(args)} failed")


def make_data(task: str, out: Path, quick: bool) -> Path:
    folder = out / "data" / task
    if (folder / "tokenizer.json").is_file():
        return folder
    held = ["--val-size", "20", "--test-size", "20"] if quick else []
    if task in ("de-en", "zh-en"):
        run_lmlab("parallel", "--pair", task, "--out", str(folder), *held)
    elif task == "docstrings":
        run_lmlab("summaries", "stdlib", "--out", str(folder), *held)
    else:
        downloads = out / "downloads"
        if not (downloads / "descriptions" / "Translation-en").is_file():
            run_lmlab("download", "descriptions", "--out", str(downloads))
        run_lmlab("summaries", "debian", "--descriptions", str(downloads / "descriptions"),
                  "--out", str(folder), *held)
    return folder


def read_split(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return [r["src"] for r in rows], [r["tgt"] for r in rows]


def scores(task: str, hyps: list[str], refs: list[str]) -> dict[str, float]:
    from lmlab.metrics import rouge_scores, translation_scores

    return rouge_scores(hyps, refs) if task in SUMMARIES else translation_scores(hyps, refs)


def baseline_rows(task: str, data: Path) -> dict[str, dict]:
    from lmlab.data.parallel import read_dictionary, word_by_word
    from lmlab.data.summaries import lead

    srcs, refs = read_split(data / "test.jsonl")
    rows = {"copy the source": scores(task, srcs, refs)}
    if task in SUMMARIES:
        rows["lead sentence"] = scores(task, [lead(s) for s in srcs], refs)
    elif DICTIONARIES[task].is_file():
        table_ = read_dictionary(DICTIONARIES[task])
        name = "word by word (Ding)" if task == "de-en" else "word by word (CC-CEDICT)"
        rows[name] = scores(task, [word_by_word(s, table_) for s in srcs], refs)
    else:
        print(f"warning: no {DICTIONARIES[task]}: run `make setup` for the word-by-word "
              "baseline", file=sys.stderr)
    return rows


def equal_gpt_layers(vocab_size: int) -> tuple[int, int, int]:
    """The depth of a seq2seq-mini-wide GPT whose parameter count is nearest the
    encoder-decoder's, and both counts."""
    from lmlab.config import GPTConfig, Seq2SeqConfig
    from lmlab.models.registry import build_model

    target = build_model(Seq2SeqConfig.from_name("seq2seq-mini", vocab_size=vocab_size))
    n = target.num_params()
    best = min(range(1, 16), key=lambda k: abs(build_model(GPTConfig.from_name(
        "gpt-mini", vocab_size=vocab_size, n_layer=k, n_embd=256, n_head=4,
        block_size=256)).num_params() - n))
    gpt = build_model(GPTConfig.from_name("gpt-mini", vocab_size=vocab_size, n_layer=best,
                                          n_embd=256, n_head=4, block_size=256))
    return best, n, gpt.num_params()


def run_seconds(run: Path) -> float:
    """Training seconds of a run from its metrics' ``elapsed_s`` (which starts again at 0
    when a run is resumed: the stretches are added)."""
    total, last = 0.0, 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        t = json.loads(line).get("elapsed_s")
        if t is not None:
            if t < last:
                total += last
            last = t
    return total + last


def model_row(task: str, route: str, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """Train (or resume) a run, translate the test split with beam 4, score it."""
    from lmlab.tokenizer import Tokenizer

    run = out / "runs" / f"{task}-{route}"
    vocab = Tokenizer.from_file(data / "tokenizer.json").vocab_size
    common = ["--max-steps", str(args.max_steps), "--warmup-steps",
              str(max(1, args.max_steps // 10)), "--eval-interval", str(args.max_steps),
              "--eval-sentences", "100", "--lr", "1e-3", "--out", str(run)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    if route == "seq2seq":
        model = ["--preset", "seq2seq-mini", "--max-tokens", "3000"]
        if args.norm_first:
            model.append("--norm-first")
    else:
        layers, _, _ = equal_gpt_layers(vocab)
        # Twice the tokens per batch: a row holds both sides, so each step sees about
        # as many pairs as the encoder-decoder's.
        model = ["--preset", "gpt-mini", "--n-layer", str(layers), "--n-embd", "256",
                 "--n-head", "4", "--max-tokens", "6000"]
    latest = run / "checkpoints" / "latest"
    done = latest.is_file() and int(latest.read_text().split("-")[-1]) >= args.max_steps
    if not done:  # a run cut short goes on; a finished one is only decoded again
        resume = ["--resume"] if (run / "checkpoints").is_dir() else ["--overwrite"]
        run_lmlab("seq2seq", str(data), *model, *common, *resume)
    train_s = run_seconds(run)
    hyp = out / "outputs" / f"{task}-{route}.txt"
    hyp.parent.mkdir(parents=True, exist_ok=True)
    verb = "summarize" if task in SUMMARIES else "translate"
    start = time.perf_counter()
    run_lmlab(verb, str(run), "--input", str(data / "test.jsonl"), "--out", str(hyp),
              "--num-beams", "4", "--overwrite")
    decode_s = time.perf_counter() - start
    _, refs = read_split(data / "test.jsonl")
    from lmlab.loading import load_model

    params = load_model(run).num_params()
    return {**scores(task, hyp.read_text("utf-8").splitlines(), refs), "params": params,
            "train_s": train_s, "decode_s": decode_s, "steps": args.max_steps}


NAMES = {"seq2seq": "encoder-decoder (seq2seq-mini shape)",
         "gpt": "decoder-only, equal parameters"}


def markdown(results: dict[str, dict[str, dict]], notes: list[str]) -> str:
    def num(row: dict, key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "-"

    lines = []
    for task, rows in results.items():
        # baselines first, then the models in ROUTES order
        for name, r in sorted(rows.items(), key=lambda kv: ROUTES.index(kv[0])
                              if kv[0] in ROUTES else 0):
            lines.append([task, NAMES.get(name, name), f"{r['params']:,}" if "params" in r
                          else "-", num(r, "bleu"), num(r, "chrf"), num(r, "rouge1"),
                          num(r, "rouge2"), num(r, "rougeL"),
                          f"{r['train_s'] / 60:.0f}" if "train_s" in r else "-"])
    md = table(["task", "system", "parameters", "BLEU", "chrF", "ROUGE-1", "ROUGE-2",
                "ROUGE-L", "train min"], lines)
    return md + "\n\n" + "\n".join([machine_line(), *notes])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/translation-table"),
                    help="working folder")
    ap.add_argument("--tasks", default=",".join(TASKS),
                    help=f"comma-separated subset of {','.join(TASKS)}")
    ap.add_argument("--routes", default=",".join(ROUTES),
                    help=f"comma-separated subset of {','.join(ROUTES)}")
    ap.add_argument("--max-steps", type=int, default=1000, help="training steps per model")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    ap.add_argument("--norm-first", action="store_true",
                    help="pre-LN encoder-decoder (post-LN by default; on the Debian summaries "
                    "post-LN had not learned to read the source after 1,000 steps)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 20 held-out pairs, 10 training steps per model")
    args = ap.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    routes = [r for r in args.routes.split(",") if r]
    for name, given, known in (("task", tasks, TASKS), ("route", routes, ROUTES)):
        bad = [x for x in given if x not in known]
        if bad:
            ap.error(f"unknown {name} {bad[0]!r}; choose from {', '.join(known)}")
    if args.quick:
        args.max_steps = 10
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "results.json"
    results: dict[str, dict[str, dict]] = json.loads(saved.read_text()) if saved.is_file() else {}
    for task in tasks:
        data = make_data(task, out, args.quick)
        rows = results.setdefault(task, {})
        if "baselines" in routes:
            rows.update(baseline_rows(task, data))
        for route in ("seq2seq", "gpt"):
            if route in routes:
                rows[route] = model_row(task, route, data, out, args)
                saved.write_text(json.dumps(results, indent=2) + "\n")
        saved.write_text(json.dumps(results, indent=2) + "\n")
    n_test = {t: len((out / "data" / t / "test.jsonl").read_text().splitlines()) for t in tasks}
    notes = [f"held-out test texts: {', '.join(f'{t} {n:,}' for t, n in n_test.items())}; "
             f"models trained {args.max_steps:,} steps, decoded with beam 4"]
    md = markdown({t: results[t] for t in tasks if t in results}, notes)
    (out / "table.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
