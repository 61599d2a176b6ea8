#!/usr/bin/env python3
"""Memory ``lacunes calibrate`` holds for its validation subjects while it chooses the operating point: the
subjects as read (:class:`lacunes.operating_point.ValidationCase`: the raw map, the normalized image, the
reference and the brain mask, full size) against each prepared as it is read
(:func:`lacunes.operating_point.prepare_case`: the brain's box, masked, the second stage's candidates scored,
no image), the two measured in the same run with ``tracemalloc`` (numpy reports its arrays to it) over the
same subjects; per subject and extrapolated to calibrate's 125 validation subjects.

    python benchmarks/calibration_memory.py runs/s8d/calibrated.pt --val data/val-plain --n 10 \\
        --cache out/calibration-cache --section calibration-memory

The raw maps come from ``--cache`` (``lacunes calibrate --cache``'s folder) where they are kept, else the
network predicts them.
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from results_md import replace_section  # noqa: E402

from lacunes.calibration import prediction_cache, raw_case  # noqa: E402
from lacunes.inference import Predictor  # noqa: E402
from lacunes.layouts import find_subject_files  # noqa: E402
from lacunes.operating_point import prepare_case  # noqa: E402
from lacunes.options import DEFAULT_THRESHOLD, FULL_SET  # noqa: E402
from lacunes.settings import PRESETS  # noqa: E402


def held(make, subjects) -> tuple[int, int]:
    """Bytes held by the list ``make`` builds from ``subjects`` once it is built, and the peak on the way."""
    tracemalloc.start()
    kept = [make(files) for files in subjects]
    now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return now, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint with a second stage (its candidates are scored when prepared)")
    ap.add_argument("--val", required=True, help="a folder of labelled subjects (VALDO layout)")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--modalities", default=FULL_SET)
    ap.add_argument("--cache", help="lacunes calibrate --cache's folder")
    ap.add_argument("--section", default="", help="RESULTS.md section to write (none: print only)")
    args = ap.parse_args()
    predictor = Predictor.from_checkpoint(args.checkpoint, PRESETS["fast"].replace(progress=False),
                                          threshold=DEFAULT_THRESHOLD)
    rescorer = predictor.release.post_processing_for(args.modalities)[1]
    if rescorer is None:
        raise SystemExit(f"{args.checkpoint} has no second stage for {args.modalities}")
    cache = prediction_cache(Path(args.cache), predictor, "fast", args.modalities) if args.cache else None
    subjects = find_subject_files(Path(args.val))[: args.n]

    def read(files):
        return raw_case(predictor, files, cache, args.modalities)

    as_read, peak_read = held(read, subjects)
    prepared, peak_prepared = held(lambda files: prepare_case(read(files), rescorer), subjects)
    n, mb = len(subjects), 1024**2
    text = "\n".join([
        "## Memory of calibrate's validation subjects", "",
        f"Command: `python benchmarks/calibration_memory.py {args.checkpoint} --val {args.val} --n {args.n}"
        + (f" --modalities {args.modalities}" if args.modalities != FULL_SET else "")
        + (" --cache …" if args.cache else "") + (f" --section {args.section}" if args.section else "") + "`. "
        f"{n} subjects of `{Path(args.val).name}`, measured with tracemalloc in one process: what the list of "
        "subjects holds once built, and its peak while built.", "",
        "| validation subjects held | held | per subject | for 125 subjects | peak while built |",
        "|---|---|---|---|---|",
        f"| as read (full-size map, normalized image, reference, mask) | {as_read / mb:,.0f} MB | "
        f"{as_read / n / mb:,.0f} MB | {125 * as_read / n / 1024**3:.1f} GB | {peak_read / mb:,.0f} MB |",
        f"| each prepared as read (`prepare_case`: the brain's box, candidates scored, no image) | "
        f"{prepared / mb:,.0f} MB | {prepared / n / mb:,.0f} MB | {125 * prepared / n / 1024**3:.1f} GB | "
        f"{peak_prepared / mb:,.0f} MB |", "",
        f"Prepared as read, the subjects hold {prepared / as_read:.2f} of the memory.",
    ])
    if args.section:
        replace_section(args.section, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
