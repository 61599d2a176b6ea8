"""What the generator is asked (:class:`SynthConfig` and the configurations it holds) and what it returns
(:class:`Phantom`, its :class:`Lesion` records)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lacunes import options
from lacunes.synthetic.anatomy import ANATOMIES
from lacunes.synthetic.mimics import BROAD_TISSUES, MimicConfig

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
class AnatomyVariation:
    """How much more a phantom's anatomy varies (``SynthConfig.anatomy_variation``) than the default
    generator lets it: the one template deformed into shapes it does not have, so that a network meets
    ventricles, horns and sulci of other sizes and places (another anatomy stays out of training).

    The strength of the smooth displacement and a scaling per axis are drawn per subject from a stream of
    their own (``[seed, index, 4]``); the ventricle and sulcal ranges replace :class:`SynthConfig`'s, drawn
    from the same numbers. So every other draw of the phantom (rotation, lesions, mimics, acquisition) is the
    one it makes without it; only where the anatomy puts them changes.

    Attributes:
        deformation_mm: range of the smooth displacement's standard deviation (default generator: 2.5).
        axis_scale: range of a scaling factor per array axis, on top of the isotropic one (a narrower, shorter
            or flatter head; at most 5 % larger, for the template's field of view cuts off a brain grown more).
        ventricle_change: range of the ventricles' widening (default generator: -0.15 to 0.35).
        sulcal_atrophy: range of the sulci's widening (default generator: 0 to 0.35).
    """

    deformation_mm: tuple[float, float] = (2.5, 6.0)
    axis_scale: tuple[float, float] = (0.88, 1.05)
    ventricle_change: tuple[float, float] = (-0.2, 0.6)
    sulcal_atrophy: tuple[float, float] = (0.0, 0.5)

    def __post_init__(self) -> None:
        # (lowest allowed, highest allowed, whether the bounds themselves are allowed) per range: a
        # ventricle widening of 1 or more folds the anatomy over itself (the push is x (1 - k e^(-r²/2σ²))).
        bounds = {"deformation_mm": (0.0, 20.0, True), "axis_scale": (0.5, 2.0, True),
                  "ventricle_change": (-1.0, 1.0, False), "sulcal_atrophy": (0.0, 1.0, True)}
        for name, (low, high, closed) in bounds.items():
            lo, hi = getattr(self, name)
            inside = (low <= lo and hi <= high) if closed else (low < lo and hi < high)
            if not (lo <= hi and inside):
                brackets = "[]" if closed else "()"
                raise ValueError(f"anatomy_variation.{name} must be a range (min <= max) within "
                                 f"{brackets[0]}{low}, {high}{brackets[1]}, got {(lo, hi)}")


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
        anatomy_variation: the anatomy deformed further (:class:`AnatomyVariation`); None = the ranges
            above (the held-out benchmark, the families and the sample case).
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
    anatomy_variation: AnatomyVariation | None = None

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

    @classmethod
    def from_options(cls, *, acquisitions: bool = False, lacune_shapes: bool = False, mimics: bool = False,
                     anatomy_variation: bool = False, lacune_free: bool = False,
                     broad_tissues: bool = False) -> SynthConfig | None:
        """The generator's parameters for the on/off options of ``lacunes synth`` and ``lacunes train
        --synthetic`` (each switches on its default ranges; ``broad_tissues``, with ``mimics`` only, draws
        the tissue means from :data:`lacunes.synthetic.mimics.BROAD_TISSUES`); None where every option is
        off (the defaults: the held-out benchmark, the families and the sample case)."""
        if broad_tissues and not mimics:
            raise ValueError("broad tissue ranges are drawn with the mimics' per-structure intensities: "
                             "add the mimics option (--mimics)")
        if not (acquisitions or lacune_shapes or mimics or anatomy_variation or lacune_free):
            return None
        return cls(acquisition=AcquisitionConfig() if acquisitions else None,
                   lacune_shapes=LacuneShapeConfig() if lacune_shapes else None,
                   mimics=(MimicConfig(tissues=BROAD_TISSUES) if broad_tissues else MimicConfig()) if mimics else None,
                   anatomy_variation=AnatomyVariation() if anatomy_variation else None,
                   p_no_lacune=1.0 if lacune_free else cls.p_no_lacune)


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
