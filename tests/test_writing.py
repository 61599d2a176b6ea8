"""lacunes.writing: atomic outputs, a checked output folder, maps written all or none."""

import logging

import numpy as np
import pytest
import SimpleITK as sitk

from lacunes.errors import LacunesInputError
from lacunes.geometry import Geometry
from lacunes.writing import write_volume


def test_write_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        write_volume(np.zeros((3, 3, 3)), Geometry((4, 4, 4)), tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())


def test_output_folder_is_checked_and_a_killed_runs_temporaries_are_removed(tmp_path, caplog):
    import os
    import time

    from lacunes.writing import prepare_output_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(LacunesInputError, match="is not writable"):
        prepare_output_folder(tmp_path / "file" / "out")
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    stale = out / "images" / ".sub-1_prediction.nii.gz.lacunes-tmp.k2j4_x9a.nii.gz"
    fresh = out / ".results.json.lacunes-tmp.abcd1234.json"
    other = out / ".keep-me"
    # the user's own hidden files, named like temporaries but not ours (the output folder may be theirs)
    (out / "notes" / "deep").mkdir(parents=True)
    users = [out / ".results.20231130.csv", out / "notes" / "deep" / ".backup.20240101.txt",
             out / "notes" / "deep" / "er" / ".x.nii.gz.lacunes-tmp.abcd1234.nii.gz"]  # deeper than it writes
    users[-1].parent.mkdir()
    for p in (stale, fresh, other, *users):
        p.write_bytes(b"")
    old = time.time() - 2 * 86400
    for p in (stale, other, *users):
        os.utime(p, (old, old))
    with caplog.at_level(logging.INFO):
        prepare_output_folder(out)
    assert not stale.exists() and fresh.exists() and other.exists()
    assert all(p.exists() for p in users)
    assert "removed 1 temporary file" in caplog.text


def test_a_short_write_raises_and_leaves_neither_map(tmp_path, monkeypatch):
    """A full disk: SimpleITK's writer only warns about a short write. The file is checked, the error
    names the file, and neither of the two maps that belong together is left (nor a temporary)."""

    from lacunes.writing import WriteError, output_complete, write_volumes

    real = sitk.WriteImage
    calls = []

    def short_second_write(image, path, *args):
        real(image, path, *args)
        calls.append(path)
        if len(calls) == 2:  # the disk fills up during the second map
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 3])

    monkeypatch.setattr(sitk, "WriteImage", short_second_write)
    geom = Geometry((20, 20, 20))
    a, b = tmp_path / "a_prediction.nii.gz", tmp_path / "a_uncertaintymap.nii.gz"
    volume = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    with pytest.raises(WriteError, match="a_uncertaintymap.nii.gz.*disk full"):
        write_volumes([(volume, geom, a), (volume, geom, b)])
    assert sorted(tmp_path.iterdir()) == []
    monkeypatch.setattr(sitk, "WriteImage", real)
    write_volumes([(volume, geom, a), (volume, geom, b)])
    assert output_complete(a) and output_complete(b)
    a.write_bytes(a.read_bytes()[:200])  # a map damaged afterwards is not taken as done
    assert not output_complete(a)
