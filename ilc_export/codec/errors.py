"""Errors of the codec core."""
from __future__ import annotations

from ..contract.errors import IlcError


class BitstreamError(IlcError, ValueError):
    """A file or stream cannot be decoded: truncated, corrupted, from another model or a
    newer format. The message is one line naming the problem."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class TablesError(IlcError, ValueError):
    """A checkpoint's codec tables are missing, incomplete or inconsistent."""
