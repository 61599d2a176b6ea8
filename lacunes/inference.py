"""The predictor used by ``process.py``, the CLI and the benchmarks: a subject in, probability and
uncertainty maps on its own grid out.

Two steps, both public: :meth:`Predictor.raw` (repair, conform to the model's space, normalize, the network
stage of :mod:`lacunes.windowing`: sliding windows × TTA variants) returns a :class:`RawPrediction`;
:meth:`Predictor.finish` turns it into maps (the variants' mean probability, the second stage, the operating
point, the uncertainty, back onto the subject's grid) and returns a :class:`Prediction`. Calibration and the
benchmarks run :meth:`~Predictor.raw` once and finish it as often as they need. **Probabilities are
averaged** (the prediction is the mean of the TTA variants' sigmoids); the variants' mean logit gives the
default uncertainty.
"""

from __future__ import annotations

import copy as copying
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lacunes.conform import Conform
from lacunes.conform import plan as conform_plan
from lacunes.geometry import Geometry
from lacunes.instances import RAS_FROM_LPS
from lacunes.io import Subject
from lacunes.options import (
    FULL_SET,
    MODALITIES,
    Backend,
    Precision,
    UncertaintyMode,
    input_set_name,
)
from lacunes.postprocessing import OperatingPoint, finish_probability, logit
from lacunes.preprocessing import brain_mask, count_nonfinite, prepare_image, repair_nonfinite
from lacunes.release import Release
from lacunes.settings import FULL, InferenceSettings
from lacunes.uncertainty import uncertainty_map
from lacunes.windowing import WindowedNetwork, mean_probability

logger = logging.getLogger(__name__)


#: More voxels than this with a non-finite network output is an error (:class:`NonFiniteOutputError`);
#: up to this many are set to probability 0 and uncertainty 1 (logged).
NONFINITE_OUTPUT_LIMIT = 100


class NonFiniteOutputError(ValueError):
    """The network's output is not finite beyond a few voxels (damaged weights, overflow)."""


@dataclass
class ModelInput:
    """A subject made ready for the network (:meth:`Predictor.prepare`), in the model's space.

    Attributes:
        normalized: the ``C×X×Y×Z`` network input (the second stage reads it too).
        mask: the brain mask (:func:`lacunes.preprocessing.brain_mask`; applied when the operating point
            masks, None for none).
        spacing: the model grid's voxel size (mm).
        conform: how the subject came to the model's space (None: it was there).
        native_brain: the brain mask on the subject's own grid, where the maps are resampled back.
        geometry: the model-space grid in scanner space (None for a bare array): places of what the second
            stage rejected are given in scanner mm with it.
        input_set: the subject's set of contrasts (:data:`lacunes.options.INPUT_SETS`; the channels of the
            others are zeros): it picks the set's own calibration where the model has one.
    """

    normalized: np.ndarray
    mask: np.ndarray | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    conform: Conform | None = None
    native_brain: np.ndarray | None = None
    geometry: Geometry | None = None
    input_set: str = FULL_SET


@dataclass
class RawPrediction:
    """The network stage of one subject (:meth:`Predictor.raw`): its input, one logit channel per TTA
    variant (``V×X×Y×Z`` float32, on the device) and the windowing's numbers (window size, windows run,
    samples per call, backend, conforming, ``network_seconds``)."""

    input: ModelInput
    variant_logits: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def probability(self) -> np.ndarray:
        """The raw probability (float32, model space): the mean of the variants' sigmoids, before the
        second stage and the operating point."""
        return mean_probability(self.variant_logits).float().cpu().numpy()


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` computed: the two maps on the subject's own grid (float32, [0, 1])
    and the run's numbers (window size, windows run, second-stage candidates and rejections, voxels added
    by the extent, small lesions removed, non-finite outputs, conforming). Unpacks and indexes as the
    pair ``probability, uncertainty``."""

    probability: np.ndarray
    uncertainty: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.probability, self.uncertainty))

    def __getitem__(self, index):
        return (self.probability, self.uncertainty)[index]


def finish_maps(variant_logits: torch.Tensor, op: OperatingPoint, rescorer, uncertainty: UncertaintyMode | str,
                mask: np.ndarray | None, spacing: tuple[float, float, float], image: np.ndarray | None,
                source: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Probability, uncertainty (float32 (x, y, z)) and post-processing counts from ``V×X×Y×Z`` logits.

    The probability is the mean of the variants' sigmoids, 0 outside ``mask`` (when given and the
    operating point masks), with the candidates the second stage rejects removed (``image``: the
    normalized input it needs), recalibrated so that 0.5 means the operating point's threshold,
    detected lesions extended (hysteresis) and lesions under the minimum size removed
    (:func:`lacunes.postprocessing.finish_probability`). The uncertainty is computed from the logits
    shifted to the threshold each voxel was judged against, 1 on candidates the second stage
    rejected, 0 outside ``mask``.
    Voxels with a non-finite logit in any variant get probability 0 and uncertainty 1 (logged); more than
    :data:`NONFINITE_OUTPUT_LIMIT` of them raise :class:`NonFiniteOutputError` (naming ``source``)."""
    finite = torch.isfinite(variant_logits).all(0)
    bad = int((~finite).sum())
    if bad > NONFINITE_OUTPUT_LIMIT:
        raise NonFiniteOutputError(
            f"the network's output is NaN or infinite in {bad} of {finite.numel()} voxels: the weights"
            + (f" of {source}" if source else "")
            + " are probably damaged (or the arithmetic overflowed: try --precision float32); no map written")
    if bad:
        logger.error("%d voxel(s) with non-finite network output; set to probability 0, uncertainty 1", bad)
        variant_logits = torch.nan_to_num(variant_logits, nan=0.0)
    raw = mean_probability(variant_logits)
    if bad:
        raw = torch.where(finite, raw, torch.zeros_like(raw))
    masking = mask is not None and op.mask_outside_brain
    prob, stats, threshold, rejected = finish_probability(raw.float().cpu().numpy(), op, mask if masking else None,
                                                          spacing, rescorer, image, describe_rejected=True)
    if isinstance(threshold, np.ndarray):
        shift = torch.from_numpy(logit(threshold).astype(np.float32)).to(variant_logits.device)
    else:
        shift = op.logit_shift
    unc = uncertainty_map(uncertainty, variant_logits - shift)
    if bad:
        unc = torch.where(finite, unc, torch.ones_like(unc))
    if rejected is not None:
        unc = torch.where(torch.from_numpy(rejected).to(unc.device), torch.ones_like(unc), unc)
    if masking:
        inside = torch.from_numpy(np.asarray(mask, bool)).to(unc.device)
        unc = torch.where(inside, unc, torch.zeros_like(unc))
    return prob, unc.float().cpu().numpy(), {**stats, "nonfinite_outputs": bad}


class Predictor:
    """Lacune probability and uncertainty for a subject.

    Args:
        network: maps ``B×C×X×Y×Z`` to logits ``B×1×X×Y×Z`` (any fully convolutional module; C the
            modalities, :data:`lacunes.options.MODALITIES`).
        settings: :class:`InferenceSettings` (the recipe by default).
        release: what the model is apart from its weights (:class:`lacunes.release.Release`: the
            normalization, the model's space, the operating points and second stages, what it accepts);
            :meth:`from_checkpoint` reads the checkpoint's; by default the recipe's normalization, 1 mm
            RAS, p >= 0.5 with the brain mask and no second stage.
        operating_point: replaces the release's own (threshold, minimum lesion size, brain mask;
            :mod:`lacunes.postprocessing`).

    Example:
        >>> predictor = Predictor.from_checkpoint("model/lacunes.pt", FAST)
        >>> probability, uncertainty = predictor.predict(subject)
    """

    def __init__(self, network: torch.nn.Module, settings: InferenceSettings = FULL, release: Release | None = None,
                 operating_point: OperatingPoint | None = None) -> None:
        self.stage = WindowedNetwork(network, settings)
        self.settings = self.stage.settings  # bfloat16 an OpenVINO CPU lacks is float32 here
        self.release = release or Release()
        if operating_point is not None:
            self.release = self.release.replace(operating_point=operating_point)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, settings: InferenceSettings = FULL,
                        threshold: float | None = None, min_volume_mm3: float | None = None) -> Predictor:
        """The predictor a checkpoint describes: its network and its release (``threshold`` and
        ``min_volume_mm3`` override the stored operating points)."""
        from lacunes.checkpoint import check_lacune_network, load_network
        from lacunes.network import NetworkConfig

        network, payload = load_network(path)
        check_lacune_network(NetworkConfig.from_dict(payload["network"]), path)
        release = Release.from_metadata(payload.get("metadata", {}), path, payload.get("weights_sha256"),
                                        threshold, min_volume_mm3)
        return cls(network, settings, release)

    def with_post_processing(self, operating_point: OperatingPoint, rescorer=None) -> Predictor:
        """The same network and settings with another operating point and second stage (e.g.
        :data:`lacunes.postprocessing.RAW` and None: the network stage alone); this predictor is unchanged."""
        other = copying.copy(self)
        other.release = self.release.replace(operating_point=operating_point, rescorer=rescorer, by_set={})
        return other

    @property
    def network(self) -> torch.nn.Module:
        return self.stage.network

    @property
    def device(self) -> torch.device:
        return self.stage.device

    @property
    def backend(self) -> Backend:
        return self.stage.backend

    @property
    def precision(self) -> Precision:
        """The precision in effect on this device (``auto`` resolved)."""
        return self.stage.precision

    @property
    def variants(self) -> int:
        """TTA variants per window."""
        return len(self.stage.plan.variants)

    @property
    def weights_sha256(self) -> str:
        """The hash of the network's weights (:func:`lacunes.checkpoint.weights_sha256`): the one stored
        in the checkpoint it came from, else computed."""
        if self.release.stored_sha256 is None:
            from lacunes.checkpoint import weights_sha256

            self.release = self.release.replace(stored_sha256=weights_sha256(self.network.state_dict()))
        return self.release.stored_sha256

    def prepare(self, subject: Subject | np.ndarray) -> ModelInput:
        """A subject (or a raw ``C×X×Y×Z`` array, taken as already in the model's space) made ready for the
        network: non-finite voxels repaired (:func:`lacunes.preprocessing.repair_nonfinite`), conformed to
        the model's space (``settings.conform``, :mod:`lacunes.conform`), the brain masked
        (:func:`lacunes.preprocessing.brain_mask`), each channel quantile-normalized."""
        image = subject.image if isinstance(subject, Subject) else np.asarray(subject, dtype=np.float32)
        spacing = subject.geometry.spacing if isinstance(subject, Subject) else (1.0, 1.0, 1.0)
        counts = count_nonfinite(image)
        if any(counts):
            logger.warning("repairing non-finite input voxels per channel: %s", counts)
        image = native = repair_nonfinite(image)
        conform = None
        if isinstance(subject, Subject) and self.settings.conform:
            conform = conform_plan(subject.geometry, self.release.model_space)
            if not conform.identity:
                logger.info("%s: to the model's space: %s", subject.subject_id, conform.describe())
                image, spacing = conform.to_model(image), conform.model.spacing
        present = subject.modalities if isinstance(subject, Subject) else MODALITIES
        for name, channel in zip(MODALITIES, image):
            if name not in present:
                continue  # an absent contrast: zeros, as the network was trained to see it
            if channel.size and channel.min() == channel.max():
                logger.warning("%s is constant (%g everywhere): it carries no information", name, float(channel.flat[0]))
        mask = brain_mask(image)
        if not mask.any():
            logger.warning("the input holds no brain (all channels zero or constant): no lesion can be found")
        if conform is not None and conform.identity:
            conform = None
        geometry = None if not isinstance(subject, Subject) else conform.model if conform is not None else subject.geometry
        return ModelInput(prepare_image(image, self.release.normalization), mask, tuple(spacing), conform,
                          brain_mask(native) if conform is not None and conform.resampled else None, geometry,
                          input_set_name(present))

    def raw(self, subject: Subject | np.ndarray | ModelInput) -> RawPrediction:
        """The network stage of a subject (:meth:`prepare` first, unless given a :class:`ModelInput`): on the
        brain's box when the operating point masks."""
        model_input = subject if isinstance(subject, ModelInput) else self.prepare(subject)
        stats: dict[str, Any] = {}
        brain = model_input.mask if self.release.operating_point.mask_outside_brain else None  # windows on its box
        t0 = time.perf_counter()
        logits = self.stage.variant_logits(model_input.normalized, brain, stats)
        stats["network_seconds"] = round(time.perf_counter() - t0, 3)
        if model_input.conform is not None:
            stats["conform"] = model_input.conform.to_dict()
        return RawPrediction(model_input, logits, stats)

    def finish(self, raw: RawPrediction, operating_point: OperatingPoint | None = None,
               uncertainty: UncertaintyMode | str | None = None) -> Prediction:
        """The maps of a :class:`RawPrediction` (:func:`finish_maps`, with this predictor's second stage,
        its operating point and the settings' uncertainty unless given), on the subject's own grid: both
        float32 (x, y, z) in [0, 1], 0 outside the brain."""
        given = raw.input
        op, rescorer = self.release.post_processing_for(given.input_set)
        op = operating_point or op
        prob, unc, stats = finish_maps(raw.variant_logits, op, rescorer,
                                       uncertainty or self.settings.uncertainty, given.mask, given.spacing,
                                       given.normalized, self.release.path)
        stats = {**raw.stats, **stats, "input_set": given.input_set}
        if given.geometry is not None:
            for row in stats.get("rejected_candidates", []):
                ras = given.geometry.physical(row["voxel"]) * RAS_FROM_LPS  # scanner RAS, as the lesion table
                row["centre_ras_mm"] = [round(float(v), 2) + 0.0 for v in ras]
        conform = given.conform
        if conform is None:
            return Prediction(prob, unc, stats)
        prob, unc = conform.probability_to_native(prob), conform.to_native(unc)
        if conform.resampled:  # 0 outside the brain on the input's own grid, [0, 1] after interpolation
            if given.native_brain is not None and op.mask_outside_brain:
                prob, unc = np.where(given.native_brain, prob, 0.0), np.where(given.native_brain, unc, 0.0)
            prob, unc = np.clip(prob, 0.0, 1.0).astype(np.float32), np.clip(unc, 0.0, 1.0).astype(np.float32)
        return Prediction(prob, unc, stats)

    def predict(self, subject: Subject | np.ndarray) -> Prediction:
        """Probability and uncertainty maps of a subject (:meth:`raw`, then :meth:`finish`), with what was
        computed (:class:`Prediction`; ``prob, unc = predict(...)``)."""
        return self.finish(self.raw(subject))

    def predict_normalized(self, normalized: np.ndarray, mask: np.ndarray | None = None,
                           spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Prediction:
        """The maps of a normalized ``C×X×Y×Z`` array already in the model's space (``mask``: the brain)."""
        return self.finish(self.raw(ModelInput(normalized, mask, tuple(spacing))))
