"""Parity with Hugging Face GPT-2 from a tiny random config (offline)."""

import pytest
import torch

from lmlab.config import GPTConfig
from lmlab.interop.hf_gpt2 import from_hf_gpt2, hf_gpt2_config, to_hf_gpt2
from lmlab.models.gpt import GPT
from lmlab.train.checkpoint import model_state

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
