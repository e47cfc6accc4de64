"""Sentence embeddings from an encoder, and nearest-neighbour search over them.

An encoder (an lmlab BERT checkpoint, or a Hugging Face BERT folder such as
all-MiniLM-L6-v2) reads ``[CLS] text [SEP]``; the sentence vector is the
mean of its final hidden states over the real tokens (sentence-transformers'
pooling), L2-normalized so that a dot product is the cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.errors import LmlabError
from lmlab.models.bert import Bert, BertForPreTraining, mean_pool
from lmlab.models.registry import backbone_of, kind_of
from lmlab.tokenizer import Tokenizer


def encoder_inputs(tok: Tokenizer, texts: Sequence[str], max_len: int,
                   pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] ids [SEP]`` per text, truncated to ``max_len`` tokens and right-padded.

    Returns input ids and attention mask, both (B, T) with T the longest row.
    Text beyond ``max_len - 2`` tokens is cut off (its end is dropped).
    """
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise LmlabError(f"{tok.path or 'the tokenizer'}: an encoder's tokenizer needs "
                         "[CLS] and [SEP] tokens (train one with --kind wordpiece)")
    rows = [[cls, *ids[: max_len - 2], sep] for ids in tok.encode_batch(list(texts))]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


@torch.no_grad()
def sentence_embeddings(encoder: Bert | BertForPreTraining, tok: Tokenizer,
                        texts: Sequence[str], batch_size: int = 32,
                        normalize: bool = False) -> torch.Tensor:
    """Mean-pooled final hidden states of each text, (N, C), in the order given.

    Texts are sorted by length into batches, so little compute goes to padding.
    """
    bert = backbone_of(encoder)  # a masked-LM model's encoder, without its heads
    bert.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), bert.config.n_embd)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        ids, mask = encoder_inputs(tok, [texts[i] for i in chunk], bert.config.block_size,
                                   bert.config.pad_token_id)
        out[chunk] = mean_pool(bert(ids, mask), mask).float()
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def load_encoder(source: Path, tokenizer: Path | None = None) -> tuple[Bert, Tokenizer]:
    """An encoder and its tokenizer from an HF BERT folder or an lmlab BERT checkpoint
    (the same loading as `lmlab finetune`'s backbones, presets excluded)."""
    from lmlab.train.tasks.model import load_backbone

    if not Path(source).exists():
        raise LmlabError(f"{source}: no such model folder")
    model, tok, _, _ = load_backbone(source, tokenizer)
    if kind_of(model) != "encoder":
        raise LmlabError(f"{source}: not an encoder (BERT) model; sentence embeddings need one")
    return model, tok


@dataclass
class Neighbour:
    index: int
    score: float  # cosine similarity
    text: str


def nearest(query: torch.Tensor, corpus: torch.Tensor, texts: Sequence[str],
            k: int = 5) -> list[list[Neighbour]]:
    """The ``k`` most cosine-similar corpus rows of each query row (both normalized)."""
    scores = query @ corpus.T  # (Q, N)
    top = scores.topk(min(k, corpus.size(0)), dim=-1)
    return [[Neighbour(int(i), float(s), texts[int(i)]) for s, i in zip(vals, idx, strict=True)]
            for vals, idx in zip(top.values, top.indices, strict=True)]
