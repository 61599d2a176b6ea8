#!/usr/bin/env python3
"""Training step time on the CPU: float32 against bfloat16 autocast, same batches, same process.

Loads a few training subjects, draws batches with the ``cpu-hardneg`` sampler, and times full training
steps (forward, blob loss, backward, Ranger21 step) alternating between float32 and bfloat16 autocast,
from the same starting weights; reports the median seconds per step of each, their ratio and the loss
of both on the same batches. Writes the ``training-precision`` section of RESULTS.md.

    python benchmarks/training_precision.py --data data/synth-train --subjects 4 --steps 8
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
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

from lacunes.losses import BlobLoss, DiceBCELoss  # noqa: E402
from lacunes.network import build_network  # noqa: E402
from lacunes.training.config import get_preset  # noqa: E402
from lacunes.training.data import CropDataset, collate_crops, load_training_subject  # noqa: E402
from lacunes.training.loop import cpu_bf16_supported, make_optimizer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data" / "synth-train"))
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per precision (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu_bf16_supported():
        print("this CPU has no native bfloat16 (AMX / AVX-512 BF16): nothing to compare")
        return 1
    from lacunes.layouts import find_valdo_subjects

    config = get_preset("cpu-hardneg")
    subjects = [load_training_subject(f, config) for f in find_valdo_subjects(Path(args.data))[: args.subjects]]
    dataset = CropDataset(subjects, config, seed=0)
    rng = np.random.default_rng(0)
    batches = [collate_crops([dataset[int(i)] for i in rng.integers(len(subjects), size=config.batch_size)])
               for _ in range(args.steps + 1)]
    torch.manual_seed(0)
    start = build_network(config.network)
    loss_fn = BlobLoss(main_criterion=DiceBCELoss(batch=config.batch_dice), alpha=config.alpha, beta=config.beta)
    runs = {}
    for name in ("float32", "bfloat16"):
        net = copy.deepcopy(start).train()
        opt = make_optimizer(config, net.parameters(), config.batches_per_epoch)
        runs[name] = {"net": net, "opt": opt, "times": [], "losses": []}
    for step, batch in enumerate(batches):
        for name, run in runs.items():  # alternate, so that both see the same machine load
            t0 = time.time()
            run["opt"].zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bfloat16"):
                logits = run["net"](batch["image"])
            loss = loss_fn(logits.float(), batch["label"].float(), batch["instances"].long())
            loss.backward()
            run["opt"].step()
            if step > 0:
                run["times"].append(time.time() - t0)
                run["losses"].append(loss.item())
        print(f"step {step}: " + ", ".join(f"{n} {r['times'][-1]:.2f} s" for n, r in runs.items() if r["times"]))
    t32, t16 = (float(np.median(runs[n]["times"])) for n in ("float32", "bfloat16"))
    cpu = platform.processor() or platform.machine()
    lines = [
        "## Training step time on the CPU: float32 against bfloat16 autocast",
        "",
        f"Command: `python benchmarks/training_precision.py {shlex.join(sys.argv[1:])}`".rstrip()
        + f" — {torch.get_num_threads()} CPU thread(s) ({cpu}, AMX/AVX-512 BF16), torch {torch.__version__}. "
        f"The `cpu-hardneg` recipe's batches ({config.batch_size} subjects × {config.crops_per_subject} crops of "
        f"{'×'.join(map(str, config.crop_size))}), blob loss, Ranger21; {args.steps} timed steps each, alternating, "
        "from the same initial weights.",
        "",
        "| arithmetic | median s / step | × float32 | mean loss over the steps |",
        "|---|---|---|---|",
        f"| float32 | {t32:.2f} | 1.00 | {np.mean(runs['float32']['losses']):.4f} |",
        f"| bfloat16 autocast | {t16:.2f} | {t16 / t32:.2f} | {np.mean(runs['bfloat16']['losses']):.4f} |",
    ]
    text = "\n".join(lines)
    replace_section("training-precision", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
