"""Which of an out-of-family family's departures from the training generator costs lacunes: the family's
subjects with lacunes made as the family makes them, then again with one part of the generator set back
to the training ranges, each lacune followed through inference as ``lost_lacunes.py`` does (the step
that loses it, the network's highest probability on it).

    python benchmarks/family_ablation.py runs/s8d/calibrated.pt --family wide --section ablation-wide-stage8d

Parts (``--parts``): ``tissues`` (the per-structure intensity ranges of the training generator,
:class:`lacunes.synthetic.TissueRanges`), ``mimics`` (its perivascular spaces and fluid pockets, the
family's tissue intensities kept), ``acquisition`` (its voxel sizes, slices, bias and noise),
``anatomy`` (its template). The generator draws lacunes, mimics, tissue intensities and acquisition from
streams of their own, so every variant holds the same lacunes at the same places: a lacune found in one
variant and lost in another is lost to that part alone. Measurement only: nothing here fits or chooses.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from families import FAMILIES, Family  # noqa: E402
from lost_lacunes import lacune_rows  # noqa: E402
from quality import phantom_case  # noqa: E402
from results_md import device_label, replace_section, save_json  # noqa: E402

from lacunes.inference import Predictor  # noqa: E402
from lacunes.settings import PRESETS  # noqa: E402
from lacunes.synthetic import AcquisitionConfig, MimicConfig, SynthConfig, TissueRanges, generate_phantom  # noqa: E402

PARTS = ("tissues", "mimics", "acquisition", "anatomy")


def with_training(config: SynthConfig, part: str) -> SynthConfig:
    """``config`` with ``part`` set back to the training generator's (the defaults of its classes)."""
    mimics = config.mimics or MimicConfig()
    if part == "tissues":
        return replace(config, mimics=replace(mimics, tissues=TissueRanges()))
    if part == "mimics":
        return replace(config, mimics=replace(MimicConfig(), tissues=mimics.tissues))
    if part == "acquisition":
        return replace(config, acquisition=AcquisitionConfig())
    if part == "anatomy":
        return replace(config, anatomy=SynthConfig().anatomy)
    raise ValueError(f"unknown part {part!r}; choose from {', '.join(PARTS)}")


def variant_rows(predictor: Predictor, family: Family, part: str | None, indices: list[int]) -> list[dict]:
    """Every lacune of subjects ``indices`` of ``family``, made as the family makes them (``part`` None) or
    with ``part`` set back to training's."""
    rows = []
    for index in indices:
        config = family.subject_config(index)
        if part is not None:
            config = with_training(config, part)
        ph = generate_phantom(family.seed, index, config, subject_id=f"{family.name}-{index:03d}")
        rows += lacune_rows(predictor, phantom_case(ph), ph.acquisition)
    return rows


def summary(rows: list[dict]) -> dict:
    big = [r for r in rows if r["diameter_mm"] >= 4]
    return {"lacunes": len(rows), "kept": sum(r["lost_at"] == "kept" for r in rows),
            "big": len(big), "big_kept": sum(r["lost_at"] == "kept" for r in big),
            "network": sum(r["lost_at"] == "network" for r in rows),
            "after": sum(r["lost_at"] not in ("kept", "network") for r in rows)}


def section(by_variant: dict[str, list[dict]], args, seconds: float) -> str:
    lines = [f"## Which departure costs lacunes: {args.name or args.model} on family `{args.family}`", "",
             f"Command: `python benchmarks/family_ablation.py {args.model} --family {args.family} --parts "
             f"{args.parts}" + (f" --name '{args.name}'" if args.name else "")
             + (f" --threads {args.threads}" if args.threads else "")
             + (f" --section {args.section}" if args.section else "") + f"` — {device_label('cpu')}, {seconds:.0f} s. "
             f"The family's subjects with lacunes, made as the family makes them and with one part of the generator "
             "set back to the training ranges (the same lacunes at the same places in every variant); each lacune "
             "followed through inference as in `lost_lacunes.py` (centre matching within 5 mm).", "",
             "| variant | lacunes kept | ≥ 4 mm kept | lost by the network | lost after it |", "|---|---|---|---|---|"]
    for variant, rows in by_variant.items():
        s = summary(rows)
        name = variant if variant == "as made" else f"training {variant}"
        lines.append(f"| {name} | {s['kept']} of {s['lacunes']} | {s['big_kept']} of {s['big']} | {s['network']} | "
                     f"{s['after']} |")
    variants = list(by_variant)
    first = by_variant[variants[0]]

    def lacunes(rows: list[dict]) -> list[tuple]:
        return [(r["subject_id"], r["id"], round(r["diameter_mm"], 2)) for r in rows]

    if any(lacunes(rows) != lacunes(first) for rows in by_variant.values()):
        return "\n".join(lines + ["", "(The variants hold different lacunes — another anatomy places them "
                                    "elsewhere — so they are not followed one by one.)"])
    lines += ["", "Each lacune of 4 mm or more lost in some variant: the step that loses it and the network's highest "
              "probability on it (`kept` = found).", "",
              "| subject | lacune | diameter mm | " + " | ".join(
                  v if v == "as made" else f"training {v}" for v in variants) + " |",
              "|---|---|---|" + "---|" * len(variants)]
    for i, row in enumerate(first):
        cells = [by_variant[v][i] for v in variants]
        if row["diameter_mm"] < 4 or all(c["lost_at"] == "kept" for c in cells):
            continue
        lines.append(f"| {row['subject_id']} | {row['id']} | {row['diameter_mm']:.1f} | "
                     + " | ".join(f"{c['lost_at']} ({c['network_max_p']:.2f})" for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a checkpoint (its operating point and second stage for T1+T2+FLAIR)")
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--parts", default="tissues,mimics,acquisition",
                    help=f"comma-separated, each set back to training's in a variant of its own ({', '.join(PARTS)})")
    ap.add_argument("--setting", default="fast", choices=sorted(PRESETS))
    ap.add_argument("--name", default="", help="the model's name in the section's title")
    ap.add_argument("--section", default="", help="RESULTS.md section to write (none: print only)")
    ap.add_argument("--work", default=str(ROOT / "out" / "family-ablation"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    family = FAMILIES[args.family]
    indices = family.indices[family.lacune_free:]
    predictor = Predictor.from_checkpoint(args.model, PRESETS[args.setting].replace(progress=False))
    t0, by_variant = time.time(), {}
    for part in (None, *parts):
        rows = variant_rows(predictor, family, part, indices)
        by_variant[part or "as made"] = rows
        s = summary(rows)
        print(f"  {part or 'as made'}: {s['kept']} of {s['lacunes']} kept, >= 4 mm {s['big_kept']} of {s['big']}",
              flush=True)
    text = section(by_variant, args, time.time() - t0)
    save_json(Path(args.work) / f"{args.section or 'family-ablation'}.json", by_variant)
    if args.section:
        replace_section(args.section, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
