"""N-gram models: Kneser-Ney by hand, normalization, ARPA files, KenLM parity, CLI, bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import write_corpus
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.ngram import (
    BOS,
    EOS,
    DiscountFallbackWarning,
    NgramLM,
    WordVocab,
    kn_discounts,
    split_words,
)

TOY = [["a", "b"], ["a", "b"], ["b", "a"]]  # <s> a b </s> twice, <s> b a </s> once


def fit_toy(order: int, **kw) -> NgramLM:
    with pytest.warns(DiscountFallbackWarning):  # 3 sentences: no count-of-counts n3, n4
        return NgramLM.fit_words(TOY, order=order, fallback_discounts=(0.5, 1.0, 1.5), **kw)


@pytest.fixture(scope="module")
def lee_split(lee_docs) -> tuple[list[list[str]], list[list[str]]]:
    """Word-level sentences: 100 training documents and 20 held out."""
    return [d.split() for d in lee_docs[20:]], [d.split() for d in lee_docs[:20]]


@pytest.fixture(scope="module")
def lee_kn(lee_split) -> NgramLM:
    return NgramLM.fit_words(lee_split[0], order=3)


# --------------------------------------------------------------------------- Kneser-Ney by hand


def test_kn_bigram_by_hand():
    m = fit_toy(2)
    assert m.discount_fallback_orders == (1, 2)
    # Unigrams use continuation counts: a follows <s> and b; b follows a and <s>; </s>
    # follows b and a: all 2, total 6, every count discounted by D2 = 1.0.
    gamma0 = 3 * 1.0 / 6
    p1 = (2 - 1.0) / 6 + gamma0 / 4  # 4 predictable words: <unk> </s> a b
    p_unk = gamma0 / 4
    uni = 10.0 ** m.logp[0].astype(np.float64)  # the model's own unigram table
    for w, p in {"a": p1, "b": p1, "</s>": p1, "<unk>": p_unk}.items():
        assert uni[m.vocab.index(w)] == pytest.approx(p, rel=1e-6), w
    assert (p1, p_unk) == pytest.approx((7 / 24, 1 / 8))
    # After <s>: raw counts a:2 (D2), b:1 (D1); gamma = (1.0 + 0.5) / 3.
    g = (1.0 + 0.5) / 3
    want = {"a": (2 - 1.0) / 3 + g * p1, "b": (1 - 0.5) / 3 + g * p1, "</s>": g * p1,
            "<unk>": g * p_unk}
    lp = m.next_log10_probs([BOS])
    for w, p in want.items():
        assert lp[m.vocab.index(w)] == pytest.approx(math.log10(p), abs=1e-6), w
    assert sum(want.values()) == pytest.approx(1.0)


def test_kn_trigram_by_hand():
    m = fit_toy(3)
    p1 = 7 / 24  # the unigrams are as in the bigram model
    # Order 2 (not the highest): bigrams after <s> keep raw counts, the others count their
    # distinct left words: (a b), (a </s>), (b a), (b </s>) one each, discounted by D1 = 0.5.
    p2_b_a = (1 - 0.5) / 2 + (0.5 + 0.5) / 2 * p1
    p2_eos_b = (1 - 0.5) / 2 + (0.5 + 0.5) / 2 * p1
    p2_a_bos = (2 - 1.0) / 3 + (1.0 + 0.5) / 3 * p1
    # Order 3: (<s> a b) and (a b </s>) seen twice each, discounted by D2 = 1.0, gamma = 1/2.
    want = [p2_a_bos, (2 - 1.0) / 2 + 0.5 * p2_b_a, (2 - 1.0) / 2 + 0.5 * p2_eos_b]
    got = m.token_log10_probs(m.word_ids(["a", "b"]))
    np.testing.assert_allclose(got, np.log10(want), atol=1e-6)
    assert want == pytest.approx([23 / 48, 67 / 96, 67 / 96])
    s = m.score_words([["a", "b"]])
    assert s.tokens == 3 and s.oov == 0
    assert s.nll == pytest.approx(-sum(math.log(p) for p in want), rel=1e-6)


def test_discounts_from_count_of_counts():
    adjusted = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [7, 9])
    nk, d = kn_discounts(adjusted)
    assert nk.tolist() == [10, 5, 3, 2]
    y = 10 / (10 + 2 * 5)
    assert d == pytest.approx((1 - 2 * y * 5 / 10, 2 - 3 * y * 3 / 5, 3 - 4 * y * 2 / 3))
    assert kn_discounts(np.array([1, 1, 2, 3]))[1] is None  # n4 = 0


def test_real_data_estimates_discounts(lee_kn):
    assert lee_kn.discount_fallback_orders == ()
    for d1, d2, d3 in lee_kn.discounts:
        assert 0 < d1 <= 1 and 0 < d2 <= 2 and 0 < d3 <= 3


def test_discount_fallback_can_be_refused():
    with pytest.raises(LmlabError, match="order 1"):
        NgramLM.fit_words(TOY, order=2, discount_fallback=False)


# --------------------------------------------------------------------------- normalization


def contexts(m: NgramLM, sents: list[list[str]]) -> list[list[int]]:
    ids = [m.id_map[i] if i >= 0 else 0 for i in m.word_ids(sents[0][:6])]
    return [[BOS], [BOS, ids[0]], ids[:2], ids[2:4], [ids[0], 0], [0, 0], [EOS], []]


@pytest.mark.parametrize("smoothing", ["kn", "addk"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_probabilities_sum_to_one(lee_split, smoothing, order):
    m = NgramLM.fit_words(lee_split[0], order=order, smoothing=smoothing, k=0.5)
    for ctx in contexts(m, lee_split[0]):
        lp = m.next_log10_probs(ctx)
        assert lp[BOS] == -np.inf
        assert np.sum(10.0 ** lp) == pytest.approx(1.0, abs=1e-5), ctx


def test_addk_by_hand():
    m = NgramLM.fit_words(TOY, order=2, smoothing="addk", k=1.0)
    lp = m.next_log10_probs([BOS])
    # After <s>: a twice, b once, over 4 predictable words: (c + 1) / (3 + 4).
    assert lp[m.vocab.index("a")] == pytest.approx(math.log10(3 / 7), abs=1e-6)
    assert lp[m.vocab.index("</s>")] == pytest.approx(math.log10(1 / 7), abs=1e-6)
    # A context never seen (<unk>) gives the uniform 1/4.
    assert m.next_log10_probs([0])[m.vocab.index("a")] == pytest.approx(math.log10(1 / 4))


def test_stupid_backoff_scores_are_flagged(lee_split):
    m = NgramLM.fit_words(lee_split[0], order=3, smoothing="stupid")
    s = m.score_words(lee_split[1])
    assert not s.normalized and s.to_dict()["normalized"] is False
    # Relative frequency of the longest n-gram seen, 0.4 per order backed off.
    words = lee_split[0][0][:2]
    lp = m.token_log10_probs(m.word_ids(words))
    assert lp[0] == pytest.approx(math.log10(sum(s[0] == words[0] for s in lee_split[0])
                                             / len(lee_split[0])), abs=1e-6)
    assert not math.isclose(np.sum(10.0 ** m.next_log10_probs([BOS])), 1.0, abs_tol=1e-3)
    with pytest.raises(LmlabError, match="not a backoff model"):
        m.to_arpa(Path("never.arpa"))


# --------------------------------------------------------------------------- files and KenLM


def test_arpa_round_trip(lee_kn, lee_split, tmp_path):
    lee_kn.save(tmp_path / "m.arpa")
    back = NgramLM.load(tmp_path / "m.arpa")
    assert back.order == 3 and back.smoothing == "kn" and back.discounts == lee_kn.discounts
    assert back.vocab == lee_kn.vocab
    for n in range(3):
        np.testing.assert_array_equal(back.ngram_tokens(n + 1), lee_kn.ngram_tokens(n + 1))
        np.testing.assert_array_equal(back.logp[n], lee_kn.logp[n])  # float32, exactly
        np.testing.assert_array_equal(back.logb[n], lee_kn.logb[n])
    a, b = lee_kn.score_words(lee_split[1]), back.score_words(lee_split[1])
    assert (a.nll, a.tokens, a.oov) == (b.nll, b.tokens, b.oov)
    back.save(tmp_path / "again.arpa")
    assert (tmp_path / "again.arpa").read_text() == (tmp_path / "m.arpa").read_text()
    assert back.num_params == lee_kn.num_params > sum(len(k) for k in lee_kn.keys)


@pytest.mark.parametrize("smoothing", ["kn", "addk", "stupid"])
def test_npz_round_trip(lee_split, tmp_path, smoothing):
    m = NgramLM.fit_words(lee_split[0][:40], order=2, smoothing=smoothing, min_count=2)
    m.save(tmp_path / "m.npz")
    assert [f.name for f in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left over
    back = NgramLM.load(tmp_path / "m.npz")
    assert back.score_words(lee_split[1]) == m.score_words(lee_split[1])


def test_kenlm_reads_the_arpa_and_agrees(lee_kn, lee_split, tmp_path):
    kenlm = pytest.importorskip("kenlm")
    lee_kn.save(tmp_path / "lee3.arpa")
    km = kenlm.Model(str(tmp_path / "lee3.arpa"))
    assert km.order == 3
    total, count = 0.0, 0
    for words in lee_split[1]:
        theirs = np.array([s[0] for s in km.full_scores(" ".join(words))])
        ours = lee_kn.token_log10_probs(lee_kn.word_ids(words))
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
        total += theirs.sum()
        count += len(theirs)
    ours = lee_kn.score_words(lee_split[1])
    assert ours.oov > 0 and ours.tokens == count
    assert ours.perplexity == pytest.approx(10.0 ** (-total / count), rel=1e-5)
    one = lee_split[1][0]
    assert lee_kn.score_words([one]).perplexity == pytest.approx(
        km.perplexity(" ".join(one)), rel=1e-5)


def test_unknown_tokens_map_to_unk(lee_kn):
    s = lee_kn.score_words([["The", "zzqx-never-seen", "Government"]])
    assert s.oov == 1 and s.tokens == 4
    by_id = lee_kn.score([[-5, lee_kn.vocab_size + 10]])  # out-of-range ids are <unk> too
    assert by_id.oov == 2 and by_id.tokens == 3
    assert lee_kn.id_to_word(-1) == "<unk>"


def test_word_vocab():
    vocab = WordVocab.build([["b", "a"], [], ["a", "c"]])
    assert vocab.words == ["b", "a", "c"] and len(vocab) == 3
    assert vocab.encode(["c", "zz", "b"]).tolist() == [2, -1, 0]
    assert vocab.decode([1, -1]) == ["a", "<unk>"]


def test_min_count_maps_rare_words_to_unk(lee_split):
    m = NgramLM.fit_words(lee_split[0], order=2, min_count=3)
    full = NgramLM.fit_words(lee_split[0], order=2)
    assert m.V < full.V
    assert m.logp[0][0] > full.logp[0][0]  # <unk> now has counts of its own
    assert m.score_words(lee_split[1]).oov > full.score_words(lee_split[1]).oov


# --------------------------------------------------------------------------- levels, sampling


def test_subword_level(lee_docs, tmp_path):
    from lmlab.tokenizer import Tokenizer

    tok = Tokenizer.train(lee_docs[20:], kind="char", vocab_size=400, show_progress=False)
    train = tok.encode_batch(lee_docs[20:])
    m = NgramLM.fit(train, order=4, vocab_size=tok.vocab_size)
    s = m.score(tok.encode_batch(lee_docs[:20]))
    assert s.tokens == sum(len(x) for x in tok.encode_batch(lee_docs[:20])) + 20
    assert 2 < s.perplexity < 20  # characters are easy to predict from 3 before
    m.save(tmp_path / "sub.arpa")
    back = NgramLM.load(tmp_path / "sub.arpa")
    assert back.vocab_size == tok.vocab_size and back.names is None
    assert back.score(tok.encode_batch(lee_docs[:20])).nll == pytest.approx(s.nll, rel=1e-9)
    ids = m.sample(seed=0, max_len=40)
    assert 0 < len(ids) <= 40 and all(0 <= i < tok.vocab_size for i in ids if i >= 0)


def test_jieba_word_level():
    pytest.importorskip("jieba")
    text = "我们喜欢自然语言处理。\n自然语言处理很有意思。\n我们喜欢学习语言模型。\n"
    sents = split_words(text * 3, use_jieba=True)
    assert len(sents) == 9 and len(sents[0]) > 2 and any("语言" in w for w in sents[0])
    with pytest.warns(DiscountFallbackWarning):
        m = NgramLM.fit_words(sents, order=2)
    s = m.score_words(split_words("我们喜欢语言模型。", use_jieba=True))
    assert s.oov == 0 and math.isfinite(s.perplexity)
    assert all(w != "<unk>" for w in (m.id_to_word(i) for i in m.sample(seed=1)))


def test_sampling(lee_kn):
    a = lee_kn.sample(seed=3, max_len=200)
    assert a == lee_kn.sample(seed=3, max_len=200)
    assert a != lee_kn.sample(seed=4, max_len=200)
    assert len(a) < 200  # it reached </s>
    assert len(lee_kn.sample(seed=3, max_len=5)) == 5
    greedy = lee_kn.sample(temperature=0, max_len=10, prefix=lee_kn.word_ids(["The"]))
    assert greedy == lee_kn.sample(temperature=0, max_len=10, seed=9,
                                   prefix=lee_kn.word_ids(["The"]))
    with pytest.raises(LmlabError, match="temperature"):
        lee_kn.sample(temperature=-1)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("order", [0, -2])
def test_bad_order(order):
    with pytest.raises(LmlabError, match="positive integer"):
        NgramLM.fit([[1, 2]], order=order, vocab_size=3)


def test_order_longer_than_every_sentence():
    with pytest.warns(DiscountFallbackWarning):
        NgramLM.fit([[1, 2], [0]], order=4, vocab_size=3)  # <s> 1 2 </s> is one 4-gram
    with pytest.raises(LmlabError, match="order 5 is longer than every padded"):
        NgramLM.fit([[1, 2], [0]], order=5, vocab_size=3)


@pytest.mark.parametrize("seqs, vocab_size, match", [
    ([], 5, "empty training data"),
    ([[], []], 5, "empty training data"),
    ([[0, 1]], 0, "empty vocabulary"),
    ([[0, 7]], 5, "outside the vocabulary"),
])
def test_empty_or_bad_training_data(seqs, vocab_size, match):
    with pytest.raises(LmlabError, match=match):
        NgramLM.fit(seqs, order=2, vocab_size=vocab_size)
    with pytest.raises(LmlabError, match="unknown smoothing"):
        NgramLM.fit([[0]], order=1, vocab_size=1, smoothing="good-turing")


GOOD_ARPA = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.3
-0.5\t</s>
-0.4\ta\t-0.2

\\2-grams:
-0.2\t<s> a
-0.1\ta </s>

\\end\\
"""


@pytest.mark.parametrize("old, new, match", [
    ("\\data\\", "\\date\\", "line 1: expected \\\\data"),
    ("ngram 1=4", "ngram 1=5", "line 10: the header says 5 1-grams, found 4"),
    ("ngram 2=2", "ngram 2=3", "line 14: the header says 3 2-grams, found 2"),
    ("-0.5\t</s>", "-0.x5\t</s>", "line 8: bad number"),
    ("-0.5\t</s>", "0.5\t</s>", "line 8: log10 probability must be finite and <= 0"),
    ("-0.1\ta </s>", "-0.1\ta b", "line 13: word 'b' is not among the unigrams"),
    ("-0.1\ta </s>", "-0.1\t<s> a", "line 13: this 2-gram is listed twice"),
    ("-0.1\ta </s>", "-0.1\ta </s> -1 -2", "line 13: expected a log10 probability"),
    ("\\end\\", "", "expected \\\\end"),
    ("-0.5\t</s>", "-0.5\ta", "line 9: the unigram 'a' is listed twice"),
])
def test_malformed_arpa(tmp_path, old, new, match):
    good = tmp_path / "good.arpa"
    good.write_text(GOOD_ARPA)
    m = NgramLM.load(good)
    assert m.token_log10_probs(m.word_ids(["a"])).tolist() == pytest.approx([-0.2, -0.1])
    assert m.token_log10_probs(m.word_ids(["a", "a"]))[1] == pytest.approx(-0.2 - 0.4)
    bad = tmp_path / "bad.arpa"
    bad.write_text(GOOD_ARPA.replace(old, new))
    with pytest.raises(LmlabError, match=match) as e:
        NgramLM.load(bad)
    assert str(bad) in str(e.value)


def test_arpa_ngram_without_its_context(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text(GOOD_ARPA.replace("ngram 2=2", "ngram 2=2\nngram 3=1").replace(
        "\\end\\", "\\3-grams:\n-0.1\t</s> a a\n\n\\end\\"))
    with pytest.raises(LmlabError, match="line 17: the context of this 3-gram is not listed"):
        NgramLM.load(bad)


# --------------------------------------------------------------------------- the CLI


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_word_level(lee_docs, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", lee_docs, n_val=20)
    code, out, _ = run(capsys, "ngram", "train", corpus, "--order", "3",
                       "--out", tmp_path / "lee3.arpa")
    assert code == 0 and "validation: perplexity" in out and "bits per byte" in out, out
    code, out2, _ = run(capsys, "ngram", "eval", tmp_path / "lee3.arpa", corpus, "--json-out")
    assert code == 0
    shown = re.search(r"perplexity ([\d,]+\.\d\d)", out).group(1)  # "1,234.56": keep commas
    assert f"perplexity {shown}" in out2
    ppl = json.loads(out2.strip().splitlines()[-1])["perplexity"]
    assert f"{ppl:,.2f}" == shown
    code, out, _ = run(capsys, "ngram", "sample", tmp_path / "lee3.arpa", "--num", "2",
                       "--prompt", "The government", "--seed", "1")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2 and all(x.startswith("The government") for x in lines)
    code, out, _ = run(capsys, "ngram", "train", corpus, "--order", "2", "--smoothing",
                       "stupid", "--out", tmp_path / "sb.npz")
    assert code == 0 and "pseudo-perplexity" in out


def test_cli_subword_and_text_file(lee_docs, tmp_path, capsys):
    text = tmp_path / "lee.txt"
    text.write_text("\n\n".join(lee_docs[:60]))
    assert main(["tokenizer", "train", str(text), "--kind", "bpe", "--vocab-size", "400",
                 "--out", str(tmp_path / "tok.json")]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "ngram", "train", text, "--level", "subword", "--tokenizer",
                       tmp_path / "tok.json", "--order", "3", "--out", tmp_path / "bpe3.arpa")
    assert code == 0 and "subword-level order-3 kn" in out, out
    code, out, _ = run(capsys, "ngram", "eval", tmp_path / "bpe3.arpa", text)
    assert code == 0 and "bits per byte" in out
    code, out, _ = run(capsys, "ngram", "sample", tmp_path / "bpe3.arpa", "--seed", "2")
    assert code == 0 and out.strip()


def test_cli_jieba(tmp_path, capsys):
    pytest.importorskip("jieba")
    docs = ["我们喜欢自然语言处理。", "自然语言处理很有意思。", "我们喜欢学习语言模型。"] * 4
    corpus = write_corpus(tmp_path / "zh", docs, n_val=3)
    code, out, err = run(capsys, "ngram", "train", corpus, "--jieba", "--order", "2",
                         "--out", tmp_path / "zh.arpa")
    assert code == 0 and "warning: too little data to estimate Kneser-Ney discounts" in err
    assert "ngram.py" not in err  # one clean line, not the warning's source line
    code, out, _ = run(capsys, "ngram", "sample", tmp_path / "zh.arpa", "--prompt", "我们")
    assert code == 0 and out.startswith("我们") and " " not in out.strip()


@pytest.mark.parametrize("args, needle", [
    (["--order", "0"], "--order must be at least 1"),
    (["--order", "2", "--smoothing", "addk"], "not a backoff model"),
    (["--level", "subword"], "needs --tokenizer"),
    (["--order", "2", "--no-discount-fallback"], "cannot estimate Kneser-Ney discounts"),
])
def test_cli_bad_input(tmp_path, capsys, args, needle):
    text = tmp_path / "t.txt"
    text.write_text("a b c\nb c a\n")
    code, _, err = run(capsys, "ngram", "train", text, "--out", tmp_path / "m.arpa", *args)
    last = err.strip().splitlines()[-1]  # after any progress bar
    assert code == 2 and last.startswith("error: ") and needle in last, err
    assert "Traceback" not in err and not (tmp_path / "m.arpa").exists()
    (tmp_path / "broken.arpa").write_text("\\data\\\nngram 1=x\n")
    code, _, err = run(capsys, "ngram", "eval", tmp_path / "broken.arpa", text)
    assert code == 2 and "broken.arpa: line 2" in err


def test_key_index_finds_what_a_binary_search_finds():
    """The open-addressing table answers as np.searchsorted does: the position of each
    present key, -1 for absent ones (colliding and probing keys included)."""
    from lmlab.models.ngram import KeyIndex

    rng = np.random.default_rng(0)
    for n in (1, 7, 5000):
        keys = np.unique(rng.integers(0, 10 * n, n)).astype(np.int64)
        index = KeyIndex(keys)
        q = rng.integers(-5, 10 * n + 5, (3, 2 * n))
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        np.testing.assert_array_equal(index.find(q), np.where(keys[pos] == q, pos, -1))
        np.testing.assert_array_equal(index.find(keys), np.arange(len(keys)))
    # Keys too large to share an int64 with their positions: the 16-byte slots.
    keys = np.unique(rng.integers(0, 1 << 62, 3000)).astype(np.int64)
    index = KeyIndex(keys)
    assert index.pbits is None
    q = np.concatenate([keys[::2], keys[1::2] + 1, [-1, 0, (1 << 63) - 1]])
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    np.testing.assert_array_equal(index.find(q), np.where(keys[pos] == q, pos, -1))
    # Packed slots: queries at and past the top of the key range are absent.
    index = KeyIndex(np.array([0, 1, 2], dtype=np.int64))
    assert index.pbits is not None
    top = int(index.top)
    q = np.array([2, top, top + 1, int(index.free >> index.pbits), (1 << 63) - 1, -1])
    np.testing.assert_array_equal(index.find(q), [2, -1, -1, -1, -1, -1])
