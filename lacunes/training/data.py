"""Training data: VALDO-layout subjects (or generated arrays) → normalized arrays, labels, instance maps
and candidate crop centres (computed once, held with the subject). The training loop cuts and augments
its batches on the device (:mod:`lacunes.training.pipeline`); :class:`CropDataset` does the same per crop
with MONAI dictionary transforms on the CPU (flips, random affine, Gaussian noise) and is kept as the
plain-MONAI baseline of ``benchmarks/training.py``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lacunes.conform import ModelSpace, plan
from lacunes.geometry import check_same_grid
from lacunes.instances import label_instances
from lacunes.io import read_subject, read_volume
from lacunes.layouts import SubjectFiles, find_subject_files
from lacunes.preprocessing import assert_finite, quantile_normalize
from lacunes.training.config import LabelMode, TrainConfig
from lacunes.training.sampling import Candidates, CropKind, crop_at

logger = logging.getLogger(__name__)


class MissingLabelError(ValueError):
    """A training subject has no rater label file."""


@dataclass
class TrainingSubject:
    subject_id: str
    image: np.ndarray  # C×X×Y×Z float32 (C modalities), normalized
    label: np.ndarray  # 1×X×Y×Z uint8
    instances: np.ndarray  # 1×X×Y×Z int32
    n_instances: int
    candidates: Candidates | None = None  # crop centres by kind


def combine_raters(raters: list[np.ndarray], mode: LabelMode) -> np.ndarray:
    """Binary training label from the rater masks (values > 0 count as marked)."""
    marks = np.stack([r > 0 for r in raters])
    if mode == LabelMode.UNION:
        return marks.any(0)
    if mode == LabelMode.INTERSECTION:
        return marks.all(0)
    if mode == LabelMode.RATER1:
        return marks[0]
    return marks.mean(0) >= 0.5


def load_training_subject(files: SubjectFiles, config: TrainConfig) -> TrainingSubject:
    """Read, check (finite values, same grid), conform to the model's space (1 mm, the phantoms' array
    order: :mod:`lacunes.conform`, as inference does), normalize and label one subject.

    Raises:
        MissingLabelError: no ``Rater1``/``Rater2`` file (or only Rater2 with ``label_mode=rater1``).
        lacunes.preprocessing.NonFiniteError: NaN/inf in an image or a label, naming the file.
    """
    subject = read_subject(files.subject_id, files.paths)
    for m, path in subject.paths.items():
        if subject.nonfinite.get(m):
            assert_finite(subject.image[list(subject.paths).index(m)], str(path))
    label_paths = files.label_paths()
    if config.label_mode == LabelMode.RATER1:
        label_paths = {k: v for k, v in label_paths.items() if k == "Rater1"}
    if not label_paths:
        raise MissingLabelError(f"no rater label for {files.subject_id} next to {files.paths['T1']}")
    raters, geoms = [], {files.paths["T1"]: subject.geometry}
    for path in label_paths.values():
        arr, geom = read_volume(path)
        assert_finite(arr.astype(np.float32), str(path))
        raters.append(arr)
        geoms[path] = geom
    check_same_grid(geoms)
    conform = plan(subject.geometry, ModelSpace())  # trained where inference conforms to (lacunes.conform)
    if not conform.identity:
        logger.info("%s: to the model's space: %s", files.subject_id, conform.describe())
    image = conform.to_model(subject.image) if not conform.identity else subject.image
    raters = [conform.mask_to_model(r) for r in raters] if not conform.identity else raters
    return training_subject_from_arrays(files.subject_id, image, raters, conform.model.spacing, config)


def training_subject_from_arrays(subject_id: str, image: np.ndarray, raters: list[np.ndarray],
                                 spacing: tuple[float, float, float], config: TrainConfig,
                                 mimic_centres: np.ndarray | None = None) -> TrainingSubject:
    """A training subject from its raw ``C×X×Y×Z`` image (the modalities) and rater masks: the combined
    label, its instances, the normalized image and the crop-centre candidates (the same for a subject
    read from files and one generated in memory; ``mimic_centres``: a generated phantom's recorded
    mimics, voxel ``n×3``, the ``mimic`` crop centres)."""
    label = combine_raters(raters, config.label_mode)
    instances, n = label_instances(label, config.connectivity)
    normalized = quantile_normalize(image, config.normalization)
    candidates = Candidates.from_arrays(image, instances, config.edge_mm, spacing, seed=config.seed)
    if mimic_centres is not None:
        candidates.mimics = np.asarray(mimic_centres, np.int64).reshape(-1, 3)
    return TrainingSubject(subject_id, normalized, label[None].astype(np.uint8), instances[None], n, candidates)


def load_training_set(folder: Path, config: TrainConfig, progress: bool = True) -> list[TrainingSubject]:
    from tqdm import tqdm

    files = find_subject_files(Path(folder))
    subjects = [load_training_subject(f, config) for f in tqdm(files, desc="loading", disable=not progress)]
    n = sum(s.n_instances for s in subjects)
    logger.info("%d subjects, %d lacunes, %d without lacunes", len(subjects), n,
                sum(s.n_instances == 0 for s in subjects))
    return subjects


def build_augmentation(config: TrainConfig):
    """Flips, random affine, a contrast curve and Gaussian noise, applied to each crop (MONAI dictionary
    transforms)."""
    from monai import transforms as T

    keys = ["image", "label", "instances"]
    return T.Compose([
        T.RandFlipd(keys=keys, prob=config.flip_prob, spatial_axis=0),
        T.RandFlipd(keys=keys, prob=config.flip_prob, spatial_axis=1),
        T.RandFlipd(keys=keys, prob=config.flip_prob, spatial_axis=2),
        T.RandAffined(
            keys=keys, prob=config.affine_prob, rotate_range=(config.rotate_rad,) * 3,
            scale_range=(config.scale,) * 3, mode=("bilinear", "nearest", "nearest"), padding_mode="zeros",
        ),
        T.RandAdjustContrastd(keys=["image"], prob=config.gamma_prob, gamma=config.gamma),
        T.RandGaussianNoised(keys=["image"], prob=config.noise_prob, std=config.noise_std),
        T.EnsureTyped(keys=keys, track_meta=False),
    ])


class CropDataset(torch.utils.data.Dataset):
    """Each item is a list of ``crops_per_subject`` augmented crops of one subject, each centred on a
    voxel of a kind drawn with the config's crop shares; ``kind_counts`` tallies the kinds drawn."""

    def __init__(self, subjects: list[TrainingSubject], config: TrainConfig, seed: int = 0) -> None:
        self.subjects = subjects
        self.config = config
        self.kinds, self.shares = config.crop_shares().probabilities()
        self.rng = np.random.default_rng(seed)
        self.transforms = build_augmentation(config)
        self.transforms.set_random_state(seed)
        self.kind_counts: dict[str, int] = {str(k): 0 for k in CropKind}
        for s in subjects:
            if s.candidates is None:
                s.candidates = Candidates.from_arrays(s.image, s.instances[0], config.edge_mm, seed=seed)

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> list[dict]:
        s = self.subjects[i]
        crops = []
        for _ in range(self.config.crops_per_subject):
            kind = self.kinds[self.rng.choice(len(self.kinds), p=self.shares)]
            centre, drawn = s.candidates.draw(kind, self.rng)
            self.kind_counts[str(drawn)] += 1
            crop = {
                "image": crop_at(s.image, centre, self.config.crop_size),
                "label": crop_at(s.label, centre, self.config.crop_size),
                "instances": crop_at(s.instances, centre, self.config.crop_size),
            }
            crops.append(self.transforms(crop))
        return crops


class EpochSampler(torch.utils.data.Sampler):
    """Distributed sampler over subjects: each epoch a seeded permutation (repeated to fill
    ``n_batches × batch_size × world`` draws when ``n_batches`` is set); rank r takes every
    world-th index starting at r, so ranks see disjoint subjects within an epoch."""

    def __init__(self, n_subjects: int, batch_size: int, n_batches: int | None, rank: int = 0,
                 world: int = 1, seed: int = 0) -> None:
        self.n, self.batch_size, self.n_batches = n_subjects, batch_size, n_batches
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.n_batches is not None:
            return self.n_batches * self.batch_size
        return -(-self.n // self.world)

    def __iter__(self):
        g = np.random.default_rng([self.seed, self.epoch])
        total = len(self) * self.world
        order = np.concatenate([g.permutation(self.n) for _ in range(-(-total // self.n))])[:total]
        return iter(order[self.rank::self.world].tolist())


def collate_crops(batch: list[list[dict]]) -> dict[str, torch.Tensor]:
    crops = [c for item in batch for c in item]
    return {k: torch.stack([torch.as_tensor(c[k]) for c in crops]) for k in ("image", "label", "instances")}
