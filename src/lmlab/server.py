"""`lmlab serve`: an OpenAI-compatible HTTP server (FastAPI) and a chat page.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (whole, or streamed as server-sent events ending in
``data: [DONE]``), ``POST /v1/embeddings`` (an encoder such as MiniLM), and the
chat page at ``/`` (``static/chat.html``, no build step).

Generation goes through one ``Batcher`` (``batching.py``): concurrent requests
are decoded together, joining and leaving the running batch; at most
``max_queue`` wait (more get 429); each has a deadline (``timeout``); a client
that disconnects has its generation cancelled.

Safe by default: the server binds 127.0.0.1 (``serve`` refuses another address
without an API key); with a key every ``/v1`` call needs ``Authorization:
Bearer KEY``; request bodies and ``max_tokens`` are capped; a malformed body or
field is a 400 with an OpenAI-style error object
(``{"error": {"message", "type", "param", "code"}}``); nothing in a request
names a file: the model is the one the server was started with.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmlab.batching import Batcher, Event, QueueFull, Request
from lmlab.data.chat import render_prompt
from lmlab.errors import LmlabError
from lmlab.generate import SamplingConfig

STATIC = Path(__file__).parent / "static"


@dataclass
class Limits:
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256  # when it asks for nothing
    max_body: int = 1_000_000  # bytes
    timeout: float = 300.0  # seconds from arrival to the last token
    max_n: int = 8


# ---------------------------------------------------------------- request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class _Sampling(_Body):
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    stream_options: dict[str, Any] | None = None


class ChatBody(_Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionBody(_Sampling):
    prompt: str | list[str]


class EmbeddingBody(_Body):
    input: str | list[str]


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code)


def error_body(message: str, type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------- the app
class Service:
    """What the endpoints share: the model (or encoder), its tokenizer and template, the
    batcher, the limits."""

    def __init__(self, name: str, tokenizer, *, model=None, template: str | None = None,
                 encoder=None, limits: Limits | None = None, api_key: str | None = None,
                 max_batch: int = 16, max_queue: int = 256, compile: bool = False) -> None:
        self.name = name
        self.tok = tokenizer
        self.template = template
        self.encoder = encoder
        self.limits = limits or Limits()
        self.api_key = api_key
        self.created = int(time.time())
        self.batcher = (Batcher(model, tokenizer, max_batch, max_queue, compile=compile)
                        if model else None)
        self.encoder_lock = threading.Lock()

    # -- prompts -----------------------------------------------------------
    def chat_prompt(self, messages: list[Message]) -> tuple[list[int], tuple[str, ...]]:
        return render_prompt(self.template, self.tok, [m.model_dump() for m in messages])

    def requests(self, body: _Sampling, prompts: list[list[int]], stops: tuple[str, ...],
                 on_event) -> list[Request]:
        lim = self.limits
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > lim.max_tokens:
            raise ApiError(400, f"max_tokens {asked} is above this server's limit of "
                           f"{lim.max_tokens}", param="max_tokens")
        if body.n > lim.max_n:
            raise ApiError(400, f"n {body.n} is above this server's limit of {lim.max_n}",
                           param="n")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4:
            raise ApiError(400, "at most 4 stop sequences", param="stop")
        context = self.batcher.model.config.block_size
        cfg = SamplingConfig(temperature=body.temperature, top_p=body.top_p)
        out = []
        for p, ids in enumerate(prompts):
            if len(ids) >= context:
                raise ApiError(400, f"the prompt has {len(ids)} tokens; this model's context "
                               f"is {context}", param="messages", code="context_length_exceeded")
            for i in range(body.n):
                seed = None if body.seed is None else body.seed + i
                out.append(Request(ids, asked or lim.default_max_tokens, cfg,
                                   tuple(stop) + stops, seed, lim.timeout,
                                   on_event=on_event(p * body.n + i)))
        return out


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="lmlab", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_: HTTPRequest, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)

    @app.exception_handler(LmlabError)
    async def lmlab_error(_: HTTPRequest, e: LmlabError) -> JSONResponse:
        # A chat template's raise_exception ("roles must alternate") or a bad input.
        return JSONResponse(error_body(str(e), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(_: HTTPRequest, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}",
                                       "server_error"), status_code=500)

    @app.middleware("http")
    async def guard(request: HTTPRequest, call_next):
        if request.url.path.startswith("/v1") and service.api_key:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), service.api_key.encode()):
                return JSONResponse(error_body("missing or wrong API key (Authorization: "
                                               "Bearer KEY)", "invalid_request_error",
                                               code="invalid_api_key"), status_code=401)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > service.limits.max_body:
            return JSONResponse(error_body(f"request body over {service.limits.max_body} "
                                           "bytes", "invalid_request_error"), status_code=413)
        return await call_next(request)

    async def parse(request: HTTPRequest, cls: type[BaseModel]) -> Any:
        # Read up to the limit (a chunked body has no Content-Length to refuse early).
        raw = b""
        async for part in request.stream():
            raw += part
            if len(raw) > service.limits.max_body:
                raise ApiError(413, f"request body over {service.limits.max_body} bytes")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e})") from None
        try:
            body = cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(x) for x in first["loc"]) or None
            raise ApiError(400, f"{param or 'body'}: {first['msg']}", param=param) from None
        if body.model not in (None, service.name):
            raise ApiError(404, f"the model {body.model!r} does not exist; this server "
                           f"serves {service.name!r}", param="model", code="model_not_found")
        return body

    def need_generator() -> None:
        if service.batcher is None:
            raise ApiError(400, f"{service.name} is an encoder: it serves /v1/embeddings only")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        load = service.batcher.load() if service.batcher else {}
        return {"status": "ok", "model": service.name, **load}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": service.name, "object": "model",
                                            "created": service.created, "owned_by": "lmlab"}]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "chat.html").read_text(encoding="utf-8"))

    async def run(request: HTTPRequest, body: _Sampling, prompts: list[list[int]],
                  stops: tuple[str, ...], kind: Literal["chat", "text"]):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def listener(i: int):
            return lambda e: loop.call_soon_threadsafe(events.put_nowait, (i, e))

        reqs = service.requests(body, prompts, stops, listener)
        submitted = []
        try:
            for r in reqs:
                service.batcher.submit(r)
                submitted.append(r)
        except QueueFull as e:
            for r in submitted:
                r.cancel()
            raise ApiError(429, f"the server is busy ({e}); retry later",
                           type="rate_limit_error") from None
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        prompt_tokens = sum(len(p) for p in prompts)  # each prompt once, whatever n
        if body.stream:
            return StreamingResponse(
                _stream(events, reqs, rid, kind, service.name, prompt_tokens, body),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts = [""] * len(reqs)
        finals: list[Event | None] = [None] * len(reqs)
        # The worker enforces each deadline; this one only guards against a worker that
        # stopped answering. A client that hangs up cancels its generation.
        deadline = time.monotonic() + service.limits.timeout + 30
        try:
            while any(f is None for f in finals):
                try:
                    i, e = await asyncio.wait_for(events.get(), timeout=1.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                    if time.monotonic() > deadline:
                        raise ApiError(504, "no answer from the model", type="timeout") from None
                    continue
                texts[i] += e.text
                if e.finish_reason is not None and finals[i] is None:
                    finals[i] = e
        finally:
            for r in reqs:
                r.cancel()
        for e in finals:
            if e.finish_reason == "timeout":
                raise ApiError(504, f"generation took over {service.limits.timeout:g} s",
                               type="timeout")
            if e.finish_reason == "error":
                raise ApiError(500, f"generation failed: {e.error}", type="server_error")
        completion = sum(e.completion_tokens for e in finals)
        choices = []
        for i, (text, e) in enumerate(zip(texts, finals, strict=True)):
            reason = e.finish_reason if e.finish_reason in ("stop", "length") else "stop"
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "finish_reason": reason} if kind == "chat" else
                           {"index": i, "text": text, "finish_reason": reason,
                            "logprobs": None})
        return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()), "model": service.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        body = await parse(request, ChatBody)
        need_generator()
        ids, stops = service.chat_prompt(body.messages)
        return await run(request, body, [ids], stops, "chat")

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await parse(request, CompletionBody)
        need_generator()
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > service.limits.max_n:
            raise ApiError(400, f"prompt: give 1 to {service.limits.max_n} prompts",
                           param="prompt")
        tok = service.tok
        ids = [tok.encode_prompt(p) or ([tok.eos_id] if tok.eos_id is not None else [])
               for p in prompts]
        if any(not x for x in ids):
            raise ApiError(400, "prompt: empty", param="prompt")
        return await run(request, body, ids, (), "text")

    @app.post("/v1/embeddings")
    async def embeddings(request: HTTPRequest):
        body = await parse(request, EmbeddingBody)
        if service.encoder is None:
            raise ApiError(400, f"{service.name} is not an encoder; start `lmlab serve` with "
                           "an encoder (a BERT folder such as all-MiniLM-L6-v2) for embeddings")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > 256 or not all(t.strip() for t in texts):
            raise ApiError(400, "input: give 1 to 256 non-empty texts", param="input")

        def embed():
            from lmlab.sentences import sentence_embeddings

            with service.encoder_lock:
                return sentence_embeddings(service.encoder, service.tok, texts, normalize=True)

        vectors = await asyncio.to_thread(embed)
        tokens = sum(len(service.tok.encode(t)) for t in texts)
        return {"object": "list", "model": service.name,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app


async def _stream(events, reqs: list[Request], rid: str, kind: str, name: str,
                  prompt_tokens: int, body: _Sampling):
    """Server-sent events: one chunk per piece of text, a last chunk per choice with its
    finish reason, usage when asked (stream_options.include_usage), then [DONE]. A client
    that goes away cancels its generation (the ``finally``)."""
    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(choices: list[dict[str, Any]], usage: dict | None = None) -> str:
        data = {"id": rid, "object": obj, "created": created, "model": name, "choices": choices}
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def choice(i: int, text: str | None, reason: str | None) -> dict[str, Any]:
        if kind == "chat":
            delta = {} if text is None else {"content": text}
            return {"index": i, "delta": delta, "finish_reason": reason}
        return {"index": i, "text": text or "", "finish_reason": reason, "logprobs": None}

    try:
        if kind == "chat":
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None} for i in range(len(reqs))])
        open_ = len(reqs)
        completion = 0
        while open_:
            i, e = await events.get()
            if e.text:
                yield chunk([choice(i, e.text, None)])
            if e.finish_reason is not None:
                open_ -= 1
                completion += e.completion_tokens
                if e.finish_reason in ("timeout", "error"):
                    message = ("generation timed out" if e.finish_reason == "timeout"
                               else f"generation failed: {e.error}")
                    yield f"data: {json.dumps(error_body(message, e.finish_reason))}\n\n"
                    reason = "length"
                else:
                    reason = e.finish_reason
                yield chunk([choice(i, None, reason)])
        if (body.stream_options or {}).get("include_usage"):
            yield chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                             "total_tokens": prompt_tokens + completion})
        yield "data: [DONE]\n\n"
    finally:
        for r in reqs:
            r.cancel()
