#!/usr/bin/env python3
"""Regions benchmark: lacunes placed in known structures of deformed phantoms, named by
:mod:`lacunes.regions` (the phantom's T1 registered onto the ICBM 2009a template, the coarse region atlas).

Targets: the deepest point (farthest from the structure's edge in the coarse atlas) of the putamen, the
thalamus, the internal capsule and the centrum semiovale (z 25-45 mm) of each side and of the pons (z -40
to -20 mm, on the midline), in MNI millimetres. Named right: the structure's coarse region, and for the
paired structures its side. In each phantom the voxel that reads the template nearest each target
(:func:`lacunes.synthetic.template_points_in_phantom`: through the phantom's own deformation — a random
affine, a smooth displacement, ventricles and sulci widened or narrowed) gets a 5 mm ball of lesion; the
lesion is named from the phantom's T1 as the network sees it (stripped, 1 mm), and its MNI centre compared
with the target.

Anatomies: ``icbm152`` (the template itself, deformed: the held-out seed 7777's subjects) and ``colin27``
(the colin27 family's subjects, benchmarks/families.py: a real single-subject head whose scanner
millimetres are MNI's; its deep nuclei are those the AAL atlas was drawn on, so its truth is the target's
coordinates in Colin27's space, a different brain from the template).

    python benchmarks/regions.py --subjects 1-10

Writes the ``regions`` section of RESULTS.md and WORK/regions.json.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from results_md import device_label, replace_section, save_json  # noqa: E402

from lacunes import regions  # noqa: E402
from lacunes.geometry import Geometry  # noqa: E402
from lacunes.synthetic import SynthConfig, generate_phantom, template_points_in_phantom  # noqa: E402

#: The structures and the coarse region each must be named by.
STRUCTURES = (("putamen", "basal ganglia"), ("thalamus", "thalamus"), ("internal capsule", "internal capsule"),
              ("centrum semiovale", "corona radiata / centrum semiovale"), ("pons", "brainstem"))
RADIUS_MM = 2.5


def targets() -> list[dict]:
    """The deepest point of each structure and side in the coarse atlas (the module docstring), MNI mm."""
    tpl = regions.load_template()
    atlas = tpl.regions
    mm = [np.arange(n) + tpl.affine[d, 3] for d, n in enumerate(atlas.shape)]
    x, z = mm[0][:, None, None], mm[2][None, None, :]
    out = []
    for structure, region in STRUCTURES:
        inside = atlas == regions.REGIONS.index(region) + 1
        if structure == "putamen":
            inside &= np.abs(x) > 20  # the basal ganglia's lateral part
        if structure == "centrum semiovale":
            inside &= (z >= 25) & (z <= 45)
        if structure == "pons":
            inside &= (z >= -40) & (z <= -20)
        depth = ndi.distance_transform_edt(inside)
        if structure == "pons":
            depth = depth * (x == 0)  # its deepest point on the midline
        for side, sign in (("right", 1), ("left", -1)) if structure != "pons" else (("midline", 0),):
            d = depth * (x * sign > 0) if sign else depth
            index = np.unravel_index(int(np.argmax(d)), d.shape)
            point = [float(mm[k][index[k]]) for k in range(3)]
            out.append({"structure": structure, "side": side, "region": region, "mni": point,
                        "depth_mm": round(float(d[index]), 1)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", default="1-10")
    ap.add_argument("--anatomies", default="icbm152,colin27")
    ap.add_argument("--section", default="regions")
    ap.add_argument("--work", default=str(ROOT / "out" / "regions"))
    args = ap.parse_args()
    from families import FAMILIES, index_range

    points = targets()
    rows = []
    ball = np.argwhere(np.ones((7, 7, 7), bool)) - 3
    ball = ball[np.linalg.norm(ball, axis=1) <= RADIUS_MM]
    for anatomy in args.anatomies.split(","):
        for index in index_range(args.subjects):
            if anatomy == "colin27":
                seed, config = FAMILIES["colin27"].seed, FAMILIES["colin27"].subject_config(index)
            else:
                seed, config = 7777, SynthConfig()
            phantom = generate_phantom(seed, index, config)
            geometry = Geometry(phantom.rater1.shape, phantom.spacing, phantom.origin, phantom.direction)
            voxels, distances = template_points_in_phantom(seed, index, [t["mni"] for t in points], config)
            t0 = time.perf_counter()
            record, transform = regions.register_to_template(phantom.images["T1"], geometry)
            seconds = time.perf_counter() - t0
            locate = regions.Locator(transform, geometry)
            for target, voxel, distance in zip(points, voxels, distances):
                found = locate(voxel[None] + ball)
                centre = np.array([found["mni_R_mm"], found["mni_A_mm"], found["mni_S_mm"]])
                rows.append({"anatomy": anatomy, "subject": index, **target, "phantom_voxel": voxel.tolist(),
                             "voxel_reads_mm": round(distance, 2), "named": found["region"],
                             "share": found["region_share"], "named_side": found["side"],
                             "right": found["region"] == target["region"] and (target["side"] == "midline"
                                                                                 or found["side"] == target["side"]),
                             "mni_found": centre.round(1).tolist(),
                             "error_mm": round(float(np.linalg.norm(centre - target["mni"])), 2),
                             "registration_s": round(seconds, 1), "usable": record["usable"],
                             "demons_s": record.get("deformable", {}).get("seconds")})
            mine = rows[-len(points):]
            print(f"  {anatomy} {index}: {sum(r['right'] for r in mine)}/{len(mine)} named right, MNI error median "
                  f"{np.median([r['error_mm'] for r in mine]):.1f} mm, largest {max(r['error_mm'] for r in mine):.1f} mm; "
                  f"registration {seconds:.0f} s", flush=True)
    result = {"rows": rows, "targets": points, "device": device_label("cpu"),
              "command": "python benchmarks/regions.py " + shlex.join(sys.argv[1:])}
    save_json(Path(args.work) / f"{args.section}.json", result)
    replace_section(args.section, render(result))
    return 0


def render(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "## Regions: lacunes placed in known structures of deformed phantoms",
        "",
        f"Command: `{result['command']}` — {result['device']}. A 5 mm ball of lesion at the deepest point of each "
        "structure (MNI: " + "; ".join(f"{t['structure']} {t['side']} {', '.join(f'{v:g}' for v in t['mni'])}"
                                       for t in result["targets"]) + "), carried into each phantom through its own "
        "deformation; the phantom's T1 registered onto the ICBM 2009a template (`lacunes.regions`: affine, then demons), the "
        "lesion named by the coarse region atlas (AAL and JHU labels of Debian's mricron-data). Right = the "
        "structure's coarse region, and side for the paired ones. The registration's settings were chosen on icbm152 "
        "subjects 1-5; the colin27 anatomy was not looked at before this run.",
        "",
        "| anatomy | subjects | named right | putamen | thalamus | internal capsule | centrum semiovale | pons | "
        "MNI centre error median / 95th pct / largest (mm) | within 5 mm | registration s (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for anatomy in dict.fromkeys(r["anatomy"] for r in rows):
        mine = [r for r in rows if r["anatomy"] == anatomy]
        err = np.array([r["error_mm"] for r in mine])
        per = [f"{sum(r['right'] for r in mine if r['structure'] == s)}/{sum(r['structure'] == s for r in mine)}"
               for s, _ in STRUCTURES]
        lines.append(f"| {anatomy} | {len({r['subject'] for r in mine})} | {sum(r['right'] for r in mine)}/{len(mine)} "
                     f"({100 * np.mean([r['right'] for r in mine]):.0f} %) | {' | '.join(per)} | {np.median(err):.1f} / "
                     f"{np.percentile(err, 95):.1f} / {err.max():.1f} | {100 * np.mean(err <= 5):.0f} % | "
                     f"{np.median([r['registration_s'] for r in mine]):.0f} |")
    wrong = [r for r in rows if not r["right"]]
    if wrong:
        lines += ["", "Named otherwise: " + "; ".join(
            f"{r['anatomy']} {r['subject']} {r['structure']} {r['side']} → {r['named']} ({r['share']:.2f}) {r['named_side']}, "
            f"{r['error_mm']:.1f} mm" for r in wrong) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
