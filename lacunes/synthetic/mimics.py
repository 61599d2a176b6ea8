"""Lacune mimics as varied as real brains hold them (``SynthConfig.mimics``), never labelled.

- **Perivascular spaces** that follow the vessels: 1-3 mm across, some enlarged up to 5 mm, round in
  cross-section; vertical in the basal ganglia (some in clusters), radial in the centrum semiovale
  (pointing away from the brain's centre); some with a thin FLAIR-bright wall.
- **Fluid pockets** where a brain has fluid of its own: the tips of the lateral ventricles' frontal and
  occipital horns, the temporal horn (a tube from the atrium forward and down into the temporal lobe,
  ending in a bulb), the choroid fissure, the insular cistern, a widened sulcus, a cavum septi. Each is
  attached to the fluid it belongs to or, as a slice or a 1 mm grid shows it, cut off from it by a thin
  bridge of tissue (``p_detached``): the look-alike of a lacune that only its place tells apart.
- **Tissue intensities** drawn per subject and per structure from wide ranges (:class:`TissueRanges`;
  SynthSeg's approach rather than a jittered table), the deep grey nuclei apart from the cortex.

Places are named in the template's millimetres (MNI, right-anterior-superior) and carried to the phantom
through its random affine (the smooth deformation and the ventricles' push move them by a few mm more,
which the jitter covers anyway). Everything is drawn from a stream of its own (``[seed, index, 3]``), after
the lacunes and the default mimics: a phantom's lacunes sit where they do without mimics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from lacunes.synthetic.shapes import _capsule_fraction, _ellipsoid_fraction, _random_unit, _rotation

#: Fluid-pocket sites: template millimetres (right hemisphere; mirrored for the left) of the place, and of
#: the other end where the pocket is a tube (the temporal horn runs from its body to its tip).
POCKET_SITES_MM = {
    "frontal horn tip": (12.0, 26.0, 6.0),
    "occipital horn tip": (22.0, -72.0, 6.0),
    "temporal horn": (30.0, -8.0, -24.0),
    "choroid fissure": (22.0, -22.0, -10.0),
    "insular cistern": (36.0, 2.0, 2.0),
    "sulcus": None,  # any cortical sulcus
    "cavum septi": (0.0, 12.0, 12.0),
}
_TEMPORAL_HORN_BODY_MM = (32.0, -28.0, -8.0)


@dataclass(frozen=True)
class TissueRanges:
    """Mean intensity ranges per modality and structure (relative units, T1 white matter about 1), each
    drawn uniformly per subject, then each modality's tissue order enforced (T1: CSF < GM < WM; T2:
    WM < GM < CSF; FLAIR: CSF < WM < GM), so that fluid stays fluid-like. ``dgm``: the deep grey nuclei
    (basal ganglia, thalamus), drawn apart from the cortex (``gm``)."""

    T1: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "csf": (0.15, 0.40), "gm": (0.50, 0.72), "dgm": (0.58, 0.90), "wm": (0.90, 1.10), "wmh": (0.65, 0.90)})
    T2: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "csf": (0.85, 1.20), "gm": (0.45, 0.65), "dgm": (0.32, 0.60), "wm": (0.30, 0.45), "wmh": (0.65, 0.95)})
    FLAIR: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "csf": (0.04, 0.20), "gm": (0.50, 0.68), "dgm": (0.44, 0.64), "wm": (0.36, 0.50), "wmh": (0.85, 1.15),
        "rim": (0.72, 0.95)})


#: Broad ranges (``--broad-tissues``): every structure's mean over the training ranges and the
#: less fluid-like contrasts beyond them (T1 fluid up to 0.55 of white matter, FLAIR fluid suppressed to
#: 0.36 only, T2 fluid down to 0.62) — the contrasts of the ``wide`` measurement family and some margin,
#: for a network that must find a lacune of whatever fluid contrast the scanner gives.
BROAD_TISSUES = TissueRanges(
    T1={"csf": (0.10, 0.55), "gm": (0.48, 0.80), "dgm": (0.56, 0.96), "wm": (0.90, 1.10), "wmh": (0.62, 0.92)},
    T2={"csf": (0.62, 1.30), "gm": (0.44, 0.66), "dgm": (0.28, 0.62), "wm": (0.28, 0.46), "wmh": (0.58, 0.98)},
    FLAIR={"csf": (0.02, 0.36), "gm": (0.48, 0.75), "dgm": (0.42, 0.68), "wm": (0.34, 0.58), "wmh": (0.82, 1.18),
           "rim": (0.68, 0.96)},
)

#: Tissue order each modality keeps (darkest first).
_ORDER = {"T1": ("csf", "gm", "wm"), "T2": ("wm", "gm", "csf"), "FLAIR": ("csf", "wm", "gm")}


@dataclass(frozen=True)
class MimicConfig:
    """How many mimics and how they vary (the module docstring); the defaults are the training ranges.

    Attributes:
        pvs: range of the number of perivascular spaces added to the default ones.
        pvs_mm: range of their diameter (log-uniform).
        p_enlarged: share of them enlarged, with a diameter in ``enlarged_mm``.
        pvs_length_mm: range of their length (at least twice the diameter: a tube, not a ball).
        p_cluster: probability of a cluster of ``cluster_size`` vertical ones in the basal ganglia.
        p_wall: share with a thin FLAIR-bright wall (its strength drawn in ``wall``).
        pockets: range of the number of fluid pockets.
        pocket_mm: range of a pocket's largest diameter.
        pocket_sites: weight of each site of :data:`POCKET_SITES_MM`.
        p_detached: share of pockets cut off from their fluid by a bridge of ``gap_mm`` of tissue.
        tissues: per-structure intensity ranges (None: the default table with its jitter, the deep grey
            nuclei as the cortex).
    """

    pvs: tuple[int, int] = (4, 20)
    pvs_mm: tuple[float, float] = (1.0, 3.0)
    p_enlarged: float = 0.15
    enlarged_mm: tuple[float, float] = (3.0, 5.0)
    pvs_length_mm: tuple[float, float] = (4.0, 25.0)
    p_cluster: float = 0.5
    cluster_size: tuple[int, int] = (3, 8)
    p_wall: float = 0.3
    wall: tuple[float, float] = (0.3, 0.7)
    pockets: tuple[int, int] = (2, 7)
    pocket_mm: tuple[float, float] = (3.0, 10.0)
    pocket_sites: dict[str, float] = field(default_factory=lambda: {
        "frontal horn tip": 1.0, "occipital horn tip": 1.0, "temporal horn": 2.0, "choroid fissure": 1.0,
        "insular cistern": 1.0, "sulcus": 2.0, "cavum septi": 0.5})
    p_detached: float = 0.5
    gap_mm: tuple[float, float] = (0.7, 2.0)
    tissues: TissueRanges | None = field(default_factory=TissueRanges)

    def __post_init__(self) -> None:
        unknown = set(self.pocket_sites) - set(POCKET_SITES_MM)
        if unknown:
            raise ValueError(f"unknown pocket site(s) {sorted(unknown)} (the sites: {', '.join(POCKET_SITES_MM)})")
        for name in ("p_enlarged", "p_cluster", "p_wall", "p_detached"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def draw_means(rng: np.random.Generator, ranges: TissueRanges) -> dict[str, dict[str, float]]:
    """One subject's mean intensity per modality and structure (:class:`TissueRanges`)."""
    out = {}
    for modality, table in (("T1", ranges.T1), ("T2", ranges.T2), ("FLAIR", ranges.FLAIR)):
        means = {k: float(rng.uniform(*r)) for k, r in table.items()}
        order = _ORDER[modality]
        for k, v in zip(order, sorted(means[t] for t in order)):
            means[k] = v
        out[modality] = means
    return out


def deep_grey_weight(gm: np.ndarray) -> np.ndarray:
    """Share of each voxel's grey matter that belongs to the deep nuclei: a smooth ellipsoid around the
    brain's deep centre (the region :func:`lacunes.synthetic._candidate_sites` calls deep)."""
    shape = np.array(gm.shape)
    centre = (shape - 1) / 2
    idx = np.indices(gm.shape, dtype=np.float32)
    rho = (((idx[0] - centre[0]) / (shape[0] * 0.26)) ** 2 + ((idx[1] - centre[1]) / (shape[1] * 0.20)) ** 2
           + ((idx[2] - centre[2] + shape[2] * 0.02) / (shape[2] * 0.20)) ** 2)
    return np.clip(1.6 - rho, 0.0, 1.0).astype(np.float32)


def _frame(direction: np.ndarray) -> np.ndarray:
    """An orthonormal 3×3 matrix whose first column is ``direction``."""
    d = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    return np.stack([d, u, np.cross(d, u)], 1).astype(np.float32)


@dataclass
class _Places:
    """What the mimics are placed with: the phantom's anatomy and where its fluid is."""

    mask: np.ndarray
    gm: np.ndarray
    to_phantom: object  # template mm (RAS) -> phantom voxel
    fluid_distance: np.ndarray  # mm from each voxel to the nearest fluid voxel (CSF > 0.5)
    depth: np.ndarray  # mm from each voxel to the brain's edge
    centre: np.ndarray  # the brain's centre of mass (voxel)


def _places(anat: dict, origin, affine: np.ndarray) -> _Places:
    shape = np.array(anat["mask"].shape, np.float32)
    c = (shape - 1) / 2
    inverse = np.linalg.inv(affine)
    lps = np.asarray(origin, float)

    def to_phantom(ras_mm) -> np.ndarray:
        template_voxel = np.array([ras_mm[0] + lps[0], ras_mm[1] + lps[1], ras_mm[2] - lps[2]])
        return inverse @ (template_voxel - c) + c

    mask = anat["mask"]
    return _Places(mask, anat["gm"], to_phantom, ndi.distance_transform_edt(anat["csf"] < 0.5),
                   ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1],
                   np.argwhere(mask).mean(0))


def _near(places: _Places, target: np.ndarray, radius: float, band: tuple[float, float],
          rng: np.random.Generator) -> np.ndarray | None:
    """A brain voxel within ``radius`` of ``target`` whose distance to fluid lies in ``band`` (mm)."""
    lo = np.maximum(np.floor(target - radius).astype(int), 0)
    hi = np.minimum(np.ceil(target + radius).astype(int) + 1, places.mask.shape)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    d = places.fluid_distance[box]
    ok = places.mask[box] & (d >= band[0]) & (d <= band[1]) & (places.depth[box] > 2.0)
    found = np.argwhere(ok)
    if len(found) == 0:
        return None
    # off the voxel grid, as every lesion's centre (a shape's fraction is undefined at its exact centre)
    return (found[rng.integers(len(found))] + lo + rng.uniform(-0.5, 0.5, 3)).astype(np.float32)


def _sulcus(places: _Places, band: tuple[float, float], rng: np.random.Generator) -> np.ndarray | None:
    """A cortical voxel (within 15 mm of the brain's edge, mostly grey matter) at ``band`` from fluid."""
    for _ in range(40):
        v = np.array([rng.integers(s) for s in places.mask.shape])
        if (places.mask[tuple(v)] and 2.0 < places.depth[tuple(v)] < 15.0 and places.gm[tuple(v)] > 0.4
                and band[0] <= places.fluid_distance[tuple(v)] <= band[1]):
            return (v + rng.uniform(-0.5, 0.5, 3)).astype(np.float32)
    return None


def _clear(centre: np.ndarray, radius: float, taken: list[tuple[np.ndarray, float]], gap: float = 3.0) -> bool:
    return all(np.linalg.norm(centre - t) > radius + r + gap for t, r in taken)


def add_pockets(rng: np.random.Generator, cfg: MimicConfig, places: _Places, fluid: np.ndarray,
                taken: list[tuple[np.ndarray, float]], lesion_cls) -> list:
    """Fluid pockets (the module docstring) painted into ``fluid``; returns their records (``pocket``)."""
    names = list(cfg.pocket_sites)
    weights = np.array([cfg.pocket_sites[n] for n in names], float)
    out = []
    for _ in range(int(rng.integers(cfg.pockets[0], cfg.pockets[1] + 1))):
        site = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        d = float(np.exp(rng.uniform(np.log(cfg.pocket_mm[0]), np.log(cfg.pocket_mm[1]))))
        r = d / 2
        detached = rng.random() < cfg.p_detached
        gap = float(rng.uniform(*cfg.gap_mm))
        band = (r + gap, r + gap + 1.0) if detached else (0.5, 1.5)
        side = 1.0 if rng.random() < 0.5 else -1.0
        if site == "sulcus":
            c = _sulcus(places, band, rng)
        else:
            x, y, z = POCKET_SITES_MM[site]
            x = 0.0 if site == "cavum septi" else side * x
            target = places.to_phantom((x, y, z)) + rng.normal(0.0, 2.5, 3)
            c = _near(places, target, 8.0 + r, band, rng)
        if c is None or not _clear(c, r, taken):
            continue
        if site == "temporal horn":  # a bulb at the tip of a tube running back and up to the horn's body
            body = places.to_phantom((side * _TEMPORAL_HORN_BODY_MM[0], *_TEMPORAL_HORN_BODY_MM[1:]))
            axis = c - body
            radii = np.array([r * rng.uniform(1.2, 1.8), r * rng.uniform(0.6, 0.9), r * rng.uniform(0.5, 0.8)])
            box, frac = _ellipsoid_fraction(fluid.shape, c, radii.astype(np.float32), _frame(axis))
            fluid[box] = np.maximum(fluid[box], frac * places.mask[box])
            tube_r = float(rng.uniform(0.8, max(1.0, 0.6 * r)))
            end = c - axis / max(np.linalg.norm(axis), 1e-6) * (radii[0] + (gap + tube_r if detached else 0.0))
            tbox, tube = _capsule_fraction(fluid.shape, body.astype(np.float32), end.astype(np.float32), tube_r)
            fluid[tbox] = np.maximum(fluid[tbox], tube * places.mask[tbox])
        else:
            if site == "insular cistern":  # thin across, along the insula
                radii, axes = np.array([0.45 * r, r, 0.8 * r]), _rotation(rng, 15.0)
            elif site == "cavum septi":  # a thin midline slab between the frontal horns
                radii, axes = np.array([rng.uniform(0.8, 2.5), 1.4 * r, 0.7 * r]), _rotation(rng, 8.0)
            else:
                radii = np.array([r, r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)])
                axes = _rotation(rng, 90.0)
            box, frac = _ellipsoid_fraction(fluid.shape, c, radii.astype(np.float32), axes.astype(np.float32))
            fluid[box] = np.maximum(fluid[box], frac * places.mask[box])
        taken.append((c, r))
        out.append(lesion_cls("pocket", tuple(float(v) for v in c), tuple(float(2 * v) for v in radii),
                              int((frac >= 0.5).sum()), site=site + (" (detached)" if detached else "")))
    return out


def _one_pvs(rng, cfg: MimicConfig, c: np.ndarray, direction: np.ndarray, d: float, places: _Places,
             fluid: np.ndarray, rim: np.ndarray, lesion_cls):
    length = max(float(rng.uniform(*cfg.pvs_length_mm)), 2.0 * d)
    direction = direction / np.linalg.norm(direction)
    p0, p1 = (c - direction * length / 2).astype(np.float32), (c + direction * length / 2).astype(np.float32)
    box, frac = _capsule_fraction(fluid.shape, p0, p1, d / 2)
    frac *= places.mask[box]
    fluid[box] = np.maximum(fluid[box], frac)
    if rng.random() < cfg.p_wall:  # a thin FLAIR-bright wall, partial-volumed
        wbox, outer = _capsule_fraction(fluid.shape, p0, p1, d / 2 + 0.6)
        inner = np.zeros_like(outer)
        inner[tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(box, wbox))] = frac
        wall = np.clip(outer - inner, 0.0, 1.0) * places.mask[wbox]
        rim[wbox] = np.maximum(rim[wbox], wall * float(rng.uniform(*cfg.wall)))
    return lesion_cls("pvs", tuple(float(v) for v in c), (d, d, length), int((frac >= 0.5).sum()))


def add_pvs(rng: np.random.Generator, cfg: MimicConfig, places: _Places, sites: dict, fluid: np.ndarray,
            rim: np.ndarray, taken: list[tuple[np.ndarray, float]], lesion_cls) -> list:
    """Perivascular spaces that follow the vessels (the module docstring), painted into ``fluid`` (and
    their walls into ``rim``); returns their records (``pvs``)."""
    out = []

    def diameter() -> float:
        if rng.random() < cfg.p_enlarged:
            return float(rng.uniform(*cfg.enlarged_mm))
        return float(np.exp(rng.uniform(np.log(cfg.pvs_mm[0]), np.log(cfg.pvs_mm[1]))))

    def vertical() -> np.ndarray:
        return np.array([0.0, 0.0, 1.0]) + rng.normal(0.0, 0.15, 3)

    deep, wm = sites["deep_gm"], sites["wm"]
    low_deep = deep[deep[:, 2] < places.centre[2] + 4] if len(deep) else deep
    high_wm = wm[wm[:, 2] > places.centre[2] + 8] if len(wm) else wm
    for _ in range(int(rng.integers(cfg.pvs[0], cfg.pvs[1] + 1))):
        d = diameter()
        basal = rng.random() < 0.5
        pool = low_deep if basal and len(low_deep) else high_wm
        if len(pool) == 0:
            continue
        c = pool[rng.integers(len(pool))].astype(np.float32) + rng.uniform(-0.5, 0.5, 3).astype(np.float32)
        if not _clear(c, d, taken, gap=2.0):
            continue
        direction = vertical() if basal else (c - places.centre) + rng.normal(0.0, 3.0, 3)
        out.append(_one_pvs(rng, cfg, c, direction, d, places, fluid, rim, lesion_cls))
        taken.append((c, d / 2))
    if len(low_deep) and rng.random() < cfg.p_cluster:
        centre = low_deep[rng.integers(len(low_deep))].astype(np.float32) + rng.uniform(-0.5, 0.5, 3).astype(np.float32)
        if _clear(centre, 6.0, taken, gap=2.0):
            for _ in range(int(rng.integers(cfg.cluster_size[0], cfg.cluster_size[1] + 1))):
                c = centre + _random_unit(rng).astype(np.float32) * rng.uniform(0.5, 6.0) * np.array([1, 1, 0.4])
                d = float(rng.uniform(1.0, 2.5))
                out.append(_one_pvs(rng, cfg, c, vertical(), d, places, fluid, rim, lesion_cls))
            taken.append((centre, 6.0))
    return out
