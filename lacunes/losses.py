"""Dice + BCE and blob loss (Kofler et al. 2022, "blob loss: instance imbalance aware loss functions
for semantic segmentation", arXiv:2205.08209).

Blob loss evaluates a criterion once per lesion instance: for instance k of a batch element, on the
region made of instance k and the background, with every *other* instance's voxels left out (they are
removed, not set to a neutral value, so they get no gradient from instance k's term and a perfectly
predicted lesion costs nothing however badly the others are predicted). Terms are averaged over the
instances of an element, then over the elements that have instances.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from lacunes.instances import label_instances


class DiceBCELoss(nn.Module):
    """MONAI ``DiceLoss(sigmoid=True)`` + ``BCEWithLogitsLoss``, equally weighted.

    Inputs are logits and a binary target of the same shape, ``B×1×...`` (any number of spatial
    dimensions, a flat ``1×1×N`` region included). ``batch=True`` computes one Dice over the whole
    batch instead of one per element: an element without foreground then still penalizes its false
    positives (per element, its Dice loss is ~1 whatever it predicts).
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, batch: bool = False) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(sigmoid=True, batch=batch)
        self.bce = nn.BCEWithLogitsLoss()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)


class LossTerms(NamedTuple):
    """What :meth:`BlobLoss.terms` computed: the loss to back-propagate and its terms as numbers."""

    total: torch.Tensor
    main: float
    blob: float | None  # None: no blob term (beta = 0, or no instance in the batch)


class BlobLoss(nn.Module):
    """``alpha · main(logits, target) + beta · blob(logits, instances)``.

    Args:
        main_criterion: criterion on the whole batch; default :class:`DiceBCELoss`.
        blob_criterion: criterion evaluated per instance on a ``1×1×N`` region (logits, binary
            target); any module with the ``(input, target)`` signature of MONAI's losses. Default
            :class:`DiceBCELoss`.
        alpha: weight of the main term (recipe: 0.66).
        beta: weight of the blob term (recipe: 0.33); 0 gives the plain main loss (the ablation).
        connectivity: used when no instance map is given and the target is labelled here.

    Shapes:
        logits ``B×1×X×Y×Z``; target ``B×1×X×Y×Z`` binary; instances (optional) ``B×1×X×Y×Z`` integer,
        0 = background. A batch without any instance returns ``alpha · main``.
    """

    def __init__(
        self,
        main_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        blob_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        alpha: float = 0.66,
        beta: float = 0.33,
        connectivity: int = 26,
    ) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        self.main = main_criterion if main_criterion is not None else DiceBCELoss()
        self.blob_criterion = blob_criterion if blob_criterion is not None else DiceBCELoss()
        self.alpha = alpha
        self.beta = beta
        self.connectivity = connectivity

    def label(self, target: torch.Tensor) -> torch.Tensor:
        """Connected components of a binary ``B×1×...`` target (computed on the CPU)."""
        arr = target.detach().cpu().numpy() > 0.5
        out = np.zeros(arr.shape, np.int32)
        for b in range(arr.shape[0]):
            out[b, 0], _ = label_instances(arr[b, 0], self.connectivity)
        return torch.from_numpy(out).to(target.device)

    def blob_term(self, logits: torch.Tensor, instances: torch.Tensor) -> torch.Tensor | None:
        """Mean over elements (with instances) of the mean over their instances; None if none."""
        element_terms = []
        for b in range(logits.shape[0]):
            inst = instances[b, 0]
            ids = torch.unique(inst)
            ids = ids[ids > 0]
            if ids.numel() == 0:
                continue
            logit_b = logits[b, 0]
            background = inst == 0
            terms = []
            for k in ids:
                own = inst == k
                region = own | background
                pred = logit_b[region].reshape(1, 1, -1)
                tgt = own[region].reshape(1, 1, -1).to(logits.dtype)
                terms.append(self.blob_criterion(pred, tgt))
            element_terms.append(torch.stack(terms).mean())
        if not element_terms:
            return None
        return torch.stack(element_terms).mean()

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, instances: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.terms(logits, target, instances).total

    def terms(
        self, logits: torch.Tensor, target: torch.Tensor, instances: torch.Tensor | None = None
    ) -> LossTerms:
        """The loss and its main and blob terms (the training loop logs both)."""
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        main = self.main(logits, target)
        total = self.alpha * main
        blob_value = None
        if self.beta > 0:
            if instances is None:
                instances = self.label(target)
            elif instances.shape != target.shape:
                raise ValueError(f"instances {tuple(instances.shape)} and target {tuple(target.shape)} differ in shape")
            blob = self.blob_term(logits.float(), instances)
            if blob is not None:
                total = total + self.beta * blob
                blob_value = float(blob.detach())
        return LossTerms(total, float(main.detach()), blob_value)
