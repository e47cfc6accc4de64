"""The command line: help, the whole pipeline through subcommands, and bad input.

Bad input must give one line on stderr starting with "error:", exit status 2,
no traceback, and no half-written output.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmlab.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    # Progress bars may precede it (on stderr too); the error is one last line.
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in errors[0], (n, errors[0])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, lee_docs):
    """corpus -> tokenizer -> prepare -> pretrain through the CLI, once per module."""
    root = tmp_path_factory.mktemp("cli")
    src = root / "lee.jsonl"
    src.write_text("".join(json.dumps({"body": d}) + "\n" for d in lee_docs[:80]))
    assert main(["corpus", str(src), "--text-field", "body", "--out", str(root / "corpus"),
                 "--val-fraction", "0.1"]) == 0
    assert main(["tokenizer", "train", str(root / "corpus"), "--kind", "char",
                 "--vocab-size", "300", "--out", str(root / "tok.json")]) == 0
    assert main(["prepare", str(root / "corpus"), "--tokenizer", str(root / "tok.json"),
                 "--out", str(root / "shards")]) == 0
    assert main(["pretrain", str(root / "shards"), "--preset", "gpt-nano", "--block-size", "48",
                 "--batch-size", "8", "--max-steps", "20", "--eval-interval", "10",
                 "--out", str(root / "run")]) == 0
    return root


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "corpus", "tokenizer", "prepare", "pretrain", "eval", "generate"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "--resume" in capsys.readouterr().out


def test_import_stays_light():
    code = ("import sys, lmlab.cli, lmlab.commands; "
            "heavy = [m for m in ('torch', 'tokenizers', 'matplotlib', 'gensim') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pipeline_eval_and_generate(pipeline, capsys):
    run_dir = pipeline / "run"
    assert (run_dir / "loss.png").exists()
    code, out, _ = run(capsys, "eval", run_dir, pipeline / "corpus" / "val.jsonl", "--json-out")
    assert code == 0
    score = json.loads(out)
    assert score["perplexity"] > 1 and score["bits_per_byte"] > 0
    code, out, err = run(capsys, "generate", run_dir, "--prompt", "The ", "--max-new-tokens",
                         "20", "--seed", "0")
    assert code == 0 and out.startswith("The ") and "tokens/s" in err
    code, out, _ = run(capsys, "generate", run_dir, "--prompt", "A", "--num-return-sequences",
                       "2", "--greedy", "--max-new-tokens", "5")
    assert code == 0 and out.count("--- sample") == 2


def test_missing_empty_binary_and_non_utf8_inputs(tmp_path, capsys):
    code, _, err = run(capsys, "corpus", tmp_path / "nope.txt", "--out", tmp_path / "c1")
    assert_clean_error(code, err, "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    code, _, err = run(capsys, "corpus", tmp_path / "empty.txt", "--out", tmp_path / "c2")
    assert_clean_error(code, err, "empty.txt")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    code, _, err = run(capsys, "corpus", tmp_path / "blob.txt", "--out", tmp_path / "c3")
    assert_clean_error(code, err, "blob.txt", "binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    code, _, err = run(capsys, "corpus", tmp_path / "latin1.txt", "--out", tmp_path / "c4")
    assert_clean_error(code, err, "latin1.txt", "UTF-8")
    assert not any((tmp_path / f"c{i}").exists() for i in range(1, 5))


def test_tokenizer_that_does_not_match_the_shards(pipeline, tmp_path, capsys):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(pipeline / "shards", shards)
    code = main(["tokenizer", "train", str(pipeline / "corpus"), "--kind", "char",
                 "--vocab-size", "280", "--out", str(shards / "tokenizer.json"), "--overwrite"])
    assert code == 0
    capsys.readouterr()
    code, _, err = run(capsys, "pretrain", shards, "--preset", "gpt-nano", "--max-steps", "2",
                       "--out", tmp_path / "run")
    assert_clean_error(code, err, "tokenizer")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoint_of_another_config(pipeline, tmp_path, capsys):
    import shutil

    from lmlab.models.weights import resolve_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(resolve_checkpoint(pipeline / "run"), ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["n_embd"] = 128
    (ckpt / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, "generate", ckpt, "--prompt", "x")
    assert_clean_error(code, err, "model.safetensors", "config.json")
    code, _, err = run(capsys, "generate", tmp_path / "not-a-run", "--prompt", "x")
    assert_clean_error(code, err, "not-a-run")
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    code, _, err = run(capsys, "eval", ckpt, pipeline / "corpus" / "val.jsonl")
    assert_clean_error(code, err, "model.safetensors")


def test_prompt_longer_than_the_context_is_left_truncated(pipeline, capsys):
    code, out, err = run(capsys, "generate", pipeline / "run", "--prompt", "word " * 40,
                         "--max-new-tokens", "8", "--greedy")
    assert code == 0
    assert "prompt is longer than the context; kept its last" in err


def test_nan_loss_stops_with_the_step(pipeline, tmp_path, capsys):
    code, _, err = run(capsys, "pretrain", pipeline / "shards", "--preset", "gpt-nano",
                       "--max-steps", "40", "--lr", "1e30", "--warmup-steps", "1",
                       "--out", tmp_path / "run")
    assert_clean_error(code, err, "step", "nan", "--lr")


def test_no_traceback_unless_debug(tmp_path):
    args = [sys.executable, "-m", "lmlab", "corpus", str(tmp_path / "missing.txt"),
            "--out", str(tmp_path / "out")]
    plain = subprocess.run(args, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run([*args, "--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
