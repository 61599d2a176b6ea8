import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from lacunes.checkpoint import save_checkpoint
from lacunes.geometry import Geometry
from lacunes.inference import ModelInput, Predictor
from lacunes.io import Subject
from lacunes.network import build_network
from lacunes.operating_point import ValidationCase, choose_operating_point, prepare_case
from lacunes.options import RAS_DIRECTION
from lacunes.postprocessing import OperatingPoint, finish_probability
from lacunes.rescoring import (
    ALL_FEATURES,
    FEATURES,
    FLUID_RELATIVE_FEATURES,
    SCALE_FREE_FEATURES,
    EdgeDistance,
    Rescorer,
    candidate_features,
    candidate_targets,
)
from lacunes.settings import InferenceSettings

from .conftest import TINY


def sphere(shape, centre, r2):
    """The voxels of a volume of ``shape`` within squared distance ``r2`` of ``centre``."""
    idx = np.indices(shape)
    return ((idx - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= r2


def scene(seed=0):
    """A brain with a round fluid lesion (dark T1, bright T2) and a long thin tube of the same signal
    (a perivascular-space look-alike); the network is equally sure of both."""
    rng = np.random.default_rng(seed)
    shape = (48, 48, 40)
    image = np.zeros((3, *shape), np.float32)
    idx = np.indices(shape)
    brain = ((idx - np.array([24, 24, 20])[:, None, None, None]) ** 2).sum(0) < 20**2
    image[:, brain] = 0.6 + rng.normal(0, 0.02, (3, brain.sum()))
    ball = ((idx - np.array([18, 24, 20])[:, None, None, None]) ** 2).sum(0) <= 9
    tube = (np.abs(idx[0] - 30) <= 0) & (np.abs(idx[1] - 24) <= 0) & (np.abs(idx[2] - 20) <= 7)
    for lesion in (ball, tube):
        image[0][lesion], image[1][lesion], image[2][lesion] = 0.1, 1.0, 0.1
    prob = np.full(shape, 0.02, np.float32)
    prob[ball | tube] = 0.9
    reference = ball.astype(np.float32)
    return prob, image, brain, reference, ball, tube


def test_features_describe_shape_and_signal():
    prob, image, brain, reference, ball, tube = scene()
    labels, n, feats = candidate_features(prob, image, brain, (1.0, 1.0, 1.0), 0.5)
    assert n == 2 and feats.shape == (2, len(ALL_FEATURES))
    f = {name: feats[:, i] for i, name in enumerate(ALL_FEATURES)}
    k_ball = labels[18, 24, 20] - 1
    k_tube = 1 - k_ball
    assert f["log_elongation"][k_tube] > f["log_elongation"][k_ball] + 2
    assert f["t2_contrast"][k_ball] > 0.3 and f["t1_contrast"][k_ball] < -0.3
    assert np.exp(f["log_volume_mm3"][k_ball]) == pytest.approx(ball.sum())
    np.testing.assert_array_equal(candidate_targets(labels, n, reference)[[k_ball, k_tube]], [1, 0])


def test_fit_learns_to_reject_the_look_alike_and_round_trips():
    cases = [scene(seed) for seed in range(3)]
    feats, targets = [], []
    for prob, image, brain, reference, *_ in cases:
        labels, n, f = candidate_features(prob, image, brain, (1.0, 1.0, 1.0), 0.5)
        feats.append(f)
        targets.append(candidate_targets(labels, n, reference))
    r = Rescorer.fit(np.concatenate(feats), np.concatenate(targets), 0.5)
    assert Rescorer.from_dict({**r.to_dict(), "fit": {"note": 1}}) == r
    prob, image, brain, reference, ball, tube = cases[0]
    kept, stats, _, rejected_voxels = finish_probability(prob, OperatingPoint(0.5, 0.0, True), brain, (1.0, 1.0, 1.0),
                                                         r, image)
    assert (stats["candidates"], stats["rejected"]) == (2, 1) and (kept[tube] == 0).all()
    assert (kept[tube] < 0.5).all() and (kept[ball] >= 0.5).all()
    assert rejected_voxels[tube].all() and not rejected_voxels[ball].any()
    assert "rejected_candidates" not in stats  # described only when asked (the search scores thousands of maps)
    described = finish_probability(prob, OperatingPoint(0.5, 0.0, True), brain, (1.0, 1.0, 1.0), r, image,
                                   describe_rejected=True).stats["rejected_candidates"]
    (row,) = described
    centre = np.argwhere(tube).mean(0)
    assert np.allclose(row["voxel"], centre, atol=0.01) and row["volume_mm3"] == tube.sum()
    assert row["score"] < r.min_score and row["max_probability"] == pytest.approx(float(prob[tube].max()))
    assert r.features == SCALE_FREE_FEATURES and "t1" not in r.features
    with pytest.raises(ValueError, match="all positive or all negative"):
        Rescorer.fit(np.zeros((3, len(ALL_FEATURES))), np.ones(3), 0.5)
    with pytest.raises(ValueError, match="fitted on features"):
        Rescorer.from_dict({**r.to_dict(), "features": ["x"] * len(r.features)})
    # a second stage of the first feature set (the bundled model's) weighs its own columns alone
    v1 = Rescorer.fit(np.concatenate(feats), np.concatenate(targets), 0.5, names=FEATURES)
    x = np.concatenate(feats)
    z = (x[:, : len(FEATURES)] - np.asarray(v1.mean)) / np.asarray(v1.std)
    np.testing.assert_allclose(v1.score(x), 1 / (1 + np.exp(-(z @ np.asarray(v1.weights) + v1.bias))))
    # the search picks a cut that keeps the lesion and drops the tube
    val = [(p, img, ref, (1.0, 1.0, 1.0), b) for p, img, b, ref, *_ in cases]
    op, cut, scores = choose_operating_point(val, r, thresholds=(0.5,), volumes=(0.0,), min_scores=(0.0, 0.5),
                                             progress=False)
    assert cut == 0.5
    # each case prepared as calibrate prepares it when it reads it: copies of the brain's box alone (no view
    # keeps the case's arrays alive), the same choice and scores
    prepared = [prepare_case(ValidationCase(*v), r) for v in val]
    for c, v in zip(prepared, val):
        assert c.candidates[1] >= 1 and c.logits_inside.size == int(v[4].sum())
        assert not any(np.shares_memory(a, b) for a in (c.masked, c.reference, c.mask) for b in (v[0], v[2], v[4]))
    again = choose_operating_point(prepared, r, thresholds=(0.5,), volumes=(0.0,), min_scores=(0.0, 0.5),
                                   progress=False)
    assert again[:2] == (op, cut) and [s.to_dict() for s in again[2]] == [s.to_dict() for s in scores]


def test_the_fluid_a_candidate_joins_tells_a_horn_from_a_cavity_of_its_own():
    """Two equal fluid balls the network is sure of: one touches a large fluid space (a ventricle's horn),
    the other stands alone (a lacune), 2 voxels of tissue from the same space."""
    shape = (48, 48, 40)
    idx = np.indices(shape)

    brain = sphere(shape, (24, 24, 20), 21**2)
    ventricle = (np.abs(idx[0] - 24) <= 3) & (np.abs(idx[1] - 24) <= 10) & (np.abs(idx[2] - 20) <= 6)
    # the horn overlaps x <= 27, the cavity 5 voxels off
    horn, cavity = sphere(shape, (29, 20, 20), 4), sphere(shape, (13, 28, 20), 4)
    image = np.zeros((3, *shape), np.float32)
    image[:, brain] = 0.6 + np.random.default_rng(0).normal(0, 0.02, (3, brain.sum()))
    for fluid in (ventricle, horn, cavity):
        image[0][fluid], image[1][fluid], image[2][fluid] = 0.1, 1.0, 0.1
    prob = np.full(shape, 0.02, np.float32)
    prob[horn | cavity] = 0.9
    labels, n, feats = candidate_features(prob, image, brain, (1.0, 1.0, 1.0), 0.5)
    joined = feats[:, ALL_FEATURES.index("log_fluid_joined_mm3")]
    k_horn, k_cavity = labels[29, 20, 20] - 1, labels[13, 28, 20] - 1
    assert n == 2 and np.expm1(joined[k_cavity]) < 10  # the odd noisy voxel beside it
    assert np.expm1(joined[k_horn]) > 0.5 * (ventricle & ~horn).sum()


def test_a_checkpoint_with_a_second_stage_uses_it(tmp_path):
    prob, image, brain, reference, ball, tube = scene()
    r = Rescorer(tuple([0.0] * len(FEATURES)), -5.0, tuple([0.0] * len(FEATURES)), tuple([1.0] * len(FEATURES)))
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_network(TINY), TINY, {"rescorer": r.to_dict()})
    settings = InferenceSettings(roi_size=(16, 16, 16), tta="none", progress=False, device="cpu", backend="torch")
    predictor = Predictor.from_checkpoint(path, settings)
    assert predictor.release.rescorer == r

    class LogitOf(torch.nn.Module):
        def forward(self, x):
            return x[:, :1]

    predictor.stage.network = LogitOf()
    x = np.concatenate([np.log(prob / (1 - prob))[None], image[1:]]).astype(np.float32)
    out, unc = prediction = predictor.predict_normalized(x, brain)
    stats = prediction.stats
    assert out.max() < 0.5 and stats["rejected"] == stats["candidates"] == 2
    assert len(stats["rejected_candidates"]) == 2 and all("centre_ras_mm" not in c for c in stats["rejected_candidates"])
    # a subject (a grid in scanner space, in the model's orientation): the rejected candidates' centres
    # in scanner RAS mm too, as the lesion table's
    subject = Subject("sub-1", np.stack([image[0] * 0 + 100, image[1], image[2]]).astype(np.float32),
                      Geometry(brain.shape, (1.0, 1.0, 1.0), origin=(5.0, 6.0, 7.0), direction=RAS_DIRECTION))
    model_input = predictor.prepare(subject)
    raw = predictor.raw(ModelInput(x, brain, (1.0, 1.0, 1.0), geometry=model_input.geometry))
    rows = predictor.finish(raw).stats["rejected_candidates"]
    # RAS direction: LPS point = origin + (-i, -j, k); RAS = (-x, -y, z) = (i - 5, j - 6, k + 7)
    assert all(np.allclose(c["centre_ras_mm"], np.asarray(c["voxel"]) + (-5.0, -6.0, 7.0), atol=0.01) for c in rows)
    # the network says lesion (p = 0.9), the second stage says no: uncertain there, certain elsewhere
    assert (unc[ball] == 1).all() and (unc[tube] == 1).all() and unc[brain & (prob < 0.1)].max() < 0.5


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 0.9, 1.3)])
def test_the_edge_distance_is_the_distance_transform_at_each_voxel(spacing):
    rng = np.random.default_rng(4)
    inside = ndi.gaussian_filter(rng.random((30, 27, 22)), 2.5) > 0.5
    inside[5:25, 5:22, 4:18] |= True  # deep voxels as well as thin parts
    exact = ndi.distance_transform_edt(np.pad(inside, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    distance = EdgeDistance(inside, spacing)
    voxels = [tuple(int(c) for c in v) for v in np.argwhere(np.ones(inside.shape, bool))[::7]]
    got = np.array([distance(v) for v in voxels])
    np.testing.assert_allclose(got, [exact[v] for v in voxels], rtol=0, atol=1e-9)
    assert got.max() > 4 and (got == 0).any()  # both deep voxels and voxels outside were checked
    assert EdgeDistance(np.zeros((4, 4, 4), bool), spacing)((1, 1, 1)) == 0.0
    assert EdgeDistance(np.ones((5, 5, 5), bool), spacing)((2, 2, 2)) == pytest.approx(3 * min(spacing))


def test_contrasts_relative_to_the_subjects_fluid_hold_when_its_fluid_is_less_contrasted():
    """A lacune and a ventricle of the same fluid in a brain, drawn at full and at half the fluid-to-tissue
    contrast (another sequence): the contrasts halve, their share of the subject's own fluid contrast stays;
    an absent contrast (a channel of zeros) gives relative features of 0."""
    shape = (48, 48, 40)
    idx = np.indices(shape)
    brain = ((idx - np.array([24, 24, 20])[:, None, None, None]) ** 2).sum(0) <= 21**2
    ventricle = (np.abs(idx[0] - 28) <= 6) & (np.abs(idx[1] - 24) <= 9) & (np.abs(idx[2] - 20) <= 9)
    lacune = ((idx - np.array([13, 24, 20])[:, None, None, None]) ** 2).sum(0) <= 9
    assert not (ventricle & lacune).any() and (ventricle & brain).sum() > 0.1 * brain.sum()
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.02, (3, brain.sum()))
    prob = np.where(lacune, np.float32(0.9), np.float32(0.02))
    names = ["t1_contrast", "t2_contrast", "flair_contrast", *(
        f"{m}_relative_contrast" for m in ("t1", "t2", "flair")), "flair_rim_relative"]
    found = {}
    for k in (1.0, 0.5):
        image = np.zeros((3, *shape), np.float32)
        image[:, brain] = 0.6 + noise
        for fluid in (ventricle & brain, lacune):
            image[0][fluid], image[1][fluid], image[2][fluid] = 0.6 - 0.5 * k, 0.6 + 0.4 * k, 0.6 - 0.5 * k
        labels, n, feats = candidate_features(prob, image, brain, (1.0, 1.0, 1.0), 0.5)
        assert n == 1
        found[k] = {name: feats[0, ALL_FEATURES.index(name)] for name in names}
    for m in ("t1", "t2", "flair"):
        assert found[0.5][f"{m}_contrast"] == pytest.approx(0.5 * found[1.0][f"{m}_contrast"], rel=0.1)
        assert found[1.0][f"{m}_relative_contrast"] == pytest.approx(1.0, abs=0.15)
        assert found[0.5][f"{m}_relative_contrast"] == pytest.approx(found[1.0][f"{m}_relative_contrast"], abs=0.1)
    image[2] = 0.0  # no FLAIR
    _, _, feats = candidate_features(prob, image, brain, (1.0, 1.0, 1.0), 0.5)
    assert feats[0, ALL_FEATURES.index("flair_relative_contrast")] == 0.0
    assert feats[0, ALL_FEATURES.index("flair_rim_relative")] == 0.0
    assert feats[0, ALL_FEATURES.index("t2_relative_contrast")] == pytest.approx(found[0.5]["t2_relative_contrast"])
    # a second stage over them weighs neither the intensities nor the contrasts on the normalized scale
    r = Rescorer.fit(np.vstack([feats, feats + 1]), np.array([0.0, 1.0]), 0.5, names=FLUID_RELATIVE_FEATURES)
    assert set(r.features) & {"t1", "t2_contrast", "flair_rim"} == set() and "t2_relative_contrast" in r.features


def test_the_rim_gain_counts_a_bright_rim_and_ignores_a_dark_one():
    """A lacune with a bright FLAIR rim, and the same lacune whose rim is averaged into its dark cavity (a
    dark ring next to it): the relative rim is positive, then negative; the rim gain keeps the first and is 0
    for the second; the rim-gain set weighs the gain in place of the signed rim."""
    from lacunes.calibration import feature_set
    from lacunes.rescoring import RIM_GAIN_FEATURES

    prob, image, brain, reference, ball, tube = scene()
    ring1 = ndi.binary_dilation(ball, iterations=1) & ~ball
    out = {}
    for name, value in (("bright", 0.9), ("dark", 0.3)):
        img = image.copy()
        img[2][ring1] = value
        _, n, feats = candidate_features(prob, img, brain, (1.0, 1.0, 1.0), 0.5)
        k = int(np.argmax(feats[:, ALL_FEATURES.index("log_volume_mm3")]))  # the ball, not the thin tube
        out[name] = {f: feats[k, ALL_FEATURES.index(f)] for f in ("flair_rim_relative", "flair_rim_gain")}
    assert out["bright"]["flair_rim_relative"] > 0 and out["dark"]["flair_rim_relative"] < 0
    assert out["bright"]["flair_rim_gain"] == pytest.approx(out["bright"]["flair_rim_relative"])
    assert out["dark"]["flair_rim_gain"] == 0.0
    assert feature_set("rim-gain") == RIM_GAIN_FEATURES
    assert "flair_rim_gain" in RIM_GAIN_FEATURES and "flair_rim_relative" not in RIM_GAIN_FEATURES
    assert "flair_rim_gain" not in FLUID_RELATIVE_FEATURES and "flair_rim_gain" not in SCALE_FREE_FEATURES


def test_the_far_rim_keeps_a_blurred_rim_apart_from_a_rimless_cavity():
    """A cavity with a bright FLAIR rim and the same cavity without one, in a brain with a ventricle (the
    subject's fluid), FLAIR sharp and blurred as coarse voxels blur it. Blurred, the rim next to the cavity
    falls under the rings beyond it (the signed rim turns negative, as on the coarse phantoms); read against
    the tissue 4-5 voxels out it still stands above it, and the rimless cavity stays under it. The rim-far
    set weighs it in place of the signed rim."""
    from lacunes.calibration import feature_set
    from lacunes.rescoring import RIM_FAR_FEATURES

    shape = (56, 56, 44)
    idx = np.indices(shape)

    brain = sphere(shape, (28, 28, 22), 24**2)
    ventricle = (np.abs(idx[0] - 34) <= 5) & (np.abs(idx[1] - 28) <= 8) & (np.abs(idx[2] - 22) <= 8)
    cavity = sphere(shape, (14, 28, 22), 9)
    rim = sphere(shape, (14, 28, 22), 16) & ~cavity
    prob = np.where(cavity, np.float32(0.9), np.float32(0.02))
    rng = np.random.default_rng(0)
    found = {}
    for with_rim in (True, False):
        for sigma in (0.0, 1.0):
            image = np.zeros((3, *shape), np.float32)
            image[:, brain] = 0.6
            for fluid in (ventricle, cavity):
                image[0][fluid], image[1][fluid], image[2][fluid] = 0.1, 1.0, 0.1
            if with_rim:
                image[2][rim] = 0.95
            if sigma:
                image[2] = np.where(brain, ndi.gaussian_filter(image[2], sigma), 0)
            image[:, brain] += rng.normal(0, 0.02, (3, int(brain.sum())))
            _, n, feats = candidate_features(prob, image, brain, (1.0, 1.0, 1.0), 0.5)
            assert n == 1
            found[with_rim, sigma] = {f: feats[0, ALL_FEATURES.index(f)]
                                      for f in ("flair_rim_relative", "flair_rim_far_relative")}
    sharp, blurred, rimless = found[True, 0.0], found[True, 1.0], found[False, 1.0]
    assert sharp["flair_rim_relative"] > 0.3 and sharp["flair_rim_far_relative"] > 0.1
    assert blurred["flair_rim_relative"] < 0 < blurred["flair_rim_far_relative"]
    assert rimless["flair_rim_far_relative"] < -0.1 and abs(found[False, 0.0]["flair_rim_far_relative"]) < 0.05
    assert feature_set("rim-far") == RIM_FAR_FEATURES
    assert "flair_rim_far_relative" in RIM_FAR_FEATURES and "flair_rim_relative" not in RIM_FAR_FEATURES
    assert "flair_rim_far_relative" not in FLUID_RELATIVE_FEATURES + SCALE_FREE_FEATURES
