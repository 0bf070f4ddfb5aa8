"""Scale-out: one interface for running a batch here or on Ray (``--engine local|ray``).

Importing this package never imports Ray; ``make_engine("ray")`` does, and says what to
install when it is missing.

May import: ``ilc_export.contract``, ``codec``, ``backends`` and ``pipeline``; Ray only in
its engine. Never the tooling (export, verify) or the CLIs.
"""
from .engine import (ENGINES, BatchResult, Engine, Item, ItemResult, Job, LocalEngine, Summary, Worker,
                     make_engine, run_batch)

__all__ = ["ENGINES", "BatchResult", "Engine", "Item", "ItemResult", "Job", "LocalEngine", "Summary", "Worker",
           "make_engine", "run_batch"]
