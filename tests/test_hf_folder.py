"""`lmlab convert`: HF GPT-2 / Llama folders to lmlab checkpoints and back."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.cli import main
from lmlab.models.weights import load_checkpoint

transformers = pytest.importorskip("transformers")


def tiny_hf(kind: str, tied: bool):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2,
                                      n_head=2, tie_word_embeddings=tied)
        return transformers.GPT2LMHeadModel(cfg).eval()
    if kind == "gemma3":
        # Window 4 over 16 tokens, two local layers then a global one: every Gemma
        # switch matters (and the wider heads: 2 x 24 against 32 wide).
        cfg = transformers.Gemma3TextConfig(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=1, head_dim=24,
            max_position_embeddings=32, sliding_window=4, query_pre_attn_scalar=20,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_theta=1e6, rope_local_base_freq=1e4, tie_word_embeddings=tied,
            attn_implementation="eager")
        model = transformers.Gemma3ForCausalLM(cfg).eval()
        with torch.no_grad():  # HF starts Gemma's 1 + w norms at w = 0: make them matter
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0, 0.3)
        return model
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("kind,tied", [("gpt2", True), ("llama", False), ("llama", True),
                                       ("gemma3", True)])
def test_convert_round_trip_keeps_logits(kind, tied, tmp_path, capsys):
    hf = tiny_hf(kind, tied)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    ours = load_checkpoint(tmp_path / "ours")
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(ours(idx), expected, atol=1e-4, rtol=1e-4)
    assert main(["convert", str(tmp_path / "ours"), "--out", str(tmp_path / "back")]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, expected, atol=1e-4, rtol=1e-4)
    assert "lmlab generate" in capsys.readouterr().out


def test_pickle_checkpoints_are_refused(tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    assert main(["convert", str(folder), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "pickle checkpoints are refused" in err and "safetensors" in err
    assert not (tmp_path / "x").exists()


def test_config_that_does_not_match_the_weights(tmp_path, capsys):
    hf = tiny_hf("gpt2", True)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["n_layer"] = 3
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "do not match config.json" in err and not (tmp_path / "x").exists()
    cfg["model_type"] = "t5"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 2
    assert "not supported" in capsys.readouterr().err
