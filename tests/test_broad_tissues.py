"""Broad tissue ranges (``--broad-tissues``): the training ranges and fluid of less contrast beyond them,
drawn where the mimics draw the tissue means, every other draw unchanged."""

import sys
from pathlib import Path

import numpy as np
import pytest

from lacunes.synthetic import SynthConfig, TissueRanges, generate_phantom
from lacunes.synthetic.mimics import BROAD_TISSUES, MimicConfig, draw_means
from lacunes.training.generated import GeneratedData

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from families import WIDE_TISSUES  # noqa: E402


def within(inner: TissueRanges, outer: TissueRanges) -> bool:
    return all(outer_r[0] <= r[0] <= r[1] <= outer_r[1]
               for m in ("T1", "T2", "FLAIR") for k, r in getattr(inner, m).items()
               for outer_r in [getattr(outer, m)[k]])


def test_broad_ranges_hold_the_training_ranges_and_the_wide_familys():
    assert within(TissueRanges(), BROAD_TISSUES) and within(WIDE_TISSUES, BROAD_TISSUES)
    assert not within(WIDE_TISSUES, TissueRanges())


def test_broad_ranges_reach_fluid_of_less_contrast():
    rng = np.random.default_rng(0)
    narrow = [draw_means(rng, TissueRanges()) for _ in range(300)]
    broad = [draw_means(rng, BROAD_TISSUES) for _ in range(300)]

    def fluid_over_wm(draws, m):
        return np.array([d[m]["csf"] / d[m]["wm"] for d in draws])

    assert fluid_over_wm(broad, "T1").max() > fluid_over_wm(narrow, "T1").max() + 0.08
    assert fluid_over_wm(broad, "FLAIR").max() > fluid_over_wm(narrow, "FLAIR").max() + 0.2
    assert fluid_over_wm(broad, "T2").min() < fluid_over_wm(narrow, "T2").min() - 0.3
    for d in broad:  # fluid stays fluid-like
        assert d["T1"]["csf"] < d["T1"]["gm"] < d["T1"]["wm"] and d["FLAIR"]["csf"] < d["FLAIR"]["wm"]
        assert d["T2"]["wm"] < d["T2"]["gm"] < d["T2"]["csf"]


def test_the_option_changes_the_tissue_means_alone():
    config = SynthConfig.from_options(mimics=True, broad_tissues=True)
    assert config.mimics == MimicConfig(tissues=BROAD_TISSUES)
    with pytest.raises(ValueError, match="--mimics"):
        SynthConfig.from_options(broad_tissues=True)
    plain = generate_phantom(5, 3, SynthConfig.from_options(mimics=True))
    broad = generate_phantom(5, 3, config)
    assert np.array_equal(plain.rater1, broad.rater1) and [les.centre_vox for les in plain.lesions] == [
        les.centre_vox for les in broad.lesions]
    assert not np.array_equal(plain.images["T1"], broad.images["T1"])


def test_training_and_synth_take_it(tmp_path):
    from lacunes.cli import main

    assert GeneratedData(4, seed=3, mimics=True, broad_tissues=True).synth_config().mimics.tissues == BROAD_TISSUES
    assert GeneratedData(4, seed=3, mimics=True).synth_config().mimics.tissues == TissueRanges()
    with pytest.raises(ValueError, match="--mimics"):
        GeneratedData(4, seed=3, broad_tissues=True)
    with pytest.raises(SystemExit, match="lacunes synth: .*--mimics"):
        main(["synth", "--n", "1", "--out", str(tmp_path), "--broad-tissues", "--no-progress"])
    assert not any(tmp_path.iterdir())
