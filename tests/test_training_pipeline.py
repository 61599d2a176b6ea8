import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lacunes.instances import label_instances
from lacunes.training.config import TrainConfig
from lacunes.training.data import TrainingSubject
from lacunes.training.pipeline import (
    DeviceBatcher,
    FolderSource,
    affine_theta,
    crop_tensor,
    hold,
    rotation_scaling,
)
from lacunes.training.sampling import Candidates, crop_at

from .test_training_sampling import subject_arrays

NO_AUGMENTATION = dict(flip_prob=0.0, affine_prob=0.0, noise_prob=0.0)


def training_subject(seed=0, sid="sub-001"):
    image, instances = subject_arrays(seed)
    label = (instances > 0).astype(np.uint8)
    return TrainingSubject(sid, image.astype(np.float32) / 1000, label[None], instances[None], int(instances.max()),
                           Candidates.from_arrays(image, instances, seed=seed))


def config(**changes):
    return TrainConfig(crop_size=(24, 20, 12), batch_size=2, crops_per_subject=2, **changes)


def test_device_crops_are_the_array_crops_inside_and_cut_at_the_end():
    array = np.random.default_rng(0).random((2, 30, 26, 10)).astype(np.float32)
    tensor = torch.from_numpy(array)
    for centre in ([0, 0, 0], [15, 13, 5], [29, 25, 9], [3, 24, 8]):
        for size in ((16, 16, 8), (32, 20, 16)):  # inside; larger than the volume along x and z
            got = crop_tensor(tensor, np.array(centre), size)
            assert got.shape[1:] == tuple(min(s, n) for s, n in zip(size, array.shape[1:]))
            want = crop_at(array, np.array(centre), size)  # zero-padded at the end where the volume is smaller
            np.testing.assert_array_equal(got.numpy(), want[(slice(None), *(slice(0, n) for n in got.shape[1:]))])
    assert crop_tensor(torch.ones(1, 4, 4, 4, dtype=torch.uint8), np.array([2, 2, 2]), (6, 4, 4)).dtype == torch.uint8


def test_affine_parameters_move_voxels_as_the_voxel_space_matrix_says():
    x = torch.arange(16 * 12 * 8, dtype=torch.float32).reshape(1, 1, 16, 12, 8)

    def warp(matrix, size):
        theta = torch.as_tensor(affine_theta(matrix[None], size), dtype=torch.float32)
        grid = F.affine_grid(theta, [1, 1, *size], align_corners=True)
        return F.grid_sample(x[..., : size[0], : size[1], : size[2]], grid, mode="nearest", align_corners=True)

    assert torch.equal(warp(np.eye(3), (16, 12, 8)), x)
    # scaling x by 2 (output → input): out[i] = in[c + 2 (i - c)], c = 7 on 15 voxels; zeros outside
    out = warp(np.diag([2.0, 1.0, 1.0]), (15, 12, 8))[0, 0]
    for i in range(4, 11):
        assert torch.equal(out[i], x[0, 0, 7 + 2 * (i - 7)])
    assert out[0].abs().sum() == 0 and out[14].abs().sum() == 0
    # a quarter turn about z on a square x–y section: input (x', y') = (-y, x) about the centre
    square = (12, 12, 8)
    out = warp(rotation_scaling(np.array([0.0, 0.0, np.pi / 2]), np.ones(3)), square)[0, 0]
    ref = x[0, 0, :12, :12]
    for i, j, k in ((0, 0, 0), (3, 7, 5), (11, 2, 7)):
        assert out[i, j, k] == ref[int(5.5 - (j - 5.5)), int(5.5 + (i - 5.5)), k]


def test_batches_have_the_recipe_shapes_and_lesion_share():
    subjects = [hold(training_subject(k, f"sub-{k:03d}"), torch.device("cpu")) for k in range(2)]
    cfg = config(pos_fraction=0.95, **NO_AUGMENTATION)
    batcher = DeviceBatcher(cfg, "cpu", seed=0)
    batch = batcher(subjects)
    assert batch["image"].shape == (4, 3, 24, 20, 12) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == batch["instances"].shape == (4, 1, 24, 20, 12)
    with_lesion = 0
    for _ in range(100):
        with_lesion += int((batcher(subjects)["label"].flatten(1).amax(1) > 0).sum())
    counts = batcher.kind_counts
    assert counts["lesion"] / sum(counts.values()) == pytest.approx(0.95, abs=0.03)
    assert with_lesion >= counts["lesion"] - 4  # every lesion-centred crop holds its lesion


def test_the_same_seed_gives_the_same_augmented_batches_and_another_seed_others():
    subjects = [hold(training_subject(k, f"sub-{k:03d}"), torch.device("cpu")) for k in range(2)]
    cfg = config(affine_prob=0.5, noise_prob=0.5)
    a, b, c = (DeviceBatcher(cfg, "cpu", seed=s) for s in (3, 3, 4))
    for _ in range(3):
        x, y, z = a(subjects), b(subjects), c(subjects)
        for key in x:
            assert torch.equal(x[key], y[key])
        assert not torch.equal(x["image"], z["image"])
    d = DeviceBatcher(cfg, "cpu", seed=3)
    d.set_epoch(1)  # where a run resumed at epoch 1 starts
    a.set_epoch(1)
    x, y = a(subjects), d(subjects)
    assert all(torch.equal(x[key], y[key]) for key in x)


def test_label_instances_and_image_stay_aligned_through_flips_and_the_affine():
    s = training_subject()
    s.image = np.repeat(s.label.astype(np.float32), 3, 0)  # the image is the label: alignment shows
    cfg = config(pos_fraction=1.0, flip_prob=0.5, affine_prob=1.0, noise_prob=0.0, rotate_rad=0.4, scale=0.2)
    batcher = DeviceBatcher(cfg, "cpu", seed=1)
    held = [hold(s, torch.device("cpu"))]
    agree, total = 0, 0
    for _ in range(10):
        batch = batcher(held)
        label, instances, image = batch["label"], batch["instances"], batch["image"]
        assert torch.equal(label > 0, instances > 0)  # the same nearest-neighbour lookup
        assert set(instances.unique().tolist()) <= {0, 1, 2}  # ids are not blended
        assert torch.equal(image[:, 0], image[:, 2])
        lesion = label[:, 0] > 0
        agree += int(((image[:, 0] >= 0.5) == lesion).sum())
        total += lesion.numel()
        for crop in instances[:, 0].numpy():  # an instance stays in one piece (or is cut by the border)
            _, n = label_instances(crop > 0)
            assert n <= 2
    assert agree / total > 0.99


def test_noise_is_gaussian_with_a_level_up_to_the_recipes():
    s = training_subject()
    cfg = config(flip_prob=0.0, affine_prob=0.0, noise_prob=1.0, noise_std=0.05)
    batcher = DeviceBatcher(cfg, "cpu", seed=2)
    clean = DeviceBatcher(config(**NO_AUGMENTATION), "cpu", seed=2)
    held = [hold(s, torch.device("cpu"))]
    stds = []
    for _ in range(20):
        stds += (batcher(held)["image"] - clean(held)["image"]).flatten(1).std(1).tolist()
    assert max(stds) <= 0.05 * 1.05 and min(stds) >= 0
    assert np.mean(stds) == pytest.approx(0.025, abs=0.008)  # U(0, 0.05)


def test_folder_source_draws_each_subject_once_per_epoch():
    held = [hold(training_subject(k, f"sub-{k:03d}"), torch.device("cpu")) for k in range(3)]
    source = FolderSource(held, batch_size=2, batches_per_epoch=None, seed=0)
    seen = [h.subject.subject_id for batch in source.epoch(0) for h in batch]
    assert sorted(seen) == ["sub-000", "sub-001", "sub-002"]
    assert [h.subject.subject_id for b in source.epoch(0) for h in b] == seen
    assert [h.uses for h in held] == [2, 2, 2]


def test_channel_dropout_zeroes_the_missing_contrasts_of_its_crops_and_leaves_the_rest_as_without_it():
    subjects = [hold(training_subject(k, f"sub-{k:03d}"), torch.device("cpu")) for k in range(2)]
    plain = DeviceBatcher(config(noise_prob=1.0), "cpu", seed=5)
    dropped = DeviceBatcher(config(noise_prob=1.0, channel_dropout=(("T1+FLAIR", 0.5), ("T2+FLAIR", 0.25))), "cpu", seed=5)
    assert dropped.config.input_sets == ["T1+T2+FLAIR", "T1+FLAIR", "T2+FLAIR"]
    full_seen = 0
    for _ in range(30):
        x, y = plain(subjects), dropped(subjects)
        assert torch.equal(x["label"], y["label"]) and torch.equal(x["instances"], y["instances"])
        for i in range(x["image"].shape[0]):
            zero = [c for c in range(3) if not y["image"][i, c].any()]
            assert zero in ([], [1], [0])  # all three, no T2, no T1 (exact zeros, after the noise)
            kept = [c for c in range(3) if c not in zero]
            assert torch.equal(x["image"][i, kept], y["image"][i, kept])
            full_seen += not zero
    counts = dropped.set_counts
    assert sum(counts.values()) == 120 and counts["T1+T2+FLAIR"] == full_seen
    assert 35 <= counts["T1+FLAIR"] <= 85 and 12 <= counts["T2+FLAIR"] <= 50 and 12 <= full_seen <= 50


def test_the_contrast_curve_keeps_each_crops_range_and_order_and_leaves_the_other_augmentations_alone():
    subjects = [hold(training_subject(k, f"sub-{k:03d}"), torch.device("cpu")) for k in range(2)]
    plain = DeviceBatcher(config(**NO_AUGMENTATION), "cpu", seed=6)
    curved = DeviceBatcher(config(**NO_AUGMENTATION, gamma_prob=0.5, gamma=(0.5, 0.5)), "cpu", seed=6)
    changed = 0
    for _ in range(10):
        x, y = plain(subjects), curved(subjects)
        assert torch.equal(x["label"], y["label"]) and torch.equal(x["instances"], y["instances"])
        for a, b in zip(x["image"], y["image"]):
            if torch.equal(a, b):
                continue
            changed += 1
            assert torch.allclose(b.min(), a.min()) and torch.allclose(b.max(), a.max(), atol=1e-5)
            scaled = (a - a.min()) / (a.max() - a.min())
            assert torch.allclose((b - a.min()) / (a.max() - a.min()), scaled.sqrt(), atol=1e-4)  # x ** 0.5
            assert bool((b >= a - 1e-6).all())  # g < 1 lifts the dark end
    assert 5 <= changed <= 35  # about half of 40 crops


def test_a_contrast_curve_needs_a_probability_and_a_positive_range():
    with pytest.raises(ValueError, match="gamma"):
        config(gamma_prob=1.5)
    with pytest.raises(ValueError, match="gamma"):
        config(gamma=(0.0, 1.0))
