"""``rungwise serve``: a rung's prompt behind an OpenAI-compatible API (the production hand-off)."""

# No `from __future__ import annotations`: typer reads the option types at runtime.

import os
from pathlib import Path

import typer

from rungwise.errors import ConfigError


def _run_id(value: str | None) -> int | str | None:
    """Run ids are integers in the run store; anything else is passed on as a name."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""

    @app.command("serve")
    def serve(
        task_yaml: Path = typer.Argument(..., help="The task file (task.yaml) whose prompt and model to serve."),
        rung: str = typer.Option("zero_shot", "--rung", help="Which rung to serve (any rung the task can climb; "
                                 "see `rungwise rungs`)."),
        run: str | None = typer.Option(
            None, "--run", help="Serve the rung stored by this climb run (default: the latest climb of that rung, "
            "or, for a prompt, the one built from the task)."
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback by default."),
        port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0 = any free port)."),
        model: str | None = typer.Option(None, "--model", help="Override the task's model.id (e.g. a merged model dir)."),
        name: str | None = typer.Option(
            None, "--name", help="Model name clients send as `model` (default: <task name>-<rung>)."
        ),
        adapter: Path | None = typer.Option(None, "--adapter", help="LoRA adapter directory to serve on the base model."),
        auth_key_env: str | None = typer.Option(
            None,
            "--auth-key-env",
            help="Require clients to send the key held in this environment variable (Authorization: Bearer).",
        ),
        max_batch: int = typer.Option(8, "--max-batch", min=1, help="Most concurrent requests answered in one batch."),
        max_tokens_limit: int = typer.Option(4096, "--max-tokens-limit", min=1,
                                             help="Most max_tokens a request may ask for (more: HTTP 400)."),
        max_queue: int = typer.Option(1024, "--max-queue", min=1, help="Requests that may wait for the model; "
                                      "more get HTTP 429 with Retry-After."),
        max_body_mb: float = typer.Option(4.0, "--max-body-mb", min=0.001, help="Largest request body (more: HTTP 413)."),
    ) -> None:
        """Serve a rung (its prompt, demos, retrieval, constraint and model) at /v1/chat/completions, OpenAI-compatible."""
        from rungwise import serve as serving
        from rungwise.config.task import load_task

        api_key = None
        if auth_key_env:
            api_key = os.environ.get(auth_key_env)
            if not api_key:
                raise ConfigError(
                    f"--auth-key-env names {auth_key_env}, but that environment variable is not set",
                    hint=f"export {auth_key_env}=<a secret clients must send> and run again",
                )
        task = load_task(task_yaml)
        limits = serving.ServeLimits(max_tokens=max_tokens_limit, max_queue=max_queue,
                                     max_body_bytes=int(max_body_mb * 1024 * 1024))
        app_ = serving.app_for_task(task, rung, _run_id(run), model_id=model, name=name, adapter=adapter,
                                    api_key=api_key, max_batch=max_batch, limits=limits)
        try:
            serving.run(app_, host, port)
        finally:
            app_.state.close()
