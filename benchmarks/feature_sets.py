#!/usr/bin/env python3
"""Compare the second stage's feature sets in seconds before calibrating one (``lacunes calibrate`` takes
some 20 minutes a set on 125 validation subjects of a 2-core CPU).

Every candidate of the fitting and the validation subjects is described once (the network's raw maps from
``lacunes calibrate --cache``'s folder: predicted there when missing); then, for each set, the second stage is
fitted on the fitting candidates exactly as ``lacunes calibrate --fit-rescorer`` fits it, and scored on the
validation families at every probability threshold and second-stage cut of calibrate's grid, no minimum
volume. The counts are candidate-level: a lacune is found when a kept candidate touches it, a kept
candidate touching none is a false positive, a lacune-free subject with one is flagged — not the challenge's
centre matching, which calibrate then applies to the set chosen. Per set, the point with the best lowest
family F1 under the cap on lacune-free subjects flagged is printed, with each family's counts.

    python benchmarks/feature_sets.py runs/sharp/release.pt --fit data/rescorer-all \\
        --val data/val-plain,data/val-acq,data/val-mimics,data/val-iso1.3 --cache out/calibration-cache \\
        --sets scale-free,fluid-relative,rim-gain,rim-far
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lacunes.calibration import (  # noqa: E402
    FEATURE_SETS,
    case_candidates,
    feature_set,
    fitting_cache,
    prediction_cache,
    raw_case,
    validation_cache,
)
from lacunes.instances import label_instances  # noqa: E402
from lacunes.operating_point import MIN_SCORES, THRESHOLDS  # noqa: E402
from lacunes.options import DEFAULT_THRESHOLD  # noqa: E402
from lacunes.rescoring import ALL_FEATURES, Rescorer, candidate_targets  # noqa: E402


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


def describe(predictor, files, cache: Path | None, family: str) -> Described:
    """The candidates of one labelled subject (:func:`lacunes.calibration.raw_case`, its cache)."""
    case = raw_case(predictor, files, cache, family=family)
    labels, n, feats = case_candidates(case, DEFAULT_THRESHOLD)
    lacunes, count = label_instances(case.reference > 0)
    touches = [set(np.unique(lacunes[labels == k + 1]).tolist()) - {0} for k in range(n)]
    return Described(files.subject_id, family, feats, candidate_targets(labels, n, case.reference), touches, count)


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
    ap.add_argument("--fit", required=True, help="the fitting subjects (lacunes calibrate --fit-rescorer)")
    ap.add_argument("--val", required=True, help="validation families, folders separated by commas")
    ap.add_argument("--cache", help="lacunes calibrate --cache's folder (the raw maps; predicted there when missing)")
    ap.add_argument("--sets", default=",".join(s for s in FEATURE_SETS if s != "v1"),
                    help=f"feature sets to compare, of {', '.join(FEATURE_SETS)}")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--max-flagged-share", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
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
    fitting = [describe(predictor, f, fitting_cache(cache, args.fit), "fit")
               for f in tqdm(find_subject_files(Path(args.fit)), desc="fitting subjects", unit="subject")]
    folders = [Path(p) for p in args.val.split(",") if p]
    validation = [describe(predictor, f, validation_cache(cache, d, len(folders)), d.name)
                  for d in folders for f in tqdm(find_subject_files(d), desc=d.name, unit="subject")]
    x = np.concatenate([s.features for s in fitting])
    y = np.concatenate([s.targets for s in fitting])
    print(f"{len(fitting)} fitting subjects ({len(y)} candidates, {int(y.sum())} on lesions); "
          f"{len(validation)} validation subjects in {len(folders)} families; candidate-level counts, no minimum volume")
    print(f"{'set':<16} {'lowest F1':>9} {'found':>9} {'FP':>4} {'flagged':>8} {'p >=':>6} {'cut':>4}  per family "
          "(found/lacunes, FP)")
    for name in sets:
        rescorer = Rescorer.fit(x, y, DEFAULT_THRESHOLD, names=feature_set(name))
        worst, minus_fp, held, t, cut, counts = best_point(validation, rescorer, args.max_flagged_share)
        found, total = sum(r[0] for r in counts.values()), sum(r[1] for r in counts.values())
        flagged, free = sum(r[3] for r in counts.values()), sum(r[4] for r in counts.values())
        families = ", ".join(f"{k} {r[0]}/{r[1]} {r[2]}" for k, r in counts.items())
        print(f"{name:<16} {worst:>9.3f} {found:>4}/{total:<4} {-minus_fp:>4} {flagged:>3}/{free:<4} {t:>6g} {cut:>4g}  "
              f"{families}{'' if held else '  (no point within the cap)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
