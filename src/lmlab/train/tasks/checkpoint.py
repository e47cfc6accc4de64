"""A fine-tuned model's folder (``OUT/best``): weights, backbone config, task.json and
tokenizer, written atomically; reading it back, and predicting with it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmlab.atomic import atomic_dir
from lmlab.config import load_config
from lmlab.data.tasks import ClassifyExample, LabelSet, QAExample, TagExample, Task
from lmlab.errors import LmlabError
from lmlab.models.registry import backbone_for
from lmlab.models.weights import MODEL_FILE, TOKENIZER_FILES, load_weights, read_tensors
from lmlab.tokenizer import Tokenizer
from lmlab.train.tasks.decoding import Prediction, decode_outputs, run_model
from lmlab.train.tasks.features import TaskEncoder
from lmlab.train.tasks.model import TaskModel

TASK_FILE = "task.json"
FORMAT = "lmlab-finetuned"


# ---------------------------------------------------------------- checkpoints
def read_task_info(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / TASK_FILE).read_text())
    except json.JSONDecodeError as e:
        raise LmlabError(f"{folder / TASK_FILE}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise LmlabError(f"{folder / TASK_FILE}: not an lmlab fine-tuning task file")
    return info


def resolve_task_checkpoint(path: Path) -> Path:
    """The fine-tuned checkpoint folder: ``path`` itself or its ``best/``."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path}: no such fine-tuned checkpoint or run folder")
    for folder in (path, path / "best"):
        if (folder / TASK_FILE).is_file():
            return folder
    raise LmlabError(f"{path}: not a fine-tuned checkpoint (no {TASK_FILE} here nor in "
                     f"{path / 'best'}); make one with `lmlab finetune`")


def save_task_checkpoint(folder: Path, model: TaskModel, tok: Tokenizer,
                         info: dict[str, Any], source: Path | None) -> Path:
    """Write ``folder`` atomically: weights, backbone config, task.json, tokenizer files."""
    from lmlab.atomic import save_safetensors
    from lmlab.models.weights import model_state

    with atomic_dir(folder) as tmp:
        # TaskModel gives every tensor one owner (an LM head is dropped), so the
        # plain state dict is already free of duplicates.
        save_safetensors(model_state(model), tmp / "model.safetensors",
                  metadata={"format": "pt"})
        model.config.save(tmp / "config.json")
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        tok.save(tmp / "tokenizer.json")
        # Keep the source's other tokenizer files (vocab.txt, tokenizer_config.json),
        # so the folder also reads as a tokenizer in other tools.
        for name in TOKENIZER_FILES:
            if source is not None and name != "tokenizer.json" and (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
    return folder


def load_task_model(path: Path, device: str = "cpu"
                    ) -> tuple[TaskModel, Tokenizer, dict[str, Any]]:
    """A fine-tuned model (eval mode), its tokenizer and task info from ``path``
    (a run folder made by ``lmlab finetune`` or its ``best/`` folder)."""
    folder = resolve_task_checkpoint(path)
    info = read_task_info(folder)
    config = load_config(folder / "config.json")
    with torch.device("meta"):
        model = TaskModel(backbone_for(config), info["task"], max(1, len(info["labels"])),
                          info["pooling"], info.get("head_dropout", 0.1))
    sd = read_tensors(folder / MODEL_FILE, device=device, what="fine-tuned model's weights")
    load_weights(model, sd, folder / MODEL_FILE)
    tok = Tokenizer.from_file(folder / "tokenizer.json", eos_token=info.get("eos_token"))
    return model.eval(), tok, info


def task_labels(info: dict[str, Any]) -> LabelSet | None:
    """The label set a task.json names (None for qa, which has no labels)."""
    return LabelSet.from_list(info["labels"]) if info["labels"] else None


def predict_examples(model: TaskModel, tok: Tokenizer, info: dict[str, Any],
                     examples: Sequence[Any], batch_size: int = 32) -> list[Prediction]:
    """Predictions of a fine-tuned model for unlabelled (or labelled) examples."""
    if not examples:
        return []
    labels = task_labels(info)
    enc = TaskEncoder(tok, info["task"], info["backbone"], info["max_length"],
                      info["truncation"], labels)
    feats = enc.encode(examples, labelled=False, where="input")
    outs, _ = run_model(model, feats, batch_size, pad_id_of(tok, model))
    return decode_outputs(outs, feats, examples, info["task"], labels,
                          info.get("max_answer_tokens", 30))


def examples_from_texts(task: Task, texts: Sequence[str],
                        context: str | None = None) -> list[Any]:
    """Unlabelled examples from plain strings: a text to classify, a sentence to tag
    (split on whitespace), or a question to answer from ``context`` (qa)."""
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise LmlabError(f"text {empty[0] + 1} is empty; give non-empty texts")
    if task == "classify":
        return [ClassifyExample(t) for t in texts]
    if task == "tag":
        return [TagExample(t.split()) for t in texts]
    if not context or not context.strip():
        raise LmlabError("a question answering model needs --context: the text the "
                         "answers are taken from")
    return [QAExample(context, t) for t in texts]


def predict_texts(model: TaskModel, tok: Tokenizer, info: dict[str, Any],
                  texts: Sequence[str], context: str | None = None,
                  batch_size: int = 32) -> list[Prediction]:
    """Predictions for plain strings (see ``examples_from_texts``)."""
    examples = examples_from_texts(info["task"], texts, context)
    return predict_examples(model, tok, info, examples, batch_size)


def pad_id_of(tok: Tokenizer, model: TaskModel) -> int:
    """Any id works for padding (it is masked, or to the right of a causal model's
    tokens); BERT's own [PAD] keeps inputs as the encoder was trained."""
    if model.kind == "bert":
        return tok.pad_id if tok.pad_id is not None else model.config.pad_token_id
    return 0


