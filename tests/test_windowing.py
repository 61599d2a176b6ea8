import logging

import numpy as np
import pytest
import torch

from lacunes.inference import Predictor
from lacunes.settings import FAST, InferenceSettings
from lacunes.windowing import WindowedNetwork, roi_for

from .test_inference import PlusOne, settings


class OOMAbove(torch.nn.Module):
    def __init__(self, limit):
        super().__init__()
        self.limit, self.sizes = limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("simulated")
        return x[:, :1] + 1.0


def test_out_of_memory_halves_the_batch_and_retries(caplog):
    x = np.random.default_rng(6).normal(size=(3, 40, 40, 16)).astype(np.float32)
    net = OOMAbove(limit=3)
    p = Predictor(net, settings(tta="flips", sw_batch_size=2, memory_gb=100.0))
    with caplog.at_level(logging.WARNING):
        prob, _ = p.predict_normalized(x)
    assert "retrying with" in caplog.text
    assert max(net.sizes[-3:]) <= 3
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-(x[0] + 1))), atol=1e-6)


def test_cpu_defaults_bound_memory():
    stage = WindowedNetwork(PlusOne(), InferenceSettings(device="cpu", progress=False, backend="torch"))
    assert stage.window_batch() == 1
    assert stage.samples_per_call((256, 256, 64)) == 1  # one recipe window fits in the 6 GB budget
    assert stage.autocast_dtype is None
    assert roi_for(FAST, (150, 180, 150)) == (160, 192, 64)


def test_precision_resolves_per_device():
    cpu = lambda **kw: WindowedNetwork(PlusOne(), settings(**kw))  # noqa: E731
    assert cpu().precision == "float32" and cpu().autocast_dtype is None
    # TF32 and float16 are CUDA arithmetic: on the CPU they run as float32
    assert cpu(precision="tf32").precision == "float32"
    assert cpu(precision="float16").autocast_dtype is None
    assert cpu(precision="bfloat16").autocast_dtype == torch.bfloat16
    assert not cpu().channels_last and cpu(channels_last=True).channels_last
    assert cpu(precision="auto").precision == "float32"
    with pytest.raises(ValueError, match="precision .int8. is not one of auto, float32"):
        settings(precision="int8")


def test_openvino_bfloat16_on_a_cpu_without_it_runs_float32_and_says_so(tiny_checkpoint, monkeypatch, caplog):
    pytest.importorskip("openvino")
    import lacunes.backends
    from lacunes.checkpoint import load_network

    monkeypatch.setattr(lacunes.backends, "openvino_cpu_capabilities", lambda: ["FP32", "INT8"])
    net, _ = load_network(tiny_checkpoint)
    p = Predictor(net, settings(roi_size=(32, 32, 16), backend="openvino", precision="bfloat16"))
    assert p.precision == "float32" and p.settings.precision == "float32" and p.stage.settings.precision == "float32"
    assert "no bfloat16 arithmetic (OpenVINO offers FP32, INT8): running float32" in caplog.text
    monkeypatch.setattr(lacunes.backends, "openvino_cpu_capabilities", lambda: ["FP32", "BF16"])
    assert Predictor(net, settings(roi_size=(32, 32, 16), backend="openvino", precision="bfloat16")).precision == "bfloat16"


def test_cuda_calls_are_capped_below_32_bit_indexing(monkeypatch):
    p = WindowedNetwork(PlusOne(), settings())
    monkeypatch.setattr(p, "device", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**12, 10**12))
    # 8 recipe windows keep the widest activation (64 channels) under 2**31 elements
    assert p.samples_per_call((256, 256, 64)) == 7
    assert p.samples_per_call((64, 64, 32)) > 100


def test_tiny_volumes_work_with_the_full_size_network():
    """All axes <= 16: the fitted window stays >= 32 so the network's deepest level keeps 2 voxels."""
    from lacunes.network import NetworkConfig, build_network

    assert roi_for(FAST, (5, 12, 40)) == (32, 32, 48)
    torch.manual_seed(0)
    p = Predictor(build_network(NetworkConfig()), FAST.replace(progress=False, device="cpu"))
    image = np.random.default_rng(0).uniform(50, 150, size=(3, 12, 12, 8)).astype(np.float32)
    prob, unc = p.predict(image)
    assert prob.shape == (12, 12, 8) and np.isfinite(prob).all() and np.isfinite(unc).all()
