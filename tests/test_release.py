"""training/release.py: a training checkpoint released (half precision, model space, sidecar), with a
second stage carried over from another checkpoint."""

import subprocess
import sys
from pathlib import Path

from lacunes.checkpoint import load_network, save_checkpoint
from lacunes.network import build_network
from lacunes.rescoring import FEATURES, Rescorer

from .conftest import TINY

RELEASE = Path(__file__).resolve().parent.parent / "training" / "release.py"


def test_a_release_records_the_model_space_and_can_carry_a_second_stage_over(tmp_path, tiny_checkpoint):
    stage = Rescorer(tuple([0.5] * len(FEATURES)), -1.0, tuple([0.0] * len(FEATURES)), tuple([1.0] * len(FEATURES)))
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_network(TINY), TINY, {"rescorer": stage.to_dict()})
    out = tmp_path / "release.pt"
    done = subprocess.run([sys.executable, str(RELEASE), str(tiny_checkpoint), str(out), "--second-stage-from",
                           str(other)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _, payload = load_network(out)
    meta = payload["metadata"]
    assert meta["model_space"] and meta["released_from"] == str(tiny_checkpoint)
    assert Rescorer.from_dict(meta["rescorer"]) == stage and meta["rescorer"]["carried_over_from"] == str(other)
    assert (tmp_path / "release.pt.sha256").is_file()
    refused = subprocess.run([sys.executable, str(RELEASE), str(tiny_checkpoint), str(tmp_path / "b.pt"),
                              "--second-stage-from", str(tiny_checkpoint)], capture_output=True, text=True)
    assert refused.returncode == 2 and "has no fitted second stage" in refused.stderr


def test_a_release_can_carry_an_operating_point_over(tmp_path, tiny_checkpoint):
    from lacunes.inference import Predictor
    from lacunes.postprocessing import OperatingPoint

    other = tmp_path / "other.pt"
    point = OperatingPoint(0.6, 10.0, True)
    save_checkpoint(other, build_network(TINY), TINY, {"operating_point": point.to_dict()})
    out = tmp_path / "release.pt"
    done = subprocess.run([sys.executable, str(RELEASE), str(tiny_checkpoint), str(out), "--operating-point-from",
                           str(other)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_network(out)[1]["metadata"]["operating_point"]["carried_over_from"] == str(other)
    assert Predictor.from_checkpoint(out).release.operating_point == point
    refused = subprocess.run([sys.executable, str(RELEASE), str(tiny_checkpoint), str(tmp_path / "b.pt"),
                              "--operating-point-from", str(tiny_checkpoint)], capture_output=True, text=True)
    assert refused.returncode == 2 and "has no operating point" in refused.stderr


def test_a_release_states_the_sets_of_contrasts_it_accepts_and_keeps_those_it_was_trained_for(tmp_path,
                                                                                            tiny_checkpoint):
    from lacunes.inference import Predictor

    out = tmp_path / "release.pt"
    done = subprocess.run([sys.executable, str(RELEASE), str(tiny_checkpoint), str(out), "--input-sets",
                           "T1+T2,T1+T2+FLAIR, T1+FLAIR"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    predictor = Predictor.from_checkpoint(out)
    assert predictor.release.input_sets == ("T1+T2+FLAIR", "T1+FLAIR", "T1+T2")  # in channel-set order
    assert predictor.release.input_sets_trained == ("T1+T2+FLAIR",)
    assert predictor.release.input_sets_statement == ("accepts T1+T2+FLAIR, T1+FLAIR, T1+T2 (trained for T1+T2+FLAIR; "
                                              "the others measured: its model card)")
    predictor.release.check_input_set("T1+T2")  # accepted without --modalities now
    again = tmp_path / "again.pt"  # releasing a release keeps what it was trained for
    assert subprocess.run([sys.executable, str(RELEASE), str(out), str(again), "--input-sets", "T1+T2+FLAIR"],
                          capture_output=True).returncode == 0
    assert Predictor.from_checkpoint(again).release.input_sets_trained == ("T1+T2+FLAIR",)
    meta = load_network(again)[1]["metadata"]
    assert meta["released_from"] == str(out) and meta["release_history"] == [str(tiny_checkpoint)]
    for bad, says in (("T1+FLAIR", "must include T1+T2+FLAIR"), ("T1+T2+FLAIR,T1+PD", "unknown set(s) of contrasts T1+PD")):
        refused = subprocess.run([sys.executable, str(RELEASE), str(tiny_checkpoint), str(tmp_path / "b.pt"),
                                  "--input-sets", bad], capture_output=True, text=True)
        assert refused.returncode == 2 and says in refused.stderr and not (tmp_path / "b.pt").exists()
