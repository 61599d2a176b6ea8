#!/usr/bin/env python3
"""Preparation benchmark: raw scans in (skull on, T2 and FLAIR moved and stored on other grids) against
the same subjects as the network expects them (stripped, on one grid).

Subjects: the colin27 out-of-family family's subjects with lacunes (:mod:`families`, indices 21-30: the
Colin27 anatomy, measurement only), generated in memory. Each is given twice to the same model:

- **as generated**: the three contrasts stripped, on the T1's grid (``Predictor.predict``);
- **ideally prepared**: the raw files below with T2 and FLAIR brought back through the true transforms and
  the phantom's brain mask (what a perfect preparation gives: the yardstick of the raw path);
- **raw**: the T1 with Colin27's own skull and scalp around the phantom's brain (Debian's ``mricron-data``
  ``ch2.nii.gz``, scaled to the phantom's white matter; the space between the phantom's brain and the
  skull filled with the phantom's CSF), on a field of view that holds the whole head as a scanner's does
  (the phantom's brain box grown by ``--head-margin`` mm on every face), T2 and FLAIR likewise (the head's
  intensities through each contrast's CSF/WM scale), then moved — up to ``--max-angle`` degrees about each axis and
  ``--max-shift`` mm along each — and stored on 1×1×3 mm grids in sagittal and coronal stacks; written
  to NIfTI files and read through :func:`lacunes.preparation.prepare_subject` (registration and brain
  extraction), as ``lacunes predict`` reads a raw scan.

Reported: lacunes found and false positives per subject both ways (centres matched within 5 mm on the
phantom's grid, the challenge's metrics), the registration error against the known transforms (over the
brain's voxels), the brain mask's Dice against the phantom's brain, and the seconds of preparation.

    python benchmarks/preparation.py --section preparation --threads 2

Writes the ``preparation`` section of RESULTS.md and WORK/SECTION.json.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from results_md import device_label, replace_section, save_json  # noqa: E402

from lacunes.geometry import Geometry, resample_to, to_sitk  # noqa: E402
from lacunes.inference import Predictor  # noqa: E402
from lacunes.io import MODALITIES, Subject  # noqa: E402
from lacunes.metrics import evaluate_subject, summarize  # noqa: E402
from lacunes.preparation import prepare_subject  # noqa: E402
from lacunes.settings import PRESETS  # noqa: E402
from lacunes.synthetic.acquisition import CORONAL_AXES, SAGITTAL_AXES, moved_scan, registration_error_mm  # noqa: E402
from lacunes.synthetic.anatomy import colin27_path  # noqa: E402


def head_around(brain_image: np.ndarray, tissues: np.ndarray, head: np.ndarray, head_brain: np.ndarray) -> np.ndarray:
    """One contrast of a phantom with Colin27's head around it: the phantom inside its brain, the head's
    own voxels outside Colin27's brain scaled so that the head's CSF and white matter take the phantom's
    values (a linear map through both: skull dark, scalp as bright as the contrast makes fat-like tissue
    of that range), and the gap between the two brains filled with the phantom's CSF."""
    inside = brain_image != 0
    csf, wm = (np.median(brain_image[tissues == k]) for k in (1, 3))
    head_csf = np.percentile(head[head_brain], 10)
    head_wm = np.percentile(head[head_brain], 90)
    mapped = csf + (head - head_csf) * (wm - csf) / (head_wm - head_csf)
    out = np.where(head > 0, np.clip(mapped, 0, None), 0.0).astype(np.float32)
    out[head_brain & ~inside] = csf
    out[inside] = brain_image[inside]
    return out


def padded(geometry: Geometry, margin: int) -> Geometry:
    """``geometry`` grown by ``margin`` voxels on every face (the same voxels, more around them)."""
    origin = geometry.physical([-margin] * 3)  # the voxel ``margin`` steps before the first, on each axis
    return Geometry(tuple(s + 2 * margin for s in geometry.shape), geometry.spacing,
                    tuple(float(v) for v in origin), geometry.direction)


def raw_subject(case, head: np.ndarray, head_brain: np.ndarray, rng: np.random.Generator, max_angle: float,
                max_shift: float, folder: Path) -> tuple[dict, dict, np.ndarray]:
    """The raw files of a phantom (the module docstring), the true transforms of T2 and FLAIR, and the
    ideal preparation of the same files: T2 and FLAIR brought back through the true transforms and all
    three masked with the phantom's brain (what a perfect registration and brain extraction would give)."""
    import SimpleITK as sitk

    geometry = case["geometry"]
    brain = case["image"][0] != 0
    ideal = case["image"].copy()
    reference_grid = to_sitk(np.zeros(geometry.shape, np.float32), geometry)
    paths, truths = {}, {}
    for c, m in enumerate(MODALITIES):
        whole = head_around(case["image"][c], case["tissues"], head, head_brain)
        if m == "T1":
            array, geom = whole, geometry
        else:
            angles = rng.uniform(-max_angle, max_angle, 3)
            shift = rng.uniform(-max_shift, max_shift, 3)
            array, geom, truths[m] = moved_scan(whole, geometry, angles, shift, (3.0, 1.0, 1.0),
                                                SAGITTAL_AXES if m == "T2" else CORONAL_AXES)
            back = sitk.Resample(to_sitk(array, geom), reference_grid, truths[m], sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            ideal[c] = np.where(brain, sitk.GetArrayFromImage(back).transpose(2, 1, 0), 0.0)
        paths[m] = folder / f"{case['id']}_{m}.nii.gz"
        sitk.WriteImage(to_sitk(array, geom), str(paths[m]))
    return paths, truths, ideal


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "model" / "lacunes.pt"))
    ap.add_argument("--setting", default="fast")
    ap.add_argument("--subjects", default="21-30", help="indices of the colin27 family (with lacunes: 21-30)")
    ap.add_argument("--max-angle", type=float, default=12.0)
    ap.add_argument("--max-shift", type=float, default=15.0)
    ap.add_argument("--head-margin", type=int, default=40,
                    help="voxels (mm) added around the phantom's brain box so that the raw scans hold the whole head "
                         "and T2/FLAIR still cover the brain after the motion (0: the brain's box, as before 2026-12-06)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--section", default="preparation")
    ap.add_argument("--work", default=str(ROOT / "out" / "preparation"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from families import FAMILIES, index_range
    from quality import phantom_case

    from lacunes.io import read_volume

    head_path = colin27_path().with_name("ch2.nii.gz")
    if not head_path.is_file():
        print(f"{head_path} is missing: apt-get install mricron-data", file=sys.stderr)
        return 1
    family = FAMILIES["colin27"]
    predictor = Predictor.from_checkpoint(Path(args.model), PRESETS[args.setting].replace(progress=False))
    rng = np.random.default_rng(4242)
    rows, given, ideal, raw = [], [], [], []
    head_array, head_geometry = read_volume(head_path)
    stripped_array, _ = read_volume(colin27_path())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for index in index_range(args.subjects):
            phantom = family.phantom(index)
            case = phantom_case(phantom)
            geometry = Geometry(case.reference.shape, phantom.spacing, phantom.origin, phantom.direction)
            if args.head_margin:  # the scanner's field of view holds the whole head, not the brain's box
                m = args.head_margin
                geometry = padded(geometry, m)
                case.image = np.pad(case.image, ((0, 0),) + ((m, m),) * 3)
                case.reference = np.pad(case.reference, m)
                case.tissues = np.pad(case.tissues, m)
            head = resample_to(head_array.astype(np.float32), head_geometry, geometry)
            head_brain = resample_to(stripped_array.astype(np.float32), head_geometry, geometry) > 0
            info = {"id": case.subject_id, "image": case.image, "geometry": geometry, "tissues": case.tissues}
            paths, truths, ideal_image = raw_subject(info, head, head_brain, rng, args.max_angle, args.max_shift, Path(tmp))
            prob_given, _ = predictor.predict(Subject(case.subject_id, case.image.copy(), geometry))
            t0 = time.time()
            prob_ideal, _ = predictor.predict(Subject(case.subject_id, ideal_image, geometry))
            t1 = time.time()
            prepared = prepare_subject(case.subject_id, paths, "T1+T2+FLAIR")
            t2 = time.time()
            prob_raw, _ = predictor.predict(prepared)
            t3 = time.time()
            for results, prob in ((given, prob_given), (ideal, prob_ideal), (raw, prob_raw)):
                results.append(evaluate_subject(prob.astype(np.float64), case.reference, case.spacing,
                                                subject_id=case.subject_id))
            brain = case.image[0] != 0
            points = geometry.physical(np.argwhere(brain)[::500])
            errors = {m: float(registration_error_mm(prepared.preparation[f"registration_{m}"], truths[m], points).max())
                      for m in truths}
            mask = prepared.image[0] != 0
            dice = float(2 * (mask & brain).sum() / (mask.sum() + brain.sum()))
            inside = brain | head_brain  # the skull's inside: the phantom's brain and the CSF around it
            dice_inside = float(2 * (mask & inside).sum() / (mask.sum() + inside.sum()))
            row = {"subject": case.subject_id, "lacunes": given[-1].n_ref,
                   "found_given": given[-1].tp, "fp_given": given[-1].fp, "found_ideal": ideal[-1].tp,
                   "fp_ideal": ideal[-1].fp, "found_raw": raw[-1].tp, "fp_raw": raw[-1].fp,
                   "registration_error_mm": errors, "mask_dice": round(dice, 3), "mask_dice_inside_skull": round(dice_inside, 3),
                   "brain_ml": prepared.preparation["brain_extraction"]["brain_ml"],
                   "seconds": {"prediction_given": round(t1 - t0, 1), "preparation": round(t2 - t1, 1),
                               "prediction_raw": round(t3 - t2, 1),
                               **{k: v["seconds"] for k, v in prepared.preparation.items()}}}
            rows.append(row)
            print(f"  {case.subject_id}: found {row['found_given']}/{row['lacunes']} as generated, {row['found_ideal']} "
                  f"ideally prepared, {row['found_raw']} raw; FP {row['fp_given']} / {row['fp_ideal']} / {row['fp_raw']}; "
                  f"registration error T2 {errors['T2']:.2f} mm, FLAIR "
                  f"{errors['FLAIR']:.2f} mm; mask Dice {dice:.3f}; preparation {t2 - t1:.0f} s", flush=True)
    result = {"model": args.model, "setting": args.setting, "family": family.name, "head_margin": args.head_margin, "rows": rows,
              "given": summarize(given), "ideal": summarize(ideal), "raw": summarize(raw), "device": device_label("cpu"),
              "command": "python benchmarks/preparation.py " + shlex.join(sys.argv[1:])}
    save_json(work / f"{args.section}.json", result)
    replace_section(args.section, render(result, args))
    return 0


def render(result: dict, args) -> str:
    rows = result["rows"]
    n = len(rows)
    lacunes = sum(r["lacunes"] for r in rows)
    found = {k: sum(r[f"found_{k}"] for r in rows) for k in ("given", "ideal", "raw")}
    fp = {k: float(np.mean([r[f"fp_{k}"] for r in rows])) for k in ("given", "ideal", "raw")}
    errors = [e for r in rows for e in r["registration_error_mm"].values()]
    dice = [r["mask_dice"] for r in rows]
    inside = [r["mask_dice_inside_skull"] for r in rows if "mask_dice_inside_skull" in r]
    prep = [r["seconds"]["preparation"] for r in rows]
    lines = [
        "## Preparation: raw scans against the same subjects as generated",
        "",
        f"Command: `{result['command']}` — {result['device']}, torch {torch.__version__}. The colin27 family's "
        f"{n} subjects with lacunes (benchmarks/families.py; Colin27's anatomy, measurement only), model "
        f"`{Path(result['model']).name}`, `{result['setting']}`. Raw: Colin27's own skull and scalp around the phantom's "
        f"brain on a field of view that holds the head (the brain's box grown by {result.get('head_margin', 0)} mm on "
        f"every face), T2 and FLAIR moved by up to {args.max_angle:g}° about each axis and {args.max_shift:g} mm along each and "
        "stored on 1×1×3 mm grids (T2 sagittal, FLAIR coronal), read through `lacunes.preparation.prepare_subject`.",
        "",
        "| input | lacunes found | FP / subject | median F1 | median Dice |",
        "|---|---|---|---|---|",
        *(f"| {label} | {found[k]}/{lacunes} | {fp[k]:.2f} | {result[k]['f1']['median']:.2f} | "
          f"{result[k]['dice']['median']:.2f} |" for k, label in (
              ("given", "as generated (stripped, 1 mm, one grid)"),
              ("ideal", "the raw files ideally prepared (true transforms, the phantom's brain mask)"),
              ("raw", "raw, through lacunes.preparation (registration, deepbet)"))),
        "",
        f"Registration error (largest over the brain's voxels, T2 and FLAIR of {n} subjects): median "
        f"{np.median(errors):.2f} mm, largest {np.max(errors):.2f} mm. Brain mask Dice against the phantom's brain: "
        f"median {np.median(dice):.3f}, lowest {np.min(dice):.3f}"
        + (f"; against the skull's inside (the phantom's brain and the CSF between it and Colin27's skull, what a "
           f"brain mask of a real head encloses): median {np.median(inside):.3f}, lowest {np.min(inside):.3f}"
           if inside else "") + ". Preparation (two registrations and deepbet): "
        f"median {np.median(prep):.0f} s a subject, largest {np.max(prep):.0f} s.",
        "",
        "The raw path is judged against the ideal preparation of the same files (T2 and FLAIR of 3 mm slices lose "
        "small lacunes whatever registers them); the first row is the subject as the network was tuned to see it.",
        "",
        "| subject | lacunes | found as generated / ideal / raw | FP as generated / ideal / raw | registration error "
        "T2 / FLAIR mm | mask Dice | preparation s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["registration_error_mm"]
        lines.append(f"| {r['subject']} | {r['lacunes']} | {r['found_given']} / {r['found_ideal']} / {r['found_raw']} | "
                     f"{r['fp_given']} / {r['fp_ideal']} / {r['fp_raw']} | {e['T2']:.2f} / {e['FLAIR']:.2f} | "
                     f"{r['mask_dice']:.3f} | {r['seconds']['preparation']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
