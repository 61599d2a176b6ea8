"""Finite-value checks and quantile normalization, shared by training and inference.

Normalization (per channel): the foreground is the voxels that are not exactly 0 (the inputs are
skull-stripped, so the background is 0); the 0.5 % and 99.5 % quantiles of the foreground map to 0
and 1, values beyond are kept up to :data:`CLIP` = [-1, 3] (a bright FLAIR rim stays bright: the
phantoms span about [-0.25, 2]) and clipped there, so that one extreme voxel (a corrupt 1e30, a
spike) cannot dominate the network's instance normalization and change the map far from it; the
background stays exactly 0, which is also the value the sliding window pads with. A channel without
foreground, or whose quantiles coincide (a constant volume), becomes all zeros instead of NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lacunes.options import NORMALIZATION_QUANTILES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormalizationConfig:
    """Quantiles of the foreground mapped to 0 and 1."""

    lower: float = NORMALIZATION_QUANTILES[0]
    upper: float = NORMALIZATION_QUANTILES[1]

    def __post_init__(self) -> None:
        if not 0.0 <= self.lower < self.upper <= 1.0:
            raise ValueError(f"need 0 <= lower < upper <= 1, got lower={self.lower}, upper={self.upper}")


#: Range of the normalized intensities (quantiles at 0 and 1); values outside are clipped.
CLIP = (-1.0, 3.0)


class NonFiniteError(ValueError):
    """Training data holds NaN or ±inf."""


def count_nonfinite(image: np.ndarray) -> list[int]:
    """NaN/±inf count per channel of a ``C×X×Y×Z`` array."""
    return [int(c.size - np.count_nonzero(np.isfinite(c))) for c in image]


def repair_nonfinite(image: np.ndarray) -> np.ndarray:
    """Replace non-finite voxels, per channel: NaN → 0 (background), +inf → the channel's largest
    finite value, -inf → its smallest (0 where the channel has no finite value). Returns a copy only
    when something was replaced."""
    if np.isfinite(image).all():
        return image
    out = image.copy()
    for c in out:
        finite = np.isfinite(c)
        hi = float(c[finite].max()) if finite.any() else 0.0
        lo = float(c[finite].min()) if finite.any() else 0.0
        c[np.isnan(c)] = 0.0
        c[np.isposinf(c)] = hi
        c[np.isneginf(c)] = lo
    return out


def assert_finite(array: np.ndarray, name: str) -> None:
    """Raise :class:`NonFiniteError` naming ``name`` (a file) if ``array`` holds NaN or ±inf."""
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise NonFiniteError(f"{name} holds {bad} non-finite voxel(s)")


def quantile_normalize(image: np.ndarray, config: NormalizationConfig = NormalizationConfig()) -> np.ndarray:
    """Normalize each channel of a ``C×X×Y×Z`` array (see the module docstring); float32 out."""
    out = np.zeros(image.shape, dtype=np.float32)
    for i, channel in enumerate(image):
        fg = channel != 0
        if not fg.any():
            continue
        values = channel[fg].astype(np.float64)
        lo, hi = np.quantile(values, [config.lower, config.upper])
        if not hi > lo:
            continue
        out[i][fg] = np.clip((values - lo) / (hi - lo), *CLIP).astype(np.float32)
    return out


def prepare_image(image: np.ndarray, config: NormalizationConfig = NormalizationConfig()) -> np.ndarray:
    """Inference preprocessing: repair non-finite voxels, then normalize."""
    return quantile_normalize(repair_nonfinite(image), config)


#: A voxel belongs to the head's foreground when some channel exceeds this share of that channel's
#: 99th percentile of non-zero values: exactly-zero backgrounds (skull-stripped inputs) and faint
#: background noise both stay outside.
FOREGROUND_FRACTION = 0.02
#: Closing radius (voxels) that bridges dark gaps in the mask's edge (sulcal CSF is dark on FLAIR,
#: but bright on T2, so only one channel needs to be non-zero there).
MASK_CLOSING = 2


def brain_mask(image: np.ndarray, min_component_share: float = 0.05) -> np.ndarray:
    """The brain of a skull-stripped ``C×X×Y×Z`` image, boolean (x, y, z).

    Foreground = some channel above :data:`FOREGROUND_FRACTION` of its 99th percentile of non-zero
    values (non-finite voxels count as background); connected components smaller than
    ``min_component_share`` of the largest are dropped (isolated noise outside the brain); the rest is
    closed with a ball of :data:`MASK_CLOSING` voxels and its interior holes are filled (dark
    ventricles or lesions never open the mask). An image without foreground gives an empty mask.
    """
    from scipy import ndimage as ndi

    if image.ndim != 4:
        raise ValueError(f"expected a C×X×Y×Z array, got shape {image.shape}")
    fg = np.zeros(image.shape[1:], bool)
    for channel in image:
        finite = np.isfinite(channel)
        values = np.abs(channel[finite & (channel != 0)])
        if values.size == 0:
            continue
        level = FOREGROUND_FRACTION * float(np.percentile(values, 99))
        fg |= finite & (np.abs(np.nan_to_num(channel)) > level)
    from lacunes.instances import bounding_box

    box = bounding_box(fg)
    if box is None:
        return fg
    # Components, closing and holes all lie inside the foreground's box: work there (a clinical field
    # of view is mostly empty), with the same zero padding at its faces as at the volume's.
    full, fg = fg, fg[box]
    labels, n = ndi.label(fg, structure=ndi.generate_binary_structure(3, 3))
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_component_share * sizes.max()) + 1
        fg = np.isin(labels, keep)
    r = MASK_CLOSING
    ball = np.sum(np.square(np.indices((2 * r + 1,) * 3) - r), axis=0) <= r * r
    padded = np.pad(fg, r + 1)
    closed = ndi.binary_closing(padded, structure=ball)[(slice(r + 1, -(r + 1)),) * 3]
    out = np.zeros(full.shape, bool)
    out[box] = ndi.binary_fill_holes(closed | fg)
    return out
