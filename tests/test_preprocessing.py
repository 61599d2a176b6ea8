import numpy as np
import pytest

from lacunes.preprocessing import (
    NonFiniteError,
    NormalizationConfig,
    assert_finite,
    count_nonfinite,
    prepare_image,
    quantile_normalize,
    repair_nonfinite,
)


def test_quantiles_of_the_foreground_map_to_0_and_1_and_background_stays_0():
    rng = np.random.default_rng(0)
    img = np.zeros((1, 20, 20, 20), np.float32)
    img[0, 5:15, 5:15, 5:15] = rng.uniform(100, 200, (10, 10, 10))
    out = quantile_normalize(img, NormalizationConfig(0.0, 1.0))
    fg = img[0] != 0
    assert out[0][fg].min() == pytest.approx(0.0, abs=1e-6)
    assert out[0][fg].max() == pytest.approx(1.0, abs=1e-6)
    assert (out[0][~fg] == 0).all()
    out = quantile_normalize(img)  # 0.5/99.5 %: values beyond are kept, not clipped
    assert out.max() > 1.0 and out[0][fg].min() < 0.0


def test_constant_and_empty_volumes_give_zeros_not_nan():
    img = np.stack([np.full((8, 8, 8), 7.0, np.float32), np.zeros((8, 8, 8), np.float32)])
    out = quantile_normalize(img)
    assert np.isfinite(out).all() and (out == 0).all()


def test_repair_nonfinite_documented_replacement():
    img = np.array([[[[1.0, np.nan, np.inf, -np.inf, 5.0]]]], np.float32)
    assert count_nonfinite(img) == [3]
    out = repair_nonfinite(img)
    np.testing.assert_array_equal(out[0, 0, 0], [1.0, 0.0, 5.0, 1.0, 5.0])
    assert np.isfinite(img).sum() == 2, "the input is not modified"
    all_nan = np.full((1, 2, 2, 2), np.nan, np.float32)
    assert (prepare_image(all_nan) == 0).all()


def test_assert_finite_names_the_file():
    with pytest.raises(NonFiniteError, match="label.nii.gz holds 1"):
        assert_finite(np.array([0, np.nan]), "label.nii.gz")


def test_bad_quantiles():
    with pytest.raises(ValueError, match="lower < upper"):
        NormalizationConfig(0.9, 0.1)


def test_an_isolated_extreme_voxel_is_clipped_and_changes_the_map_only_near_it(tiny_checkpoint):
    from lacunes.inference import Predictor
    from lacunes.preprocessing import CLIP
    from lacunes.settings import FAST

    from .conftest import make_subject_arrays

    images, _ = make_subject_arrays((40, 36, 20))
    image = np.stack([images[m] for m in ("T1", "T2", "FLAIR")])
    spiked = image.copy()
    spiked[1, 20, 18, 10] = 1e30  # one T2 voxel
    norm, norm_spiked = quantile_normalize(image), quantile_normalize(spiked)
    assert norm_spiked[1, 20, 18, 10] == CLIP[1] and np.isfinite(norm_spiked).all()
    far = np.ones(image.shape[1:], bool)
    far[12:29, 10:27, 2:19] = False  # more than 8 voxels from the spike
    np.testing.assert_array_equal(norm_spiked[:, far], norm[:, far])  # the quantiles did not move
    p = Predictor.from_checkpoint(tiny_checkpoint, FAST.replace(progress=False, device="cpu"))
    a, _ = p.predict(image)
    b, _ = p.predict(spiked)
    changed = np.abs(a - b) > 0.1
    assert changed.sum() <= 0.01 * changed.size
