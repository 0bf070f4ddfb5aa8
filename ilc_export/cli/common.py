"""Shared CLI plumbing: one-line errors, consoles, progress bars."""
from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
out = Console()

# Errors that users cause (bad files, wrong models): one line, exit code 1, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, OSError, RuntimeError)


def fail(msg: str, code: int = 1):
    console.print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn expected exceptions into a one-line error and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/] (no partial output files were left)")
            raise typer.Exit(130)
        except USER_ERRORS as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)

    return wrapper


def progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
        disable=disable or not sys.stderr.isatty(),
    )
