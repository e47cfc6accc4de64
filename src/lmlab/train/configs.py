"""The settings of a training run, declared once: each field's type, default and help text
is at once the config dataclass (saved in the run folder, checked by ``check_fields``) and
a flag of the command that takes it (``lmlab pretrain``, ``lmlab finetune``; see
``options.command_params``). Nothing heavy is imported here, so ``lmlab --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Any, ClassVar, Literal

from lmlab.config import Pooling
from lmlab.data.tasks import Task
from lmlab.errors import LmlabError
from lmlab.options import (
    Count,
    Dropout,
    Fraction,
    InDirName,
    InFileName,
    Input,
    NonNegative,
    NonNegativeFloat,
    OutDirName,
    PositiveFloat,
    Range,
    RunDirName,
    Share,
    check_fields,
    flag_name,
    option,
)

# Decay rates of AdamW's moment estimates.
Decay = Annotated[float, Range(0, 1, hi_open=True)]
# What a text longer than --max-length loses: its end (tail) or its start (head).
Truncation = Literal["tail", "head"]
# The transforms of lmlab.data.augment that make more training texts.
AugmentMethod = Literal["synonym", "delete", "swap", "backtranslate"]
# A model folder, run folder or checkpoint to load.
InPathName = Annotated[str, Input("any")]


@dataclass(kw_only=True)
class RunSettings:
    """What every run on the training engine sets (``train/engine.py`` reads these): the
    optimizer, the schedule, validation and checkpoints, the device. The defaults are
    pretraining's; a run that needs others declares just those again."""

    grad_accum: Count = option(1, "micro-batches per optimizer step")
    max_steps: Count = option(1000, "optimizer steps")
    lr: PositiveFloat = option(1e-3, "peak learning rate")
    min_lr: NonNegativeFloat | None = option(
        None, "final learning rate of the cosine decay (default lr/10)")
    warmup_steps: NonNegative = option(50, "steps of linear warm-up")
    weight_decay: NonNegativeFloat = option(0.1, "AdamW weight decay (matrices only)")
    beta1: Decay = option(0.9, "AdamW's first-moment decay")
    beta2: Decay = option(0.95, "AdamW's second-moment decay (0.95 as GPT-3; BERT used 0.999)")
    grad_clip: PositiveFloat = option(1.0, "clip the gradient norm to this")
    eval_interval: Count = option(100, "validate every this many steps")
    checkpoint_interval: Count | None = option(
        None, "save every this many steps (default: eval_interval)")
    seed: int = option(1337, "random seed (weights, batches, dropout)")
    dtype: Literal["float32", "bfloat16"] = option(
        "float32", "float32, or bfloat16 autocast. Measured (benchmarks/bench_dtype.py): "
        "training the 124M GPT shape ran 1.9x faster than float32 on an AMD EPYC with "
        "AVX-512 BF16 (no AMX); Intel Xeons with AMX ran 1.6-1.7x faster; the small "
        "gpt-micro (4 layers, 128 wide) trained at half float32's speed on a Xeon "
        "without AMX (benchmarks/RESULTS.md): small matmuls and CPUs without bf16 "
        "instructions gain nothing")
    compile: bool = option(False, "torch.compile the model")
    device: str = option("auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps")
    threads: Count | None = option(None, "CPU threads (default: torch's choice)")


@dataclass(kw_only=True)
class TrainConfig(RunSettings):
    """Everything that defines a pretraining run (saved as train_config.json). Each field
    is declared once: its type, default and help become a flag of `lmlab pretrain`."""

    positional: ClassVar[tuple[str, ...]] = ("data",)

    data: InDirName = option(help="a folder made by `lmlab prepare`")
    out: OutDirName | None = option(
        None, "the run folder (default: runs/gpt for clm, runs/bert for mlm)")
    objective: Literal["clm", "mlm"] = option(
        "clm", "clm (causal LM, GPT presets) or mlm (masked LM, BERT presets)")
    nsp: bool = option(False, "mlm only: add next-sentence prediction (BERT's second objective)")
    mask_prob: Fraction = option(0.15, "mlm only: share of tokens selected for prediction")
    whole_word_mask: bool = option(
        False, "mlm only: select whole words (all their pieces), not single tokens")
    preset: str | None = option(
        None, "model preset (default gpt-mini for clm, bert-mini for mlm): gpt-nano, "
        "gpt-micro, gpt-mini, gpt-small, gpt2-124m, llama-nano, llama-mini, llama-small, ...; "
        "ffnn-small, rnn-small, lstm-small, gru-small; bert-nano, bert-tiny, bert-mini, "
        "bert-small, ...")
    # Overrides of the preset. For the classic (RNN_PRESETS) models: n_layer is the
    # stacked recurrent layers (ffnn: tanh layers); n_embd the embedding width, with
    # the hidden width keeping the preset's ratio to it (equal for rnn/lstm/gru);
    # block_size the BPTT length (ffnn: positions per row); n_head does not apply.
    n_layer: Count | None = option(None, "override the preset's number of layers")
    n_head: Count | None = option(None, "override the preset's number of attention heads")
    n_embd: Count | None = option(
        None, "override the preset's width (classic presets: the embedding width; the hidden "
        "width keeps the preset's ratio to it)")
    block_size: Count | None = option(
        None, "override the preset's context length (recurrent presets: the "
        "back-propagation length; ffnn: the positions per training row)")
    dropout: Dropout | None = option(
        None, "dropout probability (default: the preset's, 0 for GPT, 0.1 for BERT)")
    batch_size: Count = option(16, "sequences per micro-batch (under torchrun: per process)")
    eval_tokens: Count = option(131072, "validation tokens scored each time")
    fsdp: bool = option(
        False, "under torchrun: shard the model with FSDP2 instead of replicating it (DDP)")

    def __post_init__(self) -> None:
        # Types, choices and ranges, each error naming its flag; checked here, before any
        # folder is made: a 0 would otherwise surface later as a misleading error
        # (--max-steps 0: "not a checkpoint"; --block-size 0: NaN).
        check_fields(self)
        if self.out is None:
            self.out = "runs/bert" if self.objective == "mlm" else "runs/gpt"
        if self.preset is None:
            self.preset = "bert-mini" if self.objective == "mlm" else "gpt-mini"
        self._check_preset()

    def _check_preset(self) -> None:
        """The preset must be one the objective trains: an encoder for mlm, a left-to-right
        LM for clm (the registry says which family holds it)."""
        assert self.preset is not None
        from lmlab.models.registry import family_of_preset, preset_names

        family = family_of_preset(self.preset, self.objective)
        encoders = ", ".join(preset_names("encoder"))
        lms = [name for name in preset_names() if _is_lm_preset(name)]
        if family is None:
            raise LmlabError(f"unknown preset {self.preset!r}; choose one of "
                             f"({', '.join(lms)}) for clm or ({encoders}) for mlm")
        encoder = family.kind == "encoder"
        if family.kind == "seq2seq":
            raise LmlabError(f"preset {self.preset!r} is an encoder-decoder; train it on pairs "
                             "with `lmlab seq2seq`")
        if self.objective == "mlm" and not encoder:
            what = "a classic left-to-right LM" if family.kind == "stateful" else "a GPT (decoder)"
            raise LmlabError(f"preset {self.preset!r} is {what} preset; masked-LM pretraining "
                             f"needs an encoder preset: {encoders}")
        if self.objective == "clm" and encoder:
            raise LmlabError(f"preset {self.preset!r} is a BERT (encoder) preset, which cannot "
                             "be trained as a causal LM; use --objective mlm, or a causal LM "
                             f"preset ({', '.join(lms)})")
        if not _is_lm_preset(self.preset) and not encoder:
            raise LmlabError(f"preset {self.preset!r} is a bidirectional text encoder (for "
                             "`lmlab finetune`), not a language model; choose one of "
                             f"{', '.join(lms)}")
        if family.kind == "stateful" and self.n_head is not None:
            raise LmlabError(f"preset {self.preset!r} has no attention heads; drop --n-head")
        if self.objective == "clm" and (self.nsp or self.whole_word_mask):
            raise LmlabError("--nsp and --whole-word-mask apply to --objective mlm only")

    def model_config(self, vocab_size: int, pad_token_id: int = 0) -> Any:
        """The model config of the preset with this run's overrides and vocabulary."""
        from lmlab.models.registry import config_from_preset

        assert self.preset is not None  # set by __post_init__
        base = config_from_preset(self.preset, self.objective)
        overrides: dict[str, Any] = dict(vocab_size=vocab_size, n_layer=self.n_layer,
                                         n_embd=self.n_embd, block_size=self.block_size,
                                         dropout=self.dropout)
        if hasattr(base, "n_hidden"):
            # A classic LM: its hidden width keeps the preset's ratio to the embedding width.
            if self.n_embd is not None:
                overrides["n_hidden"] = max(1, round(self.n_embd * base.n_hidden / base.n_embd))
        else:
            overrides["n_head"] = self.n_head
        if self.objective == "mlm":
            overrides.update(attn_dropout=self.dropout, pad_token_id=pad_token_id)
        return config_from_preset(self.preset, self.objective, **overrides)


@dataclass(kw_only=True)
class SweepConfig(RunSettings):
    """A scaling-law sweep (saved as OUT/sweep_config.json): one pretraining run per size,
    each a ``TrainConfig`` built from these settings and its share of the budget."""

    positional: ClassVar[tuple[str, ...]] = ("data",)

    data: InDirName = option(help="a folder made by `lmlab prepare`")
    out: RunDirName = option(
        "runs/sweep", "the sweep folder: one pretraining run per size in OUT/SIZE, and "
        "sweep.json, sweep.md, scaling.png")
    sizes: list[str] | None = option(
        None, "the model sizes: GPT presets (gpt-nano, gpt-micro, gpt-mini, llama-mini, ...) "
        "or LAYERSxWIDTH shapes (3x128: gpt-nano's design with 3 layers, 128 wide, a head "
        "per 32); default: gpt-nano 2x96 3x128 4x160 4x192")
    tokens: Count | None = option(None, "the budget as training tokens, the same for every size")
    flops: PositiveFloat | None = option(
        None, "the budget as training compute C in FLOPs, the same for every size: a size of "
        "N parameters (all of them) gets D = C / (6 N) tokens (Chinchilla's C = 6ND)")
    block_size: Count = option(128, "context length of every size, in tokens")
    batch_size: Count = option(16, "sequences per micro-batch (under torchrun: per process)")
    eval_tokens: Count = option(
        32768, "validation tokens scored during training (the sweep's own score reads the "
        "whole validation split)")
    # One learning rate for every size: pretraining's 1e-3. Measured on the built-in corpus
    # (300k tokens a size, gpt-nano to 4x192): at 3e-3 the larger sizes ended worse than
    # gpt-nano; at 1e-3 the loss fell with size (Kaplan et al.'s fitted rule gives
    # 1.2e-3 to 1.6e-3 over this range).
    warmup_steps: NonNegative = option(
        50, "steps of linear warm-up, at most a tenth of each size's steps")
    # Not a setting: the budget gives each size its own number of steps.
    max_steps: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.tokens is None and self.flops is None:
            raise LmlabError("give a budget: --tokens N (every size trains on N tokens) or "
                             "--flops C (every size spends C FLOPs)")
        if self.tokens is not None and self.flops is not None:
            raise LmlabError("give one budget, --tokens or --flops, not both")
        if self.sizes is not None and not self.sizes:
            raise LmlabError("--sizes: give at least one size (or leave --sizes out for the "
                             "default ladder)")

    def settings(self) -> dict[str, Any]:
        """The settings as given (what sweep_config.json records)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


def _is_lm_preset(name: str) -> bool:
    """Whether a preset names a left-to-right language model (not an encoder)."""
    from lmlab.models.registry import family_of_preset

    family = family_of_preset(name)
    return (family is not None and family.kind in ("causal", "stateful")
            and not family.presets[name].get("bidirectional"))


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run (saved as OUT/finetune_config.json). Each
    field is declared once: its type, default and help become a flag of `lmlab finetune`."""

    positional: ClassVar[tuple[str, ...]] = ()

    task: Task = option(help="classify, tag or qa")
    train: InFileName = option(help="labelled training file")
    model: str = option(
        help="backbone: an HF folder, an lmlab checkpoint/run folder, or a preset name")
    out: OutDirName = option(help="the run folder")
    validation: InFileName | None = option(
        None, "labelled validation file (default: carved from --train)")
    test: InFileName | None = option(None, "labelled test file (default: carved from --train)")
    tokenizer: InFileName | None = option(
        None, "tokenizer file (default: the model's own; required for a preset, unless "
        "--vectors gives the words)")
    vectors: InFileName | None = option(
        None, "word vectors (word2vec text/binary or GloVe text, e.g. from `lmlab embed "
        "train`) that initialise a recurrent preset's embeddings (their width becomes the "
        "vectors'); without --tokenizer, a word-level tokenizer over the vectors' words")
    vectors_max_words: Count | None = option(
        None, "keep only the first (most frequent) words of --vectors")
    text_field: str = option("text", "classify: the text column/key")
    label_field: str = option("label", "classify: the label column/key")
    tokens_field: str = option("tokens", "tag: the words column/key (space-separated in "
                               "CSV/TSV)")
    tags_field: str = option("tags", "tag: the tags column/key")
    context_field: str = option("context", "qa: the context column/key")
    question_field: str = option("question", "qa: the question column/key")
    answer_field: str = option("answer", "qa: the answer text column/key")
    answer_start_field: str = option(
        "answer_start", "qa: the answer's character offset (default: its first occurrence)")
    encoding: str = option("utf-8", "text encoding of the data files")
    val_fraction: Share = option(
        0.1, "share of --train held out for validation when no --validation")
    test_fraction: Share = option(0.1, "share of --train held out for testing when no --test")
    max_length: Count | None = option(
        None, "tokens per input, special tokens included (default: the smaller of the "
        "backbone's context and 256)")
    truncation: Truncation = option(
        "tail", "classify: tail cuts the end of long texts, head cuts their start")
    pooling: Pooling | None = option(
        None, "classify: cls (BERT's [CLS] through its pooler), mean, or last (GPT); default "
        "cls for BERT (mean for sentence-transformers folders), last for GPT, mean for a "
        "recurrent encoder")
    max_answer_tokens: Count = option(30, "qa: longest answer span, in tokens")
    epochs: Count = option(3, "passes over the training data")
    max_steps: Count | None = option(
        None, "stop after this many optimizer steps (a cap on --epochs)")
    batch_size: Count = option(16, "examples per step (under torchrun: per process)")
    lr: PositiveFloat = option(5e-5, "peak learning rate")
    weight_decay: NonNegativeFloat = option(0.01, "AdamW weight decay (not on biases and norms)")
    warmup_ratio: Share = option(0.1, "share of the steps spent warming the learning rate up")
    grad_clip: PositiveFloat = option(1.0, "clip the gradient norm to this")
    head_dropout: Dropout = option(0.1, "dropout before the task head")
    class_weights: bool | None = option(
        None, "weigh the loss by inverse class frequency (default: on for classify, off "
        "for tag)")
    patience: Count | None = option(
        None, "stop after this many evaluations in a row without a better validation "
        "metric (default: never; the best model is kept either way)")
    eval_interval: Count | None = option(None, "also evaluate every this many steps")
    freeze_backbone: bool = option(False, "train the head only")
    lora_rank: NonNegative = option(
        0, "train LoRA adapters of this rank on the frozen backbone, and the head (0: every "
        "weight trains)")
    lora_alpha: PositiveFloat = option(16.0, "LoRA scale numerator: updates are alpha/rank B A x")
    lora_dropout: Dropout = option(0.05, "dropout on the adapters' input")
    lora_targets: str = option(
        "all-linear", "backbone modules to adapt, as PEFT names them (BERT: query,key,value,"
        "dense; Llama: q_proj,...,down_proj; GPT-2: c_attn,c_proj,c_fc), or all-linear")
    augment: list[AugmentMethod] | None = option(
        None, "classify: add augmented copies of the training texts (never of validation or "
        "test), made by one or more of synonym (a word replaced by a near neighbour in "
        "--augment-vectors), delete (random deletion), swap (random swap of two words), "
        "backtranslate (to a pivot language and back with --augment-translators); the "
        "copies of each text take the methods in turn")
    augment_copies: Count = option(4, "augmented copies of each training text")
    augment_alpha: Fraction = option(
        0.1, "share of a text's words that synonym and swap change, and deletion's "
        "probability per word (EDA's alpha)")
    augment_seed: int | None = option(None, "random seed of the augmentation (default: --seed)")
    augment_vectors: InFileName | None = option(
        None, "word vectors (word2vec text/binary or GloVe text, e.g. from `lmlab embed "
        "train`) whose nearest neighbours are --augment synonym's replacements")
    augment_translators: list[InPathName] | None = option(
        None, "--augment backtranslate: two `lmlab seq2seq` runs or checkpoints, FORWARD "
        "(into the pivot language) and BACK")
    seed: int = option(0, "random seed (splits, head, batches, dropout)")
    threads: Count | None = option(None, "CPU threads (default: torch's choice)")
    device: str = option("auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps")
    # bfloat16 autocast: matmuls in bf16, weights, optimizer and loss in fp32.
    dtype: Literal["float32", "bfloat16"] = option(
        "float32", "float32, or bfloat16 autocast (measured 1.6-1.7x faster on Intel Xeons "
        "with AMX and 1.9x training the 124M GPT on an AMD EPYC with AVX-512 BF16; slower "
        "on CPUs with neither)")

    def __post_init__(self) -> None:
        # Types, choices and ranges, each error naming its flag; checked before any file
        # is read or folder made: a 0 would otherwise surface later as a misleading error
        # (--max-steps 0: "no such fine-tuned checkpoint").
        check_fields(self)
        # A split given as a file carves nothing from --train.
        carved = ((0.0 if self.validation else self.val_fraction)
                  + (0.0 if self.test else self.test_fraction))
        if carved >= 1:
            raise LmlabError(f"--val-fraction {self.val_fraction} and --test-fraction "
                             f"{self.test_fraction} leave no training examples; their sum "
                             "must be below 1")
        if self.lora_rank and self.freeze_backbone:
            raise LmlabError("--lora-rank trains adapters on the backbone; --freeze-backbone "
                             "trains none of it: choose one")
        self._check_augment()

    def _check_augment(self) -> None:
        """--augment and the inputs its methods need, before any file is read."""
        methods = self.augment
        if methods is None:
            for name in ("augment_vectors", "augment_translators"):
                if getattr(self, name):
                    raise LmlabError(f"{flag_name(name, False)} is only used with --augment")
            return
        if not methods:
            raise LmlabError("--augment needs one or more of synonym, delete, swap, "
                             "backtranslate")
        self.augment = list(dict.fromkeys(methods))  # each method once, in the order given
        if self.task != "classify":
            raise LmlabError(f"--augment applies to --task classify, not {self.task}")
        if "synonym" in methods and not self.augment_vectors:
            raise LmlabError("--augment synonym needs word vectors: give --augment-vectors "
                             "FILE (e.g. from `lmlab embed train`)")
        if "synonym" not in methods and self.augment_vectors:
            raise LmlabError("--augment-vectors is only used by --augment synonym")
        translators = self.augment_translators or []
        if "backtranslate" in methods and len(translators) != 2:
            raise LmlabError("--augment backtranslate needs two translation models: "
                             f"--augment-translators FORWARD BACK (got {len(translators)})")
        if "backtranslate" not in methods and translators:
            raise LmlabError("--augment-translators is only used by --augment backtranslate")

    def field_names(self) -> dict[str, str]:
        """The ``read_task_file`` keyword arguments naming columns, and the encoding."""
        names = ("text_field", "label_field", "tokens_field", "tags_field", "context_field",
                 "question_field", "answer_field", "answer_start_field", "encoding")
        return {n: getattr(self, n) for n in names}


@dataclass(kw_only=True)
class Seq2SeqTrainConfig(RunSettings):
    """Everything that defines an encoder-decoder training run (saved as
    seq2seq_config.json). Each field is declared once: its type, default and help become
    a flag of `lmlab seq2seq`."""

    positional: ClassVar[tuple[str, ...]] = ("data",)

    data: InDirName = option(
        help="a folder made by `lmlab parallel` (train/val .jsonl and tokenizer.json), or "
        "any folder holding those")
    out: OutDirName | None = option(None, "the run folder (default: runs/seq2seq)")
    preset: str = option(
        "seq2seq-mini", "model preset: an encoder-decoder (seq2seq-nano, seq2seq-mini, "
        "seq2seq-small, transformer-base, transformer-big), or a decoder-only one (gpt-*, "
        "llama-*) trained on 'source <end> target' with the loss on the target only")
    n_layer: Count | None = option(None, "override a decoder-only preset's layers")
    n_encoder_layer: Count | None = option(None, "override the preset's encoder layers")
    n_decoder_layer: Count | None = option(None, "override the preset's decoder layers")
    n_head: Count | None = option(None, "override the preset's attention heads")
    n_embd: Count | None = option(None, "override the preset's width")
    norm_first: bool = option(
        False, "pre-LN blocks (norm before each sublayer) instead of the original post-LN")
    dropout: Dropout | None = option(
        None, "dropout (default: the preset's: 0.1, or 0.3 for transformer-big)")
    max_length: Count = option(
        128, "tokens per source and per target, the end token included (longer ones are cut, "
        "and counted)")
    max_tokens: Count = option(
        4096, "tokens per batch (source or target, padding included, the longer side "
        "counts), as fairseq's --max-tokens; under torchrun: per process")
    # Pretraining's defaults, changed for this objective (their help is RunSettings').
    max_steps: Count = option(2000)
    lr: PositiveFloat = option(7e-4)
    warmup_steps: NonNegative = option(200)
    weight_decay: NonNegativeFloat = option(0.01)
    beta2: Decay = option(0.98, "AdamW's second-moment decay (0.98 as Vaswani et al.)")
    label_smoothing: Share = option(
        0.1, "share of the target probability spread over the vocabulary (Szegedy et al.; "
        "0.1 as Vaswani et al.)")
    eval_interval: Count = option(250)
    eval_sentences: NonNegative = option(
        200, "validation sentences translated at each validation for BLEU and chrF (0: "
        "loss only)")
    num_beams: Count = option(1, "beams when translating validation sentences (1: greedy)")
    metric: Literal["bleu", "rouge"] | None = option(
        None, "validation score of the outputs: bleu (BLEU and chrF) or rouge (ROUGE-1/2/L) "
        "(default: rouge for a folder made by `lmlab summaries`, else bleu)")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.out is None:
            self.out = "runs/seq2seq"
        from lmlab.models.registry import family_of_preset

        family = family_of_preset(self.preset)
        if family is None or family.kind not in ("seq2seq", "causal"):
            from lmlab.models.registry import preset_names

            names = [*preset_names("seq2seq"), *preset_names("causal")]
            raise LmlabError(f"--preset {self.preset!r} is not an encoder-decoder or "
                             f"decoder-only preset; choose one of: {', '.join(names)}")
        decoder = family.kind == "causal"
        wrong = ("n_encoder_layer", "n_decoder_layer", "norm_first") if decoder else ("n_layer",)
        what = "a decoder-only" if decoder else "an encoder-decoder"
        for name in wrong:
            if getattr(self, name):
                raise LmlabError(f"{flag_name(name, False)} does not apply to --preset "
                                 f"{self.preset} ({what} model)")

    @property
    def decoder_only(self) -> bool:
        from lmlab.models.registry import family_of_preset

        family = family_of_preset(self.preset)
        return family is not None and family.kind == "causal"

    def model_config(self, vocab_size: int, pad_id: int, eos_id: int) -> Any:
        """The preset's config with this run's overrides and the tokenizer's ids; the
        decoder starts from the end token (as BART)."""
        from lmlab.config import GPTConfig, Seq2SeqConfig

        if self.decoder_only:
            # One sequence holds the source and the target: twice the positions. Dropout
            # as the encoder-decoder's presets unless asked, for a fair comparison.
            return GPTConfig.from_name(
                self.preset, vocab_size=vocab_size, block_size=2 * self.max_length,
                n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                dropout=0.1 if self.dropout is None else self.dropout)
        config = Seq2SeqConfig.from_name(
            self.preset, vocab_size=vocab_size, pad_token_id=pad_id, eos_token_id=eos_id,
            decoder_start_token_id=eos_id, n_encoder_layer=self.n_encoder_layer,
            n_decoder_layer=self.n_decoder_layer, n_head=self.n_head, n_embd=self.n_embd,
            norm_first=self.norm_first, dropout=self.dropout)
        if config.block_size < self.max_length:
            raise LmlabError(f"--max-length {self.max_length} exceeds the preset's "
                             f"{config.block_size} positions")
        return config


@dataclass(kw_only=True)
class SFTConfig(RunSettings):
    """Everything that defines a chat fine-tuning run (saved as sft_config.json). Each field
    is declared once: its type, default and help become a flag of `lmlab sft`."""

    positional: ClassVar[tuple[str, ...]] = ("model", "data")

    model: str = option(
        help="the model to tune: an lmlab run or checkpoint folder, an HF folder (GPT-2, "
        "Llama) or a .gguf file")
    data: InFileName = option(
        help="conversations, .jsonl (one per line) or a .json array: OpenAI/TRL messages "
        "(role, content), ShareGPT (conversations: from, value) or Alpaca (instruction, "
        "input, output)")
    validation: InFileName | None = option(
        None, "held-out conversations (default: --val-share of --data)")
    val_share: Share = option(0.05, "share of --data held out when no --validation")
    out: OutDirName | None = option(None, "the run folder (default: runs/sft)")
    chat_template: str | None = option(
        None, "chatml, or a file holding a Jinja chat template (default: the model's own, "
        "else chatml)")
    max_length: Count = option(
        512, "tokens per conversation; a longer one keeps its turns up to the last answer "
        "that fits (an answer is never cut)")
    max_tokens: Count = option(
        4096, "tokens per batch, padding included (conversations of similar lengths are "
        "batched together); under torchrun: per process")
    packing: bool = option(
        False, "join training conversations into rows of up to --max-length tokens (no "
        "padding; a conversation then attends to the ones before it in its row, as TRL's "
        "packing does without position resets)")
    lora_rank: NonNegative = option(
        8, "rank of the LoRA adapters (0: full fine-tuning, every weight trains)")
    lora_alpha: PositiveFloat = option(16.0, "LoRA scale numerator: updates are alpha/rank B A x")
    lora_dropout: Dropout = option(0.05, "dropout on the adapters' input")
    quantize: Literal["none", "int8"] = option(
        "none", "int8: keep the frozen base's Linear weights (all but the output layer) in "
        "int8 with float adapters, the QLoRA idea on a CPU (LoRA only)")
    lora_targets: str = option(
        "all-linear", "modules to adapt, comma-separated, named as PEFT names them (q_proj,"
        "k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj for Llama; c_attn,c_proj,c_fc for "
        "GPT-2), or all-linear (all but the output layer)")
    # Pretraining's defaults, changed for this objective (their help is RunSettings').
    max_steps: Count = option(200)
    lr: PositiveFloat | None = option(
        None, "peak learning rate (default: 2e-4 with LoRA, 2e-5 for full fine-tuning)")
    warmup_steps: NonNegative = option(10)
    weight_decay: NonNegativeFloat = option(0.0)
    beta2: Decay = option(0.999)
    eval_interval: Count = option(50)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.out is None:
            self.out = "runs/sft"
        if self.lr is None:
            self.lr = 2e-4 if self.lora_rank else 2e-5
        if self.validation is None and not self.val_share:
            raise LmlabError("--val-share 0 needs --validation (held-out conversations)")
        if self.quantize != "none" and not self.lora_rank:
            raise LmlabError(f"--quantize {self.quantize} freezes the base: it needs LoRA "
                             "adapters to train (--lora-rank above 0)")

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
