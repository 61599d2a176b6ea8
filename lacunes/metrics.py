"""VALDO 2021 Task 3 metrics, as the organizers defined them (docs/evaluation.md).

- The prediction is binarized at >= 0.5; lesions are 26-connected components (no minimum size).
  The reference (mean of the raters: 0, 0.5, 1) is rounded to one decimal; its lesions are the
  components of ``reference > 0``, each weighted by its maximum value (1 = both raters, 0.5 = one).
- Matching (default ``centre``): each predicted lesion goes to the nearest reference lesion whose
  centre of mass (voxel index × spacing, mm) lies closer than ``max_distance_mm`` (default
  :data:`DEFAULT_MATCH_DISTANCE_MM` = 5 mm: half the diameter of a mid-sized lacune, so a prediction
  that covers only part of a 15 mm lacune still matches, while a prediction one lacune away does
  not). Several predictions on one reference lesion: the closest is a TP, the others FP. The
  ``overlap`` alternative matches a prediction to the reference lesion it overlaps most (any voxel).
- Detection F1 = 2·wTP / (wFN + FP + 2·wTP); NaN for an empty reference, 0 for an empty prediction.
- DSC: mean over matched reference lesions of the Dice between the soft reference lesion and the
  (binary) predictions assigned to it; NaN for an empty reference, 0 when nothing matched.
- AVD = |Σ prediction (values < 0.5 set to 0) − Σ reference| × voxel volume, mm³.
- Uncertainty (a) ``unc_flags``: share of lesions whose flag is right — FN and FP lesions should have
  mean uncertainty >= 0.5, TP lesions < 0.5 (TP and FP measured over the predicted component, FN
  over the reference lesion). (b) ``unc_voxels``: per matched lesion,
  [Σ(1−u)·TP voxels + Σu·(FP + FN voxels)] / (#error voxels + #TP voxels), averaged.
- A prediction with values outside [0, 1] (or non-finite) is invalid: it gets the worst score (F1 0,
  DSC 0, AVD inf, uncertainty scores 0) and ``valid = False``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from lacunes.instances import label_instances, lesion_centres_mm
from lacunes.options import MAX_DISTANCE_MM as DEFAULT_MATCH_DISTANCE_MM
from lacunes.options import Matching


@dataclass
class SubjectMetrics:
    subject_id: str
    valid: bool
    f1: float
    dice: float
    avd_mm3: float
    unc_flags: float
    unc_voxels: float
    tp: int
    fp: int
    fn: int
    wtp: float
    wfn: float
    n_ref: int
    n_pred: int
    ref_volume_mm3: float
    pred_volume_mm3: float
    lesions: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        d = asdict(self)
        d.pop("lesions")
        return d


def match_by_centre(pred_centres: np.ndarray, ref_centres: np.ndarray, max_distance_mm: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Centre matching: ``assigned[j]`` (1-based, index 0 unused) is the reference lesion nearest to
    prediction j if closer than ``max_distance_mm`` (0 = none), ``score[j]`` that distance (inf = none)."""
    n_pred = len(pred_centres)
    assigned = np.zeros(n_pred + 1, int)
    score = np.full(n_pred + 1, np.inf)
    if n_pred and len(ref_centres):
        dist = np.linalg.norm(pred_centres[:, None, :] - ref_centres[None, :, :], axis=2)
        k = np.argmin(dist, axis=1)
        d = dist[np.arange(n_pred), k]
        close = d < max_distance_mm
        assigned[1:][close], score[1:][close] = k[close] + 1, d[close]
    return assigned, score


def true_positives(assigned: np.ndarray, score: np.ndarray) -> dict[int, int]:
    """Reference lesion → its TP prediction: the closest of those assigned to it (the others are FP)."""
    tp_of: dict[int, int] = {}
    for j in range(1, len(assigned)):
        k = int(assigned[j])
        if k and (k not in tp_of or score[j] < score[tp_of[k]]):
            tp_of[k] = j
    return tp_of


@dataclass
class ReferenceLesions:
    """The reference's lesions as detection needs them: centres (mm) and rater weights."""

    centres_mm: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_reference(cls, reference: np.ndarray, spacing: tuple[float, ...], connectivity: int = 26
                       ) -> ReferenceLesions:
        ref = np.round(reference.astype(np.float64), 1)
        labels, n = label_instances(ref > 0, connectivity)
        weights = np.asarray(ndi.maximum(ref, labels, np.arange(1, n + 1))).reshape(-1) if n else np.zeros(0)
        return cls(lesion_centres_mm(labels, n, spacing), weights)


def detection_counts(pred_centres_mm: np.ndarray, ref: ReferenceLesions,
                     max_distance_mm: float = DEFAULT_MATCH_DISTANCE_MM) -> tuple[int, int, int, float, float, float]:
    """TP, FP, FN, wTP, wFN and detection F1 of predicted lesions given by their centres (mm), by the
    same centre matching and rules as :func:`evaluate_subject` (F1 NaN for an empty reference, 0 for an
    empty prediction): the fast path for searching decision rules."""
    assigned, score = match_by_centre(pred_centres_mm, ref.centres_mm, max_distance_mm)
    tp_of = true_positives(assigned, score)
    n_pred, n_ref = len(pred_centres_mm), len(ref.centres_mm)
    wtp = float(sum(ref.weights[k - 1] for k in tp_of))
    wfn = float(ref.weights.sum()) - wtp
    fp = n_pred - len(tp_of)
    if n_ref == 0:
        f1 = math.nan
    elif n_pred == 0:
        f1 = 0.0
    else:
        f1 = 2 * wtp / (wfn + fp + 2 * wtp) if (wfn + fp + 2 * wtp) > 0 else 0.0
    return len(tp_of), fp, n_ref - len(tp_of), wtp, wfn, f1


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(len(boxes[0])))


def _mean_in(values: np.ndarray, labels: np.ndarray, box: tuple[slice, ...], label: int) -> float:
    """Mean of ``values`` over the voxels of ``labels == label`` (inside its bounding box)."""
    return float(values[box][labels[box] == label].mean())


def _dice(soft_ref: np.ndarray, binary_pred: np.ndarray) -> float:
    denom = soft_ref.sum() + binary_pred.sum()
    return float(2.0 * (soft_ref * binary_pred).sum() / denom) if denom > 0 else 0.0


def evaluate_subject(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: tuple[float, float, float],
    uncertainty: np.ndarray | None = None,
    subject_id: str = "",
    matching: Matching | str = Matching.CENTRE,
    max_distance_mm: float = DEFAULT_MATCH_DISTANCE_MM,
    connectivity: int = 26,
) -> SubjectMetrics:
    """All Task 3 metrics for one subject (arrays on the same grid).

    Args:
        prediction: continuous map in [0, 1].
        reference: mean of the raters (0, 0.5, 1), or a binary mask.
        spacing: voxel size in mm.
        uncertainty: map in [0, 1]; without it the uncertainty scores are NaN.
        matching: ``centre`` (distance between centres, the challenge's) or ``overlap``.
        max_distance_mm: centre matching threshold.

    Raises:
        ValueError: arrays of different shapes, or a bad ``max_distance_mm``.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"{subject_id}: prediction shape {prediction.shape} != reference shape {reference.shape}")
    if uncertainty is not None and uncertainty.shape != reference.shape:
        raise ValueError(f"{subject_id}: uncertainty shape {uncertainty.shape} != reference shape {reference.shape}")
    if not max_distance_mm > 0:
        raise ValueError(f"max_distance_mm must be > 0, got {max_distance_mm}")
    matching = Matching(matching)
    voxel = float(np.prod(spacing))
    r = _Reference.of(reference, connectivity)
    if not (_in_unit_range(prediction) and (uncertainty is None or _in_unit_range(uncertainty))):
        return SubjectMetrics(subject_id, False, 0.0 if r.n else math.nan, 0.0 if r.n else math.nan, math.inf,
                              0.0, 0.0, 0, 0, r.n, 0.0, float(r.weights.sum()), r.n, 0, r.total * voxel, math.nan)

    pred_bin = prediction >= 0.5
    pred_labels, n_pred = label_instances(pred_bin, connectivity)
    avd = abs(float(np.where(pred_bin, prediction, 0.0).sum()) - r.total) * voxel
    pc_all = lesion_centres_mm(pred_labels, n_pred, spacing)
    rc_all = lesion_centres_mm(r.labels, r.n, spacing)
    assigned, score = _assign(matching, pred_labels, n_pred, r.labels, r.n, pc_all, rc_all, max_distance_mm)
    tp_of = true_positives(assigned, score)
    tp_preds = set(tp_of.values())
    fp_preds = [j for j in range(1, n_pred + 1) if j not in tp_preds]
    fn_refs = [k for k in range(1, r.n + 1) if k not in tp_of]
    wtp = float(sum(r.weights[k - 1] for k in tp_of))
    wfn = float(sum(r.weights[k - 1] for k in fn_refs))
    # Per-lesion work happens inside bounding boxes (a lesion is tiny next to the volume).
    pred_boxes = ndi.find_objects(pred_labels, max_label=n_pred) if n_pred else []
    ref_boxes = ndi.find_objects(r.labels, max_label=r.n) if r.n else []
    pred_vox = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    assigned_preds = _assigned_regions(tp_of, assigned, n_pred, pred_labels, pred_boxes, r, ref_boxes)
    if r.n == 0:
        f1 = dice = math.nan
    elif n_pred == 0:
        f1 = dice = 0.0
    else:
        f1 = 2 * wtp / (wfn + len(fp_preds) + 2 * wtp) if (wfn + len(fp_preds) + 2 * wtp) > 0 else 0.0
        dices = [_dice(soft, preds) for _, _, soft, preds in assigned_preds.values()]
        dice = float(np.mean(dices)) if dices else 0.0
    rows, unc_flags, unc_voxels = _lesion_rows(
        subject_id, uncertainty, voxel, r.labels, r.n, r.weights, r.voxels, ref_boxes, rc_all,
        pred_labels, pred_vox, pred_boxes, pc_all, tp_of, fp_preds, assigned_preds)
    return SubjectMetrics(
        subject_id, True, f1, dice, avd, unc_flags, unc_voxels, len(tp_of), len(fp_preds), len(fn_refs), wtp, wfn,
        r.n, n_pred, r.total * voxel, float(pred_bin.sum()) * voxel, rows,
    )


def _in_unit_range(values: np.ndarray) -> bool:
    """Finite and within [0, 1]: a map the challenge scores (others make the subject invalid)."""
    return bool(np.isfinite(values).all() and values.min(initial=0) >= 0 and values.max(initial=0) <= 1)


@dataclass(frozen=True)
class _Reference:
    """A subject's reference lesions: the raters' mean rounded to 0.1, its instances, each instance's
    weight (its highest rater agreement) and voxel count, and the reference's total."""

    values: np.ndarray
    labels: np.ndarray
    n: int
    weights: np.ndarray
    voxels: np.ndarray
    total: float

    @classmethod
    def of(cls, reference: np.ndarray, connectivity: int) -> _Reference:
        ref = np.round(reference.astype(np.float64), 1)
        labels, n = label_instances(ref > 0, connectivity)
        index = np.arange(1, n + 1)
        weights = np.asarray(ndi.maximum(ref, labels, index)).reshape(-1) if n else np.zeros(0)
        voxels = np.asarray(ndi.sum_labels(np.ones_like(labels), labels, index)).reshape(-1)
        return cls(ref, labels, n, weights, voxels, float(ref.sum()))


def _assigned_regions(tp_of: dict, assigned: np.ndarray, n_pred: int, pred_labels: np.ndarray, pred_boxes,
                      r: _Reference, ref_boxes) -> dict:
    """Per detected reference lesion ``k``: the box holding it and the predictions assigned to it, and in
    that box the lesion, its soft reference values and the union of those predictions (Dice, voxel score)."""
    out = {}
    for k in tp_of:
        js = [j for j in range(1, n_pred + 1) if assigned[j] == k]
        box = _union_box([ref_boxes[k - 1]] + [pred_boxes[j - 1] for j in js])
        lesion = r.labels[box] == k
        out[k] = (box, lesion, np.where(lesion, r.values[box], 0.0), np.isin(pred_labels[box], js))
    return out


def _assign(matching: Matching, pred_labels: np.ndarray, n_pred: int, ref_labels: np.ndarray, n_ref: int,
            pc_all: np.ndarray, rc_all: np.ndarray, max_distance_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """``assigned[j]``: the reference lesion (1-based) prediction ``j`` goes to (0 = none), and ``score[j]``
    its closeness (lower is closer): by centre distance (the challenge's) or by overlap."""
    assigned = np.zeros(n_pred + 1, int)
    score = np.full(n_pred + 1, np.inf)
    if n_pred and n_ref:
        if matching == Matching.CENTRE:
            assigned, score = match_by_centre(pc_all, rc_all, max_distance_mm)
        else:
            both = (pred_labels > 0) & (ref_labels > 0)
            pairs, counts = np.unique(np.stack([pred_labels[both], ref_labels[both]]), axis=1, return_counts=True)
            for (j, k), c in zip(pairs.T, counts):
                if -c < score[j]:
                    assigned[j], score[j] = k, -c
    return assigned, score


def _lesion_rows(subject_id, uncertainty, voxel, ref_labels, n_ref, ref_weights, ref_vox, ref_boxes, rc_all,
                 pred_labels, pred_vox, pred_boxes, pc_all, tp_of, fp_preds, assigned_preds):
    """One row per reference lesion and per false positive (size, centre, detected, mean uncertainty),
    and the two uncertainty scores (flags, voxels; NaN without an uncertainty map)."""
    unc_flags = unc_voxels = math.nan
    rows = []
    flags = []
    voxel_scores = []
    for k in range(1, n_ref + 1):
        j = tp_of.get(k, 0)
        row = {"subject_id": subject_id, "kind": "reference", "id": k, "weight": float(ref_weights[k - 1]),
               "voxels": int(ref_vox[k - 1]), "volume_mm3": float(ref_vox[k - 1]) * voxel,
               "diameter_mm": float((6 * ref_vox[k - 1] * voxel / math.pi) ** (1 / 3)),
               "centre_mm": [round(float(v), 2) for v in rc_all[k - 1]], "detected": bool(j),
               "matched_prediction": int(j), "mean_uncertainty": math.nan}
        if uncertainty is not None:
            if j:
                u = _mean_in(uncertainty, pred_labels, pred_boxes[j - 1], j)
                flags.append(u < 0.5)
                box, lesion, _, preds = assigned_preds[k]
                unc_box = uncertainty[box]
                tp_vox = preds & lesion
                err = preds ^ lesion
                denom = tp_vox.sum() + err.sum()
                voxel_scores.append(float(((1 - unc_box[tp_vox]).sum() + unc_box[err].sum()) / denom))
            else:
                u = _mean_in(uncertainty, ref_labels, ref_boxes[k - 1], k)
                flags.append(u >= 0.5)
            row["mean_uncertainty"] = u
        rows.append(row)
    for j in fp_preds:
        nvox = int(pred_vox[j])
        row = {"subject_id": subject_id, "kind": "false_positive", "id": j, "weight": 0.0, "voxels": nvox,
               "volume_mm3": nvox * voxel, "diameter_mm": float((6 * nvox * voxel / math.pi) ** (1 / 3)),
               "centre_mm": [round(float(v), 2) for v in pc_all[j - 1]], "detected": False,
               "matched_prediction": int(j), "mean_uncertainty": math.nan}
        if uncertainty is not None:
            u = _mean_in(uncertainty, pred_labels, pred_boxes[j - 1], j)
            flags.append(u >= 0.5)
            row["mean_uncertainty"] = u
        rows.append(row)
    if uncertainty is not None:
        unc_flags = float(np.mean(flags)) if flags else math.nan
        unc_voxels = float(np.mean(voxel_scores)) if voxel_scores else math.nan
    return rows, unc_flags, unc_voxels


SUMMARY_KEYS = ("f1", "dice", "avd_mm3", "unc_flags", "unc_voxels", "tp", "fp", "fn")


def summarize(results: list[SubjectMetrics]) -> dict[str, dict[str, float]]:
    """Median, IQR (q25, q75), mean and count of each metric over subjects, ignoring NaN."""
    out = {}
    for key in SUMMARY_KEYS:
        values = np.array([getattr(r, key) for r in results], dtype=float)
        values = values[~np.isnan(values)]
        if values.size == 0:
            out[key] = {"median": math.nan, "q25": math.nan, "q75": math.nan, "mean": math.nan, "n": 0}
            continue
        finite = values[np.isfinite(values)]
        out[key] = {
            "median": float(np.median(values)),
            "q25": float(np.quantile(values, 0.25)),
            "q75": float(np.quantile(values, 0.75)),
            "mean": float(finite.mean()) if finite.size == values.size else math.inf,
            "n": int(values.size),
        }
    out["subjects"] = {"total": len(results), "invalid": sum(not r.valid for r in results)}
    return out
