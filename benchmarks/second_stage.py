#!/usr/bin/env python3
"""What the second stage sees on a family's subjects: every candidate of a calibrated checkpoint (raw
probability at the rescorer's candidate threshold, inside the brain), whether it lies on a lacune, its
score, each feature's pull on that score (weight × standardized value: the fitting phantoms' mean and
spread are the rescorer's own), and the subject's drawn acquisition (voxel size, slice thickness).

Answers "why does the second stage drop these lacunes?" on the out-of-family families
(benchmarks/families.py) without touching them for fitting: nothing is chosen here.

    python benchmarks/second_stage.py runs/contrast/calibrated-fluid-relative.pt --family wide \
        --subjects 21-30 --out out/second-stage-wide.json

Prints one line per lesion candidate and a summary of the kept and dropped lacunes and of the false
candidates the operating point lets through, against the feature with the largest weight.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from families import FAMILIES, index_range  # noqa: E402
from quality import phantom_case  # noqa: E402

from lacunes.inference import ModelInput, Predictor  # noqa: E402
from lacunes.options import FULL_SET  # noqa: E402
from lacunes.preprocessing import brain_mask, prepare_image, repair_nonfinite  # noqa: E402
from lacunes.rescoring import ALL_FEATURES, candidate_features, candidate_targets  # noqa: E402
from lacunes.settings import PRESETS  # noqa: E402


def acquisition_label(drawn: dict | None) -> str:
    """'thick 4.7 mm', 'voxels 1.56 mm' or '1 mm' for a phantom's drawn acquisition."""
    if not drawn:
        return "1 mm"
    if drawn.get("thick"):
        return f"thick {drawn['thick']['mm']:.1f} mm"
    if drawn.get("voxel_mm", 1.0) > 1.0:
        return f"voxels {drawn['voxel_mm']:.2f} mm"
    return "1 mm"


def subject_candidates(predictor: Predictor, op, rescorer, family: str, index: int) -> list[dict]:
    """The candidates of ``rescorer`` (the second stage, with the operating point ``op``) on one family
    subject, with target, score and each feature's pull."""
    ph = FAMILIES[family].phantom(index)
    case = phantom_case(ph)
    image = repair_nonfinite(case.image)
    mask = brain_mask(image)
    normalized = prepare_image(image, predictor.release.normalization)
    raw = predictor.raw(ModelInput(normalized, mask, case.spacing)).probability
    labels, n, feats = candidate_features(np.where(mask, raw, 0), normalized, mask, case.spacing,
                                          rescorer.candidate_threshold)
    if n == 0:
        return []
    targets = candidate_targets(labels, n, case.reference)
    scores = rescorer.score(feats)
    rows = []
    for j in range(n):
        values = {f: float(feats[j, ALL_FEATURES.index(f)]) for f in rescorer.features}
        pull = {f: float(w * (values[f] - m) / s)
                for f, w, m, s in zip(rescorer.features, rescorer.weights, rescorer.mean, rescorer.std)}
        over = bool(feats[j, ALL_FEATURES.index("max_probability")] >= op.threshold)  # some of it over the threshold
        rows.append({"subject": case.subject_id, "acquisition": acquisition_label(ph.acquisition),
                     "lacune": bool(targets[j] > 0), "score": float(scores[j]), "over_threshold": over,
                     "kept": over and bool(scores[j] >= rescorer.min_score),
                     "features": values, "pull": pull})
    return rows


def summarize(rows: list[dict], feature: str) -> list[str]:
    """Kept lacunes, dropped lacunes and false candidates over the operating point's threshold, by the
    median of ``feature``, how many have it below 0, and how many lie on a coarser acquisition."""
    groups = {"lacunes kept": [r for r in rows if r["lacune"] and r["kept"]],
              "lacunes dropped": [r for r in rows if r["lacune"] and not r["kept"]],
              "false candidates over the threshold": [r for r in rows if not r["lacune"] and r["over_threshold"]]}
    lines = [f"| candidates | n | median {feature} | {feature} < 0 | on thick slices or coarser voxels |",
             "|---|---|---|---|---|"]
    for name, g in groups.items():
        values = [r["features"][feature] for r in g]
        lines.append(f"| {name} | {len(g)} | {np.median(values):.2f} | {sum(v < 0 for v in values)} | "
                     f"{sum(r['acquisition'] != '1 mm' for r in g)} |" if g else f"| {name} | 0 | | | |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="a calibrated checkpoint with a second stage")
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--subjects", default="21-30", help="family indices, e.g. 21-30 (those with lacunes)")
    ap.add_argument("--out", type=Path, help="write every candidate's record here (JSON)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint, PRESETS["fast"].replace(progress=False))
    op, rescorer = predictor.release.post_processing_for(FULL_SET)
    if rescorer is None:
        print(f"{args.checkpoint}: this checkpoint has no second stage (calibrate it with --fit-rescorer first)",
              file=sys.stderr)
        return 2
    strongest = max(zip(rescorer.weights, rescorer.features), key=lambda wf: abs(wf[0]))[1]
    rows: list[dict] = []
    for index in index_range(args.subjects):
        got = subject_candidates(predictor, op, rescorer, args.family, index)
        rows += got
        for r in got:
            if r["lacune"]:
                top = sorted(r["pull"].items(), key=lambda kv: abs(kv[1]), reverse=True)[:3]
                print(f"{r['subject']} ({r['acquisition']}): lacune, score {r['score']:.2f}, "
                      f"{'kept' if r['kept'] else 'dropped'}; strongest pulls "
                      + ", ".join(f"{f} {v:+.1f}" for f, v in top), flush=True)
    print("\n".join(["", *summarize(rows, strongest)]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_name(args.out.name + ".partial")  # never a truncated file under the final name
        partial.write_text(json.dumps(rows, indent=1))
        partial.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
