"""Training: pretraining, fine-tuning, predicting with a fine-tuned model, and the
bag-of-words baseline.

One typed function per subcommand; see ``lmlab.commands``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from lmlab.commands.common import say
from lmlab.errors import LmlabError
from lmlab.options import (
    Count,
    InDir,
    InFile,
    InPath,
    OutFile,
    Share,
)
from lmlab.train.configs import (
    FinetuneConfig,
    Seq2SeqTrainConfig,
    SFTConfig,
    SweepConfig,
    TrainConfig,
)


def pretrain(cfg: TrainConfig, /, *, resume: bool = False, overwrite: bool = False
             ) -> None:
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
    from lmlab.train.loop import Trainer

    ran = _fit(lambda: Trainer(cfg, resume=resume, overwrite=overwrite), _pretrain_summary)
    if ran is not None:
        _pretrain_result(ran[1], cfg.objective, Path(cfg.out))


def sweep(cfg: SweepConfig, /, *, overwrite: bool = False) -> None:
    """Train a ladder of GPT sizes at one budget and fit the scaling law L(N) = E + A / N^alpha.

    Each size (--sizes: GPT presets or LAYERSxWIDTH shapes; default gpt-nano,
    2x96, 3x128, 4x160, 4x192) is an ordinary `lmlab pretrain` run in OUT/SIZE
    on the same shards, context and batch, at the same budget: --tokens D
    (every size reads D tokens) or --flops C (every size spends C = 6 N D
    FLOPs, so a size of N parameters reads C / 6N tokens). Running the sweep
    again skips the sizes that finished and resumes the others; under torchrun
    every size trains with DDP as pretrain does.

    Then each size is scored on the whole validation split, and E, A and alpha
    are fitted by least squares with N the non-embedding parameters (Kaplan et
    al. 2020). With fewer than 3 sizes, a loss that does not fall with size, or
    a best fit with alpha <= 0, the sweep says so and draws no curve. Writes
    OUT/sweep.json, OUT/sweep.md (the table printed at the end) and
    OUT/scaling.png (loss against N on log-log axes, with the fitted curve).

    Args:
        overwrite: start every size over, replacing the runs already in OUT

    Examples:
        lmlab sweep data/shards --tokens 300000 --out runs/sweep
        lmlab sweep data/shards --flops 2e12 --out runs/sweep-compute
        lmlab sweep data/shards --sizes gpt-nano gpt-micro gpt-mini gpt-small --tokens 1000000 --out runs/sweep-presets
        torchrun --nproc_per_node 2 -m lmlab sweep data/shards --tokens 300000 --out runs/sweep
    """  # noqa: E501
    from lmlab.sweep import run_sweep

    run_sweep(cfg, overwrite=overwrite)


def _say_run_files(result: dict[str, Any], out: Path) -> None:
    """Where an engine run left its checkpoint, loss curve and logs."""
    say(f"checkpoint: {result['checkpoint']}")
    say(f"loss curve: {result['plot']}   metrics: {out}/metrics.jsonl   tensorboard: {out}/tb")


def _fit(make: Any, describe: Any) -> tuple[Any, dict[str, Any]] | None:
    """Build a run (in every process under torchrun), let rank 0 ``describe`` it, train it,
    and leave the process group whatever happens: (the run, ``fit``'s result) on rank 0,
    None in the other processes, which report nothing."""
    from lmlab.train import distributed

    try:
        run = make()
        if run.world.main:
            describe(run)
        result = run.fit()
    finally:
        distributed.leave()
    return (run, result) if run.world.main else None


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
    _say_run_files(result, out)


def finetune(cfg: FinetuneConfig, /, *, resume: bool = False,
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
    With each validation a resume checkpoint is saved in OUT/checkpoints;
    Ctrl-C saves one too, and `--resume` continues the run exactly.

    Augmentation (classify, --augment): each training text gets
    --augment-copies new versions, the chosen methods taken in turn: EDA's
    synonym replacement (neighbours in --augment-vectors), random deletion and
    random swap (Wei & Zou 2019; --augment-alpha of the words), or
    back-translation through two `lmlab seq2seq` models. Chinese is cut into
    words by jieba. Copies keep their text's label; validation and test are
    never augmented. The copies are saved as OUT/augmented.jsonl and counted in
    the output and in OUT/report.json.

    Args:
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
        lmlab finetune --task classify --train small.jsonl --model gru-classifier --tokenizer tok.json --augment synonym delete swap --augment-vectors vectors.txt --augment-copies 4 --out runs/small-eda
        torchrun --nproc_per_node 2 -m lmlab finetune --task classify --train spam.jsonl --model all-MiniLM-L6-v2 --out runs/spam-ddp
    """  # noqa: E501
    from lmlab.train.finetune import Finetuner

    def describe(tuner: Any) -> None:
        n = {k: len(v) for k, v in tuner.splits.items()}
        labels = f", {len(tuner.labels)} labels" if tuner.labels else ""
        say(f"data: {n['train']:,} train, {n['val']:,} validation, {n['test']:,} test{labels}")
        if tuner.augmented is not None:
            say(f"augment: {tuner.augmented.summary()}, trained on with the "
                f"{n['train']:,} originals")
        world = (f", {tuner.world.size} processes x batch {cfg.batch_size}"
                 if tuner.world.distributed else "")
        say(f"model: {tuner.kind.upper()} backbone from {cfg.model}, "
            f"{tuner.model.num_params():,} parameters, max length {tuner.max_length}, "
            f"{tuner.total_steps:,} steps{world}")

    ran = _fit(lambda: Finetuner(cfg, overwrite=overwrite, resume=resume), describe)
    if ran is None:
        return
    tuner, fit = ran
    stop = " (stopped early)" if fit["stopped_early"] else ""
    say(f"trained {fit['step']:,} steps, {fit['epochs']} epochs in "
        f"{fit['train_seconds']:.1f}s{stop}; best val {fit['metric']} {fit['best_val']:.4f} "
        f"at step {fit['best_step']}")
    out = Path(cfg.out)
    report = tuner.test()
    if report is not None:
        say(f"test ({report['test_examples']:,} examples):")
        say(report["text"])
        extra = "   confusion matrix: {out}/confusion.png" if cfg.task == "classify" else ""
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


def sft(cfg: SFTConfig, /, *, resume: bool = False, overwrite: bool = False) -> None:
    """Chat fine-tuning (SFT) of a causal model on conversations, with LoRA adapters.

    Each conversation is rendered with the model's own chat template (SmolLM2's
    ChatML from its GGUF, an HF folder's tokenizer_config.json) or ChatML, and
    the loss is on the assistant's answers only, every turn, the end-of-turn
    token included. A conversation longer than --max-length keeps its turns up
    to the last answer that fits; an answer is never cut. By default the model
    is frozen and rank-8 LoRA adapters on every Linear layer train (--lora-rank
    0: full fine-tuning); the run's checkpoints then hold the adapter only, in
    PEFT's layout, which `peft.PeftModel.from_pretrained` loads on the HF export
    of the base. Every --eval-interval steps: the answers' loss and perplexity on
    the held-out conversations.

    The loop is the one every lmlab run has: metrics.jsonl, TensorBoard, loss.png,
    atomic checkpoints, Ctrl-C, exact --resume, and DDP under torchrun. Chat with
    the result (`lmlab chat OUT`), fold the adapter in (`lmlab merge OUT`).

    Args:
        resume: continue the run in OUT from its last checkpoint
        overwrite: start over in OUT, deleting the run already there

    Examples:
        lmlab chatdata debian --out data/chat-debian
        lmlab sft SmolLM2-135M-Instruct.Q4_1.gguf data/chat-debian/train.jsonl --validation data/chat-debian/val.jsonl --out runs/sft-debian
        lmlab sft SmolLM2-135M-Instruct.Q4_1.gguf data/chat-debian/train.jsonl --validation data/chat-debian/val.jsonl --out runs/sft-debian --resume
        lmlab sft model.gguf chats.jsonl --lora-rank 16 --lora-targets q_proj,v_proj --out runs/sft
        lmlab sft runs/mini alpaca.json --lora-rank 0 --chat-template chatml --out runs/mini-chat
        lmlab chat runs/sft-debian --prompt "What does the package curl do?"
    """  # noqa: E501
    from lmlab.train.sft import SFTTrainer

    def describe(trainer: Any) -> None:
        r = trainer.report
        say(f"data: {r['train']['conversations']:,} training conversations "
            f"({r['train']['answer_tokens']:,} answer tokens of {r['train']['tokens']:,}), "
            f"{r['val']['conversations']:,} held out; chat template: {r['template']}")
        how = (f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}, on "
               f"{cfg.lora_targets}" if cfg.lora_rank else "full fine-tuning")
        say(f"model: {cfg.model} ({how}); {trainer.trainable.line()}, on {trainer.device}")

    ran = _fit(lambda: SFTTrainer(cfg, resume=resume, overwrite=overwrite), describe)
    if ran is None:
        return
    result = ran[1]
    val, out = result["val"], Path(cfg.out)
    if val:
        say(f"step {result['step']}: held-out answer loss {val['loss']:.4f}, perplexity "
            f"{val['perplexity']:.2f}")
    _say_run_files(result, out)
    say(f"chat: lmlab chat {out}" + (f"   merge: lmlab merge {out} --out {out}-merged"
                                     if cfg.lora_rank else ""))


def seq2seq(cfg: Seq2SeqTrainConfig, /, *, resume: bool = False,
            overwrite: bool = False) -> None:
    """Train a model on (source, target) pairs: translation or summarization.

    The data folder holds train.jsonl and val.jsonl ({"src", "tgt"} per line)
    and a tokenizer.json with [PAD] and an end token, as `lmlab parallel` and
    `lmlab summaries` make them. The model is Vaswani et al.'s encoder-decoder
    (post-LN by default, --norm-first for pre-LN), one table for source, target
    and output embeddings; or, with a GPT or Llama preset, a decoder-only model
    trained on "source <end> target" with the loss on the target only (the
    same data, batches and steps: the two ways compare at equal size). Teacher
    forcing with label smoothing (--label-smoothing 0.1); batches of pairs of
    similar lengths under a budget of --max-tokens tokens; AdamW (betas 0.9,
    0.98), warm-up then cosine decay, clipping. Every --eval-interval steps:
    target loss and perplexity on the validation split, and BLEU and chrF
    (sacrebleu; its zh tokenizer for Chinese targets), or ROUGE for summaries,
    of --eval-sentences validation sources decoded with --num-beams beams.

    The loop is the one every lmlab run has: metrics.jsonl, TensorBoard, loss.png,
    atomic checkpoints, Ctrl-C, exact --resume, and DDP under torchrun.
    Translate with `lmlab translate OUT`, summarize with `lmlab summarize OUT`.

    Args:
        resume: continue the run in OUT from its last checkpoint
        overwrite: start over in OUT, deleting the run already there

    Examples:
        lmlab parallel --pair de-en --out data/de-en
        lmlab seq2seq data/de-en --preset seq2seq-mini --max-steps 3000 --out runs/de-en
        lmlab seq2seq data/de-en --out runs/de-en --max-steps 3000 --resume
        lmlab seq2seq data/zh-en --norm-first --lr 1e-3 --out runs/zh-en
        lmlab seq2seq data/de-en --preset gpt-mini --n-layer 7 --n-embd 256 --n-head 4 --max-tokens 6000 --out runs/de-en-gpt
        lmlab seq2seq data/summaries-debian --out runs/debian
        torchrun --nproc_per_node 2 -m lmlab seq2seq data/de-en --out runs/de-en-ddp
    """  # noqa: E501
    from lmlab.train.seq2seq import Seq2SeqTrainer

    def describe(trainer: Any) -> None:
        c, n = trainer.model_config, {k: len(v) for k, v in trainer.pairs.items()}
        say(f"data: {n['train']:,} training pairs, {n['val']:,} validation pairs, vocabulary "
            f"{c.vocab_size:,}")
        shape = (f"decoder-only, {c.n_layer} layers" if cfg.decoder_only else
                 f"{c.n_encoder_layer}+{c.n_decoder_layer} layers")
        norm = "" if cfg.decoder_only else f", {'pre' if c.norm_first else 'post'}-LN"
        say(f"model: {trainer.model.num_params():,} parameters ({cfg.preset}: {shape}, "
            f"{c.n_embd} wide{norm}), on {trainer.device}")

    ran = _fit(lambda: Seq2SeqTrainer(cfg, resume=resume, overwrite=overwrite), describe)
    if ran is None:
        return
    result = ran[1]
    val, out = result["val"], Path(cfg.out)
    if val:
        bleu = (f", BLEU {val['bleu']:.2f}, chrF {val['chrf']:.2f}" if "bleu" in val else "")
        say(f"step {result['step']}: val loss {val['loss']:.4f}, perplexity "
            f"{val['perplexity']:.2f}{bleu}")
    _say_run_files(result, out)
    say(f"translate: lmlab translate {out} --input {cfg.data}/test.jsonl --out test.out.txt")
