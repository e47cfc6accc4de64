"""Parallel data (readers, catalog cleaning, leak-free splits, `lmlab parallel`), the seq2seq
objective on the engine (it learns, it resumes exactly), `lmlab translate` and `lmlab score`."""

from __future__ import annotations

import json
import shlex
import signal
import struct
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.data.parallel import (
    Pair,
    clean_pair,
    dedupe,
    read_mo,
    read_pairs,
    read_po,
    split_by_source,
)
from lmlab.errors import LmlabError
from lmlab.metrics import rouge_scores, translation_scores
from lmlab.train.configs import Seq2SeqTrainConfig, TrainConfig
from lmlab.train.seq2seq import Seq2SeqTrainer, collate_joined, token_budget_batches


def write_mo(entries: dict[str, str], path: Path) -> Path:
    """A little-endian gettext .mo file (the layout msgfmt writes, without a hash table)."""
    keys = sorted(entries)
    ids = [k.encode() for k in keys]
    strs = [entries[k].encode() for k in keys]
    n = len(keys)
    start = 28 + 16 * n
    blob, orig, trans = b"", [], []
    for table, items in ((orig, ids), (trans, strs)):
        for b in items:
            table.append((len(b), start + len(blob)))
            blob += b + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    body = b"".join(struct.pack("<2I", *x) for x in orig + trans)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + body + blob)
    return path


HEADER = "Content-Type: text/plain; charset=UTF-8\n"


# ---------------------------------------------------------------- readers and cleaning
def test_mo_and_po_read_the_same_catalog(tmp_path):
    entries = {"": HEADER, "Open _File": "_Datei öffnen", "menu\x04Quit": "Beenden",
               "Save as": "Speichern unter"}
    mo = read_mo(write_mo(entries, tmp_path / "x.mo"))
    assert dict(mo) == entries
    po = tmp_path / "x.po"
    po.write_text('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                  '#: src/main.c:10\nmsgid "Open _File"\nmsgstr "_Datei öffnen"\n\n'
                  'msgctxt "menu"\nmsgid "Quit"\nmsgstr "Beenden"\n\n'
                  '#, fuzzy\nmsgid "Print"\nmsgstr "Drucken?"\n\n'
                  'msgid "Save "\n"as"\nmsgstr "Speichern unter"\n\n'
                  'msgid "one file"\nmsgid_plural "%d files"\nmsgstr[0] "eine Datei"\n'
                  'msgstr[1] "%d Dateien"\n', encoding="utf-8")
    entries_po, skipped = read_po(po)
    assert dict(entries_po) == entries
    assert skipped == {"fuzzy (unreviewed)": 1, "plural forms": 1}


def test_a_file_that_is_not_a_mo_is_one_error(tmp_path):
    bad = tmp_path / "bad.mo"
    bad.write_bytes(b"PK\x03\x04 definitely a zip file, not a catalog")
    with pytest.raises(LmlabError, match="not a gettext .mo file"):
        read_mo(bad)
    cut = tmp_path / "cut.mo"
    cut.write_bytes(write_mo({"a": "b", "c": "d"}, tmp_path / "ok.mo").read_bytes()[:40])
    with pytest.raises(LmlabError, match="damaged .mo file"):
        read_mo(cut)


@pytest.mark.parametrize("msgid,msgstr,kept,why", [
    ("Open _File", "_Datei öffnen", [("Open File", "Datei öffnen")], None),
    ("&Save", "&Speichern", [("Save", "Speichern")], None),
    ("<b>Bold</b> text &amp; more", "<b>Fetter</b> Text &amp; mehr",
     [("Bold text & more", "Fetter Text & mehr")], None),
    ("Cannot open %s", "Kann %s nicht öffnen", [], "format specifiers"),
    ("Hello {name}", "Hallo {name}", [], "format specifiers"),
    ("%(count)d items", "%(count)d Elemente", [], "format specifiers"),
    ("OK", "OK", [], "untranslated (target = source)"),
    ("Quit", "", [], "empty side"),
    ("", HEADER, [], "header entry"),
    ("First line\nSecond line", "Erste Zeile\nZweite Zeile",
     [("First line", "Erste Zeile"), ("Second line", "Zweite Zeile")], None),
    ("One\nTwo\nThree", "Eins und zwei\nDrei", [], "multi-line, lines do not align"),
    ("menu\x04Quit", "Beenden", [("Quit", "Beenden")], None),
    ("Open _File", "打开文件(_F)", [("Open File", "打开文件")], None),
    ("Zoom 100%", "Zoom 100 %", [("Zoom 100%", "Zoom 100 %")], None),  # not a specifier
])
def test_catalog_cleaning(msgid, msgstr, kept, why):
    assert clean_pair(msgid, msgstr) == (kept, why)


def test_tsv_and_jsonl_readers_and_their_errors(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("Hallo Welt\tHello world\n\nGuten Morgen\tGood morning\n", encoding="utf-8")
    assert [(p.src, p.tgt) for p in read_pairs(tsv)] == [("Hallo Welt", "Hello world"),
                                                         ("Guten Morgen", "Good morning")]
    tsv.write_text("Hallo Welt\tHello world\nno tab on this line\n", encoding="utf-8")
    with pytest.raises(LmlabError, match=r"p.tsv:2: expected source<TAB>target, found 0 tabs"):
        read_pairs(tsv)
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"src": "你好", "tgt": "hello"}\n{"src": "x"}\n', encoding="utf-8")
    with pytest.raises(LmlabError, match=r"p.jsonl:2: needs string fields 'src' and 'tgt'"):
        read_pairs(jl)


def test_split_keeps_each_source_in_one_split():
    pairs = [Pair(f"s{i % 40}", f"t{i}") for i in range(200)]  # 5 translations per source
    splits = split_by_source(dedupe(pairs + pairs), val=20, test=20, seed=3)
    seen = {name: {p.src for p in rows} for name, rows in splits.items()}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]
    assert sum(len(v) for v in splits.values()) == 200  # the repeats went
    assert len(splits["val"]) == 20 and len(splits["test"]) == 20


def _locale_tree(root: Path) -> Path:
    """A little locale tree: two German catalogs with clean, templated and untranslated
    entries (the first in both, as when two packages ship the same message)."""
    words = [("Open", "Öffnen"), ("Close", "Schließen"), ("Save", "Speichern"),
             ("Print", "Drucken"), ("Quit", "Beenden"), ("Copy", "Kopieren"),
             ("Paste", "Einfügen"), ("Cut", "Ausschneiden"), ("Undo", "Rückgängig"),
             ("Redo", "Wiederholen"), ("Find", "Suchen"), ("Replace", "Ersetzen")]
    a = {"": HEADER, **{f"{en} the file": f"Die Datei {de.lower()}" for en, de in words}}
    a.update({"Cannot read %s": "Kann %s nicht lesen", "OK": "OK"})
    write_mo(a, root / "de" / "LC_MESSAGES" / "editor.mo")
    write_mo({"": HEADER, "Open the file": "Die Datei öffnen", "New window": "Neues Fenster"},
             root / "de" / "LC_MESSAGES" / "viewer.mo")
    return root


def test_lmlab_parallel_builds_splits_report_and_tokenizer(tmp_path, capsys):
    root = _locale_tree(tmp_path / "locale")
    out = tmp_path / "de-en"
    assert main(["parallel", "--pair", "de-en", "--no-system", "--catalogs", str(root),
                 "--val-size", "2", "--test-size", "2", "--vocab-size", "300",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dropped"] == {"header entry": 2, "format specifiers": 1,
                                 "untranslated (target = source)": 1}
    assert report["unique"] == 13 and report["pairs"] == 14  # "Open the file" twice
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert {"src", "tgt", "origin"} <= rows[0].keys()
    assert all(r["tgt"][0].isupper() for r in rows)  # de -> en: English is the target
    assert (out / "tokenizer.json").is_file()
    assert "train 9, val 2, test 2 pairs" in capsys.readouterr().out
    # No catalogs for the language: one error line, nothing written.
    assert main(["parallel", "--pair", "zh-en", "--no-system", "--catalogs", str(root),
                 "--out", str(tmp_path / "zh")]) == 2
    assert "no zh-en pairs found" in capsys.readouterr().err
    assert not (tmp_path / "zh").exists()


# ---------------------------------------------------------------- scores
def test_rouge_keeps_chinese_and_bleu_uses_the_zh_tokenizer():
    hyp, ref = ["今天天气很好"], ["今天天气不错"]
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rouge1"]).score(ref[0], hyp[0])["rouge1"].fmeasure
    assert default == 0  # rouge-score's own tokenizer drops every Chinese character
    assert rouge_scores(hyp, ref)["rouge1"] == pytest.approx(100 * 4 / 6)
    zh = translation_scores(hyp, ref)
    assert zh["bleu"] > 0  # character n-grams match; as one "word" it would be 0
    same = "the cat sat on the mat"
    assert translation_scores([same], [same])["bleu"] == pytest.approx(100)


# ---------------------------------------------------------------- the objective
def _toy_data(root: Path, n: int = 400) -> Path:
    """A task a tiny model learns in a few hundred steps: reverse a sequence of words."""
    from lmlab.data.parallel import write_pairs
    from lmlab.tokenizer import EOS_TOKEN, PAD_TOKEN, Tokenizer

    g = torch.Generator().manual_seed(0)
    vocab = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"]
    pairs = []
    for _ in range(n):
        k = int(torch.randint(2, 6, (1,), generator=g))
        words = [vocab[int(i)] for i in torch.randint(0, len(vocab), (k,), generator=g)]
        pairs.append(Pair(" ".join(words), " ".join(reversed(words))))
    root.mkdir(parents=True, exist_ok=True)
    write_pairs(pairs[:-40], root / "train.jsonl")
    write_pairs(pairs[-40:], root / "val.jsonl")
    tok = Tokenizer.train((t for p in pairs for t in (p.src, p.tgt)), kind="bpe",
                          vocab_size=300, special_tokens=(PAD_TOKEN, EOS_TOKEN),
                          show_progress=False)
    tok.save(root / "tokenizer.json")
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return _toy_data(tmp_path_factory.mktemp("toy") / "data")


def _cfg(data: Path, out: Path, **kw) -> Seq2SeqTrainConfig:
    base = dict(data=str(data), out=str(out), preset="seq2seq-nano", max_length=16,
                max_tokens=512, warmup_steps=20, lr=1e-3, eval_interval=300,
                eval_sentences=40, threads=1, dropout=0.0, label_smoothing=0.0)
    return Seq2SeqTrainConfig(**dict(base, **kw))


def test_the_encoder_decoder_learns_to_reverse(toy, tmp_path, capsys):
    # The loss sits on a plateau for a few hundred steps, then attention learns where to
    # look (a known phase change of this task) and the reversal generalises.
    trainer = Seq2SeqTrainer(_cfg(toy, tmp_path / "run", max_steps=600), progress=False)
    result = trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert val[-1]["loss"] < 0.5 * val[0]["loss"]
    assert result["val"]["chrf"] > 90  # held-out reversals right
    # translate and score: the CLI round trip
    hyp = tmp_path / "val.out.txt"
    assert main(["translate", str(tmp_path / "run"), "--input", str(toy / "val.jsonl"),
                 "--out", str(hyp), "--num-beams", "2"]) == 0
    assert len(hyp.read_text().splitlines()) == 40
    assert main(["score", "--hyp", str(hyp), "--ref", str(toy / "val.jsonl"), "--metric",
                 "bleu", "chrf", "rouge",
                 "--source", str(toy / "val.jsonl")]) == 0
    # The trained model's beam search equals transformers' on its outputs (which end at
    # different lengths, so inputs leave lmlab's batches early): the real-text benchmark.
    pytest.importorskip("transformers")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_translate

    capsys.readouterr()
    bench_translate.main([str(tmp_path / "run"), str(toy / "val.jsonl"), "--sentences", "16",
                          "--max-new-tokens", "16"])
    assert "Outputs identical: yes" in capsys.readouterr().out


def test_decoder_only_labels_are_the_target_tokens_only():
    x, labels = collate_joined([[5, 6, 1], [7, 1]], [[8, 9, 1], [4, 1]], pad=0,
                               device=torch.device("cpu"))
    # row: source, its end token (the separator), the target; inputs drop the last token
    assert x.tolist() == [[5, 6, 1, 8, 9], [7, 1, 4, 0, 0]]
    assert labels.tolist() == [[-100, -100, 8, 9, 1], [-100, 4, 1, -100, -100]]


def test_the_decoder_only_way_learns_to_reverse_and_translates(toy, tmp_path, capsys):
    # The same objective, data and budget with a GPT preset: "source <end> target", the
    # loss on the target only; `lmlab translate` continues each source.
    run = tmp_path / "gpt"
    trainer = Seq2SeqTrainer(_cfg(toy, run, preset="gpt-nano", n_layer=4, max_steps=300),
                             progress=False)
    assert trainer.model_config.block_size == 32  # source and target in one context
    result = trainer.fit()
    assert result["val"]["chrf"] > 90
    capsys.readouterr()
    assert main(["translate", str(run), "--texts", "ab cd ef", "--num-beams", "2"]) == 0
    assert capsys.readouterr().out.split() == ["ef", "cd", "ab"]
    with pytest.raises(LmlabError, match="--n-encoder-layer does not apply to --preset gpt-nano"):
        _cfg(toy, run, preset="gpt-nano", n_encoder_layer=2)
    with pytest.raises(LmlabError, match="not an encoder-decoder or decoder-only preset"):
        _cfg(toy, run, preset="bert-mini")


def test_token_budget_batches_respect_the_budget():
    lengths = [int(x) for x in torch.randint(1, 30, (500,), generator=torch.Generator())]
    batches = token_budget_batches(lengths, 100, torch.Generator().manual_seed(0), bucket=200)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in batches)


def test_seq2seq_ctrl_c_and_resume_end_bit_identical(toy, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    kw = dict(max_steps=8, eval_interval=4, eval_sentences=0, dropout=0.1)
    Seq2SeqTrainer(_cfg(toy, tmp_path / "straight", **kw), progress=False).fit()
    real = Seq2SeqTrainer.train_step
    calls = {"n": 0}

    def step(self, s):
        calls["n"] += 1
        if calls["n"] == 6:
            signal.raise_signal(signal.SIGINT)
        return real(self, s)

    monkeypatch.setattr(Seq2SeqTrainer, "train_step", step)
    with pytest.raises(KeyboardInterrupt):  # a space in the path: the command quotes it
        Seq2SeqTrainer(_cfg(toy, tmp_path / "broken run", **kw), progress=False).fit()
    monkeypatch.undo()
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("interrupted"))
    command = shlex.split(line.split("Resume with: ", 1)[1])
    assert command[:2] == ["lmlab", "seq2seq"] and command[-1] == "--resume"
    assert main(command[1:]) == 0
    a = load_file(tmp_path / "straight" / "checkpoints" / "step-000008" / "model.safetensors")
    b = load_file(tmp_path / "broken run" / "checkpoints" / "step-000008" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_seq2seq_resume_refuses_other_pairs_in_the_same_folder(tmp_path):
    data = _toy_data(tmp_path / "data", n=300)
    kw = dict(max_steps=2, eval_sentences=0)
    Seq2SeqTrainer(_cfg(data, tmp_path / "run", **kw), progress=False).fit()
    _toy_data(data, n=250)  # `lmlab parallel` run again into the same folder
    with pytest.raises(LmlabError, match="training pairs or tokenizer differ"):
        Seq2SeqTrainer(_cfg(data, tmp_path / "run", **dict(kw, max_steps=3)), resume=True,
                       progress=False)


def test_seq2seq_bad_inputs_are_one_line_errors(toy, tmp_path):
    with pytest.raises(LmlabError, match="no train.jsonl"):
        Seq2SeqTrainer(_cfg(tmp_path, tmp_path / "run"), progress=False)
    with pytest.raises(LmlabError, match="--max-tokens 4 is below the longest pair"):
        Seq2SeqTrainer(_cfg(toy, tmp_path / "run", max_tokens=4), progress=False)
    with pytest.raises(LmlabError, match="--max-length 999 exceeds the preset's 128"):
        Seq2SeqTrainer(_cfg(toy, tmp_path / "run", max_length=999), progress=False)
    assert not (tmp_path / "run").exists()


def test_dictd_table_and_the_word_by_word_baseline(tmp_path):
    import gzip

    from lmlab.data.parallel import read_dictd, word_by_word

    text = ("00-database-short\n     German - English\n"
            "Datei\n {f} [comp.]\n   file; data file\n"
            "Datei\n {f}\n   computer file\n"
            "Datei\n {f}\n   file\n"
            "nicht\n (ganz) auf dem Damm sein\n   to be out of sorts\n"  # a wrapped headword
            "nicht\n {adv}\n   not\n"
            "öffnen\n {vt}\n   to open; to unclose\n"
            "der Aal\n {m}\n   the eel\n")
    path = tmp_path / "de-en.dict.dz"
    path.write_bytes(gzip.compress(text.encode()))
    table = read_dictd(path)
    assert table == {"Datei": "file", "nicht": "not", "öffnen": "open"}
    assert word_by_word("Datei nicht öffnen!", table) == "file not open !"
    empty = tmp_path / "empty.dict"
    empty.write_text("just text\n")
    with pytest.raises(LmlabError, match="no dictionary entries"):
        read_dictd(empty)


def test_ding_phrases_join_the_parallel_data(tmp_path, capsys):
    import gzip

    from lmlab.data.parallel import dictd_phrases

    sentences = [("Die Katze schläft auf dem Sofa.", "The cat sleeps on the sofa."),
                 ("Er kommt morgen nicht zur Arbeit.", "He is not coming to work tomorrow."),
                 ("Wir gehen heute Abend ins Kino.", "We are going to the cinema tonight."),
                 ("Das Wetter ist heute sehr schön.", "The weather is very nice today.")]
    text = "Datei\n {f}\n   file\n" + "".join(
        f"{de}\n\n   {en}; another way to say it\n" for de, en in sentences)
    ding = tmp_path / "german-english.dict.dz"
    ding.write_bytes(gzip.compress(text.encode()))
    assert [(p.src, p.tgt) for p in dictd_phrases(ding)] == sentences  # 5+ words only
    root = _locale_tree(tmp_path / "locale")
    out = tmp_path / "de-en"
    assert main(["parallel", "--pair", "de-en", "--no-system", "--catalogs", str(root),
                 "--ding", str(ding), "--val-size", "1", "--test-size", "1",
                 "--vocab-size", "300", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["per_source"]["ding"]["pairs"] == 4 and report["unique"] == 17
    assert main(["parallel", "--pair", "zh-en", "--no-system", "--ding", str(ding),
                 "--out", str(tmp_path / "zh")]) == 2
    assert "--ding is a German-English dictionary" in capsys.readouterr().err


def test_parallel_files_drop_huge_lines_and_name_bad_encodings(tmp_path, capsys):
    big = tmp_path / "big.tsv"
    rows = [f"Satz {i}\tsentence {i}" for i in range(12)]
    big.write_text("\n".join(rows[:6] + ["x" * 5_000_000 + "\ty", "Welt\t"] + rows[6:]) + "\n",
                   encoding="utf-8")
    out = tmp_path / "out"
    assert main(["parallel", "--pair", "de-en", "--no-system", "--files", str(big),
                 "--val-size", "1", "--test-size", "1", "--vocab-size", "300",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["unique"] == 12
    assert report["dropped"] == {"empty, or longer than --max-chars": 2}
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("Grüße\tgreetings\n".encode("latin-1"))
    assert main(["parallel", "--pair", "de-en", "--no-system", "--files", str(latin),
                 "--out", str(tmp_path / "l")]) == 2
    assert f"{latin}: not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()


def test_encoder_decoders_are_refused_where_they_do_not_fit(toy, tmp_path, capsys):
    with pytest.raises(LmlabError, match="is an encoder-decoder; train it on pairs"):
        TrainConfig(data=str(tmp_path), preset="seq2seq-mini")
    run = tmp_path / "run"
    Seq2SeqTrainer(_cfg(toy, run, max_steps=2, eval_sentences=0), progress=False).fit()
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "ab"]) == 2
    assert "is an encoder-decoder" in capsys.readouterr().err


def test_translate_reads_stdin(toy, tmp_path, capsys, monkeypatch):
    import io

    run = tmp_path / "run"
    Seq2SeqTrainer(_cfg(toy, run, max_steps=2, eval_sentences=0), progress=False).fit()
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("ab cd\nef gh ij\n"))
    assert main(["translate", str(run), "--input", "-", "--num-beams", "2",
                 "--max-new-tokens", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    # n-best lists, Moses' format: index ||| text ||| score, best first
    assert main(["translate", str(run), "--texts", "ab cd", "ef", "--num-beams", "3",
                 "--n-best", "3", "--max-new-tokens", "5"]) == 0
    lines = [x.split(" ||| ") for x in capsys.readouterr().out.splitlines()]
    assert [x[0] for x in lines] == ["0", "0", "0", "1", "1", "1"]
    scores = [float(x[2]) for x in lines[:3]]
    assert scores == sorted(scores, reverse=True)
    assert main(["translate", str(run), "--texts", "ab", "--n-best", "3",
                 "--num-beams", "2"]) == 2
    assert "--n-best 3 is more than --num-beams 2" in capsys.readouterr().err
