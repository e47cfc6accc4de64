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
from typing import Annotated, Any, Literal

from lmlab.errors import LmlabError
from lmlab.options import (
    Count,
    Dropout,
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
    RunDir,
)

# Shares of a data set held out: 0 (none) up to, not including, all of it.
Share = Annotated[float, Range(0, 1, hi_open=True)]
# A corpus source: a path, or the word `default` for the built-in extract.
Source = Annotated[Path, Input("any", words=("default",))]
# Nucleus sampling threshold: 1 disables it, 0 would keep nothing.
TopP = Annotated[float, Range(0, 1, lo_open=True)]


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def corpus(inputs: list[Source], out: OutDir = Path("data/corpus"), text_field: str = "text",
           txt_mode: Literal["paragraph", "file", "line"] = "paragraph",
           val_fraction: Share = 0.05, min_chars: NonNegative = 1, seed: int = 0,
           overwrite: bool = False) -> None:
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
        overwrite: replace OUT if it already holds files

    Examples:
        lmlab corpus default --out data/wiki
        lmlab corpus enwiki-latest-pages-articles.xml.bz2 --out data/enwiki
        lmlab corpus notes/ reviews.jsonl --text-field body --out data/mine
    """
    from lmlab.data.corpus import build_corpus, default_corpus_source, split_warning

    paths = [default_corpus_source() if str(p) == "default" else Path(p) for p in inputs]
    stats = build_corpus(paths, out, text_field=text_field, txt_mode=txt_mode,
                         val_fraction=val_fraction, seed=seed, min_chars=min_chars)
    s = stats.to_dict()
    _say(f"read {s['documents_read']:,} documents; dropped {s['empty_dropped']:,} empty/short "
         f"and {s['duplicates_dropped']:,} duplicates")
    _say(f"train: {s['train_docs']:,} documents, {s['train_chars']:,} characters")
    _say(f"val:   {s['val_docs']:,} documents, {s['val_chars']:,} characters")
    _say(f"wrote {out}/train.jsonl, {out}/val.jsonl, {out}/corpus.json")
    hint = split_warning(stats, Path(out), txt_mode)
    if hint:
        print(hint, file=sys.stderr, flush=True)


def tokenizer_train(corpus_dir: InPath, out: OutFile = Path("data/tokenizer.json"),
                    kind: Literal["bpe", "char", "wordpiece"] = "bpe", vocab_size: Count = 4096,
                    special_tokens: list[str] | None = None, min_frequency: Count = 2,
                    lowercase: bool = True, overwrite: bool = False) -> None:
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
        overwrite: replace OUT if it exists

    Examples:
        lmlab tokenizer train data/wiki --kind bpe --vocab-size 8192 --out data/bpe8k.json
        lmlab tokenizer train data/wiki --kind char --out data/char.json
        lmlab tokenizer train data/wiki --kind wordpiece --vocab-size 8192 --out data/wp8k.json
    """
    from lmlab.data.corpus import has_split, iter_documents, read_split
    from lmlab.tokenizer import Tokenizer

    corpus_dir = Path(corpus_dir)
    if has_split(corpus_dir, "train"):
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


def prepare(corpus_dir: InDir, tokenizer: InFile = Path("data/tokenizer.json"),
            out: OutDir = Path("data/shards"), shard_tokens: Count = 50_000_000,
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


def pretrain(data: InDir, out: OutDir | None = None,
             objective: Literal["clm", "mlm"] = "clm", nsp: bool = False,
             mask_prob: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 0.15,
             whole_word_mask: bool = False, preset: str | None = None,
             n_layer: Count | None = None, n_head: Count | None = None,
             n_embd: Count | None = None, block_size: Count | None = None,
             dropout: Dropout | None = None, batch_size: Count = 16,
             grad_accum: Count = 1, max_steps: Count = 1000, lr: PositiveFloat = 1e-3,
             min_lr: NonNegativeFloat | None = None, warmup_steps: NonNegative = 50,
             weight_decay: NonNegativeFloat = 0.1,
             beta1: Annotated[float, Range(0, 1, hi_open=True)] = 0.9,
             beta2: Annotated[float, Range(0, 1, hi_open=True)] = 0.95,
             grad_clip: NonNegativeFloat = 1.0,
             eval_interval: Count = 100, eval_tokens: Count = 131072,
             checkpoint_interval: Count | None = None, seed: int = 1337,
             dtype: Literal["float32", "bfloat16"] = "float32", compile: bool = False,
             device: str = "auto", fsdp: bool = False, threads: Count | None = None,
             resume: bool = False, overwrite: bool = False) -> None:
    """Pretrain a GPT, a classic LM (feed-forward, RNN, LSTM, GRU) or a BERT encoder.

    --objective clm (the default) trains a GPT-style decoder to predict each next
    token, or, with a classic preset (ffnn-small, rnn-small, lstm-small,
    gru-small), Bengio's feed-forward LM over a window of tokens or a recurrent
    LM. A recurrent LM is trained by truncated back-propagation through time:
    the training stream is read as --batch-size parallel streams, --block-size
    tokens per step, the hidden state carried from step to step (and saved in
    checkpoints); it is validated reading the validation stream in order.
    --objective mlm trains a BERT-style encoder to recover masked tokens:
    15 % of the tokens (--mask-prob) are selected for prediction, and of those 80 % are
    replaced by [MASK], 10 % by a random token and 10 % left unchanged. Masking
    is dynamic (a fresh mask every time a batch is drawn, as RoBERTa; BERT
    masked once offline). Inputs are random windows of the stream as
    [CLS] window [SEP]; with --nsp, BERT's sentence pairs [CLS] A [SEP] B [SEP],
    where B follows A or (half the time) comes from another document, and the
    model also predicts which. mlm needs shards made with a WordPiece tokenizer
    (`lmlab tokenizer train --kind wordpiece`) and reports validation
    masked-token accuracy against the most-frequent-token rate.

    AdamW (fused), linear warm-up then cosine decay, gradient clipping and
    accumulation, optional bf16 autocast and torch.compile. Writes
    OUT/metrics.jsonl, TensorBoard events in OUT/tb, OUT/loss.png and
    checkpoints (safetensors, written atomically) in OUT/checkpoints.
    `--resume` continues a stopped run exactly where its last checkpoint left it.

    Launched by torchrun, it trains with DDP across the processes (gloo on
    CPU, NCCL on GPU): each process reads --batch-size rows of every global
    batch of batch-size x processes rows, gradients are averaged, and rank 0
    alone writes the run folder. Resume with the same number of processes.
    With --fsdp, FSDP2 shards parameters, gradients and optimizer state across
    the processes instead (each layer a unit); checkpoints are gathered whole,
    so they load in one process like any other.

    Args:
        data: a folder made by `lmlab prepare`
        out: the run folder (default: runs/gpt for clm, runs/bert for mlm)
        objective: clm (causal LM, GPT presets) or mlm (masked LM, BERT presets)
        nsp: mlm only: add next-sentence prediction (BERT's second objective)
        mask_prob: mlm only: share of tokens selected for prediction
        whole_word_mask: mlm only: select whole words (all their pieces), not single tokens
        preset: model preset (default gpt-mini for clm, bert-mini for mlm): gpt-nano,
            gpt-micro, gpt-mini, gpt-small, gpt2-124m, llama-nano, llama-mini,
            llama-small, ...; ffnn-small, rnn-small, lstm-small, gru-small; bert-nano,
            bert-tiny, bert-mini, bert-small, ...
        n_layer: override the preset's number of layers
        n_head: override the preset's number of attention heads
        n_embd: override the preset's width (classic presets: the embedding width; the
            hidden width keeps the preset's ratio to it)
        block_size: override the preset's context length (recurrent presets: the
            back-propagation length; ffnn: the positions per training row)
        dropout: dropout probability (default: the preset's, 0 for GPT, 0.1 for BERT)
        batch_size: sequences per micro-batch
        grad_accum: micro-batches per optimizer step
        max_steps: optimizer steps
        lr: peak learning rate
        min_lr: final learning rate of the cosine decay (default lr/10)
        warmup_steps: steps of linear warm-up
        weight_decay: AdamW weight decay (matrices only)
        beta1: AdamW's first-moment decay
        beta2: AdamW's second-moment decay (0.95 as GPT-3; BERT used 0.999)
        grad_clip: clip the gradient norm to this
        eval_interval: validate every this many steps
        eval_tokens: validation tokens scored each time
        checkpoint_interval: save every this many steps (default: eval_interval)
        seed: random seed (weights, batches, dropout)
        dtype: float32, or bfloat16 autocast (less memory; on CPUs without AMX it
            measured slower than float32, see benchmarks/RESULTS.md)
        compile: torch.compile the model
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        fsdp: under torchrun: shard the model with FSDP2 instead of replicating it (DDP)
        threads: CPU threads (default: torch's choice)
        resume: continue the run in OUT from its last checkpoint
        overwrite: start over in OUT, deleting the run already there

    Examples:
        lmlab pretrain data/wiki-bpe8k --preset gpt-mini --max-steps 2000 --out runs/mini
        lmlab pretrain data/wiki-bpe8k --out runs/mini --max-steps 2000 --resume
        lmlab pretrain data/wiki-char --preset llama-mini --dtype bfloat16 --out runs/llama
        lmlab pretrain data/wiki-bpe8k --preset lstm-small --lr 3e-3 --out runs/lstm
        lmlab pretrain data/wiki-wp8k --objective mlm --nsp --lr 5e-4 --out runs/bert
        lmlab pretrain data/wiki-wp8k --objective mlm --whole-word-mask --out runs/bert-wwm
        torchrun --nproc_per_node 2 -m lmlab pretrain data/wiki-bpe8k --out runs/ddp
        torchrun --nproc_per_node 4 -m lmlab pretrain data/wiki-bpe8k --fsdp --out runs/fsdp
    """
    from lmlab.train import distributed
    from lmlab.train.loop import TrainConfig, Trainer

    if out is None:
        out = Path("runs/bert" if objective == "mlm" else "runs/gpt")
    cfg = TrainConfig(
        objective=objective, nsp=nsp, mask_prob=mask_prob, whole_word_mask=whole_word_mask,
        data=str(data), out=str(out), preset=preset, n_layer=n_layer, n_head=n_head,
        n_embd=n_embd, block_size=block_size, dropout=dropout, batch_size=batch_size,
        grad_accum=grad_accum, max_steps=max_steps, lr=lr, min_lr=min_lr,
        warmup_steps=warmup_steps, weight_decay=weight_decay, beta1=beta1, beta2=beta2,
        grad_clip=grad_clip, eval_interval=eval_interval, eval_tokens=eval_tokens,
        checkpoint_interval=checkpoint_interval, seed=seed, dtype=dtype, compile=compile,
        device=device, fsdp=fsdp, threads=threads)

    try:
        trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
        if trainer.world.main:
            _pretrain_summary(trainer)
        result = trainer.fit()
    finally:
        distributed.leave()
    if trainer.world.main:
        _pretrain_result(result, objective, out)


def _pretrain_summary(trainer: Any) -> None:
    """The model, and what one optimizer step reads."""
    from lmlab.models.registry import family_of

    cfg, mc, world = trainer.cfg, trainer.model_config, trainer.world
    # A recurrent model has no context limit: its block is how far gradients flow back.
    span = "back-propagation length" if family_of(mc).batches == "streams" else "context"
    _say(f"model: {trainer.model.num_params():,} parameters ({cfg.preset}), "
         f"{span} {trainer.block}, vocab {mc.vocab_size:,}, on {trainer.device}")
    parts = [f"{cfg.batch_size} rows"]
    if world.distributed:
        parts.append(f"{world.size} processes")
    if cfg.grad_accum > 1:
        parts.append(f"{cfg.grad_accum} micro-batches")
    if len(parts) > 1:
        rows = cfg.batch_size * world.size * cfg.grad_accum
        _say(f"global batch: {' x '.join(parts)} = {rows} rows of {trainer.block} tokens "
             "per step")


def _pretrain_result(result: dict[str, Any], objective: str, out: Path) -> None:
    val = result["val"]
    if val and objective == "mlm":
        nsp_part = f", NSP accuracy {val['nsp_accuracy']:.1%}" if "nsp_accuracy" in val else ""
        _say(f"step {result['step']}: val masked-token accuracy {val['masked_accuracy']:.1%} "
             f"(always predicting the most frequent token: {val['most_frequent_rate']:.1%})"
             f"{nsp_part}, MLM loss {val['mlm_loss']:.4f}, perplexity {val['perplexity']:.2f}")
    elif val:
        _say(f"step {result['step']}: val loss {val['loss']:.4f}, perplexity "
             f"{val['perplexity']:.2f}, bits/byte {val['bits_per_byte']:.4f}")
    _say(f"checkpoint: {result['checkpoint']}")
    _say(f"loss curve: {result['plot']}   metrics: {out}/metrics.jsonl   tensorboard: {out}/tb")


def evaluate(checkpoint: InPath, text: InPath, tokenizer: InFile | None = None,
             split: Literal["val", "train"] = "val",
             stride: Count | None = None, batch_size: Count = 8,
             dtype: Literal["float32", "bfloat16"] = "float32",
             quantize: Literal["none", "int8"] = "none", device: str = "auto",
             json_out: bool = False) -> None:
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
        stride: tokens advanced per window (default: the full context)
        batch_size: windows per forward pass
        dtype: float32 or bfloat16
        quantize: int8 for weight-only int8 Linear layers (see `lmlab generate --help`)
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        json_out: print the result as JSON

    Examples:
        lmlab eval runs/mini data/wiki              # its validation split
        lmlab eval runs/mini data/wiki --split train
        lmlab eval runs/mini notes.txt --stride 64
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
    loaded = load_for_inference(checkpoint, tokenizer, dtype, quantize, device)
    model, tok, ckpt = loaded.model, loaded.tokenizer, loaded.source
    score = evaluate_documents(model, tok, docs, stride=stride, batch_size=batch_size)
    if score.tokens == 0:
        raise LmlabError(f"{what}: the tokenizer made no tokens of this text")
    if json_out:
        _say(json.dumps({"checkpoint": str(ckpt), "text": str(text), "split":
                         split if what != str(text) else None, **score.to_dict()}))
        return
    _say(f"{what}: {score.tokens:,} tokens, {score.n_bytes:,} bytes")
    _say(f"loss {score.loss:.4f} nats/token   perplexity {score.perplexity:.2f}   "
         f"bits/byte {score.bits_per_byte:.4f}")


def generate(checkpoint: InPath, prompt: str = "", max_new_tokens: Count = 100,
             temperature: NonNegativeFloat = 0.8, top_k: Count | None = None,
             top_p: TopP | None = 0.95, repetition_penalty: PositiveFloat = 1.0,
             greedy: bool = False, num_return_sequences: Count = 1,
             stop: list[str] | None = None, seed: int | None = None,
             tokenizer: InFile | None = None,
             dtype: Literal["float32", "bfloat16"] = "float32", stream: bool = True,
             quantize: Literal["none", "int8"] = "none", device: str = "auto",
             compile: bool = False) -> None:
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
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        compile: torch.compile the decode step (about a minute to compile on 2 cores;
            then faster per token, worth it for long outputs of many-layer models)

    Examples:
        lmlab generate runs/mini --prompt "The history of" --max-new-tokens 80
        lmlab generate runs/mini --prompt "Paris is" --greedy
        lmlab generate runs/mini --prompt "Paris is" --greedy --quantize int8
        lmlab generate runs/mini --prompt "Once" --num-return-sequences 3 --seed 0 --stop "\\n\\n"
    """
    from lmlab.generate import SamplingConfig, generate_text
    from lmlab.loading import load_for_inference

    loaded = load_for_inference(checkpoint, tokenizer, dtype, quantize, device)
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


def chat(model: InPath, prompt: str | None = None, system: str | None = None,
         max_new_tokens: Count = 256, temperature: NonNegativeFloat = 0.7, top_p: TopP = 0.9,
         top_k: Count | None = None, repetition_penalty: PositiveFloat = 1.0,
         greedy: bool = False, seed: int | None = None, tokenizer: InFile | None = None,
         dtype: Literal["float32", "bfloat16"] = "float32",
         quantize: Literal["none", "int8"] = "none", device: str = "auto") -> None:
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
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps

    Examples:
        lmlab chat SmolLM2-135M-Instruct.Q4_1.gguf
        lmlab chat SmolLM2-135M-Instruct.Q4_1.gguf --prompt "Capital of France?" --greedy
        echo "Tell me a joke" | lmlab chat ckpt/smollm2 --system "You are terse."
    """
    from lmlab.chat import ChatSession
    from lmlab.generate import SamplingConfig
    from lmlab.loading import load_for_inference

    loaded = load_for_inference(model, tokenizer, dtype, quantize, device)
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
        _say(f"wrote lmlab checkpoint {out} (try: {hint})")
    else:
        export_hf(source, Path(out))
        _say(f"wrote Hugging Face folder {out} "
             "(AutoModelForCausalLM.from_pretrained loads it)")


def demo(out: RunDir = Path("runs/demo"), steps: Count = 600, preset: str = "gpt-mini",
         vocab_size: Count = 4096, prompt: str = "The history of") -> None:
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
        _say(f"query: {text}")
        for h in hits:
            _say(f"  {h.score:6.3f}  [{h.index + 1}] {h.text}")


def finetune(*, task: Literal["classify", "tag", "qa"], train: InFile, model: str,
             out: OutDir, validation: InFile | None = None, test: InFile | None = None,
             tokenizer: InFile | None = None, vectors: InFile | None = None,
             vectors_max_words: Count | None = None, text_field: str = "text",
             label_field: str = "label", tokens_field: str = "tokens", tags_field: str = "tags",
             context_field: str = "context", question_field: str = "question",
             answer_field: str = "answer", answer_start_field: str = "answer_start",
             encoding: str = "utf-8", val_fraction: Share = 0.1, test_fraction: Share = 0.1,
             max_length: Count | None = None, truncation: Literal["tail", "head"] = "tail",
             pooling: Literal["cls", "mean", "last"] | None = None,
             max_answer_tokens: Count = 30, epochs: Count = 3, max_steps: Count | None = None,
             batch_size: Count = 16, lr: PositiveFloat = 5e-5,
             weight_decay: NonNegativeFloat = 0.01, warmup_ratio: Share = 0.1,
             grad_clip: NonNegativeFloat = 1.0, head_dropout: Dropout = 0.1,
             class_weights: bool | None = None, patience: Count | None = None,
             eval_interval: Count | None = None, freeze_backbone: bool = False, seed: int = 0,
             threads: Count | None = None, device: str = "auto",
             dtype: Literal["float32", "bfloat16"] = "float32",
             overwrite: bool = False) -> None:
    """Fine-tune a BERT, GPT or GRU/LSTM backbone for classification, tagging or extractive QA.

    Tasks: classify (one label per text), tag (one tag per word; BIO tags are
    scored by entity F1, others by token accuracy), qa (the answer is a span
    of the context; scored by SQuAD exact match and F1). Data files: .csv,
    .tsv, .jsonl/.json (SQuAD files too), fastText .txt/.cor (classify),
    CoNLL .conll/.iob/.bio (tag). Without --validation/--test those splits
    are carved from --train (stratified by label for classify, seeded).

    Backbones: a Hugging Face BERT folder (e.g. all-MiniLM-L6-v2), GPT-2 or
    Llama folder, an lmlab BERT/GPT/RNN checkpoint or run folder, or a preset name
    (bert-mini, gpt-mini, gru-classifier, lstm-small, ...) for random
    initialisation with --tokenizer. BERT reads [CLS] text [SEP] ([CLS] question
    [SEP] context [SEP] for qa); GPT reads the text (question <eos> context),
    right-padded, pooled at its last token by default; a recurrent encoder
    (gru-classifier: one bidirectional GRU layer) reads it as GPT does,
    mean-pooled by default, with no context limit.

    Truncation, to --max-length tokens (default: the smaller of the backbone's
    context and 256): classify keeps the start of a long text (--truncation
    tail) or its end (--truncation head); tag leaves the words beyond it
    untagged (scored as O, counted in a warning); qa keeps the question and
    cuts the end of the context, skipping training questions whose answer was
    cut (counted in a warning). There is no sliding window.

    Training: AdamW (no decay on biases and norms), linear warm-up then linear
    decay, gradient clipping, class weights, length-bucketed batches. The
    validation metric (macro F1, entity F1 or QA F1) is computed every epoch
    (and every --eval-interval steps); the best model is kept in OUT/best/
    (written atomically) and training stops after --patience evaluations
    without improvement. Then the best model is scored on the test split:
    OUT/report.txt, OUT/report.json (and OUT/confusion.png for classify).
    OUT also gets metrics.jsonl, TensorBoard events (OUT/tb) and loss.png.

    Args:
        task: classify, tag or qa
        train: labelled training file
        model: backbone: an HF folder, an lmlab checkpoint/run folder, or a preset name
        out: the run folder
        validation: labelled validation file (default: carved from --train)
        test: labelled test file (default: carved from --train)
        tokenizer: tokenizer file (default: the model's own; required for a preset, unless
            --vectors gives the words)
        vectors: word vectors (word2vec text/binary or GloVe text, e.g. from `lmlab embed
            train`) that initialise a recurrent preset's embeddings (their width becomes the
            vectors'); without --tokenizer, a word-level tokenizer over the vectors' words
        vectors_max_words: keep only the first (most frequent) words of --vectors
        text_field: classify: the text column/key
        label_field: classify: the label column/key
        tokens_field: tag: the words column/key (space-separated in CSV/TSV)
        tags_field: tag: the tags column/key
        context_field: qa: the context column/key
        question_field: qa: the question column/key
        answer_field: qa: the answer text column/key
        answer_start_field: qa: the answer's character offset (default: its first occurrence)
        encoding: text encoding of the data files
        val_fraction: share of --train held out for validation when no --validation
        test_fraction: share of --train held out for testing when no --test
        max_length: tokens per input, special tokens included
        truncation: classify: tail cuts the end of long texts, head cuts their start
        pooling: classify: cls (BERT's [CLS] through its pooler), mean, or last (GPT);
            default cls for BERT (mean for sentence-transformers folders), last for GPT,
            mean for a recurrent encoder
        max_answer_tokens: qa: longest answer span, in tokens
        epochs: passes over the training data
        max_steps: stop after this many optimizer steps (a cap on --epochs)
        batch_size: examples per step (under torchrun: per process)
        lr: peak learning rate
        weight_decay: AdamW weight decay (not on biases and norms)
        warmup_ratio: share of the steps spent warming the learning rate up
        grad_clip: clip the gradient norm to this
        head_dropout: dropout before the task head
        class_weights: weigh the loss by inverse class frequency (default: on for
            classify, off for tag)
        patience: stop after this many evaluations in a row without a better
            validation metric (default: never; the best model is kept either way)
        eval_interval: also evaluate every this many steps
        freeze_backbone: train the head only
        seed: random seed (splits, head, batches, dropout)
        threads: CPU threads (default: torch's choice)
        device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps
        dtype: float32, or bfloat16 autocast (1.6x faster on CPUs with AMX, e.g.
            recent Xeons; slower on CPUs without it)
        overwrite: replace a fine-tuning run already in OUT

    Examples:
        lmlab finetune --task classify --train spam.jsonl --model path/to/all-MiniLM-L6-v2 --out runs/spam
        lmlab finetune --task classify --train reviews.csv --text-field review --label-field stars --model runs/bert --max-length 128 --truncation head --out runs/stars
        lmlab finetune --task tag --train ner-train.conll --validation ner-dev.conll --model bert-mini --tokenizer data/wp8k.json --epochs 10 --patience 2 --out runs/ner
        lmlab finetune --task qa --train squad-train.json --test squad-dev.json --model path/to/all-MiniLM-L6-v2 --max-length 384 --out runs/qa
        lmlab finetune --task classify --train spam.jsonl --model runs/gpt --pooling mean --out runs/spam-gpt
        lmlab finetune --task classify --train spam.jsonl --model gru-classifier --tokenizer data/tokenizer.json --lr 3e-3 --epochs 5 --out runs/spam-gru
        lmlab finetune --task classify --train spam.jsonl --model gru-classifier --vectors vectors.txt --lr 3e-3 --epochs 5 --out runs/spam-glove
        torchrun --nproc_per_node 2 -m lmlab finetune --task classify --train spam.jsonl --model all-MiniLM-L6-v2 --out runs/spam-ddp
    """  # noqa: E501
    from lmlab.train import distributed
    from lmlab.train.finetune import FinetuneConfig, Finetuner

    cfg = FinetuneConfig(
        task=task, train=str(train), model=str(model), out=str(out),
        validation=str(validation) if validation else None, test=str(test) if test else None,
        tokenizer=str(tokenizer) if tokenizer else None,
        vectors=str(vectors) if vectors else None, vectors_max_words=vectors_max_words,
        text_field=text_field, label_field=label_field, tokens_field=tokens_field,
        tags_field=tags_field,
        context_field=context_field, question_field=question_field, answer_field=answer_field,
        answer_start_field=answer_start_field, encoding=encoding, val_fraction=val_fraction,
        test_fraction=test_fraction, max_length=max_length, truncation=truncation,
        pooling=pooling, max_answer_tokens=max_answer_tokens, epochs=epochs,
        max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, grad_clip=grad_clip, head_dropout=head_dropout,
        class_weights=class_weights, patience=patience, eval_interval=eval_interval,
        freeze_backbone=freeze_backbone, seed=seed, threads=threads, device=device,
        dtype=dtype)
    try:
        tuner = Finetuner(cfg, overwrite=overwrite)
        say = _say if tuner.world.main else (lambda *_: None)  # rank 0 alone reports
        n = {k: len(v) for k, v in tuner.splits.items()}
        labels = f", {len(tuner.labels)} labels" if tuner.labels else ""
        say(f"data: {n['train']:,} train, {n['val']:,} validation, {n['test']:,} test{labels}")
        world = (f", {tuner.world.size} processes x batch {batch_size}"
                 if tuner.world.distributed else "")
        say(f"model: {tuner.kind.upper()} backbone from {model}, {tuner.model.num_params():,} "
            f"parameters, max length {tuner.max_length}, {tuner.total_steps:,} steps{world}")
        fit = tuner.fit()
    finally:
        distributed.leave()
    if not tuner.world.main:
        return
    stop = " (stopped early)" if fit["stopped_early"] else ""
    _say(f"trained {fit['steps']:,} steps, {fit['epochs']} epochs in "
         f"{fit['train_seconds']:.1f}s{stop}; best val {fit['metric']} {fit['best_val']:.4f} "
         f"at step {fit['best_step']}")
    report = tuner.test()
    if report is not None:
        _say(f"test ({report['test_examples']:,} examples):")
        _say(report["text"])
        extra = "   confusion matrix: {out}/confusion.png" if task == "classify" else ""
        _say(f"report: {out}/report.txt, {out}/report.json{extra.format(out=out)}")
    _say(f"best model: {out}/best   loss curve: {out}/loss.png   tensorboard: {out}/tb")


def predict(checkpoint: InDir, texts: list[str] | None = None, file: InFile | None = None,
            out: OutFile | None = None, context: str | None = None, batch_size: Count = 32,
            text_field: str = "text", tokens_field: str = "tokens",
            context_field: str = "context", question_field: str = "question",
            encoding: str = "utf-8", overwrite: bool = False) -> None:
    """Predict with a model made by `lmlab finetune`.

    Input: --texts, else --file (any format `lmlab finetune` reads; labels
    may be absent, and when every row has one the score is printed), else one
    text per line of stdin. For tag each text is split into words on
    whitespace; for qa each text is a question about --context.

    Output: one line per input: label<TAB>probability<TAB>text (classify),
    word/TAG pairs (tag; /? marks words beyond the model's max length), or
    answer<TAB>probability<TAB>question (qa). With --out, a .jsonl or .csv
    file with the inputs and a prediction column instead.

    Args:
        checkpoint: a run folder made by `lmlab finetune` (its best/ model is used) or
            a best/ folder
        texts: texts to predict (give several after one --texts)
        file: a file of examples to predict
        out: write predictions to this .jsonl or .csv file
        context: qa: the passage the answers are taken from
        batch_size: inputs per forward pass
        text_field: classify: the text column/key of --file
        tokens_field: tag: the words column/key of --file
        context_field: qa: the context column/key of --file
        question_field: qa: the question column/key of --file
        encoding: text encoding of --file
        overwrite: replace --out's file if it exists

    Examples:
        lmlab predict runs/spam --texts "WIN a FREE cruise, reply now" "minutes of Monday's meeting"
        lmlab predict runs/spam --file inbox.jsonl --out inbox-predicted.csv
        lmlab predict runs/ner --texts "Angela Merkel visited Paris"
        lmlab predict runs/qa --context "lmlab was written in 2025." --texts "When was it written?"
    """
    from lmlab.atomic import write_text
    from lmlab.train.tasks.checkpoint import (
        examples_from_texts,
        load_task_model,
        predict_examples,
        task_labels,
    )
    from lmlab.train.tasks.decoding import iter_prediction_rows, score_predictions

    if out is not None and Path(out).suffix.lower() not in (".jsonl", ".csv"):
        raise LmlabError(f"{out}: --out must end in .jsonl or .csv")
    if texts and file is not None:
        raise LmlabError("give --texts or --file, not both")
    model, tok, info = load_task_model(Path(checkpoint))
    task = info["task"]
    if file is not None:
        from lmlab.data.tasks import read_task_file

        examples = read_task_file(Path(file), task, text_field=text_field,
                                  tokens_field=tokens_field, context_field=context_field,
                                  question_field=question_field, require_labels=False,
                                  encoding=encoding)
    else:
        if not texts:
            if sys.stdin.isatty():
                raise LmlabError("nothing to predict: give --texts, --file, or lines on stdin")
            texts = [line.strip() for line in sys.stdin if line.strip()]
            if not texts:
                raise LmlabError("nothing to predict: stdin held no non-empty lines")
        examples = examples_from_texts(task, texts, context)
    preds = predict_examples(model, tok, info, examples, batch_size)
    cut = sum(p.truncated for p in preds)
    if cut:
        print(f"warning: {cut} of {len(preds)} inputs are longer than the model's "
              f"{info['max_length']} tokens (truncation: {info['truncation']})", file=sys.stderr)
    labelled = [getattr(ex, {"classify": "label", "tag": "tags", "qa": "answer"}[task])
                for ex in examples]
    if file is not None and all(x is not None for x in labelled):
        name, value, _ = score_predictions(preds, examples, task, task_labels(info))
        print(f"{file}: {name} {value:.4f} on {len(examples):,} examples", file=sys.stderr)
    rows = list(iter_prediction_rows(examples, preds, task))
    if out is not None:
        if Path(out).suffix.lower() == ".jsonl":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        else:
            import csv
            import io

            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: " ".join(x or "?" for x in v) if isinstance(v, list) else v
                                 for k, v in r.items()})
            text = buf.getvalue()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(out), text)
        _say(f"wrote {len(rows):,} predictions to {out}")
        return
    for ex, p in zip(examples, preds, strict=True):
        # One line per input: newlines and tabs inside a text are shown as spaces.
        if task == "classify":
            _say(f"{p.label}\t{p.probability:.4f}\t{' '.join(ex.text.split())}")
        elif task == "tag":
            _say(" ".join(f"{w}/{t or '?'}" for w, t in zip(ex.tokens, p.tags or [],
                                                             strict=True)))
        else:
            _say(f"{' '.join((p.answer or '').split())}\t{p.probability:.4f}\t"
                 f"{' '.join(ex.question.split())}")


def compare(data: InDir | None = None, /, *, out: RunDir = Path("runs/compare"),
            models: list[str] | None = None, steps: Count = 600, batch_size: Count = 16,
            block_size: Count = 128, word_ngram: NonNegative = 0,
            dtype: Literal["float32", "bfloat16"] = "float32", seed: int = 1337) -> None:
    """Train every family of LM on one corpus and tokenizer; one table and one chart.

    n-grams (interpolated modified Kneser-Ney) count the whole training split;
    the neural models (feed-forward, RNN, LSTM, GRU, GPT) train for the same
    steps x batch x block tokens with the same loop. Every model is scored on
    the whole validation split. Bits per byte divides the loss by the bytes of
    the text, so unlike perplexity it compares across tokenizers (word-level
    and subword). Writes compare.md, compare.json and compare.png in --out.

    Args:
        data: a folder made by `lmlab prepare` (default: prepare the built-in corpus in OUT/data)
        out: folder for the table, the chart and each model's run
        models: ngram-N (any order N >= 1), a family (ffnn, rnn, lstm, gru, gpt: their
            -small / gpt-mini presets) or a preset name (default: ngram-2 to ngram-5, ffnn,
            lstm, gru, gpt)
        steps: training steps of each neural model
        batch_size: rows per step
        block_size: tokens per row (the truncated-BPTT length of recurrent models)
        word_ngram: also a word-level n-gram of this order on the same text (0: none)
        dtype: float32, or bfloat16 autocast for the neural models
        seed: seed of every neural run

    Examples:
        lmlab compare
        lmlab compare data/shards --steps 2000 --out runs/compare-long
        lmlab compare --models ngram-3 lstm gpt --steps 200 --word-ngram 3
    """
    from lmlab.compare import DEFAULT_MODELS, CompareConfig, Comparison, format_table, notes

    cfg = CompareConfig(out=str(out), data=str(data) if data else None,
                        models=models or list(DEFAULT_MODELS), steps=steps,
                        batch_size=batch_size, block_size=block_size, word_ngram=word_ngram,
                        dtype=dtype, seed=seed)
    rows = Comparison(cfg, say=_say).run()
    _say()
    _say(format_table(rows))
    _say()
    for line in notes(rows):
        _say(f"note: {line}.")
    _say(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {out / 'compare.png'}")


def _ngram_tokenizer(model_meta: dict, tokenizer: Path | None):
    """The tokenizer of a subword n-gram model (None for word level), checked by hash."""
    from lmlab.tokenizer import Tokenizer

    if model_meta.get("level") != "subword":
        return None
    path = tokenizer or model_meta.get("tokenizer")
    if not path or not Path(path).is_file():
        raise LmlabError(f"this subword model needs its tokenizer ({path or 'unknown'}); "
                         "pass --tokenizer")
    tok = Tokenizer.from_file(path)
    if model_meta.get("tokenizer_sha256") not in (None, tok.sha256):
        raise LmlabError(f"{path} is not the tokenizer this model was trained with")
    return tok


def _ngram_report(model, texts: list[str], tok, label: str) -> dict:
    from lmlab.models.ngram import text_sentences

    sents = text_sentences(texts, tokenizer=tok, use_jieba=model.meta.get("jieba", False))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)  # for bits per byte
    s = (model.score(sents, n_bytes=n_bytes) if tok is not None
         else model.score_words(sents, n_bytes=n_bytes))
    what = "perplexity" if s.normalized else \
        "pseudo-perplexity (stupid backoff gives scores, not probabilities)"
    _say(f"{label}: {what} {s.perplexity:,.2f}, {s.bits_per_byte:.4f} bits per byte, "
         f"{s.tokens:,} tokens ({s.oov:,} OOV = {s.oov / max(s.tokens, 1):.1%}), "
         f"{n_bytes:,} bytes")
    return s.to_dict()


def ngram_train(corpus_dir: InPath, out: OutFile = Path("ngram.arpa"), order: Count = 3,
                smoothing: Literal["kn", "addk", "stupid"] = "kn",
                level: Literal["word", "subword"] = "word", tokenizer: InFile | None = None,
                jieba: bool = False, min_count: Count = 1, k: PositiveFloat = 1.0,
                discount_fallback: bool = True, overwrite: bool = False) -> None:
    """Train an n-gram language model; print validation perplexity and bits per byte.

    One sentence per non-blank line of each document, padded with <s> ... </s>
    as KenLM does. Words are whitespace-split (or segmented by jieba for
    Chinese); at subword level the sentences are token ids of any lmlab
    tokenizer. kn is interpolated modified Kneser-Ney (KenLM's estimate), addk
    is add-k (Lidstone), stupid is stupid backoff (scores, not probabilities).
    OUT ending in .arpa is an ARPA file (kn only; KenLM reads it), any other
    name an .npz.

    Args:
        corpus_dir: a folder made by `lmlab corpus` (trained on train, scored on val) or a
            text/JSONL file (no validation)
        out: the model file: .arpa, or .npz for any smoothing
        order: n, the longest n-gram
        smoothing: kn, addk or stupid
        level: word (whitespace / jieba words) or subword (token ids of --tokenizer)
        tokenizer: a tokenizer.json (subword level)
        jieba: segment Chinese text into words with jieba (word level)
        min_count: words seen fewer times become <unk>
        k: add-k's pseudo-count (1 = add-one)
        discount_fallback: when the data are too few to estimate Kneser-Ney discounts, use
            KenLM's fallback 0.5 1.0 1.5 with a warning (--no-discount-fallback: fail)
        overwrite: replace OUT if it exists

    Examples:
        lmlab ngram train data/wiki --order 3 --out wiki3.arpa
        lmlab ngram train data/wiki --level subword --tokenizer data/bpe8k.json --order 5 \\
            --out wiki-bpe5.arpa
        lmlab ngram train data/zh --jieba --order 3 --out zh3.arpa
        lmlab ngram train data/wiki --smoothing addk --k 0.1 --out wiki-addk.npz
    """
    import warnings

    from lmlab.data.corpus import has_split
    from lmlab.models.ngram import (
        DiscountFallbackWarning,
        NgramLM,
        read_texts,
        text_sentences,
        whitespace_warning,
    )
    from lmlab.tokenizer import Tokenizer

    if Path(out).suffix == ".arpa" and smoothing != "kn":
        raise LmlabError(f"{smoothing} is not a backoff model, so it cannot be an ARPA file; "
                         "name --out *.npz")
    if level == "subword" and tokenizer is None:
        raise LmlabError("--level subword needs --tokenizer tok.json")
    corpus_dir = Path(corpus_dir)
    tok = Tokenizer.from_file(tokenizer) if level == "subword" else None
    meta = {"level": level, "jieba": jieba}
    if tok is not None:
        meta |= {"tokenizer": str(Path(tokenizer).resolve()), "tokenizer_sha256": tok.sha256}
    t0 = time.perf_counter()
    texts = read_texts(corpus_dir, "train", progress=True)
    hint = whitespace_warning(texts, str(corpus_dir)) if level == "word" and not jieba else None
    if hint:
        print(hint, file=sys.stderr, flush=True)
    sents = text_sentences(texts, tokenizer=tok, use_jieba=jieba)
    t1 = time.perf_counter()
    opts = {"order": order, "smoothing": smoothing, "min_count": min_count, "k": k,
            "discount_fallback": discount_fallback, "meta": meta}
    with warnings.catch_warnings(record=True) as caught:  # one clean line, not a source dump
        warnings.simplefilter("always", DiscountFallbackWarning)
        if tok is not None:
            model = NgramLM.fit(sents, vocab_size=tok.vocab_size, **opts)
        else:
            model = NgramLM.fit_words(sents, **opts)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr, flush=True)
    t2 = time.perf_counter()
    sizes = ", ".join(f"{len(x):,} {n}-grams" for n, x in enumerate(model.keys, 1))
    _say(f"{level}-level order-{order} {smoothing} model from {len(sents):,} sentences: {sizes} "
         f"(read {t1 - t0:.1f}s, estimated {t2 - t1:.2f}s)")
    if model.discounts:
        _say("discounts D1 D2 D3+: " + "; ".join(
            f"order {n}: " + " ".join(f"{x:.3f}" for x in d)
            for n, d in enumerate(model.discounts, 1)))
    if has_split(corpus_dir, "val"):
        _ngram_report(model, read_texts(corpus_dir, "val"), tok, "validation")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    _say(f"wrote {out} ({model.num_params:,} entries)")


def ngram_eval(model: InFile, text: InPath, tokenizer: InFile | None = None,
               json_out: bool = False) -> None:
    """Perplexity and bits per byte of text under an n-gram model (.arpa or .npz).

    Args:
        model: a model from `lmlab ngram train`, or any ARPA file (word level)
        text: a corpus folder (its val split is scored) or a text/JSONL file
        tokenizer: the tokenizer.json of a subword model (default: the path it was trained with)
        json_out: also print the scores as one JSON line

    Examples:
        lmlab ngram eval wiki3.arpa data/wiki
        lmlab ngram eval kenlm.arpa test.txt
    """
    from lmlab.models.ngram import NgramLM, read_texts

    lm = NgramLM.load(model)
    tok = _ngram_tokenizer(lm.meta, tokenizer)
    res = _ngram_report(lm, read_texts(Path(text), "val"), tok, str(text))
    if json_out:
        _say(json.dumps(res))


def ngram_sample(model: InFile, prompt: str = "", num: Count = 1, max_len: Count = 50,
                 temperature: NonNegativeFloat = 1.0, seed: int = 0,
                 tokenizer: InFile | None = None) -> None:
    """Sample sentences from an n-gram model, one per line; each stops at </s>.

    Args:
        model: a model from `lmlab ngram train`, or any ARPA file (word level)
        prompt: the start of every sentence
        num: how many sentences
        max_len: the most tokens drawn per sentence
        temperature: 1 samples the model's distribution, lower is more conservative, 0 greedy
        seed: random seed
        tokenizer: the tokenizer.json of a subword model (default: the path it was trained with)

    Examples:
        lmlab ngram sample wiki3.arpa --num 3 --prompt 'The history of'
    """
    from lmlab.models.ngram import NgramLM, split_words

    lm = NgramLM.load(model)
    tok = _ngram_tokenizer(lm.meta, tokenizer)
    use_jieba = lm.meta.get("jieba", False)
    words = [w for s in split_words(prompt, use_jieba=use_jieba) for w in s]
    prefix = tok.encode(prompt) if tok is not None else lm.word_ids(words)
    for i in range(num):
        ids = lm.sample(prefix=prefix, max_len=max_len, temperature=temperature, seed=seed + i)
        if tok is not None:
            _say(tok.decode(list(prefix) + [j for j in ids if j >= 0]))
        else:
            _say(("" if use_jieba else " ").join(words + [lm.id_to_word(j) for j in ids]))


def embed_train(corpus: Source,
                method: Literal["skipgram", "word2vec", "cbow", "fasttext", "glove"] = "skipgram",
                dim: Count = 100, window: Count = 5, min_count: Count = 5,
                epochs: Count | None = None, x_max: PositiveFloat = 100.0,
                workers: Count | None = None, seed: int = 0,
                out: OutFile = Path("vectors.txt"), binary: bool = False, eval: bool = True,
                restrict_vocab: Count = 30_000, jieba: bool = False,
                overwrite: bool = False) -> None:
    """Train word vectors (word2vec, fastText or GloVe) and evaluate them.

    Text is lowercased and split into words and punctuation marks; each line
    is a sentence. Chinese segmented by spaces keeps its words; raw Chinese is
    cut into words by jieba with --jieba, else into characters (with a
    warning). word2vec and fastText are trained by gensim; GloVe by lmlab
    (co-occurrence counts, then AdaGrad). Prints training words/s and, unless
    --no-eval, the analogy accuracy and WordSim-353 / SimLex-999 correlations
    (English sets: skipped, with a note, on Chinese vectors). Small corpora (a
    million words) give low analogy scores: the word2vec papers trained on billions.

    Args:
        corpus: a folder made by `lmlab corpus`, a text file (one document per
            line) or folder, or `default` for the built-in Wikipedia extract
        method: skipgram (= word2vec), cbow, fasttext (subword skip-gram) or glove
        dim: vector dimension
        window: context window, in words on each side
        min_count: words seen fewer times are dropped (try 2 on a small corpus)
        epochs: passes over the corpus (default: 5; glove 25)
        x_max: glove only: co-occurrence count at which a cell gets full weight
            (the paper's 100; 10 suits corpora of a few million words)
        workers: threads (default: all cores for gensim, 1 for glove)
        seed: random seed
        out: output file, word2vec format
        binary: write word2vec binary instead of text
        eval: evaluate on the analogy and word-similarity sets (--no-eval to skip)
        restrict_vocab: analogy answers are searched among this many most frequent words
        jieba: segment Chinese text into words with jieba
        overwrite: replace OUT if it exists

    Examples:
        lmlab embed train default --method skipgram --out data/w2v.txt
        lmlab embed train data/wiki --method glove --x-max 10 --out data/glove.txt
        lmlab embed train reviews.txt --method fasttext --dim 50 --min-count 2 --no-eval
        lmlab embed train data/zh --jieba --min-count 2 --out zh.txt
    """
    from lmlab.models.embeddings import evaluate, read_sentences, train_vectors

    sentences = read_sentences(corpus, jieba=jieba)
    kwargs = {"x_max": x_max} if method == "glove" else {}
    result = train_vectors(sentences, method, dim=dim, window=window, min_count=min_count,
                           epochs=epochs, seed=seed, workers=workers, **kwargs)
    result.vectors.save(out, binary=binary)
    loss = f"; final loss {result.losses[-1]:.4f}" if result.losses else ""
    _say(f"{result.method}: {len(result.vectors):,} words x {result.vectors.dim} dims from "
         f"{result.corpus_words:,} corpus words, {result.epochs} epochs in "
         f"{result.seconds:.1f}s ({result.words_per_s:,.0f} words/s){loss}; wrote {out}")
    if eval:
        _say(evaluate(result.vectors, restrict_vocab=restrict_vocab).format())


def embed_eval(vectors: InFile, restrict_vocab: Count = 30_000) -> None:
    """Evaluate word vectors: analogies per section, WordSim-353 and SimLex-999.

    Analogies ("man is to king as woman is to ?") are answered by 3CosAdd
    among the most frequent words; questions with an unknown word are skipped
    and counted. Reads word2vec text or binary, or GloVe text files.

    Args:
        vectors: a word-vector file
        restrict_vocab: analogy answers are searched among this many first (most
            frequent) words

    Examples:
        lmlab embed eval data/w2v.txt
        lmlab embed eval glove.6B.100d.txt --restrict-vocab 30000
    """
    from lmlab.models.embeddings import evaluate, load_vectors

    wv = load_vectors(vectors)
    _say(f"{vectors}: {len(wv):,} words x {wv.dim} dims")
    _say(evaluate(wv, restrict_vocab=restrict_vocab).format())


def embed_neighbors(vectors: InFile, word: list[str], top: Count = 10) -> None:
    """Show the nearest words (by cosine similarity) of each word given.

    Args:
        vectors: a word-vector file (word2vec text or binary, or GloVe text)
        word: one or more words to look up
        top: neighbours shown per word

    Examples:
        lmlab embed neighbors data/w2v.txt king france
    """
    from lmlab.models.embeddings import load_vectors

    wv = load_vectors(vectors)
    for w in word:
        key = w if w in wv else w.lower()
        _say(f"{w}:")
        for other, sim in wv.most_similar(key, top):
            _say(f"  {sim:6.3f}  {other}")


def baseline(*, train: InPath, test: InFile | None = None, validation: InFile | None = None,
             features: Literal["auto", "word", "char", "jieba"] = "auto",
             text_field: str = "text", label_field: str = "label", encoding: str = "utf-8",
             val_fraction: Share = 0.1, test_fraction: Share = 0.1, seed: int = 0,
             out: OutFile | None = None, overwrite: bool = False) -> None:
    """Score a TF-IDF + logistic-regression text classifier: what fine-tuning must beat.

    Reads the files `lmlab finetune --task classify` reads and carves the
    splits it carves: without --test, the same --val-fraction,
    --test-fraction and --seed give the same test set (the validation split
    is held out and unused). --train may also be a finetune run folder: its
    split files, or the data and settings of its finetune_config.json. Trains
    on the train split, scores the test split.

    Features: word (word 1-2-grams), char (character 1-3-grams within words,
    the usual choice for Chinese), jieba (1-2-grams of jieba's Chinese words);
    auto picks char for Chinese text, word otherwise. Terms in fewer than 2
    training texts are dropped; classes are weighted by inverse frequency.

    Args:
        train: labelled training file, or a `lmlab finetune` run folder
        test: labelled test file (default: carved from --train)
        validation: labelled validation file (only changes what is carved, as in finetune)
        features: auto, word, char or jieba
        text_field: the text column/key
        label_field: the label column/key
        encoding: text encoding of the data files
        val_fraction: share of --train held out for validation when no --validation
        test_fraction: share of --train held out for testing when no --test
        seed: random seed of the splits and the model
        out: also write the report to this JSON file
        overwrite: replace --out's file if it exists

    Examples:
        lmlab baseline --train reviews.jsonl --test reviews-test.jsonl
        lmlab baseline --train reviews.csv --text-field review --features jieba
        lmlab baseline --train runs/reviews-bert --out runs/reviews-bert/baseline.json
    """
    from lmlab.atomic import write_text
    from lmlab.baselines import DESCRIPTIONS, tfidf_logreg
    from lmlab.data.tasks import load_splits, read_run_splits

    train = Path(train)
    if train.is_dir():
        if test is not None or validation is not None:
            raise LmlabError(f"{train} is a run folder with its own splits; give --test and "
                             "--validation only with a data file as --train")
        splits = read_run_splits(train, "classify")
    else:
        splits = load_splits(train, validation, test, "classify", seed=seed,
                             val_fraction=val_fraction, test_fraction=test_fraction,
                             text_field=text_field, label_field=label_field, encoding=encoding)
    if not splits["test"]:
        raise LmlabError(f"{train}: no test examples; give --test FILE or a --test-fraction > 0")
    result = tfidf_logreg(splits["train"], splits["test"], features=features, seed=seed)
    n_labels = len(result.report.labels)
    held = (f" ({len(splits['val']):,} validation examples held out, as finetune holds them)"
            if splits["val"] else "")
    _say(f"data: {len(splits['train']):,} train, {len(splits['test']):,} test, "
         f"{n_labels} labels{held}")
    _say(f"baseline: TF-IDF of {DESCRIPTIONS[result.features]} + logistic regression, "
         f"{result.n_features:,} features, fitted in {result.fit_seconds:.1f}s")
    _say(f"test ({result.report.n:,} examples):")
    _say(result.report.format())
    if out is not None:
        report = {"train": str(train), "test": str(test) if test else None, "seed": seed,
                  "validation_examples": len(splits["val"])} | result.to_dict()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(out), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        _say(f"report: {out}")


COMMANDS: dict = {
    "demo": demo,
    "corpus": corpus,
    "tokenizer": {"__doc__": "train tokenizers", "train": tokenizer_train},
    "prepare": prepare,
    "ngram": {"__doc__": "n-gram language models (Kneser-Ney, add-k, stupid backoff; ARPA)",
              "train": ngram_train, "eval": ngram_eval, "sample": ngram_sample},
    "embed": {"__doc__": "train, evaluate and query word vectors", "train": embed_train,
              "eval": embed_eval, "neighbors": embed_neighbors},
    "pretrain": pretrain,
    "eval": evaluate,
    "generate": generate,
    "convert": convert,
    "chat": chat,
    "neighbors": neighbors,
    "finetune": finetune,
    "predict": predict,
    "compare": compare,
    "baseline": baseline,
}
