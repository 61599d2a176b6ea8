#!/usr/bin/env python3
"""The container's entry point: lacune probability and uncertainty maps for VALDO Task 3.

Two input layouts are recognised (see README):

* VALDO (legacy grand-challenge / evalutils): ``/input/sub-*_space-*_desc-masked_T1.nii.gz`` (+ T2,
  FLAIR), one or many subjects → ``/output/images/sub-XXX_space-T1_prediction.nii.gz``,
  ``..._uncertaintymap.nii.gz`` and ``/output/results.json``. Built on evalutils 0.4.2's
  ``SegmentationAlgorithm``.
* current grand-challenge sockets: ``/input/inputs.json`` + ``/input/images/<slug>/*.mha`` →
  ``/output/images/lacune-probability-map/output.mha`` and ``.../lacune-uncertainty-map/output.mha``.

With no flags it runs the published recipe (``full``). ``LACUNES_INFERENCE=fast`` (or ``--preset fast``)
selects the CPU setting; ``LACUNES_DEVICE`` (or ``--device``) the device; ``LACUNES_PRECISION`` (or
``--precision``) the arithmetic (``auto`` = tf32 on CUDA, float32 on the CPU); ``LACUNES_BACKEND`` (or
``--backend``) where the network runs (``auto`` = OpenVINO on the CPU, PyTorch on a GPU); ``LACUNES_THRESHOLD`` and
``LACUNES_MIN_VOLUME`` (or ``--threshold``, ``--min-volume``) override the model's operating point;
T2 and FLAIR on another grid than the T1 are registered onto it and the brain is extracted where the T1
carries the skull (:mod:`lacunes.preparation`; inputs stripped and on one grid, as VALDO's, pass through
unchanged); ``LACUNES_PREPROCESS=0`` (or ``--no-preprocess``) takes the inputs as given, and then
``LACUNES_RESAMPLE=1`` (or ``--resample``) resamples T2 and FLAIR onto the T1's grid when they lie on
another grid over the same physical space.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from lacunes import options  # torch-free: the choices and defaults

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("lacunes.process")


def default_model() -> Path:
    """``/opt/ml/model/lacunes.pt`` when the platform mounts one, else the bundled ``model/lacunes.pt``."""
    mounted = Path("/opt/ml/model/lacunes.pt")
    if mounted.is_file():
        return mounted
    from lacunes.checkpoint import bundled_checkpoint

    return bundled_checkpoint()


def make_valdo_algorithm(predictor, input_path: Path, output_path: Path, resample: bool = False, checked=None,
                         prepare: bool = True):
    """An evalutils ``SegmentationAlgorithm`` whose cases are the T1 files of ``input_path``
    (``checked``: the one subject already read by ``validate_subjects``, or None)."""
    from evalutils import SegmentationAlgorithm
    from evalutils.io import ImageLoader
    from evalutils.validators import UniqueImagesValidator

    from lacunes.layouts import valdo_subject
    from lacunes.runner import run_subject
    from lacunes.writing import atomic_output

    class T1Bytes(ImageLoader):
        """Cases by their T1 file's bytes: every subject was already read in full and checked
        (``validate_subjects``), so evalutils need not decode each T1 again just to hash it."""

        @staticmethod
        def load_image(fname):
            import hashlib

            return hashlib.sha256(Path(fname).read_bytes()).hexdigest()

        @staticmethod
        def hash_image(image):
            return image

    class LacuneSegmentation(SegmentationAlgorithm):
        def __init__(self) -> None:
            pattern = re.compile(re.escape(str(input_path)) + r"/sub-[^/]*_space-[^/]*_desc-masked_T1\.(nii\.gz|nii|mha)$")
            super().__init__(
                input_path=input_path,
                output_path=output_path / "images",
                output_file=output_path / "results.json",
                file_filters={"input_image": pattern},
                file_loaders={"input_image": T1Bytes()},
                validators={"input_image": (UniqueImagesValidator(),)},
            )

        def process_case(self, *, idx, case):
            files = valdo_subject(Path(case["path"]))
            images = Path(self._output_path)
            run_subject(predictor, files, images / files.prediction_name, images / files.uncertainty_name,
                        resample=resample, subject=checked, prepare=prepare, place=False)
            return {
                "outputs": [{"type": "metaio_image", "filename": [files.prediction_name, files.uncertainty_name]}],
                "inputs": [{"type": "metaio_image", "filename": [files.paths[m].name for m in options.MODALITIES]}],
                "error_messages": [],
            }

        def predict(self, *, input_image):  # pragma: no cover - process_case does the work
            raise NotImplementedError

        def save(self) -> None:
            # Written atomically so a crash never leaves a truncated results.json.
            with atomic_output(self._output_file) as tmp:
                tmp.write_text(json.dumps(self._case_results))

    return LacuneSegmentation()


def run_grand_challenge(predictor, files, output_path: Path, resample: bool = False, checked=None,
                        prepare: bool = True) -> None:
    """The one case of a grand-challenge job (``files``: its discovered and checked subject; ``checked``:
    its images as read by ``validate_subjects``)."""
    from lacunes.layouts import GC_OUTPUT_SLUGS
    from lacunes.runner import run_subject

    images = output_path / "images"
    run_subject(predictor, files, images / GC_OUTPUT_SLUGS["prediction"] / "output.mha",
                images / GC_OUTPUT_SLUGS["uncertainty"] / "output.mha", resample=resample, subject=checked,
                prepare=prepare, place=False)  # the challenge's outputs are the two maps: no lesion table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default="/input", help="input folder (default /input)")
    parser.add_argument("--output", default="/output", help="output folder (default /output)")
    parser.add_argument("--model", default=None, help="checkpoint (default /opt/ml/model/lacunes.pt, else model/lacunes.pt)")
    parser.add_argument("--preset", default=os.environ.get("LACUNES_INFERENCE", options.DEFAULT_INFERENCE_PRESET).strip().lower(),
                        choices=options.INFERENCE_PRESETS,
                        help="inference setting (default: $LACUNES_INFERENCE or full, the published recipe)")
    parser.add_argument("--device", default=os.environ.get("LACUNES_DEVICE", "auto"),
                        help="auto (cuda, mps, cpu), cpu, cuda... (default: $LACUNES_DEVICE or auto)")
    parser.add_argument("--precision", default=os.environ.get("LACUNES_PRECISION", "auto"),
                        choices=options.option_values(options.Precision),
                        help="network arithmetic (default: $LACUNES_PRECISION or auto = tf32 on CUDA, float32 on CPU)")
    parser.add_argument("--backend", default=os.environ.get("LACUNES_BACKEND", "auto"),
                        help="where the network runs: auto (OpenVINO on the CPU when installed, else PyTorch), torch "
                             "or openvino (default: $LACUNES_BACKEND or auto)")
    parser.add_argument("--threshold", type=float, default=_env_float("LACUNES_THRESHOLD"),
                        help="probability from which a voxel is a lacune (default: $LACUNES_THRESHOLD or the model's "
                             "operating point); the written map's 0.5 cut means this threshold")
    parser.add_argument("--min-volume", type=float, default=_env_float("LACUNES_MIN_VOLUME"), metavar="MM3",
                        help="remove predicted lesions under this volume (default: $LACUNES_MIN_VOLUME or the model's)")
    parser.add_argument("--no-preprocess", action="store_true", default=not _env_flag("LACUNES_PREPROCESS", True),
                        help="take the inputs as given: no registration of T2 and FLAIR onto the T1, no brain "
                             "extraction (default: preprocess where needed; $LACUNES_PREPROCESS=0 turns it off)")
    parser.add_argument("--resample", action="store_true", default=_env_flag("LACUNES_RESAMPLE"),
                        help="with --no-preprocess: resample T2 and FLAIR onto the T1's grid when they lie on another "
                             "grid over the same physical space (default: $LACUNES_RESAMPLE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return default
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SystemExit(f"{name} must be 1/0 (true/false, yes/no, on/off), got {value!r}")


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {value!r}") from None


def _remove_empty(folders: list[Path]) -> None:
    """Remove the output folders this run created, deepest first, where a failure left them empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:  # absent, or not empty: what is in it stays
            pass


def main(argv: list[str] | None = None) -> int:
    t0 = time.time()
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse does not check a default (from the environment)
    try:
        options.look_up_option(args.preset, options.INFERENCE_PRESETS, "LACUNES_INFERENCE")
        options.look_up_option(args.precision, options.Precision, "--precision / LACUNES_PRECISION")
        options.look_up_option(args.backend, options.Backend, "--backend / LACUNES_BACKEND")
    except ValueError as exc:
        parser.error(str(exc))
    # the project's own INFO lines; other libraries' (evalutils' "Skip loading …") only from WARNING
    from lacunes.logs import setup

    setup(logging.WARNING, "%(asctime)s %(levelname)s %(name)s: %(message)s", logging.INFO)

    from lacunes.errors import LacunesInputError
    from lacunes.inference import Predictor
    from lacunes.layouts import CONTAINER_LAYOUTS, GC_OUTPUT_SLUGS, find_subjects, is_grand_challenge_layout
    from lacunes.runner import validate_subjects
    from lacunes.settings import PRESETS
    from lacunes.writing import WriteError, prepare_output_folder

    input_path, output_path = Path(args.input), Path(args.output)
    images = output_path / "images"
    created = [] if images.exists() else [images, *(images / slug for slug in GC_OUTPUT_SLUGS.values())]
    t_imports = time.time()
    try:
        if not input_path.is_dir():
            raise LacunesInputError(f"input folder {input_path} does not exist")
        settings = PRESETS[args.preset].replace(device=args.device, precision=args.precision, backend=args.backend,
                                                progress=not args.no_progress)
        grand_challenge = is_grand_challenge_layout(input_path)
        # Every subject's files are read in full and checked before the first prediction is written.
        subjects = [entry.files() for entry in find_subjects(input_path, CONTAINER_LAYOUTS, otherwise=None)]
        checked = validate_subjects(subjects, args.resample, progress=not args.no_progress and len(subjects) > 1,
                                    prepare=not args.no_preprocess)
        for folder in (output_path, output_path / "images"):  # writable before any inference; leftovers removed
            prepare_output_folder(folder)
        model = Path(args.model) if args.model else default_model()
        predictor = Predictor.from_checkpoint(model, settings, args.threshold, args.min_volume)
        logger.info("start-up %.1f s (imports %.1f s; inputs read and checked, model loaded %.1f s)", time.time() - t0,
                    t_imports - t0, time.time() - t_imports)
        op = predictor.release.operating_point
        logger.info("model %s, preset %s, device %s, %s, backend %s, %d TTA variant(s), operating point: "
                    "probability >= %g, lesions >= %g mm³", model, args.preset, predictor.device, predictor.precision,
                    predictor.backend, predictor.variants, op.threshold, op.min_volume_mm3)
        logger.info("model: %s", predictor.release.data_statement)
        logger.info("calibration: %s", predictor.release.calibration_statement)
        if grand_challenge:
            run_grand_challenge(predictor, subjects[0], output_path, args.resample, checked, not args.no_preprocess)
        else:
            make_valdo_algorithm(predictor, input_path, output_path, args.resample, checked,
                                 not args.no_preprocess).process()
    except (LacunesInputError, FileNotFoundError, ValueError, WriteError) as exc:
        logger.error("%s", exc)
        _remove_empty(created)
        return 2
    except Exception as exc:  # evalutils' validators (e.g. two subjects with identical T1 bytes)
        _remove_empty(created)
        if not type(exc).__module__.startswith("evalutils"):
            raise
        logger.error("%s: %s", type(exc).__name__, exc)
        return 2
    import resource

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    logger.info("finished in %.1f s, peak memory %.2f GB", time.time() - t0, peak_gb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
