"""Continuous batching: many requests decoded together, joining and leaving as they come.

One worker thread owns the model. Each turn of its loop it

1. admits waiting requests (up to ``max_batch`` rows in all): their prompts are
   prefilled together, left-padded, into a cache of their own, which is then
   merged into the running batch's cache;
2. decodes one token for every running row in one forward pass;
3. samples each row with its own settings (temperature, top-p, its own seeded
   generator), streams its new text, and retires the rows that ended (end token,
   stop string, max_tokens, cancelled, timed out).

The cache. Rows share columns: the batch is at column ``t``, and row r's tokens
fill columns ``pad[r]..t-1`` (left padding, masked, positions counted from the
row's first real token: ``GPT.forward(pad=...)``), so one forward pass serves
rows of any lengths. Prompts that join are aligned to end at column ``t`` (a
prompt longer than ``t`` shifts the running rows right instead); rows that leave
are dropped and the columns no remaining row uses are cut from the left, so ``t``
stays the length of the longest running row and a request can never be pushed
past the context by the others. Every row gets the tokens it would get alone
(greedy; up to float rounding of the batched matmuls).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmlab.generate import (
    IncrementalDecoder,
    SamplingConfig,
    StopChecker,
    compiled_decode,
    decode_one_token,
    left_pad,
    sample,
)
from lmlab.models.gpt import GPT, KVCache


class QueueFull(Exception):
    """The server is at its limit of waiting requests (HTTP 429)."""


@dataclass
class Event:
    """What a request's listener receives: new text, and at the end why it finished."""

    text: str
    finish_reason: str | None = None  # "stop", "length", "cancelled", "timeout", "error"
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Request:
    prompt_ids: list[int]
    max_tokens: int
    cfg: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    timeout: float | None = None  # seconds from submission
    on_event: Callable[[Event], None] = lambda e: None
    # Set by the batcher.
    submitted: float = 0.0
    cancelled: bool = False

    def cancel(self) -> None:
        """Ask the worker to drop this request (a client that went away)."""
        self.cancelled = True


def _ended(req: Request) -> str | None:
    """Why a request must end now, if it must: cancelled, or past its deadline."""
    if req.cancelled:
        return "cancelled"
    if req.timeout is not None and time.monotonic() - req.submitted > req.timeout:
        return "timeout"
    return None


def _tell(req: Request, event: Event) -> None:
    """Deliver an event; a listener that fails (its event loop closed) must not take the
    worker thread down with it."""
    try:
        req.on_event(event)
    except Exception:  # noqa: BLE001 - the request is gone; the batch goes on
        req.cancelled = True


class _Row:
    """A running request: its decoding state."""

    def __init__(self, req: Request, tokenizer, device: torch.device) -> None:
        self.req = req
        self.text = IncrementalDecoder(tokenizer)
        self.stops = StopChecker(req.stop)
        self.emitted = 0
        self.generated = 0
        self.next_token = -1
        self.done = False  # its final event was sent
        self.generator = None
        if req.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(req.seed)

    def push(self, token: int, eos: int | None) -> str | None:
        """Take a sampled token; the finish reason when the row ends with it."""
        if token == eos:
            return self._emit("stop")
        self.generated += 1
        self.next_token = token
        self.text.add(token)
        if self.generated >= self.req.max_tokens:
            return self._emit("length")
        return self._emit(None)

    def _emit(self, final: str | None) -> str | None:
        text = self.text.flush() if final else self.text.text
        cut = self.stops.find(text)
        if cut >= 0:
            text, final = text[:cut], "stop"
        safe = len(text) if final else max(self.emitted, len(text) - self.stops.hold)
        if safe > self.emitted or final:
            _tell(self.req, Event(text[self.emitted:safe], final, self.generated))
            self.emitted = safe
        self.done = final is not None
        return final

    def end(self, reason: str) -> None:
        """End early (cancelled, timed out, failed), with the text held back so far."""
        text = self.text.flush()
        cut = self.stops.find(text)
        text = text[:cut] if cut >= 0 else text
        _tell(self.req, Event(text[self.emitted:], reason, self.generated))
        self.emitted, self.done = len(text), True


class Batcher:
    """A worker thread decoding every submitted request in one running batch."""

    def __init__(self, model: GPT, tokenizer, max_batch: int = 16, max_queue: int = 256,
                 room: int = 128, compile: bool = False) -> None:
        self.model = model.eval()
        # The batch and its cache change shape every few steps: one dynamic graph for all.
        self.compile = compile
        self.tok = tokenizer
        self.eos = tokenizer.eos_id
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.room = room  # columns allocated ahead of need
        self.device = next(model.parameters()).device
        self.waiting: deque[Request] = deque()
        self.lock = threading.Condition()
        self.rows: list[_Row] = []
        self.pad: list[int] = []
        self.t = 0  # the batch's next column
        self.stopped = False
        self.steps = 0  # decode steps run (for tests and stats)
        self.thread = threading.Thread(target=self._loop, name="lmlab-batcher", daemon=True)
        self.thread.start()

    # -- the API -----------------------------------------------------------
    def submit(self, req: Request) -> None:
        context = self.model.config.block_size
        if len(req.prompt_ids) >= context:
            raise ValueError(f"the prompt has {len(req.prompt_ids)} tokens; the context is "
                             f"{context}")
        req.max_tokens = min(req.max_tokens, context - len(req.prompt_ids))
        req.submitted = time.monotonic()
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting")
            self.waiting.append(req)
            self.lock.notify()

    def load(self) -> dict[str, int]:
        with self.lock:
            return {"running": len(self.rows), "waiting": len(self.waiting)}

    def close(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify()
        self.thread.join(timeout=10)

    # -- the loop ----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.waiting and not self.rows and not self.stopped:
                    self.lock.wait()
                if self.stopped:
                    return
                # Requests that were cancelled or timed out while waiting leave the queue
                # now, so they neither hold a place in it nor get prefilled.
                self.waiting = deque(r for r in self.waiting if not self._expired(r))
                room = self.max_batch - len(self.rows)
                group = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
            with torch.inference_mode():
                if group:
                    try:
                        self._admit(group)
                    except Exception as e:  # a failed prefill fails its own requests only
                        self._fail([r for r in group if all(r is not row.req for row in
                                                            self.rows)], e)
                        if not self._cache_whole():
                            self._reset(e)
                if self.rows:
                    try:
                        self._step()
                    except Exception as e:  # a failed forward pass: every running request
                        self._reset(e)

    def _fail(self, reqs: list[Request], e: Exception) -> None:
        for req in reqs:
            _tell(req, Event("", "error", 0, error=str(e)))

    def _reset(self, e: Exception) -> None:
        """Fail every running request and start from an empty batch."""
        for row in self.rows:
            if not row.done:
                _tell(row.req, Event("", "error", row.generated, error=str(e)))
        self.rows, self.pad, self.t = [], [], 0
        self.model.clear_cache()

    def _cache_whole(self) -> bool:
        """Whether every layer's cache holds the running rows (a failure mid-merge would
        leave some layers with other shapes)."""
        caches = [b.attn.kv_cache for b in self._blocks()]
        if not self.rows:
            return True
        return all(c is not None and c.k.size(0) == len(self.rows) for c in caches)

    def _expired(self, req: Request) -> bool:
        """Whether a request ends before its next token: cancelled or past its deadline."""
        reason = _ended(req)
        if reason:
            _tell(req, Event("", reason))
        return reason is not None

    def _blocks(self) -> list:
        return list(self.model.transformer.h)

    def _admit(self, group: list[Request]) -> None:
        """Prefill ``group`` together and merge it into the running batch."""
        model = self.model
        ids, pad = left_pad([r.prompt_ids for r in group], pad_id=self.eos or 0,
                            device=self.device)
        n, P = ids.shape
        running = [b.attn.kv_cache for b in self._blocks()]
        model.setup_cache(n, P)
        try:
            logits = model(ids, start_pos=0, last_only=True, pad=pad)[:, -1]  # (n, V)
            fresh = [b.attn.kv_cache for b in self._blocks()]
        finally:
            for b, c in zip(self._blocks(), running, strict=True):
                b.attn.kv_cache = c
        new_pad = pad.tolist() if pad is not None else [0] * n
        T = max(self.t, P)
        shift_old, shift_new = T - self.t, T - P
        B = len(self.rows) + n
        for i, block in enumerate(self._blocks()):
            f = fresh[i]
            shape = (B, f.k.size(1), T + self.room, f.k.size(3))
            k = torch.zeros(shape, dtype=f.k.dtype, device=self.device)
            v = torch.zeros(shape, dtype=f.v.dtype, device=self.device)
            if self.rows:
                old = block.attn.kv_cache
                k[:len(self.rows), :, shift_old:T] = old.k[:, :, :self.t]
                v[:len(self.rows), :, shift_old:T] = old.v[:, :, :self.t]
            k[len(self.rows):, :, shift_new:T] = f.k[:, :, :P]
            v[len(self.rows):, :, shift_new:T] = f.v[:, :, :P]
            block.attn.kv_cache = KVCache.holding(k, v, T)
        self.pad = [p + shift_old for p in self.pad] + [p + shift_new for p in new_pad]
        self.t = T
        rows = [_Row(r, self.tok, self.device) for r in group]
        self.rows += rows
        self._sample(rows, logits, start=len(self.rows) - n)

    def _step(self) -> None:
        """One token for every running row, in one forward pass."""
        if self.t >= self.caches_len():
            self._regrow()
        tokens = torch.tensor([r.next_token for r in self.rows], device=self.device)
        # No padding anywhere (one request, or rows of one length): no mask to build,
        # except for a compiled step, which would otherwise need a second graph.
        pad = (torch.tensor(self.pad, device=self.device) if any(self.pad) or self.compile
               else None)
        step = compiled_decode(dynamic=True) if self.compile else decode_one_token
        logits = step(self.model, tokens, self.t, pad)  # (B, V)
        self.t += 1
        self.steps += 1
        self._sample(self.rows, logits, start=0)

    def caches_len(self) -> int:
        return self._blocks()[0].attn.kv_cache.k.size(2)

    def _regrow(self) -> None:
        for block in self._blocks():
            c = block.attn.kv_cache
            extra = torch.zeros((*c.k.shape[:2], self.room, c.k.size(3)), dtype=c.k.dtype,
                                device=self.device)
            block.attn.kv_cache = KVCache.holding(torch.cat([c.k, extra], 2),
                                              torch.cat([c.v, extra.clone()], 2), c.length)

    def _sample(self, rows: list[_Row], logits: torch.Tensor, start: int) -> None:
        """Pick each row's next token, stream it, and retire the rows that ended."""
        greedy = logits.float().argmax(-1).tolist()
        empty = torch.empty(1, 0, dtype=torch.long, device=self.device)
        done = []
        for j, row in enumerate(rows):
            reason = _ended(row.req)
            if reason:
                row.end(reason)
                done.append(start + j)
                continue
            try:
                token = (greedy[j] if row.req.cfg.greedy else
                         int(sample(logits[j:j + 1], empty, row.req.cfg, row.generator)))
            except Exception:  # noqa: BLE001 - e.g. NaN logits: this row fails alone
                row.end("error")
                done.append(start + j)
                continue
            if row.push(token, self.eos) is not None:
                done.append(start + j)
        if done:
            self._retire(done)

    def _retire(self, indices: list[int]) -> None:
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in keep]
        self.pad = [self.pad[i] for i in keep]
        if not keep:
            self.t, self.pad = 0, []
            for block in self._blocks():
                block.attn.kv_cache = None
            return
        # Columns that are padding in every remaining row go: t stays the longest row.
        cut = min(self.pad)
        index = torch.tensor(keep, device=self.device)
        for block in self._blocks():
            c = block.attn.kv_cache
            k = c.k.index_select(0, index)[:, :, cut:].contiguous()
            v = c.v.index_select(0, index)[:, :, cut:].contiguous()
            block.attn.kv_cache = KVCache.holding(k, v, self.t - cut)
        self.pad = [p - cut for p in self.pad]
        self.t -= cut


def collect(batcher: Batcher, req: Request, timeout: float | None = None) -> tuple[str, Event]:
    """Submit ``req`` and wait for it: its whole text and the last event (for tests and
    scripts; the server listens to events instead)."""
    events: queue.Queue[Event] = queue.Queue()
    req.on_event = events.put
    batcher.submit(req)
    text = ""
    while True:
        e = events.get(timeout=timeout)
        text += e.text
        if e.finish_reason is not None:
            return text, e
