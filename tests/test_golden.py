"""The golden end-to-end test: the bundled sample case through process.py with the bundled weights
(CPU setting ``fast``), compared with the stored expected output.

Tolerance: Dice >= 0.99 between the stored and the new binary masks (prediction >= 0.5), the sum of
the probability map within 1 %, the same number of lesions; both maps 0 outside the brain. Regenerate
after retraining with ``python -m tests.test_golden --update``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from lacunes.instances import label_instances
from lacunes.io import read_volume
from lacunes.preprocessing import brain_mask
from lacunes.writing import write_volume

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "test"
MODEL = ROOT / "model" / "lacunes.pt"
EXPECTED_MASK = SAMPLE / "expected" / "sub-201_space-T1_prediction-mask.nii.gz"
EXPECTED_STATS = SAMPLE / "expected" / "sub-201_stats.json"


def run_sample(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("process", ROOT / "process.py")
    process = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(process)
    inp = out / "input"
    inp.mkdir(parents=True)
    for m in ("T1", "T2", "FLAIR"):
        shutil.copy(SAMPLE / f"sub-201_space-T1_desc-masked_{m}.nii.gz", inp)
    rc = process.main(["--input", str(inp), "--output", str(out / "output"), "--model", str(MODEL),
                       "--preset", "fast", "--no-progress"])
    assert rc == 0
    return out / "output"


def stats(prob: np.ndarray) -> dict:
    _, n = label_instances(prob >= 0.5)
    return {"sum": float(prob.sum()), "voxels": int((prob >= 0.5).sum()), "lesions": n}


@pytest.mark.skipif(not MODEL.is_file(), reason="no bundled weights")
def test_sample_case_matches_the_stored_output(tmp_path):
    out = run_sample(tmp_path)
    assert json.loads((out / "results.json").read_text()) == json.loads((SAMPLE / "expected_output.json").read_text())
    prob, geom = read_volume(out / "images" / "sub-201_space-T1_prediction.nii.gz")
    expected_mask, g = read_volume(EXPECTED_MASK)
    assert g.shape == geom.shape
    expected = json.loads(EXPECTED_STATS.read_text())
    got = stats(prob)
    mask = prob >= 0.5
    both = mask.sum() + expected_mask.sum()
    dice = 2 * (mask & (expected_mask > 0)).sum() / both if both else 1.0
    assert dice >= 0.99, f"Dice with the stored mask {dice:.4f}"
    assert got["sum"] == pytest.approx(expected["sum"], rel=0.01)
    assert got["lesions"] == expected["lesions"]
    image = np.stack([read_volume(SAMPLE / f"sub-201_space-T1_desc-masked_{m}.nii.gz")[0] for m in ("T1", "T2", "FLAIR")])
    outside = ~brain_mask(image.astype(np.float32))
    unc, _ = read_volume(out / "images" / "sub-201_space-T1_uncertaintymap.nii.gz")
    assert outside.sum() > 0.3 * outside.size and prob[outside].max() == 0 and unc[outside].max() == 0


def update() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = run_sample(Path(d))
        prob, geom = read_volume(out / "images" / "sub-201_space-T1_prediction.nii.gz")
    EXPECTED_MASK.parent.mkdir(exist_ok=True)
    write_volume((prob >= 0.5).astype(np.uint8), geom, EXPECTED_MASK)
    EXPECTED_STATS.write_text(json.dumps(stats(prob), indent=1) + "\n")
    print(f"wrote {EXPECTED_MASK} and {EXPECTED_STATS}: {stats(prob)}")


if __name__ == "__main__":
    if "--update" in sys.argv:
        update()
