"""Word vectors: word2vec (skip-gram, CBOW) and fastText through gensim, GloVe by lmlab.

All four are trained on the same sentences: the built-in corpus (the
Wikipedia extract shipped with gensim, read by `lmlab.data.corpus`) followed
by gensim's Lee news corpus (`lee_background.cor`, one document per line),
lowercased and split into words by `lmlab.models.embeddings.read_sentences`.
Same dimension, window and min_count for all; word2vec and fastText run 5
epochs on 2 gensim worker threads, GloVe 15 epochs on 1 torch thread, with
x_max 10 (GloVe's own demo setting for small corpora; the paper's 100 is for
billions of words).

words/s = corpus words x epochs / training seconds (vocabulary building, and
for GloVe the co-occurrence counting, included; reading the corpus not).
Evaluation: the word2vec analogy questions by 3CosAdd among the 30,000 most
frequent words (questions with an unknown word skipped and counted), and
Spearman correlation on WordSim-353 and SimLex-999.

This is a small corpus (about 0.6 M words): the word2vec papers trained on
billions of words, and analogy accuracy needs that much text; expect a few
percent here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_standalone, table  # noqa: E402

METHODS = ("skipgram", "cbow", "fasttext", "glove")
SECTIONS = ("capital-common-countries", "family", "gram3-comparative", "gram8-plural")


@dataclass
class Settings:
    builtin: bool = True  # include the built-in Wikipedia extract (else Lee only)
    dim: int = 100
    window: int = 5
    min_count: int = 5
    epochs: int = 5
    glove_epochs: int = 15
    glove_x_max: float = 10.0
    workers: int = 2


QUICK = Settings(builtin=False, dim=50, min_count=2, epochs=2, glove_epochs=3)


def load_sentences(builtin: bool) -> list[list[str]]:
    from gensim.test.utils import datapath

    from lmlab.models.embeddings import read_sentences

    lee = read_sentences(Path(datapath("lee_background.cor")))
    return (read_sentences("default") if builtin else []) + lee


def run_benchmark(s: Settings, log=print) -> dict:
    from lmlab.models.embeddings import evaluate, train_vectors

    sentences = load_sentences(s.builtin)
    words = sum(len(x) for x in sentences)
    log(f"corpus: {len(sentences):,} sentences, {words:,} words")
    rows = []
    for method in METHODS:
        kw = dict(x_max=s.glove_x_max) if method == "glove" else {}
        epochs = s.glove_epochs if method == "glove" else s.epochs
        # GloVe's steps are small tensor ops: one torch thread is fastest (see train_glove).
        workers = 1 if method == "glove" else s.workers
        res = train_vectors(sentences, method, dim=s.dim, window=s.window,
                            min_count=s.min_count, epochs=epochs, workers=workers,
                            progress=False, **kw)
        ev = evaluate(res.vectors)
        a = ev.analogies
        row = dict(method=method, vocab=len(res.vectors), epochs=epochs, seconds=res.seconds,
                   words_per_s=res.words_per_s, accuracy=a.accuracy, answered=a.answered,
                   questions=a.questions,
                   sections={name: a.section(name) for name in SECTIONS},
                   similarity={r.name: (r.spearman, r.pairs, r.oov) for r in ev.similarities},
                   losses=res.losses)
        log(f"  {method}: {res.seconds:.1f}s, analogies {a.accuracy:.1%}")
        rows.append(row)
    return dict(settings=s.__dict__, corpus_words=words, sentences=len(sentences), rows=rows)


def format_results(res: dict) -> str:
    s = res["settings"]
    corpus = "built-in Wikipedia extract + Lee corpus" if s["builtin"] else "Lee corpus"
    out = [f"### Word vectors on the {corpus} ({res['corpus_words']:,} words)", "",
           f"dim {s['dim']}, window {s['window']}, min_count {s['min_count']}, "
           f"{s['workers']} gensim threads; GloVe: 1 torch thread, x_max {s['glove_x_max']}", ""]
    sims = list(res["rows"][0]["similarity"])
    headers = ["method", "vocab", "epochs", "train s", "words/s", "analogies",
               *(name[:12] for name in SECTIONS), *(f"{n} rho" for n in sims)]
    rows = []
    for r in res["rows"]:
        cells = [r["method"], f"{r['vocab']:,}", r["epochs"], f"{r['seconds']:.1f}",
                 f"{r['words_per_s']:,.0f}", f"{r['accuracy']:.1%}"]
        for name in SECTIONS:
            c, n = r["sections"][name]
            cells.append(f"{c}/{n}")
        cells += [f"{r['similarity'][n][0]:.3f}" for n in sims]
        rows.append(cells)
    out.append(table(headers, rows))
    first = res["rows"][0]
    pairs = ", ".join(f"{n}: {p} of {p + o} pairs" for n, (_, p, o) in first["similarity"].items())
    out += ["",
            f"Answerable analogy questions (all four words among the 30,000 most frequent): "
            f"{first['answered']:,} of {first['questions']:,}; word pairs with both words "
            f"known: {pairs} (all methods keep the same words: min_count {s['min_count']}).",
            "Small corpora give low analogy accuracy: word2vec and GloVe were evaluated after "
            "training on 1-42 billion words (roughly 60-75% on this set); with under a million "
            "words most questions are unanswerable and the rest are mostly wrong."]
    return "\n".join(out)


if __name__ == "__main__":
    run_standalone(sys.modules[__name__])
