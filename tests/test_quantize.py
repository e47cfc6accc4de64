"""Weight-only int8 and int4 quantization: the swapped Linears, a quantized GPT, the CLI flag."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lmlab.config import GPTConfig
from lmlab.generate import SamplingConfig, decode_one_token, generate, prefill
from lmlab.models.gpt import GPT
from lmlab.models.quantize import (
    WeightOnlyInt4Linear,
    WeightOnlyInt8Linear,
    pack_rows,
    quantization_error,
    quantize_int4,
    quantize_int8,
    quantize_weight_int4,
    quantize_weight_int8,
    unpack_rows,
)

VOCAB = 300


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over the whole tensor, in float32."""
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def tiny_gpt(preset: str, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name(preset, vocab_size=VOCAB, **overrides)).eval()


# ------------------------------------------------------------ the module
@pytest.mark.parametrize("use_kernel", [True, False], ids=["kernel", "dequantize"])
@pytest.mark.parametrize("rows", [1, 5, 100], ids=lambda r: f"rows{r}")
def test_linear_output_close_to_float(use_kernel, rows):
    torch.manual_seed(0)
    lin = nn.Linear(512, 384, bias=True)
    nn.init.normal_(lin.bias, std=0.1)
    q = WeightOnlyInt8Linear.from_linear(lin, use_kernel=use_kernel)
    x = torch.randn(rows, 3, 512)  # 3 * rows rows: 100 exceeds the kernel's row limit
    with torch.no_grad():
        ref, out = lin(x), q(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # int8 per-row rounding of Gaussian weights costs ~0.4-0.7% of the output's
    # norm; bf16 activations on the kernel path add ~0.2%.
    assert rel_error(out, ref) < 0.01
    # Both paths multiply by the same dequantized weight.
    with torch.no_grad():
        exact = nn.functional.linear(x, q.dequantize(), lin.bias)
    assert rel_error(out, exact) < (0.01 if use_kernel else 1e-5)


def test_bf16_input_and_no_bias():
    torch.manual_seed(0)
    lin = nn.Linear(256, 64, bias=False)
    q = WeightOnlyInt8Linear.from_linear(lin)
    x = torch.randn(2, 256)
    with torch.no_grad():
        out = q(x.bfloat16())
        assert out.dtype == torch.bfloat16 and q.bias is None
        assert rel_error(out, lin(x)) < 0.015


def test_int8_storage_is_four_times_smaller():
    lin = nn.Linear(1024, 768)
    q = WeightOnlyInt8Linear.from_linear(lin)
    assert q.weight.dtype == torch.int8 and q.weight.shape == (768, 1024)
    assert q.bias.dtype == torch.float32  # kept in float
    assert not list(q.parameters())  # buffers only: nothing to train
    fp32_bytes = lin.weight.numel() * lin.weight.element_size()
    int8_bytes = q.weight.numel() * q.weight.element_size() + \
        q.scales.numel() * q.scales.element_size()
    assert 3.9 < fp32_bytes / int8_bytes <= 4.0


def test_quantize_weight_per_row_and_zero_rows():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different size
    w[3] = 0.0
    q, scales = quantize_weight_int8(w)
    assert q.abs().max() <= 127 and (q[3] == 0).all() and torch.isfinite(scales).all()
    # Per-row scales: every row keeps ~1% relative error, whatever its magnitude.
    deq = q.float() * scales.float()[:, None]
    for i in range(16):
        if i != 3:
            assert rel_error(deq[i], w[i]) < 0.02
    assert quantization_error(torch.randn(256, 256)) < 0.01


# ------------------------------------------------------------ a quantized GPT
@pytest.mark.parametrize("preset", ["gpt-nano", "llama-nano"])
def test_quantized_gpt_logits_and_cached_generation(preset):
    model = tiny_gpt(preset)
    idx = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(idx)
    quantize_int8(model)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert isinstance(model.lm_head, WeightOnlyInt8Linear)
    with torch.no_grad():
        logits = model(idx)
    assert rel_error(logits, ref) < 0.03

    # setup_cache must not take the int8 lm_head's dtype for the cache.
    model.setup_cache(1, 32)
    assert model.transformer.h[0].attn.kv_cache.k.dtype == torch.float32
    model.clear_cache()

    # Greedy decoding through generate (KV cache) equals the argmax of the same
    # steps done by hand, whose logits match a full uncached forward.
    prompt = idx[:1, :5]
    toks = [int(t) for t in generate(model, prompt, 10, SamplingConfig(temperature=0.0))]
    assert len(toks) == 10
    with torch.inference_mode():
        model.setup_cache(1, 15)
        steps = [prefill(model, prompt)]
        for i, t in enumerate(toks[:-1]):
            steps.append(decode_one_token(model, torch.tensor([t]), 5 + i))
        model.clear_cache()
        cached = torch.cat(steps)  # (10, V)
        full = model(torch.cat([prompt, torch.tensor([toks[:-1]])], dim=1))[0, 4:]  # (10, V)
    assert cached.argmax(-1).tolist() == toks
    assert rel_error(cached, full) < 0.01


def test_tied_lm_head_gets_its_own_int8_copy():
    model = tiny_gpt("gpt-nano")
    assert model.lm_head.weight is model.transformer.wte.weight
    wte = model.transformer.wte.weight.detach().clone()
    quantize_int8(model)
    emb = model.transformer.wte.weight
    assert isinstance(emb, nn.Parameter) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.detach(), wte, rtol=0, atol=0)  # the embedding is untouched
    assert model.lm_head.weight.dtype == torch.int8
    assert rel_error(model.lm_head.dequantize(), wte) < 0.015


def test_untied_and_skip_and_shared_weights():
    model = tiny_gpt("llama-nano")
    assert model.lm_head.weight is not model.transformer.wte.weight
    quantize_int8(model, skip=("lm_head", "transformer.h.1"))
    assert isinstance(model.lm_head, nn.Linear)
    assert isinstance(model.transformer.h[0].attn.c_attn, WeightOnlyInt8Linear)
    assert isinstance(model.transformer.h[1].mlp.c_proj, nn.Linear)

    # Linears sharing one weight share one int8 copy.
    shared = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    shared[1].weight = shared[0].weight
    quantize_int8(shared)
    assert shared[0].weight is shared[1].weight and shared[0].bias is not shared[1].bias


def test_bf16_model_then_int8():
    model = tiny_gpt("gpt-nano").to(torch.bfloat16)
    quantize_int8(model)
    idx = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))
    toks = list(generate(model, idx, 4, SamplingConfig(temperature=0.0)))
    assert len(toks) == 4
    with torch.no_grad():
        assert model(idx).dtype == torch.bfloat16


# ------------------------------------------------------------ the CLI
def test_cli_generate_quantize_int8(tmp_path, capsys):
    from lmlab.cli import main
    from lmlab.loading import load_for_inference
    from lmlab.models.weights import TOKENIZER_FILE
    from lmlab.tokenizer import Tokenizer
    from lmlab.train.checkpoint import save_checkpoint

    tok = Tokenizer.train(["the quick brown fox jumps over the lazy dog\n"] * 3, kind="char",
                          vocab_size=VOCAB, show_progress=False)
    ckpt = save_checkpoint(tmp_path / "run", 1, tiny_gpt("gpt-nano"), tokenizer_json=None)
    tok.save(ckpt / TOKENIZER_FILE)

    model = load_for_inference(tmp_path / "run", None, "float32", "int8").model
    assert isinstance(model.lm_head, WeightOnlyInt8Linear)
    code = main(["generate", str(tmp_path / "run"), "--prompt", "the ", "--greedy",
                 "--max-new-tokens", "12", "--quantize", "int8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("the ") and "tokens/s" in err


def test_cli_generate_quantize_int4(tmp_path, capsys):
    from lmlab.cli import main
    from lmlab.loading import load_for_inference
    from lmlab.models.weights import TOKENIZER_FILE
    from lmlab.tokenizer import Tokenizer
    from lmlab.train.checkpoint import save_checkpoint

    tok = Tokenizer.train(["the quick brown fox jumps over the lazy dog\n"] * 3, kind="char",
                          vocab_size=VOCAB, show_progress=False)
    ckpt = save_checkpoint(tmp_path / "run", 1, tiny_gpt("gpt-nano"), tokenizer_json=None)
    tok.save(ckpt / TOKENIZER_FILE)
    model = load_for_inference(tmp_path / "run", None, "float32", "int4").model
    assert isinstance(model.transformer.h[0].mlp.c_fc, WeightOnlyInt4Linear)
    # The output layer stays in 8 bits, where 4 cost the most accuracy.
    assert isinstance(model.lm_head, WeightOnlyInt8Linear)
    code = main(["generate", str(tmp_path / "run"), "--prompt", "the ", "--greedy",
                 "--max-new-tokens", "12", "--quantize", "int4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("the ") and "tokens/s" in err


# ------------------------------------------------------------ int4
def test_int4_groups_round_to_the_nearest_code():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    q, scale, zero = quantize_weight_int4(w, group_size=32)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.shape == (64, 4)
    deq = (q.view(64, 4, 32).float() - 8) * scale.float()[..., None] + zero.float()[..., None]
    # Every value lies within half a step (plus bf16 slack) of its group's grid.
    err = (deq.view(64, 128) - w).abs().view(64, 4, 32)
    assert bool((err <= scale.float()[..., None] * 0.5 + 1e-2).all())
    assert 0.03 < rel_error(deq.view(64, 128), w) < 0.12  # ~6-8% for Gaussian weights
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize_weight_int4(torch.randn(8, 48), group_size=32)
    # pack_rows / unpack_rows round-trip exactly.
    rows = pack_rows(q, scale.float(), zero.float())
    q2, s2, z2 = unpack_rows(rows, 128)
    assert torch.equal(q2, q) and torch.equal(s2, scale.float()) and torch.equal(z2, zero.float())


@pytest.mark.parametrize("use_kernel", [True, False], ids=["kernel", "dequantize"])
@pytest.mark.parametrize("shape", [(100, 64), (384, 512)], ids=["rows100", "rows384"])
def test_int4_linear_close_to_float(use_kernel, shape):
    torch.manual_seed(0)
    N, K = shape  # 100 rows: padded to 128 inside, cut off on the way out
    lin = nn.Linear(K, N, bias=True)
    q = WeightOnlyInt4Linear.from_linear(lin, use_kernel=use_kernel)
    for rows in (1, 7, 80):  # 80 exceeds the kernel's row limit: the plain path
        x = torch.randn(rows, K)
        with torch.no_grad():
            out, ref = q(x), lin(x)
            exact = nn.functional.linear(x, q.dequantize(), lin.bias)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert rel_error(out, ref) < 0.12
        # The kernel multiplies by the same dequantized weight, with bf16 activations.
        assert rel_error(out, exact) < (0.01 if use_kernel and rows <= 32 else 1e-5)


def test_int4_kernel_layout_matches_torch():
    """lmlab's pack/unpack of the CPU kernel's layout agrees with torch's own packing op."""
    from lmlab.models import quantize as qmod

    if qmod._INT4_PACK is None:
        pytest.skip("this torch build has no CPU int4 packing op")
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (192, 96), dtype=torch.uint8, generator=gen)
    theirs = qmod._INT4_PACK(q.int(), 1)
    assert torch.equal(qmod._pack_int4_layout(q), theirs)
    assert torch.equal(qmod._unpack_int4_layout(theirs), q)
    assert qmod._kernel_layout_ok()


@pytest.mark.parametrize("preset", ["gpt-nano", "llama-nano"])
def test_int4_gpt_logits_and_generation(preset):
    model = tiny_gpt(preset)
    idx = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(idx)
    wte = model.transformer.wte.weight.detach().clone()
    quantize_int4(model)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert isinstance(model.lm_head, WeightOnlyInt8Linear)  # the output layer: 8 bits
    assert isinstance(model.transformer.h[0].attn.c_attn, WeightOnlyInt4Linear)
    torch.testing.assert_close(model.transformer.wte.weight.detach(), wte, rtol=0, atol=0)
    with torch.no_grad():
        logits = model(idx)
    assert rel_error(logits, ref) < 0.15
    toks = list(generate(model, idx[:1, :5], 6, SamplingConfig(temperature=0.0)))
    assert len(toks) == 6


def test_int4_output_layer_in_4_bits_when_asked():
    model = tiny_gpt("llama-nano")
    quantize_int4(model, head_int8=False)
    assert isinstance(model.lm_head, WeightOnlyInt4Linear)


def test_int4_falls_back_to_int8_when_groups_do_not_fit():
    net = nn.Sequential(nn.Linear(48, 64), nn.Linear(64, 32))
    quantize_int4(net, group_size=32)
    assert isinstance(net[0], WeightOnlyInt8Linear)  # 48 inputs: not whole groups of 32
    assert isinstance(net[1], WeightOnlyInt4Linear)
    with pytest.raises(ValueError, match="group size"):
        quantize_int4(nn.Sequential(nn.Linear(64, 64)), group_size=48)
