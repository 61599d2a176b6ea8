"""lacunes.geometry: grids compared and resampled in scanner space."""

import numpy as np

from lacunes.geometry import Geometry


def test_a_skull_stripped_flair_is_resampled_without_a_ring_of_background(tmp_path):
    """On the T1's grid the FLAIR's brain keeps the FLAIR's values up to its edge: no voxel blended
    with the background's zeros (which would drag the normalization's lower quantile towards 0)."""
    from lacunes.geometry import resample_to

    coarse = Geometry((20, 20, 8), (2.0, 2.0, 4.0), (0.0, 0.0, 0.0))
    fine = Geometry((40, 40, 32), (1.0, 1.0, 1.0), (-0.5, -0.5, -1.5))
    idx = np.indices(coarse.shape, dtype=float) * np.asarray(coarse.spacing)[:, None, None, None]
    brain = ((idx - np.array([19.0, 19.0, 14.0])[:, None, None, None]) ** 2).sum(0) < 12.0**2
    flair = np.where(brain, 400.0 + 10.0 * idx[0], 0.0).astype(np.float32)  # 400 to 780 across the brain
    out = resample_to(flair, coarse, fine)
    inside = out != 0
    assert out[inside].min() >= flair[brain].min() - 1e-3 and out.max() <= flair.max() + 1e-3
    assert abs(inside.sum() * 1.0 - brain.sum() * 16.0) < 0.05 * brain.sum() * 16.0
    kept = np.abs(np.quantile(out[inside], 0.005) - np.quantile(flair[brain], 0.005))
    assert kept < 25.0
