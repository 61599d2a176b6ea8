"""How to predict (:class:`InferenceSettings`) and the two presets, ``full`` (the published recipe) and
``fast`` (for CPUs): torch-free, below both the predictor (:mod:`lacunes.inference`) and the network stage
that reads them (:mod:`lacunes.windowing`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from lacunes.options import Backend, BlendMode, Precision, TTAMode, UncertaintyMode, look_up_option


@dataclass(frozen=True)
class InferenceSettings:
    """How to predict; defaults are the published recipe (the ``full`` preset).

    Attributes:
        roi_size: sliding-window size (x, y, z).
        overlap: window overlap in [0, 1).
        sw_batch_size: windows per network call; None = 7 on a GPU (the recipe), 1 on the CPU.
        tta: the TTA plan (:mod:`lacunes.windowing`).
        n_noise: noisy copies in the ``full`` plan.
        noise_std: standard deviation of the TTA noise (normalized units, where WM ≈ 0.5–1).
        blend: how overlapping windows are blended.
        device: ``auto`` (cuda, then mps, then cpu) or a torch device name.
        precision: see :class:`Precision`; on the CPU only ``bfloat16`` differs from float32 (autocast,
            fast on CPUs with AMX/AVX-512 BF16, not exact).
        channels_last: channels-last (NDHWC) tensors for the network. Off by default: with this
            network it was slower on both a CPU and an H200 (instance norm converts back; see
            benchmarks/RESULTS.md).
        uncertainty: which uncertainty map to write.
        memory_gb: on the CPU, the host memory the network may use at once (sets how many samples
            run together); on CUDA the free memory decides.
        fit_roi_to_image: shrink the window to the volume (the brain's box with ``brain_only``; rounded
            up to 16, at least 32) where the volume is smaller: less zero padding, which otherwise shifts
            the network's instance-normalization statistics (both presets).
        seed: seeds the TTA noise.
        progress: tqdm progress bar over windows.
        conform: bring a subject to the model's space first (:mod:`lacunes.conform`: the orientation
            and voxel size recorded in the checkpoint, 1 mm and the phantoms' array order when it records
            none) and the maps back onto the subject's own grid. Off: the arrays go to the network as
            stored (how the pipeline ran before; for comparisons).
        backend: where the network runs (:mod:`lacunes.backends`): ``auto`` = OpenVINO on the CPU
            when installed (the same float32 network about 3× faster; ``bfloat16`` there is OpenVINO's
            bf16), PyTorch otherwise; ``torch``; ``openvino``.
        brain_only: compute only where the brain is, when a brain mask is known (the operating point
            masks): the volume is cropped to the brain's bounding box (plus :data:`CROP_MARGIN`
            voxels) and windows holding no brain voxel are not run. Both change nothing inside the brain
            beyond the placement of the windows (and, with noise TTA, the noise drawn), and the maps
            are 0 outside it anyway. Measured in benchmarks/RESULTS.md (clinical field of view).
    """

    roi_size: tuple[int, int, int] = (256, 256, 64)
    overlap: float = 0.7
    sw_batch_size: int | None = None
    tta: TTAMode = TTAMode.FULL
    n_noise: int = 2
    noise_std: float = 0.05
    blend: BlendMode = BlendMode.CONSTANT
    device: str = "auto"
    precision: Precision = Precision.AUTO
    channels_last: bool = False
    uncertainty: UncertaintyMode = UncertaintyMode.INVERSE_LOGIT
    memory_gb: float = 6.0
    fit_roi_to_image: bool = False
    seed: int = 0
    progress: bool = True
    brain_only: bool = True
    conform: bool = True
    backend: Backend = Backend.AUTO

    def __post_init__(self) -> None:
        if len(self.roi_size) != 3 or any(int(s) < 16 or int(s) % 16 for s in self.roi_size):
            # the U-Net halves its input four times: other sizes fail inside the network, subject by subject
            raise ValueError(f"roi_size must be 3 multiples of 16, got {self.roi_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {self.sw_batch_size}")
        if self.n_noise < 0 or self.noise_std < 0:
            raise ValueError(f"n_noise and noise_std must be >= 0, got {self.n_noise}, {self.noise_std}")
        if not (math.isfinite(self.memory_gb) and self.memory_gb > 0):
            raise ValueError(f"memory_gb must be a positive number, got {self.memory_gb}")
        for name, enum in (("tta", TTAMode), ("blend", BlendMode), ("precision", Precision),
                           ("uncertainty", UncertaintyMode), ("backend", Backend)):
            object.__setattr__(self, name, look_up_option(getattr(self, name), enum, name))

    def replace(self, **changes: Any) -> InferenceSettings:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, StrEnum) else v)
                for k, v in self.__dict__.items()}


#: The published recipe, its window (256×256×64) shrunk to the brain's box where that is smaller: a
#: window that is mostly zero padding shifts the network's instance-normalization statistics away from
#: training, and on the brain-cropped phantoms (153×189×159) the unshrunk window found 1 of 4 lacunes of
#: a held-out subject where the shrunk one found 4 (benchmarks/RESULTS.md).
FULL = InferenceSettings(fit_roi_to_image=True)
#: For CPUs: no TTA, overlap 0.25, Gaussian blending, window shrunk to the volume. Its quality cost is
#: measured in benchmarks/RESULTS.md.
FAST = InferenceSettings(overlap=0.25, tta=TTAMode.NONE, blend=BlendMode.GAUSSIAN, fit_roi_to_image=True)
PRESETS = {"full": FULL, "fast": FAST}
