#!/usr/bin/env python3
"""Calibrate a trained checkpoint: fit its second stage (candidate re-scorer) on the training subjects,
choose its operating point (probability threshold, minimum lesion volume, re-scorer cut) on validation
subjects, and store both in the checkpoint, where the predictor reads them.

The validation subjects must be distinct from the training and the benchmark subjects; for the bundled
model they are ``lacunes synth --n 24 --seed 5151 --first-id 301``. Every subject is predicted once
(the ``fast`` setting by default); every grid point is then scored with the challenge's metrics, pooled
over the validation subjects (rater-weighted detection F1, false positives of lacune-free subjects
included), and the best is kept among the points whose default uncertainty map is >= 0.5 in under 2 %
of the brain (``--max-uncertain-share``); an extent threshold is then chosen for Dice.

    python training/calibrate.py runs/x/checkpoints/final.pt --fit-rescorer data/synth-train \\
        --val data/synth-val --out model/lacunes.pt
    # choose the operating point again, keeping the checkpoint's fitted second stage:
    python training/calibrate.py model/lacunes.pt --keep-rescorer --val data/synth-val --out model/lacunes.pt \\
        --cache out/calibration-cache
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def raw_case(predictor, files, cache: Path | None = None):
    """(raw probability, normalized image, reference, spacing, brain mask) of one labelled subject.

    With ``cache``, the raw probability is read from / written to ``cache/<subject>.npy`` (the caller
    keys the folder by checkpoint weights and setting), so that choosing the operating point again
    does not predict again."""
    import numpy as np
    import torch

    from lacunes.evaluation import load_reference
    from lacunes.io import read_subject
    from lacunes.preprocessing import brain_mask, prepare_image, repair_nonfinite

    labels = files.label_paths()
    if not labels:
        raise SystemExit(f"{files.subject_id}: no rater label next to {files.paths['T1']}")
    subject = read_subject(files.subject_id, files.paths)
    image = repair_nonfinite(subject.image)
    normalized = prepare_image(image, predictor.normalization)
    mask = brain_mask(image)
    cached = None if cache is None else cache / f"{files.subject_id}.npy"
    if cached is not None and cached.exists():
        raw = np.load(cached)
    else:
        logits = predictor.variant_logits(normalized, mask)  # on the brain's box, as at inference
        raw = torch.sigmoid(logits).mean(0).clamp(0.0, 1.0).float().cpu().numpy()
        if cached is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.save(cached.with_suffix(".tmp.npy"), raw)
            cached.with_suffix(".tmp.npy").replace(cached)
    reference, _ = load_reference(tuple(labels.values()))
    return raw, normalized, reference, subject.geometry.spacing, mask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--val", required=True, help="validation subjects (VALDO layout with rater labels)")
    ap.add_argument("--fit-rescorer", metavar="DIR", help="fit a second stage on these labelled (training) subjects")
    ap.add_argument("--keep-rescorer", action="store_true",
                    help="keep the checkpoint's fitted second stage (its score cut is chosen again)")
    ap.add_argument("--candidate-threshold", type=float, default=0.5, help="raw probability of the candidates")
    ap.add_argument("--preset", default="fast", choices=["fast", "full"], help="inference setting (default fast)")
    ap.add_argument("--out", help="write the calibrated checkpoint here (+ .sha256); default: only report")
    ap.add_argument("--report", help="JSON file with the fit and the score of every grid point")
    ap.add_argument("--max-uncertain-share", type=float, default=0.02,
                    help="only points whose uncertainty map is >= 0.5 in less than this share of the validation "
                         "brains (default 0.02; 1 = no constraint)")
    ap.add_argument("--cache", metavar="DIR",
                    help="keep the raw validation maps here (a subfolder per checkpoint weights and setting) and "
                         "reuse them")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from tqdm import tqdm

    from lacunes.checkpoint import load_network, save_checkpoint, write_sha256
    from lacunes.inference import PRESETS, Predictor
    from lacunes.layouts import find_valdo_subjects
    from lacunes.network import NetworkConfig
    from lacunes.postprocessing import RAW, choose_operating_point
    from lacunes.rescoring import FEATURES, Rescorer, candidate_features, candidate_targets

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_rescorer and args.keep_rescorer:
        ap.error("--fit-rescorer and --keep-rescorer exclude each other")
    predictor = Predictor.from_checkpoint(args.checkpoint, PRESETS[args.preset].replace(progress=False))
    kept = predictor.rescorer if args.keep_rescorer else None
    if args.keep_rescorer and kept is None:
        ap.error(f"--keep-rescorer: {args.checkpoint} has no second stage")
    predictor.operating_point, predictor.rescorer = RAW, None
    report: dict = {"checkpoint": str(args.checkpoint), "setting": args.preset}
    rescorer = kept
    t0 = time.time()
    if args.fit_rescorer:
        train = find_valdo_subjects(Path(args.fit_rescorer))
        feats, targets = [], []
        for files in tqdm(train, desc="training candidates", unit="subject"):
            raw, normalized, reference, spacing, mask = raw_case(predictor, files)
            masked = np.where(mask, raw, np.float32(0))
            labels, n, f = candidate_features(masked, normalized, mask, spacing, args.candidate_threshold)
            feats.append(f)
            targets.append(candidate_targets(labels, n, reference))
        x, y = np.concatenate(feats), np.concatenate(targets)
        rescorer = Rescorer.fit(x, y, args.candidate_threshold)
        fitted = rescorer.score(x)
        report["rescorer_fit"] = {
            "subjects": [f.subject_id for f in train], "folder": str(args.fit_rescorer), "candidates": int(len(y)),
            "positives": int(y.sum()), "weights": dict(zip(FEATURES, rescorer.weights)),
            "training_recall_at_0.5": float((fitted[y > 0] >= 0.5).mean()),
            "training_false_candidates_kept_at_0.5": int((fitted[y == 0] >= 0.5).sum()),
        }
        print(f"second stage fitted on {len(y)} candidates of {len(train)} subjects ({int(y.sum())} on lesions); "
              f"at a 0.5 cut it keeps {report['rescorer_fit']['training_recall_at_0.5']:.2f} of those and "
              f"{report['rescorer_fit']['training_false_candidates_kept_at_0.5']} of {int((y == 0).sum())} others")
        for name, w in sorted(zip(FEATURES, rescorer.weights), key=lambda t: -abs(t[1])):
            print(f"  {name:<18} {w:+.2f}")
    subjects = find_valdo_subjects(Path(args.val))
    cache = None
    if args.cache:
        from lacunes.checkpoint import weights_sha256

        cache = Path(args.cache) / f"{weights_sha256(predictor.network.state_dict())[:16]}-{args.preset}"
    cases = [raw_case(predictor, files, cache) for files in tqdm(subjects, desc="validation", unit="subject")]
    seconds = time.time() - t0
    budget = args.max_uncertain_share if args.max_uncertain_share < 1 else None
    op, cut, scores = choose_operating_point(cases, rescorer, max_uncertain_share=budget)
    print(f"{'thr':>5} {'min mm3':>7} {'cut':>5} {'extent':>6} {'F1':>6} {'med F1':>6} {'TP':>4} {'FP':>5} "
          f"{'FN':>4} {'FP/subj':>7} {'Dice':>5} {'unc%':>5}")
    key = (op.threshold, op.min_volume_mm3, cut, op.extent_threshold)
    for s in scores:
        mark = " <" if (s.threshold, s.min_volume_mm3, s.min_score, s.extent_threshold) == key else ""
        print(f"{s.threshold:>5.2f} {s.min_volume_mm3:>7.0f} {s.min_score if s.min_score is not None else '-':>5} "
              f"{s.extent_threshold if s.extent_threshold is not None else '-':>6} "
              f"{s.f1:>6.3f} {s.median_f1:>6.3f} {s.tp:>4} {s.fp:>5} {s.fn:>4} {s.fp_per_subject:>7.2f} {s.dice:>5.2f} "
              f"{100 * s.uncertain_share:>5.2f}{mark}")
    chosen = next(s for s in scores if (s.threshold, s.min_volume_mm3, s.min_score, s.extent_threshold) == key)
    print(f"chosen: probability >= {op.threshold}, lesions >= {op.min_volume_mm3} mm³"
          + (f", second-stage score >= {cut}" if cut is not None else "")
          + (f", extent over probability >= {op.extent_threshold}" if op.extent_threshold is not None else "")
          + f": pooled F1 {chosen.f1:.3f}, {chosen.tp} TP, {chosen.fp} FP, {chosen.fn} FN, median Dice {chosen.dice:.2f}, "
          f"uncertainty >= 0.5 in {100 * chosen.uncertain_share:.2f} % of the brain, on {len(cases)} validation "
          f"subjects ({seconds:.0f} s of prediction)")
    held = budget is not None and chosen.uncertain_share < budget
    if budget is not None and not held:
        print(f"warning: no grid point keeps the uncertainty share under {100 * budget:.1f} %; "
              "the best F1 was chosen without that constraint")
    objective = "pooled detection F1" + (f", uncertainty >= 0.5 in < {100 * budget:g} % of the brain" if held else "")
    record = {**op.to_dict(), "chosen_on": {"folder": str(args.val), "subjects": [s.subject_id for s in subjects],
                                            "setting": args.preset, "objective": objective,
                                            "score": chosen.to_dict()}}
    report["operating_point"] = record
    report["grid"] = [s.to_dict() for s in scores]
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    if args.out:
        net, payload = load_network(args.checkpoint)
        metadata = {**payload["metadata"], "operating_point": record}
        fit = report.get("rescorer_fit") or (payload["metadata"].get("rescorer") or {}).get("fit")
        metadata.pop("rescorer", None)
        if rescorer is not None:
            metadata["rescorer"] = {**rescorer.replace(min_score=cut).to_dict(), "fit": fit}
        half = all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
        out = save_checkpoint(args.out, net, NetworkConfig.from_dict(payload["network"]), metadata, half=half)
        sidecar = write_sha256(out)
        print(f"written to {out} (sha256 {sidecar.read_text().split()[0][:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
