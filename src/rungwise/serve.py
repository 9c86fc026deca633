"""``rungwise serve``: a model with a rung's prompt behind an OpenAI-compatible HTTP API.

This is the production hand-off of a prompt rung: the system prompt and demos measured by
``rungwise climb`` are prepended to every incoming conversation, so any OpenAI client (the
official SDKs, LangChain, curl) gets the rung's behaviour by pointing ``base_url`` at it.

Endpoints: ``POST /v1/chat/completions`` (non-streaming, or ``stream: true`` as one SSE chunk +
``[DONE]``), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``.

Output constraints, as OpenAI and vLLM take them: ``response_format`` (``json_object``,
``json_schema``), vLLM's ``structured_outputs`` (``choice``, ``regex``, ``json``, ``json_object``)
and its older ``guided_choice`` / ``guided_regex`` / ``guided_json``. They reach the backend as
``GenParams.constraint``; a backend that cannot enforce one answers an OpenAI-style 400.

Requests reach the backend through a :class:`MicroBatcher`: one worker thread owns the backend
(the local transformers backend is not thread-safe) and groups requests that arrive together
into one ``generate`` call, which is where a batched local backend gets its throughput.

:class:`ServeLimits` bound what one request may ask for (body size, JSON nesting, messages,
max_tokens) and how many may wait for the model; beyond them a client gets an OpenAI-style
4xx (413, 400, or 429 with ``Retry-After`` when the queue is full), never a 500.

Example:
    >>> from rungwise.backends.scripted import ScriptedBackend
    >>> from rungwise.prompting import PromptTemplate
    >>> app = create_app(ScriptedBackend(["billing"]), PromptTemplate("Route the ticket."), "tickets")
    >>> with background(app) as url:  # doctest: +SKIP
    ...     httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
"""

# No `from __future__ import annotations` here: FastAPI resolves endpoint annotations at
# runtime, and the FastAPI names are imported inside create_app (it is an optional extra).

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import queue
import re
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rungwise._deps import require
from rungwise.backends.base import Backend
from rungwise.errors import BackendError, ConfigError, RungwiseError, Unsupported
from rungwise.prompting import PromptTemplate
from rungwise.rungs import Prepared, RungArtifact, Workspace
from rungwise.types import Chat, Completion, Constraint, Example, GenParams

if TYPE_CHECKING:
    from fastapi import FastAPI

    from rungwise.config.model import ModelSpec
    from rungwise.config.task import Task

log = logging.getLogger(__name__)

def _as_prepared(rung: PromptTemplate | Prepared) -> Prepared:
    return rung if isinstance(rung, Prepared) else Prepared(RungArtifact(), rung)


def _example_of(chat: Chat) -> Example:
    """An incoming conversation as the rung sees an input: its last user turn is the input."""
    user = [m["content"] for m in chat if m["role"] == "user"]
    return Example(input=user[-1] if user else "", output="", messages=tuple(chat))



# -- request schema (the subset of OpenAI's that a text chat model can honour) ---------------


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """One incoming message. ``developer`` (OpenAI's newer name for system) is read as system."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.type != "text" or p.text is None:
                raise ValueError(f"content part of type {p.type!r} is not supported: this server takes text only")
            parts.append(p.text)
        return "".join(parts)


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``. Unknown OpenAI fields are ignored, as OpenAI's
    own clients send many (``user``, ``frequency_penalty`` ...) that do not change a greedy answer."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per request is supported")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_choice: list[str] | None = None
    guided_regex: str | None = None
    guided_json: dict[str, Any] | str | None = None

    def constraint(self) -> Constraint | None:
        """The output constraint the request asks for, if any.

        Raises :class:`ConstraintFieldError` (the field, and what is wrong with it) for a
        malformed one, or for more than one.
        """
        found: list[tuple[str, Constraint]] = []
        rf = self.response_format
        if rf is not None and rf.get("type") != "text":
            found.append(("response_format", _from_response_format(rf)))
        if self.structured_outputs:
            so = {k: v for k, v in self.structured_outputs.items() if v is not None and v is not False}
            unknown = sorted(set(so) - {"choice", "regex", "json", "json_object"})
            if unknown:
                raise ConstraintFieldError("structured_outputs", f"{', '.join(unknown)} is not supported by this "
                                           "server (it takes choice, regex, json or json_object)")
            found.extend(("structured_outputs", _structured(f"structured_outputs.{k}", k, v)) for k, v in so.items())
        for kind in ("choice", "regex", "json"):
            value = getattr(self, f"guided_{kind}")
            if value is not None:
                found.append((f"guided_{kind}", _structured(f"guided_{kind}", kind, value)))
        if len(found) > 1:
            raise ConstraintFieldError(found[1][0], f"give one output constraint, not {len(found)} "
                                       f"({', '.join(f for f, _ in found)})")
        return found[0][1] if found else None

    def chat(self) -> Chat:
        msgs: Chat = []
        for m in self.messages:
            role = "system" if m.role == "developer" else m.role
            msgs.append({"role": role, "content": m.text()})
        return msgs

    def params(self, defaults: GenParams) -> GenParams:
        """The request's generation parameters over the served task's defaults (what was measured)."""
        p = defaults
        if self.temperature is not None:
            p = replace(p, temperature=self.temperature)
        if self.top_p is not None:
            p = replace(p, top_p=self.top_p)
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            p = replace(p, max_tokens=max_tokens)
        if self.stop is not None:
            p = replace(p, stop=(self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        if self.seed is not None:
            p = replace(p, seed=self.seed)
        constraint = self.constraint()
        if constraint is not None:
            p = replace(p, constraint=constraint)
        return p


class ConstraintFieldError(ValueError):
    """A request's output constraint is malformed; ``param`` names the field."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


def _from_response_format(rf: dict[str, Any]) -> Constraint:
    kind = rf.get("type")
    if kind == "json_object":
        return Constraint("json")
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ConstraintFieldError("response_format", "json_schema.schema must be a JSON schema object")
        return _json_constraint("response_format", schema)
    raise ConstraintFieldError("response_format", f"type {kind!r} is not supported (text, json_object, json_schema)")


def _structured(param: str, kind: str, value: Any) -> Constraint:
    """A constraint from a vLLM-style field: ``choice`` (list), ``regex`` (str), ``json`` (schema), ``json_object``."""
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise ConstraintFieldError(param, "must be a non-empty list of strings")
        return Constraint("choice", choices=tuple(value))
    if kind == "regex":
        try:
            re.compile(value)
        except (re.error, TypeError) as exc:
            raise ConstraintFieldError(param, f"not a valid regular expression ({exc})") from None
        return Constraint("regex", pattern=value)
    if kind == "json_object":
        return Constraint("json")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConstraintFieldError(param, "must be a JSON schema (an object, or its JSON text)") from None
    if not isinstance(value, dict):
        raise ConstraintFieldError(param, "must be a JSON schema object")
    return _json_constraint(param, value)


def _json_constraint(param: str, schema: dict[str, Any]) -> Constraint:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ConstraintFieldError(param, f"not a valid JSON schema ({exc.message})") from None
    return Constraint("json", json_schema=json.dumps(schema, sort_keys=True))


# -- limits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of ``rungwise serve``, and how many may wait for the model.

    Attributes:
        max_body_bytes: the request body; a larger one is refused with 413 before it is read.
        max_json_depth: nesting of the body's JSON (a constraint's schema included); deeper is a 400.
        max_messages: messages in one conversation; more is a 400.
        max_tokens: the most ``max_tokens`` / ``max_completion_tokens`` a request may ask for; more is a 400.
        max_queue: requests waiting for the model; when that many wait, a new one gets 429 with
            ``Retry-After`` (clients back off and retry; rungwise's openai backend also slows down).

    Example:
        >>> ServeLimits(max_tokens=512).max_tokens
        512
    """

    max_body_bytes: int = 4 * 1024 * 1024
    max_json_depth: int = 64
    max_messages: int = 256
    max_tokens: int = 4096
    max_queue: int = 1024

    def __post_init__(self) -> None:
        bad = [f"{k}={v}" for k, v in vars(self).items() if not (isinstance(v, int) and v >= 1)]
        if bad:
            raise ConfigError(f"serve limits must be whole numbers >= 1: {', '.join(bad)}",
                              hint="e.g. --max-tokens-limit 2048 --max-queue 256")


def json_depth(value: Any) -> int:
    """How deeply ``value`` (parsed JSON) nests objects and arrays; counted without recursion.

    >>> json_depth({"messages": [{"content": "hi"}]}), json_depth("text")
    (3, 0)
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


class Overloaded(BackendError):
    """The server's queue is full: the client should retry later (HTTP 429)."""


# -- the micro-batcher -----------------------------------------------------------------------

#: The micro-batcher waits for as many requests as were in the server at once during this many recent batches.
RECENT_BATCHES = 4


@dataclass
class _Job:
    chat: Chat
    params: GenParams
    future: "Future[Completion]"


class MicroBatcher:
    """Owns a backend on one worker thread and batches concurrent requests.

    Requests waiting in the queue when the worker becomes free (plus those arriving within
    ``window_s``, while fewer are waiting than were in the server during the last batches) are answered by one
    ``generate`` call per distinct :class:`GenParams`, up to ``max_batch`` prompts. The backend is never entered from two threads at once. If a batched
    call fails, its prompts are retried one by one, so one bad request cannot fail its neighbours.
    With ``max_queue`` requests waiting, :meth:`submit` raises :class:`Overloaded`.

    Example:
        >>> from rungwise.backends.scripted import ScriptedBackend
        >>> mb = MicroBatcher(ScriptedBackend(["ok"]))
        >>> mb.submit([{"role": "user", "content": "hi"}], GenParams()).result().text
        'ok'
        >>> mb.close()
    """

    def __init__(self, backend: Backend, *, max_batch: int = 8, window_s: float = 0.02,
                 max_queue: int | None = None) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}", hint="use --max-batch 1 or more")
        self.backend = backend
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self.refused = 0  # requests turned away because the queue was full
        self._recent: deque[int] = deque(maxlen=RECENT_BATCHES)  # requests in the server during the last batches
        self.requests = 0
        self.batches = 0
        self.largest_batch = 0
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, chat: Chat, params: GenParams) -> "Future[Completion]":
        """Queue one prompt; the future resolves to its :class:`Completion` (or the backend's error)."""
        with self._lock:
            if self._closed:
                raise BackendError("the server is shutting down", hint="retry against a running server")
            if self.max_queue is not None and self._q.qsize() >= self.max_queue:
                self.refused += 1
                raise Overloaded(f"the server is busy: {self._q.qsize()} requests are waiting for the model",
                                 hint="retry after a short wait, or send fewer requests at once")
            if self._thread is None:  # started lazily: works with or without ASGI lifespan events
                self._thread = threading.Thread(target=self._loop, name="rungwise-batcher", daemon=True)
                self._thread.start()
        fut: Future[Completion] = Future()
        self._q.put(_Job(chat, params, fut))
        return fut

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish the queued work and stop the worker."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._q.put(None)
            thread.join(timeout_s)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, stop = [first], False
        # Wait (up to window_s) only for as many requests as were recently in the server at once:
        # a lone client never waits, and the clients of the last batch, who send their next
        # request a few ms after their answer, join the ones that queued meanwhile in one batch
        # (without this two halves of the clients take turns, each half a batch). The first batch
        # waits for a full one (a burst of requests arriving together).
        expected = min(self.max_batch, max(self._recent, default=self.max_batch))
        deadline = time.monotonic() + self.window_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                if len(jobs) < expected and remaining > 0:
                    job = self._q.get(timeout=remaining)
                else:
                    job = self._q.get_nowait()  # whatever is queued already joins
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
        return jobs, stop

    def _run(self, jobs: Sequence[_Job], params: GenParams) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            outs = self.backend.generate([j.chat for j in live], params)
            if len(outs) != len(live):
                raise BackendError(f"backend returned {len(outs)} completions for {len(live)} prompts")
        except BaseException as exc:  # every error goes back to its request
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            for j in live:  # isolate the culprit
                try:
                    j.future.set_result(self.backend.generate([j.chat], params)[0])
                except BaseException as one:
                    j.future.set_exception(one)
            return
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(live))
        for j, out in zip(live, outs, strict=True):
            j.future.set_result(out)

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            self.requests += len(jobs)
            groups: dict[GenParams, list[_Job]] = {}
            for j in jobs:
                groups.setdefault(j.params, []).append(j)
            for params, group in groups.items():
                self._run(group, params)
            # In the server at once: this batch and those that queued while it ran.
            self._recent.append(len(jobs) + self._q.qsize())
            if stop:
                return


# -- the app ---------------------------------------------------------------------------------


def _error(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status,
        headers=headers,
    )


async def _read_body(request: Any, limit: int) -> bytes | None:
    """The request body, or None once it is over ``limit`` bytes (by its Content-Length, or while
    reading a body sent without one): a huge body is never held in memory whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _usage(c: Completion) -> dict[str, Any]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens},
    }


def create_app(
    backend: Backend,
    rung: PromptTemplate | Prepared,
    model_name: str,
    *,
    default_params: GenParams | None = None,
    adapter: str | Path | None = None,
    api_key: str | None = None,
    max_batch: int = 8,
    batch_window_s: float = 0.02,
    limits: ServeLimits | None = None,
) -> "FastAPI":
    """An OpenAI-compatible app serving ``backend`` with a rung's prompt around every chat.

    Args:
        backend: answers the prompts; only the app's batcher thread ever calls it.
        rung: a prepared rung (its prompt per conversation: fixed demos, nearest-neighbour demos or
            retrieved context, and its output constraint), or just a fixed prompt. A client's own
            system message replaces the rung's, as it does for chat-format data.
        model_name: the name clients send as ``model``; any other name gets a 404.
        default_params: generation parameters where the request gives none (the task's
            ``model.params``, so the served rung answers as it was measured).
        adapter: the LoRA adapter the backend was loaded with, reported in ``/v1/models`` and
            ``/health``. Loading it is the backend's job (see :func:`load_backend`).
        api_key: if set, ``/v1/*`` requires ``Authorization: Bearer <api_key>``.
        max_batch, batch_window_s: the micro-batcher's limits.
        limits: what one request may ask for, and the queue's length (:class:`ServeLimits`).

    Example:
        >>> from rungwise.backends.scripted import ScriptedBackend
        >>> app = create_app(ScriptedBackend(["4"]), PromptTemplate("Be brief.", (("2+2?", "4"),)), "math")
        >>> sorted(r.path for r in app.routes if r.path.startswith("/v1"))
        ['/v1/chat/completions', '/v1/models', '/v1/models/{model_id:path}']
    """
    fastapi = require("fastapi")
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    prepared = _as_prepared(rung)
    # The rung's own output constraint is the default; a request's response_format replaces it.
    defaults = prepared.params(default_params or GenParams())
    limits = limits or ServeLimits()
    batcher = MicroBatcher(backend, max_batch=max_batch, window_s=batch_window_s, max_queue=limits.max_queue)
    created = int(time.time())
    adapter_str = str(adapter) if adapter is not None else None
    tpl_desc = prepared.artifact.model_dump(mode="json") | {"prompt": prepared.template.to_dict()}
    # Identifies model + prompt + adapter: a client can tell when the served rung changed.
    fingerprint = "rw_" + hashlib.sha256(
        json.dumps([backend.model_id, tpl_desc, adapter_str], sort_keys=True, default=str).encode()
    ).hexdigest()[:12]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        yield
        await asyncio.to_thread(batcher.close)

    app = fastapi.FastAPI(
        title="rungwise serve", description=f"OpenAI-compatible endpoint for {model_name}", lifespan=lifespan
    )
    app.state.backend = backend
    app.state.batcher = batcher
    app.state.prepared = prepared
    app.state.model_name = model_name
    app.state.requires_key = api_key is not None
    app.state.limits = limits

    def unauthorized(request: Any) -> Any:
        if api_key is None:
            return None
        got = request.headers.get("authorization", "")
        token = got[7:] if got.lower().startswith("bearer ") else ""
        if hmac.compare_digest(token.encode(), api_key.encode()):
            return None
        return _error(401, "Incorrect or missing API key (send Authorization: Bearer <key>).", code="invalid_api_key")

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Any, exc: RequestValidationError) -> Any:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
        param = ".".join(str(x) for x in err.get("loc", ()))
        return _error(400, f"{param}: {err.get('msg')}", param=param or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Any, exc: StarletteHTTPException) -> Any:
        return _error(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Any, exc: Exception) -> Any:
        # A bug, not the client's fault: an OpenAI-style 500 (uvicorn still logs the traceback).
        return _error(500, "the server failed to handle the request; see the server log", type_="server_error")

    def model_card() -> dict[str, Any]:
        card: dict[str, Any] = {"id": model_name, "object": "model", "created": created, "owned_by": "rungwise"}
        if adapter_str:
            card["adapter"] = adapter_str
        return card

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_name,
            "backend": backend.model_id,
            "adapter": adapter_str,
            "demos": len(prepared.template.demos) if prepared.per_example is None else None,
            "system_fingerprint": fingerprint,
            "requests": batcher.requests,
            "batches": batcher.batches,
            "largest_batch": batcher.largest_batch,
            "refused_busy": batcher.refused,
        }

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        if (denied := unauthorized(request)) is not None:
            return denied
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Any:
        if (denied := unauthorized(request)) is not None:
            return denied
        if model_id != model_name:
            return _error(404, f"The model `{model_id}` does not exist; this server serves `{model_name}`.",
                          param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        if (denied := unauthorized(request)) is not None:
            return denied
        body = await _read_body(request, limits.max_body_bytes)
        if body is None:
            return _error(413, f"the request body is larger than this server takes ({limits.max_body_bytes:,} bytes)",
                          code="request_too_large")
        try:
            raw = json.loads(body)
        except RecursionError:
            return _error(400, f"the request body nests deeper than {limits.max_json_depth} levels", code="too_deep")
        except ValueError:
            return _error(400, "the request body is not valid JSON")
        if json_depth(raw) > limits.max_json_depth:
            return _error(400, f"the request body nests deeper than {limits.max_json_depth} levels", code="too_deep")
        try:
            req = ChatCompletionRequest.model_validate(raw)
            chat = req.chat()
            params = req.params(defaults)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(x) for x in err["loc"])
            return _error(400, f"{param}: {err['msg']}" if param else err["msg"], param=param or None)
        except ConstraintFieldError as exc:
            return _error(400, str(exc), param=exc.param)
        except ValueError as exc:
            return _error(400, str(exc), param="messages")
        if req.model and req.model != model_name:
            return _error(404, f"The model `{req.model}` does not exist; this server serves `{model_name}`.",
                          param="model", code="model_not_found")
        if len(req.messages) > limits.max_messages:
            return _error(400, f"messages: {len(req.messages)} messages; this server takes at most "
                          f"{limits.max_messages} per request", param="messages", code="too_many_messages")
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > limits.max_tokens:
            field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            return _error(400, f"{field} is too large: {asked}. This server answers with at most {limits.max_tokens} "
                          "tokens per request.", param=field, code="invalid_value")
        ex = _example_of(chat)
        try:
            c = await asyncio.wrap_future(batcher.submit(prepared.plan(ex).chat(ex), params))
        except Overloaded as exc:
            return _error(429, exc.message, type_="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
        except Unsupported as exc:
            return _error(400, str(exc))
        except RungwiseError as exc:
            return _error(500, str(exc), type_="server_error")
        except Exception:
            log.exception("generation failed")
            return _error(500, "the model failed to answer; see the server log", type_="server_error")
        finish = c.finish_reason if c.finish_reason in ("stop", "length") else "stop"
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": model_name,
            "system_fingerprint": fingerprint,
        }
        if not req.stream:
            return {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": finish, "logprobs": None}],
                "usage": _usage(c),
            }
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def events() -> Iterator[str]:
            # The whole answer is ready, so it goes out as one chunk; that is still the stream
            # protocol official clients parse (deltas, finish_reason, optional usage, [DONE]).
            chunk: dict[str, Any] = {**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": c.text}, "finish_reason": finish,
                 "logprobs": None}]}
            if include_usage:
                chunk["usage"] = None
            yield f"data: {json.dumps(chunk)}\n\n"
            if include_usage:
                yield f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [], 'usage': _usage(c)})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


# -- running it ------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public interface, so assume exposure


def exposure_warning(host: str, port: int, *, requires_key: bool) -> str | None:
    """The warning to print before binding ``host``, or None for loopback."""
    if is_loopback(host):
        return None
    msg = (
        f"WARNING: rungwise serve is listening on {host}:{port}, reachable from other machines. "
        "Everything sent to it reaches the model"
    )
    if requires_key:
        msg += "; clients need the API key (--auth-key-env), and traffic is plain HTTP (put TLS in front)."
    else:
        msg += " and anyone who can reach it can use it: there is NO authentication (add --auth-key-env NAME)."
    return msg + " Use --host 127.0.0.1 unless you mean it."


def banner(app: "FastAPI", host: str, port: int) -> str:
    """What ``run`` prints on start: where it listens, what it serves, and a request to try."""
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    st = app.state
    demos = len(st.prepared.template.demos) if st.prepared.per_example is None else "per-request"
    body = json.dumps({"model": st.model_name, "messages": [{"role": "user", "content": "hello"}]})
    auth = " -H 'Authorization: Bearer $KEY'" if st.requires_key else ""
    return (
        f"serving {st.model_name!r} ({st.backend.model_id}, {demos} demos) at {url}/v1\n"
        f"  try: curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"
    )


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a busy port is a clear error, not a uvicorn exit."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, socket.gaierror) as exc:
        raise ConfigError(f"cannot use host {host!r}: {exc}", hint="pass --host 127.0.0.1 or an address of this machine") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          hint="pick a free port with --port (or stop the process using it)") from None
    return sock


def _server(app: "FastAPI", host: str, port: int, log_level: str) -> Any:
    uvicorn = require("uvicorn")
    # log_config=None leaves the caller's logging setup alone (tests capture logs).
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            log_config=None, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def run(app: "FastAPI", host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until Ctrl-C. Binding a non-loopback host prints a loud warning.

    Example:
        >>> run(create_app(backend, template, "tickets"), port=8000)  # doctest: +SKIP
    """
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    warning = exposure_warning(host, port, requires_key=getattr(app.state, "requires_key", False))
    if warning:
        log.warning(warning)
        print(f"\n\033[1;31m{warning}\033[0m\n", file=sys.stderr, flush=True)
    print(banner(app, host, port), file=sys.stderr, flush=True)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _server(app, host, port, log_level).run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def background(app: "FastAPI", host: str = "127.0.0.1", port: int = 0, *, startup_timeout_s: float = 15.0) -> Iterator[str]:
    """Run ``app`` on a background thread; yields its base URL (``http://127.0.0.1:PORT``).

    Port 0 picks a free port. On exit the server shuts down (uvicorn's ``should_exit``).
    Used by tests and notebooks that need a real server in-process.

    Example:
        >>> with background(app) as url:  # doctest: +SKIP
        ...     OpenAIBackend(url + "/v1", "tickets").generate(...)
    """
    sock = _bind(host, port)
    actual = sock.getsockname()[1]
    server = _server(app, host, actual, "warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="rungwise-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise BackendError(f"the server on {host}:{actual} did not start", hint="see the log above")
        time.sleep(0.01)
    try:
        yield f"http://[{host}]:{actual}" if ":" in host else f"http://{host}:{actual}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# -- from a task -----------------------------------------------------------------------------


def prepared_for(task: "Task", rung: str = "zero_shot", run_id: int | str | None = None) -> tuple[Workspace, Prepared]:
    """The rung to serve, in a workspace the caller closes: loaded from the artifact stored by
    climb ``run_id`` (or by the latest climb of this rung on this task), else prepared from the
    task's train split when the rung is cheap to prepare (a prompt); a rung that trains or
    indexes is never prepared here: it must have been climbed.

    Example:
        >>> ws, prepared = prepared_for(load_task("task.yaml"), "few_shot")  # doctest: +SKIP
        >>> ws.close()  # doctest: +SKIP
    """
    from rungwise.data.dataset import load_split
    from rungwise.rungs import BackendPool, get_rung
    from rungwise.store import Store

    rung_obj = get_rung(rung, task)
    split = load_split(task)
    ws = Workspace(task, split.train, BackendPool(task.model.build))
    try:
        store = Store()
        if run_id is not None:
            stored = {r["name"]: r for r in store.rungs(int(run_id))}
            if rung not in stored or stored[rung]["status"] != "done":
                measured = [n for n, r in stored.items() if r["status"] == "done"]
                raise ConfigError(
                    f"run {run_id} has no rung {rung!r} (it has: {', '.join(measured) or 'none'})",
                    hint="pick a rung that run measured, see `rungwise runs show ID`",
                )
            return ws, ws.load(rung, json.loads(stored[rung]["artifact_json"]), where=f"run {run_id}")
        latest = store.latest_artifact(rung, str(ws.work_dir(rung)))
        if latest is not None:
            return ws, ws.load(rung, latest, where=f"the latest {rung} climb")
        if not rung_obj.cheap_to_prepare:
            raise ConfigError(
                f"rung {rung!r} has not been climbed on this task yet, and serving never trains or indexes",
                hint=f"climb it first (rungwise climb {task.source_path or 'task.yaml'} --rungs {rung}), then serve",
            )
        return ws, ws.prepare(rung)
    except BaseException:
        ws.close()
        raise


def load_backend(spec: "ModelSpec", adapter: str | Path | None = None) -> Backend:
    """The backend to serve: the task's model, optionally with a LoRA adapter applied (a PEFT
    adapter directory or a fine-tune's output directory; the base model's hash is checked)."""
    if adapter is not None:
        from rungwise.train.trainer import load_adapter_backend

        return load_adapter_backend(spec, adapter)
    return spec.build()


def served_name(task: "Task", rung: str) -> str:
    """Default model name clients send: ``<task name>-<rung>`` with unsafe characters replaced."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{task.name}-{rung}").strip("-") or rung


def app_for_task(
    task: "Task",
    rung: str = "zero_shot",
    run_id: int | str | None = None,
    *,
    model_id: str | None = None,
    name: str | None = None,
    adapter: str | Path | None = None,
    api_key: str | None = None,
    max_batch: int = 8,
    limits: ServeLimits | None = None,
) -> "FastAPI":
    """Everything ``rungwise serve`` does before listening: the rung, its backend, the app.

    ``model_id`` overrides ``task.model.id``. The caller closes ``app.state.close()``.

    Example:
        >>> from rungwise.config.task import load_task
        >>> app = app_for_task(load_task("task.yaml"), "zero_shot")  # doctest: +SKIP
    """
    if model_id:
        task = task.model_copy(update={"model": task.model.model_copy(update={"id": model_id})})
    ws, prepared = prepared_for(task, rung, run_id)
    try:
        backend = load_backend(task.model, adapter) if adapter is not None else None
        if backend is not None:
            ws.backends.adopt(backend)
        app = create_app(
            backend or prepared.backend or ws.backends.shared(),
            prepared,
            name or served_name(task, rung),
            default_params=task.model.params.to_params(),
            adapter=adapter,
            api_key=api_key,
            max_batch=max_batch,
            limits=limits,
        )
    except BaseException:
        ws.close()
        raise
    app.state.close = ws.close
    return app
