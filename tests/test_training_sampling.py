import numpy as np
import pytest
from scipy import ndimage as ndi

from lacunes.training.config import TrainConfig
from lacunes.training.data import CropDataset, TrainingSubject
from lacunes.training.sampling import Candidates, CropKind, CropShares, crop_at, false_positive_centres

from .conftest import make_subject_arrays


def subject_arrays(seed=0):
    """A brain-like blob with one small and one large lesion (3×X×Y×Z image, instance map)."""
    images, _ = make_subject_arrays((48, 44, 24), seed, lesions=())
    image = np.stack([images[m] for m in ("T1", "T2", "FLAIR")])
    idx = np.indices(image.shape[1:])
    small = ((idx - np.array([16, 22, 12])[:, None, None, None]) ** 2).sum(0) <= 1
    large = ((idx - np.array([30, 22, 12])[:, None, None, None]) ** 2).sum(0) <= 16
    instances = np.zeros(image.shape[1:], np.int32)
    instances[small], instances[large] = 1, 2
    return image, instances


def test_edge_and_fluid_candidates_lie_where_they_should():
    image, instances = subject_arrays()
    # fluid-like: dark T1, bright T2, inside the brain
    image[0, 22:25, 10:13, 10:13] = 50
    image[1, 22:25, 10:13, 10:13] = 2000
    c = Candidates.from_arrays(image, instances, edge_mm=3.0)
    brain = (image != 0).any(0)
    depth = ndi.distance_transform_edt(np.pad(brain, 1))[1:-1, 1:-1, 1:-1]
    edge = np.unravel_index(c.edge, brain.shape)
    assert brain[edge].all() and (depth[edge] <= 3).all()
    fluid = np.unravel_index(c.fluid, brain.shape)
    assert (depth[fluid] > 3).all()
    assert (image[0][fluid] <= np.quantile(image[0][brain], 0.25)).all()
    assert (image[1][fluid] >= np.quantile(image[1][brain], 0.75)).all()
    assert np.ravel_multi_index((23, 11, 11), brain.shape) in set(c.fluid.tolist())
    assert c.brain.size == brain.sum() and len(c.lesions) == 2


def test_lesion_instances_are_drawn_uniformly_whatever_their_size():
    image, instances = subject_arrays()
    c = Candidates.from_arrays(image, instances)
    rng = np.random.default_rng(0)
    hits = [instances[tuple(c.draw(CropKind.LESION, rng)[0])] for _ in range(2000)]
    small_share = np.mean(np.array(hits) == 1)
    assert (instances == 2).sum() > 10 * (instances == 1).sum()
    assert 0.45 < small_share < 0.55


def test_hard_centres_are_used_when_mined_and_fall_back_to_fluid_otherwise():
    image, instances = subject_arrays()
    c = Candidates.from_arrays(image, instances)
    rng = np.random.default_rng(1)
    centre, kind = c.draw(CropKind.HARD, rng)
    assert kind == CropKind.FLUID
    c.hard = np.array([[10, 10, 10]])
    for _ in range(50):
        centre, kind = c.draw(CropKind.HARD, rng, hard_jitter=2)
        assert kind == CropKind.HARD and np.abs(centre - 10).max() <= 2
    empty = Candidates.from_arrays(image, np.zeros_like(instances))
    assert empty.draw(CropKind.LESION, rng)[1] == CropKind.FLUID


def test_mimic_centres_come_from_a_phantoms_record_and_fall_back_to_fluid_without_one():
    image, instances = subject_arrays()
    c = Candidates.from_arrays(image, instances)
    rng = np.random.default_rng(2)
    assert c.draw(CropKind.MIMIC, rng)[1] == CropKind.FLUID  # real data: no record
    c.mimics = np.array([[12, 14, 9]])
    for _ in range(50):
        centre, kind = c.draw(CropKind.MIMIC, rng, mimic_jitter=3)
        assert kind == CropKind.MIMIC and np.abs(centre - [12, 14, 9]).max() <= 3
    # without mimic crops, the kinds are drawn as before the mimic kind existed (it comes last)
    kinds, p = CropShares(0.4, 0.2, 0.1, 0.1).probabilities()
    assert kinds[-1] == CropKind.MIMIC and p[-1] == 0 and p[4] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="mimic"):
        CropShares(0.5, 0.2, 0.1, 0.1, mimic=0.2)


def test_generated_phantoms_give_their_mimics_as_crop_centres():
    from lacunes.synthetic import MimicConfig, SynthConfig
    from lacunes.training.config import SMOKE
    from lacunes.training.generated import generated_subject

    subject = generated_subject(2028, 1, SMOKE, SynthConfig(mimics=MimicConfig(pockets=(3, 3))))
    mimics = subject.candidates.mimics
    assert len(mimics) >= 4 + 8  # the default perivascular spaces and the added ones at least
    assert subject.label[0][tuple(mimics.T)].sum() == 0  # never on a lacune


def test_crop_at_keeps_the_box_inside_and_pads_small_volumes():
    a = np.arange(2 * 10 * 12 * 6).reshape(2, 10, 12, 6).astype(np.float32)
    out = crop_at(a, np.array([0, 11, 3]), (4, 4, 4))
    np.testing.assert_array_equal(out, a[:, 0:4, 8:12, 1:5])
    padded = crop_at(a, np.array([5, 5, 3]), (4, 4, 8))
    assert padded.shape == (2, 4, 4, 8) and (padded[:, :, :, 6:] == 0).all()


def test_false_positive_centres_skip_components_on_a_label():
    prob = np.zeros((30, 30, 30), np.float32)
    prob[3:6, 3:6, 3:6] = 0.7  # false positive
    prob[20:23, 20:23, 20:23] = 0.9  # false positive, higher
    prob[10:13, 10:13, 10:13] = 0.95  # on the lesion
    label = np.zeros_like(prob, np.uint8)
    label[11, 11, 11] = 1
    centres = false_positive_centres(prob, label)
    np.testing.assert_array_equal(centres, [[21, 21, 21], [4, 4, 4]])
    assert false_positive_centres(np.zeros_like(prob), label).shape == (0, 3)


def test_crop_shares_are_checked_and_followed():
    with pytest.raises(ValueError, match="sum to at most 1"):
        CropShares(0.5, 0.3, 0.3, 0.0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        TrainConfig(pos_fraction=0.5, edge_fraction=0.6)
    image, instances = subject_arrays()
    cfg = TrainConfig(crop_size=(16, 16, 8), crops_per_subject=4, pos_fraction=0.4, edge_fraction=0.3,
                      fluid_fraction=0.1, flip_prob=0.0, noise_prob=0.0, affine_prob=0.0)
    s = TrainingSubject("sub-1", image, (instances > 0)[None].astype(np.uint8), instances[None], 2)
    ds = CropDataset([s], cfg, seed=3)
    lesion_centred = 0
    for _ in range(150):
        for crop in ds[0]:
            assert crop["image"].shape == (3, 16, 16, 8) and crop["label"].shape == (1, 16, 16, 8)
            lesion_centred += int(crop["label"][0, 8, 8, 4] > 0)
    n = sum(ds.kind_counts.values())
    assert n == 600
    assert abs(ds.kind_counts["lesion"] / n - 0.4) < 0.06 and abs(ds.kind_counts["edge"] / n - 0.3) < 0.06
    assert ds.kind_counts["hard"] == 0  # nothing mined: hard falls back to fluid
    # lesion crops are centred on a lesion voxel (the box stays inside the volume, so the centre
    # voxel is the drawn one here: lesions lie away from the border)
    assert lesion_centred >= ds.kind_counts["lesion"]
