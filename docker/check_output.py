"""Checks the container's output against test/expected_output.json (run inside the image by test.sh).

Exit 0 when results.json equals the expected file and every listed image exists on the input's grid,
float32, finite, in [0, 1]; otherwise exit 1, printing each difference."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def main(input_dir: Path, output_dir: Path, expected_file: Path) -> int:
    problems = []
    results_file = output_dir / "results.json"
    if not results_file.is_file():
        print(f"FAIL: {results_file} was not written")
        return 1
    results = json.loads(results_file.read_text())
    expected = json.loads(expected_file.read_text())
    if results != expected:
        problems.append(f"results.json differs from {expected_file.name}:\n  got      {json.dumps(results)}\n"
                        f"  expected {json.dumps(expected)}")
    for case in expected:
        t1 = sitk.ReadImage(str(input_dir / case["inputs"][0]["filename"][0]))
        for name in case["outputs"][0]["filename"]:
            path = output_dir / "images" / name
            if not path.is_file():
                problems.append(f"{path} missing")
                continue
            img = sitk.ReadImage(str(path))
            arr = sitk.GetArrayFromImage(img)
            if img.GetSize() != t1.GetSize():
                problems.append(f"{name}: size {img.GetSize()} != input {t1.GetSize()}")
            for what in ("Spacing", "Origin", "Direction"):
                a, b = getattr(img, f"Get{what}")(), getattr(t1, f"Get{what}")()
                if not np.allclose(a, b, atol=1e-4):
                    problems.append(f"{name}: {what.lower()} {a} != input {b}")
            if arr.dtype != np.float32:
                problems.append(f"{name}: dtype {arr.dtype}, expected float32")
            if not np.isfinite(arr).all():
                problems.append(f"{name}: {int((~np.isfinite(arr)).sum())} non-finite voxels")
            elif arr.min() < 0 or arr.max() > 1:
                problems.append(f"{name}: values in [{arr.min()}, {arr.max()}], outside [0, 1]")
            else:
                print(f"ok: {name} {img.GetSize()} in [{arr.min():.3f}, {arr.max():.3f}], "
                      f"{int((arr >= 0.5).sum())} voxels >= 0.5")
    for p in problems:
        print(f"FAIL: {p}")
    if not problems:
        print("ok: results.json equals the expected output")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
