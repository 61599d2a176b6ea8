"""Quality control: a picture of every subject's result and a cohort ``report.html``.

Per subject, :func:`subject_figure` draws the detected lesions (highest probability first, up to
``max_lesions``): for each, T1, T2 and FLAIR crops of :data:`CROP_MM` mm through the lesion's centre in
the three planes (axial, coronal, sagittal, as stored: axes x, y, z of the array), the lesion's
outline (probability ≥ 0.5, the challenge's cut) in colour, its volume and maximum probability.
A subject without lesions gets one row of mid-slices. :func:`write_report` writes ``report.html``:
one table row per subject (lesions, total volume, run time, status or failure) and its picture; the
links are relative, so the folder opens in any browser without a server and can be moved whole.

``lacunes predict --qc`` makes both as it goes; ``lacunes report OUTPUT`` makes them again for a
finished run from its ``run.json`` (which records every subject's inputs, outputs and status).
"""

from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lacunes.io import MODALITIES, Geometry, atomic_output

logger = logging.getLogger(__name__)

#: Side of each crop, mm.
CROP_MM = 40.0
#: Lesions drawn per subject, highest maximum probability first.
MAX_LESIONS = 6
#: Figure geometry (inches at :data:`DPI`): a column per modality and plane, a row per lesion.
PANEL_IN = 1.2
ROW_IN = 1.45
HEADER_IN = 0.45
DPI = 100
PLANES = ("axial", "coronal", "sagittal")
RUN_RECORD = "run.json"
QC_DIR = "qc"


@dataclass
class SubjectRecord:
    """One subject of a run, as ``run.json`` keeps it."""

    subject_id: str
    status: str  # done | skipped | failed
    inputs: dict[str, str] = field(default_factory=dict)
    prediction: str = ""
    lesions: int = 0
    volume_mm3: float = 0.0
    seconds: float = 0.0
    error: str = ""
    picture: str = ""  # relative to the output folder
    # the completion record: every output written for the subject (relative to the output folder where
    # inside it) -> {"bytes": ..., "sha256": ...}; a rerun keeps a subject only while they all match
    outputs: dict[str, dict] = field(default_factory=dict)
    # what decided the maps (lacunes.provenance.run_settings): a rerun with other settings never skips
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> SubjectRecord:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def figure_size_px(rows: int) -> tuple[int, int]:
    """Width and height (pixels) of a subject picture with ``rows`` lesion rows."""
    return (round(3 * len(PLANES) * PANEL_IN * DPI), round((HEADER_IN + rows * ROW_IN) * DPI))


def lesions_of(probability: np.ndarray, spacing: tuple[float, ...]) -> list[dict]:
    """Detected lesions (the lesion table's rows, :func:`lacunes.instances.lesion_table`): centre voxel,
    volume, maximum probability, label; highest probability first (then larger)."""
    from lacunes.instances import lesion_table

    out = [{"label": row["id"], "voxels": row["voxels"], "volume_mm3": row["volume_mm3"],
            "max_probability": row["max_probability"],
            "centre": tuple(int(round(row[f"centre_{a}_mm"] / s)) for a, s in zip("xyz", spacing))}
           for row in lesion_table(probability, None, spacing)]
    return sorted(out, key=lambda d: (-d["max_probability"], -d["voxels"]))


def _crop(volume: np.ndarray, centre: tuple[int, int, int], plane: int, half: tuple[int, int, int]) -> np.ndarray:
    """A 2D crop through ``centre`` with the ``plane`` axis fixed (0 = x, 1 = y, 2 = z), padded with 0."""
    index = [slice(c - h, c + h + 1) for c, h in zip(centre, half)]
    index[plane] = centre[plane]
    pad = [(max(h - c, 0), max(c + h + 1 - n, 0)) for c, h, n in zip(centre, half, volume.shape)]
    padded = np.pad(volume, pad)
    index = [slice(s.start + p[0], s.stop + p[0]) if isinstance(s, slice) else s + p[0] for s, p in zip(index, pad)]
    return padded[tuple(index)]


def subject_figure(image: np.ndarray, probability: np.ndarray, geometry: Geometry, path: Path,
                   title: str = "", max_lesions: int = MAX_LESIONS) -> list[dict]:
    """Write the subject's picture (PNG) and return the lesions drawn (see the module docstring).

    Args:
        image: ``3×X×Y×Z`` T1, T2, FLAIR as read.
        probability: the written probability map (X×Y×Z).
        geometry: the T1's grid (spacing for the crops' physical size and the panels' aspect).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spacing = np.asarray(geometry.spacing, float)
    lesions = lesions_of(probability, geometry.spacing)
    shown = lesions[:max_lesions]
    shape = probability.shape
    rows = [(les["centre"], les) for les in shown] or [(tuple(s // 2 for s in shape), None)]
    half = tuple(max(2, int(round(CROP_MM / 2 / s))) for s in spacing)
    width, height = figure_size_px(len(rows))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    total = sum(les["volume_mm3"] for les in lesions)
    head = f"{title}: {len(lesions)} lesion(s), {total:.0f} mm³" + (
        f" (the {len(shown)} most probable shown)" if len(lesions) > len(shown) else "")
    fig.text(0.01, 1 - 0.5 * HEADER_IN / (height / DPI), head, va="center", fontsize=10, weight="bold")
    limits = [np.percentile(c[c != 0], [1, 99]) if (c != 0).any() else (0.0, 1.0) for c in image]
    panel_w = PANEL_IN * DPI / width
    row_h = ROW_IN * DPI / height
    for r, (centre, les) in enumerate(rows):
        top = 1 - (HEADER_IN * DPI) / height - r * row_h
        for m, name in enumerate(MODALITIES):
            for p, plane in enumerate(PLANES):
                fixed = 2 - p  # axial: z fixed; coronal: y fixed; sagittal: x fixed
                col = m * len(PLANES) + p
                ax = fig.add_axes((col * panel_w + 0.004, top - row_h + 0.16 * row_h, panel_w - 0.008, 0.72 * row_h))
                crop = _crop(image[m], centre, fixed, half).T  # rows = second free axis
                free = [a for a in range(3) if a != fixed]
                aspect = spacing[free[1]] / spacing[free[0]]
                ax.imshow(crop, cmap="gray", vmin=limits[m][0], vmax=limits[m][1], origin="lower",
                          aspect=aspect, interpolation="nearest")
                if les is not None:
                    outline = _crop((probability >= 0.5).astype(np.float32), centre, fixed, half).T
                    if outline.any():
                        ax.contour(outline, levels=[0.5], colors=["#ff3030"], linewidths=0.8)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{name} {plane}", fontsize=7)
        label = ("no lesion detected (mid-slices)" if les is None else
                 f"lesion {les['label']}: {les['volume_mm3']:.0f} mm³, max p {les['max_probability']:.2f}, "
                 f"voxel {les['centre']}")
        fig.text(0.01, top - row_h + 0.06 * row_h, label, fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return lesions


# ---------------------------------------------------------------------------------------------- run record


def load_records(output: Path) -> dict[str, SubjectRecord]:
    path = Path(output) / RUN_RECORD
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {d["subject_id"]: SubjectRecord.from_dict(d) for d in data["subjects"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a run record written by lacunes predict: {exc}") from None


def save_records(output: Path, records: dict[str, SubjectRecord]) -> Path:
    path = Path(output) / RUN_RECORD
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"written": time.strftime("%Y-%m-%d %H:%M:%S"),
                                   "subjects": [asdict(r) for r in records.values()]}, indent=1))
    return path


def update_records(output: Path, changed: dict[str, SubjectRecord]) -> dict[str, SubjectRecord]:
    """Merge ``changed`` into ``output/run.json`` under a lock (``.run.json.lock``) and return all the
    records: concurrent runs into one folder (``--shard 1/2`` and ``2/2``) each add their subjects to
    what the file holds when they write, instead of overwriting each other's."""
    import fcntl

    output = Path(output)
    with open(output / f".{RUN_RECORD}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            records = load_records(output)
            records.update(changed)
            save_records(output, records)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return records


def picture_for(output: Path, record: SubjectRecord) -> SubjectRecord:
    """Draw a done subject's picture from its recorded inputs and prediction (``lacunes report``)."""
    from lacunes.io import read_subject, read_volume

    subject = read_subject(record.subject_id, {m: Path(p) for m, p in record.inputs.items()}, resample=True)
    probability, _ = read_volume(Path(output) / record.prediction)
    rel = f"{QC_DIR}/{record.subject_id}.png"
    lesions = subject_figure(subject.image, probability, subject.geometry, Path(output) / rel, record.subject_id)
    record.picture, record.lesions = rel, len(lesions)
    record.volume_mm3 = float(sum(les["volume_mm3"] for les in lesions))
    return record


# ---------------------------------------------------------------------------------------------- HTML


def write_report(output: Path, records: dict[str, SubjectRecord]) -> Path:
    """``OUTPUT/report.html``: every subject with its lesions, volume, time, status and picture."""
    output = Path(output)
    done = [r for r in records.values() if r.status != "failed"]
    failed = [r for r in records.values() if r.status == "failed"]
    rows = []
    for r in sorted(records.values(), key=lambda r: r.subject_id):
        status = html.escape(r.status) + (f": {html.escape(r.error)}" if r.error else "")
        link = (f'<a href="#{html.escape(r.subject_id)}">{html.escape(r.subject_id)}</a>' if r.picture
                else html.escape(r.subject_id))
        rows.append(f"<tr class=\"{html.escape(r.status)}\"><td>{link}</td><td>{status}</td>"
                    f"<td>{r.lesions if r.status != 'failed' else ''}</td>"
                    f"<td>{f'{r.volume_mm3:.0f}' if r.status != 'failed' else ''}</td>"
                    f"<td>{f'{r.seconds:.1f}' if r.seconds else ''}</td></tr>")
    pictures = [f'<section id="{html.escape(r.subject_id)}"><h2>{html.escape(r.subject_id)}</h2>'
                f'<img src="{html.escape(r.picture)}" alt="lesions of {html.escape(r.subject_id)}"></section>'
                for r in sorted(records.values(), key=lambda r: r.subject_id) if r.picture]
    text = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Lacunes: quality control</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }}
td:first-child, td:nth-child(2), th {{ text-align: left; }}
tr.failed td {{ background: #fdd; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>Lacunes: quality control</h1>
<p>{len(records)} subject(s): {len(done)} with maps, {len(failed)} failed; {sum(r.lesions for r in done)} lesion(s)
detected in all. Lesions are the connected components of the probability map at 0.5 (the model's operating
point); outlines in red on crops of {CROP_MM:g} mm through each lesion's centre.</p>
<table>
<thead><tr><th>subject</th><th>status</th><th>lesions</th><th>volume (mm³)</th><th>run time (s)</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
{chr(10).join(pictures)}
</body>
</html>
"""
    path = output / "report.html"
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def report_folder(output: Path, progress: bool = True) -> Path:
    """Pictures (those missing, or all) and ``report.html`` for a finished run (``lacunes report``)."""
    from tqdm import tqdm

    output = Path(output)
    records = load_records(output)
    if not records:
        raise FileNotFoundError(f"no {RUN_RECORD} in {output}: run 'lacunes predict --output {output}' first")
    for r in tqdm([r for r in records.values() if r.status != "failed"], desc="pictures", unit="subject",
                  disable=not progress):
        try:
            picture_for(output, r)
        except Exception as exc:  # a moved input must not stop the report
            logger.error("%s: no picture: %s", r.subject_id, exc)
            r.picture = ""
    records = update_records(output, records)  # under the lock, like a running lacunes predict
    return write_report(output, records)
