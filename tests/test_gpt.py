"""Shapes, causality and KV-cache equivalence of models/gpt.py, GPT-2 and Llama style."""

import pytest
import torch
import torch.nn.utils.prune

from lmlab.config import PRESETS, GPTConfig
from lmlab.errors import LmlabError
from lmlab.generate import SamplingConfig, generate
from lmlab.models.gpt import GPT

STYLES = ["gpt-nano", "llama-nano", "gemma-nano"]


def tiny(name: str, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name(name, vocab_size=97, block_size=32, **kw)).eval()


@pytest.mark.parametrize("name", STYLES)
def test_output_shape(name):
    model = tiny(name)
    idx = torch.randint(0, 97, (3, 11))
    assert model(idx).shape == (3, 11, 97)
    assert model(idx, last_only=True).shape == (3, 1, 97)


@pytest.mark.parametrize("name", STYLES)
def test_causality(name):
    """Changing a future token leaves the logits of earlier positions unchanged."""
    model = tiny(name)
    idx = torch.randint(0, 97, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 97
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("name", STYLES)
def test_kv_cache_matches_full_recompute(name):
    model = tiny(name)
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full = model(idx)
        model.setup_cache(2)
        first = model(idx[:, :7], start_pos=0)
        chunk = model(idx[:, 7:12], start_pos=7)  # chunked prefill after cached tokens
        steps = [model(idx[:, t:t + 1], start_pos=t) for t in range(12, 20)]
        model.clear_cache()
    incremental = torch.cat([first, chunk, *steps], dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", STYLES)
def test_cached_greedy_equals_recompute_greedy(name):
    """KV-cache decoding gives the same tokens as recomputing the whole sequence."""
    model = tiny(name)
    prompt = torch.randint(0, 97, (1, 5))
    cached = torch.stack(list(generate(model, prompt, 20, SamplingConfig(temperature=0))), 1)
    seq = prompt
    with torch.no_grad():
        for _ in range(20):
            nxt = model(seq[:, -32:])[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    # 5 + 20 tokens stay inside the 32-token context, so both see the same window.
    assert cached.tolist() == seq[:, 5:].tolist()


def test_generation_slides_past_the_context():
    model = tiny("gpt-nano")
    g = torch.Generator().manual_seed(0)
    out = list(generate(model, torch.zeros(2, 30, dtype=torch.long), 40,
                        SamplingConfig(temperature=1.0), generator=g))
    assert len(out) == 40 and out[0].shape == (2,)


def test_gqa_and_untied_parameters():
    cfg = GPTConfig.from_name("llama-nano", vocab_size=50)
    model = GPT(cfg)
    assert cfg.n_kv_head == 2 and cfg.n_head == 4
    assert model.transformer.h[0].attn.c_attn.out_features == (4 + 2 * 2) * cfg.head_dim
    assert model.lm_head.weight is not model.transformer.wte.weight
    tied = GPT(GPTConfig.from_name("gpt-nano", vocab_size=50))
    assert tied.lm_head.weight is tied.transformer.wte.weight


def test_presets_and_bad_configs():
    for name in PRESETS:
        GPTConfig.from_name(name)
    n = GPT(GPTConfig.from_name("gpt-nano", vocab_size=256)).num_params()
    assert n < 1_000_000
    with pytest.raises(LmlabError, match="unknown preset"):
        GPTConfig.from_name("gpt-5")
    with pytest.raises(LmlabError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)


def test_gpt2_124m_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_name("gpt2-124m"))
    assert model.num_params() == 124_439_808  # GPT-2 small's published count


def test_linear_fast_path_equals_f_linear(monkeypatch):
    """lmlab's Linear (oneDNN for few-row float32 CPU inference) computes F.linear's values;
    with a gradient to take, it is F.linear itself."""
    from lmlab.models import linear as lin

    monkeypatch.setattr(lin, "ONEDNN_MIN_MACS", 0)  # a small layer takes the oneDNN path
    torch.manual_seed(0)
    layer = lin.Linear(96, 40)
    for rows in (1, 8, lin.ONEDNN_MAX_ROWS + 1):  # the last: past it, the plain path
        x = torch.randn(rows, 96)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight,
                                                                            layer.bias))
    x = torch.randn(2, 3, 96, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    assert isinstance(GPT(GPTConfig.from_name("gpt-nano")).lm_head, torch.nn.Linear)
    # ReLU and a residual inside the product: the values of the separate calls.
    x, res = torch.randn(8, 96), torch.randn(8, 40)
    with torch.no_grad():
        plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(layer(x, relu=True), plain.relu(), atol=1e-6, rtol=0)
        torch.testing.assert_close(layer(x, add=res), plain + res, atol=1e-6, rtol=0)
        torch.testing.assert_close(lin.linear_then(layer, x, relu=True, add=res),
                                   plain.relu() + res, atol=1e-6, rtol=0)
    res.requires_grad_(True)  # a residual that needs its gradient: not the fused op
    layer.eval()(x, add=res).sum().backward()
    assert torch.equal(res.grad, torch.ones_like(res))
    torch.nn.utils.prune.l1_unstructured(layer, "weight", 0.5)  # a computed weight
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(
            x, layer.weight, layer.bias))


def test_linear_packs_its_weight_for_inference_and_follows_changes(monkeypatch):
    """In eval mode the weight goes to oneDNN pre-packed: the same values as F.linear,
    packed again after an in-place update (an optimizer step, load_state_dict), dropped
    by train(), left out of copies, and within the process's budget."""
    import copy

    from lmlab.models import linear as lin

    if not lin.onednn_enabled() or lin._REORDER is None:
        pytest.skip("no oneDNN in this build of torch")
    monkeypatch.setattr(lin, "ONEDNN_MIN_MACS", 0)
    torch.manual_seed(0)
    layer = lin.Linear(96, 40).eval()
    x, extra = torch.randn(8, 96), torch.randn(40)

    def check() -> None:
        with torch.no_grad():
            want = torch.nn.functional.linear(x, layer.weight, layer.bias)
            torch.testing.assert_close(layer(x), want)
            torch.testing.assert_close(layer(x, bias=extra), want + extra)

    check()
    assert layer._packed is not None and layer._packed[2].is_mkldnn
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place: the version moves, the pack is stale
    check()
    layer.load_state_dict({"weight": torch.randn(40, 96), "bias": torch.randn(40)})
    check()
    for _ in range(3):  # new tensors, which may take a freed one's memory
        layer.weight = torch.nn.Parameter(torch.randn(40, 96))
        check()
    packed = layer._packed
    layer.eval()  # already in eval mode (generate calls it each time): the copy stays
    assert layer._packed is packed
    layer.weight.data.mul_(3.0)  # through .data no counter moves: train() drops the copy
    layer.train().eval()
    check()
    layer.double()  # a cast drops the copy (and the float64 layer takes F.linear)
    assert layer._packed is None
    x = x.double()
    check()
    layer.float()
    x = x.float()
    with torch.inference_mode():  # a weight made here has no version counter: not packed
        frozen = lin.Linear(96, 40).eval()
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), torch.nn.functional.linear(x, frozen.weight,
                                                                          frozen.bias))
    assert frozen._packed is None
    parts = (lin.Linear(96, 8), lin.Linear(96, 5, bias=False))  # one bias missing
    with torch.no_grad():
        stacked = lin.Stacked().linear(parts)(x).split([8, 5], dim=-1)
        for got, p in zip(stacked, parts, strict=True):
            torch.testing.assert_close(got, p(x))
    twin = copy.deepcopy(layer)
    assert twin._packed is None
    with torch.no_grad():
        torch.testing.assert_close(twin(x), layer(x))
    layer.train()
    assert layer._packed is None
    monkeypatch.setattr(lin, "PACK_BUDGET", 0)  # no room: the weight is used as it is
    layer.eval()
    check()
    assert layer._packed is None
