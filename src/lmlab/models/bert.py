"""A BERT-style encoder (Devlin et al. 2019) and its heads, in one file.

Top-down: embeddings, self-attention, the post-LayerNorm block, the encoder
(``Bert``), then the heads: masked LM (decoder tied to the word embeddings),
next-sentence prediction, and the fine-tuning heads for sequence
classification, token classification and extractive question answering.

The fine-tuning heads take hidden states (B, T, C) and the attention mask, so
the same heads sit on a GPT backbone too (``TaskModel`` pairs a backbone with a
head; see ``train/finetune.py``). Parameter names follow Hugging Face's
``BertModel`` where the layout is the same; the attention's query/key/value
projections are fused into one ``qkv`` matrix (one matmul instead of three),
which ``interop/hf_bert.py`` splits and joins.

Shapes: B batch, T tokens, C = n_embd, nh = n_head, hs = head size, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.config import BertConfig, Pooling
from lmlab.models.gpt import explicit_attention, init_weights


class BertEmbeddings(nn.Module):
    """Word + learned absolute position + token-type embeddings, then LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        C = config.n_embd
        self.word_embeddings = nn.Embedding(config.vocab_size, C)
        self.position_embeddings = nn.Embedding(config.block_size, C)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, C)
        self.LayerNorm = nn.LayerNorm(C, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)  # (B, T, C)
        if token_type_ids is None:
            # Segment A everywhere: row 0 of the table, added without a gather.
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention with a padding mask (no causal mask)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = config.attn_dropout
        # ``lmlab inspect``'s switch, as in ``models/gpt.py``: while a list, each call
        # computes its weights explicitly and appends (weights (B, nh, T, T), values).
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        # (B, T, 3, nh, hs) -> three (B, nh, T, hs)
        q, k, v = self.qkv(x).view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).unbind(0)
        if self.kept is not None:
            y, weights = explicit_attention(q, k, v, mask, False, None)
            self.kept.append((weights, v))
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask,
                dropout_p=self.attn_dropout if self.training else 0.0)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    """Post-norm block (the original Transformer's and BERT's order):
    x = LN(x + attn(x)); x = LN(x + mlp(x)). Deep post-norm stacks need
    warm-up to train stably, which BERT's recipe has."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.fc = nn.Linear(config.n_embd, config.intermediate_size)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.ln_1(x + self.dropout(self.attn(x, mask)))
        # BERT uses the exact erf GELU (GPT-2 the tanh approximation).
        h = self.proj(F.gelu(self.fc(x)))
        return self.ln_2(x + self.dropout(h))


def attention_mask_for_sdpa(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) 1 = token, 0 = padding -> boolean (B, 1, 1, T) "may attend" mask, or None.

    With no padding at all the mask is dropped, which lets SDPA take its fastest kernel.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class Bert(nn.Module):
    """The encoder: token ids (B, T) -> hidden states (B, T, C)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.n_layer)])
        self.pooler = nn.Linear(config.n_embd, config.n_embd) if config.pooler else None
        self.apply(init_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C); ``attention_mask`` (B, T) is 1 on real tokens."""
        if input_ids.size(1) > self.config.block_size:
            raise ValueError(f"{input_ids.size(1)} tokens exceed the encoder's "
                             f"{self.config.block_size} positions")
        mask = attention_mask_for_sdpa(attention_mask)
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooled output: tanh(W h_[CLS] + b), (B, C); the raw [CLS] state without
        a pooler."""
        cls = hidden[:, 0]
        return torch.tanh(self.pooler(cls)) if self.pooler is not None else cls

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the hidden states over real tokens: (B, T, C) -> (B, C).

    The pooling of sentence-transformers models such as all-MiniLM-L6-v2.
    """
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


# ---------------------------------------------------------------- pretraining heads
class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> logits against the (tied) word embeddings + bias."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd)
        self.LayerNorm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        h = self.LayerNorm(F.gelu(self.dense(hidden)))  # (N, C)
        # The output matrix is the input embedding (tied, as in BERT): passed in
        # rather than stored, so the checkpoint holds it once.
        return F.linear(h, word_embeddings, self.bias)  # (N, V)


class BertForPreTraining(nn.Module):
    """Encoder + masked-LM head (+ next-sentence head when ``nsp``)."""

    def __init__(self, config: BertConfig, nsp: bool = False) -> None:
        super().__init__()
        self.config = config
        self.bert = Bert(config)
        self.mlm = MLMHead(config)
        self.nsp = nn.Linear(config.n_embd, 2) if nsp else None
        self.mlm.apply(init_weights)
        if self.nsp is not None:
            init_weights(self.nsp)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                mlm_positions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(MLM logits, NSP logits or None).

        With ``mlm_positions`` (a boolean (B, T) mask of the masked tokens) the
        MLM logits are computed only there, (N, V): the V-wide output matmul is
        the largest in a small model and 85 % of positions need none.
        Without it, logits for every position, (B, T, V).
        """
        hidden = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        h = hidden[mlm_positions] if mlm_positions is not None else hidden
        mlm_logits = self.mlm(h, self.bert.embeddings.word_embeddings.weight)
        nsp_logits = self.nsp(self.bert.pool(hidden)) if self.nsp is not None else None
        return mlm_logits, nsp_logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------- fine-tuning heads


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                how: Pooling) -> torch.Tensor:
    """One vector per sequence, (B, T, C) -> (B, C).

    ``cls``: the first position (BERT's [CLS]); ``mean``: the mean over real
    tokens; ``last``: the last real token of right-padded rows, which is the
    only position a causal (GPT) model has read the whole text at.
    """
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        return mean_pool(hidden, attention_mask)
    if attention_mask is None:
        return hidden[:, -1]
    last = attention_mask.long().sum(1) - 1  # (B,)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


class ClassificationHead(nn.Module):
    """Pooled vector -> dropout -> linear over the classes (B, n_classes)."""

    def __init__(self, n_embd: int, n_classes: int, dropout: float,
                 pooling: Pooling, pooler: nn.Linear | None = None) -> None:
        super().__init__()
        self.pooling = pooling
        # BERT's own pooler (trained by next-sentence prediction) when the
        # backbone has one and pooling is "cls", as in BertForSequenceClassification.
        self.pooler = pooler
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(n_embd, n_classes)
        init_weights(self.classifier)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        v = pool_hidden(hidden, attention_mask, self.pooling)  # (B, C)
        if self.pooler is not None:
            v = torch.tanh(self.pooler(v))
        return self.classifier(self.dropout(v))


class TokenClassificationHead(nn.Module):
    """Per-token tags: (B, T, C) -> (B, T, n_tags)."""

    def __init__(self, n_embd: int, n_tags: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(n_embd, n_tags)
        init_weights(self.classifier)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


class SpanHead(nn.Module):
    """Extractive QA: start and end logits of the answer span, each (B, T)."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.qa_outputs = nn.Linear(n_embd, 2)
        init_weights(self.qa_outputs)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        logits = self.qa_outputs(hidden)  # (B, T, 2)
        if attention_mask is not None:
            # Padding can never be an answer boundary.
            logits = logits.masked_fill(~attention_mask.bool()[..., None], float("-inf"))
        return logits
