"""Subjects with fewer contrasts (T1+FLAIR, T1+T2, T2+FLAIR): found by the layouts, read with zeros for the
missing channel, refused by a model not trained for their set unless chosen, calibrated per set, and said
in the log, the sidecar and the report."""

import json
import logging

import numpy as np
import pytest
import torch

from lacunes import options
from lacunes.checkpoint import load_network, save_checkpoint
from lacunes.errors import LacunesInputError, MissingModalityError
from lacunes.geometry import Geometry
from lacunes.inference import Predictor
from lacunes.io import read_subject
from lacunes.layouts import (
    CONTAINER_LAYOUTS,
    GC_INPUT_SLUGS,
    cohort_items,
    explicit_subject,
    find_subjects,
    grand_challenge_subject,
)
from lacunes.network import build_network
from lacunes.postprocessing import OperatingPoint
from lacunes.settings import FAST
from lacunes.writing import write_volume

from .conftest import TINY, write_subject


def test_a_set_is_named_in_channel_order_and_only_sets_a_model_takes_are_accepted():
    assert options.input_set_name(["FLAIR", "T1"]) == "T1+FLAIR"
    assert options.input_set_name(options.MODALITIES) == options.FULL_SET
    assert list(options.INPUT_SETS)[0] == options.FULL_SET
    with pytest.raises(ValueError, match="T1 is not a set of contrasts a lacune model takes"):
        options.input_set_name(["T1"])
    with pytest.raises(ValueError, match="unknown modality PD"):
        options.input_set_name(["T1", "PD"])
    with pytest.raises(ValueError, match="no contrast is not a set"):
        options.input_set_name([])


def _paths(folder, sid="sub-001"):
    return {m: folder / f"{sid}_space-T1_desc-masked_{m}.nii.gz" for m in options.MODALITIES}


def test_a_smaller_set_is_read_with_zeros_for_the_missing_channel_on_its_first_contrasts_grid(tmp_path):
    images, _, geom = write_subject(tmp_path, shape=(20, 18, 12), raters=False)
    paths = _paths(tmp_path)
    subject = read_subject("sub-001", paths, modalities="T1+FLAIR")  # the T2 file exists but is not read
    assert subject.modalities == ("T1", "FLAIR") and subject.input_set == "T1+FLAIR"
    assert set(subject.paths) == {"T1", "FLAIR"}
    np.testing.assert_array_equal(subject.image[1], 0)
    np.testing.assert_allclose(subject.image[2], images["FLAIR"])
    # T2+FLAIR: the T2 is the reference, on another grid than the T1's it would be refused with the T1
    moved = Geometry(geom.shape, geom.spacing, tuple(o + 30 for o in geom.origin), geom.direction)
    write_volume(images["T2"], moved, paths["T2"])
    write_volume(images["FLAIR"], moved, paths["FLAIR"])
    other = read_subject("sub-001", paths, modalities=("FLAIR", "T2"))
    assert other.input_set == "T2+FLAIR" and other.geometry.origin == pytest.approx(moved.origin)
    np.testing.assert_array_equal(other.image[0], 0)
    del paths["FLAIR"]
    with pytest.raises(MissingModalityError, match="no FLAIR for sub-001"):
        read_subject("sub-001", paths, modalities="T1+FLAIR")
    with pytest.raises(ValueError, match="did you mean 'T1\\+FLAIR'"):
        read_subject("sub-001", paths, modalities="T1+FLAR")


def test_the_command_lines_layouts_find_smaller_sets_and_the_containers_valdo_layout_refuses_them(tmp_path):
    write_subject(tmp_path, shape=(20, 18, 12), raters=False)
    _paths(tmp_path)["T2"].unlink()
    (entry,) = cohort_items(tmp_path)
    assert set(entry.files().paths) == {"T1", "FLAIR"}
    (container,) = find_subjects(tmp_path, CONTAINER_LAYOUTS, otherwise=None)
    with pytest.raises(MissingModalityError, match="no T2 for sub-001"):
        container.files()
    _paths(tmp_path)["FLAIR"].unlink()
    with pytest.raises(MissingModalityError, match="T1 is not a set of contrasts"):
        entry.files()
    # explicit files: a dict of a smaller set; outputs named after the first contrast
    files = explicit_subject({"T2": tmp_path / "t2.nii.gz", "FLAIR": tmp_path / "fl.nii.gz"}, subject_id="s1")
    assert files.output_prefix == "s1_space-T2_" and list(files.paths) == ["T2", "FLAIR"]
    with pytest.raises(MissingModalityError, match="FLAIR is not a set"):
        explicit_subject({"FLAIR": tmp_path / "fl.nii.gz"})


def test_a_contrast_that_links_to_nothing_is_an_error_not_a_smaller_set(tmp_path):
    from lacunes.errors import LacunesInputError
    from lacunes.layouts import find_bids_t1s

    write_subject(tmp_path, shape=(20, 18, 12), raters=False)
    t2 = _paths(tmp_path)["T2"]
    t2.unlink()
    t2.symlink_to(tmp_path / "gone" / "t2.nii.gz")
    (entry,) = cohort_items(tmp_path)
    with pytest.raises(MissingModalityError, match=r"sub-001: .*T2\.nii\.gz is a link to .*gone/t2\.nii\.gz, which "
                                                   r"does not exist"):
        entry.files()
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    _paths(tmp_path)["T1"].rename(anat / "sub-01_T1w.nii.gz")
    (anat / "sub-01_T2w.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (bids,) = find_bids_t1s(tmp_path / "bids")
    with pytest.raises(MissingModalityError, match="sub-01_T2w.nii.gz is a link to"):
        bids.files()
    # the same entities twice: refused naming both files, not one run from mixed scans and one skipped
    (anat / "sub-01_T1w.nii").write_bytes((anat / "sub-01_T1w.nii.gz").read_bytes())
    with pytest.raises(LacunesInputError, match=r"sub-01: .*sub-01_T1w\.nii, .*sub-01_T1w\.nii\.gz"):
        find_bids_t1s(tmp_path / "bids")


def test_the_grand_challenge_sockets_take_the_set_inputs_json_lists(tmp_path):
    images, _, geom = write_subject(tmp_path / "src", shape=(20, 18, 12), raters=False)
    sockets = []
    for m in ("T1", "FLAIR"):
        folder = tmp_path / "input" / "images" / GC_INPUT_SLUGS[m]
        folder.mkdir(parents=True)
        write_volume(images[m], geom, folder / "case.mha")
        sockets.append({"interface": {"slug": GC_INPUT_SLUGS[m]}})
    (tmp_path / "input" / "inputs.json").write_text(json.dumps(sockets))
    files = grand_challenge_subject(tmp_path / "input")
    assert set(files.paths) == {"T1", "FLAIR"}
    (tmp_path / "input" / "inputs.json").write_text(json.dumps(sockets[1:]))
    with pytest.raises(MissingModalityError, match="lists no socket t1-brain-mri, t2-brain-mri .*FLAIR is not a set"):
        grand_challenge_subject(tmp_path / "input")


@pytest.fixture(scope="module")
def set_checkpoint(tmp_path_factory):
    """A tiny checkpoint that says it was trained for T1+T2+FLAIR and T1+FLAIR, with a T1+FLAIR
    operating point of its own."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "sets.pt"
    save_checkpoint(path, build_network(TINY), TINY, {
        "normalization": {"lower": 0.005, "upper": 0.995},
        "operating_point": OperatingPoint(0.5, 0.0, True).to_dict(),
        "input_sets": ["T1+T2+FLAIR", "T1+FLAIR"],
        "calibration_by_set": {"T1+FLAIR": {"operating_point": OperatingPoint(0.999999, 0.0, True).to_dict()}}})
    return path


def test_a_model_refuses_a_set_it_was_not_trained_for_unless_chosen(tiny_checkpoint, set_checkpoint, caplog):
    plain = Predictor.from_checkpoint(tiny_checkpoint, FAST.replace(progress=False))
    assert plain.release.input_sets == (options.FULL_SET,)
    plain.release.check_input_set(options.FULL_SET)
    with pytest.raises(LacunesInputError, match=r"sub-1 has T1\+FLAIR \(no T2\); the model accepts "
                                                r"T1\+T2\+FLAIR only.*--modalities T1\+FLAIR"):
        plain.release.check_input_set("T1+FLAIR", subject_id="sub-1")
    with caplog.at_level(logging.WARNING):
        plain.release.check_input_set("T1+FLAIR", chosen=True)
    assert "reach the network as zeros" in caplog.text
    trained = Predictor.from_checkpoint(set_checkpoint, FAST.replace(progress=False))
    trained.release.check_input_set("T1+FLAIR")
    with pytest.raises(LacunesInputError):
        trained.release.check_input_set("T2+FLAIR")


def test_a_set_with_its_own_calibration_is_finished_with_it(tmp_path, set_checkpoint):
    write_subject(tmp_path, shape=(24, 22, 16), raters=False)
    predictor = Predictor.from_checkpoint(set_checkpoint, FAST.replace(progress=False))
    full = read_subject("sub-001", _paths(tmp_path))
    reduced = read_subject("sub-001", _paths(tmp_path), modalities="T1+FLAIR")
    raw_reduced = predictor.raw(reduced)
    assert raw_reduced.input.input_set == "T1+FLAIR"
    own = predictor.finish(raw_reduced)
    assert own.stats["input_set"] == "T1+FLAIR"
    # the same network output through the full set's operating point (p >= 0.5) against its own (p >= 0.999999)
    shared = predictor.finish(raw_reduced, operating_point=predictor.release.operating_point)
    assert (own.probability >= 0.5).sum() <= (shared.probability >= 0.5).sum()
    assert predictor.release.post_processing_for("T1+FLAIR")[0].threshold == pytest.approx(0.999999)
    assert predictor.release.post_processing_for("T1+T2")[0] == predictor.release.operating_point
    assert predictor.finish(predictor.raw(full)).stats["input_set"] == options.FULL_SET
    # a raw network stage (post-processing replaced) replaces every set's
    assert predictor.with_post_processing(OperatingPoint(0.5, 0.0, False)).release.by_set == {}


def test_a_cohort_run_says_the_set_in_log_sidecar_record_and_report(tmp_path, set_checkpoint, tiny_checkpoint, caplog):
    pytest.importorskip("matplotlib")
    from lacunes.report import load_records
    from lacunes.runner import run_cohort

    write_subject(tmp_path / "in", "sub-001", shape=(24, 22, 16), raters=False)
    write_subject(tmp_path / "in", "sub-002", shape=(24, 22, 16), raters=False, seed=1)
    _paths(tmp_path / "in", "sub-001")["T2"].unlink()
    predictor = Predictor.from_checkpoint(set_checkpoint, FAST.replace(progress=False))
    with caplog.at_level(logging.INFO, logger="lacunes.runner"):
        reports = run_cohort(predictor, cohort_items(tmp_path / "in"), tmp_path / "out", qc=True, progress=False)
    assert [(r.status, r.input_set) for r in reports] == [("done", "T1+FLAIR"), ("done", "T1+T2+FLAIR")]
    assert "from T1+FLAIR" in caplog.text
    sidecar = json.loads((tmp_path / "out" / "sub-001_space-T1_prediction.json").read_text())
    assert sidecar["InputSet"] == "T1+FLAIR" and set(sidecar["Inputs"]) == {"T1", "FLAIR"}
    assert sidecar["Settings"]["calibration_by_set"]["T1+FLAIR"]["operating_point"]["threshold"] == pytest.approx(0.999999)
    records = load_records(tmp_path / "out")
    assert set(records["sub-001"].inputs) == {"T1", "FLAIR"} and records["sub-001"].picture
    page = (tmp_path / "out" / "report.html").read_text()
    assert "from T1+FLAIR" in page and "from T1+T2+FLAIR" in page
    # a model trained for all three refuses the T1+FLAIR subject (and only it) unless the set is chosen
    plain = Predictor.from_checkpoint(tiny_checkpoint, FAST.replace(progress=False))
    reports = run_cohort(plain, cohort_items(tmp_path / "in"), tmp_path / "plain", progress=False)
    assert [r.status for r in reports] == ["failed", "done"] and "--modalities T1+FLAIR" in reports[0].error
    chosen = run_cohort(plain, cohort_items(tmp_path / "in"), tmp_path / "chosen", progress=False, modalities="T1+FLAIR")
    assert [r.status for r in chosen] == ["done", "done"] and {r.input_set for r in chosen} == {"T1+FLAIR"}
    # the same folder with another set is not skipped silently
    with pytest.raises(ValueError, match="other settings"):
        run_cohort(plain, cohort_items(tmp_path / "in"), tmp_path / "chosen", progress=False)


def test_the_network_input_of_a_smaller_set_is_the_full_input_with_the_missing_channel_zero(tmp_path, tiny_checkpoint):
    write_subject(tmp_path, shape=(24, 22, 16), raters=False)
    predictor = Predictor(load_network(tiny_checkpoint)[0], FAST.replace(progress=False, conform=False))
    full = predictor.prepare(read_subject("sub-001", _paths(tmp_path)))
    reduced = predictor.prepare(read_subject("sub-001", _paths(tmp_path), modalities="T1+FLAIR"))
    np.testing.assert_array_equal(reduced.normalized[1], 0)
    np.testing.assert_array_equal(reduced.normalized[[0, 2]], full.normalized[[0, 2]])


def test_the_command_line_takes_explicit_files_of_a_smaller_set(tmp_path, set_checkpoint, tiny_checkpoint, capsys,
                                                                caplog):
    from lacunes.cli import main

    write_subject(tmp_path / "in", "sub-007", shape=(24, 22, 16), raters=False)
    paths = _paths(tmp_path / "in", "sub-007")
    args = ["predict", "--preset", "fast", "--no-progress", "--t1", str(paths["T1"]), "--flair", str(paths["FLAIR"])]
    assert main([*args, "-o", str(tmp_path / "out"), "--model", str(set_checkpoint)]) == 0
    assert "accepts T1+T2+FLAIR, T1+FLAIR" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "out" / "sub-007_space-T1_prediction.json").read_text())
    assert sidecar["InputSet"] == "T1+FLAIR"
    assert main([*args, "-o", str(tmp_path / "plain"), "--model", str(tiny_checkpoint)]) == 1  # refused: failed
    assert "the model accepts T1+T2+FLAIR only" in caplog.text
    assert main([*args, "-o", str(tmp_path / "plain"), "--model", str(tiny_checkpoint), "--modalities", "T1+FLAIR"]) == 0
    assert main(["predict", "--t1", str(paths["T1"]), "-o", str(tmp_path / "x")]) == 2
    assert "T1 is not a set of contrasts" in caplog.text
