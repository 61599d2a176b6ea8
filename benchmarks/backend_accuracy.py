"""How exact each CPU backend's float32 is: the bundled network on windows of the sample case, each backend
against PyTorch float32 (what the plain MONAI loop runs) and, on a small window, against float64 (the exact
answer, up to rounding), with each backend's time on the large window.

Backends: PyTorch, OpenVINO (the project's compiled backend, :mod:`lacunes.backends`, its instance norms
rewritten in two stages; and converted as it is, with OpenVINO's own instance norm), OpenVINO bfloat16
where the CPU has it (its error, for the record) and, when it is
installed, ONNX Runtime (the other candidate; not a dependency of the project: ``pip install onnxruntime
onnx`` to measure it). One run, the arms one after another in this process, each timed after a warm-up call.

    python benchmarks/backend_accuracy.py [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

#: The windows (x, y, z slices of the sample case, multiples of 16): the large one about the size of the
#: ``fast`` setting's window on the sample case, the small one where a float64 pass fits in memory.
LARGE = (slice(0, 144), slice(0, 176), slice(48, 112))
SMALL = (slice(40, 104), slice(60, 124), slice(48, 112))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def backends(net, threads: int) -> dict:
    """Each available backend as a callable on a ``1×3×X×Y×Z`` float32 tensor (logits out, numpy)."""
    import torch

    from lacunes.backends import OpenVINONetwork, openvino_cpu_capabilities

    arms = {"torch": lambda w: net(w).numpy()}
    ov = OpenVINONetwork(net, "float32", threads=threads)
    arms["openvino (the backend: two-stage instance norm)"] = lambda w: ov(w).numpy()
    own = OpenVINONetwork(net, "float32", threads=threads, rewrite_norms=False)
    arms["openvino, its own instance norm"] = lambda w: own(w).numpy()
    if "BF16" in openvino_cpu_capabilities():
        bf16 = OpenVINONetwork(net, "bfloat16", threads=threads)
        arms["openvino bfloat16 (not float32: its error)"] = lambda w: bf16(w).numpy()
    try:
        import onnxruntime as ort
    except ImportError:
        return arms
    path = Path(tempfile.mkdtemp()) / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, 32, 32, 32), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 2: "X", 3: "Y", 4: "Z"}, "y": {0: "b", 2: "X", 3: "Y", 4: "Z"}},
                          opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    arms[f"onnxruntime {ort.__version__}"] = lambda w: session.run(None, {"x": w.numpy()})[0]
    return arms


def measure(threads: int) -> tuple[list[dict], str]:
    import torch

    from lacunes.checkpoint import bundled_checkpoint, load_network
    from lacunes.io import read_subject
    from lacunes.layouts import find_valdo_subjects
    from lacunes.preprocessing import NormalizationConfig, prepare_image

    torch.set_num_threads(threads)
    net, _ = load_network(bundled_checkpoint())
    net.eval()
    files = find_valdo_subjects(ROOT / "test")[0]
    normalized = prepare_image(read_subject(files.subject_id, files.paths).image, NormalizationConfig())
    large, small = (torch.from_numpy(np.ascontiguousarray(normalized[(slice(None), *box)]))[None].float()
                    for box in (LARGE, SMALL))
    with torch.inference_mode():
        exact = copy.deepcopy(net).double()(small.double()).numpy()
        rows = []
        arms = backends(net, threads)
        reference = None
        for name, run in arms.items():
            run(large)  # warm-up (OpenVINO compiles for the shape)
            t0 = time.perf_counter()
            out = run(large)
            seconds = time.perf_counter() - t0
            reference = out if reference is None else reference
            near = run(small)
            rows.append({"backend": name, "seconds": seconds, "dlogit": float(np.abs(out - reference).max()),
                         "dp": float(np.abs(sigmoid(out) - sigmoid(reference)).max()),
                         "exact_dlogit": float(np.abs(near - exact).max()),
                         "exact_dp": float(np.abs(sigmoid(near) - sigmoid(exact)).max())})
    shape = "×".join(str(s.stop - s.start) for s in LARGE)
    return rows, shape


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = ap.parse_args()
    import torch

    from lacunes.backends import openvino_cpu_capabilities, openvino_version

    rows, shape = measure(args.threads)
    base = rows[0]["seconds"]
    small = "×".join(str(s.stop - s.start) for s in SMALL)
    lines = [
        f"## How exact each CPU backend's float32 is ({args.threads} threads, {platform.machine()})",
        "",
        f"Command: `python benchmarks/backend_accuracy.py --threads {args.threads}` — the bundled network on a "
        f"{shape} window of the sample case (time, and the largest difference from PyTorch float32, which the "
        f"plain MONAI loop runs) and on a {small} window against the same network in float64. torch "
        f"{torch.__version__}, OpenVINO {openvino_version()} (this CPU: {', '.join(openvino_cpu_capabilities())}).",
        "",
        f"| backend | seconds ({shape}) | × torch | max abs Δlogit vs torch | max abs Δp vs torch "
        f"| max abs Δlogit vs float64 ({small}) | max abs Δp vs float64 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} | {r['dlogit']:.1e} | "
                     f"{r['dp']:.1e} | {r['exact_dlogit']:.1e} | {r['exact_dp']:.1e} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        from results_md import replace_section

        replace_section("backend-accuracy", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
