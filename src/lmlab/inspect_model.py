"""A look inside a Transformer (`lmlab inspect`): attention maps, the logit lens,
per-token surprisal, and for BERT the [CLS] row and masked-token predictions.

The attention weights come from the models' own attention modules. SDPA's fused
kernel never materializes them, so ``keep_attention`` turns on each module's
``kept`` list, and while it is on the module computes softmax(QK^T * scale + mask)
explicitly (``models.gpt.explicit_attention``) after everything it normally does
to q and k (qk-norm, RoPE, GQA sharing) and with the mask it normally gets
(causal, Gemma's sliding window on local layers, padding). The normal path pays
one ``is None`` test per layer.

The logit lens (nostalgebraist 2020) reads each layer's residual stream through
the final norm and the output head, as if the model stopped there: where in the
stack the next token becomes legible. Surprisal is -log2 p(token | the tokens
before it), in bits.

Shapes: n layers, nh heads, T tokens, V vocabulary, k top tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from lmlab.errors import LmlabError
from lmlab.models.registry import backbone_of, family_of
from lmlab.tokenizer import Tokenizer

STATIC = Path(__file__).parent / "static"
# The page inlines every weight (~7 bytes each as JSON): 8M keep it under ~60 MB, which
# a browser still opens (SmolLM2's 270 maps: up to 172 tokens).
PAGE_WEIGHTS = 8_000_000


@contextmanager
def keep_attention(model: nn.Module) -> Iterator[list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Within the block, every attention module of ``model`` (GPT or BERT) computes its
    weights explicitly and keeps them: yields one list per layer, in layer order, to
    which each forward call appends (weights (B, nh, T, L), values (B, nkv, L, hs))."""
    modules = [m for m in model.modules() if hasattr(m, "kept")]
    for m in modules:
        m.kept = []
    try:
        yield [m.kept for m in modules]
    finally:
        for m in modules:
            m.kept = None


@dataclass
class Prediction:
    """The k most likely tokens somewhere: ids, their display strings, probabilities."""

    ids: list[int]
    tokens: list[str]
    probs: list[float]

    def to_dict(self) -> dict:
        return {"ids": self.ids, "tokens": self.tokens, "probs": self.probs}


@dataclass
class Inspection:
    kind: Literal["causal", "encoder"]
    ids: list[int]
    tokens: list[str]  # one display string per token
    attention: torch.Tensor  # (n, nh, T, T) float32 on the CPU; rows sum to 1
    # Causal: the logit lens, lens[l][t] reading the stream after layer l (0: the
    # embeddings) at position t; surprisal[t] in bits (None where nothing predicts t).
    lens_layers: list[str] = field(default_factory=list)
    lens: list[list[Prediction]] = field(default_factory=list)
    surprisal: list[float | None] = field(default_factory=list)
    # Encoder: the prediction at each [MASK] position (empty without an MLM head).
    masked: dict[int, Prediction] = field(default_factory=dict)
    has_mlm_head: bool = False

    @property
    def cls_attention(self) -> torch.Tensor:
        """Attention from the first token ([CLS] for BERT) to every token: (n, nh, T)."""
        return self.attention[:, :, 0, :]

    def to_dict(self) -> dict:
        """The numbers, JSON-ready (the attention maps themselves go to a .npy file)."""
        n, nh, T, _ = self.attention.shape
        d: dict = {"kind": self.kind, "ids": self.ids, "tokens": self.tokens,
                   "layers": n, "heads": nh, "attention_shape": [n, nh, T, T]}
        if self.kind == "causal":
            d["surprisal_bits"] = self.surprisal
            d["logit_lens"] = [{"layer": name, "positions": [p.to_dict() for p in row]}
                               for name, row in zip(self.lens_layers, self.lens, strict=True)]
        else:
            d["cls_attention"] = _rounded(self.cls_attention)
            d["has_mlm_head"] = self.has_mlm_head
            d["masked"] = [{"position": t, **p.to_dict()} for t, p in self.masked.items()]
        return d


def token_label(tok: Tokenizer, i: int) -> str:
    """How token ``i`` is shown: its text (a byte-level BPE's " Paris" with its space), or
    a WordPiece entry as the vocabulary writes it ("##ing")."""
    if tok.kind == "wordpiece":
        return tok.id_to_token(i) or f"<{i}>"
    return tok.decode([i]) or (tok.id_to_token(i) or f"<{i}>")


def encode_for(model: nn.Module, tok: Tokenizer, prompt: str) -> list[int]:
    """The ids a model reads for ``prompt``: a decoder's prompt after its start token (if
    it has one); an encoder's ``[CLS] prompt [SEP]`` with each typed [MASK] its token."""
    config = model.config
    if family_of(model).kind == "encoder":
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        if cls is None or sep is None:
            raise LmlabError(f"{tok.path or 'the tokenizer'}: an encoder's tokenizer needs "
                             "[CLS] and [SEP] tokens")
        # [MASK] written in the prompt is meant as the token: that is what BERT predicts.
        ids = [cls, *tok.encode(prompt, allow_special=True), sep]
    else:
        ids = tok.encode_prompt(prompt)
    if not ids:
        raise LmlabError("the tokenizer made no tokens of the prompt")
    if len(ids) > config.block_size:
        raise LmlabError(f"the prompt is {len(ids)} tokens; the model reads at most "
                         f"{config.block_size}")
    return ids


def _top(probs: torch.Tensor, k: int, tok: Tokenizer) -> list[Prediction]:
    """The top ``k`` of each row of probs (N, V)."""
    vals, idx = probs.float().topk(min(k, probs.size(-1)), dim=-1)
    return [Prediction(ids=[int(i) for i in row_i],
                       tokens=[token_label(tok, int(i)) for i in row_i],
                       probs=[float(p) for p in row_p])
            for row_p, row_i in zip(vals.cpu(), idx.cpu(), strict=True)]


def _stack(kept: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> torch.Tensor:
    """The weights of one forward call per layer, (n, nh, T, L), float32 on the CPU."""
    return torch.stack([layer[0][0][0] for layer in kept]).float().cpu()


def surprisal_bits(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """-log2 p(ids[t] | ids[:t]) for t = 1..T-1 from next-token logits (T, V): (T-1,)."""
    logp = logits[:-1].float().log_softmax(dim=-1)  # (T-1, V): position t predicts t+1
    return -logp.gather(1, ids[1:, None])[:, 0] / math.log(2)


@torch.no_grad()
def decoder_pass(model: nn.Module, x: torch.Tensor
                 ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """One forward pass of a GPT-family decoder over ``x`` (1, T), looking: its logits
    (T, V), the residual stream entering block 0 (embeddings, positions, Gemma's scale)
    and leaving each block, n + 1 tensors (T, C), and the attention maps (n, nh, T, T)."""
    # Forward hooks, so that the model's own forward is the one that runs.
    streams: list[torch.Tensor] = []
    taps = [model.transformer.drop, *model.transformer.h]
    hooks = [m.register_forward_hook(lambda _m, _i, out: streams.append(out[0]))
             for m in taps]
    try:
        with keep_attention(model) as kept:
            logits = model(x)[0]  # (T, V)
    finally:
        for h in hooks:
            h.remove()
    return logits, streams, _stack(kept)


def lens_logits(model: nn.Module, stream: torch.Tensor) -> torch.Tensor:
    """The logit lens of one residual stream (T, C): the final norm, then the output
    head, as the model does after its last block. (T, V)."""
    return model.lm_head(model.transformer.ln_f(stream))


@torch.no_grad()
def inspect_decoder(model: nn.Module, tok: Tokenizer, ids: list[int],
                    top_k: int = 5) -> Inspection:
    """Attention maps, logit lens and surprisal of a GPT-family decoder on ``ids``."""
    model.eval()
    x = torch.tensor([ids], device=model.transformer.wte.weight.device)  # (1, T)
    logits, streams, attention = decoder_pass(model, x)
    # One layer at a time: (T, V) each, never (n + 1, T, V) at once (Gemma's V is 262k).
    lens = [_top(lens_logits(model, h).float().softmax(-1), top_k, tok) for h in streams]
    bits = surprisal_bits(logits, x[0]).tolist()
    # The first token has no prediction: nothing comes before it.
    surprisal = [None, *bits]
    return Inspection("causal", ids, [token_label(tok, i) for i in ids], attention,
                      lens_layers=["embed", *[str(i + 1) for i in range(len(streams) - 1)]],
                      lens=lens, surprisal=surprisal)


@torch.no_grad()
def inspect_encoder(model: nn.Module, tok: Tokenizer, ids: list[int],
                    top_k: int = 5) -> Inspection:
    """Attention maps of a BERT encoder on ``ids``, and its predictions at each [MASK]
    (when the model kept its masked-LM head)."""
    model.eval()
    bert = backbone_of(model)  # the encoder, without its pretraining heads
    x = torch.tensor([ids], device=bert.embeddings.word_embeddings.weight.device)
    with keep_attention(bert) as kept:
        hidden = bert(x)[0]  # (T, C)
    mlm = getattr(model, "mlm", None)  # a masked-LM model's head; a bare encoder has none
    positions = [t for t, i in enumerate(ids) if i == tok.mask_id]
    masked: dict[int, Prediction] = {}
    if mlm is not None and positions:
        logits = mlm(hidden[positions], bert.embeddings.word_embeddings.weight)  # (M, V)
        masked = dict(zip(positions, _top(logits.float().softmax(-1), top_k, tok),
                          strict=True))
    return Inspection("encoder", ids, [token_label(tok, i) for i in ids], _stack(kept),
                      masked=masked, has_mlm_head=mlm is not None)


def inspect_model(model: nn.Module, tok: Tokenizer, prompt: str, top_k: int = 5,
                  max_weights: int | None = None) -> Inspection:
    """Look inside a GPT-family decoder or a BERT encoder reading ``prompt``; with
    ``max_weights``, refuse a prompt whose maps hold more weights than that (n nh T^2)."""
    family = family_of(model)
    if family.name not in ("gpt", "bert"):
        raise LmlabError(f"inspect reads the attention of Transformer decoders (GPT-2, Llama, "
                         f"Gemma) and BERT encoders; this is a {family.name} model")
    ids = encode_for(model, tok, prompt)
    maps = model.config.n_layer * model.config.n_head
    if max_weights is not None and maps * len(ids) ** 2 > max_weights:
        raise LmlabError(f"the prompt is {len(ids)} tokens: {maps} maps of {len(ids)}^2 weights "
                         f"are too many for one page; use at most "
                         f"{math.isqrt(max_weights // maps)} tokens")
    if family.kind == "encoder":
        return inspect_encoder(model, tok, ids, top_k)
    return inspect_decoder(model, tok, ids, top_k)


# ---------------------------------------------------------------- writing it out
def _rounded(t: torch.Tensor, digits: int = 4) -> list:
    return (t.float() * 10 ** digits).round().div(10 ** digits).tolist()


def write_attention_png(ins: Inspection, path: Path, max_label_tokens: int = 16) -> None:
    """Every map in one grid: layers as rows, heads as columns; token labels on the
    outer maps when the prompt is short enough to read them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, nh, T, _ = ins.attention.shape
    labels = len(ins.tokens) <= max_label_tokens
    cell = 1.6 if labels else 1.2
    fig, axes = plt.subplots(n, nh, squeeze=False, figsize=(cell * nh + 1, cell * n + 0.6))
    for layer in range(n):
        for head in range(nh):
            ax = axes[layer][head]
            ax.imshow(ins.attention[layer, head].numpy(), cmap="viridis", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if labels and head == 0:
                ax.set_yticks(range(T), ins.tokens, fontsize=5)
            if labels and layer == n - 1:
                ax.set_xticks(range(T), ins.tokens, fontsize=5, rotation=90)
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=7)
            if head == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=7)
    what = "query (row) -> key (column)"
    fig.suptitle(f"attention, {n} layers x {nh} heads; {what}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_html(ins: Inspection, title: str) -> str:
    """The self-contained page: static/inspect.html with the data inlined."""
    data = {"title": title, **ins.to_dict(), "attention": _rounded(ins.attention)}
    # "</" inside a <script> would end it: a prompt may hold "</script>".
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    page = (STATIC / "inspect.html").read_text(encoding="utf-8")
    return page.replace("/*DATA*/null", blob)


def write_inspection(ins: Inspection, folder: Path, title: str) -> dict[str, Path]:
    """inspect.html, attention.png, attention.npy and inspect.json in ``folder``."""
    import numpy as np

    files = {"page": folder / "inspect.html", "grid": folder / "attention.png",
             "maps": folder / "attention.npy", "numbers": folder / "inspect.json"}
    files["page"].write_text(render_html(ins, title), encoding="utf-8")
    write_attention_png(ins, files["grid"])
    np.save(files["maps"], ins.attention.numpy())
    files["numbers"].write_text(json.dumps({"title": title, **ins.to_dict(),
                                            "attention_file": files["maps"].name},
                                           ensure_ascii=False, indent=1) + "\n",
                                encoding="utf-8")
    return files
