"""The network stage: a normalized volume through the network in sliding windows, every test-time
augmentation (TTA) variant at once, on the chosen backend and precision.

One pass of MONAI's ``sliding_window_inference`` serves every TTA variant: the noisy copies of the volume
travel as extra input channels, and each batch of windows is expanded into all its variants (identity,
flips, noisy copies), run through the network together, un-flipped and returned as one logit channel per
variant, which the inferer blends over windows. This equals running ``sliding_window_inference`` once per
variant (blending logits; :func:`reference_predict`), without the repeated padding, window gathering,
stitching and per-variant network calls of one sample each.

TTA plans (``TTAMode``): ``none`` (identity), ``flips`` (identity + a flip along each of x, y, z: 4
variants), ``full`` (the flips + ``n_noise`` copies with Gaussian noise of ``noise_std`` added to the
normalized volume: 6 variants by default). What happens to the logits next (probability, second stage,
operating point, uncertainty) is :mod:`lacunes.inference`'s.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from lacunes.backends import ConversionMismatchError, OpenVINONetwork, resolve_backend
from lacunes.device import resolve_device
from lacunes.options import MODALITIES, Backend, Precision, TTAMode

if TYPE_CHECKING:
    from lacunes.settings import InferenceSettings

logger = logging.getLogger(__name__)

#: Input channels of one volume (the modalities, :data:`lacunes.options.MODALITIES`).
CHANNELS = len(MODALITIES)

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


@contextlib.contextmanager
def backend_flags(device: torch.device, allow_tf32: bool) -> Iterator[None]:
    """On CUDA: cuDNN autotuning on (all windows share one shape, so the search pays once per process)
    and TF32 convolutions on or off; the previous flags come back afterwards. Elsewhere: nothing."""
    if device.type != "cuda":
        yield
        return
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=allow_tf32):
        yield



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
    """``1×C·copies×X×Y×Z``: the clean volume followed by its noisy TTA copies (seeded)."""
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


class WindowedNetwork:
    """A network over whole normalized ``C×X×Y×Z`` volumes (C = :data:`CHANNELS`): sliding windows ×
    TTA variants, on the settings' device, backend (:mod:`lacunes.backends`) and precision.

    Args:
        network: maps ``B×C×X×Y×Z`` to logits ``B×1×X×Y×Z`` (any fully convolutional module).
        settings: the :class:`lacunes.inference.InferenceSettings`; a ``bfloat16`` request on an OpenVINO
            CPU without bfloat16 arithmetic falls back to float32 (warned; :attr:`settings` says so).
    """

    def __init__(self, network: torch.nn.Module, settings: InferenceSettings) -> None:
        self.device = resolve_device(settings.device)
        self.backend = resolve_backend(settings.backend, self.device, network)
        if self.backend == Backend.OPENVINO and settings.precision == Precision.BFLOAT16:
            from lacunes.backends import openvino_cpu_capabilities

            offered = openvino_cpu_capabilities()
            if "BF16" not in offered:  # OpenVINO would run float32 anyway, under another name
                logger.warning("this CPU has no bfloat16 arithmetic (OpenVINO offers %s): running float32",
                               ", ".join(offered))
                settings = settings.replace(precision=Precision.FLOAT32)
        self.settings = settings
        self.network = network.to(self.device).eval()
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        self._compiled: OpenVINONetwork | None = None  # converted on first use (lacunes.backends)
        self.plan = TTAPlan.from_settings(settings)

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
        return max(1, int(self.settings.memory_gb * 1e9 // (voxels * CPU_BYTES_PER_VOXEL)))

    def _run_network(self, x: torch.Tensor, run: _WindowRun) -> torch.Tensor:
        """Network over a batch in chunks of ``run.chunk``; on CUDA out-of-memory the chunk halves (for the
        rest of the volume) and retries."""
        if self.backend == Backend.OPENVINO:  # one sample at a time (samples_per_call), the variants included
            if self._compiled is None:
                try:
                    self._compiled = OpenVINONetwork(self.network, self.precision.value)
                except ConversionMismatchError as exc:
                    logger.warning("%s; running on PyTorch instead", exc)
                    self.backend = Backend.TORCH
            if self._compiled is not None:
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
        """``B×C·copies×…`` windows → ``B×V×…``: the un-flipped logit of each TTA variant."""
        b = windows.shape[0]
        copies = windows.reshape(b, self.plan.n_copies, CHANNELS, *windows.shape[2:])
        batch = []
        for copy, dims in self.plan.variants:
            v = copies[:, copy]
            batch.append(torch.flip(v, dims) if dims else v)
        logits = self._run_network(torch.cat(batch), run)
        logits = logits.reshape(len(self.plan.variants), b, 1, *windows.shape[2:])
        restored = [torch.flip(logits[i], dims) if dims else logits[i] for i, (_, dims) in enumerate(self.plan.variants)]
        return torch.cat(restored, dim=1)

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

        if normalized.ndim != 4 or normalized.shape[0] != CHANNELS:
            raise ValueError(f"expected a {CHANNELS}×X×Y×Z array ({', '.join(MODALITIES)}), got shape {normalized.shape}")
        shape = normalized.shape[1:]
        if brain is not None and brain.shape != shape:
            raise ValueError(f"brain mask shape {brain.shape} != image shape {shape}")
        crop = brain is not None and self.settings.brain_only
        box = brain_box(brain) if crop and brain.any() else tuple(slice(0, n) for n in shape)
        inner = normalized[(slice(None), *box)]
        roi = roi_for(self.settings, inner.shape[1:])
        run = _WindowRun(self.samples_per_call(roi))
        stats = {} if stats is None else stats
        stats.update(roi=roi, variants=len(self.plan.variants), samples_per_call=run.chunk,
                     windows_per_call=self.window_batch(), precision=str(self.precision), backend=str(self.backend),
                     channels_last=self.channels_last, box=tuple((b.start, b.stop) for b in box))
        if crop and not brain.any():
            stats["windows_run"] = stats["windows"] = 0
            return torch.full((len(self.plan.variants), *shape), EMPTY_LOGIT, device=self.device)
        x = model_input(inner, self.settings).to(self.device)
        if crop:
            x = torch.cat([x, torch.from_numpy(np.ascontiguousarray(brain[box]))[None, None].to(x)], dim=1)
        with backend_flags(self.device, allow_tf32=self.precision == Precision.TF32):
            logits = sliding_window_inference(
                x, roi_size=roi, sw_batch_size=self.window_batch(),
                predictor=functools.partial(self._brain_window_fn if crop else self._window_fn, run=run),
                overlap=self.settings.overlap, mode=str(self.settings.blend), padding_mode="constant", cval=0.0,
                progress=self.settings.progress,
            )[0].float()
        if self._compiled is not None:  # its working memory is not needed while the maps are finished and written
            self._compiled.release()
        stats["backend"] = str(self.backend)  # PyTorch where a conversion was refused (lacunes.backends)
        if crop:
            stats["windows_run"], stats["windows"] = run.windows_run, run.windows
        if inner.shape[1:] == shape:
            return logits
        out = torch.full((logits.shape[0], *shape), EMPTY_LOGIT, device=logits.device)
        out[(slice(None), *box)] = logits
        return out


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
        volume = x[:, CHANNELS * copy:CHANNELS * (copy + 1)].to(device)

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
