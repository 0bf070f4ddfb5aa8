"""The Ray engine: the batch's files spread over actors on a Ray cluster (or a local Ray).

Each actor runs a :class:`~ilc_export.scale.engine.Worker` that opens the model once, with
``threads`` intra-op threads and, where the cluster has GPUs, one GPU of its own; the actors
stay up between the batches of one engine until ``close()``. The driver hands out one file
at a time (``inflight`` per actor, to hide the round trip) and keeps the scheduling itself
instead of relying on Ray's task retries, so that it knows which files a dead actor held:
those go back in the queue (up to ``max_retries`` more attempts each) and a fresh actor
takes the dead one's place. Outputs are written by the actors with
``write_output`` (an anonymous file linked in under its name when complete), so an actor
killed mid-file leaves nothing, and the retry writes the whole file.

Inputs and outputs are paths that every node must see (shared storage): the driver sends
absolute paths, never image bytes.

Ray is imported when an engine is made, never when this package is imported: the runtime
installs and runs without it.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from pathlib import Path
from typing import Iterator

from ..contract.errors import IlcError

from .engine import Item, ItemResult, Job, Worker

INSTALL_HINT = "pip install 'ilc-export[ray]'"


class EngineUnavailable(IlcError, RuntimeError):
    """The requested engine's package is not installed (one line, says what to install)."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise EngineUnavailable(f"--engine ray needs Ray (not installed): {INSTALL_HINT}") from None
    return ray


class _Actor:
    """A Ray actor holding one Worker per job: the model stays loaded across batches that an
    engine runs with the same job, and one set of actors serves several jobs (e.g. compress,
    then decompress, then eval) without paying the process and import start-up again."""

    def __init__(self):
        from PIL import Image

        self._workers: dict[str, Worker] = {}
        self._max_pixels = Image.MAX_IMAGE_PIXELS  # Pillow's default, restored for jobs that set none

    def _worker(self, job: Job) -> Worker:
        from PIL import Image

        # the CLI sets Pillow's limit in its own process (--max-pixels); an actor sets it per job
        Image.MAX_IMAGE_PIXELS = self._max_pixels if job.max_pixels is None else (job.max_pixels or None)
        key = repr(job)
        if key not in self._workers:
            self._workers[key] = Worker(job)
        return self._workers[key]

    def warm(self, job: Job) -> str:
        return self._worker(job).warm()

    def run(self, job: Job, index: int, item: Item) -> ItemResult:
        return self._worker(job).run(index, item)


class RayEngine:
    """Join the cluster at ``address`` (None: start a local Ray on this machine).

    ``workers``: actors to start (default: as many as the cluster's CPUs, or GPUs, hold);
    ``cpus_per_worker``: CPUs each actor reserves (default: the job's ``threads``, else 1),
    also its thread count when the job gives none; ``gpus_per_worker``: default 1 when the
    cluster has GPUs and the backend runs on one, else 0 (see ``plan``)."""

    name = "ray"
    ordered = False
    remote = True

    def __init__(self, address: str | None = None, workers: int | None = None, *,
                 cpus_per_worker: int | None = None, gpus_per_worker: float | None = None,
                 max_retries: int = 3, inflight: int = 2, init_options: dict | None = None):
        self._ray = import_ray()
        self.address = address
        self.requested_workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.max_retries = max_retries
        self.inflight = max(1, inflight)
        self.init_options = init_options or {}
        self.workers = 0
        self.startup_seconds = 0.0
        self.actors: list = []  # live actors, kept between runs until close() (tests kill one)
        self._actor_opts: dict | None = None
        self._remote = None
        self._started_ray = False

    # -- cluster ---------------------------------------------------------------
    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        opts = {"include_dashboard": False, "logging_level": "WARNING",
                # actors' output would tear the driver's progress bar; their logs stay in the session folder
                "log_to_driver": False, **self.init_options}
        if self.address:
            ray.init(address=self.address, **opts)
        else:
            ray.init(address="local", **opts)
        self._started_ray = True

    def _plan(self, job: Job) -> tuple[Job, dict, int]:
        return plan(job, self._ray.cluster_resources(), self.requested_workers, self.cpus_per_worker,
                    self.gpus_per_worker)

    # -- batch -----------------------------------------------------------------
    def _actors_for(self, opts: dict, n: int) -> None:
        """Keep the live actors if they were made with these options; start more to reach n."""
        ray = self._ray
        if opts != self._actor_opts:
            self._kill_all()
            self._actor_opts = opts
            self._remote = ray.remote(_Actor).options(**opts)
        while len(self.actors) < n:  # more from an earlier, larger batch stay up
            self.actors.append(self._remote.remote())

    def _kill_all(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []

    def start(self, job: Job) -> int:
        """Start the actors for ``job`` and wait until each has its model loaded (optional:
        ``run`` starts them too, and begins as soon as the first is ready). Returns their count."""
        self._connect()
        job, opts, n = self._plan(job)
        self._actors_for(opts, n)
        job = _absolute_job(job)
        try:
            self._ray.get([a.warm.remote(job) for a in self.actors])
        except self._ray.exceptions.RayTaskError as e:
            raise _cause(e) from None
        return len(self.actors)

    def run(self, job: Job, items: list[Item]) -> Iterator[ItemResult]:
        t0 = time.perf_counter()
        self._connect()
        job, opts, n = self._plan(job)
        n = min(n, max(1, len(items)))
        self._actors_for(opts, n)
        # the workers' working folder is not the caller's: every path they get is absolute
        shipped = [Item(Path(os.path.abspath(it.src)), Path(os.path.abspath(it.dst)) if it.dst else None,
                        Path(os.path.abspath(it.model)) if it.model else None) for it in items]
        job = _absolute_job(job)
        try:
            yield from self._dispatch(job, items, shipped, n, t0)
        except BaseException:
            # interrupted, or the caller stopped early: stop the files in flight (outputs are
            # atomic, so none is left half-written) rather than let them run on unseen
            self._kill_all()
            raise

    def _dispatch(self, job, items, shipped, n, t0) -> Iterator[ItemResult]:
        """Files go only to actors whose model is loaded (``warm`` returned): the first ready
        actor starts at once, and an actor the cluster cannot place (more workers than it
        holds) simply never gets work instead of stalling the batch."""
        ray = self._ray
        dead = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError, ray.exceptions.NodeDiedError)
        queue = deque((i, 1) for i in range(len(items)))  # (index, attempt)
        warming = {a.warm.remote(job): a for a in self.actors}  # ObjectRef -> actor
        pending: dict = {}  # ObjectRef -> (actor, index, attempt)
        load: dict = {}  # ready actor -> files in flight
        self.workers, self.startup_seconds = 0, 0.0
        deaths_loading = 0
        while queue or pending:
            if queue and len(load) + len(warming) < n:  # replace dead actors while work remains
                for _ in range(n - len(load) - len(warming)):
                    a = self._remote.remote()
                    self.actors.append(a)
                    warming[a.warm.remote(job)] = a
            for a in list(load):
                while queue and load[a] < self.inflight:
                    i, attempt = queue.popleft()
                    pending[a.run.remote(job, i, shipped[i])] = (a, i, attempt)
                    load[a] += 1
            ready, _ = ray.wait(list(pending) + list(warming), num_returns=1)
            ref = ready[0]
            if ref in warming:
                a = warming.pop(ref)
                try:
                    ray.get(ref)
                except dead as e:
                    self._drop(a)
                    deaths_loading += 1
                    if deaths_loading > n * (self.max_retries + 1):  # e.g. the model crashes the process
                        from ..backends.base import BackendError

                        raise BackendError(f"Ray workers keep dying while loading the model ({type(e).__name__}); "
                                           "see the Ray logs (/tmp/ray/session_latest/logs)") from None
                    continue
                except ray.exceptions.RayTaskError as e:
                    # the model does not load: one error for the batch, not one per file
                    raise _cause(e) from None
                load[a] = 0
                if not self.workers:
                    self.startup_seconds = time.perf_counter() - t0
                self.workers = max(self.workers, len(load))
                continue
            a, i, attempt = pending.pop(ref)
            if a in load:
                load[a] -= 1
            try:
                r: ItemResult = ray.get(ref)
            except dead as e:
                if a in load:  # its other files fail the same way and are requeued as they come back
                    del load[a]
                    self._drop(a)
                if attempt <= self.max_retries:
                    queue.append((i, attempt + 1))
                    continue
                r = ItemResult(i, shipped[i], error=f"{items[i].src}: the worker died on each of {attempt} attempts "
                               f"({type(e).__name__})")
            except ray.exceptions.RayTaskError as e:  # Worker.run returns errors; this is a bug or a lost import
                r = ItemResult(i, shipped[i], error=f"{items[i].src}: {_cause(e)}".splitlines()[0])
            r.attempts = attempt
            yield _restore_paths(r, items[i])

    def _drop(self, actor) -> None:
        if actor in self.actors:
            self.actors.remove(actor)
        self._ray.kill(actor)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop the actors; shut Ray down if this engine started it (not if it joined one)."""
        if self._ray.is_initialized():
            self._kill_all()
        if self._started_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._started_ray = False


#: backends that run on the CPU here (the torch backend uses the CPU, as the local engine
#: does): a GPU reserved for their actors would idle and cap the actor count at the GPU count
CPU_BACKENDS = {"torch", "pytorch"}


def plan(job: Job, resources: dict, workers: int | None = None, cpus_per_worker: int | None = None,
         gpus_per_worker: float | None = None) -> tuple[Job, dict, int]:
    """Actor options and actor count for a cluster with ``resources`` (``ray.cluster_resources()``).

    Each actor reserves ``threads`` CPUs (1 if the job gives none, and the job then says 1
    thread explicitly: Ray caps an actor's OpenMP threads at its CPUs) and, where the cluster
    has GPUs and the backend uses one, one GPU; by default as many actors as that fills."""
    threads = job.options.get("threads")
    cpus = cpus_per_worker or threads or 1
    gpus = gpus_per_worker
    if gpus is None:
        uses_gpu = job.backend is not None and job.backend not in CPU_BACKENDS
        gpus = 1 if resources.get("GPU", 0) >= 1 and uses_gpu else 0
    if not threads:
        job = dataclasses.replace(job, options={**job.options, "threads": int(cpus)})
    n = workers
    if not n:
        n = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // cpus)
    opts = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 0, "max_task_retries": 0}
    return job, opts, max(1, n)


def _absolute_job(job: Job) -> Job:
    def path_or_name(m):  # a shipped model name ("ilc-q2") stays a name
        return os.path.abspath(m) if m is not None and os.path.exists(m) else m

    return dataclasses.replace(
        job, model=path_or_name(job.model),
        models=[path_or_name(m) for m in job.models] if job.models else job.models,
        search=[os.path.abspath(d) for d in job.search] if job.search else job.search)


def _cause(e):
    """The exception an actor raised, not Ray's wrapper with the remote traceback."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else RuntimeError(str(e).splitlines()[0])


def _restore_paths(r: ItemResult, item: Item) -> ItemResult:
    """Report results with the caller's paths, not the absolute ones sent to the cluster."""
    r.item = item
    v = r.value
    if v is not None and hasattr(v, "src") and hasattr(v, "dst"):
        r.value = dataclasses.replace(v, src=item.src, dst=item.dst if v.dst is not None else None)
    return r
