"""lacunes.runner: one subject from files to written maps, and the completion record's verdicts."""

import json
from pathlib import Path

import numpy as np

from lacunes.checkpoint import load_network
from lacunes.inference import Predictor
from lacunes.io import read_volume
from lacunes.layouts import valdo_subject
from lacunes.report import SubjectRecord
from lacunes.runner import extras_from_maps, extras_paths, fingerprints, record_mismatch, run_subject
from lacunes.settings import FAST

from .conftest import write_bids_subject, write_subject


def test_run_subject_writes_both_maps_on_the_t1_grid_and_extras_apart(tmp_path, tiny_checkpoint):
    _, _, geom = write_subject(tmp_path / "in", "sub-001", shape=(30, 28, 18))
    files = valdo_subject(tmp_path / "in" / "sub-001_space-T1_desc-masked_T1.nii.gz")
    predictor = Predictor(load_network(tiny_checkpoint)[0], FAST.replace(progress=False))
    out = tmp_path / "out"
    report = run_subject(predictor, files, out / files.prediction_name, out / files.uncertainty_name,
                         extras_dir=out / "extras", write_mask=True, write_table=True)
    assert report.status == "done" and set(report.phases) == {"read", "inference", "regions", "write"}
    prob, g = read_volume(out / "sub-001_space-T1_prediction.nii.gz")
    assert prob.shape == geom.shape
    np.testing.assert_allclose(g.spacing, geom.spacing, rtol=1e-6)
    np.testing.assert_allclose(g.direction, geom.direction, atol=1e-6)
    mask, _ = read_volume(out / "extras" / "sub-001_space-T1_mask.nii.gz")
    np.testing.assert_array_equal(mask, (prob >= 0.5).astype(np.uint8))
    # the same extras made again from the saved maps, without the network
    again = extras_from_maps(files, out / files.prediction_name, out / files.uncertainty_name,
                             {"mask": tmp_path / "m.nii.gz", "table": tmp_path / "t.csv"})
    np.testing.assert_array_equal(read_volume(again[0])[0], mask)
    assert again[1].read_text() == (out / "extras" / "sub-001_space-T1_lesions.csv").read_text()


def test_record_mismatch_names_what_is_not_known_complete(tmp_path):
    out = tmp_path
    a, b = out / "a.nii.gz", out / "b.nii.gz"
    a.write_bytes(b"map a")
    b.write_bytes(b"map b")
    record = SubjectRecord("s", "done", outputs=fingerprints([a], out))
    assert record_mismatch(None, [a], out) == "no record of a completed run"
    assert record_mismatch(record, [a], out) is None
    assert record_mismatch(record, [a, b], out) == "b.nii.gz was not written by the recorded run"
    a.write_bytes(b"map A")
    assert record_mismatch(record, [a], out) == "a.nii.gz differs from the recorded run"
    a.unlink()
    assert record_mismatch(record, [a], out) == "a.nii.gz is missing"
    files = type("Files", (), {"output_prefix": "x_", "subject_id": "x"})()
    assert extras_paths(files, None, True, True) == {}
    assert extras_paths(files, out, True, False) == {"mask": out / "x_mask.nii.gz"}


def test_a_run_with_other_settings_is_refused_while_another_holds_the_folder(tmp_path):
    """Shards with the same settings share the folder; a run with other settings is refused at its start
    while one holds it; a killed run's lock is free and removed."""
    import json
    import subprocess
    import sys

    import pytest

    from lacunes.runner import LOCK_PREFIX, settings_lock

    fast, full = {"preset": "fast", "threshold": 0.6}, {"preset": "full", "threshold": 0.6}
    with settings_lock(tmp_path, fast):
        with settings_lock(tmp_path, dict(fast)):  # another shard of the same run
            (held,) = tmp_path.glob(f"{LOCK_PREFIX}*.lock")
            assert json.loads(held.read_text()) == fast
        with pytest.raises(ValueError, match=r"another run is writing into .* with other settings \(.*fast"):
            with settings_lock(tmp_path, full):
                pass
    assert not list(tmp_path.glob(f"{LOCK_PREFIX}*.lock"))  # the last holder removed it
    stale = tmp_path / f"{LOCK_PREFIX}0123456789abcdef.lock"  # a killed run's: nobody holds it
    stale.write_text(json.dumps(full))
    with settings_lock(tmp_path, fast):
        assert not stale.exists()
    # held by another process (a shared flock of its own)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "os.write(fd, b'{\"preset\": \"full\"}'); fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); "
        "time.sleep(30)"), str(stale)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="other settings"):
            with settings_lock(tmp_path, fast):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_run_that_fails_before_writing_leaves_no_empty_output_folder(tmp_path, tiny_checkpoint, monkeypatch):
    import pytest

    import lacunes.runner as runner
    from lacunes.layouts import cohort_items
    from lacunes.runner import run_cohort

    write_subject(tmp_path / "in", "sub-001", shape=(30, 28, 18))
    predictor = Predictor.from_checkpoint(tiny_checkpoint, FAST.replace(progress=False))

    def refused(*args, **kwargs):
        raise ValueError("refused before anything is written")

    monkeypatch.setattr(runner, "_run_locked", refused)
    with pytest.raises(ValueError, match="refused"):
        run_cohort(predictor, cohort_items(tmp_path / "in"), tmp_path / "new" / "out", progress=False)
    assert not (tmp_path / "new" / "out").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there stays
    with pytest.raises(ValueError, match="refused"):
        run_cohort(predictor, cohort_items(tmp_path / "in"), tmp_path / "mine", progress=False)
    assert (tmp_path / "mine").is_dir()


def test_a_cohort_table_with_qc_flags_is_written_by_every_run_and_rerun(tmp_path, tiny_checkpoint, capsys):
    """lacunes.tsv: every subject of the folder (a rerun's skipped ones with their counts), the session apart,
    a failed subject with its error, and the QC flags kept with the result (a background that is not 0)."""
    import csv

    import nibabel as nib

    from lacunes.cli import main

    for entities in ("sub-01_ses-1", "sub-01_ses-2", "sub-02"):
        write_bids_subject(tmp_path / "in", entities)
    flair = tmp_path / "in" / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_FLAIR.nii.gz"
    image = nib.load(flair)
    data = np.asarray(image.dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(data + 50.0, image.affine, image.header), flair)  # no zero background
    (tmp_path / "in" / "sub-02" / "anat" / "sub-02_T2w.nii.gz").write_bytes(b"broken")
    out = tmp_path / "out"
    argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(out), "--model", str(tiny_checkpoint), "--preset", "fast",
            "--no-progress", "--no-preprocess"]  # as given: the FLAIR's background stays (prepared, it is masked)
    assert main(argv) == 1

    def table():
        with open(out / "lacunes.tsv", newline="") as f:
            return {(row["subject"], row["session"]): row for row in csv.DictReader(f, delimiter="\t")}

    first = table()
    assert set(first) == {("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "")}
    assert first[("sub-02", "")]["status"] == "failed" and first[("sub-02", "")]["lesions"] == ""
    assert "sub-02" in first[("sub-02", "")]["error"] or first[("sub-02", "")]["error"]
    assert "FLAIR background not 0" in first[("sub-01", "ses-2")]["qc_flags"]
    assert "background" not in first[("sub-01", "ses-1")]["qc_flags"]
    assert all(len(row["model_sha256"]) == 64 for key, row in first.items() if key[0] == "sub-01")
    sidecar = json.loads((out / "sub-01" / "ses-2" / "anat" /
                          "sub-01_ses-2_space-T1w_label-lacune_probseg.json").read_text())
    assert any("FLAIR background not 0" in f for f in sidecar["QCFlags"])
    capsys.readouterr()
    # a rerun skips the done subjects; the table and the summary keep their counts and flags
    assert main(argv) == 1
    text = capsys.readouterr().out
    again = table()
    assert {k: (r["status"], r["lesions"], r["qc_flags"]) for k, r in again.items()} == \
        {k: (r["status"], r["lesions"], r["qc_flags"]) for k, r in first.items()}
    skipped = next(line for line in text.splitlines() if line.startswith("sub-01_ses-1"))
    assert skipped.split()[1] == "skipped" and skipped.split()[2] == first[("sub-01", "ses-1")]["lesions"]
    assert "sub-01_ses-2 to review: FLAIR background not 0" in text


def test_a_prepared_run_masks_a_contrast_with_a_background_by_the_t1s_brain_and_says_so(tmp_path, tiny_checkpoint):
    import nibabel as nib

    from lacunes.cli import main
    from lacunes.report import load_records

    write_bids_subject(tmp_path / "in", "sub-01")
    flair = tmp_path / "in" / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz"
    image = nib.load(flair)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj).astype(np.float32) + 50.0, image.affine, image.header), flair)
    out = tmp_path / "out"
    argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(out), "--model", str(tiny_checkpoint), "--preset", "fast",
            "--no-progress"]
    assert main(argv) == 0
    sidecar = json.loads((out / "sub-01" / "anat" / "sub-01_space-T1w_label-lacune_probseg.json").read_text())
    assert sidecar["Preparation"]["brain_extraction"]["masked"] == ["FLAIR"]
    assert not any("background" in f for f in sidecar["QCFlags"])
    record = load_records(out)["sub-01"]
    assert record.preparation == sidecar["Preparation"] and record.settings["preparation"] != "none"
    # the report draws the subject through the mask the run wrote, and only while it is that mask
    from lacunes.report import picture_for
    from lacunes.writing import write_volume

    mask_file = Path(record.preparation["brain_extraction"]["mask_file"])
    drawn = picture_for(out, record)
    assert not any("brain mask" in f for f in drawn.flags)
    from PIL import Image

    with Image.open(out / drawn.preparation_picture) as picture:  # the reference with the mask: one row
        assert picture.size[0] > picture.size[1] > 100
    mask, geometry = read_volume(mask_file)
    write_volume(np.zeros_like(mask), geometry, mask_file)
    assert f"brain mask {mask_file} changed since the run: the picture shows the scan unmasked" in picture_for(
        out, load_records(out)["sub-01"]).flags
    # the same folder as given: other settings, refused
    assert main([*argv, "--no-preprocess"]) != 0
