#!/usr/bin/env python3
"""A calibrated checkpoint's calibration as a small JSON file, and that file put back onto the same network.

A calibrated checkpoint is its network's weights (11.5 MB) and a few kilobytes chosen by ``lacunes
calibrate``: the operating point, the fitted second stage, the calibrations of other sets of contrasts and
the sets the release accepts. ``export`` writes those entries, with the sha256 of the weights they were
chosen for, to a JSON file that can be kept in the repository or shared beside a network kept elsewhere;
``apply`` writes the network's checkpoint again with them (the weights unchanged, in their own precision,
and a ``.sha256`` sidecar). A second stage and an operating point belong to one network: ``apply``
refuses a network whose weights are not the ones the file names.

    python training/calibration_file.py export runs/specific/calibrated-8c.pt training/calibrations/stage8c.json
    python training/calibration_file.py apply benchmarks/models/stage8-network.pt \\
        training/calibrations/stage8c.json runs/specific/calibrated-8c.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lacunes.checkpoint import load_network, save_checkpoint, sha256_of, write_sha256  # noqa: E402
from lacunes.network import NetworkConfig  # noqa: E402
from lacunes.writing import atomic_output  # noqa: E402

KIND = "lacunes calibration"
FORMAT_VERSION = 1
#: the metadata entries ``lacunes calibrate`` chooses and ``training/release.py --input-sets`` states
CALIBRATION_KEYS = ("operating_point", "rescorer", "calibration_by_set", "input_sets", "input_sets_trained")


def export(checkpoint: str, out: str) -> int:
    _, payload = load_network(checkpoint)
    metadata = payload["metadata"]
    entries = {key: metadata[key] for key in CALIBRATION_KEYS if metadata.get(key)}
    if "operating_point" not in entries:
        print(f"error: {checkpoint} has no operating point: it is not calibrated (lacunes calibrate)", file=sys.stderr)
        return 2
    record = {"kind": KIND, "format_version": FORMAT_VERSION, "weights_sha256": payload["weights_sha256"],
              "exported_from": str(Path(checkpoint)), "exported_from_sha256": sha256_of(checkpoint),
              "metadata": entries}
    with atomic_output(out) as tmp:  # never a half-written file under the final name
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{out}: {', '.join(entries)} of {checkpoint} (weights sha256 {payload['weights_sha256'][:12]}…)")
    return 0


def apply(network: str, calibration: str, out: str) -> int:
    try:
        record = json.loads(Path(calibration).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {calibration} cannot be read as a calibration file: {exc}", file=sys.stderr)
        return 2
    if not isinstance(record, dict) or record.get("kind") != KIND or not isinstance(record.get("metadata"), dict):
        print(f"error: {calibration} is not a calibration file (written by '{Path(__file__).name} export')",
              file=sys.stderr)
        return 2
    if record.get("format_version") != FORMAT_VERSION:
        print(f"error: {calibration} has format version {record.get('format_version')}; this script reads "
              f"{FORMAT_VERSION}", file=sys.stderr)
        return 2
    unknown = sorted(set(record["metadata"]) - set(CALIBRATION_KEYS))
    if unknown:  # only a calibration replaces entries: never the network's own record (normalization, space…)
        print(f"error: {calibration} holds entries that are not a calibration's: {', '.join(unknown)} (a "
              f"calibration file holds {', '.join(CALIBRATION_KEYS)})", file=sys.stderr)
        return 2
    net, payload = load_network(network)
    if payload["weights_sha256"] != record.get("weights_sha256"):
        print(f"error: {calibration} was chosen for the network with weights sha256 "
              f"{str(record.get('weights_sha256'))[:12]}… ({record.get('exported_from')}); {network} holds "
              f"{payload['weights_sha256'][:12]}…: a calibration belongs to one network", file=sys.stderr)
        return 2
    metadata = {k: v for k, v in payload["metadata"].items() if k not in CALIBRATION_KEYS}
    metadata.update(record["metadata"])
    metadata["calibration_from"] = str(Path(calibration))
    half = all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    written = save_checkpoint(out, net, NetworkConfig.from_dict(payload["network"]), metadata, half=half)
    _, again = load_network(written)
    if again["weights_sha256"] != payload["weights_sha256"]:  # the weights must come back bit for bit
        written.unlink()
        print(f"error: {network}'s weights did not survive being written again; nothing written", file=sys.stderr)
        return 2
    sidecar = write_sha256(written)
    print(f"{written}: {network} with the calibration of {calibration}; {sidecar.read_text().strip()}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a calibrated checkpoint's calibration to a JSON file")
    e.add_argument("checkpoint")
    e.add_argument("out", help="the JSON file")
    a = sub.add_parser("apply", help="write a network's checkpoint again with the calibration of a JSON file")
    a.add_argument("network", help="the checkpoint of the network the calibration was chosen for")
    a.add_argument("calibration", help="the JSON file")
    a.add_argument("out", help="the calibrated checkpoint")
    args = ap.parse_args()
    try:
        sys.exit(export(args.checkpoint, args.out) if args.command == "export"
                 else apply(args.network, args.calibration, args.out))
    except (OSError, ValueError) as exc:  # a missing or unwritable file (WriteError), a damaged checkpoint
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
