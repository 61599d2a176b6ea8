"""lacunes.uncertainty: the three maps from the TTA variants' logits."""

import pytest
import torch

from lacunes.uncertainty import UncertaintyMode, uncertainty_map


def test_inverse_logit_is_one_within_one_logit_of_the_threshold_and_falls_off_beyond():
    logits = torch.tensor([0.0, 0.5, -1.0, 2.0, -4.0, 10.0]).reshape(1, 6, 1, 1)  # one variant
    u = uncertainty_map("inverse-logit", logits).flatten()
    torch.testing.assert_close(u, torch.tensor([1.0, 1.0, 1.0, 0.5, 0.25, 0.1]))


def test_tta_std_is_zero_when_the_variants_agree_and_entropy_peaks_at_one_half():
    agree = torch.full((4, 2, 2, 2), 3.0)
    assert uncertainty_map(UncertaintyMode.TTA_STD, agree).max() == 0
    split = torch.stack([torch.full((2, 2, 2), 20.0), torch.full((2, 2, 2), -20.0)])
    torch.testing.assert_close(uncertainty_map("tta-std", split), torch.ones(2, 2, 2))  # p 1 and 0: std 0.5 → 1
    e = uncertainty_map("entropy", torch.tensor([0.0, 3.0, -3.0]).reshape(1, 3, 1, 1)).flatten()
    assert e[0] == pytest.approx(1.0) and e[1] == pytest.approx(e[2]) and e[1] < 0.5


def test_non_finite_logits_give_full_uncertainty_not_nan():
    u = uncertainty_map("entropy", torch.tensor([float("nan"), 0.0]).reshape(1, 2, 1, 1))
    assert torch.isfinite(u).all() and float(u.flatten()[0]) == 1.0
