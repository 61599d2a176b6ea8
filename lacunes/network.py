"""The 3D U-Net of the recipe (MONAI ``BasicUNet``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lacunes.options import MODALITIES


@dataclass(frozen=True)
class NetworkConfig:
    """Arguments of MONAI ``BasicUNet``; defaults are the published recipe (T1+T2+FLAIR in, one logit out)."""

    in_channels: int = len(MODALITIES)
    out_channels: int = 1
    features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
    act: str = "mish"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if len(self.features) != 6:
            raise ValueError(f"BasicUNet needs 6 feature sizes, got {self.features}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        d = dict(d)
        d["features"] = tuple(d["features"])
        return cls(**d)


def build_network(config: NetworkConfig = NetworkConfig()) -> torch.nn.Module:
    """``BasicUNet(spatial_dims=3, ...)``: input ``B×C×X×Y×Z`` (C = in_channels, one per modality) → logits ``B×1×X×Y×Z``."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=3,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        features=config.features,
        act=config.act,
        dropout=config.dropout,
    )
