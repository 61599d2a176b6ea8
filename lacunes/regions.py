"""Where a lesion lies: the subject's scan registered onto the ICBM 2009a template, each lesion's
voxels carried into the template and named by a coarse region set, with its centre in MNI coordinates.

- **Template.** The ICBM 2009a symmetric T1 (skull-stripped, 1 mm) that nilearn ships inside its registry
  package (:func:`nilearn.datasets.load_mni152_template`'s file; © McConnell Brain Imaging Centre, free to
  use, copy and distribute with its notice); its grey- and white-matter probability maps shape the atlas.
- **Registration.** The reference contrast (the T1; the T2 of a ``T2+FLAIR`` subject), as the network saw
  it (stripped), onto the template, with SimpleITK: an affine transform (12 parameters) started from the
  images' centres of mass, Mattes mutual information, three resolutions (shrink 4, 2, 1 of a 2 mm copy of
  the scan); then a light deformable stage: the template carried onto that copy, its histogram matched to
  the scan's, and symmetric-forces demons (two resolutions, :data:`DEMONS_ITERATIONS` iterations, the
  field smoothed by :data:`DEMONS_SMOOTHING` voxels). On deformed phantoms the demons brought the MNI
  error of the affine alone from a median 4.3 mm to 2.5 mm (benchmarks/regions.py). An affine result whose scales leave
  :data:`SCALE_RANGE`, or that ends no better than where it started, is a failed registration: every
  lesion is then "unknown", never a guess (and a QC flag says why). 15-40 s a subject on 2 busy cores
  (the demons about half), spent only on subjects with lesions.
- **Atlas.** Read at run time from Debian's ``mricron-data`` (``apt-get install mricron-data``; the
  folder :data:`ATLAS_DIR`, ``LACUNES_ATLAS_DIR`` overrides), which distributes them under its BSD-3-clause
  terms; nothing is copied into this project: the AAL atlas (Tzourio-Mazoyer et al. 2002) for the deep
  grey nuclei, the cerebellum and the cortex, and the JHU ICBM-DTI-81 white-matter labels (Mori et al.
  2008) for the internal and external capsules and the brainstem's tracts. Without them every lesion's
  region is "unknown" (its MNI centre is still given).
- **Coarse regions** (:data:`REGIONS`), each template voxel named once, in this order of precedence:
  internal capsule (JHU), thalamus, basal ganglia (caudate, putamen, pallidum; AAL), external capsule
  (JHU), brainstem (JHU's brainstem tracts, and the brain AAL leaves unlabelled below z = -8 mm within
  16 mm of the midline),
  cerebellum (AAL, JHU's middle and inferior cerebellar peduncles), then the cerebral white matter:
  periventricular (within :data:`PERIVENTRICULAR_MM` of the lateral ventricles), lobar / juxtacortical
  (within :data:`JUXTACORTICAL_MM` of AAL's cortex, and the cortex itself), corona radiata / centrum
  semiovale (the rest of the deep white matter); "other" for the rest of the brain (CSF spaces). The
  lateral ventricles: the template's fluid (neither grey nor white matter over 0.5) in the central box.
  The JHU labels' names say left and right the other way round from the file's RAS grid here: sides are
  taken from the MNI x coordinate, never from a label's name.
  A lesion is named by the region holding most of its voxels, with that share; its side by its MNI x.

Coordinates: MNI millimetres towards the right, anterior and superior (the template's).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from lacunes.geometry import Geometry, register_mutual_information, to_sitk
from lacunes.instances import RAS_FROM_LPS

logger = logging.getLogger(__name__)

#: Where Debian's mricron-data puts its atlases (``LACUNES_ATLAS_DIR`` overrides).
ATLAS_DIR = Path("/usr/share/mricron/templates")
AAL_FILE, JHU_FILE = "aal.nii.gz", "JHU-WhiteMatter-labels-1mm.nii.gz"
TEMPLATE = "ICBM 2009a symmetric (nilearn)"
ATLASES = "AAL and JHU ICBM-DTI-81 white-matter labels (Debian mricron-data)"

#: The coarse region set (STRIVE / MARS-like), in the order of precedence of :func:`region_atlas`.
REGIONS = ("internal capsule", "thalamus", "basal ganglia", "external capsule", "brainstem", "cerebellum",
           "periventricular white matter", "lobar / juxtacortical", "corona radiata / centrum semiovale", "other")
UNKNOWN = "unknown"
OUTSIDE = "outside the brain"
#: A lesion centre within this distance (mm) of the MNI midline is on the midline, else right or left.
MIDLINE_MM = 2.0
#: White matter within this distance (mm) of the lateral ventricles is periventricular.
PERIVENTRICULAR_MM = 6.0
#: White matter within this distance (mm) of the cortex is juxtacortical.
JUXTACORTICAL_MM = 4.0
#: An affine transform onto the template whose scale along any axis leaves this range failed.
SCALE_RANGE = (0.7, 1.45)
#: The deformable stage: demons iterations per resolution and the field's smoothing (voxels of 2 mm).
DEMONS_ITERATIONS = 100
DEMONS_SMOOTHING = 2.5

# AAL labels (aal.nii.txt): 71-76 caudate, putamen, pallidum; 77-78 thalamus; 91-116 cerebellum and vermis;
# the rest of 1-90 cortex (with hippocampus and amygdala). JHU ICBM-DTI-81 (its .txt): see _JHU_*.
_AAL_BASAL, _AAL_THALAMUS, _AAL_CEREBELLUM = range(71, 77), (77, 78), range(91, 117)
_JHU_INTERNAL_CAPSULE = range(17, 23)  # anterior limb, posterior limb, retrolenticular part
_JHU_EXTERNAL_CAPSULE = (33, 34)
_JHU_BRAINSTEM = (2, 7, 8, 9, 10, 13, 14, 15, 16)  # pontine crossing, corticospinal, medial lemniscus, SCP, peduncles
_JHU_CEREBELLUM = (1, 11, 12)  # middle and inferior cerebellar peduncles


class AtlasUnavailable(RuntimeError):
    """The template or the atlas cannot be read (the message names the file and the package)."""


def atlas_dir() -> Path:
    return Path(os.environ.get("LACUNES_ATLAS_DIR", ATLAS_DIR))


@dataclass(frozen=True)
class Template:
    """The template (a float32 T1 on its grid) and its coarse region atlas (indices into :data:`REGIONS`,
    1-based; 0 outside the brain) on the same grid; ``affine``: voxel index -> MNI mm (RAS)."""

    t1: np.ndarray
    regions: np.ndarray | None
    affine: np.ndarray

    @property
    def geometry(self) -> Geometry:
        """The template's grid as SimpleITK reads it (LPS)."""
        origin = self.affine[:3, 3] * RAS_FROM_LPS
        direction = np.diag(np.diag(self.affine[:3, :3]) / np.abs(np.diag(self.affine[:3, :3])) * RAS_FROM_LPS)
        return Geometry(tuple(self.t1.shape), tuple(float(v) for v in np.abs(np.diag(self.affine[:3, :3]))),
                        tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel()))


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The template and (where its files are there) the coarse region atlas. Raises
    :class:`AtlasUnavailable` without nilearn's template."""
    try:
        import nibabel as nib
        from nilearn import datasets
    except ImportError as exc:
        raise AtlasUnavailable(f"the template needs nibabel and nilearn (pip install nilearn): {exc}") from None
    image = nib.load(datasets.MNI152_FILE_PATH)
    affine = np.asarray(image.affine, float)
    if not np.allclose(affine[:3, :3], np.eye(3)):  # pragma: no cover - nilearn's files are 1 mm RAS
        raise AtlasUnavailable(f"{datasets.MNI152_FILE_PATH}: expected a 1 mm RAS grid")
    t1 = np.asarray(image.dataobj, np.float32)
    grey = np.asarray(nib.load(datasets.GM_MNI152_FILE_PATH).dataobj, np.float32) / 255.0
    white = np.asarray(nib.load(datasets.WM_MNI152_FILE_PATH).dataobj, np.float32) / 255.0
    try:
        regions = region_atlas(t1 > 0, grey, white, affine)
    except AtlasUnavailable as exc:
        logger.warning("lesion regions unknown: %s", exc)
        regions = None
    return Template(t1=t1, regions=regions, affine=affine)


def _labels_on(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """A label atlas (NIfTI, MNI mm) read onto the template's grid, nearest neighbour; 0 outside it."""
    import nibabel as nib

    if not path.is_file():
        raise AtlasUnavailable(f"no atlas at {path}: apt-get install mricron-data (or set LACUNES_ATLAS_DIR)")
    image = nib.load(str(path))
    labels = np.asarray(image.dataobj).astype(np.int16)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    to_atlas = np.linalg.inv(image.affine) @ affine
    index = np.rint(to_atlas[:3, :3] @ grid + to_atlas[:3, 3:]).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.array(labels.shape)[:, None]), axis=0)
    out = np.zeros(grid.shape[1], np.int16)
    out[inside] = labels[tuple(index[:, inside])]
    return out.reshape(shape)


def region_atlas(brain: np.ndarray, grey: np.ndarray, white: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The coarse region atlas on the template's grid (the module docstring): uint8, 1-based indices into
    :data:`REGIONS`, 0 outside ``brain``. Raises :class:`AtlasUnavailable` without the atlas files."""
    aal = _labels_on(atlas_dir() / AAL_FILE, brain.shape, affine)
    jhu = _labels_on(atlas_dir() / JHU_FILE, brain.shape, affine)
    mm = np.stack(np.meshgrid(*[affine[d, d] * np.arange(n) + affine[d, 3] for d, n in enumerate(brain.shape)],
                              indexing="ij"))
    out = np.zeros(brain.shape, np.uint8)
    free = brain.copy()

    def take(name: str, where: np.ndarray) -> None:
        sel = where & free
        out[sel] = REGIONS.index(name) + 1
        free[sel] = False

    take("internal capsule", np.isin(jhu, _JHU_INTERNAL_CAPSULE))
    take("thalamus", np.isin(aal, _AAL_THALAMUS))
    take("basal ganglia", np.isin(aal, _AAL_BASAL))
    take("external capsule", np.isin(jhu, _JHU_EXTERNAL_CAPSULE))
    cerebellum = np.isin(aal, _AAL_CEREBELLUM) | np.isin(jhu, _JHU_CEREBELLUM)
    low_midline = (aal == 0) & (mm[2] < -8) & (np.abs(mm[0]) < 16) & (mm[1] > -48) & (mm[1] < -5)
    take("brainstem", np.isin(jhu, _JHU_BRAINSTEM) | (low_midline & ~cerebellum))
    take("cerebellum", cerebellum)
    csf = brain & (grey < 0.5) & (white < 0.5)
    central = (np.abs(mm[0]) < 35) & (mm[1] > -50) & (mm[1] < 40) & (mm[2] > -5) & (mm[2] < 40)
    parts, n = ndi.label(csf & central)
    sizes = np.bincount(parts.ravel(), minlength=n + 1)
    ventricles = np.isin(parts, np.flatnonzero(sizes >= 1000)) & (parts > 0)
    cortex = (aal >= 1) & (aal <= 90) & ~np.isin(aal, [*_AAL_BASAL, *_AAL_THALAMUS])
    matter = white >= grey
    if ventricles.any():
        take("periventricular white matter", matter & (ndi.distance_transform_edt(~ventricles) <= PERIVENTRICULAR_MM))
    take("lobar / juxtacortical", (cortex & ~matter) | (matter & (ndi.distance_transform_edt(~(cortex & ~matter))
                                                                  <= JUXTACORTICAL_MM)))
    take("corona radiata / centrum semiovale", matter)
    take("other", free)
    return out


# ---------------------------------------------------------------------------------------------- registration


def register_to_template(array: np.ndarray, geometry: Geometry, name: str = "scan", deformable: bool = True
                         ) -> tuple[dict, object | None]:
    """A scan (skull-stripped) registered onto the template (the module docstring). Returns its record —
    the affine stage's ``matrix``, ``translation_mm`` and ``centre_mm`` (from the scan's scanner points,
    LPS, to the template's), the metric before and after, the scales, the deformable stage, whether it is
    ``usable`` (and ``why`` not), seconds — and the transform from the scan's points to the template's (a
    SimpleITK transform; None where not usable)."""
    import SimpleITK as sitk

    start = time.perf_counter()
    tpl = load_template()
    fixed = sitk.Cast(to_sitk(np.asarray(array, np.float32), geometry), sitk.sitkFloat32)
    fixed = sitk.Resample(fixed, _grid_2mm(fixed), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    moving = sitk.Cast(to_sitk(tpl.t1, tpl.geometry), sitk.sitkFloat32)
    record: dict = {"method": "affine, Mattes mutual information, 3 levels (SimpleITK)", "template": TEMPLATE}
    try:
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
        affine, before, after, stop = register_mutual_information(
            fixed, moving, initial, sitk.AffineTransform, sampling=0.2, learning_rate=1.0, min_step=1e-4,
            iterations=300, smoothing_mm=(4.0, 2.0, 0.0), fixed_mask=sitk.Cast(fixed > 0, sitk.sitkUInt8))
    except RuntimeError as exc:
        record.update(usable=False, why=f"{name}: registration onto the template failed "
                                        f"({str(exc).strip().splitlines()[-1]})", seconds=round(time.perf_counter() - start, 1))
        return record, None
    matrix = np.asarray(affine.GetMatrix(), float).reshape(3, 3)
    scales = np.linalg.svd(matrix, compute_uv=False)
    record.update(matrix=[round(float(v), 6) for v in matrix.ravel()],
                  translation_mm=[round(float(v), 4) for v in affine.GetTranslation()],
                  centre_mm=[round(float(v), 4) for v in affine.GetCenter()],
                  metric_before=round(float(before), 4), metric_after=round(float(after), 4),
                  scales=[round(float(s), 3) for s in scales], stop=stop)
    why = ""
    if not after < before:
        why = "registration onto the template did not improve on its start"
    elif scales.min() < SCALE_RANGE[0] or scales.max() > SCALE_RANGE[1]:
        why = (f"registration onto the template ended with scales {scales.min():.2f}-{scales.max():.2f} (outside "
               f"{SCALE_RANGE[0]}-{SCALE_RANGE[1]})")
    if why:
        record.update(usable=False, why=f"{name}: {why}", seconds=round(time.perf_counter() - start, 1))
        return record, None
    transform = affine
    if deformable:
        t0 = time.perf_counter()
        transform = sitk.CompositeTransform([affine, _demons(fixed, sitk.Resample(
            moving, fixed, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32))])
        record["deformable"] = {"method": f"symmetric-forces demons, 2 levels, {DEMONS_ITERATIONS} iterations, "
                                          f"smoothing {DEMONS_SMOOTHING} voxels (SimpleITK)",
                                "seconds": round(time.perf_counter() - t0, 1)}
    record.update(usable=True, seconds=round(time.perf_counter() - start, 1))
    return record, transform


def _demons(fixed, moving):
    """A displacement field (on ``fixed``'s grid) carrying ``fixed``'s points onto ``moving``'s, whose
    histogram is first matched to ``fixed``'s: demons at half and full resolution."""
    import SimpleITK as sitk

    moving = sitk.HistogramMatching(moving, fixed, 256, 15, True)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(DEMONS_ITERATIONS)
    demons.SetStandardDeviations(DEMONS_SMOOTHING)
    field = demons.Execute(sitk.Shrink(fixed, [2] * 3), sitk.Shrink(moving, [2] * 3))
    field = sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
    field = demons.Execute(fixed, moving, field)
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def _grid_2mm(image):
    """A grid over ``image``'s extent with 2 mm voxels (at least the image's own spacing)."""
    import SimpleITK as sitk

    spacing = [max(2.0, s) for s in image.GetSpacing()]
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([(t / s - 1) / 2 for s, t in
                                                                  zip(image.GetSpacing(), spacing)]))
    return grid


# ---------------------------------------------------------------------------------------------- lesions


class Locator:
    """Names lesions of one subject (:func:`lacunes.instances.lesion_table`'s ``locate``): given a lesion's
    voxel indices (``N×3``) on ``geometry``'s grid, its region, the share of its voxels there, its side and
    its MNI centre. Without a transform (a failed or skipped registration) every lesion is "unknown"."""

    def __init__(self, transform, geometry: Geometry):
        self.transform, self.geometry = transform, geometry
        self.template = load_template() if transform is not None else None

    def mni(self, indices: np.ndarray) -> np.ndarray:
        """MNI mm (RAS, ``N×3``) of voxel indices of the subject's grid."""
        points = self.geometry.physical(np.atleast_2d(np.asarray(indices, float)))
        return np.array([self.transform.TransformPoint(tuple(float(v) for v in p)) for p in points]) * RAS_FROM_LPS

    def __call__(self, indices: np.ndarray) -> dict:
        if self.transform is None:
            return unknown()
        mni = self.mni(indices)
        centre = mni.mean(axis=0)
        region, share = UNKNOWN, float("nan")
        atlas = self.template.regions
        if atlas is not None:
            index = np.rint((mni - self.template.affine[:3, 3]) / np.diag(self.template.affine[:3, :3])).astype(int)
            inside = np.all((index >= 0) & (index < np.array(atlas.shape)), axis=1)
            codes = np.zeros(len(index), int)
            codes[inside] = atlas[tuple(index[inside].T)]
            counts = np.bincount(codes, minlength=len(REGIONS) + 1)
            best = int(np.argmax(counts))
            region = OUTSIDE if best == 0 else REGIONS[best - 1]
            share = round(float(counts[best]) / len(codes), 2)
        side = "right" if centre[0] > MIDLINE_MM else "left" if centre[0] < -MIDLINE_MM else "midline"
        return {"region": region, "region_share": share, "side": side,
                "mni_R_mm": round(float(centre[0]), 1) + 0.0, "mni_A_mm": round(float(centre[1]), 1) + 0.0,
                "mni_S_mm": round(float(centre[2]), 1) + 0.0}


def region_map(transform, geometry: Geometry) -> np.ndarray | None:
    """The coarse region atlas carried onto a subject's grid through its registration (nearest neighbour):
    uint8, 1-based indices into :data:`REGIONS`, 0 outside the template's brain; None without a transform or
    an atlas. What the lesions were named by, for the report's picture and the user's own regional counts."""
    import SimpleITK as sitk

    if transform is None:
        return None
    tpl = load_template()
    if tpl.regions is None:
        return None
    atlas = to_sitk(tpl.regions, tpl.geometry)
    grid = to_sitk(np.zeros(geometry.shape, np.uint8), geometry)
    out = sitk.Resample(atlas, grid, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0))


#: The lesion table's columns added by a :class:`Locator`.
COLUMNS = ("region", "region_share", "side", "mni_R_mm", "mni_A_mm", "mni_S_mm")


def unknown() -> dict:
    """A lesion's region columns where it cannot be placed."""
    return {"region": UNKNOWN, "region_share": float("nan"), "side": "",
            "mni_R_mm": float("nan"), "mni_A_mm": float("nan"), "mni_S_mm": float("nan")}


def statement() -> str:
    """One line for a run's banner, without loading anything: what lesions will be placed through, or what
    is missing."""
    import importlib.util

    if importlib.util.find_spec("nilearn") is None:
        return "unknown (no nilearn: pip install nilearn, whose wheel holds the template)"
    missing = [f for f in (AAL_FILE, JHU_FILE) if not (atlas_dir() / f).is_file()]
    if missing:
        return (f"MNI centres only, regions unknown (no {', '.join(missing)} in {atlas_dir()}: "
                "apt-get install mricron-data, or set LACUNES_ATLAS_DIR)")
    return f"each lesion named through the {TEMPLATE} template and the {ATLASES}"


def summary(record: dict | None) -> str:
    """One line for the log and the report: ``lesions placed through the template (affine and demons, scales
    0.97-1.03, 21 s)``, or why they were not."""
    if not record:
        return ""
    if not record.get("usable"):
        return f"regions unknown: {record.get('why', 'no registration')}"
    return (f"lesions placed through the template ({'affine and demons' if 'deformable' in record else 'affine'}, scales "
            f"{min(record['scales']):.2f}-{max(record['scales']):.2f}, {record['seconds']:.0f} s)")
