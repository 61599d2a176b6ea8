#!/usr/bin/env python3
"""Inference speed and memory: the project's predictor against the plain MONAI loop, in the same run.

Baseline: MONAI ``sliding_window_inference`` called once per TTA variant, float32 (IEEE: cuDNN's TF32
off), the recipe's window batch (7 windows per call on a GPU, 1 on the CPU, where 7 would need ~37 GB),
probabilities averaged (:func:`lacunes.inference.reference_predict`; on CUDA with cuDNN autotuning, as
the project). Project: :class:`Predictor` (all TTA variants of a window batch in one network call,
``inference_mode``, on CUDA cuDNN autotuning and the chosen precision; ``/cl`` = channels-last
tensors; ``/torch`` or ``/openvino`` = the backend, :mod:`lacunes.backends`), its operating point and
second stage off so that both compare the network stage (the TTA mean of the sigmoids). Both on the
bundled sample case with the same settings, each run in a subprocess of its own
so that its peak host memory is its own. Every run's probabilities are compared with the float32
baseline's (max abs difference; the predictor at float32 must stay ≤ 1e-3, and the table states what
each lower precision changes). On CUDA each run predicts twice and the second (warm: CUDA context,
cuDNN search done) is timed; the first is in the notes. Writes a section of benchmarks/RESULTS.md.

    python benchmarks/inference.py                          # the default runs for the available device
    python benchmarks/inference.py --runs project/fast/float32   # one run: KIND/PRESET/PRECISION[/cl][/BACKEND]
    python benchmarks/inference.py --export-case case.npz   # the sample case as one array (no SimpleITK needed)
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

CPU_RUNS = ("baseline/full/float32,project/full/float32/torch,project/full/float32/openvino,"
            "project/full/bfloat16/openvino,project/fast/float32/torch,project/fast/float32/openvino")
CUDA_RUNS = ("baseline/full/float32,baseline/full/tf32,project/full/float32,project/full/tf32,project/full/float16,"
             "project/full/float16/cl,project/full/bfloat16,project/fast/tf32")


def load_case(case: Path):
    """The raw ``3×X×Y×Z`` image of the case: a VALDO folder (first subject) or an ``.npz`` from --export-case."""
    import numpy as np

    if case.suffix == ".npz":
        with np.load(case) as z:
            return z["image"].astype(np.float32)
    from lacunes.io import read_subject
    from lacunes.layouts import find_valdo_subjects

    files = find_valdo_subjects(case)[0]
    return read_subject(files.subject_id, files.paths).image


def one(spec: str, model: Path, case: Path, out: Path, device: str) -> dict:
    import numpy as np
    import torch

    from lacunes.inference import ModelInput, Precision, Predictor
    from lacunes.preprocessing import prepare_image
    from lacunes.settings import PRESETS
    from lacunes.windowing import reference_predict, roi_for

    kind, preset, precision, *flags = spec.split("/")
    image = load_case(case)
    backend = next((f for f in flags if f in ("torch", "openvino")), "torch")
    settings = PRESETS[preset].replace(progress=False, device=device, precision=precision,
                                       channels_last="cl" in flags, backend=backend)
    predictor = Predictor.from_checkpoint(model, settings)
    normalized = prepare_image(image, predictor.release.normalization)
    cuda = predictor.device.type == "cuda"
    prepare = 0.0
    if kind == "project" and predictor.backend == "openvino":  # converted (or read from the cache) up front
        from lacunes.backends import OpenVINONetwork

        t0 = time.perf_counter()
        predictor.stage._compiled = OpenVINONetwork(predictor.network, predictor.precision.value)
        prepare = time.perf_counter() - t0

    stats: dict = {}

    def run():
        if kind == "baseline":
            return reference_predict(predictor.network, normalized, settings, predictor.device,
                                     sw_batch_size=predictor.stage.window_batch(),
                                     allow_tf32=Precision(precision) == Precision.TF32)
        raw = predictor.raw(ModelInput(normalized))  # the network stage, as the baseline computes it
        stats.update(raw.stats)
        return raw.probability

    times = []
    for _ in range(2 if cuda else 1):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        prob = run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    np.save(out, prob.astype(np.float32))
    resolved = str(predictor.precision) if kind == "project" else precision  # e.g. float16 runs as float32 on a CPU
    result = {"spec": spec, "kind": kind, "preset": preset, "precision": resolved, "seconds": times[-1],
              "cold_seconds": times[0], "device": str(predictor.device),
              "channels_last": predictor.stage.channels_last if kind == "project" else False,
              "peak_host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
              "variants": predictor.variants, "roi": list(roi_for(predictor.settings, normalized.shape[1:])),
              "backend": str(predictor.backend) if kind == "project" else "torch", "prepare_seconds": prepare,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if kind == "project":
        result["samples_per_call"] = stats.get("samples_per_call")
    if cuda:
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
        result["gpu"] = torch.cuda.get_device_name()
        result["tflops"] = flops_per_volume(predictor, normalized.shape[1:]) / times[-1] / 1e12
    return result


def flops_per_volume(predictor, shape) -> float:
    """Network FLOPs for one volume: FLOPs of one window × windows × variants (MONAI's scan)."""
    import torch
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices
    from torch.utils.flop_counter import FlopCounterMode

    from lacunes.windowing import CHANNELS, roi_for

    roi = roi_for(predictor.settings, shape)
    padded = [max(s, r) for s, r in zip(shape, roi)]
    n_windows = len(dense_patch_slices(padded, roi, _get_scan_interval(padded, roi, 3, (predictor.settings.overlap,) * 3)))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        predictor.network(torch.zeros(1, CHANNELS, *roi, device=predictor.device))
    return counter.get_total_flops() * n_windows * predictor.variants


def _run_arms(runs: list[str], args, work: Path) -> dict | None:
    """Each arm in a fresh process (one at a time); None when one fails (its output printed)."""
    results = {}
    for spec in runs:
        print(f"running {spec} ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--one", spec, "--model", args.model, "--case", args.case,
                               "--device", args.device, "--work", str(work)], capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            return None
        results[spec] = json.loads(line[0][7:])
        print(f"  {results[spec]}", flush=True)
    return results


def same_lesions(a, b) -> bool:
    """Whether two labelled lesion maps hold the same lesions: as many, each overlapping exactly one of
    the other's (voxels at their edges may differ)."""

    if a.max() != b.max():
        return False
    both = (a > 0) & (b > 0)
    pairs = set(zip(a[both].tolist(), b[both].tolist()))
    return len(pairs) == int(a.max()) and len({p for p, _ in pairs}) == len({q for _, q in pairs}) == len(pairs)


def _rows(results: dict, work: Path) -> tuple[list[str], list[str]]:
    """The table's rows (against the plain float32 loop when it ran) and the float32 arms that differ from
    it by more than 1e-3."""
    import numpy as np

    def prob(spec: str) -> np.ndarray:
        return np.load(work / (spec.replace("/", "-") + ".npy"))

    reference = "baseline/full/float32" if "baseline/full/float32" in results else None
    base = results.get(reference) if reference else None
    full = results.get("project/full/float32") or next((r for s, r in results.items()
                                                        if s.startswith("project/full/")), None)
    rows, failed = [], []
    for spec, r in results.items():
        notes = []
        if base and r["preset"] == "full" and spec != reference:
            d = np.abs(prob(spec) - prob(reference))
            flips = int(((prob(spec) >= 0.5) != (prob(reference) >= 0.5)).sum())
            r["max_abs_diff"] = float(d.max())
            notes.append(f"max abs Δp vs baseline {d.max():.1e} (mean {d.mean():.0e}), {flips} voxel(s) change side of 0.5")
            if r["precision"] == "float32" and r["max_abs_diff"] > 1e-3:
                failed.append(spec)
        if full and r["preset"] == "fast":
            notes.append(f"{full['seconds'] / r['seconds']:.1f}× faster than project full ({full['precision']})")
        if "gpu" in r:
            notes.append(f"cold run {r['cold_seconds']:.1f} s")
        if r.get("samples_per_call"):
            notes.append(f"{r['samples_per_call']} sample(s) per network call")
        if r.get("prepare_seconds"):
            notes.append(f"network converted or read from the cache before the run in {r['prepare_seconds']:.1f} s")
        if base and r["preset"] == "full" and spec != reference:
            from lacunes.instances import label_instances

            (a, mine), (b, theirs) = (label_instances(p >= 0.5) for p in (prob(spec), prob(reference)))
            notes.append(f"{mine} lesion(s) at 0.5, baseline {theirs}, "
                         f"{'the same lesions' if same_lesions(a, b) else 'lesions differ'}")
        ratio = r["seconds"] / base["seconds"] if base else float("nan")
        gpu = f"{r['peak_gpu_gb']:.2f}" if "peak_gpu_gb" in r else "–"
        tf = f"{r['tflops']:.1f}" if "tflops" in r else "–"
        setting = (f"{r['preset']} ({r['variants']} variant(s), roi {'×'.join(map(str, r['roi']))}), {r['precision']}"
                   + (", channels-last" if r["channels_last"] else "")
                   + (f", {r['backend']}" if r["kind"] == "project" else ""))
        rows.append(f"| {r['kind']} | {setting} | {r['seconds']:.1f} | {ratio:.2f} | {r['peak_host_gb']:.2f} | {gpu} | "
                    f"{tf} | {'; '.join(notes)} |")
    return rows, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "model" / "lacunes.pt"))
    ap.add_argument("--case", default=str(ROOT / "test"), help="a VALDO folder (first subject) or an .npz")
    ap.add_argument("--runs", default=None, help=f"comma-separated KIND/PRESET/PRECISION[/cl][/torch|/openvino]; default on CPU: "
                                                  f"{CPU_RUNS}; on CUDA: {CUDA_RUNS}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default=str(ROOT / "out" / "inference-benchmark"))
    ap.add_argument("--section", default=None, help="RESULTS.md section (default: inference, or inference-gpu on CUDA)")
    ap.add_argument("--export-case", metavar="NPZ", help="write the case's raw image to NPZ and stop")
    ap.add_argument("--one", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.export_case:
        import numpy as np

        np.savez_compressed(args.export_case, image=load_case(Path(args.case)))
        print(f"wrote {args.export_case}")
        return 0
    if args.one:
        r = one(args.one, Path(args.model), Path(args.case), work / (args.one.replace("/", "-") + ".npy"), args.device)
        print("RESULT " + json.dumps(r))
        return 0

    from lacunes.device import resolve_device

    cuda = resolve_device(args.device).type == "cuda"
    runs = (args.runs or (CUDA_RUNS if cuda else CPU_RUNS)).split(",")
    section = args.section or ("inference-gpu" if cuda else "inference")
    results = _run_arms(runs, args, work)
    if results is None:
        return 1
    rows, failed = _rows(results, work)
    any_r = next(iter(results.values()))
    where = (f"{any_r['gpu']}, torch {any_r['torch']}" if "gpu" in any_r else
             f"CPU, {platform.machine()}, {any_r['threads']} torch threads, torch {any_r['torch']}")
    text = "\n".join([
        f"## Inference speed ({where})",
        "",
        f"Command: `python benchmarks/inference.py{' --runs ' + args.runs if args.runs else ''}"
        f"{' --case ' + Path(args.case).name if Path(args.case) != ROOT / 'test' else ''}` on the sample case "
        f"(`test/`, sub-201, 153×189×159 at 1 mm{'; exported with --export-case' if args.case.endswith('.npz') else ''}), "
        f"bundled weights. Baseline = MONAI `sliding_window_inference` once "
        f"per TTA variant, IEEE float32, {'7 windows' if cuda else '1 window'} per call, same settings"
        f"{' (both with cuDNN autotuning)' if cuda else ''}; "
        f"{'warm runs (the second of two in one process)' if cuda else 'one run each'}.",
        "",
        "| run | setting | seconds | × baseline | peak host GB | peak GPU GB | TFLOP/s | notes |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    replace_section(section, text)
    print(text)
    if failed:
        print(f"FAILED: float32 runs differ from the baseline by more than 1e-3: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
