import numpy as np
import pytest
import torch

from lacunes.conform import IDENTITY, ModelSpace, grid_with_spacing, orientation, plan, resample_axis_aligned, resample_masked
from lacunes.geometry import Geometry
from lacunes.inference import Predictor
from lacunes.io import Subject
from lacunes.options import RAS_DIRECTION
from lacunes.preprocessing import quantile_normalize
from lacunes.settings import InferenceSettings

PERMUTED = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # array axes along y, z, x (columns)
LPS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def centres_mm(geom: Geometry) -> np.ndarray:
    """Scanner coordinates of every voxel centre, ``3×X×Y×Z``."""
    idx = np.indices(geom.shape, dtype=float) * np.asarray(geom.spacing)[:, None, None, None]
    d = np.asarray(geom.direction).reshape(3, 3)
    return np.einsum("ij,j...->i...", d, idx) + np.asarray(geom.origin)[:, None, None, None]


def reorient_values(array, conform):
    return conform.to_model(array[None])[0]


@pytest.mark.parametrize("direction", [PERMUTED, IDENTITY, (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)])
def test_reorientation_keeps_every_voxel_where_it_is_in_scanner_space(direction):
    geom = Geometry(shape=(5, 7, 9), spacing=(1.0, 1.02, 0.98), origin=(3.0, -4.0, 10.0), direction=direction)
    c = plan(geom)
    assert c.reoriented and not c.resampled
    # the model's arrays run towards the right, anterior and superior, as the phantoms' do
    np.testing.assert_allclose(np.asarray(c.model.direction).reshape(3, 3), np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
    native = centres_mm(geom)
    moved = np.stack([reorient_values(native[k], c) for k in range(3)])
    np.testing.assert_allclose(moved, centres_mm(c.model), atol=1e-9)  # same point, new array position
    values = np.random.default_rng(0).normal(size=(2, *geom.shape)).astype(np.float32)
    np.testing.assert_array_equal(c.to_native(c.to_model(values)), values)  # exact inverse


def test_an_oblique_scan_goes_to_its_nearest_orientation():
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    axes, flips = orientation(tuple((rot @ np.asarray(PERMUTED).reshape(3, 3)).ravel()))
    assert axes == (2, 0, 1) and flips == (False, False, False)


def test_a_grid_in_the_models_orientation_and_voxel_size_is_left_alone():
    c = plan(Geometry(shape=(4, 5, 6), spacing=(1.03, 0.97, 1.0), direction=RAS_DIRECTION))
    assert c.identity and c.model == c.native
    assert plan(Geometry(shape=(4, 5, 6)), ModelSpace(direction=IDENTITY)).identity


def test_resampling_is_exact_on_a_linear_ramp_of_scanner_coordinates():
    geom = Geometry(shape=(20, 18, 9), spacing=(1.3, 1.3, 3.0), origin=(5.0, -2.0, 7.0))
    c = plan(geom, ModelSpace(direction=IDENTITY))  # resampling alone
    assert c.resampled and c.model.spacing == (1.0, 1.0, 1.0) and c.model.shape == (26, 23, 27)
    ramp = lambda g: (centres_mm(g) * np.array([0.5, -1.0, 2.0])[:, None, None, None]).sum(0)  # noqa: E731
    model = c.to_model(ramp(geom)[None].astype(np.float32))[0]
    # inside the field of view (outside it, values come from the nearest edge voxel)
    lo, hi = np.asarray(geom.origin), np.asarray(geom.origin) + (np.asarray(geom.shape) - 1) * geom.spacing
    pts = centres_mm(c.model)
    inside = np.all((pts >= lo[:, None, None, None]) & (pts <= hi[:, None, None, None]), axis=0)
    assert inside.mean() > 0.7
    np.testing.assert_allclose(model[inside], ramp(c.model)[inside], atol=1e-3)
    # the model grid covers the same field of view, centred
    np.testing.assert_allclose(np.asarray(c.model.origin) - 0.5, lo - 0.5 * np.asarray(geom.spacing)
                               + (np.asarray(geom.shape) * geom.spacing - np.asarray(c.model.shape)) / 2, atol=1e-9)


def ball_probability(geom: Geometry, centre_mm, radius_mm) -> np.ndarray:
    """A soft ball (probability 1 inside, falling to 0 over ~2 mm at the surface)."""
    r = np.sqrt(((centres_mm(geom) - np.asarray(centre_mm)[:, None, None, None]) ** 2).sum(0))
    return (1 / (1 + np.exp((r - radius_mm) / 0.4))).astype(np.float32)


@pytest.mark.parametrize("native_mm", [0.7, 1.3, (1.0, 1.0, 3.0)])
@pytest.mark.parametrize("radius_mm", [1.7, 4.0])
def test_maps_go_back_with_their_lesion_volume_and_centre(native_mm, radius_mm):
    """A lesion drawn on the model's 1 mm grid, mapped back to the native grid and cut at 0.5, has the
    volume the same lesion drawn directly on the native grid has (on average over positions: a 3.4 mm
    lesion on 1.3 mm voxels holds 6 to 11 of them depending on where it sits) and the same centre."""
    spacing = (native_mm,) * 3 if isinstance(native_mm, float) else native_mm
    native = grid_with_spacing(Geometry(shape=(40, 40, 40)), spacing)  # a 40 mm cube
    c = plan(native)
    assert c.resampled
    rng = np.random.default_rng(7)
    back_volumes, direct_volumes = [], []
    for _ in range(8):
        centre = rng.uniform(18.0, 22.0, 3)
        back = c.probability_to_native(ball_probability(c.model, centre, radius_mm))
        assert back.shape == native.shape
        back_volumes.append((back >= 0.5).sum() * native.voxel_volume)
        direct_volumes.append((ball_probability(native, centre, radius_mm) >= 0.5).sum() * native.voxel_volume)
        pts = centres_mm(native)[:, back >= 0.5]
        np.testing.assert_allclose(pts.mean(1), centre, atol=0.5 * max(spacing))
    true_volume = 4 / 3 * np.pi * radius_mm**3
    assert abs(np.mean(back_volumes) - np.mean(direct_volumes)) <= 0.05 * true_volume, (back_volumes, direct_volumes)
    if max(spacing) < 2:  # (on 3 mm slices a 3.4 mm lesion holds 12 to 27 mm³ wherever it is drawn)
        assert abs(np.mean(back_volumes) - true_volume) <= 0.1 * true_volume


def test_thick_slices_are_named_in_a_warning(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        plan(Geometry(shape=(10, 10, 10), spacing=(1.0, 1.0, 1.3)))
    assert "thicker" not in caplog.text
    with caplog.at_level(logging.WARNING):
        plan(Geometry(shape=(10, 10, 10), spacing=(1.0, 1.0, 3.0)))
    assert "voxels of 1×1×3 mm" in caplog.text and "may be missed" in caplog.text


def test_masks_are_cut_at_half_after_interpolation():
    native = Geometry(shape=(30, 30, 10), spacing=(1.0, 1.0, 3.0))
    c = plan(native)
    label = (ball_probability(native, (15, 15, 15), 6.0) >= 0.5).astype(np.uint8)
    model = c.mask_to_model(label)
    assert model.dtype == np.uint8 and set(np.unique(model)) <= {0, 1}
    assert abs(model.sum() * c.model.voxel_volume - label.sum() * native.voxel_volume) < 0.15 * label.sum() * 3


@pytest.mark.parametrize("native_mm", [0.7, 1.3])
def test_a_skull_stripped_scan_keeps_its_edge_and_its_quantiles_when_conformed(native_mm):
    """The brain's values stay among the brain's values (no ring blended with the background's zeros),
    its volume stays, and so do the quantiles the normalization maps to 0 and 1."""
    native = grid_with_spacing(Geometry(shape=(48, 48, 48)), (native_mm,) * 3)
    brain = ball_probability(native, (24.0, 24.0, 24.0), 18.0) >= 0.5
    tissue = 300.0 + 600.0 * (centres_mm(native)[0] - 6.0) / 36.0  # from 300 to 900 across the brain
    image = np.where(brain, tissue, 0.0).astype(np.float32)[None]
    c = plan(native)
    model = c.to_model(image)[0]
    inside = model != 0
    assert model[inside].min() >= 300.0 - 1e-3 and model.max() <= 900.0 + 1e-3
    assert abs(inside.sum() * c.model.voxel_volume - brain.sum() * native.voxel_volume) < 0.02 * brain.sum() * native.voxel_volume
    lo, hi = np.quantile(image[0][brain], [0.005, 0.995])
    lo_m, hi_m = np.quantile(model[inside], [0.005, 0.995])
    assert abs(lo_m - lo) < 15 and abs(hi_m - hi) < 15
    # plain linear interpolation is what this guards against: the background pulls the edge to ~0
    blended = resample_axis_aligned(image, c.oriented, c.model)[0]
    assert np.quantile(blended[blended != 0], 0.005) < 0.5 * lo
    normalized = quantile_normalize(model[None])[0]
    assert abs(np.median(normalized[inside]) - 0.5) < 0.05


def test_a_volume_without_background_resamples_as_plain_linear_interpolation():
    native = Geometry(shape=(12, 12, 12), spacing=(1.3, 1.3, 1.3))
    c = plan(native)
    image = np.random.default_rng(0).uniform(1.0, 2.0, (2, *native.shape)).astype(np.float32)
    np.testing.assert_array_equal(resample_masked(image, c.oriented, c.model),
                                  resample_axis_aligned(image, c.oriented, c.model))


def test_resample_refuses_grids_of_other_directions():
    with pytest.raises(ValueError, match="same direction"):
        resample_axis_aligned(np.zeros((2, 2, 2)), Geometry((2, 2, 2)), Geometry((2, 2, 2), direction=LPS))


def test_model_space_round_trips_and_defaults():
    space = ModelSpace((0.8, 0.8, 1.0), spacing_rtol=0.1)
    assert ModelSpace.from_dict(space.to_dict()) == space
    assert ModelSpace.from_dict(None) == ModelSpace()
    with pytest.raises(ValueError, match="spacing"):
        ModelSpace((1.0, 0.0, 1.0))


class LocalContrast(torch.nn.Module):
    """Not flip- or permutation-equivariant as a whole volume would be: a fixed 3×3×3 kernel that
    looks at voxel neighbours unevenly along the three axes, so a wrong array order changes the output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            w = torch.zeros(1, 3, 3, 3, 3)
            w[0, 0, 1, 1, 1] = 2.0
            w[0, 1, 0, 1, 1], w[0, 1, 1, 2, 1], w[0, 2, 1, 1, 0] = 1.0, -0.5, 0.3
            self.conv.weight.copy_(w)

    def forward(self, x):
        return self.conv(x) - 1.0


def test_permuted_and_flipped_storage_give_the_same_maps_up_to_the_permutation():
    rng = np.random.default_rng(3)
    image = np.zeros((3, 24, 20, 16), np.float32)
    image[:, 3:21, 3:17, 2:14] = rng.uniform(100, 200, size=(3, 18, 14, 12))
    settings = InferenceSettings(roi_size=(32, 32, 32), overlap=0.25, tta="none", progress=False, device="cpu")
    predictor = Predictor(LocalContrast(), settings)
    ref = Subject("s", image, Geometry(shape=image.shape[1:]))
    p0, u0 = predictor.predict(ref)
    # the same volume stored sagittally (axes y, z, x) and LPS (x and y reversed)
    stored = np.ascontiguousarray(image.transpose(0, 2, 3, 1))
    sag = Subject("s", stored, Geometry(shape=stored.shape[1:], direction=PERMUTED))
    p1, u1 = predictor.predict(sag)
    np.testing.assert_allclose(p1, p0.transpose(1, 2, 0), atol=1e-6)
    np.testing.assert_allclose(u1, u0.transpose(1, 2, 0), atol=1e-6)
    lps = np.ascontiguousarray(image[:, ::-1, ::-1])
    p2, _ = predictor.predict(Subject("s", lps, Geometry(shape=lps.shape[1:], origin=(23.0, 19.0, 0.0),
                                                         direction=LPS)))
    np.testing.assert_allclose(p2, p0[::-1, ::-1], atol=1e-6)
    # without conforming, the network sees another array order and answers otherwise
    raw = Predictor(LocalContrast(), settings.replace(conform=False)).predict(sag)[0]
    assert np.abs(raw - p0.transpose(1, 2, 0)).max() > 1e-2


def test_a_resampled_subject_comes_back_on_its_own_grid_and_zero_outside_the_brain():
    image = np.zeros((3, 20, 20, 12), np.float32)
    image[:, 4:16, 4:16, 3:9] = 150.0
    geom = Geometry(shape=image.shape[1:], spacing=(1.3, 1.3, 2.0), origin=(1.0, 2.0, 3.0))
    predictor = Predictor(LocalContrast(), InferenceSettings(roi_size=(32, 32, 32), tta="none", progress=False,
                                                             device="cpu"))
    prediction = predictor.predict(Subject("s", image, geom))
    prob, unc = prediction
    assert prob.shape == unc.shape == geom.shape
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    assert prediction.stats["conform"]["resampled"]
    outside = image[0] == 0
    assert prob[outside].max() == 0 and unc[outside].max() == 0 and prob[~outside].max() > 0
