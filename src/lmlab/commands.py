"""The subcommands of `lmlab`, one typed function each.

`lmlab.cli` builds the parser from these signatures and docstrings (the
``Args:`` section gives each option's help, ``Examples:`` ends ``--help``).
Heavy libraries are imported inside the functions so ``lmlab --help`` is fast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Literal

from lmlab.errors import LmlabError


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def corpus(inputs: list[Path], out: Path = Path("data/corpus"), text_field: str = "text",
           txt_mode: Literal["paragraph", "file", "line"] = "paragraph",
           val_fraction: float = 0.05, min_chars: int = 1, seed: int = 0) -> None:
    """Build a clean corpus (train/validation split by document) from text files.

    Reads plain-text files, folders (recursively), JSONL files and MediaWiki XML
    dumps (.xml or .xml.bz2, streamed, wiki markup stripped). Every document is
    normalized to Unicode NFC and exact duplicates are removed. Writes
    OUT/train.jsonl, OUT/val.jsonl and OUT/corpus.json.

    Args:
        inputs: files or folders to read; the word `default` means the built-in
            Wikipedia extract shipped with gensim
        out: output folder
        text_field: the field holding the text in JSONL records
        txt_mode: how plain text splits into documents: on blank lines, one per
            file, or one per line
        val_fraction: share of documents held out for validation
        min_chars: drop documents shorter than this
        seed: seed of the train/validation assignment

    Examples:
        lmlab corpus default --out data/wiki
        lmlab corpus enwiki-latest-pages-articles.xml.bz2 --out data/enwiki
        lmlab corpus notes/ reviews.jsonl --text-field body --out data/mine
    """
    from lmlab.data.corpus import build_corpus, default_corpus_source

    paths = [default_corpus_source() if str(p) == "default" else Path(p) for p in inputs]
    stats = build_corpus(paths, out, text_field=text_field, txt_mode=txt_mode,
                         val_fraction=val_fraction, seed=seed, min_chars=min_chars)
    s = stats.to_dict()
    _say(f"read {s['documents_read']:,} documents; dropped {s['empty_dropped']:,} empty/short "
         f"and {s['duplicates_dropped']:,} duplicates")
    _say(f"train: {s['train_docs']:,} documents, {s['train_chars']:,} characters")
    _say(f"val:   {s['val_docs']:,} documents, {s['val_chars']:,} characters")
    _say(f"wrote {out}/train.jsonl, {out}/val.jsonl, {out}/corpus.json")


def tokenizer_train(corpus_dir: Path, out: Path = Path("data/tokenizer.json"),
                    kind: Literal["bpe", "char", "wordpiece"] = "bpe", vocab_size: int = 4096,
                    special_tokens: list[str] | None = None, min_frequency: int = 2,
                    lowercase: bool = True) -> None:
    """Train a byte-level BPE, character-level or WordPiece tokenizer; save tokenizer.json.

    bpe and char encode any UTF-8 text and decode it back exactly: byte-level
    BPE starts from the 256 bytes, and the character tokenizer falls back to
    byte tokens for characters it never saw. wordpiece is BERT's tokenizer,
    for encoder models: lossy (lowercased by default, unknown words become
    [UNK]), with [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0..4.

    Args:
        corpus_dir: a folder made by `lmlab corpus` (its train split is used), or a text/JSONL file
        out: where to write tokenizer.json
        kind: bpe (byte-level BPE), char (one token per character) or wordpiece (BERT)
        vocab_size: vocabulary size, special and byte tokens included
        special_tokens: special tokens (default: <|endoftext|>; for wordpiece
            [PAD] [UNK] [CLS] [SEP] [MASK])
        min_frequency: BPE and WordPiece merges need at least this many occurrences
        lowercase: wordpiece only: lowercase and strip accents, as BERT uncased (the
            default); --no-lowercase keeps case and accents

    Examples:
        lmlab tokenizer train data/wiki --kind bpe --vocab-size 8192 --out data/bpe8k.json
        lmlab tokenizer train data/wiki --kind char --out data/char.json
        lmlab tokenizer train data/wiki --kind wordpiece --vocab-size 8192 --out data/wp8k.json
    """
    from lmlab.data.corpus import iter_documents, read_split
    from lmlab.tokenizer import Tokenizer

    corpus_dir = Path(corpus_dir)
    if corpus_dir.is_dir() and (corpus_dir / "train.jsonl").exists():
        texts = read_split(corpus_dir, "train")
    else:
        texts = iter_documents(corpus_dir)
    t0 = time.perf_counter()
    tok = Tokenizer.train(texts, kind=kind, vocab_size=vocab_size,
                          special_tokens=tuple(special_tokens) if special_tokens else None,
                          min_frequency=min_frequency, lowercase=lowercase)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    _say(f"trained a {kind} tokenizer with {tok.vocab_size:,} tokens in "
         f"{time.perf_counter() - t0:.1f}s; wrote {out}")


def prepare(corpus_dir: Path, tokenizer: Path = Path("data/tokenizer.json"),
            out: Path = Path("data/shards"), shard_tokens: int = 50_000_000,
            overwrite: bool = False) -> None:
    """Tokenize a corpus on all cores into memory-mapped token shards.

    Writes OUT/train_000.bin..., OUT/val_000.bin... (uint16 when the vocabulary
    fits, else uint32), a copy of the tokenizer, and OUT/manifest.json with
    token counts, byte counts and the tokenizer's hash.

    Args:
        corpus_dir: a folder made by `lmlab corpus`
        tokenizer: a tokenizer.json
        out: output folder
        shard_tokens: tokens per shard file
        overwrite: replace OUT if it already holds files

    Examples:
        lmlab prepare data/wiki --tokenizer data/bpe8k.json --out data/wiki-bpe8k
    """
    from lmlab.data.shards import prepare as prepare_shards

    t0 = time.perf_counter()
    manifest = prepare_shards(Path(corpus_dir), Path(tokenizer), Path(out),
                              shard_tokens=shard_tokens, overwrite=overwrite)
    dt = time.perf_counter() - t0
    for split, info in manifest["splits"].items():
        _say(f"{split}: {info['tokens']:,} tokens from {info['documents']:,} documents "
             f"({info['bytes'] / max(info['tokens'], 1):.2f} bytes/token)")
    total = sum(info["tokens"] for info in manifest["splits"].values())
    _say(f"{manifest['dtype']} shards in {out} ({total / max(dt, 1e-9):,.0f} tokens/s)")


def pretrain(data: Path, out: Path = Path("runs/gpt"), preset: str = "gpt-mini",
             n_layer: int | None = None, n_head: int | None = None, n_embd: int | None = None,
             block_size: int | None = None, dropout: float = 0.0, batch_size: int = 16,
             grad_accum: int = 1, max_steps: int = 1000, lr: float = 1e-3,
             min_lr: float | None = None, warmup_steps: int = 50, weight_decay: float = 0.1,
             grad_clip: float = 1.0, eval_interval: int = 100, eval_tokens: int = 131072,
             checkpoint_interval: int | None = None, seed: int = 1337,
             dtype: Literal["float32", "bfloat16"] = "float32", compile: bool = False,
             threads: int | None = None, resume: bool = False, overwrite: bool = False) -> None:
    """Pretrain a GPT-style model (causal LM) on prepared token shards.

    AdamW (fused), linear warm-up then cosine decay, gradient clipping and
    accumulation, optional bf16 autocast and torch.compile. Writes
    OUT/metrics.jsonl, TensorBoard events in OUT/tb, OUT/loss.png and
    checkpoints (safetensors, written atomically) in OUT/checkpoints.
    `--resume` continues a stopped run exactly where its last checkpoint left it.

    Args:
        data: a folder made by `lmlab prepare`
        out: the run folder
        preset: model preset (gpt-nano, gpt-micro, gpt-mini, gpt-small, gpt2-124m,
            llama-nano, llama-mini, llama-small, ...)
        n_layer: override the preset's number of layers
        n_head: override the preset's number of attention heads
        n_embd: override the preset's width
        block_size: override the preset's context length
        dropout: dropout probability
        batch_size: sequences per micro-batch
        grad_accum: micro-batches per optimizer step
        max_steps: optimizer steps
        lr: peak learning rate
        min_lr: final learning rate of the cosine decay (default lr/10)
        warmup_steps: steps of linear warm-up
        weight_decay: AdamW weight decay (matrices only)
        grad_clip: clip the gradient norm to this
        eval_interval: validate every this many steps
        eval_tokens: validation tokens scored each time
        checkpoint_interval: save every this many steps (default: eval_interval)
        seed: random seed (weights, batches, dropout)
        dtype: float32, or bfloat16 autocast (less memory; on CPUs without AMX it
            measured slower than float32, see benchmarks/RESULTS.md)
        compile: torch.compile the model
        threads: CPU threads (default: torch's choice)
        resume: continue the run in OUT from its last checkpoint
        overwrite: start over in OUT, deleting the run already there

    Examples:
        lmlab pretrain data/wiki-bpe8k --preset gpt-mini --max-steps 2000 --out runs/mini
        lmlab pretrain data/wiki-bpe8k --out runs/mini --max-steps 2000 --resume
        lmlab pretrain data/wiki-char --preset llama-mini --dtype bfloat16 --out runs/llama
    """
    from lmlab.train.loop import TrainConfig, Trainer

    cfg = TrainConfig(
        data=str(data), out=str(out), preset=preset, n_layer=n_layer, n_head=n_head,
        n_embd=n_embd, block_size=block_size, dropout=dropout, batch_size=batch_size,
        grad_accum=grad_accum, max_steps=max_steps, lr=lr, min_lr=min_lr,
        warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
        eval_interval=eval_interval, eval_tokens=eval_tokens,
        checkpoint_interval=checkpoint_interval, seed=seed, dtype=dtype, compile=compile,
        threads=threads)
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    _say(f"model: {trainer.model.num_params():,} parameters ({preset}), "
         f"context {trainer.block}, vocab {trainer.model_config.vocab_size:,}")
    result = trainer.fit()
    val = result["val"]
    if val:
        _say(f"step {result['step']}: val loss {val['loss']:.4f}, perplexity "
             f"{val['perplexity']:.2f}, bits/byte {val['bits_per_byte']:.4f}")
    _say(f"checkpoint: {result['checkpoint']}")
    _say(f"loss curve: {result['plot']}   metrics: {out}/metrics.jsonl   tensorboard: {out}/tb")


def evaluate(checkpoint: Path, text: Path, tokenizer: Path | None = None,
             stride: int | None = None, batch_size: int = 8,
             dtype: Literal["float32", "bfloat16"] = "float32",
             quantize: Literal["none", "int8"] = "none", json_out: bool = False) -> None:
    """Perplexity and bits per byte of a checkpoint on a text file.

    Text longer than the context is scored with a sliding window: each token is
    scored once, with at least (context - stride) tokens of context. A JSONL
    file (e.g. a corpus split) is scored document by document, joined by the
    end-of-text token.

    Args:
        checkpoint: a run folder or checkpoint folder
        text: a UTF-8 text file, or a JSONL file with a "text" field
        tokenizer: tokenizer.json (default: the checkpoint's)
        stride: tokens advanced per window (default: the full context)
        batch_size: windows per forward pass
        dtype: float32 or bfloat16
        quantize: int8 for weight-only int8 Linear layers (see `lmlab generate --help`)
        json_out: print the result as JSON

    Examples:
        lmlab eval runs/mini data/wiki/val.jsonl
        lmlab eval runs/mini notes.txt --stride 64
    """
    from lmlab.data.corpus import iter_documents
    from lmlab.evaluate import evaluate_documents
    from lmlab.loading import load_for_inference

    loaded = load_for_inference(checkpoint, tokenizer, dtype, quantize)
    model, tok, ckpt = loaded.model, loaded.tokenizer, loaded.source
    docs = list(iter_documents(Path(text), txt_mode="file"))
    score = evaluate_documents(model, tok, docs, stride=stride, batch_size=batch_size)
    if json_out:
        _say(json.dumps({"checkpoint": str(ckpt), "text": str(text), **score.to_dict()}))
        return
    _say(f"{text}: {score.tokens:,} tokens, {score.n_bytes:,} bytes")
    _say(f"loss {score.loss:.4f} nats/token   perplexity {score.perplexity:.2f}   "
         f"bits/byte {score.bits_per_byte:.4f}")


def generate(checkpoint: Path, prompt: str = "", max_new_tokens: int = 100,
             temperature: float = 0.8, top_k: int | None = None, top_p: float | None = 0.95,
             repetition_penalty: float = 1.0, greedy: bool = False,
             num_return_sequences: int = 1, stop: list[str] | None = None,
             seed: int | None = None, tokenizer: Path | None = None,
             dtype: Literal["float32", "bfloat16"] = "float32", stream: bool = True,
             quantize: Literal["none", "int8"] = "none", compile: bool = False) -> None:
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
            float32 and faster decoding on CPUs, at a small cost in accuracy
        compile: torch.compile the decode step (about a minute to compile on 2 cores;
            then faster per token, worth it for long outputs of many-layer models)

    Examples:
        lmlab generate runs/mini --prompt "The history of" --max-new-tokens 80
        lmlab generate runs/mini --prompt "Paris is" --greedy
        lmlab generate runs/mini --prompt "Paris is" --greedy --quantize int8
        lmlab generate runs/mini --prompt "Once" --num-return-sequences 3 --seed 0 --stop "\\n\\n"
    """
    from lmlab.generate import SamplingConfig, generate_text

    if max_new_tokens < 1:
        raise LmlabError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if top_p is not None and not 0 < top_p <= 1:
        raise LmlabError(f"--top-p must be in (0, 1], got {top_p}")
    from lmlab.loading import load_for_inference

    loaded = load_for_inference(checkpoint, tokenizer, dtype, quantize)
    model, tok = loaded.model, loaded.tokenizer
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
                         compile=compile,
                         seed=seed, on_text=on_text if live else None)
    dt = time.perf_counter() - t0
    if live:
        _say()
    else:
        for i, c in enumerate(outs):
            _say(f"--- sample {i + 1} ({c.finish_reason}) ---")
            _say(prompt + c.text)
    n_tok = sum(c.tokens for c in outs)
    print(f"[{n_tok} tokens in {dt:.2f}s, {n_tok / max(dt, 1e-9):.1f} tokens/s]", file=sys.stderr)


def chat(model: Path, prompt: str | None = None, system: str | None = None,
         max_new_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.9,
         top_k: int | None = None, repetition_penalty: float = 1.0, greedy: bool = False,
         seed: int | None = None, tokenizer: Path | None = None,
         dtype: Literal["float32", "bfloat16"] = "float32",
         quantize: Literal["none", "int8"] = "none") -> None:
    """Chat with a model in the terminal, answers streamed as they are generated.

    Uses the model's own chat template (from the GGUF metadata or the HF
    tokenizer_config.json), or a plain "User:/Assistant:" format for models
    without one. The conversation is kept whole while it fits the context;
    beyond that its oldest messages are dropped (the system message stays) and
    a note says so. Type /reset to start over and /exit (or Ctrl-D) to leave.
    With --prompt, answers one message and exits (for scripts).

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
        quantize: int8 for weight-only int8 Linear layers

    Examples:
        lmlab chat SmolLM2-135M-Instruct.Q4_1.gguf
        lmlab chat SmolLM2-135M-Instruct.Q4_1.gguf --prompt "Capital of France?" --greedy
        echo "Tell me a joke" | lmlab chat ckpt/smollm2 --system "You are terse."
    """
    from lmlab.chat import ChatSession
    from lmlab.generate import SamplingConfig
    from lmlab.loading import load_for_inference

    loaded = load_for_inference(model, tokenizer, dtype, quantize)
    cfg = SamplingConfig(temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty)
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.chat_template, system=system,
                          cfg=cfg, max_new_tokens=max_new_tokens, seed=seed)

    def answer(text: str) -> None:
        session.reply(text, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        _say()

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
            _say("(conversation reset)")
            continue
        answer(line)


def convert(source: Path, *, out: Path) -> None:
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

    Examples:
        lmlab convert ~/models/gpt2 --out ckpt/gpt2
        lmlab convert ~/models/all-MiniLM-L6-v2 --out ckpt/minilm
        lmlab convert runs/mini --out export/mini-hf
    """
    from lmlab.interop.hf_folder import export_hf, import_hf, is_hf_folder

    source = Path(source)
    if not source.exists():
        raise LmlabError(f"{source}: no such folder")
    if is_hf_folder(source):
        import_hf(source, Path(out))
        encoder = json.loads((source / "config.json").read_text()).get("model_type") == "bert"
        hint = (f"lmlab neighbors {out} FILE" if encoder
                else f"lmlab generate {out} --prompt ...")
        _say(f"wrote lmlab checkpoint {out} (try: {hint})")
    else:
        export_hf(source, Path(out))
        _say(f"wrote Hugging Face folder {out} "
             "(AutoModelForCausalLM.from_pretrained loads it)")


def demo(out: Path = Path("runs/demo"), steps: int = 600, preset: str = "gpt-mini",
         vocab_size: int = 4096, prompt: str = "The history of") -> None:
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


def neighbors(model: Path, file: Path, query: list[str] | None = None, top: int = 5,
              batch_size: int = 32, tokenizer: Path | None = None,
              save: Path | None = None) -> None:
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

    Examples:
        lmlab neighbors path/to/all-MiniLM-L6-v2 faq.txt --query "how do I reset my password"
        echo "stock markets fall" | lmlab neighbors runs/bert headlines.txt --top 3
    """
    from lmlab.data.corpus import iter_documents
    from lmlab.sentences import load_encoder, nearest, sentence_embeddings

    if top < 1:
        raise LmlabError(f"--top must be at least 1, got {top}")
    encoder, tok = load_encoder(model, tokenizer)
    lines = [t.strip() for t in iter_documents(Path(file), txt_mode="line") if t.strip()]
    if not lines:
        raise LmlabError(f"{file}: no non-empty lines to search")
    t0 = time.perf_counter()
    corpus = sentence_embeddings(encoder, tok, lines, batch_size=batch_size, normalize=True)
    print(f"embedded {len(lines):,} lines in {time.perf_counter() - t0:.1f}s "
          f"({corpus.size(1)} dimensions)", file=sys.stderr)
    if save is not None:
        from safetensors.torch import save_file

        save_file({"embeddings": corpus.contiguous()}, str(save))
    queries = list(query or []) or [q.strip() for q in sys.stdin if q.strip()]
    q = sentence_embeddings(encoder, tok, queries, batch_size=batch_size, normalize=True)
    for text, hits in zip(queries, nearest(q, corpus, lines, top), strict=True):
        _say(f"query: {text}")
        for h in hits:
            _say(f"  {h.score:6.3f}  [{h.index + 1}] {h.text}")


COMMANDS: dict = {
    "demo": demo,
    "corpus": corpus,
    "tokenizer": {"__doc__": "train tokenizers", "train": tokenizer_train},
    "prepare": prepare,
    "pretrain": pretrain,
    "eval": evaluate,
    "generate": generate,
    "convert": convert,
    "chat": chat,
    "neighbors": neighbors,
}
