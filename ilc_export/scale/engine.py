"""Batch engines: run one job over many files, in this process ("local") or on Ray ("ray").

A batch is a :class:`Job` (what to do to every file: compress, decompress or evaluate, with
which model, backend and options) and a list of :class:`Item` (one input and its output).
The job is small and picklable, so a remote worker receives it once and opens the model
once; the item is the unit of scheduling, retry and reporting. Both engines run the same
:class:`Worker`, which is what makes their outputs byte-identical.

``run_batch(engine, job, items, on_result)`` is the one call a front end makes: it returns
every item's result in input order and a :class:`Summary` (images/s, MB/s, failures by file).
"""
from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

KINDS = ("compress", "decompress", "eval")
ENGINES = ("local", "ray")


@dataclass
class Job:
    """What every item of a batch gets done to. Picklable: shipped once to each worker.

    ``model`` (a path or shipped name; ``pipeline.models.resolve``) None means: compress with
    the shipped ``quality``; decompress with the model whose id is in each file (looked up on
    the worker, in ``search`` first). Eval items name their own model, one of ``models``.
    ``backend`` None chooses as ``resolve`` does; front ends resolve it first, so that every
    worker runs the backend the caller saw.
    """

    kind: str
    backend: str | None = "torch"
    model: str | None = None
    quality: int | None = None
    precision: str | None = None
    options: dict = field(default_factory=dict)  # backend options, e.g. {"threads": 1}
    z_seed: int | None = None
    z_temperature: float | None = None
    tile: int | None = None
    overwrite: bool = True  # False: an output that exists (or appears meanwhile) is that file's error
    max_pixels: int | None = None  # Pillow's image-size limit in the worker (None: as it is; 0: none)
    search: list[str] | None = None  # decompress: extra folders to find models in
    models: list[str] | None = None  # eval: the models items name, opened by warm()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown job kind {self.kind!r}; one of {', '.join(KINDS)}")


@dataclass
class Item:
    """One input file; ``dst`` is its output (None for eval); ``model`` the eval point's model."""

    src: Path
    dst: Path | None = None
    model: Path | None = None


@dataclass
class ItemResult:
    """The outcome of one item. ``value``: the pipeline's FileResult (compress, decompress)
    or the per-image record (eval); ``error`` a one-line reason when the file failed."""

    index: int
    item: Item
    value: Any = None
    error: str | None = None
    in_bytes: int = 0
    out_bytes: int = 0
    seconds: float = 0.0
    attempts: int = 1
    worker: str = "local"


@dataclass
class Summary:
    engine: str
    workers: int
    images: int
    seconds: float  # wall time of the whole batch, worker start-up included
    startup_seconds: float  # until the first worker had its model loaded
    in_bytes: int
    out_bytes: int
    failures: dict[str, str]  # input path -> reason
    retried: int  # items that needed more than one attempt (a worker died under them)

    @property
    def ok(self) -> int:
        return self.images - len(self.failures)

    @property
    def images_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def images_per_s_after_startup(self) -> float:
        """Throughput once the workers are up (start-up is a fixed cost, large on Ray)."""
        t = self.seconds - self.startup_seconds
        return self.ok / t if t > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        """Input megabytes (10^6) per second over the whole batch."""
        return self.in_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        s = (f"{self.ok}/{self.images} images in {self.seconds:.1f} s "
             f"({self.startup_seconds:.1f} s start-up): {self.images_per_s:.2f} images/s "
             f"({self.images_per_s_after_startup:.2f} after start-up), "
             f"{self.mb_per_s:.2f} MB/s in, {self.out_bytes / 1e6:.2f} MB out; "
             f"engine {self.engine}, {self.workers} worker{'s' if self.workers != 1 else ''}")
        if self.retried:
            s += f"; {self.retried} retried after a worker died"
        return s + (f"; {len(self.failures)} failed" if self.failures else "")


@dataclass
class BatchResult:
    results: list[ItemResult]  # input order
    summary: Summary


class Engine(Protocol):
    """Runs a job over items and yields each ItemResult as it completes (any order).

    ``workers`` is how many workers the last run used; ``startup_seconds`` how long the
    first of them took to be ready (model loaded). ``ordered``: front ends report results
    in input order (a batch here reads like a loop over the files); ``remote``: workers are
    other processes or machines, so start-up and throughput are worth a summary line."""

    name: str
    workers: int
    startup_seconds: float
    ordered: bool
    remote: bool

    def run(self, job: Job, items: list[Item]) -> Iterator[ItemResult]: ...

    def close(self) -> None: ...


class Worker:
    """Does one job's work on one file; opens each model once and keeps it.

    Thread-safe: the local engine may call ``run`` from several threads sharing one model
    (the backends and numpy release the GIL)."""

    def __init__(self, job: Job):
        self.job = job
        self._codecs: dict[str, Any] = {}
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def warm(self) -> str:
        """Open the model now (not on the first file), so a wrong model fails before the batch."""
        if self.job.kind == "compress":
            self._codec(None)
        elif self.job.kind == "decompress":
            self._decoders()  # opens --model now; without one, models load by the id in each file
        elif self.job.kind == "eval":
            for m in self.job.models or []:
                self._codec(Path(m))
        return f"{platform.node()}:{os.getpid()}"

    def _codec(self, model):
        from ..pipeline.api import open_codec

        key = str(model)
        with self._lock:
            if key not in self._codecs:
                src = model if model is not None else self.job.model
                try:
                    self._codecs[key] = open_codec(src, None if model is not None else self.job.quality,
                                                   self.job.backend, self.job.precision, **self.job.options)
                except Exception as e:  # a model that cannot load fails every file at once, not once per file
                    self._codecs[key] = e
            got = self._codecs[key]
        if isinstance(got, Exception):
            raise got
        return got

    def _decoders(self):
        from ..pipeline.api import CodecCache

        with self._lock:
            if "decoders" not in self._codecs:
                search = [Path(p) for p in self.job.search] if self.job.search else None
                model = Path(self.job.model) if self.job.model is not None else None
                self._codecs["decoders"] = CodecCache(model, self.job.backend, search, precision=self.job.precision,
                                                      **self.job.options)
            return self._codecs["decoders"]

    def _model_id(self, model: Path) -> str:
        from ..pipeline.models import model_id

        with self._lock:
            if str(model) not in self._ids:
                self._ids[str(model)] = model_id(model)
            return self._ids[str(model)]

    def run(self, index: int, item: Item) -> ItemResult:
        """Never raises for a bad file: any failure becomes that item's ``error``."""
        t0 = time.perf_counter()
        res = ItemResult(index, item, worker=f"{platform.node()}:{os.getpid()}")
        try:
            res.in_bytes = Path(item.src).stat().st_size
        except OSError:
            pass
        try:
            if self.job.kind == "compress":
                from ..pipeline.api import compress_file

                zopts = {} if self.job.z_seed is None else {"z_seed": self.job.z_seed,
                                                             "z_temperature": self.job.z_temperature}
                res.value = compress_file(self._codec(None), Path(item.src), Path(item.dst),
                                          overwrite=self.job.overwrite, tile=self.job.tile, **zopts)
                res.error = res.value.error
            elif self.job.kind == "decompress":
                from ..pipeline.api import decompress_file

                res.value = decompress_file(self._decoders(), Path(item.src), Path(item.dst),
                                            overwrite=self.job.overwrite)
                res.error = res.value.error
            else:
                from ..pipeline.api import evaluate_image

                codec = self._codec(Path(item.model))
                with tempfile.TemporaryDirectory(prefix="ilc-eval-") as tmp:
                    res.value = evaluate_image(codec, Path(item.src), self._model_id(Path(item.model)), Path(tmp))
                res.out_bytes = res.value["bytes"]
        except Exception as e:  # one file's failure, whatever it is, must not stop the batch
            res.value, res.error = None, f"{item.src}: {type(e).__name__}: {e}".splitlines()[0]
        if res.error is None and item.dst is not None:
            try:
                res.out_bytes = Path(item.dst).stat().st_size
            except OSError:
                pass
        res.seconds = time.perf_counter() - t0
        return res


class LocalEngine:
    """This process: one Worker, ``jobs`` files at a time in threads sharing its model."""

    name = "local"
    ordered = True
    remote = False

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, int(jobs))
        self.workers = 1
        self.startup_seconds = 0.0

    def run(self, job: Job, items: list[Item]) -> Iterator[ItemResult]:
        t0 = time.perf_counter()
        worker = Worker(job)
        worker.warm()
        self.startup_seconds = time.perf_counter() - t0
        if self.jobs == 1:
            for i, item in enumerate(items):
                yield worker.run(i, item)
            return
        pool = ThreadPoolExecutor(self.jobs)
        try:
            # at most 2 x jobs queued: Ctrl-C then waits only for the files already running
            todo = iter(enumerate(items))
            running = set()
            while True:
                for i, item in todo:
                    running.add(pool.submit(worker.run, i, item))
                    if len(running) >= 2 * self.jobs:
                        break
                if not running:
                    return
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        pass


def run_batch(engine: Engine, job: Job, items: list[Item],
              on_result: Callable[[ItemResult, int, int], None] | None = None,
              ordered: bool = False) -> BatchResult:
    """Run ``job`` over ``items`` on ``engine``; call ``on_result(result, done, total)`` as each
    file finishes (for one progress bar; ordered: in input order, each result as soon as the
    ones before it are in); return results in input order and a summary."""
    t0 = time.perf_counter()
    results: list[ItemResult | None] = [None] * len(items)
    gen = engine.run(job, items)
    try:
        done = reported = 0
        for r in gen:
            results[r.index] = r
            done += 1
            if on_result is None:
                continue
            if not ordered:
                on_result(r, done, len(items))
                continue
            while reported < len(items) and results[reported] is not None:
                reported += 1
                on_result(results[reported - 1], reported, len(items))
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    seconds = time.perf_counter() - t0
    missing = [i for i, r in enumerate(results) if r is None]
    for i in missing:  # an engine that lost an item reports it as failed rather than dropping it
        results[i] = ItemResult(i, items[i], error=f"{items[i].src}: no result from the engine")
    final: list[ItemResult] = results  # type: ignore[assignment]
    summary = Summary(
        engine=engine.name, workers=engine.workers, images=len(items), seconds=seconds,
        startup_seconds=engine.startup_seconds, in_bytes=sum(r.in_bytes for r in final if r.error is None),
        out_bytes=sum(r.out_bytes for r in final if r.error is None),
        failures={str(r.item.src): r.error for r in final if r.error is not None},
        retried=sum(1 for r in final if r.attempts > 1),
    )
    return BatchResult(final, summary)
