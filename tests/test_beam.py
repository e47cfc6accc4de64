"""Beam search: the same ids (and scores) as Hugging Face ``generate(num_beams=...)`` with the
same weights, on a GPT-2-shaped and a Marian-shaped random model, over several settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.beam import BeamConfig, banned_ngrams, beam_search_gpt, beam_search_seq2seq, wide_topk
from lmlab.config import GPTConfig
from lmlab.errors import LmlabError
from lmlab.interop.hf_gpt2 import from_hf_gpt2, hf_gpt2_config
from lmlab.interop.hf_seq2seq import from_hf_seq2seq, seq2seq_config_from_hf
from lmlab.models.gpt import GPT
from lmlab.models.seq2seq import Seq2Seq
from lmlab.models.weights import load_weights

transformers = pytest.importorskip("transformers")

# A small vocabulary, so that the end token is often among the candidates and
# hypotheses finish at different lengths.
V, EOS, PAD = 23, 5, 1  # (HF fills finished rows with the end token when pad is 0)
SETTINGS = [
    dict(num_beams=4, length_penalty=1.0, early_stopping=False),
    dict(num_beams=4, length_penalty=2.0, early_stopping="never", num_return_sequences=2),
    dict(num_beams=3, length_penalty=0.5, early_stopping=True, no_repeat_ngram_size=2),
    dict(num_beams=5, length_penalty=1.0, early_stopping=False, min_new_tokens=4,
         num_return_sequences=5),
]


def _check(ours: list, hf_out, prompt_len: int, cfg: BeamConfig) -> None:
    """Each of our hypotheses equals HF's row (prompt, then the tokens, then padding), with
    the same score."""
    seqs, scores = hf_out.sequences, hf_out.sequences_scores
    n = cfg.num_return_sequences
    for b, hyps in enumerate(ours):
        assert len(hyps) == n
        for k, hyp in enumerate(hyps):
            row = seqs[b * n + k, prompt_len:].tolist()
            assert row[:len(hyp.tokens)] == hyp.tokens, (b, k)
            assert all(t == PAD for t in row[len(hyp.tokens):]), (b, k)
            assert hyp.score == pytest.approx(float(scores[b * n + k]), abs=1e-4)


def _gpt_pair(eos_scale: float = 1.0):
    """A random tiny GPT-2 and lmlab's copy; ``eos_scale`` lengthens the end token's
    (tied) embedding, which makes the end likelier."""
    cfg = GPTConfig.from_name("gpt-nano", vocab_size=V, block_size=64)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_gpt2_config(cfg))).eval()
    with torch.no_grad():
        hf.transformer.wte.weight[EOS] *= eos_scale
    ours = GPT(cfg).eval()
    sd = from_hf_gpt2(hf.state_dict())
    sd.pop("lm_head.weight", None)
    load_weights(ours, sd, Path("hf"))
    return hf, ours


@pytest.mark.parametrize("setting", SETTINGS)
def test_gpt_beam_search_matches_transformers(setting):
    hf, ours = _gpt_pair()
    cfg = BeamConfig(max_new_tokens=10, **setting)
    g = torch.Generator().manual_seed(2)
    for batch in ([[7, 3, 9]], torch.randint(6, V, (3, 6), generator=g).tolist()):
        got = beam_search_gpt(ours, batch, cfg, eos_token_id=EOS, pad_token_id=PAD)
        want = hf.generate(torch.tensor(batch), attention_mask=torch.ones(len(batch),
                           len(batch[0]), dtype=torch.long), do_sample=False,
                           max_new_tokens=cfg.max_new_tokens, eos_token_id=EOS,
                           pad_token_id=PAD, output_scores=True, return_dict_in_generate=True,
                           **setting)
        _check(got, want, len(batch[0]), cfg)


def test_gpt_beam_search_with_prompts_of_different_lengths():
    hf, ours = _gpt_pair()
    cfg = BeamConfig(num_beams=4, max_new_tokens=8)
    prompts = [[7, 3, 9, 11, 4], [8, 2], [13, 6, 6]]
    got = beam_search_gpt(ours, prompts, cfg, eos_token_id=EOS, pad_token_id=PAD)
    for prompt, hyps in zip(prompts, got, strict=True):  # each alone, against HF
        want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                           dtype=torch.long), num_beams=4, do_sample=False, max_new_tokens=8,
                           eos_token_id=EOS, pad_token_id=PAD, output_scores=True,
                           return_dict_in_generate=True)
        _check([hyps], want, len(prompt), cfg)


def _marian_pair(weight_std: float | None = None, eos_bias: float = 0.0):
    """A random tiny Marian and lmlab's copy; ``weight_std`` redraws its matrices wider
    (outputs that depend more on the source), ``eos_bias`` makes the end likelier."""
    torch.manual_seed(0)
    hf = transformers.MarianMTModel(transformers.MarianConfig(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
        decoder_ffn_dim=48, max_position_embeddings=40, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=PAD, forced_eos_token_id=None, scale_embedding=True)).eval()
    with torch.no_grad():
        if weight_std is not None:
            for name, p in hf.named_parameters():
                if p.dim() > 1 and "embed_positions" not in name:  # positions: sinusoids
                    p.normal_(0.0, weight_std)
        hf.final_logits_bias[0, EOS] = eos_bias
    cfg_model = seq2seq_config_from_hf(hf.config.to_dict())
    ours = Seq2Seq(cfg_model).eval()
    load_weights(ours, from_hf_seq2seq(hf.state_dict(), cfg_model), Path("hf"))
    return hf, ours


def _marian_check(hf, ours, sources: list[list[int]], cfg: BeamConfig, setting: dict) -> None:
    got = beam_search_seq2seq(ours, sources, cfg)
    S = max(map(len, sources))
    src = torch.full((len(sources), S), PAD)
    mask = torch.zeros(len(sources), S, dtype=torch.long)
    for i, s in enumerate(sources):
        src[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    want = hf.generate(src, attention_mask=mask, do_sample=False,
                       max_new_tokens=cfg.max_new_tokens, output_scores=True,
                       return_dict_in_generate=True, **setting)
    _check(got, want, 1, cfg)  # HF's rows begin with the decoder's start token


@pytest.mark.parametrize("setting", SETTINGS)
def test_marian_beam_search_matches_transformers(setting):
    hf, ours = _marian_pair()
    cfg = BeamConfig(max_new_tokens=10, **setting)
    _marian_check(hf, ours, [[7, 3, 9, 11, 4, 5], [8, 2, 14, 5], [13, 6, 6, 19, 21, 9, 5]],
                  cfg, setting)


@pytest.mark.parametrize("setting", [SETTINGS[0], SETTINGS[2]])
def test_done_inputs_leave_the_batch_and_the_rest_match_transformers(setting, monkeypatch):
    """Outputs that end at different steps (an end token made likelier): an input whose
    search is over leaves the batch, its cache rows with it, and every input's
    hypotheses still equal Hugging Face's, which decodes all rows to the end. Step 0
    reads each input once, not once per beam."""
    import lmlab.beam as beam

    rows: list[int] = []  # the rows each reorder keeps
    read: list[int] = []  # the rows each step reads
    for cls in (beam.GPTStepper, beam.Seq2SeqStepper):
        def reorder(self, r, _original=cls.reorder):
            rows.append(r.numel())
            _original(self, r)

        def logits(self, step, sequences, _original=cls.logits):
            read.append(sequences.size(0))
            return _original(self, step, sequences)
        monkeypatch.setattr(cls, "reorder", reorder)
        monkeypatch.setattr(cls, "logits", logits)
    cfg = BeamConfig(max_new_tokens=12, **setting)
    K = cfg.num_beams
    g = torch.Generator().manual_seed(3)
    hf, ours = _marian_pair(weight_std=0.3, eos_bias=4.0)
    sources = [[*torch.randint(6, V, (n,), generator=g).tolist(), EOS] for n in (3, 8, 5, 6, 4, 7)]
    _marian_check(hf, ours, sources, cfg, setting)
    # Step 0 reads each source once; its rows are then copied for the beams.
    assert read[:2] == [6, 6 * K] and rows[0] == 6 * K, (read, rows)
    assert rows[-1] < rows[0], rows  # inputs left the batch before the last step
    rows.clear(), read.clear()
    hf, ours = _gpt_pair(eos_scale=6.0)
    # Prompts of different lengths: left-padded, and the rows' pad offsets leave too.
    prompts = [torch.randint(6, V, (n,), generator=g).tolist() for n in (4, 2, 5, 3, 4, 6)]
    got = beam_search_gpt(ours, prompts, cfg, eos_token_id=EOS, pad_token_id=PAD)
    assert read[:2] == [6, 6 * K], read  # each prompt through the model once
    assert rows[-1] < rows[0], rows
    for prompt, hyps in zip(prompts, got, strict=True):  # each alone, against HF
        want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(
                           1, len(prompt), dtype=torch.long), do_sample=False,
                           max_new_tokens=cfg.max_new_tokens, eos_token_id=EOS,
                           pad_token_id=PAD, output_scores=True, return_dict_in_generate=True,
                           **setting)
        _check([hyps], want, len(prompt), cfg)


def test_wide_topk_is_topk():
    """The block-maxima top-k gives topk's values and indices: whole blocks and a tail,
    beams shut out by a large negative score (step 0), banned tokens at -inf, and a row
    whose best are all in one block."""
    torch.manual_seed(0)
    for width in (32000, 32000 + 77, 4 * 2000):
        x = torch.randn(6, width)
        x[0, : width // 2] -= 1e9  # the first beams shut, as at step 0
        x[1, torch.randperm(width)[:width // 3]] = float("-inf")
        x[2, 640:648] += 50  # the best eight in one block
        want = x.topk(8, dim=1)
        got = wide_topk(x, 8)
        assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)
    # Ties (bf16 or quantized scores have them): topk's own picks and order.
    tied = torch.randn(6, 32000).to(torch.bfloat16).float()
    tied[0] = 0.0
    tied[1, 5000:5010] = 9.0  # a tie across the cut
    for row in (tied, tied[:, :-3]):
        want = row.topk(8, dim=1)
        got = wide_topk(row, 8)
        assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)
    narrow = torch.randn(3, 200)  # too few blocks: plain topk
    assert torch.equal(wide_topk(narrow, 8)[1], narrow.topk(8, dim=1).indices)


def test_move_rows_is_index_select(monkeypatch):
    """Rows moved in place give what an index_select gives: beams that stay, follow
    another, swap (a cycle) or rotate, along the first dimension and along another of a
    view that does not cover its buffer (a cache's written positions); past
    ``MOVE_ROWS_MAX`` moved rows nothing is done and False says so."""
    import lmlab.models.gpt as gpt

    g = torch.Generator().manual_seed(0)
    orders = [[0, 1, 2, 3], [0, 0, 1, 2], [1, 0, 2, 3], [1, 2, 0, 3], [3, 3, 3, 3],
              [2, 3, 0, 1], [1, 0, 3, 2, 4, 4, 6, 5]]
    orders += [torch.randint(0, 12, (12,), generator=g).tolist() for _ in range(20)]
    orders += [torch.randperm(12, generator=g).tolist() for _ in range(10)]
    for rows in orders:
        n = len(rows)
        t = torch.randn(n, 3, 5, generator=g)
        want = t.index_select(0, torch.tensor(rows))
        assert gpt.move_rows(t, rows) and torch.equal(t, want), rows
        buf = torch.randn(2, n, 4, 7, generator=g)
        view = buf[:, :, :, :3]  # rows along dimension 1, positions cut short
        want, tail = view.index_select(1, torch.tensor(rows)), buf[:, :, :, 3:].clone()
        assert gpt.move_rows(view, rows, dim=1) and torch.equal(view, want), rows
        assert torch.equal(buf[:, :, :, 3:], tail)  # nothing past the view touched
    monkeypatch.setattr(gpt, "MOVE_ROWS_MAX", 2)
    t = torch.randn(4, 3)
    before = t.clone()
    assert not gpt.move_rows(t, [1, 2, 3, 0]) and torch.equal(t, before)


@pytest.mark.parametrize("setting", SETTINGS[:3])
def test_marian_beam_search_through_block_maxima_matches_transformers(setting, monkeypatch):
    """The same ids and scores with the candidates found by ``wide_topk`` (blocks of 2 make
    this vocabulary wide enough for it)."""
    import lmlab.beam

    monkeypatch.setattr(lmlab.beam, "TOPK_BLOCK", 2)
    hf, ours = _marian_pair()
    cfg = BeamConfig(max_new_tokens=10, **setting)
    _marian_check(hf, ours, [[7, 3, 9, 11, 4, 5], [8, 2, 14, 5], [13, 6, 6, 19, 21, 9, 5]],
                  cfg, setting)


def test_no_repeat_ngram_bans_what_would_repeat():
    seqs = torch.tensor([[1, 2, 3, 1, 2], [4, 4, 4, 4, 4]])
    logp = torch.zeros(2, 6)
    banned_ngrams(seqs, 3, logp)
    assert logp[0].isinf().nonzero().flatten().tolist() == [3]  # "1 2" was followed by 3
    assert logp[1].isinf().nonzero().flatten().tolist() == [4]


def test_bad_settings_are_one_line_errors():
    with pytest.raises(LmlabError, match="--num-return-sequences must be between 1 and"):
        BeamConfig(num_beams=2, num_return_sequences=3)
    _, ours = _gpt_pair()
    with pytest.raises(LmlabError, match="exceed the context of 64"):
        beam_search_gpt(ours, [[1] * 60], BeamConfig(max_new_tokens=10), EOS)


def test_generate_num_beams_on_the_command_line(char_shards, tmp_path, capsys):
    from lmlab.cli import main
    from lmlab.train.loop import TrainConfig, Trainer

    run = tmp_path / "run"
    Trainer(TrainConfig(data=str(char_shards), out=str(run), preset="gpt-nano", block_size=32,
                        batch_size=8, max_steps=4, eval_interval=4, eval_tokens=512,
                        threads=1), progress=False).fit()
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "The ", "--num-beams", "3",
                 "--num-return-sequences", "2", "--max-new-tokens", "40"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("--- beam ") == 2 and "(score -" in captured.out
    # 4 prompt tokens + 40 new ones do not fit a context of 32: the budget is lowered.
    assert "--max-new-tokens 40 lowered to 28" in captured.err
    assert main(["generate", str(run), "--num-beams", "2", "--num-return-sequences", "3"]) == 2
    assert "--num-return-sequences must be between 1 and --num-beams" in capsys.readouterr().err


def test_search_texts_batches_by_length_and_keeps_the_input_order():
    from lmlab.beam import search_texts

    class Ids:  # the ids as text: what is checked is where each output lands
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    _, ours = _marian_pair()
    cfg = BeamConfig(num_beams=3, max_new_tokens=6)
    sources = [[7, 3, 9, 11, 4, 13, 5], [8, 5], [13, 6, 6, 19, 5], [9, 5], [7, 7, 7, 5]]
    batched = search_texts(ours, Ids(), sources, cfg, batch_size=2)
    alone = [search_texts(ours, Ids(), [s], cfg)[0] for s in sources]
    assert [h[0][0] for h in batched] == [h[0][0] for h in alone]
    assert [h[0][1] for h in batched] == pytest.approx([h[0][1] for h in alone], abs=1e-5)


def test_a_search_runs_in_inference_mode_and_the_model_trains_after_it():
    """Beam search runs under ``torch.inference_mode`` (less to do per call than
    ``no_grad``); what it leaves on the model for the next search, the stacked
    self-attention projections, is made outside it: a weight with a version counter
    (which oneDNN's packed copy is kept by), and a model that trains afterwards."""
    _, ours = _marian_pair()
    cfg = BeamConfig(num_beams=3, max_new_tokens=5)
    first = beam_search_seq2seq(ours, [[7, 3, 9, 5], [8, 2, 5]], cfg)
    stacked = ours.decoder.layers[0].self_attn._qkv.built[1]
    assert not stacked.weight.is_inference()
    again = beam_search_seq2seq(ours, [[7, 3, 9, 5], [8, 2, 5]], cfg)
    assert ours.decoder.layers[0].self_attn._qkv.built[1] is stacked  # kept, not rebuilt
    assert [[h.tokens for h in hs] for hs in again] == [[h.tokens for h in hs] for hs in first]
    ours.train()
    src, tgt = torch.tensor([[7, 3, 9, 5]]), torch.tensor([[PAD, 4, 6]])
    ours(src, tgt).sum().backward()
    assert ours.decoder.layers[0].self_attn.q_proj.weight.grad is not None
    ours.eval()
