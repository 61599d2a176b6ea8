"""Connected components (26-connectivity by default), their centres and per-lesion tables: the one
implementation behind the CLI's lesion table, the quality-control pictures' volumes and the metrics'
lesion matching."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

_RANK = {6: 1, 18: 2, 26: 3}


#: Scanner LPS (SimpleITK's frame) to RAS, and back: the first two coordinates change sign.
RAS_FROM_LPS = np.array([-1.0, -1.0, 1.0])
#: The lesion table's centre columns (scanner RAS, mm).
CENTRE_COLUMNS = ("centre_R_mm", "centre_A_mm", "centre_S_mm")

def structure(connectivity: int = 26) -> np.ndarray:
    """The 3×3×3 structuring element of 6-, 18- or 26-connectivity."""
    if connectivity not in _RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return ndi.generate_binary_structure(3, _RANK[connectivity])


def label_instances(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the connected components of a binary (x, y, z) mask: int32 labels 1..n, 0 = background."""
    labels, n = ndi.label(np.asarray(mask) > 0, structure=structure(connectivity))
    return labels.astype(np.int32, copy=False), int(n)


def label_measures(labels: np.ndarray, index, values: np.ndarray | None = None):
    """Voxel counts, centres of mass (voxel index, float, ``len(index)×3``) and, with ``values``, the
    maxima of ``values`` of the given labels, from one pass over the labelled voxels only: scipy's
    ``sum_labels``/``center_of_mass``/``maximum`` numbers to the last bit (their sums are bincounts over
    the flat order) without passes over the whole volume. A label with no voxel: count 0, centre NaN and
    maximum -inf. Returns ``(counts, centres, maxima or None)``."""
    index = np.atleast_1d(np.asarray(index, dtype=np.int64))
    if index.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, labels.ndim)), None if values is None else np.zeros(0)
    flat = np.flatnonzero(labels)
    which = labels.ravel()[flat]
    size = max(int(which.max(initial=0)), int(index.max())) + 1
    counts = np.bincount(which, minlength=size)[index]
    with np.errstate(invalid="ignore", divide="ignore"):
        centres = np.stack([np.bincount(which, weights=idx.astype(float), minlength=size)[index] / counts
                            for idx in np.unravel_index(flat, labels.shape)], axis=1)
    maxima = None
    if values is not None:
        peak = np.full(size, -np.inf)
        np.maximum.at(peak, which, values.ravel()[flat])
        maxima = peak[index]
    return counts, centres, maxima


def label_centres(labels: np.ndarray, index) -> np.ndarray:
    """Centres of mass (voxel index, float) of the given labels, ``len(index)×3`` (:func:`label_measures`)."""
    return label_measures(labels, index)[1]


def lesion_centres_mm(labels: np.ndarray, n: int, spacing: tuple[float, ...]) -> np.ndarray:
    """Centres of mass of labels 1..n in mm (voxel index × spacing), ``n×3``: the metrics' lesion
    matching and the lesion table (which adds origin and direction) share them."""
    if n == 0:
        return np.zeros((0, 3))
    return label_centres(labels, np.arange(1, n + 1)) * np.asarray(spacing)[None]


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The bounding box of a mask's true voxels grown by ``margin`` (clipped), or None when empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def lesion_table(
    probability: np.ndarray,
    uncertainty: np.ndarray | None,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    threshold: float = 0.5,
    connectivity: int = 26,
    direction: tuple[float, ...] | None = None,
    locate=None,
) -> list[dict]:
    """One row per predicted lesion (component of ``probability >= threshold``).

    Columns: id, voxels, volume_mm3, centre_R_mm, centre_A_mm, centre_S_mm (the centre in scanner RAS
    coordinates, millimetres towards the right, anterior and superior: the image's LPS point origin +
    direction · (index × spacing), as SimpleITK reads it, with its first two signs turned; identity direction
    when none is given), mean_probability, max_probability, mean_uncertainty (NaN without an uncertainty
    map); with ``locate`` (a callable given each lesion's voxel indices on the whole grid, ``N×3``, returning
    a dict of further columns: :class:`lacunes.regions.Locator`), its columns too.
    Lesions are numbered by size, largest first (ties: by centre), so that a lesion keeps its number in
    every table and picture of a subject. Computed inside the lesions' bounding box.
    """
    mask = probability >= threshold
    box = bounding_box(mask)
    rows = []
    if box is None:
        return rows
    labels, n = label_instances(mask[box], connectivity)
    idx = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    start = np.array([b.start for b in box], float) * np.asarray(spacing, float)
    centres = lesion_centres_mm(labels, n, spacing) + start[None]  # mm from the grid's first voxel
    maxima = ndi.maximum(probability[box], labels, idx)
    mean_p = ndi.mean(probability[box], labels, idx)
    means = ndi.mean(uncertainty[box], labels, idx) if uncertainty is not None else [float("nan")] * n
    voxel = float(np.prod(spacing))
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    for i in range(n):
        centre = (np.asarray(origin, float) + d @ centres[i]) * RAS_FROM_LPS
        rows.append({
            "id": i + 1,
            "voxels": int(counts[i]),
            "volume_mm3": float(counts[i]) * voxel,
            "centre_R_mm": round(float(centre[0]), 3) + 0.0,
            "centre_A_mm": round(float(centre[1]), 3) + 0.0,
            "centre_S_mm": round(float(centre[2]), 3) + 0.0,
            "mean_probability": float(mean_p[i]),
            "max_probability": float(maxima[i]),
            "mean_uncertainty": float(means[i]),
        })
    if locate is not None:
        starts = np.array([b.start for b in box])
        for i, part in enumerate(ndi.find_objects(labels)):
            voxels = np.argwhere(labels[part] == i + 1) + starts + np.array([p.start for p in part])
            rows[i].update(locate(voxels))
    rows.sort(key=lambda r: (-r["voxels"], -r["centre_R_mm"], -r["centre_A_mm"], r["centre_S_mm"]))
    for number, row in enumerate(rows, 1):
        row["id"] = number
    return rows
