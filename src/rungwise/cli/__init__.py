"""The command line. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from types import FrameType

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


def _ignore_ml_deprecations() -> None:
    import warnings

    # Deprecation notices from the ML stack are for library authors, not for a user's terminal.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|torch|accelerate)(\.|$)")


_interrupted = False


def _on_first_interrupt(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C raises KeyboardInterrupt, so the climb records the run as interrupted and
    closes its backends; the handler then steps aside, so a second Ctrl-C ends the process at once
    even if that cleanup hangs."""
    global _interrupted
    _interrupted = True
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: user errors print a clear message and exit 2, never a traceback.

    typer runs in standalone mode, so usage errors (a missing argument, an unknown option or
    command, a bad value) are printed and exit 2 by the click that typer itself uses: recent
    typers ship a private copy (``typer._click``), so catching ``click.ClickException`` here
    would miss them. A Ctrl-C exits 130 whatever click makes of it (old clicks print "Aborted!"
    and exit 1).
    """
    _ignore_ml_deprecations()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_first_interrupt) if in_main_thread else None
    try:
        app()
    except RungwiseError as exc:
        from rich.console import Console
        from rich.text import Text

        Console(stderr=True).print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # raised before or after typer's own handling (startup, teardown)
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        if _interrupted:
            sys.exit(130)
        raise
    finally:
        # main() called in-process (tests, embedding) leaves SIGINT as it found it, unless a Ctrl-C
        # came: then the next one must still end the process at once, whatever runs at exit.
        if previous is not None and not _interrupted:
            signal.signal(signal.SIGINT, previous)
