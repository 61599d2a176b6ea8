#!/usr/bin/env python3
"""End to end, as the platform runs it: one subject per container start.

Runs ``process.py`` on the bundled sample case (``test/``) in a fresh Python process per run and
measures, from the process's start to its exit (``results.json`` written): start-up (interpreter,
imports, model loading, input discovery: everything before the first read of the subject), reading
the subject, inference (``Predictor.predict``: brain mask, normalization, network, second stage,
operating point) and writing (maps, lesion table, ``results.json``). The phases are timed by wrapping
the library's own functions in the child process, so the same measurement applies to an older tree:
``--baseline-tree DIR`` (e.g. a ``git worktree`` of an earlier commit) is run in the same invocation,
interleaved with this tree, for a before/after comparison on the same machine. Writes the
``end-to-end`` section of benchmarks/RESULTS.md.

    git worktree add /tmp/before 22804fc
    python benchmarks/end_to_end.py --baseline-tree /tmp/before --repeats 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from results_md import device_label, replace_section  # noqa: E402

#: Runs in the child: wraps the library's functions with timers, then runs the tree's process.py.
CHILD = r"""
import json, resource, runpy, sys, time
t_start = float(sys.argv[1]); tree = sys.argv[2]; record = sys.argv[3]
sys.path.insert(0, tree)
sys.argv = [tree + "/process.py"] + sys.argv[4:]
marks = {"first_read": None}
spent = {"read": 0.0, "inference": 0.0}

def timed(owner, name, key):
    f = getattr(owner, name)
    def wrapper(*a, **k):
        t = time.time()
        if key == "read" and marks["first_read"] is None:
            marks["first_read"] = t
        try:
            return f(*a, **k)
        finally:
            spent[key] += time.time() - t
    setattr(owner, name, wrapper)

import lacunes
assert lacunes.__file__.startswith(tree), f"lacunes imported from {lacunes.__file__}, not {tree}"
import lacunes.runner as runner
from lacunes.inference import Predictor
timed(runner, "read_subject", "read")
timed(Predictor, "predict", "inference")
code = 0
try:
    runpy.run_path(tree + "/process.py", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
t_end = time.time()
json.dump({"code": code, "startup": marks["first_read"] - t_start if marks["first_read"] else None,
           "read": spent["read"], "inference": spent["inference"],
           "end": t_end - t_start, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6},
          open(record, "w"))
"""


def run_once(tree: Path, case: Path, preset: str, device: str, extra: tuple[str, ...] = ()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.json"
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-c", CHILD, "", str(tree), str(record), "--input", str(case), "--output", str(out),
               "--preset", preset, "--device", device, "--no-progress", *extra]
        t0 = time.time()
        cmd[3] = repr(t0)
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        if done.returncode or not (out / "results.json").is_file():
            raise SystemExit(f"{tree}: process.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
        r = json.loads(record.read_text())
        r["write"] = r["end"] - r["startup"] - r["read"] - r["inference"]
        r["wall"] = wall
        return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default=str(ROOT / "test"), help="a one-subject VALDO folder (default: the sample case)")
    ap.add_argument("--preset", default="fast", choices=["fast", "full"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--baseline-tree", help="an older checkout to compare with, run in the same invocation")
    ap.add_argument("--baseline-name", default=None, help="label of the baseline (default: its git commit)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per tree, interleaved; the fastest is reported")
    ap.add_argument("--precision", action="append", default=[],
                    help="also run this tree with process.py --precision P (repeatable), e.g. bfloat16")
    ap.add_argument("--section", default="end-to-end")
    args = ap.parse_args()
    import torch

    trees = [("this tree", ROOT, ())]
    trees += [(f"this tree, --precision {p}", ROOT, ("--precision", p)) for p in args.precision]
    if args.baseline_tree:
        base = Path(args.baseline_tree).resolve()
        label = args.baseline_name or subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
                                                     capture_output=True, text=True).stdout.strip() or str(base)
        trees.insert(0, (f"before ({label})", base, ()))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in trees}
    for k in range(args.repeats):
        for name, tree, extra in trees:
            r = run_once(tree, Path(args.case), args.preset, args.device, extra)
            results[name].append(r)
            print(f"{name} #{k + 1}: {r['wall']:.1f} s (start-up {r['startup']:.1f}, read {r['read']:.1f}, "
                  f"inference {r['inference']:.1f}, write {r['write']:.1f}), peak {r['peak_gb']:.2f} GB", flush=True)
    device = device_label(args.device)
    lines = [
        f"## End to end: one subject per process ({args.preset}, {device})",
        "",
        f"Command: `python benchmarks/end_to_end.py {shlex.join(sys.argv[1:])}` — torch {torch.__version__}. The "
        f"sample case (`{Path(args.case).name}/`, 153×189×159 voxels) through `process.py` (evalutils VALDO path) in a "
        f"fresh process; the fastest of {args.repeats} interleaved runs per tree. Start-up = process start to the "
        "first read of the subject (interpreter, imports, model, input discovery); write = maps, lesion table, "
        "results.json and exit.",
        "",
        "| tree | process start → exit (s) | × the first row | start-up | read | inference | write | peak memory (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best = {name: min(runs, key=lambda r: r["wall"]) for name, runs in results.items()}
    first = next(iter(best.values()))["wall"]
    for name, r in best.items():
        lines.append(f"| {name} | {r['wall']:.1f} | {r['wall'] / first:.2f} | {r['startup']:.1f} | {r['read']:.1f} "
                     f"| {r['inference']:.1f} | {r['write']:.1f} | {r['peak_gb']:.2f} |")
    text = "\n".join(lines)
    replace_section(args.section, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
