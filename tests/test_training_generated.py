import numpy as np
import pytest
import torch

from lacunes.training.config import TrainConfig
from lacunes.training.data import training_subject_from_arrays
from lacunes.training.generated import GeneratedData, GeneratedSource

from .conftest import make_subject_arrays

CONFIG = TrainConfig(crop_size=(16, 16, 8), batch_size=2, crops_per_subject=1)


def small_subject(seed, index, config, synth=None):
    """A quick stand-in for a phantom (the pool's logic does not depend on what is generated)."""
    images, label = make_subject_arrays((24, 22, 12), seed=index, lesions=((12, 11, 6),))
    image = np.stack([images[m] for m in ("T1", "T2", "FLAIR")])
    return training_subject_from_arrays(f"syn-{seed}-{index}", image, [label, label], (1.0, 1.0, 1.0), config)


def source(size, uses, start=0, rank=0, world=1, batches=3):
    data = GeneratedData(size, seed=11, uses=uses, workers=1)
    return GeneratedSource(data, CONFIG, torch.device("cpu"), batches, rank, world, start, progress=False,
                           maker=small_subject)


def ids(batches):
    return [[h.subject.subject_id for h in b] for b in batches]


def test_each_generated_subject_is_seen_once_in_generation_order_by_default():
    s = source(size=2, uses=1)
    try:
        seen = ids(s.epoch(0)) + ids(s.epoch(1))
    finally:
        s.close()
    flat = [i for b in seen for i in b]
    assert flat == [f"syn-11-{k}" for k in range(1, 13)]  # never twice, in order, whatever the timing
    assert s.state()["next_k"] >= 12 and s.state()["seed"] == 11


def test_subjects_are_reused_as_often_as_asked_and_no_more():
    s = source(size=4, uses=3, batches=6)
    try:
        batches = ids(s.epoch(0))
    finally:
        s.close()
    flat = [i for b in batches for i in b]
    counts = {i: flat.count(i) for i in flat}
    assert max(counts.values()) <= 3 and len(flat) == 12
    assert all(len(set(b)) == len(b) for b in batches)  # never twice in one batch


def test_processes_and_resumed_runs_generate_disjoint_phantoms():
    a, b = source(2, 1, rank=0, world=2), source(2, 1, rank=1, world=2)
    try:
        first = {i for batch in ids(a.epoch(0)) for i in batch}
        second = {i for batch in ids(b.epoch(0)) for i in batch}
        resumed = source(2, 1, start=a.state()["next_k"], rank=0, world=2)
        try:
            later = {i for batch in ids(resumed.epoch(0)) for i in batch}
        finally:
            resumed.close()
    finally:
        a.close()
        b.close()
    assert not first & second and not first & later
    assert all(int(i.rsplit("-", 1)[1]) % 2 == 1 for i in first)  # rank 0 of 2: indices 1, 3, 5, ...


def test_unlimited_reuse_never_waits_after_the_fill():
    s = source(size=3, uses=0, batches=20)
    try:
        flat = [i for b in ids(s.epoch(0)) for i in b]
    finally:
        s.close()
    assert len(flat) == 40 and len(set(flat)) >= 3
    assert s.wait_seconds == 0.0


def test_reserved_seeds_and_bad_pools_are_refused():
    with pytest.raises(ValueError, match="held-out"):
        GeneratedData(4, seed=7777)
    with pytest.raises(ValueError, match="validation"):
        GeneratedData(4, seed=5151)
    with pytest.raises(ValueError, match="at least one"):
        GeneratedData(0)
    with pytest.raises(ValueError, match="cannot fill a batch"):
        GeneratedSource(GeneratedData(1, uses=1, workers=1), CONFIG, torch.device("cpu"), 1, progress=False,
                        maker=small_subject)


def test_a_generated_phantom_is_the_subject_read_from_its_files(tmp_path):
    from lacunes.layouts import find_valdo_subjects
    from lacunes.synthetic import generate_phantom, write_phantom
    from lacunes.training.data import load_training_subject
    from lacunes.training.generated import generated_subject

    config = TrainConfig()
    made = generated_subject(2021, 3, config)
    write_phantom(generate_phantom(2021, 3, subject_id="sub-003"), tmp_path)
    read = load_training_subject(find_valdo_subjects(tmp_path)[0], config)
    np.testing.assert_array_equal(made.image, read.image)
    np.testing.assert_array_equal(made.label, read.label)
    np.testing.assert_array_equal(made.instances, read.instances)
    np.testing.assert_array_equal(made.candidates.fluid, read.candidates.fluid)
