"""Second stage: re-score each candidate lesion the network proposes, as two-stage lacune detectors do.

Candidates are the 26-connected components of the raw probability map (mean over the TTA variants)
at ``candidate_threshold``, inside the brain. Each is described by a few numbers that a reader of
the scan would look at (:data:`FEATURES`): its size and shape, the network's confidence, its signal on
T1/T2/FLAIR against its surroundings, a FLAIR rim, its depth under the brain's edge, how much fluid
lies around it (ventricles, sulci) and how much fluid it connects to (a lacune is a cavity of its own; a
ventricle's horn or a sulcus runs on). A logistic regression on a set of these (standardized) features
gives each candidate a score; candidates scoring under ``min_score`` are set to probability 0.

Five sets: :data:`FEATURES` (the first, kept for the rescorers fitted on it), :data:`SCALE_FREE_FEATURES`
(new fits' default): no intensity inside the candidate on the normalized scale (which one generator's
tissue table sets), only contrasts with its surroundings, shape, size, depth and the fluid it joins;
:data:`FLUID_RELATIVE_FEATURES`: the same with each contrast (and the FLAIR rim) divided by the subject's
own fluid-to-brain contrast, so that a scan whose fluid is less contrasted moves both together;
:data:`RIM_GAIN_FEATURES`: those with the rim clipped at 0, so that a rim darker than the tissue beyond it
(a thin gliotic rim averaged into the cavity by coarse voxels or thick slices) does not count against a
lacune; and :data:`RIM_FAR_FEATURES`: the rim taken 1-2 voxels out against the tissue 4-5 voxels out, beyond
the reach of the cavity's and the rim's blur.

The regression is fitted on the network's own candidates on labelled training subjects (a candidate
is positive when it touches a labelled lesion): images, labels and the network's outputs only, so the
same procedure works on real data. It is stored in the checkpoint as plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from lacunes.instances import label_instances
from lacunes.options import DEFAULT_THRESHOLD, MODALITIES

FLAIR = MODALITIES.index("FLAIR")  # the channel of the rim feature

FEATURES = (
    "log_volume_mm3",  # log of the candidate's volume
    "max_probability",
    "mean_probability",
    *(m.lower() for m in MODALITIES),  # mean normalized intensity inside: t1, t2, flair
    *(f"{m.lower()}_contrast" for m in MODALITIES),  # inside minus a shell 1-2 voxels out
    "flair_rim",  # FLAIR 1 voxel out minus FLAIR 2-3 voxels out (a gliotic rim is brighter)
    "log_elongation",  # log ratio of the largest to the smallest principal extent
    "major_extent_mm",  # standard deviation along the principal axis
    "depth_mm",  # distance from the centre to the brain's edge
    "fluid_around",  # share of fluid-like voxels (dark T1, bright T2) within 4 voxels, candidate excluded
)
#: The contrasts measured against the subject's own fluid: each ``<m>_contrast`` divided by how far the
#: subject's fluid-like voxels lie from its brain's median on that contrast (1: the candidate stands out of
#: its surroundings as the subject's CSF stands out of its brain), and ``flair_rim`` by the same FLAIR span.
RELATIVE_FEATURES = (*(f"{m.lower()}_relative_contrast" for m in MODALITIES), "flair_rim_relative")
#: Every feature :func:`candidate_features` computes: :data:`FEATURES` and those added since.
ALL_FEATURES = (
    *FEATURES,
    "log_fluid_joined_mm3",  # log(1 + fluid-like volume connected to the candidate, the candidate excluded)
    *RELATIVE_FEATURES,
    "flair_rim_gain",  # max(flair_rim_relative, 0): a bright rim counts for a lacune, a dark one not against it
    "flair_rim_far_relative",  # FLAIR 1-2 voxels out minus FLAIR 4-5 voxels out, over the fluid's FLAIR span
)
#: The FLAIR rims added after the fluid-relative set: no set before them weighs them.
_LATER_RIMS = ("flair_rim_gain", "flair_rim_far_relative")
#: The default set of a new fit (the module docstring).
SCALE_FREE_FEATURES = tuple(f for f in ALL_FEATURES if f not in ("t1", "t2", "flair", *RELATIVE_FEATURES, *_LATER_RIMS))
#: The contrasts of :data:`SCALE_FREE_FEATURES` replaced by their share of the subject's own fluid contrast
#: (:data:`RELATIVE_FEATURES`): a scan whose fluid is less contrasted than the training phantoms' (another
#: sequence, another field strength) moves its lacunes' contrasts and its CSF's together.
FLUID_RELATIVE_FEATURES = tuple(
    f for f in ALL_FEATURES
    if f not in ("t1", "t2", "flair", "flair_rim", *_LATER_RIMS, *(f"{m.lower()}_contrast" for m in MODALITIES)))
#: :data:`FLUID_RELATIVE_FEATURES` with the FLAIR rim counting only for a lacune (``flair_rim_gain``): voxels
#: or slices coarser than a thin gliotic rim average it into the cavity's dark signal, and a rim below its
#: surroundings then says nothing against a lacune (benchmarks/second_stage.py on the wide family).
RIM_GAIN_FEATURES = tuple("flair_rim_gain" if f == "flair_rim_relative" else f for f in FLUID_RELATIVE_FEATURES)
#: :data:`FLUID_RELATIVE_FEATURES` with the FLAIR rim read against the tissue beyond its reach
#: (``flair_rim_far_relative``: 1-2 voxels out against 4-5 voxels out) instead of 1 voxel out against 2-3:
#: coarse voxels or thick slices spread a thin bright rim over the first rings and the cavity's dark signal
#: into the first, so that the first ring can fall under the next ones while both still stand above the
#: tissue further out; a fluid pocket or a perivascular space has no rim at any distance.
RIM_FAR_FEATURES = tuple("flair_rim_far_relative" if f == "flair_rim_relative" else f for f in FLUID_RELATIVE_FEATURES)
#: The span of one contrast under which it counts as absent (a channel of zeros): its relative features are 0.
MIN_FLUID_SPAN = 1e-3
#: How far (voxels) the fluid joined to a candidate is followed from it: a ventricle or a sulcus fills it.
FLUID_REACH = 12


def candidate_features(probability: np.ndarray, image: np.ndarray, brain: np.ndarray | None,
                       spacing: tuple[float, float, float], threshold: float
                       ) -> tuple[np.ndarray, int, np.ndarray]:
    """Candidates of ``probability >= threshold`` (inside ``brain``) and their features.

    Args:
        probability: raw probability (x, y, z).
        image: the normalized ``C×X×Y×Z`` input (:data:`lacunes.options.MODALITIES`).
        brain: the brain mask, or None.
        spacing: voxel size, mm.

    Returns:
        The label map (0 = background), the number of candidates and an ``n×len(ALL_FEATURES)`` array.
    """
    candidate = probability >= threshold
    if brain is not None:
        candidate &= brain
    labels, n = label_instances(candidate)
    feats = np.zeros((n, len(ALL_FEATURES)), np.float64)
    if n == 0:
        return labels, 0, feats
    inside_brain = brain if brain is not None else (image != 0).any(0)
    depth = EdgeDistance(inside_brain, spacing)
    t1, t2 = image[0], image[1]
    q1 = np.quantile(t1[inside_brain], 0.25) if inside_brain.any() else 0.0
    q2 = np.quantile(t2[inside_brain], 0.75) if inside_brain.any() else 0.0
    fluid = inside_brain & (t1 <= q1) & (t2 >= q2)
    span = np.zeros(len(MODALITIES))  # the subject's fluid against its brain, per contrast
    if fluid.any():
        span = np.array([np.median(c[fluid]) - np.median(c[inside_brain]) for c in image])
    span[np.abs(span) < MIN_FLUID_SPAN] = np.inf  # an absent contrast: relative features 0
    spacing_a = np.asarray(spacing, float)
    voxel = float(np.prod(spacing_a))
    ball = ndi.generate_binary_structure(3, 1)
    for k, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        pad = 5
        big = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, dim)) for s, dim in zip(box, labels.shape))
        far = tuple(slice(max(s.start - FLUID_REACH, 0), min(s.stop + FLUID_REACH, dim))
                    for s, dim in zip(box, labels.shape))
        comp = labels[big] == k + 1
        d1 = ndi.binary_dilation(comp, ball, iterations=1)
        d2 = ndi.binary_dilation(d1, ball, iterations=1)
        d3 = ndi.binary_dilation(d2, ball, iterations=1)
        d4 = ndi.binary_dilation(d3, ball, iterations=1)
        d5 = ndi.binary_dilation(d4, ball, iterations=1)
        inb = inside_brain[big]
        shell = d2 & ~comp & inb
        ring1 = d1 & ~comp & inb
        ring23 = d3 & ~d1 & inb
        around = d4 & ~comp & inb
        ring45 = d5 & ~d3 & inb
        img = image[(slice(None), *big)]
        p = probability[big][comp]
        vox = int(comp.sum())
        inside_means = [float(img[c][comp].mean()) for c in range(len(MODALITIES))]
        shell_means = [float(img[c][shell].mean()) if shell.any() else 0.0 for c in range(len(MODALITIES))]
        rim = ((float(img[FLAIR][ring1].mean()) if ring1.any() else 0.0)
               - (float(img[FLAIR][ring23].mean()) if ring23.any() else 0.0))
        rim_relative = rim / abs(span[FLAIR])
        rim_far = ((float(img[FLAIR][shell].mean()) if shell.any() else 0.0)
                   - (float(img[FLAIR][ring45].mean()) if ring45.any() else 0.0)) / abs(span[FLAIR])
        coords = np.argwhere(comp) * spacing_a
        if vox >= 2:
            eig = np.sort(np.linalg.eigvalsh(np.cov(coords.T) + np.eye(3) * (spacing_a.mean() ** 2 / 12)))
        else:
            eig = np.full(3, spacing_a.mean() ** 2 / 12)
        centre = tuple(int(round(c)) for c in np.argwhere(comp).mean(0) + [s.start for s in big])
        feats[k] = [
            math.log(vox * voxel), float(p.max()), float(p.mean()), *inside_means,
            *(a - b for a, b in zip(inside_means, shell_means)), rim,
            math.log(eig[2] / eig[0]), math.sqrt(eig[2]), depth(centre),
            float(fluid[big][around].mean()) if around.any() else 0.0,
            math.log1p(_fluid_joined(labels[far] == k + 1, fluid[far]) * voxel),
            *((a - b) / d for a, b, d in zip(inside_means, shell_means, span)), rim_relative,
            max(rim_relative, 0.0), rim_far,
        ]
    return labels, n, feats


def _fluid_joined(comp: np.ndarray, fluid: np.ndarray) -> int:
    """Fluid-like voxels connected to the candidate ``comp`` through fluid, the candidate's own excluded,
    within the box given (:data:`FLUID_REACH` around it). Face neighbours only: the fluid-like voxels that
    noise scatters through tissue (a quarter of the brain is dark on T1, a quarter bright on T2) do not
    chain up across faces as they would across corners."""
    labels, _ = ndi.label(fluid | comp, ndi.generate_binary_structure(3, 1))
    own = np.unique(labels[comp])
    own = own[own > 0]
    return int((np.isin(labels, own) & fluid & ~comp).sum())


class EdgeDistance:
    """The Euclidean distance (mm) from a voxel of ``inside`` to the nearest voxel outside it (the volume's
    surroundings count as outside): what ``ndi.distance_transform_edt`` gives there, without transforming
    the whole volume for a few candidates. The nearest outside voxel always has a face neighbour inside
    (a step from it towards the voxel would otherwise be nearer), so only those edge voxels are searched;
    a voxel outside is at 0."""

    def __init__(self, inside: np.ndarray, spacing: tuple[float, float, float]) -> None:
        padded = np.pad(np.asarray(inside, bool), 1)
        edge = ~padded & ndi.binary_dilation(padded, ndi.generate_binary_structure(3, 1))
        self.inside = padded
        self.spacing = np.asarray(spacing, float)
        points = np.argwhere(edge)
        self.tree = cKDTree(points * self.spacing) if len(points) else None

    def __call__(self, voxel: tuple[int, int, int]) -> float:
        v = tuple(int(c) + 1 for c in voxel)
        if self.tree is None or not self.inside[v]:
            return 0.0
        return float(self.tree.query(np.asarray(v, float) * self.spacing)[0])


@dataclass(frozen=True)
class Rescorer:
    """A logistic regression over ``features`` (a subset of :data:`ALL_FEATURES`, standardized with
    ``mean`` and ``std``).

    Attributes:
        candidate_threshold: raw probability at which candidates are formed.
        min_score: candidates scoring under this are removed (set to probability 0).
        features: the features it weighs, by name (:data:`FEATURES` for those fitted before the others).
    """

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    candidate_threshold: float = DEFAULT_THRESHOLD
    min_score: float = 0.5
    features: tuple[str, ...] = FEATURES

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in ALL_FEATURES]
        if unknown:
            raise ValueError(f"this rescorer was fitted on features {unknown} that this version does not compute "
                             f"(it computes {list(ALL_FEATURES)})")
        if not (len(self.weights) == len(self.mean) == len(self.std) == len(self.features)):
            raise ValueError("rescorer weights, mean and std must have one value per feature")
        if not 0.0 < self.candidate_threshold < 1.0 or not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"candidate_threshold must be in (0, 1) and min_score in [0, 1], got "
                             f"{self.candidate_threshold}, {self.min_score}")

    @property
    def columns(self) -> list[int]:
        """The columns of :func:`candidate_features`'s array that it weighs."""
        return [ALL_FEATURES.index(f) for f in self.features]

    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores of candidates given :func:`candidate_features`'s ``n×len(ALL_FEATURES)`` array."""
        x = np.asarray(features, np.float64).reshape(-1, len(ALL_FEATURES))[:, self.columns]
        z = (x - np.asarray(self.mean)) / np.asarray(self.std)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> Rescorer | None:
        if not d:
            return None
        known = {"weights", "bias", "mean", "std", "candidate_threshold", "min_score", "features"}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("weights", "mean", "std", "features"):
            d[key] = tuple(d[key])
        return cls(**d)

    def replace(self, **changes) -> Rescorer:
        from dataclasses import replace

        return replace(self, **changes)

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray, candidate_threshold: float, l2: float = 1.0,
            iterations: int = 50, names: tuple[str, ...] = SCALE_FREE_FEATURES) -> Rescorer:
        """Class-balanced, L2-regularized logistic regression by Newton's method on the features ``names``
        of :func:`candidate_features`'s ``n×len(ALL_FEATURES)`` array.

        Raises:
            ValueError: no candidates, only one class among them, or an unknown feature.
        """
        x = np.asarray(features, np.float64)
        y = np.asarray(targets, np.float64)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != len(ALL_FEATURES):
            raise ValueError(f"need an n×{len(ALL_FEATURES)} feature array, got shape {x.shape}")
        unknown = [f for f in names if f not in ALL_FEATURES]
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown} (the features: {', '.join(ALL_FEATURES)})")
        x = x[:, [ALL_FEATURES.index(f) for f in names]]
        w, bias, mean, std = fit_logistic(x, y, l2, iterations)
        return cls(tuple(float(v) for v in w), bias, tuple(float(v) for v in mean),
                   tuple(float(v) for v in std), candidate_threshold, features=tuple(names))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50
                 ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Class-balanced, L2-regularized logistic regression by Newton's method on the columns of ``x``
    (standardized; the intercept not regularized): the weights, the intercept, the columns' means and
    standard deviations (:meth:`Rescorer.fit` on a feature set; benchmarks fit it on other columns).

    Raises:
        ValueError: only one class among ``y``.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if y.min() == y.max():
        raise ValueError("the candidates are all positive or all negative: nothing to learn")
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-8] = 1.0
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    sample = np.where(y > 0.5, 0.5 / y.mean(), 0.5 / (1 - y.mean()))  # each class weighs half
    w = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (sample * (p - y)) + reg * w
        hess = (z * (sample * p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1]), mean, std


def candidate_targets(labels: np.ndarray, n: int, reference: np.ndarray) -> np.ndarray:
    """1 for each candidate that touches a labelled lesion (``reference > 0``), else 0."""
    if n == 0:
        return np.zeros(0)
    return np.asarray(ndi.maximum(reference > 0, labels, np.arange(1, n + 1)), np.float64)
