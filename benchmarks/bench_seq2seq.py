"""The encoder-decoder against Hugging Face's ``MarianMTModel``, same weights, same inputs.

* Beam search: lmlab's ``beam.beam_search_seq2seq`` against ``MarianMTModel.generate``
  (``num_beams=4``, ``do_sample=False``), a batch of 8 sources of 12-24 tokens,
  ``max_new_tokens`` new tokens. tokens/s counts the tokens of the returned
  hypotheses (the same on both sides when the outputs are identical, which is
  checked). Runs are interleaved; the median is reported.
* Training: the same batches (source, decoder input, labels; 24 pairs of 12-24
  tokens) through lmlab's model with its fused AdamW and its trainer's loss
  (``train.seq2seq.pair_loss``: the layers skip the padding, and the output layer
  runs fused with the label-smoothed cross-entropy) and step
  (``engine.clip_and_step``: the clipping inside the fused update), and through
  ``MarianMTModel`` with ``torch.optim.AdamW`` in a plain torch loop (forward,
  label-smoothed cross-entropy as lmlab computes it, backward, clip, step). The
  loss of step 1 must be equal; tokens/s counts target tokens.

The shape is ``seq2seq-mini`` (3 + 3 layers, 256 wide, 4 heads, 1,024
feed-forward) at a vocabulary of 8,000, Marian's layout (post-LN, sinusoids,
embeddings scaled), random weights, float32, 2 threads.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, run_standalone, table, verdict  # noqa: E402

THREADS = 2
V, PAD, EOS = 8000, 0, 1
TARGET_BEAM = 2.0  # lmlab beam-search tokens/s over HF generate's
TARGET_TRAIN = 1.3  # lmlab training tokens/s over the plain HF loop's


@dataclass
class Settings:
    new_tokens: int = 32
    beam_repeats: int = 9
    train_steps: int = 40


QUICK = Settings(new_tokens=6, beam_repeats=1, train_steps=3)


def build_models():
    import transformers

    from lmlab.interop.hf_seq2seq import from_hf_seq2seq, seq2seq_config_from_hf
    from lmlab.models.seq2seq import Seq2Seq
    from lmlab.models.weights import load_weights

    torch.manual_seed(0)
    hf = transformers.MarianMTModel(transformers.MarianConfig(
        vocab_size=V, d_model=256, encoder_layers=3, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
        decoder_ffn_dim=1024, max_position_embeddings=128, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=EOS, forced_eos_token_id=None, scale_embedding=True,
        activation_function="relu", dropout=0.0, attention_dropout=0.0))
    cfg = seq2seq_config_from_hf(hf.config.to_dict())
    ours = Seq2Seq(cfg)
    load_weights(ours, from_hf_seq2seq(hf.state_dict(), cfg), Path("hf"))
    return ours, hf


def sources(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(12, 25, (n,), generator=g).tolist()
    return [[*torch.randint(2, V, (k - 1,), generator=g).tolist(), EOS] for k in lengths]


def beam_rows(settings: Settings, ours, hf) -> tuple[dict, bool]:
    from lmlab.beam import BeamConfig, beam_search_seq2seq
    from lmlab.generate import right_pad

    srcs = sources(8, seed=1)
    x, mask = right_pad(srcs, PAD)
    cfg = BeamConfig(num_beams=4, max_new_tokens=settings.new_tokens)
    times: dict[str, list[float]] = {"lmlab": [], "hf": []}
    same, tokens = True, 0
    for _ in range(settings.beam_repeats):
        t0 = time.perf_counter()
        got = beam_search_seq2seq(ours, srcs, cfg)
        times["lmlab"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            want = hf.generate(x, attention_mask=mask, num_beams=4, do_sample=False,
                               max_new_tokens=settings.new_tokens)
        times["hf"].append(time.perf_counter() - t0)
        tokens = sum(len(h[0].tokens) for h in got)
        for b, hyps in enumerate(got):
            row = want[b, 1:1 + len(hyps[0].tokens)].tolist()
            same &= row == hyps[0].tokens
    rates = {k: tokens / median(v) for k, v in times.items()}
    # Each repeat's HF time over lmlab's, the two run back to back: how much the
    # machine's speed moved during the run (a shared host) shows in their spread.
    rates["paired"] = sorted(h / o for h, o in zip(times["hf"], times["lmlab"], strict=True))
    return rates, same


def train_rows(settings: Settings, ours, hf) -> tuple[dict, dict]:
    """Training tokens/s of each side and its loss at every step. The two loops run
    interleaved, a step of each in turn, so that a change in the machine's speed
    during the run (a shared host) falls on both alike."""
    from lmlab.train.engine import clip_and_step, make_optimizer
    from lmlab.train.seq2seq import IGNORE, collate_pairs, pair_loss

    batches = []
    for step in range(settings.train_steps + 1):
        src, tgt = sources(24, seed=100 + step), sources(24, seed=200 + step)
        batches.append(collate_pairs(src, tgt, PAD, EOS, torch.device("cpu")))
    models = {"lmlab": ours, "hf": hf}
    opts = {"lmlab": make_optimizer(ours, 7e-4, 0.01, (0.9, 0.98)),
            "hf": torch.optim.AdamW(hf.parameters(), lr=7e-4, betas=(0.9, 0.98),
                                    weight_decay=0.01)}
    seconds = {name: 0.0 for name in models}
    losses: dict[str, list[float]] = {name: [] for name in models}
    n_tok = 0
    for model in models.values():
        model.train()
    for step, (x, mask, dec, labels) in enumerate(batches):
        for name, model in models.items():
            t0 = time.perf_counter()
            if name == "lmlab":  # its trainer's loss: padding skipped, output layer fused
                total, n = pair_loss(model, x, mask, dec, labels, label_smoothing=0.1)
                loss = total / n
            else:
                logits = model(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                       ignore_index=IGNORE, label_smoothing=0.1)
            loss.backward()
            if name == "lmlab":  # the trainer's step: the clipping inside the fused update
                clip_and_step(opts[name], model.parameters(), 1.0)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if step >= 1:  # step 0 warms up (allocations); the rest is timed
                seconds[name] += time.perf_counter() - t0
            losses[name].append(float(loss.detach()))
        if step >= 1:
            n_tok += int((labels != IGNORE).sum())
    return {name: n_tok / seconds[name] for name in models}, losses


def run_benchmark(settings: Settings, log=print) -> dict:
    torch.set_num_threads(THREADS)
    ours, hf = build_models()
    ours.eval(), hf.eval()
    log("beam search")
    beam, same = beam_rows(settings, ours, hf)
    log("training")
    train, losses = train_rows(settings, ours, hf)
    return {"beam": beam, "same_outputs": same, "train": train, "losses": losses,
            "settings": vars(settings)}


def format_results(res: dict) -> str:
    b, t = res["beam"], res["train"]
    rows = [["beam search (4 beams, batch 8), tokens/s", f"{b['lmlab']:,.0f}",
             f"{b['hf']:,.0f}", f"{b['lmlab'] / b['hf']:.2f}x",
             verdict(b["lmlab"] / b["hf"], TARGET_BEAM)],
            ["training (24 pairs a step), target tokens/s", f"{t['lmlab']:,.0f}",
             f"{t['hf']:,.0f}", f"{t['lmlab'] / t['hf']:.2f}x",
             verdict(t["lmlab"] / t["hf"], TARGET_TRAIN)]]
    head = ("## Encoder-decoder: lmlab against MarianMTModel (seq2seq-mini shape, same "
            "weights)\n\n")
    ours, theirs = res["losses"]["lmlab"], res["losses"]["hf"]
    gap = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    paired = b["paired"]
    note = (f"\n\nBeam search, each repeat's HF time over lmlab's: median "
            f"{median(paired):.2f}x, from {paired[0]:.2f}x to {paired[-1]:.2f}x over "
            f"{len(paired)} repeats. "
            f"Beam outputs identical: {'yes' if res['same_outputs'] else 'NO'}. Loss at "
            f"step 1: lmlab {ours[0]:.6f}, HF {theirs[0]:.6f}; at step {len(ours)}: "
            f"{ours[-1]:.6f} and {theirs[-1]:.6f} (largest gap over the {len(ours)} steps: "
            f"{gap:.1e}). Training steps run interleaved. Targets: {TARGET_BEAM}x (beam), "
            f"{TARGET_TRAIN}x (training).")
    return head + table(["", "lmlab", "HF", "ratio", "target"], rows) + note


if __name__ == "__main__":
    run_standalone(sys.modules[__name__])
