#!/usr/bin/env python3
"""Compare the second stage's feature sets in seconds before calibrating one (``lacunes calibrate`` takes
some 20 minutes a set on 125 validation subjects of a 2-core CPU).

Every candidate of the fitting and the validation subjects is described once (the network's raw maps from
``lacunes calibrate --cache``'s folder: predicted there when missing); then, for each set, the second stage is
fitted on the fitting candidates exactly as ``lacunes calibrate --fit-rescorer`` fits it, and scored on the
validation families at every probability threshold and second-stage cut of calibrate's grid, no minimum
volume (the first row: the network alone, every candidate kept). The counts are candidate-level: a lacune is
found when a kept candidate touches it, a kept candidate touching none is a false positive, a lacune-free
subject with one is flagged — not the challenge's centre matching, which calibrate then applies to the set
chosen. Per set, the point with the best lowest family F1 under the cap on lacune-free subjects flagged is
printed (the best of all, marked, where none is under it), with each family's counts.

With ``--acquisition``, each set is also fitted with the voxel sizes each subject was acquired at — the
T1's voxel (log of its geometric mean) and the FLAIR's coarsest axis (log), each also multiplied by the FLAIR
rim, so that the rim's weight may depend on them — taken from the phantom's
``desc-synthetic_acquisition.json`` (the voxel sizes before the generator brought it back to 1 mm), else
from its files' headers: what a second stage that knew the scan's resolution exactly could do.

    python benchmarks/feature_sets.py runs/sharp/release.pt --fit data/rescorer-all \\
        --val data/val-plain,data/val-acq,data/val-mimics,data/val-iso1.3 --cache out/calibration-cache \\
        --sets scale-free,fluid-relative,rim-gain,rim-far [--acquisition]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lacunes.calibration import (  # noqa: E402
    FEATURE_SETS,
    case_candidates,
    feature_set,
    prediction_cache,
    raw_case,
)
from lacunes.instances import label_instances  # noqa: E402
from lacunes.operating_point import MIN_SCORES, THRESHOLDS  # noqa: E402
from lacunes.options import DEFAULT_THRESHOLD  # noqa: E402
from lacunes.rescoring import ALL_FEATURES, Rescorer, candidate_targets, fit_logistic  # noqa: E402


@dataclass
class Described:
    """One subject's candidates: features (``n×len(ALL_FEATURES)``), targets, the reference lacunes each
    touches, the subject's count of lacunes and its family."""

    subject: str
    family: str
    features: np.ndarray
    targets: np.ndarray
    touches: list[set[int]]
    lacunes: int
    acquired_mm: dict[str, tuple[float, ...]] | None = None  # per modality (:func:`acquired_voxel_sizes`)


def describe(predictor, files, cache: Path | None, family: str) -> Described:
    """The candidates of one labelled subject (:func:`lacunes.calibration.raw_case`, its cache)."""
    case = raw_case(predictor, files, cache, family=family)
    labels, n, feats = case_candidates(case, DEFAULT_THRESHOLD)
    lacunes, count = label_instances(case.reference > 0)
    touches = [set(np.unique(lacunes[labels == k + 1]).tolist()) - {0} for k in range(n)]
    return Described(files.subject_id, family, feats, candidate_targets(labels, n, case.reference), touches, count,
                     acquired_voxel_sizes(files))


def acquired_voxel_sizes(files) -> dict[str, tuple[float, ...]]:
    """Each modality's acquired voxel size (mm): the phantom's ``desc-synthetic_acquisition.json`` where it
    has one (:func:`lacunes.synthetic.acquisition_record`), else its file's header."""
    import nibabel as nib

    sidecar = files.paths["T1"].with_name(f"{files.output_prefix}desc-synthetic_acquisition.json")
    if sidecar.is_file():
        try:
            return {m: tuple(float(z) for z in v) for m, v in json.loads(sidecar.read_text())["acquired_spacing_mm"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{sidecar}: no readable acquired_spacing_mm ({type(exc).__name__}: {exc}); "
                             "lacunes synth --acquisitions writes it") from None
    return {m: tuple(float(z) for z in nib.load(str(path)).header.get_zooms()[:3]) for m, path in files.paths.items()}


#: The columns ``--acquisition`` adds to a set: the T1's voxel (log of the geometric mean), the FLAIR's
#: coarsest axis (log), and each multiplied by the FLAIR rim.
ACQUISITION_COLUMNS = ("log_t1_voxel_mm", "log_flair_coarsest_mm", "flair_rim*log_t1_voxel_mm",
                       "flair_rim*log_flair_coarsest_mm")


def with_acquisition(s: Described) -> np.ndarray:
    """A subject's candidate features with :data:`ACQUISITION_COLUMNS` appended."""
    t1 = float(np.log(np.prod(s.acquired_mm["T1"])) / 3)
    flair = float(np.log(max(s.acquired_mm["FLAIR"])))
    rim = s.features[:, ALL_FEATURES.index("flair_rim")]
    extra = np.stack([np.full(len(rim), t1), np.full(len(rim), flair), rim * t1, rim * flair], axis=1)
    return np.hstack([s.features, extra])


class NoSecondStage:
    """Every candidate kept: the network alone, at each probability threshold."""

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.ones(len(features))


class AcquisitionAware:
    """A set's logistic regression over its features and :data:`ACQUISITION_COLUMNS` (:func:`fit_logistic`,
    as :meth:`Rescorer.fit` fits a set); it scores :func:`with_acquisition`'s arrays."""

    def __init__(self, x: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> None:
        self.columns = [ALL_FEATURES.index(f) for f in names] + list(
            range(len(ALL_FEATURES), len(ALL_FEATURES) + len(ACQUISITION_COLUMNS)))
        self.weights, self.bias, self.mean, self.std = fit_logistic(x[:, self.columns], y)
        self.names = (*names, *ACQUISITION_COLUMNS)

    def score(self, features: np.ndarray) -> np.ndarray:
        z = (features[:, self.columns] - self.mean) / self.std
        return 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))


def family_counts(subjects: list[Described], rescorer: Rescorer, threshold: float, cut: float) -> dict[str, list[int]]:
    """Per family: [lacunes found, lacunes, false positives, lacune-free subjects flagged, lacune-free subjects]."""
    out: dict[str, list[int]] = {}
    for s in subjects:
        row = out.setdefault(s.family, [0, 0, 0, 0, 0])
        keep = np.zeros(0, bool)
        if len(s.features):
            keep = (s.features[:, ALL_FEATURES.index("max_probability")] >= threshold) & (rescorer.score(s.features) >= cut)
        found = set().union(*(s.touches[k] for k in np.flatnonzero(keep))) if keep.any() else set()
        fp = int(sum(1 for k in np.flatnonzero(keep) if not s.touches[k]))
        row[0] += len(found)
        row[1] += s.lacunes
        row[2] += fp
        if s.lacunes == 0:
            row[3] += fp > 0
            row[4] += 1
    return out


def f1(row: list[int]) -> float:
    found, total, fp = row[0], row[1], row[2]
    return 2 * found / (found + total + fp) if found + total + fp else 1.0


def best_point(subjects: list[Described], rescorer: Rescorer, max_flagged_share: float):
    """The (threshold, cut, counts) with the best lowest family F1 (then fewer false positives) among those
    flagging at most ``max_flagged_share`` of the lacune-free subjects; the best of all where none does."""
    points = []
    for t in THRESHOLDS:
        for cut in MIN_SCORES:
            counts = family_counts(subjects, rescorer, t, cut)
            flagged, free = sum(r[3] for r in counts.values()), sum(r[4] for r in counts.values())
            fp = sum(r[2] for r in counts.values())
            points.append((min(f1(r) for r in counts.values()), -fp, flagged <= max_flagged_share * free, t, cut, counts))
    within = [p for p in points if p[2]] or points
    return max(within, key=lambda p: (p[0], p[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--fit", help="the fitting subjects (lacunes calibrate --fit-rescorer); without it only the "
                    "network alone is scored (a new network screened in half the time)")
    ap.add_argument("--val", required=True, help="validation families, folders separated by commas")
    ap.add_argument("--cache", help="lacunes calibrate --cache's folder (the raw maps; predicted there when missing)")
    ap.add_argument("--sets", default=",".join(s for s in FEATURE_SETS if s != "v1"),
                    help=f"feature sets to compare, of {', '.join(FEATURE_SETS)}")
    ap.add_argument("--acquisition", action="store_true",
                    help="also fit each set with the subjects' acquired voxel sizes (the module docstring)")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--max-flagged-share", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s] if args.fit else []
    if args.acquisition and not args.fit:
        ap.error("--acquisition fits the second stage: give its fitting subjects (--fit)")
    for s in sets:
        feature_set(s)  # an unknown set is refused before any prediction

    import torch
    from tqdm import tqdm

    from lacunes.inference import Predictor
    from lacunes.layouts import find_subject_files
    from lacunes.settings import PRESETS

    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint, PRESETS[args.preset].replace(progress=False),
                                          threshold=DEFAULT_THRESHOLD)
    cache = prediction_cache(Path(args.cache), predictor, args.preset) if args.cache else None
    fitting = [describe(predictor, f, cache, "fit")
               for f in tqdm(find_subject_files(Path(args.fit)), desc="fitting subjects", unit="subject")
               ] if args.fit else []
    folders = [Path(p) for p in args.val.split(",") if p]
    validation = [describe(predictor, f, cache, d.name)
                  for d in folders for f in tqdm(find_subject_files(d), desc=d.name, unit="subject")]
    x = np.concatenate([s.features for s in fitting]) if fitting else np.zeros((0, len(ALL_FEATURES)))
    y = np.concatenate([s.targets for s in fitting]) if fitting else np.zeros(0)
    print(f"{len(fitting)} fitting subjects ({len(y)} candidates, {int(y.sum())} on lesions); "
          f"{len(validation)} validation subjects in {len(folders)} families; candidate-level counts, no minimum volume")
    print(f"{'set':<26} {'lowest F1':>9} {'found':>9} {'FP':>4} {'flagged':>8} {'p >=':>6} {'cut':>4}  per family "
          "(found/lacunes, FP)")
    rows = [("network alone", NoSecondStage(), validation)]
    rows += [(name, Rescorer.fit(x, y, DEFAULT_THRESHOLD, names=feature_set(name)), validation) for name in sets]
    if args.acquisition:
        x_acq = np.concatenate([with_acquisition(s) for s in fitting])
        scored = [replace(s, features=with_acquisition(s)) for s in validation]
        rows += [(f"{name}+acquisition", AcquisitionAware(x_acq, y, feature_set(name)), scored) for name in sets]
    for name, rescorer, subjects in rows:
        worst, minus_fp, held, t, cut, counts = best_point(subjects, rescorer, args.max_flagged_share)
        found, total = sum(r[0] for r in counts.values()), sum(r[1] for r in counts.values())
        flagged, free = sum(r[3] for r in counts.values()), sum(r[4] for r in counts.values())
        families = ", ".join(f"{k} {r[0]}/{r[1]} {r[2]}" for k, r in counts.items())
        cut_text = "-" if isinstance(rescorer, NoSecondStage) else f"{cut:g}"
        print(f"{name:<26} {worst:>9.3f} {found:>4}/{total:<4} {-minus_fp:>4} {flagged:>3}/{free:<4} {t:>6g} {cut_text:>4}  "
              f"{families}{'' if held else '  (no point within the cap)'}")
        if isinstance(rescorer, AcquisitionAware):
            print(" " * 27 + "weights: " + ", ".join(f"{n} {w:+.2f}" for n, w in zip(rescorer.names, rescorer.weights)
                                                      if n in ACQUISITION_COLUMNS or n == "flair_rim"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
