import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from lacunes.geometry import Geometry
from lacunes.inference import Predictor
from lacunes.io import Subject
from lacunes.options import RAS_DIRECTION
from lacunes.settings import FAST, InferenceSettings
from lacunes.windowing import TTAPlan, reference_predict


class PlusOne(torch.nn.Module):
    """Known output: logit = first channel + 1 (pointwise, so flip-equivariant)."""

    def forward(self, x):
        return x[:, :1] + 1.0


class PlusRamp(torch.nn.Module):
    """Position-dependent: adds a ramp 0..1 along x of the window (not flip-equivariant)."""

    def forward(self, x):
        ramp = torch.linspace(0, 1, x.shape[2]).reshape(1, 1, -1, 1, 1)
        return x[:, :1] + ramp


class Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x[:, :1], self.value)


def settings(**kw):
    base = dict(roi_size=(16, 16, 16), overlap=0.5, tta="none", progress=False, device="cpu")
    base.update(kw)
    return InferenceSettings(**base)


@pytest.mark.parametrize("shape", [(10, 12, 7), (37, 21, 19), (48, 32, 16)])
@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_stitching_is_exact_for_a_known_output_model(shape, blend):
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    prob, unc = Predictor(PlusOne(), settings(blend=blend)).predict_normalized(x)
    assert prob.shape == shape and prob.dtype == np.float32
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-(x[0] + 1))), atol=1e-6)
    np.testing.assert_allclose(unc, np.minimum(1, 1 / np.maximum(np.abs(x[0] + 1), 1)), atol=1e-5)


def test_tta_flips_round_trip_exactly():
    x = np.random.default_rng(1).normal(size=(3, 37, 21, 19)).astype(np.float32)
    plain, _ = Predictor(PlusOne(), settings()).predict_normalized(x)
    flipped, unc = Predictor(PlusOne(), settings(tta="flips", uncertainty="tta-std")).predict_normalized(x)
    np.testing.assert_allclose(flipped, plain, atol=1e-6)
    assert unc.max() < 1e-3  # all variants agree


def test_tta_variants_are_really_flipped():
    shape = (32, 16, 16)  # one window, no padding: the ramp spans the volume
    x = np.zeros((3, *shape), np.float32)
    p = Predictor(PlusRamp(), settings(roi_size=shape, tta="flips", uncertainty="inverse-logit"))
    prob, _ = p.predict_normalized(x)
    ramp = np.linspace(0, 1, 32, dtype=np.float32)[:, None, None]
    # identity + y/z flips see the ramp, the x flip sees 1 - ramp; probabilities are averaged
    expected = (3 / (1 + np.exp(-ramp)) + 1 / (1 + np.exp(-(1 - ramp)))) / 4
    np.testing.assert_allclose(prob, np.broadcast_to(expected, shape), atol=1e-6)


def test_noise_variants_are_seeded_and_zero_noise_changes_nothing():
    x = np.random.default_rng(2).normal(size=(3, 20, 20, 18)).astype(np.float32)
    flips, _ = Predictor(PlusOne(), settings(tta="flips")).predict_normalized(x)
    full0, _ = Predictor(PlusOne(), settings(tta="full", noise_std=0.0)).predict_normalized(x)
    np.testing.assert_allclose(full0, flips, atol=1e-6)
    a, _ = Predictor(PlusOne(), settings(tta="full", noise_std=0.1, seed=3)).predict_normalized(x)
    b, _ = Predictor(PlusOne(), settings(tta="full", noise_std=0.1, seed=3)).predict_normalized(x)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - flips).max() > 1e-3
    assert len(TTAPlan.from_settings(settings(tta="full")).variants) == 6


@pytest.mark.parametrize("value,mode,expected", [
    (4.0, "inverse-logit", 0.25), (0.5, "inverse-logit", 1.0), (-2.0, "inverse-logit", 0.5),
    (0.0, "entropy", 1.0), (3.0, "tta-std", 0.0),
])
def test_uncertainty_modes(value, mode, expected):
    x = np.ones((3, 16, 16, 16), np.float32)
    _, unc = Predictor(Constant(value), settings(uncertainty=mode, tta="flips")).predict_normalized(x)
    np.testing.assert_allclose(unc, expected, atol=1e-5)


def test_matches_the_per_variant_reference_loop(tiny_checkpoint):
    from lacunes.checkpoint import load_network

    net, _ = load_network(tiny_checkpoint)
    x = np.random.default_rng(4).normal(size=(3, 37, 29, 21)).astype(np.float32)
    s = settings(roi_size=(32, 32, 16), tta="full", overlap=0.5)
    prob, _ = Predictor(net, s).predict_normalized(x)
    np.testing.assert_allclose(prob, reference_predict(net, x, s), atol=1e-5)


def test_nonfinite_and_constant_inputs_give_finite_maps(tiny_checkpoint):
    p = Predictor.from_checkpoint(tiny_checkpoint, settings(roi_size=(32, 32, 16)))
    img = np.random.default_rng(5).normal(100, 10, size=(3, 30, 30, 12)).astype(np.float32)
    img[0, :3] = np.nan
    img[1, 5, 5, 5] = np.inf
    img[2] = 7.0  # constant channel
    subject = Subject("sub-x", img, Geometry((30, 30, 12)))
    prob, unc = p.predict(subject)
    for m in (prob, unc):
        assert m.dtype == np.float32 and np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1


def test_settings_validation():
    with pytest.raises(ValueError, match="overlap"):
        InferenceSettings(overlap=1.0)
    with pytest.raises(ValueError, match="tta 'lots' is not one of none, flips, full$"):
        InferenceSettings(tta="lots")
    with pytest.raises(ValueError, match="precision 'bf16' is not one of .*; did you mean 'bfloat16'"):
        InferenceSettings(precision="bf16")
    with pytest.raises(ValueError, match="roi_size"):
        InferenceSettings(roi_size=(8, 8, 8))
    with pytest.raises(ValueError, match="multiples of 16"):
        InferenceSettings(roi_size=(17, 17, 17))
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="memory_gb"):
            InferenceSettings(memory_gb=bad)
    with pytest.raises(ValueError, match="CUDA is not available"):
        Predictor(PlusOne(), InferenceSettings(device="cuda"))


def test_channels_last_and_window_batch_change_nothing(tiny_checkpoint):
    from lacunes.checkpoint import load_network

    x = np.random.default_rng(7).normal(size=(3, 37, 29, 21)).astype(np.float32)
    s = settings(roi_size=(32, 32, 16), tta="flips", overlap=0.5)
    net, _ = load_network(tiny_checkpoint)
    plain = reference_predict(net, x, s)
    np.testing.assert_allclose(reference_predict(net, x, s, sw_batch_size=3), plain, atol=1e-5)
    net, _ = load_network(tiny_checkpoint)
    prob, _ = Predictor(net, s.replace(channels_last=True, sw_batch_size=2)).predict_normalized(x)
    np.testing.assert_allclose(prob, plain, atol=1e-5)


def test_bfloat16_on_the_cpu_is_close_but_not_exact(tiny_checkpoint):
    from lacunes.checkpoint import load_network

    x = np.random.default_rng(8).normal(size=(3, 32, 32, 16)).astype(np.float32)
    s = settings(roi_size=(32, 32, 16), backend="torch")  # PyTorch's autocast: bfloat16 on any CPU
    net, _ = load_network(tiny_checkpoint)
    exact, _ = Predictor(net, s).predict_normalized(x)
    half, _ = Predictor(net, s.replace(precision="bfloat16")).predict_normalized(x)
    diff = np.abs(half - exact).max()
    assert 0 < diff < 0.05


def test_only_the_brain_is_computed_and_the_maps_are_the_same_there():
    """A small brain in a large empty field of view: cropped to its box, empty windows skipped; a
    pointwise network gives exactly the same maps (0 outside the brain either way)."""
    from lacunes.windowing import brain_box

    shape = (64, 60, 40)
    rng = np.random.default_rng(5)
    image = np.zeros((3, *shape), np.float32)
    image[:, 6:26, 30:52, 4:20] = rng.uniform(50, 150, size=(3, 20, 22, 16))
    subject = Subject("sub-1", image, Geometry(shape, direction=RAS_DIRECTION))  # the model's orientation
    calls = []

    class Counting(PlusOne):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    s = settings(overlap=0.25)
    whole = Predictor(Counting(), s.replace(brain_only=False))
    prob_all, unc_all = whole.predict(subject)
    n_all = sum(calls)
    calls.clear()
    cropped = Predictor(Counting(), s)
    prediction = cropped.predict(subject)
    prob, unc = prediction
    assert sum(calls) < n_all / 4
    np.testing.assert_allclose(prob, prob_all, atol=1e-6)  # blending sums in another order
    np.testing.assert_allclose(unc, unc_all, atol=1e-6)
    assert prob[6:26, 30:52, 4:20].min() > 0 and prob[:5].max() == 0
    box = brain_box(image.any(0))
    assert box == (slice(6, 26), slice(30, 52), slice(4, 20))
    assert brain_box(image.any(0), margin=8) == (slice(0, 34), slice(22, 60), slice(0, 28))  # clipped
    assert prediction.stats["box"] == ((6, 26), (30, 52), (4, 20))
    assert 0 < prediction.stats["windows_run"] <= prediction.stats["windows"]


def test_windows_without_brain_are_skipped_and_an_empty_scan_runs_nothing():
    shape = (48, 48, 16)
    image = np.zeros((3, *shape), np.float32)
    image[:, 2:8, 2:8, 2:8] = 100.0
    image[:, 38:46, 38:46, 6:14] = 100.0  # two blobs: their box spans the volume, windows between are empty
    p = Predictor(PlusOne(), settings(overlap=0.0))
    stats = p.predict(Subject("sub-1", image, Geometry(shape))).stats
    assert stats["windows"] == 9 and stats["windows_run"] == 2
    assert p.predict(Subject("sub-0", np.zeros((3, *shape), np.float32), Geometry(shape))).stats["windows"] == 0


def test_non_finite_network_output_beyond_a_few_voxels_is_an_error(caplog):
    from lacunes.inference import NONFINITE_OUTPUT_LIMIT, NonFiniteOutputError

    class NaNAt(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def forward(self, x):
            out = x[:, :1] + 1.0
            out.view(-1)[: self.n] = float("nan")
            return out

    x = np.random.default_rng(7).normal(size=(3, 32, 32, 16)).astype(np.float32)  # one window, no padding
    with caplog.at_level(logging.ERROR):
        prob, unc = Predictor(NaNAt(3), settings(roi_size=(32, 32, 16))).predict_normalized(x)
    assert "non-finite network output" in caplog.text and (prob == 0).sum() == 3 and (unc == 1).sum() >= 3
    broken = Predictor(NaNAt(NONFINITE_OUTPUT_LIMIT + 1), settings(roi_size=(32, 32, 16)))
    broken.release = broken.release.replace(path=Path("/models/broken.pt"))
    with pytest.raises(NonFiniteOutputError, match="weights of /models/broken.pt are probably damaged"):
        broken.predict_normalized(x)


def test_an_uncalibrated_checkpoint_is_named_in_a_warning(tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        Predictor.from_checkpoint(tiny_checkpoint, FAST)
    assert "carries no calibrated operating point" in caplog.text and "p >= 0.5" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Predictor.from_checkpoint(tiny_checkpoint, FAST, threshold=0.7)  # the user chose the operating point
    assert "calibrated" not in caplog.text


def test_the_release_says_what_its_network_was_trained_on(tiny_checkpoint):
    from lacunes.release import Release

    generated = Release(metadata={"data": {"generated": {"seed": 2026}}})
    assert generated.data_statement.startswith("trained on synthetic phantoms only (generated, seed 2026)")
    assert "recalibrate it" in generated.data_statement
    folder = Release(metadata={"data": {"folder": "/data/mine", "note": "12 subjects"}})
    assert folder.data_statement == "trained on the subjects in /data/mine (12 subjects)"
    network = Predictor.from_checkpoint(tiny_checkpoint, FAST).network
    assert "not recorded" in Predictor(network, FAST).release.data_statement
    assert Predictor(network, FAST, Release(metadata={"data_statement": "ours"})).release.data_statement == "ours"


@pytest.mark.skipif(not (Path(__file__).resolve().parent.parent / "model" / "lacunes.pt").is_file(),
                    reason="no bundled weights")
def test_the_bundled_model_says_it_never_saw_patient_data():
    bundled = Predictor.from_checkpoint(Path(__file__).resolve().parent.parent / "model" / "lacunes.pt", FAST)
    statement = bundled.release.data_statement
    assert "synthetic phantoms only" in statement and "never on patient data" in statement


def test_raw_then_finish_is_predict_and_one_raw_serves_other_operating_points(tiny_checkpoint):
    from lacunes.postprocessing import OperatingPoint
    from lacunes.windowing import mean_probability

    from .conftest import DIRECTION, SPACING, make_subject_arrays

    images, _ = make_subject_arrays()
    geom = Geometry(shape=(40, 36, 20), spacing=SPACING, direction=DIRECTION)  # axes swapped, not 1 mm
    subject = Subject("sub-001", np.stack([images[m] for m in ("T1", "T2", "FLAIR")]), geom)
    predictor = Predictor.from_checkpoint(tiny_checkpoint, FAST.replace(progress=False, device="cpu", backend="torch"))
    raw = predictor.raw(subject)
    given = raw.input
    assert given.conform is not None and given.conform.resampled and given.normalized.shape[1:] == given.conform.model.shape
    assert given.spacing == given.conform.model.spacing and given.native_brain.shape == geom.shape
    np.testing.assert_array_equal(raw.probability, mean_probability(raw.variant_logits).numpy())
    finished, predicted = predictor.finish(raw), predictor.predict(subject)
    assert finished.probability.shape == geom.shape
    np.testing.assert_array_equal(finished.probability, predicted.probability)
    np.testing.assert_array_equal(finished.uncertainty, predicted.uncertainty)
    assert finished.stats["conform"] == predicted.stats["conform"] and finished.stats["windows_run"] >= 1
    assert raw.stats["network_seconds"] > 0
    low = OperatingPoint(threshold=0.3, min_volume_mm3=0.0)
    again = predictor.finish(raw, operating_point=low)
    np.testing.assert_array_equal(again.probability, predictor.with_post_processing(low).predict(subject).probability)
    assert not np.array_equal(again.probability, finished.probability)
