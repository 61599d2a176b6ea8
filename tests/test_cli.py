import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lacunes.cli import main
from lacunes.io import read_volume

from .conftest import make_subject_arrays, write_bids_subject, write_subject


def predict(*args):
    return main(["predict", "--preset", "fast", "--no-progress", *args])


def test_help_does_not_import_torch():
    code = "import sys, lacunes.cli; lacunes.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_short_flags_and_threads(tmp_path, tiny_checkpoint, capsys, caplog):
    import torch

    from lacunes import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"lacunes {__version__}"
    write_subject(tmp_path / "in", "sub-001", shape=(30, 28, 18))
    before = torch.get_num_threads()
    try:
        assert predict("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint),
                       "--threads", "1") == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "out" / "sub-001_space-T1_prediction.nii.gz").is_file()
    assert predict("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--threads", "0") == 2
    assert "--threads must be between 1 and" in caplog.text
    caplog.clear()
    assert predict("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--threads", "100000") == 2
    assert "got 100000" in caplog.text  # (it ended in a segfault)


def test_impossible_arguments_get_one_line_each(tmp_path, tiny_checkpoint, caplog):
    write_subject(tmp_path / "in", "sub-001", shape=(30, 28, 18))
    t1 = tmp_path / "in" / "sub-001_space-T1_desc-masked_T1.nii.gz"
    common = ("--model", str(tiny_checkpoint))
    assert predict("-i", str(tmp_path / "in"), "-o", "", *common) == 2
    assert "--output is empty" in caplog.text
    assert predict("-i", str(t1), "-o", str(tmp_path / "out"), *common) == 2
    assert f"{t1} is a file, not an input folder: give a subject's files with --t1" in caplog.text
    assert predict("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--min-volume", "inf", *common) == 2
    assert "min_volume_mm3 must be a finite number >= 0, got inf" in caplog.text
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.nii.gz"))


def test_cohort_with_a_bad_subject_continues_and_reports(tmp_path, tiny_checkpoint, capsys):
    for i, sid in enumerate(("sub-001", "sub-002", "sub-003")):
        write_subject(tmp_path / "in", sid, shape=(30, 28, 18), seed=i)
    (tmp_path / "in" / "sub-002_space-T1_desc-masked_T2.nii.gz").write_bytes(b"broken")
    rc = predict("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(tiny_checkpoint))
    assert rc == 1
    text = capsys.readouterr().out
    assert "2 done, 0 skipped" in text and "1 failed" in text and "sub-002" in text
    assert "\nregions: " in text and "(--no-regions leaves them out)" in text  # the banner says how lesions are placed
    assert (tmp_path / "out" / "sub-001_space-T1_prediction.nii.gz").is_file()
    assert not (tmp_path / "out" / "sub-002_space-T1_prediction.nii.gz").exists()
    # rerun: done subjects are skipped, unless --overwrite
    (tmp_path / "in" / "sub-002_space-T1_desc-masked_T2.nii.gz").unlink()
    write_subject(tmp_path / "in2", "sub-002", shape=(30, 28, 18), seed=1)
    (tmp_path / "in2" / "sub-002_space-T1_desc-masked_T2.nii.gz").rename(
        tmp_path / "in" / "sub-002_space-T1_desc-masked_T2.nii.gz")
    rc = predict("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(tiny_checkpoint))
    assert rc == 0 and "1 done, 2 skipped" in capsys.readouterr().out
    from lacunes.report import load_records  # the failed attempt and the repaired one are one subject

    records = load_records(tmp_path / "out")
    assert sorted(records) == ["sub-001", "sub-002", "sub-003"] and records["sub-002"].status == "done"
    rc = predict("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(tiny_checkpoint),
                 "--overwrite", "--shard", "2/2")
    assert rc == 0 and "1 done, 0 skipped" in capsys.readouterr().out  # shard 2/2 = sub-002 only
    # a map truncated after the run (a full disk, a killed copy) is not taken as done
    pred = tmp_path / "out" / "sub-003_space-T1_prediction.nii.gz"
    pred.write_bytes(pred.read_bytes()[:300])
    rc = predict("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(tiny_checkpoint))
    assert rc == 0 and "1 done, 2 skipped" in capsys.readouterr().out
    assert read_volume(pred)[0].shape == (30, 28, 18)


def test_explicit_files_and_extras(tmp_path, tiny_checkpoint):
    _, _, geom = write_subject(tmp_path / "in", "sub-007")
    files = [tmp_path / "in" / f"sub-007_space-T1_desc-masked_{m}.nii.gz" for m in ("T1", "T2", "FLAIR")]
    rc = predict("--t1", str(files[0]), "--t2", str(files[1]), "--flair", str(files[2]), "--output",
                 str(tmp_path / "out"), "--model", str(tiny_checkpoint), "--mask", "--table", "--tta", "flips")
    assert rc == 0
    prob, g = read_volume(tmp_path / "out" / "sub-007_space-T1_prediction.nii.gz")
    mask, _ = read_volume(tmp_path / "out" / "extras" / "sub-007_space-T1_mask.nii.gz")
    np.testing.assert_array_equal(mask, (prob >= 0.5).astype(np.uint8))
    with open(tmp_path / "out" / "extras" / "sub-007_space-T1_lesions.csv") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["id", "voxels", "volume_mm3"] and "mean_uncertainty" in header
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [
        "dataset_description.json", "extras", "lacunes.tsv", "run.json", "sub-007_space-T1_prediction.json",
        "sub-007_space-T1_prediction.nii.gz",
        "sub-007_space-T1_uncertaintymap.json", "sub-007_space-T1_uncertaintymap.nii.gz"]
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == [".run.json.lock"]


def test_a_subject_is_done_only_while_its_completion_record_matches_its_files(tmp_path, tiny_checkpoint, capsys,
                                                                              caplog):
    """run.json records the size and sha256 of every output; a rerun keeps a subject only when all the
    outputs it now asks for are recorded and match: extras asked for after a run killed before them,
    a map changed since, or outputs without a record are predicted again."""
    import json

    write_subject(tmp_path / "in", "sub-001", shape=(30, 28, 18))
    out = tmp_path / "out"
    args = ("--input", str(tmp_path / "in"), "--output", str(out), "--model", str(tiny_checkpoint))
    assert predict(*args) == 0
    record = json.loads((out / "run.json").read_text())["subjects"][0]["outputs"]
    pred = out / "sub-001_space-T1_prediction.nii.gz"
    assert sorted(record) == ["sub-001_space-T1_prediction.nii.gz", "sub-001_space-T1_uncertaintymap.nii.gz"]
    assert record[pred.name]["bytes"] == pred.stat().st_size and len(record[pred.name]["sha256"]) == 64
    capsys.readouterr()
    assert predict(*args) == 0 and "0 done, 1 skipped" in capsys.readouterr().out
    # the extras were never written (a kill after the maps, or asked for only now): made from the saved maps
    mask = out / "extras" / "sub-001_space-T1_mask.nii.gz"
    caplog.set_level("INFO", logger="lacunes.runner")
    assert predict(*args, "--mask", "--table") == 0
    assert "0 done, 1 skipped (use --overwrite to redo), extras of 1 made" in capsys.readouterr().out
    assert "sub-001: mask, table made from the saved maps (no inference)" in caplog.text
    np.testing.assert_array_equal(read_volume(mask)[0], (read_volume(pred)[0] >= 0.5).astype(np.uint8))
    assert (out / "extras" / "sub-001_space-T1_lesions.csv").is_file()
    record = json.loads((out / "run.json").read_text())["subjects"][0]["outputs"]
    assert "extras/sub-001_space-T1_mask.nii.gz" in record  # recorded: the next run has nothing to make
    assert predict(*args, "--mask", "--table") == 0 and "0 done, 1 skipped (use --overwrite to redo), 0" in \
        capsys.readouterr().out
    # a mask left by another run (killed before its record was written) is not taken for this one's
    mask.rename(out / "extras" / "kept.nii.gz")
    assert predict(*args, "--overwrite") == 0 and "1 done" in capsys.readouterr().out  # a record without extras
    (out / "extras" / "kept.nii.gz").write_bytes(b"not this run's mask")
    (out / "extras" / "kept.nii.gz").rename(mask)
    caplog.clear()
    assert predict(*args, "--mask") == 0 and "extras of 1 made" in capsys.readouterr().out
    assert "sub-001: mask made from the saved maps" in caplog.text
    np.testing.assert_array_equal(read_volume(mask)[0], (read_volume(pred)[0] >= 0.5).astype(np.uint8))
    # a map rewritten since (same size, other bytes): predicted again
    data = bytearray(pred.read_bytes())
    data[-1] ^= 0xFF
    pred.write_bytes(bytes(data))
    assert predict(*args) == 0 and "1 done, 0 skipped" in capsys.readouterr().out
    assert "differs from the recorded run" in caplog.text
    # outputs without any record (run.json deleted): predicted again
    (out / "run.json").unlink()
    assert predict(*args) == 0 and "1 done, 0 skipped" in capsys.readouterr().out
    assert "no record of a completed run" in caplog.text


def test_argument_errors(tmp_path, tiny_checkpoint, caplog):
    assert predict("--output", str(tmp_path)) == 2
    assert "either --input" in caplog.text
    assert predict("--t1", "a", "--output", str(tmp_path)) == 2
    assert predict("--input", str(tmp_path), "--output", str(tmp_path), "--shard", "3/2") == 2
    assert "1 <= i <= N" in caplog.text


def test_evaluate_writes_reports(tmp_path, capsys):
    from lacunes.writing import write_volume

    _, label, geom = write_subject(tmp_path / "ref", "sub-001")
    (tmp_path / "pred").mkdir()
    write_volume(label.astype(np.float32), geom, tmp_path / "pred" / "sub-001_space-T1_prediction.nii.gz")
    write_volume(np.zeros(geom.shape, np.float32), geom, tmp_path / "pred" / "sub-001_space-T1_uncertaintymap.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sub-001" in out and "1.000" in out
    for name in ("per_subject.csv", "lesions.csv", "summary.csv", "summary.json"):
        assert (tmp_path / "pred" / "evaluation" / name).is_file()


def test_evaluate_scores_a_missing_prediction_and_refuses_a_shifted_one(tmp_path, capsys, caplog):
    from lacunes.errors import GeometryMismatchError
    from lacunes.geometry import Geometry
    from lacunes.writing import write_volume

    _, label, geom = write_subject(tmp_path / "ref", "sub-001")
    write_subject(tmp_path / "ref", "sub-002")
    (tmp_path / "pred").mkdir()
    write_volume(label.astype(np.float32), geom, tmp_path / "pred" / "sub-001_space-T1_prediction.nii.gz")
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and "1 subject(s) without a prediction" in out and "sub-002" in out
    assert "no *uncertaintymap next to them (sub-001)" in caplog.text
    rows = list(csv.DictReader(open(tmp_path / "pred" / "evaluation" / "per_subject.csv")))
    assert [r["subject_id"] for r in rows] == ["sub-001", "sub-002"]
    assert float(rows[1]["f1"]) == 0.0  # scored, as an empty prediction
    # a prediction whose origin is 20 mm off lies elsewhere in the scanner: refused, not scored
    shifted = Geometry(geom.shape, geom.spacing, tuple(o + 20.0 for o in geom.origin), geom.direction)
    write_volume(label.astype(np.float32), shifted, tmp_path / "pred" / "sub-001_space-T1_prediction.nii.gz")
    from lacunes.evaluation import evaluate_pair, pair_subjects

    with pytest.raises(GeometryMismatchError, match="sub-001.*not on the grid"):
        evaluate_pair(pair_subjects(tmp_path / "pred", tmp_path / "ref")[0])


def test_evaluate_scores_a_prediction_holding_nan_as_invalid(tmp_path, caplog):
    """SimpleITK reads a NIfTI's NaN as 0: a map of the true lesion with NaN elsewhere would score as
    perfect. The NaN are found in the file itself and the prediction is scored invalid (worst)."""
    from lacunes.evaluation import evaluate_pair, pair_subjects
    from lacunes.writing import write_volume

    _, label, geom = write_subject(tmp_path / "ref", "sub-001")
    (tmp_path / "pred").mkdir()
    pred = np.where(label > 0, 1.0, np.nan).astype(np.float32)
    write_volume(pred, geom, tmp_path / "pred" / "sub-001_space-T1_prediction.nii.gz")
    result = evaluate_pair(pair_subjects(tmp_path / "pred", tmp_path / "ref")[0])
    assert not result.valid and result.f1 == 0.0
    assert f"holds {int((label == 0).sum())} NaN voxel(s)" in caplog.text
    write_volume(np.where(label > 0, 1.0, 0.0).astype(np.float32), geom,
                 tmp_path / "pred" / "sub-001_space-T1_prediction.nii.gz")
    assert evaluate_pair(pair_subjects(tmp_path / "pred", tmp_path / "ref")[0]).valid


def test_synth_command_and_its_lacune_free_subjects(tmp_path, capsys):
    import json

    import nibabel as nib

    def kinds(folder):
        return [les["kind"] for les in json.loads((folder / "sub-007_space-T1_desc-synthetic_lesions.json").read_text())]

    plain, free = tmp_path / "plain", tmp_path / "free"
    assert main(["synth", "--n", "1", "--out", str(plain), "--seed", "3", "--first-id", "7", "--no-progress"]) == 0
    assert (plain / "sub-007_space-T1_desc-masked_FLAIR.nii.gz").is_file()
    assert "wrote 1 subject(s)" in capsys.readouterr().out
    assert "lacune" in kinds(plain)
    # the same subject asked lacune-free: no lacune recorded or labelled, its mimics still there
    assert main(["synth", "--n", "1", "--out", str(free), "--seed", "3", "--first-id", "7", "--lacune-free",
                 "--no-progress"]) == 0
    assert "lacune" not in kinds(free) and "pvs" in kinds(free)
    for rater in ("Rater1", "Rater2"):
        assert not np.asarray(nib.load(free / f"sub-007_space-T1_desc-{rater}_Lacunes.nii.gz").dataobj).any()


def test_synth_and_train_take_lacune_shapes(tmp_path):
    import json

    from lacunes.training.generated import GeneratedData

    assert main(["synth", "--n", "1", "--out", str(tmp_path), "--seed", "5", "--first-id", "4", "--lacune-shapes",
                 "--no-progress"]) == 0
    record = json.loads((tmp_path / "sub-004_space-T1_desc-synthetic_lesions.json").read_text())
    assert {les["shape"] for les in record if les["kind"] == "lacune"} <= {"ellipsoid", "irregular"}
    synth = GeneratedData(4, seed=3, lacune_shapes=True).synth_config()
    assert synth.lacune_shapes is not None and synth.acquisition is None
    assert GeneratedData(4, seed=3).synth_config() is None


def test_precision_option_reaches_the_predictor(tmp_path, tiny_checkpoint, capsys):
    write_subject(tmp_path / "in", "sub-003")
    from lacunes.backends import openvino_cpu_capabilities, openvino_version

    # on the CPU the auto backend is OpenVINO where installed; a CPU without bfloat16 arithmetic runs float32
    emulated = openvino_version() is None or "BF16" in openvino_cpu_capabilities()
    probs = {}
    for precision in ("float32", "bfloat16"):
        rc = predict("--input", str(tmp_path / "in"), "--output", str(tmp_path / precision), "--model",
                     str(tiny_checkpoint), "--precision", precision)
        shown = precision if emulated else "float32"
        assert rc == 0 and f"device cpu, {shown}" in capsys.readouterr().out
        probs[precision], _ = read_volume(tmp_path / precision / "sub-003_space-T1_prediction.nii.gz")
    diff = np.abs(probs["bfloat16"] - probs["float32"]).max()
    assert (0 < diff < 0.05) if emulated else diff == 0


def test_operating_point_overrides(tmp_path, tiny_checkpoint, capsys):
    write_subject(tmp_path / "in", "sub-004")
    maps = {}
    for name, extra in (("model", []), ("strict", ["--threshold", "0.9", "--min-volume", "20"])):
        rc = predict("--input", str(tmp_path / "in"), "--output", str(tmp_path / name), "--model",
                     str(tiny_checkpoint), *extra)
        out = capsys.readouterr().out
        assert rc == 0
        maps[name], _ = read_volume(tmp_path / name / "sub-004_space-T1_prediction.nii.gz")
    assert "probability >= 0.9, lesions >= 20 mm³" in out
    # the same network: the stricter point can only remove voxels from the >= 0.5 mask
    assert ((maps["strict"] >= 0.5) <= (maps["model"] >= 0.5)).all()
    images, _ = make_subject_arrays()
    brain = images["T1"] != 0
    assert (maps["model"][~brain] == 0).all()


def test_resample_flag(tmp_path, tiny_checkpoint, caplog):
    from .test_io import coarse_flair

    _, _, geom = write_subject(tmp_path / "in", "sub-008", shape=(40, 36, 21))
    coarse_flair(tmp_path / "in", "sub-008")
    args = ("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(tiny_checkpoint),
            "--preset", "fast", "--no-progress")
    assert predict(*args, "--no-preprocess") == 1 and "--resample" in caplog.text
    assert predict(*args, "--no-preprocess", "--resample") == 0
    prob, g = read_volume(tmp_path / "out" / "sub-008_space-T1_prediction.nii.gz")
    assert prob.shape == geom.shape and g.spacing == pytest.approx(geom.spacing)
    prepared = (*args[:2], "--output", str(tmp_path / "prepared"), *args[4:])
    assert predict(*prepared) == 0 and "sub-008: FLAIR registered onto the reference" in caplog.text  # the default
    prob, g = read_volume(tmp_path / "prepared" / "sub-008_space-T1_prediction.nii.gz")
    assert prob.shape == geom.shape


def test_an_output_folder_that_cannot_be_written_is_refused_before_inference(tmp_path, tiny_checkpoint, caplog):
    write_subject(tmp_path / "in", "sub-001")
    (tmp_path / "file").write_text("x")
    rc = predict("--input", str(tmp_path / "in"), "--output", str(tmp_path / "file" / "out"), "--model",
                 str(tiny_checkpoint), "--no-progress")
    assert rc == 2 and "is not writable" in caplog.text


def test_a_rerun_with_other_settings_is_refused_and_every_map_has_its_provenance(tmp_path, tiny_checkpoint, capsys,
                                                                                 caplog):
    import json

    from lacunes.checkpoint import read_checkpoint, sha256_of

    write_subject(tmp_path / "in", "sub-001", shape=(30, 28, 18))
    out = tmp_path / "out"
    args = ("--input", str(tmp_path / "in"), "--output", str(out), "--model", str(tiny_checkpoint))
    assert predict(*args) == 0
    sidecar = json.loads((out / "sub-001_space-T1_prediction.json").read_text())
    assert sidecar["Settings"]["model_sha256"] == read_checkpoint(tiny_checkpoint)["weights_sha256"]
    assert sidecar["Settings"]["setting"]["tta"] == "none" and sidecar["Settings"]["operating_point"]["threshold"] == 0.5
    t1 = tmp_path / "in" / "sub-001_space-T1_desc-masked_T1.nii.gz"
    assert sidecar["Inputs"]["T1"] == {"path": str(t1.resolve()), "sha256": sha256_of(t1)}
    assert sidecar["ModelDataStatement"] and sidecar["GeneratedBy"]["Name"] == "lacunes" and sidecar["Seconds"] > 0
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "lacunes"
    capsys.readouterr()
    # other settings into the same folder: refused before anything runs, the maps left as they were
    before = (out / "sub-001_space-T1_prediction.nii.gz").read_bytes()
    assert predict(*args, "--threshold", "0.9") == 2
    assert "made with other settings (sub-001: operating_point.threshold 0.5 → 0.9)" in caplog.text
    assert "--overwrite" in caplog.text
    assert (out / "sub-001_space-T1_prediction.nii.gz").read_bytes() == before
    assert predict(*args, "--tta", "flips") == 2 and "setting.tta 'none' → 'flips'" in caplog.text
    assert predict(*args, "--threshold", "0.9", "--overwrite") == 0 and "1 done" in capsys.readouterr().out
    assert json.loads((out / "sub-001_space-T1_prediction.json").read_text())["Settings"]["operating_point"][
        "threshold"] == 0.9
    # a record from before settings were recorded: predicted again, saying why
    data = json.loads((out / "run.json").read_text())
    data["subjects"][0].pop("settings")
    (out / "run.json").write_text(json.dumps(data))
    assert predict(*args, "--threshold", "0.9") == 0 and "1 done, 0 skipped" in capsys.readouterr().out
    assert "the recorded run did not record its settings" in caplog.text


def test_a_bids_folder_is_segmented_into_a_bids_derivatives_tree(tmp_path, tiny_checkpoint, capsys):
    import json

    write_bids_subject(tmp_path / "bids", "sub-01")
    write_bids_subject(tmp_path / "bids", "sub-02_ses-1")
    write_bids_subject(tmp_path / "bids", "sub-03", suffixes=("T1w", "T2w"))  # no FLAIR: fails alone
    out = tmp_path / "derivatives" / "lacunes"
    rc = predict("-i", str(tmp_path / "bids"), "-o", str(out), "--model", str(tiny_checkpoint), "--table", "--qc")
    assert rc == 1 and "2 done, 0 skipped" in capsys.readouterr().out
    anat = out / "sub-02" / "ses-1" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == [
        "sub-02_ses-1_space-T1w_label-lacune_desc-uncertainty_probseg.json",
        "sub-02_ses-1_space-T1w_label-lacune_desc-uncertainty_probseg.nii.gz",
        "sub-02_ses-1_space-T1w_label-lacune_probseg.json", "sub-02_ses-1_space-T1w_label-lacune_probseg.nii.gz"]
    assert (out / "sub-01" / "anat" / "sub-01_space-T1w_label-lacune_probseg.nii.gz").is_file()
    assert (out / "extras" / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_space-T1w_label-lacune_lesions.csv").is_file()
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    records = {r["subject_id"]: r for r in json.loads((out / "run.json").read_text())["subjects"]}
    assert records["sub-03"]["status"] == "failed" and "FLAIR" in records["sub-03"]["error"]
    assert (out / records["sub-02_ses-1"]["picture"]).is_file()  # the QC picture found the nested map
    assert predict("-i", str(tmp_path / "bids"), "-o", str(out), "--model", str(tiny_checkpoint), "--table") == 1
    assert "0 done, 2 skipped" in capsys.readouterr().out
    # lacunes evaluate reads the derivatives it wrote, against labels of the same entities
    from lacunes.geometry import Geometry
    from lacunes.writing import write_volume

    from .conftest import make_subject_arrays

    _, label = make_subject_arrays((30, 28, 18), 0)
    for sid in ("sub-01", "sub-02_ses-1"):
        write_volume(label, Geometry(shape=(30, 28, 18)),
                     tmp_path / "labels" / f"{sid}_space-T1w_desc-Rater1_Lacunes.nii.gz")
    assert main(["evaluate", "--pred", str(out), "--ref", str(tmp_path / "labels"), "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    scored = (tmp_path / "ev" / "per_subject.csv").read_text()
    assert "sub-01," in scored and "sub-02_ses-1," in scored and "no prediction" not in capsys.readouterr().err


def test_a_multi_variant_setting_on_the_cpu_says_what_it_costs_and_the_fast_alternative(tmp_path, tiny_checkpoint,
                                                                                       capsys):
    write_subject(tmp_path / "in", "sub-001", shape=(30, 28, 18))
    args = ("--input", str(tmp_path / "in"), "--model", str(tiny_checkpoint), "--device", "cpu")
    assert predict(*args, "--output", str(tmp_path / "a")) == 0
    assert "minutes a subject" not in capsys.readouterr().out  # fast: one variant
    assert predict(*args, "--output", str(tmp_path / "b"), "--tta", "flips") == 0
    assert "runs 4 TTA variants at overlap 0.25: on a CPU that is minutes a subject" in capsys.readouterr().out


def test_the_slurm_array_example_splits_a_cohort_into_one_folder(tmp_path, tiny_checkpoint):
    """docs/slurm-array.sh as two array tasks running at once (``--array=0-1``: task ids from 0, the array's
    first index), into one folder that does not exist yet."""
    import json
    import os

    root = Path(__file__).resolve().parent.parent
    for k in range(3):
        write_subject(tmp_path / "in", f"sub-00{k + 1}", shape=(30, 28, 18), seed=k)
    out = tmp_path / "out"
    base = {**os.environ, "INPUT": str(tmp_path / "in"), "OUTPUT": str(out), "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_MAX": "1", "SLURM_CPUS_PER_TASK": "1", "LACUNES": f"{sys.executable} -m lacunes.cli"}
    base.pop("SLURM_ARRAY_TASK_COUNT", None)
    tasks = [subprocess.Popen(["bash", str(root / "docs" / "slurm-array.sh"), "--model", str(tiny_checkpoint)],
                              env={**base, "SLURM_ARRAY_TASK_ID": str(i)}, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    logs = [t.communicate(timeout=600)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], logs
    assert "shard 1/2" in logs[0] and "shard 2/2" in logs[1]
    records = json.loads((out / "run.json").read_text())["subjects"]
    assert sorted(r["subject_id"] for r in records if r["status"] == "done") == ["sub-001", "sub-002", "sub-003"]
    assert sorted(p.name for p in (out / "extras").glob("*_lesions.csv")) == [
        f"sub-00{k}_space-T1_lesions.csv" for k in (1, 2, 3)]


@pytest.mark.parametrize("argv, extra, missing", [(["synth", "--n", "1", "--out", "x"], "synth", "nilearn"),
                                                   (["report", "out"], "qc", "matplotlib")])
def test_a_command_whose_extra_is_missing_names_the_extra_in_one_line(argv, extra, missing, tmp_path, monkeypatch,
                                                                     caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert f"needs {missing}, which is not installed: pip install 'lacunes[{extra}]'" in caplog.text
    assert "Traceback" not in caplog.text and len(caplog.records) == 1
    assert not (tmp_path / "x").exists()


def test_bids_derivatives_with_sessions_pass_the_bids_validator(tmp_path, tiny_checkpoint, capsys):
    """bids-validator 3 (bids-validator-deno, requirements-dev.txt) reports no error on the derivatives of a BIDS
    dataset with sessions, a source named with its own desc entity, extras and quality control; --participant-label
    picks subjects as a BIDS App does and names a label without a subject."""
    import importlib.util
    import json
    import shutil

    if importlib.util.find_spec("bids_validator_deno") is None:
        pytest.skip("bids-validator-deno is not installed (pip install -r requirements-dev.txt)")
    bids = tmp_path / "bids"
    (bids).mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "trial", "BIDSVersion": "1.9.0"}))
    for entities in ("sub-01_ses-1", "sub-01_ses-2", "sub-02", "sub-401_desc-brain"):
        write_bids_subject(bids, entities)
    out = bids / "derivatives" / "lacunes"
    base = ("-i", str(bids), "-o", str(out), "--model", str(tiny_checkpoint))
    assert predict(*base, "--participant-label", "01", "sub-09") == 2  # sub-09 is not in the dataset
    assert not out.exists()
    assert predict(*base, "--participant-label", "01", "sub-401", "--table", "--mask", "--qc") == 0
    assert "3 done" in capsys.readouterr().out  # sub-01's two sessions and sub-401, not sub-02
    assert (out / "sub-401" / "anat" / "sub-401_space-T1w_label-lacune_probseg.nii.gz").is_file()  # one desc: none
    assert not (out / "sub-02").exists()
    sidecar = json.loads((out / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_space-T1w_label-lacune_probseg.json")
                         .read_text())
    assert sidecar["SpatialReference"] == "bids:raw:sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"
    links = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]
    assert (out / links["raw"] / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz").resolve().is_file()
    validator = shutil.which("bids-validator-deno", path=str(Path(sys.executable).parent)) or "bids-validator-deno"
    result = subprocess.run([validator, str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "[ERROR]" not in result.stdout, result.stdout[-3000:]
    # a rerun (every subject skipped) keeps the link its sidecars point through
    assert predict(*base, "--participant-label", "01", "sub-401", "--table", "--mask") == 0
    assert json.loads((out / "dataset_description.json").read_text())["DatasetLinks"] == links
