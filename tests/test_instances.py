import numpy as np
import pytest

from lacunes.instances import bounding_box, label_instances, lesion_table
from lacunes.preprocessing import brain_mask


def test_lesion_table_centres_are_in_scanner_ras_coordinates():
    prob = np.zeros((30, 20, 10), np.float32)
    prob[10, 4, 2] = 0.9  # one voxel
    prob[20:23, 10:13, 5:8] = 0.7  # 27 voxels, centre (21, 11, 6)
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # x and y swapped
    rows = lesion_table(prob, None, (1.0, 2.0, 3.0), (5.0, 6.0, 7.0), direction=direction)
    by_size = sorted(rows, key=lambda r: r["voxels"])
    assert [r["voxels"] for r in by_size] == [1, 27]
    # LPS origin + D · (index × spacing): index (10, 4, 2) → (10, 8, 6) mm → swapped (8, 10, 6) → LPS (13, 16, 13)
    # → RAS (-13, -16, 13); (21, 11, 6) → (22, 21, 18) → LPS (27, 27, 25) → RAS (-27, -27, 25)
    def centre(row):
        return row["centre_R_mm"], row["centre_A_mm"], row["centre_S_mm"]

    assert centre(by_size[0]) == (-13.0, -16.0, 13.0)
    assert centre(by_size[1]) == (-27.0, -27.0, 25.0)
    assert by_size[1]["volume_mm3"] == 27 * 6.0 and by_size[1]["max_probability"] == pytest.approx(0.7)
    plain = lesion_table(prob, None, (1.0, 2.0, 3.0), (5.0, 6.0, 7.0))
    assert sorted(r["centre_R_mm"] for r in plain) == [-26.0, -15.0]
    assert lesion_table(np.zeros((4, 4, 4), np.float32), None, (1.0, 1.0, 1.0)) == []


def test_lesions_are_numbered_by_size_with_their_mean_probability():
    prob = np.zeros((30, 20, 10), np.float32)
    prob[1, 1, 1] = 0.9  # first in the array, smallest
    prob[20:23, 10:13, 5:8] = 0.7  # 27 voxels
    prob[20:23, 10:13, 5] = 0.9
    prob[5:7, 15:17, 2:4] = 0.6  # 8 voxels
    rows = lesion_table(prob, None, (1.0, 1.0, 1.0))
    assert [(r["id"], r["voxels"]) for r in rows] == [(1, 27), (2, 8), (3, 1)]
    assert rows[0]["mean_probability"] == pytest.approx((9 * 0.9 + 18 * 0.7) / 27)
    assert rows[0]["max_probability"] == pytest.approx(0.9)


def test_brain_mask_in_a_large_empty_field_of_view_equals_the_mask_of_the_brain_alone():
    rng = np.random.default_rng(2)
    small = np.zeros((3, 30, 28, 20), np.float32)
    idx = np.indices(small.shape[1:])
    ball = (((idx - np.array([15, 14, 10])[:, None, None, None]) / np.array([12, 11, 8])[:, None, None, None]) ** 2
            ).sum(0) < 1
    small[:, ball] = rng.uniform(50, 150, size=(3, int(ball.sum())))
    small[:, 14:17, 13:16, 9:12] = 0  # a dark hole inside
    big = np.zeros((3, 60, 50, 40), np.float32)
    big[:, 10:40, 12:40, 5:25] = small
    mask = brain_mask(big)
    assert mask[10:40, 12:40, 5:25].sum() == mask.sum()
    np.testing.assert_array_equal(mask[10:40, 12:40, 5:25], brain_mask(small))
    assert mask[24:27, 25:28, 14:17].all()  # the hole is filled
    box = bounding_box(mask)
    assert all(b.start >= lo and b.stop <= hi for b, (lo, hi) in zip(box, ((10, 40), (12, 40), (5, 25))))
    assert label_instances(mask)[1] == 1


def test_lesion_centres_are_scipys_centres_of_mass_to_the_last_bit():
    from scipy import ndimage as ndi

    from lacunes.instances import label_instances, lesion_centres_mm

    rng = np.random.default_rng(3)
    mask = rng.random((41, 37, 29)) > 0.85
    labels, n = label_instances(mask)
    assert n > 20
    spacing = (0.9, 1.1, 3.0)
    expected = np.array(ndi.center_of_mass(np.ones(labels.shape, np.uint8), labels, np.arange(1, n + 1)))
    np.testing.assert_array_equal(lesion_centres_mm(labels, n, spacing), expected * np.asarray(spacing))
    assert lesion_centres_mm(np.zeros((4, 4, 4), np.int32), 0, spacing).shape == (0, 3)


def test_the_centres_of_a_subset_of_labels_are_scipys_too():
    from scipy import ndimage as ndi

    from lacunes.instances import label_centres, label_instances

    labels, n = label_instances(np.random.default_rng(4).random((30, 26, 20)) > 0.85)
    some = np.array([n, 3, 1, 7])  # any order
    expected = np.array(ndi.center_of_mass(np.ones(labels.shape, np.float32), labels, some))
    np.testing.assert_array_equal(label_centres(labels, some), expected)
    assert label_centres(labels, []).shape == (0, 3)
