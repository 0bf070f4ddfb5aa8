"""`--engine local|ray` for ilc-run's batch commands: the options and the loop over run_batch.

Kept apart from run_cli so the commands only add options and one branch each.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer
from rich.markup import escape

from ..scale import ENGINES, Item, Job, Summary, make_engine, run_batch
from .common import console, fail, out, progress

EngineOpt = typer.Option("local", "--engine", help="local: this process; ray: actors on Ray "
                         "(a local Ray, or the cluster at --ray-address); pip install 'ilc-export[ray]'")
RayAddressOpt = typer.Option(None, "--ray-address", help="--engine ray: join this cluster (e.g. auto, "
                             "ray://head:10001); default: start a local Ray on this machine")
WorkersOpt = typer.Option(None, "--workers", min=1, help="--engine ray: actors to start, each loading the model "
                          "once (default: as many as the cluster's CPUs hold at --threads each, or one per GPU)")

#: failures listed again, by file, after the batch (they were printed as they happened too)
MAX_LISTED = 20


def open_engine(engine: str, address: str | None, workers: int | None, jobs: int = 1):
    """The engine for the CLI's options; a one-line error for a wrong combination."""
    if engine not in ENGINES:
        fail(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "local" and (address or workers):
        fail("--ray-address and --workers need --engine ray")
    from ..scale.ray_engine import EngineUnavailable

    try:
        return make_engine(engine, jobs=jobs, address=address, workers=workers)
    except EngineUnavailable as e:
        fail(escape(str(e)))  # the hint's "[ray]" is not markup


def print_summary(s: Summary) -> None:
    console.print(f"summary: {s.line()}", highlight=False)
    if s.failures:
        console.print("failed files:", highlight=False)
        for src, why in list(s.failures.items())[:MAX_LISTED]:
            reason = why[len(src) + 2:] if why.startswith(src + ": ") else why
            console.print(f"  {src}: {reason}", highlight=False)
        if len(s.failures) > MAX_LISTED:
            console.print(f"  ... and {len(s.failures) - MAX_LISTED} more", highlight=False)


def engine_batch(name: str, engine, job: Job, todo: list[tuple[Path, Path]],
                 describe: Callable[[Path, Path, object], str]) -> Summary:
    """Like the local batch loop, on any engine: one progress bar, one line per file as it
    finishes, a closing summary (images/s, MB/s, failures by file); exit 1 if any failed."""
    items = [Item(src, dst) for src, dst in todo]
    try:
        with progress() as prog:
            task = prog.add_task(f"{name} ({engine.name})", total=len(items), info="")

            def on_result(r, done, total):
                if r.error:
                    console.print(f"[red]error:[/] {r.error}", highlight=False)
                else:
                    out.print(describe(r.item.src, r.item.dst, r.value), highlight=False)
                prog.update(task, advance=1, info=r.item.src.name)

            s = run_batch(engine, job, items, on_result).summary
    finally:
        engine.close()
    print_summary(s)
    if s.failures:
        fail(f"{len(s.failures)} of {len(items)} files failed")
    return s
