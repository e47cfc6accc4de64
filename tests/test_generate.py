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


@pytest.mark.parametrize("name", ["gpt-nano", "llama-nano", "gemma-nano"])
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


@pytest.mark.parametrize("preset", ["gpt-nano", "llama-nano", "gemma-nano"])
def test_static_cache_gives_the_growing_caches_logits(preset):
    """A 0-d tensor position attends the whole fixed buffer with a mask: same logits as the
    growing cache and as one full forward, with and without left padding."""
    torch.manual_seed(0)
    net = GPT(GPTConfig.from_name(preset, vocab_size=300)).eval()
    idx = torch.randint(0, 300, (2, 10))
    for pad in (None, torch.tensor([0, 3])):
        with torch.no_grad():
            full = net(idx, pad=pad)
            net.setup_cache(2, 32)
            steps = [net(idx[:, :6], start_pos=torch.tensor(0), pad=pad)]
            steps += [net(idx[:, i:i + 1], start_pos=torch.tensor(i), pad=pad)
                      for i in range(6, 10)]
            net.clear_cache()
        rows = slice(None) if pad is None else 0  # row 1's padding columns differ
        torch.testing.assert_close(torch.cat(steps, 1)[rows], full[rows], atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.cat(steps, 1)[1, 3:], full[1, 3:], atol=1e-5, rtol=0)


def test_min_new_tokens_forbids_the_end_token(model):
    prompt = torch.randint(0, model.config.vocab_size, (1, 5),
                           generator=torch.Generator().manual_seed(3))
    greedy = SamplingConfig(temperature=0)
    first = [int(t[0]) for t in generate(model, prompt[:1], 6, greedy)]
    eos = first[0]  # the token greedy decoding picks first becomes the end token
    assert [int(t[0]) for t in generate(model, prompt[:1], 6, greedy, eos_id=eos)] == [eos]
    got = [int(t[0]) for t in generate(model, prompt[:1], 6, greedy, eos_id=eos,
                                       min_new_tokens=4)]
    assert len(got) >= 4 and eos not in got[:4]


def test_static_cache_length_is_rounded_up():
    from lmlab.generate import STATIC_CACHE_STEP, static_cache_len

    assert static_cache_len(5, 1024) == STATIC_CACHE_STEP
    assert static_cache_len(STATIC_CACHE_STEP + 1, 1024) == 2 * STATIC_CACHE_STEP
    assert static_cache_len(900, 1000) == 1000  # never past the context


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compiled_decode_step_gives_the_same_tokens(model, dynamic):
    from lmlab.generate import compile_seconds

    prompt = torch.randint(0, model.config.vocab_size, (2, 5))
    pad = torch.tensor([0, 2])
    greedy = SamplingConfig(temperature=0)
    for p in (None, pad):
        eager = torch.stack(list(generate(model, prompt, 12, greedy, pad=p)), 1)
        compiled = torch.stack(list(generate(model, prompt, 12, greedy, pad=p, compile=True,
                                             dynamic=dynamic)), 1)
        assert compiled.tolist() == eager.tolist()
    from lmlab.generate import static_cache_len

    length = 0 if dynamic else static_cache_len(5 + 12, model.config.block_size)
    assert (2, length) in compile_seconds


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
def test_frozen_compiled_step_follows_each_models_weights(bits):
    """A weight-only quantized model's compiled step takes its weights as constants
    (Inductor freezing + max-autotune): its logits match eager decoding, a second model
    of the same shape gets its own weights (not the first one's frozen copy), a weight
    written in place is seen, and the same model decodes again without compiling."""
    from lmlab.generate import compiled_decode, decode_one_token, frozen_weights_apply
    from lmlab.models.quantize import WeightOnlyInt4Linear, quantize_int4, quantize_int8

    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                    n_embd=64, pos="rope", norm="rmsnorm", mlp="swiglu",
                    intermediate_size=128, bias=False)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])

    def step_logits(model: GPT, compiled: bool) -> torch.Tensor:
        model.setup_cache(1, 64, reuse=compiled)
        model(prompt, start_pos=torch.tensor(0), last_only=True)
        step = compiled_decode(False, True) if compiled else decode_one_token
        return step(model, torch.tensor([9]), torch.tensor(5), None)

    def check(model: GPT) -> None:
        eager, comp = step_logits(model, False), step_logits(model, True)
        # Both multiply bfloat16 activations; the generated GEMM sums in another order.
        assert (comp - eager).abs().max() < 0.02 * eager.abs().max()

    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = GPT(cfg).eval()
        with torch.no_grad():
            for p in net.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.3)  # logits far apart: a stale weight shows
        models.append(quantize_int4(net) if bits == 4 else quantize_int8(net))
    for model in models:
        assert frozen_weights_apply(model)
        with torch.inference_mode():
            check(model)
    model = models[0]
    quantized = [m for m in model.modules() if isinstance(m, WeightOnlyInt4Linear)]
    buf = quantized[0].scales_and_zeros if bits == 4 else model.lm_head.scales
    with torch.inference_mode():
        before = step_logits(model, True)
    with torch.no_grad():
        buf.mul_(-1)
    with torch.inference_mode():
        check(model)
        assert not torch.allclose(step_logits(model, True), before)
    with torch.no_grad():
        buf.mul_(-1)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        check(model)
        check(model)  # the same weights and cache buffers: no new graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1
    # Past the context (64): after 60 tokens the window slides to the last 32 and the
    # cache is set up again mid-call. What follows equals a fresh compiled call on that
    # window (the same numerics; eager bfloat16 sums differ enough to turn a greedy tie).
    greedy = SamplingConfig(temperature=0)
    got = torch.cat(list(generate(models[1], prompt, 80, greedy, compile=True)))
    window = torch.cat([prompt[0], got[:60]])[-32:]
    again = torch.cat(list(generate(models[1], window[None], 20, greedy, compile=True)))
    assert torch.equal(got[60:], again)
