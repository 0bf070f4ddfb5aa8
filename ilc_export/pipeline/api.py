"""Library API behind `ilc-run`: open a codec, code files, evaluate. Tests call these."""
from __future__ import annotations

import errno
import glob
import threading
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..backends import load_backend
from ..codec.bitstream import unpack, write_atomic
from ..codec.errors import BitstreamError
from .codec import ImageCodec, Stats
from .image_io import IMAGE_SUFFIXES, ImageError, load_rgb
from .models import DEFAULT_QUALITY, ModelNotFound, find_model, shipped_checkpoint

BITSTREAM_SUFFIX = ".ilc"


def open_codec(model: str | Path | None = None, quality: int | None = None, backend: str = "torch", **options) -> ImageCodec:
    """A codec for a checkpoint / export folder / engine folder, or a shipped quality."""
    if model is None:
        if backend != "torch":
            raise ModelNotFound(f"backend {backend!r} needs --model (an ONNX export or engine folder)")
        model = shipped_checkpoint(quality or DEFAULT_QUALITY)
    return ImageCodec(load_backend(backend, Path(model), **options))


def expand_inputs(items: Iterable[str | Path], suffixes: set[str] | None) -> list[Path]:
    """Files, folders (non-recursive) and globs -> sorted unique files."""
    out: list[Path] = []
    for item in items:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and (suffixes is None or q.suffix.lower() in suffixes))
        elif any(ch in s for ch in "*?["):
            out += sorted(Path(q) for q in glob.glob(s, recursive=True) if Path(q).is_file())
        else:
            out.append(p)
    seen, uniq = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def output_path(src: Path, out: Path | None, n_inputs: int, suffix: str) -> Path:
    """-o is a file for one input, else a folder; default: next to the input."""
    if out is None:
        return src.with_suffix(suffix) if src.suffix != suffix else src.with_name(src.stem + ".decoded.png")
    if n_inputs == 1 and not out.is_dir() and out.suffix:
        return out
    out.mkdir(parents=True, exist_ok=True)
    return out / (src.stem + suffix)


@dataclass
class FileResult:
    src: Path
    dst: Path | None
    stats: Stats | None = None
    error: str | None = None
    notes: list[str] | None = None


def write_output(path: str | Path, data: bytes) -> Path:
    """Create or replace `path` with `data` so that no partial file is ever visible, even if
    the process is killed (SIGKILL) mid-write, and concurrent writers never mix bytes.

    Linux: the bytes go to an anonymous file (O_TMPFILE) in the target folder, fsync, then
    it is linked in under its final name; a process killed before that leaves nothing. An
    existing target is replaced through a uniquely named link + rename (a window of two
    system calls). Elsewhere (or on file systems without O_TMPFILE): ``write_atomic``
    (unique temp file + rename, removed on any exception)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return write_atomic(path, data)
    try:
        fd = os.open(directory, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP):
            return write_atomic(path, data)
        raise
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        try:
            os.fchmod(fd, path.stat().st_mode & 0o777)  # replacing: keep the old file's mode
        except FileNotFoundError:
            pass
        os.fsync(fd)
        src = f"/proc/self/fd/{fd}"
        # a dir fd makes CPython use linkat(AT_SYMLINK_FOLLOW): link the open file, not the /proc symlink
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            try:
                os.link(src, path.name, dst_dir_fd=dfd, follow_symlinks=True)
            except FileExistsError:
                tmp = f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
                os.link(src, tmp, dst_dir_fd=dfd, follow_symlinks=True)
                try:
                    os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except BaseException:
                    try:
                        os.unlink(tmp, dir_fd=dfd)
                    except FileNotFoundError:
                        pass
                    raise
            except OSError as e:  # no usable /proc link (sandbox, exotic fs): the portable way
                if e.errno not in (errno.EXDEV, errno.ENOENT, errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                return write_atomic(path, data)
        finally:
            os.close(dfd)
    finally:
        os.close(fd)
    return path


def encode_image(path: str | Path, img) -> bytes:
    """An 8-bit RGB array as the bytes of an image file; the format follows the suffix (PNG default)."""
    from PIL import Image

    import numpy as np

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix, "PNG") if suffix else "PNG"
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), "RGB").save(buf, format=fmt)
    return buf.getvalue()


def compress_file(codec: ImageCodec, src: Path, dst: Path, **zopts) -> FileResult:
    try:
        img, notes = load_rgb(src)
        data, st = codec.compress(img, **zopts)
        write_output(dst, data)
        return FileResult(src, dst, st, notes=notes)
    except (ImageError, BitstreamError, OSError) as e:
        return FileResult(src, None, error=str(e))


def decompress_file(codec_for: Callable[[bytes], ImageCodec], src: Path, dst: Path) -> FileResult:
    try:
        data = src.read_bytes()
        codec = codec_for(data)
        img, st = codec.decompress(data)
        write_output(dst, encode_image(dst, img))
        return FileResult(src, dst, st)
    except (BitstreamError, ModelNotFound, OSError) as e:
        return FileResult(src, None, error=f"{src}: {e}")


class CodecCache:
    """Decoders keyed by the model id found in each file (decompress without --model)."""

    def __init__(self, model: Path | None, backend: str, search: list[Path] | None = None, **options):
        self.model, self.backend, self.search, self.options = model, backend, search, options
        self._by_id: dict[str, ImageCodec] = {}
        self._fixed: ImageCodec | None = None
        self._lock = threading.Lock()  # batches may decode in threads

    def __call__(self, data: bytes) -> ImageCodec:
        with self._lock:
            return self._get(data)

    def _get(self, data: bytes) -> ImageCodec:
        if self.model is not None:
            if self._fixed is None:
                self._fixed = ImageCodec(load_backend(self.backend, self.model, **self.options))
            return self._fixed
        mid = unpack(data)[0].model_id.hex()
        if mid not in self._by_id:
            src = find_model(mid, self.backend, self.search)
            self._by_id[mid] = ImageCodec(load_backend(self.backend, src, **self.options))
        return self._by_id[mid]


def default_threads() -> int:
    return max(1, (os.cpu_count() or 1))


__all__ = [
    "BITSTREAM_SUFFIX", "IMAGE_SUFFIXES", "open_codec", "expand_inputs", "output_path", "compress_file",
    "decompress_file", "CodecCache", "FileResult", "write_output", "encode_image",
]
