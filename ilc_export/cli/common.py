"""Shared CLI plumbing: one-line errors, consoles, progress bars, --version."""
from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..contract.errors import IlcError

# soft_wrap: a line is never broken at the console width (piped output is one line per file)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

def user_error_types() -> tuple[type[BaseException], ...]:
    """The errors each command turns into one line and exit code 1: ``IlcError`` (the root of
    every error a user can cause) and file system errors (missing / unreadable / unwritable
    paths). Anything else is a bug and keeps its traceback."""
    return (IlcError, OSError)


def fail(msg: str, code: int = 1):
    console.print(f"[bold red]error:[/] {_escape(msg)}", highlight=False)
    raise typer.Exit(code)


def note(msg: str) -> None:
    console.print(f"[yellow]note:[/] {_escape(msg)}", highlight=False)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/] {_escape(msg)}", highlight=False)


def one_line(e: BaseException) -> str:
    s = str(e)
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        s = f"{e.filename}: {e.strerror}"
    return " ".join(s.split()) if s else type(e).__name__


def user_errors(fn):
    """Turn expected exceptions into a one-line error and a non-zero exit: the one place the
    CLIs catch errors."""

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/] (no partial output files were left)")
            raise typer.Exit(130)
        except Exception as e:
            if isinstance(e, user_error_types()):
                fail(one_line(e))
            raise

    return wrapper


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
        disable=disable or not sys.stderr.isatty(),
    )


DeviceOpt = typer.Option(None, "--device", help="torch backend: cpu | cuda | cuda:N (default cpu); "
                         "with --precision fp16 on cuda the transforms run in fp16")
ProviderOpt = typer.Option(None, "--provider", "--ep", help="onnxruntime execution providers in preference order, "
                           "comma list: tensorrt[:N], cuda[:N], cpu (default: the best this onnxruntime has)")


def option_groups(**groups):
    """Let a command take groups of options as one dataclass each: ``@option_groups(run=RunOptions)``
    replaces the command's ``run`` parameter, where it stands, by the dataclass's fields (each
    a Typer option) and calls the command with the dataclass built from them. Commands that
    share options then share their definitions, help texts and checks."""
    import dataclasses
    import inspect
    import typing

    def deco(fn):
        hints = typing.get_type_hints(fn)
        params = []
        for p in inspect.signature(fn).parameters.values():
            cls = groups.get(p.name)
            if cls is None:
                params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
                continue
            hints.pop(p.name, None)
            field_hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                params.append(inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                                annotation=field_hints[f.name]))
                hints[f.name] = field_hints[f.name]

        @functools.wraps(fn)
        def wrapper(**kw):
            for name, cls in groups.items():
                kw[name] = cls(**{f.name: kw.pop(f.name) for f in dataclasses.fields(cls)})
            return fn(**kw)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = hints
        del wrapper.__wrapped__  # Typer must read the new signature, not the command's
        return wrapper

    return deco


def device_options(device: str | None = None, provider: str | None = None) -> dict:
    """--device / --provider as backend loader options (each loader refuses the other's)."""
    opts = {}
    if device is not None:
        opts["device"] = device
    if provider is not None:
        opts["providers"] = provider
    return opts


def need_torch(what: str) -> None:
    """One line naming what to install when a command needs PyTorch (and onnx) and it is missing."""
    from ..pipeline.models import UsageError, torch_available

    if not torch_available():
        raise UsageError(f"{what} needs PyTorch and onnx, which are not installed: pip install 'torch==2.13.0' "
                         "-e '.[torch]' (on a deployment box, export on another machine and copy the folder)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ilc-export")
    except PackageNotFoundError:
        return "unknown"


def version_option(prog: str):
    """A --version option for an app callback."""

    def show(value: bool):
        if value:
            typer.echo(f"{prog} {_version()}")
            raise typer.Exit(0)

    return typer.Option(False, "--version", callback=show, is_eager=True, help="print the version and exit")
