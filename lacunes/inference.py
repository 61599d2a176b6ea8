"""The predictor used by ``process.py``, the CLI and the benchmarks.

One pass of MONAI's ``sliding_window_inference`` serves every test-time-augmentation (TTA) variant:
the noisy copies of the volume travel as extra input channels, and each batch of windows is
expanded into all its variants (identity, flips, noisy copies), run through the network together,
un-flipped and returned as one logit channel per variant, which the inferer blends over windows.
This equals running ``sliding_window_inference`` once per variant (blending logits), then taking
each variant's sigmoid and averaging — without the repeated padding, window gathering, stitching
and the per-variant network calls of one sample each.

TTA plans (``TTAMode``): ``none`` (identity), ``flips`` (identity + a flip along each of x, y, z: 4
variants), ``full`` (the flips + ``n_noise`` copies with Gaussian noise of ``noise_std`` added to the
normalized volume: 6 variants by default). **Probabilities are averaged** (the prediction is the mean
of the variants' sigmoids); the variants' mean logit gives the default uncertainty.
"""

from __future__ import annotations

import contextlib
import copy as copying
import functools
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lacunes.backends import OpenVINONetwork, resolve_backend
from lacunes.conform import ModelSpace
from lacunes.conform import plan as conform_plan
from lacunes.device import resolve_device
from lacunes.io import Subject
from lacunes.options import (
    NORMALIZATION_QUANTILES,
    Backend,
    BlendMode,
    Precision,
    TTAMode,
    UncertaintyMode,
    look_up_option,
)
from lacunes.postprocessing import OperatingPoint, finish_probability, logit
from lacunes.preprocessing import NormalizationConfig, brain_mask, count_nonfinite, prepare_image, repair_nonfinite
from lacunes.uncertainty import uncertainty_map

logger = logging.getLogger(__name__)

#: Host memory per window voxel for one network sample on the CPU (measured: a 256×256×64 window of
#: the recipe's BasicUNet peaks at about 5.3 GB RSS in float32).
CPU_BYTES_PER_VOXEL = 1250
#: The same on CUDA, per sample, float16 autocast (measured on an H200: 20.4 GB for 7 recipe windows,
#: ~695 bytes a voxel; float32/tf32 take 36 GB, ~1230, counted as twice this). OOM halves anyway.
CUDA_BYTES_PER_VOXEL = 700
#: Widest activation of the recipe's network at full resolution (the first decoder level concatenates
#: 32 + 32 channels). Samples per CUDA call are capped so that such an activation keeps under 2**31
#: elements, the limit of the 32-bit indexing of several CUDA kernels (7 windows of 256×256×64).
WIDEST_CHANNELS = 64


@dataclass(frozen=True)
class InferenceSettings:
    """How to predict; defaults are the published recipe (the ``full`` preset).

    Attributes:
        roi_size: sliding-window size (x, y, z).
        overlap: window overlap in [0, 1).
        sw_batch_size: windows per network call; None = 7 on a GPU (the recipe), 1 on the CPU.
        tta: the TTA plan (see the module docstring).
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


@contextlib.contextmanager
def backend_flags(device: torch.device, allow_tf32: bool) -> Iterator[None]:
    """On CUDA: cuDNN autotuning on (all windows share one shape, so the search pays once per process)
    and TF32 convolutions on or off; the previous flags come back afterwards. Elsewhere: nothing."""
    if device.type != "cuda":
        yield
        return
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=allow_tf32):
        yield


#: The published recipe, its window (256×256×64) shrunk to the brain's box where that is smaller: a
#: window that is mostly zero padding shifts the network's instance-normalization statistics away from
#: training, and on the brain-cropped phantoms (153×189×159) the unshrunk window found 1 of 4 lacunes of
#: a held-out subject where the shrunk one found 4 (benchmarks/RESULTS.md).
FULL = InferenceSettings(fit_roi_to_image=True)
#: For CPUs: no TTA, overlap 0.25, Gaussian blending, window shrunk to the volume. Its quality cost is
#: measured in benchmarks/RESULTS.md.
FAST = InferenceSettings(overlap=0.25, tta=TTAMode.NONE, blend=BlendMode.GAUSSIAN, fit_roi_to_image=True)
PRESETS = {"full": FULL, "fast": FAST}


@dataclass
class TTAPlan:
    """Variants: a flip (tensor dims to flip) applied to an input copy (0 = clean, k = k-th noisy)."""

    variants: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> TTAPlan:
        variants: list[tuple[int, tuple[int, ...]]] = [(0, ())]
        if settings.tta in (TTAMode.FLIPS, TTAMode.FULL):
            variants += [(0, (2,)), (0, (3,)), (0, (4,))]
        if settings.tta == TTAMode.FULL:
            variants += [(k, ()) for k in range(1, settings.n_noise + 1)]
        return cls(variants)

    @property
    def n_copies(self) -> int:
        return 1 + max(c for c, _ in self.variants)


#: More voxels than this with a non-finite network output is an error (:class:`NonFiniteOutputError`);
#: up to this many are set to probability 0 and uncertainty 1 (logged).
NONFINITE_OUTPUT_LIMIT = 100


class NonFiniteOutputError(ValueError):
    """The network's output is not finite beyond a few voxels (damaged weights, overflow)."""


#: Voxels kept around the brain's bounding box when cropping (``brain_only``). None are needed: the
#: maps are 0 outside the brain, and the background of a skull-stripped scan is 0, which is also what
#: the windows are padded with; every voxel more can add a window (the clinical-size benchmark's
#: phantom: 3 windows along z at margin 0, 4 at margin 8).
CROP_MARGIN = 0
#: The logit given to windows that hold no brain (they are not run; everything there is masked).
EMPTY_LOGIT = -20.0


def brain_box(brain: np.ndarray, margin: int = CROP_MARGIN) -> tuple[slice, slice, slice]:
    """The bounding box of a non-empty mask, grown by ``margin`` voxels and clipped to the volume."""
    from lacunes.instances import bounding_box

    box = bounding_box(brain, margin)
    if box is None:
        raise ValueError("the brain mask is empty")
    return box


def _round16(n: int) -> int:
    return int(-(-n // 16) * 16)


#: The smallest window :func:`roi_for` shrinks to: the network halves its input four times and its
#: instance normalization needs more than one voxel at the bottom (a 16-voxel window fails there).
MIN_FITTED_ROI = 32


def roi_for(settings: InferenceSettings, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The window for a volume: the settings' one, shrunk to the volume when ``fit_roi_to_image``
    (rounded up to 16, at least :data:`MIN_FITTED_ROI`; a smaller volume is padded with zeros)."""
    roi = tuple(int(r) for r in settings.roi_size)
    if settings.fit_roi_to_image:
        roi = tuple(min(r, max(MIN_FITTED_ROI, _round16(s))) for r, s in zip(roi, shape))
    return roi


def model_input(normalized: np.ndarray, settings: InferenceSettings) -> torch.Tensor:
    """``1×3·copies×X×Y×Z``: the clean volume followed by its noisy TTA copies (seeded)."""
    clean = torch.from_numpy(np.ascontiguousarray(normalized, dtype=np.float32))
    copies = [clean]
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(1, TTAPlan.from_settings(settings).n_copies):
        copies.append(clean + settings.noise_std * torch.randn(clean.shape, generator=gen))
    return torch.cat(copies)[None]


def mean_probability(variant_logits: torch.Tensor) -> torch.Tensor:
    """The raw probability: the mean of the TTA variants' sigmoids (``V×X×Y×Z`` → ``X×Y×Z``), in [0, 1]."""
    return torch.sigmoid(variant_logits).mean(0).clamp(0.0, 1.0)


@dataclass
class _WindowRun:
    """One volume's windowing: samples per network call (halved on CUDA out-of-memory) and the windows
    run against the windows in all (``brain_only``)."""

    chunk: int
    windows_run: int = 0
    windows: int = 0


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


class Predictor:
    """Lacune probability and uncertainty for a subject.

    Args:
        network: maps ``B×3×X×Y×Z`` to logits ``B×1×X×Y×Z`` (any fully convolutional module).
        settings: :class:`InferenceSettings` (the recipe by default).
        normalization: the preprocessing the network was trained with.
        metadata: the checkpoint's description, kept for reports.
        operating_point: threshold, minimum lesion size and brain mask applied to the maps (see
            :mod:`lacunes.postprocessing`); :meth:`from_checkpoint` reads the checkpoint's.
        rescorer: the second stage (:class:`lacunes.rescoring.Rescorer`), or None.
        model_space: the orientation and voxel size the network was trained in (subjects are conformed
            to it, :mod:`lacunes.conform`); :meth:`from_checkpoint` reads the checkpoint's.

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
    ) -> None:
        self.settings = settings
        self.model_space = model_space
        self.operating_point = operating_point
        self.rescorer = rescorer
        self.normalization = normalization
        self.metadata = metadata or {}
        self.device = resolve_device(settings.device)
        self.backend = resolve_backend(settings.backend, self.device, network)
        if self.backend == Backend.OPENVINO and settings.precision == Precision.BFLOAT16:
            from lacunes.backends import openvino_cpu_capabilities

            offered = openvino_cpu_capabilities()
            if "BF16" not in offered:  # OpenVINO would run float32 anyway, under another name
                logger.warning("this CPU has no bfloat16 arithmetic (OpenVINO offers %s): running float32",
                               ", ".join(offered))
                self.settings = settings = settings.replace(precision=Precision.FLOAT32)
        self.network = network.to(self.device).eval()
        self._compiled: OpenVINONetwork | None = None  # converted on first use (lacunes.backends)
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        self.plan = TTAPlan.from_settings(settings)
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
        predictor = cls(network, settings, normalization, metadata, op, rescorer,
                        ModelSpace.from_dict(metadata.get("model_space")))
        predictor.checkpoint = Path(path)
        predictor._weights_sha256 = payload.get("weights_sha256")
        return predictor

    def with_post_processing(self, operating_point: OperatingPoint, rescorer=None) -> Predictor:
        """The same network and settings with another operating point and second stage (e.g.
        :data:`lacunes.postprocessing.RAW` and None: the network stage alone); this predictor is unchanged."""
        other = copying.copy(self)
        other.operating_point, other.rescorer = operating_point, rescorer
        return other

    def raw_probability(self, normalized: np.ndarray, brain: np.ndarray | None = None,
                        stats: dict | None = None) -> np.ndarray:
        """The network stage alone: the mean of the TTA variants' sigmoids (float32 (x, y, z)) of a
        normalized ``3×X×Y×Z`` array, before the second stage and the operating point (windows on the
        brain's box when ``brain`` is given, as at inference)."""
        return mean_probability(self.variant_logits(normalized, brain, stats)).float().cpu().numpy()

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
        """One line on what the network was trained on (from the checkpoint's metadata), and what a user
        should do about it."""
        stated = self.metadata.get("data_statement")
        if stated:
            return str(stated)
        data = self.metadata.get("data") or {}
        if data.get("generated"):
            return ("trained on synthetic phantoms only (generated, seed "
                    f"{data['generated'].get('seed')}), never on patient data: check it, or recalibrate it, on "
                    "labelled subjects of your cohort before trusting its maps")
        if data.get("folder"):
            return f"trained on the subjects in {data['folder']}" + (f" ({data['note']})" if data.get("note") else "")
        return "its training data are not recorded in the checkpoint"

    # ------------------------------------------------------------------------------------------

    @property
    def channels_last(self) -> bool:
        return bool(self.settings.channels_last)

    @property
    def precision(self) -> Precision:
        """The precision in effect on this device (``auto`` resolved)."""
        p = self.settings.precision
        if p == Precision.AUTO:
            return Precision.TF32 if self.device.type == "cuda" else Precision.FLOAT32
        if self.device.type != "cuda" and p in (Precision.TF32, Precision.FLOAT16):
            return Precision.FLOAT32
        return p

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {Precision.FLOAT16: torch.float16, Precision.BFLOAT16: torch.bfloat16}.get(self.precision)

    def window_batch(self) -> int:
        if self.settings.sw_batch_size is not None:
            return self.settings.sw_batch_size
        return 7 if self.device.type == "cuda" else 1

    def samples_per_call(self, roi: tuple[int, ...]) -> int:
        """How many network samples (windows × variants) run at once, from the memory at hand."""
        if self.backend == Backend.OPENVINO:
            # one at a time: the same seconds per sample as two at once (3.18 s for a 160×192×64 window on
            # this project's 2-core CPU), for 1.64 GB of peak memory instead of 2.64
            return 1
        voxels = int(np.prod(roi))
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            per = voxels * (CUDA_BYTES_PER_VOXEL if self.autocast_dtype is not None else 2 * CUDA_BYTES_PER_VOXEL)
            index_cap = max(1, (2**31 - 1) // (voxels * WIDEST_CHANNELS))
            return max(1, min(index_cap, int(free * 0.8 // per)))
        else:
            per = voxels * CPU_BYTES_PER_VOXEL
            budget = self.settings.memory_gb * 1e9
        return max(1, int(budget // per))

    def _run_network(self, x: torch.Tensor, run: _WindowRun) -> torch.Tensor:
        """Network over a batch in chunks of ``run.chunk``; on CUDA out-of-memory the chunk halves (for the
        rest of the volume) and retries."""
        if self.backend == Backend.OPENVINO:  # one sample at a time (samples_per_call), the variants included
            if self._compiled is None:
                self._compiled = OpenVINONetwork(self.network, self.precision.value)
            step = self.samples_per_call(tuple(x.shape[2:]))
            return torch.cat([self._compiled(x[i:i + step]) for i in range(0, x.shape[0], step)])
        outputs, i = [], 0
        while i < x.shape[0]:
            chunk = run.chunk or x.shape[0]
            part = x[i:i + chunk]
            if self.channels_last:
                part = part.contiguous(memory_format=torch.channels_last_3d)
            try:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    out = self.network(part)
            except torch.cuda.OutOfMemoryError:
                if chunk == 1:
                    raise
                run.chunk = max(1, chunk // 2)
                logger.warning("CUDA out of memory with %d samples at once; retrying with %d", chunk, run.chunk)
                torch.cuda.empty_cache()
                continue
            outputs.append(out.float().contiguous())
            i += chunk
        return torch.cat(outputs)

    def _window_fn(self, windows: torch.Tensor, run: _WindowRun) -> torch.Tensor:
        """``B×3·copies×…`` windows → ``B×V×…``: the un-flipped logit of each TTA variant."""
        b = windows.shape[0]
        copies = windows.reshape(b, self.plan.n_copies, 3, *windows.shape[2:])
        batch = []
        for copy, dims in self.plan.variants:
            v = copies[:, copy]
            batch.append(torch.flip(v, dims) if dims else v)
        logits = self._run_network(torch.cat(batch), run)
        logits = logits.reshape(len(self.plan.variants), b, 1, *windows.shape[2:])
        restored = [torch.flip(logits[i], dims) if dims else logits[i] for i, (_, dims) in enumerate(self.plan.variants)]
        return torch.cat(restored, dim=1)

    def model_input(self, normalized: np.ndarray) -> torch.Tensor:
        return model_input(normalized, self.settings)

    def roi_for(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        return roi_for(self.settings, shape)

    @torch.inference_mode()
    def predict_normalized(self, normalized: np.ndarray, mask: np.ndarray | None = None,
                           spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), stats: dict | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Probability and uncertainty (float32 (x, y, z), in [0, 1]) of a normalized ``3×X×Y×Z`` array,
        with the operating point applied (``mask``: the brain, where the operating point masks); what was
        computed goes into ``stats`` when given."""
        brain = mask if mask is not None and self.operating_point.mask_outside_brain else None
        prob, unc = self.maps_from_logits(self.variant_logits(normalized, brain, stats), self.settings.uncertainty,
                                          mask, spacing, image=normalized, stats=stats)
        return prob.cpu().numpy(), unc.cpu().numpy()

    def maps_from_logits(self, variant_logits: torch.Tensor, uncertainty: UncertaintyMode | str,
                         mask: np.ndarray | None = None, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                         operating_point: OperatingPoint | None = None, image: np.ndarray | None = None,
                         stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Probability and uncertainty from ``V×X×Y×Z`` logits, with the operating point applied.

        The probability is the mean of the variants' sigmoids, 0 outside ``mask`` (when given and the
        operating point masks), with the candidates the second stage rejects removed (``image``: the
        normalized input it needs), recalibrated so that 0.5 means the operating point's threshold,
        detected lesions extended (hysteresis) and lesions under the minimum size removed
        (:func:`lacunes.postprocessing.finish_probability`). The uncertainty is computed from the logits
        shifted to the threshold each voxel was judged against, 1 on candidates the second stage
        rejected, 0 outside ``mask``.
        Voxels with a non-finite logit in any variant get probability 0 and uncertainty 1 (logged); more than
        :data:`NONFINITE_OUTPUT_LIMIT` of them raise :class:`NonFiniteOutputError`. ``stats`` (when given)
        receives the post-processing's counts (:func:`lacunes.postprocessing.finish_probability`)."""
        op = operating_point or self.operating_point
        finite = torch.isfinite(variant_logits).all(0)
        bad = int((~finite).sum())
        if bad > NONFINITE_OUTPUT_LIMIT:
            raise NonFiniteOutputError(
                f"the network's output is NaN or infinite in {bad} of {finite.numel()} voxels: the weights"
                + (f" of {self.checkpoint}" if self.checkpoint else "")
                + " are probably damaged (or the arithmetic overflowed: try --precision float32); no map written")
        if bad:
            logger.error("%d voxel(s) with non-finite network output; set to probability 0, uncertainty 1", bad)
            variant_logits = torch.nan_to_num(variant_logits, nan=0.0)
        raw = mean_probability(variant_logits)
        if bad:
            raw = torch.where(finite, raw, torch.zeros_like(raw))
        masking = mask is not None and op.mask_outside_brain
        prob, finished_stats, threshold, rejected = finish_probability(raw.float().cpu().numpy(), op,
                                                              mask if masking else None, spacing, self.rescorer, image)
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
        if stats is not None:
            stats.update(finished_stats, nonfinite_outputs=bad)
        return torch.from_numpy(prob).to(unc.device), unc.float()

    def _brain_window_fn(self, windows: torch.Tensor, run: _WindowRun) -> torch.Tensor:
        """Like :meth:`_window_fn` on windows whose last channel is the brain mask: windows holding no
        brain voxel are not run (:data:`EMPTY_LOGIT`)."""
        has_brain = windows[:, -1].flatten(1).any(1)
        out = torch.full((windows.shape[0], len(self.plan.variants), *windows.shape[2:]), EMPTY_LOGIT,
                         device=windows.device)
        run.windows_run += int(has_brain.sum())
        run.windows += windows.shape[0]
        if has_brain.any():
            out[has_brain] = self._window_fn(windows[has_brain, :-1], run)
        return out

    @torch.inference_mode()
    def variant_logits(self, normalized: np.ndarray, brain: np.ndarray | None = None,
                       stats: dict | None = None) -> torch.Tensor:
        """The window-blended logits of each TTA variant, ``V×X×Y×Z`` float32 (on the device).

        With ``brain`` (the brain mask) and ``settings.brain_only``, only the brain's bounding box (plus
        :data:`CROP_MARGIN`) is windowed and windows with no brain voxel are skipped; logits elsewhere
        are :data:`EMPTY_LOGIT` (an empty mask runs nothing). ``stats`` (when given) receives the window
        size, windows run and in all, samples per call, precision, backend and the box."""
        from monai.inferers import sliding_window_inference

        if normalized.ndim != 4 or normalized.shape[0] != 3:
            raise ValueError(f"expected a 3×X×Y×Z array, got shape {normalized.shape}")
        shape = normalized.shape[1:]
        if brain is not None and brain.shape != shape:
            raise ValueError(f"brain mask shape {brain.shape} != image shape {shape}")
        crop = brain is not None and self.settings.brain_only
        box = brain_box(brain) if crop and brain.any() else tuple(slice(0, n) for n in shape)
        inner = normalized[(slice(None), *box)]
        roi = self.roi_for(inner.shape[1:])
        windows_per_call = self.window_batch()
        run = _WindowRun(self.samples_per_call(roi))
        stats = {} if stats is None else stats
        stats.update(roi=roi, variants=len(self.plan.variants), samples_per_call=run.chunk,
                     windows_per_call=windows_per_call, precision=str(self.precision), backend=str(self.backend),
                     channels_last=self.channels_last, box=tuple((b.start, b.stop) for b in box))
        if crop and not brain.any():
            stats["windows_run"] = stats["windows"] = 0
            return torch.full((len(self.plan.variants), *shape), EMPTY_LOGIT, device=self.device)
        x = self.model_input(inner).to(self.device)
        if crop:
            x = torch.cat([x, torch.from_numpy(np.ascontiguousarray(brain[box]))[None, None].to(x)], dim=1)
        with backend_flags(self.device, allow_tf32=self.precision == Precision.TF32):
            logits = sliding_window_inference(
                x, roi_size=roi, sw_batch_size=windows_per_call,
                predictor=functools.partial(self._brain_window_fn if crop else self._window_fn, run=run),
                overlap=self.settings.overlap, mode=str(self.settings.blend), padding_mode="constant", cval=0.0,
                progress=self.settings.progress,
            )[0].float()
        if self._compiled is not None:  # its working memory is not needed while the maps are finished and written
            self._compiled.release()
        if crop:
            stats["windows_run"], stats["windows"] = run.windows_run, run.windows
        if inner.shape[1:] == shape:
            return logits
        out = torch.full((logits.shape[0], *shape), EMPTY_LOGIT, device=logits.device)
        out[(slice(None), *box)] = logits
        return out

    def predict(self, subject: Subject | np.ndarray) -> Prediction:
        """Probability and uncertainty maps of a subject (or a raw ``3×X×Y×Z`` array, taken as already in
        the model's space), with what was computed (:class:`Prediction`; ``prob, unc = predict(...)``).

        Non-finite input voxels are repaired first (see :func:`lacunes.preprocessing.repair_nonfinite`);
        a subject is then conformed to the model's space (``settings.conform``, :mod:`lacunes.conform`);
        each channel is quantile-normalized. Both outputs are float32 (x, y, z) in [0, 1] on the subject's
        own grid, with the operating point applied: 0 outside the brain
        (:func:`lacunes.preprocessing.brain_mask`).
        """
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
                image = conform.to_model(image)
                spacing = conform.model.spacing
        for name, channel in zip(("T1", "T2", "FLAIR"), image):
            if channel.size and channel.min() == channel.max():
                logger.warning("%s is constant (%g everywhere): it carries no information",
                               name, float(channel.flat[0]))
        mask = self.brain(image)
        if mask is not None and not mask.any():
            logger.warning("the input holds no brain (all channels zero or constant): no lesion can be found")
        stats: dict[str, Any] = {}
        prob, unc = self.predict_normalized(prepare_image(image, self.normalization), mask, spacing, stats)
        if conform is None or conform.identity:
            return Prediction(prob, unc, stats)
        stats["conform"] = conform.to_dict()
        prob, unc = conform.probability_to_native(prob), conform.to_native(unc)
        if conform.resampled:  # 0 outside the brain on the input's own grid, [0, 1] after interpolation
            inside = self.brain(native)
            if inside is not None:
                prob, unc = np.where(inside, prob, 0.0), np.where(inside, unc, 0.0)
            prob, unc = np.clip(prob, 0.0, 1.0).astype(np.float32), np.clip(unc, 0.0, 1.0).astype(np.float32)
        return Prediction(prob, unc, stats)

    def brain(self, image: np.ndarray) -> np.ndarray | None:
        """The brain mask of a raw ``3×X×Y×Z`` image, or None when the operating point does not mask."""
        return brain_mask(image) if self.operating_point.mask_outside_brain else None


@torch.inference_mode()
def reference_predict(network: torch.nn.Module, normalized: np.ndarray, settings: InferenceSettings,
                      device: str | torch.device = "cpu", sw_batch_size: int = 1,
                      allow_tf32: bool = False) -> np.ndarray:
    """The plain loop the predictor is checked and benchmarked against: MONAI's
    ``sliding_window_inference`` called once per TTA variant, float32 (cuDNN TF32 only if
    ``allow_tf32``), ``sw_batch_size`` windows per network call, probabilities averaged. Returns the
    mean probability (x, y, z)."""
    from monai.inferers import sliding_window_inference

    plan = TTAPlan.from_settings(settings)
    x = model_input(normalized, settings)
    device = torch.device(device)
    network = network.to(device).eval()
    total = None
    for copy, dims in plan.variants:
        volume = x[:, 3 * copy:3 * copy + 3].to(device)

        def run(w: torch.Tensor, dims: tuple[int, ...] = dims) -> torch.Tensor:
            out = network(torch.flip(w, dims) if dims else w)
            return torch.flip(out, dims) if dims else out

        with backend_flags(device, allow_tf32=allow_tf32):
            logits = sliding_window_inference(volume, roi_size=roi_for(settings, normalized.shape[1:]),
                                              sw_batch_size=sw_batch_size, predictor=run, overlap=settings.overlap,
                                              mode=str(settings.blend), padding_mode="constant", cval=0.0)
        prob = torch.sigmoid(logits.float())
        total = prob if total is None else total + prob
    return (total / len(plan.variants))[0, 0].cpu().numpy()
