"""Shared fixtures and helpers: a small real corpus, token shards, run weights, resume runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch


def write_corpus(folder: Path, docs: list[str], n_val: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", docs[n_val:]), ("val", docs[:n_val])):
        with open(folder / f"{split}.jsonl", "w") as f:
            for d in part:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    return folder


@pytest.fixture(scope="session")
def lee_docs() -> list[str]:
    """The first 120 documents of gensim's Lee news corpus (real English text)."""
    from gensim.test.utils import datapath

    lines = Path(datapath("lee_background.cor")).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()][:120]


def make_shards(root: Path, docs: list[str], kind: str, vocab_size: int,
                n_val: int = 10) -> Path:
    """Shards of ``docs`` (the first ``n_val`` for validation) under ``root / "shards"``,
    with a ``kind`` tokenizer trained on the training documents."""
    from lmlab.data.shards import prepare
    from lmlab.tokenizer import Tokenizer

    corpus = write_corpus(root / "corpus", docs, n_val=n_val)
    tok = Tokenizer.train(docs[n_val:], kind=kind, vocab_size=vocab_size, show_progress=False)
    tok.save(root / "tokenizer.json")
    prepare(corpus, root / "tokenizer.json", root / "shards", progress=False)
    return root / "shards"


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The model weights of a run's latest checkpoint."""
    from safetensors.torch import load_file

    from lmlab.models.weights import resolve_checkpoint

    return load_file(str(resolve_checkpoint(run) / "model.safetensors"))


def interrupt_and_resume(cfg: dict[str, Any], root: Path, die_at: int,
                         monkeypatch: pytest.MonkeyPatch) -> str:
    """Train ``root/straight`` to the end; train ``root/broken``, killed as step ``die_at``
    begins, then resumed to the end. Returns the checkpoint the resume started from."""
    from lmlab.models.weights import resolve_checkpoint
    from lmlab.train.loop import TrainConfig, Trainer

    Trainer(TrainConfig(out=str(root / "straight"), **cfg), progress=False).fit()
    calls = {"n": 0}
    real_step = Trainer._train_step

    def dying_step(self: Trainer) -> float:
        calls["n"] += 1
        if calls["n"] == die_at:
            raise KeyboardInterrupt  # the process dies mid-run, after a checkpoint
        return real_step(self)

    monkeypatch.setattr(Trainer, "_train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(out=str(root / "broken"), **cfg), progress=False).fit()
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    resumed_from = resolve_checkpoint(root / "broken").name
    Trainer(TrainConfig(out=str(root / "broken"), **cfg), resume=True, progress=False).fit()
    return resumed_from


@pytest.fixture(scope="session")
def char_shards(tmp_path_factory, lee_docs) -> Path:
    """Character-level shards of the Lee documents (10 validation documents)."""
    return make_shards(tmp_path_factory.mktemp("char"), lee_docs, "char", 512)


def chat_tokenizer(*texts: str) -> Any:
    """A character-level tokenizer with an end token and ChatML's control tokens."""
    from lmlab.tokenizer import Tokenizer

    return Tokenizer.train(list(texts), kind="char", vocab_size=300,
                           special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                           show_progress=False)
