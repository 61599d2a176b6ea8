#!/usr/bin/env python3
"""Turn a training checkpoint into a released one: weights in half precision (half the file), no
optimizer state, the inference defaults and the model's space (orientation, voxel size) recorded, and a
``.sha256`` sidecar next to it. ``--second-stage-from`` carries another checkpoint's fitted second stage
over (its operating point is then chosen again: ``lacunes calibrate --keep-rescorer``, or carried over too
with ``--operating-point-from``, where a fine-tuning run keeps the network's outputs close to the other's
and the held-out benchmark checks it). ``--input-sets`` states the sets of contrasts the release accepts
without ``--modalities`` (its ``input_sets``; the ones it was trained for are kept as ``input_sets_trained``):
list only sets measured on the held-out benchmark, with their own calibration where one needs it.
``--phantom-space`` records the phantoms' space (1 mm, arrays towards the right, anterior and superior) in
place of the one the checkpoint states: checkpoints trained on phantoms before their files carried that
orientation (before 2026-12-05) state the identity direction, under which inference turns real scans 180° about
the vertical axis before the network.

    python training/release.py runs/cpu-blob/checkpoints/final.pt model/lacunes.pt
    python training/release.py runs/acq-blob/checkpoints/final.pt runs/acq-blob/release.pt --second-stage-from runs/stage3.pt
    python training/release.py runs/acq-sets/checkpoints/final.pt runs/acq-sets/release.pt \
        --second-stage-from model/lacunes.pt --operating-point-from model/lacunes.pt
    python training/release.py runs/s4b-sets/t1t2.pt model/lacunes.pt --input-sets T1+T2+FLAIR,T1+FLAIR,T2+FLAIR,T1+T2
    python training/release.py model/lacunes.pt model/lacunes.pt --phantom-space
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lacunes.checkpoint import load_network, save_checkpoint, write_sha256  # noqa: E402
from lacunes.conform import ModelSpace  # noqa: E402
from lacunes.network import NetworkConfig  # noqa: E402
from lacunes.options import FULL_SET, INPUT_SETS  # noqa: E402


def carried_over(path: str, key: str) -> dict | None:
    """Another checkpoint's metadata entry ``key``, marked with where it came from (None: it has none)."""
    _, other = load_network(path)
    entry = other.get("metadata", {}).get(key)
    return {**entry, "carried_over_from": str(Path(path))} if entry else None


def parse_input_sets(text: str) -> list[str]:
    """``"T1+T2+FLAIR,T1+FLAIR"`` → the sets in :data:`INPUT_SETS` order, the full set required (it is the
    model's own calibration). Raises ValueError naming what is wrong."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in INPUT_SETS]
    if unknown:
        raise ValueError(f"unknown set(s) of contrasts {', '.join(unknown)} (the sets: {', '.join(INPUT_SETS)})")
    if FULL_SET not in names:
        raise ValueError(f"--input-sets must include {FULL_SET}, the set the model's own calibration is for")
    return [n for n in INPUT_SETS if n in names]


def main(src: str, dst: str, second_stage_from: str | None = None, operating_point_from: str | None = None,
         input_sets: str | None = None, phantom_space: bool = False) -> int:
    try:
        sets = parse_input_sets(input_sets) if input_sets is not None else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    net, payload = load_network(src)
    metadata = dict(payload["metadata"])
    if sets is not None:
        metadata.setdefault("input_sets_trained", list(metadata.get("input_sets") or [FULL_SET]))
        metadata["input_sets"] = sets
    for path, key, what in ((operating_point_from, "operating_point", "operating point"),
                            (second_stage_from, "rescorer", "fitted second stage")):
        if path:
            entry = carried_over(path, key)
            if entry is None:
                print(f"{path} has no {what}", file=sys.stderr)
                return 2
            metadata[key] = entry
    # the space inference conforms subjects to (checkpoints trained before it was recorded: 1 mm phantoms)
    if phantom_space:
        metadata["model_space"] = ModelSpace().to_dict()
    metadata.setdefault("model_space", ModelSpace().to_dict())
    previous = metadata.get("released_from")
    if previous and previous != str(Path(src)):  # a release of a release: where the weights came from is kept
        metadata["release_history"] = [*metadata.get("release_history", []), previous]
    metadata["released_from"] = str(Path(src))
    out = save_checkpoint(dst, net, NetworkConfig.from_dict(payload["network"]), metadata, half=True)
    sidecar = write_sha256(out)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB), {sidecar.read_text().strip()}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a training checkpoint (checkpoints/final.pt)")
    ap.add_argument("dst", help="the released checkpoint")
    ap.add_argument("--second-stage-from", metavar="CKPT", help="carry this checkpoint's fitted second stage over")
    ap.add_argument("--operating-point-from", metavar="CKPT", help="carry this checkpoint's operating point over")
    ap.add_argument("--input-sets", metavar="SETS",
                    help="comma-separated sets of contrasts the release accepts without --modalities (measured ones)")
    ap.add_argument("--phantom-space", action="store_true",
                    help="record the phantoms' space (RAS arrays, 1 mm) in place of the checkpoint's (trained on "
                         "phantoms before their files carried their orientation)")
    args = ap.parse_args()
    sys.exit(main(args.src, args.dst, args.second_stage_from, args.operating_point_from, args.input_sets,
                  args.phantom_space))
