"""Uncertainty maps, float32 in [0, 1] (0 = certain, 1 = uncertain).

All are computed from the logits of the TTA variants (each blended over windows), ``V×X×Y×Z``.

- ``inverse-logit`` (default; the recipe's "absolute inverse of the model outputs"):
  ``u = min(1, 1 / |mean logit|)``. It reaches 1 where the model is undecided (logit 0, p = 0.5) and
  falls under 0.5 once ``|logit| > 2``, i.e. p > 0.88 or p < 0.12.
- ``tta-std`` (TTA disagreement): ``u = min(1, 2 · std_TTA(p))``; the standard deviation of values in
  [0, 1] is at most 0.5, so 1 means the variants split evenly between 0 and 1. Zero without TTA.
- ``entropy``: binary entropy of the mean probability, in bits (1 at p = 0.5).
"""

from __future__ import annotations

import torch

from lacunes.options import UncertaintyMode

__all__ = ["UncertaintyMode", "uncertainty_map"]


def uncertainty_map(mode: UncertaintyMode | str, variant_logits: torch.Tensor) -> torch.Tensor:
    """The uncertainty of ``mode`` from the variants' logits ``V×X×Y×Z`` → ``X×Y×Z`` float32."""
    mode = UncertaintyMode(mode)
    if mode == UncertaintyMode.INVERSE_LOGIT:
        u = 1.0 / variant_logits.float().mean(0).abs().clamp_min(1.0)
    elif mode == UncertaintyMode.TTA_STD:
        u = (2.0 * torch.sigmoid(variant_logits.float()).std(0, correction=0)).clamp(max=1.0)
    else:
        p = torch.sigmoid(variant_logits.float()).mean(0).clamp(1e-7, 1 - 1e-7)
        u = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
    return torch.nan_to_num(u, nan=1.0).clamp(0.0, 1.0).float()
