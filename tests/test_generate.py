"""Logits processing, sampling, stop strings and text streaming."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import GPTConfig
from lmlab.generate import (
    SamplingConfig,
    StopChecker,
    apply_repetition_penalty,
    fit_prompt,
    generate,
    generate_text,
    process_logits,
    sample,
)
from lmlab.models.gpt import GPT
from lmlab.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def char_tok():
    text = "the quick brown fox jumps over the lazy dog. 你好，世界。\n" * 3
    return Tokenizer.train([text], kind="char", vocab_size=320, show_progress=False)


@pytest.fixture(scope="module")
def model(char_tok):
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("gpt-nano", vocab_size=char_tok.vocab_size,
                                   block_size=48)).eval()


def test_top_k_keeps_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = process_logits(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert torch.isfinite(out).nonzero()[:, 1].tolist() == [1, 3]


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = process_logits(probs.log(), SamplingConfig(temperature=1.0, top_p=0.75))
    assert torch.isfinite(out).nonzero()[:, 1].tolist() == [0, 1]  # 0.5 < 0.75 <= 0.8
    out = process_logits(probs.log(), SamplingConfig(temperature=1.0, top_p=0.01))
    assert torch.isfinite(out).nonzero()[:, 1].tolist() == [0]  # the top token always stays


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_greedy_and_seeded_sampling_are_deterministic():
    logits = torch.randn(4, 50)
    greedy = sample(logits, torch.empty(4, 0, dtype=torch.long), SamplingConfig(temperature=0))
    assert greedy.tolist() == logits.argmax(-1).tolist()
    cfg = SamplingConfig(temperature=0.9, top_p=0.9)
    seen = torch.empty(4, 0, dtype=torch.long)
    a = sample(logits, seen, cfg, torch.Generator().manual_seed(1))
    b = sample(logits, seen, cfg, torch.Generator().manual_seed(1))
    assert a.tolist() == b.tolist()


def test_fit_prompt_policy():
    ids, dropped = fit_prompt(list(range(100)), block_size=64, max_new_tokens=16)
    assert ids == list(range(52, 100)) and dropped == 52  # keeps block - new = 48 tokens
    ids, dropped = fit_prompt(list(range(100)), block_size=64, max_new_tokens=500)
    assert len(ids) == 32  # never less than half the context
    assert fit_prompt([1, 2, 3], 64, 10) == ([1, 2, 3], 0)


def test_stop_checker():
    c = StopChecker(["\n\n", "END"])
    assert c.find("abc\n\nEND") == 3 and c.find("abc") == -1 and c.hold == 2


def test_generate_text_streams_what_it_returns(model, char_tok):
    pieces: list[str] = []
    out = generate_text(model, char_tok, "the ", max_new_tokens=30,
                        cfg=SamplingConfig(temperature=1.0), seed=3,
                        on_text=lambda row, p: pieces.append(p))
    assert "".join(pieces) == out[0].text
    assert out[0].tokens == 30 and out[0].finish_reason == "length"
    again = generate_text(model, char_tok, "the ", max_new_tokens=30,
                          cfg=SamplingConfig(temperature=1.0), seed=3)
    assert again == out


def test_generate_text_stops_at_stop_string(model, char_tok):
    free = generate_text(model, char_tok, "the", max_new_tokens=40,
                         cfg=SamplingConfig(temperature=1.0), seed=0)[0].text
    stop = free[5:7]
    cut = generate_text(model, char_tok, "the", max_new_tokens=40,
                        cfg=SamplingConfig(temperature=1.0), seed=0, stop=[stop])[0]
    assert cut.text == free[: free.find(stop)] and cut.finish_reason == "stop"


def test_num_return_sequences_and_long_prompt_warning(model, char_tok):
    warnings: list[str] = []
    outs = generate_text(model, char_tok, "the lazy dog " * 10, max_new_tokens=8,
                         cfg=SamplingConfig(temperature=1.0), num_return_sequences=3, seed=0,
                         warn=warnings.append)
    assert len(outs) == 3 and len({o.text for o in outs}) > 1
    assert warnings and "longer than the context" in warnings[0]


@pytest.mark.parametrize("name", ["gpt-nano", "llama-nano"])
def test_batched_prompts_of_different_lengths_match_one_at_a_time(name, char_tok):
    from lmlab.generate import generate_texts

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(name, vocab_size=char_tok.vocab_size, block_size=40)).eval()
    prompts = ["the", "the quick brown fox", "你好", "a lazy dog jumps over"]
    greedy = SamplingConfig(temperature=0)
    alone = [generate_texts(model, char_tok, [p], max_new_tokens=18, cfg=greedy)[0]
             for p in prompts]
    batch = generate_texts(model, char_tok, prompts, max_new_tokens=18, cfg=greedy)
    assert [c.text for c in batch] == [c.text for c in alone]
    # Past the context the batch slides its window as one (rows may then differ
    # from solo runs, which slide at their own length), and still runs.
    long = generate_texts(model, char_tok, prompts, max_new_tokens=40, cfg=greedy)
    assert all(c.tokens == 40 or c.finish_reason == "eos" for c in long)


def test_padded_logits_equal_unpadded():
    from lmlab.generate import left_pad

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-nano", vocab_size=50, block_size=32)).eval()
    a, b = [3, 4, 5, 6, 7, 8], [9, 10]
    idx, pad = left_pad([a, b])
    assert pad.tolist() == [0, 4]
    with torch.no_grad():
        batched = model(idx, pad=pad)
        torch.testing.assert_close(batched[0], model(torch.tensor([a]))[0])
        torch.testing.assert_close(batched[1, 4:], model(torch.tensor([b]))[0])


@pytest.mark.slow
def test_compiled_decode_step_gives_the_same_tokens(model):
    prompt = torch.randint(0, model.config.vocab_size, (1, 5))
    greedy = SamplingConfig(temperature=0)
    eager = torch.stack(list(generate(model, prompt, 12, greedy)), 1)
    compiled = torch.stack(list(generate(model, prompt, 12, greedy, compile=True)), 1)
    assert compiled.tolist() == eager.tolist()
