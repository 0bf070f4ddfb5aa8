"""Scale-out: one interface for running a batch here or on Ray (``--engine local|ray``).

Importing this package never imports Ray; ``make_engine("ray")`` does, and says what to
install when it is missing.

May import: ``ilc_export.contract``, ``codec``, ``backends`` and ``pipeline``; Ray only in
its engine. Never the tooling (export, verify) or the CLIs.
"""
from .engine import ENGINES, BatchResult, Engine, Item, ItemResult, Job, LocalEngine, Summary, Worker, run_batch


def make_engine(name: str = "local", *, jobs: int = 1, address: str | None = None,
                workers: int | None = None, **ray_options) -> Engine:
    """``local`` or ``ray``; asking for ray without it installed raises a one-line error
    (``EngineUnavailable``) that says what to install."""
    if name == "local":
        return LocalEngine(jobs)
    if name == "ray":
        from .ray_engine import RayEngine

        return RayEngine(address=address, workers=workers, **ray_options)
    raise ValueError(f"unknown engine {name!r}; one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "BatchResult", "Engine", "Item", "ItemResult", "Job", "LocalEngine", "Summary", "Worker",
           "make_engine", "run_batch"]
