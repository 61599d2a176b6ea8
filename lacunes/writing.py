"""Writing outputs so that nothing half-written is ever left under a final name: a checked output folder,
atomic files (a temporary name, flushed, checked to hold the whole image, then renamed), and several maps
that belong together written all or none."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lacunes.errors import LacunesInputError, UnreadableImageError
from lacunes.geometry import Geometry, to_sitk
from lacunes.io import _reason, check_complete, header_size

if TYPE_CHECKING:
    import SimpleITK as sitk

logger = logging.getLogger(__name__)


_UMASK = os.umask(0)
os.umask(_UMASK)

#: Marks the temporary files :func:`atomic_output` writes (``.<final name>.lacunes-tmp.<8 random
#: characters><suffix>``), so that the clean-up of a killed run's leftovers never matches a user's own
#: hidden files (``.results.20231130.csv`` looks like a name with 8 random characters).
TEMPORARY_MARK = ".lacunes-tmp."
_TEMPORARY = re.compile(r"^\..+" + re.escape(TEMPORARY_MARK) + r"[a-z0-9_]{8}(\.nii\.gz|\.[A-Za-z0-9]+)$")
#: Temporary files older than this (seconds) are a killed run's leftovers (a live write takes seconds).
STALE_SECONDS = 600
#: The longest file name (bytes) of the usual file systems; a temporary name for a final name near it
#: is made from the name's hash instead (:func:`atomic_output`).
NAME_MAX = 255


def prepare_output_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed, check that files can be written in it (before any inference runs),
    and remove the temporary files a killed run left there (older than :data:`STALE_SECONDS`): only
    files carrying :data:`TEMPORARY_MARK`, only in ``folder`` and the two levels of subfolders this
    tool writes into (``extras/``, ``qc/``, ``images/<slug>/``), never deeper in a user's tree.

    Raises:
        LacunesInputError: the folder cannot be created or written, naming it and the reason.
    """
    import time

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LacunesInputError(f"output folder {folder} is not writable: {exc.strerror or exc}") from None
    now, removed = time.time(), 0
    for p in (q for pattern in (".*", "*/.*", "*/*/.*") for q in folder.glob(pattern)):
        try:
            if p.is_file() and _TEMPORARY.match(p.name) and now - p.stat().st_mtime > STALE_SECONDS:
                p.unlink()
                removed += 1
        except OSError:
            continue
    if removed:
        logger.info("removed %d temporary file(s) left in %s by an interrupted run", removed, folder)
    return folder


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers pick the same format); on
    success it is flushed to the disk (fsync: a full disk that the writer did not report surfaces
    here, as :class:`WriteError`), renamed to ``path`` with the usual permissions, and the rename
    itself flushed; on any error it is removed. A crash or a power cut therefore never leaves a
    half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    stem = path.name
    extra = len(f".{TEMPORARY_MARK}") + 8 + len(suffix.encode())  # what the temporary name adds
    if len(stem.encode()) + extra > NAME_MAX:  # a legal long name: the temporary one is shortened, not refused
        import hashlib

        stem = hashlib.sha256(path.name.encode()).hexdigest()[:16]
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}{TEMPORARY_MARK}", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        try:
            _fsync(tmp)
        except OSError as exc:
            raise WriteError(f"writing {path.name} in {path.parent} failed: {exc.strerror or exc}") from None
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush a file's data (or a folder's entries) to the disk. A folder that cannot be opened for it
    (some network file systems, Windows) is left to the operating system."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


class WriteError(OSError):
    """An output could not be written in full (a full disk, a quota); nothing is left under its name."""


def verify_written(path: Path, image: sitk.Image) -> None:
    """Raise :class:`WriteError` unless ``path`` holds all of ``image``: SimpleITK reports a short write
    (a full disk) only as a warning, so the file is checked — a NIfTI or gzip file to the end of its
    data (:func:`check_complete`), other formats read back and compared in size."""
    import SimpleITK as sitk

    try:
        if path.stat().st_size == 0:
            raise UnreadableImageError(f"{path} is empty")
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz", ".gz")):
            check_complete(path)
            size = header_size(path)
        else:
            size = sitk.ReadImage(str(path)).GetSize()
        if tuple(size) != tuple(image.GetSize()):
            raise UnreadableImageError(f"{path} holds {size} voxels, {image.GetSize()} were written")
    except (UnreadableImageError, RuntimeError, OSError) as exc:
        raise WriteError(f"writing {path.name} in {path.parent} failed (is the disk full?): {exc}") from None


def write_image_atomic(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write through a temporary file in the same folder, check it holds the whole image
    (:func:`verify_written`), then rename: never a half-written file under the final name.

    Raises:
        WriteError: the file could not be written in full (nothing is left behind).
    """
    with atomic_output(path) as tmp:
        _write_checked(image, tmp, Path(path), compress)
    return Path(path)


def _write_checked(image: sitk.Image, tmp: Path, path: Path, compress: bool = True) -> None:
    """Write ``image`` to ``tmp`` (the temporary name of ``path``) and check it holds all of it."""
    import SimpleITK as sitk

    try:
        sitk.WriteImage(image, str(tmp), compress)
    except RuntimeError as exc:
        raise WriteError(f"cannot write {path.name} in {path.parent}: {_reason(exc)}") from None
    verify_written(tmp, image)


def write_volume(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Write an (x, y, z) array with the reference geometry, atomically."""
    return write_image_atomic(to_sitk(array, geometry), path)


def write_volumes(items: list[tuple[np.ndarray, Geometry, str | os.PathLike]]) -> list[Path]:
    """Write several (x, y, z) arrays that belong together (a subject's probability and uncertainty
    maps): each to a temporary file, checked (:func:`verify_written`), and only when all are complete
    are they renamed into place — so a failure leaves none of them, never one without the other.

    Raises:
        WriteError: a file could not be written in full.
    """
    from contextlib import ExitStack

    with ExitStack() as stack:
        for array, geometry, path in items:
            _write_checked(to_sitk(array, geometry), stack.enter_context(atomic_output(path)), Path(path))
    return [Path(path) for _, _, path in items]


def output_complete(path: Path) -> bool:
    """Whether an existing output file is whole (a rerun keeps it): a NIfTI or gzip file holds all the
    data its header announces; other formats are not empty."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        check_complete(path)
        return True
    except (UnreadableImageError, OSError):
        return False
