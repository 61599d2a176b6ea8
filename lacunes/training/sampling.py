"""Where training crops are centred: on lesions, and on the background the network gets wrong.

A crop's centre is drawn by kind, with the shares of :class:`CropShares`:

- ``lesion``: a voxel of a lesion instance, the instance drawn uniformly (a 3 mm lacune is shown as
  often as a 15 mm one);
- ``edge``: a brain voxel within ``edge_mm`` of the brain's edge (sulcal CSF next to the empty
  background, where an undertrained network marks lesions);
- ``fluid``: a brain voxel that looks like fluid — T1 in the lowest quartile of the brain and T2 in
  the highest — away from the edge: ventricles, sulci, perivascular spaces, lacunes' look-alikes;
- ``hard``: the centre of one of the network's own false positives on this subject, found by
  predicting the training subjects during training (hard-negative mining), moved by up to
  ``hard_jitter`` voxels; while a subject has none, a ``fluid`` centre is drawn instead;
- ``brain``: any brain voxel (the rest);
- ``mimic``: the centre of one of the lacune's look-alikes a generated phantom records (perivascular
  spaces, fluid pockets, hyperintensities: :class:`lacunes.synthetic.mimics.MimicConfig`), moved by up to
  ``mimic_jitter`` voxels; a subject without such a record (one read from files, real data) gets a
  ``fluid`` centre instead.

Apart from ``mimic``, only the images, the labels and the network's outputs are used, so the same
sampler works on real (VALDO) data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from scipy import ndimage as ndi

from lacunes.instances import label_centres
from lacunes.options import MODALITIES
from lacunes.preprocessing import brain_mask

#: At most this many voxels of each candidate set are kept per subject (drawn uniformly): enough to
#: cover a brain, bounded memory for large cohorts.
MAX_CANDIDATES = 200_000


class CropKind(StrEnum):
    LESION = "lesion"
    EDGE = "edge"
    FLUID = "fluid"
    HARD = "hard"
    BRAIN = "brain"
    MIMIC = "mimic"


@dataclass(frozen=True)
class CropShares:
    """Share of crops centred on each kind; ``brain`` takes the rest (must be >= 0)."""

    lesion: float = 0.95
    edge: float = 0.0
    fluid: float = 0.0
    hard: float = 0.0
    mimic: float = 0.0

    def __post_init__(self) -> None:
        values = (self.lesion, self.edge, self.fluid, self.hard, self.mimic)
        if any(v < 0 for v in values) or sum(values) > 1 + 1e-9:
            raise ValueError(f"crop shares must be >= 0 and sum to at most 1, got lesion={self.lesion}, "
                             f"edge={self.edge}, fluid={self.fluid}, hard={self.hard}, mimic={self.mimic}")

    @property
    def brain(self) -> float:
        return max(0.0, 1.0 - self.lesion - self.edge - self.fluid - self.hard - self.mimic)

    def probabilities(self) -> tuple[list[CropKind], np.ndarray]:
        # mimic last: without it, the draws are those of the shares before it existed
        kinds = [CropKind.LESION, CropKind.EDGE, CropKind.FLUID, CropKind.HARD, CropKind.BRAIN, CropKind.MIMIC]
        p = np.array([self.lesion, self.edge, self.fluid, self.hard, self.brain, self.mimic], np.float64)
        return kinds, p / p.sum()


def _subsample(flat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if flat.size > MAX_CANDIDATES:
        flat = np.sort(rng.choice(flat, MAX_CANDIDATES, replace=False))
    return flat.astype(np.int64)


@dataclass
class Candidates:
    """Flat voxel indices (into X×Y×Z) of each kind of crop centre for one subject."""

    shape: tuple[int, int, int]
    lesions: list[np.ndarray]  # one array per instance
    edge: np.ndarray
    fluid: np.ndarray
    brain: np.ndarray
    hard: np.ndarray  # (n, 3) voxel centres; empty until mined
    mimics: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # (n, 3): a phantom's record

    @classmethod
    def from_arrays(cls, image: np.ndarray, instances: np.ndarray, edge_mm: float = 3.0,
                    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), seed: int = 0) -> Candidates:
        """Candidate centres from a normalized ``C×X×Y×Z`` image and its ``X×Y×Z`` instance map."""
        rng = np.random.default_rng(seed)
        shape = tuple(int(s) for s in instances.shape)
        mask = brain_mask(image)
        if not mask.any():
            mask = np.ones(shape, bool)
        depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        edge = mask & (depth <= edge_mm)
        inner = mask & ~edge
        t1, t2 = image[MODALITIES.index("T1")], image[MODALITIES.index("T2")]  # fluid: dark on T1, bright on T2
        fluid = inner & (t1 <= np.quantile(t1[mask], 0.25)) & (t2 >= np.quantile(t2[mask], 0.75))
        flat_inst = instances.ravel()
        order = np.argsort(flat_inst, kind="stable")
        counts = np.bincount(flat_inst, minlength=1)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        lesions = [order[bounds[k]:bounds[k + 1]].astype(np.int64) for k in range(1, len(counts)) if counts[k]]
        return cls(shape, lesions, _subsample(np.flatnonzero(edge), rng), _subsample(np.flatnonzero(fluid), rng),
                   _subsample(np.flatnonzero(mask), rng), np.zeros((0, 3), np.int64))

    def counts(self) -> dict[str, int]:
        return {"lesions": len(self.lesions), "edge": int(self.edge.size), "fluid": int(self.fluid.size),
                "brain": int(self.brain.size), "hard": int(len(self.hard)), "mimics": int(len(self.mimics))}

    def draw(self, kind: CropKind, rng: np.random.Generator, hard_jitter: int = 8,
             mimic_jitter: int = 4) -> tuple[np.ndarray, CropKind]:
        """A centre (x, y, z) of ``kind``, falling back (lesion/hard/mimic → fluid → brain) where a subject
        has none; returns the centre and the kind actually drawn."""
        if kind == CropKind.LESION and self.lesions:
            voxels = self.lesions[rng.integers(len(self.lesions))]
            return self._unravel(voxels[rng.integers(voxels.size)]), kind
        if kind == CropKind.HARD and len(self.hard):
            c = self.hard[rng.integers(len(self.hard))] + rng.integers(-hard_jitter, hard_jitter + 1, 3)
            return np.clip(c, 0, np.array(self.shape) - 1), kind
        if kind == CropKind.MIMIC and len(self.mimics):
            c = self.mimics[rng.integers(len(self.mimics))] + rng.integers(-mimic_jitter, mimic_jitter + 1, 3)
            return np.clip(c, 0, np.array(self.shape) - 1), kind
        if kind in (CropKind.LESION, CropKind.HARD, CropKind.MIMIC):
            kind = CropKind.FLUID
        pool = {CropKind.EDGE: self.edge, CropKind.FLUID: self.fluid}.get(kind, self.brain)
        if pool.size == 0:
            pool, kind = self.brain, CropKind.BRAIN
        return self._unravel(pool[rng.integers(pool.size)]), kind

    def _unravel(self, flat: int | np.integer) -> np.ndarray:
        return np.array(np.unravel_index(int(flat), self.shape), np.int64)


def crop_at(array: np.ndarray, centre: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """The ``C×size`` box of a ``C×X×Y×Z`` array around ``centre``, kept inside the volume where it fits
    and zero-padded (at the end) where the volume is smaller than the crop."""
    spatial = np.array(array.shape[1:])
    size_a = np.array(size)
    start = np.clip(centre - size_a // 2, 0, np.maximum(spatial - size_a, 0))
    stop = np.minimum(start + size_a, spatial)
    out = array[(slice(None), *(slice(int(a), int(b)) for a, b in zip(start, stop)))]
    pad = size_a - (stop - start)
    if pad.any():
        out = np.pad(out, [(0, 0)] + [(0, int(p)) for p in pad])
    return out


def false_positive_centres(probability: np.ndarray, label: np.ndarray, threshold: float = 0.5,
                           max_centres: int = 200, connectivity: int = 26) -> np.ndarray:
    """Centres (voxel, ``n×3``) of the predicted components that touch no labelled voxel, largest
    maximum probability first, at most ``max_centres``."""
    from lacunes.instances import label_instances

    labels, n = label_instances(probability >= threshold, connectivity)
    if n == 0:
        return np.zeros((0, 3), np.int64)
    idx = np.arange(1, n + 1)
    touching = ndi.maximum(label > 0, labels, idx).astype(bool)
    keep = idx[~touching]
    if keep.size == 0:
        return np.zeros((0, 3), np.int64)
    peaks = np.asarray(ndi.maximum(probability, labels, keep))
    keep = keep[np.argsort(-peaks, kind="stable")][:max_centres]
    centres = label_centres(labels, keep)
    return np.round(centres).astype(np.int64)
