"""A phantom "acquired" the way real scans differ (:class:`lacunes.synthetic.config.AcquisitionConfig`):
another voxel size, thick-slice T2 and FLAIR resampled onto the T1, other contrasts and intensity curves,
bias and noise; drawn per subject (:func:`draw_acquisition`), applied to the rendered 1 mm images and
brought back to 1 mm as inference conforms a scan (:func:`acquire`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from lacunes.synthetic.config import MODALITIES, ContrastTable, SynthConfig

#: Tissue order each modality keeps whatever contrast is drawn (darkest first).
_TISSUE_ORDER = {"T1": ("csf", "gm", "wm"), "T2": ("wm", "gm", "csf"), "FLAIR": ("csf", "wm", "gm")}


def draw_acquisition(rng: np.random.Generator, cfg: SynthConfig) -> tuple[SynthConfig, dict]:
    """Draw one subject's acquisition (:class:`AcquisitionConfig`): the generator's settings for its
    contrasts, bias and noise, and what :func:`acquire` does to the rendered images."""
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
    t1 = grid_with_spacing(native, acquired_spacing(drawn, "T1"))
    return native, grid_with_spacing(native, acquired_spacing(drawn, modality)), t1


def acquired_spacing(drawn: dict, modality: str) -> tuple[float, float, float]:
    """The voxel size (mm, per array axis) a modality of a drawn acquisition was acquired at: the subject's
    voxel size, and the slice thickness across the slices of a thick-slice T2 or FLAIR."""
    voxel = [float(drawn["voxel_mm"])] * 3
    if drawn["thick"] is not None and modality != "T1":
        voxel[drawn["thick"]["axis"]] = max(voxel[drawn["thick"]["axis"]], float(drawn["thick"]["mm"]))
    return tuple(voxel)


def acquisition_record(drawn: dict) -> dict:
    """A drawn acquisition as the phantom's ``desc-synthetic_acquisition.json`` sidecar stores it: what was
    drawn, and each modality's acquired voxel size (``acquired_spacing_mm``) — the voxel size its header
    would state had the scan not been brought back to 1 mm."""
    return {"acquired_spacing_mm": {m: list(acquired_spacing(drawn, m)) for m in MODALITIES}, **drawn}


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


def acquire(images: dict[str, np.ndarray], drawn: dict) -> dict[str, np.ndarray]:
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


#: The axes of a sagittal stack in a RAS-ordered head's frame (rows: the stored grid's axes), and a coronal one.
SAGITTAL_AXES = ((0, 1, 0), (0, 0, 1), (1, 0, 0))
CORONAL_AXES = ((1, 0, 0), (0, 0, 1), (0, 1, 0))


def moved_scan(array: np.ndarray, geometry, angles_deg, translation_mm, spacing=(3.0, 1.0, 1.0), axes=SAGITTAL_AXES):
    """``array`` (on ``geometry``, :class:`lacunes.geometry.Geometry`) as a scan of the same head taken after
    it moved — a rigid transform about the grid's centre, ``angles_deg`` about each axis and
    ``translation_mm`` — and stored on another grid: ``axes`` (rows: the new grid's axes in the old grid's
    frame; a sagittal stack by default) with voxels of ``spacing`` mm, over the same extent, linear.

    Returns the array, its geometry and the SimpleITK transform from the reference's frame to the moved
    scan's (what a rigid registration of the moved scan onto the reference recovers, to compare with)."""
    import SimpleITK as sitk

    from lacunes.geometry import Geometry, to_sitk

    image = to_sitk(np.asarray(array, np.float32), geometry)
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    truth = sitk.Euler3DTransform(centre, *np.radians(angles_deg), tuple(float(t) for t in translation_mm))
    rows = np.asarray(axes, float)
    direction = np.asarray(geometry.direction, float).reshape(3, 3) @ rows.T
    extent = np.asarray(geometry.spacing, float) * np.asarray(geometry.shape, float)
    size = [int(np.ceil(np.abs(rows[i]) @ extent / spacing[i])) for i in range(3)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(tuple(float(s) for s in spacing))
    grid.SetDirection(tuple(direction.ravel()))
    middle = np.array(grid.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size]))
    grid.SetOrigin(tuple(np.array(centre) - middle))
    out = sitk.Resample(image, grid, truth.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0)), Geometry.from_image(out), truth


def registration_error_mm(record: dict, truth, points_mm: np.ndarray) -> np.ndarray:
    """How far a registration's rigid transform (``record``: :func:`lacunes.preparation.register_rigid`'s,
    rotation about the reference grid's centre) puts scanner points ``points_mm`` (LPS, ``N×3``) from
    where the true transform (:func:`moved_scan`'s) puts them, in mm."""
    import SimpleITK as sitk

    found = sitk.Euler3DTransform(truth.GetCenter(), *np.radians(record["rotation_deg"]),
                                  tuple(float(t) for t in record["translation_mm"]))
    return np.array([np.linalg.norm(np.subtract(found.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p))))
                     for p in np.asarray(points_mm, float)])
