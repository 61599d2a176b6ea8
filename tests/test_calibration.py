import json

import numpy as np

from lacunes import calibration as calibrate
from lacunes.checkpoint import load_network
from lacunes.cli import main as cli_main

from .conftest import write_subject


def test_calibration_writes_its_choice_and_reuses_the_cached_maps(tiny_checkpoint, tmp_path, capsys):
    val = tmp_path / "val"
    for k in range(2):
        write_subject(val, f"sub-{k + 1:03d}", seed=k)
    out, report, cache = tmp_path / "cal.pt", tmp_path / "cal.json", tmp_path / "cache"
    argv = [str(tiny_checkpoint), "--force", "--val", str(val), "--out", str(out), "--report", str(report),
            "--cache", str(cache), "--threads", "1"]
    assert calibrate.main([a for a in argv if a != "--force"]) == 2  # 2 subjects, 2 lacunes: under the minimum
    assert "needs at least 5 subjects and 10 lacunes" in capsys.readouterr().err
    assert not out.exists()
    assert calibrate.main(argv) == 0
    maps = sorted(cache.rglob("*.npy"))
    assert [m.name[:8] for m in maps] == ["sub-001-", "sub-002-"]  # keyed by id and the files' content
    first = json.loads(report.read_text())
    chosen = first["operating_point"]
    grid = first["grid"]
    assert all("uncertain_share" in g for g in grid)
    held = chosen["chosen_on"]["score"]["uncertain_share"] < 0.02
    assert held == ("warning: no grid point" not in capsys.readouterr().out)
    assert held == ("uncertainty" in chosen["chosen_on"]["objective"])
    _, payload = load_network(out)
    assert payload["metadata"]["operating_point"]["threshold"] == chosen["threshold"]
    assert "2 validation subject(s) with 2 lacune(s)" in chosen["chosen_on"]["below_minimum"]
    # every run of the forced model says so: its banner and each map's sidecar
    predicted = tmp_path / "predicted"
    assert cli_main(["predict", "-i", str(val), "-o", str(predicted), "--model", str(out), "--preset", "fast",
                     "--no-progress"]) == 0
    banner = capsys.readouterr().out
    assert f"calibration: operating point chosen on 2 labelled subject(s) of {val}" in banner
    assert "BELOW THE MINIMUM, forced: 2 validation subject(s) with 2 lacune(s)" in banner
    sidecar = json.loads((predicted / "sub-001_space-T1_prediction.json").read_text())
    assert "BELOW THE MINIMUM" in sidecar["ModelCalibration"]
    # a cached map is what the second run reads: change it, and the grid's scores change with it
    np.save(maps[0], np.full(np.load(maps[0]).shape, 0.5, np.float32))
    assert calibrate.main(argv[:-2] + ["--max-uncertain-share", "1"]) == 0
    second = json.loads(report.read_text())
    shares = {(g["threshold"], g["min_volume_mm3"]): g["uncertain_share"] for g in second["grid"]
              if g["extent_threshold"] is None}
    # subject 1 is p = 0.5 everywhere: undecided at a 0.5 threshold, in all of its brain
    assert shares[(0.5, 0.0)] >= 0.5
    assert second["operating_point"]["chosen_on"]["objective"] == "pooled detection F1"


def test_calibrate_command_refuses_a_second_stage_from_too_few_candidates_and_fits_the_point_alone(
        tiny_checkpoint, tmp_path, capsys, caplog):
    from lacunes.rescoring import SCALE_FREE_FEATURES

    train, val = tmp_path / "train", tmp_path / "val"
    write_subject(train, "sub-001", seed=3)
    write_subject(val, "sub-101", seed=4)
    out = tmp_path / "cal.pt"
    base = [str(tiny_checkpoint), "--val", str(val), "--out", str(out), "--threads", "1", "--no-progress", "--force"]
    cache = tmp_path / "cache"
    assert cli_main(["calibrate", *base, "--fit-rescorer", str(train), "--cache", str(cache)]) == 2
    assert not out.exists()
    # the fitting subject's map went into the network's pool (refused before the validation subjects)
    [fitted] = cache.rglob("*.npy")
    assert fitted.name.startswith("sub-001-") and fitted.parent.parent == cache
    # the same subject read as a validation subject is not predicted again: one map, untouched
    stamp = fitted.stat().st_mtime_ns
    assert cli_main(["calibrate", str(tiny_checkpoint), "--val", str(train), "--threads", "1", "--no-progress",
                     "--force", "--no-second-stage", "--cache", str(cache)]) == 0
    assert list(cache.rglob("*.npy")) == [fitted] and fitted.stat().st_mtime_ns == stamp
    # a map kept by the older layout (a subfolder per fitting folder) is linked into the pool, not predicted
    legacy = fitted.parent / "fit-train" / fitted.name
    legacy.parent.mkdir()
    fitted.replace(legacy)
    assert cli_main(["calibrate", str(tiny_checkpoint), "--val", str(train), "--threads", "1", "--no-progress",
                     "--force", "--no-second-stage", "--cache", str(cache)]) == 0
    assert fitted.samefile(legacy)
    assert f"the second stage has {len(SCALE_FREE_FEATURES)} weights and needs at least as many of each" in caplog.text
    assert "--no-second-stage" in caplog.text
    capsys.readouterr()
    assert cli_main(["calibrate", *base, "--no-second-stage"]) == 0
    text = capsys.readouterr().out
    assert "best " in text and "< chosen" in text and "why:" in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("0.", "1."))]) <= calibrate.ROWS_SHOWN + 1
    _, payload = load_network(out)
    assert "operating_point" in payload["metadata"] and "rescorer" not in payload["metadata"]


def test_calibrating_a_smaller_set_stores_its_point_beside_the_models_own(tiny_checkpoint, tmp_path, capsys, caplog):
    from lacunes.inference import Predictor
    from lacunes.settings import FAST

    val = tmp_path / "val"
    for k in range(2):
        write_subject(val, f"sub-{k + 1:03d}", seed=k)
    full, reduced, cache = tmp_path / "full.pt", tmp_path / "reduced.pt", tmp_path / "cache"
    base = ["--val", str(val), "--threads", "1", "--no-progress", "--no-second-stage", "--cache", str(cache), "--force"]
    assert calibrate.main([str(tiny_checkpoint), *base, "--out", str(full)]) == 0
    assert calibrate.main([str(full), *base, "--out", str(reduced), "--modalities", "T1+FLAIR",
                           "--report", str(tmp_path / "r.json")]) == 0
    assert "trained for T1+T2+FLAIR, not T1+FLAIR" in caplog.text
    assert "validation subjects from T1+FLAIR" in capsys.readouterr().out
    assert len(list(cache.iterdir())) == 2  # the sets' raw maps are cached apart
    _, before = load_network(full)
    _, after = load_network(reduced)
    assert after["metadata"]["operating_point"] == before["metadata"]["operating_point"]  # the model's own kept
    own = after["metadata"]["calibration_by_set"]["T1+FLAIR"]["operating_point"]
    assert own["chosen_on"]["modalities"] == "T1+FLAIR"
    assert own == json.loads((tmp_path / "r.json").read_text())["operating_point"]
    predictor = Predictor.from_checkpoint(reduced, FAST)
    assert predictor.release.post_processing_for("T1+FLAIR")[0].threshold == own["threshold"]
    assert predictor.release.post_processing_for("T1+T2")[0] == predictor.release.operating_point


def test_calibrate_predicts_another_subject_under_a_cached_id_and_refuses_a_label_off_its_grid(
        tiny_checkpoint, tmp_path, caplog):
    from lacunes.geometry import Geometry
    from lacunes.writing import write_volume

    from .conftest import DIRECTION, ORIGIN, SPACING

    val, cache = tmp_path / "val", tmp_path / "cache"
    write_subject(val, "sub-001", seed=1)
    argv = [str(tiny_checkpoint), "--val", str(val), "--cache", str(cache), "--threads", "1", "--no-progress",
            "--no-second-stage", "--force"]
    assert calibrate.main(argv) == 0
    write_subject(val, "sub-001", seed=2)  # another validation set with the same ids
    assert calibrate.main(argv) == 0
    assert len(list(cache.rglob("sub-001-*.npy"))) == 2  # predicted anew, not the stale map
    # a label 20 mm off its subject's grid, voxel for voxel the same
    _, label, _ = write_subject(val, "sub-001", seed=2, raters=False)
    shifted = Geometry(shape=label.shape, spacing=SPACING, origin=tuple(np.add(ORIGIN, (20.0, 0, 0))),
                       direction=DIRECTION)
    write_volume(label, shifted, val / "sub-001_space-T1_desc-Rater1_Lacunes.nii.gz")
    assert cli_main(["calibrate", *argv]) == 2
    assert "sub-001_space-T1_desc-Rater1_Lacunes.nii.gz is not on the grid of" in caplog.text
    assert "a rater's label must lie on its subject's grid" in caplog.text


def test_a_second_stage_fitted_on_few_candidates_of_one_side_is_warned_about_that_side():
    # stage 8's fit: 241 candidates on lesions, 47 off them, 12 features — enough in all (288), too few off
    warning = calibrate.thin_fit_warning(241, 47, 12)
    assert warning is not None
    assert "47 off them is fewer than 10 per feature" in warning
    assert "lacune-free ones included" in warning
    # stage 7c's fit (244 and 179) holds the rule on both sides
    assert calibrate.thin_fit_warning(244, 179, 12) is None
    # the rule is per feature: the same counts are enough for 4 features, and the rare side may be lesions
    assert calibrate.thin_fit_warning(241, 47, 4) is None
    few_lesions = calibrate.thin_fit_warning(30, 500, 12)
    assert "30 on lesions is fewer than 10 per feature" in few_lesions
    assert "labelled subjects with lesions" in few_lesions
