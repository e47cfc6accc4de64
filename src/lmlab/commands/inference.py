"""Using a model: perplexity, generation, chat, sentence neighbours, format conversion.

One typed function per subcommand; see ``lmlab.commands``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from lmlab.commands.common import TopP, say
from lmlab.errors import LmlabError
from lmlab.options import (
    Count,
    InDir,
    InFile,
    InPath,
    Input,
    NonNegative,
    NonNegativeFloat,
    OutDir,
    OutFile,
    PositiveFloat,
    Range,
)


def evaluate(checkpoint: InPath, text: InPath, tokenizer: InFile | None = None,
             split: Literal["val", "train"] = "val",
             stride: Count | None = None, context: Count | None = None, batch_size: Count = 8,
             dtype: Literal["float32", "bfloat16"] = "float32",
             quantize: Literal["none", "int8", "int4"] = "none", device: str = "auto",
             json_out: bool = False, adapter: InDir | None = None) -> None:
    """Perplexity and bits per byte of a checkpoint on a text file.

    Text longer than the context is scored with a sliding window: each token is
    scored once, with at least (context - stride) tokens of context. A
    feed-forward or recurrent checkpoint reads the text as one stream instead,
    carrying its state, so every token has all the text before it. A JSONL
    file (e.g. a corpus split) is scored document by document, joined by the
    end-of-text token. A corpus folder (from `lmlab corpus`) has its
    validation split scored, and says so; --split train scores the training
    split instead. Empty input is an error, not a perplexity of 1.

    Args:
        checkpoint: a run folder or checkpoint folder
        text: a UTF-8 text file, a JSONL file with a "text" field, or a corpus folder
        tokenizer: tokenizer.json (default: the checkpoint's)
        split: which split of a corpus folder to score: val (the default) or train
        stride: tokens advanced per window (default: the full window)
        context: window length in tokens (default and at most the model's context)
        batch_size: windows per forward pass
        dtype: float32 or bfloat16
        quantize: int8 or int4 weight-only Linear layers (see `lmlab generate --help`)
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        json_out: print the result as JSON
        adapter: a LoRA adapter folder (lmlab's or PEFT's) to put on the model

    Examples:
        lmlab eval runs/mini data/wiki              # its validation split
        lmlab eval runs/mini data/wiki --split train
        lmlab eval runs/mini notes.txt --stride 64
        lmlab eval gemma-3-270m-q4_k_m.gguf notes.txt --context 1024 --stride 512
    """
    from lmlab.data.corpus import has_split, iter_documents, read_split
    from lmlab.evaluate import evaluate_documents
    from lmlab.loading import load_for_inference

    text = Path(text)
    if has_split(text, split):  # a corpus folder: one split, never train and val mixed
        docs = list(read_split(text, split))
        what = f"{text} ({split} split)"
    elif text.is_dir() and (text / "corpus.json").is_file():
        raise LmlabError(f"{text}: this corpus has no {split} split ({split}.jsonl)")
    else:
        docs = list(iter_documents(text, txt_mode="file"))
        what = str(text)
    if not any(d.strip() for d in docs):
        raise LmlabError(f"{what}: no text to score (empty)")
    loaded = load_for_inference(checkpoint, tokenizer, dtype, quantize, device, adapter)
    model, tok, ckpt = loaded.model, loaded.tokenizer, loaded.source
    score = evaluate_documents(model, tok, docs, stride=stride, batch_size=batch_size,
                               context=context)
    if score.tokens == 0:
        raise LmlabError(f"{what}: the tokenizer made no tokens of this text")
    if json_out:
        say(json.dumps({"checkpoint": str(ckpt), "text": str(text), "split":
                         split if what != str(text) else None, **score.to_dict()}))
        return
    say(f"{what}: {score.tokens:,} tokens, {score.n_bytes:,} bytes")
    say(f"loss {score.loss:.4f} nats/token   perplexity {score.perplexity:.2f}   "
        f"bits/byte {score.bits_per_byte:.4f}")


def generate(checkpoint: InPath, prompt: str = "", max_new_tokens: Count = 100,
             temperature: NonNegativeFloat = 0.8, top_k: Count | None = None,
             top_p: TopP | None = 0.95, repetition_penalty: PositiveFloat = 1.0,
             greedy: bool = False, num_return_sequences: Count = 1,
             stop: list[str] | None = None, seed: int | None = None,
             tokenizer: InFile | None = None,
             dtype: Literal["float32", "bfloat16"] = "float32", stream: bool = True,
             quantize: Literal["none", "int8", "int4"] = "none", device: str = "auto",
             compile: bool = False, num_beams: Count = 1, length_penalty: float = 1.0,
             no_repeat_ngram_size: NonNegative = 0, adapter: InDir | None = None,
             min_new_tokens: NonNegative = 0) -> None:
    """Generate text from a checkpoint, streamed to the terminal.

    Incremental decoding with a KV cache. A prompt longer than the context
    keeps its last tokens (with a warning); when a sequence fills the context,
    decoding slides on with the last half-context.

    Args:
        checkpoint: a run folder or checkpoint folder
        prompt: the text to continue (empty: start from end-of-text)
        max_new_tokens: tokens to generate per sequence
        temperature: softmax temperature (0 = greedy)
        top_k: keep only the k most likely tokens
        top_p: nucleus sampling: keep the smallest set of tokens whose
            probability reaches p (1 disables it)
        repetition_penalty: >1 penalizes tokens already present (CTRL)
        greedy: always pick the most likely token (same as --temperature 0)
        num_return_sequences: independent samples of the same prompt
        stop: stop when any of these strings appears (not printed); the escapes
            \\n and \\t stand for a newline and a tab
        seed: random seed, for reproducible samples
        tokenizer: tokenizer.json (default: the checkpoint's)
        dtype: float32 or bfloat16
        stream: print tokens as they are generated
        quantize: int8 stores every Linear weight as int8 with one scale per output
            row (weight-only, applied after loading): ~4x less weight memory than
            float32 and faster decoding on CPUs, at a small cost in accuracy; int4
            stores 4 bits per weight with a scale and zero per 32 inputs (~7x less
            than float32; a GGUF's Q4_0/Q4_1/Q4_K tensors are used as they are)
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        compile: decode against a static KV cache with the step run through
            torch.compile (a one-off compile per batch size, reported: 30-60 s on 2
            cores, 35-100 s with --quantize, whose weights are frozen into the graph
            and get Inductor's tuned 4/8-bit kernels; then no per-op Python cost:
            SmolLM2 int4 decodes 2.1-2.5x faster, benchmarks/bench_gguf.py)
        min_new_tokens: do not end before this many tokens (the end-of-text token
            is not allowed until then; with --max-new-tokens, a fixed length)
        num_beams: beam search with this many beams instead of sampling (the
            --num-return-sequences best are printed, with their scores)
        length_penalty: beam search: exponent of the length normalisation (above 1
            favours longer outputs)
        no_repeat_ngram_size: beam search: forbid repeating any n-gram of this size
        adapter: a LoRA adapter folder (lmlab's or PEFT's) to put on the model

    Examples:
        lmlab generate runs/mini --prompt "The history of" --max-new-tokens 80
        lmlab generate runs/mini --prompt "Paris is" --greedy
        lmlab generate runs/mini --prompt "Paris is" --greedy --quantize int8
        lmlab generate SmolLM2-135M-Instruct.Q4_1.gguf --prompt "Paris is" --quantize int4
        lmlab generate runs/mini --prompt "Once" --num-return-sequences 3 --seed 0 --stop "\\n\\n"
        lmlab generate runs/mini --prompt "The history of" --num-beams 4 --no-repeat-ngram-size 3
    """
    from lmlab.generate import SamplingConfig, generate_text
    from lmlab.loading import load_for_inference

    loaded = load_for_inference(checkpoint, tokenizer, dtype, quantize, device, adapter)
    model, tok = loaded.model, loaded.tokenizer
    if num_beams > 1:
        _beam_generate(model, tok, prompt, num_beams, max_new_tokens, num_return_sequences,
                       length_penalty, no_repeat_ngram_size)
        return
    cfg = SamplingConfig(temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty)
    live = stream and num_return_sequences == 1
    # A shell cannot easily pass a newline, so "\n" typed literally means one.
    stops = [s.replace("\\n", "\n").replace("\\t", "\t") for s in stop or ()]

    def on_text(row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    t0 = time.perf_counter()
    if live:
        sys.stdout.write(prompt)
    outs = generate_text(model, tok, prompt, max_new_tokens=max_new_tokens, cfg=cfg,
                         num_return_sequences=num_return_sequences, stop=stops,
                         compile=compile, min_new_tokens=min_new_tokens,
                         seed=seed, on_text=on_text if live else None)
    dt = time.perf_counter() - t0
    if live:
        say()
    else:
        for i, c in enumerate(outs):
            say(f"--- sample {i + 1} ({c.finish_reason}) ---")
            say(prompt + c.text)
    n_tok = sum(c.tokens for c in outs)
    if compile:
        from lmlab.generate import compile_seconds

        spent = sum(compile_seconds.values())
        print(f"[compiled the decode step in {spent:.1f}s, included below]", file=sys.stderr)
    print(f"[{n_tok} tokens in {dt:.2f}s, {n_tok / max(dt, 1e-9):.1f} tokens/s]", file=sys.stderr)


def _beam_generate(model, tok, prompt: str, num_beams: int, max_new_tokens: int,
                   num_return_sequences: int, length_penalty: float,
                   no_repeat_ngram_size: int) -> None:
    """`generate --num-beams`: the best continuations of a decoder-only model, with scores."""
    from lmlab.beam import BeamConfig, beam_search_gpt
    from lmlab.generate import fit_prompt
    from lmlab.models.registry import is_stateful

    if is_stateful(model):
        raise LmlabError("--num-beams needs a Transformer decoder (GPT, Llama); a recurrent "
                         "or feed-forward LM samples only")
    ids = tok.encode_prompt(prompt) if prompt else tok.start_ids or [tok.eos_id]
    ids, dropped = fit_prompt(ids, model.config.block_size, max_new_tokens)
    if dropped:
        print(f"warning: the prompt's first {dropped} tokens were dropped to fit the context",
              file=sys.stderr)
    room = model.config.block_size - len(ids)
    if max_new_tokens > room:
        print(f"warning: --max-new-tokens {max_new_tokens} lowered to {room}: beam search "
              "stops at the end of the context", file=sys.stderr)
        max_new_tokens = room
    beam = BeamConfig(num_beams=num_beams, max_new_tokens=max_new_tokens,
                      num_return_sequences=num_return_sequences, length_penalty=length_penalty,
                      no_repeat_ngram_size=no_repeat_ngram_size)
    t0 = time.perf_counter()
    hyps = beam_search_gpt(model, [ids], beam, eos_token_id=tok.eos_id,
                           pad_token_id=tok.eos_id or 0)[0]
    dt = time.perf_counter() - t0
    for i, h in enumerate(hyps):
        say(f"--- beam {i + 1} (score {h.score:.3f}) ---")
        say(prompt + tok.decode(h.tokens, skip_special_tokens=True))
    print(f"[{num_beams} beams, {sum(len(h.tokens) for h in hyps)} tokens returned in "
          f"{dt:.2f}s]", file=sys.stderr)


def chat(model: InPath, prompt: str | None = None, system: str | None = None,
         max_new_tokens: Count = 256, temperature: NonNegativeFloat = 0.7, top_p: TopP = 0.9,
         top_k: Count | None = None, repetition_penalty: PositiveFloat = 1.0,
         greedy: bool = False, seed: int | None = None, tokenizer: InFile | None = None,
         dtype: Literal["float32", "bfloat16"] = "float32",
         quantize: Literal["none", "int8", "int4"] = "none", device: str = "auto",
         adapter: InDir | None = None, input: InFile | None = None,
         out: OutFile | None = None, batch_size: Count = 16, compile: bool = False) -> None:
    """Chat with a model in the terminal, answers streamed as they are generated.

    Uses the model's own chat template (from the GGUF metadata or the HF
    tokenizer_config.json), or a plain "User:/Assistant:" format for models
    without one. The conversation is kept whole while it fits the context;
    beyond that its oldest messages are dropped (the system message stays) and
    a note says so. Type /reset to start over and /exit (or Ctrl-D) to leave.
    With --prompt, answers one message and exits (for scripts). With --input
    (conversations, as `lmlab sft` reads them), answers the last user turn of
    each, in batches, writes the answers to --out (JSONL), and when the
    conversations end with an assistant turn, scores the answers against those
    references by ROUGE-1/2/L (a held-out test of a tuned model).

    Args:
        model: a .gguf file, a Hugging Face folder, or an lmlab run/checkpoint
        prompt: answer this one message and exit
        system: a system message that opens the conversation
        max_new_tokens: longest answer, in tokens
        temperature: softmax temperature (0 = greedy)
        top_p: nucleus sampling threshold (1 disables it)
        top_k: keep only the k most likely tokens
        repetition_penalty: >1 penalizes tokens already present (CTRL)
        greedy: always pick the most likely token
        seed: random seed
        tokenizer: tokenizer file (default: the model's own)
        dtype: float32 or bfloat16
        quantize: int8 or int4 weight-only Linear layers (see `lmlab generate --help`)
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        adapter: a LoRA adapter folder (lmlab's or PEFT's) to put on the model
        input: conversations to answer (.jsonl or .json: messages, ShareGPT or Alpaca)
        out: with --input: where to write the answers (JSONL; default: print them)
        batch_size: with --input: conversations decoded together
        compile: decode through torch.compile, one graph for the whole conversation
            (the first answer waits 30-90 s for the compile, reported; then faster)

    Examples:
        lmlab chat runs/sft-debian --input data/chat-debian/test.jsonl --out answers.jsonl --greedy
        lmlab chat SmolLM2-135M-Instruct.Q4_1.gguf
        lmlab chat SmolLM2-135M-Instruct.Q4_1.gguf --prompt "Capital of France?" --greedy
        lmlab chat SmolLM2-135M-Instruct.Q4_1.gguf --quantize int4 --compile
        echo "Tell me a joke" | lmlab chat ckpt/smollm2 --system "You are terse."
    """
    from lmlab.chat import ChatSession
    from lmlab.generate import SamplingConfig
    from lmlab.loading import load_for_inference

    loaded = load_for_inference(model, tokenizer, dtype, quantize, device, adapter)
    cfg = SamplingConfig(temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty)
    if input is not None:
        _answer_file(loaded, Path(input), out, cfg, max_new_tokens, batch_size, seed)
        return
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.chat_template, system=system,
                          cfg=cfg, max_new_tokens=max_new_tokens, seed=seed, compile=compile)

    def answer(text: str) -> None:
        from lmlab.generate import compile_seconds

        compiled = dict(compile_seconds)
        session.reply(text, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        say()
        for shape, seconds in compile_seconds.items():
            if shape not in compiled:
                print(f"(compiled the decode step in {seconds:.1f}s)", file=sys.stderr)

    if prompt is not None:
        answer(prompt)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {loaded.source} ({loaded.model.num_params():,} parameters); "
              "/reset starts over, /exit leaves", file=sys.stderr)
    while True:
        if interactive:
            try:
                line = input("> ")
            except EOFError:
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
        line = line.strip()
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/reset":
            session.reset()
            say("(conversation reset)")
            continue
        answer(line)


def serve(model: InPath, adapter: InDir | None = None, host: str = "127.0.0.1",
          port: Annotated[int, Range(1, 65535)] = 8000, api_key: str | None = None,
          name: str | None = None, max_batch: Count = 16, max_queue: Count = 256,
          max_tokens: Count = 1024, timeout: PositiveFloat = 300.0,
          max_body: Count = 1_000_000, dtype: Literal["float32", "bfloat16"] = "float32",
          quantize: Literal["none", "int8", "int4"] = "none", device: str = "auto",
          compile: bool = False) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, with a chat page at /.

    POST /v1/chat/completions and /v1/completions (streamed as server-sent
    events, or whole; usage counts, stop, max_tokens, temperature, top_p, seed,
    n), GET /v1/models, GET /health, and POST /v1/embeddings when MODEL is an
    encoder (a BERT folder such as all-MiniLM-L6-v2). Concurrent requests are
    decoded together in one batch that new requests join and finished ones leave
    (continuous batching); at most --max-queue wait (then 429), each must finish
    within --timeout seconds, and a client that disconnects stops its generation.
    The official `openai` client works unchanged (base_url=http://HOST:PORT/v1).

    Safe by default: binds 127.0.0.1; any other address needs an API key
    (--api-key, or the LMLAB_API_KEY environment variable), then checked on
    every /v1 call as "Authorization: Bearer KEY". Bodies over --max-body bytes
    and max_tokens over --max-tokens are refused; a request never names a file.

    Args:
        model: a .gguf file, an HF folder, an lmlab run or checkpoint (or a LoRA run)
        adapter: a LoRA adapter folder (lmlab's or PEFT's) to put on the model
        host: address to bind (other than 127.0.0.1/localhost: needs an API key)
        port: TCP port
        api_key: the key clients must send (default: $LMLAB_API_KEY, if set)
        name: the model's id in the API (default: the file or folder name)
        max_batch: requests decoded together at most
        max_queue: requests waiting at most (beyond: 429)
        max_tokens: the largest max_tokens a request may ask for
        timeout: seconds a request may take from arrival to its last token
        max_body: largest request body, in bytes
        dtype: float32 or bfloat16
        quantize: int8 or int4 weight-only Linear layers (see `lmlab generate --help`)
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        compile: decode through torch.compile (one graph for every batch and cache
            size, plus one for a single request), compiled before the server starts
            listening (about a minute each on 2 cores, reported)

    Examples:
        lmlab serve SmolLM2-135M-Instruct.Q4_1.gguf        # then open http://127.0.0.1:8000/
        lmlab serve SmolLM2-135M-Instruct.Q4_1.gguf --quantize int4 --compile
        lmlab serve runs/sft-debian --port 8080
        LMLAB_API_KEY=secret lmlab serve model.gguf --host 0.0.0.0
        lmlab serve path/to/all-MiniLM-L6-v2               # /v1/embeddings
        curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{"messages": [{"role": "user", "content": "Hi"}]}'
    """  # noqa: E501
    import os

    from lmlab.server import Limits, Service, create_app

    key = api_key or os.environ.get("LMLAB_API_KEY") or None
    if host not in ("127.0.0.1", "localhost", "::1") and not key:
        raise LmlabError(f"--host {host} exposes the server beyond this machine: set an API "
                         "key (--api-key or LMLAB_API_KEY)")
    limits = Limits(max_tokens=max_tokens, default_max_tokens=min(256, max_tokens),
                    max_body=max_body, timeout=timeout)
    source = Path(model)
    label = name or (source.stem if source.suffix == ".gguf" else source.resolve().name)
    if _is_encoder(source):
        from lmlab.sentences import load_encoder

        encoder, tok = load_encoder(source)
        service = Service(label, tok, encoder=encoder.eval(), limits=limits, api_key=key)
        what = "embeddings"
    else:
        from lmlab.loading import load_for_inference

        loaded = load_for_inference(source, None, dtype, quantize, device, adapter)
        from lmlab.models.registry import kind_of

        if kind_of(loaded.model) != "causal":
            raise LmlabError(f"{model}: `lmlab serve` decodes Transformer decoders (GPT, "
                             "Llama, SmolLM2); a feed-forward or recurrent LM is served by "
                             "`lmlab chat` and `lmlab generate` only")
        service = Service(label, loaded.tokenizer, model=loaded.model,
                          template=loaded.chat_template, limits=limits, api_key=key,
                          max_batch=max_batch, max_queue=max_queue, compile=compile)
        what = "chat page: /   API: /v1"
        if compile:
            _warm_up(loaded)
    import uvicorn

    say(f"serving {label} at http://{host}:{port}/ ({what}); Ctrl-C stops")
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")


def _warm_up(loaded: Any) -> None:
    """Compile the server's decode step before it listens: a single request, then two of
    different lengths (torch.compile specializes a batch of one)."""
    from lmlab.generate import SamplingConfig, compile_seconds, generate_texts

    say("compiling the decode step (--compile) ...")
    t0 = time.perf_counter()
    for prompts in (["Hello"], ["Hello", "Hello there, how are you?"]):
        generate_texts(loaded.model, loaded.tokenizer, prompts, max_new_tokens=3,
                       cfg=SamplingConfig(temperature=0), compile=True, dynamic=True)
    say(f"compiled in {time.perf_counter() - t0:.1f}s "
        f"({len(compile_seconds)} graph{'s' if len(compile_seconds) != 1 else ''})")


def _is_encoder(source: Path) -> bool:
    """Whether a model folder holds an encoder (BERT), from its config alone."""
    if source.suffix == ".gguf" or not source.is_dir():
        return False
    from lmlab.loading import model_folder

    try:
        config = json.loads((model_folder(source) / "config.json").read_text())
    except (OSError, ValueError, LmlabError):
        return False
    return config.get("model_type") == "bert"


def _answer_file(loaded: Any, input: Path, out: Path | None, cfg: Any, max_new_tokens: int,
                 batch_size: int, seed: int | None) -> None:
    """`chat --input`: answer every conversation of a file; score them when it has
    references."""
    from lmlab.chat import answer_conversations
    from lmlab.data.chat import read_conversations
    from lmlab.metrics import rouge_scores
    from lmlab.progress import progress_bar

    convs = read_conversations(input)
    refs = [c[-1]["content"] for c in convs if c[-1]["role"] == "assistant"]
    t0 = time.perf_counter()
    with progress_bar(total=len(convs), desc="answers", unit="conv") as bar:
        answers = answer_conversations(loaded.model, loaded.tokenizer, loaded.chat_template,
                                       convs, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, cfg=cfg, seed=seed,
                                       progress=bar.update)
    dt = time.perf_counter() - t0
    rows = [{"prompt": next(m["content"] for m in reversed(c[:-1] if c[-1]["role"] ==
                                                            "assistant" else c)
                            if m["role"] == "user"),
             "answer": a, **({"reference": c[-1]["content"]} if c[-1]["role"] == "assistant"
                             else {})} for c, a in zip(convs, answers, strict=True)]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        say(f"wrote {len(rows):,} answers to {out} ({dt:.0f} s)")
    else:
        for row in rows:
            say(json.dumps(row, ensure_ascii=False))
    if len(refs) == len(convs):
        r = rouge_scores(answers, refs)
        say(f"ROUGE-1/2/L against the reference answers: {r['rouge1']:.2f} / "
            f"{r['rouge2']:.2f} / {r['rougeL']:.2f} ({len(refs):,} conversations)")


def neighbors(model: InPath, file: InFile, query: list[str] | None = None, top: Count = 5,
              batch_size: Count = 32, tokenizer: InFile | None = None,
              save: OutFile | None = None, overwrite: bool = False) -> None:
    """Embed every line of a file with an encoder and find the lines nearest to queries.

    Sentence vectors are the mean of the encoder's final hidden states over the
    real tokens (as sentence-transformers does for all-MiniLM-L6-v2), compared
    by cosine similarity. Queries come from --query, else one per line of stdin.

    Args:
        model: a BERT-style encoder: a Hugging Face BERT folder (e.g.
            all-MiniLM-L6-v2) or an lmlab BERT checkpoint
        file: a UTF-8 text file, one sentence or passage per line (blank lines skipped)
        query: query texts (repeat the option, or give several); default: read stdin
        top: neighbours shown per query
        batch_size: lines embedded per forward pass
        tokenizer: tokenizer file (default: the model's own)
        save: also write the line embeddings (N, C) to this .safetensors file
        overwrite: replace --save's file if it exists

    Examples:
        lmlab neighbors path/to/all-MiniLM-L6-v2 faq.txt --query "how do I reset my password"
        echo "stock markets fall" | lmlab neighbors runs/bert headlines.txt --top 3
    """
    from lmlab.data.corpus import iter_documents
    from lmlab.sentences import load_encoder, nearest, sentence_embeddings

    encoder, tok = load_encoder(model, tokenizer)
    lines = [t.strip() for t in iter_documents(Path(file), txt_mode="line") if t.strip()]
    if not lines:
        raise LmlabError(f"{file}: no non-empty lines to search")
    t0 = time.perf_counter()
    corpus = sentence_embeddings(encoder, tok, lines, batch_size=batch_size, normalize=True)
    print(f"embedded {len(lines):,} lines in {time.perf_counter() - t0:.1f}s "
          f"({corpus.size(1)} dimensions)", file=sys.stderr)
    if save is not None:
        from lmlab.atomic import save_safetensors

        save_safetensors({"embeddings": corpus.contiguous()}, Path(save))
    queries = list(query or []) or [q.strip() for q in sys.stdin if q.strip()]
    q = sentence_embeddings(encoder, tok, queries, batch_size=batch_size, normalize=True)
    for text, hits in zip(queries, nearest(q, corpus, lines, top), strict=True):
        say(f"query: {text}")
        for h in hits:
            say(f"  {h.score:6.3f}  [{h.index + 1}] {h.text}")


def convert(source: InDir, *, out: OutDir, overwrite: bool = False) -> None:
    """Convert a Hugging Face model folder to an lmlab checkpoint, or back.

    The direction follows the source: an HF folder (config.json with a
    model_type, model.safetensors, tokenizer files) of the GPT-2, Llama or BERT
    family becomes an lmlab checkpoint (a decoder for `lmlab generate` and
    `lmlab eval`, an encoder for `lmlab neighbors` and `lmlab finetune`); an
    lmlab run or checkpoint folder becomes an HF folder that
    `AutoModelForCausalLM.from_pretrained(OUT)` loads with the same logits (an
    encoder: `BertModel`, or `BertForMaskedLM` / `BertForPreTraining` with its heads).
    Pickle checkpoints (pytorch_model.bin) are refused, never unpickled.

    Args:
        source: an HF model folder, or an lmlab run/checkpoint folder
        out: the folder to write
        overwrite: replace OUT if it already holds files (the new folder replaces it whole)

    Examples:
        lmlab convert ~/models/gpt2 --out ckpt/gpt2
        lmlab convert ~/models/all-MiniLM-L6-v2 --out ckpt/minilm
        lmlab convert runs/mini --out export/mini-hf
    """
    from lmlab.interop.hf_folder import export_hf, import_hf, is_hf_folder

    source = Path(source)
    if is_hf_folder(source):
        import_hf(source, Path(out))
        encoder = json.loads((source / "config.json").read_text()).get("model_type") == "bert"
        hint = (f"lmlab neighbors {out} FILE" if encoder
                else f"lmlab generate {out} --prompt ...")
        say(f"wrote lmlab checkpoint {out} (try: {hint})")
    else:
        export_hf(source, Path(out))
        say(f"wrote Hugging Face folder {out} "
            "(AutoModelForCausalLM.from_pretrained loads it)")


def merge(model: InPath, *, out: OutDir, adapter: InDir | None = None,
          overwrite: bool = False) -> None:
    """Fold a LoRA adapter into its base model and write a plain lmlab model folder.

    Each adapted weight becomes W + (alpha / r) B A; the folder then loads and
    decodes as any model, with no adapter to apply (same logits within 1e-5).
    The tokenizer and the chat template the adapter was trained with are
    written beside it (tokenizer.json, tokenizer_config.json); `lmlab convert
    OUT --out HF` then gives a Hugging Face folder.

    Args:
        model: a LoRA run of `lmlab sft` (its base is named in its adapter), or the
            base model (a .gguf file, an HF folder, an lmlab run) with --adapter
        out: the model folder to write
        adapter: an adapter folder (lmlab's or PEFT's adapter_config.json +
            adapter_model.safetensors) to put on MODEL
        overwrite: replace OUT if it already holds files

    Examples:
        lmlab merge runs/sft-debian --out models/smollm2-debian
        lmlab merge SmolLM2-135M-Instruct.Q4_1.gguf --adapter peft-adapter/ --out models/merged
        lmlab chat models/smollm2-debian
    """
    from lmlab.atomic import atomic_dir
    from lmlab.loading import load_for_inference, write_chat_config
    from lmlab.models.lora import lora_layers, merge_lora
    from lmlab.train.checkpoint import write_model_files

    loaded = load_for_inference(Path(model), adapter=adapter)
    net = loaded.model
    n = len(lora_layers(net))
    if not n:
        raise LmlabError(f"{model}: no adapter to merge; pass a LoRA run of `lmlab sft`, or "
                         "the base model with --adapter")
    merge_lora(net)
    with atomic_dir(Path(out)) as tmp:
        write_model_files(tmp, net)
        loaded.tokenizer.save(tmp / "tokenizer.json")
        write_chat_config(tmp, loaded.chat_template, loaded.tokenizer)
    say(f"merged {n} adapted layers into {out} ({net.num_params():,} parameters); "
        f"try: lmlab chat {out}")


def _read_sources(input: Path | None, texts: list[str] | None, field: str) -> list[str]:
    """Texts to translate: --texts, else the lines of --input (a .jsonl's ``field``), else
    stdin's lines."""
    if texts:
        return list(texts)
    if input is None or str(input) == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    if input.suffix == ".jsonl":
        from lmlab.data.parallel import read_jsonl

        return [getattr(p, field) for p in read_jsonl(input)]
    return input.read_text(encoding="utf-8").splitlines()


def translate(model: InPath, input: Annotated[Path, Input("any", words=("-",))] | None = None,
              texts: list[str] | None = None,
              out: OutFile | None = None, num_beams: Count = 4, max_new_tokens: Count = 128,
              length_penalty: float = 1.0, no_repeat_ngram_size: NonNegative = 0,
              n_best: Count = 1,
              batch_size: Count = 16, device: str = "auto", threads: Count | None = None,
              overwrite: bool = False) -> None:
    """Translate texts with a model trained on pairs: one output line per input.

    The model is an `lmlab seq2seq` run or checkpoint (an encoder-decoder, or a
    decoder-only model trained the same way; its tokenizer beside it) or a
    Hugging Face Marian / BART folder with a tokenizer.json. Inputs: --texts, the
    lines of --input (for a .jsonl of pairs, its "src" fields), or stdin. Beam
    search with --num-beams beams, GNMT/Hugging Face length penalty, optional
    --no-repeat-ngram-size; batched, each output the best hypothesis.

    Args:
        model: an `lmlab seq2seq` run or checkpoint, or a Marian/BART folder
        input: a text file (one source per line), a .jsonl of pairs, or - for stdin
        texts: sources given on the command line
        out: write the outputs here (default: stdout)
        num_beams: beams (1: greedy)
        max_new_tokens: longest output, in tokens
        length_penalty: exponent of the length normalisation (above 1: longer outputs)
        no_repeat_ngram_size: forbid repeating any n-gram of this size (0: off)
        n_best: write the N best hypotheses of each source, as 'index ||| text |||
            score' lines (Moses' n-best format; at most --num-beams)
        batch_size: sources decoded together
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        threads: CPU threads (default: torch's choice)
        overwrite: replace --out

    Examples:
        lmlab translate runs/de-en --texts "Datei nicht gefunden" "Speichern unter"
        lmlab translate runs/de-en --input data/de-en/test.jsonl --out test.out.txt
        cat sentences.txt | lmlab translate runs/zh-en --num-beams 5 > out.txt
    """
    _decode_pairs(model, input, texts, out, num_beams, max_new_tokens, length_penalty,
                  no_repeat_ngram_size, n_best, batch_size, device, threads, "translate")


def summarize(model: InPath, input: Annotated[Path, Input("any", words=("-",))] | None = None,
              texts: list[str] | None = None,
              out: OutFile | None = None, num_beams: Count = 4, max_new_tokens: Count = 48,
              length_penalty: float = 1.0, no_repeat_ngram_size: NonNegative = 3,
              n_best: Count = 1,
              batch_size: Count = 16, device: str = "auto", threads: Count | None = None,
              overwrite: bool = False) -> None:
    """Summarize texts with a model trained on (document, summary) pairs: one summary per input.

    The model is an `lmlab seq2seq` run on a folder made by `lmlab summaries`
    (an encoder-decoder, or a decoder-only model trained the same way), or a
    Hugging Face BART folder with a tokenizer.json. Inputs: --texts, the lines
    of --input (for a .jsonl of pairs, its "src" fields), or stdin. Beam search
    as `lmlab translate`, with no repeated trigram by default (as BART's
    summarization settings).

    Args:
        model: an `lmlab seq2seq` run or checkpoint, or a BART folder
        input: a text file (one document per line), a .jsonl of pairs, or - for stdin
        texts: documents given on the command line
        out: write the summaries here (default: stdout)
        num_beams: beams (1: greedy)
        max_new_tokens: longest summary, in tokens
        length_penalty: exponent of the length normalisation (above 1: longer outputs)
        no_repeat_ngram_size: forbid repeating any n-gram of this size (0: off)
        n_best: write the N best summaries of each document, as 'index ||| text |||
            score' lines (at most --num-beams)
        batch_size: documents decoded together
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        threads: CPU threads (default: torch's choice)
        overwrite: replace --out

    Examples:
        lmlab summaries stdlib --out data/docstrings
        lmlab seq2seq data/docstrings --norm-first --out runs/docstrings
        lmlab summarize runs/docstrings --input data/docstrings/test.jsonl --out test.sum.txt
        lmlab score --hyp test.sum.txt --ref data/docstrings/test.jsonl --metric rouge --source data/docstrings/test.jsonl
    """  # noqa: E501
    _decode_pairs(model, input, texts, out, num_beams, max_new_tokens, length_penalty,
                  no_repeat_ngram_size, n_best, batch_size, device, threads, "summarize")


def _decode_pairs(model: Path, input: Path | None, texts: list[str] | None, out: Path | None,
                  num_beams: int, max_new_tokens: int, length_penalty: float,
                  no_repeat_ngram_size: int, n_best: int, batch_size: int, device: str,
                  threads: int | None, verb: str) -> None:
    """`lmlab translate` and `lmlab summarize`: one output line per source, by beam search."""
    import torch

    from lmlab.beam import BeamConfig, load_pair_model
    from lmlab.device import resolve_device
    from lmlab.progress import progress_bar

    if n_best > num_beams:
        raise LmlabError(f"--n-best {n_best} is more than --num-beams {num_beams}: a beam "
                         "search keeps only that many hypotheses")
    if threads:
        torch.set_num_threads(threads)
    pair = load_pair_model(model, device=str(resolve_device(device)))
    sources = _read_sources(input, texts, "src")
    if not sources:
        raise LmlabError(f"nothing to {verb}: no --texts, and the input is empty")
    room = pair.room
    if max_new_tokens > room:
        print(f"warning: --max-new-tokens {max_new_tokens} lowered to the model's "
              f"{room} positions", file=sys.stderr)
    beam = BeamConfig(num_beams=num_beams, max_new_tokens=min(max_new_tokens, room),
                      length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                      num_return_sequences=n_best)
    bar = progress_bar(total=len(sources), desc=verb, unit="text",
                       disable=len(sources) <= batch_size)
    t0 = time.perf_counter()
    found = pair.search(sources, beam, batch_size, on_batch=bar.update)
    bar.close()
    if n_best == 1:
        text = "".join(hyps[0][0].replace("\n", " ") + "\n" for hyps in found)
    else:
        text = "".join(f"{i} ||| {t.replace(chr(10), ' ')} ||| {score:.4f}\n"
                       for i, hyps in enumerate(found) for t, score in hyps)
    if out is None:
        sys.stdout.write(text)
    else:
        from lmlab.atomic import write_text

        write_text(out, text)
        say(f"{len(found):,} outputs in {time.perf_counter() - t0:.1f}s -> {out}")


def score(*, hyp: InFile, ref: InFile, metric: list[Literal["bleu", "chrf", "rouge"]] | None = None,
          source: InFile | None = None, dictionary: InFile | None = None) -> None:
    """Score outputs against references: BLEU and chrF (sacrebleu), ROUGE-1/2/L.

    Both files hold one text per line, in the same order; a .jsonl of pairs gives
    its "tgt" fields as references. Chinese references are scored with
    sacrebleu's zh tokenizer, and ROUGE counts each Chinese character as a token
    (rouge-score's own tokenizer drops them and would score Chinese 0). With
    --source (the inputs), the baselines are scored too: copying the source, for
    ROUGE the lead sentence (the source's first sentence, summarization's classic
    baseline), and with --dictionary the word-by-word translation, each source
    word replaced by its dictionary translation (Ding's German-English dictd file,
    or CC-CEDICT for Chinese, cut into words by longest match; the set-up puts both
    in .venv/assets/).

    Args:
        hyp: the outputs, one per line
        ref: the references, one per line, or a .jsonl of pairs
        metric: which scores (default: bleu and chrf)
        source: the inputs, to score copying them as a baseline
        dictionary: a dictd .dict(.dz) file or CC-CEDICT's cedict_ts.u8, for the
            word-by-word baseline (with --source)

    Examples:
        lmlab score --hyp test.out.txt --ref data/de-en/test.jsonl
        lmlab score --hyp summaries.txt --ref gold.txt --metric rouge
        lmlab score --hyp test.out.txt --ref data/de-en/test.jsonl --source data/de-en/test.jsonl --dictionary .venv/assets/ding/german-english.dict.dz
        lmlab score --hyp zh.out.txt --ref data/zh-en/test.jsonl --source data/zh-en/test.jsonl --dictionary .venv/assets/cedict/cedict_ts.u8
    """  # noqa: E501
    from lmlab.metrics import rouge_scores, translation_scores

    hyps = _read_sources(hyp, None, "tgt")
    refs = _read_sources(ref, None, "tgt")
    if len(hyps) != len(refs):
        raise LmlabError(f"{hyp} has {len(hyps):,} lines but {ref} {len(refs):,}; give one "
                         "reference per output")
    metrics = metric or ["bleu", "chrf"]
    rows = [("outputs", hyps)]
    if source is not None:
        srcs = _read_sources(source, None, "src")
        if len(srcs) != len(refs):
            raise LmlabError(f"{source} has {len(srcs):,} lines but {ref} {len(refs):,}")
        rows.append(("copy the source", srcs))
        if "rouge" in metrics:
            from lmlab.data.summaries import lead

            rows.append(("lead sentence", [lead(t) for t in srcs]))
        if dictionary is not None:
            from lmlab.data.parallel import read_dictionary, word_by_word

            table = read_dictionary(dictionary)
            rows.append(("word by word", [word_by_word(t, table) for t in srcs]))
    elif dictionary is not None:
        raise LmlabError("--dictionary translates the --source texts; give --source too")
    header = [m for m in ("bleu", "chrf") if m in metrics]
    header += ["rouge1", "rouge2", "rougeL"] if "rouge" in metrics else []
    say(f"{'':<18}" + "".join(f"{h:>9}" for h in header) + f"   ({len(refs):,} texts)")
    for name, texts in rows:
        scores: dict[str, float] = {}
        if "bleu" in metrics or "chrf" in metrics:
            scores.update(translation_scores(texts, refs))
        if "rouge" in metrics:
            scores.update(rouge_scores(texts, refs))
        say(f"{name:<18}" + "".join(f"{scores[h]:>9.2f}" for h in header))


def inspect(model: InPath, *, prompt: str, out: OutDir, top_k: Count = 5,
            tokenizer: InFile | None = None, device: str = "auto",
            overwrite: bool = False) -> None:
    """Look inside a Transformer reading a prompt: attention, logit lens, surprisal.

    Writes to OUT: attention.png (every layer's and head's attention map in one
    grid, layers as rows), inspect.html (a page with no outside links: pick a
    layer and head, hover a cell for query -> key and its weight; the logit
    lens table; the prompt coloured by surprisal), inspect.json (the numbers)
    and attention.npy (the maps, shape (layers, heads, T, T)). The logit lens
    reads each layer's residual stream through the final norm and the output
    head: the top tokens the model would predict if it stopped there.
    Surprisal is -log2 p(token | the tokens before it). For a BERT encoder the
    page shows the attention from [CLS] and, where the prompt says [MASK],
    the masked-LM head's predictions.

    Args:
        model: a decoder (lmlab run or checkpoint, HF GPT-2/Llama/Gemma folder, .gguf
            file) or a BERT encoder (lmlab checkpoint or HF folder)
        prompt: the text the model reads (for BERT, write [MASK] where a token is to
            be predicted)
        out: the folder to write
        top_k: tokens listed per position in the logit lens and per [MASK]
        tokenizer: tokenizer file (default: the model's own)
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        overwrite: replace OUT if it already holds files

    Examples:
        lmlab inspect SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is" \\
            --out look/smollm2
        lmlab inspect runs/bert --prompt "the cat sat on the [MASK] ." --out look/bert
    """
    from lmlab.atomic import atomic_dir
    from lmlab.inspect_model import PAGE_WEIGHTS, inspect_model, write_inspection

    if not prompt.strip():
        raise LmlabError("the prompt is empty; pass some text with --prompt")
    net, tok = _inspection_model(Path(model), tokenizer, device)
    t0 = time.perf_counter()
    ins = inspect_model(net, tok, prompt, top_k, max_weights=PAGE_WEIGHTS)
    with atomic_dir(Path(out)) as tmp:
        files = write_inspection(ins, tmp, f"{model}: {prompt}")
    n, nh, T, _ = ins.attention.shape
    say(f"{T} tokens, {n} layers x {nh} heads ({time.perf_counter() - t0:.1f}s)")
    if ins.kind == "causal":
        top = ins.lens[-1][-1]
        say(f"next token: {top.tokens[0]!r} ({top.probs[0]:.3f}); logit lens at the last "
            "position, layer by layer:")
        for name, row in zip(ins.lens_layers, ins.lens, strict=True):
            say(f"  {name:>5}  " + "  ".join(f"{t!r} {p:.3f}" for t, p in
                                             zip(row[-1].tokens[:3], row[-1].probs[:3],
                                                 strict=True)))
    else:
        cls = ins.cls_attention[-1].mean(0)  # (T,): the last layer, heads averaged
        say("[CLS] reads most, last layer: " + "  ".join(
            f"{ins.tokens[j]!r} {float(cls[j]):.3f}" for j in cls.argsort(descending=True)[:5]))
        if not ins.has_mlm_head:
            say("no masked-LM head in this model (a bare encoder): no [MASK] predictions")
        elif not ins.masked:
            say("no [MASK] in the prompt: write [MASK] where a token is to be predicted")
        for pos, pred in ins.masked.items():
            say(f"[MASK] at {pos}: " + "  ".join(f"{t!r} {p:.3f}" for t, p in
                                                zip(pred.tokens, pred.probs, strict=True)))
    for what, path in files.items():
        say(f"{what:>8}: {Path(out) / path.name}")


def _inspection_model(source: Path, tokenizer: Path | None, device: str) -> tuple[Any, Any]:
    """A decoder with its tokenizer, as `generate` loads it, or a BERT encoder (masked-LM
    head kept) with the tokenizer beside it."""
    from lmlab.device import resolve_device
    from lmlab.loading import load_for_inference, load_model, model_folder
    from lmlab.tokenizer import Tokenizer

    if not _is_encoder(source):
        loaded = load_for_inference(source, tokenizer, device=device)
        return loaded.model, loaded.tokenizer
    net = load_model(source, device=str(resolve_device(device)))
    tok_path = tokenizer or model_folder(source) / "tokenizer.json"
    if not Path(tok_path).is_file():
        raise LmlabError(f"{source}: no tokenizer.json beside the model; pass --tokenizer")
    return net, Tokenizer.from_file(tok_path)
