"""`--engine local|ray` for ilc-run's batch commands: the options, the Job, and the display
of ``run_batch``'s results (the batch itself runs in ``ilc_export.scale``, for both engines)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer
from rich.markup import escape

from ..scale import ENGINES, Item, Job, Summary, make_engine, run_batch
from .common import console, fail, out, progress, warn

EngineOpt = typer.Option("local", "--engine", help="local: this process; ray: actors on Ray "
                         "(a local Ray, or the cluster at --ray-address); pip install 'ilc-export[ray]'")
RayAddressOpt = typer.Option(None, "--ray-address", help="--engine ray: join this cluster (e.g. auto, "
                             "ray://head:10001); default: start a local Ray on this machine")
WorkersOpt = typer.Option(None, "--workers", help="--engine ray: actors to start, each loading the model "
                          "once (default: as many as the cluster's CPUs hold at --threads each, or one per GPU)")

#: failures listed again, by file, after the batch (they were printed as they happened too)
MAX_LISTED = 20


def open_engine(engine: str, address: str | None, workers: int | None, jobs: int = 1):
    """The engine for the CLI's options; a one-line error for a wrong combination."""
    from ..pipeline.models import UsageError
    from ..scale.ray_engine import EngineUnavailable

    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "local" and (address or workers):
        raise UsageError("--ray-address and --workers need --engine ray")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if engine == "ray" and jobs > 1:
        warn("-j is for the local engine; on Ray, --workers sets how many files are coded at once")
    try:
        return make_engine(engine, jobs=jobs, address=address, workers=workers)
    except EngineUnavailable as e:
        fail(str(e))


def batch_job(kind: str, model, quality, backend, precision, options: dict, force: bool, max_pixels, **code) -> Job:
    """The Job for a batch: the model and backend are resolved here, so a wrong model is one
    error before any file and every worker (a Ray actor too) runs what this machine would;
    Pillow's limit travels along (actors are other processes)."""
    from ..pipeline.models import normalise_backend, resolve, search_roots

    search = None
    if model is None and kind == "decompress":  # found by the id in each file, on the workers
        be, src = normalise_backend(backend), None
        search = [str(p) for p in search_roots()]
    else:
        r = resolve(model, quality, backend, precision)
        be, src = r.backend, str(r.source)
    return Job(kind, backend=be, model=src, precision=precision, options=options, overwrite=force,
               max_pixels=max_pixels, search=search, **code)


def print_summary(s: Summary) -> None:
    console.print(f"summary: {s.line()}", highlight=False, markup=False)
    if s.failures:
        console.print("failed files:", highlight=False)
        for src, why in list(s.failures.items())[:MAX_LISTED]:
            reason = why[len(src) + 2:] if why.startswith(src + ": ") else why
            console.print(f"  {src}: {reason}", highlight=False, markup=False)
        if len(s.failures) > MAX_LISTED:
            console.print(f"  ... and {len(s.failures) - MAX_LISTED} more", highlight=False)


def engine_batch(name: str, engine, job: Job, todo: list[tuple[Path, Path]],
                 describe: Callable[[Path, Path, object], str]) -> Summary:
    """A batch on any engine: one progress bar, one line per file (in input order on an
    ordered engine, else as it finishes), a closing summary on a remote engine (images/s,
    MB/s, failures by file); exit 1 if any failed."""
    items = [Item(src, dst) for src, dst in todo]
    try:
        with progress() as prog:
            task = prog.add_task(f"{name} ({engine.name})" if engine.remote else name, total=len(items), info="")

            def on_result(r, done, total):
                if r.error:
                    console.print(f"[red]error:[/] {escape(r.error)}", highlight=False)
                else:
                    out.print(describe(r.item.src, r.item.dst, r.value), highlight=False, markup=False)
                prog.update(task, advance=1, info=r.item.src.name)

            s = run_batch(engine, job, items, on_result, ordered=engine.ordered).summary
    finally:
        engine.close()
    if engine.remote:
        print_summary(s)
    if s.failures:
        if len(items) == 1 and not engine.remote:  # its error line said it all
            raise typer.Exit(1)
        fail(f"{len(s.failures)} of {len(items)} files failed")
    return s
