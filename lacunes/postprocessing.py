"""From the network's logits to the written maps: the brain mask, the second stage, the operating point.

The challenge binarizes the probability map at a fixed 0.5. A model's best decision threshold is
rarely 0.5, and tiny components are mostly noise, so a checkpoint carries an :class:`OperatingPoint`
(chosen on validation subjects by ``lacunes calibrate``) and the predictor writes maps on which the
0.5 cut *is* that operating point. From the raw probability (the mean of the TTA variants' sigmoids),
in this order (:func:`finish_probability`):

1. **Brain mask**: probability and uncertainty are 0 outside the brain
   (:func:`lacunes.preprocessing.brain_mask` of the input), so nothing is ever found in the empty
   background of a skull-stripped scan, and an all-zero scan gives no lesion.
2. **Second stage** (when the checkpoint has one, :mod:`lacunes.rescoring`): candidate lesions of the
   raw map that the re-scorer rejects are set to 0.
3. **Recalibration** (monotone, piecewise linear): ``p' = 0.5 · p / t`` below the threshold ``t`` and
   ``0.5 + 0.5 · (p − t) / (1 − t)`` above it, so ``p' >= 0.5`` exactly where ``p >= t``, 0 stays 0
   and 1 stays 1. The uncertainty is computed from the logits shifted by ``logit(t)``, so it too is
   centred on the operating point (1 where the model is undecided *at t*).
4. **Extent** (hysteresis, when ``extent_threshold < threshold``): a lesion is *detected* where the
   probability reaches ``threshold``, but it *extends* over the connected region of probability
   ``>= extent_threshold`` around it. A strict detection threshold keeps mimics out; applied to the
   extent too, it trims every lesion to its core (Dice falls). Inside those regions the map is
   recalibrated to ``extent_threshold`` instead (``p' >= 0.5`` exactly where ``p >= extent_threshold``),
   and the uncertainty is centred on it; regions with no voxel at ``threshold`` are unchanged.
5. **Minimum size**: predicted lesions (26-connected components of ``p' >= 0.5``) smaller than
   ``min_volume_mm3`` are set to probability 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch


@dataclass(frozen=True)
class OperatingPoint:
    """Decision rule written into the probability map (see the module docstring).

    Attributes:
        threshold: probability (mean over the TTA variants) from which a voxel is a lesion, in (0, 1).
        min_volume_mm3: predicted lesions smaller than this are removed (0 = keep all).
        mask_outside_brain: probability and uncertainty 0 outside the input's brain mask.
        extent_threshold: probability over which a detected lesion extends (hysteresis; see the module
            docstring), in (0, threshold]; None = ``threshold`` (the lesion is what exceeds it).
    """

    threshold: float = 0.5
    min_volume_mm3: float = 0.0
    mask_outside_brain: bool = True
    extent_threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not (self.min_volume_mm3 >= 0 and math.isfinite(self.min_volume_mm3)):
            raise ValueError(f"min_volume_mm3 must be a finite number >= 0, got {self.min_volume_mm3}")
        if self.extent_threshold is not None and not 0.0 < self.extent_threshold <= self.threshold:
            raise ValueError(f"extent_threshold must be in (0, threshold={self.threshold}], got {self.extent_threshold}")

    @property
    def extent(self) -> float:
        """The probability over which a detected lesion extends (``threshold`` without hysteresis)."""
        return self.threshold if self.extent_threshold is None else self.extent_threshold

    @property
    def logit_shift(self) -> float:
        return float(logit(self.threshold))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> OperatingPoint:
        d = d or {}
        return cls(**{k: d[k] for k in ("threshold", "min_volume_mm3", "mask_outside_brain", "extent_threshold")
                      if k in d})

    def replace(self, **changes) -> OperatingPoint:
        from dataclasses import replace

        return replace(self, **changes)

    def with_overrides(self, threshold: float | None = None, min_volume_mm3: float | None = None) -> OperatingPoint:
        """This point with a user's ``--threshold`` / ``--min-volume`` (None: kept); a stored extent
        threshold that is not under the new threshold no longer extends anything and is dropped."""
        op = self
        if threshold is not None:
            extent = self.extent_threshold if self.extent_threshold is not None and self.extent_threshold < threshold else None
            op = op.replace(threshold=threshold, extent_threshold=extent)
        if min_volume_mm3 is not None:
            op = op.replace(min_volume_mm3=min_volume_mm3)
        return op


def logit(p: np.ndarray | float) -> np.ndarray:
    """``log(p / (1 - p))`` in float64, ``p`` clipped to [1e-12, 1 - 1e-12]: the one logit of the project's
    post-processing (thresholds, uncertainty centring, the operating-point search)."""
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


#: No recalibration, no size filter, no mask: the raw mean probability (benchmarks and tests).
RAW = OperatingPoint(0.5, 0.0, False)


def recalibrate(probability: torch.Tensor, threshold: float) -> torch.Tensor:
    """The monotone piecewise-linear map that sends ``threshold`` to 0.5, 0 to 0 and 1 to 1."""
    if threshold == 0.5:
        return probability
    low = 0.5 * probability / threshold
    high = 0.5 + 0.5 * (probability - threshold) / (1.0 - threshold)
    return torch.where(probability >= threshold, high, low).clamp(0.0, 1.0)


def extent_regions(probability: np.ndarray, threshold: float, extent: float) -> np.ndarray:
    """Hysteresis: the connected regions (26-connectivity) of ``probability >= extent`` that hold a
    voxel ``>= threshold``, as a boolean map."""
    from lacunes.instances import label_instances

    labels, n = label_instances(probability >= extent)
    if n == 0:
        return np.zeros(probability.shape, bool)
    cores = np.unique(labels[probability >= threshold])
    keep = np.zeros(n + 1, bool)
    keep[cores[cores > 0]] = True
    return keep[labels]


class FinishedMap(NamedTuple):
    """What :func:`finish_probability` returns."""

    probability: np.ndarray  # the written map (float32, 0.5 = the operating point)
    stats: dict  # candidates, rejected (second stage), extended_voxels, removed_small_lesions
    threshold: np.ndarray | float  # the raw probability each voxel was judged against (per voxel with an extent)
    rejected: np.ndarray | None = None  # voxels of the candidates the second stage rejected (None: none)


def finish_probability(raw: np.ndarray, op: OperatingPoint, mask: np.ndarray | None,
                       spacing: tuple[float, ...], rescorer=None, image: np.ndarray | None = None,
                       candidates: tuple[np.ndarray, int, np.ndarray] | None = None,
                       describe_rejected: bool = False) -> FinishedMap:
    """The written probability map from the raw one (mean of the TTA variants' sigmoids): brain mask,
    second stage, recalibration to the operating point, extent, minimum size (the module docstring's
    steps).

    Args:
        raw: raw probability (x, y, z), float32.
        op: the operating point.
        mask: the brain (used when ``op.mask_outside_brain``), or None.
        spacing: voxel size, mm.
        rescorer: a :class:`lacunes.rescoring.Rescorer`, or None.
        image: the normalized ``C×X×Y×Z`` input (needed by the rescorer).
        candidates: precomputed ``(labels, n, scores)`` of the rescorer's candidates on this ``raw``
            (the operating-point search scores them once).
        describe_rejected: list the rejected candidates in the counts (``rejected_candidates``).

    Returns:
        The map, counts (``candidates``, ``rejected`` by the second stage, with ``describe_rejected``
        their ``rejected_candidates`` (:func:`rejected_candidates`), ``extended_voxels``: voxels under ``threshold`` added by the
        extent, ``removed_small_lesions``), the decision threshold
        (a float, or per voxel when lesions were extended: the uncertainty is centred on it) and the
        voxels of the rejected candidates (the uncertainty is 1 there: the network and the second
        stage disagree).
    """
    stats = {"candidates": 0, "rejected": 0, "extended_voxels": 0, "removed_small_lesions": 0}
    prob, rejected_voxels = raw, None
    if mask is not None and op.mask_outside_brain:
        prob = np.where(mask, prob, np.float32(0)).astype(np.float32)
    if rescorer is not None:
        if candidates is None:
            if image is None:
                raise ValueError("this checkpoint re-scores candidates: the normalized image is needed")
            from lacunes.rescoring import candidate_features

            labels, n, feats = candidate_features(prob, image, mask, spacing, rescorer.candidate_threshold)
            candidates = (labels, n, rescorer.score(feats) if n else np.zeros(0))
        labels, n, scores = candidates
        rejected = np.flatnonzero(scores < rescorer.min_score) + 1
        if rejected.size:
            rejected_voxels = np.isin(labels, rejected)
            if describe_rejected:
                stats["rejected_candidates"] = rejected_candidates(prob, labels, rejected, scores, spacing)
            prob = np.where(rejected_voxels, np.float32(0), prob).astype(np.float32)
        stats["candidates"], stats["rejected"] = int(n), int(rejected.size)
    tensor = torch.from_numpy(np.ascontiguousarray(prob, np.float32))
    threshold: np.ndarray | float = op.threshold
    out = recalibrate(tensor, op.threshold).numpy()
    if op.extent < op.threshold:
        region = extent_regions(prob, op.threshold, op.extent)
        stats["extended_voxels"] = int((region & (prob < op.threshold)).sum())
        if stats["extended_voxels"]:
            out = np.where(region, recalibrate(tensor, op.extent).numpy(), out)
            threshold = np.where(region, np.float32(op.extent), np.float32(op.threshold))
    out, stats["removed_small_lesions"] = remove_small_lesions(out, op.min_volume_mm3, spacing)
    return FinishedMap(out.astype(np.float32, copy=False), stats, threshold, rejected_voxels)


def rejected_candidates(prob: np.ndarray, labels: np.ndarray, rejected: np.ndarray, scores: np.ndarray,
                        spacing: tuple[float, ...]) -> list[dict]:
    """What the second stage took out: per rejected candidate its centre (voxel index, float), volume, the
    network's highest probability there and the second stage's score, the highest score first."""
    from lacunes.instances import label_measures

    rejected = np.atleast_1d(np.asarray(rejected, dtype=np.int64))
    if rejected.size == 0:
        return []
    voxels, centres, maxima = label_measures(labels, rejected, prob)  # candidates are small: their voxels only
    rows = [{"voxel": [round(float(v), 2) for v in c], "volume_mm3": float(n) * float(np.prod(spacing)),
             "max_probability": float(m), "score": float(scores[k - 1])}
            for k, c, m, n in zip(rejected, centres, maxima, voxels)]
    return sorted(rows, key=lambda r: -r["score"])


def remove_small_lesions(probability: np.ndarray, min_volume_mm3: float, spacing: tuple[float, ...],
                         connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Set the components of ``probability >= 0.5`` smaller than ``min_volume_mm3`` to 0; returns the
    map (a copy only when something changed) and the number of components removed."""
    if min_volume_mm3 <= 0:
        return probability, 0
    from lacunes.instances import label_instances

    labels, n = label_instances(probability >= 0.5, connectivity)
    if n == 0:
        return probability, 0
    voxel = float(np.prod(spacing))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * voxel
    small = np.flatnonzero(sizes < min_volume_mm3) + 1
    if small.size == 0:
        return probability, 0
    out = probability.copy()
    out[np.isin(labels, small)] = 0.0
    return out, int(small.size)
