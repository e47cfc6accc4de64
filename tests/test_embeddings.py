"""Word vectors: co-occurrence counts, GloVe and word2vec training, evaluation against
gensim's own, vector files, and loading vectors into lmlab models."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models import embeddings as E
from lmlab.tokenizer import Tokenizer

ANIMALS = ["cat", "dog", "mouse", "horse", "rabbit"]
ANIMAL_CONTEXT = ["pet", "fur", "paws", "tail", "barn", "feed"]
VEHICLES = ["car", "bus", "truck", "train", "tram"]
VEHICLE_CONTEXT = ["wheels", "road", "engine", "fuel", "driver", "station"]


def topic_sentences(n: int = 600, seed: int = 0) -> list[list[str]]:
    """Sentences about either animals or vehicles: words of one group share contexts."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        group = (ANIMALS + ANIMAL_CONTEXT) if rng.random() < 0.5 else (VEHICLES + VEHICLE_CONTEXT)
        out.append([rng.choice(group) for _ in range(8)])
    return out


def group_margin(wv: E.WordVectors) -> float:
    """Mean cosine within the groups minus mean cosine across them."""
    unit = wv.unit()

    def cos(a: str, b: str) -> float:
        return float(unit[wv.index[a]] @ unit[wv.index[b]])

    within = [cos(a, b) for g in (ANIMALS, VEHICLES) for a in g for b in g if a < b]
    across = [cos(a, b) for a in ANIMALS for b in VEHICLES]
    return float(np.mean(within) - np.mean(across))


# --------------------------------------------------------------------------- words


def test_tokenize_words_and_word_tokenizer_split_alike():
    text = "The King's 2 sons, naïve café!\n我爱北京。 Über-cool"
    # Word vectors keep a run of Chinese characters as one word (see test_chinese.py)...
    assert E.tokenize_words(text)[-6:] == ["!", "我爱北京", "。", "über", "-", "cool"]
    # ... the word-level tokenizer splits it into characters, as "chars" does.
    words = E.tokenize_words(text, "chars")
    assert words == ["the", "king", "'", "s", "2", "sons", ",", "naïve", "café", "!", "我", "爱",
                     "北", "京", "。", "über", "-", "cool"]
    tok = Tokenizer.from_words(words + ["the"])
    assert tok.kind == "word" and tok.pad_id == 0 and tok.unk_id == 1
    assert tok.vocab_size == 2 + len(set(words))
    ids = tok.encode(text)
    assert [tok.id_to_token(i) for i in ids] == words
    assert tok.encode("the zebra") == [tok.token_to_id("the"), tok.unk_id]


def test_word_tokenizer_saves_and_loads(tmp_path):
    tok = Tokenizer.from_words(["hello", "world"])
    tok.save(tmp_path / "word.json")
    again = Tokenizer.from_file(tmp_path / "word.json")
    assert again.kind == "word" and again.encode("Hello, WORLD") == [2, 1, 3]
    with pytest.raises(LmlabError, match="without whitespace"):
        Tokenizer.from_words(["new york"])


def test_read_sentences_from_corpus_folder_and_text_file(tmp_path, lee_docs):
    from conftest import write_corpus

    folder = write_corpus(tmp_path / "corpus", ["Val doc", "One line.\nTwo, lines."], n_val=1)
    assert E.read_sentences(folder) == [["one", "line", "."], ["two", ",", "lines", "."],
                                        ["val", "doc"]]
    text = tmp_path / "docs.txt"
    text.write_text("\n".join(lee_docs[:3]) + "\n\n")
    assert len(E.read_sentences(text)) == 3
    dots = tmp_path / "dots.txt"
    dots.write_text("... \n")
    assert E.read_sentences(dots) == [["."] * 3]


# --------------------------------------------------------------------------- GloVe


def test_cooccurrence_counts_by_hand():
    sentences = [["a", "b", "c", "a", "oov"], ["b", "a"]]
    index = {"a": 0, "b": 1, "c": 2}
    ids, sentence_of = E.encode_sentences(sentences, index)
    assert ids.tolist() == [0, 1, 2, 0, 1, 0] and sentence_of.tolist() == [0, 0, 0, 0, 1, 1]
    rows, cols, x = E.cooccurrence(ids, sentence_of, 3, window=2)
    X = np.zeros((3, 3))
    X[rows, cols] = x
    # a-b: next to each other twice (1 + 1), two apart once (1/2); never across sentences.
    # b-c: next to each other (1). c-a: next to each other (1) and two apart (1/2).
    # a-a: three apart, outside the window.
    expected = np.array([[0, 2.5, 1.5],
                         [2.5, 0, 1.0],
                         [1.5, 1.0, 0]])
    np.testing.assert_allclose(X, expected)
    rows, cols, x = E.cooccurrence(ids, sentence_of, 3, window=3)
    X = np.zeros((3, 3))
    X[rows, cols] = x
    assert X[0, 0] == pytest.approx(2 / 3)  # a ... a at distance 3, counted both ways
    assert (np.diff(rows * 3 + cols) > 0).all()  # sorted, no duplicate cells


def test_glove_loss_falls_and_groups_separate():
    res = E.train_vectors(topic_sentences(), "glove", dim=16, window=4, min_count=1, epochs=15,
                          x_max=10, batch_size=256, progress=False, workers=1)
    assert res.method == "glove" and len(res.losses) == 15
    assert res.losses[-1] < 0.5 * res.losses[0]
    assert group_margin(res.vectors) > 0.3
    assert res.words_per_s > 0 and res.corpus_words == 600 * 8
    again = E.train_vectors(topic_sentences(), "glove", dim=16, window=4, min_count=1,
                            epochs=2, x_max=10, batch_size=256, progress=False, workers=1)
    first = E.train_vectors(topic_sentences(), "glove", dim=16, window=4, min_count=1,
                            epochs=2, x_max=10, batch_size=256, progress=False, workers=1)
    np.testing.assert_array_equal(again.vectors.vectors, first.vectors.vectors)  # seeded


def test_glove_step_is_per_cell_adagrad():
    # Each cell takes its own AdaGrad step and adds its own g^2 (glove.c), even when
    # a batch holds a row twice; summing the gradients first starved frequent words.
    model = E.GloVe(4, 3, torch.Generator().manual_seed(0), initial_accumulator=1.0)
    w0, wt0, b0, bt0 = (t.clone() for t in (model.w, model.w_tilde, model.b, model.b_tilde))
    i, j = torch.tensor([0, 0]), torch.tensor([1, 2])
    log_x, f_x = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.5])
    loss = model.step(i, j, log_x, f_x, lr=0.1)
    f_diff = f_x * ((w0[0] * wt0[j]).sum(-1) + b0[0] + bt0[j] - log_x)  # (2,)
    assert loss == pytest.approx(0.5 * float((f_diff * f_diff / f_x).sum()), rel=1e-5)
    g = f_diff[:, None] * wt0[j]  # (2, D): the two cells' gradients on w_0
    torch.testing.assert_close(model.w[0], w0[0] - 0.1 * g.sum(0) / (1 + (g * g).sum(0)).sqrt())
    torch.testing.assert_close(model.b[0],
                               b0[0] - 0.1 * f_diff.sum() / (1 + (f_diff ** 2).sum()).sqrt())
    torch.testing.assert_close(model.w_tilde[1], wt0[1] - 0.1 * f_diff[0] * w0[0]
                               / (1 + (f_diff[0] * w0[0]) ** 2).sqrt())
    torch.testing.assert_close(model.w[3], w0[3])  # rows outside the batch stay


@pytest.mark.parametrize("method", ["skipgram", "cbow", "fasttext"])
def test_gensim_methods_separate_groups(method):
    # sample=0: with 22 words, all "frequent", subsampling would drop most of them.
    res = E.train_vectors(topic_sentences(), method, dim=16, window=4, min_count=1, epochs=20,
                          sample=0, workers=2, progress=False, buckets=1000)
    assert set(res.vectors.words) == set(ANIMALS + ANIMAL_CONTEXT + VEHICLES + VEHICLE_CONTEXT)
    assert group_margin(res.vectors) > 0.2
    assert res.words_per_s > 0


def test_bad_training_settings():
    with pytest.raises(LmlabError, match="unknown method"):
        E.train_vectors([["a"]], "lsa")
    with pytest.raises(LmlabError, match="min_count=5"):
        E.train_vectors([["a", "b"]], "glove", progress=False)


# --------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def eval_vectors() -> E.WordVectors:
    """Vectors over the words of the evaluation sets, with some analogy structure.

    Random vectors, then for each analogy section every pair (a, b) of its
    questions gets b = a + the section's offset + noise, so some questions are
    answered right and some wrong. Case variants test case folding: "King"
    after "king" (the first wins), "PARIS" before "paris" (so "PARIS" wins).
    The last words lie beyond restrict_vocab.
    """
    rng = np.random.default_rng(0)
    words: list[str] = []
    pairs: list[tuple[int, str, str]] = []
    section = -1
    for line in E.analogy_path().read_text().splitlines():
        if line.startswith(":"):
            section += 1
            continue
        a, b, c, d = line.lower().split()
        pairs += [(section, a, b), (section, c, d)]
        words += [a, b, c, d]
    for path in E.similarity_paths().values():
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                words += [w.lower() for w in line.split("\t")[:2]]
    words = list(dict.fromkeys(words))
    rng.shuffle(words)
    words = words[:-40]  # some words unknown
    words.insert(5, "PARIS")
    words.insert(words.index("king") + 1, "King")
    dim = 24
    vecs = {w: rng.normal(size=dim) for w in words}
    offsets = rng.normal(size=(section + 1, dim)) * 1.5
    for s, a, b in pairs:
        if a in vecs and b in vecs:
            vecs[b] = vecs[a] + offsets[s] + rng.normal(size=dim) * 0.8
    return E.WordVectors(words, np.stack([vecs[w] for w in words]))


@pytest.fixture(scope="module")
def some_questions(tmp_path_factory) -> Path:
    """Every 4th question of the word2vec set (all 14 sections), to keep gensim quick."""
    out, k = [], 0
    for line in E.analogy_path().read_text().splitlines():
        if line.startswith(":"):
            out.append(line)
        else:
            k += 1
            if k % 4 == 0:
                out.append(line)
    path = tmp_path_factory.mktemp("analogy") / "questions.txt"
    path.write_text("\n".join(out) + "\n")
    return path


def test_analogies_equal_gensims(eval_vectors, some_questions):
    kv = E.to_keyed_vectors(eval_vectors)
    restrict = len(eval_vectors) - 60
    mine = E.evaluate_analogies(eval_vectors, some_questions, restrict_vocab=restrict)
    score, theirs = kv.evaluate_word_analogies(str(some_questions), restrict_vocab=restrict)
    assert [(s, c, n) for s, c, n in mine.sections] == [
        (s["section"], len(s["correct"]), len(s["correct"]) + len(s["incorrect"]))
        for s in theirs[:-1]]
    assert 0.05 < mine.accuracy < 0.95 and mine.accuracy == pytest.approx(score)
    assert mine.skipped > 0 and mine.answered + mine.skipped == mine.questions
    assert mine.questions == sum(1 for line in some_questions.read_text().splitlines()
                                 if not line.startswith(":"))


def test_word_pairs_equal_gensims(eval_vectors):
    kv = E.to_keyed_vectors(eval_vectors)
    for name, path in E.similarity_paths().items():
        mine = E.evaluate_similarity(eval_vectors, path, name=name)
        _, spearman, oov_ratio = kv.evaluate_word_pairs(str(path))
        assert mine.spearman == pytest.approx(spearman.statistic, abs=1e-9)
        assert mine.oov > 0
        assert 100 * mine.oov / (mine.pairs + mine.oov) == pytest.approx(oov_ratio)


def test_spearman_with_ties_equals_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 200).astype(float), rng.normal(size=200)
    y[:50] = y[50:100]  # ties on both sides
    assert E.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_evaluation_report(eval_vectors):
    ev = E.evaluate(eval_vectors, restrict_vocab=500)
    text = ev.format()
    assert "capital-common-countries" in text and "gram9-plural-verbs" in text
    assert "WordSim-353: Spearman" in text and "SimLex-999: Spearman" in text
    assert ev.analogies.questions == 19544


def test_malformed_evaluation_file(tmp_path, eval_vectors):
    bad = tmp_path / "q.txt"
    bad.write_text(": family\nboy girl brother\n")
    with pytest.raises(LmlabError, match=r"q.txt: line 2: expected 4 words"):
        E.evaluate_analogies(eval_vectors, bad)
    bad.write_text("boy\tgirl\tmany\n")
    with pytest.raises(LmlabError, match=r"q.txt: line 1: expected"):
        E.evaluate_similarity(eval_vectors, bad)


# --------------------------------------------------------------------------- files


def small_vectors(dim: int = 5) -> E.WordVectors:
    rng = np.random.default_rng(2)
    return E.WordVectors(["the", "king", "queen", "我", ","], rng.normal(size=(5, dim)))


def test_word2vec_text_and_binary_round_trip(tmp_path):
    wv = small_vectors()
    for binary in (False, True):
        path = tmp_path / f"v{int(binary)}.txt"
        wv.save(path, binary=binary)
        back = E.load_vectors(path)
        assert back.words == wv.words and back.path == path
        np.testing.assert_array_equal(back.vectors, wv.vectors)
    assert (tmp_path / "v0.txt").read_text().splitlines()[0] == "5 5"


def test_gensim_reads_ours_and_we_read_gensims(tmp_path):
    from gensim.models import KeyedVectors

    wv = small_vectors()
    wv.save(tmp_path / "ours.bin", binary=True)
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "ours.bin"), binary=True)
    np.testing.assert_array_equal(kv["queen"], wv["queen"])
    kv.save_word2vec_format(str(tmp_path / "theirs.bin"), binary=True)
    kv.save_word2vec_format(str(tmp_path / "theirs.txt"))
    for name in ("theirs.bin", "theirs.txt"):
        back = E.load_vectors(tmp_path / name)
        assert back.words == wv.words
        np.testing.assert_allclose(back.vectors, wv.vectors, rtol=1e-6)


def test_glove_text_format(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("the 0.1 0.2 0.3\nking -1 2e-1 3\n")
    wv = E.load_vectors(path)
    assert wv.words == ["the", "king"] and wv.dim == 3
    np.testing.assert_allclose(wv["king"], [-1, 0.2, 3])


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"2 3\nthe 1 2 3\nking 1 2\n", "line 3: expected a word and 3 numbers, found 2"),
    (b"the 1 2 3\nking 1 x 3\n", "line 2: 'x' is not a number"),
    (b"3 2\nthe 1 2\nking 1 2\n", "header says 3 vectors but the file holds 2"),
    (b"the 1 nan\n", "line 1: the vector holds inf or nan"),
    (b"the 1 2\nk\xe9 1 2\n", "line 2 is not UTF-8"),
    (b"king\n", "line 1: a word with no numbers"),
    (b"2 3\nthe \x00\x00\x80?\x00\x00", "vector 1 of 2 is cut short"),
])
def test_malformed_vector_files(tmp_path, content, message):
    path = tmp_path / "vectors.txt"
    path.write_bytes(content)
    with pytest.raises(LmlabError) as err:
        E.load_vectors(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_missing_vector_file(tmp_path):
    with pytest.raises(LmlabError, match="no such file"):
        E.load_vectors(tmp_path / "nope.txt")


# --------------------------------------------------------------------------- into models


def test_init_embedding_into_gpt_wte(tmp_path):
    from lmlab.config import GPTConfig
    from lmlab.models.gpt import GPT

    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(30)] + ["King"]
    wv = E.WordVectors(words, rng.normal(size=(len(words), 64)))
    tok = Tokenizer.from_words(words[:20] + ["king", "unseen"])  # "king" finds "King"
    model = GPT(GPTConfig.from_name("gpt-nano", vocab_size=tok.vocab_size))
    wte = model.transformer.wte
    before = wte.weight.detach().clone()
    hits, total = E.init_embedding(wte, tok, wv)
    assert (hits, total) == (21, tok.vocab_size)
    w = wte.weight.detach()
    for word in words[:20]:
        np.testing.assert_allclose(w[tok.token_to_id(word)].numpy(), wv[word], rtol=1e-6)
    np.testing.assert_allclose(w[tok.token_to_id("king")].numpy(), wv["King"], rtol=1e-6)
    for keep in (tok.pad_id, tok.unk_id, tok.token_to_id("unseen")):
        assert torch.equal(w[keep], before[keep])
    assert model.lm_head.weight is wte.weight  # tied: the output layer starts there too
    logits = model(torch.tensor([[2, 3, 4]]))  # still a working model
    assert logits.shape[-1] == tok.vocab_size and torch.isfinite(logits).all()

    # From the GPT's own rows (std 0.02): copied unscaled, the word2vec rows (std 1)
    # would dominate; rescaled, they take the rows' std before the copy.
    with torch.no_grad():
        wte.weight.copy_(before)
    assert E.init_embedding(wte, tok, wv, rescale=True) == (21, tok.vocab_size)
    assert w[2:22].std().item() == pytest.approx(w.std().item(), rel=0.5)
    assert w[2:22].std().item() == pytest.approx(before.std().item(), rel=0.2)


def test_init_embedding_bpe_and_wordpiece(lee_docs):
    bpe = Tokenizer.train(lee_docs, kind="bpe", vocab_size=400, show_progress=False)
    rng = np.random.default_rng(4)
    wv = E.WordVectors(["the", "in", "world", "##ing"], rng.normal(size=(4, 8)))
    emb = torch.nn.Embedding(bpe.vocab_size, 8)
    hits, total = E.init_embedding(emb, bpe, wv)
    assert total == bpe.vocab_size and hits >= 2
    the = bpe.token_to_id("Ġthe")
    np.testing.assert_allclose(emb.weight[the].detach().numpy(), wv["the"], rtol=1e-6)

    wp = Tokenizer.train(lee_docs, kind="wordpiece", vocab_size=400, show_progress=False)
    emb = torch.nn.Embedding(wp.vocab_size, 8)
    before = emb.weight.detach().clone()
    E.init_embedding(emb, wp, wv)
    ing = wp.token_to_id("##ing")
    assert ing is not None and torch.equal(emb.weight[ing], before[ing])  # a piece, not a word


def test_word_tokenizer_from_vectors_fills_every_row():
    wv = E.WordVectors(["the", "The", "new york", "cat", "我"], np.eye(5, dtype=np.float32))
    tok = E.word_tokenizer(wv)
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == ["[PAD]", "[UNK]", "the",
                                                                   "cat", "我"]
    emb = torch.nn.Embedding(tok.vocab_size, 5)
    assert E.init_embedding(emb, tok, wv) == (3, 5)


def test_dimension_mismatch_names_the_file(tmp_path):
    small_vectors(dim=100).save(tmp_path / "vectors.txt")
    wv = E.load_vectors(tmp_path / "vectors.txt")
    with pytest.raises(LmlabError, match=r"vectors.txt has 100-dim vectors; the model's "
                                         r"embeddings are 64-dim"):
        E.init_embedding(torch.nn.Embedding(10, 64), {"the": 0}, wv)
    with pytest.raises(LmlabError, match="id 12 but the embedding has only 10 rows"):
        E.init_embedding(torch.nn.Embedding(10, 100), {"the": 12}, wv)


# --------------------------------------------------------------------------- CLI


def test_cli_train_eval_neighbors(tmp_path, capsys):
    text = tmp_path / "topics.txt"
    text.write_text("\n".join(" ".join(s) for s in topic_sentences(300)) + "\n")
    out = tmp_path / "vectors.txt"
    for method in ("skipgram", "glove"):
        assert main(["embed", "train", str(text), "--method", method, "--dim", "12",
                     "--min-count", "1", "--epochs", "3", "--workers", "2",
                     "--out", str(out), "--no-eval", "--overwrite"]) == 0
        printed = capsys.readouterr().out
        assert "words/s" in printed and f"wrote {out}" in printed
    assert E.load_vectors(out).dim == 12
    assert main(["embed", "eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "22 words x 12 dims" in printed and "19,544 questions skipped" in printed
    assert main(["embed", "neighbors", str(out), "Cat", "--top", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


def test_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("2 3\nthe 1 2 3\n")
    assert main(["embed", "eval", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: the header says 2 vectors but the file holds 1"
    small_vectors().save(tmp_path / "v.txt")
    assert main(["embed", "neighbors", str(tmp_path / "v.txt"), "zebra"]) == 2
    assert "'zebra' is not in" in capsys.readouterr().err
