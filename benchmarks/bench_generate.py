"""Greedy decoding speed at batch 1: lmlab's ``generate`` against HF ``GPT2LMHeadModel.generate``.

The model is gpt2-124m-shaped (12 layers, 12 heads, 768 wide, vocab 50257,
tied lm_head) with random weights (``torch.manual_seed(0)``); HF holds the same
weights through ``to_hf_gpt2``. Both decode the same 16-token prompt greedily
with a KV cache for ``new_tokens`` tokens (HF: ``do_sample=False``,
``use_cache=True``, no EOS so it never stops early). Token ids must match.

Each run is timed per token: lmlab's generator yields one token per step, HF
reports each token to a streamer. "end-to-end" is new tokens / (prefill +
decoding), median over repeats; "decode" is 1 / the median time between two
new tokens over all repeats (robust to a stray hiccup; the quantity the
bandwidth bound is about). Runs are interleaved and repeated.

Bandwidth bound: decoding one token at batch 1 must read every weight matrix
once (12 x (c_attn + c_proj + c_fc + mlp.c_proj) + lm_head). bound tokens/s =
copy bandwidth / those bytes, where the bandwidth is measured as (bytes read +
bytes written) / time of a ``dst.copy_(src)`` of 1 GiB, best of several (the
buffers are larger than the last-level cache).

The "lmlab int8 (weight-only)" row is the same model after
``lmlab.models.quantize.quantize_int8`` (every Linear, lm_head included, as int8
with one bf16 scale per output row); its bound counts those bytes (~1 per weight
plus the scales). Its ids are compared with HF fp32's like every row's; they are
allowed to differ (quantization changes the logits).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    OthersCpu,
    median,
    profile_decode_steps,
    run_standalone,
    table,
    verdict,
)

THREADS = 2
PRESET = "gpt2-124m"
PROMPT_LEN = 16
TARGET_PEER = 4.0  # lmlab decode tokens/s over HF's
TARGET_BOUND = 0.60  # fraction of the bandwidth bound
INT8 = "lmlab int8 (weight-only)"


@dataclass
class Settings:
    new_tokens: int = 64
    repeats: int = 5
    copy_bytes: int = 1 << 30
    hf_bf16: bool = True


QUICK = Settings(new_tokens=8, repeats=1, copy_bytes=1 << 28, hf_bf16=False)


@dataclass
class Timing:
    name: str
    e2e_tps: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    prefill_s: list[float] = field(default_factory=list)
    intervals: list[float] = field(default_factory=list)  # seconds between new tokens
    tokens: list[int] | None = None


# ------------------------------------------------------------ measurement
def copy_bandwidth(nbytes: int, repeats: int = 8) -> float:
    """(bytes read + bytes written) / s of a large tensor copy, best of ``repeats``."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        dt = time.perf_counter() - t0
        best = max(best, 2 * nbytes / dt)
    del src, dst
    return best


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of every Linear weight matrix (lm_head included, a tied one counted once).

    An int8 Linear counts its int8 matrix plus its per-row scales; an int4 one its
    packed codes plus its scales and zeros.
    """
    from lmlab.models.quantize import WeightOnlyInt4Linear, WeightOnlyInt8Linear

    seen: set[int] = set()
    total = 0
    for mod in model.modules():
        kinds = torch.nn.Linear | WeightOnlyInt8Linear | WeightOnlyInt4Linear
        if isinstance(mod, kinds) and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            total += mod.weight.numel() * mod.weight.element_size()
            if isinstance(mod, WeightOnlyInt8Linear):
                total += mod.scales.numel() * mod.scales.element_size()
            if isinstance(mod, WeightOnlyInt4Linear):
                sz = mod.scales_and_zeros
                total += sz.numel() * sz.element_size()
    return total


def time_lmlab(model, prompt: torch.Tensor, n: int) -> tuple[list[int], float, list[float]]:
    """Token ids, start time and the time each token came out."""
    from lmlab.generate import SamplingConfig, generate

    ids, stamps = [], []
    t0 = time.perf_counter()
    for tok in generate(model, prompt, n, SamplingConfig(temperature=0.0)):
        ids.append(int(tok[0]))
        stamps.append(time.perf_counter())
    return ids, t0, stamps


def time_hf(model, prompt: torch.Tensor, n: int) -> tuple[list[int], float, list[float]]:
    from transformers import GenerationConfig
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    gc = GenerationConfig(do_sample=False, use_cache=True, max_new_tokens=n, min_new_tokens=n,
                          eos_token_id=None, pad_token_id=None, bos_token_id=None)
    streamer = Stamps()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                             generation_config=gc, streamer=streamer)
    ids = out[0, prompt.size(1):].tolist()
    stamps = streamer.times[1:]  # the first put() is the prompt
    assert len(ids) == n == len(stamps), (len(ids), n, len(stamps))
    return ids, t0, stamps


def record(t: Timing, result: tuple[list[int], float, list[float]]) -> None:
    ids, t0, stamps = result
    n = len(ids)
    t.e2e_tps.append(n / (stamps[-1] - t0))
    t.decode_tps.append((n - 1) / (stamps[-1] - stamps[0]))
    t.prefill_s.append(stamps[0] - t0)
    t.intervals += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    if t.tokens is None:
        t.tokens = ids
    elif t.tokens != ids:
        raise AssertionError(f"{t.name}: greedy decoding is not deterministic across repeats")


def first_mismatch(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return f"differ from token {i + 1}"
    return f"identical ({len(a)}/{len(a)})"


# ------------------------------------------------------------ driver
def build_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmlab.config import GPTConfig
    from lmlab.interop.hf_gpt2 import hf_gpt2_config, to_hf_gpt2
    from lmlab.models.gpt import GPT
    from lmlab.models.weights import model_state

    cfg = GPTConfig.from_name(PRESET)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    hf = GPT2LMHeadModel(GPT2Config(**hf_gpt2_config(cfg), attn_implementation="sdpa"))
    hf.load_state_dict(to_hf_gpt2(model_state(model)), strict=True)
    hf.eval()
    # A fresh GPT2Config carries GPT-2's bos/eos ids (50256), which generate() would
    # put back into our GenerationConfig; this model has no end-of-text token.
    hf.generation_config.eos_token_id = None
    hf.generation_config.bos_token_id = None
    hf.generation_config.pad_token_id = None
    return cfg, model, hf


def run_benchmark(settings: Settings, log=print) -> dict:
    from lmlab.models.quantize import quantize_int8

    torch.set_num_threads(THREADS)
    res: dict = {"settings": dict(settings.__dict__)}
    cfg, model, hf = build_models()
    prompt = torch.randint(0, cfg.vocab_size, (1, PROMPT_LEN),
                           generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logit_diff = (model(prompt) - hf(input_ids=prompt).logits).abs().max().item()
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    model_int8 = quantize_int8(copy.deepcopy(model))
    with torch.inference_mode():
        ref = model(prompt)
        int8_err = ((model_int8(prompt) - ref).norm() / ref.norm()).item()
    runners = [
        (Timing("lmlab fp32"), lambda n: time_lmlab(model, prompt, n)),
        (Timing("HF GPT2LMHeadModel fp32"), lambda n: time_hf(hf, prompt, n)),
        (Timing("lmlab bf16"), lambda n: time_lmlab(model_bf16, prompt, n)),
        (Timing(INT8), lambda n: time_lmlab(model_int8, prompt, n)),
    ]
    if settings.hf_bf16:
        hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
        runners.append((Timing("HF GPT2LMHeadModel bf16"), lambda n: time_hf(hf_bf16, prompt, n)))
    log("  warm-up")
    for _, fn in runners:
        fn(4)
    others = OthersCpu().start()
    for rep in range(settings.repeats):
        log(f"  repeat {rep + 1}/{settings.repeats}")
        for t, fn in runners:
            record(t, fn(settings.new_tokens))
    res["others_cpu_during_timing"] = others.stop()

    log("  copy bandwidth")
    bw = copy_bandwidth(settings.copy_bytes)
    bytes_fp32 = weight_bytes_per_token(model)
    bytes_bf16 = weight_bytes_per_token(model_bf16)
    bytes_int8 = weight_bytes_per_token(model_int8)
    res.update(
        bandwidth_GBps=bw / 1e9, weight_bytes_fp32=bytes_fp32, weight_bytes_bf16=bytes_bf16,
        weight_bytes_int8=bytes_int8, bound_fp32=bw / bytes_fp32, bound_bf16=bw / bytes_bf16,
        bound_int8=bw / bytes_int8, prompt_logits_max_diff=logit_diff,
        int8_prompt_logits_rel_error=int8_err,
        runs=[{"name": t.name, "e2e_tps": t.e2e_tps, "decode_tps": t.decode_tps,
               "prefill_s": t.prefill_s, "intervals": t.intervals, "tokens": t.tokens}
              for t, _ in runners],
    )
    return res


def format_results(res: dict) -> str:
    s = res["settings"]
    runs = {r["name"]: r for r in res["runs"]}
    peer = runs["HF GPT2LMHeadModel fp32"]
    peer_dec = 1 / median(peer["intervals"])
    peer_e2e = median(peer["e2e_tps"])
    rows = []
    for r in res["runs"]:
        kind = "int8" if r["name"] == INT8 else "bf16" if "bf16" in r["name"] else "fp32"
        bound = res[f"bound_{kind}"]
        dec, e2e = 1 / median(r["intervals"]), median(r["e2e_tps"])
        targeted = r["name"] == "lmlab fp32"
        same = first_mismatch(r["tokens"], peer["tokens"]) if r is not peer else "(reference)"
        rows.append([
            r["name"],
            f"{e2e:.1f}",
            f"{dec:.1f}",
            f"{1e3 / dec:.1f}",
            f"{1e3 * median(r['prefill_s']):.0f}",
            f"{dec / peer_dec:.2f}x",
            f"{e2e / peer_e2e:.2f}x",
            verdict(dec / peer_dec, TARGET_PEER) if targeted else "-",
            f"{bound:.1f}",
            f"{dec / bound:.0%}",
            verdict(dec / bound, TARGET_BOUND) if targeted else "-",
            same,
        ])
    headers = ["run", "tokens/s end-to-end", "tokens/s decode", "ms/token", "prefill ms",
               "decode vs HF fp32", "e2e vs HF fp32", f">= {TARGET_PEER:g}x?",
               "bound tokens/s", "of bound", f">= {TARGET_BOUND:.0%}?", "ids vs HF fp32"]
    out = [
        f"### Greedy decoding, batch 1: {PRESET} shape, random weights (seed 0), "
        f"{PROMPT_LEN}-token prompt + {s['new_tokens']} new tokens",
        "",
        f"{s['repeats']} interleaved repeats; end-to-end = median over repeats, decode = 1 / "
        "median time between new tokens over all repeats. Copy bandwidth "
        f"{res['bandwidth_GBps']:.1f} GB/s (read + write, best of 8, "
        f"{s['copy_bytes'] >> 20} MiB buffers); weights read per token "
        f"{res['weight_bytes_fp32'] / 1e6:.0f} MB fp32 / {res['weight_bytes_bf16'] / 1e6:.0f} MB "
        f"bf16 / {res['weight_bytes_int8'] / 1e6:.0f} MB int8 (+ scales) -> bound "
        f"{res['bound_fp32']:.1f} / {res['bound_bf16']:.1f} / {res['bound_int8']:.1f} tokens/s. "
        f"Prompt logits max |lmlab - HF| = {res['prompt_logits_max_diff']:.1e}; int8 prompt "
        f"logits relative error vs lmlab fp32 = {res['int8_prompt_logits_rel_error']:.1%}. "
        f"Other processes used {res['others_cpu_during_timing']:.0%} of the CPUs during the "
        "timed runs.",
        "",
        table(headers, rows),
        "",
        "Targets apply to lmlab fp32 (decode rate). bf16 and int8 rows are compared with "
        "their own bound (the bytes of their weights); their ids are compared with HF fp32's.",
    ]
    return "\n".join(out)


def per_token_overhead(n: int = 200) -> tuple[float, float]:
    """Seconds per decoded token of a tiny model with gpt2-124m's structure (lmlab, HF).

    12 layers and 12 heads but 96 wide with 128 ids: the same ops per token as
    gpt2-124m, each nearly free, so the time is Python, dispatch and framework
    overhead per token.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmlab.config import GPTConfig
    from lmlab.interop.hf_gpt2 import hf_gpt2_config, to_hf_gpt2
    from lmlab.models.gpt import GPT
    from lmlab.models.weights import model_state

    cfg = GPTConfig(n_layer=12, n_head=12, n_embd=96, vocab_size=128, block_size=1024)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    hf = GPT2LMHeadModel(GPT2Config(**hf_gpt2_config(cfg), attn_implementation="sdpa")).eval()
    hf.load_state_dict(to_hf_gpt2(model_state(model)), strict=True)
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        setattr(hf.generation_config, key, None)
    prompt = torch.randint(0, cfg.vocab_size, (1, PROMPT_LEN),
                           generator=torch.Generator().manual_seed(0))
    out = []
    for fn in (time_lmlab, time_hf):
        fn(model if fn is time_lmlab else hf, prompt, 8)
        per = []
        for _ in range(3):
            ids, _, stamps = fn(model if fn is time_lmlab else hf, prompt, n)
            per.append((stamps[-1] - stamps[0]) / (len(ids) - 1))
        out.append(min(per))
    return out[0], out[1]


def profile_decode(steps: int = 32) -> str:
    """Where one lmlab decode step spends its time (torch.profiler, fp32)."""
    torch.set_num_threads(THREADS)
    _, model, _ = build_models()
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_LEN),
                           generator=torch.Generator().manual_seed(0))
    wall, avg, total_ops, matmul_s = profile_decode_steps(model, prompt, steps)
    top = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    rows = [[e.key, f"{e.count // steps}", f"{e.self_cpu_time_total / steps / 1e3:.2f}",
             f"{e.self_cpu_time_total / steps / 1e3 / total_ops:.0%}"] for e in top]
    lm_over, hf_over = per_token_overhead()
    return "\n".join([
        f"### Profile of one lmlab fp32 decode step ({steps} steps averaged)",
        "",
        f"Wall time {1e3 * wall:.1f} ms/step without the profiler; ops' self time "
        f"{total_ops:.1f} ms/step under it. The weight matmuls (addmm + mm) take "
        f"{1e3 * matmul_s:.1f} ms, i.e. they stream the {weight_bytes_per_token(model) / 1e6:.0f}"
        f" MB of weights at {weight_bytes_per_token(model) / matmul_s / 1e9:.1f} GB/s.",
        "",
        table(["op", "calls/step", "self ms/step", "share"], rows),
        "",
        "Fixed per-token overhead (Python, dispatch, framework), measured by decoding with a "
        f"tiny model of the same structure: lmlab {1e3 * lm_over:.2f} ms/token, HF "
        f"{1e3 * hf_over:.2f} ms/token.",
    ])


def main(argv: list[str] | None = None) -> None:
    run_standalone(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
