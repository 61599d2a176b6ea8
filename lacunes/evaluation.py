"""Evaluate folders of predictions against references: pairing by subject id, CSV/JSON reports."""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lacunes.errors import GeometryMismatchError, LacunesInputError
from lacunes.geometry import check_same_grid
from lacunes.io import read_volume
from lacunes.metrics import (
    DEFAULT_MATCH_DISTANCE_MM,
    SUMMARY_KEYS,
    Matching,
    SubjectMetrics,
    evaluate_subject,
    summarize,
)
from lacunes.writing import atomic_output

logger = logging.getLogger(__name__)

#: The names ``lacunes predict`` gives a BIDS dataset's maps (:mod:`lacunes.layouts`).
BIDS_PREDICTION = "_label-lacune_probseg"
BIDS_UNCERTAINTY = "_label-lacune_desc-uncertainty_probseg"
#: A subject id in a prediction or label file name: what comes before ``_space-``, ``_desc-``,
#: ``_prediction.`` or the last ``…Lacunes.`` part (``sub-201_space-T1_prediction.nii.gz``, ``my_case_space-T1_…``).
_SID = re.compile(r"^(?P<sid>[^/]+?)_(space-|desc-|prediction\.|[^_]*Lacunes\.)")


@dataclass(frozen=True)
class EvaluationPair:
    subject_id: str
    prediction: Path | None  # None: the reference has no prediction (scored as an empty one)
    uncertainty: Path | None
    references: tuple[Path, ...]


def _sid(path: Path) -> str | None:
    m = _SID.match(path.name)
    return m["sid"] if m else None


def _label_files(ref_dir: Path) -> list[Path]:
    """Every ``*Lacunes`` label file of ``ref_dir``, or below it where it holds none itself (a tree)."""
    return sorted(ref_dir.glob("*Lacunes.nii*")) or sorted(ref_dir.rglob("*Lacunes.nii*"))


def _references(labels: list[Path], ref_dir: Path, sid: str) -> tuple[Path, ...]:
    """A subject's label files among ``labels`` (:func:`_label_files`): Rater1 and Rater2 when both exist,
    else its single ``*Lacunes`` file."""
    refs = [r for r in labels if fnmatch.fnmatchcase(r.name, f"{sid}_*Lacunes.nii*")]
    raters = [r for r in refs if re.search(r"desc-Rater[12]_", r.name)]
    chosen = tuple(raters) if len(raters) == 2 else tuple(refs)
    if len(chosen) not in (1, 2):
        raise LacunesInputError(f"{sid}: expected Rater1/Rater2 or one *Lacunes file in {ref_dir}, "
                                f"found {[r.name for r in refs] or 'none'}")
    return chosen


def pair_subjects(pred_dir: Path, ref_dir: Path) -> list[EvaluationPair]:
    """Pair ``<sid>_*prediction.nii.gz`` (and ``*uncertaintymap``) with ``<sid>_*Lacunes.nii.gz``; or, in a
    BIDS-derivatives tree that ``lacunes predict`` wrote for a BIDS dataset, each
    ``<entities>_space-T1w_label-lacune_probseg.nii.gz`` (and its ``desc-uncertainty`` map) with the
    ``<entities>_*Lacunes.nii.gz`` labels (in ``ref_dir`` or below it).

    The reference is the mean of Rater1 and Rater2 when both exist, else the single label file. A
    reference subject without a prediction is paired with ``prediction=None`` (scored as an empty
    prediction, and named in a warning): leaving it out would raise the scores.

    Raises:
        LacunesInputError: no prediction, or a prediction without a reference.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for d in (pred_dir, ref_dir):
        if not d.is_dir():
            raise LacunesInputError(f"folder {d} does not exist")
    preds = sorted(p for p in pred_dir.glob("*_prediction.nii*") if _sid(p))
    if not preds:  # a BIDS-derivatives tree
        preds = sorted(p for p in pred_dir.rglob(f"*{BIDS_PREDICTION}.nii*") if _sid(p))
    if not preds:
        raise LacunesInputError(f"no <id>_space-<space>_prediction.nii.gz in {pred_dir}, nor "
                                f"<entities>_space-T1w{BIDS_PREDICTION}.nii.gz below it")
    labels = _label_files(ref_dir)  # listed once: a tree is not searched again for each subject
    pairs = []
    for pred in preds:
        sid = _sid(pred)
        unc = (pred.with_name(pred.name.replace(BIDS_PREDICTION, BIDS_UNCERTAINTY)) if BIDS_PREDICTION in pred.name
               else pred.with_name(pred.name.replace("prediction", "uncertaintymap")))
        pairs.append(EvaluationPair(sid, pred, unc if unc.is_file() else None, _references(labels, ref_dir, sid)))
    predicted = {p.subject_id for p in pairs}
    missing = sorted({sid for r in labels if (sid := _sid(r)) and sid not in predicted})
    pairs += [EvaluationPair(sid, None, None, _references(labels, ref_dir, sid)) for sid in missing]
    if missing:
        logger.warning("%d subject(s) of %s have no prediction in %s and are scored as empty predictions: %s",
                       len(missing), ref_dir, pred_dir, ", ".join(missing))
    no_uncertainty = [p.subject_id for p in pairs if p.prediction is not None and p.uncertainty is None]
    if no_uncertainty:
        logger.warning("%d prediction(s) have no *uncertaintymap next to them (%s): their uncertainty scores are NaN",
                       len(no_uncertainty), ", ".join(no_uncertainty[:5]) + (" …" if len(no_uncertainty) > 5 else ""))
    return sorted(pairs, key=lambda p: p.subject_id)


def load_reference(paths: tuple[Path, ...]) -> tuple[np.ndarray, object]:
    """Mean of the given label files (binary raters → 0, 0.5, 1) and its geometry."""
    arrays, geoms = [], {}
    for p in paths:
        arr, geom = read_volume(p)
        arrays.append((arr > 0).astype(np.float32) if len(paths) > 1 else arr.astype(np.float32))
        geoms[p] = geom
    check_same_grid(geoms)
    return np.mean(arrays, axis=0), next(iter(geoms.values()))


def _read_map(path: Path) -> tuple[np.ndarray, object]:
    """A prediction or uncertainty map, float64, with the NaN voxels a NIfTI file holds kept as NaN (its
    reader returns them as 0), so that such a map is scored as invalid instead of as an empty one."""
    from lacunes.io import nan_mask

    array, geom = read_volume(path)
    array = array.astype(np.float64)
    nan = nan_mask(path, array.shape)
    if nan is not None:
        logger.warning("%s holds %d NaN voxel(s)", Path(path).name, int(nan.sum()))
        array[nan] = np.nan
    return array, geom


def evaluate_pair(pair: EvaluationPair, matching: Matching | str = Matching.CENTRE,
                  max_distance_mm: float = DEFAULT_MATCH_DISTANCE_MM) -> SubjectMetrics:
    ref, ref_geom = load_reference(pair.references)
    if pair.prediction is None:  # no prediction: an empty one (the challenge scores a missing case worst)
        return evaluate_subject(np.zeros(ref.shape), ref, ref_geom.spacing, None, pair.subject_id, matching,
                                max_distance_mm)
    pred, pred_geom = _read_map(pair.prediction)
    files = {pair.references[0]: ref_geom, pair.prediction: pred_geom}
    unc = None
    if pair.uncertainty is not None:
        unc, unc_geom = _read_map(pair.uncertainty)
        files[pair.uncertainty] = unc_geom
    try:
        check_same_grid(files)
    except GeometryMismatchError as exc:
        raise GeometryMismatchError(f"{pair.subject_id}: {exc}") from None
    result = evaluate_subject(pred, ref, ref_geom.spacing, unc, pair.subject_id, matching, max_distance_mm)
    if not result.valid:
        logger.warning("%s: prediction or uncertainty outside [0, 1] or not finite: scored as invalid",
                       pair.subject_id)
    return result


def write_reports(results: list[SubjectMetrics], out_dir: Path) -> dict[str, Path]:
    """``per_subject.csv``, ``lesions.csv``, ``summary.csv`` and ``summary.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    rows = [r.row() for r in results]
    paths["per_subject"] = _write_csv(out_dir / "per_subject.csv", rows)
    lesions = [{**row, "centre_mm": " ".join(map(str, row["centre_mm"]))} for r in results for row in r.lesions]
    paths["lesions"] = _write_csv(out_dir / "lesions.csv", lesions)
    summary = summarize(results)
    paths["summary_csv"] = _write_csv(out_dir / "summary.csv",
                                      [{"metric": k, **summary[k]} for k in SUMMARY_KEYS])
    paths["summary_json"] = out_dir / "summary.json"
    with atomic_output(paths["summary_json"]) as tmp:
        tmp.write_text(json.dumps({"summary": summary, "subjects": rows}, indent=1, default=lambda v: None))
    return paths


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def format_summary(results: list[SubjectMetrics]) -> str:
    """A plain-text table: one line per subject, then median [IQR] and mean per metric."""
    lines = [f"{'subject':<12} {'F1':>6} {'Dice':>6} {'AVD mm3':>9} {'unc-a':>6} {'unc-b':>6} "
             f"{'TP':>3} {'FP':>4} {'FN':>3}"]

    def fmt(v: float, w: int = 6, p: int = 3) -> str:
        return f"{'nan':>{w}}" if isinstance(v, float) and math.isnan(v) else f"{v:>{w}.{p}f}"

    for r in results:
        lines.append(f"{r.subject_id:<12} {fmt(r.f1)} {fmt(r.dice)} {fmt(r.avd_mm3, 9, 1)} {fmt(r.unc_flags)} "
                     f"{fmt(r.unc_voxels)} {r.tp:>3} {r.fp:>4} {r.fn:>3}" + ("" if r.valid else "  INVALID"))
    s = summarize(results)
    lines.append("")
    lines.append(f"{'metric':<10} {'median':>8} {'q25':>8} {'q75':>8} {'mean':>8} {'n':>4}")
    for k in SUMMARY_KEYS:
        v = s[k]
        lines.append(f"{k:<10} {fmt(v['median'], 8)} {fmt(v['q25'], 8)} {fmt(v['q75'], 8)} {fmt(v['mean'], 8)} "
                     f"{v['n']:>4}")
    return "\n".join(lines)
