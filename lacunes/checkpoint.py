"""Self-describing checkpoints: network arguments, preprocessing, inference plan, recipe, provenance
and weights in one file, so that a checkpoint alone rebuilds the predictor. Nothing is pickled but
plain containers and tensors (loads with ``weights_only=True``). The file's sha256 is checked against a
``.sha256`` sidecar when there is one; the weights' own hash, stored inside, is checked always."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lacunes.network import NetworkConfig, build_network
from lacunes.options import MODALITIES
from lacunes.writing import atomic_output

FORMAT_VERSION = 1

BUNDLED_NAME = "lacunes.pt"


def bundled_checkpoint() -> Path:
    """The bundled model: ``lacunes/bundled/lacunes.pt`` in an installed wheel (package data), else the
    repository's ``model/lacunes.pt`` (a checkout, an editable install, the container)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "bundled" / BUNDLED_NAME, here.parent / "model" / BUNDLED_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the bundled model is neither at {here / 'bundled' / BUNDLED_NAME} (an installed package) nor at "
        f"{here.parent / 'model' / BUNDLED_NAME} (a checkout): reinstall the package (pip install lacunes-*.whl) "
        "or pass --model")


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of the weights themselves (names, dtypes, shapes and bytes), stored in the checkpoint and
    verified when it is read, with or without a ``.sha256`` sidecar next to the file."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        v = state_dict[key].detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{v.dtype}|{tuple(state_dict[key].shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    network: torch.nn.Module,
    network_config: NetworkConfig,
    metadata: dict[str, Any] | None = None,
    half: bool = False,
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: destination (``.pt``); a ``.sha256`` sidecar of the file it replaces is removed.
        network: the module whose ``state_dict`` is stored (unwrapped from DDP by the caller).
        network_config: the arguments that rebuild it.
        metadata: plain data (normalization, inference defaults, recipe, data provenance, timings...).
        half: store floating weights as float16 (halves the file; loaded back as float32).
        extra_state: training state for ``--resume`` (optimizer, epoch); omitted from released weights.
    """
    from lacunes import __version__

    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in network.state_dict().items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "lacunes_version": __version__,
        "network": network_config.to_dict(),
        "metadata": metadata or {},
        "state_dict": state,
        "weights_sha256": weights_sha256(state),
    }
    if extra_state is not None:
        payload["training_state"] = extra_state
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
        # A sidecar left from the file this one replaces would make every read of the new one fail; it goes
        # once the new file is written, just before the rename (a failed write keeps the old file and its
        # sidecar). The caller that keeps a sidecar writes it again (write_sha256).
        sha256_sidecar(path).unlink(missing_ok=True)
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dictionary; raises ``FileNotFoundError``/``ValueError`` with the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    sidecar = sha256_sidecar(path)
    if sidecar.is_file():
        expected = sidecar.read_text().split()[0]
        actual = sha256_of(path)
        if expected != actual:
            raise ValueError(f"{path}: sha256 {actual} does not match {sidecar.name} ({expected})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message would advise loading it with weights_only=False
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise ValueError(f"{path} is not a lacunes checkpoint: it holds objects other than plain containers and "
                         f"tensors{f' ({found.group(1)})' if found else ''}, which are never loaded (they could "
                         "run code)") from None
    except Exception as exc:
        raise ValueError(f"{path} is not a readable checkpoint: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload or "network" not in payload:
        raise ValueError(f"{path} is not a lacunes checkpoint (no network arguments or weights)")
    expected = payload.get("weights_sha256")
    if expected is not None and weights_sha256(payload["state_dict"]) != expected:
        raise ValueError(f"{path}: the weights do not match the hash stored with them: the file is damaged; "
                         "copy it again from its source")
    return payload


def load_network(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network from a checkpoint, in eval mode, float32; returns it with the payload."""
    payload = read_checkpoint(path)
    try:
        config = NetworkConfig.from_dict(payload["network"])
        net = build_network(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: its network arguments {payload['network']} do not describe a network: {exc}") from None
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc).splitlines()[0])
        raise ValueError(f"{path}: its weights do not fit the network its arguments describe "
                         f"({payload['network']}): {first}") from None
    net.eval()
    return net, payload


def check_lacune_network(config: NetworkConfig, path: str | os.PathLike,
                         modalities: tuple[str, ...] = MODALITIES) -> None:
    """A lacune model takes one channel per modality (:data:`lacunes.options.MODALITIES`, in that order)
    and gives one logit: other shapes are refused at load, not subject by subject. Raises ``ValueError``
    naming the file."""
    if config.in_channels != len(modalities) or config.out_channels != 1:
        raise ValueError(f"{path} is not a lacune model of this tool: its network takes {config.in_channels} "
                         f"channel(s) and gives {config.out_channels} (expected {len(modalities)} in: "
                         f"{', '.join(modalities)}; 1 out)")


def sha256_sidecar(path: str | os.PathLike) -> Path:
    """``m.pt`` → ``m.pt.sha256``: the file :func:`read_checkpoint` checks a checkpoint against."""
    return Path(path).with_name(Path(path).name + ".sha256")


def write_sha256(path: str | os.PathLike) -> Path:
    """Write ``path``'s sidecar (``sha256sum`` format), atomically: a kill or a full disk never leaves a
    truncated sidecar that would refuse the checkpoint."""
    path = Path(path)
    sidecar = sha256_sidecar(path)
    with atomic_output(sidecar) as tmp:
        tmp.write_text(f"{sha256_of(path)}  {path.name}\n")
    return sidecar
