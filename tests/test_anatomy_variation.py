"""The template deformed further (``SynthConfig.anatomy_variation``): its own stream, so that every other
draw of a phantom is the one it makes without it, and each range doing what it names."""

from dataclasses import replace

import numpy as np
import pytest

from lacunes.synthetic import AnatomyVariation, SynthConfig, generate_phantom
from lacunes.training.generated import GeneratedData

SEED, INDEX = 5, 4  # a phantom with two lacunes
DEFAULT = SynthConfig()
# The default generator's ranges as a variation: a displacement of exactly 2.5 mm and no scaling per axis.
AS_DEFAULT = AnatomyVariation(deformation_mm=(DEFAULT.deformation_mm,) * 2, axis_scale=(1.0, 1.0),
                              ventricle_change=DEFAULT.ventricle_change, sulcal_atrophy=DEFAULT.sulcal_atrophy)


@pytest.fixture(scope="module")
def plain():
    return generate_phantom(SEED, INDEX)


def lacunes(phantom):
    return [tuple(round(d, 3) for d in les.diameters_mm) for les in phantom.lesions if les.kind == "lacune"]


def test_with_the_default_ranges_it_is_the_default_phantom(plain):
    same = generate_phantom(SEED, INDEX, SynthConfig(anatomy_variation=AS_DEFAULT))
    for name in plain.images:
        np.testing.assert_array_equal(same.images[name], plain.images[name])
    np.testing.assert_array_equal(same.tissues, plain.tissues)


def test_it_moves_the_anatomy_and_keeps_every_other_draw(plain):
    varied = generate_phantom(SEED, INDEX, SynthConfig(anatomy_variation=AnatomyVariation()))
    assert len(lacunes(plain)) == 2
    assert lacunes(varied) == lacunes(plain)  # the same lacunes drawn, placed on the new anatomy
    assert [les.kind for les in varied.lesions] == [les.kind for les in plain.lesions]
    changed = np.mean(varied.tissues != plain.tissues)
    assert changed > 0.05, changed
    # The lacunes are labelled where the images hold fluid: darker than white matter on T1.
    t1, label = varied.images["T1"].astype(float), np.asarray(varied.rater1) > 0
    assert label.any() and t1[label].mean() < 0.7 * np.median(t1[varied.tissues == 3])


def test_ventricle_range_widens_the_fluid(plain):
    narrow = generate_phantom(SEED, INDEX, SynthConfig(anatomy_variation=replace(AS_DEFAULT, ventricle_change=(-0.2, -0.2))))
    wide = generate_phantom(SEED, INDEX, SynthConfig(anatomy_variation=replace(AS_DEFAULT, ventricle_change=(0.6, 0.6))))

    def central_fluid(phantom):  # CSF within 30 mm of where the generator widens the ventricles from
        grid = np.indices(phantom.tissues.shape).astype(float)
        centre = (np.array(phantom.tissues.shape) - 1) / 2 + np.array([0.0, 8.0, 8.0])
        near = sum((grid[d] - centre[d]) ** 2 for d in range(3)) < 30.0**2
        return int(((phantom.tissues == 1) & near).sum())

    assert central_fluid(wide) > 1.5 * central_fluid(narrow) > 0


def test_stronger_deformation_moves_more(plain):
    def moved(deformation):
        var = replace(AS_DEFAULT, deformation_mm=(deformation, deformation))
        return np.mean(generate_phantom(SEED, INDEX, SynthConfig(anatomy_variation=var)).tissues != plain.tissues)

    assert moved(6.0) > 2 * moved(3.0) > 0


@pytest.mark.parametrize("field, value", [("deformation_mm", (3.0, 2.0)), ("deformation_mm", (-1.0, 2.0)),
                                          ("axis_scale", (0.0, 1.0)), ("ventricle_change", (0.2, 1.0)),
                                          ("ventricle_change", (-1.5, 0.2)), ("sulcal_atrophy", (0.0, 1.5))])
def test_bad_ranges_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=rf"anatomy_variation\.{field} must be a range"):
        AnatomyVariation(**{field: value})


def test_training_on_generated_phantoms_takes_it():
    synth = GeneratedData(4, seed=3, anatomy_variation=True).synth_config()
    assert synth.anatomy_variation == AnatomyVariation() and synth.mimics is None
    assert GeneratedData(4, seed=3, mimics=True).synth_config().anatomy_variation is None


def test_synth_writes_it(tmp_path, plain):
    import nibabel as nib

    from lacunes.cli import main

    assert main(["synth", "--n", "1", "--out", str(tmp_path), "--seed", str(SEED), "--first-id", str(INDEX),
                 "--anatomy-variation", "--no-progress"]) == 0
    tissues = np.asarray(nib.load(str(tmp_path / f"sub-{INDEX:03d}_space-T1_desc-synthetic_tissues.nii.gz")).dataobj)
    assert tissues.shape == plain.tissues.shape and np.mean(tissues != plain.tissues) > 0.05
