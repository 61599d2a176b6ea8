"""Finding subjects: the VALDO flat layout, BIDS, the grand-challenge socket layout, explicit files.

VALDO flat layout (the challenge's): ``sub-XXX_space-T1_desc-masked_T1.nii.gz`` with T2 and
FLAIR found by replacing the ``T1.nii.gz`` suffix, labels ``sub-XXX_space-T1_desc-Rater{1,2}_Lacunes``.
Outputs are named from the input up to ``desc-masked_``: ``sub-XXX_space-T1_prediction.nii.gz``.

BIDS (``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_<entity>-<label>…]_T1w.nii.gz`` with the
``_T2w`` and ``_FLAIR`` files of the same entities, or the only ones of that subject and session):
outputs form a BIDS-derivatives tree, ``<sub>/[<ses>/]anat/<entities>_space-T1w_label-lacune_probseg.nii.gz``
and ``…_label-lacune_desc-uncertainty_probseg.nii.gz``; the subject id is the entities less those describing
the source image (``sub-01_ses-2``; ``desc-brain`` and ``space-…`` dropped).

A subject may have fewer contrasts (T1+FLAIR, T1+T2; T2+FLAIR as explicit files or sockets,
:data:`lacunes.options.INPUT_SETS`): the layouts then list only the files it has, except the container's
VALDO layout (:data:`VALDO`), which requires all three.

Explicit files (``--t1 --t2 --flair``, any set): outputs ``<id>_space-T1_prediction.nii.gz`` and
``<id>_space-T1_uncertaintymap.nii.gz``, named as the VALDO layout's.

Grand-challenge layout: ``/input/inputs.json`` lists the sockets and each image lies alone in
``/input/images/<slug>/``. Input slugs: :data:`GC_INPUT_SLUGS`; outputs go to
``/output/images/<slug>/<name>.mha`` with the slugs in :data:`GC_OUTPUT_SLUGS`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lacunes.errors import LacunesInputError, MissingModalityError
from lacunes.io import MODALITIES
from lacunes.options import input_set_name

logger = logging.getLogger(__name__)

T1_SUFFIXES = ("T1.nii.gz", "T1.nii", "T1.mha")
VALDO_T1 = re.compile(r"^(?P<sid>sub-[^_]+)_space-.*_desc-masked_T1\.(nii\.gz|nii|mha)$")
GC_INPUT_SLUGS = {"T1": "t1-brain-mri", "T2": "t2-brain-mri", "FLAIR": "flair-brain-mri"}
GC_OUTPUT_SLUGS = {"prediction": "lacune-probability-map", "uncertainty": "lacune-uncertainty-map"}
GC_IMAGE_SUFFIXES = (".mha", ".tif", ".tiff", ".nii.gz", ".nii")


@dataclass(frozen=True)
class SubjectFiles:
    """Where one subject's inputs are, and the prefix of its output names."""

    subject_id: str
    paths: dict[str, Path]
    output_prefix: str  # may hold folders (BIDS: "sub-01/anat/sub-01_space-T1w_label-lacune_")
    bids: bool = False

    @property
    def prediction_name(self) -> str:
        return f"{self.output_prefix}probseg.nii.gz" if self.bids else f"{self.output_prefix}prediction.nii.gz"

    @property
    def uncertainty_name(self) -> str:
        return (f"{self.output_prefix}desc-uncertainty_probseg.nii.gz" if self.bids
                else f"{self.output_prefix}uncertaintymap.nii.gz")

    def files(self) -> SubjectFiles:
        """Itself: explicit files are their own cohort entry (:class:`CohortEntry`)."""
        return self

    def label_paths(self) -> dict[str, Path]:
        """Rater label files next to a VALDO-layout T1 that exist (``Rater1``, ``Rater2``)."""
        t1 = self.paths["T1"]
        if "desc-masked_" not in t1.name or "T1." not in t1.name:
            return {}
        base = t1.name.split("desc-masked_")[0]
        ext = t1.name[t1.name.index("T1.") + 2:]
        out = {}
        for rater in ("Rater1", "Rater2"):
            p = t1.with_name(f"{base}desc-{rater}_Lacunes{ext}")
            if p.is_file():
                out[rater] = p
        return out


class CohortEntry(Protocol):
    """One subject as a layout finds it: its id at once, its files (checked) when it runs, so that a
    subject missing a contrast fails alone. :class:`SubjectFiles`, :class:`ValdoT1` and :class:`BidsT1`."""

    @property
    def subject_id(self) -> str: ...

    def files(self) -> SubjectFiles: ...


@dataclass(frozen=True)
class ValdoT1:
    """One VALDO-layout T1 file of a cohort; its T2 and FLAIR are found when it runs (:meth:`files`)."""

    t1: Path
    complete: bool = True  # all three contrasts required (the challenge's contract), else any set with the T1

    @property
    def subject_id(self) -> str:
        match = VALDO_T1.match(self.t1.name)
        return match["sid"] if match else self.t1.name

    def files(self) -> SubjectFiles:
        return valdo_subject(self.t1, self.complete)


def _some_set(sid: str, paths: dict[str, Path], found: str) -> None:
    """Refuse contrasts that form no set a model takes (:data:`lacunes.options.INPUT_SETS`), naming what was found."""
    try:
        input_set_name(paths)
    except ValueError as exc:
        raise MissingModalityError(f"{sid}: {exc} (found: {found})") from None


def refuse_dangling(sid: str, path: Path) -> None:
    """A contrast's name that is a link to nothing is an error naming it and where it points: read as
    absent, the subject would run as a smaller set of contrasts (T1+FLAIR) and end "done"."""
    if path.is_symlink() and not path.exists():
        raise MissingModalityError(f"{sid}: {path} is a link to {os.readlink(path)}, which does not exist")


def valdo_subject(t1: Path, complete: bool = True) -> SubjectFiles:
    """Build a subject from its T1 path in the VALDO layout (T2/FLAIR by suffix replacement); with
    ``complete`` False, a missing T2 or FLAIR leaves a smaller set of contrasts (T1+FLAIR, T1+T2)."""
    t1 = Path(t1)
    match = VALDO_T1.match(t1.name)
    if not match:
        raise LacunesInputError(f"{t1.name} does not follow sub-XXX_space-..._desc-masked_T1.nii.gz")
    suffix = next(s for s in T1_SUFFIXES if t1.name.endswith(s))
    stem = t1.name[: -len(suffix)]
    paths = {"T1": t1}
    for m in MODALITIES[1:]:
        paths[m] = t1.with_name(stem + suffix.replace("T1", m, 1))
        refuse_dangling(match["sid"], paths[m])
    missing = [m for m, p in paths.items() if not p.is_file()]
    found = ", ".join(sorted(p.name for p in t1.parent.glob(f"{match['sid']}_*")))
    if missing and complete:
        raise MissingModalityError(f"no {', '.join(missing)} for {match['sid']} in {t1.parent} (found: {found})")
    paths = {m: p for m, p in paths.items() if m not in missing}
    _some_set(match["sid"], paths, found)
    prefix = t1.name.split("desc-masked_")[0]
    return SubjectFiles(match["sid"], paths, prefix)


#: A file that looks like a T1 scan (a ``…T1`` image) without following the VALDO names.
LOOKS_LIKE_T1 = re.compile(r"t1\.(nii\.gz|nii|mha)$", re.IGNORECASE)


def near_miss(name: str) -> str | None:
    """Why a file that looks like a T1 scan is not taken as one (None when it is not such a file or
    follows the layout): what a user most likely meant, in a few words."""
    if VALDO_T1.match(name) or not LOOKS_LIKE_T1.search(name):
        return None
    if re.match(VALDO_T1.pattern, name, re.IGNORECASE):
        return "the names are case-sensitive (sub-, space-, desc-masked_T1)"
    desc = re.search(r"_desc-([^_]+)_", name)
    if desc and desc.group(1) != "masked":
        return f"desc-{desc.group(1)} where desc-masked (a skull-stripped scan) is expected"
    if not name.startswith("sub-"):
        return "the name does not start with sub-"
    return "no _space-<space>_desc-masked_ before T1"


def find_valdo_t1s(folder: Path) -> list[Path]:
    """All VALDO-layout T1 files directly in ``folder``, sorted; a subject id twice (e.g. as ``.nii.gz``
    and ``.mha``) is an error naming both files. Files that look like T1 scans but do not follow the
    names are listed in a warning, each with what is wrong with its name (:func:`near_miss`)."""
    folder = Path(folder)
    if folder.is_file():
        raise LacunesInputError(f"{folder} is a file, not an input folder: give a subject's files with --t1, --t2 "
                                "and --flair")
    if not folder.is_dir():
        raise LacunesInputError(f"input folder {folder} does not exist")
    t1s = sorted(p for p in folder.iterdir() if VALDO_T1.match(p.name))
    missed = sorted((p.name, why) for p in folder.iterdir() if (why := near_miss(p.name)))
    if missed:
        logger.warning("%d file(s) in %s look like T1 scans but are not taken (expected sub-XXX_space-<space>_"
                       "desc-masked_T1.nii.gz): %s", len(missed), folder,
                       "; ".join(f"{name}: {why}" for name, why in missed[:10]) + (" …" if len(missed) > 10 else ""))
    by_id: dict[str, list[str]] = {}
    for p in t1s:
        by_id.setdefault(VALDO_T1.match(p.name)["sid"], []).append(p.name)
    twice = {sid: names for sid, names in by_id.items() if len(names) > 1}
    if twice:
        raise LacunesInputError("the same subject appears more than once in " + str(folder) + ": "
                                + "; ".join(f"{sid}: {', '.join(names)}" for sid, names in twice.items())
                                + " (keep one file per subject)")
    return t1s


def require_valdo_t1s(folder: Path) -> list[Path]:
    """:func:`find_valdo_t1s`, where finding none is an error that lists what the folder holds."""
    t1s = find_valdo_t1s(folder)
    if not t1s:
        listing = ", ".join(sorted(p.name for p in Path(folder).iterdir())[:10])
        raise LacunesInputError(
            f"no sub-*_space-*_desc-masked_T1.nii.gz in {folder} (found: {listing or 'nothing'}); a BIDS folder "
            "needs sub-*/anat/sub-*_T1w.nii.gz (with _T2w and _FLAIR), and other files can be given one subject at "
            "a time with --t1, --t2 and --flair"
        )
    return t1s


def find_valdo_subjects(folder: Path) -> list[SubjectFiles]:
    """Every subject of a VALDO-layout folder; a subject with a missing modality raises."""
    return [valdo_subject(p) for p in require_valdo_t1s(folder)]


#: What a subject id may be: it names output files, so a name, never a path.
SUBJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def explicit_subject(*files: Path | dict, subject_id: str | None = None) -> SubjectFiles:
    """A subject given as one explicit file per modality (:data:`MODALITIES` order: T1, T2, FLAIR), or as
    one ``{modality: file}`` dict of a smaller set (T1+FLAIR, ...); the id defaults to the first file's
    name (the T1's) up to its first '_'. The id must be a plain name (letters, digits, ``.``, ``_``, ``-``;
    no path). Outputs lie on the first contrast's grid: ``<id>_space-T1_`` (``space-T2`` without a T1)."""
    if len(files) == 1 and isinstance(files[0], dict):
        unknown = sorted(set(files[0]) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modality {', '.join(unknown)} (the modalities: {', '.join(MODALITIES)})")
        paths = {m: Path(files[0][m]) for m in MODALITIES if files[0].get(m)}
    elif len(files) != len(MODALITIES):
        raise ValueError(f"one file per modality ({', '.join(MODALITIES)}), got {len(files)}")
    else:
        paths = {m: Path(f) for m, f in zip(MODALITIES, files)}
    _some_set(subject_id or "the subject", paths, ", ".join(f"{m}: {p.name}" for m, p in paths.items()))
    first = next(iter(paths))
    sid = subject_id or re.split(r"[_.]", paths[first].name)[0]
    if not SUBJECT_ID.match(sid) or sid in (".", ".."):
        raise LacunesInputError(f"subject id {sid!r} must be a name (letters, digits, '.', '_', '-'), not a path")
    return SubjectFiles(sid, paths, f"{sid}_space-{first}_")


# ---------------------------------------------------------------------------------------------- BIDS

#: A BIDS T1w file: its entities (``sub-01_ses-2_acq-x``) before the suffix.
BIDS_T1W = re.compile(r"^(?P<entities>sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*)_T1w\.(?P<ext>nii\.gz|nii)$")
BIDS_SUFFIXES = {"T1": "T1w", "T2": "T2w", "FLAIR": "FLAIR"}


@dataclass(frozen=True)
class BidsT1:
    """One BIDS T1w file of a cohort; its T2w and FLAIR are found when it runs (:meth:`files`), so that a
    subject missing one fails alone."""

    t1: Path
    entities: str

    @property
    def subject_id(self) -> str:
        """The entities that name the subject's outputs: the source's, less those that describe the source
        image itself (``desc-brain``, ``space-…``), which the outputs' own ``space-T1w`` replaces
        (``sub-401_desc-brain_T1w`` → ``sub-401``)."""
        return "_".join(e for e in self.entities.split("_") if not e.startswith(("desc-", "space-")))

    def files(self) -> SubjectFiles:
        anat = self.t1.parent
        ext = BIDS_T1W.match(self.t1.name)["ext"]
        paths = {"T1": self.t1}
        session = "_".join(e for e in self.entities.split("_") if e.startswith(("sub-", "ses-")))
        for m in MODALITIES[1:]:
            exact = anat / f"{self.entities}_{BIDS_SUFFIXES[m]}.{ext}"
            refuse_dangling(self.entities, exact)
            if exact.is_file():
                paths[m] = exact
                continue
            others = sorted(p for p in anat.glob(f"{session}_*{BIDS_SUFFIXES[m]}.nii*")
                            if re.search(rf"_{BIDS_SUFFIXES[m]}\.nii(\.gz)?$", p.name))
            if not others:
                continue  # a smaller set of contrasts (T1+FLAIR, T1+T2)
            if len(others) != 1:
                raise MissingModalityError(
                    f"{self.entities}: no {exact.name} in {anat}, and {len(others)} other {BIDS_SUFFIXES[m]} files of "
                    f"{session} ({', '.join(p.name for p in others)}): which one is meant is not clear")
            paths[m] = others[0]
        _some_set(self.entities, paths, ", ".join(sorted(p.name for p in anat.iterdir())))
        folder = anat.relative_to(self.root) if self.root else Path(*self.t1.parts[-3:-1])
        return SubjectFiles(self.subject_id, paths, f"{folder.as_posix()}/{self.subject_id}_space-T1w_label-lacune_",
                            bids=True)

    @property
    def root(self) -> Path | None:
        """The dataset's root: the folder above ``sub-<label>/``."""
        for parent in self.t1.parents:
            if parent.name.startswith("sub-"):
                return parent.parent
        return None


def find_bids_t1s(root: Path) -> list[BidsT1]:
    """Every ``…_T1w.nii[.gz]`` under ``root/sub-*/anat/`` and ``root/sub-*/ses-*/anat/``, sorted; the same
    entities twice (``sub-01_T1w.nii`` beside ``sub-01_T1w.nii.gz``) is an error naming both files."""
    root = Path(root)
    found = []
    for anat in sorted([*root.glob("sub-*/anat"), *root.glob("sub-*/ses-*/anat")]):
        for p in sorted(anat.iterdir()):
            match = BIDS_T1W.match(p.name)
            if match and p.is_file():
                found.append(BidsT1(p, match["entities"]))
    by_id: dict[str, list[Path]] = {}
    for t1 in found:
        by_id.setdefault(t1.subject_id, []).append(t1.t1)
    twice = {sid: paths for sid, paths in by_id.items() if len(paths) > 1}
    if twice:
        raise LacunesInputError("the same subject appears more than once in " + str(root) + ": " + "; ".join(
            f"{sid}: {', '.join(str(p) for p in paths)}" for sid, paths in twice.items()) + " (keep one of each)")
    return found


def is_bids_layout(folder: Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (any(folder.glob("sub-*/anat")) or any(folder.glob("sub-*/ses-*/anat")))


@dataclass(frozen=True)
class Layout:
    """A folder layout: how to tell one (``detect``), and its subjects (``find``, in order)."""

    name: str
    looks_like: str  # what its files look like, for the message when a folder matches no layout
    detect: Callable[[Path], bool]
    find: Callable[[Path], list[CohortEntry]]


def _find_bids(folder: Path) -> list[BidsT1]:
    t1s = find_bids_t1s(folder)
    if not t1s:
        raise LacunesInputError(f"{folder} is a BIDS folder (sub-*/anat/) without any sub-*_T1w.nii.gz")
    return t1s


VALDO = Layout("VALDO", "sub-*_space-*_desc-masked_T1.nii.gz with its T2 and FLAIR in the folder",
               lambda folder: bool(find_valdo_t1s(folder)),  # (warns of near misses, refuses an id twice)
               lambda folder: [ValdoT1(p) for p in sorted(folder.iterdir()) if VALDO_T1.match(p.name)])
#: The VALDO layout as the command line reads it: a subject without its T2 or FLAIR is a smaller set of
#: contrasts (the model decides whether it takes it, :meth:`lacunes.release.Release.check_input_set`).
VALDO_ANY_SET = Layout(VALDO.name, "sub-*_space-*_desc-masked_T1.nii.gz with its T2 and/or FLAIR in the folder",
                       VALDO.detect, lambda folder: [ValdoT1(e.t1, complete=False) for e in VALDO.find(folder)])
BIDS = Layout("BIDS", "a BIDS folder: sub-*/[ses-*/]anat/sub-*_T1w.nii.gz with _T2w and/or _FLAIR", is_bids_layout,
              _find_bids)
#: The folder layouts :func:`find_subjects` tries, in this order (a new layout is one more entry).
FOLDER_LAYOUTS = (VALDO_ANY_SET, BIDS)


#: What the CLI offers for files that follow no layout (the end of :func:`find_subjects`' error).
EXPLICIT_FILES_HINT = "other files can be given one subject at a time with --t1, --t2 and --flair"


def find_subjects(folder: Path, layouts: tuple[Layout, ...] = FOLDER_LAYOUTS,
                  otherwise: str | None = EXPLICIT_FILES_HINT) -> list[CohortEntry]:
    """The subjects of a folder in the first of ``layouts`` it follows; one that follows none is an error
    naming what each layout expects, what the folder holds and ``otherwise``."""
    folder = Path(folder)
    if folder.is_file():
        raise LacunesInputError(f"{folder} is a file, not an input folder: give a subject's files with --t1, --t2 "
                                "and --flair")
    if not folder.is_dir():
        raise LacunesInputError(f"input folder {folder} does not exist")
    for layout in layouts:
        if layout.detect(folder):
            return layout.find(folder)
    listing = ", ".join(sorted(p.name for p in folder.iterdir())[:10])
    raise LacunesInputError(
        f"no subject in {folder} (found: {listing or 'nothing'}): expected "
        + "; or ".join(layout.looks_like for layout in layouts) + (f"; {otherwise}" if otherwise else ""))


def find_subject_files(folder: Path) -> list[SubjectFiles]:
    """The files of every subject of a folder (:func:`find_subjects`; labels from
    :meth:`SubjectFiles.label_paths`); a subject missing a contrast raises."""
    return [entry.files() for entry in find_subjects(folder)]


def cohort_items(input_dir: Path | None = None, files: tuple[Path, ...] | dict[str, Path] | None = None,
                 subject_id: str | None = None) -> list[CohortEntry]:
    """The subjects of a run, for :func:`lacunes.runner.run_cohort`: those of a folder in a known layout
    (:func:`find_subjects`), or one subject from explicit files (T1, T2 and FLAIR, or a ``{modality: file}``
    dict of a smaller set)."""
    if (input_dir is None) == (files is None):
        raise ValueError("give either an input folder (VALDO or BIDS layout) or the T1, T2 and FLAIR files")
    if files is not None:
        return [explicit_subject(*((files,) if isinstance(files, dict) else files), subject_id=subject_id)]
    return find_subjects(Path(input_dir))


def is_grand_challenge_layout(input_dir: Path) -> bool:
    return (Path(input_dir) / "inputs.json").is_file() or any(
        (Path(input_dir) / "images" / slug).is_dir() for slug in GC_INPUT_SLUGS.values())


def grand_challenge_subject(input_dir: Path, complete: bool = False) -> SubjectFiles:
    """The one case of a grand-challenge job: one image per socket folder ``images/<slug>/``, for the
    sockets ``inputs.json`` lists (any set of contrasts, :data:`lacunes.options.INPUT_SETS`; without
    ``inputs.json``, the socket folders present, or all three with ``complete``)."""
    input_dir = Path(input_dir)
    slugs = dict(GC_INPUT_SLUGS)
    inputs_json = input_dir / "inputs.json"
    if inputs_json.is_file():
        try:
            sockets = json.loads(inputs_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LacunesInputError(f"{inputs_json} is not valid JSON: {exc}") from exc
        if not isinstance(sockets, list):
            raise LacunesInputError(f"{inputs_json} must hold a list of sockets, found {type(sockets).__name__}: "
                                    f"{json.dumps(sockets)[:80]}")
        listed = {s["interface"].get("slug") for s in sockets
                  if isinstance(s, dict) and isinstance(s.get("interface"), dict)}
        absent = [m for m, slug in slugs.items() if slug not in listed]
        try:
            input_set_name(m for m in slugs if m not in absent)
        except ValueError as exc:
            raise MissingModalityError(
                f"{inputs_json} lists no socket {', '.join(slugs[m] for m in absent)} (found: "
                f"{', '.join(sorted(map(str, listed)))}): {exc}") from None
        slugs = {m: slug for m, slug in slugs.items() if m not in absent}
    elif not complete:
        slugs = {m: slug for m, slug in slugs.items() if (input_dir / "images" / slug).is_dir()}
    paths = {}
    for modality, slug in slugs.items():
        folder = input_dir / "images" / slug
        files = sorted(p for p in folder.glob("*") if p.name.endswith(GC_IMAGE_SUFFIXES)) if folder.is_dir() else []
        if len(files) != 1:
            raise MissingModalityError(
                f"expected exactly one image in {folder} for {modality}, found {len(files)}"
                + (f": {', '.join(p.name for p in files)}" if files else "")
            )
        paths[modality] = files[0]
    _some_set("the case", paths, ", ".join(slugs.values()))
    return SubjectFiles(next(iter(paths.values())).name.split(".")[0], paths, "")


#: The grand-challenge job layout: one case, one image per input socket.
GRAND_CHALLENGE = Layout("grand-challenge", "inputs.json and one image per socket in images/<slug>/",
                         is_grand_challenge_layout, lambda folder: [grand_challenge_subject(folder)])
#: What the container reads: a grand-challenge job, else a VALDO-layout folder.
CONTAINER_LAYOUTS = (GRAND_CHALLENGE, VALDO)
