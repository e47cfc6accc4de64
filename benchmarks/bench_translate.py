"""Beam search on real held-out text with a trained model: lmlab against ``MarianMTModel``.

``bench_seq2seq.py`` measures random weights, whose outputs never end; a trained
model's outputs end at different lengths, which is where a beam search that lets
finished inputs leave the batch (lmlab's) and one that decodes every row to the
end (Hugging Face's) part ways. This takes an ``lmlab seq2seq`` run (post-LN, so
that it exports to Marian), converts its weights to ``MarianMTModel`` (the
converter that ``lmlab convert`` uses), and translates the first ``--sentences``
test sources in batches of ``--batch-size`` (file order, as ``lmlab translate``
reads them) with 4 beams both ways, interleaved batch by batch. tokens/s counts
the tokens of the best hypotheses; the outputs must be identical.

    lmlab parallel --pair de-en --out data/de-en
    lmlab seq2seq data/de-en --preset seq2seq-mini --max-steps 1000 --out runs/de-en
    python benchmarks/bench_translate.py runs/de-en data/de-en/test.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, table  # noqa: E402

THREADS = 2


def hf_copy(model):
    """``MarianMTModel`` (or BART) holding the weights of an lmlab encoder-decoder."""
    import transformers

    from lmlab.interop.hf_seq2seq import hf_seq2seq_config, to_hf_seq2seq
    from lmlab.models.weights import model_state

    arch, kwargs = hf_seq2seq_config(model.config)
    cls = {"marian": (transformers.MarianConfig, transformers.MarianMTModel),
           "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration)}[arch]
    hf = cls[1](cls[0](**kwargs)).eval()
    hf.load_state_dict(to_hf_seq2seq(model_state(model), model.config))
    return hf


def main(argv: list[str] | None = None) -> None:
    from lmlab.beam import BeamConfig, beam_search_seq2seq, load_pair_model
    from lmlab.data.parallel import read_pairs
    from lmlab.generate import right_pad

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="an lmlab seq2seq run (or checkpoint) of an encoder-decoder")
    ap.add_argument("test", type=Path, help="a .jsonl of pairs: its sources are translated")
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    pair = load_pair_model(args.run)
    model, c = pair.net, pair.net.config
    hf = hf_copy(model)
    sources = pair.encode([p.src for p in read_pairs(args.test)[:args.sentences]])
    cfg = BeamConfig(num_beams=4, max_new_tokens=min(args.max_new_tokens, pair.room))
    seconds = {"lmlab": 0.0, "hf": 0.0}
    tokens, longest, same = 0, 0, True
    for start in range(0, len(sources), args.batch_size):
        batch = sources[start:start + args.batch_size]
        x, mask = right_pad(batch, c.pad_token_id)
        t0 = time.perf_counter()
        got = beam_search_seq2seq(model, batch, cfg)
        seconds["lmlab"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            want = hf.generate(x, attention_mask=mask, num_beams=4, do_sample=False,
                               max_new_tokens=cfg.max_new_tokens, early_stopping=False,
                               length_penalty=1.0)
        seconds["hf"] += time.perf_counter() - t0
        lengths = [len(h[0].tokens) for h in got]
        tokens += sum(lengths)
        longest += max(lengths) * len(batch)
        for b, hyps in enumerate(got):
            row, n = want[b, 1:].tolist(), len(hyps[0].tokens)
            # After an output, HF's row holds padding (the end token, when pad is 0).
            same &= row[:n] == hyps[0].tokens and set(row[n:]) <= {c.pad_token_id,
                                                                    c.eos_token_id}
    rate = {k: tokens / v for k, v in seconds.items()}
    print(machine_line())
    print()
    print(f"## Beam search on real text: {args.run} ({model.num_params():,} parameters), "
          f"{len(sources)} sources of {args.test}, batches of {args.batch_size}, 4 beams\n")
    print(table(["", "lmlab", "HF", "ratio"],
                [["tokens/s (best hypotheses' tokens)", f"{rate['lmlab']:,.0f}",
                  f"{rate['hf']:,.0f}", f"{rate['lmlab'] / rate['hf']:.2f}x"],
                 ["seconds", f"{seconds['lmlab']:.1f}", f"{seconds['hf']:.1f}", ""]]))
    print(f"\nOutputs identical: {'yes' if same else 'NO'}. {tokens:,} output tokens: "
          f"{tokens / len(sources):.1f} per source on average, against "
          f"{longest / len(sources):.1f} for the longest output of its batch (about the "
          "steps each row is decoded when no input leaves its batch early).")


if __name__ == "__main__":
    main()
