import json

import pytest

from lacunes.errors import LacunesInputError, MissingModalityError
from lacunes.layouts import (
    GC_INPUT_SLUGS,
    explicit_subject,
    find_valdo_subjects,
    grand_challenge_subject,
    is_grand_challenge_layout,
    valdo_subject,
)

from .conftest import write_bids_subject, write_subject


def test_valdo_layout_finds_subjects_and_names_outputs(tmp_path):
    write_subject(tmp_path, "sub-201")
    write_subject(tmp_path, "sub-105")
    subjects = find_valdo_subjects(tmp_path)
    assert [s.subject_id for s in subjects] == ["sub-105", "sub-201"]
    s = subjects[1]
    assert s.prediction_name == "sub-201_space-T1_prediction.nii.gz"
    assert s.uncertainty_name == "sub-201_space-T1_uncertaintymap.nii.gz"
    assert s.paths["FLAIR"].name == "sub-201_space-T1_desc-masked_FLAIR.nii.gz"
    assert set(s.label_paths()) == {"Rater1", "Rater2"}


def test_valdo_missing_modality_lists_found_files(tmp_path):
    write_subject(tmp_path, "sub-001")
    (tmp_path / "sub-001_space-T1_desc-masked_T2.nii.gz").unlink()
    with pytest.raises(MissingModalityError, match=r"no T2 for sub-001.*found: .*FLAIR"):
        find_valdo_subjects(tmp_path)


def test_empty_folder_and_bad_names(tmp_path):
    with pytest.raises(LacunesInputError, match="no sub-"):
        find_valdo_subjects(tmp_path)
    with pytest.raises(LacunesInputError, match="does not follow"):
        valdo_subject(tmp_path / "brain_T1.nii.gz")


def test_files_that_look_like_t1_scans_but_are_not_taken_are_named_with_the_reason(tmp_path, caplog):
    write_subject(tmp_path, "sub-001")
    for name in ("SUB-004_space-T1_desc-masked_T1.nii.gz", "sub-008_T1.nii.gz",
                 "sub-005_space-T1_desc-brain_T1.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [s.subject_id for s in find_valdo_subjects(tmp_path)] == ["sub-001"]
    assert "3 file(s) in" in caplog.text and "look like T1 scans but are not taken" in caplog.text
    assert "SUB-004_space-T1_desc-masked_T1.nii.gz: the names are case-sensitive" in caplog.text
    assert "sub-005_space-T1_desc-brain_T1.nii.gz: desc-brain where desc-masked" in caplog.text
    assert "sub-008_T1.nii.gz: no _space-<space>_desc-masked_ before T1" in caplog.text
    assert "notes.txt" not in caplog.text and "sub-001" not in caplog.text


def test_explicit_subject(tmp_path):
    s = explicit_subject(tmp_path / "sub-9_T1w.nii.gz", tmp_path / "t2.nii.gz", tmp_path / "fl.nii.gz")
    assert s.subject_id == "sub-9" and s.prediction_name == "sub-9_space-T1_prediction.nii.gz"  # as the VALDO layout names it
    for bad in ("../x", "a/b", "..", "/etc/x", ""):
        if bad:
            with pytest.raises(LacunesInputError, match="must be a name"):
                explicit_subject(tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz", tmp_path / "fl.nii.gz", subject_id=bad)
    named = explicit_subject(tmp_path / "t1.nii.gz", tmp_path / "t2", tmp_path / "f", subject_id="sub-1.v2")
    assert named.subject_id == "sub-1.v2"
    with pytest.raises(ValueError, match="one file per modality \\(T1, T2, FLAIR\\), got 2"):
        explicit_subject(tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz")


def make_gc(tmp_path, extra=None, sockets=None):
    images, _, geom = write_subject(tmp_path / "src")
    for m, slug in GC_INPUT_SLUGS.items():
        d = tmp_path / "input" / "images" / slug
        d.mkdir(parents=True)
        (tmp_path / "src" / f"sub-001_space-T1_desc-masked_{m}.nii.gz").rename(d / f"{m.lower()}-uuid.nii.gz")
    slugs = sockets if sockets is not None else list(GC_INPUT_SLUGS.values())
    (tmp_path / "input" / "inputs.json").write_text(json.dumps([{"interface": {"slug": s}} for s in slugs]))
    return tmp_path / "input"


def test_grand_challenge_layout(tmp_path):
    inp = make_gc(tmp_path)
    assert is_grand_challenge_layout(inp)
    s = grand_challenge_subject(inp)
    assert s.paths["T2"].parent.name == "t2-brain-mri"


def test_grand_challenge_errors(tmp_path):
    inp = make_gc(tmp_path, sockets=["t1-brain-mri"])
    with pytest.raises(MissingModalityError, match="t2-brain-mri"):
        grand_challenge_subject(inp)
    (inp / "inputs.json").write_text(json.dumps([{"interface": {"slug": s}} for s in GC_INPUT_SLUGS.values()]))
    (inp / "images" / "flair-brain-mri" / "second.mha").write_bytes(b"")
    with pytest.raises(MissingModalityError, match="exactly one image"):
        grand_challenge_subject(inp)


@pytest.mark.parametrize("content", ["null", "3", "[1, 2]", '{"interface": 1}', '[{"interface": "t1"}]', "\u00ff"])
def test_malformed_inputs_json_is_named(tmp_path, content):
    inp = make_gc(tmp_path)
    (inp / "inputs.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(LacunesInputError, match="inputs.json"):
        grand_challenge_subject(inp)


def test_bids_subjects_with_sessions_are_found_and_named_as_derivatives(tmp_path):
    from lacunes.layouts import BidsT1, cohort_items

    write_bids_subject(tmp_path, "sub-01")
    write_bids_subject(tmp_path, "sub-02_ses-1")
    write_bids_subject(tmp_path, "sub-02_ses-2")
    items = cohort_items(tmp_path)
    assert all(isinstance(i, BidsT1) for i in items)
    assert [i.subject_id for i in items] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    files = items[2].files()
    assert files.paths["FLAIR"] == tmp_path / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_FLAIR.nii.gz"
    assert files.prediction_name == "sub-02/ses-2/anat/sub-02_ses-2_space-T1w_label-lacune_probseg.nii.gz"
    assert files.uncertainty_name.endswith("sub-02_ses-2_space-T1w_label-lacune_desc-uncertainty_probseg.nii.gz")
    assert files.label_paths() == {}


def test_bids_modalities_with_other_entities_are_taken_when_unique_and_refused_when_not(tmp_path):
    from lacunes.errors import MissingModalityError
    from lacunes.layouts import cohort_items

    anat = write_bids_subject(tmp_path, "sub-01_acq-mprage", suffixes=("T1w",))
    write_bids_subject(tmp_path, "sub-01_acq-tse", suffixes=("T2w",))
    write_bids_subject(tmp_path, "sub-01_acq-space", suffixes=("FLAIR",))
    (item,) = cohort_items(tmp_path)
    files = item.files()
    assert files.paths["T2"].name == "sub-01_acq-tse_T2w.nii.gz" and files.paths["FLAIR"].name == "sub-01_acq-space_FLAIR.nii.gz"
    (anat / "sub-01_acq-tse2_T2w.nii.gz").write_bytes((anat / "sub-01_acq-tse_T2w.nii.gz").read_bytes())
    with pytest.raises(MissingModalityError, match="2 other T2w files of sub-01"):
        item.files()
    (anat / "sub-01_acq-tse2_T2w.nii.gz").unlink()
    (anat / "sub-01_acq-space_FLAIR.nii.gz").unlink()
    assert set(item.files().paths) == {"T1", "T2"}  # without its FLAIR: the T1+T2 set
    (anat / "sub-01_acq-tse_T2w.nii.gz").unlink()
    with pytest.raises(MissingModalityError, match=r"sub-01_acq-mprage: T1 is not a set of contrasts .*found: "
                                                   r"sub-01_acq-mprage_T1w.nii.gz"):
        item.files()


def test_an_unknown_folder_is_refused_with_the_layouts_and_the_explicit_options(tmp_path):
    from lacunes.layouts import cohort_items

    (tmp_path / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(Exception, match=r"found: scan.nii.gz\): expected sub-\*_space-\*_desc-masked_T1.nii.gz .*; "
                       r"or a BIDS folder: sub-\*/\[ses-\*/\]anat/sub-\*_T1w.nii.gz .*--t1, --t2 and --flair"):
        cohort_items(tmp_path)


def test_a_new_layout_is_one_more_entry_and_the_cohort_runs_on_its_subjects(tmp_path):
    """The layout interface: a layout of one folder per subject (``<id>/t1.nii.gz``, ``t2``, ``flair``)
    plugged into find_subjects; its entries give ids at once and files when they run."""
    from lacunes.layouts import FOLDER_LAYOUTS, Layout, SubjectFiles, ValdoT1, explicit_subject, find_subjects

    for sid in ("a01", "a02"):
        (tmp_path / sid).mkdir()
        for m in ("t1", "t2", "flair"):
            (tmp_path / sid / f"{m}.nii.gz").write_bytes(b"")
    per_folder = Layout("per-folder", "<id>/t1.nii.gz, t2.nii.gz, flair.nii.gz",
                        lambda f: any((d / "t1.nii.gz").is_file() for d in f.iterdir()),
                        lambda f: [explicit_subject(d / "t1.nii.gz", d / "t2.nii.gz", d / "flair.nii.gz", subject_id=d.name)
                                   for d in sorted(f.iterdir())])
    entries = find_subjects(tmp_path, (*FOLDER_LAYOUTS, per_folder))
    assert [e.subject_id for e in entries] == ["a01", "a02"]
    files = entries[0].files()
    assert isinstance(files, SubjectFiles) and files.paths["FLAIR"] == tmp_path / "a01" / "flair.nii.gz"
    assert files.prediction_name == "a01_space-T1_prediction.nii.gz"
    with pytest.raises(Exception, match="no subject in .*expected <id>/t1.nii.gz"):
        find_subjects(tmp_path / "a01", (per_folder,))
    lone = ValdoT1(tmp_path / "sub-009_space-T1_desc-masked_T1.nii.gz")
    assert lone.subject_id == "sub-009"  # known before its files are looked for
    with pytest.raises(Exception, match="no T1, T2, FLAIR for sub-009"):
        lone.files()
