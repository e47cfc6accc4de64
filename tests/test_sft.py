"""Chat fine-tuning: conversation readers, answer-only labels, truncation, and `lmlab sft`
with LoRA (adapter-only checkpoints, resume, chat, merge) and without."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import chat_tokenizer
from lmlab.cli import main
from lmlab.config import GPTConfig
from lmlab.data.chat import (
    CHATML_TEMPLATE,
    encode_conversation,
    read_conversations,
    recover_json_array,
)
from lmlab.errors import LmlabError
from lmlab.models.gpt import GPT
from lmlab.tokenizer import Tokenizer
from lmlab.train.checkpoint import save_checkpoint

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Peru": "Lima", "Egypt": "Cairo",
            "Kenya": "Nairobi", "Spain": "Madrid", "Italy": "Rome", "Chile": "Santiago"}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = " ".join(f"What is the capital of {c}? The capital of {c} is {p}. 法国的首都是巴黎。"
                    for c, p in CAPITALS.items())
    return chat_tokenizer(text * 3, "system user assistant\n")


def chat(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_labels_cover_answers_only(tok):
    messages = [{"role": "system", "content": "Be brief."},
                *chat("What is the capital of Peru?", "Lima."),
                *chat("And of Japan?", "Tokyo.")]
    e = encode_conversation(tok, CHATML_TEMPLATE, messages, 500)
    learned = tok.decode([i for i, m in zip(e.ids, e.labels, strict=True) if m])
    # Both answers, each with its end-of-turn token (so the model learns to stop).
    assert learned == "Lima.<|im_end|>\nTokyo.<|im_end|>\n"
    assert tok.decode(e.ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n"
                                        "<|im_start|>user\n")
    assert e.turns_dropped == 0


def test_truncation_never_cuts_an_answer(tok):
    messages = [*chat("What is the capital of Peru?", "Lima."),
                *chat("And of Japan?", "Tokyo is the capital of Japan. " * 4)]
    whole = encode_conversation(tok, CHATML_TEMPLATE, messages, 10_000)
    first = encode_conversation(tok, CHATML_TEMPLATE, messages[:2], 10_000)
    cut = encode_conversation(tok, CHATML_TEMPLATE, messages, len(whole.ids) - 5)
    assert cut.ids == first.ids and cut.turns_dropped == 1  # the long answer went whole
    assert encode_conversation(tok, CHATML_TEMPLATE, messages, len(first.ids) - 1) is None


def test_readers_take_three_shapes(tmp_path):
    rows = [{"messages": chat("Hi", "Hello")},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt",
                                                                   "value": "Hello"}]},
            {"instruction": "Translate to French", "input": "cat", "output": "chat"}]
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    convs = read_conversations(f)
    assert convs[0] == convs[1] == chat("Hi", "Hello")
    assert convs[2] == chat("Translate to French\n\ncat", "chat")


@pytest.mark.parametrize("record,message", [
    ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
    ({"messages": chat("Hi", "")}, "no assistant answer"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "from 'robot'"),
    ({"text": "plain"}, "not a conversation"),
    ({"messages": [{"role": "user", "content": 3}]}, "not text"),
])
def test_bad_records_name_the_line(tmp_path, record, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"messages": chat("a", "b")}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(LmlabError, match=message) as e:
        read_conversations(f)
    assert "bad.jsonl:2" in str(e.value)


def test_truncated_array_is_recovered(tmp_path):
    records = [{"id": i, "conversations": [{"from": "human", "value": f"q{i}"}]}
               for i in range(3)]
    text = json.dumps(records, indent=1)
    f = tmp_path / "cut.json"
    f.write_text(text[:text.rindex('"q2"')])  # ends inside the third record
    got, left = recover_json_array(f)
    assert got == records[:2] and left > 0
    with pytest.raises(LmlabError, match="recover"):
        read_conversations(f)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok) -> Path:
    """A tiny GPT checkpoint with its tokenizer (random weights)."""
    root = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-nano", vocab_size=tok.vocab_size, block_size=128))
    tok.save(root / "tokenizer.json")
    return save_checkpoint(root, 0, model, root / "tokenizer.json")


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    rows = [{"messages": chat(f"What is the capital of {c}?", f"The capital of {c} is {p}.")}
            for c, p in CAPITALS.items()] * 3
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def sft(base: Path, chats: Path, out: Path, *extra: str) -> int:
    return main(["sft", str(base), str(chats), "--out", str(out), "--max-length", "96",
          "--eval-interval", "5", "--chat-template", "chatml", "--threads", "2",
          "--max-tokens", "1024", "--val-share", "0.25", "--warmup-steps", "2", *extra])


def test_lora_sft_learns_saves_adapter_resumes_and_merges(tmp_path, base, chats, capsys):
    from lmlab.loading import load_for_inference, load_model
    from lmlab.models.lora import lora_layers

    out = tmp_path / "run"
    assert sft(base, chats, out, "--max-steps", "40", "--lr", "1e-2") == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["loss"] for r in rows if r["split"] == "val"]
    assert val[-1] < val[0] - 0.25  # the answers are being learned (a frozen random base)
    ckpt = out / "checkpoints" / "step-000040"
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model.safetensors").exists()  # the adapter alone
    cfg = json.loads((ckpt / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base.resolve()) and cfg["r"] == 8

    # The run loads as base + adapter, with the template it was trained with.
    loaded = load_for_inference(out)
    assert lora_layers(loaded.model) and loaded.chat_template == CHATML_TEMPLATE
    x = torch.randint(0, loaded.model.config.vocab_size, (1, 12))
    with torch.no_grad():
        want = loaded.model(x)
        assert (load_model(base)(x) - want).abs().max() > 1e-3

    # Resume: an interrupted run's continuation equals the uninterrupted one.
    short = tmp_path / "short"
    sft(base, chats, short, "--max-steps", "40", "--lr", "1e-2", "--checkpoint-interval", "20")
    (short / "checkpoints" / "latest").write_text("step-000020\n")
    sft(base, chats, short, "--max-steps", "40", "--lr", "1e-2", "--checkpoint-interval", "20",
        "--resume")
    with torch.no_grad():
        assert torch.allclose(load_model(short)(x), want, atol=1e-6)

    merged = tmp_path / "merged"
    main(["merge", str(out), "--out", str(merged)])
    with torch.no_grad():
        assert torch.allclose(load_model(merged)(x), want, atol=1e-5)
    assert json.loads((merged / "tokenizer_config.json").read_text())["chat_template"] \
        == CHATML_TEMPLATE
    capsys.readouterr()
    main(["chat", str(merged), "--prompt", "What is the capital of Peru?", "--greedy",
          "--max-new-tokens", "20"])
    assert capsys.readouterr().out.strip()


def test_full_sft_saves_whole_model(tmp_path, base, chats):
    out = tmp_path / "full"
    sft(base, chats, out, "--max-steps", "2", "--lora-rank", "0")
    ckpt = out / "checkpoints" / "step-000002"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    cfg = json.loads((out / "sft_config.json").read_text())
    assert cfg["lr"] == 2e-5


def test_int8_base_with_float_adapters(tmp_path, base, chats):
    """The QLoRA idea on a CPU: the frozen base in int8, the adapters in float."""
    out = tmp_path / "q"
    assert sft(base, chats, out, "--max-steps", "6", "--lr", "1e-2", "--quantize", "int8") == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["loss"] for r in rows if r["split"] == "val"]
    assert val[-1] < val[0]
    assert (out / "checkpoints" / "step-000006" / "adapter_model.safetensors").is_file()


def test_sft_bad_inputs(tmp_path, base, chats, capsys):
    runs = ((lambda: sft(base, chats, tmp_path / "x", "--lora-targets", "query"),
             "no such module"),
            (lambda: sft(base, chats, tmp_path / "y", "--max-length", "4096"),
             "exceeds the model's context"),
            (lambda: main(["merge", str(base), "--out", str(tmp_path / "m")]),
             "no adapter to merge"),
            (lambda: sft(base, chats, tmp_path / "z", "--lora-rank", "0", "--quantize", "int8"),
             "needs LoRA adapters"))
    for run, message in runs:
        code = run()
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "m").exists()


STATUS = """Package: curl
Status: install ok installed
Description: command line tool for transferring data with URL syntax
 curl is a command line tool for transferring data with URL syntax, supporting
 DICT, FILE, FTP, HTTP and more. It is used in scripts.
 .
 Second paragraph, not used.

Package: libcurl4-dev
Description: development files and documentation for libcurl
 These files are needed to build programs against libcurl.

Package: curl-copy
Description: command line tool for transferring data with URL syntax
 curl is a command line tool for transferring data with URL syntax, supporting
 DICT, FILE, FTP, HTTP and more. It is used in scripts.
 .
 Second paragraph, not used.

Package: nolong
Description: a synopsis only

Package: jq
Description: lightweight and flexible command-line JSON processor
 jq is like sed for JSON data. You can use it to slice and filter and map.
"""


def test_chatdata_debian_and_sharegpt(tmp_path, capsys):
    status = tmp_path / "status"
    status.write_text(STATUS)
    out = tmp_path / "debian"
    assert main(["chatdata", "debian", "--input", str(status), "--out", str(out)]) == 0
    rows = [json.loads(line) for name in ("train", "val", "test")
            for line in (out / f"{name}.jsonl").read_text().splitlines()]
    assert sorted(r["package"] for r in rows) == ["curl", "jq", "libcurl4-dev"]
    curl = next(r for r in rows if r["package"] == "curl")["messages"]
    assert curl[0]["content"] == "What does the Debian package curl do?"
    assert curl[1]["content"].startswith("Command line tool for transferring data with URL "
                                         "syntax. curl is a command line tool")
    assert "Second paragraph" not in curl[1]["content"]
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["same description as an earlier package"] == 1
    assert report["counts"]["no long description"] == 1

    # ShareGPT: a truncated file; empty turns dropped, one speaker's turns joined.
    records = [{"id": "a", "conversations": [{"from": "human", "value": "Hi"},
                                             {"from": "gpt", "value": ""},
                                             {"from": "gpt", "value": "Hello"},
                                             {"from": "gpt", "value": "there"}]},
               {"id": "b", "conversations": [{"from": "gpt", "value": "I start"}]},
               {"id": "c", "conversations": [{"from": "human", "value": "Q"},
                                             {"from": "gpt", "value": "A"}]},
               {"id": "d", "conversations": [{"from": "human", "value": "cut"}]}]
    text = json.dumps(records)
    share = tmp_path / "share.json"
    share.write_text(text[:text.index('"cut"')])
    out2 = tmp_path / "sharegpt"
    # Too few complete conversations to split three ways is an error, said in one line.
    assert main(["chatdata", "sharegpt", "--input", str(share), "--out", str(out2)]) == 2
    assert "cannot be split" in capsys.readouterr().err
    from lmlab.data.chat import sharegpt_conversations

    convs, counts = sharegpt_conversations(share)
    assert [c["id"] for c in convs] == ["a", "c"]
    assert convs[0]["messages"][1] == {"role": "assistant", "content": "Hello\n\nthere"}
    assert counts["no user turn before an answer"] == 1 and counts["bytes left unparsed"] > 0


def test_chat_input_answers_and_scores(tmp_path, base, chats, capsys):
    out = tmp_path / "answers.jsonl"
    assert main(["chat", str(base), "--input", str(chats), "--out", str(out), "--greedy",
                 "--max-new-tokens", "8", "--batch-size", "5"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and rows[0]["prompt"].startswith("What is the capital of")
    assert rows[0]["reference"].startswith("The capital of")
    assert "ROUGE-1/2/L against the reference answers" in capsys.readouterr().out


def test_chatml_answers_stop_at_im_end_without_the_special_token():
    from lmlab.data.chat import chat_format

    plain = Tokenizer.train(["hello world"], kind="char", vocab_size=300,
                            special_tokens=("<|endoftext|>",), show_progress=False)
    assert chat_format(CHATML_TEMPLATE, plain)[1] == ("<|im_end|>",)
    assert chat_format(None, plain)[1] == ("\nUser:", "\nSystem:")


@pytest.mark.parametrize("weight_trains,smoothing,with_bias",
                         [(False, 0.0, False), (True, 0.0, False), (True, 0.1, True)])
def test_fused_linear_cross_entropy_equals_the_plain_one(weight_trains, smoothing, with_bias):
    import torch.nn.functional as F

    from lmlab.train.losses import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(300, 32, requires_grad=True)
    w = (torch.randn(1000, 32) * 0.1).requires_grad_(weight_trains)
    b = torch.randn(1, 1000).requires_grad_(True) if with_bias else None
    y = torch.randint(0, 1000, (300,))
    want = F.cross_entropy(F.linear(h, w, None if b is None else b[0]), y, reduction="sum",
                           label_smoothing=smoothing)
    (want * 3).backward()
    grads = [t.grad.clone() for t in (h, w, b) if t is not None and t.requires_grad]
    h.grad = w.grad = None
    if b is not None:
        b.grad = None
    got = linear_cross_entropy(h, w, y, bias=b, label_smoothing=smoothing, chunk=64,
                               reduction="sum")
    (got * 3).backward()
    assert torch.allclose(got, want, rtol=1e-6)
    for t, g in zip([t for t in (h, w, b) if t is not None and t.requires_grad], grads,
                    strict=True):
        assert torch.allclose(t.grad, g, atol=1e-5)
    with torch.no_grad():  # validation: the loss alone
        assert torch.allclose(linear_cross_entropy(h, w, y, bias=b, label_smoothing=smoothing,
                                                   reduction="sum"), want, rtol=1e-6)


def test_packing_joins_whole_conversations(tmp_path, base):
    from lmlab.train.sft import pack

    rows = [encode_conversation(Tokenizer.from_file(base / "tokenizer.json"), CHATML_TEMPLATE,
                                chat(f"q{i}", "a" * (5 + i)), 96) for i in range(6)]
    packed = pack(rows, 96)
    assert sum(len(r.ids) for r in packed) == sum(len(r.ids) for r in rows)
    assert all(len(r.ids) <= 96 for r in packed) and len(packed) < len(rows)
    assert [t for r in packed for t in r.ids] == [t for r in rows for t in r.ids]
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(json.dumps({"messages": chat(f"q{i}", f"a{i}")})
                               for i in range(12)) + "\n")
    out = tmp_path / "packed"
    assert sft(base, short, out, "--max-steps", "2", "--packing") == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["train"]["packed_rows"] < report["train"]["conversations"]
