"""The classic families: n-gram LMs, word vectors, and `lmlab compare` racing every family.

One typed function per subcommand; see ``lmlab.commands``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Literal

from lmlab.commands.common import Source, say
from lmlab.errors import LmlabError
from lmlab.options import (
    Count,
    InDir,
    InFile,
    InPath,
    NonNegative,
    NonNegativeFloat,
    OutFile,
    PositiveFloat,
    RunDir,
)


def compare(data: InDir | None = None, /, *, out: RunDir = Path("runs/compare"),
            models: list[str] | None = None, steps: Count = 600, batch_size: Count = 16,
            block_size: Count = 128, word_ngram: NonNegative = 0,
            dtype: Literal["float32", "bfloat16"] = "float32", seed: int = 1337) -> None:
    """Train every family of LM on one corpus and tokenizer; one table and one chart.

    n-grams (interpolated modified Kneser-Ney) count the whole training split;
    the neural models (feed-forward, RNN, LSTM, GRU, GPT) train for the same
    steps x batch x block tokens with the same loop. Every model is scored on
    the whole validation split. Bits per byte divides the loss by the bytes of
    the text, so unlike perplexity it compares across tokenizers (word-level
    and subword). Writes compare.md, compare.json and compare.png in --out.

    Args:
        data: a folder made by `lmlab prepare` (default: prepare the built-in corpus in OUT/data)
        out: folder for the table, the chart and each model's run
        models: ngram-N (any order N >= 1), a family (ffnn, rnn, lstm, gru, gpt: their
            -small / gpt-mini presets) or a preset name (default: ngram-2 to ngram-5, ffnn,
            lstm, gru, gpt)
        steps: training steps of each neural model
        batch_size: rows per step
        block_size: tokens per row (the truncated-BPTT length of recurrent models)
        word_ngram: also a word-level n-gram of this order on the same text (0: none)
        dtype: float32, or bfloat16 autocast for the neural models
        seed: seed of every neural run

    Examples:
        lmlab compare
        lmlab compare data/shards --steps 2000 --out runs/compare-long
        lmlab compare --models ngram-3 lstm gpt --steps 200 --word-ngram 3
    """
    from lmlab.compare import DEFAULT_MODELS, CompareConfig, Comparison, format_table, notes

    cfg = CompareConfig(out=str(out), data=str(data) if data else None,
                        models=models or list(DEFAULT_MODELS), steps=steps,
                        batch_size=batch_size, block_size=block_size, word_ngram=word_ngram,
                        dtype=dtype, seed=seed)
    rows = Comparison(cfg, say=say).run()
    say()
    say(format_table(rows))
    say()
    for line in notes(rows):
        say(f"note: {line}.")
    say(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {out / 'compare.png'}")


def _ngram_tokenizer(model_meta: dict, tokenizer: Path | None):
    """The tokenizer of a subword n-gram model (None for word level), checked by hash."""
    from lmlab.tokenizer import Tokenizer

    if model_meta.get("level") != "subword":
        return None
    path = tokenizer or model_meta.get("tokenizer")
    if not path or not Path(path).is_file():
        raise LmlabError(f"this subword model needs its tokenizer ({path or 'unknown'}); "
                         "pass --tokenizer")
    tok = Tokenizer.from_file(path)
    if model_meta.get("tokenizer_sha256") not in (None, tok.sha256):
        raise LmlabError(f"{path} is not the tokenizer this model was trained with")
    return tok


def _ngram_report(model, texts: list[str], tok, label: str) -> dict:
    from lmlab.models.ngram import text_sentences

    sents = text_sentences(texts, tokenizer=tok, use_jieba=model.meta.get("jieba", False))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)  # for bits per byte
    s = (model.score(sents, n_bytes=n_bytes) if tok is not None
         else model.score_words(sents, n_bytes=n_bytes))
    what = "perplexity" if s.normalized else \
        "pseudo-perplexity (stupid backoff gives scores, not probabilities)"
    say(f"{label}: {what} {s.perplexity:,.2f}, {s.bits_per_byte:.4f} bits per byte, "
        f"{s.tokens:,} tokens ({s.oov:,} OOV = {s.oov / max(s.tokens, 1):.1%}), "
        f"{n_bytes:,} bytes")
    return s.to_dict()


def ngram_train(corpus_dir: InPath, out: OutFile = Path("ngram.arpa"), order: Count = 3,
                smoothing: Literal["kn", "addk", "stupid"] = "kn",
                level: Literal["word", "subword"] = "word", tokenizer: InFile | None = None,
                jieba: bool = False, min_count: Count = 1, k: PositiveFloat = 1.0,
                discount_fallback: bool = True, overwrite: bool = False) -> None:
    """Train an n-gram language model; print validation perplexity and bits per byte.

    One sentence per non-blank line of each document, padded with <s> ... </s>
    as KenLM does. Words are whitespace-split (or segmented by jieba for
    Chinese); at subword level the sentences are token ids of any lmlab
    tokenizer. kn is interpolated modified Kneser-Ney (KenLM's estimate), addk
    is add-k (Lidstone), stupid is stupid backoff (scores, not probabilities).
    OUT ending in .arpa is an ARPA file (kn only; KenLM reads it), any other
    name an .npz.

    Args:
        corpus_dir: a folder made by `lmlab corpus` (trained on train, scored on val) or a
            text/JSONL file (no validation)
        out: the model file: .arpa, or .npz for any smoothing
        order: n, the longest n-gram
        smoothing: kn, addk or stupid
        level: word (whitespace / jieba words) or subword (token ids of --tokenizer)
        tokenizer: a tokenizer.json (subword level)
        jieba: segment Chinese text into words with jieba (word level)
        min_count: words seen fewer times become <unk>
        k: add-k's pseudo-count (1 = add-one)
        discount_fallback: when the data are too few to estimate Kneser-Ney discounts, use
            KenLM's fallback 0.5 1.0 1.5 with a warning (--no-discount-fallback: fail)
        overwrite: replace OUT if it exists

    Examples:
        lmlab ngram train data/wiki --order 3 --out wiki3.arpa
        lmlab ngram train data/wiki --level subword --tokenizer data/bpe8k.json --order 5 \\
            --out wiki-bpe5.arpa
        lmlab ngram train data/zh --jieba --order 3 --out zh3.arpa
        lmlab ngram train data/wiki --smoothing addk --k 0.1 --out wiki-addk.npz
    """
    import warnings

    from lmlab.data.corpus import has_split
    from lmlab.models.ngram import (
        DiscountFallbackWarning,
        NgramLM,
        read_texts,
        text_sentences,
        whitespace_warning,
    )
    from lmlab.tokenizer import Tokenizer

    if Path(out).suffix == ".arpa" and smoothing != "kn":
        raise LmlabError(f"{smoothing} is not a backoff model, so it cannot be an ARPA file; "
                         "name --out *.npz")
    if level == "subword" and tokenizer is None:
        raise LmlabError("--level subword needs --tokenizer tok.json")
    corpus_dir = Path(corpus_dir)
    tok = Tokenizer.from_file(tokenizer) if level == "subword" else None
    meta = {"level": level, "jieba": jieba}
    if tok is not None:
        meta |= {"tokenizer": str(Path(tokenizer).resolve()), "tokenizer_sha256": tok.sha256}
    t0 = time.perf_counter()
    texts = read_texts(corpus_dir, "train", progress=True)
    hint = whitespace_warning(texts, str(corpus_dir)) if level == "word" and not jieba else None
    if hint:
        print(hint, file=sys.stderr, flush=True)
    sents = text_sentences(texts, tokenizer=tok, use_jieba=jieba)
    t1 = time.perf_counter()
    opts = {"order": order, "smoothing": smoothing, "min_count": min_count, "k": k,
            "discount_fallback": discount_fallback, "meta": meta}
    with warnings.catch_warnings(record=True) as caught:  # one clean line, not a source dump
        warnings.simplefilter("always", DiscountFallbackWarning)
        if tok is not None:
            model = NgramLM.fit(sents, vocab_size=tok.vocab_size, **opts)
        else:
            model = NgramLM.fit_words(sents, **opts)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr, flush=True)
    t2 = time.perf_counter()
    sizes = ", ".join(f"{len(x):,} {n}-grams" for n, x in enumerate(model.keys, 1))
    say(f"{level}-level order-{order} {smoothing} model from {len(sents):,} sentences: {sizes} "
        f"(read {t1 - t0:.1f}s, estimated {t2 - t1:.2f}s)")
    if model.discounts:
        say("discounts D1 D2 D3+: " + "; ".join(
            f"order {n}: " + " ".join(f"{x:.3f}" for x in d)
            for n, d in enumerate(model.discounts, 1)))
    if has_split(corpus_dir, "val"):
        _ngram_report(model, read_texts(corpus_dir, "val"), tok, "validation")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    say(f"wrote {out} ({model.num_params:,} entries)")


def ngram_eval(model: InFile, text: InPath, tokenizer: InFile | None = None,
               json_out: bool = False) -> None:
    """Perplexity and bits per byte of text under an n-gram model (.arpa or .npz).

    Args:
        model: a model from `lmlab ngram train`, or any ARPA file (word level)
        text: a corpus folder (its val split is scored) or a text/JSONL file
        tokenizer: the tokenizer.json of a subword model (default: the path it was trained with)
        json_out: also print the scores as one JSON line

    Examples:
        lmlab ngram eval wiki3.arpa data/wiki
        lmlab ngram eval kenlm.arpa test.txt
    """
    from lmlab.models.ngram import NgramLM, read_texts

    lm = NgramLM.load(model)
    tok = _ngram_tokenizer(lm.meta, tokenizer)
    res = _ngram_report(lm, read_texts(Path(text), "val"), tok, str(text))
    if json_out:
        say(json.dumps(res))


def ngram_sample(model: InFile, prompt: str = "", num: Count = 1, max_len: Count = 50,
                 temperature: NonNegativeFloat = 1.0, seed: int = 0,
                 tokenizer: InFile | None = None) -> None:
    """Sample sentences from an n-gram model, one per line; each stops at </s>.

    Args:
        model: a model from `lmlab ngram train`, or any ARPA file (word level)
        prompt: the start of every sentence
        num: how many sentences
        max_len: the most tokens drawn per sentence
        temperature: 1 samples the model's distribution, lower is more conservative, 0 greedy
        seed: random seed
        tokenizer: the tokenizer.json of a subword model (default: the path it was trained with)

    Examples:
        lmlab ngram sample wiki3.arpa --num 3 --prompt 'The history of'
    """
    from lmlab.models.ngram import NgramLM, split_words

    lm = NgramLM.load(model)
    tok = _ngram_tokenizer(lm.meta, tokenizer)
    use_jieba = lm.meta.get("jieba", False)
    words = [w for s in split_words(prompt, use_jieba=use_jieba) for w in s]
    prefix = tok.encode(prompt) if tok is not None else lm.word_ids(words)
    for i in range(num):
        ids = lm.sample(prefix=prefix, max_len=max_len, temperature=temperature, seed=seed + i)
        if tok is not None:
            say(tok.decode(list(prefix) + [j for j in ids if j >= 0]))
        else:
            say(("" if use_jieba else " ").join(words + [lm.id_to_word(j) for j in ids]))


def embed_train(corpus: Source,
                method: Literal["skipgram", "word2vec", "cbow", "fasttext", "glove"] = "skipgram",
                dim: Count = 100, window: Count = 5, min_count: Count = 5,
                epochs: Count | None = None, x_max: PositiveFloat = 100.0,
                workers: Count | None = None, seed: int = 0,
                out: OutFile = Path("vectors.txt"), binary: bool = False, eval: bool = True,
                restrict_vocab: Count = 30_000, jieba: bool = False,
                overwrite: bool = False) -> None:
    """Train word vectors (word2vec, fastText or GloVe) and evaluate them.

    Text is lowercased and split into words and punctuation marks; each line
    is a sentence. Chinese segmented by spaces keeps its words; raw Chinese is
    cut into words by jieba with --jieba, else into characters (with a
    warning). word2vec and fastText are trained by gensim; GloVe by lmlab
    (co-occurrence counts, then AdaGrad). Prints training words/s and, unless
    --no-eval, the analogy accuracy and WordSim-353 / SimLex-999 correlations
    (English sets: skipped, with a note, on Chinese vectors). Small corpora (a
    million words) give low analogy scores: the word2vec papers trained on billions.

    Args:
        corpus: a folder made by `lmlab corpus`, a text file (one document per
            line) or folder, or `default` for the built-in Wikipedia extract
        method: skipgram (= word2vec), cbow, fasttext (subword skip-gram) or glove
        dim: vector dimension
        window: context window, in words on each side
        min_count: words seen fewer times are dropped (try 2 on a small corpus)
        epochs: passes over the corpus (default: 5; glove 25)
        x_max: glove only: co-occurrence count at which a cell gets full weight
            (the paper's 100; 10 suits corpora of a few million words)
        workers: threads (default: all cores for gensim, 1 for glove)
        seed: random seed
        out: output file, word2vec format
        binary: write word2vec binary instead of text
        eval: evaluate on the analogy and word-similarity sets (--no-eval to skip)
        restrict_vocab: analogy answers are searched among this many most frequent words
        jieba: segment Chinese text into words with jieba
        overwrite: replace OUT if it exists

    Examples:
        lmlab embed train default --method skipgram --out data/w2v.txt
        lmlab embed train data/wiki --method glove --x-max 10 --out data/glove.txt
        lmlab embed train reviews.txt --method fasttext --dim 50 --min-count 2 --no-eval
        lmlab embed train data/zh --jieba --min-count 2 --out zh.txt
    """
    from lmlab.models.embeddings import evaluate, read_sentences, train_vectors

    sentences = read_sentences(corpus, jieba=jieba)
    kwargs = {"x_max": x_max} if method == "glove" else {}
    result = train_vectors(sentences, method, dim=dim, window=window, min_count=min_count,
                           epochs=epochs, seed=seed, workers=workers, **kwargs)
    result.vectors.save(out, binary=binary)
    loss = f"; final loss {result.losses[-1]:.4f}" if result.losses else ""
    say(f"{result.method}: {len(result.vectors):,} words x {result.vectors.dim} dims from "
        f"{result.corpus_words:,} corpus words, {result.epochs} epochs in "
        f"{result.seconds:.1f}s ({result.words_per_s:,.0f} words/s){loss}; wrote {out}")
    if eval:
        say(evaluate(result.vectors, restrict_vocab=restrict_vocab).format())


def embed_eval(vectors: InFile, restrict_vocab: Count = 30_000) -> None:
    """Evaluate word vectors: analogies per section, WordSim-353 and SimLex-999.

    Analogies ("man is to king as woman is to ?") are answered by 3CosAdd
    among the most frequent words; questions with an unknown word are skipped
    and counted. Reads word2vec text or binary, or GloVe text files.

    Args:
        vectors: a word-vector file
        restrict_vocab: analogy answers are searched among this many first (most
            frequent) words

    Examples:
        lmlab embed eval data/w2v.txt
        lmlab embed eval glove.6B.100d.txt --restrict-vocab 30000
    """
    from lmlab.models.embeddings import evaluate, load_vectors

    wv = load_vectors(vectors)
    say(f"{vectors}: {len(wv):,} words x {wv.dim} dims")
    say(evaluate(wv, restrict_vocab=restrict_vocab).format())


def embed_neighbors(vectors: InFile, word: list[str], top: Count = 10) -> None:
    """Show the nearest words (by cosine similarity) of each word given.

    Args:
        vectors: a word-vector file (word2vec text or binary, or GloVe text)
        word: one or more words to look up
        top: neighbours shown per word

    Examples:
        lmlab embed neighbors data/w2v.txt king france
    """
    from lmlab.models.embeddings import load_vectors

    wv = load_vectors(vectors)
    for w in word:
        key = w if w in wv else w.lower()
        say(f"{w}:")
        for other, sim in wv.most_similar(key, top):
            say(f"  {sim:6.3f}  {other}")
