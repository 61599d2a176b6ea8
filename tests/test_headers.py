"""lacunes.headers: what each input is, from its header (qform against sform, orientation, voxel size) and
its voxels (skull-stripped or not), recorded with the result."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from lacunes.geometry import Geometry
from lacunes.headers import describe_input, nifti_transforms, orientation_code, transforms_statement
from lacunes.io import read_subject, read_volume

from .conftest import make_subject_arrays


def _write(path, data, qform, sform, nifti2=False):
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    image = cls(data, sform)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=1)
    nib.save(image, path)
    return path


def test_a_file_whose_qform_and_sform_disagree_is_named_with_the_transform_it_was_read_with(tmp_path):
    nifti2 = False
    data = np.zeros((20, 22, 18), np.float32)
    data[5:15, 5:17, 4:14] = 100.0
    qform = np.diag([1.0, 1.0, 1.2, 1.0])
    qform[:3, 3] = (-10.0, -11.0, -10.8)
    agree = _write(tmp_path / "agree.nii.gz", data, qform, qform, nifti2)
    t = nifti_transforms(agree)
    assert t["qform_code"] == t["sform_code"] == 1 and np.allclose(t["qform"], qform, atol=1e-4)
    _, geom = read_volume(agree)
    assert transforms_statement(agree, geom) == ("qform and sform agree", False)
    shifted = qform.copy()
    shifted[:3, 3] += (0.0, 8.0, 0.0)  # 8 mm anterior
    flipped = np.diag([-1.0, 1.0, 1.2, 1.0])  # the sform mirrored left-right
    flipped[:3, 3] = (10.0, -11.0, -10.8)
    for sform in (shifted, flipped):
        path = _write(tmp_path / "disagree.nii.gz", data, qform, sform, nifti2)
        _, geom = read_volume(path)
        text, disagree = transforms_statement(path, geom)
        used = "sform" if np.allclose(_ras_affine(geom), sform, atol=1e-3) else "qform"
        assert disagree and text.startswith("qform and sform disagree by up to") and text.endswith(f"the {used}")


def test_a_nifti2_header_gives_its_transforms_too(tmp_path):
    qform = np.diag([0.9, 0.9, 3.0, 1.0])
    qform[:3, 3] = (-5.0, 4.0, 2.0)
    sform = qform.copy()
    sform[:3, 3] += (1.0, 0.0, 0.0)
    t = nifti_transforms(_write(tmp_path / "two.nii", np.zeros((4, 4, 4), np.float32), qform, sform, nifti2=True))
    assert t["qform_code"] == t["sform_code"] == 1
    assert np.allclose(t["qform"], qform, atol=1e-6) and np.allclose(t["sform"], sform, atol=1e-6)
    assert nifti_transforms(tmp_path / "x.mha") is None


def _ras_affine(geom):
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(geom.direction).reshape(3, 3) @ np.diag(geom.spacing)
    affine[:3, 3] = geom.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def test_orientation_and_skull_stripping_are_described_from_the_header_and_the_voxels():
    identity = Geometry((10, 10, 10))  # SimpleITK's identity direction: LPS
    assert orientation_code(identity) == "LPS"
    ras = Geometry((10, 10, 10), direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    assert orientation_code(ras) == "RAS"
    sagittal = Geometry((10, 10, 10), direction=(0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    assert orientation_code(sagittal) == "PIL"  # axes towards posterior, inferior, left
    stripped = np.zeros((10, 10, 10), np.float32)
    stripped[3:7, 3:7, 3:7] = 5
    described = describe_input(__file__, identity, stripped)  # not NIfTI: its transforms are not read
    assert described["transforms"] == "not NIfTI" and described["skull_stripped"] and described["on_reference_grid"]
    head = stripped + 20
    other = describe_input(__file__, ras, head, reference=identity)
    assert not other["skull_stripped"] and other["zero_border_share"] == 0.0 and not other["on_reference_grid"]


def test_a_subject_records_what_each_input_is_and_flags_a_disagreement(tmp_path):
    images, _ = make_subject_arrays((30, 28, 18), 0)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    paths = {}
    for m, image in images.items():
        qform = affine.copy()
        if m == "FLAIR":
            qform[:3, 3] = (0.0, 0.0, 5.0)  # its qform 5 mm above its sform, which SimpleITK reads
        paths[m] = _write(tmp_path / f"sub-1_{m}.nii.gz", image.astype(np.float32), qform, affine)
    subject = read_subject("sub-1", paths)
    assert set(subject.headers) == {"T1", "T2", "FLAIR"}
    assert subject.headers["T1"]["orientation"] == "LPS" and subject.headers["T1"]["transforms"] == "qform and sform agree"
    assert subject.headers["FLAIR"]["transforms"] == "qform and sform disagree by up to 5.0 mm: read with the sform"
    assert any(w.startswith("FLAIR: qform and sform disagree") for w in subject.warnings)
    json.dumps(subject.headers)  # ready for the sidecar and run.json


def test_a_grid_mismatch_caused_by_disagreeing_transforms_says_so(tmp_path):
    from lacunes.errors import GeometryMismatchError

    images, _ = make_subject_arrays((30, 28, 18), 1)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    paths = {}
    for m, image in images.items():
        sform = affine.copy()
        if m == "FLAIR":
            sform[:3, 3] = (0.0, 0.0, 5.0)  # the sform SimpleITK reads: 5 mm off the T1
        paths[m] = _write(tmp_path / f"sub-2_{m}.nii.gz", image.astype(np.float32), affine, sform)
    for resample in (False, True):
        with pytest.raises(GeometryMismatchError, match="note FLAIR: qform and sform disagree by up to 5.0 mm"):
            read_subject("sub-2", paths, resample=resample)
