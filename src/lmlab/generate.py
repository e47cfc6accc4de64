"""Decoding as small pure functions over an explicit KV cache.

``process_logits`` -> ``sample`` pick one token from a (B, V) row of logits;
``prefill`` runs the prompt once, filling the cache; ``decode_one_token`` runs
a single new token. ``generate`` streams token ids; ``generate_text`` adds the
tokenizer, stop strings and text streaming.

Context policy: a prompt longer than the context keeps its last
``block_size - max_new_tokens`` tokens (at least half the context) and says so;
when a sequence fills the context during decoding, the cache is rebuilt from
the last half-context of tokens and decoding continues (a sliding window).

A feed-forward or recurrent LM (``models/rnn.py``) has no cache and no context
limit: its state (the last tokens, or the hidden state) is carried from token
to token instead (``generate_stateful``), with the same sampling.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmlab.models.gpt import GPT
from lmlab.models.registry import context_of, is_stateful
from lmlab.models.rnn import State, StatefulLM


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


def prefill(model: GPT, idx: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
    """Fill the (fresh) cache with the prompt (B, T); return last logits (B, V)."""
    return model(idx, start_pos=0, last_only=True, pad=pad)[:, -1]


def decode_one_token(model: GPT, token: torch.Tensor, pos: int | torch.Tensor,
                     pad: torch.Tensor | None = None) -> torch.Tensor:
    """Feed one token per row (B,) at column ``pos``; return logits (B, V).

    A 0-d tensor ``pos`` decodes against a static cache (see ``KVCache``).
    """
    return model(token.view(-1, 1), start_pos=pos, pad=pad)[:, -1]


# Static caches come in lengths that are multiples of this: each (batch size, length)
# is one compiled graph, and attending the unwritten tail of a longer buffer costs
# reads of keys and values that a tighter one would not make.
STATIC_CACHE_STEP = 128

# Seconds the first compiled step of each (batch size, cache length) took, in this
# process (length 0: the dynamic graph): the compile time that ``--compile`` reports.
compile_seconds: dict[tuple[int, int], float] = {}


def static_cache_len(needed: int, block_size: int) -> int:
    """The static cache length for ``needed`` columns: rounded up to STATIC_CACHE_STEP."""
    return min(block_size, -(-needed // STATIC_CACHE_STEP) * STATIC_CACHE_STEP)


@functools.cache
def compiled_decode(dynamic: bool = False, frozen: bool = False) -> Callable[..., torch.Tensor]:
    """``decode_one_token`` through torch.compile.

    Static (the default): the position is a tensor and the cache a fixed buffer,
    so one graph per (batch size, cache length) serves every step. Dynamic: the
    position is an int and the cache length and batch size symbolic, so one
    graph serves every shape, for callers whose shapes change all the time (a
    chat's growing conversation, the server's changing batch).

    ``frozen`` (static only; for weight-only quantized models, see
    ``frozen_weights_apply``): Inductor's freezing, which takes the weights as
    constants of the graph, and max-autotune, which then times its own generated
    GEMM for each 4-bit and 8-bit weight (AVX-512 or AMX code reading the packed
    weights) against torch's kernel and keeps the faster. Neither option alone
    changed the speed. Dynamo reads ``freezing`` while it traces (it then guards
    on the identity of every weight and buffer, so the caller keeps its cache
    buffers: ``GPT.setup_cache(reuse=True)``), so the options are set around the
    call, not passed to torch.compile (which applies them to Inductor only).
    Inductor's FX graph cache is off for these graphs: in torch 2.13 it handed a
    second model of the same shape the first one's frozen weights.

    The frozen step takes ``again=True`` for the steps after the first of a
    decoding loop: those skip Dynamo's guards on the weights and buffers (all but
    the ones that tell its compiled graphs apart), which cost about 0.7 of SmolLM2's
    7 ms a token. Only the caller knows that nothing the guards check has changed
    since the first step (the same model, cache buffers and shapes).
    """
    import torch._dynamo

    # A graph for each of many (batch size, cache length) pairs.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    compiled = torch.compile(decode_one_token, dynamic=dynamic)
    if not frozen:
        return compiled
    import torch._inductor.config

    def frozen_step(*args: Any, again: bool = False) -> torch.Tensor:
        with torch._inductor.config.patch(freezing=True, max_autotune=True,
                                          fx_graph_cache=False,
                                          autotune_num_choices_displayed=0):  # no tables
            if not again:
                return compiled(*args)
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return compiled(*args)

    return frozen_step


def frozen_weights_apply(model: torch.nn.Module) -> bool:
    """Whether the compiled decode step may take ``model``'s weights as constants: a
    weight-only quantized model (inference only: its 4- and 8-bit weights are buffers
    that nothing trains) without LoRA adapters (trainable, and read afresh each call)."""
    from lmlab.models.quantize import WeightOnlyInt4Linear, WeightOnlyInt8Linear

    quantized = lora = False
    for name, module in model.named_modules():
        quantized |= isinstance(module, WeightOnlyInt4Linear | WeightOnlyInt8Linear)
        lora |= ".lora_" in name or name.startswith("lora_")
    return quantized and not lora


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts of different lengths as one (B, T) tensor padded on the left.

    Returns the tensor and the number of padding columns of each row (B,), or
    None when all prompts have the same length (no mask needed).
    """
    T = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), T), pad_id, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        idx[row, T - len(p):] = torch.tensor(list(p), dtype=torch.long)
    pad = torch.tensor([T - len(p) for p in prompts], device=device)
    return idx, (pad if bool(pad.any()) else None)


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of different lengths as one (B, S) tensor padded on the right (an
    encoder's sources), and its mask (B, S), True on real tokens."""
    S = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), S), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(sequences), S, dtype=torch.bool, device=device)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, :len(s)] = True
    return ids, mask


def _seen(seq: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """The tokens a row has seen, for the repetition penalty: padding columns are
    replaced by the row's first real token, which the row has seen anyway."""
    if pad is None:
        return seq
    cols = torch.arange(seq.size(1), device=seq.device)[None, :]
    first = seq.gather(1, pad.clamp(max=seq.size(1) - 1)[:, None])  # (B, 1)
    return torch.where(cols < pad[:, None], first, seq)


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
def generate_stateful(model: StatefulLM, prompt: torch.Tensor, max_new_tokens: int,
                      cfg: SamplingConfig, eos_id: int | None = None,
                      generator: torch.Generator | None = None,
                      pad: torch.Tensor | None = None,
                      min_new_tokens: int = 0) -> Iterator[torch.Tensor]:
    """``generate`` for a feed-forward or recurrent LM: the prompt is read once, then
    each sampled token is fed back with the carried state.

    Rows advance one call each: a left-padded row must not read its padding
    into its state, and states of rows with prompts of different lengths do
    not stack in general (a feed-forward LM's history is as long as its prompt).
    """
    B, T = prompt.shape
    pads = pad.tolist() if pad is not None else [0] * B
    was_training = model.training
    model.eval()
    try:
        states: list[State] = []
        last = []
        for row in range(B):
            logits, state = model(prompt[row:row + 1, pads[row]:])  # (1, T_row, V)
            states.append(state)
            last.append(logits[:, -1])
        logits = torch.cat(last)  # (B, V)
        seq = prompt
        done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
        for i in range(max_new_tokens):
            if i < min_new_tokens and eos_id is not None:
                logits[:, eos_id] = float("-inf")
            tok = sample(logits, _seen(seq, pad), cfg, generator)  # (B,)
            if eos_id is not None:
                tok = torch.where(done, torch.full_like(tok, eos_id), tok)
                done |= tok == eos_id
            yield tok
            seq = torch.cat([seq, tok[:, None]], dim=1)
            if (eos_id is not None and bool(done.all())) or i == max_new_tokens - 1:
                return
            last = []
            for row in range(B):
                out, states[row] = model(tok[row].view(1, 1), states[row])  # (1, 1, V)
                last.append(out[:, -1])
            logits = torch.cat(last)
    finally:
        model.train(was_training)


@torch.inference_mode()
def generate(model: GPT | StatefulLM, prompt: torch.Tensor, max_new_tokens: int,
             cfg: SamplingConfig | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None,
             pad: torch.Tensor | None = None, compile: bool = False,
             dynamic: bool = False, min_new_tokens: int = 0) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,) for up to ``max_new_tokens`` steps.

    ``prompt`` is (B, T) with T <= block_size - 1, left-padded by ``pad``
    columns per row (see ``left_pad``) when the prompts differ in length.
    Rows that produced ``eos_id`` keep yielding eos; the loop stops once every
    row has. For the first ``min_new_tokens`` steps ``eos_id`` is not allowed
    (as Hugging Face's ``min_new_tokens``): a benchmark decodes a fixed length.

    ``compile`` decodes against a static cache (fixed buffers of a length
    rounded up to STATIC_CACHE_STEP) with the one-token step run through
    torch.compile: a one-off compile of about a minute per batch size and
    cache length on 2 cores (``compile_seconds``), then no Python or dispatch
    cost per op, which is most of a step for small many-layer models like
    SmolLM2. A weight-only quantized model's step is compiled with its weights
    frozen (``compiled_decode``'s ``frozen``; its cache buffers are kept for the
    next call). ``dynamic`` compiles one graph for every shape instead and
    decodes against the growing cache (see ``compiled_decode``).
    A feed-forward or recurrent LM decodes through ``generate_stateful``
    (``compile`` does not apply).
    """
    cfg = cfg or SamplingConfig()
    if is_stateful(model):
        yield from generate_stateful(model, prompt, max_new_tokens, cfg, eos_id, generator, pad,
                                     min_new_tokens)
        return
    block = model.config.block_size
    static = compile and not dynamic
    frozen = static and frozen_weights_apply(model)
    step = compiled_decode(dynamic, frozen) if compile else decode_one_token
    B, T = prompt.shape
    if compile and dynamic and pad is None:
        # The dynamic graph is built for a padded batch; no padding is a pad of zeros
        # (a second graph otherwise, as the server's batcher would need too).
        pad = torch.zeros(B, dtype=torch.long, device=prompt.device)
    pos_arg: Callable[[int], int | torch.Tensor] = (
        (lambda p: torch.tensor(p, device=prompt.device)) if static else (lambda p: p))
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
    if static:
        cache_len = static_cache_len(cache_len, block)
    # The frozen step checks its guards on the first step after each cache set-up
    # and trusts them after (see compiled_decode).
    again: dict[str, bool] = {}
    trusted = {"again": True} if frozen else {}
    try:
        model.setup_cache(B, cache_len, reuse=frozen)
        logits = model(seq, start_pos=pos_arg(0), last_only=True, pad=pad)[:, -1]
        pos = T
        for i in range(max_new_tokens):
            if i < min_new_tokens and eos_id is not None:
                logits[:, eos_id] = float("-inf")
            tok = sample(logits, _seen(seq, pad), cfg, generator)
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
                dropped = seq.size(1) - block // 2
                seq = seq[:, dropped:]
                if pad is not None:
                    pad = (pad - dropped).clamp(min=0)
                    pad = pad if bool(pad.any()) or (compile and dynamic) else None
                model.setup_cache(B, cache_len := block, reuse=frozen)
                logits = model(seq, start_pos=pos_arg(0), last_only=True, pad=pad)[:, -1]
                pos = seq.size(1)
                again = {}  # a new cache: the next step checks its guards
            # A dynamic graph specializes a batch of one and serves every other shape.
            elif compile and (shape := (B, cache_len) if static else (min(B, 2), 0)) \
                    not in compile_seconds:
                t0 = time.perf_counter()
                logits = step(model, tok, pos_arg(pos), pad, **again)
                compile_seconds[shape] = time.perf_counter() - t0
                pos += 1
                again = trusted
            else:
                logits = step(model, tok, pos_arg(pos), pad, **again)
                pos += 1
                again = trusted
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


def generate_text(model: GPT | StatefulLM, tokenizer, prompt: str | Sequence[int], *,
                  num_return_sequences: int = 1, **kwargs) -> list[Completion]:
    """Continue ``prompt`` (text, or token ids) ``num_return_sequences`` times.

    Keyword arguments are those of ``generate_texts``.
    """
    return generate_texts(model, tokenizer, [prompt] * num_return_sequences, **kwargs)


def generate_texts(model: GPT | StatefulLM, tokenizer, prompts: Sequence[str | Sequence[int]], *,
                   max_new_tokens: int = 100, cfg: SamplingConfig | None = None,
                   stop: Sequence[str] = (), seed: int | None = None,
                   on_text: Callable[[int, str], None] | None = None,
                   warn: Callable[[str], None] | None = None,
                   compile: bool = False, dynamic: bool = False,
                   min_new_tokens: int = 0) -> list[Completion]:
    """Continue every prompt (text, or token ids) in one batch; one Completion each.

    Prompts of different lengths are left-padded and masked, so each gets the
    same greedy continuation as it would alone (while the batch fits the
    context; past it, the batch slides its window as one). ``on_text(row, piece)`` is
    called with newly decoded text as it streams (only text that cannot be the
    start of a stop string). A row ends at ``max_new_tokens``, the tokenizer's
    end-of-text token (not before ``min_new_tokens``), or a stop string (which is
    not included in the result). ``compile`` and ``dynamic`` are ``generate``'s.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    device = next(model.parameters()).device
    id_lists = []
    for prompt in prompts:
        ids = tokenizer.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        if not ids:
            raise ValueError("empty prompt and the tokenizer has no end-of-text token to "
                             "start from")
        # A stateful LM has no context limit: its state reads any prompt.
        dropped = 0
        if (context := context_of(model)) is not None:
            ids, dropped = fit_prompt(ids, context, max_new_tokens)
        if dropped:
            warn(f"warning: prompt is longer than the context; kept its last {len(ids)} "
                 f"tokens (dropped {dropped})")
        id_lists.append(ids)
    n = len(id_lists)
    prompt_t, pad = left_pad(id_lists, pad_id=tokenizer.eos_id or 0, device=device)
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
    for tok in generate(model, prompt_t, max_new_tokens, cfg, eos, generator, pad, compile,
                        dynamic, min_new_tokens):
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
