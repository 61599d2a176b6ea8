#!/usr/bin/env python3
"""Do the compiled backends find the same lesions? The full recipe on held-out phantoms (seed 7777, made
in memory), the bundled model on the PyTorch backend (float32: the plain MONAI loop's arithmetic, within
1.2e-7 of it on the sample case; "Inference speed") against OpenVINO float32 and, where the CPU has it,
bfloat16. Per subject: the largest difference of the raw probability (the TTA mean, before the second
stage), whether the lesions at 0.5 of it are the same, and whether the lesions of the finished map
(second stage and operating point applied) are the same. Writes a section of benchmarks/RESULTS.md.

    python benchmarks/backend_lesions.py [--n 5] [--preset full] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from inference import same_lesions  # noqa: E402
from quality import HELDOUT_FIRST_ID, HELDOUT_SEED, generated_case  # noqa: E402


def arms() -> list[tuple[str, str, str]]:
    from lacunes.backends import openvino_cpu_capabilities

    out = [("torch float32", "torch", "float32"), ("openvino float32", "openvino", "float32")]
    if "BF16" in openvino_cpu_capabilities():
        out.append(("openvino bfloat16", "openvino", "bfloat16"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--section", default="backend-lesions")
    ap.add_argument("--work", default=str(ROOT / "out" / "backend-lesions"))
    args = ap.parse_args()
    import torch
    from results_md import replace_section

    from lacunes.checkpoint import bundled_checkpoint
    from lacunes.inference import Predictor
    from lacunes.instances import label_instances
    from lacunes.settings import PRESETS

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    predictors = {name: Predictor.from_checkpoint(bundled_checkpoint(), PRESETS[args.preset].replace(
        progress=False, backend=backend, precision=precision)) for name, backend, precision in arms()}
    rows = []
    for index in range(HELDOUT_FIRST_ID, HELDOUT_FIRST_ID + args.n):
        case = generated_case(index)
        first = next(iter(predictors.values()))
        model_input = first.prepare(case.image)
        results = {}
        for name, predictor in predictors.items():
            t0 = time.perf_counter()
            raw = predictor.raw(model_input)
            finished = predictor.finish(raw)
            results[name] = (raw.probability, finished.probability, time.perf_counter() - t0)
            print(f"{case.subject_id} {name}: {results[name][2]:.0f} s", flush=True)
        ref_raw, ref_fin, ref_s = results["torch float32"]
        (ref_raw_l, ref_raw_n), (ref_fin_l, ref_fin_n) = label_instances(ref_raw >= 0.5), label_instances(ref_fin >= 0.5)
        for name, (raw_p, fin_p, seconds) in results.items():
            if name == "torch float32":
                continue
            raw_l, fin_l = label_instances(raw_p >= 0.5)[0], label_instances(fin_p >= 0.5)[0]
            rows.append({"subject": case.subject_id, "arm": name, "seconds": seconds, "torch_seconds": ref_s,
                         "max_dp_raw": float(np.abs(raw_p - ref_raw).max()),
                         "max_dp_finished": float(np.abs(fin_p - ref_fin).max()),
                         "raw_lesions": int(raw_l.max()), "torch_raw_lesions": ref_raw_n,
                         "raw_same": same_lesions(raw_l, ref_raw_l),
                         "lesions": int(fin_l.max()), "torch_lesions": ref_fin_n,
                         "same": same_lesions(fin_l, ref_fin_l)})
            print(json.dumps(rows[-1]), flush=True)
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    lines = [f"## Same lesions on the compiled backends: held-out subjects, `{args.preset}` ({args.threads} threads, "
             f"{platform.machine()})", "",
             f"Command: `python benchmarks/backend_lesions.py --n {args.n} --preset {args.preset} --threads {args.threads}` — "
             f"held-out phantoms {HELDOUT_FIRST_ID}–{HELDOUT_FIRST_ID + args.n - 1} (`lacunes synth --seed {HELDOUT_SEED}`, "
             f"made in memory), the bundled model; reference = the PyTorch backend in float32. Raw = the TTA mean of "
             f"the sigmoids before the second stage; finished = the written map (second stage, operating point). "
             f"Same lesions: as many connected components at 0.5, each overlapping exactly one of the other's. "
             f"torch {torch.__version__}.", "",
             "| subject | backend | seconds (torch) | max \\|Δp\\| raw | lesions at 0.5 of raw (torch) | same | "
             "max \\|Δp\\| finished | lesions (torch) | same |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['subject']} | {r['arm']} | {r['seconds']:.0f} ({r['torch_seconds']:.0f}) | {r['max_dp_raw']:.1e} | "
                     f"{r['raw_lesions']} ({r['torch_raw_lesions']}) | {'yes' if r['raw_same'] else 'no'} | "
                     f"{r['max_dp_finished']:.1e} | {r['lesions']} ({r['torch_lesions']}) | {'yes' if r['same'] else 'no'} |")
    text = "\n".join(lines)
    print(text)
    replace_section(args.section, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
