"""lacunes.evaluation: pairing predictions with references, the mean of the raters."""

import numpy as np
import pytest

from lacunes.errors import LacunesInputError
from lacunes.evaluation import load_reference, pair_subjects
from lacunes.geometry import Geometry
from lacunes.writing import write_volume


def test_the_reference_is_the_mean_of_the_two_raters(tmp_path):
    g = Geometry(shape=(6, 6, 4))
    a, b = np.zeros(g.shape, np.uint8), np.zeros(g.shape, np.uint8)
    a[1:3, 1:3, 1:3] = 1
    b[2:4, 2:4, 1:3] = 1
    paths = (write_volume(a, g, tmp_path / "sub-1_space-T1_desc-Rater1_Lacunes.nii.gz"),
             write_volume(b, g, tmp_path / "sub-1_space-T1_desc-Rater2_Lacunes.nii.gz"))
    ref, _ = load_reference(paths)
    assert set(np.unique(ref)) == {0.0, 0.5, 1.0} and ref[2, 2, 1] == 1.0 and ref[1, 1, 1] == 0.5


def test_a_reference_without_a_prediction_is_scored_not_dropped(tmp_path, caplog):
    g = Geometry(shape=(6, 6, 4))
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for sid in ("sub-1", "sub-2"):
        write_volume(np.zeros(g.shape, np.uint8), g, ref / f"{sid}_space-T1_desc-Rater1_Lacunes.nii.gz")
        write_volume(np.zeros(g.shape, np.uint8), g, ref / f"{sid}_space-T1_desc-Rater2_Lacunes.nii.gz")
    write_volume(np.zeros(g.shape, np.float32), g, pred / "sub-1_space-T1_prediction.nii.gz")
    pairs = pair_subjects(pred, ref)
    assert [(p.subject_id, p.prediction is None) for p in pairs] == [("sub-1", False), ("sub-2", True)]
    assert "sub-2" in caplog.text and "scored as empty predictions" in caplog.text
    with pytest.raises(LacunesInputError, match="no <id>_space-<space>_prediction"):
        pair_subjects(ref, ref)


def test_subjects_of_any_id_are_paired_as_the_explicit_files_name_their_outputs(tmp_path):
    g = Geometry(shape=(6, 6, 4))
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for sid in ("case_07", "P12.b"):
        write_volume(np.zeros(g.shape, np.uint8), g, ref / f"{sid}_space-T1_desc-Rater1_Lacunes.nii.gz")
        write_volume(np.zeros(g.shape, np.float32), g, pred / f"{sid}_space-T1_prediction.nii.gz")
    write_volume(np.zeros(g.shape, np.uint8), g, ref / "sub-3_Lacunes.nii.gz")
    pairs = pair_subjects(pred, ref)
    assert [(p.subject_id, p.prediction is None, len(p.references)) for p in pairs] == [
        ("P12.b", False, 1), ("case_07", False, 1), ("sub-3", True, 1)]
