import logging

import numpy as np
import pytest
import torch

from lacunes.backends import Backend, OpenVINONetwork, TwoStageInstanceNorm, for_conversion, openvino_version, resolve_backend
from lacunes.inference import Predictor
from lacunes.network import build_network
from lacunes.settings import FAST

from .conftest import TINY, make_subject_arrays

needs_openvino = pytest.mark.skipif(openvino_version() is None, reason="openvino is not installed")


def test_auto_picks_the_compiled_backend_on_the_cpu_only_where_installed(monkeypatch):
    import lacunes.backends as backends

    monkeypatch.setattr(backends, "openvino_version", lambda: "2026.4.1")
    assert resolve_backend("auto", torch.device("cpu")) == Backend.OPENVINO
    assert resolve_backend("auto", torch.device("cuda")) == Backend.TORCH
    assert resolve_backend("torch", torch.device("cpu")) == Backend.TORCH
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_backend("openvino", torch.device("cuda"))
    monkeypatch.setattr(backends, "openvino_version", lambda: None)
    assert resolve_backend("auto", torch.device("cpu")) == Backend.TORCH
    with pytest.raises(ValueError, match="pip install openvino"):
        resolve_backend("openvino", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend .onnx. is not one of auto, torch, openvino"):
        FAST.replace(backend="onnx")


@pytest.mark.parametrize("affine", [True, False])
def test_the_rewritten_instance_norm_is_the_same_function(affine):
    torch.manual_seed(2)
    norm = torch.nn.InstanceNorm3d(5, affine=affine, eps=1e-5).double()
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-1, 1)
    network = torch.nn.Sequential(torch.nn.Conv3d(2, 5, 3, padding=1).double(), norm)
    rewritten = for_conversion(network)
    assert isinstance(rewritten[1], TwoStageInstanceNorm) and isinstance(network[1], torch.nn.InstanceNorm3d)
    x = torch.randn(2, 2, 12, 10, 7, dtype=torch.float64) * 3 + 5
    with torch.no_grad():
        np.testing.assert_allclose(rewritten(x).numpy(), network(x).numpy(), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="running statistics"):
        TwoStageInstanceNorm(torch.nn.InstanceNorm3d(5, track_running_stats=True))


@needs_openvino
def test_the_compiled_instance_norm_sums_as_accurately_as_torch_over_a_large_window():
    # OpenVINO's own instance norm drifts over a window of a million voxels (7.6e-4 here, against
    # torch's 4.8e-6 from the float64 answer); the rewritten one stays within a few times torch's error
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.InstanceNorm3d(8, affine=True)).eval()
    with torch.no_grad():
        network[1].weight.uniform_(0.5, 1.5)
        network[1].bias.uniform_(-1, 1)
        x = torch.randn(1, 3, 128, 128, 64) + 2.0
        exact = network.double()(x.double()).float()
        network.float()
        torch_error = float((network(x) - exact).abs().max())
    got = OpenVINONetwork(network, "float32", threads=1, cache="")(x)
    assert float((got - exact).abs().max()) < max(10 * torch_error, 5e-5)


@needs_openvino
def test_the_compiled_network_gives_the_torch_logits_and_is_cached_by_its_weights(tmp_path, caplog):
    torch.manual_seed(0)
    network = build_network(TINY).eval()
    for shape in ((1, 3, 32, 32, 32), (2, 3, 48, 32, 64)):
        x = torch.randn(shape)
        with torch.no_grad():
            expected = network(x)
        with caplog.at_level(logging.INFO):
            compiled = OpenVINONetwork(network, "float32", threads=1, cache=tmp_path)
        got = compiled(x)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert float((got - expected).abs().max()) < 1e-4
    assert caplog.text.count("converted for OpenVINO") == 1  # the second one came from the cache
    assert len(list(tmp_path.glob("*.xml"))) == 1 and len(list(tmp_path.glob("*.bin"))) == 1
    (next(tmp_path.glob("*.xml"))).write_text("damaged")
    with caplog.at_level(logging.WARNING):
        compiled = OpenVINONetwork(network, "float32", threads=1, cache=tmp_path)
    assert "is not used (its files are not those its manifest hashed)" in caplog.text
    np.testing.assert_allclose(compiled(x).numpy(), expected.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="runs in"):
        OpenVINONetwork(network, "float16", cache="")


@needs_openvino
def test_the_predictor_on_openvino_matches_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("LACUNES_CACHE", str(tmp_path))
    torch.manual_seed(1)
    network = build_network(TINY)
    images, _ = make_subject_arrays(shape=(40, 36, 24), seed=3)
    image = np.stack([images[m] for m in ("T1", "T2", "FLAIR")])
    maps = {}
    for backend in ("torch", "openvino"):
        predictor = Predictor(network, FAST.replace(backend=backend, progress=False))
        assert predictor.backend == backend
        maps[backend] = predictor.predict(image)
        assert maps[backend].stats["backend"] == backend
    for a, b in zip(maps["torch"], maps["openvino"]):
        assert float(np.abs(a - b).max()) < 1e-3


def _entry(folder):
    (xml,) = folder.glob("*.xml")
    return xml, xml.with_suffix(".bin"), xml.with_suffix(".json")


@needs_openvino
def test_a_damaged_substituted_or_foreign_cache_entry_is_never_used(tmp_path, caplog):
    import json
    import shutil

    from lacunes.backends import weights_key
    from lacunes.checkpoint import sha256_of

    torch.manual_seed(0)
    ours, theirs = build_network(TINY).eval(), build_network(TINY).eval()
    with torch.no_grad():  # another model: its last layer's bias moved by 1 logit
        last = [m for m in theirs.modules() if isinstance(m, torch.nn.Conv3d)][-1]
        last.bias += 1.0
    x = torch.randn(1, 3, 32, 32, 32)
    with torch.no_grad():
        expected = ours(x)

    def fresh(cache, net=ours):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            return OpenVINONetwork(net, "float32", threads=1, cache=cache)

    def check(compiled, why):
        assert f"is not used ({why}" in caplog.text and "converted for OpenVINO" in caplog.text
        assert float((compiled(x) - expected).abs().max()) < 1e-4

    cache = tmp_path / "cache"
    fresh(cache)
    xml, bin_, meta = _entry(cache)
    # 4 KiB of the weights overwritten
    with open(bin_, "r+b") as f:
        f.seek(4096)
        f.write(b"\x7f" * 4096)
    check(fresh(cache), "its files are not those its manifest hashed")
    # another model's entry copied under our key, its manifest with it
    other = tmp_path / "other"
    fresh(other, theirs)
    for src, dst in zip(_entry(other), _entry(cache)):
        shutil.copy(src, dst)
    check(fresh(cache), "its manifest names other weights")
    # the same, its manifest forged to name our weights and to hash the files it holds: the probe sees it
    for src, dst in zip(_entry(other), _entry(cache)):
        shutil.copy(src, dst)
    forged = json.loads(meta.read_text())
    forged.update(weights_sha256=weights_key(ours), xml_sha256=sha256_of(xml), bin_sha256=sha256_of(bin_))
    meta.write_text(json.dumps(forged))
    check(fresh(cache), "its logits differ from the network's")
    # an entry without a manifest (written before there was one)
    meta.unlink()
    check(fresh(cache), "it has no manifest")
    # a cache folder others can write to: neither read nor written
    cache.chmod(0o777)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        compiled = OpenVINONetwork(ours, "float32", threads=1, cache=cache)
    assert "writable by others" in caplog.text and "cannot cache the converted network" in caplog.text
    assert float((compiled(x) - expected).abs().max()) < 1e-4


@needs_openvino
def test_a_cache_that_cannot_be_written_or_a_conversion_that_differs_never_fails_a_subject(tmp_path, monkeypatch,
                                                                                           caplog):
    import openvino as ov

    import lacunes.backends as backends

    torch.manual_seed(1)
    network = build_network(TINY)
    images, _ = make_subject_arrays(shape=(40, 36, 24), seed=3)
    image = np.stack([images[m] for m in ("T1", "T2", "FLAIR")])
    reference = Predictor(network, FAST.replace(backend="torch", progress=False)).predict(image)

    def full_disk(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setenv("LACUNES_CACHE", str(tmp_path))
    monkeypatch.setattr(ov, "save_model", full_disk)
    with caplog.at_level(logging.WARNING):
        got = Predictor(network, FAST.replace(backend="openvino", progress=False)).predict(image)
    assert "cannot cache the converted network" in caplog.text and got.stats["backend"] == "openvino"
    assert float(np.abs(got.probability - reference.probability).max()) < 1e-3
    monkeypatch.setattr(backends.OpenVINONetwork, "_probe", lambda self, model, net: "its logits differ (a test)")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = Predictor(network, FAST.replace(backend="openvino", progress=False)).predict(image)
    assert "is not used: its logits differ (a test); running on PyTorch instead" in caplog.text
    assert got.stats["backend"] == "torch"
    np.testing.assert_allclose(got.probability, reference.probability, atol=1e-6)
