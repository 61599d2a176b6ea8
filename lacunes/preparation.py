"""Scans as they leave the scanner made ready for the network: T2 and FLAIR registered onto the T1, and
the brain extracted where the inputs still carry the skull.

The network expects one grid and a background of exactly 0 (``io.check_background``). A subject read
with preparation (the default of ``lacunes predict`` and the container; ``--no-preprocess`` turns it off):

1. **Registration.** A contrast on another grid than the reference (the T1, or the T2 of a ``T2+FLAIR``
   subject) is registered onto it — rigid (SimpleITK's ``Euler3DTransform``), Mattes mutual information,
   three resolutions (shrink 4, 2, 1; smoothing 2, 1, 0 mm; 5 % of the voxels sampled, at most
   :data:`MAX_SAMPLES` on the finest), starting from the scanner frame the headers give — then resampled
   linearly onto the reference's grid. A contrast already on the reference's grid
   is taken as registered (the usual output of a scanner's or a pipeline's co-registration). Where the
   optimizer ends worse than the headers' alignment, the headers' alignment is kept (and said); a
   transform beyond :data:`MAX_ROTATION_DEG` or :data:`MAX_TRANSLATION_MM` fails the subject
   (:class:`RegistrationError`, naming the contrast and the numbers).
2. **Brain extraction.** Where the reference does not look skull-stripped (under half of its faces'
   voxels 0, or more non-zero voxels than a brain holds: :func:`lacunes.headers.looks_skull_stripped`),
   deepbet (MIT; its TorchScript weights ship inside its registry package, nothing is downloaded) masks
   the brain on it; the mask is checked (a volume of :data:`BRAIN_ML` ml, else a QC flag) and every
   contrast is set to 0 outside it. Where the reference is stripped and another contrast is not, the
   reference's brain (its non-zero voxels) masks the others.

What was done, with its numbers (metric before and after, rotation, translation, brain volume, seconds),
is returned in :attr:`lacunes.io.Subject.preparation` for the sidecar, ``run.json`` and the report.
"""

from __future__ import annotations

import logging
import os
import time
from functools import lru_cache

import numpy as np

from lacunes.errors import LacunesInputError
from lacunes.geometry import Geometry, register_mutual_information, to_sitk
from lacunes.headers import nonzero_ml, ras_affine
from lacunes.io import MODALITIES, Subject, read_subject

logger = logging.getLogger(__name__)

#: Voxels the rigid registration's finest level samples at most (5 % of a brain-sized field of view, about
#: 150×180×150: the sample count that registered within 0.30 mm in benchmarks/preparation.py); a whole-head
#: field of view three times larger would otherwise triple the time of that level.
MAX_SAMPLES = 200_000
#: A rigid transform between two scans of one session beyond these is a failed registration.
MAX_ROTATION_DEG = 30.0
MAX_TRANSLATION_MM = 60.0
#: Brain volumes (ml) a brain mask of an adult head falls in; outside it the mask is a QC flag.
BRAIN_ML = (800.0, 2200.0)
#: The deepbet release whose weights ship in its package (pinned in requirements.txt).
DEEPBET = "deepbet 1.0.2"


class RegistrationError(LacunesInputError):
    """A contrast could not be registered onto the reference (the message names it and why)."""


class BrainExtractionError(LacunesInputError):
    """No brain mask could be made (the message says why)."""


def register_rigid(fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray,
                   moving_geometry: Geometry, name: str = "moving") -> tuple[np.ndarray, dict]:
    """``moving`` registered rigidly onto ``fixed`` (the module docstring) and resampled linearly onto
    ``fixed_geometry``'s grid, with a record of the registration: Mattes mutual information at the
    headers' alignment and after (lower is better), rotation (degrees, about each scanner axis) and
    translation (mm, scanner LPS) of the transform from the fixed image to the moving one, whether the
    headers' alignment was kept, and seconds. Raises :class:`RegistrationError`."""
    import SimpleITK as sitk

    start = time.perf_counter()
    f = sitk.Cast(to_sitk(np.asarray(fixed, np.float32), fixed_geometry), sitk.sitkFloat32)
    m = sitk.Cast(to_sitk(np.asarray(moving, np.float32), moving_geometry), sitk.sitkFloat32)
    identity = sitk.Euler3DTransform()  # the headers' alignment, about the fixed grid's centre
    identity.SetCenter(f.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in f.GetSize()]))
    try:
        final, before, after, stop = register_mutual_information(
            f, m, identity, sitk.Euler3DTransform, sampling=0.05, learning_rate=2.0, min_step=1e-3, iterations=200,
            smoothing_mm=(2.0, 1.0, 0.0), max_samples=MAX_SAMPLES)
    except RuntimeError as exc:
        raise RegistrationError(f"{name}: registration onto the reference failed ({str(exc).strip().splitlines()[-1]})"
                                ) from None
    kept = not after < before
    if kept:
        final = identity
    angles = np.degrees(final.GetAngleX()), np.degrees(final.GetAngleY()), np.degrees(final.GetAngleZ())
    translation = np.asarray(final.GetTranslation(), float)
    record = {"method": "rigid, Mattes mutual information, 3 levels (SimpleITK)",
              "centre_mm": [round(float(c), 4) for c in final.GetCenter()],
              "metric_before": round(float(before), 4), "metric_after": round(float(min(after, before)), 4),
              "rotation_deg": [round(float(a), 2) for a in angles],
              "translation_mm": [round(float(t), 2) for t in translation],
              "headers_kept": bool(kept), "stop": stop,
              "seconds": 0.0}
    if max(abs(a) for a in angles) > MAX_ROTATION_DEG or float(np.linalg.norm(translation)) > MAX_TRANSLATION_MM:
        raise RegistrationError(
            f"{name}: registration onto the reference ended {max(abs(a) for a in angles):.0f}° and "
            f"{np.linalg.norm(translation):.0f} mm away from the headers' alignment (at most {MAX_ROTATION_DEG:g}° "
            f"and {MAX_TRANSLATION_MM:g} mm between scans of one session): the contrasts may not be of one "
            "subject and session, or one is mostly empty; register them yourself and give them on the T1's grid")
    out = apply_registration(moving, moving_geometry, fixed_geometry, record)
    record["seconds"] = round(time.perf_counter() - start, 1)
    return out, record


def apply_registration(moving: np.ndarray, moving_geometry: Geometry, fixed_geometry: Geometry, record: dict) -> np.ndarray:
    """``moving`` resampled (linear) onto ``fixed_geometry``'s grid through a registration's record (:func:`register_rigid`:
    rotation about ``centre_mm``, translation), as the registration left it: the report draws a prepared
    subject again from its files and records without registering it again."""
    import SimpleITK as sitk

    transform = sitk.Euler3DTransform(tuple(record["centre_mm"]), *np.radians(record["rotation_deg"]),
                                      tuple(float(t) for t in record["translation_mm"]))
    image = sitk.Cast(to_sitk(np.asarray(moving, np.float32), moving_geometry), sitk.sitkFloat32)
    grid = to_sitk(np.zeros(fixed_geometry.shape, np.uint8), fixed_geometry)
    out = sitk.Resample(image, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0))


@lru_cache(maxsize=1)
def _deepbet():
    try:
        from deepbet import BrainExtraction
    except ImportError as exc:  # pragma: no cover - a pinned run-time dependency
        raise BrainExtractionError(f"brain extraction needs deepbet (pip install deepbet==1.0.2): {exc}") from None
    return BrainExtraction(no_gpu=True)


def extract_brain(array: np.ndarray, geometry: Geometry, name: str = "scan") -> tuple[np.ndarray, dict]:
    """A brain mask of one head (deepbet on the CPU) and its record: the volume in ml, whether it lies
    in :data:`BRAIN_ML`, seconds. Raises :class:`BrainExtractionError` where deepbet finds no brain, naming
    ``name`` (the subject and the file)."""
    import nibabel as nib

    start = time.perf_counter()
    image = nib.Nifti1Image(np.asarray(array, np.float32), ras_affine(geometry))
    try:
        _, mask_image, _ = _deepbet().run(image)
    except (AssertionError, ValueError) as exc:  # deepbet asserts on an image without a head
        raise BrainExtractionError(f"{name}: brain extraction found no brain ({exc})") from None
    mask = np.asarray(mask_image.dataobj).astype(bool)
    volume = nonzero_ml(mask, geometry.voxel_volume)
    if not mask.any():
        raise BrainExtractionError(f"{name}: brain extraction found no brain (an empty mask)")
    record = {"method": DEEPBET, "brain_ml": round(volume, 1), "plausible": bool(BRAIN_ML[0] <= volume <= BRAIN_ML[1]),
              "seconds": round(time.perf_counter() - start, 1)}
    return mask, record


def prepare_subject(subject_id: str, paths: dict[str, str | os.PathLike], modalities: tuple[str, ...] | str,
                    register: bool = True, extract: bool = True) -> Subject:
    """Read a subject (:func:`lacunes.io.read_subject`) and prepare it (the module docstring): its
    ``preparation`` says what was done. ``register=False`` resamples other grids through the headers alone
    (``--resample``); ``extract=False`` leaves the background as read."""
    records: dict[str, dict] = {}

    def align(modality: str, array: np.ndarray, geometry: Geometry, reference: np.ndarray,
              reference_geometry: Geometry) -> np.ndarray:
        out, records[f"registration_{modality}"] = register_rigid(
            reference, reference_geometry, array, geometry, f"{subject_id}: {modality}")
        r = records[f"registration_{modality}"]
        logger.info("%s: %s registered onto the reference in %.0f s (rotation %s°, translation %s mm%s)", subject_id,
                    modality, r["seconds"], "/".join(f"{a:g}" for a in r["rotation_deg"]),
                    "/".join(f"{t:g}" for t in r["translation_mm"]), "; the headers' alignment kept" if r["headers_kept"] else "")
        return out

    subject = read_subject(subject_id, paths, resample=True, modalities=modalities, align=align if register else None,
                           warn_background=not extract)
    if extract:
        _mask_brain(subject, records)
    subject.warnings += [f"{key.removeprefix('registration_')}: registration did not improve on the headers' alignment "
                         "(kept; check that it overlays the T1)" for key, r in records.items()
                         if key.startswith("registration_") and r["headers_kept"]]
    subject.preparation = records
    if records:
        logger.info("%s: prepared: %s", subject_id, summary(records))
    return subject


def summary(records: dict[str, dict]) -> str:
    """One line of what a subject's preparation did (the report's and the log's): ``FLAIR registered (9.1°,
    14 mm); brain extracted (deepbet 1.0.2, 1,523 ml)``; empty where nothing was done."""
    parts = []
    for key, r in records.items():
        if key.startswith("registration_"):
            turn = max(abs(a) for a in r["rotation_deg"])
            shift = float(np.linalg.norm(r["translation_mm"]))
            parts.append(f"{key.removeprefix('registration_')} "
                         + ("on the headers' alignment" if r["headers_kept"] else f"registered ({turn:.1f}°, {shift:.0f} mm)"))
    brain = records.get("brain_extraction")
    if brain:
        what = "brain extracted" if str(brain["method"]).startswith("deepbet") else "masked by the reference's brain"
        parts.append(f"{what} ({', '.join(brain.get('masked', []))}; {brain['method'].split(' (')[0]}, "
                     f"{brain['brain_ml']:,.0f} ml)")
    return "; ".join(parts)


def prepared_again(subject_id: str, paths: dict[str, str | os.PathLike], modalities: tuple[str, ...] | str,
                   records: dict[str, dict], brain_mask: np.ndarray | None = None) -> Subject:
    """A subject prepared before, made again from its files and what its preparation recorded (the
    registrations' transforms; the brain mask it wrote, where given): what the report draws."""

    def align(modality, array, geometry, reference, reference_geometry):
        record = records.get(f"registration_{modality}")
        if record is None or "centre_mm" not in record:
            from lacunes.geometry import resample_to

            return resample_to(array, geometry, reference_geometry)
        return apply_registration(array, geometry, reference_geometry, record)

    subject = read_subject(subject_id, paths, resample=True, modalities=modalities, align=align, warn_background=False)
    if brain_mask is not None and brain_mask.shape == subject.image.shape[1:]:
        subject.image[:, ~brain_mask.astype(bool)] = 0.0
    subject.preparation = records
    return subject


def _mask_brain(subject: Subject, records: dict[str, dict]) -> None:
    """Set every contrast to 0 outside the brain: deepbet's mask where the reference is not stripped, the
    reference's own brain where only others are not (the module docstring); records what was done."""
    channels = {m: i for i, m in enumerate(MODALITIES)}
    reference = subject.modalities[0]
    ref = subject.image[channels[reference]]
    # judged on each contrast as read (lacunes.headers.describe_input), not after registration padded it with 0
    stripped = {m: subject.headers[m]["skull_stripped"] for m in subject.modalities}
    if all(stripped.values()):
        return
    if not stripped[reference]:
        mask, records["brain_extraction"] = extract_brain(
            ref, subject.geometry, f"{subject.subject_id}: {reference} {subject.paths.get(reference, '')}".rstrip())
        r = records["brain_extraction"]
        logger.info("%s: brain extracted on the %s (%s, %.0f ml, %.0f s)", subject.subject_id, reference, DEEPBET,
                    r["brain_ml"], r["seconds"])
        if reference != "T1":
            subject.warnings.append(f"brain extracted on the {reference} (deepbet is trained on T1 scans)")
        if not r["plausible"]:
            subject.warnings.append(f"brain mask of {r['brain_ml']:.0f} ml (outside {BRAIN_ML[0]:.0f}-{BRAIN_ML[1]:.0f})")
    else:
        mask = ref != 0
        records["brain_extraction"] = {"method": f"the {reference}'s own brain (its non-zero voxels)",
                                       "brain_ml": round(nonzero_ml(mask, subject.geometry.voxel_volume), 1)}
    subject.image[:, ~mask] = 0.0
    subject.brain_mask = mask
    subject.warnings[:] = [w for w in subject.warnings if "background not 0" not in w]
    records["brain_extraction"]["masked"] = [m for m in subject.modalities if not stripped[m]]


