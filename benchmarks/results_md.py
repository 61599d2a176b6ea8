"""Rewrites one marked section of benchmarks/RESULTS.md, and names the device a run used (shared by
the benchmark scripts)."""

from __future__ import annotations

import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    from lacunes.writing import atomic_output

    with atomic_output(path) as tmp:  # a kill mid-write never leaves RESULTS.md cut short
        tmp.write_text(doc)


def save_json(path: Path, obj) -> None:
    """Write a run's results (which ``--render`` reads back) as JSON through a temporary file, so that a
    kill mid-write leaves the previous results, never a file cut short."""
    import json

    from lacunes.writing import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str))


def device_label(device: str) -> str:
    """The GPU's name for a CUDA device, else the CPU threads and processor, as the sections state them."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{torch.get_num_threads()} CPU thread(s) ({platform.processor() or platform.machine()})"
