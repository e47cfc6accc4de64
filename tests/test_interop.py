"""Parity with Hugging Face GPT-2 from a tiny random config (offline)."""

import pytest
import torch

from lmlab.config import GPTConfig
from lmlab.interop.hf_gpt2 import from_hf_gpt2, hf_gpt2_config, to_hf_gpt2
from lmlab.models.gpt import GPT
from lmlab.models.weights import model_state

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tied", [True, False])
def test_hf_gpt2_logits_match_both_ways(tied):
    cfg = GPTConfig.from_name("gpt-nano", vocab_size=101, block_size=24, tie_embeddings=tied)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_gpt2_config(cfg))).eval()
    ours = GPT(cfg).eval()
    sd = from_hf_gpt2(hf.state_dict())
    if tied:
        sd.pop("lm_head.weight")
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    ours.load_state_dict(sd)
    idx = torch.randint(0, 101, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)
    # ... and back: lmlab weights in a fresh HF model give the same logits.
    hf2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_gpt2_config(cfg))).eval()
    hf2.load_state_dict(to_hf_gpt2(model_state(ours)))
    with torch.no_grad():
        torch.testing.assert_close(hf2(idx).logits, ours(idx), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_kv_head,tied", [(2, False), (4, True), (1, False)])
def test_hf_llama_logits_match_both_ways(n_kv_head, tied):
    """Grouped-query attention, RoPE layout, SwiGLU and RMSNorm agree with HF Llama."""
    from lmlab.interop.hf_llama import from_hf_llama, hf_llama_config, to_hf_llama

    cfg = GPTConfig.from_name("llama-nano", vocab_size=101, block_size=32, n_kv_head=n_kv_head,
                              tie_embeddings=tied, rope_base=500.0)
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(**hf_llama_config(cfg))
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    ours = GPT(cfg).eval()
    sd = from_hf_llama(hf.state_dict(), cfg.n_layer)
    if tied:
        sd.pop("lm_head.weight", None)
    ours.load_state_dict(sd, strict=False)
    missing = set(ours.state_dict()) - set(sd) - ({"lm_head.weight"} if tied else set())
    assert not missing
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)
    hf2 = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf2.load_state_dict(to_hf_llama(model_state(ours), cfg))
    with torch.no_grad():
        torch.testing.assert_close(hf2(idx).logits, ours(idx), atol=1e-4, rtol=1e-4)
