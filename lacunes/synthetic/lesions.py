"""Where lesions go in a deformed anatomy and how they are drawn: lacunes (labelled by two raters, the
second missing some small ones and drawing some borders a voxel off), the default perivascular spaces and
white-matter hyperintensities (never labelled), as maps the renderer turns into intensities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from lacunes.synthetic.config import LacuneShapeConfig, Lesion, SynthConfig
from lacunes.synthetic.shapes import (
    _capsule_fraction,
    _draw_diameter,
    _ellipsoid_fraction,
    _extents_mm,
    _lobulated_fraction,
    _place,
    _random_unit,
    _rotation,
)


def candidate_sites(anat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Voxel coordinates where lacunes may sit: deep grey matter and white matter, away from CSF."""
    mask = anat["mask"]
    shape = np.array(mask.shape)
    centre = (shape - 1) / 2
    idx = np.indices(mask.shape, dtype=np.float32)
    # The deep region (basal ganglia, thalamus, internal capsule, centrum semiovale) sits within an
    # ellipsoid around the centre; cortical grey matter lies outside it.
    deep = (((idx[0] - centre[0]) / (shape[0] * 0.28)) ** 2
            + ((idx[1] - centre[1]) / (shape[1] * 0.30)) ** 2
            + ((idx[2] - centre[2] - shape[2] * 0.05) / (shape[2] * 0.30)) ** 2) < 1
    far_from_csf = ndi.gaussian_filter(anat["csf"], 2.0) < 0.08
    dgm = deep & (anat["gm"] > 0.6) & far_from_csf
    wm = (anat["wm"] > 0.9) & far_from_csf & (ndi.distance_transform_edt(mask) > 12)
    return {"deep_gm": np.argwhere(dgm), "wm": np.argwhere(wm), "deep": np.argwhere(deep & mask & far_from_csf)}


@dataclass
class LesionMaps:
    """What the lesions of a phantom leave: partial-volume fractions per kind, the raters' masks and the
    places taken (centre, radius), which later lesions keep away from."""

    lacune: np.ndarray
    rim: np.ndarray
    pvs: np.ndarray
    wmh: np.ndarray
    rater1: np.ndarray
    rater2: np.ndarray
    taken: list[tuple[np.ndarray, float]] = field(default_factory=list)
    halo: np.ndarray | None = None  # hyperintensity against lacunes (LacuneShapeConfig), grey or white matter

    @classmethod
    def empty(cls, shape) -> LesionMaps:
        return cls(*(np.zeros(shape, np.float32) for _ in range(4)), np.zeros(shape, np.uint8), np.zeros(shape, np.uint8))


def _rater2_behaviour(rng: np.random.Generator, cfg: SynthConfig, d: float, label: np.ndarray) -> tuple[str, np.ndarray]:
    """How the second rater draws a lacune of diameter ``d``: the same, missed (small ones), dilated or eroded."""
    behaviour = "same"
    if d < 5.0 and rng.random() < cfg.p_rater2_miss_small:
        behaviour = "missed"
    elif rng.random() < cfg.p_rater2_border:
        behaviour = "dilated" if rng.random() < 0.5 else "eroded"
    r2 = label
    if behaviour == "dilated":
        r2 = ndi.binary_dilation(label)
    elif behaviour == "eroded":
        eroded = ndi.binary_erosion(label)
        r2 = eroded if eroded.any() else label
        behaviour = behaviour if eroded.any() else "same"
    return behaviour, r2


def add_lacunes(rng: np.random.Generator, cfg: SynthConfig, sites: dict, maps: LesionMaps,
                 shape_rng: np.random.Generator | None = None) -> list[Lesion]:
    """Lacunes: CSF-like cavities in deep grey or white matter, with a FLAIR rim — ellipsoids, or with
    ``cfg.lacune_shapes`` (drawn from ``shape_rng``) lobulated and some against a hyperintensity."""
    shape = maps.lacune.shape
    shapes = cfg.lacune_shapes
    lesions = []
    n_lac = 0 if rng.random() < cfg.p_no_lacune else int(rng.integers(1, cfg.max_lacunes + 1))
    for _ in range(n_lac):
        d = _draw_diameter(rng, *cfg.lacune_diameter_mm)
        radii = np.array([d, d * rng.uniform(0.6, 1.0), d * rng.uniform(0.6, 1.0)], np.float32) / 2
        pool = sites["deep_gm"] if rng.random() < 0.5 and len(sites["deep_gm"]) else sites["wm"]
        c = _place(rng, pool, maps.taken, float(radii.max()), gap=4.0)
        if c is None:
            continue
        axes = _rotation(rng, 90.0).astype(np.float32)
        extent = float(radii.max()) + 4
        irregular = (shapes is not None and d >= shapes.min_irregular_mm
                     and shape_rng.random() < shapes.p_irregular)
        if irregular:
            lobes = np.stack([_random_unit(shape_rng) for _ in range(int(shape_rng.integers(
                shapes.lobes[0], shapes.lobes[1] + 1)))]).astype(np.float32)
            depth, width = shape_rng.uniform(*shapes.lobe_depth), shape_rng.uniform(*shapes.lobe_width)
            grown = radii * (1.0 + 0.6 * depth)  # about the drawn diameter and 0.8-1 of its volume
            box, frac, sdist = _lobulated_fraction(shape, c, grown, axes, float(grown.max()) + 4, lobes, depth, width)
        else:
            box, frac = _ellipsoid_fraction(shape, c, radii, axes, extent)
        label = frac >= 0.5
        if not label.any():
            continue
        # FLAIR rim: a gliotic shell about 1 mm thick around the cavity.
        rim_mm = rng.uniform(0.8, 1.6)
        if irregular:
            outer = np.clip(0.5 - (sdist - rim_mm), 0.0, 1.0)
        else:
            _, outer = _ellipsoid_fraction(shape, c, radii + rim_mm, axes, extent)
        maps.taken.append((c, float(radii.max())))
        maps.lacune[box] = np.maximum(maps.lacune[box], frac)
        maps.rim[box] = np.maximum(maps.rim[box], np.clip(outer - frac, 0, 1))
        maps.rater1[box] |= label.astype(np.uint8)
        behaviour, r2 = _rater2_behaviour(rng, cfg, d, label)
        if behaviour != "missed":
            maps.rater2[box] |= r2.astype(np.uint8)
        diameters = tuple(float(2 * r) for r in radii)
        if irregular:
            diameters = _extents_mm(label, np.array([b.start for b in box]), c, axes)
        lesions.append(Lesion("lacune", tuple(float(v) for v in c), diameters, int(label.sum()), behaviour))
        if shapes is not None:
            lesions[-1].shape = "irregular" if irregular else "ellipsoid"
            if shape_rng.random() < shapes.p_beside_wmh:
                lesions[-1].beside_wmh = True
                lesions.append(_add_wmh_beside(shape_rng, shapes, maps, c, float(radii.max())))
    return lesions


def _add_wmh_beside(rng: np.random.Generator, shapes: LacuneShapeConfig, maps: LesionMaps,
                    centre: np.ndarray, radius: float) -> Lesion:
    """A hyperintense blob against a lacune: its centre a little beyond the lacune's edge in a random
    direction, so that it wraps part of the cavity (the cavity's fluid wins where they overlap)."""
    d = float(rng.uniform(*shapes.wmh_mm))
    c = centre + _random_unit(rng) * (radius + 0.25 * d)
    radii = np.array([d, d * rng.uniform(0.6, 1.0), d * rng.uniform(0.5, 0.9)], np.float32) / 2
    box, frac = _ellipsoid_fraction(maps.wmh.shape, c, radii, _rotation(rng, 90.0).astype(np.float32))
    bumpy = _bumpy(rng, frac)
    if maps.halo is None:
        maps.halo = np.zeros_like(maps.wmh)
    maps.halo[box] = np.maximum(maps.halo[box], bumpy)
    return Lesion("wmh", tuple(float(v) for v in c), tuple(float(2 * r) for r in radii), int((bumpy >= 0.5).sum()))


def add_default_pvs(rng: np.random.Generator, cfg: SynthConfig, sites: dict, maps: LesionMaps, brain: np.ndarray) -> list[Lesion]:
    """Perivascular spaces: thin CSF-like tubes (< 3 mm across, no rim), mostly running along z."""
    lesions = []
    for _ in range(int(rng.integers(cfg.n_pvs[0], cfg.n_pvs[1] + 1))):
        radius = rng.uniform(0.5, 1.2)
        length = rng.uniform(5.0, 18.0)
        pool = sites["deep"] if rng.random() < 0.6 else sites["wm"]
        c = _place(rng, pool, maps.taken, length / 2, gap=3.0)
        if c is None:
            continue
        direction = np.array([0.0, 0.0, 1.0]) + rng.normal(0, 0.35, 3)
        direction /= np.linalg.norm(direction)
        p0, p1 = c - direction * length / 2, c + direction * length / 2
        box, frac = _capsule_fraction(maps.pvs.shape, p0.astype(np.float32), p1.astype(np.float32), radius)
        frac *= brain[box]
        maps.pvs[box] = np.maximum(maps.pvs[box], frac)
        maps.taken.append((c, length / 2))
        lesions.append(Lesion("pvs", tuple(float(v) for v in c), (2 * radius, 2 * radius, length), int((frac >= 0.5).sum())))
    return lesions


def _bumpy(rng: np.random.Generator, frac: np.ndarray) -> np.ndarray:
    """A hyperintensity's irregular fraction: an ellipsoid's, randomly thinned and smoothed."""
    return ndi.gaussian_filter(np.clip(frac * rng.uniform(0.6, 1.0, frac.shape).astype(np.float32), 0, 1), 0.8)


def add_wmh(rng: np.random.Generator, cfg: SynthConfig, sites: dict, maps: LesionMaps, wm: np.ndarray) -> list[Lesion]:
    """White-matter hyperintensities: irregular bright blobs, often periventricular."""
    lesions = []
    for _ in range(int(rng.integers(cfg.n_wmh[0], cfg.n_wmh[1] + 1))):
        d = rng.uniform(4.0, 18.0)
        c = _place(rng, sites["wm"], maps.taken, d / 2, gap=3.0)
        if c is None:
            continue
        radii = np.array([d, d * rng.uniform(0.5, 1.0), d * rng.uniform(0.4, 0.9)], np.float32) / 2
        box, frac = _ellipsoid_fraction(maps.wmh.shape, c, radii, _rotation(rng, 90.0).astype(np.float32))
        bumpy = _bumpy(rng, frac) * wm[box]
        maps.wmh[box] = np.maximum(maps.wmh[box], bumpy)
        maps.taken.append((c, d / 2))
        lesions.append(Lesion("wmh", tuple(float(v) for v in c), tuple(float(2 * r) for r in radii), int((bumpy >= 0.5).sum())))
    return lesions
