"""training/calibration_file.py: a calibrated checkpoint's calibration exported to JSON and applied back onto
the same network, bit for bit; refused on another network."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from lacunes.checkpoint import load_network, save_checkpoint, sha256_of
from lacunes.network import build_network
from lacunes.rescoring import FEATURES, Rescorer

from .conftest import TINY

SCRIPT = Path(__file__).resolve().parent.parent / "training" / "calibration_file.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_a_calibration_exported_and_applied_gives_the_calibrated_checkpoint_back(tmp_path):
    from lacunes.inference import Predictor
    from lacunes.postprocessing import OperatingPoint

    torch.manual_seed(3)
    net = build_network(TINY)
    network = tmp_path / "network.pt"
    save_checkpoint(network, net, TINY, {"normalization": {"lower": 0.005, "upper": 0.995}}, half=True)
    stage = Rescorer(tuple(0.1 * i for i in range(len(FEATURES))), -1.0, tuple([0.5] * len(FEATURES)),
                     tuple([2.0] * len(FEATURES)), candidate_threshold=0.6, min_score=0.2)
    point = OperatingPoint(0.6, 0.0, True)
    by_set = {"T1+T2": {"operating_point": OperatingPoint(0.5, 20.0, True).to_dict()}}
    calibrated = tmp_path / "calibrated.pt"
    save_checkpoint(calibrated, net, TINY, {"normalization": {"lower": 0.005, "upper": 0.995},
                                            "operating_point": point.to_dict(), "rescorer": stage.to_dict(),
                                            "calibration_by_set": by_set,
                                            "input_sets": ["T1+T2+FLAIR", "T1+T2"]}, half=True)

    done = run("export", calibrated, tmp_path / "c.json")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["weights_sha256"] == load_network(calibrated)[1]["weights_sha256"]
    assert record["exported_from_sha256"] == sha256_of(calibrated)
    assert "normalization" not in record["metadata"]  # the calibration only, not the network's own record

    done = run("apply", network, tmp_path / "c.json", tmp_path / "again.pt")
    assert done.returncode == 0, done.stderr
    _, again = load_network(tmp_path / "again.pt")
    _, original = load_network(calibrated)
    assert again["weights_sha256"] == original["weights_sha256"]
    assert all(v.dtype == torch.float16 for v in again["state_dict"].values() if v.is_floating_point())
    meta = again["metadata"]
    assert Rescorer.from_dict(meta["rescorer"]) == stage
    assert meta["calibration_by_set"] == by_set and meta["input_sets"] == ["T1+T2+FLAIR", "T1+T2"]
    assert meta["normalization"] == {"lower": 0.005, "upper": 0.995}
    assert Predictor.from_checkpoint(tmp_path / "again.pt").release.operating_point == point
    assert (tmp_path / "again.pt.sha256").read_text().split()[0] == sha256_of(tmp_path / "again.pt")
    (tmp_path / "c.json").write_text((tmp_path / "c.json").read_text().replace('"min_score": 0.2', '"min_score": 0.3'))
    done = run("apply", network, tmp_path / "c.json", tmp_path / "again.pt")  # over the first, its sidecar with it
    assert done.returncode == 0, done.stderr
    assert load_network(tmp_path / "again.pt")[1]["metadata"]["rescorer"]["min_score"] == 0.3


def test_a_calibration_is_refused_on_another_network_and_an_uncalibrated_checkpoint_has_none(tmp_path,
                                                                                            tiny_checkpoint):
    from lacunes.postprocessing import OperatingPoint

    torch.manual_seed(4)
    calibrated = tmp_path / "calibrated.pt"
    save_checkpoint(calibrated, build_network(TINY), TINY, {"operating_point": OperatingPoint(0.6, 0.0, True).to_dict()})
    assert run("export", calibrated, tmp_path / "c.json").returncode == 0

    refused = run("apply", tiny_checkpoint, tmp_path / "c.json", tmp_path / "other.pt")
    assert refused.returncode == 2 and "belongs to one network" in refused.stderr
    assert str(tiny_checkpoint) in refused.stderr and not (tmp_path / "other.pt").exists()

    none = run("export", tiny_checkpoint, tmp_path / "none.json")
    assert none.returncode == 2 and "has no operating point" in none.stderr and not (tmp_path / "none.json").exists()

    record = json.loads((tmp_path / "c.json").read_text())
    record["metadata"]["normalization"] = {"lower": 0.0, "upper": 1.0}
    (tmp_path / "more.json").write_text(json.dumps(record))
    more = run("apply", calibrated, tmp_path / "more.json", tmp_path / "m.pt")
    assert more.returncode == 2 and "normalization" in more.stderr and not (tmp_path / "m.pt").exists()

    (tmp_path / "bad.json").write_text(json.dumps({"kind": "something else"}))
    bad = run("apply", calibrated, tmp_path / "bad.json", tmp_path / "b.pt")
    assert bad.returncode == 2 and "is not a calibration file" in bad.stderr and not (tmp_path / "b.pt").exists()
