"""lacunes.regions: the coarse region atlas, the registration onto the template, and lesions named in a
deformed phantom; the lesion table's ``locate`` columns."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from lacunes import regions
from lacunes.geometry import Geometry
from lacunes.instances import lesion_table

needs_atlas = pytest.mark.skipif(not (regions.ATLAS_DIR / regions.AAL_FILE).is_file(),
                                 reason="Debian's mricron-data (its AAL and JHU atlases) is not installed")


def region_at(mni) -> str:
    tpl = regions.load_template()
    index = tuple(np.rint(np.asarray(mni, float) - tpl.affine[:3, 3]).astype(int))
    code = int(tpl.regions[index])
    return regions.REGIONS[code - 1] if code else regions.OUTSIDE


@needs_atlas
def test_the_coarse_atlas_names_structures_at_their_textbook_mni_points():
    assert region_at((26, 2, 2)) == region_at((-26, 2, 2)) == "basal ganglia"  # putamen
    assert region_at((12, 12, 10)) == "basal ganglia"  # caudate head
    assert region_at((12, -18, 6)) == region_at((-12, -18, 6)) == "thalamus"
    assert region_at((22, -12, 8)) == "internal capsule"  # posterior limb
    assert region_at((26, -10, 36)) == "corona radiata / centrum semiovale"
    assert region_at((0, -24, -30)) == "brainstem"  # pons
    assert region_at((20, -60, -30)) == "cerebellum"
    assert region_at((40, -20, 40)) == "lobar / juxtacortical"
    assert region_at((0, 0, 20)) == "other"  # the lateral ventricles' midline
    assert region_at((0, 0, 90)) == regions.OUTSIDE


@needs_atlas
def test_lacunes_placed_in_known_structures_of_a_deformed_phantom_are_named_and_centred_within_5_mm():
    from lacunes.synthetic import SynthConfig, generate_phantom, template_points_in_phantom

    config = SynthConfig(p_no_lacune=1.0)
    phantom = generate_phantom(4242, 3, config)
    geometry = Geometry(phantom.rater1.shape, phantom.spacing, phantom.origin, phantom.direction)
    record, transform = regions.register_to_template(phantom.images["T1"], geometry)
    assert record["usable"] and "deformable" in record and 0.8 < min(record["scales"]) <= max(record["scales"]) < 1.25
    targets = {"basal ganglia": (28, -3, 1), "thalamus": (-10, -15, 11), "internal capsule": (22, -18, 12),
               "corona radiata / centrum semiovale": (-29, -9, 33), "brainstem": (0, -30, -30)}
    voxels, distances = template_points_in_phantom(4242, 3, list(targets.values()), config)
    assert distances.max() < 1.0  # each point is read by a voxel of the phantom
    ball = np.argwhere(np.ones((5, 5, 5), bool)) - 2
    locate = regions.Locator(transform, geometry)
    for (region, mni), voxel in zip(targets.items(), voxels):
        found = locate(voxel + ball)
        assert found["region"] == region and found["region_share"] >= 0.5, (region, found)
        centre = np.array([found["mni_R_mm"], found["mni_A_mm"], found["mni_S_mm"]])
        assert np.linalg.norm(centre - mni) <= 5.0, (region, centre)
        assert found["side"] == ("right" if mni[0] > 2 else "left" if mni[0] < -2 else "midline") or region == "brainstem"


def test_a_failed_registration_leaves_every_lesion_unknown_not_guessed():
    geometry = Geometry((20, 20, 20))
    locate = regions.Locator(None, geometry)
    found = locate(np.array([[10, 10, 10]]))
    assert found["region"] == regions.UNKNOWN and np.isnan(found["mni_R_mm"]) and np.isnan(found["region_share"])
    record, transform = regions.register_to_template(np.zeros((20, 20, 20), np.float32), geometry, "sub-x: T1")
    assert transform is None and not record["usable"] and "sub-x: T1" in record["why"]


def test_without_the_atlas_lesions_keep_their_mni_centre_and_their_region_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("LACUNES_ATLAS_DIR", str(tmp_path))
    regions.load_template.cache_clear()
    try:
        assert "regions unknown" in regions.statement() and "mricron-data" in regions.statement()
        tpl = regions.load_template()
        assert tpl.regions is None
        import SimpleITK as sitk

        geometry = Geometry((20, 20, 20), origin=(-10.0, -10.0, -10.0))
        found = regions.Locator(sitk.Transform(3, sitk.sitkIdentity), geometry)(np.array([[10, 10, 10], [12, 10, 10]]))
        assert found["region"] == regions.UNKNOWN
        assert (found["mni_R_mm"], found["mni_A_mm"], found["mni_S_mm"]) == (-1.0, 0.0, 0.0)  # LPS (1, 0, 0) is R -1
    finally:
        monkeypatch.delenv("LACUNES_ATLAS_DIR")
        regions.load_template.cache_clear()


def test_the_lesion_table_hands_each_lesion_exactly_its_own_voxels_on_the_whole_grid():
    prob = np.zeros((30, 30, 30), np.float32)
    prob[3:6, 4:6, 5:7] = 0.9  # 12 voxels
    prob[20:25, 20:25, 20:25] = 0.8  # 125 voxels
    seen = []

    def locate(voxels):
        seen.append(voxels)
        return {"n": len(voxels), "first": tuple(int(v) for v in voxels.min(0))}

    rows = lesion_table(prob, None, (1.0, 1.0, 1.0), locate=locate)
    assert [(r["id"], r["voxels"], r["n"], r["first"]) for r in rows] == [(1, 125, 125, (20, 20, 20)),
                                                                          (2, 12, 12, (3, 4, 5))]
    assert all(prob[tuple(v.T)].min() >= 0.5 for v in seen)


@needs_atlas
def test_the_sample_cases_lacunes_are_placed_in_the_run_its_table_and_its_record(tmp_path):
    """The sample phantom lies over the template in scanner space (deformed by at most a few degrees, 8 %
    and a smooth displacement), so each lesion's MNI centre must fall near its scanner centre."""
    from lacunes.io import read_subject, read_volume
    from lacunes.runner import TABLE_COLUMNS, place_lesions, write_lesion_table

    sample = Path(__file__).resolve().parents[1] / "test"
    paths = {m: sample / f"sub-201_space-T1_desc-masked_{m}.nii.gz" for m in ("T1", "T2", "FLAIR")}
    subject = read_subject("sub-201", paths)
    labels, _ = read_volume(sample / "sub-201_space-T1_desc-Rater1_Lacunes.nii.gz")
    probability = (labels > 0).astype(np.float32)
    g = subject.geometry
    rows = lesion_table(probability, None, g.spacing, g.origin, direction=g.direction)
    placed, record, transform = place_lesions(subject, probability)
    assert record["usable"] and record["atlas"] == regions.ATLASES and len(placed) == len(rows) >= 1
    # the same table (NaN uncertainty without a map: compared as written), with the places added
    assert json.dumps([{k: r[k] for k in rows[0]} for r in placed]) == json.dumps(rows)
    for row in placed:
        assert row["region"] in regions.REGIONS and row["region_share"] > 0.3, row
        scanner = np.array([row["centre_R_mm"], row["centre_A_mm"], row["centre_S_mm"]])
        mni = np.array([row["mni_R_mm"], row["mni_A_mm"], row["mni_S_mm"]])
        assert np.linalg.norm(mni - scanner) < 15.0, (scanner, mni)
        assert row["side"] == ("right" if mni[0] > 2 else "left" if mni[0] < -2 else "midline")
    # the region map on the subject's grid (what the report draws) says what each lesion was named
    atlas = regions.region_map(transform, g)
    labels, _ = ndi.label(probability >= 0.5, structure=np.ones((3, 3, 3)))
    for row in placed:
        centre = np.linalg.solve(np.asarray(g.direction).reshape(3, 3), np.array(
            [-row["centre_R_mm"], -row["centre_A_mm"], row["centre_S_mm"]]) - g.origin) / g.spacing
        lesion = labels == labels[tuple(np.round(centre).astype(int))]
        codes = np.bincount(atlas[lesion], minlength=len(regions.REGIONS) + 1)
        assert regions.REGIONS[int(np.argmax(codes)) - 1] == row["region"]
    table = write_lesion_table(placed, tmp_path / "lesions.csv").read_text().splitlines()
    assert table[0].split(",") == list(TABLE_COLUMNS) and placed[0]["region"] in table[1]
    # a lesion-free subject costs no registration
    assert place_lesions(subject, np.minimum(probability, 0.4)) == ([], {}, None)


def test_without_nilearns_template_lesions_stay_unknown_and_no_subject_is_flagged_for_it(tmp_path, monkeypatch,
                                                                                         caplog):
    import csv

    from lacunes.io import Subject
    from lacunes.runner import place_lesions, write_lesion_table

    def missing():
        raise regions.AtlasUnavailable("the template needs nibabel and nilearn (pip install nilearn): no nilearn")

    monkeypatch.setattr(regions, "load_template", missing)  # as on an installation without nilearn
    prob = np.zeros((20, 20, 20), np.float32)
    prob[5:8, 5:8, 5:8] = 0.9
    g = Geometry((20, 20, 20))
    rows = lesion_table(prob, None, g.spacing, g.origin)
    subject = Subject("sub-x", np.zeros((3, 20, 20, 20), np.float32), g)
    placed, record, transform = place_lesions(subject, prob)
    assert transform is None and json.dumps(placed) == json.dumps(rows)
    assert record["skipped"] and not record["usable"] and "nilearn" in record["why"]
    assert "lesion regions and MNI centres unknown in this run" in caplog.text
    with open(write_lesion_table(placed, tmp_path / "lesions.csv"), newline="") as f:
        written = list(csv.DictReader(f))
    assert written[0]["region"] == regions.UNKNOWN and written[0]["mni_R_mm"] == "nan"


def test_the_regions_picture_has_a_row_per_lesion(tmp_path):
    from PIL import Image

    from lacunes.report import lesions_of, regions_figure

    g = Geometry((40, 40, 30))
    image = np.zeros((3, 40, 40, 30), np.float32)
    image[:, 5:35, 5:35, 3:27] = 100.0
    atlas = np.zeros((40, 40, 30), np.uint8)
    atlas[5:20, 5:35, 3:27], atlas[20:35, 5:35, 3:27] = 2, 3  # thalamus, basal ganglia
    prob = np.zeros((40, 40, 30), np.float32)
    prob[10:13, 10:13, 10:13] = 0.9
    one = regions_figure(image, atlas, prob, g, tmp_path / "one.png", "one", lesions_of(prob, g))
    prob[25:29, 25:29, 20:24] = 0.9
    two = regions_figure(image, atlas, prob, g, tmp_path / "two.png", "two", lesions_of(prob, g))
    with Image.open(one) as a, Image.open(two) as b:
        assert a.size[0] == b.size[0] and b.size[1] > a.size[1]


def test_a_runs_banner_says_what_lesions_will_be_placed_through_or_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("LACUNES_ATLAS_DIR", str(tmp_path))
    assert regions.statement().startswith("MNI centres only, regions unknown (no aal.nii.gz, JHU")
    monkeypatch.delenv("LACUNES_ATLAS_DIR")
    if (regions.ATLAS_DIR / regions.AAL_FILE).is_file() and (regions.ATLAS_DIR / regions.JHU_FILE).is_file():
        assert regions.statement().startswith("each lesion named through the ICBM 2009a")
