"""Reading and checking volumes and subjects, keeping their geometry (:mod:`lacunes.geometry`); the
checks a file passes before it is read (complete, not too large for the memory a run may use, not a
label, skull-stripped); writing is :mod:`lacunes.writing`.

Arrays are indexed (x, y, z) — SimpleITK's (z, y, x) arrays are transposed on the way in and out —
so a window of 256×256×64 means 64 slices along z. A subject is one :class:`Subject`: the three
modalities stacked as a ``C×X×Y×Z`` float32 array (C = len(MODALITIES)), the reference geometry and the source paths.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lacunes import options
from lacunes.errors import GeometryMismatchError, LacunesInputError, MissingModalityError, UnreadableImageError
from lacunes.geometry import RESAMPLE_HINT, Geometry, check_same_grid, check_same_space, resample_to, same_grid
from lacunes.headers import STRIPPED_MAX_ML, describe_input, nonzero_ml, transforms_statement, zero_border_share

if TYPE_CHECKING:  # imported where images are read or written: the predictor on arrays needs no SimpleITK
    pass

logger = logging.getLogger(__name__)

MODALITIES = options.MODALITIES  # the network's channels, in order
#: Brings one contrast onto the reference's grid: (modality, array, geometry, reference array, reference
#: geometry) → array on the reference's grid (:func:`read_subject`'s ``align``).
Aligner = Callable[[str, np.ndarray, Geometry, np.ndarray, Geometry], np.ndarray]


@dataclass
class Subject:
    """One subject as it flows through the pipeline.

    Attributes:
        subject_id: e.g. ``sub-201``.
        image: ``C×X×Y×Z`` float32 array, one channel per modality in :data:`MODALITIES` order.
        geometry: the grid of the T1 (the reference); outputs are written on it.
        paths: source file of each modality.
        nonfinite: NaN/±inf count per modality as read (before any repair).
        modalities: the contrasts the subject came with (:data:`lacunes.options.INPUT_SETS`); the channel
            of a missing one holds zeros.
        warnings: what makes its maps doubtful though it could be read (a background that is not 0,
            non-finite voxels, a NIfTI file whose qform and sform disagree), one short phrase each; kept
            with its result (QC flags).
        headers: per contrast, what its header and voxels say as read (:func:`lacunes.headers.describe_input`).
        preparation: what was done to it before the network (:mod:`lacunes.preparation`: registration,
            brain extraction), with its numbers; empty when read as given.
        brain_mask: the brain mask the preparation applied (on the reference's grid), None where none was.
    """

    subject_id: str
    image: np.ndarray
    geometry: Geometry
    paths: dict[str, Path] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)
    modalities: tuple[str, ...] = MODALITIES
    warnings: list[str] = field(default_factory=list)
    headers: dict[str, dict] = field(default_factory=dict)
    preparation: dict[str, dict] = field(default_factory=dict)
    brain_mask: np.ndarray | None = None

    @property
    def input_set(self) -> str:
        """The name of its set of contrasts (``T1+FLAIR``)."""
        return options.input_set_name(self.modalities)


def _nifti_data_end(header: bytes) -> int | None:
    """Where a NIfTI-1/2 file's voxel data must end (vox_offset + voxels × bytes), or None when
    ``header`` is not a NIfTI header this check understands."""
    import struct

    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or offset <= 0:  # offset 0: a header-only (.hdr) file
            return None
        return offset + int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]])) * bitpix // 8
    return None


def check_no_confusable_sibling(path: Path) -> None:
    """Refuse ``X.nii.gz`` when ``X.nii`` lies beside it: the NIfTI reader (niftilib's file-name search,
    which SimpleITK uses) opens ``X.nii`` when asked for ``X.nii.gz``, so another scan would be segmented
    while the records name this one.

    Raises:
        UnreadableImageError: naming both files.
    """
    name = path.name
    if name.lower().endswith(".nii.gz"):
        sibling = path.with_name(name[: -len(".gz")])
        if sibling.exists():
            raise UnreadableImageError(
                f"{path}: {sibling.name} lies beside it, and the NIfTI reader opens {sibling.name} when asked for "
                f"{name}; move or rename one of them")


def check_complete(path: Path) -> None:
    """Refuse a damaged file that the reader would accept: a gzip stream is read to its end (truncated or
    corrupt → error), and a NIfTI file (compressed or not) must hold all the voxels its header announces
    (readers fill a short file with zeros). Raises :class:`UnreadableImageError` naming the file."""
    import gzip
    import zlib

    name = path.name.lower()
    if name.endswith(".mha"):
        _check_metaimage(path)
        return
    if not (name.endswith(".gz") or name.endswith(".nii")):
        return
    size, header = 0, b""
    if name.endswith(".gz"):
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise UnreadableImageError(f"cannot read {path}: its name ends in .gz but it is not gzip-compressed")
    try:
        with (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")) as f:
            while chunk := f.read(1 << 22):
                if len(header) < 540:
                    header += chunk[: 540 - len(header)]
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise UnreadableImageError(f"{path} is damaged (its compressed data is cut short or corrupt: {exc}); "
                                   "copy it again from its source") from None
    if name.endswith((".nii", ".nii.gz")):
        end = _nifti_data_end(header)
        if end is not None and size < end:
            raise UnreadableImageError(f"{path} is truncated: it holds {size} bytes of the {end} its header "
                                       "announces; copy it again from its source")


#: Bytes per voxel of MetaImage's element types.
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _check_metaimage(path: Path) -> None:
    """An ``.mha`` with its data inside (``ElementDataFile = LOCAL``) must hold all the bytes its header
    announces: the voxels, or ``CompressedDataSize`` when compressed (SimpleITK calls a short compressed
    one "No such file or directory")."""
    fields, offset = {}, 0
    with open(path, "rb") as f:
        for raw in iter(f.readline, b""):
            offset += len(raw)
            key, _, value = raw.decode("latin-1").partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile" or offset > 65536:
                break
    if fields.get("ElementDataFile") != "LOCAL":
        return
    try:
        if fields.get("CompressedData", "False").lower() == "true":
            need = offset + int(fields["CompressedDataSize"])
        else:
            dims = [int(v) for v in fields["DimSize"].split()]
            per = _MET_BYTES[fields["ElementType"]] * int(fields.get("ElementNumberOfChannels", "1"))
            need = offset + per * int(np.prod(dims, dtype=np.int64))
    except (KeyError, ValueError):
        return  # the reader says what is wrong with the header
    size = path.stat().st_size
    if size < need:
        raise UnreadableImageError(f"{path} is truncated: it holds {size} bytes of the {need} its header "
                                   "announces; copy it again from its source")


def nan_mask(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray | None:
    """Where a floating-point NIfTI file (``.nii``, ``.nii.gz``) holds NaN, as an (x, y, z) mask of
    ``shape``; None when it holds none or is not such a file. SimpleITK's NIfTI reader turns NaN into
    0, so that a prediction full of NaN would otherwise read as an empty one."""
    import gzip
    import struct

    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    with (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")) as f:
        data = f.read()
    for order in "<>":
        if len(data) >= 348 and struct.unpack(order + "i", data[:4])[0] == 348:
            code, offset = struct.unpack(order + "h", data[70:72])[0], int(struct.unpack(order + "f", data[108:112])[0])
        elif len(data) >= 540 and struct.unpack(order + "i", data[:4])[0] == 540:
            code, offset = struct.unpack(order + "h", data[12:14])[0], struct.unpack(order + "q", data[168:176])[0]
        else:
            continue
        dtype = {16: "f4", 64: "f8"}.get(code)
        count = int(np.prod(shape))
        if dtype is None or len(data) < offset + count * int(dtype[1]):
            return None
        values = np.frombuffer(data, np.dtype(order + dtype), count, offset)
        nan = np.isnan(values)
        return nan.reshape(tuple(shape), order="F") if nan.any() else None
    return None


#: Peak host memory per voxel of a subject's grid while it is read, conformed, normalized, predicted
#: and written (three int16 modalities; benchmarks/memory.py: 5.02 GB for a 400×400×320 field of view,
#: 87 bytes per voxel over the process's 0.57 GB at rest), rounded up for inputs stored wider. The
#: network's own working memory comes on top while it runs (on the CPU at most ``--memory-gb``, or one
#: window: about 2.7 GB for ``fast``); on large fields of view the volume's share is the peak.
BYTES_PER_VOXEL = 100
#: The process at rest: interpreter, torch, the model (benchmarks/memory.py: 0.57 GB).
BASE_BYTES = 600_000_000


def _cgroup_limits(proc_cgroup: Path, cgroup_root: Path) -> list[int]:
    """The memory limits (bytes) of the cgroup this process runs in and of each of its ancestors, v2
    (``memory.max``) and v1 (``memory.limit_in_bytes``); ``max`` and v1's "unlimited" (a huge number)
    are left to the caller's minimum."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    places = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: one unified hierarchy
            places.append((cgroup_root, "memory.max", path))
            places.append((cgroup_root / "unified", "memory.max", path))
        elif "memory" in controllers.split(","):
            places.append((cgroup_root / "memory", "memory.limit_in_bytes", path))
    limits = []
    for root, name, path in places:
        folder = root / path.strip("/")
        while True:  # this cgroup and every ancestor up to the hierarchy's root
            try:
                text = (folder / name).read_text().strip()
            except OSError:
                text = ""
            if text.isdigit():
                limits.append(int(text))
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return limits


def _slurm_limit(env: dict) -> int | None:
    """SLURM's memory request of this job step (``SLURM_MEM_PER_NODE``, or ``SLURM_MEM_PER_CPU`` times
    the CPUs on the node; megabytes), where set."""
    try:
        if env.get("SLURM_MEM_PER_NODE"):
            return int(env["SLURM_MEM_PER_NODE"]) * 1024 * 1024
        if env.get("SLURM_MEM_PER_CPU"):
            cpus = int(env.get("SLURM_CPUS_ON_NODE") or env.get("SLURM_CPUS_PER_TASK") or 1)
            return int(env["SLURM_MEM_PER_CPU"]) * cpus * 1024 * 1024
    except ValueError:
        return None
    return None


def memory_limit(proc_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup"),
                 env: dict | None = None) -> tuple[int, str]:
    """The memory a run may use (bytes) and where that number comes from: ``$LACUNES_MEMORY_LIMIT_GB``,
    else the smallest of the limits of the cgroup this process runs in and its ancestors (v2
    ``memory.max``, v1 ``memory.limit_in_bytes``: a container, a SLURM job, ``systemd-run --scope``),
    SLURM's memory request where set, and the machine's physical memory."""
    env = os.environ if env is None else env
    value = env.get("LACUNES_MEMORY_LIMIT_GB")
    if value is not None:
        try:
            gb = float(value)
        except ValueError:
            gb = float("nan")
        if not (np.isfinite(gb) and gb > 0):
            raise LacunesInputError(f"LACUNES_MEMORY_LIMIT_GB must be a positive number of GB, got {value!r}")
        return int(gb * 1e9), "LACUNES_MEMORY_LIMIT_GB"
    candidates = [(int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "this machine's memory")]
    candidates += [(limit, "the memory limit of this process's cgroup")
                   for limit in _cgroup_limits(Path(proc_cgroup), Path(cgroup_root))]
    slurm = _slurm_limit(env)
    if slurm is not None:
        candidates.append((slurm, "SLURM's memory request"))
    return min(candidates, key=lambda c: c[0])


def max_voxels() -> tuple[int, str]:
    """The largest grid (voxels) a subject may have, and why: ``$LACUNES_MAX_VOXELS``, else what
    :func:`memory_limit` holds at :data:`BYTES_PER_VOXEL` over :data:`BASE_BYTES`."""
    env = os.environ.get("LACUNES_MAX_VOXELS")
    if env is not None:
        try:
            return int(env), "LACUNES_MAX_VOXELS"
        except ValueError:
            raise LacunesInputError(f"LACUNES_MAX_VOXELS must be a whole number, got {env!r}") from None
    limit, source = memory_limit()
    return max(0, (limit - BASE_BYTES) // BYTES_PER_VOXEL), f"{limit / 1e9:.1f} GB ({source})"


def header_size(path: Path) -> tuple[int, ...]:
    """An image file's size in voxels, from its header alone (raises SimpleITK's ``RuntimeError``)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(int(v) for v in reader.GetSize())


def check_size(path: Path) -> None:
    """Refuse, from its header alone and before decoding it, a volume larger than :func:`max_voxels`
    (the memory a run may use, or ``$LACUNES_MAX_VOXELS``). Raises :class:`UnreadableImageError`."""
    try:
        size = header_size(path)
    except RuntimeError as exc:
        raise UnreadableImageError(f"cannot read {path}: {_reason(exc)}") from None
    voxels = int(np.prod(size, dtype=np.int64))
    limit, why = max_voxels()
    if voxels > limit:
        need = (BASE_BYTES + voxels * BYTES_PER_VOXEL) / 1e9
        raise UnreadableImageError(
            f"{path} is {'×'.join(map(str, size))} voxels ({voxels:.3g}): holding a subject of that size needs "
            f"about {need:.1f} GB, more than the {limit:.3g} voxels allowed by {why} (crop it to the head, or set "
            "LACUNES_MEMORY_LIMIT_GB where more memory is available)")


def _reason(exc: Exception) -> str:
    """What a SimpleITK/ITK error says, without its source locations (``…ReaderBase.cxx:99:``)."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    if "ERROR:" in text:
        text = text.split("ERROR:", 1)[1].strip()
    text = re.sub(r"\S+\.(cxx|hxx|h):\d+:?\s*|\(0x[0-9a-f]+\)", "", text).strip()
    if text.startswith("Unable to determine ImageIO reader"):
        return "no image format recognizes its content (not NIfTI, MetaImage, NRRD…: a damaged or other file)"
    return text[:300] or type(exc).__name__


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a 3D scalar image (NIfTI, MetaImage, anything SimpleITK reads) as an (x, y, z) array.
    A truncated or corrupt NIfTI or gzip file is refused (:func:`check_complete`), and so is ``X.nii.gz``
    beside an ``X.nii`` that the reader would open instead (:func:`check_no_confusable_sibling`).

    Raises:
        UnreadableImageError: missing file, a confusable sibling, damaged or unreadable content, not 3D,
            or not scalar.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImageError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise UnreadableImageError(f"cannot read {path}: the file is empty (0 bytes)")
    import SimpleITK as sitk

    check_no_confusable_sibling(path)
    check_size(path)
    check_complete(path)

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise UnreadableImageError(f"cannot read {path}: {_reason(exc)}") from None
    if image.GetDimension() != 3:
        raise UnreadableImageError(
            f"{path} is {image.GetDimension()}D (size {image.GetSize()}); a 3D volume is expected"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UnreadableImageError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar image is expected"
        )
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return array, Geometry.from_image(image)


#: Share of a volume's outer faces that must be exactly 0: inputs are skull-stripped (the brain mask,
#: the normalization's foreground and the sliding window's padding all take 0 as "no brain").
MIN_ZERO_BORDER = 0.5


def check_background(array: np.ndarray, path: Path, voxel_volume_mm3: float | None = None) -> bool:
    """Warn (naming the file and what the model expects) when a volume's background is not 0 — not
    skull-stripped, or offset (a background of -100 or noise changes the brain mask and the
    normalization) — judged on its six faces: under :data:`MIN_ZERO_BORDER` of their voxels exactly 0;
    or, given the voxel volume, when it holds more non-zero voxels than a brain (a head whose air is 0,
    :data:`lacunes.headers.STRIPPED_MAX_ML`). Returns whether it looks skull-stripped."""
    if min(array.shape) < 3:
        return True
    volume_ml = nonzero_ml(array, voxel_volume_mm3) if voxel_volume_mm3 else 0.0
    if volume_ml > STRIPPED_MAX_ML:
        logger.warning("%s holds %.0f ml of non-zero voxels, more than a brain (at most %g ml): a head with its "
                       "skull? The model expects skull-stripped inputs with exactly 0 outside the brain (lacunes "
                       "predict extracts the brain unless --no-preprocess)", path, volume_ml, STRIPPED_MAX_ML)
        return False
    zero = zero_border_share(array)
    if zero < MIN_ZERO_BORDER:
        faces = [array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1]]
        values = np.concatenate([f.ravel() for f in faces])
        logger.warning("%s has no zero background: %.0f %% of the voxels on its faces are 0 (median %g); the "
                       "model expects skull-stripped inputs with exactly 0 outside the brain, and its brain mask "
                       "and normalization will be off", path, 100 * zero, float(np.median(values)))
        return False
    return True


#: An MR image holds a continuum of intensities; a volume with at most this many distinct non-zero
#: values is a label or mask image given in a modality's place.
MAX_LABEL_VALUES = 2


def check_not_a_label(array: np.ndarray, path: Path, modality: str) -> None:
    """Refuse a label or mask image given as a contrast (at most :data:`MAX_LABEL_VALUES` distinct
    non-zero values, judged on up to 10⁶ of its non-zero voxels). Raises :class:`LacunesInputError`."""
    values = array[array != 0]
    if values.size == 0:
        return
    sample = values[:: max(1, values.size // 1_000_000)]
    sample = sample[np.isfinite(sample)]
    rest = sample
    for _ in range(MAX_LABEL_VALUES):  # drop one value at a time: a scan has more left after MAX_LABEL_VALUES
        if rest.size == 0:
            break
        rest = rest[rest != rest[0]]
    if rest.size == 0:
        distinct = np.unique(sample)
        raise LacunesInputError(
            f"{path} holds only {distinct.size} distinct non-zero value(s) ({', '.join(f'{v:g}' for v in distinct)}): "
            f"a label or mask image, not a {modality} scan")


def _transforms_hint(warnings: list[str]) -> str:
    """A grid-mismatch message's hint where a contrast's qform and sform disagree: the likelier cause."""
    disagreeing = [w for w in warnings if "qform and sform disagree" in w]
    return f" (note {'; '.join(disagreeing)}: fix the header, e.g. set both to the same transform)" if disagreeing else ""


def read_subject(subject_id: str, paths: dict[str, str | os.PathLike], resample: bool = False,
                 modalities: tuple[str, ...] | str = MODALITIES, align: Aligner | None = None,
                 warn_background: bool = True) -> Subject:
    """Read a subject's contrasts and stack them on the grid of the first (the T1, or the T2 of a
    ``T2+FLAIR`` subject): the reference its outputs are written on.

    Args:
        subject_id: identifier used in messages and output names.
        paths: one path per modality (those outside ``modalities`` are not read).
        resample: contrasts on another grid than the reference (shape, spacing, origin or direction) are
            linearly resampled onto it, provided they cover the same physical space
            (:func:`check_same_space`); outputs are always on the reference's grid.
        modalities: the set of contrasts to read (names, or a set's name such as ``"T1+FLAIR"``,
            :data:`lacunes.options.INPUT_SETS`); the channel of a contrast outside it holds zeros.
        align: brings a contrast on another grid onto the reference's (``align(modality, array, geometry,
            reference_array, reference_geometry)`` → an array on the reference's grid), in place of the
            linear resampling through the headers that ``resample`` does (:mod:`lacunes.preparation`
            registers); the field-of-view check is then the aligner's.
        warn_background: warn of a background that is not 0 (off where the brain is extracted next).

    Raises:
        MissingModalityError: a modality of the set has no path or its file does not exist.
        UnreadableImageError: a file cannot be read as a 3D scalar image.
        GeometryMismatchError: shapes or spacings differ (without ``resample``), or a modality does not
            cover the reference's field of view (with it).
        LacunesInputError: one file or image given for two contrasts, or a label image given as one.
    """
    wanted = options.INPUT_SETS[options.look_up_option(modalities, options.INPUT_SETS, "set of contrasts")
                                ] if isinstance(modalities, str) else options.INPUT_SETS[options.input_set_name(modalities)]
    missing = [m for m in wanted if m not in paths or paths[m] is None]
    if missing:
        raise MissingModalityError(
            f"no {', '.join(missing)} for {subject_id} (found: {', '.join(sorted(m for m in paths if paths[m])) or 'nothing'})"
        )
    absent = [f"{m}: {paths[m]}" for m in wanted if not Path(paths[m]).is_file()]
    if absent:
        raise MissingModalityError(f"missing file(s) for {subject_id}: {'; '.join(absent)}")
    resolved = {m: Path(paths[m]).resolve() for m in wanted}
    for a, b in ((a, b) for i, a in enumerate(wanted) for b in wanted[i + 1:]):
        if resolved[a] == resolved[b]:
            raise LacunesInputError(f"{subject_id}: the same file is given as {a} and {b} ({paths[a]}); "
                                    "each contrast needs its own image")
    reference = Path(paths[wanted[0]])
    arrays, geoms, nonfinite, headers, warnings = {}, {}, {}, {}, []
    for m in wanted:
        p = Path(paths[m])
        arr, geom = read_volume(p)
        arr = arr.astype(np.float32, copy=False)
        transforms, disagree = transforms_statement(p, geom)
        headers[m] = describe_input(p, geom, arr, geoms.get(reference), transforms)
        if disagree:
            logger.warning("%s: %s's %s (%s)", subject_id, m, transforms, p)
            warnings.append(f"{m}: {transforms}")
        nonfinite[m] = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if arr.size and nonfinite[m] == arr.size:  # repairing it would leave nothing of the contrast
            raise UnreadableImageError(f"{p} holds no finite value (all {arr.size} voxels NaN or infinite)")
        if align is not None and m != wanted[0] and not same_grid(geoms[reference], geom):
            arr, geom = align(m, arr, geom, arrays[wanted[0]], geoms[reference]), geoms[reference]
        elif resample and m != wanted[0] and not same_grid(geoms[reference], geom):
            try:
                check_same_space(geoms[reference], geom, reference.name, p.name)
            except GeometryMismatchError as exc:
                raise GeometryMismatchError(f"{exc}{_transforms_hint(warnings)}") from None
            logger.info("%s: %s resampled from %s voxels of %s mm onto the %s's grid", subject_id, m,
                        "×".join(map(str, geom.shape)), "×".join(f"{v:g}" for v in geom.spacing), wanted[0])
            arr, geom = resample_to(arr, geom, geoms[reference]), geoms[reference]
        arrays[m] = arr
        geoms[p] = geom
    try:
        check_same_grid(geoms, RESAMPLE_HINT)
    except GeometryMismatchError as exc:
        raise GeometryMismatchError(f"{exc}{_transforms_hint(warnings)}") from None
    for i, a in enumerate(wanted):
        for b in wanted[i + 1:]:
            if arrays[a].any() and np.array_equal(arrays[a], arrays[b]):  # (an empty scan is its own case)
                raise LacunesInputError(f"{subject_id}: {a} and {b} hold the same image "
                                        f"({Path(paths[a]).name}, {Path(paths[b]).name}): a copy given twice?")
    for m, arr in arrays.items():
        check_not_a_label(arr, Path(paths[m]), m)
        if warn_background and not check_background(arr, Path(paths[m]), geoms[reference].voxel_volume):
            warnings.append(f"{m} background not 0 (skull-stripped?)")
    for m, n in nonfinite.items():
        if n:
            logger.warning("%s: %s has %d non-finite voxel(s)", subject_id, m, n)
            warnings.append(f"{m} has {n} non-finite voxel(s)")
    unused = [m for m in MODALITIES if m not in wanted and paths.get(m)]
    if unused:
        logger.info("%s: %s not used (the set of contrasts is %s)", subject_id, ", ".join(unused), "+".join(wanted))
    shape = arrays[wanted[0]].shape
    return Subject(
        subject_id=subject_id,
        image=np.stack([arrays[m] if m in arrays else np.zeros(shape, np.float32) for m in MODALITIES]),
        geometry=geoms[reference],
        paths={m: Path(paths[m]) for m in wanted},
        nonfinite=nonfinite,
        modalities=wanted,
        warnings=warnings,
        headers=headers,
    )


