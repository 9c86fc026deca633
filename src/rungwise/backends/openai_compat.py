"""The ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Works with OpenAI itself, vLLM, llama.cpp's server, Ollama, LM Studio and ``rungwise serve``.

* The API key is read from the environment variable the task names (``model.api_key_env``),
  lives only in the HTTP client's headers, and is scrubbed from every error message: it is
  never written to the run store, logs or exceptions.
* ``concurrency`` requests are in flight at once (worker threads, each with its own pooled
  ``httpx.Client`` connection); results come back in prompt order. ``rate_limit`` spaces their
  starts (requests/s or /min), and a :class:`~rungwise.backends.pacing.RequestPacer` adapts the
  rate to 429s (halved on a 429, raised again as answers succeed: AIMD).
* ``timeout_s`` is a deadline for the whole request (connect, send, wait, read the whole answer):
  httpx's timeouts are per read, so the calling thread watches every request's deadline and shuts
  an overdue one's socket down; a server that sends its answer a byte at a time is cut off there.
* 408/409/429/5xx, timeouts and connection failures are retried with exponential backoff and
  jitter, honouring ``Retry-After`` / ``retry-after-ms`` (a Retry-After holds every request, not
  just the one that got it); 401/403/404 and other 4xx fail at once with an error that says what
  to fix. Each wait is logged at INFO with ``retry_wait_s`` / ``retry_reason`` attributes (the
  CLI's progress bar counts them).
* Ctrl-C cancels every request in flight at once (their connections are closed); it never waits
  for a hung endpoint.
* A malformed or missing ``usage`` in an answer never fails the call: token counts are then
  estimated here (4 characters per token), said once in the log and in each answer's trace.
* A ``GenParams.constraint`` is sent in the form the server understands (``structured_outputs``:
  vLLM, llama.cpp, Ollama or OpenAI, see :data:`STRUCTURED_OUTPUTS_HELP`). A server that rejects it
  (HTTP 400/422), a dialect that cannot express it, and an answer that breaks it (a server that
  ignored the field) all raise :class:`~rungwise.errors.Unsupported`: a constrained rung is never
  measured unconstrained.

Example:
    >>> b = OpenAIBackend("http://127.0.0.1:8000/v1", "my-model")  # doctest: +SKIP
    >>> b.generate([[{"role": "user", "content": "hi"}]], GenParams())[0].text  # doctest: +SKIP
    'hello'
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import os
import queue
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import Field, field_validator

from rungwise.backends.base import WAITS_LOGGER, Backend, ProgressFn
from rungwise.backends.constraints import allows
from rungwise.backends.pacing import RequestPacer
from rungwise.config.model import ModelSpec
from rungwise.errors import BackendError, ConfigError, Unsupported
from rungwise.types import Chat, Completion, Constraint, GenParams

log = logging.getLogger(__name__)
waits_log = logging.getLogger(WAITS_LOGGER)

# OpenAI rejects more than 4 stop sequences; the rest are applied client-side.
MAX_API_STOPS = 4
# Same set the official SDK retries: request timeout, lock conflict, rate limit, server errors.
RETRY_STATUS = frozenset({408, 409, 429})
# Answers that say "slow down": they lower the adaptive request rate.
THROTTLE_STATUS = frozenset({429, 503})
# A server asking us to wait longer than this is treated as a failure, not a pause.
MAX_RETRY_AFTER_S = 120.0
# Key-shaped strings (OpenAI "sk-...", generic bearer tokens echoed back by a server).
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+[A-Za-z0-9._~+/\-]{8,}=*)")


#: How an endpoint takes an output constraint: the openai model config's field, declared as
#: ``structured_outputs: StructuredOutputs = Field("auto", description=STRUCTURED_OUTPUTS_HELP)``.
StructuredOutputs = Literal["auto", "vllm", "vllm_guided", "llamacpp", "ollama", "openai", "none"]

STRUCTURED_OUTPUTS_HELP = (
    "openai backend: how this endpoint constrains output (the constrained rung). "
    "vllm: `structured_outputs: {choice | regex | json}` in the body (vLLM's current field); "
    "vllm_guided: `guided_choice` / `guided_regex` / `guided_json` (vLLM before 0.12, which removed them); "
    "llamacpp: llama.cpp server's `grammar` (a choice as a GBNF alternation) and `json_schema` (no regex); "
    "ollama: `response_format` with a JSON schema, which Ollama's /v1 endpoint hands to its `format` option "
    "(a choice as an enum; no regex); "
    "openai: `response_format` json_schema, strict (a choice as an enum property, unwrapped back; no regex); "
    "none: the endpoint cannot constrain (a constrained rung reports it unsupported); "
    "auto: from the server: api.openai.com -> openai, else GET /models `owned_by` vllm -> vllm, llamacpp -> "
    "llamacpp, rungwise -> vllm, port 11434 -> ollama, anything else -> openai."
)


# Property a choice is wrapped in where the server only takes a JSON schema (an object at the root).
CHOICE_PROPERTY = "answer"


def _choice_schema(choices: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {CHOICE_PROPERTY: {"type": "string", "enum": list(choices)}},
        "required": [CHOICE_PROPERTY],
        "additionalProperties": False,
    }


_GBNF_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (llama.cpp grammars): quotes, backslashes and control characters escaped."""
    return '"' + "".join(_GBNF_ESCAPES.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x20 else ch) for ch in text) + '"'


def constraint_fields(constraint: Constraint, dialect: str) -> tuple[dict[str, Any], bool]:
    """The request fields that carry ``constraint`` in ``dialect``, and whether the answer comes
    back wrapped in a JSON object (a choice sent as an enum) to unwrap.

    Raises :class:`Unsupported` where the dialect cannot express the constraint.

    >>> constraint_fields(Constraint("choice", choices=("a", "b")), "vllm")
    ({'structured_outputs': {'choice': ['a', 'b']}}, False)
    >>> constraint_fields(Constraint("choice", choices=("a", "b")), "llamacpp")
    ({'grammar': 'root ::= "a" | "b"'}, False)
    """
    kind = constraint.kind
    schema = json.loads(constraint.json_schema) if constraint.json_schema else None
    pattern = constraint.pattern or ""
    if constraint.ignore_case:
        pattern = f"(?i:{pattern})"
    any_object = {"response_format": {"type": "json_object"}}
    if dialect in ("vllm", "vllm_guided"):
        if kind == "json" and schema is None:
            return any_object, False
        value = {"choice": list(constraint.choices), "regex": pattern, "json": schema}[kind]
        return ({"structured_outputs": {kind: value}} if dialect == "vllm" else {f"guided_{kind}": value}), False
    if kind == "regex" and dialect in ("llamacpp", "ollama", "openai"):
        raise Unsupported(
            f"a regex constraint is unsupported by this endpoint (structured_outputs: {dialect}): it takes "
            "JSON schemas (and llama.cpp GBNF grammars), not regular expressions",
            hint="serve the model with vLLM (structured_outputs: vllm) or use the local backend for a regex metric",
        )
    if dialect == "llamacpp":
        if kind == "choice":
            return {"grammar": "root ::= " + " | ".join(_gbnf_literal(c) for c in constraint.choices)}, False
        return {"json_schema": schema if schema is not None else {"type": "object"}}, False
    if dialect in ("ollama", "openai"):
        if kind == "json" and schema is None:
            return any_object, False
        wrapped = kind == "choice"
        json_schema: dict[str, Any] = {"name": "answer", "schema": _choice_schema(constraint.choices) if wrapped else schema}
        if dialect == "openai":
            json_schema["strict"] = True
        return {"response_format": {"type": "json_schema", "json_schema": json_schema}}, wrapped
    raise Unsupported(
        f"the {constraint.describe()} constraint is unsupported by this endpoint (structured_outputs: {dialect})",
        hint="set model.structured_outputs to the server's kind (vllm, llamacpp, ollama, openai) if it can constrain",
    )


def _unwrap_choice(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    answer = value.get(CHOICE_PROPERTY) if isinstance(value, dict) else None
    return answer if isinstance(answer, str) else text


_RATE_TEXT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$", re.I)
_SECONDS_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(value: float | str) -> float:
    """Requests per second from a number (per second) or text such as ``"600/min"``.

    Raises :class:`ValueError` for anything else, or a rate that is not positive.

    >>> parse_rate("600/min"), parse_rate(2.5), parse_rate("10/s"), parse_rate("3600/h")
    (10.0, 2.5, 10.0, 1.0)
    """
    if isinstance(value, bool):
        raise ValueError("a rate is a number of requests per second, or text like '600/min'")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        m = _RATE_TEXT.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a rate: write requests per second (5) or per minute ('300/min')")
        rate = float(m.group(1)) / _SECONDS_PER[(m.group(2) or "s").lower()]
    if not rate > 0:
        raise ValueError(f"the rate must be above 0 requests per second, got {value!r}")
    return rate


class OpenAISpec(ModelSpec):
    """``model:`` for ``backend: openai``: any OpenAI-compatible endpoint (vLLM, llama.cpp server,
    Ollama, LM Studio, OpenAI, ``rungwise serve``)."""

    base_url: str = Field(description="The endpoint's API root, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (never the key itself)."
    )
    concurrency: int = Field(4, gt=0, description="Requests in flight at once (a serving cluster batches them).")
    rate_limit: float | None = Field(
        None,
        description="Requests started per second at most, shared by all in flight: a number (per second) or "
        "text like '600/min'. Unset: no limit until the server answers 429; either way a 429 halves the rate "
        "and successes raise it again (never above this limit).",
    )
    timeout_s: float = Field(
        60.0, gt=0, description="Deadline for one whole request (connect, wait, read the full answer); then it is retried."
    )
    max_retries: int = Field(4, ge=0, description="Retries on 429/5xx/timeouts, with exponential backoff.")
    structured_outputs: StructuredOutputs = Field("auto", description=STRUCTURED_OUTPUTS_HELP)

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> float | None:
        return None if value is None else parse_rate(value)

    def build(self) -> OpenAIBackend:
        return OpenAIBackend.from_spec(self)

    def describe(self) -> str:
        return f"openai:{self.id}@{_public_url(self.base_url.rstrip('/'))}"

    def constraint_support(self) -> str | None:
        if self.structured_outputs == "none":
            return None
        return (f"the endpoint must constrain output through its structured-output fields (structured_outputs: "
                f"{self.structured_outputs}); vLLM, llama.cpp server, Ollama and OpenAI can, with limits on regex")


class _Aborted(Exception):
    """Another prompt of the same call failed for good, or Ctrl-C: stop working on this one."""


@dataclass
class RequestStats:
    """What an :class:`OpenAIBackend` has sent so far (every ``generate`` call added up)."""

    requests: int = 0  #: HTTP attempts sent, retries included
    answered: int = 0  #: prompts answered
    retries: int = 0  #: attempts that were retried after a wait
    throttled: int = 0  #: answers that said "slow down" (429, 503)
    waited_s: float = 0.0  #: time spent in retry waits (backoff, Retry-After)
    seconds: float = 0.0  #: wall time inside ``generate``
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        """Add to the counters (worker threads count concurrently): ``stats.add(retries=1, waited_s=0.5)``."""
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    @property
    def per_s(self) -> float:
        """Prompts answered per second of ``generate`` wall time."""
        return self.answered / self.seconds if self.seconds > 0 else 0.0


class _Connection:
    """One worker's HTTP connection: its own ``httpx.Client`` (one keep-alive connection), the
    socket under it (learnt from httpx's ``trace`` extension when it connects) and the deadline
    of the request in flight on it, so another thread can cut an overdue or cancelled request."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.sock: socket.socket | None = None
        self.deadline: float | None = None  # time.monotonic() by which the request in flight must be done

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's ``trace`` request extension: remember the socket of each new connection."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                self.sock = sock

    def cut(self) -> None:
        """Shut the socket down: a send or receive blocked on it in another thread returns at once
        (closing it would not wake that thread), and the server sees the client leave."""
        sock = self.sock
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS
            except OSError:
                pass  # already closed


#: How often the calling thread checks the deadlines of the requests in flight.
WATCH_INTERVAL_S = 0.05


def _token_count(value: Any) -> int | None:
    """A token count from a response's usage: a non-negative whole number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not float(value).is_integer():
        return None
    return int(value)


def _usage_counts(usage: Any) -> tuple[int, int, int] | None:
    """(prompt, completion, cached) tokens from a response's ``usage``; None when it is missing
    or malformed (not an object, counts that are not whole numbers)."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = _token_count(usage.get("prompt_tokens")), _token_count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = _token_count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return prompt, completion, cached or 0


def _shape(value: Any) -> str:
    """A malformed JSON value, briefly, for a message.

    >>> _shape("lots")
    'a str: "lots"'
    """
    return f"a {type(value).__name__}: {json.dumps(value, default=str)[:60]}"


def _public_url(url: str) -> str:
    """``url`` without user:password, for messages and the model id."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds the server asks us to wait (``retry-after-ms``, or ``Retry-After`` as seconds or a date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _apply_stops(text: str, stops: Sequence[str]) -> str:
    """Cut ``text`` at the earliest stop sequence (servers that ignore or cap ``stop`` still comply)."""
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class OpenAIBackend(Backend):
    """A backend that calls an OpenAI-compatible chat-completions endpoint over HTTP.

    Args:
        base_url: the API root, usually ending in ``/v1`` (``http://127.0.0.1:8000/v1``).
        model: the served model name sent as ``model``.
        api_key_env: name of the environment variable holding the API key; ``None`` sends no
            ``Authorization`` header (local servers). Named but unset is an error.
        concurrency: requests in flight at once.
        rate_limit: requests started per second at most (None: none until a 429), shared by all
            requests of this backend; 429s lower it and successes raise it again.
        timeout_s: the deadline for one whole request, from connecting to the last byte of the answer.
        max_retries: retries after the first attempt, on 408/409/429/5xx, timeouts and
            connection errors.
        backoff_base_s, backoff_max_s: exponential backoff ``base * 2**attempt``, capped, with
            "equal jitter" (half fixed, half random) so that parallel workers spread out.
        rng: the jitter source (tests pass a seeded one).
        structured_outputs: how the server takes a constraint (see :data:`STRUCTURED_OUTPUTS_HELP`).

    Token counts come from the response's ``usage`` (``prompt_tokens_details.cached_tokens``
    fills :attr:`Completion.cached_tokens`). Where a server sends no usable ``usage``, they are
    estimated at 4 characters per token. ``count_tokens`` is always that estimate: there is
    no tokenizer on this side of the wire. ``latency_s`` is the successful attempt's round trip
    (backoff waits are not the model's latency). :attr:`stats` counts requests, retries and waits.

    Example:
        >>> import os; os.environ["MY_KEY"] = "..."  # doctest: +SKIP
        >>> b = OpenAIBackend("https://api.openai.com/v1", "gpt-4o-mini", api_key_env="MY_KEY")  # doctest: +SKIP
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        concurrency: int = 4,
        rate_limit: float | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
        structured_outputs: StructuredOutputs = "auto",
    ) -> None:
        if not re.match(r"^https?://[^/\s]+", base_url or ""):
            raise ConfigError(
                f"model.base_url {base_url!r} is not an http(s) URL",
                hint="write it like http://127.0.0.1:8000/v1 or https://api.openai.com/v1",
            )
        if not model:
            raise ConfigError("model.id is empty", hint="set model.id to the served model name")
        if structured_outputs not in get_args(StructuredOutputs):
            raise ConfigError(
                f"model.structured_outputs {structured_outputs!r} is not one of {', '.join(get_args(StructuredOutputs))}",
                hint="see STRUCTURED_OUTPUTS_HELP in rungwise.backends.openai_compat",
            )
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or (rate_limit is not None and rate_limit <= 0):
            raise ConfigError(
                f"invalid openai backend limits (concurrency={concurrency}, max_retries={max_retries}, "
                f"timeout_s={timeout_s}, rate_limit={rate_limit})",
                hint="use concurrency >= 1, max_retries >= 0, timeout_s > 0, rate_limit > 0 (or leave it unset)",
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.pacer = RequestPacer(rate_limit)
        self.stats = RequestStats()
        self._rng = rng or random.Random()
        self._where = _public_url(self.base_url)
        self.model_id = f"openai:{model}@{self._where}"
        self._url = self.base_url + "/chat/completions"
        # Newer OpenAI models reject max_tokens and want max_completion_tokens; we learn which
        # one this endpoint takes from its first 400 and remember it.
        self._max_tokens_field = "max_tokens"
        self._warned_usage: set[str] = set()
        self.structured_outputs: str = structured_outputs  # "auto" until the first constrained call
        self._dialect_lock = threading.Lock()

        self._headers = {"User-Agent": "rungwise"}
        self._secret: str | None = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise BackendError(
                    f"model.api_key_env names the environment variable {api_key_env}, but it is not set",
                    hint=f"export {api_key_env}=<your API key> before running (the key itself never goes in task.yaml)",
                )
            self._secret = key
            self._headers["Authorization"] = f"Bearer {key}"

    @classmethod
    def from_spec(cls, spec: OpenAISpec) -> OpenAIBackend:
        """Build from a task's ``model`` section (``backend: openai``)."""
        if not spec.base_url:
            raise ConfigError(
                "model.base_url is missing for backend 'openai'", hint="set model.base_url, e.g. http://127.0.0.1:8000/v1"
            )
        return cls(
            spec.base_url,
            spec.id,
            api_key_env=spec.api_key_env,
            concurrency=spec.concurrency,
            rate_limit=spec.rate_limit,
            timeout_s=spec.timeout_s,
            max_retries=spec.max_retries,
            structured_outputs=spec.structured_outputs,
        )

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(base_url={self._where!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    # -- public protocol -------------------------------------------------------------------

    def generate(self, prompts: Sequence[Chat], params: GenParams, progress: ProgressFn | None = None) -> list[Completion]:
        """Answer every prompt, ``concurrency`` at a time; results are in prompt order.

        The first prompt that fails for good (after retries) stops the batch: the others are
        cancelled (their sockets shut down) and its :class:`BackendError` is raised. Ctrl-C
        cancels them the same way, at once. ``progress`` is called on this thread.
        """
        if not prompts:
            return []
        if params.constraint is not None:
            constraint_fields(params.constraint, self.dialect())  # unsupported: fail before any request
        t0 = time.perf_counter()
        try:
            return self._answer_all(prompts, params, progress)
        finally:
            self.stats.add(seconds=time.perf_counter() - t0)

    def dialect(self) -> str:
        """The structured-outputs dialect in use; ``auto`` is resolved once, from the server."""
        with self._dialect_lock:
            if self.structured_outputs == "auto":
                self.structured_outputs = self._detect_dialect()
                log.info("%s: structured outputs as %s", self._where, self.structured_outputs)
            return self.structured_outputs

    def _detect_dialect(self) -> str:
        parts = urlsplit(self.base_url)
        if parts.hostname == "api.openai.com":
            return "openai"
        owner = ""
        try:
            with httpx.Client(headers=self._headers, timeout=httpx.Timeout(min(self.timeout_s, 10.0)),
                              verify=self._tls) as client:
                r = client.get(self.base_url + "/models")
            cards = r.json().get("data") if r.status_code == 200 else None
            if isinstance(cards, list) and cards:
                mine = [c for c in cards if isinstance(c, dict) and c.get("id") == self.model]
                owner = str((mine or cards)[0].get("owned_by") or "").lower()
        except (httpx.HTTPError, ValueError, AttributeError):
            pass  # no model list: fall back on the port and the default
        if owner in ("vllm", "llamacpp"):
            return owner
        if owner == "rungwise":
            return "vllm"  # rungwise serve takes vLLM's fields (a choice is scored by log-likelihood there)
        if owner == "ollama" or parts.port == 11434:
            return "ollama"
        return "openai"

    def count_tokens(self, text: str) -> int:
        """An estimate (4 characters per token): the remote tokenizer is not available here."""
        return max(1, round(len(text) / 4))

    # -- all prompts of a call, concurrently -------------------------------------------------

    def _answer_all(self, prompts: Sequence[Chat], params: GenParams, progress: ProgressFn | None) -> list[Completion]:
        todo: queue.SimpleQueue[tuple[int, Chat]] = queue.SimpleQueue()
        for item in enumerate(prompts):
            todo.put(item)
        done: queue.SimpleQueue[tuple[int, Completion | BaseException]] = queue.SimpleQueue()
        abort = threading.Event()
        connections = [self._connection() for _ in range(min(self.concurrency, len(prompts)))]
        for conn in connections:
            # Daemon threads: a request stuck in a hung server never keeps the process alive.
            threading.Thread(target=self._work, args=(conn, todo, done, params, abort), daemon=True,
                             name="rungwise-openai").start()
        results: list[Completion | None] = [None] * len(prompts)
        answered = 0
        watch = time.monotonic() + WATCH_INTERVAL_S
        try:
            while answered < len(prompts):
                try:
                    i, out = done.get(timeout=max(0.0, watch - time.monotonic()))
                except queue.Empty:
                    pass
                else:
                    if isinstance(out, BaseException):
                        raise out
                    results[i] = out
                    answered += 1
                    self.stats.add(answered=1)
                    if progress:
                        progress(1)  # on the calling thread: progress bars never run on workers
                now = time.monotonic()
                if now >= watch:  # also while answers stream in: one stuck request must not wait for a lull
                    watch = now + WATCH_INTERVAL_S
                    for conn in connections:
                        deadline = conn.deadline
                        if deadline is not None and now > deadline:
                            conn.cut()  # its worker reports "no complete answer within timeout_s"
        finally:
            if answered < len(prompts):
                # A failure for good, or Ctrl-C: stop every request in flight now instead of
                # waiting for it (the workers see `abort` and leave).
                abort.set()
                for conn in connections:
                    conn.cut()
        return results  # type: ignore[return-value]

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        # Built once: loading the CA bundle costs tens of ms, which every worker's client paid.
        return httpx.create_ssl_context()

    def _connection(self) -> _Connection:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        return _Connection(httpx.Client(headers=self._headers, timeout=httpx.Timeout(self.timeout_s), limits=limits,
                                        verify=self._tls))

    def _work(self, conn: _Connection, todo: queue.SimpleQueue[tuple[int, Chat]],
              done: queue.SimpleQueue[tuple[int, Completion | BaseException]], params: GenParams,
              abort: threading.Event) -> None:
        """A worker thread: answer prompts from ``todo`` until it is empty, one fails for good, or ``abort``."""
        with conn.client:
            while not abort.is_set():
                try:
                    i, chat = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, self._request(conn, chat, params, abort)))
                except BaseException as exc:  # every error goes back to the calling thread
                    done.put((i, exc))
                    return

    # -- one request, with retries -----------------------------------------------------------

    def _body(self, chat: Chat, params: GenParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in chat],
            "temperature": params.temperature,
            "top_p": params.top_p,
            self._max_tokens_field: params.max_tokens,
        }
        # Under a constraint the grammar says where the answer ends, as on the local backend.
        stops = [s for s in params.stop if s] if params.constraint is None else []
        if stops:
            body["stop"] = stops[:MAX_API_STOPS]
        if params.seed is not None:
            body["seed"] = params.seed
        if params.constraint is not None:
            body.update(constraint_fields(params.constraint, self.dialect())[0])
        return body

    def _scrub(self, text: str) -> str:
        """Remove the key (and anything key-shaped a server echoed back) from ``text``."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return _KEYLIKE.sub("***", text)

    def _server_message(self, r: httpx.Response) -> tuple[str, str | None]:
        """The server's error message and code (OpenAI's ``{"error": {...}}`` or FastAPI's ``detail``)."""
        code = None
        try:
            data = r.json()
        except ValueError:
            msg = r.text.strip()
        else:
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict):
                msg = str(err.get("message") or err)
                code = err.get("code") or err.get("type")
                code = str(code) if code else None
            elif isinstance(data, dict) and ("detail" in data or "message" in data):
                msg = str(data.get("detail") or data.get("message"))
            else:
                msg = str(data)
        msg = " ".join(msg.split())
        return self._scrub(msg[:500] or r.reason_phrase), code

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # The server's number plus a little jitter, so parallel workers don't return in lockstep.
            return retry_after + self._rng.uniform(0, self.backoff_base_s)
        cap = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return cap / 2 + self._rng.uniform(0, cap / 2)

    def _auth_error(self, status: int, msg: str) -> BackendError:
        if self.api_key_env:
            hint = (
                f"check the key in the environment variable {self.api_key_env} "
                f"(export {self.api_key_env}=<a valid key for {self._where}>)"
            )
        else:
            hint = (
                "this endpoint needs an API key: put it in an environment variable (export MY_API_KEY=...) "
                "and set model.api_key_env: MY_API_KEY in task.yaml"
            )
        what = "rejected the API key" if status == 401 else "refused access"
        return BackendError(f"{self._where} {what} (HTTP {status}): {msg}", hint=hint)

    def _throttled(self, status: int, booked_at: float, retry_after: float | None) -> None:
        """A "slow down" answer: the shared pacer holds and halves the rate; say so."""
        self.stats.add(throttled=1)
        if not self.pacer.throttled(booked_at, retry_after):
            return
        rate = self.pacer.rate or 0.0
        if self.pacer.cuts == 1:
            log.warning("%s is throttling requests (HTTP %d): pacing them at %.2g/s, raised again as answers "
                        "succeed (model.rate_limit sets a limit from the start)", self._where, status, rate)
        else:
            log.info("%s: HTTP %d again; request rate lowered to %.2g/s", self._where, status, rate)

    def _post(self, conn: _Connection, body: dict[str, Any]) -> httpx.Response:
        """POST ``body`` on ``conn``, all of it within ``timeout_s``.

        httpx's own timeout is per read, so a server that trickles its answer never trips it:
        the calling thread shuts the socket down at the deadline, and the error that makes here
        is raised as a timeout.
        """
        deadline = time.monotonic() + self.timeout_s
        conn.deadline = deadline
        try:
            return conn.client.post(self._url, json=body, extensions={"trace": conn.trace})
        except httpx.TransportError as exc:
            if time.monotonic() >= deadline and not isinstance(exc, httpx.TimeoutException):
                raise httpx.ReadTimeout(f"no complete answer within {self.timeout_s:g} s") from None
            raise
        finally:
            conn.deadline = None

    def _request(self, conn: _Connection, chat: Chat, params: GenParams, abort: threading.Event) -> Completion:
        attempt = 0
        last = ""
        while True:
            booked = self.pacer.now()
            wait = self.pacer.reserve()
            if abort.wait(wait) if wait > 0 else abort.is_set():
                raise _Aborted
            body = self._body(chat, params)
            retry_after: float | None = None
            self.stats.add(requests=1)
            t0 = time.perf_counter()
            try:
                r = self._post(conn, body)
            except httpx.TimeoutException:
                if abort.is_set():
                    raise _Aborted from None
                last = f"no complete answer within {self.timeout_s:g} s"
            except httpx.TransportError as exc:
                if abort.is_set():
                    raise _Aborted from None
                last = f"cannot reach the endpoint ({type(exc).__name__}: {self._scrub(str(exc))})"
            else:
                latency = time.perf_counter() - t0
                if r.status_code == 200:
                    self.pacer.succeeded()
                    return self._parse(r, chat, params, latency)
                msg, code = self._server_message(r)
                status = r.status_code
                if status in (401, 403):
                    raise self._auth_error(status, msg)
                if status == 404:
                    raise BackendError(
                        f"{self._where}: not found (HTTP 404) for model {self.model!r}: {msg}",
                        hint="check model.id against the server's model list (GET <base_url>/models) and that "
                        "model.base_url includes the API prefix, usually /v1",
                    )
                if (
                    status == 400
                    and self._max_tokens_field == "max_tokens"
                    and "max_completion_tokens" in msg
                ):
                    self._max_tokens_field = "max_completion_tokens"
                    continue  # same attempt: the request was malformed, not the server busy
                if params.constraint is not None and status in (400, 422):
                    raise Unsupported(
                        f"{self._where} rejected the {params.constraint.describe()} constraint (HTTP {status}, "
                        f"structured_outputs: {self.dialect()}): {msg}",
                        hint="the constraint looks unsupported by this endpoint: set model.structured_outputs to the "
                        "server's kind (vllm, vllm_guided, llamacpp, ollama, openai), or leave the constrained rung out",
                    )
                if status == 429 and code == "insufficient_quota":
                    raise BackendError(
                        f"{self._where}: quota exhausted (HTTP 429): {msg}",
                        hint="add credit or raise the quota for this key; retrying will not help",
                    )
                if status not in RETRY_STATUS and status < 500:
                    raise BackendError(
                        f"{self._where} rejected the request (HTTP {status}): {msg}",
                        hint="check model.params (temperature, top_p, max_tokens, stop) against what this server accepts",
                    )
                last = f"HTTP {status}: {msg}"
                retry_after = _retry_after_s(r.headers)
                if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
                    raise BackendError(
                        f"{self._where} asked to retry after {retry_after:.0f} s ({last})",
                        hint="the endpoint is rate-limited for a long time; lower model.concurrency or try later",
                    )
                if status in THROTTLE_STATUS:
                    self._throttled(status, booked, retry_after)
            if attempt >= self.max_retries:
                raise BackendError(
                    f"{self._where}: {last} (gave up after {attempt + 1} attempt{'s' if attempt else ''})",
                    hint="check that the server is running at model.base_url; for slow or busy servers raise "
                    "model.timeout_s or model.max_retries, or lower model.concurrency or model.rate_limit",
                )
            delay = self._delay(attempt, retry_after)
            self.stats.add(retries=1, waited_s=delay)
            reason = last.split(":", 1)[0] if last.startswith("HTTP") else last.split(" (", 1)[0]
            waits_log.info("%s: %s; retrying in %.2f s (attempt %d of %d)", self._where, last, delay, attempt + 2,
                           self.max_retries + 1, extra={"retry_wait_s": delay, "retry_reason": reason})
            attempt += 1
            if abort.wait(delay):
                raise _Aborted

    def _parse(self, r: httpx.Response, chat: Chat, params: GenParams, latency: float) -> Completion:
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(
                f"{self._where}: the answer is not an OpenAI chat completion: {self._scrub(r.text[:200])!r}",
                hint="point model.base_url at an OpenAI-compatible API root (it usually ends in /v1)",
            ) from None
        finish = str(choice.get("finish_reason") or "stop")
        trace: dict[str, Any] = {}
        c = params.constraint
        if c is None:
            text = _apply_stops(str(text), params.stop)
        else:
            if constraint_fields(c, self.dialect())[1]:
                text = _unwrap_choice(str(text))
            # An answer cut at max_tokens may break a JSON constraint legitimately; any other
            # violation means the server did not enforce it.
            if finish != "length" and not allows(c, str(text)):
                raise Unsupported(
                    f"{self._where} answered {str(text)!r:.80}, which breaks the {c.describe()} constraint: the "
                    f"endpoint ignored it (structured_outputs: {self.dialect()})",
                    hint="set model.structured_outputs to the server's kind (vllm, vllm_guided, llamacpp, ollama, "
                    "openai); a server that cannot constrain output cannot run the constrained rung",
                )
            trace = {"constraint": c.describe(), "structured_outputs": self.dialect()}
        usage = data.get("usage")
        counts = _usage_counts(usage)
        if counts is None:
            prompt_tokens = sum(self.count_tokens(m["content"]) for m in chat)
            completion_tokens = self.count_tokens(text) if text else 0
            counts = (prompt_tokens, completion_tokens, 0)
            problem = "no token usage" if usage is None else f"a malformed usage object ({_shape(usage)})"
            trace["usage"] = f"estimated: the server sent {problem}"
            if problem not in self._warned_usage:
                self._warned_usage.add(problem)
                log.warning("%s returns %s; token counts are estimates (4 characters per token)", self._where, problem)
        prompt_tokens, completion_tokens, cached = counts
        return Completion(
            text=str(text),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency,
            cached_tokens=cached,
            finish_reason=finish,
            trace=trace,
        )
