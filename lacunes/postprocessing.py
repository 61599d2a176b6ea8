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

from lacunes.metrics import detection_counts


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
        if not self.min_volume_mm3 >= 0:
            raise ValueError(f"min_volume_mm3 must be >= 0, got {self.min_volume_mm3}")
        if self.extent_threshold is not None and not 0.0 < self.extent_threshold <= self.threshold:
            raise ValueError(f"extent_threshold must be in (0, threshold={self.threshold}], got {self.extent_threshold}")

    @property
    def extent(self) -> float:
        """The probability over which a detected lesion extends (``threshold`` without hysteresis)."""
        return self.threshold if self.extent_threshold is None else self.extent_threshold

    @property
    def logit_shift(self) -> float:
        return math.log(self.threshold / (1.0 - self.threshold))

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
                       candidates: tuple[np.ndarray, int, np.ndarray] | None = None) -> FinishedMap:
    """The written probability map from the raw one (mean of the TTA variants' sigmoids): brain mask,
    second stage, recalibration to the operating point, extent, minimum size (the module docstring's
    steps).

    Args:
        raw: raw probability (x, y, z), float32.
        op: the operating point.
        mask: the brain (used when ``op.mask_outside_brain``), or None.
        spacing: voxel size, mm.
        rescorer: a :class:`lacunes.rescoring.Rescorer`, or None.
        image: the normalized ``3×X×Y×Z`` input (needed by the rescorer).
        candidates: precomputed ``(labels, n, scores)`` of the rescorer's candidates on this ``raw``
            (the operating-point search scores them once).

    Returns:
        The map, counts (``candidates``, ``rejected`` by the second stage, ``extended_voxels``: voxels
        under ``threshold`` added by the extent, ``removed_small_lesions``), the decision threshold
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


#: The grid searched by :func:`choose_operating_point` (probability thresholds, minimum volumes in mm³,
#: second-stage score cuts). With a second stage, thresholds under its candidate threshold are skipped.
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
MIN_VOLUMES_MM3 = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 65.0)
MIN_SCORES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: With a second stage, whose features include the volume, a coarser volume grid.
MIN_VOLUMES_WITH_RESCORER_MM3 = (0.0, 10.0, 20.0, 40.0)
#: Extent thresholds searched at the chosen point (those under its threshold; None = no extent).
EXTENTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class OperatingPointScore:
    """Detection over a set of validation subjects at one operating point (pooled over subjects)."""

    threshold: float
    min_volume_mm3: float
    min_score: float | None  # second-stage cut (None without a second stage)
    f1: float  # pooled: 2·ΣwTP / (ΣwFN + ΣFP + 2·ΣwTP)
    median_f1: float  # over subjects with lacunes
    tp: int
    fp: int
    fn: int
    fp_per_subject: float
    dice: float = float("nan")  # median over subjects with lacunes; computed for the chosen point and its ties only
    extent_threshold: float | None = None  # hysteresis (searched at the chosen point only)
    uncertain_share: float = float("nan")  # mean over subjects: share of the brain with uncertainty >= 0.5

    def to_dict(self) -> dict:
        return asdict(self)


#: Inverse-logit uncertainty ``1 / |logit - logit(t)|`` is >= 0.5 exactly where the logit lies within
#: this distance of the decision threshold's logit (:mod:`lacunes.uncertainty`).
UNCERTAIN_LOGIT_BAND = 2.0


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def _share_in_band(logits: np.ndarray, threshold_logits: np.ndarray | float, rejected: np.ndarray | None) -> float:
    """The share of voxels within :data:`UNCERTAIN_LOGIT_BAND` of their threshold's logit, or rejected."""
    band = np.abs(logits - threshold_logits) <= UNCERTAIN_LOGIT_BAND
    if rejected is not None:
        band |= rejected
    return float(band.mean()) if band.size else 0.0


def uncertain_share(raw: np.ndarray, threshold: np.ndarray | float, mask: np.ndarray | None,
                    rejected: np.ndarray | None = None) -> float:
    """The share of the brain where the default (inverse-logit) uncertainty, centred on ``threshold``
    as the predictor writes it, is >= 0.5: raw probability within :data:`UNCERTAIN_LOGIT_BAND` logits of
    the threshold, or a candidate the second stage rejected (uncertainty 1). Without TTA the raw
    probability's logit is the network's; with TTA the predictor uses the variants' mean logit, which
    this approximates."""
    def inside(a):
        return a[mask] if mask is not None else np.ravel(a)

    t = np.asarray(threshold)
    return _share_in_band(_logit(inside(raw)), _logit(inside(t) if t.ndim else t),
                          None if rejected is None else inside(rejected))


def _pool(counts: list[tuple], threshold: float, min_volume_mm3: float, min_score: float | None) -> OperatingPointScore:
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    wtp, wfn = sum(c[3] for c in counts), sum(c[4] for c in counts)
    denom = wfn + fp + 2 * wtp
    f1s = [c[5] for c in counts if not math.isnan(c[5])]
    return OperatingPointScore(threshold, min_volume_mm3, min_score, 2 * wtp / denom if denom else float("nan"),
                               float(np.median(f1s)) if f1s else float("nan"), tp, fp, fn, fp / max(len(counts), 1))


def _crop_to(box: tuple[slice, ...], *arrays):
    return [None if a is None else a[(Ellipsis, *box)] for a in arrays]


def choose_operating_point(cases, rescorer=None, thresholds=THRESHOLDS, volumes=None,
                           min_scores=MIN_SCORES, extents=EXTENTS, progress: bool = True,
                           max_uncertain_share: float | None = None):
    """The operating point (and second-stage cut) with the best pooled detection F1 on validation cases.

    Args:
        cases: ``(raw probability X×Y×Z, normalized image 3×X×Y×Z or None, reference, spacing, brain
            mask)`` per subject; the maps are made by :func:`finish_probability`, as at inference.
        rescorer: the checkpoint's second stage, or None; its ``min_score`` is searched too.
        thresholds, volumes, min_scores: the grid (volumes: :data:`MIN_VOLUMES_MM3`, or
            :data:`MIN_VOLUMES_WITH_RESCORER_MM3` with a second stage, by default).

    Each (cut, threshold) map is labelled once; each minimum volume then drops whole lesions, scored
    with the challenge's centre matching (:func:`lacunes.metrics.detection_counts`). Ties (equal F1)
    go to fewer false positives, then to the smaller minimum volume, then to the lower threshold and
    score cut (the gentler rule); among the thresholds that tie with that point on F1 and false positives
    at its cut and minimum volume, the best median Dice over matched lesions is then taken (ties: the
    lower threshold). Then, at that point, the extent threshold (``extents`` under the
    chosen threshold, or none) with the best median Dice among those that keep the pooled F1 (ties go
    to the higher one, the smaller change) is chosen.

    With ``max_uncertain_share``, only points whose default uncertainty map (inverse logit, centred on
    the decision threshold; :func:`uncertain_share`) is >= 0.5 in less than that share of the brain,
    averaged over the cases, are eligible, for the grid and for the extent alike; where no grid point
    qualifies, the constraint is dropped (the caller sees it in the chosen score's share). Every score
    carries its share.

    Returns the chosen operating point (masking outside the brain), the chosen score cut (None without a
    second stage) and every grid point's score (the chosen one and the extents with their median Dice).
    """
    from tqdm import tqdm

    from lacunes.instances import label_instances
    from lacunes.metrics import ReferenceLesions, evaluate_subject, lesion_centres_mm

    if volumes is None:
        volumes = MIN_VOLUMES_WITH_RESCORER_MM3 if rescorer is not None else MIN_VOLUMES_MM3
    prepared, logits_inside = [], []  # logits_inside: the raw logit of every brain voxel, per case
    for raw, image, ref, spacing, mask in cases:
        if mask is not None and mask.any():
            # Everything that can change lies in the brain's box (the reference too): scoring the box
            # gives the same matching (centres move together) and features (the whole mask is inside).
            from scipy import ndimage as ndi

            box = ndi.find_objects(mask.astype(np.uint8) | (ref > 0).astype(np.uint8))[0]
            raw, ref, mask = _crop_to(box, raw, ref, mask)
            image = None if image is None else image[(slice(None), *box)]
        masked = np.where(mask, raw, np.float32(0)).astype(np.float32) if mask is not None else raw
        cand = None
        if rescorer is not None:
            from lacunes.rescoring import candidate_features

            labels, n, feats = candidate_features(masked, image, mask, spacing, rescorer.candidate_threshold)
            cand = (labels, n, rescorer.score(feats) if n else np.zeros(0))
        prepared.append((masked, cand, ref, ReferenceLesions.from_reference(ref, spacing), spacing, mask))
        logits_inside.append(_logit(masked[mask] if mask is not None else masked.ravel()).astype(np.float32))
    if rescorer is not None:
        thresholds = [t for t in thresholds if t >= rescorer.candidate_threshold]
    cuts = list(min_scores) if rescorer is not None else [None]
    scores = []
    for cut in tqdm(cuts, desc="operating points", disable=not progress):
        stage = rescorer.replace(min_score=cut) if rescorer is not None else None
        # The map before recalibration (at threshold 0.5 it is the identity); recalibrating to t then
        # cutting at 0.5 is the same as cutting this map at t (recalibrate is monotone, t → 0.5).
        finished = [finish_probability(masked, OperatingPoint(0.5, 0.0, True), mask, spacing, stage, candidates=cand)
                    for masked, cand, _, _, spacing, mask in prepared]
        staged = [f.probability for f in finished]
        rejected_inside = [None if f.rejected is None else (f.rejected[mask] if mask is not None else f.rejected.ravel())
                           for f, (_, _, _, _, _, mask) in zip(finished, prepared)]
        for t in thresholds:
            shares = [_share_in_band(lg, math.log(t / (1 - t)), rej) for lg, rej in zip(logits_inside, rejected_inside)]
            share = float(np.mean(shares)) if shares else 0.0
            lesions = []  # per case: centres (mm) and volumes (mm³) of the predicted lesions
            for prob, (_, _, _, _, spacing, _) in zip(staged, prepared):
                labels, n = label_instances(prob >= t)
                volumes_mm3 = np.bincount(labels.ravel(), minlength=n + 1)[1:] * float(np.prod(spacing))
                lesions.append((lesion_centres_mm(labels, n, spacing), volumes_mm3))
            for v in volumes:
                counts = [detection_counts(centres[vol >= v], refl)
                          for (centres, vol), (_, _, _, refl, _, _) in zip(lesions, prepared)]
                scores.append(_pool(counts, t, v, cut))
                scores[-1].uncertain_share = share

    def eligible(s: OperatingPointScore) -> bool:
        return max_uncertain_share is None or s.uncertain_share < max_uncertain_share

    constrained = any(eligible(s) for s in scores)
    pool = [s for s in scores if eligible(s)] if constrained else scores
    best = max(pool, key=lambda s: (np.nan_to_num(s.f1, nan=-1.0), -s.fp, -s.min_volume_mm3, -s.threshold,
                                    -(s.min_score or 0.0)))
    stage = rescorer.replace(min_score=best.min_score) if rescorer is not None else None

    def score_at(op: OperatingPoint) -> OperatingPointScore:
        counts, dices, shares = [], [], []
        for masked, cand, ref, _, spacing, mask in prepared:
            finished = finish_probability(masked, op, mask, spacing, stage, candidates=cand)
            r = evaluate_subject(finished.probability.astype(np.float64), ref, spacing)
            counts.append((r.tp, r.fp, r.fn, r.wtp, r.wfn, r.f1))
            shares.append(uncertain_share(masked, finished.threshold, mask, finished.rejected))
            if r.n_ref:
                dices.append(r.dice)
        s = _pool(counts, op.threshold, op.min_volume_mm3, best.min_score)
        s.dice, s.extent_threshold = (float(np.median(dices)) if dices else float("nan")), op.extent_threshold
        s.uncertain_share = float(np.mean(shares)) if shares else 0.0
        return s

    # Among the thresholds that tie with the best point on F1 and false positives (same cut and minimum
    # volume), the best median Dice: a sharp network detects the same lesions over a wide range of
    # thresholds, and only their extent changes.
    ties = [s for s in pool if s.min_score == best.min_score and s.min_volume_mm3 == best.min_volume_mm3
            and s.fp == best.fp and abs(np.nan_to_num(s.f1, nan=-1.0) - np.nan_to_num(best.f1, nan=-1.0)) < 1e-9]
    for s in tqdm(sorted(ties, key=lambda s: s.threshold), desc="thresholds (Dice)",
                  disable=not progress or len(ties) < 2):
        s.dice = score_at(OperatingPoint(s.threshold, s.min_volume_mm3, True)).dice
        if np.nan_to_num(s.dice, nan=-1.0) > np.nan_to_num(best.dice, nan=-1.0):
            best = s
    op = OperatingPoint(best.threshold, best.min_volume_mm3, True)
    chosen = best
    candidates = [e for e in sorted(extents, reverse=True) if e < op.threshold]
    for e in tqdm(candidates, desc="extents", disable=not progress or not candidates):
        s = score_at(op.replace(extent_threshold=e))
        scores.append(s)
        if (s.f1 >= best.f1 - 1e-9 and (not constrained or eligible(s))
                and np.nan_to_num(s.dice, nan=-1.0) > np.nan_to_num(chosen.dice, nan=-1.0)):
            chosen = s
    return op.replace(extent_threshold=chosen.extent_threshold), best.min_score, scores
