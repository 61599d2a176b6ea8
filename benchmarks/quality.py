#!/usr/bin/env python3
"""Quality benchmark: models on held-out synthetic subjects, in the challenge's own metrics, with what
lies under every predicted lesion (lacune, perivascular space, WMH, CSF, brain edge, outside the brain,
other tissue), the uncertainty options compared, and detection rate against lesion diameter.

Each model is run as the container runs it: its checkpoint's operating point (threshold, minimum
lesion volume) and the brain mask applied (``--raw`` to switch both off). Writes predictions and
evaluation reports under --work, the plot next to this file, and the quality section of RESULTS.md.

    python benchmarks/quality.py                          # blob · fast, β=0 · fast, blob · full (all 20)
    python benchmarks/quality.py --full-subjects 5        # full recipe on the first 5 only (CPU)
    python benchmarks/quality.py --runs before=runs/init/cpu-blob.pt:fast --section quality-before
    python benchmarks/quality.py --generated --runs x=runs/x.pt:full   # no data folder, no SimpleITK (GPU machines)
    python benchmarks/quality.py --family colin27 --runs "bundled=model/lacunes.pt:fast" --no-steps \
        --section family-colin27-bundled        # an out-of-family family (benchmarks/families.py), in memory

Besides the challenge's metrics, each run reports the lacunes found of 4 mm and more and the share of
lacune-free subjects flagged (at least one false positive): the number a cohort study reads first.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from results_md import device_label, replace_section, save_json  # noqa: E402

from lacunes.breakdown import CATEGORIES, classify_predictions, summarize_breakdown  # noqa: E402
from lacunes.evaluation import load_reference  # noqa: E402
from lacunes.inference import ModelInput, Predictor  # noqa: E402
from lacunes.io import read_subject, read_volume  # noqa: E402
from lacunes.layouts import find_valdo_subjects  # noqa: E402
from lacunes.metrics import evaluate_subject, summarize  # noqa: E402
from lacunes.options import FULL_SET, INPUT_SETS, MODALITIES, look_up_option  # noqa: E402
from lacunes.postprocessing import RAW, OperatingPoint, finish_probability  # noqa: E402
from lacunes.preprocessing import brain_mask, prepare_image, repair_nonfinite  # noqa: E402
from lacunes.settings import PRESETS  # noqa: E402
from lacunes.uncertainty import UncertaintyMode  # noqa: E402
from lacunes.writing import write_volume  # noqa: E402

HELDOUT_SEED = 7777
HELDOUT_FIRST_ID = 101
BINS = [(3, 5), (5, 7), (7, 10), (10, 16)]
MODES = [UncertaintyMode.INVERSE_LOGIT, UncertaintyMode.TTA_STD, UncertaintyMode.ENTROPY]


def ensure_heldout(folder: Path, n: int) -> None:
    """Generate the held-out subjects if missing, and the tissue sidecars of subjects made before
    phantoms carried them (regenerated from the seed: a subject depends on seed and id only)."""
    from lacunes.synthetic import generate_dataset, generate_phantom

    have = len(list(folder.glob("sub-*_desc-masked_T1.nii.gz"))) if folder.is_dir() else 0
    if have < n:
        print(f"generating {n} held-out subjects (seed {HELDOUT_SEED}) in {folder}")
        generate_dataset(folder, n, HELDOUT_SEED, first_id=HELDOUT_FIRST_ID, progress=True)
    for files in find_valdo_subjects(folder)[:n]:
        path = tissue_path(files)
        if not path.is_file():
            index = int(files.subject_id.split("-")[1])
            phantom = generate_phantom(HELDOUT_SEED, index)
            _, geom = read_volume(files.paths["T1"])
            write_volume(phantom.tissues, geom, path)
            print(f"  {files.subject_id}: tissue sidecar regenerated")


def tissue_path(files) -> Path:
    return files.paths["T1"].with_name(f"{files.output_prefix}desc-synthetic_tissues.nii.gz")


def parse_runs(text: str, default_full: int | None) -> list[tuple[str, Path, str, int | None, str]]:
    """``name=checkpoint:setting[:n][@SET],...`` → (name, checkpoint, setting, subjects or None = all, set of
    contrasts: the subjects are given with only those, the others zero, as a subject without them is read)."""
    runs = []
    for item in text.split(","):
        if "=" not in item:
            raise SystemExit(f"--runs: {item!r} is not NAME=CHECKPOINT:SETTING (runs are separated by commas: a "
                             "name cannot hold one)")
        name, rest = item.rsplit("=", 1)
        rest, _, modalities = rest.partition("@")
        parts = rest.split(":")
        n = int(parts[2]) if len(parts) > 2 else (default_full if parts[1] == "full" else None)
        runs.append((name, Path(parts[0]) if Path(parts[0]).is_absolute() else ROOT / parts[0], parts[1], n,
                     look_up_option(modalities or FULL_SET, INPUT_SETS, "set of contrasts")))
    return runs


def absent_channels(modalities: str) -> list[int]:
    """The channels a subject given with only the set ``modalities`` holds as zeros."""
    return [c for c, m in enumerate(MODALITIES) if m not in INPUT_SETS[modalities]]


def stages(predictor, modalities: str = FULL_SET) -> list[tuple[str, OperatingPoint, object]]:
    """The inference steps added one at a time, ending with the checkpoint's own configuration (for the
    set of contrasts ``modalities``)."""
    op, rescorer = predictor.release.post_processing_for(modalities)
    out = [("network only (p ≥ 0.5, on the brain's box)", RAW, None), ("+ brain mask", OperatingPoint(0.5, 0.0, True), None),
           (f"+ operating point (p ≥ {op.threshold:g}, ≥ {op.min_volume_mm3:g} mm³)", op, None)]
    if rescorer is not None:
        out.append((f"+ second stage (score ≥ {rescorer.min_score:g})", op, rescorer))
    return out


@dataclass
class Case:
    """One held-out subject: raw images, reference (mean of the raters), and what lies where."""

    subject_id: str
    image: np.ndarray  # 3×X×Y×Z float32, as read
    reference: np.ndarray
    spacing: tuple[float, float, float]
    geometry: object  # lacunes.geometry.Geometry, for writing the maps (None: not written)
    mimics: list | None  # the phantom's lesion record (lesions.json)
    tissues: np.ndarray | None
    prediction_name: str = ""
    uncertainty_name: str = ""


def file_case(files) -> Case:
    subject = read_subject(files.subject_id, files.paths)
    reference, _ = load_reference(tuple(files.label_paths().values()))
    sidecar = files.paths["T1"].with_name(f"{files.output_prefix}desc-synthetic_lesions.json")
    tissues = read_volume(tissue_path(files))[0] if tissue_path(files).is_file() else None
    return Case(files.subject_id, subject.image, reference, subject.geometry.spacing, subject.geometry,
                json.loads(sidecar.read_text()) if sidecar.is_file() else None, tissues, files.prediction_name,
                files.uncertainty_name)


def generated_case(index: int, lacune_shapes: bool = False, seed: int = HELDOUT_SEED) -> Case:
    """Held-out phantom ``index`` made in memory: the same arrays as its files (no SimpleITK needed);
    ``lacune_shapes``: the same subject with lobulated lacunes and hyperintensities against some
    (``lacunes synth --lacune-shapes``: the lacunes where the plain subject has them); ``seed``: another
    set's phantom (e.g. the validation set's, 5151)."""
    from lacunes.synthetic import LacuneShapeConfig, SynthConfig, generate_phantom

    return phantom_case(generate_phantom(seed, index, SynthConfig(lacune_shapes=LacuneShapeConfig())
                                         if lacune_shapes else None))


def family_case(family_name: str, index: int) -> Case:
    """Subject ``index`` of an out-of-family family (:mod:`families`), made in memory."""
    from families import FAMILIES

    return phantom_case(FAMILIES[family_name].phantom(index))


def phantom_case(ph) -> Case:
    """A phantom made in memory as a :class:`Case`: its images, the raters' mean and its lesion record as
    the sidecar reads back."""
    from lacunes.synthetic import MODALITIES, lesion_record

    image = np.stack([ph.images[m].astype(np.float32) for m in MODALITIES])
    reference = np.mean([(ph.rater1 > 0).astype(np.float32), (ph.rater2 > 0).astype(np.float32)], axis=0)
    mimics = json.loads(json.dumps([lesion_record(les) for les in ph.lesions]))  # as the sidecar reads back
    return Case(ph.subject_id, image, reference, ph.spacing, None, mimics, ph.tissues)


def run_model(name: str, model: Path, setting: str, subjects, work: Path, raw: bool, ablate: bool = False,
              modalities: str = FULL_SET) -> dict:
    """Predict, write the maps (one uncertainty map per mode with TTA; not for generated cases),
    evaluate and break down; with ``ablate``, also score each inference step on the same network
    outputs. ``subjects``: callables that return a :class:`Case`; ``modalities``: the set of contrasts the
    subjects are given with (the other channels zero; the model's calibration for that set where it has one)."""
    predictor = Predictor.from_checkpoint(model, PRESETS[setting].replace(progress=False))
    if raw:
        predictor = predictor.with_post_processing(RAW, None)
    op = predictor.release.post_processing_for(modalities)[0]
    steps = stages(predictor, modalities) if ablate else []
    absent = absent_channels(modalities)
    step_results = {label: [] for label, _, _ in steps}
    step_rows = {label: [] for label, _, _ in steps}
    modes = MODES if setting == "full" else MODES[:1]
    results = {m: [] for m in modes}
    rows, seconds, uncertain = [], [], []
    for load in subjects:
        t0 = time.time()
        case = load()
        sid, reference, spacing, mimics, tissues = case.subject_id, case.reference, case.spacing, case.mimics, case.tissues
        image = repair_nonfinite(case.image)
        image[absent] = 0.0  # a subject read without those contrasts (lacunes.io.read_subject)
        mask = brain_mask(image) if op.mask_outside_brain else None
        normalized = prepare_image(image, predictor.release.normalization)
        raw = predictor.raw(ModelInput(normalized, mask, spacing, input_set=modalities))  # on the brain's box
        for mode in modes:
            prob, unc = predictor.finish(raw, uncertainty=mode)
            if case.geometry is not None:
                d = work / str(mode)
                write_volume(prob, case.geometry, d / case.prediction_name)
                write_volume(unc, case.geometry, d / case.uncertainty_name)
            results[mode].append(evaluate_subject(prob.astype(np.float64), reference, spacing,
                                                  unc.astype(np.float64), sid))
            if mode == modes[0]:
                inside = mask if mask is not None else (image != 0).any(0)
                uncertain.append(float((unc[inside] >= 0.5).mean()) if inside.any() else 0.0)
                brain = mask if mask is not None else (image != 0).any(0)
                brain_for_steps = mask if mask is not None else brain_mask(image)
                rows += classify_predictions(prob, reference, brain, spacing, mimics, tissues, sid)
                raw_prob = raw.probability
                for label, step_op, step_rescorer in steps:
                    p_step = finish_probability(raw_prob, step_op, brain_for_steps, spacing, step_rescorer, normalized)[0]
                    step_results[label].append(evaluate_subject(p_step.astype(np.float64), reference, spacing,
                                                                subject_id=sid))
                    step_rows[label] += classify_predictions(p_step, reference, brain_for_steps, spacing, mimics,
                                                             tissues, sid)
        seconds.append(time.time() - t0)
        r = results[modes[0]][-1]
        print(f"  {name} · {setting} {sid}: {seconds[-1]:.1f} s, TP {r.tp} FP {r.fp} FN {r.fn}", flush=True)
    main = results[modes[0]]
    lesions = [les for r in main for les in r.lesions if les["kind"] == "reference"]
    big = [les for les in lesions if les["diameter_mm"] >= 5]
    four = [les for les in lesions if les["diameter_mm"] >= 4]
    free = [r.fp for r in main if r.n_ref == 0]
    return {
        "name": name, "setting": setting, "modalities": modalities,
        "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
        "operating_point": op.to_dict(), "subjects": len(main), "summary": summarize(main),
        "by_mode": {str(m): summarize(results[m]) for m in modes},
        "fp_mean": float(np.mean([r.fp for r in main])), "fp_lacune_free": float(np.mean(free)) if free else math.nan,
        "found": (sum(les["detected"] for les in lesions), len(lesions)),
        "found_5mm": (sum(les["detected"] for les in big), len(big)),
        "found_4mm": (sum(les["detected"] for les in four), len(four)),
        "lacune_free_flagged": (sum(fp > 0 for fp in free), len(free)),
        "by_diameter": detection_by_diameter(lesions),
        "breakdown": summarize_breakdown(rows, len(main)),
        "seconds_per_subject": float(np.mean(seconds)), "variants": predictor.variants,
        "uncertain_brain_share": float(np.mean(uncertain)),
        "steps": [{"step": label, "summary": summarize(step_results[label]),
                   "fp_mean": float(np.mean([r.fp for r in step_results[label]])),
                   "found": (sum(r.tp for r in step_results[label]), sum(r.n_ref for r in step_results[label])),
                   "breakdown": summarize_breakdown(step_rows[label], len(step_results[label]))} for label, _, _ in steps],
        "per_subject": [r.row() for r in main],
    }


def fmt(stat: dict, digits: int = 2) -> str:
    if stat["n"] == 0 or math.isnan(stat["median"]):
        return "n/a"
    return f"{stat['median']:.{digits}f} [{stat['q25']:.{digits}f}, {stat['q75']:.{digits}f}]"


def detection_by_diameter(lesions: list[dict]) -> list[tuple[str, int, float]]:
    out = []
    for lo, hi in BINS:
        sel = [les for les in lesions if lo <= les["diameter_mm"] < hi]
        out.append((f"{lo}-{hi} mm", len(sel), float(np.mean([les["detected"] for les in sel])) if sel else math.nan))
    return out


def plot(curves: dict[str, list[tuple[str, int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in curves.items():
        ax.plot([r[0] for r in rows], [r[2] for r in rows], marker="o", label=name)
    ax.set_xlabel("reference lesion diameter (equivalent sphere)")
    ax.set_ylabel("detection rate")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pair(run: dict, key: str) -> str:
    """``a/b`` of a run's count (n/a in results saved before it was counted)."""
    return f"{run[key][0]}/{run[key][1]}" if key in run else "n/a"


def flagged(run: dict) -> str:
    """Lacune-free subjects with at least one false positive: ``k/n (share %)``."""
    if "lacune_free_flagged" not in run or not run["lacune_free_flagged"][1]:
        return "n/a"
    k, n = run["lacune_free_flagged"]
    return f"{k}/{n} ({100 * k / n:.0f} %)"


def label(run: dict) -> str:
    """``name · setting``, and the set of contrasts when it is not all three."""
    modalities = run.get("modalities", FULL_SET)
    return f"{run['name']} · {run['setting']}" + ("" if modalities == FULL_SET else f" · {modalities}")


def targets(run: dict) -> str:
    """The specificity targets, reached or not, for one run."""
    s = run["summary"]
    checks = [
        ("median F1 ≥ 0.8", s["f1"]["median"] >= 0.8),
        ("FP ≤ 1 per subject", run["fp_mean"] <= 1.0),
        ("FP ≤ 0.5 per lacune-free subject", not run["fp_lacune_free"] > 0.5),
        ("Dice ≥ 0.7", s["dice"]["median"] >= 0.7),
        ("every lacune ≥ 5 mm found", run["found_5mm"][0] == run["found_5mm"][1]),
    ]
    return ", ".join(f"{label}: {'yes' if ok else 'no'}" for label, ok in checks)


def specificity_targets(run: dict) -> str:
    """The out-of-family targets (a family of benchmarks/families.py), reached or not, for one run."""
    four, free = run.get("found_4mm", (0, 0)), run.get("lacune_free_flagged", (0, 0))
    checks = [
        ("FP ≤ 0.1 per subject", run["fp_mean"] <= 0.1),
        ("≤ 5 % of lacune-free subjects flagged", free[1] > 0 and free[0] <= 0.05 * free[1]),
        ("≥ 95 % of lacunes ≥ 4 mm found", four[1] > 0 and four[0] >= 0.95 * four[1]),
        ("median Dice ≥ 0.75", run["summary"]["dice"]["median"] >= 0.75),
    ]
    return ", ".join(f"{label}: {'yes' if ok else 'no'}" for label, ok in checks)


def section(runs: list[dict], args, title: str) -> str:
    device = device_label("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(args, "family", None):
        from families import FAMILIES

        family = FAMILIES[args.family]
        held = (f"Out-of-family family `{family.name}` (benchmarks/families.py: {family.description}; seed "
                f"{family.seed}, {family.lacune_free} lacune-free subjects and {family.with_lacunes} with lacunes, "
                "generated in memory; never used for training, the second stage or the operating point)")
    else:
        held = (f"Held-out set: `lacunes synth --n {args.n} --seed {HELDOUT_SEED} --first-id "
                f"{HELDOUT_FIRST_ID}{' --lacune-shapes' if getattr(args, 'lacune_shapes', False) else ''}`"
                f"{' (generated in memory)' if getattr(args, 'generated', False) else ''} (training used "
                "seed 2021, the operating point seed 5151)")
    lines = [
        f"## {title}",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/quality.py', *(a for a in sys.argv[1:] if a != '--render')])}`"
        + f" — {device}, torch {torch.__version__}. {held}. Reference = mean of the two "
        "raters; centre matching within 5 mm. " + ("Raw maps (no operating point, no brain mask). " if args.raw else
                                                   "Each checkpoint's operating point and the brain mask applied. ")
        + "Median [IQR] over subjects (F1 and Dice over subjects with lacunes); FP = false-positive lesions.",
        "",
        "| model · setting | operating point | subjects | F1 | Dice | AVD mm³ | lacunes found | ≥ 4 mm found "
        "| ≥ 5 mm found | FP / subject | FP / lacune-free subject | lacune-free subjects flagged | unc. flags "
        "| unc. voxels | brain with unc. ≥ 0.5 | s / subject |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s, op = r["summary"], r["operating_point"]
        lines.append(
            f"| {label(r)} | p ≥ {op['threshold']:g}, ≥ {op['min_volume_mm3']:g} mm³ | {r['subjects']} "
            f"| {fmt(s['f1'])} | {fmt(s['dice'])} | {fmt(s['avd_mm3'], 0)} | {r['found'][0]}/{r['found'][1]} "
            f"| {pair(r, 'found_4mm')} | {r['found_5mm'][0]}/{r['found_5mm'][1]} | {r['fp_mean']:.2f} "
            f"| {r['fp_lacune_free']:.2f} | {flagged(r)} "
            f"| {fmt(s['unc_flags'])} | {fmt(s['unc_voxels'])} | {100 * r['uncertain_brain_share']:.1f} % "
            f"| {r['seconds_per_subject']:.0f} |")
    if getattr(args, "family", None):
        lines += ["", "Out-of-family targets (≤ 0.1 FP per subject, ≤ 5 % of lacune-free subjects flagged, ≥ 95 % of "
                  "lacunes ≥ 4 mm found, median Dice ≥ 0.75):", ""]
        lines += [f"- {label(r)} ({r['subjects']} subjects): {specificity_targets(r)}" for r in runs]
    else:
        lines += ["", "Targets (issue: median F1 ≥ 0.8, FP ≤ 1 per subject and ≤ 0.5 per lacune-free subject, "
                  "Dice ≥ 0.7, every lacune ≥ 5 mm found):", ""]
        lines += [f"- {label(r)} ({r['subjects']} subjects): {targets(r)}" for r in runs]
    lines += ["", "What lies under the predicted lesions (lesions per subject; median volume mm³ / median maximum "
              "probability in brackets):", "",
              "| model · setting | " + " | ".join(CATEGORIES) + " |", "|---|" + "---|" * len(CATEGORIES)]
    for r in runs:
        cells = []
        for b in r["breakdown"]:
            cells.append("0" if b["count"] == 0 else
                         f"{b['per_subject']:.2f} ({b['median_volume_mm3']:.0f} / {b['median_max_probability']:.2f})")
        lines.append(f"| {label(r)} | " + " | ".join(cells) + " |")
    for r in runs:
        if not r["steps"]:
            continue
        lines += ["", f"What each inference step does ({label(r)}, {r['subjects']} subjects, the same "
                  "network outputs; FP lesions per subject by what lies under them):", "",
                  "| step | F1 | lacunes found | FP / subject | " + " | ".join(CATEGORIES[1:]) + " |",
                  "|---|---|---|---|" + "---|" * (len(CATEGORIES) - 1)]
        for st in r["steps"]:
            cells = [f"{b['per_subject']:.2f}" for b in st["breakdown"][1:]]
            lines.append(f"| {st['step']} | {fmt(st['summary']['f1'])} | {st['found'][0]}/{st['found'][1]} "
                         f"| {st['fp_mean']:.2f} | " + " | ".join(cells) + " |")
    full = [r for r in runs if len(r["by_mode"]) > 1]
    for r in full:
        lines += ["", f"Uncertainty options on the same predictions ({label(r)}, {r['subjects']} "
                  "subjects):", "", "| uncertainty | flags right (a) | voxel score (b) |", "|---|---|---|"]
        for mode, s in r["by_mode"].items():
            lines.append(f"| {mode} | {fmt(s['unc_flags'])} | {fmt(s['unc_voxels'])} |")
    lines += ["", "Detection rate by reference lesion diameter:", "", f"![detection vs diameter]({args.plot})",
              "", "| run | " + " | ".join(f"{lo}-{hi} mm" for lo, hi in BINS) + " |", "|---|" + "---|" * len(BINS)]
    for r in runs:
        lines.append(f"| {label(r)} (n={r['subjects']}) | "
                     + " | ".join(f"{x[2]:.2f} (n={x[1]})" for x in r["by_diameter"]) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", default=str(ROOT / "data" / "synth-heldout"))
    ap.add_argument("--n", type=int, default=20, help="held-out subjects (generated if missing)")
    ap.add_argument("--runs", default=None,
                    help="name=checkpoint:setting[:subjects],... (default: blob and β=0 with fast, blob with full)")
    ap.add_argument("--full-subjects", type=int, default=None, help="full-recipe runs on the first N subjects only")
    ap.add_argument("--raw", action="store_true", help="no operating point and no brain mask (the raw network)")
    ap.add_argument("--no-steps", action="store_true", help="skip the per-step ablation of the fast runs")
    ap.add_argument("--section", default="quality", help="RESULTS.md section to rewrite")
    ap.add_argument("--title", default="Quality (VALDO Task 3 metrics, held-out synthetic subjects)")
    ap.add_argument("--plot", default="detection_vs_diameter.png", help="plot file name, next to this script")
    ap.add_argument("--work", default=str(ROOT / "out" / "quality"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--generated", action="store_true",
                    help="generate the held-out subjects in memory instead of reading --heldout (the same arrays; no "
                         "files, no SimpleITK, maps not written: for machines without them)")
    ap.add_argument("--lacune-shapes", action="store_true",
                    help="with --generated: the same held-out subjects with lobulated lacunes, some against a "
                         "hyperintensity (lacunes synth --lacune-shapes; the lacunes where they are without it)")
    ap.add_argument("--family", choices=["colin27", "wide"],
                    help="an out-of-family family of benchmarks/families.py instead of the held-out set (generated "
                         "in memory; --n ignored)")
    ap.add_argument("--render", action="store_true",
                    help="rewrite the section from the results this command saved (WORK/SECTION.json), predicting "
                         "nothing (after a change of the tables' layout)")
    args = ap.parse_args()
    if args.render:
        saved = Path(args.work) / f"{args.section}.json"
        if not saved.is_file():
            raise SystemExit(f"--render: no saved results at {saved}; run the same command without --render first")
        runs = json.loads(saved.read_text())
        text = section(runs, args, args.title)
        replace_section(args.section, text)
        print(text)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    runs_spec = args.runs or ("blob=model/lacunes.pt:fast,β=0=benchmarks/models/dicebce.pt:fast,"
                              "blob=model/lacunes.pt:full")
    heldout, work = Path(args.heldout), Path(args.work)
    if args.lacune_shapes and not args.generated:
        raise SystemExit("--lacune-shapes generates the subjects: add --generated")
    if args.family:
        from families import FAMILIES

        subjects = [partial(family_case, args.family, k) for k in FAMILIES[args.family].indices]
    elif args.generated:
        subjects = [partial(generated_case, HELDOUT_FIRST_ID + k, args.lacune_shapes) for k in range(args.n)]
    else:
        ensure_heldout(heldout, args.n)
        subjects = [partial(file_case, f) for f in find_valdo_subjects(heldout)[: args.n]]
    runs = []
    for name, model, setting, n, modalities in parse_runs(runs_spec, args.full_subjects):
        if not model.is_file():
            print(f"skipping {name} · {setting}: no model at {model}")
            continue
        subs = subjects[:n] if n is not None else subjects
        tag = f"{name.replace('=', '').replace('β', 'beta').replace(' ', '_')}-{setting}-{modalities}"
        print(f"{name} · {setting} · {modalities}: {len(subs)} subject(s), {model}")
        runs.append(run_model(name, model, setting, subs, work / tag, args.raw,
                              ablate=setting == "fast" and not args.no_steps and not args.raw, modalities=modalities))
    plot({f"{label(r)} (n={r['subjects']})": r["by_diameter"] for r in runs}, HERE / args.plot)
    text = section(runs, args, args.title)
    replace_section(args.section, text)
    save_json(work / f"{args.section}.json", runs)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
