"""Where each lacune of a set of subjects is lost, and what it looks like: for every reference lacune, the
step of inference that drops it (the network alone at p >= 0.5, the operating point's threshold and
minimum volume, the second stage) by the challenge's centre matching, the network's highest probability on
it, its size, the subject's acquisition, and its contrast to the tissue around it in each channel (the
median of the normalized input inside the lacune, eroded by one voxel when it has over 30, over the median
in a shell 2-4 voxels out; a fluid lacune is under 1 on T1 and FLAIR and over 1 on T2); with a second
stage, the candidate on it that scores best (its voxels, its score) and the two features that weigh most
against it (standardized value times weight: what a rejection comes from).

    python benchmarks/lost_lacunes.py runs/s8d/calibrated.pt --family wide --section lost-wide-stage8d
    python benchmarks/lost_lacunes.py runs/s8d/calibrated.pt --heldout 20     # in-family, for comparison

The subjects are made in memory (an out-of-family family of benchmarks/families.py: its subjects with
lacunes; or the held-out phantoms, seed 7777, ids 101-). The steps are those of ``quality.py`` (the same
maps, scored one lacune at a time). Writes the table into RESULTS.md with ``--section`` and the rows to
``--work``.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from quality import HELDOUT_FIRST_ID, HELDOUT_SEED, phantom_case, stages  # noqa: E402
from results_md import device_label, replace_section, save_json  # noqa: E402

from lacunes.inference import ModelInput, Predictor  # noqa: E402
from lacunes.instances import label_instances  # noqa: E402
from lacunes.metrics import evaluate_subject  # noqa: E402
from lacunes.options import FULL_SET, MODALITIES  # noqa: E402
from lacunes.postprocessing import finish_probability  # noqa: E402
from lacunes.preprocessing import brain_mask, prepare_image, repair_nonfinite  # noqa: E402
from lacunes.rescoring import candidate_features  # noqa: E402
from lacunes.settings import PRESETS  # noqa: E402

#: How each step is named in the table (the order of quality.stages; "kept" = found at the last step).
STEP_NAMES = ("network", "brain mask", "threshold", "second stage")


def contrasts(normalized: np.ndarray, lesion: np.ndarray, others: np.ndarray) -> list[float]:
    """Per channel: the median inside ``lesion`` (eroded when over 30 voxels) over the median in a shell
    2-4 voxels out, other lesions left out of the shell."""
    core = ndi.binary_erosion(lesion) if lesion.sum() > 30 else lesion
    shell = ndi.binary_dilation(lesion, iterations=4) & ~ndi.binary_dilation(lesion, iterations=1) & ~others
    out = []
    for channel in normalized:
        around = float(np.median(channel[shell])) if shell.any() else float("nan")
        out.append(float(np.median(channel[core])) / around if around > 0 else float("nan"))
    return out


def lacune_rows(predictor: Predictor, case, acquisition: dict | None) -> list[dict]:
    """One row per reference lacune of ``case`` (quality.Case)."""
    image = repair_nonfinite(case.image)
    op, rescorer = predictor.release.post_processing_for(FULL_SET)
    mask = brain_mask(image) if op.mask_outside_brain else None
    normalized = prepare_image(image, predictor.release.normalization)
    raw = predictor.raw(ModelInput(normalized, mask, case.spacing, input_set=FULL_SET))
    brain = mask if mask is not None else brain_mask(image)
    candidates = None
    if rescorer is not None:  # the second stage's candidates as finish_probability forms them, formed once
        masked = np.where(brain, raw.probability, np.float32(0)) if op.mask_outside_brain else raw.probability
        cand_labels, n_cand, feats = candidate_features(masked, normalized, brain, case.spacing,
                                                        rescorer.candidate_threshold)
        candidates = (cand_labels, rescorer.score(feats) if n_cand else np.zeros(0), feats)
    found = []
    for _, step_op, step_rescorer in stages(predictor, FULL_SET):
        formed = (cand_labels, n_cand, candidates[1]) if step_rescorer is not None else None
        p = finish_probability(raw.probability, step_op, brain, case.spacing, step_rescorer, normalized, formed)[0]
        r = evaluate_subject(p.astype(np.float64), case.reference, case.spacing, subject_id=case.subject_id)
        found.append({les["id"]: les["detected"] for les in r.lesions if les["kind"] == "reference"})
    labels, n = label_instances(np.round(case.reference.astype(np.float64), 1) > 0, 26)  # as evaluate_subject
    voxel = float(np.prod(case.spacing))
    thick = (acquisition or {}).get("thick") or {}
    rows = []
    for k in range(1, n + 1):
        lesion = labels == k
        lost = next((STEP_NAMES[i] for i, f in enumerate(found) if not f.get(k, False)), "kept")
        volume = float(lesion.sum()) * voxel
        rows.append({
            "subject_id": case.subject_id, "id": k, "volume_mm3": volume,
            "diameter_mm": float((6 * volume / np.pi) ** (1 / 3)),
            "voxel_mm": float((acquisition or {}).get("voxel_mm", case.spacing[0])),
            "slice_mm": float(thick["mm"]) if thick else None,
            "noise": (acquisition or {}).get("noise"),
            "network_max_p": float(raw.probability[lesion].max()),
            "contrast": dict(zip(MODALITIES, contrasts(normalized, lesion, (labels > 0) & ~lesion))),
            "lost_at": lost, **second_stage_view(rescorer, candidates, lesion),
        })
    return rows


def second_stage_view(rescorer, candidates, lesion: np.ndarray) -> dict:
    """The best-scoring second-stage candidate on ``lesion``: its voxels, score and the two features with
    the largest share against it (empty without a second stage or a candidate there)."""
    if candidates is None:
        return {}
    labels, scores, feats = candidates
    ids = [int(k) for k in np.unique(labels[lesion]) if k]
    if not ids:
        return {"candidate_voxels": 0}
    best = max(ids, key=lambda k: scores[k - 1])
    x = feats[best - 1, rescorer.columns]
    share = (x - np.asarray(rescorer.mean)) / np.asarray(rescorer.std) * np.asarray(rescorer.weights)
    against = sorted(zip(rescorer.features, share, x), key=lambda t: t[1])[:2]
    return {"candidate_voxels": int((labels == best).sum()), "score": float(scores[best - 1]),
            "against": [{"feature": f, "share": float(v), "value": float(value)} for f, v, value in against]}


def median(values: list[float]) -> str:
    values = [v for v in values if v == v]
    return f"{np.median(values):.2f}" if values else "–"


def section(rows: list[dict], args, seconds: float) -> str:
    what = f"family `{args.family}`" if args.family else f"{args.heldout} held-out phantoms (seed 7777)"
    lines = [f"## Where lacunes are lost: {args.name or args.model} on {what}", "",
             f"Command: `python benchmarks/lost_lacunes.py {args.model} "
             + (f"--family {args.family}" if args.family else f"--heldout {args.heldout}")
             + (f" --name '{args.name}'" if args.name else "") + (f" --threads {args.threads}" if args.threads else "")
             + (f" --section {args.section}" if args.section else "") + f"` — {device_label('cpu')}, "
             f"{seconds:.0f} s. Each reference lacune (mean of the two raters), the first step that loses it by "
             "centre matching (within 5 mm), the network's highest probability on it, and its contrast to the "
             "tissue around it (normalized input: median inside over median in a shell 2-4 voxels out).", ""]
    steps = {s: sum(r["lost_at"] == s for r in rows) for s in (*STEP_NAMES, "kept")}
    big = [r for r in rows if r["diameter_mm"] >= 4]
    lines += [f"{len(rows)} lacunes ({len(big)} of 4 mm or more): lost by the network {steps['network']}, "
              f"the brain mask {steps['brain mask']}, the threshold {steps['threshold']}, the second stage "
              f"{steps['second stage']}; kept {steps['kept']} (of 4 mm or more: "
              f"{sum(r['lost_at'] == 'kept' for r in big)} of {len(big)}).", "",
              "| | lacunes | median diameter mm | T1 | T2 | FLAIR | network's max p (median) |", "|---|---|---|---|---|---|---|"]
    for name, group in (("kept", [r for r in rows if r["lost_at"] == "kept"]),
                        ("lost by the network", [r for r in rows if r["lost_at"] == "network"]),
                        ("lost after it", [r for r in rows if r["lost_at"] not in ("kept", "network")])):
        lines.append(f"| {name} | {len(group)} | {median([r['diameter_mm'] for r in group])} | "
                     + " | ".join(median([r['contrast'][m] for r in group]) for m in MODALITIES)
                     + f" | {median([r['network_max_p'] for r in group])} |")
    lines += ["", "| subject | lacune | diameter mm | voxel mm | slices mm | noise | T1 | T2 | FLAIR | network's max p "
              "| second stage: candidate voxels, score; most against (value, share) | lost at |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["contrast"]
        slices = f"{r['slice_mm']:.1f}" if r["slice_mm"] else "–"
        noise = f"{r['noise']:.3f}" if r["noise"] is not None else "–"
        lines.append(f"| {r['subject_id']} | {r['id']} | {r['diameter_mm']:.1f} | {r['voxel_mm']:.2f} | {slices} | {noise} | "
                     f"{c['T1']:.2f} | {c['T2']:.2f} | {c['FLAIR']:.2f} | {r['network_max_p']:.3f} | "
                     f"{second_stage_cell(r)} | {r['lost_at']} |")
    return "\n".join(lines)


def second_stage_cell(row: dict) -> str:
    if "candidate_voxels" not in row:
        return "–"
    if not row["candidate_voxels"]:
        return "no candidate"
    against = "; ".join(f"{a['feature']} {a['value']:.2f} ({a['share']:+.2f})" for a in row["against"])
    return f"{row['candidate_voxels']}, {row['score']:.2f}; {against}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a checkpoint (its operating point and second stage for T1+T2+FLAIR)")
    ap.add_argument("--family", choices=["colin27", "wide"], help="an out-of-family family: its subjects with lacunes")
    ap.add_argument("--heldout", type=int, default=0, help="instead: the first N held-out phantoms")
    ap.add_argument("--setting", default="fast", choices=sorted(PRESETS))
    ap.add_argument("--name", default="", help="the model's name in the section's title")
    ap.add_argument("--section", default="", help="RESULTS.md section to write (none: print only)")
    ap.add_argument("--work", default=str(ROOT / "out" / "lost-lacunes"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if bool(args.family) == bool(args.heldout):
        ap.error("give one of --family and --heldout")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.family:
        from families import FAMILIES

        family = FAMILIES[args.family]
        subjects = [partial(family.phantom, k) for k in family.indices[family.lacune_free:]]
    else:
        from lacunes.synthetic import generate_phantom

        subjects = [partial(generate_phantom, HELDOUT_SEED, HELDOUT_FIRST_ID + k, None) for k in range(args.heldout)]
    predictor = Predictor.from_checkpoint(args.model, PRESETS[args.setting].replace(progress=False))
    t0, rows = time.time(), []
    for make in subjects:
        ph = make()
        new = lacune_rows(predictor, phantom_case(ph), ph.acquisition)
        rows += new
        print(f"  {ph.subject_id}: " + ", ".join(f"{r['diameter_mm']:.1f} mm {r['lost_at']}" for r in new), flush=True)
    text = section(rows, args, time.time() - t0)
    save_json(Path(args.work) / f"{args.section or 'lost-lacunes'}.json", rows)
    if args.section:
        replace_section(args.section, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
