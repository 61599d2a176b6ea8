"""Calibrate a checkpoint on labelled subjects (``lacunes calibrate``): fit its second stage (the
candidate re-scorer) on training subjects, choose its operating point (probability threshold, minimum
lesion volume, second-stage cut, extent) on validation subjects, and store both in a new checkpoint,
where the predictor reads them.

The validation subjects must be distinct from the training and the benchmark subjects; for the bundled
model they are ``lacunes synth --n 24 --seed 5151 --first-id 301``. Every subject is predicted once (the
``fast`` setting by default) on its own grid; every grid point is then scored with the challenge's
metrics, pooled over the validation subjects (rater-weighted detection F1, false positives of lacune-free
subjects included), and the best is kept among the points whose default uncertainty map is >= 0.5 in
under 2 % of the brain (``--max-uncertain-share``); an extent threshold is then chosen for Dice.

A second stage has one weight per feature (a new fit: :data:`lacunes.rescoring.SCALE_FREE_FEATURES`;
``--features fluid-relative`` for :data:`lacunes.rescoring.FLUID_RELATIVE_FEATURES`, its contrasts measured
against the subject's own fluid; ``--features rim-gain`` for :data:`lacunes.rescoring.RIM_GAIN_FEATURES`, the
same with the FLAIR rim counting only for a lacune; ``--features rim-far`` for
:data:`lacunes.rescoring.RIM_FAR_FEATURES`, the rim 1-2 voxels out against the tissue 4-5 voxels out;
``--features v1`` for the first set,
:data:`lacunes.rescoring.FEATURES`): it is refused when the training subjects give fewer than that many
candidates on lesions or off them (``--no-second-stage`` then calibrates the operating point alone), and
fitted with a warning when the candidates on lesions or those off them number under
:data:`FEW_CANDIDATES_PER_FEATURE` per feature (:func:`thin_fit_warning`; the report's fit records both counts).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

from lacunes.options import DEFAULT_THRESHOLD, FULL_SET, INFERENCE_PRESETS, INPUT_SETS

logger = logging.getLogger(__name__)

#: Fewer candidates than this per second-stage feature on the rarer side (on lesions or off them): fitted, with a
#: warning that it may not generalize (:func:`thin_fit_warning`).
FEW_CANDIDATES_PER_FEATURE = 10
#: The least validation data an operating point is chosen on without ``--force``: on fewer, every grid
#: point ties (2 subjects with 1 lacune chose p >= 0.999 and no minimum volume among pages of F1 = 1.000).
MIN_VALIDATION_SUBJECTS = 5
MIN_VALIDATION_LACUNES = 10
#: Grid rows printed (the best by pooled F1, then fewer false positives); the report holds them all.
ROWS_SHOWN = 8


def raw_case(predictor, files, cache: Path | None = None, modalities: str = FULL_SET, family: str = ""):
    """The :class:`~lacunes.operating_point.ValidationCase` (raw probability, normalized image, reference,
    spacing, brain mask) of one labelled subject in the
    model's space: the subject conformed as inference conforms it (:meth:`lacunes.inference.Predictor.prepare`),
    its rater labels as training conforms them, and the network's output (mean of the TTA variants'
    sigmoids) before the second stage and the operating point.

    With ``cache``, the raw probability is read from / written to ``cache/<subject>-<content>.npy`` (the
    caller keys the folder by checkpoint weights and setting, :func:`prediction_cache`; ``<content>`` hashes
    the bytes of the subject's image files, so that another subject under the same id is predicted anew,
    and the same subject met in another fitting or validation folder is not), so that choosing the
    operating point again, or fitting on a folder that shares subjects with an earlier one, does not
    predict again. A map kept by the older layout (a subfolder per fitting or validation folder) is taken
    from there. The rater labels must lie on the subject's grid
    (shape, spacing, origin, direction), as ``lacunes evaluate`` requires. ``modalities``: the set of
    contrasts the subject is read with (the others zero, :data:`lacunes.options.INPUT_SETS`); ``family``:
    the family of subjects it belongs to."""
    import numpy as np

    from lacunes.checkpoint import sha256_of
    from lacunes.geometry import check_same_grid
    from lacunes.io import read_subject, read_volume
    from lacunes.operating_point import ValidationCase
    from lacunes.writing import atomic_output

    labels = files.label_paths()
    if not labels:
        raise ValueError(f"{files.subject_id}: no rater label next to {next(iter(files.paths.values()))}")
    subject = read_subject(files.subject_id, files.paths, modalities=modalities)
    model_input = predictor.prepare(subject)
    raters, grids = [], {Path(next(iter(files.paths.values()))): subject.geometry}
    for path in labels.values():
        array, grids[Path(path)] = read_volume(path)
        raters.append(array)
    check_same_grid(grids, hint=f" ({files.subject_id}: a rater's label must lie on its subject's grid)")
    content = ""
    if cache is not None:
        import hashlib

        content = hashlib.sha256("".join(sha256_of(p) for p in files.paths.values()).encode()).hexdigest()[:16]
    cached = None if cache is None else _pooled(cache, f"{files.subject_id}-{content}.npy")
    raw = np.load(cached) if cached is not None and cached.exists() else None
    if raw is None or raw.shape != model_input.normalized.shape[1:]:
        raw = predictor.raw(model_input).probability
        if cached is not None:  # a temporary of its own: runs sharing the pool never write one file at once
            with atomic_output(cached) as tmp:
                np.save(tmp, raw)
    if model_input.conform is not None:
        raters = [model_input.conform.mask_to_model(r > 0) for r in raters]
    # binary raters averaged (0, 0.5, 1); a single label file is taken as it is (lacunes.evaluation.load_reference)
    reference = np.mean([(r > 0) if len(raters) > 1 else r for r in raters], axis=0).astype(np.float32)
    return ValidationCase(raw, model_input.normalized, reference, model_input.spacing, model_input.mask, family)


def prediction_cache(root: Path, predictor, preset: str, modalities: str = FULL_SET) -> Path:
    """``--cache``'s folder for this network's weights, the setting and the set of contrasts: one pool of
    the raw maps of every subject it predicted, fitting and validation alike, each under its id and the
    hash of its files (:func:`raw_case`)."""
    from lacunes.checkpoint import weights_sha256

    return Path(root) / (f"{weights_sha256(predictor.network.state_dict())[:16]}-{preset}"
                         + ("" if modalities == FULL_SET else f"-{modalities}"))


def _pooled(cache: Path, name: str) -> Path:
    """``cache/name``; where only the older layout holds the map (``cache/<folder>/name``, a subfolder per
    fitting or validation folder), it is hard-linked into the pool (read in place where the file system
    cannot link)."""
    pooled = cache / name
    old = None if pooled.exists() else min(cache.glob(f"*/{name}"), default=None)
    if old is not None:
        try:
            os.link(old, pooled)
        except FileExistsError:  # another run linked it meanwhile
            pass
        except OSError:
            return old
    return pooled


def case_candidates(case, candidate_threshold: float = DEFAULT_THRESHOLD):
    """The second stage's candidates of a :func:`raw_case` (its raw map inside the brain): the label map,
    their number and their features (:func:`lacunes.rescoring.candidate_features`)."""
    import numpy as np

    from lacunes.rescoring import candidate_features

    masked = case.raw if case.mask is None else np.where(case.mask, case.raw, np.float32(0))
    return candidate_features(masked, case.image, case.mask, case.spacing, candidate_threshold)


def validation_shortfall(cases) -> str:
    """What the validation cases lack against :data:`MIN_VALIDATION_SUBJECTS` and
    :data:`MIN_VALIDATION_LACUNES` (lacunes: connected components of the reference), or ""."""
    from lacunes.instances import label_instances

    lacunes = sum(label_instances(case.reference > 0)[1] for case in cases)
    if len(cases) >= MIN_VALIDATION_SUBJECTS and lacunes >= MIN_VALIDATION_LACUNES:
        return ""
    return (f"{len(cases)} validation subject(s) with {lacunes} lacune(s): an operating point needs at least "
            f"{MIN_VALIDATION_SUBJECTS} subjects and {MIN_VALIDATION_LACUNES} lacunes, or every threshold ties")


#: The second stage's feature sets by name (``--features``).
FEATURE_SETS = ("scale-free", "fluid-relative", "rim-gain", "rim-far", "v1")


def feature_set(name: str) -> tuple[str, ...]:
    """The features of the set ``name`` (:data:`FEATURE_SETS`; :mod:`lacunes.rescoring`)."""
    from lacunes.rescoring import (
        FEATURES,
        FLUID_RELATIVE_FEATURES,
        RIM_FAR_FEATURES,
        RIM_GAIN_FEATURES,
        SCALE_FREE_FEATURES,
    )

    sets = {"scale-free": SCALE_FREE_FEATURES, "fluid-relative": FLUID_RELATIVE_FEATURES,
            "rim-gain": RIM_GAIN_FEATURES, "rim-far": RIM_FAR_FEATURES, "v1": FEATURES}
    if name not in sets:
        raise ValueError(f"unknown feature set {name!r} (the sets: {', '.join(FEATURE_SETS)})")
    return sets[name]


def thin_fit_warning(positives: int, negatives: int, features: int) -> str | None:
    """The warning for a second stage fitted on too few candidates of one side, or None: the rarer of the
    candidates on lesions and those off them must number :data:`FEW_CANDIDATES_PER_FEATURE` per feature (the
    events-per-variable rule of logistic regression). A network that proposes few false candidates on its
    fitting subjects leaves the second stage few to learn from, and its cut is then chosen lenient (288
    candidates of which 47 off a lesion, 12 features: the cut 0.2 chosen on the validation subjects let
    small perivascular spaces through on scans of another anatomy and generator, benchmarks/RESULTS.md
    "Reading: stage 8")."""
    rarer, side = min((positives, "on lesions"), (negatives, "off them"))
    if rarer >= FEW_CANDIDATES_PER_FEATURE * features:
        return None
    more = ("labelled subjects with lesions" if side == "on lesions"
            else "labelled subjects, lacune-free ones included, whose scans hold what the network mistakes for lacunes")
    return (f"the second stage is fitted on {positives} candidate(s) on lesions and {negatives} off them for "
            f"{features} features: {rarer} {side} is fewer than {FEW_CANDIDATES_PER_FEATURE} per feature, so its "
            f"weights and cut may not hold on other subjects; add {more}, and check it on the validation table below")


def fit_second_stage(predictor, folder: Path, candidate_threshold: float = DEFAULT_THRESHOLD, progress: bool = True,
                     modalities: str = FULL_SET, features: str = "scale-free", cache: Path | None = None):
    """The second stage fitted on the candidates of the labelled subjects in ``folder`` (read with the
    set of contrasts ``modalities``) over the feature set ``features`` (:data:`FEATURE_SETS`), with its
    fit's record (``cache``: as :func:`raw_case`'s). Raises ValueError when they are too few for its
    features."""
    import numpy as np
    from tqdm import tqdm

    from lacunes.layouts import find_subject_files
    from lacunes.rescoring import ALL_FEATURES, Rescorer, candidate_targets

    names = feature_set(features)
    train = find_subject_files(Path(folder))
    feats, targets = [], []
    for files in tqdm(train, desc="training candidates", unit="subject", disable=not progress):
        case = raw_case(predictor, files, cache, modalities=modalities)
        labels, n, f = case_candidates(case, candidate_threshold)
        feats.append(f)
        targets.append(candidate_targets(labels, n, case.reference))
    x = np.concatenate(feats) if feats else np.zeros((0, len(ALL_FEATURES)))
    y = np.concatenate(targets) if targets else np.zeros(0)
    positives, negatives = int((y > 0).sum()), int((y == 0).sum())
    if min(positives, negatives) < len(names):
        raise ValueError(
            f"{len(train)} training subject(s) in {folder} give {positives} candidate(s) on lesions and {negatives} "
            f"off them: the second stage has {len(names)} weights and needs at least as many of each; add "
            "labelled subjects, or calibrate the operating point alone (--no-second-stage)")
    warning = thin_fit_warning(positives, negatives, len(names))
    if warning:
        logger.warning("%s", warning)
    rescorer = Rescorer.fit(x, y, candidate_threshold, names=names)
    fitted = rescorer.score(x)
    fit = {
        "subjects": [f.subject_id for f in train], "folder": str(folder), "modalities": modalities,
        "candidates": int(len(y)),
        "positives": positives, "negatives": negatives, "thin_fit_warning": warning,
        "weights": dict(zip(rescorer.features, rescorer.weights)),
        "training_recall_at_0.5": float((fitted[y > 0] >= 0.5).mean()),
        "training_false_candidates_kept_at_0.5": int((fitted[y == 0] >= 0.5).sum()),
    }
    return rescorer, fit


def _row(s, mark: str = "") -> str:
    # Dice is computed for the chosen point and the thresholds that tie with it only: "-" elsewhere, not nan
    dice = "-" if math.isnan(s.dice) else f"{s.dice:.2f}"
    return (f"{s.threshold:>5.2f} {s.min_volume_mm3:>7.0f} {s.min_score if s.min_score is not None else '-':>5} "
            f"{s.extent_threshold if s.extent_threshold is not None else '-':>6} "
            f"{s.f1:>6.3f} {s.median_f1:>6.3f} {s.tp:>4} {s.fp:>5} {s.fn:>4} {s.fp_per_subject:>7.2f} {dice:>5} "
            f"{100 * s.uncertain_share:>5.2f}{mark}")


def print_table(scores, chosen, rows: int = ROWS_SHOWN) -> None:
    """The best grid points (pooled F1, then fewer FP) and the chosen one, marked."""
    header = (f"{'thr':>5} {'min mm3':>7} {'cut':>5} {'extent':>6} {'F1':>6} {'med F1':>6} {'TP':>4} {'FP':>5} "
              f"{'FN':>4} {'FP/subj':>7} {'Dice':>5} {'unc%':>5}")
    best = sorted(scores, key=lambda s: (-s.f1, s.fp))[:rows]
    print(f"best {len(best)} of {len(scores)} grid points (all in --report):")
    print(header)
    for s in best:
        print(_row(s, " < chosen" if s is chosen else ""))
    if chosen not in best:
        print(_row(chosen, " < chosen"))


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="lacunes calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the checkpoint to calibrate (a training checkpoint or a release)")
    p.add_argument("--val", required=True,
                   help="validation subjects (VALDO layout with rater labels); several folders separated by commas "
                        "are families of subjects, scored apart for --worst-family")
    stage = p.add_mutually_exclusive_group()
    stage.add_argument("--fit-rescorer", metavar="DIR", help="fit a second stage on these labelled (training) subjects")
    stage.add_argument("--keep-rescorer", action="store_true",
                       help="keep the checkpoint's fitted second stage (its score cut is chosen again)")
    stage.add_argument("--no-second-stage", action="store_true",
                       help="the operating point alone, without a second stage (few labelled subjects)")
    p.add_argument("--features", default="scale-free", choices=FEATURE_SETS,
                   help="with --fit-rescorer: the second stage's features (default scale-free: contrasts with the "
                        "surroundings, shape, size, depth and the fluid a candidate joins, no intensity on the "
                        "normalized scale; fluid-relative: the same with each contrast divided by the subject's own "
                        "fluid-to-brain contrast; rim-gain: fluid-relative with the FLAIR rim counting only for a lacune, not "
                        "against one whose thin rim coarse voxels average away; rim-far: fluid-relative with the rim "
                        "1-2 voxels out against the tissue 4-5 voxels out, beyond the reach of coarse voxels' blur; "
                        "v1: the first set, with intensities)")
    p.add_argument("--candidate-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"raw probability at which the second stage's candidates are formed (default {DEFAULT_THRESHOLD:g})")
    p.add_argument("--preset", default="fast", choices=INFERENCE_PRESETS, help="inference setting (default fast)")
    p.add_argument("--modalities", default=FULL_SET, choices=list(INPUT_SETS),
                   help=f"calibrate for this set of contrasts (default {FULL_SET}): the subjects are read with it (the "
                        "others zero), and another set's operating point and second stage are stored beside the "
                        "model's own (calibration_by_set), used for subjects that come with that set")
    p.add_argument("--out", help="write the calibrated checkpoint here (+ .sha256); default: only report")
    p.add_argument("--report", help="JSON file with the fit and the score of every grid point")
    p.add_argument("--max-uncertain-share", type=float, default=0.02,
                   help="only points whose uncertainty map is >= 0.5 in less than this share of the validation "
                        "brains (default 0.02; 1 = no constraint)")
    p.add_argument("--max-flagged-share", type=float, default=None, metavar="SHARE",
                   help="only operating points that flag (at least one false positive) at most this share of the "
                        "lacune-free validation subjects (e.g. 0.05; default: no such constraint)")
    p.add_argument("--force", action="store_true",
                   help=f"choose a point on fewer than {MIN_VALIDATION_SUBJECTS} validation subjects or "
                        f"{MIN_VALIDATION_LACUNES} lacunes (recorded as below the minimum)")
    p.add_argument("--worst-family", action="store_true",
                   help="with several --val folders: choose for the family it does worst on (the best lowest "
                        "family F1, then the pooled F1) instead of the pooled F1")
    p.add_argument("--cache", metavar="DIR",
                   help="keep the raw maps of the validation and fitting subjects here, a subfolder per checkpoint "
                        "weights, setting and set of contrasts, each map keyed by its subject's files, and reuse "
                        "them in any later run (whichever folder the subject is read from)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from lacunes.inference import Predictor
    from lacunes.operating_point import choose_operating_point
    from lacunes.settings import PRESETS
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    predictor = Predictor.from_checkpoint(args.checkpoint, PRESETS[args.preset].replace(progress=False),
                                          threshold=DEFAULT_THRESHOLD)  # its own point is not used: raw maps
    modalities = args.modalities
    if modalities not in predictor.release.input_sets_trained:
        logger.warning("%s was trained for %s, not %s: calibrating cannot teach it the missing contrasts",
                       args.checkpoint, ", ".join(predictor.release.input_sets_trained), modalities)
    report: dict = {"checkpoint": str(args.checkpoint), "setting": args.preset, "modalities": modalities}
    t0 = time.time()
    cache = prediction_cache(Path(args.cache), predictor, args.preset, modalities) if args.cache else None
    rescorer = _second_stage(args, predictor, cache, report)
    folders, families, cases = _validation_cases(args, predictor, cache, rescorer)
    seconds = time.time() - t0
    short = validation_shortfall(cases)
    if short:
        if not args.force:
            raise ValueError(f"{short}; add labelled validation subjects, or give --force to choose a point on "
                             "these (it is then recorded as below the minimum)")
        logger.warning("%s: the operating point is chosen anyway (--force) and recorded as below the minimum", short)
    budget = args.max_uncertain_share if args.max_uncertain_share < 1 else None
    worst = args.worst_family and len(folders) > 1
    op, cut, scores = choose_operating_point(cases, rescorer, max_uncertain_share=budget, progress=progress,
                                             max_flagged_share=args.max_flagged_share, worst_family=worst)
    key = (op.threshold, op.min_volume_mm3, cut, op.extent_threshold)
    chosen = next(s for s in scores if (s.threshold, s.min_volume_mm3, s.min_score, s.extent_threshold) == key)
    print_table(scores, chosen)
    objective = _explain_choice(args, op, cut, chosen, budget, [f.name for f in folders] if worst else None,
                                f"on {len(cases)} validation subjects from {modalities} ({seconds:.0f} s of prediction)")
    record = {**op.to_dict(), "chosen_on": {"folder": str(args.val), "subjects": [f.subject_id for _, f in families],
                                            "families": {f.name: sum(name == f.name for name, _ in families)
                                                         for f in folders},
                                            **({"below_minimum": short} if short else {}),
                                            "setting": args.preset, "modalities": modalities, "objective": objective,
                                            "score": chosen.to_dict()}}
    report["operating_point"] = record
    report["grid"] = [s.to_dict() for s in scores]
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    if args.out:
        _write_calibrated(args, record, rescorer, cut, report.get("rescorer_fit"))
    return 0


def _second_stage(args: argparse.Namespace, predictor, cache: Path | None, report: dict):
    """The second stage calibrate uses: the checkpoint's (``--keep-rescorer``), one fitted now
    (``--fit-rescorer``, its fit recorded in ``report``), or None."""
    _, own = predictor.release.post_processing_for(args.modalities)
    if args.keep_rescorer and own is None:
        raise ValueError(f"--keep-rescorer: {args.checkpoint} has no second stage")
    if not (args.keep_rescorer or args.fit_rescorer or args.no_second_stage):
        print("no second stage (give --fit-rescorer DIR to fit one, or --keep-rescorer to keep the checkpoint's)")
    if not args.fit_rescorer:
        return own if args.keep_rescorer else None
    rescorer, fit = fit_second_stage(predictor, Path(args.fit_rescorer), args.candidate_threshold,
                                     not args.no_progress, args.modalities, args.features,
                                     cache)
    report["rescorer_fit"] = fit
    print(f"second stage fitted on {fit['candidates']} candidates of {len(fit['subjects'])} subjects "
          f"({fit['positives']} on lesions); at a 0.5 cut it keeps {fit['training_recall_at_0.5']:.2f} of those "
          f"and {fit['training_false_candidates_kept_at_0.5']} of {fit['negatives']} others")
    for name, w in sorted(zip(rescorer.features, rescorer.weights), key=lambda t: -abs(t[1]))[:5]:
        print(f"  {name:<18} {w:+.2f}")
    return rescorer


def _validation_cases(args: argparse.Namespace, predictor, cache: Path | None, rescorer=None):
    """The ``--val`` folders, their (family, subject files) pairs and the subjects' validation cases, each
    prepared for the search (:func:`lacunes.operating_point.prepare_case`, with ``rescorer``) as it is read,
    so that one subject's full-size arrays at a time are held: for a 1 mm head about 60 MB a subject prepared
    against 93 MB as read (benchmarks/calibration_memory.py), where holding both, as calibrate did, took
    18 GB for 125 subjects."""
    from tqdm import tqdm

    from lacunes.layouts import find_subject_files
    from lacunes.operating_point import prepare_case

    folders = [Path(p) for p in args.val.split(",") if p]
    families = [(f.name, files) for f in folders for files in find_subject_files(f)]
    cases = [prepare_case(raw_case(predictor, files, cache, args.modalities, name), rescorer)
             for name, files in tqdm(families, desc="validation", unit="subject", disable=args.no_progress)]
    return folders, families, cases


def _explain_choice(args: argparse.Namespace, op, cut, chosen, budget: float | None, families: list[str] | None,
                    on: str) -> str:
    """Print the chosen point and why (``families``: the families of a worst-family choice), with a warning
    where no point kept the constraints; returns the rule as recorded (one description of it, recorded
    and printed)."""
    held = budget is not None and chosen.uncertain_share < budget
    flag_held = args.max_flagged_share is not None and chosen.flagged <= args.max_flagged_share * chosen.lacune_free
    goal = f"lowest family F1 ({', '.join(families)}), then pooled F1" if families else "pooled detection F1"
    held_limits = ([f"uncertainty >= 0.5 in < {100 * budget:g} % of the brain"] if held else []) + (
        [f"<= {100 * args.max_flagged_share:g} % of lacune-free subjects flagged"] if flag_held else [])
    why = (f"the best {goal}" + (" with " + " and ".join(held_limits) if held_limits else "")
           + " (ties: fewer false positives, the smaller minimum volume, then among the thresholds that tie on "
           "those the best median Dice, then the lower threshold and cut)")
    print(f"chosen: probability >= {op.threshold}, lesions >= {op.min_volume_mm3} mm³"
          + (f", second-stage score >= {cut}" if cut is not None else "")
          + (f", extent over probability >= {op.extent_threshold}" if op.extent_threshold is not None else "")
          + f": pooled F1 {chosen.f1:.3f}, {chosen.tp} TP, {chosen.fp} FP, {chosen.fn} FN, median Dice {chosen.dice:.2f}, "
          f"uncertainty >= 0.5 in {100 * chosen.uncertain_share:.2f} % of the brain, "
          f"{chosen.flagged} of {chosen.lacune_free} lacune-free subjects flagged"
          + (f", lowest family F1 {chosen.worst_family_f1:.3f}" if families else "")
          + f", {on}; why: {why}")
    if (budget is not None and not held) or (args.max_flagged_share is not None and not flag_held):
        print("warning: no grid point keeps " + " and ".join(
            ([f"the uncertainty share under {100 * budget:.1f} %"] if budget is not None else [])
            + ([f"the lacune-free subjects flagged at most {100 * args.max_flagged_share:g} %"]
               if args.max_flagged_share is not None else []))
            + "; the best point was chosen without those constraints")
    return ", ".join([goal, *held_limits])


def _write_calibrated(args: argparse.Namespace, record: dict, rescorer, cut, fit: dict | None) -> None:
    """The checkpoint with its new operating point and second stage, in its own precision, and its hash."""
    import torch

    from lacunes.checkpoint import load_network, save_checkpoint, write_sha256
    from lacunes.network import NetworkConfig

    net, payload = load_network(args.checkpoint)
    metadata = _calibrated_metadata(payload["metadata"], args.modalities, record, rescorer, cut, fit)
    half = all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    out = save_checkpoint(args.out, net, NetworkConfig.from_dict(payload["network"]), metadata, half=half)
    sidecar = write_sha256(out)
    print(f"written to {out} (sha256 {sidecar.read_text().split()[0][:12]}…)")


def _calibrated_metadata(metadata: dict, modalities: str, record: dict, rescorer, cut, fit: dict | None) -> dict:
    """A checkpoint's metadata with a new operating point and second stage: the model's own for the full
    set of contrasts, else the set's entry of ``calibration_by_set`` (the model's own kept)."""
    metadata = dict(metadata)
    if modalities == FULL_SET:
        target = metadata
    else:
        by_set = dict(metadata.get("calibration_by_set") or {})
        target = by_set[modalities] = dict(by_set.get(modalities) or {})
        metadata["calibration_by_set"] = by_set
    kept_fit = (target.get("rescorer") or {}).get("fit") or (metadata.get("rescorer") or {}).get("fit")
    target["operating_point"] = record
    target.pop("rescorer", None)
    if rescorer is not None:
        target["rescorer"] = {**rescorer.replace(min_score=cut).to_dict(), "fit": fit or kept_fit}
    return metadata


def main(argv: list[str] | None = None) -> int:
    import sys

    try:
        return run(build_parser().parse_args(argv))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
