"""The HTTP layer of `lmkit serve` (FastAPI): routes, the API key, errors in OpenAI's shape, streaming.

    app = create_app(BatchEngine(model, tokenizer), "tinystories")   # an ASGI app; `run_server` serves it

GET /health, GET / (the playground page), GET /v1/models, GET /v1/models/{id}, POST /v1/completions.
The model itself runs on the engine's worker thread (lmkit.serve.engine); this layer only validates,
tokenizes, submits, and turns the engine's events into JSON or server-sent events.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from types import FrameType
from typing import Any

from lmkit.errors import InputError

try:
    import uvicorn
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
except ImportError:  # pragma: no cover - depends on the install
    raise InputError('lmkit serve needs FastAPI and uvicorn: pip install "lmkit[serve]"') from None

from lmkit.chat import has_chat_tokens, render
from lmkit.chat.template import IM_END
from lmkit.generate import generation_config, token_logprobs
from lmkit.serve.api import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_choice,
    chat_completion,
    chat_delta,
    choice,
    completion,
    finished_choice,
    logprobs_object,
    parse_request,
    server_sent_event,
    usage,
)
from lmkit.serve.drain import Drain, DrainExpired
from lmkit.serve.engine import BatchEngine, Event, Failed, Finished, SequenceRequest, TextPiece, Ticket

MAX_REQUEST_BYTES = 1_000_000
# How often a request waiting for a whole (non-streamed) completion checks whether its client hung up.
DISCONNECT_CHECK_SECONDS = 0.5


def playground_page() -> str:
    """The self-contained playground page (HTML, CSS and script inline; nothing fetched from elsewhere)."""
    return resources.files("lmkit.serve").joinpath("playground.html").read_text(encoding="utf-8")


class _Completions:
    """Serves POST /v1/completions for one model through one engine (_ChatCompletions: the chat route)."""

    schema: type[CompletionRequest | ChatCompletionRequest] = CompletionRequest
    id_prefix = "cmpl-"

    def __init__(self, engine: BatchEngine, model_name: str, max_request_bytes: int, drain: Drain) -> None:
        self.engine, self.model_name, self.max_request_bytes = engine, model_name, max_request_bytes
        self.drain = drain
        self.context_length = engine.model.config.context_length

    async def __call__(self, request: Request) -> Any:
        if self.drain.begun:
            raise _shutting_down()
        params = parse_request(await self._read_body(request), self.schema)
        if params.model != self.model_name:
            raise APIError(
                404,
                f"the model {params.model!r} does not exist; this server has {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        prompt_ids = await run_in_threadpool(lambda: self.prompt_ids(params))
        sequences = self._sequences(params, prompt_ids)
        if not self.engine.has_room(len(sequences)):
            raise APIError(
                429,
                f"the server is busy: it holds at most {self.engine.max_queue} sequences (--max-queue); retry shortly",
                code="server_busy",
                kind="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        counted_prompt = sum(map(len, prompt_ids))
        ident = f"{self.id_prefix}{secrets.token_hex(12)}"
        if params.stream:
            events = self._stream(params, sequences, counted_prompt, ident)
            return StreamingResponse(events, media_type="text/event-stream")
        return await self._whole(request, params, sequences, prompt_ids, ident)

    def prompt_ids(self, params: CompletionRequest) -> list[list[int]]:
        """The ids of each prompt (a text is encoded; ids are checked against the vocabulary)."""
        vocab_size = self.engine.model.config.vocab_size
        for prompt in params.prompts:
            if not isinstance(prompt, str) and not all(0 <= token < vocab_size for token in prompt):
                raise APIError(400, f"a prompt holds a token id outside 0 .. {vocab_size - 1}", param="prompt")
        return [self.engine.tokenizer.encode_prompt(p) if isinstance(p, str) else list(p) for p in params.prompts]

    def _scores(self, params: CompletionRequest, prompt: list[int], new_ids: list[int]) -> dict[str, list] | None:
        """The choice's logprobs object (the prompt's tokens too with echo), or None when not asked for."""
        if getattr(params, "logprobs", None) is None:
            return None
        ids = [*prompt, *new_ids]
        scores = token_logprobs(self.engine.model, ids, params.logprobs)
        decode = self.engine.tokenizer.decode
        named = [(score, {decode([token]): value for token, value in top.items()} or None) for score, top in scores]
        keep = 0 if params.echo else len(prompt)
        return logprobs_object([decode([token]) for token in ids[keep:]], named[keep:])

    def stops(self, params: CompletionRequest) -> tuple[str, ...]:
        """Where each choice ends, besides <|endoftext|> and max_tokens."""
        return params.stops

    def body(self, ident: str, choices: list[dict[str, Any]], counts: dict[str, int] | None, chunk: bool) -> dict:
        """The response object (or one streamed chunk)."""
        return completion(ident, self.model_name, choices, counts)

    def piece(self, index: int, text: str, finish_reason: str | None, first: bool) -> dict[str, Any]:
        """A streamed chunk's choice: `text` added to choice `index` (`first`: the choice's first chunk)."""
        return choice(index, text, finish_reason)

    def whole_choice(self, finished: Finished, prefix: str, logprobs: dict[str, list] | None) -> dict[str, Any]:
        """A whole response's choice."""
        return finished_choice(finished, prefix, logprobs)

    async def _read_body(self, request: Request) -> bytes:
        """The body, read up to the limit: APIError 413 past it."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            raise self._too_large()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_request_bytes:
                raise self._too_large()
        return bytes(body)

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"the request is larger than this server's limit of {self.max_request_bytes} bytes; send a shorter prompt",
            code="request_too_large",
        )

    def _sequences(self, params: CompletionRequest, prompt_ids: list[list[int]]) -> list[SequenceRequest]:
        """One sequence per (prompt, choice), in OpenAI's choice order; 400 for a prompt past the context."""
        for ids in prompt_ids:
            if getattr(params, "logprobs", None) is not None and len(ids) + params.max_tokens > self.context_length:
                raise APIError(
                    400,
                    f"logprobs score the prompt and the completion in one window: {len(ids)} prompt tokens + "
                    f"max_tokens {params.max_tokens} exceed the model's {self.context_length}",
                    param="logprobs",
                    code="context_length_exceeded",
                )
            if len(ids) > self.context_length:
                raise APIError(
                    400,
                    f"the prompt is {len(ids)} tokens long but the model reads at most "
                    f"{self.context_length}; shorten the prompt",
                    param="prompt",
                    code="context_length_exceeded",
                )
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        configs = [
            generation_config(
                max_new_tokens=max(1, params.max_tokens),
                temperature=params.temperature,
                top_k=params.top_k,
                top_p=params.top_p,
                seed=seed + j,
                stop=self.stops(params),
            )
            for j in range(params.n)
        ]
        if params.max_tokens == 0:  # scoring only (echo): nothing to decode
            return []
        return [SequenceRequest(ids, config) for ids in prompt_ids for config in configs]

    def _submit(self, sequences: list[SequenceRequest]) -> tuple[Ticket, asyncio.Queue[Event | None]]:
        """Submit to the engine; its events arrive on the returned queue (put there from the worker thread)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        ticket = self.engine.submit(sequences, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
        return ticket, queue

    def _echo(self, params: CompletionRequest, index: int) -> str:
        """The prompt (as text) of choice `index` when echo is on, else ""."""
        if not params.echo:
            return ""
        prompt = params.prompts[index // params.n]
        return prompt if isinstance(prompt, str) else self.engine.tokenizer.decode(prompt)

    async def _whole(
        self,
        request: Request,
        params: CompletionRequest,
        sequences: list[SequenceRequest],
        prompt_ids: list[list[int]],
        ident: str,
    ) -> Any:
        """The whole completion once every choice has finished; nothing if the client hangs up before. A
        request with max_tokens 0 (echo: scoring a prompt) has no sequence: each choice is its prompt."""
        if not sequences:
            sequences_done = [Finished(index, "", [], "length") for index in range(len(prompt_ids) * params.n)]
            return await self._respond(params, sequences_done, prompt_ids, ident)
        ticket, queue = self._submit(sequences)
        watcher = asyncio.create_task(_cancel_on_hang_up(request, ticket, queue))
        finished: dict[int, Finished] = {}
        try:
            while len(finished) < len(sequences):
                try:
                    event = await self.drain.get(queue)
                except DrainExpired:
                    raise _shutting_down() from None
                if event is None:
                    return Response(status_code=499)  # the client hung up: nobody reads this
                if isinstance(event, Failed):
                    raise APIError(500, f"generation failed: {event.message}", kind="server_error")
                if isinstance(event, Finished):
                    finished[event.index] = event
        finally:
            watcher.cancel()
            ticket.cancel()  # a no-op once everything finished; drops the sequences if this request was cancelled
        return await self._respond(params, [finished[index] for index in range(len(sequences))], prompt_ids, ident)

    async def _respond(
        self, params: CompletionRequest, results: list[Finished], prompt_ids: list[list[int]], ident: str
    ) -> dict:
        """The whole response for the finished choices (their logprobs computed here when asked for)."""
        scores = await run_in_threadpool(
            lambda: [self._scores(params, prompt_ids[r.index // params.n], r.ids) for r in results]
        )
        choices = [
            self.whole_choice(result, self._echo(params, result.index), score)
            for result, score in zip(results, scores, strict=True)
        ]
        prompt_tokens = sum(map(len, prompt_ids))
        token_counts = usage(prompt_tokens, sum(len(result.ids) for result in results))
        return self.body(ident, choices, token_counts, chunk=False)

    async def _stream(
        self, params: CompletionRequest, sequences: list[SequenceRequest], prompt_tokens: int, ident: str
    ) -> AsyncIterator[str]:
        """Server-sent events: text chunks as they come, one chunk per finished choice, [DONE] at the end."""
        ticket, queue = self._submit(sequences)
        try:
            if params.echo:
                echoed = [choice(index, self._echo(params, index)) for index in range(len(sequences))]
                yield server_sent_event(completion(ident, self.model_name, echoed, None))
            unfinished, completion_tokens, started = set(range(len(sequences))), 0, set()
            while unfinished:
                try:
                    event = await self.drain.get(queue)
                except DrainExpired:  # the server is stopping: what each choice has so far is its answer
                    for index in sorted(unfinished):
                        cut = self.piece(index, "", "length", index not in started)
                        yield server_sent_event(self.body(ident, [cut], None, chunk=True))
                    break
                if isinstance(event, Failed):
                    error = APIError(500, f"generation failed: {event.message}", kind="server_error")
                    yield server_sent_event(error.body())
                    return
                first = event.index not in started
                started.add(event.index)
                if isinstance(event, TextPiece):
                    piece = self.piece(event.index, event.text, None, first)
                else:
                    piece = self.piece(event.index, "", event.finish_reason, first)
                    unfinished.discard(event.index)
                    completion_tokens += len(event.ids)
                yield server_sent_event(self.body(ident, [piece], None, chunk=True))
            if params.stream_options is not None and params.stream_options.include_usage:
                counts = usage(prompt_tokens, completion_tokens)
                yield server_sent_event(self.body(ident, [], counts, chunk=True))
            yield server_sent_event("[DONE]")
        finally:
            ticket.cancel()  # the client went away (or all is sent): its sequences leave the batch


class _ChatCompletions(_Completions):
    """Serves POST /v1/chat/completions: the conversation rendered with the chat template (lmkit.chat), each
    choice the assistant's next turn, ended at <|im_end|>."""

    schema = ChatCompletionRequest
    id_prefix = "chatcmpl-"

    def prompt_ids(self, params: ChatCompletionRequest) -> list[list[int]]:
        """The ids of the conversation and the opening of the assistant's turn; 400 for a base model."""
        tokenizer = self.engine.tokenizer
        if not has_chat_tokens(tokenizer):
            raise APIError(
                400,
                "this model has no chat template (it is a base model, not fine-tuned on conversations); "
                "use /v1/completions",
                param="messages",
                code="no_chat_template",
            )
        messages = [{"role": m.role, "content": m.content} for m in params.messages]
        return [render(tokenizer, messages, add_generation_prompt=True)[0].tolist()]

    def stops(self, params: ChatCompletionRequest) -> tuple[str, ...]:
        return (*params.stops, IM_END)

    def body(self, ident: str, choices: list[dict[str, Any]], counts: dict[str, int] | None, chunk: bool) -> dict:
        return chat_completion(ident, self.model_name, choices, counts, chunk)

    def piece(self, index: int, text: str, finish_reason: str | None, first: bool) -> dict[str, Any]:
        return chat_delta(index, text, finish_reason, first)

    def whole_choice(self, finished: Finished, prefix: str, logprobs: dict[str, list] | None) -> dict[str, Any]:
        return chat_choice(finished.index, finished.text, finished.finish_reason)


async def _cancel_on_hang_up(request: Request, ticket: Ticket, queue: asyncio.Queue[Event | None]) -> None:
    """Cancel `ticket` and put None on `queue` once the client of `request` has disconnected."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_CHECK_SECONDS)
    ticket.cancel()
    queue.put_nowait(None)


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; send the request again later", kind="server_error")


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(
    engine: BatchEngine,
    model_name: str,
    *,
    api_key: str | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    shutdown_timeout: float = 10.0,
) -> FastAPI:
    """The ASGI app serving the engine's model as `model_name`; the engine starts and stops with the app's
    lifespan.

    With `api_key`, the /v1 routes require `Authorization: Bearer <api_key>` (401 otherwise). A request whose
    sequences would take the engine past its `max_queue` held at once (decoding or waiting) gets 429.
    """
    drain = Drain(shutdown_timeout)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    def require_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(
                401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key"
            )

    app = FastAPI(title="lmkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def refused(_request: Request, error: APIError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        kind = "not_found" if error.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(error.status_code, str(error.detail), kind=kind))

    @app.exception_handler(Exception)
    async def failed(_request: Request, error: Exception) -> JSONResponse:
        # Still logged with its traceback by the server; the client gets the error in OpenAI's shape.
        message = f"the server failed: {type(error).__name__}: {error}"
        return _error_response(APIError(500, message, kind="server_error"))

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "lmkit"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **engine.load}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return playground_page()

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(require_key)])
    async def one_model(name: str) -> dict[str, Any]:
        if name != model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server has {model_name!r}",
                param="model",
                code="model_not_found",
            )
        return model_card()

    for path, route in (("/v1/completions", _Completions), ("/v1/chat/completions", _ChatCompletions)):
        app.post(path, dependencies=[Depends(require_key)], response_model=None)(
            route(engine, model_name, max_request_bytes, drain).__call__
        )
    app.state.drain = drain
    return app


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which on Ctrl-C or SIGTERM also starts the app's bounded drain (lmkit.serve.drain)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.config.app.state.drain.begin()
        super().handle_exit(sig, frame)
        # uvicorn (0.29+) raises the stop signal again once it has shut down, which would end the process as
        # killed by it; the server stopped as asked, so the command ends normally (exit 0) instead.
        getattr(self, "_captured_signals", []).clear()


def run_server(app: FastAPI, listening: socket.socket) -> None:
    """Serve `app` (from create_app) with uvicorn on the bound socket `listening` (see listening_socket) until
    Ctrl-C or SIGTERM, then stop within the app's shutdown timeout (plus a moment to close connections),
    close the socket and return."""
    drain: Drain = app.state.drain
    # uvicorn's own limit is the backstop: past it, it cancels whatever still runs.
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=drain.seconds + 2)
    with listening:
        _DrainingServer(config).run(sockets=[listening])


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port`, for the server to listen on; InputError (one line, exit 2) for a
    port in use or not allowed, where uvicorn would log its error and exit 3."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart at once
    try:
        listening.bind((host, port))
    except OSError as err:
        listening.close()
        reason = (err.strerror or str(err)).lower()
        raise InputError(f"cannot listen on {host}:{port}: {reason}; choose another --port (or --host)") from None
    return listening


def loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    return host in {"localhost", "::1"} or host.startswith("127.")
