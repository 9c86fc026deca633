"""`rungwise serve`: a real server on loopback, driven by the official `openai` client and httpx."""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import typer
from typer.testing import CliRunner

from helpers import write_task
from rungwise import serve
from rungwise.backends.openai_compat import OpenAIBackend
from rungwise.backends.scripted import ScriptedBackend
from rungwise.config.model import model_spec_from
from rungwise.config.task import load_task
from rungwise.errors import BackendError, ConfigError
from rungwise.prompting import PromptTemplate, system_prompt
from rungwise.serve import MicroBatcher, background, create_app
from rungwise.types import Chat, GenParams

NAME = "tickets-few_shot"
TEMPLATE = PromptTemplate(
    "Route the ticket. Answer with one label.",
    (("I was charged twice", "billing"), ("The app crashes on start", "bug")),
)
USER = [{"role": "user", "content": "my card was declined"}]


class Recording(ScriptedBackend):
    """Scripted backend that records each generate call (batch size, params) and fails if two
    threads ever enter it at once (the local backend is not thread-safe)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.batches: list[int] = []
        self.params: list[GenParams] = []
        self._inside = threading.Lock()

    def generate(self, prompts, params, progress=None):  # type: ignore[no-untyped-def]
        if not self._inside.acquire(blocking=False):
            raise AssertionError("backend entered concurrently")
        try:
            self.batches.append(len(prompts))
            self.params.append(params)
            if any("boom" in p[-1]["content"] for p in prompts):
                raise BackendError("the model cannot answer 'boom'")
            return super().generate(prompts, params, progress)
        finally:
            self._inside.release()


@pytest.fixture
def server() -> Iterator[tuple[str, Recording]]:
    backend = Recording({"my card was declined": "billing", "default": "bug"})
    app = create_app(backend, TEMPLATE, NAME, default_params=GenParams(max_tokens=12, stop=("\n\n",), seed=3))
    with background(app) as url:
        yield url, backend


@pytest.fixture
def client(server) -> openai.OpenAI:
    url, _ = server
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)


def test_official_client_gets_the_answer_with_the_rung_prompt_applied(server, client) -> None:
    _, backend = server
    r = client.chat.completions.create(model=NAME, messages=USER)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "billing"
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.role == "assistant"
    assert r.model == NAME and r.id.startswith("chatcmpl-") and r.created > 0 and r.object == "chat.completion"
    # The backend saw system prompt + both demos + the user's message, in that order.
    assert backend.calls[-1] == TEMPLATE.render(USER)
    assert [m["role"] for m in backend.calls[-1]] == ["system", "user", "assistant", "user", "assistant", "user"]
    expected_prompt = sum(len(m["content"].split()) + 1 for m in TEMPLATE.render(USER))
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (expected_prompt, 1, expected_prompt + 1)
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.system_fingerprint and r.system_fingerprint.startswith("rw_")


def test_streaming_returns_one_chunk_then_done(server, client) -> None:
    chunks = list(client.chat.completions.create(model=NAME, messages=USER, stream=True,  # type: ignore[arg-type]
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "billing"
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 1
    url, _ = server
    raw = httpx.post(url + "/v1/chat/completions", json={"model": NAME, "messages": USER, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.strip().endswith("data: [DONE]")


def test_models_list_and_retrieve(client) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).owned_by == "rungwise"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_wrong_model_name_is_an_openai_404(client) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    assert err.value.code == "model_not_found" and NAME in str(err.value)


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"messages": USER, "temperature": 5}, "temperature", "less than or equal to 2"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "'system'"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages", "text only"),
        ({"messages": USER, "n": 2}, "n", "less than or equal to 1"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ],
)
def test_bad_requests_get_openai_style_400(server, body: dict[str, Any], param: str, fragment: str) -> None:
    url, backend = server
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and fragment in err["message"]
    assert backend.calls == []


def test_invalid_json_and_unknown_route_are_openai_style_errors(server, client) -> None:
    url, _ = server
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=NAME, messages=USER, temperature=9)  # type: ignore[arg-type]


def test_text_content_parts_and_developer_role_are_understood(server, client) -> None:
    _, backend = server
    client.chat.completions.create(
        model=NAME,
        messages=[{"role": "developer", "content": "Answer in French."},  # type: ignore[list-item]
                  {"role": "user", "content": [{"type": "text", "text": "my card "}, {"type": "text", "text": "was declined"}]}],
    )
    sent = backend.calls[-1]
    # A client's own system message replaces the rung's (as for chat-format data); demos stay.
    assert sent[0] == {"role": "system", "content": "Answer in French."}
    assert sent[1:5] == TEMPLATE.prefix()[1:] and sent[-1] == {"role": "user", "content": "my card was declined"}


def test_task_params_are_the_default_and_requests_override_them(server, client) -> None:
    _, backend = server
    client.chat.completions.create(model=NAME, messages=USER)  # type: ignore[arg-type]
    assert backend.params[-1] == GenParams(max_tokens=12, temperature=0.0, top_p=1.0, stop=("\n\n",), seed=3)
    client.chat.completions.create(model=NAME, messages=USER, max_completion_tokens=5, temperature=0.5,  # type: ignore[arg-type]
                                   top_p=0.8, stop="END", seed=11)
    assert backend.params[-1] == GenParams(max_tokens=5, temperature=0.5, top_p=0.8, stop=("END",), seed=11)


def test_concurrent_requests_are_micro_batched_and_never_enter_the_backend_twice() -> None:
    backend = Recording(lambda chat: chat[-1]["content"].upper(), delay_s=0.05)
    app = create_app(backend, TEMPLATE, NAME, max_batch=8)
    with background(app) as url:
        b = OpenAIBackend(url + "/v1", NAME, concurrency=12, max_retries=0)
        prompts: list[Chat] = [[{"role": "user", "content": f"ticket {i}"}] for i in range(24)]
        out = b.generate(prompts, GenParams())
        health = httpx.get(url + "/health").json()
        b.close()
    assert [c.text for c in out] == [f"TICKET {i}" for i in range(24)]
    assert sum(backend.batches) == 24
    assert len(backend.batches) < 24 and max(backend.batches) > 1  # grouped, at most max_batch at once
    assert max(backend.batches) <= 8
    assert health["requests"] == 24 and health["largest_batch"] == max(backend.batches)


def test_backend_error_is_a_500_for_that_request_only(server) -> None:
    url, _ = server

    def ask(text: str) -> httpx.Response:
        return httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": text}]})

    with ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(ask, ["fine 1", "boom", "fine 2", "fine 3"]))
    assert [r.status_code for r in rs] == [200, 500, 200, 200]
    assert rs[1].json()["error"]["type"] == "server_error" and "cannot answer 'boom'" in rs[1].json()["error"]["message"]


def test_micro_batcher_groups_by_params_and_isolates_failures() -> None:
    backend = Recording(lambda chat: "ok")
    mb = MicroBatcher(backend, max_batch=8, window_s=0.2)
    p1, p2 = GenParams(max_tokens=4), GenParams(max_tokens=9)
    futs = [mb.submit([{"role": "user", "content": t}], p) for t, p in
            [("a", p1), ("b", p2), ("boom", p1), ("c", p1)]]
    assert [f.exception(5) is None for f in futs] == [True, True, False, True]
    assert isinstance(futs[2].exception(), BackendError)
    # One window: a batch of 3 for p1 (failed, then retried one by one) and one of 1 for p2.
    assert backend.batches[:2] == [3, 1] and sorted(backend.batches[2:]) == [1, 1, 1]
    mb.close()
    with pytest.raises(BackendError, match="shutting down"):
        mb.submit([{"role": "user", "content": "late"}], p1)


def test_api_key_protects_v1_but_not_health() -> None:
    app = create_app(ScriptedBackend(["ok"]), TEMPLATE, NAME, api_key="s3cret-key")
    with background(app) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0)
        assert good.chat.completions.create(model=NAME, messages=USER).choices[0].message.content == "ok"  # type: ignore[arg-type]
        assert httpx.get(url + "/health").json()["status"] == "ok"
        assert httpx.post(url + "/v1/chat/completions", json={"messages": USER}).status_code == 401


# -- request limits (issue 12 item 10) ---------------------------------------------------------


def _post(url: str, **kw: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=30, **kw)


def _nested(depth: int) -> str:
    return '{"messages": [{"role": "user", "content": "hi"}], "response_format": ' + "[" * depth + "]" * depth + "}"


def test_an_oversized_body_is_a_413_without_being_read_whole(server) -> None:
    url, backend = server
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (5 * 1024 * 1024) + b'"}]}'
    r = _post(url, content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts while it reads
        for i in range(0, len(huge), 1 << 16):
            yield huge[i : i + (1 << 16)]

    r = _post(url, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than this server takes" in r.json()["error"]["message"]
    assert backend.calls == []


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        ({"messages": USER, "max_tokens": 1_000_000_000}, 400, "max_tokens", "max_tokens is too large: 1000000000"),
        ({"messages": USER, "max_completion_tokens": 4097}, 400, "max_completion_tokens", "at most 4096"),
        ({"messages": USER * 257}, 400, "messages", "at most 256"),
    ],
)
def test_max_tokens_and_messages_are_capped(server, body: dict[str, Any], status: int, param: str, fragment: str) -> None:
    url, backend = server
    r = _post(url, json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and fragment in err["message"]
    assert backend.calls == []
    assert _post(url, json={"messages": USER * 256, "max_tokens": 4096}).status_code == 200  # the limits themselves pass


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_json_is_a_400_with_no_traceback(server, caplog, depth: int) -> None:
    url, backend = server
    with caplog.at_level(logging.ERROR):
        r = _post(url, content=_nested(depth).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_deep"
    assert "Traceback" not in caplog.text and not caplog.records and backend.calls == []


def test_limits_are_configurable_and_checked() -> None:
    app = create_app(ScriptedBackend(["ok"]), TEMPLATE, NAME, limits=serve.ServeLimits(max_tokens=8, max_body_bytes=2048))
    with background(app) as url:
        assert _post(url, json={"messages": USER, "max_tokens": 8}).status_code == 200
        assert _post(url, json={"messages": USER, "max_tokens": 9}).status_code == 400
        assert _post(url, json={"messages": [{"role": "user", "content": "x" * 3000}]}).status_code == 413
    with pytest.raises(ConfigError, match="max_queue=0"):
        serve.ServeLimits(max_queue=0)


def test_an_unexpected_server_error_is_an_openai_style_500() -> None:
    app = create_app(ScriptedBackend(["ok"]), TEMPLATE, NAME)

    @app.get("/v1/explode")
    async def explode() -> None:
        raise RuntimeError("a bug")

    with background(app) as url:
        r = httpx.get(url + "/v1/explode")
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


def test_health_reports_what_is_served(server) -> None:
    url, _ = server
    h = httpx.get(url + "/health").json()
    assert h["status"] == "ok" and h["model"] == NAME and h["backend"] == "scripted" and h["demos"] == 2
    assert h["adapter"] is None


def test_adapter_path_is_reported_and_changes_the_fingerprint() -> None:
    plain = create_app(ScriptedBackend(["ok"]), TEMPLATE, NAME)
    with_adapter = create_app(ScriptedBackend(["ok"]), TEMPLATE, NAME, adapter="runs/7/adapter")
    with background(with_adapter) as url:
        assert httpx.get(url + "/v1/models").json()["data"][0]["adapter"] == "runs/7/adapter"
        fp_adapter = httpx.get(url + "/health").json()["system_fingerprint"]
    with background(plain) as url:
        assert httpx.get(url + "/health").json()["system_fingerprint"] != fp_adapter
    with pytest.raises(BackendError, match="not a LoRA adapter directory"):  # a real adapter dir is required
        serve.load_backend(model_spec_from(dict(backend="scripted")), adapter="runs/7/adapter")


def test_loopback_detection_and_exposure_warning() -> None:
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.5")
    assert not serve.is_loopback("my-host.example.com")
    assert serve.exposure_warning("127.0.0.1", 8000, requires_key=False) is None
    open_warning = serve.exposure_warning("0.0.0.0", 8000, requires_key=False)
    assert open_warning and "NO authentication" in open_warning and "0.0.0.0:8000" in open_warning
    keyed = serve.exposure_warning("0.0.0.0", 8000, requires_key=True)
    assert keyed and "NO authentication" not in keyed and "TLS" in keyed


def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}") as err:
            with background(create_app(ScriptedBackend(), TEMPLATE, NAME), port=port):
                pass
        assert "--port" in (err.value.hint or "")


# -- from a task / the CLI -------------------------------------------------------------------


def _served_prompt(task: Any, rung: str, run_id: int | None = None) -> PromptTemplate:
    ws, prepared = serve.prepared_for(task, rung, run_id)
    ws.close()
    return prepared.template


def test_prepared_for_builds_or_loads_the_rung_prompt(tmp_path: Path) -> None:
    from rungwise.backends.scripted import ScriptedBackend
    from rungwise.climb import climb

    task = load_task(write_task(tmp_path))
    assert _served_prompt(task, "zero_shot") == PromptTemplate(system_prompt(task.instructions, task.labels))
    built = _served_prompt(task, "few_shot")
    assert isinstance(built, PromptTemplate) and len(built.demos) == task.rungs.section("few_shot").k
    # a measured run's stored prompt is what gets served
    run = climb(task, all_rungs=True, backend=ScriptedBackend({"default": "billing"}))
    stored = _served_prompt(task, "few_shot", run.run_id)
    assert stored == built and [list(d) for d in stored.demos] == run.rungs[1].artifact["prompt"]["demos"]
    with pytest.raises(ConfigError, match="rag"):
        _served_prompt(task, "rag")
    only_zero = climb(task, rungs=["zero_shot"], backend=ScriptedBackend({"default": "billing"}))
    with pytest.raises(ConfigError, match="has no rung 'few_shot'"):
        _served_prompt(task, "few_shot", only_zero.run_id)


def test_serving_a_rung_that_trains_never_trains(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path))
    with pytest.raises(ConfigError, match="has not been climbed on this task yet") as err:
        serve.prepared_for(task, "finetune")
    assert "rungwise climb" in (err.value.hint or "")


def test_nearest_neighbour_demos_are_picked_per_conversation(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path, rungs={"order": ["few_shot"], "few_shot": {"k": 2, "strategy": "nearest"}}))
    ws, prepared = serve.prepared_for(task, "few_shot")
    ws.close()
    assert prepared.per_example is not None
    plan = prepared.plan(serve._example_of([{"role": "user", "content": "my invoice charge is wrong"}]))
    assert len(plan.template.demos) == 2 and all("invoice" in d[0] for d in plan.template.demos)


def _cli() -> typer.Typer:
    from rungwise.cli import serve as serve_cli

    t = typer.Typer()

    @t.callback()
    def _root() -> None:  # makes `serve` a subcommand, as in the real CLI
        pass

    serve_cli.register(t)
    return t


def test_cli_serves_the_task_over_http(tmp_path: Path, monkeypatch) -> None:
    """`rungwise serve task.yaml --port 0` end to end, with uvicorn's blocking run swapped for a
    background server so the test can call it and return."""
    task_path = write_task(tmp_path)
    answers: list[str] = []

    def run_and_call(app: Any, host: str, port: int, **_: Any) -> None:
        assert (host, port) == ("127.0.0.1", 0)
        with background(app, host, port) as url:
            b = OpenAIBackend(url + "/v1", "t-zero_shot", max_retries=0)
            answers.append(b.generate([[{"role": "user", "content": "refund please"}]], GenParams())[0].text)
            answers.append(app.state.backend.calls[-1][0]["content"])

    monkeypatch.setattr(serve, "run", run_and_call)
    r = CliRunner().invoke(_cli(), ["serve", str(task_path), "--port", "0"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert answers == ["billing", "Route the ticket.\n\nAnswer with exactly one label from this list and nothing "
                                  "else: billing, bug, account"]


def test_cli_errors_are_clear(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RW_SERVE_KEY", raising=False)
    task_path = str(write_task(tmp_path))
    cases = [
        (["serve", task_path, "--auth-key-env", "RW_SERVE_KEY"], ConfigError, "RW_SERVE_KEY"),
        (["serve", task_path, "--adapter", str(tmp_path)], BackendError, "not a LoRA adapter directory"),
        (["serve", str(tmp_path / "missing.yaml")], ConfigError, "no such task file"),
    ]
    for argv, exc_type, fragment in cases:
        r = CliRunner().invoke(_cli(), argv)
        assert isinstance(r.exception, exc_type) and fragment in str(r.exception), (argv, r.exception)


def test_real_cli_entry_point_exits_2_without_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    from rungwise.cli import main

    monkeypatch.setattr(sys, "argv", ["rungwise", "serve", str(tmp_path / "nope.yaml")])
    with pytest.raises(SystemExit) as ex:
        main()
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "no such task file" in err and "Traceback" not in err


def test_run_warns_loudly_on_a_public_host(monkeypatch, capsys, caplog) -> None:
    """`run` on 0.0.0.0 prints the warning before serving (the server itself is not started)."""
    started: list[Any] = []

    class FakeServer:
        def run(self, sockets: list[socket.socket]) -> None:
            started.append(sockets[0].getsockname())

    monkeypatch.setattr(serve, "_server", lambda *a, **k: FakeServer())
    with caplog.at_level(logging.WARNING):
        serve.run(create_app(ScriptedBackend(), TEMPLATE, NAME), host="0.0.0.0", port=0)
    err = capsys.readouterr().err
    assert "NO authentication" in err and "NO authentication" in caplog.text
    assert f"'{NAME}'" in err and "curl http://0.0.0.0:" in err
    assert started and started[0][0] == "0.0.0.0"


@pytest.mark.model
def test_real_tiny_model_behind_the_server(request: pytest.FixtureRequest) -> None:
    local = pytest.importorskip("rungwise.backends.local", reason="the local backend (rungwise.backends.local) is not built yet")
    tiny_llama_dir: Path = request.getfixturevalue("tiny_llama_dir")  # only built when the test can run

    backend = local.LocalBackend.from_spec(model_spec_from(dict(backend="local", id=str(tiny_llama_dir), device="cpu",
                                                     dtype="float32", batch_size=4)))
    app = create_app(backend, TEMPLATE, NAME, default_params=GenParams(max_tokens=4))
    try:
        with background(app) as url:
            c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
            with ThreadPoolExecutor(3) as pool:
                rs = list(pool.map(lambda t: c.chat.completions.create(
                    model=NAME, messages=[{"role": "user", "content": t}]), ["refund", "crash", "login"]))  # type: ignore[arg-type]
    finally:
        backend.close()
    for r in rs:
        assert isinstance(r.choices[0].message.content, str)
        assert r.usage is not None and 1 <= r.usage.completion_tokens <= 4
        # the prompt includes the system prompt and demos, so it is much longer than the input
        assert r.usage.prompt_tokens > 20
