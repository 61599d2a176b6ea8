"""Synthetic lacune phantoms in the VALDO layout.

Anatomy comes from the ICBM152 2009a template that nilearn ships (1 mm T1 and GM/WM probability
maps; CSF = brain minus GM minus WM), so nothing is downloaded at run time. Each subject gets a
random affine, a smooth non-linear deformation, its own ventricle and sulcal width, tissue contrasts
with jitter, partial volume, a multiplicative bias field and Rician noise; FLAIR optionally gets
thick-slice blurring. Lacunes (labelled) are inserted with CSF-like signal and a FLAIR rim; mimics
(perivascular spaces, white-matter hyperintensities) are inserted but never labelled. A second rater
misses some small lacunes and draws some borders one voxel wider or narrower.

Arrays are indexed (x, y, z) like the rest of the package (see :mod:`lacunes.io`), in the template's
order: towards the right, anterior and superior. Phantoms are written so (:data:`lacunes.options.RAS_DIRECTION`,
the origin at the template's millimetres), so that a phantom lies over the template in scanner space.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from lacunes import options
from lacunes.synthetic.anatomy import ANATOMIES, MEASUREMENT_ONLY, _Template, load_anatomy, load_template
from lacunes.synthetic.mimics import MimicConfig, TissueRanges, add_pockets, add_pvs, deep_grey_weight, draw_means
from lacunes.synthetic.mimics import _places as mimic_places
from lacunes.synthetic.shapes import (
    _capsule_fraction,
    _draw_diameter,
    _ellipsoid_fraction,
    _extents_mm,
    _lobulated_fraction,
    _place,
    _random_unit,
    _rotation,
    _smooth_field,
)

logger = logging.getLogger(__name__)

__all__ = ["ANATOMIES", "MEASUREMENT_ONLY", "AcquisitionConfig", "ContrastTable", "LacuneShapeConfig", "Lesion",
           "MimicConfig", "Phantom", "SynthConfig", "TissueRanges", "generate_dataset", "generate_phantom",
           "load_template", "write_phantom"]

MODALITIES = options.MODALITIES  # the network's channels, in order
#: Values of the tissue sidecar (``sub-XXX_space-T1_desc-synthetic_tissues.nii.gz``).
TISSUE_LABELS = {0: "background", 1: "csf", 2: "gm", 3: "wm"}


@dataclass(frozen=True)
class ContrastTable:
    """Mean intensities per tissue (relative units, WM of T1 = 1) before jitter."""

    T1: dict[str, float] = field(
        default_factory=lambda: {"csf": 0.28, "gm": 0.62, "wm": 1.0, "wmh": 0.78}
    )
    T2: dict[str, float] = field(
        default_factory=lambda: {"csf": 1.0, "gm": 0.52, "wm": 0.38, "wmh": 0.78}
    )
    FLAIR: dict[str, float] = field(
        default_factory=lambda: {"csf": 0.12, "gm": 0.58, "wm": 0.44, "wmh": 1.0, "rim": 0.85}
    )


@dataclass(frozen=True)
class AcquisitionConfig:
    """How a phantom's acquisition is randomized (``SynthConfig.acquisition``), the way real scans differ.

    Each choice is drawn per subject from a stream of its own (``[seed, index, 1]``), so a phantom's
    anatomy and lesions are those of the same phantom without randomization. The images are rendered at
    1 mm as usual, then "acquired": blurred by the acquired voxel's profile (a Gaussian whose FWHM is
    the voxel size) and skull-stripped again with the brain's own mask, sampled on the acquisition
    grid, and brought back to the 1 mm grid exactly as inference conforms a scan (:mod:`lacunes.conform`:
    linear, the background kept out of the brain's edge, :func:`lacunes.conform.resample_masked`).
    Labels stay on the 1 mm grid: the network learns the true extent from blurred images.

    Attributes:
        p_resolution: share of subjects acquired at another voxel size (all three modalities, isotropic).
        voxel_mm: range of that voxel size.
        p_thick: share of subjects whose T2 and FLAIR are thick-slice (registered to the T1 and resampled
            onto its grid, as ``--resample`` does).
        slice_mm: range of their slice thickness.
        slice_axis_weights: probability of each array axis being the slice axis (z mostly).
        p_contrast: share of subjects with other tissue contrasts.
        contrast_spread: tissue means multiplied by a factor in [1 - spread, 1 + spread] (per tissue and
            modality), then the tissue order enforced (a monotone reordering).
        gamma: range of a monotone intensity curve ``x ** gamma`` (log-uniform) applied per modality.
        bias_strength: range of the bias field's strength (the default generator uses 0.12).
        noise: range of the noise sigma relative to white matter (one value per subject).
    """

    p_resolution: float = 0.6
    voxel_mm: tuple[float, float] = (0.7, 1.5)
    p_thick: float = 0.4
    slice_mm: tuple[float, float] = (2.0, 5.0)
    slice_axis_weights: tuple[float, float, float] = (0.15, 0.15, 0.7)
    p_contrast: float = 0.7
    contrast_spread: float = 0.2
    gamma: tuple[float, float] = (0.7, 1.4)
    bias_strength: tuple[float, float] = (0.04, 0.3)
    noise: tuple[float, float] = (0.01, 0.07)


@dataclass(frozen=True)
class LacuneShapeConfig:
    """How lacunes' shapes vary (``SynthConfig.lacune_shapes``) beyond the default oriented ellipsoid.

    Drawn per lacune from a stream of its own (``[seed, index, 2]``), so a phantom's lacunes sit where
    those of the same phantom without it do, drawn with the same diameters (a lobulated one's recorded
    diameters are its labelled extents along its axes).

    Attributes:
        p_irregular: share of the lacunes of at least ``min_irregular_mm`` with a lobulated outline: the
            ellipsoid (grown by ``0.6 * depth``) with its radius in each direction scaled by
            ``(1 - depth) + depth * b(u)``, where ``b`` is 1 towards each of a few lobes and falls off
            between them (``exp(-width * (1 - u·v))``). Measured over 40 draws: the largest extent
            0.92-1.1 of the drawn diameter, the volume 0.77-0.99 of the ellipsoid's.
        min_irregular_mm: lacunes smaller than this stay ellipsoids (small cavities are round).
        lobes: range of the number of lobes.
        lobe_depth: range of how far the outline falls in between lobes (share of the radius).
        lobe_width: range of the lobes' sharpness (larger = narrower lobes).
        p_beside_wmh: share of the lacunes with a white-matter hyperintensity against them (its centre
            beyond the lacune's edge, so that the two overlap; only the lacune is labelled).
        wmh_mm: range of that hyperintensity's diameter.
    """

    p_irregular: float = 0.6
    min_irregular_mm: float = 5.0
    lobes: tuple[int, int] = (2, 4)
    lobe_depth: tuple[float, float] = (0.15, 0.35)
    lobe_width: tuple[float, float] = (2.0, 5.0)
    p_beside_wmh: float = 0.4
    wmh_mm: tuple[float, float] = (6.0, 16.0)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the phantom generator (defaults are the documented ones).

    Attributes:
        p_no_lacune: probability that a subject has no lacune at all.
        max_lacunes: upper bound on lacunes per subject (drawn uniformly from 1..max when present).
        lacune_diameter_mm: range of the largest diameter of a lacune.
        n_pvs: range of the number of perivascular spaces (mimics, unlabelled).
        n_wmh: range of the number of white-matter hyperintensity blobs (mimics, unlabelled).
        deformation_mm: standard deviation of the smooth non-linear displacement.
        rotation_deg: maximum rotation about each axis of the random affine.
        scale_range: range of the isotropic scaling of the random affine.
        bias_strength: standard deviation of the log bias field.
        noise_range: Rician noise sigma range, relative to white matter on T1.
        jitter: relative per-subject jitter of each tissue mean.
        p_thick_flair: probability of thick-slice (anisotropic) blurring on FLAIR.
        p_rater2_miss_small: probability that rater 2 misses a lacune under 5 mm.
        p_rater2_border: probability that rater 2 draws a lacune one voxel wider or narrower.
        intensity_scale: stored value of T1 white matter (files are int16).
        acquisition: randomize the acquisition (:class:`AcquisitionConfig`); None = every phantom at
            1 mm with the default contrasts (the held-out benchmark and the sample case).
        lacune_shapes: vary the lacunes' shapes (:class:`LacuneShapeConfig`); None = every lacune an
            ellipsoid with a thin FLAIR rim.
        mimics: lacune mimics as varied as real brains hold them and per-structure tissue intensities
            (:class:`lacunes.synthetic.mimics.MimicConfig`); None = the default perivascular spaces and
            hyperintensities only, the contrast table with its jitter.
        anatomy: the anatomy deformed (:data:`lacunes.synthetic.anatomy.ANATOMIES`); ``colin27`` is for
            measurement only (:data:`lacunes.synthetic.anatomy.MEASUREMENT_ONLY`).
    """

    p_no_lacune: float = 0.3
    max_lacunes: int = 5
    lacune_diameter_mm: tuple[float, float] = (3.0, 15.0)
    n_pvs: tuple[int, int] = (8, 30)
    n_wmh: tuple[int, int] = (0, 8)
    deformation_mm: float = 2.5
    rotation_deg: float = 6.0
    scale_range: tuple[float, float] = (0.92, 1.08)
    ventricle_change: tuple[float, float] = (-0.15, 0.35)
    sulcal_atrophy: tuple[float, float] = (0.0, 0.35)
    bias_strength: float = 0.12
    noise_range: tuple[float, float] = (0.015, 0.04)
    jitter: float = 0.07
    p_thick_flair: float = 0.5
    p_rater2_miss_small: float = 0.35
    p_rater2_border: float = 0.4
    intensity_scale: float = 800.0
    contrasts: ContrastTable = field(default_factory=ContrastTable)
    acquisition: AcquisitionConfig | None = None
    lacune_shapes: LacuneShapeConfig | None = None
    mimics: MimicConfig | None = None
    anatomy: str = "icbm152"

    def __post_init__(self) -> None:
        if self.anatomy not in ANATOMIES:
            raise ValueError(f"unknown anatomy {self.anatomy!r} (the anatomies: {', '.join(ANATOMIES)})")
        lo, hi = self.lacune_diameter_mm
        if not 0 < lo <= hi:
            raise ValueError(f"lacune_diameter_mm must satisfy 0 < min <= max, got {self.lacune_diameter_mm}")
        if not 0.0 <= self.p_no_lacune <= 1.0:
            raise ValueError(f"p_no_lacune must be in [0, 1], got {self.p_no_lacune}")
        if self.max_lacunes < 1:
            raise ValueError(f"max_lacunes must be >= 1, got {self.max_lacunes}")


@dataclass
class Lesion:
    """One inserted lesion, as recorded in the subject's ``lesions.json`` sidecar."""

    kind: str  # "lacune", "pvs", "wmh" or "pocket" (a fluid pocket, SynthConfig.mimics)
    centre_vox: tuple[float, float, float]
    diameters_mm: tuple[float, float, float]
    voxels: int = 0
    rater2: str = "same"  # lacunes only: same | missed | dilated | eroded
    shape: str | None = None  # lacunes with SynthConfig.lacune_shapes: "ellipsoid" or "irregular"
    beside_wmh: bool = False  # lacunes with SynthConfig.lacune_shapes: a hyperintensity against it
    site: str | None = None  # fluid pockets: where (lacunes.synthetic.mimics.POCKET_SITES_MM)


@dataclass
class Phantom:
    """A generated subject: images (x, y, z), rater labels, the lesion record and the tissue model
    (``tissues``: the dominant tissue of each voxel before lesions, see :data:`TISSUE_LABELS`)."""

    subject_id: str
    images: dict[str, np.ndarray]
    rater1: np.ndarray
    rater2: np.ndarray
    lesions: list[Lesion]
    tissues: np.ndarray | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # scanner mm (LPS) of voxel (0, 0, 0)
    direction: tuple[float, ...] = options.RAS_DIRECTION
    acquisition: dict | None = None  # what was drawn (AcquisitionConfig), None when not randomized

    @property
    def lacunes(self) -> list[Lesion]:
        return [lesion for lesion in self.lesions if lesion.kind == "lacune"]


# ----------------------------------------------------------------------------------------------
# Anatomy


def _deform_anatomy(rng: np.random.Generator, cfg: SynthConfig, tpl: _Template) -> dict[str, np.ndarray]:
    shape = tpl.gm.shape
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    # Sampling map: output voxel x reads the template at A (x - c) + c + smooth displacement.
    a = _rotation(rng, cfg.rotation_deg) / rng.uniform(*cfg.scale_range)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    coords = (a.astype(np.float32) @ grid) + centre[:, None]
    coords = coords.reshape((3, *shape))
    for d in range(3):
        coords[d] += _smooth_field(rng, shape, 6, cfg.deformation_mm)
    # Ventricle width: a radial push around the (deep) centre of the brain. Reading closer to the
    # centre enlarges the central CSF spaces; reading farther shrinks them.
    vc = centre + np.array([0.0, 8.0, 8.0], dtype=np.float32)
    k = rng.uniform(*cfg.ventricle_change)
    rel = coords - vc.reshape(3, 1, 1, 1)
    weight = np.exp(-(rel**2).sum(0) / (2 * 22.0**2))
    coords -= k * rel * weight[None]
    del rel, weight, grid

    out = {}
    for name in ("gm", "wm", "csf", "mask"):
        out[name] = ndi.map_coordinates(getattr(tpl, name), coords, order=1, mode="constant", cval=0.0)
    mask = out["mask"] > 0.5
    # Sulcal width: move part of the cortical grey matter next to CSF into CSF.
    atrophy = rng.uniform(*cfg.sulcal_atrophy)
    near_csf = ndi.gaussian_filter(out["csf"], 1.5)
    moved = out["gm"] * np.clip(atrophy * near_csf * 2.0, 0.0, 0.9)
    out["gm"] -= moved
    out["csf"] += moved
    for name in ("gm", "wm", "csf"):
        out[name] = np.where(mask, np.clip(out[name], 0.0, 1.0), 0.0).astype(np.float32)
    out["mask"] = mask
    out["affine"] = a  # template voxel ≈ affine · (phantom voxel - centre) + centre
    return out


# ----------------------------------------------------------------------------------------------
# Lesions


def _candidate_sites(anat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
class _LesionMaps:
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
    def empty(cls, shape) -> _LesionMaps:
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


def _add_lacunes(rng: np.random.Generator, cfg: SynthConfig, sites: dict, maps: _LesionMaps,
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


def _add_wmh_beside(rng: np.random.Generator, shapes: LacuneShapeConfig, maps: _LesionMaps,
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


def _add_pvs(rng: np.random.Generator, cfg: SynthConfig, sites: dict, maps: _LesionMaps, brain: np.ndarray) -> list[Lesion]:
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


def _add_wmh(rng: np.random.Generator, cfg: SynthConfig, sites: dict, maps: _LesionMaps, wm: np.ndarray) -> list[Lesion]:
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


def generate_phantom(seed: int, index: int = 1, config: SynthConfig | None = None, subject_id: str | None = None) -> Phantom:
    """Generate one synthetic subject.

    Args:
        seed: base seed; together with ``index`` it fixes the subject completely.
        index: subject number (also the default id ``sub-{index:03d}``).
        config: generator parameters; defaults to :class:`SynthConfig`.
        subject_id: overrides the id.

    Returns:
        A :class:`Phantom` with int16 images (x, y, z) at 1 mm and uint8 rater masks.
    """
    cfg = config or SynthConfig()
    drawn = None
    if cfg.acquisition is not None:  # its own stream: anatomy and lesions stay those of the plain phantom
        acq_rng = np.random.default_rng([seed, index, 1])
        cfg, drawn = _draw_acquisition(acq_rng, cfg)
    rng = np.random.default_rng([seed, index])
    tpl = load_anatomy(cfg.anatomy)
    anat = _deform_anatomy(rng, cfg, tpl)
    shape = anat["mask"].shape
    sites = _candidate_sites(anat)

    maps = _LesionMaps.empty(shape)
    shape_rng = np.random.default_rng([seed, index, 2]) if cfg.lacune_shapes is not None else None
    lesions = _add_lacunes(rng, cfg, sites, maps, shape_rng)
    lesions += _add_pvs(rng, cfg, sites, maps, anat["mask"])
    lesions += _add_wmh(rng, cfg, sites, maps, anat["wm"])
    means = deep = None
    if cfg.mimics is not None:  # a stream of their own: the lacunes and default mimics stay where they are
        mim_rng = np.random.default_rng([seed, index, 3])
        places = mimic_places(anat, tpl.origin, anat["affine"])
        lesions += add_pvs(mim_rng, cfg.mimics, places, sites, maps.pvs, maps.rim, maps.taken, Lesion)
        lesions += add_pockets(mim_rng, cfg.mimics, places, maps.pvs, maps.taken, Lesion)
        if cfg.mimics.tissues is not None:
            means, deep = draw_means(mim_rng, cfg.mimics.tissues), deep_grey_weight(anat["gm"])
    images = _render(rng, cfg, anat, maps.lacune, maps.rim, maps.pvs, maps.wmh, maps.halo, means, deep)
    sid = subject_id or f"sub-{index:03d}"
    tissues = np.where(anat["mask"], 1 + np.argmax(np.stack([anat["csf"], anat["gm"], anat["wm"]]), axis=0), 0)
    if drawn is not None:
        images = _acquire(images, drawn)
    return Phantom(sid, images, maps.rater1, maps.rater2, lesions, tissues.astype(np.uint8), origin=tpl.origin,
                   acquisition=drawn)


#: Tissue order each modality keeps whatever contrast is drawn (darkest first).
_TISSUE_ORDER = {"T1": ("csf", "gm", "wm"), "T2": ("wm", "gm", "csf"), "FLAIR": ("csf", "wm", "gm")}


def _draw_acquisition(rng: np.random.Generator, cfg: SynthConfig) -> tuple[SynthConfig, dict]:
    """Draw one subject's acquisition (:class:`AcquisitionConfig`): the generator's settings for its
    contrasts, bias and noise, and what :func:`_acquire` does to the rendered images."""
    acq = cfg.acquisition
    drawn: dict = {"voxel_mm": 1.0, "thick": None, "gamma": {m: 1.0 for m in MODALITIES}}
    if rng.random() < acq.p_resolution:
        drawn["voxel_mm"] = float(rng.uniform(*acq.voxel_mm))
    if rng.random() < acq.p_thick:
        axis = int(rng.choice(3, p=np.asarray(acq.slice_axis_weights) / sum(acq.slice_axis_weights)))
        drawn["thick"] = {"axis": axis, "mm": float(rng.uniform(*acq.slice_mm))}
    contrasts = cfg.contrasts
    if rng.random() < acq.p_contrast:
        tables = {}
        for m in MODALITIES:
            table = {k: v * float(rng.uniform(1 - acq.contrast_spread, 1 + acq.contrast_spread))
                     for k, v in getattr(contrasts, m).items()}
            order = _TISSUE_ORDER[m]
            for k, v in zip(order, sorted(table[t] for t in order)):  # keep the tissue order
                table[k] = v
            tables[m] = table
            drawn["gamma"][m] = float(np.exp(rng.uniform(np.log(acq.gamma[0]), np.log(acq.gamma[1]))))
        contrasts = ContrastTable(**tables)
        drawn["contrasts"] = tables
    bias = float(rng.uniform(*acq.bias_strength))
    noise = float(rng.uniform(*acq.noise))
    drawn.update(bias_strength=bias, noise=noise)
    return replace(cfg, contrasts=contrasts, bias_strength=bias, noise_range=(noise, noise)), drawn


def acquisition_grids(shape: tuple[int, int, int], drawn: dict, modality: str):
    """The 1 mm grid, the modality's acquisition grid and the T1's grid of a drawn acquisition."""
    from lacunes.conform import grid_with_spacing
    from lacunes.geometry import Geometry

    native = Geometry(shape=tuple(shape))
    t1 = grid_with_spacing(native, (drawn["voxel_mm"],) * 3)
    voxel = [drawn["voxel_mm"]] * 3
    if drawn["thick"] is not None and modality != "T1":
        voxel[drawn["thick"]["axis"]] = max(voxel[drawn["thick"]["axis"]], drawn["thick"]["mm"])
    return native, grid_with_spacing(native, voxel), t1


def intensity_curve(x: np.ndarray, gamma: float) -> np.ndarray:
    """A monotone intensity curve ``top · (x / top) ** gamma``, anchored at the brain's bright end
    (``top`` = the 99th percentile of the positive voxels); 0 stays 0."""
    top = float(np.percentile(x[x > 0], 99)) if (x > 0).any() else 1.0
    return top * (np.clip(x, 0, None) / top) ** gamma


def voxel_profile_sigma(voxel_mm) -> np.ndarray:
    """Per axis, the Gaussian sigma (in 1 mm voxels) that blurs a 1 mm image to the resolution of
    ``voxel_mm`` voxels (a slice profile of FWHM the voxel size; 0 where the voxel is 1 mm or finer)."""
    fwhm = np.asarray(voxel_mm, float)
    return np.sqrt(np.maximum(fwhm**2 - 1.0, 0.0)) / 2.3548


def _acquire(images: dict[str, np.ndarray], drawn: dict) -> dict[str, np.ndarray]:
    """The rendered 1 mm images as acquired (:class:`AcquisitionConfig`), back on the 1 mm grid."""
    from lacunes.conform import resample_masked

    out = {}
    for m, img in images.items():
        native, acquired, t1 = acquisition_grids(img.shape, drawn, m)
        x = img.astype(np.float32)
        if drawn["gamma"][m] != 1.0:
            x = intensity_curve(x, drawn["gamma"][m])
        sigma = voxel_profile_sigma(acquired.spacing)
        if sigma.any():  # the slice profile's blur, then skull-stripped again (the brain's own extent)
            x = np.where(img != 0, ndi.gaussian_filter(x, sigma), np.float32(0))
        if acquired != native:  # each resampling of a skull-stripped scan as inference does it
            x = resample_masked(x, native, acquired)
            if acquired != t1:  # T2/FLAIR resampled onto the T1's grid (--resample)
                x = resample_masked(x, acquired, t1)
            if t1 != native:  # the subject conformed to the model's 1 mm grid
                x = resample_masked(x, t1, native)
        out[m] = np.round(x).clip(0, 32767).astype(np.int16)
    return out


def _render(
    rng: np.random.Generator,
    cfg: SynthConfig,
    anat: dict[str, np.ndarray],
    lacune: np.ndarray,
    rim: np.ndarray,
    pvs: np.ndarray,
    wmh: np.ndarray,
    halo: np.ndarray | None = None,
    means: dict[str, dict[str, float]] | None = None,
    deep: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The three contrasts from the tissue fractions and the lesion maps. ``means``: each modality's
    structure means drawn for this subject (:func:`lacunes.synthetic.mimics.draw_means`; None: the
    contrast table with its jitter); ``deep``: the share of grey matter that is deep grey nuclei, which
    takes the mean ``dgm``."""
    mask = anat["mask"]
    fluid = np.maximum(lacune, pvs)
    keep = 1.0 - fluid
    wmh = wmh * keep
    gm = anat["gm"] * keep
    wm = anat["wm"] * keep * (1.0 - wmh)
    csf = anat["csf"] * keep + fluid
    hyper = None
    if halo is not None:  # hyperintense tissue against lacunes, in grey as in white matter
        halo = halo * keep
        hyper = halo * (gm + wm)
        gm, wm = gm * (1.0 - halo), wm * (1.0 - halo)
    rim = rim * (1.0 - fluid)
    texture = _smooth_field(rng, mask.shape, 24, 0.02)
    shape = mask.shape
    images = {}
    for name in MODALITIES:
        table = getattr(cfg.contrasts, name)
        mean = {k: v * (1 + rng.normal(0, cfg.jitter)) for k, v in table.items()}
        if means is not None:  # drawn per structure (the jitter above still drawn: the streams stay aligned)
            mean = {**mean, **means[name]}
        if deep is not None:
            img = (csf * mean["csf"] + gm * (1.0 - deep) * mean["gm"] + gm * deep * mean["dgm"] + wm * mean["wm"]
                   + wmh * anat["wm"] * keep * mean["wmh"])
        else:
            img = csf * mean["csf"] + gm * mean["gm"] + wm * mean["wm"] + wmh * anat["wm"] * keep * mean["wmh"]
        if hyper is not None:
            img = img + hyper * mean["wmh"]
        if name == "FLAIR":
            img = img * (1 - rim) + rim * mean["rim"]
        img = img * (1 + texture)
        img *= np.exp(_smooth_field(rng, shape, 4, cfg.bias_strength))
        if name == "FLAIR" and rng.random() < cfg.p_thick_flair:
            img = ndi.gaussian_filter1d(img, sigma=rng.uniform(0.6, 1.5), axis=2)
        sigma = rng.uniform(*cfg.noise_range)
        n1 = rng.normal(0, sigma, shape).astype(np.float32)
        n2 = rng.normal(0, sigma, shape).astype(np.float32)
        img = np.sqrt((img + n1) ** 2 + n2**2)
        gain = cfg.intensity_scale * rng.uniform(0.8, 1.25)
        images[name] = np.where(mask, np.round(img * gain), 0).clip(0, 32767).astype(np.int16)
    return images


# ----------------------------------------------------------------------------------------------
# Writing


def write_phantom(phantom: Phantom, out_dir: Path, preview: bool = False) -> list[Path]:
    """Write a phantom in the VALDO layout (plus a ``lesions.json`` sidecar and an optional PNG)."""
    from lacunes.geometry import Geometry
    from lacunes.writing import write_volume

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    geom = Geometry(shape=phantom.rater1.shape, spacing=phantom.spacing, origin=phantom.origin,
                    direction=phantom.direction)
    sid = phantom.subject_id
    written = []
    for name, img in phantom.images.items():
        path = out_dir / f"{sid}_space-T1_desc-masked_{name}.nii.gz"
        write_volume(img, geom, path)
        written.append(path)
    for rater, arr in (("Rater1", phantom.rater1), ("Rater2", phantom.rater2)):
        path = out_dir / f"{sid}_space-T1_desc-{rater}_Lacunes.nii.gz"
        write_volume(arr, geom, path)
        written.append(path)
    sidecar = out_dir / f"{sid}_space-T1_desc-synthetic_lesions.json"
    sidecar.write_text(json.dumps([lesion_record(lesion) for lesion in phantom.lesions], indent=1))
    written.append(sidecar)
    if phantom.tissues is not None:
        written.append(write_volume(phantom.tissues, geom, out_dir / f"{sid}_space-T1_desc-synthetic_tissues.nii.gz"))
    if preview:
        written.append(write_preview(phantom, out_dir / f"{sid}_preview.png"))
    return written


def lesion_record(lesion: Lesion) -> dict:
    """A lesion as the sidecar stores it (the shape fields only where shapes were varied, the site only for
    fluid pockets)."""
    record = asdict(lesion)
    if record["shape"] is None:
        del record["shape"], record["beside_wmh"]
    if record["site"] is None:
        del record["site"]
    return record


def write_preview(phantom: Phantom, path: Path) -> Path:
    """Orthogonal slices of the three modalities through the largest lacune, with label outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lacunes = phantom.lacunes
    if lacunes:
        centre = np.round(max(lacunes, key=lambda les: les.voxels).centre_vox).astype(int)
    else:
        centre = np.array(phantom.rater1.shape) // 2
    fig, axes = plt.subplots(3, 3, figsize=(10, 10), facecolor="black")
    for row, name in enumerate(MODALITIES):
        img = phantom.images[name].astype(np.float32)
        vmax = np.percentile(img[img > 0], 99.5) if (img > 0).any() else 1
        for col, axis in enumerate((2, 1, 0)):
            sl = [slice(None)] * 3
            sl[axis] = centre[axis]
            ax = axes[row, col]
            ax.imshow(np.rot90(img[tuple(sl)]), cmap="gray", vmin=0, vmax=vmax)
            for lab, colour, width in ((phantom.rater1, "red", 1.6), (phantom.rater2, "cyan", 0.6)):
                part = np.rot90(lab[tuple(sl)])
                if part.any():
                    ax.contour(part, levels=[0.5], colors=colour, linewidths=width)
            ax.set_axis_off()
            if col == 0:
                ax.set_title(f"{name}", color="white", fontsize=10)
    n = len(lacunes)
    fig.suptitle(f"{phantom.subject_id}: {n} lacune(s); red = rater 1, cyan = rater 2",
                 color="white")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path


def generate_dataset(
    out_dir: Path,
    n: int,
    seed: int,
    first_id: int = 1,
    preview: bool = False,
    config: SynthConfig | None = None,
    progress: bool = True,
) -> list[str]:
    """Generate ``n`` subjects ``sub-{first_id:03d}``... into ``out_dir``; returns their ids."""
    from tqdm import tqdm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ids = []
    for i in tqdm(range(first_id, first_id + n), desc="synth", unit="subject", disable=not progress):
        phantom = generate_phantom(seed, i, config)
        write_phantom(phantom, out_dir, preview=preview)
        logger.info("%s: %d lacune(s), %d mimic(s)", phantom.subject_id, len(phantom.lacunes),
                    len(phantom.lesions) - len(phantom.lacunes))
        ids.append(phantom.subject_id)
    return ids
