"""The subcommands of `lmlab`, one typed function each, grouped by what they work on:
``data`` (corpus, tokenizer, shards), ``train`` (pretrain, sweep, finetune, predict,
baseline), ``inference`` (eval, generate, chat, neighbors, convert), ``classic``
(n-grams, word vectors, compare) and ``demo``.

`lmlab.cli` builds the parser from these signatures and docstrings (the
``Args:`` section gives each option's help, ``Examples:`` ends ``--help``).
Heavy libraries are imported inside the functions so ``lmlab --help`` is fast.
"""

from __future__ import annotations

from lmlab.commands.classic import (
    compare,
    embed_eval,
    embed_neighbors,
    embed_train,
    ngram_eval,
    ngram_sample,
    ngram_train,
)
from lmlab.commands.data import (
    chatdata,
    corpus,
    download,
    parallel,
    prepare,
    summaries,
    tokenizer_train,
)
from lmlab.commands.demo import demo
from lmlab.commands.evaluation import bias, mcq_eval, mcq_export
from lmlab.commands.inference import (
    chat,
    convert,
    evaluate,
    generate,
    inspect,
    merge,
    neighbors,
    score,
    serve,
    summarize,
    translate,
)
from lmlab.commands.train import baseline, finetune, predict, pretrain, seq2seq, sft, sweep

COMMANDS: dict = {
    "demo": demo,
    "corpus": corpus,
    "tokenizer": {"__doc__": "train tokenizers", "train": tokenizer_train},
    "prepare": prepare,
    "parallel": parallel,
    "summaries": summaries,
    "chatdata": chatdata,
    "download": download,
    "ngram": {"__doc__": "n-gram language models (Kneser-Ney, add-k, stupid backoff; ARPA)",
              "train": ngram_train, "eval": ngram_eval, "sample": ngram_sample},
    "embed": {"__doc__": "train, evaluate and query word vectors", "train": embed_train,
              "eval": embed_eval, "neighbors": embed_neighbors},
    "pretrain": pretrain,
    "seq2seq": seq2seq,
    "sweep": sweep,
    "eval": evaluate,
    "mcq": {"__doc__": "multiple-choice evaluation, zero- and few-shot (MMLU, Debian, "
                       "CC-CEDICT), and its lm-evaluation-harness tasks",
            "eval": mcq_eval, "export": mcq_export},
    "bias": bias,
    "generate": generate,
    "translate": translate,
    "summarize": summarize,
    "score": score,
    "convert": convert,
    "sft": sft,
    "merge": merge,
    "chat": chat,
    "serve": serve,
    "neighbors": neighbors,
    "inspect": inspect,
    "finetune": finetune,
    "predict": predict,
    "compare": compare,
    "baseline": baseline,
}
