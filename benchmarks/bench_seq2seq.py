"""The encoder-decoder against Hugging Face's ``MarianMTModel``, same weights, same inputs.

* Beam search: lmlab's ``beam.beam_search_seq2seq`` against ``MarianMTModel.generate``
  (``num_beams=4``, ``do_sample=False``), a batch of 8 sources of 12-24 tokens,
  ``max_new_tokens`` new tokens. tokens/s counts the tokens of the returned
  hypotheses (the same on both sides when the outputs are identical, which is
  checked). Runs are interleaved; the median is reported.
* Training: the same batches (source, decoder input, labels; 24 pairs of 12-24
  tokens) through lmlab's model with its fused AdamW (the output layer applied
  to target tokens only, as lmlab's trainer does: padding is skipped), and through
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
    beam_repeats: int = 3
    train_steps: int = 20


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


def padded(srcs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    S = max(map(len, srcs))
    x = torch.full((len(srcs), S), PAD)
    mask = torch.zeros(len(srcs), S, dtype=torch.long)
    for i, s in enumerate(srcs):
        x[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    return x, mask


def beam_rows(settings: Settings, ours, hf) -> tuple[dict, bool]:
    from lmlab.beam import BeamConfig, beam_search_seq2seq

    srcs = sources(8, seed=1)
    x, mask = padded(srcs)
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
    return {k: tokens / median(v) for k, v in times.items()}, same


def train_rows(settings: Settings, ours, hf) -> tuple[dict, float, float]:
    from lmlab.train.engine import make_optimizer
    from lmlab.train.seq2seq import IGNORE, collate_pairs

    batches = []
    for step in range(settings.train_steps + 1):
        src, tgt = sources(24, seed=100 + step), sources(24, seed=200 + step)
        batches.append(collate_pairs(src, tgt, PAD, EOS, torch.device("cpu")))
    runs = {}
    first = {}
    for name, model in (("lmlab", ours), ("hf", hf)):
        model.train()
        opt = (make_optimizer(model, 7e-4, 0.01, (0.9, 0.98)) if name == "lmlab"
               else torch.optim.AdamW(model.parameters(), lr=7e-4, betas=(0.9, 0.98),
                                      weight_decay=0.01))
        n_tok, t0 = 0, 0.0
        for step, (x, mask, dec, labels) in enumerate(batches):
            if step == 1:  # step 0 warms up (allocations); the rest is timed
                t0 = time.perf_counter()
            if name == "lmlab":  # as its trainer: the output layer on target tokens only
                target = labels != IGNORE
                logits = model(x, dec, mask, select=target)  # (N, V)
                loss = F.cross_entropy(logits, labels[target], label_smoothing=0.1)
            else:
                logits = model(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                       ignore_index=IGNORE, label_smoothing=0.1)
            if step == 0:
                first[name] = float(loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step >= 1:
                n_tok += int((labels != IGNORE).sum())
        runs[name] = n_tok / (time.perf_counter() - t0)
    return runs, first["lmlab"], first["hf"]


def run_benchmark(settings: Settings, log=print) -> dict:
    torch.set_num_threads(THREADS)
    ours, hf = build_models()
    ours.eval(), hf.eval()
    log("beam search")
    beam, same = beam_rows(settings, ours, hf)
    log("training")
    train, loss_ours, loss_hf = train_rows(settings, ours, hf)
    return {"beam": beam, "same_outputs": same, "train": train, "loss_lmlab": loss_ours,
            "loss_hf": loss_hf, "settings": vars(settings)}


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
    note = (f"\n\nBeam outputs identical: {'yes' if res['same_outputs'] else 'NO'}. Loss at "
            f"step 1: lmlab {res['loss_lmlab']:.6f}, HF {res['loss_hf']:.6f}. Targets: "
            f"{TARGET_BEAM}x (beam), {TARGET_TRAIN}x (training).")
    return head + table(["", "lmlab", "HF", "ratio", "target"], rows) + note


if __name__ == "__main__":
    run_standalone(sys.modules[__name__])
