"""To the model's space and back: every subject meets the network in the orientation and voxel size it
was trained in, and every output lands on the input's own grid.

Two steps, planned from the input's geometry alone (:func:`plan`):

1. **Reorientation** — a permutation and flips of the array axes, read from the direction matrix: each
   array axis goes to the model axis its direction is closest to (the permutation that maximizes the
   summed alignment), flipped when it points the other way. Lossless; its inverse is exact. A
   sagittally stored scan or an LPS-stored one thus reaches the network in the array order of
   training. A residual obliqueness (a direction a few degrees off the axes) is left as it is: the
   training's random affine covers it.
2. **Resampling** — when the reoriented voxel size differs from the model's by more than
   :attr:`ModelSpace.spacing_rtol`, the volume is linearly interpolated onto a grid of the model's
   voxel size covering the same field of view (centred on it), skull-stripped inputs as such
   (:func:`resample_masked`: the background's zeros are not blended into the brain's edge, which
   would move the quantiles the normalization maps to 0 and 1). The probability map goes back by cubic
   B-spline interpolation (:data:`PROBABILITY_ORDER`: linear interpolation erodes small lesions), the
   uncertainty map linearly; lesions cut at 0.5 keep their extent and volume up to the native grid's
   own discretization (tests/test_conform.py).

Pure NumPy/SciPy (no SimpleITK, no torch): the phantom generator uses the same resampling to show the
network conformed low-resolution scans (:func:`resample_axis_aligned`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from lacunes.geometry import Geometry, masked_linear
from lacunes.options import RAS_DIRECTION

logger = logging.getLogger(__name__)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
#: Spline order of probability maps going back to the native grid. Linear interpolation cuts the chord
#: under a lesion's curved border, eroding small lesions: mapped back to 0.7 or 1.3 mm voxels, a
#: 3.4 mm lesion kept 81-85 % of its volume, a 5 mm one 91 %; cubic B-splines keep 98-100 % (mean over
#: 16 positions, against the same lesion drawn directly on the native grid; tests/test_conform.py).
PROBABILITY_ORDER = 3


@dataclass(frozen=True)
class ModelSpace:
    """The orientation and voxel size a network was trained in (stored in its checkpoint).

    Attributes:
        spacing: voxel size (mm) along the model's array axes.
        direction: row-major 3×3 direction matrix of the training arrays (SimpleITK's convention;
            the phantoms' arrays run towards the right, anterior and superior: :data:`RAS_DIRECTION`).
        spacing_rtol: relative voxel-size difference under which a volume is not resampled.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    direction: tuple[float, ...] = RAS_DIRECTION
    spacing_rtol: float = 0.05

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be 3 positive sizes, got {self.spacing}")
        if len(self.direction) != 9:
            raise ValueError(f"direction must have 9 entries, got {len(self.direction)}")
        if not 0 <= self.spacing_rtol < 1:
            raise ValueError(f"spacing_rtol must be in [0, 1), got {self.spacing_rtol}")

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "direction": list(self.direction), "spacing_rtol": self.spacing_rtol}

    @classmethod
    def from_dict(cls, d: dict | None) -> ModelSpace:
        """The stored space; a checkpoint without one was trained on 1 mm phantoms (:data:`RAS_DIRECTION`)."""
        if not d:
            return cls()
        return cls(tuple(float(v) for v in d["spacing"]), tuple(float(v) for v in d["direction"]),
                   float(d.get("spacing_rtol", 0.05)))


def _matrix(direction) -> np.ndarray:
    return np.asarray(direction, float).reshape(3, 3)


def orientation(direction, target=IDENTITY) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Permutation and flips that bring arrays of ``direction`` to ``target``'s orientation.

    Returns ``(axes, flips)``: model axis ``i`` is the input's axis ``axes[i]``, reversed where
    ``flips[i]``. Among the 6 permutations the one that best aligns the axes (largest summed
    ``|cos|``) is taken, so an oblique scan goes to its nearest orientation."""
    d = _matrix(target).T @ _matrix(direction)  # column j: input axis j in the target's frame
    axes = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[i, p[i]]) for i in range(3)))
    flips = tuple(bool(d[i, axes[i]] < 0) for i in range(3))
    return tuple(int(a) for a in axes), flips


def reorient_geometry(geom: Geometry, axes, flips) -> Geometry:
    """The grid of the reoriented array, covering the same voxels in scanner space."""
    d = _matrix(geom.direction)
    origin = np.asarray(geom.origin, float)
    columns = []
    for a, f in zip(axes, flips):
        column = d[:, a] * (-1.0 if f else 1.0)
        if f:  # the last voxel along the flipped axis becomes the first
            origin = origin + d[:, a] * geom.spacing[a] * (geom.shape[a] - 1)
        columns.append(column)
    direction = np.stack(columns, axis=1) + 0.0  # no -0.0 in the stored matrix
    return Geometry(shape=tuple(int(geom.shape[a]) for a in axes),
                    spacing=tuple(float(geom.spacing[a]) for a in axes),
                    origin=tuple(float(v) for v in origin),
                    direction=tuple(float(v) for v in direction.ravel()))


def reorient(array: np.ndarray, axes, flips) -> np.ndarray:
    """The last three axes of ``array`` permuted and flipped (:func:`orientation`)."""
    lead = array.ndim - 3
    out = np.transpose(array, (*range(lead), *(lead + a for a in axes)))
    flipped = tuple(lead + i for i, f in enumerate(flips) if f)
    return np.ascontiguousarray(np.flip(out, flipped) if flipped else out)


def unreorient(array: np.ndarray, axes, flips) -> np.ndarray:
    """The inverse of :func:`reorient` (exact)."""
    lead = array.ndim - 3
    flipped = tuple(lead + i for i, f in enumerate(flips) if f)
    out = np.flip(array, flipped) if flipped else array
    inverse = np.argsort(axes)
    return np.ascontiguousarray(np.transpose(out, (*range(lead), *(lead + int(a) for a in inverse))))


def grid_with_spacing(geom: Geometry, spacing) -> Geometry:
    """A grid of voxel size ``spacing``, same direction, covering ``geom``'s field of view (centred on
    it; each axis gets ``round(extent / spacing)`` voxels, at least 1)."""
    spacing = np.asarray(spacing, float)
    old = np.asarray(geom.spacing, float)
    n_old = np.asarray(geom.shape, float)
    n_new = np.maximum(1, np.round(n_old * old / spacing)).astype(int)
    # Index of the new grid's first voxel centre in the old grid's index space.
    first = -0.5 + ((n_old * old - n_new * spacing) / 2 + spacing / 2) / old
    origin = np.asarray(geom.origin, float) + _matrix(geom.direction) @ (first * old)
    return Geometry(shape=tuple(int(n) for n in n_new), spacing=tuple(float(s) for s in spacing),
                    origin=tuple(float(v) for v in origin), direction=geom.direction)


def resample_axis_aligned(array: np.ndarray, source: Geometry, target: Geometry, order: int = 1) -> np.ndarray:
    """``array`` (last three axes on ``source``) interpolated onto ``target``, a grid with the same
    direction (axis-aligned to it): a per-axis scale and shift, SciPy's spline interpolation of
    ``order`` (1 = linear), values beyond the field of view from its nearest voxel. float32."""
    from scipy import ndimage as ndi

    d = _matrix(source.direction)
    if not np.allclose(d, _matrix(target.direction), atol=1e-6):
        raise ValueError("resample_axis_aligned needs grids with the same direction")
    scale = np.asarray(target.spacing, float) / np.asarray(source.spacing, float)
    shift = (d.T @ (np.asarray(target.origin, float) - np.asarray(source.origin, float))) / np.asarray(source.spacing)
    lead = array.shape[:-3]
    flat = np.asarray(array, np.float32).reshape(-1, *array.shape[-3:])
    out = np.empty((flat.shape[0], *target.shape), np.float32)
    for k, channel in enumerate(flat):
        ndi.affine_transform(channel, scale, offset=shift, output_shape=tuple(target.shape), output=out[k],
                             order=order, mode="nearest", prefilter=order > 1)
    return out.reshape(*lead, *target.shape)


def resample_masked(array: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """A skull-stripped image (``…×X×Y×Z``, background exactly 0) linearly resampled as one: per
    channel, the non-zero voxels' mask and the image are interpolated alike and divided (normalized
    convolution), and the target voxels where the mask interpolates under 0.5 are background.

    Plain linear interpolation blends the background's zeros into the brain's edge: a ring of voxels
    between 0 and the tissue's values, some 4 % of the brain after one resampling, enough to pull the
    0.5 % quantile that the normalization maps to 0 from the tissue (T2 white matter at 320) down to
    about 0 (the held-out phantoms at 0.7 or 1.3 mm), so that every intensity the network and the
    second stage see shifts. Here the brain keeps its edge and its values. A volume without exact
    zeros (not skull-stripped) is resampled exactly as :func:`resample_axis_aligned` does. float32."""
    lead = array.shape[:-3]
    flat = np.asarray(array, np.float32).reshape(-1, *array.shape[-3:])
    out = [masked_linear(channel, lambda a: resample_axis_aligned(a, source, target)) for channel in flat]
    return np.stack(out).reshape(*lead, *target.shape)


@dataclass(frozen=True)
class Conform:
    """How one input grid maps to the model's space (:func:`plan`), and back.

    Attributes:
        native: the input's grid.
        axes, flips: the reorientation (:func:`orientation`).
        oriented: the grid after reorientation.
        model: the grid the network sees (``oriented``, resampled when ``resampled``).
        resampled: the voxel size differed from the model's beyond its tolerance.
    """

    native: Geometry
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    oriented: Geometry
    model: Geometry
    resampled: bool

    @property
    def reoriented(self) -> bool:
        return self.axes != (0, 1, 2) or any(self.flips)

    @property
    def identity(self) -> bool:
        return not (self.reoriented or self.resampled)

    def to_model(self, array: np.ndarray) -> np.ndarray:
        """An image (``…×X×Y×Z`` on the native grid) in the model's space: reoriented, then linearly
        resampled when needed, its background kept out of the brain's edge (:func:`resample_masked`)."""
        out = reorient(array, self.axes, self.flips)
        return resample_masked(out, self.oriented, self.model) if self.resampled else out

    def mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """A binary mask (a rater's label) in the model's space: reoriented, and where resampled,
        linearly interpolated and cut at 0.5 (uint8)."""
        out = reorient(np.asarray(mask), self.axes, self.flips)
        if not self.resampled:
            return (out > 0).astype(np.uint8)
        return (resample_axis_aligned((out > 0).astype(np.float32), self.oriented, self.model) >= 0.5).astype(np.uint8)

    def to_native(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """A map in the model's space back on the native grid: resampled when needed (spline ``order``,
        1 = linear), then the exact inverse reorientation."""
        out = resample_axis_aligned(array, self.model, self.oriented, order) if self.resampled else array
        return unreorient(out, self.axes, self.flips)

    def probability_to_native(self, probability: np.ndarray) -> np.ndarray:
        """A probability map back on the native grid, by cubic B-spline (:data:`PROBABILITY_ORDER`) and
        clipped to [0, 1], so that lesions cut at 0.5 keep their volume."""
        return np.clip(self.to_native(probability, PROBABILITY_ORDER), 0.0, 1.0)

    def describe(self) -> str:
        parts = []
        if self.reoriented:
            parts.append(f"array axes {self.axes} reordered"
                         + (f", flipped along {[i for i, f in enumerate(self.flips) if f]}" if any(self.flips) else ""))
        if self.resampled:
            parts.append("resampled from " + "×".join(f"{v:.3g}" for v in self.oriented.spacing) + " mm to "
                         + "×".join(f"{v:.3g}" for v in self.model.spacing) + " mm ("
                         + "×".join(map(str, self.model.shape)) + " voxels)")
        return "; ".join(parts) or "already in the model's space"

    def to_dict(self) -> dict:
        return {"reoriented": self.reoriented, "axes": list(self.axes), "flips": list(self.flips),
                "resampled": self.resampled, "input_spacing": list(self.native.spacing),
                "model_shape": list(self.model.shape)}


#: Voxels thicker than this (mm) along some axis are named in a warning: resampling to the model's
#: voxel size cannot bring back what thick slices blurred, and the smallest lacunes may be missed.
THICK_SLICE_MM = 2.0


def plan(geom: Geometry, space: ModelSpace = ModelSpace()) -> Conform:
    """Plan the way from ``geom`` to ``space`` (:class:`Conform`); nothing is computed on voxels."""
    if max(geom.spacing) > THICK_SLICE_MM:
        logger.warning("voxels of %s mm: resampled to %s mm, but what slices thicker than %g mm blurred cannot be "
                       "brought back; lacunes smaller than about %.0f mm may be missed", "×".join(f"{v:g}" for v in
                       geom.spacing), "×".join(f"{v:g}" for v in space.spacing), THICK_SLICE_MM, max(geom.spacing))
    axes, flips = orientation(geom.direction, space.direction)
    oriented = reorient_geometry(geom, axes, flips)
    resampled = not np.allclose(oriented.spacing, space.spacing, rtol=space.spacing_rtol, atol=0)
    model = grid_with_spacing(oriented, space.spacing) if resampled else oriented
    return Conform(geom, axes, flips, oriented, model, bool(resampled))
