"""Where the network runs: PyTorch, or on a CPU the same network compiled by OpenVINO.

PyTorch's eager 3D convolutions are the whole cost of inference on a CPU. OpenVINO (Intel's inference
runtime) converts the torch module once into its own graph and compiles it for the CPU at hand:
the same float32 arithmetic about 3× faster on this project's 2-core benchmark machine, and bfloat16
(where the CPU has AMX or AVX-512 BF16) faster again at a documented error (benchmarks/RESULTS.md).
Everything around the network (sliding window, TTA, masking, post-processing) is unchanged: the
compiled network is called exactly like the module, ``B×C×X×Y×Z`` in (C the modalities), logits ``B×1×X×Y×Z`` out.

OpenVINO's own instance normalization reduces over the whole window in one pass, in an order whose
float32 sums drift (logits up to 8e-3 from PyTorch's on a 144×176×64 window). Before conversion each
``InstanceNorm3d`` is therefore written out as :class:`TwoStageInstanceNorm`: the same arithmetic, its
statistics summed along one axis first, then averaged over the other two (4.5e-4 from PyTorch's, about a
fifth more time; benchmarks/RESULTS.md, "How exact each CPU backend's float32 is").

Conversion takes seconds to tens of seconds, so the converted graph (float32 weights, dynamic input
shape) is cached on disk, keyed by the weights' sha256 and the runtime's version (:func:`cache_dir`);
compiling it for one input shape takes a fraction of a second and is done once per shape and process.
A cached entry is used only when it verifiably derives from the weights in use: its manifest (the full
weights hash, the runtime, the graph's form, the sha256 of its two files) matches, its folder is not
writable by others, and it gives the torch network's logits on a seeded probe (:data:`PROBE_TOLERANCE`).
Anything else is converted again, with a warning naming the cache; a cache that cannot be written (full,
read-only) only means no cache for that run. A conversion that itself fails the probe is refused
(:class:`ConversionMismatchError`), and inference falls back to PyTorch.

``auto`` (the default) picks OpenVINO on the CPU when the ``openvino`` package is installed, PyTorch
otherwise and always on a GPU.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lacunes.options import Backend

logger = logging.getLogger(__name__)


def openvino_version() -> str | None:
    """The installed OpenVINO runtime's version, or None when it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__ if hasattr(openvino, "__version__") else openvino.get_version()


def resolve_backend(name: Backend | str, device: torch.device, network: torch.nn.Module | None = None) -> Backend:
    """The backend in effect: ``auto`` → OpenVINO on the CPU when installed (and ``network``, when given,
    is a convolutional network it can take), else PyTorch.

    Raises:
        ValueError: ``openvino`` asked for on another device than the CPU, or not installed.
    """
    backend = Backend(name)
    if backend == Backend.AUTO:
        convertible = network is None or any(isinstance(m, torch.nn.Conv3d) for m in network.modules())
        return Backend.OPENVINO if device.type == "cpu" and convertible and openvino_version() else Backend.TORCH
    if backend == Backend.OPENVINO:
        if device.type != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU, not on {device}")
        if openvino_version() is None:
            raise ValueError("the openvino backend needs the openvino package (pip install openvino)")
    return backend


def openvino_cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin computes in on this machine (e.g. ``FP32``, ``BF16``, ``INT8``)."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cache_dir() -> Path:
    """Where converted networks are kept: ``$LACUNES_CACHE``, else ``$XDG_CACHE_HOME/lacunes``, else
    ``~/.cache/lacunes``."""
    if os.environ.get("LACUNES_CACHE"):
        return Path(os.environ["LACUNES_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lacunes"


def weights_key(network: torch.nn.Module) -> str:
    from lacunes.checkpoint import weights_sha256

    return weights_sha256({k: v.detach().cpu() for k, v in network.state_dict().items()})


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over the three spatial axes of ``B×C×X×Y×Z``, in two reductions of different kinds
    (a sum along Z, then a mean over X and Y) that OpenVINO cannot merge into one long float32 sum."""
    return x.sum(dim=4, keepdim=True).mean(dim=(2, 3), keepdim=True) * (1.0 / x.shape[4])


class TwoStageInstanceNorm(torch.nn.Module):
    """``torch.nn.InstanceNorm3d`` (no running statistics) with its mean and variance computed by
    :func:`_spatial_mean`: equal in exact arithmetic, and in float32 as close to it as PyTorch's own
    once OpenVINO has compiled it."""

    def __init__(self, norm: torch.nn.InstanceNorm3d) -> None:
        super().__init__()
        if norm.track_running_stats:
            raise ValueError("only instance norms without running statistics are rewritten")
        self.eps = float(norm.eps)
        self.affine = norm.weight is not None
        if self.affine:
            self.register_buffer("weight", norm.weight.detach().clone().view(1, -1, 1, 1, 1))
            self.register_buffer("bias", norm.bias.detach().clone().view(1, -1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - _spatial_mean(x)
        y = centred * torch.rsqrt(_spatial_mean(centred * centred) + self.eps)
        return y * self.weight + self.bias if self.affine else y


def for_conversion(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` with every ``InstanceNorm3d`` (without running statistics) rewritten as
    :class:`TwoStageInstanceNorm`; the network itself is left as it is."""
    network = copy.deepcopy(network)
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.InstanceNorm3d) and not child.track_running_stats:
                setattr(module, name, TwoStageInstanceNorm(child))
    return network


#: The converted graph's form; part of the cache key, so that a change of it is converted again.
GRAPH_FORM = "norm2"
#: Largest logit difference between the torch network and a converted one (float32) on the probe, a
#: seeded ``1×C×32×32×32`` input: conversions differ by about 1e-5 (tests/test_backends.py).
PROBE_TOLERANCE = 1e-3


class ConversionMismatchError(RuntimeError):
    """A freshly converted network does not give the torch network's logits on the probe."""


def _writable_by_others(path: Path) -> bool:
    """Group- or world-writable, or owned by another user (where ownership can be read)."""
    st = path.stat()
    foreign = hasattr(os, "getuid") and st.st_uid not in (os.getuid(), 0)
    return bool(st.st_mode & 0o022) or foreign

#: OpenVINO's names for the precisions this backend offers.
PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}


class OpenVINONetwork:
    """A torch network compiled by OpenVINO for the CPU, called like the module on ``B×C×X×Y×Z``
    float32 tensors (logits out, float32).

    Args:
        network: the torch module (its weights key the cache).
        precision: ``float32`` or ``bfloat16`` (:data:`PRECISION_HINTS`).
        threads: CPU threads for inference (default: torch's).
        cache: folder for converted networks (default :func:`cache_dir`; None-like "" = no cache).
        rewrite_norms: convert with :func:`for_conversion` (default); False keeps OpenVINO's own
            instance norm, as measured against it in benchmarks/backend_accuracy.py.
    """

    def __init__(self, network: torch.nn.Module, precision: str = "float32", threads: int | None = None,
                 cache: Path | str | None = None, rewrite_norms: bool = True) -> None:
        import openvino as ov

        if precision not in PRECISION_HINTS:
            raise ValueError(f"the openvino backend runs in {sorted(PRECISION_HINTS)}, not {precision!r}")
        self.core = ov.Core()
        self.config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
                       "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self.precision = precision
        self.cache = cache_dir() if cache is None else (Path(cache) if cache else None)
        self.rewrite_norms = rewrite_norms
        self.model = self._load_or_convert(network)
        self._compiled: dict[tuple[int, ...], object] = {}
        self.seconds_converting = 0.0

    def _cached(self, path: Path, manifest: dict, network: torch.nn.Module):
        """The cache entry at ``path`` if it verifiably derives from ``network`` (the module docstring),
        else ``(None, why)``; ``(None, None)`` where there is none."""
        import json

        from lacunes.checkpoint import sha256_of

        xml, bin_, meta = path, path.with_suffix(".bin"), path.with_suffix(".json")
        if not (xml.is_file() and bin_.is_file()):
            return None, None
        try:
            for p in (path.parent, xml, bin_, meta):
                if p.exists() and _writable_by_others(p):
                    return None, f"{p} is writable by others"
            if not meta.is_file():
                return None, "it has no manifest"
            recorded = json.loads(meta.read_text())
            if {k: recorded.get(k) for k in manifest} != manifest:
                return None, "its manifest names other weights, runtime or graph form"
            if recorded.get("xml_sha256") != sha256_of(xml) or recorded.get("bin_sha256") != sha256_of(bin_):
                return None, "its files are not those its manifest hashed"
            model = self.core.read_model(str(xml))
        except (OSError, RuntimeError, ValueError) as exc:
            return None, f"it cannot be read: {exc}"
        problem = self._probe(model, network)
        return (model, None) if problem is None else (None, problem)

    def _probe(self, model, network: torch.nn.Module) -> str | None:
        """None when ``model`` gives ``network``'s logits on the probe (float32), else what differs."""
        channels = _in_channels(network)
        x = torch.from_numpy(np.random.default_rng(0).normal(0.0, 1.0, (1, channels, 32, 32, 32)).astype(np.float32))
        with torch.no_grad():
            expected = network.eval()(x).numpy()
        probe = model.clone()
        probe.reshape({0: list(x.shape)})
        try:
            got = np.asarray(self.core.compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                    "INFERENCE_NUM_THREADS": 1})(x.numpy())[0])
        except RuntimeError as exc:
            return f"it cannot be compiled: {exc}"
        if got.shape != expected.shape:
            return f"it gives logits of shape {got.shape}, the network {expected.shape}"
        diff = float(np.nan_to_num(np.abs(got - expected), nan=np.inf).max())
        if not diff <= PROBE_TOLERANCE:
            return f"its logits differ from the network's by {diff:.3g} on the probe (at most {PROBE_TOLERANCE:g})"
        return None

    def _load_or_convert(self, network: torch.nn.Module):
        import json

        import openvino as ov

        from lacunes.checkpoint import sha256_of

        runtime = re.sub(r"[^A-Za-z0-9.]+", "-", openvino_version() or "none")  # e.g. 2026.4.1-22982-…/2026/4
        form = GRAPH_FORM if self.rewrite_norms else "ovnorm"
        weights = weights_key(network)
        manifest = {"weights_sha256": weights, "openvino": runtime, "graph_form": form}
        key = f"{weights[:24]}-{form}-openvino-{runtime}"
        path = self.cache / f"{key}.xml" if self.cache is not None else None
        if path is not None:
            model, why = self._cached(path, manifest, network)
            if model is not None:
                return model
            if why is not None:
                logger.warning("the cached network %s is not used (%s): converting again (cache: %s, "
                               "LACUNES_CACHE)", path.name, why, path.parent)
        t0 = time.time()
        network = (for_conversion(network) if self.rewrite_norms else copy.deepcopy(network)).eval()
        channels = _in_channels(network)
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer notes that shape checks become constants: true for the inputs this network gets
            # (multiples of 16, where the U-Net's skip connections always match), so not shown to users
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = ov.convert_model(network, example_input=torch.zeros(1, channels, 32, 32, 32),
                                     input=[ov.PartialShape([-1, channels, -1, -1, -1])])
        logger.info("network converted for OpenVINO in %.1f s", time.time() - t0)
        problem = self._probe(model, network)
        if problem is not None:
            raise ConversionMismatchError(f"the network converted for OpenVINO is not used: {problem}")
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if _writable_by_others(path.parent):
                    raise OSError("the folder is writable by others")
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    xml = Path(tmp) / path.name
                    ov.save_model(model, str(xml), compress_to_fp16=False)  # float32 weights, as trained
                    hashes = {"xml_sha256": sha256_of(xml), "bin_sha256": sha256_of(xml.with_suffix(".bin"))}
                    xml.with_suffix(".json").write_text(json.dumps({**manifest, **hashes}, indent=1))
                    os.replace(xml.with_suffix(".bin"), path.with_suffix(".bin"))
                    os.replace(xml, path)
                    os.replace(xml.with_suffix(".json"), path.with_suffix(".json"))  # last: the entry is complete
            except (OSError, RuntimeError) as exc:  # a read-only or full cache: the conversion is simply not kept
                logger.warning("cannot cache the converted network in %s (%s): it is converted again next time",
                               path.parent, exc)
        return model

    def compiled_for(self, shape: tuple[int, ...]):
        compiled = self._compiled.get(shape)
        if compiled is None:
            model = self.model.clone()
            model.reshape({0: list(shape)})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self._compiled[shape] = compiled
        return compiled

    def release(self) -> None:
        """Free the compiled networks and their working memory (about 2 GB for a ``fast`` window); the
        converted graph stays, and compiling again for a shape takes a fraction of a second. Called
        after each volume's windows, so that OpenVINO's buffers do not add to the peak of the
        steps that follow (finishing and writing the maps of a large field of view)."""
        self._compiled.clear()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        compiled = self.compiled_for(tuple(int(s) for s in x.shape))
        out = compiled(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _in_channels(network: torch.nn.Module) -> int:
    for module in network.modules():
        if isinstance(module, torch.nn.Conv3d):
            return int(module.in_channels)
    raise ValueError("the network has no 3D convolution to read its input channels from")
