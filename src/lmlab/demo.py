"""`lmlab demo`: corpus -> tokenizer -> shards -> GPT -> evaluation -> samples."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmlab.options import refuse_foreign

if TYPE_CHECKING:
    from lmlab.tokenizer import Tokenizer


def _step(n: int, title: str) -> None:
    print(f"\n[{n}/6] {title}", flush=True)


def builtin_data(out: Path, vocab_size: int = 4096,
                 step: Callable[[int, str], None] | None = None) -> Tokenizer:
    """Corpus, BPE tokenizer and shards from the built-in Wikipedia extract, in ``out``.

    Makes ``out/corpus`` (train/validation split by article), ``out/tokenizer.json``
    and ``out/shards``, printing what each step made; returns the tokenizer.
    """
    from lmlab.data.corpus import build_corpus, default_corpus_source, read_split
    from lmlab.data.shards import prepare
    from lmlab.tokenizer import Tokenizer

    step = step or (lambda n, title: print(f"  {title}", flush=True))
    out.mkdir(parents=True, exist_ok=True)
    step(1, "corpus: the Wikipedia extract shipped with gensim, markup stripped")
    source = default_corpus_source()
    stats = build_corpus([source], out / "corpus", val_fraction=0.05, seed=0).to_dict()
    print(f"  {stats['train_docs']} train / {stats['val_docs']} validation articles, "
          f"{stats['train_chars'] + stats['val_chars']:,} characters "
          f"({stats['duplicates_dropped']} duplicates dropped)")

    step(2, f"tokenizer: byte-level BPE, {vocab_size} tokens")
    tok = Tokenizer.train(read_split(out / "corpus", "train"), kind="bpe",
                          vocab_size=vocab_size, show_progress=False)
    tok.save(out / "tokenizer.json")
    print(f"  {tok.vocab_size} tokens -> {out / 'tokenizer.json'}")

    step(3, "prepare: tokenize into memory-mapped shards")
    manifest = prepare(out / "corpus", out / "tokenizer.json", out / "shards", progress=False,
                       overwrite=True)
    for split, info in manifest["splits"].items():
        print(f"  {split}: {info['tokens']:,} tokens "
              f"({info['bytes'] / info['tokens']:.2f} bytes/token)")
    return tok


# What the demo makes in its folder, and so may replace when run again there.
DEMO_NAMES = {"corpus", "tokenizer.json", "shards", "gpt"}


def run_demo(out: Path, steps: int = 600, preset: str = "gpt-mini", vocab_size: int = 4096,
             prompt: str = "The history of") -> dict:
    """Run the whole pipeline in ``out``; return the figures it printed."""
    import torch

    from lmlab.data.shards import TokenShards
    from lmlab.evaluate import LMScore, score_tokens, unigram_score
    from lmlab.generate import SamplingConfig, generate_text
    from lmlab.train.loop import TrainConfig, Trainer

    refuse_foreign(out, DEMO_NAMES, "demo")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)

    tok = builtin_data(out, vocab_size, step=_step)

    _step(4, f"pretrain: {preset}, {steps} steps")
    cfg = TrainConfig(data=str(out / "shards"), out=str(out / "gpt"), preset=preset,
                      max_steps=steps, eval_interval=max(steps // 4, 1), batch_size=16,
                      lr=3e-3, warmup_steps=min(50, steps // 10))
    trainer = Trainer(cfg, overwrite=True)
    print(f"  {trainer.model.num_params():,} parameters, context {trainer.block}")
    result = trainer.fit()

    _step(5, "evaluate: the whole validation split, GPT against a unigram baseline")
    val = TokenShards(out / "shards", "val")
    train = TokenShards(out / "shards", "train")
    # A leading end-of-text token lets the first token be scored: every byte counts.
    val_tokens = np.concatenate([[tok.eos_id], val.tokens()]).astype(np.int64)
    nll, count = score_tokens(trainer.model, val_tokens, batch_size=16)
    gpt = LMScore(nll, count, val.num_bytes)
    uni = unigram_score(train.tokens(), val_tokens, tok.vocab_size, val.num_bytes)
    print(f"  {'model':<22}{'parameters':>12}{'val perplexity':>16}{'bits/byte':>11}")
    print(f"  {'unigram (add-one)':<22}{tok.vocab_size:>12,}{uni.perplexity:>16.1f}"
          f"{uni.bits_per_byte:>11.3f}")
    print(f"  {'GPT ' + preset:<22}{trainer.model.num_params():>12,}{gpt.perplexity:>16.1f}"
          f"{gpt.bits_per_byte:>11.3f}")

    _step(6, f"generate: 3 samples, top-p 0.9, temperature 0.8, prompt {prompt!r}")
    samples = generate_text(trainer.model, tok, prompt, max_new_tokens=60,
                            cfg=SamplingConfig(temperature=0.8, top_p=0.9),
                            num_return_sequences=3, seed=0)
    for i, s in enumerate(samples, 1):
        print(f"  ({i}) {prompt}{s.text}".replace("\n", " "))

    wall = time.perf_counter() - t0
    print(f"\ndone in {wall:.0f}s ({torch.get_num_threads()} threads)")
    print(f"  run folder:  {result['run_dir']}")
    print(f"  checkpoint:  {result['checkpoint']}")
    print(f"  loss curve:  {result['plot']}")
    print(f"  metrics:     {Path(result['run_dir']) / 'metrics.jsonl'}  "
          f"(tensorboard --logdir {result['run_dir']}/tb)")
    print(f"  try:         lmlab generate {result['run_dir']} --prompt \"{prompt}\"")
    return {"val_ppl": gpt.perplexity, "val_bpb": gpt.bits_per_byte,
            "unigram_ppl": uni.perplexity, "unigram_bpb": uni.bits_per_byte,
            "wall_s": wall, "samples": [s.text for s in samples]}
