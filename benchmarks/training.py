#!/usr/bin/env python3
"""Training throughput: the project's pipeline against a plain MONAI loop, in one run.

Two pipelines, the same subjects, crops (centres by the same sampler), network, loss and optimizer:

- ``project``: subjects held as tensors on the training device, crops cut and augmented there a batch
  at a time (:class:`lacunes.training.pipeline.DeviceBatcher`), as ``lacunes train`` does;
- ``monai``: a ``DataLoader`` (``--workers`` processes) over a dataset of per-crop MONAI dictionary
  transforms on the CPU (:class:`lacunes.training.data.CropDataset`), batches copied to the device.

Two measurements for each:

1. the data pipeline alone at the ``valdo`` recipe's crops (4 subjects × 2 crops of 192×192×32): crops/s;
2. full training steps (forward, blob loss, backward, Ranger21) with ``--step-preset`` (default ``cpu``:
   64×64×32 crops, 2 × 2 a batch; ``valdo`` on a GPU): steps/s, samples (crops)/s, the share of the step
   spent waiting for the batch, and peak memory (the process's resident set, its loader workers apart;
   on CUDA, the GPU memory allocated).

Each (pipeline, measurement) runs in a fresh process, after ``--warmup`` batches. The subjects are
phantoms generated in memory (``--subjects``, seed 2021, as the training set), or read from ``--data``.
Writes the ``training-pipeline`` section of RESULTS.md.

    python benchmarks/training.py                      # this CPU
    python benchmarks/training.py --device cuda --step-preset valdo --workers 8
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def _batch_source(spec: dict, subjects, config, dev, total: int):
    """The arm's batches: the project's (subjects held as tensors, crops cut on the device) or a MONAI
    DataLoader's (per-crop dictionary transforms on the CPU, copied to the device)."""
    import torch

    from lacunes.training.data import CropDataset, EpochSampler, collate_crops
    from lacunes.training.pipeline import DeviceBatcher, FolderSource, hold, holding_device, subject_bytes

    cuda = dev.type == "cuda"
    if spec["pipeline"] == "project":
        where = holding_device(sum(subject_bytes(s) for s in subjects), dev)
        held = [hold(s, where, pin=cuda and where.type == "cpu") for s in subjects]
        source = FolderSource(held, config.batch_size, total, seed=0)
        batcher = DeviceBatcher(config, dev, seed=0)
        chosen = source.epoch(0)

        def next_batch():
            return batcher(next(chosen))
    else:
        dataset = CropDataset(subjects, config, seed=0)
        sampler = EpochSampler(len(subjects), config.batch_size, total, seed=0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                             collate_fn=collate_crops, num_workers=spec["workers"],
                                             pin_memory=cuda, persistent_workers=False)
        batches = iter(loader)

        def next_batch():
            return {k: v.to(dev, non_blocking=True) for k, v in next(batches).items()}
    return next_batch


def run_arm(spec: dict) -> dict:
    """One (pipeline, measurement) in this process; returns its numbers."""
    import numpy as np
    import torch

    from lacunes.device import resolve_device
    from lacunes.losses import BlobLoss, DiceBCELoss
    from lacunes.network import build_network
    from lacunes.training.config import TrainConfig
    from lacunes.training.loop import make_optimizer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    dev = resolve_device(spec["device"])
    cuda = dev.type == "cuda"
    config = TrainConfig.from_dict(spec["config"])
    with open(spec["subjects"], "rb") as f:
        subjects = pickle.load(f)
    total = spec["warmup"] + spec["batches"]
    torch.manual_seed(0)
    next_batch = _batch_source(spec, subjects, config, dev, total)
    step = spec["measure"] == "step"
    if step:
        net = build_network(config.network).to(dev).train()
        opt = make_optimizer(config, net.parameters(), total)
        loss_fn = BlobLoss(main_criterion=DiceBCELoss(batch=config.batch_dice), alpha=config.alpha,
                           beta=config.effective_beta)
        amp = cuda and config.amp
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    data_s, step_s, crops = [], [], 0
    for i in range(total):
        sync()
        t0 = time.perf_counter()
        batch = next_batch()
        sync()
        t1 = time.perf_counter()
        if step:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(batch["image"])
            loss = loss_fn(logits.float(), batch["label"].float(), batch["instances"].long())
            loss.backward()
            opt.step()
            float(loss.detach())  # the loop reads the loss every step
            sync()
        t2 = time.perf_counter()
        if i >= spec["warmup"]:
            data_s.append(t1 - t0)
            step_s.append(t2 - t0)
            crops += batch["image"].shape[0]
    seconds = float(np.sum(step_s))
    return {
        "pipeline": spec["pipeline"], "measure": spec["measure"], "batches": len(step_s), "crops": crops,
        "seconds": seconds, "per_s": len(step_s) / seconds, "crops_per_s": crops / seconds,
        "data_share": float(np.sum(data_s)) / seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "peak_gpu_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if cuda else None,
        "device": dev.type,
    }


def make_subjects(args, config, path: Path) -> list[str]:
    from tqdm import tqdm

    if args.data:
        from lacunes.layouts import find_valdo_subjects
        from lacunes.training.data import load_training_subject

        files = find_valdo_subjects(Path(args.data))[: args.subjects]
        subjects = [load_training_subject(f, config) for f in tqdm(files, desc="reading")]
    else:
        from lacunes.training.generated import generated_subject

        subjects = [generated_subject(2021, k + 1, config) for k in tqdm(range(args.subjects), desc="generating")]
    with open(path, "wb") as f:
        pickle.dump(subjects, f, protocol=pickle.HIGHEST_PROTOCOL)
    return [s.subject_id for s in subjects]


def _measure(args, data_config, step_config) -> tuple[list[dict], list[str]]:
    """Every (measurement, pipeline) arm in a fresh process on the same subjects; raises when one fails."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subjects.pkl"
        ids = make_subjects(args, data_config, path)
        for measure, config in (("data", data_config), ("step", step_config)):
            for pipeline in ("monai", "project"):
                spec = {"pipeline": pipeline, "measure": measure, "config": config.to_dict(), "subjects": str(path),
                        "device": args.device, "threads": args.threads, "workers": args.workers,
                        "batches": args.batches, "warmup": args.warmup}
                t0 = time.time()
                out = subprocess.run([sys.executable, __file__, "--arm", json.dumps(spec)], capture_output=True,
                                     text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"{measure} {pipeline} failed:\n{out.stderr[-4000:]}")
                r = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
                results.append(r)
                print(f"{measure:>4} {pipeline:>7}: {r['per_s']:.2f} batches/s, {r['crops_per_s']:.1f} crops/s, "
                      f"waiting on data {100 * r['data_share']:.0f} %, peak RSS {r['peak_rss_gb']:.2f} GB"
                      + (f", GPU {r['peak_gpu_gb']:.1f} GB" if r["peak_gpu_gb"] is not None else "")
                      + f" ({time.time() - t0:.0f} s)", flush=True)
    return results, ids


def _section(args, results: list[dict], ids: list[str], data_config, step_config) -> str:
    """The RESULTS.md section of the measurements."""
    import torch

    by = {(r["measure"], r["pipeline"]): r for r in results}
    cuda = args.device.startswith("cuda")
    if cuda:
        hardware = torch.cuda.get_device_name() if torch.cuda.is_available() else args.device
    else:
        threads = args.threads or torch.get_num_threads()
        hardware = f"{threads} CPU thread(s) ({platform.processor() or platform.machine()})"

    def crop_text(c):
        return f"{c.batch_size} × {c.crops_per_subject} crops of {'×'.join(map(str, c.crop_size))}"

    lines = [
        f"## Training throughput: the project's pipeline against a plain MONAI loop ({hardware})",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/training.py', *sys.argv[1:]])}`"
        + f" — {hardware}, torch {torch.__version__}. {len(ids)} subjects "
        + (f"from {args.data}" if args.data else "generated in memory (seed 2021)")
        + f"; each row a fresh process, {args.batches} timed batches after {args.warmup}. `monai`: DataLoader "
        f"({args.workers} worker(s)) over per-crop MONAI dictionary transforms on the CPU, batches copied to the "
        "device; `project`: subjects held as tensors, crops cut and augmented on the device a batch at a time "
        "(what `lacunes train` does). Same sampler, augmentation parameters, network, blob loss and Ranger21.",
        "",
        f"Data pipeline alone, the `valdo` recipe's batches ({crop_text(data_config)}):",
        "",
        "| pipeline | crops / s | × monai | peak RSS GB |",
        "|---|---|---|---|",
    ]
    for p in ("monai", "project"):
        r = by[("data", p)]
        lines.append(f"| {p} | {r['crops_per_s']:.1f} | {r['crops_per_s'] / by[('data', 'monai')]['crops_per_s']:.2f} "
                     f"| {r['peak_rss_gb']:.2f} |")
    lines += [
        "",
        f"Training steps, the `{args.step_preset}` preset's batches ({crop_text(step_config)})"
        + (", bfloat16 autocast" if cuda and step_config.amp else ", float32") + ":",
        "",
        "| pipeline | steps / s | samples (crops) / s | × monai | waiting on data | peak RSS GB"
        + (" | peak GPU GB |" if cuda else " |"),
        "|---|---|---|---|---|---" + ("|---|" if cuda else "|"),
    ]
    for p in ("monai", "project"):
        r = by[("step", p)]
        lines.append(f"| {p} | {r['per_s']:.3f} | {r['crops_per_s']:.2f} | {r['per_s'] / by[('step', 'monai')]['per_s']:.2f} "
                     f"| {100 * r['data_share']:.0f} % | {r['peak_rss_gb']:.2f} |"
                     + (f" {r['peak_gpu_gb']:.1f} |" if cuda else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--step-preset", default="cpu", help="training preset of the step measurement (default cpu)")
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--data", help="read the subjects from this VALDO-layout folder instead of generating them")
    ap.add_argument("--batches", type=int, default=8, help="timed batches per measurement (default 8)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the MONAI loop (default 1)")
    ap.add_argument("--threads", type=int, help="torch threads in each process")
    ap.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        print("RESULT " + json.dumps(run_arm(json.loads(args.arm))))
        return 0

    from lacunes.training.config import get_preset

    data_config = get_preset("valdo")
    step_config = get_preset(args.step_preset)
    try:
        results, ids = _measure(args, data_config, step_config)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    cuda = args.device.startswith("cuda")
    text = _section(args, results, ids, data_config, step_config)
    print(text)
    if not args.no_write:
        from results_md import replace_section

        replace_section("training-pipeline-gpu" if cuda else "training-pipeline", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
