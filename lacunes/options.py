"""The project's vocabulary, torch-free: every choice a user names (as enums), the preset names, the
modalities and the defaults shared by several modules, written once. The command line takes its
``choices`` and defaults from here; :func:`look_up_option` turns a wrong value into a message that
names the closest valid one (as MONAI's ``look_up_option`` does).

Importing this module imports nothing heavy, so that ``lacunes --help`` and argument errors are fast.
"""

from __future__ import annotations

import difflib
from enum import StrEnum

# ---------------------------------------------------------------------------------------------- inputs

#: The network's input channels, in order. Each layout's names derive from these.
MODALITIES: tuple[str, ...] = ("T1", "T2", "FLAIR")
#: The sets of contrasts a subject may come with, by name (``+`` between modalities, in channel order). A
#: missing contrast reaches the network as a channel of zeros; a model states the sets it accepts
#: (``input_sets`` in its metadata: those it was trained for, or a release's measured ones; all three when
#: it does not say). The first is the full set.
INPUT_SETS: dict[str, tuple[str, ...]] = {
    "T1+T2+FLAIR": ("T1", "T2", "FLAIR"),
    "T1+FLAIR": ("T1", "FLAIR"),
    "T1+T2": ("T1", "T2"),
    "T2+FLAIR": ("T2", "FLAIR"),
}
FULL_SET = "T1+T2+FLAIR"


def input_set_name(modalities) -> str:
    """The name of the set of ``modalities`` (any order): ``("FLAIR", "T1")`` → ``"T1+FLAIR"``. Raises
    ValueError for a set no model takes (:data:`INPUT_SETS`)."""
    present = set(modalities)
    unknown = present - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modality {', '.join(sorted(unknown))} (the modalities: {', '.join(MODALITIES)})")
    name = "+".join(m for m in MODALITIES if m in present)
    if name not in INPUT_SETS:
        raise ValueError(f"{name or 'no contrast'} is not a set of contrasts a lacune model takes (the sets: "
                         f"{', '.join(INPUT_SETS)})")
    return name


# ---------------------------------------------------------------------------------------------- inference


class TTAMode(StrEnum):
    NONE = "none"
    FLIPS = "flips"
    FULL = "full"


class Precision(StrEnum):
    """Arithmetic of the network. ``float32`` is IEEE float32 everywhere (cuDNN's TF32 off); ``tf32``
    lets cuDNN use TF32 for convolutions on CUDA (PyTorch's own default; probabilities within 5e-4 of
    float32 on the sample case); ``float16``/``bfloat16`` are autocast (convolutions in 16 bit,
    normalization in float32; float16 is the fastest on a GPU, within 3e-3). ``auto`` = tf32 on CUDA,
    float32 elsewhere. Measured in benchmarks/RESULTS.md."""

    AUTO = "auto"
    FLOAT32 = "float32"
    TF32 = "tf32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class BlendMode(StrEnum):
    CONSTANT = "constant"
    GAUSSIAN = "gaussian"


class UncertaintyMode(StrEnum):
    INVERSE_LOGIT = "inverse-logit"
    TTA_STD = "tta-std"
    ENTROPY = "entropy"


class Backend(StrEnum):
    AUTO = "auto"
    TORCH = "torch"
    OPENVINO = "openvino"


#: Inference presets (:data:`lacunes.inference.PRESETS`): the published recipe and the CPU setting.
INFERENCE_PRESETS: tuple[str, ...] = ("full", "fast")
DEFAULT_INFERENCE_PRESET = "full"
#: Quantiles of the per-channel normalization (of the brain's voxels).
NORMALIZATION_QUANTILES: tuple[float, float] = (0.005, 0.995)
#: Raw probability at which the second stage's candidates are formed, and the default threshold.
DEFAULT_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------- evaluation


class Matching(StrEnum):
    CENTRE = "centre"
    OVERLAP = "overlap"


#: Direction matrix (SimpleITK's row-major 3×3, LPS frame) of arrays whose axes run towards the right,
#: anterior and superior: the ICBM template's array order, in which the phantoms are made and the bundled
#: networks were trained (:class:`lacunes.conform.ModelSpace`). x and y point against LPS's axes.
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
#: The challenge's centre-matching distance.
MAX_DISTANCE_MM = 5.0


# ---------------------------------------------------------------------------------------------- training


class LossMode(StrEnum):
    BLOB = "blob"  # alpha · (Dice + BCE) + beta · blob(Dice + BCE)
    DICEBCE = "dicebce"  # beta = 0: the ablation


class LabelMode(StrEnum):
    UNION = "union"  # a voxel is a lacune if either rater marked it
    MEAN = "mean"  # mean of the raters >= 0.5 (with two raters: same as union)
    RATER1 = "rater1"
    INTERSECTION = "intersection"


class OptimizerName(StrEnum):
    RANGER21 = "ranger21"
    ADAMW = "adamw"


#: Training presets (:data:`lacunes.training.config.PRESETS`), with what each is for.
TRAIN_PRESETS: dict[str, str] = {
    "valdo": "the publication's recipe (222 epochs, 4 x 2 crops of 192x192x32; a GPU)",
    "cpu": "the same network and loss on a CPU (64x64x32 crops, 24 epochs of 20 batches)",
    "cpu-hardneg": "continues a cpu run (--init-from) on the background it gets wrong",
    "gpu-hardneg": "continues a calibrated model on a GPU (--init-from), the recipe's batches",
    "cpu-acq": "continues a calibrated model on a CPU on acquisition-randomized phantoms (--acquisitions)",
    "cpu-mimics": "continues a calibrated model on a CPU on phantoms with varied mimics (--mimics --acquisitions)",
    "cpu-contrast": "cpu-mimics with a random contrast curve (gamma) on a third of the crops",
    "cpu-specific": "cpu-contrast with a fifth of the crops on the network's own mined false positives",
    "smoke": "a few steps, to check that training runs",
}
DEFAULT_TRAIN_PRESET = "valdo"
#: The generator's seed for training phantoms; seeds the generator refuses for training.
TRAINING_SEED = 2021
RESERVED_SEEDS: dict[int, str] = {7777: "the held-out benchmark (lacunes synth --seed 7777)",
                                  5151: "the operating-point validation set (lacunes synth --seed 5151)",
                                  8801: "the out-of-family benchmark's colin27 family (benchmarks/families.py)",
                                  8802: "the out-of-family benchmark's wide family (benchmarks/families.py)"}


# ---------------------------------------------------------------------------------------------- look-up

def option_values(options) -> list[str]:
    """The valid values of ``options`` (a :class:`StrEnum` class, or any collection of strings), in order:
    argparse ``choices`` and the list :func:`look_up_option` names."""
    return [e.value for e in options] if _is_enum(options) else list(options)


def _is_enum(options) -> bool:
    return isinstance(options, type) and issubclass(options, StrEnum)


def look_up_option(value: str, options, name: str = "option"):
    """``value`` as one of ``options`` (a :class:`StrEnum` class, or any collection of strings); a value
    that is not one raises ValueError naming the valid ones and, when one is close, "did you mean".

    >>> look_up_option("flip", TTAMode, "tta")
    Traceback (most recent call last):
    ValueError: tta 'flip' is not one of none, flips, full; did you mean 'flips'?
    """
    valid = option_values(options)
    text = str(value.value if isinstance(value, StrEnum) else value)
    if text in valid:
        return options(text) if _is_enum(options) else text
    lower = {v.lower(): v for v in valid}
    close = [lower[c] for c in difflib.get_close_matches(text.lower(), list(lower), n=1, cutoff=0.6)]
    raise ValueError(f"{name} {text!r} is not one of {', '.join(valid)}" + (f"; did you mean {close[0]!r}?" if close
                                                                             else ""))
