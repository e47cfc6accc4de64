"""The classic neural language models: Bengio's feed-forward LM, then RNN, LSTM and GRU LMs.

Top-down: the state helpers, the shared output layer, the feed-forward LM
(Bengio et al. 2003), the recurrent encoder (embedding -> RNN/LSTM/GRU, also
the body of a text classifier), then the recurrent LM.

Both language models share one interface, which the training loop, evaluation
and generation use::

    logits, state = model(idx, state)   # idx (B, T) -> logits (B, T, V)

``state`` is what a model carries from one call to the next along a token
stream: the last ``context - 1`` tokens (feed-forward) or the hidden (and
cell) states (recurrent); ``None`` at the start of a stream. Feeding a
sequence in chunks and passing the state along gives the same logits as one
call on the whole sequence, so training can use truncated back-propagation
through time and evaluation can score a stream of any length exactly.

Shapes: B batch, T tokens in this call, C = n_embd, H = n_hidden, L = n_layer,
n = context, V = vocab_size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.config import RNNConfig
from lmlab.errors import LmlabError

# A feed-forward LM's state is its token history (B, <= n-1); an RNN/GRU's is
# h (L*dirs, B, H); an LSTM's is the pair (h, c).
State = torch.Tensor | tuple[torch.Tensor, ...]


def detach_state(state: State | None) -> State | None:
    """The state cut from the graph: truncated BPTT back-propagates within one block only."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(s.detach() for s in state)


def state_to_tensors(state: State | None) -> dict[str, torch.Tensor]:
    """Named tensors of a state, to save in a checkpoint (empty for None)."""
    if state is None:
        return {}
    parts = (state,) if isinstance(state, torch.Tensor) else state
    return {str(i): s.detach().contiguous().clone() for i, s in enumerate(parts)}


def state_from_tensors(tensors: dict[str, torch.Tensor]) -> State | None:
    """Inverse of ``state_to_tensors``."""
    if not tensors:
        return None
    parts = tuple(tensors[str(i)] for i in range(len(tensors)))
    return parts[0] if len(parts) == 1 else parts


def _output_layers(config: RNNConfig, width: int) -> tuple[nn.Module, nn.Linear]:
    """(projection, lm_head) from a hidden width to the vocabulary.

    A tied head reads the embedding matrix (V, C), so a hidden width unlike C
    first goes through a linear projection H -> C (Press & Wolf 2017); untied,
    the head maps H -> V directly. The head keeps its bias either way.
    """
    C, V = config.n_embd, config.vocab_size
    if config.tie_embeddings and width != C:
        return nn.Linear(width, C, bias=False), nn.Linear(C, V)
    return nn.Identity(), nn.Linear(C if config.tie_embeddings else width, V)


def _init_embedding(wte: nn.Embedding, embedding_init: torch.Tensor | None) -> None:
    """Small uniform init (Zaremba et al. 2014), or a given matrix (e.g. word2vec)."""
    if embedding_init is None:
        nn.init.uniform_(wte.weight, -0.1, 0.1)
        return
    if tuple(embedding_init.shape) != tuple(wte.weight.shape):
        raise LmlabError(f"embedding_init has shape {tuple(embedding_init.shape)}, the model "
                         f"needs {tuple(wte.weight.shape)} (vocab_size, n_embd)")
    with torch.no_grad():
        wte.weight.copy_(embedding_init)


# ---------------------------------------------------------------- feed-forward
class FeedForwardLM(nn.Module):
    """Bengio et al. (2003): p(w_t | w_{t-n+1} .. w_t-1) from a fixed window of n tokens.

    The embeddings of the window are concatenated (B, n*C), pass through
    ``n_layer`` tanh layers (the paper has one), and a softmax layer gives the
    next token; ``direct`` adds the paper's linear connections from the window
    to the output. Every position of a block is computed at once: the block is
    unfolded into overlapping windows, so training is one batched matmul, not a
    loop over positions.
    """

    def __init__(self, config: RNNConfig, embedding_init: torch.Tensor | None = None) -> None:
        super().__init__()
        if config.model_type != "ffnn":
            raise LmlabError(f"FeedForwardLM needs model_type 'ffnn', not {config.model_type!r}")
        self.config = config
        C, H, n = config.n_embd, config.n_hidden, config.context
        self.wte = nn.Embedding(config.vocab_size, C)
        self.drop = nn.Dropout(config.dropout)
        self.hidden = nn.ModuleList(nn.Linear(n * C if i == 0 else H, H)
                                    for i in range(config.n_layer))
        self.direct = nn.Linear(n * C, config.vocab_size, bias=False) if config.direct else None
        self.proj, self.lm_head = _output_layers(config, H)
        _init_embedding(self.wte, embedding_init)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied matrix is counted once
        return n - self.wte.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor,
                state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) of the token after each position, and the new token history."""
        n = self.config.context
        B, T = idx.shape
        past = state if state is not None else idx.new_empty(B, 0)  # (B, P), P <= n-1
        seq = torch.cat([past, idx], dim=1)  # (B, P+T)
        x = self.wte(seq)  # (B, P+T, C)
        # History missing at the start of a stream reads as zero vectors: "no token",
        # which, unlike a padding token, needs no embedding of its own.
        x = F.pad(x, (0, 0, n - 1 - past.size(1), 0))  # (B, n-1+T, C)
        # The window of position t is the n embeddings ending at t.
        win = x.unfold(1, n, 1)  # (B, T, C, n): a view, no copy
        win = win.transpose(2, 3).flatten(2)  # (B, T, n*C), oldest token first
        h = self.drop(win)
        for layer in self.hidden:
            h = self.drop(torch.tanh(layer(h)))  # (B, T, H)
        logits = self.lm_head(self.proj(h))  # (B, T, V)
        if self.direct is not None:
            logits = logits + self.direct(win)
        new_state = seq[:, seq.size(1) - min(n - 1, seq.size(1)):]  # (B, <= n-1)
        return logits, new_state


# ---------------------------------------------------------------- recurrent
_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNNEncoder(nn.Module):
    """Embedding -> dropout -> stacked RNN (tanh), LSTM or GRU -> dropout.

    The body of the recurrent LM and of text classifiers (bidirectional there).
    ``forward`` maps (B, T) tokens to (B, T, H * directions) hidden states.
    """

    def __init__(self, config: RNNConfig, embedding_init: torch.Tensor | None = None) -> None:
        super().__init__()
        if config.model_type not in _CELLS:
            raise LmlabError(f"model_type {config.model_type!r} is not recurrent "
                             f"(choose {', '.join(_CELLS)})")
        self.config = config
        C, H, L = config.n_embd, config.n_hidden, config.n_layer
        self.wte = nn.Embedding(config.vocab_size, C)
        self.drop = nn.Dropout(config.dropout)
        extra = {"nonlinearity": "tanh"} if config.model_type == "rnn" else {}
        # torch applies this dropout between stacked layers only (Zaremba et al. 2014:
        # on non-recurrent connections), never along time.
        self.rnn = _CELLS[config.model_type](
            C, H, num_layers=L, batch_first=True, bidirectional=config.bidirectional,
            dropout=config.dropout if L > 1 else 0.0, **extra)
        _init_embedding(self.wte, embedding_init)
        if config.model_type == "lstm":
            # Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015): the cell
            # starts out remembering, so gradients flow through time from the first
            # step. torch's gate order is input, forget, cell, output; the two bias
            # vectors are summed, so one of them carries it.
            with torch.no_grad():
                for name, p in self.rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        p[H:2 * H].fill_(1.0)
                    elif name.startswith("bias_hh"):
                        p[H:2 * H].zero_()

    @property
    def out_dim(self) -> int:
        """Width of the hidden states ``forward`` returns."""
        return self.config.n_hidden * (2 if self.config.bidirectional else 1)

    def forward(self, idx: torch.Tensor, state: State | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """Hidden states (B, T, H * directions) and the final state.

        ``lengths`` (B,) marks right-padded rows (a classifier's batch): the
        rows are packed, so no direction reads padding (the backward one starts
        at each row's last real token) and padded positions come out as zeros.
        """
        x = self.drop(self.wte(idx))  # (B, T, C)
        if lengths is None:
            out, state = self.rnn(x, state)  # (B, T, H * dirs)
        else:
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

            packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True,
                                          enforce_sorted=False)
            out, state = self.rnn(packed, state)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=idx.size(1))
        return self.drop(out), state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class RecurrentLM(nn.Module):
    """A recurrent LM (Mikolov et al. 2010; LSTM: Zaremba et al. 2014; GRU: Cho et al. 2014).

    ``RNNEncoder`` -> (projection to C when H != C) -> output layer tied to the
    input embedding (Press & Wolf 2017, Inan et al. 2017): fewer parameters
    and lower perplexity, since a word's input and output vectors learn from
    both roles.
    """

    def __init__(self, config: RNNConfig, embedding_init: torch.Tensor | None = None) -> None:
        super().__init__()
        if config.bidirectional:
            raise LmlabError("a language model reads left to right; bidirectional is for "
                             "encoders (classification) only")
        self.config = config
        self.encoder = RNNEncoder(config, embedding_init)
        self.proj, self.lm_head = _output_layers(config, config.n_hidden)
        if config.tie_embeddings:
            self.lm_head.weight = self.encoder.wte.weight

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied matrix is counted once
        return n - self.encoder.wte.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) of the token after each position, and the state after the last."""
        h, state = self.encoder(idx, state)  # (B, T, H)
        return self.lm_head(self.proj(h)), state


# The models that carry a state from call to call (see the module docstring).
StatefulLM = FeedForwardLM | RecurrentLM


def build_lm(config: RNNConfig, embedding_init: torch.Tensor | None = None) -> StatefulLM:
    """The language model ``config`` describes: feed-forward or recurrent."""
    if config.model_type == "ffnn":
        return FeedForwardLM(config, embedding_init)
    return RecurrentLM(config, embedding_init)
