#!/usr/bin/env python3
"""Store labelled subjects (VALDO layout) again on a coarser (or finer) isotropic grid, as a scan acquired
and skull-stripped at that voxel size comes: each contrast resampled as a skull-stripped image
(:func:`lacunes.conform.resample_masked`), each rater's label linearly and kept where it is >= 0.5.

A family of validation subjects stored at 1.3 mm lets ``lacunes calibrate --worst-family`` choose an
operating point and second stage that hold on scans coarser than the 1 mm they were made at (the
acquisition benchmark's ``iso1.3`` variant, made the same way from the held-out phantoms):

    python training/resample_subjects.py data/val-plain data/val-iso1.3 --voxel 1.3

Only the images and the rater labels are written (same file names); nothing else of the folder is copied.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lacunes.conform import grid_with_spacing, resample_axis_aligned, resample_masked  # noqa: E402
from lacunes.io import read_volume  # noqa: E402
from lacunes.layouts import find_subject_files  # noqa: E402
from lacunes.writing import write_volume  # noqa: E402


def resample_subject(files, out: Path, voxel_mm: float) -> list[Path]:
    """One subject's contrasts and rater labels on a ``voxel_mm`` isotropic grid over the same field of
    view, written under ``out`` with their names once every one of them is read and resampled (a file that
    cannot be read leaves none of the subject's). Raises ValueError when it has no rater label."""
    labels = files.label_paths()
    if not labels:
        raise ValueError(f"{files.subject_id}: no rater label next to {files.paths['T1']}")
    moved = []
    for path in [*files.paths.values(), *labels.values()]:
        array, geom = read_volume(path)
        target = grid_with_spacing(geom, (voxel_mm,) * 3)
        if path in labels.values():
            out_array = (resample_axis_aligned((array > 0).astype(np.float32), geom, target, order=1) >= 0.5
                         ).astype(np.uint8)
        else:
            out_array = resample_masked(array, geom, target)
            if np.issubdtype(array.dtype, np.integer):
                info = np.iinfo(array.dtype)
                out_array = np.round(out_array).clip(info.min, info.max).astype(array.dtype)
        moved.append((out_array, target, out / Path(path).name))
    return [write_volume(array, target, path) for array, target, path in moved]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a folder of labelled subjects (VALDO layout)")
    ap.add_argument("out", type=Path, help="where to write them again (created; existing files replaced)")
    ap.add_argument("--voxel", type=float, required=True, help="the new isotropic voxel size, mm")
    args = ap.parse_args(argv)
    if not args.voxel > 0:
        ap.error(f"--voxel must be positive, got {args.voxel}")
    if args.source.resolve() == args.out.resolve():
        ap.error("the output folder must not be the source folder")
    subjects = find_subject_files(args.source)
    if not subjects:
        ap.error(f"no subjects in {args.source}")
    args.out.mkdir(parents=True, exist_ok=True)
    for k, files in enumerate(subjects, 1):
        try:
            resample_subject(files, args.out, args.voxel)
        except ValueError as e:  # no rater label, an unreadable file (lacunes.errors.UnreadableImageError)
            print(f"resample_subjects: {e} ({k - 1} subject(s) before it written to {args.out})", file=sys.stderr)
            return 1
        print(f"[{k}/{len(subjects)}] {files.subject_id}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
