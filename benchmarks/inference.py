#!/usr/bin/env python3
"""Inference speed and memory: the project's predictor against the plain MONAI loop, in the same run.

Baseline: MONAI ``sliding_window_inference`` called once per TTA variant, float32, one window per network
call, probabilities averaged (:func:`lacunes.inference.reference_predict`). Project: :class:`Predictor`
(all variants of a window batch in one network call, ``inference_mode``, autocast on CUDA). Both on the
bundled sample case with the same settings; each run in a subprocess of its own so that its peak host
memory is its own. Checks that the two probability maps agree (max abs difference ≤ 1e-3), prints the
time ratio, and on CUDA the peak GPU memory and the achieved TFLOP/s. Writes the inference section of
benchmarks/RESULTS.md.

    python benchmarks/inference.py                 # full recipe + fast, on the available device
    python benchmarks/inference.py --runs fast     # only the fast setting
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from results_md import replace_section  # noqa: E402


def one(kind: str, preset: str, model: Path, case: Path, out: Path, device: str, precision: str) -> dict:
    import numpy as np
    import torch

    from lacunes.inference import PRESETS, Predictor, reference_predict
    from lacunes.io import read_subject
    from lacunes.layouts import find_valdo_subjects
    from lacunes.preprocessing import prepare_image

    files = find_valdo_subjects(case)[0]
    subject = read_subject(files.subject_id, files.paths)
    settings = PRESETS[preset].replace(progress=False, device=device, precision=precision)
    predictor = Predictor.from_checkpoint(model, settings)
    normalized = prepare_image(subject.image, predictor.normalization)
    cuda = predictor.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if kind == "baseline":
        prob = reference_predict(predictor.network, normalized, settings, predictor.device)
    else:
        prob, _ = predictor.predict_normalized(normalized)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    np.save(out, prob.astype(np.float32))
    result = {"kind": kind, "preset": preset, "seconds": seconds, "device": str(predictor.device),
              "peak_host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
              "variants": len(predictor.plan.variants), "roi": list(predictor.roi_for(normalized.shape[1:]))}
    if cuda:
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
        result["gpu"] = torch.cuda.get_device_name()
        result["tflops"] = flops_per_volume(predictor, normalized.shape[1:]) / seconds / 1e12
    return result


def flops_per_volume(predictor, shape) -> float:
    """Network FLOPs for one volume: FLOPs of one window × windows × variants (MONAI's scan)."""
    import torch
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices
    from torch.utils.flop_counter import FlopCounterMode

    roi = predictor.roi_for(shape)
    padded = [max(s, r) for s, r in zip(shape, roi)]
    n_windows = len(dense_patch_slices(padded, roi, _get_scan_interval(padded, roi, 3, (predictor.settings.overlap,) * 3)))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        predictor.network(torch.zeros(1, 3, *roi, device=predictor.device))
    return counter.get_total_flops() * n_windows * len(predictor.plan.variants)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "model" / "lacunes.pt"))
    ap.add_argument("--case", default=str(ROOT / "test"))
    ap.add_argument("--runs", default="full,fast", help="comma-separated presets to time (full, fast)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--work", default=str(ROOT / "out" / "inference-benchmark"))
    ap.add_argument("--section", default="inference", help="RESULTS.md section name (e.g. inference-gpu)")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "PRESET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.one:
        kind, preset = args.one
        r = one(kind, preset, Path(args.model), Path(args.case), work / f"{kind}-{preset}.npy", args.device,
                args.precision)
        print("RESULT " + json.dumps(r))
        return 0

    import numpy as np

    results = {}
    plan = []
    for preset in args.runs.split(","):
        plan += [("baseline", preset), ("project", preset)] if preset == "full" else [("project", preset)]
    for kind, preset in plan:
        print(f"running {kind} / {preset} ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--one", kind, preset, "--model", args.model, "--case",
                               args.case, "--device", args.device, "--precision", args.precision, "--work",
                               str(work)], capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            return 1
        results[(kind, preset)] = json.loads(line[0][7:])
        print(f"  {results[(kind, preset)]}")

    rows = []
    base = results.get(("baseline", "full"))
    full = results.get(("project", "full"))
    if base and full:
        diff = float(np.abs(np.load(work / "baseline-full.npy") - np.load(work / "project-full.npy")).max())
        full["max_abs_diff_vs_baseline"] = diff
        print(f"max |p_project - p_baseline| = {diff:.2e} ({'ok' if diff <= 1e-3 else 'TOO LARGE'})")
    any_r = next(iter(results.values()))
    device = any_r.get("gpu", f"CPU, {platform.machine()}, torch threads {__import__('torch').get_num_threads()}")
    for (kind, preset), r in results.items():
        ratio = r["seconds"] / base["seconds"] if base else float("nan")
        fast_vs_full = full["seconds"] / r["seconds"] if full and preset == "fast" else None
        extra = []
        if "max_abs_diff_vs_baseline" in r:
            extra.append(f"max abs diff vs baseline {r['max_abs_diff_vs_baseline']:.1e}")
        if fast_vs_full:
            extra.append(f"{fast_vs_full:.1f}× faster than project full")
        gpu = f"{r['peak_gpu_gb']:.2f}" if "peak_gpu_gb" in r else "–"
        tf = f"{r['tflops']:.1f}" if "tflops" in r else "–"
        rows.append(f"| {kind} | {preset} ({r['variants']} variant(s), roi {'×'.join(map(str, r['roi']))}) | "
                    f"{r['seconds']:.1f} | {ratio:.2f} | {r['peak_host_gb']:.2f} | {gpu} | {tf} | {'; '.join(extra)} |")
    text = "\n".join([
        f"## Inference speed ({device})",
        "",
        f"Command: `python benchmarks/inference.py --runs {args.runs}` on the sample case `test/` (sub-201, "
        "153×189×159 at 1 mm), bundled weights. Baseline = MONAI `sliding_window_inference` once per TTA variant, "
        "float32, one window per call, same settings.",
        "",
        "| run | setting | seconds | × baseline | peak host GB | peak GPU GB | TFLOP/s | notes |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    replace_section(args.section, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
