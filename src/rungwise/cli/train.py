"""Fine-tuning commands: ``rungwise train`` (one process; ``accelerate launch -m rungwise.train``
for several) and ``rungwise export``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from rungwise.errors import DataError

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        task_path: Path = typer.Argument(..., help="task.yaml (or its directory)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output directory: adapter/, checkpoints, result.json."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted run in --out."),
        max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Override rungs.finetune.max_steps."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        plan: bool = typer.Option(False, "--plan", help="Print the training plan (examples, tokens, steps, the wall "
                                  "time measured by a short warm-up) and stop; exit 2 when it exceeds the budget."),
    ) -> None:
        """Fine-tune the task's model on its train split (LoRA by default; see rungs.finetune).

        Ctrl-C writes a checkpoint; run the same command again to resume. For several processes
        or GPUs: accelerate launch --multi_gpu --num_processes N -m rungwise.train TASK --out DIR
        """
        from rungwise.train.__main__ import run

        run(str(task_path), out, resume=resume, progress=not quiet, max_steps=max_steps, plan_only=plan)

    @app.command()
    def export(
        run: str = typer.Argument(..., help="Run id, fine-tune output directory, task.yaml, or a chat JSONL file."),
        fmt: str = typer.Option("openai", "--format", "-f", help="openai | alpaca | sharegpt | merged"),
        out: Path | None = typer.Option(None, "--out", "-o", help="Output file (a directory for merged)."),
        check: bool = typer.Option(False, "--check", help="Only validate RUN (a chat JSONL file) for hosted fine-tuning."),
        force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
        price_model: str = typer.Option("openai/gpt-4o-mini", "--price-model", help="Catalog model for the cost estimate."),
        token_limit: int = typer.Option(65_536, "--token-limit", min=1, help="Token limit per training example."),
    ) -> None:
        """Export training data for hosted fine-tuning (openai), Axolotl / LLaMA-Factory (alpaca,
        sharegpt), or the merged model weights (safetensors)."""
        from rungwise.train.export import FORMATS, export, validate_openai_jsonl

        if check:
            rep = validate_openai_jsonl(run, token_limit=token_limit, price_model=price_model)
        else:
            if fmt not in FORMATS:
                raise DataError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}", hint="e.g. --format openai")
            if out is None:
                raise DataError("--out is required", hint=f"e.g. --out train.{'jsonl' if fmt != 'merged' else 'merged'}")
            rep = export(run, fmt, out, force=force, token_limit=token_limit, price_model=price_model)
        console.print(rep.summary(), highlight=False, markup=False)
        if not rep.ok:
            raise DataError(
                f"{len(rep.errors)} problem(s) would make hosted fine-tuning reject {rep.out}",
                hint="fix the lines named above (or drop them) and run `rungwise export FILE --check` again",
            )
