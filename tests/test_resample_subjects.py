"""training/resample_subjects.py: labelled subjects stored again on an isotropic grid, each contrast as a
skull-stripped scan, each rater's label kept where it interpolates to 0.5 or more."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lacunes.io import read_volume
from lacunes.layouts import find_subject_files
from lacunes.writing import write_volume

from .conftest import write_subject

SCRIPT = Path(__file__).resolve().parent.parent / "training" / "resample_subjects.py"


def test_subjects_are_stored_again_at_the_voxel_size_given(tmp_path):
    images, label, geom = write_subject(tmp_path / "in", shape=(40, 36, 20), lesions=((20, 18, 10),))
    t2 = np.round(images["T2"]).astype(np.int16)  # an integer contrast keeps its type
    write_volume(t2, geom, tmp_path / "in" / "sub-001_space-T1_desc-masked_T2.nii.gz")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "in"), str(tmp_path / "out"), "--voxel", "1.8"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (files,) = find_subject_files(tmp_path / "out")
    assert set(files.label_paths()) == {"Rater1", "Rater2"}
    for name, path in files.paths.items():
        array, g = read_volume(path)
        assert g.spacing == pytest.approx((1.8, 1.8, 1.8)) and g.direction == pytest.approx(geom.direction)
        extent = np.asarray(g.shape) * 1.8
        assert np.all(np.abs(extent - np.asarray(geom.shape) * np.asarray(geom.spacing)) <= 1.8)
        assert array.dtype == (np.int16 if name == "T2" else np.float32)
        source = t2 if name == "T2" else images[name]
        # skull-stripped on its grid: the background stays 0, the brain keeps its values (no blend into 0)
        # and its volume
        assert array[array != 0].min() >= 0.8 * source[source != 0].min()
        brain_mm3 = (source != 0).sum() * np.prod(geom.spacing)
        assert (array != 0).sum() * 1.8**3 == pytest.approx(brain_mm3, rel=0.1)
    lab, g = read_volume(files.label_paths()["Rater1"])
    assert set(np.unique(lab)) == {0, 1}
    assert lab.sum() * 1.8**3 == pytest.approx(label.sum() * np.prod(geom.spacing), rel=0.35)


def test_it_refuses_writing_over_its_source_and_a_subject_without_labels(tmp_path):
    write_subject(tmp_path / "in")
    same = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "in"), str(tmp_path / "in"), "--voxel", "2"],
                          capture_output=True, text=True)
    assert same.returncode == 2 and "must not be the source folder" in same.stderr
    write_subject(tmp_path / "bare", raters=False)
    bare = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "bare"), str(tmp_path / "o"), "--voxel", "2"],
                          capture_output=True, text=True)
    assert bare.returncode != 0 and "sub-001: no rater label" in bare.stderr
