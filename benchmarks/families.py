"""Out-of-family phantom families: subjects that training, the second stage and the operating point never
see, made differently by construction, for measuring specificity and sensitivity on scans the model was not
tuned for (``python benchmarks/quality.py --family NAME``).

- ``colin27``: another anatomy — the real single-subject Colin27 head (Debian's ``mricron-data``) instead of
  the ICBM template every training phantom is made from, with its real ventricles, horns and sulci; the
  training generator's ranges otherwise (its mimics included).
- ``wide``: the training template, but every generator setting outside the training ranges — tissue means
  with less fluid contrast (T1 CSF brighter, FLAIR CSF less suppressed), longer and more perivascular
  spaces and larger enlarged ones, larger fluid pockets cut off by thinner bridges — and acquisitions
  wider than training's (coarser voxels, thicker slices, stronger bias and noise).

Each family has 20 lacune-free subjects (indices 1-20) and 10 with 1-5 lacunes (21-30), on a seed of its
own that the generator refuses for training (:data:`lacunes.options.RESERVED_SEEDS`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lacunes.options import RESERVED_SEEDS
from lacunes.synthetic import AcquisitionConfig, MimicConfig, SynthConfig, TissueRanges, generate_phantom

#: Outside the training ranges of :class:`lacunes.synthetic.mimics.TissueRanges` on the fluid's side.
WIDE_TISSUES = TissueRanges(
    T1={"csf": (0.36, 0.50), "gm": (0.62, 0.78), "dgm": (0.70, 0.95), "wm": (0.95, 1.10), "wmh": (0.70, 0.90)},
    T2={"csf": (0.70, 0.85), "gm": (0.48, 0.62), "dgm": (0.30, 0.50), "wm": (0.32, 0.44), "wmh": (0.60, 0.80)},
    FLAIR={"csf": (0.20, 0.32), "gm": (0.58, 0.72), "dgm": (0.50, 0.66), "wm": (0.44, 0.56), "wmh": (0.85, 1.10),
           "rim": (0.70, 0.90)},
)
WIDE_MIMICS = MimicConfig(
    pvs=(20, 45), pvs_mm=(1.0, 3.0), p_enlarged=0.3, enlarged_mm=(4.0, 6.0), pvs_length_mm=(15.0, 40.0),
    p_cluster=0.8, cluster_size=(6, 12), p_wall=0.5, pockets=(5, 10), pocket_mm=(6.0, 14.0), p_detached=0.7,
    gap_mm=(0.4, 0.8), tissues=WIDE_TISSUES,
)
WIDE_ACQUISITIONS = AcquisitionConfig(
    p_resolution=0.5, voxel_mm=(1.3, 1.7), p_thick=0.5, slice_mm=(4.0, 6.0), p_contrast=0.0,
    gamma=(1.0, 1.0), bias_strength=(0.2, 0.4), noise=(0.04, 0.08),
)


@dataclass(frozen=True)
class Family:
    name: str
    seed: int
    config: SynthConfig
    description: str
    lacune_free: int = 20
    with_lacunes: int = 10

    def subject_config(self, index: int) -> SynthConfig:
        """Subjects 1..lacune_free have no lacune, the others 1-5."""
        return replace(self.config, p_no_lacune=1.0 if index <= self.lacune_free else 0.0)

    @property
    def indices(self) -> list[int]:
        return list(range(1, self.lacune_free + self.with_lacunes + 1))

    def phantom(self, index: int):
        """Subject ``index`` of the family, made in memory (id ``<family>-<index:03d>``)."""
        return generate_phantom(self.seed, index, self.subject_config(index), subject_id=f"{self.name}-{index:03d}")


def index_range(text: str) -> list[int]:
    """Subject indices from ``--subjects``: ``21-30``, ``5`` or ``1-3,7``."""
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out += list(range(int(first), int(last or first) + 1))
    return out


FAMILIES = {
    "colin27": Family("colin27", 8801, SynthConfig(anatomy="colin27", mimics=MimicConfig()),
                      "the Colin27 head (a real anatomy), training generator ranges and mimics"),
    "wide": Family("wide", 8802, SynthConfig(mimics=WIDE_MIMICS, acquisition=WIDE_ACQUISITIONS),
                   "the training template, every generator setting and acquisition outside the training ranges"),
}
for _family in FAMILIES.values():
    assert _family.seed in RESERVED_SEEDS, f"the {_family.name} family's seed must be reserved from training"
