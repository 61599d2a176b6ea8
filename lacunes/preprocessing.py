"""Finite-value checks and quantile normalization, shared by training and inference.

Normalization (per channel): the foreground is the voxels that are not exactly 0 (the inputs are
skull-stripped, so the background is 0); the 0.5 % and 99.5 % quantiles of the foreground map to 0
and 1 (values beyond are kept, not clipped: a bright FLAIR rim stays bright), and the background stays
exactly 0, which is also the value the sliding window pads with. A channel without foreground, or
whose quantiles coincide (a constant volume), becomes all zeros instead of NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormalizationConfig:
    """Quantiles of the foreground mapped to 0 and 1."""

    lower: float = 0.005
    upper: float = 0.995

    def __post_init__(self) -> None:
        if not 0.0 <= self.lower < self.upper <= 1.0:
            raise ValueError(f"need 0 <= lower < upper <= 1, got lower={self.lower}, upper={self.upper}")


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
        out[i][fg] = ((values - lo) / (hi - lo)).astype(np.float32)
    return out


def prepare_image(image: np.ndarray, config: NormalizationConfig = NormalizationConfig()) -> np.ndarray:
    """Inference preprocessing: repair non-finite voxels, then normalize."""
    return quantile_normalize(repair_nonfinite(image), config)
