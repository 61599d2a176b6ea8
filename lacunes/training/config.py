"""Training configurations. ``valdo`` is the publication's recipe; ``cpu`` and ``smoke`` scale it down."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lacunes.network import NetworkConfig
from lacunes.options import (  # re-exported: the training vocabulary
    FULL_SET,
    INPUT_SETS,
    LabelMode,
    LossMode,
    OptimizerName,
    look_up_option,
)
from lacunes.preprocessing import NormalizationConfig


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; written to the run folder and into checkpoints.

    Attributes:
        epochs: passes over the subjects (or ``batches_per_epoch`` batches when set).
        batch_size: subjects per batch; each gives ``crops_per_subject`` crops.
        crop_size: (x, y, z) voxels.
        pos_fraction: share of crops centred on a lesion voxel, the lesion instance drawn uniformly
            (recipe: 95 %).
        edge_fraction, fluid_fraction, hard_fraction, mimic_fraction: shares of crops centred on the brain's
            edge (within ``edge_mm``), on fluid-like brain voxels, on the network's own false positives and
            on a generated phantom's recorded mimics (see :mod:`lacunes.training.sampling`); the rest of
            the crops are centred on any brain voxel.
        mine_every: predict ``mine_subjects`` training subjects every this many epochs (and before the
            first epoch of a run that starts from ``init_from``) to find the false positives that
            ``hard`` crops are centred on; 0 = no mining.
        batch_dice: Dice over the whole batch (nnU-Net's "batch Dice") instead of per crop. Per crop, a
            crop without lesion has a Dice loss of ~1 whatever it predicts (no gradient against its
            false positives); over the batch, every false-positive voxel counts.
        init_from: start from this checkpoint's weights (fine-tuning); recorded in the checkpoints.
        lr: learning rate (Ranger21 warms up and warms down around it).
        optimizer: ``ranger21`` (recipe) or ``adamw``.
        alpha, beta: blob loss weights; ``loss=dicebce`` forces beta = 0.
        flip_prob, noise_prob, noise_std, affine_prob, rotate_rad, scale: augmentation.
        gamma_prob, gamma: with probability ``gamma_prob`` a crop's contrast curve changed, ``x ** g`` on its
            intensities scaled to [0, 1] (MONAI's ``AdjustContrast``; nnU-Net's gamma augmentation) with
            ``g ~ U(gamma)``: below 1 the dark end is lifted (T1 and FLAIR fluid brighter, T2 tissue
            closer to its fluid: less fluid contrast), above 1 the contrast grows. 0: never (the recipe).
        amp: mixed precision on CUDA (bfloat16 autocast; float16 with loss scaling on GPUs without bfloat16).
        cpu_amp: bfloat16 autocast on the CPU (fast on CPUs with AMX / AVX-512 BF16).
        num_workers: DataLoader workers of the MONAI loop that ``benchmarks/training.py`` compares against;
            the training loop makes its batches on the device and uses none.
        channel_dropout: ``((set, probability), ...)``: each crop is shown as the smaller set of contrasts
            ``set`` (:data:`lacunes.options.INPUT_SETS`; the other channels zero, as a subject without them
            reaches the network) with that probability, else with all three; the checkpoints record the
            sets trained for (``input_sets``). Empty: all three always (the recipe).
    """

    name: str = "valdo"
    epochs: int = 222
    batch_size: int = 4
    crops_per_subject: int = 2
    crop_size: tuple[int, int, int] = (192, 192, 32)
    pos_fraction: float = 0.95
    edge_fraction: float = 0.0
    fluid_fraction: float = 0.0
    hard_fraction: float = 0.0
    mimic_fraction: float = 0.0
    edge_mm: float = 3.0
    mine_every: int = 0
    mine_subjects: int = 8
    batch_dice: bool = False
    init_from: str | None = None
    batches_per_epoch: int | None = None
    lr: float = 1e-3
    optimizer: str = "ranger21"
    loss: LossMode = LossMode.BLOB
    alpha: float = 0.66
    beta: float = 0.33
    connectivity: int = 26
    label_mode: LabelMode = LabelMode.UNION
    flip_prob: float = 0.5
    noise_prob: float = 0.5
    noise_std: float = 0.05
    affine_prob: float = 0.3
    rotate_rad: float = 0.15
    scale: float = 0.1
    gamma_prob: float = 0.0
    gamma: tuple[float, float] = (0.6, 1.5)
    amp: bool = True
    cpu_amp: bool = False
    num_workers: int = 0
    threads: int | None = None
    seed: int = 0
    checkpoint_every: int = 1
    channel_dropout: tuple[tuple[str, float], ...] = ()
    network: NetworkConfig = field(default_factory=NetworkConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.crops_per_subject < 1:
            raise ValueError(f"epochs, batch_size and crops_per_subject must be >= 1 ({self.epochs}, "
                             f"{self.batch_size}, {self.crops_per_subject})")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], got {self.pos_fraction}")
        self.crop_shares()  # validates the other shares
        if self.mine_every < 0 or self.mine_subjects < 1:
            raise ValueError(f"mine_every must be >= 0 and mine_subjects >= 1, got {self.mine_every}, "
                             f"{self.mine_subjects}")
        look_up_option(self.optimizer, OptimizerName, "optimizer")
        if not 0.0 <= self.gamma_prob <= 1.0 or not 0.0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma_prob must be in [0, 1] and gamma a range of positive values, got "
                             f"{self.gamma_prob} and {self.gamma}")
        for name, probability in self.channel_dropout:
            if look_up_option(name, INPUT_SETS, "channel_dropout set") == FULL_SET or not 0.0 < probability <= 1.0:
                raise ValueError(f"channel_dropout needs smaller sets than {FULL_SET} with probabilities in (0, 1], "
                                 f"got {name}={probability}")
        if sum(p for _, p in self.channel_dropout) > 1.0 or len({n for n, _ in self.channel_dropout}) < len(
                self.channel_dropout):
            raise ValueError(f"channel_dropout's sets must be distinct with probabilities summing to at most 1, got "
                             f"{self.channel_dropout}")

    @property
    def input_sets(self) -> list[str]:
        """The sets of contrasts this run trains for: all three, and those of :attr:`channel_dropout`."""
        return [FULL_SET, *(name for name, _ in self.channel_dropout)]

    def crop_shares(self):
        from lacunes.training.sampling import CropShares

        return CropShares(self.pos_fraction, self.edge_fraction, self.fluid_fraction, self.hard_fraction,
                          self.mimic_fraction)

    @property
    def effective_beta(self) -> float:
        return 0.0 if self.loss == LossMode.DICEBCE else self.beta

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["crop_size"] = list(self.crop_size)
        d["network"] = self.network.to_dict()
        d["loss"] = str(self.loss)
        d["label_mode"] = str(self.label_mode)
        d["channel_dropout"] = [list(pair) for pair in self.channel_dropout]
        d["gamma"] = list(self.gamma)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["crop_size"] = tuple(d["crop_size"])
        d["network"] = NetworkConfig.from_dict(d["network"])
        d["normalization"] = NormalizationConfig(**d["normalization"])
        d["loss"] = LossMode(d["loss"])
        d["label_mode"] = LabelMode(d["label_mode"])
        d["channel_dropout"] = tuple((str(n), float(q)) for n, q in d.get("channel_dropout", ()))
        d["gamma"] = tuple(float(g) for g in d.get("gamma", cls.gamma))  # runs before it have none
        return cls(**d)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


#: The publication: Ranger21, lr 1e-3, 222 epochs, batch 4 × 2 crops of 192×192×32, 95 % lesion-centred.
VALDO = TrainConfig()

#: A 2-core CPU in about an hour: same network and loss, 64×64×32 crops, 2 subjects × 2 crops a
#: batch, 24 epochs of 20 batches, and half of the crops on background, centred in the brain (a short
#: run at 95 % lesion-centred crops learns the lesions but sees too little of the mimics, and predicts
#: many false positives).
CPU = TrainConfig(
    name="cpu", epochs=24, batch_size=2, crops_per_subject=2, crop_size=(64, 64, 32), pos_fraction=0.5,
    batches_per_epoch=20, amp=False,
)

#: Seconds, for tests: tiny crops, two batches.
SMOKE = TrainConfig(
    name="smoke", epochs=2, batch_size=1, crops_per_subject=1, crop_size=(32, 32, 16), pos_fraction=0.9,
    batches_per_epoch=2, amp=False, optimizer="ranger21",
)

#: The second stage of the bundled model: continues a ``cpu`` run (``--init-from``) on the background it
#: gets wrong. A quarter of the crops on lesions, the rest on the brain's edge, fluid-like voxels
#: (ventricles, sulci, perivascular spaces), the network's own false positives (mined on 6 training
#: subjects every 4 epochs) and anywhere in the brain; Dice over the batch, so that false positives in
#: lesion-free crops cost something; bfloat16 autocast where the CPU has it. 16 epochs × 30 batches of
#: 2 × 2 crops: as many crops as the ``cpu`` run it continues.
CPU_HARDNEG = CPU.replace(
    name="cpu-hardneg", epochs=16, batches_per_epoch=30, pos_fraction=0.25, edge_fraction=0.2,
    fluid_fraction=0.15, hard_fraction=0.25, mine_every=4, mine_subjects=6, batch_dice=True, cpu_amp=True,
)

#: Stage 3 of the bundled model, on one GPU: continues the calibrated CPU model (``--init-from``) with the
#: publication's batches (4 subjects × 2 crops of 192×192×32, bfloat16 autocast), half of the crops on
#: lesions and the rest on the brain's edge, fluid-like voxels and anywhere in the brain, Dice over the
#: batch. A 192×192 crop holds a phantom's whole axial plane, so every crop also shows the edge and the
#: CSF spaces around its centre. Trained on generated phantoms (``--synthetic``); 50 batches an epoch,
#: the epoch count is what one device session's budget allowed (see training/README.md).
GPU_HARDNEG = VALDO.replace(
    name="gpu-hardneg", epochs=16, batches_per_epoch=50, pos_fraction=0.5, edge_fraction=0.15,
    fluid_fraction=0.15, batch_dice=True,
)

#: Stage 4 of the bundled model, on a 2-core CPU: continues the calibrated model (``--init-from``) on phantoms
#: whose acquisition is randomized (``--synthetic N --acquisitions``: voxel size, thick-slice T2/FLAIR,
#: contrasts, bias, noise; :class:`lacunes.synthetic.AcquisitionConfig`), so that a scan conformed from
#: another voxel size — blurred — meets a network that has seen such scans. The stage-3 crop shares (half
#: on lesions, the rest on the brain's edge, fluid-like voxels and anywhere), Dice over the batch, with
#: the CPU's crops (2 subjects × 2 crops of 64×64×32: 3.9 s a step in bfloat16 on this project's 2-core
#: CPU, 96×96×32 takes 10 s), half the learning rate of the earlier stages (it refines a calibrated
#: network), bfloat16 autocast where the CPU has it. 15 epochs × 40 batches.
CPU_ACQ = CPU.replace(
    name="cpu-acq", epochs=15, batches_per_epoch=40, pos_fraction=0.5, edge_fraction=0.15,
    fluid_fraction=0.15, batch_dice=True, cpu_amp=True, lr=5e-4,
)

#: Continues the calibrated model (``--init-from``) on phantoms with lacune mimics as varied as real brains
#: hold them and per-structure tissue intensities (``--synthetic N --mimics --acquisitions``;
#: :class:`lacunes.synthetic.mimics.MimicConfig`), so that the network itself, not only the second stage,
#: tells a lacune from a fluid pocket or a perivascular space. A third of the crops on lesions, a quarter
#: on the phantom's recorded mimics (perivascular spaces, fluid pockets, hyperintensities), the rest on the
#: brain's edge, fluid-like voxels and anywhere; otherwise stage 4's recipe (Dice over the batch, bfloat16
#: autocast where the CPU has it, half the recipe's learning rate). 10 epochs × 40 batches (about half an
#: hour on this project's 2-core CPU alone).
CPU_MIMICS = CPU_ACQ.replace(
    name="cpu-mimics", epochs=10, pos_fraction=0.35, edge_fraction=0.1, fluid_fraction=0.1, mimic_fraction=0.25,
)

#: Stage 6's recipe continued with nnU-Net's gamma augmentation on a third of the crops (``g ~ U(0.6, 1.5)``):
#: the network meets fluid less (and more) contrasted than the generator's tissue ranges draw it, as scans
#: of other sequences and field strengths show it. 6 epochs × 40 batches.
CPU_CONTRAST = CPU_MIMICS.replace(name="cpu-contrast", epochs=6, gamma_prob=0.35, gamma=(0.6, 1.5))

#: Stage 7's recipe with the network's own false positives as well as the recorded mimics: the second stage
#: cannot tell a lacune blurred by coarse voxels or thick slices from a mimic (its FLAIR rim is gone), so the
#: network itself must reject the mimics. A fifth of the crops on the false positives it makes on the
#: training phantoms (mined on 6 of them before the first epoch and every 3 epochs), a fifth on recorded
#: mimics, 30 % on lesions, the rest on fluid-like voxels, the brain's edge and anywhere; gamma as stage 7.
#: 9 epochs × 40 batches.
CPU_SPECIFIC = CPU_CONTRAST.replace(
    name="cpu-specific", epochs=9, pos_fraction=0.3, mimic_fraction=0.2, hard_fraction=0.2, fluid_fraction=0.1,
    edge_fraction=0.05, mine_every=3, mine_subjects=6,
)

PRESETS = {"valdo": VALDO, "cpu": CPU, "cpu-hardneg": CPU_HARDNEG, "gpu-hardneg": GPU_HARDNEG, "cpu-acq": CPU_ACQ,
           "cpu-mimics": CPU_MIMICS, "cpu-contrast": CPU_CONTRAST, "cpu-specific": CPU_SPECIFIC, "smoke": SMOKE}


def get_preset(name: str) -> TrainConfig:
    return PRESETS[look_up_option(name, list(PRESETS), "preset")]
