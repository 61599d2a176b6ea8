"""Choosing a checkpoint's operating point on validation subjects (``lacunes calibrate``): the grid of
probability thresholds, minimum volumes and second-stage cuts, each scored with the challenge's centre
matching pooled over the subjects, the tie-breaks, then the extent threshold for Dice
(:func:`choose_operating_point`). The rule it chooses is applied by
:func:`lacunes.postprocessing.finish_probability`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from lacunes.metrics import ReferenceLesions, detection_counts, evaluate_subject, lesion_centres_mm
from lacunes.postprocessing import OperatingPoint, finish_probability, logit

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
    worst_family_f1: float = float("nan")  # the lowest pooled F1 of a family of subjects (calibrate's --val folders)
    flagged: int = 0  # lacune-free subjects with at least one false positive
    lacune_free: int = 0  # lacune-free subjects

    def to_dict(self) -> dict:
        return asdict(self)


#: Inverse-logit uncertainty ``1 / |logit - logit(t)|`` is >= 0.5 exactly where the logit lies within
#: this distance of the decision threshold's logit (:mod:`lacunes.uncertainty`).
UNCERTAIN_LOGIT_BAND = 2.0


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
    return _share_in_band(logit(inside(raw)), logit(inside(t) if t.ndim else t),
                          None if rejected is None else inside(rejected))


class Counts(NamedTuple):
    """One subject's detection at one operating point (:func:`lacunes.metrics.detection_counts`)."""

    tp: int
    fp: int
    fn: int
    wtp: float  # rater-weighted
    wfn: float
    f1: float  # NaN without reference lesions


class PreparedCase(NamedTuple):
    """A validation subject as the search scores it: cropped to its brain's box, masked, its second-stage
    candidates scored once."""

    masked: np.ndarray  # raw probability, 0 outside the brain
    candidates: tuple | None  # (labels, n, scores) of the second stage, or None
    reference: np.ndarray
    reference_lesions: ReferenceLesions
    spacing: tuple[float, ...]
    mask: np.ndarray | None
    family: str = ""  # the family of subjects it belongs to (its --val folder)
    logits_inside: np.ndarray | None = None  # the raw logit of every brain voxel (for the uncertainty share)


def _pooled_f1(counts: list[Counts]) -> float:
    fp, wtp, wfn = sum(c.fp for c in counts), sum(c.wtp for c in counts), sum(c.wfn for c in counts)
    denom = wfn + fp + 2 * wtp
    return 2 * wtp / denom if denom else float("nan")


def _pool(counts: list[Counts], threshold: float, min_volume_mm3: float, min_score: float | None,
          families: list[str] | None = None) -> OperatingPointScore:
    """Detection pooled over the subjects; per family (``families``: one name per subject) the lowest
    pooled F1; the lacune-free subjects flagged."""
    tp, fp, fn = (sum(getattr(c, k) for c in counts) for k in ("tp", "fp", "fn"))
    f1s = [c.f1 for c in counts if not math.isnan(c.f1)]
    s = OperatingPointScore(threshold, min_volume_mm3, min_score, _pooled_f1(counts),
                            float(np.median(f1s)) if f1s else float("nan"), tp, fp, fn, fp / max(len(counts), 1))
    free = [c for c in counts if c.tp + c.fn == 0]
    s.flagged, s.lacune_free = sum(c.fp > 0 for c in free), len(free)
    names = families or [""] * len(counts)
    per_family = [_pooled_f1([c for c, f in zip(counts, names) if f == name]) for name in sorted(set(names))]
    per_family = [f for f in per_family if not math.isnan(f)]
    s.worst_family_f1 = min(per_family) if per_family else float("nan")
    return s


class ValidationCase(NamedTuple):
    """A labelled validation subject as :func:`choose_operating_point` takes it (model space)."""

    raw: np.ndarray  # the network's raw probability (mean of the TTA variants' sigmoids)
    image: np.ndarray | None  # normalized C×X×Y×Z input (the second stage's features need it)
    reference: np.ndarray  # the raters' mean (0, 0.5, 1)
    spacing: tuple[float, ...]
    mask: np.ndarray | None  # the brain
    family: str = ""  # the family of subjects it belongs to (calibrate's --val folders)


def _crop_to(box: tuple[slice, ...], *arrays):
    return [None if a is None else a[(Ellipsis, *box)] for a in arrays]


def prepare_case(case, rescorer=None) -> PreparedCase:
    """A validation case (:class:`ValidationCase` or its 5-tuple) as the search holds it: cropped to its
    brain's box, masked, its second-stage candidates scored once with ``rescorer`` (the second stage the
    search is then given), with the raw logit of every brain voxel (for the uncertainty share). It keeps
    copies of the box alone, none of the case's arrays: a caller that prepares each case as it reads it and
    lets the case go holds a fraction of the memory (the normalized image is not kept at all)."""
    raw, image, ref, spacing, mask = case[:5]
    if mask is not None and mask.any():
        # Everything that can change lies in the brain's box (the reference too): scoring the box
        # gives the same matching (centres move together) and features (the whole mask is inside).
        from scipy import ndimage as ndi

        box = ndi.find_objects(mask.astype(np.uint8) | (ref > 0).astype(np.uint8))[0]
        raw, ref, mask = _crop_to(box, raw, ref, mask)
        ref, mask = ref.copy(), mask.copy()  # copies, not views that would keep the whole arrays alive
        image = None if image is None else image[(slice(None), *box)]
    masked = np.where(mask, raw, np.float32(0)).astype(np.float32) if mask is not None else raw
    cand = None
    if rescorer is not None:
        from lacunes.rescoring import candidate_features

        labels, n, feats = candidate_features(masked, image, mask, spacing, rescorer.candidate_threshold)
        cand = (labels, n, rescorer.score(feats) if n else np.zeros(0))
    logits_inside = logit(masked[mask] if mask is not None else masked.ravel()).astype(np.float32)
    return PreparedCase(masked, cand, ref, ReferenceLesions.from_reference(ref, spacing), spacing, mask,
                        case.family if isinstance(case, ValidationCase) else "", logits_inside)


def _grid(prepared: list[PreparedCase], logits_inside: list[np.ndarray], rescorer, cut: float | None,
          thresholds, volumes) -> list[OperatingPointScore]:
    """Every (threshold, minimum volume) point at one second-stage cut: each thresholded map labelled once,
    each minimum volume then dropping whole lesions."""
    from lacunes.instances import label_instances

    stage = rescorer.replace(min_score=cut) if rescorer is not None else None
    # The map before recalibration (at threshold 0.5 it is the identity); recalibrating to t then
    # cutting at 0.5 is the same as cutting this map at t (recalibrate is monotone, t → 0.5).
    finished = [finish_probability(c.masked, OperatingPoint(0.5, 0.0, True), c.mask, c.spacing, stage,
                                   candidates=c.candidates) for c in prepared]
    rejected_inside = [None if f.rejected is None else (f.rejected[c.mask] if c.mask is not None else f.rejected.ravel())
                       for f, c in zip(finished, prepared)]
    scores = []
    for t in thresholds:
        shares = [_share_in_band(lg, math.log(t / (1 - t)), rej) for lg, rej in zip(logits_inside, rejected_inside)]
        lesions = []  # per case: centres (mm) and volumes (mm³) of the predicted lesions
        for f, c in zip(finished, prepared):
            labels, n = label_instances(f.probability >= t)
            volumes_mm3 = np.bincount(labels.ravel(), minlength=n + 1)[1:] * float(np.prod(c.spacing))
            lesions.append((lesion_centres_mm(labels, n, c.spacing), volumes_mm3))
        for v in volumes:
            counts = [Counts(*detection_counts(centres[vol >= v], c.reference_lesions))
                      for (centres, vol), c in zip(lesions, prepared)]
            scores.append(_pool(counts, t, v, cut, [c.family for c in prepared]))
            scores[-1].uncertain_share = float(np.mean(shares)) if shares else 0.0
    return scores


def _score_at(prepared: list[PreparedCase], op: OperatingPoint, stage, min_score: float | None) -> OperatingPointScore:
    """One operating point scored in full (maps finished as at inference): detection, median Dice, share."""
    counts, dices, shares = [], [], []
    for c in prepared:
        finished = finish_probability(c.masked, op, c.mask, c.spacing, stage, candidates=c.candidates)
        r = evaluate_subject(finished.probability.astype(np.float64), c.reference, c.spacing)
        counts.append(Counts(r.tp, r.fp, r.fn, r.wtp, r.wfn, r.f1))
        shares.append(uncertain_share(c.masked, finished.threshold, c.mask, finished.rejected))
        if r.n_ref:
            dices.append(r.dice)
    s = _pool(counts, op.threshold, op.min_volume_mm3, min_score, [c.family for c in prepared])
    s.dice, s.extent_threshold = (float(np.median(dices)) if dices else float("nan")), op.extent_threshold
    s.uncertain_share = float(np.mean(shares)) if shares else 0.0
    return s


def _dice(s: OperatingPointScore) -> float:
    return float(np.nan_to_num(s.dice, nan=-1.0))


def _best_of_grid(scores: list[OperatingPointScore], prepared, rescorer, progress: bool, worst_family: bool = False):
    """The best pooled F1 (with ``worst_family``: the best lowest F1 of a family, then the pooled F1; ties:
    fewer FP, smaller minimum volume, lower threshold and cut); then, among the thresholds that tie with it
    on those and FP at its cut and minimum volume, the best median Dice: a sharp network detects the same
    lesions over a wide range of thresholds, and only their extent changes. Returns the point and the
    second stage at its cut."""
    from tqdm import tqdm

    def objective(s: OperatingPointScore) -> tuple[float, ...]:
        f1 = float(np.nan_to_num(s.f1, nan=-1.0))
        return (float(np.nan_to_num(s.worst_family_f1, nan=-1.0)), f1) if worst_family else (f1,)

    best = max(scores, key=lambda s: (*objective(s), -s.fp, -s.min_volume_mm3, -s.threshold, -(s.min_score or 0.0)))
    stage = rescorer.replace(min_score=best.min_score) if rescorer is not None else None
    ties = [s for s in scores if s.min_score == best.min_score and s.min_volume_mm3 == best.min_volume_mm3
            and s.fp == best.fp and np.allclose(objective(s), objective(best), atol=1e-9, rtol=0)]
    for s in tqdm(sorted(ties, key=lambda s: s.threshold), desc="thresholds (Dice)",
                  disable=not progress or len(ties) < 2):
        s.dice = _score_at(prepared, OperatingPoint(s.threshold, s.min_volume_mm3, True), stage, s.min_score).dice
        if _dice(s) > _dice(best):
            best = s
    return best, stage


def choose_operating_point(cases, rescorer=None, thresholds=THRESHOLDS, volumes=None,
                           min_scores=MIN_SCORES, extents=EXTENTS, progress: bool = True,
                           max_uncertain_share: float | None = None, max_flagged_share: float | None = None,
                           worst_family: bool = False):
    """The operating point (and second-stage cut) with the best pooled detection F1 on validation cases.

    Args:
        cases: :class:`ValidationCase` per subject (or its 5-tuple), or :class:`PreparedCase` made by
            :func:`prepare_case` with the same ``rescorer`` (far less memory for many subjects); the maps
            are made by :func:`finish_probability`, as at inference.
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

    With ``max_flagged_share``, only points that flag at most that share of the lacune-free cases (at least
    one false positive) are eligible, likewise. With ``worst_family``, the cases' families
    (:attr:`ValidationCase.family`) are scored apart and the point with the best lowest family F1 is
    chosen (then the pooled F1): an operating point for the family it does worst on, not the average.

    Returns the chosen operating point (masking outside the brain), the chosen score cut (None without a
    second stage) and every grid point's score (the chosen one and the extents with their median Dice).
    """
    from tqdm import tqdm

    if volumes is None:
        volumes = MIN_VOLUMES_WITH_RESCORER_MM3 if rescorer is not None else MIN_VOLUMES_MM3
    prepared = [c if isinstance(c, PreparedCase) else prepare_case(ValidationCase(*c), rescorer) for c in cases]
    logits_inside = [c.logits_inside for c in prepared]
    if rescorer is not None:
        thresholds = [t for t in thresholds if t >= rescorer.candidate_threshold]
    scores = []
    for cut in tqdm(list(min_scores) if rescorer is not None else [None], desc="operating points", disable=not progress):
        scores += _grid(prepared, logits_inside, rescorer, cut, thresholds, volumes)

    def eligible(s: OperatingPointScore) -> bool:
        return ((max_uncertain_share is None or s.uncertain_share < max_uncertain_share)
                and (max_flagged_share is None or s.flagged <= max_flagged_share * s.lacune_free))

    constrained = any(eligible(s) for s in scores)
    pool = [s for s in scores if eligible(s)] if constrained else scores
    best, stage = _best_of_grid(pool, prepared, rescorer, progress, worst_family)
    op = OperatingPoint(best.threshold, best.min_volume_mm3, True)
    chosen = best
    extents_below = [e for e in sorted(extents, reverse=True) if e < op.threshold]
    for e in tqdm(extents_below, desc="extents", disable=not progress or not extents_below):
        s = _score_at(prepared, op.replace(extent_threshold=e), stage, best.min_score)
        scores.append(s)
        keeps = s.f1 >= best.f1 - 1e-9 and (not worst_family or s.worst_family_f1 >= best.worst_family_f1 - 1e-9)
        if keeps and (not constrained or eligible(s)) and _dice(s) > _dice(chosen):
            chosen = s
    return op.replace(extent_threshold=chosen.extent_threshold), best.min_score, scores
