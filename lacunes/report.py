"""Quality control: a picture of every subject's result and a cohort ``report.html``.

Per subject, :func:`subject_figure` draws the detected lesions, numbered by size as in the lesion table
(largest first, up to ``max_lesions``): for each, T1, T2 and FLAIR crops of :data:`CROP_MM` mm through
the lesion's centre in the three planes of the array (axial, coronal, sagittal as stored), the lesion's
outline (probability ≥ 0.5, the challenge's cut) in red, a whole-brain FLAIR slice with the crop marked,
orientation letters and scale bars on every panel, and a caption with its volume, mean and highest
probability, mean uncertainty and centre in RAS mm. A subject without lesions gets a whole-brain
overview. :func:`write_report` writes ``report.html``: the run's model, data statement, setting and
operating point; a line per subject (lesions, volume, candidates the second stage rejected, run time,
status or failure); per subject its totals, links to its maps, sidecar and lesion table, its lesion
table, its rejected candidates with their scores, and its picture. The links are relative, so the
folder opens in any browser without a server and can be moved whole.

``lacunes predict --qc`` makes both as it goes; ``lacunes report OUTPUT`` makes them again for a
finished run from its ``run.json`` (which records every subject's inputs, outputs and status).
"""

from __future__ import annotations

import html
import json
import logging
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from lacunes.geometry import Geometry
from lacunes.headers import axis_letters
from lacunes.io import MODALITIES
from lacunes.options import input_set_name
from lacunes.preparation import summary as preparation_summary
from lacunes.regions import summary as regions_summary
from lacunes.writing import atomic_output

logger = logging.getLogger(__name__)

#: Side of each crop, mm.
CROP_MM = 40.0
#: Lesions drawn per subject, largest first (they are numbered by size, as in the lesion table).
MAX_LESIONS = 6
#: Figure geometry (inches at :data:`DPI`): a column per modality and plane plus a whole-brain view, a row
#: per lesion; captions at :data:`CAPTION_PT` points (13 px at 100 dpi).
PANEL_IN = 1.3
ROW_IN = 1.75
HEADER_IN = 0.5
DPI = 100
CAPTION_PT = 9.5
PLANES = ("axial", "coronal", "sagittal")
#: Scale bars: on the crops and on the whole-brain views, mm.
CROP_BAR_MM = 10.0
BRAIN_BAR_MM = 50.0
RUN_RECORD = "run.json"
#: The cohort table: one row per subject of the folder, rewritten with run.json (:func:`write_cohort_table`).
COHORT_TABLE = "lacunes.tsv"
COHORT_COLUMNS = ("subject", "session", "input_set", "status", "lesions", "volume_mm3", "qc_flags",
                  "model_sha256", "error")
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
    uncertainty: str = ""  # the uncertainty map, as ``prediction``
    # the candidates the second stage rejected: centre (voxel of the model's grid and scanner mm), volume,
    # the network's highest probability, the second stage's score
    rejected_candidates: list[dict] = field(default_factory=list)
    lesion_rows: list[dict] = field(default_factory=list)  # the lesion table (lacunes.instances), as drawn
    flags: list[str] = field(default_factory=list)  # what to review (lacunes.runner.qc_flags)
    input_headers: dict[str, dict] = field(default_factory=dict)  # per contrast, as read (lacunes.headers)
    preparation: dict[str, dict] = field(default_factory=dict)  # registration, brain extraction (lacunes.preparation)
    preparation_picture: str = ""  # what the preparation did, drawn (preparation_figure), relative as picture
    regions_picture: str = ""  # the regions the lesions were named by, drawn (regions_figure), relative as picture
    regions: dict = field(default_factory=dict)  # the registration onto the template (lacunes.regions)
    places: list[dict] = field(default_factory=list)  # per lesion id: region, side, MNI centre (lacunes.regions)

    @classmethod
    def from_dict(cls, d: dict) -> SubjectRecord:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def figure_size_px(rows: int) -> tuple[int, int]:
    """Width and height (pixels) of a subject picture with ``rows`` lesion rows."""
    return (round(FIGURE_COLUMNS * PANEL_IN * DPI), round((HEADER_IN + rows * ROW_IN) * DPI))


#: Panels per row: each modality in each plane, then the whole-brain view.
FIGURE_COLUMNS = len(MODALITIES) * len(PLANES) + 1


def ras_mm(row: dict) -> tuple[float, float, float]:
    """A lesion table row's centre in scanner RAS mm (:data:`lacunes.instances.CENTRE_COLUMNS`)."""
    from lacunes.instances import CENTRE_COLUMNS

    return tuple(float(row[c]) for c in CENTRE_COLUMNS)


def ras_text(centre: tuple[float, float, float]) -> str:
    """``R 12.3, A -40.1, S 20.0`` (mm)."""
    return ", ".join(f"{letter} {value:.1f}" for letter, value in zip("RAS", centre))


def lesions_of(probability: np.ndarray, geometry: Geometry, uncertainty: np.ndarray | None = None) -> list[dict]:
    """Detected lesions: the lesion table's rows (:func:`lacunes.instances.lesion_table`, numbered by size,
    scanner mm), each with its centre voxel (``centre``) and RAS centre (``centre_ras_mm``)."""
    from lacunes.instances import RAS_FROM_LPS, lesion_table

    rows = lesion_table(probability, uncertainty, geometry.spacing, geometry.origin, direction=geometry.direction)
    d = np.asarray(geometry.direction, float).reshape(3, 3)
    for row in rows:
        offset = np.array(ras_mm(row)) * RAS_FROM_LPS - np.asarray(geometry.origin)  # the LPS point, from the origin
        index = np.linalg.solve(d, offset) / np.asarray(geometry.spacing, float)
        row["centre"] = tuple(int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(index, probability.shape))
        row["centre_ras_mm"] = ras_mm(row)
    return rows


def lesion_caption(les: dict) -> str:
    """The caption of a lesion's row, shared with the report's table: number, volume, probability, uncertainty, place."""
    unc = les.get("mean_uncertainty", float("nan"))
    return (f"lesion {les['id']}: {les['volume_mm3']:.0f} mm³, probability {les['mean_probability']:.2f} mean "
            f"({les['max_probability']:.2f} max)" + ("" if np.isnan(unc) else f", uncertainty {unc:.2f} mean")
            + f", centre {ras_text(les['centre_ras_mm'])} mm (RAS)")


def _crop(volume: np.ndarray, centre: tuple[int, int, int], plane: int, half: tuple[int, int, int]) -> np.ndarray:
    """A 2D crop through ``centre`` with the ``plane`` axis fixed (0 = x, 1 = y, 2 = z), padded with 0."""
    index = [slice(c - h, c + h + 1) for c, h in zip(centre, half)]
    index[plane] = centre[plane]
    pad = [(max(h - c, 0), max(c + h + 1 - n, 0)) for c, h, n in zip(centre, half, volume.shape)]
    padded = np.pad(volume, pad)
    index = [slice(s.start + p[0], s.stop + p[0]) if isinstance(s, slice) else s + p[0] for s, p in zip(index, pad)]
    return padded[tuple(index)]


def _slice(volume: np.ndarray, centre: tuple[int, int, int], plane: int) -> np.ndarray:
    """The whole 2D slice through ``centre`` with the ``plane`` axis fixed."""
    index: list = [slice(None)] * 3
    index[plane] = centre[plane]
    return volume[tuple(index)]


def _panel(ax, picture: np.ndarray, limits, spacing: np.ndarray, fixed: int, letters, bar_mm: float) -> None:
    """One image panel: the slice (rows = the second free axis, upwards), orientation letters at its four
    edges and a scale bar of ``bar_mm`` at its lower left."""
    free = [a for a in range(3) if a != fixed]
    ax.imshow(picture.T, cmap="gray", vmin=limits[0], vmax=limits[1], origin="lower",
              aspect=spacing[free[1]] / spacing[free[0]], interpolation="nearest")
    (left, right), (bottom, top) = letters[free[0]], letters[free[1]]
    style = {"color": "#ffd700", "fontsize": 7.5, "weight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    n_x, n_y = picture.shape
    while bar_mm > 1 and bar_mm / spacing[free[0]] > 0.5 * n_x:  # a bar of at most half the panel
        bar_mm /= 5 if str(bar_mm).startswith("5") else 2
    length = bar_mm / spacing[free[0]]
    x0, y0 = 0.06 * n_x, 0.08 * n_y
    ax.plot([x0, x0 + length], [y0, y0], color="white", linewidth=2, solid_capstyle="butt")
    ax.text(x0, y0 + 0.03 * n_y, f"{bar_mm:g} mm", color="white", fontsize=6.5, va="bottom")
    ax.set_xlim(-0.5, n_x - 0.5)
    ax.set_ylim(-0.5, n_y - 0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def subject_figure(image: np.ndarray, probability: np.ndarray, geometry: Geometry, path: Path,
                   title: str = "", max_lesions: int = MAX_LESIONS, uncertainty: np.ndarray | None = None,
                   modalities: tuple[str, ...] = MODALITIES) -> list[dict]:
    """Write the subject's picture (PNG) and return its lesions (:func:`lesions_of`, all of them).

    A row per lesion, largest first (numbered as in the lesion table): T1, T2 and FLAIR crops of
    :data:`CROP_MM` mm through its centre in the three planes of the array (axial, coronal, sagittal as
    stored) with its outline (probability ≥ 0.5) in red, then a whole-brain axial FLAIR slice with the crop
    marked; orientation letters on every panel, scale bars, and a caption (:func:`lesion_caption`). A
    subject without lesions gets a whole-brain overview: FLAIR in the three planes, T1 and T2 axial. A
    contrast the subject came without is titled "absent" (its panels are blank), and the whole-brain
    slices are of the first of FLAIR, T2, T1 it has.

    Args:
        image: ``C×X×Y×Z`` (T1, T2, FLAIR) as read.
        probability: the written probability map (X×Y×Z).
        geometry: the T1's grid (spacing, orientation letters, scanner coordinates).
        uncertainty: the written uncertainty map, for the captions' mean uncertainty.
        modalities: the contrasts the subject came with (:data:`lacunes.options.INPUT_SETS`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lesions = lesions_of(probability, geometry, uncertainty)
    shown = lesions[:max_lesions]
    width, height = figure_size_px(max(len(shown), 1 if lesions else 2))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    total = sum(les["volume_mm3"] for les in lesions)
    head = f"{title}: {len(lesions)} lesion(s), {total:.0f} mm³ in all" + (
        f" (the {len(shown)} largest shown)" if len(lesions) > len(shown) else "")
    # parse_math off: a '$' in a subject id or file name is text, not mathtext
    fig.text(0.01, 1 - 0.5 * HEADER_IN / (height / DPI), head, va="center", fontsize=11, weight="bold",
             parse_math=False)
    sheet = _Sheet(fig, width, height, image, geometry, modalities)
    if not shown:
        sheet.overview(probability.shape)
    outline = (probability >= 0.5).astype(np.float32)
    for r, les in enumerate(shown):
        sheet.lesion_row(r, les, outline)
    _save_png(fig, path)
    return lesions


def _save_png(fig, path: Path) -> Path:
    """A figure written as PNG under ``path`` atomically (a kill leaves no truncated picture) and closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


class _Sheet:
    """The panels of one subject's picture (:func:`subject_figure`): where each row and column goes, and
    what each row shows."""

    def __init__(self, fig, width: int, height: int, image: np.ndarray, geometry: Geometry,
                 modalities: tuple[str, ...]) -> None:
        self.fig, self.height, self.image, self.modalities = fig, height, image, modalities
        self.spacing = np.asarray(geometry.spacing, float)
        self.letters = axis_letters(geometry.direction)
        self.limits = [np.percentile(c[c != 0], [1, 99]) if (c != 0).any() else (0.0, 1.0) for c in image]
        self.overview_name = next(m for m in ("FLAIR", "T2", "T1") if m in modalities)
        self.flair = MODALITIES.index(self.overview_name)  # the whole-brain slices' contrast
        self.panel_w, self.row_h = PANEL_IN * DPI / width, ROW_IN * DPI / height
        self.half = tuple(max(2, int(round(CROP_MM / 2 / s))) for s in self.spacing)

    def name_of(self, m: int) -> str:
        return MODALITIES[m] if MODALITIES[m] in self.modalities else f"{MODALITIES[m]} (absent)"

    def axes(self, r: int, col: float, span: float = 1.0, rows: float = 1.0):
        top = 1 - (HEADER_IN * DPI) / self.height - r * self.row_h
        return self.fig.add_axes((col * self.panel_w + 0.003, top - rows * self.row_h + 0.14 * self.row_h,
                                  span * self.panel_w - 0.006, rows * self.row_h - 0.28 * self.row_h))

    def caption(self, r: int, text: str) -> None:
        top = 1 - (HEADER_IN * DPI) / self.height - r * self.row_h
        self.fig.text(0.01, top - self.row_h + 0.05 * self.row_h, text, fontsize=CAPTION_PT, parse_math=False)

    def overview(self, shape: tuple[int, ...]) -> None:
        """A subject without lesions: FLAIR in the three planes, the other contrasts axial."""
        centre = tuple(s // 2 for s in shape)
        flair = self.flair
        views = [(flair, 2), (flair, 1), (flair, 0)] + [(m, 2) for m in range(len(MODALITIES)) if m != flair]
        for col, (m, fixed) in enumerate(views):
            ax = self.axes(0, col * FIGURE_COLUMNS / len(views), FIGURE_COLUMNS / len(views), rows=2)
            _panel(ax, _slice(self.image[m], centre, fixed), self.limits[m], self.spacing, fixed, self.letters,
                   BRAIN_BAR_MM)
            ax.set_title(f"{self.name_of(m)} {PLANES[2 - fixed]}", fontsize=8)
        self.caption(1, "no lesion detected: whole-brain slices through the middle of the volume")

    def lesion_row(self, r: int, les: dict, outline_volume: np.ndarray) -> None:
        """Row ``r``: each contrast's crops through the lesion in the three planes with its outline, then
        where it lies on a whole-brain axial slice, and its caption."""
        import matplotlib.pyplot as plt

        centre, half, shape = les["centre"], self.half, outline_volume.shape
        for m in range(len(MODALITIES)):
            for p, plane in enumerate(PLANES):
                fixed = 2 - p  # axial: z fixed; coronal: y fixed; sagittal: x fixed
                ax = self.axes(r, m * len(PLANES) + p)
                _panel(ax, _crop(self.image[m], centre, fixed, half), self.limits[m], self.spacing, fixed,
                       self.letters, CROP_BAR_MM)
                outline = _crop(outline_volume, centre, fixed, half).T
                if outline.any():
                    ax.contour(outline, levels=[0.5], colors=["#ff3030"], linewidths=0.9)
                if r == 0:
                    ax.set_title(f"{self.name_of(m)} {plane}", fontsize=8)
        ax = self.axes(r, FIGURE_COLUMNS - 1)
        _panel(ax, _slice(self.image[self.flair], centre, 2), self.limits[self.flair], self.spacing, 2, self.letters,
               BRAIN_BAR_MM)
        ax.add_patch(plt.Rectangle((centre[0] - half[0], centre[1] - half[1]), 2 * half[0] + 1, 2 * half[1] + 1,
                                   fill=False, edgecolor="#ff3030", linewidth=1.0))
        ax.text(centre[0], min(centre[1] + half[1] + 2, shape[1] - 1), str(les["id"]), color="#ff3030", fontsize=8,
                ha="center", va="bottom", weight="bold", clip_on=True)
        ax.set_xlim(-0.5, shape[0] - 0.5)  # the whole slice, whatever the marker's extent
        ax.set_ylim(-0.5, shape[1] - 0.5)
        if r == 0:
            ax.set_title(f"where ({self.overview_name} axial)", fontsize=8)
        self.caption(r, lesion_caption(les))


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
    """``run.json`` and the cohort table made from it (:func:`write_cohort_table`)."""
    path = Path(output) / RUN_RECORD
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"written": time.strftime("%Y-%m-%d %H:%M:%S"),
                                   "subjects": [asdict(r) for r in records.values()]}, indent=1))
    write_cohort_table(output, records)
    return path


def cohort_row(r: SubjectRecord) -> dict[str, str]:
    """A subject's row of the cohort table: the BIDS subject and session apart (``sub-01_ses-2``), its set
    of contrasts, status, lesion count and total volume (empty where it failed), QC flags, the weights'
    hash and the error."""
    import re

    match = re.match(r"^(sub-[^_]+)(?:_(ses-[^_]+))?", r.subject_id)
    subject, session = (match.group(1), match.group(2) or "") if match else (r.subject_id, "")
    ok = r.status != "failed"
    return {"subject": subject if session else r.subject_id, "session": session,
            "input_set": input_set_name(tuple(r.inputs)) if r.inputs else "", "status": r.status,
            "lesions": str(r.lesions) if ok else "", "volume_mm3": f"{r.volume_mm3:.1f}" if ok else "",
            "qc_flags": "; ".join(r.flags), "model_sha256": str(r.settings.get("model_sha256", "")),
            "error": r.error}


def write_cohort_table(output: Path, records: dict[str, SubjectRecord]) -> Path:
    """``OUTPUT/lacunes.tsv``: one row per subject of the folder (this run's and the earlier runs'), sorted
    by subject, tab-separated (:data:`COHORT_COLUMNS`), for a statistician to open as it is."""
    import csv

    path = Path(output) / COHORT_TABLE
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COHORT_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for r in sorted(records.values(), key=lambda r: r.subject_id):
            writer.writerow({k: v.replace("\t", " ").replace("\n", " ") for k, v in cohort_row(r).items()})
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


def _edges(picture: np.ndarray) -> np.ndarray:
    """Where a 2D slice's intensity changes most: gradient magnitude (Sobel of a lightly smoothed slice) in
    its top 12 % over the non-zero voxels."""
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(picture.astype(np.float32), 1.0)
    magnitude = np.hypot(ndi.sobel(smooth, 0), ndi.sobel(smooth, 1))
    inside = picture != 0
    if not inside.any():
        return np.zeros(picture.shape, bool)
    return (magnitude >= np.percentile(magnitude[inside], 88)) & inside


def preparation_figure(image: np.ndarray, geometry: Geometry, path: Path, title: str,
                       modalities: tuple[str, ...] = MODALITIES, brain_mask: np.ndarray | None = None,
                       registered: tuple[str, ...] = ()) -> Path:
    """The preparation's picture (PNG): the reference contrast through the brain's centre in the three
    planes of the array, one row per registered contrast with that contrast's edges drawn over it in red
    (:func:`_edges`: they must follow the reference's anatomy), and the brain mask's outline in yellow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = MODALITIES.index(modalities[0])
    rows = list(registered) or [None]
    ref = image[reference]
    body = ref != 0
    centre = (tuple(int(v) for v in np.round(np.argwhere(body).mean(0))) if body.any()
              else tuple(n // 2 for n in ref.shape))
    limits = np.percentile(ref[body], [1, 99]) if body.any() else (0.0, 1.0)
    spacing, letters = np.asarray(geometry.spacing, float), axis_letters(geometry.direction)
    fig = plt.figure(figsize=(3 * PANEL_IN * 2.0, len(rows) * PANEL_IN * 1.8 + 0.5), dpi=DPI)
    fig.suptitle(textwrap.fill(title, 110), fontsize=7.5)
    for r, modality in enumerate(rows):
        for p, fixed in enumerate((2, 1, 0)):
            ax = fig.add_subplot(len(rows), 3, 3 * r + p + 1)
            _panel(ax, _slice(ref, centre, fixed), limits, spacing, fixed, letters, 50.0)
            if modality is not None:
                edges = _edges(_slice(image[MODALITIES.index(modality)], centre, fixed))
                if edges.any():
                    ax.contour(edges.T.astype(float), levels=[0.5], colors="red", linewidths=0.4)
            if brain_mask is not None and brain_mask.any():
                ax.contour(_slice(brain_mask, centre, fixed).T.astype(float), levels=[0.5], colors="yellow",
                           linewidths=0.6)
            ax.set_title(f"{modalities[0]}" + (f" + {modality} edges" if modality else "")
                         + (" + brain mask" if brain_mask is not None else ""), fontsize=6.5)
    return _save_png(fig, path)


def regions_figure(image: np.ndarray, regions_map: np.ndarray, probability: np.ndarray, geometry: Geometry,
                   path: Path, title: str, lesions: list[dict], modalities: tuple[str, ...] = MODALITIES) -> Path:
    """The regions' picture (PNG): for each lesion (the :data:`MAX_LESIONS` largest; ``lesions`` as
    :func:`lesions_of` gives them), the reference contrast in the three planes through its centre with the
    coarse regions it was named by (:func:`lacunes.regions.region_map`, on the subject's grid) in colour, its
    outline in red and its row's region in the title: whether the template landed where the anatomy is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from lacunes.regions import REGIONS

    reference = image[MODALITIES.index(modalities[0])]
    body = reference != 0
    limits = np.percentile(reference[body], [1, 99]) if body.any() else (0.0, 1.0)
    spacing, letters = np.asarray(geometry.spacing, float), axis_letters(geometry.direction)
    colours = plt.get_cmap("tab10").colors
    cmap = ListedColormap([(0, 0, 0, 0)] + [(*colours[i % 10], 0.35) for i in range(len(REGIONS))])
    shown = lesions[:MAX_LESIONS] or [{"id": 0, "centre": tuple(int(v) for v in np.round(np.argwhere(body).mean(0)))
                                       if body.any() else tuple(n // 2 for n in reference.shape)}]
    fig = plt.figure(figsize=(3 * PANEL_IN * 2.0, len(shown) * PANEL_IN * 1.8 + 1.2), dpi=DPI)
    fig.suptitle(textwrap.fill(title, 110), fontsize=7.5)
    for r, les in enumerate(shown):
        for p, fixed in enumerate((2, 1, 0)):
            ax = fig.add_subplot(len(shown), 3, 3 * r + p + 1)
            _panel(ax, _slice(reference, les["centre"], fixed), limits, spacing, fixed, letters, 50.0)
            free = [a for a in range(3) if a != fixed]
            ax.imshow(_slice(regions_map, les["centre"], fixed).T, cmap=cmap, vmin=0, vmax=len(REGIONS), origin="lower",
                      aspect=spacing[free[1]] / spacing[free[0]], interpolation="nearest")
            lesion = _slice(probability, les["centre"], fixed) >= 0.5
            if les["id"] and lesion.any():
                ax.contour(lesion.T.astype(float), levels=[0.5], colors="red", linewidths=0.6)
            if p == 0:
                named = les.get("region", "")
                ax.set_title(f"lesion {les['id']}: {named}" if les["id"] else "no lesion", fontsize=6.5, loc="left")
    present = sorted(int(v) for v in np.unique(regions_map) if v)
    fig.legend(handles=[Patch(color=colours[(v - 1) % 10], alpha=0.6, label=REGIONS[v - 1]) for v in present],
               loc="lower center", ncol=4, fontsize=6, frameon=False)
    return _save_png(fig, path)


def _unlike_its_record(output: Path, record: SubjectRecord, path: Path) -> str:
    """Why a file the run wrote cannot be trusted now (empty where it can): missing, not in the subject's
    completion record, or changed since (:func:`lacunes.provenance.unlike_record`)."""
    from lacunes.provenance import record_key, unlike_record

    why = unlike_record(path, record.outputs.get(record_key(path, output)))
    return {"": "", "missing": f"{path} is missing", "unrecorded": f"{path} is not in the run's record",
            "changed": f"{path} changed since the run"}[why]


def picture_for(output: Path, record: SubjectRecord) -> SubjectRecord:
    """Draw a done subject's picture from its recorded inputs and maps, and keep its lesion table in the
    record (``lacunes report``)."""
    from lacunes.io import read_subject, read_volume

    paths = {m: Path(p) for m, p in record.inputs.items()}
    mask = None
    if record.preparation:  # drawn as the network saw it: registered, and stripped with the mask it wrote
        from lacunes.preparation import prepared_again

        mask_file = record.preparation.get("brain_extraction", {}).get("mask_file")
        if mask_file:
            why = _unlike_its_record(Path(output), record, Path(mask_file))
            if why:  # drawn with what the brain extraction left out rather than through another mask
                note = f"brain mask {why}: the picture shows the scan unmasked"
                logger.warning("%s: %s", record.subject_id, note)
                record.flags = [*record.flags, note] if note not in record.flags else record.flags
            else:
                mask = read_volume(Path(mask_file))[0] > 0
        subject = prepared_again(record.subject_id, paths, tuple(record.inputs), record.preparation, mask)
    else:
        subject = read_subject(record.subject_id, paths, resample=True, modalities=tuple(record.inputs))
    probability, _ = read_volume(Path(output) / record.prediction)
    uncertainty = None
    if record.uncertainty and (Path(output) / record.uncertainty).is_file():
        uncertainty, _ = read_volume(Path(output) / record.uncertainty)
    if any(k.startswith("registration_") for k in record.preparation) or mask is not None:
        record.preparation_picture = f"{QC_DIR}/{record.subject_id}_preparation.png"
        registered = tuple(k.removeprefix("registration_") for k in record.preparation if k.startswith("registration_"))
        preparation_figure(subject.image, subject.geometry, Path(output) / record.preparation_picture,
                           f"{record.subject_id}: {preparation_summary(record.preparation)}", subject.modalities,
                           mask, registered)
    rel = f"{QC_DIR}/{record.subject_id}.png"
    lesions = subject_figure(subject.image, probability, subject.geometry, Path(output) / rel, record.subject_id,
                             uncertainty=uncertainty, modalities=subject.modalities)
    record.picture, record.lesions = rel, len(lesions)
    record.volume_mm3 = float(sum(les["volume_mm3"] for les in lesions))
    places = {p["id"]: p for p in record.places}  # recorded by the run: the same numbering (one lesion table)
    record.lesion_rows = [{**{k: (list(v) if isinstance(v, tuple) else v) for k, v in les.items()},
                           **places.get(les["id"], {})} for les in lesions]
    map_file = record.regions.get("map_file")
    if map_file and lesions:
        why = _unlike_its_record(Path(output), record, Path(map_file))
        if why:
            logger.warning("%s: region map %s: its picture is not drawn", record.subject_id, why)
        else:
            record.regions_picture = f"{QC_DIR}/{record.subject_id}_regions.png"
            regions_figure(subject.image, read_volume(Path(map_file))[0].astype(np.uint8), probability,
                           subject.geometry, Path(output) / record.regions_picture,
                           f"{record.subject_id}: the coarse regions the lesions were named by (template registered "
                           "onto the subject; lacunes.regions)", record.lesion_rows, subject.modalities)
    return record


# ---------------------------------------------------------------------------------------------- HTML


def _provenance(output: Path, records: list[SubjectRecord]) -> dict:
    """What made the run's maps: the first done subject's sidecar (:mod:`lacunes.provenance`) and settings."""
    from lacunes.provenance import sidecar_path

    for r in records:
        side = Path(output) / sidecar_path(Path(r.prediction)) if r.prediction else None
        if r.status != "failed" and side is not None and side.is_file():
            try:
                return {**json.loads(side.read_text()), "sidecar": str(side.relative_to(output))}
            except (ValueError, OSError):
                continue
    return {}


def _link(output: Path, rel: str, text: str) -> str:
    """A relative link to a file of the run (only when it is there)."""
    if not rel or not (Path(output) / rel).is_file():
        return ""
    return f'<a href="{html.escape(quote(rel))}">{html.escape(text)}</a>'


def _run_block(output: Path, records: list[SubjectRecord]) -> str:
    prov = _provenance(output, records)
    if not prov:
        return "<p>No sidecar found: the run's model and settings are not known to this report.</p>"
    settings = prov.get("Settings", {})
    setting, op = settings.get("setting", {}), settings.get("operating_point", {})
    cut = settings.get("second_stage_min_score")
    items = [
        ("model", f"{prov.get('Model')} (weights sha256 {str(settings.get('model_sha256', ''))[:12]}…)"),
        ("what it was trained on", prov.get("ModelDataStatement", "")),
        ("setting", f"TTA {setting.get('tta')}, overlap {setting.get('overlap')}, window "
                    f"{'×'.join(map(str, setting.get('roi_size', [])))}, backend {setting.get('backend')}, "
                    f"{setting.get('precision')}"),
        ("operating point", f"probability ≥ {op.get('threshold')}, lesions ≥ {op.get('min_volume_mm3')} mm³"
                            + (f", extent ≥ {op['extent_threshold']}" if op.get("extent_threshold") else "")
                            + (f", second stage score ≥ {cut}" if cut is not None else ", no second stage")),
        ("made by", f"lacunes {prov.get('GeneratedBy', {}).get('Version', '?')} on {prov.get('Device', '?')}, "
                    f"{prov.get('Date', '?')}; report written {time.strftime('%Y-%m-%d %H:%M')}"),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return (f'<table class="run">{rows}</table><p>Every map has a JSON sidecar with all of this and the inputs\' '
            f'hashes ({_link(output, prov["sidecar"], "the first one")}).</p>')


def _number(value, digits: int) -> str:
    """A table cell's number; empty for NaN (no uncertainty map)."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _lps_to_ras(centre) -> tuple[float, float, float]:
    from lacunes.instances import RAS_FROM_LPS

    return tuple(float(v) + 0.0 for v in np.asarray(centre, float) * RAS_FROM_LPS)


def _lesion_table(r: SubjectRecord) -> str:
    if not r.lesion_rows:
        return ""
    head = ("<tr><th>No.</th><th>volume (mm³)</th><th>centre R, A, S (scanner mm)</th><th>region (share of its "
            "voxels)</th><th>centre R, A, S (MNI mm)</th><th>mean p</th><th>max p</th><th>mean uncertainty</th></tr>")
    body = "".join(
        f"<tr><td>{row['id']}</td><td>{_number(row['volume_mm3'], 0)}</td>"
        f"<td>{ras_text(tuple(row['centre_ras_mm']))}</td><td>{html.escape(_region_text(row))}</td>"
        f"<td>{_mni_text(row)}</td><td>{_number(row['mean_probability'], 2)}</td>"
        f"<td>{_number(row['max_probability'], 2)}</td><td>{_number(row.get('mean_uncertainty'), 2)}</td></tr>"
        for row in r.lesion_rows)
    return f'<table class="lesions"><thead>{head}</thead><tbody>{body}</tbody></table>'


def _region_text(row: dict) -> str:
    """``right basal ganglia (0.92)``; ``unknown`` where the lesion could not be placed (lacunes.regions)."""
    region, share = row.get("region", "unknown"), row.get("region_share")
    if region == "unknown" or share is None or (isinstance(share, float) and np.isnan(share)):
        return "unknown"
    side = row.get("side", "")
    return f"{side + ' ' if side and side != 'midline' else ''}{region}{' (midline)' if side == 'midline' else ''} ({share:.2f})"


def _mni_text(row: dict) -> str:
    centre = [row.get(f"mni_{c}_mm") for c in "RAS"]
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in centre):
        return ""
    return ras_text(tuple(float(v) for v in centre))


def _candidate_centre(c: dict) -> str:
    """A rejected candidate's centre as RAS text (``centre_ras_mm``; a run recorded before it: its LPS
    ``centre_mm``), or empty where none was recorded."""
    if "centre_ras_mm" in c:
        return ras_text(tuple(c["centre_ras_mm"]))
    return ras_text(_lps_to_ras(c["centre_mm"])) if "centre_mm" in c else ""


def _rejected_table(r: SubjectRecord) -> str:
    if not r.rejected_candidates:
        return ""
    cut = r.settings.get("second_stage_min_score")
    body = "".join(
        f"<tr><td>{_candidate_centre(c)}</td>"
        f"<td>{_number(c['volume_mm3'], 0)}</td><td>{_number(c['max_probability'], 2)}</td>"
        f"<td>{_number(c['score'], 2)}</td></tr>"
        for c in r.rejected_candidates)
    return (f"<details><summary>{len(r.rejected_candidates)} candidate(s) the second stage rejected"
            + (f" (score under {cut:g})" if cut is not None else "") + "</summary>"
            '<table class="rejected"><thead><tr><th>centre R, A, S (mm)</th><th>volume (mm³)</th>'
            f"<th>network's max p</th><th>second-stage score</th></tr></thead><tbody>{body}</tbody></table></details>")


def _subject_section(output: Path, r: SubjectRecord) -> str:
    from lacunes.provenance import sidecar_path

    sid = html.escape(r.subject_id)
    largest = max((row["volume_mm3"] for row in r.lesion_rows), default=0.0)
    totals = (f"{r.lesions} lesion(s), {r.volume_mm3:.0f} mm³ in all"
              + (f" (largest {largest:.0f} mm³)" if r.lesions else "")
              + f"; the second stage rejected {len(r.rejected_candidates)} candidate(s)"
              + (f"; {r.seconds:.1f} s" if r.seconds else "")
              + (f"; from {input_set_name(r.inputs)}" if r.inputs else "")
              + (f"; {regions_summary(r.regions)}" if r.regions else "")
              + (f"; TO REVIEW: {'; '.join(r.flags)}" if r.flags else ""))
    table = next((k for k in r.outputs if k.endswith("lesions.csv")), "")
    links = [_link(output, r.prediction, "probability map"), _link(output, r.uncertainty, "uncertainty map"),
             _link(output, str(sidecar_path(Path(r.prediction))) if r.prediction else "", "sidecar (JSON)"),
             _link(output, table, "lesion table (CSV)"), _link(output, r.picture, "picture"),
             _link(output, r.preparation_picture, "preparation picture (registration, brain mask)"),
             _link(output, r.regions_picture, "regions picture")]
    return (f'<section id="{sid}"><h2>{sid}</h2><p class="totals">{html.escape(totals)}</p>'
            f'<p class="links">{" · ".join(x for x in links if x)}</p>{_lesion_table(r)}{_rejected_table(r)}'
            f'<img src="{html.escape(quote(r.picture))}" alt="lesions of {sid}">'
            + "".join(f'<img src="{html.escape(quote(rel))}" alt="{what} of {sid}">'
                      for rel, what in ((r.preparation_picture, "preparation"), (r.regions_picture, "regions"))
                      if rel and (output / rel).is_file()) + "</section>")


STYLE = """body { font-family: sans-serif; margin: 1.5em; font-size: 15px; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
td:first-child, th { text-align: left; }
table.run td, table.run th { text-align: left; }
table.lesions td:nth-child(4) { text-align: left; }
tr.failed td { background: #fdd; }
td.status { max-width: 36em; overflow-wrap: anywhere; text-align: left; }
img { max-width: 100%; margin-top: 0.5em; }
section { margin-top: 2em; border-top: 2px solid #ddd; }
p.totals { font-weight: bold; }"""


def write_report(output: Path, records: dict[str, SubjectRecord]) -> Path:
    """``OUTPUT/report.html``: what made the run, every subject's line of totals and status, and per subject
    its lesion table (numbered by size as in its picture, centres in RAS mm, probability and uncertainty),
    the candidates the second stage rejected with their scores, links to its maps, sidecar and lesion
    table, and its picture. Links are relative: the folder opens in any browser and can be moved whole."""
    output = Path(output)
    ordered = sorted(records.values(), key=lambda r: r.subject_id)
    done = [r for r in ordered if r.status != "failed"]
    failed = [r for r in ordered if r.status == "failed"]
    rows = []
    for r in ordered:
        status = html.escape(r.status) + (f": {html.escape(r.error)}" if r.error else "")
        link = (f'<a href="#{html.escape(quote(r.subject_id, safe=""))}">{html.escape(r.subject_id)}</a>' if r.picture
                else html.escape(r.subject_id))
        ok = r.status != "failed"
        # a long failure message wraps inside its cell (max-width) instead of widening the whole table
        rows.append(f"<tr class=\"{html.escape(r.status)}\"><td>{link}</td><td class=\"status\">{status}</td>"
                    f"<td>{r.lesions if ok else ''}</td><td>{f'{r.volume_mm3:.0f}' if ok else ''}</td>"
                    f"<td>{len(r.rejected_candidates) if ok else ''}</td>"
                    f"<td class=\"status\">{html.escape(preparation_summary(r.preparation))}</td>"
                    f"<td class=\"status\">{html.escape('; '.join(r.flags))}</td>"
                    f"<td>{f'{r.seconds:.1f}' if r.seconds else ''}</td></tr>")
    sections = [_subject_section(output, r) for r in done if r.picture]
    text = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Lacunes: quality control</title>
<style>
{STYLE}
</style>
</head>
<body>
<h1>Lacunes: quality control</h1>
{_run_block(output, done)}
<p>{len(records)} subject(s): {len(done)} with maps, {len(failed)} failed; {sum(r.lesions for r in done)} lesion(s)
detected in all. Lesions are the connected components of the probability map at 0.5 (the model's operating
point), numbered by size in each subject's table and picture; outlines in red on crops of {CROP_MM:g} mm through
each lesion's centre, orientation letters (R/L, A/P, S/I) on every panel; centres in scanner RAS mm.</p>
<table>
<thead><tr><th>subject</th><th>status</th><th>lesions</th><th>volume (mm³)</th><th>rejected by the second stage</th>
<th>prepared</th><th>to review</th><th>run time (s)</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
{chr(10).join(sections)}
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


#: How :func:`screenshot` starts Chromium: headless, no sandbox (it may run as root in a container), and
#: none of its background connections (a closed network refuses them, and they slow every start).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def find_chromium() -> str | None:
    """A Chromium (or Chrome) executable on the PATH (``LACUNES_CHROMIUM`` names another), or None."""
    import os
    import shutil

    given = os.environ.get("LACUNES_CHROMIUM")
    if given:
        return given
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 2200, timeout_s: float = 120.0) -> Path:
    """A headless-Chromium screenshot of ``page`` (``report.html``) as it renders in a browser.

    Raises:
        FileNotFoundError: no Chromium (``apt-get install chromium``, or ``LACUNES_CHROMIUM``).
        RuntimeError: Chromium ran but wrote no picture (its output quoted).
    """
    import subprocess
    import tempfile

    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on the PATH for the screenshot: install it (Debian: apt-get install "
                                "chromium) or name one in LACUNES_CHROMIUM")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile, atomic_output(png) as tmp:
        out = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                              f"--screenshot={tmp}", Path(page).resolve().as_uri()],
                             capture_output=True, text=True, timeout=timeout_s)
        if not Path(tmp).is_file() or Path(tmp).stat().st_size == 0:
            raise RuntimeError(f"chromium wrote no screenshot of {page} (exit {out.returncode}): {out.stderr[-800:]}")
    return png

