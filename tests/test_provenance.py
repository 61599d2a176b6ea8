"""lacunes.provenance: the settings that decide a map, their difference, the sidecars, the BIDS description."""

import json

from lacunes.inference import Predictor
from lacunes.postprocessing import OperatingPoint
from lacunes.provenance import (
    run_settings,
    settings_difference,
    sidecar_path,
    subject_provenance,
    write_dataset_description,
    write_sidecar,
)
from lacunes.settings import FAST

from .conftest import write_subject


def test_the_settings_are_what_changes_a_map_and_their_difference_is_named(tiny_checkpoint):
    fast = Predictor.from_checkpoint(tiny_checkpoint, FAST.replace(device="cpu", backend="torch"))
    quiet = Predictor.from_checkpoint(tiny_checkpoint, FAST.replace(device="cpu", backend="torch", progress=False,
                                                                    memory_gb=2.0))
    assert run_settings(fast) == run_settings(quiet)  # a progress bar or a memory budget changes no map
    assert settings_difference(run_settings(fast), run_settings(quiet)) is None
    stricter = fast.with_post_processing(OperatingPoint(threshold=0.8))
    why = settings_difference(run_settings(fast), run_settings(stricter))
    assert why == "operating_point.threshold 0.5 → 0.8"
    assert settings_difference({}, run_settings(fast)) == "the recorded run did not record its settings"
    many = {"setting": {f"k{i}": i for i in range(6)}}
    assert settings_difference(many, {"setting": {}}).endswith("and 2 more")


def test_a_sidecar_says_what_made_the_map_and_the_folder_is_a_bids_derivative(tiny_checkpoint, tmp_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, FAST.replace(device="cpu", backend="torch"))
    _, _, _ = write_subject(tmp_path / "in")
    inputs = {m: tmp_path / "in" / f"sub-001_space-T1_desc-masked_{m}.nii.gz" for m in ("T1", "T2", "FLAIR")}
    prediction = tmp_path / "out" / "sub-001_space-T1_prediction.nii.gz"
    prediction.parent.mkdir()
    assert sidecar_path(prediction).name == "sub-001_space-T1_prediction.json"
    path = write_sidecar(prediction, subject_provenance(predictor, inputs, 12.345), "lacune probability map")
    side = json.loads(path.read_text())
    assert side["Description"] == "lacune probability map" and side["Seconds"] == 12.35
    assert side["Model"] == str(tiny_checkpoint) and side["ModelDataStatement"] == predictor.release.data_statement
    assert side["Settings"]["model_sha256"] == predictor.weights_sha256
    assert set(side["Inputs"]) == {"T1", "T2", "FLAIR"} and len(side["Inputs"]["T1"]["sha256"]) == 64
    description = json.loads(write_dataset_description(tmp_path / "out", predictor).read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "lacunes"
    assert str(tiny_checkpoint) in description["GeneratedBy"][0]["Description"]
