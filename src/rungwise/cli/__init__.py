"""The command line. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import importlib
import sys

import typer

from rungwise.errors import RungwiseError

app = typer.Typer(
    name="rungwise",
    help="Measure the customization ladder (prompt, few-shot, RAG, fine-tune) on your own data, with a verdict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that define commands on `app` (import order = order in --help).
COMMAND_MODULES = [
    "rungwise.cli.core",
    "rungwise.cli.serve",
    "rungwise.cli.economics",
    "rungwise.cli.audit",
    "rungwise.cli.train",
    "rungwise.cli.compare",
]

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


def main() -> None:
    """Entry point: user errors print a clear message and exit 2, never a traceback."""
    import warnings

    # Deprecation notices from the ML stack are for library authors, not for a user's terminal.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|torch|accelerate)(\.|$)")
    try:
        app(standalone_mode=False)
    except RungwiseError as exc:
        from rich.console import Console
        from rich.text import Text

        Console(stderr=True).print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("\ninterrupted; resume with --resume", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
