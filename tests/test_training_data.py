import numpy as np
import pytest

from lacunes.preprocessing import NonFiniteError
from lacunes.training import get_preset
from lacunes.training.config import LabelMode
from lacunes.training.data import MissingLabelError, combine_raters, load_training_set
from lacunes.writing import write_volume

from .conftest import write_subject


def test_label_modes():
    r1 = np.array([1, 1, 0, 0])
    r2 = np.array([1, 0, 1, 0])
    assert combine_raters([r1, r2], LabelMode.UNION).tolist() == [True, True, True, False]
    assert combine_raters([r1, r2], LabelMode.INTERSECTION).tolist() == [True, False, False, False]
    assert combine_raters([r1, r2], LabelMode.RATER1).tolist() == [True, True, False, False]


def test_training_data_checks_name_the_file(tmp_path):
    images, label, geom = write_subject(tmp_path, "sub-001")
    cfg = get_preset("smoke")
    subjects = load_training_set(tmp_path, cfg, progress=False)
    # conformed to the model's space as inference does: the fixture's 1.1×0.9×1.5 mm, axes swapped, → 1 mm
    from lacunes.conform import plan

    model = plan(geom).model
    assert subjects[0].n_instances == 1 and subjects[0].image.shape == (3, *model.shape)
    assert subjects[0].label.shape == (1, *model.shape)
    assert abs(subjects[0].label.sum() - label.sum() * geom.voxel_volume) < 0.1 * label.sum() * geom.voxel_volume
    bad = label.astype(np.float32)
    bad[0, 0, 0] = np.nan
    write_volume(bad, geom, tmp_path / "sub-001_space-T1_desc-Rater1_Lacunes.mha")
    (tmp_path / "sub-001_space-T1_desc-Rater1_Lacunes.nii.gz").unlink()
    (tmp_path / "sub-001_space-T1_desc-Rater2_Lacunes.nii.gz").unlink()
    t1 = images["T1"].copy()
    t1[1, 1, 1] = np.inf
    mha = tmp_path / "mha"
    mha.mkdir()
    for m in ("T1", "T2", "FLAIR"):
        write_volume(t1 if m == "T1" else images[m], geom, mha / f"sub-001_space-T1_desc-masked_{m}.mha")
    write_volume(label, geom, mha / "sub-001_space-T1_desc-Rater1_Lacunes.mha")
    with pytest.raises(NonFiniteError, match=r"desc-masked_T1\.mha holds 1"):
        load_training_set(mha, cfg, progress=False)
    with pytest.raises(MissingLabelError, match="no rater label for sub-001"):
        load_training_set(tmp_path, cfg, progress=False)
