"""`lmlab demo`: the whole pipeline on the built-in corpus.

One typed function per subcommand; see ``lmlab.commands``."""

from __future__ import annotations

from pathlib import Path

from lmlab.options import (
    Count,
    RunDir,
)


def demo(out: RunDir = Path("runs/demo"), steps: Count = 600, preset: str = "gpt-mini",
         vocab_size: Count = 4096, prompt: str = "The history of") -> None:
    """The whole pipeline on the built-in Wikipedia extract, in a few minutes on a CPU.

    Cleans the corpus, trains a byte-level BPE tokenizer, tokenizes into
    shards, trains a small GPT, compares its validation perplexity with a
    unigram baseline's, and generates samples.

    Args:
        out: folder for everything the demo makes
        steps: training steps
        preset: model preset
        vocab_size: BPE vocabulary size
        prompt: prompt for the samples

    Examples:
        lmlab demo
        lmlab demo --steps 2000 --out runs/demo-long
    """
    from lmlab.demo import run_demo

    run_demo(Path(out), steps=steps, preset=preset, vocab_size=vocab_size, prompt=prompt)
