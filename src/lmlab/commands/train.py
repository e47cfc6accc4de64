"""Training: pretraining, fine-tuning, predicting with a fine-tuned model, and the
bag-of-words baseline.

One typed function per subcommand; see ``lmlab.commands``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from lmlab.commands.common import Share, say
from lmlab.errors import LmlabError
from lmlab.options import (
    Count,
    Dropout,
    InDir,
    InFile,
    InPath,
    NonNegative,
    NonNegativeFloat,
    OutDir,
    OutFile,
    PositiveFloat,
    Range,
)


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
    say(f"model: {trainer.model.num_params():,} parameters ({cfg.preset}), "
        f"{span} {trainer.block}, vocab {mc.vocab_size:,}, on {trainer.device}")
    parts = [f"{cfg.batch_size} rows"]
    if world.distributed:
        parts.append(f"{world.size} processes")
    if cfg.grad_accum > 1:
        parts.append(f"{cfg.grad_accum} micro-batches")
    if len(parts) > 1:
        rows = cfg.batch_size * world.size * cfg.grad_accum
        say(f"global batch: {' x '.join(parts)} = {rows} rows of {trainer.block} tokens "
            "per step")


def _pretrain_result(result: dict[str, Any], objective: str, out: Path) -> None:
    val = result["val"]
    if val and objective == "mlm":
        nsp_part = f", NSP accuracy {val['nsp_accuracy']:.1%}" if "nsp_accuracy" in val else ""
        say(f"step {result['step']}: val masked-token accuracy {val['masked_accuracy']:.1%} "
            f"(always predicting the most frequent token: {val['most_frequent_rate']:.1%})"
            f"{nsp_part}, MLM loss {val['mlm_loss']:.4f}, perplexity {val['perplexity']:.2f}")
    elif val:
        say(f"step {result['step']}: val loss {val['loss']:.4f}, perplexity "
            f"{val['perplexity']:.2f}, bits/byte {val['bits_per_byte']:.4f}")
    say(f"checkpoint: {result['checkpoint']}")
    say(f"loss curve: {result['plot']}   metrics: {out}/metrics.jsonl   tensorboard: {out}/tb")


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
             resume: bool = False, overwrite: bool = False) -> None:
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
    With each validation a resume checkpoint is saved in OUT/checkpoints;
    Ctrl-C saves one too, and `--resume` continues the run exactly.

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
        resume: continue the run in OUT from its last checkpoint
        overwrite: replace a fine-tuning run already in OUT

    Examples:
        lmlab finetune --task classify --train spam.jsonl --model path/to/all-MiniLM-L6-v2 --out runs/spam
        lmlab finetune --task classify --train spam.jsonl --model path/to/all-MiniLM-L6-v2 --out runs/spam --resume
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
        tuner = Finetuner(cfg, overwrite=overwrite, resume=resume)
        tell = say if tuner.world.main else (lambda *_: None)  # rank 0 alone reports
        n = {k: len(v) for k, v in tuner.splits.items()}
        labels = f", {len(tuner.labels)} labels" if tuner.labels else ""
        tell(f"data: {n['train']:,} train, {n['val']:,} validation, {n['test']:,} test{labels}")
        world = (f", {tuner.world.size} processes x batch {batch_size}"
                 if tuner.world.distributed else "")
        tell(f"model: {tuner.kind.upper()} backbone from {model}, {tuner.model.num_params():,} "
             f"parameters, max length {tuner.max_length}, {tuner.total_steps:,} steps{world}")
        fit = tuner.fit()
    finally:
        distributed.leave()
    if not tuner.world.main:
        return
    stop = " (stopped early)" if fit["stopped_early"] else ""
    say(f"trained {fit['step']:,} steps, {fit['epochs']} epochs in "
        f"{fit['train_seconds']:.1f}s{stop}; best val {fit['metric']} {fit['best_val']:.4f} "
        f"at step {fit['best_step']}")
    report = tuner.test()
    if report is not None:
        say(f"test ({report['test_examples']:,} examples):")
        say(report["text"])
        extra = "   confusion matrix: {out}/confusion.png" if task == "classify" else ""
        say(f"report: {out}/report.txt, {out}/report.json{extra.format(out=out)}")
    say(f"best model: {out}/best   loss curve: {out}/loss.png   tensorboard: {out}/tb")


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
        say(f"wrote {len(rows):,} predictions to {out}")
        return
    for ex, p in zip(examples, preds, strict=True):
        # One line per input: newlines and tabs inside a text are shown as spaces.
        if task == "classify":
            say(f"{p.label}\t{p.probability:.4f}\t{' '.join(ex.text.split())}")
        elif task == "tag":
            say(" ".join(f"{w}/{t or '?'}" for w, t in zip(ex.tokens, p.tags or [],
                                                             strict=True)))
        else:
            say(f"{' '.join((p.answer or '').split())}\t{p.probability:.4f}\t"
                f"{' '.join(ex.question.split())}")


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
    say(f"data: {len(splits['train']):,} train, {len(splits['test']):,} test, "
        f"{n_labels} labels{held}")
    say(f"baseline: TF-IDF of {DESCRIPTIONS[result.features]} + logistic regression, "
        f"{result.n_features:,} features, fitted in {result.fit_seconds:.1f}s")
    say(f"test ({result.report.n:,} examples):")
    say(result.report.format())
    if out is not None:
        report = {"train": str(train), "test": str(test) if test else None, "seed": seed,
                  "validation_examples": len(splits["val"])} | result.to_dict()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(out), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        say(f"report: {out}")
