#!/usr/bin/env python3
"""Quality benchmark: the bundled model (and the β=0 ablation) on held-out synthetic subjects, in the
challenge's own metrics, with the fast and the full inference settings; the uncertainty options compared
on the same predictions; a plot of detection rate against lesion diameter.

Writes predictions and evaluation reports under --work, the plot next to this file, and the quality
section of benchmarks/RESULTS.md.

    python benchmarks/quality.py                      # 20 held-out subjects (seed 7777), fast + full
    python benchmarks/quality.py --full-subjects 3    # full recipe on the first 3 only (CPU)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from results_md import replace_section  # noqa: E402

from lacunes.evaluation import evaluate_pair, pair_subjects, write_reports  # noqa: E402
from lacunes.inference import PRESETS, Predictor  # noqa: E402
from lacunes.io import read_subject, write_volume  # noqa: E402
from lacunes.layouts import find_valdo_subjects  # noqa: E402
from lacunes.metrics import summarize  # noqa: E402
from lacunes.preprocessing import prepare_image  # noqa: E402
from lacunes.uncertainty import UncertaintyMode  # noqa: E402

HELDOUT_SEED = 7777
BINS = [(3, 5), (5, 7), (7, 10), (10, 16)]


def ensure_heldout(folder: Path, n: int) -> None:
    from lacunes.synthetic import generate_dataset

    have = len(list(folder.glob("sub-*_desc-masked_T1.nii.gz"))) if folder.is_dir() else 0
    if have < n:
        print(f"generating {n} held-out subjects (seed {HELDOUT_SEED}) in {folder}")
        generate_dataset(folder, n, HELDOUT_SEED, first_id=101, progress=True)


def run_setting(model: Path, setting: str, subjects, out: Path, uncertainty_modes) -> dict:
    """Predict every subject once; write the probability and one uncertainty map per mode."""
    predictor = Predictor.from_checkpoint(model, PRESETS[setting].replace(progress=False))
    seconds = []
    for files in subjects:
        t0 = time.time()
        subject = read_subject(files.subject_id, files.paths)
        logits = predictor.variant_logits(prepare_image(subject.image, predictor.normalization))
        for mode in uncertainty_modes:
            prob, unc = predictor.maps_from_logits(logits, mode)
            d = out / str(mode)
            write_volume(prob.cpu().numpy(), subject.geometry, d / files.prediction_name)
            write_volume(unc.cpu().numpy(), subject.geometry, d / files.uncertainty_name)
        seconds.append(time.time() - t0)
        print(f"  {files.subject_id}: {seconds[-1]:.1f} s")
    return {"seconds_per_subject": float(np.mean(seconds)), "variants": len(predictor.plan.variants)}


def evaluate(pred_dir: Path, ref_dir: Path) -> tuple[dict, list]:
    pairs = pair_subjects(pred_dir, ref_dir)
    results = [evaluate_pair(p) for p in pairs]
    write_reports(results, pred_dir / "evaluation")
    return summarize(results), results


def fmt(stat: dict, digits: int = 2) -> str:
    if stat["n"] == 0 or math.isnan(stat["median"]):
        return "n/a"
    return f"{stat['median']:.{digits}f} [{stat['q25']:.{digits}f}, {stat['q75']:.{digits}f}]"


def detection_by_diameter(results) -> list[tuple[str, int, float]]:
    rows = [les for r in results for les in r.lesions if les["kind"] == "reference"]
    out = []
    for lo, hi in BINS:
        sel = [les for les in rows if lo <= les["diameter_mm"] < hi]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", default=str(ROOT / "data" / "synth-heldout"))
    ap.add_argument("--n", type=int, default=20, help="held-out subjects (generated if missing)")
    ap.add_argument("--model", default=str(ROOT / "model" / "lacunes.pt"))
    ap.add_argument("--ablation", default=str(HERE / "models" / "dicebce.pt"), help="the β=0 model")
    ap.add_argument("--full-subjects", type=int, default=None, help="run the full recipe on the first N only")
    ap.add_argument("--work", default=str(ROOT / "out" / "quality"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    heldout, work = Path(args.heldout), Path(args.work)
    ensure_heldout(heldout, args.n)
    subjects = find_valdo_subjects(heldout)[: args.n]
    n_full = args.full_subjects if args.full_subjects is not None else len(subjects)
    runs = [("blob", Path(args.model), "fast", subjects), ("β=0", Path(args.ablation), "fast", subjects),
            ("blob", Path(args.model), "full", subjects[:n_full])]
    modes = [UncertaintyMode.INVERSE_LOGIT, UncertaintyMode.TTA_STD, UncertaintyMode.ENTROPY]
    table, unc_rows, curves, meta = [], [], {}, {}
    for name, model, setting, subs in runs:
        if not subs or not model.is_file():
            print(f"skipping {name}/{setting}: {'no subjects' if not subs else f'no model at {model}'}")
            continue
        tag = f"{'blob' if name == 'blob' else 'dicebce'}-{setting}"
        print(f"{tag}: {len(subs)} subject(s)")
        info = run_setting(model, setting, subs, work / tag, modes if setting == "full" else modes[:1])
        ref_dir = work / tag / "reference"
        ref_dir.mkdir(parents=True, exist_ok=True)
        for f in subs:  # evaluate only the subjects this run predicted
            for p in f.label_paths().values():
                link = ref_dir / p.name
                if not link.exists():
                    link.symlink_to(p.resolve())
        summary, results = evaluate(work / tag / str(modes[0]), ref_dir)
        fp_free = [r.fp for r in results if r.n_ref == 0]
        table.append((f"{name} · {setting}", len(subs), summary, info,
                      float(np.mean(fp_free)) if fp_free else math.nan))
        curves[f"{name} · {setting} (n={len(subs)})"] = detection_by_diameter(results)
        if setting == "full":
            for mode in modes:
                s, _ = evaluate(work / tag / str(mode), ref_dir)
                unc_rows.append((str(mode), s))
        meta[tag] = info

    plot(curves, HERE / "detection_vs_diameter.png")
    cpu = platform.processor() or platform.machine()
    lines = [
        "## Quality (VALDO Task 3 metrics, held-out synthetic subjects)",
        "",
        f"Command: `python benchmarks/quality.py --full-subjects {n_full}` — machine: {torch.get_num_threads()} CPU "
        f"thread(s) ({cpu}), torch {torch.__version__}, no GPU. Held-out set: `lacunes synth --n {args.n} "
        f"--seed {HELDOUT_SEED} --first-id 101` (the training set used seed 2021). Reference = mean of the two raters; "
        "centre matching within 5 mm. Median [IQR] over subjects (F1 and Dice over subjects with lacunes).",
        "",
        "| model · setting | subjects | F1 | Dice | AVD mm³ | unc. flags | unc. voxels "
        "| FP per lacune-free subject | s / subject |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, n, s, info, fp_free in table:
        lines.append(f"| {label} | {n} | {fmt(s['f1'])} | {fmt(s['dice'])} | {fmt(s['avd_mm3'], 0)} | "
                     f"{fmt(s['unc_flags'])} | {fmt(s['unc_voxels'])} | {fp_free:.1f} | {info['seconds_per_subject']:.0f} |")
    if unc_rows:
        lines += ["", "Uncertainty options on the same full-recipe predictions (blob model):", "",
                  "| uncertainty | flags right (a) | voxel score (b) |", "|---|---|---|"]
        for mode, s in unc_rows:
            lines.append(f"| {mode} | {fmt(s['unc_flags'])} | {fmt(s['unc_voxels'])} |")
    lines += ["", "Detection rate by reference lesion diameter:", "", "![detection vs diameter](detection_vs_diameter.png)",
              "", "| run | " + " | ".join(b[0] for b in next(iter(curves.values()))) + " |",
              "|---|" + "---|" * len(BINS)]
    for name, rows in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[2]:.2f} (n={r[1]})" for r in rows) + " |")
    text = "\n".join(lines)
    replace_section("quality", text)
    (work / "quality.json").write_text(json.dumps({"table": [(t[0], t[1], t[2], t[3], t[4]) for t in table]},
                                                  indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
