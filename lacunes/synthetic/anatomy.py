"""The anatomies phantoms are made from: tissue maps (grey matter, white matter, CSF, brain mask) at 1 mm,
arrays towards the right, anterior and superior, with the scanner millimetres of their first voxel.

- ``icbm152`` (:func:`load_template`): the ICBM152 2009a template that nilearn ships. The only anatomy
  training, the second stage and the operating point ever see.
- ``colin27`` (:func:`load_colin27`): the single-subject Colin27 head of Debian's ``mricron-data``
  (``ch2bet.nii.gz``, skull-stripped), its tissue maps derived from its T1 by a three-class intensity
  model with partial volume between neighbouring classes. A real anatomy kept for measurement: the
  benchmarks' out-of-family families and tests only, refused for training (:data:`MEASUREMENT_ONLY`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ANATOMIES = ("icbm152", "colin27")
#: Anatomies that may be measured on but never trained or calibrated on.
MEASUREMENT_ONLY = ("colin27",)
#: Where Debian's mricron-data puts the skull-stripped Colin27 head (``LACUNES_COLIN27`` overrides).
COLIN27_PATH = Path("/usr/share/mricron/templates/ch2bet.nii.gz")


@dataclass(frozen=True)
class _Template:
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # scanner mm (LPS) of the crop's voxel (0, 0, 0)


def _lps_origin(affine: np.ndarray, first: np.ndarray) -> tuple[float, float, float]:
    """Scanner mm (SimpleITK's LPS) of voxel ``first`` of a NIfTI image with RAS ``affine``."""
    ras = affine[:3, :3] @ np.asarray(first, float) + affine[:3, 3]
    return (-float(ras[0]), -float(ras[1]), float(ras[2]))


@lru_cache(maxsize=1)
def load_template(margin: int = 4) -> _Template:
    """ICBM152 2009a tissue maps from nilearn, cropped to the brain with a margin, float32 in [0, 1]
    (arrays towards the right, anterior and superior, as nilearn's files store them)."""
    try:
        import nibabel as nib
        from nilearn import datasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the phantom generator needs nibabel and nilearn: pip install 'lacunes[synth]'"
        ) from exc

    t1_image = nib.load(datasets.MNI152_FILE_PATH)
    if nib.aff2axcodes(t1_image.affine) != ("R", "A", "S"):  # pragma: no cover - nilearn's files are RAS
        raise ValueError(f"the template {datasets.MNI152_FILE_PATH} is not stored RAS")
    t1 = np.asarray(t1_image.dataobj, dtype=np.float32)
    gm = np.asarray(nib.load(datasets.GM_MNI152_FILE_PATH).dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(nib.load(datasets.WM_MNI152_FILE_PATH).dataobj, dtype=np.float32) / 255.0
    mask = t1 > 0
    crop, lo = _crop(mask, margin)
    gm, wm, mask = gm[crop] * mask[crop], wm[crop] * mask[crop], mask[crop]
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask.astype(np.float32) - gm - wm, 0.0, 1.0)
    return _Template(gm=gm, wm=wm, csf=csf, mask=mask.astype(np.float32), origin=_lps_origin(t1_image.affine, lo))


def _crop(mask: np.ndarray, margin: int) -> tuple[tuple[slice, ...], np.ndarray]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), lo


def colin27_path() -> Path:
    return Path(os.environ.get("LACUNES_COLIN27", COLIN27_PATH))


def tissue_fractions(t1: np.ndarray, mask: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, ...]:
    """CSF, GM and WM fractions of a skull-stripped T1: three intensity classes (k-means in one dimension,
    started at the brain's 10th, 50th and 90th percentiles), a voxel between two neighbouring class means
    shared between them linearly (partial volume). Returns ``(csf, gm, wm, means)``."""
    values = t1[mask].astype(np.float64)
    means = np.percentile(values, [10, 50, 90])
    for _ in range(iterations):
        nearest = np.argmin(np.abs(values[:, None] - means[None]), axis=1)
        new = np.array([values[nearest == k].mean() if (nearest == k).any() else means[k] for k in range(3)])
        if np.allclose(new, means):
            break
        means = new
    v = t1.astype(np.float32)
    a = np.clip((v - means[0]) / (means[1] - means[0]), 0, 1)  # 0 = CSF, 1 = GM
    b = np.clip((v - means[1]) / (means[2] - means[1]), 0, 1)  # 0 = GM, 1 = WM
    csf = np.where(v <= means[1], 1 - a, 0.0)
    wm = np.where(v > means[1], b, 0.0)
    gm = 1.0 - csf - wm
    m = mask.astype(np.float32)
    return (csf * m).astype(np.float32), (gm * m).astype(np.float32), (wm * m).astype(np.float32), means


@lru_cache(maxsize=1)
def load_colin27(margin: int = 4) -> _Template:
    """The Colin27 head (module docstring), cropped to the brain with a margin.

    Raises:
        FileNotFoundError: without Debian's ``mricron-data`` (naming the path and the package).
    """
    import nibabel as nib

    path = colin27_path()
    if not path.is_file():
        raise FileNotFoundError(f"no Colin27 head at {path}: apt-get install mricron-data (or set LACUNES_COLIN27)")
    image = nib.as_closest_canonical(nib.load(str(path)))  # arrays towards the right, anterior, superior
    zooms = np.asarray(image.header.get_zooms()[:3], float)
    if not np.allclose(zooms, 1.0, atol=1e-3):
        raise ValueError(f"{path}: expected 1 mm voxels, got {tuple(zooms)}")
    t1 = np.asarray(image.dataobj, dtype=np.float32)
    labels, n = ndi.label(t1 > 0)
    if n == 0:
        raise ValueError(f"{path}: no brain (all zero)")
    mask = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    mask = ndi.binary_fill_holes(mask)
    crop, lo = _crop(mask, margin)
    csf, gm, wm, _ = tissue_fractions(t1[crop], mask[crop])
    return _Template(gm=gm, wm=wm, csf=csf, mask=mask[crop].astype(np.float32), origin=_lps_origin(image.affine, lo))


def load_anatomy(name: str) -> _Template:
    """The anatomy ``name`` (:data:`ANATOMIES`)."""
    if name == "icbm152":
        return load_template()
    if name == "colin27":
        return load_colin27()
    raise ValueError(f"unknown anatomy {name!r} (the anatomies: {', '.join(ANATOMIES)})")
