"""Decoding as small pure functions over an explicit KV cache.

``process_logits`` -> ``sample`` pick one token from a (B, V) row of logits;
``prefill`` runs the prompt once, filling the cache; ``decode_one_token`` runs
a single new token. ``generate`` streams token ids; ``generate_text`` adds the
tokenizer, stop strings and text streaming.

Context policy: a prompt longer than the context keeps its last
``block_size - max_new_tokens`` tokens (at least half the context) and says so;
when a sequence fills the context during decoding, the cache is rebuilt from
the last half-context of tokens and decoding continues (a sliding window).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from lmlab.models.gpt import GPT


@dataclass
class SamplingConfig:
    """How the next token is picked. temperature 0 means greedy."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019): damp tokens already in ``seen`` (B, S).

    Positive logits are divided and negative ones multiplied by ``penalty`` so a
    seen token always becomes less likely.
    """
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, seen, picked)


def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k and top-p (nucleus, Holtzman et al. 2020) on (B, V) logits."""
    logits = logits / max(cfg.temperature, 1e-5)
    if cfg.top_k is not None and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p; the most
        # likely token is always kept.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= cfg.top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, seen: torch.Tensor, cfg: SamplingConfig,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from the last-position logits (B, V)."""
    logits = apply_repetition_penalty(logits.float(), seen, cfg.repetition_penalty)
    if cfg.greedy:
        return logits.argmax(-1)
    probs = process_logits(logits, cfg).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def prefill(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Fill the (fresh) cache with the prompt (B, T); return last logits (B, V)."""
    return model(idx, start_pos=0, last_only=True)[:, -1]


def decode_one_token(model: GPT, token: torch.Tensor, pos: int) -> torch.Tensor:
    """Feed one token per row (B,) at position ``pos``; return logits (B, V)."""
    return model(token.view(-1, 1), start_pos=pos)[:, -1]


def fit_prompt(ids: Sequence[int], block_size: int, max_new_tokens: int) -> tuple[list[int], int]:
    """Left-truncate a prompt so prompt + new tokens fit the context where possible.

    Returns the kept ids and how many were dropped.
    """
    keep = max(block_size - max_new_tokens, block_size // 2)
    keep = min(keep, block_size - 1)
    ids = list(ids)
    if len(ids) <= keep:
        return ids, 0
    return ids[-keep:], len(ids) - keep


@torch.inference_mode()
def generate(model: GPT, prompt: torch.Tensor, max_new_tokens: int,
             cfg: SamplingConfig | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,) for up to ``max_new_tokens`` steps.

    ``prompt`` is (B, T) with T <= block_size - 1. Rows that produced
    ``eos_id`` keep yielding eos; the loop stops once every row has.
    """
    cfg = cfg or SamplingConfig()
    block = model.config.block_size
    B, T = prompt.shape
    if block <= T:
        raise ValueError(f"prompt of {T} tokens does not fit the context of {block}; "
                         "use fit_prompt")
    was_training = model.training
    model.eval()
    seq = prompt
    done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    # A cache only as long as this call can use: zero-filling one for the whole
    # context costs more than the prefill of a short prompt.
    cache_len = min(T + max_new_tokens, block)
    try:
        model.setup_cache(B, cache_len)
        logits = prefill(model, seq)
        pos = T
        for _ in range(max_new_tokens):
            tok = sample(logits, seq, cfg, generator)
            if eos_id is not None:
                tok = torch.where(done, torch.full_like(tok, eos_id), tok)
                done |= tok == eos_id
            yield tok
            seq = torch.cat([seq, tok[:, None]], dim=1)
            if eos_id is not None and bool(done.all()):
                return
            if pos >= block:
                # Context full: slide the window, recomputing the cache from the
                # last half-context of tokens (works for learned and RoPE positions).
                seq = seq[:, -(block // 2):]
                model.setup_cache(B, block)
                logits = prefill(model, seq)
                pos = seq.size(1)
            else:
                logits = decode_one_token(model, tok, pos)
                pos += 1
    finally:
        model.clear_cache()
        model.train(was_training)


class IncrementalDecoder:
    """Turns a growing list of token ids into text that only ever grows.

    Decoding the ids again after every token is not monotonic: a byte token
    may decode as U+FFFD until the rest of its UTF-8 sequence arrives. Text is
    committed only when the newly decoded tail is complete (the offsets
    method of Hugging Face's text streamers), so what was streamed is exactly
    what is returned.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids before this are fully committed
        self.read = 0  # ids before this are decoded into text
        self.text = ""

    def add(self, token: int) -> None:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        after = self.tokenizer.decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)

    def flush(self) -> str:
        """Commit whatever is left (an incomplete sequence decodes as U+FFFD)."""
        if self.read < len(self.ids):
            before = self.tokenizer.decode(self.ids[self.prefix:self.read])
            self.text += self.tokenizer.decode(self.ids[self.prefix:])[len(before):]
            self.prefix = self.read = len(self.ids)
        return self.text


@dataclass
class Completion:
    """One generated continuation: its text, how many tokens it took, why it ended."""

    text: str
    tokens: int
    finish_reason: str  # "length", "eos" (end-of-text token) or "stop" (a stop string)


class StopChecker:
    """Finds the earliest stop string in streamed text, holding back what may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def find(self, text: str) -> int:
        """Index of the first stop string in text, or -1."""
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else -1


def generate_text(model: GPT, tokenizer, prompt: str | Sequence[int], *, max_new_tokens: int = 100,
                  cfg: SamplingConfig | None = None, num_return_sequences: int = 1,
                  stop: Sequence[str] = (), seed: int | None = None,
                  on_text: Callable[[int, str], None] | None = None,
                  warn: Callable[[str], None] | None = None) -> list[Completion]:
    """Continue ``prompt`` (text, or token ids); return the continuation of each sequence.

    ``on_text(row, piece)`` is called with newly decoded text as it streams
    (only text that cannot be the start of a stop string). Generation ends at
    ``max_new_tokens``, the tokenizer's end-of-text token, or a stop string
    (which is not included in the result).
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    if not ids:
        raise ValueError("empty prompt and the tokenizer has no end-of-text token to start from")
    ids, dropped = fit_prompt(ids, model.config.block_size, max_new_tokens)
    if dropped:
        warn(f"warning: prompt is longer than the context; kept its last {len(ids)} tokens "
             f"(dropped {dropped})")
    n = num_return_sequences
    prompt_t = torch.tensor([ids] * n, dtype=torch.long, device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    checker = StopChecker(stop)
    rows = [IncrementalDecoder(tokenizer) for _ in range(n)]
    emitted = [0] * n  # characters already streamed per row
    finished = [False] * n
    results: list[Completion | None] = [None] * n

    def advance(row: int, final: str | None) -> None:
        """Stream what is safe to show; ``final`` is the finish reason when the row ends."""
        text = rows[row].flush() if final else rows[row].text
        cut = checker.find(text)
        if cut >= 0:
            finished[row] = True
            text, final = text[:cut], "stop"
        safe = len(text) if final else len(text) - checker.hold
        if on_text and safe > emitted[row]:
            on_text(row, text[emitted[row]:safe])
            emitted[row] = safe
        if final:
            results[row] = Completion(text, len(rows[row].ids), final)

    eos = tokenizer.eos_id
    for tok in generate(model, prompt_t, max_new_tokens, cfg, eos, generator):
        for row, t in enumerate(tok.tolist()):
            if finished[row]:
                continue
            if t == eos:
                finished[row] = True
                advance(row, final="eos")
                continue
            rows[row].add(t)
            advance(row, final=None)
        if all(finished):
            break
    for row in range(n):
        if results[row] is None:
            advance(row, final="length")
    return [r for r in results if r is not None]
