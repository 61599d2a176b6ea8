#!/usr/bin/env python3
"""Turn a training checkpoint into a released one: weights in half precision (half the file), no
optimizer state, the inference defaults and the model's space (orientation, voxel size) recorded, and a
``.sha256`` sidecar next to it.

    python training/release.py runs/cpu-blob/checkpoints/final.pt model/lacunes.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lacunes.checkpoint import load_network, save_checkpoint, write_sha256  # noqa: E402
from lacunes.conform import ModelSpace  # noqa: E402
from lacunes.network import NetworkConfig  # noqa: E402


def main(src: str, dst: str) -> int:
    net, payload = load_network(src)
    metadata = dict(payload["metadata"])
    # the space inference conforms subjects to (checkpoints trained before it was recorded: 1 mm phantoms)
    metadata.setdefault("model_space", ModelSpace().to_dict())
    metadata["released_from"] = str(Path(src))
    out = save_checkpoint(dst, net, NetworkConfig.from_dict(payload["network"]), metadata, half=True)
    sidecar = write_sha256(out)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB), {sidecar.read_text().strip()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
