#!/usr/bin/env python3
"""Acquisition benchmark: the held-out phantoms stored the way real scans come, each scored against the
same subject as generated.

Every held-out subject (seed 7777, generated in memory) is stored in each of the ways below, predicted
as a user's scan is (``Predictor.predict`` on the stored arrays and geometry; the ``--resample`` case
through files and ``read_subject``), and its probability map is brought back onto the generated grid
(the inverse permutation exactly; resampled maps by cubic B-spline) to be scored against the
generated reference with the challenge's metrics.

    python benchmarks/acquisitions.py                                   # bundled model, conform on, fast
    python benchmarks/acquisitions.py --runs "stored as it is=model/lacunes.pt:fast:noconform" \\
        --variants permuted,lps,iso0.7,iso1.3 --section acquisitions-before

Writes the ``acquisitions`` section of RESULTS.md (``--section``) and WORK/SECTION.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from quality import HELDOUT_FIRST_ID, HELDOUT_SEED, absent_channels, generated_case  # noqa: E402
from results_md import device_label, replace_section, save_json  # noqa: E402

from lacunes.conform import grid_with_spacing, resample_axis_aligned, resample_masked  # noqa: E402
from lacunes.geometry import Geometry  # noqa: E402
from lacunes.inference import Predictor  # noqa: E402
from lacunes.io import Subject  # noqa: E402
from lacunes.metrics import evaluate_subject, summarize  # noqa: E402
from lacunes.options import FULL_SET, INPUT_SETS, RAS_DIRECTION, look_up_option  # noqa: E402
from lacunes.settings import PRESETS  # noqa: E402

# The generated arrays run towards the right, anterior and superior (RAS_DIRECTION). Stored sagittally,
# the array axes follow the generated y, z, x; stored LPS, x and y reversed (SimpleITK's identity).
PERMUTED = tuple((np.asarray(RAS_DIRECTION).reshape(3, 3)[:, [1, 2, 0]]).ravel().tolist())
LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Stored:
    """A subject as stored: the three modalities on ``geometry`` (or, with ``files``, written and read
    back with ``--resample``), and how its maps come back onto the generated grid."""

    image: np.ndarray | None
    geometry: Geometry | None
    back: object  # callable: map on the stored grid -> map on the generated grid
    files: dict | None = None  # modality -> (array, geometry), read through read_subject(resample=True)


def generated_grid(shape) -> Geometry:
    return Geometry(shape=tuple(int(s) for s in shape), direction=RAS_DIRECTION)


def as_generated(image, geom):
    return Stored(image, geom, lambda m, order=1: m)


def permuted(image, geom):
    stored = np.ascontiguousarray(image.transpose(0, 2, 3, 1))
    g = Geometry(shape=stored.shape[1:], direction=PERMUTED)
    return Stored(stored, g, lambda m, order=1: np.ascontiguousarray(m.transpose(2, 0, 1)))


def lps(image, geom):
    stored = np.ascontiguousarray(image[:, ::-1, ::-1])
    g = Geometry(shape=stored.shape[1:], origin=(-(geom.shape[0] - 1.0), -(geom.shape[1] - 1.0), 0.0), direction=LPS)
    return Stored(stored, g, lambda m, order=1: np.ascontiguousarray(m[::-1, ::-1]))


def isotropic(mm: float, blended: bool = False):
    """Resampled to ``mm`` isotropic voxels, skull-stripped on that grid (``resample_masked``: a scan
    acquired and skull-stripped at that resolution), or with ``blended`` linearly interpolated as a
    whole, the background's zeros blended into the brain's edge (a stripped scan resampled by a tool
    that ignores the mask)."""
    def make(image, geom):
        target = grid_with_spacing(geom, (mm,) * 3)
        stored = (resample_axis_aligned if blended else resample_masked)(image, geom, target)
        return Stored(stored, target, lambda m, order=1: resample_axis_aligned(m, target, geom, order))

    make.__name__ = f"iso{mm:g}" + ("-blended" if blended else "")
    return make


def thick_t2_flair(image, geom, mm: float = 3.0):
    """T1 as generated; T2 and FLAIR acquired with 3 mm slices along z (the slice profile's blur, then
    skull-stripped and sampled), on their own grid: predicted with ``--resample``."""
    from scipy import ndimage as ndi

    from lacunes.synthetic import voxel_profile_sigma

    target = grid_with_spacing(geom, (1.0, 1.0, mm))
    sigma = voxel_profile_sigma(target.spacing)
    files = {"T1": (image[0], geom)}
    for k, m in ((1, "T2"), (2, "FLAIR")):  # blurred, skull-stripped, sampled on the thick grid
        blurred = np.where(image[k] != 0, ndi.gaussian_filter(image[k].astype(np.float32), sigma), 0)
        files[m] = (resample_masked(blurred, geom, target), target)
    return Stored(None, geom, lambda m, order=1: m, files)


def clinical_fov(image, geom, shape=(256, 256, 192)):
    pad = [(max(0, (s - n) // 2), max(0, s - n - (s - n) // 2)) for s, n in zip(shape, image.shape[1:])]
    stored = np.pad(image, [(0, 0), *pad])
    origin = geom.physical([-float(p[0]) for p in pad])
    crop = tuple(slice(p[0], p[0] + n) for p, n in zip(pad, image.shape[1:]))
    return Stored(stored, Geometry(shape=stored.shape[1:], origin=tuple(float(v) for v in origin),
                                   direction=geom.direction), lambda m, order=1: m[crop])


def float_scaled(image, geom):
    return Stored((image / 800.0).astype(np.float32), geom, lambda m, order=1: m)


def other_contrast(image, geom, gammas=(0.6, 1.5, 0.7)):
    """Monotone intensity curves per modality (x ** gamma, anchored at the brain's 99th percentile)."""
    from lacunes.synthetic import intensity_curve

    out = np.stack([intensity_curve(x, g) for x, g in zip(image, gammas)]).astype(image.dtype)
    return Stored(out, geom, lambda m, order=1: m)


def strong_bias(image, geom, strength=0.35):
    from lacunes.synthetic import _smooth_field

    field = np.exp(_smooth_field(np.random.default_rng(99), image.shape[1:], 4, strength)).astype(np.float32)
    return Stored(image * field[None], geom, lambda m, order=1: m)


VARIANTS = {
    "generated": ("as generated (1 mm, the phantoms' array order)", as_generated),
    "permuted": ("axes permuted (sagittal stack, same physical space)", permuted),
    "lps": ("first two axes reversed (LPS storage)", lps),
    "iso0.7": ("0.7 mm isotropic (resampled, skull-stripped on its grid)", isotropic(0.7)),
    "iso1.3": ("1.3 mm isotropic (resampled, skull-stripped on its grid)", isotropic(1.3)),
    "iso1.5": ("1.5 mm isotropic (resampled, skull-stripped on its grid)", isotropic(1.5)),
    "iso1.3-blended": ("resampled to 1.3 mm with the background blended into the brain's edge",
                       isotropic(1.3, blended=True)),
    "thick3": ("T2 and FLAIR at 1×1×3 mm on their own grid (--resample)", thick_t2_flair),
    "fov": ("clinical field of view 256×256×192 (zero-padded)", clinical_fov),
    "float": ("float32, intensities / 800", float_scaled),
    "contrast": ("other contrasts (monotone curves, gamma 0.6 / 1.5 / 0.7)", other_contrast),
    "bias": ("strong bias field (strength 0.35, default 0.12)", strong_bias),
}


def predict_stored(predictor: Predictor, sid: str, stored: Stored, modalities: str = FULL_SET):
    """The stored subject through the predictor, with only the contrasts of ``modalities`` (the others'
    channels zero, as a subject without them is read)."""
    kept = INPUT_SETS[modalities]
    if stored.files is None:
        image = stored.image.copy()
        image[absent_channels(modalities)] = 0
        return predictor.predict(Subject(sid, image, stored.geometry, modalities=kept))
    from lacunes.io import read_subject
    from lacunes.writing import write_volume

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for m, (arr, g) in stored.files.items():
            if m in kept:
                paths[m] = write_volume(arr, g, Path(tmp) / f"{sid}_space-T1_desc-masked_{m}.nii.gz")
        subject = read_subject(sid, paths, resample=True, modalities=modalities)
    return predictor.predict(subject)


def run(name: str, model: Path, setting: str, conform: bool, variants: list[str], indices: list[int],
        modalities: str = FULL_SET, seed: int = HELDOUT_SEED) -> dict:
    predictor = Predictor.from_checkpoint(model, PRESETS[setting].replace(progress=False, conform=conform))
    results = {v: [] for v in variants}
    seconds = {v: [] for v in variants}
    dps = {v: [] for v in variants}
    maps = {}
    for index in indices:
        case = generated_case(index, seed=seed)  # the phantom in memory, as benchmarks/quality.py makes it
        sid, image, reference = case.subject_id, case.image, case.reference
        geom = generated_grid(image.shape[1:])
        for v in variants:
            stored = VARIANTS[v][1](image, geom)
            t0 = time.time()
            prob, unc = predict_stored(predictor, sid, stored, modalities)
            seconds[v].append(time.time() - t0)
            back_p = np.clip(stored.back(prob, 3), 0, 1)
            back_u = np.clip(stored.back(unc, 1), 0, 1)
            r = evaluate_subject(back_p.astype(np.float64), reference, geom.spacing, back_u.astype(np.float64), sid)
            results[v].append(r)
            if v in ("generated", "permuted", "lps"):
                maps[v] = back_p
            print(f"  {name} · {v} {sid}: {seconds[v][-1]:.1f} s, TP {r.tp} FP {r.fp} FN {r.fn}, "
                  f"Dice {r.dice:.2f}", flush=True)
        # storage that only reorders the array must give the same map (up to the permutation)
        for v in ("permuted", "lps"):
            if v in maps and "generated" in maps:
                dps[v].append(float(np.abs(maps[v] - maps["generated"]).max()))
        maps.clear()
    out = {"name": name, "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
           "setting": setting, "conform": conform, "modalities": modalities, "subjects": len(indices),
           "seed": seed, "first": indices[0] if indices else None,
           "variants": {}}
    for v in variants:
        rs = results[v]
        lesions = [les for r in rs for les in r.lesions if les["kind"] == "reference"]
        big = [les for les in lesions if les["diameter_mm"] >= 4]
        out["variants"][v] = {
            "summary": summarize(rs), "fp_mean": float(np.mean([r.fp for r in rs])),
            "found": (sum(les["detected"] for les in lesions), len(lesions)),
            "found_4mm": (sum(les["detected"] for les in big), len(big)),
            "avd_max": float(max(r.avd_mm3 for r in rs)), "seconds": float(np.mean(seconds[v])),
            "max_abs_dp": max(dps[v]) if dps[v] else None,
        }
    return out


def fmt(stat: dict, digits: int = 2) -> str:
    if stat["n"] == 0 or math.isnan(stat["median"]):
        return "n/a"
    return f"{stat['median']:.{digits}f}"


def section(runs: list[dict], args) -> str:
    device = device_label("cuda" if torch.cuda.is_available() else "cpu")
    count = runs[0]["subjects"] if runs else 0
    seed = runs[0].get("seed", HELDOUT_SEED) if runs else HELDOUT_SEED
    start = (runs[0].get("first") or HELDOUT_FIRST_ID) if runs else HELDOUT_FIRST_ID
    kind = "Held-out" if seed == HELDOUT_SEED else "Validation (not held-out)"
    lines = [
        f"## {args.title}",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/acquisitions.py', *(a for a in sys.argv[1:] if a != '--render')])}`"
        f" — {device}, torch {torch.__version__}. {kind} phantoms {start}–{start + count - 1} "
        f"(`lacunes synth --seed {seed}`, generated in memory), each stored as the row says, predicted "
        "as stored and its map brought back onto the generated grid (inverse permutation; resampled maps by cubic "
        "B-spline) to be scored against the generated reference (mean of the raters, centre matching within 5 mm). "
        "Found = reference lacunes detected; Dice = median over subjects with lacunes of the mean Dice over matched "
        "lacunes; AVD max = the largest absolute volume difference of a subject; max |Δp| = the largest difference "
        "from the map of the subject as generated (storage that only reorders the array).",
        "",
        "| model · setting · conform | stored as | found | ≥ 4 mm found | FP / subject | F1 | Dice | AVD max mm³ "
        "| max \\|Δp\\| | s / subject |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        contrasts = r.get("modalities", FULL_SET)
        for v, s in r["variants"].items():
            dp = "" if s["max_abs_dp"] is None else f"{s['max_abs_dp']:.1e}"
            lines.append(
                f"| {r['name']} · {r['setting']} · {'on' if r['conform'] else 'off'}"
                f"{'' if contrasts == FULL_SET else ' · ' + contrasts} | {VARIANTS[v][0]} "
                f"| {s['found'][0]}/{s['found'][1]} | {s['found_4mm'][0]}/{s['found_4mm'][1]} | {s['fp_mean']:.2f} "
                f"| {fmt(s['summary']['f1'])} | {fmt(s['summary']['dice'])} | {s['avd_max']:.0f} | {dp} "
                f"| {s['seconds']:.0f} |")
    return "\n".join(lines)


def parse_runs(text: str) -> list[tuple[str, Path, str, bool, str]]:
    """``name=checkpoint:setting[:noconform][@SET],...`` (SET: the contrasts the subjects are given with)."""
    out = []
    for item in text.split(","):
        if "=" not in item:
            raise SystemExit(f"--runs: {item!r} is not NAME=CHECKPOINT:SETTING (runs are separated by commas: a "
                             "name cannot hold one)")
        name, rest = item.rsplit("=", 1)
        rest, _, modalities = rest.partition("@")
        parts = rest.split(":")
        path = Path(parts[0]) if Path(parts[0]).is_absolute() else ROOT / parts[0]
        out.append((name, path, parts[1] if len(parts) > 1 else "fast", not (len(parts) > 2 and parts[2] == "noconform"),
                    look_up_option(modalities or FULL_SET, INPUT_SETS, "set of contrasts")))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="bundled=model/lacunes.pt:fast",
                    help="name=checkpoint:setting[:noconform][@SET],... (default: the bundled model, fast, conform "
                         "on, all three contrasts; @T1+FLAIR: the subjects given with those only)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--n", type=int, default=20, help="held-out subjects (from 101)")
    ap.add_argument("--first", type=int, default=HELDOUT_FIRST_ID)
    ap.add_argument("--seed", type=int, default=HELDOUT_SEED,
                    help=f"the phantoms' seed (default {HELDOUT_SEED}, the held-out set; 5151 with --first 301: the "
                         "validation set, to choose between candidates without looking at the held-out subjects)")
    ap.add_argument("--section", default="acquisitions")
    ap.add_argument("--title", default="Scans as they come (acquisition benchmark)")
    ap.add_argument("--work", default=str(ROOT / "out" / "acquisitions"))
    ap.add_argument("--threads", type=int)
    ap.add_argument("--render", action="store_true", help="rewrite the section from WORK/SECTION.json only")
    args = ap.parse_args()
    saved = Path(args.work) / f"{args.section}.json"
    if args.render:
        runs = json.loads(saved.read_text())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
        indices = list(range(args.first, args.first + args.n))
        specs = parse_runs(args.runs)
        if "thick3" in variants and any("T1" not in INPUT_SETS[spec[4]] for spec in specs):
            raise SystemExit("thick3 resamples T2 and FLAIR onto the T1's grid: not for a set without T1")
        runs = [run(name, model, setting, conform, variants, indices, modalities, args.seed)
                for name, model, setting, conform, modalities in specs]
        save_json(saved, runs)
    text = section(runs, args)
    replace_section(args.section, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
