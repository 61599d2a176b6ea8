"""benchmarks/family_ablation.py: an out-of-family family with one part of the generator set back to the
training ranges, the same lacunes at the same places."""

from argparse import Namespace
from dataclasses import fields

import numpy as np
import pytest

from lacunes.synthetic import AcquisitionConfig, MimicConfig, SynthConfig, TissueRanges, generate_phantom
from tests.conftest import load_benchmark

family_ablation = load_benchmark("family_ablation")
FAMILIES = load_benchmark("families").FAMILIES


def changed(a, b) -> set[str]:
    return {f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def test_each_part_is_set_back_to_training_alone():
    wide = FAMILIES["wide"].subject_config(21)
    tissues = family_ablation.with_training(wide, "tissues")
    assert changed(wide, tissues) == {"mimics"} and changed(wide.mimics, tissues.mimics) == {"tissues"}
    assert tissues.mimics.tissues == TissueRanges()
    mimics = family_ablation.with_training(wide, "mimics")
    assert mimics.mimics.tissues == wide.mimics.tissues  # the family's intensities kept
    assert changed(mimics.mimics, MimicConfig()) == {"tissues"}
    acquisition = family_ablation.with_training(wide, "acquisition")
    assert changed(wide, acquisition) == {"acquisition"} and acquisition.acquisition == AcquisitionConfig()
    colin = FAMILIES["colin27"].subject_config(21)
    assert family_ablation.with_training(colin, "anatomy").anatomy == SynthConfig().anatomy != colin.anatomy
    with pytest.raises(ValueError, match="unknown part 'noise'"):
        family_ablation.with_training(wide, "noise")


def test_a_variant_holds_the_same_lacunes_with_other_images():
    family = FAMILIES["wide"]
    made = family.phantom(21)
    variant = generate_phantom(family.seed, 21, family_ablation.with_training(family.subject_config(21), "tissues"))
    assert made.lacunes and np.array_equal(made.rater1, variant.rater1) and np.array_equal(made.rater2, variant.rater2)
    assert not np.array_equal(made.images["T1"], variant.images["T1"])


def row(subject, k, d, lost, p):
    return {"subject_id": subject, "id": k, "diameter_mm": d, "lost_at": lost, "network_max_p": p}


def test_section_counts_each_variant_and_follows_the_lacunes_lost_somewhere():
    args = Namespace(model="m.pt", family="wide", parts="tissues", name="", threads=None, section="")
    made = [row("w-1", 1, 12.0, "network", 0.01), row("w-1", 2, 6.0, "kept", 1.0), row("w-2", 1, 3.0, "network", 0.0)]
    tissues = [row("w-1", 1, 12.0, "kept", 1.0), row("w-1", 2, 6.0, "kept", 1.0), row("w-2", 1, 3.0, "kept", 0.9)]
    text = family_ablation.section({"as made": made, "tissues": tissues}, args, 1.0)
    assert "| as made | 1 of 3 | 1 of 2 | 2 | 0 |" in text
    assert "| training tissues | 3 of 3 | 2 of 2 | 0 | 0 |" in text
    assert "| w-1 | 1 | 12.0 | network (0.01) | kept (1.00) |" in text
    assert "| w-1 | 2 |" not in text and "| w-2 | 1 |" not in text  # kept everywhere; under 4 mm
    elsewhere = [row("w-1", 1, 9.0, "kept", 1.0)] + tissues[1:]
    text = family_ablation.section({"as made": made, "anatomy": elsewhere}, args, 1.0)
    assert "not followed one by one" in text and "| w-1 | 1 | 12.0 |" not in text
