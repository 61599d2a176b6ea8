"""benchmarks/lost_lacunes.py: each reference lacune's contrast to the tissue around it and the step of
inference that loses it."""

import numpy as np

from tests.conftest import load_benchmark, make_subject_arrays

lost_lacunes = load_benchmark("lost_lacunes")


def ball(shape, centre, radius):
    idx = np.indices(shape)
    return ((idx - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


def test_contrast_is_inside_over_the_shell_around():
    """The median inside over the median in the shell around, per channel; another lesion's voxels in
    the shell are left out."""
    shape = (30, 30, 30)
    lesion = ball(shape, (12, 15, 15), 3)
    other = (np.indices(shape)[0] >= 10) & ~ball(shape, (12, 15, 15), 4)  # more than half of the shell
    channel = np.full(shape, 0.8, np.float32)
    channel[lesion] = 0.2
    channel[other] = 0.1
    normalized = np.stack([channel, 1.0 - channel + 0.2, channel])
    t1, t2, flair = lost_lacunes.contrasts(normalized, lesion, other)
    assert np.isclose(t1, 0.25) and np.isclose(flair, 0.25)
    assert np.isclose(t2, 1.0 / 0.4)
    assert np.isclose(lost_lacunes.contrasts(normalized, lesion, np.zeros(shape, bool))[0], 2.0)  # counted in


def test_one_row_per_reference_lacune_with_the_step_that_loses_it(tiny_checkpoint):
    """Two fluid balls in a brain-like blob: a row each, their volume, fluid contrasts (dark on T1 and FLAIR,
    bright on T2) and a step that loses them or 'kept'."""
    from quality import Case

    from lacunes.inference import Predictor
    from lacunes.settings import PRESETS

    lesions = ((14, 18, 10), (27, 18, 10))
    images, label = make_subject_arrays(lesions=lesions)
    image = np.stack([images[m] for m in ("T1", "T2", "FLAIR")])
    spacing = (1.0, 1.0, 1.5)
    case = Case("sub-001", image, label.astype(np.float32), spacing, None, None, None)
    predictor = Predictor.from_checkpoint(tiny_checkpoint, PRESETS["fast"].replace(progress=False))
    rows = lost_lacunes.lacune_rows(predictor, case, {"voxel_mm": 1.3, "thick": {"axis": 2, "mm": 4.0}, "noise": 0.05})
    assert [r["id"] for r in rows] == [1, 2]
    ids = np.zeros_like(label)
    for k, centre in enumerate(lesions, 1):
        ids[ball(label.shape, centre, 3) & (label > 0)] = k
    for r in rows:
        assert np.isclose(r["volume_mm3"], (ids == r["id"]).sum() * 1.5)
        assert r["contrast"]["T1"] < 0.5 and r["contrast"]["FLAIR"] < 0.5 and r["contrast"]["T2"] > 2
        assert 0.0 <= r["network_max_p"] <= 1.0
        assert r["lost_at"] in (*lost_lacunes.STEP_NAMES, "kept")
        assert (r["voxel_mm"], r["slice_mm"], r["noise"]) == (1.3, 4.0, 0.05)
        assert "score" not in r  # the tiny checkpoint has no second stage


def test_second_stage_view_is_the_best_candidate_on_the_lacune_and_what_weighs_against_it():
    """Two candidates on one lacune and one elsewhere: the better-scoring one on it is reported, with the two
    features whose standardized value times weight is lowest; a lacune under no candidate says so."""
    from lacunes.rescoring import ALL_FEATURES, Rescorer

    names = ("log_volume_mm3", "flair_rim", "log_elongation")
    rescorer = Rescorer(weights=(1.0, 3.0, -1.0), bias=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 2.0),
                        features=names)
    labels = np.zeros((10, 10, 10), np.int32)
    labels[1:3, 1:3, 1:3] = 1  # 8 voxels on the lacune
    labels[4:5, 1:3, 1:3] = 2  # 4 voxels on the lacune
    labels[7:9, 7:9, 7:9] = 3  # elsewhere
    feats = np.zeros((3, len(ALL_FEATURES)))
    for k, (volume, rim, elongation) in enumerate(((2.0, -0.3, 1.0), (1.0, 0.5, 0.2), (5.0, 1.0, 0.0))):
        feats[k, [ALL_FEATURES.index(f) for f in names]] = (volume, rim, elongation)
    scores = rescorer.score(feats)
    assert scores[1] > scores[0]
    lacune = np.zeros_like(labels, bool)
    lacune[1:5, 1:3, 1:3] = True
    view = lost_lacunes.second_stage_view(rescorer, (labels, scores, feats), lacune)
    assert view["candidate_voxels"] == 4 and np.isclose(view["score"], scores[1])
    # shares: elongation 0.2 / 2 x -1 = -0.1, volume 1.0 x 1 = 1.0, rim 0.5 x 3 = 1.5
    assert [a["feature"] for a in view["against"]] == ["log_elongation", "log_volume_mm3"]
    assert np.isclose(view["against"][0]["share"], -0.1) and np.isclose(view["against"][1]["value"], 1.0)
    nothing = np.zeros_like(lacune)
    nothing[5, 5, 5] = True
    assert lost_lacunes.second_stage_view(rescorer, (labels, scores, feats), nothing) == {"candidate_voxels": 0}
    assert lost_lacunes.second_stage_view(None, None, lacune) == {}
