"""Preparation of raw scans (lacunes.preparation): registration of T2/FLAIR onto the T1 and brain extraction,
on the Colin27 head of Debian's mricron-data (with and without its skull) where installed, else on a
generated phantom."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lacunes import preparation
from lacunes.geometry import Geometry, resample_to, to_sitk
from lacunes.headers import looks_skull_stripped
from lacunes.io import read_subject, read_volume
from lacunes.preparation import RegistrationError, extract_brain, prepare_subject, register_rigid
from lacunes.synthetic.acquisition import SAGITTAL_AXES as SAGITTAL
from lacunes.synthetic.acquisition import moved_scan, registration_error_mm
from lacunes.synthetic.anatomy import colin27_path

HEAD = colin27_path().with_name("ch2.nii.gz")  # the same head with its skull
needs_colin = pytest.mark.skipif(not (HEAD.is_file() and colin27_path().is_file()),
                                 reason="Debian's mricron-data is not installed")


def pseudo_flair(t1: np.ndarray) -> np.ndarray:
    """Another contrast of the same head: a non-monotone mapping of the T1 (fluid dark, grey matter brightest)."""
    top = np.percentile(t1[t1 > 0], 99)
    x = np.clip(t1 / top, 0, 1)
    return (np.sin(np.pi * x) * x * 1000).astype(np.float32)


def small_head():
    """Colin27's head at 2 mm (fast registration), or a generated phantom's T1 where it is not installed."""
    if HEAD.is_file():
        array, geometry = read_volume(HEAD)
        image = sitk.Shrink(to_sitk(array.astype(np.float32), geometry), [2, 2, 2])
        return sitk.GetArrayFromImage(image).transpose(2, 1, 0), Geometry.from_image(image)
    from lacunes.synthetic import generate_phantom

    phantom = generate_phantom(3)  # a stripped brain: registration needs no skull
    image = sitk.Shrink(to_sitk(phantom.images["T1"].astype(np.float32),
                                Geometry(phantom.images["T1"].shape, phantom.spacing, phantom.origin, phantom.direction)),
                        [2, 2, 2])
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), Geometry.from_image(image)


def test_registration_recovers_a_known_rigid_move_onto_another_grid_within_half_a_millimetre():
    t1, geometry = small_head()
    flair, flair_geometry, truth = moved_scan(pseudo_flair(t1), geometry, (10, -6, 8), (12.0, -8.0, 6.0),
                                         spacing=(6.0, 2.0, 2.0))
    out, record = register_rigid(t1, geometry, flair, flair_geometry, "FLAIR")
    brain = np.argwhere(t1 > np.percentile(t1, 60))[::50]
    err = registration_error_mm(record, truth, geometry.physical(brain))
    assert err.max() < 1.0 and np.median(err) < 0.5, err
    assert record["metric_after"] < record["metric_before"] and not record["headers_kept"]
    assert out.shape == t1.shape  # on the reference's grid
    inside = t1 > np.percentile(t1, 60)
    headers_only = resample_to(flair, flair_geometry, geometry)  # what --resample makes of it

    def agreement(a):
        return np.corrcoef(a[inside], pseudo_flair(t1)[inside])[0, 1]

    assert agreement(out) > agreement(headers_only) + 0.3  # the contrast back in place (blurred by its slices)


def test_a_registration_beyond_the_limits_of_one_session_fails_the_subject_naming_the_contrast(monkeypatch):
    t1, geometry = small_head()
    flair, flair_geometry, _ = moved_scan(pseudo_flair(t1), geometry, (0, 0, 12), (0.0, 0.0, 0.0), spacing=(6.0, 2.0, 2.0))
    monkeypatch.setattr(preparation, "MAX_ROTATION_DEG", 5.0)
    with pytest.raises(RegistrationError, match=r"sub-9: FLAIR: registration .* 12°"):
        register_rigid(t1, geometry, flair, flair_geometry, "sub-9: FLAIR")


def test_aligned_contrasts_keep_the_headers_alignment():
    t1, geometry = small_head()
    out, record = register_rigid(t1, geometry, pseudo_flair(t1), geometry, "FLAIR")
    assert max(abs(a) for a in record["rotation_deg"]) < 0.5 and np.linalg.norm(record["translation_mm"]) < 0.5


@needs_colin
def test_deepbet_masks_colin27s_head_like_its_reference_and_keeps_a_stripped_brain():
    head, geometry = read_volume(HEAD)
    stripped, _ = read_volume(colin27_path())
    reference = stripped > 0
    mask, record = extract_brain(head, geometry)
    dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
    assert dice >= 0.93, dice
    assert record["plausible"] and 1000 < record["brain_ml"] < 2200
    again, _ = extract_brain(stripped, geometry)
    assert (again & reference).sum() / reference.sum() > 0.99  # an already stripped brain is kept


ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")


@pytest.mark.skipif(not (ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz").is_file(),
                    reason="Debian's insighttoolkit5-examples is not installed")
def test_deepbet_masks_a_real_coronal_head_of_2x2x3_mm_like_its_reference():
    head, geometry = read_volume(ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz")
    stripped, _ = read_volume(ITK_DATA / "KmeansTest_T1RawSkullStrip.nii.gz")
    assert geometry.spacing == (2.0, 2.0, 3.0) and not looks_skull_stripped(head, geometry.voxel_volume)
    mask, record = extract_brain(head, geometry)
    reference = stripped > 0
    assert 2 * (mask & reference).sum() / (mask.sum() + reference.sum()) >= 0.93
    assert record["plausible"]


def test_a_scan_without_a_head_fails_naming_the_subject_and_the_file():
    with pytest.raises(preparation.BrainExtractionError, match=r"^sub-x: T1 /data/t1\.nii\.gz: brain extraction found no brain"):
        extract_brain(np.zeros((40, 40, 40), np.float32), Geometry((40, 40, 40)), "sub-x: T1 /data/t1.nii.gz")


@needs_colin
def test_a_raw_subject_comes_out_on_the_t1s_grid_registered_and_stripped(tmp_path):
    head, geometry = read_volume(HEAD)
    stripped, _ = read_volume(colin27_path())
    flair, flair_geometry, truth = moved_scan(pseudo_flair(head), geometry, (8, 0, -10), (-10.0, 12.0, 5.0))
    paths = {"T1": tmp_path / "sub-1_T1w.nii.gz", "FLAIR": tmp_path / "sub-1_FLAIR.nii.gz"}
    sitk.WriteImage(to_sitk(head.astype(np.float32), geometry), str(paths["T1"]))
    sitk.WriteImage(to_sitk(flair, flair_geometry), str(paths["FLAIR"]))
    with pytest.raises(Exception, match="grid"):
        read_subject("sub-1", paths, modalities="T1+FLAIR")  # as given, the grids differ
    subject = prepare_subject("sub-1", paths, "T1+FLAIR")
    assert subject.geometry == geometry and subject.image.shape[1:] == head.shape
    done = subject.preparation
    assert set(done) == {"registration_FLAIR", "brain_extraction"}
    assert done["brain_extraction"]["masked"] == ["T1", "FLAIR"]
    brain = np.argwhere(stripped > 0)[::2000]
    assert registration_error_mm(done["registration_FLAIR"], truth, geometry.physical(brain)).max() < 1.0
    mask = subject.image[0] != 0
    assert 2 * (mask & (stripped > 0)).sum() / (mask.sum() + (stripped > 0).sum()) >= 0.93
    assert not (subject.image[2][~mask]).any()  # the FLAIR stripped with the T1's mask
    assert not any("background" in w for w in subject.warnings)


def test_stripped_inputs_on_one_grid_pass_through_unchanged(tmp_path):
    t1, geometry = small_head()
    brain = t1 > np.percentile(t1[t1 > 0], 60)  # a blob of the head, well under a brain's volume
    paths = {"T1": tmp_path / "T1.nii.gz", "FLAIR": tmp_path / "FLAIR.nii.gz"}
    sitk.WriteImage(to_sitk(np.where(brain, t1, 0).astype(np.float32), geometry), str(paths["T1"]))
    sitk.WriteImage(to_sitk(np.where(brain, pseudo_flair(t1), 0).astype(np.float32), geometry), str(paths["FLAIR"]))
    as_given = read_subject("s", paths, modalities="T1+FLAIR")
    prepared = prepare_subject("s", paths, "T1+FLAIR")
    assert np.array_equal(as_given.image, prepared.image) and prepared.preparation == {}


@needs_colin
@pytest.mark.slow
def test_a_raw_bids_subject_runs_with_one_command_and_its_report_draws_it_as_prepared(tmp_path, tiny_checkpoint):
    """lacunes predict on a BIDS subject as it leaves the scanner (skull on, T2 and FLAIR moved onto sagittal and
    coronal 3 mm grids), no flag: the maps on the T1's grid, the brain mask in the extras, the preparation in
    the sidecar, and the report's picture drawn from the registered, stripped images."""
    import json

    from lacunes.cli import main
    from lacunes.report import load_records
    from lacunes.synthetic.acquisition import CORONAL_AXES

    head, geometry = read_volume(HEAD)
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    sitk.WriteImage(to_sitk(head.astype(np.float32), geometry), str(anat / "sub-01_T1w.nii.gz"))
    t2 = np.where(head > 0, 1200.0 - head * 8, 0).clip(0).astype(np.float32)  # another contrast of the head
    for suffix, array, axes in (("T2w", t2, SAGITTAL), ("FLAIR", pseudo_flair(head), CORONAL_AXES)):
        moved_array, moved_geometry, _ = moved_scan(array, geometry, (5, -4, 6), (8.0, -6.0, 4.0), axes=axes)
        sitk.WriteImage(to_sitk(moved_array, moved_geometry), str(anat / f"sub-01_{suffix}.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", "-i", str(tmp_path / "bids"), "-o", str(out), "--model", str(tiny_checkpoint),
                 "--preset", "fast", "--no-progress", "--qc"]) == 0
    maps = out / "sub-01" / "anat"
    probability, map_geometry = read_volume(maps / "sub-01_space-T1w_label-lacune_probseg.nii.gz")
    assert map_geometry == geometry
    sidecar = json.loads((maps / "sub-01_space-T1w_label-lacune_probseg.json").read_text())
    done = sidecar["Preparation"]
    assert {"registration_T2", "registration_FLAIR", "brain_extraction"} <= set(done)
    assert done["brain_extraction"]["masked"] == ["T1", "T2", "FLAIR"]
    mask, _ = read_volume(done["brain_extraction"]["mask_file"])
    stripped, _ = read_volume(colin27_path())
    assert 2 * ((mask > 0) & (stripped > 0)).sum() / ((mask > 0).sum() + (stripped > 0).sum()) >= 0.93
    outside = (mask == 0) & (head > 0)  # the skull and scalp: no map there (the brain's edge may blur a voxel out)
    assert (probability[outside] > 0).mean() < 0.01
    record = load_records(out)["sub-01"]
    assert record.picture and (out / record.picture).is_file()
    report = (out / "report.html").read_text()
    assert "T2 registered (" in report and "FLAIR registered (" in report and "brain extracted (T1, T2, FLAIR" in report
