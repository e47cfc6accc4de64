"""The family registry: one record per family, one load_model, and no class checks elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lmlab.chat import ChatSession
from lmlab.config import GPTConfig, RNNConfig
from lmlab.generate import SamplingConfig
from lmlab.loading import load_model
from lmlab.models.registry import (
    FAMILIES,
    backbone_of,
    build_model,
    config_from_preset,
    context_of,
    family_of,
    family_of_preset,
    kind_of,
    preset_names,
)
from lmlab.tokenizer import Tokenizer
from lmlab.train.checkpoint import save_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "lmlab"
# The model and config classes of every family; only the registry and the families'
# own modules may ask whether an object is one of them.
FAMILY_CLASSES = {"GPT", "Bert", "BertForPreTraining", "RNNEncoder", "RecurrentLM",
                  "FeedForwardLM", "StatefulLM", "GPTConfig", "BertConfig", "RNNConfig",
                  "ModelConfig"}
ALLOWED = {"models/registry.py", "models/gpt.py", "models/bert.py", "models/rnn.py",
           "config.py"}


def _names(node: ast.expr) -> set[str]:
    return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node)
            if isinstance(n, ast.Name | ast.Attribute)}


def test_no_code_outside_the_registry_asks_which_class_a_model_is():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2
                    and _names(node.args[1]) & FAMILY_CLASSES):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"class checks outside the registry: {offenders}"


def _imports(package: str) -> set[str]:
    found = set()
    for path in (SRC / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
    return found


def test_train_and_interop_do_not_import_each_other():
    assert not {m for m in _imports("interop") if m.startswith("lmlab.train")}
    assert not {m for m in _imports("train") if m.startswith("lmlab.interop")}


def test_every_family_builds_from_its_presets_and_knows_its_kind():
    assert set(FAMILIES) == {"gpt", "bert", "ffnn", "rnn", "lstm", "gru", "seq2seq"}
    for family in FAMILIES.values():
        assert family.presets, family.name
        for name in family.presets:
            assert family_of_preset(name, "mlm" if family.kind == "encoder" else "clm") is family
        config = family.config_cls.from_name(next(iter(family.presets)), vocab_size=50)
        with torch.device("meta"):
            model = build_model(config)
        assert family_of(model) is family and family_of(config) is family
        assert kind_of(model) == family.kind
        # A stateful model carries any length; the others read block_size tokens at once.
        assert context_of(model) == (None if family.kind == "stateful" else config.block_size)
    assert set(preset_names("stateful")) == {n for f in FAMILIES.values()
                                             if f.kind == "stateful" for n in f.presets}
    with pytest.raises(Exception, match="unknown preset 'nope'"):
        config_from_preset("nope")


def test_backbone_of_drops_heads_and_refuses_a_feed_forward_lm():
    bert = build_model(config_from_preset("bert-nano", "mlm", vocab_size=40))
    assert backbone_of(bert) is bert.bert
    lstm = build_model(RNNConfig.from_name("lstm-small", vocab_size=40, n_embd=16, n_hidden=16))
    assert backbone_of(lstm) is lstm.encoder
    gpt = build_model(GPTConfig.from_name("gpt-nano", vocab_size=40))
    assert backbone_of(gpt) is gpt
    ffnn = build_model(RNNConfig.from_name("ffnn-small", vocab_size=40))
    with pytest.raises(Exception, match="feed-forward"):
        backbone_of(ffnn)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = "User: hello there. Assistant: hi! how are you? I am fine, thanks.\n" * 5
    return Tokenizer.train([text], kind="char", vocab_size=300, show_progress=False)


def test_load_model_reads_a_run_and_a_checkpoint_folder(tmp_path, tok):
    torch.manual_seed(0)
    model = build_model(RNNConfig.from_name("gru-small", vocab_size=tok.vocab_size, n_embd=16,
                                            n_hidden=16, block_size=8)).eval()
    save_checkpoint(tmp_path / "run", 3, model, None)
    x = torch.tensor([tok.encode("hello there")])
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "step-000003"):
        loaded = load_model(source)
        assert family_of(loaded).name == "gru"
        torch.testing.assert_close(loaded(x)[0], model(x)[0])


def test_chat_with_a_stateful_model_is_not_capped_by_its_training_length(tok):
    """block_size is an LSTM's back-propagation length, not a context: chat must neither cap
    the reply at half of it nor drop history to fit it (a GPT's context does both)."""
    torch.manual_seed(0)
    lstm = build_model(RNNConfig.from_name("lstm-small", vocab_size=tok.vocab_size, n_embd=16,
                                           n_hidden=16, block_size=8)).eval()
    notes: list[str] = []
    session = ChatSession(lstm, tok, max_new_tokens=40, cfg=SamplingConfig(temperature=0),
                          warn=notes.append)
    assert session.max_new_tokens == 40
    for _ in range(3):
        session.reply("hello there, how are you?")
    assert len(session.prompt_ids()) > 8 * 4 and not notes
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 3
    gpt = build_model(GPTConfig.from_name("gpt-nano", vocab_size=tok.vocab_size,
                                          block_size=64)).eval()
    capped = ChatSession(gpt, tok, max_new_tokens=40, warn=notes.append)
    assert capped.max_new_tokens == 32


def test_convert_refuses_a_family_without_a_hugging_face_format(tmp_path, tok, capsys):
    from lmlab.cli import main

    lstm = build_model(RNNConfig.from_name("lstm-small", vocab_size=tok.vocab_size, n_embd=16,
                                           n_hidden=16))
    save_checkpoint(tmp_path / "run", 1, lstm, None)
    assert main(["convert", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2
    assert "a lstm model has no Hugging Face format" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
