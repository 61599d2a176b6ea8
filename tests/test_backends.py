import logging

import numpy as np
import pytest
import torch

from lacunes.backends import Backend, OpenVINONetwork, openvino_version, resolve_backend
from lacunes.inference import FAST, Predictor
from lacunes.network import build_network

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
    assert "cannot be read" in caplog.text
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
