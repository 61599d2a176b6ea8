"""A volume's grid (:class:`Geometry`) and what compares or resamples grids in scanner space: the lowest
floor of the image modules, which reading (:mod:`lacunes.io`), writing (:mod:`lacunes.writing`) and the
conforming to the model's space (:mod:`lacunes.conform`) build on.

Arrays are indexed (x, y, z) — SimpleITK's (z, y, x) arrays are transposed on the way in and out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lacunes.errors import GeometryMismatchError

if TYPE_CHECKING:  # imported where images are resampled or written: the predictor on arrays needs no SimpleITK
    import SimpleITK as sitk

logger = logging.getLogger(__name__)

#: Relative tolerance on spacing between modalities (an error beyond it).
SPACING_RTOL = 1e-3
#: Origin difference in mm and direction-cosine difference beyond which a warning is logged.
ORIGIN_ATOL_MM = 1e-2
DIRECTION_ATOL = 1e-3
#: Beyond these, images that must share a grid are refused (the same index is elsewhere in the scanner):
#: an origin difference over half the smallest voxel, a direction cosine off by more than 0.01 (~0.6°).
ORIGIN_ERROR_VOXELS = 0.5
DIRECTION_ERROR = 1e-2


@dataclass(frozen=True)
class Geometry:
    """Grid of a volume: shape (x, y, z), spacing (mm), origin (mm) and direction (row-major 3×3)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return float(np.prod(self.spacing))

    @classmethod
    def from_image(cls, image: sitk.Image) -> Geometry:
        return cls(
            shape=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(s) for s in image.GetOrigin()),
            direction=tuple(float(s) for s in image.GetDirection()),
        )

    def physical(self, index) -> np.ndarray:
        """Scanner coordinates (mm, the image's LPS frame as SimpleITK reads it) of voxel indices ``index``
        (``(..., 3)``, fractional allowed): origin + direction · (index × spacing)."""
        d = np.asarray(self.direction, float).reshape(3, 3)
        return np.asarray(self.origin, float) + (np.asarray(index, float) * np.asarray(self.spacing, float)) @ d.T

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


#: Appended to grid-mismatch errors of a subject's modalities.
RESAMPLE_HINT = ("; if the images are registered (same physical space) but on other grids, --resample "
                 "(LACUNES_RESAMPLE=1 in the container) resamples T2 and FLAIR onto the T1's grid")


def same_grid(a: Geometry, b: Geometry) -> bool:
    """Same shape and spacing (within :data:`SPACING_RTOL`), origin and direction (within tolerances)."""
    return (a.shape == b.shape and np.allclose(a.spacing, b.spacing, rtol=SPACING_RTOL, atol=0)
            and np.allclose(a.origin, b.origin, atol=ORIGIN_ATOL_MM, rtol=0)
            and np.allclose(a.direction, b.direction, atol=DIRECTION_ATOL, rtol=0))


def physical_box(geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest scanner coordinates (mm) of a grid's field of view, voxel edges included."""
    direction = np.asarray(geom.direction, float).reshape(3, 3)
    spacing = np.asarray(geom.spacing, float)
    corners = np.array([[-0.5 + n * bit for n, bit in zip(geom.shape, bits)]
                        for bits in np.ndindex(2, 2, 2)])  # index space, edges at -0.5 and n - 0.5
    points = np.asarray(geom.origin, float) + (corners * spacing) @ direction.T
    return points.min(0), points.max(0)


def check_same_space(reference: Geometry, other: Geometry, ref_name: str, other_name: str) -> None:
    """Raise :class:`GeometryMismatchError` unless both fields of view cover the same physical space:
    every face of the two boxes within one voxel of the coarser grid (along any axis)."""
    lo_a, hi_a = physical_box(reference)
    lo_b, hi_b = physical_box(other)
    tolerance = max(max(reference.spacing), max(other.spacing))
    gap = max(np.abs(lo_a - lo_b).max(), np.abs(hi_a - hi_b).max())
    if gap > tolerance:
        raise GeometryMismatchError(
            f"{other_name} does not cover the same physical space as {ref_name} (fields of view "
            f"{np.round(lo_b, 1).tolist()}–{np.round(hi_b, 1).tolist()} mm vs {np.round(lo_a, 1).tolist()}–"
            f"{np.round(hi_a, 1).tolist()} mm, {gap:.1f} mm apart; at most {tolerance:g} mm allowed): "
            "register it to the T1 first")


def resample_to(array: np.ndarray, geom: Geometry, target: Geometry) -> np.ndarray:
    """``array`` (on ``geom``) linearly resampled onto ``target`` in scanner space; 0 outside its field
    of view. A skull-stripped image (background exactly 0) is resampled as one, as
    :func:`lacunes.conform.resample_masked` does: image and non-zero mask interpolated alike and
    divided, background where the mask falls under 0.5, so that no ring of background-blended voxels
    moves the normalization's quantiles. float32 (x, y, z)."""
    import SimpleITK as sitk

    array = np.asarray(array, np.float32)
    reference = to_sitk(np.zeros(target.shape, np.uint8), target)

    def linear(a: np.ndarray) -> np.ndarray:
        out = sitk.Resample(to_sitk(a, geom), reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out).transpose(2, 1, 0)

    return masked_linear(array, linear)


def check_same_grid(geometries: dict[Path, Geometry], hint: str = "") -> None:
    """Shape or spacing differences, an origin shifted by more than half a voxel or another direction
    (a misregistered or mirrored modality) are errors naming the files (``hint`` appended); smaller
    origin or direction differences (header rounding) warnings."""
    items = list(geometries.items())
    ref_path, ref = items[0]
    for path, geom in items[1:]:
        if geom.shape != ref.shape:
            raise GeometryMismatchError(
                f"shape mismatch: {ref_path.name} is {ref.shape}, {path.name} is {geom.shape}{hint}"
            )
        if not np.allclose(geom.spacing, ref.spacing, rtol=SPACING_RTOL, atol=0):
            raise GeometryMismatchError(
                f"spacing mismatch: {ref_path.name} has {ref.spacing}, {path.name} has {geom.spacing}{hint}"
            )
        shift = float(np.abs(np.subtract(geom.origin, ref.origin)).max())
        turn = float(np.abs(np.subtract(geom.direction, ref.direction)).max())
        shifted = shift > ORIGIN_ERROR_VOXELS * min(ref.spacing)
        if shifted or turn > DIRECTION_ERROR:
            # the same voxel index is another place in the scanner: mixing them voxel by voxel is wrong
            raise GeometryMismatchError(
                f"{path.name} is not on the grid of {ref_path.name}: "
                + (f"origin {tuple(round(v, 3) for v in geom.origin)} vs {tuple(round(v, 3) for v in ref.origin)} "
                   f"({shift:.2f} mm apart)" if shifted else
                   f"direction {tuple(round(v, 3) for v in geom.direction)} vs "
                   f"{tuple(round(v, 3) for v in ref.direction)}") + hint)
        if shift > ORIGIN_ATOL_MM:
            logger.warning("origin differs: %s %s vs %s %s (%.3f mm, under half a voxel: using the first)",
                           ref_path.name, ref.origin, path.name, geom.origin, shift)
        if turn > DIRECTION_ATOL:
            logger.warning("direction differs slightly: %s vs %s (using the first)", ref_path.name, path.name)


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """An (x, y, z) array as a SimpleITK image carrying ``geometry``."""
    import SimpleITK as sitk

    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match the geometry's {geometry.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    return geometry.apply_to(image)


def masked_linear(channel: np.ndarray, linear) -> np.ndarray:
    """One skull-stripped volume through ``linear`` (any linear resampler, array → float32 array) as
    :func:`resample_masked` describes: image and non-zero mask resampled alike and divided, background
    where the mask falls under 0.5; a volume without exact zeros is just ``linear(channel)``."""
    inside = channel != 0
    value = linear(channel)
    if inside.all():
        return value
    weight = linear(inside.astype(np.float32))
    keep = weight >= 0.5
    out = np.zeros(value.shape, np.float32)
    out[keep] = value[keep] / weight[keep]
    return out


def register_mutual_information(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, kind,
                                *, sampling: float, learning_rate: float, min_step: float, iterations: int,
                                smoothing_mm: tuple[float, float, float], fixed_mask: sitk.Image | None = None,
                                max_samples: int | None = None):
    """SimpleITK's registration of ``moving`` onto ``fixed`` from ``initial``: Mattes mutual information
    (32 bins, a random ``sampling`` share of the voxels, seed 1; on the last, full-resolution level at most
    ``max_samples`` voxels where given, so that a large field of view costs no more than a small one),
    linear interpolation, regular-step gradient
    descent with scales from physical shifts, three levels (shrink 4, 2, 1; ``smoothing_mm``). The metric is
    evaluated the same way at the start and at the end (the optimizer's last value is on its last level's
    sample). Returns the final transform (as ``kind``, e.g. ``sitk.Euler3DTransform``), the metric before
    and after (lower is better) and the optimizer's stop condition. Raises SimpleITK's RuntimeError."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    finest = sampling if max_samples is None else min(sampling, max_samples / fixed.GetNumberOfPixels())
    method.SetMetricSamplingPercentagePerLevel([sampling, sampling, finest], seed=1)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=min_step,
                                                   numberOfIterations=iterations, relaxationFactor=0.5,
                                                   gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel(list(smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    before = method.MetricEvaluate(fixed, moving)
    result = method.Execute(fixed, moving)
    final = kind(sitk.CompositeTransform(result).GetNthTransform(0))
    method.SetInitialTransform(final, inPlace=False)
    after = method.MetricEvaluate(fixed, moving)
    return final, before, after, method.GetOptimizerStopConditionDescription()
