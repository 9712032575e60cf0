"""The HTTP side: an OpenAI-compatible FastAPI app in front of one ``Engine``.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream``),
``GET /v1/models``, ``GET /health``. Streams are server-sent events in the OpenAI chunk format,
ending with ``data: [DONE]``. Every error is an OpenAI error body with a 4xx status, so the
official client raises its usual exceptions; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eaglefinch import chat_format
from eaglefinch.errors import EaglefinchError
from eaglefinch.serve.engine import Engine, Event
from eaglefinch.serve.engine import Request as EngineRequest
from eaglefinch.serve.protocol import ChatCompletionRequest, CompletionRequest, error_body


@dataclass
class ServerConfig:
    model_name: str
    max_prompt_tokens: int = 16384
    default_chat_tokens: int = 512  # a chat request without max_tokens stops here at the latest
    created: int = field(default_factory=lambda: int(time.time()))


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if tuple(first.get("loc", ())) == ("body",):
        return "the request body must be a JSON object (Content-Type: application/json)", None
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(where) or None
    return f"{param or 'body'}: {first.get('msg', 'invalid value')}", param


class Transcripts:
    """Texts whose exact tokens the server has run, so that a conversation's next turn reuses them.

    The state cached after a reply follows the tokens the model generated, which need not be the
    tokens the tokenizer gives for the same text (a model may spell a word in other pieces). A
    client sends the conversation back as text: finding its start here recovers the generated
    tokens, and with them the state cached after the reply. Bounded to ``max_entries`` texts.
    """

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._tokens: OrderedDict[str, list[int]] = OrderedDict()

    def remember(self, text: str, tokens: list[int]) -> None:
        self._tokens[text] = list(tokens)
        self._tokens.move_to_end(text)
        while len(self._tokens) > self.max_entries:
            self._tokens.popitem(last=False)

    def encode(self, tokenizer, text: str) -> list[int]:
        """The tokens for ``text``: a remembered start keeps its tokens, the rest is encoded."""
        best = max((t for t in self._tokens if text.startswith(t)), key=len, default=None)
        if best is None:
            return tokenizer.encode(text)
        self._tokens.move_to_end(best)
        rest = text[len(best) :]
        return self._tokens[best] + (tokenizer.encode(rest) if rest else [])


def create_app(engine: Engine, tokenizer, config: ServerConfig, *, own_engine: bool = True) -> FastAPI:
    """The app; with ``own_engine`` it starts the engine thread on startup and stops it on shutdown
    (otherwise the caller runs the engine, as ``eaglefinch serve`` does on its main thread)."""

    transcripts = Transcripts() if engine.cache is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if not own_engine:
            yield
            return
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="eaglefinch", version="1", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError):
        return JSONResponse(error_body(error.message, param=error.param, code=error.code), error.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError):
        message, param = _validation_message(error)
        return JSONResponse(error_body(message, param=param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(error.detail), type_=kind), error.status_code)

    @app.get("/health")
    async def health() -> dict:
        cache = engine.cache
        return {
            "status": "ok",
            "model": config.model_name,
            "active": engine.active,
            "waiting": engine.waiting,
            "max_batch": engine.max_batch,
            "steps": engine.stats.steps,
            "tokens_generated": engine.stats.tokens_generated,
            "requests_finished": engine.stats.requests_finished,
            "requests_cancelled": engine.stats.requests_cancelled,
            "max_batch_seen": engine.stats.max_batch_seen,
            "state_cache": None
            if cache is None
            else {
                "entries": len(cache),
                "bytes": cache.nbytes,
                "max_bytes": cache.max_bytes,
                "hits": cache.stats.hits,
                "misses": cache.stats.misses,
                "tokens_reused": cache.stats.tokens_reused,
            },
        }

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(config)]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict:
        _check_model(config, name)
        return _model_card(config)

    def check(body) -> None:
        _check_model(config, body.model)
        problem = body.unsupported()
        if problem:
            raise APIError(400, problem)

    def tokens_of(prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = (
                transcripts.encode(tokenizer, prompt) if transcripts is not None else tokenizer.encode(prompt)
            )
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(ids) > config.max_prompt_tokens:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens; this server takes at most {config.max_prompt_tokens} "
                "(--max-prompt-tokens)",
                param="prompt",
                code="context_length_exceeded",
            )
        V = engine.model.config.vocab_size
        bad = [t for t in ids if not 0 <= t < V]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {V})", param="prompt")
        return ids

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        check(body)
        prompts = body.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise APIError(400, "the prompt is empty", param="prompt")
        token_lists = [tokens_of(p) for p in prompts]
        sampling = _sampling(body)
        run = _Run(engine, http, tokenizer, transcripts)
        for i, (prompt, ids) in enumerate(zip(prompts, token_lists, strict=True)):
            text = prompt if isinstance(prompt, str) else None
            run.submit(i, ids, body.max_tokens, sampling, body.stops(), text=text)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(index: int, text: str, finish: str | None) -> dict:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": config.model_name,
                "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        if body.stream:
            return _sse(
                run.stream(chunk, body.include_usage, ident, created, config.model_name, "text_completion")
            )
        texts, finishes = await run.collect()
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": config.model_name,
            "choices": [
                {"index": i, "text": texts[i], "logprobs": None, "finish_reason": finishes[i]}
                for i in range(len(texts))
            ],
            "usage": run.usage(),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        check(body)
        try:
            prompt = chat_format.render(body.chat_messages())
        except EaglefinchError as error:
            raise APIError(400, str(error), param="messages") from None
        ids = tokens_of(prompt)
        run = _Run(engine, http, tokenizer, transcripts, strip_leading_space=True)
        stops = [chat_format.TURN_END, *body.stops()]
        run.submit(0, ids, body.token_limit(config.default_chat_tokens), _sampling(body), stops, text=prompt)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        first = [True]

        def chunk(index: int, text: str, finish: str | None) -> dict:
            delta: dict = {}
            if first[0]:
                delta["role"] = "assistant"
                first[0] = False
            if text:
                delta["content"] = text
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": config.model_name,
                "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        if body.stream:
            return _sse(
                run.stream(
                    chunk, body.include_usage, ident, created, config.model_name, "chat.completion.chunk"
                )
            )
        texts, finishes = await run.collect()
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": config.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": texts[0]},
                    "logprobs": None,
                    "finish_reason": finishes[0],
                }
            ],
            "usage": run.usage(),
        }

    return app


def _model_card(config: ServerConfig) -> dict:
    return {"id": config.model_name, "object": "model", "created": config.created, "owned_by": "eaglefinch"}


def _check_model(config: ServerConfig, name: str) -> None:
    if name != config.model_name:
        raise APIError(
            404,
            f"the model {name!r} does not exist; this server serves {config.model_name!r}",
            param="model",
            code="model_not_found",
        )


def _sampling(body):
    try:
        return body.sampling()
    except EaglefinchError as error:
        raise APIError(400, str(error)) from None


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class _Run:
    """The engine requests of one HTTP request (one per choice) and the events they send back."""

    def __init__(
        self,
        engine: Engine,
        http: Request,
        tokenizer,
        transcripts: Transcripts | None,
        strip_leading_space: bool = False,
    ):
        self.engine, self.http = engine, http
        self.tokenizer, self.transcripts = tokenizer, transcripts
        self.prompts: dict[int, tuple[str, list[int]]] = {}
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.requests: list[EngineRequest] = []
        self.finished: set[int] = set()
        self.strip = strip_leading_space
        self._stripped: set[int] = set()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def submit(
        self, index: int, ids: list[int], max_tokens: int, sampling, stops: list[str], text: str | None = None
    ) -> None:
        if text is not None:
            self.prompts[index] = (text, list(ids))

        def emit(event: Event, index: int = index) -> None:  # called on the engine thread
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
            except RuntimeError:  # the event loop has closed: the server is shutting down
                pass

        request = EngineRequest(list(ids), max_tokens, sampling, emit, stop=stops)
        try:
            self.requests.append(self.engine.submit(request))
        except EaglefinchError as error:
            self.cancel()
            raise APIError(400, str(error)) from None

    def cancel(self) -> None:
        for i, request in enumerate(self.requests):
            if i not in self.finished:
                self.engine.cancel(request)

    def _remember(self, index: int, generated: list[int]) -> None:
        """The text the state now covers, with the tokens it was made of (see ``Transcripts``)."""
        if self.transcripts is None or index not in self.prompts:
            return
        text, ids = self.prompts[index]
        try:
            reply = self.tokenizer.decode_bytes(generated).decode("utf-8")
        except UnicodeDecodeError:  # ends inside a character: no text prefix matches it
            return
        self.transcripts.remember(text + reply, ids + generated)

    def _text(self, index: int, text: str) -> str:
        # "Assistant:" is followed by a space in the transcript; the reply itself starts after it
        if self.strip and index not in self._stripped:
            self._stripped.add(index)
            if text.startswith(" "):
                text = text[1:]
        return text

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        try:
            while len(self.finished) < len(self.requests):
                index, event = await self.queue.get()
                if event.kind == "error":
                    self.finished.add(index)
                    raise APIError(500, event.text, code="engine_error")
                if event.kind == "done":
                    self.finished.add(index)
                    self._remember(index, event.tokens or [])
                    self.prompt_tokens += event.prompt_tokens
                    self.completion_tokens += event.completion_tokens
                else:
                    event.text = self._text(index, event.text)
                yield index, event
        finally:
            self.cancel()  # a client that went away frees its rows at the next step

    async def collect(self) -> tuple[list[str], list[str]]:
        n = len(self.requests)
        texts, finishes = [""] * n, ["stop"] * n
        async for index, event in self.events():
            if event.kind == "text":
                texts[index] += event.text
            else:
                finishes[index] = event.finish_reason
        return texts, finishes

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    async def stream(self, chunk, include_usage: bool, ident: str, created: int, model: str, obj: str):
        def data(payload) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        try:
            async for index, event in self.events():
                if event.kind == "text":
                    if event.text:
                        yield data(chunk(index, event.text, None))
                else:
                    yield data(chunk(index, "", event.finish_reason))
        except APIError as error:
            yield data(error_body(error.message, type_="server_error", code=error.code))
            return
        if include_usage:
            yield data(
                {
                    "id": ident,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": self.usage(),
                }
            )
        yield "data: [DONE]\n\n"
