"""What a model release is, apart from its weights: the sets of contrasts it accepts and was trained for,
the model's space, the normalization, its operating point and second stage (the model's own and one per
set of contrasts calibrated apart), what it was trained on, the file it came from and its weights' hash.

:class:`Release` is read from a checkpoint's metadata once (:meth:`Release.from_metadata`); the
:class:`~lacunes.inference.Predictor` holds it (``predictor.release``) and the command line, the run
records, the report and the sidecars read it there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lacunes.conform import ModelSpace
from lacunes.errors import LacunesInputError
from lacunes.options import FULL_SET, INPUT_SETS, MODALITIES, NORMALIZATION_QUANTILES
from lacunes.postprocessing import OperatingPoint
from lacunes.preprocessing import NormalizationConfig

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Release:
    """A model release's description (the module docstring).

    Attributes:
        metadata: the checkpoint's metadata as stored.
        operating_point: threshold, minimum lesion size and brain mask applied to the maps
            (:mod:`lacunes.postprocessing`).
        rescorer: the second stage (:class:`lacunes.rescoring.Rescorer`), or None.
        by_set: the operating point and second stage of a set of contrasts calibrated on its own
            (``{"T1+FLAIR": (OperatingPoint, Rescorer | None)}``); other sets use the model's own.
        normalization: the preprocessing the network was trained with.
        model_space: the orientation and voxel size the network was trained in (:mod:`lacunes.conform`).
        path: the checkpoint file, or None for a network built in memory.
        stored_sha256: the weights' hash stored in the checkpoint (None: computed from the network).
    """

    metadata: dict = field(default_factory=dict)
    operating_point: OperatingPoint = OperatingPoint()
    rescorer: Any = None
    by_set: dict[str, tuple[OperatingPoint, Any]] = field(default_factory=dict)
    normalization: NormalizationConfig = NormalizationConfig()
    model_space: ModelSpace = ModelSpace()
    path: Path | None = None
    stored_sha256: str | None = None

    @classmethod
    def from_metadata(cls, metadata: dict, path: str | Path | None = None, stored_sha256: str | None = None,
                      threshold: float | None = None, min_volume_mm3: float | None = None) -> Release:
        """The release a checkpoint's metadata describes (``threshold`` and ``min_volume_mm3`` override the
        stored operating points), with a warning where it carries no calibrated point or a threshold under
        the second stage's candidates."""
        from lacunes.rescoring import Rescorer

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
        by_set = {name: (OperatingPoint.from_dict(calibration.get("operating_point")).with_overrides(
                             threshold, min_volume_mm3), Rescorer.from_dict(calibration.get("rescorer")))
                  for name, calibration in (metadata.get("calibration_by_set") or {}).items()}
        return cls(metadata, op, rescorer, by_set, normalization, ModelSpace.from_dict(metadata.get("model_space")),
                   None if path is None else Path(path), stored_sha256)

    def replace(self, **changes: Any) -> Release:
        return replace(self, **changes)

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
        unless the user ``chosen`` it (``--modalities``): then a warning. Raises
        :class:`lacunes.errors.LacunesInputError`."""
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
    def data_statement(self) -> str:
        """One line on what the network was trained on (:func:`data_statement`)."""
        return data_statement(self.metadata)

    @property
    def calibration_statement(self) -> str:
        """One line on where its operating point was chosen (``lacunes calibrate`` records it), saying so
        when that was below the minimum of labelled subjects and lacunes (``--force``)."""
        point = self.metadata.get("operating_point")
        if not point:
            return "not calibrated: the default operating point (p >= 0.5, no second stage)"
        chosen = point.get("chosen_on") or {}
        if not chosen:
            return "operating point stored without a record of where it was chosen"
        text = (f"operating point chosen on {len(chosen.get('subjects', []))} labelled subject(s) of "
                f"{chosen.get('folder', '?')} ({chosen.get('setting', '?')})")
        if chosen.get("below_minimum"):
            text += f"; BELOW THE MINIMUM, forced: {chosen['below_minimum']}"
        return text
