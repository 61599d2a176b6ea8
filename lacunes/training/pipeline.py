"""Training batches made where the network runs: subjects held as tensors (on the GPU where they fit),
crops cut and augmented there, a whole batch at a time.

The recipe's augmentation, as the MONAI dictionary transforms of :func:`lacunes.training.data.build_augmentation`
apply it to each crop, in the same order and with the same distributions:

1. a flip along each axis, each with probability ``flip_prob``;
2. with probability ``affine_prob``, a random affine about the crop's centre: a rotation about each
   axis by ``U(-rotate_rad, rotate_rad)`` and a scaling of each axis by ``U(1 - scale, 1 + scale)``,
   in voxel space, the image resampled trilinearly and the label and instances by nearest neighbour
   (one ``grid_sample`` for the batch's affine crops), zeros outside;
3. with probability ``gamma_prob``, the crop's contrast curve changed (``x ** g`` on its intensities scaled to
   [0, 1], ``g ~ U(gamma)``; MONAI's ``AdjustContrast``), drawn from a stream of its own;
4. with probability ``noise_prob``, Gaussian noise of standard deviation ``U(0, noise_std)`` on the image;
5. with the config's ``channel_dropout``, a crop shown as a smaller set of contrasts: the channels it lacks
   set to exactly zero, after the noise, as a subject without those contrasts reaches the network.

Every random decision and parameter (crop kind and centre, flips, angles, scales, noise level) is drawn
on the CPU from one seeded generator, so nothing waits on the device to decide; the noise itself is
drawn on the device from a seeded device generator. The same seed gives the same batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lacunes.options import FULL_SET, INPUT_SETS, MODALITIES
from lacunes.training.config import TrainConfig
from lacunes.training.data import TrainingSubject
from lacunes.training.sampling import CropKind

logger = logging.getLogger(__name__)

#: Subjects are held on a CUDA device while they take at most this share of its free memory.
GPU_SHARE = 0.5


@dataclass
class HeldSubject:
    """A training subject as tensors (on the device that holds it) next to its arrays (mining, centres)."""

    subject: TrainingSubject
    image: torch.Tensor  # C×X×Y×Z float32
    label: torch.Tensor  # 1×X×Y×Z uint8
    instances: torch.Tensor  # 1×X×Y×Z int32
    uses: int = 0  # batches it was drawn for
    order: int = 0  # arrival order (generated subjects)


def subject_bytes(subject: TrainingSubject) -> int:
    return subject.image.nbytes + subject.label.nbytes + subject.instances.nbytes


def holding_device(subjects_bytes: int, device: torch.device) -> torch.device:
    """Where to hold subjects of this total size: on ``device`` if it is a CUDA device with room
    (:data:`GPU_SHARE` of its free memory), else on the CPU (pinned when the network is on a GPU)."""
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if subjects_bytes <= GPU_SHARE * free else torch.device("cpu")


def hold(subject: TrainingSubject, where: torch.device, pin: bool = False) -> HeldSubject:
    """The subject's arrays as tensors on ``where`` (on the CPU they share the arrays' memory)."""
    image = torch.from_numpy(np.ascontiguousarray(subject.image, np.float32))
    label = torch.from_numpy(np.ascontiguousarray(subject.label, np.uint8))
    instances = torch.from_numpy(np.ascontiguousarray(subject.instances, np.int32))
    if where.type != "cpu":
        image, label, instances = (t.to(where) for t in (image, label, instances))
    elif pin:
        image, label, instances = (t.pin_memory() for t in (image, label, instances))
    return HeldSubject(subject, image, label, instances)


def crop_tensor(tensor: torch.Tensor, centre: np.ndarray, size: tuple[int, int, int]) -> torch.Tensor:
    """The ``C×size`` box of a ``C×X×Y×Z`` tensor around ``centre`` (a view), placed as
    :func:`lacunes.training.sampling.crop_at` places it: kept inside the volume where it fits; where the
    volume is smaller than the crop, the view is cut at the volume's end (the caller pads)."""
    spatial = np.array(tensor.shape[1:])
    size_a = np.array(size)
    start = np.clip(np.asarray(centre) - size_a // 2, 0, np.maximum(spatial - size_a, 0))
    stop = np.minimum(start + size_a, spatial)
    return tensor[(slice(None), *(slice(int(a), int(b)) for a, b in zip(start, stop)))]


def rotation_scaling(angles: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``R_x · R_y · R_z · diag(scales)``, 3×3, in (x, y, z) voxel space."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz @ np.diag(scales)


def affine_theta(matrices: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """``grid_sample`` parameters (``n×3×4``) for voxel-space matrices ``n×3×3`` (output → input
    offsets from the crop's centre, x y z): normalized coordinates (``align_corners=True``) and the
    (z, y, x) order that ``grid_sample`` uses for a ``N×C×X×Y×Z`` input."""
    half = (np.asarray(size, np.float64) - 1) / 2
    half = np.where(half > 0, half, 1.0)
    normalized = matrices * half[None, None, :] / half[None, :, None]  # D⁻¹ · A · D
    zyx = normalized[:, ::-1, ::-1]
    theta = np.zeros((len(matrices), 3, 4))
    theta[:, :, :3] = zyx
    return theta


class DeviceBatcher:
    """Batches of ``crops_per_subject`` crops per subject, centred by the config's crop shares
    (:mod:`lacunes.training.sampling`) and augmented on the device (the module docstring)."""

    def __init__(self, config: TrainConfig, device: torch.device | str, seed: int = 0) -> None:
        self.config = config
        self.device = torch.device(device)
        self.kinds, self.shares = config.crop_shares().probabilities()
        self.seed = seed
        self.noise = torch.Generator(device=self.device)
        self.set_epoch(0)
        self.kind_counts: dict[str, int] = {str(k): 0 for k in CropKind}
        self.set_counts: dict[str, int] = {name: 0 for name in config.input_sets}
        dropout = config.channel_dropout
        self._set_names = [FULL_SET, *(name for name, _ in dropout)]
        self._set_cumulative = np.cumsum([1.0 - sum(q for _, q in dropout), *(q for _, q in dropout)])

    def set_epoch(self, epoch: int) -> None:
        """Draw from the epoch's own streams: a run resumed at an epoch makes the batches an
        uninterrupted run makes there."""
        self.rng = np.random.default_rng([self.seed, epoch])
        self.dropout_rng = np.random.default_rng([self.seed, epoch, 2])  # its own: the others' stay as without it
        self.gamma_rng = np.random.default_rng([self.seed, epoch, 3])  # likewise
        self.noise.manual_seed(int(np.random.default_rng([self.seed, epoch, 1]).integers(2**62)))

    def crops(self, held: list[HeldSubject]) -> dict[str, torch.Tensor]:
        """Un-augmented crops, ``B×C×crop`` on the device (``B = len(held) × crops_per_subject``), each
        written into one zeroed batch tensor (the padding of :func:`crop_tensor` for free)."""
        size = self.config.crop_size
        n = len(held) * self.config.crops_per_subject
        first = held[0]
        out = {name: torch.zeros((n, getattr(first, name).shape[0], *size), dtype=getattr(first, name).dtype,
                                 device=self.device) for name in ("image", "label", "instances")}
        i = 0
        for h in held:
            for _ in range(self.config.crops_per_subject):
                kind = self.kinds[self.rng.choice(len(self.kinds), p=self.shares)]
                centre, drawn = h.subject.candidates.draw(kind, self.rng)
                self.kind_counts[str(drawn)] += 1
                for name in out:
                    src = crop_tensor(getattr(h, name), centre, size)
                    out[name][i, :, : src.shape[1], : src.shape[2], : src.shape[3]].copy_(src, non_blocking=True)
                i += 1
        return out

    def augment(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Flips, random affine, a contrast curve and Gaussian noise, per crop, in place on ``batch`` (as made
        by :meth:`crops`); the affine crops are resampled together."""
        c = self.config
        image, label, instances = batch["image"], batch["label"], batch["instances"]
        n = image.shape[0]
        flips = self.rng.random((n, 3)) < c.flip_prob
        affine = self.rng.random(n) < c.affine_prob
        angles = self.rng.uniform(-c.rotate_rad, c.rotate_rad, (n, 3))
        scales = self.rng.uniform(1 - c.scale, 1 + c.scale, (n, 3))
        noisy = self.rng.random(n) < c.noise_prob
        stds = self.rng.uniform(0.0, c.noise_std, n)
        for i in range(n):
            dims = [int(a) + 1 for a in np.flatnonzero(flips[i])]  # per-crop tensors are C×X×Y×Z
            if dims:
                for t in (image, label, instances):
                    t[i].copy_(t[i].flip(dims))
        rows = np.flatnonzero(affine)
        if rows.size:
            matrices = np.stack([rotation_scaling(angles[i], scales[i]) for i in rows])
            theta = torch.as_tensor(affine_theta(matrices, c.crop_size), dtype=torch.float32).to(self.device)
            grid = F.affine_grid(theta, [rows.size, 1, *c.crop_size], align_corners=True)
            warped = F.grid_sample(torch.stack([image[i] for i in rows]), grid, mode="bilinear",
                                   padding_mode="zeros", align_corners=True)
            # Label and instances through the same nearest-neighbour lookup (ids are exact in float32).
            both = torch.stack([torch.cat([label[i].float(), instances[i].float()]) for i in rows])
            both = F.grid_sample(both, grid, mode="nearest", padding_mode="zeros", align_corners=True)
            for j, i in enumerate(rows):
                image[i].copy_(warped[j])
                label[i].copy_(both[j, :1].round())
                instances[i].copy_(both[j, 1:].round())
        self.change_contrast(image)
        rows = np.flatnonzero(noisy)
        if rows.size:
            noise = torch.randn((rows.size, *image.shape[1:]), generator=self.noise, device=self.device)
            for j, i in enumerate(rows):
                image[i].add_(noise[j], alpha=float(stds[i]))
        self.drop_channels(image)
        return batch

    def change_contrast(self, image: torch.Tensor) -> None:
        """Each crop of ``image`` (``B×C×…``), with probability ``gamma_prob``, through MONAI's ``AdjustContrast``
        with ``g ~ U(gamma)`` (as ``RandAdjustContrastd`` draws it), in place."""
        c = self.config
        if c.gamma_prob <= 0.0:
            return
        from monai.transforms import AdjustContrast

        n = image.shape[0]
        changed = self.gamma_rng.random(n) < c.gamma_prob
        gammas = self.gamma_rng.uniform(c.gamma[0], c.gamma[1], n)
        for i in np.flatnonzero(changed):
            image[i].copy_(AdjustContrast(float(gammas[i]))(image[i]))

    def drop_channels(self, image: torch.Tensor) -> None:
        """Each crop of ``image`` (``B×C×…``) drawn as one of the config's sets of contrasts (``channel_dropout``):
        the channels outside it zeroed in place. Drawn from a stream of its own, so that the crops and the
        other augmentations stay those of a run without channel dropout."""
        if not self.config.channel_dropout:
            self.set_counts[FULL_SET] += image.shape[0]
            return
        drawn = np.searchsorted(self._set_cumulative, self.dropout_rng.random(image.shape[0]), side="right")
        for i, k in enumerate(np.minimum(drawn, len(self._set_names) - 1)):
            name = self._set_names[k]
            self.set_counts[name] += 1
            for c, m in enumerate(MODALITIES):
                if m not in INPUT_SETS[name]:
                    image[i, c].zero_()

    def __call__(self, held: list[HeldSubject]) -> dict[str, torch.Tensor]:
        return self.augment(self.crops(held))


class FolderSource:
    """Batches of a fixed training set: each epoch a seeded permutation of the subjects
    (:class:`lacunes.training.data.EpochSampler`; under DDP each process takes its share)."""

    def __init__(self, held: list[HeldSubject], batch_size: int, batches_per_epoch: int | None, rank: int = 0,
                 world: int = 1, seed: int = 0) -> None:
        from lacunes.training.data import EpochSampler

        self.held = held
        self.batch_size = batch_size
        self.sampler = EpochSampler(len(held), batch_size, batches_per_epoch, rank, world, seed)

    @property
    def subjects(self) -> list[TrainingSubject]:
        return [h.subject for h in self.held]

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        for start in range(0, len(order), self.batch_size):
            chosen = [self.held[i] for i in order[start:start + self.batch_size]]
            for h in chosen:
                h.uses += 1
            yield chosen

    def close(self) -> None:
        pass
