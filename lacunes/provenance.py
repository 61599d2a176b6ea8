"""What made each output: the settings that decide a map (compared before a rerun skips a subject), a
JSON sidecar next to every map (model, weights hash, the model's data statement, setting, operating
point, device, version, date, input files with hashes, seconds) and the output folder's BIDS-derivatives
``dataset_description.json``.

The *settings* are what changes a map: the weights, the inference setting (not its progress bar), the
operating point with the second stage's cut, the backend and the precision. A subject recorded with other
settings is never skipped as done (:func:`settings_difference` says what differs)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lacunes import __version__
from lacunes.options import input_set_name
from lacunes.writing import atomic_output

DESCRIPTION = "dataset_description.json"
BIDS_VERSION = "1.9.0"
# settings that do not change a map
_NOT_DECIDING = ("progress", "device", "memory_gb", "sw_batch_size")


def run_settings(predictor) -> dict[str, Any]:
    """The settings that decide the maps a predictor writes (JSON-ready)."""
    setting = {k: v for k, v in predictor.settings.to_dict().items() if k not in _NOT_DECIDING}
    setting["backend"], setting["precision"] = str(predictor.backend), str(predictor.precision)
    rescorer = predictor.release.rescorer
    return {
        "model_sha256": predictor.weights_sha256,
        "setting": setting,
        "operating_point": predictor.release.operating_point.to_dict(),
        "second_stage_min_score": None if rescorer is None else rescorer.min_score,
        **({"calibration_by_set": {name: {"operating_point": op.to_dict(),
                                          "second_stage_min_score": None if r is None else r.min_score}
                                   for name, (op, r) in sorted(predictor.release.by_set.items())}}
           if predictor.release.by_set else {}),
    }


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_difference(recorded: dict | None, requested: dict) -> str | None:
    """What differs between the settings a subject was recorded with and the requested ones (None when
    they are the same); ``recorded`` None or empty: the record predates settings being recorded."""
    if not recorded:
        return "the recorded run did not record its settings"
    old, new = _flat(recorded), _flat(requested)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if not changed:
        return None

    def show(v):
        return f"{v[:12]}…" if isinstance(v, str) and len(v) > 20 else repr(v)

    return ", ".join(f"{k} {show(old.get(k))} → {show(new.get(k))}" for k in changed[:4]) + (
        f" and {len(changed) - 4} more" if len(changed) > 4 else "")


def subject_provenance(predictor, inputs: dict[str, Path], seconds: float) -> dict[str, Any]:
    """The sidecar of a subject's maps."""
    from lacunes.checkpoint import sha256_of

    return {
        "GeneratedBy": {"Name": "lacunes", "Version": __version__},
        "Model": str(predictor.release.path) if predictor.release.path else None,
        "ModelDataStatement": predictor.release.data_statement,
        "ModelCalibration": predictor.release.calibration_statement,
        "Settings": run_settings(predictor),
        "Device": str(predictor.device),
        "Date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "Inputs": {m: {"path": str(Path(p).resolve()), "sha256": sha256_of(p)} for m, p in inputs.items()},
        "InputSet": input_set_name(inputs),
        "Seconds": round(float(seconds), 2),
    }


def sidecar_path(image: Path) -> Path:
    """``x.nii.gz`` → ``x.json`` (the BIDS sidecar of an image)."""
    name = Path(image).name
    for ext in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if name.endswith(ext):
            return Path(image).with_name(name[: -len(ext)] + ".json")
    return Path(image).with_name(name + ".json")


def write_sidecar(image: Path, provenance: dict[str, Any], description: str) -> Path:
    path = sidecar_path(image)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"Description": description, **provenance}, indent=1))
    return path


#: What a BIDS validator is told to leave aside in an output folder: the run's own records, the cohort table,
#: the quality-control pages and the extras (masks and lesion tables outside the BIDS derivatives' rules).
BIDS_IGNORED = ("run.json", "lacunes.tsv", "report.html", "qc", "extras")
#: The name under which a BIDS output's SpatialReference points into the raw dataset (DatasetLinks).
RAW_LINK = "raw"


def write_dataset_description(output: Path, predictor, raw: Path | None = None) -> Path:
    """The BIDS-derivatives description of an output folder (rewritten by every run into it). ``raw``: the
    BIDS dataset the subjects come from, linked as :data:`RAW_LINK` (a path relative to the output folder)
    for the maps' ``SpatialReference``; such a folder also gets a ``.bidsignore`` (:data:`BIDS_IGNORED`)."""
    import os

    path = Path(output) / DESCRIPTION
    content = {
        "Name": "lacunes: lacune probability and uncertainty maps",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "lacunes", "Version": __version__,
                         "Description": f"model {predictor.release.path}: {predictor.release.data_statement}"}],
    }
    if raw is not None:
        content["DatasetLinks"] = {RAW_LINK: Path(os.path.relpath(Path(raw).resolve(),
                                                                   Path(output).resolve())).as_posix()}
    elif path.is_file():  # a rerun keeps the link its earlier subjects' sidecars point through
        try:
            links = json.loads(path.read_text()).get("DatasetLinks")
        except (ValueError, AttributeError):
            links = None
        if links:
            content["DatasetLinks"] = links
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1))
    if "DatasetLinks" in content:  # a BIDS derivatives tree: what the validator is to leave aside
        with atomic_output(Path(output) / ".bidsignore") as tmp:
            tmp.write_text("".join(f"{line}\n" for line in BIDS_IGNORED))
    return path


def spatial_reference(reference: Path, bids: bool) -> tuple[str, Path | None]:
    """A map's ``SpatialReference`` (the image whose grid it lies on) and, for a BIDS subject, the raw
    dataset's root: ``bids:raw:sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz`` there, the file's absolute path
    otherwise."""
    reference = Path(reference).resolve()
    root = next((p.parent for p in reference.parents if p.name.startswith("sub-")), None) if bids else None
    if root is None:
        return str(reference), None
    return f"bids:{RAW_LINK}:{reference.relative_to(root).as_posix()}", root


def record_key(path: str | os.PathLike, output: Path) -> str:
    """How a written file is keyed in its subject's completion record (``run.json``'s ``outputs``): its path
    relative to the output folder where inside it, else absolute."""
    path, root = Path(path).resolve(), Path(output).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def unlike_record(path: str | os.PathLike, kept: dict | None) -> str:
    """Why a written file is not the one its completion record ``kept`` (``{"bytes", "sha256"}``, None where
    not recorded) describes: ``"missing"``, ``"unrecorded"`` or ``"changed"`` (size or sha256), empty when it is."""
    from lacunes.checkpoint import sha256_of

    if not Path(path).is_file():
        return "missing"
    if kept is None:
        return "unrecorded"
    if Path(path).stat().st_size != kept.get("bytes") or sha256_of(path) != kept.get("sha256"):
        return "changed"
    return ""
