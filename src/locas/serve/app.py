"""The FastAPI app of `locas serve`: OpenAI-compatible completions and chat with a memory per request.

The memory of a request is ``"model": "<memory id>"`` (memories are listed in ``/v1/models`` with
the base model as parent, so unmodified OpenAI clients work) or the extra field ``"memory"``
(one id, or several whose outputs add); neither is the exact base model. Memories are uploaded,
listed and deleted under ``/v1/memories``, or made from a text by a background job
(``/v1/jobs/{id}`` follows it). ``/`` is the playground page (static files in ``serve/static``: paste a
text, watch it memorised, ask with and without the memory). See docs/SERVING.md.

    >>> app = create_app(Server(lm, "memories/"))
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..core.memory import ServingMemory, stack_memories
from ..errors import LocasError, MemoryFileError
from ..text.decoding import Sampling, stop_token_ids
from .auth import ApiKeys, Unauthorized
from .batcher import Batcher, Generation, Overloaded
from .jobs import Jobs, JobsFull
from .protocol import (
    MEMORY_ID,
    ApiError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    ErrorResponse,
    Health,
    Job,
    JobList,
    MemoryDeleted,
    MemoryInfo,
    MemoryJobRequest,
    MemoryList,
    ModelList,
    ServerInfo,
)
from .store import MemoryStore, NotFound, StoreFull, check_id

DISCONNECT_POLL_S = 0.5  # how often a waiting request checks that its client is still there
STATIC = Path(__file__).parent / "static"  # the playground page: plain HTML, JS and CSS, no build step
# the page loads its own files and talks to this server only (no CDN, no inline script)
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@dataclass
class Limits:
    """What one request may ask."""

    max_body_bytes: int = 4 << 20  # JSON requests
    max_upload_bytes: int = 512 << 20  # memory files
    max_job_text_chars: int = 2 << 20
    max_header_bytes: int = 16 << 10  # all request headers together: more is 431
    body_timeout_s: float = 30.0  # a body that has not fully arrived by then: 408 (a client sending a byte a second)
    head_timeout_s: float = 10.0  # a connection whose next request line and headers are later is closed (http.py)


class Server:
    """The served model with its memory store, batcher, jobs and keys."""

    def __init__(self, lm, memory_dir, *, model_id: str | None = None, keys: ApiKeys | None = None,
                 max_batch: int = 16, max_wait_ms: float = 10.0, max_queue: int | None = None,
                 max_memories: int = 1000, memory_cache: int = 64, max_jobs: int = 4, load_job_model=None,
                 limits: Limits | None = None, memory_dtype: torch.dtype | None = None):
        self.lm = lm
        self.model_id = model_id or str(lm.name)
        self.keys = keys or ApiKeys()
        # memory_dtype: the serving copies' (None: float32, exact; bfloat16 reads half the bytes, not exact)
        self.store = MemoryStore(memory_dir, lm, max_per_owner=max_memories, cache_size=memory_cache,
                                 dtype=memory_dtype)
        self.batcher = Batcher(lm, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                               memory_dtype=memory_dtype)
        # jobs train on their own copy of the model: training never touches the one that serves
        self.jobs = Jobs(self.store, load_job_model or (lambda: copy.deepcopy(lm)), max_pending=max_jobs)
        self.limits = limits or Limits()
        self.created = int(time.time())
        self.draining = threading.Event()  # set by drain(): new requests get 503, what runs finishes

    def drain(self, timeout: float) -> bool:
        """Stop taking requests (503 with Retry-After) and wait up to ``timeout`` seconds for the rows being
        decoded or queued to finish; True when they all did. Jobs are not waited for (``close`` marks them
        interrupted)."""
        self.draining.set()
        deadline = time.monotonic() + timeout
        while self.batcher.active or self.batcher.queue.qsize():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Stop decoding (rows still running end with an error event: "the server is stopping") and the jobs
        (a queued or running job is recorded as interrupted)."""
        self.batcher.close()
        self.jobs.close()


@contextmanager
def serving(server: Server, host: str = "127.0.0.1", port: int = 0):
    """Run ``server`` on uvicorn in a background thread; yields its base URL (``http://host:port``).

        >>> with serving(Server(lm, "memories/")) as url:
        ...     OpenAI(base_url=f"{url}/v1", api_key="none").completions.create(model="notes", prompt="Hi")
    """
    import socket

    import uvicorn

    from .http import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    runner = uvicorn.Server(uvicorn_config(create_app(server), head_timeout_s=server.limits.head_timeout_s,
                                           graceful_s=2))
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, name="locas-http", daemon=True)
    thread.start()
    while not runner.started and thread.is_alive():
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        runner.should_exit = True
        thread.join(timeout=10)
        sock.close()
        server.close()


_UNION_TAGS = {"str", "list[str]", "int", "float", "bool", "constrained-str",  # pydantic's names for a union's
               "list[constrained-str]"}  # branches in error paths (constrained: a non-empty prompt or stop string)
RETRY_AFTER_BUSY_S = 1  # a shed request may come back this soon
RETRY_AFTER_STOPPING_S = 5  # a draining server: come back after the restart (or go to another replica)


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def documented(ok, *errors: int) -> dict:
    """The ``responses`` of a route for /openapi.json: ``ok`` (a model) as its 200 answer, and each error status
    in OpenAI's error shape."""
    out = {} if ok is None else {200: {"model": ok}}
    return {**out, **{status: {"model": ErrorResponse} for status in errors}}


def streamed(ok, chunk, *errors: int) -> dict:
    """``documented`` for a route that answers ``ok`` as JSON, or with ``"stream": true`` server-sent events: each
    event's data one ``chunk`` as JSON (or an error), the last one ``[DONE]``."""
    data = {"anyOf": [{"const": "[DONE]"}, {"type": "string", "contentMediaType": "application/json",
                                             "contentSchema": {"anyOf": [_ref(chunk), _ref(ErrorResponse)]}}]}
    events = {"schema": {"type": "object", "required": ["data"], "properties": {"data": data}}}
    return {**documented(ok, *errors), 200: {"model": ok, "content": {"text/event-stream": events}}}


def request_body(model) -> dict:
    """A route's JSON request body for /openapi.json (bodies are read by the route itself, so that every
    validation error is answered in OpenAI's shape)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model)}}}}


def upload_body() -> dict:
    """``POST /v1/memories``: a memory file (multipart or raw bytes, its id in the form or the query), or a text to
    memorise (JSON)."""
    binary = {"type": "string", "format": "binary"}
    new_id = {"type": "string", "pattern": MEMORY_ID}
    return {"parameters": [{"name": "id", "in": "query", "required": False, "schema": new_id,
                            "description": "the new memory's id, for a raw application/octet-stream upload"}],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref(MemoryJobRequest)},
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                   "properties": {"file": binary, "id": new_id}}},
                "application/octet-stream": {"schema": binary}}}}


def allowed_methods(app: FastAPI, scope) -> list[str]:
    """Every method some route takes on the request's path (a path such as ``/v1/memories/{id}`` has a GET and a
    DELETE route), for a 405's ``Allow`` header."""
    from starlette.routing import Match

    methods = set()
    for route in app.router.routes:
        if getattr(route, "methods", None) and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


def _link(operation_id: str, value: str, parameter: str | None = None, field: str | None = None) -> dict:
    """An OpenAPI link to ``operation_id``, passing ``value`` (a runtime expression) as its path ``parameter`` or as
    the request body's ``field``."""
    if parameter is not None:
        return {"operationId": operation_id, "parameters": {parameter: value}}
    return {"operationId": operation_id, "requestBody": {field: value}}


def memory_links(value: str) -> dict:
    """What a client may do next with the memory ``value`` names: read it, download it, use it, delete it."""
    return {"GetMemory": _link("getMemory", value, "memory_id"),
            "DownloadMemory": _link("downloadMemory", value, "memory_id"),
            "CompleteWithMemory": _link("createCompletion", value, field="model"),
            "ChatWithMemory": _link("createChatCompletion", value, field="model"),
            "DeleteMemory": _link("deleteMemory", value, "memory_id")}


def _ref(model) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _openapi(app: FastAPI):
    """FastAPI's schema plus the request models the routes read themselves."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=__version__, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (CompletionRequest, ChatRequest, MemoryJobRequest, CompletionChunk, ChatCompletionChunk):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="locas", version=__version__,
                  description="One model, many memories: an OpenAI-compatible server.")
    app.openapi = _openapi(app)
    lm, store, batcher, jobs, limits = server.lm, server.store, server.batcher, server.jobs, server.limits
    tok = lm.tokenizer

    # ---- errors: every one as OpenAI does, never a stack trace -----------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        headers, methods = exc.headers, allowed_methods(app, request.scope) if exc.status_code == 405 else None
        if methods:  # Starlette's Allow names the first route on the path only
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return _error(ApiError(exc.status_code, str(exc.detail), headers=headers))

    @app.exception_handler(Exception)
    async def _internal(_request, exc: Exception):
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        return _error(ApiError(500, f"internal error: {type(exc).__name__}: {first}"))

    @app.middleware("http")
    async def _limits(request: Request, call_next):
        if sum(len(k) + len(v) for k, v in request.headers.raw) > limits.max_header_bytes:
            return _error(ApiError(431, f"request headers too large (limit {limits.max_header_bytes} bytes)",
                                   code="headers_too_large"))
        if server.draining.is_set() and request.url.path != "/health":
            return _error(ApiError(503, "the server is shutting down; retry shortly", code="server_shutting_down",
                                   headers={"Retry-After": str(RETRY_AFTER_STOPPING_S)}))
        limit = limits.max_upload_bytes if request.url.path == "/v1/memories" and "json" not in request.headers.get(
            "content-type", "") else limits.max_body_bytes
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limit):
            return _error(ApiError(413, f"request body too large (limit {limit} bytes)", code="request_too_large"))
        try:
            return await call_next(request)
        except ApiError as exc:
            return _error(exc)

    def owner_of(request: Request) -> str:
        try:
            return server.keys.owner(request.headers.get("authorization"))
        except Unauthorized as exc:
            raise ApiError(401, str(exc), code="invalid_api_key") from None

    async def arrived(body):
        """A request body read to its end within ``Limits.body_timeout_s``, else 408."""
        try:
            return await asyncio.wait_for(body, timeout=limits.body_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {limits.body_timeout_s:g} s",
                           code="request_timeout") from None

    async def json_body(request: Request, schema):
        raw = await arrived(request.body())
        try:
            data = json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            return schema.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
            # a field of several types (a prompt: a string or a list) fails once per type: the error that is not
            # a plain type mismatch says what is wrong ("at least 1 item"), and the types are not part of the name
            first = next((e for e in errors if not e.get("type", "").endswith("_type")), errors[0])
            where = ".".join(str(p) for p in first.get("loc", ()) if str(p) not in _UNION_TAGS) or None
            kind = "unknown field" if first.get("type") == "extra_forbidden" else first.get("msg", "invalid value")
            raise ApiError(400, f"{where}: {kind}" if where else kind, param=where) from None

    # ---- memories for a request ------------------------------------------------------------------------
    def memory_for(owner: str, model: str, memory) -> ServingMemory | None:
        ids = [memory] if isinstance(memory, str) else list(memory or [])
        if model != server.model_id:
            if ids or not _is_memory(owner, model):
                raise ApiError(404, f"the model '{model}' does not exist", code="model_not_found", param="model")
            ids = [model]
        if not ids:
            return None
        found = []
        for memory_id in ids:
            try:
                found.append(store.get(owner, check_id(memory_id)))
            except MemoryFileError as exc:  # in the store but unreadable now (changed on disk after it was checked)
                message = str(exc).replace(str(store.root), "<memory-dir>")
                raise ApiError(500, f"the memory '{memory_id}' cannot be loaded: {message}; delete it and upload it "
                                    "again", code="memory_damaged", param="memory") from None
            except (NotFound, LocasError):
                raise ApiError(404, f"the memory '{memory_id}' does not exist", code="memory_not_found",
                               param="memory") from None
        if len(found) == 1:
            return found[0]
        return ServingMemory.of(stack_memories([m.tensor().float() for m in found]), store.dtype)

    def _is_memory(owner: str, name: str) -> bool:
        try:
            return store.exists(owner, check_id(name))
        except LocasError:
            return False

    turn_end = stop_token_ids(tok, lm.model, newline=False)  # EOS and a chat template's <|im_end|>

    def generations(req, prompts: list[list[int]], memory) -> list[Generation]:
        stops = req.stops()
        stop_ids = frozenset() if req.ignore_eos else turn_end if isinstance(req, ChatRequest) else None
        default = 16 if isinstance(req, CompletionRequest) else 256
        rows = []
        for ids in prompts:
            if not ids:
                raise ApiError(400, "the prompt is empty", param="prompt")
            room = lm.max_length - len(ids)
            wanted = getattr(req, "max_completion_tokens", None) or req.max_tokens
            max_tokens = wanted or max(min(default, room), 1)
            if max_tokens > room:
                raise ApiError(400, f"the prompt ({len(ids)} tokens) and max_tokens ({max_tokens}) exceed the "
                                    f"model's context of {lm.max_length} tokens", code="context_length_exceeded",
                               param="max_tokens")
            for i in range(req.n):
                sampling = None if req.temperature == 0 else Sampling(
                    req.temperature, req.top_p, torch.Generator().manual_seed(
                        req.seed + i if req.seed is not None else secrets.randbits(62)))
                rows.append(Generation(ids, memory=memory, max_tokens=max_tokens, sampling=sampling, stop=stops,
                                       stop_ids=stop_ids))
        return rows

    def admit(rows: list[Generation]) -> None:
        if len(rows) > batcher.max_queue:  # never admitted, however long it waits: not a 503 to retry
            raise ApiError(400, f"the request asks for {len(rows)} completions (prompts x n); this server takes at "
                                f"most {batcher.max_queue} at once", param="n")
        try:
            batcher.admit(rows)
        except Overloaded as exc:
            raise ApiError(503, f"the server is busy: {exc}; retry in a moment", code="server_overloaded",
                           headers={"Retry-After": str(RETRY_AFTER_BUSY_S)}) from None

    async def respond(request: Request, req, rows: list[Generation], kind: str, prompt_tokens: int):
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{secrets.token_hex(12)}"
        created = int(time.time())
        if req.stream:  # admitted before the response starts, so that a full queue is a 503, not a broken stream
            queue = listen(rows)
            admit(rows)
            return StreamingResponse(_events(request, queue, rows, kind, rid, created, req.model),
                                     media_type="text/event-stream")
        admit(rows)
        waiting = asyncio.gather(*(asyncio.wrap_future(g.future) for g in rows))
        try:
            while True:  # a client that left is noticed within half a second and its rows leave the batch
                finished, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
                if finished:
                    done = waiting.result()
                    break
                if await request.is_disconnected():
                    waiting.cancel()
                    raise ApiError(499, "the client closed the connection")
        finally:
            for g in rows:
                g.cancelled = True  # a client that left mid-way: the rest of its rows stop
        choices = []
        for i, g in enumerate(done):
            if kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": g.text},
                                "finish_reason": g.finish_reason})
            else:
                choices.append({"index": i, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None})
        completion = sum(len(g.tokens) for g in done)
        return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": created,
                "model": req.model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}

    def listen(rows: list[Generation]) -> asyncio.Queue:
        """A queue that receives (row, text) for every piece of text and (row, None) when a row ends."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        for i, g in enumerate(rows):
            g.listener = lambda text, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, text))
            g.future.add_done_callback(lambda _f, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, None)))
        return queue

    async def _events(request: Request, queue: asyncio.Queue, rows, kind, rid, created, model):
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(i, text=None, finish=None, role=False) -> str:
            if kind == "chat":
                delta = {"role": "assistant"} if role else ({"content": text} if text is not None else {})
                choice = {"index": i, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}
            event = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
            return f"data: {json.dumps(event)}\n\n"

        try:
            if kind == "chat":
                for i in range(len(rows)):
                    yield chunk(i, role=True)
            finished = 0
            while finished < len(rows):
                try:
                    i, text = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:  # nothing to send: did the client leave? (whatever the ASGI server
                    if await request.is_disconnected():  # tells the response, a quiet stream must look itself)
                        return
                    continue
                if text is not None:
                    yield chunk(i, text)
                    continue
                finished += 1
                exc = rows[i].future.exception()
                if exc is not None:
                    yield f"data: {json.dumps(ApiError(500, f'generation failed: {exc}').body())}\n\n"
                else:
                    yield chunk(i, finish=rows[i].finish_reason)
            yield "data: [DONE]\n\n"
        finally:
            for g in rows:  # finished, or the client left: its rows leave the batch at their next token
                g.cancelled = True

    # ---- routes ---------------------------------------------------------------------------------------
    @app.get("/health", operation_id="health", responses=documented(Health))
    async def health():
        return {"status": "draining" if server.draining.is_set() else "ok", "model": server.model_id,
                "steps": batcher.steps, "running": batcher.active, "queued": batcher.queue.qsize(),
                "max_queue": batcher.max_queue, "rows": batcher.rows, "dropped": batcher.dropped,
                "jobs_pending": jobs.pending()}

    @app.get("/v1/server", operation_id="getServer", responses=documented(ServerInfo))
    async def server_info():
        """What the playground (and any client) needs to know to build prompts and jobs; no key needed."""
        from ..learn.objectives import OBJECTIVE_NAMES
        from ..learn.presets import PRESET_HELP, RECALL_PRESET_HELP
        from ..text.prompts import ANSWER_CUE, DOCUMENT_INSTRUCTION

        recall = {name: f"objective selfstudy: {help}" for name, help in RECALL_PRESET_HELP.items()}

        return {"object": "server", "version": __version__, "model": server.model_id,
                "context_length": lm.max_length, "chat_template": bool(getattr(tok, "chat_template", None)),
                "api_keys": server.keys.enabled, "objectives": list(OBJECTIVE_NAMES), "default_objective": "ntp",
                "presets": {**PRESET_HELP, **recall}, "instruction": DOCUMENT_INSTRUCTION, "answer_cue": ANSWER_CUE,
                "max_job_text_chars": limits.max_job_text_chars}

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/v1/models", operation_id="listModels", responses={  # the first model is the base model
        200: {"model": ModelList, "links": {"CompleteWithModel": _link("createCompletion", "$response.body#/data/0/id",
                                                                       field="model"),
                                            "ChatWithModel": _link("createChatCompletion", "$response.body#/data/0/id",
                                                                   field="model")}},
        **documented(None, 401)})
    async def models(request: Request):
        owner = owner_of(request)
        data = [{"id": server.model_id, "object": "model", "created": server.created, "owned_by": "locas"}]
        data += [{"id": m["id"], "object": "model", "created": m["created"], "owned_by": owner,
                  "parent": server.model_id, "root": server.model_id}
                 for m in await asyncio.to_thread(store.list, owner)]
        return {"object": "list", "data": data}

    @app.post("/v1/completions", operation_id="createCompletion",
              responses=streamed(Completion, CompletionChunk, 400, 401, 404, 408, 413, 503),
              openapi_extra=request_body(CompletionRequest),
              description="A completion; with `stream` the answer is server-sent `text_completion` events ending "
                          "`data: [DONE]`.")
    async def completions(request: Request):
        owner = owner_of(request)
        req = await json_body(request, CompletionRequest)
        texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt  # a list is never empty (its schema)
        memory = await asyncio.to_thread(memory_for, owner, req.model, req.memory)  # a cache miss reads the disk
        prompts = [list(tok(t)["input_ids"]) for t in texts]
        rows = generations(req, prompts, memory)
        return await respond(request, req, rows, "completion", sum(len(p) for p in prompts))

    @app.post("/v1/chat/completions", operation_id="createChatCompletion",
              responses=streamed(ChatCompletion, ChatCompletionChunk, 400, 401, 404, 408, 413, 503),
              openapi_extra=request_body(ChatRequest),
              description="A chat turn; with `stream` the answer is server-sent `chat.completion.chunk` events "
                          "ending `data: [DONE]`.")
    async def chat(request: Request):
        owner = owner_of(request)
        req = await json_body(request, ChatRequest)
        if not getattr(tok, "chat_template", None):
            raise ApiError(400, "this model has no chat template; use /v1/completions")
        memory = await asyncio.to_thread(memory_for, owner, req.model, req.memory)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        rows = generations(req, [ids], memory)
        return await respond(request, req, rows, "chat", len(ids))

    @app.get("/v1/memories", operation_id="listMemories", responses=documented(MemoryList, 401))
    async def list_memories(request: Request):
        owner = owner_of(request)
        return {"object": "list", "data": await asyncio.to_thread(store.list, owner)}

    async def owned(action, request: Request, item_id: str, what: str = "memory"):
        """``action(owner, id)`` on the caller's own memory or job, in a worker thread (it reads or writes the disk:
        the streams being served go on meanwhile); anything else (another key's, none, a bad id) is the same 404,
        so existence does not leak."""
        owner = owner_of(request)
        try:
            return await asyncio.to_thread(action, owner, check_id(item_id))
        except (NotFound, LocasError):
            raise ApiError(404, f"the {what} '{item_id}' does not exist", code=f"{what}_not_found") from None

    @app.get("/v1/memories/{memory_id}", operation_id="getMemory", responses=documented(MemoryInfo, 401, 404))
    async def get_memory(memory_id: str, request: Request):
        return await owned(store.describe, request, memory_id)

    @app.get("/v1/memories/{memory_id}/content", operation_id="downloadMemory", responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
              "description": "the memory file"}, **documented(None, 401, 404)})
    async def download_memory(memory_id: str, request: Request):
        data = await owned(store.read_bytes, request, memory_id)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{memory_id}.locas"'})

    @app.delete("/v1/memories/{memory_id}", operation_id="deleteMemory",
                responses=documented(MemoryDeleted, 401, 404))
    async def delete_memory(memory_id: str, request: Request):
        await owned(store.delete, request, memory_id)
        return {"id": memory_id, "object": "memory", "deleted": True}

    @app.post("/v1/memories", operation_id="createMemory", status_code=201, responses={
        201: {"model": MemoryInfo, "description": "a memory file, uploaded and checked",
              "links": memory_links("$response.body#/id")},
        202: {"model": Job, "description": "a memorisation job, started (its memory exists once the job succeeds)",
              "links": {"GetJob": _link("getJob", "$response.body#/id", "job_id")}},
        **documented(None, 400, 401, 408, 409, 413, 429)}, openapi_extra=upload_body())
    async def create_memory(request: Request):
        owner = owner_of(request)
        ctype = request.headers.get("content-type", "")
        if "id" in request.query_params:  # the id of a raw upload, checked whatever the body is
            checked_id(request.query_params["id"])
        if "json" in ctype:
            return await _job(owner, await json_body(request, MemoryJobRequest))
        if "multipart/form-data" in ctype:
            form = await arrived(request.form())
            upload, memory_id = form.get("file"), form.get("id")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "send the memory file as the form field 'file'", param="file")
            data = await upload.read()
        elif "octet-stream" in ctype:
            data, memory_id = await arrived(request.body()), request.query_params.get("id")
        else:
            raise ApiError(400, "POST a memory file (multipart form field 'file', or application/octet-stream), or "
                                "JSON {\"text\": ...} to memorise a text")
        if len(data) > limits.max_upload_bytes:
            raise ApiError(413, f"memory file too large (limit {limits.max_upload_bytes} bytes)")
        memory_id = _new_id(owner, memory_id)
        try:
            return JSONResponse(await asyncio.to_thread(store.put_bytes, owner, memory_id, data), status_code=201)
        except StoreFull as exc:
            raise ApiError(429, str(exc), code="too_many_memories") from None
        except FileExistsError:
            raise ApiError(409, f"a memory '{memory_id}' already exists; delete it first or choose another id",
                           code="memory_exists", param="id") from None
        except MemoryFileError as exc:
            raise ApiError(400, str(exc).replace(str(store.root), "<memory-dir>"), code="invalid_memory_file",
                           param="file") from None

    def checked_id(memory_id) -> str:
        try:
            return check_id(str(memory_id))
        except LocasError as exc:
            raise ApiError(400, str(exc), param="id") from None

    def _new_id(owner: str, memory_id) -> str:
        if memory_id is None:
            return store.new_id()
        memory_id = checked_id(memory_id)
        if store.exists(owner, memory_id):
            raise ApiError(409, f"a memory '{memory_id}' already exists; delete it first or choose another id",
                           code="memory_exists", param="id")
        return memory_id

    async def _job(owner: str, req: MemoryJobRequest):
        if len(req.text) > limits.max_job_text_chars:
            raise ApiError(413, f"text too long for one job (limit {limits.max_job_text_chars} characters)")
        memory_id = _new_id(owner, req.id)
        cfg = req.train_config(lm.intermediate_size, lm.name)
        settings = req.objective_settings(lm.name)
        if "window_size" not in req.settings and cfg.window_size > lm.max_length:  # the default, on a short model
            cfg = dataclasses.replace(cfg, window_size=lm.max_length)
        if cfg.window_size > lm.max_length:  # refused now, not as a failed job later
            raise ApiError(400, f"settings.window_size: at most the model's context of {lm.max_length} tokens, got "
                                f"{cfg.window_size}", param="settings.window_size")
        try:
            record = jobs.submit(owner, memory_id, req.text, cfg, settings, budget_s=req.budget, preset=req.preset)
        except FileExistsError:
            raise ApiError(409, f"a memory '{memory_id}' already exists or is being made", code="memory_exists") \
                from None
        except JobsFull as exc:
            raise ApiError(429, str(exc), code="too_many_jobs") from None
        except StoreFull as exc:
            raise ApiError(429, str(exc), code="too_many_memories") from None
        return JSONResponse(record, status_code=202)

    @app.get("/v1/jobs", operation_id="listJobs", responses=documented(JobList, 401))
    async def list_jobs(request: Request):
        return {"object": "list", "data": jobs.list(owner_of(request))}

    @app.get("/v1/jobs/{job_id}", operation_id="getJob", responses={
        200: {"model": Job, "links": {"GetJob": _link("getJob", "$response.body#/id", "job_id"),  # follow it
                                      **memory_links("$response.body#/memory")}},  # once the job has succeeded
        **documented(None, 401, 404)})
    async def get_job(job_id: str, request: Request):
        return await owned(jobs.get, request, job_id, what="job")

    return app
