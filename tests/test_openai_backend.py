"""The `openai` backend over real HTTP.

Happy paths call a real `rungwise serve` app on loopback (no mocked HTTP); fault cases use a
small local FastAPI server that misbehaves on purpose (429, 5xx, slow, 401, odd bodies).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from rungwise.backends import make_backend
from rungwise.backends.openai_compat import OpenAIBackend, _retry_after_s
from rungwise.backends.scripted import ScriptedBackend
from rungwise.config.model import model_spec_from
from rungwise.errors import BackendError, ConfigError
from rungwise.prompting import PromptTemplate
from rungwise.serve import background, create_app
from rungwise.types import Chat, GenParams

KEY = "sk-test-" + "Zq9" * 12  # a key-shaped secret that must never leak
SERVED = "tickets-few_shot"
TEMPLATE = PromptTemplate("Route the ticket.", (("I was charged twice", "billing"),))


def _last_user(chat: Chat) -> str:
    return next(m["content"] for m in reversed(chat) if m["role"] == "user")


class RecordingBackend(ScriptedBackend):
    """Scripted, plus what the server passed in: params per generate call, a cached-token count."""

    def __init__(self, *args: Any, cached: int = 0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.params: list[GenParams] = []
        self.cached = cached

    def generate(self, prompts, params, progress=None):  # type: ignore[no-untyped-def]
        self.params.append(params)
        out = super().generate(prompts, params, progress)
        for c in out:
            c.cached_tokens = self.cached
        return out


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, RecordingBackend]]:
    """A real rungwise serve app (scripted model, requires KEY) on a free loopback port."""
    monkeypatch.setenv("RW_TEST_KEY", KEY)
    backend = RecordingBackend(lambda chat: "echo " + _last_user(chat), cached=3)
    app = create_app(backend, TEMPLATE, SERVED, api_key=KEY)
    with background(app) as url:
        yield url + "/v1", backend


def test_generate_over_real_http_keeps_order_counts_usage_and_applies_the_prompt(served) -> None:
    url, backend = served
    b = OpenAIBackend(url, SERVED, api_key_env="RW_TEST_KEY", concurrency=4)
    prompts = [[{"role": "user", "content": f"ticket number {i}"}] for i in range(10)]
    ticks: list[int] = []
    out = b.generate(prompts, GenParams(max_tokens=16), progress=ticks.append)
    b.close()

    assert [c.text for c in out] == [f"echo ticket number {i}" for i in range(10)]
    assert ticks == [1] * 10
    # The server prepended the rung's system prompt and demo to every conversation.
    assert sorted(map(_last_user, backend.calls)) == sorted(f"ticket number {i}" for i in range(10))
    assert all(call[:3] == TEMPLATE.prefix() for call in backend.calls)
    # Token counts are the server's `usage` (ScriptedBackend counts words + 1 per message),
    # not a client-side estimate; cached tokens travel through prompt_tokens_details.
    rendered = TEMPLATE.render(prompts[0])
    assert out[0].prompt_tokens == sum(len(m["content"].split()) + 1 for m in rendered)
    assert out[0].completion_tokens == 4
    assert all(c.cached_tokens == 3 and c.latency_s > 0 for c in out)
    assert b.model_id == f"openai:{SERVED}@{url}"


def test_generation_params_are_sent_and_extra_stops_are_applied_client_side(served) -> None:
    url, backend = served
    b = OpenAIBackend(url, SERVED, api_key_env="RW_TEST_KEY", concurrency=1)
    params = GenParams(max_tokens=7, temperature=0.3, top_p=0.9, stop=("q1", "q2", "q3", "q4", "number"), seed=7)
    (c,) = b.generate([[{"role": "user", "content": "ticket number 5"}]], params)
    # OpenAI caps `stop` at 4: the server got the first four, the fifth was applied here.
    assert backend.params[-1] == GenParams(7, 0.3, 0.9, ("q1", "q2", "q3", "q4"), 7)
    assert c.text == "echo ticket "
    b.close()


def test_from_spec_and_make_backend_build_it_from_the_task_model_section(served) -> None:
    url, _ = served
    spec = model_spec_from(dict(backend="openai", id=SERVED, base_url=url, api_key_env="RW_TEST_KEY", concurrency=2,
                     timeout_s=5, max_retries=0))
    with make_backend(spec) as b:
        assert isinstance(b, OpenAIBackend)
        assert (b.concurrency, b.timeout_s, b.max_retries) == (2, 5, 0)
        assert b.generate([[{"role": "user", "content": "hi"}]], spec.params.to_params())[0].text == "echo hi"
        assert KEY not in repr(b) and KEY not in b.model_id


def test_wrong_key_gives_401_error_naming_the_env_var_never_the_key(served, monkeypatch, caplog) -> None:
    url, _ = served
    wrong = "sk-wrong-" + "Xy7" * 12
    monkeypatch.setenv("RW_OTHER_KEY", wrong)
    caplog.set_level(logging.DEBUG)
    b = OpenAIBackend(url, SERVED, api_key_env="RW_OTHER_KEY", max_retries=3)
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as err:
        b.generate([[{"role": "user", "content": "hi"}]], GenParams())
    assert time.perf_counter() - t0 < 2  # not retried
    assert "RW_OTHER_KEY" in str(err.value) and "401" in str(err.value)
    for secret in (wrong, KEY):
        assert secret not in str(err.value) and secret not in caplog.text and secret not in repr(b)


def test_no_key_configured_but_endpoint_wants_one(served) -> None:
    url, _ = served
    with pytest.raises(BackendError, match="api_key_env"):
        OpenAIBackend(url, SERVED).generate([[{"role": "user", "content": "hi"}]], GenParams())


def test_named_but_unset_key_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RW_NOT_SET", raising=False)
    with pytest.raises(BackendError, match="RW_NOT_SET.*not set") as err:
        OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env="RW_NOT_SET")
    assert err.value.exit_code == 2 and "export RW_NOT_SET" in (err.value.hint or "")


def test_unknown_model_is_a_404_error_with_a_hint(served) -> None:
    url, _ = served
    with pytest.raises(BackendError, match="404.*'no-such-model'") as err:
        OpenAIBackend(url, "no-such-model", api_key_env="RW_TEST_KEY").generate([[{"role": "user", "content": "x"}]],
                                                                               GenParams())
    assert "/models" in (err.value.hint or "")


def test_bad_base_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        OpenAIBackend("127.0.0.1:8000/v1", "m")


def test_climb_through_the_openai_backend_never_stores_or_logs_the_key(served, tmp_path: Path, caplog,
                                                                        rungwise_home: Path) -> None:
    from helpers import write_task
    from rungwise.climb import climb
    from rungwise.config.task import load_task

    url, backend = served
    caplog.set_level(logging.DEBUG)
    task = load_task(write_task(tmp_path, model={"backend": "openai", "id": SERVED, "base_url": url,
                                                "api_key_env": "RW_TEST_KEY", "max_retries": 0}))
    res = climb(task, rungs=["zero_shot"])
    assert res.rungs[0].predictions and backend.calls  # it really went over HTTP
    assert KEY not in caplog.text
    files = [p for p in rungwise_home.rglob("*") if p.is_file()]
    assert files  # the run store was written
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p


# -- fault cases: a local server that misbehaves on purpose ------------------------------------

hits: Counter[str] = Counter()
seen_bodies: dict[str, list[dict[str, Any]]] = {}
disconnects: Counter[str] = Counter()
# Malformed usage objects real servers have sent: a string, a list, counts as text, a negative count.
BAD_USAGE: dict[str, Any] = {
    "strusage": "lots",
    "listusage": [11, 2],
    "textcounts": {"prompt_tokens": "11", "completion_tokens": "2"},
    "negative": {"prompt_tokens": -1, "completion_tokens": 2, "prompt_tokens_details": ["x"]},
}


def _ok(text: str = "fine", usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "length"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    return body


def _faulty_app() -> Any:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        name: str = body["model"]
        hits[name] += 1
        seen_bodies.setdefault(name, []).append(body)
        n = hits[name]
        kind = name.split(":")[0]
        if kind == "ratelimited" and n == 1:
            return JSONResponse({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, 429,
                                headers={"Retry-After": "1"})
        if kind == "flaky" and n <= 2:
            return JSONResponse({"error": {"message": "boom"}}, 500)
        if kind == "down":
            return JSONResponse({"error": {"message": "overloaded"}}, 503)
        if kind == "slow":
            for _ in range(100):  # up to 5 s, but stop once the client has given up
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.05)
            return _ok()
        if kind == "echo401":  # worst case: a server that echoes the credentials it got
            return JSONResponse({"error": {"message": f"bad key: {request.headers.get('authorization')}"}}, 401)
        if kind == "quota":
            return JSONResponse({"error": {"message": "You exceeded your quota", "code": "insufficient_quota"}}, 429)
        if kind == "newmodel" and "max_tokens" in body:
            return JSONResponse({"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with "
                                           "this model. Use 'max_completion_tokens' instead."}}, 400)
        if kind == "badparam" and body["messages"][-1]["content"] == "bad":
            return JSONResponse({"error": {"message": "temperature out of range"}}, 400)
        if kind == "nousage":
            return _ok("no usage here", usage=False)
        if kind in BAD_USAGE:
            return {**_ok("odd usage", usage=False), "usage": BAD_USAGE[kind]}
        if kind == "drip" and body["messages"][-1]["content"] != "fast":
            # Headers at once, then the answer a byte every 50 ms for 3 s (JSON allows leading spaces).
            async def trickle() -> Any:
                for _ in range(60):
                    yield b" "
                    await asyncio.sleep(0.05)
                yield json.dumps(_ok("late")).encode()

            return StreamingResponse(trickle(), media_type="application/json")
        if kind == "hang":  # never answers; counts the clients that hang up
            while not await request.is_disconnected():
                await asyncio.sleep(0.02)
            disconnects[name] += 1
            return _ok()
        if kind == "html":
            return PlainTextResponse("<html>welcome</html>")
        return _ok()

    return app


@pytest.fixture(scope="module")
def faulty() -> Iterator[str]:
    with background(_faulty_app()) as url:
        yield url + "/v1"


def _backend(url: str, kind: str, **kw: Any) -> tuple[OpenAIBackend, str]:
    name = f"{kind}:{uuid.uuid4().hex[:8]}"  # fresh hit counter per test
    kw.setdefault("backoff_base_s", 0.01)
    return OpenAIBackend(url, name, **kw), name


HI: list[Chat] = [[{"role": "user", "content": "hi"}]]


def test_429_honours_retry_after_then_succeeds(faulty: str) -> None:
    b, name = _backend(faulty, "ratelimited")
    t0 = time.perf_counter()
    (c,) = b.generate(HI, GenParams())
    assert time.perf_counter() - t0 >= 1.0  # waited the server's Retry-After: 1, not the 10 ms backoff
    assert hits[name] == 2 and c.text == "fine" and c.finish_reason == "length"
    assert (c.prompt_tokens, c.completion_tokens, c.cached_tokens) == (11, 2, 0)


def test_500_twice_then_200_is_retried_with_backoff(faulty: str) -> None:
    b, name = _backend(faulty, "flaky", max_retries=2)
    assert b.generate(HI, GenParams())[0].text == "fine"
    assert hits[name] == 3


def test_persistent_5xx_gives_up_after_max_retries(faulty: str) -> None:
    b, name = _backend(faulty, "down", max_retries=2)
    with pytest.raises(BackendError, match=r"HTTP 503: overloaded \(gave up after 3 attempts\)"):
        b.generate(HI, GenParams())
    assert hits[name] == 3


def test_slow_endpoint_times_out_with_a_clear_error_after_retries(faulty: str) -> None:
    b, name = _backend(faulty, "slow", timeout_s=0.2, max_retries=1)
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"no complete answer within 0.2 s \(gave up after 2 attempts\)") as err:
        b.generate(HI, GenParams())
    assert time.perf_counter() - t0 < 3
    assert hits[name] == 2 and "timeout_s" in (err.value.hint or "")


def test_401_error_names_the_env_var_and_scrubs_an_echoed_key(faulty: str, monkeypatch, caplog) -> None:
    monkeypatch.setenv("RW_FAULTY_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    b, name = _backend(faulty, "echo401", api_key_env="RW_FAULTY_KEY")
    with pytest.raises(BackendError) as err:
        b.generate(HI, GenParams())
    text = str(err.value)
    assert "RW_FAULTY_KEY" in text and "401" in text and "bad key" in text
    assert KEY not in text and KEY not in caplog.text and hits[name] == 1
    assert err.value.__cause__ is None and err.value.__context__ is None  # no httpx objects ride along


def test_quota_429_is_not_retried(faulty: str) -> None:
    b, name = _backend(faulty, "quota", max_retries=3)
    with pytest.raises(BackendError, match="quota exhausted"):
        b.generate(HI, GenParams())
    assert hits[name] == 1


def test_switches_to_max_completion_tokens_when_the_model_asks(faulty: str) -> None:
    b, name = _backend(faulty, "newmodel", max_retries=0)
    assert b.generate(HI, GenParams(max_tokens=9))[0].text == "fine"
    assert b.generate(HI, GenParams(max_tokens=9))[0].text == "fine"  # remembered: no second 400
    assert hits[name] == 3
    assert seen_bodies[name][-1]["max_completion_tokens"] == 9 and "max_tokens" not in seen_bodies[name][-1]


def test_other_4xx_fails_at_once_and_stops_the_batch(faulty: str) -> None:
    b, name = _backend(faulty, "badparam", concurrency=2, max_retries=3)
    prompts: list[Chat] = [[{"role": "user", "content": "bad" if i == 0 else f"ok {i}"}] for i in range(40)]
    with pytest.raises(BackendError, match="rejected the request.*HTTP 400.*temperature out of range"):
        b.generate(prompts, GenParams())
    assert hits[name] < 40  # the rest of the batch was cancelled


def test_missing_usage_falls_back_to_an_estimate_and_says_so(faulty: str, caplog) -> None:
    b, _ = _backend(faulty, "nousage")
    with caplog.at_level(logging.WARNING):
        (c,) = b.generate([[{"role": "user", "content": "x" * 40}]], GenParams())
    assert c.prompt_tokens == 10 and c.completion_tokens == b.count_tokens("no usage here")
    assert "estimates" in caplog.text


@pytest.mark.parametrize("kind", sorted(BAD_USAGE))
def test_malformed_usage_is_estimated_noted_and_never_fails_the_call(faulty: str, caplog, kind: str) -> None:
    """Issue 12 item 8: a usage object that is a string or a list crashed the climb with a traceback."""
    b, _ = _backend(faulty, kind)
    with caplog.at_level(logging.WARNING):
        first, second = b.generate([[{"role": "user", "content": "x" * 40}], [{"role": "user", "content": "y"}]], GenParams())
    assert (first.prompt_tokens, first.completion_tokens, first.cached_tokens) == (10, b.count_tokens("odd usage"), 0)
    assert first.text == "odd usage" and "malformed usage" in first.trace["usage"]
    assert caplog.text.count("malformed usage object") == 1  # said once per backend, not per answer
    assert "estimates" in caplog.text


def test_total_deadline_cuts_off_a_server_that_trickles_its_answer(faulty: str) -> None:
    """Issue 12 item 7: httpx's timeout is per read, so a server sending a byte every 50 ms never
    timed out; timeout_s now bounds the whole request."""
    b, name = _backend(faulty, "drip", timeout_s=0.5, max_retries=1)
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"no complete answer within 0.5 s \(gave up after 2 attempts\)"):
        b.generate(HI, GenParams())
    assert time.perf_counter() - t0 < 2.0  # two attempts of 0.5 s and a short backoff, not 2 x 3 s
    assert hits[name] == 2
    # Cut at its deadline even while other answers keep arriving (no lull for the watch to wait for).
    b, name = _backend(faulty, "drip", timeout_s=0.3, max_retries=0, concurrency=2)
    prompts: list[Chat] = [[{"role": "user", "content": "slow"}]] + [[{"role": "user", "content": "fast"}]] * 400
    with pytest.raises(BackendError, match=r"no complete answer within 0.3 s"):
        b.generate(prompts, GenParams())
    assert hits[name] < 401


def _cli_interrupt_handler() -> Any:
    from rungwise.cli import _on_first_interrupt

    return _on_first_interrupt


@pytest.mark.parametrize("handler", ["python default", "rungwise cli"])
def test_ctrl_c_cancels_requests_in_flight_at_once(faulty: str, handler: str) -> None:
    """Issue 12 item 7: Ctrl-C against a hung endpoint waited up to timeout_s for the worker threads."""
    b, name = _backend(faulty, "hang", concurrency=4, timeout_s=5, max_retries=0)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler if handler == "python default"
                             else _cli_interrupt_handler())
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.perf_counter()
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            b.generate([[{"role": "user", "content": f"q{i}"}] for i in range(8)], GenParams())
        stopped = time.perf_counter() - t0
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert stopped < 2.0  # not the 5 s timeout
    deadline = time.monotonic() + 3
    while disconnects[name] < 4 and time.monotonic() < deadline:  # the server sees every connection close
        time.sleep(0.02)
    assert hits[name] == 4 and disconnects[name] == 4


def test_non_openai_answer_is_a_clear_error(faulty: str) -> None:
    b, _ = _backend(faulty, "html")
    with pytest.raises(BackendError, match="not an OpenAI chat completion") as err:
        b.generate(HI, GenParams())
    assert "/v1" in (err.value.hint or "")


def test_unreachable_endpoint_is_a_clear_error() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIBackend(f"http://user:pw@127.0.0.1:{port}/v1", "m", max_retries=1, backoff_base_s=0.01)
    with pytest.raises(BackendError, match=r"cannot reach the endpoint.*gave up after 2 attempts") as err:
        b.generate(HI, GenParams())
    assert "pw" not in str(err.value) and "pw" not in b.model_id  # credentials in the URL stay private
    assert "server is running" in (err.value.hint or "")


def test_retry_after_parsing() -> None:
    import httpx

    assert _retry_after_s(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert _retry_after_s(httpx.Headers({"retry-after": "3"})) == 3.0
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < (_retry_after_s(httpx.Headers({"retry-after": future})) or 0) <= 30
    assert _retry_after_s(httpx.Headers({"retry-after": "soon"})) is None
    assert _retry_after_s(httpx.Headers({})) is None


def test_backoff_grows_and_is_jittered() -> None:
    import random

    b = OpenAIBackend("http://127.0.0.1:9/v1", "m", backoff_base_s=1.0, backoff_max_s=8.0, rng=random.Random(0))
    delays = [[b._delay(a, None) for _ in range(50)] for a in range(5)]
    for a, ds in enumerate(delays):
        cap = min(8.0, 2.0**a)
        assert all(cap / 2 <= d <= cap for d in ds) and len(set(ds)) > 1
    assert 5.0 <= b._delay(0, 5.0) <= 6.0  # Retry-After wins over the exponential schedule


def test_count_tokens_is_an_estimate() -> None:
    b = OpenAIBackend("http://127.0.0.1:9/v1", "m")
    assert b.count_tokens("abcd" * 10) == 10 and b.count_tokens("") == 1
