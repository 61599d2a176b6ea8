import json

import numpy as np
import pytest

from lacunes.instances import label_instances
from lacunes.io import read_volume
from lacunes.synthetic import SynthConfig, generate_phantom, write_phantom


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(seed=5, index=3)


def test_deterministic_for_a_seed(phantom):
    again = generate_phantom(seed=5, index=3)
    for name in phantom.images:
        np.testing.assert_array_equal(phantom.images[name], again.images[name])
    np.testing.assert_array_equal(phantom.rater2, again.rater2)
    other = generate_phantom(seed=6, index=3)
    assert not np.array_equal(other.images["T1"], phantom.images["T1"])


def test_lacunes_have_the_size_range_and_the_labels_cover_exactly_them(phantom):
    lacunes = phantom.lacunes
    assert lacunes, "seed 5 / subject 3 has lacunes"
    labels, n = label_instances(phantom.rater1)
    assert n == len(lacunes)
    for lac in lacunes:
        assert 3.0 <= max(lac.diameters_mm) <= 15.0
        centre = tuple(int(round(v)) for v in lac.centre_vox)
        assert phantom.rater1[centre] == 1
    assert int(phantom.rater1.sum()) == sum(lac.voxels for lac in lacunes)


def test_mimics_are_never_labelled(phantom):
    mimics = [les for les in phantom.lesions if les.kind in ("pvs", "wmh")]
    assert any(m.kind == "pvs" for m in mimics)
    for m in mimics:
        centre = tuple(int(round(v)) for v in m.centre_vox)
        assert phantom.rater1[centre] == 0 and phantom.rater2[centre] == 0
    # PVS are thinner than 3 mm; lacunes at least 3 mm
    assert all(max(m.diameters_mm[:2]) < 3.0 for m in mimics if m.kind == "pvs")


def test_contrast_ordering(phantom):
    lac = phantom.rater1 > 0
    wm_like = np.zeros_like(lac)
    for lesion in phantom.lacunes:  # white matter around the lacune: a shell 3-5 voxels out
        c = np.array(lesion.centre_vox)
        idx = np.indices(lac.shape, dtype=np.float32)
        d = np.sqrt(((idx - c[:, None, None, None]) ** 2).sum(0))
        r = max(lesion.diameters_mm) / 2
        wm_like |= (d > r + 3) & (d < r + 5)
    t1, t2 = phantom.images["T1"].astype(float), phantom.images["T2"].astype(float)
    assert t1[lac].mean() < 0.7 * t1[wm_like].mean()
    assert t2[lac].mean() > 1.3 * t2[wm_like].mean()


def test_second_rater_misses_small_lesions_and_changes_borders():
    cfg = SynthConfig(p_no_lacune=0.0, max_lacunes=5, lacune_diameter_mm=(3.0, 4.9), p_rater2_miss_small=1.0)
    p = generate_phantom(seed=1, index=1, config=cfg)
    assert p.lacunes and p.rater1.any()
    assert not p.rater2.any(), "every lacune is under 5 mm, so rater 2 misses all of them"
    cfg = SynthConfig(p_no_lacune=0.0, lacune_diameter_mm=(6.0, 10.0), p_rater2_border=1.0)
    p = generate_phantom(seed=2, index=1, config=cfg)
    mean = (p.rater1.astype(float) + p.rater2) / 2
    assert (mean == 0.5).any() and (mean == 1.0).any()
    behaviours = {les.rater2 for les in p.lacunes}
    assert behaviours <= {"dilated", "eroded"}


def test_rater_agreement_statistics_over_subjects():
    agree, total = 0, 0
    for i in range(1, 4):
        p = generate_phantom(seed=11, index=i)
        for lac in p.lacunes:
            total += 1
            agree += lac.rater2 == "same"
    assert total > 0
    # Defaults: rater 2 redraws 40 % of borders and misses 35 % of lacunes under 5 mm.
    assert 0.2 <= agree / total <= 0.9


def test_write_valdo_layout_and_preview(phantom, tmp_path):
    written = write_phantom(phantom, tmp_path, preview=True)
    names = {p.name for p in written}
    sid = phantom.subject_id
    for m in ("T1", "T2", "FLAIR"):
        assert f"{sid}_space-T1_desc-masked_{m}.nii.gz" in names
    assert f"{sid}_space-T1_desc-Rater1_Lacunes.nii.gz" in names
    assert (tmp_path / f"{sid}_preview.png").stat().st_size > 10_000
    arr, geom = read_volume(tmp_path / f"{sid}_space-T1_desc-Rater2_Lacunes.nii.gz")
    np.testing.assert_array_equal(arr, phantom.rater2)
    record = json.loads((tmp_path / f"{sid}_space-T1_desc-synthetic_lesions.json").read_text())
    assert len(record) == len(phantom.lesions)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="lacune_diameter_mm"):
        SynthConfig(lacune_diameter_mm=(10.0, 3.0))


def test_each_generator_option_switches_on_its_own_ranges_only():
    assert SynthConfig.from_options() is None
    off = SynthConfig()
    lacune_free = SynthConfig.from_options(lacune_free=True)
    assert lacune_free.p_no_lacune == 1.0 and lacune_free.mimics is None and lacune_free.acquisition is None
    fields = {"acquisitions": "acquisition", "lacune_shapes": "lacune_shapes", "mimics": "mimics",
              "anatomy_variation": "anatomy_variation"}
    for option, name in fields.items():
        config = SynthConfig.from_options(**{option: True})
        assert getattr(config, name) is not None and getattr(off, name) is None, option
        assert config.p_no_lacune == off.p_no_lacune
        assert all(getattr(config, other) is None for other in fields.values() if other != name), option


def test_tissue_model_is_written_and_lesions_sit_in_tissue(phantom, tmp_path):
    from lacunes.synthetic import TISSUE_LABELS

    assert set(np.unique(phantom.tissues)) <= set(TISSUE_LABELS)
    assert ((phantom.tissues > 0) == (phantom.images["T1"] > 0)).mean() > 0.99
    write_phantom(phantom, tmp_path)
    tissues, _ = read_volume(tmp_path / f"{phantom.subject_id}_space-T1_desc-synthetic_tissues.nii.gz")
    np.testing.assert_array_equal(tissues, phantom.tissues)
    assert (phantom.tissues[phantom.rater1 > 0] >= 2).all()  # lacunes are placed in GM or WM


def test_randomized_acquisitions_keep_the_anatomy_and_labels_and_vary_the_images(phantom, tmp_path):
    from lacunes.synthetic import AcquisitionConfig, acquisition_grids

    thick = AcquisitionConfig(p_resolution=1.0, voxel_mm=(1.4, 1.4), p_thick=1.0, slice_mm=(4.0, 4.0),
                              slice_axis_weights=(0.0, 0.0, 1.0), p_contrast=1.0)
    acquired = generate_phantom(seed=5, index=3, config=SynthConfig(acquisition=thick))
    np.testing.assert_array_equal(acquired.rater1, phantom.rater1)  # labels exact, on the 1 mm grid
    assert [les.centre_vox for les in acquired.lesions] == [les.centre_vox for les in phantom.lesions]
    drawn = acquired.acquisition
    assert drawn["voxel_mm"] == 1.4 and drawn["thick"] == {"axis": 2, "mm": 4.0} and "contrasts" in drawn
    for name in acquired.images:
        assert acquired.images[name].shape == phantom.images[name].shape
        assert acquired.images[name].dtype == np.int16

    def roughness(img, axis):  # mean squared difference of neighbours along an axis, inside the brain
        x = img.astype(np.float32)
        d = np.diff(x, axis=axis)
        inside = np.diff((x > 0).astype(np.int8), axis=axis) == 0
        return float((d[inside] ** 2).mean())

    # the 4 mm slices blur FLAIR along z far more than in-plane; the T1 (1.4 mm isotropic) is not thick
    flair = acquired.images["FLAIR"]
    assert roughness(flair, 2) < 0.5 * roughness(flair, 0)
    assert roughness(acquired.images["T1"], 2) > 0.5 * roughness(acquired.images["T1"], 0)
    assert roughness(flair, 0) < roughness(phantom.images["FLAIR"], 0)  # 1.4 mm voxels: blurred in-plane too
    native, grid, t1 = acquisition_grids(flair.shape, drawn, "FLAIR")
    assert grid.spacing == (1.4, 1.4, 4.0) and t1.spacing == (1.4, 1.4, 1.4) and native.spacing == (1.0, 1.0, 1.0)
    # another index draws another acquisition; the default generator draws none
    assert generate_phantom(seed=5, index=4, config=SynthConfig(acquisition=AcquisitionConfig())).acquisition != drawn
    assert phantom.acquisition is None
    # the phantom's files say what was drawn and at what voxel size each contrast was acquired; a phantom
    # whose acquisition was not randomized has no such sidecar
    written = write_phantom(acquired, tmp_path / "acquired")
    sidecar = tmp_path / "acquired" / f"{acquired.subject_id}_space-T1_desc-synthetic_acquisition.json"
    assert sidecar in written
    record = json.loads(sidecar.read_text())
    assert record["acquired_spacing_mm"] == {"T1": [1.4, 1.4, 1.4], "T2": [1.4, 1.4, 4.0], "FLAIR": [1.4, 1.4, 4.0]}
    assert record["voxel_mm"] == 1.4 and record["thick"] == {"axis": 2, "mm": 4.0} and "contrasts" in record
    write_phantom(phantom, tmp_path / "plain")
    assert not list((tmp_path / "plain").glob("*acquisition.json"))


def test_lacune_shapes_lobulate_lacunes_where_they_were_and_add_hyperintensities_against_them(tmp_path):
    from lacunes.synthetic import LacuneShapeConfig

    every = SynthConfig(lacune_shapes=LacuneShapeConfig(p_irregular=1.0, p_beside_wmh=1.0))
    plain, shaped = generate_phantom(seed=5, index=4), generate_phantom(seed=5, index=4, config=every)
    assert len(shaped.lacunes) == len(plain.lacunes) >= 2
    assert label_instances(shaped.rater1)[1] == len(shaped.lacunes)  # one component each, none merged
    for les, ref in zip(shaped.lacunes, plain.lacunes):
        assert les.centre_vox == ref.centre_vox and les.shape == "irregular" and les.beside_wmh
        own = label_instances(shaped.rater1)[0]
        mine = own == own[tuple(int(round(v)) for v in les.centre_vox)]
        theirs = label_instances(plain.rater1)[0]
        theirs = theirs == theirs[tuple(int(round(v)) for v in ref.centre_vox)]
        dice = 2 * (mine & theirs).sum() / (mine.sum() + theirs.sum())
        assert dice < 0.95, "the outline is not the ellipsoid's"
        assert 0.7 <= les.voxels / ref.voxels <= 1.0 and les.voxels == int(mine.sum())
        assert 0.8 <= max(les.diameters_mm) / max(ref.diameters_mm) <= 1.15
    # each lacune is followed by the hyperintensity against it: bright on FLAIR, never labelled
    for k, les in enumerate(shaped.lesions):
        if les.kind == "lacune":
            halo = shaped.lesions[k + 1]
            assert halo.kind == "wmh"
            box = tuple(slice(int(round(v)) - 1, int(round(v)) + 2) for v in halo.centre_vox)
            assert shaped.images["FLAIR"][box].mean() > 1.2 * plain.images["FLAIR"][box].mean()
            assert shaped.rater1[tuple(int(round(v)) for v in halo.centre_vox)] == 0
    # the sidecar says which lacunes are which; without the option it carries no shape fields
    write_phantom(shaped, tmp_path)
    record = json.loads((tmp_path / "sub-004_space-T1_desc-synthetic_lesions.json").read_text())
    assert record[0]["shape"] == "irregular" and record[0]["beside_wmh"] is True
    write_phantom(plain, tmp_path / "plain")
    assert "shape" not in json.loads((tmp_path / "plain" / "sub-004_space-T1_desc-synthetic_lesions.json").read_text())[0]


def test_small_lacunes_stay_round_and_the_default_phantom_is_unchanged(phantom):
    from lacunes.synthetic import LacuneShapeConfig

    shaped = generate_phantom(seed=5, index=3, config=SynthConfig(lacune_shapes=LacuneShapeConfig(p_irregular=1.0)))
    small = [les for les in shaped.lacunes if max(les.diameters_mm) < 5.0]
    assert small and all(les.shape == "ellipsoid" for les in small)
    assert phantom.lacunes[0].shape is None and not phantom.lacunes[0].beside_wmh


def test_a_written_phantom_lies_over_the_template_in_scanner_space(phantom, tmp_path):
    """The files carry the template's orientation and millimetres: the ICBM brain resampled through
    scanner space onto the phantom's grid covers the phantom's brain (Dice 0.94 for this one, its random
    affine and deformation included), and the same arrays under the other orientation (x and y reversed,
    as phantoms were once written) do not (0.83)."""
    import SimpleITK as sitk
    from nilearn import datasets

    write_phantom(phantom, tmp_path)
    stored = sitk.ReadImage(str(tmp_path / f"{phantom.subject_id}_space-T1_desc-masked_T1.nii.gz"), sitk.sitkFloat32)
    template = sitk.ReadImage(str(datasets.MNI152_FILE_PATH), sitk.sitkFloat32)

    def dice(image: sitk.Image) -> float:
        theirs = sitk.GetArrayFromImage(sitk.Resample(template, image, sitk.Transform(), sitk.sitkLinear, 0.0)) > 0
        ours = sitk.GetArrayFromImage(image) > 0
        return 2 * float((theirs & ours).sum()) / float(theirs.sum() + ours.sum())

    assert stored.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    turned = sitk.Image(stored)
    turned.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    last = np.array(stored.GetSize()) - 1.0
    turned.SetOrigin(tuple(np.array(stored.GetOrigin()) - np.array([last[0], last[1], 0.0])))  # same field of view
    right = dice(stored)
    assert right > 0.92, right
    assert dice(turned) < right - 0.05


def test_default_phantoms_are_unchanged_by_the_options():
    """The sample case (seed 2027, subject 201) is regenerated bit for bit: the generator's options draw
    from streams of their own."""
    from pathlib import Path

    sample = Path(__file__).resolve().parent.parent / "test"
    phantom = generate_phantom(2027, 201)
    for m in ("T1", "FLAIR"):
        stored, _ = read_volume(sample / f"sub-201_space-T1_desc-masked_{m}.nii.gz")
        np.testing.assert_array_equal(stored, phantom.images[m])


def test_mimics_are_fluid_unlabelled_and_leave_the_lacunes_where_they_are():
    from lacunes.synthetic import MimicConfig
    from lacunes.synthetic.mimics import POCKET_SITES_MM

    cfg = SynthConfig(mimics=MimicConfig(pockets=(6, 6), p_cluster=1.0))
    plain, mimicked = generate_phantom(5, 3), generate_phantom(5, 3, config=cfg)
    np.testing.assert_array_equal(plain.rater1, mimicked.rater1)  # the same lacunes, nothing else labelled
    pockets = [les for les in mimicked.lesions if les.kind == "pocket"]
    assert len(pockets) >= 3
    assert all(les.site.removesuffix(" (detached)") in POCKET_SITES_MM for les in pockets)
    extra_pvs = sum(les.kind == "pvs" for les in mimicked.lesions) - sum(les.kind == "pvs" for les in plain.lesions)
    assert extra_pvs >= 7  # at least the default minimum (4) and a cluster (3)
    t1, t2 = mimicked.images["T1"].astype(float), mimicked.images["T2"].astype(float)
    brain = t1 > 0
    for les in pockets:  # fluid: dark on T1, bright on T2 against the brain
        c = tuple(np.round(les.centre_vox).astype(int))
        assert t1[c] < np.percentile(t1[brain], 20) and t2[c] > np.percentile(t2[brain], 80), les
    with pytest.raises(ValueError, match="pocket site"):
        MimicConfig(pocket_sites={"fourth ventricle": 1.0})


def test_tissue_means_keep_each_contrasts_order_and_the_deep_nuclei_their_own():
    from lacunes.synthetic.mimics import TissueRanges, draw_means

    rng = np.random.default_rng(0)
    draws = [draw_means(rng, TissueRanges()) for _ in range(200)]
    for d in draws:
        assert d["T1"]["csf"] < d["T1"]["gm"] < d["T1"]["wm"]
        assert d["T2"]["wm"] < d["T2"]["gm"] < d["T2"]["csf"]
        assert d["FLAIR"]["csf"] < d["FLAIR"]["wm"] < d["FLAIR"]["gm"]
    deep_minus_cortex = [d["T1"]["dgm"] - d["T1"]["gm"] for d in draws]
    assert min(deep_minus_cortex) < 0 < max(deep_minus_cortex)  # drawn apart, not tied to the cortex


def test_colin27_is_a_measurement_anatomy():
    from lacunes.synthetic.anatomy import colin27_path, load_colin27, tissue_fractions
    from lacunes.training.config import SMOKE
    from lacunes.training.generated import generated_subject

    # the tissue model on a synthetic T1 of three known classes, with a partial-volume ramp
    t1 = np.concatenate([np.full(50, 30.0), np.linspace(30, 80, 11), np.full(50, 80.0), np.full(50, 120.0)])
    csf, gm, wm, means = tissue_fractions(t1[None, None], np.ones((1, 1, t1.size), bool))
    np.testing.assert_allclose(means, [30, 80, 120], atol=2.0)  # the ramp pulls the ends in
    np.testing.assert_allclose((csf + gm + wm)[0, 0], 1.0, atol=1e-6)
    assert csf[0, 0, 55] == pytest.approx(0.5, abs=0.05) and wm[0, 0, -1] == 1.0
    with pytest.raises(ValueError, match="measurement"):
        generated_subject(9, 1, SMOKE, SynthConfig(anatomy="colin27"))
    if not colin27_path().is_file():
        pytest.skip("Debian's mricron-data is not installed")
    colin = load_colin27()
    assert 1.0e6 < colin.mask.sum() < 1.8e6  # an adult brain in 1 mm voxels
    assert 0.3 < colin.wm.sum() / colin.mask.sum() < 0.5 and colin.csf.sum() / colin.mask.sum() < 0.25
