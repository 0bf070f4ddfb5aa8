"""Writing and hashing files: the one atomic writer and the one sha256 of a file.

Every file the toolkit writes (bitstreams, decoded images, exports, manifests, reports)
goes through :func:`write_atomic`, so a crash leaves the old file or all of the new one.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def file_mode_for(path: Path) -> int:
    """The mode a write to `path` should leave: the existing file's (a rewrite keeps it), or what
    a plain open() would give a new file (0o666 less the umask), not mkstemp's 0o600."""
    try:
        return Path(path).stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: str | Path, data: bytes | memoryview) -> Path:
    """Write bytes so that `path` holds either the old content or all of the new one."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    mode = file_mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(directory))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (engines and checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
