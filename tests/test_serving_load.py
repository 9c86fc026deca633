"""The openai backend against serving clusters under load (issue 15 item 3): throughput that rises
with concurrency because ``rungwise serve`` batches concurrent requests, adaptive backoff that
converges against a rate-limiting server, and a full server queue answered with 429s the client
rides out. Every server here is real (uvicorn on loopback); only speed ratios are asserted."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rungwise.backends.base import ProgressFn
from rungwise.backends.openai_compat import OpenAIBackend, OpenAISpec
from rungwise.backends.scripted import ScriptedBackend
from rungwise.config.model import model_spec_from
from rungwise.prompting import PromptTemplate
from rungwise.serve import ServeLimits, background, create_app
from rungwise.types import Chat, Completion, GenParams

TEMPLATE = PromptTemplate("Route the ticket.")
NAME = "tickets"


class PerBatchBackend(ScriptedBackend):
    """Takes a fixed time per ``generate`` call whatever the batch size, as a GPU decoding a
    batch does, and records the batch sizes."""

    def __init__(self, seconds: float) -> None:
        super().__init__(lambda chat: "ok")
        self.seconds = seconds
        self.batches: list[int] = []

    def generate(self, prompts: Sequence[Chat], params: GenParams, progress: ProgressFn | None = None) -> list[Completion]:
        time.sleep(self.seconds)
        self.batches.append(len(prompts))
        return super().generate(prompts, params, progress)


def _prompts(n: int) -> list[Chat]:
    return [[{"role": "user", "content": f"ticket {i}"}] for i in range(n)]


def test_requests_per_second_rise_with_concurrency_through_the_micro_batcher() -> None:
    backend = PerBatchBackend(0.2)  # well above the HTTP overhead per request on a busy 2-core machine
    rates = {}
    # Client and server share this process (and its GIL), so a batch's 8 clients come back over
    # tens of ms: a 50 ms window lets them join one batch again.
    app = create_app(backend, TEMPLATE, NAME, max_batch=8, batch_window_s=0.05)
    with background(app) as url:
        for concurrency, n in ((1, 6), (4, 20), (8, 48)):
            client = OpenAIBackend(url + "/v1", NAME, concurrency=concurrency, max_retries=0)
            t0 = time.perf_counter()
            out = client.generate(_prompts(n), GenParams())
            rates[concurrency] = n / (time.perf_counter() - t0)
            assert [c.text for c in out] == ["ok"] * n and client.stats.answered == n
    assert max(backend.batches) == 8  # concurrent requests really shared a generate call
    assert rates[4] > 2.5 * rates[1], rates
    assert rates[8] > 1.4 * rates[4], rates


def _rate_limited_app(per_s: float, burst: int = 2) -> tuple[FastAPI, list[tuple[float, int]]]:
    """A server that allows ``per_s`` requests/s (GCRA, a burst of ``burst``) and answers 429
    without Retry-After beyond that, as a gateway in front of a cluster does."""
    app = FastAPI()
    log: list[tuple[float, int]] = []
    state = {"tat": 0.0}
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        await request.json()
        with lock:
            now = time.monotonic()
            tat = max(state["tat"], now)
            allowed = tat - now <= burst / per_s
            if allowed:
                state["tat"] = tat + 1 / per_s
            log.append((now, 200 if allowed else 429))
        if not allowed:
            return JSONResponse({"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}, 429)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

    return app, log


def test_adaptive_backoff_converges_on_a_rate_limited_server_without_failing() -> None:
    limit = 40.0
    app, log = _rate_limited_app(limit)
    with background(app) as url:
        client = OpenAIBackend(url + "/v1", "m", concurrency=8)  # default retries and backoff
        n = 100
        t0 = time.perf_counter()
        out = client.generate(_prompts(n), GenParams())
        achieved = n / (time.perf_counter() - t0)
    assert len(out) == n  # no request failed for good
    refused = sum(1 for _, status in log if status == 429)
    # The client learned the limit: 429s stay a small share of what it sent (a fixed backoff
    # against this server wastes over a third of its requests on 429s), and it runs near the limit.
    assert client.pacer.cuts >= 1 and client.stats.throttled == refused
    assert refused / len(log) < 0.2, (refused, len(log))
    assert 0.4 * limit < achieved < 1.2 * limit, achieved


def test_a_configured_rate_limit_is_never_exceeded() -> None:
    app, log = _rate_limited_app(1000.0)
    with background(app) as url:
        client = model_spec_from({"backend": "openai", "id": "m", "base_url": url + "/v1", "concurrency": 8,
                                  "rate_limit": "1200/min"}).build()
        assert isinstance(client, OpenAIBackend)
        client.generate(_prompts(21), GenParams())
    starts = sorted(t for t, _ in log)
    # 21 starts at 20/s span at least a second, however many are in flight at once.
    assert starts[-1] - starts[0] >= 0.95
    assert OpenAISpec(base_url="http://x/v1", rate_limit=5).rate_limit == 5.0


def test_a_full_server_queue_answers_429_and_the_client_rides_it_out() -> None:
    backend = PerBatchBackend(0.05)
    app = create_app(backend, TEMPLATE, NAME, max_batch=2, limits=ServeLimits(max_queue=2))
    with background(app) as url:
        busy = asyncio.run(_burst(url, 12))
        assert 429 in busy and 200 in busy
        client = OpenAIBackend(url + "/v1", NAME, concurrency=8, backoff_base_s=0.05)
        out = client.generate(_prompts(24), GenParams())
        health = httpx.get(url + "/health").json()
    assert len(out) == 24 and health["refused_busy"] >= busy.count(429)


async def _burst(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as http:
        rs = await asyncio.gather(*(http.post(url + "/v1/chat/completions",
                                              json={"messages": [{"role": "user", "content": str(i)}]})
                                    for i in range(n)))
    for r in rs:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
    return [r.status_code for r in rs]


@pytest.fixture
def throttling_server() -> Iterator[str]:
    """Answers 429 with Retry-After: 0.2 to every third request."""
    app = FastAPI()
    seen = [0]

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        await request.json()
        seen[0] += 1
        if seen[0] % 3 == 1:
            return JSONResponse({"error": {"message": "slow down"}}, 429, headers={"retry-after-ms": "200"})
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "billing"},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}

    with background(app) as url:
        yield url + "/v1"


def test_the_climb_progress_bar_shows_retry_waits(throttling_server: str, tmp_path: Path) -> None:
    import logging

    from helpers import write_task
    from rungwise.backends.base import WAITS_LOGGER
    from rungwise.cli.core import _RichReporter
    from rungwise.climb import climb
    from rungwise.config.task import load_task

    task = load_task(write_task(tmp_path, model={"backend": "openai", "id": "m", "base_url": throttling_server,
                                                "concurrency": 2}))
    waits = logging.getLogger(WAITS_LOGGER)
    before = (waits.level, waits.propagate, list(waits.handlers))
    rep = _RichReporter(True)
    try:
        climb(task, rungs=["zero_shot"], limit=6, reporter=rep)
        assert rep.progress is not None
        shown = rep.progress.tasks[0].fields["rate"]
    finally:
        rep.close()
    assert "ex/s" in shown and "retr" in shown and "s waited, last: HTTP 429" in shown, shown
    assert (waits.level, waits.propagate, list(waits.handlers)) == before  # logging restored
