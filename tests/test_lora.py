"""LoRA adapters: PEFT loads lmlab's adapters on lmlab's HF export with the same logits,
lmlab loads PEFT's, merging keeps the logits, and only the adapter trains."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.config import BertConfig, GPTConfig, Seq2SeqConfig
from lmlab.errors import LmlabError
from lmlab.models.bert import Bert
from lmlab.models.gpt import GPT
from lmlab.models.lora import (
    LoraConfig,
    add_lora,
    count_trainable,
    load_adapter,
    merge_lora,
    save_adapter,
    sites,
)
from lmlab.models.seq2seq import Seq2Seq

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

LLAMA = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                  norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, intermediate_size=48,
                  tie_embeddings=True, dropout=0.0)
GPT2 = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0)


def randomize(model: torch.nn.Module) -> None:
    """Adapters start with B = 0 (no change): give every A and B random values."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.2)


def hf_causal(model: GPT):
    from lmlab.interop.hf_folder import hf_config_for
    from lmlab.interop.hf_gpt2 import to_hf_gpt2
    from lmlab.interop.hf_llama import to_hf_llama
    from lmlab.models.weights import model_state

    cfg = model.config
    sd = model_state(model)
    hf_cfg = transformers.AutoConfig.for_model(**hf_config_for(cfg))
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    theirs = to_hf_gpt2(sd) if cfg.norm == "layernorm" else to_hf_llama(sd, cfg)
    hf.load_state_dict(theirs, strict=False)
    return hf.eval()


@pytest.mark.parametrize("cfg,targets", [
    (LLAMA, ("all-linear",)),
    (LLAMA, ("q_proj", "v_proj")),
    (GPT2, ("c_attn", "c_proj")),
])
def test_peft_loads_lmlab_adapter_with_same_logits(tmp_path, cfg, targets):
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    hf = hf_causal(ours)
    lora = LoraConfig(rank=4, alpha=8, dropout=0.0, targets=targets)
    add_lora(ours, lora)
    randomize(ours)
    save_adapter(ours, tmp_path / "adapter", lora, base="tiny")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(saved["target_modules"]) <= set(targets) | {"q_proj", "k_proj", "v_proj",
                                                            "o_proj", "gate_proj", "up_proj",
                                                            "down_proj"}
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        want = peft_model(x).logits
        got = ours(x)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # The adapter changes the model (it is not a no-op that passes trivially).
    with torch.no_grad(), peft_model.disable_adapter():
        assert (peft_model(x).logits - want).abs().max() > 1e-3


def test_lmlab_loads_peft_adapter(tmp_path):
    torch.manual_seed(0)
    ours = GPT(LLAMA).eval()
    hf = hf_causal(ours)
    pcfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"],
                           lora_dropout=0.0, init_lora_weights=False)
    peft_model = peft.get_peft_model(hf, pcfg).eval()
    peft_model.save_pretrained(str(tmp_path / "peft"))
    load_adapter(ours, tmp_path / "peft")
    x = torch.randint(0, LLAMA.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.allclose(ours(x), peft_model(x).logits, atol=1e-4)


def test_bert_and_seq2seq_adapters_match_peft(tmp_path):
    from lmlab.interop.hf_bert import hf_bert_config, to_hf_bert
    from lmlab.interop.hf_seq2seq import hf_seq2seq_config, to_hf_seq2seq
    from lmlab.models.weights import model_state

    torch.manual_seed(0)
    bcfg = BertConfig(vocab_size=90, block_size=32, n_layer=2, n_head=4, n_embd=32,
                      intermediate_size=64, dropout=0.0, attn_dropout=0.0)
    bert = Bert(bcfg).eval()
    hf = transformers.BertModel(transformers.BertConfig(**hf_bert_config(bcfg))).eval()
    theirs = {k.removeprefix("bert."): v for k, v in
              to_hf_bert({f"bert.{k}": v for k, v in model_state(bert).items()}, 32).items()}
    hf.load_state_dict(theirs, strict=False)
    lora = LoraConfig(rank=2, alpha=4, dropout=0.0, targets=("query", "value", "dense"))
    add_lora(bert, lora)
    randomize(bert)
    save_adapter(bert, tmp_path / "bert", lora, base=None)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "bert")).eval()
    x = torch.randint(0, 90, (2, 7))
    with torch.no_grad():
        assert torch.allclose(bert(x), pm(x).last_hidden_state, atol=1e-4)

    scfg = Seq2SeqConfig(vocab_size=90, block_size=32, n_encoder_layer=2, n_decoder_layer=2,
                         n_head=4, n_embd=32, intermediate_size=64, dropout=0.0,
                         pad_token_id=0, eos_token_id=1, decoder_start_token_id=1)
    s2s = Seq2Seq(scfg).eval()
    arch, kwargs = hf_seq2seq_config(scfg)
    cls = transformers.MarianMTModel if arch == "marian" else \
        transformers.BartForConditionalGeneration
    conf = (transformers.MarianConfig if arch == "marian" else transformers.BartConfig)(**kwargs)
    hf2 = cls(conf).eval()
    hf2.load_state_dict(to_hf_seq2seq(model_state(s2s), scfg), strict=False)
    lora = LoraConfig(rank=2, alpha=4, dropout=0.0, targets=("q_proj", "v_proj", "fc1"))
    add_lora(s2s, lora)
    randomize(s2s)
    save_adapter(s2s, tmp_path / "s2s", lora, base=None)
    pm2 = peft.PeftModel.from_pretrained(hf2, str(tmp_path / "s2s")).eval()
    src = torch.randint(2, 90, (2, 6))
    dec = torch.randint(2, 90, (2, 5))
    with torch.no_grad():
        got = s2s(src, dec, torch.ones_like(src, dtype=torch.bool))
        want = pm2(input_ids=src, decoder_input_ids=dec).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_merge_keeps_logits_and_only_adapters_train():
    torch.manual_seed(0)
    model = GPT(LLAMA).eval()
    before = count_trainable(model).trainable
    add_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0))
    randomize(model)
    t = count_trainable(model)
    assert 0 < t.trainable < before / 5
    assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    x = torch.randint(0, LLAMA.vocab_size, (2, 10))
    with torch.no_grad():
        want = model(x)
        merge_lora(model)
        got = model(x)
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_sites_and_bad_targets():
    model = GPT(LLAMA)
    roles = {s.role for s in sites(model)}
    assert roles == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj", "lm_head"}
    with pytest.raises(LmlabError, match="no such module"):
        add_lora(model, LoraConfig(targets=("query",)))


def test_adapters_train_under_bf16_autocast():
    torch.manual_seed(0)
    model = GPT(LLAMA)
    add_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0))
    randomize(model)
    x = torch.randint(0, LLAMA.vocab_size, (2, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
