"""Shapes the phantom generator draws with: smooth random fields, rotations, and the partial-volume
fractions of ellipsoids, capsules and lobulated cavities on a voxel grid (1 mm voxels, (x, y, z))."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi


@lru_cache(maxsize=32)
def _spline_upsampling(coarse: int, size: int) -> np.ndarray:
    """The ``size × coarse`` matrix of a 1-D cubic-spline zoom (``ndi.zoom``, mode nearest, grid mode)."""
    eye = np.eye(coarse)
    columns = [ndi.zoom(eye[a], size / coarse, order=3, mode="nearest", grid_mode=True)[:size] for a in range(coarse)]
    return np.stack(columns, 1)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int, amplitude: float) -> np.ndarray:
    """A smooth random field: Gaussian noise on a coarse grid, upsampled with cubic splines.

    The spline zoom is separable, so it is applied one axis at a time as a small matrix product (the
    same field as ``ndi.zoom`` of the whole grid, to float32 precision, 20-30× faster)."""
    small = rng.normal(0.0, amplitude, size=(coarse,) * len(shape)).astype(np.float32)
    out = small.astype(np.float64)
    for axis, size in enumerate(shape):
        out = np.moveaxis(np.tensordot(_spline_upsampling(coarse, size), out, axes=([1], [axis])), 0, axis)
    return out.astype(np.float32)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _ellipsoid_fraction(
    shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray, axes: np.ndarray, extent: float | None = None
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Partial-volume fraction of an oriented ellipsoid on a box of half-size ``extent`` (default:
    the largest radius + 2 voxels), returned with the box's slices."""
    r = float(radii.max()) + 2 if extent is None else extent
    lo = np.maximum(np.floor(centre - r).astype(int), 0)
    hi = np.minimum(np.ceil(centre + r).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pts = np.indices(hi - lo, dtype=np.float32).reshape(3, -1) + lo[:, None] - centre[:, None]
    local = axes.T @ pts  # coordinates along the ellipsoid's axes
    rho = np.sqrt(((local / radii[:, None]) ** 2).sum(0))
    # Signed distance to the surface, approximated along the ray, in voxels.
    sdist = (rho - 1.0) * np.sqrt((local**2).sum(0)) / np.maximum(rho, 1e-6)
    frac = np.clip(0.5 - sdist, 0.0, 1.0).reshape(hi - lo)
    return box, frac.astype(np.float32)


def _capsule_fraction(
    shape: tuple[int, ...], p0: np.ndarray, p1: np.ndarray, radius: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    lo = np.maximum(np.floor(np.minimum(p0, p1) - radius - 2).astype(int), 0)
    hi = np.minimum(np.ceil(np.maximum(p0, p1) + radius + 2).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pts = np.indices(hi - lo, dtype=np.float32).reshape(3, -1) + lo[:, None]
    seg = p1 - p0
    t = np.clip(((pts - p0[:, None]) * seg[:, None]).sum(0) / max(float(seg @ seg), 1e-6), 0, 1)
    closest = p0[:, None] + seg[:, None] * t
    dist = np.sqrt(((pts - closest) ** 2).sum(0))
    frac = np.clip(radius + 0.5 - dist, 0.0, 1.0).reshape(hi - lo)
    return box, frac.astype(np.float32)


def _lobulated_fraction(
    shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray, axes: np.ndarray, extent: float,
    lobes: np.ndarray, depth: float, width: float,
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Partial-volume fraction of a lobulated cavity (:class:`LacuneShapeConfig`) and its signed distance
    to the outline (voxels, approximate), on the box of half-size ``extent``; ``lobes``: unit vectors."""
    lo = np.maximum(np.floor(centre - extent).astype(int), 0)
    hi = np.minimum(np.ceil(centre + extent).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pts = np.indices(hi - lo, dtype=np.float32).reshape(3, -1) + lo[:, None] - centre[:, None]
    norm = np.sqrt((pts**2).sum(0))
    unit = pts / np.maximum(norm, 1e-6)
    bump = np.exp(-width * (1.0 - lobes @ unit)).max(0)  # 1 towards a lobe, falling off between them
    scale = (1.0 - depth) + depth * bump
    local = axes.T @ pts
    rho = np.sqrt(((local / radii[:, None]) ** 2).sum(0)) / scale
    sdist = (rho - 1.0) * norm / np.maximum(rho, 1e-6)
    frac = np.clip(0.5 - sdist, 0.0, 1.0).reshape(hi - lo)
    return box, frac.astype(np.float32), sdist.reshape(hi - lo).astype(np.float32)


def _extents_mm(label: np.ndarray, lo: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> tuple[float, ...]:
    """Extent of a labelled lesion along each of its axes (1 mm voxels)."""
    pts = np.argwhere(label).T.astype(np.float32) + lo[:, None] - centre[:, None]
    local = axes.T @ pts
    return tuple(float(v) for v in local.max(1) - local.min(1) + 1.0)


def _draw_diameter(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Small lacunes are more common than large ones: log-uniform over the range.
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _place(
    rng: np.random.Generator, sites: np.ndarray, taken: list[tuple[np.ndarray, float]], radius: float, gap: float
) -> np.ndarray | None:
    if len(sites) == 0:
        return None
    for _ in range(60):
        c = sites[rng.integers(len(sites))].astype(np.float32) + rng.uniform(-0.5, 0.5, 3)
        if all(np.linalg.norm(c - t) > radius + r + gap for t, r in taken):
            return c
    return None
