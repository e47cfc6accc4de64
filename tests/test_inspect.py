"""`lmlab inspect`: attention maps that recompose the model's own attention output, the
logit lens, surprisal, BERT's [CLS] row and masked predictions, the page in Chromium,
and the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmlab.cli import main
from lmlab.config import BertConfig, GPTConfig
from lmlab.errors import LmlabError
from lmlab.inspect_model import (
    decoder_pass,
    inspect_model,
    keep_attention,
    lens_logits,
    write_inspection,
)
from lmlab.models.registry import backbone_of, build_model
from lmlab.tokenizer import Tokenizer
from lmlab.train.checkpoint import save_checkpoint

TEXT = ("the cat sat on the mat. the dog sat on the log. a cat and a dog met on the mat "
        "and the dog ran off to the log.\n") * 4
PROMPT = "the cat sat on the mat and the dog"  # 34 characters: past Gemma-nano's window of 8


@pytest.fixture(scope="module")
def char_tok() -> Tokenizer:
    return Tokenizer.train([TEXT], kind="char", vocab_size=300, show_progress=False)


@pytest.fixture(scope="module")
def wp_tok() -> Tokenizer:
    return Tokenizer.train([TEXT], kind="wordpiece", vocab_size=120, show_progress=False)


def decoder(preset: str, vocab_size: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(GPTConfig.from_name(preset, vocab_size=vocab_size, **overrides)).eval()
    # GPT-2's N(0, 0.02) start attends almost uniformly; sharper queries and keys make
    # maps whose every entry matters, so a wrong mask or rotation could not hide.
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(12)
    return model


DECODERS = {
    "gpt-nano": {},                                 # learned positions, LayerNorm, MHA
    "llama-nano": {},                               # RoPE, RMSNorm, 4 query heads on 2 KV
    "gemma-nano": {"query_pre_attn_scalar": 32.0},  # sliding window, qk-norm, 2 RoPE bases
}


@pytest.mark.parametrize("preset", list(DECODERS))
def test_maps_recompose_the_sdpa_attention_output(preset, char_tok):
    model = decoder(preset, char_tok.vocab_size, **DECODERS[preset])
    c = model.config
    x = torch.tensor([char_tok.encode(PROMPT)])  # (1, T)
    T = x.size(1)
    outs: list[torch.Tensor] = []
    hooks = [b.attn.register_forward_hook(lambda _m, _i, out: outs.append(out))
             for b in model.transformer.h]
    with torch.no_grad():
        logits = model(x)  # the normal path: fused SDPA, nothing kept
        with keep_attention(model) as kept:
            model(x)
    for h in hooks:
        h.remove()
    sdpa_outs = outs[:c.n_layer]
    assert all(k is None for k in (b.attn.kept for b in model.transformer.h))  # switched off
    for layer, block in enumerate(model.transformer.h):
        [(A, V)] = kept[layer]  # (1, nh, T, T), (1, nkv, T, hs)
        assert A.shape == (1, c.n_head, T, T) and V.shape == (1, c.n_kv_head, T, c.head_dim)
        # Each KV head serves n_head / n_kv_head consecutive query heads.
        y = A @ V.repeat_interleave(c.n_head // c.n_kv_head, dim=1)  # (1, nh, T, hs)
        y = block.attn.c_proj(y.transpose(1, 2).reshape(1, T, -1))
        torch.testing.assert_close(y, sdpa_outs[layer], atol=1e-5, rtol=0)
        rows = A[0]  # (nh, T, T)
        torch.testing.assert_close(rows.sum(-1), torch.ones(c.n_head, T))
        assert rows.triu(1).abs().max() == 0  # causal: no weight on later tokens
        assert rows.max() > 0.5  # the maps are far from uniform
        i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
        far = i - j >= 8
        if c.is_local(layer):  # Gemma's local layer: nothing beyond the window
            assert rows[:, far].abs().max() == 0
        elif c.sliding_window is not None:  # its global layer reads the far past too
            assert rows[:, far].max() > 1e-3
    assert (preset == "gemma-nano") == c.is_local(0)
    # The model's own output is unchanged by looking.
    with torch.no_grad(), keep_attention(model):
        torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["llama-nano", "gemma-nano"])
def test_logit_lens_and_surprisal(preset, char_tok):
    model = decoder(preset, char_tok.vocab_size, **DECODERS[preset])
    ins = inspect_model(model, char_tok, PROMPT, top_k=4)
    x = torch.tensor([ins.ids])
    with torch.no_grad():
        logits = model(x)[0]  # (T, V): the SDPA path
        _, streams, attention = decoder_pass(model, x)
        last = lens_logits(model, streams[-1])
    T, n = x.size(1), model.config.n_layer
    assert len(streams) == n + 1 and ins.lens_layers == ["embed", *map(str, range(1, n + 1))]
    # The lens at the last layer is the model's own next-token prediction.
    torch.testing.assert_close(last, logits, atol=1e-5, rtol=0)
    probs = logits.softmax(-1)
    top = probs.topk(4, dim=-1)
    for t in range(T):
        assert ins.lens[-1][t].ids == top.indices[t].tolist()
        np.testing.assert_allclose(ins.lens[-1][t].probs, top.values[t].numpy(), atol=1e-5)
    assert ins.lens[-1][0].tokens[0] == char_tok.decode([int(top.indices[0, 0])])
    # Earlier layers read something else (the lens is not the output copied n times).
    assert any(ins.lens[1][t].ids != ins.lens[-1][t].ids for t in range(T))
    # Surprisal: -log2 p(token t | tokens before it), read from the logits at t - 1.
    want = -torch.log_softmax(logits, -1)[torch.arange(T - 1), x[0, 1:]] / math.log(2)
    assert ins.surprisal[0] is None
    np.testing.assert_allclose(ins.surprisal[1:], want.numpy(), atol=1e-4)
    torch.testing.assert_close(ins.attention, attention)


@pytest.fixture(scope="module")
def bert(wp_tok):
    torch.manual_seed(0)
    model = build_model(BertConfig.from_name("bert-nano", vocab_size=wp_tok.vocab_size),
                        ).eval()
    with torch.no_grad():
        for layer in model.bert.layers:
            layer.attn.qkv.weight.mul_(12)
    return model


def test_bert_cls_attention_and_masked_predictions(bert, wp_tok):
    ins = inspect_model(bert, wp_tok, "the cat [MASK] on the [MASK] .", top_k=3)
    ids = torch.tensor([ins.ids])
    T, n, nh = ids.size(1), bert.config.n_layer, bert.config.n_head
    assert ins.tokens[0] == "[CLS]" and ins.tokens[-1] == "[SEP]"
    assert ins.tokens.count("[MASK]") == 2 and ins.attention.shape == (n, nh, T, T)
    torch.testing.assert_close(ins.attention.sum(-1), torch.ones(n, nh, T))
    assert ins.attention.triu(1).max() > 0.01  # bidirectional: later tokens are read
    assert ins.cls_attention.shape == (n, nh, T)
    torch.testing.assert_close(ins.cls_attention, ins.attention[:, :, 0, :])
    # The [CLS] row recomposes the encoder's own attention output there.
    outs: list[torch.Tensor] = []
    hook = bert.bert.layers[0].attn.register_forward_hook(lambda _m, _i, o: outs.append(o))
    with torch.no_grad():
        bert.bert(ids)
        with keep_attention(bert) as kept:
            bert.bert(ids)
    hook.remove()
    A, V = kept[0][0]  # (1, nh, T, T), (1, nh, T, hs)
    y = bert.bert.layers[0].attn.proj((A @ V).transpose(1, 2).reshape(1, T, -1))
    torch.testing.assert_close(y[:, 0], outs[0][:, 0], atol=1e-5, rtol=0)
    # Masked predictions: the MLM head's top tokens at each [MASK].
    where = ids == wp_tok.mask_id
    with torch.no_grad():
        mlm, _ = bert(ids, mlm_positions=where)  # (2, V)
    top = mlm.softmax(-1).topk(3, dim=-1)
    assert list(ins.masked) == torch.nonzero(where[0])[:, 0].tolist()
    for r, pred in enumerate(ins.masked.values()):
        assert pred.ids == top.indices[r].tolist()
        np.testing.assert_allclose(pred.probs, top.values[r].numpy(), atol=1e-6)
    # A bare encoder has no head to predict with, and says so.
    bare = inspect_model(backbone_of(bert), wp_tok, "the cat [MASK] .")
    assert not bare.has_mlm_head and bare.masked == {}
    assert bare.to_dict()["has_mlm_head"] is False
    # Too many weights for one page: refused, naming the longest prompt that fits.
    with pytest.raises(LmlabError, match="use at most 2 tokens"):
        inspect_model(bert, wp_tok, "the cat sat", max_weights=4 * 4)  # 2 x 2 maps of 2^2


def test_page_draws_and_switches_maps_in_chromium(tmp_path, char_tok, bert, wp_tok):
    sync_api = pytest.importorskip("playwright.sync_api")
    from lmlab.data.downloads import chromium_env, chromium_executable

    exe = chromium_executable()
    if exe is None:
        pytest.skip("needs Chromium (make setup fetches it)")
    model = decoder("llama-nano", char_tok.vocab_size)
    pages = {}
    for name, net, tok, prompt in (("gpt", model, char_tok, "the cat </script> sat"),
                                   ("bert", bert, wp_tok, "the cat [MASK] on the mat")):
        (tmp_path / name).mkdir()
        ins = inspect_model(net, tok, prompt)
        pages[name] = write_inspection(ins, tmp_path / name, f"{name}: {prompt}")["page"]
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, env=chromium_env(),
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(pages["gpt"].as_uri())
        drawn = "document.getElementById('map').toDataURL()"
        lit = ("(() => { const c = document.getElementById('map'); const d = c.getContext('2d')"
               ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 0; "
               "i < d.length; i += 4) n += d[i] + d[i + 1] + d[i + 2] < 600; return n; })()")
        first = page.evaluate(drawn)
        assert page.evaluate(lit) > 1000  # cells painted, not a blank canvas
        page.select_option("#layer", "1")
        second = page.evaluate(drawn)
        page.select_option("#head", "2")
        third = page.evaluate(drawn)
        assert len({first, second, third}) == 3
        # Hover the cell of query 3 -> key 1: its tokens and weight appear.
        box = page.locator("#map").bounding_box()
        cell = page.evaluate("Math.max(4, Math.min(40, Math.floor(560 / DATA.tokens.length)))")
        page.mouse.move(box["x"] + 90 + 1.5 * cell, box["y"] + 90 + 3.5 * cell)
        hover = page.text_content("#hover")
        w = page.evaluate("DATA.attention[1][2][3][1]")
        assert hover.startswith("layer 2 head 3: query 3") and "-> key 1" in hover
        assert f"{w:.4f}" in hover
        assert page.locator("#lens tr").count() == 2 + 2 + 1  # header, 3 layers, next row
        assert page.locator("#surprisal span").count() == len(page.evaluate("DATA.tokens"))
        assert page.text_content("#title") == "gpt: the cat </script> sat"  # text stays text
        assert "".join(page.evaluate("DATA.tokens")) == "the cat </script> sat"
        page.goto(pages["bert"].as_uri())
        assert page.locator("#cls tr").count() == 1 + bert.config.n_head
        assert page.locator("#masked tr").count() == 2  # a header and the one [MASK]
        assert page.is_hidden("#lens-section")
        browser.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def saved(tmp_path_factory, char_tok, bert, wp_tok):
    root = tmp_path_factory.mktemp("inspect")
    char_tok.save(root / "char.json")
    wp_tok.save(root / "wp.json")
    save_checkpoint(root / "gpt", 1, decoder("gpt-nano", char_tok.vocab_size,
                                             block_size=16), root / "char.json")
    save_checkpoint(root / "bert", 1, bert, root / "wp.json")
    return root


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_maps_the_lens_and_the_page(saved, capsys):
    out = saved / "look"
    code, stdout, _ = run(capsys, "inspect", saved / "gpt", "--prompt", "the dog", "--out", out,
                          "--top-k", "3", "--device", "cpu")
    assert code == 0
    assert "7 tokens, 2 layers x 2 heads" in stdout and "embed" in stdout
    for name in ("inspect.html", "attention.png", "attention.npy", "inspect.json"):
        assert f"{out / name}" in stdout and (out / name).stat().st_size > 0
    assert np.load(out / "attention.npy").shape == (2, 2, 7, 7)
    numbers = json.loads((out / "inspect.json").read_text())
    assert numbers["attention_shape"] == [2, 2, 7, 7] and numbers["tokens"][0] == "t"
    assert [r["layer"] for r in numbers["logit_lens"]] == ["embed", "1", "2"]
    assert len(numbers["logit_lens"][0]["positions"][0]["ids"]) == 3
    assert (out / "attention.png").read_bytes()[:4] == b"\x89PNG"
    # Again without --overwrite: refused, the first output kept.
    code, _, err = run(capsys, "inspect", saved / "gpt", "--prompt", "x", "--out", out)
    assert code == 2 and "error:" in err and "--overwrite" in err
    code, stdout, _ = run(capsys, "inspect", saved / "bert", "--prompt", "the [MASK] sat",
                          "--out", saved / "look-bert")
    assert code == 0 and "[MASK] at 2:" in stdout
    assert json.loads((saved / "look-bert" / "inspect.json").read_text())["masked"][0][
        "position"] == 2


@pytest.mark.parametrize("args, needle", [
    (["--prompt", "   "], "prompt is empty"),
    (["--prompt", "the cat sat on the mat"], "at most 16"),
])
def test_cli_bad_prompt_is_one_error_line(saved, capsys, tmp_path, args, needle):
    code, _, err = run(capsys, "inspect", saved / "gpt", *args, "--out", tmp_path / "o")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ")
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_bad_model_is_one_error_line(saved, capsys, tmp_path, char_tok):
    code, _, err = run(capsys, "inspect", tmp_path / "nothing", "--prompt", "hi",
                       "--out", tmp_path / "o")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ")
    from lmlab.config import RNNConfig

    gru = build_model(RNNConfig.from_name("gru-small", vocab_size=char_tok.vocab_size,
                                          n_embd=8, n_hidden=8))
    save_checkpoint(tmp_path / "gru", 1, gru, saved / "char.json")
    code, _, err = run(capsys, "inspect", tmp_path / "gru", "--prompt", "hi",
                       "--out", tmp_path / "o")
    assert code == 2 and "gru model" in err.strip().splitlines()[-1]
