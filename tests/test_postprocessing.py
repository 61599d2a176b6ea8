import math

import numpy as np
import pytest
import torch

from lacunes.checkpoint import save_checkpoint
from lacunes.geometry import Geometry
from lacunes.inference import Predictor
from lacunes.io import Subject
from lacunes.network import build_network
from lacunes.operating_point import uncertain_share
from lacunes.postprocessing import (
    RAW,
    OperatingPoint,
    extent_regions,
    finish_probability,
    recalibrate,
    remove_small_lesions,
)
from lacunes.preprocessing import brain_mask
from lacunes.settings import InferenceSettings

from .conftest import TINY


class LogitOf(torch.nn.Module):
    """The network's logit is the first input channel (a known probability map)."""

    def forward(self, x):
        return x[:, :1]


def settings():
    return InferenceSettings(roi_size=(16, 16, 16), overlap=0.0, tta="none", progress=False, device="cpu")


def logit(p):
    return math.log(p / (1 - p))


def test_recalibration_is_monotone_and_sends_the_threshold_to_one_half():
    p = torch.linspace(0, 1, 1001)
    for t in (0.2, 0.5, 0.83):
        q = recalibrate(p, t)
        assert (torch.diff(q) >= 0).all()
        assert q[0] == 0 and q[-1] == 1
        assert torch.equal(q >= 0.5, p >= t)


def test_small_lesions_are_removed_by_physical_volume():
    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:4, 2:4, 2:4] = 0.9  # 8 voxels
    prob[10:14, 10:14, 10:14] = 0.8  # 64 voxels
    out, removed = remove_small_lesions(prob, 10.0, (1.0, 1.0, 1.0))
    assert removed == 1 and out[2:4, 2:4, 2:4].max() == 0 and out[10:14, 10:14, 10:14].min() == 0.8
    out, removed = remove_small_lesions(prob, 10.0, (1.0, 1.0, 2.0))  # 8 voxels of 2 mm³ = 16 mm³: kept
    assert removed == 0 and out is prob


def test_operating_point_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="threshold"):
        OperatingPoint(threshold=1.0)
    with pytest.raises(ValueError, match="min_volume"):
        OperatingPoint(min_volume_mm3=-1)
    with pytest.raises(ValueError, match="extent_threshold"):
        OperatingPoint(0.8, extent_threshold=0.9)
    op = OperatingPoint(0.8, 12.0, True)
    assert OperatingPoint.from_dict({**op.to_dict(), "chosen_on": {"x": 1}}) == op
    assert OperatingPoint.from_dict(None) == OperatingPoint()
    op = OperatingPoint(0.8, 12.0, True, 0.4)
    assert OperatingPoint.from_dict(op.to_dict()) == op and op.extent == 0.4 and OperatingPoint(0.8).extent == 0.8


def validation_case(p, ref):
    """One case as :func:`choose_operating_point` takes it: 1 mm voxels, no image, the whole volume brain."""
    return p, None, ref, (1.0, 1.0, 1.0), np.ones(p.shape, bool)


def soft_lesions(shape=(30, 30, 16)):
    """A lesion with a confident core and a softer rim, and a soft region with no core."""
    p = np.full(shape, 0.02, np.float32)
    p[4:11, 4:11, 4:11] = 0.7  # rim
    p[6:9, 6:9, 6:9] = 0.97  # core
    p[18:24, 18:24, 4:10] = 0.7  # a soft region alone
    return p


def test_a_detected_lesion_extends_over_its_softer_rim_and_nothing_else_does():
    p = soft_lesions()
    region = extent_regions(p, 0.95, 0.6)
    assert region.sum() == 7 ** 3 and region[4:11, 4:11, 4:11].all()
    plain, stats, t, _ = finish_probability(p, OperatingPoint(0.95, 0.0, False), None, (1.0, 1.0, 1.0))
    assert (plain >= 0.5).sum() == 27 and stats["extended_voxels"] == 0 and t == 0.95
    grown, stats, t, _ = finish_probability(p, OperatingPoint(0.95, 0.0, False, 0.6), None, (1.0, 1.0, 1.0))
    assert (grown >= 0.5).sum() == 7 ** 3 and stats["extended_voxels"] == 7 ** 3 - 27
    assert (grown[18:24, 18:24, 4:10] < 0.5).all()  # no core: judged against 0.95
    assert t[5, 5, 5] == pytest.approx(0.6) and t[20, 20, 5] == pytest.approx(0.95)
    np.testing.assert_allclose(grown[5, 5, 5], 0.5 + 0.5 * (0.7 - 0.6) / 0.4, atol=1e-6)
    np.testing.assert_allclose(grown[20, 20, 5], 0.5 * 0.7 / 0.95, atol=1e-6)


def test_predictor_centres_the_uncertainty_on_the_threshold_each_voxel_was_judged_against():
    p = soft_lesions()
    x = np.stack([np.log(p / (1 - p))] * 3).astype(np.float32)
    prob, unc = Predictor(LogitOf(), settings(), operating_point=OperatingPoint(0.95, 0.0, False, 0.6)
                          ).predict_normalized(x)
    assert (prob[4:11, 4:11, 4:11] >= 0.5).all()
    # rim: |logit(0.7) − logit(0.6)| < 1 → 1; the lone soft region against 0.95: |logit(0.7) − logit(0.95)| ≈ 2.1
    assert unc[5, 5, 5] == pytest.approx(1.0)
    assert unc[20, 20, 5] == pytest.approx(1 / abs(logit(0.7) - logit(0.95)), rel=1e-4)


def test_the_uncertain_share_is_that_of_the_written_uncertainty_map():
    p = soft_lesions()
    p[25:28, 2:5, 2:5] = 0.3  # within two logits of 0.6, not of 0.95
    x = np.stack([np.log(p / (1 - p))] * 3).astype(np.float32)
    for op in (OperatingPoint(0.95, 0.0, False), OperatingPoint(0.95, 0.0, False, 0.6), OperatingPoint(0.5)):
        _, unc = Predictor(LogitOf(), settings(), operating_point=op).predict_normalized(x)
        t = finish_probability(p, op, None, (1.0, 1.0, 1.0)).threshold
        assert uncertain_share(p, t, None) == pytest.approx(float((unc >= 0.5).mean()), abs=1e-6)
    mask = np.zeros(p.shape, bool)
    mask[:15] = True
    rejected = np.zeros(p.shape, bool)
    rejected[0, 0, 0] = True  # background, certain: counted once rejected (uncertainty 1)
    assert uncertain_share(p, 0.95, mask) == pytest.approx(3 ** 3 / mask.sum())  # the core only
    assert uncertain_share(p, 0.95, mask, rejected) == pytest.approx((3 ** 3 + 1) / mask.sum())


def test_predictor_writes_the_operating_point_into_the_map():
    shape = (24, 24, 16)
    p = np.full(shape, 0.1, np.float32)
    p[4:7, 4:7, 4:7] = 0.7  # 27 voxels, below the threshold
    p[12:18, 12:18, 6:12] = 0.9  # 216 voxels, above it
    p[20:22, 20:22, 2:4] = 0.95  # 8 voxels, too small
    x = np.stack([np.log(p / (1 - p))] * 3).astype(np.float32)
    op = OperatingPoint(0.8, 10.0, False)
    prob, unc = Predictor(LogitOf(), settings(), operating_point=op).predict_normalized(x)
    assert (prob[4:7, 4:7, 4:7] < 0.5).all()
    assert (prob[12:18, 12:18, 6:12] >= 0.5).all()
    assert prob[20:22, 20:22, 2:4].max() == 0
    np.testing.assert_allclose(prob[12, 12, 6], 0.5 + 0.5 * (0.9 - 0.8) / 0.2, atol=1e-5)
    # uncertainty centred on the operating point: |logit(0.9) - logit(0.8)| < 1 → 1
    assert unc[12, 12, 6] == pytest.approx(1.0) and unc[0, 0, 0] < 0.5
    raw, _ = Predictor(LogitOf(), settings(), operating_point=RAW).predict_normalized(x)
    np.testing.assert_allclose(raw, p, atol=1e-5)


def test_maps_are_zero_outside_the_brain_and_an_empty_scan_has_no_lesion():
    class Half(torch.nn.Module):  # undecided everywhere, the empty background included
        def forward(self, x):
            return torch.zeros_like(x[:, :1])

    shape = (20, 20, 12)
    image = np.zeros((3, *shape), np.float32)
    image[:, 5:15, 5:15, 3:9] = 100.0
    subject = Subject("sub-1", image, Geometry(shape))
    prob, unc = Predictor(Half(), settings()).predict(subject)
    inside = brain_mask(image)
    assert inside.sum() == 10 * 10 * 6
    assert (prob[~inside] == 0).all() and (unc[~inside] == 0).all()
    assert (prob[inside] == 0.5).all() and (unc[inside] == 1).all()
    prob, unc = Predictor(Half(), settings()).predict(Subject("sub-0", np.zeros((3, *shape), np.float32),
                                                              Geometry(shape)))
    assert prob.max() == 0 and unc.max() == 0


def test_constant_modalities_and_empty_scans_are_named(caplog):
    shape = (12, 12, 8)
    image = np.zeros((3, *shape), np.float32)
    image[0, 3:9, 3:9, 2:6] = 50.0
    image[2] = 7.0
    Predictor(LogitOf(), settings()).predict(image)
    assert "T2 is constant (0 everywhere)" in caplog.text and "FLAIR is constant (7 everywhere)" in caplog.text
    assert "T1 is constant" not in caplog.text
    Predictor(LogitOf(), settings()).predict(np.zeros((3, *shape), np.float32))
    assert "holds no brain" in caplog.text


def test_brain_mask_fills_holes_and_drops_noise_outside():
    rng = np.random.default_rng(0)
    image = np.zeros((3, 40, 40, 30), np.float32)
    idx = np.indices((40, 40, 30))
    brain = ((idx - np.array([20, 20, 15])[:, None, None, None]) ** 2).sum(0) < 12**2
    image[:, brain] = 500 + rng.normal(0, 20, (3, brain.sum()))
    image[:, 18:23, 18:23, 13:18] = 0  # a cavity at zero in all channels
    image[1, 1, 1, 1] = 400  # an isolated bright voxel outside
    image[:, 30:34, 2:4, 2:4] = 3.0  # faint background noise
    mask = brain_mask(image)
    assert mask[brain].all() and mask[20, 20, 15]
    assert not mask[1, 1, 1] and not mask[31, 3, 3]
    assert mask.sum() - brain.sum() < 0.02 * brain.sum()
    assert not brain_mask(np.zeros((3, 8, 8, 8), np.float32)).any()
    with pytest.raises(ValueError, match="C×X×Y×Z"):
        brain_mask(np.zeros((8, 8, 8)))


def test_checkpoint_operating_point_is_read_back_and_overridden(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_network(TINY), TINY, {"operating_point": {"threshold": 0.8, "min_volume_mm3": 15.0,
                                                                           "mask_outside_brain": True}})
    p = Predictor.from_checkpoint(path, settings())
    assert p.release.operating_point == OperatingPoint(0.8, 15.0, True)
    p = Predictor.from_checkpoint(path, settings(), threshold=0.6, min_volume_mm3=0)
    assert p.release.operating_point == OperatingPoint(0.6, 0.0, True)
    save_checkpoint(path, build_network(TINY), TINY, {"operating_point": {"threshold": 0.9, "extent_threshold": 0.6}})
    assert Predictor.from_checkpoint(path, settings()).release.operating_point == OperatingPoint(0.9, extent_threshold=0.6)
    assert Predictor.from_checkpoint(path, settings(), threshold=0.7).release.operating_point.extent_threshold == 0.6
    assert Predictor.from_checkpoint(path, settings(), threshold=0.5).release.operating_point == OperatingPoint(0.5)
    save_checkpoint(path, build_network(TINY), TINY, {})
    assert Predictor.from_checkpoint(path, settings()).release.operating_point == OperatingPoint()


def test_operating_point_overrides_drop_an_extent_that_no_longer_lies_under_the_threshold():
    op = OperatingPoint(0.9, 10.0, True, extent_threshold=0.5)
    assert op.with_overrides() == op
    assert op.with_overrides(0.7) == OperatingPoint(0.7, 10.0, True, extent_threshold=0.5)
    assert op.with_overrides(0.4, 0.0) == OperatingPoint(0.4, 0.0, True, extent_threshold=None)


def test_rejected_candidates_are_described_as_scipy_measures_them():
    from scipy import ndimage as ndi

    from lacunes.instances import label_instances
    from lacunes.postprocessing import rejected_candidates

    rng = np.random.default_rng(5)
    prob = rng.random((30, 28, 20)).astype(np.float32)
    labels, n = label_instances(prob > 0.9)
    rejected = np.array([2, n, 5])
    scores = rng.random(n)
    rows = rejected_candidates(prob, labels, rejected, scores, (1.0, 1.0, 2.0))
    centres = ndi.center_of_mass(np.ones(labels.shape, np.float32), labels, rejected)
    expected = sorted(({"voxel": [round(float(v), 2) for v in c],
                        "volume_mm3": float(ndi.sum_labels(np.ones(labels.shape), labels, [k])[0]) * 2.0,
                        "max_probability": float(ndi.maximum(prob, labels, [k])[0]), "score": float(scores[k - 1])}
                       for k, c in zip(rejected, centres)), key=lambda r: -r["score"])
    assert rows == expected
    assert rejected_candidates(prob, labels, np.array([], int), scores, (1.0, 1.0, 2.0)) == []
