"""Masked-LM pretraining: masking statistics, NSP pairs, the CLI run, exact resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import interrupt_and_resume, make_shards, weights
from lmlab.cli import main
from lmlab.data.shards import TokenShards
from lmlab.errors import LmlabError
from lmlab.models.bert import BertForPreTraining
from lmlab.models.weights import load_checkpoint, resolve_checkpoint
from lmlab.runs import read_metrics
from lmlab.tokenizer import Tokenizer
from lmlab.train.loop import TrainConfig, Trainer
from lmlab.train.mlm import MLMData, MLMVocab, mask_tokens

TINY = dict(objective="mlm", preset="bert-nano", block_size=48, batch_size=8, lr=1e-3,
            warmup_steps=3, eval_tokens=1024, threads=2)
SPECIALS = 5  # [PAD] [UNK] [CLS] [SEP] [MASK] are ids 0..4
PAD, UNK, CLS, SEP, MASK = range(SPECIALS)


@pytest.fixture(scope="module")
def wp_shards(tmp_path_factory, lee_docs) -> Path:
    """WordPiece shards of the Lee documents (10 validation documents)."""
    return make_shards(tmp_path_factory.mktemp("wp"), lee_docs, "wordpiece", 1200)


def synthetic_batch(B: int = 64, T: int = 96, V: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ordinary ids as [CLS] ... [SEP] [PAD]..., of varied lengths."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(SPECIALS, V, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    for r, n in enumerate(lengths.tolist()):
        ids[r, 0], ids[r, n - 1], ids[r, n:] = CLS, SEP, PAD
    ids[::7, 5] = UNK  # a word the vocabulary could not spell: still maskable
    maskable = (ids != CLS) & (ids != SEP) & (ids != PAD)
    return ids, maskable


def test_masking_selects_15_percent_and_splits_80_10_10():
    ids, maskable = synthetic_batch()
    V, random_ids = 500, torch.arange(SPECIALS, 500)
    g = torch.Generator().manual_seed(1)
    selected_n = maskable_n = 0
    kinds = {"mask": 0, "random": 0, "same": 0}
    for _ in range(40):
        inputs, labels = mask_tokens(ids, maskable, None, MASK, V, g, random_ids=random_ids)
        sel = labels != -100
        assert not (sel & ~maskable).any(), "a special token was selected"
        assert torch.equal(labels[sel], ids[sel])
        assert torch.equal(inputs[~sel], ids[~sel]), "an unselected token changed"
        # Each row: round(15 % of its maskable tokens).
        want = (maskable.sum(1) * 0.15).round().long().clamp(min=1)
        assert torch.equal(sel.sum(1), want)
        selected_n += int(sel.sum())
        maskable_n += int(maskable.sum())
        changed = inputs[sel]
        kinds["mask"] += int((changed == MASK).sum())
        kinds["same"] += int((changed == ids[sel]).sum())
        random = changed[(changed != MASK) & (changed != ids[sel])]
        kinds["random"] += len(random)
        assert (random >= SPECIALS).all(), "a random replacement was a special token"
    assert selected_n / maskable_n == pytest.approx(0.15, abs=0.005)
    assert kinds["mask"] / selected_n == pytest.approx(0.8, abs=0.02)
    assert kinds["random"] / selected_n == pytest.approx(0.1, abs=0.02)
    assert kinds["same"] / selected_n == pytest.approx(0.1, abs=0.02)


def test_masking_is_a_function_of_the_generator_state():
    ids, maskable = synthetic_batch(8, 32)
    a = mask_tokens(ids, maskable, None, MASK, 500, torch.Generator().manual_seed(3))
    b = mask_tokens(ids, maskable, None, MASK, 500, torch.Generator().manual_seed(3))
    c = mask_tokens(ids, maskable, None, MASK, 500, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_whole_word_masking_masks_whole_words_only():
    ids, maskable = synthetic_batch()
    g = torch.Generator().manual_seed(2)
    word_start = torch.rand(ids.shape, generator=g) < 0.6  # words of 1.7 tokens on average
    # Word index of each token, as the masking defines it (specials are words of their own).
    edge = ~maskable
    starts = word_start | edge | torch.nn.functional.pad(edge[:, :-1], (1, 0), value=True)
    word = starts.long().cumsum(1)
    selected_n = 0
    for _ in range(30):
        _, labels = mask_tokens(ids, maskable, word_start, MASK, 500, g)
        sel = labels != -100
        assert not (sel & ~maskable).any()
        for r in range(len(ids)):
            picked = set(word[r][sel[r]].tolist())
            # Every token of a picked word is selected, and nothing else.
            assert torch.equal(sel[r], torch.isin(word[r], torch.tensor(sorted(picked)))
                               & maskable[r])
        selected_n += int(sel.sum())
    assert selected_n / (30 * int(maskable.sum())) == pytest.approx(0.15, abs=0.01)


def test_windows_without_nsp(wp_shards):
    tok = Tokenizer.from_file(wp_shards / "tokenizer.json")
    data = MLMData(TokenShards(wp_shards, "train"), MLMVocab.from_tokenizer(tok), 48)
    batch = data.sample(16, torch.Generator().manual_seed(0))
    assert batch.input_ids.shape == (16, 48)
    assert batch.attention_mask is None and batch.token_type_ids is None
    assert (batch.input_ids[:, 0] == tok.cls_id).all()
    assert (batch.input_ids[:, -1] == tok.sep_id).all()
    labels = batch.labels
    assert (labels[:, 0] == -100).all() and (labels[:, -1] == -100).all()
    assert not (labels == tok.sep_id).any(), "a document separator was selected"


def test_nsp_pairs_follow_berts_layout(wp_shards):
    tok = Tokenizer.from_file(wp_shards / "tokenizer.json")
    vocab = MLMVocab.from_tokenizer(tok, nsp=True)
    data = MLMData(TokenShards(wp_shards, "train"), vocab, 64, nsp=True)
    s = data.sentences
    assert s is not None and s.num_docs == 110  # one per training document
    stream = data.tokens
    g = torch.Generator().manual_seed(0)
    # Spans: IsNext pairs are contiguous in one document, NotNext pairs cross documents.
    u = torch.rand((600, 8), generator=g, dtype=torch.float64).tolist()
    pairs = [data.pair(row) for row in u]
    assert sum(p.not_next for p in pairs) / len(pairs) == pytest.approx(0.5, abs=0.07)
    doc_of = lambda pos: int(np.searchsorted(s.doc_start, pos, side="right") - 1)  # noqa: E731
    for p in pairs:
        assert p.a1 > p.a0 and p.b1 > p.b0
        assert p.a1 - p.a0 + p.b1 - p.b0 <= 64 - 3
        assert doc_of(p.a0) == doc_of(p.a1 - 1) and doc_of(p.b0) == doc_of(p.b1 - 1)
        assert not (stream[p.a0:p.a1] == tok.sep_id).any()
        if p.not_next:
            assert doc_of(p.a0) != doc_of(p.b0)
        else:
            assert p.b0 == p.a1 and doc_of(p.a0) == doc_of(p.b0)
            # A ends a sentence: its last token is sentence-final punctuation.
            assert tok.decode([int(stream[p.a1 - 1])]).strip() in {".", "!", "?"}
    # Rows: [CLS] A [SEP] B [SEP] [PAD]..., token types 0 then 1, attention on real tokens.
    ids, types, attn, labels = data.pairs(32, g)
    for r in range(len(ids)):
        n = int(attn[r].sum())
        row = ids[r, :n].tolist()
        seps = [i for i, t in enumerate(row) if t == tok.sep_id]
        assert row[0] == tok.cls_id and len(seps) == 2 and seps[1] == n - 1
        assert (ids[r, n:] == tok.pad_id).all() and (attn[r, :n] == 1).all()
        assert (types[r, : seps[0] + 1] == 0).all() and (types[r, seps[0] + 1: n] == 1).all()
        assert (types[r, n:] == 0).all()
    assert set(labels.tolist()) <= {0, 1}
    masked = data.sample(32, g)
    assert not (masked.labels[masked.attention_mask == 0] != -100).any(), "padding was masked"


def test_pretrain_mlm_nsp_through_the_cli(wp_shards, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["pretrain", str(wp_shards), "--objective", "mlm", "--nsp", "--preset",
                 "bert-nano", "--block-size", "64", "--batch-size", "16", "--max-steps", "30",
                 "--lr", "2e-3", "--warmup-steps", "5", "--eval-interval", "15",
                 "--eval-tokens", "4096", "--threads", "2", "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0
    assert "val masked-token accuracy" in out and "NSP accuracy" in out
    assert "most frequent token" in out
    rows = read_metrics(run / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert train[-1]["mlm_loss"] < train[0]["mlm_loss"]
    assert train[0]["loss"] == pytest.approx(train[0]["mlm_loss"] + train[0]["nsp_loss"])
    assert [r["step"] for r in val] == [15, 30]
    for key in ("masked_accuracy", "most_frequent_rate", "nsp_accuracy", "perplexity"):
        assert key in val[-1], key
    # The validation set is fixed: the same masked tokens at every evaluation.
    assert val[0]["masked_tokens"] == val[1]["masked_tokens"]
    assert val[0]["most_frequent_rate"] == val[1]["most_frequent_rate"]
    assert (run / "loss.png").exists() and any((run / "tb").iterdir())
    ckpt = resolve_checkpoint(run)
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "bert"
    keys = set(weights(run))
    assert {k.split(".")[0] for k in keys} == {"bert", "mlm", "nsp"}
    model = load_checkpoint(run)
    assert isinstance(model, BertForPreTraining) and model.nsp is not None
    assert model.config.block_size == 64 and model.config.pad_token_id == 0


def test_mlm_resumed_equals_uninterrupted(wp_shards, tmp_path, monkeypatch):
    """Stop after step 7 (last checkpoint: 4), resume, compare bit for bit (dropout on)."""
    common = dict(data=str(wp_shards), max_steps=12, eval_interval=6, checkpoint_interval=4,
                  nsp=True, whole_word_mask=True, **TINY)
    assert interrupt_and_resume(common, tmp_path, 8, monkeypatch) == "step-000004"
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "broken")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Validation rows are deterministic too (fixed batches, same weights).
    val = [[r for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["split"] == "val"]
           for run in ("straight", "broken")]
    assert val[0] == val[1]


def test_mlm_needs_berts_special_tokens(char_shards, tmp_path):
    cfg = TrainConfig(data=str(char_shards), out=str(tmp_path / "run"), **TINY)
    with pytest.raises(LmlabError, match=r"lacks \[PAD\] \[CLS\] \[SEP\] \[MASK\].*wordpiece"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_objective_and_preset_must_agree():
    assert TrainConfig(data="", out="", objective="mlm").preset == "bert-mini"
    assert TrainConfig(data="", out="").preset == "gpt-mini"
    with pytest.raises(LmlabError, match="GPT .*preset"):
        TrainConfig(data="", out="", objective="mlm", preset="gpt-nano")
    with pytest.raises(LmlabError, match="--objective mlm"):
        TrainConfig(data="", out="", preset="bert-nano")
    with pytest.raises(LmlabError, match="mlm only"):
        TrainConfig(data="", out="", nsp=True)
