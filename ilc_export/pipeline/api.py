"""Library API behind `ilc-run`: open a codec, code files, evaluate. Tests call these."""
from __future__ import annotations

import errno
import glob
import threading
import io
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..backends import load_backend
from ..codec.bitstream import unpack
from ..contract.files import file_mode_for, write_atomic
from ..codec.errors import BitstreamError
from ..contract.errors import IlcError
from .codec import ImageCodec, Stats
from .image_io import IMAGE_SUFFIXES, ImageError, load_rgb
from .models import ModelNotFound, UsageError, find_model, normalise_backend, resolve

BITSTREAM_SUFFIX = ".ilc"
#: suffix of decoded images written without -o: never the original image's name
DECODED_SUFFIX = ".decoded.png"


class OutputError(IlcError, OSError):
    """An output file cannot be written where asked (exists, unwritable folder, clash)."""


class CodingError(IlcError, ValueError):
    """One file failed to compress or decompress (the message names it and the reason)."""


def open_codec(model: str | Path | None = None, quality: int | None = None, backend: str | None = None,
               precision: str | None = None, **options) -> ImageCodec:
    """A codec for a checkpoint / export folder / engine folder / shipped name, or a shipped
    quality; the backend is chosen by ``models.resolve`` when not given."""
    r = resolve(model, quality, backend, precision)
    if precision is not None:  # the torch backend takes fp16 on a CUDA device and says so elsewhere
        options = {**options, "precision": precision}
    return ImageCodec(load_backend(r.backend, r.source, **options))


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


def default_output(src: Path, suffix: str) -> Path:
    """Where an output goes without -o: beside the input, `x.png -> x.ilc`, `x.ilc -> x.decoded.png`."""
    return src.with_name(src.stem + (DECODED_SUFFIX if suffix != BITSTREAM_SUFFIX else suffix))


def output_path(src: Path, out: Path | None, n_inputs: int, suffix: str) -> Path:
    """-o is a file for one input (when it has a suffix and is not a folder), else a folder;
    default: beside the input (``default_output``). Creates nothing."""
    if out is None:
        return default_output(src, suffix)
    if n_inputs == 1 and not out.is_dir() and out.suffix:
        return out
    return out / (src.stem + suffix)


def plan_outputs(files: list[Path], out: Path | None, suffix: str, force: bool = False) -> list[Path]:
    """Every input's output path, checked before any work: OutputError when an output exists
    (unless force), two inputs share an output, an output is an input or a folder, or its
    folder cannot be created or written. Creates the folders -o names."""
    if out is not None and len(files) > 1 and out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder (-o must be a folder for {len(files)} inputs)")
    dsts = [output_path(f, out, len(files), suffix) for f in files]
    inputs = {os.path.abspath(f) for f in files}
    seen: dict[str, Path] = {}
    exist = []
    for src, dst in zip(files, dsts):
        key = os.path.abspath(dst)
        if key in inputs:
            raise OutputError(f"{dst}: the output would replace an input; choose another -o")
        if key in seen:
            raise OutputError(f"{seen[key]} and {src} would both be written to {dst}; use -o with one input at a time")
        seen[key] = src
        if dst.is_dir():
            raise OutputError(f"{dst}: is a folder")
        if dst.exists() and not force:
            exist.append(dst)
    if exist:
        more = f" and {len(exist) - 1} more" if len(exist) > 1 else ""
        raise OutputError(f"{exist[0]}{more} already exist{'s' if len(exist) == 1 else ''}; "
                          "pass --force to overwrite, or choose another -o")
    for folder in sorted({d.parent for d in dsts}, key=str):
        folder = folder if str(folder) else Path(".")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise OutputError(f"{folder}: exists and is not a folder") from None
        except OSError as e:
            raise OutputError(f"cannot create output folder {folder} ({e.strerror or e})") from None
        try:  # create (and drop) an unnamed file there: read-only mounts and permissions show now, not after coding
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise OutputError(f"{folder}: output folder is not writable ({e.strerror or type(e).__name__})") from None
    return dsts


def unique_path(path: Path) -> Path:
    """`path`, or `stem-2.suffix`, `stem-3.suffix`, ... : the first name that does not exist."""
    if not path.exists():
        return path
    name, suffix = (path.name[:-len(DECODED_SUFFIX)], DECODED_SUFFIX) if path.name.endswith(DECODED_SUFFIX) \
        else (path.stem, path.suffix)
    i = 2
    while (path.with_name(f"{name}-{i}{suffix}")).exists():
        i += 1
    return path.with_name(f"{name}-{i}{suffix}")


@dataclass
class FileResult:
    src: Path
    dst: Path | None
    stats: Stats | None = None
    error: str | None = None
    notes: list[str] | None = None


def write_output(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Create (or, with overwrite, replace) `path` with `data` so that no partial file is ever
    visible, even if the process is killed (SIGKILL) mid-write, and concurrent writers never
    mix bytes. overwrite=False: FileExistsError if `path` exists, checked atomically (a file
    that appears meanwhile is never replaced).

    Linux: the bytes go to an anonymous file (O_TMPFILE) in the target folder, fsync, then
    it is linked in under its final name; a process killed before that leaves nothing. An
    existing target is replaced through a uniquely named link + rename (a window of two
    system calls). Elsewhere (or on file systems without O_TMPFILE): a unique temporary file
    + rename (or + link when not overwriting), removed on any exception."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return _write_portable(path, data, overwrite)
    try:
        fd = os.open(directory, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP):
            return _write_portable(path, data, overwrite)
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
                if not overwrite:
                    raise
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
                return _write_portable(path, data, overwrite)
        finally:
            os.close(dfd)
    finally:
        os.close(fd)
    return path


def _write_portable(path: Path, data: bytes, overwrite: bool) -> Path:
    """Replacing: ``write_atomic``. Not replacing: a unique temporary file in the target folder,
    fsync, then a link to the final name (fails if the target exists); the temporary file is
    removed on any exception."""
    if overwrite:
        return write_atomic(path, data)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode_for(path))
        os.link(tmp, path)
    finally:  # still there after the link or a failure
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return path


def _write_error(dst: Path, e: OSError) -> str:
    """One line for a failed write, naming the output (never a temporary name)."""
    if isinstance(e, FileExistsError):
        return f"{dst}: already exists (appeared while coding); pass --force to overwrite"
    return f"{dst}: cannot write ({e.strerror or (str(e) if e.errno is None else '') or type(e).__name__})"


def encode_image(path: str | Path, img) -> bytes:
    """An 8-bit RGB array as the bytes of an image file; the format follows the suffix (PNG default)."""
    from PIL import Image

    import numpy as np

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix, "PNG") if suffix else "PNG"
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), "RGB").save(buf, format=fmt)
    return buf.getvalue()


def compress_file(codec: ImageCodec, src: Path, dst: Path, overwrite: bool = True, **zopts) -> FileResult:
    """Image file -> .ilc file; errors come back in the result, each naming the input or output."""
    try:
        img, notes = load_rgb(src)
        data, st = codec.compress(img, **zopts)
    except ImageError as e:  # names the file already
        return FileResult(src, None, error=str(e))
    except BitstreamError as e:
        return FileResult(src, None, error=f"{src}: {e}")
    try:
        write_output(dst, data, overwrite=overwrite)
    except OSError as e:
        return FileResult(src, None, error=_write_error(dst, e))
    return FileResult(src, dst, st, notes=notes)


def decompress_file(codec_for: Callable[[bytes], ImageCodec], src: Path, dst: Path,
                    overwrite: bool = True, max_pixels=None) -> FileResult:
    """.ilc file -> image file; errors come back in the result, each naming the input or output.
    max_pixels: passed to ImageCodec.decompress (None: its default)."""
    try:
        data = src.read_bytes()
    except OSError as e:
        return FileResult(src, None, error=f"{src}: cannot read ({e.strerror or type(e).__name__})")
    try:
        codec = codec_for(data)
        kw = {} if max_pixels is None else {"max_pixels": max_pixels or None}
        img, st = codec.decompress(data, **kw)
        encoded = encode_image(dst, img)
    except (BitstreamError, ModelNotFound) as e:
        return FileResult(src, None, error=f"{src}: {e}")
    try:
        write_output(dst, encoded, overwrite=overwrite)
    except OSError as e:
        return FileResult(src, None, error=_write_error(dst, e))
    return FileResult(src, dst, st)


def evaluate_image(codec, f: Path, mid: str, tmp: Path) -> dict:
    """One image through a real file: compress, write, read back, decompress, measure.

    The per-image record of the results JSON; every engine computes it with this function."""
    from .metrics import ms_ssim, psnr

    img, _ = load_rgb(f)
    t0 = time.perf_counter()
    data, est = codec.compress(img)
    bit = Path(tmp) / (f.stem + BITSTREAM_SUFFIX)
    write_output(bit, data)
    t1 = time.perf_counter()
    rec, dst = codec.decompress(bit.read_bytes())
    t2 = time.perf_counter()
    n = bit.stat().st_size
    bit.unlink()
    return {"image": f.name, "bpp": 8 * n / (img.shape[0] * img.shape[1]), "psnr": psnr(img, rec),
            "ms_ssim": ms_ssim(img, rec), "enc": t1 - t0, "dec": t2 - t1,
            "enc_entropy": est.times.get("entropy", 0.0), "dec_entropy": dst.times.get("entropy", 0.0),
            "bytes": n, "model": codec.cfg.name, "model_id": mid}


class CodecCache:
    """Decoders keyed by the model id found in each file (decompress without --model)."""

    def __init__(self, model: Path | None, backend: str | None, search: list[Path] | None = None,
                 precision: str | None = None, **options):
        self.backend = normalise_backend(backend)
        self.model, self.search, self.precision, self.options = model, search, precision, options
        self._by_id: dict[str, ImageCodec] = {}
        self._fixed: ImageCodec | None = None
        self._lock = threading.Lock()  # batches may decode in threads
        if model is not None:  # a bad --model is a usage error, reported once before any file
            self._fixed = open_codec(model, None, self.backend, precision, **options)

    def __call__(self, data: bytes) -> ImageCodec:
        with self._lock:
            return self._get(data)

    def _get(self, data: bytes) -> ImageCodec:
        if self._fixed is not None:
            return self._fixed
        mid = unpack(data)[0].model_id.hex()
        if mid not in self._by_id:
            be, src = find_model(mid, self.backend, self.search, self.precision)
            opts = dict(self.options)
            if self.precision is not None:
                opts["precision"] = self.precision
            self._by_id[mid] = ImageCodec(load_backend(be, src, **opts))
        return self._by_id[mid]


__all__ = [
    "BITSTREAM_SUFFIX", "DECODED_SUFFIX", "IMAGE_SUFFIXES", "OutputError", "CodingError", "UsageError", "open_codec",
    "expand_inputs", "output_path", "plan_outputs", "unique_path", "default_output", "compress_file",
    "decompress_file", "evaluate_image", "CodecCache", "FileResult", "write_output", "encode_image",
]
