import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lacunes.cli import main
from lacunes.geometry import Geometry
from lacunes.report import (
    MAX_LESIONS,
    axis_letters,
    figure_size_px,
    find_chromium,
    lesion_caption,
    lesions_of,
    load_records,
    subject_figure,
)

from .conftest import write_subject


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.anchors, self.ids, self.rows = [], [], set(), 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "a":
            self.anchors.append(a["href"])
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "tr":
            self.rows += 1


def check_report(folder: Path) -> Links:
    """Parse report.html; every picture and every link resolves (an anchor of the page, or a file of the
    folder, relative)."""
    parser = Links()
    parser.feed((folder / "report.html").read_text(encoding="utf-8"))
    parser.close()
    from urllib.parse import unquote

    for src in parser.images:  # a browser percent-decodes links and fragments
        assert (folder / unquote(src)).is_file(), src
    for href in parser.anchors:
        if href.startswith("#"):
            assert unquote(href[1:]) in parser.ids, href
        else:
            assert not Path(href).is_absolute() and (folder / unquote(href)).is_file(), href
            assert unquote(href) != href or not set(href) & set("#?%"), href  # a '#' or '?' would cut the link
    return parser


def test_subject_picture_size_and_lesion_numbers(tmp_path):
    shape = (60, 50, 30)
    rng = np.random.default_rng(0)
    image = rng.uniform(100, 200, size=(3, *shape)).astype(np.float32)
    prob = np.zeros(shape, np.float32)
    for k in range(8):  # 8 lesions of growing probability and size along x
        prob[3 + 7 * k: 5 + 7 * k + (k > 3), 10:13, 10:13] = 0.55 + 0.05 * k
    geometry = Geometry(shape, (1.0, 1.0, 2.0), origin=(10.0, 20.0, 30.0))
    lesions = lesions_of(prob, geometry)
    # numbered by size (the four 27-voxel ones first, by position), as the lesion table numbers them
    assert [les["id"] for les in lesions] == list(range(1, 9)) and [les["voxels"] for les in lesions] == [27] * 4 + [18] * 4
    assert lesions[0]["centre"] == (32, 11, 11) and lesions[0]["volume_mm3"] == 27 * 2.0
    # scanner LPS (10 + 32, 20 + 11, 30 + 22) mm → RAS (-42, -31, 52)
    assert lesions[0]["centre_ras_mm"] == (-42.0, -31.0, 52.0)
    assert lesion_caption(lesions[0]).startswith("lesion 1: 54 mm³, probability 0.75 mean (0.75 max)")
    assert "centre R -42.0, A -31.0, S 52.0 mm (RAS)" in lesion_caption(lesions[0])
    drawn = subject_figure(image, prob, geometry, tmp_path / "a.png", "sub-1")
    assert len(drawn) == 8
    assert Image.open(tmp_path / "a.png").size == figure_size_px(MAX_LESIONS)
    subject_figure(image, np.zeros(shape, np.float32), Geometry(shape), tmp_path / "b.png", "sub-2")
    assert Image.open(tmp_path / "b.png").size == figure_size_px(2)  # the whole-brain overview, no lesion


def test_orientation_letters_follow_the_direction_matrix():
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # LPS: x towards the left, y back, z up
    assert axis_letters(identity) == [("R", "L"), ("A", "P"), ("I", "S")]
    ras_stored = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # a NIfTI stored RAS+
    assert axis_letters(ras_stored) == [("L", "R"), ("P", "A"), ("I", "S")]
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0)  # columns: x runs up, y to the left, z forward
    assert axis_letters(sagittal) == [("I", "S"), ("R", "L"), ("P", "A")]


def test_predict_qc_and_report_command(tmp_path, tiny_checkpoint):
    for sid in ("sub-001", "sub-002"):
        write_subject(tmp_path / "in", sid)
    (tmp_path / "in" / "sub-002_space-T1_desc-masked_T2.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "out"
    rc = main(["predict", "--input", str(tmp_path / "in"), "--output", str(out), "--model", str(tiny_checkpoint),
               "--preset", "fast", "--no-progress", "--qc", "--threshold", "0.4"])
    assert rc == 1  # sub-002 failed, sub-001 done
    records = load_records(out)
    assert records["sub-001"].status == "done" and records["sub-001"].picture == "qc/sub-001.png"
    failed = [r for r in records.values() if r.status == "failed"]
    assert len(failed) == 1 and "sub-002" in failed[0].subject_id and failed[0].error
    rows = min(max(records["sub-001"].lesions, 1), MAX_LESIONS)
    assert Image.open(out / "qc" / "sub-001.png").size == figure_size_px(rows)
    parsed = check_report(out)
    assert parsed.images == ["qc/sub-001.png"]
    text = (out / "report.html").read_text()
    assert failed[0].error.split(":")[0] in text
    # the failure message sits in a status cell that wraps it rather than widening the table
    assert re.search(r'<td class="status">failed: [^<]*sub-002', text) and "td.status { max-width" in text
    # what made the maps, and links to every output of the subject
    assert "trained on" in text and "weights sha256" in text and "operating point" in text
    assert {"#sub-001", "sub-001_space-T1_prediction.nii.gz", "sub-001_space-T1_uncertaintymap.nii.gz",
            "sub-001_space-T1_prediction.json", "qc/sub-001.png"} <= set(parsed.anchors)
    # the lesion table of the page is the record's, numbered by size as in the picture's captions
    rows = records["sub-001"].lesion_rows
    assert [row["id"] for row in rows] == list(range(1, len(rows) + 1))
    assert [row["volume_mm3"] for row in rows] == sorted((row["volume_mm3"] for row in rows), reverse=True)
    assert f"{records['sub-001'].lesions} lesion(s)" in text
    # a finished run's report, made again from run.json
    (out / "report.html").unlink()
    (out / "qc" / "sub-001.png").unlink()
    assert main(["report", str(out), "--no-progress"]) == 0
    assert (out / "qc" / "sub-001.png").is_file() and check_report(out).images == ["qc/sub-001.png"]
    assert main(["report", str(tmp_path / "in")]) == 2  # no run.json there: a message, not a traceback


def test_report_links_resolve_whatever_characters_a_subject_id_holds(tmp_path, tiny_checkpoint):
    sid = "sub-a#1?x%25$x^$"  # a name the VALDO layout takes as it is; "$x^$" is broken mathtext to matplotlib
    write_subject(tmp_path / "in", sid)
    out = tmp_path / "out"
    rc = main(["predict", "--input", str(tmp_path / "in"), "--output", str(out), "--model", str(tiny_checkpoint),
               "--preset", "fast", "--no-progress", "--qc"])
    record = load_records(out)[sid]
    assert rc == 0 and record.status == "done" and (out / record.picture).is_file()
    parsed = check_report(out)
    assert parsed.images and all("#" not in src and "?" not in src for src in parsed.images)
    assert any(href.startswith("#") for href in parsed.anchors)


def _add_records(folder: str, prefix: str, n: int) -> None:
    from lacunes.report import SubjectRecord, update_records

    for i in range(n):
        update_records(Path(folder), {f"{prefix}{i}": SubjectRecord(f"{prefix}{i}", "done")})


def test_concurrent_runs_into_one_folder_keep_each_others_records(tmp_path):
    """Two shards writing run.json at once: every subject of both is in the record afterwards."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    jobs = [ctx.Process(target=_add_records, args=(str(tmp_path), prefix, 15)) for prefix in ("sub-a", "sub-b")]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
        assert job.exitcode == 0
    assert sorted(load_records(tmp_path)) == sorted([f"sub-a{i}" for i in range(15)] + [f"sub-b{i}" for i in range(15)])


def test_the_report_lists_what_the_second_stage_rejected_and_each_lesion_with_its_uncertainty(tmp_path):
    from lacunes.report import SubjectRecord, write_report

    (tmp_path / "qc").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "qc" / "sub-7.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "qc" / "sub-8.png")
    lesion = {"id": 1, "volume_mm3": 42.0, "centre_ras_mm": [-12.5, 3.0, 20.0], "mean_probability": 0.91,
              "max_probability": 1.0, "mean_uncertainty": 0.37}
    place = {"id": 1, "region": "basal ganglia", "region_share": 0.83, "side": "left", "mni_R_mm": -24.1,
             "mni_A_mm": 2.0, "mni_S_mm": 1.5}
    rejected = [{"voxel": [1, 2, 3], "centre_ras_mm": [-4.0, 5.5, 6.0], "volume_mm3": 12.0, "max_probability": 0.93,
                 "score": 0.21},
                {"voxel": [1, 2, 3], "centre_mm": [4.0, -5.5, 6.0], "volume_mm3": 11.0, "max_probability": 0.92,
                 "score": 0.2}]  # a run recorded before the RAS centres: LPS centre_mm
    record = SubjectRecord("sub-7", "done", picture="qc/sub-7.png", lesions=1, volume_mm3=42.0,
                           lesion_rows=[{**lesion, **place}], rejected_candidates=rejected,
                           settings={"second_stage_min_score": 0.4},
                           regions={"usable": True, "scales": [0.98, 1.0, 1.02], "seconds": 19.2, "deformable": {}})
    unplaced = SubjectRecord("sub-8", "done", picture="qc/sub-8.png", lesions=1, volume_mm3=42.0,
                             lesion_rows=[lesion])  # a run with --no-regions
    write_report(tmp_path, {"sub-7": record, "sub-8": unplaced})
    text = (tmp_path / "report.html").read_text()
    assert ("<td>1</td><td>42</td><td>R -12.5, A 3.0, S 20.0</td><td>left basal ganglia (0.83)</td>"
            "<td>R -24.1, A 2.0, S 1.5</td><td>0.91</td><td>1.00</td><td>0.37</td>") in text
    assert "<td>R -12.5, A 3.0, S 20.0</td><td>unknown</td><td></td><td>0.91</td>" in text
    assert "lesions placed through the template (affine and demons, scales 0.98-1.02, 19 s)" in text
    assert "2 candidate(s) the second stage rejected (score under 0.4)" in text
    assert "<td>R -4.0, A 5.5, S 6.0</td><td>12</td><td>0.93</td><td>0.21</td>" in text
    assert "<td>R -4.0, A 5.5, S 6.0</td><td>11</td><td>0.92</td><td>0.20</td>" in text  # LPS (4, -5.5, 6) in RAS
    assert "1 lesion(s), 42 mm³ in all (largest 42 mm³); the second stage rejected 2 candidate(s)" in text
    check_report(tmp_path)


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on this machine (apt-get install chromium)")
def test_the_report_renders_in_a_headless_browser(tmp_path, tiny_checkpoint):
    write_subject(tmp_path / "in", "sub-001")
    out = tmp_path / "out"
    assert main(["predict", "--input", str(tmp_path / "in"), "--output", str(out), "--model", str(tiny_checkpoint),
                 "--preset", "fast", "--no-progress", "--qc", "--threshold", "0.4", "--table"]) == 0
    assert main(["report", str(out), "--no-progress", "--screenshot", str(tmp_path / "shot.png")]) == 0
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), float)
    assert shot.shape == (2200, 1400)
    # rendered, not blank: the page's text and the subject's picture show (a white page is one value)
    assert shot.std() > 10 and (shot < 128).mean() > 0.01
    check_report(out)

