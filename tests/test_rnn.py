"""The classic neural LMs (models/rnn.py): shapes, tying, the feed-forward window, state
carried in chunks, truncated BPTT in the trainer with exact resume, stream validation,
eval / generate on a checkpoint, a GRU text classifier, and the errors a user can cause."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import interrupt_and_resume, weights
from lmlab.cli import main
from lmlab.config import RNN_PRESETS, RNNConfig, load_config
from lmlab.errors import LmlabError
from lmlab.evaluate import score_stream, score_tokens
from lmlab.models.rnn import FeedForwardLM, RecurrentLM, RNNEncoder, build_lm
from lmlab.models.weights import load_checkpoint, resolve_checkpoint
from lmlab.runs import read_metrics
from lmlab.train.loop import TrainConfig, Trainer, stream_batch

FAMILIES = ["ffnn", "rnn", "lstm", "gru"]
# Tiny models for the trainer: one thread (two threads fight over two shared cores,
# which made an LSTM step 100x slower here).
TINY = dict(n_embd=32, n_layer=1, block_size=16, batch_size=8, lr=1e-2, warmup_steps=3,
            eval_tokens=1024, threads=1)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(model_type: str, **kw) -> RNNConfig:
    base = dict(model_type=model_type, vocab_size=50, n_embd=16, n_hidden=16, n_layer=2,
                context=3, block_size=8)
    return RNNConfig(**(base | kw))


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("kind", FAMILIES)
def test_shapes_and_states(kind):
    torch.manual_seed(0)
    model = build_lm(tiny(kind, n_hidden=24))
    logits, state = model(torch.randint(0, 50, (2, 7)))
    assert logits.shape == (2, 7, 50)
    if kind == "ffnn":
        assert isinstance(model, FeedForwardLM) and state.shape == (2, 2)  # context - 1 tokens
    elif kind == "lstm":
        h, c = state
        assert h.shape == c.shape == (2, 2, 24)  # (L, B, H)
    else:
        assert state.shape == (2, 2, 24)
    # Counted independently of parameters(): each distinct tensor of the state dict
    # once, so a tied output matrix (one tensor under two keys) is not counted twice.
    unique = {id(v): v.numel() for v in model.state_dict(keep_vars=True).values()}
    assert model.num_params() == sum(unique.values())


def test_lm_presets_are_laptop_sized():
    for name, preset in RNN_PRESETS.items():
        if preset.get("bidirectional"):
            continue
        with torch.device("meta"):
            n = build_lm(RNNConfig.from_name(name, vocab_size=8192)).num_params()
        assert 1_000_000 < n < 5_000_000, (name, n)


def test_tied_output_is_the_embedding_and_saved_once(tmp_path):
    from lmlab.train.checkpoint import save_checkpoint

    tied = RecurrentLM(tiny("lstm"))
    assert tied.lm_head.weight is tied.encoder.wte.weight
    projected = RecurrentLM(tiny("gru", n_hidden=24))  # H != C: a projection H -> C first
    assert projected.lm_head.weight is projected.encoder.wte.weight
    assert projected.proj.weight.shape == (16, 24)
    untied = RecurrentLM(tiny("rnn", tie_embeddings=False))
    assert untied.lm_head.weight is not untied.encoder.wte.weight
    # A gradient through the output reaches the (one) embedding matrix.
    logits, _ = tied(torch.tensor([[1, 2]]))
    logits[0, -1, 7].backward()
    assert tied.encoder.wte.weight.grad[7].abs().sum() > 0

    save_checkpoint(tmp_path / "run", 0, projected, None)
    assert "lm_head.weight" not in weights(tmp_path / "run")
    loaded = load_checkpoint(tmp_path / "run")
    assert isinstance(loaded, RecurrentLM)
    assert loaded.lm_head.weight is loaded.encoder.wte.weight
    x = torch.randint(0, 50, (1, 5))
    torch.testing.assert_close(loaded(x)[0], projected.eval()(x)[0])


@pytest.mark.parametrize("direct", [False, True])
def test_ffnn_logit_depends_only_on_its_window(direct):
    torch.manual_seed(0)
    n = 3
    model = FeedForwardLM(tiny("ffnn", context=n, direct=direct, n_layer=1)).eval()
    idx = torch.randint(0, 50, (1, 12))
    base, _ = model(idx)
    for j in range(12):
        changed = idx.clone()
        changed[0, j] = (idx[0, j] + 1) % 50
        out, _ = model(changed)
        differs = (out - base).abs().amax(-1)[0] > 1e-6  # (T,)
        # Position t reads tokens t-n+1 .. t: a change at j shows at j .. j+n-1 only.
        want = torch.tensor([j <= t <= j + n - 1 for t in range(12)])
        assert torch.equal(differs, want), (j, differs)


@pytest.mark.parametrize("kind", FAMILIES)
def test_chunks_with_carried_state_equal_one_pass(kind):
    torch.manual_seed(0)
    model = build_lm(tiny(kind)).eval()
    idx = torch.randint(0, 50, (2, 13))
    full, _ = model(idx)
    state, parts = None, []
    for a, b in ((0, 1), (1, 5), (5, 13)):  # chunks shorter than an ffnn window too
        out, state = model(idx[:, a:b], state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), full)


@pytest.mark.parametrize("kind", ["ffnn", "lstm"])
def test_stream_scoring_equals_a_full_forward(kind):
    torch.manual_seed(0)
    model = build_lm(tiny(kind)).eval()
    toks = np.random.default_rng(0).integers(0, 50, 41)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(toks[:-1])[None])
        want = F.cross_entropy(logits[0], torch.from_numpy(toks[1:]), reduction="sum").item()
    nll, count = score_tokens(model, toks, batch_size=1)  # dispatches to score_stream
    assert count == 40 and nll == pytest.approx(want, rel=1e-5)
    # Parallel streams score the same number of targets, each part from an empty state.
    nll4, count4 = score_stream(model, toks, streams=4, chunk=3)
    assert count4 == 40 and abs(nll4 - want) / want < 0.2


# ---------------------------------------------------------------- truncated BPTT
def test_stream_batch_continues_each_row_and_wraps():
    tokens = np.arange(100)
    B, T = 3, 4  # L = 33 tokens per part, (33 - 1) // 4 = 8 blocks per pass
    x0, y0, new0 = stream_batch(tokens, B, T, 0)
    assert new0 and x0[:, 0].tolist() == [0, 33, 66]
    assert torch.equal(y0, x0 + 1)
    x1, _, new1 = stream_batch(tokens, B, T, 1)
    assert not new1 and torch.equal(x1[:, 0], x0[:, -1] + 1)  # row b goes on where it ended
    x7, y7, _ = stream_batch(tokens, B, T, 7)
    assert y7[:, -1].tolist() == [32, 65, 98]  # the last block stays inside its part
    x8, _, new8 = stream_batch(tokens, B, T, 8)
    assert new8 and torch.equal(x8, x0)  # a new pass: same blocks, state reset
    with pytest.raises(LmlabError, match="too few"):
        stream_batch(tokens, 30, 4, 0)


def test_trainer_carries_the_state_from_step_to_step(char_shards, tmp_path):
    trainer = Trainer(TrainConfig(data=str(char_shards), out=str(tmp_path / "run"),
                                  preset="lstm-small", max_steps=4, eval_interval=4,
                                  grad_accum=2, **TINY), progress=False)
    seen: list[tuple] = []
    real = trainer.net

    def recording(x, state):
        logits, new = real(x, state)
        seen.append((x.clone(), state, tuple(s.detach().clone() for s in new)))
        return logits, new

    trainer.net = recording
    trainer.fit()
    assert len(seen) == 8  # 4 steps x 2 micro-batches
    assert seen[0][1] is None
    for i in range(1, 8):
        x, state, _ = seen[i]
        # Micro-batch i reads block i of every stream and starts from the state of i-1.
        want, _, _ = stream_batch(trainer.train_tokens, 8, 16, i)
        assert torch.equal(x, want)
        for got, prev in zip(state, seen[i - 1][2], strict=True):
            assert torch.equal(got, prev) and not got.requires_grad


@pytest.mark.parametrize("kind", FAMILIES)
def test_every_family_learns_through_the_trainer(kind, char_shards, tmp_path):
    run = tmp_path / kind
    result = Trainer(TrainConfig(data=str(char_shards), out=str(run), preset=f"{kind}-small",
                                 max_steps=40, eval_interval=20, **TINY), progress=False).fit()
    rows = read_metrics(run / "metrics.jsonl")
    train = [r["loss"] for r in rows if r["split"] == "train"]
    assert train[-1] < train[0] - 0.3, train
    val = result["val"]
    assert val["loss"] < math.log(512) - 1.5  # far better than uniform over the vocabulary
    assert set(val) >= {"loss", "perplexity", "bits_per_byte"}
    assert result["params"] == load_checkpoint(run).num_params() and result["train_seconds"] > 0
    config = load_config(resolve_checkpoint(run) / "config.json")
    assert isinstance(config, RNNConfig) and config.model_type == kind
    assert config.n_embd == 32 and config.n_layer == 1 and config.block_size == 16
    # n_embd keeps the preset's hidden-to-embedding ratio (3 for ffnn-small, else 1).
    assert config.n_hidden == (96 if kind == "ffnn" else 32)


def test_lstm_resumed_run_is_bit_identical(char_shards, tmp_path, monkeypatch):
    """Killed as step 14 begins (last checkpoint: 10), resumed: same weights and state."""
    common = dict(data=str(char_shards), preset="lstm-small", max_steps=20, eval_interval=10,
                  checkpoint_interval=5, dropout=0.1, **dict(TINY, n_layer=2, batch_size=4))
    assert interrupt_and_resume(common, tmp_path, 14, monkeypatch) == "step-000010"
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "broken")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    from safetensors.torch import load_file

    carried = [load_file(str(resolve_checkpoint(tmp_path / run) / "optimizer.safetensors"))
               for run in ("straight", "broken")]
    keys = sorted(k for k in carried[0] if k.startswith("carry."))
    assert keys == ["carry.0", "carry.1"]  # the LSTM's h and c, (L, B, H)
    assert carried[0]["carry.0"].shape == (2, 4, 32)
    for k in keys:
        assert torch.equal(carried[0][k], carried[1][k]), k


# ---------------------------------------------------------------- checkpoint in use
@pytest.fixture(scope="module")
def lstm_run(char_shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lstm") / "run"
    Trainer(TrainConfig(data=str(char_shards), out=str(run), preset="lstm-small",
                        max_steps=30, eval_interval=30, **TINY), progress=False).fit()
    return run


def test_eval_reads_the_text_as_one_stream(lstm_run, char_shards, capsys):
    text = char_shards.parent / "corpus" / "val.jsonl"
    assert main(["eval", str(lstm_run), str(text), "--json-out"]) == 0
    got = json.loads(capsys.readouterr().out)
    model = load_checkpoint(lstm_run)
    from lmlab.data.corpus import iter_documents
    from lmlab.tokenizer import Tokenizer

    tok = Tokenizer.from_file(resolve_checkpoint(lstm_run) / "tokenizer.json")
    ids = [tok.eos_id]
    for i, doc in enumerate(iter_documents(text, txt_mode="file")):
        ids += ([tok.eos_id] if i else []) + tok.encode(doc)
    with torch.no_grad():
        logits, _ = model(torch.tensor(ids[:-1])[None])
        nll = F.cross_entropy(logits[0], torch.tensor(ids[1:]), reduction="sum").item()
    assert got["tokens"] == len(ids) - 1
    assert got["loss"] == pytest.approx(nll / (len(ids) - 1), rel=1e-5)
    assert got["perplexity"] < 30


def test_generate_carries_the_state(lstm_run, capsys):
    from lmlab.generate import SamplingConfig, generate_texts
    from lmlab.loading import load_for_inference

    assert main(["generate", str(lstm_run), "--prompt", "The ", "--max-new-tokens", "12",
                 "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("The ")
    loaded = load_for_inference(lstm_run)
    model, tok = loaded.model, loaded.tokenizer
    greedy = SamplingConfig(temperature=0.0)
    # A prompt longer than block_size is read whole (the state has no context limit).
    long = "the " * 10
    alone = [generate_texts(model, tok, [p], max_new_tokens=8, cfg=greedy)[0].text
             for p in ("It was", long)]
    # Left-padded rows of a batch get what each gets alone: padding is never read.
    both = generate_texts(model, tok, ["It was", long], max_new_tokens=8, cfg=greedy)
    assert [c.text for c in both] == alone
    # The greedy continuation is the argmax of a full forward pass, token by token.
    ids = tok.encode("It was")
    for _ in range(8):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert alone[0] == tok.decode(ids[len(tok.encode("It was")):])


# ---------------------------------------------------------------- GRU classifier
def _sentiment(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "poor", "dull", "bad"]
    filler = ["the", "film", "was", "really", "plot", "and", "acting", "quite"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(filler, 4) + [rng.choice(good if label == "pos" else bad)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> tuple[Path, Path]:
    from lmlab.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("sentiment")
    rows = _sentiment(240, 0)
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = Tokenizer.train([r["text"] for r in rows], kind="bpe", vocab_size=300,
                          show_progress=False)
    tok.save(root / "tokenizer.json")
    return path, root / "tokenizer.json"


def test_gru_classifier_fine_tunes_and_predicts(sentiment, tmp_path, capsys):
    from lmlab.train.tasks.checkpoint import load_task_model, predict_texts

    train, tok = sentiment
    out = tmp_path / "run"
    rc = main(["finetune", "--task", "classify", "--train", str(train), "--model",
               "gru-classifier", "--tokenizer", str(tok), "--out", str(out), "--epochs", "4",
               "--batch-size", "16", "--lr", "1e-2", "--threads", "1"])
    assert rc == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["scores"]["accuracy"] >= 0.9, report["scores"]
    info = json.loads((out / "best" / "task.json").read_text())
    assert info["backbone"] == "rnn" and info["pooling"] == "mean"
    config = load_config(out / "best" / "config.json")
    assert isinstance(config, RNNConfig) and config.bidirectional

    texts = ["the film was superb", "really dull acting"]
    assert main(["predict", str(out), "--texts", *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["pos", "neg"]
    model, tokenizer, info = load_task_model(out)
    assert isinstance(model.backbone, RNNEncoder)
    assert [p.label for p in predict_texts(model, tokenizer, info, texts)] == ["pos", "neg"]
    # Padding changes nothing: a text alone and in a batch with a longer one agree.
    short = predict_texts(model, tokenizer, info, texts[:1])[0].probability
    batch = predict_texts(model, tokenizer, info, [texts[0], "the " * 30 + "bad"])[0]
    assert batch.probability == pytest.approx(short, rel=1e-5)


def test_gru_classifier_takes_initial_embeddings(sentiment, tmp_path):
    from lmlab.tokenizer import Tokenizer
    from lmlab.train.finetune import FinetuneConfig, Finetuner

    train, tok = sentiment
    vocab = Tokenizer.from_file(tok).vocab_size
    init = torch.randn(vocab, 24)
    cfg = FinetuneConfig(task="classify", train=str(train), model="gru-classifier",
                         tokenizer=str(tok), out=str(tmp_path / "run"), threads=1)
    ft = Finetuner(cfg, progress=False, embedding_init=init)
    assert ft.model.config.n_embd == 24  # the width follows the vectors
    assert torch.equal(ft.model.backbone.wte.weight, init)
    with pytest.raises(LmlabError, match="recurrent preset"):
        Finetuner(FinetuneConfig(**dict(vars(cfg), model="gpt-nano", out=str(tmp_path / "b"))),
                  embedding_init=init)
    with pytest.raises(LmlabError, match=r"shape \(.*\)"):
        Finetuner(FinetuneConfig(**dict(vars(cfg), out=str(tmp_path / "c"))),
                  embedding_init=torch.randn(vocab + 1, 24))


def test_a_pretrained_lstm_is_a_fine_tuning_backbone(lstm_run):
    from lmlab.train.tasks.model import load_backbone

    backbone, _, _, _ = load_backbone(lstm_run)
    lm = load_checkpoint(lstm_run)
    assert isinstance(backbone, RNNEncoder)
    for k, v in lm.encoder.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, message", [
    (["--preset", "lstm-small", "--objective", "mlm"], "classic left-to-right LM preset"),
    (["--preset", "gru-classifier"], "bidirectional text encoder"),
    (["--preset", "gru-small", "--n-head", "4"], "no attention heads"),
    (["--preset", "bert-mini"], "ffnn-small"),  # the wrong-family error lists classic presets
    (["--preset", "lstm-big"], "unknown preset 'lstm-big'"),
    (["--preset", "lstm-small", "--batch-size", "4000", "--block-size", "64"], "too few"),
])
def test_bad_pretraining_inputs_are_one_line_errors(args, message, char_shards, tmp_path,
                                                    capsys):
    rc = main(["pretrain", str(char_shards), "--out", str(tmp_path / "run"), "--threads", "1",
               *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_bad_configs_and_backbones(tmp_path, sentiment, capsys):
    with pytest.raises(LmlabError, match="model_type"):
        RNNConfig(model_type="transformer")
    with pytest.raises(LmlabError, match="left to right"):
        RecurrentLM(tiny("gru", bidirectional=True))
    with pytest.raises(LmlabError, match="not recurrent"):
        RNNEncoder(tiny("ffnn"))
    # A block shorter than the ffnn window is fine: the history comes from the state.
    model = FeedForwardLM(tiny("ffnn", context=5, block_size=1))
    assert model(torch.tensor([[3]]))[0].shape == (1, 1, 50)
    train, tok = sentiment
    rc = main(["finetune", "--task", "classify", "--train", str(train), "--model",
               "ffnn-small", "--tokenizer", str(tok), "--out", str(tmp_path / "run")])
    assert rc == 2 and "not a whole text" in capsys.readouterr().err


def test_gru_classifier_starts_from_a_word_vector_file(sentiment, tmp_path, capsys):
    """--vectors without --tokenizer: a word tokenizer over the file's words, each word's
    embedding row its vector; the run saves that tokenizer, so predict reads text."""
    from lmlab.models.embeddings import WordVectors, save_vectors
    from lmlab.tokenizer import Tokenizer

    train, _ = sentiment
    words = ["the", "film", "was", "really", "plot", "and", "acting", "quite",
             "great", "fine", "lovely", "superb", "awful", "poor", "dull", "bad"]
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(words), 12)).astype(np.float32)
    vecs[8:12, 0], vecs[12:, 0] = 3.0, -3.0  # polarity on one axis, as good vectors have
    save_vectors(WordVectors(words, vecs), tmp_path / "vectors.txt")
    out = tmp_path / "run"
    rc = main(["finetune", "--task", "classify", "--train", str(train), "--model",
               "gru-classifier", "--vectors", str(tmp_path / "vectors.txt"), "--out", str(out),
               "--epochs", "3", "--batch-size", "16", "--lr", "1e-2", "--threads", "1"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "vectors: 16 of 18 tokens start from" in err  # all words; not [PAD], [UNK]
    tok = Tokenizer.from_file(out / "best" / "tokenizer.json")
    assert tok.kind == "word" and tok.encode("The FILM")[0] == 2
    assert main(["predict", str(out), "--texts", "superb acting", "dull plot"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["pos", "neg"]
    # A vector file for a model that cannot take it: one error line.
    rc = main(["finetune", "--task", "classify", "--train", str(train), "--model", "gpt-nano",
               "--vectors", str(tmp_path / "vectors.txt"), "--out", str(tmp_path / "gpt")])
    assert rc == 2 and "recurrent preset" in capsys.readouterr().err
