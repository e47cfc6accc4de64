"""Greedy decoding with llama.cpp on a GGUF file, timed per step: the peer of bench_gguf.py.

Runs in the Python that has llama-cpp-python (``benchmarks/llama_cpp_env.sh`` builds
``.venv-llama``), not in lmlab's: ``bench_gguf`` starts it as a subprocess with one
JSON argument and reads one JSON line back. It uses llama.cpp's own C API through
the binding's ctypes functions: one context with a sequence per row, the prompt
decoded as one batch (every row's copy), then one token per row per step, each
picked by argmax over that row's logits; the KV cache is cleared between runs.

Prints {"load_s", "prompt_ids", "runs": [{"batch", "t0", "stamps", "tokens"}]}:
``stamps`` are the perf_counter times at which each step's tokens were known
(the first one ends the prefill), ``tokens`` is (batch, new_tokens).

With ``"mode": "greedy"`` it instead decodes each of ``prompts`` alone and prints
{"prompt_ids": [...], "tokens": [...]} per prompt, and the token ids of each of
``texts`` (the tokenizer's answer alone): the reference of the parity checks.
Prompts are tokenized as llama.cpp's own tools do: with the model's start token
where its metadata asks for one, special-token text left as plain text.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

import llama_cpp as L
import numpy as np

_QUIET = L.llama_log_callback(lambda level, text, user: None)


def _open(path: str, threads: int, n_seq: int, kv_f32: bool = False):
    """(model, context, seconds taken): the model read and a context of 1024 positions,
    its KV cache in float16 (llama.cpp's default) or, with ``kv_f32``, float32."""
    L.llama_log_set(_QUIET, ctypes.c_void_p())  # llama.cpp logs every tensor otherwise
    t0 = time.perf_counter()
    L.llama_backend_init()
    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 1024, 512, 512
    cp.n_seq_max = n_seq
    cp.n_threads = cp.n_threads_batch = threads
    if kv_f32:
        cp.type_k = cp.type_v = L.GGML_TYPE_F32
    ctx = L.llama_init_from_model(model, cp)
    return model, ctx, time.perf_counter() - t0


def tokenize(vocab, text: str) -> list[int]:
    """Token ids as llama.cpp's tools read a prompt: start token added where the model
    asks for one, special-token text not parsed."""
    raw = text.encode()
    buf = (L.llama_token * (len(raw) + 8))()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    return list(buf[:n])


def greedy(path: str, prompts: list[str], texts: list[str], new_tokens: int,
           threads: int, kv_f32: bool = False) -> dict:
    """Each prompt decoded alone, greedily, for ``new_tokens`` tokens (EOS ignored)."""
    model, ctx, _ = _open(path, threads, 1, kv_f32)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    batch = L.llama_batch_init(512, 0, 1)
    out = []
    for prompt in prompts:
        ids = tokenize(vocab, prompt)
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        items = [(t, i, i == len(ids) - 1) for i, t in enumerate(ids)]
        tokens: list[int] = []
        while len(tokens) < new_tokens:
            chunk, items = items[:512], items[512:]  # a long prompt goes in 512-token parts
            batch.n_tokens = len(chunk)
            for j, (tok, pos, want) in enumerate(chunk):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, pos, 1
                batch.seq_id[j][0], batch.logits[j] = 0, want
            if L.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            if items:
                continue
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, len(chunk) - 1),
                                           shape=(n_vocab,))
            tokens.append(int(logits.argmax()))
            items = [(tokens[-1], len(ids) + len(tokens) - 1, True)]
        out.append({"prompt_ids": ids, "tokens": tokens})
    texts_ids = [tokenize(vocab, t) for t in texts]
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return {"prompts": out, "texts": texts_ids}


def decode(path: str, prompt: str, batches: list[int], new_tokens: int, repeats: int,
           threads: int) -> dict:
    model, ctx, load_s = _open(path, threads, max(batches))
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    ids = tokenize(vocab, prompt)
    batch = L.llama_batch_init(512, 0, max(batches))
    memory = L.llama_get_memory(ctx)

    def fill(items: list[tuple[int, int, int, bool]]) -> None:
        """(token, position, sequence, wants logits) per batch entry."""
        batch.n_tokens = len(items)
        for j, (tok, pos, seq, want) in enumerate(items):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, pos, 1
            batch.seq_id[j][0], batch.logits[j] = seq, want

    def argmax(j: int) -> int:
        return int(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, j),
                                         shape=(n_vocab,)).argmax())

    runs = []
    T = len(ids)
    for B in batches:
        for rep in range(repeats + 1):  # the first run of each batch size warms up
            L.llama_memory_clear(memory, True)
            start = time.perf_counter()
            fill([(tok, i, s, i == T - 1) for s in range(B) for i, tok in enumerate(ids)])
            if L.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompt")
            nxt = [argmax(s * T + T - 1) for s in range(B)]
            stamps, tokens = [time.perf_counter()], [[t] for t in nxt]
            for step in range(1, new_tokens):
                fill([(nxt[s], T + step - 1, s, True) for s in range(B)])
                if L.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                nxt = [argmax(s) for s in range(B)]
                stamps.append(time.perf_counter())
                for s in range(B):
                    tokens[s].append(nxt[s])
            if rep:
                runs.append({"batch": B, "t0": start, "stamps": stamps, "tokens": tokens})
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return {"load_s": load_s, "prompt_ids": ids, "runs": runs}


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    if args.get("mode") == "greedy":
        print(json.dumps(greedy(args["path"], args["prompts"], args.get("texts", []),
                                args["new_tokens"], args["threads"],
                                args.get("kv_f32", False))))
        sys.exit(0)
    print(json.dumps(decode(args["path"], args["prompt"], args["batches"], args["new_tokens"],
                            args["repeats"], args["threads"])))
