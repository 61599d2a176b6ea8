"""Connected components (26-connectivity by default) and per-lesion tables."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

_RANK = {6: 1, 18: 2, 26: 3}


def structure(connectivity: int = 26) -> np.ndarray:
    """The 3×3×3 structuring element of 6-, 18- or 26-connectivity."""
    if connectivity not in _RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return ndi.generate_binary_structure(3, _RANK[connectivity])


def label_instances(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the connected components of a binary (x, y, z) mask: int32 labels 1..n, 0 = background."""
    labels, n = ndi.label(np.asarray(mask) > 0, structure=structure(connectivity))
    return labels.astype(np.int32, copy=False), int(n)


def lesion_table(
    probability: np.ndarray,
    uncertainty: np.ndarray | None,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    threshold: float = 0.5,
    connectivity: int = 26,
) -> list[dict]:
    """One row per predicted lesion (component of ``probability >= threshold``).

    Columns: id, voxels, volume_mm3, centre_mm (x, y, z: index × spacing + origin, ignoring
    direction), max_probability, mean_uncertainty (NaN without an uncertainty map).
    """
    labels, n = label_instances(probability >= threshold, connectivity)
    rows = []
    if n == 0:
        return rows
    idx = np.arange(1, n + 1)
    counts = ndi.sum_labels(np.ones_like(labels), labels, idx)
    centres = ndi.center_of_mass(np.ones_like(labels), labels, idx)
    maxima = ndi.maximum(probability, labels, idx)
    means = ndi.mean(uncertainty, labels, idx) if uncertainty is not None else [float("nan")] * n
    voxel = float(np.prod(spacing))
    for i in range(n):
        centre = [float(c) * s + o for c, s, o in zip(centres[i], spacing, origin)]
        rows.append({
            "id": i + 1,
            "voxels": int(counts[i]),
            "volume_mm3": float(counts[i]) * voxel,
            "centre_x_mm": round(centre[0], 3),
            "centre_y_mm": round(centre[1], 3),
            "centre_z_mm": round(centre[2], 3),
            "max_probability": float(maxima[i]),
            "mean_uncertainty": float(means[i]),
        })
    return rows
