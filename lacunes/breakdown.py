"""What lies under each predicted lesion: the instrument for specificity work on phantoms.

Each predicted lesion (26-connected component of ``probability >= 0.5``) gets one category, the first
that applies, in this order:

``lacune``
    it touches a reference lesion (whether or not the challenge's matching counts it as the TP);
``outside brain``
    most of its voxels lie outside the brain mask of the input;
``perivascular space`` / ``fluid pocket`` / ``WMH``
    its centre lies within a mimic's reach: half the mimic's largest extent + 2 mm from the centre
    the phantom's sidecar records (the sidecar has no orientation, so this is a sphere); fluid pockets
    are those of ``lacunes synth --mimics`` (the ventricles' horns, the choroid fissure, cisterns, sulci);
``brain edge``
    its centre lies within ``edge_mm`` (3 mm) of the brain mask's edge;
``CSF``
    most of its voxels are CSF in the phantom's tissue model (the anatomy's own ventricles and sulci);
``other tissue``
    anything else (grey or white matter without a recorded mimic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from lacunes.instances import label_centres, label_instances

CATEGORIES = ("lacune", "outside brain", "perivascular space", "fluid pocket", "WMH", "brain edge", "CSF",
              "other tissue")
_MIMICS = {"pvs": "perivascular space", "pocket": "fluid pocket", "wmh": "WMH"}


@dataclass
class PredictedLesion:
    subject_id: str
    category: str
    voxels: int
    volume_mm3: float
    max_probability: float
    centre_vox: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)


def classify_predictions(probability: np.ndarray, reference: np.ndarray, brain: np.ndarray,
                         spacing: tuple[float, float, float], mimics: list[dict] | None = None,
                         tissues: np.ndarray | None = None, subject_id: str = "", edge_mm: float = 3.0
                         ) -> list[PredictedLesion]:
    """One :class:`PredictedLesion` per component of ``probability >= 0.5`` (see the module docstring).

    Args:
        probability, reference, brain: (x, y, z) arrays on one grid (reference > 0 = lesion).
        spacing: voxel size, mm.
        mimics: the phantom sidecar's entries (``kind``, ``centre_vox``, ``diameters_mm``); lacunes
            in it are ignored (the reference covers them).
        tissues: the phantom's tissue labels (1 = CSF), or None.
    """
    labels, n = label_instances(probability >= 0.5)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    spacing_a = np.asarray(spacing, float)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    on_lesion = np.asarray(ndi.maximum(reference > 0, labels, idx)).astype(bool)
    inside = np.asarray(ndi.mean(brain.astype(np.float32), labels, idx))
    peaks = np.asarray(ndi.maximum(probability, labels, idx))
    centres = label_centres(labels, idx)
    depth = ndi.distance_transform_edt(np.pad(brain, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    csf = (np.asarray(ndi.mean((tissues == 1).astype(np.float32), labels, idx)) if tissues is not None
           else np.zeros(n))
    reach = [(m["kind"], np.asarray(m["centre_vox"], float), max(m["diameters_mm"]) / 2 + 2.0)
             for m in (mimics or []) if m.get("kind") in _MIMICS]
    voxel = float(np.prod(spacing_a))
    out = []
    for i in range(n):
        c = centres[i]
        ci = tuple(np.clip(np.round(c).astype(int), 0, np.array(labels.shape) - 1))
        if on_lesion[i]:
            cat = "lacune"
        elif inside[i] < 0.5:
            cat = "outside brain"
        else:
            near = [(np.linalg.norm((c - mc) * spacing_a) - r, kind) for kind, mc, r in reach]
            near = [(d, kind) for d, kind in near if d <= 0]
            if near:
                cat = _MIMICS[min(near)[1]]
            elif depth[ci] <= edge_mm:
                cat = "brain edge"
            elif csf[i] > 0.5:
                cat = "CSF"
            else:
                cat = "other tissue"
        out.append(PredictedLesion(subject_id, cat, int(counts[i]), float(counts[i]) * voxel, float(peaks[i]),
                                   tuple(round(float(v), 1) for v in c)))
    return out


def summarize_breakdown(rows: list[PredictedLesion], n_subjects: int) -> list[dict]:
    """Per category: lesions per subject, median volume (mm³) and median maximum probability."""
    by = {cat: [r for r in rows if r.category == cat] for cat in CATEGORIES}
    out = []
    for cat in CATEGORIES:
        sel = by[cat]
        out.append({
            "category": cat,
            "per_subject": len(sel) / max(n_subjects, 1),
            "count": len(sel),
            "median_volume_mm3": float(np.median([r.volume_mm3 for r in sel])) if sel else float("nan"),
            "median_max_probability": float(np.median([r.max_probability for r in sel])) if sel else float("nan"),
        })
    return out

