"""Training-text augmentation (lmlab.data.augment) and `lmlab finetune --augment`: each
transform's behaviour, Chinese words, back-translation through tiny seq2seq models, the
splits that are never augmented, and the errors a user can cause."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.data.augment import (
    augment_examples,
    join_words,
    random_deletion,
    random_swap,
    split_words,
    synonym_replacement,
    synonym_table,
)
from lmlab.data.tasks import ClassifyExample, write_jsonl
from lmlab.errors import LmlabError
from lmlab.models.embeddings import load_vectors
from lmlab.tokenizer import Tokenizer

FAST = ["--threads", "1"]
REVIEWS = ["这个手机的屏幕很好，电池也不错", "价格太贵了，质量一般", "物流很快，包装完好",
           "用了三天就坏了，非常失望"]


def _polarity() -> list[ClassifyExample]:
    """gensim's 200 labelled movie-review sentences (fastText format, cp1252)."""
    from gensim.test.utils import datapath

    lines = Path(datapath("pang_lee_polarity.cor")).read_text(encoding="cp1252").splitlines()
    return [ClassifyExample(text, label.removeprefix("__label__"))
            for label, text in (line.split(" ", 1) for line in lines)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread: tiny models on a busy 2-core machine run several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The reviews as train/validation/test files, a WordPiece tokenizer, word vectors
    made by `lmlab embed train`, and a tiny vectors file written by hand."""
    root = tmp_path_factory.mktemp("augment")
    exs = _polarity()
    random.Random(0).shuffle(exs)  # the file lists one label, then the other
    out = {"train": write_jsonl(exs[:60], root / "train.jsonl"),
           "val": write_jsonl(exs[100:130], root / "val.jsonl"),
           "test": write_jsonl(exs[150:170], root / "test.jsonl")}
    text = root / "text.txt"
    text.write_text("".join(ex.text + "\n" for ex in exs), encoding="utf-8")
    tok = Tokenizer.train([ex.text for ex in exs], kind="wordpiece", vocab_size=600,
                          show_progress=False)
    tok.save(root / "tok.json")
    out["tok"] = root / "tok.json"
    assert main(["embed", "train", str(text), "--min-count", "2", "--dim", "16", "--epochs",
                 "2", "--workers", "1", "--no-eval", "--out", str(root / "vec.txt")]) == 0
    out["vectors"] = root / "vec.txt"
    # good ~ great, bad ~ awful, film ~ movie; "the" is the most frequent word (row 0).
    rows = {"the": [1, 1, 1, 1], "good": [1, 0, 0, 0], "great": [0.9, 0.1, 0, 0],
            "bad": [0, 1, 0, 0], "awful": [0.1, 0.9, 0, 0], "film": [0, 0, 1, 0],
            "movie": [0, 0, 0.9, 0.1], ",": [0, 0, 0.95, 0]}
    tiny = root / "tiny.txt"
    tiny.write_text(f"{len(rows)} 4\n" + "".join(
        f"{w} {' '.join(map(str, v))}\n" for w, v in rows.items()), encoding="utf-8")
    out["tiny"] = tiny
    return out


# ---------------------------------------------------------------- the transforms
def test_deletion_never_empties_a_text():
    for seed in range(50):
        rng = random.Random(seed)
        assert len(random_deletion(["only"], 0.99, rng)) == 1
        kept = random_deletion(list("abcde"), 0.999, rng)
        assert len(kept) == 1 and kept[0] in "abcde"
    assert random_deletion(list("abcdefgh"), 0.0, random.Random(0)) == list("abcdefgh")


def test_swap_keeps_the_words():
    words = split_words("the cat sat on the mat today")
    for seed in range(20):
        out = random_swap(words, 3, random.Random(seed))
        assert Counter(out) == Counter(words)
    assert random_swap(["alone"], 5, random.Random(0)) == ["alone"]
    assert any(random_swap(words, 1, random.Random(s)) != words for s in range(5))


def test_synonyms_are_neighbours_in_the_vectors(files):
    vectors = load_vectors(files["tiny"])
    table = synonym_table(vectors, split_words("The good film, a bad movie"), topn=1, skip_top=1)
    # "the" is among the most frequent rows: never replaced; "," is not a word.
    assert table == {"good": ["great"], "film": ["movie"], "bad": ["awful"], "movie": ["film"]}
    out = synonym_replacement(split_words("The Good film, bad!"), 3, random.Random(0), table)
    # Three words changed, each for its neighbour, keeping its capital and punctuation.
    assert out == ["The", "Great", "movie,", "awful!"]
    assert synonym_replacement(["zebra"], 1, random.Random(0), table) == ["zebra"]


def test_chinese_is_cut_into_words_and_joined_without_spaces():
    assert split_words("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert split_words("a fine film") == ["a", "fine", "film"]
    for text in REVIEWS:
        assert join_words(split_words(text)) == text
    assert join_words(["我", "爱", "Python", "编程"]) == "我爱Python编程"
    result = augment_examples([ClassifyExample(t, "x") for t in REVIEWS], ["swap", "delete"],
                              copies=2, alpha=0.2, seed=0)
    assert result.examples and all(" " not in ex.text for ex in result.examples)
    swapped = [ex.text for ex, m in zip(result.examples, result.methods, strict=True)
               if m == "swap"]
    assert {"".join(sorted(t)) for t in swapped} <= {"".join(sorted(t)) for t in REVIEWS}


def test_augmentation_is_seeded_and_keeps_labels(files):
    exs = _polarity()[:40]
    table = synonym_table(load_vectors(files["vectors"]), (w for ex in exs
                                                           for w in split_words(ex.text)))
    methods = ["synonym", "delete", "swap"]
    a = augment_examples(exs, methods, copies=6, seed=1, synonyms=table)
    b = augment_examples(exs, methods, copies=6, seed=1, synonyms=table)
    c = augment_examples(exs, methods, copies=6, seed=2, synonyms=table)
    assert a.examples == b.examples and a.examples != c.examples
    assert sum(a.made.values()) == len(a.examples)
    assert sum(a.made.values()) + sum(a.unchanged.values()) == 6 * len(exs)
    assert set(a.made) == set(methods) and all(n > 0 for n in a.made.values())
    # Each copy keeps the label of the text it came from (found by its words).
    by_words = {frozenset(ex.text.split()): ex.label for ex in exs}
    for ex, method in zip(a.examples, a.methods, strict=True):
        if method != "synonym":  # deletion and swap use the original's words only
            owner = [lab for words, lab in by_words.items() if set(ex.text.split()) <= words]
            assert ex.label in owner
        assert ex.text not in {e.text for e in exs}  # copies equal to an original dropped


# ---------------------------------------------------------------- back-translation
@pytest.fixture(scope="module")
def translators(tmp_path_factory, files) -> tuple[Path, Path]:
    """Two tiny untrained encoder-decoders saved as `lmlab seq2seq` saves a checkpoint:
    what they write is noise, but it comes through load_model and the beam search."""
    from lmlab.config import Seq2SeqConfig
    from lmlab.models.seq2seq import Seq2Seq
    from lmlab.tokenizer import EOS_TOKEN, PAD_TOKEN
    from lmlab.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("translators")
    tok = Tokenizer.train([ex.text for ex in _polarity()], kind="bpe", vocab_size=1000,
                          special_tokens=(PAD_TOKEN, EOS_TOKEN), show_progress=False)
    tok.save(root / "tokenizer.json")
    runs = []
    for seed, name in ((0, "fwd"), (1, "back")):
        torch.manual_seed(seed)
        config = Seq2SeqConfig.from_name(
            "seq2seq-nano", vocab_size=tok.vocab_size, block_size=12, pad_token_id=tok.pad_id,
            eos_token_id=tok.eos_id, decoder_start_token_id=tok.eos_id, dropout=0.0)
        save_checkpoint(root / name, 0, Seq2Seq(config), root / "tokenizer.json")
        runs.append(root / name)
    return runs[0], runs[1]


def test_backtranslation_goes_through_both_models(translators):
    from lmlab.beam import load_pair_model

    fwd, back = (load_pair_model(p) for p in translators)
    texts = [ex.text for ex in _polarity()[:6]]
    result = augment_examples(
        [ClassifyExample(t, "pos") for t in texts], ["backtranslate"], copies=2, seed=0,
        translate=(fwd.translate, back.translate))
    # The k-th copy of a text is its k-th best pivot translation, translated back; one
    # equal to its text or to an earlier copy of it is dropped.
    expected = []
    for text, pivots in zip(texts, fwd.translate(texts, 2), strict=True):
        backs = [outs[0] for outs in back.translate(pivots, 1)]
        expected += [b for b in dict.fromkeys(backs) if b.strip() and b != text]
    assert [ex.text for ex in result.examples] == expected and expected
    assert sum(result.made.values()) + sum(result.unchanged.values()) == 12


def test_finetune_backtranslate_end_to_end(tmp_path, files, translators, capsys):
    out = tmp_path / "bt"
    assert main(["finetune", "--task", "classify", "--train", str(files["train"]),
                 "--validation", str(files["val"]), "--test", str(files["test"]),
                 "--model", "gru-classifier", "--tokenizer", str(files["tok"]),
                 "--augment", "backtranslate", "--augment-translators",
                 *map(str, translators), "--augment-copies", "1", "--max-steps", "2",
                 "--out", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["augmented"]["made"]["backtranslate"] > 0
    assert "augment:" in capsys.readouterr().out


# ---------------------------------------------------------------- lmlab finetune --augment
def test_finetune_augments_the_training_split_only(tmp_path, files, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classify", "--train", str(files["train"]),
                 "--validation", str(files["val"]), "--test", str(files["test"]),
                 "--model", "gru-classifier", "--tokenizer", str(files["tok"]),
                 "--augment", "synonym", "delete", "swap", "--augment-vectors",
                 str(files["vectors"]), "--augment-copies", "3", "--augment-seed", "7",
                 "--epochs", "1", "--batch-size", "32", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    aug = report["augmented"]
    copies = [json.loads(x) for x in (out / "augmented.jsonl").read_text().splitlines()]
    assert aug["copies"] == len(copies) == sum(aug["made"].values()) > 100
    assert set(aug["made"]) == {"synonym", "delete", "swap"}
    assert f"augment: {len(copies):,} augmented training copies" in printed
    assert report["train_examples"] == 60
    # Validation and test are read as given: the splits written are the inputs, and only
    # the training split holds the copies.
    for name in ("val", "test"):
        assert (out / "splits" / f"{name}.jsonl").read_text() == files[name].read_text()
    def lines(path: Path) -> list[str]:
        return sorted(path.read_text().splitlines())

    assert lines(out / "splits" / "train.jsonl") == lines(files["train"])  # shuffled
    assert report["test_examples"] == 20
    originals = {json.loads(x)["text"]: json.loads(x)["label"]
                 for x in files["train"].read_text().splitlines()}
    assert not {c["text"] for c in copies} & originals.keys()
    labels = Counter(c["label"] for c in copies)
    assert set(labels) == set(originals.values())
    config = json.loads((out / "finetune_config.json").read_text())
    assert config["augment"] == ["synonym", "delete", "swap"] and config["augment_seed"] == 7


def test_the_finetuner_encodes_copies_for_training_only(tmp_path, files):
    from lmlab.train.finetune import FinetuneConfig, Finetuner

    cfg = FinetuneConfig(task="classify", train=str(files["train"]), model="gru-classifier",
                         tokenizer=str(files["tok"]), out=str(tmp_path / "r"),
                         augment=["delete"], augment_copies=2, threads=1)
    tuner = Finetuner(cfg, progress=False)
    n = {k: len(v) for k, v in tuner.splits.items()}
    assert tuner.augmented is not None
    assert len(tuner.feats["train"]) == n["train"] + len(tuner.augmented.examples)
    assert len(tuner.feats["val"]) == n["val"] and len(tuner.feats["test"]) == n["test"]
    # The copies come from the carved training texts, never from validation or test ones.
    train_words = {w for ex in tuner.splits["train"] for w in ex.text.split()}
    assert all(set(ex.text.split()) <= train_words for ex in tuner.augmented.examples)


@pytest.mark.parametrize("extra, message", [
    (["--augment", "synonym"], "--augment synonym needs word vectors: give --augment-vectors"),
    (["--augment", "delete", "--augment-copies", "0"], "--augment-copies must be at least 1"),
    (["--augment"], "--augment needs one or more of"),
    (["--augment", "swap", "--augment-alpha", "1.5"], "--augment-alpha must be in (0, 1)"),
    (["--augment", "backtranslate"], "needs two translation models"),
    (["--augment", "delete", "--augment-vectors", "VEC"], "--augment-vectors is only used by"),
    (["--augment-vectors", "VEC"], "--augment-vectors is only used with --augment"),
    (["--task", "tag", "--augment", "swap"], "--augment applies to --task classify, not tag"),
])
def test_bad_augment_options_are_one_line_errors(extra, message, tmp_path, files, capsys):
    extra = [str(files["tiny"]) if a == "VEC" else a for a in extra]
    task = [] if "--task" in extra else ["--task", "classify"]
    code = main(["finetune", *task, "--train", str(files["train"]), "--model",
                 "gru-classifier", "--tokenizer", str(files["tok"]), "--out",
                 str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_augment_errors_in_python(files):
    with pytest.raises(LmlabError, match="--augment-copies must be at least 1"):
        augment_examples([ClassifyExample("a b", "x")], ["swap"], copies=0)
    with pytest.raises(LmlabError, match="needs word vectors"):
        augment_examples([ClassifyExample("a b", "x")], ["synonym"], copies=1)
    with pytest.raises(LmlabError, match="is a causal model, neither an encoder-decoder"):
        from lmlab.beam import load_pair_model
        from lmlab.config import GPTConfig
        from lmlab.models.gpt import GPT
        from lmlab.train.checkpoint import save_checkpoint

        folder = files["tok"].parent / "gpt"
        model = GPT(GPTConfig.from_name("gpt-nano", vocab_size=600, block_size=16))
        save_checkpoint(folder, 0, model, files["tok"])
        load_pair_model(folder)
