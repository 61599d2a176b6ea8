import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lacunes.io import read_volume
from lacunes.layouts import GC_INPUT_SLUGS, GC_OUTPUT_SLUGS

from .conftest import write_subject

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("process", ROOT / "process.py")
process = importlib.util.module_from_spec(spec)
spec.loader.exec_module(process)


def contract(sid):
    return {
        "outputs": [{"type": "metaio_image",
                     "filename": [f"{sid}_space-T1_prediction.nii.gz", f"{sid}_space-T1_uncertaintymap.nii.gz"]}],
        "inputs": [{"type": "metaio_image", "filename": [f"{sid}_space-T1_desc-masked_{m}.nii.gz"
                                                          for m in ("T1", "T2", "FLAIR")]}],
        "error_messages": [],
    }


def run(inp, out, model, *extra):
    return process.main(["--input", str(inp), "--output", str(out), "--model", str(model), "--preset", "fast",
                         "--no-progress", *extra])


def check_map(path, geom):
    arr, g = read_volume(path)
    assert arr.dtype == np.float32 and arr.shape == geom.shape
    assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1
    assert g.spacing == pytest.approx(geom.spacing) and g.origin == pytest.approx(geom.origin)
    assert g.direction == pytest.approx(geom.direction)


def test_valdo_layout_writes_the_contract(tmp_path, tiny_checkpoint):
    _, _, geom = write_subject(tmp_path / "in", "sub-201", raters=False)
    (tmp_path / "in" / "expected_output.json").write_text("[]")  # ignored, like the template's test folder
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results == [contract("sub-201")]
    for name in results[0]["outputs"][0]["filename"]:
        check_map(tmp_path / "out" / "images" / name, geom)


def test_many_subjects(tmp_path, tiny_checkpoint):
    write_subject(tmp_path / "in", "sub-001", shape=(30, 30, 18))
    write_subject(tmp_path / "in", "sub-002", shape=(34, 28, 20), seed=1)
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results == [contract("sub-001"), contract("sub-002")]


def test_grand_challenge_layout(tmp_path, tiny_checkpoint):
    _, _, geom = write_subject(tmp_path / "src", "sub-001")
    inp = tmp_path / "in"
    for m, slug in GC_INPUT_SLUGS.items():
        (inp / "images" / slug).mkdir(parents=True)
        shutil.copy(tmp_path / "src" / f"sub-001_space-T1_desc-masked_{m}.nii.gz", inp / "images" / slug / "a.nii.gz")
    (inp / "inputs.json").write_text(json.dumps([{"interface": {"slug": s}} for s in GC_INPUT_SLUGS.values()]))
    assert run(inp, tmp_path / "out", tiny_checkpoint) == 0
    for slug in GC_OUTPUT_SLUGS.values():
        files = list((tmp_path / "out" / "images" / slug).iterdir())
        assert [f.name for f in files] == ["output.mha"]
        check_map(files[0], geom)


def test_a_single_subject_is_read_once_and_a_cohort_checked_first(tmp_path, tiny_checkpoint, monkeypatch):
    import lacunes.preparation
    import lacunes.runner

    reads = []
    real = lacunes.runner.read_subject
    for module in (lacunes.runner, lacunes.preparation):  # read as given, or read to be prepared
        monkeypatch.setattr(module, "read_subject", lambda sid, *a, **k: reads.append(sid) or real(sid, *a, **k))
    write_subject(tmp_path / "one", "sub-001")
    assert run(tmp_path / "one", tmp_path / "out1", tiny_checkpoint) == 0
    assert reads == ["sub-001"]  # checked, then predicted from the same read
    reads.clear()
    write_subject(tmp_path / "two", "sub-001")
    write_subject(tmp_path / "two", "sub-002", seed=1)
    assert run(tmp_path / "two", tmp_path / "out2", tiny_checkpoint) == 0
    assert reads == ["sub-001", "sub-002", "sub-001", "sub-002"]  # all checked before the first output


def test_missing_modality_fails_before_any_output(tmp_path, tiny_checkpoint, caplog):
    write_subject(tmp_path / "in", "sub-001")
    write_subject(tmp_path / "in", "sub-002")
    (tmp_path / "in" / "sub-002_space-T1_desc-masked_FLAIR.nii.gz").unlink()
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 2
    assert "no FLAIR for sub-002" in caplog.text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_empty_input_and_missing_model(tmp_path, tiny_checkpoint, caplog):
    (tmp_path / "in").mkdir()
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 2
    assert "expected inputs.json and one image per socket in images/<slug>/; or sub-*_space-*_desc-masked_T1.nii.gz" \
        in caplog.text
    write_subject(tmp_path / "in")
    assert run(tmp_path / "in", tmp_path / "out", tmp_path / "absent.pt") == 2
    assert "no checkpoint" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no empty images/ left behind
    (tmp_path / "out" / "images").mkdir()
    (tmp_path / "out" / "images" / "mine.txt").write_text("kept")
    assert run(tmp_path / "in", tmp_path / "out", tmp_path / "absent.pt") == 2
    assert (tmp_path / "out" / "images" / "mine.txt").read_text() == "kept"  # a folder it did not create stays


def test_no_flags_means_the_full_recipe(monkeypatch):
    monkeypatch.delenv("LACUNES_INFERENCE", raising=False)
    args = process.build_parser().parse_args([])
    assert (args.preset, args.input, args.output) == ("full", "/input", "/output")
    monkeypatch.setenv("LACUNES_INFERENCE", "fast")
    assert process.build_parser().parse_args([]).preset == "fast"
    monkeypatch.setenv("LACUNES_INFERENCE", "FAST")
    assert process.build_parser().parse_args([]).preset == "fast"
    monkeypatch.setenv("LACUNES_INFERENCE", "bogus")  # a clear usage error, not a KeyError traceback
    with pytest.raises(SystemExit) as stop:
        process.main([])
    assert stop.value.code == 2
    monkeypatch.delenv("LACUNES_INFERENCE")
    monkeypatch.delenv("LACUNES_PRECISION", raising=False)
    assert process.build_parser().parse_args([]).precision == "auto"
    monkeypatch.setenv("LACUNES_PRECISION", "bfloat16")
    assert process.build_parser().parse_args([]).precision == "bfloat16"


def test_operating_point_from_the_environment(tmp_path, tiny_checkpoint, monkeypatch, caplog):
    write_subject(tmp_path / "in", "sub-005")
    monkeypatch.setenv("LACUNES_THRESHOLD", "0.75")
    monkeypatch.setenv("LACUNES_MIN_VOLUME", "12")
    caplog.set_level("INFO")
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 0
    assert "probability >= 0.75, lesions >= 12 mm³" in caplog.text
    monkeypatch.setenv("LACUNES_THRESHOLD", "high")
    with pytest.raises(SystemExit, match="LACUNES_THRESHOLD must be a number"):
        process.build_parser()


def test_an_all_zero_scan_gives_empty_maps(tmp_path, tiny_checkpoint):
    from lacunes.geometry import Geometry
    from lacunes.writing import write_volume

    geom = Geometry((24, 22, 16))
    (tmp_path / "in").mkdir()
    for m in ("T1", "T2", "FLAIR"):
        write_volume(np.zeros(geom.shape, np.float32), geom, tmp_path / "in" / f"sub-009_space-T1_desc-masked_{m}.nii.gz")
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 0
    for kind in ("prediction", "uncertaintymap"):
        arr, _ = read_volume(tmp_path / "out" / "images" / f"sub-009_space-T1_{kind}.nii.gz")
        assert arr.max() == 0


def test_a_flair_on_another_grid_is_registered_or_as_given_needs_resample(tmp_path, tiny_checkpoint, monkeypatch,
                                                                          caplog):
    from .test_io import coarse_flair

    _, _, geom = write_subject(tmp_path / "in", "sub-004", shape=(40, 36, 21))
    coarse_flair(tmp_path / "in", "sub-004")
    assert run(tmp_path / "in", tmp_path / "prepared", tiny_checkpoint) == 0  # registered onto the T1 (the default)
    assert "sub-004: FLAIR registered onto the reference" in caplog.text
    check_map(tmp_path / "prepared" / "images" / "sub-004_space-T1_prediction.nii.gz", geom)
    monkeypatch.setenv("LACUNES_PREPROCESS", "0")  # as given
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 2
    assert "LACUNES_RESAMPLE=1" in caplog.text
    assert not (tmp_path / "out" / "images" / "sub-004_space-T1_prediction.nii.gz").exists()
    monkeypatch.setenv("LACUNES_RESAMPLE", "1")
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 0
    for kind in ("prediction", "uncertaintymap"):
        check_map(tmp_path / "out" / "images" / f"sub-004_space-T1_{kind}.nii.gz", geom)
    for name in ("LACUNES_RESAMPLE", "LACUNES_PREPROCESS"):
        monkeypatch.setenv(name, "maybe")
        with pytest.raises(SystemExit, match=f"{name} must be"):
            process.build_parser()
        monkeypatch.setenv(name, "1")


def test_duplicate_subjects_are_refused_with_a_message(tmp_path, tiny_checkpoint, caplog):
    import shutil as sh

    write_subject(tmp_path / "in", "sub-001")
    write_subject(tmp_path / "in", "sub-002")
    for m in ("T1", "T2", "FLAIR"):  # sub-002's T1 bytes are sub-001's
        sh.copy(tmp_path / "in" / f"sub-001_space-T1_desc-masked_{m}.nii.gz",
                tmp_path / "in" / f"sub-002_space-T1_desc-masked_{m}.nii.gz")
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 2
    assert ("sub-002_space-T1_desc-masked_T1.nii.gz holds the same bytes as" in caplog.text
            and "sub-001_space-T1_desc-masked_T1.nii.gz: one scan given as two subjects" in caplog.text)
    caplog.clear()
    write_subject(tmp_path / "in2", "sub-003")
    sh.copy(tmp_path / "in2" / "sub-003_space-T1_desc-masked_T1.nii.gz", tmp_path / "in2" / "sub-003_space-T1_desc-masked_T1.nii")
    assert run(tmp_path / "in2", tmp_path / "out2", tiny_checkpoint) == 2
    assert "the same subject appears more than once" in caplog.text and "sub-003" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "other grid", "unreadable"])
def test_every_subject_is_read_and_checked_before_the_first_output(tmp_path, tiny_checkpoint, caplog, damage):
    from lacunes.geometry import Geometry
    from lacunes.writing import write_volume

    for sid in ("sub-001", "sub-002", "sub-003"):
        write_subject(tmp_path / "in", sid)
    bad = tmp_path / "in" / "sub-002_space-T1_desc-masked_FLAIR.nii.gz"
    if damage == "truncated":
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "other grid":
        write_volume(np.ones((20, 18, 10), np.float32), Geometry((20, 18, 10)), bad)
    else:
        bad.write_bytes(b"\x1f\x8b not really")
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 2
    assert "sub-002" in caplog.text and bad.name in caplog.text
    assert not any(p.is_file() and not p.name.startswith(".") for p in (tmp_path / "out").rglob("*"))


def test_the_grand_challenge_sockets_take_a_smaller_set_the_model_accepts(tmp_path, tiny_checkpoint, caplog):
    from lacunes.checkpoint import load_network, save_checkpoint
    from lacunes.network import NetworkConfig

    _, _, geom = write_subject(tmp_path / "src", "sub-001")
    inp = tmp_path / "in"
    slugs = [GC_INPUT_SLUGS[m] for m in ("T1", "FLAIR")]
    for m in ("T1", "FLAIR"):
        (inp / "images" / GC_INPUT_SLUGS[m]).mkdir(parents=True)
        shutil.copy(tmp_path / "src" / f"sub-001_space-T1_desc-masked_{m}.nii.gz",
                    inp / "images" / GC_INPUT_SLUGS[m] / "a.nii.gz")
    (inp / "inputs.json").write_text(json.dumps([{"interface": {"slug": s}} for s in slugs]))
    # a model for all three only: the subject fails with the reason, nothing written
    assert run(inp, tmp_path / "refused", tiny_checkpoint) != 0
    assert "the model accepts T1+T2+FLAIR only" in caplog.text
    assert not any((tmp_path / "refused").rglob("*.mha"))
    # the same model released as accepting T1+FLAIR too: both maps on the T1's grid
    net, payload = load_network(tiny_checkpoint)
    accepting = save_checkpoint(tmp_path / "sets.pt", net, NetworkConfig.from_dict(payload["network"]),
                                {**payload["metadata"], "input_sets": ["T1+T2+FLAIR", "T1+FLAIR"]})
    assert run(inp, tmp_path / "out", accepting) == 0
    for slug in GC_OUTPUT_SLUGS.values():
        check_map(tmp_path / "out" / "images" / slug / "output.mha", geom)
