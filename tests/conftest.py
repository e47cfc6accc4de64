"""Shared fixtures: a small real corpus, a character tokenizer and token shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


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


@pytest.fixture(scope="session")
def char_shards(tmp_path_factory, lee_docs) -> Path:
    """Character-level shards of the Lee documents (10 validation documents)."""
    from lmlab.data.shards import prepare
    from lmlab.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("char")
    corpus = write_corpus(root / "corpus", lee_docs, n_val=10)
    tok = Tokenizer.train(lee_docs[10:], kind="char", vocab_size=512, show_progress=False)
    tok.save(root / "tokenizer.json")
    prepare(corpus, root / "tokenizer.json", root / "shards", progress=False)
    return root / "shards"
