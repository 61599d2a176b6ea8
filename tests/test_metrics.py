import math

import numpy as np
import pytest

from lacunes.metrics import evaluate_subject, summarize

SP = (1.0, 1.0, 1.0)


def ball(shape, centre, r, value=1.0):
    idx = np.indices(shape)
    d2 = sum((idx[i] - centre[i]) ** 2 for i in range(3))
    return np.where(d2 <= r * r, value, 0.0)


SHAPE = (40, 40, 20)


def test_perfect_prediction():
    ref = ball(SHAPE, (10, 10, 10), 3)
    m = evaluate_subject(ref.copy(), ref, SP, subject_id="s")
    assert (m.f1, m.dice, m.avd_mm3, m.tp, m.fp, m.fn) == (1.0, 1.0, 0.0, 1, 0, 0)


def test_empty_reference_and_empty_prediction_rules():
    empty = np.zeros(SHAPE)
    pred = ball(SHAPE, (10, 10, 10), 2)
    m = evaluate_subject(pred, empty, SP)
    assert math.isnan(m.f1) and math.isnan(m.dice) and m.fp == 1
    assert m.avd_mm3 == pytest.approx(pred.sum())
    m = evaluate_subject(empty, ball(SHAPE, (10, 10, 10), 2), SP)
    assert m.f1 == 0.0 and m.dice == 0.0 and m.fn == 1


def test_two_predictions_on_one_lesion_closest_is_tp_other_fp():
    ref = ball(SHAPE, (20, 20, 10), 4)
    pred = np.zeros(SHAPE)
    pred[19:22, 19:22, 9:12] = 1  # centre (20, 20, 10): distance 0
    pred[23, 23, 10] = 0.9  # separate component at distance ~4.2 mm < 5
    m = evaluate_subject(pred, ref, SP)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.f1 == pytest.approx(2 / (0 + 1 + 2))
    # Dice with both components assigned to the lesion: the cube (27 voxels) lies inside it, the
    # single voxel outside (distance² 18 > 16)
    assert m.dice == pytest.approx(2 * 27 / (ref.sum() + 28))


def test_half_weight_lesion_and_distance_threshold():
    ref = ball(SHAPE, (10, 10, 10), 3, 1.0) + ball(SHAPE, (30, 30, 10), 3, 0.5)
    pred = ball(SHAPE, (10, 10, 10), 3)  # finds only the agreed lesion
    m = evaluate_subject(pred, ref, SP)
    assert m.wtp == 1.0 and m.wfn == 0.5
    assert m.f1 == pytest.approx(2 * 1.0 / (0.5 + 0 + 2 * 1.0))
    far = ball(SHAPE, (10, 16, 10), 1)  # 6 mm from the centre: beyond 5 mm, a FP and a FN
    m = evaluate_subject(far, ball(SHAPE, (10, 10, 10), 3), SP)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    m = evaluate_subject(far, ball(SHAPE, (10, 10, 10), 3), SP, max_distance_mm=7.0)
    assert m.tp == 1
    # spacing matters: the same voxels, 0.5 mm apart, are 3 mm away
    m = evaluate_subject(far, ball(SHAPE, (10, 10, 10), 3), (0.5, 0.5, 0.5))
    assert m.tp == 1


def test_overlap_matching():
    ref = ball(SHAPE, (10, 10, 10), 4)
    pred = np.zeros(SHAPE)
    pred[10:20, 10, 10] = 1  # overlaps the lesion, but its centre is 4.5 mm away
    assert evaluate_subject(pred, ref, SP, max_distance_mm=4.0).tp == 0
    assert evaluate_subject(pred, ref, SP, matching="overlap").tp == 1


def test_soft_dice_and_avd():
    ref = np.zeros(SHAPE)
    ref[5:7, 5, 5] = 1.0
    ref[7, 5, 5] = 0.5  # one rater only
    pred = np.zeros(SHAPE)
    pred[5:8, 5, 5] = [0.9, 0.6, 0.4]  # 0.4 is below threshold
    m = evaluate_subject(pred, ref, SP)
    assert m.dice == pytest.approx(2 * 2.0 / (2.5 + 2))
    assert m.avd_mm3 == pytest.approx(abs(1.5 - 2.5))
    assert evaluate_subject(pred, ref, (2.0, 1.0, 1.0)).avd_mm3 == pytest.approx(2.0)


def test_uncertainty_flags_right_and_wrong():
    ref = ball(SHAPE, (10, 10, 10), 3) + ball(SHAPE, (30, 30, 10), 3)
    pred = ball(SHAPE, (10, 10, 10), 3) + ball(SHAPE, (30, 10, 10), 2)  # TP, FP; second ref is a FN
    good = np.zeros(SHAPE)
    good[ball(SHAPE, (30, 10, 10), 2) > 0] = 0.9  # FP uncertain
    good[ball(SHAPE, (30, 30, 10), 3) > 0] = 0.8  # FN uncertain
    m = evaluate_subject(pred, ref, SP, uncertainty=good)
    assert m.unc_flags == 1.0
    assert m.unc_voxels == pytest.approx(1.0)  # TP voxels certain, no error voxels
    bad = 1.0 - good
    m = evaluate_subject(pred, ref, SP, uncertainty=bad)
    assert m.unc_flags == 0.0
    assert m.unc_voxels == pytest.approx(0.0)


def test_invalid_prediction_gets_worst_score():
    ref = ball(SHAPE, (10, 10, 10), 3)
    m = evaluate_subject(ref * 1.5, ref, SP)
    assert not m.valid and m.f1 == 0.0 and m.dice == 0.0 and math.isinf(m.avd_mm3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        evaluate_subject(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), SP)


def test_summary_median_iqr_mean_ignores_nan():
    ref = ball(SHAPE, (10, 10, 10), 3)
    results = [evaluate_subject(ref, ref, SP), evaluate_subject(np.zeros(SHAPE), ref, SP),
               evaluate_subject(ref, np.zeros(SHAPE), SP)]
    s = summarize(results)
    assert s["f1"]["n"] == 2 and s["f1"]["median"] == 0.5 and s["f1"]["mean"] == 0.5
    assert s["f1"]["q25"] == 0.25 and s["f1"]["q75"] == 0.75


def test_detection_counts_from_centres_equal_the_full_metric():
    from scipy import ndimage as ndi

    from lacunes.instances import label_instances
    from lacunes.metrics import ReferenceLesions, detection_counts, lesion_centres_mm

    rng = np.random.default_rng(4)
    spacing = (1.0, 1.3, 0.8)
    for _ in range(10):
        shape = (40, 36, 30)
        ref = np.zeros(shape)
        for _ in range(rng.integers(0, 4)):
            c = rng.integers(4, 26, 3)
            ref[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 1:c[2] + 2] = rng.choice([0.5, 1.0])
        pred = np.clip(ndi.gaussian_filter(rng.random(shape), 1.5) * 1.6 - 0.3 + 0.5 * (ref > 0), 0, 1)
        full = evaluate_subject(pred, ref, spacing)
        labels, n = label_instances(pred >= 0.5)
        tp, fp, fn, wtp, wfn, f1 = detection_counts(lesion_centres_mm(labels, n, spacing),
                                                    ReferenceLesions.from_reference(ref, spacing))
        assert (tp, fp, fn) == (full.tp, full.fp, full.fn)
        assert wtp == pytest.approx(full.wtp) and wfn == pytest.approx(full.wfn)
        assert f1 == pytest.approx(full.f1, nan_ok=True)
