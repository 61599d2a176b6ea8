"""benchmarks/feature_sets.py's --acquisition: the voxel sizes a subject was acquired at, and a second stage
that weighs them."""

import json

import numpy as np
import pytest

from lacunes.geometry import Geometry
from lacunes.layouts import find_subject_files
from lacunes.rescoring import ALL_FEATURES, Rescorer
from lacunes.writing import write_volume
from tests.conftest import load_benchmark

feature_sets = load_benchmark("feature_sets")


def test_acquired_voxel_sizes_come_from_the_sidecar_else_the_header(tmp_path):
    """A phantom brought back to 1 mm says in its sidecar what it was acquired at; a subject without one is
    read from its headers (a scan stored at 1.3 mm)."""
    for sid, spacing in (("sub-001", (1.0, 1.0, 1.0)), ("sub-002", (1.3, 1.3, 1.3))):
        for m in ("T1", "T2", "FLAIR"):
            write_volume(np.ones((6, 6, 6), np.int16), Geometry(shape=(6, 6, 6), spacing=spacing),
                         tmp_path / f"{sid}_space-T1_desc-masked_{m}.nii.gz")
    record = {"T1": [1.4, 1.4, 1.4], "T2": [1.4, 1.4, 5.0], "FLAIR": [1.4, 1.4, 5.0]}
    (tmp_path / "sub-001_space-T1_desc-synthetic_acquisition.json").write_text(
        json.dumps({"acquired_spacing_mm": record, "voxel_mm": 1.4}))
    found = {f.subject_id: feature_sets.acquired_voxel_sizes(f) for f in find_subject_files(tmp_path)}
    assert found["sub-001"] == {m: tuple(v) for m, v in record.items()}
    assert all(np.allclose(v, 1.3) for v in found["sub-002"].values())
    # a sidecar without the record is named, not a bare KeyError
    (tmp_path / "sub-001_space-T1_desc-synthetic_acquisition.json").write_text(json.dumps({"voxel_mm": 1.4}))
    with pytest.raises(ValueError, match="sub-001_space-T1_desc-synthetic_acquisition.json.*acquired_spacing_mm"):
        feature_sets.acquired_voxel_sizes(find_subject_files(tmp_path)[0])


def test_a_second_stage_that_knows_the_slices_weighs_the_rim_by_them():
    """Candidates whose class shows in the FLAIR rim at a threshold that moves with the FLAIR's slices (a
    lacune's rim above 0 on 1 mm scans, above -1 on 5 mm slices): the acquisition-aware fit separates them
    where the plain set cannot."""
    rng = np.random.default_rng(0)
    fitting, y_all = [], []
    for k in range(40):
        slices = 5.0 if k % 2 else 1.0
        lacune = rng.random(60) < 0.5
        rim = np.where(lacune, 0.5, -0.5) - (1.0 if slices > 1 else 0.0) + rng.normal(0, 0.15, 60)
        feats = rng.normal(0, 1, (60, len(ALL_FEATURES)))
        feats[:, ALL_FEATURES.index("flair_rim")] = rim
        acquired = {"T1": (1.0, 1.0, 1.0), "T2": (1.0, 1.0, slices), "FLAIR": (1.0, 1.0, slices)}
        fitting.append(feature_sets.Described(f"s{k}", "fit", feats, lacune.astype(float), [], 0, acquired))
        y_all.append(lacune)
    y = np.concatenate(y_all).astype(float)
    names = ("log_volume_mm3", "flair_rim")
    plain = Rescorer.fit(np.concatenate([s.features for s in fitting]), y, 0.5, names=names)
    aware = feature_sets.AcquisitionAware(np.concatenate([feature_sets.with_acquisition(s) for s in fitting]), y, names)
    plain_right = np.mean((plain.score(np.concatenate([s.features for s in fitting])) >= 0.5) == (y > 0.5))
    aware_right = np.mean((aware.score(np.concatenate([feature_sets.with_acquisition(s) for s in fitting])) >= 0.5)
                          == (y > 0.5))
    assert plain_right < 0.85 and aware_right > 0.95
    assert feature_sets.with_acquisition(fitting[1]).shape[1] == len(ALL_FEATURES) + len(feature_sets.ACQUISITION_COLUMNS)
