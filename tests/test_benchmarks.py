"""The benchmarks still run (their --quick smoke version); figures come from `make bench`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmarks_quick_smoke():
    pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                          "--wait-idle", "0"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Training throughput" in out.stdout and "Greedy decoding" in out.stdout
    assert "Fine-tuning throughput" in out.stdout
    assert "identical" in out.stdout  # lmlab's greedy ids equal transformers' ids


@pytest.mark.slow
def test_translation_table_quick_smoke(tmp_path):
    # Every route of the quality table on the one task that needs no download.
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "translation_table.py"),
                          "--quick", "--tasks", "docstrings", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("lead sentence", "encoder-decoder", "decoder-only, equal parameters"):
        assert row in out.stdout
    assert (tmp_path / "table.md").is_file()


@pytest.mark.slow
def test_lora_and_serving_benchmarks_quick_smoke():
    pytest.importorskip("peft")
    pytest.importorskip("httpx")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                          "--only", "lora", "--only", "serve", "--wait-idle", "0"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LoRA fine-tuning of SmolLM2-135M" in out.stdout
    assert "transformers + peft LoRA" in out.stdout
    assert "Serving SmolLM2-135M" in out.stdout
    assert "Answers equal to the same request served alone: 12 of 12" in out.stdout


@pytest.mark.slow
def test_gguf_and_dtype_benchmarks_quick_smoke():
    pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                          "--only", "gguf", "--only", "dtype", "--wait-idle", "0"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SmolLM2-135M-Instruct" in out.stdout and "lmlab int4" in out.stdout
    assert "Accuracy on held-out text" in out.stdout
    assert "float32 vs bfloat16 autocast" in out.stdout
