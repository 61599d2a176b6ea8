from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from lacunes.cli import main
from lacunes.io import Geometry
from lacunes.report import MAX_LESIONS, figure_size_px, lesions_of, load_records, subject_figure

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
    parser = Links()
    parser.feed((folder / "report.html").read_text(encoding="utf-8"))
    parser.close()
    for src in parser.images:
        assert (folder / src).is_file(), src
    for href in parser.anchors:
        assert href.startswith("#") and href[1:] in parser.ids, href
    return parser


def test_subject_picture_size_and_lesion_order(tmp_path):
    shape = (60, 50, 30)
    rng = np.random.default_rng(0)
    image = rng.uniform(100, 200, size=(3, *shape)).astype(np.float32)
    prob = np.zeros(shape, np.float32)
    for k in range(8):  # 8 lesions of growing probability
        prob[3 + 7 * k: 6 + 7 * k, 10:13, 10:13] = 0.55 + 0.05 * k
    lesions = lesions_of(prob, (1.0, 1.0, 2.0))
    assert len(lesions) == 8 and [round(les["max_probability"], 2) for les in lesions][:2] == [0.9, 0.85]
    assert lesions[0]["volume_mm3"] == 27 * 2.0 and lesions[0]["centre"] == (53, 11, 11)
    drawn = subject_figure(image, prob, Geometry(shape, (1.0, 1.0, 2.0)), tmp_path / "a.png", "sub-1")
    assert len(drawn) == 8
    assert Image.open(tmp_path / "a.png").size == figure_size_px(MAX_LESIONS)
    subject_figure(image, np.zeros(shape, np.float32), Geometry(shape), tmp_path / "b.png", "sub-2")
    assert Image.open(tmp_path / "b.png").size == figure_size_px(1)  # mid-slices, no lesion


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
    assert parsed.images == ["qc/sub-001.png"] and parsed.rows == 1 + 2
    text = (out / "report.html").read_text()
    assert failed[0].error.split(":")[0] in text
    # a finished run's report, made again from run.json
    (out / "report.html").unlink()
    (out / "qc" / "sub-001.png").unlink()
    assert main(["report", str(out), "--no-progress"]) == 0
    assert (out / "qc" / "sub-001.png").is_file() and check_report(out).images == ["qc/sub-001.png"]
    assert main(["report", str(tmp_path / "in")]) == 2  # no run.json there: a message, not a traceback


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
