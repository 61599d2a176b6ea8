import numpy as np

from lacunes.breakdown import classify_predictions, summarize_breakdown


def test_each_predicted_lesion_gets_what_lies_under_it():
    shape = (60, 60, 40)
    idx = np.indices(shape)
    brain = ((idx - np.array([30, 30, 20])[:, None, None, None]) ** 2).sum(0) < 18**2
    tissues = np.where(brain, 3, 0).astype(np.uint8)
    tissues[26:34, 26:34, 17:23] = 1  # a ventricle
    reference = np.zeros(shape, np.float32)
    reference[36:39, 30:33, 20:23] = 1
    prob = np.zeros(shape, np.float32)
    boxes = {
        "lacune": (slice(37, 40), slice(30, 33), slice(20, 23)),
        "outside brain": (slice(1, 4), slice(1, 4), slice(1, 4)),
        "perivascular space": (slice(20, 22), slice(40, 42), slice(18, 20)),
        "brain edge": (slice(13, 15), slice(30, 32), slice(20, 22)),
        "CSF": (slice(28, 31), slice(28, 31), slice(19, 21)),
        "other tissue": (slice(22, 24), slice(22, 24), slice(12, 14)),
    }
    for i, box in enumerate(boxes.values()):
        prob[box] = 0.6 + 0.05 * i
    mimics = [{"kind": "pvs", "centre_vox": [21, 41, 22], "diameters_mm": [1.5, 1.5, 8.0]},
              {"kind": "lacune", "centre_vox": [37, 31, 21], "diameters_mm": [3, 3, 3]}]
    rows = classify_predictions(prob, reference, brain, (1.0, 1.0, 1.0), mimics, tissues, "sub-1")
    assert sorted(r.category for r in rows) == sorted(boxes)
    by = {r.category: r for r in rows}
    assert by["lacune"].voxels == 27 and by["CSF"].max_probability == np.float32(0.8)
    table = summarize_breakdown(rows, n_subjects=2)
    assert {t["category"]: t["count"] for t in table}["WMH"] == 0
    assert {t["category"]: t["per_subject"] for t in table}["CSF"] == 0.5
    assert classify_predictions(np.zeros(shape), reference, brain, (1.0, 1.0, 1.0)) == []
