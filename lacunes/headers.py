"""What each input is, from its header and its voxels: orientation, voxel size, whether a NIfTI file's two
transforms (qform and sform) agree and which one the image was read with, whether it looks skull-stripped,
and whether it lies on the reference's grid. :func:`describe_input` returns it for the sidecar and
``run.json``; a disagreement is a QC flag, not only a log line."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from lacunes.geometry import Geometry, same_grid
from lacunes.instances import RAS_FROM_LPS

#: Transforms further apart than this (mm at the field of view's corners) disagree.
TRANSFORM_TOLERANCE_MM = 0.5
#: Share of the outer faces' voxels that must be exactly 0 for a volume to look skull-stripped
#: (:func:`lacunes.io.check_background` warns under it).
SKULL_STRIPPED_ZERO_SHARE = 0.5
#: More non-zero voxels than this (ml) is a head, not a brain, even with a background of 0 (air set to 0 by
#: the scanner or a converter): an adult brain mask holds 1.0-2.0 l, a head with its scalp 3-5 l
#: (Colin27: 1.74 l stripped, 4.15 l with its skull).
STRIPPED_MAX_ML = 2500.0
_LPS_TO_RAS = np.diag([*RAS_FROM_LPS, 1.0])


def _header_bytes(path: Path) -> bytes:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read(540)


def _quaternion_affine(b: float, c: float, d: float, offset, pixdim) -> np.ndarray:
    a = float(np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d))))
    rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                         [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c]])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], pixdim[3] * qfac])
    affine[:3, 3] = offset
    return affine


def nifti_transforms(path: str | Path) -> dict | None:
    """A NIfTI-1 or NIfTI-2 file's qform and sform (RAS, 4×4) with their codes (0 = not set), or None for
    another format or an unreadable header."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        header = _header_bytes(path)
    except OSError:
        return None
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            pixdim = struct.unpack(order + "8f", header[76:108])
            q_code, s_code = struct.unpack(order + "2h", header[252:256])
            quatern = struct.unpack(order + "6f", header[256:280])
            rows = struct.unpack(order + "12f", header[280:328])
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            pixdim = struct.unpack(order + "8d", header[104:168])
            q_code, s_code = struct.unpack(order + "2i", header[344:352])
            quatern = struct.unpack(order + "6d", header[352:400])
            rows = struct.unpack(order + "12d", header[400:496])
        else:
            continue
        sform = np.vstack([np.asarray(rows, float).reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])
        return {"qform_code": int(q_code), "sform_code": int(s_code),
                "qform": _quaternion_affine(*quatern[:3], quatern[3:], pixdim), "sform": sform}
    return None


def ras_affine(geometry: Geometry) -> np.ndarray:
    """The RAS affine of a grid as SimpleITK read it (its direction and origin are LPS)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(geometry.direction, float).reshape(3, 3) @ np.diag(geometry.spacing)
    affine[:3, 3] = geometry.origin
    return _LPS_TO_RAS @ affine


def _apart_mm(a: np.ndarray, b: np.ndarray, shape) -> float:
    """How far two affines place the field of view's corners apart, at most (mm)."""
    corners = np.array([[n * bit for n, bit in zip(shape, bits)] + [1.0] for bits in np.ndindex(2, 2, 2)])
    return float(np.abs((corners @ a.T - corners @ b.T)[:, :3]).max())


def axis_letters(direction: tuple[float, ...]) -> list[tuple[str, str]]:
    """For each array axis, the anatomical letter its low and its high end point to (``("L", "R")`` for an
    axis that runs from left to right), from the direction matrix (LPS, as SimpleITK reads it)."""
    d = np.asarray(direction, float).reshape(3, 3)
    out = []
    for axis in range(3):
        ras = RAS_FROM_LPS * d[:, axis]
        j = int(np.argmax(np.abs(ras)))
        high, low = "RAS"[j], "LPI"[j]
        out.append((low, high) if ras[j] > 0 else (high, low))
    return out


def orientation_code(geometry: Geometry) -> str:
    """The anatomical direction each array axis runs towards, as three letters (``RAS``, ``LPS``, ``PIL``…)."""
    return "".join(high for _, high in axis_letters(geometry.direction))


def transforms_statement(path: Path, geometry: Geometry) -> tuple[str, bool]:
    """What a NIfTI file's qform and sform say and which one the image was read with; whether they disagree
    (``(text, disagree)``). Other formats: ``("not NIfTI", False)``."""
    t = nifti_transforms(path)
    if t is None:
        return "not NIfTI", False
    read = ras_affine(geometry)
    q_set, s_set = t["qform_code"] > 0, t["sform_code"] > 0
    if not (q_set and s_set):
        return ("sform only" if s_set else "qform only" if q_set else "neither qform nor sform set"), False
    apart = _apart_mm(t["qform"], t["sform"], geometry.shape)
    if apart <= TRANSFORM_TOLERANCE_MM:
        return "qform and sform agree", False
    used = min(("sform", "qform"), key=lambda k: _apart_mm(t[k], read, geometry.shape))
    return f"qform and sform disagree by up to {apart:.1f} mm: read with the {used}", True


def nonzero_ml(array: np.ndarray, voxel_volume_mm3: float) -> float:
    """The volume of a volume's non-zero voxels, in ml."""
    return float(np.count_nonzero(array) * voxel_volume_mm3 / 1000.0)


def looks_skull_stripped(array: np.ndarray, voxel_volume_mm3: float) -> bool:
    """Whether a volume looks skull-stripped: at least :data:`SKULL_STRIPPED_ZERO_SHARE` of its faces'
    voxels exactly 0, and no more than :data:`STRIPPED_MAX_ML` of non-zero voxels."""
    if min(array.shape) < 3:
        return True
    return bool(zero_border_share(array) >= SKULL_STRIPPED_ZERO_SHARE
                and nonzero_ml(array, voxel_volume_mm3) <= STRIPPED_MAX_ML)


def zero_border_share(array: np.ndarray) -> float:
    """The share of the six outer faces' voxels that are exactly 0."""
    faces = [array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1]]
    return sum(int(np.count_nonzero(f == 0)) for f in faces) / max(sum(f.size for f in faces), 1)


def describe_input(path: Path, geometry: Geometry, array: np.ndarray, reference: Geometry | None = None,
                   transforms: str | None = None) -> dict:
    """What the sidecar and ``run.json`` record of one input: its orientation, voxel size and shape, its
    transforms (:func:`transforms_statement`), whether it looks skull-stripped (the share of zeros on its
    faces) and whether it lies on the reference's grid (``reference``: the T1's, as read). ``transforms``:
    :func:`transforms_statement`'s text where the caller has it already (the header is not read again)."""
    if transforms is None:
        transforms, _ = transforms_statement(Path(path), geometry)
    zeros = zero_border_share(array) if min(array.shape) >= 3 else 1.0
    return {"orientation": orientation_code(geometry), "voxel_mm": [round(float(v), 4) for v in geometry.spacing],
            "shape": [int(v) for v in geometry.shape], "transforms": transforms,
            "zero_border_share": round(zeros, 3), "skull_stripped": looks_skull_stripped(array, geometry.voxel_volume),
            "on_reference_grid": True if reference is None else bool(same_grid(reference, geometry))}
