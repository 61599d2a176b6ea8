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
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from lacunes.synthetic.acquisition import (
    acquire,
    acquired_spacing,
    acquisition_grids,
    acquisition_record,
    draw_acquisition,
    intensity_curve,
    voxel_profile_sigma,
)
from lacunes.synthetic.anatomy import ANATOMIES, MEASUREMENT_ONLY, _Template, load_anatomy, load_template
from lacunes.synthetic.config import (
    MODALITIES,
    TISSUE_LABELS,
    AcquisitionConfig,
    AnatomyVariation,
    ContrastTable,
    LacuneShapeConfig,
    Lesion,
    Phantom,
    SynthConfig,
)
from lacunes.synthetic.lesions import LesionMaps, add_default_pvs, add_lacunes, add_wmh, candidate_sites
from lacunes.synthetic.mimics import MimicConfig, TissueRanges, add_pockets, add_pvs, deep_grey_weight, draw_means
from lacunes.synthetic.mimics import _places as mimic_places
from lacunes.synthetic.shapes import _rotation, _smooth_field

logger = logging.getLogger(__name__)

__all__ = ["ANATOMIES", "MEASUREMENT_ONLY", "MODALITIES", "TISSUE_LABELS", "AcquisitionConfig", "AnatomyVariation",
           "ContrastTable", "LacuneShapeConfig", "Lesion", "MimicConfig", "Phantom", "SynthConfig", "TissueRanges",
           "acquired_spacing", "acquisition_grids", "acquisition_record", "generate_dataset", "generate_phantom",
           "intensity_curve", "lesion_record", "load_template", "template_points_in_phantom", "voxel_profile_sigma",
           "write_phantom"]


# ----------------------------------------------------------------------------------------------
# Anatomy


def _deform_anatomy(rng: np.random.Generator, cfg: SynthConfig, tpl: _Template, keep_map: bool = False,
                    variation_rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """The anatomy deformed (affine, smooth displacement, ventricle width, sulcal width). ``keep_map``:
    also ``coords``, the template voxel (fractional, ``3×X×Y×Z``) each phantom voxel reads.
    ``variation_rng``: the ``[seed, index, 4]`` stream, required with ``cfg.anatomy_variation``."""
    shape = tpl.gm.shape
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    var = cfg.anatomy_variation
    deformation_mm, ventricle_change, sulcal_atrophy = cfg.deformation_mm, cfg.ventricle_change, cfg.sulcal_atrophy
    # Sampling map: output voxel x reads the template at A (x - c) + c + smooth displacement.
    a = _rotation(rng, cfg.rotation_deg) / rng.uniform(*cfg.scale_range)
    if var is not None:
        if variation_rng is None:
            raise ValueError("anatomy_variation needs its own random stream (variation_rng)")
        a = a @ np.diag(1.0 / variation_rng.uniform(*var.axis_scale, size=3))
        deformation_mm = float(variation_rng.uniform(*var.deformation_mm))
        ventricle_change, sulcal_atrophy = var.ventricle_change, var.sulcal_atrophy
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    coords = (a.astype(np.float32) @ grid) + centre[:, None]
    coords = coords.reshape((3, *shape))
    for d in range(3):
        coords[d] += _smooth_field(rng, shape, 6, deformation_mm)
    # Ventricle width: a radial push around the (deep) centre of the brain. Reading closer to the
    # centre enlarges the central CSF spaces; reading farther shrinks them.
    vc = centre + np.array([0.0, 8.0, 8.0], dtype=np.float32)
    k = rng.uniform(*ventricle_change)
    rel = coords - vc.reshape(3, 1, 1, 1)
    weight = np.exp(-(rel**2).sum(0) / (2 * 22.0**2))
    coords -= k * rel * weight[None]
    del rel, weight, grid
    if keep_map:
        kept = coords.copy()

    out = {}
    for name in ("gm", "wm", "csf", "mask"):
        out[name] = ndi.map_coordinates(getattr(tpl, name), coords, order=1, mode="constant", cval=0.0)
    mask = out["mask"] > 0.5
    # Sulcal width: move part of the cortical grey matter next to CSF into CSF.
    atrophy = rng.uniform(*sulcal_atrophy)
    near_csf = ndi.gaussian_filter(out["csf"], 1.5)
    moved = out["gm"] * np.clip(atrophy * near_csf * 2.0, 0.0, 0.9)
    out["gm"] -= moved
    out["csf"] += moved
    for name in ("gm", "wm", "csf"):
        out[name] = np.where(mask, np.clip(out[name], 0.0, 1.0), 0.0).astype(np.float32)
    out["mask"] = mask
    out["affine"] = a  # template voxel ≈ affine · (phantom voxel - centre) + centre
    if keep_map:
        out["coords"] = kept
    return out


def _variation_rng(seed: int, index: int, cfg: SynthConfig) -> np.random.Generator | None:
    """The stream :class:`AnatomyVariation` draws from (None without it)."""
    return np.random.default_rng([seed, index, 4]) if cfg.anatomy_variation is not None else None


def template_points_in_phantom(seed: int, index: int, ras_mm, config: SynthConfig | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Where points named in the anatomy's scanner millimetres (RAS, ``N×3``: MNI for ``icbm152``) lie in
    the deformed phantom ``(seed, index)``: for each, the phantom voxel (``x, y, z``) that reads the template
    nearest to it, and that distance (mm). Returns ``(voxels N×3, distances N)``."""
    cfg = config or SynthConfig()
    tpl = load_anatomy(cfg.anatomy)
    coords = _deform_anatomy(np.random.default_rng([seed, index]), cfg, tpl, keep_map=True,
                             variation_rng=_variation_rng(seed, index, cfg))["coords"]
    first_ras = np.array([-tpl.origin[0], -tpl.origin[1], tpl.origin[2]])  # the crop's voxel 0 (RAS mm)
    voxels, distances = [], []
    for point in np.atleast_2d(np.asarray(ras_mm, float)):
        target = point - first_ras
        dist = np.sqrt(sum((coords[d] - target[d]) ** 2 for d in range(3)))
        voxel = np.unravel_index(int(np.argmin(dist)), dist.shape)
        voxels.append(voxel)
        distances.append(float(dist[voxel]))
    return np.array(voxels, int), np.array(distances)


# ----------------------------------------------------------------------------------------------
# The phantom


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
        cfg, drawn = draw_acquisition(acq_rng, cfg)
    rng = np.random.default_rng([seed, index])
    tpl = load_anatomy(cfg.anatomy)
    anat = _deform_anatomy(rng, cfg, tpl, variation_rng=_variation_rng(seed, index, cfg))
    shape = anat["mask"].shape
    sites = candidate_sites(anat)

    maps = LesionMaps.empty(shape)
    shape_rng = np.random.default_rng([seed, index, 2]) if cfg.lacune_shapes is not None else None
    lesions = add_lacunes(rng, cfg, sites, maps, shape_rng)
    lesions += add_default_pvs(rng, cfg, sites, maps, anat["mask"])
    lesions += add_wmh(rng, cfg, sites, maps, anat["wm"])
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
        images = acquire(images, drawn)
    return Phantom(sid, images, maps.rater1, maps.rater2, lesions, tissues.astype(np.uint8), origin=tpl.origin,
                   acquisition=drawn)


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
    """Write a phantom in the VALDO layout (plus a ``lesions.json`` sidecar, an ``acquisition.json`` one for a
    randomized acquisition (:func:`acquisition_record`) and an optional PNG)."""
    from lacunes.geometry import Geometry
    from lacunes.writing import atomic_output, write_volume

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
    sidecars = {"lesions": [lesion_record(lesion) for lesion in phantom.lesions]}
    if phantom.acquisition is not None:  # what a randomized acquisition drew (voxel sizes, slices, contrasts)
        sidecars["acquisition"] = acquisition_record(phantom.acquisition)
    for name, record in sidecars.items():  # like the images, never half-written under the final name
        sidecar = out_dir / f"{sid}_space-T1_desc-synthetic_{name}.json"
        with atomic_output(sidecar) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
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
