"""lacunes.operating_point: the grid search, its tie-breaks, the uncertainty budget and the extent."""

import numpy as np
import pytest

from lacunes.operating_point import ValidationCase, choose_operating_point

from .test_postprocessing import soft_lesions, validation_case


def test_among_thresholds_that_detect_alike_the_one_with_the_best_dice_is_chosen():
    # A sharp network: the lesion's core at 0.99, a rim at 0.9 that the reference does not hold. Both
    # thresholds find it with no false positive; only 0.95 delineates it.
    shape = (30, 30, 20)
    cases = []
    for _ in range(2):
        p = np.full(shape, 0.01, np.float32)
        ref = np.zeros(shape, np.float32)
        p[8:15, 8:15, 6:13] = 0.9
        p[10:13, 10:13, 8:11] = 0.99
        ref[10:13, 10:13, 8:11] = 1.0
        cases.append(validation_case(p, ref))
    best, _, scores = choose_operating_point(cases, thresholds=(0.5, 0.95), volumes=(0.0,), extents=(),
                                             progress=False)
    assert best.threshold == 0.95
    by_t = {s.threshold: s for s in scores}
    assert by_t[0.5].f1 == by_t[0.95].f1 == 1.0 and by_t[0.5].fp == by_t[0.95].fp == 0
    assert by_t[0.5].dice == pytest.approx(2 * 27 / (27 + 343)) and by_t[0.95].dice == 1.0


def test_the_best_operating_point_under_an_uncertainty_budget():
    shape = (40, 40, 20)
    cases = []
    for _ in range(2):
        p = np.full(shape, 0.3, np.float32)  # undecided at 0.5: the whole brain uncertain there
        ref = np.zeros(shape, np.float32)
        ref[5:10, 5:10, 5:10] = ref[25:30, 25:30, 5:10] = 1.0
        p[5:10, 5:10, 5:10] = 0.95  # found at 0.5 and 0.9
        p[25:30, 25:30, 5:10] = 0.6  # found at 0.5 only
        cases.append(validation_case(p, ref))
    free, _, scores = choose_operating_point(cases, thresholds=(0.5, 0.9), volumes=(0.0,), extents=(),
                                             progress=False)
    assert free.threshold == 0.5
    share = {s.threshold: s.uncertain_share for s in scores}
    assert share[0.5] == pytest.approx(1 - 125 / p.size) and share[0.9] == pytest.approx(250 / p.size)
    held, _, _ = choose_operating_point(cases, thresholds=(0.5, 0.9), volumes=(0.0,), extents=(),
                                        progress=False, max_uncertain_share=0.02)
    assert held.threshold == 0.9
    # no point qualifies: the constraint is dropped, the best F1 kept
    none, _, _ = choose_operating_point(cases, thresholds=(0.5, 0.9), volumes=(0.0,), extents=(),
                                        progress=False, max_uncertain_share=0.001)
    assert none.threshold == 0.5


def test_the_best_operating_point_rejects_what_only_a_low_threshold_or_no_size_filter_lets_through():
    shape = (40, 40, 20)
    cases = []
    for k in range(3):
        p = np.full(shape, 0.05, np.float32)
        ref = np.zeros(shape, np.float32)
        ref[8:13, 8:13, 8:13] = 1.0
        p[8:13, 8:13, 8:13] = 0.9  # the lacune: found above 0.8
        p[25:30, 25:30, 5:10] = 0.7  # a mimic: only below 0.7
        p[30 + k:32 + k, 5:7, 15:17] = 0.95  # 8 voxels: a speck
        cases.append(validation_case(p, ref))
    best, cut, scores = choose_operating_point(cases, thresholds=(0.5, 0.8), volumes=(0.0, 10.0), progress=False)
    assert (best.threshold, best.min_volume_mm3, cut, best.extent_threshold) == (0.8, 10.0, None, None)
    top = {(s.threshold, s.min_volume_mm3): s for s in scores if s.extent_threshold is None}
    assert top[(0.8, 10.0)].f1 == 1.0 and top[(0.8, 10.0)].fp == 0
    assert top[(0.5, 0.0)].fp == 6 and top[(0.8, 0.0)].fp == 3


def test_the_extent_is_chosen_for_dice_without_losing_detection():
    cases = []
    for _ in range(2):
        p = soft_lesions()
        ref = np.zeros(p.shape, np.float32)
        ref[4:11, 4:11, 4:11] = 1.0  # the whole lesion, rim included
        p[22:26, 2:6, 10:14] = 0.9  # a mimic: kept out by a threshold above 0.9
        cases.append(validation_case(p, ref))
    best, _, scores = choose_operating_point(cases, thresholds=(0.5, 0.95), volumes=(0.0,), progress=False)
    assert best.threshold == 0.95 and best.extent_threshold == 0.7  # the highest extent that takes the rim
    by_extent = {s.extent_threshold: s for s in scores if s.threshold == 0.95}
    assert by_extent[None].dice == pytest.approx(2 * 27 / (27 + 343))
    assert by_extent[0.7].dice == 1.0 and by_extent[0.7].f1 == by_extent[None].f1 == 1.0
    assert 0.95 not in by_extent and by_extent[0.1].dice == 1.0


def test_cases_are_named_records_and_plain_tuples_are_taken_alike():
    p = soft_lesions()
    ref = np.zeros(p.shape, np.float32)
    ref[4:11, 4:11, 4:11] = 1.0
    named = ValidationCase(p, None, ref, (1.0, 1.0, 1.0), np.ones(p.shape, bool))
    a = choose_operating_point([named], thresholds=(0.5, 0.95), volumes=(0.0,), extents=(), progress=False)
    b = choose_operating_point([tuple(named)], thresholds=(0.5, 0.95), volumes=(0.0,), extents=(), progress=False)
    assert a[0] == b[0] and [s.to_dict() for s in a[2]] == [s.to_dict() for s in b[2]]
    assert named.reference is ref and named.mask.all()


def test_the_point_for_the_worst_family_with_few_lacune_free_subjects_flagged():
    """Family a: lacunes at p = 0.95 and, in lacune-free subjects, fluid pockets at 0.8 (flagged at 0.5);
    family b: faint lacunes at 0.6 (found at 0.5 only). Pooled F1 and the worst family alike want 0.5, where
    every lacune-free subject of family a is flagged; under a cap on the flagged share the point moves to
    0.9, the best that flags none."""
    shape = (30, 30, 20)

    def case(p_lesion: float | None, p_pocket: float | None, family: str) -> ValidationCase:
        p = np.full(shape, 0.01, np.float32)
        ref = np.zeros(shape, np.float32)
        if p_lesion is not None:
            p[5:9, 5:9, 5:9], ref[5:9, 5:9, 5:9] = p_lesion, 1.0
        if p_pocket is not None:
            p[20:24, 20:24, 10:14] = p_pocket
        return ValidationCase(*validation_case(p, ref), family=family)

    cases = ([case(0.95, None, "a") for _ in range(3)] + [case(None, 0.8, "a") for _ in range(3)]
             + [case(0.6, None, "b") for _ in range(3)] + [case(None, None, "b") for _ in range(3)])
    kwargs = dict(thresholds=(0.5, 0.9), volumes=(0.0,), extents=(), progress=False)
    op, _, scores = choose_operating_point(cases, worst_family=True, **kwargs)
    by_t = {s.threshold: s for s in scores}
    assert by_t[0.5].flagged == 3 and by_t[0.5].lacune_free == 6 and by_t[0.9].flagged == 0
    assert by_t[0.5].worst_family_f1 == pytest.approx(2 * 3 / (3 + 6))  # family a: 3 TP, 3 FP
    assert by_t[0.9].worst_family_f1 == 0.0  # family b: nothing found
    assert op.threshold == 0.5
    capped, _, _ = choose_operating_point(cases, worst_family=True, max_flagged_share=0.05, **kwargs)
    assert capped.threshold == 0.9
