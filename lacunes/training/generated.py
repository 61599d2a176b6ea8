"""Training on phantoms generated while the network trains: no files, no data folder.

Worker processes generate phantoms (:func:`lacunes.synthetic.generate_phantom`, parameters from
:class:`lacunes.synthetic.SynthConfig`) and turn them into training subjects exactly as a subject read
from files is (:func:`lacunes.training.data.training_subject_from_arrays`). The main process holds a pool
of ``size`` of them (as tensors, on the GPU where they fit) and draws each batch's subjects from it:

- each subject is drawn for at most ``uses`` batches (default 1: the network never sees a subject
  twice), then leaves the pool; a freshly generated one takes its place. ``uses=0`` keeps every
  subject until a new one arrives, replacing the most used (the pool refreshes as fast as the workers
  generate, and the network never waits on them after the first fill);
- subjects are taken least used first, then oldest first; with ``uses=1`` the batches are therefore
  the same whatever the workers' speed (subjects in generation order);
- phantom indices are never repeated within a run: process ``rank`` of ``world`` generates indices
  ``first_index + rank + world·k``, k = 0, 1, …; ``--resume`` continues at the next k (the subjects in
  the pool when the run stopped are not regenerated).

Time the training loop spends waiting for a subject is counted in ``wait_seconds``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context

import numpy as np
import torch

from lacunes import options
from lacunes.training.config import TrainConfig
from lacunes.training.data import TrainingSubject, training_subject_from_arrays
from lacunes.training.pipeline import HeldSubject, hold, holding_device, subject_bytes

logger = logging.getLogger(__name__)

#: Seeds whose phantoms the project measures itself on (held-out benchmark, operating-point validation):
#: training on them would leak the benchmark into the weights (:data:`lacunes.options.RESERVED_SEEDS`).
RESERVED_SEEDS = options.RESERVED_SEEDS


@dataclass(frozen=True)
class GeneratedData:
    """What ``lacunes train --synthetic`` asks for.

    Attributes:
        size: subjects held at once (an epoch is ``size`` subjects' worth of batches, as for a folder).
        seed: the phantom generator's seed.
        uses: batches each subject is drawn for (0 = until replaced by a newer one).
        workers: generating processes of each training process (default: the CPU cores less one, at least 1;
            under DDP, divide the cores among the training processes).
        first_index: index of the first phantom.
        acquisitions: randomize each phantom's acquisition (voxel size, thick-slice T2/FLAIR, contrast,
            bias, noise: :class:`lacunes.synthetic.AcquisitionConfig`), then conform it to 1 mm as
            inference does.
        lacune_shapes: lobulated lacunes, some against a hyperintensity
            (:class:`lacunes.synthetic.LacuneShapeConfig`), instead of ellipsoids only.
        mimics: lacune mimics as varied as real brains hold them and per-structure tissue intensities
            (:class:`lacunes.synthetic.mimics.MimicConfig`); their recorded centres are the ``mimic`` crop
            centres (:mod:`lacunes.training.sampling`).
        anatomy_variation: the template deformed further (deformation strength and scaling per axis drawn
            per subject, wider ventricle and sulcal ranges: :class:`lacunes.synthetic.AnatomyVariation`).
        broad_tissues: with ``mimics``, tissue means drawn from broad ranges, fluid of less contrast
            included (:data:`lacunes.synthetic.mimics.BROAD_TISSUES`).
    """

    size: int
    seed: int = options.TRAINING_SEED
    uses: int = 1
    workers: int | None = None
    first_index: int = 1
    acquisitions: bool = False
    lacune_shapes: bool = False
    mimics: bool = False
    anatomy_variation: bool = False
    broad_tissues: bool = False

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"the pool needs at least one subject, got {self.size}")
        if self.uses < 0:
            raise ValueError(f"uses must be >= 0 (0 = until replaced), got {self.uses}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.synth_config()  # refuses options that do not go together (broad tissue ranges without the mimics)
        if self.seed in RESERVED_SEEDS:
            raise ValueError(f"seed {self.seed} generates {RESERVED_SEEDS[self.seed]}; train on another seed")

    @property
    def n_workers(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 2) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def synth_config(self):
        """The generator's parameters (None = :class:`lacunes.synthetic.SynthConfig`'s defaults)."""
        from lacunes.synthetic import SynthConfig

        return SynthConfig.from_options(acquisitions=self.acquisitions, lacune_shapes=self.lacune_shapes,
                                        mimics=self.mimics, anatomy_variation=self.anatomy_variation,
                                        broad_tissues=self.broad_tissues)


def generated_subject(seed: int, index: int, config: TrainConfig, synth=None) -> TrainingSubject:
    """Phantom ``(seed, index)`` as a training subject (what a worker returns), its recorded mimics'
    centres kept for the ``mimic`` crops.

    Raises:
        ValueError: for an anatomy kept for measurement (:data:`lacunes.synthetic.MEASUREMENT_ONLY`).
    """
    from lacunes.synthetic import MEASUREMENT_ONLY, MODALITIES, generate_phantom

    if synth is not None and synth.anatomy in MEASUREMENT_ONLY:
        raise ValueError(f"the {synth.anatomy} anatomy is kept for measurement; train on another")
    phantom = generate_phantom(seed, index, synth, subject_id=f"syn-{seed}-{index}")
    image = np.stack([phantom.images[m].astype(np.float32) for m in MODALITIES])
    mimics = np.array([np.round(les.centre_vox) for les in phantom.lesions if les.kind != "lacune"], np.int64)
    return training_subject_from_arrays(phantom.subject_id, image, [phantom.rater1, phantom.rater2],
                                        phantom.spacing, config, mimic_centres=mimics.reshape(-1, 3))


def _warm_worker() -> None:
    torch.set_num_threads(1)
    from lacunes.synthetic import load_template

    load_template()


class GeneratedSource:
    """The pool of generated subjects (the module docstring); ``epoch(e)`` yields its batches.

    ``maker(seed, index, config, synth)`` makes one subject in a worker (:func:`generated_subject`; a
    picklable module-level function).
    """

    def __init__(self, data: GeneratedData, config: TrainConfig, device: torch.device, batches_per_epoch: int,
                 rank: int = 0, world: int = 1, start: int = 0, synth=None, progress: bool = True,
                 maker=generated_subject) -> None:
        if data.size < config.batch_size:
            raise ValueError(f"a pool of {data.size} subject(s) cannot fill a batch of {config.batch_size}")
        self.data, self.config, self.device = data, config, torch.device(device)
        self.batches_per_epoch = batches_per_epoch
        self.rank, self.world, self.maker = rank, world, maker
        self.synth = synth if synth is not None else data.synth_config()
        self.next_k = start  # next phantom to ask for (its index: first_index + rank + world·k)
        self.received = 0
        self.held: list[HeldSubject] = []
        self.wait_seconds = 0.0
        self.generate_seconds = 0.0  # since the start: wall time of the pool's own fill
        self.where: torch.device | None = None
        self._pending: deque[Future] = deque()
        self._executor = ProcessPoolExecutor(data.n_workers, mp_context=get_context("spawn"), initializer=_warm_worker)
        self._t0 = time.time()
        self._submit()
        self._fill(progress)

    def _index(self, k: int) -> int:
        return self.data.first_index + self.rank + self.world * k

    def _submit(self) -> None:
        # Keep every worker busy, with one more subject queued each.
        while len(self._pending) < 2 * self.data.n_workers:
            self._pending.append(self._executor.submit(self.maker, self.data.seed, self._index(self.next_k),
                                                       self.config, self.synth))
            self.next_k += 1

    def _receive(self, block: bool) -> bool:
        """Move the oldest finished phantom into the pool (waiting for it when ``block``)."""
        if not self._pending or not (block or self._pending[0].done()):
            return False
        t0 = time.time()
        subject = self._pending.popleft().result()
        self.wait_seconds += time.time() - t0 if block else 0.0
        self._submit()
        if self.where is None:  # decided on the first subject: the pool's size is known
            self.where = holding_device(subject_bytes(subject) * (self.data.size + 1), self.device)
            logger.info("generated subjects held on %s (%.0f MB each)", self.where, subject_bytes(subject) / 1e6)
        h = hold(subject, self.where, pin=self.device.type == "cuda" and self.where.type == "cpu")
        h.order = self.received
        self.received += 1
        if len(self.held) >= self.data.size:  # uses=0: the most used (then oldest) makes room
            self.held.remove(max(self.held, key=lambda x: (x.uses, -x.order)))
        self.held.append(h)
        return True

    def _fill(self, progress: bool) -> None:
        from tqdm import tqdm

        with tqdm(total=self.data.size, desc="generating", unit="subject", disable=not progress, leave=False) as bar:
            while len(self.held) < self.data.size:
                self._receive(block=True)
                bar.update(1)
        self.generate_seconds = time.time() - self._t0
        self.wait_seconds = 0.0
        logger.info("pool of %d generated subjects filled in %.0f s (%d worker(s))", self.data.size,
                    self.generate_seconds, self.data.n_workers)

    @property
    def subjects(self) -> list[TrainingSubject]:
        return [h.subject for h in self.held]

    def batch(self) -> list[HeldSubject]:
        """The next batch's subjects (waiting for the workers when the pool has too few usable ones)."""
        k = self.config.batch_size
        uses = self.data.uses
        while (len(self.held) < self.data.size or not uses) and self._receive(block=False):
            pass
        while uses and sum(h.uses < uses for h in self.held) < k:
            self._receive(block=True)
        usable = [h for h in self.held if not uses or h.uses < uses]
        chosen = sorted(usable, key=lambda h: (h.uses, h.order))[:k]
        for h in chosen:
            h.uses += 1
            if uses and h.uses >= uses:
                self.held.remove(h)
        return chosen

    def epoch(self, epoch: int):
        for _ in range(self.batches_per_epoch):
            yield self.batch()

    def state(self) -> dict:
        """What ``--resume`` needs: where the phantom stream goes on."""
        return {"next_k": self.next_k, "received": self.received, **self.data.to_dict()}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
