import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lacunes.errors import GeometryMismatchError, LacunesInputError, MissingModalityError, UnreadableImageError
from lacunes.geometry import Geometry
from lacunes.io import read_subject, read_volume
from lacunes.writing import write_volume

from .conftest import DIRECTION, ORIGIN, SPACING, write_subject


def paths(folder, sid="sub-001"):
    return {m: folder / f"{sid}_space-T1_desc-masked_{m}.nii.gz" for m in ("T1", "T2", "FLAIR")}


def test_roundtrip_keeps_geometry_and_axis_order(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    geom = Geometry((4, 5, 6), SPACING, ORIGIN, DIRECTION)
    for name in ("a.nii.gz", "a.mha"):
        write_volume(arr, geom, tmp_path / name)
        back, g = read_volume(tmp_path / name)
        np.testing.assert_array_equal(back, arr)
        assert g.shape == (4, 5, 6)
        np.testing.assert_allclose(g.spacing, SPACING, rtol=1e-6)
        np.testing.assert_allclose(g.origin, ORIGIN, rtol=1e-6)
        np.testing.assert_allclose(g.direction, DIRECTION, atol=1e-6)
    # (x, y, z) order: SimpleITK's size is (x, y, z)
    assert sitk.ReadImage(str(tmp_path / "a.mha")).GetSize() == (4, 5, 6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left"


def test_read_subject_stacks_channels(tmp_path):
    images, _, geom = write_subject(tmp_path)
    s = read_subject("sub-001", paths(tmp_path))
    assert s.image.shape == (3, *geom.shape) and s.image.dtype == np.float32
    np.testing.assert_allclose(s.image[2], images["FLAIR"], rtol=1e-6)
    assert s.nonfinite == {"T1": 0, "T2": 0, "FLAIR": 0}


def test_missing_modality_names_what_was_found(tmp_path):
    write_subject(tmp_path)
    p = paths(tmp_path)
    p["FLAIR"].unlink()
    with pytest.raises(MissingModalityError, match="FLAIR"):
        read_subject("sub-001", p)
    with pytest.raises(MissingModalityError, match="no T2"):
        read_subject("sub-001", {"T1": p["T1"], "FLAIR": p["FLAIR"]})


def test_shape_mismatch_is_an_error_naming_the_files(tmp_path):
    write_subject(tmp_path)
    p = paths(tmp_path)
    write_volume(np.ones((10, 10, 10), np.float32), Geometry((10, 10, 10), SPACING, ORIGIN, DIRECTION), p["T2"])
    with pytest.raises(GeometryMismatchError, match=r"shape mismatch.*T1.*T2"):
        read_subject("sub-001", p)


def test_spacing_mismatch_is_an_error(tmp_path):
    images, _, geom = write_subject(tmp_path)
    p = paths(tmp_path)
    write_volume(images["T2"], Geometry(geom.shape, (1.0, 1.0, 1.0), ORIGIN, DIRECTION), p["T2"])
    with pytest.raises(GeometryMismatchError, match="spacing mismatch"):
        read_subject("sub-001", p)


def test_a_small_origin_difference_is_a_warning(tmp_path, caplog):
    images, _, geom = write_subject(tmp_path)
    p = paths(tmp_path)
    write_volume(images["T2"], Geometry(geom.shape, SPACING, tuple(o + 0.2 for o in ORIGIN), DIRECTION), p["T2"])
    with caplog.at_level(logging.WARNING):
        s = read_subject("sub-001", p)
    assert "origin differs" in caplog.text
    assert s.geometry.origin == pytest.approx(ORIGIN)


@pytest.mark.parametrize("change", ["shifted", "mirrored"])
def test_a_misregistered_modality_is_refused_unless_resampled(tmp_path, change):
    """A FLAIR shifted by a voxel with a matching origin, or stored mirrored with a matching direction,
    lies elsewhere in the scanner than its array suggests: refused with the flag named; with --resample
    it is brought onto the T1's grid, where it matches the T1's array again."""
    images, _, geom = write_subject(tmp_path)
    p = paths(tmp_path)
    d = np.asarray(DIRECTION).reshape(3, 3)
    if change == "shifted":
        flair = np.zeros_like(images["FLAIR"])
        flair[1:] = images["FLAIR"][:-1]  # the content moves a voxel along x ...
        origin = tuple(np.asarray(ORIGIN) - d[:, 0] * SPACING[0])  # ... and the origin a voxel back
        other = Geometry(geom.shape, SPACING, origin, DIRECTION)
    else:
        flair = images["FLAIR"][::-1].copy()
        direction = d.copy()
        direction[:, 0] *= -1
        origin = tuple(np.asarray(ORIGIN) + d[:, 0] * SPACING[0] * (geom.shape[0] - 1))
        other = Geometry(geom.shape, SPACING, origin, tuple(direction.ravel()))
    write_volume(flair, other, p["FLAIR"])
    with pytest.raises(GeometryMismatchError, match="not on the grid of .*--resample"):
        read_subject("sub-001", p)
    s = read_subject("sub-001", p, resample=True)
    inner = (slice(0, -1), slice(None), slice(None)) if change == "shifted" else (slice(None),) * 3
    np.testing.assert_allclose(s.image[2][inner], images["FLAIR"][inner], atol=1e-3)


def test_4d_and_unreadable_files_are_clear_errors(tmp_path):
    img4 = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False)
    sitk.WriteImage(img4, str(tmp_path / "four.nii.gz"))
    with pytest.raises(UnreadableImageError, match="4D"):
        read_volume(tmp_path / "four.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match="cannot read"):
        read_volume(tmp_path / "junk.nii.gz")
    with pytest.raises(UnreadableImageError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")


def test_the_memory_limit_is_read_where_the_process_runs(tmp_path):
    """cgroup v2 and v1, the process's own cgroup and its ancestors (the smallest limit holds), SLURM's
    request, the machine last."""
    from lacunes.io import memory_limit

    def tree(lines: str, files: dict) -> tuple:
        proc = tmp_path / "proc_cgroup"
        proc.write_text(lines)
        root = tmp_path / "cg"
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return proc, root

    physical = memory_limit(tmp_path / "absent", tmp_path / "absent", env={})
    assert physical[1] == "this machine's memory"
    # v2, nested: the job's limit holds for its step, whose own says "max"
    proc, root = tree("0::/system.slice/slurm/job_5/step_0\n", {
        "system.slice/slurm/job_5/memory.max": "4000000000", "system.slice/slurm/job_5/step_0/memory.max": "max"})
    assert memory_limit(proc, root, env={}) == (4_000_000_000, "the memory limit of this process's cgroup")
    # v1: the memory controller's hierarchy, a scope of its own (systemd-run --scope -p MemoryMax=2G)
    (root / "system.slice").rename(tmp_path / "old")
    proc, root = tree("4:memory:/user.slice/run-1.scope\n3:cpu,cpuacct:/\n", {
        "memory/user.slice/run-1.scope/memory.limit_in_bytes": "2000000000",
        "memory/memory.limit_in_bytes": "9223372036854771712"})
    assert memory_limit(proc, root, env={}) == (2_000_000_000, "the memory limit of this process's cgroup")
    # SLURM's request where it is smaller (1024 MB a node; or per CPU times the CPUs)
    assert memory_limit(proc, root, env={"SLURM_MEM_PER_NODE": "1024"}) == (1024 ** 3, "SLURM's memory request")
    assert memory_limit(proc, root, env={"SLURM_MEM_PER_CPU": "256", "SLURM_CPUS_ON_NODE": "2"})[0] == 512 * 1024 ** 2
    assert memory_limit(proc, root, env={"LACUNES_MEMORY_LIMIT_GB": "3"}) == (3e9, "LACUNES_MEMORY_LIMIT_GB")


def test_a_nii_beside_the_nii_gz_asked_for_is_refused_naming_both(tmp_path):
    """The NIfTI reader opens X.nii when asked for X.nii.gz: another scan would be read under this one's name."""
    geom = Geometry(shape=(4, 5, 6))
    asked = write_volume(np.zeros((4, 5, 6), np.int16), geom, tmp_path / "sub-001_T1w.nii.gz")
    other = write_volume(np.ones((4, 5, 6), np.int16), geom, tmp_path / "sub-001_T1w.nii")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(asked))).max() == 1  # what the reader alone does
    with pytest.raises(UnreadableImageError, match=r"sub-001_T1w\.nii\.gz: sub-001_T1w\.nii lies beside it"):
        read_volume(asked)
    assert read_volume(other)[0].max() == 1  # the .nii itself is read by its name
    other.unlink()
    assert read_volume(asked)[0].max() == 0


def test_nonfinite_voxels_are_counted(tmp_path):
    # MetaImage keeps NaN/inf; SimpleITK's NIfTI reader already turns them into 0 (see docs/usage.md).
    images, _, geom = write_subject(tmp_path)
    t2 = images["T2"].copy()
    t2[0, 0, :3] = [np.nan, np.inf, -np.inf]
    p = paths(tmp_path)
    p["T2"] = write_volume(t2, geom, tmp_path / "t2.mha")
    s = read_subject("sub-001", p)
    assert s.nonfinite["T2"] == 3 and s.nonfinite["T1"] == 0
    # a contrast with no finite voxel at all would run on the other two: refused
    p["FLAIR"] = write_volume(np.full(geom.shape, np.nan, np.float32), geom, tmp_path / "flair.mha")
    with pytest.raises(UnreadableImageError, match="flair.mha holds no finite value"):
        read_subject("sub-001", p)


def coarse_flair(folder, sid="sub-001", shift_mm=0.0):
    """Rewrite the FLAIR of a written subject at 3× the slice thickness (slices averaged by three), over
    the same physical space (shifted by ``shift_mm`` along the scanner's z); returns the fine FLAIR."""
    fine, geom = read_volume(paths(folder, sid)["FLAIR"])
    nz = fine.shape[2] // 3
    coarse = fine[:, :, : 3 * nz].reshape(*fine.shape[:2], nz, 3).mean(3)
    direction = np.asarray(geom.direction).reshape(3, 3)
    centre = np.asarray(geom.origin) + direction @ (np.asarray(geom.spacing) * (0, 0, 1)) + (0, 0, shift_mm)
    spacing = (geom.spacing[0], geom.spacing[1], 3 * geom.spacing[2])
    write_volume(coarse, Geometry(coarse.shape, spacing, tuple(centre), geom.direction), paths(folder, sid)["FLAIR"])
    return fine


def test_a_flair_on_another_grid_is_resampled_onto_the_t1_only_when_asked(tmp_path):
    write_subject(tmp_path, shape=(40, 36, 21))
    fine = coarse_flair(tmp_path)
    with pytest.raises(GeometryMismatchError, match="--resample"):
        read_subject("sub-001", paths(tmp_path))
    s = read_subject("sub-001", paths(tmp_path), resample=True)
    t1, geom = read_volume(paths(tmp_path)["T1"])
    assert s.image.shape == (3, 40, 36, 21) and s.geometry == geom
    np.testing.assert_array_equal(s.image[0], t1)
    # away from the edges of the coarse slices' span, linear resampling recovers the fine FLAIR closely
    inner = (slice(None), slice(None), slice(2, 19))
    brain = fine[inner] != 0
    err = np.abs(s.image[2][inner] - fine[inner])[brain]
    assert np.median(err) < 0.1 * np.median(np.abs(fine[inner][brain]))


def test_resampling_refuses_images_that_do_not_cover_the_same_space(tmp_path):
    write_subject(tmp_path, shape=(40, 36, 21))
    coarse_flair(tmp_path, shift_mm=20.0)
    with pytest.raises(GeometryMismatchError, match="does not cover the same physical space"):
        read_subject("sub-001", paths(tmp_path), resample=True)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", "-raw.mha"])
def test_a_truncated_or_corrupt_file_is_refused(tmp_path, suffix):
    arr = np.random.default_rng(0).normal(size=(20, 18, 12)).astype(np.float32)
    path = tmp_path / f"img{suffix}"
    write_volume(arr, Geometry(arr.shape), path)
    if suffix == "-raw.mha":  # an uncompressed MetaImage
        sitk.WriteImage(sitk.GetImageFromArray(arr.transpose(2, 1, 0)), str(path), False)
    np.testing.assert_array_equal(read_volume(path)[0], arr)  # the whole file reads
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="damaged|truncated") as err:
        read_volume(path)
    assert str(path) in str(err.value) and "No such file" not in str(err.value)
    if suffix == ".nii.gz":
        corrupt = bytearray(data)
        corrupt[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # zeros in the middle of the deflate stream
        path.write_bytes(bytes(corrupt))
        with pytest.raises(UnreadableImageError, match="damaged"):
            read_volume(path)


def test_a_legal_name_near_the_file_systems_limit_is_written(tmp_path):
    """A final name of 250 bytes: its temporary name would pass 255 bytes, so it is made from a hash."""
    from lacunes.writing import _TEMPORARY, NAME_MAX, atomic_output

    name = "s" * (NAME_MAX - len("_prediction.nii.gz") - 5) + "_prediction.nii.gz"
    path = write_volume(np.zeros((4, 5, 6), np.int16), Geometry(shape=(4, 5, 6)), tmp_path / name)
    assert path.name == name and read_volume(path)[0].shape == (4, 5, 6)
    with atomic_output(tmp_path / name) as tmp:
        assert len(tmp.name.encode()) <= NAME_MAX and _TEMPORARY.match(tmp.name)  # still cleaned up if left
        tmp.write_bytes(b"x")
    assert (tmp_path / name).read_bytes() == b"x"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (skipped where the tests may not mount one: not root, a container without the
    capability)."""
    import shutil
    import subprocess

    folder = tmp_path / "disk"
    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_full_disk_is_an_error_and_leaves_no_map_under_its_name(small_disk):
    """On a real full disk (1 MiB tmpfs, two maps of ~0.7 MB each): the write that does not fit raises
    WriteError naming the file, neither map nor any temporary is left, and the disk has room again."""
    import shutil

    from lacunes.writing import WriteError, write_volumes

    geom = Geometry((64, 64, 48))
    volume = np.random.default_rng(0).random(geom.shape).astype(np.float32)  # compresses little
    a, b = small_disk / "s_prediction.nii.gz", small_disk / "s_uncertaintymap.nii.gz"
    with pytest.raises(WriteError, match="s_uncertaintymap.nii.gz"):
        write_volumes([(volume, geom, a), (volume, geom, b)])
    assert sorted(small_disk.iterdir()) == []
    assert shutil.disk_usage(small_disk).used < 100_000
    small = np.zeros(geom.shape, np.float32)  # maps that fit are written whole
    write_volumes([(small, geom, a), (small, geom, b)])
    np.testing.assert_array_equal(read_volume(b)[0], small)


def test_the_size_limit_follows_the_memory_a_run_may_use(tmp_path, monkeypatch):
    """Refused from the header when the subject's estimated peak (BYTES_PER_VOXEL per voxel over
    BASE_BYTES) exceeds the memory limit, with the size needed and where the limit comes from."""
    from lacunes.errors import LacunesInputError
    from lacunes.io import BASE_BYTES, BYTES_PER_VOXEL, max_voxels, memory_limit

    monkeypatch.delenv("LACUNES_MAX_VOXELS", raising=False)
    monkeypatch.delenv("LACUNES_MEMORY_LIMIT_GB", raising=False)
    limit, source = memory_limit()
    assert limit > 1e9 and source in ("the memory limit of this process's cgroup", "this machine's memory",
                                      "SLURM's memory request")
    write_volume(np.zeros((120, 120, 80), np.int16), Geometry((120, 120, 80)), tmp_path / "wide.nii.gz")
    gb = (BASE_BYTES + 1_000_000 * BYTES_PER_VOXEL) / 1e9  # room for 10^6 voxels, the file holds 1.15 10^6
    monkeypatch.setenv("LACUNES_MEMORY_LIMIT_GB", str(gb))
    assert max_voxels()[0] == 1_000_000
    with pytest.raises(UnreadableImageError, match=r"120×120×80 voxels \(1.15e\+06\): holding a subject of that "
                                                   r"size needs about 0.7 GB, more than the 1e\+06 voxels allowed by 0.7 GB "
                                                   r"\(LACUNES_MEMORY_LIMIT_GB\)"):
        read_volume(tmp_path / "wide.nii.gz")
    monkeypatch.setenv("LACUNES_MEMORY_LIMIT_GB", str(gb + 0.2))
    assert read_volume(tmp_path / "wide.nii.gz")[0].shape == (120, 120, 80)
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("LACUNES_MEMORY_LIMIT_GB", bad)
        with pytest.raises(LacunesInputError, match="LACUNES_MEMORY_LIMIT_GB must be a positive number"):
            read_volume(tmp_path / "wide.nii.gz")


def test_oversized_empty_and_foreign_files_are_refused_with_a_reason(tmp_path, monkeypatch):
    import gzip

    write_volume(np.zeros((30, 30, 30), np.float32), Geometry((30, 30, 30)), tmp_path / "big.nii.gz")
    monkeypatch.setenv("LACUNES_MAX_VOXELS", "10000")  # from the header alone, before decoding
    with pytest.raises(UnreadableImageError, match=r"30×30×30 voxels .*LACUNES_MAX_VOXELS"):
        read_volume(tmp_path / "big.nii.gz")
    monkeypatch.delenv("LACUNES_MAX_VOXELS")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="empty"):
        read_volume(tmp_path / "empty.nii.gz")
    (tmp_path / "other.nii.gz").write_bytes(gzip.compress(b"a text file, compressed" * 20))
    with pytest.raises(UnreadableImageError, match="no image format recognizes") as err:
        read_volume(tmp_path / "other.nii.gz")
    assert ".cxx" not in str(err.value)


def test_a_label_image_given_as_a_contrast_is_refused(tmp_path):
    _, label, geom = write_subject(tmp_path)
    p = paths(tmp_path)
    lesion = tmp_path / "sub-001_space-T1_Lacunes.nii.gz"
    write_volume(label.astype(np.uint8), geom, lesion)
    with pytest.raises(LacunesInputError, match=r"Lacunes.nii.gz holds only 1 distinct non-zero value\(s\) \(1\): "
                                                r"a label or mask image, not a T1 scan"):
        read_subject("sub-001", {**p, "T1": lesion})
    mask = tmp_path / "brain_mask.nii.gz"
    write_volume((read_volume(p["T2"])[0] > 0).astype(np.float32) * 2, geom, mask)
    with pytest.raises(LacunesInputError, match="not a FLAIR scan"):
        read_subject("sub-001", {**p, "FLAIR": mask})
    assert read_subject("sub-001", p).image.shape[0] == 3  # the real contrasts pass


def test_a_label_is_at_most_two_distinct_non_zero_values():
    from lacunes.io import check_not_a_label

    two = np.zeros((6, 6, 6), np.float32)
    two[1:3], two[3:5] = 2.0, 5.0
    two[0, 0, 0] = np.nan  # not a value of its own
    with pytest.raises(LacunesInputError, match=r"holds only 2 distinct non-zero value\(s\) \(2, 5\)"):
        check_not_a_label(two, Path("x.nii.gz"), "T2")
    three = two.copy()
    three[5, 5, 5] = 7.0
    check_not_a_label(three, Path("x.nii.gz"), "T2")  # three values: a scan
    check_not_a_label(np.zeros((4, 4, 4), np.float32), Path("x.nii.gz"), "T2")  # nothing to judge


def test_one_file_given_twice_is_refused_and_a_background_that_is_not_zero_named(tmp_path, caplog):
    images, _, geom = write_subject(tmp_path)
    p = paths(tmp_path)
    with pytest.raises(LacunesInputError, match="same file is given as T1 and FLAIR"):
        read_subject("sub-001", {**p, "FLAIR": p["T1"]})
    copy = tmp_path / "copy_T1.nii.gz"
    copy.write_bytes(p["T1"].read_bytes())
    with pytest.raises(LacunesInputError, match="T1 and T2 hold the same image"):
        read_subject("sub-001", {**p, "T2": copy})
    for background in (-100.0, "noise"):
        t2 = images["T2"].copy()
        outside = t2 == 0
        t2[outside] = -100.0 if background == -100.0 else np.random.default_rng(0).normal(0, 5, outside.sum())
        write_volume(t2, geom, p["T2"])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            read_subject("sub-001", p)
        assert "T2.nii.gz has no zero background" in caplog.text and "skull-stripped" in caplog.text
    caplog.clear()
    write_volume(images["T2"], geom, p["T2"])
    with caplog.at_level(logging.WARNING):
        read_subject("sub-001", p)
    assert "background" not in caplog.text
