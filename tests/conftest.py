from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lacunes.checkpoint import save_checkpoint
from lacunes.geometry import Geometry
from lacunes.network import NetworkConfig, build_network
from lacunes.writing import write_volume

TINY = NetworkConfig(features=(4, 4, 8, 8, 16, 4), dropout=0.0)
SPACING = (0.9, 1.1, 1.5)
ORIGIN = (-10.0, 5.0, 2.5)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module, its folder on ``sys.path`` for the scripts it imports."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def make_subject_arrays(shape=(40, 36, 20), seed=0, lesions=((20, 18, 10),), radius=3):
    """Three modalities with a brain-like blob (non-zero) and CSF-like balls, plus a binary label."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(np.float32)
    centre = (np.array(shape) - 1) / 2
    brain = (((idx - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] * 0.45)) ** 2).sum(0) < 1
    label = np.zeros(shape, np.uint8)
    for c in lesions:
        label |= (((idx - np.array(c)[:, None, None, None]) ** 2).sum(0) <= radius**2).astype(np.uint8)
    label &= brain
    images = {}
    for name, (tissue, fluid) in {"T1": (800, 200), "T2": (300, 900), "FLAIR": (500, 100)}.items():
        img = np.where(label > 0, fluid, tissue) + rng.normal(0, 20, shape)
        images[name] = np.where(brain, img, 0).astype(np.float32)
    return images, label


def write_subject(folder, sid="sub-001", shape=(40, 36, 20), seed=0, lesions=((20, 18, 10),), raters=True,
                  geometry=None):
    images, label = make_subject_arrays(shape, seed, lesions)
    geom = geometry or Geometry(shape=shape, spacing=SPACING, origin=ORIGIN, direction=DIRECTION)
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        write_volume(img, geom, folder / f"{sid}_space-T1_desc-masked_{name}.nii.gz")
    if raters:
        write_volume(label, geom, folder / f"{sid}_space-T1_desc-Rater1_Lacunes.nii.gz")
        write_volume(label, geom, folder / f"{sid}_space-T1_desc-Rater2_Lacunes.nii.gz")
    return images, label, geom


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, build_network(TINY), TINY, {"normalization": {"lower": 0.005, "upper": 0.995}})
    return path


@pytest.fixture(scope="session", autouse=True)
def network_cache(tmp_path_factory):
    """Networks converted for the OpenVINO backend are cached in the session's temporary folder, never
    in the user's ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("lacunes-cache")
    before = os.environ.get("LACUNES_CACHE")
    os.environ["LACUNES_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("LACUNES_CACHE", None)
    else:
        os.environ["LACUNES_CACHE"] = before


def write_bids_subject(root, entities, suffixes=("T1w", "T2w", "FLAIR"), seed=0):
    """A BIDS subject (sub-x[/ses-y]/anat/<entities>_<suffix>.nii.gz) from the test arrays."""
    from lacunes.geometry import Geometry
    from lacunes.writing import write_volume

    parts = dict(e.split("-", 1) for e in entities.split("_"))
    anat = root / f"sub-{parts['sub']}" / (f"ses-{parts['ses']}" if "ses" in parts else "") / "anat"
    images, _ = make_subject_arrays((30, 28, 18), seed)
    for suffix, m in zip(("T1w", "T2w", "FLAIR"), ("T1", "T2", "FLAIR")):
        if suffix in suffixes:
            write_volume(images[m], Geometry(shape=(30, 28, 18)), anat / f"{entities}_{suffix}.nii.gz")
    return anat
