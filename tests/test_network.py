"""lacunes.network: the published BasicUNet from its arguments, which round-trip through a checkpoint."""

import pytest
import torch

from lacunes.network import NetworkConfig, build_network

from .conftest import TINY


def test_one_logit_per_voxel_for_three_contrasts_in():
    net = build_network(TINY).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 32, 32, 16))
    assert out.shape == (2, 1, 32, 32, 16)


def test_arguments_round_trip_and_the_published_recipe_is_the_default():
    assert NetworkConfig.from_dict(TINY.to_dict()) == TINY
    default = NetworkConfig()
    assert (default.in_channels, default.features, default.act, default.dropout) == (
        3, (32, 32, 64, 128, 256, 32), "mish", 0.1)
    assert sum(p.numel() for p in build_network(default).parameters()) == pytest.approx(5.75e6, rel=0.01)
    with pytest.raises(ValueError, match="6 feature sizes"):
        NetworkConfig(features=(4, 4, 8))
