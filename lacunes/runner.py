"""From files to written maps: one subject (:func:`run_subject`, shared by ``process.py`` and
``lacunes predict``), a cohort (:func:`run_cohort`: skip what is done, one failure does not stop the
others, ``run.json``, quality control) and the checks made before anything is written
(:func:`validate_subjects`)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from lacunes.inference import Predictor
from lacunes.instances import lesion_table
from lacunes.io import Subject, read_subject
from lacunes.layouts import SubjectFiles
from lacunes.options import FULL_SET, INPUT_SETS, MODALITIES, input_set_name, look_up_option
from lacunes.provenance import record_key, unlike_record
from lacunes.regions import COLUMNS as REGION_COLUMNS
from lacunes.regions import region_map as regions_map
from lacunes.regions import unknown as unknown_place
from lacunes.writing import atomic_output, write_volume, write_volumes

logger = logging.getLogger(__name__)


@dataclass
class SubjectReport:
    subject_id: str
    outputs: list[Path] = field(default_factory=list)
    lesions: int = 0
    seconds: float = 0.0
    status: str = "done"  # done | skipped | failed
    error: str = ""
    extras_from_maps: bool = False  # skipped, the extras asked for only now made from the saved maps
    volume_mm3: float = 0.0  # all detected lesions together
    phases: dict[str, float] = field(default_factory=dict)  # seconds: read, inference, write
    rejected_candidates: list[dict] = field(default_factory=list)  # what the second stage took out
    input_set: str = FULL_SET  # the contrasts it was segmented from
    flags: list[str] = field(default_factory=list)  # what to review (lacunes.runner.qc_flags)
    headers: dict[str, dict] = field(default_factory=dict)  # per contrast, as read (lacunes.headers)
    preparation: dict[str, dict] = field(default_factory=dict)  # registration, brain extraction (lacunes.preparation)
    regions: dict = field(default_factory=dict)  # the registration onto the template (lacunes.regions)
    places: list[dict] = field(default_factory=list)  # per lesion id: region, side, MNI centre (lacunes.regions)


#: The run settings' statement of a prepared run (``preparation`` in run.json's settings).
PREPARATION = "T2 and FLAIR registered onto the T1 where on another grid, the brain extracted where not stripped"

#: A lesion whose mean uncertainty reaches this is marked for review: in a trial cohort of phantoms the two
#: false positives had a mean uncertainty of 0.44 and 0.64, the true lacunes 0.15-0.23.
REVIEW_UNCERTAINTY = 0.4


def place_lesions(subject: Subject, probability: np.ndarray, uncertainty: np.ndarray | None = None
                  ) -> tuple[list[dict], dict, object]:
    """The lesion table (:func:`lacunes.instances.lesion_table`) with where each lesion lies
    (:mod:`lacunes.regions`: the subject's reference contrast registered onto the template, only where it has
    lesions), the registration's record and its transform (None where there is none); every lesion
    "unknown" where the template or the atlas cannot be read (said once in the log: a matter of the
    installation, not of the subject) or the registration failed (the record's ``why``, a QC flag)."""
    from lacunes import regions

    geometry = subject.geometry

    def table(locate=None) -> list[dict]:
        return lesion_table(probability, uncertainty, geometry.spacing, geometry.origin, direction=geometry.direction,
                            locate=locate)

    if not (probability >= 0.5).any():  # lesion_table's threshold: no lesion, no registration
        return table(), {}, None
    try:
        template = regions.load_template()
    except regions.AtlasUnavailable as exc:
        _say_once(f"lesion regions and MNI centres unknown in this run: {exc}")
        return table(), {"usable": False, "skipped": True, "why": f"lesion regions unknown: {exc}"}, None
    reference = subject.modalities[0]
    record, transform = regions.register_to_template(subject.image[MODALITIES.index(reference)], geometry,
                                                     f"{subject.subject_id}: {reference}")
    if template.regions is None:
        why = f"no atlas in {regions.atlas_dir()} (apt-get install mricron-data)"
        _say_once(f"lesion regions unknown in this run (MNI centres given): {why}")
        record["atlas"] = f"none: {why}"
    else:
        record["atlas"] = regions.ATLASES
    rows = table(regions.Locator(transform, geometry))
    logger.info("%s: %s", subject.subject_id, regions.summary(record))
    return rows, record, transform


@cache
def _say_once(message: str) -> None:
    logger.warning("%s", message)


def qc_flags(subject: Subject, rows: list[dict]) -> list[str]:
    """What makes a subject's result doubtful, kept with it (run.json, the cohort table, the sidecar, the
    report): its input warnings (:attr:`lacunes.io.Subject.warnings`) and its lesions whose mean
    uncertainty is at least :data:`REVIEW_UNCERTAINTY`."""
    uncertain = [r["id"] for r in rows if r.get("mean_uncertainty", 0.0) >= REVIEW_UNCERTAINTY]
    return list(subject.warnings) + ([f"review lesion(s) {', '.join(map(str, uncertain))} (mean uncertainty >= "
                                      f"{REVIEW_UNCERTAINTY:g})"] if uncertain else [])


#: The lesion table's columns (CSV): centres in scanner RAS mm, then where the lesion lies (lacunes.regions).
TABLE_COLUMNS = ("id", "voxels", "volume_mm3", "centre_R_mm", "centre_A_mm", "centre_S_mm", "mean_probability",
                 "max_probability", "mean_uncertainty", *REGION_COLUMNS)


def write_lesion_table(rows: list[dict], path: Path) -> Path:
    """The lesion table as CSV (:data:`TABLE_COLUMNS`; region columns "unknown"/empty where not placed)."""
    rows = [{**unknown_place(), **row} for row in rows]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def input_set_of(files: SubjectFiles, modalities: str | None = None) -> str:
    """The set of contrasts a subject is read with: ``modalities`` when given (``--modalities``, checked
    against :data:`lacunes.options.INPUT_SETS`), else every contrast its files hold."""
    if modalities:
        return look_up_option(modalities, INPUT_SETS, "--modalities")
    return input_set_name(m for m, p in files.paths.items() if p is not None)


def read_files(files: SubjectFiles, resample: bool = False, modalities: str | None = None,
               prepare: bool = False) -> Subject:
    """A subject's files read with its set of contrasts (:func:`input_set_of`); with ``prepare``, registered
    and brain-extracted where needed (:func:`lacunes.preparation.prepare_subject`)."""
    if prepare:
        from lacunes.preparation import prepare_subject

        return prepare_subject(files.subject_id, files.paths, input_set_of(files, modalities))
    return read_subject(files.subject_id, files.paths, resample, input_set_of(files, modalities))


def check_files(files: SubjectFiles, resample: bool = False, modalities: str | None = None,
                prepare: bool = False) -> Subject:
    """A subject's files read and checked as :func:`read_files` reads them, without the preparation's
    registration and brain extraction (a contrast on another grid is resampled through its header and
    its background left as read): what a cohort's check before the run costs."""
    if prepare:
        from lacunes.geometry import resample_to

        return read_subject(files.subject_id, files.paths, True, input_set_of(files, modalities),
                            align=lambda m, a, g, r, rg: resample_to(a, g, rg), warn_background=False)
    return read_files(files, resample, modalities)


def validate_subjects(subjects: list[SubjectFiles], resample: bool = False, progress: bool = False,
                      modalities: str | None = None, prepare: bool = False):
    """Read every subject's files in full and check them before anything is written: readable and
    complete (:func:`lacunes.io.read_volume`), on one grid (or resampled onto the T1's) and not empty
    (non-finite voxels are counted by :func:`lacunes.io.read_subject` and repaired at inference). The
    first failure raises :class:`lacunes.errors.LacunesInputError` naming the subject, the file where
    known, and the reason.

    Returns the subject read when there is exactly one (a single-subject run passes it on to
    :func:`run_subject` instead of reading it again; with ``prepare``, prepared), else None (a cohort is
    not held in memory, and its subjects are prepared as they run: :func:`check_files`)."""
    from tqdm import tqdm

    from lacunes.checkpoint import sha256_of
    from lacunes.errors import LacunesInputError

    for files in tqdm(subjects, desc="checking inputs", unit="subject", disable=not progress):
        try:
            subject = (read_files if len(subjects) == 1 else check_files)(files, resample, modalities, prepare)
        except LacunesInputError as exc:
            raise type(exc)(f"{files.subject_id}: {exc}") from None
        if subject.image.size == 0:
            raise LacunesInputError(f"{files.subject_id}: the images hold no voxel ({next(iter(files.paths.values()))})")
    seen: dict[str, Path] = {}  # a T1's bytes → its file: one scan given as two subjects is named, both files
    for files in subjects if len(subjects) > 1 else []:
        first = Path(next(iter(files.paths.values())))
        digest = sha256_of(first)
        if digest in seen:
            raise LacunesInputError(f"{files.subject_id}: {first} holds the same bytes as {seen[digest]}: one scan "
                                    "given as two subjects")
        seen[digest] = first
    return subject if len(subjects) == 1 else None


def extras_paths(files: SubjectFiles, extras_dir: Path | None, write_mask: bool, write_table: bool) -> dict[str, Path]:
    """Where a subject's extras go: ``mask`` (binary at 0.5) and ``table`` (lesion CSV), as asked."""
    if extras_dir is None:
        return {}
    stem = files.output_prefix or f"{files.subject_id}_"
    out = {}
    if write_mask:
        out["mask"] = Path(extras_dir) / f"{stem}mask.nii.gz"
    if write_table:
        out["table"] = Path(extras_dir) / f"{stem}lesions.csv"
    return out


def fingerprints(paths: list[Path], output: Path) -> dict[str, dict]:
    """The completion record of written files: size and sha256 of each (keyed as in run.json)."""
    from lacunes.checkpoint import sha256_of

    return {record_key(p, output): {"bytes": Path(p).stat().st_size, "sha256": sha256_of(p)} for p in paths}


def record_mismatch(record, paths: list[Path], output: Path) -> str | None:
    """Why the outputs ``paths`` of a subject are not known complete (None when they are): the
    subject has no completion record, or a file is missing, was not recorded (an extra asked for
    only now), or differs from its record (a killed copy, a file changed since)."""
    if record is None or record.status not in ("done", "skipped") or not record.outputs:
        return "no record of a completed run"
    words = {"missing": "is missing", "unrecorded": "was not written by the recorded run",
             "changed": "differs from the recorded run"}
    for p in paths:
        key = record_key(p, output)
        why = unlike_record(p, record.outputs.get(key))
        if why:
            return f"{key} {words[why]}"
    return None


def run_subject(
    predictor: Predictor,
    files: SubjectFiles,
    prediction_path: Path,
    uncertainty_path: Path,
    extras_dir: Path | None = None,
    write_mask: bool = False,
    write_table: bool = False,
    resample: bool = False,
    subject: Subject | None = None,
    modalities: str | None = None,
    prepare: bool = False,
    place: bool = True,
) -> SubjectReport:
    """Read a subject (unless ``subject``, already read from ``files``, is given), predict, and write the
    probability and uncertainty maps on its T1 grid (the T2's for a ``T2+FLAIR`` subject).

    ``modalities``: the set of contrasts to use (``--modalities``; by default every contrast the files
    hold); a set the model does not accept is refused unless chosen so (:meth:`lacunes.release.Release.check_input_set`).

    Extras (binary mask at 0.5, lesion table CSV) go to ``extras_dir``, never next to the contract's
    outputs. Nothing is written when reading or predicting fails. ``resample``: T2/FLAIR on another grid
    are resampled onto the T1's (:func:`lacunes.io.read_subject`). ``prepare``: registered onto it instead,
    and the brain extracted where the inputs carry the skull (:mod:`lacunes.preparation`). ``place``: each
    lesion's region, side and MNI centre in the lesion table (:func:`place_lesions`; ``--no-regions`` skips it).
    """
    t0 = time.time()
    predictor.release.check_input_set(input_set_of(files, modalities), chosen=bool(modalities), subject_id=files.subject_id)
    if subject is None or subject.subject_id != files.subject_id:
        subject = read_files(files, resample, modalities, prepare)
    t1 = time.time()
    prediction = predictor.predict(subject)
    probability, uncertainty = prediction
    t2 = time.time()
    geometry = subject.geometry
    outputs = write_volumes([(probability.astype(np.float32), geometry, prediction_path),
                             (uncertainty.astype(np.float32), geometry, uncertainty_path)])
    placed: dict = {}
    if place:
        rows, placed, transform = place_lesions(subject, probability, uncertainty)
        atlas = regions_map(transform, geometry) if extras_dir is not None else None
        if atlas is not None:  # what the lesions were named by, on the subject's grid: the report draws it
            where = Path(extras_dir) / f"{files.output_prefix or files.subject_id + '_'}regions.nii.gz"
            outputs.append(write_volume(atlas, geometry, where))
            placed["map_file"] = str(where.resolve())
    else:
        rows = lesion_table(probability, uncertainty, geometry.spacing, geometry.origin, direction=geometry.direction)
    t_placed = time.time()
    extras = extras_paths(files, extras_dir, write_mask, write_table)
    if "mask" in extras:
        outputs.append(write_volume((probability >= 0.5).astype(np.uint8), geometry, extras["mask"]))
    if subject.brain_mask is not None and extras_dir is not None:  # what the preparation masked: the report draws it
        brain = Path(extras_dir) / f"{files.output_prefix or files.subject_id + '_'}brainmask.nii.gz"
        outputs.append(write_volume(subject.brain_mask.astype(np.uint8), geometry, brain))
        subject.preparation["brain_extraction"]["mask_file"] = str(brain.resolve())
    if "table" in extras:
        outputs.append(write_lesion_table(rows, extras["table"]))
    t3 = time.time()
    report = SubjectReport(files.subject_id, outputs, len(rows), t3 - t0, input_set=subject.input_set,
                           volume_mm3=float(sum(r["volume_mm3"] for r in rows)),
                           phases={"read": t1 - t0, "inference": t2 - t1, "regions": t_placed - t2,
                                   "write": t3 - t_placed},
                           rejected_candidates=prediction.stats.get("rejected_candidates", []),
                           flags=qc_flags(subject, rows), headers=subject.headers, preparation=subject.preparation,
                           regions=placed, places=[{"id": r["id"], **{k: r[k] for k in REGION_COLUMNS}}
                                                   for r in rows if "region" in r])
    if placed and not placed.get("usable") and not placed.get("skipped"):  # this subject's registration failed
        report.flags.append(placed["why"])
    st = prediction.stats
    notes = []
    if st.get("candidates"):
        notes.append(f"second stage rejected {st['rejected']} of {st['candidates']} candidate(s)")
    if st.get("extended_voxels"):
        notes.append(f"{st['extended_voxels']} voxel(s) added to detected lesions by their extent")
    if st.get("removed_small_lesions"):
        notes.append(f"{st['removed_small_lesions']} lesion(s) under the minimum volume removed")
    if subject.input_set != FULL_SET:
        notes.append(f"from {subject.input_set}")
    if report.flags:
        notes.append("to review: " + "; ".join(report.flags))
    split = ", ".join(f"{k} {v:.1f} s" for k, v in report.phases.items() if k != "regions" or placed)
    logger.info("%s: %d lesion(s) in %.1f s (%s)%s", files.subject_id, report.lesions, report.seconds, split,
                f"; {'; '.join(notes)}" if notes else "")
    return report


def extras_from_maps(files: SubjectFiles, prediction: Path, uncertainty: Path, extras: dict[str, Path],
                     places: list[dict] | None = None) -> list[Path]:
    """Write the extras (``mask``, ``table``) of a finished subject from its saved maps, without inference;
    the lesions' regions from ``places`` (what its run recorded: one numbering), else "unknown"."""
    from lacunes.io import read_volume

    probability, geometry = read_volume(prediction)
    written = []
    if "mask" in extras:
        written.append(write_volume((probability >= 0.5).astype(np.uint8), geometry, extras["mask"]))
    if "table" in extras:
        unc, _ = read_volume(uncertainty)
        rows = lesion_table(probability, unc, geometry.spacing, geometry.origin, direction=geometry.direction)
        known = {p["id"]: p for p in places or []}
        written.append(write_lesion_table([{**row, **known.get(row["id"], {})} for row in rows], extras["table"]))
    logger.info("%s: %s made from the saved maps (no inference)", files.subject_id, ", ".join(extras))
    return written


def settings_conflicts(records: dict, names: list[str], requested: dict) -> list[tuple[str, str]]:
    """The subjects recorded as done with other settings than ``requested``: (id, what differs)."""
    from lacunes.provenance import settings_difference

    out = []
    for name in names:
        record = records.get(name)
        if record is not None and record.status in ("done", "skipped") and record.settings:
            why = settings_difference(record.settings, requested)
            if why:
                out.append((name, why))
    return out


def _cohort_subject(predictor: Predictor, files, output: Path, record, requested: dict, overwrite: bool,
                    extras: Path, write_mask: bool, write_table: bool, resample: bool, modalities: str | None = None,
                    raw_link: dict | None = None, prepare: bool = False, place: bool = True):
    """One subject of :func:`run_cohort`: skipped while its record matches its maps and the settings (extras
    asked for only now made from the saved maps), else predicted with its sidecars. Returns its report
    and its new record. ``raw_link``: the raw BIDS dataset the folder's description links to so far
    (``{"root": Path}``), updated when this subject's lies elsewhere."""
    from lacunes.provenance import (
        settings_difference,
        spatial_reference,
        subject_provenance,
        write_dataset_description,
        write_sidecar,
    )
    from lacunes.report import SubjectRecord

    pred, unc = output / files.prediction_name, output / files.uncertainty_name
    wanted = extras_paths(files, extras, write_mask, write_table)
    expected = [pred, unc, *wanted.values()]
    why = None if overwrite else (record_mismatch(record, [pred, unc], output)
                                  or settings_difference(record.settings, requested))
    if not overwrite and why is not None and any(p.exists() for p in expected):
        logger.warning("%s: outputs in %s not known complete (%s): predicting again", files.subject_id, output, why)
    if not overwrite and why is None:
        missing = {k: p for k, p in wanted.items() if record_mismatch(record, [p], output)}
        if missing:
            record.outputs.update(fingerprints(extras_from_maps(files, pred, unc, missing, record.places), output))
        return SubjectReport(files.subject_id, expected, lesions=record.lesions, status="skipped", flags=record.flags,
                             extras_from_maps=bool(missing), volume_mm3=record.volume_mm3,
                             input_set=input_set_name(tuple(record.inputs)) if record.inputs else FULL_SET), record
    r = run_subject(predictor, files, pred, unc, extras, write_mask, write_table, resample, modalities=modalities,
                    prepare=prepare, place=place)
    used = {m: p for m, p in files.paths.items() if m in INPUT_SETS[r.input_set]}
    reference, raw = spatial_reference(used[next(m for m in MODALITIES if m in used)], files.bids)
    provenance = {**subject_provenance(predictor, used, r.seconds), "SpatialReference": reference,
                  "InputHeaders": r.headers, "Preparation": r.preparation, "Regions": r.regions, "QCFlags": r.flags}
    if raw is not None and raw_link is not None and raw_link.get("root") != raw:
        write_dataset_description(output, predictor, raw)  # DatasetLinks: where SpatialReference points
        raw_link["root"] = raw
    write_sidecar(pred, provenance, "lacune probability map (0.5 = the operating point)")
    write_sidecar(unc, provenance, "uncertainty map (1 = the model and its operating point disagree)")
    inputs = {m: str(p.resolve()) for m, p in used.items()}
    record = SubjectRecord(r.subject_id, "done", inputs, record_key(pred, output), r.lesions, r.volume_mm3,
                           r.seconds, outputs=fingerprints(r.outputs, output), settings=requested,
                           uncertainty=record_key(unc, output), rejected_candidates=r.rejected_candidates,
                           flags=r.flags, input_headers=r.headers, preparation=r.preparation, regions=r.regions,
                           places=r.places)
    return r, record


#: The lock a run holds on its output folder, named by its settings' digest (:func:`settings_lock`).
LOCK_PREFIX = ".lacunes-run-"


@contextmanager
def settings_lock(folder: Path, settings: dict) -> Iterator[None]:
    """Hold ``folder`` for a run with ``settings`` for as long as it runs: a shared lock on
    ``.lacunes-run-<digest>.lock``, so that runs with the same settings (shards) write side by side, while
    a run with other settings is refused at its start, naming them, instead of replacing maps in the
    middle of another run (whose settings were checked only when it started). Locks left by a killed run
    are free and removed. Where the system has no ``fcntl`` (Windows), nothing is locked.

    Raises:
        ValueError: another run with other settings holds the folder.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    text = json.dumps(settings, sort_keys=True, default=str)
    own = folder / f"{LOCK_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:16]}.lock"
    fd = os.open(own, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_size == 0:
            os.write(fd, text.encode())
        for other in folder.glob(f"{LOCK_PREFIX}*.lock"):
            if other == own:
                continue
            try:
                ofd = os.open(other, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(ofd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = other.read_text(errors="replace")[:300]
                raise ValueError(f"another run is writing into {folder} with other settings ({held}); wait for it "
                                 "to finish, or give another --output") from None
            else:  # a killed run's lock
                other.unlink(missing_ok=True)
            finally:
                os.close(ofd)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the last of its settings' runs removes it
            own.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        os.close(fd)


def run_cohort(predictor: Predictor, items: list, output: Path, *, overwrite: bool = False,
               extras_dir: Path | None = None, write_mask: bool = False, write_table: bool = False,
               resample: bool = False, qc: bool = False, progress: bool = True,
               shard: tuple[int, int] = (1, 1), modalities: str | None = None,
               prepare: bool = False, place: bool = True) -> list[SubjectReport]:
    """Predict every subject of ``items`` (:class:`lacunes.layouts.CohortEntry`: each turned into its files
    as it runs, :func:`lacunes.layouts.cohort_items`) into ``output``; with ``shard=(i, n)``, only every
    n-th subject from the i-th (1-based), so that n jobs share a cohort.

    A subject is skipped (unless ``overwrite``) only while its maps match their completion record in
    ``run.json`` and were made with the same settings (:mod:`lacunes.provenance`); a folder holding maps of
    other settings is refused before anything runs, and so is a run with other settings while another
    holds the folder (:func:`settings_lock`). Extras asked for only now are made from the saved
    maps. Every map gets a JSON sidecar, the folder a ``dataset_description.json``. A failing subject is logged and
    reported, and the others go on. The output folder is checked writable first (and a killed run's
    temporary files removed); ``output/run.json`` records every subject (merged over reruns) after each
    one; with ``qc``, each subject's picture and ``output/report.html`` (:mod:`lacunes.report`).
    Extras (``write_mask``, ``write_table``) go to ``extras_dir`` (default ``output/extras``).
    ``modalities``: the set of contrasts every subject is read with (by default each subject's own,
    :func:`input_set_of`). ``prepare``: each subject registered and brain-extracted where needed
    (:mod:`lacunes.preparation`), recorded in the settings (a folder made otherwise is refused).
    """

    from lacunes.provenance import run_settings
    from lacunes.writing import prepare_output_folder

    shard_i, shard_n = shard
    if not 1 <= shard_i <= shard_n:
        raise ValueError(f"shard i/n needs 1 <= i <= n, got {shard_i}/{shard_n}")
    items = list(items)[shard_i - 1::shard_n]
    output = Path(output)
    extras = Path(extras_dir) if extras_dir else output / "extras"
    created = not output.exists()
    prepare_output_folder(output)
    requested = {**run_settings(predictor), "modalities": modalities or "as found",
                 "preparation": PREPARATION if prepare else "none"}
    try:
        with settings_lock(output, requested):
            return _run_locked(predictor, items, output, requested, overwrite, extras, write_mask, write_table,
                               resample, modalities, qc, progress, prepare, place)
    except BaseException:
        if created and output.is_dir() and not any(output.iterdir()):  # nothing written: leave no empty folder
            output.rmdir()
        raise


def _run_locked(predictor, items, output, requested, overwrite, extras, write_mask, write_table, resample,
                modalities, qc, progress, prepare=False, place=True) -> list[SubjectReport]:
    """The cohort loop of :func:`run_cohort`, with the output folder held for its settings."""
    from tqdm import tqdm

    from lacunes.provenance import write_dataset_description
    from lacunes.report import SubjectRecord, load_records, picture_for, update_records, write_report

    records = load_records(output)
    conflicts = [] if overwrite else settings_conflicts(records, [entry.subject_id for entry in items], requested)
    if conflicts:
        raise ValueError(
            f"{output} holds the maps of {len(conflicts)} subject(s) made with other settings ({conflicts[0][0]}: "
            f"{conflicts[0][1]}): use --overwrite to replace them, or another --output")
    write_dataset_description(output, predictor)
    raw_link: dict = {}
    reports: list[SubjectReport] = []
    for entry in tqdm(items, desc="subjects", unit="subject", disable=not progress):
        try:
            report, record = _cohort_subject(predictor, entry.files(), output, records.get(entry.subject_id), requested,
                                             overwrite, extras, write_mask, write_table, resample, modalities,
                                             raw_link, prepare, place)
            reports.append(report)
            drawn = bool(record.picture) and (output / record.picture).is_file()
            if qc and (report.status == "done" or not drawn):
                try:
                    picture_for(output, record)
                except Exception as exc:  # the maps are written: a picture that cannot be drawn fails nothing
                    logger.warning("%s: its picture could not be drawn: %s", entry.subject_id,
                                   str(exc) or type(exc).__name__)
        except Exception as exc:  # one bad subject must not stop the cohort
            reason = str(exc) or type(exc).__name__  # never an empty reason
            logger.error("%s failed: %s", entry.subject_id, reason)
            reports.append(SubjectReport(entry.subject_id, status="failed", error=reason))
            record = SubjectRecord(entry.subject_id, "failed", error=reason)
        records = update_records(output, {record.subject_id: record})
    if qc:
        write_report(output, records)
    return reports
