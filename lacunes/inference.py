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

from lacunes.conform import Conform, ModelSpace
from lacunes.conform import plan as conform_plan
from lacunes.geometry import Geometry
from lacunes.io import Subject
from lacunes.options import (
    FULL_SET,
    INPUT_SETS,
    MODALITIES,
    NORMALIZATION_QUANTILES,
    Backend,
    Precision,
    UncertaintyMode,
    input_set_name,
)
from lacunes.postprocessing import OperatingPoint, finish_probability, logit
from lacunes.preprocessing import NormalizationConfig, brain_mask, count_nonfinite, prepare_image, repair_nonfinite
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


def data_statement(metadata: dict) -> str:
    """One line on what a checkpoint's network was trained on, and what a user should do about it."""
    stated = metadata.get("data_statement")
    if stated:
        return str(stated)
    data = metadata.get("data") or {}
    if data.get("generated"):
        return ("trained on synthetic phantoms only (generated, seed "
                f"{data['generated'].get('seed')}), never on patient data: check it, or recalibrate it, on "
                "labelled subjects of your cohort before trusting its maps")
    if data.get("folder"):
        return f"trained on the subjects in {data['folder']}" + (f" ({data['note']})" if data.get("note") else "")
    return "its training data are not recorded in the checkpoint"


class Predictor:
    """Lacune probability and uncertainty for a subject.

    Args:
        network: maps ``B×C×X×Y×Z`` to logits ``B×1×X×Y×Z`` (any fully convolutional module; C the
            modalities, :data:`lacunes.options.MODALITIES`).
        settings: :class:`InferenceSettings` (the recipe by default).
        normalization: the preprocessing the network was trained with.
        metadata: the checkpoint's description, kept for reports.
        operating_point: threshold, minimum lesion size and brain mask applied to the maps (see
            :mod:`lacunes.postprocessing`); :meth:`from_checkpoint` reads the checkpoint's.
        rescorer: the second stage (:class:`lacunes.rescoring.Rescorer`), or None.
        model_space: the orientation and voxel size the network was trained in (subjects are conformed
            to it, :mod:`lacunes.conform`); :meth:`from_checkpoint` reads the checkpoint's.
        by_set: the operating point and second stage of a set of contrasts calibrated on its own
            (``{"T1+FLAIR": (OperatingPoint, Rescorer | None)}``); other sets use ``operating_point`` and
            ``rescorer``. :meth:`from_checkpoint` reads the checkpoint's ``calibration_by_set``.

    Example:
        >>> predictor = Predictor.from_checkpoint("model/lacunes.pt", FAST)
        >>> probability, uncertainty = predictor.predict(subject)
    """

    def __init__(
        self,
        network: torch.nn.Module,
        settings: InferenceSettings = FULL,
        normalization: NormalizationConfig = NormalizationConfig(),
        metadata: dict | None = None,
        operating_point: OperatingPoint = OperatingPoint(),
        rescorer=None,
        model_space: ModelSpace = ModelSpace(),
        by_set: dict[str, tuple[OperatingPoint, Any]] | None = None,
    ) -> None:
        self.stage = WindowedNetwork(network, settings)
        self.settings = self.stage.settings  # bfloat16 an OpenVINO CPU lacks is float32 here
        self.model_space = model_space
        self.operating_point = operating_point
        self.rescorer = rescorer
        self.by_set = dict(by_set or {})
        self.normalization = normalization
        self.metadata = metadata or {}
        self.checkpoint: Path | None = None  # the file the weights came from (set by from_checkpoint)
        self._weights_sha256: str | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, settings: InferenceSettings = FULL,
                        threshold: float | None = None, min_volume_mm3: float | None = None) -> Predictor:
        """The predictor a checkpoint describes: its network, normalization, operating point and second
        stage (``threshold`` and ``min_volume_mm3`` override the stored ones)."""
        from lacunes.checkpoint import check_lacune_network, load_network
        from lacunes.network import NetworkConfig
        from lacunes.rescoring import Rescorer

        network, payload = load_network(path)
        check_lacune_network(NetworkConfig.from_dict(payload["network"]), path)
        metadata = payload.get("metadata", {})
        norm = metadata.get("normalization", {})
        normalization = NormalizationConfig(norm.get("lower", NORMALIZATION_QUANTILES[0]),
                                            norm.get("upper", NORMALIZATION_QUANTILES[1]))
        op = OperatingPoint.from_dict(metadata.get("operating_point"))
        if not metadata.get("operating_point") and threshold is None:
            logger.warning("%s carries no calibrated operating point: voxels are lacunes from p >= %g, with no second "
                           "stage (a fresh or fine-tuned training checkpoint; calibrate it on labelled subjects with "
                           "lacunes calibrate, or give --threshold)", path, op.threshold)
        op = op.with_overrides(threshold, min_volume_mm3)
        rescorer = Rescorer.from_dict(metadata.get("rescorer"))
        if rescorer is not None and op.threshold < rescorer.candidate_threshold:
            logger.warning("threshold %g is under the second stage's candidate threshold %g: voxels between the "
                           "two are not re-scored", op.threshold, rescorer.candidate_threshold)
        by_set = {}
        for name, calibration in (metadata.get("calibration_by_set") or {}).items():
            by_set[name] = (OperatingPoint.from_dict(calibration.get("operating_point")).with_overrides(
                threshold, min_volume_mm3), Rescorer.from_dict(calibration.get("rescorer")))
        predictor = cls(network, settings, normalization, metadata, op, rescorer,
                        ModelSpace.from_dict(metadata.get("model_space")), by_set)
        predictor.checkpoint = Path(path)
        predictor._weights_sha256 = payload.get("weights_sha256")
        return predictor

    def with_post_processing(self, operating_point: OperatingPoint, rescorer=None) -> Predictor:
        """The same network and settings with another operating point and second stage (e.g.
        :data:`lacunes.postprocessing.RAW` and None: the network stage alone); this predictor is unchanged."""
        other = copying.copy(self)
        other.operating_point, other.rescorer, other.by_set = operating_point, rescorer, {}
        return other

    @property
    def input_sets(self) -> tuple[str, ...]:
        """The sets of contrasts the model accepts (its checkpoint's ``input_sets``: the sets it was trained
        for, or those a release states as measured; the full set when it does not say)."""
        return tuple(self.metadata.get("input_sets") or (FULL_SET,))

    @property
    def input_sets_trained(self) -> tuple[str, ...]:
        """The sets of contrasts the network was trained for (``input_sets_trained`` where a release stated
        others as measured, else :attr:`input_sets`)."""
        return tuple(self.metadata.get("input_sets_trained") or self.input_sets)

    @property
    def input_sets_statement(self) -> str:
        """``accepts T1+T2+FLAIR, T1+FLAIR (trained for T1+T2+FLAIR; the others measured)``, for run logs."""
        text = f"accepts {', '.join(self.input_sets)}"
        if self.input_sets_trained != self.input_sets:
            text += f" (trained for {', '.join(self.input_sets_trained)}; the others measured: its model card)"
        return text

    def check_input_set(self, input_set: str, chosen: bool = False, subject_id: str = "the subject") -> None:
        """Refuse a set of contrasts the model does not accept (:attr:`input_sets`), naming those it does,
        unless the user ``chosen`` it (``--modalities``): then a warning. Raises :class:`lacunes.errors.LacunesInputError`."""
        from lacunes.errors import LacunesInputError

        if input_set in self.input_sets:
            return
        missing = [m for m in MODALITIES if m not in INPUT_SETS[input_set]]
        what = (f"{subject_id} has {input_set} (no {', '.join(missing)}); the model accepts "
                f"{', '.join(self.input_sets)} only")
        if not chosen:
            raise LacunesInputError(f"{what}: its maps would not be trustworthy. Use a model trained without "
                                    f"{', '.join(missing)} (input_sets in its checkpoint), or --modalities "
                                    f"{input_set} to run it anyway")
        logger.warning("%s: its missing contrasts reach the network as zeros, which it never saw", what)

    def post_processing_for(self, input_set: str = FULL_SET) -> tuple[OperatingPoint, Any]:
        """The operating point and second stage for a set of contrasts: its own calibration where the
        model has one (:attr:`by_set`), else the model's."""
        return self.by_set.get(input_set, (self.operating_point, self.rescorer))

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
        """The hash of the network's weights (:func:`lacunes.checkpoint.weights_sha256`), as stored in the
        checkpoint it came from."""
        if self._weights_sha256 is None:
            from lacunes.checkpoint import weights_sha256

            self._weights_sha256 = weights_sha256(self.network.state_dict())
        return self._weights_sha256

    @property
    def data_statement(self) -> str:
        """One line on what the network was trained on (:func:`data_statement`)."""
        return data_statement(self.metadata)

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
            conform = conform_plan(subject.geometry, self.model_space)
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
        return ModelInput(prepare_image(image, self.normalization), mask, tuple(spacing), conform,
                          brain_mask(native) if conform is not None and conform.resampled else None, geometry,
                          input_set_name(present))

    def raw(self, subject: Subject | np.ndarray | ModelInput) -> RawPrediction:
        """The network stage of a subject (:meth:`prepare` first, unless given a :class:`ModelInput`): on the
        brain's box when the operating point masks."""
        model_input = subject if isinstance(subject, ModelInput) else self.prepare(subject)
        stats: dict[str, Any] = {}
        brain = model_input.mask if self.operating_point.mask_outside_brain else None  # windows on its box
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
        op, rescorer = self.post_processing_for(given.input_set)
        op = operating_point or op
        prob, unc, stats = finish_maps(raw.variant_logits, op, rescorer,
                                       uncertainty or self.settings.uncertainty, given.mask, given.spacing,
                                       given.normalized, self.checkpoint)
        stats = {**raw.stats, **stats, "input_set": given.input_set}
        if given.geometry is not None:
            for row in stats.get("rejected_candidates", []):
                row["centre_mm"] = [round(float(v), 2) for v in given.geometry.physical(row["voxel"])]
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
