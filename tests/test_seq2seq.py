"""The encoder-decoder Transformer: parity with HF Marian and BART both ways, the decoder's
caches, the registry record, and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.config import Seq2SeqConfig, load_config
from lmlab.errors import LmlabError
from lmlab.interop.hf_seq2seq import (
    from_hf_seq2seq,
    hf_seq2seq_config,
    seq2seq_config_from_hf,
    to_hf_seq2seq,
)
from lmlab.models.registry import build_model, context_of, family_of, kind_of
from lmlab.models.seq2seq import Seq2Seq, sinusoidal_positions
from lmlab.models.weights import load_weights, model_state

transformers = pytest.importorskip("transformers")

V = 97


def _hf(arch: str, **kw):
    """A random tiny HF Marian or BART model (eval mode, dropout off)."""
    base = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                decoder_ffn_dim=48, max_position_embeddings=40, pad_token_id=1,
                eos_token_id=2, decoder_start_token_id=1, forced_eos_token_id=None)
    base.update(kw)
    torch.manual_seed(0)
    if arch == "marian":
        return transformers.MarianMTModel(transformers.MarianConfig(**base)).eval()
    base.update(bos_token_id=0, decoder_start_token_id=2)
    return transformers.BartForConditionalGeneration(transformers.BartConfig(**base)).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, V, (3, 11), generator=g)
    mask = torch.ones_like(src)
    mask[1, 7:] = 0  # a shorter source, right-padded
    src[1, 7:] = 1
    tgt = torch.randint(3, V, (3, 9), generator=g)
    return src, mask, tgt


def _nano(norm_first: bool = False) -> Seq2Seq:
    """A random seq2seq-nano without dropout (seed 0)."""
    cfg = Seq2SeqConfig.from_name("seq2seq-nano", vocab_size=V, norm_first=norm_first,
                                  dropout=0.0)
    torch.manual_seed(0)
    return Seq2Seq(cfg)


CASES = [("marian", dict(activation_function="swish", scale_embedding=True)),
         ("marian", dict(activation_function="gelu", scale_embedding=False, d_model=30,
                         encoder_attention_heads=3, decoder_attention_heads=3)),
         ("bart", dict(activation_function="gelu")),
         ("bart", dict(activation_function="relu", scale_embedding=True))]


@pytest.mark.parametrize("arch,kw", CASES)
def test_hf_marian_and_bart_logits_match_both_ways(arch, kw):
    hf = _hf(arch, **kw)
    cfg = seq2seq_config_from_hf(hf.config.to_dict())
    ours = Seq2Seq(cfg).eval()
    load_weights(ours, from_hf_seq2seq(hf.state_dict(), cfg), Path("hf"))
    src, mask, tgt = _inputs()
    with torch.no_grad():
        want = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        got = ours(src, tgt, mask)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # ... and back: lmlab's weights in a fresh HF model of the exported config.
    arch_out, kwargs = hf_seq2seq_config(cfg)
    assert arch_out == arch
    cls = {"marian": (transformers.MarianConfig, transformers.MarianMTModel),
           "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration)}[arch]
    hf2 = cls[1](cls[0](**kwargs)).eval()
    hf2.load_state_dict(to_hf_seq2seq(model_state(ours), cfg))
    with torch.no_grad():
        back = hf2(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(back, got, atol=1e-4, rtol=1e-4)


def test_marian_sinusoids_are_computed_not_stored():
    for dim in (32, 31):
        hf = _hf("marian", d_model=dim, encoder_attention_heads=1, decoder_attention_heads=1)
        stored = hf.model.encoder.embed_positions.weight
        assert torch.equal(sinusoidal_positions(40, dim), stored)


@pytest.mark.parametrize("norm_first,capacity", [(False, None), (True, None), (False, 9),
                                                (True, 7)])
def test_cached_decoding_equals_the_full_pass(norm_first, capacity):
    """Decoding with the cache: growing by concatenation, in buffers of the whole length,
    and in buffers too short (7 of 9 positions), which go on by concatenation."""
    model = _nano(norm_first).eval()
    src, mask, tgt = _inputs()
    with torch.no_grad():
        full = model(src, tgt, mask)
        memory = model.encode(src, mask)
        cache = model.new_cache(capacity)
        steps = [model.decode(tgt[:, :4], memory, mask, cache)]  # a chunk, then one by one
        steps += [model.decode(tgt[:, i:i + 1], memory, mask, cache) for i in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 9


def test_beams_read_their_sources_encoder_output_once():
    """Target rows grouped by source (a beam search's beams) against the encoder output
    repeated for every row: the same logits, with a row of cross-attention keys and
    values per source; when a source leaves, its rows and keys go together."""
    model = _nano().eval()
    src, mask, _ = _inputs()
    G = 2  # target rows to a source
    tgt = torch.randint(3, V, (3 * G, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        memory = model.encode(src, mask)  # (3, S, C)
        shared, repeated = model.new_cache(capacity=5), model.new_cache()
        wide, wide_mask = memory.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
        for i in range(4):
            step = tgt[:, i:i + 1]
            torch.testing.assert_close(model.decode(step, memory, mask, shared),
                                       model.decode(step, wide, wide_mask, repeated),
                                       atol=1e-5, rtol=1e-5)
        assert shared.layers[0].cross_kv[0].size(0) == 3
        shared.reorder(torch.tensor([1, 0, 2, 3, 5, 4]))  # beams swap within their source
        repeated.reorder(torch.tensor([1, 0, 2, 3, 5, 4]))
        tgt = tgt[[1, 0, 2, 3, 5, 4]]
        rows, sources = torch.tensor([3, 2, 5, 5]), torch.tensor([1, 2])  # source 0 leaves
        shared.reorder(rows, sources)
        repeated.reorder(rows, rows)
        torch.testing.assert_close(
            model.decode(tgt[rows, 4:5], memory[sources], mask[sources], shared),
            model.decode(tgt[rows, 4:5], wide[rows], wide_mask[rows], repeated),
            atol=1e-5, rtol=1e-5)


def _steps_alike(model, memory, mask, caches, G, g, steps, leave_at, stay):
    """Decode ``steps`` random tokens through two caches of a beam search's rows (G a
    source, each cache already reordered past step 0), checking that they give the same
    logits; after each step the beams follow random others of their source, and after
    step ``leave_at`` only the sources ``stay`` remain. Returns the last rows, memory
    and mask."""
    for step in range(steps):
        B = memory.size(0)
        tokens = torch.randint(3, V, (B * G, 1), generator=g)
        torch.testing.assert_close(model.decode(tokens, memory, mask, caches[0]),
                                   model.decode(tokens, memory, mask, caches[1]),
                                   atol=1e-5, rtol=1e-5)
        rows = (torch.arange(B)[:, None] * G + torch.randint(0, G, (B, G), generator=g))
        sources = torch.tensor(stay) if step == leave_at else None
        if sources is not None:
            rows, memory, mask = rows[sources], memory[sources], mask[sources]
        for cache in caches:
            cache.reorder(rows.view(-1), sources)
    return rows, memory, mask


def test_beam_tree_cache_gives_what_moving_the_rows_gives():
    """A beam search's cache kept as a tree (``new_cache(beams=G)``: the beams' keys and
    values never move, each beam attends to its ancestors' slots) against one that
    moves its rows: the same logits through step 0 (a row per source), the first
    reorder (the source's row to its beams), beams following random others of their
    source, and a source leaving; garbage in the slots not yet written changes
    nothing. It reads one token a step."""
    model = _nano().eval()
    src, mask, _ = _inputs()
    G, g = 3, torch.Generator().manual_seed(5)
    with torch.no_grad():
        memory = model.encode(src, mask)  # (3, S, C)
        tree, moving = model.new_cache(capacity=8, beams=G), model.new_cache(capacity=8)
        start = torch.full((3, 1), model.config.decoder_start_token_id)
        torch.testing.assert_close(model.decode(start, memory, mask, tree),
                                   model.decode(start, memory, mask, moving))
        for layer in tree.layers:  # the slots past position 0 are written before read
            for buf in layer.tree_kv:  # keys, then values
                assert torch.equal(buf[:, :, 1:G], torch.zeros_like(buf[:, :, 1:G]))
                buf[:, :, G:] = float("nan")
        for cache in (tree, moving):
            cache.reorder(torch.arange(3).repeat_interleave(G))
        rows, memory, mask = _steps_alike(model, memory, mask, (tree, moving), G, g,
                                          steps=6, leave_at=3, stay=[1, 2])
        assert tree.layers[0].tree_kv.size(1) == 2  # a buffer per source
        with pytest.raises(ValueError, match="one token a step"):
            model.decode(torch.ones(2 * G, 2, dtype=torch.long), memory, mask, tree)
        model.decode(torch.ones(2 * G, 1, dtype=torch.long), memory, mask, tree)  # the 8th
        with pytest.raises(ValueError, match="holds 8 positions"):
            model.decode(torch.ones(2 * G, 1, dtype=torch.long), memory, mask, tree)
        with pytest.raises(ValueError, match="after its first step"):
            model.new_cache(capacity=8, beams=G).reorder(rows.view(-1))


@pytest.mark.parametrize(("norm_first", "activation"), [(False, "relu"), (True, "gelu")])
def test_a_beam_step_with_its_calls_resolved_gives_the_module_path(norm_first, activation):
    """A beam tree's step at inference (``DecoderLayer.tree_step``: its products bound to
    their packed weights once a search, no module calls) against a cache that moves its
    rows through the modules, at the widths where oneDNN takes the products (256 wide,
    32 rows, then 24 when two sources leave); ReLU inside the product, GELU apart.
    With a hook on a layer, or under autocast, the tree's step goes module by module
    (and the hook runs)."""
    cfg = Seq2SeqConfig.from_name("seq2seq-mini", vocab_size=V, norm_first=norm_first,
                                  activation=activation, dropout=0.0)
    torch.manual_seed(0)
    model = Seq2Seq(cfg).eval()
    G, g = 4, torch.Generator().manual_seed(3)
    with torch.no_grad():  # biases start at 0: give them values to add
        for name, p in model.decoder.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1, generator=g)
    src = torch.randint(3, V, (8, 10), generator=g)
    mask = torch.ones_like(src)
    mask[2, 6:] = 0
    start = torch.full((8, 1), cfg.decoder_start_token_id)

    def started(cache):
        model.decode(start, memory, mask, cache)
        cache.reorder(torch.arange(8).repeat_interleave(G))
        return cache

    from lmlab.models import linear

    with torch.inference_mode():
        memory = model.encode(src, mask)
        tree, moving = started(model.new_cache(8, G)), started(model.new_cache(8))
        _, kept, kept_mask = _steps_alike(model, memory, mask, (tree, moving), G, g,
                                          steps=4, leave_at=1, stay=[0, 1, 3, 4, 6, 7])
        assert all(layer.plan.lean and layer.plan.rows == 6 * G for layer in tree.layers)
        calls = {"forward": 0, "onednn": 0}  # in one more step of the tree
        forward, onednn = linear.Linear.forward, linear._ONEDNN_ADD

        def counted(key, fn):
            return lambda *a, **kw: calls.__setitem__(key, calls[key] + 1) or fn(*a, **kw)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(linear.Linear, "forward", counted("forward", forward))
            mp.setattr(linear, "_ONEDNN_ADD", counted("onednn", onednn))
            model.decode(torch.randint(3, V, (6 * G, 1), generator=g), kept, kept_mask, tree)
        # The layers' products bound (out_proj and fc2 add inside oneDNN's pass); the
        # output layer's alone through Linear.forward.
        assert calls == {"forward": 1, "onednn": 2 * 3 if linear.onednn_enabled() else 0}
        seen = []
        hook = model.decoder.layers[1].register_forward_hook(lambda *_: seen.append(1))
        tokens = torch.randint(3, V, (8 * G, 1), generator=g)
        hooked = started(model.new_cache(8, G))
        torch.testing.assert_close(model.decode(tokens, memory, mask, hooked),
                                   model.decode(tokens, memory, mask, started(
                                       model.new_cache(8))), atol=1e-5, rtol=1e-5)
        hook.remove()
        assert len(seen) == 4 and not hooked.layers[1].plan.lean  # two steps, two caches
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = started(model.new_cache(8, G))
        assert not autocast.layers[0].plan.lean


@pytest.mark.parametrize("norm_first", [False, True])
def test_the_folded_cross_attention_gives_the_plain_ones(norm_first):
    """A beam search's cross-attention folded into its weights once (``fold_cross``)
    against the plain projections and attention: the same logits through the steps and
    a source leaving (the folded tensors follow it)."""
    model = _nano(norm_first).eval()
    src, mask, _ = _inputs()
    G, g = 3, torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in model.decoder.layers:  # biases start at 0: give them values to fold
            layer.encoder_attn.q_proj.bias.normal_(generator=g)
            layer.encoder_attn.out_proj.bias.normal_(generator=g)
        memory = model.encode(src, mask)
        folded, plain = model.new_cache(capacity=8, beams=G), model.new_cache(capacity=8, beams=G)
        plain.fold = False
        start = torch.full((3, 1), model.config.decoder_start_token_id)
        for cache in (folded, plain):
            model.decode(start, memory, mask, cache)
            cache.reorder(torch.arange(3).repeat_interleave(G))
        _, memory, mask = _steps_alike(model, memory, mask, (folded, plain), G, g,
                                       steps=5, leave_at=2, stay=[0, 2])
    assert all(layer.cross_folded[0].size(0) == 2 for layer in folded.layers)
    assert all(layer.cross_folded is None for layer in plain.layers)
    # Where its tensors would read too much more than the plain way, it does not fold.
    layer, kv = model.decoder.layers[0], folded.layers[0].cross_kv
    bias = folded.memory_bias(mask, model.config.n_head, torch.float32)
    with torch.no_grad():
        assert layer.folds(kv, bias, folded.layers[0])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("lmlab.models.seq2seq.FOLD_MAX_EXTRA_BYTES", -2**30)
            assert not layer.folds(kv, bias, folded.layers[0])
        # Nor with a boolean mask, nor under autocast (bf16 would take the residual).
        assert not layer.folds(kv, Seq2Seq.key_mask(mask), folded.layers[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not layer.folds(kv, bias, folded.layers[0])
    assert not layer.folds(kv, bias, folded.layers[0])  # gradients on: the plain way


def test_a_gradient_flows_through_a_reordered_cache():
    """Cached decoding under autograd, a reorder (rows that swap), one more step: the
    backward reads the keys and values as they were (the reorder makes new buffers)."""
    model = _nano()
    src, mask, tgt = _inputs()
    memory = model.encode(src, mask)
    cache = model.new_cache()
    first = model.decode(tgt[:, :3], memory, mask, cache)
    cache.reorder(torch.tensor([1, 0, 2]), torch.tensor([1, 0, 2]))
    later = model.decode(tgt[[1, 0, 2], 3:4], memory[[1, 0, 2]], mask[[1, 0, 2]], cache)
    (first.sum() + later.sum()).backward()
    assert model.decoder.layers[0].self_attn.k_proj.weight.grad is not None


def test_a_stacked_projection_made_in_inference_mode_is_packed_and_kept():
    """A beam search runs in inference mode, where a new tensor has no version counter:
    the stacked projection it makes is made outside it, so that oneDNN's packed copy
    (kept while the weight's counter stands still) is made once and reused."""
    from lmlab.models import linear
    from lmlab.models.seq2seq import Attention

    attn = Attention(Seq2SeqConfig.from_name("seq2seq-mini", vocab_size=V)).eval()
    x = torch.randn(32, 1, attn.q_proj.in_features)  # a beam step's rows, 256 wide
    with torch.inference_mode():
        stacked = attn.stacked_qkv()
        assert not stacked.weight.is_inference()
        first = attn.qkv(x)
        assert attn.stacked_qkv() is stacked
        if linear.onednn_enabled():
            packed = stacked.onednn_weight()
            assert packed is not stacked.weight and stacked.onednn_weight() is packed
    want = torch.cat([p(x) for p in (attn.q_proj, attn.k_proj, attn.v_proj)], dim=-1)
    torch.testing.assert_close(first, want.detach(), atol=1e-5, rtol=1e-5)


def test_inference_stacks_the_projections_and_attends_with_few_queries():
    """At inference the query, key and value projections are one product (rebuilt when a
    weight changes), and a decoding step's few queries attend without the fused
    kernel: both give what the training path gives."""
    from lmlab.models.seq2seq import few_query_attention

    attn = _nano().eval().decoder.layers[0].self_attn
    x = torch.randn(4, 3, attn.q_proj.in_features)
    parts = (attn.q_proj, attn.k_proj, attn.v_proj)
    with torch.no_grad():
        for _ in range(2):
            for got, p in zip(attn.projections(x), parts, strict=True):
                torch.testing.assert_close(got, p(x))
            attn.k_proj.weight.mul_(-1.5)  # in place: the stacked copy must follow
    attn.train()  # training: three products, the gradients apart; no stacked copy kept
    assert attn._qkv.built is None
    sum(t.sum() for t in attn.projections(x)).backward()
    assert all(p.weight.grad is not None for p in parts)
    q, k, v = (torch.randn(3, 4, T, 8) for T in (5, 7, 7))
    mask = torch.rand(3, 1, 1, 7) > 0.3
    mask[:, :, :, 0] = True  # a row sees at least one key
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    for m in (None, mask, additive, additive[0, 0]):  # boolean, additive, shared by rows
        torch.testing.assert_close(few_query_attention(q, k, v, m),
                                   torch.nn.functional.scaled_dot_product_attention(
                                       q, k, v, attn_mask=m), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_inference_fuses_into_the_products_with_the_same_values(norm_first, monkeypatch):
    """With every product on oneDNN (the thresholds lowered for this small model), the
    ReLU and the residual adds ride in the products and the source mask is made once:
    the values of the plain path, through a
    whole pass, cached steps, a reorder, a gradient through a cached call, and a mask
    changed in place."""
    from lmlab.models import linear as lin

    if not lin.onednn_enabled():
        pytest.skip("no oneDNN in this build of torch")
    model = _nano(norm_first).eval()  # ReLU
    src, mask, tgt = _inputs()
    with torch.no_grad():
        plain = model(src, tgt, mask)  # small products: F.linear, separate calls
        monkeypatch.setattr(lin, "ONEDNN_MIN_MACS", 0)
        torch.testing.assert_close(model(src, tgt, mask), plain, atol=1e-5, rtol=1e-5)
        memory = model.encode(src, mask)
        cache = model.new_cache(capacity=9)
        steps = [model.decode(tgt[:, i:i + 1], memory, mask, cache) for i in range(5)]
        order = torch.tensor([2, 0, 1])
        cache.reorder(order, order)  # rows and their sources
        steps = torch.cat(steps, dim=1)[order]
        later = model.decode(tgt[[2, 0, 1], 5:9], memory[[2, 0, 1]], mask[[2, 0, 1]], cache)
        torch.testing.assert_close(torch.cat([steps, later], dim=1), plain[[2, 0, 1]],
                                   atol=1e-5, rtol=1e-5)
        shut, fresh = mask.clone(), model.new_cache(capacity=9)
        cache = model.new_cache(capacity=9)
        model.decode(tgt[:, :1], memory, shut, cache)
        model.decode(tgt[:, :1], memory, mask, fresh)
        shut[0, 3:] = 0  # in place: the cached additive mask must follow
        torch.testing.assert_close(model.decode(tgt[:, 1:2], memory, shut, cache),
                                   model.decode(tgt[:, 1:2], memory, shut.clone(), fresh))
    cache = model.new_cache(capacity=9)  # a gradient through one cached call
    model.decode(tgt, model.encode(src, mask), mask, cache).sum().backward()
    assert model.decoder.layers[0].fc1.weight.grad is not None


def test_padding_does_not_change_a_row():
    model = _nano().eval()
    src, mask, tgt = _inputs()
    with torch.no_grad():
        batch = model(src, tgt, mask)[1]
        alone = model(src[1:2, :7], tgt[1:2])[0]
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_skipping_the_padding_keeps_logits_and_gradients(norm_first):
    """Training's packed pass (the layers on real tokens only) against the padded one."""
    model = _nano(norm_first).train()
    src, mask, tgt = _inputs()
    select = torch.ones_like(tgt, dtype=torch.bool)
    select[0, 6:] = False  # right-padded targets
    select[2, 3:] = False
    labels = torch.randint(3, V, (int(select.sum()),))

    def run(packed: bool):
        model.zero_grad()
        if packed:
            logits = model(src, tgt, mask, select=select)  # (N, V)
        else:  # the padded layout: every position through every layer, then the selection
            memory = model.encode(src, mask)
            logits = model.decode(tgt, memory, mask)[select]
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    got, got_grads = run(True)
    want, want_grads = run(False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    # A selection with holes is no padding: the full pass runs and the same rows come out.
    holes = select.clone()
    holes[1, 2] = False
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt, mask, select=holes),
                                   model(src, tgt, mask)[holes], atol=1e-5, rtol=1e-5)


def test_registry_record_and_checkpoint_round_trip(tmp_path):
    from lmlab.loading import load_model
    from lmlab.train import checkpoint as ckpt

    cfg = Seq2SeqConfig.from_name("seq2seq-nano", vocab_size=V)
    model = build_model(cfg)
    assert family_of(model).name == "seq2seq" and kind_of(model) == "seq2seq"
    assert context_of(model) == cfg.block_size
    assert model.lm_head.weight is model.shared.weight  # one table for all three
    path = ckpt.save_checkpoint(tmp_path, 0, model, None)
    assert load_config(path / "config.json") == cfg
    back = load_model(tmp_path).eval()
    src, mask, tgt = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(back(src, tgt, mask), model.eval()(src, tgt, mask))


def test_bad_configs_name_the_field():
    with pytest.raises(LmlabError, match="not divisible"):
        Seq2SeqConfig(n_embd=30, n_head=4)
    with pytest.raises(LmlabError, match="pad_token_id=100 is outside the vocabulary"):
        Seq2SeqConfig(vocab_size=100, pad_token_id=100)
    with pytest.raises(LmlabError, match="pre-LN"):
        hf_seq2seq_config(Seq2SeqConfig(norm_first=True))
    with pytest.raises(LmlabError, match="activation 'tanh'"):
        seq2seq_config_from_hf(dict(model_type="marian", vocab_size=10, d_model=8,
                                    encoder_layers=1, decoder_layers=1,
                                    encoder_attention_heads=2, encoder_ffn_dim=8,
                                    max_position_embeddings=8, activation_function="tanh"))


@pytest.mark.parametrize("layout", [
    dict(),  # Marian's: sinusoids (and no logits bias, as `lmlab seq2seq` trains it)
    dict(pos="learned", pos_offset=2, embed_norm=True, activation="gelu",
         final_logits_bias=True)])  # BART's
def test_convert_writes_a_folder_transformers_loads_and_reads_it_back(tmp_path, layout):
    from lmlab.cli import main
    from lmlab.loading import load_model
    from lmlab.train import checkpoint as ckpt

    cfg = Seq2SeqConfig.from_name("seq2seq-nano", vocab_size=V, **layout)
    torch.manual_seed(0)
    model = Seq2Seq(cfg).eval()
    if cfg.final_logits_bias:
        with torch.no_grad():
            model.final_logits_bias.normal_()  # not all zeros, so that it is checked too
    ckpt.save_checkpoint(tmp_path / "run", 0, model, None)
    assert main(["convert", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    src, mask, tgt = _inputs()
    with torch.no_grad():
        ours = model(src, tgt, mask)
        theirs = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        back = load_model(tmp_path / "hf")(src, tgt, mask)  # the HF folder, read by lmlab
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(back, ours, atol=1e-5, rtol=1e-5)
