#!/usr/bin/env python3
"""Peak host memory of ``lacunes predict`` against the size of the input's field of view.

The first held-out phantom (seed 7777, generated in memory) is centred in fields of view of zeros of
growing size and written as T1/T2/FLAIR NIfTI files; each is predicted by ``lacunes predict`` (the
bundled model, ``fast``, CPU) in a process of its own, whose peak resident memory ``/usr/bin/time``
reports. The brain and therefore the network's work are the same in every case, so the growth of the
peak with the field of view is what the voxels themselves cost (reading, conforming, normalizing, the
maps and their writing): :data:`lacunes.io.BYTES_PER_VOXEL` is read off the largest. Zero volumes of
512³ and 1024³ voxels (compressed files of a few hundred KB to 2 MB) and the largest phantom are run
again under a 4 GB limit (``LACUNES_MEMORY_LIMIT_GB=4``, the platform's): what does not fit is refused
from the header, before decoding. Each row gives the limit in force and whether the peak stayed
under it. Writes the ``memory`` section of RESULTS.md.

    python benchmarks/memory.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from quality import generated_case  # noqa: E402
from results_md import replace_section  # noqa: E402

from lacunes.geometry import Geometry  # noqa: E402
from lacunes.writing import write_volume  # noqa: E402

FIELDS = ((256, 256, 192), (320, 320, 256), (400, 400, 320))
EMPTY = ((512, 512, 512), (1024, 1024, 1024))
#: Just under what a 4 GB limit admits (3.4e7 voxels at lacunes.io.BYTES_PER_VOXEL): the check's edge.
NEAR_LIMIT = (336, 336, 288)


def write_case(folder: Path, shape, image: np.ndarray | None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, m in enumerate(("T1", "T2", "FLAIR")):
        big = np.zeros(shape, np.int16)
        if image is not None:
            at = tuple((f - s) // 2 for s, f in zip(image.shape[1:], shape))
            big[tuple(slice(a, a + s) for a, s in zip(at, image.shape[1:]))] = image[k]
        paths[m] = write_volume(big, Geometry(shape=tuple(shape)), folder / f"sub-001_{m}.nii.gz")
    return paths


def measure(paths: dict[str, Path], out: Path, limit_gb: float | None) -> dict:
    import os

    env = dict(os.environ)
    env.pop("LACUNES_MAX_VOXELS", None)
    env.pop("LACUNES_MEMORY_LIMIT_GB", None)
    if limit_gb is not None:
        env["LACUNES_MEMORY_LIMIT_GB"] = str(limit_gb)
    cmd = ["/usr/bin/time", "-f", "%M %e", str(ROOT / ".venv" / "bin" / "lacunes"), "predict",
           "--t1", str(paths["T1"]), "--t2", str(paths["T2"]), "--flair", str(paths["FLAIR"]),
           "--output", str(out), "--preset", "fast", "--no-progress", "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    kb, seconds = done.stderr.strip().splitlines()[-1].split()
    message = next((line for line in done.stderr.splitlines() if "ERROR" in line), "")
    message = message.split("failed: ", 1)[-1].replace(str(paths["T1"].parent) + "/", "")
    return {"peak_gb": int(kb) * 1024 / 1e9, "seconds": float(seconds), "exit": done.returncode,
            "message": message.strip()[:260]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="folder for the cases (default: a temporary one)")
    ap.add_argument("--section", default="memory")
    args = ap.parse_args()
    from lacunes.io import BASE_BYTES, BYTES_PER_VOXEL, memory_limit

    machine_gb = memory_limit()[0] / 1e9
    case = generated_case(101)
    plan = [(shape, True, None) for shape in (case.image.shape[1:], *FIELDS)]
    plan += [(NEAR_LIMIT, True, 4.0), (FIELDS[-1], True, 4.0), (EMPTY[0], False, None), (EMPTY[0], False, 4.0),
             (EMPTY[1], False, None)]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        tmp = Path(tmp)
        for shape, brain, limit_gb in plan:
            paths = write_case(tmp / "case", shape, case.image if brain else None)
            r = measure(paths, tmp / "out", limit_gb)
            rows.append({"shape": list(shape), "voxels": int(np.prod(shape)), "brain": brain,
                         "file_kb": paths["T1"].stat().st_size / 1e3, "limit_gb": limit_gb or machine_gb,
                         "need_gb": (BASE_BYTES + int(np.prod(shape)) * BYTES_PER_VOXEL) / 1e9, **r})
            print(rows[-1], flush=True)
            for p in paths.values():
                p.unlink()
    rest = min(r["peak_gb"] for r in rows)
    big = max((r for r in rows if r["brain"] and r["exit"] == 0), key=lambda r: r["voxels"])
    per_voxel = (big["peak_gb"] - rest) * 1e9 / big["voxels"]
    (ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out" / "memory.json").write_text(json.dumps({"rows": rows, "bytes_per_voxel": per_voxel,
                                                          "rest_gb": rest}, indent=1))
    lines = [
        "## Peak host memory against the field of view, and the size limit (fast, CPU)",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/memory.py', *sys.argv[1:]])}` — held-out phantom sub-101 "
        "centred in fields of view of zeros (int16 NIfTI), `lacunes predict --preset fast` in a process of its own "
        "(peak = its maximum resident memory, `/usr/bin/time`); the same brain, so the same network work, in each "
        f"row with a brain. Limit = the memory a run may use: this machine's {machine_gb:.1f} GB, or 4 GB "
        f"(`LACUNES_MEMORY_LIMIT_GB=4`); volume estimate = {BASE_BYTES / 1e9:.1f} GB + {BYTES_PER_VOXEL} bytes per voxel "
        "(`lacunes.io.BYTES_PER_VOXEL`), what the header check compares with the limit.",
        "",
        "| field of view | voxels | input | limit (GB) | volume estimate (GB) | exit | peak memory (GB) | under the limit "
        "| time (s) | message |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        what = "phantom" if r["brain"] else f"zeros ({r['file_kb']:.0f} KB per file)"
        lines.append(f"| {'×'.join(map(str, r['shape']))} | {r['voxels'] / 1e6:.1f} M | {what} | {r['limit_gb']:.1f} "
                     f"| {r['need_gb']:.1f} | {r['exit']} | {r['peak_gb']:.2f} "
                     f"| {'yes' if r['peak_gb'] <= r['limit_gb'] else '**no**'} | {r['seconds']:.1f} "
                     f"| {r['message'].replace('|', '/')} |")
    lines += ["", f"At rest (a refused subject) the process peaks at {rest:.2f} GB; the largest phantom run "
              f"({'×'.join(map(str, big['shape']))}) adds {per_voxel:.0f} bytes per voxel of its field of view."]
    text = "\n".join(lines)
    replace_section(args.section, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
